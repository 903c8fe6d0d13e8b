"""Embedding gather with fused dequant, RMSNorm, SwiGLU / residual add: through cpu_rules, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from sched_helpers import fuse_and_schedule, build_func, host_target, loop_kinds, rel_err, rules_used, schedule_module
from tvm import relax
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from schedules.reference import embedding_func, pack_weight

TARGET = host_target()
H = 256


@pytest.mark.parametrize("scheme", ["q4f16", "q4f16p", "q8f16", "q0f16", "q0f32"])
def test_embedding_gather(scheme):
    vocab = 300
    mod, lib = build_func(embedding_func(scheme, vocab, H), TARGET)
    assert rules_used(mod["main"]) == {"cpu.Elementwise"}
    assert "vectorized" in loop_kinds(mod["main"])
    rng = np.random.default_rng(0)
    packed, deq = pack_weight(scheme, (rng.standard_normal((vocab, H)) * 0.1).astype(np.float32))
    dev = tvm.cpu()
    for s in (1, 9):
        ids = rng.integers(0, vocab, size=s).astype(np.int32)
        out = tvm.runtime.tensor(np.zeros((s, H), np.float32), dev)
        lib(tvm.runtime.tensor(ids, dev), *[tvm.runtime.tensor(a, dev) for a in packed], out)
        np.testing.assert_array_equal(out.numpy(), deq[ids])  # dequantization is exact in float32


class Block(nn.Module):
    """The non-matmul work of a decoder layer: residual add, RMSNorm, SwiGLU."""

    def __init__(self):
        self.norm = nn.RMSNorm(H, -1, 1e-5, bias=False)

    def forward(self, x, r, g, u):
        h = x + r
        return h, self.norm(h), op.silu(g) * u


@pytest.mark.parametrize("seq", ["seq", 1])
def test_rmsnorm_swiglu_add(seq):
    """Prefill (symbolic rows: parallel over rows) and decode (one static row: vectorized, serial)."""
    spec = {"forward": {n: nn.spec.Tensor((1, seq, H if n in "xr" else 4 * H), "float32") for n in "xrgu"}}
    mod, params = Block().export_tvm(spec=spec)
    mod = fuse_and_schedule(mod, TARGET)
    rules = {}
    for gv, f in mod.functions_items():
        if isinstance(f, tvm.tirx.PrimFunc):
            rules[gv.name_hint] = rules_used(f)
            assert "vectorized" in loop_kinds(f), gv.name_hint
            if seq == "seq":
                assert "parallel" in loop_kinds(f), gv.name_hint
    assert any("cpu.RowReduction" in r for r in rules.values()), rules
    assert any("cpu.Elementwise" in r for r in rules.values()), rules
    ex = tvm.compile(mod, target=TARGET)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    rng = np.random.default_rng(1)
    w = (rng.random(H) + 0.5).astype(np.float32)
    for s in (1, 7) if seq == "seq" else (1,):
        x, r = (rng.standard_normal((1, s, H)).astype(np.float32) for _ in range(2))
        g, u = (rng.standard_normal((1, s, 4 * H)).astype(np.float32) for _ in range(2))
        outs = vm["forward"](*[tvm.runtime.tensor(a, dev) for a in (x, r, g, u, w)])
        h = x + r
        norm = h / np.sqrt((h.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * w
        sw = g / (1 + np.exp(-g.astype(np.float64))) * u
        np.testing.assert_allclose(outs[0].numpy(), h, rtol=0, atol=0)
        assert rel_err(outs[1].numpy(), norm) < 1e-5
        assert rel_err(outs[2].numpy(), sw) < 1e-5
