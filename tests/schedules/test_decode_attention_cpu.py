"""compiler/model/kv_kernels.paged_decode_cpu with its derived tiling (tiles of pages per softmax step,
flash-decoding splits of the context merged by log-sum-exp, software prefetch, query heads per register
block) against a numpy attention written here, and against TVM's kernel for RoPE inside the kernel; and
the tiling rule (CPUParams.attention_decode_tiling) over every SoC in the registry and a grid of cache facts."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import tvm
from sched_helpers import ANDROID, build_main, host_target
from tvm.relax.frontend.nn.llm import kv_cache as kvc
from tvm.target import Target

from compiler.model.kv_kernels import paged_decode_cpu
from schedules.cpu.params import CPUParams
from targets import list_socs
from targets.cpu_facts import CPUFacts, KiB, MiB

TARGET = host_target()
PAGE = 16
DEV = tvm.cpu()


def _build(func):
    return build_main(func, TARGET)


def _case(rng, h_kv, h_q, d, kv_lens, dtype):
    """One page pool (shuffled, with unused pages) for sequences of ``kv_lens`` keys; their queries."""
    n_pages = [-(-kv // PAGE) for kv in kv_lens]
    pool = sum(n_pages) + 3
    pages = (rng.standard_normal((pool, 2, h_kv, PAGE, d)) * 1.5).astype(dtype)
    perm = rng.permutation(pool).astype(np.int32)
    lists, at = [], 0
    for n in n_pages:
        lists.append(perm[at : at + n])
        at += n
    q = rng.standard_normal((len(kv_lens), h_q, d)).astype(dtype)
    last = np.array([kv - (len(p) - 1) * PAGE for kv, p in zip(kv_lens, lists)], np.int32)
    return q, pages, lists, last


def _run(fn, q, pages, lists, last, rotary_mode=0, sm=None, lens=None):
    b, h_q, d = q.shape
    out = tvm.runtime.tensor(np.zeros_like(q), DEV)
    lse = tvm.runtime.tensor(np.zeros((b, h_q), np.float32), DEV)
    indptr = np.cumsum([0] + [len(p) for p in lists]).astype(np.int32)
    lens = np.zeros(b, np.int32) if lens is None else np.asarray(lens, np.int32)
    args = [q, pages, indptr, np.concatenate(lists).astype(np.int32), last, np.zeros(b, np.int32), lens]
    fn(*[tvm.runtime.tensor(a, DEV) for a in args], out, lse, rotary_mode, 1.0, 1e4, float(sm or 1 / np.sqrt(d)))
    return out.numpy(), lse.numpy()


def _reference(q, keys, values, sm):
    """q [D], keys/values [L, D] -> (out [D], lse in log2) in float64."""
    s = keys.astype(np.float64) @ q.astype(np.float64) * sm
    e = np.exp(s - s.max())
    return (e @ values.astype(np.float64)) / e.sum(), (s.max() + np.log(e.sum())) / np.log(2)


TILINGS = [  # (tile_pages, splits, prefetch_pages, heads_per_block, keys_per_reduction)
    (1, 1, 0, 1, 1),  # the untiled kernel
    (4, 1, 1, 2, 4),  # what this rule derives on AVX-512 with a 48 KiB L1d (head_dim 64, group 4, f32)
    (4, 3, 1, 1, 2),  # three splits (a 6-core SoC with 8 KV heads): uneven ranges, empty splits on short contexts
    (2, 4, 2, 4, 1),  # more splits than the short sequences have tiles
]


@pytest.mark.parametrize("tiling", TILINGS, ids=lambda t: "tp{}-ns{}-pf{}-gb{}-ku{}".format(*t))
@pytest.mark.parametrize("h_kv,h_q,d", [(2, 8, 64), (1, 4, 32), (8, 8, 128)])
def test_tilings_match_numpy(tiling, h_kv, h_q, d):
    tp, ns, pf, gb, ku = tiling
    rng = np.random.default_rng(h_kv * 10 + d + tp + ns)
    kv_lens = [1, 16, 17, 300, 1000]  # one key, one full page, a second page's first key, partial last pages
    q, pages, lists, last = _case(rng, h_kv, h_q, d, kv_lens, np.float32)
    fn = _build(paged_decode_cpu(h_kv, h_q, d, "float32", {}, PAGE, pages_per_tile=tp, splits=ns, prefetch=pf,
                                 heads_per_block=gb if gb * d * 4 < 1024 and (h_q // h_kv) % gb == 0 else 1,
                                 keys_per_reduction=ku))
    out, lse = _run(fn, q, pages, lists, last)
    g = h_q // h_kv
    for b, kv in enumerate(kv_lens):
        k = np.concatenate([pages[p, 0] for p in lists[b]], axis=1)[:, :kv]
        v = np.concatenate([pages[p, 1] for p in lists[b]], axis=1)[:, :kv]
        for h in range(h_q):
            ref, ref_lse = _reference(q[b, h], k[h // g], v[h // g], 1 / np.sqrt(d))
            np.testing.assert_allclose(out[b, h], ref, atol=3e-5, rtol=1e-4)
            np.testing.assert_allclose(lse[b, h], ref_lse, atol=3e-5, rtol=1e-5)


def test_float16_cache_with_splits():
    """The model's dtype (float16 pages and queries), the derived AVX-512 tiling plus two splits, 4096 keys."""
    h_kv, h_q, d = 2, 8, 64
    rng = np.random.default_rng(3)
    q, pages, lists, last = _case(rng, h_kv, h_q, d, [4096, 77], np.float16)
    fn = _build(paged_decode_cpu(h_kv, h_q, d, "float16", {}, PAGE, pages_per_tile=8, splits=2, prefetch=3,
                                 heads_per_block=2, keys_per_reduction=4))
    out, _ = _run(fn, q, pages, lists, last)
    for b, kv in enumerate([4096, 77]):
        k = np.concatenate([pages[p, 0] for p in lists[b]], axis=1)[:, :kv]
        v = np.concatenate([pages[p, 1] for p in lists[b]], axis=1)[:, :kv]
        for h in range(h_q):
            ref, _ = _reference(q[b, h], k[h // 4], v[h // 4], 1 / np.sqrt(d))
            np.testing.assert_allclose(out[b, h].astype(np.float64), ref, atol=2e-3, rtol=2e-3)


def test_rope_in_kernel_with_splits_matches_tvm():
    """RoPE inside the kernel (rotary mode 1, the scalar path, run by the first split) with splits and tiles
    set: TVM's own decode kernel's outputs, which define that RoPE."""
    h_kv, h_q, d = 2, 8, 64
    rng = np.random.default_rng(9)
    kv_lens = [40, 129]
    q, pages, lists, last = _case(rng, h_kv, h_q, d, kv_lens, np.float32)
    ours = _build(paged_decode_cpu(h_kv, h_q, d, "float32", {}, PAGE, pages_per_tile=2, splits=3, prefetch=1,
                                   heads_per_block=2, keys_per_reduction=4))
    from schedules.cpu.attention import parallelize_attention

    theirs = _build(parallelize_attention(kvc._attention_decode_cpu(h_kv, h_q, d, "float32", False, {})))
    a = _run(ours, q, pages, lists, last, rotary_mode=1, lens=kv_lens)
    b = _run(theirs, q, pages, lists, last, rotary_mode=1, lens=kv_lens)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)


def test_windowed_decode_with_splits():
    """The sliding variant with splits: the new token sees the first S keys and the W - S - 1 most recent,
    through the sink/window slot mapping, whichever split holds them."""
    w, sinks = 40, 4
    h_kv, h_q, d = 2, 8, 64
    rng = np.random.default_rng(21)
    n_pages = [7, 3]
    pool = sum(n_pages) + 2
    pages = rng.standard_normal((pool, 2, h_kv, PAGE, d)).astype(np.float32)
    perm = rng.permutation(pool).astype(np.int32)
    lists = [perm[:7], perm[7:10]]
    last = np.array([4, 1], np.int32)
    info = np.stack([last, np.array([21, 5], np.int32), np.array([sinks, sinks], np.int32)]).astype(np.int32)
    q = rng.standard_normal((2, h_q, d)).astype(np.float32)
    fn = _build(paged_decode_cpu(h_kv, h_q, d, "float32", {}, PAGE, window=(w, sinks), pages_per_tile=2, splits=3,
                                 prefetch=1, heads_per_block=2, keys_per_reduction=4))
    out, _ = _run(fn, q, pages, lists, info)
    for b in range(2):
        n_slots = (len(lists[b]) - 1) * PAGE + info[0, b]
        offset = info[1, b]
        kv = n_slots - offset + sinks
        slots = np.array([j if j < sinks else j - sinks + offset for j in range(kv)])
        k = np.concatenate([pages[p, 0] for p in lists[b]], axis=1)[:, slots]
        v = np.concatenate([pages[p, 1] for p in lists[b]], axis=1)[:, slots]
        cols = np.arange(kv)
        seen = (cols < sinks) | (cols >= kv - (w - sinks - 1))
        for h in range(h_q):
            ref, _ = _reference(q[b, h], k[h // 4][seen], v[h // 4][seen], 1 / np.sqrt(d))
            np.testing.assert_allclose(out[b, h], ref, atol=3e-5, rtol=1e-4)


# --- the rule --------------------------------------------------------------------------------------------------
GRID = [CPUFacts(l1d_bytes=l1, l2_bytes=l2, l3_bytes=l3, l1d_ways=w, l2_ways=8, line_bytes=64, num_cores=c, source="grid")
        for l1, w, l2, l3, c in itertools.product((32 * KiB, 48 * KiB, 64 * KiB, 128 * KiB), (4, 8, 12), (256 * KiB, 2 * MiB),
                                                  (0, 32 * MiB), (1, 2, 6, 8))]
SOC_FACTS = [CPUFacts.from_soc(soc) for soc in list_socs()]
TARGETS = [TARGET, Target({"kind": "llvm", "mcpu": "haswell"}), Target(ANDROID)]
SHAPES = [(64, 4, 8), (128, 4, 8), (32, 4, 2), (64, 1, 32), (128, 8, 1)]  # (head_dim, group, KV heads)


@pytest.mark.parametrize("facts", GRID + SOC_FACTS, ids=lambda f: f"{f.source}-{f.l1d_bytes >> 10}K{f.l1d_ways}w-{f.l2_bytes >> 10}K-{f.l3_bytes >> 20}M-c{f.num_cores}")
def test_rule_respects_its_bounds(facts):
    """For every facts set and target: the register block divides the group, stays under TVM's 1 KiB stack
    limit and in half the vector registers; the tile is a power of two pages whose V rows and scores fit half of
    L1d (or a single page); the prefetched lines take at most a quarter of L1d; the splits balance the KV heads
    over the cores with no more tasks than needed; no prefetch in system-lib (phone) builds."""
    for target in TARGETS:
        cores = facts.num_cores or 1
        p = dataclasses.replace(CPUParams.for_build(target, facts), num_cores=cores)
        for d, g, h_kv in SHAPES:
            t = p.attention_decode_tiling(d, g, h_kv, 2, PAGE)
            gb, tp, pd, ns, ku = t["heads_per_block"], t["tile_pages"], t["prefetch_pages"], t["splits"], t["keys_per_reduction"]
            assert g % gb == 0 and gb * d * 4 < 1024 and (gb == 1 or gb * d <= p.num_vector_regs // 2 * p.lanes(32))
            assert ku in (1, 2, 4) and gb * ku * 16 * 4 < 1024 and (ku == 1 or gb * ku * max(1, 16 // p.lanes(32)) <= p.num_vector_regs // 2)
            assert tp & (tp - 1) == 0 and (tp == 1 or tp * PAGE * (d * 2 + 4 * g) <= p.l1d_bytes // 2)
            assert tp == 1 or tp <= p.l1d_ways - 2  # a way per page of the tile (pages share sets)
            assert tp == 16 or 2 * tp * PAGE * (d * 2 + 4 * g) > p.l1d_bytes // 2 or 2 * tp > p.l1d_ways - 2  # the largest
            if "mtriple" in target.attrs:
                assert pd == 0
            else:
                assert 1 <= pd <= 4 and (pd == 1 or pd * 2 * PAGE * d * 2 <= p.l1d_bytes // 4)
            assert (h_kv * ns) % cores == 0 and all((h_kv * s) % cores for s in range(1, ns))


def test_rule_is_soc_specific():
    """The derivation follows the facts: a 32 KiB L1d halves the tile of a 48 KiB one, and a 4-way one halves it
    again; 6 cores split 8 KV heads three ways where 8 cores do not split them; explicit knobs win."""
    base = CPUParams.for_build(TARGET)
    small = dataclasses.replace(base, l1d_bytes=32 * KiB, l1d_ways=12, num_cores=6).attention_decode_tiling(64, 4, 8)
    large = dataclasses.replace(base, l1d_bytes=48 * KiB, l1d_ways=12, num_cores=8).attention_decode_tiling(64, 4, 8)
    narrow = dataclasses.replace(base, l1d_bytes=48 * KiB, l1d_ways=4, num_cores=8).attention_decode_tiling(64, 4, 8)
    assert (small["tile_pages"], large["tile_pages"], narrow["tile_pages"]) == (4, 8, 2)
    assert (small["splits"], large["splits"]) == (3, 1)
    fixed = dataclasses.replace(base, **CPUParams.parse_knobs(
        "attn_decode_tile_pages=1,attn_decode_splits=2,attn_decode_prefetch_pages=0,attn_decode_heads_per_block=1,"
        "attn_decode_keys_per_reduction=1")).attention_decode_tiling(64, 4, 8)
    assert fixed == {"tile_pages": 1, "splits": 2, "prefetch_pages": 0, "heads_per_block": 1, "keys_per_reduction": 1}


@pytest.mark.parametrize("text", ["attn_decode_splits", "no_such_knob=1", "attn_decode_splits=two", "gemv_prefetch=2"])
def test_bad_schedule_knobs_are_one_line_errors(text):
    from runtime_stubs.errors import LlamaAotError

    with pytest.raises(LlamaAotError, match="--schedule-knobs"):
        CPUParams.parse_knobs(text)
