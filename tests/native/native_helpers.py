"""Shared helpers of the native-runtime tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import toy_package  # noqa: E402

from runtime_stubs import native_build  # noqa: E402

PROMPT = list(range(3, 23))  # 20 tokens: two prefill chunks of 16
MAX_TOKENS = 40  # 60 tokens in all: crosses several 16-token pages, inside the 96-token window


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        msg = f"needs {', '.join(missing)} (see docs/runtime.md for the Debian packages)"
        if os.environ.get("LLAMA_AOT_REQUIRE_NATIVE") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def build(arch: str) -> native_build.NativeBuild:
    need("cmake")
    if arch == "aarch64":
        need("aarch64-linux-gnu-g++", "qemu-aarch64")
    b = native_build.build_native(arch)
    where = "cached" if b.cached else f"built in {b.seconds:.0f} s"
    print(f"\n[native runtime {arch}: {where}, {b.build_dir}]")
    return b


def _toy_key() -> str:
    import importlib.metadata as md

    h = hashlib.sha256((HERE / "toy_package.py").read_bytes())
    for dist in ("apache-tvm", "apache-tvm-ffi"):
        try:
            h.update(md.version(dist).encode())
        except md.PackageNotFoundError:
            pass
    return h.hexdigest()[:16]


def toy(arch: str, system_lib: bool = False) -> Path:
    """A toy package for arch (cached across sessions; rebuilt when toy_package.py changes)."""
    root = REPO / "build" / "native-toy" / _toy_key()
    out = root / (f"{arch}-syslib" if system_lib else arch)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "llama-aot.json").is_file():
            tmp = root / f".tmp-{out.name}"
            toy_package.build_package(tmp, arch, system_lib=system_lib)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
    return out


# ---------------------------------------------------------------------------------------------
# TVM's own prebuilt aarch64 runtime (the manylinux wheels on PyPI), for cross-checks under qemu
# ---------------------------------------------------------------------------------------------

WHEEL_PLATFORM = "manylinux_2_28_aarch64"


@dataclasses.dataclass
class PrebuiltTVM:
    """libtvm_runtime.so / libtvm_ffi.so and the headers of the apache-tvm(-ffi) aarch64 wheels."""

    root: Path  # holds tvm/{lib,include} and tvm_ffi/{lib,include,3rdparty}
    versions: dict[str, str]

    @property
    def lib_dirs(self) -> list[Path]:
        return [self.root / "tvm" / "lib", self.root / "tvm_ffi" / "lib"]

    @property
    def include_dirs(self) -> list[Path]:
        return [self.root / "tvm" / "include", self.root / "tvm_ffi" / "include",
                self.root / "tvm_ffi" / "3rdparty" / "dlpack" / "include"]  # fmt: skip


def _installed_versions() -> dict[str, str]:
    import importlib.metadata as md

    return {dist: md.version(dist) for dist in ("apache-tvm", "apache-tvm-ffi")}


def prebuilt_tvm_aarch64() -> PrebuiltTVM:
    """Download (once; cached under build/tvm-wheels/) the aarch64 wheels of the installed TVM
    versions and extract their runtime libraries and headers.  Skips when PyPI is unreachable."""
    versions = _installed_versions()
    tag = "-".join(f"{d}-{v}" for d, v in versions.items())
    cache = REPO / "build" / "tvm-wheels" / f"{WHEEL_PLATFORM}-{tag}"
    root = cache / "root"
    stamp = cache / "extracted.json"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.is_file():
            wheels = sorted(cache.glob("*.whl"))
            if len(wheels) != 2:
                _download_wheels(cache, versions)
                wheels = sorted(cache.glob("*.whl"))
            if root.exists():
                shutil.rmtree(root)
            wanted = ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so", "tvm/include/",
                      "tvm_ffi/include/", "tvm_ffi/3rdparty/dlpack/include/")  # fmt: skip
            for whl in wheels:
                with zipfile.ZipFile(whl) as z:
                    z.extractall(root, [n for n in z.namelist() if n.startswith(wanted)])
            stamp.write_text(json.dumps({"wheels": [w.name for w in wheels], **versions}, indent=1))
    out = PrebuiltTVM(root, versions)
    for p in out.lib_dirs:
        assert any(p.glob("libtvm_*.so")), f"{p}: no library extracted from the wheel"
    return out


def _download_wheels(cache: Path, versions: dict[str, str]) -> None:
    import subprocess

    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".download-"))
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform", WHEEL_PLATFORM,
           "--python-version", py, "--disable-pip-version-check", "--timeout", "30", "--retries", "1",
           *[f"{d}=={v}" for d, v in versions.items()], "-d", str(tmp)]  # fmt: skip
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        res = None
    got = sorted(tmp.glob("*.whl"))
    if res is None or res.returncode != 0 or len(got) != 2:
        shutil.rmtree(tmp, ignore_errors=True)
        lines = [] if res is None else [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
        cause = [ln for ln in lines if any(k in ln for k in ("onnect", "resolve", "SSL", "Timeout"))]
        why = "timed out" if res is None else " / ".join(dict.fromkeys(cause[:1] + lines[-1:])) or "pip failed"
        why = why[:400]
        pytest.skip(f"cannot download the {WHEEL_PLATFORM} wheels of {versions} from PyPI (unreachable?): {why}")
    for w in got:
        w.rename(cache / w.name)
    shutil.rmtree(tmp, ignore_errors=True)
