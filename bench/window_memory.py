"""Flat memory of a sliding-window package: RSS while it generates far past its context window.

``python -m bench.window_memory [--tokens 20000] [--window 256] [--sinks 4]`` compiles the embedded tiny
model with ``--context-window 256 --sliding-window W --attention-sinks S`` and samples this process's
RSS every 2000 generated tokens (sampling at temperature 0.8, so the text does not settle into a loop).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv=None) -> int:
    from bench.e2e import TINY
    from compiler.compile import CompileOptions, compile_model
    from runtime_stubs.engine import Engine

    p = argparse.ArgumentParser(prog="python -m bench.window_memory")
    p.add_argument("--tokens", type=int, default=20000)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--sinks", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = compile_model(TINY, Path(tmp) / "pkg", CompileOptions(
            quant="q4f16", prefill_chunk=64, context_window=256, sliding_window=args.window, attention_sinks=args.sinks))
        engine = Engine(out, num_threads=args.threads)
        marks: list[tuple[int, float]] = []

        def on_token(_token: int) -> None:
            if (len(marks) + 1) * 2000 <= on_token.n + 1:
                marks.append((on_token.n + 1, round(rss_mb(), 1)))
            on_token.n += 1

        on_token.n = 0
        t0 = time.perf_counter()
        gen = engine.generate([1, 2, 3, 4, 5], max_tokens=args.tokens, stop_on_eos=False, temperature=0.8, seed=0,
                              on_token=on_token)
        seconds = time.perf_counter() - t0
    print(json.dumps({"tokens": len(gen.token_ids), "seconds": round(seconds, 1), "rss_mb_by_tokens": marks,
                      "rss_growth_mb": round(marks[-1][1] - marks[0][1], 1) if marks else None}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
