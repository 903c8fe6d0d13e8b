"""Compile-only: the rules apply for an Android aarch64 target (NEON/dotprod/i8mm) and codegen succeeds."""

from __future__ import annotations

import os
import tarfile

import pytest
import tvm
from sched_helpers import ANDROID, loop_kinds, rules_used, schedule_func
from tvm.target import Target

from schedules.cpu.params import CPUParams
from schedules.reference import dequant_matmul_func, embedding_func

TARGET = Target(ANDROID)


def test_params_from_android_target():
    p = CPUParams.from_target(TARGET)
    assert p.arch == "aarch64" and p.vector_bits == 128 and p.num_vector_regs == 32
    assert p.lanes(32) == 4 and p.num_cores >= 1
    # not the host: cache sizes come from the per-arch defaults
    assert p.l1d_bytes == 64 * 1024


CASES = [
    ("gemv_q4", lambda: dequant_matmul_func("q4f16", 256, 512, 1, epilogue="add"), {"cpu.DequantGEMV"}),
    ("gemv_q4p", lambda: dequant_matmul_func("q4f16p", 256, 512, 1), {"cpu.DequantGEMV"}),
    ("gemv_q8", lambda: dequant_matmul_func("q8f16", 256, 512, 1), {"cpu.DequantGEMV"}),
    ("gemm_q4", lambda: dequant_matmul_func("q4f16", 256, 512, "seq", epilogue="add", separate_dequant=False), {"cpu.DequantGEMM.bcast"}),
    ("gemm_q0f16", lambda: dequant_matmul_func("q0f16", 256, 512, "seq"), {"cpu.DequantGEMM.dot_pad"}),
    ("embedding_q4", lambda: embedding_func("q4f16", 300, 256), {"cpu.Elementwise"}),
]


@pytest.mark.parametrize("name,make,rules", CASES, ids=[c[0] for c in CASES])
def test_android_compile(name, make, rules, tmp_path):
    mod = schedule_func(make(), TARGET)
    func = mod["main"]
    assert rules_used(func) == rules
    kinds = loop_kinds(func)
    assert "vectorized" in kinds
    if not name.startswith("embedding"):
        assert "parallel" in kinds
    lib = tvm.compile(mod, target=TARGET)
    asm = lib.mod.inspect_source("asm")
    assert "fmla" in asm or name.startswith("embedding"), "no NEON FMA in the generated code"
    assert ".4s" in asm  # 128-bit NEON vectors
    path = os.path.join(tmp_path, f"{name}.tar")
    lib.export_library(path, fcompile=tvm.support.tar.tar)
    with tarfile.open(path) as tar:
        objs = [m for m in tar.getmembers() if m.name.endswith(".o")]
        assert objs
        head = tar.extractfile(objs[0]).read(20)
    assert head[:4] == b"\x7fELF" and int.from_bytes(head[18:20], "little") == 183  # EM_AARCH64


@pytest.mark.parametrize("kernel,n,k", [("gemv", 64, 256), ("gemv", 48, 192), ("gemm", 64, 256), ("gemm", 48, 192)])
def test_int8_kernels_use_sdot(kernel, n, k):
    """The int8-activation kernels for AArch64 dotprod (planar K = 256, sequential K = 192): NEON ``sdot``
    and, for the planar GEMV, the byte transpose as ``tbl``. Their numerics run under qemu in
    tests/native/test_soc_package_native.py (the default phone build)."""
    from compiler.quantization import get_scheme
    from schedules.cpu.int8_dot import int8_dot_isa
    from schedules.cpu.int8_gemm import int8_gemm_func
    from schedules.cpu.int8_gemv import int8_gemv_func

    assert int8_dot_isa(TARGET) == "dotprod"
    q4 = get_scheme("q4f16")
    make = int8_gemv_func if kernel == "gemv" else int8_gemm_func
    func = make(q4, n, k, isa="dotprod").with_attr("global_symbol", "main")
    asm = tvm.compile(tvm.IRModule({"main": func}), target=TARGET).mod.inspect_source("asm")
    assert "sdot" in asm
    if kernel == "gemv" and k % 128 == 0:
        assert "tbl" in asm
    assert int8_dot_isa(Target({"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon"]})) is None


@pytest.mark.parametrize("kernel,n,k", [("gemv", 64, 256), ("gemv", 48, 192), ("gemm", 64, 256)])
def test_cb4_kernels_look_up_with_tbl(kernel, n, k):
    """cb4f16 for AArch64 dotprod: the signed codes by ``tbl`` from the row's 16-byte table (no offset), then
    ``sdot``. Compile only here (the x86 builds of the same kernels run against the reference in
    tests/schedules/test_int8_gemm.py)."""
    from compiler.quantization import get_scheme
    from schedules.cpu.int8_gemm import int8_gemm_func
    from schedules.cpu.int8_gemv import int8_gemv_func

    make = int8_gemv_func if kernel == "gemv" else int8_gemm_func
    func = make(get_scheme("cb4f16"), n, k, isa="dotprod").with_attr("global_symbol", "main")
    asm = tvm.compile(tvm.IRModule({"main": func}), target=TARGET).mod.inspect_source("asm")
    assert "sdot" in asm
    if kernel == "gemv":
        assert "tbl" in asm
