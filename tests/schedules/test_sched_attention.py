"""Parallel heads in the paged-KV-cache CPU attention kernels: same outputs as TVM's serial kernels (and a numpy
reference), the head loop parallel, and the prefill kernel picked up by cpu_rules."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from sched_helpers import host_target, schedule_module
from tvm.relax.frontend.nn.llm import kv_cache as kvc

from schedules.cpu.attention import ParallelizeCPUAttention, parallelize_attention

TARGET = host_target()
HQ, HKV, D, PAGE = 4, 2, 32, 16


def _build(func):
    name = str(func.attrs["global_symbol"])
    return tvm.compile(tvm.IRModule({name: func}), target=TARGET)[name]


def _pages(rng, num_pages=4):
    return rng.standard_normal((num_pages, 2, HKV, PAGE, D)).astype(np.float32)


def _reference(q, pages, page_ids, kv_len, sm_scale, causal_offset=None):
    """q [n, HQ, D] attends to the first kv_len rows of the sequence's pages; causal when causal_offset is given
    (query i sees rows < causal_offset + i + 1)."""
    rows_k = np.concatenate([pages[p, 0] for p in page_ids], axis=1)[:, :kv_len]  # [HKV, L, D]
    rows_v = np.concatenate([pages[p, 1] for p in page_ids], axis=1)[:, :kv_len]
    out = np.zeros_like(q)
    for i in range(q.shape[0]):
        for h in range(HQ):
            s = rows_k[h // (HQ // HKV)] @ q[i, h] * sm_scale
            if causal_offset is not None:
                s[causal_offset + i + 1 :] = -np.inf
            p = np.exp(s - s.max())
            out[i, h] = (p / p.sum()) @ rows_v[h // (HQ // HKV)]
    return out


def test_decode_parallel_heads_bit_identical():
    f = kvc._attention_decode_cpu(HKV, HQ, D, "float32", False, {})
    g = parallelize_attention(f)
    assert g is not None and "T.parallel(" in g.script()
    assert parallelize_attention(g) is None  # idempotent
    rng = np.random.default_rng(0)
    dev = tvm.cpu()
    pages = _pages(rng)
    page_ids, last = [2, 0, 1], 5
    kv_len = (len(page_ids) - 1) * PAGE + last
    q = rng.standard_normal((1, HQ, D)).astype(np.float32)
    sm = 1.0 / np.sqrt(D)
    fns = (_build(f), _build(g))
    for rotary_mode in (0, 1):  # 1: RoPE applied inside the kernel (the inlined float Let)
        outs = []
        for fn in fns:
            o = tvm.runtime.tensor(np.zeros((1, HQ, D), np.float32), dev)
            lse = tvm.runtime.tensor(np.zeros((1, HQ), np.float32), dev)
            args = [q, pages, np.array([0, 3], np.int32), np.array(page_ids, np.int32), np.array([last], np.int32),
                    np.array([0], np.int32), np.array([kv_len], np.int32)]
            fn(*[tvm.runtime.tensor(a, dev) for a in args], o, lse, rotary_mode, 1.0, 1e4, float(sm))
            outs.append((o.numpy(), lse.numpy()))
        np.testing.assert_array_equal(outs[0][0], outs[1][0])
        np.testing.assert_array_equal(outs[0][1], outs[1][1])
        if rotary_mode == 0:
            np.testing.assert_allclose(outs[1][0][0], _reference(q[0:1], pages, page_ids, kv_len, sm)[0], atol=1e-5)


def test_prefill_parallel_heads_bit_identical():
    f = kvc._attention_prefill_cpu(HKV, HQ, D, "float32", False, {})
    g = parallelize_attention(f)
    assert g is not None and "T.parallel(" in g.script()
    rng = np.random.default_rng(1)
    dev = tvm.cpu()
    pages = _pages(rng)
    page_ids, last = [3, 1], 7
    kv_len = PAGE + last
    n = 5  # the last 5 tokens of the sequence are the queries (causal)
    q = rng.standard_normal((n, HQ, D)).astype(np.float32)
    sm = 1.0 / np.sqrt(D)
    outs = []
    for fn in (_build(f), _build(g)):
        o = tvm.runtime.tensor(np.zeros((n, HQ, D), np.float32), dev)
        lse = tvm.runtime.tensor(np.zeros((n, HQ), np.float32), dev)
        args = [q, np.array([0, n], np.int32), pages, np.array([0, 2], np.int32), np.array(page_ids, np.int32),
                np.array([last], np.int32), np.array([0], np.int32), np.arange(kv_len - n, kv_len, dtype=np.int32)]
        fn(*[tvm.runtime.tensor(a, dev) for a in args], o, lse, 1, 0, 1.0, 1e4, float(sm))
        outs.append(o.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[1], _reference(q, pages, page_ids, kv_len, sm, causal_offset=kv_len - n), atol=1e-5)


@pytest.mark.parametrize("strip_symbol", [False, True])
def test_applied_by_rules_and_pass(strip_symbol):
    """Also when the kernels lost their global_symbol (as after BlockBuilder.add_func in a Relax module)."""
    pre = kvc._attention_prefill_cpu(HKV, HQ, D, "float32", False, {})
    dec = kvc._attention_decode_cpu(HKV, HQ, D, "float32", False, {})
    if strip_symbol:
        pre, dec = pre.without_attr("global_symbol"), dec.without_attr("global_symbol")
    mod = tvm.IRModule({"prefill": pre, "decode": dec})
    ruled = schedule_module(mod, TARGET)
    assert "T.parallel(" in ruled["prefill"].script()  # via cpu_rules (PagedAttentionCPU)
    assert "T.parallel(" not in ruled["decode"].script()  # marked scheduled: ApplyDefaultSchedule skips it
    passed = ParallelizeCPUAttention()(ruled)
    assert "T.parallel(" in passed["decode"].script()
    assert passed["prefill"].same_as(ruled["prefill"])  # already done, left alone


@pytest.mark.parametrize("maker", [lambda: kvc._attention_prefill_ragged_cpu(HKV, HQ, D, D, "float32", {}), lambda: kvc._merge_state_inplace_cpu("float32")])
def test_unknown_kernels_untouched(maker):
    assert parallelize_attention(maker()) is None


def test_vectorized_decode_kernel_matches_tvm_and_numpy():
    """compiler/model/kv_kernels.paged_decode_cpu (what our CPU builds use): TVM's kernel's outputs and lse
    for two sequences of different lengths (a partial last page, GQA), RoPE outside (0) and inside (1)."""
    from compiler.model.kv_kernels import paged_decode_cpu

    ours = _build(paged_decode_cpu(HKV, HQ, D, "float32", {}, PAGE))
    tvms = _build(parallelize_attention(kvc._attention_decode_cpu(HKV, HQ, D, "float32", False, {})))
    rng = np.random.default_rng(1)
    dev = tvm.cpu()
    pages = _pages(rng, num_pages=6)
    seqs = [([2, 0, 1], 5), ([4, 3], 16)]  # (page ids, slots used in the last page)
    q = rng.standard_normal((2, HQ, D)).astype(np.float32)
    sm = 1.0 / np.sqrt(D)
    indptr = np.array([0, 3, 5], np.int32)
    values = np.array(seqs[0][0] + seqs[1][0], np.int32)
    last = np.array([seqs[0][1], seqs[1][1]], np.int32)
    lens = [(len(p) - 1) * PAGE + l for p, l in seqs]
    for rotary_mode in (0, 1):
        outs = []
        for fn in (ours, tvms):
            o = tvm.runtime.tensor(np.zeros((2, HQ, D), np.float32), dev)
            lse = tvm.runtime.tensor(np.zeros((2, HQ), np.float32), dev)
            args = [q, pages, indptr, values, last, np.array([0, 7], np.int32), np.array(lens, np.int32)]
            fn(*[tvm.runtime.tensor(a, dev) for a in args], o, lse, rotary_mode, 1.0, 1e4, float(sm))
            outs.append((o.numpy(), lse.numpy()))
        np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)
        if rotary_mode == 0:
            for b, (page_ids, _) in enumerate(seqs):
                ref = _reference(q[b : b + 1], pages, page_ids, lens[b], sm)[0]
                np.testing.assert_allclose(outs[0][0][b], ref, atol=1e-5)


def test_decode_kernel_long_sequence_wide_group():
    """paged_decode_cpu with 4 query heads per KV head, head_dim 64 and 37 pages (589 keys, a partial last
    page, pages in scrambled order): the per-page softmax steps against numpy."""
    from compiler.model.kv_kernels import paged_decode_cpu

    hq, hkv, d, page = 8, 2, 64, 16
    f = _build(paged_decode_cpu(hkv, hq, d, "float32", {}, page))
    rng = np.random.default_rng(7)
    pages = rng.standard_normal((40, 2, hkv, page, d)).astype(np.float32) * 2
    page_ids = [int(p) for p in rng.permutation(40)[:37]]
    kv_len = 36 * page + 13
    q = rng.standard_normal((1, hq, d)).astype(np.float32)
    sm = 1.0 / np.sqrt(d)
    dev = tvm.cpu()
    o = tvm.runtime.tensor(np.zeros((1, hq, d), np.float32), dev)
    lse = tvm.runtime.tensor(np.zeros((1, hq), np.float32), dev)
    args = [q, pages, np.array([0, 37], np.int32), np.array(page_ids, np.int32), np.array([13], np.int32),
            np.array([0], np.int32), np.array([kv_len], np.int32)]
    f(*[tvm.runtime.tensor(a, dev) for a in args], o, lse, 0, 1.0, 1e4, float(sm))
    k = np.concatenate([pages[p, 0] for p in page_ids], axis=1)[:, :kv_len]
    v = np.concatenate([pages[p, 1] for p in page_ids], axis=1)[:, :kv_len]
    for h in range(hq):
        s = k[h // 4] @ q[0, h] * sm
        p = np.exp(s - s.max())
        np.testing.assert_allclose(o.numpy()[0, h], (p / p.sum()) @ v[h // 4], atol=2e-5)
        # lse is log2-sum-exp of the scores in base 2 (TVM's convention)
        np.testing.assert_allclose(lse.numpy()[0, h], np.log2(np.exp(s - s.max()).sum()) + s.max() * np.log2(np.e), rtol=1e-5)


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 256}


@pytest.mark.parametrize("scaling,rotary_dim,head_dim", [({}, None, 64), (LLAMA3, None, 32), ({}, 32, 64)])
def test_fused_rope_equals_tvms(scaling, rotary_dim, head_dim):
    """compiler/model/kv_kernels.fused_rope_cpu (frequencies once per position, not per head): bit-identical
    q, k, v to TVM's llama_rope_with_position_map, rope applied or not, with llama3 scaling and a partial
    rotary dim; TVM's other rope forms are left to TVM."""
    from tvm.relax.frontend.nn.llm.position_embedding import llama_rope_with_position_map

    from compiler.model.kv_kernels import fused_rope_cpu

    nq, nkv, s = 6, 2, 7
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((s, nq + 2 * nkv, head_dim)).astype(np.float32)
    pos = np.array([0, 1, 5, 100, 1000, 3000, 4095], np.int32)
    dev = tvm.cpu()
    outs = []
    for make in (llama_rope_with_position_map, fused_rope_cpu):
        f = make(500000.0, 1.0, head_dim, nq, nkv, "float32", scaling, rotary_dim).with_attr("global_symbol", "rope")
        f = tvm.compile(tvm.IRModule({"rope": f}), target=TARGET)["rope"]
        for apply in (1, 0):
            out = [tvm.runtime.tensor(np.zeros((s, n, head_dim), np.float32), dev) for n in (nq, nkv, nkv)]
            f(tvm.runtime.tensor(qkv, dev), tvm.runtime.tensor(pos, dev), *out, apply)
            outs.append([o.numpy() for o in out])
    for ours, theirs in zip(outs[2:], outs[:2]):
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b)
    assert fused_rope_cpu(1e4, 1.0, 64, 4, 2, "float32", {"rope_type": "gptj"}) is None
