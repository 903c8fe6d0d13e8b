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

The package is assembled in a sibling temporary directory and swapped into place at the end, under
a lock, so a failed, killed or concurrent compile never leaves a half-written or mixed OUT behind.
OUT/checksums.json (runtime_stubs/integrity.py) is written last and lists every other file.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
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


def _siblings(out: Path, kind: str) -> list[Path]:
    return sorted(out.parent.glob(f".{out.name}.{kind}-*"))


@contextlib.contextmanager
def _output_lock(out: Path) -> Iterator[None]:
    """One compile per output directory at a time: a second one fails at once (no waiting, no mix).

    flock on a sibling lock file, removed when the compile ends; the kernel drops the lock of a
    killed compile, and the next one takes the file over."""
    path = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LlamaAotError(
                f"another llama-aot compile is writing {out} (it holds {path}); wait for it to finish or pass another -o"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # the previous holder removed the file while we opened it: take the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def refuse_foreign_output(out: Path, marker: str = PACKAGE_CONFIG, what: str = "a llama-aot package") -> None:
    """Raise unless ``out`` is absent, empty or our own earlier output (holds ``marker``): never replace a stranger.
    Long jobs call it before they start, atomic_output_dir again at the swap."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / marker).is_file())):
        raise LlamaAotError(f"{out.resolve()} exists and is not {what}; pass another -o (it is never replaced)")


@contextlib.contextmanager
def atomic_output_dir(out: Path, overwrite: bool = True, marker: str = PACKAGE_CONFIG,
                      what: str = "a llama-aot package") -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``out`` only if the block succeeds.

    An existing ``out`` is replaced only if it holds ``marker`` (our own earlier output, ``what``) or nothing.

    A compile killed at any point (SIGKILL included) leaves the old package or none, never a mix:
    the swap is one atomic rename.  Leftovers of a killed compile (its temporary sibling, the lock
    file) are removed by the next compile into the same ``out``."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with _output_lock(out):
        if out.exists():
            if not overwrite:
                raise LlamaAotError(f"output directory {out} already exists; remove it or pass --force")
            refuse_foreign_output(out, marker, what)
        for stale in _siblings(out, "tmp") + _siblings(out, "old"):  # a killed compile's; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; a package is as readable as any other output
        if not out.exists():
            tmp.rename(out)
        elif _exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)  # now the old package
        else:  # no atomic swap here: a kill between the two renames leaves no package (never a mix)
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)


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
