"""Kernel benchmark for the CPU schedules (schedules/cpu): decode GEMV and prefill GEMM at Llama-3.2-1B shapes.

    python bench/kernels.py [--threads N] [--quick] [--shapes gemv|gemm|all]

Prints, from one run on this machine:
- memory bandwidth: a TVM parallel streaming-read kernel (and numpy sum) over an array 8x the LLC;
- GEMV (S=1) GB/s of packed weight (+scales) streamed, weights rotated over copies larger than the LLC so
  they come from DRAM, vs the bandwidth above;
- GEMM (S = 7, 64, 128, 512) GFLOP/s vs numpy float32 matmul (OpenBLAS) on the dequantized weight.

Each number is given twice: "wall" (what a caller sees, best of several repeats) and "cpu" = work / process
CPU time, i.e. per busy core. On a shared machine the wall numbers of the parallel kernels suffer whenever a
core is taken by another process (a parallel region waits for its slowest thread); the cpu numbers do not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tvm  # noqa: E402
from tvm import s_tir, te  # noqa: E402
from tvm.s_tir import dlight as dl  # noqa: E402
from tvm.target import Target, codegen  # noqa: E402

from schedules import cpu_rules  # noqa: E402
from schedules.cpu.params import CPUParams  # noqa: E402
from schedules.reference import dequant_matmul_func, pack_weight  # noqa: E402

GEMV_SHAPES = [  # (scheme, K, N, what); q4f16p = the planar nibble layout (schedules/reference.py)
    ("q4f16", 2048, 6144, "qkv+o-ish"),
    ("q4f16p", 2048, 6144, "qkv+o-ish, planar"),
    ("q4f16", 8192, 2048, "down_proj"),
    ("q4f16p", 8192, 2048, "down_proj, planar"),
    ("q4f16", 2048, 16384, "gate_up"),
    ("q4f16p", 2048, 16384, "gate_up, planar"),
    ("q0f32", 2048, 16384, "gate_up f32"),
]
GEMM_SHAPES = [("q4f16", 2048, 6144), ("q4f16", 8192, 2048), ("q0f32", 2048, 16384)]
GEMM_S = [7, 64, 128, 512]


def host_target(threads: int) -> Target:
    return Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": threads})


def build(func, target):
    mod = tvm.IRModule({"main": func})
    with target:
        mod = dl.ApplyDefaultSchedule(*cpu_rules(target))(mod)
    if "tirx.is_scheduled" not in (mod["main"].attrs or {}):
        print("  WARNING: no rule applied")
    return tvm.compile(mod, target=target)["main"]


def timeit(fn, arg_sets, min_time=0.25, repeats=5):
    """(best wall seconds per call, best process-cpu seconds per call) over rotating argument sets."""
    for a in arg_sets[:2]:
        fn(*a)
    best_w = best_c = float("inf")
    for _ in range(repeats):
        n = 0
        t0, c0 = time.perf_counter(), time.process_time()
        while True:
            for a in arg_sets:
                fn(*a)
            n += len(arg_sets)
            if time.perf_counter() - t0 >= min_time / repeats:
                break
        best_w = min(best_w, (time.perf_counter() - t0) / n)
        best_c = min(best_c, (time.process_time() - c0) / n)
    return best_w, best_c


class Bandwidth:
    """Streaming-read bandwidth with TVM (parallel, vectorized sum over an array 8x the LLC), re-measurable
    next to each kernel so both see the same machine load."""

    def __init__(self, target, llc: int, threads: int):
        nbytes = max(256 << 20, 8 * llc)
        cols = 256
        rows = nbytes // 4 // cols
        a = te.placeholder((rows, cols), "float32", name="a")
        r = te.reduce_axis((0, rows), name="r")
        o = te.compute((cols,), lambda j: te.sum(a[r, j], axis=r), name="o")
        sch = s_tir.Schedule(te.create_prim_func([a, o]))
        b = sch.get_sblock("o")
        j, rr = sch.get_loops(b)
        ro, ri = sch.split(rr, [max(1, threads), None])
        sch.reorder(ro, ri, j)
        rf = sch.rfactor(ro, 0)
        loops = sch.get_loops(rf)
        sch.parallel(loops[0])
        _, jv = sch.split(loops[-1], [None, 16])
        sch.vectorize(jv)
        self.f = tvm.compile(sch.mod, target=target)["main"]
        dev = tvm.cpu()
        self.arr = np.ones((rows, cols), np.float32)
        self.args = [(tvm.runtime.tensor(self.arr, dev), tvm.runtime.tensor(np.zeros(cols, np.float32), dev))]

    def measure(self, min_time=0.5):
        """(wall GB/s, per-busy-core GB/s)"""
        w, c = timeit(self.f, self.args, min_time=min_time, repeats=10)
        return self.arr.nbytes / w / 1e9, self.arr.nbytes / c / 1e9

    def numpy_single_thread(self):
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            self.arr.max()  # SIMD max-reduce: memory bound, one thread
            best = min(best, time.perf_counter() - t0)
        return self.arr.nbytes / best / 1e9


def bench_gemv(target, params, bw: Bandwidth, quick):
    print("\nGEMV (decode, S=1): GB/s of weight+scale bytes streamed from DRAM; 'bw' = the streaming-read kernel")
    print("measured just before, same threads ('% wall' and '% core' compare like with like)")
    print(f"  {'scheme':7s} {'K':>5s} {'N':>6s} {'MB':>6s} {'ms':>7s} {'GB/s':>6s} {'bw':>5s} {'%':>4s} | {'GB/s/core':>9s} {'bw/core':>7s} {'%':>4s}")
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    for scheme, k, n, what in GEMV_SHAPES[: 4 if quick else None]:
        f = build(dequant_matmul_func(scheme, n, k, 1), target)
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        packed, deq = pack_weight(scheme, w)
        wbytes = sum(p.nbytes for p in packed)
        x = rng.standard_normal((1, 1, k)).astype(np.float32)
        xs = tvm.runtime.tensor(x, dev)
        out = tvm.runtime.tensor(np.zeros((1, 1, n), np.float32), dev)
        copies = max(2, int(np.ceil(3 * params.l3_bytes / wbytes)))
        if quick:
            copies = min(copies, 4)
        sets = [[xs] + [tvm.runtime.tensor(p.copy(), dev) for p in packed] + [out] for _ in range(copies)]
        f(*sets[0])
        err = np.abs(out.numpy()[0, 0] - (x[0, 0] @ deq.T)).max()
        bw_w, bw_c = bw.measure(0.3 if quick else 0.6)
        tw, tc = timeit(f, sets, min_time=0.6 if quick else 1.5, repeats=15)
        gw, gc = wbytes / tw / 1e9, wbytes / tc / 1e9
        print(
            f"  {scheme:7s} {k:5d} {n:6d} {wbytes / 1e6:6.1f} {tw * 1e3:7.3f} {gw:6.1f} {bw_w:5.1f} {100 * gw / bw_w:3.0f}% | "
            f"{gc:9.1f} {bw_c:7.1f} {100 * gc / bw_c:3.0f}%  err {err:.1e}  [{what}]"
        )
        del sets


def bench_gemm(target, quick):
    print("\nGEMM (prefill): GFLOP/s vs numpy float32 matmul on the dequantized weight (same thread count)")
    print(f"  {'scheme':7s} {'K':>5s} {'N':>6s} {'S':>4s} {'ours wall':>10s} {'numpy wall':>10s} {'ours cpu/core':>13s} {'numpy cpu/core':>14s}")
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    for scheme, k, n in GEMM_SHAPES[: 1 if quick else None]:
        f = build(dequant_matmul_func(scheme, n, k, "seq"), target)
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        packed, deq = pack_weight(scheme, w)
        wt = np.ascontiguousarray(deq.T)
        wargs = [tvm.runtime.tensor(p, dev) for p in packed]
        for s in GEMM_S[: 2 if quick else None]:
            x = rng.standard_normal((1, s, k)).astype(np.float32)
            out = tvm.runtime.tensor(np.zeros((1, s, n), np.float32), dev)
            args = [tvm.runtime.tensor(x, dev), *wargs, out]
            f(*args)
            ref = x[0] @ wt
            err = np.abs(out.numpy()[0] - ref).max() / np.abs(ref).max()
            flop = 2.0 * s * n * k
            tw, tc = timeit(f, [args], min_time=0.5)
            x2 = x[0]
            nw, nc = timeit(lambda: x2 @ wt, [()], min_time=0.5)
            print(
                f"  {scheme:7s} {k:5d} {n:6d} {s:4d} {flop / tw / 1e9:10.1f} {flop / nw / 1e9:10.1f} "
                f"{flop / tc / 1e9:13.1f} {flop / nc / 1e9:14.1f}   relerr {err:.1e}"
            )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1)))
    ap.add_argument("--quick", action="store_true", help="fewer shapes, fewer weight copies")
    ap.add_argument("--shapes", choices=["gemv", "gemm", "all"], default="all")
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    target = host_target(args.threads)
    params = CPUParams.from_target(target)
    print(f"target {target}\nparams {params}")
    print(f"threads: TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}  numpy/OpenBLAS: {os.environ.get('OPENBLAS_NUM_THREADS', 'default')}")
    bw = Bandwidth(target, params.l3_bytes, args.threads)
    bw_w, bw_c = bw.measure(1.0)
    print(
        f"\nmemory bandwidth (streaming read, {args.threads} threads): wall {bw_w:.1f} GB/s; "
        f"per busy core {bw_c:.1f} GB/s; numpy max-reduce (1 thread) {bw.numpy_single_thread():.1f} GB/s"
    )
    if args.shapes in ("gemv", "all"):
        bench_gemv(target, params, bw, args.quick)
    if args.shapes in ("gemm", "all"):
        bench_gemm(target, args.quick)


if __name__ == "__main__":
    main()
