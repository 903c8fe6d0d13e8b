"""Relax models on Vulkan through the VM: nn.Module -> tvm.compile (dlight GPU rules of the default
pipeline) -> export_library -> load_module -> tvm.runtime.vm.VirtualMachine(lib, vulkan(0))."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend import nn

from vkrt_helpers import HOST, lavapipe

RNG = np.random.default_rng(0)


def _rmsnorm(h, g, eps=1e-5):
    return h / np.sqrt(np.mean(h * h, -1, keepdims=True) + eps) * g


def _softmax(h):
    e = np.exp(h - h.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _compile(mod, path, target=None):
    from targets.backends.vulkan import original_errors

    with original_errors():
        ex = tvm.compile(mod, target=tvm.target.Target(target or lavapipe(), host=HOST))
    ex.export_library(str(path))
    return tvm.runtime.load_module(str(path))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_matmul_rmsnorm_softmax(dev, vkb, libdir, dtype):
    class Block(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(64, 128, bias=False, dtype=dtype)
            self.norm = nn.RMSNorm(128, axes=-1, bias=False, dtype=dtype)

        def forward(self, x):
            h = self.norm(self.proj(x))
            return nn.op.softmax(h.astype("float32"), axis=-1), nn.op.silu(h)

    mod, params = Block().export_tvm(spec={"forward": {"x": nn.spec.Tensor((1, "n", 64), dtype)}})
    assert [name for name, _ in params] == ["proj.weight", "norm.weight"]
    lib = _compile(mod, libdir / f"block_{dtype}.so")
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)
    w = (RNG.standard_normal((128, 64)) * 0.1).astype(dtype)
    g = (1 + 0.1 * RNG.standard_normal(128)).astype(dtype)
    tw, tg = tvm.runtime.tensor(w, dev), tvm.runtime.tensor(g, dev)
    tol = 1e-5 if dtype == "float32" else 2e-2
    for n in (7, 1, 33):
        x = RNG.standard_normal((1, n, 64)).astype(dtype)
        probs, act = vm["forward"](tvm.runtime.tensor(x, dev), tw, tg)
        h = _rmsnorm(x.astype("float64") @ w.astype("float64").T, g.astype("float64"))
        np.testing.assert_allclose(probs.numpy(), _softmax(h), rtol=tol, atol=tol)
        np.testing.assert_allclose(act.numpy().astype("float64"), h / (1 + np.exp(-h)), rtol=tol, atol=tol * 2)


def test_mlp_with_packed_params_and_take(dev, vkb, libdir):
    """An embedding lookup + gated MLP with packed params, as the Llama model passes them."""

    class MLP(nn.Module):
        def __init__(self):
            self.embed = nn.Embedding(100, 32)
            self.gate = nn.Linear(32, 48, bias=False)
            self.up = nn.Linear(32, 48, bias=False)
            self.down = nn.Linear(48, 32, bias=False)

        def forward(self, ids):
            x = self.embed(ids)
            return self.down(nn.op.silu(self.gate(x)) * self.up(x))

    spec = {"forward": {"ids": nn.spec.Tensor(["n"], "int32"), "$": {"param_mode": "packed", "effect_mode": "none"}}}
    mod, params = MLP().export_tvm(spec=spec)
    lib = _compile(mod, libdir / "mlp.so")
    vm = tvm.runtime.vm.VirtualMachine(lib, dev)
    arrays = [(RNG.standard_normal([int(d) for d in p.shape]) * 0.2).astype("float32") for _, p in params]
    tparams = [tvm.runtime.tensor(a, dev) for a in arrays]
    emb, gate, up, down = (a.astype("float64") for a in arrays)
    for ids in ([3, 99, 0, 41, 41], [7]):
        out = vm["forward"](tvm.runtime.tensor(np.array(ids, "int32"), dev), tparams).numpy()
        x = emb[ids]
        a = x @ gate.T
        ref = ((a / (1 + np.exp(-a))) * (x @ up.T)) @ down.T
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_vm_on_device_target_dict(vkrt, dev, vkb, libdir):
    """Compile for the target that the runtime derives from the device itself."""

    class Tiny(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(32, 16, bias=False)

        def forward(self, x):
            return nn.op.softmax(self.proj(x), axis=-1)

    mod, _ = Tiny().export_tvm(spec={"forward": {"x": nn.spec.Tensor(["n", 32], "float32")}})
    lib = _compile(mod, libdir / "tiny_devtarget.so", target=vkrt.device_target(0))
    vm = relax.VirtualMachine(lib, dev)
    w = RNG.standard_normal((16, 32)).astype("float32")
    x = RNG.standard_normal((5, 32)).astype("float32")
    out = vm["forward"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev)).numpy()
    np.testing.assert_allclose(out, _softmax(x.astype("float64") @ w.T), rtol=1e-5, atol=1e-6)
