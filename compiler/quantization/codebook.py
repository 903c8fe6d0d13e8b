"""Codebook (weight-sharing) quantization: ``cb4f16``, ``cb3f16`` (per output channel) and ``cb8f16``.

Each weight element stores only the index of a centroid; the centroids come from weighted k-means
(kmeans.py) over the row's values, weighted by their importance (Fisher, from a calibration pass:
compression/fisher.py; uniform without calibration data). Non-uniform levels follow the bell-shaped
weight distribution where uniform ones (q4f16) waste levels on the tails (SqueezeLLM).

cb4f16 / cb3f16: one codebook per row (output channel), 16 / 8 centroids, each stored as an int8
code times the row's float16 scale. The int8 codes are what the LUT kernels look up (a 16-byte
table: one ``vpshufb`` / ``tbl`` turns 16..64 indices into int8 weights); the scale is
``float16(max|centroid| / 127)``, so rounding a centroid to its code moves it by at most
``max|centroid| / 254``, small against the k-means error of 16 levels (their spacing is ~1/8 of the
range). Storage for a row of K elements: K/2 (cb4) or 3K/8 (cb3) index bytes + 16 (8) code bytes +
2 scale bytes: 4.07 bits per weight at K = 4096, 4.56 at K = 256.

    cb4f16: qweight  uint32[N, K / 8]   index nibbles in q4f16's nibble order (planar / sequential,
                                        group.py; recorded per tensor in the params manifest)
            codebook int8[N, 16]        codes
            scale    float16[N, 1]
            W[n, k] = float32(codebook[n, idx(n, k)]) * float32(scale[n, 0])
    cb3f16: qweight  uint32[N, K / 16]  low 2 bits of each index: bits [2 (k % 16), +2) of word k // 16
            qhigh    uint32[N, K / 32]  high bit: bit k % 32 of word k // 32        (K % 32 == 0)
            codebook int8[N, 8], scale float16[N, 1]; idx = low | high << 2
    cb8f16: qweight  uint8[N, K]        indices
            codebook float16[N / R, 256] centroids, one codebook per R consecutive rows

cb8f16's 256 fp16 centroids cost 4096 bits, more than a row of a small model holds; R rows share a
codebook, R the smallest power of two dividing N with R * K >= 8192 (<= 0.5 bit per weight of
codebook; R = 1 from K = 8192), capped by the largest power of two dividing N. (256 int8 codes would
be the int8 grid itself: cb8 with int8 codes is per-channel q8.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime_stubs.errors import LlamaAotError
from .base import PACK_ROW_CHUNK, ParamSpecs, QuantScheme, check_positive_int
from .group import Q4F16Scheme
from .kmeans import Clustering

_CODE_MAX = 127
_FP16_MAX = 65504.0
#: cb8f16: rows per codebook make it cover at least this many weights (4096 bits / 8192 = 0.5 bit each)
CB8_MIN_WEIGHTS_PER_CODEBOOK = 8192
KMEANS_CHUNK_VALUES = 1 << 21


class CodebookScheme(QuantScheme):
    """Shared machinery: importance-weighted k-means per codebook, then the scheme's storage."""

    bits: int
    #: pack() takes an ``importance`` array (compiler/model/weights.py passes the calibration's)
    uses_importance = True

    def __init__(self, name: str) -> None:
        self.name = name
        self.clusters = 1 << self.bits

    def rows_per_codebook(self, out_features: int, in_features: int) -> int:
        return 1

    def _check_shape(self, out_features: int, in_features: int) -> tuple[int, int]:
        n = check_positive_int(self.name, "out_features", out_features)
        k = check_positive_int(self.name, "in_features", in_features)
        if k % 32:
            raise LlamaAotError(
                f"{self.name}: cannot store a weight of shape [{n}, {k}]: in_features {k} is not a "
                f"multiple of 32; use q8f16 with a group size dividing {k}, or q0f16"
            )
        return n, k

    def pack(self, w: np.ndarray, importance: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Float ``[N, K]`` weight (and optional importance ``[N, K]``, >= 0) -> the stored arrays."""
        w = self._check_2d(w)
        n, k = self._check_shape(*w.shape)
        h = _check_importance(self.name, importance, w.shape)
        rows = self.rows_per_codebook(n, k)
        # codebooks clustered at once: about 2M values (k-means keeps ~8 float64 arrays of them, ~130 MB)
        chunk = rows * max(1, min(PACK_ROW_CHUNK, KMEANS_CHUNK_VALUES // k) // rows)
        parts: list[dict[str, np.ndarray]] = []
        for r0 in range(0, n, chunk):
            wr = w[r0 : r0 + chunk]
            books = wr.shape[0] // rows
            hr = None if h is None else h[r0 : r0 + chunk].reshape(books, rows * k)
            clustering = Clustering(wr.reshape(books, rows * k), hr)
            parts.append(self._store(clustering, clustering.fit(self.clusters), k))
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def _codes(self, cent: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centroids float64 [R, C] -> (int8 codes, float16 scale [R, 1], float64 dequantized centroids)."""
        amax = np.abs(cent).max(axis=1, keepdims=True)
        with np.errstate(over="ignore"):
            scale16 = (amax / _CODE_MAX).astype(np.float16)
        if not np.isfinite(scale16).all():
            raise LlamaAotError(
                f"{self.name}: a row has max |w| = {float(amax.max()):g}, beyond what a float16 scale "
                f"times {_CODE_MAX} holds ({_FP16_MAX * _CODE_MAX:g}); use q0f32"
            )
        s = scale16.astype(np.float64)
        codes = np.zeros(cent.shape, dtype=np.float64)
        np.divide(cent, s, out=codes, where=s > 0)
        codes = np.clip(np.rint(codes), -_CODE_MAX, _CODE_MAX)
        return codes.astype(np.int8), scale16, codes * s

    def _store(self, clustering: Clustering, cent: np.ndarray, k: int) -> dict[str, np.ndarray]:
        """The stored arrays of one chunk of codebooks, from its k-means centroids (ascending)."""
        raise NotImplementedError

    def _logical_shape(self, packed: dict[str, np.ndarray]) -> tuple[int, int]:
        if "qweight" not in packed or np.ndim(packed["qweight"]) != 2 or "codebook" not in packed:
            raise LlamaAotError(f"{self.name}: packed weight needs 2-D 'qweight' and 'codebook' arrays")
        n, cols = packed["qweight"].shape
        return int(n), int(cols) * self._per_column

    _per_column = 1

    def _layout_common(self) -> dict[str, Any]:
        return {
            **self._layout_head("codebook"),
            "bits": self.bits,
            "centroids": self.clusters,
            "quantize": (
                f"weighted 1-D k-means per codebook ({self.clusters} centroids; importance = the "
                "calibration pass's squared gradients, or 1 without calibration data), from the "
                "weighted quantiles (j + 0.5) / C, Lloyd iterations with assignment to the nearest "
                "centroid (ties upward) and weighted means, empty clusters keep their centroid"
            ),
            "accumulate_dtype": "float32",
        }


class _PerChannelCodebook(CodebookScheme):
    """cb4f16 / cb3f16: one codebook of int8 codes x a float16 scale per row."""

    def bytes_per_weight(self, in_features: int | None = None) -> float:
        return self.bits / 8 + ((self.clusters + 2) / in_features if in_features else 0.0)

    def _store(self, clustering, cent, k):
        codes, scale, levels = self._codes(cent)
        idx = clustering.assign(levels)  # the stored (rounded, still ascending) levels: the final assignment
        return {**self._pack_indices(idx), "codebook": codes, "scale": scale}

    def dequantize(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        self._check_packed(packed)
        levels = packed["codebook"].astype(np.float32) * packed["scale"].astype(np.float32)
        return np.take_along_axis(levels, self._unpack_indices(packed), axis=1)

    def _codebook_layout(self) -> dict[str, Any]:
        return {
            "codebook": {
                "dtype": "int8", "shape": ["N", self.clusters], "order": "row-major (C order)",
                "element": "codebook[n, j] = code of centroid j of row n, two's complement, [-127, 127]",
            },
            "scale": {
                "dtype": "float16", "shape": ["N", 1], "byte_order": "little-endian",
                "element": "scale[n, 0] = float16(max_j |centroid[n, j]| / 127), round-to-nearest-even; "
                "code = clip(rint(centroid / scale), -127, 127) (0 where scale == 0); indices are then "
                "reassigned to the nearest stored level code * scale",
            },
        }

    def _lut_expr(self, tensors: dict, row, idx):
        return tensors["codebook"][row, idx].astype("float32") * tensors["scale"][row, 0].astype("float32")


class Cb4F16Scheme(_PerChannelCodebook):
    bits = 4
    _per_column = Q4F16Scheme.PACK
    index_nibbles = Q4F16Scheme("q4f16", 32)  # the index nibbles use q4f16's packing

    def param_specs(self, out_features: int, in_features: int) -> ParamSpecs:
        n, k = self._check_shape(out_features, in_features)
        return {"qweight": ((n, k // 8), "uint32"), "codebook": ((n, 16), "int8"), "scale": ((n, 1), "float16")}

    def nibble_order(self, in_features: int) -> str:
        """The index nibbles' order, q4f16's rule (``Q4F16Scheme.nibble_order``)."""
        return self.index_nibbles.nibble_order(in_features)

    def manifest_fields(self, out_features: int, in_features: int) -> dict[str, dict[str, Any]]:
        return {"qweight": {"nibble_order": self.nibble_order(in_features)}}

    def _pack_indices(self, idx):
        return {"qweight": self.index_nibbles.pack_nibbles(idx)}

    def _unpack_indices(self, packed):
        return self.index_nibbles.unpack_nibbles(packed["qweight"]).astype(np.int64)

    def layout(self) -> dict[str, Any]:
        return {
            **self._layout_common(),
            "params": {
                "qweight": {
                    "dtype": "uint32", "shape": ["N", "K / 8"], "byte_order": "little-endian",
                    "element": "index nibble of W[n, k], packed exactly like q4f16's qweight (its "
                    "'nibble_order', planar when K % 128 == 0 else sequential, recorded per tensor in "
                    "the params manifest), without the +8 offset: the nibble is the index 0..15",
                },
                **self._codebook_layout(),
            },
            "dequantize": "W[n, k] = float32(codebook[n, nibble(n, k)]) * float32(scale[n, 0])",
        }

    def nibble_expr(self, qweight, row, col):
        """uint32 index nibble of ``(row, col)``: ``Q4F16Scheme.nibble_expr`` (the int8 kernels read both alike)."""
        return self.index_nibbles.nibble_expr(qweight, row, col)

    def dequant_expr(self, tensors: dict, row, col):
        return self._lut_expr(tensors, row, self.nibble_expr(tensors["qweight"], row, col).astype("int32"))


class Cb3F16Scheme(_PerChannelCodebook):
    bits = 3
    _per_column = 16

    def param_specs(self, out_features: int, in_features: int) -> ParamSpecs:
        n, k = self._check_shape(out_features, in_features)
        return {
            "qweight": ((n, k // 16), "uint32"), "qhigh": ((n, k // 32), "uint32"),
            "codebook": ((n, 8), "int8"), "scale": ((n, 1), "float16"),
        }

    def _pack_indices(self, idx):
        r, k = idx.shape
        u = idx.astype(np.uint32)
        lo = (u & 3).reshape(r, k // 16, 16) << (np.arange(16, dtype=np.uint32) * 2)
        hi = (u >> 2).reshape(r, k // 32, 32) << np.arange(32, dtype=np.uint32)
        return {"qweight": np.bitwise_or.reduce(lo, axis=-1), "qhigh": np.bitwise_or.reduce(hi, axis=-1)}

    def _unpack_indices(self, packed):
        lo, hi = packed["qweight"], packed["qhigh"]
        r = lo.shape[0]
        low = (lo[:, :, None] >> (np.arange(16, dtype=np.uint32) * 2)) & 3
        high = (hi[:, :, None] >> np.arange(32, dtype=np.uint32)) & 1
        return (low.reshape(r, -1) | (high.reshape(r, -1) << 2)).astype(np.int64)

    def layout(self) -> dict[str, Any]:
        return {
            **self._layout_common(),
            "params": {
                "qweight": {
                    "dtype": "uint32", "shape": ["N", "K / 16"], "byte_order": "little-endian",
                    "element": "low 2 bits of the index of W[n, k]: (qweight[n, k // 16] >> (2 * (k % 16))) & 3",
                },
                "qhigh": {
                    "dtype": "uint32", "shape": ["N", "K / 32"], "byte_order": "little-endian",
                    "element": "high bit of the index: (qhigh[n, k // 32] >> (k % 32)) & 1",
                },
                **self._codebook_layout(),
            },
            "dequantize": "idx = low | high << 2; W[n, k] = float32(codebook[n, idx]) * float32(scale[n, 0])",
        }

    def dequant_expr(self, tensors: dict, row, col):
        from tvm import tirx  # pylint: disable=import-outside-toplevel

        u32 = "uint32"
        lo = (tensors["qweight"][row, col // 16] >> ((col % 16).astype(u32) * tirx.const(2, u32))) & tirx.const(3, u32)
        hi = (tensors["qhigh"][row, col // 32] >> (col % 32).astype(u32)) & tirx.const(1, u32)
        idx = lo | (hi << tirx.const(2, u32))
        return self._lut_expr(tensors, row, idx.astype("int32"))


class Cb8F16Scheme(CodebookScheme):
    bits = 8

    def rows_per_codebook(self, out_features: int, in_features: int) -> int:
        rows = 1
        while rows * in_features < CB8_MIN_WEIGHTS_PER_CODEBOOK and out_features % (2 * rows) == 0:
            rows *= 2
        return rows

    def param_specs(self, out_features: int, in_features: int) -> ParamSpecs:
        n, k = self._check_shape(out_features, in_features)
        r = self.rows_per_codebook(n, k)
        return {"qweight": ((n, k), "uint8"), "codebook": ((n // r, 256), "float16")}

    def manifest_fields(self, out_features: int, in_features: int) -> dict[str, dict[str, Any]]:
        return {"codebook": {"rows_per_codebook": self.rows_per_codebook(out_features, in_features)}}

    def bytes_per_weight(self, in_features: int | None = None) -> float:
        if not in_features:
            return 1.0
        return 1.0 + 512.0 / max(in_features, CB8_MIN_WEIGHTS_PER_CODEBOOK)

    def _store(self, clustering, cent, k):
        with np.errstate(over="ignore"):
            levels16 = cent.astype(np.float16)
        if not np.isfinite(levels16).all():
            raise LlamaAotError(f"{self.name}: a centroid beyond the float16 range ({_FP16_MAX:g}); use q0f32")
        idx = clustering.assign(levels16.astype(np.float64))
        return {"qweight": idx.reshape(-1, k).astype(np.uint8), "codebook": levels16}

    def dequantize(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        n, k = self._check_packed(packed)
        r = self.rows_per_codebook(n, k)
        book = np.repeat(packed["codebook"].astype(np.float32), r, axis=0)
        return np.take_along_axis(book, packed["qweight"].astype(np.int64), axis=1)

    def layout(self) -> dict[str, Any]:
        return {
            **self._layout_common(),
            "params": {
                "qweight": {"dtype": "uint8", "shape": ["N", "K"], "order": "row-major (C order)",
                            "element": "index of W[n, k] in its codebook"},
                "codebook": {
                    "dtype": "float16", "shape": ["N / R", 256], "byte_order": "little-endian",
                    "element": "codebook[n // R, j] = centroid j shared by rows n // R * R .. + R - 1",
                    "rows_per_codebook": (
                        f"R = the smallest power of two with R * K >= {CB8_MIN_WEIGHTS_PER_CODEBOOK} "
                        "(capped by the largest power of two dividing N); recorded per tensor as "
                        "'rows_per_codebook' in the codebook entry of the params manifest"
                    ),
                },
            },
            "dequantize": "W[n, k] = float32(codebook[n // R, qweight[n, k]])",
        }

    def dequant_expr(self, tensors: dict, row, col):
        qweight, book = tensors["qweight"], tensors["codebook"]
        r = int(qweight.shape[0]) // int(book.shape[0])
        idx = qweight[row, col].astype("int32")
        return book[row // r if r > 1 else row, idx].astype("float32")


def _check_importance(name: str, importance, shape) -> np.ndarray | None:
    """None, or a float32 [N, K] importance > 0 everywhere (a floor of 1e-6 x its mean keeps elements
    whose gradient vanished on the calibration data in the fit)."""
    if importance is None:
        return None
    h = np.asarray(importance, dtype=np.float32)
    if h.shape != tuple(shape):
        raise LlamaAotError(f"{name}: importance of shape {list(h.shape)} for a weight of shape {list(shape)}")
    if not np.isfinite(h).all() or (h < 0).any():
        raise LlamaAotError(f"{name}: the calibration importance has negative, NaN or Inf values; "
                            "recompute it (compression/fisher.py)")
    mean = float(h.mean())
    return h + np.float32(1e-6 * mean) if mean > 0 else None


def make_codebook(name: str, **options: Any) -> CodebookScheme:
    if options:
        raise LlamaAotError(f"{name}: takes no options, got {sorted(options)}")
    return {"cb4f16": Cb4F16Scheme, "cb3f16": Cb3F16Scheme, "cb8f16": Cb8F16Scheme}[name](name)
