"""`llama-aot prune`: hard-concrete gates, choosing units under a budget, cutting tensors (against the gated model
it stands for), the written checkpoint in transformers and compiled, resuming an interrupted run, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from cli.main import DEFAULT_MODEL, main
from compression.hard_concrete import HardConcrete
from compression.prune import SizeController, _GateHooks
from compression.structure import GROUP_SIZE, Dims, cut_weights, pruned_config, select
from evaluation.reference import model_from_config, reference_model

RAW = json.loads((DEFAULT_MODEL / "config.json").read_text())
DIMS = Dims.from_config(RAW)
FAST = ["--steps", "4", "--recovery-steps", "3", "--batch", "2", "--seq-len", "64"]


def test_keep_probability_is_the_chance_a_gate_is_open():
    gate = HardConcrete(5)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-3.0, -1.0, 0.0, 1.5, 4.0]))
    gen = torch.Generator().manual_seed(0)
    samples = torch.stack([gate(gen) for _ in range(20000)])
    assert ((samples >= 0) & (samples <= 1)).all()
    np.testing.assert_allclose((samples > 0).float().mean(0).numpy(), gate.keep_probability().detach().numpy(), atol=0.015)
    assert (samples == 0).any() and (samples == 1).any()  # exact zeros and ones: a gate really closes


def test_tiny_model_counts():
    assert DIMS.embedding_params() == 4096 * 256  # tied: counted once
    weights = {}
    with safe_open(str(DEFAULT_MODEL / "model.safetensors"), "np") as f:
        weights = {k: f.get_slice(k).get_shape() for k in f.keys()}
    non_embedding = sum(int(np.prod(s)) for k, s in weights.items() if "embed_tokens" not in k)
    assert DIMS.non_embedding_params() == non_embedding == 3_016_960


def test_select_keeps_the_best_units_within_budget():
    rng = np.random.default_rng(1)
    g = [rng.random(d.kv_heads) for d in DIMS.layers]
    c = [rng.random(d.ffn) for d in DIMS.layers]
    budget = int(0.6 * DIMS.non_embedding_params())
    keep = select(DIMS, [0, 1, 3], g, c, budget)
    assert [k.source for k in keep] == [0, 1, 3]
    assert DIMS.non_embedding_params(keep) <= budget
    for k in keep:
        assert len(k.ffn) % GROUP_SIZE == 0 and k.kv_groups and k.ffn
        # what is kept outranks what is not, in each layer: blocks of channels taken best first
        dropped = sorted(set(range(DIMS.layers[k.source].ffn)) - set(k.ffn))
        if dropped:
            assert c[k.source][list(k.ffn)].min() >= np.sort(c[k.source])[::-1][len(k.ffn) - 1] - 1e-12
            assert np.sort(c[k.source][list(k.ffn)])[::-1][len(k.ffn) - 1] >= c[k.source][dropped].max() - 1e-12


def test_cut_model_computes_what_the_gated_model_did():
    """Gates with zeros on the dropped units and values in (0, 1] elsewhere, folded into the cut tensors: the cut
    model's logits (transformers, per-layer shapes) equal the gated full model's."""
    teacher = reference_model(DEFAULT_MODEL)
    rng = np.random.default_rng(2)
    keep = select(DIMS, [0, 2, 3], [rng.random(d.kv_heads) for d in DIMS.layers],
                  [rng.random(d.ffn) for d in DIMS.layers], int(0.5 * DIMS.non_embedding_params()))
    heads = [torch.zeros(d.kv_heads) for d in DIMS.layers]
    ffn = [torch.zeros(d.ffn) for d in DIMS.layers]
    layers = torch.tensor([0.9, 0.0, 0.7, 1.0])
    for k in keep:
        heads[k.source][list(k.kv_groups)] = torch.tensor(rng.uniform(0.3, 1, len(k.kv_groups)), dtype=torch.float32)
        ffn[k.source][list(k.ffn)] = torch.tensor(rng.uniform(0.3, 1, len(k.ffn)), dtype=torch.float32)
    hooks = _GateHooks(teacher, DIMS)
    hooks.values = (heads, ffn, layers)
    ids = torch.tensor([[0] + list(rng.integers(2, 4096, 40))])
    with torch.no_grad():
        gated = teacher(input_ids=ids, use_cache=False).logits
    hooks.remove()
    cut = model_from_config(pruned_config(RAW, DIMS, keep), cut_weights(teacher.state_dict(), DIMS, keep, heads, ffn, layers))
    with torch.no_grad():
        ours = cut(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(ours, gated, atol=2e-4, rtol=1e-4)
    assert [s["source_layer"] for s in pruned_config(RAW, DIMS, keep)["layer_shapes"]] == [0, 2, 3]


def _track(multiplier, target: float, speed: float, steps: int = 200) -> tuple[float, float]:
    """A plant like the gates under Adam: the size moves at most ``speed`` per step, in the direction the
    multiplier pushes (tanh: saturating); the target ramps to ``target`` over half the steps, as in prune.
    Returns (lowest size, final size)."""
    import math

    size, lowest = 1.0, 1.0
    for step in range(steps):
        ramp = 1 - (1 - target) * min(1.0, (step + 1) / (steps // 2))
        size -= speed * math.tanh(multiplier(size - ramp))
        lowest = min(lowest, size)
    return lowest, size


@pytest.mark.parametrize("target", [0.9, 0.65, 0.5])
@pytest.mark.parametrize("speed", [0.005, 0.01, 0.03])
def test_size_controller_reaches_the_target_without_overshoot(target, speed):
    """The PI multiplier settles on the target (within 0.005 after the ramp's hold) and undershoots it by less
    than 0.07 even when the plant is only just fast enough for the ramp (speed 0.005 for target 0.5)."""
    lowest, final = _track(SizeController().multiplier, target, speed)
    assert abs(final - target) < 0.005 and target - lowest < 0.07


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "p65"
    assert main(["prune", str(DEFAULT_MODEL), "-o", str(out), "--target-params", "0.65", *FAST]) == 0
    return out


def test_pruned_checkpoint_meets_target_and_loads(pruned):
    report = json.loads((pruned / "pruning.json").read_text())
    config = json.loads((pruned / "config.json").read_text())
    with safe_open(str(pruned / "model.safetensors"), "np") as f:
        numel = {k: int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()}
    non_embedding = sum(n for k, n in numel.items() if "embed_tokens" not in k)
    assert report["non_embedding_params"]["after"] == non_embedding <= 0.65 * 3_016_960
    assert non_embedding > 0.55 * 3_016_960  # the budget is used, not wasted
    assert all(s["intermediate_size"] % GROUP_SIZE == 0 for s in config["layer_shapes"])
    assert "lm_head.weight" not in numel and (pruned / "tokenizer.json").is_file()
    trace = report["size_trace"]  # [step, ramped target, expected size]: the controller's evidence
    assert [t[0] for t in trace] == [0, 3] and trace[-1][1] == pytest.approx(0.65, abs=1e-4)
    assert not list(pruned.parent.glob(".p65.*"))  # no partial state or temporary left
    model = reference_model(pruned)  # transformers runs it (per-layer shapes)
    assert model(input_ids=torch.tensor([[0, 5, 9]]), use_cache=False).logits.shape == (1, 3, 4096)


def test_pruned_checkpoint_compiles_and_evaluates_like_transformers(pruned, tmp_path, capsys):
    pkg = tmp_path / "pkg"
    assert main(["compile", str(pruned), "-o", str(pkg), "--quant", "q0f32", "--prefill-chunk", "64"]) == 0
    capsys.readouterr()
    results = []
    for model in (pkg, pruned):
        assert main(["eval", str(model), "--max-tokens", "1500", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out.strip()))
    assert results[0]["kind"] == "package" and results[1]["kind"] == "checkpoint"
    assert abs(results[0]["perplexity"] / results[1]["perplexity"] - 1) < 1e-3


def test_taylor_method_keeps_every_layer(tmp_path):
    out = tmp_path / "taylor"
    assert main(["prune", str(DEFAULT_MODEL), "-o", str(out), "--method", "taylor", "--target-params", "0.5", *FAST]) == 0
    report = json.loads((out / "pruning.json").read_text())
    assert report["layers_kept"] == [0, 1, 2, 3] and report["non_embedding_params"]["kept"] <= 0.5


def test_a_bfloat16_checkpoint_is_written_in_bfloat16(tmp_path):
    """Training runs in float32; the output keeps the source's storage type (a 1B model stays 2 bytes a weight)."""
    import shutil

    from safetensors.torch import save_file

    src = tmp_path / "bf16"
    src.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (DEFAULT_MODEL / f).is_file():
            shutil.copy(DEFAULT_MODEL / f, src / f)
    with safe_open(str(DEFAULT_MODEL / "model.safetensors"), "pt") as f:
        save_file({k: f.get_tensor(k).to(torch.bfloat16) for k in f.keys()}, str(src / "model.safetensors"))
    out = tmp_path / "out"
    assert main(["prune", str(src), "-o", str(out), "--target-params", "0.8", *FAST]) == 0
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    reference_model(out)  # and transformers still loads it


def _prune_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli", "prune", str(DEFAULT_MODEL), "-o", str(out), "--steps", "12",
            "--recovery-steps", "10", "--batch", "2", "--seq-len", "64", "--save-every", "2", "--threads", "1", *extra]


def test_interrupted_prune_resumes_to_the_same_weights(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    whole = tmp_path / "whole"
    subprocess.run(_prune_cmd(whole), cwd=root, env=env, check=True, capture_output=True, timeout=600)
    out = tmp_path / "resumed"
    state = tmp_path / ".resumed.prune-partial" / "state.pt"
    proc = subprocess.Popen(_prune_cmd(out), cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before saving a state"
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    assert proc.returncode == 130 and not out.exists() and state.exists()
    done = subprocess.run(_prune_cmd(out), cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr
    with safe_open(str(whole / "model.safetensors"), "pt") as a, safe_open(str(out / "model.safetensors"), "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for k in a.keys():
            torch.testing.assert_close(a.get_tensor(k), b.get_tensor(k), atol=0, rtol=0)
    assert not state.parent.exists()


@pytest.mark.parametrize("args,message", [
    (["--target-params", "0"], "fraction in (0, 1)"),
    (["--target-params", "1.2"], "fraction in (0, 1)"),
    (["--target-params", "0.001"], "below the smallest model"),
    (["--method", "random"], "unknown"),
    (["--steps", "0"], "at least 1"),
    (["--data", "{empty}"], "empty"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "out"
    assert main(["prune", str(DEFAULT_MODEL), "-o", str(out), *FAST, *[a.format(empty=empty) for a in args]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_missing_model_and_foreign_output(tmp_path, capsys):
    assert main(["prune", str(tmp_path / "nope"), "-o", str(tmp_path / "o"), *FAST]) == 2
    assert "no config.json" in capsys.readouterr().err
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["prune", str(DEFAULT_MODEL), "-o", str(other), *FAST]) == 2
    assert "is not a llama-aot prune output" in capsys.readouterr().err and (other / "notes.txt").exists()
