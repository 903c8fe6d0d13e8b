"""Replacements for TVM KV-cache kernels: ones that are wrong on some GPUs, ones that are slow on CPUs.

CPU: :func:`ragged_prefill_cpu`, :func:`paged_prefill_cpu`, :func:`paged_decode_cpu` and
:func:`fused_rope_cpu` replace TVM's scalar kernels (see :func:`fast_cpu_attention`). GPU:

``merge_state_inplace`` (TVM's ``_merge_state_inplace``, symbol ``tir_attention_merge_state``)
combines two partial attention results over disjoint key sets, in place::

    m      = max(S, S_other)                    # S: log2-sum-exp of the scores, per (row, head)
    a, b   = 2^(S - m), 2^(S_other - m)
    V      = (V * a + V_other * b) / (a + b)     # V: the normalised partial outputs
    S      = log2(a + b) + m

The paged KV cache runs it whenever a prefill attends to tokens already in the cache (every
chunk of a chunked prefill after the first): ragged attention over the new tokens, paged
attention over the cached prefix, then this merge.

TVM's GPU kernel gives each (row, head) ``bdx = head_dim / VEC_SIZE`` threads (16 for head_dim
64, 32 for 128).  Every one of them reads ``S[row, head]`` and every one writes the merged value
back, with no barrier in between.  A thread that runs after another thread has already stored
the merged S computes its weights from the wrong log-sum-exp and scales its slice of V wrongly.
That is only safe when the ``bdx`` threads execute in lockstep in one subgroup (NVIDIA's 32-wide
warps at head_dim <= 128); on lavapipe (subgroup 8) head_dim 64 breaks, and on Mali / Intel
(subgroups of 8-16) head_dim 128 does too.

:func:`merge_state_inplace` keeps TVM's signature, launch shape and vectorisation but reads each
(row, head)'s two log-sum-exps once, in thread ``tx == 0``, into shared memory; after a workgroup
barrier every thread takes them from there, and only ``tx == 0`` writes ``S`` back.  So global
``S`` is read and written by a single thread (program order) and the cross-thread hand-off goes
through shared memory, which the barrier orders on every back end.
"""

from __future__ import annotations

import contextlib

import tvm
from tvm import tirx
from tvm.script import tirx as T
from tvm.target import Target

from .fast_math import LOG2E, exp2_poly


def _launch(num_heads: int, head_dim: int, target: Target) -> tuple[int, int, int, int]:
    """TVM's launch configuration for the merge kernel: (VEC_SIZE, bdx, bdy, gdy)."""
    from tvm.relax.frontend.nn.llm._kernel_common import check_thread_limits, get_max_num_threads_per_block

    v_dtype_bytes = 2  # as in TVM, whatever the dtype
    vec = min(max(8 // v_dtype_bytes, head_dim // 32), 4)
    bdx = head_dim // vec
    bdy = num_heads
    max_threads = get_max_num_threads_per_block(target)
    while bdx * bdy > max_threads and bdy > 1:
        bdy //= 2
    gdy = num_heads // bdy
    check_thread_limits(target, bdx=bdx, bdy=bdy, bdz=1, gdz=1)
    return vec, bdx, bdy, gdy


def merge_state_inplace(num_heads, head_dim, v_dtype, target: Target, global_symbol: str | None = None):
    """Race-free drop-in for ``tvm.relax.frontend.nn.llm.kv_cache._merge_state_inplace``."""
    VEC_SIZE, bdx, bdy, gdy = _launch(num_heads, head_dim, target)

    @T.prim_func(s_tir=True)
    def merge_state_inplace(
        v: T.handle,
        s: T.handle,
        v_other: T.handle,
        s_other: T.handle,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        N = T.int32()
        H = T.int32()
        D = T.int32()

        V = T.match_buffer(v, (N, H, D), v_dtype)
        S = T.match_buffer(s, (N, H), "float32")
        V_other = T.match_buffer(v_other, (N, H, D), v_dtype)
        S_other = T.match_buffer(s_other, (N, H), "float32")

        for bx in T.thread_binding(N, thread="blockIdx.x"):
            for by in T.thread_binding(gdy, thread="blockIdx.y"):
                for ty in T.thread_binding(bdy, thread="threadIdx.y"):
                    for tx in T.thread_binding(bdx, thread="threadIdx.x"):
                        with T.sblock("merge"):
                            s_smem = T.sblock_alloc_buffer((bdy, 2), "float32", scope="shared")
                            s_val = T.sblock_alloc_buffer((1,), "float32", scope="local")
                            s_other_val = T.sblock_alloc_buffer((1,), "float32", scope="local")
                            s_max = T.sblock_alloc_buffer((1,), "float32", scope="local")
                            scale = T.sblock_alloc_buffer((1,), "float32", scope="local")
                            other_scale = T.sblock_alloc_buffer((1,), "float32", scope="local")
                            v_vec = T.sblock_alloc_buffer((VEC_SIZE,), v_dtype, scope="local")
                            v_other_vec = T.sblock_alloc_buffer((VEC_SIZE,), v_dtype, scope="local")

                            # one thread per (row, head) reads the two log-sum-exps ...
                            if tx == 0:
                                s_smem[ty, 0] = S[bx, ty + by * bdy]
                                s_smem[ty, 1] = S_other[bx, ty + by * bdy]
                            # ... and hands them to the others before anyone may overwrite S
                            T.tvm_storage_sync("shared")

                            s_val[0] = s_smem[ty, 0]
                            s_other_val[0] = s_smem[ty, 1]
                            s_max[0] = T.max(s_val[0], s_other_val[0])
                            s_val[0] = T.exp2(s_val[0] - s_max[0])
                            s_other_val[0] = T.exp2(s_other_val[0] - s_max[0])
                            scale[0] = s_val[0] / (s_val[0] + s_other_val[0])
                            other_scale[0] = s_other_val[0] / (s_val[0] + s_other_val[0])

                            # each thread merges (reads and writes) only its own VEC_SIZE slice of V
                            for vec in T.vectorized(VEC_SIZE):
                                v_vec[vec] = V[bx, ty + by * bdy, tx * VEC_SIZE + vec]
                            for vec in T.vectorized(VEC_SIZE):
                                v_other_vec[vec] = V_other[bx, ty + by * bdy, tx * VEC_SIZE + vec]
                            for vec in T.serial(VEC_SIZE):
                                v_vec[vec] = v_vec[vec] * scale[0] + v_other_vec[vec] * other_scale[0]
                            for vec in T.vectorized(VEC_SIZE):
                                V[bx, ty + by * bdy, tx * VEC_SIZE + vec] = v_vec[vec]

                            # the thread that read S is the only one that writes it
                            if tx == 0:
                                S[bx, ty + by * bdy] = T.log2(s_val[0] + s_other_val[0]) + s_max[0]

    func = merge_state_inplace
    if global_symbol:
        func = func.with_attr("global_symbol", global_symbol)
    return func


@contextlib.contextmanager
def race_free_merge_state(target: Target):
    """While active, TIRPagedKVCache built for a GPU ``target`` uses :func:`merge_state_inplace`.

    ``kv_cache.py`` calls the module-level name ``_merge_state_inplace`` when it builds the cache's
    GPU kernels; CPU (llvm) targets use ``_merge_state_inplace_cpu`` and are left alone.
    """
    if Target(target).kind.name == "llvm":
        yield
        return
    from tvm.relax.frontend.nn.llm import kv_cache

    original = kv_cache._merge_state_inplace
    kv_cache._merge_state_inplace = merge_state_inplace
    try:
        yield
    finally:
        kv_cache._merge_state_inplace = original


def _window_slot(j, info, b):
    """Key position -> slot in the sequence's pages in TVM's sliding layout (``info[3, b]``: last page's
    length, where the window starts in the pages, sink length): sinks first, then the window."""
    return T.if_then_else(j < info[2, b], j, j - info[2, b] + info[1, b])


def _cached_keys(n_pages, info, b, page_size: int, sliding: bool):
    """Keys a sequence holds in the paged cache (``info``: ``[b]`` last-page lengths, or the sliding ``[3, b]``)."""
    last = info[0, b] - info[1, b] + info[2, b] if sliding else info[b]
    return T.if_then_else(n_pages > 0, (n_pages - 1) * page_size + last, 0)


def _sees_cached(col, kv_len, row, window):
    """Under ``window = (W, S)``: chunk row ``row`` (sequence position kv_len + row) sees cached key ``col``:
    a sink, or one of the W - S - row - 1 most recent (the rest of its band is in the chunk)."""
    w, s = window
    return tirx.any(col < s, col >= kv_len - T.max(w - s - row - 1, 0))


def paged_decode_cpu(h_kv, h_q, d, dtype, rope_scaling, page_size=16, window=None, pages_per_tile=1, splits=1,
                     prefetch=0, heads_per_block=1, keys_per_reduction=1):
    """Drop-in for TVM's ``_attention_decode_cpu`` (one new token against the paged KV cache).

    TVM's kernel walks every key with scalar loops, once per query head, and calls exp2 twice per key
    (its online softmax rescales after every key). This one runs (KV head, context split) tasks in
    parallel and, for the ``h_q / h_kv`` query heads of a group together, takes the keys a tile
    (``pages_per_tile`` pages) at a time:

    * each K row is read once per block of ``heads_per_block`` query heads: their dot products in
      ``lanes``-wide accumulators, ``keys_per_reduction`` keys' accumulators summed by one shuffle tree
      (``reduce_keys``), into the tile's scores (which stay in L1d);
    * one softmax update per tile: the tile's max, one rescale ``2^(m_old - m_new)`` of the running sum
      and output, the tile's weights through a polynomial exp2 (``fast_math.exp2_poly``; no libm);
    * each V row is read once for the group and added into every head's output with its weight. The
      group's outputs are indexed by constants only (heads and head-dim vectors unrolled), so LLVM
      keeps them in registers across the keys (a variable index, or a buffer of 1 KiB or more,
      which TVM puts on the heap, turns every multiply-add into a load and a store: 2x slower).

    ``splits`` > 1 (flash-decoding): the sequence's pages are cut into that many contiguous ranges
    (whole tiles) so ``h_kv x splits`` tasks balance over the cores; each writes its normalised partial
    output and log2-sum-exp, and a merge (the :func:`merge_state_inplace` formula over the splits)
    combines them. ``prefetch`` > 0: each key's K and V rows that many pages ahead are prefetched (pages
    are scattered in the pool, which hardware prefetchers do not follow). Every knob is derived from the
    machine (``CPUParams.attention_decode_tiling``, docs/cachegrind-decode-attention.md).

    Same numerics as TVM's kernel up to float rounding (base-2 online softmax, lse in log2). RoPE in the
    kernel (rotary_mode 1; our cache applies RoPE before attention, mode 0) stays on a scalar path, in
    the first split. With the model's ``window = (W, S)``: the sliding variant (the cache's sink/window
    page layout, ``length_info[3, b]``), where the new token sees the first S tokens and the W - S - 1
    most recent cached ones (itself, the W - S th, comes from the ragged part).
    """
    from tvm.relax.frontend.nn.llm._kernel_common import _rope  # pylint: disable=import-outside-toplevel

    group_size = h_q // h_kv
    GS = group_size
    lanes = 16
    P = page_size
    TP = max(1, int(pages_per_tile))
    while TP * P % lanes:  # the softmax passes run over whole vectors of scores
        TP += 1
    TK = TP * P
    NS = max(1, int(splits))
    SPLIT = NS > 1
    DC = d // lanes
    PREFETCH = bool(prefetch)
    GB = max(g for g in range(1, GS + 1) if GS % g == 0 and g <= max(1, int(heads_per_block)))
    assert GB * d * 4 < 1024, "the register block must stay under TVM's 1 KiB stack limit"
    KU = int(keys_per_reduction)
    assert KU in (1, 2, 4) and P % KU == 0 and GB * KU * lanes * 4 < 1024, "keys per reduction: 1, 2 or 4 (dividing the page)"
    PD = int(prefetch) if PREFETCH else 0  # pages ahead
    elem_bytes = tvm.DataType(dtype).bits // 8
    LINE_ELEMS = 64 // elem_bytes
    ROW_LINES = max(1, d * elem_bytes // 64)
    W = window[0] if window else 0
    WINDOWED = bool(W)  # TVMScript takes only bools in a conditional expression
    NEG = -5e4
    # pylint: disable=invalid-name,too-many-locals

    def last_len(info, b):
        return info[0, b] if W else info[b]

    def slot_of(j, info, b):
        return _window_slot(j, info, b) if W else j

    def n_keys(info, b, n_pages):
        return _cached_keys(n_pages, info, b, P, WINDOWED)

    def sees(info, b, n_pages, col):
        """The new token (row 0 of a one-token chunk) sees cached key ``col`` (always, without a window)."""
        return _sees_cached(col, n_keys(info, b, n_pages), 0, window) if W else True

    def sees_slot(info, b, n_pages, slot):
        """The same for the key in page slot ``slot`` (slots between the sinks and the window are empty)."""
        if not W:
            return True
        sink, offset = info[2, b], info[1, b]
        return tirx.all(tirx.any(slot < sink, slot >= offset),
                        sees(info, b, n_pages, T.if_then_else(slot < sink, slot, slot - offset + sink)))

    def split_pages(n_pages):
        """Pages per split: the pages over the splits, rounded up to whole tiles."""
        return T.truncdiv(T.truncdiv(n_pages + NS - 1, NS) + TP - 1, TP) * TP

    def lanes_of(vec_buf, idx, width):
        return vec_buf.vload(idx, f"float32x{width}")

    def pick(vectors, idx):
        return T.Shuffle(vectors, [int(i) for i in idx])

    half = lanes // 2
    LO = [i for i in range(half)] + [lanes + i for i in range(half)]  # low halves of two vectors
    HI = [half + i for i in range(half)] + [lanes + half + i for i in range(half)]

    QA = [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27]  # [k0 | k1] [k2 | k3] -> 4 partials per key
    QB = [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31]
    SWAP2 = [q * 4 + i for q in range(4) for i in (2, 3, 0, 1)]
    SWAP1 = [q * 4 + i for q in range(4) for i in (1, 0, 3, 2)]

    @T.macro
    def reduce_keys(acc, tq, g):
        """tq[g, 3, :KU] <- the KU keys' dot products: each key's ``lanes`` partial sums, added by halving
        shuffles that carry all KU keys in every vector (KU = 4: 17 operations for 4 keys instead of 4 x 9)."""
        if KU == 1:
            tq[g, 0, T.Ramp(0, 1, half)] = pick([lanes_of(acc, [g, 0, 0], lanes)], range(half)) + pick([lanes_of(acc, [g, 0, 0], lanes)], range(half, lanes))
            tq[g, 1, T.Ramp(0, 1, 4)] = pick([lanes_of(tq, [g, 0, 0], half)], range(4)) + pick([lanes_of(tq, [g, 0, 0], half)], range(4, 8))
            tq[g, 2, T.Ramp(0, 1, 2)] = pick([lanes_of(tq, [g, 1, 0], 4)], [0, 1]) + pick([lanes_of(tq, [g, 1, 0], 4)], [2, 3])
            tq[g, 3, 0] = tq[g, 2, 0] + tq[g, 2, 1]
        elif KU == 2:
            # [8 partials of key 0 | 8 of key 1] -> [4 | 4] -> [2 | 2] -> [1 | 1]
            tq[g, 0, T.Ramp(0, 1, lanes)] = pick([lanes_of(acc, [g, 0, 0], lanes), lanes_of(acc, [g, 1, 0], lanes)], LO) + pick([lanes_of(acc, [g, 0, 0], lanes), lanes_of(acc, [g, 1, 0], lanes)], HI)
            tq[g, 1, T.Ramp(0, 1, 8)] = pick([lanes_of(tq, [g, 0, 0], lanes)], [0, 1, 2, 3, 8, 9, 10, 11]) + pick([lanes_of(tq, [g, 0, 0], lanes)], [4, 5, 6, 7, 12, 13, 14, 15])
            tq[g, 2, T.Ramp(0, 1, 4)] = pick([lanes_of(tq, [g, 1, 0], 8)], [0, 1, 4, 5]) + pick([lanes_of(tq, [g, 1, 0], 8)], [2, 3, 6, 7])
            tq[g, 3, T.Ramp(0, 1, 2)] = pick([lanes_of(tq, [g, 2, 0], 4)], [0, 2]) + pick([lanes_of(tq, [g, 2, 0], 4)], [1, 3])
        else:
            # keys 0, 1 -> [8 | 8]; keys 2, 3 -> [8 | 8]; -> [4 | 4 | 4 | 4] -> pairs -> one lane per quarter
            tq[g, 0, T.Ramp(0, 1, lanes)] = pick([lanes_of(acc, [g, 0, 0], lanes), lanes_of(acc, [g, 1, 0], lanes)], LO) + pick([lanes_of(acc, [g, 0, 0], lanes), lanes_of(acc, [g, 1, 0], lanes)], HI)
            tq[g, 1, T.Ramp(0, 1, lanes)] = pick([lanes_of(acc, [g, 2, 0], lanes), lanes_of(acc, [g, 3, 0], lanes)], LO) + pick([lanes_of(acc, [g, 2, 0], lanes), lanes_of(acc, [g, 3, 0], lanes)], HI)
            tq[g, 2, T.Ramp(0, 1, lanes)] = pick([lanes_of(tq, [g, 0, 0], lanes), lanes_of(tq, [g, 1, 0], lanes)], QA) + pick([lanes_of(tq, [g, 0, 0], lanes), lanes_of(tq, [g, 1, 0], lanes)], QB)
            tq[g, 3, T.Ramp(0, 1, lanes)] = lanes_of(tq, [g, 2, 0], lanes) + pick([lanes_of(tq, [g, 2, 0], lanes)], SWAP2)
            tq[g, 2, T.Ramp(0, 1, lanes)] = lanes_of(tq, [g, 3, 0], lanes) + pick([lanes_of(tq, [g, 3, 0], lanes)], SWAP1)
            tq[g, 3, T.Ramp(0, 1, 4)] = pick([lanes_of(tq, [g, 2, 0], lanes)], [0, 4, 8, 12])

    @T.prim_func(s_tir=True)
    def batch_decode_paged_kv(
        Q_handle: T.handle,
        pages_handle: T.handle,
        page_table_indptr_handle: T.handle,
        page_table_values_handle: T.handle,
        var_length_info: T.handle,  # [b]: kv slots used in each sequence's last page ([3, b] windowed)
        k_rope_pos_offset_handle: T.handle,
        q_rope_position_handle: T.handle,
        output_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "global_symbol": "batch_decode_paged_kv_cpu" + ("_sliding_window" if WINDOWED else "")})
        B = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        Q = T.match_buffer(Q_handle, (B, h_q, d), dtype)
        pages = T.match_buffer(pages_handle, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_table_indptr = T.match_buffer(page_table_indptr_handle, (B + 1,), "int32", elem_offset=page_indptr_elem_offset)
        page_table_values = T.match_buffer(page_table_values_handle, (nnz_pages,), "int32", elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(k_rope_pos_offset_handle, (B,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(q_rope_position_handle, (B,), "int32", elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(output_handle, (B, h_q, d), dtype)
        lse = T.match_buffer(lse_handle, (B, h_q), "float32")
        info = T.match_buffer(var_length_info, (3, B) if WINDOWED else (B,), "int32", elem_offset=length_info_elem_offset)
        part_o = T.alloc_buffer((NS, h_q, d) if SPLIT else (1,), "float32")  # per split: normalised output
        part_l = T.alloc_buffer((NS, h_q) if SPLIT else (1,), "float32")  # and its log2-sum-exp

        for b in T.serial(B):
            for t in T.parallel(h_kv * NS):
                with T.sblock("attn"):
                    T.reads()  # opaque: the regions would name the Lets below
                    T.writes()
                    qv = T.sblock_alloc_buffer((GS, d), "float32")  # the scalar RoPE path's scaled queries
                    qs = T.sblock_alloc_buffer((GS, d), dtype)  # the group's queries (on the stack below 1 KiB: registers)
                    acc = T.sblock_alloc_buffer((GB, KU, lanes), "float32")  # < 1 KiB: registers
                    tq = T.sblock_alloc_buffer((GB, 4, lanes), "float32")  # the key sums' shuffle steps
                    red = T.sblock_alloc_buffer((GS, lanes), "float32")
                    sc = T.sblock_alloc_buffer((GS, TK), "float32")
                    o = T.sblock_alloc_buffer((GS, d), "float32")
                    ob = T.sblock_alloc_buffer((GB, d), "float32")  # < 1 KiB: on the stack, so in registers
                    m = T.sblock_alloc_buffer((GS,), "float32")
                    den = T.sblock_alloc_buffer((GS,), "float32")
                    mb = T.sblock_alloc_buffer((GS,), "float32")
                    sv = T.sblock_alloc_buffer((GS,), "float32")
                    hk: T.let[T.int32] = t // NS
                    s: T.let[T.int32] = t % NS
                    first: T.let[T.int32] = page_table_indptr[b]
                    n_pages: T.let[T.int32] = page_table_indptr[b + 1] - first
                    p0: T.let[T.int32] = T.min(s * split_pages(n_pages), n_pages)
                    p1: T.let[T.int32] = T.min(p0 + split_pages(n_pages), n_pages)
                    for g in T.unroll(GS):
                        m[g] = T.float32(NEG)
                        den[g] = T.float32(0.0)
                        for dd in T.vectorized(d):
                            o[g, dd] = T.float32(0)
                    if rotary_mode == 1:
                        # scalar path, one query head at a time (TVM's order of operations), first split only
                        if s == 0:
                            for g in T.serial(GS):
                                den[g] = T.float32(1.0)
                                for dd in T.serial(d):
                                    qv[g, dd] = T.Cast("float32", _rope(Q, q_rope_position[b], d, rope_theta, rope_scale, (b, hk * GS + g, dd), dtype, rope_scaling)) * (sm_scale * LOG2E)
                                for j in T.serial(n_keys(info, b, n_pages)):
                                    if sees(info, b, n_pages, j):
                                        sv[0] = T.float32(0)
                                        for dd in T.serial(d):
                                            sv[0] = sv[0] + qv[g, dd] * T.Cast("float32", _rope(pages, k_rope_pos_offset[b] + j, d, rope_theta, rope_scale, (page_table_values[first + slot_of(j, info, b) // P], 0, hk, slot_of(j, info, b) % P, dd), dtype, rope_scaling))
                                        mb[g] = T.max(m[g], sv[0])
                                        den[g] = den[g] * T.exp2(m[g] - mb[g]) + T.exp2(sv[0] - mb[g])
                                        for dd in T.vectorized(d):
                                            o[g, dd] = o[g, dd] * T.exp2(m[g] - mb[g]) + T.exp2(sv[0] - mb[g]) * T.Cast("float32", pages[page_table_values[first + slot_of(j, info, b) // P], 1, hk, slot_of(j, info, b) % P, dd])
                                        m[g] = mb[g]
                    else:
                        for g in T.unroll(GS):
                            for dd in T.vectorized(d):
                                qs[g, dd] = Q[b, hk * GS + g, dd]
                        for ti in T.serial(T.truncdiv(p1 - p0 + TP - 1, TP)):
                            for g in T.unroll(GS):
                                for j in T.vectorized(TK):
                                    sc[g, j] = T.float32(NEG)
                            # scores of the tile's keys, KU keys x GB heads at a time (each K row read once per head block)
                            for pj in T.serial(T.min(TP, p1 - p0 - ti * TP)):
                                page: T.let[T.int32] = page_table_values[first + p0 + ti * TP + pj]
                                nv: T.let[T.int32] = T.if_then_else(p0 + ti * TP + pj == n_pages - 1, last_len(info, b), P)
                                for jq in T.serial(T.truncdiv(nv + KU - 1, KU)):
                                    if PREFETCH:
                                        # these keys' K and V rows PD pages ahead (their lines arrive while PD pages are computed)
                                        for k in T.unroll(KU):
                                            for w in T.unroll(2):
                                                for ln in T.unroll(ROW_LINES):
                                                    T.evaluate(T.call_intrin("void", "tirx.prefetch", T.address_of(pages[page_table_values[first + T.min(p0 + ti * TP + pj + PD, n_pages - 1)], w, hk, jq * KU + k, ln * LINE_ELEMS]), 0, 3, 1))
                                    for gb in T.unroll(GS // GB):
                                        for g in T.unroll(GB):
                                            for k in T.unroll(KU):
                                                for l in T.vectorized(lanes):
                                                    acc[g, k, l] = T.float32(0)
                                        for c in T.unroll(DC):
                                            for g in T.unroll(GB):
                                                for k in T.unroll(KU):
                                                    for l in T.vectorized(lanes):
                                                        acc[g, k, l] = acc[g, k, l] + T.Cast("float32", qs[gb * GB + g, c * lanes + l]) * T.Cast("float32", pages[page, 0, hk, jq * KU + k, c * lanes + l])
                                        for g in T.unroll(GB):
                                            reduce_keys(acc, tq, g)
                                            for k in T.vectorized(KU):
                                                sc[gb * GB + g, pj * P + jq * KU + k] = T.if_then_else(tirx.all(jq * KU + k < nv, sees_slot(info, b, n_pages, (p0 + ti * TP + pj) * P + jq * KU + k)), tq[g, 3, k] * (sm_scale * LOG2E), T.float32(NEG))
                            # one online-softmax step per tile: weights sc <- 2^(s - m_new), 0 where masked
                            for g in T.unroll(GS):
                                for l in T.vectorized(lanes):
                                    red[g, l] = sc[g, l]
                                for jc in T.serial(TK // lanes - 1):
                                    for l in T.vectorized(lanes):
                                        red[g, l] = T.max(red[g, l], sc[g, (jc + 1) * lanes + l])
                                mb[g] = m[g]
                                for l in T.serial(lanes):
                                    mb[g] = T.max(mb[g], red[g, l])
                                for j in T.vectorized(TK):
                                    sc[g, j] = T.if_then_else(sc[g, j] > T.float32(NEG), exp2_poly(sc[g, j] - mb[g]), T.float32(0))
                                for l in T.vectorized(lanes):
                                    red[g, l] = sc[g, l]
                                for jc in T.serial(TK // lanes - 1):
                                    for l in T.vectorized(lanes):
                                        red[g, l] = red[g, l] + sc[g, (jc + 1) * lanes + l]
                                for l in T.vectorized(8):
                                    red[g, l] = red[g, l] + red[g, l + 8]
                                for l in T.vectorized(4):
                                    red[g, l] = red[g, l] + red[g, l + 4]
                                for l in T.vectorized(2):
                                    red[g, l] = red[g, l] + red[g, l + 2]
                                sv[g] = exp2_poly(m[g] - mb[g])
                                den[g] = den[g] * sv[g] + (red[g, 0] + red[g, 1])
                                for dd in T.vectorized(d):
                                    o[g, dd] = o[g, dd] * sv[g]
                                m[g] = mb[g]
                            # weighted V rows, GB heads at a time in registers (the tile's V rows stay in L1d)
                            for gb in T.unroll(GS // GB):
                                for g in T.unroll(GB):
                                    for dd in T.vectorized(d):
                                        ob[g, dd] = o[gb * GB + g, dd]
                                for pj in T.serial(T.min(TP, p1 - p0 - ti * TP)):
                                    page: T.let[T.int32] = page_table_values[first + p0 + ti * TP + pj]
                                    for j in T.serial(T.if_then_else(p0 + ti * TP + pj == n_pages - 1, last_len(info, b), P)):
                                        for g in T.unroll(GB):
                                            for dd in T.vectorized(d):
                                                ob[g, dd] = ob[g, dd] + sc[gb * GB + g, pj * P + j] * T.Cast("float32", pages[page, 1, hk, j, dd])
                                for g in T.unroll(GB):
                                    for dd in T.vectorized(d):
                                        o[gb * GB + g, dd] = ob[g, dd]
                    for g in T.unroll(GS):
                        if SPLIT:
                            for dd in T.vectorized(d):
                                part_o[s, hk * GS + g, dd] = T.if_then_else(den[g] > T.float32(0), o[g, dd] / den[g], T.float32(0))
                            part_l[s, hk * GS + g] = T.if_then_else(den[g] > T.float32(0), m[g] + T.log2(den[g]), T.float32(NEG))
                        else:
                            for dd in T.vectorized(d):
                                output[b, hk * GS + g, dd] = T.Cast(dtype, o[g, dd] / den[g])
                            lse[b, hk * GS + g] = m[g] + T.log2(den[g])
            if SPLIT:
                # merge the splits (TVM's merge-state formula): w_s = 2^(lse_s - max), o = sum w_s o_s / sum w_s
                for h in T.serial(h_q):
                    with T.sblock("merge"):
                        T.reads()
                        T.writes()
                        mo = T.sblock_alloc_buffer((d,), "float32")
                        mx = T.sblock_alloc_buffer((2,), "float32")
                        mx[0] = part_l[0, h]
                        for s in T.serial(NS - 1):
                            mx[0] = T.max(mx[0], part_l[s + 1, h])
                        mx[1] = T.float32(0)
                        for dd in T.vectorized(d):
                            mo[dd] = T.float32(0)
                        for s in T.serial(NS):
                            if part_l[s, h] > T.float32(NEG):
                                mx[1] = mx[1] + T.exp2(part_l[s, h] - mx[0])
                                for dd in T.vectorized(d):
                                    mo[dd] = mo[dd] + T.exp2(part_l[s, h] - mx[0]) * part_o[s, h, dd]
                        for dd in T.vectorized(d):
                            output[b, h, dd] = T.Cast(dtype, mo[dd] / mx[1])
                        lse[b, h] = mx[0] + T.log2(mx[1])

    from schedules.cpu.attention import _inline_lets  # pylint: disable=import-outside-toplevel

    return _inline_lets(batch_decode_paged_kv)


def _flash_prefill_tile(paged: bool, h_kv, h_q, d, dtype, rope_scaling, page_size, window,
                        rows_per_tile, keys_per_pass):
    """The tile loop of :func:`paged_prefill_cpu` and :func:`ragged_prefill_cpu`, as a ``T.macro``.

    One call computes one work item: a KV head and a tile of ``rows_per_tile`` query rows, i.e.
    ``QV = rows_per_tile * h_q / h_kv`` query vectors (every head of the group):

    * the tile's queries are staged once transposed (``qT[d, QV]``, scaled to log2 units) so that
      everything after runs along QV;
    * keys go a block of ``KB`` at a time (``loc[j]``: where key ``j`` of the block lives, found once
      per block: a page and slot, or a row of the ragged K/V); scores ``sT[KB, QV]`` take one broadcast
      of a K element per head-dim step for ``UJ`` keys at once (each qT vector load feeds UJ
      multiply-adds); under a causal mask (no window) the blocks past the tile's last visible key are
      not visited;
    * the online softmax is elementwise over the QV lanes (no horizontal reductions): block max,
      ``exp2`` through ``fast_math.exp2_poly``, rescale of the running sums;
    * ``o[QV, d] += p . V`` per query vector, vectorized along the head dim, accumulated in a small
      buffer of its own (its own stack slot, so LLVM keeps it in registers across the keys).

    Masks: causal as TVM's; with ``window = (W, S)`` (runtime_stubs/attention_window.py) a query sees the first S
    tokens of the sequence and the most recent W - S, itself included (paged: the sliding cache's
    sink/offset mapping of key positions to page slots). Masked keys weigh exactly 0. Numerics: base-2 online softmax
    from a phantom key of score -5e4 and value 0 (TVM's ``m = -5e4, d = 1``), lse in log2.
    """
    from tvm.relax.frontend.nn.llm._kernel_common import _rope  # pylint: disable=import-outside-toplevel

    GS = h_q // h_kv
    RQ = int(rows_per_tile)
    QV = RQ * GS
    KB = page_size
    P = page_size
    UJ = int(keys_per_pass)  # keys per scores pass: UJ * ceil(QV / lanes) accumulators
    assert KB % UJ == 0, (KB, UJ)
    W, S = window or (0, 0)
    RECENT = W - S  # tokens of the recent band, the query itself included
    NEG = -5e4
    # pylint: disable=invalid-name,too-many-locals

    def slot_of(j, length_info, b):
        return _window_slot(j, length_info, b) if W and paged else j

    def visible(causal, row, col, kv_len, qo_len, key_pos0):
        """Query ``row`` of the chunk sees key ``col``; ``key_pos0``: the sequence position of key 0."""
        full = T.if_then_else(causal > 0, col < kv_len - qo_len + row + 1, col < kv_len)
        if not W:
            return full
        if paged:  # the cached prefix, all before the chunk
            return tirx.all(col < kv_len, _sees_cached(col, kv_len, row, window))
        # the chunk's own keys (kv_len == qo_len): the band before the row, or a sink of the sequence
        return tirx.all(full, tirx.any(kv_len - qo_len + row - col < RECENT, key_pos0 + col < S))

    def keys_to_visit(causal, kv_len, qo_len, r0, n_rows):
        """Keys 0 .. n-1 hold every key the tile's rows can see (a windowed prefix: all of it)."""
        if W and paged:
            return kv_len
        return T.if_then_else(causal > 0, T.max(0, T.min(kv_len, kv_len - qo_len + r0 + n_rows)), kv_len)

    def kv_at(k_src, v_src, loc, j, which, hk, dd):
        """Element ``dd`` of the block's key (which 0) or value (1) ``j``."""
        if paged:
            return T.Cast("float32", k_src[loc[j, 0], which, hk, loc[j, 1], dd])
        src = k_src if which == 0 else v_src
        return T.Cast("float32", src[loc[j, 0], hk, dd])

    def key_rope(k_src, loc, pos, j, hk, dd, rope_theta, rope_scale):
        index = (loc[j, 0], 0, hk, loc[j, 1], dd) if paged else (loc[j, 0], hk, dd)
        return T.Cast("float32", _rope(k_src, pos, d, rope_theta, rope_scale, index, dtype, rope_scaling))

    @T.macro
    def tile(q, q_indptr, k_src, v_src, page_values, length_info, k_rope_pos_offset, q_rope_position, output, lse,
             b, item, first, kv_len, causal, rotary_mode, rope_scale, rope_theta, sm_scale):
        with T.sblock("attn"):
            T.reads()  # opaque: the regions would name the Lets below
            T.writes()
            qT = T.sblock_alloc_buffer((d, QV), "float32")
            o = T.sblock_alloc_buffer((QV, d), "float32")
            sT = T.sblock_alloc_buffer((KB, QV), "float32")
            sacc = T.sblock_alloc_buffer((UJ, QV), "float32")
            oacc = T.sblock_alloc_buffer((d,), "float32")
            kr = T.sblock_alloc_buffer((d,), "float32")
            loc = T.sblock_alloc_buffer((KB, 2), "int32")
            m = T.sblock_alloc_buffer((QV,), "float32")
            mb = T.sblock_alloc_buffer((QV,), "float32")
            den = T.sblock_alloc_buffer((QV,), "float32")
            alpha = T.sblock_alloc_buffer((QV,), "float32")
            hk: T.let[T.int32] = item % h_kv
            q0: T.let[T.int32] = q_indptr[b]
            qo_len: T.let[T.int32] = q_indptr[b + 1] - q0
            n_tiles: T.let[T.int32] = T.ceildiv(qo_len, RQ)
            # tiles in zigzag order (0, n-1, 1, n-2, ...): the parallel loop hands each thread a
            # contiguous range of items, and under a causal mask a tile's work grows with its rows
            t: T.let[T.int32] = item // h_kv
            r0: T.let[T.int32] = T.if_then_else(t % 2 == 0, t // 2, n_tiles - 1 - t // 2) * RQ
            n_rows: T.let[T.int32] = T.min(RQ, qo_len - r0)
            # keys past the tile's last visible one (causal) are never visited
            n_keys: T.let[T.int32] = keys_to_visit(causal, kv_len, qo_len, r0, n_rows)
            for r in T.serial(RQ):
                for g in T.serial(GS):
                    for dd in T.serial(d):
                        qT[dd, r * GS + g] = T.if_then_else(
                            r < n_rows,
                            T.if_then_else(
                                rotary_mode == 1,
                                T.Cast("float32", _rope(q, q_rope_position[q0 + r0 + T.min(r, n_rows - 1)], d, rope_theta, rope_scale, (q0 + r0 + T.min(r, n_rows - 1), hk * GS + g, dd), dtype, rope_scaling)),
                                T.Cast("float32", q[q0 + r0 + T.min(r, n_rows - 1), hk * GS + g, dd]),
                            ) * (sm_scale * LOG2E),
                            T.float32(0),
                        )
            for l in T.vectorized(QV):
                m[l] = T.float32(NEG)
                den[l] = T.float32(1)
            for qv in T.serial(QV):
                for dd in T.vectorized(d):
                    o[qv, dd] = T.float32(0)
            for kb in T.serial(T.ceildiv(n_keys, KB)):
                # where the block's keys live (clamped into the sequence; masked past kv_len)
                for j in T.serial(KB):
                    if paged:
                        loc[j, 0] = page_values[first + slot_of(T.min(kb * KB + j, kv_len - 1), length_info, b) // P]
                        loc[j, 1] = slot_of(T.min(kb * KB + j, kv_len - 1), length_info, b) % P
                    else:
                        loc[j, 0] = first + T.min(kb * KB + j, kv_len - 1)
                        loc[j, 1] = 0
                # scores sT[j, qv], UJ keys per pass
                for jj in T.serial(KB // UJ):
                    for u in T.unroll(UJ):
                        for l in T.vectorized(QV):
                            sacc[u, l] = T.float32(0)
                    if rotary_mode == 1:
                        for u in T.serial(UJ):
                            for dd in T.serial(d):
                                kr[dd] = key_rope(k_src, loc, k_rope_pos_offset[b] + T.min(kb * KB + jj * UJ + u, kv_len - 1), jj * UJ + u, hk, dd, rope_theta, rope_scale)
                            for dd in T.serial(d):
                                for l in T.vectorized(QV):
                                    sacc[u, l] = sacc[u, l] + kr[dd] * qT[dd, l]
                    else:
                        for dd in T.serial(d):
                            for u in T.unroll(UJ):
                                for l in T.vectorized(QV):
                                    sacc[u, l] = sacc[u, l] + kv_at(k_src, v_src, loc, jj * UJ + u, 0, hk, dd) * qT[dd, l]
                    for u in T.unroll(UJ):
                        for l in T.vectorized(QV):
                            sT[jj * UJ + u, l] = T.if_then_else(visible(causal, r0 + l // GS, kb * KB + jj * UJ + u, kv_len, qo_len, k_rope_pos_offset[b]), sacc[u, l], T.float32(NEG))
                # online softmax over the block, elementwise along the query vectors
                for l in T.vectorized(QV):
                    mb[l] = m[l]
                for j in T.serial(KB):
                    for l in T.vectorized(QV):
                        mb[l] = T.max(mb[l], sT[j, l])
                for l in T.vectorized(QV):
                    alpha[l] = exp2_poly(m[l] - mb[l])
                    den[l] = den[l] * alpha[l]
                    m[l] = mb[l]
                for j in T.serial(KB):
                    for l in T.vectorized(QV):
                        sT[j, l] = T.if_then_else(sT[j, l] > T.float32(NEG), exp2_poly(sT[j, l] - mb[l]), T.float32(0))
                        den[l] = den[l] + sT[j, l]
                # o += p . V, one query vector at a time
                for qv in T.serial(QV):
                    for dd in T.vectorized(d):
                        oacc[dd] = o[qv, dd] * alpha[qv]
                    for j in T.serial(KB):
                        for dd in T.vectorized(d):
                            oacc[dd] = oacc[dd] + sT[j, qv] * kv_at(k_src, v_src, loc, j, 1, hk, dd)
                    for dd in T.vectorized(d):
                        o[qv, dd] = oacc[dd]
            for r in T.serial(n_rows):
                for g in T.serial(GS):
                    for dd in T.vectorized(d):
                        output[q0 + r0 + r, hk * GS + g, dd] = T.Cast(dtype, o[r * GS + g, dd] / den[r * GS + g])
                    lse[q0 + r0 + r, hk * GS + g] = m[r * GS + g] + T.log2(den[r * GS + g])

    return tile


def paged_prefill_cpu(h_kv, h_q, d, dtype, sliding_window: bool, rope_scaling, page_size=16,
                      window=None, rows_per_tile=4, keys_per_pass=2):
    """Drop-in for TVM's ``_attention_prefill_cpu`` (a prefill chunk attending to the paged cache).

    The paged KV cache runs it for every prefill chunk after the first (the chunk over the cached
    prefix; the chunk over itself is :func:`ragged_prefill_cpu`; the two are merged). TVM's kernel is
    scalar, one query head at a time, and walks the whole page pool (``max_num_pages * page_size``
    slots, masked) for every query row. This one runs the tiles of :func:`_flash_prefill_tile` in
    parallel, reading keys straight from their pages one page per block. ``rows_per_tile`` and
    ``keys_per_pass`` come from ``CPUParams.attention_prefill_tile`` (registers, L1d). The sliding
    variant (``sliding_window``, the cache's sink/window page layout) needs the model's ``window``.
    """
    assert not sliding_window or window, "the sliding-window variant needs the model's (window, sinks)"
    RQ = int(rows_per_tile)
    P = page_size
    tile = _flash_prefill_tile(True, h_kv, h_q, d, dtype, rope_scaling, page_size,
                               window if sliding_window else None, rows_per_tile, keys_per_pass)
    global_symbol = "batch_prefill_paged_kv_cpu" + ("_sliding_window" if sliding_window else "")
    # pylint: disable=invalid-name,too-many-locals

    def kv_len_of(page_indptr, length_info, b):
        return _cached_keys(page_indptr[b + 1] - page_indptr[b], length_info, b, P, sliding_window)

    @T.prim_func(s_tir=True)
    def batch_prefill_paged_kv_cpu(
        var_q: T.handle,  # [total_len, h_q, d]
        var_q_indptr: T.handle,  # [batch_size + 1]
        var_pages: T.handle,  # [max_num_pages, 2, h_kv, page_size, d]
        var_page_indptr: T.handle,  # [batch_size + 1]
        var_page_values: T.handle,  # [nnz_pages]
        var_length_info: T.handle,  # [b], or [3, b] with a sliding window
        var_k_rope_pos_offset: T.handle,  # [b]
        var_q_rope_position: T.handle,  # [total_len]
        var_output: T.handle,  # [total_len, h_q, d]
        var_lse: T.handle,  # [total_len, h_q]
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True, "global_symbol": global_symbol})
        batch_size = T.int32()
        total_len = T.int32()
        nnz_pages = T.int32()
        max_num_pages = T.int32()
        q_indptr_elem_offset = T.int32()
        page_indptr_elem_offset = T.int32()
        page_values_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        length_info_elem_offset = T.int32()

        q = T.match_buffer(var_q, (total_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        pages = T.match_buffer(var_pages, (max_num_pages, 2, h_kv, page_size, d), dtype)
        page_indptr = T.match_buffer(var_page_indptr, (batch_size + 1,), "int32", elem_offset=page_indptr_elem_offset)
        page_values = T.match_buffer(var_page_values, (nnz_pages,), "int32", elem_offset=page_values_elem_offset)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (total_len,), "int32", elem_offset=q_rope_position_elem_offset)
        output = T.match_buffer(var_output, (total_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (total_len, h_q), "float32")
        length_info = T.match_buffer(var_length_info, (3, batch_size) if sliding_window else (batch_size,), "int32",
                                     elem_offset=length_info_elem_offset)

        for b in T.serial(batch_size):
            for item in T.parallel(h_kv * T.ceildiv(q_indptr[b + 1] - q_indptr[b], RQ)):
                tile(q, q_indptr, pages, pages, page_values, length_info, k_rope_pos_offset, q_rope_position, output,
                     lse, b, item, page_indptr[b], kv_len_of(page_indptr, length_info, b), causal, rotary_mode,
                     rope_scale, rope_theta, sm_scale)

    from schedules.cpu.attention import _inline_lets  # pylint: disable=import-outside-toplevel

    return _inline_lets(batch_prefill_paged_kv_cpu)


def ragged_prefill_cpu(h_kv, h_q, d, dtype, rope_scaling, page_size=16, rows_per_tile=4, keys_per_pass=2,
                       window=None):
    """Drop-in for TVM's ``_attention_prefill_ragged_cpu`` (attention of a prefill chunk over its own keys).

    TVM's kernel is one serial scalar loop nest (one thread) and scores every masked key too. This one
    runs the tiles of :func:`_flash_prefill_tile` in parallel over the chunk's contiguous K/V rows,
    ``page_size`` keys per block, visiting only the blocks a tile's causal mask leaves visible.
    In-kernel RoPE (rotary_mode 1; our cache applies RoPE before attention, mode 0) is kept. With the
    model's ``window = (W, S)``, a row sees the W - S most recent keys and the sequence's first S.
    """
    RQ = int(rows_per_tile)
    tile = _flash_prefill_tile(False, h_kv, h_q, d, dtype, rope_scaling, page_size, window, rows_per_tile, keys_per_pass)
    # pylint: disable=invalid-name,too-many-locals

    @T.prim_func(s_tir=True)
    def batch_prefill_ragged_kv(
        var_q: T.handle,  # [total_len, h_q, d]
        var_q_indptr: T.handle,  # [batch_size + 1]
        var_k: T.handle,  # [total_len, h_kv, d]
        var_v: T.handle,  # [total_len, h_kv, d]
        var_kv_indptr: T.handle,  # [batch_size + 1]
        var_q_rope_position: T.handle,  # [total_q_len]
        var_k_rope_pos_offset: T.handle,  # [b]
        var_output: T.handle,  # [total_len, h_q, d]
        var_lse: T.handle,  # [total_len, h_q]
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ):
        T.func_attr({"tirx.is_scheduled": True})
        batch_size = T.int32()
        qo_len = T.int32()
        kv_len = T.int32()
        q_indptr_elem_offset = T.int32()
        kv_indptr_elem_offset = T.int32()
        q_rope_position_elem_offset = T.int32()
        k_rope_pos_offset_elem_offset = T.int32()

        q = T.match_buffer(var_q, (qo_len, h_q, d), dtype)
        q_indptr = T.match_buffer(var_q_indptr, (batch_size + 1,), "int32", elem_offset=q_indptr_elem_offset)
        k = T.match_buffer(var_k, (kv_len, h_kv, d), dtype)
        v = T.match_buffer(var_v, (kv_len, h_kv, d), dtype)
        kv_indptr = T.match_buffer(var_kv_indptr, (batch_size + 1,), "int32", elem_offset=kv_indptr_elem_offset)
        q_rope_position = T.match_buffer(var_q_rope_position, (qo_len,), "int32", elem_offset=q_rope_position_elem_offset)
        k_rope_pos_offset = T.match_buffer(var_k_rope_pos_offset, (batch_size,), "int32", elem_offset=k_rope_pos_offset_elem_offset)
        output = T.match_buffer(var_output, (qo_len, h_q, d), dtype)
        lse = T.match_buffer(var_lse, (qo_len, h_q), "float32")

        for b in T.serial(batch_size):
            for item in T.parallel(h_kv * T.ceildiv(q_indptr[b + 1] - q_indptr[b], RQ)):
                tile(q, q_indptr, k, v, None, None, k_rope_pos_offset, q_rope_position, output, lse, b, item,
                     kv_indptr[b], kv_indptr[b + 1] - kv_indptr[b], causal, rotary_mode, rope_scale, rope_theta,
                     sm_scale)

    # the RoPE's float Lets inside a parallel loop break TVM 0.27's LLVM codegen: inline them
    from schedules.cpu.attention import _inline_lets  # pylint: disable=import-outside-toplevel

    return _inline_lets(batch_prefill_ragged_kv)


def fused_rope_cpu(theta, scale, head_dim, num_q_heads, num_kv_heads, dtype, rope_scaling, rotary_dim=None):
    """Drop-in for TVM's ``llama_rope_with_position_map`` (split fused qkv into q, k, v and rotate q and k),
    or None where its rope type is not the Llama (rotate-half) form handled here.

    TVM's kernel evaluates the frequency (a ``pow``, plus the llama3 smoothing) and its ``cos`` and ``sin``
    for every element, i.e. once per head: three libm calls per element, 40 heads x 64 dims per token and
    layer on the 1B shape. This one evaluates the same expressions (TVM's own frequency functions) once
    per position and dim into a small table and rotates every head from it, vectorized along the dim."""
    from tvm.relax.frontend.nn.llm.position_embedding import switch_rope_freq_func  # pylint: disable=import-outside-toplevel

    if rope_scaling.get("rope_type") in ("gptj", "longrope"):
        return None
    rd = rotary_dim or head_dim
    half = rd // 2
    nq, nkv = num_q_heads, num_kv_heads
    fused_heads = nq + 2 * nkv

    def freq(pos, d, which):
        cos_f, sin_f, var_map = switch_rope_freq_func(rope_scaling)(pos * tirx.const(scale, "float32"), d, rd, theta, "float32")
        expr = (cos_f if which == 0 else sin_f).astype("float32")
        for var, value in var_map.items():
            expr = tirx.Let(var, value, expr)
        return expr

    def rot_lo(x, cs, sn, s, h, d):  # dims d < rotary_dim / 2: x cos - x[d + half] sin (as TVM's _rope)
        return cs[d] * x[s, h, d].astype("float32") + sn[d] * (-x[s, h, d + half]).astype("float32")

    def rot_hi(x, cs, sn, s, h, d):  # dim d + half: x cos + x[d] sin
        return cs[d + half] * x[s, h, d + half].astype("float32") + sn[d + half] * x[s, h, d].astype("float32")

    # pylint: disable=invalid-name
    @T.prim_func(s_tir=True)
    def fused_rope(var_qkv: T.handle, var_position_map: T.handle, var_q: T.handle, var_k: T.handle, var_v: T.handle, apply_rope: T.int64):
        T.func_attr({"op_pattern": 8, "tirx.noalias": True, "tirx.is_scheduled": True})
        seq_len = T.int32()
        position_map_elem_offset = T.int32()
        qkv = T.match_buffer(var_qkv, (seq_len, fused_heads, head_dim), dtype)
        q = T.match_buffer(var_q, (seq_len, nq, head_dim), dtype)
        k = T.match_buffer(var_k, (seq_len, nkv, head_dim), dtype)
        v = T.match_buffer(var_v, (seq_len, nkv, head_dim), dtype)
        position_map = T.match_buffer(var_position_map, (seq_len,), "int32", elem_offset=position_map_elem_offset)
        for s in T.serial(seq_len):
            with T.sblock("rope"):
                T.reads()
                T.writes()
                cs = T.sblock_alloc_buffer((rd,), "float32")
                sn = T.sblock_alloc_buffer((rd,), "float32")
                for d in T.serial(rd):
                    cs[d] = T.if_then_else(apply_rope > 0, freq(position_map[s], d, 0), T.float32(1))
                    sn[d] = T.if_then_else(apply_rope > 0, freq(position_map[s], d, 1), T.float32(0))
                for h in T.serial(nq):
                    for d in T.vectorized(half):
                        q[s, h, d] = T.Cast(dtype, rot_lo(qkv, cs, sn, s, h, d))
                        q[s, h, d + half] = T.Cast(dtype, rot_hi(qkv, cs, sn, s, h, d))
                    for d in T.serial(head_dim - rd):
                        q[s, h, rd + d] = qkv[s, h, rd + d]
                for h in T.serial(nkv):
                    for d in T.vectorized(half):
                        k[s, h, d] = T.Cast(dtype, rot_lo(qkv, cs, sn, s, nq + h, d))
                        k[s, h, d + half] = T.Cast(dtype, rot_hi(qkv, cs, sn, s, nq + h, d))
                    for d in T.serial(head_dim - rd):
                        k[s, h, rd + d] = qkv[s, nq + h, rd + d]
                for h in T.serial(nkv):
                    for d in T.vectorized(head_dim):
                        v[s, h, d] = qkv[s, nq + nkv + h, d]

    from schedules.cpu.attention import _inline_lets  # pylint: disable=import-outside-toplevel

    return _inline_lets(fused_rope)


@contextlib.contextmanager
def fast_cpu_attention(target: Target, params=None, window=None):
    """While active, TIRPagedKVCache built for a CPU ``target`` uses :func:`ragged_prefill_cpu`,
    :func:`paged_prefill_cpu` (tiles from ``params``, the build's ``CPUParams``) and
    :func:`paged_decode_cpu` (head dims that are multiples of 16; TVM's kernels otherwise) and
    :func:`fused_rope_cpu` (Llama-form RoPE). ``window = (W, S)``: the model's sliding window and
    attention sinks (runtime_stubs/attention_window.py): every kernel masks to it, the sliding variants are ours
    (without a window they are never run, and stay TVM's)."""
    from tvm.relax.frontend.nn.llm import kv_cache  # pylint: disable=import-outside-toplevel

    if Target(target).kind.name != "llvm":
        yield
        return
    if params is None:
        from schedules.cpu.params import CPUParams  # pylint: disable=import-outside-toplevel

        params = CPUParams.for_build(Target(target))
    original_prefill = kv_cache._attention_prefill_ragged_cpu
    original_paged_prefill = kv_cache._attention_prefill_cpu
    original_decode = kv_cache._attention_decode_cpu

    def make_prefill(h_kv, h_q, d_qk, d_v, dtype, rope_scaling):
        if d_qk % 16 or d_v != d_qk:
            assert not window, "windowed attention needs a head dim that is a multiple of 16"
            return original_prefill(h_kv, h_q, d_qk, d_v, dtype, rope_scaling)
        rows, keys = params.attention_prefill_tile(d_qk, h_q // h_kv)
        return ragged_prefill_cpu(h_kv, h_q, d_qk, dtype, rope_scaling, rows_per_tile=rows, keys_per_pass=keys,
                                  window=window)

    def make_paged_prefill(h_kv, h_q, d, dtype, sliding_window, rope_scaling, page_size=16, sliding_window_size=1024):
        if d % 16 or page_size % 8 or (sliding_window and not window):
            return original_paged_prefill(h_kv, h_q, d, dtype, sliding_window, rope_scaling, page_size, sliding_window_size)
        rows, keys = params.attention_prefill_tile(d, h_q // h_kv)
        return paged_prefill_cpu(h_kv, h_q, d, dtype, sliding_window, rope_scaling, page_size,
                                 window=window if sliding_window else None, rows_per_tile=rows, keys_per_pass=keys)

    def make_decode(h_kv, h_q, d, dtype, sliding_window, rope_scaling, page_size=16):
        if d % 16 or (sliding_window and not window):
            return original_decode(h_kv, h_q, d, dtype, sliding_window, rope_scaling, page_size)
        tiling = params.attention_decode_tiling(d, h_q // h_kv, h_kv, tvm.DataType(dtype).bits // 8, page_size)
        return paged_decode_cpu(h_kv, h_q, d, dtype, rope_scaling, page_size, window=window if sliding_window else None,
                                pages_per_tile=tiling["tile_pages"], splits=tiling["splits"],
                                prefetch=tiling["prefetch_pages"], heads_per_block=tiling["heads_per_block"],
                                keys_per_reduction=tiling["keys_per_reduction"])

    original_rope = kv_cache.llama_rope_with_position_map

    def make_rope(*args, **kwargs):
        return fused_rope_cpu(*args, **kwargs) or original_rope(*args, **kwargs)

    kv_cache._attention_prefill_ragged_cpu = make_prefill
    kv_cache._attention_prefill_cpu = make_paged_prefill
    kv_cache._attention_decode_cpu = make_decode
    kv_cache.llama_rope_with_position_map = make_rope
    try:
        yield
    finally:
        kv_cache._attention_prefill_ragged_cpu = original_prefill
        kv_cache._attention_prefill_cpu = original_paged_prefill
        kv_cache._attention_decode_cpu = original_decode
        kv_cache.llama_rope_with_position_map = original_rope
