"""Decode GEMV (one activation row: decode steps and the lm_head) with int8 activations and 4-byte integer
dot products (int8_dot.py: AVX-512 VNNI ``vpdpbusd`` zmm, 16 lanes; AVX-VNNI ``vpdpbusd`` ymm or AVX2
``vpmaddubsw`` + ``vpmaddwd``, 8 lanes; AArch64 ``sdot``, 4 lanes), on q4 weights of either nibble order (the
planar one is described here; the sequential layouts need no transpose).

Why: the f32 GEMV (gemv.py) spends about ten vector instructions per 16 weights on unpacking, converting and
scaling, and is compute-bound near 20 GB/s per core, below the memory bandwidth. With the activation row
rounded to int8 (per group of 32: ``int8_dot.numpy_reference``), 128 weights cost one 64-byte load, two
masks, two byte shuffles and two ``vpdpbusd``, plus one convert-scale-FMA.

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

and ``y[n] = sum_L facc[L]``. With 8 lanes (``_Planar8``) a block is two 32-byte halves whose lanes hold
the same 4 groups: both halves' dot products go into one int32 accumulator (AVX2: their four int16 pair-sum
vectors are added first and widened by one ``vpmaddwd``), then one convert-scale-FMA per block.

cb4f16 (compiler/quantization/codebook.py) stores its centroid indices as these nibbles: the same unpack, then
one byte shuffle (int8_dot.lut: ``vpshufb`` / ``tbl``) with the row's 16 codes in every 16-byte lane turns the
nibbles into the codes (+ 128 for ``vpdpbusd``'s u8 operand, folded into ``xc`` as -8 is for q4f16), and the
row's one scale replaces the group scales.

Rows are split across threads in contiguous chunks and each thread walks its rows one after the other (a
single sequential stream), with a software prefetch a derived distance ahead and two accumulators per row
(even / odd units) to halve the dependent FMA chain.
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .int8_dot import GROUP, ISA_LANES, dot4_sum, lut, weight_offset

BLOCK = 128  # k-values per planar block: 16 words = one 64-byte vector
_NIBBLES = 0x0F0F0F0F
# Software prefetch: one row per thread at a time, the prefetch a fixed number of bytes ahead (whole rows,
# ``prefetch_rows``). The distance is derived from the L1d (schedules/cpu/params.py int8_gemv_prefetch_bytes:
# a quarter of it; Zen 5's 48 KiB gives 12 KiB, measured best there at 8-16 KiB; 4-row tiles, i.e. 4
# interleaved streams, reached only ~80% of the bandwidth). The prefetch kind is a fact of the core
# (CPUParams.int8_gemv_prefetch_locality): non-temporal (prefetchnta) where it keeps the read-once weights out
# of the outer caches without limiting the stream (Zen 5: 96-99% of the streaming-read bandwidth instead of
# 80-92%, K 8192 x N 2048: 43 -> 52 GB/s), prefetcht0 where NTA lines fill L1d only and the L1d's fill
# buffers cap the stream (Intel; Emerald Rapids, 2 threads: 15 GB/s with nta, 25 GB/s with t0).


def prefetch_rows(nbytes: int, k_in: int) -> int:
    """Rows of K/2 weight bytes that a prefetch ``nbytes`` ahead reaches (at least one)."""
    return max(1, round(nbytes / (k_in // 2)))
# vpshufb control: in each 16-byte lane, output byte 4t + u <- input byte 4u + t (4x4 transpose)
TRANSPOSE_4X4 = [16 * c + 4 * u + t for c in range(4) for t in range(4) for u in range(4)]


def shuffle(v, idx):
    """Lanes ``idx`` of vector v (or of the concatenation of a list of vectors)."""
    return tirx.Shuffle(v if isinstance(v, list) else [v], [tirx.IntImm("int32", i) for i in idx])


class _Planar:
    """Unit = one 128-k block (16 words, 4 groups); lane 4c + t holds group t of the block.

    A layout says where each 4-byte piece of the activation row goes: ``slot(g, c)`` is the int32 lane (in
    xlo / xhi) of group g's c-th piece, ``cslot(g, c)`` its accumulator lane (in xc / xs); a unit is ``parts``
    weight vectors of ``lanes`` words that all feed the same accumulator lanes."""

    lanes, k_per_unit, parts = 16, BLOCK, 1

    @staticmethod
    def slot(g, c):
        return (g // 4) * 16 + c * 4 + g % 4

    cslot = slot

    @staticmethod
    def lo(c, m):  # offset in the group of byte m of that lane, low nibbles (high: hi)
        return c * 4 + m

    @staticmethod
    def hi(c, m):
        return 16 + c * 4 + m

    @staticmethod
    def arrange(v):
        return shuffle(v, TRANSPOSE_4X4)

    @staticmethod
    def scales(scale, n, u):  # wscale[n, 4u + L % 4]
        s4 = T.Cast("float32x4", scale[n, T.ramp(u * 4, 1, 4)])
        return tirx.Shuffle([s4] * 4, [tirx.IntImm("int32", L) for L in range(16)])


class _Planar8:
    """Planar for 8-lane dot products (AVX2 / AVX-VNNI ymm): unit = one 128-k block as 2 parts of 8 words
    (32 bytes; ``vpshufb`` ymm transposes within each 16-byte lane, the first 32 entries of TRANSPOSE_4X4).
    Part h's lane L is piece c = 2h + L // 4 of group t = L % 4: both halves feed the same 8 accumulator
    lanes, so one block costs one int32 -> f32 convert, scale and FMA (and on AVX2 one ``vpmaddwd``, its
    4 pair-sum terms <= 4 x 3810 = 15240 in int16). Activation memory layout: that of _Planar."""

    lanes, k_per_unit, parts = 8, BLOCK, 2

    slot, lo, hi = _Planar.slot, _Planar.lo, _Planar.hi

    @staticmethod
    def cslot(g, c):
        return (g // 4) * 8 + (c % 2) * 4 + g % 4

    @staticmethod
    def arrange(v):
        return shuffle(v, TRANSPOSE_4X4[:32])

    @staticmethod
    def scales(scale, n, u):  # wscale[n, 4u .. 4u + 3] twice
        s4 = T.Cast("float32x4", scale[n, T.ramp(u * 4, 1, 4)])
        return tirx.Shuffle([s4] * 2, [tirx.IntImm("int32", L) for L in range(8)])


class _Planar4:
    """Planar for 4-lane dot products (NEON ``sdot``): unit = 16 bytes, the 4 words 4c..4c+3 of block
    b = u // 4 (c = u % 4). The activation lanes are those of ``_Planar`` (slot 16b + 4c + t): the same
    memory layout, consumed 4 lanes at a time."""

    lanes, k_per_unit, parts = 4, GROUP, 1  # 4 words = 32 k-values (of 4 different groups)

    slot, cslot, lo, hi = _Planar.slot, _Planar.slot, _Planar.lo, _Planar.hi

    @staticmethod
    def arrange(v):
        return shuffle(v, TRANSPOSE_4X4[:16])

    @staticmethod
    def scales(scale, n, u):  # wscale[n, 4b + t] for lane t
        return T.Cast("float32x4", scale[n, T.ramp((u // 4) * 4, 1, 4)])


class _Sequential:
    """Unit = one group (4 words): lane c is word c, whose bytes already stay in the group."""

    lanes, k_per_unit, parts = 4, GROUP, 1

    @staticmethod
    def slot(g, c):
        return g * 4 + c

    cslot = slot

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


class _Sequential8:
    """Sequential for 8-lane dot products: unit = two groups (8 words), lanes 0..3 group 2u, 4..7 group
    2u + 1; the activation layout of _Sequential. Needs an even number of groups (K % 64 == 0); for the
    rare K = 32 (mod 64) widths the GEMV keeps 4-lane vectors (half the work per instruction, same result)."""

    lanes, k_per_unit, parts = 8, 2 * GROUP, 1

    slot, cslot, lo, hi, arrange = _Sequential.slot, _Sequential.slot, _Sequential.lo, _Sequential.hi, _Sequential.arrange

    @staticmethod
    def scales(scale, n, u):  # wscale[n, 2u] x 4, wscale[n, 2u + 1] x 4
        s2 = T.Cast("float32x2", scale[n, T.ramp(u * 2, 1, 2)])  # Shuffle: out lanes <= in lanes, so 4 copies
        return tirx.Shuffle([s2] * 4, [tirx.IntImm("int32", i) for i in (0, 2, 4, 6, 1, 3, 5, 7)])


def _layout(planar: bool, lanes: int, groups: int):
    if planar:
        return {16: _Planar, 8: _Planar8, 4: _Planar4}[lanes]
    return _Sequential8 if lanes == 8 and groups % 2 == 0 else _Sequential


def int8_gemv_func(
    scheme, n_out: int, k_in: int, x_shape: tuple = (1, 1), ahead: int | None = None,
    isa: str = "avx512vnni", prefetch: bool = True, locality: int | None = None,
):
    """PrimFunc ``(x[*x_shape, K] f32, qweight, scale, y[*x_shape, N] f32)`` for one activation row, or None
    when it does not fit (not q4f16, K not a multiple of 32, x of more than one row). ``ahead``: how many
    rows ahead the weight prefetch reaches (default: what this machine's facts derive, see prefetch_rows);
    ``locality``: the prefetch's (0 = non-temporal .. 3 = all levels; default: this machine's, see
    CPUParams.int8_gemv_prefetch_locality);
    ``isa``: see ``int8_dot.int8_dot_isa``; ``prefetch``: False for system-lib (phone) builds, where TVM 0.27's
    AttachGlobalSymbol rejects the prefetch call (as for the f32 GEMV, compiler/pipeline.py)."""
    offset = weight_offset(scheme.name, isa)
    if offset is None or k_in % GROUP or any(d != 1 for d in x_shape):
        return None
    codebook = scheme.name != "q4f16"  # cb4f16: the nibbles index the row's table (int8_dot.lut)
    K, N, G = k_in, n_out, k_in // GROUP
    lay = _layout(scheme.nibble_order(k_in) == "planar", ISA_LANES[isa], G)
    if ahead is None or locality is None:
        from .params import CPUParams  # pylint: disable=import-outside-toplevel

        host = CPUParams.from_target(None)
        ahead = prefetch_rows(host.int8_gemv_prefetch_bytes() or 1, k_in) if ahead is None else ahead
        locality = host.int8_gemv_prefetch_locality() if locality is None else locality
    V, P = lay.lanes, lay.parts
    KU = K // lay.k_per_unit
    S = 2 if KU % 2 == 0 else 1  # accumulators per row: halves the dependent FMA chain
    # one prefetch per 64-byte line of weights: ``lines`` per iteration of the unit loop (S units), or one
    # every ``every`` iterations when they read less. Every line, not every other: on Zen 3 (2 threads, K 2048
    # x N 16384 from DRAM) prefetching every other 64-byte line streamed 11-13 GB/s per core, below no
    # prefetch at all (12-15), every line 16-20 (the bandwidth kernel beside it: 14-18)
    step_bytes = S * 4 * V * P
    lines, every = max(1, step_bytes // 64), max(1, 64 // step_bytes)
    specs = scheme.param_specs(N, K)
    (qw_shape, qw_dtype), (sc_shape, sc_dtype) = specs["qweight"], specs["scale"]
    cb_shape = specs["codebook"][0] if codebook else None
    lead = tuple(x_shape)
    zeros = (0,) * len(lead)
    bvec, fvec = f"int8x{4 * V}", f"float32x{V}"

    def nibble_bytes(words, shift):
        """Nibbles (words >> shift) & 0xF of every byte, in the activation's lane order. The byte shuffle
        goes first: the low / high nibble of a byte is a function of that byte alone, so it commutes with
        any byte permutation, and both nibble vectors share one shuffle (LLVM merges the two)."""
        v = T.reinterpret(f"uint32x{V}", lay.arrange(T.reinterpret(bvec, words)))
        v = v >> T.broadcast(T.uint32(shift), V) if shift else v
        return v & T.broadcast(T.uint32(_NIBBLES), V)

    def weight_bytes(words, shift, table):
        """The weight bytes of the nibbles (words >> shift) & 0xF: the nibbles themselves (q4f16) or the row's
        table entries they index (cb4f16)."""
        nib = nibble_bytes(words, shift)
        return nib if table is None else lut(isa, table, nib, 4 * V)

    def unit_sum(qweight, xlo, xhi, xc, n, u, table):
        """int32 lanes of unit u of row n: the offset + the dot products of its parts' low and high nibbles."""
        terms = []
        for p in range(P):
            words = qweight[n, T.ramp((u * P + p) * V, 1, V)]
            terms += [
                (weight_bytes(words, 0, table), xlo[T.ramp((u * P + p) * V, 1, V)]),
                (weight_bytes(words, 4, table), xhi[T.ramp((u * P + p) * V, 1, V)]),
            ]
        return dot4_sum(isa, xc[T.ramp(u * V, 1, V)], terms, V)

    def unit_scale(scale, n, u):
        """The weight scale of unit u's lanes: per group (q4f16), the row's (cb4f16)."""
        return T.broadcast(T.Cast("float32", scale[n, 0]), V) if codebook else lay.scales(scale, n, u)

    def row_table(book, n):
        """cb4f16: row n's 16 codes (+ 128 for the u8 operand of vpdpbusd) in every 16-byte lane."""
        codes = book[n, T.ramp(0, 1, 16)]
        if offset:
            codes = codes ^ T.broadcast(T.int8(-128), 16)
        if V == 4:
            return codes
        return tirx.Shuffle([codes] * (V // 4), [tirx.IntImm("int32", i) for i in range(4 * V)])  # out lanes <= in

    def hsum(v):
        """Sum of the lanes of v by halving (log2 V vector adds instead of V - 1 dependent scalar ones)."""
        n = V
        while n > 1:
            n //= 2
            v = shuffle(v, range(n)) + shuffle(v, range(n, 2 * n))
        return v

    def pack4(qv, off, c):
        """int32 whose bytes are qv[off(c, 0)] .. qv[off(c, 3)] (two's complement int8)."""
        b = [qv[off(c, m)] for m in range(4)]
        return (b[0] & 255) | ((b[1] & 255) << 8) | ((b[2] & 255) << 16) | (b[3] << 24)

    # pylint: disable=invalid-name,too-many-locals
    @T.macro
    def body(x, qweight, book, scale, y):
        xlo = T.alloc_buffer((KU * P * V,), "int32")
        xhi = T.alloc_buffer((KU * P * V,), "int32")
        xc = T.alloc_buffer((KU * V,), "int32")
        xs = T.alloc_buffer((KU * V,), "float32")
        # 1. the activation row -> int8 per group, in the lane order of the weight vectors
        with T.sblock("quantize"):
            T.reads()
            T.writes()
            amax = T.sblock_alloc_buffer((16,), "float32")
            qv = T.sblock_alloc_buffer((GROUP,), "int32")
            inv = T.sblock_alloc_buffer((2,), "float32")
            for i in T.serial(KU * V):
                xc[i] = 0
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
                for c in T.serial(4):  # the group's 4 pieces, 4 + 4 bytes each
                    xlo[lay.slot(g, c)] = pack4(qv, lay.lo, c)
                    xhi[lay.slot(g, c)] = pack4(qv, lay.hi, c)
                    xc[lay.cslot(g, c)] = xc[lay.cslot(g, c)] - offset * (
                        qv[lay.lo(c, 0)] + qv[lay.lo(c, 1)] + qv[lay.lo(c, 2)] + qv[lay.lo(c, 3)]
                        + qv[lay.hi(c, 0)] + qv[lay.hi(c, 1)] + qv[lay.hi(c, 2)] + qv[lay.hi(c, 3)]
                    )
                    xs[lay.cslot(g, c)] = inv[1]
        # 2. rows in parallel
        for n in T.parallel(N):  # contiguous chunks of rows per thread, each row one sequential stream
            with T.sblock("gemv"):
                T.reads()
                T.writes()
                facc = T.sblock_alloc_buffer((S, V), "float32")
                table = T.sblock_alloc_buffer((4 * V,), "int8")
                if codebook:
                    table[T.ramp(0, 1, 4 * V)] = row_table(book, n)
                for a in T.unroll(S):
                    for l in T.vectorized(V):
                        facc[a, l] = T.float32(0)
                for uo in T.serial(KU // S):
                    if prefetch and uo % every == 0:
                        for pl in T.unroll(lines):
                            T.evaluate(
                                T.call_intrin(
                                    "void", "tirx.prefetch", T.address_of(qweight[n + ahead, uo * S * V * P + pl * 16]), 0, locality, 1
                                )
                            )
                    for sa in T.unroll(S):
                        facc[sa, T.ramp(0, 1, V)] = facc[sa, T.ramp(0, 1, V)] + T.Cast(
                            fvec, unit_sum(qweight, xlo, xhi, xc, n, uo * S + sa, table[T.ramp(0, 1, 4 * V)] if codebook else None)
                        ) * (unit_scale(scale, n, uo * S + sa) * xs[T.ramp((uo * S + sa) * V, 1, V)])
                for sa in T.unroll(S - 1):
                    facc[0, T.ramp(0, 1, V)] = facc[0, T.ramp(0, 1, V)] + facc[sa + 1, T.ramp(0, 1, V)]
                y[zeros + (n,)] = hsum(facc[0, T.ramp(0, 1, V)])

    if codebook:
        @T.prim_func(s_tir=True)
        def int8_gemv(
            x: T.Buffer(lead + (K,), "float32"),
            qweight: T.Buffer(qw_shape, qw_dtype),
            book: T.Buffer(cb_shape, "int8"),
            scale: T.Buffer(sc_shape, sc_dtype),
            y: T.Buffer(lead + (N,), "float32"),
        ):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            body(x, qweight, book, scale, y)
    else:
        @T.prim_func(s_tir=True)
        def int8_gemv(
            x: T.Buffer(lead + (K,), "float32"),
            qweight: T.Buffer(qw_shape, qw_dtype),
            scale: T.Buffer(sc_shape, sc_dtype),
            y: T.Buffer(lead + (N,), "float32"),
        ):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            body(x, qweight, None, scale, y)

    return int8_gemv.without_attr("global_symbol")  # symbols come from the module the caller adds it to
