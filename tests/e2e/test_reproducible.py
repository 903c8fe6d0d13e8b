"""Same checkpoint + options + facts + llama-aot version -> the same bytes in every file of the package.

Known exception (issue "Trustworthy on any machine", open): TVM 0.27's VMShapeLower assigns shape-heap slots in
an order that can change from one compile to the next (seen: two stores of one shape function swapped), so
lib/model.so may differ in its shape functions; every other file must be identical."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from compiler.compile import CompileOptions, compile_model
PREFILL_CHUNK = 16  # as tests/e2e/conftest.py compiles the shared packages


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_host_package_is_byte_identical(compiled, checkpoint_dir, tmp_path):
    first = compiled("tied_llama3rope", "q4f16")
    # a second compile of the same inputs into another directory (another temp path, another process state)
    opts = CompileOptions(quant="q4f16", prefill_chunk=PREFILL_CHUNK, context_window=256)
    second = compile_model(checkpoint_dir("tied_llama3rope"), tmp_path / "again" / "pkg", opts)
    a, b = _digests(first), _digests(second)
    assert a.keys() == b.keys()
    differing = sorted(k for k in a if a[k] != b[k] and k != "lib/model.so")
    assert not differing, differing
    cfg = json.loads((second / "llama-aot.json").read_text())
    assert str(tmp_path) not in json.dumps(cfg)  # no build paths in the package
