"""`llama-aot compile --tuned DB`: records applied per kernel and recorded in llama-aot.json, logits unchanged
beyond float reassociation; the CLI's one-line refusals (exit 2, nothing left behind)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tuning_helpers import ROOT, TINY, options

PROMPT = list(range(3, 40))  # longer than the prefill chunk (16) and a KV page


def _record(task, knobs):
    return {"key": task.key, "kind": task.kind, "label": task.label, "knobs": knobs, "derived_us": 100.0,
            "tuned_us": 90.0, "trials": 4, "measured_on": "test", "history": []}


def _logits(pkg):
    from runtime_stubs.engine import Engine

    gen = Engine(pkg, num_threads=2).generate(PROMPT, max_tokens=6, temperature=0.0, keep_logits=True)
    return gen.token_ids, np.stack(gen.logits)


def _compile_pair(tmp_path, mode, tiny_tasks, picks):
    from compiler.compile import compile_model
    from schedules.tuning.database import TuningDB

    tt, tasks, _, _ = tiny_tasks(mode)
    db_dir = tmp_path / "db"
    db = TuningDB.open(db_dir, tt.soc, tt.facts())
    chosen = {}
    for kind, knobs in picks:
        task = next(t for t in tasks if t.kind == kind and t.key not in chosen)
        db.add(_record(task, knobs))
        chosen[task.key] = knobs
    derived = compile_model(TINY, tmp_path / "derived", options(mode == "f32"))
    tuned = compile_model(TINY, tmp_path / "tuned", options(mode == "f32", tuned_db=str(db_dir)))
    return derived, tuned, chosen, db


@pytest.mark.parametrize("mode, picks", [
    ("f32", [("dequant_gemv", {"gemv_rows": 1, "gemv_unroll": 1, "gemv_prefetch": False}),
             ("dequant_gemv", {"gemv_rows": 4, "gemv_accumulators": True}),
             ("dequant_gemm", {"gemm_rows": 2, "gemm_cols": 1, "gemm_k_block": 128})]),
    ("int8", [("int8_gemv", {"int8_prefetch_bytes": 0}), ("int8_gemm", {"int8_gemm_mr": 2, "int8_gemm_nt": 32})]),
])
def test_tuned_compile_applies_and_records(tmp_path, tiny_tasks, mode, picks):
    derived, tuned, chosen, db = _compile_pair(tmp_path, mode, tiny_tasks, picks)
    cfg = json.loads((tuned / "llama-aot.json").read_text())
    assert cfg["tuning"]["applied"] == chosen and "failed" not in cfg["tuning"]
    assert cfg["tuning"]["db"] == db.path.name and cfg["tuning"]["records"] == len(chosen)
    assert "tuning" not in json.loads((derived / "llama-aot.json").read_text())
    assert (tuned / "lib" / "model.so").read_bytes() != (derived / "lib" / "model.so").read_bytes()
    ids_d, logits_d = _logits(derived)
    ids_t, logits_t = _logits(tuned)
    assert ids_d == ids_t
    # a knob changes the order of float sums, never what is summed
    assert np.abs(logits_t - logits_d).max() <= 1e-4 * np.abs(logits_d).max()


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=str(ROOT), capture_output=True,
                          text=True, timeout=timeout)


def _one_line_error(code, stderr, *words):
    assert code == 2, stderr[-2000:]
    lines = [l for l in stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in stderr


def test_cli_refusals(tmp_path, tiny_tasks, capsys):
    from cli.main import main
    from schedules.tuning.database import TuningDB

    from rpc_farm import free_port

    def run(*args):
        capsys.readouterr()
        code = main(list(args))
        return code, capsys.readouterr().err

    tt, tasks, _, _ = tiny_tasks("f32")
    other = tmp_path / "other"
    TuningDB.open(other, "some-other-soc", tt.facts()).add(_record(next(t for t in tasks if t.tunable), {}))
    out = tmp_path / "pkg"
    p = _cli("compile", str(TINY), "-o", str(out), "--tuned", str(other), "--f32-activations")  # the real exit code
    _one_line_error(p.returncode, p.stderr, f"no tuning records for '{tt.soc}'", "(it has: some-other-soc)", "llama-aot tune")
    assert not out.exists() and not [x for x in tmp_path.iterdir() if x.name.startswith(".pkg")]
    # a corrupted database: refused, and left as it was
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / f"{tt.soc}.json").write_text('{"header": {"soc": ')
    _one_line_error(*run("compile", str(TINY), "-o", str(out), "--tuned", str(bad)), "corrupted", "delete it and re-tune")
    assert (bad / f"{tt.soc}.json").read_text() == '{"header": {"soc": ' and not out.exists()
    _one_line_error(*run("tune", str(TINY), "--db", str(bad), "--trials", "2"), "corrupted")
    assert (bad / f"{tt.soc}.json").read_text() == '{"header": {"soc": '
    # unknown SoC, a tracker that is not there, a phone without a device
    fresh = tmp_path / "x"
    _one_line_error(*run("tune", str(TINY), "--soc", "no-such-soc", "--db", str(fresh)), "no-such-soc")
    port = free_port()
    _one_line_error(*run("tune", str(TINY), "--rpc", f"127.0.0.1:{port}", "--key", "k", "--db", str(fresh)),
                    f"no RPC tracker at 127.0.0.1:{port}", "rpc_tracker")
    _one_line_error(*run("tune", str(TINY), "--soc", "snapdragon-8-gen-3", "--device", "cpu", "--db", str(fresh)),
                    "not this machine", "--rpc", "--cost-model")
    _one_line_error(*run("tune", str(TINY), "--trials", "0", "--db", str(fresh)), "--trials")
    assert not fresh.exists() or not any(fresh.iterdir())
