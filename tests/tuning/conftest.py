"""Fixtures of the tuning tests: the embedded tiny model's tasks for this machine, f32 and int8 activations."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
os.environ.setdefault("TVM_NUM_THREADS", "2")  # the machine is shared

from tuning_helpers import TINY, options  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tasks():
    """mode ("f32" | "int8") -> (TuneTarget, tasks, info, options); extracted once per session."""
    from schedules.tuning.target import resolve
    from schedules.tuning.tasks import extract_tasks

    made = {}

    def get(mode: str):
        if mode not in made:
            opts = options(mode == "f32")
            tt = resolve(opts)
            if mode == "int8" and tt.int8_isa is None:
                pytest.skip("this CPU has no int8 dot product the int8 kernels use")
            tasks, info = extract_tasks(TINY, opts, tt)
            made[mode] = (tt, tasks, info, opts)
        return made[mode]

    return get
