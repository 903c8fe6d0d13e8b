"""What pruning costs and buys (issue 13 §2), measured in one run.

``quality``: for each target size, held-out perplexity (``llama-aot eval``'s tokens) of
  - ``l0``: learned hard-concrete masks + recovery (``llama-aot prune``'s default),
  - ``taylor``: one-shot first-order importance (``--taylor-steps`` batches, no weight update) + recovery for as
    many weight updates as l0 made in both its phases,
  - ``scratch``: the l0 result's shape trained from random initialisation by the same distillation for the same
    number of steps (peak learning rate SCRATCH_LR, the one the embedded model was trained with from scratch),
  next to the unpruned model. Outputs that already exist with the same options are reused.

``decode``: the 1B shape pruned by the same shape transform (``transfer_shape``: each 1B layer takes the kept
fractions of the embedded model's layer at the same depth), random weights, compiled q4f16 with its unpruned twin
in the same run; decode tok/s against the weight bytes each reads per token.

    python -m bench.prune_curve quality --targets 0.9,0.8,0.65,0.5
    python -m bench.prune_curve decode --pruned .work/prune/l0-65
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "tiny-llama3"
SCRATCH_LR = 3e-3  # models/tiny-llama3/TRAINING.md: the peak learning rate of its own from-scratch training


def transfer_shape(pruned: dict, base: dict, big: dict, group: int = 32) -> dict:
    """``big``'s config pruned as ``pruned`` pruned ``base``: layer j of ``big`` follows ``base``'s layer at the
    same depth (floor(j * L_base / L_big)); dropped there, dropped here; else it keeps the same fractions of its
    KV groups (at least one) and FFN channels (in blocks of ``group``, at least one block)."""
    n_base, n_big = int(base["num_hidden_layers"]), int(big["num_hidden_layers"])
    kept = {int(s.get("source_layer", i)): s for i, s in enumerate(pruned["layer_shapes"])}
    base_kv, base_ffn = int(base["num_key_value_heads"]), int(base["intermediate_size"])
    q_per_kv = int(big["num_attention_heads"]) // int(big["num_key_value_heads"])
    shapes = []
    for j in range(n_big):
        s = kept.get(j * n_base // n_big)
        if s is None:
            continue
        kv = max(1, round(s["num_key_value_heads"] / base_kv * big["num_key_value_heads"]))
        blocks = max(1, round(s["intermediate_size"] / base_ffn * big["intermediate_size"] / group))
        shapes.append({"num_attention_heads": kv * q_per_kv, "num_key_value_heads": kv,
                       "intermediate_size": blocks * group, "source_layer": j})
    return {**big, "num_hidden_layers": len(shapes), "layer_shapes": shapes}


def _perplexity(path: Path, threads: int) -> float:
    from evaluation.documents import load_documents
    from evaluation.perplexity import evaluate, open_scorer

    return evaluate(open_scorer(path, threads), load_documents("heldout"), "heldout", 256, progress=False).perplexity


def _prune(out: Path, options) -> dict:
    from compression.prune import REPORT, SizeController, prune

    report = out / REPORT
    if report.is_file():
        old = json.loads(report.read_text())
        control = SizeController.NAME if options.method == "l0" else None
        if old["options"] == _options_json(options) and old.get("size_control") == control:
            return old
    return prune(TINY, out, options)


def _options_json(options) -> dict:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(options)))


def _scratch(out: Path, shape_of: Path, steps: int, options) -> None:
    """The pruned shape of ``shape_of`` trained from random weights by distillation for ``steps``."""
    import torch

    from compression.distill import token_stream
    from compression.prune import distill, write_checkpoint
    from evaluation.reference import model_from_config, reference_model

    done, record = out / "scratch.json", {"steps": steps, "lr": SCRATCH_LR, "seed": options.seed}
    if done.is_file() and json.loads(done.read_text()) == record:
        return
    config = json.loads((shape_of / "config.json").read_text())
    torch.manual_seed(options.seed)
    student = model_from_config(config, None)
    teacher = reference_model(TINY)
    for p in teacher.parameters():
        p.requires_grad_(False)
    distill(student, teacher, token_stream(TINY, options.data), replace(options, lr=SCRATCH_LR), steps)
    write_checkpoint(out, student, config, TINY, done.name, record, "a from-scratch baseline")


def quality(args) -> list[dict]:
    from compression.prune import PruneOptions

    work = Path(args.workdir)
    base = _perplexity(TINY, args.threads)
    rows = [{"target": 1.0, "method": "unpruned", "kept": 1.0, "perplexity": base, "vs_unpruned": 0.0}]
    for t in (float(x) for x in args.targets.split(",")):
        name = f"{round(t * 100):02d}"
        l0 = PruneOptions(target_params=t, steps=args.steps, recovery_steps=args.recovery_steps)
        report = _prune(work / f"l0-{name}", l0)
        steps = report["steps"]["select"] + report["steps"]["recovery"]
        runs = [("l0", work / f"l0-{name}", report["non_embedding_params"]["kept"])]
        if "taylor" in args.methods:
            taylor = replace(l0, method="taylor", steps=args.taylor_steps, recovery_steps=steps)
            r = _prune(work / f"taylor-{name}", taylor)
            runs.append(("taylor", work / f"taylor-{name}", r["non_embedding_params"]["kept"]))
        if "scratch" in args.methods:
            _scratch(work / f"scratch-{name}", work / f"l0-{name}", steps, l0)
            runs.append(("scratch", work / f"scratch-{name}", report["non_embedding_params"]["kept"]))
        for method, path, kept in runs:
            ppl = _perplexity(path, args.threads)
            rows.append({"target": t, "method": method, "kept": kept, "perplexity": ppl, "vs_unpruned": ppl / base - 1})
            print(rows[-1], file=sys.stderr, flush=True)
    return rows


def decode(args) -> list[dict]:
    from bench.e2e import _subprocess_json, compile_timed, ensure_1b_model
    from compiler.frontend.synthetic import write_random_checkpoint

    work = Path(args.workdir)
    dense = ensure_1b_model(work, args.vocab)
    dense_config = json.loads((dense / "config.json").read_text())
    pruned_tiny = json.loads((Path(args.pruned) / "config.json").read_text())
    config = transfer_shape(pruned_tiny, json.loads((TINY / "config.json").read_text()), dense_config)
    pruned = work / f"llama3.2-1b-shape-pruned-{Path(args.pruned).name}"
    if not (pruned / "config.json").is_file() or json.loads((pruned / "config.json").read_text()) != config:
        write_random_checkpoint(pruned, config, dtype="bfloat16", seed=0)
    rows = []
    for name, model in (("dense", dense), ("pruned", pruned)):
        pkg = work / f"pkg-1b-{args.quant}-{name}-{Path(args.pruned).name}"
        _, cfg = compile_timed(model, pkg, args.quant, args.threads)
        rows.append({"model": name, "package": pkg, "bytes_per_token": cfg["weights"]["bytes_read_per_decoded_token"],
                     "decode_tok_s": 0.0})
    for _ in range(args.reps):  # alternate, so both see the same machine load
        for r in rows:
            m = _subprocess_json(["bench.e2e", "_measure", str(r["package"]), "128", str(args.gen), str(args.threads)])
            r["decode_tok_s"] = max(r["decode_tok_s"], m["decode_tok_s"])
    d, p = rows
    for r in rows:
        r["package"] = str(r["package"])
    print(f"1B shape {args.quant}: bytes per token {p['bytes_per_token'] / d['bytes_per_token']:.3f}x, decode time per "
          f"token {d['decode_tok_s'] / p['decode_tok_s']:.3f}x of dense ({d['decode_tok_s']:.1f} -> "
          f"{p['decode_tok_s']:.1f} tok/s)")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.prune_curve", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=str(ROOT / ".work" / "prune"))
    p.add_argument("--threads", type=int, default=2)
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--targets", default="0.9,0.8,0.65,0.5")
    q.add_argument("--methods", default="l0,taylor,scratch")
    q.add_argument("--steps", type=int, default=200)
    q.add_argument("--recovery-steps", type=int, default=200)
    q.add_argument("--taylor-steps", type=int, default=32)
    d = sub.add_parser("decode")
    d.add_argument("--pruned", required=True, help="a prune output of the embedded model whose shape to transfer")
    d.add_argument("--quant", default="q4f16")
    d.add_argument("--vocab", type=int, default=128256)
    d.add_argument("--gen", type=int, default=64)
    d.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    rows = quality(args) if args.what == "quality" else decode(args)
    for r in rows:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
