#!/usr/bin/env python3
"""Bounded fuzzing of llama-aot's input loaders (method and figures: docs/reliability.md).

Usage: python3 scripts/fuzz_loaders.py [--targets a,b] [--inputs N] [--minutes M] [--seed S]
       [--timeout-s 2] [--memory-gib 2] [--findings DIR] [--json OUT.json]
       python3 scripts/fuzz_loaders.py --replay TARGET:INDEX [--seed S] [--save DIR]
       python3 scripts/fuzz_loaders.py --list

Each target stops after ``--inputs`` inputs (default 100,000) or ``--minutes`` minutes (default 10),
whichever comes first. Every input is a small directory of files (file name -> bytes) made from the
target's seed corpus by a seeded mutation engine: input ``i`` of target ``T`` depends only on
``(--seed, T, i)``, so ``--replay T:i`` rebuilds it exactly. The first inputs are the seeds themselves.

Mutators: byte level (bit flips, interesting bytes and tokens, insert/delete/duplicate ranges, truncation,
splicing with another seed, 64-bit boundary integers written over the bytes, number and string tokens
replaced by boundary values, deep ``[`` nesting), tree level for JSON and TOML files (a random node replaced
by a boundary value, a string from the corpus or a junk type, deleted, duplicated, renamed, wrapped, deeply
nested; JSON objects re-serialized with duplicated keys, NaN/Infinity, lone surrogates, i.e. invalid UTF-8),
plus each target's structure-aware mutators (e.g. safetensors data_offsets/shape/dtype/header length).

Bounds: the process address space is capped with ``resource.setrlimit(RLIMIT_AS)`` (``--memory-gib``, 2 GiB:
the loaders and their imports take about 1.05 GiB, so one input may use about 0.9 GiB more); an input that
runs past ``--timeout-s`` (2 s, SIGALRM via setitimer) is interrupted and is a hang finding; a backstop
(faulthandler, 10x the timeout + 10 s) kills the process if native code never returns to Python, and the
in-flight input's index is always in ``DIR/<target>/in-flight.txt`` for ``--replay``.

A finding is any input for which a loader raises anything but ``LlamaAotError``, or raises a
``LlamaAotError`` whose message is not one printable line (empty, several lines, unencodable lone
surrogates, longer than 1000 characters), or times out. Findings are grouped by signature (exception type +
the innermost project frame); the first three inputs of each are saved under ``DIR/<target>/<signature>/``.

Adding a target: one function that loads the files of one input directory (raise-or-return; use ``ok()``
for calls whose LlamaAotError should not end the input) and one that builds the seed corpus, then
``TARGETS["name"] = Target(seeds=..., run=...)``.
"""

from __future__ import annotations

import argparse
import copy
import faulthandler
import hashlib
import json
import math
import os
import random
import re
import resource
import shutil
import signal
import sys
import tempfile
import time
import tomllib
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runtime_stubs.errors import LlamaAotError  # noqa: E402

Files = dict[str, bytes]  # one input: file name -> content, written into a fresh directory
MAX_MESSAGE = 1000  # characters; a longer LlamaAotError message is a finding
MAX_FILE = 4 << 20  # mutated files are cut to 4 MiB


# ================================================================================================ engine


@dataclass
class Target:
    """``seeds()``: the seed corpus; ``run(dir)``: load the input written into ``dir``; ``mutators``:
    structure-aware ``(rng, files, corpus) -> files`` used for about half of the mutations; ``weights``:
    how often each file name is the one mutated (default: all alike)."""

    seeds: Callable[[], list[Files]]
    run: Callable[[Path], None]
    mutators: tuple[Callable[[random.Random, Files, list[Files]], Files], ...] = ()
    weights: dict[str, float] = field(default_factory=dict)
    doc: str = ""


class BadMessage(Exception):
    """A LlamaAotError whose message is not one printable line."""

    def __init__(self, why: str, error: LlamaAotError):
        super().__init__(f"{why}: {str(error)[:300]!r}")
        self.why = why
        self.error = error


class InputTimeout(BaseException):
    """Raised by SIGALRM when one input runs past the time bound (a BaseException, so that no
    ``except Exception`` in a loader can swallow it)."""


def message_problem(msg: str) -> str | None:
    if not msg.strip():
        return "empty message"
    if "\n" in msg or "\r" in msg:
        return "multi-line message"
    try:
        msg.encode("utf-8")
    except UnicodeEncodeError:
        return "unprintable message (lone surrogates)"
    if len(msg) > MAX_MESSAGE:
        return f"message longer than {MAX_MESSAGE} characters"
    return None


def ok(fn: Callable, *args, **kwargs):
    """Call ``fn``; a LlamaAotError with a proper message is an accepted outcome (returns None)."""
    try:
        return fn(*args, **kwargs)
    except LlamaAotError as e:
        why = message_problem(str(e))
        if why:
            raise BadMessage(why, e) from e
        return None


# --------------------------------------------------------------------------- interesting values

INT_EDGES = [0, 1, -1, 2, 3, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1023, 1024, 4095, 4096,
             65535, 65536, 2**31 - 1, 2**31, -2**31, 2**32 - 1, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**63,
             -2**63, -2**63 - 1, 2**64 - 1, 2**64, 10**18, 10**100, -10**100]
FLOAT_EDGES = [0.0, -0.0, 0.5, 1.0, 1.5, 2.0, 64.0, 1e-300, 5e-324, 1e308, 1.7976931348623157e308,
               float("nan"), float("inf"), float("-inf"), 2.0**63, 2.0**64, -1.0]
STR_EDGES = ["", " ", "\x00", "a\nb", "\r", "\t", "\ud800", "\udfff", "é", "日本", "🙂", "../../etc/passwd",
             "/etc/passwd", "a/b", "\\", ".", "..", "x" * 5000, "%s%n", "{}", "null", "NaN", "1", "-1", "true",
             "torch.bfloat16", "bfloat16", "F32", "BF16", "F16", "I64", "F8_E4M3", "BOOL", "llama3", "default",
             "LlamaForCausalLM", "model.safetensors", "__metadata__", "1.3", "vulkan", "opencl", "metal"]
BYTE_TOKENS = [b'"', b"{", b"}", b"[", b"]", b",", b":", b"\\", b"\\u", b"\\ud800", b"NaN", b"-Infinity",
               b"1e999", b"\x00", b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\n", b"=", b"[[", b'"""', b"'''",
               b"#", b"null", b"true", b"-0", b"18446744073709551616", b"9" * 400, b"{" * 64, b"0x10"]
BYTE_EDGES = [0, 1, 0x7F, 0x80, 0xFF, 0x20, 0x22, 0x5C, 0x0A]


class Pairs(list):
    """A JSON object as a list of (key, value) pairs: serialized as is, so keys may repeat."""


def edge_value(rng: random.Random, pool: list[str], depth: int = 0) -> Any:
    r = rng.random()
    if r < 0.3:
        return rng.choice(INT_EDGES)
    if r < 0.45:
        return rng.choice(FLOAT_EDGES)
    if r < 0.65:
        return rng.choice(STR_EDGES)
    if r < 0.8 and pool:
        return rng.choice(pool)
    if r < 0.86:
        return rng.choice([None, True, False])
    if depth > 2:
        return 0
    k = rng.random()
    if k < 0.25:
        return []
    if k < 0.45:
        return {}
    if k < 0.6:
        return [edge_value(rng, pool, depth + 1) for _ in range(rng.randint(1, 4))]
    if k < 0.75:
        return {rng.choice(pool or STR_EDGES): edge_value(rng, pool, depth + 1)}
    if k < 0.85:
        return [1] * rng.choice([100, 10_000])
    v: Any = 0
    for _ in range(rng.choice([10, 100, 400])):
        v = [v]
    return v


# --------------------------------------------------------------------------- JSON / TOML trees


def dump_json(obj: Any, rng: random.Random) -> bytes:
    """Serialize a mutated tree (iteratively: trees may be nested thousands deep); Pairs keep repeated keys,
    NaN/Infinity are written as Python's json does, lone surrogates become invalid UTF-8."""
    ascii_only = rng.random() < 0.5
    out: list[str] = []
    todo: list[Any] = [obj]
    lit = _Lit
    while todo:
        v = todo.pop()
        if isinstance(v, _Lit):
            out.append(v.text)
            continue
        if isinstance(v, (dict, Pairs)):
            items = list(v.items()) if isinstance(v, dict) else list(v)
            seq: list[Any] = [lit("{")]
            for j, (k, x) in enumerate(items):
                seq += [lit((", " if j else "") + json.dumps(str(k), ensure_ascii=ascii_only) + ": "), x]
            seq.append(lit("}"))
            todo.extend(reversed(seq))
        elif isinstance(v, list):
            seq = [lit("[")]
            for j, x in enumerate(v):
                seq += ([lit(", ")] if j else []) + [x]
            seq.append(lit("]"))
            todo.extend(reversed(seq))
        elif isinstance(v, str):
            out.append(json.dumps(v, ensure_ascii=ascii_only))
        else:  # numbers (NaN/Infinity allowed), bool, None
            out.append(json.dumps(v))
    return "".join(out).encode("utf-8", "surrogatepass")


class _Lit:
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def dump_toml(obj: Any) -> bytes:
    """A TOML document for a mutated tree: top-level tables as [sections], everything deeper inline."""

    def key(k: Any) -> str:
        k = str(k)
        return k if _BARE_KEY.fullmatch(k) else string(k)

    def string(x: str) -> str:
        out = []
        for ch in x:
            o = ord(ch)
            if ch in '"\\':
                out.append("\\" + ch)
            elif o < 0x20 or o == 0x7F or 0xD800 <= o <= 0xDFFF:
                out.append(f"\\u{o:04X}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if v != v else "inf" if v == math.inf else "-inf" if v == -math.inf else repr(v)
        if isinstance(v, str):
            return string(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, Pairs):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v) + "}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        if v is None:
            return '""'
        return v.isoformat()  # datetime / date / time

    if not isinstance(obj, dict):
        return ("x = " + value(obj) + "\n").encode("utf-8", "surrogatepass")
    lines = [f"{key(k)} = {value(v)}" for k, v in obj.items() if not isinstance(v, dict)]
    for k, v in obj.items():
        if isinstance(v, dict):
            lines.append(f"[{key(k)}]")
            lines += [f"{key(kk)} = {value(vv)}" for kk, vv in v.items()]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")


def _nodes(obj: Any, path: tuple = (), out: list | None = None, limit: int = 20000) -> list[tuple]:
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    out.append(path)
    if isinstance(obj, dict):
        for k, v in obj.items():
            _nodes(v, path + (k,), out, limit)
    elif isinstance(obj, list) and not isinstance(obj, Pairs):  # a Pairs object is mutated as a whole
        for i, v in enumerate(obj):
            _nodes(v, path + (i,), out, limit)
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def strings_of(obj: Any, out: set | None = None) -> set[str]:
    out = set() if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.add(k)
            strings_of(v, out)
    elif isinstance(obj, list):
        for v in obj:
            strings_of(v, out)
    elif isinstance(obj, str):
        out.add(obj)
    return out


def mutate_tree(rng: random.Random, obj: Any, pool: list[str]) -> Any:
    """One random change somewhere in a parsed JSON/TOML tree (the tree is modified in place)."""
    paths = _nodes(obj)
    path = rng.choice(paths)
    node = _get(obj, path)
    parent = _get(obj, path[:-1]) if path else None
    op = rng.random()

    def put(v: Any) -> Any:
        if not path:
            return v
        parent[path[-1]] = v
        return obj

    if op < 0.35:
        return put(edge_value(rng, pool))
    if op < 0.5:  # a value of the same kind, at a boundary
        if isinstance(node, bool):
            return put(not node)
        if isinstance(node, int):
            return put(rng.choice([node + 1, node - 1, -node, node * 2, 0, rng.choice(INT_EDGES),
                                   float(node) if abs(node) < 2**1000 else 1e308]))
        if isinstance(node, float):
            return put(rng.choice(FLOAT_EDGES + [node * 1e300, -node, int(node) if math.isfinite(node) else 0]))
        if isinstance(node, str):
            return put(rng.choice([node + rng.choice(STR_EDGES), node[: len(node) // 2], node.upper(), "",
                                   rng.choice(pool or STR_EDGES)]))
        return put(edge_value(rng, pool))
    if op < 0.65 and path:  # delete
        del parent[path[-1]]
        return obj
    if op < 0.72 and isinstance(node, list) and node:  # duplicate / drop / reverse items
        j = rng.randrange(len(node))
        rng.choice([lambda: node.insert(j, copy.deepcopy(node[j])), lambda: node.pop(j), node.reverse])()
        return obj
    if op < 0.8 and isinstance(node, dict):  # add a key (maybe a duplicate of an existing one)
        if node and rng.random() < 0.5:
            items = list(node.items())
            k, v = rng.choice(items)
            items.insert(rng.randrange(len(items) + 1), (k, edge_value(rng, pool) if rng.random() < 0.5 else v))
            return put(Pairs(items))
        node[rng.choice(pool + STR_EDGES)] = edge_value(rng, pool)
        return obj
    if op < 0.86 and path and isinstance(parent, dict):  # rename a key
        v = parent.pop(path[-1])
        parent[rng.choice(pool + STR_EDGES)] = v
        return obj
    if op < 0.93:  # wrap
        return put(rng.choice([[node], {"value": node}, {rng.choice(pool or STR_EDGES): node}]))
    v: Any = node
    for _ in range(rng.choice([5, 50, 300])):
        v = [v]
    return put(v)


def _loads_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def _loads_toml(data: bytes) -> Any:
    return tomllib.loads(data.decode("utf-8"))


TREE_FORMATS: dict[str, tuple[Callable[[bytes], Any], Callable[[Any, random.Random], bytes]]] = {
    ".json": (_loads_json, dump_json),
    ".toml": (_loads_toml, lambda obj, rng: dump_toml(obj)),
}


def tree_mutation(rng: random.Random, name: str, data: bytes, pool: list[str]) -> bytes | None:
    fmt = TREE_FORMATS.get(Path(name).suffix)
    if fmt is None:
        return None
    loads, dumps = fmt
    try:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError are ValueErrors; deep trees RecursionError
        obj = loads(data)
        for _ in range(rng.choice([1, 1, 2, 3])):
            obj = mutate_tree(rng, obj, pool)
        return dumps(obj, rng)
    except (ValueError, RecursionError, ArithmeticError, TypeError):  # the mutation engine, not a loader
        return None


# --------------------------------------------------------------------------- bytes

_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_STRING = re.compile(rb'"(?:[^"\\\n]|\\.){0,200}"')


def mutate_bytes(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    b = bytearray(data)
    n = len(b)
    pos = rng.randrange(n + 1)
    op = rng.randrange(13)
    if op == 0 and n:
        b[pos % n] ^= 1 << rng.randrange(8)
    elif op == 1 and n:
        b[pos % n] = rng.choice(BYTE_EDGES) if rng.random() < 0.5 else rng.randrange(256)
    elif op == 2:
        b[pos:pos] = (rng.choice(BYTE_TOKENS) if rng.random() < 0.7
                      else bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))))
    elif op == 3 and n:
        b[pos:pos + rng.choice([1, 2, 8, 64, 4096])] = b""
    elif op == 4 and n:
        k = rng.choice([1, 8, 64, 1024])
        b[pos:pos] = b[pos:pos + k]
    elif op == 5:
        del b[pos:]
    elif op == 6 and others:
        o = rng.choice(others)
        b = b[:pos] + o[rng.randrange(len(o) + 1):]
    elif op == 7:  # a boundary 64-bit integer over 8 bytes (e.g. a safetensors header length)
        v = rng.choice(INT_EDGES + [n, n - 8, n + 1, n - 9]) % (1 << 64)
        at = 0 if rng.random() < 0.5 else pos
        b[at:at + 8] = v.to_bytes(8, "little")
    elif op == 8:  # a number token -> a boundary number
        ms = list(_NUMBER.finditer(b))
        if ms:
            m = rng.choice(ms)
            v = rng.choice(INT_EDGES + FLOAT_EDGES)
            text = json.dumps(v).encode() if rng.random() < 0.8 else rng.choice([b"nan", b"inf", b"1_000", b"0x7f", b"1e400"])
            b[m.start():m.end()] = text
    elif op == 9:  # a string token -> an odd string
        ms = list(_STRING.finditer(b))
        if ms:
            m = rng.choice(ms)
            s = rng.choice(STR_EDGES)
            b[m.start():m.end()] = json.dumps(s).encode() if rng.random() < 0.6 else b'"' + s.encode("utf-8", "surrogatepass") + b'"'
    elif op == 10:  # deep nesting
        b[pos:pos] = rng.choice([b"[", b"{\"a\":", b"[[", b"a = ["]) * rng.choice([1000, 20000, 100000])
    elif op == 11:
        b += rng.choice(BYTE_TOKENS) * rng.randint(1, 4)
    else:
        b = bytearray(rng.choice([b"", b"\x00" * 8, b"{}", b"[]", b"null", b"\xff" * 16]))
    return bytes(b[:MAX_FILE])


def make_input(target: Target, corpus: list[Files], pools: list[str], blobs: list[bytes], seed: int, name: str,
               index: int) -> Files:
    """Input ``index`` of ``name``: the seeds first, then mutations that depend only on (seed, name, index)."""
    if index < len(corpus):
        return dict(corpus[index])
    rng = random.Random(f"{seed}:{name}:{index}")
    files = dict(rng.choice(corpus))
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5, 8])):
        r = rng.random()
        if target.mutators and r < 0.45:
            try:
                files = rng.choice(target.mutators)(rng, dict(files), corpus)
            except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError, ArithmeticError):
                pass  # a structure-aware mutator meeting an input already mutated out of shape: skip it
            continue
        names = sorted(files)
        if not names:
            break
        weights = [target.weights.get(f, 1.0) for f in names]
        fname = rng.choices(names, weights)[0]
        if r > 0.985:  # drop a file, e.g. a shard or config.json
            del files[fname]
            continue
        new = tree_mutation(rng, fname, files[fname], pools) if r < 0.75 else None
        files[fname] = new if new is not None else mutate_bytes(rng, files[fname], blobs)
    return files


# --------------------------------------------------------------------------- running


@dataclass
class Result:
    target: str
    inputs: int = 0
    seconds: float = 0.0
    findings: dict[str, list[int]] = field(default_factory=dict)  # signature -> failing input indices
    details: dict[str, str] = field(default_factory=dict)  # signature -> first traceback

    @property
    def failing_inputs(self) -> int:
        return sum(len(v) for v in self.findings.values())


def _frame_of(tb) -> str:
    """The innermost frame in the project's code (this script excluded), else the innermost one."""
    frames = traceback.extract_tb(tb)
    here = Path(__file__).resolve()
    for fr in reversed(frames):
        p = Path(fr.filename).resolve()
        if p != here and ROOT in p.parents:
            return f"{p.relative_to(ROOT)}:{fr.lineno} ({fr.name})"
    if frames:
        fr = frames[-1]
        return f"{Path(fr.filename).name}:{fr.lineno} ({fr.name})"
    return "?"


def signature(e: BaseException) -> str:
    if isinstance(e, BadMessage):
        return f"{e.why} from {_frame_of(e.error.__traceback__)}"
    if isinstance(e, InputTimeout):
        return f"timeout in {_frame_of(e.__traceback__)}"
    return f"{type(e).__name__} at {_frame_of(e.__traceback__)}"


def _alarm(signum, frame):
    raise InputTimeout()


def run_input(target: Target, files: Files, workdir: Path, timeout_s: float) -> BaseException | None:
    """Write ``files`` into a fresh directory and run the target on it; the finding, or None."""
    d = workdir / "in"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    for fname, data in files.items():  # names may hold a folder (a package's params/, lib/)
        (d / fname).parent.mkdir(parents=True, exist_ok=True)
        (d / fname).write_bytes(data)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        try:
            target.run(d)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except LlamaAotError as e:
        why = message_problem(str(e))
        return BadMessage(why, e) if why else None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # pylint: disable=broad-except  (every other exception is what we look for)
        return e
    return None


def save_input(files: Files, where: Path) -> None:
    where.mkdir(parents=True, exist_ok=True)
    for fname, data in files.items():
        (where / fname).parent.mkdir(parents=True, exist_ok=True)
        (where / fname).write_bytes(data)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s)[:80] + "-" + hashlib.sha256(s.encode()).hexdigest()[:8]


def fuzz_target(name: str, target: Target, *, inputs: int, seconds: float | None, seed: int,
                findings_dir: Path | None = None, timeout_s: float = 2.0, progress: bool = True,
                keep_per_signature: int = 3) -> Result:
    """Run ``name`` for ``inputs`` inputs or ``seconds`` seconds, whichever comes first."""
    corpus = target.seeds()
    pool_set: set[str] = set()
    blobs = []
    for files in corpus:
        for fname, data in files.items():
            blobs.append(data)
            fmt = TREE_FORMATS.get(Path(fname).suffix)
            if fmt is not None:
                try:
                    pool_set |= {s for s in strings_of(fmt[0](data)) if len(s) < 200}
                except ValueError:
                    pass
    pools = sorted(pool_set)[:5000]
    res = Result(name)
    workdir = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    old_handler = signal.signal(signal.SIGALRM, _alarm)
    flight_fd = None
    if findings_dir is not None:
        (findings_dir / name).mkdir(parents=True, exist_ok=True)
        flight_fd = os.open(findings_dir / name / "in-flight.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=inputs, desc=f"{name:16s}", unit="in", mininterval=1.0, dynamic_ncols=True)
    t0 = time.monotonic()
    deadline = t0 + seconds if seconds else math.inf
    try:
        i = 0
        while i < inputs and time.monotonic() < deadline:
            files = make_input(target, corpus, pools, blobs, seed, name, i)
            if flight_fd is not None:
                os.pwrite(flight_fd, f"--replay {name}:{i} --seed {seed}\n".ljust(64).encode(), 0)
            faulthandler.dump_traceback_later(timeout_s * 10 + 10, exit=True)
            err = run_input(target, files, workdir, timeout_s)
            faulthandler.cancel_dump_traceback_later()
            if err is not None:
                sig = signature(err)
                seen = res.findings.setdefault(sig, [])
                seen.append(i)
                if len(seen) == 1:
                    res.details[sig] = "".join(traceback.format_exception(err)) + (
                        "" if not isinstance(err, BadMessage) else f"message: {str(err.error)[:2000]!r}\n")
                    (bar.write if bar else print)(f"[{name}] finding #{len(res.findings)} at input {i}: {sig}",
                                                  file=sys.stderr)
                if findings_dir is not None and len(seen) <= keep_per_signature:
                    where = findings_dir / name / _slug(sig) / f"input-{i}"
                    save_input(files, where)
                    (where.parent / "finding.txt").write_text(
                        f"{sig}\nreplay: python3 scripts/fuzz_loaders.py --replay {name}:{seen[0]} --seed {seed}\n\n"
                        + res.details[sig], errors="backslashreplace")
            i += 1
            if bar:
                bar.update(1)
                if err is not None:
                    bar.set_postfix(findings=len(res.findings), refresh=False)
        res.inputs = i
    finally:
        res.seconds = time.monotonic() - t0
        signal.signal(signal.SIGALRM, old_handler)
        faulthandler.cancel_dump_traceback_later()
        if bar:
            bar.close()
        if flight_fd is not None:
            os.close(flight_fd)
        shutil.rmtree(workdir, ignore_errors=True)
    return res


# ================================================================================================ targets
# Imports of the project's loaders happen inside the functions (the engine alone needs none of them).

TINY_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "intermediate_size": 12,
    "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "vocab_size": 16,
    "bos_token_id": 0, "eos_token_id": [1, 2], "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "max_position_embeddings": 64, "tie_word_embeddings": True,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 32},
}


def _checkpoint_files(config: dict, dtype: str, shards: int = 1, layout: str = "published") -> Files:
    from compiler.frontend.synthetic import write_random_checkpoint

    with tempfile.TemporaryDirectory() as d:
        write_random_checkpoint(d, config, dtype=dtype, num_shards=shards, config_layout=layout)
        return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}


# --------------------------------------------------------------------------- safetensors


def _split_st(data: bytes) -> tuple[dict, bytes] | None:
    if len(data) < 8:
        return None
    n = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return (header, data[8 + n:]) if isinstance(header, dict) else None


def _join_st(rng: random.Random, header: Any, body: bytes) -> bytes:
    raw = dump_json(header, rng)
    r = rng.random()
    if r < 0.1:
        raw += rng.choice([b" " * 7, b"\x00" * 3, b"garbage", b"}"])
    n = len(raw)
    r = rng.random()
    if r < 0.12:  # the length field lies
        n = rng.choice([2**63, 2**64 - 1, 2**63 - 1, n + 1, n - 1, 0, 100_000_001, len(raw) + len(body),
                        len(raw) + len(body) + 1, rng.randrange(1 << 32)]) % (1 << 64)
    return n.to_bytes(8, "little") + raw + body


def mutate_safetensors(rng: random.Random, files: Files, corpus: list[Files]) -> Files:
    """Structure-aware: a valid header with one field made hostile, re-assembled (length maybe lying)."""
    names = [f for f in files if f.endswith(".safetensors")]
    if not names:
        return files
    fname = rng.choice(names)
    parts = _split_st(files[fname])
    if parts is None:
        files[fname] = mutate_bytes(rng, files[fname], [])
        return files
    header, body = parts
    tensors = [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]
    op = rng.randrange(12)
    t = rng.choice(tensors) if tensors else None
    e = header[t] if t else {}
    offs = e.get("data_offsets") if isinstance(e.get("data_offsets"), list) else [0, 0]
    b0, b1 = (offs + [0, 0])[:2] if all(isinstance(x, int) for x in offs) else (0, 0)
    if op == 0 and t:  # offsets
        size = len(body)
        other = header[rng.choice(tensors)].get("data_offsets", [0, 0])
        e["data_offsets"] = rng.choice([
            [b0, size + rng.choice([1, 8, 2**20])], [b1, b0], [-1, b1], [b0, -8], [0, 2**64], [2**64, 2**64 + 4],
            [2**63, 2**63 + 4], [float(b0), float(b1)], [b0], [b0, b1, b1], [], None, "0-4", [str(b0), str(b1)],
            other, [b0 + 1, b1 + 1], [b0, b1 + 4], [max(0, b0 - 4), b1 - 4], [True, b1]])
    elif op == 1 and t:  # shape
        shape = e.get("shape") if isinstance(e.get("shape"), list) else []
        e["shape"] = rng.choice([
            shape + [1], shape + [2], shape[:-1], [], [0], [-1], [2**32, 2**32], [2**63], [2**64], [2**31, 2**31, 4],
            [1.5], ["4"], [[4]], [None], [1] * 1000, [x * 2 if isinstance(x, int) else x for x in shape], list(reversed(shape)), "8", None,
            [0, 2**70], [2**64, 0]])
    elif op == 2 and t:  # dtype
        e["dtype"] = rng.choice(["F32", "F16", "BF16", "F64", "I64", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
                                 "F128", "", "f32", "BF16 ", 5, None, ["F32"], "F4", "C64"])
    elif op == 3 and t:  # names
        new = rng.choice(["", "\n", "a\nb", "\ud800", "\udcff\udcfe", "x" * 10000, "__metadata__",
                          rng.choice(tensors), t + "\x00", t.upper(), "model.layers.0.self_attn.q_proj.weight"])
        header = Pairs((new if k == t else k, v) for k, v in header.items())
    elif op == 4 and t:  # a duplicated tensor name
        items = list(header.items())
        items.insert(rng.randrange(len(items) + 1), (t, json.loads(json.dumps(e))))
        header = Pairs(items)
    elif op == 5:  # __metadata__ of every type
        header["__metadata__"] = rng.choice([[], 5, "x", None, {"format": ["pt"]}, {"a": {"b": {}}}, True,
                                             {"format": "pt", "total_size": 2**64}, [["format", "pt"]]])
    elif op == 6 and t:  # entry not an object / field missing / extra field
        r = rng.random()
        if r < 0.3:
            header[t] = rng.choice([[], "F32", 1, None, [e]])
        elif r < 0.7 and e:
            del e[rng.choice(sorted(e))]
        else:
            e[rng.choice(["offsets", "DTYPE", "shape ", "extra"])] = 1
    elif op == 7:  # header not an object
        header = rng.choice([[], [header], "header", 1, None])
    elif op == 8:  # the data buffer
        body = rng.choice([body[: rng.randrange(len(body) + 1)], body + b"\x00" * rng.randint(1, 64), b""])
    elif op == 9 and t:  # overlap: point a tensor at another tensor's bytes
        src = header[rng.choice(tensors)]
        if isinstance(src, dict) and isinstance(src.get("data_offsets"), list):
            e["data_offsets"] = list(src["data_offsets"])
            if isinstance(src.get("shape"), list):
                e["shape"] = list(src["shape"])
            e["dtype"] = src.get("dtype")
    elif op == 10:  # many tensors
        for k in range(rng.choice([10, 1000])):
            header[f"extra.{k}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    else:
        header = mutate_tree(rng, header, STR_EDGES)
    files[fname] = _join_st(rng, header, body)[:MAX_FILE]
    return files


def _seeds_safetensors() -> list[Files]:
    hetero = dict(TINY_CONFIG, num_hidden_layers=2, tie_word_embeddings=False,
                  layer_shapes=[{}, {"num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 4}])
    return [_checkpoint_files(TINY_CONFIG, "float32"), _checkpoint_files(TINY_CONFIG, "bfloat16"),
            _checkpoint_files(hetero, "float16"), _checkpoint_files(TINY_CONFIG, "bfloat16", layout="transformers5")]


def _run_checkpoint(d: Path) -> None:
    from compiler.frontend import Checkpoint, load_spec

    spec = ok(load_spec, d)
    with Checkpoint(d) as ck:
        if spec is not None:
            ok(ck.validate, spec)
        ck.dtypes()
        for n in ck.names():
            assert n in ck
            ok(ck.info, n)
            ok(ck.read, n)
        ok(ck.read, "no.such.tensor")


def mutate_index(rng: random.Random, files: Files, corpus: list[Files]) -> Files:
    """Structure-aware: hostile shard names and tensor names in model.safetensors.index.json."""
    from compiler.frontend.checkpoint import INDEX_NAME

    try:
        index = _loads_json(files[INDEX_NAME])
        wm = index["weight_map"]
    except (KeyError, ValueError, TypeError, RecursionError):
        return files
    if not isinstance(wm, dict):
        return files
    keys = sorted(wm)
    shards = sorted({v for v in wm.values() if isinstance(v, str)}) or ["model.safetensors"]
    op = rng.randrange(6)
    if op == 0 and keys:
        wm[rng.choice(keys)] = rng.choice(["", ".", "..", "/", "/etc/passwd", "../" + shards[0], "sub/" + shards[0],
                                           shards[0] + "\x00", "config.json", shards[-1], "\ud800", 5, None,
                                           [shards[0]], "missing.safetensors", shards[0].upper()])
    elif op == 1 and keys:
        del wm[rng.choice(keys)]
    elif op == 2:
        wm[rng.choice(["lm_head.weight", "x", "", "\n", "model.norm.weight\x00"])] = rng.choice(shards)
    elif op == 3:
        index["weight_map"] = rng.choice([[], None, "x", {}, [[k, v] for k, v in wm.items()]])
    elif op == 4 and keys:
        a, b = rng.choice(keys), rng.choice(keys)
        wm[a], wm[b] = wm[b], wm[a]
    else:
        index = rng.choice([[], None, {"metadata": {}}, {"weight_map": wm, "metadata": [1]}, Pairs(
            [("weight_map", wm), ("weight_map", {})])])
    files[INDEX_NAME] = dump_json(index, rng)
    return files


def _seeds_index() -> list[Files]:
    return [_checkpoint_files(TINY_CONFIG, "float32", shards=2), _checkpoint_files(TINY_CONFIG, "bfloat16", shards=3)]


# --------------------------------------------------------------------------- config.json


def _seeds_config() -> list[Files]:
    from compiler.frontend.synthetic import convert_config_layout, llama32_1b_config

    llama31_8b = dict(llama32_1b_config(), hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      head_dim=128, tie_word_embeddings=False, rope_scaling=dict(
                          llama32_1b_config()["rope_scaling"], factor=8.0))

    cfgs = [
        TINY_CONFIG,
        llama32_1b_config(),
        llama31_8b,
        convert_config_layout(llama32_1b_config(), "transformers5"),
        dict(TINY_CONFIG, num_hidden_layers=3, layer_shapes=[
            {}, {"num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 4, "source_layer": 2},
            {"intermediate_size": 6}]),
        {k: v for k, v in TINY_CONFIG.items() if k not in ("rope_scaling", "head_dim", "architectures")},
    ]
    seeds = [{"config.json": json.dumps(c, indent=2).encode()} for c in cfgs]
    seeds.append({"config.json": (ROOT / "models" / "tiny-llama3" / "config.json").read_bytes()})
    return seeds


def _run_config(d: Path) -> None:
    from compiler.frontend import ModelSpec, expected_tensors, load_spec

    spec = load_spec(d)
    names = expected_tensors(spec)
    assert len(names) == 2 + 9 * spec.num_layers + (0 if spec.tie_word_embeddings else 1)
    spec.attention_groups()
    # what compile writes into llama-aot.json: must be strict JSON (no NaN/Infinity) and round-trip
    assert ModelSpec.from_json(json.loads(json.dumps(spec.to_json(), allow_nan=False))) == spec


# --------------------------------------------------------------------------- tokenizer.json


def _seeds_tokenizer() -> list[Files]:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {"<unk>": 0, "a": 1, "b": 2, "c": 3, "ab": 4, "abc": 5, "Ġ": 6, "Ġa": 7}
    bpe = Tokenizer(models.BPE(vocab, [("a", "b"), ("ab", "c"), ("Ġ", "a")], unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    wl = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2}, unk_token="<unk>"))
    wl.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    wl.pre_tokenizer = pre_tokenizers.Whitespace()
    wp = Tokenizer(models.WordPiece({"[UNK]": 0, "he": 1, "##llo": 2, "wor": 3, "##ld": 4}, unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    uni = Tokenizer(models.Unigram([("<unk>", 0.0), ("a", -1.0), ("b", -2.0), ("ab", -1.5)], 0, False))
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    small = [{"tokenizer.json": t.to_str(pretty=True).encode()} for t in (bpe, wl, wp, uni)]
    # the shipped tiny model's 262 KB Llama 3 style tokenizer: slow to load, so it is one seed of five
    return small + [{"tokenizer.json": (ROOT / "models" / "tiny-llama3" / "tokenizer.json").read_bytes()}]


def _run_tokenizer(d: Path) -> None:
    from runtime_stubs.tokenizer import load_tokenizer

    tok = load_tokenizer(d / "tokenizer.json")
    # what Engine.encode / decode_text do after loading
    ids = tok.encode("The quick brown fox, 42 times: ÄÖÜ ß ж 中文 ✓").ids
    tok.decode(list(ids), skip_special_tokens=True)


# --------------------------------------------------------------------------- SoC .toml


def _seeds_soc() -> list[Files]:
    return [{p.name: p.read_bytes()} for p in sorted((ROOT / "targets" / "socs").glob("*.toml"))]


def mutate_toml_lines(rng: random.Random, files: Files, corpus: list[Files]) -> Files:
    """Text-aware: whole lines duplicated, dropped, swapped, or a `= value` replaced by a boundary value."""
    if not files:
        return files
    fname = rng.choice(sorted(files))
    lines = files[fname].split(b"\n")
    if not lines:
        return files
    j = rng.randrange(len(lines))
    op = rng.randrange(4)
    if op == 0:
        lines.insert(j, lines[j])
    elif op == 1:
        del lines[j]
    elif op == 2:
        k = rng.randrange(len(lines))
        lines[j], lines[k] = lines[k], lines[j]
    else:
        v = rng.choice([b"0", b"-1", b"1e400", b"nan", b"inf", b"-inf", b"9223372036854775808", b"''", b'"\\ud800"',
                        b"[]", b"{}", b"true", b"1979-05-27T07:32:00Z", b"0x7fffffff", b"[[1]]", b"{ value = nan, source = \"x\" }",
                        b"{ value = [], source = \"x\" }", b"{ value = 1e309, source = \"x\" }"])
        ms = list(re.finditer(rb"= ", lines[j]))
        if ms:
            m = rng.choice(ms)
            lines[j] = lines[j][:m.end()] + v + (b"" if rng.random() < 0.5 else b", source = \"s\" }")
    files[fname] = b"\n".join(lines)
    return files


def _run_soc(d: Path) -> None:
    from targets.registry import iter_facts, load_soc
    from targets.schema import GPU_APIS

    paths = sorted(d.glob("*.toml")) or [d / "dropped.toml"]
    soc = load_soc(paths[0])
    # what `llama-aot targets` / compile / the schedules derive from a loaded SoC
    soc.num_threads, soc.gpu_apis, soc.cache_params(), soc.unconfirmed_facts(), list(iter_facts(soc))
    soc.usable_memory_bytes, soc.peak_bandwidth_bytes_per_s, soc.decode_ceiling_tokens_per_s(1e9)
    soc.tvm_host_target()
    for api in (None,) + GPU_APIS:
        soc.tvm_device_target(api)


# --------------------------------------------------------------------------- tuning database

DB_SOC = "soc-a"
DB_FACTS = {"cpu": {"arch": "x86_64", "vector_bits": 256, "num_cores": 2}, "int8_isa": None}


def _db_record(key: str, tuned: float, predicted: bool = False) -> dict:
    rec = {"key": key, "kind": "dequant_gemv", "label": "q4 gemv 2048x8192", "knobs": {"gemv_rows": 2},
           "derived_knobs": {"gemv_rows": 4}, "derived_us": 100.0, "tuned_us": tuned, "trials": 8,
           "measured_on": "local", "history": [[{"gemv_rows": 2}, tuned, 95.0], [{}, 100.0, 101.0],
                                               [{"gemv_rows": 8}, 130.0, 120.0], [{"gemv_rows": 1}, None, 80.0, "failed"]]}
    if predicted:
        rec.update(predicted=True, measured_on="cost-model", space={"gemv_rows": [1, 2, 4, 8]})
    return rec


def _seeds_tuning_db() -> list[Files]:
    from schedules.tuning.database import FORMAT, FORMAT_VERSION, fingerprint, llama_aot_version, tvm_version

    def db(facts: dict, records: list[dict], soc: str = DB_SOC) -> Files:
        header = {"format": FORMAT, "format_version": FORMAT_VERSION, "soc": soc,
                  "facts_fingerprint": fingerprint(facts), "facts": facts, "tvm_version": tvm_version(),
                  "llama_aot_version": llama_aot_version()}
        return {f"{DB_SOC}.json": json.dumps({"header": header, "records": records}, indent=1).encode()}

    recs = [_db_record("DequantGEMV/0123456789abcdef", 90.0), _db_record("Int8GEMM/fedcba9876543210", 50.0, True),
            dict(_db_record("RMSNorm/00112233", 12.0), knobs={})]
    other = {"cpu": {"arch": "x86_64", "vector_bits": 512, "num_cores": 4}, "int8_isa": "vnni"}
    return [db(DB_FACTS, recs), db(DB_FACTS, recs[:1]), db(DB_FACTS, []), db(other, recs), db(DB_FACTS, recs, "soc-b")]


def _run_tuning_db(d: Path) -> None:
    from schedules.tuning.cost_model import correlation_report
    from schedules.tuning.database import TuningDB, merge_records, read_file

    _, records = read_file(d / f"{DB_SOC}.json")
    correlation_report(list(records.values()))  # `python -m schedules.tuning.cost_model DB`
    db = TuningDB.open(d, DB_SOC, DB_FACTS, create=False)  # what compile --tuned-db / tune do
    db.knobs()
    new = _db_record("DequantGEMV/0123456789abcdef", 70.0)
    for key, rec in db.records.items():
        db.get(key)
        db.done(key, 8)
        db.done(key, 8, predicted=True)
        merge_records(rec, dict(new, key=key))
        merge_records(dict(new, key=key, predicted=True), rec)
        merge_records(rec, rec)


def _seeds_package() -> list[Files]:
    """A hand-made package (no compile needed): the documents `run` reads and checks before loading code."""
    import tempfile

    from runtime_stubs.integrity import CHECKSUMS, write_checksums

    def package(config: dict, params: list[dict], shard: bytes, lib: bytes) -> Files:
        files = {"llama-aot.json": json.dumps(config, indent=1).encode(),
                 "params/manifest.json": json.dumps({"params": params}, indent=1).encode(),
                 "params/shard-00000.bin": shard, "lib/model.so": lib}
        with tempfile.TemporaryDirectory() as tmp:
            for rel, data in files.items():
                (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / rel).write_bytes(data)
            write_checksums(Path(tmp))
            files[CHECKSUMS] = (Path(tmp) / CHECKSUMS).read_bytes()
        return files

    entry = {"name": "norm.weight", "dtype": "float32", "shape": [4], "file": "shard-00000.bin", "offset": 0,
             "nbytes": 16, "sha256": "0" * 64}
    config = {"format_version": 1, "context_window": 64, "prefill_chunk": 16,
              "runtime": {"library": "lib/model.so", "params_manifest": "params/manifest.json", "page_size": 16}}
    return [package(config, [entry], bytes(16), b"\x7fELF" + bytes(60)),
            package(config, [entry, dict(entry, name="x", offset=64)], bytes(80), b"\x7fELF"),
            package({}, [], b"", b"")]


def _run_package(d: Path) -> None:
    from runtime_stubs.integrity import verify_package
    from runtime_stubs.package_format import read_manifest, read_package_config

    read_package_config(d)
    read_manifest(d)
    verify_package(d)
    verify_package(d, full=True)


# --------------------------------------------------------------------------- the registry

TARGETS: dict[str, Target] = {
    "safetensors": Target(_seeds_safetensors, _run_checkpoint, (mutate_safetensors,),
                          {"model.safetensors": 19.0, "config.json": 1.0},
                          "compiler/frontend/checkpoint.py: read_safetensors_header, Checkpoint(dir), validate, read"),
    "checkpoint_index": Target(_seeds_index, _run_checkpoint, (mutate_index, mutate_safetensors),
                               {"model.safetensors.index.json": 6.0, "config.json": 0.5},
                               "compiler/frontend/checkpoint.py: sharded checkpoints (index + shards)"),
    "config": Target(_seeds_config, _run_config, (), {},
                     "compiler/frontend/config.py: load_spec (+ expected_tensors, to_json round trip)"),
    "tokenizer": Target(_seeds_tokenizer, _run_tokenizer, (), {},
                        "runtime_stubs/tokenizer.py: load_tokenizer (+ encode/decode as Engine does)"),
    "soc_toml": Target(_seeds_soc, _run_soc, (mutate_toml_lines,), {},
                       "targets/registry.py load_soc + targets/schema.py parse_soc (+ derived targets)"),
    "tuning_db": Target(_seeds_tuning_db, _run_tuning_db, (), {},
                        "schedules/tuning/database.py: read_file, TuningDB.open, merge_records (+ cost model report)"),
    "package": Target(_seeds_package, _run_package, (), {"checksums.json": 3.0, "params/manifest.json": 2.0,
                                                         "llama-aot.json": 2.0},
                      "runtime_stubs: read_package_config, read_manifest, integrity.verify_package (run's checks)"),
}


# ================================================================================================ main


def _address_space() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def set_memory_limit(gib: float) -> None:
    limit = int(gib * (1 << 30))
    used = _address_space()
    if used and used > limit - (256 << 20):
        raise SystemExit(f"--memory-gib {gib}: the process already maps {used / (1 << 30):.2f} GiB; give more")
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _table(results: list[Result]) -> str:
    rows = [("target", "inputs", "seconds", "inputs/s", "findings", "failing inputs")]
    for r in results:
        rows.append((r.target, f"{r.inputs:,}", f"{r.seconds:.0f}", f"{r.inputs / max(r.seconds, 1e-9):.0f}",
                     str(len(r.findings)), f"{r.failing_inputs:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of: {', '.join(TARGETS)}")
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs per target (default 100000)")
    ap.add_argument("--minutes", type=float, default=10.0, help="time per target (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-s", type=float, default=2.0, help="per-input time bound (default 2 s)")
    ap.add_argument("--memory-gib", type=float, default=2.0, help="RLIMIT_AS of the whole process (default 2 GiB)")
    ap.add_argument("--findings", type=Path, default=Path(tempfile.gettempdir()) / "llama-aot-fuzz-findings",
                    help="where failing inputs are saved (default: $TMPDIR/llama-aot-fuzz-findings)")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    ap.add_argument("--replay", metavar="TARGET:INDEX", help="rebuild one input, run it and show the outcome")
    ap.add_argument("--save", type=Path, help="with --replay: write the input's files into this directory")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    args = ap.parse_args(argv)

    if args.list:
        for name, t in TARGETS.items():
            print(f"{name:18s} {t.doc}")
        return 0
    if args.replay:
        name, _, idx = args.replay.partition(":")
        if name not in TARGETS or not idx.isdigit():
            ap.error(f"--replay wants TARGET:INDEX with TARGET one of {', '.join(TARGETS)}")
        t = TARGETS[name]
        corpus = t.seeds()
        pools: set[str] = set()
        blobs = [data for files in corpus for data in files.values()]
        for files in corpus:
            for fname, data in files.items():
                fmt = TREE_FORMATS.get(Path(fname).suffix)
                if fmt:
                    pools |= {s for s in strings_of(fmt[0](data)) if len(s) < 200}
        files = make_input(t, corpus, sorted(pools)[:5000], blobs, args.seed, name, int(idx))
        if args.save:
            save_input(files, args.save)
            print(f"input written to {args.save}")
        with tempfile.TemporaryDirectory() as wd:
            signal.signal(signal.SIGALRM, _alarm)
            err = run_input(t, files, Path(wd), args.timeout_s)
        if err is None:
            print("no finding (loaded, or refused with a proper LlamaAotError)")
            return 0
        print(signature(err))
        traceback.print_exception(err)
        return 1

    names = [n for n in args.targets.split(",") if n]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    faulthandler.enable()
    os.environ["RUST_BACKTRACE"] = "0"  # a panic in the tokenizers library is a finding; one line of it is enough
    # import every loader (and TVM, which some of them pull in) before the address-space cap
    for n in names:
        TARGETS[n].seeds()
    set_memory_limit(args.memory_gib)
    results = []
    for n in names:
        r = fuzz_target(n, TARGETS[n], inputs=args.inputs, seconds=args.minutes * 60, seed=args.seed,
                        findings_dir=args.findings, timeout_s=args.timeout_s, progress=not args.no_progress)
        results.append(r)
        print(f"[{n}] done: {r.inputs} inputs, {r.seconds:.0f} s, {len(r.findings)} findings", file=sys.stderr)
    print()
    print(_table(results))
    for r in results:
        for sig, idx in r.findings.items():
            print(f"  {r.target}: {sig}  ({len(idx)} inputs, first: --replay {r.target}:{idx[0]})")
    print(f"seed {args.seed}, per-input timeout {args.timeout_s} s, RLIMIT_AS {args.memory_gib} GiB; "
          f"findings saved under {args.findings}")
    if args.json:
        args.json.write_text(json.dumps({
            "seed": args.seed, "timeout_s": args.timeout_s, "memory_gib": args.memory_gib,
            "results": [{"target": r.target, "inputs": r.inputs, "seconds": round(r.seconds, 1),
                         "findings": {s: len(v) for s, v in r.findings.items()}} for r in results]}, indent=1))
    return 1 if any(r.findings for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
