"""config.json -> ModelSpec: both HF layouts, the layer_shapes extension, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime_stubs.errors import LlamaAotError
from compiler.frontend import LayerSpec, ModelSpec, RopeScaling, load_spec
from compiler.frontend.synthetic import convert_config_layout, llama32_1b_config

TINY = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "torch_dtype": "bfloat16",
}


def write_config(d: Path, cfg: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def spec_of(tmp_path: Path, cfg: dict, name: str = "m") -> ModelSpec:
    return load_spec(write_config(tmp_path / name, cfg))


def load_error(tmp_path: Path, cfg: dict) -> str:
    with pytest.raises(LlamaAotError) as ei:
        spec_of(tmp_path, cfg)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------ layouts


def test_llama32_1b_both_layouts_identical(tmp_path):
    base = llama32_1b_config()
    pub = convert_config_layout(base, "published")
    t5 = convert_config_layout(base, "transformers5")
    assert "rope_scaling" in pub and "rope_theta" in pub and "torch_dtype" in pub
    assert "rope_parameters" in t5 and "rope_scaling" not in t5 and "dtype" in t5 and "torch_dtype" not in t5
    s1, s2 = spec_of(tmp_path, pub, "pub"), spec_of(tmp_path, t5, "t5")
    assert s1 == s2
    assert s1 == ModelSpec(
        hidden_size=2048,
        head_dim=64,
        vocab_size=128256,
        layers=(LayerSpec(32, 8, 8192),) * 16,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(32.0, 1.0, 4.0, 8192),
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        bos_token_id=128000,
        eos_token_ids=(128001, 128008, 128009),
        source_dtype="bfloat16",
    )
    assert s1.is_uniform and s1.attention_groups() == [((32, 8), list(range(16)))]
    assert ModelSpec.from_json(json.loads(json.dumps(s1.to_json()))) == s1


def test_config_written_by_transformers_matches_published(tmp_path):
    """Independent check: the layout transformers itself writes parses to the same spec."""
    from transformers import LlamaConfig

    pub = llama32_1b_config(vocab_size=1000)
    kwargs = {k: v for k, v in pub.items() if k not in ("architectures", "model_type", "torch_dtype")}
    hf = LlamaConfig(**kwargs, dtype="bfloat16")
    hf.architectures = ["LlamaForCausalLM"]
    hf.save_pretrained(tmp_path / "hf")
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "rope_parameters" in written  # really the transformers-5 layout
    assert load_spec(tmp_path / "hf") == spec_of(tmp_path, pub)


def test_default_rope_both_layouts(tmp_path):
    cfg = dict(TINY)
    for variant in (
        {},
        {"rope_scaling": None},
        {"rope_scaling": {"rope_type": "default"}},
        {"rope_scaling": {"type": "default"}},
    ):
        s = spec_of(tmp_path, {**cfg, **variant}, "v")
        assert s.rope_scaling is None and s.rope_theta == 500000.0
    t5 = convert_config_layout(cfg, "transformers5")
    assert t5["rope_parameters"] == {"rope_theta": 500000.0, "rope_type": "default"}
    assert spec_of(tmp_path, t5, "t5") == spec_of(tmp_path, cfg, "pub")


def test_legacy_rope_type_key(tmp_path):
    cfg = {**TINY, "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
           "max_position_embeddings": 131072}
    assert spec_of(tmp_path, cfg).rope_scaling == RopeScaling(8.0, 1.0, 4.0, 8192)


def test_defaults(tmp_path):
    cfg = {k: v for k, v in TINY.items() if k not in ("num_key_value_heads", "rms_norm_eps", "rope_theta", "torch_dtype")}
    s = spec_of(tmp_path, cfg)
    assert s.head_dim == 16
    assert s.layers == (LayerSpec(4, 4, 128),) * 3
    assert s.rms_norm_eps == 1e-6 and s.rope_theta == 10000.0 and s.max_position_embeddings == 2048
    assert s.tie_word_embeddings is False  # transformers' LlamaConfig default
    assert s.bos_token_id is None and s.eos_token_ids == ()
    assert s.source_dtype == "float32"


def test_explicit_head_dim(tmp_path):
    assert spec_of(tmp_path, {**TINY, "head_dim": 32}).head_dim == 32


@pytest.mark.parametrize(
    "eos,expected", [(7, (7,)), ([7, 8, 9], (7, 8, 9)), ([], ()), (None, ())]
)
def test_eos_int_or_list(tmp_path, eos, expected):
    s = spec_of(tmp_path, {**TINY, "eos_token_id": eos, "bos_token_id": 5})
    assert s.eos_token_ids == expected and s.bos_token_id == 5


@pytest.mark.parametrize("key", ["torch_dtype", "dtype"])
@pytest.mark.parametrize("dt", ["float32", "float16", "bfloat16"])
def test_dtype_keys(tmp_path, key, dt):
    cfg = {k: v for k, v in TINY.items() if k != "torch_dtype"}
    assert spec_of(tmp_path, {**cfg, key: dt}).source_dtype == dt


# ------------------------------------------------------------------ layer_shapes


def test_heterogeneous_layer_shapes(tmp_path):
    cfg = {
        **TINY,
        "num_hidden_layers": 4,
        "layer_shapes": [
            {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "source_layer": 0},
            {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64, "source_layer": 3},
            {"intermediate_size": 32},
            {},
        ],
    }
    s = spec_of(tmp_path, cfg)
    assert s.layers == (LayerSpec(4, 2, 128), LayerSpec(2, 1, 64), LayerSpec(4, 2, 32), LayerSpec(4, 2, 128))
    assert s.head_dim == 16 and not s.is_uniform
    assert s.attention_groups() == [((4, 2), [0, 2, 3]), ((2, 1), [1])]
    # survives the layout conversion unchanged
    assert spec_of(tmp_path, convert_config_layout(cfg, "transformers5"), "t5") == s


def test_plain_config_equals_explicit_uniform_layer_shapes(tmp_path):
    explicit = {**TINY, "layer_shapes": [{}] * 3}
    assert spec_of(tmp_path, explicit, "a") == spec_of(tmp_path, TINY, "b")


# ------------------------------------------------------------------ errors


def test_missing_dir(tmp_path):
    with pytest.raises(LlamaAotError, match="does not exist") as ei:
        load_spec(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(ei.value)


def test_dir_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(LlamaAotError, match="not a directory"):
        load_spec(tmp_path / "f")


def test_missing_config(tmp_path):
    with pytest.raises(LlamaAotError, match="no config.json"):
        load_spec(tmp_path)


def test_invalid_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LlamaAotError, match="cannot parse"):
        load_spec(tmp_path)


def test_non_llama_architecture(tmp_path):
    msg = load_error(tmp_path, {**TINY, "architectures": ["MistralForCausalLM"], "model_type": "mistral"})
    assert "not a Llama checkpoint: architectures=['MistralForCausalLM']" in msg
    assert "LlamaForCausalLM only" in msg


def test_model_type_fallback(tmp_path):
    cfg = {k: v for k, v in TINY.items() if k != "architectures"}
    assert spec_of(tmp_path, cfg).num_layers == 3
    msg = load_error(tmp_path, {**cfg, "model_type": "gpt2"})
    assert "not a Llama checkpoint" in msg and "gpt2" in msg


@pytest.mark.parametrize("key", ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"])
def test_missing_required_key(tmp_path, key):
    cfg = {k: v for k, v in TINY.items() if k != key}
    msg = load_error(tmp_path, cfg)
    assert f"missing required key '{key}'" in msg


def test_bad_values(tmp_path):
    assert "hidden_size must be a positive integer" in load_error(tmp_path, {**TINY, "hidden_size": 0})
    assert "vocab_size must be a positive integer" in load_error(tmp_path, {**TINY, "vocab_size": "100"})
    assert "eos_token_id" in load_error(tmp_path, {**TINY, "eos_token_id": [1, "x"]})
    assert "tie_word_embeddings" in load_error(tmp_path, {**TINY, "tie_word_embeddings": "yes"})


def test_indivisible_heads_top_level(tmp_path):
    msg = load_error(tmp_path, {**TINY, "num_key_value_heads": 3})
    assert "num_attention_heads 4 is not divisible by num_key_value_heads 3" in msg


def test_hidden_not_divisible_without_head_dim(tmp_path):
    assert "head_dim" in load_error(tmp_path, {**TINY, "num_attention_heads": 6, "num_key_value_heads": 2})


def test_unknown_dtype(tmp_path):
    msg = load_error(tmp_path, {**TINY, "torch_dtype": "int8"})
    assert msg.endswith("unsupported dtype 'int8' (torch_dtype); llama-aot reads float32, float16, bfloat16 checkpoints")


@pytest.mark.parametrize(
    "layer_shapes,needle",
    [
        ([{}, {}], "layer_shapes has 2 entries but num_hidden_layers is 3"),
        ([{}, {}, {}, {}], "layer_shapes has 4 entries but num_hidden_layers is 3"),
        ({"0": {}}, "layer_shapes must be a list"),
        ([{}, {"num_attention_heads": 3}, {}], "layer_shapes[1]: num_attention_heads 3 is not divisible by num_key_value_heads 2"),
        ([{}, {}, {"num_key_value_heads": 0}], "layer_shapes[2].num_key_value_heads must be a positive integer"),
        ([{}, {"intermediate_size": -5}, {}], "layer_shapes[1].intermediate_size must be a positive integer"),
        ([{}, {"intermediate_size": 1.5}, {}], "layer_shapes[1].intermediate_size must be a positive integer"),
        ([{}, {"num_heads": 2}, {}], "layer_shapes[1] has unknown key(s) ['num_heads']"),
        ([{}, 7, {}], "layer_shapes[1] must be an object"),
        ([{"source_layer": -1}, {}, {}], "layer_shapes[0].source_layer must be a non-negative integer"),
    ],
)
def test_bad_layer_shapes(tmp_path, layer_shapes, needle):
    assert needle in load_error(tmp_path, {**TINY, "layer_shapes": layer_shapes})


@pytest.mark.parametrize("layout", ["published", "transformers5"])
def test_unknown_rope_type(tmp_path, layout):
    cfg = convert_config_layout({**TINY, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, layout)
    msg = load_error(tmp_path, cfg)
    assert "unsupported rope type 'yarn'" in msg and "'llama3'" in msg


def test_llama3_rope_missing_field(tmp_path):
    cfg = {**TINY, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}}
    assert "missing required key 'original_max_position_embeddings'" in load_error(tmp_path, cfg)


@pytest.mark.parametrize("extra,needle", [({"attention_bias": True}, "attention_bias"), ({"mlp_bias": True}, "mlp_bias"),
                                          ({"hidden_act": "gelu"}, "hidden_act")])
def test_unsupported_features(tmp_path, extra, needle):
    assert needle in load_error(tmp_path, {**TINY, **extra})


def test_error_names_config_path(tmp_path):
    msg = load_error(tmp_path, {**TINY, "torch_dtype": "int8"})
    assert str(tmp_path / "m" / "config.json") in msg
