"""Knob spaces, the measured search (local), the output check, the cost model and its Spearman correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest


def test_spearman_on_known_data():
    from schedules.tuning.cost_model import rank, spearman

    # Wikipedia's worked example (IQ vs hours of TV): rho = -29/165
    iq = [106, 86, 100, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 0, 27, 50, 28, 29, 20, 12, 6, 17]
    assert spearman(iq, tv) == pytest.approx(-29 / 165)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties get their average rank: y ranks 1, 2.5, 2.5, 4 -> 4.5 / sqrt(5 * 4.5)
    assert rank([1, 2, 2, 3]) == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 3, 4], [1, 2, 2, 3]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2], [3, 3]) is None and spearman([1], [1]) is None


def test_spaces_start_with_the_derivation(tiny_tasks):
    from schedules.tuning.space import space_for

    tt, tasks, _, _ = tiny_tasks("f32")
    gemv = next(t for t in tasks if t.kind == "dequant_gemv")
    space = space_for(gemv, tt)
    names = [d.name for d in space.dims]
    assert {"gemv_rows", "gemv_unroll", "gemv_prefetch"} <= set(names)
    assert space.derived()["gemv_rows"] == tt.params.gemv_row_tile()
    assert space.minimal(space.derived()) == {}
    dim = space.dims[0]
    for cand in space.neighbours({}, dim):
        assert list(cand) == [dim.name] and cand[dim.name] != dim.derived
    gemm = next(t for t in tasks if t.kind == "dequant_gemm")
    gspace = space_for(gemm, tt)
    tile = gspace.dims[0]
    # the derived tile is the one the L1 check of the broadcast blocking keeps for this [K, N] (on a small L1d it
    # is not the register-preferred gemm_bcast_tile: e.g. (8, 2) rather than (6, 4) on Zen 4 with 32 KiB)
    blocking = tt.params.gemm_bcast_blocking(gemm.meta["k"], gemm.meta["n"], gemm.meta.get("granule", 8))
    expected = blocking[:2] if blocking is not None else tt.params.gemm_bcast_tile()[:2]
    assert tile.joint == ("gemm_rows", "gemm_cols") and tile.derived == tuple(expected)
    for m, v in tile.values:  # register-feasible tiles only
        assert m * v + v + 1 <= tt.params.num_vector_regs - 1
    assert not any(space_for(t, tt) for t in tasks if not t.tunable)


def test_cost_model_predicts_every_candidate(tiny_tasks):
    from schedules.tuning.cost_model import predict_us
    from schedules.tuning.search import cost_model_record
    from schedules.tuning.space import space_for

    tt, tasks, _, _ = tiny_tasks("f32")
    for t in [t for t in tasks if t.tunable]:
        space = space_for(t, tt)
        for knobs in [{}] + space.random_points(6):
            assert 0 < predict_us(t, knobs, tt) < 1e7
        rec = cost_model_record(t, space, tt, trials=8)
        assert rec["predicted"] and rec["trials"] <= 8 and rec["measured_on"] == "cost-model"
        assert rec["tuned_us"] <= rec["derived_us"]


class _Runner:
    """LocalRunner that corrupts the output of one candidate (the search must reject it)."""

    def __init__(self, bad: dict):
        from schedules.tuning.measure import LocalRunner

        self.inner = LocalRunner(2)
        self.bad = bad

    def describe(self):
        return "test"

    def run(self, jobs, progress=None):
        out = self.inner.run(jobs)
        for job in jobs:
            if job.knobs == self.bad and out[job.id].output is not None:
                out[job.id].output = out[job.id].output + 1.0
        return out


def test_measured_search_on_a_gemv(tiny_tasks):
    from schedules.tuning.search import Search
    from schedules.tuning.space import space_for

    tt, tasks, _, _ = tiny_tasks("f32")
    task = next(t for t in tasks if t.kind == "dequant_gemv" and t.meta["n"] == 4096)  # the lm_head
    space = space_for(task, tt)
    bad = space.neighbours({}, space.dims[0])[0]
    rec = Search(task, space, tt, _Runner(bad), trials=6, flush=False, workdir=None).run()
    assert rec["key"] == task.key and rec["trials"] == 6 and rec["derived_us"] > 0
    assert rec["tuned_us"] <= rec["derived_us"] * 1.0 + 1e-9 or rec["knobs"] == {}
    assert rec["knobs"] != bad
    errors = {str(h[0]): h[3] for h in rec["history"] if len(h) > 3}
    assert errors.get(str(bad)) == "output differs from the derived kernel's"
    tags = [str(sorted(h[0].items())) for h in rec["history"]]
    assert len(tags) == len(set(tags)) == 6
    assert rec["history"][0][1] == min(h[1] for h in rec["history"] if h[1] is not None)


def test_int8_candidates_compute_the_same(tiny_tasks):
    """Every int8 GEMM knob point builds and gives the derived kernel's output (to float reassociation)."""
    import tvm

    from schedules.tuning.measure import build, make_inputs
    from schedules.tuning.space import space_for

    tt, tasks, _, _ = tiny_tasks("int8")
    task = next(t for t in tasks if t.kind == "int8_gemm")
    space = space_for(task, tt)
    ref = None
    for knobs in [{}] + [c for d in space.dims for c in space.neighbours({}, d)][:5]:
        lib, _ = build(task, knobs, tt)
        arrays = make_inputs(task)
        args = [tvm.runtime.tensor(a) for a in arrays]
        lib["main"](*args)
        out = args[-1].numpy()
        if ref is None:
            ref = out
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
