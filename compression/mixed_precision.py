"""``--quant mixed --bits-per-weight B``: a scheme per tensor, chosen by measured sensitivity under a bytes budget.

Sensitivity is the second-order loss estimate SqueezeLLM and HAWQ use: moving weight i by d costs about
F_ii * d**2 / 2 of cross-entropy (F_ii: the diagonal of the Fisher information over calibration text,
compression/fisher.py). So packing tensor t with scheme s costs

    cost(t, s) = 1/2 * sum_i F_ii * (w_i - deq(pack_s(w))_i)**2

measured by packing each tensor with each candidate scheme for real (the codebooks' k-means included). Costs
add over tensors to first order, so the best assignment under a budget is a multiple-choice knapsack: minimise
the summed cost subject to the summed bytes <= B / 8 * (the tensors' weights). It is solved exactly by dynamic
programming over the budget cut into ``BUDGET_STEPS`` steps, each tensor's bytes rounded *up* to whole steps,
so the assignment never exceeds the budget; what the rounding left (at most one step per tensor) is then spent
in exact bytes by the best cost-lowering swaps that still fit.

The costs ignore how tensors interact (second order across tensors), as HAWQ's do; the package's perplexity
(``llama-aot eval``) is what shows whether the choice paid (docs/quantization.md, "Mixed precision").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from runtime_stubs.errors import LlamaAotError

#: the candidates of a mixed assignment by default: every scheme with a fast kernel somewhere and < 16 bits
DEFAULT_CANDIDATES = ("q8f16", "q4f16", "cb4f16", "cb3f16")
#: the default budget: q4f16's size (4 bits + one fp16 scale per 32 weights)
DEFAULT_BITS_PER_WEIGHT = 4.5
#: calibration windows the loss-delta sensitivity evaluates every tensor and scheme on (fixed: the windows are
#: the same for every candidate, so the differences are paired and their noise far below the loss's own)
LOSS_SEQUENCES = 64
#: budget resolution of the knapsack: 1/8192 of the budget per step (the rounding loses < 0.02% per tensor)
BUDGET_STEPS = 8192


@dataclass(frozen=True)
class Option:
    """One candidate scheme for one tensor: its stored bytes and its estimated loss increase (nats)."""

    scheme: str
    nbytes: int
    cost: float


def measure(checkpoint, plan: dict, modules: list[str], candidates: dict, importance: dict,
            progress: bool = True, cost=None) -> dict[str, list[Option]]:
    """Module -> its options, packing every module's weight with every candidate scheme that can store it.

    ``plan``: the weight plan (module -> WeightSource, for the HF tensor names); ``candidates``: name -> scheme;
    ``importance``: HF name -> Fisher diagonal (it weights the codebooks' k-means, as in a calibrated compile).
    ``cost(hf_names, w, deq)``: the cost of replacing ``w`` by ``deq``; default the Fisher-weighted squared error
    (``LossDelta`` measures the calibration loss instead)."""
    options: dict[str, list[Option]] = {}
    for module in tqdm(modules, desc="mixed precision: measure", unit="tensor", disable=not progress):
        names = plan[module].hf_names
        w = np.concatenate([checkpoint.read(n) for n in names], axis=0).astype(np.float32, copy=False)
        h = np.concatenate([importance[n] for n in names], axis=0).astype(np.float32, copy=False)
        found = []
        for name, scheme in candidates.items():
            try:
                scheme.param_specs(*w.shape)
            except LlamaAotError:
                continue  # this scheme cannot store this shape (e.g. K not a multiple of its group)
            packed = scheme.pack(w, importance=h) if getattr(scheme, "uses_importance", False) else scheme.pack(w)
            deq = scheme.dequantize(packed)
            if cost is None:
                err = w - deq
                c = 0.5 * float(np.dot(h.ravel(), (err * err).ravel()))
            else:
                c = cost(names, w, deq)
            found.append(Option(name, sum(int(a.nbytes) for a in packed.values()), c))
        if not found:
            raise LlamaAotError(f"no scheme of --mixed-schemes can store {module} ({list(w.shape)}); add q8f16 or q4f16")
        options[module] = found
    return options


class LossDelta:
    """``--sensitivity loss``: a tensor's cost is the increase of the calibration loss (nats per token) when it
    alone is replaced by its dequantized weights in the float model (transformers), on ``LOSS_SEQUENCES`` fixed
    windows of the calibration text. Exact for each tensor where the Fisher estimate is second-order, at one
    forward pass over the windows per tensor and scheme (the embedded model: about a minute)."""

    def __init__(self, model_dir, data: str, sequences: int, seq_len: int, seed: int = 0):
        import torch

        from evaluation.reference import reference_model
        from .distill import batch_at, token_stream

        stream = token_stream(model_dir, data)
        self.torch = torch
        self.model = reference_model(model_dir).float().train(False)
        self.params = dict(self.model.named_parameters())
        self.windows = torch.cat([batch_at(stream, step, seed, 1, seq_len) for step in range(sequences)])
        self.base = self._loss()

    def _loss(self) -> float:
        torch = self.torch
        total, count = 0.0, 0
        with torch.no_grad():
            for x in self.windows.split(16):
                logits = self.model(input_ids=x[:, :-1], use_cache=False).logits
                loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                                         x[:, 1:].reshape(-1), reduction="sum")
                total, count = total + float(loss), count + x[:, 1:].numel()
        return total / count

    def __call__(self, hf_names, w: np.ndarray, deq: np.ndarray) -> float:
        torch = self.torch
        saved, row = [], 0
        with torch.no_grad():
            for n in hf_names:  # a fused module's rows are its HF tensors' rows, in order
                p = self.params[n]
                saved.append(p.detach().clone())
                p.copy_(torch.from_numpy(np.ascontiguousarray(deq[row:row + p.shape[0]])))
                row += p.shape[0]
        try:
            return self._loss() - self.base
        finally:
            with torch.no_grad():
                for n, old in zip(hf_names, saved):
                    self.params[n].copy_(old)


def allocate(options: dict[str, list[Option]], budget_bytes: int) -> dict[str, Option]:
    """The option per module minimising the summed cost with summed bytes <= ``budget_bytes`` (module order kept).

    Raises LlamaAotError when even the smallest option of every module does not fit."""
    smallest = sum(min(o.nbytes for o in opts) for opts in options.values())
    if smallest > budget_bytes:
        raise LlamaAotError(f"the budget of {budget_bytes:,} bytes is below the smallest mix ({smallest:,} bytes, every "
                            "tensor in its smallest scheme): raise --bits-per-weight")
    step = budget_bytes / BUDGET_STEPS
    inf = np.inf
    best = np.full(BUDGET_STEPS + 1, inf)
    best[0] = 0.0
    picks = []  # per module: the option index that reached each capacity
    for opts in options.values():
        new = np.full_like(best, inf)
        pick = np.full(best.shape, -1, dtype=np.int64)
        for j, o in enumerate(opts):  # options in their given order: ties keep the earlier one
            units = int(np.ceil(o.nbytes / step))
            if units > BUDGET_STEPS:
                continue
            cand = np.full_like(best, inf)
            cand[units:] = best[: BUDGET_STEPS + 1 - units] + o.cost
            better = cand < new
            new[better], pick[better] = cand[better], j
        best, picks = new, picks + [pick]
    cap = int(np.argmin(best))  # the least cost at any capacity up to the budget
    chosen: dict[str, Option] = {}
    if not np.isfinite(best[cap]):  # the rounding up excluded every mix (the smallest one fits by a hair)
        chosen = {m: min(opts, key=lambda o: o.nbytes) for m, opts in options.items()}
    else:
        for module, opts, pick in reversed(list(zip(options, options.values(), picks))):
            o = opts[int(pick[cap])]
            chosen[module] = o
            cap -= int(np.ceil(o.nbytes / step))
    return _spend_rounding(options, {m: chosen[m] for m in options}, budget_bytes)


def _spend_rounding(options: dict[str, list[Option]], chosen: dict[str, Option], budget_bytes: int) -> dict[str, Option]:
    """Spend what the DP's rounding up left of the budget, in exact bytes: take the swap that lowers the cost most
    while the true total still fits, until none does (a few swaps at most; ties: first module, first option)."""
    used = sum(o.nbytes for o in chosen.values())
    while True:
        best = None
        for module, opts in options.items():
            cur = chosen[module]
            for o in opts:
                gain = cur.cost - o.cost
                if gain > 0 and used - cur.nbytes + o.nbytes <= budget_bytes and (best is None or gain > best[0]):
                    best = (gain, module, o)
        if best is None:
            return chosen
        _, module, o = best
        used += o.nbytes - chosen[module].nbytes
        chosen[module] = o


def parse_candidates(text: str | None) -> tuple[str, ...]:
    """``--mixed-schemes q8f16,q4f16,...`` -> names (default DEFAULT_CANDIDATES); one-line errors for bad lists."""
    from compiler.quantization import SCHEMES

    if text is None:
        return DEFAULT_CANDIDATES
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in SCHEMES]
    if bad or not names:
        raise LlamaAotError(f"--mixed-schemes takes a comma-separated list of {', '.join(SCHEMES)}; got {text!r}")
    return names


def summary(chosen: dict[str, Option], weights: int) -> dict:
    """What ``llama-aot.json`` records of the choice: bits per weight reached and the estimated cost."""
    nbytes = sum(o.nbytes for o in chosen.values())
    counts: dict[str, int] = {}
    for o in chosen.values():
        counts[o.scheme] = counts.get(o.scheme, 0) + 1
    return {"bits_per_weight": round(8 * nbytes / weights, 4), "bytes": nbytes,
            "estimated_loss_increase_nats": round(sum(o.cost for o in chosen.values()), 6),
            "tensors_per_scheme": dict(sorted(counts.items()))}
