"""The embedded tiny model compiled once per session for the bench tests (tests/e2e's fixtures are not
visible from this directory and compile random checkpoints, not this model)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = Path(__file__).resolve().parents[2] / "models" / "tiny-llama3"


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory) -> Path:
    from compiler.compile import CompileOptions, compile_model

    out = tmp_path_factory.mktemp("bench-tiny") / "q4f16"
    return compile_model(TINY, out, CompileOptions(quant="q4f16", prefill_chunk=16, context_window=256))
