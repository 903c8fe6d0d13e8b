"""`llama-aot tune` end to end on this CPU: a real measured run, Ctrl-C in the middle (the database stays valid,
the records so far are kept), and the rerun that resumes (tasks done are skipped)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from tuning_helpers import ROOT, TINY


def _tune_cmd(db, report, tasks=3):
    return [sys.executable, "-m", "cli", "tune", str(TINY), "--db", str(db), "--trials", "3",
            "--f32-activations", "--kinds", "dequant_gemv", "--max-tasks", str(tasks), "--prefill-chunk", "16",
            "--json", str(report)]


def test_tune_interrupt_and_resume(tmp_path, tiny_tasks):
    from schedules.tuning.database import TuningDB, read_file

    tt, _, _, _ = tiny_tasks("f32")
    db_dir = tmp_path / "db"
    path = db_dir / f"{tt.soc}.json"
    proc = subprocess.Popen(_tune_cmd(db_dir, tmp_path / "r1.json"), cwd=str(ROOT), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and read_file(path)[1]:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "finished before it could be interrupted: " + proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "error: interrupted" in err and "the same command resumes" in err
    first = set(read_file(path)[1])  # still a complete database
    assert 1 <= len(first) < 3
    assert not [p for p in db_dir.iterdir() if p.name.endswith(".tmp")]

    done = subprocess.run(_tune_cmd(db_dir, tmp_path / "r2.json"), cwd=str(ROOT), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "r2.json").read_text())
    assert set(report["skipped_done"]) == first
    db = TuningDB.open(db_dir, tt.soc, tt.facts())
    assert len(db.records) == 3 and first < set(db.records)
    for r in report["kernels"]:
        assert r["trials"] == 3 and r["derived_us"] > 0 and r["tuned_us"] <= r["derived_us"]
    assert "derived us" in done.stdout and "improved:" in done.stdout
