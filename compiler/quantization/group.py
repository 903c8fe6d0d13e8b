"""Symmetric group quantization: ``q8f16`` (int8) and ``q4f16`` (int4, 8 nibbles per uint32).

For a weight ``W`` of logical shape ``[N, K]`` (N = out features, K = in features), each row
is cut along K into groups of ``G`` consecutive elements; group ``g`` of row ``n`` covers
``k in [g*G, (g+1)*G)``. Per group (see docs/quantization.md for the normative text):

    amax  = max |W[n, k]| over the group                      (float32)
    scale = float16(amax / QMAX)      QMAX = 127 (q8), 7 (q4); IEEE round-to-nearest-even
    q     = 0                                       if scale == 0 (all-zero group; no NaN)
            clip(rint(W / float32(scale)), -QMAX, QMAX)  otherwise (float32 division,
                                                    round half to even)
    W'    = q * float32(scale)                      (exact in float32)

``K % G != 0`` is an error (no padding): every Llama 3 projection and the embedding have K a
multiple of 32. ``q8f16`` takes ``group_size`` (default 32; ``-1`` = one group per row, i.e.
per-channel with ``G = K`` of each tensor). ``q4f16`` has ``G = 32`` fixed.

Storage:
    q8f16: qweight int8[N, K]         qweight[n, k] = q
    q4f16: qweight uint32[N, K // 8]  8 nibbles per word, each holds q + 8 (1..15; 0 unused);
                                      which nibble holds k depends on K (nibble order, per tensor):
           planar     (K % 128 == 0): nibble (k % 128) // 16 of word (k // 128) * 16 + k % 16
           sequential (otherwise):    nibble k % 8 of word k // 8
                                      (nibble j = bits [4j, 4j+4) of the word)
    both:  scale float16[N, K // G]

The planar order makes 16 consecutive k one contiguous 64-byte load + one shift + one mask in the
CPU GEMV (no word-replicating permute): ~20% more weight bytes per core (schedules/README.md).
Widths that are not a multiple of 128 (pruned FFNs, e.g. 192) keep the sequential order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime_stubs.errors import LlamaAotError
from .base import PACK_ROW_CHUNK, ParamSpecs, QuantScheme, check_positive_int

_FP16_MAX = 65504.0


class GroupQuantScheme(QuantScheme):
    """Shared machinery of the symmetric group-quantized schemes."""

    bits: int
    qmax: int

    def __init__(self, name: str, group_size: int) -> None:
        self.name = name
        #: positive, or -1 for per-channel (G = in_features of each tensor)
        self.group_size = group_size

    # ---------------------------------------------------------------- shapes
    def group_for(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    def _check_shape(self, out_features: int, in_features: int) -> tuple[int, int, int]:
        n = check_positive_int(self.name, "out_features", out_features)
        k = check_positive_int(self.name, "in_features", in_features)
        g = self.group_for(k)
        if k % g != 0:
            raise LlamaAotError(
                f"{self.name}: cannot quantize a weight of shape [{n}, {k}] "
                f"([out_features, in_features]): in_features {k} is not a multiple of the "
                f"group size {g}. Use a scheme with a compatible group size "
                f"(e.g. q8f16 with group_size dividing {k}) or q0f16/q0f32 for this tensor."
            )
        return n, k, g

    def _quantize_rows(self, w: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 [r, K] -> (q int8 [r, K], scale float16 [r, K//g])."""
        r, k = w.shape
        grouped = w.reshape(r, k // g, g)
        amax = np.abs(grouped).max(axis=-1)
        with np.errstate(over="ignore"):
            scale16 = (amax / np.float32(self.qmax)).astype(np.float16)
        if not np.isfinite(scale16).all():
            raise LlamaAotError(
                f"{self.name}: a group of the weight has max |w| = {float(amax.max()):g}, "
                f"whose scale does not fit float16 (max {_FP16_MAX * self.qmax:g}); use q0f32"
            )
        s = scale16.astype(np.float32)[..., None]
        q = np.zeros_like(grouped)
        np.divide(grouped, s, out=q, where=s > 0)
        q = np.clip(np.rint(q), -self.qmax, self.qmax).astype(np.int8)
        return q.reshape(r, k), scale16

    def _scales_f32(self, scale: np.ndarray, g: int) -> np.ndarray:
        return np.repeat(scale.astype(np.float32), g, axis=1)

    # ---------------------------------------------------------------- common API
    def bytes_per_weight(self, in_features: int | None = None) -> float:
        if self.group_size == -1:
            return self.bits / 8 + (2.0 / in_features if in_features else 0.0)
        return self.bits / 8 + 2.0 / self.group_size

    def _scale_layout(self) -> dict[str, Any]:
        g = "K" if self.group_size == -1 else self.group_size
        return {
            "dtype": "float16",
            "shape": ["N", "K / G"],
            "order": "row-major (C order)",
            "byte_order": "little-endian",
            "element": "scale[n, g] is the scale of W[n, g*G : (g+1)*G]",
            "group_size": g,
        }

    def _quant_text(self) -> str:
        return (
            f"amax = max|W| over the group (float32); scale = float16(amax / {self.qmax}) "
            f"(round-to-nearest-even, must be finite); q = 0 where scale == 0, else "
            f"clip(rint(W / float32(scale)), -{self.qmax}, {self.qmax}) with float32 division "
            f"and round-half-to-even"
        )


class Q8F16Scheme(GroupQuantScheme):
    bits = 8
    qmax = 127

    def param_specs(self, out_features: int, in_features: int) -> ParamSpecs:
        n, k, g = self._check_shape(out_features, in_features)
        return {"qweight": ((n, k), "int8"), "scale": ((n, k // g), "float16")}

    def pack(self, w: np.ndarray) -> dict[str, np.ndarray]:
        w = self._check_2d(w)
        n, k, g = self._check_shape(*w.shape)
        qweight = np.empty((n, k), dtype=np.int8)
        scale = np.empty((n, k // g), dtype=np.float16)
        for r0 in range(0, n, PACK_ROW_CHUNK):
            rows = slice(r0, r0 + PACK_ROW_CHUNK)
            qweight[rows], scale[rows] = self._quantize_rows(w[rows], g)
        return {"qweight": qweight, "scale": scale}

    def _logical_shape(self, packed: dict[str, np.ndarray]) -> tuple[int, int]:
        if "qweight" not in packed or np.ndim(packed["qweight"]) != 2:
            raise LlamaAotError(f"{self.name}: packed weight needs a 2-D 'qweight' array")
        n, k = packed["qweight"].shape
        return int(n), int(k)

    def dequantize(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        n, k = self._check_packed(packed)
        g = self.group_for(k)
        return packed["qweight"].astype(np.float32) * self._scales_f32(packed["scale"], g)

    def layout(self) -> dict[str, Any]:
        return {
            **self._layout_head("group_symmetric"),
            "bits": 8,
            "group_axis": "K",
            "group_size": "K" if self.group_size == -1 else self.group_size,
            "params": {
                "qweight": {
                    "dtype": "int8",
                    "shape": ["N", "K"],
                    "order": "row-major (C order)",
                    "element": "qweight[n, k] = q[n, k], two's complement, range [-127, 127]",
                },
                "scale": self._scale_layout(),
            },
            "quantize": self._quant_text(),
            "dequantize": "W[n, k] = float32(qweight[n, k]) * float32(scale[n, k // G])",
            "accumulate_dtype": "float32",
        }

    def dequant_expr(self, tensors: dict, row, col):
        qweight, scale = tensors["qweight"], tensors["scale"]
        if self.group_size == -1:
            s = scale[row, 0]
        else:
            s = scale[row, col // self.group_size]
        return qweight[row, col].astype("float32") * s.astype("float32")


class Q4F16Scheme(GroupQuantScheme):
    bits = 4
    qmax = 7
    #: nibbles per uint32 word
    PACK = 8
    #: k-values per planar block (16 words x 8 nibbles)
    PLANAR_BLOCK = 128

    def nibble_order(self, in_features: int) -> str:
        """``"planar"`` when K is a multiple of 128, else ``"sequential"``: the one place the rule lives."""
        return "planar" if in_features % self.PLANAR_BLOCK == 0 else "sequential"

    def param_specs(self, out_features: int, in_features: int) -> ParamSpecs:
        n, k, g = self._check_shape(out_features, in_features)
        return {"qweight": ((n, k // self.PACK), "uint32"), "scale": ((n, k // g), "float16")}

    def manifest_fields(self, out_features: int, in_features: int) -> dict[str, dict[str, Any]]:
        return {"qweight": {"nibble_order": self.nibble_order(in_features)}}

    def _to_words(self, nib: np.ndarray) -> np.ndarray:
        """Logical nibbles [r, K] -> [r, K // 8, 8]: word w, nibble position j (bits 4j..4j+3)."""
        r, k = nib.shape
        if self.nibble_order(k) == "sequential":
            return nib.reshape(r, k // self.PACK, self.PACK)
        planes = self.PLANAR_BLOCK // self.PACK  # 16 words per block; k = 128b + 16j + i
        blocks = nib.reshape(r, k // self.PLANAR_BLOCK, self.PACK, planes)  # [r, b, j, i]
        return blocks.swapaxes(2, 3).reshape(r, k // self.PACK, self.PACK)  # word 16b + i, nibble j

    def _from_words(self, nib: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`_to_words`: [r, K // 8, 8] -> logical [r, K]."""
        r, words, _ = nib.shape
        k = words * self.PACK
        if self.nibble_order(k) == "sequential":
            return nib.reshape(r, k)
        planes = self.PLANAR_BLOCK // self.PACK
        blocks = nib.reshape(r, k // self.PLANAR_BLOCK, planes, self.PACK)  # [r, b, i, j]
        return blocks.swapaxes(2, 3).reshape(r, k)

    def pack(self, w: np.ndarray) -> dict[str, np.ndarray]:
        w = self._check_2d(w)
        n, k, g = self._check_shape(*w.shape)
        qweight = np.empty((n, k // self.PACK), dtype=np.uint32)
        scale = np.empty((n, k // g), dtype=np.float16)
        for r0 in range(0, n, PACK_ROW_CHUNK):
            rows = slice(r0, r0 + PACK_ROW_CHUNK)
            q, scale[rows] = self._quantize_rows(w[rows], g)
            qweight[rows] = self.pack_nibbles(q.astype(np.int32) + 8)
        return {"qweight": qweight, "scale": scale}

    def pack_nibbles(self, nib: np.ndarray) -> np.ndarray:
        """Logical nibbles [r, K] (0..15) -> uint32 words [r, K // 8] in K's nibble order."""
        shifts = np.arange(self.PACK, dtype=np.uint32) * np.uint32(4)
        return np.bitwise_or.reduce(self._to_words(nib.astype(np.uint32)) << shifts, axis=-1)

    def unpack_nibbles(self, words: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`pack_nibbles`: uint32 [r, K // 8] -> logical nibbles int32 [r, K]."""
        shifts = np.arange(self.PACK, dtype=np.uint32) * np.uint32(4)
        return self._from_words((words[:, :, None] >> shifts) & np.uint32(0xF)).astype(np.int32)

    def _logical_shape(self, packed: dict[str, np.ndarray]) -> tuple[int, int]:
        if "qweight" not in packed or np.ndim(packed["qweight"]) != 2:
            raise LlamaAotError(f"{self.name}: packed weight needs a 2-D 'qweight' array")
        n, words = packed["qweight"].shape
        return int(n), int(words) * self.PACK

    def dequantize(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        n, k = self._check_packed(packed)
        q = self.unpack_nibbles(packed["qweight"]) - 8
        return q.astype(np.float32) * self._scales_f32(packed["scale"], self.group_for(k))

    def layout(self) -> dict[str, Any]:
        return {
            **self._layout_head("group_symmetric"),
            "bits": 4,
            "group_axis": "K",
            "group_size": self.group_size,
            "params": {
                "qweight": {
                    "dtype": "uint32",
                    "shape": ["N", "K / 8"],
                    "order": "row-major (C order)",
                    "byte_order": "little-endian",
                    "elements_per_word": 8,
                    "nibble_order": (
                        "per tensor: 'planar' when K % 128 == 0, else 'sequential'; also recorded "
                        "as 'nibble_order' in each qweight entry of the params manifest"
                    ),
                    "element": {
                        "planar": (
                            "nibble = (qweight[n, (k // 128) * 16 + k % 16] >> (4 * ((k % 128) // 16))) "
                            "& 0xF; in each block of 128 k-values (16 words), value 128b + 16j + i is "
                            "nibble j of word 16b + i"
                        ),
                        "sequential": (
                            "nibble = (qweight[n, k // 8] >> (4 * (k % 8))) & 0xF; element k % 8 == 0 "
                            "is the least significant nibble, so in the little-endian byte stream "
                            "byte k // 2 of row n holds element k in its low nibble when k is even, "
                            "high nibble when k is odd"
                        ),
                    },
                    "encoding": "nibble = q + 8 (offset binary); packer emits q in [-7, 7] "
                    "(nibbles 1..15); decoders accept 0..15 (q = -8)",
                },
                "scale": self._scale_layout(),
            },
            "quantize": self._quant_text(),
            "dequantize": "W[n, k] = float32(nibble - 8) * float32(scale[n, k // 32])",
            "accumulate_dtype": "float32",
        }

    def nibble_expr(self, qweight, row, col):
        """uint32 nibble (0..15) of logical element ``(row, col)`` of the packed ``qweight`` tensor, in
        its nibble order (also the index layout of cb4f16, codebook.py)."""
        from tvm import tirx  # pylint: disable=import-outside-toplevel

        if self.nibble_order(int(qweight.shape[-1]) * self.PACK) == "planar":
            # the index form schedules/cpu/analysis.py:pack_layout recognizes as planar
            planes = self.PLANAR_BLOCK // self.PACK
            word = qweight[row, (col // self.PLANAR_BLOCK) * planes + col % planes]
            pos = (col % self.PLANAR_BLOCK) // planes
        else:
            word = qweight[row, col // self.PACK]
            pos = col % self.PACK
        shift = pos.astype("uint32") * tirx.const(4, "uint32")
        return (word >> shift) & tirx.const(0xF, "uint32")

    def dequant_expr(self, tensors: dict, row, col):
        from tvm import tirx  # pylint: disable=import-outside-toplevel

        qweight, scale = tensors["qweight"], tensors["scale"]
        planar = self.nibble_order(int(qweight.shape[-1]) * self.PACK) == "planar"
        nibble = self.nibble_expr(qweight, row, col)
        q = nibble.astype("float32") - tirx.const(8.0, "float32")
        s = scale[row, col // self.group_size].astype("float32")
        # Planar: scale first, so the block reads scale before qweight and dlight's GPU GEMV takes the scale
        # (index k // 32, one split of k) as its dominant read; the planar word index splits k twice, which
        # dl.gpu.GEMV's normalize cannot handle ("The loop no longer exists"). Same value either way.
        return s * q if planar else q * s


def make_q8f16(name: str = "q8f16", *, group_size: int = 32, **options: Any) -> Q8F16Scheme:
    if options:
        raise LlamaAotError(f"{name}: unknown options {sorted(options)} (known: group_size)")
    if group_size != -1:
        group_size = check_positive_int(name, "group_size (or -1 for per-channel)", group_size)
    return Q8F16Scheme(name, group_size)


def make_q4f16(name: str = "q4f16", *, group_size: int = 32, **options: Any) -> Q4F16Scheme:
    if options:
        raise LlamaAotError(f"{name}: unknown options {sorted(options)} (known: group_size)")
    if group_size != 32:
        raise LlamaAotError(
            f"{name}: the group size is fixed at 32 by its storage layout, got {group_size!r}"
        )
    return Q4F16Scheme(name, 32)
