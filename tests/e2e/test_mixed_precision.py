"""``compile --quant mixed``: a scheme per tensor under a bits-per-weight budget, on the embedded trained model
(calibrated on its training split), run through the library against transformers on the package's own weights."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from cli.main import DEFAULT_MODEL, main
from reference import dequantized_hf_weights, reference_logits, reference_model
from runtime_stubs.engine import Engine
from runtime_stubs.package_format import read_manifest

CAL = ["--calibration-data", "train", "--calibration-sequences", "8"]
PROMPT = [1] + [(13 * i + 5) % 700 + 4 for i in range(40)]


def _compile(out, *args):
    assert main(["compile", str(DEFAULT_MODEL), "-o", str(out), "--quant", "mixed", "--prefill-chunk", "16",
                 "--context-window", "256", *CAL, *args]) == 0
    return json.loads((out / "llama-aot.json").read_text())["quantization"]


def _weights(modules: list[str]) -> int:
    from compiler.frontend import Checkpoint, load_spec
    from compiler.model.weights import weight_plan
    from compiler.quantization import get_scheme
    from compiler.quantization.assignment import SchemeAssignment

    spec = load_spec(DEFAULT_MODEL)
    plan = weight_plan(spec, SchemeAssignment.uniform(get_scheme("q4f16")))
    with Checkpoint(DEFAULT_MODEL) as ck:
        return sum(int(np.prod(ck.info(n)[0])) for m in modules for n in plan[m].hf_names)


def test_mixed_package_keeps_its_budget_and_matches_transformers(tmp_path):
    q = _compile(tmp_path / "mixed", "--bits-per-weight", "4.0", "--f32-activations")
    modules = q["modules"]
    assert "embed_tokens" in modules and len(modules) == 1 + 4 * 4  # the tied embedding and 4 projections per layer
    assert set(modules.values()) <= {"q8f16", "q4f16", "cb4f16", "cb3f16"}
    assert len(set(modules.values())) >= 2, modules  # 4.0 bits lies between cb3's 3.27 and cb4's 4.49: a mix
    # the budget holds in the bytes actually stored
    entries = read_manifest(tmp_path / "mixed")
    stored = sum(e["nbytes"] for e in entries if e["name"].rsplit(".", 1)[0] in modules)
    assert stored == q["mixed"]["bytes"] <= 4.0 * _weights(list(modules)) / 8
    assert q["mixed"]["bits_per_weight"] == pytest.approx(8 * stored / _weights(list(modules)), abs=1e-3)
    assert set(q["layout"]["schemes"]) == set(modules.values())
    # exact: transformers on the package's own weights, each dequantized by numpy with its module's scheme
    gen = Engine(tmp_path / "mixed").generate(PROMPT, max_tokens=8, keep_logits=True, stop_on_eos=False)
    ours = np.stack(gen.logits)
    ref = reference_logits(reference_model(DEFAULT_MODEL, dequantized_hf_weights(tmp_path / "mixed")),
                           PROMPT + gen.token_ids[:-1])[len(PROMPT) - 1:]
    assert float(np.abs(ours - ref).max() / np.abs(ref).max()) <= 1e-3


def test_mixed_with_int8_activations_and_a_fixed_embedding(tmp_path):
    """--keep-embedding-precision: the embedding stays q0f16, outside the choice and the budget; the q4 / cb4
    projections get the int8 kernels where this CPU has them, the others keep the f32 ones."""
    from compiler.build_target import resolve
    from schedules.cpu.int8_dot import int8_dot_isa, weight_offset

    q = _compile(tmp_path / "mixed", "--bits-per-weight", "4.5", "--keep-embedding-precision")
    assert q["embedding_and_lm_head"]["name"] == q["modules"]["embed_tokens"] == "q0f16"
    choice = {m: s for m, s in q["modules"].items() if m != "embed_tokens"}
    assert q["mixed"]["bytes"] <= 4.5 * _weights(list(choice)) / 8
    isa = int8_dot_isa(resolve("host", None, None, None).tvm_target())
    if isa is not None and any(weight_offset(s, isa) is not None for s in choice.values()):
        symbols = subprocess.run(["nm", "-D", str(tmp_path / "mixed" / "lib" / "model.so")], capture_output=True,
                                 text=True).stdout
        assert "int8_gemv" in symbols
    gen = Engine(tmp_path / "mixed").generate(PROMPT, max_tokens=8, keep_logits=True, stop_on_eos=False)
    ref = reference_logits(reference_model(DEFAULT_MODEL), PROMPT + gen.token_ids[:-1])[len(PROMPT) - 1:]
    # against the float model: 4.5 bits per weight with int8 activations costs a little, never a broken kernel
    assert float(np.abs(np.stack(gen.logits) - ref).max() / np.abs(ref).max()) <= 0.35


@pytest.mark.parametrize("args,message", [
    (["--bits-per-weight", "1.0"], "raise --bits-per-weight"),
    (["--mixed-schemes", "q4f16,q9f16"], "--mixed-schemes"),
    (["--bits-per-weight", "-2"], "(0, 32]"),
    (["--sensitivity", "vibes"], "fisher or loss"),
])
def test_mixed_refuses_bad_options(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    code = main(["compile", str(DEFAULT_MODEL), "-o", str(out), "--quant", "mixed", *CAL, *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and err[-1].startswith("error: ") and message in err[-1], err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_loss_sensitivity_is_the_calibration_loss_one_tensor_adds():
    """--sensitivity loss: the cost is transformers' own loss (its ``labels=`` path) on the windows with that
    tensor dequantized, minus the float model's; the model is restored after every measurement."""
    import torch

    from compiler.frontend import Checkpoint
    from compiler.quantization import get_scheme
    from compression.mixed_precision import LossDelta

    cost = LossDelta(DEFAULT_MODEL, "train", sequences=4, seq_len=64)
    names = ("model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight")  # a fused module
    with Checkpoint(DEFAULT_MODEL) as ck:
        w = np.concatenate([ck.read(n) for n in names])
    deq = {q: get_scheme(q).dequantize(get_scheme(q).pack(w)) for q in ("q8f16", "cb3f16")}
    got = {q: cost(names, w, d) for q, d in deq.items()}
    assert cost(names, w, w) == pytest.approx(0, abs=1e-6)  # restored, and its own weights cost nothing

    def hf_loss(weights):
        model = reference_model(DEFAULT_MODEL, weights)
        with torch.no_grad():  # transformers shifts the labels itself
            return float(np.mean([float(model(input_ids=x[None], labels=x[None]).loss) for x in cost.windows]))

    base = hf_loss(None)
    for q, d in deq.items():
        f = d.shape[0] // 2
        weights = {k: v.float() for k, v in reference_model(DEFAULT_MODEL).state_dict().items()}
        weights.update({names[0]: torch.from_numpy(d[:f].copy()), names[1]: torch.from_numpy(d[f:].copy())})
        assert got[q] == pytest.approx(hf_loss(weights) - base, rel=0.02, abs=1e-5)
    assert 0 < got["q8f16"] < got["cb3f16"]
