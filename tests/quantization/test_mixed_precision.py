"""--quant mixed's two halves without TVM: the sensitivity measurement per tensor and scheme, and the budgeted
choice (checked against an exhaustive search)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from compiler.model.weights import WeightSource
from compiler.quantization import LlamaAotError, get_scheme
from compression.mixed_precision import BUDGET_STEPS, Option, allocate, measure, parse_candidates


def _exhaustive(options: dict[str, list[Option]], budget: float) -> float:
    """The least summed cost of any choice within ``budget`` bytes, by trying every combination."""
    best = np.inf
    for combo in itertools.product(*options.values()):
        if sum(o.nbytes for o in combo) <= budget:
            best = min(best, sum(o.cost for o in combo))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_allocation_is_the_exhaustive_optimum_within_its_rounding(seed):
    rng = np.random.default_rng(seed)
    options = {}
    for m in range(6):  # three schemes per tensor: more bytes, less cost (as q8 / q4 / cb3 are)
        nbytes = sorted(rng.integers(1_000, 100_000, size=3))[::-1]
        costs = sorted(rng.uniform(0, 10, size=3))
        options[f"t{m}"] = [Option(s, int(b), float(c)) for s, b, c in zip(("big", "mid", "small"), nbytes, costs)]
    smallest = sum(min(o.nbytes for o in v) for v in options.values())
    largest = sum(max(o.nbytes for o in v) for v in options.values())
    for budget in np.linspace(smallest * 1.01, largest, 7).astype(int):
        chosen = allocate(options, int(budget))
        assert list(chosen) == list(options)
        assert all(chosen[m] in options[m] for m in options)
        assert sum(o.nbytes for o in chosen.values()) <= budget
        # each tensor's bytes are rounded up to a budget step: at most one step lost per tensor
        slack = len(options) * budget / BUDGET_STEPS
        cost = sum(o.cost for o in chosen.values())
        assert cost <= _exhaustive(options, budget - slack) + 1e-9
        assert cost >= _exhaustive(options, budget) - 1e-9


def test_allocation_refuses_a_budget_below_the_smallest_mix():
    options = {"a": [Option("x", 100, 0.0), Option("y", 50, 1.0)], "b": [Option("x", 100, 0.0), Option("y", 50, 1.0)]}
    assert {o.scheme for o in allocate(options, 200).values()} == {"x"}
    assert [o.scheme for o in allocate(options, 150).values()].count("y") == 1
    with pytest.raises(LlamaAotError, match="raise --bits-per-weight"):
        allocate(options, 99)
    # a budget the smallest mix fits exactly, which the DP's rounding up alone would refuse (3 x 2731 steps > 8192)
    tight = {m: [Option("x", 9, 0.0), Option("y", 7, 1.0)] for m in "abc"}
    assert {o.scheme for o in allocate(tight, 21).values()} == {"y"}
    assert [o.scheme for o in allocate(tight, 23).values()] == ["x", "y", "y"]  # the 2 bytes left buy one swap


class _Checkpoint:
    def __init__(self, tensors):
        self.tensors = tensors

    def read(self, name):
        return self.tensors[name]


def test_measure_costs_follow_the_fisher_weights_and_the_bits():
    rng = np.random.default_rng(0)
    w = {"a": rng.standard_normal((64, 128)).astype(np.float32), "b": rng.standard_normal((32, 128)).astype(np.float32)}
    h = {"a": np.ones((64, 128), np.float32), "b": np.zeros((32, 128), np.float32)}
    plan = {"fused": WeightSource(("a", "b"), None), "alone": WeightSource(("b",), None)}
    names = ("q8f16", "q4f16", "cb3f16")
    opts = measure(_Checkpoint(w), plan, ["fused", "alone"], {n: get_scheme(n) for n in names}, h, progress=False)
    fused = {o.scheme: o for o in opts["fused"]}
    assert fused["q8f16"].cost < fused["q4f16"].cost < fused["cb3f16"].cost  # fewer bits, more error
    for n, o in fused.items():  # the stored bytes of the fused [96, 128] weight
        specs = get_scheme(n).param_specs(96, 128)
        assert o.nbytes == sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in specs.values())
    # the fused tensor's q8 error, computed here from the scheme's own round trip, weighted by h = 1 on "a" only
    q8 = get_scheme("q8f16")
    whole = np.concatenate([w["a"], w["b"]])
    err = (whole - q8.dequantize(q8.pack(whole)))[:64]
    assert fused["q8f16"].cost == pytest.approx(0.5 * float((err * err).sum()), rel=1e-5)
    assert all(o.cost == 0 for o in opts["alone"])  # zero Fisher information: no scheme costs anything


def test_measure_skips_schemes_that_cannot_store_a_shape():
    w = {"a": np.ones((16, 48), np.float32)}  # K = 48: not a multiple of q4f16's group of 32
    opts = measure(_Checkpoint(w), {"m": WeightSource(("a",), None)}, ["m"],
                   {n: get_scheme(n) for n in ("q4f16", "q0f16")}, {"a": np.ones((16, 48), np.float32)}, progress=False)
    assert [o.scheme for o in opts["m"]] == ["q0f16"]
    with pytest.raises(LlamaAotError, match="no scheme of --mixed-schemes"):
        measure(_Checkpoint(w), {"m": WeightSource(("a",), None)}, ["m"], {"q4f16": get_scheme("q4f16")},
                {"a": np.ones((16, 48), np.float32)}, progress=False)


def test_candidates_parse_and_refuse():
    assert parse_candidates(None) == ("q8f16", "q4f16", "cb4f16", "cb3f16")
    assert parse_candidates("q4f16, cb3f16,q4f16") == ("q4f16", "cb3f16")
    for bad in ("q4f16,q5f16", "", " , "):
        with pytest.raises(LlamaAotError, match="--mixed-schemes"):
            parse_candidates(bad)
