"""Decode GEMV that skips the weight rows of zero activations (``--activation-sparsity``, TEAL-style), with int8
activations and 4-byte integer dot products.

The projection's input row x is thresholded: |x[k]| <= t counts as zero (t calibrated per projection,
compression/activation_sparsity.py). Over K-major q4 weights (q4f16k, compiler/quantization/kmajor.py: row k of
W^T is N nibbles, contiguous) a zero x[k] means row k is never loaded: the skip is memory traffic saved, not a
multiply by zero.

Why int8: an f32 FMA per weight (shift, mask, convert, FMA per 16 weights) is compute-bound near 12 GB/s on two
Zen 4 cores (AMD EPYC), so skipping half the rows was no faster than the dense int8 GEMV (int8_gemv.py). With the
active activations rounded to int8 per group of 32 (int8_dot.numpy_reference's numerics on the masked row), four
active rows of one group share one ``vpdpbusd`` (``sdot``, ``vpmaddubsw``): a 4-byte lane holds the four rows'
nibbles of one output channel.

1. Serial prepass over x (O(K)): per group of 32 rows, the active rows' indices, compacted and padded to a
   multiple of four (padding repeats the last row with activation 0: no extra line is read), their int8
   activations packed four per int32 (``act4``), the nibble offset -8 sum(q) and the activation scale.
2. Parallel over tasks, one contiguous range of groups (K) each, whole rows:

       partial[t, :] = 0
       for g in the task's groups with active rows:
           acc_i32[N] = -8 sum(q_g)
           for each quad of active rows (r0..r3) in g:           # only these rows are read: N / 2 bytes each
               for each 128-channel block: 4 x 64 bytes -> low / high nibbles -> a byte transpose of the four rows
                   (two rounds of unpacks) -> 8 dot products into acc_i32
           partial[t, :] += float(acc_i32) * scale[g, :] * d_g
       y = sum over tasks of partial

The nibble order of q4f16k (kmajor.py) is chosen for step 2: in the 64 bytes of a block, byte 16c + 4v + u holds
channel 16v + 4c + u (low nibble) and 64 + 16v + 4c + u (high nibble), so the per-16-byte-lane unpacks (SSE,
AVX2, AVX-512 and NEON alike) leave every dot-product lane on consecutive channels: no permute of scales or
results. At sparsity s the bytes read are (1 - s) x nibbles + every group's scale row: 56% of dense at s = 0.5.

Why K, not N, is split across threads: a skipped row saves memory traffic only when it is a long run of bytes
(the hardware prefetchers fetch the lines next to read ones: with 64-byte rows per 128-channel panel, skipping
half the rows saved no time at all from DRAM). Split over N, each thread reads a slice of every row at a stride
of N / 2 bytes, and the slices streamed at 13 GB/s dense-equivalent where the dense GEMV streams 21 (Zen 4,
2 threads, K 2048 x N 16384, from DRAM); whole rows in K order skip whole rows. The price: an int32
accumulator of N channels per thread plus its f32 partial sum (8 N bytes: in L1d up to N = 3072, L2 beyond) and
a reduction of the per-thread partials (N x threads floats, in cache).
Threads (``CPUParams.sparse_gemv_splits``): the cores. The software prefetch reaches ``ahead`` quads of active
rows ahead, one line per row and block spread over the block loop (``sparse_gemv_prefetch_quads``), into L2
(``sparse_gemv_prefetch_locality``). Blocked N only (N % 128 == 0, every Llama 3 shape); other widths keep the
dense masked matmul.
"""

from __future__ import annotations

from tvm.script import tirx as T

from .int8_dot import GROUP, ISA_LANES, dot4
from .int8_gemv import _NIBBLES, shuffle

BLOCK = 128  # output channels per block: 16 words, 64 bytes of one row


def sparse_gemv_func(n_out: int, k_in: int, tasks: int, isa: str = "avx512vnni", x_shape: tuple = (1, 1),
                     ahead: int = 0, locality: int = 3):
    """PrimFunc ``(x[*x_shape, K] f32, threshold[1] f32, qweight u32[K, N/8], scale f16[K/32, N], y[*x_shape, N]
    f32)`` over q4f16k's blocked order, ``tasks`` parallel ranges of K; None when it does not apply (N not a
    multiple of 128, K not of 32, more than one row). ``ahead``: quads of active rows the weight prefetch reaches
    ahead (0: none); ``locality``: LLVM's prefetch locality (0 = non-temporal .. 3)."""
    N, K = n_out, k_in
    if N % BLOCK or K % GROUP or any(d != 1 for d in x_shape):
        return None
    V = ISA_LANES[isa]
    P = 16 // V  # parts of V words per 16-word block
    G, NB = K // GROUP, N // BLOCK
    tasks = max(1, min(tasks, G))
    GT = (G + tasks - 1) // tasks  # groups per task
    lead = tuple(x_shape)
    zeros = (0,) * len(lead)
    bvec = f"int8x{4 * V}"

    def unpack(a, b, width: int, high: int):
        """x86 ``punpck{l,h}{bw,wd}`` on int8x(4V) vectors: per 16-byte lane, the low (high) half's
        ``width``-byte elements of a and b alternated (NEON: ``zip1`` / ``zip2``)."""
        idx = []
        for lane in range(V // 4):
            for e in range(8 // width):
                src = 16 * lane + (8 * high) + e * width
                idx += list(range(src, src + width)) + list(range(4 * V + src, 4 * V + src + width))
        return shuffle([a, b], idx)

    def block_update(qweight, acc, rows, j, a4, w0, n0):
        """acc[n0 : n0 + 128] plus the dot products of quad j's four rows with their activations ``a4``.
        Two rounds of unpacks transpose the four rows' bytes: lane L = 4c + u of output v holds byte
        16c + 4v + u of rows 0..3, i.e. channel 16v + L (low nibbles; + 64 for the high ones) of part p."""
        outs = {}
        for p in range(P):
            words = [qweight[rows[4 * j + r], T.ramp(w0 + p * V, 1, V)] for r in range(4)]
            for h in range(2):
                a, b, c, d = [T.reinterpret(bvec, (w >> T.broadcast(T.uint32(4 * h), V) if h else w)
                                            & T.broadcast(T.uint32(_NIBBLES), V)) for w in words]
                ab = [unpack(a, b, 1, half) for half in (0, 1)]
                cd = [unpack(c, d, 1, half) for half in (0, 1)]
                for v in range(4):  # bytes 4v .. 4v + 3 of every 16-byte lane
                    w4 = T.reinterpret(f"int32x{V}", unpack(ab[v // 2], cd[v // 2], 2, v % 2))
                    start = n0 + 64 * h + 16 * v + p * V
                    outs[64 * h + 16 * v + p * V] = dot4(isa, acc[T.ramp(start, 1, V)], w4, a4, V)
        return shuffle([outs[o] for o in sorted(outs)], range(BLOCK))

    # pylint: disable=invalid-name,too-many-locals
    @T.prim_func(s_tir=True)
    def sparse_gemv(
        x: T.Buffer(lead + (K,), "float32"),
        threshold: T.Buffer((1,), "float32"),
        qweight: T.Buffer((K, N // 8), "uint32"),
        scale: T.Buffer((G, N), "float16"),
        y: T.Buffer(lead + (N,), "float32"),
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        rows = T.alloc_buffer((K,), "int32")
        act4 = T.alloc_buffer((K // 4,), "int32")
        quad_start = T.alloc_buffer((G + 1,), "int32")
        offs = T.alloc_buffer((G,), "int32")
        xs = T.alloc_buffer((G,), "float32")
        # 1. compact the active rows per group, their activations -> int8
        with T.sblock("compact"):
            T.reads()
            T.writes()
            qa = T.sblock_alloc_buffer((GROUP,), "int32")
            st = T.sblock_alloc_buffer((3,), "int32")  # rows so far, this group's count, its sum of q
            sc = T.sblock_alloc_buffer((2,), "float32")  # amax, then 1 / d
            st[0] = 0
            for g in T.serial(G):
                quad_start[g] = st[0] // 4
                sc[0] = T.float32(0)
                for r in T.serial(GROUP):
                    sc[0] = T.max(sc[0], T.abs(x[zeros + (g * GROUP + r,)]))
                xs[g] = sc[0] / T.float32(127)
                offs[g] = 0
                if sc[0] > threshold[0]:
                    sc[1] = T.float32(1) / xs[g]
                    st[1] = 0
                    st[2] = 0
                    for r in T.serial(GROUP):
                        if T.abs(x[zeros + (g * GROUP + r,)]) > threshold[0]:
                            rows[st[0] + st[1]] = g * GROUP + r
                            qa[st[1]] = T.Cast("int32", T.nearbyint(x[zeros + (g * GROUP + r,)] * sc[1]))
                            st[2] = st[2] + qa[st[1]]
                            st[1] = st[1] + 1
                    for r in T.serial(3):
                        if st[1] % 4 != 0:
                            rows[st[0] + st[1]] = rows[st[0] + st[1] - 1]
                            qa[st[1]] = 0
                            st[1] = st[1] + 1
                    for q in T.serial(st[1] // 4):
                        act4[st[0] // 4 + q] = (qa[4 * q] & 255) | ((qa[4 * q + 1] & 255) << 8) | (
                            (qa[4 * q + 2] & 255) << 16) | (qa[4 * q + 3] << 24)
                    offs[g] = -8 * st[2]
                    st[0] = st[0] + st[1]
            quad_start[G] = st[0] // 4
        partial = T.alloc_buffer((tasks, N), "float32")
        # 2. groups in parallel tasks, each task whole rows
        for t in T.parallel(tasks):
            with T.sblock("sparse_gemv"):
                T.reads()
                T.writes()
                acci = T.sblock_alloc_buffer((N,), "int32")
                for i in T.serial(N // 16):
                    for l in T.vectorized(16):
                        partial[t, i * 16 + l] = T.float32(0)
                for gi in T.serial(GT):
                    if t * GT + gi < G:
                        if quad_start[t * GT + gi + 1] > quad_start[t * GT + gi]:
                            for i in T.serial(N // 16):
                                for l in T.vectorized(16):
                                    acci[i * 16 + l] = offs[t * GT + gi]
                            for q in T.serial(quad_start[t * GT + gi + 1] - quad_start[t * GT + gi]):
                                for b in T.serial(NB):
                                    # one line per row and block of the quad ``ahead`` quads on, spread over the
                                    # block loop like the loads
                                    if ahead > 0 and quad_start[t * GT + gi] + q + ahead < quad_start[G]:
                                        for r in T.unroll(4):
                                            T.evaluate(T.call_intrin("void", "tirx.prefetch", T.address_of(qweight[
                                                rows[4 * (quad_start[t * GT + gi] + q + ahead) + r], b * 16]),
                                                0, locality, 1))
                                    acci[T.ramp(b * BLOCK, 1, BLOCK)] = block_update(
                                        qweight, acci, rows, quad_start[t * GT + gi] + q,
                                        T.reinterpret(bvec, T.broadcast(act4[quad_start[t * GT + gi] + q], V)),
                                        b * 16, b * BLOCK)
                            for i in T.serial(N // 16):
                                for l in T.vectorized(16):
                                    partial[t, i * 16 + l] = partial[t, i * 16 + l] + T.Cast("float32", acci[i * 16 + l]) * (
                                        T.Cast("float32", scale[t * GT + gi, i * 16 + l]) * xs[t * GT + gi])
        for i in T.serial(N // 16):
            for l in T.vectorized(16):
                y[zeros + (i * 16 + l,)] = partial[0, i * 16 + l]
            for tt in T.serial(tasks - 1):
                for l in T.vectorized(16):
                    y[zeros + (i * 16 + l,)] = y[zeros + (i * 16 + l,)] + partial[tt + 1, i * 16 + l]

    return sparse_gemv.without_attr("global_symbol")




def derived_sparse_gemv(scheme, n_out: int, k_in: int, rows: tuple, params, isa: str, prefetch: bool = True):
    """``sparse_gemv_func`` with the splits and prefetch distance ``params`` (CPUParams) derives for this [K, N], or
    None where it does not apply (not q4f16k's blocked order, several rows): the model's factory."""
    if scheme.name != "q4f16k" or scheme.nibble_order(n_out) != "blocked":
        return None
    ahead = params.sparse_gemv_prefetch_quads(n_out) if prefetch else 0
    return sparse_gemv_func(n_out, k_in, params.sparse_gemv_splits(), isa, rows, ahead,
                            params.sparse_gemv_prefetch_locality())
