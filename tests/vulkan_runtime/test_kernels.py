"""Kernels compiled with tvm.compile for a Vulkan target, exported, loaded and run by the plugin."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm.s_tir.dlight as dl
from tvm import te, tirx
from tvm.script import tirx as T

from vkrt_helpers import build_and_load, lavapipe
from vulkan_support import (MANY_FLOATS, MANY_INTS, MANY_LONGS, many_scalars, many_scalars_reference,
                            matmul_f16)  # fmt: skip

RNG = np.random.default_rng(0)
_libs: dict[str, tvm.runtime.Module] = {}


def _lib(name, build, libdir):
    if name not in _libs:
        _libs[name] = build(libdir / f"{name}.so")
    return _libs[name]


# ----------------------------------------------------------------------------------------------
# elementwise, dynamic length


def _elementwise(path):
    n = te.var("n")
    a = te.placeholder((n,), "float32", name="a")
    b = te.compute((n,), lambda i: te.exp(a[i]) * 0.5 + te.sqrt(te.abs(a[i])) - a[i] / 3.0, name="b")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    return build_and_load(mod, lavapipe(), path, [dl.gpu.Fallback()])


def test_elementwise_dynamic(dev, vkb, libdir):
    lib = _lib("elementwise", _elementwise, libdir)
    assert [m.kind for m in lib.imports] == ["vulkan"]
    for n in (1000, 37, 1, 100_003, 0):
        a = RNG.standard_normal(n).astype("float32")
        ta, tb = tvm.runtime.tensor(a, dev), tvm.runtime.empty((n,), "float32", dev)
        lib["main"](ta, tb)
        ref = np.exp(a) * 0.5 + np.sqrt(np.abs(a)) - a / 3.0
        np.testing.assert_allclose(tb.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_kernel_called_directly(dev, vkb, libdir):
    """The device function itself: (buffers..., scalars..., blockIdx.x, threadIdx.x)."""
    lib = _lib("elementwise", _elementwise, libdir)
    vmod = lib.imports[0]
    assert vmod.kind == "vulkan" and "main_kernel" in vmod.inspect_source()
    f = vmod["main_kernel"]
    n = 300
    a = np.linspace(-2, 2, n).astype("float32")
    ta, tb = tvm.runtime.tensor(a, dev), tvm.runtime.empty((n,), "float32", dev)
    f(ta, tb, n, (n + 255) // 256, 256)  # tvm tensors are accepted as buffers
    np.testing.assert_allclose(tb.numpy(), np.exp(a) * 0.5 + np.sqrt(np.abs(a)) - a / 3.0, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="workgroup size"):
        f(ta, tb, n, 3, 128)
    with pytest.raises(Exception, match="expects 3 arguments"):
        f(ta, tb, n)
    with pytest.raises(Exception, match="device type"):
        f(tvm.runtime.tensor(a), tb, n, 2, 256)
    with pytest.raises(Exception, match="maxComputeWorkGroupCount"):
        f(ta, tb, n, 1 << 33, 256)  # more than a folded x*y grid holds


# ----------------------------------------------------------------------------------------------
# two kernels with an intermediate global buffer: TVMBackendAllocWorkspace + ordering


@T.prim_func
def _two_kernels(a: T.Buffer((4096,), "float32"), c: T.Buffer((4096,), "float32")):
    T.func_attr({"global_symbol": "two", "tirx.noalias": True})
    b = T.alloc_buffer((4096,), "float32")  # global scratch: TVMBackendAllocWorkspace on the device
    for bx in T.thread_binding(16, thread="blockIdx.x"):
        for tx in T.thread_binding(256, thread="threadIdx.x"):
            b[bx * 256 + tx] = a[bx * 256 + tx] * T.float32(2) + T.float32(1)
    for bx in T.thread_binding(16, thread="blockIdx.x"):
        for tx in T.thread_binding(256, thread="threadIdx.x"):
            c[bx * 256 + tx] = b[4095 - (bx * 256 + tx)] * b[bx * 256 + tx]  # other workgroups' b


def test_two_kernels_with_workspace(dev, vkb, libdir):
    lib = _lib("two", lambda p: build_and_load(tvm.IRModule({"two": _two_kernels}), lavapipe(), p), libdir)
    assert lib.imports[0].inspect_source().count("launch[") == 2
    c = tvm.runtime.empty((4096,), "float32", dev)
    for _ in range(3):  # workspace buffers are recycled
        a = RNG.standard_normal(4096).astype("float32")
        lib["two"](tvm.runtime.tensor(a, dev), c)
        b = a * 2.0 + 1.0
        np.testing.assert_allclose(c.numpy(), b[::-1] * b, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# many dispatches: batches are submitted every 128 commands, order must hold across them


@T.prim_func
def _add_one(a: T.Buffer((4096,), "float32"), b: T.Buffer((4096,), "float32")):
    T.func_attr({"global_symbol": "add_one", "tirx.noalias": True})
    for bx in T.thread_binding(16, thread="blockIdx.x"):
        for tx in T.thread_binding(256, thread="threadIdx.x"):
            b[bx * 256 + tx] = a[bx * 256 + tx] + T.float32(1)


def test_many_dispatches_ping_pong(vkrt, dev, vkb, libdir):
    lib = _lib("add_one", lambda p: build_and_load(tvm.IRModule({"add_one": _add_one}), lavapipe(), p), libdir)
    x = tvm.runtime.tensor(np.zeros(4096, "float32"), dev)
    y = tvm.runtime.empty((4096,), "float32", dev)
    before = vkrt.device_info()["dispatches"]
    for _ in range(500):
        lib["add_one"](x, y)
        x, y = y, x
    np.testing.assert_array_equal(x.numpy(), np.full(4096, 500, "float32"))
    assert vkrt.device_info()["dispatches"] - before == 500


def test_free_while_pending(dev, vkb, libdir):
    lib = _lib("add_one", lambda p: build_and_load(tvm.IRModule({"add_one": _add_one}), lavapipe(), p), libdir)
    out = tvm.runtime.empty((4096,), "float32", dev)
    for i in range(20):
        tmp = tvm.runtime.tensor(np.full(4096, i, "float32"), dev)
        lib["add_one"](tmp, out)
        del tmp  # freed while the dispatch may not have run yet: destruction is deferred
    np.testing.assert_array_equal(out.numpy(), np.full(4096, 20, "float32"))


# ----------------------------------------------------------------------------------------------
# dlight-scheduled reductions: GEMV (fp16 weights), row sum with shared memory / subgroups, matmul


def _gemv(path):
    x = te.placeholder((1, 512), "float16", name="x")
    w = te.placeholder((256, 512), "float16", name="w")
    k = te.reduce_axis((0, 512), name="k")
    y = te.compute((1, 256), lambda b, n: te.sum(x[b, k].astype("float32") * w[n, k].astype("float32"), axis=k),
                   name="y")  # fmt: skip
    mod = tvm.IRModule({"main": te.create_prim_func([x, w, y])})
    return build_and_load(mod, lavapipe(), path, [dl.gpu.GEMV()])


def test_dlight_gemv(dev, vkb, libdir):
    lib = _lib("gemv", _gemv, libdir)
    x = RNG.standard_normal((1, 512)).astype("float16")
    w = RNG.standard_normal((256, 512)).astype("float16")
    ty = tvm.runtime.empty((1, 256), "float32", dev)
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev), ty)
    ref = x.astype("float64") @ w.astype("float64").T
    np.testing.assert_allclose(ty.numpy(), ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("warp", [1, 8])
def test_dlight_reduction(dev, vkb, libdir, warp):
    def build(path):
        a = te.placeholder((64, 1024), "float32", name="a")
        r = te.reduce_axis((0, 1024), name="r")
        b = te.compute((64,), lambda i: te.sum(a[i, r], axis=r), name="b")
        mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
        return build_and_load(mod, lavapipe(thread_warp_size=warp), path, [dl.gpu.Reduction()])

    if warp > tvm.runtime.vulkan(0).warp_size:
        pytest.skip(f"device subgroups are smaller than {warp}")
    lib = _lib(f"rowsum{warp}", build, libdir)
    a = RNG.standard_normal((64, 1024)).astype("float32")
    tb = tvm.runtime.empty((64,), "float32", dev)
    lib["main"](tvm.runtime.tensor(a, dev), tb)
    np.testing.assert_allclose(tb.numpy(), a.astype("float64").sum(1), rtol=1e-4, atol=1e-4)


def _matmul(path):
    return build_and_load(tvm.IRModule({"main": matmul_f16()}), lavapipe(), path, [dl.gpu.Matmul()])


def test_dlight_matmul_dynamic(dev, vkb, libdir):
    lib = _lib("matmul", _matmul, libdir)
    b = RNG.standard_normal((128, 128)).astype("float16")
    tb = tvm.runtime.tensor(b, dev)
    for m in (64, 37, 1):
        a = RNG.standard_normal((m, 128)).astype("float16")
        td = tvm.runtime.empty((m, 128), "float16", dev)
        lib["main"](tvm.runtime.tensor(a, dev), tb, td)
        ref = a.astype("float64") @ b.astype("float64")
        np.testing.assert_allclose(td.numpy().astype("float64"), ref, rtol=1e-2, atol=5e-2)


# ----------------------------------------------------------------------------------------------
# more than 16 scalars: uniform buffer (shader flag bit 0) instead of push constants


def test_scalars_in_uniform_buffer(dev, vkb, libdir):
    lib = _lib("many_scalars", lambda p: build_and_load(many_scalars(), lavapipe(), p), libdir)
    a = RNG.standard_normal(64).astype("float32")
    ta, to = tvm.runtime.tensor(a, dev), tvm.runtime.empty((64,), "float32", dev)
    for scale in (1, 3):  # two dispatches in one batch: each gets its own uniform-buffer slice
        lib["many_scalars"](ta, to, *[i * scale for i in MANY_INTS], *MANY_FLOATS, *MANY_LONGS)
    np.testing.assert_allclose(to.numpy(), many_scalars_reference(a, int_scale=3), rtol=1e-6)


def test_int_types_and_bool_scalar(dev, vkb, libdir):
    @T.prim_func
    def small(a: T.Buffer((256,), "int8"), m: T.Buffer((256,), "bool"), w: T.Buffer((256,), "uint32"),
              o: T.Buffer((256,), "int32"), flip: T.bool):  # fmt: skip
        T.func_attr({"global_symbol": "small", "tirx.noalias": True})
        for tx in T.thread_binding(256, thread="threadIdx.x"):
            o[tx] = T.Cast("int32", a[tx]) * 3 + T.Cast("int32", (w[tx] >> T.uint32(4)) & T.uint32(15)) + T.if_then_else(
                m[tx] != flip, 100, 0)  # fmt: skip

    lib = _lib("small", lambda p: build_and_load(tvm.IRModule({"small": small}), lavapipe(), p), libdir)
    a = RNG.integers(-128, 128, 256).astype("int8")
    m = RNG.integers(0, 2, 256).astype(bool)
    w = RNG.integers(0, 2**32, 256, dtype=np.uint64).astype("uint32")
    to = tvm.runtime.empty((256,), "int32", dev)
    for flip in (False, True):
        lib["small"](*(tvm.runtime.tensor(x, dev) for x in (a, m, w)), to, flip)
        ref = a.astype("int32") * 3 + ((w >> 4) & 15).astype("int32") + np.where(m != flip, 100, 0)
        np.testing.assert_array_equal(to.numpy(), ref)


# ----------------------------------------------------------------------------------------------
# a grid wider than maxComputeWorkGroupCount[0] (65535 on lavapipe and many phone GPUs)


def _wide_grid(path):
    from tvm import s_tir

    n = te.var("n")
    a = te.placeholder((n,), "float32", name="a")
    b = te.compute((n,), lambda i: a[i] * 2.0 + 1.0, name="b")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    (i,) = sch.get_loops(sch.get_sblock("b"))
    bx, tx = sch.split(i, [None, 1])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return build_and_load(tvm.IRModule({"main": sch.mod["main"]}), lavapipe(), path)


def test_grid_wider_than_device_limit_is_folded(vkrt, dev, vkb, libdir):
    """One workgroup per element: 70001 groups in x arrive as an x*y grid and the kernel skips
    the groups past the end (FLAG_FOLDED_GRID), instead of failing at launch."""
    from targets.backends.vulkan.module_format import FLAG_FOLDED_GRID

    lib = _lib("wide_grid", _wide_grid, libdir)
    limit = vkrt.device_info(0)["max_compute_work_group_count_x"]
    assert f"flag={FLAG_FOLDED_GRID}" in lib.imports[0].inspect_source()
    for n in (5, limit, limit + 1, 70001, 2 * limit + 3):
        a = RNG.standard_normal(n).astype("float32")
        tb = tvm.runtime.empty((n,), "float32", dev)
        lib["main"](tvm.runtime.tensor(a, dev), tb)
        np.testing.assert_array_equal(tb.numpy(), a * 2.0 + 1.0)
