"""Vulkan runtime for the TVM runtime in this process: device API + "vulkan" module loader.

The apache-tvm wheel has no Vulkan runtime.  This package holds a small C++ one (``vk_*.cc``):
``device_api.vulkan`` (kDLVulkan = 7: allocation, copies, sync, device attributes) and
``ffi.Module.load_from_bytes.vulkan`` (runs the SPIR-V kernels that ``targets.backends.vulkan``
compiles).  It is compiled once against the wheel's shipped headers and cached by source hash::

    from runtime_stubs import vulkan as vkrt
    vkrt.load_plugin()                       # builds on first use (~20 s of g++), then ctypes RTLD_GLOBAL
    dev = tvm.runtime.vulkan(0)
    lib = tvm.runtime.load_module("model.so")   # libraries built for a Vulkan target now run
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)

Works with ``TVM_USE_RUNTIME_LIB=1`` too (the plugin only needs libtvm_runtime + libtvm_ffi).
Environment: ``LLAMA_AOT_VULKAN_DEVICE`` (index or name substring: which device is vulkan(0)),
``LLAMA_AOT_VULKAN_MAPPED`` (0/1: force staging copies / host-mapped storage),
``LLAMA_AOT_VULKAN_VALIDATION=1`` (Khronos validation layer, when installed),
``LLAMA_AOT_CACHE_DIR`` (where the plugin is cached, default ~/.cache/llama-aot), ``CXX``.
See docs/vulkan.md, "Runtime".
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runtime_stubs.errors import LlamaAotError

HERE = Path(__file__).resolve().parent
SOURCES = ("vk_device.cc", "vk_device_api.cc", "vk_module.cc")
HEADERS = ("vk_common.h",)
CXXFLAGS = ("-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-Wall")
NO_DEVICE_REASON = "needs a Vulkan driver (mesa-vulkan-drivers)"

_lock = threading.Lock()
_loaded: Path | None = None
last_build_seconds: float = 0.0  # wall time of the last build_plugin() that compiled (0: cached)


class VulkanRuntimeError(LlamaAotError):
    """The Vulkan runtime plugin could not be built or loaded, or there is no Vulkan device."""


def _site_dir(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise VulkanRuntimeError(f"the Python package {pkg!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0])


def _cache_dir() -> Path:
    d = os.environ.get("LLAMA_AOT_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "llama-aot")
    return Path(d)


def _find_cxx() -> str:
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return shutil.which(c)
    raise VulkanRuntimeError("no C++ compiler found (set $CXX or install g++): needed once to build the Vulkan runtime")


def _vulkan_link() -> list[str]:
    """-lvulkan, or the loader's full path where only libvulkan.so.1 exists (no -dev symlink)."""
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
        if os.path.exists(os.path.join(d, "libvulkan.so")):
            return ["-lvulkan"]
    name = ctypes.util.find_library("vulkan")
    if name:
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
            if os.path.exists(os.path.join(d, name)):
                return [os.path.join(d, name)]
    return ["-lvulkan"]


def _build_inputs() -> tuple[str, list[str], list[str], str]:
    """(compiler, compile flags, link flags, cache key)."""
    tvm_dir, ffi_dir = _site_dir("tvm"), _site_dir("tvm_ffi")
    dlpack = None
    for cand in (ffi_dir / "include", ffi_dir / "3rdparty" / "dlpack" / "include"):
        if (cand / "dlpack" / "dlpack.h").exists():
            dlpack = cand
            break
    inc = [f"-I{tvm_dir / 'include'}", f"-I{ffi_dir / 'include'}"] + ([f"-I{dlpack}"] if dlpack else [])
    tvm_lib, ffi_lib = tvm_dir / "lib", ffi_dir / "lib"
    link = [
        f"-L{tvm_lib}", "-ltvm_runtime", f"-L{ffi_lib}", "-ltvm_ffi", *_vulkan_link(),
        f"-Wl,-rpath,{tvm_lib}", f"-Wl,-rpath,{ffi_lib}",
    ]  # fmt: skip
    cxx = _find_cxx()
    try:
        cxx_version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        cxx_version = cxx
    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    for part in (*CXXFLAGS, *inc, *link, cxx_version, _version("apache-tvm"), _version("apache-tvm-ffi")):
        h.update(part.encode() + b"\0")
    return cxx, [*CXXFLAGS, *inc], link, h.hexdigest()[:16]


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - only feeds the cache key
        return "?"


def _nice():
    with contextlib.suppress(OSError):
        os.nice(int(os.environ.get("LLAMA_AOT_BUILD_NICE", "19")))


def plugin_path() -> Path:
    """Where the plugin for the current sources / wheel versions is (or will be) cached."""
    *_, key = _build_inputs()
    return _cache_dir() / f"llama_aot_vulkan_runtime-{key}.so"


def build_plugin(force: bool = False, jobs: int | None = None) -> Path:
    """Compile the plugin (once per source hash) and return the path of the shared library.

    Compiles the translation units in parallel (``jobs``, default ``$LLAMA_AOT_BUILD_JOBS`` or 2)
    at low priority (``$LLAMA_AOT_BUILD_NICE``, default 19).  Concurrent callers (processes) wait
    on a file lock; the result is renamed into place atomically.
    """
    global last_build_seconds
    cxx, cflags, link, key = _build_inputs()
    cache = _cache_dir()
    out = cache / f"llama_aot_vulkan_runtime-{key}.so"
    if out.exists() and not force:
        return out
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(cache / f".llama_aot_vulkan_runtime-{key}.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if out.exists() and not force:
            return out
        jobs = jobs or int(os.environ.get("LLAMA_AOT_BUILD_JOBS", "2"))
        with tempfile.TemporaryDirectory(prefix="llama_aot_vkrt_") as tmp:

            def compile_one(src: str) -> str:
                obj = os.path.join(tmp, src + ".o")
                cmd = [cxx, *cflags, "-c", str(HERE / src), "-o", obj]
                p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_nice)
                if p.returncode != 0:
                    raise VulkanRuntimeError(
                        f"building the Vulkan runtime failed:\n{' '.join(cmd)}\n{p.stderr[-6000:]}\n"
                        "(needs libvulkan-dev for <vulkan/vulkan.h>)"
                    )
                return obj

            with ThreadPoolExecutor(max(1, jobs)) as pool:
                objs = list(pool.map(compile_one, SOURCES))
            so = os.path.join(tmp, "plugin.so")
            cmd = [cxx, "-shared", *objs, *link, "-o", so]
            p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_nice)
            if p.returncode != 0:
                raise VulkanRuntimeError(
                    f"linking the Vulkan runtime failed:\n{' '.join(cmd)}\n{p.stderr[-6000:]}\n"
                    "(needs the Vulkan loader: apt-get install libvulkan-dev)"
                )
            staged = out.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(so, staged)
            os.replace(staged, out)
    last_build_seconds = time.perf_counter() - t0
    return out


def load_plugin() -> Path:
    """Build (if needed) and load the plugin into this process; idempotent and thread-safe.

    Afterwards ``tvm.runtime.vulkan(n)`` tensors work and ``tvm.runtime.load_module`` runs the
    Vulkan kernels embedded in libraries.  It replaces the SPIR-V-only loader stand-in of
    ``targets.backends.vulkan`` if that was registered first.  Loading does not need a Vulkan
    device; ``tvm.runtime.vulkan(0).exist`` tells whether there is one.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        import tvm  # noqa: F401  libtvm_runtime must be loaded (RTLD_GLOBAL) first

        path = build_plugin()
        try:
            ctypes.CDLL(str(path), ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise VulkanRuntimeError(
                f"cannot load the Vulkan runtime plugin {path}: {e} (is the Vulkan loader libvulkan1 installed?)"
            ) from e
        _loaded = path
        return path


def _global(name: str):
    load_plugin()
    import tvm

    return tvm.get_global_func(name)


def device_count() -> int:
    """Vulkan devices usable by the runtime (0 without a driver). Loads the plugin."""
    return int(_global("llama_aot.vulkan.device_count")())


def unavailable_reason() -> str | None:
    """None when there is a Vulkan device, else why not (NO_DEVICE_REASON plus details)."""
    try:
        if device_count() > 0:
            return None
        detail = str(_global("llama_aot.vulkan.init_error")())
    except VulkanRuntimeError as e:
        detail = str(e)
    return f"{NO_DEVICE_REASON}: {detail}" if detail else NO_DEVICE_REASON


def device_info(device_id: int = 0) -> dict:
    """Limits and features of a device, as target attribute names, plus runtime details
    (``subgroup_size``, ``host_mapped_storage``, ``dispatches``, ``submits``)."""
    m = _global("llama_aot.vulkan.device_info")(device_id)
    out = {}
    for k, v in m.items():
        out[str(k)] = str(v) if isinstance(v, str) else v
    return out


_TARGET_KEYS = (
    "max_num_threads", "thread_warp_size", "max_block_size_x", "max_block_size_y", "max_block_size_z",
    "max_shared_memory_per_block", "max_push_constants_size", "supports_float16", "supports_float32",
    "supports_float64", "supports_int8", "supports_int16", "supports_int32", "supports_int64",
    "supports_8bit_buffer", "supports_16bit_buffer", "supports_storage_buffer_storage_class",
    "supported_subgroup_operations", "vulkan_api_version", "max_spirv_version", "device_name",
)  # fmt: skip


def device_target(device_id: int = 0, host: dict | None = None, max_num_threads: int = 256, **overrides) -> dict:
    """A ``{"kind": "vulkan", ...}`` target dict describing this device (for ``tvm.compile``).

    ``max_num_threads`` caps the workgroup size the schedules use (default 256, like TVM's
    Vulkan default; the device limit is usually 1024).  ``thread_warp_size`` is the device's
    smallest compute subgroup size.  ``overrides`` replace any attribute.
    """
    info = device_info(device_id)
    t = {"kind": "vulkan"}
    for k in _TARGET_KEYS:
        if k in info:
            t[k] = info[k]
    t["max_num_threads"] = min(int(t.get("max_num_threads", max_num_threads)), max_num_threads)
    t["max_threads_per_block"] = t["max_num_threads"]
    t.update(overrides)
    if host is not None:
        t["host"] = host
    return t


def validation_error_count() -> int:
    """Errors reported by the Khronos validation layer so far (LLAMA_AOT_VULKAN_VALIDATION=1)."""
    return int(_global("llama_aot.vulkan.validation_error_count")())


def load_module(path: str | os.PathLike):
    """``tvm.runtime.load_module`` after :func:`load_plugin`."""
    load_plugin()
    import tvm

    return tvm.runtime.load_module(str(path))


def main(argv: list[str] | None = None) -> int:
    """``python -m runtime_stubs.vulkan [--profile FILE.json [--device N]]``: build, load and describe
    the devices; ``--profile`` writes the device's target profile for ``compile --vulkan-profile``."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m runtime_stubs.vulkan", description=main.__doc__)
    ap.add_argument("--profile", default=None, metavar="FILE.json", help="write this device's Vulkan target profile")
    ap.add_argument("--device", type=int, default=0, help="device index for --profile")
    args = ap.parse_args(argv)
    path = build_plugin()
    print(f"plugin: {path}" + (f" (built in {last_build_seconds:.1f} s)" if last_build_seconds else " (cached)"))
    reason = unavailable_reason()
    if reason:
        print(reason)
        return 1
    if args.profile:
        Path(args.profile).write_text(json.dumps(device_target(args.device), indent=1) + "\n")
        print(f"wrote {args.profile} (vulkan({args.device}))")
        return 0
    for i in range(device_count()):
        info = device_info(i)
        print(f"vulkan({i}): {info.get('device_name')}")
        for k in sorted(info):
            print(f"  {k} = {info[k]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
