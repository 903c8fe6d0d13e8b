"""Prefill matmul (GEMM, S activation rows, S usually symbolic) with the weight dequantization fused.

Schedule (dot-product form: every accumulator is a vector along K, reduced horizontally at the end):

    parallel for n_o in N / Tn:                        # one weight panel per task
        W_p[Tn, K] = deq(W)[n_o*Tn : +Tn, :]           # dequantized once per task, vectorized along K
        for s_o in ceil(S / SR):
            x_t[SR, K] = x[s_o*SR : +SR, :] (zero past S)
            for n_m in Tn / NR:
                acc[SR, NR, L] = 0                     # SR*NR vector accumulators (registers)
                for k_o in K / L:
                    for s_i in SR, n_i in NR (unrolled):
                        acc[s_i, n_i, :] += x_t[s_i, k_o*L : +L] * W_p[n, k_o*L : +L]
                y[s, n] = sum(acc[s_i, n_i, :]) for s < S; epilogue(y)

Tn: the f32 panel fits in about half of the per-core L2 (params.gemm_panel). SR x NR: the accumulators plus
one x and one W vector per row/column fit the register file, and the accumulator tile stays under TVM's 1 KiB
stack-allocation limit (a stack array is what LLVM promotes to registers).

The S tail: the rows are padded to a multiple of SR with `pad_einsum` (a zero-filled x_t, computed per S tile,
and results past S never stored), so the inner loop carries no predicate. Where pad_einsum does not apply (the
dequantization inlined into the reduction: indices like k // 8 are not einsum) the split is predicated instead.

When the dequantization is inlined into the matmul (one TE reduction with deq() inside the sum) there is no
block to materialize the panel from; the schedule is then the same without the panel: the dequant expression is
evaluated in the inner loop and shared by the SR unrolled rows through LLVM's common-subexpression elimination
(1/SR of a dequant per FMA instead of 1/S). Quantization TEs should therefore emit the dequantization as its own
``te.compute`` stage feeding the reduction (both in one ``tensor_expr_op``).
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .analysis import analyze_matmul, block_pack_layout, inline_producers, largest_divisor_at_most, loop_extent, pow2_divisor_at_most
from ..report import note_fallback
from .base import RULE_MISMATCH, CPURule, ScheduleFallback, mark
from .elementwise import schedule_injective_block
from .params import CPUParams
from .rewrite import exact_nibbles_func, extract_from_pattern, has_inlined_weight


class DequantGEMM(CPURule):
    """Matmul with several (or a symbolic number of) activation rows."""

    def schedule(self, func: tirx.PrimFunc, target: Target, params: CPUParams):
        # 1. broadcast form over a transposed weight panel (weight operand is a buffer);
        # 2. dot form, rows padded (pad_einsum needs an einsum block);
        # 3. dot form, predicated row tail (inlined dequantization).
        for variant in ("bcast", "dot_pad", "dot"):
            try:
                sch = self._build(func, params, variant)
            except ScheduleFallback as err:
                note_fallback(f"cpu.DequantGEMM.{variant}", str(err))
                continue
            except RULE_MISMATCH:
                continue
            if sch is not None:
                return sch
        return None

    def _build(self, func: tirx.PrimFunc, params: CPUParams, variant: str):
        if params.exact_nibble_trick():
            func = exact_nibbles_func(func)
        sch = s_tir.Schedule(func)
        pat = analyze_matmul(sch)
        if pat is None or pat.is_gemv:
            return None
        panel_name = None
        if pat.weight_is_intermediate:
            # keep the block that writes the weight operand as the panel; inline everything else
            w_buf = pat.weight_expr
            while type(w_buf).__name__ == "Cast":
                w_buf = w_buf.value
            w_buf = w_buf.source
            writers = [p for p in pat.producers if any(w.source.same_as(w_buf) for w in sch.get(p).writes)]
            if len(writers) != 1:
                return None
            panel_name = sch.get(writers[0]).name_hint
            others = [p for p in pat.producers if sch.get(p).name_hint != panel_name]
            if others and not inline_producers(sch, others):
                return None
        elif pat.producers:
            if not inline_producers(sch, pat.producers):
                return None
        pat = analyze_matmul(sch)
        if pat is None:
            return None
        if panel_name is None and variant != "dot" and has_inlined_weight(pat):
            # dequantization inlined in the reduction: give it its own block (see rewrite.py)
            sch = s_tir.Schedule(extract_from_pattern(sch, pat))
            pat = analyze_matmul(sch)
            if pat is None or not pat.weight_is_intermediate or len(pat.producers) != 1:
                return None
            panel_name = sch.get(pat.producers[0]).name_hint
        panel_block = sch.get_sblock(panel_name) if panel_name else None
        if variant == "bcast":
            return schedule_gemm_bcast(sch, pat, params, panel_block)
        return schedule_gemm(sch, pat, params, panel_block, pad=variant == "dot_pad")


def _pad_rows(sch: s_tir.Schedule, pat, mult: int):
    """pad_einsum the matmul rows to a multiple of `mult`. Returns (pat, x_pad block or None, consumers)
    where consumers = [copy-back block] + epilogues."""
    block = pat.block
    block_name = sch.get(block).name_hint
    if len(pat.row_loops) != 1:
        raise ValueError("padding needs exactly one row axis")
    row_var = sch.get(pat.row_loops[0]).loop_var
    padding = [mult if val.same_as(row_var) else 1 for val in _iter_values(sch, block)]
    if mult not in padding:
        raise ValueError("row iterator not found")
    before = {sch.get(b).name_hint for b in _all_blocks(sch)}
    sch.pad_einsum(block, padding)
    new = [b for b in _all_blocks(sch) if sch.get(b).name_hint not in before]
    block = sch.get_sblock(block_name)
    producers = [b for b in new if _writes_read_by(sch, b, block)]
    copy_back = [b for b in new if b not in producers and _reads_written_by(sch, b, block)]
    if len(copy_back) != 1 or len(producers) > 1:
        raise ValueError("unexpected pad_einsum result")
    pat = analyze_matmul_after_pad(sch, block, pat)
    return pat, (producers[0] if producers else None), copy_back + list(pat.epilogues)


def schedule_gemm_bcast(sch: s_tir.Schedule, pat, params: CPUParams, panel_block=None):
    """Broadcast form: acc[s_i, n:n+NR] += x[s_i, k] (broadcast) * W_T[k, n:n+NR], weights dequantized (and
    transposed to [K, N]) into a [Kc, Tn] panel per task and K block; rows padded to MR."""
    w_core = pat.weight_expr
    while type(w_core).__name__ == "Cast":
        w_core = w_core.value
    if type(w_core).__name__ not in ("TensorLoad", "BufferLoad"):
        return None
    k_ext, n_ext = pat.k_extent, pat.n_extent
    # Only for packed weights: the transposing panel gathers one word per row for `pack` values of k; with
    # one value per load (int8, f16, f32 weights) the gather costs more than the dot form's hsum.
    if panel_block is None:
        return None
    pack, plane = block_pack_layout(sch, panel_block)
    if not 1 < pack <= 16:
        return None
    blocking = params.gemm_bcast_blocking(k_ext, n_ext, pack * plane)
    if blocking is None:
        raise ScheduleFallback(
            f"no broadcast tile fits: K={k_ext} N={n_ext}, {pack * plane}-k panel granule, "
            f"L1 budget {params.gemm_l1_panel_budget()} B"
        )
    mr, nrv, lanes, kc, tn = blocking
    nr = nrv * lanes
    if k_ext % lanes != 0:
        return None
    sch.transform_layout(panel_block, ("write", 0), lambda n, k: (k, n))

    exact = isinstance(pat.row_extent, int) and pat.row_extent % mr == 0
    x_pad = None
    consumers = list(pat.epilogues)
    if not exact:
        pat, x_pad, consumers = _pad_rows(sch, pat, mr)
    block = pat.block

    sch.reorder(*pat.row_loops, pat.n_loop, pat.k_loop)
    s_loop = sch.fuse(*pat.row_loops) if len(pat.row_loops) > 1 else pat.row_loops[0]
    s_o, s_i = sch.split(s_loop, [None, mr], disable_predication=True)
    n_o, n_m, n_v, n_l = sch.split(pat.n_loop, [None, tn // nr, nrv, lanes])
    k_c, k_i = sch.split(pat.k_loop, [None, kc])
    sch.reorder(n_o, k_c, s_o, n_m, k_i, s_i, n_v, n_l)
    sch.parallel(n_o)
    sch.unroll(s_i)
    sch.unroll(n_v)
    sch.vectorize(n_l)
    init = sch.decompose_reduction(block, k_c)
    _vectorize_innermost(sch, init, lanes)

    # weight panel [Kc, Tn]: per K block, dequantized + transposed; gather `pack` k's of `lanes` rows at a
    # time (one packed word per row) and store `pack` contiguous vectors along n
    sch.compute_at(panel_block, k_c)
    p_n, p_k = sch.get_loops(panel_block)[-2:]
    pn_c, pn_v = sch.split(p_n, [None, lanes])
    if plane == 1:  # value k in word k // pack: the word is invariant over k % pack
        pk_w, pk_j = sch.split(p_k, [None, pack])
        sch.reorder(pk_w, pn_c, pk_j, pn_v)
    else:  # planar: the word is invariant over (k % (pack*plane)) // plane
        pk_w, pk_j, pk_i = sch.split(p_k, [None, pack, plane])
        # pk_i inside pn_c: the group scales of a word's nibbles depend on pk_j only, so their row gathers are
        # invariant over pk_i and LLVM hoists them. One pn_c step then stores into all Kc panel rows: pad the
        # row stride by one cache line so a power-of-two Tn (4 KiB rows) does not put them in one L1 set, and
        # every row still starts on a line (a half-line pad, one AVX2 vector, made every other row straddle
        # two lines: +8..23% D1 misses under cachegrind, docs/cachegrind-tilings.md).
        # Measured, 1B shapes, S = 128 (Zen 5, 64-byte pad): +7..10% over the sequential layout (without the
        # padding gate_up -17%).
        sch.reorder(pk_w, pn_c, pk_i, pk_j, pn_v)
        sch.storage_align(panel_block, 0, axis=0, factor=tn, offset=max(lanes, params.line_bytes // 4))
    sch.unroll(pk_j)
    sch.vectorize(pn_v)

    if x_pad is not None:
        schedule_injective_block(sch, x_pad, params)
    _fuse_epilogues(sch, consumers, n_o, params, inline_first=len(consumers) > 1, lanes=lanes)
    mark(sch, block, "cpu.DequantGEMM.bcast")
    return sch


def schedule_gemm(sch: s_tir.Schedule, pat, params: CPUParams, panel_block=None, pad: bool = True):
    k_ext, n_ext = pat.k_extent, pat.n_extent
    srows, ncols, lanes = params.gemm_tile()
    lanes = pow2_divisor_at_most(k_ext, lanes)
    ncols = largest_divisor_at_most(n_ext, ncols)
    panel = params.gemm_panel(k_ext, n_ext)
    panel = largest_divisor_at_most(n_ext, max(panel, ncols), multiple_of=ncols)
    block = pat.block

    exact = isinstance(pat.row_extent, int) and pat.row_extent % srows == 0
    consumers = list(pat.epilogues)
    x_pad = None
    if not exact and pad:
        pat, x_pad, consumers = _pad_rows(sch, pat, srows)
        block = pat.block
        exact = True

    sch.reorder(*pat.row_loops, pat.n_loop, pat.k_loop)
    s_loop = sch.fuse(*pat.row_loops) if len(pat.row_loops) > 1 else pat.row_loops[0]
    s_o, s_i = sch.split(s_loop, [None, srows], disable_predication=exact)
    n_o, n_m, n_i = sch.split(pat.n_loop, [None, panel // ncols, ncols])
    k_o, k_v = sch.split(pat.k_loop, [None, lanes])
    sch.reorder(n_o, s_o, n_m, k_o, s_i, n_i, k_v)
    out_ndim = len(sch.get(block).writes[0].source.shape)
    rf = sch.rfactor(k_v, out_ndim)

    r_no, r_so, r_nm, r_ko, r_si, r_ni, r_kv = sch.get_loops(rf)[:7]
    sch.parallel(r_no)
    sch.reverse_compute_at(block, r_nm)
    sch.vectorize(r_kv)
    sch.unroll(r_ni)
    sch.unroll(r_si)
    sch.decompose_reduction(rf, r_ko)

    if x_pad is not None:
        sch.compute_at(x_pad, r_so)
        _vectorize_innermost(sch, x_pad, params.lanes(32))

    if panel_block is not None:
        sch.compute_at(panel_block, r_no)
        _vectorize_innermost(sch, panel_block, params.gemv_vector_lanes())

    # copy-back of the padded result and the fused epilogue: per (S tile, N sub-tile), predicated on s < S
    _fuse_epilogues(sch, consumers, r_nm, params, inline_first=x_pad is not None and len(consumers) > 1)
    mark(sch, rf, "cpu.DequantGEMM.dot" + ("_pad" if exact else ""))
    return sch


def _vectorize_innermost(sch: s_tir.Schedule, block, max_lanes: int) -> None:
    inner = sch.get_loops(block)[-1]
    ext = loop_extent(sch, inner)
    if not isinstance(ext, int):
        return
    v = pow2_divisor_at_most(ext, max_lanes)
    if v > 1:
        if v == ext:
            sch.vectorize(inner)
        else:
            _, vec = sch.split(inner, [None, v])
            sch.vectorize(vec)


def _all_blocks(sch: s_tir.Schedule) -> list:
    root = sch.get_sblock(sch.mod["main"].body.block.name_hint)
    return list(sch.get_child_blocks(root))


def _iter_values(sch: s_tir.Schedule, block) -> list:
    from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize

    return list(get_sblockrealize(sch, block).iter_values)


def _writes_read_by(sch, producer, consumer) -> bool:
    outs = [w.source for w in sch.get(producer).writes]
    return any(r.source.same_as(o) for r in sch.get(consumer).reads for o in outs)


def _reads_written_by(sch, consumer, producer) -> bool:
    return _writes_read_by(sch, producer, consumer)


def analyze_matmul_after_pad(sch: s_tir.Schedule, block, old):
    """Loops of the padded matmul block, matched to the roles found before padding (by position)."""
    loops = sch.get_loops(block)
    vals = _iter_values(sch, block)
    stmt = sch.get(block)
    roles = {}
    for iv, val in zip(stmt.iter_vars, vals):
        for lp in loops:
            if sch.get(lp).loop_var.same_as(val):
                roles[iv.var] = lp
    # old pattern loops were the original block's loops: identify by iterator kind and order
    n_loop = k_loop = None
    row_loops = []
    for iv in stmt.iter_vars:
        lp = roles.get(iv.var)
        if lp is None:
            raise ValueError("non-trivial binding after pad_einsum")
        ext = loop_extent(sch, lp)
        if iv.iter_type != 0:
            k_loop = lp
        elif isinstance(ext, int) and ext == old.n_extent and n_loop is None and not _is_row(iv, stmt, old):
            n_loop = lp
        else:
            row_loops.append(lp)
    if n_loop is None or k_loop is None or not row_loops:
        raise ValueError("cannot re-identify loops after pad_einsum")
    old.block = block
    old.n_loop, old.k_loop, old.row_loops = n_loop, k_loop, row_loops
    return old


def _is_row(iv, stmt, old) -> bool:
    """A spatial iterator that indexes the activation (padded x) buffer is a row iterator."""
    from tvm.s_tir.dlight.analysis import collect_vars_used_in_prim_expr

    act_name = old.act_load.source.name
    for r in stmt.reads:
        if r.source.name in (act_name, act_name + "_pad"):
            used = set()
            for rng in r.region:
                used |= set(collect_vars_used_in_prim_expr(rng.min))
            if iv.var in used:
                return True
    return False


def _fuse_epilogues(sch, consumers: list, loop, params, inline_first: bool, lanes: int | None = None) -> None:
    """Move the matmul's consumers (copy-back of a padded result, residual add, cast) under ``loop``.

    ``inline_first``: the first consumer is the padded result's copy-back, inlined into the next one.
    A consumer that cannot move gets a standalone injective schedule instead."""
    if inline_first:
        try:
            sch.compute_inline(consumers[0])
            consumers = consumers[1:]
        except Exception:  # pylint: disable=broad-except
            pass
    for epi in consumers:
        try:
            sch.reverse_compute_at(epi, loop)
            if lanes:
                _vectorize_innermost(sch, epi, lanes)
        except Exception:  # pylint: disable=broad-except
            schedule_injective_block(sch, epi, params)
