"""TVM's serialized "vulkan" module: writer and parser (no TVM import needed).

Layout (all little-endian; a string, byte blob or vector is a u64 count followed by the elements),
as documented in shared/facts/vulkan-module-format.md and read by TVM's VulkanModule loader
(``ffi.Module.load_from_bytes.vulkan``, TVM >= 0.24):

    fmt   : string                       "vulkan"
    fmap  : u64 n, n x (string name, FunctionInfo)
    smap  : u64 n, n x (string name, bytes shader)
            shader = u32 flag (bit 0: scalars in a uniform buffer; bit 1: FLAG_FOLDED_GRID), u64 word count, u32 words

    FunctionInfo: string name; vector<DLDataType> arg_types (u8 code, u8 bits, u16 lanes);
                  vector<string> launch_param_tags; vector<int32> arg_extra_tags
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import NamedTuple, Sequence

#: SPIRVShader flag bit: scalar arguments are passed in a uniform buffer at binding n, not as
#: push constants (ShaderMetaDataFlagMask::kUseUBO).
FLAG_USE_UBO = 1 << 0
#: Our extension (TVM's runtime ignores the bit): the kernel computes blockIdx.x as
#: ``gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x`` and returns when it is past the
#: grid, so a runtime may launch a blockIdx.x extent above maxComputeWorkGroupCount[0] (65535 on
#: lavapipe and many phone GPUs: a 128-token prefill chunk exceeds it) as an x*y grid.
FLAG_FOLDED_GRID = 1 << 1


def fold_grid(gx: int, max_x: int) -> tuple[int, int]:
    """(x, y) workgroup counts covering ``gx`` groups with x <= max_x (for FLAG_FOLDED_GRID kernels)."""
    if gx <= max_x:
        return gx, 1
    y = -(-gx // max_x)
    return -(-gx // y), y

_DTYPE_CODES = {"int": 0, "uint": 1, "float": 2, "handle": 3, "bfloat": 4}
_CODE_NAMES = {v: k for k, v in _DTYPE_CODES.items()}


def dtype_to_dl(dtype: str) -> tuple[int, int, int]:
    """'float16' -> (2, 16, 1); 'handle' -> (3, 64, 1); 'bool' -> (6, 8, 1); 'int8x4' -> (0, 8, 4)."""
    s = str(dtype)
    if s == "handle":
        return (3, 64, 1)
    if s == "bool":
        return (6, 8, 1)  # DLPack kDLBool, as this TVM encodes bool
    m = re.fullmatch(r"(int|uint|float|bfloat)(\d+)(?:x(\d+))?", s)
    if not m:
        raise ValueError(f"cannot encode dtype {dtype!r} as DLDataType")
    return (_DTYPE_CODES[m.group(1)], int(m.group(2)), int(m.group(3) or 1))


def dl_to_dtype(code: int, bits: int, lanes: int) -> str:
    if code == 3:
        return "handle"
    if code == 6 or (code == 1 and bits == 1):
        base = "bool"
    else:
        base = f"{_CODE_NAMES.get(code, f'code{code}_')}{bits}"
    return base if lanes == 1 else f"{base}x{lanes}"


@dataclass
class FunctionInfo:
    """runtime::FunctionInfo: what a device runtime needs to call one kernel."""

    name: str
    arg_types: list[str]  # TVM dtype strings; a buffer argument is "handle"
    launch_param_tags: list[str]  # e.g. ["blockIdx.x", "threadIdx.x"]
    arg_extra_tags: list[int] = field(default_factory=list)  # one per argument, 0 = kNone

    def __post_init__(self):
        if not self.arg_extra_tags:
            self.arg_extra_tags = [0] * len(self.arg_types)


class VulkanShader(NamedTuple):
    """One kernel as stored in the module: SPIR-V words, its FunctionInfo and the shader flag."""

    words: list[int]
    info: FunctionInfo
    flag: int = 0


class _Writer:
    def __init__(self):
        self.parts: list[bytes] = []

    def u32(self, v: int):
        self.parts.append(struct.pack("<I", v))

    def i32(self, v: int):
        self.parts.append(struct.pack("<i", v))

    def u64(self, v: int):
        self.parts.append(struct.pack("<Q", v))

    def string(self, s: str | bytes):
        b = s.encode() if isinstance(s, str) else bytes(s)
        self.u64(len(b))
        self.parts.append(b)

    def raw(self, b: bytes):
        self.parts.append(b)

    def getvalue(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    def __init__(self, data: bytes):
        self.data = memoryview(bytes(data))
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"truncated vulkan module: need {n} bytes at offset {self.pos}, have {len(self.data) - self.pos}")
        b = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return b

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def i32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def blob(self) -> bytes:
        return self.take(self.u64())

    def string(self) -> str:
        return self.blob().decode()


def _write_function_info(w: _Writer, info: FunctionInfo):
    w.string(info.name)
    w.u64(len(info.arg_types))
    for t in info.arg_types:
        code, bits, lanes = dtype_to_dl(t)
        w.raw(struct.pack("<BBH", code, bits, lanes))
    w.u64(len(info.launch_param_tags))
    for tag in info.launch_param_tags:
        w.string(tag)
    w.u64(len(info.arg_extra_tags))
    for t in info.arg_extra_tags:
        w.i32(int(t))


def _read_function_info(r: _Reader) -> FunctionInfo:
    name = r.string()
    arg_types = [dl_to_dtype(*struct.unpack("<BBH", r.take(4))) for _ in range(r.u64())]
    tags = [r.string() for _ in range(r.u64())]
    extra = [r.i32() for _ in range(r.u64())]
    return FunctionInfo(name, arg_types, tags, extra)


def pack_spirv_shader(words: Sequence[int], flag: int = 0) -> bytes:
    """The inner SPIRVShader record: u32 flag, u64 word count, words."""
    w = _Writer()
    w.u32(flag)
    w.u64(len(words))
    w.raw(struct.pack(f"<{len(words)}I", *words))
    return w.getvalue()


def unpack_spirv_shader(blob: bytes) -> tuple[list[int], int]:
    r = _Reader(blob)
    flag = r.u32()
    n = r.u64()
    words = list(struct.unpack(f"<{n}I", r.take(4 * n)))
    if r.pos != len(r.data):
        raise ValueError(f"{len(r.data) - r.pos} trailing bytes after SPIR-V shader")
    return words, flag


def serialize_vulkan_module(shaders: dict[str, Sequence]) -> bytes:
    """Payload of a "vulkan" module: ``{name: (spirv_words, FunctionInfo[, flag])}`` -> bytes.

    Kernels are written in name order so that the same kernels always give the same bytes.
    """
    w = _Writer()
    w.string("vulkan")
    names = sorted(shaders)
    w.u64(len(names))
    for name in names:
        info = shaders[name][1]
        if info.name != name:
            raise ValueError(f"FunctionInfo name {info.name!r} != kernel name {name!r}")
        w.string(name)
        _write_function_info(w, info)
    w.u64(len(names))
    for name in names:
        entry = shaders[name]
        words = entry[0]
        flag = entry[2] if len(entry) > 2 else 0
        w.string(name)
        w.string(pack_spirv_shader(words, flag))
    return w.getvalue()


def parse_vulkan_module(data: bytes) -> dict[str, VulkanShader]:
    """Inverse of :func:`serialize_vulkan_module`."""
    r = _Reader(data)
    fmt = r.string()
    if fmt != "vulkan":
        raise ValueError(f"not a vulkan module payload (fmt={fmt!r})")
    fmap = {}
    for _ in range(r.u64()):
        name = r.string()
        fmap[name] = _read_function_info(r)
    out = {}
    for _ in range(r.u64()):
        name = r.string()
        words, flag = unpack_spirv_shader(r.blob())
        if name not in fmap:
            raise ValueError(f"shader {name!r} has no FunctionInfo")
        out[name] = VulkanShader(words, fmap[name], flag)
    if r.pos != len(r.data):
        raise ValueError(f"{len(r.data) - r.pos} trailing bytes after vulkan module payload")
    missing = set(fmap) - set(out)
    if missing:
        raise ValueError(f"FunctionInfo without shader: {sorted(missing)}")
    return out


def spirv_local_size(words: Sequence[int]) -> tuple[int, int, int] | None:
    """The workgroup size of a compute shader, or None.

    ``OpExecutionMode LocalSize x y z`` (SPIR-V <= 1.5 from glslang) or ``OpExecutionModeId
    LocalSizeId`` with constant ids (SPIR-V 1.6, --target-env vulkan1.3).
    """
    if len(words) < 5 or words[0] != 0x07230203:
        raise ValueError("not a SPIR-V module (bad magic)")
    consts: dict[int, int] = {}
    size_ids = None
    i = 5
    while i < len(words):
        wc, op = words[i] >> 16, words[i] & 0xFFFF
        if wc == 0:
            raise ValueError("malformed SPIR-V (zero word count)")
        if op == 16 and words[i + 2] == 17:  # OpExecutionMode <entry> LocalSize x y z
            return tuple(words[i + 3 : i + 6])
        if op == 331 and words[i + 2] == 38:  # OpExecutionModeId <entry> LocalSizeId x y z
            size_ids = words[i + 3 : i + 6]
        if op == 43 and wc == 4:  # OpConstant <type> <id> <32-bit value>
            consts[words[i + 2]] = words[i + 3]
        i += wc
    if size_ids is not None:
        return tuple(consts[j] for j in size_ids)
    return None
