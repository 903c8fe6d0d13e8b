"""Compile a Relax module for an OpenCL target and keep what a launcher needs from the TIR.

The apache-tvm wheel has TVM's OpenCL *codegen* but no OpenCL *runtime*: the executable it builds
holds an "opencl" module with the kernels' source, and the host code that would launch them cannot
run here.  :func:`compile_opencl` runs ``tvm.compile`` unchanged while recording the lowered TIR at
the point where TVM splits host from device code (``tvm.tirx.build.split_host_device_mods``):

* each device kernel (a PrimFunc of the "opencl" module): its parameters in order, with their
  dtypes, its launch parameter tags and its ``thread_extent`` expressions;
* each host function (one per Relax-level PrimFunc): its packed-call parameters and, in order, the
  kernels it launches with the argument and launch-dimension expressions it passes them -- what
  TVM's OpenCL runtime would receive.

:class:`HostFunction` evaluates those expressions for given input arrays (shapes, byte offsets,
scalar arguments), so a launcher can replay a PrimFunc kernel by kernel (see launch.py).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from runtime_stubs.errors import LlamaAotError

from .source import local_memory_bytes, split_kernels


class OpenCLCaptureError(LlamaAotError):
    """The compiled module or its TIR is not what the launcher understands."""


# -- compile with capture ---------------------------------------------------------------------


@contextlib.contextmanager
def capture_split_modules():
    """Record ``(host_mod, {target: device_mod})`` of every ``tvm.tirx.build`` in the block."""
    build_module = importlib.import_module("tvm.tirx.build")  # the module, not the function
    original = build_module.split_host_device_mods
    records: list[tuple[Any, dict]] = []

    def recording(mod):
        host, devices = original(mod)
        records.append((host, devices))
        return host, devices

    build_module.split_host_device_mods = recording
    try:
        yield records
    finally:
        build_module.split_host_device_mods = original


@dataclass(frozen=True)
class KernelParam:
    name: str
    kind: str  # "buffer" | "scalar"
    dtype: str  # element dtype for a buffer, value dtype for a scalar


@dataclass
class Kernel:
    """One OpenCL kernel: what clSetKernelArg / clEnqueueNDRangeKernel need."""

    name: str
    params: list[KernelParam]
    launch_tags: list[str]  # e.g. ["blockIdx.x", "threadIdx.x"]; values come from the host call
    source: str  # this kernel's OpenCL C (TVM's per-kernel split)
    thread_extents: dict[str, Any] = field(default_factory=dict)  # tag -> PrimExpr over params
    max_threads: int = 0  # the target's max_num_threads (0: unknown)
    max_shared_memory: int = 0  # the target's max_shared_memory_per_block (0: unknown)

    @property
    def local_bytes(self) -> int:
        """Static __local memory the kernel declares."""
        return local_memory_bytes(self.source)

    @property
    def uses_dyn_shared_memory(self) -> bool:
        return any("dyn_shared" in t for t in self.launch_tags)

    def launch_dims(self, scalars: dict[str, Any]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
        """(grid, block) from the kernel's own thread extents, given its scalar parameter values."""
        env = _Env()
        env.values = {p.name: scalars[p.name] for p in self.params if p.kind == "scalar" and p.name in scalars}
        values = {}
        for tag, expr in self.thread_extents.items():
            values[tag] = int(env.eval(expr))
        return dims_from_tags(list(values), list(values.values()))


def dims_from_tags(tags: Sequence[str], values: Sequence[int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    grid, block = [1, 1, 1], [1, 1, 1]
    for tag, v in zip(tags, values):
        if tag.startswith("blockIdx."):
            grid["xyz".index(tag[-1])] = int(v)
        elif tag.startswith("threadIdx."):
            block["xyz".index(tag[-1])] = int(v)
        else:
            raise OpenCLCaptureError(f"launch parameter {tag!r} is not supported by the launcher")
    return tuple(grid), tuple(block)


@dataclass(frozen=True)
class HostParam:
    name: str
    index: int  # position in the packed call
    kind: str  # "tensor" | "int" | "float"


@dataclass
class KernelCall:
    kernel: str
    args: list[Any]  # PrimExprs in the host function, one per kernel parameter
    launch_args: list[Any]  # PrimExprs, one per launch tag
    launch_tags: list[str]


@dataclass
class HostFunction:
    """A lowered host PrimFunc that launches kernels: replayable with :meth:`resolve`."""

    name: str
    params: list[HostParam]
    calls: list[KernelCall]
    problem: str | None = None  # why the launcher cannot replay it (None: it can)
    _binds: dict = field(default_factory=dict, repr=False)
    _decls: dict = field(default_factory=dict, repr=False)

    def resolve(self, args: Sequence[Any]) -> list[tuple[KernelCall, list[Any], tuple, tuple]]:
        """For the packed-call arguments ``args`` (numpy arrays for tensors, numbers for scalars):
        per kernel call, ``(call, values, grid, block)`` where ``values`` has, per kernel parameter,
        ``TensorArg(i)`` (the i-th argument's data) or a Python number."""
        if self.problem:
            raise OpenCLCaptureError(f"host function {self.name}: {self.problem}")
        if len(args) != len(self.params):
            raise OpenCLCaptureError(
                f"{self.name} takes {len(self.params)} arguments "
                f"({', '.join(p.name for p in self.params)}), got {len(args)}"
            )
        env = _Env(args=list(args), binds=self._binds, decls=self._decls)
        out = []
        for call in self.calls:
            values = [env.eval(a) for a in call.args]
            values = [TensorArg(v.index) if isinstance(v, _Data) else v for v in values]
            launch = [int(env.eval(a)) for a in call.launch_args]
            grid, block = dims_from_tags(call.launch_tags, launch)
            out.append((call, values, grid, block))
        return out


@dataclass(frozen=True)
class TensorArg:
    index: int


@dataclass
class OpenCLBuild:
    """``tvm.compile``'s executable plus the kernels and host functions of its OpenCL module."""

    executable: Any
    source: str
    kernels: dict[str, Kernel]
    functions: dict[str, HostFunction]
    target: Any = None

    def kernel(self, name: str) -> Kernel:
        if name not in self.kernels:
            raise OpenCLCaptureError(f"no kernel {name!r}; have {sorted(self.kernels)}")
        return self.kernels[name]

    def function(self, name: str) -> HostFunction:
        if name not in self.functions:
            raise OpenCLCaptureError(f"no host function {name!r} launching kernels; have {sorted(self.functions)}")
        return self.functions[name]


def compile_opencl(mod, target, relax_pipeline=None) -> OpenCLBuild:
    """``tvm.compile(mod, target, relax_pipeline=...)`` with the launch information captured.

    ``target`` must be an OpenCL device target whose host can be compiled here (use the local llvm
    host, e.g. ``Target(soc.tvm_device_target("opencl") without "host", host={"kind": "llvm"})``:
    the device code does not depend on the host).
    """
    import tvm

    target = tvm.target.Target(target) if not isinstance(target, tvm.target.Target) else target
    if target.kind.name != "opencl":
        raise OpenCLCaptureError(f"target kind is {target.kind.name!r}, not 'opencl'")
    with capture_split_modules() as records:
        kwargs = {} if relax_pipeline is None else {"relax_pipeline": relax_pipeline}
        ex = tvm.compile(mod, target, **kwargs)
    return build_from_records(ex, records, target)


def find_opencl_modules(module) -> list:
    """Every module of kind "opencl" in ``module``'s import tree (an Executable or a runtime Module)."""
    root = getattr(module, "mod", module)
    out, stack = [], [root]
    while stack:
        m = stack.pop()
        if m.kind == "opencl":
            out.append(m)
        stack.extend(m.imports)
    return out


def build_from_records(ex, records, target=None) -> OpenCLBuild:
    mods = find_opencl_modules(ex)
    if not mods:
        raise OpenCLCaptureError("the executable imports no 'opencl' module (no GPU kernels?)")
    source = "\n".join(m.inspect_source() for m in mods)
    sources = split_kernels(source)
    kernels: dict[str, Kernel] = {}
    functions: dict[str, HostFunction] = {}
    for host_mod, device_mods in records:
        for dtarget, dmod in device_mods.items():
            if dtarget.kind.name != "opencl":
                continue
            for gv, f in dmod.functions.items():
                name = str(f.attrs.get("global_symbol", gv.name_hint)) if f.attrs else gv.name_hint
                if name not in sources:
                    raise OpenCLCaptureError(f"kernel {name} has no source in the opencl module")
                kernels[name] = _kernel_info(name, f, sources[name], dtarget)
        for gv, f in host_mod.functions.items():
            hf = _host_function(gv.name_hint, f)
            if hf is not None and hf.calls:
                functions[gv.name_hint] = hf
    missing = sorted(set(sources) - set(kernels))
    if missing:
        raise OpenCLCaptureError(f"no TIR captured for kernels {missing}")
    return OpenCLBuild(ex, source, kernels, functions, target)


# -- TIR walking ----------------------------------------------------------------------------


def _children(s):
    import tvm

    if type(s).__name__ == "SeqStmt":
        return list(s.seq)
    out = []
    for fld in ("body", "then_case", "else_case"):
        c = getattr(s, fld, None)
        if isinstance(c, tvm.tirx.Stmt):
            out.append(c)
    return out


def _walk(stmt, fn, ctx=()):
    """Call ``fn(stmt, ctx)`` on every statement; ``ctx``: the enclosing loops/conditionals."""
    fn(stmt, ctx)
    t = type(stmt).__name__
    inner = ctx + ((t,) if t in ("For", "IfThenElse", "While") else ())
    for c in _children(stmt):
        _walk(c, fn, inner)


def _dtype_of_var(v) -> tuple[str, str]:
    """(kind, dtype) of a kernel parameter Var: ("buffer", element dtype) or ("scalar", dtype)."""
    ty = v.ty
    if type(ty).__name__ == "PointerType":
        return "buffer", str(ty.element_type.dtype) if hasattr(ty.element_type, "dtype") else str(ty.element_type)
    return "scalar", str(ty.dtype) if hasattr(ty, "dtype") else str(ty)


def source_signature(name: str, source: str) -> list[tuple[str, str]]:
    """[(OpenCL type, parameter name)] of ``__kernel void name(...)`` in ``source``."""
    m = re.search(rf"__kernel\s+void\s+{re.escape(name)}\s*\(([^)]*)\)\s*{{", source)
    if m is None:
        raise OpenCLCaptureError(f"no definition of kernel {name} in its source")
    out = []
    for arg in filter(None, (a.strip() for a in m.group(1).split(","))):
        words = arg.replace("*", " * ").split()
        out.append((" ".join(w for w in words[:-1] if w not in ("restrict", "const", "__global", "global")), words[-1]))
    return out


def _kernel_info(name, f, source, dtarget) -> Kernel:
    signature = source_signature(name, source)
    if len(signature) != len(f.params):
        raise OpenCLCaptureError(f"{name}: {len(f.params)} TIR parameters but {len(signature)} in the OpenCL source")
    params = []
    for p, (_, src_name) in zip(f.params, signature):
        kind, dtype = _dtype_of_var(p)
        params.append(KernelParam(src_name, kind, dtype))  # the source's spelling (TIR's may hold dots)
    tags = [str(t) for t in (f.attrs.get("tirx.kernel_launch_params") or [])]
    extents = {}

    def visit(s, _ctx):
        if type(s).__name__ == "AttrStmt" and s.attr_key == "thread_extent":
            extents.setdefault(str(s.node.thread_tag), s.value)

    _walk(f.body, visit)
    attrs = dtarget.attrs if hasattr(dtarget, "attrs") else {}
    max_threads = int(attrs.get("max_num_threads", 0) or 0) if attrs else 0
    max_smem = int(attrs.get("max_shared_memory_per_block", 0) or 0) if attrs else 0
    return Kernel(name, params, tags, source, extents, max_threads, max_smem)


def _var_key(v) -> int:
    return hash(v)


def _host_function(name, f) -> HostFunction | None:
    binds, decls, calls = {}, {}, []
    params: dict[int, HostParam] = {}
    problems = []

    def visit(s, ctx):
        t = type(s).__name__
        if t in ("Bind", "LetStmt"):
            binds[_var_key(s.var)] = s.value
            idx, kind = _packed_arg(s.value, s.var)
            if idx is not None and kind is not None:
                nm = s.var.name
                if kind == "tensor" and nm.endswith(("_handle", ".handle")):
                    nm = nm[: -len("_handle")]
                if kind == "tensor" or idx not in params:
                    params[idx] = HostParam(nm, idx, kind)
        elif t == "DeclBuffer":
            data = getattr(s, "data", None)
            if data is not None:
                decls.setdefault(_buffer_key(s.buffer), []).append(data)
        elif t == "Evaluate":
            v = s.value
            if type(v).__name__ == "Call" and _op_is(v, "call_ffi_kernel"):
                if ctx:
                    problems.append(f"kernel launch inside {'/'.join(ctx)}")
                kname = str(v.args[0].value)
                tags = [str(x) for x in getattr(v.attrs, "launch_params", None) or []]
                rest = list(v.args[1:])
                n_launch = len(tags)
                calls.append(KernelCall(kname, rest[: len(rest) - n_launch], rest[len(rest) - n_launch :], tags))
            elif type(v).__name__ == "Call" and "AllocWorkspace" in str(v):
                problems.append("host workspace allocation")
        elif t in ("Allocate", "AllocBuffer"):
            problems.append("host-side allocation")

    _walk(f.body, visit)
    if not calls:
        return None
    if sorted(params) != list(range(len(params))):
        problems.append(f"could not identify every packed argument (found {sorted(params)})")
    problem = f"{'; '.join(problems)}: not supported by the launcher" if problems else None
    return HostFunction(name, [params[i] for i in sorted(params)], calls, problem, binds, decls)


def _buffer_key(buf) -> int:
    data = buf.data
    if _op_is(data, "buffer_data"):
        return _var_key(data.args[0])
    return _var_key(data)


def _packed_arg(value, var):
    """(index, kind) when ``value`` reads packed argument ``index`` (tvm_struct_get(args, i, 15, ..))."""
    found = []

    def scan(e):
        if type(e).__name__ == "Call":
            if _op_is(e, "tvm_struct_get") and _is_args(e.args[0]) and int(e.args[2]) == 15:
                found.append((int(e.args[1]), e))
            for a in e.args:
                scan(a)
        for fld in ("a", "b", "value", "condition", "true_value", "false_value"):
            c = getattr(e, fld, None) if type(e).__name__ not in ("IntImm", "FloatImm", "StringImm", "Var") else None
            if c is not None and not isinstance(c, (int, float, str)):
                scan(c)

    scan(value)
    if not found:
        return None, None
    idx = found[0][0]
    vdt = _expr_dtype(var)
    if vdt == "handle":
        return idx, "tensor"
    if vdt.startswith("float"):
        return idx, "float"
    return idx, "int"


def _op_is(e, name: str) -> bool:
    """``e`` is a Call of the builtin ``name`` (registered as tirx.NAME or prim.NAME)."""
    return type(e).__name__ == "Call" and str(getattr(e.op, "name", "")).split(".")[-1] == name


def _is_args(e) -> bool:
    return type(e).__name__ == "Var" and e.name == "args"


def _expr_dtype(e) -> str:
    ty = e.ty
    if type(ty).__name__ == "PointerType":
        return "handle"
    return str(getattr(ty, "dtype", ty))


# -- host expression evaluation ---------------------------------------------------------------


@dataclass(frozen=True)
class _Args:
    pass


@dataclass(frozen=True)
class _Arr:
    index: int


@dataclass(frozen=True)
class _Shape:
    index: int


@dataclass(frozen=True)
class _Data:
    index: int


_TYPE_INDEX_TENSOR = 70  # what the lowered host code tests for an ffi.Tensor argument
_TYPE_INDEX_INT, _TYPE_INDEX_FLOAT = 1, 3


class _Env:
    """Evaluates the integer/float expressions of a lowered host function (no memory access)."""

    def __init__(self, args=None, binds=None, decls=None):
        self.args = args or []
        self.binds = binds or {}
        self.decls = decls or {}
        self.values: dict[str, Any] = {}
        self.memo: dict[int, Any] = {}

    def eval(self, e):  # noqa: C901 - one dispatch over node kinds
        t = type(e).__name__
        if t == "IntImm":
            return int(e.value)
        if t == "FloatImm":
            return float(e.value)
        if t == "StringImm":
            return str(e.value)
        if t == "Var":
            return self._var(e)
        if t in ("Add", "Sub", "Mul", "Div", "Mod", "FloorDiv", "FloorMod", "Min", "Max", "EQ", "NE", "EqualOp",
                 "NotEqualOp", "LT", "LE", "GT", "GE", "And", "Or", "RShift", "LShift", "BitwiseAnd", "BitwiseOr",
                 "BitwiseXor"):  # fmt: skip
            return _binary(t, self.eval(e.a), self.eval(e.b), _expr_dtype(e))
        if t == "Not":
            return not self.eval(e.a)
        if t == "Select":
            return self.eval(e.true_value) if self.eval(e.condition) else self.eval(e.false_value)
        if t == "Cast":
            return _cast(self.eval(e.value), _expr_dtype(e))
        if t == "Let":
            self.memo[_var_key(e.var)] = self.eval(e.value)
            return self.eval(e.body)
        if t == "Call":
            return self._call(e)
        raise OpenCLCaptureError(f"cannot evaluate host expression {t}: {e}")

    def _var(self, v):
        if v.name in self.values:
            return self.values[v.name]
        k = _var_key(v)
        if k in self.memo:
            return self.memo[k]
        if k in self.binds:
            self.memo[k] = r = self.eval(self.binds[k])
            return r
        if v.name == "args":
            return _Args()
        raise OpenCLCaptureError(f"unbound variable {v.name} in a kernel launch")

    def _call(self, e):
        op = "tirx." + str(getattr(e.op, "name", e.op)).split(".")[-1]  # "tirx.x" or "prim.x" by version
        a = e.args
        if op == "tirx.tvm_struct_get":
            return self._struct_get(self.eval(a[0]), int(a[1]), int(a[2]), _expr_dtype(e))
        if op == "tirx.if_then_else":
            return self.eval(a[1]) if self.eval(a[0]) else self.eval(a[2])
        if op in ("tirx.handle_add_byte_offset", "tirx.reinterpret", "tirx.likely"):
            return self.eval(a[-1] if op == "tirx.reinterpret" else a[0])
        if op == "tirx.buffer_data":
            k = _var_key(a[0])
            for data in reversed(self.decls.get(k, [])):
                if type(data).__name__ == "Call" and _op_is(data, "buffer_data") and _var_key(data.args[0]) == k:
                    continue  # a re-declaration of the same buffer
                return self.eval(data)
            raise OpenCLCaptureError(f"cannot find the data of buffer {a[0].name}")
        if op == "tirx.isnullptr":
            return self.eval(a[0]) is None
        if op in ("tirx.shift_right", "tirx.shift_left", "tirx.bitwise_and", "tirx.bitwise_or", "tirx.bitwise_xor"):
            name = {"tirx.shift_right": "RShift", "tirx.shift_left": "LShift", "tirx.bitwise_and": "BitwiseAnd",
                    "tirx.bitwise_or": "BitwiseOr", "tirx.bitwise_xor": "BitwiseXor"}[op]  # fmt: skip
            return _binary(name, self.eval(a[0]), self.eval(a[1]), _expr_dtype(e))
        raise OpenCLCaptureError(f"cannot evaluate host call {op}")

    def _struct_get(self, obj, index, kind, dtype):
        if isinstance(obj, _Args):
            if index >= len(self.args):
                raise OpenCLCaptureError(f"argument {index} missing")
            arg = self.args[index]
            if kind == 13:  # type index of the packed argument
                if isinstance(arg, np.ndarray):
                    return _TYPE_INDEX_TENSOR
                return _TYPE_INDEX_FLOAT if isinstance(arg, (float, np.floating)) else _TYPE_INDEX_INT
            if kind == 15:
                if dtype == "handle":
                    if not isinstance(arg, np.ndarray):
                        raise OpenCLCaptureError(f"argument {index} must be an array")
                    return _Arr(index)
                if isinstance(arg, np.ndarray):
                    raise OpenCLCaptureError(f"argument {index} must be a number")
                return float(arg) if dtype.startswith("float") else int(arg)
            raise OpenCLCaptureError(f"unknown packed-argument field {kind}")
        if isinstance(obj, _Arr):
            arr = self.args[obj.index]
            if kind == 1:
                return _Data(obj.index)
            if kind == 2:
                return _Shape(obj.index)
            if kind == 3:
                return None  # strides: compact arrays only
            if kind == 4:
                return arr.ndim
            if kind == 8:
                return 0  # byte_offset
            if kind in (9, 10):
                return 0 if kind == 9 else 4
            raise OpenCLCaptureError(f"unknown DLTensor field {kind}")
        if isinstance(obj, _Shape):
            return int(self.args[obj.index].shape[index])
        if obj is None:
            raise OpenCLCaptureError("strided arrays are not supported")
        raise OpenCLCaptureError(f"tvm_struct_get on {obj!r}")


def _wrap(v: int, dtype: str) -> int:
    if dtype in ("bool",):
        return int(bool(v))
    if dtype.startswith(("int", "uint")):
        bits = int(dtype.lstrip("uint") or 64)
        v &= (1 << bits) - 1
        if dtype.startswith("int") and v >= 1 << (bits - 1):
            v -= 1 << bits
    return v


def _cast(v, dtype: str):
    if dtype.startswith("float"):
        return float(v)
    if dtype == "bool":
        return bool(v)
    if isinstance(v, float):
        v = math.trunc(v)
    return _wrap(int(v), dtype)


def _binary(t, a, b, dtype):
    if t in ("EQ", "EqualOp"):
        return a == b
    if t in ("NE", "NotEqualOp"):
        return a != b
    if t == "LT":
        return a < b
    if t == "LE":
        return a <= b
    if t == "GT":
        return a > b
    if t == "GE":
        return a >= b
    if t == "And":
        return bool(a) and bool(b)
    if t == "Or":
        return bool(a) or bool(b)
    isfloat = dtype.startswith("float") or isinstance(a, float) or isinstance(b, float)
    if t == "Add":
        r = a + b
    elif t == "Sub":
        r = a - b
    elif t == "Mul":
        r = a * b
    elif t == "Div":
        r = a / b if isfloat else int(a / b) if (a < 0) != (b < 0) else a // b
    elif t == "Mod":
        r = math.fmod(a, b) if isfloat else a - b * (int(a / b) if (a < 0) != (b < 0) else a // b)
    elif t == "FloorDiv":
        r = math.floor(a / b) if isfloat else a // b
    elif t == "FloorMod":
        r = a - math.floor(a / b) * b if isfloat else a % b
    elif t == "Min":
        r = min(a, b)
    elif t == "Max":
        r = max(a, b)
    elif t == "RShift":
        r = a >> b
    elif t == "LShift":
        r = a << b
    elif t == "BitwiseAnd":
        r = a & b
    elif t == "BitwiseOr":
        r = a | b
    elif t == "BitwiseXor":
        r = a ^ b
    else:  # pragma: no cover
        raise OpenCLCaptureError(f"unknown operator {t}")
    return float(r) if isfloat else _wrap(int(r), dtype)
