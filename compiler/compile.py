"""``llama-aot compile``: checkpoint dir -> package dir, in one direction.

frontend (spec + lazy weights) -> quantization schemes -> Relax model -> our pipeline ->
library, then weights converted tensor by tensor into shards, all inside a temporary
directory that is renamed to OUT only when everything succeeded.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime_stubs.errors import LlamaAotError
from .frontend import Checkpoint, load_spec
from .package import atomic_output_dir, copy_tokenizer, write_params
from .quantization import CodebookScheme, get_scheme
from .quantization.assignment import HEAD_MODULES, SchemeAssignment
from runtime_stubs.integrity import write_checksums
from runtime_stubs.package_format import FORMAT_VERSION, MANIFEST, PACKAGE_CONFIG

logger = logging.getLogger(__name__)

PAGE_SIZE = 16


@dataclass(frozen=True)
class CompileOptions:
    target: str = "host"  # "host" | "vulkan"; ignored when soc is set
    vulkan_profile: str | None = None  # --target vulkan for another machine's device (JSON profile)
    soc: str | None = None  # a SoC from the registry (or a path to its .toml)
    device: str | None = None  # cpu | gpu | opencl | vulkan | metal
    quant: str = "q4f16"
    context_window: int | None = None  # default: min(max_position_embeddings, 4096)
    prefill_chunk: int = 128
    keep_embedding_precision: bool = False
    num_threads: int | None = None
    system_lib_prefix: str | None = None  # phones: symbol prefix so several models link into one app
    force_memory: bool = False  # build even when the memory plan exceeds the SoC's usable memory
    max_memory: int | None = None  # bytes: refuse up front when compiling would need more (--max-memory)
    force: bool = True  # replace an existing OUT
    # projections (prefill GEMM, decode GEMV, lm_head) with int8 activations (q4f16 on CPUs with an int8 dot
    # product: AVX-512 VNNI, AArch64 dotprod; schedules/cpu/int8_gemm.py, int8_gemv.py); None = wherever
    # supported, False = always f32 activations
    int8_activations: bool | None = None
    # a `llama-aot tune` database dir: its records (this target's DIR/<soc>.json) set per-kernel knobs
    tuned_db: str | None = None
    # CPU cache facts overriding the SoC's / this machine's, e.g. "l1d=48K,l2=1M,l1d_ways=12" (targets/cpu_facts.py)
    cpu_facts: str | None = None
    # sliding-window attention with attention sinks (compiler/model/attention_window.py); None: the
    # checkpoint's config.json `sliding_window` if it has one, else full attention
    sliding_window: int | None = None
    attention_sinks: int | None = None  # default 4 with --sliding-window
    # CPU schedule knobs set by hand instead of derived, e.g. "attn_decode_splits=2" (CPUParams.parse_knobs)
    schedule_knobs: str | None = None
    # the KV cache's element type: "f32" or "f16" (CPU builds; None: the activation dtype)
    kv_cache: str | None = None
    # codebook schemes (cb*): text whose Fisher information weights the k-means (compression/fisher.py):
    # "train" (the embedded model's training split) or a UTF-8 file; None: unweighted k-means
    calibration_data: str | None = None
    calibration_sequences: int = 256
    # --quant mixed (compression/mixed_precision.py): the average stored bits per quantized weight (None: 4.5,
    # q4f16's size) and the schemes it chooses among (None: q8f16, q4f16, cb4f16, cb3f16)
    bits_per_weight: float | None = None
    mixed_schemes: str | None = None
    sensitivity: str | None = None  # --quant mixed: "fisher" (default: the Fisher-weighted error) or "loss"
    # the fraction of each projection's inputs zeroed by a calibrated magnitude threshold (TEAL-style; q4f16 on
    # CPUs: the projections are stored K-major and the decode GEMV skips the zeroed inputs' weight rows,
    # compression/activation_sparsity.py); None: dense
    activation_sparsity: float | None = None


def _int8_activations(options: CompileOptions, quants: list[str], target, dtype: str) -> bool:
    """Whether the projections of ``quants`` (the schemes in use) that have an int8 kernel get it."""
    from schedules.cpu.int8_dot import int8_dot_isa, weight_offset

    isa = int8_dot_isa(target)
    supported = dtype == "float32" and isa is not None and any(weight_offset(q, isa) is not None for q in quants)
    if options.int8_activations and not supported:
        raise LlamaAotError(
            "int8 activations need --quant q4f16 on a CPU target with an int8 dot product "
            "(x86 AVX-512 VNNI, AVX-VNNI or AVX2; AArch64 dotprod), or cb4f16 on one with VNNI or dotprod"
        )
    return supported if options.int8_activations is None else bool(options.int8_activations)


def compile_model(model_dir: str | Path, out: str | Path, options: CompileOptions = CompileOptions()) -> Path:
    import tvm

    from . import build_target
    from .export import export_executable, platform_of
    from .memory_plan import memory_plan
    from .model.llama import LlamaForCausalLM
    from .model.weights import conversion_peak_bytes, converted_params, planned_params, quantized_modules, weight_plan
    from .pipeline import build_pipeline
    from schedules.cpu.params import CPUParams
    from schedules.report import collecting
    from targets.cpu_facts import facts_for_build

    t_start = time.perf_counter()
    model_dir = Path(model_dir)
    spec = load_spec(model_dir)
    mixed = _mixed_candidates(options)  # None unless --quant mixed
    scheme = get_scheme("q4f16" if mixed else options.quant)  # mixed: q4f16 until the choice replaces it
    head_scheme = get_scheme("q0f16") if options.keep_embedding_precision else scheme
    bt = build_target.resolve(options.target, options.soc, options.device, options.num_threads, options.vulkan_profile)
    target = bt.tvm_target()
    _check_activation_sparsity(options, bt.device_api)
    for s in mixed.values() if mixed else [scheme]:
        if bt.device_api and isinstance(s, CodebookScheme):
            raise LlamaAotError(f"--quant {s.name} has no {bt.device_api} kernels yet (the codebook schemes run on CPUs); "
                                "build for the CPU (no --target vulkan / --device gpu) or use q4f16 on the GPU"
                                + (" (--mixed-schemes q8f16,q4f16)" if mixed else ""))
    # CPU kernels: parameters derived from the SoC's cache facts (--soc) or this machine's (host targets)
    params = None if bt.device_api else CPUParams.for_build(target, facts_for_build(bt.soc, options.cpu_facts))
    if options.schedule_knobs:
        if params is None:
            raise LlamaAotError("--schedule-knobs sets CPU schedule knobs; drop it for a GPU build (--device)")
        params = dataclasses.replace(params, **CPUParams.parse_knobs(options.schedule_knobs))
    context_window = options.context_window or min(spec.max_position_embeddings, 4096)
    if options.prefill_chunk <= 0 or context_window <= 0:
        raise LlamaAotError("--prefill-chunk and --context-window must be positive")
    dtype = bt.activation_dtype(options.quant)
    kv_dtype = _kv_cache_dtype(options.kv_cache, dtype, bt.device_api)
    from .model.attention_window import resolve as resolve_window

    window = resolve_window(model_dir, options.sliding_window, options.attention_sinks, context_window,
                            options.prefill_chunk, spec.head_dim, bt.device_api)

    from schedules.tuning.apply import activate as tuning_records

    # the output lock first: a second compile into the same OUT fails before doing any work
    with atomic_output_dir(Path(out), overwrite=options.force) as tmp, Checkpoint(model_dir) as checkpoint, \
            tuning_records(options) as tuning:
        checkpoint.validate(spec)
        importance, calibration = _calibration(model_dir, options, scheme, head_scheme)
        thresholds, sparsity_record = _sparse_inputs(model_dir, options)
        # --activation-sparsity: the projections stored K-major (q4f16k), the embedding / lm_head as they were
        schemes = SchemeAssignment.uniform(get_scheme("q4f16k") if thresholds else scheme, head_scheme)
        plan = weight_plan(spec, schemes, thresholds)
        mixed_record = None
        if mixed:  # a scheme per tensor, by measured sensitivity under the budget (compression/mixed_precision.py)
            schemes, mixed_record = _mixed_assignment(model_dir, checkpoint, plan, mixed, importance, head_scheme, options)
            plan = weight_plan(spec, schemes)
        # --max-memory: refused before the Relax model is built (the estimate needs only the checkpoint)
        _check_compile_memory(options.max_memory, conversion_peak_bytes(checkpoint, plan, *planned_params(checkpoint, plan, dtype)))
        in_use = schemes.schemes(quantized_modules(plan))  # a mix's placeholder body scheme is not among them
        int8_activations = _int8_activations(options, [s.name for s in in_use], target, dtype)
        _warn_slow_codebooks(in_use, target if int8_activations else None)
        model = LlamaForCausalLM(
            spec, schemes, dtype, target, int8_activations=int8_activations, schedule_params=params,
            window=window, kv_dtype=kv_dtype, activation_sparsity=thresholds is not None,
        )
        if sparsity_record is not None:
            sparsity_record["decode_kernel"] = model.sparse_decode_kernel
            if model.sparse_decode_kernel == "masked_dense_f32":
                logger.warning("--activation-sparsity without int8 activations (--f32-activations, or no int8 dot "
                               "product on this target): decode masks the inputs of the dense f32 GEMV, no weight "
                               "read is skipped")
        mod, named_params = model.export_tvm(spec=model.export_spec())
        param_names = [n for n, _ in named_params]
        param_dtypes = {n: p.dtype for n, p in named_params}
        param_shapes = {n: tuple(int(d) for d in p.shape) for n, p in named_params}
        weight_bytes = sum(int(np.prod(param_shapes[n])) * np.dtype(param_dtypes[n]).itemsize for n in param_names)
        plan_mem = memory_plan(spec, weight_bytes, context_window, options.prefill_chunk, dtype, PAGE_SIZE, kv_dtype,
                               kv_tokens=window.cache_tokens(options.prefill_chunk, PAGE_SIZE) if window else None,
                               windowed_layers=window.layers if window else None)
        if bt.soc is not None:
            usable = bt.soc.usable_memory_bytes
            plan_mem["usable_bytes"] = usable
            if plan_mem["peak_bytes"] > usable and not options.force_memory:
                raise LlamaAotError(
                    f"the model needs {plan_mem['peak_bytes'] / 1e9:.2f} GB at context {context_window} but "
                    f"{bt.soc.name} has about {usable / 1e9:.2f} GB usable; use a smaller --quant or "
                    f"--context-window, or --force-memory"
                )
        platform = platform_of(bt.host)
        if platform != "host":
            prefix = options.system_lib_prefix or _symbol_prefix(model_dir.name)
            mod = mod.with_attr("system_lib_prefix", prefix)

        with tqdm(total=1, desc=f"compile for {bt.name} ({bt.device_api or 'cpu'})", unit="lib", leave=False) as bar:
            t0 = time.perf_counter()
            with collecting() as schedule_report:
                executable = _compile(tvm, mod, target, build_pipeline(target, params))
            library = export_executable(executable, tmp / "lib", bt.host)
            build_seconds = time.perf_counter() - t0
            bar.update(1)
        if platform != "host":
            library["system_lib_prefix"] = prefix

        stream = converted_params(checkpoint, plan, param_names, param_dtypes, importance)
        entries = write_params(
            tmp, _checked(tqdm(stream, total=len(param_names), desc="convert weights", unit="tensor"), param_shapes)
        )
        tokenizer_files = copy_tokenizer(model_dir, tmp)
        # per decoded token every weight is read once, except the embedding table (one row)
        embed_bytes = sum(e["nbytes"] for e in entries if e["name"].startswith("embed_tokens."))
        per_token = weight_bytes - (0 if spec.tie_word_embeddings else embed_bytes)
        config = {
            "format_version": FORMAT_VERSION,
            "model": spec.to_json(),
            "quantization": {
                **schemes.record(quantized_modules(plan)),  # the layouts, and the scheme of every module
                # what weighted the codebooks' k-means or ranked a mixed choice (None: unweighted, no codebook)
                "calibration": calibration,
                **({"mixed": mixed_record} if mixed_record else {}),
            },
            "activation_dtype": dtype,
            # the projections' input thresholds and how they were calibrated (None: dense)
            "activation_sparsity": sparsity_record,
            # inputs of the q4 / cb4 projections and lm_head: rounded to int8 per row and group of 32
            # (schedules/cpu/int8_gemm.py); "activation_dtype" otherwise
            "projection_activations": "int8_group32" if int8_activations else dtype,
            "target": {**bt.describe(), **_cpu_features(bt)},
            "context_window": context_window,
            "prefill_chunk": options.prefill_chunk,
            # every attention option; a runtime that cannot honour one refuses the package
            "attention": {**(window.to_json(options.prefill_chunk) if window else {"sliding_window": None}),
                          "kv_cache_dtype": kv_dtype},
            "weights": {"bytes": weight_bytes, "bytes_read_per_decoded_token": per_token},
            "memory_plan": plan_mem,
            "library": library,
            "runtime": {
                # iOS links the static archive into the app: the model is found as a system library
                "library": library.get("library")
                or library.get("shared_library")
                or f"system:{library['system_lib_prefix']}",
                "params_manifest": MANIFEST,
                "num_kv_caches": len(model.groups),
                "kv_cache_layers": [ids for _, ids in model.groups],
                # which caches slide (attention_window.py); the others hold the whole context window
                "kv_cache_windowed": list(model.group_windowed),
                "page_size": PAGE_SIZE,
                "functions": {
                    "embed": "embed",
                    "prefill": "prefill",
                    "decode": "decode",
                    "score": "score",  # every position's logits (llama-aot eval)
                    "create_kv_cache": [f"create_paged_kv_cache_{g}" for g in range(len(model.groups))],
                },
            },
            "tokenizer": tokenizer_files,
            **({"tuning": tuning.summary()} if tuning is not None else {}),  # records used per kernel
            # the facts and derived knobs of the CPU schedules, the rule each kernel got, any fallback
            "schedules": {"cpu": _cpu_schedule_record(params, spec, kv_dtype), **schedule_report.to_json()},
            # no timings or paths in the package: the same inputs give the same bytes (timings: stderr)
            "compile": {"tvm_version": tvm.__version__, "llama_aot_version": _version()},
        }
        with open(tmp / PACKAGE_CONFIG, "w") as f:
            json.dump(config, f, indent=1)
        write_checksums(tmp)  # last: lists every other file (runtime_stubs/integrity.py)
    logger.info("compiled in %.1f s (library %.1f s)", time.perf_counter() - t_start, build_seconds)
    return Path(out)


def _calibration(model_dir: Path, options: CompileOptions, *schemes) -> tuple[dict | None, dict | None]:
    """(the Fisher importance per weight for codebook schemes, its record for llama-aot.json), both None without
    --calibration-data; a one-line error when calibration data is given to schemes that do not use it."""
    if options.calibration_data is None:
        if options.quant == "mixed":
            raise LlamaAotError("--quant mixed ranks each tensor by its Fisher-weighted error on calibration text: give "
                                "--calibration-data FILE (UTF-8 text like the model's inputs; train: the embedded "
                                "model's training split)")
        return None, None
    if options.quant != "mixed" and not any(isinstance(s, CodebookScheme) for s in schemes):
        if options.activation_sparsity is not None:
            return None, None  # the thresholds' calibration (_sparse_inputs) is its only use
        raise LlamaAotError(f"--calibration-data weights codebook quantization (--quant cb8f16, cb4f16, cb3f16), "
                            f"ranks --quant mixed and calibrates --activation-sparsity; {options.quant} does not use "
                            f"it: drop it")
    if options.calibration_sequences <= 0:
        raise LlamaAotError(f"--calibration-sequences must be positive, got {options.calibration_sequences}")
    from compression.fisher import DEFAULT_SEQ_LEN, fisher_importance

    importance = fisher_importance(model_dir, options.calibration_data, options.calibration_sequences)
    return importance, {"importance": "fisher_diagonal", "data": options.calibration_data,
                        "sequences": options.calibration_sequences, "seq_len": DEFAULT_SEQ_LEN}


def _check_activation_sparsity(options: CompileOptions, device_api: str | None) -> None:
    """--activation-sparsity's one-line errors, before any work."""
    p = options.activation_sparsity
    if p is None:
        return
    if not 0.0 < p < 1.0:
        raise LlamaAotError(f"--activation-sparsity is the fraction of projection inputs zeroed: a number strictly "
                            f"between 0 and 1 (e.g. 0.4), got {p}")
    if options.quant != "q4f16":
        raise LlamaAotError(f"--activation-sparsity needs --quant q4f16 (its K-major layout is q4f16's), got "
                            f"--quant {options.quant}")
    if device_api:
        raise LlamaAotError(f"--activation-sparsity has CPU kernels only; build for the CPU (no --device "
                            f"{device_api} / --target vulkan)")
    if options.calibration_data is None:
        raise LlamaAotError("--activation-sparsity calibrates each projection's threshold on text: give "
                            "--calibration-data FILE (UTF-8 text like the model's inputs; train: the embedded model's "
                            "training split)")
    if options.calibration_sequences <= 0:
        raise LlamaAotError(f"--calibration-sequences must be positive, got {options.calibration_sequences}")


def _sparse_inputs(model_dir: Path, options: CompileOptions) -> tuple[dict | None, dict | None]:
    """(module -> calibrated input threshold, the record for llama-aot.json), or (None, None) when dense."""
    if options.activation_sparsity is None:
        return None, None
    from compression import activation_sparsity as sp
    from compression.fisher import DEFAULT_SEQ_LEN

    sequences = min(options.calibration_sequences, sp.DEFAULT_SEQUENCES)
    thresholds = sp.calibrate_thresholds(model_dir, options.calibration_data, options.activation_sparsity,
                                         sequences, DEFAULT_SEQ_LEN)
    return thresholds, {
        "target_sparsity": options.activation_sparsity,
        "calibration": {"data": options.calibration_data, "sequences": sequences, "seq_len": DEFAULT_SEQ_LEN,
                        "threshold": "quantile of |input| in the float model"},
        "thresholds": thresholds,
    }


def _mixed_candidates(options: CompileOptions) -> dict | None:
    """--quant mixed: its candidate schemes by name (checked before any work); None for a uniform --quant, which
    refuses the mixed-only options."""
    from compression.mixed_precision import parse_candidates

    if options.quant != "mixed":
        if options.bits_per_weight is not None or options.mixed_schemes is not None or options.sensitivity is not None:
            raise LlamaAotError("--bits-per-weight, --mixed-schemes and --sensitivity set up --quant mixed; add --quant "
                                "mixed or drop them")
        return None
    bpw = options.bits_per_weight
    if bpw is not None and not (0 < bpw <= 32):
        raise LlamaAotError(f"--bits-per-weight must lie in (0, 32], got {bpw}")
    if options.sensitivity not in (None, "fisher", "loss"):
        raise LlamaAotError(f"--sensitivity takes fisher or loss, got {options.sensitivity!r}")
    return {n: get_scheme(n) for n in parse_candidates(options.mixed_schemes)}


def _mixed_assignment(model_dir, checkpoint, plan: dict, candidates: dict, importance: dict, head_scheme,
                      options: CompileOptions):
    """The per-module schemes --quant mixed chooses, and its record for llama-aot.json. The embedding and lm_head
    are chosen too, unless --keep-embedding-precision fixed them (then they are outside the budget)."""
    from compression import mixed_precision as mp
    from .model.weights import quantized_modules

    fixed = HEAD_MODULES if options.keep_embedding_precision else ()
    modules = [m for m in quantized_modules(plan) if m not in fixed]
    weights = sum(int(np.prod(checkpoint.info(n)[0])) for m in modules for n in plan[m].hf_names)
    bpw = mp.DEFAULT_BITS_PER_WEIGHT if options.bits_per_weight is None else options.bits_per_weight
    budget = int(bpw * weights / 8)
    cost, sensitivity = None, "fisher_weighted_squared_error"
    if options.sensitivity == "loss":
        from compression.fisher import DEFAULT_SEQ_LEN

        windows = min(mp.LOSS_SEQUENCES, options.calibration_sequences)
        cost = mp.LossDelta(model_dir, options.calibration_data, windows, DEFAULT_SEQ_LEN)
        sensitivity = f"calibration_loss_delta_{windows}x{DEFAULT_SEQ_LEN}"
    chosen = mp.allocate(mp.measure(checkpoint, plan, modules, candidates, importance, cost=cost), budget)
    per_module = {m: candidates[o.scheme] for m, o in chosen.items()}
    # every chosen module is listed; the body and head schemes answer only for the fixed head
    schemes = SchemeAssignment(head_scheme, head_scheme, per_module)
    record = {"bits_per_weight_budget": bpw, "candidates": list(candidates), **mp.summary(chosen, weights),
              "sensitivity": sensitivity}
    logger.info("mixed precision: %s", record)
    return schemes, record


def _warn_slow_codebooks(schemes, int8_target) -> None:
    """One line when a codebook scheme in use gets no LUT kernel on this target (``int8_target``: the target
    when int8 activations are on, else None)."""
    from schedules.cpu.int8_dot import int8_dot_isa, weight_offset

    isa = int8_dot_isa(int8_target) if int8_target is not None else None
    slow = [s.name for s in schemes if isinstance(s, CodebookScheme) and (isa is None or weight_offset(s.name, isa) is None)]
    if slow:
        logger.warning("%s has no LUT kernel for this target (cb4f16 has them on CPUs with VNNI or dotprod): its "
                       "projections run the f32 fused-dequant kernels, 10x or more slower than q4f16 "
                       "(docs/quantization.md)", ", ".join(slow))


def _kv_cache_dtype(option: str | None, activation_dtype: str, device_api: str | None) -> str:
    """``--kv-cache``: f16 halves the CPU cache's bytes (the kernels compute in f32); GPU caches hold the f16
    activations already. A one-line error for what cannot be built."""
    if option is None:
        return activation_dtype
    kinds = {"f32": "float32", "f16": "float16"}
    if option not in kinds:
        raise LlamaAotError(f"--kv-cache takes f32 or f16, got {option!r} (an int8 cache, q8, is not built yet)")
    if device_api is not None and kinds[option] != activation_dtype:
        raise LlamaAotError(f"--kv-cache {option}: a {device_api} build's cache holds its {activation_dtype} activations; "
                            "drop --kv-cache or build for the CPU")
    return kinds[option]


def _cpu_schedule_record(params, spec, dtype: str) -> dict | None:
    """The CPU schedules' facts and derived knobs, plus the decode attention tiling each distinct layer shape got
    (``CPUParams.attention_decode_tiling``, the values ``kv_kernels.fast_cpu_attention`` builds with)."""
    if params is None:
        return None
    record = params.schedule_record()
    kv_bytes = np.dtype(dtype).itemsize
    shapes = sorted({(layer.num_attention_heads, layer.num_key_value_heads) for layer in spec.layers})
    record["attention_decode"] = [
        {"num_heads": nh, "num_kv_heads": nkv, "head_dim": spec.head_dim, "kv_dtype": dtype,
         **params.attention_decode_tiling(spec.head_dim, nh // nkv, nkv, kv_bytes, PAGE_SIZE)}
        for nh, nkv in shapes
    ]
    return record


def _check_compile_memory(max_memory: int | None, conversion_bytes: int) -> None:
    """Compiling needs this process's memory now (TVM loaded, the checkpoint validated; the Relax model is small next to the weights) plus the weight conversion's
    working set (weights.conversion_peak_bytes); TVM's own growth while compiling is small next to it
    (docs/reliability.md, "Compile memory").  Refuse before any long work if --max-memory is lower."""
    import psutil

    need = psutil.Process().memory_info().rss + conversion_bytes
    logger.info("compile memory estimate: %.2f GB", need / 1e9)
    if max_memory is not None and need > max_memory:
        raise LlamaAotError(
            f"compiling this model needs about {need / 1e9:.2f} GB (the weight conversion alone "
            f"{conversion_bytes / 1e9:.2f} GB) but --max-memory is {max_memory / 1e9:.2f} GB; raise --max-memory "
            "or compile on a machine with more memory"
        )


def _cpu_features(bt) -> dict:
    """The instruction sets the CPU side of the library may use, for the runtime's check before loading
    (runtime_stubs/cpu_features.py); none for a cross (phone) target, whose triple says what it needs."""
    from tvm.target import Target

    from runtime_stubs.cpu_features import required_cpu_features
    from schedules.cpu.params import _features

    if "mtriple" in bt.host:
        return {}
    return {"cpu_features": required_cpu_features(_features(Target(bt.host)))}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-aot")
    except PackageNotFoundError:
        return "unknown"


def _compile(tvm, mod, target, pipeline):
    """tvm.compile, with codegen errors of our back ends surfacing as one-line user errors.

    GPU builds turn off TIR common-subexpression elimination: on TVM 0.27 it breaks some of the
    paged KV cache's f32 prefill kernels ("variable cse_vN has been used before definition").
    """
    import contextlib

    config = {"tirx.disable_cse_tir": True} if target.kind.name != "llvm" else {}
    errors = contextlib.nullcontext()
    if target.kind.name == "vulkan":
        from targets.backends import vulkan

        errors = vulkan.original_errors()
    with errors, tvm.transform.PassContext(opt_level=3, config=config):
        return tvm.compile(mod, target, relax_pipeline=pipeline)


def _symbol_prefix(name: str) -> str:
    """A C-identifier prefix from the model directory's name, e.g. 'tiny_llama3_'."""
    cleaned = "".join(c if c.isalnum() else "_" for c in name).strip("_") or "model"
    return (cleaned if not cleaned[0].isdigit() else f"m_{cleaned}") + "_"


def _checked(stream, shapes: dict[str, tuple[int, ...]]):
    """Refuse non-finite weights and any conversion that disagrees with the model's parameter shape."""
    for name, arr, extra in stream:
        if tuple(arr.shape) != shapes[name]:
            raise LlamaAotError(f"internal: {name} converted to shape {arr.shape}, model expects {shapes[name]}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise LlamaAotError(f"weight {name} contains NaN/Inf: the checkpoint is corrupted")
        yield name, arr, extra
