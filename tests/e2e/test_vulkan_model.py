"""Whole models compiled for Vulkan, run end to end on the machine's Vulkan driver (lavapipe in CI).

q0f32 against transformers (and identical greedy tokens); q0f16 / q4f16 against the host (CPU)
build of the same package settings, which the other end-to-end tests tie to transformers.
"""

from __future__ import annotations

import numpy as np
import pytest

from compiler.cli import DEFAULT_MODEL
from compiler.compile import CompileOptions, compile_model
from reference import reference_logits, reference_model
from runtime_stubs.engine import Engine

NO_DEVICE = "needs a Vulkan driver (mesa-vulkan-drivers)"
PROMPT = [0] + [(37 * i + 5) % 4000 + 3 for i in range(40)]  # crosses prefill chunks (16) and KV pages (16)
STEPS = 8


@pytest.fixture(scope="module")
def vulkan_ready():
    from runtime_stubs import vulkan

    vulkan.load_plugin()
    if vulkan.unavailable_reason():
        pytest.skip(NO_DEVICE)


def _build(tmp_path_factory, model_dir, target, quant):
    out = tmp_path_factory.mktemp(f"{target}-{quant}")
    return compile_model(model_dir, out / "pkg", CompileOptions(target=target, quant=quant, prefill_chunk=16, context_window=128))


def _generate(package, prompt, steps=STEPS):
    gen = Engine(package).generate(prompt, max_tokens=steps, keep_logits=True, stop_on_eos=False)
    return gen.token_ids, np.stack(gen.logits)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("model", ["tiny", "heterogeneous"])
def test_q0f32_vulkan_matches_transformers(model, vulkan_ready, tmp_path_factory, checkpoint_dir):
    model_dir = DEFAULT_MODEL if model == "tiny" else checkpoint_dir("heterogeneous")
    prompt = PROMPT if model == "tiny" else [1] + [t % 500 + 4 for t in PROMPT[1:]]
    tokens, logits = _generate(_build(tmp_path_factory, model_dir, "vulkan", "q0f32"), prompt)
    ref = reference_logits(reference_model(model_dir), prompt + tokens[:-1])[len(prompt) - 1 :]
    assert _rel(logits, ref) <= 1e-3
    assert tokens == [int(t) for t in ref.argmax(-1)]


@pytest.mark.parametrize("quant,tol", [("q0f16", 0.02), ("q4f16", 0.02)])
@pytest.mark.parametrize("model", ["tiny", "heterogeneous"])
def test_f16_vulkan_matches_host_build(model, quant, tol, vulkan_ready, tmp_path_factory, checkpoint_dir):
    model_dir = DEFAULT_MODEL if model == "tiny" else checkpoint_dir("heterogeneous")
    prompt = PROMPT if model == "tiny" else [1] + [t % 500 + 4 for t in PROMPT[1:]]
    host_tokens, host_logits = _generate(_build(tmp_path_factory, model_dir, "host", quant), prompt)
    gpu = Engine(_build(tmp_path_factory, model_dir, "vulkan", quant))
    # teacher-force the host's tokens so both builds see the same sequence
    gpu.reset()
    rows = [gpu.prefill(prompt)] + [gpu.decode(t) for t in host_tokens[:-1]]
    assert _rel(np.stack(rows), host_logits) <= tol
