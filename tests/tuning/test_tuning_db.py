"""The tuning database: atomic writes (a writer killed mid-write leaves the old file), resume, merge, refusals."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from runtime_stubs.errors import LlamaAotError
from schedules.tuning.database import TuningDB, db_path, merge_records, read_file

FACTS = {"cpu": {"arch": "x86_64", "vector_bits": 256, "num_cores": 2}, "int8_isa": None}


def rec(key="DequantGEMV/0123456789abcdef", tuned=90.0, derived=100.0, trials=8, knobs=None, **kw):
    return {"key": key, "kind": "dequant_gemv", "label": "t", "knobs": knobs if knobs is not None else {"gemv_rows": 2},
            "derived_us": derived, "tuned_us": tuned, "trials": trials, "measured_on": "local",
            "history": [[knobs or {"gemv_rows": 2}, tuned, None], [{}, derived, None]], **kw}


def test_create_add_reopen_resume(tmp_path):
    db = TuningDB.open(tmp_path, "soc-a", FACTS)
    assert not db.path.exists()  # nothing is written before the first record
    db.add(rec())
    again = TuningDB.open(tmp_path, "soc-a", FACTS)
    assert again.get("DequantGEMV/0123456789abcdef")["knobs"] == {"gemv_rows": 2}
    assert again.done("DequantGEMV/0123456789abcdef", 8) and not again.done("DequantGEMV/0123456789abcdef", 9)
    assert not again.done("other", 1)
    data = json.loads(db.path.read_text())
    assert data["header"]["soc"] == "soc-a" and data["header"]["tvm_version"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_merge_keeps_best_and_sums_trials(tmp_path):
    db = TuningDB.open(tmp_path, "soc-a", FACTS)
    db.add(rec(tuned=90.0, trials=8, knobs={"gemv_rows": 2}))
    kept = db.add(rec(tuned=95.0, trials=4, knobs={"gemv_rows": 8}))  # a slower second run
    assert kept["knobs"] == {"gemv_rows": 2} and kept["tuned_us"] == 90.0 and kept["trials"] == 12
    kept = TuningDB.open(tmp_path, "soc-a", FACTS).add(rec(tuned=80.0, trials=2, knobs={"gemv_unroll": 1}))
    assert kept["knobs"] == {"gemv_unroll": 1} and kept["trials"] == 14
    tags = [json.dumps(h[0], sort_keys=True) for h in kept["history"]]
    assert len(tags) == len(set(tags))  # joined histories, no duplicates
    # a measured record beats a cost-model prediction whatever their numbers
    pred = rec(tuned=1.0, trials=3, predicted=True, knobs={"gemv_rows": 1})
    assert merge_records(kept, pred)["knobs"] == {"gemv_unroll": 1}
    assert merge_records(pred, kept)["knobs"] == {"gemv_unroll": 1}


def test_concurrent_writers_merge(tmp_path):
    """Two processes adding different kernels to one database: both records survive (lock + re-read)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    keys = set(TuningDB.open(tmp_path, "soc-a", FACTS).records)
    assert keys == {f"K/{i}/{j}" for i in range(2) for j in range(5)}


def _writer(path, i):
    db = TuningDB.open(path, "soc-a", FACTS)
    for j in range(5):
        db.add(rec(key=f"K/{i}/{j}"))


def test_killed_mid_write_leaves_old_file(tmp_path):
    """A writer SIGKILLed in the middle of writing the new file: the database still reads as before."""
    db = TuningDB.open(tmp_path, "soc-a", FACTS)
    db.add(rec())
    before = db.path.read_bytes()
    script = textwrap.dedent(f"""
        import json, os, signal
        from schedules.tuning import database
        real_dump = json.dump
        def dump(obj, f, **kw):  # write half of the new file, then die
            text = json.dumps(obj)
            f.write(text[: len(text) // 2]); f.flush(); os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        json.dump = dump
        db = database.TuningDB.open({str(tmp_path)!r}, "soc-a", {FACTS!r})
        db.add({rec(key="K/new")!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-500:]
    assert db.path.read_bytes() == before
    reopened = TuningDB.open(tmp_path, "soc-a", FACTS)
    assert set(reopened.records) == {"DequantGEMV/0123456789abcdef"}
    reopened.add(rec(key="K/after"))  # a leftover temporary file does not get in the way
    assert set(TuningDB.open(tmp_path, "soc-a", FACTS).records) == {"DequantGEMV/0123456789abcdef", "K/after"}


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda h: h.update(soc="soc-b"), "holds records for SoC 'soc-b'"),
        (lambda h: h.update(tvm_version="0.19.0"), "TVM 0.19.0"),
        (lambda h: h.update(facts_fingerprint="0" * 16, facts={"cpu": {"num_cores": 8}}), "other CPU facts"),
        (lambda h: h.update(format="something-else"), "not a llama-aot tuning database"),
    ],
)
def test_refuses_foreign_header(tmp_path, change, words):
    db = TuningDB.open(tmp_path, "soc-a", FACTS)
    db.add(rec())
    data = json.loads(db.path.read_text())
    change(data["header"])
    db.path.write_text(json.dumps(data))
    with pytest.raises(LlamaAotError, match=words) as err:
        TuningDB.open(tmp_path, "soc-a", FACTS)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b'{"header": {"format": "llama-aot-tun', b"\xff\xfe\x00garbage", b"[1, 2, 3]",
                                     b'{"header": {}, "records": [{"key": 1}]}'])
def test_refuses_corrupted_file(tmp_path, content):
    path = db_path(tmp_path, "soc-a")
    path.write_bytes(content)
    with pytest.raises(LlamaAotError, match="corrupted") as err:
        TuningDB.open(tmp_path, "soc-a", FACTS)
    assert "delete it and re-tune" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(LlamaAotError, match="corrupted"):
        read_file(path)


def test_missing_database_for_compile(tmp_path):
    TuningDB.open(tmp_path, "soc-a", FACTS).add(rec())
    with pytest.raises(LlamaAotError, match=r"no tuning records for 'soc-b' .* \(it has: soc-a\); run `llama-aot tune"):
        TuningDB.open(tmp_path, "soc-b", FACTS, create=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(LlamaAotError, match="is a file"):
        TuningDB.open(tmp_path / "file", "soc-a", FACTS)
