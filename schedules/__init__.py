"""Schedule rules per kernel kind.

Fixed contract with the pipeline: ``cpu_rules(target)`` returns an ordered list of dlight ``ScheduleRule``s for
an LLVM CPU target, applied after LegalizeOps/FuseOps/FuseTIR as ``dl.ApplyDefaultSchedule(*cpu_rules(t))``.
Each rule returns None for functions it does not match (and never raises), so the order is only a priority.
"""

from __future__ import annotations

from tvm.s_tir import dlight as dl
from tvm.target import Target

from .cpu.params import CPUParams


def cpu_rules(target: Target | dict | None = None, params: CPUParams | None = None) -> list[dl.ScheduleRule]:
    """Rules for an LLVM CPU target, most specific first.

    params: tile facts (vector width, cores, caches); derived from the target when None. The SoC room can pass
    a CPUParams built from its description (e.g. ``CPUParams.from_target(t, l2_bytes=..., num_cores=...)``).
    """
    from .cpu import DequantGEMM, DequantGEMV, Elementwise, RowReduction
    from .cpu.attention import PagedAttentionCPU

    if isinstance(target, dict):
        target = Target(target)
    if params is None and target is not None:
        params = CPUParams.from_target(target)
    return [
        DequantGEMV(params),
        DequantGEMM(params),
        PagedAttentionCPU(params),
        RowReduction(params),
        Elementwise(params),
        # generic fallback from dlight for matrix-vector shapes ours do not take. (dl.cpu.Reduction is left
        # out on purpose: on a single-row RMSNorm it parallelizes the elementwise loop around a reduction
        # into one shared scalar -- a data race; RowReduction covers those functions.)
        dl.cpu.GEMV(),
    ]


def cpu_passes(target: Target | dict | None = None) -> list:
    """Module passes to run right after ``ApplyDefaultSchedule(*cpu_rules(target))`` for an LLVM target.

    Today: `ParallelizeCPUAttention` -- parallel heads in the paged-KV-cache decode attention kernel, which TVM
    marks ``tirx.is_scheduled`` so no rule ever sees it (see schedules/cpu/attention.py)."""
    from .cpu.attention import ParallelizeCPUAttention

    return [ParallelizeCPUAttention()]


__all__ = ["CPUParams", "cpu_passes", "cpu_rules"]
