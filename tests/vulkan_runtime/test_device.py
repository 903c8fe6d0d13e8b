"""device_api.vulkan: attributes, allocation, copies (host <-> device, device <-> device, offsets)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

RNG = np.random.default_rng(0)


def test_plugin_registers_globals(vkrt):
    for name in ("device_api.vulkan", "ffi.Module.load_from_bytes.vulkan", "llama_aot.vulkan.device_info"):
        assert tvm.get_global_func(name, allow_missing=True) is not None, name
    assert vkrt.load_plugin() == vkrt.build_plugin()  # cached: same path, no rebuild


def test_device_attributes(vkrt, dev):
    info = vkrt.device_info(0)
    assert dev.exist
    assert not tvm.runtime.vulkan(vkrt.device_count()).exist  # one past the last device
    assert dev.device_name == info["device_name"] and dev.device_name
    assert dev.max_threads_per_block == info["max_num_threads"] >= 128
    assert dev.warp_size == info["thread_warp_size"] >= 1
    assert dev.max_shared_memory_per_block == info["max_shared_memory_per_block"] >= 16384
    major, minor = (int(x) for x in dev.compute_version.split("."))
    assert (major, minor) >= (1, 1)
    api = dev.api_version
    assert (api >> 22, (api >> 12) & 0x3FF) == (major, minor)
    assert len(dev.max_thread_dimensions) == 3
    assert dev.total_global_memory > 0
    assert isinstance(dev.driver_version, int)
    assert info["supports_float32"] and info["supports_int32"]
    if "llvmpipe" in dev.device_name:  # lavapipe: what targets.backends.vulkan.lavapipe_target() says
        assert dev.warp_size == 8 and info["supports_float16"] and info["supports_8bit_buffer"]
        assert info["host_mapped_storage"]


def test_device_target_dict(vkrt, dev):
    t = vkrt.device_target(0, host={"kind": "llvm"})
    assert t["kind"] == "vulkan" and t["host"] == {"kind": "llvm"}
    assert t["max_num_threads"] <= 256 and t["thread_warp_size"] == dev.warp_size
    target = tvm.target.Target(t)  # every attribute is one the wheel's "vulkan" kind accepts
    assert target.kind.name == "vulkan"


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "int64", "uint8", "bool"])
def test_round_trip(dev, dtype):
    for shape in [(1000,), (3, 5, 7), (1,), (0,), (257, 129)]:
        if dtype == "bool":
            a = RNG.integers(0, 2, shape).astype(bool)
        elif dtype.startswith(("int", "uint")):
            a = RNG.integers(-100 if dtype.startswith("int") else 0, 100, shape).astype(dtype)
        else:
            a = RNG.standard_normal(shape).astype(dtype)
        t = tvm.runtime.tensor(a, dev)
        assert t.device == dev
        np.testing.assert_array_equal(t.numpy(), a)


def test_large_round_trip(dev):
    a = RNG.integers(0, 2**31, 24 << 20 >> 2, dtype=np.int64).astype(np.uint32)  # 24 MiB
    t = tvm.runtime.tensor(a, dev)
    np.testing.assert_array_equal(t.numpy(), a)


def test_device_to_device_and_offsets(dev):
    a = RNG.standard_normal(1024).astype("float32")
    t = tvm.runtime.tensor(a, dev)
    t2 = tvm.runtime.empty((1024,), "float32", dev)
    t.copyto(t2)
    np.testing.assert_array_equal(t2.numpy(), a)

    # views with byte offsets: device->device, host->device and device->host
    dst = tvm.runtime.tensor(np.zeros(1024, "float32"), dev)
    src_view = t._create_view((100,), "float32", relative_byte_offset=4 * 10)
    dst_view = dst._create_view((100,), "float32", relative_byte_offset=4 * 500)
    src_view.copyto(dst_view)
    ref = np.zeros(1024, "float32")
    ref[500:600] = a[10:110]
    np.testing.assert_array_equal(dst.numpy(), ref)
    np.testing.assert_array_equal(dst_view.numpy(), a[10:110])
    dst._create_view((3,), "float32", relative_byte_offset=4 * 1021).copyfrom(np.array([1, 2, 3], "float32"))
    ref[1021:] = [1, 2, 3]
    np.testing.assert_array_equal(dst.numpy(), ref)

    # a different dtype view of the same bytes
    bits = t._create_view((1024,), "uint32").numpy()
    np.testing.assert_array_equal(bits, a.view(np.uint32))


def test_copy_to_cpu_tensor_and_back(dev):
    a = RNG.standard_normal((16, 16)).astype("float32")
    t = tvm.runtime.tensor(a, dev)
    c = tvm.runtime.empty((16, 16), "float32", tvm.runtime.cpu(0))
    t.copyto(c)
    np.testing.assert_array_equal(c.numpy(), a)
    t2 = c.copyto(dev)
    np.testing.assert_array_equal(t2.numpy(), a)


def test_sync_and_many_allocations(dev):
    tensors = [tvm.runtime.tensor(np.full(1000, i, "int32"), dev) for i in range(200)]
    dev.sync()
    for i in (0, 57, 199):
        assert int(tensors[i].numpy()[999]) == i
    del tensors  # FreeDataSpace for 200 buffers
    dev.sync()
