"""``llama-aot bench``: our packages next to the peers, measured in the same run on identical weights.

For each model (the embedded tiny model; a random-weight model of Llama-3.2-1B shape) and each
quantization, it compiles (timed), then measures prefill tok/s over a 128-token prompt, decode
tok/s over the 64 tokens after it and peak RSS, each engine in its own subprocess. Peers:
PyTorch eager fp32 (transformers), llama.cpp Q4_0 / f32 when its binaries are built, and
ExecuTorch + XNNPACK 8da4w when executorch is installed (bench/README.md). Decode is also printed as a fraction of the memory roofline:
weight bytes read per token x tokens/s / streaming-read bandwidth (bench/bandwidth.py, measured in its own process
at the start and the end of the run, the higher one used), for our packages and llama.cpp; "(in cache)" when the
weights fit in the last-level cache. ``--profile`` adds per-kernel-category time shares of each package
(bench/profile.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "models" / "tiny-llama3"


def measure_package(package: Path, prompt_tokens: int, gen_tokens: int, threads: int, reps: int = 2) -> dict:
    """Run in this process (call it in a subprocess for a clean peak RSS)."""
    from bench.peers import prompt_ids
    from runtime_stubs.engine import Engine, peak_rss_mb

    engine = Engine(package, num_threads=threads)
    ids = prompt_ids(prompt_tokens, engine.vocab_size)
    engine.generate(ids[:8], max_tokens=4, stop_on_eos=False)  # warm-up: page in weights
    runs = [engine.generate(ids, max_tokens=gen_tokens + 1, stop_on_eos=False) for _ in range(reps)]
    best = {
        "prefill_tok_s": max(g.prefill_tokens_per_s for g in runs),
        "decode_tok_s": max(g.decode_tokens_per_s for g in runs),
    }
    best["peak_rss_mb"] = peak_rss_mb()
    return best


def _subprocess_json(args: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ensure_1b_model(workdir: Path, vocab: int) -> Path:
    from compiler.frontend.synthetic import llama32_1b_config, write_random_checkpoint

    path = workdir / f"llama3.2-1b-shape-random-v{vocab}"
    if not (path / "config.json").is_file():
        print(f"writing random-weight Llama-3.2-1B-shape checkpoint to {path} ...", file=sys.stderr)
        write_random_checkpoint(path, llama32_1b_config(vocab_size=vocab), dtype="bfloat16", seed=0)
    return path


def ensure_gguf(model_name: str, model_dir: Path, workdir: Path, qtype: str) -> Path:
    """``workdir/<model>-<qtype>.gguf`` for llama.cpp, written (f32, then llama-quantize) unless it exists."""
    from bench import peers

    gguf = workdir / f"{model_name}-{qtype}.gguf"
    if not gguf.is_file():
        f32 = workdir / f"{model_name}-f32.gguf"
        if not f32.is_file():
            peers.write_gguf(model_dir, f32, outtype="f32")
        if qtype != "f32":
            peers.quantize_gguf(f32, gguf, qtype)
    return gguf


def compile_timed(model_dir: Path, out: Path, quant: str, threads: int, soc: str | None = None) -> tuple[float, dict]:
    """Compile for this machine (``soc``: a host file, see ``host_soc``); returns (seconds, llama-aot.json)."""
    from compiler.compile import CompileOptions, compile_model

    t0 = time.perf_counter()
    where = {"soc": soc, "device": "cpu"} if soc else {}
    compile_model(model_dir, out, CompileOptions(quant=quant, num_threads=threads, context_window=1024, **where))
    seconds = time.perf_counter() - t0
    return seconds, json.loads((out / "llama-aot.json").read_text())


def host_soc(name_or_path: str | None) -> str | None:
    """``--soc``: bench runs everything here, so only a host file (``detect = "host"``) is taken, e.g. one that pins
    ``cpu.mcpu = "haswell"`` to measure this machine as an AVX2-only CPU with its own caches (docs/socs.md)."""
    if not name_or_path:
        return None
    from runtime_stubs.errors import LlamaAotError
    from targets import load_soc

    soc = load_soc(name_or_path)
    if not soc.is_host:
        raise LlamaAotError(f"bench runs on this machine: --soc takes a host file (detect = \"host\"), not {soc.name}; "
                            "time a phone's kernels with llama-aot tune --rpc (docs/tuning.md)")
    return str(name_or_path)


def measure_bandwidth(threads: int) -> dict:
    """The streaming-read probe (bench/bandwidth.py) in its own process, like every engine."""
    from bench.bandwidth import describe, stream_prefetch_note
    from targets.cpu_facts import CPUFacts

    r = _subprocess_json(["bench.bandwidth", "--threads", str(threads), "--json"])
    print(f"memory read bandwidth: {describe(r)}", file=sys.stderr)
    note = stream_prefetch_note(r, CPUFacts.host().stream_prefetch)
    if note:
        print(note, file=sys.stderr)
    return r


def roofline(bytes_per_token: float | None, tok_s: float, bandwidth: dict) -> float | None:
    """Fraction of the memory roofline, None when the weights fit in the last-level cache (no DRAM bound)."""
    if not bytes_per_token or bytes_per_token <= bandwidth["llc_mib"] << 20:
        return None
    return tok_s * bytes_per_token / (bandwidth["gbps"] * 1e9)


def gguf_bytes_per_token(path: Path) -> int:
    """Weight bytes llama.cpp reads per decoded token: every tensor, except that an untied model reads one
    row of ``token_embd`` (a tied one reads all of it as the output projection)."""
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(path).tensors}
    total = sum(int(t.n_bytes) for t in tensors.values())
    embd = tensors.get("token_embd.weight")
    if embd is not None and "output.weight" in tensors:
        total -= int(embd.n_bytes) - int(embd.n_bytes) // int(embd.shape[-1])  # GGML order: shape[-1] = rows
    return total


def run(args) -> list[dict]:
    """One row per engine, model and weights; with ``--profile`` our rows carry their "profile"."""
    workdir = Path(args.workdir)
    soc = host_soc(getattr(args, "soc", None))
    soc_name = Path(soc).stem if soc else None  # names the packages and the rows of a --soc run
    workdir.mkdir(parents=True, exist_ok=True)
    bandwidth = measure_bandwidth(args.threads)
    models = {"tiny": TINY, "1b": None}
    rows: list[dict] = []
    for model_name in args.models.split(","):
        model_dir = models[model_name] or ensure_1b_model(workdir, args.vocab)
        for quant in args.quants.split(","):
            out = workdir / (f"pkg-{model_name}-{quant}" + (f"-{soc_name}" if soc_name else ""))
            compile_s, cfg = compile_timed(model_dir, out, quant, args.threads, soc)
            m = _subprocess_json(
                ["bench.e2e", "_measure", str(out), str(args.prompt), str(args.gen), str(args.threads)]
            )
            bytes_per_token = cfg["weights"]["bytes_read_per_decoded_token"]
            rows.append(
                {"model": model_name, "engine": "llama-aot", "weights": quant + (f" ({soc_name})" if soc_name else ""),
                 "compile_s": compile_s,
                 "bytes_per_token": bytes_per_token, **m}
            )
            print(rows[-1], file=sys.stderr)
            if args.profile:
                p = _subprocess_json(["bench.profile", str(out), "--threads", str(args.threads),
                                      "--prompt", str(args.prompt), "--json"])
                rows[-1]["profile"] = p
        rows += _peer_rows(model_name, model_dir, args, workdir)
    again = measure_bandwidth(args.threads)  # the machine's load may have changed during the run
    if abs(again["gbps"] - bandwidth["gbps"]) > 0.05 * max(again["gbps"], bandwidth["gbps"]):
        print(f"note: bandwidth moved from {bandwidth['gbps']:.1f} to {again['gbps']:.1f} GB/s during the run "
              "(other load on the machine?); the roofline uses the higher", file=sys.stderr)
    best = max((bandwidth, again), key=lambda b: b["gbps"])
    for r in rows:
        r["roofline_fraction"] = roofline(r.get("bytes_per_token"), r["decode_tok_s"], best)
        if r["roofline_fraction"] and r["roofline_fraction"] > 1.0:
            print(f"note: {r['engine']} {r['weights']} streams above the probe ({r['roofline_fraction']:.0%})",
                  file=sys.stderr)
    return rows


def _peer_rows(model_name: str, model_dir: Path, args, workdir: Path) -> list[dict]:
    from bench import peers

    rows = []
    if "torch" in args.peers:
        m = _subprocess_json(
            ["bench.peers", "torch", str(model_dir), "--prompt", str(args.prompt), "--gen", str(args.gen),
             "--threads", str(args.threads)]
        )
        rows.append({"model": model_name, "engine": "pytorch-eager", "weights": "fp32", **m})
        print(rows[-1], file=sys.stderr)
    if "llamacpp" in args.peers:
        for qtype in args.llamacpp_types.split(","):
            try:
                gguf = ensure_gguf(model_name, model_dir, workdir, qtype)
                m = peers.measure_llama_cpp(gguf, args.prompt, args.gen, args.threads)
                if m:
                    m["bytes_per_token"] = gguf_bytes_per_token(gguf)
            except Exception as e:  # a missing peer must not hide our numbers
                print(f"llama.cpp {qtype}: not measured ({e})", file=sys.stderr)
                continue
            if m:
                rows.append({"model": model_name, "engine": "llama.cpp", "weights": qtype, **m})
                print(rows[-1], file=sys.stderr)
    if "executorch" in args.peers:
        reason = peers.executorch_unavailable_reason()
        if reason:
            print(f"executorch: skipped ({reason})", file=sys.stderr)
        else:
            max_context = executorch_context(args.prompt, args.gen)
            pte = workdir / f"{model_name}-executorch-{peers.EXECUTORCH_QMODE}-g{peers.EXECUTORCH_GROUP_SIZE}-c{max_context}.pte"
            try:
                if not pte.is_file():
                    print(f"exporting {pte.name} with ExecuTorch (minutes) ...", file=sys.stderr)
                    peers.export_executorch(model_dir, pte, max_context)
                m = peers.measure_executorch(pte, args.prompt, args.gen, args.threads)
            except Exception as e:  # a missing peer must not hide our numbers
                print(f"executorch: not measured ({e})", file=sys.stderr)
            else:
                rows.append({"model": model_name, "engine": "executorch-xnnpack",
                             "weights": f"{peers.EXECUTORCH_QMODE} g{peers.EXECUTORCH_GROUP_SIZE}", **m})
                print(rows[-1], file=sys.stderr)
    return rows


PEERS = ("torch", "llamacpp", "executorch")


def parse_peers(text: str) -> list[str]:
    """``--peers`` as a list ("" -> none); unknown names are an error, not silently ignored."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in PEERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown peer(s) {', '.join(bad)}; choose from {', '.join(PEERS)}")
    return names


def executorch_context(prompt: int, gen: int) -> int:
    """KV-cache length of the exported .pte: prompt + gen rounded up to a multiple of 128
    (256 for the default 128 + 64), so one export serves nearby settings."""
    need = prompt + gen + 1
    return max(256, -(-need // 128) * 128)


def format_table(rows: list[dict]) -> str:
    lines = [
        "| model | engine | weights | prefill tok/s | decode tok/s | decode vs llama.cpp Q4_0 | roofline | peak RSS MB | compile s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = next((x for x in rows if x["model"] == r["model"] and x["engine"] == "llama.cpp" and x["weights"] == "Q4_0"), None)
        ratio = f"{r['decode_tok_s'] / ref['decode_tok_s']:.2f}x" if ref else "-"
        roof = r.get("roofline_fraction")
        roof = f"{roof:.0%}" if roof else "(in cache)" if r.get("bytes_per_token") else "-"
        comp = f"{r['compile_s']:.1f}" if "compile_s" in r else "-"
        lines.append(
            f"| {r['model']} | {r['engine']} | {r['weights']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} "
            f"| {ratio} | {roof} | {r['peak_rss_mb']:.0f} | {comp} |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="tiny,1b", help="comma list of: tiny, 1b")
    p.add_argument("--quants", default="q4f16,q0f32")
    p.add_argument("--peers", default="torch,llamacpp", type=parse_peers,
                   help="comma list of: torch, llamacpp, executorch (empty: none); executorch is skipped, "
                        "with the reason printed, when it is not installed")
    p.add_argument("--llamacpp-types", default="Q4_0,f32")
    p.add_argument("--vocab", type=int, default=128256, help="vocab of the 1B-shape model")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--gen", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--workdir", default=str(ROOT / ".work" / "bench"))
    p.add_argument("--json-out", default=None)
    p.add_argument("--long", default=None, type=parse_lengths, metavar="N,N,...",
                   help="long prompts instead: prefill of one N-token prompt and decode after it, for each N, next to "
                        "llama.cpp Q4_0 (bench/long_context.py)")
    p.add_argument("--prefill-chunk", type=int, default=128, help="with --long: the packages' prefill chunk")
    p.add_argument("--compare-knobs", default=None, metavar="KNOB=VALUE,...",
                   help="with --long: also build a package with these CPU schedule knobs set (compile --schedule-knobs) "
                        "and show it next to the derived one, e.g. the decode attention's fixed tiling "
                        "attn_decode_tile_pages=1,attn_decode_splits=1,attn_decode_prefetch_pages=0,"
                        "attn_decode_heads_per_block=1,attn_decode_keys_per_reduction=1")
    p.add_argument("--soc", default=None, metavar="HOST.toml",
                   help="compile our packages from a host file (detect = \"host\") instead of this CPU as detected, "
                        "e.g. one pinning cpu.mcpu = \"haswell\" (an AVX2-only build; pair it with LLAMA_CPP_DIR of a "
                        "llama.cpp built without AVX-512, bench/README.md)")
    p.add_argument("--profile", action="store_true",
                   help="also print where one decode step and one prefill chunk of each package spend their time, "
                        "by kernel category (bench/profile.py)")


def parse_lengths(text: str) -> list[int]:
    """``--long`` as a list of prompt lengths; a bad list is an error, not silently ignored."""
    try:
        lengths = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--long takes comma-separated prompt lengths, e.g. 512,4096; got {text!r}") from None
    if not lengths or lengths[0] < 1:
        raise argparse.ArgumentTypeError(f"--long takes positive prompt lengths, e.g. 512,4096; got {text!r}")
    return lengths


def main(args) -> int:
    from bench.profile import format_profile

    rows = run(args)
    print(format_table(rows))
    for r in (r for r in rows if "profile" in r):
        for phase in ("decode", "prefill"):
            print("\n" + format_profile(r["profile"][phase], f"{r['model']} {r['weights']}, {r['profile']['threads']} threads, "))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "_measure":
        package, prompt, gen, threads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(measure_package(Path(package), prompt, gen, threads)))
    else:
        parser = argparse.ArgumentParser(prog="python -m bench.e2e")
        add_arguments(parser)
        sys.exit(main(parser.parse_args()))
