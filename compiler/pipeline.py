"""Our Relax -> TIR -> VM pipeline: which passes run, in what order, and why.

``tvm.compile(mod, target, relax_pipeline=build_pipeline(target))`` runs it; after it
``tvm.compile`` only lowers TIR to machine code.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import dlight as dl


def _schedule_rules(target: tvm.target.Target, params=None) -> list:
    """Schedule rules for the target's kernels, most specific first."""
    if target.kind.name == "llvm":
        from schedules import cpu_rules

        from schedules.cpu.params import CPUParams

        return cpu_rules(target, params or CPUParams.for_build(target))
    return [
        dl.gpu.Matmul(),
        dl.gpu.GEMV(),
        dl.gpu.Reduction(),
        dl.gpu.GeneralReduction(),
        dl.gpu.Fallback(),
    ]


def _post_schedule_passes(target: tvm.target.Target) -> list[tuple[str, tvm.transform.Pass]]:
    if target.kind.name != "llvm":
        return []
    from schedules import cpu_passes

    return [(type(p).__name__, p) for p in cpu_passes(target)]


def pass_list(target: tvm.target.Target, params=None) -> list[tuple[str, tvm.transform.Pass]]:
    """The ordered passes, each with the one-line reason it is there. ``params``: the CPU schedule
    parameters (schedules/cpu/params.py), derived from the host's facts when None."""
    from schedules.report import ApplySchedules

    gpu = target.kind.name != "llvm"
    return [
        ("DispatchSampling", relax.backend.DispatchSampling()),  # lower sampling ops to TIR kernels
        ("LegalizeOps", relax.transform.LegalizeOps()),  # every high-level op -> a TIR PrimFunc
        ("AnnotateTIROpPattern", relax.transform.AnnotateTIROpPattern()),  # tag kernels (elemwise/reduce/...) for fusion
        ("FoldConstant", relax.transform.FoldConstant()),  # evaluate shape-only/constant subgraphs at compile time
        ("FuseOps", relax.transform.FuseOps()),  # group epilogues (residual add, casts) with their producer
        ("FuseTIR", relax.transform.FuseTIR()),  # one PrimFunc per group: no intermediate tensors in memory
        ("DeadCodeElimination", relax.transform.DeadCodeElimination()),  # drop unused PrimFuncs before scheduling
        ("ApplySchedules", ApplySchedules(*_schedule_rules(target, params))),  # our per-target schedules, reported
        *_post_schedule_passes(target),  # kernels TVM marks as scheduled (KV-cache attention) get ours too
        *(
            # phone GPUs lack (fast) 64-bit integers; symbolic shapes arrive as int64 indices
            [("ForceNarrowIndexToInt32", tvm.tirx.transform.ForceNarrowIndexToInt32())]
            if gpu
            else []
        ),
        ("RewriteDataflowReshape", relax.transform.RewriteDataflowReshape()),  # reshapes become free views
        ("ToNonDataflow", relax.transform.ToNonDataflow()),
        ("RemovePurityChecking", relax.transform.RemovePurityChecking()),
        ("CallTIRRewrite", relax.transform.CallTIRRewrite()),  # explicit output allocation
        ("StaticPlanBlockMemory", relax.transform.StaticPlanBlockMemory()),  # reuse activation buffers
        ("LowerAllocTensor", relax.transform.LowerAllocTensor()),
        ("KillAfterLastUse", relax.transform.KillAfterLastUse()),  # free tensors as early as possible
        ("LowerRuntimeBuiltin", relax.transform.LowerRuntimeBuiltin()),
        ("ComputePrimValue", relax.transform.ComputePrimValue()),
        ("VMShapeLower", relax.transform.VMShapeLower()),  # symbolic shapes -> VM shape heap
        ("CanonicalShapeFuncs", canonical_shape_funcs),  # same model -> same bytes (see its docstring)
        ("AttachGlobalSymbol", relax.transform.AttachGlobalSymbol()),
    ]


@tvm.transform.module_pass(opt_level=0, name="CanonicalShapeFuncs")
def canonical_shape_funcs(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
    """Sort the stores of each VM shape function by shape-heap slot.

    VMShapeLower emits the stores of one shape function in the iteration order of a hash map keyed by
    expressions whose hashes follow their addresses, so two compiles of the same model could write
    them in a different order (same values, different bytes in lib/model.so).  The stores of one
    shape function are independent (each reads only slots that the shape matching filled), so
    sorting them by slot changes nothing but the order."""
    for gv, func in list(mod.functions.items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or not isinstance(func.body, tvm.tirx.SeqStmt):
            continue
        stores = list(func.body.seq)
        if len(stores) < 2 or not all(isinstance(st, tvm.tirx.BufferStore) for st in stores):
            continue
        if not all(st.buffer.same_as(stores[0].buffer) for st in stores) or len(func.params) != 1:
            continue  # a shape function writes one buffer: its only parameter, the shape heap
        if not all(len(st.indices) == 1 and isinstance(st.indices[0], tvm.tirx.IntImm) for st in stores):
            continue
        ordered = sorted(stores, key=lambda st: int(st.indices[0].value))
        mod[gv] = func.with_body(tvm.tirx.SeqStmt(ordered))
    return mod


def build_pipeline(target: tvm.target.Target, params=None) -> tvm.transform.Pass:
    passes = [p for _, p in pass_list(target, params)]

    @tvm.transform.module_pass(opt_level=0, name="LlamaAotPipeline")
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
