"""The embedded tiny model through the CLI, as a user runs it, against transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import DEFAULT_MODEL, main
from reference import dequantized_hf_weights, int8_reference, reference_logits, reference_model

PROMPT = (
    "import os\nimport sys\n\n\ndef main(argv):\n    \"\"\"Parse the command line and run.\"\"\"\n"
    "    parser = argparse.ArgumentParser(description=__doc__)\n    args = parser.parse_args(argv)\n"
    "    for name in sorted(os.listdir(args.path)):\n        "
)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for quant in ("q4f16", "q0f32"):
        assert main(["compile", str(DEFAULT_MODEL), "-o", str(root / quant), "--quant", quant, "--prefill-chunk", "16"]) == 0
        out[quant] = root / quant
    return out


def _cli_run(package: Path, *args: str, runtime_only: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1" if runtime_only else "0")
    return subprocess.run(
        [sys.executable, "-m", "cli", "run", str(package), *args], capture_output=True, text=True, env=env
    )


def _prompt_ids(package: Path) -> list[int]:
    from runtime_stubs.engine import Engine

    return Engine(package).encode(PROMPT)


def test_q0f32_greedy_equals_transformers_generate(packages):
    ids = _prompt_ids(packages["q0f32"])
    assert len(ids) > 32, "prompt must cross prefill chunks and KV pages"
    proc = _cli_run(packages["q0f32"], "--prompt-ids", ",".join(map(str, ids)), "--greedy", "--max-tokens", "12",
                    "--ignore-eos", "--json")
    assert proc.returncode == 0, proc.stderr
    ours = json.loads(proc.stdout)["token_ids"]
    model = reference_model(DEFAULT_MODEL)
    with torch.no_grad():
        x = torch.tensor([ids])
        # explicit mask: generate() would otherwise infer one from pad_token_id and could mask the bos token
        ref = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                             eos_token_id=None, pad_token_id=-1)[0, len(ids):].tolist()
    assert ours == ref


def test_q4f16_runtime_only_logits_and_json(packages, tmp_path):
    package = packages["q4f16"]
    ids = _prompt_ids(package)
    dump = tmp_path / "logits.npy"
    proc = _cli_run(package, "--prompt-ids", ",".join(map(str, ids)), "--greedy", "--max-tokens", "10",
                    "--ignore-eos", "--json", "--dump-logits", str(dump))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["prompt_ids"] == ids and len(result["token_ids"]) == 10
    assert result["decode_tokens_per_s"] > 0 and result["prefill_tokens_per_s"] > 0 and result["peak_rss_mb"] > 0
    logits = np.load(dump)
    assert logits.shape == (10, json.loads((package / "llama-aot.json").read_text())["model"]["vocab_size"])
    assert [int(t) for t in logits.argmax(-1)] == result["token_ids"]
    ref_model = reference_model(DEFAULT_MODEL, dequantized_hf_weights(package))
    int8 = json.loads((package / "llama-aot.json").read_text())["projection_activations"] == "int8_group32"
    seq = ids + result["token_ids"][:-1]
    if int8:  # the reference rounds what the package rounds; bound: its own rounding-flip noise floor
        ref, spread = int8_reference(ref_model, seq)
        ref = ref[len(ids) - 1 :]
        bound = max(2.5e-3 * np.abs(ref).max(), 1.5 * spread)
    else:
        ref = reference_logits(ref_model, seq)[len(ids) - 1 :]
        bound = 1e-3 * np.abs(ref).max()
    assert np.abs(logits - ref).max() <= bound


def test_runtime_only_mode_does_not_load_the_compiler(packages):
    code = (
        "from runtime_stubs.engine import Engine; e = Engine(r'%s'); e.generate([1, 5, 9], max_tokens=2);"
        "maps = open('/proc/self/maps').read(); print('libtvm_compiler' in maps, 'libtvm_runtime' in maps)"
        % packages["q4f16"]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, TVM_USE_RUNTIME_LIB="1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True"]


def test_text_prompt_streams_and_samples(packages):
    proc = _cli_run(packages["q4f16"], "--prompt", "def ", "--max-tokens", "8", "--temperature", "0.8",
                    "--top-p", "0.9", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("def ")
    assert "decode" in proc.stderr and "tok/s" in proc.stderr and "peak RSS" in proc.stderr


def test_python_api_sampling_is_seeded(packages):
    from runtime_stubs.engine import Engine

    engine = Engine(packages["q4f16"])
    ids = engine.encode("class ")
    a = engine.generate(ids, max_tokens=8, temperature=1.0, top_p=0.95, seed=7, stop_on_eos=False).token_ids
    b = engine.generate(ids, max_tokens=8, temperature=1.0, top_p=0.95, seed=7, stop_on_eos=False).token_ids
    assert a == b
