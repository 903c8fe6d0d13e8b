"""Row reductions followed by elementwise work (RMSNorm, mean/variance norms, softmax-like chains).

    parallel for row in rows:                   # fused leading spatial axes (S in prefill)
        partial[L] = 0
        for k_o in H / L: partial[:] += f(x[row, k_o*L : +L])      # vectorized reduction (rfactor)
        r = sum(partial)
        out[row, :] = g(x[row, :], r)                                # vectorized elementwise

Every block must start with the same leading spatial axes; reductions have one trailing reduction axis
with a static extent. Anything else is left to the next rule (dlight's cpu.Reduction).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.target import Target

from .analysis import dtype_bits, loop_extent, pow2_divisor_at_most
from .base import CPURule, mark
from .elementwise import PARALLEL_MIN_ELEMS
from .params import CPUParams


def _leading_s(kinds: str) -> int:
    return len(kinds) - len(kinds.lstrip("S"))


class RowReduction(CPURule):
    """RMSNorm / softmax-like: S..SR reduction blocks (and injective blocks) over the same rows, the last block
    injective or itself such a reduction. Reductions with a static extent are vectorized (rfactor); with a
    symbolic extent they stay serial inside the parallel row loop."""

    def schedule(self, func: tirx.PrimFunc, target: Target, params: CPUParams):
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or len(infos) < 2:
            return None
        if all(info.is_injective() for info in infos):
            return None
        infos = try_inline_contiguous_spatial(sch, infos)
        if not infos:
            return None
        # re-derive infos after inlining (block RVs stay valid)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        last_is_red = not infos[-1].is_injective()
        if not last_is_red and all(_single_row(info) for info in infos if not info.is_injective()):
            return _schedule_flat(sch, infos, params)
        nrow = None
        for info in infos:
            kinds = info.dom_kind()
            if not kinds or kinds[0] != "S":
                return None
            if not info.is_injective():
                if kinds.count("R") != 1 or not kinds.endswith("R") or any(c not in "SR" for c in kinds):
                    return None
                n = len(kinds) - 1
            else:
                n = _leading_s(kinds)
            nrow = n if nrow is None else min(nrow, n)
        reds = [info for info in infos if not info.is_injective()]
        if not nrow or any(len(info.dom_kind()) - 1 != nrow for info in reds):
            return None
        # row extents must agree between the last block and the reductions
        last = infos[-1]
        for info in reds:
            for a, b in zip(info.iters[:nrow], last.iters[:nrow]):
                if str(a.dom) != str(b.dom):
                    return None

        if last_is_red and len(last.dom_kind()) - 1 != nrow:
            return None
        last_bits = max(8, dtype_bits(sch.get(last.block_rv).writes[0].source.dtype))
        row_elems = 1
        symbolic_rows = False
        for it in last.iters[:nrow]:
            if isinstance(it.dom, int):
                row_elems *= it.dom
            else:
                symbolic_rows = True
        total = row_elems
        for it in last.iters[nrow:]:
            total *= it.dom if isinstance(it.dom, int) else 1

        # 1. vectorize each reduction with rfactor (before compute_at: rfactor wants its own loop nest)
        chain = []  # blocks in topological order, rfactor blocks inserted before their reductions
        for info in infos[:-1]:
            if info.is_injective():
                chain.append(info.block_rv)
                continue
            r_loop = sch.get_loops(info.block_rv)[-1]
            r_ext = loop_extent(sch, r_loop)
            bits = dtype_bits(sch.get(info.block_rv).writes[0].source.dtype)
            lanes = pow2_divisor_at_most(r_ext, params.lanes(max(8, bits))) if isinstance(r_ext, int) else 1
            if lanes >= 2 and r_ext > lanes:
                _, r_v = sch.split(r_loop, [None, lanes])
                out_ndim = len(sch.get(info.block_rv).writes[0].source.shape)
                rf = sch.rfactor(r_v, out_ndim)  # lanes last: contiguous partial sums
                chain.append(rf)
            chain.append(info.block_rv)

        # 2. rows of the last block: fused, parallel when worth it
        loops = sch.get_loops(last.block_rv)
        row = sch.fuse(*loops[:nrow]) if nrow > 1 else loops[0]
        if params.num_cores > 1 and (symbolic_rows or (row_elems > 1 and total >= PARALLEL_MIN_ELEMS)):
            sch.parallel(row)
        if not last_is_red:
            _vectorize_inner(sch, last.block_rv, params.lanes(last_bits))

        # 3. everything else under the row loop
        for blk in reversed(chain):
            sch.compute_at(blk, row, preserve_unit_loops=True)

        # 4. inner loops: vectorize injective and rfactor blocks, keep the final horizontal sums scalar
        for blk in chain:
            stmt = sch.get(blk)
            inner = sch.get_loops(blk)
            if len(inner) <= 1:
                continue
            is_red = any(iv.iter_type != 0 for iv in stmt.iter_vars)
            bits = max(8, dtype_bits(stmt.writes[0].source.dtype))
            if not is_red:
                _vectorize_inner(sch, blk, params.lanes(bits))
            elif stmt.name_hint.endswith("_rf"):
                _vectorize_rf(sch, blk)
        mark(sch, last.block_rv, "cpu.RowReduction")
        return sch


def _vectorize_rf(sch: s_tir.Schedule, rf) -> None:
    """rfactor block: put its (static, short) lane loop innermost and vectorize it; init before k_o."""
    from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr
    from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize

    stmt = sch.get(rf)
    vals = list(get_sblockrealize(sch, rf).iter_values)
    lane = k_o = None
    for lp in sch.get_loops(rf):
        var = sch.get(lp).loop_var
        if loop_extent(sch, lp) == 1:
            continue
        for iv, val in zip(stmt.iter_vars, vals):
            if var in set(collect_vars_used_in_prim_expr(val)):
                if iv.iter_type == 0 and iv.var.name.startswith("v") and lane is None and _is_rf_axis(iv, stmt):
                    lane = lp
                elif iv.iter_type != 0:
                    k_o = lp
    if lane is None or k_o is None:
        return
    ext = loop_extent(sch, lane)
    if not isinstance(ext, int) or ext > 64:
        return
    sch.reorder(k_o, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(rf, k_o)


def _is_rf_axis(iv, stmt) -> bool:
    """The rfactor'ed lane iterator indexes the last axis of the rf buffer."""
    from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr

    region = stmt.writes[0].region
    return bool(region) and iv.var in set(collect_vars_used_in_prim_expr(region[-1].min))


def _single_row(info) -> bool:
    """A reduction whose spatial iterators all have extent 1 (S...SR with unit S)."""
    kinds = info.dom_kind()
    if not kinds.endswith("R") or kinds.count("R") != 1:
        return False
    return all(isinstance(it.dom, int) and it.dom == 1 for it in info.iters[:-1])


def _schedule_flat(sch: s_tir.Schedule, infos, params: CPUParams):
    """A single row (decode: all row axes are 1 and normalized away): every block stays at the root in order;
    reductions are vectorized with rfactor, elementwise blocks vectorized. No parallelism (one short row)."""
    for info in infos:
        kinds = info.dom_kind()
        if not info.is_injective():
            if not _single_row(info) or not isinstance(info.iters[-1].dom, int):
                return None
        elif any(c != "S" for c in kinds):
            return None
    last_block = None
    for info in infos:
        blk = info.block_rv
        stmt = sch.get(blk)
        bits = max(8, dtype_bits(stmt.writes[0].source.dtype))
        lanes = params.lanes(bits)
        if info.is_injective():
            _vectorize_inner(sch, blk, lanes)
            last_block = blk
            continue
        r_loop = sch.get_loops(blk)[-1]
        r_ext = loop_extent(sch, r_loop)
        v = pow2_divisor_at_most(r_ext, lanes)
        if v >= 2 and r_ext > v:
            k_o, k_v = sch.split(r_loop, [None, v])
            out_ndim = len(stmt.writes[0].source.shape)
            rf = sch.rfactor(k_v, out_ndim)
            _vectorize_rf(sch, rf)
    if last_block is not None:
        mark(sch, last_block, "cpu.RowReduction")
    return sch


def _vectorize_inner(sch: s_tir.Schedule, block, lanes: int) -> None:
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    ext = loop_extent(sch, inner)
    if not isinstance(ext, int):
        return
    v = pow2_divisor_at_most(ext, lanes)
    if v < 2:
        return
    if v == ext:
        sch.vectorize(inner)
    else:
        _, vec = sch.split(inner, [None, v])
        sch.vectorize(vec)
