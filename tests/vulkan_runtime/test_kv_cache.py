"""TIRPagedKVCache on Vulkan: its GPU kernels (ragged/paged prefill, decode, append, merge) run
through the VM and libtvm_runtime's paged_kv_cache.cc, compared with numpy causal GQA attention."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.frontend import nn

from vkrt_helpers import HOST, lavapipe

H, KVH = 4, 2


def _build(libdir, dtype, head_dim):
    from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

    from targets.backends.vulkan import original_errors

    target = tvm.target.Target(lavapipe(), host=HOST)

    class KV(nn.Module):
        def create(self, max_batch, max_len, chunk, page, sw):
            return TIRPagedKVCache(
                attn_kind="mha", max_batch_size=max_batch, max_total_seq_len=max_len, prefill_chunk_size=chunk,
                page_size=page, support_sliding_window=sw, layer_partition=relax.ShapeExpr([0, 1]),
                num_hidden_layers=1, num_attention_heads=H, num_key_value_heads=KVH, qk_head_dim=head_dim,
                v_head_dim=head_dim, mla_original_qk_head_dim=0, mla_original_v_head_dim=0, rope_mode=RopeMode.NONE,
                rope_scale=1, rope_theta=10000, rope_scaling={}, rope_ext_factors=relax.prim_value(0),
                rotary_dim=head_dim, enable_disaggregation=False, dtype=dtype, target=target,
            )  # fmt: skip

        def attn(self, qkv, cache):
            return cache.attention_with_fused_qkv(0, qkv, H, sm_scale=head_dim**-0.5)

    none = {"param_mode": "none", "effect_mode": "none"}
    spec = {
        "create": {**{k: int for k in ("max_batch", "max_len", "chunk", "page", "sw")}, "$": none},
        "attn": {"qkv": nn.spec.Tensor([1, "s", H + 2 * KVH, head_dim], dtype),
                 "cache": nn.spec.Object(object_type=PagedKVCache), "$": none},
    }  # fmt: skip
    mod, _ = KV().export_tvm(spec=spec)
    with original_errors():
        ex = tvm.compile(mod, target=target)
    path = libdir / f"kv_{dtype}_{head_dim}.so"
    ex.export_library(str(path))
    return tvm.runtime.load_module(str(path))


def _reference(q, K, V, head_dim):
    n, T = q.shape[0], K.shape[0]
    out = np.zeros((n, H, head_dim))
    pos = np.arange(T - n, T)[:, None]
    for h in range(H):
        g = h // (H // KVH)
        s = q[:, h] @ K[:, g].T * head_dim**-0.5
        s = np.where(np.arange(T)[None, :] <= pos, s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        out[:, h] = (p / p.sum(-1, keepdims=True)) @ V[:, g]
    return out


@pytest.mark.parametrize("dtype", ["float16"])
def test_paged_kv_cache_prefill_decode(dev, vkb, libdir, dtype):
    head_dim, page = 32, 16
    lib = _build(libdir, dtype, head_dim)
    vm = relax.VirtualMachine(lib, dev)
    S = tvm.runtime.ShapeTuple
    cache = vm["create"](S([1]), S([128]), S([32]), S([page]), S([0]))
    f = tvm.get_global_func
    f("vm.builtin.kv_state_add_sequence")(cache, 0)
    rng = np.random.default_rng(0)
    ks, vs = [], []
    tol = 1e-5 if dtype == "float32" else 3e-3
    # first prefill, prefills that cross page boundaries on top of a prefix, decode steps
    for n in (13, 7, 1, 1, 20, 1, 30):
        qkv = rng.standard_normal((1, n, H + 2 * KVH, head_dim)).astype(dtype)
        f("vm.builtin.kv_state_begin_forward")(cache, S([0]), S([n]))
        out = vm["attn"](tvm.runtime.tensor(qkv, dev), cache).numpy().astype("float64")
        f("vm.builtin.kv_state_end_forward")(cache)
        x = qkv[0].astype("float64")
        ks.append(x[:, H : H + KVH])
        vs.append(x[:, H + KVH :])
        ref = _reference(x[:, :H], np.concatenate(ks), np.concatenate(vs), head_dim)
        np.testing.assert_allclose(out.reshape(ref.shape), ref, rtol=tol, atol=tol, err_msg=f"n={n}")
    assert int(f("vm.builtin.attention_kv_cache_get_total_sequence_length")(cache)) == sum(len(k) for k in ks)


def test_merge_state_race_with_small_subgroups(dev, vkb, libdir):
    """TVM's merge_state_inplace kernel (run when a prefill has a prefix in the cache) has bdx =
    head_dim / 4 threads read S[row] and then all write it back with no barrier: correct only when
    those bdx threads run in one subgroup (lockstep).  head_dim 64 -> bdx 16 > lavapipe's 8.  The
    compiler builds GPU caches with compiler.model.kv_kernels.merge_state_inplace instead, which
    must be right on any subgroup size; TVM's kernel is run on the same states for comparison."""
    from tvm.relax.frontend.nn.llm._decode_kernels import _merge_state_inplace

    from compiler.model.kv_kernels import merge_state_inplace
    from vulkan_support import numpy_merge, run_merge

    head_dim = 64
    outputs = {}
    for name, kernel in (("ours", merge_state_inplace), ("tvm", _merge_state_inplace)):
        inputs, outputs[name] = run_merge(kernel, H, head_dim, vkb, dev, libdir / f"merge64_{name}.so", rows=3, seed=0)
    ref_v, ref_s = numpy_merge(*inputs)
    np.testing.assert_allclose(outputs["ours"][0], ref_v, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs["ours"][1], ref_s, rtol=1e-5, atol=1e-5)
    tvm_ok = np.allclose(outputs["tvm"][0], ref_v, atol=1e-5)
    if dev.warp_size >= head_dim // 4:
        assert tvm_ok
    elif "llvmpipe" in dev.device_name:
        # lavapipe runs a workgroup's subgroups one after another, so the race always loses: the
        # later subgroups read the S the first one already merged (every (row, head) is wrong)
        assert not tvm_ok, f"TVM's merge_state_inplace no longer races with head_dim {head_dim} on lavapipe"
