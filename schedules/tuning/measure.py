"""Build a candidate kernel and time it: here (``LocalRunner``) or on a farm of devices (``RPCRunner``).

Why measure the kernel alone, with random inputs of the task's shapes: a whole-model run per candidate would
cost seconds of compile per trial; a kernel build is ~1 s. To keep its time the one it has in the model, the
timing runs ``time_evaluator`` with TVM's ``cache_flush_cpu_non_first_arg`` preprocessor when the model's weights
do not fit the caches (every weight is then streamed from DRAM once per token, as in decode): the activation (first
argument) stays cached, the weights are flushed before each repeat. The time is the minimum over repeats (the least
disturbed run on a shared machine). Every candidate's output is compared with the derived kernel's on the same
inputs: a knob may reassociate float sums, never change what is computed -- a mismatch rejects the candidate.

RPC: ``tvm.rpc`` tracker + servers (TVM's Python ``rpc_server`` on a PC, the C++ one on phones). Jobs of one
batch go to every server registered under the key at once (one worker thread per server, one session per job,
a session timeout per job); when a server dies mid-job the job is re-queued for another server (results are
keyed by job id: none lost, none duplicated); when no server is left the run stops with a one-line error.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime_stubs.errors import LlamaAotError

from .apply import build_int8, suspended
from .tasks import io_buffers

logger = logging.getLogger(__name__)

FLUSH = "cache_flush_cpu_non_first_arg"


class InvalidCandidate(Exception):
    """The knobs do not give a kernel (the rule refused them, or the output differs from the derived one)."""


# --- building ------------------------------------------------------------------------------------------------
def scheduled_func(task, knobs: dict, tt):
    """The task's PrimFunc scheduled/built with ``knobs`` ({} = derived)."""
    from compiler.quantization import get_scheme

    from schedules.cpu import DequantGEMM, DequantGEMV

    with suspended():
        if task.kind in ("dequant_gemv", "dequant_gemm"):
            rule = {"DequantGEMV": DequantGEMV, "DequantGEMM": DequantGEMM}[task.rule]
            params = dataclasses.replace(tt.params, **knobs) if knobs else tt.params
            try:
                sch = rule(params).schedule(task.func, tt.target, params)
            except Exception as err:  # pylint: disable=broad-except
                raise InvalidCandidate(f"{task.rule} refused {knobs}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
            if sch is None:
                raise InvalidCandidate(f"{task.rule} does not take the kernel with {knobs}")
            return sch.mod["main"].with_attr("tirx.is_scheduled", True)
        if task.kind in ("int8_gemv", "int8_gemm"):
            m = task.meta
            from tvm import tirx

            # the GEMM is built for symbolic rows [b, s] (only the rank matters to the builder)
            rows = tuple(m["x_shape"]) if task.kind == "int8_gemv" else (tirx.Var("b", "int64"), tirx.Var("s", "int64"))
            try:
                func = build_int8(get_scheme(m["scheme"]), m["n"], m["k"], rows, tt.params, m["isa"], m["prefetch"], knobs)
            except Exception as err:  # pylint: disable=broad-except
                raise InvalidCandidate(f"{task.kind} refused {knobs}: {err}") from None
            if func is None:
                raise InvalidCandidate(f"{task.kind} does not build with {knobs}")
            return func
    raise InvalidCandidate(f"no knob space for {task.kind}")


def build(task, knobs: dict, tt, out_dir: str | None = None):
    """Compile the candidate. Returns the runtime module (local) and, with ``out_dir``, the path of a shared
    library the remote side can load (linked for the target's triple)."""
    import tvm

    func = scheduled_func(task, knobs, tt).with_attr("global_symbol", "main")
    mod = tvm.IRModule({"main": func})
    with tt.target, tvm.transform.PassContext(opt_level=3):
        exe = tvm.compile(mod, target=tt.target)
    lib = getattr(exe, "mod", exe)  # tvm.compile of TIR gives an Executable around the runtime module
    if out_dir is None:
        return lib, None
    path = export(exe, out_dir, tt)
    return lib, path


def export(lib, out_dir: str, tt) -> str:
    import tvm

    fd, path = tempfile.mkstemp(prefix="cand-", suffix=".so", dir=out_dir)
    os.close(fd)
    if tt.is_host:
        lib.export_library(path)
        return path
    import subprocess
    import tarfile

    from compiler.export import _tool

    triple = tt.build.host["mtriple"]
    with tempfile.TemporaryDirectory() as tmp:
        tar_path = Path(tmp) / "objects.tar"
        lib.export_library(str(tar_path), fcompile=tvm.support.tar.tar)
        with tarfile.open(tar_path) as tar:
            tar.extractall(tmp, filter="data")
        objects = sorted(str(p) for p in Path(tmp).glob("*.o"))
        cmd = [_tool("clang"), f"--target={triple}", "-fuse-ld=lld", "-shared", "-nostdlib",
               "-Wl,--allow-shlib-undefined", "-o", path, *objects]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LlamaAotError(f"linking a kernel for {triple} failed: {proc.stderr.strip()[:300]}")
    return path


# --- inputs and timing settings ---------------------------------------------------------------------------------
def make_inputs(task, seed: int = 0) -> list[np.ndarray]:
    """Random arrays of the task's argument shapes (symbolic rows bound to the task's rows). Float data is
    finite and modest (no denormals, no overflow); packed weights are random bits; integer inputs are 0."""
    rng = np.random.default_rng(seed)
    arrays = []
    for shape, dtype in io_buffers(task.func, task.rows):
        if dtype.startswith("float"):
            if dtype == "float16":  # scales
                a = rng.uniform(0.002, 0.02, size=shape).astype(np.float16)
            else:
                a = rng.standard_normal(size=shape).astype(dtype) * np.asarray(0.5, dtype)
        elif dtype.startswith("uint"):
            bits = int(dtype[4:])
            a = rng.integers(0, 2**bits, size=shape, dtype=np.uint64).astype(dtype)
        else:
            a = np.zeros(shape, dtype=dtype)
        arrays.append(np.ascontiguousarray(a))
    return arrays


@dataclass
class Timing:
    """How one candidate is timed: ``number`` calls per repeat, ``repeat`` repeats, flush before each."""

    flush: bool
    repeat: int
    number: int = 1
    min_repeat_ms: int = 0

    @classmethod
    def for_task(cls, task, flush: bool, budget_s: float = 0.4) -> "Timing":
        """About ``budget_s`` of runs per candidate, 5..20 repeats (a flush costs ~2 ms plus the kernel)."""
        est_s = max(1e-6, max(task.est_us.values(), default=10.0) * 1e-6)
        if flush:
            return cls(True, int(min(20, max(5, budget_s / (2 * est_s + 2e-3)))))
        return cls(False, 10, 1, min_repeat_ms=int(max(1, min(50, budget_s * 100))))


@dataclass
class Job:
    id: int
    task_key: str
    knobs: dict
    lib: object  # local runtime module (LocalRunner)
    path: str | None  # shared library (RPCRunner)
    inputs: list
    timing: Timing
    attempts: int = 0


@dataclass
class Result:
    job_id: int
    us: float | None
    runs_us: list = field(default_factory=list)
    output: np.ndarray | None = None
    error: str | None = None
    server: str = "local"


def _run_timed(f_eval, args) -> list[float]:
    res = f_eval(*args)
    return [float(r) * 1e6 for r in res.results]


# --- local ----------------------------------------------------------------------------------------------------
class LocalRunner:
    """Times candidates in this process, one at a time (parallel builds or runs would disturb each other on a
    2-core machine). The thread pool is sized for the target's cores."""

    name = "local"

    def __init__(self, num_threads: int):
        self.num_threads = int(num_threads)
        self._configured = False

    def servers(self) -> int:
        return 1

    def describe(self) -> str:
        return f"local ({self.num_threads} threads)"

    def _configure(self):
        if self._configured:
            return
        import tvm

        os.environ.setdefault("TVM_NUM_THREADS", str(self.num_threads))
        try:
            tvm.get_global_func("runtime.config_threadpool")(1, self.num_threads)
        except Exception:  # pylint: disable=broad-except
            pass
        self._configured = True

    def run(self, jobs: list[Job], progress=None) -> dict[int, Result]:
        import tvm

        self._configure()
        dev = tvm.cpu(0)
        out = {}
        for job in jobs:
            try:
                args = [tvm.runtime.tensor(a, dev) for a in job.inputs]
                t = job.timing
                f = job.lib.time_evaluator("main", dev, number=t.number, repeat=t.repeat, min_repeat_ms=t.min_repeat_ms,
                                           f_preproc=FLUSH if t.flush else "")
                runs = _run_timed(f, args)
                out[job.id] = Result(job.id, min(runs), runs, args[-1].numpy())
            except Exception as err:  # pylint: disable=broad-except
                out[job.id] = Result(job.id, None, error=str(err).splitlines()[0] if str(err) else type(err).__name__)
            if progress is not None:
                progress(1)
        return out


# --- RPC ------------------------------------------------------------------------------------------------------
def parse_addr(text: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit():
        raise LlamaAotError(f"--rpc wants HOST:PORT of a TVM RPC tracker, got {text!r}")
    return host, int(port)


def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict:
    """The tracker's summary; a one-line error when nothing answers there."""
    from tvm import rpc

    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as e:
        raise LlamaAotError(
            f"no RPC tracker at {host}:{port} ({e.strerror or e}); start one with "
            f"`python -m tvm.exec.rpc_tracker --host {host} --port {port}` (docs/tuning.md)"
        ) from None
    try:
        tracker = rpc.connect_tracker(host, port)
        tracker._sock.settimeout(timeout)  # pylint: disable=protected-access
        summary = tracker.summary()
        tracker.close()
    except Exception as e:  # pylint: disable=broad-except
        raise LlamaAotError(f"{host}:{port} does not answer as a TVM RPC tracker ({str(e).splitlines()[0]})") from None
    return summary


def servers_under(summary: dict, key: str) -> int:
    n = sum(1 for s in summary.get("server_info", []) if str(s.get("key", "")).split(":", 1)[-1] == key)
    q = summary.get("queue_info", {}).get(key, {})
    return max(n, int(q.get("free", 0)))


def keys_of(summary: dict) -> list[str]:
    keys = {str(s.get("key", "")).split(":", 1)[-1] for s in summary.get("server_info", [])}
    return sorted(k for k in keys | set(summary.get("queue_info", {})) if k)


class RPCRunner:
    """Spreads jobs over every server the tracker has under ``key``."""

    name = "rpc"

    def __init__(self, tracker: str, key: str, num_threads: int, session_timeout: float = 300.0,
                 request_timeout: float = 60.0, max_attempts: int = 3):
        self.host, self.port = parse_addr(tracker)
        self.key = key
        self.num_threads = int(num_threads)
        self.session_timeout = float(session_timeout)
        self.request_timeout = float(request_timeout)
        self.max_attempts = int(max_attempts)
        summary = tracker_summary(self.host, self.port)
        self.n_servers = servers_under(summary, key)
        if self.n_servers == 0:
            have = keys_of(summary)
            raise LlamaAotError(
                f"no RPC server registered under key {key!r} at tracker {self.host}:{self.port}"
                f"{' (keys there: ' + ', '.join(have) + ')' if have else ''}; start one with "
                f"`python -m tvm.exec.rpc_server --tracker {self.host}:{self.port} --key {key}` (docs/tuning.md)"
            )
        self.requeued = 0
        self.servers_lost = 0

    def servers(self) -> int:
        return self.n_servers

    def describe(self) -> str:
        return f"rpc {self.host}:{self.port} key {self.key} ({self.n_servers} servers)"

    def _session(self):
        from tvm import rpc

        tracker = rpc.connect_tracker(self.host, self.port)
        tracker._sock.settimeout(self.request_timeout)  # pylint: disable=protected-access
        try:
            return tracker.request(self.key, priority=1, session_timeout=self.session_timeout, max_retry=1)
        finally:
            tracker.close()

    def _run_one(self, sess, job: Job) -> Result:
        import tvm

        name = os.path.basename(job.path)
        sess.upload(job.path)
        rlib = sess.load_module(name)
        dev = sess.cpu(0)
        try:
            sess.get_function("runtime.config_threadpool")(1, self.num_threads)
        except Exception:  # pylint: disable=broad-except
            pass
        args = [tvm.runtime.tensor(a, dev) for a in job.inputs]
        t = job.timing
        f = rlib.time_evaluator("main", dev, number=t.number, repeat=t.repeat, min_repeat_ms=t.min_repeat_ms,
                                f_preproc=FLUSH if t.flush else "")
        runs = _run_timed(f, args)
        output = args[-1].numpy()
        try:
            sess.remove(name)
        except Exception:  # pylint: disable=broad-except
            pass
        return Result(job.id, min(runs), runs, output)

    def run(self, jobs: list[Job], progress=None) -> dict[int, Result]:
        pending = deque(jobs)
        results: dict[int, Result] = {}
        cond = threading.Condition()
        state = {"unfinished": len(jobs), "alive": 0}

        def take():
            with cond:
                while True:
                    if pending:
                        return pending.popleft()
                    if state["unfinished"] == 0:
                        return None
                    cond.wait(0.2)

        def finish(job, res):
            with cond:
                if job.id not in results:  # a job is recorded once, whichever server finished it
                    results[job.id] = res
                    state["unfinished"] -= 1
                    if progress is not None:
                        progress(1)
                cond.notify_all()

        def requeue(job, why):
            with cond:
                job.attempts += 1
                self.requeued += 1
                if job.attempts >= self.max_attempts:
                    results[job.id] = Result(job.id, None, error=f"failed on {job.attempts} servers: {why}")
                    state["unfinished"] -= 1
                    if progress is not None:
                        progress(1)
                else:
                    pending.appendleft(job)
                cond.notify_all()

        def worker(wid):
            failures = 0
            while True:
                job = take()
                if job is None:
                    break
                try:
                    sess = self._session()
                except Exception as err:  # pylint: disable=broad-except
                    with cond:  # no server for us now: give the job back (not an attempt), maybe stop
                        pending.appendleft(job)
                        cond.notify_all()
                    failures += 1
                    logger.info("rpc worker %d: no session (%s)", wid, str(err).splitlines()[0] if str(err) else err)
                    if failures >= 2:
                        break
                    continue
                failures = 0
                try:
                    res = self._run_one(sess, job)
                    res.server = f"{self.key}#{wid}"
                    finish(job, res)
                except Exception as err:  # pylint: disable=broad-except
                    # the server died or the session broke: another server takes the job
                    self.servers_lost += 1
                    logger.warning("rpc job %d failed on a server (%s); re-queued", job.id, str(err).splitlines()[0] if str(err) else err)
                    requeue(job, str(err).splitlines()[0] if str(err) else type(err).__name__)
                finally:
                    del sess
            with cond:
                state["alive"] -= 1
                cond.notify_all()

        n = max(1, min(self.n_servers, len(jobs)))
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
        state["alive"] = n
        for t in threads:
            t.start()
        with cond:
            while state["unfinished"] > 0 and state["alive"] > 0:
                cond.wait(0.5)
        for t in threads:
            t.join(timeout=1.0)
        if state["unfinished"] > 0:
            raise LlamaAotError(
                f"no RPC server under key {self.key!r} at {self.host}:{self.port} is left to run "
                f"{state['unfinished']} job(s); restart the servers and run `llama-aot tune` again (finished tasks are kept)"
            )
        return results
