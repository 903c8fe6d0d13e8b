"""The int8-activation kernels (schedules/cpu/int8_gemm.py prefill GEMM, int8_gemv.py decode GEMV) against
their numpy definition and f32."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.target import Target, codegen

from compiler.quantization import get_scheme
from schedules.cpu.int8_gemm import int8_dot_isa, int8_gemm_func, int8_matmul_func, numpy_reference
from schedules.cpu.int8_gemv import int8_gemv_func

HOST = Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2})
pytestmark = pytest.mark.skipif(int8_dot_isa(HOST) != "avx512vnni", reason="needs an x86 CPU with AVX-512 VNNI (these tests run the x86 kernels)")


def _nibbles(qweight: np.ndarray) -> np.ndarray:
    """Logical [N, K] nibbles by docs/quantization.md: planar when K % 128 == 0 (k = 128b + 16j + i is
    nibble j of word 16b + i), else sequential (nibble k % 8 of word k // 8)."""
    n, words = qweight.shape
    k = np.arange(words * 8)
    if (words * 8) % 128 == 0:
        word, pos = (k // 128) * 16 + k % 16, (k % 128) // 16
    else:
        word, pos = k // 8, k % 8
    return (qweight[:, word] >> (4 * pos).astype(np.uint32)) & 15


@pytest.mark.parametrize("k,n,s", [(256, 128, 1), (256, 192, 7), (512, 256, 33), (1024, 64, 4), (192, 64, 5), (256, 48, 3)])
def test_matches_reference(k, n, s):
    scheme = get_scheme("q4f16")
    func = int8_gemm_func(scheme, n, k).with_attr("global_symbol", "main")
    f = tvm.compile(tvm.IRModule({"main": func}), target=HOST)["main"]
    rng = np.random.default_rng(k + n + s)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    packed = scheme.pack(w)
    x = rng.standard_normal((1, s, k)).astype(np.float32)
    x[0, 0, :32] = 0.0  # an all-zero group: d = 0, q = 0, no NaN
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.full((1, s, n), np.nan, np.float32), dev)
    f(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(packed["qweight"], dev), tvm.runtime.tensor(packed["scale"], dev), y)
    ours = y.numpy()[0]
    ref = numpy_reference(x[0], _nibbles(packed["qweight"]), packed["scale"])
    scale = np.abs(ref).max()
    # integer dots are exact; only the float32 order of the group sums differs
    assert np.abs(ours - ref).max() <= 1e-5 * scale
    # bound vs f32 activations on the same weights: x rounded to 1/254 of its group max per element
    f32 = x[0] @ scheme.dequantize(packed).T
    assert np.abs(ours - f32).max() <= 2e-2 * np.abs(f32).max()


def _check(func, k, n, x_shape, seed, big=False):
    """Run ``func`` on random q4 weights and x of shape x_shape + (k,); compare with numpy_reference."""
    scheme = get_scheme("q4f16")
    f = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=HOST)["main"]
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    if big:
        w[::3, :32] *= 1e3  # groups with very different scales in the same row
    packed = scheme.pack(w)
    x = rng.standard_normal((*x_shape, k)).astype(np.float32)
    x.reshape(-1, k)[0, :32] = 0.0  # an all-zero group: d = 0, q = 0, no NaN
    if big:
        x.reshape(-1, k)[0, 32:64] *= 1e4
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.full((*x_shape, n), np.nan, np.float32), dev)
    f(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(packed["qweight"], dev), tvm.runtime.tensor(packed["scale"], dev), y)
    ours = y.numpy().reshape(-1, n)
    ref = numpy_reference(x.reshape(-1, k), _nibbles(packed["qweight"]), packed["scale"])
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()
    f32 = x.reshape(-1, k) @ scheme.dequantize(packed).T
    assert np.abs(ours - f32).max() <= 2e-2 * np.abs(f32).max()


# planar (K % 128 == 0: 16-word vectors, 4 groups each) and sequential (K = 32, 96, 192: one group per
# 4-word vector); N not a multiple of the 4-row tile (6, 5, 3: tiles of 2 and 1 row); the decode shape (1, 1)
# and a 2-D (1, K) input
@pytest.mark.parametrize(
    "k,n,x_shape",
    [(128, 16, (1, 1)), (256, 128, (1, 1)), (2048, 36, (1, 1)), (384, 6, (1,)), (192, 64, (1, 1)), (96, 5, (1, 1)), (32, 3, (1, 1))],
)
def test_gemv_matches_reference(k, n, x_shape):
    _check(int8_gemv_func(get_scheme("q4f16"), n, k, x_shape), k, n, x_shape, seed=k * n)


@pytest.mark.parametrize("k", [256, 192])
def test_gemv_wide_dynamic_range(k):
    """Group scales 1e3 apart in one row and an activation group 1e4 larger: per-group int32 sums stay
    exact and each group gets its own scales (a lane mixing two groups would be off by orders of magnitude)."""
    _check(int8_gemv_func(get_scheme("q4f16"), 64, k), k, 64, (1, 1), seed=k, big=True)


def test_dispatch_rule():
    """One row -> GEMV, [b, s] -> GEMM; both need N % 16 == 0 so prefill and decode round the same layers."""
    q4 = get_scheme("q4f16")
    assert int8_matmul_func(q4, 48, 256, (1, 1)) is not None
    assert int8_matmul_func(q4, 48, 192, (1, 5)) is not None
    assert int8_matmul_func(q4, 40, 256, (1, 1)) is None and int8_matmul_func(q4, 40, 256, (1, 5)) is None
    assert int8_matmul_func(get_scheme("q8f16"), 48, 256, (1, 1)) is None


def test_refuses_unsupported():
    assert int8_gemm_func(get_scheme("q8f16"), 128, 256) is None
    assert int8_gemm_func(get_scheme("q4f16"), 100, 256) is None
    assert int8_gemv_func(get_scheme("q8f16"), 128, 256) is None
    assert int8_gemv_func(get_scheme("q4f16"), 128, 256, (1, 2)) is None
