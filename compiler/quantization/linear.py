"""``QuantizedLinear``: ``y = x @ deq(W)^T`` with the dequantization fused into the matmul."""

from __future__ import annotations

from tvm.relax.frontend import nn

from .base import QuantScheme
from .kernels import MATMUL_BLOCK, check_compute_dtype, dequant_matmul_te, static_last_dim


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
        #: PrimFunc factory ``(scheme, N, K) -> PrimFunc | None`` used for inputs with several (or a
        #: symbolic number of) rows, i.e. prefill; set by the model (int8-activation GEMM, see
        #: schedules/cpu/int8_gemm.py). None: always the fused-dequant TE matmul.
        self.rows_kernel = None
        for suffix, (shape, dtype) in scheme.param_specs(out_features, in_features).items():
            setattr(self, suffix, nn.Parameter(shape, dtype))

    def packed_params(self) -> list[nn.Parameter]:
        """The packed parameters in ``param_specs`` order."""
        names = self.scheme.param_names(self.out_features, self.in_features)
        return [getattr(self, s) for s in names]

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        static_last_dim(x.shape, self.in_features, f"QuantizedLinear({self.scheme.name})")
        rows = x.shape[:-1]
        single_row = all(isinstance(d, int) and d == 1 for d in rows)
        if self.rows_kernel is not None and not single_row and len(rows) == 2 and x.dtype == "float32" == self.compute_dtype:
            func = self.rows_kernel(self.scheme, self.out_features, self.in_features)
            if func is not None:
                out = nn.Tensor.placeholder((*rows, self.out_features), "float32")
                return nn.op.tensor_ir_op(func, "int8_matmul", [x, *self.packed_params()], out)
        fn = dequant_matmul_te(self.scheme, self.out_features, self.in_features, self.compute_dtype)
        return nn.op.tensor_expr_op(fn, MATMUL_BLOCK, [x, *self.packed_params()])

    def to(self, dtype: str | None = None) -> None:  # pylint: disable=invalid-name
        if dtype is not None:
            self.compute_dtype = check_compute_dtype(dtype)
