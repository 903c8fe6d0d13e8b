"""Unquantized schemes: ``q0f32`` (weights stored float32) and ``q0f16`` (stored float16).

One stored array, suffix ``weight``, logical shape ``[N, K]`` row-major. ``q0f16`` converts
float32 -> float16 with IEEE round-to-nearest-even (numpy ``astype``); a value whose magnitude
does not fit float16 (> 65504 after rounding) is an error, not a silent Inf.
The run-time op reads the stored element and widens it to float32 inside the matmul /
gather (for ``q0f16`` that widening is the whole "dequantization").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime_stubs.errors import LlamaAotError
from .base import PACK_ROW_CHUNK, ParamSpecs, QuantScheme, check_positive_int

_DTYPE_BYTES = {"float32": 4, "float16": 2}


class NoQuantScheme(QuantScheme):
    """Plain floating-point storage."""

    def __init__(self, name: str, storage_dtype: str) -> None:
        if storage_dtype not in _DTYPE_BYTES:
            raise LlamaAotError(f"{name}: unsupported storage dtype {storage_dtype!r}")
        self.name = name
        self.storage_dtype = storage_dtype

    def param_specs(self, out_features: int, in_features: int) -> ParamSpecs:
        n = check_positive_int(self.name, "out_features", out_features)
        k = check_positive_int(self.name, "in_features", in_features)
        return {"weight": ((n, k), self.storage_dtype)}

    def pack(self, w: np.ndarray) -> dict[str, np.ndarray]:
        w = self._check_2d(w)
        if self.storage_dtype == "float32":
            return {"weight": w.copy()}
        out = np.empty(w.shape, dtype=np.float16)
        for r0 in range(0, w.shape[0], PACK_ROW_CHUNK):
            chunk = w[r0 : r0 + PACK_ROW_CHUNK]
            with np.errstate(over="ignore"):
                out[r0 : r0 + PACK_ROW_CHUNK] = chunk.astype(np.float16)
        if not np.isfinite(out).all():
            raise LlamaAotError(
                f"{self.name}: weight of shape {list(w.shape)} has values beyond the float16 "
                f"range (max |w| = {float(np.abs(w).max()):g} > 65504); use q0f32"
            )
        return {"weight": out}

    def dequantize(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        self._check_packed(packed)
        return packed["weight"].astype(np.float32)

    def _logical_shape(self, packed: dict[str, np.ndarray]) -> tuple[int, int]:
        if "weight" not in packed or np.ndim(packed["weight"]) != 2:
            raise LlamaAotError(f"{self.name}: packed weight needs a 2-D 'weight' array")
        n, k = packed["weight"].shape
        return int(n), int(k)

    def layout(self) -> dict[str, Any]:
        return {
            **self._layout_head("none"),
            "params": {
                "weight": {
                    "dtype": self.storage_dtype,
                    "shape": ["N", "K"],
                    "order": "row-major (C order)",
                    "byte_order": "little-endian",
                    "element": "weight[n, k] holds W[n, k]",
                }
            },
            "quantize": (
                "W"
                if self.storage_dtype == "float32"
                else "float16(W), IEEE round-to-nearest-even; |W| > 65504 is an error"
            ),
            "dequantize": "float32(weight[n, k])",
            "accumulate_dtype": "float32",
        }

    def bytes_per_weight(self, in_features: int | None = None) -> float:
        return float(_DTYPE_BYTES[self.storage_dtype])

    def dequant_expr(self, tensors: dict, row, col):
        return tensors["weight"][row, col].astype("float32")


def make_q0(name: str, **options: Any) -> NoQuantScheme:
    if options:
        raise LlamaAotError(f"{name} takes no options, got {sorted(options)}")
    return NoQuantScheme(name, {"q0f32": "float32", "q0f16": "float16"}[name])
