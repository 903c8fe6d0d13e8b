"""What every file of a package must be, checked before `run` loads any of it.

A package carries native code (lib/model.so) that `run` loads and executes, so it is treated as
code, not data: OUT/checksums.json lists every file of the package with its size, its sha256, and
the sha256 of its first and last MiB.  Before loading, `run` checks

  * every file: present, and of the recorded size (a truncated or missing shard is refused);
  * libraries and objects (lib/...): the full sha256, always (cheap next to loading them);
  * the JSON documents (llama-aot.json, params/manifest.json): the full sha256, always;
  * weight shards: the first- and last-MiB hashes by default, the full sha256 with ``--verify``.

checksums.json itself is what `llama-aot sign` signs (runtime_stubs/signing.py), so a valid
signature over it vouches for every byte that the checks above cover.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import LlamaAotError
from .messages import plain

CHECKSUMS = "checksums.json"
SIGNATURE = "signature.json"
SAMPLE_BYTES = 1 << 20  # the head/tail sample of a quick check: one MiB each end
FORMAT = 1
_READ = 8 << 20
# files that are always hashed in full: code, and the small documents that say how to run it
_ALWAYS_FULL = (".so", ".a", ".o", ".dylib", ".dll", ".json", ".spv", ".metal", ".cl")


def _sha256_range(f, start: int, length: int) -> str:
    h = hashlib.sha256()
    f.seek(start)
    while length > 0:
        chunk = f.read(min(_READ, length))
        if not chunk:
            break
        h.update(chunk)
        length -= len(chunk)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    """Size, full sha256 and first/last-MiB sha256 of one file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        return {
            "bytes": size,
            "sha256": _sha256_range(f, 0, size),
            "head_sha256": _sha256_range(f, 0, min(size, SAMPLE_BYTES)),
            "tail_sha256": _sha256_range(f, max(0, size - SAMPLE_BYTES), min(size, SAMPLE_BYTES)),
        }


def package_files(package_dir: Path) -> list[str]:
    """Every file of the package (posix paths relative to it) but the checksum list and its signature."""
    root = Path(package_dir)
    skip = {CHECKSUMS, SIGNATURE}
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in skip)


def write_checksums(package_dir: Path) -> dict:
    """Write OUT/checksums.json for the files now in ``package_dir`` (the last step of a compile)."""
    root = Path(package_dir)
    doc = {"format": FORMAT, "sample_bytes": SAMPLE_BYTES, "files": {rel: file_record(root / rel) for rel in package_files(root)}}
    with open(root / CHECKSUMS, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    return doc


def read_checksums(package_dir: Path) -> dict:
    path = Path(package_dir) / CHECKSUMS
    if not path.is_file():
        raise LlamaAotError(f"{path} is missing: the package cannot be checked; recompile it with this llama-aot")
    try:
        doc = json.loads(path.read_bytes())
        files = doc["files"]
        if doc.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError("unknown format")
        for rel, rec in files.items():
            if not isinstance(rel, str) or not isinstance(rec, dict) or not isinstance(rec.get("bytes"), int):
                raise ValueError(f"bad record for {rel!r}")
            if not all(isinstance(rec.get(k), str) for k in ("sha256", "head_sha256", "tail_sha256")):
                raise ValueError(f"bad record for {rel!r}")
            if rel.startswith("/") or ".." in Path(rel).parts or "\0" in rel or len(rel) > 1024 \
                    or any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in Path(rel).parts):
                raise ValueError(f"path {rel!r} is not a file of the package")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise LlamaAotError(f"{path} is corrupted ({plain(str(e)[:80])}); recompile the package") from None
    return doc


def always_full(rel: str) -> bool:
    return rel.startswith("lib/") or rel.endswith(_ALWAYS_FULL)


def verify_package(package_dir: Path, full: bool = False) -> dict:
    """Check the package against checksums.json (see the module docstring); return that document.

    Raises LlamaAotError naming the first file that fails and what to do."""
    root = Path(package_dir)
    doc = read_checksums(root)
    files = doc["files"]
    for rel in package_files(root):
        if rel.startswith("lib/") and rel not in files:
            raise LlamaAotError(f"{root / rel} is not listed in {CHECKSUMS}: refusing to run a package with unlisted code; recompile it")
    for rel, rec in files.items():
        path = root / rel
        if not path.is_file():
            raise LlamaAotError(f"{root}/{plain(rel)} is missing; the package is incomplete: recompile or re-copy it")
        size = os.path.getsize(path)
        if size != rec["bytes"]:
            what = "truncated" if size < rec["bytes"] else "longer than recorded"
            raise LlamaAotError(
                f"{path} is {what} ({size} bytes, {rec['bytes']} expected); the package is corrupted: recompile or re-copy it"
            )
        with open(path, "rb") as f:
            if full or always_full(rel):
                ok = _sha256_range(f, 0, size) == rec["sha256"]
            else:
                n = min(size, SAMPLE_BYTES)
                ok = _sha256_range(f, 0, n) == rec["head_sha256"] and _sha256_range(f, size - n, n) == rec["tail_sha256"]
        if not ok:
            raise LlamaAotError(f"{path} fails its sha256 check; the package is corrupted or was modified: recompile or re-copy it")
    return doc
