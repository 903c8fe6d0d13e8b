"""How much memory a package needs on the device: weights, KV cache, activations, peak.

The KV cache is counted at the full context window (pages are preallocated); activations are the
largest live set of one prefill chunk: residual stream, normed input, fused QKV, attention output,
gate+up and SwiGLU output of the widest layer, plus the logits row.
"""

from __future__ import annotations

from .frontend.spec import ModelSpec

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def memory_plan(spec: ModelSpec, weight_bytes: int, context_window: int, prefill_chunk: int,
                activation_dtype: str, page_size: int, kv_dtype: str | None = None, kv_tokens: int | None = None,
                windowed_layers: tuple[int, ...] | None = None) -> dict:
    """``kv_tokens``: the cache's capacity when it is not the context window (a sliding window's), for
    every layer or, with ``windowed_layers``, for those (the others hold the context window)."""
    act = _BYTES[activation_dtype]
    by_layer = [context_window if kv_tokens is None or (windowed_layers is not None and i not in windowed_layers)
                else kv_tokens for i in range(len(spec.layers))]
    kv_elem = _BYTES[kv_dtype or activation_dtype]
    kv_bytes = sum(2 * layer.num_key_value_heads * spec.head_dim * -(-n // page_size) * page_size * kv_elem
                   for layer, n in zip(spec.layers, by_layer))
    widest = max(
        (layer.num_attention_heads + 2 * layer.num_key_value_heads) * spec.head_dim
        + layer.num_attention_heads * spec.head_dim
        + 3 * layer.intermediate_size
        for layer in spec.layers
    )
    activation_bytes = prefill_chunk * (3 * spec.hidden_size + widest) * act + spec.vocab_size * 4
    return {
        "weight_bytes": weight_bytes,
        "kv_cache_bytes": kv_bytes,
        "activation_bytes": activation_bytes,
        "peak_bytes": weight_bytes + kv_bytes + activation_bytes,
        "context_window": context_window,
        "kv_cache_tokens": max(by_layer),
        **({"kv_cache_tokens_by_layer": by_layer} if len(set(by_layer)) > 1 else {}),
        "prefill_chunk": prefill_chunk,
    }
