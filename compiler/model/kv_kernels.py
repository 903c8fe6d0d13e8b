"""Replacements for TVM KV-cache kernels that are wrong on some GPUs.

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

from tvm.script import tirx as T
from tvm.target import Target


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
