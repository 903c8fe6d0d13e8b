"""An aarch64 TVM RPC server under qemu-user, registered with a tracker like ``tvm.exec.rpc_server``.

    python qemu_rpc_server.py --tracker HOST:PORT --key KEY --port PORT --session BINARY [--qemu-prefix ...]

Why split: the tracker protocol and the client handshake are TVM's own Python code (``tvm.rpc.server``'s listen
loop, reused unchanged); only the session itself -- the RPC endpoint that uploads, loads and times the kernels --
must run on the device's architecture. Each accepted connection is handed to ``BINARY SOCKET_FD WORKDIR``
(rpc_session.cc, built for aarch64) under ``qemu-aarch64``, the socket passed down as an inherited fd. A phone
runs TVM's C++ RPC server instead (docs/tuning.md); timings under qemu mean nothing, only the records' flow.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile


def serve_with(session_cmd: list[str], timeout: float | None):
    def serving(sock, addr, opts, load_library):  # replaces tvm.rpc.server._serving
        work = tempfile.mkdtemp(prefix="qemu-rpc-")
        old = os.getcwd()
        os.chdir(work)  # as TVM's server: the session's directory is the server's cwd while it runs
        try:
            fd = sock.fileno()
            proc = subprocess.Popen([*session_cmd, str(fd), work], pass_fds=(fd,))
            try:
                proc.wait(timeout=opts.get("timeout", timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            os.chdir(old)
            shutil.rmtree(work, ignore_errors=True)
            sock.close()

    return serving


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracker", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--session", required=True, help="the aarch64 session binary (rpc_session.cc)")
    ap.add_argument("--qemu", default="qemu-aarch64 -L /usr/aarch64-linux-gnu")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)
    from tvm.rpc import server as tvm_server

    host, _, port = args.tracker.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(1)
    tvm_server._serving = serve_with([*args.qemu.split(), args.session], args.timeout)  # pylint: disable=protected-access
    tvm_server._listen_loop(sock, args.port, args.key, (host, int(port)), None, args.host)  # pylint: disable=protected-access
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
