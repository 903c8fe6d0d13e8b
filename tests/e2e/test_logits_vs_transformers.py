"""Compiled packages against transformers' LlamaForCausalLM on identical weights.

Each check runs chunked prefill over a prompt that crosses prefill chunks and KV pages, then
>= 8 decode steps, and compares the logits of every generated position with one causal
forward pass of the reference over prompt + generated tokens.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from reference import dequantized_hf_weights, int8_reference, reference_logits, reference_model
from runtime_stubs.engine import Engine
from runtime_stubs.package_format import read_manifest

PROMPT = [1] + [(7 * i + 11) % 500 + 4 for i in range(44)]  # 45 tokens: 3 prefill chunks, 3 KV pages
STEPS = 10


def _run(package, prompt=PROMPT, steps=STEPS):
    gen = Engine(package).generate(prompt, max_tokens=steps, keep_logits=True, stop_on_eos=False)
    assert len(gen.token_ids) == steps
    return gen, np.stack(gen.logits)


def _ref(model, prompt, tokens):
    """Reference logits at the positions that predicted each generated token."""
    return reference_logits(model, list(prompt) + tokens[:-1])[len(prompt) - 1 :]


def _rel_err(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", ["tied_llama3rope", "untied_bf16_sharded", "heterogeneous"])
def test_q0f32_matches_transformers(name, checkpoint_dir, compiled):
    gen, ours = _run(compiled(name, "q0f32"))
    ref = _ref(reference_model(checkpoint_dir(name)), PROMPT, gen.token_ids)
    assert _rel_err(ours, ref) <= 1e-3
    # greedy tokens identical: each of ours is the reference's argmax at that position
    assert gen.token_ids == [int(t) for t in ref.argmax(-1)]


# (scheme, bound of the error vs the fp32 model, relative to the logit scale)
QUANT_BOUNDS = [("q0f16", 0.01), ("q8f16", 0.05), ("q4f16", 0.35), ("cb8f16", 0.05), ("cb4f16", 0.35), ("cb3f16", 0.6)]


@pytest.mark.parametrize("quant,fp32_bound", QUANT_BOUNDS)
@pytest.mark.parametrize("name", ["tied_llama3rope", "heterogeneous"])
def test_quantized_matches_dequantized_reference(name, quant, fp32_bound, checkpoint_dir, compiled):
    package = compiled(name, quant, int8_activations=False)  # f32 activations: exact up to rounding order
    gen, ours = _run(package)
    # exact check: the reference runs on the package's own packed weights, dequantized by numpy
    deq_model = reference_model(checkpoint_dir(name), dequantized_hf_weights(package))
    assert _rel_err(ours, _ref(deq_model, PROMPT, gen.token_ids)) <= 1e-3
    # and the quantization error itself stays bounded against the original fp32 weights
    fp32 = _ref(reference_model(checkpoint_dir(name)), PROMPT, gen.token_ids)
    assert _rel_err(ours, fp32) <= fp32_bound
    if quant == "q4f16":
        _check_nibble_orders(package, expect_both=name == "heterogeneous")


@pytest.mark.parametrize("name", ["tied_llama3rope", "heterogeneous", "odd_shapes"])
def test_int8_activations_match_activation_quantized_reference(name, checkpoint_dir, compiled):
    """int8 activations (q4f16, hosts with an int8 dot product: AVX-512 VNNI, AVX-VNNI, AVX2, dotprod;
    prefill GEMM, decode GEMV and lm_head): against the dequantized-weight reference whose projections round
    their inputs the same way (2.5e-3), and against the same reference without the rounding (its own effect,
    bounded loosely)."""
    from schedules.cpu.int8_dot import int8_dot_isa
    from compiler.build_target import resolve

    if int8_dot_isa(resolve("host", None, None, None).tvm_target()) is None:
        pytest.skip("needs a CPU with an int8 dot product (x86 AVX2, AVX-VNNI or AVX-512 VNNI; AArch64 dotprod)")
    package = compiled(name, "q4f16", int8_activations=True)
    symbols = subprocess.run(["nm", "-D", str(package / "lib" / "model.so")], capture_output=True, text=True).stdout
    for kernel in ("int8_gemm", "int8_gemv"):  # prefill and decode/lm_head
        assert kernel in symbols, f"{kernel} is not in the library (a silent fallback to f32 activations)"
    gen, ours = _run(package)
    model = reference_model(checkpoint_dir(name), dequantized_hf_weights(compiled(name, "q4f16", int8_activations=False)))
    ref, spread = int8_reference(model, list(PROMPT) + gen.token_ids[:-1])
    modelled = ref[len(PROMPT) - 1 :]
    # not 1e-3: a float-order difference upstream can flip one rounding of x by a whole step (int8_reference)
    assert np.abs(ours - modelled).max() <= max(2.5e-3 * np.abs(modelled).max(), 1.5 * spread)
    # the activation rounding's own effect: same weights and tokens, f32 activations everywhere
    assert _rel_err(ours, _ref(model, PROMPT, gen.token_ids)) <= 0.05


@pytest.mark.parametrize("name", ["tied_llama3rope", "heterogeneous"])
def test_cb4_int8_kernels_match_activation_quantized_reference(name, checkpoint_dir, compiled):
    """cb4f16 with int8 activations (the LUT GEMV and GEMM, hosts with VNNI): against the reference on the
    package's dequantized codebooks that rounds its projections' inputs the same way."""
    from compiler.build_target import resolve
    from schedules.cpu.int8_dot import int8_dot_isa, weight_offset

    isa = int8_dot_isa(resolve("host", None, None, None).tvm_target())
    if isa is None or weight_offset("cb4f16", isa) is None:
        pytest.skip(f"cb4f16's int8 kernels need AVX-512 VNNI, AVX-VNNI or dotprod (this CPU: {isa or 'no int8 dot'})")
    package = compiled(name, "cb4f16", int8_activations=True)
    symbols = subprocess.run(["nm", "-D", str(package / "lib" / "model.so")], capture_output=True, text=True).stdout
    for kernel in ("int8_gemm", "int8_gemv"):
        assert kernel in symbols, f"{kernel} is not in the library (a silent fallback to f32 activations)"
    gen, ours = _run(package)
    model = reference_model(checkpoint_dir(name), dequantized_hf_weights(package))
    ref, spread = int8_reference(model, list(PROMPT) + gen.token_ids[:-1])
    modelled = ref[len(PROMPT) - 1 :]
    assert np.abs(ours - modelled).max() <= max(2.5e-3 * np.abs(modelled).max(), 1.5 * spread)


def test_int8_activations_with_fp16_head(checkpoint_dir, compiled):
    """--keep-embedding-precision with int8 activations (untied, bf16, sharded checkpoint): the layers' q4
    projections round their inputs, the q0f16 lm_head keeps the f32 kernel; the whole package against the
    reference that rounds exactly those, within its noise floor (the lm_head's rounding alone is below it)."""
    from schedules.cpu.int8_dot import int8_dot_isa
    from compiler.build_target import resolve

    if int8_dot_isa(resolve("host", None, None, None).tvm_target()) is None:
        pytest.skip("needs a CPU with an int8 dot product (x86 AVX2, AVX-VNNI or AVX-512 VNNI; AArch64 dotprod)")
    name = "untied_bf16_sharded"
    package = compiled(name, "q4f16", int8_activations=True, keep_embedding_precision=True)
    gen, ours = _run(package)
    model = reference_model(checkpoint_dir(name), dequantized_hf_weights(package))
    ref, spread = int8_reference(model, list(PROMPT) + gen.token_ids[:-1], lm_head=False)
    modelled = ref[len(PROMPT) - 1 :]
    assert np.abs(ours - modelled).max() <= max(2.5e-3 * np.abs(modelled).max(), 1.5 * spread)


def _check_nibble_orders(package, expect_both):
    """Every q4 qweight records its nibble order in the manifest: planar iff K % 128 == 0 (hidden 128;
    the heterogeneous model's o_proj K = 64 and down_proj K = 192 stay sequential)."""
    orders = set()
    for e in read_manifest(package):
        if e["name"].endswith(".qweight"):
            k = e["shape"][1] * 8
            assert e["nibble_order"] == ("planar" if k % 128 == 0 else "sequential"), e
            orders.add(e["nibble_order"])
        else:
            assert "nibble_order" not in e, e
    assert orders == ({"planar", "sequential"} if expect_both else {"planar"})
