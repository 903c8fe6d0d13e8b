"""Which Hugging Face tensors feed which parameter of our model, and how they are converted.

Fused projections (qkv, gate_up) are HF row blocks concatenated along the output dim; every
quantization scheme packs rows independently, so concatenating first is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from ..frontend.spec import ModelSpec
from ..quantization import QuantScheme
from ..quantization.assignment import SchemeAssignment


THRESHOLD = "input_threshold"  # the parameter suffix of a projection's input threshold (QuantizedLinear)


@dataclass(frozen=True)
class WeightSource:
    """One module's weights: HF tensors to concatenate, and the scheme that packs them (None = raw f32)."""

    hf_names: tuple[str, ...]
    scheme: QuantScheme | None
    #: --activation-sparsity: the calibrated threshold of this projection's input (its ``input_threshold``)
    input_threshold: float | None = None


def weight_plan(spec: ModelSpec, schemes: SchemeAssignment, thresholds: dict[str, float] | None = None
                ) -> dict[str, WeightSource]:
    """Module path in our model -> where its weights come from, packed by ``schemes(path)``; ``thresholds``:
    the projections' input thresholds (--activation-sparsity)."""
    thresholds = thresholds or {}
    plan = {"embed_tokens": WeightSource(("model.embed_tokens.weight",), schemes("embed_tokens"))}
    for i in range(spec.num_layers):
        hf = f"model.layers.{i}"
        for ours, parts in (("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
                            ("self_attn.o_proj", ("self_attn.o_proj",)),
                            ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")),
                            ("mlp.down_proj", ("mlp.down_proj",))):
            path = f"layers.{i}.{ours}"
            plan[path] = WeightSource(tuple(f"{hf}.{p}.weight" for p in parts), schemes(path), thresholds.get(path))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            plan[f"layers.{i}.{norm}"] = WeightSource((f"{hf}.{norm}.weight",), None)
    plan["norm"] = WeightSource(("model.norm.weight",), None)
    if not spec.tie_word_embeddings:
        plan["lm_head"] = WeightSource(("lm_head.weight",), schemes("lm_head"))
    return plan


def quantized_modules(plan: dict[str, WeightSource]) -> list[str]:
    """The plan's modules that a scheme packs, in plan order."""
    return [m for m, source in plan.items() if source.scheme is not None]


def converted_params(
    checkpoint, plan: dict[str, WeightSource], param_names: list[str], param_dtypes: dict[str, str],
    importance: dict[str, np.ndarray] | None = None,
) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """Yield (param name, array, extra manifest fields) in ``param_names`` order, converting one
    module at a time. The extra fields are the scheme's ``manifest_fields`` (e.g. q4f16's nibble
    order, which depends on the tensor's K). ``importance`` (HF name -> array of the tensor's shape, from
    a calibration pass) reaches the schemes that weight their fit by it (codebooks).

    Only one module's source tensors and packed arrays are alive at once, so peak memory
    stays near the largest (fused) tensor.
    """
    current_prefix, packed, fields = None, {}, {}
    for name in param_names:
        prefix, suffix = name.rsplit(".", 1)
        if prefix != current_prefix:
            source = plan[prefix]
            tensors = [checkpoint.read(n) for n in source.hf_names]
            w = tensors[0] if len(tensors) == 1 else np.concatenate(tensors, axis=0)
            del tensors
            if source.scheme is None:
                packed = {"weight": w}
            elif importance is not None and getattr(source.scheme, "uses_importance", False):
                h = [importance[n] for n in source.hf_names]
                packed = source.scheme.pack(w, importance=h[0] if len(h) == 1 else np.concatenate(h, axis=0))
            else:
                packed = source.scheme.pack(w)
            fields = {} if source.scheme is None else source.scheme.manifest_fields(*w.shape)
            if source.input_threshold is not None:
                packed[THRESHOLD] = np.array([source.input_threshold], dtype=np.float32)
            current_prefix = prefix
        arr = packed.pop(suffix)
        yield name, np.ascontiguousarray(arr.astype(param_dtypes[name], copy=False)), fields.get(suffix, {})


def planned_params(checkpoint, plan: dict[str, WeightSource], dtype: str) -> tuple[dict[str, tuple], dict[str, str]]:
    """(param shapes, param dtypes) that the converted weights will have, from the checkpoint's tensor
    shapes and each module's scheme alone (no Relax model needed); unquantized weights (norms) in ``dtype``."""
    shapes: dict[str, tuple] = {}
    dtypes: dict[str, str] = {}
    for prefix, source in plan.items():
        first = tuple(checkpoint.info(source.hf_names[0])[0])
        if source.scheme is None:
            shapes[f"{prefix}.weight"], dtypes[f"{prefix}.weight"] = first, dtype
            continue
        n = sum(int(checkpoint.info(h)[0][0]) for h in source.hf_names)
        for suffix, (shape, param_dtype) in source.scheme.param_specs(n, int(first[-1])).items():
            shapes[f"{prefix}.{suffix}"] = tuple(int(x) for x in shape)
            dtypes[f"{prefix}.{suffix}"] = param_dtype
        if source.input_threshold is not None:
            shapes[f"{prefix}.{THRESHOLD}"], dtypes[f"{prefix}.{THRESHOLD}"] = (1,), "float32"
    return shapes, dtypes


def conversion_peak_bytes(checkpoint, plan: dict[str, WeightSource], param_shapes: dict[str, tuple],
                          param_dtypes: dict[str, str]) -> int:
    """The largest working set of ``converted_params``: one module's float32 source (twice when its HF
    tensors are concatenated: the parts and the result), its packed arrays, one read chunk, and the
    temporaries of one packed row block (PACK_ROW_CHUNK rows x K: |w|, the quotient, its rounding and
    clip, the nibble words and their shifted copy: six 4-byte arrays at most at once)."""
    from ..frontend.checkpoint import READ_CHUNK
    from ..quantization.base import PACK_ROW_CHUNK

    packed: dict[str, int] = {}
    for name, shape in param_shapes.items():
        prefix = name.rsplit(".", 1)[0]
        packed[prefix] = packed.get(prefix, 0) + int(np.prod(shape, dtype=np.int64)) * np.dtype(param_dtypes[name]).itemsize
    peak = 0
    for prefix, source in plan.items():
        shapes = [checkpoint.info(n)[0] for n in source.hf_names]
        src = sum(int(np.prod(shape, dtype=np.int64)) for shape in shapes) * 4
        n = sum(int(shape[0]) for shape in shapes)
        rows = 0 if source.scheme is None else min(PACK_ROW_CHUNK, n) * int(shapes[0][-1]) * 4 * 6
        peak = max(peak, src * (2 if len(shapes) > 1 else 1) + packed.get(prefix, 0) + rows)
    return peak + READ_CHUNK * 6  # the float32 chunk and its raw 16-bit source
