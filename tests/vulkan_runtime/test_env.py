"""The plugin in fresh processes: runtime-only TVM, staging copies, device selection, validation."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import tvm
import tvm.s_tir.dlight as dl
from tvm import te
from tvm.relax.frontend import nn

from vkrt_helpers import build_and_load, lavapipe, run_script


@pytest.fixture(scope="module")
def exported(dev, vkb, libdir):
    """A TIR kernel library and a Relax VM library, exported for the child processes."""
    n = te.var("n")
    a = te.placeholder((n,), "float32", name="a")
    b = te.compute((n,), lambda i: a[i] * 2.0 + 1.0, name="b")
    c = te.compute((n,), lambda i: b[n - 1 - i] * b[i], name="c")
    tir_path = libdir / "env_tir.so"
    build_and_load(tvm.IRModule({"main": te.create_prim_func([a, c])}), lavapipe(), tir_path, [dl.gpu.Fallback()])

    class Block(nn.Module):
        def __init__(self):
            self.proj = nn.Linear(16, 24, bias=False)
            self.norm = nn.RMSNorm(24, axes=-1, bias=False)

        def forward(self, x):
            return nn.op.softmax(self.norm(self.proj(x)), axis=-1)

    mod, _ = Block().export_tvm(spec={"forward": {"x": nn.spec.Tensor((1, "n", 16), "float32")}})
    ex = tvm.compile(mod, target=tvm.target.Target(lavapipe(), host={"kind": "llvm"}))
    vm_path = libdir / "env_vm.so"
    ex.export_library(str(vm_path))
    return str(tir_path), str(vm_path)


CHILD = """
import json, os, numpy as np, tvm
import tvm.runtime.vm
from runtime_stubs import vulkan as vkrt
vkrt.load_plugin()
dev = tvm.runtime.vulkan(0)
res = {"exist": bool(dev.exist), "runtime_only": tvm.base._RUNTIME_ONLY}
if dev.exist:
    res["name"] = dev.device_name
    lib = tvm.runtime.load_module(TIR)
    a = np.linspace(-1, 1, 1001).astype("float32")
    tc = tvm.runtime.empty((1001,), "float32", dev)
    lib["main"](tvm.runtime.tensor(a, dev), tc)
    b = a * 2 + 1
    res["tir_err"] = float(np.abs(tc.numpy() - b[::-1] * b).max())
    vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(VM), dev)
    rng = np.random.default_rng(0)
    x, w, g = rng.standard_normal((1, 5, 16)), rng.standard_normal((24, 16)), rng.standard_normal(24)
    out = vm["forward"](*(tvm.runtime.tensor(v.astype("float32"), dev) for v in (x, w, g))).numpy()
    h = x @ w.T
    h = h / np.sqrt(np.mean(h * h, -1, keepdims=True) + 1e-5) * g
    e = np.exp(h - h.max(-1, keepdims=True))
    res["vm_err"] = float(np.abs(out - e / e.sum(-1, keepdims=True)).max())
    big = np.arange(3 << 20, dtype=np.int32)
    res["big_ok"] = bool((tvm.runtime.tensor(big, dev).numpy() == big).all())
    info = vkrt.device_info()
    res["mapped"] = bool(info["host_mapped_storage"])
    res["validation_errors"] = vkrt.validation_error_count()
else:
    res["reason"] = vkrt.unavailable_reason()
print("RESULT " + json.dumps(res))
"""


def _child(exported, env=None):
    tir, vm = exported
    p = run_script(f"TIR, VM = {tir!r}, {vm!r}\n" + textwrap.dedent(CHILD), env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, f"child failed:\n{p.stdout}\n{p.stderr[-4000:]}"
    return json.loads(lines[-1][7:]), p.stderr


def _check_ok(res):
    assert res["exist"], res
    assert res["tir_err"] < 1e-5 and res["vm_err"] < 1e-5 and res["big_ok"], res


def test_runtime_only_tvm(exported):
    """TVM_USE_RUNTIME_LIB=1: only libtvm_runtime + libtvm_ffi (no compiler) in the process."""
    res, _ = _child(exported, {"TVM_USE_RUNTIME_LIB": "1"})
    assert res["runtime_only"]
    _check_ok(res)


def test_staging_copies(exported):
    """LLAMA_AOT_VULKAN_MAPPED=0: storage buffers are not host-mapped; copies use a staging buffer."""
    res, _ = _child(exported, {"LLAMA_AOT_VULKAN_MAPPED": "0"})
    _check_ok(res)
    assert res["mapped"] is False


def test_device_selection(dev, exported):
    res, _ = _child(exported, {"LLAMA_AOT_VULKAN_DEVICE": dev.device_name.split()[0].upper()})
    _check_ok(res)
    assert res["name"] == dev.device_name
    res, _ = _child(exported, {"LLAMA_AOT_VULKAN_DEVICE": "0"})
    assert res["name"] == dev.device_name
    res, _ = _child(exported, {"LLAMA_AOT_VULKAN_DEVICE": "no-such-gpu"})
    assert not res["exist"]
    assert "needs a Vulkan driver" in res["reason"] and "no-such-gpu" in res["reason"]


def test_validation_layer_is_clean(exported):
    """Everything above under VK_LAYER_KHRONOS_validation (skipped when it is not installed)."""
    import glob

    if not glob.glob("/usr/share/vulkan/explicit_layer.d/*khronos_validation*"):
        pytest.skip("needs VK_LAYER_KHRONOS_validation (apt-get install vulkan-validationlayers)")
    for env in ({}, {"LLAMA_AOT_VULKAN_MAPPED": "0"}):
        res, stderr = _child(exported, {"LLAMA_AOT_VULKAN_VALIDATION": "1", **env})
        _check_ok(res)
        assert res["validation_errors"] == 0, stderr[-4000:]
        assert "[llama-aot vulkan ERROR]" not in stderr, stderr[-4000:]


def test_no_driver_reason_in_child(exported):
    """Without any ICD the plugin still loads: vulkan(0) does not exist and the reason says why."""
    res, _ = _child(exported, {"VK_ICD_FILENAMES": "/nonexistent.json", "VK_DRIVER_FILES": "/nonexistent.json"})
    assert not res["exist"]
    assert res["reason"].startswith("needs a Vulkan driver (mesa-vulkan-drivers)")


def test_loaded_module_payload_round_trip(dev, exported):
    """A loaded "vulkan" module keeps its payload; the loader rebuilds a working module from it."""
    from targets.backends.vulkan import parse_vulkan_module

    tir, _ = exported
    lib = tvm.runtime.load_module(tir)
    (vmod,) = lib.imports
    assert vmod.kind == "vulkan"
    payload = bytes(vmod.get_function("__llama_aot_vulkan_payload")())
    shaders = parse_vulkan_module(payload)
    assert shaders and all(name in vmod.inspect_source() for name in shaders)
    again = tvm.get_global_func("ffi.Module.load_from_bytes.vulkan")(payload)
    (name,) = shaders  # the elementwise producer is inlined: one kernel (a, c, n)
    a = np.linspace(-1, 1, 100).astype("float32")
    c = tvm.runtime.empty((100,), "float32", dev)
    again[name](tvm.runtime.tensor(a, dev), c, 100, 1, 256)
    b = a * 2 + 1
    np.testing.assert_allclose(c.numpy(), b[::-1] * b, rtol=1e-6)
    with pytest.raises(Exception, match="truncated|corrupt"):
        tvm.get_global_func("ffi.Module.load_from_bytes.vulkan")(payload[:-10])
