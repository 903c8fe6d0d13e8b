"""``llama-aot``: one command, thin subcommands; each calls one function.

Imports are inside the subcommands so ``llama-aot run`` never loads the compiler
(it works with TVM's runtime-only library).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from runtime_stubs import interrupt
from runtime_stubs.errors import LlamaAotError

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "tiny-llama3"


def _cmd_compile(args) -> int:
    from compiler.compile import CompileOptions, compile_model

    options = CompileOptions(
        **_build_options(args),
        vulkan_profile=args.vulkan_profile,
        system_lib_prefix=args.system_lib_prefix,
        force_memory=args.force_memory,
        max_memory=_parse_bytes(args.max_memory, "--max-memory") if args.max_memory else None,
        context_window=args.context_window,
        tuned_db=args.tuned,
        sliding_window=args.sliding_window,
        attention_sinks=args.attention_sinks,
        calibration_data=args.calibration_data,
        calibration_sequences=args.calibration_sequences,
        bits_per_weight=args.bits_per_weight,
        mixed_schemes=args.mixed_schemes,
        sensitivity=args.sensitivity,
        activation_sparsity=args.activation_sparsity,
    )
    t0 = time.perf_counter()
    out = compile_model(args.model_dir, args.output, options)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _build_options(args) -> dict:
    """The CompileOptions fields compile and tune share (what to build for, how to quantize)."""
    return dict(
        target=args.target, soc=args.soc, device=args.device, quant=args.quant, prefill_chunk=args.prefill_chunk,
        keep_embedding_precision=args.keep_embedding_precision, num_threads=args.threads,
        int8_activations=False if args.f32_activations else None, cpu_facts=args.cpu_facts,
        schedule_knobs=args.schedule_knobs, kv_cache=args.kv_cache,
    )


def _add_build_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments behind ``_build_options``."""
    p.add_argument("--target", default="host", help="host (this CPU) or vulkan (this CPU + its Vulkan device)")
    p.add_argument("--soc", default=None, help="build for a phone SoC from `llama-aot targets` (or a .toml path)")
    p.add_argument("--cpu-facts", default=None, metavar="KEY=VALUE,...",
                   help="override the cache facts the CPU schedules derive from, e.g. l1d=48K,l2=1M,l3=32M,l1d_ways=12")
    p.add_argument("--schedule-knobs", default=None, metavar="KNOB=VALUE,...",
                   help="set CPU schedule knobs instead of deriving them, e.g. attn_decode_splits=2,gemv_rows=4 "
                   "(names: `llama-aot targets host --schedules`)")
    p.add_argument("--kv-cache", default=None, metavar="f32|f16",
                   help="the KV cache's element type on CPUs (default: the activations', f32): f16 halves its memory "
                        "and the bytes decode attention reads")
    p.add_argument("--device", default=None, help="with --soc: cpu, gpu (its preferred API), opencl, vulkan or metal")
    p.add_argument("--quant", default="q4f16", help="q0f32, q0f16, q8f16, q4f16, the codebook schemes cb8f16, cb4f16, cb3f16, or mixed "
                   "(a scheme per tensor by sensitivity, compile only) (docs/quantization.md; default q4f16)")
    p.add_argument("--prefill-chunk", type=int, default=128, help="max tokens per prefill call")
    p.add_argument("--keep-embedding-precision", action="store_true", help="store embedding and lm_head as q0f16")
    p.add_argument("--threads", type=int, default=None, help="cores the library is tuned for")
    p.add_argument(
        "--f32-activations", action="store_true",
        help="keep projection inputs in f32 (default with q4f16 on CPUs with an int8 dot product -- x86 AVX2, "
        "AVX-VNNI, AVX-512 VNNI or AArch64 dotprod: int8 per group of 32)",
    )


def _open_engine(args):
    """The package of run, chat and serve, loaded as _add_load_arguments says."""
    from runtime_stubs.engine import Engine

    return Engine(args.package, num_threads=args.threads, verify=args.verify, vulkan_device=args.device,
                  trusted_keys=args.trusted_keys)


def _add_sampling_and_load_arguments(p: argparse.ArgumentParser) -> None:
    """How to sample and how to load the package: shared by run and chat."""
    p.add_argument("--greedy", action="store_true")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=None)
    _add_load_arguments(p)


def _add_load_arguments(p: argparse.ArgumentParser) -> None:
    """How to load a package: run, chat and serve."""
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--verify", action="store_true",
                   help="hash every weight shard in full (default: sizes and first/last MiB; libraries always in full)")
    p.add_argument("--trusted-keys", default=None, metavar="DIR",
                   help="refuse the package unless a public key (*.pub) in DIR signed it (`llama-aot sign`)")
    p.add_argument("--device", default=None, help="Vulkan packages: device index or name substring (default: first)")


def _parse_bytes(text: str, flag: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise LlamaAotError(f"{flag} must be a size like 6G, 512M or 1048576, got {text!r}")
    return int(float(m.group(1)) * 1024 ** "_KMGT".index(m.group(2).upper() or "_"))


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise LlamaAotError(f"--prompt-ids must be comma-separated integers, got {text!r}") from None


def _cmd_keygen(args) -> int:
    from runtime_stubs.signing import generate_key

    private, public = generate_key(args.name)
    print(f"wrote {private} (keep it secret) and {public} (copy it into the --trusted-keys directory of the apps)")
    return 0


def _cmd_sign(args) -> int:
    from runtime_stubs.signing import sign_package

    print(f"wrote {sign_package(args.package, args.key)}")
    return 0


def _cmd_run(args) -> int:
    import numpy as np

    from runtime_stubs.engine import peak_rss_mb

    engine = _open_engine(args)
    loaded = _boot_clock()  # process start to here: imports, checks, library, weights mapped
    if args.verbose:
        print(json.dumps(engine.device_description()), file=sys.stderr)
    if args.prompt_ids is not None:
        prompt_ids = _parse_ids(args.prompt_ids)
    elif args.prompt is not None:
        prompt_ids = engine.encode(args.prompt)
    else:
        raise LlamaAotError("give a prompt: --prompt TEXT or --prompt-ids 1,2,3")
    temperature = 0.0 if args.greedy else args.temperature
    stream = not args.json and (engine.package_dir / "tokenizer.json").is_file()
    printed = [""]
    generated: list[int] = []

    def on_token(token: int) -> None:
        generated.append(token)
        if stream:
            text = engine.decode_text(generated)
            sys.stdout.write(text[len(printed[0]) :])
            sys.stdout.flush()
            printed[0] = text

    if stream and args.prompt is not None:
        sys.stdout.write(args.prompt)
    gen = engine.generate(
        prompt_ids,
        max_tokens=args.max_tokens,
        temperature=temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop_on_eos=not args.ignore_eos,
        keep_logits=args.dump_logits is not None,
        on_token=on_token,
    )
    if args.dump_logits:
        np.save(args.dump_logits, np.stack(gen.logits) if gen.logits else np.zeros((0, engine.vocab_size)))
    if args.json:
        print(json.dumps({**gen.to_json(), "ready_seconds": loaded - _process_start()}))
    else:
        if not stream:
            print(",".join(map(str, gen.token_ids)))
        print(
            f"\n[prefill {len(gen.prompt_ids)} tok at {gen.prefill_tokens_per_s:.1f} tok/s, "
            f"decode {gen.decode_steps} tok at {gen.decode_tokens_per_s:.1f} tok/s, "
            f"peak RSS {peak_rss_mb():.0f} MB]",
            file=sys.stderr,
        )
    return 0


def _boot_clock() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.time()


def _process_start() -> float:
    """When this process started, on _boot_clock: /proc/self/stat's start time (clock ticks since boot) on
    Linux; psutil elsewhere (its boot time is whole seconds on Linux, too coarse for a start-up figure)."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        import psutil

        return psutil.Process().create_time()


def _cmd_chat(args) -> int:
    from runtime_stubs.chat import Chat

    engine = _open_engine(args)
    chat = Chat(engine, system=args.system)
    sampling = dict(max_tokens=args.max_tokens, temperature=0.0 if args.greedy else args.temperature,
                    top_p=args.top_p, seed=args.seed, stop=[s.encode().decode("unicode_escape") for s in args.stop])
    interactive = sys.stdin.isatty()
    if interactive:
        print("type a message; a line ending in \\ continues it; /reset, /stats, /quit", file=sys.stderr)
    lines: list[str] = []
    while True:
        if interactive:
            print("... " if lines else "> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if line.endswith("\\"):
            lines.append(line[:-1])
            continue
        text = "\n".join([*lines, line])
        lines = []
        command = text.strip()
        if command in ("/quit", "/exit"):
            break
        if command == "/reset":
            chat.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if command == "/stats":
            print(f"[{chat.stats_text()}]", file=sys.stderr)
            continue
        if not command:
            continue
        chat.send(text, on_text=lambda piece: (sys.stdout.write(piece), sys.stdout.flush()), **sampling)
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


def _cmd_serve(args) -> int:
    from runtime_stubs.server import serve

    engine = _open_engine(args)
    serve(engine, args.host, args.port, args.model_name or Path(args.package).resolve().name)
    return 0


def _cmd_bench(args) -> int:
    if args.long and args.soc:
        raise LlamaAotError("bench: --soc applies to the default comparison, not to --long; drop one of them")
    if args.long:
        from bench.long_context import main as long_main

        return long_main(args)
    from bench.e2e import main as bench_main

    return bench_main(args)


def _cmd_eval(args) -> int:
    from evaluation.documents import load_documents
    from evaluation.perplexity import evaluate, open_scorer

    documents = load_documents(args.data)  # before the model loads: a bad --data fails at once
    scorer = open_scorer(args.model, args.threads)
    result = evaluate(scorer, documents, args.data, args.context, args.max_tokens, model_name=str(args.model))
    print(f"{args.model} ({result.kind}, {result.quant}) on {args.data}: perplexity {result.perplexity:.4f}, "
          f"{result.bits_per_byte:.4f} bits/byte over {result.tokens} tokens ({result.bytes} bytes, "
          f"{result.documents} documents, context {result.context}) in {result.seconds:.1f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_json()))
    return 0


def _cmd_prune(args) -> int:
    from compression.prune import PruneOptions, prune

    options = PruneOptions(target_params=args.target_params, method=args.method, steps=args.steps,
                           recovery_steps=args.recovery_steps, budget_minutes=args.budget_minutes, batch=args.batch,
                           seq_len=args.seq_len, lr=args.lr, data=args.data, seed=args.seed,
                           save_every=args.save_every)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    r = prune(args.model_dir, args.output, options)
    ne = r["non_embedding_params"]
    print(f"wrote {args.output}: non-embedding parameters {ne['before']:,} -> {ne['after']:,} ({ne['kept']:.1%} kept, "
          f"target {ne['target']:.1%}); embedding {r['embedding_params']:,} (kept whole); total "
          f"{r['total_params']['before']:,} -> {r['total_params']['after']:,}; layers kept {r['layers_kept']} "
          f"in {r['seconds']:.0f} s", file=sys.stderr)
    return 0


def _cmd_targets(args) -> int:
    from targets.describe import list_text, show_text

    if args.schedules:
        from schedules.describe import cpu_schedules_text
        from targets import list_socs, load_soc

        socs = [load_soc(args.name)] if args.name else list_socs()
        print("\n\n".join(cpu_schedules_text(soc) for soc in socs))
        return 0
    print(show_text(args.name, args.weight_bytes_per_token) if args.name else list_text())
    return 0


def _cmd_tune(args) -> int:
    from schedules.tuning import report_text, tune

    from compiler.compile import CompileOptions

    options = CompileOptions(**_build_options(args))
    kinds = [k for k in args.kinds.split(",") if k] if args.kinds else None
    report = tune(args.model_dir, options, args.db, trials=args.trials, rpc=args.rpc, key=args.key,
                  cost_model=args.cost_model, kinds=kinds, max_tasks=args.max_tasks, seed=args.seed)
    print(report_text(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def _add_tune_parser(sub) -> None:
    u = sub.add_parser("tune", help="measure our schedules' knobs per kernel for a SoC and keep the best in a database")
    u.add_argument("model_dir", nargs="?", default=str(DEFAULT_MODEL), help="checkpoint dir (default: embedded tiny model)")
    _add_build_arguments(u)  # as for compile; with --soc the kernels are timed over --rpc, or ranked (--cost-model)
    u.add_argument("--trials", type=int, default=16, help="candidates measured per kernel, the derived one included (default 16)")
    u.add_argument("--rpc", default=None, metavar="HOST:PORT", help="a TVM RPC tracker; jobs go to every server under --key")
    u.add_argument("--key", default=None, help="the tracker key of the devices (default: the SoC name)")
    u.add_argument("--db", default="tuning-db", metavar="DIR", help="database directory, one DIR/<soc>.json per SoC (default ./tuning-db)")
    u.add_argument("--cost-model", action="store_true", help="no device: rank candidates by the analytic cost model")
    u.add_argument("--kinds", default=None, help="only these kernel kinds: dequant_gemv,dequant_gemm,int8_gemv,int8_gemm")
    u.add_argument("--max-tasks", type=int, default=None, help="only the N heaviest kernels")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    u.set_defaults(func=_cmd_tune)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llama-aot", description="Ahead-of-time compiler for Llama 3 checkpoints")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile a Hugging Face Llama 3 checkpoint into a package")
    c.add_argument("model_dir", nargs="?", default=str(DEFAULT_MODEL), help="checkpoint dir (default: embedded tiny model)")
    c.add_argument("-o", "--output", required=True, help="package directory to write")
    _add_build_arguments(c)
    c.add_argument(
        "--vulkan-profile",
        default=None,
        metavar="FILE.json|NAME",
        help="with --target vulkan: build for the Vulkan device this profile describes instead of this machine's "
        "(write one with `python -m runtime_stubs.vulkan --profile FILE.json`; shipped: targets/vulkan_profiles)",
    )
    c.add_argument("--system-lib-prefix", default=None, help="symbol prefix of a phone library (default: from the model dir)")
    c.add_argument("--force-memory", action="store_true", help="build even if the memory plan exceeds the SoC's memory")
    c.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="refuse up front if compiling would need more memory than SIZE (e.g. 6G, 512M)")
    c.add_argument("--context-window", type=int, default=None, help="max tokens per sequence")
    c.add_argument("--sliding-window", type=int, default=None, metavar="W",
                   help="every query sees the first S tokens and the most recent W - S (docs/long-context.md); "
                        "generation then goes on past the context window with flat memory (CPU targets)")
    c.add_argument("--attention-sinks", type=int, default=None, metavar="S",
                   help="with --sliding-window: the first tokens every query keeps seeing (default 4)")
    c.add_argument("--calibration-data", default=None, metavar="train|FILE",
                   help="codebook schemes (cb*): weight the k-means by the Fisher information of this text "
                        "(train: the embedded model's training split; FILE: UTF-8 text). Default: unweighted")
    c.add_argument("--calibration-sequences", type=int, default=256, metavar="N",
                   help="calibration windows of 256 tokens (default 256)")
    c.add_argument("--bits-per-weight", type=float, default=None, metavar="B",
                   help="--quant mixed: average stored bits per quantized weight, scales included (default 4.5, q4f16's size)")
    c.add_argument("--mixed-schemes", default=None, metavar="S,S,...",
                   help="--quant mixed: the schemes it chooses among per tensor (default q8f16,q4f16,cb4f16,cb3f16)")
    c.add_argument("--sensitivity", default=None, metavar="fisher|loss",
                   help="--quant mixed: rank tensors by their Fisher-weighted error (fisher, default) or by the "
                        "calibration loss each one alone adds (loss: one forward pass per tensor and scheme)")
    c.add_argument("--activation-sparsity", type=float, default=None, metavar="P",
                   help="zero the fraction P of every projection's inputs by a magnitude threshold calibrated on "
                        "--calibration-data; decode then skips their weight rows (q4f16, CPU; docs/quantization.md)")
    c.add_argument("--tuned", default=None, metavar="DB",
                   help="apply the records of a `llama-aot tune` database directory (its file for this target)")
    c.set_defaults(func=_cmd_compile)

    r = sub.add_parser("run", help="generate with a compiled package")
    r.add_argument("package")
    r.add_argument("--prompt", default=None)
    r.add_argument("--prompt-ids", default=None, help="comma-separated token ids")
    r.add_argument("--max-tokens", type=int, default=64)
    r.add_argument("--ignore-eos", action="store_true", help="keep generating after an end-of-text token")
    r.add_argument("--json", action="store_true", help="print generated ids and timings as JSON")
    r.add_argument("--dump-logits", default=None, metavar="PATH.npy", help="save logits of every generated position")
    _add_sampling_and_load_arguments(r)
    r.add_argument("--verbose", action="store_true", help="print the device and its limits")
    r.set_defaults(func=_cmd_run)

    h = sub.add_parser("chat", help="talk to a compiled package: multi-turn with its chat template, the KV cache kept "
                                    "across turns (reads messages from stdin)")
    h.add_argument("package")
    h.add_argument("--system", default=None, help="system prompt")
    h.add_argument("--max-tokens", type=int, default=256, help="per reply")
    h.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end a reply at this text (repeatable; \\n escapes work), besides the end-of-turn tokens")
    _add_sampling_and_load_arguments(h)
    h.set_defaults(func=_cmd_chat)

    v = sub.add_parser("serve", help="serve a compiled package over OpenAI-compatible HTTP (/v1/chat/completions, "
                                     "/v1/completions, /v1/models)")
    v.add_argument("package")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed when ready)")
    v.add_argument("--model-name", default=None, help="the model id clients ask for (default: the package's folder name)")
    _add_load_arguments(v)
    v.set_defaults(func=_cmd_serve)

    b = sub.add_parser("bench", help="benchmark packages next to PyTorch and llama.cpp (same run, same weights)")
    from bench.e2e import add_arguments

    add_arguments(b)
    b.set_defaults(func=_cmd_bench)

    e = sub.add_parser("eval", help="perplexity and bits per byte of a package (through its library) or a checkpoint "
                                    "(through transformers) on held-out text")
    e.add_argument("model", nargs="?", default=str(DEFAULT_MODEL),
                   help="a compiled package or a Hugging Face checkpoint dir (default: the embedded tiny model)")
    e.add_argument("--data", default="heldout", metavar="heldout|FILE",
                   help="heldout: the embedded model's held-out CPython files (models/tiny-llama3/TRAINING.md); "
                        "or a UTF-8 text file")
    e.add_argument("--context", type=int, default=256,
                   help="tokens predicted per window; each window starts a fresh sequence (default 256, the "
                        "embedded model's training length)")
    e.add_argument("--max-tokens", type=int, default=None, help="stop after this many predicted tokens")
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--json", action="store_true", help="also print the result as one JSON line on stdout")
    e.set_defaults(func=_cmd_eval)

    q = sub.add_parser("prune", help="structured pruning (KV groups, FFN channels, layers) to a parameter target, "
                                     "then recovery by distillation: a checkpoint with per-layer shapes")
    q.add_argument("model_dir", nargs="?", default=str(DEFAULT_MODEL), help="checkpoint dir (default: embedded tiny model)")
    q.add_argument("-o", "--output", required=True, help="checkpoint directory to write")
    q.add_argument("--target-params", type=float, default=0.65,
                   help="fraction of the non-embedding parameters to keep (the embedding is quantized, not pruned)")
    q.add_argument("--method", default="l0", help="l0: learned hard-concrete gates (default); taylor: one-shot "
                                                   "first-order importance")
    q.add_argument("--steps", type=int, default=200, help="l0: gate-learning steps; taylor: importance batches")
    q.add_argument("--recovery-steps", type=int, default=200, help="distillation steps after the cut")
    q.add_argument("--budget-minutes", type=float, default=None, help="cut both phases' steps to fit this time")
    q.add_argument("--batch", type=int, default=16)
    q.add_argument("--seq-len", type=int, default=256)
    q.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the weights")
    q.add_argument("--data", default="train", metavar="train|FILE",
                   help="training text: the embedded model's training split, or a UTF-8 text file")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--save-every", type=int, default=25, metavar="N",
                   help="save a resumable state every N steps (rerun the same command to resume)")
    q.add_argument("--threads", type=int, default=None)
    q.set_defaults(func=_cmd_prune)

    t = sub.add_parser("targets", help="list known SoCs, or show one with its TVM targets")
    t.add_argument("name", nargs="?", default=None)
    t.add_argument("--weight-bytes-per-token", type=float, default=None, help="print the decode ceiling for this model size")
    t.add_argument("--schedules", action="store_true",
                   help="print the schedule parameters derived from the SoC's facts (all SoCs without NAME)")
    t.set_defaults(func=_cmd_targets)

    _add_tune_parser(sub)

    k = sub.add_parser("keygen", help="create an ed25519 signing key pair: NAME.key (private) and NAME.pub")
    k.add_argument("name", help="path prefix of the two files, e.g. keys/release")
    k.set_defaults(func=_cmd_keygen)

    g = sub.add_parser("sign", help="sign a package (PKG/signature.json) after checking every file in full")
    g.add_argument("package")
    g.add_argument("--key", required=True, help="private key from `llama-aot keygen` (NAME.key)")
    g.set_defaults(func=_cmd_sign)
    return p


RUNTIME_COMMANDS = ("run", "chat", "serve")


def _runtime_only_process() -> None:
    """For a process that only runs a package: TVM's runtime library instead of the compiler's
    (``TVM_USE_RUNTIME_LIB=1``, as on a device), and none of the optional imports below. Only in the CLI's
    own process (``main`` without argv): a library user or a test process may still want them. Measured
    in docs/chat.md (import of the runtime 4.0 s -> 0.5 s)."""
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    # `import X` then raises ImportError, and tvm_ffi / tvm.runtime go on without X: torch (DLPack interop)
    # and ml_dtypes (numpy views of bfloat16/float8/int4 tensors; packages hand the host only f32/f16/int
    # arrays) are optional to them and cost 1.7 s and 0.7 s of start-up
    for optional in ("torch", "ml_dtypes"):
        if optional not in sys.modules:
            sys.modules[optional] = None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None and args.command in RUNTIME_COMMANDS:
        _runtime_only_process()
    interrupt.install()
    try:
        return args.func(args)
    except LlamaAotError as e:
        if interrupt.requested():
            print("error: interrupted", file=sys.stderr)
            return 130
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not interrupt.is_interrupt(e):
            raise
        print("error: interrupted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130

