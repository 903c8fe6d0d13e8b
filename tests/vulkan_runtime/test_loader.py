"""ffi.Module.load_from_bytes.vulkan: payload formats and coexistence with the codegen's stand-in."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tvm

from vkrt_helpers import build_and_load, lavapipe


def _s(b: str | bytes) -> bytes:
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def _payload(shaders: dict, inline: bool) -> bytes:
    """TVM's layout; inline=True is the pre-0.24 one (SPIRVShader without the outer blob length)."""
    from targets.backends.vulkan.module_format import dtype_to_dl

    out = [_s("vulkan"), struct.pack("<Q", len(shaders))]
    for name, sh in shaders.items():
        info = sh.info
        out += [_s(name), _s(info.name), struct.pack("<Q", len(info.arg_types))]
        out += [struct.pack("<BBH", *dtype_to_dl(t)) for t in info.arg_types]
        out += [struct.pack("<Q", len(info.launch_param_tags))] + [_s(t) for t in info.launch_param_tags]
        out += [struct.pack("<Q", len(info.arg_extra_tags))] + [struct.pack("<i", t) for t in info.arg_extra_tags]
    out.append(struct.pack("<Q", len(shaders)))
    for name, sh in shaders.items():
        body = struct.pack("<IQ", sh.flag, len(sh.words)) + struct.pack(f"<{len(sh.words)}I", *sh.words)
        out += [_s(name), body if inline else _s(body)]
    return b"".join(out)


@pytest.fixture(scope="module")
def elementwise(dev, vkb, libdir):
    from tvm import te
    import tvm.s_tir.dlight as dl

    n = te.var("n")
    a = te.placeholder((n,), "float32", name="a")
    b = te.compute((n,), lambda i: a[i] * a[i] + 1.0, name="b")
    lib = build_and_load(tvm.IRModule({"main": te.create_prim_func([a, b])}), lavapipe(), libdir / "loader.so",
                         [dl.gpu.Fallback()])  # fmt: skip
    payload = bytes(lib.imports[0].get_function("__llama_aot_vulkan_payload")())
    return lib, payload


@pytest.mark.parametrize("inline", [False, True])
def test_payload_layouts(dev, vkb, elementwise, inline):
    from targets.backends.vulkan import parse_vulkan_module

    _, payload = elementwise
    shaders = parse_vulkan_module(payload)
    built = _payload(shaders, inline)
    if not inline:
        assert built == payload  # our reconstruction is byte-identical to what the codegen wrote
    mod = tvm.get_global_func("ffi.Module.load_from_bytes.vulkan")(built)
    (name,) = shaders
    x = np.linspace(-3, 3, 500).astype("float32")
    out = tvm.runtime.empty((500,), "float32", dev)
    mod[name](tvm.runtime.tensor(x, dev), out, 500, 2, 256)
    np.testing.assert_allclose(out.numpy(), x * x + 1, rtol=1e-6)


def test_rejects_bad_payloads(vkrt):
    load = tvm.get_global_func("ffi.Module.load_from_bytes.vulkan")
    with pytest.raises(Exception, match="format"):
        load(_s("metal") + struct.pack("<QQ", 0, 0))
    with pytest.raises(Exception, match="truncated|corrupt"):
        load(_s("vulkan") + struct.pack("<Q", 5))
    with pytest.raises(Exception, match="trailing"):
        load(_s("vulkan") + struct.pack("<QQ", 0, 0) + b"xx")


def test_codegen_stand_in_keeps_real_loader(vkrt, vkb, elementwise, dev):
    """targets.backends.vulkan.register_vulkan_loader() does not replace the runtime's loader."""
    assert vkb.register_vulkan_loader() is False
    lib, _ = elementwise
    x = np.arange(10, dtype="float32")
    out = tvm.runtime.empty((10,), "float32", dev)
    lib["main"](tvm.runtime.tensor(x, dev), out)
    np.testing.assert_allclose(out.numpy(), x * x + 1)
