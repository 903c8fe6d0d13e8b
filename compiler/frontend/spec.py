"""ModelSpec: the architecture of one Llama 3 checkpoint, with per-layer shapes first-class.

Everything downstream (Relax model, KV caches, quantization, schedules, the package's
``llama-aot.json``) reads this object, never the raw ``config.json``. Plain HF checkpoints give
identical layers; pruned checkpoints (see docs/pruned-config.md) give each layer its own
head counts and FFN width.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSpec:
    """Shapes of one decoder layer."""

    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3 ("llama3") RoPE frequency scaling."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def to_tvm_dict(self) -> dict:
        """The dict TVM's paged KV cache expects for ``rope_scaling``."""
        return {"rope_type": "llama3", **dataclasses.asdict(self)}


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a (possibly pruned) Llama 3 model."""

    hidden_size: int
    head_dim: int
    vocab_size: int
    layers: tuple[LayerSpec, ...]
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    tie_word_embeddings: bool
    max_position_embeddings: int
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    source_dtype: str  # "float32" | "float16" | "bfloat16": the checkpoint's weight dtype

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def is_uniform(self) -> bool:
        return len(set(self.layers)) <= 1

    def attention_groups(self) -> list[tuple[tuple[int, int], list[int]]]:
        """Layers grouped by (num_attention_heads, num_key_value_heads), in first-seen order.

        TVM's paged KV cache fixes the head counts per cache object, so the model keeps one
        cache per group; an unpruned model has exactly one group.
        """
        groups: dict[tuple[int, int], list[int]] = {}
        for i, layer in enumerate(self.layers):
            groups.setdefault((layer.num_attention_heads, layer.num_key_value_heads), []).append(i)
        return list(groups.items())

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["layers"] = [dataclasses.asdict(layer) for layer in self.layers]
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["layers"] = tuple(LayerSpec(**layer) for layer in d["layers"])
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"]) if d.get("rope_scaling") else None
        d["eos_token_ids"] = tuple(d["eos_token_ids"])
        return cls(**d)
