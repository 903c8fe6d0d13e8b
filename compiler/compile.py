"""``llama-aot compile``: checkpoint dir -> package dir, in one direction.

frontend (spec + lazy weights) -> quantization schemes -> Relax model -> our pipeline ->
library, then weights converted tensor by tensor into shards, all inside a temporary
directory that is renamed to OUT only when everything succeeded.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import LlamaAotError
from .frontend import Checkpoint, load_spec
from .package import atomic_output_dir, copy_tokenizer, write_params
from .quantization import get_scheme
from runtime_stubs.package_format import MANIFEST, PACKAGE_CONFIG

FORMAT_VERSION = 1
PAGE_SIZE = 16


@dataclass(frozen=True)
class CompileOptions:
    target: str = "host"
    quant: str = "q4f16"
    context_window: int | None = None  # default: min(max_position_embeddings, 4096)
    prefill_chunk: int = 128
    keep_embedding_precision: bool = False
    num_threads: int | None = None
    force: bool = True


def resolve_target(name: str, num_threads: int | None):
    """Target name -> (tvm Target, description dict)."""
    from tvm.target import Target

    from targets.host import host_target_dict

    if name == "host":
        d = host_target_dict(num_threads)
        return Target(d), {"name": "host", "device": "cpu", "tvm_host": d}
    raise LlamaAotError(f"unknown target {name!r}; use --target host (see `llama-aot targets`)")


def compile_model(model_dir: str | Path, out: str | Path, options: CompileOptions = CompileOptions()) -> Path:
    import tvm

    from .model.llama import LlamaForCausalLM
    from .model.weights import converted_params, weight_plan
    from .pipeline import build_pipeline

    t_start = time.perf_counter()
    model_dir = Path(model_dir)
    spec = load_spec(model_dir)
    scheme = get_scheme(options.quant)
    head_scheme = get_scheme("q0f16") if options.keep_embedding_precision else scheme
    target, target_info = resolve_target(options.target, options.num_threads)
    context_window = options.context_window or min(spec.max_position_embeddings, 4096)
    if options.prefill_chunk <= 0 or context_window <= 0:
        raise LlamaAotError("--prefill-chunk and --context-window must be positive")
    dtype = "float32"  # activation dtype on CPU targets: x86/arm CPUs gain nothing from f16 math here

    with Checkpoint(model_dir) as checkpoint:
        checkpoint.validate(spec)
        model = LlamaForCausalLM(spec, scheme, head_scheme, dtype, target)
        mod, named_params = model.export_tvm(spec=model.export_spec())
        param_names = [n for n, _ in named_params]
        param_dtypes = {n: p.dtype for n, p in named_params}
        param_shapes = {n: tuple(int(d) for d in p.shape) for n, p in named_params}

        with atomic_output_dir(Path(out), overwrite=options.force) as tmp:
            with tqdm(total=1, desc="compile (Relax -> TIR -> llvm)", unit="lib", leave=False) as bar:
                t0 = time.perf_counter()
                executable = tvm.compile(mod, target, relax_pipeline=build_pipeline(target))
                (tmp / "lib").mkdir()
                executable.export_library(str(tmp / "lib" / "model.so"))
                build_seconds = time.perf_counter() - t0
                bar.update(1)

            plan = weight_plan(spec, scheme, head_scheme)
            stream = converted_params(checkpoint, plan, param_names, param_dtypes)
            entries = write_params(
                tmp, _checked(tqdm(stream, total=len(param_names), desc="convert weights", unit="tensor"), param_shapes)
            )
            tokenizer_files = copy_tokenizer(model_dir, tmp)
            weight_bytes = sum(e["nbytes"] for e in entries)
            # per decoded token every weight is read once, except the embedding table (one row)
            embed_bytes = sum(e["nbytes"] for e in entries if e["name"].startswith("embed_tokens."))
            per_token = weight_bytes - (0 if spec.tie_word_embeddings else embed_bytes)
            config = {
                "format_version": FORMAT_VERSION,
                "model": spec.to_json(),
                "quantization": {
                    "name": scheme.name,
                    "layout": scheme.layout(),
                    "embedding_and_lm_head": {"name": head_scheme.name, "layout": head_scheme.layout()},
                },
                "activation_dtype": dtype,
                "target": target_info,
                "context_window": context_window,
                "prefill_chunk": options.prefill_chunk,
                "weights": {"bytes": weight_bytes, "bytes_read_per_decoded_token": per_token},
                "runtime": {
                    "library": "lib/model.so",
                    "params_manifest": MANIFEST,
                    "num_kv_caches": len(model.groups),
                    "kv_cache_layers": [ids for _, ids in model.groups],
                    "page_size": PAGE_SIZE,
                    "functions": {
                        "embed": "embed",
                        "prefill": "prefill",
                        "decode": "decode",
                        "create_kv_cache": [f"create_paged_kv_cache_{g}" for g in range(len(model.groups))],
                    },
                },
                "tokenizer": tokenizer_files,
                "compile": {
                    "seconds": round(time.perf_counter() - t_start, 2),
                    "build_seconds": round(build_seconds, 2),
                    "tvm_version": tvm.__version__,
                },
            }
            with open(tmp / PACKAGE_CONFIG, "w") as f:
                json.dump(config, f, indent=1)
    return Path(out)


def _checked(stream, shapes: dict[str, tuple[int, ...]]):
    """Refuse non-finite weights and any conversion that disagrees with the model's parameter shape."""
    for name, arr in stream:
        if tuple(arr.shape) != shapes[name]:
            raise LlamaAotError(f"internal: {name} converted to shape {arr.shape}, model expects {shapes[name]}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise LlamaAotError(f"weight {name} contains NaN/Inf: the checkpoint is corrupted")
        yield name, arr
