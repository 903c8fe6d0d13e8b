"""The serialized "vulkan" module: byte layout, parser, and the path through export_library /
load_module (the library embeds our payload under the kind "vulkan")."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tvm

from targets.backends.vulkan.module_format import (
    FunctionInfo,
    VulkanShader,
    dl_to_dtype,
    dtype_to_dl,
    parse_vulkan_module,
    serialize_vulkan_module,
    spirv_local_size,
)


def _s(x: str | bytes) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def test_layout_matches_tvm_format():
    """Bytes written by hand from shared/facts/vulkan-module-format.md."""
    info = FunctionInfo("k", ["handle", "handle", "int32"], ["blockIdx.x", "threadIdx.x"])
    words = [0x07230203, 0x10300, 0, 5, 0]
    got = serialize_vulkan_module({"k": (words, info, 1)})
    shader = struct.pack("<I", 1) + struct.pack("<Q", 5) + struct.pack("<5I", *words)
    finfo = (
        _s("k")
        + struct.pack("<Q", 3) + struct.pack("<BBH", 3, 64, 1) * 2 + struct.pack("<BBH", 0, 32, 1)
        + struct.pack("<Q", 2) + _s("blockIdx.x") + _s("threadIdx.x")
        + struct.pack("<Q", 3) + struct.pack("<3i", 0, 0, 0)
    )  # fmt: skip
    want = _s("vulkan") + struct.pack("<Q", 1) + _s("k") + finfo + struct.pack("<Q", 1) + _s("k") + _s(shader)
    assert got == want


def test_roundtrip_several_kernels():
    shaders = {
        "b_kernel": VulkanShader([0x07230203, 1, 2, 3], FunctionInfo("b_kernel", ["handle", "float32"], ["blockIdx.x"]), 0),
        "a_kernel": VulkanShader(
            [0x07230203] + list(range(100)),
            FunctionInfo("a_kernel", ["handle"] * 3 + ["int64"] * 17, ["blockIdx.y", "blockIdx.x", "threadIdx.x"]),
            1,
        ),
    }
    data = serialize_vulkan_module(shaders)
    back = parse_vulkan_module(data)
    assert back == shaders
    assert serialize_vulkan_module(back) == data  # deterministic (name order)


def test_parser_rejects_bad_payloads():
    data = serialize_vulkan_module({"k": ([1, 2], FunctionInfo("k", ["handle"], []))})
    with pytest.raises(ValueError, match="truncated"):
        parse_vulkan_module(data[:-3])
    with pytest.raises(ValueError, match="trailing"):
        parse_vulkan_module(data + b"\0")
    with pytest.raises(ValueError, match="not a vulkan"):
        parse_vulkan_module(_s("opencl") + data[14:])


def test_dtype_codes():
    for t, dl in [("float16", (2, 16, 1)), ("int8", (0, 8, 1)), ("uint32", (1, 32, 1)), ("handle", (3, 64, 1)),
                  ("float32x4", (2, 32, 4)), ("bool", (6, 8, 1)), ("bfloat16", (4, 16, 1))]:  # fmt: skip
        assert dtype_to_dl(t) == dl and dl_to_dtype(*dl) == t


def test_spirv_local_size(toolchain, vk):
    src = "#version 450\nlayout(local_size_x = 32, local_size_y = 4, local_size_z = 2) in;\nvoid main() {}\n"
    assert spirv_local_size(vk.compile_glsl(src, "vulkan1.1")) == (32, 4, 2)


# ---- through tvm.compile / export_library / load_module ----------------------------------------


def test_built_module_is_vulkan_kind_with_our_payload(toolchain, vk):
    from vulkan_test_kernels import CASES, compile_case

    ex, kernels = compile_case(CASES["elementwise_f32_dynamic"])
    host = ex.mod
    assert host.kind == "llvm"
    (vm,) = vk.find_vulkan_modules(ex)
    assert vm.kind == "vulkan" and vm.is_binary_serializable
    payload = vk.module_payload(vm)
    parsed = parse_vulkan_module(payload)
    (k,) = kernels.values()
    assert parsed[k.name].words == k.spirv and parsed[k.name].info == k.function_info
    assert "#version 450" in vm.inspect_source()
    with pytest.raises(Exception, match="cannot run"):
        vm.get_function(k.name)()


def test_export_library_embeds_payload_and_loads_back(toolchain, vk, tmp_path):
    from vulkan_test_kernels import CASES, compile_case

    ex, _ = compile_case(CASES["q4_gemv"])
    payload = vk.module_payload(vk.find_vulkan_modules(ex)[0])
    path = str(tmp_path / "lib.so")
    ex.export_library(path)
    assert payload in open(path, "rb").read()  # packed verbatim in __tvm_ffi__library_bin
    vk.register_vulkan_loader()  # keeps a real Vulkan runtime's loader if one is registered
    lib = tvm.runtime.load_module(path)
    (loaded,) = vk.find_vulkan_modules(lib)
    assert loaded.kind == "vulkan"
    if tvm.get_global_func("llama_aot.vulkan.ShaderModuleCreate", allow_missing=True) is not None:
        try:
            assert vk.module_payload(loaded) == payload
        except AttributeError:  # a real runtime's module: it has no payload accessor
            pass


def test_relax_model_compiles_and_exports(toolchain, vk, tmp_path):
    from tvm.relax.frontend import nn

    class Tiny(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(64, 32, bias=False, dtype="float16")

        def forward(self, x):
            return nn.op.softmax(self.proj(x).astype("float32"), axis=-1)

    mod, _ = Tiny().export_tvm(spec={"forward": {"x": nn.spec.Tensor(["n", 64], "float16")}})
    from vulkan_test_kernels import HOST, lavapipe

    with vk.original_errors():
        ex = tvm.compile(mod, target=tvm.target.Target(lavapipe(), host=HOST))
    kernels = vk.kernels_from_module(ex)
    assert len(kernels) >= 2 and any("softmax" in n for n in kernels)
    ex.export_library(str(tmp_path / "tiny.so"))


def test_loaded_payload_runs_without_metadata(device, vk, tmp_path):
    """What a runtime sees after load_module: only SPIR-V + FunctionInfo; launch args from the host."""
    from targets.backends.vulkan.launch import launch
    from vulkan_test_kernels import CASES, compile_case

    ex, kernels = compile_case(CASES["elementwise_f32_dynamic"])
    (k,) = kernels.values()
    shaders = parse_vulkan_module(vk.module_payload(vk.find_vulkan_modules(ex)[0]))
    sh = shaders[k.name]
    n = 300
    a = np.linspace(-2, 2, n).astype("float32")
    out = launch(sh.words, sh.info, [a, np.zeros(n, "float32"), n], [(n + 255) // 256, 256], sh.flag, device=device)
    np.testing.assert_allclose(out[1], np.exp(a) * 0.5 + np.sqrt(np.abs(a)) - a / 3.0, rtol=1e-5, atol=1e-6)


def test_paged_kv_cache_gpu_kernels_compile(toolchain, vk):
    """The attention / RoPE / page-copy TIR kernels of TIRPagedKVCache for a GPU target all go
    through the back end (compile + spirv-val; running them needs the VM and a device API)."""
    from tvm import relax
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn.llm.kv_cache import RopeMode, TIRPagedKVCache

    from vulkan_test_kernels import HOST, lavapipe

    target = tvm.target.Target(lavapipe(), host=HOST)

    class KV(nn.Module):
        def create(self, max_batch: tvm.tirx.Var, max_len: tvm.tirx.Var, chunk: tvm.tirx.Var, page: tvm.tirx.Var,
                   sw: tvm.tirx.Var):  # fmt: skip
            return TIRPagedKVCache(
                attn_kind="mha", max_batch_size=max_batch, max_total_seq_len=max_len, prefill_chunk_size=chunk,
                page_size=page, support_sliding_window=sw, layer_partition=relax.ShapeExpr([0, 2]),
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, qk_head_dim=64, v_head_dim=64,
                mla_original_qk_head_dim=0, mla_original_v_head_dim=0, rope_mode=RopeMode.NORMAL, rope_scale=1,
                rope_theta=10000, rope_scaling={}, rope_ext_factors=relax.prim_value(0), rotary_dim=64,
                enable_disaggregation=False, dtype="float16", target=target,
            )  # fmt: skip

    mod, _ = KV().export_tvm(spec={"create": {k: int for k in ("max_batch", "max_len", "chunk", "page", "sw")}})
    with vk.original_errors():
        ex = tvm.compile(mod, target=target)
    kernels = vk.kernels_from_module(ex)
    assert {"batch_decode_paged_kv_kernel", "batch_prefill_paged_kv_kernel", "fused_rope_kernel",
            "tir_kv_cache_transpose_append_kernel"} <= set(kernels)  # fmt: skip
