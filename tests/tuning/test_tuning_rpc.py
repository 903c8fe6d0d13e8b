"""The RPC plumbing on loopback: a tracker and several `tvm.exec.rpc_server`s under one key, jobs spread over
them, a server killed in the middle of a job (the job moves to another server; no record lost or duplicated),
and the one-line errors for a key nobody serves."""

from __future__ import annotations

import threading

import pytest

from runtime_stubs.errors import LlamaAotError
from tuning_helpers import TINY
from rpc_farm import Farm

KEY = "test-farm"


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    f = Farm(tmp_path_factory.mktemp("farm"), num_threads=1)
    try:
        tracker = f.start_tracker()
        for _ in range(3):
            f.start_server(KEY)
        f.wait_servers(KEY, 3)
        f.tracker = tracker
        yield f
    finally:
        f.close()


def _jobs(task, tt, n, workdir):
    from schedules.tuning.measure import Job, Timing, build, make_inputs
    from schedules.tuning.space import space_for

    space = space_for(task, tt)
    cands = [{}] + [c for d in space.dims for c in space.neighbours({}, d)]
    inputs = make_inputs(task)
    timing = Timing(flush=False, repeat=3, number=2)
    jobs = []
    for i in range(n):
        knobs = cands[i % len(cands)]
        lib, path = build(task, knobs, tt, str(workdir))
        jobs.append(Job(i + 1, task.key, knobs, lib, path, inputs, timing))
    return jobs


def test_jobs_spread_and_survive_a_killed_server(farm, tiny_tasks, tmp_path, monkeypatch):
    from schedules.tuning.measure import RPCRunner

    tt, tasks, _, _ = tiny_tasks("f32")
    task = next(t for t in tasks if t.kind == "dequant_gemv")
    jobs = _jobs(task, tt, 9, tmp_path)
    runner = RPCRunner(farm.tracker, KEY, num_threads=1, session_timeout=120, request_timeout=30)
    assert runner.servers() == 3
    killed = []
    original = RPCRunner._run_one
    lock = threading.Lock()

    def run_one(self, sess, job):
        with lock:
            kill = job.id == 4 and not killed
            if kill:  # kill the server this job runs on, after its upload: mid-job
                sess.upload(job.path)
                workpath = sess.get_function("tvm.rpc.server.workpath")("x")
                victim = farm.server_of_workpath(workpath)
                assert victim is not None, workpath
                farm.kill(victim)
                killed.append(victim)
        return original(self, sess, job)

    monkeypatch.setattr(RPCRunner, "_run_one", run_one)
    results = runner.run(jobs)
    assert killed and killed[0].poll() is not None
    assert sorted(results) == [j.id for j in jobs]  # every job once, none lost
    assert all(r.error is None and r.us > 0 and r.output is not None for r in results.values())
    assert runner.requeued >= 1
    assert len({r.server for r in results.values()}) >= 2  # sessions ran side by side
    ref = results[1].output
    for j in jobs:
        if j.knobs == {}:
            assert (results[j.id].output == ref).all()
    farm.wait_servers(KEY, 2)


def test_tune_over_rpc_keeps_every_record_once(farm, tiny_tasks, tmp_path):
    from schedules.tuning import tune
    from schedules.tuning.database import TuningDB

    tt, _, _, opts = tiny_tasks("f32")
    report = tune(TINY, opts, tmp_path / "db", trials=3, rpc=farm.tracker, key=KEY, kinds=["dequant_gemv"],
                  max_tasks=2, show_progress=False)
    assert report["rpc"]["servers"] >= 2 and report["runner"].startswith("rpc")
    assert len(report["kernels"]) == 2 and all("error" not in k for k in report["kernels"])
    db = TuningDB.open(tmp_path / "db", tt.soc, tt.facts())
    assert sorted(db.records) == sorted(k["key"] for k in report["kernels"])
    for rec in db.records.values():
        assert rec["trials"] == 3 and rec["measured_on"].startswith("rpc")
        tags = [str(sorted(h[0].items())) for h in rec["history"]]
        assert len(tags) == len(set(tags)) == 3
    # resume: a second run finds both done and measures nothing
    again = tune(TINY, opts, tmp_path / "db", trials=3, rpc=farm.tracker, key=KEY, kinds=["dequant_gemv"],
                 max_tasks=2, show_progress=False)
    assert again["kernels"] == [] and sorted(again["skipped_done"]) == sorted(db.records)


def test_unknown_key_and_missing_tracker(farm):
    from rpc_farm import free_port
    from schedules.tuning.measure import RPCRunner

    with pytest.raises(LlamaAotError, match=rf"no RPC server registered under key 'nobody' .*keys there: {KEY}"):
        RPCRunner(farm.tracker, "nobody", num_threads=1)
    port = free_port()
    with pytest.raises(LlamaAotError, match=f"no RPC tracker at 127.0.0.1:{port}"):
        RPCRunner(f"127.0.0.1:{port}", KEY, num_threads=1)
    with pytest.raises(LlamaAotError, match="HOST:PORT"):
        RPCRunner("localhost", KEY, num_threads=1)


@pytest.fixture(scope="module")
def aarch64_session(tmp_path_factory):
    """rpc_session.cc built for aarch64 against TVM's prebuilt aarch64 runtime (the PyPI wheel of this TVM)."""
    import shutil
    import subprocess
    import sys

    from tuning_helpers import ROOT

    for tool in ("aarch64-linux-gnu-g++", "qemu-aarch64", "clang", "ld.lld"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed (scripts/test.sh installs it)")
    sys.path.insert(0, str(ROOT / "tests" / "native"))
    import native_helpers  # pylint: disable=import-outside-toplevel

    tvm = native_helpers.prebuilt_tvm_aarch64()
    out = tmp_path_factory.mktemp("aarch64") / "rpc_session"
    src = ROOT / "tests" / "tuning" / "aarch64_rpc" / "rpc_session.cc"
    rpath = ":".join(str(d) for d in tvm.lib_dirs)
    cmd = ["aarch64-linux-gnu-g++", "-std=c++17", "-O1", "-o", str(out), str(src),
           *[f"-I{d}" for d in tvm.include_dirs], "-Wl,--no-as-needed", *[f"-L{d}" for d in tvm.lib_dirs],
           "-ltvm_ffi", "-ltvm_runtime", f"-Wl,-rpath,{rpath}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return out


def test_aarch64_server_under_qemu(farm, aarch64_session, tmp_path):
    """Cross-built kernels for a phone SoC, uploaded to an aarch64 TVM RPC session under qemu-aarch64 and timed
    there (timings meaningless): the records flow into the SoC's database, and a phone compile applies them."""
    import json
    import sys

    from compiler.compile import CompileOptions, compile_model
    from tuning_helpers import ROOT
    from rpc_farm import free_port
    from schedules.tuning import tune

    key = "test-aarch64"
    server = ROOT / "tests" / "tuning" / "aarch64_rpc" / "qemu_rpc_server.py"
    farm.start_server(key, [sys.executable, str(server), "--tracker", farm.tracker, "--key", key,
                            "--port", str(free_port()), "--session", str(aarch64_session)])
    farm.wait_servers(key, 1)
    opts = CompileOptions(soc="snapdragon-8-gen-3", device="cpu", prefill_chunk=16, context_window=256)
    # int8 GEMM: phone builds have no software prefetch, so the int8 GEMV has no knob there
    report = tune(TINY, opts, tmp_path / "db", trials=2, rpc=farm.tracker, key=key, kinds=["int8_gemm"],
                  max_tasks=1, show_progress=False)
    assert report["soc"] == "snapdragon-8-gen-3" and len(report["kernels"]) == 1
    k = report["kernels"][0]
    assert "error" not in k and k["trials"] == 2 and k["derived_us"] > 0
    db = json.loads((tmp_path / "db" / "snapdragon-8-gen-3.json").read_text())
    assert [r["key"] for r in db["records"]] == [k["key"]] and db["records"][0]["measured_on"].startswith("rpc")
    pkg = compile_model(TINY, tmp_path / "phone", CompileOptions(
        soc="snapdragon-8-gen-3", device="cpu", prefill_chunk=16, context_window=256, tuned_db=str(tmp_path / "db")))
    applied = json.loads((pkg / "llama-aot.json").read_text())["tuning"]["applied"]
    assert applied == {k["key"]: k["knobs"]}
