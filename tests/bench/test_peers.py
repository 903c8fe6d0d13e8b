"""bench.peers / bench.bandwidth: GGUF conversion checked against transformers through llama.cpp.

The llama.cpp tests need the built binaries (bench/README.md) and are skipped otherwise; the
rest (GGUF layout, Q/K permutation, rope factors, bandwidth) run anywhere.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest

from bench import peers
from bench.bandwidth import measure_read_bandwidth
from compiler.frontend.synthetic import write_random_checkpoint

from model_configs import CHECKPOINTS

SKIP_REASON = "llama.cpp binaries not built; see bench/README"
needs_llama_cpp = pytest.mark.skipif(peers.find_llama_cpp() is None, reason=SKIP_REASON)

# Llama 3's pre-tokenizer split (tokenizer.json of meta-llama/Llama-3.*).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024 and we'll compile Llama 3 ahead of time!",
    "def forward(self, x):\n    return self.down_proj(silu(self.gate_proj(x)) * self.up_proj(x))\n",
    "Prefill 128 tokens, then decode 64 more; measure tok/s and peak RSS in MiB.",
    "Ich habe 3 Äpfel und 12 Birnen gekauft. Nous avons mangé à midi. 東京は大きい都市です。",
] * 20
PROMPT_TEXTS = [
    "Hello world, it's a test.",
    "  leading spaces and\nnew lines\n\n 12345 numbers 3.14",
    "Äpfel, Birnen & 東京! We'll see; they're fine.",
]


def write_llama3_style_tokenizer(out_dir: Path, vocab_size: int) -> None:
    """A small byte-level BPE trained here, with Llama 3's split regex and BOS template;
    special tokens at ids 0..3 (ids 1/2/3 = bos/eos/eot, matching model_configs.BASE)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<|reserved_0|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 1)]
    )
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>", "add_bos_token": True,
    }))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("peer_models")
    made = {}

    def get(name: str, tokenizer: bool = True) -> Path:
        key = (name, tokenizer)
        if key not in made:
            config, opts = CHECKPOINTS[name]
            d = write_random_checkpoint(root / f"{name}-{'tok' if tokenizer else 'notok'}", config, seed=7, **opts)
            if tokenizer:
                write_llama3_style_tokenizer(d, config["vocab_size"])
            made[key] = d
        return made[key]

    return get


def _reader_fields(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(path)
    out = {}
    for k, f in r.fields.items():
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            out[k] = [bytes(f.parts[i]).decode() if f.types[-1] == gguf.GGUFValueType.STRING else f.parts[i].tolist()[0]
                      for i in f.data]
        elif f.types[0] == gguf.GGUFValueType.STRING:
            out[k] = bytes(f.parts[f.data[0]]).decode()
        else:
            out[k] = f.parts[f.data[0]].tolist()[0]
    return out, {t.name: t for t in r.tensors}


# --------------------------------------------------------------------------- no llama.cpp needed


def test_measure_read_bandwidth_quick():
    t0 = time.perf_counter()
    bw = measure_read_bandwidth(threads=2, size_bytes=16 << 20, reps=2)
    assert bw > 0 and math.isfinite(bw)
    assert time.perf_counter() - t0 < 30


def test_permute_qk_interleaves_halves_per_head():
    n_head, hd, cols = 3, 8, 5
    w = np.arange(n_head * hd * cols, dtype=np.float32).reshape(n_head * hd, cols)
    p = peers.permute_qk(w, n_head)
    for h in range(n_head):
        for i in range(hd // 2):  # GGML pair (2i, 2i+1) = HF rows (i, i + hd/2) of the same head
            np.testing.assert_array_equal(p[h * hd + 2 * i], w[h * hd + i])
            np.testing.assert_array_equal(p[h * hd + 2 * i + 1], w[h * hd + i + hd // 2])


def test_rope_factors_match_converter_formula():
    torch = pytest.importorskip("torch")

    def converter(base, dim, factor, lo, hi, old):  # conversion/llama.py: generate_extra_tensors
        freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        out = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < old / hi:
                out.append(1)
            elif wavelen > old / lo:
                out.append(factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append(1 / ((1 - smooth) / factor + smooth))
        return torch.tensor(out, dtype=torch.float32).numpy()

    for args in [(500000.0, 64, 32.0, 1.0, 4.0, 8192), (500000.0, 128, 8.0, 1.0, 4.0, 8192), (500000.0, 32, 8.0, 1.0, 4.0, 64)]:
        base, dim, *rest = args
        np.testing.assert_array_equal(peers.llama3_rope_factors(dim, base, *rest), converter(*args))


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_gguf_layout(models_dir, tmp_path, outtype):
    from compiler.frontend.checkpoint import Checkpoint

    d = models_dir("tied_llama3rope")
    path = peers.write_gguf(d, tmp_path / "m.gguf", outtype)
    kv, tensors = _reader_fields(path)
    cfg = CHECKPOINTS["tied_llama3rope"][0]
    assert kv["general.architecture"] == "llama"
    assert kv["llama.block_count"] == cfg["num_hidden_layers"]
    assert kv["llama.embedding_length"] == cfg["hidden_size"]
    assert kv["llama.feed_forward_length"] == cfg["intermediate_size"]
    assert kv["llama.attention.head_count"] == cfg["num_attention_heads"]
    assert kv["llama.attention.head_count_kv"] == cfg["num_key_value_heads"]
    assert kv["llama.rope.dimension_count"] == cfg["head_dim"]
    assert kv["llama.context_length"] == cfg["max_position_embeddings"]
    assert kv["llama.vocab_size"] == cfg["vocab_size"]
    assert kv["llama.rope.freq_base"] == cfg["rope_theta"]
    assert kv["general.file_type"] == (0 if outtype == "f32" else 1)
    assert kv["tokenizer.ggml.model"] == "gpt2" and kv["tokenizer.ggml.pre"] == "llama-bpe"
    assert len(kv["tokenizer.ggml.tokens"]) == cfg["vocab_size"]
    assert kv["tokenizer.ggml.bos_token_id"] == 1
    assert "output.weight" not in tensors  # tied
    assert tensors["rope_freqs.weight"].tensor_type.name == "F32"
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert tensors["blk.0.attn_q.weight"].tensor_type.name == outtype.upper()
    ck = Checkpoint(d)
    q = np.asarray(tensors["blk.1.attn_q.weight"].data, dtype=np.float32)
    k = np.asarray(tensors["blk.1.attn_k.weight"].data, dtype=np.float32)
    tol = 0 if outtype == "f32" else 1e-3
    np.testing.assert_allclose(q, peers.permute_qk(ck.read("model.layers.1.self_attn.q_proj.weight"), 4), atol=tol)
    np.testing.assert_allclose(k, peers.permute_qk(ck.read("model.layers.1.self_attn.k_proj.weight"), 2), atol=tol)


def test_gguf_synthetic_vocab_and_untied(models_dir, tmp_path):
    d = models_dir("untied_bf16_sharded", tokenizer=False)
    kv, tensors = _reader_fields(peers.write_gguf(d, tmp_path / "m.gguf", "f32"))
    toks = kv["tokenizer.ggml.tokens"]
    assert len(toks) == 512 and len(set(toks)) == 512
    assert toks[1] == "<|bos|>" and toks[2] == "<|eos|>" and kv["tokenizer.ggml.merges"]
    assert "output.weight" in tensors and "rope_freqs.weight" not in tensors


def test_gguf_bytes_per_token(models_dir, tmp_path):
    """llama.cpp's roofline numerator: all tensors, but only one embedding row when untied."""
    from bench.e2e import gguf_bytes_per_token

    for name, tied in (("tied_llama3rope", True), ("untied_bf16_sharded", False)):
        path = peers.write_gguf(models_dir(name, tokenizer=False), tmp_path / f"{name}.gguf", "f32")
        _, tensors = _reader_fields(path)
        total = sum(int(t.n_bytes) for t in tensors.values())
        cfg = CHECKPOINTS[name][0]
        embd_row = 4 * cfg["hidden_size"]
        want = total if tied else total - (cfg["vocab_size"] - 1) * embd_row
        assert gguf_bytes_per_token(path) == want


def test_gguf_rejects_nonuniform_layers(models_dir, tmp_path):
    d = models_dir("heterogeneous", tokenizer=False)
    with pytest.raises(ValueError, match="identical layers"):
        peers.write_gguf(d, tmp_path / "m.gguf")


def test_unavailable_reason(monkeypatch, tmp_path):
    monkeypatch.setenv(peers.LLAMA_CPP_ENV, str(tmp_path))
    assert peers.find_llama_cpp() is None
    assert peers.measure_llama_cpp(tmp_path / "x.gguf") is None
    assert "llama.cpp not available" in peers.llama_cpp_unavailable_reason()


# --------------------------------------------------------------------------- ExecuTorch (no executorch needed)


def test_peers_argument():
    import argparse

    from bench import e2e

    p = argparse.ArgumentParser()
    e2e.add_arguments(p)
    assert p.parse_args([]).peers == ["torch", "llamacpp"]
    assert p.parse_args(["--peers", "torch,llamacpp,executorch"]).peers == ["torch", "llamacpp", "executorch"]
    assert p.parse_args(["--peers", ""]).peers == []
    with pytest.raises(SystemExit):
        p.parse_args(["--peers", "llamacpp,onnx"])
    assert e2e.executorch_context(128, 64) == 256
    assert e2e.executorch_context(256, 64) == 384


def test_executorch_skipped_with_reason(monkeypatch, tmp_path, capsys):
    import argparse
    import importlib.util

    from bench import e2e

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("executorch") else real(name, *a))
    reason = peers.executorch_unavailable_reason()
    assert reason.startswith("ExecuTorch not available: cannot import executorch")
    args = argparse.Namespace(peers=["executorch"], prompt=128, gen=64, threads=2)
    assert e2e._peer_rows("1b", tmp_path, args, tmp_path) == []
    assert f"executorch: skipped ({reason})" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="ExecuTorch not available"):
        peers.export_executorch(tmp_path, tmp_path / "m.pte")


def test_meta_checkpoint_for_executorch(models_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from compiler.frontend.checkpoint import Checkpoint

    d = models_dir("untied_bf16_sharded", tokenizer=False)
    pth, pj = peers.write_meta_checkpoint(d, tmp_path / "meta")
    params = json.loads(pj.read_text())
    assert params == {"dim": 128, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "head_dim": 32, "hidden_dim": 256,
                      "vocab_size": 512, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": False}
    sd = torch.load(pth)
    expected = {"tok_embeddings.weight", "norm.weight", "output.weight"} | {
        f"layers.{i}.{n}.weight" for i in range(3) for n in peers._META_PARTS.values()}
    assert set(sd) == expected and all(t.dtype == torch.bfloat16 for t in sd.values())  # as stored
    ck = Checkpoint(d)
    wk = sd["layers.1.attention.wk.weight"].float().numpy()
    np.testing.assert_array_equal(wk, peers.permute_qk(ck.read("model.layers.1.self_attn.k_proj.weight"), 2))
    np.testing.assert_array_equal(sd["layers.1.feed_forward.w1.weight"].float().numpy(),
                                  ck.read("model.layers.1.mlp.gate_proj.weight"))
    # Meta's interleaved rope on permuted Q equals HF's rotate-half rope on the original rows.
    hd, pos = 32, 5
    q_hf = ck.read("model.layers.0.self_attn.q_proj.weight")[:hd]
    q_meta = peers.permute_qk(q_hf, 1)
    x = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    ang = pos * 500000.0 ** (-np.arange(0, hd, 2) / hd)
    a = q_hf @ x
    hf_rot = a * np.concatenate([np.cos(ang)] * 2) + np.concatenate([-a[hd // 2:], a[:hd // 2]]) * np.concatenate([np.sin(ang)] * 2)
    b = (q_meta @ x).reshape(-1, 2)
    meta_rot = np.stack([b[:, 0] * np.cos(ang) - b[:, 1] * np.sin(ang), b[:, 0] * np.sin(ang) + b[:, 1] * np.cos(ang)], 1)
    np.testing.assert_allclose(meta_rot.reshape(-1, 2).T.reshape(-1), hf_rot, rtol=1e-5, atol=1e-5)


def test_meta_params_rope_scaling(models_dir):
    from compiler.frontend.config import load_spec

    spec = load_spec(models_dir("tied_llama3rope", tokenizer=False))
    with pytest.raises(ValueError, match="not expressible"):  # original_max_position_embeddings 64
        peers.meta_params(spec)
    with pytest.raises(ValueError, match="identical layers"):
        peers.meta_params(load_spec(models_dir("heterogeneous", tokenizer=False)))


def test_executorch_export_args():
    args = peers.executorch_export_args(Path("/w/c.pth"), Path("/w/p.json"), Path("/w"), "m.pte", 256, 1, [2, 3])
    assert "quantization.qmode=8da4w" in args and "quantization.group_size=32" in args
    assert "export.max_context_length=256" in args and "model.use_sdpa_with_kv_cache=True" in args
    assert "model.use_kv_cache=True" in args and "backend.xnnpack.enabled=True" in args
    assert """base.metadata='{"get_bos_id": 1, "get_eos_ids": [2, 3]}'""" in args


# --------------------------------------------------------------------------- with llama.cpp


@pytest.fixture(scope="module")
def dumper(tmp_path_factory):
    tools = peers.find_llama_cpp()
    if tools is None:
        pytest.skip(SKIP_REASON)
    try:
        return peers.build_logits_dumper(tmp_path_factory.mktemp("dumper"), tools)
    except FileNotFoundError as e:
        pytest.skip(f"cannot build the logits dumper: {e}")


def _hf_logits(model_dir: Path, ids: list[int]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager")
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].numpy()


def _n_params(model_dir: Path, tied: bool, rope_freqs: int) -> int:
    from compiler.frontend.checkpoint import Checkpoint

    ck = Checkpoint(model_dir)
    n = sum(int(np.prod(ck.info(name)[0])) for name in ck.names() if not (tied and name == "lm_head.weight"))
    return n + rope_freqs


@needs_llama_cpp
@pytest.mark.parametrize("name", ["tied_llama3rope", "untied_bf16_sharded"])
def test_llama_cpp_logits_match_transformers(models_dir, dumper, tmp_path, name):
    d = models_dir(name)
    cfg = CHECKPOINTS[name][0]
    ids = peers.prompt_ids(40, cfg["vocab_size"])  # 40 > original_max_position_embeddings / high_freq_factor
    ref = _hf_logits(d, ids)
    scale = float(np.abs(ref).max())
    for outtype, rtol in (("f32", 1e-5), ("f16", 2e-3)):  # seen: 3e-7, 4e-4 (rope/permute bugs: >5e-3)
        g = peers.write_gguf(d, tmp_path / f"{name}-{outtype}.gguf", outtype)
        info = peers.llama_cpp_model_info(dumper, g)
        rope = cfg["head_dim"] // 2 if cfg.get("rope_scaling") else 0
        assert info["n_params"] == _n_params(d, cfg.get("tie_word_embeddings", False), rope)
        assert info["n_vocab"] == cfg["vocab_size"]
        got = peers.llama_cpp_logits(dumper, g, ids)
        err = float(np.abs(got - ref).max())
        assert err < rtol * scale, f"{outtype}: max |llama.cpp - transformers| = {err:.3g}, logit scale {scale:.3g}"
        assert (got.argmax(-1) == ref.argmax(-1)).mean() > 0.95


@needs_llama_cpp
def test_llama_cpp_q8_0_close_to_transformers(models_dir, dumper, tmp_path):
    d = models_dir("tied_llama3rope")
    ids = peers.prompt_ids(40, 512)
    ref = _hf_logits(d, ids)
    f32 = peers.write_gguf(d, tmp_path / "m-f32.gguf", "f32")
    q8 = peers.quantize_gguf(f32, tmp_path / "m-q8_0.gguf", "Q8_0")
    got = peers.llama_cpp_logits(dumper, q8, ids)
    corr = np.corrcoef(got.ravel(), ref.ravel())[0, 1]
    assert corr > 0.99, corr


@needs_llama_cpp
def test_llama_cpp_tokenizes_like_hf(models_dir, dumper, tmp_path):
    from tokenizers import Tokenizer

    d = models_dir("tied_llama3rope")
    g = peers.write_gguf(d, tmp_path / "m.gguf", "f32")
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    for text in PROMPT_TEXTS:
        assert peers.llama_cpp_tokenize(dumper, g, text) == hf.encode(text).ids, text


@needs_llama_cpp
def test_llama_cpp_loads_synthetic_vocab(models_dir, dumper, tmp_path):
    d = models_dir("untied_bf16_sharded", tokenizer=False)
    g = peers.write_gguf(d, tmp_path / "m.gguf", "f16")
    info = peers.llama_cpp_model_info(dumper, g)
    assert info["n_params"] == _n_params(d, False, 0)
    ids = peers.llama_cpp_tokenize(dumper, g, "hi\n")
    assert ids[0] == 1 and len(ids) == 4  # BOS + one byte token each


@needs_llama_cpp
def test_measure_llama_cpp_end_to_end(models_dir, tmp_path):
    d = models_dir("tied_llama3rope")
    f32 = peers.write_gguf(d, tmp_path / "m-f32.gguf", "f32")
    q4 = peers.quantize_gguf(f32, tmp_path / "m-q4_0.gguf", "Q4_0")
    m = peers.measure_llama_cpp(q4, prompt_tokens=32, gen_tokens=8, threads=2, reps=1)
    assert m["prefill_tok_s"] > 0 and m["decode_tok_s"] > 0 and m["peak_rss_mb"] > 1


def test_stream_prefetch_note():
    """The bench says when the facts' prefetch kind streamed clearly slower than another kind in its probe."""
    from bench.bandwidth import stream_prefetch_note

    probe = {"kernels": {"tvm-hw": 34.6, "tvm-nta": 14.1, "tvm-t0": 35.6}}  # Emerald Rapids, 2 threads
    assert stream_prefetch_note(probe, "t0") is None
    assert stream_prefetch_note(probe, "none") is None  # within 10%
    note = stream_prefetch_note(probe, "nta")
    assert "'nta' read 14.1 GB/s" in note and "stream_prefetch = 't0'" in note


def test_bench_soc_takes_only_host_files(tmp_path):
    """``bench --soc`` measures here, so a phone's file is refused in one line; a host file pinning an mcpu is taken."""
    import subprocess
    import sys

    from bench.e2e import host_soc
    from runtime_stubs.errors import LlamaAotError

    assert host_soc(None) is None
    with pytest.raises(LlamaAotError, match="bench runs on this machine: --soc takes a host file.*not snapdragon-8-gen-3"):
        host_soc("snapdragon-8-gen-3")
    path = tmp_path / "host-haswell.toml"
    path.write_text('name = "host-haswell"\ndisplay_name = "x"\ndetect = "host"\n[cpu]\nmcpu = { value = "haswell", source = "t" }\n'
                    '[memory]\npeak_bandwidth_gbs = { value = 30.0, source = "t" }\n')
    assert host_soc(str(path)) == str(path)
    proc = subprocess.run([sys.executable, "-m", "cli", "bench", "--long", "512", "--soc", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--soc applies to the default comparison, not to --long" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
