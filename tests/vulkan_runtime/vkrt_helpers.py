"""Helpers of the Vulkan runtime tests (imported by name: the directory is on sys.path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HOST = {"kind": "llvm"}


def lavapipe(**overrides) -> dict:
    from targets.backends.vulkan import lavapipe_target

    t = lavapipe_target()
    t.update(overrides)
    return t


def build_and_load(mod, target_dict: dict, path: Path, rules=None):
    """tvm.compile(mod) for the Vulkan target (llvm host), export_library, load_module."""
    import tvm
    import tvm.s_tir.dlight as dl

    from targets.backends.vulkan import original_errors

    target = tvm.target.Target(target_dict, host=HOST)
    if rules:
        with target:
            mod = dl.ApplyDefaultSchedule(*rules)(mod)
    with original_errors():
        ex = tvm.compile(mod, target=target)
    ex.export_library(str(path))
    return tvm.runtime.load_module(str(path))


def run_script(code: str, env: dict | None = None, timeout: int = 300):
    """Run Python code in a fresh interpreter (repository on sys.path); returns CompletedProcess."""
    import subprocess

    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=timeout)
