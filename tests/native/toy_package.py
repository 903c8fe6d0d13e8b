"""A tiny Llama-shaped package that follows the llama-aot package contract, built with TVM directly.

Used by the native-runtime tests until (and independently of) the real compiler:
  - two attention groups with different head counts -> two paged KV caches (num_kv_caches = 2);
  - embed(ids[n] int32, params) -> [1, n, H]; prefill/decode(embeds, kv_0, kv_1, params)
    -> logits [1, 1, V] float32; create_paged_kv_cache_<g>(max_batch, max_seq, chunk, page, sliding);
  - params/manifest.json + one shard file, 64-byte aligned offsets; llama-aot.json "runtime" section.

build_package(out, arch=...) writes the package for "x86_64" (export_library .so), "aarch64"
(the same module cross-compiled for aarch64-linux-gnu and linked by aarch64-linux-gnu-g++), or a
system-lib variant (objects lib0.o/devc.o instead of a .so, "library": "system:").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np

VOCAB = 96
HIDDEN = 32
HEAD_DIM = 8
FFN = 48
# (num_heads, num_kv_heads) per layer, and which KV cache each layer uses: two caches of different
# head counts exercise num_kv_caches > 1.  (TVM 0.27 needs _unique_kernel_symbols for that.)
LAYERS = [(4, 2), (2, 1), (4, 2)]
LAYER_CACHE = [0, 1, 0]
PAGE_SIZE = 16
CONTEXT_WINDOW = 96
PREFILL_CHUNK = 16
EOS = [VOCAB - 1]
ALIGN = 64

TRIPLES = {
    "x86_64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
}


def _groups():
    """[((num_heads, num_kv_heads), [layer ids]) per KV cache]."""
    groups = []
    for g in range(max(LAYER_CACHE) + 1):
        ids = [i for i, c in enumerate(LAYER_CACHE) if c == g]
        groups.append((LAYERS[ids[0]], ids))
    return groups


def build_module():
    """The nn module exported to Relax: returns (IRModule, [(name, nn.Parameter)])."""
    import inspect

    from tvm import relax as rx
    from tvm import te
    from tvm.relax.frontend import nn
    from tvm.relax.frontend.nn import op
    from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

    groups = _groups()
    slot = {}
    for g, (_, ids) in enumerate(groups):
        for local, layer in enumerate(ids):
            slot[layer] = (g, local)

    class Layer(nn.Module):
        def __init__(self, nh, nkv):
            self.nh, self.nkv = nh, nkv
            self.norm1 = nn.RMSNorm(HIDDEN, -1, 1e-5, bias=False)
            self.qkv = nn.Linear(HIDDEN, (nh + 2 * nkv) * HEAD_DIM, bias=False)
            self.o = nn.Linear(nh * HEAD_DIM, HIDDEN, bias=False)
            self.norm2 = nn.RMSNorm(HIDDEN, -1, 1e-5, bias=False)
            self.up = nn.Linear(HIDDEN, FFN, bias=False)
            self.down = nn.Linear(FFN, HIDDEN, bias=False)

        def forward(self, x, cache, local):
            b, s, _ = x.shape
            qkv = op.reshape(self.qkv(self.norm1(x)), (b, s, self.nh + 2 * self.nkv, HEAD_DIM))
            att = cache.attention_with_fused_qkv(local, qkv, self.nh, sm_scale=HEAD_DIM**-0.5)
            x = x + self.o(op.reshape(att, (b, s, self.nh * HEAD_DIM)))
            return x + self.down(op.silu(self.up(self.norm2(x))))

    def last_position(x):
        def compute(t):
            b, s, h = t.shape
            return te.compute((b, 1, h), lambda i, _, k: t[i, s - 1, k], name="last_position")

        return op.tensor_expr_op(compute, "last_position", [x])

    class Toy(nn.Module):
        def __init__(self):
            self.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
            self.layers = nn.ModuleList([Layer(nh, nkv) for nh, nkv in LAYERS])
            self.norm = nn.RMSNorm(HIDDEN, -1, 1e-5, bias=False)
            self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)
            for g in range(len(groups)):
                setattr(self, f"create_paged_kv_cache_{g}", self._factory(g))
            params = [inspect.Parameter("input_embed", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            params += [
                inspect.Parameter(f"kv_cache_{g}", inspect.Parameter.POSITIONAL_OR_KEYWORD)
                for g in range(len(groups))
            ]
            for name in ("prefill", "decode"):

                def method(*args):
                    return self._forward(args[0], args[1:])

                method.__signature__ = inspect.Signature(params)
                setattr(self, name, method)

        def embed(self, input_ids):
            return op.reshape(self.embed_tokens(input_ids), (1, input_ids.shape[0], HIDDEN))

        def _forward(self, x, caches):
            for i, layer in enumerate(self.layers):
                g, local = slot[i]
                x = layer(x, caches[g], local)
            return self.lm_head(self.norm(last_position(x)))

        def _factory(self, g):
            (nh, nkv), ids = groups[g]

            def create(max_batch_size, max_total_seq_len, prefill_chunk_size, page_size, support_sliding_window):
                return TIRPagedKVCache(
                    attn_kind="mha",
                    max_batch_size=max_batch_size,
                    max_total_seq_len=max_total_seq_len,
                    prefill_chunk_size=prefill_chunk_size,
                    page_size=page_size,
                    support_sliding_window=support_sliding_window,
                    layer_partition=rx.ShapeExpr([0, len(ids)]),
                    num_hidden_layers=len(ids),
                    num_attention_heads=nh,
                    num_key_value_heads=nkv,
                    qk_head_dim=HEAD_DIM,
                    v_head_dim=HEAD_DIM,
                    mla_original_qk_head_dim=0,
                    mla_original_v_head_dim=0,
                    rope_mode=RopeMode.NORMAL,
                    rope_scale=1,
                    rope_theta=10000.0,
                    rope_scaling={},
                    rope_ext_factors=rx.prim_value(0),
                    rotary_dim=HEAD_DIM,
                    enable_disaggregation=False,
                    dtype="float32",
                    target=_CURRENT_TARGET[0],
                    name=f"paged_kv_cache_{g}",
                )

            return create

    caches = {f"kv_cache_{g}": nn.spec.Object(object_type=PagedKVCache) for g in range(len(groups))}
    packed = {"param_mode": "packed", "effect_mode": "none"}
    spec = {
        "embed": {"input_ids": nn.spec.Tensor(["seq_len"], "int32"), "$": packed},
        "prefill": {"input_embed": nn.spec.Tensor([1, "seq_len", HIDDEN], "float32"), **caches, "$": packed},
        "decode": {"input_embed": nn.spec.Tensor([1, 1, HIDDEN], "float32"), **caches, "$": packed},
    }
    for g in range(len(groups)):
        spec[f"create_paged_kv_cache_{g}"] = {
            "max_batch_size": int,
            "max_total_seq_len": int,
            "prefill_chunk_size": int,
            "page_size": int,
            "support_sliding_window": int,
            "$": {"param_mode": "none", "effect_mode": "none"},
        }
    model = Toy()
    with _unique_kernel_symbols():
        return model.export_tvm(spec=spec)


@contextlib.contextmanager
def _unique_kernel_symbols():
    """Let several TIRPagedKVCache objects live in one module.

    TVM 0.27's cache adds its TIR kernels with a fixed "global_symbol" attribute
    (e.g. batch_decode_paged_kv_cpu), so a second cache object fails at export with "IRModule
    contains duplicate global symbol".  Dropping the attribute lets the normalizer name each
    kernel after its (deduplicated) GlobalVar instead.
    """
    from tvm import relax as rx
    from tvm import tirx

    original = rx.BlockBuilder.add_func

    def add_func(self, func, func_name, *args, **kwargs):
        if isinstance(func, tirx.PrimFunc) and func.attrs is not None and "global_symbol" in func.attrs:
            func = func.without_attr("global_symbol")
        return original(self, func, func_name, *args, **kwargs)

    rx.BlockBuilder.add_func = add_func
    try:
        yield
    finally:
        rx.BlockBuilder.add_func = original


_CURRENT_TARGET = [None]


def make_target(arch: str):
    from tvm.target import Target

    if arch == "x86_64":
        return Target({"kind": "llvm", "mtriple": TRIPLES[arch]})
    if arch == "aarch64":
        return Target({"kind": "llvm", "mtriple": TRIPLES[arch], "mattr": ["+neon"]})
    raise ValueError(arch)


def random_params(named_params, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for name, p in named_params:
        shape = tuple(int(d) for d in p.shape)
        if "norm" in name:
            arr = (1.0 + 0.1 * rng.standard_normal(shape)).astype("float32")
        else:
            arr = (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype("float32")
        out.append((name, arr))
    return out


def write_params(out: Path, params) -> list[dict]:
    (out / "params").mkdir(parents=True, exist_ok=True)
    entries, offset = [], 0
    with open(out / "params" / "shard-00000.bin", "wb") as f:
        for name, arr in params:
            pad = (-offset) % ALIGN
            f.write(b"\0" * pad)
            offset += pad
            data = np.ascontiguousarray(arr).tobytes()
            f.write(data)
            entries.append(
                {
                    "name": name,
                    "dtype": str(arr.dtype),
                    "shape": list(arr.shape),
                    "file": "shard-00000.bin",
                    "offset": offset,
                    "nbytes": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
            offset += len(data)
    with open(out / "params" / "manifest.json", "w") as f:
        json.dump({"params": entries}, f, indent=1)
    return entries


def write_config(out: Path, library: str) -> dict:
    groups = _groups()
    config = {
        "format_version": 1,
        "model": {"vocab_size": VOCAB, "hidden_size": HIDDEN, "eos_token_ids": EOS, "bos_token_id": None},
        "context_window": CONTEXT_WINDOW,
        "prefill_chunk": PREFILL_CHUNK,
        "runtime": {
            "library": library,
            "params_manifest": "params/manifest.json",
            "num_kv_caches": len(groups),
            "kv_cache_layers": [ids for _, ids in groups],
            "page_size": PAGE_SIZE,
            "context_window": CONTEXT_WINDOW,
            "prefill_chunk": PREFILL_CHUNK,
            "functions": {
                "embed": "embed",
                "prefill": "prefill",
                "decode": "decode",
                "create_kv_cache": [f"create_paged_kv_cache_{g}" for g in range(len(groups))],
            },
        },
    }
    with open(out / "llama-aot.json", "w") as f:
        json.dump(config, f, indent=1)
    return config


def build_package(out: Path, arch: str = "x86_64", system_lib: bool = False, seed: int = 0) -> Path:
    """Write a toy package to `out`.  System-lib packages get lib/lib0.o (+ lib/devc.o) to link."""
    import tvm
    from tvm.support import tar as tvm_tar
    from tvm.support.cc import cross_compiler

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "lib").mkdir(parents=True)
    target = make_target(arch)
    _CURRENT_TARGET[0] = target
    mod, named_params = build_module()
    # tvm.compile has no system_lib switch; relax.build (same default pipeline) has
    ex = tvm.relax.build(mod, target, system_lib=True) if system_lib else tvm.compile(mod, target)
    if system_lib:
        tar_path = out / "lib" / "model.tar"
        ex.export_library(str(tar_path), fcompile=tvm_tar.tar)
        with tarfile.open(tar_path) as t:
            t.extractall(out / "lib")
        tar_path.unlink()
        library = "system:"
    else:
        lib_path = out / "lib" / "model.so"
        if arch == "x86_64":
            ex.export_library(str(lib_path))
        else:
            ex.export_library(str(lib_path), fcompile=cross_compiler(f"{TRIPLES[arch]}-g++"))
        library = "lib/model.so"
    write_params(out, random_params(named_params, seed))
    write_config(out, library)
    return out


def system_lib_objects(package: Path) -> list[Path]:
    return sorted((Path(package) / "lib").glob("*.o"))


class PythonReference:
    """The package run by TVM's Python runtime (tvm.runtime.vm), following the same contract."""

    def __init__(self, package: Path):
        import tvm

        self.tvm = tvm
        package = Path(package)
        cfg = json.loads((package / "llama-aot.json").read_text())
        rt = cfg["runtime"]
        self.dev = tvm.runtime.cpu(0)
        self.vm = tvm.runtime.vm.VirtualMachine(tvm.runtime.load_module(str(package / rt["library"])), self.dev)
        entries = json.loads((package / rt["params_manifest"]).read_text())["params"]
        self.params = []
        for e in entries:
            raw = np.fromfile(package / "params" / e["file"], dtype=e["dtype"], count=int(np.prod(e["shape"])),
                              offset=e["offset"])
            self.params.append(tvm.runtime.tensor(raw.reshape(e["shape"]), self.dev))
        S = tvm.runtime.ShapeTuple
        self.chunk = rt["prefill_chunk"]
        self.caches = [
            self.vm[name](S([1]), S([rt["context_window"]]), S([rt["prefill_chunk"]]), S([rt["page_size"]]), S([0]))
            for name in rt["functions"]["create_kv_cache"]
        ]
        f = tvm.get_global_func
        self.f_add, self.f_begin, self.f_end = (
            f("vm.builtin.kv_state_add_sequence"),
            f("vm.builtin.kv_state_begin_forward"),
            f("vm.builtin.kv_state_end_forward"),
        )
        for c in self.caches:
            self.f_add(c, 0)

    def _forward(self, fn: str, ids) -> np.ndarray:
        S = self.tvm.runtime.ShapeTuple
        for c in self.caches:
            self.f_begin(c, S([0]), S([len(ids)]))
        emb = self.vm["embed"](self.tvm.runtime.tensor(np.asarray(ids, "int32"), self.dev), self.params)
        logits = self.vm[fn](emb, *self.caches, self.params)
        for c in self.caches:
            self.f_end(c)
        return logits.numpy().reshape(-1)

    def generate(self, prompt, max_tokens: int):
        """Greedy, stop on EOS: (tokens, logits rows the tokens were picked from)."""
        logits = None
        for s in range(0, len(prompt), self.chunk):
            logits = self._forward("prefill", prompt[s : s + self.chunk])
        tokens, rows = [], []
        for step in range(max_tokens):
            rows.append(logits.copy())
            tok = int(np.argmax(logits))
            tokens.append(tok)
            if tok in EOS or step + 1 == max_tokens:
                break
            logits = self._forward("decode", [tok])
        return tokens, np.stack(rows)
