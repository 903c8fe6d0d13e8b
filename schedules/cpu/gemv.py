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
    if params.gemv_prefetch_enabled():
        inner = [sch.get(lp).loop_var for lp in (r_ni, r_kv) + ((r_ku,) if k_u is not None else ())]
        new = insert_next_rows_prefetch(
            sch.mod["main"], sch.get(rf).name_hint, sch.get(r_ko).loop_var, sch.get(r_ni).loop_var, inner, rows
        )
        if new is not None:
            sch = s_tir.Schedule(new)
    return sch


def insert_next_rows_prefetch(func, block_name, ko_var, ni_var, inner_vars, rows):
    """Software prefetch for the weight stream: at the top of every K step, one prefetch per row of the
    *next* row group at the current K position (a row group later in the task's traversal, i.e. rows*K
    values ahead). The hardware stream prefetchers do not see the jump to the next group; with it the decode
    GEMV runs at the speed it has with the weights in cache. Prefetches never fault, so reading past the
    last row is harmless. Returns the new function, or None if the loop/block was not found."""
    from .analysis import buffer_bytes, loads_in
    import tvm_ffi

    done = []

    def realizes(stmt):
        out = []
        tvm_ffi.structural_walk(
            stmt, lambda x: out.append(x) if type(x).__name__ == "SBlockRealize" and x.block.name_hint == block_name else None
        )
        return out

    def subst(expr, pairs):
        def cb(v):
            for a, b in pairs:
                if v.same_as(a):
                    return b
            return v

        return tvm_ffi.structural_map(expr, [(tirx.Var, cb)])

    def on_for(loop):
        if done or not loop.loop_var.same_as(ko_var):
            return loop
        found = realizes(loop.body)
        if len(found) != 1:
            return loop
        br = found[0]
        lds = loads_in(br.block.body)
        if not lds:
            return loop
        weight = max(lds, key=lambda ld: buffer_bytes(ld.source))
        bind = [(iv.var, val) for iv, val in zip(br.block.iter_vars, br.iter_values)]
        stmts = []
        for r in range(rows):
            pairs = [(v, tirx.IntImm(str(v.ty), 0)) for v in inner_vars if not v.same_as(ni_var)]
            pairs.append((ni_var, tirx.IntImm(str(ni_var.ty), r + rows)))
            idx = [subst(subst(i, bind), pairs) for i in weight.indices]
            addr = tirx.call_intrin("handle", "tirx.address_of", tirx.BufferLoad(weight.source, idx))
            stmts.append(tirx.Evaluate(tirx.call_intrin("void", "tirx.prefetch", addr, 0, 3, 1)))
        done.append(True)
        return tirx.For(
            loop.loop_var, loop.min, loop.extent, loop.kind, tirx.SeqStmt(stmts + [loop.body]), None, loop.annotations
        )

    try:
        body = tvm_ffi.structural_map(func.body, [(tirx.For, on_for)], order="pre")
    except Exception:  # pylint: disable=broad-except
        return None
    return func.with_body(body) if done else None
