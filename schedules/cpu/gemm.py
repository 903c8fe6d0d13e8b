"""Prefill matmul (GEMM, S activation rows, S usually symbolic) with the weight dequantization fused.

Schedule (dot-product form: every accumulator is a vector along K, reduced horizontally at the end):

    parallel for n_o in N / Tn:                        # one weight panel per task
        W_p[Tn, K] = deq(W)[n_o*Tn : +Tn, :]           # dequantized once, vectorized along K (if the TE has a
                                                       #   separate dequantize stage; see below)
        for s_o in ceil(S / SR):
            for n_m in Tn / NR:
                acc[SR, NR, L] = 0                     # SR*NR vector accumulators (registers)
                for k_o in K / L:
                    for s_i in SR, n_i in NR (unrolled):
                        acc[s_i, n_i, :] += x[s, k_o*L : +L] * W_p[n, k_o*L : +L]
                y[s, n] = sum(acc[s_i, n_i, :]); epilogue(y)

Tn is chosen so the f32 panel fits in about half of the per-core L2 (params.gemm_panel), SR x NR so the
accumulators plus one x and one W vector per row/column fit the register file and the accumulator tile stays
under TVM's 1 KiB stack-allocation limit (it must be a stack array for LLVM to keep it in registers).

When the dequantization is inlined into the matmul (one TE reduction with deq() inside the sum) there is no
block to materialize the panel from; the schedule is the same without the panel: the dequant expression is then
evaluated in the inner loop, shared by the SR unrolled rows through LLVM's common-subexpression elimination, so
it costs 1/SR of a dequant per FMA instead of 1/S. Quantization TEs should therefore emit the dequantization
as its own ``te.compute`` stage feeding the reduction (both in one ``tensor_expr_op``).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .analysis import analyze_matmul, inline_producers, largest_divisor_at_most, pow2_divisor_at_most
from .base import CPURule
from .elementwise import schedule_injective_block
from .params import CPUParams


class DequantGEMM(CPURule):
    """Matmul with several (or a symbolic number of) activation rows."""

    def schedule(self, func: tirx.PrimFunc, target: Target, params: CPUParams):
        try:
            return self._build(func, params, padded=True)
        except Exception:  # pylint: disable=broad-except
            # e.g. mixed int32/int64 indices defeat the row-axis layout split: use the predicated form
            return self._build(func, params, padded=False)

    def _build(self, func: tirx.PrimFunc, params: CPUParams, padded: bool):
        sch = s_tir.Schedule(func)
        pat = analyze_matmul(sch)
        if pat is None or pat.is_gemv:
            return None
        panel_block = None
        if pat.weight_is_intermediate:
            # keep the block that writes the weight operand; inline everything feeding it
            w_buf = pat.weight_expr
            while type(w_buf).__name__ == "Cast":
                w_buf = w_buf.value
            w_buf = w_buf.source
            writer = [p for p in pat.producers if any(w.source.same_as(w_buf) for w in sch.get(p).writes)]
            if len(writer) != 1:
                return None
            panel_block = writer[0]
            others = [p for p in pat.producers if p is not panel_block and not _same_block(sch, p, panel_block)]
            if others and not inline_producers(sch, others):
                return None
        elif pat.producers:
            if not inline_producers(sch, pat.producers):
                return None
        pat = analyze_matmul(sch)
        if pat is None:
            return None
        if panel_block is not None:
            sblock_name = sch.get(panel_block).name_hint
            panel_block = sch.get_sblock(sblock_name)
        return schedule_gemm(sch, pat, params, panel_block, padded)


def _split_row_axis(sch: s_tir.Schedule, block, buf, srows: int) -> None:
    """Rewrite the layout of a [..., S, ...] buffer (S: its only symbolic dim, the rows) to
    [..., S // SR, SR, ...]."""
    stmt = sch.get(block)
    region = stmt.writes[buf[1]] if buf[0] == "write" else stmt.reads[buf[1]]
    shape = list(region.source.shape)
    sym = [i for i, d in enumerate(shape) if type(d).__name__ != "IntImm"]
    if len(sym) != 1:
        raise ValueError("expected exactly one symbolic (row) axis")
    axis = sym[0]

    def index_map(*idx):
        out = list(idx[:axis]) + [idx[axis] // srows, idx[axis] % srows] + list(idx[axis + 1 :])
        return out

    sch.transform_layout(block, buf, index_map, pad_value=0.0)


def _same_block(sch, a, b) -> bool:
    return sch.get(a).same_as(sch.get(b))


def schedule_gemm(sch: s_tir.Schedule, pat, params: CPUParams, panel_block=None, padded: bool = True) -> s_tir.Schedule:
    k_ext, n_ext = pat.k_extent, pat.n_extent
    srows, ncols, lanes = params.gemm_tile()
    lanes = pow2_divisor_at_most(k_ext, lanes)
    ncols = largest_divisor_at_most(n_ext, ncols)
    panel = params.gemm_panel(k_ext, n_ext)
    panel = largest_divisor_at_most(n_ext, max(panel, ncols), multiple_of=ncols)
    block = pat.block
    if isinstance(pat.row_extent, int):
        # static rows: no tail when SR divides them; otherwise keep the predicate
        if pat.row_extent % srows == 0:
            padded, exact = False, True
        else:
            padded, exact = False, False
    else:
        exact = False

    sch.reorder(*pat.row_loops, pat.n_loop, pat.k_loop)
    s_loop = sch.fuse(*pat.row_loops) if len(pat.row_loops) > 1 else pat.row_loops[0]
    # No predicate on the row split: rows past S are computed on a padded copy of x (x_tile below) and
    # discarded; the predicate would otherwise sit inside the K loop and keep the accumulators in memory.
    s_o, s_i = sch.split(s_loop, [None, srows], disable_predication=padded or exact)
    n_o, n_m, n_i = sch.split(pat.n_loop, [None, panel // ncols, ncols])
    k_o, k_v = sch.split(pat.k_loop, [None, lanes])
    sch.reorder(n_o, s_o, n_m, k_o, s_i, n_i, k_v)
    out_ndim = len(sch.get(block).writes[0].source.shape)
    rf = sch.rfactor(k_v, out_ndim)

    r_no, r_so, r_nm, r_ko, r_si, r_ni, r_kv = sch.get_loops(rf)[:7]
    sch.parallel(r_no)
    sch.reverse_compute_at(block, r_nm)
    if padded:
        _pad_rows(sch, rf, pat, r_so, srows, k_ext, params)
    sch.vectorize(r_kv)
    sch.unroll(r_ni)
    sch.unroll(r_si)
    sch.decompose_reduction(rf, r_ko)

    if panel_block is not None:
        sch.compute_at(panel_block, r_no)
        d_loops = sch.get_loops(panel_block)
        inner = d_loops[-1]
        ext = sch.get(inner).extent
        dl_lanes = pow2_divisor_at_most(int(ext.value), params.gemv_vector_lanes())
        if dl_lanes > 1:
            _, d_v = sch.split(inner, [None, dl_lanes])
            sch.vectorize(d_v)

    for epi in pat.epilogues:
        try:
            sch.reverse_compute_at(epi, r_nm)
        except Exception:  # pylint: disable=broad-except
            schedule_injective_block(sch, epi, params)
    return sch


def _pad_rows(sch, rf, pat, r_so, srows, k_ext, params) -> None:
    """x rows of this S tile are copied (predicated on s < S by compute_at) into a tile buffer that the
    unpredicated inner loop may read past S; rows past S give accumulators that are never stored."""
    act = pat.act_load.source
    x_idx = [i for i, r in enumerate(sch.get(rf).reads) if r.source.same_as(act)]
    if len(x_idx) != 1:
        raise ValueError("activation read not found")
    x_tile = sch.cache_read(rf, x_idx[0], "global")
    # Give the row axis of the two tile buffers a static inner extent (s -> (s // SR, s % SR)) so buffer
    # compaction sizes them SR rows instead of min(S, SR) (which would be both dynamic and too small).
    _split_row_axis(sch, x_tile, ("write", 0), srows)
    _split_row_axis(sch, rf, ("write", 0), srows)
    sch.compute_at(x_tile, r_so)
    xt_loops = sch.get_loops(x_tile)
    xt_inner = xt_loops[-1]
    xt_lanes = pow2_divisor_at_most(k_ext, params.lanes(32))
    if xt_lanes > 1:
        _, xv = sch.split(xt_inner, [None, xt_lanes])
        sch.vectorize(xv)
