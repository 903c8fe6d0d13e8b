"""``llama-aot tune``: measured search over our rules' own knobs, per SoC, resumable, local or over TVM RPC.

One concept per module:

* ``target``   -- what a run is for: SoC key, TVM target, the facts the derivations use (fingerprinted);
* ``tasks``    -- the model's distinct kernels (structural hash / hand-written key), call counts, weights;
* ``space``    -- the knob space per kernel kind, the derived value first;
* ``measure``  -- build a candidate, time it here or on every server of an RPC key;
* ``search``   -- coordinate descent + confirmation against the derived kernel -> one record;
* ``cost_model`` -- device-less ranking (roofline + cache-fit penalties) and its Spearman check;
* ``database`` -- ``DIR/<soc>.json``: header checks, atomic writes, resume, merge;
* ``apply``    -- ``compile --tuned DB``: records override knobs per kernel (rules and int8 kernels).

``tune(...)`` is what the CLI calls. Imports stay inside functions: ``schedules.cpu.base`` imports ``apply`` on
every rule application and must not pull the tuner in.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time

from runtime_stubs import interrupt


def tune(
    model_dir,
    options,
    db_dir,
    trials: int = 16,
    rpc: str | None = None,
    key: str | None = None,
    cost_model: bool = False,
    kinds: list[str] | None = None,
    max_tasks: int | None = None,
    show_progress: bool = True,
    seed: int = 0,
) -> dict:
    """Tune the model's kernels for ``options``' target into ``db_dir``; returns the report (see ``report_text``).

    ``trials``: candidates measured per kernel (the derived one included); a kernel whose record already has that
    many is skipped (resume). ``rpc``/``key``: time on the servers a TVM tracker has under ``key`` (default: the
    SoC key). ``cost_model``: no device, rank candidates by the analytic model. ``kinds``: restrict to kernel
    kinds (dequant_gemv, dequant_gemm, int8_gemv, int8_gemm). ``max_tasks``: only the heaviest N.
    """
    from tqdm import tqdm

    from runtime_stubs.errors import LlamaAotError

    from .database import TuningDB
    from .measure import InvalidCandidate, LocalRunner, RPCRunner
    from .search import Search, cost_model_record
    from .space import space_for
    from .target import resolve
    from .tasks import extract_tasks

    if trials < 1:
        raise LlamaAotError("--trials must be at least 1")
    t_start = time.perf_counter()
    tt = resolve(options)
    if rpc is None and not cost_model and not tt.is_host:
        raise LlamaAotError(
            f"{tt.soc} is not this machine: time on the device with --rpc HOST:PORT --key KEY (docs/tuning.md), "
            f"or rank without it with --cost-model"
        )
    db = TuningDB.open(db_dir, tt.soc, tt.facts())
    runner = None
    if not cost_model:
        if rpc is not None:
            runner = RPCRunner(rpc, key or tt.soc, num_threads=tt.params.num_cores)
        else:
            runner = LocalRunner(tt.params.num_cores)
    tasks, info = extract_tasks(model_dir, options, tt)
    todo = []
    for task in tasks:
        if kinds and task.kind not in kinds:
            continue
        space = space_for(task, tt)
        if space is not None:
            todo.append((task, space))
    if max_tasks is not None:
        todo = todo[: max(0, int(max_tasks))]
    flush = info["weight_bytes"] > 2 * tt.params.l3_bytes  # weights streamed from DRAM in the model
    workdir = tempfile.mkdtemp(prefix="llama-aot-tune-") if rpc is not None else None
    rows, skipped = [], []
    pending = [(t, s) for t, s in todo if not db.done(t.key, trials, predicted=cost_model)]
    skipped = [t for t, _ in todo if db.done(t.key, trials, predicted=cost_model)]
    overall = tqdm(total=len(pending) * trials, desc=f"tune {tt.soc}", unit="trial", disable=not show_progress, position=0)
    try:
        for i, (task, space) in enumerate(pending):
            bar = tqdm(total=trials, desc=f"[{i + 1}/{len(pending)}] {task.label}"[:70], unit="trial",
                       leave=False, disable=not show_progress, position=1)

            def step(n, bar=bar):
                bar.update(n)
                overall.update(n)

            try:
                if cost_model:
                    rec = cost_model_record(task, space, tt, trials, seed)
                    step(rec["trials"])
                else:
                    rec = Search(task, space, tt, runner, trials, flush, workdir, progress=step, seed=seed).run()
            except InvalidCandidate as err:
                if interrupt.requested():
                    raise KeyboardInterrupt from err
                rows.append({"key": task.key, "label": task.label, "error": str(err)})
                bar.close()
                continue
            done_here = bar.n
            bar.close()
            overall.update(max(0, trials - done_here))
            rec["weight_us"] = round(task.weight_us, 2)
            rec["calls"] = dict(task.calls)
            kept = db.add(rec)
            rows.append({**{k: rec[k] for k in ("key", "kind", "label", "derived_us", "tuned_us", "trials")},
                         "knobs": rec["knobs"], "wall_s": rec.get("wall_s"), "kept_us": kept["tuned_us"],
                         "calls": task.calls})
    except BaseException as err:
        if not interrupt.is_interrupt(err):
            raise
        overall.close()
        print(f"interrupted: {len(db.records)} records kept in {db.path} (written after each kernel); "
              f"the same command resumes", file=sys.stderr)
        raise KeyboardInterrupt from err
    finally:
        overall.close()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "soc": tt.soc,
        "db": str(db.path),
        "runner": runner.describe() if runner is not None else "cost-model",
        "flush_caches": flush,
        "trials_per_kernel": trials,
        "tasks_total": len(tasks),
        "tasks_tunable": len(todo),
        "skipped_done": [t.key for t in skipped],
        "kernels": rows,
        "all_tasks": [t.summary() for t in tasks],
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if isinstance(runner, RPCRunner):
        report["rpc"] = {"servers": runner.n_servers, "requeued": runner.requeued, "failed_jobs": runner.servers_lost}
    report["summary"] = summarize(rows)
    return report


def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if "error" not in r]
    gains = [r["derived_us"] / r["tuned_us"] - 1 for r in ok if r["tuned_us"]]
    per_phase = {}
    for phase in ("decode", "prefill"):
        d = sum(r["calls"][phase] * r["derived_us"] for r in ok)
        t = sum(r["calls"][phase] * r["tuned_us"] for r in ok)
        per_phase[phase] = {"derived_us": round(d, 1), "tuned_us": round(t, 1), "gain": round(d / t - 1, 4) if t else 0.0}
    return {
        "tuned": len(ok),
        "errors": len(rows) - len(ok),
        "improved_2pct": sum(1 for g in gains if g >= 0.02),
        "improved_5pct": sum(1 for g in gains if g >= 0.05),
        "improved_10pct": sum(1 for g in gains if g >= 0.10),
        "best_gain": round(max(gains), 4) if gains else 0.0,
        "matmul_time_per_step": per_phase,  # kernel-level: sum(calls x time) of the tuned kernels
    }


def report_text(report: dict) -> str:
    lines = [f"tuned for {report['soc']} on {report['runner']} -> {report['db']} "
             f"({report['tasks_tunable']} tunable of {report['tasks_total']} kernels, {report['wall_s']} s)"]
    lines.append(f"{'kernel':58s} {'derived us':>11s} {'tuned us':>10s} {'gain':>7s} {'trials':>6s} {'wall s':>7s}  knobs")
    for r in report["kernels"]:
        if "error" in r:
            lines.append(f"{r['label'][:58]:58s} error: {r['error']}")
            continue
        gain = r["derived_us"] / r["tuned_us"] - 1 if r["tuned_us"] else 0.0
        lines.append(f"{r['label'][:58]:58s} {r['derived_us']:11.1f} {r['tuned_us']:10.1f} {gain:+7.1%} "
                     f"{r['trials']:6d} {r['wall_s'] or 0:7.1f}  {r['knobs'] or 'derived'}")
    for k in report["skipped_done"]:
        lines.append(f"{k}: already tuned with >= {report['trials_per_kernel']} trials (kept)")
    s = report["summary"]
    lines.append(f"improved: {s['improved_2pct']} kernels by >= 2%, {s['improved_5pct']} by >= 5%, "
                 f"{s['improved_10pct']} by >= 10% (best {s['best_gain']:+.1%})")
    for phase, v in s["matmul_time_per_step"].items():
        lines.append(f"{phase}: tuned kernels {v['derived_us']:.0f} -> {v['tuned_us']:.0f} us per step ({v['gain']:+.1%})")
    if "rpc" in report:
        lines.append(f"rpc: {report['rpc']['servers']} servers, {report['rpc']['requeued']} jobs re-queued")
    return "\n".join(lines)


__all__ = ["report_text", "summarize", "tune"]
