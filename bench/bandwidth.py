"""Streaming memory-read bandwidth of this machine, the denominator of the decode roofline.

Method: one ``size_bytes`` buffer (default 1 GiB, far larger than any last-level cache) is
allocated and written once (so its pages are resident), viewed as uint64 and split into
``threads`` contiguous parts; each part is reduced with ``np.bitwise_or.reduce`` in its own
thread of a ``concurrent.futures.ThreadPoolExecutor`` (numpy releases the GIL inside the
reduction loop, so the threads really run in parallel). Every byte of the buffer is read
exactly once per repetition and nothing is written, so GB/s = size_bytes / wall time (10^9
bytes per GB). The best of ``reps`` repetitions is returned (after one untimed warm-up pass).

Why this kernel: of the numpy reductions tried on the 2-core dev box (float32 ``sum``, ``max``,
``count_nonzero`` over a bool view, uint64 ``bitwise_or.reduce``) the integer OR reduction
reported the highest rate in every trial (about 1.5-2x float32 ``sum``, whose pairwise
summation is compute-bound), i.e. it is the one closest to being limited by memory rather
than arithmetic. It is still a lower bound on the hardware's peak (no non-temporal tricks, Python
dispatch per part), which makes the reported roofline fraction conservative.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def measure_read_bandwidth(threads: int = 2, size_bytes: int = 1 << 30, reps: int = 5) -> float:
    """Best-of-``reps`` streaming read bandwidth in GB/s (10^9 B/s) with ``threads`` threads."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    n = max(size_bytes // 8, threads)
    buf = np.empty(n, dtype=np.uint64)
    buf.fill(0x0123456789ABCDEF)  # touch every page before timing
    parts = np.array_split(buf, threads)
    nbytes = buf.nbytes
    best = 0.0
    with ThreadPoolExecutor(max_workers=threads) as ex:
        list(ex.map(np.bitwise_or.reduce, parts))  # warm-up: threads started, TLB / caches primed
        for _ in range(max(1, reps)):
            t0 = time.perf_counter()
            results = list(ex.map(np.bitwise_or.reduce, parts))
            dt = time.perf_counter() - t0
            if any(int(r) != 0x0123456789ABCDEF for r in results):  # keeps the reads honest
                raise RuntimeError("bandwidth kernel returned a wrong result")
            best = max(best, nbytes / dt / 1e9)
    return best


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="python -m bench.bandwidth")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size-mb", type=int, default=1024)
    a = p.parse_args()
    print(f"{measure_read_bandwidth(a.threads, a.size_mb << 20):.2f} GB/s")
