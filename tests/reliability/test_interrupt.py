"""Ctrl-C inside a TVM pass: the FFI hands it back as a RuntimeError, and the CLI must still exit 130."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import os, signal, sys, time
import tvm
from runtime_stubs import interrupt

@tvm.transform.module_pass(opt_level=0)
def press_ctrl_c(mod, ctx):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)  # the handler raises here, inside the FFI callback
    return mod

interrupt.install()
try:
    press_ctrl_c(tvm.IRModule({}))
    print("no-error")
except BaseException as err:
    print(type(err).__name__, interrupt.is_interrupt(err))
"""


def test_ctrl_c_inside_a_tvm_pass_is_recognised():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    kind, recognised = out.stdout.split()[-2:]
    assert recognised == "True", (kind, out.stdout)


def test_an_error_without_ctrl_c_is_not_an_interrupt():
    from runtime_stubs import interrupt

    assert not interrupt.requested() and not interrupt.is_interrupt(RuntimeError("build failed"))
    assert interrupt.is_interrupt(KeyboardInterrupt())
