"""Weight conversion streams: peak memory stays near the largest tensor, not the whole model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from compiler.frontend.synthetic import write_random_checkpoint

CONFIG = dict(
    hidden_size=512, intermediate_size=2048, num_hidden_layers=16, num_attention_heads=8,
    num_key_value_heads=2, head_dim=64, vocab_size=32768, rms_norm_eps=1e-5, rope_theta=500000.0,
    max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)

SCRIPT = r"""
import json, sys, threading
import numpy as np
from compiler.frontend import Checkpoint, load_spec
from compiler.model.weights import conversion_peak_bytes, converted_params, planned_params, weight_plan
from compiler.package import write_params
from compiler.quantization import get_scheme
from compiler.quantization.assignment import SchemeAssignment

src, out, quant = sys.argv[1:]
spec = load_spec(src)
scheme = get_scheme(quant)
plan = weight_plan(spec, SchemeAssignment.uniform(scheme))
with Checkpoint(src) as ck:
    ck.validate(spec)
    shapes, dtypes = planned_params(ck, plan, "float32")
    names = list(shapes)
    estimate = conversion_peak_bytes(ck, plan, shapes, dtypes)

    def status_kb(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    # the growth over the RSS right now: ru_maxrss would hide it under an earlier peak (imports, validation)
    before = status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        sampled = None
    except OSError:  # no clear_refs: sample the RSS instead
        sampled, done = [before], threading.Event()
        def sample():
            while not done.wait(0.005):
                sampled.append(status_kb("VmRSS"))
        threading.Thread(target=sample, daemon=True).start()
    entries = write_params(__import__("pathlib").Path(out), converted_params(ck, plan, names, dtypes))
    if sampled is None:
        peak = status_kb("VmHWM")
    else:
        done.set(); peak = max(sampled + [status_kb("VmRSS")])
print(json.dumps({"delta_mb": (peak - before) / 1024, "params": len(entries), "estimate_mb": estimate / 2**20}))
"""


def test_conversion_peak_memory_is_bounded_by_largest_tensor(tmp_path):
    src = write_random_checkpoint(tmp_path / "ckpt", CONFIG, dtype="bfloat16", seed=3)
    total_f32_mb = sum(f.stat().st_size for f in src.glob("*.safetensors")) * 2 / 2**20
    largest_f32_mb = CONFIG["vocab_size"] * CONFIG["hidden_size"] * 4 / 2**20  # embedding / lm_head: 64 MiB
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(tmp_path / "out"), "q4f16"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    delta, estimate = result["delta_mb"], result["estimate_mb"]
    assert total_f32_mb > 350  # the whole model in f32 would be far above the bound below
    print(f"conversion peak RSS delta {delta:.0f} MB (estimate {estimate:.0f} MB); largest tensor {largest_f32_mb:.0f} MB; model {total_f32_mb:.0f} MB")
    assert delta < 3 * largest_f32_mb, (delta, largest_f32_mb, total_f32_mb)
    # the estimate that `compile --max-memory` checks bounds the measured growth, without being far above it
    assert delta <= estimate <= 3 * delta + 64, (delta, estimate)


@pytest.mark.parametrize("quant", ["q4f16", "q0f32"])
def test_planned_params_equal_the_models(quant):
    """`compile --max-memory` estimates from planned_params before building the Relax model: they must be the
    parameters the model then declares (names, shapes, dtypes), untied lm_head and norms included."""
    from tvm.target import Target

    from cli.main import DEFAULT_MODEL
    from compiler.frontend import Checkpoint, load_spec
    from compiler.model.llama import LlamaForCausalLM
    from compiler.model.weights import planned_params, weight_plan
    from compiler.quantization import get_scheme
    from compiler.quantization.assignment import SchemeAssignment

    spec = load_spec(DEFAULT_MODEL)
    scheme = get_scheme(quant)
    model = LlamaForCausalLM(spec, SchemeAssignment.uniform(scheme), "float32", Target({"kind": "llvm"}))
    _, named = model.export_tvm(spec=model.export_spec())
    with Checkpoint(DEFAULT_MODEL) as ck:
        shapes, dtypes = planned_params(ck, weight_plan(spec, SchemeAssignment.uniform(scheme)), "float32")
    assert shapes == {n: tuple(int(d) for d in p.shape) for n, p in named}
    assert dtypes == {n: p.dtype for n, p in named}
