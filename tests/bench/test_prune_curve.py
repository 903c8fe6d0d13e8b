"""bench/prune_curve.py's shape transfer (embedded model's pruned shape -> the 1B shape) and its from-scratch
student (a pruned shape with random weights that transformers runs)."""

import json

import numpy as np
import pytest

from bench.prune_curve import TINY, transfer_shape
from compiler.frontend.synthetic import llama32_1b_config
from compression.structure import Dims


def _pruned_tiny():
    base = json.loads((TINY / "config.json").read_text())
    shapes = [{"num_attention_heads": 4, "num_key_value_heads": 1, "intermediate_size": 544, "source_layer": 0},
              {"num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 320, "source_layer": 1},
              {"num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 96, "source_layer": 3}]
    return base, {**base, "num_hidden_layers": 3, "layer_shapes": shapes}


def test_transfer_follows_the_layer_at_the_same_depth():
    base, pruned = _pruned_tiny()
    big = transfer_shape(pruned, base, llama32_1b_config())
    # 16 layers over 4: layers 8-11 follow the dropped layer 2
    assert [s["source_layer"] for s in big["layer_shapes"]] == [*range(8), *range(12, 16)]
    assert big["num_hidden_layers"] == 12
    first, second, last = big["layer_shapes"][0], big["layer_shapes"][4], big["layer_shapes"][-1]
    assert (first["num_key_value_heads"], first["num_attention_heads"]) == (4, 16)  # half the groups, 4 q per kv
    assert (second["num_key_value_heads"], second["num_attention_heads"]) == (8, 32)
    assert first["intermediate_size"] == round(544 / 768 * 8192 / 32) * 32
    assert last["intermediate_size"] == round(96 / 768 * 8192 / 32) * 32
    assert all(s["intermediate_size"] % 32 == 0 for s in big["layer_shapes"])
    # the 1B count falls by about the tiny model's fraction
    tiny_kept = Dims.from_config(pruned).non_embedding_params() / Dims.from_config(base).non_embedding_params()
    big_kept = Dims.from_config(big).non_embedding_params() / Dims.from_config(llama32_1b_config()).non_embedding_params()
    assert big_kept == pytest.approx(tiny_kept, abs=0.02)


def test_random_student_of_a_pruned_shape_runs():
    import torch

    from evaluation.reference import model_from_config

    _, pruned = _pruned_tiny()
    torch.manual_seed(0)
    model = model_from_config(pruned, None)
    assert model.model.layers[0].mlp.down_proj.weight.shape == (256, 544)
    std = model.model.layers[2].mlp.up_proj.weight.std().item()
    assert std == pytest.approx(pruned["initializer_range"], rel=0.1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[0, 5, 7, 9]])).logits
    assert logits.shape == (1, 4, pruned["vocab_size"]) and np.isfinite(logits.numpy()).all()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
