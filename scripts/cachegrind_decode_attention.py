#!/usr/bin/env python3
"""Cache-simulated decode attention: does the tiling derived for a SoC's caches miss less in them than the tiling
derived for another SoC? (docs/cachegrind-decode-attention.md has the method and the results.)

The kernel is ``compiler/model/kv_kernels.paged_decode_cpu`` at the 1B shape (8 KV heads, 32 query heads,
head_dim 64, float32 pages of 16 tokens: what CPU packages use), one new token over ``--context`` cached keys,
built for one ISA for every SoC (AVX2 + FMA, ``-mcpu=haswell``, which valgrind executes) with
``CPUParams.for_build(..., facts=<that SoC's facts>).attention_decode_tiling(...)``: only the cache- and
core-derived knobs differ (tile pages, splits, prefetch pages; the register knobs follow the ISA). Each
library runs under the caches of every SoC in ``--socs`` (D1 = its L1d, LL = its L2 per core, as
``scripts/cachegrind_tilings.py``, whose valgrind plumbing this reuses: callgrind's cache simulator, counting
only the kernel call, caches emptied before each call, results checked against numpy). Valgrind runs one
thread: the splits run one after another, which changes the order of the work, not its amount; cachegrind
does not simulate software prefetches (they are counted as instructions only).

Usage: python scripts/cachegrind_decode_attention.py [--socs a,b,c] [--context 2048] [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import cachegrind_tilings as cg  # noqa: E402  (the shared valgrind plumbing)

H_KV, H_Q, D, PAGE = 8, 32, 64, 16
DEFAULT_SOCS = ("snapdragon-8-gen-3", "apple-a17-pro", "snapdragon-8-elite")


def tiling_for(facts) -> dict:
    """The decode tiling ``llama-aot compile --soc`` derives for these facts on the AVX2 ISA of the runs."""
    from tvm.target import Target  # pylint: disable=import-outside-toplevel

    from schedules.cpu.params import CPUParams  # pylint: disable=import-outside-toplevel

    target = Target({**cg.HASWELL, "num-cores": facts.num_cores or 1})
    return CPUParams.for_build(target, facts).attention_decode_tiling(D, H_Q // H_KV, H_KV, 4, PAGE)


def label(t: dict) -> str:
    return f"tile {t['tile_pages']} pages, {t['splits']} split(s), prefetch {t['prefetch_pages']}, GB {t['heads_per_block']}, KU {t['keys_per_reduction']}"


def build(tiling: dict, work: Path, tag: str) -> tuple[Path, str]:
    import tvm  # pylint: disable=import-outside-toplevel
    from tvm.target import Target  # pylint: disable=import-outside-toplevel

    from compiler.model.kv_kernels import paged_decode_cpu  # pylint: disable=import-outside-toplevel

    symbol = f"{cg.SYMBOL_PREFIX}attn_{tag}"
    func = paged_decode_cpu(H_KV, H_Q, D, "float32", {}, PAGE, pages_per_tile=tiling["tile_pages"],
                            splits=tiling["splits"], prefetch=tiling["prefetch_pages"],
                            heads_per_block=tiling["heads_per_block"], keys_per_reduction=tiling["keys_per_reduction"])
    lib = tvm.compile(tvm.IRModule({symbol: func.with_attr("global_symbol", symbol)}), target=Target(cg.HASWELL))
    path = work / f"{symbol}.so"
    lib.export_library(str(path))
    return path, symbol


def drive(argv: list[str]) -> int:
    """Inside valgrind: the page pool, one call per library between the client requests, checked against numpy."""
    sys.modules["torch"] = None  # tvm_ffi imports them when installed; under valgrind that costs billions of instructions
    sys.modules["ml_dtypes"] = None
    import tvm.runtime as rt  # pylint: disable=import-outside-toplevel

    job = json.loads(Path(argv[0]).read_text())
    ctx = job["context"]
    n_pages = -(-ctx // PAGE)
    last = ctx - (n_pages - 1) * PAGE
    rng = np.random.default_rng(0)
    pages = rng.standard_normal((n_pages + 4, 2, H_KV, PAGE, D)).astype(np.float32)
    ids = rng.permutation(n_pages + 4)[:n_pages].astype(np.int32)  # pages scattered in the pool, as in the cache
    q = rng.standard_normal((1, H_Q, D)).astype(np.float32)
    keys = pages[ids, 0].transpose(1, 0, 2, 3).reshape(H_KV, -1, D)[:, :ctx].astype(np.float64)
    vals = pages[ids, 1].transpose(1, 0, 2, 3).reshape(H_KV, -1, D)[:, :ctx].astype(np.float64)
    dev = rt.cpu()
    args = [rt.tensor(a, dev) for a in (q, pages, np.array([0, n_pages], np.int32), ids, np.array([last], np.int32),
                                        np.zeros(1, np.int32), np.array([ctx], np.int32))]
    ctl = ctypes.CDLL(job["ctl"])
    for c in job["calls"]:
        out = rt.tensor(np.zeros((1, H_Q, D), np.float32), dev)
        lse = rt.tensor(np.zeros((1, H_Q), np.float32), dev)
        fn = rt.load_module(c["lib"])[c["symbol"]]
        ctl.cg_start()
        fn(*args, out, lse, 0, 1.0, 1e4, float(1 / np.sqrt(D)))
        ctl.cg_dump(c["tag"].encode())
        ctl.cg_stop()
        err = 0.0
        for h in (0, 5, H_Q - 1):
            s = keys[h // (H_Q // H_KV)] @ q[0, h] / np.sqrt(D)
            p = np.exp(s - s.max())
            err = max(err, float(np.abs(out.numpy()[0, h] - (p / p.sum()) @ vals[h // (H_Q // H_KV)]).max()))
        print("CGRESULT " + json.dumps({"tag": c["tag"], "ok": err < 1e-4, "err": err,
                                        "on_valgrind": bool(ctl.cg_on_valgrind())}), flush=True)
    return 0


def run_sim(sim, calls: list[tuple[Path, str, str]], ctl: Path, work: Path, context: int) -> dict:
    """One valgrind process under one SoC's caches: every library called once, caches emptied before each."""
    name = f"attn.{sim.soc}"
    out_file = work / f"callgrind.{name}.out"
    for old in work.glob(f"callgrind.{name}.out*"):
        old.unlink()
    job = work / f"job.{name}.json"
    job.write_text(json.dumps({"context": context, "ctl": str(ctl),
                               "calls": [{"lib": str(so), "symbol": sym, "tag": tag} for so, sym, tag in calls]}))
    cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--instr-atstart=no", "--collect-atstart=no",
           f"--toggle-collect=__tvm_ffi_{cg.SYMBOL_PREFIX}*", *sim.args(), f"--callgrind-out-file={out_file}",
           cg.find_python(), str(Path(__file__).resolve()), "_drive", str(job)]
    proc = subprocess.run(cmd, env=cg.driver_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"valgrind failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("CGRESULT "):
            r = json.loads(line[len("CGRESULT "):])
            results[r["tag"]] = r
    dumps = {}
    for f in work.glob(f"callgrind.{name}.out*"):
        c = cg.parse_callgrind(f)
        trigger = (c["trigger"] or "").replace("Client Request: ", "")
        dumps[trigger] = c
    out = {}
    for _, _, tag in calls:
        r = results.get(tag)
        if not r or not r["on_valgrind"] or not r["ok"]:
            raise RuntimeError(f"{tag} under {sim.soc}: {r}")
        out[tag] = cg.derived(dumps[tag])
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_drive":
        return drive(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--socs", default=",".join(DEFAULT_SOCS))
    ap.add_argument("--context", type=int, default=2048, help="cached keys the new token attends to")
    ap.add_argument("--work", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    t0 = time.time()
    prepared = cg.prepare(a.work, "cg-attn-")
    if prepared is None:
        return 2
    work, ctl = prepared
    socs = [s.strip() for s in a.socs.split(",") if s.strip()]
    facts = {s: cg.load_facts(s) for s in socs}
    tilings = {s: tiling_for(facts[s]) for s in socs}
    libs: dict[str, tuple[Path, str]] = {}
    for s in socs:
        key = json.dumps(tilings[s], sort_keys=True)
        if key not in libs:
            libs[key] = build(tilings[s], work, f"t{len(libs)}")
    calls = [(so, sym, key) for key, (so, sym) in libs.items()]
    table = {}
    for s in socs:
        sim = cg.sim_for(s, facts[s], "l2")
        print(f"simulating {sim.label()} ...", file=sys.stderr, flush=True)
        table[s] = (sim, run_sim(sim, calls, ctl, work, a.context))
    lines = [f"Decode attention, 1B shape (8 KV heads, 32 query heads, head_dim 64, f32 pages), {a.context} cached "
             "keys, AVX2; D1 misses / LL misses / instructions of one call (own tiling in bold).", "",
             "| simulated caches | " + " | ".join(f"tiling for {s}: {label(tilings[s])}" for s in socs) + " |",
             "|---|" + "---:|" * len(socs)]
    for s, (sim, res) in table.items():
        cells = []
        for t in socs:
            r = res[json.dumps(tilings[t], sort_keys=True)]
            cell = f"{cg.fmt(r['D1'])} / {cg.fmt(r['LL'])} / {r['Ir'] / 1e6:.2f} M"
            cells.append(f"**{cell}**" if t == s else cell)
        lines.append(f"| {sim.label()} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(f"({time.time() - t0:.0f} s; {cg.valgrind_version()})", file=sys.stderr)
    if a.json:
        Path(a.json).write_text(json.dumps({"context": a.context, "tilings": tilings,
                                            "results": {s: res for s, (_, res) in table.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
