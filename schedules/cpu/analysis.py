"""Pattern analysis shared by the CPU rules: find the (dequantizing) matmul inside a fused PrimFunc.

The matmul we match is one reduction block of the form

    C[spatial...] = C[spatial...] + A * B          (init C = 0)

with exactly one reduction iterator ``k`` where

- one side (the *activation*) is ``x[..., k]`` (optionally ``.astype(...)``): a load whose last index is ``k``
  and whose other indices use only the row iterators (batch, seq; any may be symbolic);
- the other side (the *weight*) uses ``k`` and exactly one spatial iterator ``n`` with a static extent, and
  no row iterator; it may be a load of an intermediate written by an injective producer block
  (``dequantize``), or the dequantization expression itself (inlined), or a plain load.

Every other block of the function must be injective: producers before the matmul (dequantization), epilogues
after it (residual add, cast, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tvm_ffi
from tvm import s_tir
from tvm.s_tir.dlight.analysis import SBlockInfo, collect_vars_used_in_prim_expr, normalize_prim_func


def _type_name(x) -> str:
    return type(x).__name__


def is_load(x) -> bool:
    return _type_name(x) in ("TensorLoad", "BufferLoad")


def loads_in(expr) -> list:
    out = []
    tvm_ffi.structural_walk(expr, lambda node: out.append(node) if is_load(node) else None)
    return out


def strip_cast(expr):
    while _type_name(expr) == "Cast":
        expr = expr.value
    return expr


def static_int(expr) -> int | None:
    return int(expr.value) if _type_name(expr) == "IntImm" else None


def buffer_bytes(buf) -> int:
    """Static size of a buffer in bytes (symbolic dims count as 1)."""
    n = 1
    for dim in buf.shape:
        v = static_int(dim)
        n *= v if v is not None else 1
    from tvm import DataType

    return n * max(1, DataType(str(buf.dtype)).bits) // 8


def dtype_bits(dtype) -> int:
    from tvm import DataType

    return DataType(str(dtype)).bits


@dataclass
class MatmulPattern:
    """What `analyze_matmul` found. Loop RVs are the block's own loops (one per iterator)."""

    block: s_tir.schedule.SBlockRV
    k_loop: s_tir.schedule.LoopRV
    n_loop: s_tir.schedule.LoopRV
    row_loops: list  # loops of the row iterators (batch, seq), in block order, incl. unit ones
    k_extent: int
    n_extent: int
    row_extent: object  # int or PrimExpr (product of row extents)
    act_load: object  # the x[..., k] load
    weight_expr: object  # the weight side expression (n, k)
    weight_is_intermediate: bool  # weight side is a load of a buffer written by a producer block
    producers: list = field(default_factory=list)  # SBlockRVs before the matmul
    epilogues: list = field(default_factory=list)  # SBlockRVs after the matmul
    pack: int = 1  # elements per word of the largest weight buffer along k (8 for 4-bit in uint32)
    out_dtype: str = "float32"

    @property
    def is_gemv(self) -> bool:
        return isinstance(self.row_extent, int) and self.row_extent == 1


def _reduction_rhs(block: s_tir.SBlock):
    """For ``C[i] = C[i] + rhs`` return rhs, else None."""
    store = block.body
    if _type_name(store) != "BufferStore":
        return None
    value = store.value
    if _type_name(value) != "Add":
        return None
    lhs = value.a
    if not is_load(lhs) or not lhs.source.same_as(store.buffer):
        return None
    if len(lhs.indices) != len(store.indices):
        return None
    for a, b in zip(lhs.indices, store.indices):
        if not a.same_as(b) and not tvm_ffi.structural_equal(a, b, map_free_vars=False):
            return None
    return value.b


def _var_set(expr) -> set:
    return set(collect_vars_used_in_prim_expr(expr))


def analyze_matmul(sch: s_tir.Schedule, infos: list[SBlockInfo] | None = None) -> MatmulPattern | None:
    """Find the matmul pattern described in the module docstring, or None."""
    if infos is None:
        infos = normalize_prim_func(sch)
    if not infos:
        return None
    reductions = [i for i, info in enumerate(infos) if not info.is_injective()]
    if len(reductions) != 1:
        return None
    ridx = reductions[0]
    info = infos[ridx]
    kinds = info.dom_kind()
    if kinds.count("R") != 1 or any(c not in "SR" for c in kinds):
        return None
    block = sch.get(info.block_rv)
    if len(block.writes) != 1:
        return None
    rhs = _reduction_rhs(block)
    if rhs is None or _type_name(rhs) != "Mul":
        return None

    iter_vars = [iv.var for iv in block.iter_vars]
    k_pos = kinds.index("R")
    k_var = iter_vars[k_pos]
    extents = [it.dom for it in info.iters]
    k_extent = extents[k_pos]
    if not isinstance(k_extent, int):
        return None
    unit = {v for v, e in zip(iter_vars, extents) if isinstance(e, int) and e == 1}

    def classify(act, wgt):
        act_core = strip_cast(act)
        if not is_load(act_core):
            return None
        if not act_core.indices or not act_core.indices[-1].same_as(k_var):
            return None
        act_vars = _var_set(act_core)
        for idx in list(act_core.indices)[:-1]:
            if k_var in _var_set(idx):
                return None
        w_vars = _var_set(wgt)
        if k_var not in w_vars:
            return None
        w_spatial = [v for v in w_vars if v is not k_var and not v.same_as(k_var) and v not in unit]
        w_spatial = [v for v in w_spatial if any(v.same_as(iv) for iv in iter_vars)]
        if len(w_spatial) != 1:
            return None
        n_var = w_spatial[0]
        if any(n_var.same_as(v) for v in act_vars):
            return None
        return act_core, n_var

    got = classify(rhs.a, rhs.b)
    w_side = rhs.b
    if got is None:
        got = classify(rhs.b, rhs.a)
        w_side = rhs.a
    if got is None:
        return None
    act_load, n_var = got
    n_pos = [i for i, v in enumerate(iter_vars) if v.same_as(n_var)][0]
    n_extent = extents[n_pos]
    if not isinstance(n_extent, int):
        return None
    # all other spatial iterators are rows (must not appear in the weight side)
    w_vars = _var_set(w_side)
    row_pos = [i for i in range(len(iter_vars)) if i not in (k_pos, n_pos)]
    for i in row_pos:
        if iter_vars[i] in w_vars and not (isinstance(extents[i], int) and extents[i] == 1):
            return None
    # the output must be indexed by n and the rows (a real matmul, not a reduction over n too)
    out_vars = _var_set(block.writes[0].region[0].min) if block.writes[0].region else set()
    for r in block.writes[0].region:
        out_vars |= _var_set(r.min)
    if n_var not in out_vars:
        return None
    row_extent = 1
    for i in row_pos:
        row_extent = row_extent * extents[i] if not (isinstance(extents[i], int) and extents[i] == 1) else row_extent
    if not isinstance(row_extent, int):
        pass  # symbolic rows (prefill)

    producers = [infos[i].block_rv for i in range(ridx)]
    epilogues = [infos[i].block_rv for i in range(ridx + 1, len(infos))]

    w_core = strip_cast(w_side)
    weight_is_intermediate = False
    if is_load(w_core):
        written = set()
        for p in producers:
            for w in sch.get(p).writes:
                written.add(w.source)
        weight_is_intermediate = any(w_core.source.same_as(b) for b in written)

    # pack factor: the largest buffer read by the weight side, its last index k // P
    pack = 1
    w_loads = loads_in(w_side)
    if w_loads:
        biggest = max(w_loads, key=lambda ld: buffer_bytes(ld.source))
        if biggest.indices:
            pack = pack_layout(biggest.indices[-1])[0]

    return MatmulPattern(
        block=info.block_rv,
        k_loop=info.iters[k_pos].loop_rv,
        n_loop=info.iters[n_pos].loop_rv,
        row_loops=[info.iters[i].loop_rv for i in row_pos],
        k_extent=k_extent,
        n_extent=n_extent,
        row_extent=row_extent,
        act_load=act_load,
        weight_expr=w_side,
        weight_is_intermediate=weight_is_intermediate,
        producers=producers,
        epilogues=epilogues,
        pack=pack,
        out_dtype=str(block.writes[0].source.dtype),
    )


def pack_layout(index) -> tuple[int, int]:
    """How a packed weight's last index maps k to words: returns (P, W) with P values per word and
    - W == 1 for the sequential layout ``k // P`` (value k is in word k // P);
    - W > 1 for the planar layout ``(k // (P*W)) * W + k % W`` (W consecutive k in W consecutive words).
    (1, 1) when the index is k itself or unrecognized."""
    t = _type_name(index)
    if t == "FloorDiv":
        p = static_int(index.b)
        return (p, 1) if p else (1, 1)
    if t == "Add":
        a, b = index.a, index.b
        if _type_name(a) == "FloorMod":
            a, b = b, a
        if _type_name(a) == "Mul" and _type_name(b) == "FloorMod":
            w1 = static_int(a.b)
            div = a.a
            w2 = static_int(b.b)
            if _type_name(div) == "FloorDiv" and w1 and w2 and w1 == w2:
                blk = static_int(div.b)
                if blk and blk % w1 == 0 and div.a.same_as(b.a):
                    return blk // w1, w1
    return 1, 1


def block_pack_layout(sch: s_tir.Schedule, block) -> tuple[int, int]:
    """`pack_layout` of the last index of the largest buffer the block reads."""
    stmt = sch.get(block)
    loads = [ld for ld in loads_in(stmt.body) if ld.indices]
    if not loads:
        return 1, 1
    biggest = max(loads, key=lambda ld: buffer_bytes(ld.source))
    return pack_layout(biggest.indices[-1])


def inline_producers(sch: s_tir.Schedule, producers: list) -> bool:
    """compute_inline every producer block (repeat until no progress). True if all were inlined."""
    remaining = list(producers)
    progress = True
    while remaining and progress:
        progress = False
        for blk in list(remaining):
            try:
                sch.compute_inline(blk)
            except Exception:  # pylint: disable=broad-except
                continue
            remaining.remove(blk)
            progress = True
    return not remaining


def loop_extent(sch: s_tir.Schedule, loop) -> int | object:
    ext = sch.get(loop).extent
    v = static_int(ext)
    return v if v is not None else ext


def largest_divisor_at_most(n: int, cap: int, multiple_of: int = 1) -> int:
    """Largest d <= cap with n % d == 0 and d % multiple_of == 0 (1 if none)."""
    for d in range(min(cap, n), 0, -1):
        if n % d == 0 and d % multiple_of == 0:
            return d
    return 1


def pow2_divisor_at_most(n: int, cap: int) -> int:
    d = 1
    while d * 2 <= cap and n % (d * 2) == 0:
        d *= 2
    return d
