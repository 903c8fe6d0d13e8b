"""The Vulkan device API compiled into the on-device runtime (LLAMA_AOT_WITH_VULKAN, runtime_stubs/vulkan
linked into libllama_aot_runtime): a package compiled with `--target vulkan --quant q0f32` runs through
`llama_aot_run --device vulkan` (lavapipe here) with the same greedy tokens and logits as
runtime_stubs.engine.Engine on the same package (TVM's Python runtime with the Vulkan plugin).

Without libvulkan-dev the runtime is built without Vulkan and these tests skip; without a Vulkan driver
(ICD) the ones that run kernels skip with NO_DEVICE.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from native_helpers import REPO, need
from runtime_stubs import native_build

NATIVE = REPO / "runtime_stubs" / "native"
NO_DEVICE = "needs a Vulkan driver (mesa-vulkan-drivers)"
NO_VULKAN_BUILD = "needs libvulkan-dev (vulkan/vulkan.h + libvulkan.so): the runtime was built without Vulkan"
MODEL = REPO / "models" / "tiny-llama3"
PROMPT = [0] + [(37 * i + 5) % 4000 + 3 for i in range(40)]  # 41 tokens: 3 prefill chunks of 16, 3 KV pages
MAX_TOKENS = 24  # 65 tokens in the cache (context window 128)
REL_TOL = 1e-4


@pytest.fixture(scope="module")
def native_vk(native_x86):
    if not native_x86.vulkan:
        pytest.skip(NO_VULKAN_BUILD)
    return native_x86


@pytest.fixture(scope="module")
def vulkan_device():
    """The Python-side Vulkan plugin (the reference engine needs it); skips without a device."""
    from runtime_stubs import vulkan

    try:
        vulkan.load_plugin()
        reason = vulkan.unavailable_reason()
    except vulkan.VulkanRuntimeError as e:
        reason = f"{NO_DEVICE}: {e}"
    if reason:
        pytest.skip(NO_DEVICE if reason.startswith(NO_DEVICE) else f"{NO_DEVICE}: {reason}")
    return vulkan.device_info(0)


@pytest.fixture(scope="module")
def vk_package(vulkan_device, tmp_path_factory):
    from compiler.compile import CompileOptions, compile_model

    out = tmp_path_factory.mktemp("vulkan-q0f32") / "pkg"
    compile_model(MODEL, out, CompileOptions(target="vulkan", quant="q0f32", prefill_chunk=16, context_window=128))
    assert json.loads((out / "llama-aot.json").read_text())["target"]["device"] == "vulkan"
    return out


@pytest.fixture(scope="module")
def engine_reference(vk_package):
    """(tokens, logits rows) from runtime_stubs.engine.Engine (Python TVM runtime + Vulkan plugin)."""
    from runtime_stubs.engine import Engine

    gen = Engine(vk_package).generate(PROMPT, max_tokens=MAX_TOKENS, keep_logits=True, stop_on_eos=False)
    return list(gen.token_ids), np.stack(gen.logits).astype(np.float32)


def _driver(exe: Path, package: Path, *extra: str, prompt=PROMPT, max_tokens=MAX_TOKENS, logits: Path | None = None,
            env_extra: dict | None = None):
    args = [str(exe), str(package), "--prompt-ids", ",".join(map(str, prompt)), "--max-tokens", str(max_tokens),
            "--no-stop-on-eos", *extra]  # fmt: skip
    if logits is not None:
        args += ["--logits-out", str(logits)]
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------


def test_vulkan_compiled_into_runtime(native_vk):
    """device_api.vulkan and the "vulkan" module loader are in every artifact, which need libvulkan."""
    b = native_vk
    blob = b.shared_lib.read_bytes()
    for registered in (b"device_api.vulkan", b"ffi.Module.load_from_bytes.vulkan", b"llama_aot.vulkan.device_count"):
        assert registered in blob, registered
    for exe in (b.shared_lib, b.run):
        needed = subprocess.run(["readelf", "-d", str(exe)], capture_output=True, text=True, check=True).stdout
        assert "libvulkan.so" in needed, f"{exe.name} has no DT_NEEDED libvulkan"
    members = subprocess.run(["ar", "t", str(b.static_lib)], capture_output=True, text=True, check=True).stdout.split()
    assert {"vk_device.cc.o", "vk_device_api.cc.o", "vk_module.cc.o"} <= set(members), members
    stamp = json.loads((b.build_dir / native_build.STAMP).read_text())
    assert stamp["vulkan"] is True


def test_cmake_option_auto_follows_the_target(tmp_path):
    """LLAMA_AOT_WITH_VULKAN=AUTO is ON for the host when libvulkan-dev is there and OFF for the aarch64
    cross build without an aarch64 libvulkan; ON without one is a configure error.  (Configure only.)"""
    need("cmake", "aarch64-linux-gnu-g++")
    if native_build.vulkan_for("aarch64") is not None:
        pytest.skip("an aarch64 libvulkan.so is installed: AUTO is ON for the cross build too")
    tvm_dir, ffi_dir = native_build.wheel_dirs()
    common = ["cmake", "-S", str(NATIVE), f"-DLLAMA_AOT_TVM_DIR={tvm_dir}", f"-DLLAMA_AOT_TVM_FFI_DIR={ffi_dir}",
              f"-DCMAKE_TOOLCHAIN_FILE={native_build.TOOLCHAINS['aarch64']}"]  # fmt: skip
    auto = subprocess.run([*common, "-B", str(tmp_path / "auto")], capture_output=True, text=True, timeout=300)
    assert auto.returncode == 0, auto.stderr[-3000:]
    assert "Vulkan device API OFF" in auto.stdout
    on = subprocess.run([*common, "-B", str(tmp_path / "on"), "-DLLAMA_AOT_WITH_VULKAN=ON"], capture_output=True,
                        text=True, timeout=300)  # fmt: skip
    assert on.returncode != 0 and "LLAMA_AOT_WITH_VULKAN=ON but" in on.stderr
    with pytest.raises(native_build.NativeBuildError, match="no Vulkan header"):
        native_build.build_native("aarch64", vulkan=True)  # refused before anything is built


# ---------------------------------------------------------------------------------------------
# running a --target vulkan package
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["run", "run_shared"])
def test_vulkan_package_matches_engine(native_vk, vk_package, engine_reference, driver, tmp_path):
    """llama_aot_run[_shared] --device vulkan: the same greedy tokens as the Python engine, logits to 1e-4."""
    exe = getattr(native_vk, driver)
    res = _driver(exe, vk_package, "--device", "vulkan", logits=tmp_path / "logits.bin")
    assert res.returncode == 0, f"stdout: {res.stdout}\nstderr: {res.stderr}"
    out = json.loads(res.stdout)
    ref_tokens, ref_rows = engine_reference
    assert out["prompt_ids"] == PROMPT
    assert out["token_ids"] == ref_tokens
    assert out["decode_steps"] == MAX_TOKENS - 1
    rows = np.fromfile(tmp_path / "logits.bin", dtype="<f4").reshape(ref_rows.shape)
    assert _rel(rows, ref_rows) <= REL_TOL, _rel(rows, ref_rows)


def test_teacher_forcing_and_device_info(native_vk, vk_package, engine_reference, vulkan_device, tmp_path):
    """--force-ids feeds the given continuation (its logits rows are the engine's for the same
    tokens); --verbose reports the device and the runtime's counters: one host round trip (the
    logits download) per decode step, uploads recorded in the stream rather than waited for."""
    ref_tokens, ref_rows = engine_reference
    forced = [5, 6] + ref_tokens[2:8]  # off the greedy path for two steps, then back on it
    res = _driver(native_vk.run, vk_package, "--force-ids", ",".join(map(str, forced)), "--verbose", max_tokens=8,
                  logits=tmp_path / "l.bin")  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["token_ids"] == forced
    from runtime_stubs.engine import Engine

    eng = Engine(vk_package)
    eng.reset()
    expect = np.stack([eng.prefill(PROMPT)] + [eng.decode(t) for t in forced[:-1]]).astype(np.float32)
    rows = np.fromfile(tmp_path / "l.bin", dtype="<f4").reshape(expect.shape)
    assert _rel(rows, expect) <= REL_TOL
    assert _rel(rows[3:], ref_rows[3:8]) > REL_TOL  # forcing changed the continuation
    info = out["device_info"]
    assert info["device"] == "vulkan:0" and info["device_name"] == vulkan_device["device_name"]
    # 1 prefill (3 chunks) + 7 decode steps; the load's uploads of big weights sync on their own
    steps = 3 + 7
    assert info["downloads"] == 8
    assert info["syncs"] <= info["uploads_synced"] + steps + 2, info
    assert info["uploads_recorded"] >= steps, info


def test_vulkan_device_selection(native_vk, vk_package, engine_reference, vulkan_device):
    """No --device opens the package's own device (vulkan); LLAMA_AOT_VULKAN_DEVICE by index and by name
    substring pick the device as in the plugin."""
    ref_tokens = engine_reference[0][:4]
    name = str(vulkan_device["device_name"]).split()[0].upper()  # case-insensitive substring
    for extra, env in (((), None), (("--device", "vulkan:0"), {"LLAMA_AOT_VULKAN_DEVICE": "0"}),
                       (("--device", "vulkan"), {"LLAMA_AOT_VULKAN_DEVICE": name})):  # fmt: skip
        res = _driver(native_vk.run, vk_package, *extra, max_tokens=4, env_extra=env)
        assert res.returncode == 0, f"{extra} {env}: {res.stderr}"
        assert json.loads(res.stdout)["token_ids"] == ref_tokens, (extra, env)


def test_vulkan_errors(native_vk, vk_package, vulkan_device):
    """UNSUPPORTED, with a reason, for a device index, name or driver that is not there and for a device
    kind the package was not compiled for; nothing crashes."""
    no_icd = {"VK_ICD_FILENAMES": "/nonexistent.json", "VK_DRIVER_FILES": "/nonexistent.json"}
    cases = [
        (("--device", "vulkan:7"), None, "no vulkan device 7"),
        (("--device", "vulkan"), {"LLAMA_AOT_VULKAN_DEVICE": "no-such-gpu"}, "matches no Vulkan device"),
        (("--device", "vulkan"), no_icd, "no vulkan device 0"),
        (("--device", "cpu"), None, 'was compiled for device "vulkan"'),
    ]
    for extra, env, expect in cases:
        res = _driver(native_vk.run, vk_package, *extra, max_tokens=2, env_extra=env)
        assert res.returncode == 1, (extra, env, res.stdout, res.stderr)
        assert "(unsupported)" in res.stderr and expect in res.stderr, (extra, env, res.stderr)


CTYPES_SCRIPT = textwrap.dedent(
    """
    import ctypes, json, sys
    lib = ctypes.CDLL(sys.argv[1])  # RTLD_LOCAL, like JNI's System.loadLibrary
    lib.llama_aot_last_error.restype = ctypes.c_char_p
    lib.llama_aot_sample.restype = ctypes.c_int32
    ids = [int(t) for t in sys.argv[3].split(",")]
    h = ctypes.c_void_p()
    res = {"open": lib.llama_aot_open(sys.argv[2].encode(), b"vulkan", ctypes.byref(h))}
    res["err"] = lib.llama_aot_last_error().decode()
    V = lib.llama_aot_vocab_size(h)
    logits = (ctypes.c_float * V)()
    res["prefill"] = lib.llama_aot_prefill(h, (ctypes.c_int32 * len(ids))(*ids), len(ids), logits)
    res["row0"] = list(logits)
    toks = []
    for step in range(3):
        t = lib.llama_aot_sample(h, logits, ctypes.c_float(0), ctypes.c_float(1), ctypes.c_uint64(step))
        toks.append(t)
        lib.llama_aot_decode(h, t, logits)
    res["tokens"] = toks
    res["reset"] = lib.llama_aot_reset(h)
    res["seq_len"] = lib.llama_aot_seq_len(h)
    lib.llama_aot_close(h)
    print(json.dumps(res))
    """
)


def test_vulkan_c_api_through_ctypes(native_vk, vk_package, engine_reference, tmp_path):
    """libllama_aot_runtime.so loaded RTLD_LOCAL with immediate binding, device "vulkan": logits of the
    prefill and the first greedy tokens as in the Python engine; reset works."""
    script = tmp_path / "c_api_vulkan.py"
    script.write_text(CTYPES_SCRIPT)
    env = dict(os.environ, LD_BIND_NOW="1")
    res = subprocess.run([sys.executable, str(script), str(native_vk.shared_lib), str(vk_package),
                          ",".join(map(str, PROMPT))], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["open"] == 0, r["err"]
    assert r["prefill"] == 0
    ref_tokens, ref_rows = engine_reference
    assert _rel(np.asarray(r["row0"], dtype=np.float32), ref_rows[0]) <= REL_TOL
    assert r["tokens"] == ref_tokens[:3]
    assert r["reset"] == 0 and r["seq_len"] == 0

