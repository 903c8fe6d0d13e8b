"""The abstract quantization scheme.

A scheme says, for one weight matrix of logical shape ``[N, K]`` (``N`` = out features,
``K`` = in features; the Hugging Face ``nn.Linear`` layout, also the ``[V, H]`` embedding
table layout):

* which packed arrays store it (:meth:`QuantScheme.param_specs`),
* how float weights become those arrays (:meth:`QuantScheme.pack`, numpy only),
* the numpy reference of the inverse (:meth:`QuantScheme.dequantize`),
* the TE expression giving the float32 value of element ``(n, k)`` read straight from the
  packed arrays (:meth:`QuantScheme.dequant_expr`), which ``QuantizedLinear`` and
  ``QuantizedEmbedding`` inline into their matmul / gather so that no dequantized copy of a
  weight ever exists at run time,
* its exact bit layout (:meth:`QuantScheme.layout`, JSON, recorded in ``llama-aot.json``;
  shape-dependent facts per tensor in the params manifest, :meth:`QuantScheme.manifest_fields`).

Packing and dequantization never import TVM; only :meth:`dequant_expr` does.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from runtime_stubs.errors import LlamaAotError

ParamSpecs = dict[str, tuple[tuple[int, ...], str]]

#: Rows handled per step by the packers, to bound temporary memory on big tables
#: (a 128256 x 4096 embedding would otherwise need several GiB of float32 temporaries).
PACK_ROW_CHUNK = 4096


class QuantScheme(abc.ABC):
    """How one ``[N, K]`` weight is stored, unpacked and consumed. Subclasses are immutable."""

    #: Registry name, e.g. ``"q4f16"``.
    name: str

    # ------------------------------------------------------------------ contract
    @abc.abstractmethod
    def param_specs(self, out_features: int, in_features: int) -> ParamSpecs:
        """``suffix -> (shape, dtype)`` of the stored arrays, in argument order.

        Raises :class:`LlamaAotError` when the shape cannot be stored by this scheme
        (e.g. ``in_features`` not divisible by the group size).
        """

    @abc.abstractmethod
    def pack(self, w: np.ndarray) -> dict[str, np.ndarray]:
        """Float ``[N, K]`` weight -> arrays matching :meth:`param_specs` (same keys, order)."""

    @abc.abstractmethod
    def dequantize(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        """Numpy reference dequantization: packed arrays -> float32 ``[N, K]``."""

    @abc.abstractmethod
    def layout(self) -> dict[str, Any]:
        """JSON-serializable exact description of the storage (see docs/quantization.md)."""

    @abc.abstractmethod
    def bytes_per_weight(self, in_features: int | None = None) -> float:
        """Stored bytes per logical weight element, scales included.

        ``in_features`` only matters for per-channel schemes (one scale per row); without it
        their scale overhead is left out.
        """

    def manifest_fields(self, out_features: int, in_features: int) -> dict[str, dict[str, Any]]:
        """Per stored array, extra fields for its params-manifest entry (``suffix -> fields``).

        Used for layout facts that depend on the tensor's shape (q4f16's nibble order), so a
        reader of the package never has to re-derive them.
        """
        return {}

    # ------------------------------------------------------------------ TE side
    @abc.abstractmethod
    def dequant_expr(self, tensors: dict, row, col):
        """float32 ``tirx.PrimExpr`` of logical element ``(row, col)``.

        ``tensors`` maps the :meth:`param_specs` suffixes to ``te.Tensor`` objects; ``row``
        and ``col`` are index expressions (same integer dtype).
        """

    # ------------------------------------------------------------------ helpers
    def _layout_head(self, family: str) -> dict[str, Any]:
        """The first keys of every :meth:`layout`: the scheme, its family and the logical axes."""
        return {
            "scheme": self.name,
            "family": family,
            "logical_shape": ["N", "K"],
            "logical_axes": {"N": "output features (rows)", "K": "input features (columns)"},
        }

    def param_names(self, out_features: int, in_features: int) -> tuple[str, ...]:
        return tuple(self.param_specs(out_features, in_features))

    def __repr__(self) -> str:
        return f"<QuantScheme {self.name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuantScheme) and self.layout() == other.layout()

    def __hash__(self) -> int:
        return hash(self.name)

    def _check_2d(self, w: np.ndarray) -> np.ndarray:
        """Validate a float weight and return it as C-contiguous float32."""
        w = np.asarray(w)
        if w.ndim != 2:
            raise LlamaAotError(
                f"{self.name}: expected a 2-D weight [out_features, in_features], "
                f"got shape {list(w.shape)}"
            )
        if not np.issubdtype(w.dtype, np.floating):
            raise LlamaAotError(
                f"{self.name}: expected a floating-point weight, got dtype {w.dtype} "
                f"for shape {list(w.shape)}"
            )
        w = np.ascontiguousarray(w, dtype=np.float32)
        if not np.isfinite(w).all():
            raise LlamaAotError(
                f"{self.name}: weight of shape {list(w.shape)} contains NaN or Inf values"
            )
        return w

    def _check_packed(self, packed: dict[str, np.ndarray]) -> tuple[int, int]:
        """Check the keys/dtypes of ``packed`` and return the logical ``(N, K)``."""
        n, k = self._logical_shape(packed)
        specs = self.param_specs(n, k)
        for key, (shape, dtype) in specs.items():
            if key not in packed:
                raise LlamaAotError(
                    f"{self.name}: packed weight is missing '{key}' (has {sorted(packed)})"
                )
            arr = packed[key]
            if tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
                raise LlamaAotError(
                    f"{self.name}: packed '{key}' is {arr.dtype}{list(arr.shape)}, "
                    f"expected {dtype}{list(shape)}"
                )
        return n, k

    @abc.abstractmethod
    def _logical_shape(self, packed: dict[str, np.ndarray]) -> tuple[int, int]:
        """The logical ``(N, K)`` of a packed weight."""


def check_positive_int(scheme: str, what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise LlamaAotError(f"{scheme}: {what} must be a positive integer, got {value!r}")
    return int(value)
