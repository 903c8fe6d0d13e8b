"""Every rule schedules every shape it claims, for the cache facts of every SoC in the registry, the host, and a
grid (L1d 32/48/64 KiB x L2 256 KiB..2 MiB x L3 0..32 MiB): the rule taken is the intended form (no silent
fallback to a slower one), and the numbers match numpy.

Facts sets that derive the same knobs give the same schedule, so each distinct set of derived values is built
and run once (on this machine's ISA and, since every x86 CI machine has AVX2, on ``-mcpu=haswell`` too); the
SoCs' own aarch64 targets are scheduled for the 1B shapes without running.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tvm
from sched_helpers import host_target, rel_err, rules_used
from tvm.target import Target

from schedules import cpu_rules
from schedules.cpu.params import CPUParams
from schedules.reference import dequant_matmul_func, pack_weight
from schedules.report import ApplySchedules, collecting
from targets import list_socs
from targets.cpu_facts import CPUFacts, KiB, MiB

GRID = [
    CPUFacts(l1d_bytes=l1 * KiB, l2_bytes=l2 * KiB, l3_bytes=l3 * MiB, source=f"grid:{l1}K/{l2}K/{l3}M")
    for l1, l2, l3 in itertools.product((32, 48, 64), (256, 512, 1024, 2048), (0, 8, 32))
]
REGISTRY = [CPUFacts.from_soc(s) for s in list_socs()]
FACTS = REGISTRY + GRID

# (scheme, N, K): the small shapes that run here; the 1B shapes are scheduled (not run) on every facts set
RUN_SHAPES = [("q4f16", 192, 512), ("q4f16p", 192, 512), ("q8f16", 192, 512)]
SHAPES_1B = [(n, k) for n, k in ((3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048))]
# what each kind must get: the broadcast panel for packed 4-bit weights, the dot form for the others
EXPECTED = {
    ("gemv", "q4f16"): "cpu.DequantGEMV",
    ("gemv", "q4f16p"): "cpu.DequantGEMV",
    ("gemv", "q8f16"): "cpu.DequantGEMV",
    ("gemm", "q4f16"): "cpu.DequantGEMM.bcast",
    ("gemm", "q4f16p"): "cpu.DequantGEMM.bcast",
    ("gemm", "q8f16"): "cpu.DequantGEMM.dot_pad",
}
X86_TARGETS = {"host": host_target(), "haswell": Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})}


def _derived_key(params: CPUParams, kind: str, scheme: str, n: int, k: int):
    """The derived values a kind's schedule depends on (equal keys give equal schedules)."""
    if kind == "gemv":
        return (params.gemv_row_tile(), params.gemv_vector_lanes(), params.gemv_k_unroll(), params.l2_bytes, params.num_cores)
    granule = 128 if scheme == "q4f16p" else 8
    return (params.gemm_bcast_blocking(k, n, granule), params.gemm_tile(), params.gemm_panel(k, n), params.num_cores)


def _schedule(func, target: Target, params: CPUParams):
    mod = tvm.IRModule({"main": func})
    with target, collecting() as report:
        mod = ApplySchedules(*cpu_rules(target, params))(mod)
    return mod, report


def _check_rule(mod, report, kind, scheme, where):
    assert not report.fallbacks, (where, report.fallbacks)
    assert rules_used(mod["main"]) == {EXPECTED[(kind, scheme)]}, where


def _cases():
    for tname in X86_TARGETS:
        for kind in ("gemv", "gemm"):
            for scheme, n, k in RUN_SHAPES:
                yield tname, kind, scheme, n, k


@pytest.mark.parametrize("tname,kind,scheme,n,k", list(_cases()))
def test_every_facts_set_runs_the_intended_rule(tname, kind, scheme, n, k):
    target = X86_TARGETS[tname]
    rows = 1 if kind == "gemv" else "seq"
    packed, deq = pack_weight(scheme, (np.random.default_rng(0).standard_normal((n, k)) * 0.05).astype(np.float32))
    seen = {}
    for facts in FACTS:
        params = CPUParams.from_target(target, facts=facts)
        key = _derived_key(params, kind, scheme, n, k)
        if key in seen:
            continue
        seen[key] = facts.source
        mod, report = _schedule(dequant_matmul_func(scheme, n, k, rows), target, params)
        _check_rule(mod, report, kind, scheme, facts.source)
        lib = tvm.compile(mod, target=target)["main"]
        rng = np.random.default_rng(1)
        for s in (1,) if kind == "gemv" else (1, 7, 40):
            x = rng.standard_normal((1, s, k)).astype(np.float32)
            dev = tvm.cpu()
            out = tvm.runtime.tensor(np.zeros((1, s, n), np.float32), dev)
            lib(tvm.runtime.tensor(x, dev), *[tvm.runtime.tensor(a, dev) for a in packed], out)
            assert rel_err(out.numpy(), x @ deq.T) < 1e-5, (facts.source, s)
    assert seen  # at least one distinct derivation was built and checked


def _soc_targets():
    for soc in list_socs():
        if soc.is_host:
            continue
        yield soc


@pytest.mark.parametrize("soc", list(_soc_targets()), ids=lambda s: s.name)
def test_soc_targets_schedule_1b_shapes(soc):
    """Each SoC's own target (its ISA + its facts) takes the intended rule on every 1B-shape projection."""
    target = Target(soc.tvm_host_target())
    params = CPUParams.for_build(target, CPUFacts.from_soc(soc))
    assert params.facts_source == f"soc:{soc.name}"
    for (n, k), scheme in itertools.product(SHAPES_1B, ("q4f16", "q4f16p")):
        for kind, rows in (("gemv", 1), ("gemm", "seq")):
            mod, report = _schedule(dequant_matmul_func(scheme, n, k, rows), target, params)
            _check_rule(mod, report, kind, scheme, (soc.name, n, k))


def test_grid_and_registry_have_a_blocking_for_1b_shapes():
    """The broadcast blocking exists for every facts set and 1B shape on every ISA we target."""
    targets = [*X86_TARGETS.values(), Target({"kind": "llvm", "mcpu": "znver4"})]
    targets += [Target(s.tvm_host_target()) for s in list_socs() if not s.is_host]
    for target, facts in itertools.product(targets, FACTS):
        params = CPUParams.from_target(target, facts=facts)
        for (n, k), granule in itertools.product(SHAPES_1B, (8, 128)):
            blk = params.gemm_bcast_blocking(k, n, granule)
            assert blk is not None, (str(target), facts.source, n, k, granule)
            mr, nrv, lanes, kc, tn = blk
            assert kc % granule == 0 and k % kc == 0 and n % tn == 0 and tn % (nrv * lanes) == 0
            assert kc * nrv * lanes * 4 <= params.gemm_l1_panel_budget() or kc == granule


def test_l1_budget_shrinks_the_tile_instead_of_falling_back():
    """Zen 4's facts (32 KiB 8-way L1d, AVX-512): a 64-wide NR cannot hold one 128-k planar granule in the
    L1 budget, so the derivation takes NR = 32 (the bcast form), not the dot form as before."""
    zen4 = CPUParams.from_target(Target({"kind": "llvm", "mcpu": "znver4"}), facts=CPUFacts(l1d_bytes=32 * KiB, l2_bytes=MiB))
    zen5 = CPUParams.from_target(Target({"kind": "llvm", "mcpu": "znver5"}), facts=CPUFacts(l1d_bytes=48 * KiB, l1d_ways=12, l2_bytes=MiB))
    assert zen4.gemm_bcast_blocking(2048, 2048, 128)[:2] == (8, 2)
    assert zen5.gemm_bcast_blocking(2048, 2048, 128)[:2] == (6, 4)


def test_fallback_is_reported():
    """Knobs that leave no broadcast tile (a forced K block below one planar granule) are a logged, recorded
    fallback to the dot form, and the numbers stay right."""
    target = X86_TARGETS["host"]
    params = CPUParams.from_target(target, gemm_k_block=64)
    mod, report = _schedule(dequant_matmul_func("q4f16p", 192, 512, "seq"), target, params)
    assert [f["rule"] for f in report.fallbacks] == ["cpu.DequantGEMM.bcast"]
    assert rules_used(mod["main"]) == {"cpu.DequantGEMM.dot_pad"}
