"""The house has no arrows back up: the runtime ships alone, so it imports nothing from the compiler;
the SoC descriptions (targets/) do not import the compiler; the compiler and the tuner import neither
the benchmarks nor the CLI (the top floor)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_packages(modules: list[str]) -> set[str]:
    """Top-level packages in sys.modules after importing ``modules`` in a fresh interpreter."""
    script = (f"import importlib, json, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
              "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("modules,forbidden", [
    (["runtime_stubs.engine", "runtime_stubs.package_format", "runtime_stubs.vulkan", "runtime_stubs.sampling"],
     {"compiler", "schedules", "targets", "bench"}),
    (["targets.registry", "targets.cpu_facts", "targets.schema"], {"compiler", "bench", "cli"}),
    (["compiler.compile", "compiler.pipeline", "compiler.export", "schedules.tuning"], {"bench", "cli"}),
])
def test_lower_floors_do_not_import_upper_ones(modules, forbidden):
    assert _imported_packages(modules) & forbidden == set()
