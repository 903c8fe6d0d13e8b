"""``compile --activation-sparsity P``: every projection's input thresholded (TEAL-style), on the embedded trained
model, through the library against transformers on the package's own weights whose projection inputs a hook
written here zeroes below the package's thresholds."""

from __future__ import annotations

import contextlib
import json
import subprocess

import numpy as np
import pytest
import torch

from cli.main import DEFAULT_MODEL, main
from reference import dequantized_hf_weights, reference_logits, reference_model
from runtime_stubs.engine import Engine

CAL = ["--calibration-data", "train", "--calibration-sequences", "8"]
PROMPT = [1] + [(13 * i + 5) % 700 + 4 for i in range(40)]
STEPS = 8
# HF modules whose input each of our thresholded projections sees
INPUTS = {"self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"), "self_attn.o_proj": ("o_proj",),
          "mlp.gate_up_proj": ("gate_proj", "up_proj"), "mlp.down_proj": ("down_proj",)}


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    made = {}
    for name, extra in (("f32", ["--f32-activations"]), ("int8", [])):
        assert main(["compile", str(DEFAULT_MODEL), "-o", str(root / name), "--activation-sparsity", "0.4",
                     "--prefill-chunk", "16", "--context-window", "256", *CAL, *extra]) == 0
        made[name] = root / name
    return made


def _config(package):
    return json.loads((package / "llama-aot.json").read_text())


def _round_int8(x):
    """Per row and group of 32: d = max|x| / 127, x -> nearbyint(x / d) * d (int8_dot.numpy_reference)."""
    g = x.reshape(*x.shape[:-1], -1, 32)
    d = g.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    return (torch.round(g * inv) * d).reshape(x.shape)


@contextlib.contextmanager
def _thresholded(model, thresholds, int8_from=None, perturb=0.0, seed=0):
    """Zero every projection input with |x| <= its threshold; from position ``int8_from`` on (the decoded tokens)
    also round the kept inputs as the sparse GEMV does, and the lm_head's input at every position (q4 with int8
    activations). ``perturb``: scale inputs by 1 + perturb * N(0, 1) first (the references' own noise floor)."""
    gen = torch.Generator().manual_seed(seed)
    counts = {"zeroed": 0, "total": 0}

    def hook(t, count):
        def fn(_m, args):
            x = args[0]
            if perturb:
                x = x * (1 + perturb * torch.randn(x.shape, generator=gen))
            x = torch.where(x.abs() > t, x, torch.zeros_like(x))
            if count:
                counts["zeroed"] += int((x == 0).sum())
                counts["total"] += x.numel()
            if int8_from is not None:
                x = torch.cat([x[:, :int8_from], _round_int8(x[:, int8_from:])], dim=1)
            return (x,)
        return fn

    handles = []
    for i, layer in enumerate(model.model.layers):
        for ours, hf in INPUTS.items():
            t = thresholds[f"layers.{i}.{ours}"]
            for j, name in enumerate(hf):
                mod = (layer.self_attn if ours.startswith("self_attn") else layer.mlp).get_submodule(name)
                handles.append(mod.register_forward_pre_hook(hook(t, count=j == 0)))
    if int8_from is not None:
        handles.append(model.lm_head.register_forward_pre_hook(
            lambda _m, args: (_round_int8(args[0] * (1 + perturb * torch.randn(args[0].shape, generator=gen))),)))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _generate(package):
    gen = Engine(package).generate(PROMPT, max_tokens=STEPS, keep_logits=True, stop_on_eos=False)
    return gen.token_ids, np.stack(gen.logits)


def test_thresholds_zero_the_target_fraction_and_the_f32_package_matches(packages):
    """--f32-activations: the masked dense kernels everywhere, so the package equals the thresholded reference
    up to float order (1e-3 of the logit scale); the thresholds zero about the target 40% of the inputs on text
    the calibration did not see (our prompt), and change the logits (a threshold that zeroes nothing fails)."""
    cfg = _config(packages["f32"])
    rec = cfg["activation_sparsity"]
    assert rec["target_sparsity"] == 0.4 and rec["decode_kernel"] == "masked_dense_f32"
    assert set(cfg["quantization"]["modules"].values()) == {"q4f16k", "q4f16"}  # projections K-major, head q4f16
    tokens, ours = _generate(packages["f32"])
    model = reference_model(DEFAULT_MODEL, dequantized_hf_weights(packages["f32"]))
    ids = PROMPT + tokens[:-1]
    with _thresholded(model, rec["thresholds"]) as counts:
        ref = reference_logits(model, ids)[len(PROMPT) - 1:]
    assert 0.25 <= counts["zeroed"] / counts["total"] <= 0.55, counts
    assert float(np.abs(ours - ref).max() / np.abs(ref).max()) <= 1e-3
    dense = reference_logits(model, ids)[len(PROMPT) - 1:]
    assert float(np.abs(ours - dense).max() / np.abs(dense).max()) > 1e-2


def test_sparse_gemv_package_matches_the_thresholded_int8_reference(packages):
    """The default (an int8 dot product on this CPU): decode runs the row-skipping GEMV, whose kept inputs are
    rounded to int8; against the reference that thresholds every position and rounds the decoded ones, within
    its own noise floor (a threshold or a rounding boundary crossed by a float-order difference upstream)."""
    from compiler.build_target import resolve
    from schedules.cpu.int8_dot import int8_dot_isa

    isa = int8_dot_isa(resolve("host", None, None, None).tvm_target())
    if isa is None:
        pytest.skip("the sparse GEMV needs a CPU with an int8 dot product (x86 AVX2, AVX-VNNI or AVX-512 VNNI)")
    package = packages["int8"]
    rec = _config(package)["activation_sparsity"]
    assert rec["decode_kernel"] == f"sparse_gemv_int8_{isa}"
    symbols = subprocess.run(["nm", "-D", str(package / "lib" / "model.so")], capture_output=True, text=True).stdout
    assert "sparse_gemv" in symbols, "no sparse GEMV in the library (a silent dense fallback)"
    tokens, ours = _generate(package)
    model = reference_model(DEFAULT_MODEL, dequantized_hf_weights(package))
    ids = PROMPT + tokens[:-1]
    with _thresholded(model, rec["thresholds"], int8_from=len(PROMPT)):
        ref = reference_logits(model, ids)[len(PROMPT) - 1:]
    spread = 0.0
    for seed in range(3):
        with _thresholded(model, rec["thresholds"], int8_from=len(PROMPT), perturb=1e-6, seed=seed):
            spread = max(spread, float(np.abs(reference_logits(model, ids)[len(PROMPT) - 1:] - ref).max()))
    assert np.abs(ours - ref).max() <= max(2.5e-3 * np.abs(ref).max(), 1.5 * spread)
    # and against the reference without the rounding: the int8 rounding's own effect stays small
    with _thresholded(model, rec["thresholds"]):
        unrounded = reference_logits(model, ids)[len(PROMPT) - 1:]
    assert float(np.abs(ours - unrounded).max() / np.abs(unrounded).max()) <= 0.1
