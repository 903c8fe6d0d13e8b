"""Random Llama checkpoints in real Hugging Face layout, for tests and benchmarks.

Tensors are generated and written one chunk at a time (the header is computed up front from
the shapes), so even a Llama-3.2-1B-shape model with a 128256-token vocabulary is written
with a few tens of MiB of memory. bfloat16 is encoded here (round-to-nearest-even), since
numpy has no bfloat16.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .checkpoint import INDEX_NAME, SINGLE_NAME, expected_tensors
from .config import LLAMA3_ROPE_FIELDS, spec_from_config

_CODES = {"float32": ("F32", 4), "float16": ("F16", 2), "bfloat16": ("BF16", 2)}
_CHUNK_ELEMS = 1 << 20  # 1M values (4 MiB float32) generated at a time


def llama32_1b_config(vocab_size: int = 128256) -> dict:
    """config.json values of meta-llama/Llama-3.2-1B(-Instruct), published layout."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "head_dim": 64,
        "hidden_act": "silu",
        "hidden_size": 2048,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "num_attention_heads": 32,
        "num_hidden_layers": 16,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def llama31_8b_config(vocab_size: int = 128256) -> dict:
    """config.json values of meta-llama/Llama-3.1-8B(-Instruct), published layout."""
    return dict(
        llama32_1b_config(vocab_size),
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_key_value_heads=8, head_dim=128,
        tie_word_embeddings=False,
        rope_scaling={"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                      "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    )


def convert_config_layout(config: dict, layout: str, dtype: str | None = None) -> dict:
    """Rewrite a config dict (either layout) into ``layout`` ("published" | "transformers5").

    Also fills ``architectures``/``model_type`` and, if given, sets the dtype key.
    """
    if layout not in ("published", "transformers5"):
        raise ValueError(f"config_layout must be 'published' or 'transformers5', got {layout!r}")
    cfg = dict(config)
    params = cfg.pop("rope_parameters", None)
    scaling = cfg.pop("rope_scaling", None)
    theta = cfg.pop("rope_theta", None)
    old_dtype = cfg.pop("dtype", None) or cfg.pop("torch_dtype", None)
    cfg.pop("torch_dtype", None)
    src = params if params is not None else scaling
    if params is not None and "rope_theta" in params:
        theta = params["rope_theta"]
    theta = float(theta) if theta is not None else 10000.0
    rope_type = "default"
    if src:
        rope_type = src.get("rope_type", src.get("type", "default")) or "default"
    fields = {k: src[k] for k in LLAMA3_ROPE_FIELDS if k in src} if rope_type == "llama3" else {}

    cfg.setdefault("architectures", ["LlamaForCausalLM"])
    cfg.setdefault("model_type", "llama")
    dtype = dtype or old_dtype
    if layout == "published":
        cfg["rope_theta"] = theta
        cfg["rope_scaling"] = {**fields, "rope_type": rope_type} if rope_type != "default" else None
        if dtype is not None:
            cfg["torch_dtype"] = dtype
    else:
        cfg["rope_parameters"] = {"rope_theta": theta, "rope_type": rope_type, **fields}
        if dtype is not None:
            cfg["dtype"] = dtype
    return dict(sorted(cfg.items()))


def write_random_checkpoint(
    out_dir: str | Path,
    config: dict,
    *,
    dtype: str = "float32",
    num_shards: int = 1,
    seed: int = 0,
    config_layout: str = "published",
) -> Path:
    """Write ``config.json`` and random weights for ``config`` into ``out_dir``; return it.

    Matrices are N(0, 0.02^2), norm weights 1 + 0.1*N(0, 1). Per-layer shapes follow
    ``layer_shapes`` when present. ``num_shards`` > 1 writes ``model-0000i-of-0000n.safetensors``
    plus ``model.safetensors.index.json``; the values do not depend on ``num_shards``.
    """
    if dtype not in _CODES:
        raise ValueError(f"dtype must be one of {sorted(_CODES)}, got {dtype!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = convert_config_layout(config, config_layout, dtype)
    spec = spec_from_config(cfg)
    tensors = list(expected_tensors(spec).items())
    if not 1 <= num_shards <= len(tensors):
        raise ValueError(f"num_shards must be between 1 and {len(tensors)}, got {num_shards}")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    code, itemsize = _CODES[dtype]
    sizes = [int(np.prod(shape)) * itemsize for _, shape in tensors]
    groups = _split(sizes, num_shards)
    rng = np.random.default_rng(seed)
    if num_shards == 1:
        _write_file(out / SINGLE_NAME, tensors, code, dtype, rng)
        return out
    weight_map = {}
    start = 0
    for k, count in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{num_shards:05d}.safetensors"
        part = tensors[start : start + count]
        start += count
        _write_file(out / fname, part, code, dtype, rng)
        weight_map.update({name: fname for name, _ in part})
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    return out


def _split(sizes: list[int], n: int) -> list[int]:
    """Counts of consecutive tensors per shard, balanced by bytes, none empty."""
    total = sum(sizes)
    counts, acc, k = [0] * n, 0, 0
    for i, s in enumerate(sizes):
        remaining_tensors = len(sizes) - i
        remaining_shards = n - k - 1
        if counts[k] and k < n - 1 and (acc >= total * (k + 1) / n or remaining_tensors <= remaining_shards):
            k += 1
        counts[k] += 1
        acc += s
    return counts


def _write_file(path: Path, tensors: list[tuple[str, tuple[int, ...]]], code: str, dtype: str, rng) -> None:
    itemsize = _CODES[dtype][1]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in tensors:
        nbytes = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # pad so the data buffer is 8-byte aligned, like safetensors
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, shape in tensors:
            is_norm = len(shape) == 1
            n = int(np.prod(shape))
            for lo in range(0, n, _CHUNK_ELEMS):
                x = rng.standard_normal(min(_CHUNK_ELEMS, n - lo), dtype=np.float32)
                if is_norm:
                    x *= 0.1
                    x += 1.0
                else:
                    x *= 0.02
                _encode(x, dtype).tofile(f)


def _encode(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return x.astype("<f4", copy=False)
    if dtype == "float16":
        return x.astype("<f2")
    return float32_to_bfloat16_bits(x)


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round-to-nearest-even like torch. Finite input."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype("<u2")
