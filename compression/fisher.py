"""Per-weight importance for codebook quantization: the diagonal of the empirical Fisher information.

SqueezeLLM's observation: the perplexity cost of moving a weight by d is ~ F_ii * d**2 / 2, with F_ii the
mean squared gradient of the language-model loss over calibration text. Weighting each weight's k-means
error by F_ii (compiler/quantization/kmeans.py) spends the centroids where the loss is sensitive.

One sequence per step, so each squared gradient is that of one sample (a batch's gradient would average
signs away first). Sequences are the windows ``distill.batch_at(seed, step)`` picks: the same calibration
data give the same importance, and the same codebooks (the compile is reproducible).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime_stubs.errors import LlamaAotError

DEFAULT_SEQUENCES = 256
DEFAULT_SEQ_LEN = 256


def fisher_importance(model_dir: str | Path, data: str, sequences: int = DEFAULT_SEQUENCES,
                      seq_len: int = DEFAULT_SEQ_LEN, seed: int = 0, progress: bool = True) -> dict[str, np.ndarray]:
    """Hugging Face weight name -> float32 mean squared gradient (same shape) over ``sequences``
    windows of ``data`` (``train``: the embedded model's training split; else a UTF-8 text file)."""
    import torch
    from tqdm import tqdm

    from evaluation.reference import reference_model
    from .distill import batch_at, token_stream

    if sequences <= 0 or seq_len <= 1:
        raise LlamaAotError("calibration needs at least one sequence of at least 2 tokens")
    model_dir = Path(model_dir)
    stream = token_stream(model_dir, data)
    model = reference_model(model_dir)
    model.float().train(False)
    params = {name: p for name, p in model.named_parameters() if p.ndim == 2}
    sums = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    for step in tqdm(range(sequences), desc="calibrate: fisher", unit="seq", disable=not progress):
        x = batch_at(stream, step, seed, 1, seq_len)
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=x[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
        loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                sums[name] += p.grad.float() ** 2
    out = {name: (s / sequences).numpy() for name, s in sums.items()}
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" in out:
        out.pop("lm_head.weight")  # tied: one tensor, its gradient already holds both uses
    return out
