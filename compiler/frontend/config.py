"""config.json -> ModelSpec.

Accepts both layouts found in the wild:

* the published Llama 3.x checkpoints (transformers 4.x): top-level ``rope_theta``, a
  ``rope_scaling`` dict (``rope_type``/legacy ``type`` = "llama3") and ``torch_dtype``;
* what transformers 5 writes: ``rope_parameters`` holding ``rope_theta``, ``rope_type``
  ("default" or "llama3") and the scaling fields, and ``dtype``.

Plus the optional llama-aot ``layer_shapes`` extension for pruned checkpoints
(docs/pruned-config.md).

Defaults for optional keys follow transformers' ``LlamaConfig``: ``num_key_value_heads`` =
``num_attention_heads``, ``rms_norm_eps`` 1e-6, ``rope_theta`` 10000, ``max_position_embeddings``
2048, ``tie_word_embeddings`` False, ``head_dim`` = hidden_size // num_attention_heads. Two
deliberate departures: an absent ``bos_token_id`` gives None and an absent ``eos_token_id``
gives no eos ids (LlamaConfig would invent Llama 2's 1 and 2, which are wrong for Llama 3).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from runtime_stubs.errors import LlamaAotError
from runtime_stubs.messages import shown
from .spec import LayerSpec, ModelSpec, RopeScaling

SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")

# Keys without which the architecture is unknown (LlamaConfig would silently fall back to
# Llama-2-7B sizes).
REQUIRED_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)

LAYER_SHAPE_KEYS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
LAYER_SHAPE_OPTIONAL_KEYS = ("source_layer",)

LLAMA3_ROPE_FIELDS = (
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
)

# Upper bounds far beyond any Llama (405B: 126 layers, 16384 hidden, 128256 vocab): a larger value is a
# corrupt file, and would otherwise surface later as a MemoryError or an int32 overflow in TVM.
MAX_LAYERS = 4096
MAX_SIZE = 2**31 - 1

_MISSING = object()


def load_spec(model_dir: str | Path) -> ModelSpec:
    """Read ``<model_dir>/config.json`` and return the validated :class:`ModelSpec`."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise LlamaAotError(f"model directory {model_dir} does not exist; pass the folder holding config.json and the *.safetensors weights")
    if not model_dir.is_dir():
        raise LlamaAotError(f"{model_dir} is not a directory; pass the folder holding config.json and the *.safetensors weights")
    path = model_dir / "config.json"
    if not path.is_file():
        raise LlamaAotError(f"no config.json in {model_dir}; pass a Hugging Face checkpoint folder (config.json + *.safetensors)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlamaAotError(f"cannot parse {path}: {_one_line(e)}; fix or re-download config.json") from None
    except RecursionError:
        raise LlamaAotError(f"cannot parse {path}: nested too deeply for a config; fix or re-download config.json") from None
    if not isinstance(cfg, dict):
        raise LlamaAotError(f"{path} is not a JSON object; fix or re-download config.json")
    try:
        return spec_from_config(cfg)
    except LlamaAotError as e:
        raise LlamaAotError(f"{path}: {e}") from None


def spec_from_config(cfg: dict) -> ModelSpec:
    """Build a :class:`ModelSpec` from an already-parsed config dict (either layout)."""
    _check_architecture(cfg)
    _check_unsupported_features(cfg)

    hidden_size = _pos_int(cfg, "hidden_size")
    intermediate_size = _pos_int(cfg, "intermediate_size")
    num_layers = _pos_int(cfg, "num_hidden_layers", maximum=MAX_LAYERS)
    num_heads = _pos_int(cfg, "num_attention_heads")
    vocab_size = _pos_int(cfg, "vocab_size")
    num_kv_heads = _pos_int(cfg, "num_key_value_heads", default=num_heads)
    _check_divisible(num_heads, num_kv_heads, "top level")

    head_dim = cfg.get("head_dim")
    if head_dim is None:
        if hidden_size % num_heads:
            raise LlamaAotError(
                f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads} and head_dim is not set; add \"head_dim\""
            )
        head_dim = hidden_size // num_heads
    else:
        head_dim = _pos_int(cfg, "head_dim")

    layers = _layer_specs(cfg, num_layers, LayerSpec(num_heads, num_kv_heads, intermediate_size))
    rope_theta, rope_scaling = _rope(cfg)

    return ModelSpec(
        hidden_size=hidden_size,
        head_dim=head_dim,
        vocab_size=vocab_size,
        layers=layers,
        rms_norm_eps=_pos_float(cfg, "rms_norm_eps", default=1e-6),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=_bool(cfg, "tie_word_embeddings", default=False),
        max_position_embeddings=_pos_int(cfg, "max_position_embeddings", default=2048),
        bos_token_id=_token_id(cfg, "bos_token_id"),
        eos_token_ids=_eos_ids(cfg),
        source_dtype=_dtype(cfg),
    )


# --------------------------------------------------------------------------- checks


def _check_architecture(cfg: dict) -> None:
    archs = cfg.get("architectures")
    if archs is not None:
        ok = isinstance(archs, list) and "LlamaForCausalLM" in archs
    else:
        ok = cfg.get("model_type") == "llama"
    if not ok:
        what = shown(archs) if archs is not None else f"absent, model_type={shown(cfg.get('model_type'))}"
        raise LlamaAotError(f"not a Llama checkpoint: architectures={what} ; llama-aot compiles LlamaForCausalLM only")


def _check_unsupported_features(cfg: dict) -> None:
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise LlamaAotError(f"unsupported hidden_act {shown(act)}; llama-aot compiles Llama 3 (silu) only")
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key, False):
            raise LlamaAotError(f"{key}=true is not supported; llama-aot compiles bias-free Llama 3 checkpoints only")


def _check_divisible(heads: int, kv_heads: int, where: str) -> None:
    if heads % kv_heads:
        raise LlamaAotError(
            f"{where}: num_attention_heads {heads} is not divisible by num_key_value_heads {kv_heads}; "
            "grouped-query attention needs a whole number of query heads per KV head"
        )


def _layer_specs(cfg: dict, num_layers: int, default: LayerSpec) -> tuple[LayerSpec, ...]:
    shapes = cfg.get("layer_shapes")
    if shapes is None:
        return (default,) * num_layers
    if not isinstance(shapes, list):
        raise LlamaAotError(f"layer_shapes must be a list with one object per layer, got {type(shapes).__name__}; see docs/pruned-config.md")
    if len(shapes) != num_layers:
        raise LlamaAotError(
            f"layer_shapes has {len(shapes)} entries but num_hidden_layers is {num_layers}; "
            "give exactly one entry per kept layer (see docs/pruned-config.md)"
        )
    layers = []
    for i, entry in enumerate(shapes):
        where = f"layer_shapes[{i}]"
        if not isinstance(entry, dict):
            raise LlamaAotError(f"{where} must be an object, got {type(entry).__name__}; see docs/pruned-config.md")
        unknown = sorted(set(entry) - set(LAYER_SHAPE_KEYS) - set(LAYER_SHAPE_OPTIONAL_KEYS))
        if unknown:
            allowed = ", ".join(LAYER_SHAPE_KEYS + LAYER_SHAPE_OPTIONAL_KEYS)
            raise LlamaAotError(f"{where} has unknown key(s) {shown(unknown)}; allowed keys: {allowed}")
        if "source_layer" in entry:
            src = entry["source_layer"]
            if not _is_int(src) or src < 0:
                raise LlamaAotError(f"{where}.source_layer must be a non-negative integer, got {shown(src)}")
        vals = {}
        for key in LAYER_SHAPE_KEYS:
            vals[key] = _pos_int(entry, key, default=getattr(default, key), where=where)
        _check_divisible(vals["num_attention_heads"], vals["num_key_value_heads"], where)
        layers.append(LayerSpec(**vals))
    return tuple(layers)


def _rope(cfg: dict) -> tuple[float, RopeScaling | None]:
    params = cfg.get("rope_parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise LlamaAotError(f"rope_parameters must be an object, got {shown(params)}")
        where = "rope_parameters"
        theta = params.get("rope_theta", cfg.get("rope_theta", _MISSING))
        scaling = params
    else:
        where = "rope_scaling"
        theta = cfg.get("rope_theta", _MISSING)
        scaling = cfg.get("rope_scaling")
    if theta is _MISSING:
        theta = 10000.0
    if not _is_number(theta) or theta <= 0:
        raise LlamaAotError(f"rope_theta must be a positive number, got {shown(theta)}")

    if scaling is None:
        return float(theta), None
    if not isinstance(scaling, dict):
        raise LlamaAotError(f"{where} must be an object or null, got {shown(scaling)}")
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type is None or rope_type == "default":
        return float(theta), None
    if rope_type != "llama3":
        raise LlamaAotError(f"unsupported rope type {shown(rope_type)} in {where}; llama-aot supports 'default' and 'llama3'")
    fields = {}
    for key in LLAMA3_ROPE_FIELDS:
        if key not in scaling:
            raise LlamaAotError(f"{where} (rope_type 'llama3') is missing required key '{key}'")
        v = scaling[key]
        if not _is_number(v) or v <= 0:
            raise LlamaAotError(f"{where}.{key} must be a positive number, got {shown(v)}")
        fields[key] = v
    if fields["high_freq_factor"] <= fields["low_freq_factor"]:
        raise LlamaAotError(
            f"{where}: high_freq_factor {shown(fields['high_freq_factor'])} must be greater than "
            f"low_freq_factor {shown(fields['low_freq_factor'])}"
        )
    omp = fields["original_max_position_embeddings"]
    if not _is_int(omp):
        raise LlamaAotError(f"{where}.original_max_position_embeddings must be an integer, got {shown(omp)}")
    return float(theta), RopeScaling(
        factor=float(fields["factor"]),
        low_freq_factor=float(fields["low_freq_factor"]),
        high_freq_factor=float(fields["high_freq_factor"]),
        original_max_position_embeddings=int(omp),
    )


def _dtype(cfg: dict) -> str:
    value = cfg.get("dtype")
    key = "dtype"
    if value is None:
        value, key = cfg.get("torch_dtype"), "torch_dtype"
    if value is None:
        return "float32"
    name = value[len("torch."):] if isinstance(value, str) and value.startswith("torch.") else value
    if name not in SUPPORTED_DTYPES:
        raise LlamaAotError(f"unsupported dtype {shown(value)} ({key}); llama-aot reads {', '.join(SUPPORTED_DTYPES)} checkpoints")
    return name


def _token_id(cfg: dict, key: str) -> int | None:
    v = cfg.get(key)
    if v is None:
        return None
    if not _is_int(v) or v < 0 or v > MAX_SIZE:
        raise LlamaAotError(f"{key} must be a non-negative integer or null, got {shown(v)}")
    return int(v)


def _eos_ids(cfg: dict) -> tuple[int, ...]:
    v = cfg.get("eos_token_id")
    if v is None:
        return ()
    items = v if isinstance(v, list) else [v]
    for x in items:
        if not _is_int(x) or x < 0 or x > MAX_SIZE:
            raise LlamaAotError(f"eos_token_id must be an integer or a list of integers, got {shown(v)}")
    return tuple(int(x) for x in items)


# --------------------------------------------------------------------------- scalars


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """An int or float, not bool, finite as a float (JSON also allows NaN, Infinity and ints like 10**400)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _pos_int(d: dict, key: str, default: Any = _MISSING, where: str | None = None, maximum: int = MAX_SIZE) -> int:
    name = f"{where}.{key}" if where else key
    v = d.get(key, _MISSING)
    if v is _MISSING or (v is None and default is not _MISSING):
        if default is _MISSING:
            raise LlamaAotError(f"missing required key '{name}'; config.json must define it")
        return default
    # JSON writers sometimes emit 64.0 for ints; accept integral floats.
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not _is_int(v) or v <= 0:
        raise LlamaAotError(f"{name} must be a positive integer, got {shown(v)}")
    if v > maximum:
        raise LlamaAotError(f"{name} is {shown(v)}, more than {maximum}: config.json is corrupt; fix or re-download it")
    return v


def _pos_float(d: dict, key: str, default: float) -> float:
    v = d.get(key)
    if v is None:
        return default
    if not _is_number(v) or v <= 0:
        raise LlamaAotError(f"{key} must be a positive number, got {shown(v)}")
    return float(v)


def _bool(d: dict, key: str, default: bool) -> bool:
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise LlamaAotError(f"{key} must be true or false, got {shown(v)}")
    return v


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
