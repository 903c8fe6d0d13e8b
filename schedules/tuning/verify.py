"""Re-time the records of a database against the derived kernels, independently of the search that chose them.

Why: a search keeps the minimum of many timings, so on a shared machine a lucky run can make a candidate look
better than it is (the search's confirmation step guards against it; this is the check after the fact). For each
record with knobs, the derived and the tuned kernel are built and timed alternately (``rounds`` x each, the same
inputs and timing as the search) and the minima and medians are reported.

    python -m schedules.tuning.verify MODEL --db DIR [--rounds 5] [--f32-activations] [--json PATH]
"""

from __future__ import annotations

import statistics


def verify(model_dir, options, db_dir, rounds: int = 5, keys: list[str] | None = None) -> list[dict]:
    from .database import TuningDB
    from .measure import Job, LocalRunner, Timing, build, make_inputs
    from .space import space_for
    from .target import resolve
    from .tasks import extract_tasks

    tt = resolve(options)
    db = TuningDB.open(db_dir, tt.soc, tt.facts(), create=False)
    tasks, info = extract_tasks(model_dir, options, tt)
    flush = info["weight_bytes"] > 2 * tt.params.l3_bytes
    runner = LocalRunner(tt.params.num_cores)
    rows = []
    for task in tasks:
        rec = db.get(task.key)
        if rec is None or not rec["knobs"] or (keys and task.key not in keys) or space_for(task, tt) is None:
            continue
        inputs = make_inputs(task)
        timing = Timing.for_task(task, flush)
        libs = {name: build(task, knobs, tt)[0] for name, knobs in (("derived", {}), ("tuned", rec["knobs"]))}
        runs = {"derived": [], "tuned": []}
        jid = 0
        for _ in range(rounds):
            for name in ("derived", "tuned"):
                jid += 1
                res = runner.run([Job(jid, task.key, {}, libs[name], None, inputs, timing)])[jid]
                runs[name].extend(res.runs_us if res.error is None else [])
        row = {"key": task.key, "label": task.label, "knobs": rec["knobs"], "search_derived_us": rec["derived_us"],
               "search_tuned_us": rec["tuned_us"]}
        for name, vals in runs.items():
            row[f"{name}_min_us"] = round(min(vals), 2) if vals else None
            row[f"{name}_median_us"] = round(statistics.median(vals), 2) if vals else None
        if row["derived_min_us"] and row["tuned_min_us"]:
            row["gain_min"] = round(row["derived_min_us"] / row["tuned_min_us"] - 1, 4)
            row["gain_median"] = round(row["derived_median_us"] / row["tuned_median_us"] - 1, 4)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    import argparse
    import json

    from compiler.compile import CompileOptions

    ap = argparse.ArgumentParser(description="re-time tuned records against the derived kernels")
    ap.add_argument("model_dir")
    ap.add_argument("--db", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quant", default="q4f16")
    ap.add_argument("--prefill-chunk", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--f32-activations", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    options = CompileOptions(quant=args.quant, prefill_chunk=args.prefill_chunk, num_threads=args.threads,
                             int8_activations=False if args.f32_activations else None)
    rows = verify(args.model_dir, options, args.db, args.rounds)
    for r in rows:
        print(f"{r['label'][:56]:56s} derived {r['derived_min_us']:>10} / {r['derived_median_us']:>10}  "
              f"tuned {r['tuned_min_us']:>10} / {r['tuned_median_us']:>10} us (min / median)  "
              f"gain {r.get('gain_min', 0):+.1%} / {r.get('gain_median', 0):+.1%}  {r['knobs']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
