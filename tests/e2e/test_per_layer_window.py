"""Per-layer windows: a checkpoint whose config.json has `sliding_window` and a `layer_types` pattern
(sliding_attention / full_attention) compiles to windowed caches for the sliding layers and full ones for the
others, checked against transformers run layer by layer with each layer's own mask (the windowed layers: keys
j < S and the W - S most recent; the full layers: causal), prefill and decode across the window boundary."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cli.main import DEFAULT_MODEL, main
from reference import reference_model

W, S, CHUNK, CONTEXT = 24, 4, 16, 96
KINDS = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("layer-types") / "ckpt"
    shutil.copytree(DEFAULT_MODEL, out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == len(KINDS)
    (out / "config.json").write_text(json.dumps({**cfg, "sliding_window": W, "layer_types": KINDS}))
    return out


@pytest.fixture(scope="module")
def package(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("layer-types-pkg") / "q0f32"
    assert main(["compile", str(ckpt), "-o", str(out), "--quant", "q0f32", "--prefill-chunk", str(CHUNK),
                 "--context-window", str(CONTEXT), "--attention-sinks", str(S)]) == 0
    return out


def _masks(n: int, windowed: list[bool]) -> list[torch.Tensor]:
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    causal = j <= i
    band = causal & ((j < S) | (i - j < W - S))
    return [torch.tensor(np.where(band if w else causal, 0.0, float("-inf")), dtype=torch.float32)[None, None]
            for w in windowed]


def _reference(model, ids: list[int], windowed: list[bool]) -> np.ndarray:
    """transformers' forward with each decoder layer's attention mask replaced by that layer's own."""
    masks = _masks(len(ids), windowed)
    hooks = [layer.register_forward_pre_hook(lambda mod, args, kwargs, m=m: (args, {**kwargs, "attention_mask": m}),
                                             with_kwargs=True) for layer, m in zip(model.model.layers, masks)]
    try:
        with torch.no_grad():
            return model(torch.tensor([ids]), use_cache=False).logits[0].numpy()
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture(scope="module")
def hf(ckpt):
    return reference_model(ckpt)


def _prompt(n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(100 + n).integers(3, 250, n)]


@pytest.mark.parametrize("n", [10, 40, 90])  # shorter than W, past it, several chunks past it
def test_prefill_matches_per_layer_reference(package, hf, n):
    from runtime_stubs.engine import Engine

    ids = _prompt(n)
    ours = Engine(package).prefill(ids)
    ref = _reference(hf, ids, [k == "sliding_attention" for k in KINDS])[-1]
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-3)
    if n > W:  # the pattern matters: windowing no layer, or every layer, gives other logits
        assert np.abs(_reference(hf, ids, [False] * 4)[-1] - ref).max() > 0.05
        assert np.abs(_reference(hf, ids, [True] * 4)[-1] - ref).max() > 0.05


def test_decode_across_the_window_until_the_context_window(package, hf):
    """Greedy decode from a 10-token prompt: every step's logits equal the reference's; the full layers' caches
    bound the sequence by the context window (unlike a package windowed in every layer)."""
    from runtime_stubs.engine import Engine

    prompt = _prompt(10)
    engine = Engine(package)
    assert not engine.unbounded
    gen = engine.generate(prompt, max_tokens=200, stop_on_eos=False, keep_logits=True)
    assert len(prompt) + len(gen.token_ids) == CONTEXT + 1  # the last token is sampled, not fed
    seq = prompt + gen.token_ids
    ref = _reference(hf, seq[:-1], [k == "sliding_attention" for k in KINDS])
    np.testing.assert_allclose(np.stack(gen.logits), ref[len(prompt) - 1 :], atol=2e-3, rtol=1e-3)


def test_package_records_the_layers(package):
    cfg = json.loads((package / "llama-aot.json").read_text())
    assert cfg["attention"] == {"sliding_window": W, "attention_sinks": S, "cache_window": W + CHUNK - 1,
                                "windowed_layers": [0, 2], "kv_cache_dtype": "float32"}
    rt = cfg["runtime"]
    assert rt["kv_cache_layers"] == [[0, 2], [1, 3]] and rt["kv_cache_windowed"] == [True, False]
    plan = cfg["memory_plan"]
    window_tokens = W + CHUNK - 1 + CHUNK + 2 * rt["page_size"]
    assert plan["kv_cache_tokens_by_layer"] == [window_tokens, CONTEXT, window_tokens, CONTEXT]


def test_bad_layer_types(ckpt, tmp_path, capsys):
    """A layer_types list of the wrong length or with an unknown kind: a one-line error, no package."""
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    for kinds in (KINDS[:3], KINDS[:3] + ["chunked_attention"]):
        (bad / "config.json").write_text(json.dumps({**cfg, "layer_types": kinds}))
        out = tmp_path / "out"
        assert main(["compile", str(bad), "-o", str(out), "--quant", "q0f32"]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert "layer_types" in err[-1] and not out.exists()
