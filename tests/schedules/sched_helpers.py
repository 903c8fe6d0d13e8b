"""Shared helpers of the schedule tests: build a PrimFunc through our rules, read back which rule ran."""

from __future__ import annotations

import numpy as np
import tvm
import tvm_ffi
from tvm import tirx
from tvm.s_tir import dlight as dl
from tvm.target import Target, codegen

from schedules import cpu_rules
from schedules.cpu.base import RULE_ANNOTATION


def host_target(cores: int = 2) -> Target:
    return Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": cores})


ANDROID = {"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon", "+dotprod", "+i8mm"]}


def build_main(func, target: Target):
    """One PrimFunc compiled for ``target`` as ``main`` (a kernel test's callable)."""
    func = func.with_attr("global_symbol", "main")
    with target:
        return tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]


def schedule_module(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    with target:
        return dl.ApplyDefaultSchedule(*cpu_rules(target))(mod)


def fuse_and_schedule(mod: tvm.IRModule, target: Target) -> tvm.IRModule:
    """Legalize + fuse a Relax module as the compiler's pipeline does, then apply our rules."""
    from tvm import relax

    seq = tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination(),
        ]
    )
    return schedule_module(seq(mod), target)


def schedule_func(func: tirx.PrimFunc, target: Target) -> tvm.IRModule:
    return schedule_module(tvm.IRModule({"main": func}), target)


def rules_used(func: tirx.PrimFunc) -> set[str]:
    found = set()

    def cb(node):
        if type(node).__name__ == "SBlock" and node.annotations is not None and RULE_ANNOTATION in node.annotations:
            found.add(str(node.annotations[RULE_ANNOTATION]))

    tvm_ffi.structural_walk(func.body, cb)
    return found


def loop_kinds(func: tirx.PrimFunc) -> set[str]:
    script = func.script()
    return {k for k in ("parallel", "vectorized", "unroll") if f"T.{k}(" in script}


def build_func(func: tirx.PrimFunc, target: Target):
    mod = schedule_func(func, target)
    return mod, tvm.compile(mod, target=target)["main"]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / max(1e-30, np.abs(ref).max()))
