"""Decode matmul (GEMV, one activation row) with the weight dequantization fused.

Schedule (per output row n, K reduction):

    parallel for n_o in N / R:                       # contiguous chunks of rows per thread
        acc[R, L] = 0                                # R*L f32, a stack array -> registers
        for k_o in K / L:
            for n_i in R (unrolled):                 # R independent FMA chains share the x vector
                acc[n_i, :] += x[k_o*L : +L] * deq(W)[n, k_o*L : +L]     # vector of L lanes
        y[n] = sum(acc[n_i, :])                      # horizontal sum, then the fused epilogue

The dequantization stays an expression inside the vector body, so the packed weight is read exactly once
(8 nibbles of a uint32 word become 8 lanes with a variable shift + mask; LLVM emits one vector load, a permute,
a shift, an and, a convert per L lanes). Rows are split into tiles of R = 4 (two on 16-register ISAs);
L = max(16, native f32 lanes) so one logical vector covers two packed int4 words.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target

from .analysis import analyze_matmul, inline_producers, largest_divisor_at_most, pow2_divisor_at_most
from .base import CPURule, mark
from .elementwise import schedule_injective_block
from .params import CPUParams
from .rewrite import exact_nibbles_func, extract_widened_params


class DequantGEMV(CPURule):
    """Matmul with a single activation row (decode), weight dequantization inlined."""

    def schedule(self, func: tirx.PrimFunc, target: Target, params: CPUParams):
        if params.exact_nibble_trick():
            func = exact_nibbles_func(func)
        sch = s_tir.Schedule(func)
        pat = analyze_matmul(sch)
        if pat is None or not pat.is_gemv:
            return None
        if pat.producers:
            if not inline_producers(sch, pat.producers):
                return None
        pat = analyze_matmul(sch)
        if pat is None or pat.producers:
            return None
        widened = []
        if params.gemv_scale_cache():
            func2, names = extract_widened_params(sch.mod["main"], sch.get(pat.block).name_hint)
            if names:
                sch = s_tir.Schedule(func2)
                pat = analyze_matmul(sch)
                if pat is None or len(pat.producers) != len(names):
                    return None
                widened = [sch.get_sblock(n) for n in names]
        return schedule_gemv(sch, pat, params, widened)


def schedule_gemv(sch: s_tir.Schedule, pat, params: CPUParams, widened=()) -> s_tir.Schedule:
    k_ext, n_ext = pat.k_extent, pat.n_extent
    lanes = pow2_divisor_at_most(k_ext, params.gemv_vector_lanes())
    rows = largest_divisor_at_most(n_ext, params.gemv_row_tile())
    block = pat.block
    nrows = len(pat.row_loops)

    sch.reorder(*pat.row_loops, pat.n_loop, pat.k_loop)
    chunk = 1
    if widened:
        # Rows per parallel task: the task converts its float32 scales once into a buffer (written once, read
        # once: L2-resident is enough) -- a quarter of L2, and at least two tasks per thread. Fewer, larger
        # tasks mean fewer workspace allocations; TVM's parallel loop splits statically anyway.
        wbytes = sum(4 * int(sch.get(w).writes[0].source.shape[-1].value) for w in widened)
        chunk = max(1, params.l2_bytes // 4 // max(1, wbytes * rows))
        chunk = min(chunk, max(1, n_ext // rows // max(1, 2 * params.num_cores)))
        chunk = largest_divisor_at_most(n_ext // rows, chunk)
    n_o, n_i = sch.split(pat.n_loop, [None, rows])
    n_t = None
    if widened:
        n_t, n_o = sch.split(n_o, [None, chunk])
    k_o, k_v = sch.split(pat.k_loop, [None, lanes])
    unroll = largest_divisor_at_most(k_ext // lanes, params.gemv_k_unroll())
    split_acc = unroll > 1 and params.gemv_split_accumulators()
    outer = [n_t, n_o] if n_t is not None else [n_o]
    if unroll > 1:
        k_o, k_u = sch.split(k_o, [None, unroll])
        if split_acc:  # one accumulator per unrolled K step: independent FMA chains
            sch.reorder(*outer, k_o, n_i, k_u, k_v)
            k_v = sch.fuse(k_u, k_v)
        else:
            sch.reorder(*outer, k_o, k_u, n_i, k_v)
    else:
        k_u = None
        sch.reorder(*outer, k_o, n_i, k_v)
    out_ndim = len(sch.get(block).writes[0].source.shape)
    rf = sch.rfactor(k_v, out_ndim)

    loops = sch.get_loops(rf)[nrows:]
    r_nt = None
    if n_t is not None:
        r_nt, loops = loops[0], loops[1:]
    if split_acc:
        r_no, r_ko, r_ni, r_kf = loops[:4]
        r_ku, r_kv = sch.split(r_kf, [unroll, lanes])
        sch.unroll(r_ku)
    elif k_u is not None:
        r_no, r_ko, r_ku, r_ni, r_kv = loops[:5]
        sch.unroll(r_ku)
    else:
        r_no, r_ko, r_ni, r_kv = loops[:4]
    sch.parallel(r_nt if r_nt is not None else r_no)
    sch.reverse_compute_at(block, r_no)
    for wb in widened:
        sch.compute_at(wb, r_nt)
        inner = sch.get_loops(wb)[-1]
        ext = sch.get(inner).extent
        v = pow2_divisor_at_most(int(ext.value), params.lanes(32)) if type(ext).__name__ == "IntImm" else 1
        if v > 1:
            _, vv = sch.split(inner, [None, v])
            sch.vectorize(vv)
    sch.vectorize(r_kv)
    sch.unroll(r_ni)
    sch.decompose_reduction(rf, r_ko)

    for epi in pat.epilogues:
        try:
            sch.reverse_compute_at(epi, r_no)
        except Exception:  # pylint: disable=broad-except
            schedule_injective_block(sch, epi, params)
    mark(sch, rf, "cpu.DequantGEMV")
    return sch
