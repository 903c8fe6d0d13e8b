"""Task extraction: distinct kernels (structural hash), call counts per phase, weights, stable keys."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tuning_helpers import ROOT, TINY


def _primfuncs(mod):
    from tvm import tirx

    return [(gv.name_hint, f) for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]


def test_extract_f32_tasks(tiny_tasks):
    from schedules.tuning.keys import rule_key

    tt, tasks, info, _ = tiny_tasks("f32")
    layers = len(info["spec"].layers)
    keys = [t.key for t in tasks]
    assert len(keys) == len(set(keys))
    weights = [t.weight_us for t in tasks]
    assert weights == sorted(weights, reverse=True)
    for t in tasks:
        assert t.weight_us == pytest.approx(sum(t.calls[p] * t.est_us[p] for p in ("decode", "prefill")))
    gemv = [t for t in tasks if t.kind == "dequant_gemv"]
    gemm = [t for t in tasks if t.kind == "dequant_gemm"]
    # qkv, o, gate_up, down: one kernel each (shared by all layers), called once per layer
    per_layer = [t for t in gemv if t.calls["decode"] == layers]
    assert len(per_layer) == 4 and len([t for t in gemm if t.calls["prefill"] == layers]) == 4
    # the tied lm_head: one GEMV (one row: the last position in prefill too) called by both phases
    head = [t for t in gemv if t.meta["n"] == 4096]
    assert len(head) == 1 and head[0].calls == {"decode": 1, "prefill": 1}
    for t in gemv + gemm:
        assert t.key == rule_key(t.rule, t.func) and t.key.startswith(t.rule + "/")
        assert t.tunable and t.meta["k"] in (256, 768)
    assert all(t.rows == 16 for t in gemm) and all(t.rows == 1 for t in gemv)
    assert any(not t.tunable for t in tasks)  # norms, elementwise, attention are listed, not tuned


def test_structurally_equal_kernels_are_one_task(tiny_tasks):
    """A module with two structurally equal copies of a kernel (different names): one task, both names."""
    import tvm

    from schedules.tuning.apply import suspended
    from schedules.tuning.tasks import _tasks_of, build_module

    tt, tasks, _, opts = tiny_tasks("f32")
    with suspended():
        mod, info = build_module(TINY, opts, tt)
        name, func = next((n, f) for n, f in _primfuncs(mod) if n.startswith("fused_dequant_matmul"))
        mod2 = mod.copy() if hasattr(mod, "copy") else tvm.IRModule(dict(mod.functions_items()))
        mod2[tvm.ir.GlobalVar(name + "_copy")] = func
        tasks2 = _tasks_of(mod2, info, opts, tt)
    assert len(tasks2) == len(tasks)
    task = next(t for t in tasks2 if name in t.names)
    assert sorted(task.names) == sorted([name, name + "_copy"])


def test_int8_tasks_carry_their_key(tiny_tasks):
    tt, tasks, _, _ = tiny_tasks("int8")
    int8 = [t for t in tasks if t.kind.startswith("int8_")]
    assert {t.kind for t in int8} == {"int8_gemv", "int8_gemm"}
    for t in int8:
        m = t.meta
        assert t.key == f"{m['kind']}/q4f16/{m['order']}/N{m['n']}/K{m['k']}" and m["isa"] == tt.int8_isa


def test_keys_are_stable_across_processes(tiny_tasks):
    """Compile looks records up in another process than tune: the structural hashes must agree."""
    _, tasks, _, _ = tiny_tasks("f32")
    script = (
        "import json; from tuning_helpers import options, TINY;"
        "from schedules.tuning.target import resolve; from schedules.tuning.tasks import extract_tasks;"
        "o = options(True); t, _ = extract_tasks(TINY, o, resolve(o)); print(json.dumps([x.key for x in t]))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=str(ROOT / "tests" / "tuning"), capture_output=True,
                         text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-1000:]
    assert set(json.loads(out.stdout.strip().splitlines()[-1])) == {t.key for t in tasks}
