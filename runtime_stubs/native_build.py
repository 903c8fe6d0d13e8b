"""Build the on-device runtime (runtime_stubs/native) for one architecture, with a build cache.

    python -m runtime_stubs.native_build --arch x86_64      # or aarch64; prints the artifacts
    from runtime_stubs.native_build import build_native; b = build_native("aarch64")

The runtime is compiled from the TVM / tvm_ffi sources shipped inside the installed wheels (located
with importlib, never copied).  Outputs go to build/native-<arch>/ (gitignored).  A stamp file holds
a hash of everything that affects the result (our sources and CMake files, the listed wheel sources,
the wheel versions, the compiler's version, the options); when it matches, nothing is run at all,
otherwise CMake rebuilds incrementally.  Compiles run under `nice -n 19` with 2 jobs by default (the
build machines are shared).  Needs cmake (+ ninja, optional) and, for aarch64 on an x86_64 host,
Debian's g++-aarch64-linux-gnu; qemu-user runs the results.

The Vulkan device API (runtime_stubs/vulkan/*.cc, LLAMA_AOT_WITH_VULKAN) is compiled in when the
target has <vulkan/vulkan.h> and libvulkan (``--vulkan auto``, the default: the host's
libvulkan-dev for x86_64; an aarch64 libvulkan.so under /usr/aarch64-linux-gnu or
/usr/lib/aarch64-linux-gnu for aarch64, normally absent); ``--vulkan on|off`` forces it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

NATIVE_DIR = Path(__file__).resolve().parent / "native"
REPO_ROOT = NATIVE_DIR.parent.parent
STAMP = "llama-aot-build.json"
ARCHES = ("x86_64", "aarch64")
TOOLCHAINS = {"aarch64": NATIVE_DIR / "cmake" / "aarch64-linux-gnu.cmake"}
CROSS_CXX = {"aarch64": "aarch64-linux-gnu-g++", "x86_64": "x86_64-linux-gnu-g++"}
QEMU = {"aarch64": ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]}
VULKAN_DIR = NATIVE_DIR.parent / "vulkan"  # vk_*.cc: compiled in with LLAMA_AOT_WITH_VULKAN
VULKAN_SOURCES = ("vk_common.h", "vk_device.cc", "vk_device_api.cc", "vk_module.cc")
# where a target's libvulkan.so (the link-time name) may be; the headers are arch-independent
VULKAN_LIB_DIRS = {
    "x86_64": ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"),
    "aarch64": ("/usr/aarch64-linux-gnu/lib", "/usr/lib/aarch64-linux-gnu"),
}
VULKAN_INCLUDE_DIRS = ("/usr/include", "/usr/local/include")


class NativeBuildError(RuntimeError):
    """The native runtime could not be built (missing tool, compiler error)."""


@dataclasses.dataclass
class NativeBuild:
    arch: str
    build_dir: Path
    static_lib: Path
    shared_lib: Path
    run: Path  # llama_aot_run (runtime linked in, exports it to model .so files)
    run_shared: Path  # llama_aot_run over libllama_aot_runtime.so
    jni_lib: Path | None
    include_dir: Path
    vulkan: bool  # the Vulkan device API is compiled in (llama_aot_open(dir, "vulkan", ...))
    seconds: float  # wall time of this call's build (0 when cached)
    cached: bool
    source_hash: str

    @property
    def static_link_libs(self) -> list[str]:
        """What an executable linking libllama_aot_runtime.a (whole archive) must link after it:
        -ldl -lpthread -lm, and libvulkan when the Vulkan device API is compiled in."""
        libs = ["-ldl", "-lpthread", "-lm"]
        if self.vulkan:
            vk = vulkan_for(self.arch)
            libs.append(str(vk[1]) if vk else "-lvulkan")
        return libs

    def runner(self) -> list[str]:
        """Command prefix to execute this arch's binaries on this host ([] or qemu)."""
        return [] if self.arch == host_arch() else list(QEMU[self.arch])


def host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def wheel_dirs() -> tuple[Path, Path]:
    """site-packages/tvm and site-packages/tvm_ffi, located without importing them."""
    out = []
    for name in ("tvm", "tvm_ffi"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise NativeBuildError(f"the {name} package is not installed (pip install apache-tvm / apache-tvm-ffi)")
        out.append(Path(list(spec.submodule_search_locations)[0]))
    tvm_dir, ffi_dir = out
    for p in (tvm_dir / "src" / "runtime" / "vm" / "paged_kv_cache.cc", ffi_dir / "src" / "ffi" / "function.cc"):
        if not p.is_file():
            raise NativeBuildError(f"{p} is missing: this wheel does not ship the runtime sources")
    return tvm_dir, ffi_dir


def listed_sources() -> dict[str, list[str]]:
    """The source lists of sources.cmake: {list name: [paths relative to its wheel directory]}."""
    text = (NATIVE_DIR / "sources.cmake").read_text()
    lists = {}
    for m in re.finditer(r"set\((LLAMA_AOT_TVM_\w*SOURCES)\s*\n(.*?)\)", text, re.S):
        lists[m.group(1)] = [ln.strip() for ln in m.group(2).splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not any(k.startswith("LLAMA_AOT_TVM_FFI") for k in lists) or len(lists) < 2:
        raise NativeBuildError("sources.cmake: cannot find the LLAMA_AOT_TVM_*_SOURCES lists")
    return lists


def wheel_source_paths() -> list[Path]:
    tvm_dir, ffi_dir = wheel_dirs()
    paths = []
    for name, files in sorted(listed_sources().items()):
        base = ffi_dir / "src" / "ffi" if name.startswith("LLAMA_AOT_TVM_FFI") else tvm_dir / "src" / "runtime"
        paths += [base / f for f in files]
    return paths


def _version(pkg_dir: Path) -> str:
    v = pkg_dir / "_version.py"
    return v.read_text() if v.is_file() else ""


def _compiler_version(arch: str) -> str:
    cxx = os.environ.get("CXX") if arch == host_arch() else None
    cxx = cxx or ("c++" if arch == host_arch() else CROSS_CXX[arch])
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        hint = " (apt-get install g++-aarch64-linux-gnu)" if arch == "aarch64" else ""
        raise NativeBuildError(f"C++ compiler {cxx} for {arch} is not usable: {e}{hint}") from None


def vulkan_for(arch: str) -> tuple[Path, Path] | None:
    """(include dir holding vulkan/vulkan.h, libvulkan.so) for arch, or None when either is missing.

    Only the link-time name libvulkan.so (libvulkan-dev, or the target's own sysroot) counts, and
    only in the target's library directories: a cross build never picks up the host's loader.
    $VULKAN_SDK (host builds) is looked at first.
    """
    sdk = os.environ.get("VULKAN_SDK")
    inc_dirs = ([f"{sdk}/include"] if sdk and arch == host_arch() else []) + list(VULKAN_INCLUDE_DIRS)
    lib_dirs = ([f"{sdk}/lib"] if sdk and arch == host_arch() else []) + list(VULKAN_LIB_DIRS.get(arch, ()))
    inc = next((Path(d) for d in inc_dirs if (Path(d) / "vulkan" / "vulkan.h").is_file()), None)
    lib = next((Path(d) / "libvulkan.so" for d in lib_dirs if (Path(d) / "libvulkan.so").exists()), None)
    if inc is None or lib is None or not (VULKAN_DIR / "vk_device.cc").is_file():
        return None
    return inc, lib


def source_hash(arch: str, options: dict) -> str:
    tvm_dir, ffi_dir = wheel_dirs()
    h = hashlib.sha256()
    own = [
        p
        for p in sorted(NATIVE_DIR.rglob("*"))
        if p.is_file() and p.suffix in {".h", ".cc", ".c", ".txt", ".cmake", ".modulemap"}
    ]
    if options.get("vulkan"):
        own += [VULKAN_DIR / f for f in VULKAN_SOURCES]
    for p in own:
        h.update(str(p.relative_to(NATIVE_DIR.parent)).encode())
        h.update(p.read_bytes())
    for p in wheel_source_paths():
        h.update(str(p).encode())
        h.update(p.read_bytes())
    h.update(_version(tvm_dir).encode())
    h.update(_version(ffi_dir).encode())
    h.update(str(tvm_dir).encode())
    h.update(_compiler_version(arch).encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()


def jdk_include() -> Path | None:
    """The include directory of the host JDK (holds jni.h), if there is one."""
    home = os.environ.get("JAVA_HOME")
    candidates = [Path(home) / "include"] if home else []
    javac = shutil.which("javac")
    if javac:
        candidates.append(Path(os.path.realpath(javac)).parent.parent / "include")
    for c in candidates:
        if (c / "jni.h").is_file():
            return c
    return None


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # one build per directory at a time (parallel test runs)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _artifacts(arch: str, build_dir: Path, jni: bool, vulkan: bool, seconds: float, cached: bool,
               digest: str) -> NativeBuild:
    return NativeBuild(
        arch=arch,
        build_dir=build_dir,
        static_lib=build_dir / "libllama_aot_runtime.a",
        shared_lib=build_dir / "libllama_aot_runtime.so",
        run=build_dir / "llama_aot_run",
        run_shared=build_dir / "llama_aot_run_shared",
        jni_lib=(build_dir / "libllama_aot_jni.so") if jni else None,
        include_dir=NATIVE_DIR / "include",
        vulkan=vulkan,
        seconds=seconds,
        cached=cached,
        source_hash=digest,
    )


def build_native(
    arch: str | None = None,
    jobs: int = 2,
    build_root: Path | None = None,
    jni: bool | None = None,
    verbose: bool = False,
    vulkan: bool | None = None,
) -> NativeBuild:
    """Build (or reuse) the runtime for `arch`; returns where the artifacts are.

    ``vulkan``: compile the Vulkan device API in (None: when ``vulkan_for(arch)`` finds the header
    and libvulkan.so of the target; True without them raises NativeBuildError).
    """
    arch = arch or host_arch()
    if arch not in ARCHES:
        raise NativeBuildError(f"unknown arch {arch!r} (expected one of {ARCHES})")
    if arch != host_arch() and arch not in TOOLCHAINS:
        raise NativeBuildError(f"no cross toolchain file for {arch} on a {host_arch()} host")
    if shutil.which("cmake") is None:
        raise NativeBuildError("cmake is not installed (apt-get install cmake)")
    build_root = Path(build_root or os.environ.get("LLAMA_AOT_NATIVE_BUILD_ROOT") or REPO_ROOT / "build")
    build_dir = build_root / f"native-{arch}"
    jdk = jdk_include()
    if jni is None:
        jni = jdk is not None
    elif jni and jdk is None:
        raise NativeBuildError("jni=True but no JDK include directory (jni.h) was found; set JAVA_HOME")
    vk = vulkan_for(arch)
    if vulkan is None:
        vulkan = vk is not None
    elif vulkan and vk is None:
        raise NativeBuildError(
            f"vulkan=True but no Vulkan header + libvulkan.so for {arch} was found "
            f"(x86_64: apt-get install libvulkan-dev; aarch64: see docs/runtime.md, Vulkan)"
        )
    options = {"arch": arch, "jni": bool(jni), "jdk": str(jdk) if jni else "", "vulkan": bool(vulkan),
               "vulkan_lib": str(vk[1]) if vulkan else ""}  # fmt: skip
    tvm_dir, ffi_dir = wheel_dirs()

    with _locked(build_root / f".native-{arch}.lock"):
        digest = source_hash(arch, options)
        stamp = build_dir / STAMP
        art = _artifacts(arch, build_dir, bool(jni), bool(vulkan), 0.0, True, digest)
        outputs = [art.static_lib, art.shared_lib, art.run, art.run_shared] + ([art.jni_lib] if jni else [])
        if stamp.is_file() and all(p.is_file() for p in outputs):
            try:
                if json.loads(stamp.read_text()).get("source_hash") == digest:
                    return art
            except json.JSONDecodeError:
                pass

        t0 = time.perf_counter()
        generator = ["-G", "Ninja"] if shutil.which("ninja") else ["-G", "Unix Makefiles"]
        cache = build_dir / "CMakeCache.txt"
        if cache.is_file() and ("Ninja" in generator) != ("CMAKE_GENERATOR:INTERNAL=Ninja" in cache.read_text()):
            shutil.rmtree(build_dir)  # generator changed: CMake refuses to reuse the directory
        configure = [
            "cmake", "-S", str(NATIVE_DIR), "-B", str(build_dir), *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DLLAMA_AOT_TVM_DIR={tvm_dir}",
            f"-DLLAMA_AOT_TVM_FFI_DIR={ffi_dir}",
            f"-DLLAMA_AOT_BUILD_JNI={'ON' if jni else 'OFF'}",
        ]  # fmt: skip
        if jni:
            configure.append(f"-DLLAMA_AOT_JNI_INCLUDE={jdk}")
        if vulkan:
            configure += ["-DLLAMA_AOT_WITH_VULKAN=ON", f"-DLLAMA_AOT_VULKAN_INCLUDE_DIR={vk[0]}",
                          f"-DLLAMA_AOT_VULKAN_LIBRARY={vk[1]}"]  # fmt: skip
        else:
            configure.append("-DLLAMA_AOT_WITH_VULKAN=OFF")
        if arch != host_arch():
            configure.append(f"-DCMAKE_TOOLCHAIN_FILE={TOOLCHAINS[arch]}")
        build = ["nice", "-n", "19", "cmake", "--build", str(build_dir), "-j", str(max(1, jobs))]
        for cmd in (configure, build):
            res = subprocess.run(cmd, capture_output=not verbose, text=True)
            if res.returncode != 0:
                log = ((res.stdout or "") + (res.stderr or ""))[-6000:]
                raise NativeBuildError(f"{' '.join(cmd[:3])} ... failed for {arch}:\n{log}")
        seconds = time.perf_counter() - t0
        missing = [str(p) for p in outputs if not p.is_file()]
        if missing:
            raise NativeBuildError(f"build finished but {missing} are missing")
        stamp.write_text(json.dumps({"source_hash": digest, "build_seconds": round(seconds, 1), **options}, indent=1))
        return _artifacts(arch, build_dir, bool(jni), bool(vulkan), seconds, False, digest)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=ARCHES, default=host_arch())
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--build-root", type=Path, default=None)
    ap.add_argument("--jni", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--vulkan", nargs="?", const="on", choices=["auto", "on", "off"], default="auto",
                    help="compile the Vulkan device API in (auto: when the target has libvulkan)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    jni = {"auto": None, "on": True, "off": False}[args.jni]
    vulkan = {"auto": None, "on": True, "off": False}[args.vulkan]
    try:
        b = build_native(args.arch, args.jobs, args.build_root, jni, args.verbose, vulkan)
    except NativeBuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(b).items()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
