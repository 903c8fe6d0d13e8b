"""Lazy, dependency-free reader for Hugging Face safetensors checkpoints.

Headers are parsed here (8-byte little-endian header length, JSON header with
``dtype``/``shape``/``data_offsets`` relative to the data buffer) so corrupt or truncated
files fail with a clear :class:`LlamaAotError`, and so bfloat16 (which numpy lacks) is
read as raw uint16 and widened to float32. Opening a checkpoint reads headers only;
tensor data is read from disk one tensor at a time by :meth:`Checkpoint.read`, so peak
memory while converting stays near the largest tensor.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from runtime_stubs.errors import LlamaAotError
from runtime_stubs.messages import plain, shown, shown_list
from .spec import ModelSpec

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# safetensors dtype code -> (our dtype name, numpy dtype used to read the raw bytes).
# Only the first three can be read() as float32; the rest are named for error messages.
READ_CHUNK = 1 << 22  # values converted at a time by Checkpoint.read (16 MiB of float32)
_FLOAT_DTYPES = {
    "F32": ("float32", np.dtype("<f4")),
    "F16": ("float16", np.dtype("<f2")),
    "BF16": ("bfloat16", np.dtype("<u2")),
}
_OTHER_DTYPES = {
    "F64": ("float64", 8), "I64": ("int64", 8), "U64": ("uint64", 8),
    "I32": ("int32", 4), "U32": ("uint32", 4), "I16": ("int16", 2), "U16": ("uint16", 2),
    "I8": ("int8", 1), "U8": ("uint8", 1), "BOOL": ("bool", 1),
    "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}
# Same cap as the reference implementation: a larger header means a corrupt length field.
_MAX_HEADER = 100_000_000

# Buffers some exporters save alongside the weights; never part of the model.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    code: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int

    @property
    def dtype(self) -> str:
        if self.code in _FLOAT_DTYPES:
            return _FLOAT_DTYPES[self.code][0]
        return _OTHER_DTYPES.get(self.code, (self.code.lower(), 0))[0]


def expected_tensors(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The Hugging Face tensor names and shapes a checkpoint for ``spec`` must hold."""
    H, V, hd = spec.hidden_size, spec.vocab_size, spec.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, H)}
    for i, layer in enumerate(spec.layers):
        nh, nkv, F = layer.num_attention_heads, layer.num_key_value_heads, layer.intermediate_size
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = (nh * hd, H)
        out[p + "self_attn.k_proj.weight"] = (nkv * hd, H)
        out[p + "self_attn.v_proj.weight"] = (nkv * hd, H)
        out[p + "self_attn.o_proj.weight"] = (H, nh * hd)
        out[p + "mlp.gate_proj.weight"] = (F, H)
        out[p + "mlp.up_proj.weight"] = (F, H)
        out[p + "mlp.down_proj.weight"] = (H, F)
        out[p + "input_layernorm.weight"] = (H,)
        out[p + "post_attention_layernorm.weight"] = (H,)
    out["model.norm.weight"] = (H,)
    if not spec.tie_word_embeddings:
        out["lm_head.weight"] = (V, H)
    return out


def read_safetensors_header(path: Path) -> tuple[dict[str, TensorInfo], dict]:
    """Parse one safetensors file's header; returns (tensors, __metadata__).

    Raises LlamaAotError if the header is corrupt or the file is shorter than the header says.
    """
    path = Path(path)
    fix = "re-download or re-export this file"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise LlamaAotError(f"{path} is truncated or corrupt: {size} bytes is too short for a safetensors file; {fix}")
            n = int.from_bytes(head, "little")
            if n > _MAX_HEADER or n > size - 8:
                raise LlamaAotError(
                    f"{path} is corrupt or truncated: header length {n} does not fit a {size}-byte file; {fix}"
                )
            raw = f.read(n)
    except OSError as e:
        raise LlamaAotError(f"cannot read {path}: {e.strerror or e}; check the file exists and is readable") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as e:
        raise LlamaAotError(f"{path} is corrupt: its safetensors header has the key {shown(e.key)} twice; {fix}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LlamaAotError(f"{path} is corrupt: its safetensors header is not valid JSON; {fix}") from None
    except RecursionError:
        raise LlamaAotError(f"{path} is corrupt: its safetensors header is nested too deeply to be a tensor table; {fix}") from None
    if not isinstance(header, dict):
        raise LlamaAotError(f"{path} is corrupt: its safetensors header is not a JSON object; {fix}")

    data_start = 8 + n
    data_size = size - data_start
    meta = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        bad = f"{path} is corrupt: bad header entry for tensor {shown(name)}"
        if not isinstance(entry, dict):
            raise LlamaAotError(f"{bad}; {fix}")
        code, shape, offs = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if (
            not isinstance(code, str)
            or not isinstance(shape, list)
            or not all(_is_nonneg_int(d) for d in shape)
            or not isinstance(offs, list)
            or len(offs) != 2
            or not all(_is_nonneg_int(o) for o in offs)
            or offs[0] > offs[1]
        ):
            raise LlamaAotError(f"{bad} ({shown(entry)}); {fix}")
        begin, end = offs
        if end > data_size:
            raise LlamaAotError(
                f"{path} is truncated or corrupt: tensor {shown(name)} ends at byte {shown(data_start + end)} "
                f"but the file has {size} bytes; {fix}"
            )
        itemsize = _FLOAT_DTYPES[code][1].itemsize if code in _FLOAT_DTYPES else _OTHER_DTYPES.get(code, (None, 0))[1]
        needed = math.prod(shape) * itemsize  # Python ints: no int64 wrap-around for dims like 2**32 x 2**32
        if itemsize and (end - begin) != needed:
            raise LlamaAotError(
                f"{bad}: shape {shown(shape)} of {code} needs {shown(needed)} bytes "
                f"but data_offsets span {end - begin}; {fix}"
            )
        if math.prod(d for d in shape if d) * max(itemsize, 1) >= 2**63:  # e.g. [0, 2**70]: numpy cannot shape it
            raise LlamaAotError(f"{bad}: shape {shown(shape)} is too large for any tensor; {fix}")
        tensors[name] = TensorInfo(path, code, tuple(shape), data_start + begin, end - begin)
    _check_no_overlap(path, tensors, fix)
    return tensors, meta if isinstance(meta, dict) else {}


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return out


def _check_no_overlap(path: Path, tensors: dict[str, TensorInfo], fix: str) -> None:
    """Two tensors sharing bytes means a corrupt header (the reference writer packs them back to back)."""
    spans = sorted((t.start, t.start + t.nbytes, name) for name, t in tensors.items() if t.nbytes)
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise LlamaAotError(
                f"{path} is corrupt: tensors {shown(n0)} (bytes {b0}-{e0}) and {shown(n1)} (bytes {b1}-{e1}) overlap; {fix}"
            )


class Checkpoint:
    """The safetensors weights of one Hugging Face model directory.

    Finds ``model.safetensors.index.json`` (sharded), else ``model.safetensors``, else the one
    ``*.safetensors`` file in the directory. Construction reads headers only; :meth:`read`
    reads one tensor's bytes and returns it as a fresh float32 array.
    """

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise LlamaAotError(f"model directory {self.model_dir} does not exist; pass the folder holding the *.safetensors weights")
        self.files: list[Path] = self._find_files()
        self._tensors: dict[str, TensorInfo] = {}
        self._handles: dict[Path, BinaryIO] = {}
        index = self.model_dir / INDEX_NAME
        if index.is_file():
            self._load_sharded(index)
        else:
            self._tensors, _ = read_safetensors_header(self.files[0])

    # ------------------------------------------------------------------ discovery

    def _find_files(self) -> list[Path]:
        index = self.model_dir / INDEX_NAME
        if index.is_file():
            try:
                data = json.loads(index.read_text(encoding="utf-8"))
                weight_map = data["weight_map"]
                if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                    raise TypeError
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError):
                raise LlamaAotError(f"{index} is corrupt (needs a JSON object with a 'weight_map'); re-download the checkpoint") from None
            bad = next((v for v in weight_map.values() if not _is_file_name(v)), None)
            if bad is not None:
                raise LlamaAotError(
                    f"{index} is corrupt: its weight_map names the shard {shown(bad)}, which is not a file name "
                    "in the checkpoint folder; re-download the checkpoint"
                )
            self._weight_map: dict[str, str] = weight_map
            files = [self.model_dir / f for f in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise LlamaAotError(
                    f"{self.model_dir} is missing {len(missing)} shard(s) listed in {INDEX_NAME}: "
                    f"{shown_list(missing, quote=False)}; download all shards"
                )
            return files
        single = self.model_dir / SINGLE_NAME
        if single.is_file():
            return [single]
        found = sorted(p for p in self.model_dir.glob("*.safetensors") if p.is_file())
        if len(found) == 1:
            return found
        if len(found) > 1:
            raise LlamaAotError(
                f"{self.model_dir} has {len(found)} .safetensors files ({shown_list([p.name for p in found], quote=False)}) "
                f"but no {INDEX_NAME}; add the index or keep only the model's weights file"
            )
        hint = ""
        if any(self.model_dir.glob("*.bin")) or any(self.model_dir.glob("*.pth")):
            hint = " (found PyTorch .bin/.pth weights: re-save them as safetensors)"
        raise LlamaAotError(f"no .safetensors weights in {self.model_dir}{hint}; llama-aot reads safetensors checkpoints")

    def _load_sharded(self, index: Path) -> None:
        by_file: dict[Path, dict[str, TensorInfo]] = {f: read_safetensors_header(f)[0] for f in self.files}
        for name, fname in self._weight_map.items():
            f = self.model_dir / fname
            if name not in by_file[f]:
                raise LlamaAotError(
                    f"{INDEX_NAME} says tensor {shown(name)} is in {plain(fname)} but that shard does not hold it; "
                    "the index and shards are from different downloads - re-download the checkpoint"
                )
            self._tensors[name] = by_file[f][name]
        for f, tensors in by_file.items():
            stray = [n for n in tensors if self._weight_map.get(n) != f.name]
            if stray:
                raise LlamaAotError(
                    f"shard {f.name} holds {len(stray)} tensor(s) {INDEX_NAME} does not map to it "
                    f"({shown_list(stray, quote=False)}); the index and shards are inconsistent - re-download the checkpoint"
                )

    # ------------------------------------------------------------------ API

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, dtype) of a tensor; dtype is "float32" | "float16" | "bfloat16" (or another
        lower-case numpy-style name for non-float tensors)."""
        t = self._get(name)
        return t.shape, t.dtype

    def dtypes(self) -> set[str]:
        """The dtypes of all tensors (e.g. {"bfloat16"})."""
        return {t.dtype for t in self._tensors.values()}

    def read(self, name: str) -> np.ndarray:
        """Read one tensor from disk and return it as a new C-contiguous float32 array."""
        t = self._get(name)
        if t.code not in _FLOAT_DTYPES:
            raise LlamaAotError(
                f"tensor {shown(name)} in {t.file.name} has dtype {plain(t.dtype)}; llama-aot reads float32/float16/bfloat16 weights only"
            )
        raw_dtype = _FLOAT_DTYPES[t.code][1]
        count = t.nbytes // raw_dtype.itemsize
        f = self._handle(t.file)
        f.seek(t.start)
        # converted READ_CHUNK values at a time into the float32 result: peak memory is the result (4 bytes
        # per value) plus one chunk, not the raw tensor and its conversion side by side
        out = np.empty(count, dtype=np.float32)
        for start in range(0, count, READ_CHUNK):
            n = min(READ_CHUNK, count - start)
            raw = np.fromfile(f, dtype=raw_dtype, count=n)
            if raw.size != n:
                raise LlamaAotError(f"{t.file} is truncated: could not read tensor {name!r}; re-download this file")
            if t.code == "BF16":
                out[start : start + n].view(np.uint32)[:] = raw.astype(np.uint32) << 16
            else:
                out[start : start + n] = raw
        return out.reshape(t.shape)

    def validate(self, spec: ModelSpec) -> None:
        """Check names, shapes and dtypes against ``spec``; raise LlamaAotError on any mismatch."""
        expected = expected_tensors(spec)
        present = {n for n in self._tensors if not n.endswith(_IGNORED_SUFFIXES)}
        if spec.tie_word_embeddings:
            present.discard("lm_head.weight")  # tied models may still ship a copy; unused
        missing = [n for n in expected if n not in present]
        if missing:
            hint = ""
            if spec.tie_word_embeddings is False and missing == ["lm_head.weight"]:
                hint = ' (if the model ties lm_head to embed_tokens, set "tie_word_embeddings": true in config.json)'
            raise LlamaAotError(
                f"checkpoint {self.model_dir} is missing {len(missing)} tensor(s) config.json requires: "
                f"{_list(missing)}{hint}; use the config.json that belongs to these weights"
            )
        extra = sorted(present - set(expected), key=_natural_key)
        if extra:
            raise LlamaAotError(
                f"checkpoint {self.model_dir} has {len(extra)} tensor(s) config.json does not describe: "
                f"{shown_list(extra, quote=False)}; use the config.json that belongs to these weights "
                "(pruned models: see docs/pruned-config.md)"
            )
        for name, shape in expected.items():
            got = self._tensors[name].shape
            if got != shape:
                raise LlamaAotError(
                    f"tensor {name} has shape {list(got)} but config.json implies {list(shape)}; "
                    "use the config.json that belongs to these weights (pruned models: set layer_shapes, see docs/pruned-config.md)"
                )
        for name in expected:
            t = self._tensors[name]
            if t.code not in _FLOAT_DTYPES:
                raise LlamaAotError(
                    f"tensor {name} has dtype {plain(t.dtype)}; llama-aot reads float32/float16/bfloat16 weights only "
                    "(already-quantized checkpoints are not supported)"
                )

    def close(self) -> None:
        handles, self._handles = self._handles, {}
        for f in handles.values():
            f.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ internals

    def _get(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise LlamaAotError(f"tensor {shown(name)} is not in checkpoint {self.model_dir}; run validate() against the spec first") from None

    def _handle(self, path: Path) -> BinaryIO:
        f = self._handles.get(path)
        if f is None:
            try:
                f = open(path, "rb")
            except OSError as e:
                raise LlamaAotError(f"cannot open {path}: {e.strerror or e}; check the file exists and is readable") from None
            self._handles[path] = f
        return f


def _is_nonneg_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_file_name(v: str) -> bool:
    """A plain file name inside the checkpoint folder: no directories, no NUL, encodable, at most 255 bytes."""
    if v in ("", ".", "..") or "/" in v or "\\" in v or "\x00" in v:
        return False
    try:
        return len(v.encode(sys.getfilesystemencoding(), "surrogateescape")) <= 255
    except UnicodeEncodeError:
        return False


def _natural_key(name: str):
    return [(0, int(p), "") if p.isascii() and p.isdigit() else (1, 0, p) for p in name.split(".")]


def _list(items: list[str], limit: int = 3) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
