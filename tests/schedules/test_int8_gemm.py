"""The int8-activation kernels (schedules/cpu/int8_gemm.py prefill GEMM, int8_gemv.py decode GEMV) against
their numpy definition (schedules/cpu/int8_dot.py: numpy_reference) and f32, for every dot-product ISA this
host executes; the instruction selection of each ISA checked in the assembly (compile only)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm.target import Target, codegen

from compiler.quantization import get_scheme
from schedules.cpu.int8_dot import PAIR_TERMS, dot4, dot4_sum, int8_dot_isa, numpy_reference, numpy_reference_int
from schedules.cpu.int8_gemm import int8_gemm_func, int8_matmul_func
from schedules.cpu.int8_gemv import int8_gemv_func

HOST = Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu(), "num-cores": 2})
HOST_FEATURES = {str(f) for f in codegen.llvm_get_cpu_features(HOST)}
# the LLVM features whose instructions a kernel of each ISA contains (any one set suffices): the 8-lane
# vpdpbusd is the VEX form with AVX-VNNI and the EVEX one with AVX-512 VNNI + VL
_NEEDS = {
    "avx512vnni": [{"avx512vnni", "avx512bw", "avx512vl"}],
    "avxvnni": [{"avxvnni", "avx2"}, {"avx512vnni", "avx512vl"}],
    "avx2": [{"avx2"}],
    "dotprod": [{"dotprod"}],
}
ISAS = list(_NEEDS)
HASWELL = Target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
# ISA extensions an -mcpu=haswell build may use (LLVM's haswell less its tuning flags)
HASWELL_ISA = {"avx2", "fma", "f16c", "bmi", "bmi2", "lzcnt", "movbe", "popcnt"}


def _require(isa: str) -> None:
    """Skip unless this host executes ``isa``'s kernels, naming the missing CPU features."""
    if not any(need <= HOST_FEATURES for need in _NEEDS[isa]):
        missing = " or ".join("+".join(sorted(need - HOST_FEATURES)) for need in _NEEDS[isa])
        pytest.skip(f"this CPU lacks {missing} (needed to run the {isa} kernels)")


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


def _check(func, k, n, x_shape, seed, big=False, target=HOST, quant="q4f16"):
    """Run ``func`` (built for ``target``) on random q4 (or cb4) weights and x of shape x_shape + (k,); compare
    with numpy_reference (the nibbles from _nibbles, not from the kernels' own expressions; cb4: the codes they
    index) and with f32."""
    scheme = get_scheme(quant)
    f = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target)["main"]
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
    f(tvm.runtime.tensor(x, dev), *(tvm.runtime.tensor(a, dev) for a in packed.values()), y)
    ours = y.numpy().reshape(-1, n)
    if quant == "q4f16":
        ref = numpy_reference(x.reshape(-1, k), _nibbles(packed["qweight"]), packed["scale"])
    else:  # the row's int8 codes at the nibbles, the row scale for every group
        codes = np.take_along_axis(packed["codebook"].astype(np.int64), _nibbles(packed["qweight"]).astype(np.int64), 1)
        ref = numpy_reference_int(x.reshape(-1, k), codes, np.repeat(packed["scale"], k // 32, axis=1))
    # integer dots are exact; only the float32 order of the group sums differs
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()
    # bound vs f32 activations on the same weights: x rounded to 1/254 of its group max per element
    f32 = x.reshape(-1, k) @ scheme.dequantize(packed).T
    assert np.abs(ours - f32).max() <= 2e-2 * np.abs(f32).max()


# planar (K % 128 == 0) and sequential (192); rows not a multiple of the register tile's (4 or 3), N not a
# multiple of the 64-column task (192, 48: narrower tasks)
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k,n,s", [(256, 128, 1), (256, 192, 7), (512, 256, 33), (1024, 64, 4), (192, 64, 5), (256, 48, 3)])
def test_matches_reference(isa, k, n, s):
    _require(isa)
    _check(int8_gemm_func(get_scheme("q4f16"), n, k, isa=isa), k, n, (1, s), seed=k + n + s)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mr,nrv,nt", [(1, 1, 16), (2, 4, 32), (6, 1, 128), (5, 2, None)])
def test_gemm_tiles(isa, mr, nrv, nt):
    """Explicit register tiles and task widths (the tuner's knobs), planar and sequential K."""
    _require(isa)
    for k in (256, 192):
        _check(int8_gemm_func(get_scheme("q4f16"), 128, k, mr=mr, nrv=nrv, nt=nt, isa=isa), k, 128, (1, 11), seed=mr * nrv + k)


# planar (K % 128 == 0: 16 words = 1 or 2 vectors, 4 groups) and sequential (K = 64, 192: two groups per 8-word
# vector, one per 4-word one; K = 32, 96: an odd group count, 4-word vectors); an odd number of units (128, 384:
# one accumulator); N not a multiple of anything (36, 6, 5, 3); the decode shape (1, 1) and a 2-D (1, K) input
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(
    "k,n,x_shape",
    [(128, 16, (1, 1)), (256, 128, (1, 1)), (2048, 36, (1, 1)), (384, 6, (1,)), (192, 64, (1, 1)), (64, 24, (1, 1)),
     (96, 5, (1, 1)), (32, 3, (1, 1))],
)
def test_gemv_matches_reference(isa, k, n, x_shape):
    _require(isa)
    _check(int8_gemv_func(get_scheme("q4f16"), n, k, x_shape, isa=isa), k, n, x_shape, seed=k * n)


CB4_ISAS = ["avx512vnni", "avxvnni", "dotprod"]  # AVX2's vpmaddubsw would saturate on codes + 128


@pytest.mark.parametrize("isa", CB4_ISAS)
@pytest.mark.parametrize("k,n,rows", [(256, 128, 1), (192, 64, 1), (2048, 36, 1), (96, 16, 1), (256, 128, 7), (192, 64, 5),
                                      (512, 256, 33)])
def test_cb4_lut_kernels_match_reference(isa, k, n, rows):
    """cb4f16: the nibbles index the row's 16 int8 codes with one byte shuffle (vpshufb / tbl) before the
    dot products; the row scale replaces the group scales. Exact against the integer reference."""
    _require(isa)
    cb4 = get_scheme("cb4f16")
    func = int8_gemv_func(cb4, n, k, isa=isa) if rows == 1 else int8_gemm_func(cb4, n, k, isa=isa)
    _check(func, k, n, (1, rows), seed=k + n + rows, quant="cb4f16")


def test_cb4_kernels_refused_where_they_would_saturate():
    cb4 = get_scheme("cb4f16")
    assert int8_gemv_func(cb4, 64, 256, isa="avx2") is None
    assert int8_gemm_func(cb4, 64, 256, isa="avx2") is None
    for name in ("cb3f16", "cb8f16", "q8f16"):
        assert int8_gemv_func(get_scheme(name), 64, 256, isa="avx512vnni") is None


@pytest.mark.parametrize("mcpu", ["znver4", "alderlake"])
def test_cb4_gemv_looks_up_with_one_shuffle(mcpu):
    """Compile only: the cb4 GEMV's table lookup is vpshufb on the dot product's registers."""
    target = Target({"kind": "llvm", "num-cores": 2, "mcpu": mcpu})
    isa = int8_dot_isa(target)
    asm = _asm(int8_gemv_func(get_scheme("cb4f16"), 64, 256, isa=isa), target)
    reg = "zmm" if isa == "avx512vnni" else "ymm"
    assert re.search(rf"vpshufb\s+.*%{reg}", asm) and "vpdpbusd" in asm
    assert "vpgather" not in asm  # no gathers from the table


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("k", [256, 192])
def test_wide_dynamic_range(isa, k):
    """Group scales 1e3 apart in one row and an activation group 1e4 larger: per-group int32 sums stay
    exact and each group gets its own scales (a lane mixing two groups would be off by orders of magnitude)."""
    _require(isa)
    _check(int8_gemv_func(get_scheme("q4f16"), 64, k, isa=isa), k, 64, (1, 1), seed=k, big=True)
    _check(int8_gemm_func(get_scheme("q4f16"), 64, k, isa=isa), k, 64, (1, 5), seed=k + 1, big=True)


@pytest.mark.parametrize("kernel", ["gemv", "gemm"])
@pytest.mark.parametrize("k", [256, 192, 96])
def test_haswell_build_runs_here(kernel, k):
    """The kernels as built for -mcpu=haswell (AVX2 only, what int8_dot_isa picks there), run on this CPU:
    every x86 CI machine has AVX2, whatever else it has."""
    missing = HASWELL_ISA - HOST_FEATURES
    if missing:
        pytest.skip(f"this CPU lacks {'+'.join(sorted(missing))} (needed to run an -mcpu=haswell build)")
    isa = int8_dot_isa(HASWELL)
    q4 = get_scheme("q4f16")
    func = int8_gemv_func(q4, 48, k, isa=isa) if kernel == "gemv" else int8_gemm_func(q4, 48, k, isa=isa)
    _check(func, k, 48, (1, 1) if kernel == "gemv" else (1, 7), seed=k, target=HASWELL)


def _asm(func, target) -> str:
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=target).mod.inspect_source("asm")


# (target, the dot-product instruction, its vector registers, what must not appear); the registers are those of
# the planar GEMV and the GEMM, the sequential GEMV of AVX-512 VNNI keeps its 4-word (xmm) vectors
ASM_CASES = {
    "haswell": ({"mcpu": "haswell"}, "vpmaddubsw", "ymm", ("vpdpbusd", "zmm")),
    "alderlake": ({"mcpu": "alderlake"}, "vpdpbusd", "ymm", ("zmm", "vpmaddubsw")),
    "mattr-avxvnni": ({"mcpu": "haswell", "mattr": ["+avxvnni"]}, "vpdpbusd", "ymm", ("zmm", "vpmaddubsw")),
    "znver4": ({"mcpu": "znver4"}, "vpdpbusd", "zmm", ("vpmaddubsw",)),
}


@pytest.mark.parametrize("case", list(ASM_CASES))
@pytest.mark.parametrize("kernel,k", [("gemv", 256), ("gemv", 192), ("gemm", 256)])
def test_asm_instruction_selection(case, kernel, k):
    """Compile only: each x86 target gets its ISA's dot product, on the intended registers (planar GEMV,
    sequential GEMV, GEMM)."""
    attrs, instr, reg, absent = ASM_CASES[case]
    target = Target({"kind": "llvm", "num-cores": 2, **attrs})
    isa = int8_dot_isa(target)
    if isa == "avx512vnni" and kernel == "gemv" and k % 128:
        reg = "xmm"
    q4 = get_scheme("q4f16")
    func = int8_gemv_func(q4, 64, k, isa=isa) if kernel == "gemv" else int8_gemm_func(q4, 64, k, isa=isa)
    asm = _asm(func, target)
    uses = re.findall(rf"^\s*(?:\{{vex\}}\s*)?{instr}\s+(.*)$", asm, re.M)
    assert uses, f"no {instr} for {case}"
    assert all(f"%{reg}" in u for u in uses), uses[:4]
    for a in absent:
        assert a not in asm, f"{a} in the {case} build"
    if instr == "vpdpbusd" and reg == "ymm":  # AVX-VNNI: the VEX encoding (no AVX-512 on these CPUs)
        assert re.search(r"\{vex\}\s+vpdpbusd", asm)
    if instr == "vpmaddubsw":  # AVX2: fewer vpmaddwd than vpmaddubsw (pair sums added in int16 first)
        assert 0 < asm.count("vpmaddwd") < len(uses)


def test_isa_choice():
    """int8_dot_isa: AVX-512 VNNI first (when BW and VL are there too), then AVX-VNNI, then AVX2; dotprod
    on AArch64; None without any (AArch64 without dotprod, the baseline x86-64 of a bare ``llvm``, not LLVM)."""
    cases = [
        ({"mcpu": "znver4"}, "avx512vnni"),
        ({"mcpu": "sapphirerapids"}, "avx512vnni"),  # has AVX-VNNI too
        ({"mcpu": "alderlake"}, "avxvnni"),
        ({"mcpu": "haswell", "mattr": ["+avxvnni"]}, "avxvnni"),
        ({"mcpu": "haswell"}, "avx2"),
        ({"mcpu": "znver3"}, "avx2"),
        ({"mcpu": "skylake-avx512", "mattr": ["+avx512vnni", "-avx512vl"]}, "avx2"),  # VNNI without VL
        ({"mtriple": "aarch64-linux-android", "mattr": ["+neon", "+dotprod"]}, "dotprod"),
        ({"mtriple": "aarch64-linux-android", "mattr": ["+neon"]}, None),
        ({"mtriple": "x86_64-linux-gnu"}, None),
        ({}, None),
    ]
    for attrs, want in cases:
        assert int8_dot_isa(Target({"kind": "llvm", **attrs})) == want, attrs
    assert int8_dot_isa(Target("c")) is None


def test_dispatch_rule():
    """One row -> GEMV, [b, s] -> GEMM; both need N % 16 == 0 so prefill and decode round the same layers."""
    q4 = get_scheme("q4f16")
    for isa in ISAS:
        assert int8_matmul_func(q4, 48, 256, (1, 1), isa=isa) is not None
        assert int8_matmul_func(q4, 48, 192, (1, 5), isa=isa) is not None
        assert int8_matmul_func(q4, 40, 256, (1, 1), isa=isa) is None and int8_matmul_func(q4, 40, 256, (1, 5), isa=isa) is None
        assert int8_matmul_func(get_scheme("q8f16"), 48, 256, (1, 1), isa=isa) is None


@pytest.mark.parametrize("isa", ISAS)
def test_refuses_unsupported(isa):
    q4 = get_scheme("q4f16")
    assert int8_gemm_func(get_scheme("q8f16"), 128, 256, isa=isa) is None
    assert int8_gemm_func(q4, 100, 256, isa=isa) is None
    assert int8_gemv_func(get_scheme("q8f16"), 128, 256, isa=isa) is None
    assert int8_gemv_func(q4, 128, 256, (1, 2), isa=isa) is None


def test_dot_product_refusals():
    """No silent wrong instruction: unknown widths raise, and AVX2 refuses more int16 pair-sum terms than
    can be added without saturating (PAIR_TERMS x 3810 <= 32767)."""
    w = tvm.tirx.Var("w", "int32x8")
    with pytest.raises(ValueError):
        dot4("avxvnni", w, w, w, 16)
    with pytest.raises(ValueError):
        dot4("dotprod", w, w, w, 8)
    with pytest.raises(ValueError):
        dot4_sum("avx2", w, [(w, w)] * (PAIR_TERMS + 1), 8)
    assert PAIR_TERMS * 2 * 15 * 127 <= 32767


@pytest.mark.parametrize("locality,instr", [(0, "prefetchnta"), (3, "prefetcht0")])
def test_gemv_prefetch_kind(locality, instr):
    """The prefetch kind the facts derive (CPUParams.int8_gemv_prefetch_locality) is the instruction emitted,
    and either kind computes the same numbers (checked against numpy on this CPU)."""
    _require("avx512vnni" if "avx512vnni" in HOST_FEATURES else "avx2")
    isa = int8_dot_isa(HOST)
    q4 = get_scheme("q4f16")
    func = int8_gemv_func(q4, 64, 256, ahead=1, locality=locality, isa=isa)
    asm = _asm(func, HOST)
    assert instr in asm and ("prefetchnta" if locality else "prefetcht0") not in asm
    _check(func, 256, 64, (1, 1), seed=locality)
