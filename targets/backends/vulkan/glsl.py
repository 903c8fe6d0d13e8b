"""Lowered TIR device kernel (PrimFunc) -> GLSL 450 compute shader.

Input: one PrimFunc as ``tvm.compile`` hands it to ``target.build.vulkan`` -- after the GPU lowering
passes: flat (1-D) buffers declared with DeclBuffer over typed pointer parameters, AllocBuffer for
shared/local scratch, thread bindings as ``thread_extent`` AttrStmts, math as
``call_pure_extern("expf", ...)``, reductions already lowered to shared memory and
``tvm_storage_sync``.  Output: GLSL source plus the facts the runtime needs (FunctionInfo, workgroup
size, how the grid is computed from the scalar arguments).

Calling convention (TVM's Vulkan runtime): buffer parameters are storage buffers in descriptor set
0, bindings 0..n-1 in parameter order; scalar parameters are push constants, 8 bytes each, or a
uniform buffer at binding n when they need more than 128 bytes.  The entry point is ``main``
(glslang requires it); the runtime module maps kernel names to shaders.

Vector expressions (Ramp / Broadcast / vector loads) are scalarised lane by lane; a vector store
first evaluates every lane into temporaries, then stores, so it reads before it writes like the
vector instruction it replaces.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import VulkanCodegenError
from .module_format import FLAG_FOLDED_GRID, FLAG_USE_UBO, FunctionInfo
from .target import (
    MAX_PUSH_CONSTANT_BYTES,
    SUBGROUP_BALLOT,
    SUBGROUP_BASIC,
    SUBGROUP_SHUFFLE,
    VulkanCaps,
)


def _type_key(obj) -> str:
    info = getattr(type(obj), "__tvm_ffi_type_info__", None)
    return info.type_key if info is not None else type(obj).__name__


class DT(NamedTuple):
    """A TVM dtype as (DLPack code, bits, lanes); code 0 int, 1 uint, 2 float, 3 handle, 4 bfloat."""

    code: int
    bits: int
    lanes: int

    @property
    def is_bool(self):  # DLPack kDLBool (6, 8 bits) in this TVM; legacy uint1
        return self.code == 6 or (self.code == 1 and self.bits == 1)

    @property
    def is_float(self):
        return self.code == 2

    @property
    def is_int(self):
        return self.code == 0

    @property
    def is_uint(self):
        return self.code == 1 and self.bits > 1

    @property
    def is_valid_scalar(self):
        return self.is_bool or (self.code, self.bits) in _GLSL_SCALAR

    @property
    def is_integer(self):
        return self.is_int or self.is_uint

    def scalar(self) -> DT:
        return DT(self.code, self.bits, 1)

    def __str__(self):
        if self.is_bool:
            base = "bool"
        else:
            base = {0: "int", 1: "uint", 2: "float", 3: "handle", 4: "bfloat"}.get(self.code, "?") + (
                "" if self.code == 3 else str(self.bits)
            )
        return base if self.lanes == 1 else f"{base}x{self.lanes}"


def _dt(d) -> DT:
    return DT(int(d.type_code), int(d.bits), int(d.lanes))


def expr_dt(e) -> DT:
    return _dt(e.ty.dtype)


BOOL = DT(6, 8, 1)
INT32 = DT(0, 32, 1)
UINT32 = DT(1, 32, 1)
FLOAT32 = DT(2, 32, 1)

_GLSL_SCALAR = {
    (0, 8): "int8_t",
    (0, 16): "int16_t",
    (0, 32): "int",
    (0, 64): "int64_t",
    (1, 8): "uint8_t",
    (1, 16): "uint16_t",
    (1, 32): "uint",
    (1, 64): "uint64_t",
    (2, 16): "float16_t",
    (2, 32): "float",
    (2, 64): "double",
}

_SUFFIX = {  # short names for typed helper functions
    (0, 8): "i8", (0, 16): "i16", (0, 32): "i32", (0, 64): "i64",
    (1, 8): "u8", (1, 16): "u16", (1, 32): "u32", (1, 64): "u64",
    (2, 16): "f16", (2, 32): "f32", (2, 64): "f64", (1, 1): "bool",
}  # fmt: skip

_EXTENSIONS = {
    "float16": "GL_EXT_shader_explicit_arithmetic_types_float16",
    "int8": "GL_EXT_shader_explicit_arithmetic_types_int8",
    "int16": "GL_EXT_shader_explicit_arithmetic_types_int16",
    "int64": "GL_EXT_shader_explicit_arithmetic_types_int64",
    "storage8": "GL_EXT_shader_8bit_storage",
    "storage16": "GL_EXT_shader_16bit_storage",
    "subgroup_basic": "GL_KHR_shader_subgroup_basic",
    "subgroup_shuffle": "GL_KHR_shader_subgroup_shuffle",
    "subgroup_ballot": "GL_KHR_shader_subgroup_ballot",
    "control_flow": "GL_EXT_control_flow_attributes",
}

# GLSL keywords, reserved words and built-in functions a TIR name must not collide with.
_RESERVED = set(
    """
attribute const uniform varying buffer shared coherent volatile restrict readonly writeonly
atomic_uint layout centroid flat smooth noperspective patch sample break continue do for while
switch case default if else subroutine in out inout float double int void bool true false invariant
precise discard return mat2 mat3 mat4 dmat2 dmat3 dmat4 vec2 vec3 vec4 ivec2 ivec3 ivec4 bvec2 bvec3
bvec4 dvec2 dvec3 dvec4 uint uvec2 uvec3 uvec4 lowp mediump highp precision struct common partition
active asm class union enum typedef template this resource goto inline noinline public static extern
external interface long short half fixed unsigned superp input output filter sizeof cast namespace
using main demote subgroupuniform
int8_t int16_t int64_t uint8_t uint16_t uint64_t float16_t float32_t float64_t
radians degrees sin cos tan asin acos atan sinh cosh tanh asinh acosh atanh pow exp log exp2 log2
sqrt inversesqrt abs sign floor trunc round roundEven ceil fract mod modf min max clamp mix step
smoothstep isnan isinf floatBitsToInt floatBitsToUint intBitsToFloat uintBitsToFloat fma frexp ldexp
length distance dot cross normalize reflect refract barrier memoryBarrier memoryBarrierShared
groupMemoryBarrier bitCount findMSB findLSB bitfieldExtract bitfieldInsert bitfieldReverse
uaddCarry usubBorrow umulExtended imulExtended packHalf2x16 unpackHalf2x16 any all not
""".split()
)


@dataclass
class _Storage:
    kind: str  # "ssbo" | "shared" | "local"
    name: str  # GLSL identifier of the array (primary view)
    dtype: DT  # element type (scalar) of the primary view; bool SSBOs hold uint8
    binding: int | None = None
    size: int | None = None
    views: dict = field(default_factory=dict)  # DT -> GLSL identifier (ssbo aliases)
    loaded: bool = False
    stored: bool = False


class _BufRef(NamedTuple):
    storage: _Storage
    dtype: DT  # element dtype of this buffer view (may have lanes > 1)
    offset: object  # elem offset expr (in units of dtype elements) or None


@dataclass
class ParamInfo:
    """One kernel parameter as the runtime binds it."""

    name: str
    kind: str  # "buffer" | "scalar"
    dtype: str  # element dtype of a buffer, or the scalar's dtype
    binding: int | None = None  # descriptor binding of a buffer
    offset: int | None = None  # byte offset of a scalar in the push constants / UBO


@dataclass
class GLSLKernel:
    """A kernel printed as GLSL, with everything needed to compile and launch it."""

    name: str
    source: str
    target_env: str
    params: list[ParamInfo]  # in parameter order
    function_info: FunctionInfo
    flag: int  # SPIRVShader flag (FLAG_USE_UBO, FLAG_FOLDED_GRID)
    workgroup_size: tuple[int, int, int]
    launch_exprs: list[str]  # per launch param tag: Python expression over scalar param names
    shared_bytes: int
    subgroup_size: int  # 0 unless the kernel relies on subgroups of at least this many lanes
    spirv: list[int] | None = None

    @property
    def scalar_params(self) -> list[ParamInfo]:
        return [p for p in self.params if p.kind == "scalar"]

    def launch_args(self, scalars: dict[str, int]) -> list[int]:
        """Values of the launch params (grid and block extents) for given scalar arguments."""
        env = {"__builtins__": {}, "min": min, "max": max, "_truncdiv": _truncdiv, "_truncmod": _truncmod}
        env.update({py_name(k): v for k, v in scalars.items()})
        return [int(eval(e, env)) for e in self.launch_exprs]  # noqa: S307 - our own expressions

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "target_env": self.target_env,
            "params": [p.__dict__ for p in self.params],
            "flag": self.flag,
            "workgroup_size": list(self.workgroup_size),
            "launch_param_tags": list(self.function_info.launch_param_tags),
            "launch_exprs": list(self.launch_exprs),
            "shared_bytes": self.shared_bytes,
            "subgroup_size": self.subgroup_size,
        }


def py_name(name: str) -> str:
    """Name of a scalar parameter inside launch expressions."""
    return name if name.isidentifier() and not name.startswith("_") else "p_" + _sanitize(name)


def _truncdiv(a, b):
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _truncmod(a, b):
    return a - _truncdiv(a, b) * b


# ----------------------------------------------------------------------------------------------
# math intrinsics
# ----------------------------------------------------------------------------------------------

# name -> (arity, GLSL template on float operands); "{T}" is the float type name.
_MATH = {
    "exp": (1, "exp({0})"),
    "exp2": (1, "exp2({0})"),
    "exp10": (1, "exp2({0} * {T}(3.321928094887362))"),
    "log": (1, "log({0})"),
    "log2": (1, "log2({0})"),
    "log10": (1, "(log2({0}) * {T}(0.30102999566398120))"),
    "log1p": (1, "tvm_log1p_{S}({0})"),
    "expm1": (1, "tvm_expm1_{S}({0})"),
    "sqrt": (1, "sqrt({0})"),
    "rsqrt": (1, "inversesqrt({0})"),
    "sin": (1, "sin({0})"),
    "cos": (1, "cos({0})"),
    "tan": (1, "tan({0})"),
    "asin": (1, "asin({0})"),
    "acos": (1, "acos({0})"),
    "atan": (1, "atan({0})"),
    "sinh": (1, "sinh({0})"),
    "cosh": (1, "cosh({0})"),
    "asinh": (1, "asinh({0})"),
    "acosh": (1, "acosh({0})"),
    "atanh": (1, "atanh({0})"),
    # GLSL's tanh may compute inf/inf for large |x|; tanh(+-10) rounds to +-1 in fp32 already.
    "tanh": (1, "tanh(clamp({0}, {T}(-10.0), {T}(10.0)))"),
    "fabs": (1, "abs({0})"),
    "abs": (1, "abs({0})"),
    "floor": (1, "floor({0})"),
    "ceil": (1, "ceil({0})"),
    "trunc": (1, "trunc({0})"),
    "round": (1, "tvm_round_{S}({0})"),  # C round(): halfway cases away from zero
    "nearbyint": (1, "roundEven({0})"),
    "rint": (1, "roundEven({0})"),
    "erf": (1, "tvm_erf_{S}({0})"),
    "sigmoid": (1, "({T}(1.0) / ({T}(1.0) + exp(-({0}))))"),
    "pow": (2, "tvm_pow_{S}({0}, {1})"),
    "fmod": (2, "tvm_fmod_{S}({0}, {1})"),
    "atan2": (2, "atan({0}, {1})"),
    "fmin": (2, "min({0}, {1})"),
    "fmax": (2, "max({0}, {1})"),
    "hypot": (2, "length(vec2({0}, {1}))"),
    "copysign": (2, "tvm_copysign_{S}({0}, {1})"),
    "ldexp": (2, "ldexp({0}, int({1}))"),
    "fma": (3, "fma({0}, {1}, {2})"),
}
# The ones GLSL (and our helpers) provide for double.
_MATH_F64 = {"sqrt", "rsqrt", "fabs", "abs", "floor", "ceil", "trunc", "round", "nearbyint", "rint",
             "fmod", "fmin", "fmax", "fma"}  # fmt: skip
_MATH_BOOL = {"isnan": "isnan({0})", "isinf": "isinf({0})", "isfinite": "(!(isnan({0}) || isinf({0})))"}

_HELPERS_FLOAT = {
    "round": "{T} tvm_round_{S}({T} x) {{ return sign(x) * floor(abs(x) + {T}(0.5)); }}",
    "fmod": "{T} tvm_fmod_{S}({T} a, {T} b) {{ return a - b * trunc(a / b); }}",
    "floormod": "{T} tvm_floormod_{S}({T} a, {T} b) {{ return a - b * floor(a / b); }}",
    "log1p": "{T} tvm_log1p_{S}({T} x) {{ {T} u = {T}(1.0) + x; return (u == {T}(1.0)) ? x : log(u) * (x / (u - {T}(1.0))); }}",
    "expm1": (
        "{T} tvm_expm1_{S}({T} x) {{ {T} u = exp(x); if (u == {T}(1.0)) return x; "
        "{T} um1 = u - {T}(1.0); if (um1 == {T}(-1.0)) return {T}(-1.0); return um1 * x / log(u); }}"
    ),
    "pow": (
        "{T} tvm_pow_{S}({T} x, {T} y) {{\n"
        "  // C pow(): negative bases with integral exponents, pow(x, 0) == 1, pow(0, y)\n"
        "  if (y == {T}(0.0)) return {T}(1.0);\n"
        "  if (x == {T}(0.0)) return (y > {T}(0.0)) ? {T}(0.0) : uintBitsToFloat(0x7f800000u);\n"
        "  {T} r = pow(abs(x), y);\n"
        "  if (x < {T}(0.0)) {{\n"
        "    if (floor(y) != y) return uintBitsToFloat(0x7fc00000u);\n"
        "    if (mod(y, {T}(2.0)) != {T}(0.0)) r = -r;\n"
        "  }}\n"
        "  return r;\n"
        "}}"
    ),
    "copysign": (
        "float tvm_copysign_f32(float a, float b) {{ return uintBitsToFloat((floatBitsToUint(a) & 0x7fffffffu) "
        "| (floatBitsToUint(b) & 0x80000000u)); }}"
    ),
    "erf": (
        "float tvm_erf_f32(float x) {{\n"
        "  // rational approximation (Eigen / TVM fast_erf), |error| < 4e-7 in fp32\n"
        "  float v = clamp(x, -4.0, 4.0);\n"
        "  float x2 = v * v;\n"
        "  float p = x2 * -2.72614225801306e-10 + 2.77068142495902e-08;\n"
        "  p = x2 * p + -2.10102402082508e-06;\n"
        "  p = x2 * p + -5.69250639462346e-05;\n"
        "  p = x2 * p + -7.34990630326855e-04;\n"
        "  p = x2 * p + -2.95459980854025e-03;\n"
        "  p = x2 * p + -1.60960333262415e-02;\n"
        "  p = v * p;\n"
        "  float q = x2 * -1.45660718464996e-05 + -2.13374055278905e-04;\n"
        "  q = x2 * q + -1.68282697438203e-03;\n"
        "  q = x2 * q + -7.37332916720468e-03;\n"
        "  q = x2 * q + -1.42647390514189e-02;\n"
        "  return p / q;\n"
        "}}"
    ),
}
_HELPERS_INT = {
    # TIR floordiv / floormod: round towards -inf.  GLSL '/' on signed ints is OpSDiv (truncates).
    "floordiv": (
        "{T} tvm_floordiv_{S}({T} a, {T} b) {{ {T} q = a / b; {T} r = a - q * b; "
        "return (r != {T}(0) && ((r < {T}(0)) != (b < {T}(0)))) ? q - {T}(1) : q; }}"
    ),
    "floormod": (
        "{T} tvm_floormod_{S}({T} a, {T} b) {{ {T} r = a - (a / b) * b; "
        "return (r != {T}(0) && ((r < {T}(0)) != (b < {T}(0)))) ? r + b : r; }}"
    ),
    # TIR truncmod (Mod); not GLSL '%', whose sign for negative operands glslang maps to OpSMod.
    "truncmod": "{T} tvm_truncmod_{S}({T} a, {T} b) {{ return a - (a / b) * b; }}",
}


def _sanitize(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    s = re.sub(r"_+", "_", s).strip("_") or "v"  # '__' is reserved in GLSL identifiers
    if s[0].isdigit():
        s = "v" + s
    if s.startswith(("gl_", "tvm_")) or s in _RESERVED:
        s = "v_" + s
    return s


class GLSLPrinter:
    """Prints one lowered PrimFunc as a GLSL 450 compute shader."""

    def __init__(self, func, name: str, caps: VulkanCaps):
        self.func = func
        self.name = name
        self.caps = caps
        self.lines: list[str] = []
        self.indent = 1
        self.pre: list[str] = []  # statements an expression needs first (Let bindings)
        self.used_names: set[str] = set()
        self.var_names: dict[int, str] = {}  # Var id -> GLSL identifier
        self.var_dt: dict[int, DT] = {}
        self.keep_alive: list = []
        self.hoisted: list[str] = []  # declarations at the top of main()
        self.hoisted_ids: set[int] = set()
        self.prologue: list[str] = []  # scalar params and thread indices (const, top of main)
        self.globals: list[str] = []  # shared arrays
        self.helpers: dict[str, str] = {}
        self.features: set[str] = set()
        self.storages: dict[int, _Storage] = {}  # pointer Var id -> storage
        self.buffers: dict[int, _BufRef] = {}  # buffer Var id -> view
        self.ptr_alias: dict[int, object] = {}  # handle Var bound by Bind -> its value
        self.params: list[ParamInfo] = []
        self.workgroup = [1, 1, 1]
        self.workgroup_set = [False, False, False]
        self.thread_exprs: dict[str, str] = {}  # launch tag -> Python expression
        self.shared_bytes = 0
        self.subgroup_size = 0
        self.n_buffers = 0
        self.use_ubo = False

    # -- errors / bookkeeping ------------------------------------------------------------------

    def err(self, msg: str) -> VulkanCodegenError:
        return VulkanCodegenError(f"Vulkan kernel '{self.name}': {msg}")

    def fresh(self, hint: str) -> str:
        base = _sanitize(hint)
        name, i = base, 0
        while name in self.used_names:
            i += 1
            name = f"{base}_{i}"
        self.used_names.add(name)
        return name

    def bind_name(self, var, dt: DT | None = None) -> str:
        vid = var.id_
        if vid not in self.var_names:
            self.keep_alive.append(var)
            dt = dt if dt is not None else _dt(var.ty.dtype)
            name = self.fresh(var.name)
            if dt.lanes > 1:  # a vector variable is one scalar per lane: name_l0, name_l1, ...
                while any(f"{name}_l{i}" in self.used_names for i in range(dt.lanes)):
                    name = self.fresh(var.name)
                self.used_names.update(f"{name}_l{i}" for i in range(dt.lanes))
            self.var_names[vid] = name
            self.var_dt[vid] = dt
        return self.var_names[vid]

    def note_dt(self, dt: DT):
        """Record the features a value type needs (checked against the target at the end)."""
        if dt.code == 4:
            raise self.err(f"bfloat{dt.bits} is not supported by the Vulkan back end (legalize it to float32)")
        if dt.code == 3:
            raise self.err("pointer values are not supported in Vulkan kernels")
        if not dt.is_valid_scalar:
            raise self.err(f"data type {dt} is not supported by the Vulkan back end")
        if dt.is_float:
            if dt.bits == 16:
                self.features.add("float16")
            elif dt.bits == 64:
                self.features.add("float64")
            elif dt.bits != 32:
                raise self.err(f"unsupported float type {dt}")
        elif dt.is_integer:
            if dt.bits in (8, 16, 64):
                self.features.add(f"int{dt.bits}")
            elif dt.bits != 32:
                raise self.err(f"unsupported integer type {dt}")

    def glsl_type(self, dt: DT) -> str:
        dt = dt.scalar()
        if dt.is_bool:
            return "bool"
        self.note_dt(dt)
        t = _GLSL_SCALAR.get((dt.code, dt.bits))
        if t is None:
            raise self.err(f"unsupported data type {dt}")
        return t

    def helper(self, kind: str, dt: DT) -> str:
        """Instantiate a typed helper function; returns its name."""
        T = self.glsl_type(dt)
        S = _SUFFIX[(dt.code, dt.bits)]
        key = f"{kind}_{S}"
        if key not in self.helpers:
            table = _HELPERS_FLOAT if dt.is_float else _HELPERS_INT
            self.helpers[key] = table[kind].format(T=T, S=S)
        return f"tvm_{kind}_{S}"

    def emit(self, line: str):
        if self.pre:
            for p in self.pre:
                self.lines.append("  " * self.indent + p)
            self.pre = []
        self.lines.append("  " * self.indent + line)

    def hoist(self, decl: str, key: int | None = None):
        if key is not None:
            if key in self.hoisted_ids:
                return
            self.hoisted_ids.add(key)
        self.hoisted.append(decl)

    # -- literals ------------------------------------------------------------------------------

    def lit(self, value, dt: DT) -> str:
        dt = dt.scalar()
        if dt.is_bool:
            return "true" if value else "false"
        T = self.glsl_type(dt)
        if dt.is_integer:
            v = int(value)
            if dt.is_uint:
                v &= (1 << dt.bits) - 1
            if dt.bits == 32:
                if dt.is_uint:
                    return f"{v}u"
                if v == -(2**31):
                    return "(-2147483647 - 1)"
                return f"({v})" if v < 0 else str(v)
            if dt.bits == 64:
                if dt.is_uint:
                    return f"{v}ul"
                if v == -(2**63):
                    return "(-9223372036854775807l - 1l)"
                return f"({v}l)" if v < 0 else f"{v}l"
            return f"{T}({v})"
        v = float(value)
        if math.isnan(v) or math.isinf(v):
            bits = "0x7fc00000u" if math.isnan(v) else ("0x7f800000u" if v > 0 else "0xff800000u")
            f = f"uintBitsToFloat({bits})"
            return f if dt.bits == 32 else f"{T}({f})"
        r = repr(v)
        if "e" not in r and "." not in r:
            r += ".0"
        if dt.bits == 64:
            r += "lf"
        out = f"{T}({r})" if dt.bits == 16 else r
        return f"({out})" if v < 0 or r.startswith("-") else out

    # -- expressions -----------------------------------------------------------------------------

    def E(self, e, lane: int = 0) -> str:
        k = _type_key(e)
        fn = _EXPR.get(k)
        if fn is None:
            raise self.err(f"unsupported expression {k}: {e}")
        return fn(self, e, lane)

    def _var(self, v, lane):
        vid = v.id_
        if vid in self.ptr_alias:
            raise self.err(f"pointer variable '{v.name}' used as a value")
        if vid not in self.var_names:
            raise self.err(f"variable '{v.name}' is used but never defined in the kernel")
        name = self.var_names[vid]
        if self.var_dt[vid].lanes > 1:
            return f"{name}_l{lane}"
        return name

    def _int(self, e, lane):
        return self.lit(e.value, expr_dt(e))

    def _float(self, e, lane):
        return self.lit(e.value, expr_dt(e))

    def _binop(op):
        def f(self, e, lane):
            dt = expr_dt(e)
            self.note_dt(dt.scalar())
            if dt.is_bool and op in ("+", "*", "-"):
                raise self.err(f"arithmetic '{op}' on bool")
            return f"({self.E(e.a, lane)} {op} {self.E(e.b, lane)})"

        return f

    def _div(self, e, lane):  # TIR Div: float division, or integer division truncating to zero
        return f"({self.E(e.a, lane)} / {self.E(e.b, lane)})"

    def _mod(self, e, lane):  # TIR Mod: truncmod (C %, fmod for floats)
        dt = expr_dt(e).scalar()
        a, b = self.E(e.a, lane), self.E(e.b, lane)
        if dt.is_uint:
            return f"({a} % {b})"
        if dt.is_float:
            return f"{self.helper('fmod', dt)}({a}, {b})"
        return f"{self.helper('truncmod', dt)}({a}, {b})"

    @staticmethod
    def _pow2_const(e):
        if _type_key(e) == "ir.IntImm" and e.value > 0 and (e.value & (e.value - 1)) == 0:
            return e.value.bit_length() - 1
        return None

    def _floordiv(self, e, lane):
        dt = expr_dt(e).scalar()
        a, b = self.E(e.a, lane), self.E(e.b, lane)
        if dt.is_float:
            return f"floor({a} / {b})"
        if dt.is_uint:
            return f"({a} / {b})"
        k = self._pow2_const(e.b)
        if k is not None:  # arithmetic shift rounds towards -inf: exactly floordiv
            return a if k == 0 else f"({a} >> {k})"
        return f"{self.helper('floordiv', dt)}({a}, {b})"

    def _floormod(self, e, lane):
        dt = expr_dt(e).scalar()
        a, b = self.E(e.a, lane), self.E(e.b, lane)
        if dt.is_float:
            return f"{self.helper('floormod', dt)}({a}, {b})"
        if dt.is_uint:
            return f"({a} % {b})"
        k = self._pow2_const(e.b)
        if k is not None:  # two's complement: x & (2^k - 1) is floormod for a positive divisor
            return f"({a} & {self.lit((1 << k) - 1, dt)})"
        return f"{self.helper('floormod', dt)}({a}, {b})"

    def _minmax(fn, bool_op):
        def f(self, e, lane):
            dt = expr_dt(e)
            a, b = self.E(e.a, lane), self.E(e.b, lane)
            if dt.is_bool:
                return f"({a} {bool_op} {b})"
            self.note_dt(dt.scalar())
            return f"{fn}({a}, {b})"

        return f

    def _cmp(op):
        def f(self, e, lane):
            return f"({self.E(e.a, lane)} {op} {self.E(e.b, lane)})"

        return f

    def _logic(op):
        def f(self, e, lane):
            return f"({self.E(e.a, lane)} {op} {self.E(e.b, lane)})"

        return f

    def _not(self, e, lane):
        return f"(!{self.E(e.a, lane)})"

    def _bitwise(op, bool_op):
        def f(self, e, lane):
            a, b = self.E(e.a, lane), self.E(e.b, lane)
            return f"({a} {bool_op if expr_dt(e).is_bool else op} {b})"

        return f

    def _bitnot(self, e, lane):
        a = self.E(e.a, lane)
        return f"(!{a})" if expr_dt(e).is_bool else f"(~{a})"

    def _select(self, e, lane):
        return f"({self.E(e.condition, lane)} ? {self.E(e.true_value, lane)} : {self.E(e.false_value, lane)})"

    def cast(self, value: str, src: DT, dst: DT) -> str:
        src, dst = src.scalar(), dst.scalar()
        if src == dst:
            return value
        if dst.is_bool:
            return f"({value} != {self.lit(0, src)})"
        if src.is_bool:
            return f"({value} ? {self.lit(1, dst)} : {self.lit(0, dst)})"
        self.note_dt(src)
        return f"{self.glsl_type(dst)}({value})"

    def _cast(self, e, lane):
        dst = expr_dt(e)
        src = expr_dt(e.value)
        if src.lanes != dst.lanes:
            raise self.err(f"cast between different lane counts {src} -> {dst}")
        return self.cast(self.E(e.value, lane), src, dst)

    def _ramp(self, e, lane):
        dt = expr_dt(e.base)
        if _type_key(e.base) == "ir.IntImm" and _type_key(e.stride) == "ir.IntImm":
            return self.lit(e.base.value + e.stride.value * lane, dt)
        base = self.E(e.base, 0)
        if lane == 0:
            return base
        if _type_key(e.stride) == "ir.IntImm":
            return f"({base} + {self.lit(e.stride.value * lane, dt)})"
        return f"({base} + {self.E(e.stride, 0)} * {self.lit(lane, dt)})"

    def _broadcast(self, e, lane):
        return self.E(e.value, 0)

    def _shuffle(self, e, lane):
        idx = e.indices[lane]
        if _type_key(idx) != "ir.IntImm":
            raise self.err("Shuffle with non-constant indices")
        k = idx.value
        for v in e.vectors:
            n = expr_dt(v).lanes
            if k < n:
                return self.E(v, k)
            k -= n
        raise self.err("Shuffle index out of range")

    def _let(self, e, lane):
        vid = e.var.id_
        dt = _dt(e.var.ty.dtype)
        name = self.bind_name(e.var, dt)
        self.declare_var(vid, name, dt)
        vals = [self.E(e.value, i) for i in range(dt.lanes)]
        for i, v in enumerate(vals):
            self.pre.append(f"{name if dt.lanes == 1 else f'{name}_l{i}'} = {v};")
        return self.E(e.body, lane)

    def declare_var(self, vid: int, name: str, dt: DT):
        T = self.glsl_type(dt)
        if dt.lanes == 1:
            self.hoist(f"{T} {name};", vid)
        else:
            self.hoist(" ".join(f"{T} {name}_l{i};" for i in range(dt.lanes)), vid)

    # -- buffers -------------------------------------------------------------------------------

    def buf_ref(self, buf) -> _BufRef:
        ref = self.buffers.get(buf.id_)
        if ref is None:
            raise self.err(f"buffer '{buf.name}' is accessed but not declared (DeclBuffer/AllocBuffer)")
        return ref

    def view_name(self, ref: _BufRef) -> str:
        st = ref.storage
        edt = ref.dtype.scalar()
        if edt == st.dtype or (edt.is_bool and st.dtype.is_bool):
            return st.name
        if st.kind != "ssbo":
            raise self.err(f"{st.kind} array '{st.name}' is accessed as {edt} but declared as {st.dtype}")
        if edt not in st.views:
            st.views[edt] = self.fresh(f"{st.name}_as_{_SUFFIX[(edt.code, edt.bits)]}")
        return st.views[edt]

    def flat_index(self, buf, ref: _BufRef, indices, lane: int, elem_lane: int | None) -> str:
        """GLSL index expression into the scalar array behind ``buf``."""
        if len(indices) == 1:
            idx_e = indices[0]
            idx = self.E(idx_e, lane)
            idt = expr_dt(idx_e).scalar()
        else:  # not flattened: row-major over the buffer's shape (or its strides)
            shape = list(buf.ty.shape)
            strides = list(buf.ty.strides)
            terms = []
            for d, ie in enumerate(indices):
                if strides:
                    stride = self.E(strides[d])
                else:
                    stride = " * ".join(self.E(s) for s in shape[d + 1 :]) or None
                t = self.E(ie, lane)
                terms.append(t if stride is None else f"{t} * {stride}")
            idx = "(" + " + ".join(terms) + ")"
            idt = expr_dt(indices[0]).scalar()
        if ref.offset is not None:
            idx = f"({idx} + {self.E(ref.offset)})"
        vl = ref.dtype.lanes
        if vl > 1:  # buffer of vector elements, stored as scalars
            idx = f"({idx} * {self.lit(vl, idt)} + {self.lit(elem_lane or 0, idt)})"
        if idt.bits == 64:
            return f"uint({idx})"
        if idt.bits != 32:
            return f"int({idx})"
        return idx

    def _load(self, e, lane):
        buf = e.source
        if _type_key(buf) != "ir.Var":
            raise self.err(f"load from a non-buffer source {_type_key(buf)}")
        ref = self.buf_ref(buf)
        ref.storage.loaded = True
        dt = expr_dt(e)
        bl = ref.dtype.lanes
        if bl > 1:
            # buffer of vector elements: lane l of the loaded value is element (l % bl) of index lane l // bl
            idx_lane, elem_lane = divmod(lane, bl) if dt.lanes > 1 else (0, 0)
        else:
            idx_lane, elem_lane = lane, None
        name = self.view_name(ref)
        access = f"{name}[{self.flat_index(buf, ref, e.indices, idx_lane, elem_lane)}]"
        edt = ref.dtype.scalar()
        if edt.is_bool and ref.storage.kind == "ssbo":
            return f"({access} != uint8_t(0))"
        self.note_dt(edt)
        return access

    # -- calls ---------------------------------------------------------------------------------

    def _call(self, e, lane):
        op = e.op
        opname = op.name if _type_key(op) == "ir.Op" else str(op)
        args = list(e.args)
        dt = expr_dt(e)
        if opname.split(".")[-1] in ("call_pure_extern", "call_extern", "call_llvm_pure_intrin"):
            fname = args[0].value if _type_key(args[0]) == "ir.StringImm" else str(args[0])
            return self.math(fname, args[1:], dt, lane, extern=True)
        short = opname.split(".", 1)[1] if opname.startswith(("tirx.", "prim.", "tir.")) else opname
        if short == "if_then_else":
            return f"({self.E(args[0], lane)} ? {self.E(args[1], lane)} : {self.E(args[2], lane)})"
        if short in ("likely", "tvm_thread_invariant", "assume"):
            return self.E(args[0], lane)
        if short in ("bitwise_and", "bitwise_or", "bitwise_xor"):
            op_ = {"bitwise_and": "&", "bitwise_or": "|", "bitwise_xor": "^"}[short]
            if dt.is_bool:
                op_ = {"&": "&&", "|": "||", "^": "!="}[op_]
            return f"({self.E(args[0], lane)} {op_} {self.E(args[1], lane)})"
        if short == "bitwise_not":
            return f"(~{self.E(args[0], lane)})" if not dt.is_bool else f"(!{self.E(args[0], lane)})"
        if short == "shift_left":
            return f"({self.E(args[0], lane)} << {self.E(args[1], lane)})"
        if short == "shift_right":
            return f"({self.E(args[0], lane)} >> {self.E(args[1], lane)})"
        if short == "reinterpret":
            return self.reinterpret(args[0], dt, lane)
        if short == "popcount":
            return self.cast(f"bitCount({self.E(args[0], lane)})", INT32, dt)
        if short == "clz":
            a = args[0]
            adt = expr_dt(a).scalar()
            if adt.bits != 32:
                raise self.err(f"clz on {adt} is not supported")
            return self.cast(f"(31 - findMSB({self.E(a, lane)}))", INT32, dt)
        if short == "large_uint_imm":
            v = (int(args[1].value) << 32) | int(args[0].value)
            return self.lit(v, dt)
        if short in ("isnan", "isinf", "isfinite"):
            x = args[0]
            xdt = expr_dt(x).scalar()
            s = self.E(x, lane)
            if xdt.bits == 16:
                s = f"float({s})"
            return _MATH_BOOL[short].format(s)
        if short in ("tvm_warp_shuffle", "tvm_warp_shuffle_up", "tvm_warp_shuffle_down", "tvm_warp_shuffle_xor"):
            return self.warp_shuffle(short, args, dt, lane)
        if short == "tvm_warp_activemask":
            self.need_subgroup(SUBGROUP_BALLOT, "subgroup_ballot", "tvm_warp_activemask")
            return self.cast("subgroupBallot(true).x", UINT32, dt)
        if short == "undef":
            return self.lit(0, dt)
        if short == "round":  # TIR round is round-half-to-even (it lowers to nearbyint on llvm)
            short = "nearbyint"
        if short in _MATH:
            return self.math(short, args, dt, lane, extern=False)
        if short == "tvm_storage_sync":
            raise self.err("tvm_storage_sync used as a value")
        raise self.err(f"unsupported intrinsic {opname}")

    def math(self, fname: str, args, dt: DT, lane: int, extern: bool) -> str:
        if fname == "__dp4a":  # int8x4 dot product + accumulator
            a, b, c = args
            terms = " + ".join(
                f"{self.cast(self.E(a, i), expr_dt(a), INT32)} * {self.cast(self.E(b, i), expr_dt(b), INT32)}"
                for i in range(expr_dt(a).lanes)
            )
            return self.cast(f"({terms} + {self.cast(self.E(c, lane), expr_dt(c), INT32)})", INT32, dt)
        base = fname
        if base.startswith("__"):
            base = base[2:]
        if base not in _MATH and base.endswith("f") and base[:-1] in _MATH:
            base = base[:-1]
        if base not in _MATH and base.startswith("h") and base[1:] in _MATH:
            base = base[1:]  # CUDA half names (hexp, hlog, ...)
        if base not in _MATH:
            raise self.err(f"unsupported {'extern function' if extern else 'intrinsic'} '{fname}'")
        arity, tmpl = _MATH[base]
        if len(args) != arity:
            raise self.err(f"'{fname}' expects {arity} arguments, got {len(args)}")
        sdt = dt.scalar()
        if not sdt.is_float:
            if base in ("fabs", "abs"):
                return f"abs({self.E(args[0], lane)})"
            if base in ("fmin", "fmax"):
                return f"{base[1:]}({self.E(args[0], lane)}, {self.E(args[1], lane)})"
            raise self.err(f"'{fname}' on non-float type {dt}")
        vals = [self.E(a, lane) for a in args]
        if sdt.bits == 64:
            if base not in _MATH_F64:
                raise self.err(f"float64 '{fname}' has no GLSL double version (compute it in float32)")
            work = sdt
        else:
            work = FLOAT32  # float16 math is evaluated in fp32 and rounded once
            vals = [v if sdt.bits == 32 else f"float({v})" for v in vals]
        T = self.glsl_type(work)
        S = _SUFFIX[(work.code, work.bits)]
        for kind in ("round", "fmod", "log1p", "expm1", "pow", "copysign", "erf"):
            if f"tvm_{kind}_" in tmpl:
                self.helper(kind, work)
        out = tmpl.format(*vals, T=T, S=S)
        return out if sdt.bits != 16 else f"float16_t({out})"

    def need_subgroup(self, bit: int, feature: str, what: str):
        if not self.caps.subgroup_ops_allowed(bit):
            names = {SUBGROUP_SHUFFLE: "SHUFFLE (0x10)", SUBGROUP_BALLOT: "BALLOT (0x8)", SUBGROUP_BASIC: "BASIC (0x1)"}
            raise self.err(
                f"{what} needs subgroup operation {names.get(bit, hex(bit))}: set supported_subgroup_operations "
                f"in the target (and vulkan_api_version >= 1.1; target env is {self.caps.target_env})"
            )
        self.features.add("subgroup_basic")
        self.features.add(feature)
        self.subgroup_size = max(self.subgroup_size, self.caps.thread_warp_size, 1)

    def warp_shuffle(self, kind: str, args, dt: DT, lane: int) -> str:
        self.need_subgroup(SUBGROUP_SHUFFLE, "subgroup_shuffle", kind)
        if len(args) != 5:
            raise self.err(f"{kind} expects (mask, value, lane_or_delta, width, warp_size)")
        _, value, delta, width, _ = args
        sdt = dt.scalar()
        T = self.glsl_type(sdt)
        S = _SUFFIX[(sdt.code, sdt.bits)]
        fname = {"tvm_warp_shuffle": "tvm_shfl", "tvm_warp_shuffle_up": "tvm_shfl_up",
                 "tvm_warp_shuffle_down": "tvm_shfl_down", "tvm_warp_shuffle_xor": "tvm_shfl_xor"}[kind] + f"_{S}"  # fmt: skip
        if fname not in self.helpers:
            if sdt.is_bool or (sdt.bits == 32) or (sdt.is_float and sdt.bits == 64):
                shfl = "subgroupShuffle(v, src)"
            elif sdt.is_float:  # float16
                shfl = "float16_t(subgroupShuffle(float(v), src))"
            elif sdt.bits == 64:
                shfl = f"{T}(packUint2x32(subgroupShuffle(unpackUint2x32(uint64_t(v)), src)))"
            else:
                shfl = f"{T}(subgroupShuffle({'int' if sdt.is_int else 'uint'}(v), src))"
            # CUDA __shfl*_sync semantics within segments of `width` lanes.
            src = {
                "tvm_warp_shuffle": "(id / w) * w + (uint(lane) % w)",
                "tvm_warp_shuffle_down": "((id % w) + uint(lane) < w) ? id + uint(lane) : id",
                "tvm_warp_shuffle_up": "((id % w) >= uint(lane)) ? id - uint(lane) : id",
                "tvm_warp_shuffle_xor": "(((id % w) ^ uint(lane)) < w) ? (id / w) * w + ((id % w) ^ uint(lane)) : id",
            }[kind]
            self.helpers[fname] = (
                f"{T} {fname}({T} v, int lane, int width) {{ uint id = gl_SubgroupInvocationID; "
                f"uint w = uint(width); uint src = {src}; return {shfl}; }}"
            )
        v = self.E(value, lane)
        d = self.cast(self.E(delta, lane), expr_dt(delta), INT32)
        w = self.cast(self.E(width, lane), expr_dt(width), INT32)
        return f"{fname}({v}, {d}, {w})"

    def _bits_uint(self, value: str, dt: DT) -> str:
        """The bits of a scalar value as an unsigned integer of the same width."""
        if dt.is_uint:
            return value
        u = DT(1, dt.bits, 1)
        U = self.glsl_type(u)
        if dt.is_int:
            return f"{U}({value})"
        fn = {16: "float16BitsToUint16", 32: "floatBitsToUint", 64: "doubleBitsToUint64"}[dt.bits]
        return f"{fn}({value})"

    def _from_bits(self, value: str, dt: DT) -> str:
        if dt.is_uint:
            return value
        if dt.is_int:
            return f"{self.glsl_type(dt)}({value})"
        fn = {16: "uint16BitsToFloat16", 32: "uintBitsToFloat", 64: "uint64BitsToDouble"}[dt.bits]
        return f"{fn}({value})"

    def reinterpret(self, arg, dt: DT, lane: int) -> str:
        sdt = expr_dt(arg)
        if sdt.is_bool or dt.is_bool or sdt.bits * sdt.lanes != dt.bits * dt.lanes:
            raise self.err(f"reinterpret {sdt} -> {dt} is not supported")
        src, dst = sdt.scalar(), dt.scalar()
        if src.bits == dst.bits:
            return self._from_bits(self._bits_uint(self.E(arg, lane), src), dst)
        if dst.bits > src.bits:  # pack k source lanes into one destination lane
            k = dst.bits // src.bits
            U = self.glsl_type(DT(1, dst.bits, 1))
            parts = []
            for t in range(k):
                b = self._bits_uint(self.E(arg, lane * k + t), src)
                parts.append(f"({U}({b}) << {t * src.bits})")
            return self._from_bits("(" + " | ".join(parts) + ")", dst)
        k = src.bits // dst.bits  # split one source lane into k destination lanes
        b = self._bits_uint(self.E(arg, lane // k), src)
        Ud = self.glsl_type(DT(1, dst.bits, 1))
        mask = self.lit((1 << dst.bits) - 1, DT(1, src.bits, 1))
        return self._from_bits(f"{Ud}(({b} >> {(lane % k) * dst.bits}) & {mask})", dst)

    # -- statements ------------------------------------------------------------------------------

    def S(self, s):
        k = _type_key(s)
        fn = _STMT.get(k)
        if fn is None:
            raise self.err(f"unsupported statement {k}")
        fn(self, s)

    def _seq(self, s):
        for x in s.seq:
            self.S(x)

    def resolve_pointer(self, data) -> _BufRef:
        k = _type_key(data)
        if k == "ir.Var":
            vid = data.id_
            if vid in self.storages:
                st = self.storages[vid]
                return _BufRef(st, st.dtype, None)
            if vid in self.ptr_alias:
                return self.resolve_pointer(self.ptr_alias[vid])
            if vid in self.buffers:
                return self.buffers[vid]
            raise self.err(f"pointer '{data.name}' does not refer to a kernel parameter or allocation")
        if k == "ir.Call" and _type_key(data.op) == "ir.Op" and data.op.name.endswith(".buffer_data"):
            return self.buf_ref(data.args[0])
        raise self.err(f"unsupported buffer data expression {k}: {data}")

    def _decl_buffer(self, s):
        buf = s.buffer
        base = self.resolve_pointer(s.data)
        bdt = _dt(buf.ty.dtype.dtype)
        offset = buf.ty.elem_offset
        if offset is not None and _type_key(offset) == "ir.IntImm" and offset.value == 0:
            offset = None
        if base.offset is not None:
            if bdt != base.dtype:
                raise self.err(f"buffer '{buf.name}' re-types an offset view of '{base.storage.name}'")
            offset = base.offset if offset is None else tvm_add(base.offset, offset)
        self.keep_alive.append(buf)
        self.buffers[buf.id_] = _BufRef(base.storage, bdt, offset)

    def _alloc_buffer(self, s):
        buf = s.buffer
        scope = buf.scope()
        dt = _dt(buf.ty.dtype.dtype)
        size = 1
        for d in buf.ty.shape:
            if _type_key(d) != "ir.IntImm":
                raise self.err(f"allocation '{buf.name}' ({scope}) has a non-constant size {list(buf.ty.shape)}")
            size *= int(d.value)
        size *= dt.lanes
        edt = dt.scalar()
        T = self.glsl_type(edt)
        name = self.fresh(buf.name)
        if scope in ("shared", "shared.dyn"):
            st = _Storage("shared", name, edt, size=size)
            self.globals.append(f"shared {T} {name}[{max(size, 1)}];")
            self.shared_bytes += size * max(edt.bits // 8, 1 if not edt.is_bool else 4)
        elif scope.startswith("local") or scope == "":
            st = _Storage("local", name, edt, size=size)
            self.hoist(f"{T} {name}[{max(size, 1)}];")
        else:
            raise self.err(f"allocation '{buf.name}' in storage scope '{scope}' is not supported")
        self.keep_alive.append(buf)
        self.buffers[buf.id_] = _BufRef(st, dt, None)

    def _bind(self, s):
        var, value = s.var, s.value
        vty = var.ty
        if _type_key(vty) != "ir.PrimType" or _dt(vty.dtype).code == 3:
            self.keep_alive.append(var)
            self.ptr_alias[var.id_] = value  # pointer binding: resolved when a buffer uses it
            return
        dt = _dt(vty.dtype)
        name = self.bind_name(var, dt)
        self.declare_var(var.id_, name, dt)
        if dt.lanes == 1:
            self.emit(f"{name} = {self.E(value)};")
        else:
            vals = [self.E(value, i) for i in range(dt.lanes)]
            for i, v in enumerate(vals):
                self.emit(f"{name}_l{i} = {v};")

    def _attr(self, s):
        if s.attr_key == "thread_extent":
            self.thread_extent(s.node, s.value)
        elif s.attr_key in ("virtual_thread", "vthread"):
            raise self.err("virtual threads must be lowered before code generation")
        self.S(s.body)

    def thread_extent(self, iv, value):
        tag = iv.thread_tag
        m = re.fullmatch(r"(blockIdx|threadIdx)\.([xyz])", tag)
        if not m:
            raise self.err(f"unsupported thread tag '{tag}'")
        dim = "xyz".index(m.group(2))
        var = iv.var
        dt = _dt(var.ty.dtype)
        if iv.var.id_ in self.var_names:
            return
        name = self.bind_name(var, dt)
        builtin = "gl_LocalInvocationID" if m.group(1) == "threadIdx" else "gl_WorkGroupID"
        T = self.glsl_type(dt)
        if tag == "blockIdx.x" and "blockIdx.y" not in self.launch_tags:
            # FLAG_FOLDED_GRID: a grid too wide for one dimension may arrive folded into x*y
            self.prologue.append(f"const {T} {name} = {T}(gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x);")
            self.emit(f"if ({name} >= {self.E(value)}) return;  // past a folded grid's end")
            self.folded_grid = True
        else:
            self.prologue.append(f"const {T} {name} = {T}({builtin}.{m.group(2)});")
        if m.group(1) == "threadIdx":
            if _type_key(value) != "ir.IntImm":
                raise self.err(f"workgroup size must be a compile-time constant, got {tag} = {value}")
            n = int(value.value)
            if self.workgroup_set[dim] and self.workgroup[dim] != n:
                raise self.err(f"{tag} is launched with two different extents ({self.workgroup[dim]} and {n})")
            self.workgroup[dim] = n
            self.workgroup_set[dim] = True
            self.thread_exprs[tag] = str(n)
        else:
            self.thread_exprs[tag] = _py_expr(value, self)

    def _for(self, s):
        var = s.loop_var
        dt = _dt(var.ty.dtype)
        T = self.glsl_type(dt)
        name = self.fresh(var.name)
        self.keep_alive.append(var)
        old = self.var_names.get(var.id_), self.var_dt.get(var.id_)
        self.var_names[var.id_] = name
        self.var_dt[var.id_] = dt
        lo = self.E(s.min)
        ext = s.extent
        is_zero = _type_key(s.min) == "ir.IntImm" and s.min.value == 0
        hi = self.E(ext) if is_zero else f"({lo} + {self.E(ext)})"
        if not (_type_key(ext) in ("ir.IntImm", "ir.Var") and is_zero):
            # TIR evaluates the extent once; GLSL re-evaluates the condition every iteration
            hi_name = self.fresh(f"{var.name}_end")
            self.hoist(f"{T} {hi_name};")
            self.emit(f"{hi_name} = {hi};")
            hi = hi_name
        step = s.step
        if step is not None and not (_type_key(step) == "ir.IntImm" and step.value == 1):
            inc = f"{name} += {self.E(step)}"
        else:
            inc = f"++{name}"
        if int(s.kind) == 3:  # unrolled
            self.features.add("control_flow")
            self.emit("[[unroll]]")
        self.emit(f"for ({T} {name} = {lo}; {name} < {hi}; {inc}) {{")
        self.indent += 1
        self.S(s.body)
        self.indent -= 1
        self.emit("}")
        if old[0] is not None:
            self.var_names[var.id_], self.var_dt[var.id_] = old
        else:
            del self.var_names[var.id_]
            del self.var_dt[var.id_]

    def _while(self, s):
        cond = self.E(s.condition)
        if self.pre:
            raise self.err("a Let expression in a while-loop condition is not supported")
        self.emit(f"while ({cond}) {{")
        self.indent += 1
        self.S(s.body)
        self.indent -= 1
        self.emit("}")

    def _if(self, s):
        self.emit(f"if ({self.E(s.condition)}) {{")
        self.indent += 1
        self.S(s.then_case)
        self.indent -= 1
        if s.else_case is not None:
            self.emit("} else {")
            self.indent += 1
            self.S(s.else_case)
            self.indent -= 1
        self.emit("}")

    def _store(self, s):
        buf = s.buffer
        ref = self.buf_ref(buf)
        st = ref.storage
        st.stored = True
        value = s.value
        vdt = expr_dt(value)
        name = self.view_name(ref)
        edt = ref.dtype.scalar()
        bool_ssbo = edt.is_bool and st.kind == "ssbo"
        if not bool_ssbo:
            self.note_dt(edt)
        bl = ref.dtype.lanes

        def target(lane):
            if bl > 1:
                il, el = divmod(lane, bl) if vdt.lanes > 1 else (0, 0)
                return f"{name}[{self.flat_index(buf, ref, s.indices, il, el)}]"
            return f"{name}[{self.flat_index(buf, ref, s.indices, lane, None)}]"

        def conv(v):
            return f"(({v}) ? uint8_t(1) : uint8_t(0))" if bool_ssbo else v

        if vdt.lanes == 1:
            v = self.E(value)
            self.emit(f"{target(0)} = {conv(v)};")
            return
        # vector store: evaluate all lanes first (the vector semantics), then store each
        T = self.glsl_type(vdt.scalar())
        vals = [self.E(value, i) for i in range(vdt.lanes)]
        tgts = [target(i) for i in range(vdt.lanes)]
        self.emit("{")
        self.indent += 1
        for i, v in enumerate(vals):
            self.emit(f"{T} tvm_lane{i} = {v};")
        for i, t in enumerate(tgts):
            self.emit(f"{t} = {conv(f'tvm_lane{i}')};")
        self.indent -= 1
        self.emit("}")

    def _evaluate(self, s):
        v = s.value
        k = _type_key(v)
        if k in ("ir.IntImm", "ir.FloatImm"):
            return
        if k == "ir.Call" and _type_key(v.op) == "ir.Op":
            opname = v.op.name.split(".", 1)[-1]
            if opname == "tvm_storage_sync":
                self.storage_sync(v.args[0].value)
                return
            if opname in ("assume", "tvm_thread_invariant", "likely"):
                return
        self.emit(f"{self.E(v)};")

    def storage_sync(self, scope: str):
        if scope in ("shared", "shared.dyn"):
            self.emit("memoryBarrierShared();")
            self.emit("barrier();")
        elif scope == "warp":
            if self.caps.has_subgroups:
                # warp-synchronous code (threads of one warp exchanging data through shared memory):
                # subgroup execution barrier + shared-memory ordering, as TVM's SPIR-V back end does.
                self.need_subgroup(SUBGROUP_BASIC, "subgroup_basic", "tvm_storage_sync('warp')")
                self.emit("subgroupMemoryBarrierShared();")
                self.emit("subgroupBarrier();")
            else:
                self.emit("memoryBarrierShared();")
                self.emit("barrier();")
        elif scope == "global":
            raise self.err("grid-wide synchronisation (tvm_storage_sync('global')) is not supported")
        else:
            raise self.err(f"unsupported storage sync scope '{scope}'")

    def _assert(self, s):
        pass  # device code cannot raise; host-side asserts have already run

    def _break(self, s):
        self.emit("break;")

    def _continue(self, s):
        self.emit("continue;")

    def _return(self, s):
        self.emit("return;")

    # -- the kernel ------------------------------------------------------------------------------

    def run(self) -> GLSLKernel:
        f = self.func
        attrs = f.attrs
        launch_tags = [str(t) for t in (attrs.get("tirx.kernel_launch_params") or [])]
        self.launch_tags = launch_tags
        self.folded_grid = False
        for name in ("main", "tvm_pc", "tvm_lane"):
            self.used_names.add(name)
        arg_types, pods = [], []
        for p in f.params:
            ty = p.ty
            tk = _type_key(ty)
            if tk == "ir.PointerType":
                et = ty.element_type
                if _type_key(et) != "ir.PrimType":
                    raise self.err(f"buffer parameter '{p.name}' must point to a primitive type")
                edt = _dt(et.dtype)
                st_dt = edt.scalar()
                name = self.fresh(p.name)
                st = _Storage("ssbo", name, st_dt, binding=self.n_buffers)
                self.keep_alive.append(p)
                self.storages[p.id_] = st
                self.params.append(ParamInfo(p.name, "buffer", str(edt), binding=self.n_buffers))
                self.n_buffers += 1
                arg_types.append("handle")
            elif tk == "ir.PrimType":
                dt = _dt(ty.dtype)
                if dt.lanes != 1 or not (dt.is_bool or (dt.code <= 2 and dt.bits in (32, 64))):
                    raise self.err(
                        f"scalar parameter '{p.name}' of type {dt}: the Vulkan calling convention passes "
                        "32/64-bit scalars only"
                    )
                self.params.append(ParamInfo(p.name, "scalar", str(dt), offset=8 * len(pods)))
                pods.append((p, dt))
                arg_types.append("int32" if dt.is_bool else str(dt))
            else:
                raise self.err(f"parameter '{p.name}' has unsupported type {ty}")

        # scalar parameters: push constants (8 bytes each) or a uniform buffer when > 128 bytes
        self.use_ubo = len(pods) * 8 > MAX_PUSH_CONSTANT_BYTES
        members = []
        for i, (p, dt) in enumerate(pods):
            mname = f"{_sanitize(p.name)}_{i}"
            mdt = INT32 if dt.is_bool else dt
            MT = self.glsl_type(mdt)
            members.append(f"  layout(offset = {8 * i}) {MT} {mname};")
            lname = self.bind_name(p, dt)
            val = f"(tvm_pc.{mname} != 0)" if dt.is_bool else f"tvm_pc.{mname}"
            self.prologue.append(f"const {self.glsl_type(dt)} {lname} = {val};")

        self.S(f.body)
        if self.pre:
            raise self.err("internal: dangling Let bindings")

        # ---- checks against the target ----
        wg = tuple(self.workgroup)
        nthreads = wg[0] * wg[1] * wg[2]
        if nthreads > self.caps.max_num_threads:
            raise self.err(
                f"workgroup of {nthreads} threads ({wg[0]}x{wg[1]}x{wg[2]}) exceeds the target's "
                f"max_num_threads={self.caps.max_num_threads}"
            )
        for d in range(3):
            lim = self.caps.max_block_size[d]
            if lim is not None and wg[d] > lim:
                raise self.err(f"threadIdx.{'xyz'[d]} extent {wg[d]} exceeds the target's max_block_size_{'xyz'[d]}={lim}")
        if self.shared_bytes > self.caps.max_shared_memory_per_block:
            raise self.err(
                f"uses {self.shared_bytes} bytes of shared memory, but the target allows "
                f"max_shared_memory_per_block={self.caps.max_shared_memory_per_block}"
            )
        for st in self.storages.values():
            dts = [st.dtype] + list(st.views)
            for d in dts:
                if d.bits == 8 or d.is_bool:
                    self.features.add("storage8")
                    self.features.add("int8")
                elif d.bits == 16:
                    self.features.add("storage16")
                    self.features.add("int16" if d.is_integer else "float16")
        if "storage8" in self.features and not self.caps.supports_8bit_buffer:
            raise self.err("reads or writes 8-bit data in storage buffers but the target lacks supports_8bit_buffer")
        if "storage16" in self.features and not self.caps.supports_16bit_buffer:
            raise self.err("reads or writes 16-bit data in storage buffers but the target lacks supports_16bit_buffer")
        for feat, attr in (
            ("float16", "supports_float16"),
            ("float64", "supports_float64"),
            ("int8", "supports_int8"),
            ("int16", "supports_int16"),
            ("int64", "supports_int64"),
        ):
            if feat in self.features and not getattr(self.caps, attr):
                raise self.err(f"uses {feat} but the target does not support it (set {attr}=True if the device does)")
        if "subgroup_basic" in self.features and self.caps.thread_warp_size > 1:
            self.subgroup_size = max(self.subgroup_size, self.caps.thread_warp_size)

        # ---- assemble ----
        out = ["#version 450", f"// TVM kernel {self.name} (generated by llama-aot targets.backends.vulkan)"]
        for feat in ("float16", "int8", "int16", "int64", "storage8", "storage16", "subgroup_basic",
                     "subgroup_shuffle", "subgroup_ballot", "control_flow"):  # fmt: skip
            if feat in self.features:
                out.append(f"#extension {_EXTENSIONS[feat]} : require")
        out.append(f"layout(local_size_x = {wg[0]}, local_size_y = {wg[1]}, local_size_z = {wg[2]}) in;")
        for vid, st in self.storages.items():
            views = [(st.dtype, st.name)] + list(st.views.items())
            aliased = len(views) > 1
            qual = ""
            if not aliased:
                qual = "restrict " if f.attrs.get("tirx.noalias") else ""
                if st.loaded and not st.stored:
                    qual += "readonly "
                elif st.stored and not st.loaded:
                    qual += "writeonly "
            for d, vname in views:
                T = "uint8_t" if d.is_bool else self.glsl_type(d)
                out.append(
                    f"layout(std430, set = 0, binding = {st.binding}) {qual}buffer tvm_buf_{vname} {{ {T} {vname}[]; }};"
                )
        if pods:
            if self.use_ubo:
                out.append(f"layout(std140, set = 0, binding = {self.n_buffers}) uniform tvm_args_t {{")
            else:
                out.append("layout(push_constant) uniform tvm_args_t {")
            out.extend(members)
            out.append("} tvm_pc;")
        out.extend(self.globals)
        out.extend(self.helpers.values())
        out.append("void main() {")
        out.extend("  " + x for x in self.prologue)
        out.extend("  " + x for x in self.hoisted)
        out.extend(self.lines)
        out.append("}")
        source = "\n".join(out) + "\n"

        # launch params: grid from blockIdx extents, block from threadIdx extents
        launch_exprs = []
        for tag in launch_tags:
            if tag in self.thread_exprs:
                launch_exprs.append(self.thread_exprs[tag])
            elif tag.startswith(("blockIdx.", "threadIdx.")):
                launch_exprs.append("1")
            else:
                launch_exprs.append("0")  # e.g. tirx.use_dyn_shared_memory: Vulkan has no dynamic shared memory
        info = FunctionInfo(self.name, arg_types, launch_tags, [0] * len(arg_types))
        return GLSLKernel(
            name=self.name,
            source=source,
            target_env=self.caps.target_env,
            params=self.params,
            function_info=info,
            flag=(FLAG_USE_UBO if self.use_ubo else 0) | (FLAG_FOLDED_GRID if self.folded_grid else 0),
            workgroup_size=wg,
            launch_exprs=launch_exprs,
            shared_bytes=self.shared_bytes,
            subgroup_size=self.subgroup_size,
        )


def tvm_add(a, b):
    return a + b


def _py_expr(e, printer: GLSLPrinter) -> str:
    """A grid extent (integer TIR expression over scalar params) as a Python expression."""
    k = _type_key(e)
    r = lambda x: _py_expr(x, printer)  # noqa: E731
    if k == "ir.IntImm":
        return str(int(e.value))
    if k == "ir.Var":
        return py_name(e.name)
    ops = {"prim.Add": "+", "prim.Sub": "-", "prim.Mul": "*", "prim.FloorDiv": "//", "prim.FloorMod": "%",
           "prim.RShift": ">>", "prim.LShift": "<<", "prim.BitwiseAnd": "&", "prim.BitwiseOr": "|"}  # fmt: skip
    if k in ops:
        return f"({r(e.a)} {ops[k]} {r(e.b)})"
    if k == "prim.Div":
        return f"_truncdiv({r(e.a)}, {r(e.b)})"
    if k == "prim.Mod":
        return f"_truncmod({r(e.a)}, {r(e.b)})"
    if k in ("prim.Min", "prim.Max"):
        return f"{k[5:].lower()}({r(e.a)}, {r(e.b)})"
    if k == "prim.Cast":
        return r(e.value)
    if k == "prim.Select":
        return f"({r(e.true_value)} if {r(e.condition)} else {r(e.false_value)})"
    cmp = {"prim.LT": "<", "prim.LE": "<=", "prim.GT": ">", "prim.GE": ">=", "prim.EQ": "==", "prim.NE": "!="}
    if k in cmp:
        return f"({r(e.a)} {cmp[k]} {r(e.b)})"
    raise printer.err(f"cannot evaluate launch extent {e} on the host")


G = GLSLPrinter
_EXPR = {
    "ir.Var": G._var,
    "ir.IntImm": G._int,
    "ir.FloatImm": G._float,
    "prim.Add": G._binop("+"),
    "prim.Sub": G._binop("-"),
    "prim.Mul": G._binop("*"),
    "prim.Div": G._div,
    "prim.Mod": G._mod,
    "prim.FloorDiv": G._floordiv,
    "prim.FloorMod": G._floormod,
    "prim.Min": G._minmax("min", "&&"),
    "prim.Max": G._minmax("max", "||"),
    "prim.EQ": G._cmp("=="),
    "prim.NE": G._cmp("!="),
    "prim.LT": G._cmp("<"),
    "prim.LE": G._cmp("<="),
    "prim.GT": G._cmp(">"),
    "prim.GE": G._cmp(">="),
    "prim.And": G._logic("&&"),
    "prim.Or": G._logic("||"),
    "prim.Not": G._not,
    "prim.BitwiseAnd": G._bitwise("&", "&&"),
    "prim.BitwiseOr": G._bitwise("|", "||"),
    "prim.BitwiseXor": G._bitwise("^", "!="),
    "prim.BitwiseNot": G._bitnot,
    "prim.LShift": G._binop("<<"),
    "prim.RShift": G._binop(">>"),
    "prim.Select": G._select,
    "prim.Cast": G._cast,
    "prim.Ramp": G._ramp,
    "prim.Broadcast": G._broadcast,
    "prim.Shuffle": G._shuffle,
    "prim.Let": G._let,
    "ir.TensorLoad": G._load,
    "ir.Call": G._call,
}
_STMT = {
    "tirx.SeqStmt": G._seq,
    "tirx.DeclBuffer": G._decl_buffer,
    "tirx.AllocBuffer": G._alloc_buffer,
    "tirx.Bind": G._bind,
    "tirx.LetStmt": G._bind,
    "tirx.AttrStmt": G._attr,
    "tirx.For": G._for,
    "tirx.While": G._while,
    "tirx.IfThenElse": G._if,
    "tirx.BufferStore": G._store,
    "tirx.Evaluate": G._evaluate,
    "tirx.AssertStmt": G._assert,
    "tirx.Break": G._break,
    "tirx.Continue": G._continue,
    "tirx.Return": G._return,
}


def kernel_to_glsl(func, name: str, caps: VulkanCaps) -> GLSLKernel:
    """Print one lowered device PrimFunc as a GLSL compute shader."""
    return GLSLPrinter(func, name, caps).run()
