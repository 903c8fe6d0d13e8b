"""Apply tuning records at compile time (``llama-aot compile --tuned DB``).

Why a context rather than new arguments through the pipeline: the knobs must reach two places that compile does
not call directly -- ``CPURule.apply`` (inside TVM's ``ApplyDefaultSchedule``) for rule-scheduled kernels, and the
int8 kernel factory the model calls while it is exported. ``activate(options)`` opens the SoC's database
(refusing another SoC / TVM version / other facts), and while it is active each kernel looks its key up:

* rule kernels: key = rule name + structural hash of the unscheduled function (tasks.rule_key); the record's
  knobs replace CPUParams fields (``dataclasses.replace(params, **knobs)``);
* int8 kernels: key = ``int8_gemv|int8_gemm/<scheme>/<order>/N../K..``; the knobs (CPUParams fields too)
  replace the params ``schedules.cpu.int8_gemm.derived_int8_matmul`` derives the kernel's arguments from.

Nothing is re-timed here: the records were chosen when tuning, so a compile is deterministic. ``summary()`` is what
``llama-aot.json`` records under ``"tuning"``: the database, and for every kernel that used a record its knobs.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging

from .keys import TUNING_ATTR, int8_key, rule_key

logger = logging.getLogger(__name__)

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("llama_aot_tuning", default=None)


class Records:
    """The records of one database, and which of them a compile used."""

    def __init__(self, records: dict[str, dict], db: str | None = None, soc: str | None = None):
        self.records = records
        self.db = db
        self.soc = soc
        self.applied: dict[str, dict] = {}
        self.failed: dict[str, str] = {}

    def lookup(self, key: str) -> dict | None:
        rec = self.records.get(key)
        return dict(rec["knobs"]) if rec is not None else None

    def summary(self) -> dict:
        import hashlib

        used = json.dumps({k: self.records[k] for k in sorted(self.applied)}, sort_keys=True, default=str)
        return {
            "db": self.db,
            "soc": self.soc,
            "records": len(self.records),
            "applied_records_sha256": hashlib.sha256(used.encode()).hexdigest()[:16],
            "applied": {k: self.applied[k] for k in sorted(self.applied)},
            **({"failed": dict(sorted(self.failed.items()))} if self.failed else {}),
        }


@contextlib.contextmanager
def using(records: Records):
    token = _ACTIVE.set(records)
    try:
        yield records
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def suspended():
    """No records: kernels as derived (task extraction, measuring the baseline)."""
    token = _ACTIVE.set(None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def activate(options):
    """For compile: the records of ``options.tuned_db`` for this target while the block runs (yields None
    when no database was given, so compile works unchanged)."""
    db_dir = getattr(options, "tuned_db", None)
    if not db_dir:
        yield None
        return
    from .database import TuningDB
    from .target import resolve

    tt = resolve(options)
    db = TuningDB.open(db_dir, tt.soc, tt.facts(), create=False)
    # the file's name, not its path: a package records no paths (the same inputs give the same bytes)
    with using(Records(db.records, db=db.path.name, soc=tt.soc)) as records:
        yield records


def active() -> Records | None:
    return _ACTIVE.get()


# --- rule-scheduled kernels (called from schedules/cpu/base.py: CPURule.apply) ------------------------------
def schedule_with_records(rule, func, target, params):
    """``rule.schedule(func, target, params)``, with the record's knobs when one exists for this kernel. A record
    that no longer schedules (the rule changed) falls back to the derived params and is reported."""
    records = _ACTIVE.get()
    if records is None or not records.records:
        return rule.schedule(func, target, params)
    name = type(rule).__name__
    key = rule_key(name, func)
    knobs = records.lookup(key)
    if knobs is None:
        return rule.schedule(func, target, params)
    try:
        fields = {f.name for f in dataclasses.fields(params)}
        unknown = sorted(set(knobs) - fields)
        if unknown:
            raise ValueError(f"unknown knobs {unknown}")
        sch = rule.schedule(func, target, dataclasses.replace(params, **knobs))
    except Exception as err:  # pylint: disable=broad-except
        sch, why = None, str(err).splitlines()[0] if str(err) else type(err).__name__
    else:
        why = "the rule did not take the function with these knobs"
    if sch is None:
        records.failed[key] = why
        logger.warning("tuning record %s not applied (%s); derived schedule used", key, why)
        return rule.schedule(func, target, params)
    records.applied[key] = knobs
    return sch


# --- hand-written int8 kernels (called from compiler/model/llama.py) ----------------------------------------
def int8_kind(rows) -> str | None:
    if all(isinstance(d, int) and d == 1 for d in rows):
        return "int8_gemv"
    if len(rows) == 2:
        return "int8_gemm"
    return None


def nibble_order(scheme, k_in: int) -> str:
    try:
        return str(scheme.nibble_order(k_in))
    except Exception:  # pylint: disable=broad-except
        return "sequential"


def build_int8(scheme, n_out: int, k_in: int, rows, params, isa: str, prefetch: bool, knobs: dict):
    """The int8 kernel exactly as the model builds it (``derived_int8_matmul``), with a record's knobs
    (CPUParams fields; {}: the derived kernel)."""
    from schedules.cpu.int8_gemm import derived_int8_matmul

    return derived_int8_matmul(scheme, n_out, k_in, tuple(rows), params, isa=isa, prefetch=prefetch, **knobs)


def tuned_int8_matmul(base):
    """Wrap the model's ``int8_kernel`` factory ``base(scheme, N, K, rows) -> PrimFunc | None`` (a partial of
    ``derived_int8_matmul`` with ``params``, ``isa`` and ``prefetch``; record knobs are CPUParams fields): the same kernels, each tagged with its key (the
    ``llama_aot.tuning`` attribute: how tasks.py finds and rebuilds it), built with a record's knobs when a
    ``--tuned`` database is active and has one for that key."""
    keywords = dict(getattr(base, "keywords", {}) or {})
    isa, prefetch = keywords.get("isa"), bool(keywords.get("prefetch", True))

    def make(scheme, n_out, k_in, rows):
        func = base(scheme, n_out, k_in, rows)
        kind = int8_kind(rows)
        if func is None or kind is None:
            return func
        order = nibble_order(scheme, k_in)
        key = int8_key(kind, scheme.name, order, n_out, k_in)
        records = _ACTIVE.get()
        knobs = records.lookup(key) if records is not None else None
        if knobs is not None:  # {}: the record says the derived kernel is the best
            try:
                tuned = base(scheme, n_out, k_in, rows, **knobs) if knobs else func
            except Exception as err:  # pylint: disable=broad-except
                tuned, why = None, str(err).splitlines()[0] if str(err) else type(err).__name__
            else:
                why = "the kernel builder refused these knobs"
            if tuned is not None:
                func = tuned
                records.applied[key] = knobs
            else:
                records.failed[key] = why
        meta = {
            "key": key, "kind": kind, "scheme": scheme.name, "order": order, "n": int(n_out), "k": int(k_in),
            "x_shape": [int(d) for d in rows] if kind == "int8_gemv" else None, "isa": isa, "prefetch": prefetch,
        }
        return func.with_attr(TUNING_ATTR, json.dumps(meta, sort_keys=True))

    return make
