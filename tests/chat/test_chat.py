"""Multi-turn chat on the embedded tiny model: each turn prefills only what the cache lacks, and its logits are
transformers' for the whole conversation; stop strings, streaming and the `llama-aot chat` CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cli.main import DEFAULT_MODEL, main
from reference import reference_logits, reference_model
from runtime_stubs.chat import Chat
from runtime_stubs.engine import Engine
from runtime_stubs.integrity import CHECKSUMS, file_record

TURNS = ["def add(a, b):\n", "\n\nclass Stack:\n    def push(self, item):\n", "\n\ndef main():\n"]
REL_TOL = 2e-4  # of max |logit|; q0f32 against transformers' float32 (observed ~1e-6)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("chat") / "tiny-q0f32"
    assert main(["compile", str(DEFAULT_MODEL), "-o", str(out), "--quant", "q0f32", "--prefill-chunk", "16",
                 "--context-window", "256"]) == 0
    return out


@pytest.fixture(scope="module")
def hf():
    return reference_model(DEFAULT_MODEL)


def test_turns_prefill_only_new_tokens_and_match_transformers(package, hf):
    engine = Engine(package)
    chat = Chat(engine, system="small helpers")
    first_logits = []
    original = engine.generate

    def generate(*a, **kw):  # keep the logits of each turn's first reply token
        gen = original(*a, keep_logits=True, **kw)
        first_logits.append(gen.logits[0])
        return gen

    engine.generate = generate
    for i, text in enumerate(TURNS):
        cached_before = list(engine.cached_ids)
        chat.send(text, max_tokens=20)
        ids = chat.prompt_ids(chat.messages[:-1])  # the conversation this turn answered
        turn = chat.turns[-1]
        assert len(turn.prompt_ids) == len(ids)
        common = next((n for n, (a, b) in enumerate(zip(cached_before, ids)) if a != b), min(len(cached_before), len(ids)))
        assert turn.prefilled_tokens == len(ids) - common
        if i:  # the earlier turns came from the cache
            assert turn.prefilled_tokens < len(ids) // 2, (turn, len(ids))
        ref = reference_logits(hf, ids)[-1]
        err = np.abs(first_logits[-1] - ref).max() / np.abs(ref).max()
        assert err < REL_TOL, (i, err)
        # the reply is what transformers' greedy decoding gives after the same ids
        reply_ids = engine.tokenizer.encode(chat.messages[-1]["content"], add_special_tokens=False).ids
        full = reference_logits(hf, ids + reply_ids)
        greedy = [int(t) for t in full[len(ids) - 1 : -1].argmax(-1)]
        assert greedy == reply_ids or engine.decode_text(greedy) == chat.messages[-1]["content"]


def test_cache_rolls_back_to_the_common_prefix(package, hf):
    """A prompt that shares only a prefix with the cache: the rest of the cache is popped, not reused."""
    engine = Engine(package)
    a = engine.encode("import os\nimport sys\n\n\ndef main():\n    return 0\n")
    b = a[:9] + engine.encode("x = [1, 2, 3]\nprint(x)\n")[1:]
    engine.generate(a, max_tokens=4)
    gen = engine.generate(b, max_tokens=3, keep_logits=True, reuse_cache=True)
    assert gen.reused_tokens == 9 and gen.prefilled_tokens == len(b) - 9
    ref = reference_logits(hf, b)[-1]
    assert np.abs(gen.logits[0] - ref).max() / np.abs(ref).max() < REL_TOL
    assert engine.cached_ids[: len(b)] == b
    whole = engine.generate(b, max_tokens=1, keep_logits=True, reuse_cache=True)  # everything cached
    assert whole.prefilled_tokens == 1  # the last prompt token is fed again for its logits
    assert np.abs(whole.logits[0] - ref).max() / np.abs(ref).max() < REL_TOL


def test_stop_strings_and_streaming(package):
    engine = Engine(package)
    free = Chat(engine).send("def add(a, b):\n", max_tokens=30)
    assert "\n" in free.strip("\n"), free  # the model's reply has a line break to stop at
    stop = free.strip("\n").split("\n")[1][:3] or "\n"
    pieces = []
    chat = Chat(engine)
    reply = chat.send("def add(a, b):\n", max_tokens=30, stop=[stop], on_text=pieces.append)
    assert "".join(pieces) == reply and stop not in reply
    assert free.startswith(reply) and len(reply) < len(free)


def test_chat_cli_turns_stats_and_reset(package):
    script = "def add(a, b):\n/stats\nclass Stack:\\\n    pass\n/stats\n/reset\n/stats\n/quit\nignored\n"
    res = subprocess.run([sys.executable, "-m", "cli", "chat", str(package), "--greedy", "--max-tokens", "8"],
                         input=script, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    stats = [line for line in res.stderr.splitlines() if line.startswith("[turn")]
    assert len(stats) == 2 and "(0 from the cache)" in stats[0] and "(0 from the cache)" not in stats[1], res.stderr
    assert "[conversation reset]" in res.stderr and "[no turns yet]" in res.stderr
    assert len(res.stdout.splitlines()) >= 2


def test_chat_cli_without_a_template(package, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    cfg = pkg / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace('"chat_template"', '"no_template"'))
    sums = json.loads((pkg / CHECKSUMS).read_text())  # re-recorded, as a recompile would
    sums["files"]["tokenizer_config.json"] = file_record(cfg)
    (pkg / CHECKSUMS).write_text(json.dumps(sums))
    res = subprocess.run([sys.executable, "-m", "cli", "chat", str(pkg)], input="hi\n", capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "has no chat template" in res.stderr and res.stderr.count("\n") == 1, res.stderr


def test_cli_runs_a_package_without_the_compiler_or_torch(package):
    """`llama-aot run` in its own process: TVM's runtime library only, torch never imported (start-up), and
    its JSON reports the start-up and first-token times bench/startup.py reads."""
    code = ("import sys; sys.argv = ['llama-aot', 'run', sys.argv[1], '--prompt-ids', '0,5,9', '--max-tokens', '2', "
            "'--json']; from cli.main import main; rc = main()\n"
            "import tvm.base; assert sys.modules.get('torch') is None and sys.modules.get('ml_dtypes') is None and tvm.base._RUNTIME_ONLY, 'compiler or optional imports'\n"
            "sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", code, str(package)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert 0 < out["first_token_seconds"] <= out["prefill_seconds"] + out["decode_seconds"] + 1
    assert 0 < out["ready_seconds"] < 300 and len(out["token_ids"]) == 2
