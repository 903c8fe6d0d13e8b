"""`compile --kv-cache f16` on a CPU build: the KV cache's pages in float16 (q, k, v rounded before the cache,
the attention kernels computing in f32), checked against transformers: prefill over several chunks and decode
steps stay within the rounding of f16 keys and values, the memory plan's KV bytes halve, bad values refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli.main import DEFAULT_MODEL, main
from reference import reference_logits, reference_model


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    out = {}
    for kv in ("f32", "f16"):
        path = tmp_path_factory.mktemp(f"kv-{kv}") / "q0f32"
        assert main(["compile", str(DEFAULT_MODEL), "-o", str(path), "--quant", "q0f32", "--prefill-chunk", "16",
                     "--context-window", "128", "--kv-cache", kv]) == 0
        out[kv] = path
    return out


def test_f16_cache_matches_reference(packages):
    from runtime_stubs.engine import Engine

    hf = reference_model(DEFAULT_MODEL)
    ids = [int(t) for t in np.random.default_rng(5).integers(3, 250, 70)]  # 5 chunks of 16
    gen = Engine(packages["f16"]).generate(ids, max_tokens=12, stop_on_eos=False, keep_logits=True)
    ref = reference_logits(hf, ids + gen.token_ids[:-1])[len(ids) - 1 :]
    ours = np.stack(gen.logits)
    err = np.abs(ours - ref).max()
    # f16 keys/values: about 3 significant digits; the f32 cache is exact to 2e-3 (test_logits_vs_transformers)
    assert err < 0.05 * np.abs(ref).max(), err
    f32 = Engine(packages["f32"]).generate(ids, max_tokens=12, stop_on_eos=False, keep_logits=True)
    assert np.abs(np.stack(f32.logits) - ref).max() < err  # the rounding is the f16 cache's, not something else


def test_memory_plan_and_record(packages):
    cfgs = {kv: json.loads((p / "llama-aot.json").read_text()) for kv, p in packages.items()}
    assert cfgs["f16"]["attention"]["kv_cache_dtype"] == "float16"
    assert cfgs["f32"]["attention"]["kv_cache_dtype"] == "float32"
    assert cfgs["f16"]["memory_plan"]["kv_cache_bytes"] * 2 == cfgs["f32"]["memory_plan"]["kv_cache_bytes"]
    assert cfgs["f16"]["schedules"]["cpu"]["attention_decode"][0]["kv_dtype"] == "float16"


@pytest.mark.parametrize("args,needle", [
    (["--kv-cache", "q8"], "q8, is not built yet"),
    (["--kv-cache", "bf16"], "takes f32 or f16"),
    (["--soc", "apple-a17-pro", "--kv-cache", "f16"], "drop --kv-cache"),  # q0f32: f32 GPU activations
])
def test_bad_kv_cache(tmp_path, capsys, args, needle):
    out = tmp_path / "pkg"
    assert main(["compile", str(DEFAULT_MODEL), "-o", str(out), "--quant", "q0f32", *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and not out.exists()
