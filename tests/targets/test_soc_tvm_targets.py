"""Every derived TVM target constructs; mcpu/mattr are names LLVM 22 knows; one Android and one
iOS host target really generate code (ELF aarch64 / Mach-O arm64 objects)."""

from __future__ import annotations

import struct
import tarfile

import pytest

tvm = pytest.importorskip("tvm")
from tvm.target import Target, codegen  # noqa: E402

from targets.registry import ENV_VAR, list_socs, load_soc  # noqa: E402

EM_AARCH64 = 183
MH_MAGIC_64 = 0xFEEDFACF
CPU_TYPE_ARM64 = 0x0100000C


@pytest.fixture(autouse=True)
def _no_user_dirs(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def socs():
    return list_socs()


def test_all_targets_construct(socs):
    for soc in socs:
        host = Target(soc.tvm_host_target())
        assert host.kind.name == "llvm"
        for api in soc.gpu_apis:
            d = soc.tvm_device_target(api)
            t = Target(d)
            assert t.kind.name == api
            assert t.host is not None and t.host.kind.name == "llvm"
            assert "adreno" not in t.keys  # would switch Relax to the texture/CLML pipeline
            if api == "metal":
                assert int(t.attrs["thread_warp_size"]) == 32
            else:
                assert int(t.attrs["thread_warp_size"]) == 1
            assert int(t.attrs["max_shared_memory_per_block"]) == soc.gpu.shared_memory_bytes.value


def test_vulkan_target_attrs():
    t = Target(load_soc("exynos-2400").tvm_device_target("vulkan"))
    assert int(t.attrs["vulkan_api_version"]) == (1 << 22) | (3 << 12)
    assert int(t.attrs["max_spirv_version"]) == 0x10500
    assert bool(t.attrs["supports_float16"]) and bool(t.attrs["supports_int8"])


def test_cpu_names_and_features_are_known_to_llvm(socs):
    for soc in socs:
        if soc.is_host:
            continue
        triple = soc.cpu.mtriple.value
        cpus = {soc.cpu.mcpu.value} | {c.mcpu for c in soc.cpu.clusters}
        for cpu in cpus:
            assert codegen.llvm_is_valid_cpu(cpu, triple), (soc.name, cpu)
        features = codegen.llvm_get_cpu_features(Target(soc.tvm_host_target()))
        for attr in soc.cpu.mattr.value:
            name = attr[1:]
            # an unknown name would be dropped by LLVM with only a warning
            assert (name in features) == (attr[0] == "+"), (soc.name, attr)
        assert "neon" in features and "dotprod" in features


def _object_header(target_dict: dict, tmp_path) -> bytes:
    from tvm import te

    a = te.placeholder((64,), name="A", dtype="float32")
    b = te.compute((64,), lambda i: a[i] * 2.0 + 1.0, name="B")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    lib = tvm.compile(mod, target=Target(target_dict))
    path = tmp_path / "lib.tar"
    lib.export_library(str(path), fcompile=tvm.support.tar.tar)
    with tarfile.open(path) as tf:
        obj = next(n for n in tf.getnames() if n.endswith(".o"))
        return tf.extractfile(obj).read(64)


def test_android_host_target_codegens_elf_aarch64(tmp_path):
    head = _object_header(load_soc("snapdragon-8-gen-3").tvm_host_target(), tmp_path)
    assert head[:4] == b"\x7fELF" and head[4] == 2  # 64-bit
    assert struct.unpack_from("<H", head, 18)[0] == EM_AARCH64


def test_apple_host_target_codegens_macho_arm64(tmp_path):
    head = _object_header(load_soc("apple-a17-pro").tvm_host_target(), tmp_path)
    magic, cputype = struct.unpack_from("<II", head, 0)
    assert magic == MH_MAGIC_64 and cputype == CPU_TYPE_ARM64
