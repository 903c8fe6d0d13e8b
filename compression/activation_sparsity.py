"""Training-free activation sparsity (TEAL, Liu et al. 2024): a magnitude threshold per projection input.

Hidden states entering a projection are zero-mean and heavy-peaked, so most entries are small; zeroing those
with |x| <= t changes the output little, and a GEMV over K-major weights then skips their weight rows
(schedules/cpu/sparse_gemv.py). t is calibrated per projection input as the ``sparsity``-quantile of |x| over
calibration text in the float model, so every projection drops the same fraction of its inputs on text like
the calibration data (TEAL's uniform allocation).

Which inputs: the four projection inputs of each layer, each one threshold:

    self_attn.qkv_proj  <- input_layernorm(x)           (q_proj, k_proj, v_proj share it)
    self_attn.o_proj    <- the attention output
    mlp.gate_up_proj    <- post_attention_layernorm(x)  (gate_proj, up_proj share it)
    mlp.down_proj       <- silu(gate) * up

The lm_head (and the embedding) stay dense, as in TEAL. The threshold applies at every position (prefill,
decode, ``score``), so what ``llama-aot eval`` measures is what decode computes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from runtime_stubs.errors import LlamaAotError

#: our projection -> the Hugging Face modules whose (shared) input it thresholds
SPARSE_INPUTS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
DEFAULT_SEQUENCES = 64
SAMPLES_PER_INPUT = 1 << 20  # |x| values kept per projection input: the quantile's error is ~1e-3 of a rank


def calibrate_thresholds(model_dir: str | Path, data: str, sparsity: float, sequences: int = DEFAULT_SEQUENCES,
                         seq_len: int = 256, seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Our module path (``layers.3.mlp.down_proj``) -> threshold t, the ``sparsity``-quantile of |input| over
    ``sequences`` windows of ``data`` (``train`` or a UTF-8 file) in the float model."""
    import torch
    from tqdm import tqdm

    from evaluation.reference import reference_model
    from .distill import batch_at, token_stream

    if not 0.0 < sparsity < 1.0:
        raise LlamaAotError(f"--activation-sparsity must lie strictly between 0 and 1, got {sparsity}")
    if sequences <= 0 or seq_len <= 1:
        raise LlamaAotError("calibration needs at least one sequence of at least 2 tokens")
    stream = token_stream(Path(model_dir), data)
    model = reference_model(Path(model_dir))
    model.float().train(False)
    per_seq = max(1, SAMPLES_PER_INPUT // sequences)
    samples: dict[str, list[np.ndarray]] = {}
    rng = np.random.default_rng(seed)

    def keep(path):
        def hook(_module, args):
            a = args[0].detach().abs().reshape(-1).numpy()
            samples.setdefault(path, []).append(a if a.size <= per_seq else rng.choice(a, per_seq, replace=False))
        return hook

    handles = []
    for i, layer in enumerate(model.model.layers):
        for ours, hf in SPARSE_INPUTS.items():
            handles.append(layer.get_submodule(hf[0]).register_forward_pre_hook(keep(f"layers.{i}.{ours}")))
    try:
        with torch.no_grad():
            for step in tqdm(range(sequences), desc="calibrate: activation thresholds", unit="seq",
                             disable=not progress):
                model(input_ids=batch_at(stream, step, seed, 1, seq_len)[:, :-1], use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {path: float(np.quantile(np.concatenate(v), sparsity)) for path, v in samples.items()}


@contextlib.contextmanager
def thresholded(model, thresholds: dict[str, float]):
    """Inside: the transformers ``model``'s projection inputs with |x| <= t set to zero (``thresholds`` as
    :func:`calibrate_thresholds` returns them); counts[path] = [zeroed, total] entries seen."""
    import torch

    counts: dict[str, list[int]] = {}

    def mask(path, t, count):
        def hook(_module, args):
            x = args[0]
            small = x.abs() <= t
            if count:  # once per shared input (its first HF module)
                c = counts.setdefault(path, [0, 0])
                c[0] += int(small.sum())
                c[1] += small.numel()
            return (torch.where(small, torch.zeros_like(x), x),) + tuple(args[1:])
        return hook

    handles = []
    for i, layer in enumerate(model.model.layers):
        for ours, hf_names in SPARSE_INPUTS.items():
            path = f"layers.{i}.{ours}"
            if path in thresholds:
                for j, hf in enumerate(hf_names):
                    handles.append(layer.get_submodule(hf).register_forward_pre_hook(
                        mask(path, thresholds[path], j == 0)))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()
