"""Perplexity and bits per byte of a compiled package (through its library) or of a checkpoint (through transformers).

Both are scored on the same tokens, the way the embedded model's TRAINING.md table was: each document is
``[bos] + tokens + [eos]``, cut into windows of ``context`` predicted tokens that overlap by one token, so every
token after the leading ``<bos>`` is predicted exactly once, each window from a fresh sequence. A package's
logits come from its library's ``score`` function (every position; compiler/model/llama.py), a checkpoint's from
``transformers`` in float32: the independent reference a compiled q0f32 package must match.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime_stubs.errors import LlamaAotError

from .corpus import doc_windows
from .documents import Document


@dataclass
class Perplexity:
    """One evaluation: what was scored, on which tokens, and the result."""

    model: str
    kind: str  # "package" or "checkpoint"
    quant: str
    data: str
    context: int
    documents: int
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes of the text those tokens cover
    nll_nats: float  # summed over the predicted tokens
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_nats / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll_nats / math.log(2) / self.bytes if self.bytes else float("nan")

    def to_json(self) -> dict:
        return {**asdict(self), "perplexity": self.perplexity, "bits_per_byte": self.bits_per_byte,
                "tokens_per_s": self.tokens / self.seconds if self.seconds else None}


class PackageScorer:
    """Every position's logits of a compiled package, from its library (Engine.score)."""

    kind = "package"

    def __init__(self, package_dir: Path, num_threads: int | None = None):
        from runtime_stubs.engine import Engine

        self.engine = Engine(package_dir, num_threads=num_threads)
        self.engine.require_score()  # before any progress bar
        cfg = self.engine.config
        q = cfg["quantization"]
        acts = cfg.get("projection_activations", "")
        self.quant = q["name"] + (f" ({acts} activations)" if acts.startswith("int8") else "")
        self.tokenizer = self.engine.tokenizer
        self.bos, self.eos = self.engine.bos_token_id, _first(cfg["model"].get("eos_token_ids"))
        self.max_context = self.engine.context_window
        self.vocab_size = self.engine.vocab_size

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.engine.score(ids)


class CheckpointScorer:
    """Every position's logits of a Hugging Face checkpoint, from transformers in float32 (the reference)."""

    kind = "checkpoint"
    quant = "f32 (transformers)"

    def __init__(self, checkpoint_dir: Path, num_threads: int | None = None):
        import json

        try:
            import torch

            from .reference import reference_model
        except ImportError:
            raise LlamaAotError("evaluating a checkpoint needs torch and transformers: pip install -e '.[test]', "
                                "or compile it and evaluate the package") from None
        from runtime_stubs.tokenizer import load_tokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        self._torch = torch
        try:
            config = json.loads((checkpoint_dir / "config.json").read_text())
        except (ValueError, OSError) as e:
            raise LlamaAotError(f"{checkpoint_dir}/config.json is unreadable ({e}); fix or replace it") from None
        self.tokenizer = load_tokenizer(checkpoint_dir / "tokenizer.json")
        self.model = reference_model(checkpoint_dir)  # pruned (per-layer shapes) checkpoints too
        self.bos, self.eos = config.get("bos_token_id"), _first(config.get("eos_token_id"))
        self.max_context = int(config.get("max_position_embeddings") or 0) or None
        self.vocab_size = int(config["vocab_size"])

    def logits(self, ids: list[int]) -> np.ndarray:
        with self._torch.no_grad():
            out = self.model(input_ids=self._torch.tensor([ids], dtype=self._torch.long), use_cache=False).logits
        return out[0].float().numpy()


def open_scorer(path: str | Path, num_threads: int | None = None):
    """A package (has llama-aot.json) or a checkpoint (has config.json): the scorer for it."""
    from runtime_stubs.package_format import PACKAGE_CONFIG

    path = Path(path)
    kind = PackageScorer if (path / PACKAGE_CONFIG).is_file() else \
        CheckpointScorer if (path / "config.json").is_file() else None
    if kind is not None and not (path / "tokenizer.json").is_file():
        raise LlamaAotError(f"{path} has no tokenizer.json: eval tokenizes text with the model's own tokenizer; copy "
                            "the checkpoint's tokenizer.json there (compile copies it into a package)")
    if kind is not None:
        return kind(path, num_threads)
    raise LlamaAotError(f"{path} is neither a compiled package ({PACKAGE_CONFIG}) nor a checkpoint (config.json); "
                        "pass an output directory of `llama-aot compile` or a Hugging Face model directory")


def evaluate(scorer, documents: list[Document], data_name: str, context: int, max_tokens: int | None = None,
             model_name: str = "", progress: bool = True) -> Perplexity:
    """Score ``documents`` in windows of ``context`` predicted tokens (at most ``max_tokens`` in all)."""
    from tqdm import tqdm

    if context < 1:
        raise LlamaAotError(f"--context must be at least 1, got {context}")
    if scorer.max_context and context > scorer.max_context:
        raise LlamaAotError(f"--context {context} exceeds the {scorer.kind}'s context window of {scorer.max_context}; "
                            "lower --context" + (" or recompile with a larger --context-window"
                                                 if scorer.kind == "package" else ""))
    if max_tokens is not None and max_tokens < 1:
        raise LlamaAotError(f"--max-tokens must be at least 1, got {max_tokens}")
    docs = [_tokenize(scorer, d) for d in documents]
    plan = _plan(docs, context, max_tokens)  # [(doc index, window, last predicted token's index in the doc)]
    total = sum(len(w) - 1 for _, w, _ in plan)
    nll, covered = 0.0, {}
    t0 = time.perf_counter()
    with tqdm(total=total, desc=f"eval {data_name}", unit="tok", disable=not progress, leave=False) as bar:
        for d, window, last in plan:
            logits = scorer.logits(window[:-1])
            nll += _nll(logits, window[1:])
            covered[d] = max(covered.get(d, 0), last)
            bar.update(len(window) - 1)
    seconds = time.perf_counter() - t0
    n_bytes = sum(docs[d].bytes_through(last) for d, last in covered.items())
    return Perplexity(model=model_name, kind=scorer.kind, quant=scorer.quant, data=data_name, context=context,
                      documents=len(covered), tokens=total, bytes=n_bytes, nll_nats=nll, seconds=seconds)


@dataclass
class _Tokenized:
    ids: list[int]  # [bos] + tokens + [eos] (each where the model has one)
    ends: list[int]  # per id: UTF-8 bytes of the text up to and including it

    def bytes_through(self, last: int) -> int:
        return self.ends[last]


def _tokenize(scorer, doc: Document) -> _Tokenized:
    enc = scorer.tokenizer.encode(doc.text, add_special_tokens=False)
    ids = list(enc.ids)
    bad = [t for t in ids if not 0 <= t < scorer.vocab_size]
    if bad:
        raise LlamaAotError(f"the tokenizer gives id {bad[0]}, outside the model's vocabulary of {scorer.vocab_size}; "
                            "the tokenizer.json does not belong to this model")
    # bytes covered through each token: the UTF-8 length of the text up to its end offset (exact where a window
    # ends on a character boundary, which a byte-level tokenizer's offsets always are)
    utf8_before = _utf8_prefix_bytes(doc.text)
    ends = [int(utf8_before[e]) for _, e in enc.offsets]
    lead = [scorer.bos] if scorer.bos is not None else []
    tail = [scorer.eos] if scorer.eos is not None else []
    n_bytes = len(doc.text.encode("utf-8"))
    return _Tokenized(ids=lead + ids + tail, ends=[0] * len(lead) + ends + [n_bytes] * len(tail))


def _utf8_prefix_bytes(text: str) -> np.ndarray:
    """[len(text) + 1]: the UTF-8 bytes of text[:i] for every i, in one pass (a prefix encoded per token would
    make a long document quadratic)."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    width = 1 + (cp >= 0x80).astype(np.int64) + (cp >= 0x800) + (cp >= 0x10000)
    return np.concatenate([[0], np.cumsum(width)])


def _plan(docs: list[_Tokenized], context: int, max_tokens: int | None) -> list[tuple[int, list[int], int]]:
    """The windows to score, in document order, cut off after ``max_tokens`` predicted tokens."""
    plan, n = [], 0
    for d, doc in enumerate(docs):
        start = 0
        for w in doc_windows(doc.ids, context):
            if max_tokens is not None and n + len(w) - 1 > max_tokens:
                w = w[: max_tokens - n + 1]  # at least 2 ids: n < max_tokens here
            plan.append((d, w, start + len(w) - 1))
            n += len(w) - 1
            start += context
            if max_tokens is not None and n >= max_tokens:
                return plan
    if not plan:
        raise LlamaAotError("the data has no token to predict (every document is empty); pass text with --data")
    return plan


def _nll(logits: np.ndarray, targets: list[int]) -> float:
    """Summed -log softmax(logits)[target], in float64."""
    x = logits.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - top).sum(axis=1)) + top[:, 0]
    return float((lse - x[np.arange(len(targets)), targets]).sum())


def _first(ids):
    if isinstance(ids, (list, tuple)):
        return ids[0] if ids else None
    return ids
