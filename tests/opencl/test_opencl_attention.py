"""The paged-KV-cache kernels of the tiny Llama 3 (TVM's TIRPagedKVCache, as compiled into the
model for Adreno 750) driven by hand with a page table, compared with numpy.

The attention_with_fused_qkv path of one sequence, step by step, as the KV cache runtime chains
it: split the fused QKV and apply RoPE (tir_split_rotary), append K/V to the pages
(kv_cache_transpose_append), then attention -- ragged causal prefill over the new tokens, paged
prefill for a later chunk, paged decode -- and the merge of two partial attentions
(tir_attention_merge_state).  Pages are deliberately not contiguous (page table [3, 0, 5]).
"""

from __future__ import annotations

import numpy as np
import pytest

import opencl_cases as oc
from targets.backends.opencl import run_function

H, HKV, D, PS = oc.HEADS, oc.KV_HEADS, oc.HEAD_DIM, oc.PAGE_SIZE
PAGE_TABLE = np.array([3, 0, 5], np.int32)
NUM_PAGES = 6
N = 37  # prompt tokens: pages 3, 0 full, 5 holding 5 tokens


@pytest.fixture(scope="module")
def model():
    build, spec = oc.tiny_model_build()
    return build, spec


def _slot(t: int) -> int:
    return int(PAGE_TABLE[t // PS]) * PS + t % PS


def _rope_args(spec):
    return dict(rope_scale=1.0, rope_theta=float(spec.rope_theta), sm_scale=D**-0.5)


def _split_rotary(build, device, qkv, positions):
    n = qkv.shape[0]
    q = np.zeros((n, H, D), np.float16)
    k = np.zeros((n, HKV, D), np.float16)
    v = np.zeros((n, HKV, D), np.float16)
    _, _, q, k, v, _ = run_function(build, "tir_split_rotary", [qkv, positions, q, k, v, 1], device)
    return q, k, v


def _append(build, device, pages, k, v, slots):
    return run_function(build, "kv_cache_transpose_append", [pages, k, v, slots], device)[0]


@pytest.fixture(scope="module")
def prompt(model, device):
    """A prompt of N tokens split, roped and appended: (qkv, q, k, v, pages)."""
    build, spec = model
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((N, H + 2 * HKV, D)).astype(np.float16)
    q, k, v = _split_rotary(build, device, qkv, np.arange(N, dtype=np.int32))
    pages = np.zeros((NUM_PAGES, 2, HKV, PS, D), np.float16)
    pages = _append(build, device, pages, k, v, np.array([_slot(t) for t in range(N)], np.int32))
    return qkv, q, k, v, pages


def test_split_rotary_applies_llama3_rope(model, prompt):
    _, spec = model
    qkv, q, k, v, _ = prompt
    inv = oc.llama3_inv_freq(D, spec.rope_theta, spec.rope_scaling)
    pos = np.arange(N)
    oc.assert_close_f16(q, oc.apply_rope(qkv[:, :H], pos, inv), rel=5e-3, what="q rope")
    oc.assert_close_f16(k, oc.apply_rope(qkv[:, H : H + HKV], pos, inv), rel=5e-3, what="k rope")
    np.testing.assert_array_equal(v, qkv[:, H + HKV :])


def test_transpose_append_fills_the_page_table(prompt):
    _, _, k, v, pages = prompt
    for t in range(N):
        page, off = PAGE_TABLE[t // PS], t % PS
        np.testing.assert_array_equal(pages[page, 0, :, off], k[t])
        np.testing.assert_array_equal(pages[page, 1, :, off], v[t])
    assert not pages[[1, 2, 4]].any() and not pages[5, :, :, N % PS :].any()  # nothing else written


def test_prefill_ragged_causal(model, device, prompt):
    build, spec = model
    _, q, k, v, _ = prompt
    indptr = np.array([0, N], np.int32)
    out = np.zeros((N, H, D), np.float16)
    lse = np.zeros((N, H), np.float32)
    a = _rope_args(spec)
    res = run_function(build, "tir_attention_prefill_ragged", [
        q, indptr, k, v, indptr, np.arange(N, dtype=np.int32), np.zeros(1, np.int32), out, lse,
        1, 0, a["rope_scale"], a["rope_theta"], a["sm_scale"],
    ], device)  # fmt: skip
    ref, ref_lse = oc.attention(q, k, v, a["sm_scale"])
    oc.assert_close_f16(res[7], ref, what="prefill ragged output")
    np.testing.assert_allclose(res[8], ref_lse, atol=2e-2)


@pytest.mark.parametrize("causal", [0, 1])
def test_prefill_paged_later_chunk(model, device, prompt, causal):
    """A later prefill chunk: the last 5 prompt tokens attend over the pages.

    causal=0 is what the KV cache runtime does for a prefill that meets a cache: cross-attention of
    the new tokens to the 32 cached ones (pages [3, 0]), merged afterwards with their ragged
    self-attention; causal=1 attends over all N tokens already appended (pages [3, 0, 5]).
    """
    build, spec = model
    _, q, k, v, pages = prompt
    m = 5
    kv = N - m if causal == 0 else N  # 32: two full pages
    npages = -(-kv // PS)
    out = np.zeros((m, H, D), np.float16)
    lse = np.zeros((m, H), np.float32)
    a = _rope_args(spec)
    res = run_function(build, "tir_attention_prefill", [
        q[N - m :], np.array([0, m], np.int32), pages, np.array([0, npages], np.int32), PAGE_TABLE[:npages],
        np.array([kv - (npages - 1) * PS], np.int32), np.zeros(1, np.int32), np.arange(N - m, N, dtype=np.int32),
        out, lse, causal, 0, a["rope_scale"], a["rope_theta"], a["sm_scale"],
    ], device)  # fmt: skip
    ref, ref_lse = oc.attention(q[N - m :], k[:kv], v[:kv], a["sm_scale"], causal=bool(causal))
    oc.assert_close_f16(res[8], ref, what=f"paged prefill output (causal={causal})")
    np.testing.assert_allclose(res[9], ref_lse, atol=2e-2)


def test_decode_after_prompt(model, device, prompt):
    """One decode step: split + rope at position N, append to page 5, attend over N + 1 tokens."""
    build, spec = model
    _, _, k, v, pages = prompt
    rng = np.random.default_rng(2)
    qkv1 = rng.standard_normal((1, H + 2 * HKV, D)).astype(np.float16)
    q1, k1, v1 = _split_rotary(build, device, qkv1, np.array([N], np.int32))
    pages = _append(build, device, pages, k1, v1, np.array([_slot(N)], np.int32))
    out = np.zeros((1, H, D), np.float16)
    lse = np.zeros((1, H), np.float32)
    a = _rope_args(spec)
    res = run_function(build, "tir_attention_decode", [
        q1, pages, np.array([0, 3], np.int32), PAGE_TABLE, np.array([N + 1 - 2 * PS], np.int32),
        np.zeros(1, np.int32), np.array([N], np.int32), out, lse, 0, a["rope_scale"], a["rope_theta"], a["sm_scale"],
    ], device)  # fmt: skip
    ref, ref_lse = oc.attention(q1, np.concatenate([k, k1]), np.concatenate([v, v1]), a["sm_scale"])
    oc.assert_close_f16(res[7], ref, what="decode output")
    np.testing.assert_allclose(res[8], ref_lse, atol=2e-2)


def test_merge_state(model, device, prompt):
    """Merging attention over keys [0, 20) with attention over [20, N) gives attention over all.

    TVM's own merge_state kernel (_merge_state_inplace) has every threadIdx.x lane of a (row, head)
    read S[row, head] and then write it back merged, with no barrier in between: it is correct only
    when those lanes run in lockstep (one GPU subgroup).  A CPU driver that runs work-items one
    after another (pocl) lets lane 0 overwrite S before lane 1 reads it, so only the first lane
    (d < VEC) of each row/head comes out right.  A build with that barrier-free kernel is an
    expected failure here; a kernel with a barrier (the race-free replacement of
    compiler/model/kv_kernels.py) must be right everywhere.
    """
    build, spec = model
    _, q, k, v, _ = prompt
    sm = _rope_args(spec)["sm_scale"]
    q4 = q[-4:]
    o1, s1 = oc.attention(q4, k[:20], v[:20], sm, causal=False)
    o2, s2 = oc.attention(q4, k[20:], v[20:], sm, causal=False)
    args = [o1.astype(np.float16), s1, o2.astype(np.float16), s2]
    res = run_function(build, "tir_attention_merge_state", args, device)
    ref, ref_lse = oc.attention(q4, k, v, sm, causal=False)
    kernel = build.kernel("tir_attention_merge_state_kernel")
    vec = D // int(kernel.thread_extents["threadIdx.x"])
    oc.assert_close_f16(res[0][..., :vec], ref[..., :vec], what="merged output, first lane")
    # the model swaps TVM's racy merge_state (no barrier between the read and the write of S) for
    # compiler/model/kv_kernels.py on GPU targets: the built kernel must carry that barrier
    assert "barrier(" in kernel.source or int(kernel.thread_extents["threadIdx.x"]) == 1
    oc.assert_close_f16(res[0], ref, what="merged output")
    np.testing.assert_allclose(res[1], ref_lse, atol=2e-2)
