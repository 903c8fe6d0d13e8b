"""`compile --sliding-window W --attention-sinks S` on the embedded tiny model against transformers run with the
window as an explicit attention mask (every query sees keys j < S and the W - S most recent, itself included;
positions are the tokens' indices in the whole sequence), and the options' bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cli.main import DEFAULT_MODEL, main
from reference import reference_logits, reference_model

W, S, CHUNK = 24, 4, 16


def _window_mask(n: int, window: int = W, sinks: int = S) -> np.ndarray:
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    return (j <= i) & ((j < sinks) | (i - j < window - sinks))


def _reference(model, ids: list[int]) -> np.ndarray:
    mask = torch.tensor(np.where(_window_mask(len(ids)), 0.0, float("-inf")), dtype=torch.float32)[None, None]
    with torch.no_grad():
        return model(torch.tensor([ids]), attention_mask=mask, use_cache=False).logits[0].numpy()


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("window") / "q0f32"
    assert main(["compile", str(DEFAULT_MODEL), "-o", str(out), "--quant", "q0f32", "--prefill-chunk", str(CHUNK),
                 "--context-window", "64", "--sliding-window", str(W), "--attention-sinks", str(S)]) == 0
    return out


@pytest.fixture(scope="module")
def hf():
    return reference_model(DEFAULT_MODEL)


def _prompt(n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(n).integers(3, 250, n)]


@pytest.mark.parametrize("n", [10, 24, 61])  # shorter than W, exactly W, several chunks past it
def test_prefill_matches_masked_reference(package, hf, n):
    from runtime_stubs.engine import Engine

    ids = _prompt(n)
    ours = Engine(package).prefill(ids)
    ref = _reference(hf, ids)[-1]
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-3)
    if n > W:  # the window matters here: full attention gives other logits
        assert np.abs(reference_logits(hf, ids)[-1] - ref).max() > 0.05


def test_score_gives_every_positions_windowed_logits(package, hf):
    """The library's score function (llama-aot eval) over 61 tokens: every row is the masked reference's."""
    from runtime_stubs.engine import Engine

    ids = _prompt(61)
    np.testing.assert_allclose(Engine(package).score(ids), _reference(hf, ids), atol=2e-3, rtol=1e-3)


def test_decode_across_the_window_matches_reference(package, hf):
    """Greedy decode from a 10-token prompt to 90 tokens (past W and past the 64-token context window): every
    step's logits equal the masked reference's on the same sequence."""
    from runtime_stubs.engine import Engine

    prompt = _prompt(10)
    gen = Engine(package).generate(prompt, max_tokens=80, stop_on_eos=False, keep_logits=True)
    assert len(gen.token_ids) == 80  # the context window (64) does not stop a windowed package
    seq = prompt + gen.token_ids
    ref = _reference(hf, seq[:-1])
    ours = np.stack(gen.logits)
    np.testing.assert_allclose(ours, ref[len(prompt) - 1 :], atol=2e-3, rtol=1e-3)


def test_package_records_the_window(package):
    cfg = json.loads((package / "llama-aot.json").read_text())
    assert cfg["attention"] == {"sliding_window": W, "attention_sinks": S, "cache_window": W + CHUNK - 1,
                                "kv_cache_dtype": "float32"}
    # the cache is sized by the window, not the context window
    assert cfg["memory_plan"]["kv_cache_tokens"] == W + CHUNK - 1 + CHUNK + 2 * cfg["runtime"]["page_size"]


def test_full_attention_package_records_no_window(tmp_path):
    from compiler.model.attention_window import resolve

    assert resolve(DEFAULT_MODEL, None, None, 256, 16, 32, None) is None


@pytest.mark.parametrize("args,needle", [
    (["--sliding-window", "4", "--attention-sinks", "4"], "must be larger than --attention-sinks"),
    (["--sliding-window", "500", "--context-window", "256"], "larger than the context window"),
    (["--attention-sinks", "2"], "needs --sliding-window"),
    (["--sliding-window", "0"], "must be positive"),
])
def test_bad_window_options(tmp_path, capsys, args, needle):
    out = tmp_path / "pkg"
    assert main(["compile", str(DEFAULT_MODEL), "-o", str(out), "--quant", "q0f32", *args]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert needle in err[-1] and not out.exists()


def test_window_from_checkpoint_config(tmp_path):
    """A checkpoint's `sliding_window` is taken, with no sinks; its `layer_types` picks the windowed layers
    (tests/e2e/test_per_layer_window.py runs such a package), and the options set W and S for those layers."""
    from compiler.model.attention_window import resolve
    from runtime_stubs.errors import LlamaAotError
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(DEFAULT_MODEL, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "sliding_window": 32}))
    w = resolve(ckpt, None, None, 256, 16, 32, None)
    assert (w.window, w.sinks, w.layers) == (32, 0, None)
    n = cfg["num_hidden_layers"]
    kinds = (["sliding_attention", "full_attention"] * n)[:n]
    (ckpt / "config.json").write_text(json.dumps({**cfg, "sliding_window": 32, "layer_types": kinds}))
    w = resolve(ckpt, None, None, 256, 16, 32, None)
    assert (w.window, w.layers) == (32, tuple(range(0, n, 2))) and not w.every_layer
    w = resolve(ckpt, 48, 4, 256, 16, 32, None)
    assert (w.window, w.sinks, w.layers) == (48, 4, tuple(range(0, n, 2)))
    (ckpt / "config.json").write_text(json.dumps({**cfg, "sliding_window": 32, "layer_types": ["full_attention"] * n}))
    assert resolve(ckpt, None, None, 256, 16, 32, None) is None
    with pytest.raises(LlamaAotError, match="keeps every layer full_attention"):
        resolve(ckpt, 48, 4, 256, 16, 32, None)


def test_gpu_device_refused():
    from compiler.model.attention_window import resolve
    from runtime_stubs.errors import LlamaAotError

    with pytest.raises(LlamaAotError, match="CPU targets only"):
        resolve(DEFAULT_MODEL, 24, 4, 256, 16, 32, "vulkan")


def test_run_refuses_unknown_attention_options(package, tmp_path, capsys):
    """A package whose llama-aot.json asks for an attention option this runtime lacks (a newer compiler's) is
    refused with what to do, not run with the option ignored."""
    import shutil

    from runtime_stubs.integrity import write_checksums

    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    cfg = json.loads((pkg / "llama-aot.json").read_text())
    cfg["attention"]["sparse_attention"] = "lsh"
    (pkg / "llama-aot.json").write_text(json.dumps(cfg))
    write_checksums(pkg)
    assert main(["run", str(pkg), "--prompt-ids", "1,2,3", "--max-tokens", "2"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert "cannot honour (sparse_attention)" in err[-1]
