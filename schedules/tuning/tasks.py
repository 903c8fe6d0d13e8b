"""The distinct kernels of a model for a target: what ``llama-aot tune`` tunes and compile looks records up by.

Why extract from the real module: a kernel's key must be what compile sees. The Relax module is built exactly as
``compiler/compile.py`` builds it (same spec, schemes, dtype, int8 choice) and run through our pipeline up to
FuseTIR + DCE (the state ``ApplyDefaultSchedule`` gets). Each PrimFunc there is one candidate task:

* rule-scheduled kernels (f32 dequant GEMV/GEMM, norms, elementwise, ...): the first rule of
  ``schedules.cpu_rules`` that takes it names it; key ``<Rule>/<structural hash, 16 hex>`` (the hash of the
  unscheduled function, which ``CPURule.apply`` computes the same way at compile time);
* hand-written kernels created in the model (int8 GEMV/GEMM, ``tirx.is_scheduled``): they carry their key as
  the ``llama_aot.tuning`` attribute (schedules/tuning/apply.py), e.g. ``int8_gemv/q4f16/planar/N2048/K2048``;
* other scheduled kernels (KV-cache attention) are listed but have no knob space.

Functions are deduplicated by structural hash; calls are counted per Relax function (decode, prefill) at the
``call_tir`` sites. ``weight`` = decode calls x estimated time at one row + prefill calls x estimated time at one
prefill chunk, i.e. the roofline-estimated seconds this kernel costs per decode step plus per prefill chunk:
the order in which tasks are tuned and how trials are shared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .keys import TUNING_ATTR, rule_key

TUNABLE_RULES = {"DequantGEMV": "dequant_gemv", "DequantGEMM": "dequant_gemm"}
PHASES = ("decode", "prefill")
_BATCH_VAR_NAMES = ("b", "batch", "batch_size")


@dataclass
class Task:
    key: str
    kind: str  # dequant_gemv | dequant_gemm | int8_gemv | int8_gemm | untuned:<what>
    func: object  # tirx.PrimFunc as ApplyDefaultSchedule gets it (hand-written ones: as created)
    names: list[str]
    rule: str | None = None
    meta: dict = field(default_factory=dict)  # int8: scheme, n, k, x_shape; matmuls: n, k
    calls: dict = field(default_factory=lambda: {p: 0 for p in PHASES})
    est_us: dict = field(default_factory=dict)  # phase -> roofline estimate of one call
    weight_us: float = 0.0

    @property
    def tunable(self) -> bool:
        return not self.kind.startswith("untuned")

    @property
    def rows(self) -> int:
        """Activation rows the kernel is measured with: 1 (GEMV) or the prefill chunk (GEMM)."""
        return int(self.meta.get("rows", 1))

    @property
    def label(self) -> str:
        m = self.meta
        if "n" in m and "k" in m:
            return f"{self.kind} N{m['n']} K{m['k']} rows {m.get('rows', 1)} ({self.names[0]})"
        return f"{self.kind} ({self.names[0]})"

    def summary(self) -> dict:
        return {
            "key": self.key, "kind": self.kind, "label": self.label, "names": self.names, "calls": dict(self.calls),
            "est_us": {k: round(v, 2) for k, v in self.est_us.items()}, "weight_us": round(self.weight_us, 2),
        }


def build_module(model_dir, options, tt):
    """(IRModule before ApplySchedules, info) for the model as compile builds it."""
    import numpy as np
    import tvm

    from compiler.compile import _int8_activations
    from compiler.frontend import load_spec
    from compiler.model.llama import LlamaForCausalLM
    from compiler.pipeline import pass_list
    from compiler.quantization import get_scheme
    from compiler.quantization.assignment import SchemeAssignment

    spec = load_spec(model_dir)
    scheme = get_scheme(options.quant)
    head_scheme = get_scheme("q0f16") if options.keep_embedding_precision else scheme
    dtype = tt.build.activation_dtype(scheme.name)
    int8 = _int8_activations(options, [scheme.name], tt.target, dtype)
    model = LlamaForCausalLM(spec, SchemeAssignment.uniform(scheme, head_scheme), dtype, tt.target, int8_activations=int8)
    mod, named_params = model.export_tvm(spec=model.export_spec())
    weight_bytes = sum(int(np.prod([int(d) for d in p.shape])) * np.dtype(p.dtype).itemsize for _, p in named_params)
    try:  # the pipeline's passes with this build's CPU params (as compile passes them)
        passes = pass_list(tt.target, tt.params)
    except TypeError:
        passes = pass_list(tt.target)
    upto = [n for n, _ in passes].index("ApplySchedules")
    with tt.target, tvm.transform.PassContext(opt_level=3):
        mod = tvm.transform.Sequential([p for _, p in passes[:upto]])(mod)
    return mod, {"spec": spec, "scheme": scheme, "int8_activations": int8, "dtype": dtype, "weight_bytes": weight_bytes}


def extract_tasks(model_dir, options, tt) -> tuple[list[Task], dict]:
    """(distinct kernels, heaviest first; the model info of build_module)."""
    from .apply import suspended

    with suspended():
        mod, info = build_module(model_dir, options, tt)
        return _tasks_of(mod, info, options, tt), info


def _tasks_of(mod, info, options, tt) -> list[Task]:
    import tvm_ffi
    from tvm import tirx

    from schedules import cpu_rules

    calls = count_calls(mod)
    rules = cpu_rules(tt.target, tt.params)
    scheme = info["scheme"]
    by_hash: dict[int, Task] = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        name = gv.name_hint
        h = tvm_ffi.structural_hash(func)
        task = by_hash.get(h)
        if task is None:
            task = _classify(name, func, rules, tt)
            by_hash[h] = task
        else:
            task.names.append(name)
        for phase in PHASES:
            task.calls[phase] += calls.get(phase, {}).get(name, 0)
    tasks = list(by_hash.values())
    chunk = int(options.prefill_chunk)
    for task in tasks:
        for phase in PHASES:  # a GEMV has one static row in both phases (the lm_head in prefill: the last one)
            rows = 1 if phase == "decode" or task.kind in ("dequant_gemv", "int8_gemv") else chunk
            task.est_us[phase] = estimate_us(task, rows, tt)
        task.weight_us = sum(task.calls[p] * task.est_us[p] for p in PHASES)
        if task.kind in ("dequant_gemm", "int8_gemm"):
            task.meta["rows"] = chunk
        if task.kind == "dequant_gemm" and "k" in task.meta and _packed_q4(task.func):
            planar = str(getattr(scheme, "nibble_order", lambda k: "")(task.meta["k"])) == "planar"
            task.meta["granule"] = 128 if planar else 8
    tasks.sort(key=lambda t: (-t.weight_us, t.key))
    return tasks


def _classify(name, func, rules, tt) -> Task:
    attrs = func.attrs if func.attrs is not None else {}
    if TUNING_ATTR in attrs:
        meta = json.loads(str(attrs[TUNING_ATTR]))
        return Task(key=meta["key"], kind=meta["kind"], func=func, names=[name], meta=meta)
    if "tirx.is_scheduled" in attrs and int(attrs["tirx.is_scheduled"]) == 1:
        return Task(key=f"scheduled/{name}", kind="untuned:hand-scheduled", func=func, names=[name])
    for rule in rules:
        try:
            sch = rule.apply(func, tt.target, False)
        except Exception:  # pylint: disable=broad-except
            sch = None
        if sch is None:
            continue
        rname = type(rule).__name__
        kind = TUNABLE_RULES.get(rname, f"untuned:{rname}")
        meta = matmul_meta(func) if kind in TUNABLE_RULES.values() else {}
        return Task(key=rule_key(rname, func), kind=kind, func=func, names=[name], rule=rname, meta=meta)
    return Task(key=f"unscheduled/{name}", kind="untuned:no-rule", func=func, names=[name])


def _packed_q4(func) -> bool:
    try:
        return any(dtype == "uint32" for _, dtype in io_buffers(func, 1))
    except ValueError:
        return False


def matmul_meta(func) -> dict:
    from tvm import s_tir

    from schedules.cpu.analysis import analyze_matmul

    try:
        pat = analyze_matmul(s_tir.Schedule(func))
    except Exception:  # pylint: disable=broad-except
        pat = None
    if pat is None:
        return {}
    return {"n": int(pat.n_extent), "k": int(pat.k_extent), "epilogues": len(pat.epilogues)}


def count_calls(mod) -> dict[str, dict[str, int]]:
    """phase (Relax function name) -> PrimFunc name -> call_tir sites."""
    import tvm
    from tvm import relax

    ops = {tvm.ir.Op.get(n) for n in ("relax.call_tir", "relax.call_tir_inplace")}
    out: dict[str, dict[str, int]] = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, relax.Function):
            continue
        counts: dict[str, int] = {}

        def visit(expr, counts=counts):
            if isinstance(expr, relax.Call) and expr.op in ops and isinstance(expr.args[0], tvm.ir.GlobalVar):
                n = expr.args[0].name_hint
                counts[n] = counts.get(n, 0) + 1

        relax.analysis.post_order_visit(func.body, visit)
        out[gv.name_hint] = counts
    return out


def concrete_shape(shape, rows: int) -> tuple[int, ...]:
    """A buffer shape with its symbolic dims bound: batch-like vars to 1, every other var to ``rows``."""
    out = []
    for d in shape:
        if type(d).__name__ == "IntImm":
            out.append(int(d.value))
        elif type(d).__name__ == "Var":
            out.append(1 if d.name in _BATCH_VAR_NAMES else rows)
        else:  # an expression of vars (e.g. b * s): rows
            out.append(rows)
    return tuple(out)


def io_buffers(func, rows: int) -> list[tuple[tuple[int, ...], str]]:
    """(shape, dtype) of every parameter buffer, in argument order, symbolic dims bound."""
    out = []
    for p in func.params:
        ty = getattr(p, "ty", None)  # TVM 0.27: a buffer parameter is a Var of BufferType
        if type(ty).__name__ != "BufferType":
            raise ValueError(f"parameter {p.name} is not a buffer")
        out.append((concrete_shape(ty.shape, rows), str(ty.dtype)))
    return out


def bytes_and_flops(func, rows: int) -> tuple[float, float]:
    """Bytes of every parameter buffer (each read or written once) and 2 x multiply-adds of its reduction blocks
    (elements of the others)."""
    import numpy as np
    import tvm_ffi

    try:
        bufs = io_buffers(func, rows)
    except ValueError:
        return 0.0, 0.0
    nbytes = float(sum(int(np.prod(s)) * _itemsize(d) for s, d in bufs))
    flops = [0.0]

    def visit(node):
        if type(node).__name__ != "SBlock":
            return
        ext = 1.0
        reduce = False
        for iv in node.iter_vars:
            e = iv.dom.extent
            if type(e).__name__ == "IntImm":
                ext *= int(e.value)
            else:
                ext *= rows
            reduce = reduce or int(iv.iter_type) != 0
        flops[0] += 2 * ext if reduce else ext

    tvm_ffi.structural_walk(func.body, visit)
    return nbytes, flops[0]


def _itemsize(dtype: str) -> int:
    from tvm import DataType

    return max(1, DataType(dtype).bits * DataType(dtype).lanes // 8)


def estimate_us(task, rows: int, tt) -> float:
    """Roofline time of one call: max(bytes / bandwidth, flops / FMA peak), in microseconds. Matmuls count
    2 N K rows flops (hand-written kernels have opaque blocks the walk cannot size)."""
    nbytes, flops = bytes_and_flops(task.func, rows)
    if "n" in task.meta and "k" in task.meta:
        flops = 2.0 * task.meta["n"] * task.meta["k"] * rows
    return 1e6 * max(nbytes / tt.bandwidth_bytes_s, flops / tt.peak_flops)
