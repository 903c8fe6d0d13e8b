"""Same checkpoint + options + facts + llama-aot version -> the same bytes in every file of the package,
lib/model.so and checksums.json included (TVM's VMShapeLower orders the stores of a shape function by
expression addresses; compiler/pipeline.py canonical_shape_funcs sorts them)."""

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
    differing = sorted(k for k in a if a[k] != b[k])
    assert not differing, differing
    cfg = json.loads((second / "llama-aot.json").read_text())
    assert str(tmp_path) not in json.dumps(cfg)  # no build paths in the package


def test_phone_package_is_byte_identical(checkpoint_dir, tmp_path):
    """A phone package (aarch64 objects, lib/libmodel.a, lib/model.so, lib0.o): the same bytes twice."""
    opts = CompileOptions(soc="snapdragon-8-gen-3", device="cpu", quant="q4f16", prefill_chunk=PREFILL_CHUNK,
                          context_window=128)
    first = compile_model(checkpoint_dir("tied_llama3rope"), tmp_path / "a" / "pkg", opts)
    second = compile_model(checkpoint_dir("tied_llama3rope"), tmp_path / "b" / "pkg", opts)
    a, b = _digests(first), _digests(second)
    assert {"lib/libmodel.a", "lib/model.so", "checksums.json"} <= a.keys()
    assert a.keys() == b.keys()
    assert not sorted(k for k in a if a[k] != b[k])
