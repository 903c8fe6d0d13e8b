#!/usr/bin/env python3
"""Measure, under valgrind's cache simulator, whether the tiling derived for a SoC's caches misses less in
those caches than the tiling derived for another SoC (docs/cachegrind-tilings.md has the method and results).

For every kernel (1B-shape dequant GEMV and GEMM, q4f16p planar and q4f16 sequential) and every facts set in
``--socs``, the kernel is scheduled with ``CPUParams.from_target(HASWELL, facts=<that SoC's facts>)``: the
same ISA for all (AVX2 + FMA, which valgrind executes; it cannot execute AVX-512), only the cache-derived
knobs differ. Facts sets that derive the same tiling for a kernel share one library. Each library is then run
under the caches of every SoC in ``--socs``: ``--D1`` = its L1d, ``--LL`` = its L2 per core (``--ll l3``: its
last level), associativity adjusted where needed so that the set count is a power of two (the simulator
requires it; every adjustment is printed).

Counting only the kernel: valgrind 3.19's cachegrind has no ``--toggle-collect`` (a callgrind option) and no
start/stop client requests, so the runs use callgrind with ``--cache-sim=yes`` (its simulator is derived from
cachegrind's: write-allocate LRU I1/D1/LL, the same ``--D1``/``--LL`` options): ``--instr-atstart=no`` (no
simulation while Python, numpy and the TVM runtime start), ``CALLGRIND_START_INSTRUMENTATION`` from a small C
helper right before each call (switching instrumentation on empties the simulated caches: every call starts
cold), ``--toggle-collect=__tvm_ffi_cgk_*`` (only the kernel call is counted: its parallel body, the runtime's
parallel launch and workspace allocation) and one ``CALLGRIND_DUMP_STATS_AT`` per call. ``--crosscheck``
repeats one pair with ``--tool=cachegrind`` on the whole process minus a run that skips the call.

The driver is this file run as ``_drive`` with ``TVM_USE_RUNTIME_LIB=1`` (only libtvm_runtime is loaded), one
thread, and torch / ml_dtypes kept out (tvm_ffi imports them when installed; under valgrind that is billions
of instructions of ufunc registration). It checks a few output columns against numpy.

Usage: python scripts/cachegrind_tilings.py [--socs a,b,c] [--kernels all|gemv|gemm|NAME,...]
       [--gemm-rows 24] [--gemm-n 2048] [--ll l2|l3] [--what-if SOC:KNOB=V[+KNOB=V]]... [--breakdown]
       [--crosscheck] [--jobs 2] [--work DIR] [--json OUT.json]
The default run (6 kernels x 3 SoCs, 42 measurements) takes about 8.5 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SYMBOL_PREFIX = "cgk_"
HASWELL = {"kind": "llvm", "mcpu": "haswell", "num-cores": 1}
DEFAULT_SOCS = ("snapdragon-8-gen-3", "apple-a17-pro", "host")
I1 = (32768, 8, 64)  # instruction cache: the same for every run (not what is compared)

CTL_SOURCE = r"""
#include <valgrind/callgrind.h>
void cg_start(void) { CALLGRIND_START_INSTRUMENTATION; }
void cg_stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
void cg_dump(const char* tag) { CALLGRIND_DUMP_STATS_AT(tag); }
int cg_on_valgrind(void) { return RUNNING_ON_VALGRIND; }
"""
EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")


# ------------------------------------------------------------------------------------------ kernels
@dataclass(frozen=True)
class Kernel:
    kind: str  # "gemv" (decode, one row) or "gemm" (prefill, symbolic rows called with `rows`)
    scheme: str  # "q4f16p" planar nibbles or "q4f16" sequential
    k: int
    n: int
    rows: int

    @property
    def name(self) -> str:
        rows = "" if self.kind == "gemv" else f"S{self.rows}-"
        return f"{self.kind}-{self.scheme}-{rows}K{self.k}-N{self.n}"


def default_kernels(gemm_rows: int, gemm_n: int) -> list[Kernel]:
    out = []
    for scheme in ("q4f16p", "q4f16"):
        out += [Kernel("gemv", scheme, 2048, 2048, 1), Kernel("gemv", scheme, 8192, 2048, 1)]
    for scheme in ("q4f16p", "q4f16"):
        out.append(Kernel("gemm", scheme, 2048, gemm_n, gemm_rows))
    return out


# ------------------------------------------------------------------------------------------ facts
@dataclass(frozen=True)
class Sim:
    """One simulated cache configuration (valgrind option values) and what it was derived from."""

    soc: str
    d1: tuple[int, int, int]
    ll: tuple[int, int, int]
    ll_level: str
    notes: tuple[str, ...] = ()

    def args(self) -> list[str]:
        return [f"--I1={I1[0]},{I1[1]},{I1[2]}", f"--D1={self.d1[0]},{self.d1[1]},{self.d1[2]}",
                f"--LL={self.ll[0]},{self.ll[1]},{self.ll[2]}"]

    def label(self) -> str:
        def c(t):
            size = f"{t[0] // 1024 // 1024} MiB" if t[0] >= 1 << 20 else f"{t[0] // 1024} KiB"
            return f"{size} {t[1]}-way {t[2]} B"

        return f"{self.soc}: D1 {c(self.d1)}, LL({self.ll_level}) {c(self.ll)}"


def pow2_ways(size: int, ways: int, line: int) -> tuple[int, str | None]:
    """Associativity for the simulator: `ways` if size / (ways * line) is a power of two, else the nearest
    one that makes it so (the simulator's requirement), with a note."""

    def ok(w):
        if w <= 0 or size % (w * line):
            return False
        sets = size // (w * line)
        return sets >= 1 and sets & (sets - 1) == 0

    if ok(ways):
        return ways, None
    for delta in range(1, 64):
        for w in (ways - delta, ways + delta):
            if ok(w):
                return w, f"{size // 1024} KiB {ways}-way has {size / (ways * line):g} sets: simulated {w}-way"
    raise ValueError(f"no associativity gives a power-of-two set count for {size} B / {line} B lines")


def load_facts(name: str):
    from targets import load_soc  # pylint: disable=import-outside-toplevel
    from targets.cpu_facts import CPUFacts  # pylint: disable=import-outside-toplevel

    return CPUFacts.from_soc(load_soc(name))


def sim_for(name: str, facts, ll_level: str) -> Sim:
    notes = []
    w1, n1 = pow2_ways(facts.l1d_bytes, facts.l1d_ways, facts.line_bytes)
    if ll_level == "l2":
        size, ways = facts.l2_bytes, facts.l2_ways
    else:
        size, ways = facts.l3_bytes, facts.l3_ways
        if not size:
            raise ValueError(f"{name} has no last-level cache after L2; use --ll l2")
    wl, nl = pow2_ways(size, ways, facts.line_bytes)
    notes += [n for n in (n1, nl) if n]
    return Sim(name, (facts.l1d_bytes, w1, facts.line_bytes), (size, wl, facts.line_bytes), ll_level, tuple(notes))


# ------------------------------------------------------------------------------------------ build
def _parallel_extents(func) -> list[int]:
    import tvm_ffi  # pylint: disable=import-outside-toplevel
    from tvm import tirx  # pylint: disable=import-outside-toplevel

    out = []

    def visit(node):
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.PARALLEL:
            ext = node.extent
            out.append(int(ext.value) if hasattr(ext, "value") else -1)

    tvm_ffi.structural_walk(func.body, visit)
    return out


def tiling_of(kernel: Kernel, params, func, panel_offset: int | None = None) -> dict:
    """The cache-relevant knobs the schedule used (read from params and the scheduled function)."""
    if kernel.kind == "gemv":
        rows = params.gemv_row_tile()
        tasks = _parallel_extents(func)
        task_rows = kernel.n // tasks[0] if tasks and tasks[0] > 0 else None
        return {"rows": rows, "task_rows": task_rows, "lanes": params.gemv_vector_lanes(),
                "unroll": params.gemv_k_unroll(), "scale_buf_kib": (task_rows or 0) * kernel.k // 32 * 4 / 1024}
    granule = 128 if kernel.scheme == "q4f16p" else 8
    mr, nrv, lanes, kc, tn = params.gemm_bcast_blocking(kernel.k, kernel.n, granule)
    # panel row stride in floats: planar panels are padded by one vector (gemm.py storage_align), sequential not
    if kernel.scheme != "q4f16p":
        pad = 0  # the sequential panel is not padded (panel_pad does not apply)
    else:
        pad = panel_offset if panel_offset is not None else lanes
    return {"mr": mr, "nr": nrv * lanes, "kc": kc, "tn": tn, "row_stride": tn + pad}


def tiling_label(kernel: Kernel, t: dict) -> str:
    if kernel.kind == "gemv":
        return f"rows {t['rows']}, task {t['task_rows']} rows ({t['scale_buf_kib']:g} KiB f32 scales)"
    return f"mr {t['mr']} nr {t['nr']} kc {t['kc']} tn {t['tn']} (stride {t['row_stride'] * 4} B)"


@contextlib.contextmanager
def panel_row_offset(floats: int | None):
    """What-if only (``--what-if``, never the derived tilings): the broadcast GEMM pads each [Kc, Tn] panel row
    by ``floats`` instead of one vector (schedules/cpu/gemm.py: ``storage_align(..., offset=lanes)``)."""
    if floats is None:
        yield
        return
    from tvm import s_tir  # pylint: disable=import-outside-toplevel

    orig = s_tir.Schedule.storage_align

    def patched(self, block, buffer_index, axis, factor, offset):
        return orig(self, block, buffer_index, axis, factor, floats)

    s_tir.Schedule.storage_align = patched
    try:
        yield
    finally:
        s_tir.Schedule.storage_align = orig


def build(kernel: Kernel, facts, out_dir: Path, tag: str, overrides: dict | None = None,
          panel_offset: int | None = None) -> tuple[Path, dict, str]:
    """Schedule + compile + export one kernel for HASWELL with the given facts (plus, for what-if variants,
    knob overrides). Returns (.so, tiling, symbol)."""
    import tvm  # pylint: disable=import-outside-toplevel
    from tvm.target import Target  # pylint: disable=import-outside-toplevel

    from schedules import cpu_rules  # pylint: disable=import-outside-toplevel
    from schedules.cpu.params import CPUParams  # pylint: disable=import-outside-toplevel
    from schedules.reference import dequant_matmul_func  # pylint: disable=import-outside-toplevel
    from schedules.report import ApplySchedules, collecting  # pylint: disable=import-outside-toplevel

    target = Target(HASWELL)
    params = CPUParams.from_target(target, facts=facts, **(overrides or {}))
    symbol = SYMBOL_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", f"{kernel.name}_{tag}")
    func = dequant_matmul_func(kernel.scheme, kernel.n, kernel.k, 1 if kernel.kind == "gemv" else "seq")
    mod = tvm.IRModule({symbol: func.with_attr("global_symbol", symbol)})
    with target, collecting() as report, panel_row_offset(panel_offset):
        mod = ApplySchedules(*cpu_rules(target, params))(mod)
    want = "cpu.DequantGEMV" if kernel.kind == "gemv" else "cpu.DequantGEMM.bcast"
    got = report.kernels.get(symbol)
    if got != want or report.fallbacks:
        raise RuntimeError(f"{kernel.name} with {facts.source}: rule {got} (want {want}), fallbacks {report.fallbacks}")
    tiling = tiling_of(kernel, params, mod[symbol], panel_offset)
    lib = tvm.compile(mod, target=target)
    path = out_dir / f"{symbol}.so"
    lib.export_library(str(path))
    return path, tiling, symbol


def check_isa(target_dict: dict) -> None:
    """Valgrind cannot execute AVX-512: refuse a target whose features include it."""
    from tvm.target import Target, codegen  # pylint: disable=import-outside-toplevel

    feats = {str(f) for f in codegen.llvm_get_cpu_features(Target(target_dict))}
    bad = sorted(f for f in feats if f.startswith("avx512"))
    if bad:
        raise RuntimeError(f"target {target_dict} has {bad}: valgrind cannot execute AVX-512")
    if not {"avx2", "fma"} <= feats:
        raise RuntimeError(f"target {target_dict} lacks avx2/fma: {sorted(feats)}")


# ------------------------------------------------------------------------------------------ valgrind
def find_python() -> str:
    """The real interpreter (pyenv/venv shims are shell scripts valgrind would trace instead)."""
    exe = os.path.realpath(sys.executable)
    with open(exe, "rb") as f:
        if f.read(2) == b"#!":
            raise RuntimeError(f"{exe} is a script, not an ELF interpreter")
    return exe


def build_ctl(work: Path) -> Path:
    """The 3-function client-request helper (CALLGRIND_START/STOP_INSTRUMENTATION)."""
    header = Path("/usr/include/valgrind/callgrind.h")
    if not header.exists():
        raise RuntimeError(f"{header} missing (it ships with the valgrind package)")
    src = work / "cgctl.c"
    src.write_text(CTL_SOURCE)
    out = work / "cgctl.so"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("no C compiler (cc/gcc/clang) for the callgrind client-request helper")
    subprocess.run([cc, "-O1", "-shared", "-fPIC", "-o", str(out), str(src)], check=True)
    return out


def prepare(work: str | None, prefix: str) -> tuple[Path, Path] | None:
    """(work dir, client-request helper) for a run, or None (after a one-line error) without valgrind."""
    if not shutil.which("valgrind"):
        print("error: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return None
    path = Path(work) if work else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    check_isa(HASWELL)
    return path, build_ctl(path)


def driver_env() -> dict:
    env = dict(os.environ)
    env.update(TVM_USE_RUNTIME_LIB="1", TVM_NUM_THREADS="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def driver_cmd(kernel: Kernel, calls: list[tuple[Path, str, str]], ctl: Path | None, work: Path, name: str,
               call: bool = True) -> list[str]:
    """The driver command line: one process loads each (library, symbol, tag) in turn and calls it on the same
    inputs (the Python and TVM runtime start-up is paid once per simulated cache configuration and kernel)."""
    job = {"scheme": kernel.scheme, "k": kernel.k, "n": kernel.n, "rows": kernel.rows, "call": call,
           "ctl": str(ctl) if ctl else None, "calls": [{"lib": str(so), "symbol": sym, "tag": tag} for so, sym, tag in calls]}
    path = work / f"job.{name}.json"
    path.write_text(json.dumps(job))
    return [find_python(), str(Path(__file__).resolve()), "_drive", str(path)]


def _driver_results(stdout: str) -> dict:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("CGRESULT "):
            r = json.loads(line[len("CGRESULT "):])
            out[r["tag"]] = r
    if not out:
        raise RuntimeError(f"driver printed no result:\n{stdout[-2000:]}")
    return out


def parse_callgrind(path: Path) -> dict:
    events, totals, desc, trigger = None, None, [], None
    for line in path.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("totals:"):
            totals = [int(v) for v in line.split()[1:]]
        elif line.startswith("desc: Trigger:"):
            trigger = line.split(":", 2)[2].strip()
        elif line.startswith("desc:") and "cache:" in line:
            desc.append(line[len("desc:"):].strip())
    if events is None or totals is None:
        raise RuntimeError(f"{path}: no events/totals line")
    out = dict.fromkeys(EVENTS, 0)
    out.update(zip(events, totals))
    out["desc"] = desc
    out["trigger"] = trigger
    return out


def run_callgrind(kernel: Kernel, calls: list[tuple[Path, str, str]], sim: Sim, ctl: Path, work: Path,
                  breakdown: bool = False) -> dict:
    """One valgrind process for one kernel shape under one cache configuration: every library in ``calls`` is
    called once, the simulated caches emptied before each call (CALLGRIND_START_INSTRUMENTATION), only the
    kernel's exported function and its callees counted (--toggle-collect), one dump per call. Returns
    {tag: counts} (with ``breakdown``: also the kernel library's misses per instruction kind)."""
    name = f"{kernel.name}.{sim.soc}.{sim.ll_level}"
    out_file = work / f"callgrind.{name}.out"
    for old in work.glob(f"callgrind.{name}.out*"):
        old.unlink()
    cmd = ["valgrind", "--tool=callgrind", "--cache-sim=yes", "--instr-atstart=no", "--collect-atstart=no",
           f"--toggle-collect=__tvm_ffi_{SYMBOL_PREFIX}*", *sim.args(), f"--callgrind-out-file={out_file}",
           *(["--dump-instr=yes"] if breakdown else []), *driver_cmd(kernel, calls, ctl, work, name)]
    t0 = time.time()
    proc = subprocess.run(cmd, env=driver_env(), capture_output=True, text=True, check=False)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"valgrind failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    res = _driver_results(proc.stdout)
    dumps = {}
    for f in work.glob(f"callgrind.{name}.out*"):
        c = parse_callgrind(f)
        m = re.match(r"Client Request: (\S+)", c["trigger"] or "")
        if m:
            dumps[m.group(1)] = c
            if breakdown:
                so = next(so for so, _, tag in calls if tag == m.group(1))
                c["breakdown"] = instruction_breakdown(f, so)
    want = [f"D1 cache: {sim.d1[0]} B, {sim.d1[2]} B, {sim.d1[1]}-way", f"LL cache: {sim.ll[0]} B, {sim.ll[2]} B, {sim.ll[1]}-way"]
    out = {}
    for _, _, tag in calls:
        r = res.get(tag)
        if r is None or not r.get("on_valgrind"):
            raise RuntimeError(f"{tag}: the driver did not run it under valgrind ({r})")
        if not r["ok"]:
            raise RuntimeError(f"{tag}: wrong result under valgrind (rel err {r['rel_err']})")
        c = dumps.get(tag)
        if c is None:
            raise RuntimeError(f"{tag}: no callgrind dump (have {sorted(dumps)})")
        for w in want:
            if not any(d.startswith(w) for d in c["desc"]):
                raise RuntimeError(f"callgrind simulated {c['desc']}, not {want}")
        out[tag] = c | {"rel_err": r["rel_err"], "process_wall_s": round(wall, 1), "command": cmd}
    return out


def run_cachegrind_whole(so: Path, symbol: str, kernel: Kernel, sim: Sim, work: Path, call: bool) -> dict:
    """--tool=cachegrind on the whole driver process (call=False: the same process without the kernel call)."""
    name = f"{symbol}.{sim.soc}.{'call' if call else 'base'}"
    out_file = work / f"cachegrind.{name}.out"
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=yes", *sim.args(), f"--cachegrind-out-file={out_file}",
           *driver_cmd(kernel, [(so, symbol, "x")], None, work, name, call=call)]
    proc = subprocess.run(cmd, env=driver_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"valgrind failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    events = totals = None
    for line in out_file.read_text().splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            totals = [int(v) for v in line.split()[1:]]
    return dict(zip(events, totals)) | {"command": cmd}


def _instruction_costs(path: Path, obj_name: str) -> dict[int, list[int]]:
    """Self costs per instruction address (offset in the object) of one object in a --dump-instr=yes file."""
    costs: dict[int, list[int]] = {}
    names, in_obj, addr, skip, events = {}, False, 0, False, None
    for line in path.read_text().splitlines():
        m = re.match(r"^(c?ob|c?fn|fl|fi|fe|cfi|cfl)=\((\d+)\)(?: (.*))?$", line)
        if m:
            kind, idx, name = m.groups()
            if kind in ("ob", "cob") and name is not None:
                names[idx] = name
            if kind == "ob":
                in_obj = os.path.basename(names.get(idx, "")) == obj_name
            continue
        if line.startswith("events:"):
            events = line.split()[1:]
            continue
        if line.startswith("calls="):
            skip = True  # the next cost line is the call's inclusive cost
            continue
        if not line or line[0] not in "+-*0123456789":
            continue
        parts = line.split()
        pos = parts[0]
        if pos.startswith("0x"):
            addr = int(pos, 16)
        elif pos[0] in "+-":
            delta = int(pos[1:], 16) if pos[1:].startswith("0x") else int(pos[1:])
            addr += delta if pos[0] == "+" else -delta
        elif pos != "*":
            addr = int(pos)
        if skip:
            skip = False
            continue
        if in_obj:
            row = costs.setdefault(addr, [0] * len(EVENTS))
            for i, v in enumerate(parts[2:]):  # parts[1] is the line position
                row[i] += int(v)
    if events is not None and tuple(events) != EVENTS:
        raise RuntimeError(f"{path}: unexpected events {events}")
    return costs


_DISASM: dict[str, dict[int, str]] = {}


def _disassembly(so: Path) -> dict[int, str]:
    if str(so) not in _DISASM:
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(so)], capture_output=True, text=True,
                              check=True).stdout
        _DISASM[str(so)] = {int(m.group(1), 16): m.group(2).strip()
                            for m in re.finditer(r"^\s+([0-9a-f]+):\s+(.*)$", text, re.M)}
    return _DISASM[str(so)]


def instruction_kind(insn: str) -> str:
    """What a memory instruction of these kernels does, from its mnemonic (AVX2 code of our GEMV/GEMM)."""
    op, _, operands = insn.partition(" ")
    if "(" not in operands:
        return "no memory operand"
    store = operands.split(",")[-1].strip().endswith(")")
    if op == "vbroadcastss":
        return "x broadcast (vbroadcastss)"
    if op in ("vpinsrd", "vmovd", "vpgatherdd"):
        return "packed-word gather (vpinsrd/vmovd)"
    if op in ("vpinsrw", "movzwl"):
        return "f16 scale gather (vpinsrw)"
    if op.startswith("vfmadd"):
        return "FMA memory operand"
    if op in ("vmovups", "vmovaps", "vmovdqu", "vmovdqa"):
        return "vector store" if store else "vector load"
    if op.startswith("mov") or op.startswith("vmov"):
        return ("store " if store else "load ") + op
    return "other (loop/runtime bookkeeping)"


def instruction_breakdown(path: Path, so: Path) -> dict[str, dict[str, int]]:
    """Misses of the kernel library's own instructions, by instruction kind (needs objdump)."""
    dis = _disassembly(so)
    out: dict[str, dict[str, int]] = {}
    for addr, row in _instruction_costs(path, so.name).items():
        kind = instruction_kind(dis.get(addr, "? ?"))
        c = dict(zip(EVENTS, row))
        d = out.setdefault(kind, {"accesses": 0, "D1": 0, "LL": 0})
        d["accesses"] += c["Dr"] + c["Dw"]
        d["D1"] += c["D1mr"] + c["D1mw"]
        d["LL"] += c["DLmr"] + c["DLmw"]
    return {k: v for k, v in sorted(out.items(), key=lambda kv: -kv[1]["D1"]) if v["accesses"]}


def derived(counts: dict) -> dict:
    return {"D1": counts["D1mr"] + counts["D1mw"], "LL": counts["DLmr"] + counts["DLmw"], "Ir": counts["Ir"]}


# ------------------------------------------------------------------------------------------ driver
def drive(argv: list[str]) -> int:
    """Runs inside valgrind: load each library with the TVM runtime only and call it once between the client
    requests (caches emptied, one dump per call), check a few output columns against numpy."""
    sys.modules["torch"] = None  # tvm_ffi imports torch and ml_dtypes when installed; neither is needed
    sys.modules["ml_dtypes"] = None
    import ctypes  # pylint: disable=import-outside-toplevel

    import tvm.runtime as rt  # pylint: disable=import-outside-toplevel

    job = json.loads(Path(argv[0]).read_text())
    k, n, rows = job["k"], job["n"], job["rows"]
    rng = np.random.default_rng(0)
    qw = rng.integers(0, 2**32, size=(n, k // 8), dtype=np.uint32)  # every bit pattern is a valid q4 word
    sc = (rng.random((n, k // 32)) * 0.02 + 0.001).astype(np.float16)
    x = rng.standard_normal((1, rows, k)).astype(np.float32)
    cols = np.unique(np.array([0, 1, n // 3, n // 2 + 5, n - 1]))
    kk = np.arange(k)
    if job["scheme"] == "q4f16":
        word, shift = kk // 8, 4 * (kk % 8)
    else:
        word, shift = (kk // 128) * 16 + kk % 16, 4 * ((kk % 128) // 16)
    nib = (qw[cols][:, word] >> shift.astype(np.uint32)) & np.uint32(15)
    deq = (nib.astype(np.float32) - 8.0) * sc[cols][:, kk // 32].astype(np.float32)
    ref = x[0].astype(np.float64) @ deq.T.astype(np.float64)
    dev = rt.cpu()
    args = [rt.tensor(v, dev) for v in (x, qw, sc)]
    ctl = ctypes.CDLL(job["ctl"]) if job.get("ctl") else None
    for c in job["calls"]:
        out = rt.tensor(np.zeros((1, rows, n), np.float32), dev)
        fn = rt.load_module(c["lib"])[c["symbol"]]
        if job.get("call", True):
            if ctl is not None:
                ctl.cg_start()
            fn(*args, out)
            if ctl is not None:
                ctl.cg_dump(c["tag"].encode())
                ctl.cg_stop()
        got = out.numpy()[0][:, cols]
        err = float(np.abs(got - ref).max() / max(1e-30, np.abs(ref).max()))
        ok = not job.get("call", True) or err < 1e-4
        on_vg = bool(ctl.cg_on_valgrind()) if ctl is not None else None
        print("CGRESULT " + json.dumps({"tag": c["tag"], "ok": bool(ok), "rel_err": err, "on_valgrind": on_vg}), flush=True)
    return 0


# ------------------------------------------------------------------------------------------ main
def valgrind_version() -> str:
    return subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def verdict(own: dict, other: dict) -> str:
    """How the tiling derived for the simulated SoC ("own") compares with this row's, per miss kind."""

    def cmp(key):
        a, b = own[key], other[key]
        if a == b:
            return f"{key} equal"
        rel = (a - b) / b * 100
        return f"{key} own {rel:+.1f}% ({'wins' if a < b else 'LOSES'})"

    return "; ".join((cmp("D1"), cmp("LL")))


def fmt(n: int) -> str:
    return f"{n:,}"


@dataclass(frozen=True)
class TilingSource:
    """Where a tiling comes from: the facts of ``soc`` (derived), plus knob overrides for a what-if variant."""

    soc: str
    overrides: tuple[tuple[str, object], ...] = ()
    panel_offset: int | None = None

    @property
    def is_variant(self) -> bool:
        return bool(self.overrides) or self.panel_offset is not None

    @property
    def name(self) -> str:
        if not self.is_variant:
            return self.soc
        parts = [f"{k}={v}" for k, v in self.overrides]
        if self.panel_offset is not None:
            parts.append(f"panel_pad={self.panel_offset}")
        return f"{self.soc}+{'+'.join(parts)} (what-if)"


def parse_what_if(spec: str) -> TilingSource:
    """``SOC:knob=value+knob=value``; knobs are CPUParams fields, or panel_pad (floats of padding per panel row)."""
    soc, _, rest = spec.partition(":")
    overrides, offset = [], None
    for item in filter(None, rest.split("+")):
        key, _, val = item.partition("=")
        v = {"true": True, "false": False}.get(val.lower(), None)
        v = int(val) if v is None else v
        if key == "panel_pad":
            offset = v
        else:
            overrides.append((key, v))
    return TilingSource(soc, tuple(overrides), offset)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_drive":
        return drive(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    ap.add_argument("--socs", default=",".join(DEFAULT_SOCS), help="registry names whose caches are simulated and "
                    "whose derived tilings are compared")
    ap.add_argument("--kernels", default="all", help="all | gemv | gemm | comma-separated kernel names")
    ap.add_argument("--gemm-rows", type=int, default=24, help="GEMM activation rows (the model's prefill chunk is "
                    "128; fewer here to bound valgrind's runtime)")
    ap.add_argument("--gemm-n", type=int, default=2048)
    ap.add_argument("--ll", choices=("l2", "l3"), default="l2", help="which cache the simulated LL is")
    ap.add_argument("--what-if", action="append", default=[], metavar="SOC:KNOB=V[+KNOB=V]",
                    help="extra tiling: the SoC's derivation with knobs overridden (CPUParams fields, or panel_pad); "
                    "shown in the table, not counted as a pair")
    ap.add_argument("--jobs", type=int, default=2, help="valgrind processes at a time")
    ap.add_argument("--work", help="directory for libraries and valgrind outputs (default: a temporary one)")
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--crosscheck", action="store_true", help="also run the first GEMM pair with --tool=cachegrind "
                    "(whole process minus a run without the call)")
    ap.add_argument("--breakdown", action="store_true", help="also split each run's misses by instruction kind "
                    "(callgrind --dump-instr=yes + objdump)")
    a = ap.parse_args(argv)
    t_start = time.time()
    prepared = prepare(a.work, "cg-tilings-")
    if prepared is None:
        return 2
    work, ctl = prepared
    socs = [s.strip() for s in a.socs.split(",") if s.strip()]
    facts = {s: load_facts(s) for s in socs}
    sims = {s: sim_for(s, facts[s], a.ll) for s in socs}
    sources = [TilingSource(s) for s in socs] + [parse_what_if(w) for w in a.what_if]
    for src in sources:
        if src.soc not in facts:
            facts[src.soc] = load_facts(src.soc)
    kernels = default_kernels(a.gemm_rows, a.gemm_n)
    if a.kernels in ("gemv", "gemm"):
        kernels = [k for k in kernels if k.kind == a.kernels]
    elif a.kernels != "all":
        names = set(a.kernels.split(","))
        kernels = [k for k in kernels if k.name in names]
        if not kernels:
            print(f"error: no kernel named {sorted(names)}; known: "
                  f"{[k.name for k in default_kernels(a.gemm_rows, a.gemm_n)]}", file=sys.stderr)
            return 2
    print(f"# {valgrind_version()}, {cpu_model()}, {time.strftime('%Y-%m-%d')}, target {HASWELL}, work dir {work}",
          flush=True)
    for s in socs:
        f = facts[s]
        print(f"# {s}: facts L1d {f.l1d_bytes // 1024} KiB {f.l1d_ways}-way, L2/core {f.l2_bytes // 1024} KiB "
              f"{f.l2_ways}-way, L3 {f.l3_bytes // 1024} KiB {f.l3_ways}-way, line {f.line_bytes} B ({f.source}); "
              f"simulated {' '.join(sims[s].args()[1:])}" + (f" [{'; '.join(sims[s].notes)}]" if sims[s].notes else ""),
              flush=True)

    # 1. build: one library per kernel and distinct tiling
    libs = {}  # (kernel, tiling key) -> (so, tiling, symbol, [source names])
    derived_for = {}  # (kernel, soc) -> tiling key
    real_owner = {}  # (kernel, key) -> whether some SoC's own derivation gives it
    t0 = time.time()
    for kern in kernels:
        for i, src in enumerate(sources):
            so, tiling, symbol = build(kern, facts[src.soc], work, f"t{i}", dict(src.overrides), src.panel_offset)
            key = json.dumps(tiling, sort_keys=True)
            if not src.is_variant:
                derived_for[(kern, src.soc)] = key
                real_owner[(kern, key)] = True
            if (kern, key) in libs:
                libs[(kern, key)][3].append(src.name)
                os.unlink(so)
            else:
                libs[(kern, key)] = (so, tiling, symbol, [src.name])
    print(f"# built {len(libs)} libraries in {time.time() - t0:.0f} s", flush=True)

    # 2. one valgrind process per kernel and simulated caches, calling every distinct tiling of that kernel
    jobs = []
    for kern in kernels:
        calls = [(so, symbol, symbol) for (k2, _), (so, _, symbol, _) in libs.items() if k2 == kern]
        jobs += [(kern, calls, sim) for sim in sims.values()]
    jobs.sort(key=lambda j: -j[0].rows * j[0].k * j[0].n * len(j[1]))  # longest first
    results = {}
    t0 = time.time()
    with cf.ThreadPoolExecutor(max(1, a.jobs)) as pool:
        futs = {pool.submit(run_callgrind, kern, calls, sim, ctl, work, a.breakdown): (kern, sim.soc)
                for kern, calls, sim in jobs}
        for fut in cf.as_completed(futs):
            kern, soc = futs[fut]
            got = fut.result()
            for (k2, key), (_, _, symbol, owners) in libs.items():
                if k2 == kern:
                    r = results[(kern, key, soc)] = got[symbol]
                    print(f"#   {kern.name} tiling[{' / '.join(owners)}] under {soc}: D1 {fmt(r['D1mr'] + r['D1mw'])} "
                          f"LL {fmt(r['DLmr'] + r['DLmw'])} Ir {fmt(r['Ir'])} (process {r['process_wall_s']} s)",
                          flush=True)
    print(f"# {len(jobs)} valgrind processes, {len(results)} measurements in {time.time() - t0:.0f} s", flush=True)

    # 3. the table
    print()
    print("| kernel | simulated caches | tiling derived for | tiling | D1 misses | LL misses | instructions | "
          "own tiling (derived for the simulated SoC) vs this row |")
    print("|---|---|---|---|---:|---:|---:|---|")
    summary = []
    for kern in kernels:
        for s in socs:
            own_key = derived_for[(kern, s)]
            own = derived(results[(kern, own_key, s)])
            keys = [key for (k2, key) in libs if k2 == kern]
            keys.sort(key=lambda key: (key != own_key, not real_owner.get((kern, key), False)))
            for key in keys:
                _, tiling, _, owners = libs[(kern, key)]
                d = derived(results[(kern, key, s)])
                if key == own_key:
                    v = "(own tiling)"
                else:
                    v = verdict(own, d)
                    if real_owner.get((kern, key)):
                        summary.append({"kernel": kern.name, "sim": s, "other": owners, "own": own, "that": d,
                                        "d1_wins": own["D1"] < d["D1"], "ll_wins": own["LL"] < d["LL"]})
                    else:
                        v = "what-if: " + v
                print(f"| {kern.name} | {sims[s].label()} | {', '.join(owners)} | {tiling_label(kern, tiling)} | "
                      f"{fmt(d['D1'])} | {fmt(d['LL'])} | {fmt(d['Ir'])} | {v} |")
    wins_d1 = sum(x["d1_wins"] for x in summary)
    wins_ll = sum(x["ll_wins"] for x in summary)
    print()
    print(f"pairs (own tiling vs another SoC's, under the own SoC's caches): {len(summary)}; own tiling has fewer "
          f"D1 misses in {wins_d1}, fewer LL misses in {wins_ll}")

    if a.breakdown:
        print()
        print("| kernel | simulated caches | tiling derived for | instruction kind | accesses | D1 misses | LL misses |")
        print("|---|---|---|---|---:|---:|---:|")
        for kern in kernels:
            for s in socs:
                for (k2, key), (_, _, _, owners) in libs.items():
                    if k2 != kern:
                        continue
                    for kind, v in results[(kern, key, s)].get("breakdown", {}).items():
                        if v["D1"] >= 0.01 * max(1, derived(results[(kern, key, s)])["D1"]):
                            print(f"| {kern.name} | {s} | {', '.join(owners)} | {kind} | {fmt(v['accesses'])} | "
                                  f"{fmt(v['D1'])} | {fmt(v['LL'])} |")

    cross = None
    if a.crosscheck:
        cross = crosscheck(kernels, libs, derived_for, sims, socs, work, results)
    total = time.time() - t_start
    print(f"# total {total:.0f} s")
    if a.json:
        out = {
            "valgrind": valgrind_version(), "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d"),
            "target": HASWELL, "args": vars(a), "total_s": round(total, 1),
            "sims": {s: dataclasses.asdict(v) for s, v in sims.items()},
            "facts": {s: f.to_json() for s, f in facts.items()},
            "runs": [{"kernel": k.name, "tiling": libs[(k, key)][1], "derived_for": libs[(k, key)][3], "sim": s,
                      **{e: r[e] for e in EVENTS}, "process_wall_s": r["process_wall_s"], "command": r["command"],
                      "breakdown": r.get("breakdown")}
                     for (k, key, s), r in results.items()],
            "pairs": summary, "crosscheck": cross,
        }
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


def crosscheck(kernels, libs, derived_for, sims, socs, work, results) -> dict | None:
    """The first GEMM's own-vs-other pair under the first SoC, with --tool=cachegrind: whole process minus the
    same process without the call (instrumented from the start, so the caches are warm from the driver)."""
    gemms = [k for k in kernels if k.kind == "gemm"]
    if not gemms or len(socs) < 2:
        return None
    kern, s = gemms[0], socs[0]
    out = {"kernel": kern.name, "sim": s, "rows": []}
    keys = list(dict.fromkeys([derived_for[(kern, s)], derived_for[(kern, socs[1])]]))
    base = None
    for key in keys:
        so, tiling, symbol, owners = libs[(kern, key)]
        if base is None:
            base = run_cachegrind_whole(so, symbol, kern, sims[s], work, call=False)
        full = run_cachegrind_whole(so, symbol, kern, sims[s], work, call=True)
        diff = {e: full[e] - base[e] for e in EVENTS if e in full}
        cg = {"D1": diff["D1mr"] + diff["D1mw"], "LL": diff["DLmr"] + diff["DLmw"], "Ir": diff["Ir"]}
        callg = derived(results[(kern, key, s)])
        out["rows"].append({"derived_for": owners, "cachegrind_minus_baseline": cg, "callgrind_toggle": callg})
        print(f"# crosscheck {kern.name} tiling[{'/'.join(owners)}] under {s}: cachegrind (whole - baseline) "
              f"D1 {fmt(cg['D1'])} LL {fmt(cg['LL'])} Ir {fmt(cg['Ir'])}; callgrind toggle D1 {fmt(callg['D1'])} "
              f"LL {fmt(callg['LL'])} Ir {fmt(callg['Ir'])}", flush=True)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_drive":
        sys.exit(drive(sys.argv[2:]))
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
