"""The int8-activation prefill GEMM (schedules/cpu/int8_gemm.py) against its numpy definition and f32."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.target import Target, codegen

from compiler.quantization import get_scheme
from schedules.cpu.int8_gemm import has_vnni, int8_gemm_func, numpy_reference

HOST = Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2})
pytestmark = pytest.mark.skipif(not has_vnni(HOST), reason="no AVX-512 VNNI on this host")


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


@pytest.mark.parametrize("k,n,s", [(256, 128, 1), (256, 192, 7), (512, 256, 33), (1024, 64, 4), (192, 64, 5)])
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


def test_refuses_unsupported():
    assert int8_gemm_func(get_scheme("q8f16"), 128, 256) is None
    assert int8_gemm_func(get_scheme("q4f16"), 100, 256) is None
