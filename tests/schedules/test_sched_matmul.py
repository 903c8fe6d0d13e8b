"""Dequant matmul (GEMV for decode, GEMM for symbolic S) through cpu_rules, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from sched_helpers import build_func, host_target, loop_kinds, rel_err, rules_used

from schedules.reference import dequant_matmul_func, pack_weight

TARGET = host_target()
SCHEMES = ["q4f16", "q4f16p", "q8f16", "q0f16", "q0f32"]
N, K = 192, 512  # N: not a multiple of the GEMM panel (tails); K: 4 groups of 128


def _weights(scheme, n=N, k=K, seed=0):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    return pack_weight(scheme, w)


def _run(lib, x, packed, n, extra=(), out_dtype=np.float32):
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(x.shape[:-1] + (n,), out_dtype), dev)
    args = [tvm.runtime.tensor(x, dev)] + [tvm.runtime.tensor(a, dev) for a in packed]
    args += [tvm.runtime.tensor(e, dev) for e in extra] + [out]
    lib(*args)
    return out.numpy()


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("form", ["inline", "separate"])
def test_gemv(scheme, form):
    func = dequant_matmul_func(scheme, N, K, 1, epilogue="add", separate_dequant=form == "separate")
    mod, lib = build_func(func, TARGET)
    assert rules_used(mod["main"]) == {"cpu.DequantGEMV"}
    assert {"parallel", "vectorized"} <= loop_kinds(mod["main"])
    packed, deq = _weights(scheme)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1, K)).astype(np.float32)
    r = rng.standard_normal((1, 1, N)).astype(np.float32)
    y = _run(lib, x, packed, N, extra=[r])
    assert rel_err(y, x @ deq.T + r) < 1e-5


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("form", ["inline", "separate"])
def test_gemm_symbolic_seq(scheme, form):
    func = dequant_matmul_func(scheme, N, K, "seq", epilogue="add", separate_dequant=form == "separate")
    mod, lib = build_func(func, TARGET)
    used = rules_used(mod["main"])
    assert len(used) == 1 and next(iter(used)).startswith("cpu.DequantGEMM"), used
    # packed 4-bit weights take the transposed-panel (broadcast) form, the others the dot form
    expected = "cpu.DequantGEMM.bcast" if scheme.startswith("q4") else "cpu.DequantGEMM.dot_pad"
    assert used == {expected}
    assert {"parallel", "vectorized"} <= loop_kinds(mod["main"])
    packed, deq = _weights(scheme)
    rng = np.random.default_rng(2)
    for s in (1, 7, 64):
        x = rng.standard_normal((1, s, K)).astype(np.float32)
        r = rng.standard_normal((1, s, N)).astype(np.float32)
        y = _run(lib, x, packed, N, extra=[r])
        assert rel_err(y, x @ deq.T + r) < 1e-5, s


@pytest.mark.parametrize("scheme", ["q4f16", "q8f16"])
def test_cast_epilogue(scheme):
    """float16 output: matmul + cast fused (GEMV and GEMM)."""
    packed, deq = _weights(scheme)
    rng = np.random.default_rng(3)
    for seq, s in ((1, 1), ("seq", 5)):
        mod, lib = build_func(dequant_matmul_func(scheme, N, K, seq, epilogue="cast"), TARGET)
        assert rules_used(mod["main"]), seq
        x = rng.standard_normal((1, s, K)).astype(np.float32)
        y = _run(lib, x, packed, N, out_dtype=np.float16)
        assert rel_err(y.astype(np.float32), x @ deq.T) < 2e-3


def test_static_rows_gemm():
    """A static S > 1 (e.g. a fixed prefill chunk) also takes the GEMM rule, divisible or not by the tile."""
    packed, deq = _weights("q4f16")
    rng = np.random.default_rng(4)
    for s in (12, 5):
        mod, lib = build_func(dequant_matmul_func("q4f16", N, K, s), TARGET)
        assert any(r.startswith("cpu.DequantGEMM") for r in rules_used(mod["main"]))
        x = rng.standard_normal((1, s, K)).astype(np.float32)
        assert rel_err(_run(lib, x, packed, N), x @ deq.T) < 1e-5


def test_odd_shapes():
    """N and K that are not multiples of the vector/tile sizes still schedule (or fall back) correctly."""
    rng = np.random.default_rng(5)
    for n, k in ((100, 96), (7, 64)):
        packed, deq = _weights("q8f16", n, k)
        for seq, s in ((1, 1), ("seq", 3)):
            mod, lib = build_func(dequant_matmul_func("q8f16", n, k, seq), TARGET)
            x = rng.standard_normal((1, s, k)).astype(np.float32)
            assert rel_err(_run(lib, x, packed, n), x @ deq.T) < 1e-5, (n, k, seq)
