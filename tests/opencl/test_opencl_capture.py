"""What the OpenCL build of the tiny Llama 3 for Adreno 750 contains, checked without a driver:
per-kernel source and launch information captured from the TIR, the host replay's launch
dimensions against the kernels' own thread extents, the target's limits, and the unmodified fp16
source through clang's OpenCL front end."""

from __future__ import annotations

import re

import numpy as np
import pytest

import opencl_cases as oc
from targets.backends.opencl import (
    OpenCLSourceError,
    clang_syntax_check,
    emulate_fp16,
    find_clang,
    source_signature,
    split_kernels,
    uses_fp16,
)


@pytest.fixture(scope="module")
def model():
    return oc.tiny_model_build()[0]


def test_every_kernel_has_source_params_and_launch_info(model):
    sources = split_kernels(model.source)
    assert set(sources) == set(model.kernels)
    assert len(model.kernels) >= 30  # matmuls, norms, gathers, activations, paged KV cache
    for name, k in model.kernels.items():
        assert re.search(rf"__kernel void {name}\(", k.source), name
        assert k.launch_tags and all(t.split(".")[0] in ("blockIdx", "threadIdx") for t in k.launch_tags), k.launch_tags
        assert set(k.thread_extents) == set(k.launch_tags), name
        c_types = {"float16": "half", "float32": "float", "int32": "int", "uint32": "uint", "int64": "long"}
        expected = [c_types[p.dtype] + (" *" if p.kind == "buffer" else "") for p in k.params]
        assert [t for t, _ in source_signature(name, k.source)] == expected, name
    launched = {c.kernel for f in model.functions.values() for c in f.calls}
    assert launched == set(model.kernels)  # every kernel is reachable from a host function
    assert not {n: f.problem for n, f in model.functions.items() if f.problem}  # all replayable


def test_kernels_fit_the_adreno_750_target(model):
    """Work-group size and static __local memory within what the registry gives the target
    (256 threads, 32 KiB); no 64-bit scalar arguments (ForceNarrowIndexToInt32)."""
    for name, k in model.kernels.items():
        assert k.max_threads == 256 and k.max_shared_memory == 32768
        threads = 1
        for tag, e in k.thread_extents.items():
            if tag.startswith("threadIdx."):
                threads *= int(e)  # constant block sizes: dynamic ones would need the launcher's check
        assert threads <= k.max_threads, name
        assert k.local_bytes <= k.max_shared_memory, name
        assert not [p for p in k.params if p.kind == "scalar" and p.dtype in ("int64", "uint64")], name


def test_host_replay_agrees_with_the_kernels_thread_extents():
    """Two derivations of the launch: the values the host code passes vs the device function's
    thread_extent expressions evaluated on the kernel's own scalar arguments."""
    build = oc.linear_build("q4f16", oc.HIDDEN, oc.QKV, "seq_len")
    name = oc.function(build, "dequant_matmul")
    for seq in (1, 7, 64):
        x = np.zeros((1, seq, oc.HIDDEN), np.float16)
        args = [x, np.zeros((oc.QKV, oc.HIDDEN // 8), np.uint32), np.zeros((oc.QKV, oc.HIDDEN // 32), np.float16),
                np.zeros((1, seq, oc.QKV), np.float16)]  # fmt: skip
        [(call, values, grid, block)] = build.function(name).resolve(args)
        kernel = build.kernel(call.kernel)
        scalars = {p.name: v for p, v in zip(kernel.params, values) if p.kind == "scalar"}
        assert kernel.launch_dims(scalars) == (grid, block)
        assert np.prod(grid) * np.prod(block) >= seq * oc.QKV  # at least one work-item per output


def test_fp16_emulation_rewrite(model):
    src = model.kernel("rms_norm_kernel").source
    assert uses_fp16(src)
    em = emulate_fp16(src)
    assert not uses_fp16(em) and "cl_khr_fp16" not in em
    assert re.search(r"__global float\* restrict T_cast_ptr", em)
    with pytest.raises(OpenCLSourceError, match="as_half"):
        emulate_fp16("__kernel void k(__global half* a) { a[0] = as_half((ushort)1); }")


def test_unmodified_fp16_source_passes_clang_opencl_frontend(model):
    """The source exactly as a phone driver gets it (cl_khr_fp16 on, OpenCL C 1.2)."""
    if find_clang() is None:
        pytest.skip("needs clang with an OpenCL front end (pocl-opencl-icd brings clang-15)")
    clang_syntax_check(model.source)
    with pytest.raises(OpenCLSourceError, match="undeclared"):
        clang_syntax_check("__kernel void k(__global half* a) { a[0] = undefined_thing; }")


def test_every_opencl_soc_gets_the_device_target_tested_here():
    """The kernels verified here are those of every Adreno/Mali SoC in the registry: their OpenCL
    device targets are identical (a SoC whose target differs would need its own run)."""
    from targets import load_soc
    from targets.registry import SHIPPED_DIR

    tested = dict(load_soc(oc.SOC).tvm_device_target("opencl"))
    tested.pop("host")
    socs = [load_soc(p.stem) for p in sorted(SHIPPED_DIR.glob("*.toml")) if p.stem != "host"]
    opencl = [s for s in socs if "opencl" in s.gpu_apis]
    assert len(opencl) >= 2  # Adreno and Mali
    for soc in opencl:
        dev = dict(soc.tvm_device_target("opencl"))
        dev.pop("host")
        assert dev == tested, soc.name
