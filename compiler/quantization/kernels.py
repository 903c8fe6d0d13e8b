"""TE bodies shared by ``QuantizedLinear`` and ``QuantizedEmbedding``.

The dequantization of every scheme is inlined into the single TE compute that consumes the
weight (a matmul reduction or an embedding gather), so after ``LegalizeOps``/``FuseOps``/
``FuseTIR`` the weight is only ever read in packed form: no ``[N, K]`` float buffer exists.

Block names (schedules look these up):

* :data:`MATMUL_BLOCK` (``"dequant_matmul"``): ``y[..., n] = sum_k float32(x[..., k]) *
  deq(W)[n, k]``, float32 accumulation, one reduction block for every scheme (for q0f32 the
  "dequantization" is the identity).
* :data:`CAST_BLOCK` (``"dequant_matmul_cast"``): elementwise float32 -> output dtype epilogue,
  present only when the output dtype is not float32 (e.g. compute_dtype float16).
* :data:`TAKE_BLOCK` (``"dequant_take"``): ``out[..., h] = deq(W)[ids[...], h]`` cast to the
  output dtype, no reduction.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime_stubs.errors import LlamaAotError
from .base import QuantScheme

MATMUL_BLOCK = "dequant_matmul"
CAST_BLOCK = "dequant_matmul_cast"
TAKE_BLOCK = "dequant_take"

COMPUTE_DTYPES = ("float32", "float16")


def check_compute_dtype(dtype: str) -> str:
    if dtype not in COMPUTE_DTYPES:
        raise LlamaAotError(
            f"unsupported compute dtype {dtype!r}; expected one of {', '.join(COMPUTE_DTYPES)}"
        )
    return dtype


def dequant_matmul_te(scheme: QuantScheme, out_features: int, in_features: int, out_dtype: str):
    """TE function ``(x, *packed) -> y`` for ``y = x @ deq(W)^T``; x is ``[..., K]``."""
    from tvm import te  # pylint: disable=import-outside-toplevel

    names = scheme.param_names(out_features, in_features)

    def compute(x, *packed):
        tensors = dict(zip(names, packed, strict=True))
        lead = tuple(x.shape[:-1])
        k = te.reduce_axis((0, in_features), name="k")

        def body(*idx):
            n = idx[-1]
            w = scheme.dequant_expr(tensors, n, k)
            return te.sum(x[idx[:-1] + (k,)].astype("float32") * w, axis=k)

        acc = te.compute(lead + (out_features,), body, name=MATMUL_BLOCK)
        if out_dtype == "float32":
            return acc
        return te.compute(acc.shape, lambda *i: acc[i].astype(out_dtype), name=CAST_BLOCK)

    return compute


def matmul_op(scheme: QuantScheme, out_features: int, in_features: int, out_dtype: str, x, packed, int8_kernel=None):
    """``x @ deq(W)^T`` as an nn op: the int8-activation kernel from ``int8_kernel`` (a factory
    ``(scheme, N, K, leading shape) -> PrimFunc | None``) where it applies to a float32 ``x`` and output,
    else the fused-dequant TE matmul (float32 activations)."""
    from tvm.relax.frontend import nn  # pylint: disable=import-outside-toplevel

    rows = tuple(x.shape[:-1])
    if int8_kernel is not None and x.dtype == "float32" == out_dtype:
        func = int8_kernel(scheme, out_features, in_features, rows)
        if func is not None:
            out = nn.Tensor.placeholder((*rows, out_features), "float32")
            single_row = all(isinstance(d, int) and d == 1 for d in rows)
            return nn.op.tensor_ir_op(func, "int8_gemv" if single_row else "int8_gemm", [x, *packed], out)
    fn = dequant_matmul_te(scheme, out_features, in_features, out_dtype)
    return nn.op.tensor_expr_op(fn, MATMUL_BLOCK, [x, *packed])


def sparsify_te(x, threshold):
    """``x`` with the entries of magnitude <= ``threshold[0]`` set to zero (--activation-sparsity, where no
    row-skipping kernel applies: prefill rows, compression/activation_sparsity.py)."""
    from tvm import te, tirx  # pylint: disable=import-outside-toplevel

    zero = tirx.const(0, x.dtype)
    return te.compute(x.shape, lambda *i: tirx.Select(te.abs(x[i]) > threshold[0].astype(x.dtype), x[i], zero),
                      name="sparsify_input")


def dequant_take_te(scheme: QuantScheme, vocab_size: int, hidden_size: int, out_dtype: str):
    """TE function ``(ids, *packed) -> out`` for ``out[..., h] = deq(W)[ids[...], h]``.

    Ids are not range-checked (as with ``take``): callers guarantee ``0 <= id < vocab_size``.
    """
    from tvm import te  # pylint: disable=import-outside-toplevel

    names = scheme.param_names(vocab_size, hidden_size)

    def compute(ids, *packed):
        tensors = dict(zip(names, packed, strict=True))

        def body(*idx):
            h = idx[-1]
            row = ids[idx[:-1]].astype(_dtype_of(h))
            return scheme.dequant_expr(tensors, row, h).astype(out_dtype)

        return te.compute(tuple(ids.shape) + (hidden_size,), body, name=TAKE_BLOCK)

    return compute


def _dtype_of(expr) -> str:
    """dtype string of a ``tirx.PrimExpr`` (0.27 exposes it as ``expr.ty.dtype``)."""
    return str(expr.ty.dtype)


def static_last_dim(shape: Sequence, expected: int, what: str) -> None:
    """Raise when the last dim of ``shape`` is a known int different from ``expected``."""
    last = shape[-1] if len(shape) else None
    if isinstance(last, int) and last != expected:
        raise LlamaAotError(
            f"{what}: input of shape {list(shape)} has last dimension {last}, expected {expected}"
        )
