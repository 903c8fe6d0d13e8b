"""What the Vulkan tests share (tests/vulkan, tests/vulkan_runtime, tests/e2e/test_merge_state.py).

Fixtures, imported by name into a conftest or test module (``from vulkan_support import dev, vkb``):
* ``vk``: the code generator (targets.backends.vulkan), registered as target.build.vulkan;
* ``toolchain``: skip unless glslangValidator and spirv-val are installed;
* ``vkrt``: the runtime plugin (runtime_stubs/vulkan), built (cached) and loaded into this process;
* ``dev``: ``tvm.runtime.vulkan(0)``, or skip when the plugin finds no Vulkan device;
* ``vkb``: the code generator once the plugin is loaded; skips without the toolchain.

Plus kernels that more than one directory runs and the attention-state merge's reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

NO_DEVICE = "needs a Vulkan driver (mesa-vulkan-drivers)"
NO_TOOLS = "needs glslangValidator and spirv-val (apt-get install glslang-tools spirv-tools)"


@pytest.fixture(scope="session")
def vk():
    from targets.backends import vulkan

    vulkan.register()
    return vulkan


@pytest.fixture(scope="session")
def toolchain(vk):
    if not vk.toolchain_available():
        pytest.skip(NO_TOOLS)
    return True


@pytest.fixture(scope="session")
def vkrt():
    from runtime_stubs import vulkan

    vulkan.load_plugin()
    return vulkan


@pytest.fixture(scope="session")
def dev(vkrt):
    if vkrt.unavailable_reason() is not None:
        pytest.skip(NO_DEVICE)
    import tvm

    return tvm.runtime.vulkan(0)


@pytest.fixture(scope="session")
def vkb(vkrt, vk, toolchain):
    return vk


# ----------------------------------------------------------------------------------------------
# kernels


def matmul_f16():
    """d[m, 128] = a[m, 128] @ b[128, 128] in float16 with a float32 sum; m dynamic (dlight Matmul
    gives it shared-memory tiling)."""
    from tvm import te

    m = te.var("m")
    a = te.placeholder((m, 128), "float16", name="a")
    b = te.placeholder((128, 128), "float16", name="b")
    k = te.reduce_axis((0, 128), name="k")
    c = te.compute((m, 128), lambda i, j: te.sum(a[i, k].astype("float32") * b[k, j].astype("float32"), axis=k))
    d = te.compute((m, 128), lambda i, j: c[i, j].astype("float16"), name="d")
    return te.create_prim_func([a, b, d])


# scalar arguments of many_scalars(): 18 of them, more than push constants hold (a uniform buffer)
MANY_INTS, MANY_FLOATS, MANY_LONGS = [1, 2, 3, 4, 5, -6], [0.5, 0.25, 1.0, -1.0, 2.0, 3.0], [10, 20, 30, 40, 50, 2**33]


def many_scalars():
    """IRModule of many_scalars(a, out, s0..s5 int32, f0..f5 float32, l0..l5 int64): out = a *
    sum(s) + sum(f) + sum(l), 64 threads (see many_scalars_reference)."""
    import tvm
    from tvm.script import tirx as T

    @T.prim_func
    def many_scalars(
        a: T.Buffer((64,), "float32"), out: T.Buffer((64,), "float32"),
        s0: T.int32, s1: T.int32, s2: T.int32, s3: T.int32, s4: T.int32, s5: T.int32,
        f0: T.float32, f1: T.float32, f2: T.float32, f3: T.float32, f4: T.float32, f5: T.float32,
        l0: T.int64, l1: T.int64, l2: T.int64, l3: T.int64, l4: T.int64, l5: T.int64,
    ):  # fmt: skip
        T.func_attr({"global_symbol": "many_scalars", "tirx.noalias": True})
        for tx in T.thread_binding(64, thread="threadIdx.x"):
            out[tx] = (
                a[tx] * T.Cast("float32", s0 + s1 + s2 + s3 + s4 + s5)
                + (f0 + f1 + f2 + f3 + f4 + f5)
                + T.Cast("float32", l0 + l1 + l2 + l3 + l4 + l5)
            )

    return tvm.IRModule({"many_scalars": many_scalars})


def many_scalars_reference(a, int_scale: int = 1):
    return a * int_scale * sum(MANY_INTS) + sum(MANY_FLOATS) + np.float32(sum(MANY_LONGS))


# ----------------------------------------------------------------------------------------------
# the paged KV cache's attention-state merge (merge_state_inplace)


def numpy_merge(v, s, vo, so):
    """Log-sum-exp merge (base 2) of two normalised partial attention outputs, in float64."""
    v, s, vo, so = (np.asarray(x, "float64") for x in (v, s, vo, so))
    m = np.maximum(s, so)
    a, b = np.exp2(s - m), np.exp2(so - m)
    return (v * a[..., None] + vo * b[..., None]) / (a + b)[..., None], np.log2(a + b) + m


def run_merge(kernel, num_heads: int, head_dim: int, vk, dev, path: Path, rows: int, seed: int):
    """Build ``kernel(num_heads, head_dim, "float32", target)`` (TVM's or ours) for lavapipe's
    limits, run it in place on random states; return (inputs v, s, vo, so; outputs v, s, vo, so)."""
    import tvm

    target = tvm.target.Target(vk.lavapipe_target(), host={"kind": "llvm"})
    mod = tvm.IRModule({"main": kernel(num_heads, head_dim, "float32", target)})
    with vk.original_errors():
        ex = tvm.compile(mod, target=target)
    ex.export_library(str(path))
    lib = tvm.runtime.load_module(str(path))
    rng = np.random.default_rng(seed)
    v, vo = (rng.standard_normal((rows, num_heads, head_dim)).astype("float32") for _ in range(2))
    s, so = ((3 * rng.standard_normal((rows, num_heads))).astype("float32") for _ in range(2))
    tensors = [tvm.runtime.tensor(x, dev) for x in (v, s, vo, so)]
    lib["main"](*tensors)
    return (v, s, vo, so), tuple(t.numpy() for t in tensors)
