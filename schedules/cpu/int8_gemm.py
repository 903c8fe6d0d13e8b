"""Prefill GEMM with int8 activations and 4-byte int8 dot products (llama.cpp's Q4_0 x Q8_0, ExecuTorch 8da4w).

Why: the f32 GEMM (gemm.py) already runs near the FMA peak (about 200 GFLOP/s per Zen 5 core on the 1B shapes),
so prefill can only get faster with fewer instructions per multiply-add: one ``vpdpbusd`` zmm does 64 u8 x s8
products, a ``vfmadd`` 16; on AVX2 a ``vpmaddubsw`` ymm does 32, a ``vfmadd`` ymm 8.

Numerics: ``int8_dot.numpy_reference`` (x rounded to int8 per row and group of 32, exact integer sums per
group, float32 across groups), the same for the GEMV (int8_gemv.py). The weights are the same packed q4
integers, only x is rounded (relative error per element <= 1/254 of its group's max).

Kernel (one PrimFunc, hand-scheduled, marked ``tirx.is_scheduled``):

1. rows in parallel: per (row, group) d, q packed 4 per int32, and -8 * sum(q) (the nibbles' offset);
2. parallel over N tiles of ``nt`` columns: the tile's weight nibbles as u8 in ``[K/4, nt]`` int32 lanes (4 k
   per lane, the order of k in a lane is irrelevant to a dot product) and its scales as f32 ``[G, nt]``;
   then for MR rows x NRV*L columns (L lanes per dot product, int8_dot.ISA_LANES): per group, 8 dot-product
   steps (weights = the u8 operand, the row's 4 activation bytes broadcast = the s8 operand) into a step
   accumulator tile, its int32 sums plus the offset converted to f32 and accumulated with the two scales.
   VNNI / sdot steps accumulate int32 lanes; AVX2 steps add ``vpmaddubsw`` int16 pair sums, widened once per
   group by one ``vpmaddwd`` (8 steps x 3810 <= 32767: exact), so a step is 2 instructions, not 3.

cb4f16: the panel holds the codes the nibbles index (+ 128 on VNNI, int8_dot.weight_offset), built 32 k at a
time with two table lookups (``code_column``), and the row scale stands for every group's.

The nibble of logical (n, k) comes from the scheme's own ``dequant_expr`` (peeled down to its integer), so
any q4 packing order (sequential or planar) is correct; the sequential one is the fast case (one gathered
word gives a lane).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from .int8_dot import GROUP, ISA_LANES, dot4, lut, pair_sums, weight_offset, widen_pairs
from .int8_gemv import TRANSPOSE_4X4, int8_gemv_func, shuffle

# Default register tile (mr rows x nrv dot-product vectors) per ISA: the int32 (AVX2: int16) step
# accumulators, the f32 accumulators, nrv weight vectors and one broadcast activation must fit the registers.
#   avx512vnni, 32 zmm: 2 * 4 * 2 + 2 + 1 = 19
#   avxvnni,    16 ymm: 2 * 3 * 2 + 2 + 1 = 15 (4 x 2 would need 19)
#   avx2,       16 ymm: 2 * 3 * 2 + 2 + 1 + 1 = 16 (+1: the vpmaddubsw product before its add)
#   dotprod,    32 q:   16 int32 + 16 f32 accumulators; LLVM keeps some of the f32 ones in memory
GEMM_TILE = {"avx512vnni": (4, 2), "avxvnni": (3, 2), "avx2": (3, 2), "dotprod": (4, 4)}
GEMM_NT = 64  # weight columns per parallel task (the panel: 1.125 K bytes per column, re-read per row tile)


def int8_gemm_func(
    scheme, n_out: int, k_in: int, out_dtype: str = "float32", mr: int | None = None, nrv: int | None = None,
    nt: int | None = None, isa: str = "avx512vnni",
):
    """PrimFunc ``(x[b, s, K] f32, qweight, scale, y[b, s, N])`` or None when the scheme/shape does not fit.
    ``isa``: see ``int8_dot.int8_dot_isa``; register tiles are ``mr`` rows x ``nrv`` dot-product vectors
    (default GEMM_TILE[isa]), ``nt`` weight columns per parallel task (default GEMM_NT); smaller values are
    taken where N needs them."""
    L = ISA_LANES[isa]
    mr, nrv = mr or GEMM_TILE[isa][0], nrv or GEMM_TILE[isa][1]
    nt = nt or GEMM_NT
    while n_out % (L * nrv) and nrv > 1:
        nrv //= 2
    offset = weight_offset(scheme.name, isa)
    if offset is None or k_in % GROUP or n_out % 16:
        return None
    codebook = scheme.name != "q4f16"  # cb4f16: each nibble indexes its row's codes (+ 128 for vpdpbusd)
    # the panel: the widest nt <= the asked one that divides N and holds whole column blocks of L x nrv;
    # where none does (a narrow panel derived for a small N, wide AVX-512 vectors), fewer vectors per block
    while True:
        cand = nt
        while cand >= L * nrv and (n_out % cand or cand % (L * nrv)):
            cand //= 2
        if cand >= L * nrv:
            nt = cand
            break
        if nrv == 1:
            return None
        nrv //= 2
    if nt % 16:
        return None
    K, N, G, K4 = k_in, n_out, k_in // GROUP, k_in // 4
    specs = scheme.param_specs(N, K)
    (qw_shape, qw_dtype), (sc_shape, sc_dtype) = specs["qweight"], specs["scale"]
    cb_shape = specs["codebook"][0] if codebook else None
    nw = nt // 16
    ncb = nt // (L * nrv)
    # Step accumulator of one group (8 steps of 4 k): int32 dot-product lanes, or on AVX2 the int16 pair sums
    # of vpmaddubsw (2 per int32 lane; 8 steps x 3810 <= 32767, int8_dot.PAIR_TERMS), widened once per group.
    pairs = isa == "avx2"
    AW, adt = (2 * L, "int16") if pairs else (L, "int32")

    def weight_byte(qweight, book, n, k):
        """uint32 weight byte of (n, k): the nibble (q4f16), or the code it indexes (cb4f16, + 128 when the
        weights are vpdpbusd's u8 operand)."""
        nib = scheme.nibble_expr(qweight, n, k)
        if not codebook:
            return nib
        code = book[n, nib.astype("int32")]
        return (code.astype("int32") + offset).astype("uint32") & tirx.const(255, "uint32")

    def lane(qweight, book, n, k4):
        """4 weight bytes (k = 4*k4 .. +3) of row n as the bytes of one int32."""
        out = None
        for j in range(4):
            nib = weight_byte(qweight, book, n, k4 * 4 + j)
            term = nib << tirx.const(8 * j, "uint32") if j else nib
            out = term if out is None else out | term
        return tirx.reinterpret("int32", out)

    planar = codebook and scheme.nibble_order(K) == "planar"

    def table16(book, n):
        """Row n's 16 codes (+ 128 for the u8 operand of vpdpbusd)."""
        codes = book[n, T.ramp(0, 1, 16)]
        return codes ^ T.broadcast(T.int8(-128), 16) if offset else codes

    @T.macro
    def code_column(wp, work, qweight, book, n, col):
        """cb4f16: panel column ``col`` from weight row n, 32 k (4 words) at a time: the low and high nibbles
        as bytes, one 16-byte table lookup each (int8_dot.lut), then into 4-consecutive-k lanes. Planar
        (q4f16's nibble order): byte m of word 4c + i of block b holds k = 128b + 32m + 4c + i (low) and +16
        (high), so the 4x4 byte transpose makes lane t hold k4 = 32b + 8t + c (low) and + 4 (high);
        sequential: byte p holds k = 32u + 2p (low) and + 1 (high), interleaved into k order. A gather per
        byte instead (the q4f16 lane()) costs the prefill a third of its speed."""
        for u in T.serial(K // GROUP):
            words = qweight[n, T.ramp(u * 4, 1, 4)]
            lo = lut(isa, table16(book, n), words & T.broadcast(T.uint32(0x0F0F0F0F), 4), 16)
            hi = lut(isa, table16(book, n), (words >> T.broadcast(T.uint32(4), 4)) & T.broadcast(T.uint32(0x0F0F0F0F), 4), 16)
            if planar:  # work lanes 0..3: k4 = 32b + 8t + c; 4..7: + 4
                work[T.ramp(0, 1, 4)] = T.reinterpret("int32x4", shuffle(lo, TRANSPOSE_4X4[:16]))
                work[T.ramp(4, 1, 4)] = T.reinterpret("int32x4", shuffle(hi, TRANSPOSE_4X4[:16]))
                for t in T.unroll(8):
                    wp[(u // 4) * 32 + (t % 4) * 8 + (t // 4) * 4 + u % 4, col] = work[t]
            else:  # work lane t: k4 = 8u + t
                work[T.ramp(0, 1, 8)] = T.reinterpret("int32x8", shuffle([lo, hi], [i // 2 + 16 * (i % 2) for i in range(32)]))
                for t in T.unroll(8):
                    wp[u * 8 + t, col] = work[t]

    def step(acc, w, xb):  # acc + one 4-byte dot per lane, the row's 4 activation bytes broadcast
        if pairs:
            return acc + pair_sums(w, T.broadcast(xb, L), L)
        return dot4(isa, acc, w, T.broadcast(xb, L), L)

    def steps(rows):
        """The loop over a group's 8 steps. AVX2: extent min(8, rows + 7), which is 8 whenever the loop runs,
        but LLVM cannot prove it and keeps one basic block per step (unrolled with an exit test) instead of
        one for the whole group, where its bottom-up scheduler orders the int16 adds accumulator by
        accumulator and keeps all 8 x nrv weight vectors live: spills (Zen 3, 3 x 2 tile, K 2048 x N 2048,
        128 rows: 82-104 -> 99-159 GFLOP/s per core over two loaded runs). The VNNI / sdot chains schedule well unrolled."""
        return T.serial(T.min(8, rows + 7)) if pairs else T.unroll(8)

    # the group's int32 sums = xc (-8 * sum q, the nibbles' offset) + the steps: int32 step accumulators start
    # at xc, the AVX2 int16 ones at 0 (xc does not fit int16) and xc is added after widening
    def start(xc):
        return T.Cast(adt, 0) if pairs else xc

    def group_sum(acc, xc):
        return T.broadcast(xc, L) + widen_pairs(acc, L) if pairs else acc

    # pylint: disable=invalid-name,too-many-locals
    @T.macro
    def body(var_x, qweight, book, scale, var_y):
        b = T.int64()
        s = T.int64()
        x = T.match_buffer(var_x, (b, s, K), "float32")
        y = T.match_buffer(var_y, (b, s, N), out_dtype)
        xq = T.alloc_buffer((b * s, K4), "int32")
        xd = T.alloc_buffer((b * s, G), "float32")
        xc = T.alloc_buffer((b * s, G), "int32")
        # 1. activations -> int8 per (row, group); xc = -8 * sum(q): the nibbles' offset
        for r in T.parallel(b * s):
            with T.sblock("quantize"):
                T.reads()
                T.writes()
                amax = T.sblock_alloc_buffer((16,), "float32")
                qv = T.sblock_alloc_buffer((GROUP,), "int32")
                inv = T.sblock_alloc_buffer((1,), "float32")
                for g in T.serial(G):
                    for l in T.vectorized(16):
                        amax[l] = T.max(T.abs(x[r // s, r % s, g * GROUP + l]), T.abs(x[r // s, r % s, g * GROUP + 16 + l]))
                    for l in T.serial(15):
                        amax[0] = T.max(amax[0], amax[l + 1])
                    xd[r, g] = amax[0] / T.float32(127)
                    inv[0] = T.if_then_else(amax[0] > T.float32(0), T.float32(1) / xd[r, g], T.float32(0))
                    for l in T.vectorized(GROUP):
                        qv[l] = T.Cast("int32", T.nearbyint(x[r // s, r % s, g * GROUP + l] * inv[0]))
                    xc[r, g] = 0
                    for l in T.serial(GROUP):
                        xc[r, g] = xc[r, g] - offset * qv[l]
                    for l in T.vectorized(8):
                        xq[r, g * 8 + l] = (
                            (qv[l * 4] & 255)
                            | ((qv[l * 4 + 1] & 255) << 8)
                            | ((qv[l * 4 + 2] & 255) << 16)
                            | (qv[l * 4 + 3] << 24)
                        )
        # 2. per N tile: weight panel, then MR x (NRV*L) register tiles
        for nt_o in T.parallel(N // nt):
            with T.sblock("gemm"):
                T.reads()
                T.writes()
                wp = T.sblock_alloc_buffer((K4, nt), "int32")
                work = T.sblock_alloc_buffer((8,), "int32")  # cb4f16: the lanes of one 32-k unit on their way to wp
                ws = T.sblock_alloc_buffer((G, nt), "float32")
                iacc = T.sblock_alloc_buffer((mr, nrv * AW), adt)
                facc = T.sblock_alloc_buffer((mr, nrv * L), "float32")
                for c in T.serial(nw):
                    if codebook:
                        for l in T.serial(16):
                            code_column(wp, work, qweight, book, nt_o * nt + c * 16 + l, c * 16 + l)
                    else:
                        for k4 in T.serial(K4):
                            for l in T.vectorized(16):
                                wp[k4, c * 16 + l] = lane(qweight, book, nt_o * nt + c * 16 + l, k4)
                    for g in T.serial(G):
                        for l in T.vectorized(16):
                            ws[g, c * 16 + l] = T.Cast("float32", scale[nt_o * nt + c * 16 + l, 0 if codebook else g])
                for ro in T.serial((b * s + (mr - 1)) // mr):
                    for cb in T.serial(ncb):
                        for i in T.unroll(mr):
                            for l in T.vectorized(nrv * L):
                                facc[i, l] = T.float32(0)
                        for g in T.serial(G):
                            for i in T.unroll(mr):
                                for l in T.vectorized(nrv * AW):
                                    iacc[i, l] = start(xc[T.min(ro * mr + i, b * s - 1), g])
                            for k in steps(b * s):
                                for i in T.unroll(mr):
                                    for v in T.unroll(nrv):
                                        iacc[i, T.ramp(v * AW, 1, AW)] = step(
                                            iacc[i, T.ramp(v * AW, 1, AW)],
                                            wp[g * 8 + k, T.ramp(cb * nrv * L + v * L, 1, L)],
                                            xq[T.min(ro * mr + i, b * s - 1), g * 8 + k],
                                        )
                            for i in T.unroll(mr):
                                for v in T.unroll(nrv):
                                    facc[i, T.ramp(v * L, 1, L)] = facc[i, T.ramp(v * L, 1, L)] + T.Cast(
                                        f"float32x{L}",
                                        group_sum(iacc[i, T.ramp(v * AW, 1, AW)], xc[T.min(ro * mr + i, b * s - 1), g]),
                                    ) * (
                                        ws[g, T.ramp(cb * nrv * L + v * L, 1, L)]
                                        * T.broadcast(xd[T.min(ro * mr + i, b * s - 1), g], L)
                                    )
                        for i in T.unroll(mr):
                            if ro * mr + i < b * s:
                                for l in T.vectorized(nrv * L):
                                    y[(ro * mr + i) // s, (ro * mr + i) % s, nt_o * nt + cb * nrv * L + l] = T.Cast(
                                        out_dtype, facc[i, l]
                                    )

    if codebook:
        @T.prim_func(s_tir=True)
        def int8_gemm(var_x: T.handle, qweight: T.Buffer(qw_shape, qw_dtype), book: T.Buffer(cb_shape, "int8"),
                      scale: T.Buffer(sc_shape, sc_dtype), var_y: T.handle):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            body(var_x, qweight, book, scale, var_y)
    else:
        @T.prim_func(s_tir=True)
        def int8_gemm(var_x: T.handle, qweight: T.Buffer(qw_shape, qw_dtype), scale: T.Buffer(sc_shape, sc_dtype),
                      var_y: T.handle):
            T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
            body(var_x, qweight, None, scale, var_y)

    return int8_gemm.without_attr("global_symbol")  # symbols come from the module the caller adds it to


def int8_matmul_func(
    scheme, n_out: int, k_in: int, rows: tuple, isa: str = "avx512vnni", prefetch: bool = True,
    ahead: int | None = None, mr: int | None = None, nrv: int | None = None, nt: int | None = None,
    locality: int | None = None,
):
    """The int8-activation kernel for an input of leading shape ``rows`` (the model's hook, set on each
    projection with the target's ``isa``): the GEMV of int8_gemv.py for one row (decode, the lm_head), this
    GEMM for ``[b, s]`` rows (prefill). Both fit every q4f16 weight with N % 16 == 0 (K % 32 == 0 holds for
    q4f16); None otherwise, and the caller keeps the f32 fused-dequant matmul for that projection.
    ``prefetch``, ``ahead``, ``locality``: the GEMV's (see int8_gemv_func); ``mr``, ``nrv``, ``nt``: the GEMM's."""
    if n_out % 16:  # the GEMM's column tiles; the same rule for the GEMV keeps prefill and decode alike
        return None
    if all(isinstance(d, int) and d == 1 for d in rows):
        return int8_gemv_func(scheme, n_out, k_in, tuple(rows), ahead=ahead, isa=isa, prefetch=prefetch, locality=locality)
    if len(rows) == 2:
        return int8_gemm_func(scheme, n_out, k_in, mr=mr, nrv=nrv, nt=nt, isa=isa)
    return None


def derived_int8_matmul(scheme, n_out: int, k_in: int, rows: tuple, params, isa: str, prefetch: bool = True, **knobs):
    """``int8_matmul_func`` with the knobs ``params`` (schedules/cpu/params.py CPUParams) derives for this
    [K, N]: the GEMV's prefetch distance and kind, the GEMM's panel width and register tile. ``knobs`` are CPUParams
    fields (a tuning record's: ``int8_prefetch_bytes``, ``int8_gemm_mr`` ...) that override the derivation.
    The one builder of the model's int8 kernels, so a tuner measures exactly what compile builds."""
    import dataclasses  # pylint: disable=import-outside-toplevel

    from .int8_gemv import prefetch_rows  # pylint: disable=import-outside-toplevel

    if knobs:
        params = dataclasses.replace(params, **knobs)
    nbytes = params.int8_gemv_prefetch_bytes() if prefetch else 0
    return int8_matmul_func(
        scheme, n_out, k_in, rows, isa=isa, prefetch=nbytes > 0,
        ahead=prefetch_rows(nbytes, k_in) if nbytes else None, locality=params.int8_gemv_prefetch_locality(),
        mr=params.int8_gemm_mr, nrv=params.int8_gemm_nrv, nt=params.int8_gemm_panel_cols(k_in, n_out, 16),
    )
