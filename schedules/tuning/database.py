"""The tuning database: one JSON file per SoC key, ``DIR/<soc>.json``.

Why one whole-file JSON document rather than appended JSON lines: every write replaces the file atomically
(temporary file in the same directory + fsync + rename + fsync of the directory), so a crash or Ctrl-C at any
moment leaves either the old or the new file, never a half-written line. The file is small (one record per
distinct kernel, a few KB), so rewriting it after each finished task costs nothing. A lock file serializes
concurrent writers (two ``tune`` runs on one DB); each write re-reads the file under the lock and merges.

Header (refused when it does not match): ``soc`` (the key the records were measured for), ``facts_fingerprint``
(sha256 of the CPU facts the schedules were derived from: a derived baseline from other facts is another
baseline), ``tvm_version`` (a kernel key is a structural hash of TVM IR: another TVM may hash differently and
lowers differently), and ``llama_aot_version`` (informative).

Record: ``{key, kind, label, knobs, derived_knobs, derived_us, tuned_us, trials, measured_on, history}``;
``history`` is the search's evidence: ``[[knobs, us, predicted_us(, error)], ...]`` of every candidate
(fastest first).
Merging two records of one key keeps the one with the lower ``tuned_us`` and sums the trials.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path

from runtime_stubs.errors import LlamaAotError
from runtime_stubs.messages import plain, shown, shown_list

FORMAT = "llama-aot-tuning"
FORMAT_VERSION = 1
RECORD_FIELDS = ("key", "kind", "knobs", "derived_us", "tuned_us", "trials")
MAX_DEPTH = 16  # {"records": [record: {"history": [entry: [knobs: {...}]]}]} is 6 levels


def llama_aot_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama-aot")
    except Exception:  # pylint: disable=broad-except
        return "unknown"


def tvm_version() -> str:
    import tvm

    return str(tvm.__version__)


def fingerprint(facts: dict) -> str:
    """sha256 (16 hex digits) of the facts, key-order independent."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def db_path(db_dir: str | Path, soc: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", soc).strip("_") or "soc"
    return Path(db_dir) / f"{safe}.json"


class TuningDB:
    """``TuningDB.open(dir, soc, facts)``: the SoC's database (created empty if absent), checked against the
    header. ``add(record)`` merges one record and writes the file atomically; ``get(key)`` looks one up."""

    def __init__(self, path: Path, header: dict, records: dict[str, dict]):
        self.path = path
        self.header = header
        self.records = records

    # --- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, db_dir: str | Path, soc: str, facts: dict, create: bool = True) -> "TuningDB":
        db_dir = Path(db_dir)
        if db_dir.exists() and not db_dir.is_dir():
            raise LlamaAotError(f"--db {db_dir} is a file; give a directory (one <soc>.json per SoC is kept there)")
        path = db_path(db_dir, soc)
        header = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "soc": soc,
            "facts_fingerprint": fingerprint(facts),
            "facts": facts,
            "tvm_version": tvm_version(),
            "llama_aot_version": llama_aot_version(),
        }
        if not path.exists():
            if not create:
                others = sorted(p.stem for p in db_dir.glob("*.json")) if db_dir.is_dir() else []
                hint = f" (it has: {', '.join(others)})" if others else ""
                raise LlamaAotError(
                    f"no tuning records for {soc!r} in {db_dir}{hint}; run `llama-aot tune MODEL "
                    f"{'--target host' if soc == 'host' else '--soc ' + soc} --db {db_dir}` first"
                )
            return cls(path, header, {})
        stored_header, records = read_file(path)
        check_header(path, stored_header, header)
        return cls(path, stored_header, records)

    # --- queries ---------------------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def done(self, key: str, trials: int, predicted: bool = False) -> bool:
        """Tuned before (measured, or predicted for a cost-model run) with at least ``trials`` trials: a rerun
        skips it."""
        rec = self.records.get(key)
        if rec is None or (bool(rec.get("predicted")) and not predicted):
            return False
        return int(rec.get("trials", 0)) >= trials

    def knobs(self) -> dict[str, dict]:
        """key -> knobs of every record (what compile applies)."""
        return {k: dict(r["knobs"]) for k, r in self.records.items()}

    # --- writing ---------------------------------------------------------------------------
    def add(self, record: dict) -> dict:
        """Merge ``record`` into the file (re-read under the lock: another run may have written) and write it
        atomically. Returns the record kept for its key."""
        check_record(record, self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.path):
            if self.path.exists():
                header, records = read_file(self.path)
                check_header(self.path, header, self.header)
            else:
                records = {}
            merged = merge_records(records.get(record["key"]), record)
            records[record["key"]] = merged
            write_atomic(self.path, {"header": self.header, "records": [records[k] for k in sorted(records)]})
            self.records = records
        return merged


def merge_records(old: dict | None, new: dict) -> dict:
    """Keep the faster record of one key (the lower tuned_us; a measured one over a cost-model prediction);
    trials add up, histories are joined."""
    if old is None:
        return copy.deepcopy(new)
    if bool(old.get("predicted")) != bool(new.get("predicted")):  # a measurement beats a cost-model guess
        best, other = (old, new) if new.get("predicted") else (new, old)
    else:
        best, other = (new, old) if float(new["tuned_us"]) < float(old["tuned_us"]) else (old, new)
    out = copy.deepcopy(best)
    out["trials"] = int(old.get("trials", 0)) + int(new.get("trials", 0))
    seen = set()
    history = []
    for entry in list(best.get("history", [])) + list(other.get("history", [])):
        tag = json.dumps(entry[0], sort_keys=True)
        if tag not in seen:
            seen.add(tag)
            history.append(entry)
    out["history"] = history
    return out


def check_record(record: dict, path: Path) -> None:
    missing = [f for f in RECORD_FIELDS if f not in record]
    if missing:
        raise LlamaAotError(f"internal: tuning record for {path} lacks {', '.join(missing)}")


def check_header(path: Path, stored: dict, expected: dict) -> None:
    """One-line refusals of a database from another SoC, other facts or another TVM version."""
    if stored.get("format") != FORMAT or stored.get("format_version") != FORMAT_VERSION:
        raise LlamaAotError(f"{path} is not a llama-aot tuning database (format {FORMAT} v{FORMAT_VERSION}); remove it or use another --db")
    if stored.get("soc") != expected["soc"]:
        raise LlamaAotError(
            f"{path} holds records for SoC {shown(stored.get('soc'))}, not {expected['soc']!r}: use the database of "
            f"{expected['soc']!r} (another --db directory) or re-tune"
        )
    if stored.get("tvm_version") != expected["tvm_version"]:
        raise LlamaAotError(
            f"{path} was tuned with TVM {plain(stored.get('tvm_version'))}, this is TVM {expected['tvm_version']}: kernel "
            f"keys and code differ between versions; re-tune into a new --db directory"
        )
    if stored.get("facts_fingerprint") != expected["facts_fingerprint"]:
        facts = stored.get("facts") if isinstance(stored.get("facts"), dict) else {}
        changed = sorted(k for k in set(facts) | set(expected["facts"]) if facts.get(k) != expected["facts"].get(k))
        raise LlamaAotError(
            f"{path} was tuned for other CPU facts ({shown_list(changed, quote=False) or 'fingerprint'} differ, e.g. another "
            f"--threads); tune again with these options into another --db directory"
        )


def read_file(path: Path) -> tuple[dict, dict[str, dict]]:
    """(header, key -> record); a one-line error when the file is not a complete database."""
    try:
        data = json.loads(Path(path).read_text())
    except UnicodeDecodeError:
        raise LlamaAotError(f"tuning database {path} is corrupted (not UTF-8 text); delete it and re-tune") from None
    except ValueError as e:
        raise LlamaAotError(f"tuning database {path} is corrupted ({e}); delete it and re-tune") from None
    except RecursionError:
        raise LlamaAotError(f"tuning database {path} is corrupted (nested too deeply); delete it and re-tune") from None
    except OSError as e:
        raise LlamaAotError(f"cannot read tuning database {path}: {e.strerror}") from None
    if not isinstance(data, dict) or not isinstance(data.get("header"), dict) or not isinstance(data.get("records"), list):
        raise LlamaAotError(f"tuning database {path} is corrupted (no header/records); delete it and re-tune")
    if _too_deep(data):  # json.loads allows ~1000 levels; comparing or deep-copying them (merge) would not
        raise LlamaAotError(f"tuning database {path} is corrupted (nested too deeply); delete it and re-tune")
    records = {}
    for i, rec in enumerate(data["records"]):
        if not isinstance(rec, dict) or any(f not in rec for f in RECORD_FIELDS) or not isinstance(rec["knobs"], dict):
            raise LlamaAotError(f"tuning database {path} is corrupted (a record lacks {'/'.join(RECORD_FIELDS)}); delete it and re-tune")
        problem = _record_problem(rec)
        if problem:
            raise LlamaAotError(f"tuning database {path} is corrupted (record {i}: {problem}); delete it and re-tune")
        records[rec["key"]] = rec
    return data["header"], records


def _too_deep(value, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests lists/objects more than ``limit`` deep (iteratively: no recursion)."""
    todo = [(value, 0)]
    while todo:
        v, depth = todo.pop()
        if depth > limit:
            return True
        if isinstance(v, dict):
            todo.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            todo.extend((x, depth + 1) for x in v)
    return False


def _is_time(v) -> bool:
    """A time in microseconds as stored: a finite number >= 0 (JSON also allows NaN, Infinity, 1e999)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v) and v >= 0
    except OverflowError:  # an int too large for a float
        return False


def _record_problem(rec: dict) -> str | None:
    """What makes a record (which has every RECORD_FIELDS key and dict knobs) unusable by merge/done/compile."""
    if not isinstance(rec["key"], str) or not rec["key"]:
        return f"key {shown(rec['key'])} is not a kernel key"
    if not isinstance(rec["kind"], str) or not isinstance(rec.get("label", ""), str):
        return "kind and label must be strings"
    for f in ("derived_us", "tuned_us"):
        if not _is_time(rec[f]):
            return f"{f} {shown(rec[f])} is not a time"
    if not isinstance(rec["trials"], int) or isinstance(rec["trials"], bool) or rec["trials"] < 0:
        return f"trials {shown(rec['trials'])} is not a count"
    if not isinstance(rec.get("predicted", False), bool):
        return f"predicted {shown(rec['predicted'])} is not true/false"
    history = rec.get("history", [])
    if not isinstance(history, list):
        return "history is not a list"
    for h in history:
        if (not isinstance(h, list) or len(h) < 2 or not isinstance(h[0], dict)
                or not all(x is None or _is_time(x) for x in h[1:3])):
            return f"history entry {shown(h)} is not [knobs, us, predicted_us]"
    return None


def write_atomic(path: Path, data: dict) -> None:
    """Write JSON to ``path`` so that a reader (or a crash) sees the old or the new file, nothing else."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def _locked(path: Path):
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
