"""The output package OUT/: library, weight shards + manifest, llama-aot.json, tokenizer.

Layout:
  OUT/llama-aot.json            model config (per-layer shapes), quant scheme + bit layout,
                                target, context window, prefill chunk, runtime calling convention
  OUT/lib/model.so              the compiled library (host build)
  OUT/params/manifest.json      every parameter in call order: name, dtype, shape, file, offset,
                                nbytes, sha256 (+ the scheme's per-tensor layout fields, e.g.
                                nibble_order of a q4f16 qweight)
  OUT/params/shard-NNNNN.bin    raw little-endian tensor bytes, each tensor 64-byte aligned
  OUT/tokenizer.json ...        copied from the checkpoint when present

The package is assembled in a sibling temporary directory and renamed into place at the end,
so a failed compile never leaves a half-written OUT behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from runtime_stubs.errors import LlamaAotError

from runtime_stubs.package_format import MANIFEST, PACKAGE_CONFIG

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)
ALIGN = 64


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block succeeds."""
    out = Path(out).resolve()
    if out.exists() and not overwrite:
        raise LlamaAotError(f"output directory {out} already exists; remove it or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def write_params(
    out_dir: Path, params: Iterable[tuple[str, np.ndarray, dict]], shard_bytes: int = 512 << 20
) -> list[dict]:
    """Stream (name, array, extra manifest fields) into shard files; return the manifest entries."""
    (out_dir / "params").mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    shard_idx, f, offset = -1, None, 0
    try:
        for name, arr, extra in params:
            data = memoryview(np.ascontiguousarray(arr)).cast("B")
            if f is None or (offset > 0 and offset + data.nbytes > shard_bytes):
                if f is not None:
                    f.close()
                shard_idx += 1
                f = open(out_dir / "params" / f"shard-{shard_idx:05d}.bin", "wb")
                offset = 0
            pad = (-offset) % ALIGN
            f.write(b"\0" * pad)
            offset += pad
            f.write(data)
            entries.append(
                {
                    "name": name,
                    "dtype": str(arr.dtype),
                    "shape": list(arr.shape),
                    "file": f"shard-{shard_idx:05d}.bin",
                    "offset": offset,
                    "nbytes": data.nbytes,
                    "sha256": hashlib.sha256(data).hexdigest(),
                    **extra,
                }
            )
            offset += data.nbytes
    finally:
        if f is not None:
            f.close()
    with open(out_dir / MANIFEST, "w") as fp:
        json.dump({"params": entries}, fp, indent=1)
    return entries


def copy_tokenizer(model_dir: Path, out_dir: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(model_dir) / name).is_file():
            shutil.copy2(Path(model_dir) / name, out_dir / name)
            copied.append(name)
    return copied
