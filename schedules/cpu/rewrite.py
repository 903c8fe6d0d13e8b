"""IR rewrite: split an inlined dequantization out of a matmul reduction into its own block.

A quantized linear written as one TE reduction, ``y = sum_k x[s, k] * deq(W)[n, k]``, has no block that
materializes deq(W); the GEMM schedule wants one (to dequantize a weight panel once per task instead of once
per row tile). This turns

    for s, n, k: matmul: y[s, n] += x[s, k] * <expr(n, k)>

into

    for n, k: dequantize_w: W[n, k] = <expr(n, k)>
    for s, n, k: matmul:    y[s, n] += x[s, k] * W[n, k]

on a PrimFunc normalized by dlight's `normalize_prim_func` (trivial loop bindings). The result computes the
same values in the same order (the products are formed from the same float32 W values).
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx

from .analysis import _type_name, is_load, loads_in


def _substitute(expr, mapping: dict):
    def cb(v):
        for old, new in mapping.items():
            if v.same_as(old):
                return new
        return v

    return tvm_ffi.structural_map(expr, [(tirx.Var, cb)])


def _contains_block(stmt, name: str) -> bool:
    found = []

    def cb(node):
        if _type_name(node) == "SBlock" and node.name_hint == name:
            found.append(node)

    tvm_ffi.structural_walk(stmt, cb)
    return bool(found)


def extract_weight_stage(func: tirx.PrimFunc, block_name: str, weight_expr, n_var, k_var, n_ext: int, k_ext: int):
    """Return `func` with `weight_expr` (an expression of the block iterators n_var, k_var inside block
    `block_name`) computed by a new block into a [n_ext, k_ext] buffer that the matmul reads instead."""
    dtype = str(weight_expr.ty)
    w_buf = tirx.decl_buffer((tirx.IntImm(str(n_var.ty), n_ext), tirx.IntImm(str(k_var.ty), k_ext)), dtype, name="dequantize_w")

    # the new producer block
    vn = tirx.Var("v_n", n_var.ty)
    vk = tirx.Var("v_k", k_var.ty)
    body_expr = _substitute(weight_expr, {n_var: vn, k_var: vk})
    reads = []
    for ld in loads_in(body_expr):
        reads.append(tirx.BufferRegion(ld.source, [tvm.ir.Range.from_min_extent(i, tirx.IntImm(str(i.ty), 1)) for i in ld.indices]))
    one_n = tirx.IntImm(str(n_var.ty), 1)
    one_k = tirx.IntImm(str(k_var.ty), 1)
    writes = [tirx.BufferRegion(w_buf, [tvm.ir.Range.from_min_extent(vn, one_n), tvm.ir.Range.from_min_extent(vk, one_k)])]
    new_block = s_tir.SBlock(
        iter_vars=[
            tirx.IterVar(tvm.ir.Range.from_min_extent(tirx.IntImm(str(n_var.ty), 0), tirx.IntImm(str(n_var.ty), n_ext)), vn, tirx.IterVar.DataPar),
            tirx.IterVar(tvm.ir.Range.from_min_extent(tirx.IntImm(str(k_var.ty), 0), tirx.IntImm(str(k_var.ty), k_ext)), vk, tirx.IterVar.DataPar),
        ],
        reads=reads,
        writes=writes,
        name_hint="dequantize_w",
        body=tirx.BufferStore(w_buf, body_expr, [vn, vk]),
    )
    ln = tirx.Var("ln", n_var.ty)
    lk = tirx.Var("lk", k_var.ty)
    nest = tirx.For(
        ln,
        tirx.IntImm(str(n_var.ty), 0),
        tirx.IntImm(str(n_var.ty), n_ext),
        tirx.ForKind.SERIAL,
        tirx.For(
            lk,
            tirx.IntImm(str(k_var.ty), 0),
            tirx.IntImm(str(k_var.ty), k_ext),
            tirx.ForKind.SERIAL,
            s_tir.SBlockRealize([ln, lk], True, new_block),
        ),
    )

    w_load = tirx.BufferLoad(w_buf, [n_var, k_var])
    replaced = []

    def on_block(blk):
        if blk.name_hint == block_name:
            store = blk.body
            value = store.value  # C + a * b
            mul = value.b
            if mul.a.same_as(weight_expr):
                new_mul = w_load * mul.b
            elif mul.b.same_as(weight_expr):
                new_mul = mul.a * w_load
            else:
                raise ValueError("weight expression not found in the matmul body")
            new_store = tirx.BufferStore(store.buffer, value.a + new_mul, store.indices)
            used = {ld.source for ld in loads_in(new_store.value)}
            new_reads = [r for r in blk.reads if any(r.source.same_as(u) for u in used)]
            new_reads.append(tirx.BufferRegion(w_buf, [tvm.ir.Range.from_min_extent(n_var, one_n), tvm.ir.Range.from_min_extent(k_var, one_k)]))
            replaced.append(True)
            return s_tir.SBlock(
                blk.iter_vars, new_reads, blk.writes, blk.name_hint, new_store, blk.init,
                blk.alloc_buffers, blk.match_buffers, blk.annotations,
            )
        return blk

    body = tvm_ffi.structural_map(func.body, [(s_tir.SBlock, on_block)])
    if not replaced:
        raise ValueError("matmul block not found")
    realize = body
    if _type_name(realize) != "SBlockRealize":
        raise ValueError("expected a root block")
    root = realize.block
    stmts = list(root.body.seq) if _type_name(root.body) == "SeqStmt" else [root.body]
    pos = [i for i, st in enumerate(stmts) if _contains_block(st, block_name)]
    if len(pos) != 1:
        raise ValueError("matmul loop nest not found at the root")
    stmts.insert(pos[0], nest)
    new_root = s_tir.SBlock(
        root.iter_vars, root.reads, root.writes, root.name_hint, tirx.SeqStmt(stmts), root.init,
        list(root.alloc_buffers) + [w_buf], root.match_buffers, root.annotations,
    )
    new_body = s_tir.SBlockRealize(realize.iter_values, realize.predicate, new_root)
    return func.with_body(new_body)


def extract_from_pattern(sch: s_tir.Schedule, pat) -> tirx.PrimFunc:
    """`extract_weight_stage` for a MatmulPattern found on `sch` (its function must be normalized)."""
    from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize

    blk = sch.get(pat.block)
    vals = list(get_sblockrealize(sch, pat.block).iter_values)
    lv_n = sch.get(pat.n_loop).loop_var
    lv_k = sch.get(pat.k_loop).loop_var
    n_var = [iv.var for iv, v in zip(blk.iter_vars, vals) if v.same_as(lv_n)]
    k_var = [iv.var for iv, v in zip(blk.iter_vars, vals) if v.same_as(lv_k)]
    if len(n_var) != 1 or len(k_var) != 1:
        raise ValueError("non-trivial binding")
    return extract_weight_stage(
        sch.mod["main"], blk.name_hint, pat.weight_expr, n_var[0], k_var[0], pat.n_extent, pat.k_extent
    )


def has_inlined_weight(pat) -> bool:
    """The weight side is an expression over loads (a dequantization), not a plain buffer load."""
    w = pat.weight_expr
    return not is_load(w) and bool(loads_in(w))


# ---------------------------------------------------------------------------------------------------------
# Exact int -> float conversion of small unsigned fields ("magic number" trick)

_MAGIC = 0x4B000000  # bits of float32 2**23
_TWO23 = 8388608.0


def _small_unsigned_field(expr) -> bool:
    """expr is `x & c` on a 32-bit integer with 0 <= c < 2**23 (so the value fits the float mantissa)."""
    if _type_name(expr) != "BitwiseAnd":
        return False
    dt = str(expr.ty)
    if dt not in ("uint32", "int32"):
        return False
    for side in (expr.a, expr.b):
        if _type_name(side) == "IntImm" and 0 <= int(side.value) < (1 << 23):
            return True
    return False


def exact_nibble_to_float(expr):
    """Rewrite ``float32(x & c) - C`` (C a float constant) into
    ``reinterpret<float32>((x & c) | bits(2**23)) - (2**23 + C)``: the same value bit for bit (2**23 + u is exact
    for u < 2**23 and the difference u - C is an exactly representable small number), but the int->float
    conversion becomes an OR that AVX-512 fuses with the mask (vpternlogd), saving one vector op per element.
    Only applied when 2**23 + C is exact in float32 (|C| < 2**23, C integral)."""

    def on_sub(node):
        a, b = node.a, node.b
        if str(node.ty) != "float32" or _type_name(b) != "FloatImm":
            return node
        c = float(b.value)
        if c != int(c) or abs(c) >= (1 << 22):
            return node
        if _type_name(a) != "Cast" or str(a.ty) != "float32" or not _small_unsigned_field(a.value):
            return node
        u = a.value
        if str(u.ty) != "uint32":
            u = tirx.Cast("uint32", u)
        bits = tirx.BitwiseOr(u, tirx.IntImm("uint32", _MAGIC))
        f = tirx.reinterpret("float32", bits)
        return f - tirx.FloatImm("float32", _TWO23 + c)

    return tvm_ffi.structural_map(expr, [(tirx.Sub, on_sub)])


def exact_nibbles_func(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """`exact_nibble_to_float` over a whole function (bit-exact, so safe anywhere)."""
    body = exact_nibble_to_float(func.body)
    return func if body.same_as(func.body) else func.with_body(body)


# ---------------------------------------------------------------------------------------------------------
# Widened copies of small low-precision parameters (group scales)


def extract_widened_params(func: tirx.PrimFunc, block_name: str, max_fraction: float = 0.25) -> tuple[tirx.PrimFunc, list[str]]:
    """In block `block_name`, replace every ``float32(P[idx])`` where P is a float16/bfloat16 *function
    parameter* by ``P_f32[idx]``, computed by a new block ``P_f32[i...] = float32(P[i...])`` over P's shape
    (placed before the block's loop nest). Only parameters at most `max_fraction` the size of the largest
    buffer the block reads are taken (scales, not weights). Returns (new func, names of the new blocks).

    The values are identical (the same cast); the point is that a schedule can then convert a tile of scales
    with vector instructions once and let the inner loop broadcast-load float32 scalars."""
    from .analysis import buffer_bytes

    blocks = []
    tvm_ffi.structural_walk(func.body, lambda n: blocks.append(n) if _type_name(n) == "SBlock" and n.name_hint == block_name else None)
    if len(blocks) != 1:
        return func, []
    blk = blocks[0]
    loads = loads_in(blk.body)
    if not loads:
        return func, []
    biggest = max(buffer_bytes(ld.source) for ld in loads)

    targets = {}

    def scan(node):
        if _type_name(node) == "Cast" and str(node.ty) == "float32" and is_load(node.value):
            buf = node.value.source
            if str(buf.dtype) in ("float16", "bfloat16") and buffer_bytes(buf) * 1.0 <= max_fraction * biggest:
                if _is_func_buffer(func, buf):
                    targets[str(buf.name)] = buf

    tvm_ffi.structural_walk(blk.body, scan)
    if not targets:
        return func, []
    new_bufs = {}
    nests = []
    names = []
    for name, buf in targets.items():
        wide = tirx.decl_buffer(buf.shape, "float32", name=f"{name}_f32")
        new_bufs[name] = wide
        ivs, lvs, idx = [], [], []
        for d, ext in enumerate(buf.shape):
            ty = str(ext.ty)
            v = tirx.Var(f"v{d}", ext.ty)
            ivs.append(tirx.IterVar(tvm.ir.Range.from_min_extent(tirx.IntImm(ty, 0), ext), v, tirx.IterVar.DataPar))
            lvs.append(tirx.Var(f"l{d}", ext.ty))
            idx.append(v)
        one = lambda i: tirx.IntImm(str(i.ty), 1)  # noqa: E731
        new_block = s_tir.SBlock(
            ivs,
            [tirx.BufferRegion(buf, [tvm.ir.Range.from_min_extent(i, one(i)) for i in idx])],
            [tirx.BufferRegion(wide, [tvm.ir.Range.from_min_extent(i, one(i)) for i in idx])],
            f"{name}_f32",
            tirx.BufferStore(wide, tirx.Cast("float32", tirx.BufferLoad(buf, idx)), idx),
        )
        stmt = s_tir.SBlockRealize(list(lvs), True, new_block)
        for lv, ext in reversed(list(zip(lvs, buf.shape))):
            stmt = tirx.For(lv, tirx.IntImm(str(ext.ty), 0), ext, tirx.ForKind.SERIAL, stmt)
        nests.append(stmt)
        names.append(f"{name}_f32")

    def on_cast(node):
        if str(node.ty) == "float32" and is_load(node.value) and str(node.value.source.name) in new_bufs:
            ld = node.value
            if ld.source.same_as(targets[str(ld.source.name)]):
                return tirx.BufferLoad(new_bufs[str(ld.source.name)], ld.indices)
        return node

    def on_block(b):
        if b.name_hint != block_name:
            return b
        body = tvm_ffi.structural_map(b.body, [(tirx.Cast, on_cast)])
        reads = [r for r in b.reads if str(r.source.name) not in new_bufs]
        for name, wide in new_bufs.items():
            for r in b.reads:
                if str(r.source.name) == name:
                    reads.append(tirx.BufferRegion(wide, r.region))
        return s_tir.SBlock(b.iter_vars, reads, b.writes, b.name_hint, body, b.init, b.alloc_buffers, b.match_buffers, b.annotations)

    body = tvm_ffi.structural_map(func.body, [(s_tir.SBlock, on_block)])
    root = body.block
    stmts = list(root.body.seq) if _type_name(root.body) == "SeqStmt" else [root.body]
    pos = [i for i, st in enumerate(stmts) if _contains_block(st, block_name)]
    if len(pos) != 1:
        return func, []
    stmts[pos[0] : pos[0]] = nests
    new_root = s_tir.SBlock(
        root.iter_vars, root.reads, root.writes, root.name_hint, tirx.SeqStmt(stmts), root.init,
        list(root.alloc_buffers) + list(new_bufs.values()), root.match_buffers, root.annotations,
    )
    return func.with_body(s_tir.SBlockRealize(body.iter_values, body.predicate, new_root)), names


def _is_func_buffer(func: tirx.PrimFunc, buf) -> bool:
    """`buf` is one of the function's parameter buffers (not an intermediate allocated in the body)."""
    allocated = []

    def cb(node):
        if _type_name(node) == "SBlock":
            allocated.extend(node.alloc_buffers)

    tvm_ffi.structural_walk(func.body, cb)
    return not any(buf.same_as(a) for a in allocated)
