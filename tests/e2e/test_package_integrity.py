"""Packages are atomic and verified: a compile killed with SIGKILL leaves the old package or the new one,
never a mix; two compiles into one OUT: one wins, the other fails at once; `run` refuses a package whose
files do not match checksums.json, and with --trusted-keys one that no trusted key signed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime_stubs.integrity import CHECKSUMS, verify_package

LOCK_MESSAGE = "another llama-aot compile is writing"


def _cli(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _run(*args):
    p = _cli(*args)
    out, err = p.communicate(timeout=600)
    return p.returncode, out, err


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _wait_for(cond, proc, timeout=300.0):
    t0 = time.monotonic()
    while not cond():
        if proc.poll() is not None or time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def old_package(compiled, tmp_path):
    out = tmp_path / "site" / "pkg"
    shutil.copytree(compiled("tied_llama3rope", "q4f16"), out)
    return out


def test_killed_and_concurrent_compiles_never_leave_a_mix(old_package, checkpoint_dir):
    out, model = old_package, checkpoint_dir("tied_llama3rope")
    old = _digests(out)
    # the new package differs from the old one (another context window), so "old or new" is checkable
    argv = ("compile", model, "-o", out, "--prefill-chunk", "16", "--context-window", "128")

    def tmp_has(rel):
        return lambda: any((p / rel).exists() for p in out.parent.glob(f".{out.name}.tmp-*"))

    kill_points = {"library build": tmp_has(""), "weights written": tmp_has("params/manifest.json"),
                   "checksums written": tmp_has(CHECKSUMS)}
    for i, (point, cond) in enumerate(kill_points.items()):
        proc = _cli(*argv)
        reached = _wait_for(cond, proc)
        if i == 0:  # a second compile while the first holds the lock: refused at once, nothing touched
            assert reached, proc.communicate()[1][-2000:]
            code, _, err = _run(*argv)
            assert code == 2 and LOCK_MESSAGE in err and err.count("\n") == 1, err
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = _digests(out)
        verify_package(out, full=True)  # whichever package is there is whole
        if now != old:  # only when the kill came after the atomic swap: the last steps of a tiny model's
            # compile (checksums, swap) take milliseconds, so a kill aimed at them may land just after
            assert point != "library build", point
            assert json.loads((out / "llama-aot.json").read_text())["context_window"] == 128
    code, _, err = _run(*argv)  # a compile after the kills takes the lock over and cleans their leftovers
    assert code == 0, err[-2000:]
    verify_package(out, full=True)
    assert json.loads((out / "llama-aot.json").read_text())["context_window"] == 128
    assert _leftovers(out) == []


def test_run_refuses_tampered_packages_and_checks_signatures(old_package, tmp_path):
    pkg = old_package
    run = ("run", pkg, "--prompt-ids", "1,5,9", "--max-tokens", "2", "--greedy", "--json")
    code, _, err = _run("keygen", tmp_path / "keys" / "release")
    assert code == 0, err
    trusted = tmp_path / "keys"
    (trusted / "release.key").rename(tmp_path / "release.key")  # the apps hold only public keys
    code, _, err = _run(*run, "--trusted-keys", trusted)
    assert code == 2 and "not signed" in err and err.count("\n") == 1, err
    code, _, err = _run("sign", pkg, "--key", tmp_path / "release.key")
    assert code == 0, err
    code, out, err = _run(*run, "--trusted-keys", trusted)
    assert code == 0, err
    assert len(json.loads(out)["token_ids"]) == 2

    shard = pkg / "params" / "shard-00000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[:-1])  # truncated: refused by the default check
    code, _, err = _run(*run)
    assert code == 2 and "truncated" in err and err.count("\n") == 1, err
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, last byte changed
    code, _, err = _run(*run)
    assert code == 2 and "fails its sha256 check" in err, err
    shard.write_bytes(data)

    lib = pkg / "lib" / "model.so"
    code_bytes = bytearray(lib.read_bytes())
    code_bytes[len(code_bytes) // 2] ^= 1  # the library: always hashed in full
    lib.write_bytes(bytes(code_bytes))
    code, _, err = _run(*run)
    assert code == 2 and "model.so fails its sha256 check" in err, err
    # an attacker who also rewrites checksums.json passes the checks but not the signature
    from runtime_stubs.integrity import write_checksums

    write_checksums(pkg)
    code, _, err = _run(*run, "--trusted-keys", trusted)
    assert code == 2 and "modified after signing" in err, err
