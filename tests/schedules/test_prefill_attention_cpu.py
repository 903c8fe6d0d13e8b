"""compiler/model/kv_kernels.paged_prefill_cpu (a prefill chunk over the paged cache) and ragged_prefill_cpu
(a chunk over its own keys), what our CPU builds use, against a numpy attention written here, and against TVM's own kernel where TVM defines the semantics (sliding
window with sinks, RoPE inside the kernel); its tiles derived from the facts of every SoC in the registry."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from sched_helpers import build_main, host_target
from tvm.relax.frontend.nn.llm import kv_cache as kvc

from compiler.model.kv_kernels import paged_prefill_cpu, ragged_prefill_cpu

TARGET = host_target()
PAGE = 16
DEV = tvm.cpu()


def _build(func):
    return build_main(func, TARGET)


def _case(rng, h_kv, h_q, d, seqs, spare_pages=3):
    """seqs: [(q_len, kv_len)]. Pages of all sequences shuffled in one pool (plus unused ones)."""
    n_pages = [-(-kv // PAGE) for _, kv in seqs]
    pool = sum(n_pages) + spare_pages
    pages = rng.standard_normal((pool, 2, h_kv, PAGE, d)).astype(np.float32)
    perm = rng.permutation(pool).astype(np.int32)
    page_lists, at = [], 0
    for n in n_pages:
        page_lists.append(perm[at : at + n])
        at += n
    q = rng.standard_normal((sum(ql for ql, _ in seqs), h_q, d)).astype(np.float32)
    return q, pages, page_lists


def _call(fn, q, pages, page_lists, length_info, causal, sm, rotary_mode, theta, total, q_indptr=None):
    h_q = q.shape[1]
    out = tvm.runtime.tensor(np.zeros_like(q), DEV)
    lse = tvm.runtime.tensor(np.zeros((total, h_q), np.float32), DEV)
    page_indptr = np.cumsum([0] + [len(p) for p in page_lists]).astype(np.int32)
    values = np.concatenate(page_lists).astype(np.int32)
    args = [q, q_indptr, pages, page_indptr, values, length_info, np.zeros(len(page_lists), np.int32),
            np.arange(total, dtype=np.int32)]
    fn(*[tvm.runtime.tensor(a, DEV) for a in args], out, lse, causal, rotary_mode, 1.0, theta, float(sm))
    return out.numpy(), lse.numpy()


def _reference(q_rows, keys, values, visible, sm):
    """q_rows [n, D], keys/values [L, D], visible [n, L] -> (out [n, D], lse in log2 [n]) in float64."""
    s = np.where(visible, q_rows.astype(np.float64) @ keys.astype(np.float64).T * sm, -np.inf)
    mx = s.max(1, keepdims=True)
    e = np.exp(s - mx)
    return (e @ values) / e.sum(1, keepdims=True), (mx[:, 0] + np.log(e.sum(1))) / np.log(2)


@pytest.mark.parametrize("h_kv,h_q,d,rows,keys", [
    (2, 8, 64, 16, 1),  # the derived AVX2 tile: 64 query vectors
    (2, 8, 64, 3, 2),  # a tile that is not a power of two, two keys per pass
    (4, 4, 32, 1, 4),  # no GQA, one row per tile
    (1, 8, 128, 8, 1),  # one KV head, head_dim 128
])
@pytest.mark.parametrize("causal", [0, 1])
def test_matches_numpy(h_kv, h_q, d, rows, keys, causal):
    rng = np.random.default_rng(h_q * 100 + d + rows + causal)
    seqs = [(37, 300), (5, 16), (1, 1), (20, 129)]  # partial tiles, a one-key sequence, partial last pages
    q, pages, page_lists = _case(rng, h_kv, h_q, d, seqs)
    q_indptr = np.cumsum([0] + [ql for ql, _ in seqs]).astype(np.int32)
    last = np.array([kv - (-(-kv // PAGE) - 1) * PAGE for _, kv in seqs], np.int32)
    fn = _build(paged_prefill_cpu(h_kv, h_q, d, "float32", False, {}, PAGE, rows_per_tile=rows, keys_per_pass=keys))
    sm = 1.0 / np.sqrt(d)
    out, lse = _call(fn, q, pages, page_lists, last, causal, sm, 0, 1e4, q.shape[0], q_indptr)
    for b, (ql, kv) in enumerate(seqs):
        keys_b = np.concatenate([pages[p, 0] for p in page_lists[b]], axis=1)[:, :kv]  # [h_kv, kv, d]
        vals_b = np.concatenate([pages[p, 1] for p in page_lists[b]], axis=1)[:, :kv]
        rows_b = np.arange(ql)[:, None]
        cols = np.arange(kv)[None, :]
        visible = cols < kv - ql + rows_b + 1 if causal else np.ones((ql, kv), bool)
        for h in range(h_q):
            sl = slice(q_indptr[b], q_indptr[b + 1])
            ref, ref_lse = _reference(q[sl, h], keys_b[h // (h_q // h_kv)], vals_b[h // (h_q // h_kv)], visible, sm)
            np.testing.assert_allclose(out[sl, h], ref, atol=2e-5, rtol=1e-4)
            np.testing.assert_allclose(lse[sl, h], ref_lse, atol=2e-5, rtol=1e-5)


def _sliding_case(rng, h_kv, h_q, d, sinks=4):
    seqs = [(9, 100), (3, 33)]
    q, pages, page_lists = _case(rng, h_kv, h_q, d, seqs)
    q_indptr = np.cumsum([0] + [ql for ql, _ in seqs]).astype(np.int32)
    last = np.array([kv - (-(-kv // PAGE) - 1) * PAGE for _, kv in seqs], np.int32)
    # [last page len, where the window starts in the pages, sink length] per sequence
    length_info = np.stack([last, np.array([21, 5], np.int32), np.array([sinks, sinks], np.int32)]).astype(np.int32)
    return seqs, q, pages, page_lists, q_indptr, length_info


def _window_keys(pages, pages_b, info, b):
    """The sliding cache's keys/values in sequence order: slot j below the sink length, j - sinks + offset after."""
    n_slots = (len(pages_b) - 1) * PAGE + info[0, b]
    offset, sinks = info[1, b], info[2, b]
    kv = n_slots - offset + sinks
    slots = np.array([j if j < sinks else j - sinks + offset for j in range(kv)])
    keys = np.concatenate([pages[p, 0] for p in pages_b], axis=1)[:, slots]
    vals = np.concatenate([pages[p, 1] for p in pages_b], axis=1)[:, slots]
    return kv, keys, vals


@pytest.mark.parametrize("window", [(12, 4), (40, 4), (200, 4)])
def test_sliding_window_matches_numpy(window):
    """The windowed variant (attention_window.py): chunk row r, at sequence position kv_len + r, sees the first S
    keys and the W - S - r - 1 most recent cached ones (the rest of its band is the chunk, in the ragged kernel);
    keys are read through the sliding cache's sink/offset slot mapping. (12, 4): later rows see only the sinks;
    (200, 4): every key."""
    w, sinks = window
    h_kv, h_q, d = 2, 8, 64
    seqs, q, pages, page_lists, q_indptr, info = _sliding_case(np.random.default_rng(11 + w), h_kv, h_q, d, sinks)
    fn = _build(paged_prefill_cpu(h_kv, h_q, d, "float32", True, {}, PAGE, window=window, rows_per_tile=4,
                                  keys_per_pass=1))
    sm = 1.0 / np.sqrt(d)
    out, lse = _call(fn, q, pages, page_lists, info, 0, sm, 0, 1e4, q.shape[0], q_indptr)
    for b, (ql, _) in enumerate(seqs):
        kv, keys_b, vals_b = _window_keys(pages, page_lists[b], info, b)
        rows_b, cols = np.arange(ql)[:, None], np.arange(kv)[None, :]
        visible = (cols < sinks) | (cols >= kv - np.maximum(w - sinks - rows_b - 1, 0))
        for h in range(h_q):
            sl = slice(q_indptr[b], q_indptr[b + 1])
            ref, ref_lse = _reference(q[sl, h], keys_b[h // 4], vals_b[h // 4], visible, sm)
            np.testing.assert_allclose(out[sl, h], ref, atol=2e-5, rtol=1e-4)
            np.testing.assert_allclose(lse[sl, h], ref_lse, atol=2e-5, rtol=1e-5)


def test_rope_in_kernel_matches_tvm_kernel():
    """RoPE inside the kernel (rotary mode 1): same results as TVM's scalar kernel, whose RoPE is the
    definition (non-causal: TVM's kernel reads a stale running max when a row's first key is masked)."""
    h_kv, h_q, d = 2, 8, 64
    seqs, q, pages, page_lists, q_indptr, info = _sliding_case(np.random.default_rng(5), h_kv, h_q, d)
    length_info = info[0].copy()
    theirs = _build(kvc._attention_prefill_cpu(h_kv, h_q, d, "float32", False, {}, PAGE))
    ours = _build(paged_prefill_cpu(h_kv, h_q, d, "float32", False, {}, PAGE, rows_per_tile=4, keys_per_pass=1))
    sm = 1.0 / np.sqrt(d)
    ref = _call(theirs, q, pages, page_lists, length_info, 0, sm, 1, 1e4, q.shape[0], q_indptr)
    got = _call(ours, q, pages, page_lists, length_info, 0, sm, 1, 1e4, q.shape[0], q_indptr)
    np.testing.assert_allclose(got[0], ref[0], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got[1], ref[1], atol=2e-4, rtol=1e-5)


def _registry_tiles():
    from tvm.target import Target

    from schedules.cpu.params import CPUParams
    from targets import list_socs
    from targets.cpu_facts import CPUFacts

    tiles = {}
    for soc in list_socs():
        if soc.is_host:
            continue
        params = CPUParams.for_build(Target(soc.tvm_host_target()), CPUFacts.from_soc(soc))
        tiles.setdefault(params.attention_prefill_tile(64, 4), soc.name)
    tiles.setdefault(CPUParams.for_build(TARGET).attention_prefill_tile(64, 4), "host")
    return tiles


def test_registry_tiles_build_and_match():
    """Every tile the registry's SoCs (and this host) derive builds and computes the same attention (the tile
    only changes the loop structure, so the host runs each)."""
    tiles = _registry_tiles()
    assert tiles
    rng = np.random.default_rng(3)
    seqs = [(40, 200)]
    q, pages, page_lists = _case(rng, 2, 8, 64, seqs)
    q_indptr = np.array([0, 40], np.int32)
    last = np.array([200 - 12 * PAGE], np.int32)
    sm = 0.125
    keys_b = np.concatenate([pages[p, 0] for p in page_lists[0]], axis=1)[:, :200]
    vals_b = np.concatenate([pages[p, 1] for p in page_lists[0]], axis=1)[:, :200]
    for (rows, keys), who in tiles.items():
        fn = _build(paged_prefill_cpu(2, 8, 64, "float32", False, {}, PAGE, rows_per_tile=rows, keys_per_pass=keys))
        out, _ = _call(fn, q, pages, page_lists, last, 0, sm, 0, 1e4, 40, q_indptr)
        for h in range(8):
            ref, _ = _reference(q[:, h], keys_b[h // 4], vals_b[h // 4], np.ones((40, 200), bool), sm)
            np.testing.assert_allclose(out[:, h], ref, atol=2e-5, rtol=1e-4, err_msg=f"tile {rows}x{keys} of {who}")


def _ragged_case(rng, h_kv, h_q, d, seqs):
    """seqs: [(q_len, kv_len)] packed one after the other, as the cache passes a chunk's new tokens."""
    q = rng.standard_normal((sum(ql for ql, _ in seqs), h_q, d)).astype(np.float32)
    k = rng.standard_normal((sum(kv for _, kv in seqs), h_kv, d)).astype(np.float32)
    v = rng.standard_normal(k.shape).astype(np.float32)
    q_indptr = np.cumsum([0] + [ql for ql, _ in seqs]).astype(np.int32)
    kv_indptr = np.cumsum([0] + [kv for _, kv in seqs]).astype(np.int32)
    return q, k, v, q_indptr, kv_indptr


def _call_ragged(fn, q, k, v, q_indptr, kv_indptr, causal, sm, rotary_mode=0, theta=1e4, pos0=0):
    out = tvm.runtime.tensor(np.zeros_like(q), DEV)
    lse = tvm.runtime.tensor(np.zeros(q.shape[:2], np.float32), DEV)
    args = [q, q_indptr, k, v, kv_indptr, np.arange(q.shape[0], dtype=np.int32),
            np.full(len(q_indptr) - 1, pos0, np.int32)]
    fn(*[tvm.runtime.tensor(a, DEV) for a in args], out, lse, causal, rotary_mode, 1.0, theta, float(sm))
    return out.numpy(), lse.numpy()


@pytest.mark.parametrize("h_kv,h_q,d,rows,keys", [
    (2, 8, 64, 16, 1),  # the derived AVX2 tile
    (2, 8, 64, 3, 2),
    (4, 4, 32, 1, 4),
    (1, 8, 128, 8, 1),
])
@pytest.mark.parametrize("causal", [0, 1])
def test_ragged_matches_numpy(h_kv, h_q, d, rows, keys, causal):
    """Causal rows see keys < kv_len - q_len + row + 1 (the chunk's own keys when q_len == kv_len); partial
    tiles and blocks, a one-token sequence, and more keys than queries."""
    rng = np.random.default_rng(h_q * 10 + d + rows + causal)
    seqs = [(37, 37), (1, 1), (20, 50), (128, 128)]
    q, k, v, q_indptr, kv_indptr = _ragged_case(rng, h_kv, h_q, d, seqs)
    fn = _build(ragged_prefill_cpu(h_kv, h_q, d, "float32", {}, PAGE, rows_per_tile=rows, keys_per_pass=keys))
    sm = 1.0 / np.sqrt(d)
    out, lse = _call_ragged(fn, q, k, v, q_indptr, kv_indptr, causal, sm)
    for b, (ql, kv) in enumerate(seqs):
        visible = np.arange(kv)[None, :] < kv - ql + np.arange(ql)[:, None] + 1 if causal else np.ones((ql, kv), bool)
        qs, ks = slice(q_indptr[b], q_indptr[b + 1]), slice(kv_indptr[b], kv_indptr[b + 1])
        for h in range(h_q):
            hk = h // (h_q // h_kv)
            ref, ref_lse = _reference(q[qs, h], k[ks, hk], v[ks, hk], visible, sm)
            np.testing.assert_allclose(out[qs, h], ref, atol=2e-5, rtol=1e-4)
            np.testing.assert_allclose(lse[qs, h], ref_lse, atol=2e-5, rtol=1e-5)


def test_ragged_rope_in_kernel_matches_tvm_kernel():
    """RoPE inside the kernel (rotary mode 1), causal: TVM's ragged kernel is the definition."""
    h_kv, h_q, d = 2, 8, 64
    rng = np.random.default_rng(21)
    q, k, v, q_indptr, kv_indptr = _ragged_case(rng, h_kv, h_q, d, [(33, 33), (7, 7)])
    theirs = _build(kvc._attention_prefill_ragged_cpu(h_kv, h_q, d, d, "float32", {}))
    ours = _build(ragged_prefill_cpu(h_kv, h_q, d, "float32", {}, PAGE, rows_per_tile=4, keys_per_pass=1))
    ref = _call_ragged(theirs, q, k, v, q_indptr, kv_indptr, 1, 0.125, rotary_mode=1)
    got = _call_ragged(ours, q, k, v, q_indptr, kv_indptr, 1, 0.125, rotary_mode=1)
    np.testing.assert_allclose(got[0], ref[0], atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(got[1], ref[1], atol=2e-4, rtol=1e-5)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_tile_is_the_widest_within_registers_and_l1d(head_dim):
    """For the registry's SoCs and the host: the tile's query vectors QV fit both limits of
    CPUParams.attention_prefill_tile (accumulators in half the registers, staged queries in half of L1d), and
    twice QV breaks one of them (the rule takes the widest)."""
    from tvm.target import Target

    from schedules.cpu.params import CPUParams
    from targets import list_socs
    from targets.cpu_facts import CPUFacts

    every = [CPUParams.for_build(Target(s.tvm_host_target()), CPUFacts.from_soc(s)) for s in list_socs() if not s.is_host]
    for params in every + [CPUParams.for_build(TARGET)]:
        lanes = params.lanes(32)
        rows, keys = params.attention_prefill_tile(head_dim, 4)
        qv = 4 * rows
        fits = lambda n: n <= params.num_vector_regs // 2 * lanes and n * head_dim * 4 <= params.l1d_bytes // 2
        assert keys == 1 and (fits(qv) or qv == lanes), (params, qv)
        assert not fits(2 * qv), (params, qv)


@pytest.mark.parametrize("pos0", [0, 2, 100])
def test_ragged_window_matches_numpy(pos0):
    """A chunk's own keys under a (W, S) = (10, 3) window: row r sees key j <= r when r - j < W - S or the key is
    one of the sequence's first S tokens (``pos0``: the chunk's first position; 100: no sinks in the chunk)."""
    h_kv, h_q, d, (w, sinks) = 2, 8, 64, (10, 3)
    rng = np.random.default_rng(pos0)
    seqs = [(37, 37), (5, 5)]
    q, k, v, q_indptr, kv_indptr = _ragged_case(rng, h_kv, h_q, d, seqs)
    fn = _build(ragged_prefill_cpu(h_kv, h_q, d, "float32", {}, PAGE, rows_per_tile=4, keys_per_pass=1, window=(w, sinks)))
    out, lse = _call_ragged(fn, q, k, v, q_indptr, kv_indptr, 1, 0.125, pos0=pos0)
    for b, (ql, kv) in enumerate(seqs):
        r, j = np.arange(ql)[:, None], np.arange(kv)[None, :]
        visible = (j <= r) & ((r - j < w - sinks) | (pos0 + j < sinks))
        qs, ks = slice(q_indptr[b], q_indptr[b + 1]), slice(kv_indptr[b], kv_indptr[b + 1])
        for h in range(h_q):
            ref, ref_lse = _reference(q[qs, h], k[ks, h // 4], v[ks, h // 4], visible, 0.125)
            np.testing.assert_allclose(out[qs, h], ref, atol=2e-5, rtol=1e-4)
            np.testing.assert_allclose(lse[qs, h], ref_lse, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [(12, 4), (30, 4)])
def test_decode_window_matches_numpy(window):
    """compiler/model/kv_kernels.paged_decode_cpu, windowed: the new token sees the first S cached keys and the
    W - S - 1 most recent (itself, the last of its band, is the ragged part), through the slot mapping."""
    from compiler.model.kv_kernels import paged_decode_cpu

    w, sinks = window
    h_kv, h_q, d = 2, 8, 64
    seqs, _, pages, page_lists, _, info = _sliding_case(np.random.default_rng(w), h_kv, h_q, d, sinks)
    q = np.random.default_rng(1).standard_normal((len(seqs), h_q, d)).astype(np.float32)
    fn = _build(paged_decode_cpu(h_kv, h_q, d, "float32", {}, PAGE, window=window))
    out = tvm.runtime.tensor(np.zeros_like(q), DEV)
    lse = tvm.runtime.tensor(np.zeros(q.shape[:2], np.float32), DEV)
    page_indptr = np.cumsum([0] + [len(p) for p in page_lists]).astype(np.int32)
    args = [q, pages, page_indptr, np.concatenate(page_lists).astype(np.int32), info, np.zeros(2, np.int32),
            np.zeros(2, np.int32)]
    fn(*[tvm.runtime.tensor(a, DEV) for a in args], out, lse, 0, 1.0, 1e4, 0.125)
    out, lse = out.numpy(), lse.numpy()
    for b in range(len(seqs)):
        kv, keys_b, vals_b = _window_keys(pages, page_lists[b], info, b)
        cols = np.arange(kv)[None, :]
        visible = (cols < sinks) | (cols >= kv - (w - sinks - 1))
        for h in range(h_q):
            ref, ref_lse = _reference(q[b : b + 1, h], keys_b[h // 4], vals_b[h // 4], visible, 0.125)
            np.testing.assert_allclose(out[b : b + 1, h], ref, atol=2e-5, rtol=1e-4)
            np.testing.assert_allclose(lse[b : b + 1, h], ref_lse, atol=2e-5, rtol=1e-5)
