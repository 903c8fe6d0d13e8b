"""Peak memory of `llama-aot compile` on the Llama-3.1-8B shape (random bf16 weights, q4f16).

    python3 scripts/compile_memory.py [--layers 32] [--work /tmp/llama-aot-8b] [--quant q4f16]

Writes the random checkpoint once (16 GB on disk for 32 layers; kept in --work for the next run), compiles it
in a child process and samples the child's resident set every 20 ms (psutil; the kernel's ru_maxrss as a cross
check), then checks that `--max-memory` below the compile's own estimate is refused up front. The figures
are in docs/reliability.md ("Compile memory").
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compiler.frontend.synthetic import llama31_8b_config, write_random_checkpoint  # noqa: E402


def _sample_peak(proc: subprocess.Popen, out: dict) -> None:
    p = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        except psutil.Error:
            break
        peak = max(peak, rss)
        time.sleep(0.02)
    out["peak"] = peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--work", default="/tmp/llama-aot-8b")
    ap.add_argument("--quant", default="q4f16")
    ap.add_argument("--context-window", type=int, default=4096)
    args = ap.parse_args()
    work = Path(args.work)
    ckpt = work / f"llama31-8b-{args.layers}l"
    if not (ckpt / "config.json").is_file():
        t0 = time.perf_counter()
        write_random_checkpoint(ckpt, dict(llama31_8b_config(), num_hidden_layers=args.layers), dtype="bfloat16",
                                num_shards=4)
        print(f"wrote {ckpt} in {time.perf_counter() - t0:.0f} s")
    size = sum(p.stat().st_size for p in ckpt.glob("*.safetensors"))
    cmd = [sys.executable, "-m", "cli", "compile", str(ckpt), "-o", str(work / "pkg"), "--quant", args.quant,
           "--context-window", str(args.context_window)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT)
    sampled: dict = {}
    th = threading.Thread(target=_sample_peak, args=(proc, sampled))
    th.start()
    code = proc.wait()
    th.join()
    seconds = time.perf_counter() - t0
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if code != 0:
        print(f"compile failed with exit code {code}")
        return 1
    cfg = json.loads((work / "pkg" / "llama-aot.json").read_text())
    # --max-memory 1M: refused before any work; the message says what the compile needs
    refused = [sys.executable, "-m", "cli", "compile", str(ckpt), "-o", str(work / "refused"), "--quant", args.quant,
               "--context-window", str(args.context_window), "--max-memory", "1M"]
    t0 = time.perf_counter()
    res = subprocess.run(refused, cwd=ROOT, capture_output=True, text=True)
    refuse_seconds = time.perf_counter() - t0
    m = re.search(r"needs about ([\d.]+) GB", res.stderr)
    print(json.dumps({"layers": args.layers, "quant": args.quant, "checkpoint_bytes": size,
                      "package_weight_bytes": cfg["weights"]["bytes"], "compile_seconds": round(seconds, 1),
                      "peak_rss_bytes_sampled": sampled.get("peak"), "peak_rss_bytes_ru_maxrss": maxrss,
                      "estimate_bytes": float(m.group(1)) * 1e9 if m else None}, indent=1))
    print(f"--max-memory 1M: exit {res.returncode} after {refuse_seconds:.1f} s: {res.stderr.strip()[-300:]}")
    return 0 if res.returncode == 2 and m and not (work / "refused").exists() else 1


if __name__ == "__main__":
    sys.exit(main())
