"""Reading a compiled package: the file names and the two JSON documents (no TVM needed)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import LlamaAotError
from .messages import plain

PACKAGE_CONFIG = "llama-aot.json"
FORMAT_VERSION = 1  # of llama-aot.json and the package layout; a runtime reads this version only
MANIFEST = "params/manifest.json"


def read_package_config(package_dir: Path) -> dict:
    package_dir = Path(package_dir)
    if not package_dir.is_dir():
        raise LlamaAotError(f"package directory {package_dir} does not exist; run `llama-aot compile` first")
    path = package_dir / PACKAGE_CONFIG
    if not path.is_file():
        raise LlamaAotError(f"{path} is missing: {package_dir} is not a llama-aot package (run `llama-aot compile`)")
    doc = _read_json(path)
    if not isinstance(doc, dict):
        raise LlamaAotError(f"{path} is not a JSON object; recompile the package")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        made_by = doc["compile"].get("llama_aot_version") if isinstance(doc.get("compile"), dict) else None
        made_by = made_by or "of another version"
        raise LlamaAotError(f"{package_dir} is a package of format {version!r} (written by llama-aot {made_by}); this llama-aot "
                            f"reads format {FORMAT_VERSION}: recompile the package with this llama-aot")
    return doc


_ENTRY_TYPES = {"name": str, "dtype": str, "shape": list, "file": str, "offset": int, "nbytes": int, "sha256": str}


def read_manifest(package_dir: Path) -> list[dict]:
    """The weight entries, each checked for the fields and types the runtime reads."""
    path = Path(package_dir) / MANIFEST
    if not path.is_file():
        raise LlamaAotError(f"{path} is missing; recompile the package")
    doc = _read_json(path)
    entries = doc.get("params") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise LlamaAotError(f"{path} has no list of params; the package is corrupted: recompile it")
    for i, e in enumerate(entries):
        bad = [k for k, t in _ENTRY_TYPES.items() if not isinstance(e, dict) or not isinstance(e.get(k), t)
               or isinstance(e.get(k), bool)]
        if not bad and (e["offset"] < 0 or e["nbytes"] < 0 or "/" in e["file"] or e["file"] in ("", ".", "..")
                        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in e["shape"])):
            bad = ["offset/nbytes/file/shape"]
        if bad:
            raise LlamaAotError(f"{path}: entry {i} has a bad {plain(bad[0])}; the package is corrupted: recompile it")
    return entries


def _read_json(path: Path):
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise LlamaAotError(f"{path} is not valid JSON ({type(e).__name__}); recompile the package") from None
