"""The embedded tiny model compiled CPU-only for a phone SoC (`--soc snapdragon-8-gen-3 --device
cpu`, aarch64-linux-android) runs on the aarch64 runtime under qemu-user (Linux aarch64 glibc
standing in for Android) and gives the same greedy tokens as the host Python runtime on a host
build of the same model and quantization; logits agree to 1e-3 of the logit scale (different CPU
codegen, same packed q4f16 weights).  Three ways to load the phone package:

- lib/model.so dlopen'ed by our runtime (`llama_aot_run`, runtime linked in; `llama_aot_run_shared`,
  runtime in libllama_aot_runtime.so);
- lib/libmodel.a linked whole-archive into the driver as a system-lib model
  (`"runtime": {"library": "system:<library.system_lib_prefix>"}`);
- lib/model.so dlopen'ed by TVM's own prebuilt aarch64 libtvm_runtime.so / libtvm_ffi.so (the
  PyPI manylinux wheels of the installed versions, downloaded once into build/tvm-wheels/), with
  our C API and driver compiled against those wheels' headers.

The x86_64 runtime runs the host package natively against the same reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from native_helpers import (NATIVE, PHONE_SOC, REPO, check, engine_reference, link_system_lib_driver, need,
                            need_phone_toolchain, prebuilt_tvm_aarch64, run_driver, system_lib_view)  # fmt: skip
from runtime_stubs import native_build

MODEL = REPO / "models" / "tiny-llama3"
QUANT = "q4f16"
PREFILL_CHUNK = 16
CONTEXT_WINDOW = 128
# "def read_config(path):\n    with open(path) as f:\n        return json.load(f)\n\n\ndef " through
# the model's tokenizer (bos first): 26 tokens, i.e. two prefill chunks of 16
PROMPT = [0, 320, 769, 1026, 1224, 1422, 307, 260, 496, 1191, 1422, 10, 428, 286, 271, 263, 329, 1027, 84, 267, 15,
          1391, 623, 965, 320, 222]  # fmt: skip
MAX_TOKENS = 24
REL_TOL = 1e-3  # of max |logit| of the reference; observed ~3e-7 (aarch64 NEON/FMA vs x86 codegen)


def _compile(out: Path, quant: str = QUANT, **kw) -> Path:
    from compiler.compile import CompileOptions, compile_model

    opts = CompileOptions(quant=quant, prefill_chunk=PREFILL_CHUNK, context_window=CONTEXT_WINDOW, **kw)
    return compile_model(MODEL, out, opts)


@pytest.fixture(scope="module")
def soc_package(tmp_path_factory):
    # f32 activations, like its host reference: these tests are about loading and running the library
    need_phone_toolchain()
    return _compile(tmp_path_factory.mktemp("soc") / "pkg", soc=PHONE_SOC, device="cpu", int8_activations=False)


@pytest.fixture(scope="module", params=["q4f16", "cb4f16"])
def soc_package_int8(request, tmp_path_factory):
    """The phone build as compiled by default: int8 activations with the dotprod (sdot) kernels; for cb4f16
    the codes looked up with ``tbl`` first."""
    need_phone_toolchain()
    return _compile(tmp_path_factory.mktemp(f"soc-int8-{request.param}") / "pkg", soc=PHONE_SOC, device="cpu",
                    quant=request.param)


@pytest.fixture(scope="module")
def host_package(tmp_path_factory):
    # f32 activations: the float reference of the phone build (which has no int8 VNNI kernel)
    return _compile(tmp_path_factory.mktemp("host") / "pkg", int8_activations=False)


@pytest.fixture(scope="module")
def host_reference(host_package):
    """(tokens, logits rows) of runtime_stubs.engine.Engine on the host package."""
    return engine_reference(host_package, PROMPT, MAX_TOKENS, stop_on_eos=False)


def run_package(prefix: list[str], exe: Path, package: Path, tmp: Path, threads: int | None = None, env=None):
    """llama_aot_run on the package (no stop on EOS); returns (json result, logits rows [tokens, vocab])."""
    extra = ["--no-stop-on-eos", *(["--threads", str(threads)] if threads else [])]
    return run_driver(prefix, exe, package, PROMPT, MAX_TOKENS, tmp, extra=extra, env=env)


def _elf_machine(path: Path) -> int:
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", path
    return int.from_bytes(head[18:20], "little")


# ---------------------------------------------------------------------------------------------


def test_soc_cpu_package_libraries(soc_package):
    """What the linking tests below rely on: aarch64 objects with the system-lib prefix, a model.so
    that TVM loads as an ordinary library (unprefixed aliases), no thread-local storage (so the
    android triple's emulated TLS never comes into play under glibc)."""
    cfg = json.loads((soc_package / "llama-aot.json").read_text())
    lib, rt = cfg["library"], cfg["runtime"]
    prefix = lib["system_lib_prefix"]
    assert cfg["target"]["tvm_host"]["mtriple"] == "aarch64-linux-android" and cfg["target"]["device"] == "cpu"
    assert lib["platform"] == "android" and rt["library"] == lib["shared_library"] == "lib/model.so"
    assert set(lib["objects"].values()) == {"elf-aarch64"}
    assert (soc_package / lib["static_library"]).read_bytes()[:8] == b"!<arch>\n"
    so = soc_package / "lib" / "model.so"
    assert _elf_machine(so) == 183  # EM_AARCH64
    nm = shutil.which("llvm-nm") or shutil.which("llvm-nm-14")
    dyn = subprocess.run([nm, "-D", str(so)], capture_output=True, text=True, check=True).stdout.split("\n")
    defined = {ln.split()[-1] for ln in dyn if len(ln.split()) == 3}
    undefined = {ln.split()[-1] for ln in dyn if len(ln.split()) == 2 and ln.split()[0] == "U"}
    assert f"{prefix}__tvm_ffi__library_bin" in defined and "__tvm_ffi__library_bin" in defined
    kernels = [s for s in defined if s.startswith(f"__tvm_ffi_{prefix}")]
    assert kernels and all("__tvm_ffi_" + k[len(f"__tvm_ffi_{prefix}") :] in defined for k in kernels)
    # only the runtime's C symbols and libc/libm are left to the loader
    runtime_syms = {s for s in undefined if s.startswith(("TVMFFI", "TVMBackend"))}
    assert "TVMFFIErrorSetRaisedFromCStrParts" in runtime_syms
    assert not any("tls" in s.lower() for s in undefined), undefined
    phdrs = subprocess.run(["readelf", "-lW", str(so)], capture_output=True, text=True, check=True).stdout
    assert " TLS " not in phdrs


def test_x86_runtime_runs_host_tiny_package(native_x86, host_package, host_reference, tmp_path):
    out, rows = run_package([], native_x86.run, host_package, tmp_path)
    check(out, rows, host_reference, PROMPT, rel_tol=1e-6)  # the same model.so as the Python runtime


@pytest.mark.parametrize("driver", ["run", "run_shared"])
def test_aarch64_runtime_runs_soc_model_so_under_qemu(native_aarch64, soc_package, host_reference, tmp_path, driver):
    """lib/model.so (clang --target=aarch64-linux-android -fuse-ld=lld -shared -nostdlib) dlopen'ed by
    our runtime, linked into the driver (-rdynamic) or as libllama_aot_runtime.so."""
    exe = getattr(native_aarch64, driver)
    out, rows = run_package(native_aarch64.runner(), exe, soc_package, tmp_path, threads=None if driver == "run" else 1)
    check(out, rows, host_reference, PROMPT, rel_tol=REL_TOL)


def test_aarch64_static_archive_system_lib_under_qemu(native_aarch64, soc_package, host_reference, tmp_path):
    """lib/libmodel.a linked whole-archive (with the whole static runtime) into the driver; the C API
    finds it with ffi.SystemLib(<prefix>) from "runtime.library": "system:<prefix>"."""
    exe = link_system_lib_driver(native_aarch64, soc_package, tmp_path / "llama_aot_run_syslib", "aarch64-linux-gnu-g++")
    package = system_lib_view(soc_package, tmp_path / "syslib-pkg")
    out, rows = run_package(native_aarch64.runner(), exe, package, tmp_path, threads=1)
    check(out, rows, host_reference, PROMPT, rel_tol=REL_TOL)


# ---------------------------------------------------------------------------------------------
# cross-check: TVM's own aarch64 build (PyPI wheels) loading the same model.so
# ---------------------------------------------------------------------------------------------


def prebuilt_driver(tvm) -> Path:
    """llama_aot_run + our C API compiled against the wheels' headers and linked with their
    libtvm_runtime.so / libtvm_ffi.so (nothing of our runtime build); cached by source hash."""
    need("aarch64-linux-gnu-g++")
    sources = [NATIVE / "tools" / "llama_aot_run.cc", NATIVE / "src" / "llama_aot.cc", NATIVE / "src" / "package.cc",
               NATIVE / "src" / "sha256.cc"]
    h = hashlib.sha256(json.dumps(tvm.versions, sort_keys=True).encode())
    headers = [*NATIVE.glob("include/*.h"), *NATIVE.glob("src/*.h"), *(NATIVE / "compat").rglob("*.h")]
    for p in sorted([*sources, *headers]):
        h.update(str(p.relative_to(NATIVE)).encode() + p.read_bytes())
    h.update(subprocess.run(["aarch64-linux-gnu-g++", "--version"], capture_output=True, text=True).stdout.encode())
    exe = tvm.root.parent / f"driver-{h.hexdigest()[:16]}" / "llama_aot_run_prebuilt_tvm"
    if exe.is_file():
        return exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_name(f".tmp-{os.getpid()}")
    cmd = ["nice", "-n", "19", "aarch64-linux-gnu-g++", "-std=c++17", "-O2", "-o", str(tmp), *map(str, sources),
           f"-I{NATIVE / 'include'}", f"-I{NATIVE / 'compat'}", f"-I{NATIVE / 'compat/src/runtime'}",
           *[f"-I{d}" for d in tvm.include_dirs], *[f"-L{d}" for d in tvm.lib_dirs],
           "-ltvm_runtime", "-ltvm_ffi", "-ldl", "-lpthread"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    tmp.rename(exe)
    return exe


@pytest.fixture(scope="module")
def prebuilt_tvm():
    return prebuilt_tvm_aarch64()  # skips (before anything is compiled) when PyPI is unreachable


def test_prebuilt_tvm_wheel_runtime_runs_soc_model_so_under_qemu(prebuilt_tvm, soc_package, host_reference, tmp_path):
    runner = [] if native_build.host_arch() == "aarch64" else list(native_build.QEMU["aarch64"])
    need("aarch64-linux-gnu-g++", *runner[:1])
    tvm = prebuilt_tvm
    exe = prebuilt_driver(tvm)
    dynamic = subprocess.run(["readelf", "-dW", str(exe)], capture_output=True, text=True, check=True).stdout
    assert "[libtvm_runtime.so]" in dynamic and "[libtvm_ffi.so]" in dynamic
    defined = subprocess.run(["aarch64-linux-gnu-nm", "--defined-only", str(exe)], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert "TVMFFIFunctionCall" not in defined and "TVMBackendParallelLaunch" not in defined  # not our runtime
    path = "LD_LIBRARY_PATH=" + ":".join(map(str, tvm.lib_dirs))
    if runner:  # qemu-aarch64 -E VAR=VALUE sets the guest's environment
        prefix, env = [runner[0], "-E", path, *runner[1:]], None
    else:
        prefix, env = [], dict(os.environ, LD_LIBRARY_PATH=path.split("=", 1)[1])
    # without the wheel's libraries the driver does not even start: they are what it runs on
    res = subprocess.run([*runner, str(exe), str(soc_package), "--prompt-ids", "1"], capture_output=True, text=True)
    assert res.returncode != 0 and "libtvm_" in res.stderr
    out, rows = run_package(prefix, exe, soc_package, tmp_path, threads=1, env=env)
    check(out, rows, host_reference, PROMPT, rel_tol=REL_TOL)


def test_aarch64_int8_activation_kernels_under_qemu(native_aarch64, soc_package_int8, tmp_path):
    """The default phone build rounds projection inputs to int8 and multiplies with NEON ``sdot``
    (schedules/cpu/int8_gemm.py, int8_gemv.py): run under qemu, its logits match a transformers reference
    on the package's dequantized weights whose projections and lm_head round their inputs the same way,
    teacher-forced on the phone's tokens, within the reference's own rounding-flip noise floor."""
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from reference import dequantized_hf_weights, int8_reference, reference_model

    cfg = json.loads((soc_package_int8 / "llama-aot.json").read_text())
    assert cfg["projection_activations"] == "int8_group32"
    asm_kernels = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(soc_package_int8 / "lib" / "model.so")],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "sdot" in asm_kernels, "no dot-product instruction in the phone library"
    if cfg["quantization"]["name"] == "cb4f16":
        assert "tbl" in asm_kernels, "no table lookup in the cb4f16 phone library"
    out, rows = run_package(native_aarch64.runner(), native_aarch64.run, soc_package_int8, tmp_path, threads=2)
    tokens = out["token_ids"]
    model = reference_model(MODEL, dequantized_hf_weights(soc_package_int8))
    ref, spread = int8_reference(model, PROMPT + tokens[:-1])
    ref = ref[len(PROMPT) - 1 :]
    scale = float(np.abs(ref).max())
    worst = float(np.abs(rows - ref).max())
    print(f"\n[max |logit diff| {worst / scale:.3g} of the logit scale; reference noise floor {spread / scale:.3g}]")
    assert worst <= max(2.5e-3 * scale, 1.5 * spread)
