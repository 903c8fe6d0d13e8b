"""Load on `llama-aot serve`: requests/s and generated tokens/s at 1, 2, 4, 8 concurrent clients.

    python -m bench.serve_load PKG [--clients 1,2,4,8] [--requests 4] [--max-tokens 32] [--prompt-tokens 32]

Starts the server as a subprocess on a free loopback port and drives it with the official openai client,
each client in its own thread sending its requests one after another (/v1/completions, greedy, distinct
token-id prompts). A package without tokenizer.json (the random-weight 1B-shape packages of `llama-aot bench`)
is served through a view that adds the embedded tiny model's tokenizer: ids past its vocabulary decode to
nothing, so the text means nothing, but the token counts and timings are the real model's.
"""

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TINY_TOKENIZER = Path(__file__).resolve().parent.parent / "models" / "tiny-llama3" / "tokenizer.json"


def _view_with_tokenizer(package: Path, root: Path) -> Path:
    view = root / package.name
    view.mkdir()
    for p in package.iterdir():
        (view / p.name).symlink_to(p.resolve(), target_is_directory=p.is_dir())
    (view / "tokenizer.json").symlink_to(TINY_TOKENIZER)
    return view


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package", type=Path)
    ap.add_argument("--clients", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    from openai import OpenAI

    config = json.loads((args.package / "llama-aot.json").read_text())
    vocab = int(config["model"]["vocab_size"])
    with tempfile.TemporaryDirectory() as tmp:
        pkg = args.package if (args.package / "tokenizer.json").is_file() else _view_with_tokenizer(args.package, Path(tmp))
        cmd = [sys.executable, "-m", "cli", "serve", str(pkg), "--port", "0", "--model-name", "m"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            m = re.search(r"at (http://\S+/v1)", proc.stdout.readline())
            if not m:
                print("error: the server did not start", file=sys.stderr)
                return 1
            client = OpenAI(base_url=m.group(1), api_key="unused", max_retries=0, timeout=600)

            def request(k: int) -> tuple[int, float]:
                prompt = [(7919 * (k * args.prompt_tokens + i)) % (vocab - 256) + 2 for i in range(args.prompt_tokens)]
                t0 = time.perf_counter()
                r = client.completions.create(model="m", prompt=prompt, max_tokens=args.max_tokens, temperature=0)
                return r.usage.completion_tokens, time.perf_counter() - t0

            request(10**6)  # warm-up: first-call costs out of the rows
            rows = []
            for c in [int(x) for x in args.clients.split(",")]:
                def client_loop(j: int) -> list:
                    return [request(j * args.requests + r) for r in range(args.requests)]

                t0 = time.perf_counter()
                with ThreadPoolExecutor(c) as pool:
                    done = [x for per in pool.map(client_loop, range(c)) for x in per]
                wall = time.perf_counter() - t0
                tokens = sum(n for n, _ in done)
                rows.append({"clients": c, "requests": len(done), "seconds": wall, "requests_per_s": len(done) / wall,
                             "tokens_per_s": tokens / wall, "mean_latency_s": sum(t for _, t in done) / len(done)})
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print(f"| clients | requests | requests/s | generated tok/s | mean latency (s) |\n|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
              f"{r['mean_latency_s']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
