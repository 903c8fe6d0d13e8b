"""The launcher itself: direct kernel runs, sensitivity to the launch geometry, limit checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import opencl_cases as oc
from targets.backends.opencl import OpenCLRuntimeError, run_function, run_kernel


def _decode_case(rng):
    from compiler.quantization import get_scheme

    scheme = get_scheme("q4f16")
    packed = scheme.pack((rng.standard_normal((oc.QKV, oc.HIDDEN)) * 0.05).astype(np.float32))
    x = rng.standard_normal((1, 1, oc.HIDDEN)).astype(np.float16)
    ref = oc.f32(x).reshape(1, -1) @ oc.f32(scheme.dequantize(packed)).T
    return x, packed, ref.reshape(1, 1, -1)


def _gemv(build):
    [call] = build.function(oc.function(build, "dequant_matmul")).calls
    return build.kernel(call.kernel)


def test_run_kernel_by_parameter_name_matches_host_replay(device, rng):
    build = oc.linear_build("q4f16", oc.HIDDEN, oc.QKV, 1)
    kernel = _gemv(build)
    x, packed, ref = _decode_case(rng)
    by_name = {"x": x, "proj_qweight": packed["qweight"], "proj_scale": packed["scale"],
               "dequant_matmul_cast": np.zeros((1, 1, oc.QKV), np.float16)}  # fmt: skip
    out = run_kernel(kernel, by_name, device)["dequant_matmul_cast"]
    oc.assert_close_f16(out, ref, what="run_kernel")
    args = [x, packed["qweight"], packed["scale"], np.zeros_like(out)]
    replay = run_function(build, oc.function(build, "dequant_matmul"), args, device)
    np.testing.assert_array_equal(out, replay[-1])


def test_a_short_grid_leaves_outputs_unwritten(device, rng):
    """The comparison is sensitive to the launch: half the work groups -> half the outputs stay 0."""
    build = oc.linear_build("q4f16", oc.HIDDEN, oc.QKV, 1)
    kernel = _gemv(build)
    x, packed, ref = _decode_case(rng)
    (grid, block) = kernel.launch_dims({})
    assert grid[0] >= 2
    args = {"x": x, "proj_qweight": packed["qweight"], "proj_scale": packed["scale"],
            "dequant_matmul_cast": np.zeros((1, 1, oc.QKV), np.float16)}  # fmt: skip
    out = run_kernel(kernel, args, device, grid=(grid[0] // 2, *grid[1:]), block=block)["dequant_matmul_cast"]
    assert out[..., oc.QKV // 2 :].any() == False  # noqa: E712 - numpy bool
    oc.assert_close_f16(out[..., : oc.QKV // 2], ref[..., : oc.QKV // 2], what="first half")


def test_limits_and_dtypes_are_checked(device, rng):
    build = oc.linear_build("q4f16", oc.HIDDEN, oc.QKV, 1)
    kernel = _gemv(build)
    x, packed, _ = _decode_case(rng)
    args = {"x": x, "proj_qweight": packed["qweight"], "proj_scale": packed["scale"],
            "dequant_matmul_cast": np.zeros((1, 1, oc.QKV), np.float16)}  # fmt: skip
    small = dataclasses.replace(kernel, max_threads=int(np.prod(kernel.launch_dims({})[1])) // 2)
    with pytest.raises(OpenCLRuntimeError, match="max_num_threads"):
        run_kernel(small, args, device)
    with pytest.raises(OpenCLRuntimeError, match="float16"):
        run_kernel(kernel, {**args, "x": x.astype(np.float32)}, device)
