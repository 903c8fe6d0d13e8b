"""Injective functions (SwiGLU, residual add, casts, embedding gather with fused dequant, RoPE-free copies):
inline every intermediate, then per remaining block: vectorize the innermost loop by the SIMD width and run
the fused outer loops in parallel when the function is big enough to pay for waking the thread pool.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.target import Target

from .analysis import dtype_bits, loop_extent, pow2_divisor_at_most
from .base import CPURule, mark
from .params import CPUParams
from .rewrite import exact_nibbles_func

# Below this many output elements a parallel launch costs more than it saves (decode-sized vectors).
PARALLEL_MIN_ELEMS = 1 << 14


def _block_out_bits(sch: s_tir.Schedule, block) -> int:
    stmt = sch.get(block)
    if stmt.writes:
        return max(8, dtype_bits(stmt.writes[0].source.dtype))
    return 32


def schedule_injective_block(
    sch: s_tir.Schedule,
    block,
    params: CPUParams,
    parallel: bool | None = None,
    vector_lanes: int | None = None,
) -> None:
    """Vectorize the innermost loop (static extent, by the largest power of two dividing it, up to the SIMD
    lanes of the output dtype) and parallelize the fusion of all outer loops."""
    loops = sch.get_loops(block)
    if not loops:
        return
    lanes = vector_lanes or params.lanes(_block_out_bits(sch, block))
    inner = loops[-1]
    ext = loop_extent(sch, inner)
    vec = None
    outer = list(loops[:-1])
    if isinstance(ext, int):
        v = pow2_divisor_at_most(ext, lanes)
        if v >= 2:
            if v == ext:
                vec = inner
            else:
                io, vec = sch.split(inner, [None, v])
                outer.append(io)
        else:
            outer.append(inner)
    else:
        outer.append(inner)
    total = 1
    symbolic = False
    for lp in sch.get_loops(block):
        e = loop_extent(sch, lp)
        if isinstance(e, int):
            total *= e
        else:
            symbolic = True
    if parallel is None:
        parallel = params.num_cores > 1 and (symbolic or total >= PARALLEL_MIN_ELEMS)
    if outer:
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if parallel:
            sch.parallel(fused)
    if vec is not None:
        sch.vectorize(vec)


class Elementwise(CPURule):
    """Every block injective: inline what can be inlined, schedule what remains."""

    def schedule(self, func: tirx.PrimFunc, target: Target, params: CPUParams):
        if params.exact_nibble_trick():
            func = exact_nibbles_func(func)
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        if not all(info.is_injective() for info in infos):
            return None
        remaining = try_inline_contiguous_spatial(sch, infos)
        if not remaining:
            return None
        for info in remaining:
            schedule_injective_block(sch, info.block_rv, params)
            mark(sch, info.block_rv, "cpu.Elementwise")
        return sch
