"""safetensors reading/validation and the synthetic checkpoint writer, checked against
independent readers/writers (safetensors.torch, torch's bf16 conversion, transformers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import load_file as torch_load_file
from safetensors.torch import save_file as torch_save_file

from runtime_stubs.errors import LlamaAotError
from compiler.frontend import Checkpoint, LayerSpec, expected_tensors, load_spec
from compiler.frontend.synthetic import float32_to_bfloat16_bits, write_random_checkpoint

TINY = {
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 64,
    "bos_token_id": 1,
    "eos_token_id": [2, 3],
    "rope_theta": 500000.0,
    "max_position_embeddings": 256,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 128},
}
HETERO = {
    **TINY,
    "num_hidden_layers": 3,
    "head_dim": 8,
    "layer_shapes": [{}, {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16}, {"intermediate_size": 24}],
}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_error(path) -> str:
    with pytest.raises(LlamaAotError) as ei:
        with Checkpoint(path) as ck:
            ck.validate(load_spec(path))
            for n in ck.names():
                ck.read(n)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    return msg


def rewrite_weights(d: Path, tensors: dict[str, np.ndarray]) -> None:
    """Replace the checkpoint's weights with ``tensors`` (float32, via the reference writer)."""
    for p in d.glob("*.safetensors"):
        p.unlink()
    np_save_file(tensors, str(d / "model.safetensors"), metadata={"format": "pt"})


def all_tensors(d: Path) -> dict[str, np.ndarray]:
    with Checkpoint(d) as ck:
        return {n: ck.read(n) for n in ck.names()}


# ------------------------------------------------------------------ expected_tensors


def test_expected_tensors_heterogeneous(tmp_path):
    write_random_checkpoint(tmp_path, HETERO)
    spec = load_spec(tmp_path)
    assert spec.layers[1] == LayerSpec(2, 1, 16)
    exp = expected_tensors(spec)
    assert len(exp) == 1 + 9 * 3 + 2
    assert exp["model.embed_tokens.weight"] == (64, 32) and exp["lm_head.weight"] == (64, 32)
    assert exp["model.layers.1.self_attn.q_proj.weight"] == (16, 32)
    assert exp["model.layers.1.self_attn.k_proj.weight"] == (8, 32)
    assert exp["model.layers.1.self_attn.o_proj.weight"] == (32, 16)
    assert exp["model.layers.1.mlp.down_proj.weight"] == (32, 16)
    assert exp["model.layers.2.mlp.gate_proj.weight"] == (24, 32)
    assert exp["model.layers.0.self_attn.v_proj.weight"] == (16, 32)
    with Checkpoint(tmp_path) as ck:
        ck.validate(spec)
        assert {n: ck.info(n)[0] for n in ck.names()} == exp


def test_expected_tensors_tied(tmp_path):
    write_random_checkpoint(tmp_path, {**TINY, "tie_word_embeddings": True})
    spec = load_spec(tmp_path)
    assert "lm_head.weight" not in expected_tensors(spec)
    with Checkpoint(tmp_path) as ck:
        assert "lm_head.weight" not in ck.names()
        ck.validate(spec)


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_writer_output_matches_independent_reader(tmp_path, dtype):
    write_random_checkpoint(tmp_path, TINY, dtype=dtype, seed=3)
    spec = load_spec(tmp_path)
    assert spec.source_dtype == dtype
    ref = torch_load_file(str(tmp_path / "model.safetensors"))
    with Checkpoint(tmp_path) as ck:
        ck.validate(spec)
        assert ck.dtypes() == {dtype}
        assert sorted(ref) == ck.names()
        for name, t in ref.items():
            assert t.dtype == TORCH_DTYPES[dtype]
            assert ck.info(name) == (tuple(t.shape), dtype)
            got = ck.read(name)
            assert got.dtype == np.float32 and got.flags.c_contiguous
            np.testing.assert_array_equal(got, t.float().numpy())
        emb = ck.read("model.embed_tokens.weight")
        norm = ck.read("model.layers.0.input_layernorm.weight")
    assert 0.015 < emb.std() < 0.025 and abs(emb.mean()) < 0.005
    assert 0.9 < norm.mean() < 1.1 and 0.05 < norm.std() < 0.15


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_reads_torch_written_safetensors(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(5, 7, generator=g).to(TORCH_DTYPES[dtype]),
        "b": torch.tensor([1e-30, -0.0, 65504.0, 3.4e38, float("inf"), float("-inf")]).to(TORCH_DTYPES[dtype]),
        "c": torch.randn(3, generator=g).to(TORCH_DTYPES[dtype]),
    }
    torch_save_file(tensors, str(tmp_path / "weights.safetensors"))  # any single *.safetensors
    with Checkpoint(tmp_path) as ck:
        assert ck.names() == ["a", "b", "c"]
        for name, t in tensors.items():
            assert ck.info(name) == (tuple(t.shape), dtype)
            np.testing.assert_array_equal(ck.read(name), t.float().numpy())


def test_bf16_encoding_matches_torch():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        rng.standard_normal(10000, dtype=np.float32) * 0.02,
        rng.standard_normal(1000, dtype=np.float32) * 1e4,
        np.array([0.0, -0.0, 1.0, 1.00390625, 1.01171875, -2.5, 3.3895314e38, 1e-40], dtype=np.float32),
    ])
    ours = float32_to_bfloat16_bits(x)
    ref = torch.from_numpy(x).bfloat16().view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, ref)


def test_sharded_reads_same_as_single(tmp_path):
    write_random_checkpoint(tmp_path / "one", HETERO, dtype="bfloat16", seed=7)
    write_random_checkpoint(tmp_path / "three", HETERO, dtype="bfloat16", seed=7, num_shards=3)
    shards = sorted(p.name for p in (tmp_path / "three").glob("*.safetensors"))
    assert shards == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "three" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(
        int(np.prod(s)) * 2 for s in expected_tensors(load_spec(tmp_path / "one")).values()
    )
    # the index is consistent with the shards according to the reference reader too
    for name, shard in index["weight_map"].items():
        assert name in torch_load_file(str(tmp_path / "three" / shard))
    one, three = all_tensors(tmp_path / "one"), all_tensors(tmp_path / "three")
    assert one.keys() == three.keys()
    for n in one:
        np.testing.assert_array_equal(one[n], three[n])
    with Checkpoint(tmp_path / "three") as ck:
        ck.validate(load_spec(tmp_path / "three"))


def test_lazy_open(tmp_path):
    write_random_checkpoint(tmp_path, TINY, num_shards=2)
    ck = Checkpoint(tmp_path)
    assert ck._handles == {}  # headers only until a tensor is requested
    ck.read("model.norm.weight")
    assert len(ck._handles) == 1
    ck.close()
    assert ck._handles == {}
    ck.read("model.norm.weight")  # reopens after close
    ck.close()


def test_layouts_write_same_weights(tmp_path):
    write_random_checkpoint(tmp_path / "a", TINY, config_layout="published")
    write_random_checkpoint(tmp_path / "b", TINY, config_layout="transformers5")
    assert "rope_parameters" in json.loads((tmp_path / "b" / "config.json").read_text())
    assert load_spec(tmp_path / "a") == load_spec(tmp_path / "b")
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


# ------------------------------------------------------------------ transformers loads our writer's output


@pytest.mark.parametrize("layout,dtype", [("published", "bfloat16"), ("transformers5", "float32")])
def test_transformers_loads_synthetic_checkpoint(tmp_path, layout, dtype):
    from transformers import LlamaForCausalLM

    write_random_checkpoint(tmp_path, TINY, dtype=dtype, num_shards=2, config_layout=layout)
    model, info = LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True, dtype=TORCH_DTYPES[dtype])
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = model.config
    assert cfg.num_hidden_layers == 2 and cfg.num_key_value_heads == 2 and cfg.head_dim == 8
    assert cfg.rope_parameters["rope_type"] == "llama3" and cfg.rope_parameters["rope_theta"] == 500000.0
    assert cfg.rope_parameters["factor"] == 8.0
    state = model.state_dict()
    with Checkpoint(tmp_path) as ck:
        for name in ck.names():
            np.testing.assert_array_equal(state[name].float().numpy(), ck.read(name))


def test_transformers_loads_tied_checkpoint(tmp_path):
    from transformers import LlamaForCausalLM

    write_random_checkpoint(tmp_path, {**TINY, "tie_word_embeddings": True})
    model, info = LlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# ------------------------------------------------------------------ validate() errors


def test_missing_tensor(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    t = all_tensors(tmp_path)
    for n in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight"):
        del t[n]
    rewrite_weights(tmp_path, t)
    msg = checkpoint_error(tmp_path)
    assert "missing 2 tensor(s)" in msg and "model.layers.0.self_attn.q_proj.weight" in msg
    assert "model.layers.1.mlp.up_proj.weight" in msg


def test_missing_many_tensors_is_abbreviated(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    t = {k: v for k, v in all_tensors(tmp_path).items() if ".layers.1." not in k}
    rewrite_weights(tmp_path, t)
    msg = checkpoint_error(tmp_path)
    assert "missing 9 tensor(s)" in msg and "(6 more)" in msg


def test_missing_lm_head_hints_tie(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    t = all_tensors(tmp_path)
    del t["lm_head.weight"]
    rewrite_weights(tmp_path, t)
    assert "tie_word_embeddings" in checkpoint_error(tmp_path)


def test_extra_tensor(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    t = all_tensors(tmp_path)
    t["model.layers.2.mlp.up_proj.weight"] = np.zeros((48, 32), np.float32)
    rewrite_weights(tmp_path, t)
    msg = checkpoint_error(tmp_path)
    assert "1 tensor(s) config.json does not describe: model.layers.2.mlp.up_proj.weight" in msg


def test_ignored_extras(tmp_path):
    """rotary inv_freq buffers are ignored; a tied model may still ship lm_head.weight."""
    write_random_checkpoint(tmp_path, {**TINY, "tie_word_embeddings": True})
    t = all_tensors(tmp_path)
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    t["lm_head.weight"] = t["model.embed_tokens.weight"].copy()
    rewrite_weights(tmp_path, t)
    with Checkpoint(tmp_path) as ck:
        ck.validate(load_spec(tmp_path))


def test_shape_mismatch(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    t = all_tensors(tmp_path)
    t["model.layers.1.mlp.gate_proj.weight"] = np.zeros((40, 32), np.float32)
    rewrite_weights(tmp_path, t)
    msg = checkpoint_error(tmp_path)
    assert "model.layers.1.mlp.gate_proj.weight has shape [40, 32] but config.json implies [48, 32]" in msg


def test_pruned_weights_with_plain_config(tmp_path):
    """A heterogeneous checkpoint read with layer_shapes removed fails on the first shape."""
    write_random_checkpoint(tmp_path, HETERO)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["layer_shapes"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    msg = checkpoint_error(tmp_path)
    assert "model.layers.1.self_attn.q_proj.weight has shape [16, 32]" in msg and "layer_shapes" in msg


def test_non_float_tensor(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    t = all_tensors(tmp_path)
    t["model.norm.weight"] = np.ones(32, np.int8)
    rewrite_weights(tmp_path, t)
    assert "model.norm.weight has dtype int8" in checkpoint_error(tmp_path)
    with Checkpoint(tmp_path) as ck:
        with pytest.raises(LlamaAotError, match="dtype int8"):
            ck.read("model.norm.weight")


def test_unknown_tensor_name(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    with Checkpoint(tmp_path) as ck, pytest.raises(LlamaAotError, match="'nope' is not in checkpoint"):
        ck.read("nope")


# ------------------------------------------------------------------ file-level errors


def _header(path: Path) -> tuple[int, dict]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return n, json.loads(data[8 : 8 + n])


def test_corrupt_header_length(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    f = tmp_path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")
    f.write_bytes(bytes(data))
    msg = checkpoint_error(tmp_path)
    assert str(f) in msg and "corrupt or truncated" in msg and "header length" in msg


def test_corrupt_header_not_json(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    f = tmp_path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"\xff\x00garbage!!!!"
    f.write_bytes(bytes(data))
    msg = checkpoint_error(tmp_path)
    assert str(f) in msg and "corrupt" in msg and "not valid JSON" in msg


def test_corrupt_header_offsets_out_of_bounds(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    n, header = _header(f)
    entry = header["model.norm.weight"]
    entry["data_offsets"] = [entry["data_offsets"][0] + 10**9, entry["data_offsets"][1] + 10**9]
    raw = json.dumps(header).encode()
    raw += b" " * (n - len(raw)) if len(raw) <= n else b""
    f.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    msg = checkpoint_error(tmp_path)
    assert str(f) in msg and "'model.norm.weight'" in msg and "truncated or corrupt" in msg


def test_corrupt_header_inconsistent_size(tmp_path):
    write_random_checkpoint(tmp_path, TINY)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    n, header = _header(f)
    header["model.norm.weight"]["shape"] = [31]
    raw = json.dumps(header).encode()
    raw += b" " * (n - len(raw))
    f.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    msg = checkpoint_error(tmp_path)
    assert "corrupt" in msg and "'model.norm.weight'" in msg


@pytest.mark.parametrize("keep", [4, 100, -1000])
def test_truncated_file(tmp_path, keep):
    write_random_checkpoint(tmp_path, TINY, num_shards=2)
    f = tmp_path / "model-00002-of-00002.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:keep])
    msg = checkpoint_error(tmp_path)
    assert str(f) in msg and "truncated" in msg


def test_missing_shard(tmp_path):
    write_random_checkpoint(tmp_path, TINY, num_shards=3)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    msg = checkpoint_error(tmp_path)
    assert "missing 1 shard(s)" in msg and "model-00002-of-00003.safetensors" in msg


def test_index_inconsistent_with_shard(tmp_path):
    write_random_checkpoint(tmp_path, TINY, num_shards=2)
    idx = tmp_path / "model.safetensors.index.json"
    index = json.loads(idx.read_text())
    wm = index["weight_map"]
    name = next(n for n, s in wm.items() if s.startswith("model-00001"))
    wm[name] = "model-00002-of-00002.safetensors"
    idx.write_text(json.dumps(index))
    assert "does not hold it" in checkpoint_error(tmp_path)


def test_corrupt_index(tmp_path):
    write_random_checkpoint(tmp_path, TINY, num_shards=2)
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    assert "weight_map" in checkpoint_error(tmp_path)


def test_no_weights(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    msg = checkpoint_error(tmp_path)
    assert "no .safetensors weights" in msg and ".bin" in msg


def test_ambiguous_weights(tmp_path):
    for name in ("a.safetensors", "b.safetensors"):
        np_save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / name))
    assert "no model.safetensors.index.json" in checkpoint_error(tmp_path)


def test_missing_dir(tmp_path):
    with pytest.raises(LlamaAotError, match="does not exist"):
        Checkpoint(tmp_path / "nope")
