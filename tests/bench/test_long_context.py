"""`llama-aot bench --long` (bench/long_context.py): its arguments, the measurement on the tiny package (prompt
lengths across several prefill chunks, decode after each), and the ratio table."""

from __future__ import annotations

import argparse

import pytest

from bench import e2e, long_context


def test_long_argument():
    p = argparse.ArgumentParser()
    e2e.add_arguments(p)
    assert p.parse_args([]).long is None
    args = p.parse_args(["--long", "4096,512,512", "--prefill-chunk", "256"])
    assert args.long == [512, 4096] and args.prefill_chunk == 256
    for bad in ("512,x", "0", ","):
        with pytest.raises(SystemExit):
            p.parse_args(["--long", bad])


def test_measure_long_on_tiny(tiny_package):
    """Lengths longer than the package's prefill chunk (16): every row is a real, positive measurement."""
    rows = long_context.measure_long(tiny_package, [8, 40, 100], gen_tokens=4, threads=1)
    assert [r["prompt_tokens"] for r in rows] == [8, 40, 100]
    for r in rows:
        assert r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0
        assert r["prefill_s"] == pytest.approx(r["prompt_tokens"] / r["prefill_tok_s"])


def test_table_ratios_per_length():
    rows = [
        {"model": "1b", "engine": "llama-aot", "weights": "q4f16", "prefill_chunk": 512, "prompt_tokens": 512,
         "prefill_tok_s": 200.0, "decode_tok_s": 30.0},
        {"model": "1b", "engine": "llama-aot", "weights": "q4f16", "prefill_chunk": 512, "prompt_tokens": 4096,
         "prefill_tok_s": 90.0, "decode_tok_s": 20.0},
        {"model": "1b", "engine": "llama.cpp", "weights": "Q4_0", "prompt_tokens": 512, "prefill_tok_s": 100.0,
         "decode_tok_s": 30.0},
        {"model": "1b", "engine": "llama.cpp", "weights": "Q4_0", "prompt_tokens": 4096, "prefill_tok_s": 60.0,
         "decode_tok_s": 16.0},
    ]
    lines = long_context.format_table(rows).splitlines()
    assert "| 512 | 200.0 | 2.56 | 30.0 | 2.00x | 1.00x |" in lines[2]
    assert "| 4096 | 90.0 | 45.51 | 20.0 | 1.50x | 1.25x |" in lines[3]
    assert lines[2].startswith("| 1b | llama-aot (chunk 512) |")


def test_table_compares_knobs_with_derived():
    """--compare-knobs: the package built with hand-set knobs is labelled and gets the derived one's ratio."""
    rows = [
        {"model": "1b", "engine": "llama-aot", "weights": "q4f16", "prompt_tokens": 4096, "schedule": "derived",
         "prefill_tok_s": 200.0, "decode_tok_s": 24.0},
        {"model": "1b", "engine": "llama-aot", "weights": "q4f16", "prompt_tokens": 4096,
         "schedule": "attn_decode_splits=1", "prefill_tok_s": 200.0, "decode_tok_s": 16.0},
    ]
    lines = long_context.format_table(rows).splitlines()
    assert lines[0].endswith("derived decode vs this |")
    assert lines[2].endswith("| - |") and "[attn_decode_splits=1]" in lines[3] and lines[3].endswith("| 1.50x |")


def test_window_memory_is_flat(capsys):
    """bench/window_memory.py: a windowed package generates 4000 tokens past its 256-token context window and
    its RSS does not grow with them (the cache holds the window only)."""
    import json

    from bench import window_memory

    assert window_memory.main(["--tokens", "4000", "--window", "64"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tokens"] == 4000 and len(out["rss_mb_by_tokens"]) == 2
    assert out["rss_growth_mb"] < 8
