"""Parallel heads for TVM's hand-written CPU paged-KV-cache attention kernels.

`tvm.relax.frontend.nn.llm.kv_cache.TIRPagedKVCache` on an llvm target uses `_attention_prefill_cpu` and
`_attention_decode_cpu` (TVM 0.27). Both are fully serial scalar loop nests:

- prefill ``batch_prefill_paged_kv_cpu``: ``for h_qo: for b: block "attn" (scratch buffers) ...`` -- every
  (head, sequence) iteration already owns its scratch buffers and writes only ``output[:, h_qo, :]`` and
  ``lse[:, h_qo]``, so the head loop can simply run in parallel;
- decode ``batch_decode_paged_kv_cpu``: ``for b: block "attn" (scratch buffers) ... for h_qo: ...`` -- the
  scratch buffers (O/Q/K/V rows, running max/sum) are shared by the head iterations, so they are moved into a
  new block inside the head loop (one private copy per head, i.e. per thread; all are <= head_dim floats, on
  the stack), and then the head loop runs in parallel. Only ``kv_chunk_len``, written before the head loop
  and read inside it, stays shared.

Nothing else changes: per head the arithmetic (and its order) is the original, so outputs are bit-identical.
(Expression-level Lets are inlined, see `_inline_lets`: a TVM 0.27 codegen bug with float Lets in parallel loops.)

How it is applied:
- the prefill kernel is not marked ``tirx.is_scheduled``, so `PagedAttentionCPU` (in ``cpu_rules``) rewrites
  it during ``ApplyDefaultSchedule``;
- the decode kernel is marked ``tirx.is_scheduled`` (ApplyDefaultSchedule never shows it to a rule), so it
  needs the module pass `ParallelizeCPUAttention` in the pipeline (anywhere before ``tvm.compile`` lowers
  TIR; it also handles prefill, and it is idempotent).
Kernels it does not recognize (ragged prefill, tree attention, merge-state, other TVM versions' layouts) are
left untouched.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import s_tir, tirx
from tvm.target import Target

from .analysis import _type_name
from .base import CPURule
from .params import CPUParams

PREFILL_SYMBOLS = ("batch_prefill_paged_kv_cpu", "batch_prefill_paged_kv_cpu_sliding_window")
DECODE_SYMBOLS = ("batch_decode_paged_kv_cpu", "batch_decode_paged_kv_cpu_sliding_window")
# Once added to a Relax module (BlockBuilder.add_func) the kernels lose their global_symbol; their parameter
# lists identify them (the tree-attention kernels, whose lists differ, are not touched).
PREFILL_PARAMS = ("q", "q_indptr", "pages", "page_indptr", "page_values", "length_info", "k_rope_pos_offset",
                  "q_rope_position", "output", "lse", "causal", "rotary_mode", "rope_scale", "rope_theta", "sm_scale")
DECODE_PARAMS = ("Q", "pages", "page_table_indptr", "page_table_values", "length_info", "k_rope_pos_offset",
                 "q_rope_position", "output", "lse", "rotary_mode", "rope_scale", "rope_theta", "sm_scale")
_DONE = "llama_aot.parallel_heads"


def _symbol(func: tirx.PrimFunc) -> str:
    if func.attrs is not None and "global_symbol" in func.attrs:
        return str(func.attrs["global_symbol"])
    return ""


def _kind(func: tirx.PrimFunc) -> str:
    """"prefill", "decode" or ""."""
    sym = _symbol(func)
    if sym in PREFILL_SYMBOLS:
        return "prefill"
    if sym in DECODE_SYMBOLS:
        return "decode"
    names = tuple(str(p.name) for p in func.params)
    if names == PREFILL_PARAMS:
        return "prefill"
    if names == DECODE_PARAMS:
        return "decode"
    return ""


def _is_for(node) -> bool:
    return _type_name(node) == "For"


def _loop_name(loop) -> str:
    return str(loop.loop_var.name)


def _uses_buffer(stmt, buf) -> bool:
    found = []

    def cb(node):
        t = _type_name(node)
        if t in ("TensorLoad", "BufferLoad") and node.source.same_as(buf):
            found.append(node)
        elif t == "BufferStore" and node.buffer.same_as(buf):
            found.append(node)

    tvm_ffi.structural_walk(stmt, cb)
    return bool(found)


def _parallel(loop, body=None):
    return tirx.For(
        loop.loop_var, loop.min, loop.extent, tirx.ForKind.PARALLEL, loop.body if body is None else body,
        None, loop.annotations,
    )


def _rewrite_prefill(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """Outermost serial `h_qo` loop whose body holds the "attn" block -> parallel."""
    changed = []

    def on_for(loop):
        if changed or _loop_name(loop) != "h_qo" or int(loop.kind) != int(tirx.ForKind.SERIAL):
            return loop
        blocks = []
        tvm_ffi.structural_walk(loop.body, lambda n: blocks.append(n) if _type_name(n) == "SBlock" and n.name_hint == "attn" else None)
        if len(blocks) != 1:
            return loop
        changed.append(True)
        return _parallel(loop)

    body = tvm_ffi.structural_map(func.body, [(tirx.For, on_for)], order="pre")
    return func.with_body(body) if changed else None


def _rewrite_decode(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """In block "attn": privatize the scratch buffers into a block under `h_qo`, make `h_qo` parallel."""
    changed = []

    def on_block(blk):
        if blk.name_hint != "attn" or changed:
            return blk
        body = blk.body
        stmts = list(body.seq) if _type_name(body) == "SeqStmt" else [body]
        pos = [i for i, st in enumerate(stmts) if _is_for(st) and _loop_name(st) == "h_qo"]
        if len(pos) != 1:
            return blk
        loop = stmts[pos[0]]
        if int(loop.kind) != int(tirx.ForKind.SERIAL):
            return blk
        outside = stmts[: pos[0]] + stmts[pos[0] + 1 :]
        keep, move = [], []
        for buf in blk.alloc_buffers:
            (keep if any(_uses_buffer(st, buf) for st in outside) else move).append(buf)
        if not move:
            return blk
        # the moved buffers must not be written before the head loop (they are re-initialized per head)
        inner = s_tir.SBlock([], [], [], "attn_head", loop.body, None, move, [], {})
        stmts[pos[0]] = _parallel(loop, s_tir.SBlockRealize([], True, inner))
        changed.append(True)
        new_body = tirx.SeqStmt(stmts) if len(stmts) > 1 else stmts[0]
        return s_tir.SBlock(
            blk.iter_vars, blk.reads, blk.writes, blk.name_hint, new_body, blk.init, keep,
            blk.match_buffers, blk.annotations,
        )

    body = tvm_ffi.structural_map(func.body, [(s_tir.SBlock, on_block)])
    return func.with_body(body) if changed else None


def _inline_lets(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Replace expression-level ``Let(var = value, body)`` by ``body[var := value]`` (pure expressions, same
    value). Needed because TVM 0.27's LLVM codegen fails on a float Let inside a parallel loop body (the RoPE
    `freq` of the kernels: "IntImm supports only int or uint or bool type, but float32 was supplied")."""

    def on_let(node):
        var, value = node.var, node.value

        def sub(v):
            return value if v.same_as(var) else v

        return tvm_ffi.structural_map(node.body, [(tirx.Var, sub)])

    body = tvm_ffi.structural_map(func.body, [(tirx.Let, on_let)])
    return func if body.same_as(func.body) else func.with_body(body)


def parallelize_attention(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """The rewritten kernel, or None when `func` is not one we know (or already done)."""
    if not isinstance(func, tirx.PrimFunc):
        return None
    if func.attrs is not None and _DONE in func.attrs:
        return None
    kind = _kind(func)
    try:
        if kind == "prefill":
            out = _rewrite_prefill(func)
        elif kind == "decode":
            out = _rewrite_decode(func)
        else:
            return None
        if out is not None:
            out = _inline_lets(out)
    except Exception:  # pylint: disable=broad-except
        return None
    return None if out is None else out.with_attr(_DONE, True)


@tvm.transform.module_pass(opt_level=0, name="ParallelizeCPUAttention")
class ParallelizeCPUAttention:  # pylint: disable=too-few-public-methods
    """Module pass: parallel heads in the paged-KV-cache CPU attention kernels (see module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if isinstance(func, tirx.PrimFunc):
                new = parallelize_attention(func)
                if new is not None:
                    updates[gv] = new
        for gv, func in updates.items():
            mod[gv] = func
        return mod


class PagedAttentionCPU(CPURule):
    """The prefill attention kernel reaches ApplyDefaultSchedule (it is not marked scheduled): parallel heads."""

    def schedule(self, func: tirx.PrimFunc, target: Target, params: CPUParams):
        if params.num_cores <= 1 or _kind(func) != "prefill":
            return None
        new = parallelize_attention(func)
        return None if new is None else s_tir.Schedule(new)
