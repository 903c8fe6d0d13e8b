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
     {"compiler", "schedules", "targets", "evaluation", "compression", "bench"}),
    (["evaluation.perplexity", "evaluation.documents"], {"compiler", "schedules", "compression", "bench", "cli"}),
    (["compression.prune"], {"schedules", "bench", "cli"}),
    (["targets.registry", "targets.cpu_facts", "targets.schema"], {"compiler", "bench", "cli"}),
    (["compiler.compile", "compiler.pipeline", "compiler.export", "schedules.tuning"], {"compression", "bench", "cli"}),
])
def test_lower_floors_do_not_import_upper_ones(modules, forbidden):
    assert _imported_packages(modules) & forbidden == set()


PACKAGES = ("cli", "compiler", "schedules", "targets", "runtime_stubs", "evaluation", "compression", "bench")


def _import_graph() -> dict[str, set[str]]:
    """module -> our modules it imports anywhere in its source (function-level imports included), read by ast."""
    import ast

    files = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f

    def ours(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, f in files.items():
        here = mod.split(".") if f.name == "__init__.py" else mod.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            # a module importing the package it sits in (its __init__) is how Python loads it, not an arrow back
            edges |= {t for t in map(ours, names) if t and t != mod and not mod.startswith(t + ".")}
        graph[mod] = edges
    return graph


def test_no_import_cycles():
    """Every import arrow points one way (e.g. applying tuning records at compile time never imports the
    extraction that drives the compiler; int8_gemm and int8_gemv share int8_dot instead of each other)."""
    graph = _import_graph()
    assert "schedules.cpu.int8_gemm" in graph and "compiler.compile" in graph["cli.main"]  # the graph is real
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            assert state.get(t) != 1, "import cycle: " + " -> ".join(path[path.index(t):] + [t])
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
