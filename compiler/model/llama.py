"""Llama 3 in ``tvm.relax.frontend.nn``, built from a ModelSpec with per-layer shapes.

Exported functions (the package's calling convention, also read by the C runtime):
  embed(input_ids[seq] int32, params)                  -> [1, seq, hidden]
  prefill(input_embed[1, seq, hidden], kv_0.., params) -> logits[1, 1, vocab] f32 (last position)
  decode(input_embed[1, 1, hidden], kv_0.., params)    -> logits[1, 1, vocab] f32
  score(input_embed[1, seq, hidden], kv_0.., params)   -> logits[1, seq, vocab] f32 (every position: what
      ``llama-aot eval`` measures perplexity with; the same kernels as prefill plus an lm_head GEMM)
  create_paged_kv_cache_<g>(max_batch, max_total_seq, prefill_chunk, page_size, sliding) -> cache
With a sliding window (runtime_stubs/attention_window.py) prefill and decode take ``positions[seq] int32`` after
``input_embed``: the tokens' indices in the whole sequence, for the RoPE the model applies itself.
There is one KV cache per attention group (layers with equal head counts), because TVM's paged
cache fixes its head counts per object; an unpruned model has exactly one.
"""

from __future__ import annotations

import contextlib
import inspect

from tvm import relax as rx
from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import op
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from ..frontend.spec import LayerSpec, ModelSpec
from ..quantization import QuantizedEmbedding, QuantizedLinear
from ..quantization.assignment import SchemeAssignment
from .fast_math import silu_mul_te
from .kv_kernels import fast_cpu_attention, race_free_merge_state


class Attention(nn.Module):
    """GQA self-attention: fused QKV projection, RoPE + paged attention inside the KV cache."""

    def __init__(self, spec: ModelSpec, layer: LayerSpec, scheme_of, dtype: str):
        self.num_heads = layer.num_attention_heads
        self.num_kv_heads = layer.num_key_value_heads
        self.head_dim = spec.head_dim
        qkv_out = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv_proj = QuantizedLinear(spec.hidden_size, qkv_out, scheme_of("self_attn.qkv_proj"), dtype)
        self.o_proj = QuantizedLinear(self.num_heads * self.head_dim, spec.hidden_size, scheme_of("self_attn.o_proj"), dtype)

    #: windowed models: the RoPE kernel (split + rotate) the model applies at the caller's positions
    rope_at_positions = None
    #: the KV cache's dtype when it is not the activations' (compile --kv-cache f16 on CPUs): q, k, v are
    #: rounded to it before the cache, the attention output converted back
    kv_dtype = None

    def forward(self, x: nn.Tensor, cache: PagedKVCache, cache_layer_id: int, positions=None) -> nn.Tensor:
        b, s, _ = x.shape
        heads = self.num_heads + 2 * self.num_kv_heads
        qkv = op.reshape(self.qkv_proj(x), (b, s, heads, self.head_dim))
        if positions is not None:  # the cache applies no RoPE (runtime_stubs/attention_window.py)
            flat = op.reshape(qkv, (b * s, heads, self.head_dim))
            q, k, v = op.tensor_ir_op(
                self.rope_at_positions, "rope_at_positions", [flat, positions],
                [nn.Tensor.placeholder((b * s, n, self.head_dim), qkv.dtype)
                 for n in (self.num_heads, self.num_kv_heads, self.num_kv_heads)],
            )
            qkv = op.reshape(op.concat([q, k, v], dim=1), (b, s, heads, self.head_dim))
        if self.kv_dtype is not None and self.kv_dtype != qkv.dtype:
            qkv = qkv.astype(self.kv_dtype)
        out = cache.attention_with_fused_qkv(
            cache_layer_id, qkv, self.num_heads, sm_scale=self.head_dim**-0.5
        )
        if out.dtype != x.dtype:
            out = out.astype(x.dtype)
        return self.o_proj(op.reshape(out, (b, s, self.num_heads * self.head_dim)))


class MLP(nn.Module):
    """SwiGLU feed-forward with gate and up projections fused into one matmul."""

    def __init__(self, hidden: int, ffn: int, scheme_of, dtype: str):
        self.ffn = ffn
        self.gate_up_proj = QuantizedLinear(hidden, 2 * ffn, scheme_of("mlp.gate_up_proj"), dtype)
        self.down_proj = QuantizedLinear(ffn, hidden, scheme_of("mlp.down_proj"), dtype)
        #: CPU targets: SiLU through fast_math.exp2_poly (LLVM would call libm's expf once per lane)
        self.fast_silu = False

    def forward(self, x: nn.Tensor) -> nn.Tensor:
        gate_up = self.gate_up_proj(x)
        if self.fast_silu and gate_up.dtype == "float32":
            return self.down_proj(op.tensor_expr_op(silu_mul_te(self.ffn), "silu_multiply", [gate_up]))
        gate, up = op.split(gate_up, 2, axis=-1)
        return self.down_proj(op.silu(gate) * up)


class DecoderLayer(nn.Module):
    """``scheme_of(local path)``: the scheme of this layer's projection ``self_attn.qkv_proj`` etc."""

    def __init__(self, spec: ModelSpec, layer: LayerSpec, scheme_of, dtype: str):
        self.input_layernorm = nn.RMSNorm(spec.hidden_size, -1, spec.rms_norm_eps, bias=False, dtype=dtype)
        self.self_attn = Attention(spec, layer, scheme_of, dtype)
        self.post_attention_layernorm = nn.RMSNorm(spec.hidden_size, -1, spec.rms_norm_eps, bias=False, dtype=dtype)
        self.mlp = MLP(spec.hidden_size, layer.intermediate_size, scheme_of, dtype)

    def forward(self, x: nn.Tensor, cache: PagedKVCache, cache_layer_id: int, positions=None) -> nn.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cache, cache_layer_id, positions)
        return x + self.mlp(self.post_attention_layernorm(x))


def _last_position(x: nn.Tensor) -> nn.Tensor:
    """[b, s, h] -> [b, 1, h]: only the last position feeds the lm_head during prefill."""

    def compute(t: te.Tensor):
        b, s, h = t.shape
        return te.compute((b, 1, h), lambda i, _, k: t[i, s - 1, k], name="last_position")

    return op.tensor_expr_op(compute, "last_position", [x])


class LlamaForCausalLM(nn.Module):
    """The whole model; ``dtype`` is the activation dtype (float32 on CPU targets); ``schemes`` says which scheme
    packs each projection and the embedding (quantization/assignment.py)."""

    def __init__(
        self,
        spec: ModelSpec,
        schemes: SchemeAssignment,
        dtype: str,
        target,
        int8_activations: bool = False,
        schedule_params=None,
        window=None,
        kv_dtype: str | None = None,
        activation_sparsity: bool = False,
    ):
        self.spec = spec
        self.dtype = dtype
        self.kv_dtype = kv_dtype or dtype  # the KV cache's pages (compile --kv-cache)
        self.target = target
        self.schedule_params = schedule_params
        self.window = window  # attention_window.AttentionWindow or None
        self.embed_tokens = QuantizedEmbedding(spec.vocab_size, spec.hidden_size, schemes("embed_tokens"), dtype)
        self.layers = nn.ModuleList([
            DecoderLayer(spec, layer, lambda local, i=i: schemes(f"layers.{i}.{local}"), dtype)
            for i, layer in enumerate(spec.layers)
        ])
        if int8_activations:  # projections round their inputs to int8 (schedules/cpu/int8_gemm.py, int8_gemv.py)
            import functools

            from schedules.cpu.int8_dot import int8_dot_isa
            from schedules.cpu.int8_gemm import derived_int8_matmul
            from schedules.cpu.params import CPUParams, software_prefetch_allowed

            # the kernels' knobs derived from the target's facts (schedule_params: compile's CPUParams)
            int8_matmul_func = functools.partial(
                derived_int8_matmul, params=schedule_params or CPUParams.for_build(target),
                isa=int8_dot_isa(target), prefetch=software_prefetch_allowed(target),
            )
            # the same kernels, tagged with their tuning key; a `compile --tuned DB` record sets their knobs
            from schedules.tuning.apply import tuned_int8_matmul

            int8_matmul_func = tuned_int8_matmul(int8_matmul_func)
            # every projection gets the factory; it returns None for a scheme without an int8 kernel (a mix's q8 /
            # cb3 tensors), which then keeps the f32 fused-dequant matmul (kernels.matmul_op)
            for layer in self.layers:
                for lin in _projections(layer):
                    lin.int8_kernel = int8_matmul_func
        if activation_sparsity:  # thresholded projection inputs (compression/activation_sparsity.py)
            # the row-skipping GEMV rounds the active inputs to int8: only where the projections do (not with
            # --f32-activations, whose decode then masks the inputs of the dense f32 GEMV: same zeros, no skip)
            factory = _sparse_gemv_factory(target, schedule_params) if int8_activations else None
            #: what decode runs for them (llama-aot.json's activation_sparsity.decode_kernel)
            self.sparse_decode_kernel = (f"sparse_gemv_int8_{factory.keywords['isa']}" if factory
                                         else "masked_dense_f32")
            for layer in self.layers:
                for lin in _projections(layer):
                    lin.sparsify_input(factory)
        if target is not None and target.kind.name == "llvm":
            for layer in self.layers:
                layer.mlp.fast_silu = True
        self.norm = nn.RMSNorm(spec.hidden_size, -1, spec.rms_norm_eps, bias=False, dtype=dtype)
        if not spec.tie_word_embeddings:
            self.lm_head = QuantizedLinear(spec.hidden_size, spec.vocab_size, schemes("lm_head"), "float32")
        if int8_activations:
            (self.embed_tokens if spec.tie_word_embeddings else self.lm_head).int8_kernel = int8_matmul_func
        # layers sharing head counts (and, with per-layer windows, windowed or not) share one KV cache
        if self.kv_dtype != dtype:
            for layer in self.layers:
                layer.self_attn.kv_dtype = self.kv_dtype
        self.groups = _split_by_window(spec.attention_groups(), window)
        self.group_windowed = [window is not None and window.windows(ids[0]) for _, ids in self.groups]
        # layer index -> (cache index, layer index inside that cache)
        self.cache_slot = {}
        for g, (_, layer_ids) in enumerate(self.groups):
            for local, layer_id in enumerate(layer_ids):
                self.cache_slot[layer_id] = (g, local)
        for g in range(len(self.groups)):
            setattr(self, f"create_paged_kv_cache_{g}", self._make_cache_factory(g))
        if window is not None:
            from .kv_kernels import fused_rope_cpu

            ropes = {}  # one kernel per attention group's head counts
            for (heads, kv_heads), _ in self.groups:
                rope = fused_rope_cpu(spec.rope_theta, 1.0, spec.head_dim, heads, kv_heads, dtype,
                                      spec.rope_scaling.to_tvm_dict() if spec.rope_scaling else {})
                if rope is None:
                    from runtime_stubs.errors import LlamaAotError

                    raise LlamaAotError("--sliding-window supports Llama-form RoPE only (this checkpoint's rope_type "
                                        "is not); compile without --sliding-window")
                # apply_rope = 1; no global symbol of its own: groups of other head counts get their own kernel,
                # named by the module it is added to (two "fused_rope" symbols would collide)
                ropes[heads, kv_heads] = rope.specialize({rope.params[-1]: tirx.IntImm("int64", 1)}).without_attr(
                    "global_symbol")
            for layer in self.layers:
                a = layer.self_attn
                a.rope_at_positions = ropes[a.num_heads, a.num_kv_heads]
        self.prefill = _with_cache_args(self._prefill, len(self.groups), window is not None)
        self.decode = _with_cache_args(self._decode, len(self.groups), window is not None)
        self.score = _with_cache_args(self._score, len(self.groups), window is not None)

    # --- exported functions -------------------------------------------------------------------
    def embed(self, input_ids: nn.Tensor) -> nn.Tensor:
        x = self.embed_tokens(input_ids)
        return op.reshape(x, (1, input_ids.shape[0], self.spec.hidden_size))

    def _forward(self, x: nn.Tensor, caches, positions=None, every_position: bool = False) -> nn.Tensor:
        for i, layer in enumerate(self.layers):
            g, local = self.cache_slot[i]
            x = layer(x, caches[g], local, positions)
        x = self.norm(x if every_position else _last_position(x))
        if self.spec.tie_word_embeddings:
            logits = self.embed_tokens.lm_head_forward(x)
        else:
            logits = self.lm_head(x)
        if logits.dtype != "float32":
            logits = logits.astype("float32")
        return logits

    def _prefill(self, input_embed: nn.Tensor, *args) -> nn.Tensor:
        return self._forward(input_embed, *self._split_positions(args))

    def _decode(self, input_embed: nn.Tensor, *args) -> nn.Tensor:
        return self._forward(input_embed, *self._split_positions(args))

    def _score(self, input_embed: nn.Tensor, *args) -> nn.Tensor:
        return self._forward(input_embed, *self._split_positions(args), every_position=True)

    def _split_positions(self, args):
        """(caches, positions): windowed models take ``positions`` before the caches."""
        return (args[1:], args[0]) if self.window is not None else (args, None)

    def _make_cache_factory(self, g: int):
        def create(max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window):
            # race_free_merge_state: TVM's GPU merge_state kernel races on small subgroups;
            # fast_cpu_attention: TVM's CPU attention kernels are scalar (kv_kernels.py)
            window = (self.window.window, self.window.sinks) if self.group_windowed[g] else None
            with _unique_kernel_symbols(), race_free_merge_state(self.target), \
                    fast_cpu_attention(self.target, self.schedule_params, window):
                return self._new_cache(
                    g, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window
                )

        return create

    def _new_cache(self, g, max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window):
        (num_heads, num_kv_heads), layer_ids = self.groups[g]
        spec = self.spec
        return TIRPagedKVCache(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=rx.ShapeExpr([0, len(layer_ids)]),
            num_hidden_layers=len(layer_ids),
            num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads,
            qk_head_dim=spec.head_dim,
            v_head_dim=spec.head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=RopeMode.NONE if self.window else RopeMode.NORMAL,  # windowed: the model's RoPE
            rope_scale=1,
            rope_theta=spec.rope_theta,
            rope_scaling=spec.rope_scaling.to_tvm_dict() if spec.rope_scaling else {},
            rope_ext_factors=rx.prim_value(0),
            rotary_dim=spec.head_dim,
            enable_disaggregation=False,
            dtype=self.kv_dtype,
            target=self.target,
            name=f"paged_kv_cache_{g}",
        )

    def export_spec(self) -> dict:
        """The nn export spec: names, shapes and calling mode of every exported function."""
        h = self.spec.hidden_size
        caches = {f"kv_cache_{g}": nn.spec.Object(object_type=PagedKVCache) for g in range(len(self.groups))}
        packed = {"param_mode": "packed", "effect_mode": "none"}
        pos = lambda n: {"positions": nn.spec.Tensor([n], "int32")} if self.window else {}  # noqa: E731
        spec = {
            "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
            "prefill": {
                "input_embed": nn.spec.Tensor([1, "seq_len", h], self.dtype),
                **pos("seq_len"),
                **caches,
                "$": packed,
            },
            "decode": {"input_embed": nn.spec.Tensor([1, 1, h], self.dtype), **pos(1), **caches, "$": packed},
            "score": {
                "input_embed": nn.spec.Tensor([1, "seq_len", h], self.dtype),
                **pos("seq_len"),
                **caches,
                "$": packed,
            },
        }
        for g in range(len(self.groups)):
            spec[f"create_paged_kv_cache_{g}"] = {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {"param_mode": "none", "effect_mode": "none"},
            }
        return spec


def _projections(layer: DecoderLayer) -> tuple:
    return (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)


def _sparse_gemv_factory(target, schedule_params):
    """The row-skipping decode GEMV's factory for ``target`` (CPUs with an int8 dot product), else None: the
    projections then only mask their inputs (the same numbers, no weight read skipped)."""
    import functools

    from schedules.cpu.int8_dot import int8_dot_isa
    from schedules.cpu.params import CPUParams, software_prefetch_allowed
    from schedules.cpu.sparse_gemv import derived_sparse_gemv

    isa = int8_dot_isa(target)
    if isa is None:
        return None
    return functools.partial(derived_sparse_gemv, params=schedule_params or CPUParams.for_build(target), isa=isa,
                             prefetch=software_prefetch_allowed(target))


@contextlib.contextmanager
def _unique_kernel_symbols():
    """Let every KV cache add its attention kernels under a unique symbol.

    The cache's kernel generators stamp a fixed ``global_symbol`` on each PrimFunc, so a
    second cache (another head configuration) would collide; without the attribute the
    BlockBuilder's unique GlobalVar name becomes the symbol.
    """
    original = rx.BlockBuilder.add_func

    def add_func(bb, func, func_name):
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and "global_symbol" in func.attrs:
            func = func.without_attr("global_symbol")
        return original(bb, func, func_name)

    rx.BlockBuilder.add_func = add_func
    try:
        yield
    finally:
        rx.BlockBuilder.add_func = original


def _split_by_window(groups, window) -> list:
    """Attention groups ``[((heads, kv_heads), layer_ids)]`` split where only some layers are windowed
    (``window.layers``): a cache is either sliding or not, so windowed and full layers get separate caches."""
    if window is None or window.every_layer:
        return list(groups)
    out = []
    for shape, ids in groups:
        for windowed in (True, False):
            part = [i for i in ids if window.windows(i) == windowed]
            if part:
                out.append((shape, part))
    return out


def _with_cache_args(fn, num_caches: int, positions: bool = False):
    """Give ``fn(input_embed, [positions,] *caches)`` a signature with one named argument per KV cache.

    nn's exporter maps spec entries to arguments by the method's parameter names, so a
    model with G attention groups needs methods taking kv_cache_0 .. kv_cache_{G-1}.
    """

    def method(*args):
        return fn(*args)

    params = [inspect.Parameter("input_embed", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if positions:
        params.append(inspect.Parameter("positions", inspect.Parameter.POSITIONAL_OR_KEYWORD))
    params += [
        inspect.Parameter(f"kv_cache_{g}", inspect.Parameter.POSITIONAL_OR_KEYWORD) for g in range(num_caches)
    ]
    method.__signature__ = inspect.Signature(params)
    return method
