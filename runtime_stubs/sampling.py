"""Next-token sampling on host logits: greedy, temperature, top-p.

Nothing here sorts the vocabulary: on Llama 3's 128,256 ids a full ``argsort`` per token costs ~16 ms,
a third of a 1B decode step. Top-p only needs the most probable ids: one comparison pass keeps those
above a weight threshold, lowered 1000x until they hold top_p of the mass, and only they are sorted.
Without top-p one cumulative sum and a binary search draw from the whole distribution.
"""

from __future__ import annotations

import numpy as np


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Pick the next token from one row of logits.

    temperature <= 0 means greedy (argmax); top_p < 1 keeps the smallest set of tokens whose
    probability mass reaches top_p, then renormalizes.
    """
    logits = np.asarray(logits).reshape(-1)
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float32, copy=False)
    weights = np.exp((z - z.max()) * np.float32(1.0 / temperature))  # unnormalized probabilities, max 1
    if top_p < 1.0:
        ids = np.flatnonzero(weights >= _nucleus_floor(weights, top_p))
        return int(ids[_draw(weights[ids], rng)])
    return _draw(weights, rng)


def _draw(weights: np.ndarray, rng: np.random.Generator) -> int:
    """An index drawn with probability proportional to ``weights``: the block of 1024 ids first (from the
    block sums), then the id within it, so the float64 cumulative sums stay short."""
    block = 1024
    n = weights.size
    if n <= 4 * block:  # short enough for one cumulative sum (and fewer numpy calls)
        cumulative = np.cumsum(weights, dtype=np.float64)
        return min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), n - 1)
    padded = np.zeros(-(-n // block) * block, dtype=weights.dtype)
    padded[:n] = weights
    sums = np.cumsum(padded.reshape(-1, block).sum(axis=1, dtype=np.float64))
    b = min(int(np.searchsorted(sums, rng.random() * sums[-1], side="right")), sums.size - 1)
    within = np.cumsum(padded[b * block : (b + 1) * block], dtype=np.float64)
    i = min(int(np.searchsorted(within, rng.random() * within[-1], side="right")), block - 1)
    return min(b * block + i, n - 1)


def _nucleus_floor(weights: np.ndarray, top_p: float) -> float:
    """The weight of the least probable id in the nucleus (the smallest set, most probable first, whose
    weights reach top_p of the total): the nucleus is {weight >= floor}.

    The nucleus lies within every set {weight >= t} whose mass reaches top_p: t starts at 1e-3 of the most
    probable id's weight and drops 1000x until it does; only that set's weights are sorted."""
    target = top_p * float(weights.sum(dtype=np.float64))
    threshold = 1e-3
    while True:
        candidates = weights[weights >= threshold]
        if threshold == 0.0 or candidates.sum(dtype=np.float64) >= target:
            break
        threshold = threshold * 1e-3 if threshold > 1e-30 else 0.0
    ordered = np.sort(candidates)[::-1]
    cumulative = np.cumsum(ordered, dtype=np.float64)
    return float(ordered[min(int(np.searchsorted(cumulative, target)), ordered.size - 1)])
