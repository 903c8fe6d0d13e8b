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
