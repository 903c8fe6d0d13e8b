"""Whole models compiled for Vulkan, run end to end on the machine's Vulkan driver (lavapipe in CI).

q0f32 against transformers (and identical greedy tokens); q0f16 / q4f16 against the host (CPU)
build of the same package settings, which the other end-to-end tests tie to transformers.
"""

from __future__ import annotations

import numpy as np
import pytest

from cli.main import DEFAULT_MODEL
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


def _build(tmp_path_factory, model_dir, target, quant, prefill_chunk=16):
    out = tmp_path_factory.mktemp(f"{target}-{quant}")
    opts = CompileOptions(target=target, quant=quant, prefill_chunk=prefill_chunk, context_window=256)
    return compile_model(model_dir, out / "pkg", opts)


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


def test_long_prefill_chunk_matches_transformers(vulkan_ready, tmp_path_factory):
    """The default prefill chunk (128) with a 101-token prompt: kernels then launch more workgroups
    than lavapipe's maxComputeWorkGroupCount (65535) in x, which the runtime folds into x*y."""
    prompt = [0] + [(37 * i + 5) % 4000 + 3 for i in range(100)]
    tokens, logits = _generate(_build(tmp_path_factory, DEFAULT_MODEL, "vulkan", "q0f32", prefill_chunk=128), prompt, steps=4)
    ref = reference_logits(reference_model(DEFAULT_MODEL), prompt + tokens[:-1])[len(prompt) - 1 :]
    assert _rel(logits, ref) <= 1e-3
    assert tokens == [int(t) for t in ref.argmax(-1)]


def test_vulkan_profile_builds_for_another_device(vulkan_ready, tmp_path):
    """--vulkan-profile: this device's profile (written by `python -m runtime_stubs.vulkan --profile`)
    gives a package that runs here like transformers; a shipped profile (a 32-lane NVIDIA GPU) is
    compiled for that device's limits, whatever this machine has."""
    import json
    import subprocess
    import sys

    profile = tmp_path / "this-device.json"
    subprocess.run([sys.executable, "-m", "runtime_stubs.vulkan", "--profile", str(profile)], check=True, capture_output=True)
    opts = dict(target="vulkan", quant="q0f32", prefill_chunk=16, context_window=128)
    pkg = compile_model(DEFAULT_MODEL, tmp_path / "here", CompileOptions(vulkan_profile=str(profile), **opts))
    tokens, logits = _generate(pkg, PROMPT, steps=4)
    ref = reference_logits(reference_model(DEFAULT_MODEL), PROMPT + tokens[:-1])[len(PROMPT) - 1 :]
    assert _rel(logits, ref) <= 1e-3 and tokens == [int(t) for t in ref.argmax(-1)]

    other = compile_model(DEFAULT_MODEL, tmp_path / "nv", CompileOptions(vulkan_profile="nvidia-hopper", **opts))
    dev = json.loads((other / "llama-aot.json").read_text())["target"]["tvm_device"]
    assert dev["thread_warp_size"] == 32 and dev["max_shared_memory_per_block"] == 49152
