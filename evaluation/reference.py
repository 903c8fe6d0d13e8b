"""transformers' LlamaForCausalLM in float32 on a checkpoint's weights: the independent reference that compiled
packages are checked against (tests) and that ``llama-aot eval CHECKPOINT`` scores with.

For pruned (heterogeneous) checkpoints (docs/pruned-config.md) transformers has no config for per-layer shapes,
so the model is built uniform and each layer's projections are replaced with modules of that layer's shape
(transformers' eager attention reshapes with -1 heads, so this is exact).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def reference_model(model_dir: Path, weights: dict | None = None):
    """A float32 transformers Llama with the checkpoint's (or the given) weights, heterogeneous layers included."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    if weights is None:
        weights = {}
        for f in sorted(model_dir.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as st:
                for k in st.keys():
                    weights[k] = st.get_tensor(k).to(torch.float32)
    return model_from_config(raw, weights, str(model_dir))


def model_from_config(raw: dict, weights: dict | None, name: str = "the checkpoint"):
    """The float32 model of a config.json dict (``layer_shapes`` honoured) holding ``weights`` (HF names;
    numpy arrays or torch tensors); ``None`` keeps transformers' random initialisation (seed torch first)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{k: v for k, v in raw.items() if k != "layer_shapes"})
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config).eval().to(torch.float32)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for i, shape in enumerate(raw.get("layer_shapes") or []):
        nh = shape.get("num_attention_heads", config.num_attention_heads)
        nkv = shape.get("num_key_value_heads", config.num_key_value_heads)
        ffn = shape.get("intermediate_size", config.intermediate_size)
        layer = model.model.layers[i]
        h = config.hidden_size
        attn = layer.self_attn
        attn.q_proj = torch.nn.Linear(h, nh * head_dim, bias=False)
        attn.k_proj = torch.nn.Linear(h, nkv * head_dim, bias=False)
        attn.v_proj = torch.nn.Linear(h, nkv * head_dim, bias=False)
        attn.o_proj = torch.nn.Linear(nh * head_dim, h, bias=False)
        attn.num_key_value_groups = nh // nkv
        layer.mlp.gate_proj = torch.nn.Linear(h, ffn, bias=False)
        layer.mlp.up_proj = torch.nn.Linear(h, ffn, bias=False)
        layer.mlp.down_proj = torch.nn.Linear(ffn, h, bias=False)
    if weights is None:
        for module in model.modules():  # the replaced projections get the config's initialiser too
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=config.initializer_range)
        if config.tie_word_embeddings:
            model.tie_weights()
        return model
    state = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) if isinstance(v, np.ndarray) else v.float()
             for k, v in weights.items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    from runtime_stubs.errors import LlamaAotError

    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise LlamaAotError(f"{name}: the weights do not match config.json ({str(e).splitlines()[-1].strip()[:200]}); "
                            "check the checkpoint") from None
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise LlamaAotError(f"{name}: the weights do not match config.json (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}); check the checkpoint")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model
