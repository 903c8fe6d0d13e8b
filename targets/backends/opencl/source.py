"""OpenCL C source emitted by TVM's OpenCL codegen: split per kernel, fp16 emulation, checks.

TVM writes every kernel of a module into one string, each introduced by a ``// Function: NAME``
line and its own ``cl_khr_fp16`` pragma block; its OpenCL runtime splits the string at those lines
and builds one program per kernel. :func:`split_kernels` does the same.

CPU drivers without ``cl_khr_fp16`` (Debian's pocl 3.1) reject ``half`` arithmetic, so
:func:`emulate_fp16` rewrites a kernel to compute and store in float32 (the launcher widens fp16
buffers to float32 on upload and rounds them back on download).  Indexing, launch geometry,
barriers, reductions and the dequantization bit arithmetic are unchanged by the rewrite; fp16
rounding of intermediates and fp16 overflow are not reproduced.  :func:`clang_syntax_check`
checks the *unmodified* fp16 source with clang's OpenCL front end (spir64, cl_khr_fp16 on).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

from runtime_stubs.errors import LlamaAotError

_MARKER = re.compile(r"^// Function: (\S+)[ \t]*$", re.M)
_FP16_BLOCK = re.compile(r"#ifdef cl_khr_fp16\n.*?#endif[ \t]*\n", re.S)
_UNSUPPORTED_IN_EMULATION = re.compile(r"\b(as_half\d*|as_ushort\d*|vload_half\d*|vstore_half\d*|vloada_half\d*)\b")

#: bytes of the OpenCL C types TVM declares ``__local`` arrays with
_TYPE_BYTES = {"char": 1, "uchar": 1, "short": 2, "ushort": 2, "half": 2, "int": 4, "uint": 4, "float": 4,
               "long": 8, "ulong": 8, "double": 8, "bool": 1}  # fmt: skip
_LOCAL_DECL = re.compile(r"__local\s+(?:volatile\s+)?([a-z]+?)(\d*)\s+\w+\[(\d+)\]")


class OpenCLSourceError(LlamaAotError):
    """The OpenCL source cannot be split, rewritten or compiled."""


def split_kernels(source: str) -> dict[str, str]:
    """``{kernel name: its source}`` in module order, as TVM's OpenCL runtime splits it."""
    marks = list(_MARKER.finditer(source))
    if not marks:
        raise OpenCLSourceError("no '// Function: NAME' markers in the OpenCL source")
    out = {}
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(source)
        out[m.group(1)] = source[m.start() : end]
    return out


def uses_fp16(source: str) -> bool:
    return re.search(r"\bhalf\d*\b", _FP16_BLOCK.sub("", source)) is not None


def emulate_fp16(source: str) -> str:
    """The kernel with every ``half``/``halfN`` type and conversion replaced by float32."""
    bad = _UNSUPPORTED_IN_EMULATION.search(source)
    if bad:
        raise OpenCLSourceError(
            f"cannot emulate fp16 for a kernel that reinterprets half bits ({bad.group(0)}); "
            "run it on a driver with cl_khr_fp16"
        )
    s = _FP16_BLOCK.sub("", source)
    s = re.sub(r"\bconvert_half(\d*)", r"convert_float\1", s)
    return re.sub(r"\bhalf(\d*)\b", r"float\1", s)


def local_memory_bytes(source: str) -> int:
    """Static ``__local`` memory a kernel declares (bytes)."""
    total = 0
    for base, lanes, count in _LOCAL_DECL.findall(source):
        if base not in _TYPE_BYTES:
            raise OpenCLSourceError(f"unknown __local element type {base}{lanes}")
        total += _TYPE_BYTES[base] * int(lanes or 1) * int(count)
    return total


def find_clang() -> str | None:
    """A clang with an OpenCL front end: $LLAMA_AOT_CLANG, clang, or the clang-NN pocl pulls in."""
    env = os.environ.get("LLAMA_AOT_CLANG")
    if env:
        return shutil.which(env)
    for name in ("clang", *(f"clang-{v}" for v in range(22, 13, -1))):
        path = shutil.which(name)
        if path:
            return path
    return None


def clang_syntax_check(source: str, std: str = "CL1.2", clang: str | None = None) -> None:
    """Parse and type-check ``source`` as OpenCL C with cl_khr_fp16 enabled (target spir64), as a
    phone driver with fp16 would; raises :class:`OpenCLSourceError` with clang's diagnostics."""
    clang = clang or find_clang()
    if clang is None:
        raise OpenCLSourceError("no clang found for the OpenCL syntax check (apt-get install clang)")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "kernels.cl")
        with open(path, "w") as f:
            f.write(source)
        cmd = [
            clang, "-x", "cl", f"-cl-std={std}", "-target", "spir64-unknown-unknown", "-Xclang",
            "-finclude-default-header", "-Xclang", "-cl-ext=+cl_khr_fp16", "-fsyntax-only",
            "-Werror=implicit-function-declaration", path,
        ]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise OpenCLSourceError(f"clang rejected the OpenCL source:\n{r.stderr[-4000:]}")
