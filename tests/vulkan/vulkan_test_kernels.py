"""Kernels of the Vulkan tests: each case is an IRModule (scheduled with dlight or written in TIR),
the target it is compiled for, and a check that runs the compiled kernels and compares with numpy.

Cases are compiled through ``tvm.compile`` (host llvm) so that ``target.build.vulkan`` -- our back
end -- is what produces the kernels; the compiled result is cached per process so the compile-only
tests and the lavapipe tests share one build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tvm
import tvm.s_tir.dlight as dl
from tvm import te, tirx, topi
from tvm.script import tirx as T

from targets.backends import vulkan as vkb
from targets.backends.vulkan.launch import run_kernel
from vulkan_support import (MANY_FLOATS, MANY_INTS, MANY_LONGS, many_scalars, many_scalars_reference,
                            matmul_f16)  # fmt: skip

HOST = {"kind": "llvm"}


def lavapipe(**overrides) -> dict:
    t = vkb.lavapipe_target()
    t.update(overrides)
    return t


@dataclass
class Case:
    name: str
    build: Callable[[], tuple]  # -> (IRModule, target dict)
    check: Callable  # (kernels: dict[str, GLSLKernel], device) -> None
    direct: bool = False  # the IRModule is already lowered device code: skip tvm.compile


_compiled: dict[str, tuple] = {}


def compile_case(case: Case):
    """(Executable, {kernel name: GLSLKernel}) of a case, built once per process."""
    if case.name not in _compiled:
        vkb.register()
        mod, tgt = case.build()
        if case.direct:
            _compiled[case.name] = (None, vkb.compile_kernels(mod, tvm.target.Target(tgt)))
        else:
            target = tvm.target.Target(tgt, host=HOST)
            with vkb.original_errors():
                ex = tvm.compile(mod, target=target)
            _compiled[case.name] = (ex, vkb.kernels_from_module(ex))
    return _compiled[case.name]


def dlight_module(funcs: dict, rules: list, tgt: dict) -> tvm.IRModule:
    mod = tvm.IRModule(funcs)
    with tvm.target.Target(tgt, host=HOST):
        mod = dl.ApplyDefaultSchedule(*rules)(mod)
    return mod


def one(kernels: dict, prefix: str = ""):
    ks = [k for n, k in kernels.items() if n.startswith(prefix)]
    assert len(ks) == 1, f"expected one kernel starting with {prefix!r}, got {list(kernels)}"
    return ks[0]


RNG = np.random.default_rng(0)

# ----------------------------------------------------------------------------------------------
# elementwise fp32 with a dynamic length (symbolic n passed as a push constant)


def _build_elementwise_f32():
    n = te.var("n")
    a = te.placeholder((n,), "float32", name="a")
    b = te.compute((n,), lambda i: te.exp(a[i]) * 0.5 + te.sqrt(te.abs(a[i])) - a[i] / 3.0, name="b")
    tgt = lavapipe()
    return dlight_module({"main": te.create_prim_func([a, b])}, [dl.gpu.Fallback()], tgt), tgt


def _check_elementwise_f32(kernels, dev):
    k = one(kernels)
    assert [p.kind for p in k.params] == ["buffer", "buffer", "scalar"]
    for n in (1000, 37, 1):
        a = RNG.standard_normal(n).astype("float32")
        out = run_kernel(k, {"a": a, "b": np.zeros(n, "float32"), "n": n}, dev)["b"]
        ref = np.exp(a) * 0.5 + np.sqrt(np.abs(a)) - a / 3.0
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# elementwise fp16 (arithmetic and 16-bit storage)


def _build_elementwise_f16():
    a = te.placeholder((4096,), "float16", name="a")
    b = te.placeholder((4096,), "float16", name="b")
    c = te.compute((4096,), lambda i: a[i] * b[i] + a[i] - b[i] * tirx.const(0.5, "float16"), name="c")
    tgt = lavapipe()
    return dlight_module({"main": te.create_prim_func([a, b, c])}, [dl.gpu.Fallback()], tgt), tgt


def _check_elementwise_f16(kernels, dev):
    k = one(kernels)
    a = RNG.standard_normal(4096).astype("float16")
    b = RNG.standard_normal(4096).astype("float16")
    out = run_kernel(k, {"a": a, "b": b, "c": np.zeros(4096, "float16")}, dev)["c"]
    ref = (a * b + a - b * np.float16(0.5)).astype("float32")
    np.testing.assert_allclose(out.astype("float32"), ref, rtol=5e-3, atol=5e-3)


# ----------------------------------------------------------------------------------------------
# math intrinsics (fp32 and fp16), one small kernel per function

_X = np.concatenate([np.linspace(-6, 6, 250), [0.5, 1.5, 2.5, -0.5, -2.5, 60.0]]).astype("float32")
_POS = np.linspace(0.01, 50, 256).astype("float32")
_UNARY_F32 = {
    # name: (te function, input, numpy reference)
    "exp": (te.exp, _X, np.exp),
    "exp2": (lambda x: tirx.exp2(x), _X, np.exp2),
    "log": (te.log, _POS, np.log),
    "log2": (lambda x: tirx.log2(x), _POS, np.log2),
    "log10": (lambda x: tirx.log10(x), _POS, np.log10),
    "sqrt": (te.sqrt, _POS, np.sqrt),
    "rsqrt": (lambda x: tirx.rsqrt(x), _POS, lambda x: 1 / np.sqrt(x)),
    "tanh": (te.tanh, _X * 10, np.tanh),
    "sigmoid": (te.sigmoid, _X * 5, lambda x: 1 / (1 + np.exp(-x))),
    "erf": (te.erf, _X, None),
    "floor": (te.floor, _X, np.floor),
    "ceil": (te.ceil, _X, np.ceil),
    "trunc": (te.trunc, _X, np.trunc),
    "round": (te.round, _X, np.round),  # TIR round = half to even, like numpy
    "abs": (te.abs, _X, np.abs),
    "sin": (te.sin, _X, np.sin),
    "cos": (te.cos, _X, np.cos),
}


def _erf(x):
    import math

    return np.array([math.erf(float(v)) for v in x], dtype="float64")


def _unary(fn, dtype: str, name: str):
    a = te.placeholder((256,), dtype, name="a")
    b = te.compute((256,), lambda i: fn(a[i]), name="b")
    return te.create_prim_func([a, b]).with_attr("global_symbol", name)


def _build_math_f32():
    funcs = {f"u_{name}": _unary(fn, "float32", f"u_{name}") for name, (fn, _, _) in _UNARY_F32.items()}
    a = te.placeholder((256,), "float32", name="a")
    b = te.placeholder((256,), "float32", name="b")
    c = te.compute(
        (256, 6),
        lambda i, j: tirx.Select(
            j == 0,
            te.power(a[i], b[i]),
            tirx.Select(
                j == 1,
                tirx.max(a[i], b[i]),
                tirx.Select(
                    j == 2,
                    tirx.min(a[i], b[i]),
                    tirx.Select(
                        j == 3,
                        tirx.call_pure_extern("float32", "fmaf", a[i], b[i], a[i]),
                        tirx.Select(j == 4, tirx.atan2(a[i], b[i]), tirx.fmod(a[i], b[i])),
                    ),
                ),
            ),
        ),
        name="c",
    )
    funcs["binary"] = te.create_prim_func([a, b, c]).with_attr("global_symbol", "binary")
    tgt = lavapipe()
    return dlight_module(funcs, [dl.gpu.Fallback()], tgt), tgt


def _check_math_f32(kernels, dev):
    for name, (_, x, ref_fn) in _UNARY_F32.items():
        k = one(kernels, f"u_{name}_")
        xin = np.resize(x, 256).astype("float32")
        out = run_kernel(k, {"a": xin, "b": np.zeros(256, "float32")}, dev)["b"]
        ref = _erf(xin) if name == "erf" else ref_fn(xin.astype("float64"))
        assert np.all(np.isfinite(out)), name
        np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-6, err_msg=name)
    k = one(kernels, "binary_")
    a = np.resize(np.array([-2.0, -3.0, 2.0, 0.0, 1.5, -0.5, 4.0, 7.25], "float32"), 256)
    b = np.resize(np.array([3.0, 2.0, -1.0, 2.0, 2.0, 3.0, 0.5, -2.0], "float32"), 256)
    out = run_kernel(k, {"a": a, "b": b, "c": np.zeros((256, 6), "float32")}, dev)["c"]
    a64, b64 = a.astype("float64"), b.astype("float64")
    np.testing.assert_allclose(out[:, 0], np.power(a64, b64), rtol=1e-5, err_msg="pow (C semantics)")
    np.testing.assert_array_equal(out[:, 1], np.maximum(a, b))
    np.testing.assert_array_equal(out[:, 2], np.minimum(a, b))
    np.testing.assert_allclose(out[:, 3], a64 * b64 + a64, rtol=1e-6)
    np.testing.assert_allclose(out[:, 4], np.arctan2(a64, b64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 5], np.fmod(a64, b64), rtol=1e-6, atol=1e-6)


_UNARY_F16 = {"exp": (te.exp, np.exp), "tanh": (te.tanh, np.tanh), "erf": (te.erf, None),
              "sqrt": (te.sqrt, np.sqrt), "sigmoid": (te.sigmoid, lambda x: 1 / (1 + np.exp(-x)))}  # fmt: skip


def _build_math_f16():
    funcs = {f"h_{name}": _unary(fn, "float16", f"h_{name}") for name, (fn, _) in _UNARY_F16.items()}
    tgt = lavapipe()
    return dlight_module(funcs, [dl.gpu.Fallback()], tgt), tgt


def _check_math_f16(kernels, dev):
    x = np.linspace(0.01, 4, 256).astype("float16")
    for name, (_, ref_fn) in _UNARY_F16.items():
        k = one(kernels, f"h_{name}_")
        out = run_kernel(k, {"a": x, "b": np.zeros(256, "float16")}, dev)["b"].astype("float64")
        ref = _erf(x) if name == "erf" else ref_fn(x.astype("float64"))
        np.testing.assert_allclose(out, ref, rtol=2e-3, atol=1e-3, err_msg=name)


# ----------------------------------------------------------------------------------------------
# integer division semantics of TIR on negative operands (written directly in TIR)


def _intdiv_func(dtype: str):
    c = lambda v: tirx.const(v, dtype)  # noqa: E731

    @T.prim_func
    def intdiv(a: T.Buffer((256,), dtype), b: T.Buffer((256,), dtype), out: T.Buffer((10, 256), dtype)):
        T.func_attr({"global_symbol": "intdiv_" + dtype, "tirx.noalias": True})
        for bx in T.thread_binding(4, thread="blockIdx.x"):
            for tx in T.thread_binding(64, thread="threadIdx.x"):
                out[0, bx * 64 + tx] = T.floordiv(a[bx * 64 + tx], b[bx * 64 + tx])
                out[1, bx * 64 + tx] = T.floormod(a[bx * 64 + tx], b[bx * 64 + tx])
                out[2, bx * 64 + tx] = T.truncdiv(a[bx * 64 + tx], b[bx * 64 + tx])
                out[3, bx * 64 + tx] = T.truncmod(a[bx * 64 + tx], b[bx * 64 + tx])
                out[4, bx * 64 + tx] = T.floordiv(a[bx * 64 + tx], c(8))
                out[5, bx * 64 + tx] = T.floormod(a[bx * 64 + tx], c(8))
                out[6, bx * 64 + tx] = T.floordiv(a[bx * 64 + tx], c(6))
                out[7, bx * 64 + tx] = T.floormod(a[bx * 64 + tx], c(6))
                out[8, bx * 64 + tx] = T.truncdiv(a[bx * 64 + tx], c(8))
                out[9, bx * 64 + tx] = T.truncmod(a[bx * 64 + tx], c(6))

    return intdiv


def _build_intdiv():
    return tvm.IRModule({"intdiv_int32": _intdiv_func("int32"), "intdiv_int64": _intdiv_func("int64")}), lavapipe()


def _check_intdiv(kernels, dev):
    for dtype in ("int32", "int64"):
        k = one(kernels, f"intdiv_{dtype}")
        big = 2**40 if dtype == "int64" else 2**20
        a = RNG.integers(-big, big, 256).astype(dtype)
        a[:8] = [-7, 7, -8, 8, -1, 0, -6, 6]
        b = RNG.integers(1, 50, 256).astype(dtype) * RNG.choice([-1, 1], 256).astype(dtype)
        b[:8] = [2, -2, 3, -3, 7, 5, -6, 6]
        out = run_kernel(k, {"a": a, "b": b, "out": np.zeros((10, 256), dtype)}, dev)["out"]
        tq = np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))
        refs = [a // b, a % b, tq, a - tq * b, a // 8, a % 8, a // 6, a % 6,
                np.sign(a) * (np.abs(a) // 8), np.fmod(a, 6)]  # fmt: skip
        for i, ref in enumerate(refs):
            np.testing.assert_array_equal(out[i], ref, err_msg=f"{dtype} op {i}")


def _direct_div_func(dtype: str):
    """Device code as target.build.vulkan receives it, but with FloorDiv/FloorMod nodes left in
    (tvm.compile's LowerIntrin would rewrite them into truncdiv/truncmod first)."""
    c = lambda v: tirx.const(v, dtype)  # noqa: E731

    @T.prim_func
    def direct_div(a_ptr: T.handle(dtype, "global"), b_ptr: T.handle(dtype, "global"),
                   out_ptr: T.handle(dtype, "global")):  # fmt: skip
        T.func_attr({"global_symbol": "direct_div_" + dtype, "tirx.noalias": True, "calling_conv": 2,
                     "tirx.kernel_launch_params": ["blockIdx.x", "threadIdx.x"]})  # fmt: skip
        a = T.decl_buffer((256,), dtype, data=a_ptr)
        b = T.decl_buffer((256,), dtype, data=b_ptr)
        out = T.decl_buffer((1536,), dtype, data=out_ptr)
        with T.launch_thread("blockIdx.x", 4) as bx:
            tx = T.launch_thread("threadIdx.x", 64)
            out[bx * 64 + tx] = T.floordiv(a[bx * 64 + tx], b[bx * 64 + tx])
            out[256 + bx * 64 + tx] = T.floormod(a[bx * 64 + tx], b[bx * 64 + tx])
            out[512 + bx * 64 + tx] = T.floordiv(a[bx * 64 + tx], c(8))
            out[768 + bx * 64 + tx] = T.floormod(a[bx * 64 + tx], c(8))
            out[1024 + bx * 64 + tx] = T.floordiv(a[bx * 64 + tx], c(6))
            out[1280 + bx * 64 + tx] = T.floormod(a[bx * 64 + tx], c(6))

    return direct_div


@T.prim_func
def _direct_math(a_ptr: T.handle("float32", "global"), out_ptr: T.handle("float32", "global")):
    # math as intrinsic ops (tirx.rsqrt, ...) rather than call_pure_extern("...f")
    T.func_attr({"global_symbol": "direct_math", "tirx.noalias": True, "calling_conv": 2,
                 "tirx.kernel_launch_params": ["threadIdx.x"]})  # fmt: skip
    a = T.decl_buffer((64,), "float32", data=a_ptr)
    out = T.decl_buffer((256,), "float32", data=out_ptr)
    tx = T.launch_thread("threadIdx.x", 64)
    out[tx] = T.rsqrt(a[tx])
    out[64 + tx] = T.exp2(a[tx])
    out[128 + tx] = T.fabs(T.float32(0) - a[tx])
    out[192 + tx] = T.round(a[tx] * T.float32(2))


def _build_direct_div():
    funcs = {f"direct_div_{d}": _direct_div_func(d) for d in ("int8", "int32", "int64")}
    funcs["direct_math"] = _direct_math
    return tvm.IRModule(funcs), lavapipe()


def _check_direct_div(kernels, dev):
    for dtype in ("int8", "int32", "int64"):
        k = one(kernels, f"direct_div_{dtype}")
        hi = {"int8": 127, "int32": 2**30, "int64": 2**40}[dtype]
        a = RNG.integers(-hi, hi, 256).astype(dtype)
        a[:8] = [-7, 7, -8, 8, -1, 0, -6, 6]
        b = (RNG.integers(1, 20, 256) * RNG.choice([-1, 1], 256)).astype(dtype)
        b[:8] = [2, -2, 3, -3, 7, 5, -6, 6]
        out = run_kernel(k, {"a": a, "b": b, "out": np.zeros(1536, dtype)}, dev)["out"].reshape(6, 256)
        refs = [a // b, a % b, a // 8, a % 8, a // 6, a % 6]
        for i, ref in enumerate(refs):
            np.testing.assert_array_equal(out[i], ref.astype(dtype), err_msg=f"{dtype} op {i}")
    k = one(kernels, "direct_math")
    a = np.linspace(0.25, 4, 64).astype("float32")
    a[:4] = [0.25, 0.75, 1.25, 1.75]  # 2a = 0.5, 1.5, 2.5, 3.5: round half to even
    out = run_kernel(k, {"a": a, "out": np.zeros(256, "float32")}, dev)["out"].reshape(4, 64)
    a64 = a.astype("float64")
    np.testing.assert_allclose(out[0], 1 / np.sqrt(a64), rtol=1e-5)
    np.testing.assert_allclose(out[1], np.exp2(a64), rtol=1e-5)
    np.testing.assert_array_equal(out[2], a)
    np.testing.assert_array_equal(out[3], np.round(a * 2))


# ----------------------------------------------------------------------------------------------
# int8 / uint8 / bool / uint32 buffers and casts


@T.prim_func
def _small_types(
    a: T.Buffer((256,), "int8"),
    b: T.Buffer((256,), "uint8"),
    m: T.Buffer((256,), "bool"),
    w: T.Buffer((256,), "uint32"),
    of: T.Buffer((256,), "float32"),
    oi8: T.Buffer((256,), "int8"),
    ob: T.Buffer((256,), "bool"),
    ou: T.Buffer((256,), "uint32"),
    flip: T.bool,
):
    T.func_attr({"global_symbol": "small_types", "tirx.noalias": True})
    for bx in T.thread_binding(4, thread="blockIdx.x"):
        for tx in T.thread_binding(64, thread="threadIdx.x"):
            of[bx * 64 + tx] = (
                T.Cast("float32", a[bx * 64 + tx]) * T.float32(2)
                + T.Cast("float32", b[bx * 64 + tx])
                + T.Select(m[bx * 64 + tx], T.float32(1), T.float32(0))
                + T.Cast("float32", (w[bx * 64 + tx] >> T.uint32(4)) & T.uint32(15))
            )
            oi8[bx * 64 + tx] = a[bx * 64 + tx] * T.int8(3) + T.int8(1)
            ob[bx * 64 + tx] = (a[bx * 64 + tx] > T.int8(0) and m[bx * 64 + tx]) != flip
            ou[bx * 64 + tx] = T.floordiv(w[bx * 64 + tx], T.uint32(7)) + T.floormod(w[bx * 64 + tx], T.uint32(7))


def _build_small_types():
    return tvm.IRModule({"small_types": _small_types}), lavapipe()


def _check_small_types(kernels, dev):
    k = one(kernels)
    a = RNG.integers(-128, 128, 256).astype("int8")
    b = RNG.integers(0, 256, 256).astype("uint8")
    m = RNG.integers(0, 2, 256).astype("bool")
    w = RNG.integers(0, 2**32, 256, dtype="uint64").astype("uint32")
    outs = {"of": np.zeros(256, "float32"), "oi8": np.zeros(256, "int8"), "ob": np.zeros(256, "bool"),
            "ou": np.zeros(256, "uint32")}  # fmt: skip
    res = run_kernel(k, dict(a=a, b=b, m=m, w=w, flip=True, **outs), dev)
    of, oi8, ob, ou = (res[n] for n in ("of", "oi8", "ob", "ou"))
    np.testing.assert_array_equal(of, a * 2.0 + b + m + ((w >> 4) & 15))
    np.testing.assert_array_equal(oi8, (a.astype("int32") * 3 + 1).astype("int8"))  # wraps like int8
    np.testing.assert_array_equal(ob, ~((a > 0) & m))  # flip=True: bool scalar arrives as int32
    np.testing.assert_array_equal(ou, w // 7 + w % 7)


# ----------------------------------------------------------------------------------------------
# reductions: shared memory + barriers (thread_warp_size 1) and warp-synchronous (8 = lavapipe's
# subgroup size: subgroupBarrier between steps), RMSNorm


def _row_sum(tgt):
    a = te.placeholder((64, 1024), "float32", name="a")
    r = te.reduce_axis((0, 1024), name="r")
    b = te.compute((64,), lambda i: te.sum(a[i, r], axis=r), name="b")
    return dlight_module({"main": te.create_prim_func([a, b])}, [dl.gpu.Reduction()], tgt), tgt


def _check_row_sum(kernels, dev):
    k = one(kernels)
    a = RNG.standard_normal((64, 1024)).astype("float32")
    out = run_kernel(k, {"a": a, "b": np.zeros(64, "float32")}, dev)["b"]
    np.testing.assert_allclose(out, a.astype("float64").sum(1), rtol=1e-4, atol=1e-4)


def _build_rmsnorm():
    x = te.placeholder((1, 8, 512), "float16", name="x")
    w = te.placeholder((512,), "float16", name="w")
    y = topi.nn.rms_norm(x, w, axis=[2], epsilon=1e-5)
    tgt = lavapipe()
    return dlight_module({"main": te.create_prim_func([x, w, y])}, [dl.gpu.RMSNorm()], tgt), tgt


def _check_rmsnorm(kernels, dev):
    k = one(kernels)
    x = RNG.standard_normal((1, 8, 512)).astype("float16")
    w = RNG.standard_normal(512).astype("float16")
    (out_name,) = [p.name for p in k.params if p.name not in ("x_ptr", "w_ptr")]  # topi names the output
    res = run_kernel(k, {"x": x, "w": w, out_name: np.zeros((1, 8, 512), "float16")}, dev)
    out = res[out_name].astype("float64")
    x64 = x.astype("float64")
    ref = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-5) * w.astype("float64")
    np.testing.assert_allclose(out, ref, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------------------
# subgroup shuffles (tvm_warp_shuffle*) written directly in TIR: an 8-lane butterfly sum


@T.prim_func
def _warp_shuffles(a: T.Buffer((256,), "float32"), out: T.Buffer((4, 256), "float32")):
    T.func_attr({"global_symbol": "warp_shuffles", "tirx.noalias": True})
    for bx in T.thread_binding(4, thread="blockIdx.x"):
        for tx in T.thread_binding(64, thread="threadIdx.x"):
            red = T.alloc_local((1,), "float32")
            red[0] = a[bx * 64 + tx]
            red[0] = red[0] + T.tvm_warp_shuffle_down(0, red[0], 4, 8, 8)
            red[0] = red[0] + T.tvm_warp_shuffle_down(0, red[0], 2, 8, 8)
            red[0] = red[0] + T.tvm_warp_shuffle_down(0, red[0], 1, 8, 8)
            out[0, bx * 64 + tx] = T.tvm_warp_shuffle(0, red[0], 0, 8, 8)  # broadcast lane 0
            out[1, bx * 64 + tx] = T.tvm_warp_shuffle_up(0, a[bx * 64 + tx], 1, 8, 8)
            out[2, bx * 64 + tx] = T.tvm_warp_shuffle_xor(0, a[bx * 64 + tx], 3, 8, 8)
            out[3, bx * 64 + tx] = T.tvm_warp_shuffle_down(0, a[bx * 64 + tx], 2, 4, 8)  # width 4 segments


def _build_warp_shuffles():
    return tvm.IRModule({"warp_shuffles": _warp_shuffles}), lavapipe()


def _check_warp_shuffles(kernels, dev):
    k = one(kernels)
    assert k.subgroup_size == 8
    a = RNG.standard_normal(256).astype("float32")
    out = run_kernel(k, {"a": a, "out": np.zeros((4, 256), "float32")}, dev)["out"]
    g = a.reshape(-1, 8)
    np.testing.assert_allclose(out[0], np.repeat(g.sum(1), 8), rtol=1e-5, atol=1e-5)
    lane = np.arange(256) % 8
    up = np.where(lane >= 1, np.roll(a, 1), a)
    np.testing.assert_array_equal(out[1], up)
    np.testing.assert_array_equal(out[2], a[(np.arange(256) // 8) * 8 + (lane ^ 3)])
    l4 = np.arange(256) % 4
    np.testing.assert_array_equal(out[3], np.where(l4 + 2 < 4, np.roll(a, -2), a))


# ----------------------------------------------------------------------------------------------
# q4 (uint32-packed int4) dequantize + GEMV, scheduled with dlight GEMV

Q_N, Q_K = 256, 512


def _build_q4_gemv():
    x = te.placeholder((1, Q_K), "float16", name="x")
    w = te.placeholder((Q_N, Q_K // 8), "uint32", name="w")
    s = te.placeholder((Q_N, Q_K // 32), "float16", name="scale")
    k = te.reduce_axis((0, Q_K), name="k")

    def deq(n, kk):
        q = (w[n, kk // 8] >> (tirx.const(4, "uint32") * (kk % 8).astype("uint32"))) & tirx.const(15, "uint32")
        return (q.astype("float16") - tirx.const(8, "float16")) * s[n, kk // 32]

    y = te.compute(
        (1, Q_N), lambda b, n: te.sum(x[b, k].astype("float32") * deq(n, k).astype("float32"), axis=k), name="y"
    )
    tgt = lavapipe()
    return dlight_module({"main": te.create_prim_func([x, w, s, y])}, [dl.gpu.GEMV()], tgt), tgt


def _check_q4_gemv(kernels, dev):
    k = one(kernels)
    x = RNG.standard_normal((1, Q_K)).astype("float16")
    q = RNG.integers(0, 16, (Q_N, Q_K)).astype("uint32")
    w = np.zeros((Q_N, Q_K // 8), "uint32")
    for j in range(8):
        w |= q[:, j::8] << np.uint32(4 * j)
    scale = (RNG.random((Q_N, Q_K // 32)) * 0.1).astype("float16")
    out = run_kernel(k, {"x": x, "w": w, "scale": scale, "y": np.zeros((1, Q_N), "float32")}, dev)["y"]
    deq = (q.astype("float16") - np.float16(8)) * np.repeat(scale, 32, axis=1)
    ref = (x.astype("float64") @ deq.astype("float64").T).reshape(1, Q_N)
    np.testing.assert_allclose(out, ref, rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------------------------
# fp16 matmul with shared-memory tiling (dlight Matmul), dynamic m


def _build_matmul_f16():
    tgt = lavapipe()
    return dlight_module({"main": matmul_f16()}, [dl.gpu.Matmul()], tgt), tgt


def _check_matmul_f16(kernels, dev):
    k = one(kernels)
    assert k.shared_bytes > 0
    for m in (64, 37):
        a = RNG.standard_normal((m, 128)).astype("float16")
        b = RNG.standard_normal((128, 128)).astype("float16")
        out = run_kernel(k, {"a": a, "b": b, "d": np.zeros((m, 128), "float16"), "m": m}, dev)["d"]
        out = out.astype("float64")
        ref = a.astype("float64") @ b.astype("float64")
        np.testing.assert_allclose(out, ref, rtol=1e-2, atol=5e-2)


# ----------------------------------------------------------------------------------------------
# more than 16 scalar arguments: a uniform buffer instead of push constants (shader flag bit 0)


def _build_many_scalars():
    return many_scalars(), lavapipe()


def _check_many_scalars(kernels, dev):
    k = one(kernels)
    assert k.flag == vkb.FLAG_USE_UBO
    a = RNG.standard_normal(64).astype("float32")
    names = [f"{c}{i}" for c in "sfl" for i in range(6)]
    scalars = dict(zip(names, MANY_INTS + MANY_FLOATS + MANY_LONGS))
    out = run_kernel(k, dict(a=a, out=np.zeros(64, "float32"), **scalars), dev)["out"]
    np.testing.assert_allclose(out, many_scalars_reference(a), rtol=1e-6)


CASES = {
    c.name: c
    for c in [
        Case("elementwise_f32_dynamic", _build_elementwise_f32, _check_elementwise_f32),
        Case("elementwise_f16", _build_elementwise_f16, _check_elementwise_f16),
        Case("math_f32", _build_math_f32, _check_math_f32),
        Case("math_f16", _build_math_f16, _check_math_f16),
        Case("intdiv", _build_intdiv, _check_intdiv),
        Case("direct_tir", _build_direct_div, _check_direct_div, direct=True),
        Case("small_types", _build_small_types, _check_small_types),
        Case("reduction_shared", lambda: _row_sum(lavapipe(thread_warp_size=1)), _check_row_sum),
        Case("reduction_warp", lambda: _row_sum(lavapipe(thread_warp_size=8)), _check_row_sum),
        Case("rmsnorm_f16", _build_rmsnorm, _check_rmsnorm),
        Case("warp_shuffles", _build_warp_shuffles, _check_warp_shuffles),
        Case("q4_gemv", _build_q4_gemv, _check_q4_gemv),
        Case("matmul_f16", _build_matmul_f16, _check_matmul_f16),
        Case("many_scalars", _build_many_scalars, _check_many_scalars),
    ]
}
