"""A checkpoint's chat template, rendered the way transformers' ``apply_chat_template`` renders it.

The template is the Jinja ``chat_template`` of the package's tokenizer_config.json (a string, or a list of
named templates of which "default" is taken). A checkpoint without one gets the Llama 3 Instruct layout
(:data:`LLAMA3_TEMPLATE`) when its vocabulary has Llama 3's header and end-of-turn tokens. The Jinja
environment matches transformers' (sandboxed, ``trim_blocks``/``lstrip_blocks``, ``raise_exception``,
``strftime_now``, the tokenizer's special tokens as variables), so a template written for transformers
gives the same text here; tests/chat/test_chat_template.py checks that against transformers itself.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from .errors import LlamaAotError

# Llama 3 / 3.1 / 3.2 Instruct without tools: every message is a header, its content and <|eot_id|>.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA3_TOKENS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
ROLES = ("system", "user", "assistant")


class ChatTemplate:
    """``render(messages, add_generation_prompt)`` -> the text the model was trained to see."""

    def __init__(self, source: str, special_tokens: dict[str, str], origin: str):
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(x, indent=indent, ensure_ascii=ensure_ascii)
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
        self.origin = origin
        self.special_tokens = special_tokens
        try:
            self._template = env.from_string(source)
        except jinja2.exceptions.TemplateError as e:
            raise LlamaAotError(f"the chat template of {origin} does not parse ({_one_line(e)}); fix its "
                                "chat_template in tokenizer_config.json") from None

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        import jinja2

        for m in messages:
            if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise LlamaAotError(f"a chat message needs a role ({', '.join(ROLES)}) and text content, got {m!r}")
        try:
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except (jinja2.exceptions.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
            raise LlamaAotError(f"the chat template of {self.origin} fails to render these messages "
                                f"({_one_line(e)}); fix its chat_template in tokenizer_config.json") from None


def load_chat_template(package_dir: str | Path, vocabulary: dict[str, int]) -> ChatTemplate:
    """The package's template, else Llama 3's where the vocabulary has its tokens; else a one-line error."""
    path = Path(package_dir) / "tokenizer_config.json"
    config = {}
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise LlamaAotError(f"{path} is not valid JSON ({_one_line(e)}); re-copy it from the checkpoint") from None
    special = {name: _token_text(config.get(name)) for name in ("bos_token", "eos_token", "unk_token", "pad_token")}
    special = {k: v for k, v in special.items() if v is not None}
    source = config.get("chat_template")
    if isinstance(source, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default")
    if isinstance(source, str):
        return ChatTemplate(source, special, str(path))
    if all(t in vocabulary for t in LLAMA3_TOKENS):
        special.setdefault("bos_token", "<|begin_of_text|>")
        return ChatTemplate(LLAMA3_TEMPLATE, special, "Llama 3 (built in)")
    raise LlamaAotError(f"{Path(package_dir)} has no chat template (no chat_template in tokenizer_config.json and "
                        "no Llama 3 header tokens): add the checkpoint's chat_template, or use `llama-aot run`")


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__
