"""compiler/model/fast_math.py: the polynomial exp2 and the SwiGLU it feeds, against numpy / torch."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import s_tir, te
from tvm.target import Target, codegen

from compiler.model.fast_math import exp2_poly, silu_mul_te

HOST = Target({"kind": "llvm", "mcpu": codegen.llvm_get_system_cpu()})


def _build(fn, *shapes):
    args = [te.placeholder(s, "float32", name=f"a{i}") for i, s in enumerate(shapes)]
    out = fn(*args)
    sch = s_tir.Schedule(te.create_prim_func([*args, out]))
    block = sch.get_sblock(out.op.name)
    loops = sch.get_loops(block)
    _, vec = sch.split(loops[-1], [None, 16])
    sch.vectorize(vec)  # the vector form is what the CPU kernels run
    return tvm.compile(sch.mod, target=HOST)["main"]


def test_exp2_poly_matches_numpy():
    x = np.concatenate([np.linspace(-126, 126, 20001), [-0.5, 0.5, 0.49999997, -1e-8, 0.0, 1e-8]])
    x = np.resize(x, (x.size + 15) // 16 * 16 + 16).astype(np.float32)
    x[-4:] = [-1000, -127, 127, 1000]  # clamped: finite stand-ins for 0 and infinity
    f = _build(lambda a: te.compute(a.shape, lambda i: exp2_poly(a[i]), name="e"), x.shape)
    out = tvm.runtime.tensor(np.zeros_like(x))
    f(tvm.runtime.tensor(x), out)
    got = out.numpy()
    ref = np.exp2(x[:-4].astype(np.float64))
    assert (np.abs(got[:-4] - ref) / ref).max() < 4e-7  # a few float32 ulps
    assert list(got[-4:]) == [np.float32(2.0**-126)] * 2 + [np.float32(2.0**126)] * 2


def test_silu_mul_matches_torch():
    ffn = 64
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 2 * ffn)) * 8).astype(np.float32)
    x[0, :8] = [-200, -100, -88, -30, 0, 30, 88, 200]
    f = _build(silu_mul_te(ffn), x.shape)
    out = tvm.runtime.tensor(np.zeros((3, ffn), np.float32))
    f(tvm.runtime.tensor(x), out)
    t = torch.tensor(x, dtype=torch.float64)
    ref = (torch.nn.functional.silu(t[:, :ffn]) * t[:, ffn:]).numpy()
    # relative error ~1e-7 * |gate| (the rounding of gate * log2 e), absolute floor for outputs near 0
    assert np.all(np.abs(out.numpy() - ref) <= 1e-6 * np.abs(ref) * (1 + np.abs(x[:, :ffn])) + 1e-30)
