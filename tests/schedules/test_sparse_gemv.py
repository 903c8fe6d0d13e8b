"""The activation-sparse decode GEMV (schedules/cpu/sparse_gemv.py) against its numpy definition: the int8
numerics of int8_dot.numpy_reference on the thresholded row, over q4f16k weights whose nibbles are read back by
the layout's own numpy definition (kmajor.py), for every dot-product ISA this host executes."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from compiler.quantization import get_scheme
from schedules.cpu.int8_dot import numpy_reference
from schedules.cpu.params import CPUParams
from schedules.cpu.sparse_gemv import sparse_gemv_func

from test_int8_gemm import HOST, ISAS, _require


def _run(func, x, threshold, packed, n):
    f = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=HOST)["main"]
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.full((1, 1, n), np.nan, np.float32), dev)
    f(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(np.array([threshold], np.float32), dev),
      *(tvm.runtime.tensor(a, dev) for a in packed.values()), y)
    return y.numpy()[0, 0]


def _nibbles_by_definition(qweight: np.ndarray, n: int, k: int) -> np.ndarray:
    """[N, K] nibbles of a blocked q4f16k qweight [K, N/8], by the formula in kmajor.py's layout():
    n = 128b + 64h + 16v + 4c + u is nibble 2u + h of word 16b + 4c + v of row k."""
    ch = np.arange(n)
    b, h, v, c, u = ch // 128, (ch % 128) // 64, (ch % 64) // 16, (ch % 16) // 4, ch % 4
    words = qweight[np.arange(k)[None, :], (16 * b + 4 * c + v)[:, None]]
    return (words >> (8 * u + 4 * h).astype(np.uint32)[:, None]) & 15


# K: one group, several, a count the tasks do not divide; N: one 128-channel block, several; tasks: one, the
# cores, more than the groups (clamped), a last task with fewer groups
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k,n,tasks,ahead", [(32, 128, 2, 0), (256, 384, 1, 2), (768, 256, 2, 0), (2048, 1024, 3, 3),
                                             (96, 3072, 7, 1), (160, 2048, 4, 1)])
def test_matches_reference(isa, k, n, tasks, ahead):
    _require(isa)
    scheme = get_scheme("q4f16k")
    rng = np.random.default_rng(k + n)
    w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    packed = scheme.pack(w)
    nib = _nibbles_by_definition(packed["qweight"], n, k)
    assert np.array_equal(nib, scheme.nibbles(packed))
    wscale = np.ascontiguousarray(packed["scale"].T)  # [N, K / 32]
    x = rng.standard_normal((1, 1, k)).astype(np.float32)
    func = sparse_gemv_func(n, k, tasks, isa=isa, ahead=ahead)
    # no input zeroed, about half, nearly all (most groups empty, the rest with 1..3 rows: padded quads), none kept
    for sparsity in (0.0, 0.5, 0.97, 1.0):
        t = float(np.quantile(np.abs(x), sparsity)) if sparsity else 0.0
        masked = np.where(np.abs(x) > t, x, 0).reshape(1, k)
        ours = _run(func, x, t, packed, n)
        ref = numpy_reference(masked, nib, wscale)[0]
        scale = max(float(np.abs(ref).max()), 1e-30)
        assert np.abs(ours - ref).max() <= 1e-5 * scale, (sparsity, np.abs(ours - ref).max())
        if sparsity == 1.0:
            assert not ours.any()  # every input at or below the threshold: nothing read, y = 0
        # and against f32 on the dequantized weights: the int8 rounding's own effect
        f32 = masked @ scheme.dequantize(packed).T
        assert np.abs(ours - f32[0]).max() <= 2e-2 * max(float(np.abs(f32).max()), 1e-30)


def test_does_not_apply_where_the_layout_does_not():
    assert sparse_gemv_func(200, 256, 2) is None  # N not a multiple of 128: q4f16k keeps sequential nibbles
    assert sparse_gemv_func(256, 48, 2) is None  # K not a multiple of 32
    assert sparse_gemv_func(256, 256, 2, x_shape=(1, 4)) is None  # prefill rows: the masked dense GEMM


@pytest.mark.parametrize("l1d,cores", [(32 << 10, 1), (48 << 10, 2), (64 << 10, 8)])
def test_derived_knobs(l1d, cores):
    """One range of K per core; the prefetch reaches about a quarter of L1d (at least one quad) for the Llama 3
    widths; none where the facts say no software prefetch."""
    p = CPUParams(l1d_bytes=l1d, num_cores=cores)
    assert p.sparse_gemv_splits() == cores
    for n in (3072, 2048, 16384, 6144, 4096, 28672, 384, 256):
        quads = p.sparse_gemv_prefetch_quads(n)
        assert quads >= 1 and (quads == 1 or quads * 2 * n <= l1d // 4)
    assert CPUParams(stream_prefetch="none").sparse_gemv_prefetch_quads(2048) == 0
