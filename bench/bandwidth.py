"""Streaming memory-read bandwidth of this machine, the denominator of the decode roofline.

Why a careful probe: the roofline fraction (weight bytes per token x tok/s / bandwidth) only means
something if the bandwidth is what the best read loop really gets on this machine, every time. The
earlier probe (numpy OR-reduction over a freshly written 1 GiB, timed as whole passes, best of 5)
moved between about 47 and 74 GB/s from one process to the next and could be below what our int8 GEMV
or llama.cpp streamed, so the same code showed 35% in one run and 58% (or over 100%) in the next.

Method:

* **buffer**: ``max(256 MiB, 16 x LLC)`` (LLC = the largest cache in sysfs), at most a quarter of
  ``MemAvailable``: every byte comes from DRAM, as the weights of a model far larger than the cache do;
* **pages**: an anonymous ``mmap`` aligned to 2 MiB with ``madvise(MADV_HUGEPAGE)`` (transparent
  hugepages are ``madvise``-only on most distributions), written once before any timing, so page
  faults and most TLB misses are out of the measurement;
* **threads**: the engines' thread count; TVM's pool pins one worker per core, as in our engine;
  the buffer is split into one contiguous part per thread, so each thread streams sequentially;
* **kernels**: TVM-compiled LLVM loops with the structure of our GEMV's weight stream
  (schedules/cpu/int8_gemv.py): int32 vector adds (one cycle, never the bottleneck, unlike numpy's
  float ``sum``) into 4 independent 64-byte accumulators, in three variants, because which one streams
  fastest depends on the CPU: ``tvm-hw`` (hardware prefetchers only), ``tvm-nta`` (one ``prefetchnta``
  per line 12 KiB ahead, as the int8 GEMV) and ``tvm-t0`` (the same with ``prefetcht0``). The best one
  counts. ``numpy`` (uint64 OR-reduction per thread in a thread pool, the fastest numpy reduction) is
  there for comparison;
* **timing**: ``reps`` passes over the buffer (after an untimed warm-up pass), each pass timed chunk
  by chunk, 8 MiB at a time (about one decode GEMV's weights at the 1B shape, launch included; each
  chunk still streams from DRAM, since only chunks read just before can be in the cache), the kernels
  taking turns chunk by chunk; the sums are checked outside the timing. The result is the best chunk
  of the best kernel: a rate the machine really sustains, over the stretch one GEMV streams. Short
  chunks make it robust on a shared machine, where a whole pass is rarely spared by the scheduler
  while a 0.2 ms chunk often is; the chunks' median and the kernel's whole-pass rate are reported with
  it, as the spread.

Every byte is read once per pass and nothing is written, so GB/s = bytes / wall time (10^9 B/s); the
sums are checked. ``python -m bench.bandwidth --runs 5`` prints five runs in separate processes.
"""

from __future__ import annotations

import mmap
import os
import statistics
import time
from pathlib import Path

import numpy as np

MIN_BUFFER_BYTES = 256 << 20
LLC_MULTIPLE = 16
HUGEPAGE = 2 << 20
LANES, ACCUMULATORS = 16, 4  # int32 lanes per accumulator (64 bytes = one line), independent accumulators
CHUNK_BYTES = 8 << 20  # timed at a time: about one decode GEMV's weights (4-16 MB at the 1B shape)
SECONDS = 4.0  # timed per probe, at least: the VM's bandwidth drifts over seconds (bench/README.md)
FILL = 1  # every int32 word; the sums are checked against it, which keeps the reads honest


def llc_bytes() -> int:
    """This machine's last-level cache (targets/cpu_facts.py: the L3, else the L2)."""
    from targets.cpu_facts import CPUFacts

    facts = CPUFacts.host()
    return facts.l3_bytes or facts.l2_bytes


def prefetch_bytes_default() -> int:
    """The distance the int8 GEMV's weight stream prefetches on this machine (derived from its L1d,
    schedules/cpu/params.py ``int8_gemv_prefetch_bytes``), so the probe reads the way the kernel does."""
    from schedules.cpu.params import CPUParams
    from targets.host import host_target_dict

    return CPUParams.for_build(host_target_dict()).int8_gemv_prefetch_bytes() or 4096


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) << 10
    except OSError:
        pass
    return 4 << 30


def default_buffer_bytes() -> int:
    """``max(256 MiB, 16 x LLC)``, at most a quarter of the available memory, whole hugepages."""
    want = max(MIN_BUFFER_BYTES, LLC_MULTIPLE * llc_bytes())
    return max(HUGEPAGE, min(want, _mem_available() // 4) // HUGEPAGE * HUGEPAGE)


def alloc_touched(nbytes: int, hugepages: bool = True) -> tuple[np.ndarray, bool]:
    """(int32 array of ``nbytes`` filled with FILL, whether hugepages were requested). The mapping is
    over-allocated by 2 MiB so the array starts on a hugepage boundary (the array keeps it alive)."""
    mm = mmap.mmap(-1, nbytes + HUGEPAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    raw = np.frombuffer(mm, dtype=np.uint8)
    skip = -raw.ctypes.data % HUGEPAGE
    huge = hugepages and hasattr(mmap, "MADV_HUGEPAGE")
    if huge:
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            huge = False
    arr = raw[skip : skip + nbytes].view(np.int32)
    arr.fill(FILL)  # fault every page in (as hugepages where granted) before timing
    return arr, huge


def hugepage_kib() -> int:
    """AnonHugePages (KiB) of this process: how much of the buffer the kernel really got as hugepages."""
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("AnonHugePages:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tvm_read_module(parts: int, words: int, prefetch_bytes: int | None = None, locality: int = 0):
    """Compiled module with ``read(a[parts, words] int32, out[parts, LANES] int32)``: out[p] = lane sums of
    part p, part p by thread p; one software prefetch per 64-byte line ``prefetch_bytes`` ahead (none if 0;
    None: ``prefetch_bytes_default()``)
    with ``locality`` 0 (``prefetchnta``) .. 3 (``prefetcht0``). ``.inspect_source("asm")`` shows the loop."""
    import tvm
    from tvm.script import tirx as T
    from tvm.target import codegen

    step = LANES * ACCUMULATORS
    ahead = (prefetch_bytes_default() if prefetch_bytes is None else prefetch_bytes) // 4
    assert words % step == 0

    @T.prim_func(s_tir=True)
    def read(a: T.Buffer((parts, words), "int32"), out: T.Buffer((parts, LANES), "int32")):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True, "global_symbol": "read"})
        for p in T.parallel(parts):
            with T.sblock("stream"):
                T.reads()
                T.writes()
                acc = T.sblock_alloc_buffer((ACCUMULATORS, LANES), "int32")
                for s in T.unroll(ACCUMULATORS):
                    acc[s, T.ramp(0, 1, LANES)] = T.broadcast(T.int32(0), LANES)
                for i in T.serial(words // step):
                    for s in T.unroll(ACCUMULATORS):
                        if prefetch_bytes > 0:  # prefetches never fault, even past the end
                            T.evaluate(T.call_intrin(
                                "void", "tirx.prefetch", T.address_of(a[p, i * step + s * LANES + ahead]), 0, locality, 1))
                        acc[s, T.ramp(0, 1, LANES)] = (
                            acc[s, T.ramp(0, 1, LANES)] + a[p, T.ramp(i * step + s * LANES, 1, LANES)])
                for s in T.unroll(ACCUMULATORS - 1):
                    acc[0, T.ramp(0, 1, LANES)] = acc[0, T.ramp(0, 1, LANES)] + acc[s + 1, T.ramp(0, 1, LANES)]
                out[p, T.ramp(0, 1, LANES)] = acc[0, T.ramp(0, 1, LANES)]

    target = tvm.target.Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": parts})
    return tvm.compile(tvm.IRModule({"read": read}), target=target)


def _set_tvm_threads(threads: int) -> None:
    """TVM's pool with exactly ``threads`` workers, pinned one per core (mode kBig), as in the engines."""
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    import tvm

    tvm.get_global_func("runtime.config_threadpool")(1, threads)


# the TVM read loops tried, as (prefetch bytes ahead, locality): which one streams fastest depends on the CPU
TVM_KERNELS = {"tvm-hw": (False, 0), "tvm-nta": (True, 0), "tvm-t0": (True, 3)}  # (software prefetch, locality)
KERNELS = ("tvm", *TVM_KERNELS, "numpy")  # "tvm": every TVM loop, the best counts


def _reader(kernel: str, chunks: np.ndarray, threads: int, prefetch_bytes: int | None):
    """(``read(c)``: one pass of ``kernel`` over chunk c, ``ok()``: whether the last read's sums are right)."""
    want = chunks.shape[2] // LANES * FILL  # every lane's sum
    if kernel == "numpy":
        from concurrent.futures import ThreadPoolExecutor

        words = [[p.view(np.uint64) for p in c] for c in chunks]
        pool = ThreadPoolExecutor(max_workers=threads)
        last = []

        def read_np(c):
            last[:] = pool.map(np.bitwise_or.reduce, words[c])

        return read_np, lambda: all(int(r) == FILL | FILL << 32 for r in last)
    import tvm

    prefetch, locality = TVM_KERNELS[kernel]
    ahead = (prefetch_bytes or prefetch_bytes_default()) if prefetch else 0
    f = tvm_read_module(threads, chunks.shape[2], ahead, locality)["read"]
    views = [tvm.runtime.from_dlpack(c) for c in chunks]  # zero copy: the kernel reads the buffer itself
    out = tvm.runtime.empty((threads, LANES), "int32", tvm.cpu())
    return (lambda c: f(views[c], out)), (lambda: bool((out.numpy() == want).all()))


def measure(threads: int = 2, size_bytes: int | None = None, reps: int = 3, kernel: str = "tvm",
            prefetch_bytes: int | None = None, hugepages: bool = True, chunk_bytes: int | None = None,
            seconds: float = SECONDS) -> dict:
    """One probe: passes over the buffer (at least ``reps``, and for at least ``seconds``), each as
    consecutive chunks of ``chunk_bytes`` (default CHUNK_BYTES) timed one by one, the kernels taking turns
    chunk by chunk. Returns
    ``{"gbps": best chunk of the best kernel, "kernel": that kernel, "median_gbps", "min_gbps" (its chunks),
    "pass_gbps": its best whole pass, "spread": 1 - median / best, "kernels": {name: best GB/s}, ...}``."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    names = [n for k in kernel.split(",") for n in (list(TVM_KERNELS) if k == "tvm" else [k])]
    if not names or any(n not in KERNELS for n in names):
        raise ValueError(f"kernel must be a comma list of {', '.join(KERNELS)}, got {kernel!r}")
    step = threads * LANES * ACCUMULATORS * 4
    nbytes = max(step, (size_bytes or default_buffer_bytes()) // step * step)
    chunk = max(step, min(nbytes, chunk_bytes or CHUNK_BYTES) // step * step)
    nbytes = nbytes // chunk * chunk
    arr, huge = alloc_touched(nbytes, hugepages)
    chunks = arr.reshape(nbytes // chunk, threads, -1)  # chunk c: one contiguous part per thread
    if any(n in TVM_KERNELS for n in names):
        _set_tvm_threads(threads)
    readers = [_reader(k, chunks, threads, prefetch_bytes) for k in names]
    rates = {k: [] for k in names}
    passes = {k: [] for k in names}
    rep, t_start = 0, time.perf_counter()
    while rep <= max(1, reps) or time.perf_counter() - t_start < seconds:  # pass 0: warm-up (untimed)
        busy, count = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
        for c in range(len(chunks)):
            i = (c + rep) % len(names)
            read, ok = readers[i]
            t0 = time.perf_counter()
            read(c)
            dt = time.perf_counter() - t0
            if not ok():  # checked outside the timing
                raise RuntimeError(f"bandwidth kernel {names[i]} returned a wrong result")
            busy[names[i]] += dt
            count[names[i]] += 1
            if rep:
                rates[names[i]].append(chunk / dt / 1e9)
        if rep:  # each kernel's rate over its chunks of this pass
            passes.update({k: passes[k] + [count[k] * chunk / busy[k] / 1e9] for k in names if count[k]})
        else:
            t_start = time.perf_counter()
        rep += 1
    best = max((k for k in names if rates[k]), key=lambda k: max(rates[k]))
    r = rates[best]
    return {
        "gbps": max(r), "kernel": best, "p99_gbps": float(np.percentile(r, 99)), "p90_gbps": float(np.percentile(r, 90)), "median_gbps": statistics.median(r), "min_gbps": min(r),
        "pass_gbps": max(passes[best]), "spread": 1 - statistics.median(r) / max(r),
        "kernels": {k: max(v) for k, v in rates.items() if v}, "reps": rep - 1, "chunks": len(r),
        "chunk_mib": chunk >> 20, "threads": threads, "buffer_mib": nbytes >> 20, "llc_mib": llc_bytes() >> 20,
        "hugepages_mib": hugepage_kib() >> 10 if huge else 0, "loadavg_1m": os.getloadavg()[0],
    }


def measure_read_bandwidth(threads: int = 2, size_bytes: int | None = None, reps: int = 3,
                           kernel: str = "tvm", seconds: float = SECONDS) -> float:
    """Streaming read bandwidth in GB/s (10^9 B/s) with ``threads`` threads (``measure()["gbps"]``)."""
    return measure(threads, size_bytes, reps, kernel, seconds=seconds)["gbps"]


PROBE_KERNEL_OF_KIND = {"nta": "tvm-nta", "t0": "tvm-t0", "none": "tvm-hw"}  # cache.stream_prefetch -> probe kernel


def stream_prefetch_note(r: dict, kind: str) -> str | None:
    """A note when the prefetch kind this machine's facts derive (``kind``: targets/hostdetect.py, what the
    int8 GEMV emits) streamed more than 10% below the fastest kind in probe ``r``; None when it is within."""
    rates = r.get("kernels", {})
    ours, (best, best_gbps) = rates.get(PROBE_KERNEL_OF_KIND[kind]), max(rates.items(), key=lambda kv: kv[1])
    if ours is None or ours >= 0.9 * best_gbps:
        return None
    fact = {v: k for k, v in PROBE_KERNEL_OF_KIND.items()}.get(best, best)
    return (f"note: the derived stream prefetch {kind!r} read {ours:.1f} GB/s in the probe, {fact!r} read {best_gbps:.1f}; "
            f"pin cache.stream_prefetch = {fact!r} in a host.toml ($LLAMA_AOT_SOC_PATH) or run llama-aot tune")


def describe(r: dict) -> str:
    kernels = ", ".join(f"{k} {v:.1f}" for k, v in r["kernels"].items())
    return (f"{r['gbps']:.2f} GB/s ({r['kernel']}: best of {r['chunks']} chunks of {r['chunk_mib']} MiB, median "
            f"{r['median_gbps']:.2f}, min {r['min_gbps']:.2f}, best whole pass {r['pass_gbps']:.2f}; kernels {kernels}; "
            f"{r['threads']} threads, {r['buffer_mib']} MiB buffer, {r['hugepages_mib']} MiB in hugepages, "
            f"load {r['loadavg_1m']:.2f})")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import subprocess
    import sys

    p = argparse.ArgumentParser(prog="python -m bench.bandwidth", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size-mb", type=int, default=None, help="buffer size (default: max(256, 16 x LLC) MiB)")
    p.add_argument("--chunk-mb", type=int, default=None, help=f"MiB timed at a time ({CHUNK_BYTES >> 20})")
    p.add_argument("--reps", type=int, default=3, help="timed passes over the buffer per run, at least")
    p.add_argument("--seconds", type=float, default=SECONDS, help="timed seconds per run, at least")
    p.add_argument("--kernel", default="tvm", help=f"comma list of {', '.join(KERNELS)} (tvm: every TVM loop), "
                   "taking turns; the best counts")
    p.add_argument("--prefetch-bytes", type=int, default=None, help="distance of the prefetching loops (default: the int8 GEMV's on this machine)")
    p.add_argument("--no-hugepages", action="store_true", help="plain 4 KiB pages (for comparison)")
    p.add_argument("--runs", type=int, default=1, help="independent runs, each in a fresh process")
    p.add_argument("--json", action="store_true", help="one JSON object per run")
    a = p.parse_args(argv)
    if a.runs == 1:
        r = measure(a.threads, a.size_mb and a.size_mb << 20, a.reps, a.kernel, a.prefetch_bytes,
                    not a.no_hugepages, a.chunk_mb and a.chunk_mb << 20, a.seconds)
        print(json.dumps(r) if a.json else describe(r))
        return 0
    child = [sys.executable, "-m", "bench.bandwidth", "--json"] + [
        x for x in (argv if argv is not None else sys.argv[1:]) if x != "--json"]
    i = child.index("--runs")
    del child[i : i + 2]
    best = []
    for n in range(a.runs):
        out = subprocess.run(child, capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent).stdout
        r = json.loads(out.strip().splitlines()[-1])
        best.append(r["gbps"])
        print(json.dumps(r) if a.json else f"run {n + 1}: {describe(r)}")
    print(f"{a.runs} processes: {min(best):.2f} .. {max(best):.2f} GB/s, "
          f"spread {1 - min(best) / max(best):.1%} ({a.threads} threads)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
