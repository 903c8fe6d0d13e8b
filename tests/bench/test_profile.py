"""bench.profile / bench.bandwidth / the bench CLI: structure of the results, not their timings."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import bandwidth, e2e, profile

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, rows, want", [
    ("fused_dequant_matmul6_add", (1, 1, 64), "GEMV"),
    ("dequant_matmul2", (1, 16, 64), "GEMM"),
    ("tir_attention_decode_cpu", None, "attention"),
    ("tir_split_rotary", None, "RoPE"),
    ("kv_cache_transpose_append", None, "KV-cache bookkeeping"),
    ("rms_norm1", None, "norms"),
    ("dequant_take", None, "embedding"),
    ("silu_multiply", None, "elementwise/SwiGLU"),
    ("some_new_kernel", None, "some_new_kernel"),  # unmatched names stay themselves
])
def test_category(name, rows, want):
    args = [SimpleNamespace(shape=rows)] if rows else []
    assert profile.category(name, args) == want


def test_kv_create_function_names(tiny_package):
    import tvm.runtime

    text = tvm.runtime.load_module(str(tiny_package / "lib" / "model.so"))["as_text"]()
    names = profile.kv_create_function_names(text, "create_paged_kv_cache_0")
    flat = [n for ns in names for n in ns]
    assert len(names) == 28  # the builtin's argument count in TVM 0.27
    assert "tir_attention_decode_cpu" in flat and "tir_attention_prefill_ragged_cpu" in flat
    assert "kv_cache_transpose_append" in flat


def test_profile_tiny_structure(tiny_package):
    out = subprocess.run(
        [sys.executable, "-m", "bench.profile", str(tiny_package), "--threads", "2", "--prompt", "40",
         "--steps", "3", "--chunks", "2", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["threads"] == 2
    for phase, matmul, steps in (("decode", "GEMV", 3), ("prefill", "GEMM", 2)):
        p = r[phase]
        assert p["phase"] == phase and p["steps"] == steps and p["wall_ms"] > 0
        cats = p["categories"]
        assert list(cats)[-1] == profile.HOST
        assert math.isclose(sum(c["ms"] for c in cats.values()), p["wall_ms"], rel_tol=1e-6)
        assert math.isclose(sum(c["share"] for c in cats.values()), 1.0, rel_tol=1e-6)
        assert cats[matmul]["ms"] > 0 and cats[matmul]["calls"] >= 4 and cats[matmul]["kernels"]
        for name in ("attention", "norms", "embedding", profile.KV_BOOKKEEPING, profile.SAMPLING):
            assert name in cats, name
        text = profile.format_profile(p)
        assert "| category | ms | % |" in text and matmul in text and profile.HOST in text
    assert r["decode"]["tokens"] == 1 and r["decode"]["position"] == 40
    assert r["prefill"]["tokens"] == 16  # the package's prefill chunk
    assert r["prefill"]["categories"]["GEMV"]["calls"] == 1  # the lm_head on the last position


def test_bench_profile_argument():
    import argparse

    p = argparse.ArgumentParser()
    e2e.add_arguments(p)
    assert p.parse_args([]).profile is False
    assert p.parse_args(["--profile"]).profile is True


def test_bandwidth_probe_structure():
    r = bandwidth.measure(threads=2, size_bytes=32 << 20, reps=3, chunk_bytes=8 << 20, seconds=0)  # exactly 3 passes
    assert r["kernel"] in bandwidth.TVM_KERNELS and set(r["kernels"]) == set(bandwidth.TVM_KERNELS)
    assert r["threads"] == 2 and r["reps"] == 3 and r["buffer_mib"] == 32 and r["chunk_mib"] == 8
    assert r["chunks"] == 4  # 3 passes x 4 chunks, the 3 kernels taking turns: 4 each
    assert r["min_gbps"] <= r["median_gbps"] <= r["gbps"] == max(r["kernels"].values()) and 0 <= r["spread"] < 1
    n = bandwidth.measure(threads=2, size_bytes=16 << 20, reps=2, kernel="numpy", seconds=0)
    assert n["gbps"] > 0 and n["kernel"] == "numpy"
    assert bandwidth.default_buffer_bytes() >= max(256 << 20, 8 * bandwidth.llc_bytes()) or \
        bandwidth.default_buffer_bytes() <= bandwidth._mem_available() // 4


def test_bandwidth_cli_runs_in_processes():
    out = subprocess.run([sys.executable, "-m", "bench.bandwidth", "--size-mb", "16", "--reps", "2", "--runs", "2",
                          "--kernel", "numpy", "--seconds", "0"],  # numpy: no TVM import and compile per child
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("run 1:") and lines[1].startswith("run 2:") and "2 processes" in lines[2]


def test_roofline_in_cache():
    bw = {"gbps": 50.0, "llc_mib": 32}
    assert e2e.roofline(16 << 20, 1000.0, bw) is None  # fits in the LLC: no DRAM bound
    assert e2e.roofline(500e6, 50.0, bw) == pytest.approx(0.5)
    rows = [{"model": "1b", "engine": "llama-aot", "weights": "q4f16", "prefill_tok_s": 1.0, "decode_tok_s": 2.0,
             "peak_rss_mb": 3.0, "bytes_per_token": 10, "roofline_fraction": None}]
    assert "(in cache)" in e2e.format_table(rows)
