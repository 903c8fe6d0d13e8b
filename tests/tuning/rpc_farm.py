"""A TVM RPC farm on loopback for the tests: one tracker, N servers under a key, every process killable.

Only 127.0.0.1; every wait is bounded; each process runs in its own session (process group), so killing it
also kills the per-session child a TVM Python server forks for each client.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout} s")


class Farm:
    def __init__(self, workdir: Path, num_threads: int = 1):
        self.workdir = Path(workdir)
        self.procs: list[subprocess.Popen] = []
        self.servers: dict[str, list[subprocess.Popen]] = {}
        self.tracker_port = None
        self.env = {**os.environ, "TVM_NUM_THREADS": str(num_threads), "PYTHONUNBUFFERED": "1"}

    def _spawn(self, args: list[str], log: str, cwd: Path | None = None) -> subprocess.Popen:
        out = open(self.workdir / log, "w")  # noqa: SIM115 (closed with the process)
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=str(cwd or self.workdir),
                             start_new_session=True)
        p._log = out  # pylint: disable=protected-access
        self.procs.append(p)
        return p

    def start_tracker(self) -> str:
        self.tracker_port = free_port()
        self._spawn([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", HOST, "--port", str(self.tracker_port),
                     "--port-end", str(self.tracker_port + 1), "--silent"], "tracker.log")
        _wait_port(self.tracker_port, 30)
        return f"{HOST}:{self.tracker_port}"

    def start_server(self, key: str, args: list[str] | None = None) -> subprocess.Popen:
        """A TVM Python RPC server (or ``args``: another server command line) registered under ``key``."""
        port = free_port()
        n = sum(len(v) for v in self.servers.values())
        sdir = self.workdir / f"server{n}"
        sdir.mkdir(exist_ok=True)
        cmd = args or [sys.executable, "-m", "tvm.exec.rpc_server", "--host", HOST, "--port", str(port),
                       "--port-end", str(port + 1), "--tracker", f"{HOST}:{self.tracker_port}", "--key", key]
        p = self._spawn(cmd, f"server{n}.log", cwd=sdir)
        self.servers.setdefault(key, []).append(p)
        return p

    def wait_servers(self, key: str, count: int, timeout: float = 60) -> None:
        from schedules.tuning.measure import servers_under, tracker_summary

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if servers_under(tracker_summary(HOST, self.tracker_port), key) >= count:
                    return
            except Exception:  # pylint: disable=broad-except
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{count} servers under {key} not registered after {timeout} s; logs in {self.workdir}")

    def server_of_workpath(self, workpath: str) -> subprocess.Popen | None:
        """The server whose session runs in ``workpath``: TVM's server process chdirs into the session's
        directory before it forks the session (the launcher we started is its parent)."""
        import psutil

        target = os.path.realpath(os.path.dirname(workpath))
        for procs in self.servers.values():
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    top = psutil.Process(p.pid)
                    for proc in [top, *top.children(recursive=True)]:
                        with contextlib.suppress(psutil.Error):
                            if os.path.realpath(proc.cwd()) == target:
                                return p
        return None

    def kill(self, p: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            p.wait(timeout=10)

    def close(self) -> None:
        for p in reversed(self.procs):
            self.kill(p)
            with contextlib.suppress(Exception):
                p._log.close()  # pylint: disable=protected-access
        self.procs.clear()
