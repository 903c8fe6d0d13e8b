"""Prefill GEMM with int8 activations and AVX-512 VNNI dot products (llama.cpp's Q4_0 x Q8_0, ExecuTorch 8da4w).

Why: the f32 GEMM (gemm.py) already runs near the FMA peak (about 200 GFLOP/s per Zen 5 core on the 1B shapes),
so prefill can only get faster with fewer instructions per multiply-add: one ``vpdpbusd`` does 64 u8 x s8
products, a ``vfmadd`` 16.

Numerics (``numpy_reference`` is the executable definition): per activation row and group of 32 k
(the weight's quantization group),

    d  = float32(max |x|) / 127;  q = nearbyint(x * (1 / d)) in [-127, 127]  (0 when d == 0; half to even)
    y[s, n] = sum_g float32(sum_{k in g} q[s, k] * (nibble[n, k] - 8)) * (wscale[n, g] * d[s, g])

i.e. the weights are the same packed q4 integers, only x is rounded to 8 bits per group (relative error of
x per element <= 1/254 of its group's max). Accumulation is float32 across groups, exact int32 within one.

Kernel (one PrimFunc, hand-scheduled, marked ``tirx.is_scheduled``):

1. rows in parallel: per (row, group) d, q packed 4 per int32, and sum(q) (for the -8 offset);
2. parallel over N tiles of ``nt`` columns: the tile's weight nibbles as u8 in ``[K/4, nt]`` int32 lanes (4 k
   per lane, the order of k in a lane is irrelevant to a dot product) and its scales as f32 ``[G, nt]``;
   then for MR rows x NRV*16 columns: per group, an int32 accumulator tile starting at ``-8 * sum(q)``,
   8 ``vpdpbusd`` (weights = the u8 operand, the row's 4 activation bytes broadcast = the s8 operand),
   converted to f32 and accumulated with the two scales.

The nibble of logical (n, k) comes from the scheme's own ``dequant_expr`` (peeled down to its integer), so
any q4 packing order (sequential or planar) is correct; the sequential one is the fast case (one gathered
word gives a lane).
"""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

GROUP = 32


def int8_dot_isa(target) -> str | None:
    """The 4-byte integer dot product these kernels use on ``target``: ``"avx512vnni"`` (x86 AVX-512 VNNI
    with BW and VL: ``vpdpbusd``, 16 int32 lanes), ``"dotprod"`` (AArch64 dot product extension: ``sdot``,
    4 lanes), or None (no int8 kernels; the f32 ones stay)."""
    from .params import _features, _target_arch  # pylint: disable=import-outside-toplevel

    if target is None or target.kind.name != "llvm":
        return None
    arch, feats = _target_arch(target), set(_features(target))
    if arch == "x86_64" and {"avx512vnni", "avx512bw", "avx512vl"} <= feats:
        return "avx512vnni"
    if arch == "aarch64" and "dotprod" in feats:
        return "dotprod"
    return None


def dot4(isa: str, acc, w, a, lanes: int):
    """``acc[l] + sum_j w[4l + j] * a[4l + j]`` per int32 lane l (``lanes`` of them): w and a are int32
    vectors read as bytes, w's bytes the weight nibbles 0..15 (valid as u8 for ``vpdpbusd`` and as s8 for
    ``sdot``), a's bytes the signed int8 activations."""
    if isa == "avx512vnni":
        name = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256", 4: "llvm.x86.avx512.vpdpbusd.128"}[lanes]
    elif isa == "dotprod" and lanes == 4:
        name = "llvm.aarch64.neon.sdot.v4i32.v16i8"
    else:
        raise ValueError(f"no {lanes}-lane int8 dot product for {isa}")
    bytes_ = f"int8x{4 * lanes}"
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id(name), acc, T.reinterpret(bytes_, w), T.reinterpret(bytes_, a), dtype=f"int32x{lanes}"
    )


ISA_LANES = {"avx512vnni": 16, "dotprod": 4}  # int32 lanes of one dot-product instruction


def nibble_expr(scheme, tensors: dict, row, col):
    """uint32 ``q + 8`` (0..15) of logical element (row, col) of a q4 scheme, peeled from its dequant_expr:
    ``(float32(nibble) - 8.0) * float32(scale)`` in either operand order (the planar layout puts the
    scale first). None when the expression has another form."""
    expr = scheme.dequant_expr(tensors, row, col)
    if type(expr).__name__ != "Mul":
        return None
    for sub in (expr.a, expr.b):
        try:
            if type(sub).__name__ != "Sub" or type(sub.a).__name__ != "Cast" or float(sub.b.value) != 8.0:
                continue
            nib = sub.a.value
        except AttributeError:
            continue
        if str(nib.ty.dtype) == "uint32":
            return nib
    return None


def int8_gemm_func(
    scheme, n_out: int, k_in: int, out_dtype: str = "float32", mr: int = 4, nrv: int | None = None, nt: int = 64,
    isa: str = "avx512vnni",
):
    """PrimFunc ``(x[b, s, K] f32, qweight, scale, y[b, s, N])`` or None when the scheme/shape does not fit.
    ``isa``: see ``int8_dot_isa``; register tiles are ``mr`` rows x ``nrv`` dot-product vectors."""
    L = ISA_LANES[isa]
    if nrv is None:
        nrv = 2 if L == 16 else 4  # 8 (AVX-512) or 16 (NEON) int32 accumulator registers
    while n_out % (L * nrv) and nrv > 1:
        nrv //= 2
    if scheme.name != "q4f16" or k_in % GROUP or n_out % 16:
        return None
    while n_out % nt or nt % (L * nrv):
        nt //= 2
    if nt < L * nrv or nt % 16:
        return None
    K, N, G, K4 = k_in, n_out, k_in // GROUP, k_in // 4
    specs = scheme.param_specs(N, K)
    (qw_shape, qw_dtype), (sc_shape, sc_dtype) = specs["qweight"], specs["scale"]
    probe = {"qweight": tirx.decl_buffer(qw_shape, qw_dtype, "qweight"), "scale": tirx.decl_buffer(sc_shape, sc_dtype, "scale")}
    if nibble_expr(scheme, probe, tirx.Var("n", "int64"), tirx.Var("k", "int64")) is None:
        return None
    nw = nt // 16
    ncb = nt // (L * nrv)

    def lane(qweight, scale, n, k4):
        """4 nibbles (k = 4*k4 .. +3) of row n as the bytes of one int32."""
        t = {"qweight": qweight, "scale": scale}
        out = None
        for j in range(4):
            nib = nibble_expr(scheme, t, n, k4 * 4 + j)
            term = nib << tirx.const(8 * j, "uint32") if j else nib
            out = term if out is None else out | term
        return tirx.reinterpret("int32", out)

    def vnni(acc, w, xb):
        return dot4(isa, acc, w, T.broadcast(xb, L), L)

    # pylint: disable=invalid-name,too-many-locals
    @T.prim_func(s_tir=True)
    def int8_gemm(var_x: T.handle, qweight: T.Buffer(qw_shape, qw_dtype), scale: T.Buffer(sc_shape, sc_dtype), var_y: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "tirx.noalias": True})
        b = T.int64()
        s = T.int64()
        x = T.match_buffer(var_x, (b, s, K), "float32")
        y = T.match_buffer(var_y, (b, s, N), out_dtype)
        xq = T.alloc_buffer((b * s, K4), "int32")
        xd = T.alloc_buffer((b * s, G), "float32")
        xsum = T.alloc_buffer((b * s, G), "int32")
        # 1. activations -> int8 per (row, group)
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
                    xsum[r, g] = 0
                    for l in T.serial(GROUP):
                        xsum[r, g] = xsum[r, g] + qv[l]
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
                ws = T.sblock_alloc_buffer((G, nt), "float32")
                iacc = T.sblock_alloc_buffer((mr, nrv * L), "int32")
                facc = T.sblock_alloc_buffer((mr, nrv * L), "float32")
                for c in T.serial(nw):
                    for k4 in T.serial(K4):
                        for l in T.vectorized(16):
                            wp[k4, c * 16 + l] = lane(qweight, scale, nt_o * nt + c * 16 + l, k4)
                    for g in T.serial(G):
                        for l in T.vectorized(16):
                            ws[g, c * 16 + l] = T.Cast("float32", scale[nt_o * nt + c * 16 + l, g])
                for ro in T.serial((b * s + (mr - 1)) // mr):
                    for cb in T.serial(ncb):
                        for i in T.unroll(mr):
                            for l in T.vectorized(nrv * L):
                                facc[i, l] = T.float32(0)
                        for g in T.serial(G):
                            for i in T.unroll(mr):
                                for l in T.vectorized(nrv * L):
                                    iacc[i, l] = xsum[T.min(ro * mr + i, b * s - 1), g] * -8
                            for k in T.unroll(8):
                                for i in T.unroll(mr):
                                    for v in T.unroll(nrv):
                                        iacc[i, T.ramp(v * L, 1, L)] = vnni(
                                            iacc[i, T.ramp(v * L, 1, L)],
                                            wp[g * 8 + k, T.ramp(cb * nrv * L + v * L, 1, L)],
                                            xq[T.min(ro * mr + i, b * s - 1), g * 8 + k],
                                        )
                            for i in T.unroll(mr):
                                for l in T.vectorized(nrv * L):
                                    facc[i, l] = facc[i, l] + T.Cast("float32", iacc[i, l]) * (
                                        ws[g, cb * nrv * L + l] * xd[T.min(ro * mr + i, b * s - 1), g]
                                    )
                        for i in T.unroll(mr):
                            if ro * mr + i < b * s:
                                for l in T.vectorized(nrv * L):
                                    y[(ro * mr + i) // s, (ro * mr + i) % s, nt_o * nt + cb * nrv * L + l] = T.Cast(
                                        out_dtype, facc[i, l]
                                    )

    return int8_gemm.without_attr("global_symbol")  # symbols come from the module the caller adds it to


def numpy_reference(x, nibbles, wscale):
    """The kernel's numerics in numpy. x: f32 [rows, K]; nibbles: uint [N, K] (q + 8); wscale: f16 [N, K/32]."""
    import numpy as np  # pylint: disable=import-outside-toplevel

    rows, k = x.shape
    xg = x.astype(np.float32).reshape(rows, k // GROUP, GROUP)
    d = np.abs(xg).max(-1) / np.float32(127)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d > 0)
    q = np.rint(xg * inv[..., None]).astype(np.int64)
    w = nibbles.astype(np.int64).reshape(nibbles.shape[0], k // GROUP, GROUP) - 8
    dots = np.einsum("rgk,ngk->rng", q, w).astype(np.float32)  # exact int sums, < 2**24
    scl = wscale.astype(np.float32)[None, :, :] * d[:, None, :]
    return (dots * scl).sum(-1, dtype=np.float32)


def int8_matmul_func(scheme, n_out: int, k_in: int, rows: tuple, isa: str = "avx512vnni", prefetch: bool = True):
    """The int8-activation kernel for an input of leading shape ``rows`` (the model's hook, set on each
    projection with the target's ``isa``): the GEMV of int8_gemv.py for one row (decode, the lm_head), this
    GEMM for ``[b, s]`` rows (prefill). Both fit every q4f16 weight with N % 16 == 0 (K % 32 == 0 holds for
    q4f16); None otherwise, and the caller keeps the f32 fused-dequant matmul for that projection.
    ``prefetch``: the GEMV's software prefetch (off for system-lib builds, see int8_gemv_func)."""
    from .int8_gemv import int8_gemv_func  # pylint: disable=import-outside-toplevel

    if n_out % 16:  # the GEMM's column tiles; the same rule for the GEMV keeps prefill and decode alike
        return None
    if all(isinstance(d, int) and d == 1 for d in rows):
        return int8_gemv_func(scheme, n_out, k_in, tuple(rows), isa=isa, prefetch=prefetch)
    if len(rows) == 2:
        return int8_gemm_func(scheme, n_out, k_in, isa=isa)
    return None
