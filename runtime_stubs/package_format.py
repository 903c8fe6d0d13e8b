"""Reading a compiled package: the file names and the two JSON documents (no TVM needed)."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import LlamaAotError

PACKAGE_CONFIG = "llama-aot.json"
MANIFEST = "params/manifest.json"


def read_package_config(package_dir: Path) -> dict:
    package_dir = Path(package_dir)
    if not package_dir.is_dir():
        raise LlamaAotError(f"package directory {package_dir} does not exist; run `llama-aot compile` first")
    path = package_dir / PACKAGE_CONFIG
    if not path.is_file():
        raise LlamaAotError(f"{path} is missing: {package_dir} is not a llama-aot package (run `llama-aot compile`)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise LlamaAotError(f"{path} is not valid JSON ({e}); recompile the package") from None


def read_manifest(package_dir: Path) -> list[dict]:
    path = Path(package_dir) / MANIFEST
    if not path.is_file():
        raise LlamaAotError(f"{path} is missing; recompile the package")
    with open(path) as f:
        return json.load(f)["params"]
