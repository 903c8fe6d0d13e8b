"""``--activation-sparsity`` measured: per setting, the inputs zeroed and the weight bytes a decoded token skips,
held-out perplexity through the library (tiny model) and decode / prefill speed against the dense q4f16 package
built in the same run (tiny model and the Llama-3.2-1B shape with random weights).

    python -m bench.activation_sparsity [--models tiny,1b] [--sparsities 0.3,0.4,0.5] [--threads N]

The 1B shape is calibrated on the tiny model's training text through its tokenizer (its ids lie in the 1B
vocabulary): random weights give no meaningful perplexity, but each projection still zeroes the calibrated
fraction of its inputs, which is what decode speed depends on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from bench.e2e import ROOT, _subprocess_json, ensure_1b_model

TINY = ROOT / "models" / "tiny-llama3"
ROUNDS = 3


def _compile(model_dir: Path, out: Path, sparsity: float | None, threads: int) -> dict:
    from compiler.compile import CompileOptions, compile_model

    extra = {"activation_sparsity": sparsity, "calibration_data": "train", "calibration_sequences": 32} if sparsity else {}
    compile_model(model_dir, out, CompileOptions(quant="q4f16", num_threads=threads, context_window=1024, **extra))
    return json.loads((out / "llama-aot.json").read_text())


def skipped_fraction(cfg: dict, zeroed: dict[str, float]) -> float:
    """Of the weight bytes a dense decoded token reads, the fraction a sparse one skips: each projection's
    zeroed fraction of its nibble rows (its scales are still read), over every weight read (lm_head included)."""
    from runtime_stubs.package_format import read_manifest

    nibbles = {e["name"].rsplit(".", 1)[0]: e["nbytes"] for e in read_manifest(cfg["_package"])
               if e["name"].endswith(".qweight")}
    return sum(nibbles[m] * z for m, z in zeroed.items()) / cfg["weights"]["bytes_read_per_decoded_token"]


def heldout_zeroed(model_dir: Path, thresholds: dict[str, float], tokens: int = 8192) -> dict[str, float]:
    """Per projection, the fraction of its inputs the thresholds zero on held-out text (transformers, float)."""
    import numpy as np
    import torch

    from compression.activation_sparsity import thresholded
    from compression.distill import token_stream
    from evaluation.reference import reference_model

    ids = token_stream(model_dir, "heldout")[:tokens]
    model = reference_model(model_dir)
    with torch.no_grad(), thresholded(model, thresholds) as counts:
        for s in range(0, ids.size - 1, 256):
            model(input_ids=torch.from_numpy(np.asarray(ids[s:s + 256]))[None], use_cache=False)
    return {m: c[0] / c[1] for m, c in counts.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.activation_sparsity")
    p.add_argument("--models", default="tiny,1b")
    p.add_argument("--sparsities", default="0.3,0.4,0.5")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--gen", type=int, default=64)
    p.add_argument("--workdir", default=str(ROOT / ".work" / "bench"))
    p.add_argument("--json-out", default=None)
    args = p.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in args.models.split(","):
        model_dir = TINY if model == "tiny" else ensure_1b_model(work, 128256)
        if model != "tiny" and not (model_dir / "tokenizer.json").is_file():
            shutil.copy(TINY / "tokenizer.json", model_dir / "tokenizer.json")  # calibration text's ids (< 4096)
        built = []
        for sparsity in [None] + [float(s) for s in args.sparsities.split(",")]:
            out = work / f"pkg-{model}-q4f16-sparse{sparsity or 0}"
            cfg = _compile(model_dir, out, sparsity, args.threads)
            cfg["_package"] = str(out)
            built.append((sparsity, out, cfg))
        # the packages measured in turns, best of ROUNDS each: this machine's speed drifts by tens of percent
        # over minutes (other tenants), so one package after the other would compare different machines
        speed: dict[Path, dict] = {}
        for _ in range(ROUNDS):
            for _, out, _ in built:
                m = _subprocess_json(["bench.e2e", "_measure", str(out), str(args.prompt), str(args.gen),
                                      str(args.threads)])
                best = speed.setdefault(out, m)
                for k in ("prefill_tok_s", "decode_tok_s"):
                    best[k] = max(best[k], m[k])
        for sparsity, out, cfg in built:
            row = {"model": model, "sparsity": sparsity or 0.0, **speed[out]}
            if sparsity and model == "tiny":
                zeroed = heldout_zeroed(model_dir, cfg["activation_sparsity"]["thresholds"])
                row["inputs_zeroed"] = sum(zeroed.values()) / len(zeroed)
                row["bytes_skipped"] = skipped_fraction(cfg, zeroed)
            elif sparsity:  # random weights: the calibrated fraction itself
                row["inputs_zeroed"] = sparsity
                row["bytes_skipped"] = skipped_fraction(cfg, dict.fromkeys(cfg["activation_sparsity"]["thresholds"], sparsity))
            if model == "tiny":
                ev = _subprocess_json(["cli", "eval", str(out), "--data", "heldout", "--json"])
                row["perplexity"] = ev["perplexity"]
            rows.append(row)
            print(row, file=sys.stderr)
    print(format_table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


def format_table(rows: list[dict]) -> str:
    lines = ["| model | sparsity | inputs zeroed | weight bytes skipped | perplexity | prefill tok/s | decode tok/s | decode vs dense |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        dense = next(x for x in rows if x["model"] == r["model"] and x["sparsity"] == 0.0)
        fmt = lambda k, f: f.format(r[k]) if k in r else "-"  # noqa: E731
        lines.append(f"| {r['model']} | {r['sparsity']:.2f} | {fmt('inputs_zeroed', '{:.1%}')} | {fmt('bytes_skipped', '{:.1%}')} "
                     f"| {fmt('perplexity', '{:.3f}')} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} "
                     f"| {r['decode_tok_s'] / dense['decode_tok_s']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
