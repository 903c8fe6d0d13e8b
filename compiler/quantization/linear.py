"""``QuantizedLinear``: ``y = x @ deq(W)^T`` with the dequantization fused into the matmul."""

from __future__ import annotations

from tvm.relax.frontend import nn

from .base import QuantScheme
from .kernels import check_compute_dtype, matmul_op, sparsify_te, static_last_dim


class QuantizedLinear(nn.Module):
    """Bias-free linear layer over a packed weight of logical shape ``[out, in]``.

    The packed arrays are ``nn.Parameter`` attributes named by the scheme's
    ``param_specs`` suffixes (``weight`` for q0*, ``qweight`` + ``scale`` for q8f16/q4f16), so
    a layer at attribute path ``layers.0.attn.qkv_proj`` exports parameters
    ``layers.0.attn.qkv_proj.qweight`` and ``layers.0.attn.qkv_proj.scale``, in that order.

    ``forward`` takes ``x`` of shape ``[..., in_features]`` in any float dtype (it is widened
    to float32 inside the kernel) and returns ``[..., out_features]`` in ``compute_dtype``;
    accumulation is float32. ``Module.to(dtype)`` changes ``compute_dtype`` only: the stored
    dtypes of the packed parameters are fixed by the scheme.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scheme: QuantScheme,
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.scheme = scheme
        self.compute_dtype = check_compute_dtype(compute_dtype)
        #: PrimFunc factory ``(scheme, N, K, leading shape of x) -> PrimFunc | None`` for float32 inputs, set
        #: by the model when activations are rounded to int8 (schedules/cpu/int8_gemm.py:int8_matmul_func).
        #: None (or a None result): the fused-dequant TE matmul.
        self.int8_kernel = None
        #: --activation-sparsity: inputs with |x| <= ``input_threshold`` count as zero; ``sparse_kernel``
        #: ``(scheme, N, K, leading shape) -> PrimFunc | None`` skips their weight rows (schedules/cpu/sparse_gemv.py)
        self.sparse_input = False
        self.sparse_kernel = None
        for suffix, (shape, dtype) in scheme.param_specs(out_features, in_features).items():
            setattr(self, suffix, nn.Parameter(shape, dtype))

    def packed_params(self) -> list[nn.Parameter]:
        """The packed parameters in ``param_specs`` order."""
        names = self.scheme.param_names(self.out_features, self.in_features)
        return [getattr(self, s) for s in names]

    def sparsify_input(self, sparse_kernel=None) -> None:
        """Threshold this projection's input (a float32 ``input_threshold`` parameter, after the packed ones)."""
        self.sparse_input = True
        self.sparse_kernel = sparse_kernel
        self.input_threshold = nn.Parameter((1,), "float32")

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        static_last_dim(x.shape, self.in_features, f"QuantizedLinear({self.scheme.name})")
        if self.sparse_input:
            rows = tuple(x.shape[:-1])
            func = None
            if self.sparse_kernel is not None and x.dtype == "float32" == self.compute_dtype:
                func = self.sparse_kernel(self.scheme, self.out_features, self.in_features, rows)
            if func is not None:
                out = nn.Tensor.placeholder((*rows, self.out_features), "float32")
                return nn.op.tensor_ir_op(func, "sparse_gemv", [x, self.input_threshold, *self.packed_params()], out)
            x = nn.op.tensor_expr_op(sparsify_te, "sparsify_input", [x, self.input_threshold])
        return matmul_op(self.scheme, self.out_features, self.in_features, self.compute_dtype, x, self.packed_params(), self.int8_kernel)

    def to(self, dtype: str | None = None) -> None:  # pylint: disable=invalid-name
        if dtype is not None:
            self.compute_dtype = check_compute_dtype(dtype)
