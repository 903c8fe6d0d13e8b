"""Sampling against direct probability computations."""

import numpy as np

from runtime_stubs.sampling import sample


def test_greedy_is_argmax():
    logits = np.array([0.1, 3.0, -2.0, 2.9])
    assert sample(logits, 0.0, 1.0, np.random.default_rng(0)) == 1


def test_top_p_restricts_to_nucleus():
    # probs ~ [0.64, 0.24, 0.09, 0.03]: top_p=0.7 keeps tokens 0 and 1 only
    logits = np.log(np.array([0.64, 0.24, 0.09, 0.03]))
    rng = np.random.default_rng(0)
    draws = {sample(logits, 1.0, 0.7, rng) for _ in range(300)}
    assert draws == {0, 1}


def test_temperature_frequencies_match_softmax():
    logits = np.array([1.0, 0.0, -1.0])
    rng = np.random.default_rng(1)
    n = 20000
    counts = np.bincount([sample(logits, 2.0, 1.0, rng) for _ in range(n)], minlength=3) / n
    expected = np.exp(logits / 2.0) / np.exp(logits / 2.0).sum()
    assert np.abs(counts - expected).max() < 0.02


def _reference_nucleus(logits, temperature, top_p):
    """The textbook definition: sort every probability, keep the prefix whose mass reaches top_p."""
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    return set(order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1].tolist()), p


def test_top_p_on_llama3_vocabulary_equals_the_sorted_definition():
    """128,256 ids; peaked and flat distributions, so the candidate set grows past its first 64 ids."""
    rng = np.random.default_rng(2)
    for scale, temperature, top_p in ((8.0, 0.7, 0.95), (1.0, 1.0, 0.9), (0.1, 1.5, 0.5), (3.0, 0.3, 0.99)):
        logits = (rng.standard_normal(128256) * scale).astype(np.float32)
        want, p = _reference_nucleus(logits.astype(np.float64), temperature, top_p)
        draws = [sample(logits, temperature, top_p, rng) for _ in range(200)]
        assert set(draws) <= want, (scale, temperature, top_p)
        if len(want) <= 4:  # frequencies within the nucleus follow the renormalized probabilities
            ids = sorted(want)
            counts = np.array([draws.count(i) for i in ids]) / len(draws)
            assert np.abs(counts - p[ids] / p[ids].sum()).max() < 0.12


def test_full_distribution_draws_follow_softmax_on_a_large_vocabulary():
    logits = np.full(50000, -30.0, dtype=np.float32)
    logits[[7, 4000, 49999]] = [2.0, 1.0, 0.0]  # the rest carry ~1e-9 of the mass together
    rng = np.random.default_rng(3)
    n = 6000
    draws = np.array([sample(logits, 1.0, 1.0, rng) for _ in range(n)])
    expected = np.exp([2.0, 1.0, 0.0]) / np.exp([2.0, 1.0, 0.0]).sum()
    assert set(draws.tolist()) <= {7, 4000, 49999}
    counts = np.array([(draws == i).mean() for i in (7, 4000, 49999)])
    assert np.abs(counts - expected).max() < 0.02
