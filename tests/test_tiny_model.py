"""Checks on the shipped default model in models/tiny-llama3/.

The model and its tokenizer are produced by scripts/train_tiny_model.py; the
held-out perplexity is recomputed here with transformers on a few held-out
CPython stdlib files and compared with a unigram baseline recomputed from the
shipped tokenizer on the training files.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest

# Passive OpenMP waiting: much faster on a shared CPU (only effective if torch
# is not imported yet).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO / "models" / "tiny-llama3"
SCRIPT = REPO / "scripts" / "train_tiny_model.py"
MAX_BYTES = 20 * 1024 * 1024

REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "TRAINING.md",
)


def _load_script():
    spec = importlib.util.spec_from_file_location("train_tiny_model", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ttm():
    return _load_script()


@pytest.fixture(scope="module")
def tok():
    tokenizers = pytest.importorskip("tokenizers")
    return tokenizers.Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))


@pytest.fixture(scope="module")
def config():
    return json.loads((MODEL_DIR / "config.json").read_text())


def test_files_exist_and_size():
    for name in REQUIRED_FILES:
        assert (MODEL_DIR / name).is_file(), f"missing {name}"
    size = (MODEL_DIR / "model.safetensors").stat().st_size
    assert 0 < size <= MAX_BYTES, size


def test_safetensors_hf_names_tied():
    from safetensors import safe_open

    with safe_open(str(MODEL_DIR / "model.safetensors"), "np") as f:
        keys = set(f.keys())
        emb = f.get_slice("model.embed_tokens.weight").get_shape()
    assert "lm_head.weight" not in keys  # tied embeddings
    assert emb == [4096, 256]
    assert "model.norm.weight" in keys
    for i in range(4):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert f"model.layers.{i}.self_attn.{proj}.weight" in keys
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert f"model.layers.{i}.mlp.{proj}.weight" in keys
        assert f"model.layers.{i}.input_layernorm.weight" in keys
        assert f"model.layers.{i}.post_attention_layernorm.weight" in keys


def test_config_is_llama3_layout(config):
    c = config
    assert c["architectures"] == ["LlamaForCausalLM"]
    assert c["model_type"] == "llama"
    assert "rope_parameters" not in c and "dtype" not in c
    assert c["torch_dtype"] in ("float32", "bfloat16")
    assert c["rope_theta"] == 500000.0
    assert c["rope_scaling"] == {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 256,
        "rope_type": "llama3",
    }
    assert (c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (256, 8, 2, 32)
    assert c["hidden_size"] == c["num_attention_heads"] * c["head_dim"]
    assert c["intermediate_size"] == 768 and c["hidden_act"] == "silu"
    assert c["num_hidden_layers"] in (4, 5)
    assert c["rms_norm_eps"] == 1e-5
    assert c["max_position_embeddings"] == 2048
    assert c["tie_word_embeddings"] is True
    assert c["vocab_size"] == 4096
    assert (c["bos_token_id"], c["eos_token_id"]) == (0, 1)
    gen = json.loads((MODEL_DIR / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (0, 1)


def test_tokenizer_specials_and_roundtrip(tok, ttm, config):
    assert tok.get_vocab_size() == config["vocab_size"]
    assert tok.token_to_id("<|begin_of_text|>") == config["bos_token_id"]
    assert tok.token_to_id("<|end_of_text|>") == config["eos_token_id"]
    tj = json.loads((MODEL_DIR / "tokenizer.json").read_text())
    assert tj["decoder"]["type"] == "ByteLevel"
    tc = json.loads((MODEL_DIR / "tokenizer_config.json").read_text())
    assert tc["bos_token"] == "<|begin_of_text|>" and tc["eos_token"] == "<|end_of_text|>"
    # encode() prepends bos, like Llama 3
    assert tok.encode("def f():").ids[0] == config["bos_token_id"]
    _, heldout = ttm.split_files()
    snippets = ttm.read_sources(heldout[:3]) + [
        "import os\n\n\ndef main():\n    return os.getcwd()\n",
        "\tx = 'caf\u00e9 \u2603 \U0001f600'  # non-ASCII\r\n",
        "",
    ]
    for s in snippets:
        assert tok.decode(tok.encode(s).ids) == s


def test_heldout_perplexity_beats_unigram(tok, ttm):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.set_num_threads(2)
    train_files, heldout_files = ttm.split_files()
    train_docs = ttm.encode_docs(tok, ttm.read_sources(train_files))
    held_docs = ttm.encode_docs(tok, ttm.read_sources(heldout_files[:4]))

    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    rp = model.config.rope_parameters  # layout was understood by transformers
    assert rp["rope_type"] == "llama3" and float(rp["rope_theta"]) == 500000.0
    nll, n, windows = ttm.model_nll(model, held_docs, max_tokens=3000)
    assert n >= 2000
    u_nll, u_n = ttm.unigram_nll(ttm.unigram_counts(train_docs), windows)
    assert u_n == n
    ppl, uni_ppl = math.exp(nll / n), math.exp(u_nll / u_n)
    assert ppl < uni_ppl / 5, (ppl, uni_ppl)


def test_generate_greedy(tok):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32)
    ids = torch.tensor([tok.encode("import os\n").ids])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    text = tok.decode(out[0].tolist())
    assert text.startswith("import os\n")
