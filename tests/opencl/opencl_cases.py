"""Builds and numpy references of the OpenCL kernel tests.

Every build goes through the project's own path: nn.Modules made of the model's ops
(QuantizedLinear / QuantizedEmbedding with compute_dtype float16, nn.RMSNorm, the SwiGLU of
compiler.model.llama.MLP) or the tiny Llama 3 model itself, compiled by
``compiler.pipeline.build_pipeline`` for the OpenCL target of snapdragon-8-gen-3 (Adreno 750) with
its host replaced by this machine's llvm -- the device part of the target is left as the registry
derives it.  Builds are cached per process.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np

SOC = "snapdragon-8-gen-3"
ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "models" / "tiny-llama3"

# the tiny model's shapes (models/tiny-llama3/config.json)
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, VOCAB = 256, 8, 2, 32, 768, 4096
QKV = (HEADS + 2 * KV_HEADS) * HEAD_DIM
PAGE_SIZE = 16  # compiler.compile.PAGE_SIZE, baked into the paged KV cache kernels


def opencl_target():
    """The SoC's OpenCL device target with this machine's llvm as host."""
    from tvm.target import Target

    from targets import load_soc

    dev = dict(load_soc(SOC).tvm_device_target("opencl"))
    dev.pop("host")
    return Target(dev, host={"kind": "llvm"})


def compile_module(module, spec: dict):
    """``module.export_tvm(spec)`` compiled with our pipeline for the OpenCL target."""
    from compiler.pipeline import build_pipeline
    from targets.backends.opencl import compile_opencl

    target = opencl_target()
    mod, _ = module.export_tvm(spec=spec)
    return compile_opencl(mod, target, relax_pipeline=build_pipeline(target))


def function(build, prefix: str) -> str:
    """The one host function called ``prefix`` or ``prefix<N>``."""
    names = [n for n in build.functions if re.fullmatch(re.escape(prefix) + r"\d*", n)]
    assert len(names) == 1, f"expected one function {prefix}*, have {sorted(build.functions)}"
    return names[0]


def _tensor(shape, dtype):
    from tvm.relax.frontend import nn

    return nn.spec.Tensor(list(shape), dtype)


# -- builds ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def linear_build(scheme_name: str, in_features: int, out_features: int, seq: str | int, residual: bool = False):
    """QuantizedLinear(in, out, scheme, "float16") on x [1, seq, in] (seq "seq_len": symbolic),
    plus a residual add (the fused o_proj/down_proj epilogue) when ``residual``."""
    from tvm.relax.frontend import nn

    from compiler.quantization import QuantizedLinear, get_scheme

    class Linear(nn.Module):
        def __init__(self):
            self.proj = QuantizedLinear(in_features, out_features, get_scheme(scheme_name), "float16")

        def forward(self, x, r):
            return r + self.proj(x)

    class Plain(Linear):
        def forward(self, x):  # type: ignore[override]
            return self.proj(x)

    x = _tensor((1, seq, in_features), "float16")
    if residual:
        spec = {"forward": {"x": x, "r": _tensor((1, seq, out_features), "float16")}}
        return compile_module(Linear(), spec)
    return compile_module(Plain(), {"forward": {"x": x}})


@functools.lru_cache(maxsize=None)
def lm_head_build(scheme_name: str):
    """The tied lm_head: QuantizedEmbedding.lm_head_forward, fp16 in, float32 logits."""
    from tvm.relax.frontend import nn

    from compiler.quantization import QuantizedEmbedding, get_scheme

    class Head(nn.Module):
        def __init__(self):
            self.embed = QuantizedEmbedding(VOCAB, HIDDEN, get_scheme(scheme_name), "float16")

        def forward(self, x):
            return self.embed.lm_head_forward(x)

    return compile_module(Head(), {"forward": {"x": _tensor((1, 1, HIDDEN), "float16")}})


@functools.lru_cache(maxsize=None)
def embedding_build(scheme_name: str):
    from tvm.relax.frontend import nn

    from compiler.quantization import QuantizedEmbedding, get_scheme

    class Embed(nn.Module):
        def __init__(self):
            self.embed = QuantizedEmbedding(VOCAB, HIDDEN, get_scheme(scheme_name), "float16")

        def forward(self, ids):
            return self.embed(ids)

    return compile_module(Embed(), {"forward": {"ids": _tensor(("seq_len",), "int32")}})


@functools.lru_cache(maxsize=None)
def rmsnorm_build(seq: str | int):
    from tvm.relax.frontend import nn

    class Norm(nn.Module):
        def __init__(self):
            self.norm = nn.RMSNorm(HIDDEN, -1, 1e-5, bias=False, dtype="float16")

        def forward(self, x):
            return self.norm(x)

    return compile_module(Norm(), {"forward": {"x": _tensor((1, seq, HIDDEN), "float16")}})


@functools.lru_cache(maxsize=None)
def swiglu_build(seq: str | int):
    """The activation part of compiler.model.llama.MLP: split(gate_up) -> silu(gate) * up."""
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn import op

    class SwiGLU(nn.Module):
        def forward(self, x):
            gate, up = op.split(x, 2, axis=-1)
            return op.silu(gate) * up

    return compile_module(SwiGLU(), {"forward": {"x": _tensor((1, seq, 2 * FFN), "float16")}})


@functools.lru_cache(maxsize=None)
def tiny_model_build(quant: str = "q4f16"):
    """The whole tiny Llama 3 (embed, prefill, decode, paged KV cache) for the OpenCL target."""
    from compiler.frontend.config import load_spec
    from compiler.model.llama import LlamaForCausalLM
    from compiler.pipeline import build_pipeline
    from compiler.quantization import get_scheme
    from compiler.quantization.assignment import SchemeAssignment
    from targets.backends.opencl import compile_opencl

    target = opencl_target()
    spec = load_spec(TINY)
    scheme = get_scheme(quant)
    model = LlamaForCausalLM(spec, SchemeAssignment.uniform(scheme), "float16", target)
    mod, _ = model.export_tvm(spec=model.export_spec())
    return compile_opencl(mod, target, relax_pipeline=build_pipeline(target)), spec


# -- numpy references ------------------------------------------------------------------------


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def assert_close_f16(out, ref, rel: float = 1e-2, what: str = ""):
    """fp16 outputs: error within ``rel`` of the reference's magnitude (fp16 has ~3 decimal digits;
    the kernels accumulate in fp32 but round inputs/outputs and some intermediates to fp16)."""
    out, ref = f32(out), f32(ref)
    assert out.shape == ref.shape, f"{what}: shape {out.shape} != {ref.shape}"
    assert np.isfinite(out).all(), f"{what}: non-finite output"
    scale = max(float(np.abs(ref).max()), 1e-3)
    err = float(np.abs(out - ref).max())
    assert err <= rel * scale, f"{what}: max error {err:.4g} > {rel} x {scale:.4g}"


def silu(x):
    return x / (1.0 + np.exp(-x))


def rms_norm(x, w, eps=1e-5):
    x = f32(x)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * f32(w)


def llama3_inv_freq(head_dim, theta, scaling) -> np.ndarray:
    """Hugging Face's llama3 RoPE frequencies (transformers' _compute_llama3_parameters)."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return inv
    factor, lf, hf = scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor
    old = scaling.original_max_position_embeddings
    wavelen = 2 * math.pi / inv
    smooth = (old / wavelen - lf) / (hf - lf)
    smoothed = (1 - smooth) * inv / factor + smooth * inv
    return np.where(wavelen < old / hf, inv, np.where(wavelen > old / lf, inv / factor, smoothed))


def apply_rope(x, positions, inv_freq) -> np.ndarray:
    """x [n, H, D] rotated (rotate-half convention) at ``positions`` [n]."""
    x = f32(x).astype(np.float64)
    ang = np.asarray(positions, np.float64)[:, None] * inv_freq[None, :]
    cos = np.cos(np.concatenate([ang, ang], -1))[:, None, :]
    sin = np.sin(np.concatenate([ang, ang], -1))[:, None, :]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return (x * cos + rot * sin).astype(np.float32)


def attention(q, k, v, sm_scale, causal=True):
    """GQA attention of q [n, Hq, D] over k, v [m, Hkv, D]; query i sits at key position
    i + m - n (the new tokens are the last n keys).  Returns (out [n, Hq, D], lse2 [n, Hq]) with
    lse in log2 units, as TVM's kernels report it."""
    q, k, v = (f32(t).astype(np.float64) for t in (q, k, v))
    n, hq, _ = q.shape
    m, hkv, _ = k.shape
    g = hq // hkv
    out = np.zeros(q.shape)
    lse = np.zeros((n, hq))
    for h in range(hq):
        s = q[:, h] @ k[:, h // g].T * sm_scale
        if causal:
            s = np.where(np.arange(m)[None, :] > np.arange(n)[:, None] + (m - n), -np.inf, s)
        mx = s.max(-1, keepdims=True)
        p = np.exp(s - mx)
        out[:, h] = (p / p.sum(-1, keepdims=True)) @ v[:, h // g]
        lse[:, h] = (np.log(p.sum(-1)) + mx[:, 0]) / math.log(2)
    return out.astype(np.float32), lse.astype(np.float32)
