"""Every SoC in the registry gets a package whose contents match what its manifest says."""

from __future__ import annotations

import json
import shutil

import pytest

from cli.main import DEFAULT_MODEL, main
from compiler.compile import CompileOptions, compile_model
from runtime_stubs.errors import LlamaAotError
from targets import list_socs

PHONES = [s for s in list_socs() if not s.is_host]
DEVICE_FILE = {"opencl": "kernels.cl", "metal": "kernels.metal"}


def _header(path, n=20):
    with open(path, "rb") as f:
        return f.read(n)


def _arch(path) -> str:
    head = _header(path)
    if head[:4] == b"\x7fELF":
        return {183: "aarch64", 62: "x86_64"}[int.from_bytes(head[18:20], "little")]
    if head[:4] == b"\xcf\xfa\xed\xfe" and int.from_bytes(head[4:8], "little") == 0x0100000C:
        return "arm64-macho"
    return "unknown"


@pytest.mark.parametrize("soc", PHONES, ids=[s.name for s in PHONES])
def test_soc_package_matches_manifest(soc, tmp_path):
    out = compile_model(DEFAULT_MODEL, tmp_path / soc.name, CompileOptions(soc=soc.name, quant="q4f16", context_window=512))
    cfg = json.loads((out / "llama-aot.json").read_text())
    lib = cfg["library"]
    assert cfg["target"]["device"] == soc.gpu_apis[0]
    ios = "apple-ios" in soc.tvm_host_target()["mtriple"]
    expected = "arm64-macho" if ios else "aarch64"
    objects = sorted((out / "lib" / "objects").glob("*.o"))
    assert objects and {_arch(o) for o in objects} == {expected}
    assert _header(out / lib["static_library"], 8) == b"!<arch>\n"
    if not ios:
        so = out / lib["shared_library"]
        assert _arch(so) == "aarch64" and int.from_bytes(_header(so)[16:18], "little") == 3  # ET_DYN
    api = soc.gpu_apis[0]
    device_files = [out / p for p in lib["device_code"][api]]
    assert device_files and all(f.is_file() and f.stat().st_size > 0 for f in device_files)
    if api == "vulkan":
        assert all(_header(f, 4) == b"\x03\x02\x23\x07" for f in device_files)  # SPIR-V magic
    else:
        assert device_files[0].name == DEVICE_FILE[api] and "dequant_matmul" in device_files[0].read_text()
    symbols = json.loads((out / lib["symbols"]).read_text())["symbols"]
    prefix = lib["system_lib_prefix"]
    assert any(s.lstrip("_").startswith(f"tvm_ffi_{prefix}") or prefix in s for s in symbols), symbols[:10]
    plan = cfg["memory_plan"]
    assert plan["peak_bytes"] == plan["weight_bytes"] + plan["kv_cache_bytes"] + plan["activation_bytes"]
    assert plan["peak_bytes"] <= plan["usable_bytes"]


def test_cpu_only_library_has_no_device_code(tmp_path):
    out = compile_model(DEFAULT_MODEL, tmp_path / "cpu", CompileOptions(soc="snapdragon-8-gen-3", device="cpu", quant="q4f16", context_window=256))
    cfg = json.loads((out / "llama-aot.json").read_text())
    assert cfg["target"]["device"] == "cpu" and cfg["library"]["device_code"] == {}
    assert cfg["target"]["tvm_host"]["mattr"][:3] == ["+neon", "+dotprod", "+i8mm"]
    # the SoC's cache facts reached the schedules, and the package says which knobs they gave
    sched = cfg["schedules"]
    facts = sched["cpu"]["facts"]
    assert facts["facts_source"] == "soc:snapdragon-8-gen-3"
    assert (facts["l1d_bytes"], facts["l1d_ways"], facts["l2_bytes"]) == (64 * 1024, 4, 512 * 1024)
    assert facts["arch"] == "aarch64" and facts["num_cores"] == 6
    assert sched["cpu"]["derived"]["gemm_l1_panel_budget"] == 32 * 1024  # 64 KiB x (4 - 2) / 4 ways
    assert not sched["fallbacks"], sched["fallbacks"]
    assert sched["cpu"]["derived"]["int8_gemv_prefetch_bytes"] == 0  # system-lib: no software prefetch
    # the decode attention tiling, derived by hand for the tiny model (8 heads, 2 KV heads, head_dim 32, f32) on
    # this SoC (NEON: 32 registers of 4 f32; 64 KiB L1d; 6 cores): 2 heads x 32 in 16 x 4 register floats; 2 keys
    # per reduction (2 x 2 accumulators of 16 lanes = 16 registers); 2 pages (the 4-way L1d: ways - 2; by size alone
    # 8: 128 keys x (32 x 4 + 16) B <= 32 KiB); no prefetch (system-lib); 6 / gcd(2, 6) = 3 splits
    assert sched["cpu"]["attention_decode"] == [{
        "num_heads": 8, "num_kv_heads": 2, "head_dim": 32, "kv_dtype": "float32", "tile_pages": 2, "splits": 3,
        "prefetch_pages": 0, "heads_per_block": 2, "keys_per_reduction": 2}]
    kernels = sched["kernels"]
    assert {"cpu.RowReduction", "cpu.Elementwise"} <= set(kernels.values()), kernels
    assert any(name.startswith("int8_gemv") for name in kernels), kernels  # the dotprod projections


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--soc", "snapdragon-9-gen-9"], "unknown SoC"),
        (["--soc", "apple-a17-pro", "--device", "opencl"], "no opencl"),
        (["--soc", "exynos-2400", "--device", "opencl"], "no opencl"),
        (["--soc", "google-tensor-g3", "--context-window", "50000000"], "usable"),
        (["--schedule-knobs", "attn_decode_splits=two"], "--schedule-knobs"),
        (["--soc", "apple-a17-pro", "--schedule-knobs", "attn_decode_splits=2"], "GPU build"),
    ],
)
def test_soc_errors(args, expected, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compile", str(DEFAULT_MODEL), "-o", str(out), *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and expected in err[-1], err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_user_soc_file(tmp_path):
    src = next(p for p in (DEFAULT_MODEL.parent.parent / "targets" / "socs").glob("snapdragon-8-gen-3.toml"))
    text = src.read_text().replace('name = "snapdragon-8-gen-3"', 'name = "my-phone"')
    user = tmp_path / "my-phone.toml"
    user.write_text(text)
    out = compile_model(DEFAULT_MODEL, tmp_path / "pkg", CompileOptions(soc=str(user), device="cpu", quant="q0f16", context_window=128))
    assert json.loads((out / "llama-aot.json").read_text())["target"]["name"] == "my-phone"
