"""Reference kernels in the shape the quantization room writes them (TE) plus numpy packers, for tests and
bench/kernels.py. Not used by the rules themselves.

Weight formats (row n of the [N, K] matrix, group size 32 along K):
- q4f16: qweight uint32 [N, K/8], nibble j of word w is element 8w+j (low nibble first), value q-8;
         scale float16 [N, K/32].
- q4f16p ("planar"): same arrays, but within each block of 128 k-values (16 words) value 128b + 16j + i is
         nibble j of word 16b + i: 16 consecutive k share one nibble position across 16 consecutive words, so
         a 16-lane vector of k is one contiguous 64-byte load, one shift and one mask (like ggml's Q4_0 split
         of low/high nibbles), and one group scale.
- q8f16: qweight int8 [N, K], scale float16 [N, K/32].
- q0f16: float16 [N, K].   - q0f32: float32 [N, K].
"""

from __future__ import annotations

import numpy as np
from tvm import te, tirx

GROUP = 32
SCHEMES = ("q4f16", "q4f16p", "q8f16", "q0f16", "q0f32")
PLANAR = 128  # q4f16p: k-block of 16 words x 8 nibbles


def _i64(v):
    return tirx.IntImm("int64", v) if isinstance(v, int) else v


def weight_placeholders(scheme: str, n: int, k: int) -> list[te.Tensor]:
    """Placeholders with int64 shapes (as Relax emits them)."""
    n, k = int(n), int(k)
    return [te.placeholder(tuple(_i64(d) for d in p[0]), p[1], name=p[2]) for p in _weight_specs(scheme, n, k)]


def _weight_specs(scheme: str, n: int, k: int):
    if scheme in ("q4f16", "q4f16p"):
        return [((n, k // 8), "uint32", "qweight"), ((n, k // GROUP), "float16", "scale")]
    if scheme == "q8f16":
        return [((n, k), "int8", "qweight"), ((n, k // GROUP), "float16", "scale")]
    if scheme == "q0f16":
        return [((n, k), "float16", "weight")]
    if scheme == "q0f32":
        return [((n, k), "float32", "weight")]
    raise ValueError(scheme)


def dequant_expr(scheme: str, params: list[te.Tensor], n, k):
    """deq(W)[n, k] as a float32 TE expression."""
    if scheme == "q4f16":
        qw, sc = params
        nib = (qw[n, k // 8] >> tirx.Cast("uint32", 4 * (k % 8))) & tirx.const(15, "uint32")
        return (nib.astype("float32") - tirx.const(8, "float32")) * sc[n, k // GROUP].astype("float32")
    if scheme == "q4f16p":
        qw, sc = params
        word = (k // PLANAR) * 16 + k % 16
        nib = (qw[n, word] >> tirx.Cast("uint32", 4 * ((k % PLANAR) // 16))) & tirx.const(15, "uint32")
        return (nib.astype("float32") - tirx.const(8, "float32")) * sc[n, k // GROUP].astype("float32")
    if scheme == "q8f16":
        qw, sc = params
        return qw[n, k].astype("float32") * sc[n, k // GROUP].astype("float32")
    if scheme == "q0f16":
        return params[0][n, k].astype("float32")
    if scheme == "q0f32":
        return params[0][n, k]
    raise ValueError(scheme)


def dequant_matmul_te(x: te.Tensor, wparams: list[te.Tensor], scheme: str, n: int, k: int, separate_dequant: bool = True):
    """y[b, s, n] = sum_k x[b, s, k] * deq(W)[n, k] (float32).

    separate_dequant=True writes the dequantization as its own stage (the form the GEMM rule can keep as a
    per-task panel); False inlines it into the reduction (what a single te.sum would give)."""
    kk = te.reduce_axis((0, _i64(k)), name="k")
    n_ = _i64(n)
    if scheme == "q0f32" or not separate_dequant:
        return te.compute(
            (x.shape[0], x.shape[1], n_),
            lambda b, s, j: te.sum(x[b, s, kk].astype("float32") * dequant_expr(scheme, wparams, j, kk), axis=kk),
            name="matmul",
        )
    w = te.compute((n_, _i64(k)), lambda j, i: dequant_expr(scheme, wparams, j, i), name="dequantize")
    return te.compute(
        (x.shape[0], x.shape[1], n_), lambda b, s, j: te.sum(x[b, s, kk].astype("float32") * w[j, kk], axis=kk), name="matmul"
    )


def dequant_matmul_func(
    scheme: str, n: int, k: int, seq: int | str = 1, epilogue: str | None = None, separate_dequant: bool = True
) -> tirx.PrimFunc:
    """A PrimFunc shaped like the pipeline's fused output. seq="seq" makes S symbolic.

    epilogue: None, "add" (residual add, fused like FuseOps does) or "cast" (to float16)."""
    s = tirx.Var(seq, "int64") if isinstance(seq, str) else _i64(seq)
    x = te.placeholder((_i64(1), s, _i64(k)), "float32", name="x")
    wp = weight_placeholders(scheme, n, k)
    y = dequant_matmul_te(x, wp, scheme, n, k, separate_dequant)
    args = [x, *wp]
    if epilogue == "add":
        r = te.placeholder((_i64(1), s, _i64(n)), "float32", name="residual")
        out = te.compute(y.shape, lambda b, i, j: y[b, i, j] + r[b, i, j], name="T_add")
        args += [r, out]
    elif epilogue == "cast":
        out = te.compute(y.shape, lambda b, i, j: y[b, i, j].astype("float16"), name="T_cast")
        args += [out]
    else:
        args += [y]
    return te.create_prim_func(args).with_attr("tirx.noalias", True)


def embedding_func(scheme: str, vocab: int, hidden: int, seq: int | str = "seq") -> tirx.PrimFunc:
    """out[s, h] = deq(W)[ids[s], h] with W [vocab, hidden] in the given scheme."""
    s = tirx.Var(seq, "int64") if isinstance(seq, str) else _i64(seq)
    ids = te.placeholder((s,), "int32", name="ids")
    wp = weight_placeholders(scheme, vocab, hidden)
    out = te.compute((s, _i64(hidden)), lambda i, h: dequant_expr(scheme, wp, ids[i], h), name="embedding")
    return te.create_prim_func([ids, *wp, out]).with_attr("tirx.noalias", True)


# ----------------------------------------------------------------------------------------------- numpy side
def pack_weight(scheme: str, w: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Quantize a float32 [N, K] matrix; returns (the packed arrays, the dequantized float32 matrix)."""
    n, k = w.shape
    if scheme == "q0f32":
        w32 = w.astype(np.float32)
        return [w32], w32
    if scheme == "q0f16":
        w16 = w.astype(np.float16)
        return [w16], w16.astype(np.float32)
    g = w.reshape(n, k // GROUP, GROUP)
    amax = np.abs(g).max(axis=2) + 1e-8
    if scheme == "q8f16":
        scale = (amax / 127.0).astype(np.float16)
        s32 = scale.astype(np.float32)[:, :, None]
        q = np.clip(np.round(g / s32), -127, 127).astype(np.int8)
        deq = (q.astype(np.float32) * s32).reshape(n, k)
        return [q.reshape(n, k), scale], deq
    if scheme in ("q4f16", "q4f16p"):
        scale = (amax / 7.0).astype(np.float16)
        s32 = scale.astype(np.float32)[:, :, None]
        q = (np.clip(np.round(g / s32), -8, 7) + 8).astype(np.uint32).reshape(n, k)
        qw = np.zeros((n, k // 8), np.uint32)
        if scheme == "q4f16":
            for j in range(8):
                qw |= q[:, j::8] << np.uint32(4 * j)
        else:
            qb = q.reshape(n, k // PLANAR, 8, 16)  # [n, block, nibble j, word i]
            words = np.zeros((n, k // PLANAR, 16), np.uint32)
            for j in range(8):
                words |= qb[:, :, j, :] << np.uint32(4 * j)
            qw = words.reshape(n, k // 8)
        deq = ((q.reshape(n, k // GROUP, GROUP).astype(np.float32) - 8) * s32).reshape(n, k)
        return [qw, scale], deq
    raise ValueError(scheme)


def weight_nbytes(arrays: list[np.ndarray]) -> int:
    return int(sum(a.nbytes for a in arrays))
