"""The model's main kernels, as emitted for Adreno 750 (snapdragon-8-gen-3, OpenCL), run on an
OpenCL device (pocl's CPU device in CI) and compared with numpy.

Each test replays the lowered host function of one Relax-level PrimFunc: its kernels, the
arguments and the launch dimensions the host code computes (targets.backends.opencl).
"""

from __future__ import annotations

import numpy as np
import pytest

import opencl_cases as oc
from targets.backends.opencl import run_function

SCHEMES = ["q4f16", "q8f16", "q0f16"]


def _weights(scheme_name, n, k, rng):
    from compiler.quantization import get_scheme

    scheme = get_scheme(scheme_name)
    packed = scheme.pack((rng.standard_normal((n, k)) * 0.05).astype(np.float32))
    names = scheme.param_names(n, k)
    return [packed[s] for s in names], oc.f32(scheme.dequantize(packed))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gemv_decode(scheme, device, rng):
    """Decode: x [1, 1, 256] fp16 @ deq(W [384, 256])^T -> fp16, dequantization fused (GEMV rule)."""
    build = oc.linear_build(scheme, oc.HIDDEN, oc.QKV, 1)
    weights, w = _weights(scheme, oc.QKV, oc.HIDDEN, rng)
    x = rng.standard_normal((1, 1, oc.HIDDEN)).astype(np.float16)
    args = [x, *weights, np.zeros((1, 1, oc.QKV), np.float16)]
    out = run_function(build, oc.function(build, "dequant_matmul"), args, device)[-1]
    oc.assert_close_f16(out, oc.f32(x) @ w.T, what=f"{scheme} gemv")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gemm_prefill_symbolic_seq(scheme, device, rng):
    """Prefill: x [1, seq, 256] with a symbolic seq (one executable for every chunk length)."""
    build = oc.linear_build(scheme, oc.HIDDEN, oc.QKV, "seq_len")
    name = oc.function(build, "dequant_matmul")
    weights, w = _weights(scheme, oc.QKV, oc.HIDDEN, rng)
    for seq in (1, 5):
        x = rng.standard_normal((1, seq, oc.HIDDEN)).astype(np.float16)
        out = run_function(build, name, [x, *weights, np.zeros((1, seq, oc.QKV), np.float16)], device)[-1]
        oc.assert_close_f16(out, oc.f32(x) @ w.T, what=f"{scheme} gemm seq={seq}")


@pytest.mark.parametrize("seq", [1, "seq_len"])
def test_down_proj_with_residual(seq, device, rng):
    """down_proj (768 -> 256, q4f16) fused with the residual add, decode and symbolic prefill."""
    build = oc.linear_build("q4f16", oc.FFN, oc.HIDDEN, seq, residual=True)
    name = oc.function(build, "fused_dequant_matmul_add")
    weights, w = _weights("q4f16", oc.HIDDEN, oc.FFN, rng)
    n = 1 if seq == 1 else 3
    x = rng.standard_normal((1, n, oc.FFN)).astype(np.float16)
    r = rng.standard_normal((1, n, oc.HIDDEN)).astype(np.float16)
    assert len(build.function(name).params) == 5  # x, qweight, scale, residual, out
    out = run_function(build, name, [x, *weights, r, np.zeros((1, n, oc.HIDDEN), np.float16)], device)[-1]
    oc.assert_close_f16(out, oc.f32(r) + oc.f32(x) @ w.T, what="down_proj+residual")


def test_lm_head_float32_logits(device, rng):
    """Tied lm_head (q4f16 embedding table, vocab 4096): fp16 hidden -> float32 logits."""
    build = oc.lm_head_build("q4f16")
    weights, w = _weights("q4f16", oc.VOCAB, oc.HIDDEN, rng)
    x = rng.standard_normal((1, 1, oc.HIDDEN)).astype(np.float16)
    args = [x, *weights, np.zeros((1, 1, oc.VOCAB), np.float32)]
    out = run_function(build, oc.function(build, "dequant_matmul"), args, device)[-1]
    assert out.dtype == np.float32
    ref = oc.f32(x) @ w.T
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-3 * np.abs(ref).max())


@pytest.mark.parametrize("seq", [1, "seq_len"])
def test_rmsnorm(seq, device, rng):
    build = oc.rmsnorm_build(seq)
    name = oc.function(build, "rms_norm")
    for n in ([1] if seq == 1 else [1, 6]):
        x = (rng.standard_normal((1, n, oc.HIDDEN)) * 3).astype(np.float16)
        w = rng.uniform(0.5, 1.5, oc.HIDDEN).astype(np.float16)
        out = run_function(build, name, [x, w, np.zeros_like(x)], device)[-1]
        oc.assert_close_f16(out, oc.rms_norm(x, w), what=f"rmsnorm n={n}")


@pytest.mark.parametrize("scheme", ["q4f16", "q0f16"])
def test_embedding_gather(scheme, device, rng):
    """QuantizedEmbedding: ids [seq] int32 -> rows of deq(table [4096, 256]) in fp16."""
    build = oc.embedding_build(scheme)
    weights, table = _weights(scheme, oc.VOCAB, oc.HIDDEN, rng)
    ids = np.array([0, 4095, 17, 17, 2048, 1], np.int32)
    args = [ids, *weights, np.zeros((6, oc.HIDDEN), np.float16)]
    out = run_function(build, oc.function(build, "dequant_take"), args, device)[-1]
    np.testing.assert_array_equal(out, table[ids].astype(np.float16))  # a gather: exact


@pytest.mark.parametrize("seq", [1, "seq_len"])
def test_swiglu(seq, device, rng):
    build = oc.swiglu_build(seq)
    name = oc.function(build, "fused_split_silu_multiply")
    n = 1 if seq == 1 else 4
    x = (rng.standard_normal((1, n, 2 * oc.FFN)) * 2).astype(np.float16)
    out = run_function(build, name, [x, np.zeros((1, n, oc.FFN), np.float16)], device)[-1]
    g, u = oc.f32(x[..., : oc.FFN]), oc.f32(x[..., oc.FFN :])
    oc.assert_close_f16(out, oc.silu(g) * u, what="swiglu")
