"""Start-up and time to first token of `llama-aot run`, as a user meets them.

    python -m bench.startup PKG [--prompts 32,128] [--runs 4]

Each run is a fresh `llama-aot run PKG --prompt-ids ... --max-tokens 1 --json` process. Reported per prompt
length: the process's wall time, "ready" (process start to a loaded package: imports, checksums, library,
weights mapped) and the time to the first token (prefill + one draw), for the first run (the package's
pages not yet in the OS cache after a compile, unless something read them since) and the median of the
rest (warm). Goals of issue 15 on the 1B shape: ready <= 1.0 s, warm first token of 32 tokens <= 300 ms.
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def one_run(package: Path, n: int, vocab: int, threads: int | None) -> dict:
    ids = ",".join(str((7919 * i) % (vocab - 256) + 2) for i in range(n))
    cmd = [sys.executable, "-m", "cli", "run", str(package), "--prompt-ids", ids, "--max-tokens", "1", "--greedy",
           "--json"] + (["--threads", str(threads)] if threads else [])
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"error: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    out = json.loads(res.stdout)
    return {"wall_s": wall, "ready_s": out["ready_seconds"], "first_token_s": out["first_token_seconds"],
            "peak_rss_mb": out["peak_rss_mb"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", type=Path)
    ap.add_argument("--prompts", default="32,128")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    vocab = int(json.loads((args.package / "llama-aot.json").read_text())["model"]["vocab_size"])
    print("| prompt | run | wall (s) | ready (s) | first token (ms) | peak RSS (MB) |\n|---:|---|---:|---:|---:|---:|")
    for n in [int(x) for x in args.prompts.split(",")]:
        runs = [one_run(args.package, n, vocab, args.threads) for _ in range(args.runs)]
        warm = {k: statistics.median(r[k] for r in runs[1:]) for k in runs[0]} if len(runs) > 1 else runs[0]
        for label, r in (("first", runs[0]), ("warm (median)", warm)):
            print(f"| {n} | {label} | {r['wall_s']:.2f} | {r['ready_s']:.2f} | {r['first_token_s'] * 1e3:.0f} | "
                  f"{r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
