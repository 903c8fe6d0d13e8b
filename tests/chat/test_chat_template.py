"""Chat templates rendered as transformers' apply_chat_template renders them (transformers is the reference)."""

from __future__ import annotations

import json
import shutil

import pytest

from cli.main import DEFAULT_MODEL
from runtime_stubs.chat_template import LLAMA3_TEMPLATE, LLAMA3_TOKENS, ChatTemplate, load_chat_template
from runtime_stubs.errors import LlamaAotError

CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "system", "content": "  Be brief.\n"}, {"role": "user", "content": "what is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?\n\n"}],
    [{"role": "user", "content": "ünïcödé 日本語 🙂"}, {"role": "assistant", "content": " x "}],
]
# Written the way published templates are (whitespace control, set, loop.last, raise_exception, namespace):
# exercises the parts of the Jinja environment transformers sets up.
FANCY_TEMPLATE = """{%- set ns = namespace(sys='') -%}
{%- if messages[0]['role'] == 'system' -%}{%- set ns.sys = messages[0]['content'] | trim -%}{%- endif -%}
{{ bos_token }}{% if ns.sys %}[SYS]{{ ns.sys }}[/SYS]
{% endif %}
{%- for m in messages if m['role'] != 'system' -%}
  {%- if m['role'] not in ['user', 'assistant'] -%}{{ raise_exception('bad role ' + m['role']) }}{%- endif -%}
  {{ '<' + m['role'] + '>' }}{{ m['content'] }}{% if not loop.last %}
{% endif %}
{%- endfor -%}
{%- if add_generation_prompt %}<assistant>{% endif -%}"""


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(DEFAULT_MODEL / "tokenizer.json"), bos_token="<|begin_of_text|>",
                                  eos_token="<|end_of_text|>")
    tok.add_special_tokens({"additional_special_tokens": list(LLAMA3_TOKENS)})
    return tok


@pytest.mark.parametrize("name", ["llama3", "fancy", "tiny"])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_render_equals_transformers(hf_tokenizer, name, generation_prompt):
    source = {"llama3": LLAMA3_TEMPLATE, "fancy": FANCY_TEMPLATE,
              "tiny": json.loads((DEFAULT_MODEL / "tokenizer_config.json").read_text())["chat_template"]}[name]
    ours = ChatTemplate(source, {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, name)
    for messages in CONVERSATIONS:
        want = hf_tokenizer.apply_chat_template(messages, chat_template=source, tokenize=False,
                                                add_generation_prompt=generation_prompt)
        got = ours.render(messages, add_generation_prompt=generation_prompt)
        assert got == want, (name, messages)
        # the text carries its special tokens: tokenized without adding any, as apply_chat_template does
        ids = hf_tokenizer.apply_chat_template(messages, chat_template=source, tokenize=True,
                                               add_generation_prompt=generation_prompt)
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        assert hf_tokenizer(got, add_special_tokens=False)["input_ids"] == list(ids)


def test_builtin_llama3_template_only_for_a_llama3_vocabulary(tmp_path):
    vocab = {"<|begin_of_text|>": 0}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>"}))
    with pytest.raises(LlamaAotError, match="has no chat template"):
        load_chat_template(tmp_path, vocab)
    t = load_chat_template(tmp_path, {**vocab, **{tok: i + 1 for i, tok in enumerate(LLAMA3_TOKENS)}})
    assert t.origin == "Llama 3 (built in)"
    text = t.render([{"role": "user", "content": "hi"}])
    assert text == "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


def test_named_templates_take_default(tmp_path):
    cfg = {"bos_token": {"content": "<s>"}, "chat_template": [{"name": "tool_use", "template": "T"},
                                                              {"name": "default", "template": "{{ bos_token }}D"}]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_chat_template(tmp_path, {}).render([]) == "<s>D"


@pytest.mark.parametrize("source, messages, match", [
    ("{% for m in messages %}", [], "does not parse"),
    ("{{ raise_exception('no system role') }}", [], "fails to render"),
    ("{{ messages[3]['content'] }}", [], "fails to render"),
    ("x", [{"role": "robot", "content": "hi"}], "needs a role"),
    ("x", [{"role": "user", "content": 3}], "needs a role"),
])
def test_bad_templates_and_messages_get_one_line(tmp_path, source, messages, match):
    shutil.copyfile(DEFAULT_MODEL / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    cfg["chat_template"] = source
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(LlamaAotError, match=match) as e:
        load_chat_template(tmp_path, {}).render(messages)
    assert "\n" not in str(e.value)
