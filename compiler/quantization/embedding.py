"""``QuantizedEmbedding``: embedding gather (and tied lm_head) over a packed table."""

from __future__ import annotations

from tvm.relax.frontend import nn

from runtime_stubs.errors import LlamaAotError
from .base import QuantScheme
from .kernels import TAKE_BLOCK, check_compute_dtype, dequant_take_te, matmul_op, static_last_dim


class QuantizedEmbedding(nn.Module):
    """Embedding table of logical shape ``[vocab_size, hidden_size]`` packed along hidden.

    Parameters are named like ``QuantizedLinear``'s (``embed_tokens.weight`` for q0*,
    ``embed_tokens.qweight`` + ``embed_tokens.scale`` otherwise); the table is packed exactly
    like a linear weight with ``out_features = vocab_size`` and ``in_features = hidden_size``.

    * ``forward(ids)``: int32 ids ``[...]`` -> ``[..., hidden]`` in ``compute_dtype``, one
      gather compute with the dequantization inlined. Ids must lie in ``[0, vocab_size)``.
    * ``lm_head_forward(x)``: tied lm_head, ``x [..., hidden]`` -> logits ``[..., vocab]``
      float32, the same fused dequant matmul as ``QuantizedLinear`` over this table.
    """

    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        scheme: QuantScheme,
        compute_dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.vocab_size = int(vocab_size)
        self.hidden_size = int(hidden_size)
        self.scheme = scheme
        self.compute_dtype = check_compute_dtype(compute_dtype)
        #: the tied lm_head's int8-activation kernel factory (see ``QuantizedLinear.int8_kernel``)
        self.int8_kernel = None
        for suffix, (shape, dtype) in scheme.param_specs(vocab_size, hidden_size).items():
            setattr(self, suffix, nn.Parameter(shape, dtype))

    def packed_params(self) -> list[nn.Parameter]:
        """The packed parameters in ``param_specs`` order."""
        names = self.scheme.param_names(self.vocab_size, self.hidden_size)
        return [getattr(self, s) for s in names]

    def forward(self, ids: nn.Tensor) -> nn.Tensor:
        if ids.dtype not in ("int32", "int64"):
            raise LlamaAotError(
                f"QuantizedEmbedding: token ids must be int32 or int64, got {ids.dtype}"
            )
        fn = dequant_take_te(self.scheme, self.vocab_size, self.hidden_size, self.compute_dtype)
        return nn.op.tensor_expr_op(fn, TAKE_BLOCK, [ids, *self.packed_params()])

    def lm_head_forward(self, x: nn.Tensor) -> nn.Tensor:
        what = f"QuantizedEmbedding({self.scheme.name}).lm_head_forward"
        static_last_dim(x.shape, self.hidden_size, what)
        return matmul_op(self.scheme, self.vocab_size, self.hidden_size, "float32", x, self.packed_params(), self.int8_kernel)

    def to(self, dtype: str | None = None) -> None:  # pylint: disable=invalid-name
        if dtype is not None:
            self.compute_dtype = check_compute_dtype(dtype)
