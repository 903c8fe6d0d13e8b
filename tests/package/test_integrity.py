"""checksums.json and its checks (runtime_stubs/integrity.py), on hand-made package directories:
what the default check catches, what only --verify catches, and that code is always hashed in full."""

from __future__ import annotations

import json
import os

import pytest

from runtime_stubs.errors import LlamaAotError
from runtime_stubs.integrity import CHECKSUMS, SAMPLE_BYTES, read_checksums, verify_package, write_checksums


@pytest.fixture
def pkg(tmp_path):
    root = tmp_path / "pkg"
    (root / "params").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "llama-aot.json").write_text('{"format_version": 1}')
    (root / "params" / "manifest.json").write_text('{"params": []}')
    # a shard of 3 MiB + 5 bytes: its middle MiB is outside the first/last-MiB samples
    (root / "params" / "shard-00000.bin").write_bytes(os.urandom(3 * SAMPLE_BYTES + 5))
    (root / "params" / "shard-00001.bin").write_bytes(b"")  # empty files are files too
    (root / "lib" / "model.so").write_bytes(os.urandom(3 * SAMPLE_BYTES))
    write_checksums(root)
    return root


def _flip(path, offset):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_lists_every_file_with_independent_hashes(pkg):
    import hashlib

    doc = read_checksums(pkg)
    assert sorted(doc["files"]) == ["lib/model.so", "llama-aot.json", "params/manifest.json",
                                    "params/shard-00000.bin", "params/shard-00001.bin"]
    data = (pkg / "params" / "shard-00000.bin").read_bytes()
    rec = doc["files"]["params/shard-00000.bin"]
    assert rec["bytes"] == len(data)
    assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    assert rec["head_sha256"] == hashlib.sha256(data[:SAMPLE_BYTES]).hexdigest()
    assert rec["tail_sha256"] == hashlib.sha256(data[-SAMPLE_BYTES:]).hexdigest()
    verify_package(pkg)
    verify_package(pkg, full=True)


@pytest.mark.parametrize("offset", [0, -1])
def test_default_check_catches_a_changed_first_or_last_mib(pkg, offset):
    shard = pkg / "params" / "shard-00000.bin"
    _flip(shard, offset % shard.stat().st_size)
    with pytest.raises(LlamaAotError, match="shard-00000.bin fails its sha256 check"):
        verify_package(pkg)


def test_middle_of_a_shard_needs_full_verify(pkg):
    shard = pkg / "params" / "shard-00000.bin"
    _flip(shard, SAMPLE_BYTES + SAMPLE_BYTES // 2)
    verify_package(pkg)  # the sampled check cannot see it: documented, --verify does
    with pytest.raises(LlamaAotError, match="fails its sha256 check"):
        verify_package(pkg, full=True)


def test_library_is_always_hashed_in_full(pkg):
    _flip(pkg / "lib" / "model.so", SAMPLE_BYTES + 7)  # outside both samples
    with pytest.raises(LlamaAotError, match="model.so fails its sha256 check"):
        verify_package(pkg)


def test_config_is_always_hashed_in_full(pkg):
    (pkg / "llama-aot.json").write_text('{"format_version": 2}')  # same size, other bytes
    with pytest.raises(LlamaAotError, match="llama-aot.json fails its sha256 check"):
        verify_package(pkg)


@pytest.mark.parametrize("how, message", [
    ("truncate", "is truncated"), ("extend", "longer than recorded"), ("delete", "is missing"),
])
def test_shard_size_and_presence(pkg, how, message):
    shard = pkg / "params" / "shard-00000.bin"
    if how == "truncate":
        os.truncate(shard, shard.stat().st_size - 1)
    elif how == "extend":
        with open(shard, "ab") as f:
            f.write(b"\0")
    else:
        shard.unlink()
    with pytest.raises(LlamaAotError, match=message) as err:
        verify_package(pkg)
    assert "\n" not in str(err.value) and "shard-00000.bin" in str(err.value)


def test_unlisted_code_is_refused(pkg):
    (pkg / "lib" / "extra.so").write_bytes(b"\x7fELF")
    with pytest.raises(LlamaAotError, match="not listed"):
        verify_package(pkg)


@pytest.mark.parametrize("content", [
    b"", b"{", b"[]", b'{"format": 1}', b'{"format": 9, "files": {}}', b'{"format": 1, "files": []}',
    b'{"format": 1, "files": {"a": {"bytes": "1"}}}', b'{"format": 1, "files": {"../x": {"bytes": 1, '
    b'"sha256": "", "head_sha256": "", "tail_sha256": ""}}}', b"\xff\xfe", b"[" * 100000,
])
def test_corrupted_checksums_file(pkg, content):
    (pkg / CHECKSUMS).write_bytes(content)
    with pytest.raises(LlamaAotError, match="corrupted") as err:
        verify_package(pkg)
    assert "\n" not in str(err.value)


def test_missing_checksums_file(pkg):
    (pkg / CHECKSUMS).unlink()
    with pytest.raises(LlamaAotError, match="checksums.json is missing"):
        verify_package(pkg)


def test_write_is_deterministic(pkg):
    first = (pkg / CHECKSUMS).read_bytes()
    write_checksums(pkg)
    assert (pkg / CHECKSUMS).read_bytes() == first
    assert json.loads(first)["sample_bytes"] == SAMPLE_BYTES


@pytest.mark.parametrize("manifest", [
    b'{"params": 5}', b"[]", b'{"params": [{"name": "x"}]}', b"\xff", b"[" * 50000,
    b'{"params": [{"name": "x", "dtype": "float32", "shape": [-1], "file": "s", "offset": 0, "nbytes": 4, "sha256": ""}]}',
    b'{"params": [{"name": "x", "dtype": "float32", "shape": [1], "file": "../s", "offset": 0, "nbytes": 4, "sha256": ""}]}',
])
def test_corrupted_params_manifest(pkg, manifest):
    """Fuzz findings (scripts/fuzz_loaders.py, target "package"): KeyError/TypeError/RecursionError before."""
    from runtime_stubs.package_format import read_manifest

    (pkg / "params" / "manifest.json").write_bytes(manifest)
    with pytest.raises(LlamaAotError) as err:
        read_manifest(pkg)
    assert "\n" not in str(err.value)
