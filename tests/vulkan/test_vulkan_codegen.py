"""TIR -> GLSL -> SPIR-V without a device: every kernel of the lavapipe tests compiles and passes
spirv-val; the printer emits what each construct needs; limits and dtypes fail at compile time."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm.s_tir.dlight as dl
from tvm import te
from tvm.script import tirx as T

from vulkan_test_kernels import CASES, HOST, compile_case, dlight_module, lavapipe

# what the GLSL of each case must contain (constructs the case is there to cover)
EXPECT = {
    "elementwise_f32_dynamic": ["layout(push_constant)", "exp(", "sqrt("],
    "elementwise_f16": ["float16_t", "GL_EXT_shader_16bit_storage"],
    "math_f32": ["tvm_erf_f32", "tvm_pow_f32", "roundEven(", "tanh(clamp(", "fma(", "atan("],
    "math_f16": ["float16_t(exp(float(", "tvm_erf_f32(float("],
    "intdiv": ["tvm_truncmod_i32", "tvm_truncmod_i64", "int64_t"],
    "direct_tir": ["tvm_floordiv_i8", "tvm_floormod_i64", ">> 3)", "& 7)", "inversesqrt(", "exp2(", "roundEven("],
    "small_types": ["int8_t", "uint8_t", "!= uint8_t(0)", "? uint8_t(1) : uint8_t(0)", "GL_EXT_shader_8bit_storage"],
    "reduction_shared": ["shared float", "barrier();"],
    "reduction_warp": ["shared float", "subgroupBarrier();", "subgroupMemoryBarrierShared();"],
    "rmsnorm_f16": ["sqrt(", "shared float", "float16_t x_local[8]"],
    "warp_shuffles": ["subgroupShuffle(", "GL_KHR_shader_subgroup_shuffle", "tvm_shfl_xor_f32", "tvm_shfl_up_f32"],
    "q4_gemv": ["uint w_ptr[]", ">> ", "& 15u", "tvm_lane3"],
    "matmul_f16": ["shared float16_t", "barrier();", "const int m = tvm_pc.m_"],
    "many_scalars": ["uniform tvm_args_t", "layout(offset = 136) int ", "layout(offset = 88) int64_t "],
}


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_compiles_and_validates(name, toolchain, vk):
    _, kernels = compile_case(CASES[name])
    assert kernels
    for k in kernels.values():
        assert k.spirv[0] == 0x07230203
        assert vk.spirv_local_size(k.spirv) == k.workgroup_size
        assert k.function_info.name == k.name
        assert len(k.function_info.arg_types) == len(k.params)
    source = "\n".join(k.source for k in kernels.values())
    for needle in EXPECT[name]:
        assert needle in source, f"{name}: {needle!r} not in GLSL"


def test_reduction_without_warp_size_has_no_subgroup_ops(toolchain):
    _, kernels = compile_case(CASES["reduction_shared"])
    (k,) = kernels.values()
    assert "subgroup" not in k.source and k.subgroup_size == 0


def _elementwise(dtype="float32", n=1024):
    a = te.placeholder((n,), dtype, name="a")
    b = te.compute((n,), lambda i: a[i] * tvm.tirx.const(2, dtype), name="b")
    return te.create_prim_func([a, b])


@pytest.mark.parametrize("api,env,spirv", [((1, 1), "vulkan1.1", 0x10300), ((1, 2), "vulkan1.2", 0x10500),
                                           ((1, 3), "vulkan1.3", 0x10600)])  # fmt: skip
def test_target_env_follows_vulkan_api_version(api, env, spirv, toolchain, vk):
    tgt = lavapipe(vulkan_api_version=vk.vk_api_version(*api), max_spirv_version=0x10600)
    mod = dlight_module({"main": _elementwise()}, [dl.gpu.Fallback()], tgt)
    ex = tvm.compile(mod, target=tvm.target.Target(tgt, host=HOST))
    (k,) = vk.kernels_from_module(ex).values()
    assert k.target_env == env
    assert k.spirv[1] == spirv  # SPIR-V version word


@T.prim_func
def _too_many_threads(a: T.Buffer((1024,), "float32"), out: T.Buffer((1024,), "float32")):
    T.func_attr({"global_symbol": "too_many_threads", "tirx.noalias": True})
    for bx in T.thread_binding(2, thread="blockIdx.x"):
        for tx in T.thread_binding(512, thread="threadIdx.x"):
            out[bx * 512 + tx] = a[bx * 512 + tx] * T.float32(2)


@T.prim_func
def _too_much_shared(a: T.Buffer((16384,), "float32"), out: T.Buffer((16384,), "float32")):
    T.func_attr({"global_symbol": "too_much_shared", "tirx.noalias": True})
    for tx in T.thread_binding(256, thread="threadIdx.x"):
        s = T.alloc_shared((16384,), "float32")
        for i in range(64):
            s[i * 256 + tx] = a[i * 256 + tx]
        T.tvm_storage_sync("shared")
        for i in range(64):
            out[i * 256 + tx] = s[16383 - i * 256 - tx]


def _compile_error(func, tgt, vk) -> str:
    with pytest.raises(vk.VulkanCodegenError) as info:
        with vk.original_errors():
            tvm.compile(tvm.IRModule({"main": func}), target=tvm.target.Target(tgt, host=HOST))
    return str(info.value)


def test_too_many_threads_fails_with_kernel_name_and_limit(toolchain, vk):
    msg = _compile_error(_too_many_threads, lavapipe(), vk)
    assert "too_many_threads_kernel" in msg and "512" in msg and "max_num_threads=256" in msg


def test_too_much_shared_memory_fails_with_kernel_name_and_limit(toolchain, vk):
    msg = _compile_error(_too_much_shared, lavapipe(), vk)
    assert "too_much_shared_kernel" in msg and "65536" in msg and "max_shared_memory_per_block=32768" in msg


@pytest.mark.parametrize("dtype,attr", [("float64", "supports_float64"), ("float16", "supports_float16"),
                                        ("int64", "supports_int64"), ("int8", "supports_int8")])  # fmt: skip
def test_unsupported_dtype_fails_with_kernel_name(dtype, attr, toolchain, vk):
    tgt = lavapipe(**{attr: False})
    mod = dlight_module({"scale2": _elementwise(dtype).with_attr("global_symbol", "scale2")},
                        [dl.gpu.Fallback()], tgt)  # fmt: skip
    with pytest.raises(vk.VulkanCodegenError) as info:
        with vk.original_errors():
            tvm.compile(mod, target=tvm.target.Target(tgt, host=HOST))
    msg = str(info.value)
    assert "scale2_kernel" in msg and dtype.rstrip("0123456789") in msg and attr in msg


def test_errors_without_original_errors_keep_message(toolchain, vk):
    with pytest.raises(Exception, match="too_many_threads_kernel.*max_num_threads=256"):
        tvm.compile(tvm.IRModule({"main": _too_many_threads}), target=tvm.target.Target(lavapipe(), host=HOST))


def test_shuffle_needs_subgroup_shuffle_in_target(toolchain, vk):
    from vulkan_test_kernels import _warp_shuffles

    tgt = lavapipe(supported_subgroup_operations=1)  # BASIC only
    msg = _compile_error(_warp_shuffles, tgt, vk)
    assert "warp_shuffles_kernel" in msg and "SHUFFLE" in msg


def test_launch_expressions_follow_dynamic_shape(toolchain):
    _, kernels = compile_case(CASES["elementwise_f32_dynamic"])
    (k,) = kernels.values()
    tags = k.function_info.launch_param_tags
    assert tags == ["blockIdx.x", "threadIdx.x"]
    for n in (1, 256, 257, 100000):
        assert k.launch_args({"n": n}) == [(n + 255) // 256, 256]


def test_glsl_literals_and_names(vk):
    from targets.backends.vulkan.glsl import DT, GLSLPrinter, _sanitize

    p = GLSLPrinter(None, "k", vk.VulkanCaps())
    assert p.lit(-(2**31), DT(0, 32, 1)) == "(-2147483647 - 1)"
    assert p.lit(2**32 - 1, DT(1, 32, 1)) == "4294967295u"
    assert p.lit(-5, DT(0, 64, 1)) == "(-5l)"
    assert p.lit(float("inf"), DT(2, 32, 1)) == "uintBitsToFloat(0x7f800000u)"
    assert p.lit(float("-inf"), DT(2, 16, 1)) == "float16_t(uintBitsToFloat(0xff800000u))"
    assert p.lit(1e-30, DT(2, 32, 1)) == "1e-30"
    assert p.lit(0.5, DT(2, 64, 1)) == "0.5lf"
    assert _sanitize("blockIdx.x") == "blockIdx_x"
    assert _sanitize("a__b") == "a_b"  # '__' is reserved in GLSL
    assert _sanitize("gl_Foo") == "v_gl_Foo" and _sanitize("exp") == "v_exp" and _sanitize("1x") == "v1x"
    assert np.float32(float(p.lit(0.1, DT(2, 32, 1)))) == np.float32(0.1)
