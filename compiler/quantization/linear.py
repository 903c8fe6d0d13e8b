"""``QuantizedLinear``: ``y = x @ deq(W)^T`` with the dequantization fused into the matmul."""

from __future__ import annotations

from tvm.relax.frontend import nn

from .base import QuantScheme
from .kernels import check_compute_dtype, matmul_op, static_last_dim


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
        for suffix, (shape, dtype) in scheme.param_specs(out_features, in_features).items():
            setattr(self, suffix, nn.Parameter(shape, dtype))

    def packed_params(self) -> list[nn.Parameter]:
        """The packed parameters in ``param_specs`` order."""
        names = self.scheme.param_names(self.out_features, self.in_features)
        return [getattr(self, s) for s in names]

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        static_last_dim(x.shape, self.in_features, f"QuantizedLinear({self.scheme.name})")
        return matmul_op(self.scheme, self.out_features, self.in_features, self.compute_dtype, x, self.packed_params(), self.int8_kernel)

    def to(self, dtype: str | None = None) -> None:  # pylint: disable=invalid-name
        if dtype is not None:
            self.compute_dtype = check_compute_dtype(dtype)
