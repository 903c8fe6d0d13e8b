"""Shared helpers of the native-runtime tests (imported by conftest.py and the tests)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import sys
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
