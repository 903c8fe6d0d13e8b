"""Training for pruning on the CPU: the model's own training text as random windows, the distillation loss from
the unpruned teacher, a warmup + cosine learning rate, and a loop that can stop, save and resume bit for bit
(every batch and every gate sample is a function of (seed, step) alone)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from runtime_stubs.errors import LlamaAotError


def token_stream(model_dir: Path, data: str) -> np.ndarray:
    """The training text as one stream of ids: ``train`` is the embedded model's training split
    (evaluation/corpus.py), else a UTF-8 text file; each document is ``[bos] + tokens + [eos]``."""
    import json

    from evaluation.documents import load_documents
    from runtime_stubs.tokenizer import load_tokenizer

    docs = [d.text for d in load_documents(data)]  # bad data first: its error names the file
    if not (model_dir / "tokenizer.json").is_file():
        raise LlamaAotError(f"{model_dir} has no tokenizer.json: text for training or calibration is tokenized with "
                            "the model's own tokenizer; copy the checkpoint's tokenizer.json there")
    config = json.loads((model_dir / "config.json").read_text())
    tok = load_tokenizer(model_dir / "tokenizer.json")
    bos, eos = config.get("bos_token_id"), config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    ids = [([bos] if bos is not None else []) + e.ids + ([eos] if eos is not None else [])
           for e in tok.encode_batch(docs, add_special_tokens=False)]
    stream = np.concatenate([np.asarray(d, dtype=np.int64) for d in ids])
    if stream.size < 2:
        raise LlamaAotError(f"{data} gives {stream.size} token(s); pruning and calibration need text")
    return stream


def batch_at(stream: np.ndarray, step: int, seed: int, batch: int, seq_len: int) -> torch.Tensor:
    """[batch, seq_len + 1] random windows, chosen by (seed, step) only: a resumed run sees the same batches."""
    seq_len = min(seq_len, stream.size - 1)
    starts = np.random.default_rng([seed, step]).integers(0, stream.size - seq_len, batch)
    return torch.from_numpy(stream[starts[:, None] + np.arange(seq_len + 1)])


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per token at temperature 1, averaged over tokens."""
    t = torch.log_softmax(teacher_logits.float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum(-1).mean()


def learning_rate(step: int, total: int, peak: float, warmup: int = 10) -> float:
    """Linear warmup, then cosine decay to 0.1 x peak at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def teacher_logits(teacher, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return teacher(input_ids=x, use_cache=False).logits
