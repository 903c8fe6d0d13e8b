"""The quantization room's Relax ops (compiler.quantization) through the lead's pipeline (compiler.pipeline):
every dequant matmul / gather lands on our rules, and the numbers match the scheme's own dequantization.
Skipped when those packages are not importable (they are developed alongside)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from sched_helpers import host_target, rel_err, rules_used
from tvm import relax, s_tir, tirx
from tvm.relax.frontend import nn

import compiler.pipeline as pipeline
import compiler.quantization as quant
from schedules.cpu.analysis import analyze_matmul, block_pack_layout
from compiler.quantization.embedding import QuantizedEmbedding
from compiler.quantization.linear import QuantizedLinear

N, V = 192, 300
TARGET = host_target()


class Tiny(nn.Module):
    def __init__(self, scheme, k):
        self.lin = QuantizedLinear(k, N, scheme, "float32")
        self.emb = QuantizedEmbedding(V, k, scheme, "float32")

    def prefill(self, x, r):
        return self.lin(x) + r

    def decode(self, x, r):
        return self.lin(x) + r

    def embed(self, ids):
        return self.emb(ids)

    def lm_head(self, x):
        return self.emb.lm_head_forward(x)


# K = 256: q4f16 packs planar; K = 192: sequential (docs/quantization.md)
@pytest.mark.parametrize("name,K", [("q4f16", 256), ("q4f16", 192), ("q8f16", 256), ("q0f16", 256), ("q0f32", 256)])
def test_quantized_ops_through_pipeline(name, K):
    scheme = quant.get_scheme(name)
    spec = {
        "prefill": {"x": nn.spec.Tensor([1, "seq", K], "float32"), "r": nn.spec.Tensor([1, "seq", N], "float32")},
        "decode": {"x": nn.spec.Tensor([1, 1, K], "float32"), "r": nn.spec.Tensor([1, 1, N], "float32")},
        "embed": {"ids": nn.spec.Tensor(["seq"], "int32")},
        "lm_head": {"x": nn.spec.Tensor([1, 1, K], "float32")},
    }
    mod, params = Tiny(scheme, K).export_tvm(spec=spec)
    passes = pipeline.pass_list(TARGET)
    upto = [i for i, (n, _) in enumerate(passes) if n == "ApplySchedules"][0] + 1
    with TARGET:
        scheduled = tvm.transform.Sequential([p for _, p in passes[:upto]])(mod)
    used = set()
    for _, f in scheduled.functions_items():
        if isinstance(f, tirx.PrimFunc):
            used |= rules_used(f)
    assert {"cpu.DequantGEMV", "cpu.Elementwise"} <= used, used
    assert any(u.startswith("cpu.DequantGEMM") for u in used), used
    if name == "q4f16":  # the rules see the nibble order the scheme packed (the planar fast path)
        with TARGET:
            fused = tvm.transform.Sequential([p for _, p in passes[: upto - 1]])(mod)
        layouts = set()
        for _, f in fused.functions_items():
            sch = s_tir.Schedule(f) if isinstance(f, tirx.PrimFunc) else None
            pat = sch and analyze_matmul(sch)
            if pat is not None:
                layouts.add(block_pack_layout(sch, pat.block))
        assert layouts == {(8, 16 if K % 128 == 0 else 1)}, layouts

    ex = tvm.compile(mod, TARGET, relax_pipeline=pipeline.build_pipeline(TARGET))
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    rng = np.random.default_rng(0)
    w_lin = (rng.standard_normal((N, K)) * 0.1).astype(np.float32)
    w_emb = (rng.standard_normal((V, K)) * 0.1).astype(np.float32)
    packed = {"lin": scheme.pack(w_lin), "emb": scheme.pack(w_emb)}
    args = [tvm.runtime.tensor(packed[p.split(".")[0]][p.split(".")[1]], dev) for p, _ in params]
    deq_lin = scheme.dequantize(packed["lin"]).astype(np.float64)
    deq_emb = scheme.dequantize(packed["emb"]).astype(np.float64)
    for fn, s in (("prefill", 7), ("decode", 1)):
        x = rng.standard_normal((1, s, K)).astype(np.float32)
        r = rng.standard_normal((1, s, N)).astype(np.float32)
        y = vm[fn](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(r, dev), *args).numpy()
        assert rel_err(y, x @ deq_lin.T + r) < 1e-5, fn
    ids = rng.integers(0, V, size=5).astype(np.int32)
    e = vm["embed"](tvm.runtime.tensor(ids, dev), *args).numpy()
    np.testing.assert_array_equal(e, deq_emb[ids].astype(np.float32))
    x = rng.standard_normal((1, 1, K)).astype(np.float32)
    logits = vm["lm_head"](tvm.runtime.tensor(x, dev), *args).numpy()
    assert rel_err(logits, x @ deq_emb.T) < 1e-5
