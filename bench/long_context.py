"""``llama-aot bench --long 512,1024,2048,4096``: long prompts, ours next to llama.cpp in the same run.

For each prompt length N it measures prefill tok/s of one N-token prompt and decode tok/s of the
``--gen`` tokens after it (so decode runs at N tokens of context), for our package compiled with
``--prefill-chunk`` and a context window of max(N) + gen, and for llama.cpp on the same weights
(``llama-bench -p N -n 0`` and ``-p 0 -n gen -d N``). The ratio columns are ours / llama.cpp; the
measured attention part grows as N^2 while everything else grows as N, so a kernel that scales
badly shows as a ratio falling with N.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path


def measure_long(package: Path, lengths: list[int], gen_tokens: int, threads: int) -> list[dict]:
    """Run in this process (a subprocess of :func:`run`): one prompt per length, weights loaded once."""
    from bench.peers import prompt_ids
    from runtime_stubs.engine import Engine

    engine = Engine(package, num_threads=threads)
    ids = prompt_ids(max(lengths), engine.vocab_size)
    engine.generate(ids[:8], max_tokens=4, stop_on_eos=False)  # warm-up: page in weights
    rows = []
    for n in lengths:
        g = engine.generate(ids[:n], max_tokens=gen_tokens + 1, stop_on_eos=False)
        rows.append({"prompt_tokens": n, "prefill_tok_s": g.prefill_tokens_per_s, "decode_tok_s": g.decode_tokens_per_s,
                     "prefill_s": n / g.prefill_tokens_per_s})
        print(f"  ours {n} tokens: prefill {rows[-1]['prefill_tok_s']:.1f} tok/s, decode {rows[-1]['decode_tok_s']:.1f} tok/s",
              file=sys.stderr, flush=True)
    return rows


def run(args) -> list[dict]:
    from bench import peers
    from bench.e2e import TINY, _subprocess_json, ensure_1b_model, ensure_gguf
    from compiler.compile import CompileOptions, compile_model

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lengths = args.long
    rows: list[dict] = []
    for model_name in args.models.split(","):
        model_dir = TINY if model_name == "tiny" else ensure_1b_model(workdir, args.vocab)
        for quant in args.quants.split(","):
            context = max(lengths) + args.gen + 1
            # the derived schedules, and with --compare-knobs the same package with those knobs set by hand
            for knobs in [None] + ([args.compare_knobs] if getattr(args, "compare_knobs", None) else []):
                tag = "" if knobs is None else "-k" + hashlib.sha1(knobs.encode()).hexdigest()[:8]
                out = workdir / f"pkg-{model_name}-{quant}-long-c{args.prefill_chunk}-w{context}{tag}"
                t0 = time.perf_counter()
                compile_model(model_dir, out, CompileOptions(quant=quant, num_threads=args.threads, context_window=context,
                                                             prefill_chunk=args.prefill_chunk, schedule_knobs=knobs))
                print(f"compiled {out.name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
                measured = _subprocess_json(["bench.long_context", "_measure", str(out), ",".join(map(str, lengths)),
                                             str(args.gen), str(args.threads)])
                rows += [{"model": model_name, "engine": "llama-aot", "weights": quant, "prefill_chunk": args.prefill_chunk,
                          "schedule": knobs or "derived", **m} for m in measured]
        if "llamacpp" in args.peers:
            try:
                gguf = ensure_gguf(model_name, model_dir, workdir, "Q4_0")
                for n in lengths:
                    m = peers.measure_llama_cpp(gguf, n, args.gen, args.threads, reps=1)
                    if m is None:
                        print(f"llama.cpp: not measured ({peers.llama_cpp_unavailable_reason()})", file=sys.stderr)
                        break
                    rows.append({"model": model_name, "engine": "llama.cpp", "weights": "Q4_0", "prompt_tokens": n, **m})
                    print(f"  llama.cpp {n} tokens: prefill {m['prefill_tok_s']:.1f} tok/s, decode {m['decode_tok_s']:.1f} tok/s",
                          file=sys.stderr, flush=True)
            except Exception as e:  # a missing peer must not hide our numbers
                print(f"llama.cpp: not measured ({e})", file=sys.stderr)
    return rows


def format_table(rows: list[dict]) -> str:
    knobbed = any(r.get("schedule", "derived") != "derived" for r in rows)
    lines = [
        "| model | engine | weights | prompt tokens | prefill tok/s | prefill s | decode tok/s at that context | prefill vs llama.cpp | decode vs llama.cpp |"
        + (" derived decode vs this |" if knobbed else ""),
        "|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if knobbed else ""),
    ]
    for r in rows:
        def same(x, engine):
            return x["model"] == r["model"] and x["engine"] == engine and x["prompt_tokens"] == r["prompt_tokens"]

        ref = next((x for x in rows if same(x, "llama.cpp")), None)
        derived = next((x for x in rows if same(x, "llama-aot") and x.get("weights") == r["weights"]
                        and x.get("schedule") == "derived"), None)
        pr = f"{r['prefill_tok_s'] / ref['prefill_tok_s']:.2f}x" if ref else "-"
        dr = f"{r['decode_tok_s'] / ref['decode_tok_s']:.2f}x" if ref else "-"
        engine = r["engine"] + (f" (chunk {r['prefill_chunk']})" if "prefill_chunk" in r else "")
        if r.get("schedule", "derived") != "derived":
            engine += f" [{r['schedule']}]"
        vs = ""
        if knobbed:
            vs = f" {derived['decode_tok_s'] / r['decode_tok_s']:.2f}x |" if derived and r.get("schedule", "derived") != "derived" else " - |"
        lines.append(f"| {r['model']} | {engine} | {r['weights']} | {r['prompt_tokens']} | {r['prefill_tok_s']:.1f} "
                     f"| {r['prompt_tokens'] / r['prefill_tok_s']:.2f} | {r['decode_tok_s']:.1f} | {pr} | {dr} |" + vs)
    return "\n".join(lines)


def main(args) -> int:
    rows = run(args)
    print(format_table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "_measure":
        lengths = [int(x) for x in sys.argv[3].split(",")]
        print(json.dumps(measure_long(Path(sys.argv[2]), lengths, int(sys.argv[4]), int(sys.argv[5]))))
