"""Rank candidates without a device: an analytic roofline model from the SoC facts, plus cache-fit penalties.

Why analytic (not MetaSchedule's XGBoost model): it needs no training data from the device, which is the whole
point of a device-less mode, and each term says why a candidate is predicted slow. It is a ranking model: the
absolute times are rough, what matters is the order within one kernel's space, and its quality is measured --
``spearman`` of predicted vs measured times over the candidates a measured run timed (stored in every record's
``history``), ``python -m schedules.tuning.cost_model DB.json`` prints it per kernel.

Terms (time of one call = max(memory, compute) + penalties):
* memory: weight + activation bytes / (bandwidth x streaming efficiency); the efficiency drops without
  software prefetch in the decode GEMV (the row-group jump defeats the stream prefetchers) and with a prefetch
  distance that is too short or too long for L1;
* compute, GEMV: vector uops per 16 weights (unpack, convert, scale, FMA, the x load shared by the rows of a
  tile), at ``ISSUE`` uops/cycle, or the FMA latency bound when rows x split accumulators give fewer chains than
  latency x pipes; a tile that does not fit the register file spills (x 1.6);
* compute, GEMM (BLIS, Low et al. 2016): per k step MR x NRV FMAs against NRV loads + MR broadcasts, the FMA
  latency bound, register spill, the [Kc, NR] micro-panel against the L1 budget and the [Kc, Tn] panel against
  half of L2 (else re-read from L3 per row tile), rows padded to MR, and the tasks-per-core imbalance.
"""

from __future__ import annotations

import math

ISSUE = 3.0  # sustained vector uops per cycle (Zen 3/4/5, Cortex-X: 4 pipes, ~3 sustained)
FMA_LATENCY = 4
SPILL = 1.6


def rank(values: list[float]) -> list[float]:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman rank correlation (Pearson of the average ranks); None when undefined (< 2 points or a constant)."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    rx, ry = rank(list(xs)), rank(list(ys))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


# --- the model ------------------------------------------------------------------------------------------------
def predict_us(task, knobs: dict, tt) -> float:
    """Predicted time of one call of ``task`` built with ``knobs`` (effective values: derived + knobs)."""
    from .space import space_for

    space = space_for(task, tt)
    eff = space.effective(knobs) if space is not None else dict(knobs)
    fn = {"dequant_gemv": _gemv, "dequant_gemm": _gemm, "int8_gemv": _int8_gemv, "int8_gemm": _int8_gemm}.get(task.kind)
    if fn is None:
        return max(task.est_us.values(), default=0.0)
    return fn(task, eff, tt)


def _mem_us(task, tt, efficiency: float) -> float:
    from .tasks import bytes_and_flops

    nbytes, _ = bytes_and_flops(task.func, task.rows)
    return 1e6 * nbytes / (tt.bandwidth_bytes_s * efficiency)


def _gemv(task, eff: dict, tt) -> float:
    p = tt.params
    n, k = int(task.meta.get("n", 1)), int(task.meta.get("k", 1))
    native = p.lanes(32)
    lanes = int(eff.get("gemv_lanes") or 16)
    rows = max(1, int(eff.get("gemv_rows") or 4))
    unroll = max(1, int(eff.get("gemv_unroll") or 2))
    split = bool(eff.get("gemv_accumulators"))
    regs_per_vec = max(1, lanes // native)
    # uops per `lanes` weights of one row: load, shift, mask, convert, offset, scale, FMA (per native register),
    # the x vector shared by the tile's rows; scales: one broadcast per group (converted per group without cache)
    per_vec = regs_per_vec * 6 + regs_per_vec / rows + (1.0 if lanes < 16 else 0.0)
    per_vec += (0.0 if eff.get("scale_cache", True) else 2.0) * lanes / 32
    per_vec += 2.0 / unroll  # loop counter + branch per iteration
    vectors = n * k / lanes
    cycles = vectors * per_vec / ISSUE
    chains = rows * regs_per_vec * (unroll if split else 1)
    latency_cycles = vectors * regs_per_vec * FMA_LATENCY / max(1, chains)
    cycles = max(cycles, latency_cycles)
    if rows * regs_per_vec * 3 + regs_per_vec > p.num_vector_regs:
        cycles *= SPILL
    compute = 1e6 * cycles / (tt.ghz * 1e9 * p.num_cores)
    stream = 0.9 if eff.get("gemv_prefetch", True) else 0.7
    return max(compute, _mem_us(task, tt, stream))


def _gemm(task, eff: dict, tt) -> float:
    p = tt.params
    n, k, s = int(task.meta.get("n", 1)), int(task.meta.get("k", 1)), task.rows
    lanes = p.lanes(32)
    mr, nrv = int(eff.get("gemm_rows") or 4), int(eff.get("gemm_cols") or 2)
    kc = int(eff.get("gemm_k_block") or k)
    tn = int(eff.get("gemm_panel_rows") or 64)
    nr = nrv * lanes
    # FMA pipe time per k step of one micro-tile vs its loads (NRV panel vectors + MR broadcasts, 2 per cycle)
    # and the latency bound (MR x NRV independent chains against latency x 2 pipes)
    fma = mr * nrv / 2.0
    per_k = max(fma, (mr + nrv) / 2.0, FMA_LATENCY)  # each chain waits the FMA latency per k step
    eff_fma = fma / per_k
    if mr * nrv + nrv + 1 > p.num_vector_regs - 1:
        eff_fma /= SPILL
    budget = getattr(p, "gemm_l1_panel_budget", lambda: p.l1d_bytes * 2 // 3)()
    if kc * nr * 4 > budget:
        eff_fma *= 0.75
    padded = math.ceil(s / mr) * mr
    flops = 2.0 * padded * n * k
    compute = 1e6 * flops / (tt.peak_flops * eff_fma)
    # the dequantized [Kc, Tn] panel: built once per task and K block (~8 uops per 8 weights), re-read per row tile
    dequant = 1e6 * (n * k / lanes) * 8 / ISSUE / (tt.ghz * 1e9 * p.num_cores)
    panel = kc * tn * 4
    reread = 0.0
    if panel > p.l2_bytes // 2:
        l3_bw = 4 * tt.bandwidth_bytes_s
        reread = 1e6 * (math.ceil(s / mr) * n * k * 4) / l3_bw / max(1, p.num_cores)
    tasks = max(1, n // max(1, tn))
    imbalance = math.ceil(tasks / p.num_cores) / (tasks / p.num_cores)
    return (compute + dequant + reread) * imbalance + _mem_us(task, tt, 0.9) * 0.2


def _int8_gemv(task, eff: dict, tt) -> float:
    p = tt.params
    knob = eff.get("int8_prefetch_bytes")
    nbytes = int(knob) if knob is not None else p.int8_gemv_prefetch_bytes()
    if nbytes <= 0:
        stream = 0.8
    else:
        # too short: latency not covered; too long: the prefetched window competes with the activation row in L1
        latency_bytes = 100e-9 * tt.bandwidth_bytes_s / max(1, p.num_cores)
        stream = 0.8 + 0.18 * min(1.0, nbytes / (4 * latency_bytes))
        if nbytes > p.l1d_bytes // 2:
            stream -= 0.1 * min(1.0, (nbytes - p.l1d_bytes // 2) / p.l1d_bytes)
        # the kind the facts do not name is slower (measured: nta at 0.4x of t0 on Emerald Rapids, t0 at
        # 0.83x of nta on Zen 5; targets/hostdetect.py stream_prefetch_for_vendor)
        locality = eff.get("int8_prefetch_locality")
        if locality is not None and (int(locality) == 0) != (p.int8_gemv_prefetch_locality() == 0):
            stream *= 0.5 if int(locality) == 0 else 0.85
    return _mem_us(task, tt, stream)


def _int8_gemm(task, eff: dict, tt) -> float:
    p = tt.params
    n, k, s = int(task.meta.get("n", 1)), int(task.meta.get("k", 1)), task.rows
    mr, nrv, nt = int(eff.get("int8_gemm_mr") or 4), int(eff.get("int8_gemm_nrv") or 2), int(eff.get("int8_gemm_nt") or 64)
    dot_lanes = 16 if p.vector_bits >= 512 else 8 if p.vector_bits >= 256 else 4
    per_k = max(mr * nrv / 2.0, (mr + nrv) / 2.0, FMA_LATENCY)
    eff_dot = (mr * nrv / 2.0) / per_k
    if 2 * mr * nrv + nrv + 2 > p.num_vector_regs:
        eff_dot /= SPILL
    padded = math.ceil(s / mr) * mr
    dots = padded * n * k / (4 * dot_lanes)  # 4-byte dot-product instructions
    compute = 1e6 * dots * 1.3 / (eff_dot * 2 * tt.ghz * 1e9 * p.num_cores)
    panel = nt * k * 9 // 8
    if panel > p.l2_bytes * 3 // 4:
        compute *= 1.3
    tasks = max(1, n // max(1, nt))
    imbalance = math.ceil(tasks / p.num_cores) / (tasks / p.num_cores)
    return compute * imbalance + _mem_us(task, tt, 0.9) * 0.2


# --- the report ---------------------------------------------------------------------------------------------
def correlation_report(records: list[dict]) -> dict:
    """Per record with >= 3 measured candidates that carry a prediction: Spearman(predicted, measured);
    plus the mean over records and the count of records where the model's top pick was the measured best."""
    rows = []
    for rec in records:
        pts = [(h[2], h[1]) for h in rec.get("history", []) if len(h) >= 3 and h[1] is not None and h[2] is not None]
        if len(pts) < 3:
            continue
        rho = spearman([p for p, _ in pts], [m for _, m in pts])
        best_pred = min(pts, key=lambda t: t[0])
        best_meas = min(pts, key=lambda t: t[1])
        rows.append({
            "key": rec["key"], "kind": rec["kind"], "label": rec.get("label", ""), "points": len(pts),
            "spearman": None if rho is None else round(rho, 3),
            "top_pick_measured_us": round(best_pred[1], 2), "best_measured_us": round(best_meas[1], 2),
        })
    vals = [r["spearman"] for r in rows if r["spearman"] is not None]
    return {
        "kernels": rows,
        "mean_spearman": round(sum(vals) / len(vals), 3) if vals else None,
        "top_pick_within_5pct": sum(1 for r in rows if r["top_pick_measured_us"] <= 1.05 * r["best_measured_us"]),
    }


def main(argv=None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="rank correlation of the cost model with the measured times of a tuning DB")
    ap.add_argument("db", help="a DIR/<soc>.json tuning database written by `llama-aot tune`")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from .database import read_file

    _, records = read_file(args.db)
    rep = correlation_report(list(records.values()))
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0
    for r in rep["kernels"]:
        print(f"{r['kind']:13s} {r['label'][:48]:48s} n={r['points']:3d} rho={r['spearman']}  "
              f"model's pick {r['top_pick_measured_us']} us, best {r['best_measured_us']} us")
    print(f"mean Spearman {rep['mean_spearman']}; model's top pick within 5% of the measured best on "
          f"{rep['top_pick_within_5pct']} of {len(rep['kernels'])} kernels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
