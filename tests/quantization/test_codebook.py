"""Codebook schemes (cb8f16, cb4f16, cb3f16) and their weighted 1-D k-means, against independent references:
brute-force nearest centroids, an exact dynamic-programming optimum, and bit decoders written from the
documented layout (docs/quantization.md) in plain Python."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.quantization import codebook as cb
from compiler.quantization import get_scheme
from compiler.quantization.kmeans import weighted_kmeans
from runtime_stubs.errors import LlamaAotError


def _optimal_cost(values, weights, clusters):
    """Exact minimum of sum h (w - c)^2 over 1-D partitions into at most ``clusters`` runs (DP, O(M^2 C))."""
    order = np.argsort(values)
    v, h = values[order].astype(float), weights[order].astype(float)
    m = len(v)

    def run_cost(i, j):  # values i..j-1 as one cluster at their weighted mean
        hv, hh = h[i:j], v[i:j]
        mean = (hv * hh).sum() / hv.sum()
        return float((hv * (hh - mean) ** 2).sum())

    best = [[np.inf] * (m + 1) for _ in range(clusters + 1)]
    best[0][0] = 0.0
    for c in range(1, clusters + 1):
        for j in range(1, m + 1):
            best[c][j] = min(best[c - 1][i] + run_cost(i, j) for i in range(j))
    return min(best[c][m] for c in range(1, clusters + 1))


def _cost(values, weights, cent, assign):
    return float((weights * (values - np.take_along_axis(cent, assign, 1)) ** 2).sum())


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([-3.0, 0.5, 4.0])
    labels = rng.integers(0, 3, 60)
    values = (centers[labels] + rng.normal(0, 0.05, 60))[None]
    weights = rng.uniform(0.5, 2.0, (1, 60))
    cent, assign = weighted_kmeans(values, weights, 3)
    assert (assign[0] == labels).all()
    for j in range(3):
        m = labels == j
        np.testing.assert_allclose(cent[0, j], (weights[0, m] * values[0, m]).sum() / weights[0, m].sum(), rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_kmeans_is_a_lloyd_fixed_point_better_than_either_start(seed):
    from compiler.quantization.kmeans import Clustering

    rng = np.random.default_rng(seed)
    values = rng.standard_t(4, (3, 36))
    weights = rng.uniform(0.1, 3.0, (3, 36))
    cent, assign = weighted_kmeans(values, weights, 4, iterations=200)
    # every value sits at its nearest centroid (brute force)
    brute = np.abs(values[:, :, None] - cent[:, None, :]).argmin(-1)
    assert (brute == assign).all()
    for r in range(3):
        for j in range(4):  # every non-empty centroid is its members' weighted mean
            m = assign[r] == j
            if m.any():
                np.testing.assert_allclose(cent[r, j], (weights[r, m] * values[r, m]).sum() / weights[r, m].sum(),
                                           rtol=1e-9)
        ours = _cost(values[r : r + 1], weights[r : r + 1], cent[r : r + 1], assign[r : r + 1])
        assert ours >= _optimal_cost(values[r], weights[r], 4) * (1 - 1e-9)  # the DP is the true optimum
    # the kept fit is the better of the two Lloyd starts, per codebook
    c = Clustering(values, weights)
    starts = [c._lloyd(s, 200) for s in (c.quantiles(4), c.even(4))]  # pylint: disable=protected-access
    np.testing.assert_allclose(c.cost(cent), np.minimum(c.cost(starts[0]), c.cost(starts[1])), rtol=1e-12)
    for r in range(3):
        direct = _cost(values[r : r + 1], weights[r : r + 1], cent[r : r + 1], assign[r : r + 1])
        np.testing.assert_allclose(c.cost(cent)[r], direct, rtol=1e-9)


def test_importance_buys_precision_where_it_is_large():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.02, (4, 256)).astype(np.float32)
    h = np.ones_like(w)
    h[:, 7] = 1e6  # one weight per row the loss is very sensitive to
    s = get_scheme("cb4f16")
    plain = np.abs(s.dequantize(s.pack(w)) - w)[:, 7]
    weighted = np.abs(s.dequantize(s.pack(w, importance=h)) - w)[:, 7]
    # at most the int8 code rounding is left (half a code step: max|centroid| / 254)
    assert (weighted <= np.abs(w).max(1) / 254 + 1e-7).all()
    assert weighted.mean() < plain.mean()


def _decode_cb4(packed, k):
    """Indices by the documented layout: q4f16's nibble order, planar when K % 128 == 0."""
    qw = packed["qweight"]
    out = np.zeros((qw.shape[0], k), np.int64)
    for n in range(qw.shape[0]):
        for kk in range(k):
            if k % 128 == 0:
                word, nib = (kk // 128) * 16 + kk % 16, (kk % 128) // 16
            else:
                word, nib = kk // 8, kk % 8
            out[n, kk] = (int(qw[n, word]) >> (4 * nib)) & 0xF
    return out


def _decode_cb3(packed, k):
    lo, hi = packed["qweight"], packed["qhigh"]
    out = np.zeros((lo.shape[0], k), np.int64)
    for n in range(lo.shape[0]):
        for kk in range(k):
            out[n, kk] = ((int(lo[n, kk // 16]) >> (2 * (kk % 16))) & 3) | (((int(hi[n, kk // 32]) >> (kk % 32)) & 1) << 2)
    return out


@pytest.mark.parametrize("name,k", [("cb4f16", 128), ("cb4f16", 96), ("cb3f16", 64)])
def test_per_channel_layout_decodes_as_documented(name, k):
    rng = np.random.default_rng(2)
    w = rng.normal(0, 0.05, (5, k)).astype(np.float32)
    s = get_scheme(name)
    packed = s.pack(w)
    idx = (_decode_cb4 if name == "cb4f16" else _decode_cb3)(packed, k)
    codes, scale = packed["codebook"], packed["scale"]
    assert codes.dtype == np.int8 and codes.shape == (5, s.clusters) and scale.shape == (5, 1)
    expect = np.array([[float(codes[n, idx[n, kk]]) * float(scale[n, 0]) for kk in range(k)] for n in range(5)], np.float32)
    np.testing.assert_array_equal(s.dequantize(packed), expect)
    # scale = float16(max|centroid| / 127): the largest code of every row is +-127 (or 126 after fp16 rounding)
    assert set(np.abs(codes.astype(int)).max(1)) <= {126, 127}
    # every element went to its nearest stored level (brute force over the row's levels)
    levels = codes.astype(np.float32) * scale.astype(np.float32)  # [5, C]
    nearest = np.abs(w[:, :, None] - levels[:, None, :]).min(-1)
    np.testing.assert_allclose(np.abs(expect - w), nearest, atol=1e-7)


def test_cb8_layout_and_shared_codebooks():
    s = get_scheme("cb8f16")
    assert s.rows_per_codebook(4096, 256) == 32  # 32 x 256 = 8192 weights per codebook
    assert s.rows_per_codebook(2048, 8192) == 1
    assert s.rows_per_codebook(6, 256) == 2  # capped by the powers of two dividing N
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.05, (64, 256)).astype(np.float32)
    packed = s.pack(w)
    assert packed["qweight"].dtype == np.uint8 and packed["codebook"].shape == (2, 256)
    assert s.manifest_fields(64, 256) == {"codebook": {"rows_per_codebook": 32}}
    book = packed["codebook"].astype(np.float32)
    expect = np.array([[book[n // 32, packed["qweight"][n, kk]] for kk in range(256)] for n in range(64)])
    np.testing.assert_array_equal(s.dequantize(packed), expect)
    assert np.sqrt(((expect - w) ** 2).mean()) < 0.04 * w.std()  # 256 levels for 8192 values


def test_packing_is_deterministic_and_chunk_independent(monkeypatch):
    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.05, (40, 256)).astype(np.float32)
    h = rng.uniform(0, 1, w.shape).astype(np.float32)
    for name in ("cb4f16", "cb3f16", "cb8f16"):
        first = get_scheme(name).pack(w, importance=h)
        again = get_scheme(name).pack(w.copy(), importance=h.copy())
        monkeypatch.setattr(cb, "KMEANS_CHUNK_VALUES", 256 * 8)  # 8 rows per chunk (cb8: its 8-row codebooks)
        chunked = get_scheme(name).pack(w, importance=h)
        monkeypatch.undo()
        for key in first:
            np.testing.assert_array_equal(first[key], again[key])
            np.testing.assert_array_equal(first[key], chunked[key])


@pytest.mark.parametrize("importance,message", [
    (np.ones((3, 64), np.float32), "importance of shape"),
    (-np.ones((4, 64), np.float32), "negative"),
    (np.full((4, 64), np.nan, np.float32), "NaN"),
])
def test_bad_importance_is_refused(importance, message):
    with pytest.raises(LlamaAotError, match=message):
        get_scheme("cb4f16").pack(np.ones((4, 64), np.float32), importance=importance)


def test_widths_that_cannot_be_stored():
    with pytest.raises(LlamaAotError, match="not a multiple of 32"):
        get_scheme("cb3f16").param_specs(8, 48)
    with pytest.raises(LlamaAotError, match="takes no options"):
        get_scheme("cb4f16", group_size=32)
