"""``q4f16k``: q4f16's values stored K-major, the layout an activation-sparse GEMV can skip rows of.

With q4f16's K-packed rows a 64-byte line holds 128 consecutive k of one output channel, so a zero activation
x[k] saves no memory traffic: every line still holds some nonzero k. Stored K-major (row k of W^T contiguous), a
zero x[k] skips row k's bytes (schedules/cpu/sparse_gemv.py).

Same quantization as q4f16 (groups of 32 along K, one float16 scale per group and output channel, group.py), so
the dequantized weights are identical; only the storage differs:

    qweight uint32[K, N / 8]   row k = the N nibbles (q + 8) of W^T[k, :], contiguous, rows one after the other:
                               a thread of the GEMV streams whole rows of its K range, and a skipped row is a run
                               of N / 2 bytes, not lines next to read ones that the hardware prefetchers would
                               fetch anyway (one 64-byte line per row and panel: no time saved at all, Zen 4,
                               from DRAM). Nibble order per tensor:
        "blocked" (N % 128 == 0): in 64-byte block b of a row (channels 128b ..), byte 16c + 4v + u (word
                               16b + 4c + v, byte u) holds channel 128b + 16v + 4c + u in its low nibble and
                               128b + 64 + 16v + 4c + u in its high one, so after the GEMV's per-16-byte-lane byte
                               transposes every dot-product lane is on consecutive channels;
        "sequential" otherwise: nibble n % 8 of word n // 8.
    scale   float16[K / 32, N] scale[g, n] is the scale of W[n, 32g : 32g + 32]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from runtime_stubs.errors import LlamaAotError
from . import base
from .base import ParamSpecs
from .group import Q4F16Scheme

BLOCK = 128  # channels per 64-byte block of a row: the unit of the blocked nibble order


class Q4F16KScheme(Q4F16Scheme):
    """q4f16 with W^T's rows packed (see module docstring)."""

    def nibble_order(self, in_features: int) -> str:
        """Of the packed axis, here N: ``"blocked"`` when it is a multiple of 128, else ``"sequential"``."""
        return "blocked" if in_features % BLOCK == 0 else "sequential"

    def param_specs(self, out_features: int, in_features: int) -> ParamSpecs:
        n, k, g = self._check_shape(out_features, in_features)
        if n % self.PACK:
            raise LlamaAotError(f"{self.name}: out_features {n} is not a multiple of {self.PACK} (8 nibbles per word "
                                f"along N); use q4f16 for this tensor")
        return {"qweight": ((k, n // self.PACK), "uint32"), "scale": ((k // g, n), "float16")}

    def manifest_fields(self, out_features: int, in_features: int) -> dict[str, dict[str, Any]]:
        return {"qweight": {"nibble_order": self.nibble_order(out_features), "major": "K"}}

    def pack(self, w: np.ndarray) -> dict[str, np.ndarray]:
        w = self._check_2d(w)
        n, k, g = self._check_shape(*w.shape)
        (words_shape, _), _ = self.param_specs(n, k).values()
        q = np.empty((n, k), dtype=np.int8)
        scale = np.empty((n, k // g), dtype=np.float16)
        for r0 in range(0, n, base.PACK_ROW_CHUNK):  # bounded temporaries, as q4f16's packer
            rows = slice(r0, r0 + base.PACK_ROW_CHUNK)
            q[rows], scale[rows] = self._quantize_rows(w[rows], g)
        words = np.empty(words_shape, dtype=np.uint32)
        shifts = np.arange(self.PACK, dtype=np.uint32) * np.uint32(4)
        step = max(1, base.PACK_ROW_CHUNK * 4096 // n)  # K rows of W^T per step: as many elements as a row chunk
        for k0 in range(0, k, step):
            nib = np.ascontiguousarray(q[:, k0:k0 + step].T).astype(np.uint32) + np.uint32(8)  # [step, N]
            ks = nib.shape[0]
            if self.nibble_order(n) == "sequential":
                words[k0:k0 + ks] = np.bitwise_or.reduce(nib.reshape(ks, n // self.PACK, self.PACK) << shifts, axis=-1)
            else:  # channel 128b + 64h + 16v + 4c + u -> word 16b + 4c + v, nibble 2u + h
                blocks = nib.reshape(ks, n // BLOCK, 2, 4, 4, 4).transpose(0, 1, 4, 3, 5, 2)  # [k, b, c, v, u, h]
                words[k0:k0 + ks] = np.bitwise_or.reduce(blocks.reshape(ks, n // self.PACK, self.PACK) << shifts,
                                                         axis=-1)
        return {"qweight": words, "scale": np.ascontiguousarray(scale.T)}

    def _logical_shape(self, packed: dict[str, np.ndarray]) -> tuple[int, int]:
        qw = packed.get("qweight")
        if qw is None or np.ndim(qw) != 2:
            raise LlamaAotError(f"{self.name}: packed weight needs a 2-D 'qweight' array")
        return int(qw.shape[1]) * self.PACK, int(qw.shape[0])

    def dequantize(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        n, k = self._check_packed(packed)
        q = self.nibbles(packed).astype(np.int32) - 8
        return q.astype(np.float32) * self._scales_f32(np.ascontiguousarray(packed["scale"].T), self.group_for(k))

    def nibbles(self, packed: dict[str, np.ndarray]) -> np.ndarray:
        """The stored nibbles (q + 8) in logical order, uint32 [N, K]."""
        n, k = self._logical_shape(packed)
        qw = packed["qweight"]
        shifts = np.arange(self.PACK, dtype=np.uint32) * np.uint32(4)
        nib = (qw[..., None] >> shifts) & np.uint32(0xF)
        if self.nibble_order(n) == "sequential":
            nib = nib.reshape(k, n)
        else:  # [k, b, c, v, u, h] -> [k, b, h, v, c, u]
            nib = nib.reshape(k, n // BLOCK, 4, 4, 4, 2).transpose(0, 1, 5, 3, 2, 4).reshape(k, n)
        return np.ascontiguousarray(nib.T)

    def layout(self) -> dict[str, Any]:
        base = super().layout()
        base["params"]["qweight"] = {
            "dtype": "uint32",
            "shape": ["K", "N / 8"],
            "order": "row-major (C order)",
            "byte_order": "little-endian",
            "elements_per_word": 8,
            "nibble_order": "per tensor: 'blocked' when N % 128 == 0, else 'sequential'; recorded in each qweight "
                            "entry of the params manifest",
            "element": {
                "blocked": "n = 128b + 64h + 16v + 4c + u: nibble = (qweight[k, 16b + 4c + v] >> (8u + 4h)) & 0xF",
                "sequential": "nibble = (qweight[k, n // 8] >> (4 * (n % 8))) & 0xF",
            },
            "encoding": "nibble = q + 8 (offset binary)",
        }
        base["params"]["scale"] = {
            "dtype": "float16", "shape": ["K / 32", "N"], "order": "row-major (C order)",
            "byte_order": "little-endian", "element": "scale[g, n] is the scale of W[n, g*32 : (g+1)*32]",
            "group_size": 32,
        }
        base["dequantize"] = "W[n, k] = float32(nibble(k, n) - 8) * float32(scale[k // 32, n])"
        base["major"] = "K"
        return base

    def nibble_expr(self, qweight, row, col):
        """uint32 nibble (0..15) of logical element ``(row = n, col = k)``."""
        from tvm import tirx  # pylint: disable=import-outside-toplevel

        n, k = row, col
        if self.nibble_order(int(qweight.shape[-1]) * self.PACK) == "blocked":
            m = n % BLOCK
            word = qweight[k, (n // BLOCK) * 16 + ((m % 16) // 4) * 4 + (m % 64) // 16]
            shift = (m % 4) * 8 + (m // 64) * 4
        else:
            word = qweight[k, n // self.PACK]
            shift = (n % self.PACK) * 4
        return (word >> shift.astype("uint32")) & tirx.const(0xF, "uint32")

    def dequant_expr(self, tensors: dict, row, col):
        from tvm import tirx  # pylint: disable=import-outside-toplevel

        q = self.nibble_expr(tensors["qweight"], row, col).astype("float32") - tirx.const(8.0, "float32")
        return tensors["scale"][col // self.group_size, row].astype("float32") * q


def make_q4f16k(name: str = "q4f16k", *, group_size: int = 32, **options: Any) -> Q4F16KScheme:
    if options:
        raise LlamaAotError(f"{name}: unknown options {sorted(options)} (known: group_size)")
    if group_size != 32:
        raise LlamaAotError(f"{name}: the group size is fixed at 32 by its storage layout, got {group_size!r}")
    return Q4F16KScheme(name, 32)
