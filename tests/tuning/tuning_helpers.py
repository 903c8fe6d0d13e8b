"""Shared names of the tuning tests (a module of its own: ``conftest`` is not a unique import name)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "models" / "tiny-llama3"
CHUNK = 16  # prefill chunk of the test packages (keys do not depend on it)


def options(f32: bool, **kw):
    """Compile options of the tuning tests: the tiny model, f32 or int8 activations."""
    from compiler.compile import CompileOptions

    return CompileOptions(prefill_chunk=CHUNK, context_window=256, int8_activations=False if f32 else None, **kw)
