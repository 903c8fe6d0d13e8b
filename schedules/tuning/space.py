"""The knob space of each kernel kind: small, explicit, the derived value always first.

Why our own knobs and not a generic schedule space: the rules already encode the structure that matters (one
weight stream per thread, dequantization in registers, panels sized to the caches); what a derivation can get
wrong on a particular core is a handful of numbers. Each dimension lists the derivation's value first (what
compile does without a record), then the alternatives worth a measurement:

* ``dequant_gemv`` (f32 decode GEMV, CPUParams): ``gemv_rows`` (rows sharing the x vector), ``gemv_unroll`` (K
  steps per iteration), ``gemv_accumulators`` (one accumulator per unrolled step), ``gemv_prefetch`` (next row
  group, where prefetches can be emitted), ``scale_cache`` (f32 scale copy per task), ``gemv_lanes``;
* ``dequant_gemm`` (f32 prefill GEMM, broadcast form): the register tile ``gemm_rows`` x ``gemm_cols`` (MR rows
  x NRV vectors; register-feasible tiles of at least half the largest area), ``gemm_k_block`` (Kc),
  ``gemm_panel_rows`` (Tn);
* ``int8_gemv``: ``int8_prefetch_bytes`` (0 = no software prefetch), ``int8_prefetch_locality`` (0 = non-temporal,
  3 = prefetcht0: which one streams faster is a fact of the core that only a measurement confirms);
* ``int8_gemm``: ``int8_gemm_mr``, ``int8_gemm_nrv``, ``int8_gemm_nt``.

A knob dict names only what differs from the derivation (``{}`` is the derived kernel); ``effective`` fills in
the derived values so two dicts that build the same kernel are measured once. Knob names are CPUParams field
names (int8 ones: the int8 builders' arguments under the CPUParams names the lead added); a name this CPUParams
does not have is left out of the space.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from dataclasses import dataclass, field


@dataclass
class Dim:
    name: str
    values: list  # derived first
    joint: tuple[str, ...] = ()  # a tile: the value is a tuple setting several knobs together

    @property
    def derived(self):
        return self.values[0]

    def knobs(self, value) -> dict:
        if self.joint:
            return dict(zip(self.joint, value))
        return {self.name: value}


@dataclass
class Space:
    kind: str
    dims: list[Dim] = field(default_factory=list)

    def derived(self) -> dict:
        """Effective values of the derived kernel."""
        out = {}
        for d in self.dims:
            out.update(d.knobs(d.derived))
        return out

    def effective(self, knobs: dict) -> dict:
        return {**self.derived(), **knobs}

    def tag(self, knobs: dict) -> str:
        return json.dumps(self.effective(knobs), sort_keys=True, default=str)

    def minimal(self, knobs: dict) -> dict:
        """Only the knobs that differ from the derivation."""
        d = self.derived()
        return {k: v for k, v in knobs.items() if d.get(k, object()) != v}

    def size(self) -> int:
        n = 1
        for d in self.dims:
            n *= len(d.values)
        return n

    def neighbours(self, best: dict, dim: Dim) -> list[dict]:
        """``best`` with ``dim`` set to each of its other values."""
        cur = self.effective(best)
        out = []
        for v in dim.values:
            cand = self.minimal({**cur, **dim.knobs(v)})
            if self.tag(cand) != self.tag(best):
                out.append(cand)
        return out

    def random_points(self, n: int, seed: int = 0) -> list[dict]:
        rng = random.Random(seed)
        points = []
        if self.size() <= 4 * n:
            combos = list(itertools.product(*[d.values for d in self.dims]))
            rng.shuffle(combos)
        else:
            combos = (tuple(rng.choice(d.values) for d in self.dims) for _ in range(8 * n))
        for combo in combos:
            knobs = {}
            for d, v in zip(self.dims, combo):
                knobs.update(d.knobs(v))
            points.append(self.minimal(knobs))
            if len(points) >= n:
                break
        return points

    def describe(self) -> dict:
        return {d.name: [list(v) if isinstance(v, tuple) else v for v in d.values] for d in self.dims}


def _uniq(values):
    out = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def _call(obj, name, *args, default=None):
    fn = getattr(obj, name, None)
    try:
        return fn(*args) if fn is not None else default
    except Exception:  # pylint: disable=broad-except
        return default


def space_for(task, tt) -> Space | None:
    """The knob space of a task (None: nothing to tune)."""
    fields = {f.name for f in dataclasses.fields(tt.params)}
    builder = {"dequant_gemv": _gemv, "dequant_gemm": _gemm, "int8_gemv": _int8_gemv, "int8_gemm": _int8_gemm}.get(task.kind)
    if builder is None:
        return None
    space = builder(task, tt)
    space.dims = [d for d in space.dims if all(n in fields for n in (d.joint or (d.name,))) and len(d.values) > 1]
    return space if space.dims else None


def _gemv(task, tt) -> Space:
    p = tt.params
    k = int(task.meta.get("k", 0)) or 4096
    lanes = _call(p, "gemv_vector_lanes", default=16)
    rows = _call(p, "gemv_row_tile", default=4)
    unroll = _call(p, "gemv_k_unroll", default=2)
    dims = [
        Dim("gemv_rows", _uniq([rows, 1, 2, 4, 8])),
        Dim("gemv_unroll", _uniq([unroll, 1, 2, 4])),
        Dim("gemv_accumulators", _uniq([bool(_call(p, "gemv_split_accumulators", default=False)), True, False])),
        Dim("scale_cache", _uniq([bool(_call(p, "gemv_scale_cache", default=True)), False, True])),
        Dim("gemv_lanes", _uniq([lanes] + [v for v in (8, 16, 32) if k % v == 0])),
    ]
    if tt.prefetch_allowed:
        dims.insert(2, Dim("gemv_prefetch", _uniq([bool(_call(p, "gemv_prefetch_enabled", default=True)), False, True])))
    return Space("dequant_gemv", dims)


def _gemm(task, tt) -> Space:
    p = tt.params
    k, n = int(task.meta.get("k", 0)), int(task.meta.get("n", 0))
    granule = int(task.meta.get("granule", 8))  # k-values of one panel gather: 8 sequential q4, 128 planar
    lanes = p.lanes(32)
    blocking = _call(p, "gemm_bcast_blocking", k, n, granule, default=None) if (k and n) else None
    if blocking is not None:
        mr, nrv, _, kc, tn = blocking
    else:
        mr, nrv, _ = _call(p, "gemm_bcast_tile", default=(4, 2, lanes))
        kc = _call(p, "gemm_kc", k, nrv * lanes, default=None) if k else None
        tn = _call(p, "gemm_bcast_panel", kc, n, nrv * lanes, default=None) if (kc and n) else None
    regs = p.num_vector_regs
    feasible = []
    for v in (1, 2, 4):
        for m in range(1, 13):
            if m * v + v + 1 <= regs - 1 and (not n or n % (v * lanes) == 0):
                feasible.append((m, v))
    top = max((m * v for m, v in feasible), default=mr * nrv)
    tiles = sorted((t for t in feasible if t[0] * t[1] * 2 >= top), key=lambda t: (-t[0] * t[1], t))
    step = max(8, granule)
    kcs = [kc] + [v for v in (128, 256, 512, 1024, 2048) if k and k % v == 0 and v % step == 0]
    tns = [tn] + [v for v in (64, 128, 256, 512) if n and n % v == 0 and v % (nrv * lanes) == 0]
    dims = [
        Dim("gemm_tile", _uniq([(mr, nrv)] + tiles[:6]), joint=("gemm_rows", "gemm_cols")),
        Dim("gemm_k_block", _uniq(kcs)[:5]),
        Dim("gemm_panel_rows", _uniq(tns)[:5]),
    ]
    return Space("dequant_gemm", dims)


def _int8_gemv(task, tt) -> Space:
    derived = tt.params.int8_gemv_prefetch_bytes()
    if not tt.prefetch_allowed or not task.meta.get("prefetch", True):
        return Space("int8_gemv", [])
    locality = tt.params.int8_gemv_prefetch_locality()
    return Space("int8_gemv", [
        Dim("int8_prefetch_bytes", _uniq([derived, 0, 4096, 8192, 16384, 24576, 32768])),
        Dim("int8_prefetch_locality", _uniq([locality, 0, 3])),
    ])


def _int8_gemm(task, tt) -> Space:
    isa = task.meta.get("isa")
    try:
        from schedules.cpu.int8_gemm import GEMM_NT, GEMM_TILE

        mr, nrv = GEMM_TILE.get(isa, (4, 2))
        nt = int(GEMM_NT)
    except ImportError:
        mr, nrv, nt = 4, 2, 64
    return Space(
        "int8_gemm",
        [
            Dim("int8_gemm_mr", _uniq([mr, 2, 3, 4, 6])),
            Dim("int8_gemm_nrv", _uniq([nrv, 1, 2, 4])),
            Dim("int8_gemm_nt", _uniq([nt, 32, 64, 128, 256])),
        ],
    )
