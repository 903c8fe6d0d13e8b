"""What structured pruning removes and what it costs: whole KV groups (a KV head with its query heads), FFN
channels in blocks of the quantization group size, whole layers; the parameter counts they carry; choosing units
under a parameter budget; cutting a checkpoint's tensors to the kept units (docs/pruned-config.md's format)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from runtime_stubs.errors import LlamaAotError

GROUP_SIZE = 32  # FFN widths stay multiples of the quantization group (q4f16 / q8f16 group K by 32)


@dataclass(frozen=True)
class LayerDims:
    heads: int
    kv_heads: int
    ffn: int

    @property
    def q_per_kv(self) -> int:
        return self.heads // self.kv_heads


@dataclass(frozen=True)
class Dims:
    """The facts of a checkpoint that parameter counts depend on (per-layer shapes included)."""

    hidden: int
    head_dim: int
    vocab: int
    tied: bool
    layers: tuple[LayerDims, ...]

    @staticmethod
    def from_config(raw: dict) -> Dims:
        h = int(raw["hidden_size"])
        nh, nkv = int(raw["num_attention_heads"]), int(raw.get("num_key_value_heads") or raw["num_attention_heads"])
        hd = int(raw.get("head_dim") or h // nh)
        shapes = raw.get("layer_shapes") or [{}] * int(raw["num_hidden_layers"])
        layers = tuple(LayerDims(int(s.get("num_attention_heads", nh)), int(s.get("num_key_value_heads", nkv)),
                                 int(s.get("intermediate_size", raw["intermediate_size"]))) for s in shapes)
        return Dims(h, hd, int(raw["vocab_size"]), bool(raw.get("tie_word_embeddings", False)), layers)

    def group_params(self, layer: int) -> int:
        """q and o rows of a KV head's query heads, plus its k and v rows."""
        return (2 * self.layers[layer].q_per_kv + 2) * self.head_dim * self.hidden

    @property
    def channel_params(self) -> int:
        return 3 * self.hidden  # gate and up rows, a down column

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def non_embedding_params(self, keep: list[LayerKeep] | None = None) -> int:
        """Every parameter but the embedding and lm_head: projections and norms (``keep``: of the pruned model)."""
        keep = keep if keep is not None else full_structure(self)
        return self.hidden + sum(2 * self.hidden + len(k.kv_groups) * self.group_params(k.source)
                                 + len(k.ffn) * self.channel_params for k in keep)


@dataclass(frozen=True)
class LayerKeep:
    """One layer of the pruned model: which original layer, KV groups and FFN channels it keeps (sorted)."""

    source: int
    kv_groups: tuple[int, ...]
    ffn: tuple[int, ...]


def full_structure(dims: Dims) -> list[LayerKeep]:
    return [LayerKeep(i, tuple(range(d.kv_heads)), tuple(range(d.ffn))) for i, d in enumerate(dims.layers)]


def minimum_params(dims: Dims) -> int:
    """The smallest model the format allows: one layer with one KV group and one block of FFN channels."""
    i = min(range(len(dims.layers)), key=dims.group_params)
    return dims.hidden + 2 * dims.hidden + dims.group_params(i) + min(GROUP_SIZE, dims.layers[i].ffn) * dims.channel_params


def select(dims: Dims, layers: list[int], group_scores: list[np.ndarray], channel_scores: list[np.ndarray],
           budget: int) -> list[LayerKeep]:
    """Keep, in the given ``layers``, the highest-scoring units whose parameters fit ``budget`` (non-embedding).

    Units are KV groups and blocks of GROUP_SIZE FFN channels (a layer's channels sorted by score, a block's
    score the mean of its channels'); every kept layer keeps at least its best group and best block. Scores must
    be comparable across unit kinds (keep probabilities, or importance per parameter)."""
    if not layers:
        raise LlamaAotError("every layer was pruned; raise --target-params")
    base, units, keep_g, keep_c = dims.hidden, [], {}, {}
    for i in layers:
        g_order = np.argsort(-group_scores[i], kind="stable")
        c_order = np.argsort(-channel_scores[i], kind="stable")
        blocks = [c_order[s : s + GROUP_SIZE] for s in range(0, len(c_order) - GROUP_SIZE + 1, GROUP_SIZE)]
        if not blocks:  # an FFN narrower than one block stays whole
            blocks = [c_order]
        keep_g[i], keep_c[i] = [int(g_order[0])], list(blocks[0])
        base += 2 * dims.hidden + dims.group_params(i) + len(blocks[0]) * dims.channel_params
        units += [(-float(group_scores[i][g]), i, 0, n, [int(g)], dims.group_params(i)) for n, g in enumerate(g_order[1:])]
        units += [(-float(channel_scores[i][b].mean()), i, 1, n, list(b), len(b) * dims.channel_params)
                  for n, b in enumerate(blocks[1:])]
    if base > budget:
        raise LlamaAotError(f"--target-params asks for {budget:,} non-embedding parameters, below the {base:,} of "
                            f"one KV group and {GROUP_SIZE} FFN channels in each of the {len(layers)} kept layers; "
                            "raise --target-params")
    used = base
    for _, i, kind, _, members, cost in sorted(units, key=lambda u: u[:4]):
        if used + cost <= budget:
            (keep_g if kind == 0 else keep_c)[i].extend(int(m) for m in members)
            used += cost
    return [LayerKeep(i, tuple(sorted(keep_g[i])), tuple(sorted(keep_c[i]))) for i in layers]


def cut_weights(state: dict, dims: Dims, keep: list[LayerKeep], group_scale=None, channel_scale=None,
                layer_scale=None) -> dict:
    """The pruned model's tensors (HF names, layers renumbered 0..n-1). The optional scales (per original layer:
    a gate value per KV group / FFN channel, one per layer) are folded into o_proj's and down_proj's columns, so the
    cut model computes what the gated one did."""
    import torch

    hd = dims.head_dim
    out = {k: v for k, v in state.items() if not k.startswith("model.layers.")}
    for new, k in enumerate(keep):
        src, d = f"model.layers.{k.source}.", f"model.layers.{new}."
        per_group = dims.layers[k.source].q_per_kv * hd  # q rows (o columns) of one KV group
        q_rows = torch.tensor([g * per_group + j for g in k.kv_groups for j in range(per_group)])
        kv_rows = torch.tensor([g * hd + j for g in k.kv_groups for j in range(hd)])
        ffn = torch.tensor(k.ffn)
        o_scale = torch.ones(len(q_rows))
        if group_scale is not None:
            o_scale = group_scale[k.source][list(k.kv_groups)].repeat_interleave(per_group)
        f_scale = channel_scale[k.source][ffn] if channel_scale is not None else torch.ones(len(ffn))
        if layer_scale is not None:
            o_scale, f_scale = o_scale * layer_scale[k.source], f_scale * layer_scale[k.source]
        a, m = src + "self_attn.", src + "mlp."
        out[d + "self_attn.q_proj.weight"] = state[a + "q_proj.weight"][q_rows]
        out[d + "self_attn.k_proj.weight"] = state[a + "k_proj.weight"][kv_rows]
        out[d + "self_attn.v_proj.weight"] = state[a + "v_proj.weight"][kv_rows]
        out[d + "self_attn.o_proj.weight"] = state[a + "o_proj.weight"][:, q_rows] * o_scale
        out[d + "mlp.gate_proj.weight"] = state[m + "gate_proj.weight"][ffn]
        out[d + "mlp.up_proj.weight"] = state[m + "up_proj.weight"][ffn]
        out[d + "mlp.down_proj.weight"] = state[m + "down_proj.weight"][:, ffn] * f_scale
        for norm in ("input_layernorm.weight", "post_attention_layernorm.weight"):
            out[d + norm] = state[src + norm]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def pruned_config(raw: dict, dims: Dims, keep: list[LayerKeep]) -> dict:
    """config.json of the pruned model: the original's top-level values, one ``layer_shapes`` entry per kept layer."""
    shapes = [{"num_attention_heads": len(k.kv_groups) * dims.layers[k.source].q_per_kv,
               "num_key_value_heads": len(k.kv_groups), "intermediate_size": len(k.ffn),
               "source_layer": int((raw.get("layer_shapes") or [{}] * len(dims.layers))[k.source].get("source_layer", k.source))}
              for k in keep]
    return {**raw, "num_hidden_layers": len(keep), "layer_shapes": shapes}
