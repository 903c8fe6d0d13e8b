"""Where the time of one decode step and one prefill chunk of a package goes, by kernel category.

    python -m bench.profile PACKAGE [--threads N] [--prompt 128] [--steps 16] [--json]
    llama-aot bench --profile ...            (the same, for every package the bench compiles)

Method (two passes over the same work, so the instrumentation does not distort the wall time; their steps
alternate, so both see the same load on a shared machine):

1. **plain**: the step as ``Engine`` runs it (KV ``begin_forward``, ``embed``, the VM function, KV
   ``end_forward``, logits copy to numpy, greedy sampling), each part timed from Python. Its total is
   the step's wall time; the KV calls are "KV-cache bookkeeping", the last two "sampling/logits copy".
2. **instrumented**: the same steps with a Relax VM instrument (``vm.set_instrument``: a callback
   before and after every VM call instruction) timing every call of a compiled PrimFunc, in place,
   in the step's own order and cache state. Attention, RoPE and the KV append run *inside* TVM's paged
   KV cache, out of the VM's sight: for this pass the caches are rebuilt from the same
   ``vm.builtin.paged_attention_kv_cache_create`` arguments (caught by the instrument) with every
   kernel function wrapped in a timer; what the cache's attention builtin spends outside those
   kernels is KV-cache bookkeeping. The timers' own cost is subtracted per kernel: the interval a VM
   callback pair adds is mostly the conversion of the call's arguments to Python (1.5-3 us, growing with
   their number), so it is measured with those same arguments through ``testing.apply`` (C++ calling a
   Python function); a wrapper's cost (Python calling C++) with ``testing.nop``.

Host overhead = plain wall time - all of the above: the VM interpreter, its builtins (allocation,
reshape, shape checks), FFI and Python. Kernel names map to categories through ``CATEGORIES`` (first
matching pattern wins, unmatched names are shown as themselves): add a row for a new kind of kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

# (regular expression searched in the kernel's name, category); first match wins.
# "GEMV/GEMM" is split by the activation (first argument): one row -> GEMV, more -> GEMM.
CATEGORIES: list[tuple[str, str]] = [
    (r"matmul|gemv|gemm|dense", "GEMV/GEMM"),
    (r"attention|merge_state", "attention"),
    (r"rotary|rope", "RoPE"),
    (r"kv_cache|transpose_append|copy_single_page|compact_kv", "KV-cache bookkeeping"),
    (r"norm", "norms"),
    (r"take|embed", "embedding"),
    (r"silu|gelu|swiglu|multiply|add|reshape|last_position|cast|concat|split", "elementwise/SwiGLU"),
    (r"compute_symbolic_expr|shape_func", "shape functions"),
]
KV_BOOKKEEPING, SAMPLING, HOST = "KV-cache bookkeeping", "sampling/logits copy", "host overhead"
KV_CREATE = "vm.builtin.paged_attention_kv_cache_create"
KV_ATTENTION = "vm.builtin.attention_kv_cache_"  # prefix of the cache builtins the model calls

_pc = time.perf_counter_ns


def category(name: str, args=()) -> str:
    for pattern, cat in CATEGORIES:
        if re.search(pattern, name):
            if cat == "GEMV/GEMM":
                shape = getattr(args[0], "shape", None) if args else None
                rows = int(np.prod([int(d) for d in shape[:-1]])) if shape is not None else 0
                return "GEMV" if rows == 1 else "GEMM"
            return cat
    return name


def kv_create_function_names(vm_text: str, vm_func: str) -> list[list[str]]:
    """For each argument of the ``paged_attention_kv_cache_create`` call in ``vm_func`` (VM bytecode text,
    ``as_text``), the names of the functions it passes: ``f[name]`` directly or through a ``make_tuple``."""
    block = vm_text.split(f"@{vm_func}:", 1)[1].split("\n\n", 1)[0]
    tuples = {dst: re.findall(r"f\[([^\]]+)\]", ins)
              for ins, dst in re.findall(r"vm\.builtin\.make_tuple in:(.*?) dst: (%\d+)", block)}
    call = re.search(re.escape(KV_CREATE) + r" in:(.*?) dst:", block)
    if call is None:
        raise RuntimeError(f"{vm_func} does not call {KV_CREATE}")
    names = []
    for tok in (t.strip() for t in call.group(1).split(",")):
        m = re.fullmatch(r"f\[([^\]]+)\]", tok)
        names.append([m.group(1)] if m else tuples.get(tok, []))
    return names


class Profiler:
    """Both passes over one loaded ``Engine``."""

    def __init__(self, engine):
        import tvm
        import tvm_ffi

        self.engine, self.tvm, self.ffi = engine, tvm, tvm_ffi
        rt = engine.config["runtime"]
        self.embed = engine.vm[rt["functions"]["embed"]]
        self.fns = {"prefill": engine.vm[rt["functions"]["prefill"]], "decode": engine.vm[rt["functions"]["decode"]]}
        self.begin = tvm.get_global_func("vm.builtin.kv_state_begin_forward")
        self.end = tvm.get_global_func("vm.builtin.kv_state_end_forward")
        self.add_seq = tvm.get_global_func("vm.builtin.kv_state_add_sequence")
        self.remove_seq = tvm.get_global_func("vm.builtin.kv_state_remove_sequence")
        text = tvm.runtime.load_module(str(engine.package_dir / rt["library"]))["as_text"]()
        self.kernels: dict[str, list[int]] = defaultdict(list)  # instrumented pass: name -> [ns per call]
        self.kernel_cats: dict[str, str] = {}
        self._inside_kv = False
        self._t0 = 0
        self.samples: dict[str, tuple] = {}  # name -> the arguments of one call, for calibrate()
        self.inner: set[str] = set()  # kernels called from inside the KV cache
        self.timed_caches = [self._timed_cache(name, text) for name in rt["functions"]["create_kv_cache"]]

    # --- the timed KV caches ------------------------------------------------------------------------
    def _timed_cache(self, create_fn: str, vm_text: str):
        """A cache like the engine's, built with every kernel function wrapped in a timer."""
        caught = []

        def catch(func, name, before, ret, *args):
            if before and name == KV_CREATE:
                caught.append(args)
            return 0

        shape = self.tvm.runtime.ShapeTuple
        e = self.engine
        vm = e.vm
        vm.set_instrument(self.ffi.convert(catch))
        try:
            vm[create_fn](shape([1]), shape([e.context_window]), shape([e.prefill_chunk]), shape([e.page_size]), shape([0]))
        finally:
            vm.set_instrument(None)
        names = kv_create_function_names(vm_text, create_fn)
        args = [self._wrap(a, n) for a, n in zip(caught[0], names)]
        cache = self.tvm.get_global_func(KV_CREATE)(*args)
        self.add_seq(cache, 0)
        return cache

    def _wrap(self, arg, names: list[str]):
        if isinstance(arg, self.ffi.Function) and names:
            return self._timer(arg, names[0])
        if isinstance(arg, self.ffi.Array) and names:
            it = iter(names)
            return self.ffi.convert([self._timer(x, next(it)) if isinstance(x, self.ffi.Function) else x for x in arg])
        return arg

    def _timer(self, f, name: str):
        def timed(*args):
            if not self._inside_kv:  # begin/end_forward: already counted as bookkeeping by the plain pass
                return f(*args)
            t0 = _pc()
            f(*args)
            self.kernels[name].append(_pc() - t0)
            if name not in self.samples:  # first call only: this glue runs inside the builtin's interval
                self.inner.add(name)
                self.samples[name] = args
                self.kernel_cats[name] = category(name, args)

        return self.ffi.convert(timed)

    def _instrument(self, func, name, before, ret, *args):
        if before:
            self._t0 = _pc()
            self._inside_kv = name.startswith(KV_ATTENTION)
            return 0
        dt = _pc() - self._t0
        if name.startswith(KV_ATTENTION) or not name.startswith("vm.builtin."):
            self._inside_kv = False
            self.kernels[name].append(dt)  # the attention builtin's inner kernels are subtracted in breakdown()
            if name not in self.samples:
                self.samples[name] = (func, name, before, ret, *args)
                self.kernel_cats[name] = KV_BOOKKEEPING if name.startswith(KV_ATTENTION) else category(name, args)
        return 0

    def calibrate(self, reps: int = 31) -> tuple[dict, dict]:
        """(ns a VM callback pair adds to each kernel's interval, ns a wrapper adds), per kernel name, measured
        with the arguments of one of its calls."""
        apply = self.ffi.get_global_func("testing.apply", allow_missing=True)
        nop = self.ffi.get_global_func("testing.nop", allow_missing=True)
        if apply is None or nop is None:
            return defaultdict(int), defaultdict(int)
        mark = [0]

        def probe(*args):
            mark[0] = _pc()

        probe_f = self.ffi.convert(probe)
        entry, call = {}, {}
        for name, args in self.samples.items():
            ts = []
            for _ in range(reps):
                t0 = _pc()
                apply(probe_f, *args)
                ts.append(mark[0] - t0)
            entry[name] = statistics.median(ts)
            if name in self.inner:
                ts = []
                for _ in range(reps):
                    t0 = _pc()
                    nop(*args)
                    ts.append(_pc() - t0)
                call[name] = statistics.median(ts)
        return entry, call

    # --- one step -----------------------------------------------------------------------------------
    def reset(self, caches) -> None:
        for c in caches:
            self.remove_seq(c, 0)
            self.add_seq(c, 0)

    def step(self, phase: str, ids, caches, parts: dict) -> int:
        """One forward as Engine._forward + sampling; appends the ns of each part to ``parts``."""
        from runtime_stubs.sampling import sample

        tvm, e = self.tvm, self.engine
        t0 = _pc()
        lengths = tvm.runtime.ShapeTuple([len(ids)])
        for c in caches:
            self.begin(c, tvm.runtime.ShapeTuple([0]), lengths)
        t1 = _pc()
        embeds = self.embed(tvm.runtime.tensor(np.asarray(ids, dtype="int32"), e.device), e.params)
        logits = self.fns[phase](embeds, *caches, e.params)
        t2 = _pc()
        for c in caches:
            self.end(c)
        t3 = _pc()
        row = logits.numpy().reshape(-1)
        token = sample(row, 0.0, 1.0, None)
        t4 = _pc()
        parts[KV_BOOKKEEPING].append((t1 - t0) + (t3 - t2))
        parts[SAMPLING].append(t4 - t3)
        parts["wall"].append(t4 - t0)
        return token

    def profile(self, phase: str, prompt: list[int], steps: int) -> dict:
        """``steps`` decode steps after ``prompt`` (whose prefill is not counted), or ``steps`` times the first
        prefill chunk of ``prompt`` from an empty cache. Plain and instrumented steps alternate, so that both
        passes see the same load on a shared machine; the first pair is a warm-up (weights paged in)."""
        chunk = self.engine.prefill_chunk
        passes = {"plain": self.engine.caches, "timed": self.timed_caches}
        tokens = {}
        for name, caches in passes.items():
            if phase == "decode":
                self.reset(caches)
                for start in range(0, len(prompt), chunk):
                    tokens[name] = self.step("prefill", prompt[start : start + chunk], caches, defaultdict(list))
        plain = defaultdict(list)
        for i in range(steps + 1):
            if i == 1:
                plain.clear()
                self.kernels.clear()
                self.samples.clear()
                self.inner.clear()
            for name, caches in passes.items():
                if phase == "prefill":
                    self.reset(caches)
                ids = [tokens[name]] if phase == "decode" else prompt[:chunk]
                if name == "timed":
                    self.engine.vm.set_instrument(self.ffi.convert(self._instrument))
                try:
                    tokens[name] = self.step(phase, ids, caches, plain if name == "plain" else defaultdict(list))
                finally:
                    if name == "timed":
                        self.engine.vm.set_instrument(None)
                        self._inside_kv = False
        return self.breakdown(phase, plain, steps, len(prompt))

    def breakdown(self, phase: str, plain: dict, steps: int, prompt_tokens: int) -> dict:
        """Per-step ms by category; the rows sum to the plain wall time. Medians (of steps, and of the calls
        of each kernel x its calls per step), so that a step or call delayed by another process on a shared
        machine does not move the shares."""
        entry, call = self.calibrate()
        cost = {n: call[n] if n in self.inner else entry[n] for n in self.kernels}
        calls = {n: len(ts) / steps for n, ts in self.kernels.items()}
        per_kernel = {n: max(0, statistics.median(ts) - cost[n]) * calls[n] / 1e6 for n, ts in self.kernels.items()}
        builtins = [n for n in per_kernel if n.startswith(KV_ATTENTION)]
        # inside the builtin, each inner kernel also cost a callback into Python (entry) and the wrapper (call)
        outside = (sum(per_kernel.pop(n) for n in builtins)
                   - sum((statistics.median(self.kernels[n]) + entry[n]) * calls[n] for n in self.inner) / 1e6)
        wall = statistics.median(plain["wall"]) / 1e6
        cats: dict[str, dict] = {}

        def add(cat, name, ms, n_calls=0.0):
            c = cats.setdefault(cat, {"ms": 0.0, "calls": 0.0, "kernels": {}})
            c["ms"] += ms
            c["calls"] += n_calls
            c["kernels"][name] = c["kernels"].get(name, 0.0) + ms

        for n, ms in per_kernel.items():
            add(self.kernel_cats[n], n, ms, calls[n])
        if builtins:
            add(KV_BOOKKEEPING, "attention builtin outside its kernels", max(0.0, outside))
        add(KV_BOOKKEEPING, "begin/end_forward", statistics.median(plain[KV_BOOKKEEPING]) / 1e6)
        add(SAMPLING, "logits.numpy + sample", statistics.median(plain[SAMPLING]) / 1e6)
        cats[HOST] = {"ms": wall - sum(c["ms"] for c in cats.values()), "calls": 0.0, "kernels": {}}
        for c in cats.values():
            c["share"] = c["ms"] / wall if wall else 0.0
        rows = dict(sorted(cats.items(), key=lambda kv: (kv[0] == HOST, -kv[1]["ms"])))
        return {
            "phase": phase, "tokens": 1 if phase == "decode" else min(prompt_tokens, self.engine.prefill_chunk),
            "position": prompt_tokens if phase == "decode" else 0, "steps": steps, "wall_ms": wall,
            "timer_cost_us": statistics.median(cost.values()) / 1e3 if cost else 0.0, "categories": rows,
        }


def format_profile(p: dict, title: str = "") -> str:
    what = (f"decode step at position {p['position']}" if p["phase"] == "decode"
            else f"prefill chunk of {p['tokens']} tokens")
    lines = [
        f"{title}{what}: {p['wall_ms']:.3f} ms wall (median of {p['steps']}; timer cost, median {p['timer_cost_us']:.2f} us/call, subtracted)",
        "| category | ms | % | calls | largest kernels (ms) |",
        "|---|---:|---:|---:|---|",
    ]
    for name, c in p["categories"].items():
        top = sorted(c["kernels"].items(), key=lambda kv: -kv[1])[:3]
        ks = ", ".join(f"{k} {v:.3f}" for k, v in top)
        calls = f"{c['calls']:.0f}" if c["calls"] else "-"
        lines.append(f"| {name} | {c['ms']:.3f} | {c['share']:.1%} | {calls} | {ks} |")
    return "\n".join(lines)


def profile_package(package: str | Path, threads: int | None = None, prompt_tokens: int = 128, steps: int = 16,
                    chunks: int = 4) -> dict:
    """``{"decode": ..., "prefill": ...}`` breakdowns (see ``Profiler.breakdown``) of one package, over ``steps``
    decode steps after a ``prompt_tokens`` prompt and over ``chunks`` first prefill chunks."""
    from bench.peers import prompt_ids
    from runtime_stubs.engine import Engine

    engine = Engine(package, num_threads=threads)
    prompt = prompt_ids(min(prompt_tokens, engine.context_window - steps - 4), engine.vocab_size)
    prof = Profiler(engine)
    return {"package": str(package), "threads": int(os.environ.get("TVM_NUM_THREADS", "0")),
            "decode": prof.profile("decode", prompt, steps), "prefill": prof.profile("prefill", prompt, chunks)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n")[0])
    p.add_argument("package")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--prompt", type=int, default=128, help="tokens before the profiled decode steps")
    p.add_argument("--steps", type=int, default=16, help="decode steps measured")
    p.add_argument("--chunks", type=int, default=4, help="prefill chunks measured")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    r = profile_package(a.package, a.threads, a.prompt, a.steps, a.chunks)
    if a.json:
        print(json.dumps(r))
    else:
        print(format_profile(r["decode"]) + "\n\n" + format_profile(r["prefill"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
