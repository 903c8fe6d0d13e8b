"""GLSL -> SPIR-V with glslangValidator, validated with spirv-val (Debian: glslang-tools, spirv-tools)."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import threading

from .errors import VulkanToolchainError

_PACKAGES = {"glslangValidator": "glslang-tools", "spirv-val": "spirv-tools", "spirv-dis": "spirv-tools"}
_cache: dict[str, list[int]] = {}
_cache_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def find_tool(name: str) -> str:
    """Path of a toolchain binary ($LLAMA_AOT_GLSLANG / $LLAMA_AOT_SPIRV_VAL override the search)."""
    env = {"glslangValidator": "LLAMA_AOT_GLSLANG", "spirv-val": "LLAMA_AOT_SPIRV_VAL"}.get(name)
    path = os.environ.get(env) if env else None
    path = path or shutil.which(name)
    if not path:
        raise VulkanToolchainError(
            f"{name} not found: the Vulkan back end needs it to compile shaders "
            f"(Debian/Ubuntu: apt-get install {_PACKAGES.get(name, name)})"
        )
    return path


def toolchain_available() -> bool:
    try:
        find_tool("glslangValidator")
        find_tool("spirv-val")
        return True
    except VulkanToolchainError:
        return False


def _numbered(source: str) -> str:
    return "\n".join(f"{i + 1:5d}  {line}" for i, line in enumerate(source.splitlines()))


def compile_glsl(source: str, target_env: str, name: str = "kernel", validate: bool = True) -> list[int]:
    """Compile one GLSL compute shader to SPIR-V words (``glslangValidator -V --target-env``).

    Results are cached in-process by (source, env): identical kernels compile once.
    """
    key = hashlib.sha256(f"{target_env}\0{int(validate)}\0{source}".encode()).hexdigest()
    with _cache_lock:
        if key in _cache:
            return list(_cache[key])
    glslang = find_tool("glslangValidator")
    with tempfile.TemporaryDirectory(prefix="llama_aot_vk_") as d:
        src = os.path.join(d, "kernel.comp")
        spv = os.path.join(d, "kernel.spv")
        with open(src, "w") as f:
            f.write(source)
        p = subprocess.run(
            [glslang, "-V", "--target-env", target_env, "-S", "comp", "-o", spv, src],
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            raise VulkanToolchainError(
                f"glslangValidator failed on Vulkan kernel '{name}' ({target_env}):\n"
                f"{p.stdout.strip()}\n{p.stderr.strip()}\n--- GLSL ---\n{_numbered(source)}"
            )
        with open(spv, "rb") as f:
            data = f.read()
        if validate:
            validate_spirv_file(spv, target_env, name)
    words = list(struct.unpack(f"<{len(data) // 4}I", data))
    with _cache_lock:
        _cache[key] = words
    return list(words)


def validate_spirv_file(path: str, target_env: str, name: str = "kernel") -> None:
    p = subprocess.run([find_tool("spirv-val"), "--target-env", target_env, path], capture_output=True, text=True)
    if p.returncode != 0:
        raise VulkanToolchainError(
            f"spirv-val rejected Vulkan kernel '{name}' ({target_env}):\n{p.stdout.strip()}\n{p.stderr.strip()}"
        )


def validate_spirv(words: list[int], target_env: str, name: str = "kernel") -> None:
    """Run spirv-val on SPIR-V words; raises VulkanToolchainError with its message."""
    with tempfile.TemporaryDirectory(prefix="llama_aot_vk_") as d:
        path = os.path.join(d, "kernel.spv")
        with open(path, "wb") as f:
            f.write(_to_bytes(words))
        validate_spirv_file(path, target_env, name)


def disassemble(words: list[int]) -> str:
    """SPIR-V assembly text (spirv-dis), for debugging."""
    with tempfile.TemporaryDirectory(prefix="llama_aot_vk_") as d:
        path = os.path.join(d, "kernel.spv")
        with open(path, "wb") as f:
            f.write(_to_bytes(words))
        p = subprocess.run([find_tool("spirv-dis"), path], capture_output=True, text=True, check=True)
        return p.stdout


def _to_bytes(words: list[int]) -> bytes:
    return struct.pack(f"<{len(words)}I", *words)
