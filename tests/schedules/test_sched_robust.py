"""The rules never raise and never mis-schedule functions they were not written for: a mixed Relax module
(softmax, sum, transposes, activation x activation matmul, f32 matmul with a transposed parameter, ...)
goes through the pipeline with cpu_rules and matches numpy; the TIRPagedKVCache CPU kernels are left alone."""

from __future__ import annotations

import numpy as np
import tvm
from sched_helpers import fuse_and_schedule, host_target, rel_err, schedule_module
from tvm import relax, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op

from schedules import cpu_rules

TARGET = host_target()
D, K, N = 64, 96, 80


class Mixed(nn.Module):
    def __init__(self):
        self.w = nn.Parameter((N, K), "float32")  # used as x @ w.T (matmul + transpose, fused by FuseOps)
        self.wt = nn.Parameter((K, N), "float32")  # used as x @ wt (weight indexed [k, n])

    def forward(self, x, q, kk):
        a = op.matmul(x, op.permute_dims(self.w, [1, 0]))
        b = op.matmul(x, self.wt)
        att = op.softmax(op.matmul(q, op.permute_dims(kk, [0, 2, 1])) * 0.125, axis=-1)  # [1, s, t]
        red = op.sum(op.exp(a * 0.01), axis=-1)  # [1, s]: a reduction with an elementwise producer
        return a, b, att, red


def test_mixed_module_matches_numpy():
    spec = {
        "forward": {
            "x": nn.spec.Tensor((1, "s", K), "float32"),
            "q": nn.spec.Tensor((1, "s", D), "float32"),
            "kk": nn.spec.Tensor((1, "t", D), "float32"),
        }
    }
    mod, _ = Mixed().export_tvm(spec=spec)
    mod = fuse_and_schedule(mod, TARGET)
    ex = tvm.compile(mod, target=TARGET)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(ex, dev)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((N, K)).astype(np.float32)
    wt = rng.standard_normal((K, N)).astype(np.float32)
    for s, t in ((1, 5), (6, 9)):
        x = rng.standard_normal((1, s, K)).astype(np.float32)
        q = rng.standard_normal((1, s, D)).astype(np.float32)
        kk = rng.standard_normal((1, t, D)).astype(np.float32)
        a, b, att, red = vm["forward"](*[tvm.runtime.tensor(v, dev) for v in (x, q, kk, w, wt)])
        ra = x @ w.T
        assert rel_err(a.numpy(), ra) < 1e-5
        assert rel_err(b.numpy(), x @ wt) < 1e-5
        logits = (q @ kk.transpose(0, 2, 1)) * 0.125
        e = np.exp(logits - logits.max(-1, keepdims=True))
        assert rel_err(att.numpy(), e / e.sum(-1, keepdims=True)) < 1e-5
        assert rel_err(red.numpy(), np.exp(ra.astype(np.float64) * 0.01).sum(-1)) < 1e-5


def test_kv_cache_kernels_untouched_and_rules_do_not_raise():
    """The paged-KV-cache CPU kernels come marked tirx.is_scheduled (ApplyDefaultSchedule skips them); calling
    every rule on them directly must not raise either."""
    from tvm.relax.frontend.nn.llm import kv_cache as kvc

    funcs = [
        kvc._attention_decode_cpu(2, 4, 32, "float32", False, {}),
        kvc._attention_prefill_cpu(2, 4, 32, "float32", False, {}),
        kvc._attention_prefill_ragged_cpu(2, 4, 32, 32, "float32", {}),
        kvc._merge_state_inplace_cpu("float32"),
    ]
    rules = cpu_rules(TARGET)
    for f in funcs:
        for rule in rules:
            rule.apply(f, TARGET, False)  # must not raise; result unused
    mod = tvm.IRModule({f"f{i}": f for i, f in enumerate(funcs)})
    out = schedule_module(mod, TARGET)
    for i, f in enumerate(funcs):
        assert out[f"f{i}"].same_as(f) or "tirx.is_scheduled" in out[f"f{i}"].attrs
        assert isinstance(out[f"f{i}"], tirx.PrimFunc)
