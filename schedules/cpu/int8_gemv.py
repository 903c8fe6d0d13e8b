"""Decode GEMV (one activation row: decode steps and the lm_head) with int8 activations and 4-byte integer
dot products: AVX-512 VNNI ``vpdpbusd`` (16 lanes) or AArch64 ``sdot`` (4 lanes), on q4 weights of either
nibble order (the planar one is described here; ``_Sequential`` needs no transpose).

Why: the f32 GEMV (gemv.py) spends about ten vector instructions per 16 weights on unpacking, converting and
scaling, and is compute-bound near 20 GB/s per core, below the memory bandwidth. With the activation row
rounded to int8 (the numerics of int8_gemm.py: per group of 32, ``numpy_reference`` there), 128 weights cost
one 64-byte load, two masks, two byte shuffles and two ``vpdpbusd``, plus one convert-scale-FMA.

Layout used (planar q4, docs/quantization.md): block b of 128 k-values is the 16 words 16b..16b+15, and
logical ``k = 128b + 16j + i`` is nibble j of word i. So with the 64 bytes as one vector,

    lo = words & 0x0F0F0F0F   byte m of word i = nibble 2m   -> k = i + 32m        (group m of the block)
    hi = (words >> 4) & same  byte m of word i = nibble 2m+1 -> k = i + 16 + 32m   (group m)

A 4x4 byte transpose inside every 16-byte lane (one ``vpshufb``) turns int32 lane ``L = 4c + t`` into the
four bytes ``i = 4c..4c+3`` of group ``t``: every dot-product lane stays inside one scale group. The
activation row is laid out once per call in the same order (``xlo``/``xhi``), with the ``-8`` offset of the
nibbles folded into the accumulator start (``xc``) and its scale per lane (``xs``). Per row and block:

    acc_i32[L] = xc[b, L] + dot4(lo_T[L], xlo[b, L]) + dot4(hi_T[L], xhi[b, L])
    facc[L]   += float32(acc_i32[L]) * (wscale[n, 4b + L % 4] * xs[b, L])

and ``y[n] = sum_L facc[L]``. Rows are split across threads in contiguous chunks and each thread walks its
rows one after the other (a single sequential stream), with a software prefetch ``PREFETCH_BYTES`` ahead
and two accumulators per row (even / odd units) to halve the dependent FMA chain.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .int8_gemm import GROUP, ISA_LANES, dot4

BLOCK = 128  # k-values per planar block: 16 words = one 64-byte vector
_NIBBLES = 0x0F0F0F0F
# software prefetch distance in weight bytes (whole rows): measured on Zen 5 (2 threads, DRAM-resident
# weights), one row per tile with the prefetch ~8-16 KB ahead streams at the bandwidth of a plain read;
# 4-row tiles (4 interleaved streams) reached only ~80% of it. The prefetch is non-temporal (locality 0,
# prefetchnta): the weights are read once per token, and keeping them out of the outer caches gave
# 96-99% of the streaming-read bandwidth instead of 80-92% (K 8192 x N 2048: 43 -> 52 GB/s).
PREFETCH_BYTES = 12288
# vpshufb control: in each 16-byte lane, output byte 4t + u <- input byte 4u + t (4x4 transpose)
_TRANSPOSE = [16 * c + 4 * u + t for c in range(4) for t in range(4) for u in range(4)]


class _Planar:
    """Unit = one 128-k block (16 words, 4 groups); lane 4c + t holds group t of the block."""

    lanes, k_per_unit = 16, BLOCK

    @staticmethod
    def slot(g, c):  # activation lane of group g's c-th 4-byte piece
        return (g // 4) * 16 + c * 4 + g % 4

    @staticmethod
    def lo(c, m):  # offset in the group of byte m of that lane, low nibbles (high: hi)
        return c * 4 + m

    @staticmethod
    def hi(c, m):
        return 16 + c * 4 + m

    @staticmethod
    def arrange(v):
        return tirx.Shuffle([v], [tirx.IntImm("int32", i) for i in _TRANSPOSE])

    @staticmethod
    def scales(scale, n, u):  # wscale[n, 4u + L % 4]
        s4 = T.Cast("float32x4", scale[n, T.ramp(u * 4, 1, 4)])
        return tirx.Shuffle([s4] * 4, [tirx.IntImm("int32", L) for L in range(16)])


class _Planar4:
    """Planar for 4-lane dot products (NEON ``sdot``): unit = 16 bytes, the 4 words 4c..4c+3 of block
    b = u // 4 (c = u % 4). The activation lanes are those of ``_Planar`` (slot 16b + 4c + t): the same
    memory layout, consumed 4 lanes at a time."""

    lanes, k_per_unit = 4, GROUP  # 4 words = 32 k-values (of 4 different groups)

    slot, lo, hi = _Planar.slot, _Planar.lo, _Planar.hi

    @staticmethod
    def arrange(v):
        return tirx.Shuffle([v], [tirx.IntImm("int32", i) for i in _TRANSPOSE[:16]])

    @staticmethod
    def scales(scale, n, u):  # wscale[n, 4b + t] for lane t
        return T.Cast("float32x4", scale[n, T.ramp((u // 4) * 4, 1, 4)])


class _Sequential:
    """Unit = one group (4 words): lane c is word c, whose bytes already stay in the group."""

    lanes, k_per_unit = 4, GROUP

    @staticmethod
    def slot(g, c):
        return g * 4 + c

    @staticmethod
    def lo(c, m):  # nibble 2m of word c: k = 8c + 2m
        return c * 8 + 2 * m

    @staticmethod
    def hi(c, m):
        return c * 8 + 2 * m + 1

    @staticmethod
    def arrange(v):
        return v

    @staticmethod
    def scales(scale, n, u):
        return T.broadcast(T.Cast("float32", scale[n, u]), 4)


def int8_gemv_func(
    scheme, n_out: int, k_in: int, x_shape: tuple = (1, 1), ahead: int | None = None,
    isa: str = "avx512vnni", prefetch: bool = True,
):
    """PrimFunc ``(x[*x_shape, K] f32, qweight, scale, y[*x_shape, N] f32)`` for one activation row, or None
    when it does not fit (not q4f16, K not a multiple of 32, x of more than one row). ``ahead``: how many
    rows ahead the weight prefetch reaches (default: PREFETCH_BYTES);
    ``isa``: see ``int8_gemm.int8_dot_isa``; ``prefetch``: False for system-lib (phone) builds, where TVM 0.27's
    AttachGlobalSymbol rejects the prefetch call (as for the f32 GEMV, compiler/pipeline.py)."""
    if scheme.name != "q4f16" or k_in % GROUP or any(d != 1 for d in x_shape):
        return None
    if scheme.nibble_order(k_in) == "planar":
        lay = _Planar if ISA_LANES[isa] == 16 else _Planar4
    else:
        lay = _Sequential
    if ahead is None:
        ahead = max(1, round(PREFETCH_BYTES / (k_in // 2)))
    K, N, G, V = k_in, n_out, k_in // GROUP, lay.lanes
    KU = K // lay.k_per_unit
    S = 2 if KU % 2 == 0 else 1  # accumulators per row: halves the dependent FMA chain
    every = max(1, 64 // (4 * V))  # units per 64-byte line: one prefetch per line
    specs = scheme.param_specs(N, K)
    (qw_shape, qw_dtype), (sc_shape, sc_dtype) = specs["qweight"], specs["scale"]
    lead = tuple(x_shape)
    zeros = (0,) * len(lead)
    bvec, fvec = f"int8x{4 * V}", f"float32x{V}"

    def vnni(acc, w, a):
        return dot4(isa, acc, w, a, V)

    def nibble_bytes(words, shift):
        """Nibbles (words >> shift) & 0xF of every byte, in the activation's lane order."""
        v = words >> T.broadcast(T.uint32(shift), V) if shift else words
        return lay.arrange(T.reinterpret(bvec, v & T.broadcast(T.uint32(_NIBBLES), V)))

    def pack4(qv, off, c):
        """int32 whose bytes are qv[off(c, 0)] .. qv[off(c, 3)] (two's complement int8)."""
        b = [qv[off(c, m)] for m in range(4)]
        return (b[0] & 255) | ((b[1] & 255) << 8) | ((b[2] & 255) << 16) | (b[3] << 24)

    # pylint: disable=invalid-name,too-many-locals
    @T.prim_func(s_tir=True)
    def int8_gemv(
        x: T.Buffer(lead + (K,), "float32"),
        qweight: T.Buffer(qw_shape, qw_dtype),
        scale: T.Buffer(sc_shape, sc_dtype),
        y: T.Buffer(lead + (N,), "float32"),
    ):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        xlo = T.alloc_buffer((KU * V,), "int32")
        xhi = T.alloc_buffer((KU * V,), "int32")
        xc = T.alloc_buffer((KU * V,), "int32")
        xs = T.alloc_buffer((KU * V,), "float32")
        # 1. the activation row -> int8 per group, in the lane order of the weight vectors
        with T.sblock("quantize"):
            T.reads()
            T.writes()
            amax = T.sblock_alloc_buffer((16,), "float32")
            qv = T.sblock_alloc_buffer((GROUP,), "int32")
            inv = T.sblock_alloc_buffer((2,), "float32")
            for g in T.serial(G):
                for l in T.vectorized(16):
                    amax[l] = T.max(T.abs(x[zeros + (g * GROUP + l,)]), T.abs(x[zeros + (g * GROUP + 16 + l,)]))
                for l in T.vectorized(8):  # halving tree: 4 vector steps instead of 15 dependent ones
                    amax[l] = T.max(amax[l], amax[l + 8])
                for l in T.vectorized(4):
                    amax[l] = T.max(amax[l], amax[l + 4])
                for l in T.vectorized(2):
                    amax[l] = T.max(amax[l], amax[l + 2])
                amax[0] = T.max(amax[0], amax[1])
                inv[1] = amax[0] / T.float32(127)
                inv[0] = T.if_then_else(amax[0] > T.float32(0), T.float32(1) / inv[1], T.float32(0))
                for l in T.vectorized(GROUP):
                    qv[l] = T.Cast("int32", T.nearbyint(x[zeros + (g * GROUP + l,)] * inv[0]))
                for c in T.serial(4):  # the group's 4 lanes, 4 + 4 bytes each
                    xlo[lay.slot(g, c)] = pack4(qv, lay.lo, c)
                    xhi[lay.slot(g, c)] = pack4(qv, lay.hi, c)
                    xc[lay.slot(g, c)] = -8 * (
                        qv[lay.lo(c, 0)] + qv[lay.lo(c, 1)] + qv[lay.lo(c, 2)] + qv[lay.lo(c, 3)]
                        + qv[lay.hi(c, 0)] + qv[lay.hi(c, 1)] + qv[lay.hi(c, 2)] + qv[lay.hi(c, 3)]
                    )
                    xs[lay.slot(g, c)] = inv[1]
        # 2. rows in parallel
        for n in T.parallel(N):  # contiguous chunks of rows per thread, each row one sequential stream
            with T.sblock("gemv"):
                T.reads()
                T.writes()
                facc = T.sblock_alloc_buffer((S, V), "float32")
                for a in T.unroll(S):
                    for l in T.vectorized(V):
                        facc[a, l] = T.float32(0)
                for uo in T.serial(KU // S):
                    if prefetch and uo * S % every == 0:
                        T.evaluate(
                            T.call_intrin("void", "tirx.prefetch", T.address_of(qweight[n + ahead, uo * S * V]), 0, 0, 1)
                        )
                    for sa in T.unroll(S):
                        facc[sa, T.ramp(0, 1, V)] = facc[sa, T.ramp(0, 1, V)] + T.Cast(
                            fvec,
                            vnni(
                                vnni(
                                    xc[T.ramp((uo * S + sa) * V, 1, V)],
                                    nibble_bytes(qweight[n, T.ramp((uo * S + sa) * V, 1, V)], 0),
                                    xlo[T.ramp((uo * S + sa) * V, 1, V)],
                                ),
                                nibble_bytes(qweight[n, T.ramp((uo * S + sa) * V, 1, V)], 4),
                                xhi[T.ramp((uo * S + sa) * V, 1, V)],
                            ),
                        ) * (lay.scales(scale, n, uo * S + sa) * xs[T.ramp((uo * S + sa) * V, 1, V)])
                for sa in T.unroll(S - 1):
                    facc[0, T.ramp(0, 1, V)] = facc[0, T.ramp(0, 1, V)] + facc[sa + 1, T.ramp(0, 1, V)]
                for l in T.serial(V - 1):
                    facc[0, 0] = facc[0, 0] + facc[0, l + 1]
                y[zeros + (n,)] = facc[0, 0]

    return int8_gemv.without_attr("global_symbol")  # symbols come from the module the caller adds it to
