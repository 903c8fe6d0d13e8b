"""Independent references for end-to-end checks: transformers' LlamaForCausalLM on given weights
(``reference_model``: evaluation/reference.py, which ``llama-aot eval`` scores checkpoints with)."""

from __future__ import annotations

import contextlib

from pathlib import Path

import numpy as np
import torch

from evaluation.reference import reference_model  # noqa: F401  (re-exported for the tests)


def reference_logits(model, ids: list[int]) -> np.ndarray:
    """Logits [len(ids), vocab] of one causal forward pass (float32)."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=False)
    return out.logits[0].float().numpy()


def int8_reference(model, ids: list[int], trials: int = 3, lm_head: bool = True) -> tuple[np.ndarray, float]:
    """Logits of the int8-activation reference (``int8_activations``) and its own noise floor: the largest
    change of any logit when every rounded input is perturbed by 1e-6 relative (``trials`` draws).

    Why: rounding to 8 bits is discontinuous, so a float-order difference of one ulp upstream can move
    an input across a rounding boundary, and the change propagates to every later layer and position.
    Any two correct implementations differ by about this much; a wrong kernel differs by far more."""
    with int8_activations(model, lm_head=lm_head):
        ref = reference_logits(model, ids)
    spread = 0.0
    for seed in range(trials):
        with int8_activations(model, perturb=1e-6, seed=seed, lm_head=lm_head):
            spread = max(spread, float(np.abs(reference_logits(model, ids) - ref).max()))
    return ref, spread


def dequantized_hf_weights(package_dir: Path) -> dict[str, np.ndarray]:
    """Read a package's packed weights back, dequantize with numpy and split fused projections to HF names."""
    from compiler.quantization import get_scheme
    from runtime_stubs.package_format import read_manifest, read_package_config

    cfg = read_package_config(package_dir)
    model = cfg["model"]
    modules = cfg["quantization"]["modules"]  # the scheme of every quantized module (mixed or not)
    arrays: dict[str, dict[str, np.ndarray]] = {}
    for e in read_manifest(package_dir):
        raw = np.fromfile(Path(package_dir) / "params" / e["file"], dtype=e["dtype"], count=int(np.prod(e["shape"])), offset=e["offset"])
        prefix, suffix = e["name"].rsplit(".", 1)
        arrays.setdefault(prefix, {})[suffix] = raw.reshape(e["shape"])
    hd = model["head_dim"]
    out: dict[str, np.ndarray] = {}
    for prefix, packed in arrays.items():
        if prefix.endswith("layernorm") or prefix == "norm":
            w = packed["weight"].astype(np.float32)
        else:
            w = get_scheme(modules[prefix]).dequantize(packed)
        if prefix == "embed_tokens":
            out["model.embed_tokens.weight"] = w
        elif prefix == "lm_head":
            out["lm_head.weight"] = w
        elif prefix == "norm":
            out["model.norm.weight"] = w
        else:
            i = int(prefix.split(".")[1])
            layer = model["layers"][i]
            base = f"model.layers.{i}"
            if prefix.endswith("qkv_proj"):
                nq, nkv = layer["num_attention_heads"] * hd, layer["num_key_value_heads"] * hd
                out[f"{base}.self_attn.q_proj.weight"] = w[:nq]
                out[f"{base}.self_attn.k_proj.weight"] = w[nq : nq + nkv]
                out[f"{base}.self_attn.v_proj.weight"] = w[nq + nkv :]
            elif prefix.endswith("o_proj"):
                out[f"{base}.self_attn.o_proj.weight"] = w
            elif prefix.endswith("gate_up_proj"):
                f = layer["intermediate_size"]
                out[f"{base}.mlp.gate_proj.weight"] = w[:f]
                out[f"{base}.mlp.up_proj.weight"] = w[f:]
            elif prefix.endswith("down_proj"):
                out[f"{base}.mlp.down_proj.weight"] = w
            else:
                out[f"{base}.{prefix.split('.', 2)[2]}.weight"] = w
    return out


def _round_int8(x):
    """What the int8-activation kernels do to a projection's input (schedules/cpu/int8_gemm.py, the
    normative numpy definition is ``numpy_reference`` there): per row and group of 32, d = max|x| / 127,
    x -> nearbyint(x / d) * d."""
    import torch

    g = x.reshape(*x.shape[:-1], -1, 32)
    d = g.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    return (torch.round(g * inv) * d).reshape(x.shape)  # torch.round: half to even, as nearbyint


@contextlib.contextmanager
def int8_activations(model, enabled: bool = True, perturb: float = 0.0, seed: int = 0, lm_head: bool = True):
    """While active (and ``enabled``), the reference rounds what a package with
    ``"projection_activations": "int8_group32"`` rounds: the input of every q4 projection with a
    multiple of 16 outputs and of the lm_head (when ``lm_head``, i.e. it is q4 too, and the vocabulary is a
    multiple of 16), at every position (prompt and decoded).
    ``perturb``: scale each input by (1 + perturb * N(0, 1)) before rounding (see ``int8_reference``)."""
    mods = [
        mod
        for layer in model.model.layers
        for mod in (*[getattr(layer.self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")],
                    *[getattr(layer.mlp, p) for p in ("gate_proj", "up_proj", "down_proj")])
    ]
    # the package's fused qkv / gate_up weights have the summed widths
    fused = {id(m): m.out_features for m in mods}
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        for group in ((a.q_proj, a.k_proj, a.v_proj), (m.gate_proj, m.up_proj)):
            for mod in group:
                fused[id(mod)] = sum(x.out_features for x in group)
    mods = [m for m in mods if fused[id(m)] % 16 == 0]
    if lm_head and model.lm_head.out_features % 16 == 0:
        mods.append(model.lm_head)
    gen = torch.Generator().manual_seed(seed)

    def hook(_m, args):
        x = args[0]
        if perturb:
            x = x * (1 + perturb * torch.randn(x.shape, generator=gen))
        return (_round_int8(x),)

    hooks = [m.register_forward_pre_hook(hook) for m in mods] if enabled else []
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
