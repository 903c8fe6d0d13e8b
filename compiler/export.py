"""Write a compiled executable as the library files a platform links.

host     -> lib/model.so (loadable by TVM's runtime in this process)
android  -> lib/libmodel.a (ELF aarch64 objects) + lib/model.so (clang + lld, runtime symbols
            left undefined: the app's runtime library provides them)
ios      -> lib/libmodel.a (Mach-O arm64 objects; Apple forbids loading our own dylibs)
Every platform also gets lib/symbols.json: the exported symbols of the objects.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

from runtime_stubs.errors import LlamaAotError


def platform_of(host_target: dict) -> str:
    triple = host_target.get("mtriple", "")
    if "android" in triple or ("aarch64" in triple and "linux" in triple):
        return "android"
    if "apple-ios" in triple or "apple-darwin" in triple:
        return "ios"
    return "host"


def _tool(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise LlamaAotError(f"{names[0]} not found: install Debian's clang, lld and llvm packages to build for phones")


def _elf_or_macho(path: Path) -> str:
    head = path.read_bytes()[:20]
    if head[:4] == b"\x7fELF":
        machine = int.from_bytes(head[18:20], "little")
        return {183: "elf-aarch64", 62: "elf-x86_64", 40: "elf-arm"}.get(machine, f"elf-{machine}")
    if head[:4] == b"\xcf\xfa\xed\xfe":
        cputype = int.from_bytes(head[4:8], "little")
        return {0x0100000C: "macho-arm64", 0x01000007: "macho-x86_64"}.get(cputype, f"macho-{cputype:#x}")
    return "unknown"


def exported_symbols(objects: list[Path]) -> list[str]:
    nm = _tool("llvm-nm", "llvm-nm-14")
    out = subprocess.run([nm, "--defined-only", "-g", "-j", *map(str, objects)], capture_output=True, text=True)
    if out.returncode != 0:
        raise LlamaAotError(f"llvm-nm failed on the compiled objects: {out.stderr.strip()[:200]}")
    return sorted({s for s in out.stdout.split() if s and not s.endswith(":")})


_DEVICE_SOURCE_SUFFIX = {"opencl": ".cl", "metal": ".metal"}


def dump_device_code(executable, device_dir: Path) -> dict:
    """Write the GPU kernels next to the library (they are also embedded in it), for inspection.

    OpenCL / Metal: the kernel source TVM's codegen produced; Vulkan: one .spv per kernel.
    """
    from collections import deque

    found: dict[str, list[str]] = {}
    queue = deque([executable.mod])
    while queue:
        m = queue.popleft()
        queue.extend(m.imports)
        kind = m.kind
        if kind in _DEVICE_SOURCE_SUFFIX:
            device_dir.mkdir(parents=True, exist_ok=True)
            path = device_dir / f"kernels{_DEVICE_SOURCE_SUFFIX[kind]}"
            path.write_text(m.inspect_source())
            found.setdefault(kind, []).append(f"lib/device/{path.name}")
        elif kind == "vulkan":
            from targets.backends.vulkan import module_payload, parse_vulkan_module

            device_dir.mkdir(parents=True, exist_ok=True)
            for name, shader in parse_vulkan_module(module_payload(m)).items():
                (device_dir / f"{name}.spv").write_bytes(struct.pack(f"<{len(shader.words)}I", *shader.words))
                found.setdefault("vulkan", []).append(f"lib/device/{name}.spv")
    return found


_LIBRARY_BIN = "__tvm_ffi__library_bin"
_LIBRARY_CTX = "__tvm_ffi__library_ctx"
_FUNC_PREFIX = "__tvm_ffi_"


def _dso_aliases(symbols: list[str]) -> list[str]:
    """Linker flags that make a system-lib build loadable as an ordinary TVM shared library.

    Phone builds are compiled with a ``system_lib_prefix`` (so several models can be linked into
    one app), which names the objects' symbols ``<prefix>__tvm_ffi__library_bin`` and
    ``__tvm_ffi_<prefix><kernel>``.  TVM's ``Module.load_from_file`` (our C API, TVM's own
    runtime, ``tvm.runtime.load_module``) looks a ``.so`` up by the unprefixed names
    (``__tvm_ffi__library_bin``, ``__tvm_ffi_<kernel>``) and would find no Relax executable in it.
    Aliases with the unprefixed names (``--defsym``, same addresses) make ``lib/model.so`` a
    normal TVM library while the static archive keeps the prefixed, collision-free names.
    """
    bins = [s for s in symbols if s.endswith(_LIBRARY_BIN)]
    if len(bins) != 1:
        raise LlamaAotError(f"internal: expected one *{_LIBRARY_BIN} symbol in the compiled objects, found {bins}")
    prefix = bins[0][: -len(_LIBRARY_BIN)]
    if not prefix:
        return []
    aliases = {_LIBRARY_BIN: bins[0]}
    if prefix + _LIBRARY_CTX in symbols:
        aliases[_LIBRARY_CTX] = prefix + _LIBRARY_CTX
    for s in symbols:
        if s.startswith(_FUNC_PREFIX + prefix):
            aliases[_FUNC_PREFIX + s[len(_FUNC_PREFIX + prefix):]] = s
    clash = sorted(set(aliases) & set(symbols))
    if clash:
        raise LlamaAotError(f"internal: unprefixed aliases {clash[:3]} already defined in the compiled objects")
    return [f"-Wl,--defsym={alias}={target}" for alias, target in sorted(aliases.items())]


def export_executable(executable, lib_dir: Path, host_target: dict) -> dict:
    """Write the library files; return the manifest section describing them."""
    import tvm

    lib_dir.mkdir(parents=True, exist_ok=True)
    platform = platform_of(host_target)
    device_code = dump_device_code(executable, lib_dir / "device")
    if platform == "host":
        executable.export_library(str(lib_dir / "model.so"))
        return {"platform": "host", "library": "lib/model.so", "device_code": device_code}

    with tempfile.TemporaryDirectory() as tmp:
        tar_path = Path(tmp) / "objects.tar"
        executable.export_library(str(tar_path), fcompile=tvm.support.tar.tar)
        obj_dir = lib_dir / "objects"
        obj_dir.mkdir()
        with tarfile.open(tar_path) as tar:
            tar.extractall(obj_dir, filter="data")
    objects = sorted(obj_dir.glob("*.o"))
    formats = {o.name: _elf_or_macho(o) for o in objects}
    subprocess.run([_tool("llvm-ar", "llvm-ar-14"), "rcs", str(lib_dir / "libmodel.a"), *map(str, objects)], check=True)
    info = {"platform": platform, "static_library": "lib/libmodel.a", "objects": formats, "device_code": device_code}
    symbols = exported_symbols(objects)
    if platform == "android":
        triple = host_target["mtriple"]
        cmd = [_tool("clang"), f"--target={triple}", "-fuse-ld=lld", "-shared", "-nostdlib",
               "-Wl,--allow-shlib-undefined", *_dso_aliases(symbols),
               "-o", str(lib_dir / "model.so"), *map(str, objects)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LlamaAotError(f"linking model.so for {triple} failed: {proc.stderr.strip()[:300]}")
        info["shared_library"] = "lib/model.so"
    (lib_dir / "symbols.json").write_text(json.dumps({"symbols": symbols}, indent=1))
    info["symbols"] = "lib/symbols.json"
    return info
