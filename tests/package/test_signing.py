"""ed25519 package signatures (runtime_stubs/signing.py), checked with `cryptography` directly."""

from __future__ import annotations

import json
import os
import stat

import pytest

from runtime_stubs.errors import LlamaAotError
from runtime_stubs.integrity import CHECKSUMS, SIGNATURE, write_checksums
from runtime_stubs.signing import generate_key, sign_package, verify_signature


@pytest.fixture
def pkg(tmp_path):
    root = tmp_path / "pkg"
    (root / "lib").mkdir(parents=True)
    (root / "llama-aot.json").write_text("{}")
    (root / "lib" / "model.so").write_bytes(os.urandom(4096))
    write_checksums(root)
    return root


@pytest.fixture
def keys(tmp_path):
    trusted = tmp_path / "trusted"
    private, public = generate_key(trusted / "release")
    return private, trusted


def test_keygen_writes_a_private_key_only_the_owner_reads(keys):
    private, trusted = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (trusted / "release.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(LlamaAotError, match="already exists"):
        generate_key(trusted / "release")


def test_signature_is_ed25519_over_checksums(pkg, keys):
    from cryptography.hazmat.primitives import serialization

    private, trusted = keys
    sign_package(pkg, private)
    doc = json.loads((pkg / SIGNATURE).read_text())
    public = serialization.load_pem_public_key((trusted / "release.pub").read_bytes())
    public.verify(bytes.fromhex(doc["signature"]), (pkg / CHECKSUMS).read_bytes())  # raises if wrong
    assert verify_signature(pkg, trusted) == doc["key_id"]


def test_unsigned_package_is_refused(pkg, keys):
    with pytest.raises(LlamaAotError, match="not signed"):
        verify_signature(pkg, keys[1])


def test_other_key_is_refused(pkg, keys, tmp_path):
    other, _ = generate_key(tmp_path / "other" / "mallory")
    sign_package(pkg, other)
    with pytest.raises(LlamaAotError, match="not in"):
        verify_signature(pkg, keys[1])


def test_modified_after_signing_is_refused(pkg, keys):
    sign_package(pkg, keys[0])
    (pkg / "lib" / "model.so").write_bytes(os.urandom(4096))
    write_checksums(pkg)  # an attacker can recompute the checksums, but not the signature
    with pytest.raises(LlamaAotError, match="modified after signing"):
        verify_signature(pkg, keys[1])


def test_sign_refuses_a_corrupted_package(pkg, keys):
    (pkg / "lib" / "model.so").write_bytes(os.urandom(4096))
    with pytest.raises(LlamaAotError, match="fails its sha256 check"):
        sign_package(pkg, keys[0])
    assert not (pkg / SIGNATURE).exists()


@pytest.mark.parametrize("content", [b"", b"{}", b'{"key_id": "x", "signature": "zz", "algorithm": "ed25519"}',
                                     b'{"key_id": "x", "signature": "00", "algorithm": "rsa"}'])
def test_corrupted_signature_file(pkg, keys, content):
    (pkg / SIGNATURE).write_bytes(content)
    with pytest.raises(LlamaAotError, match="corrupted"):
        verify_signature(pkg, keys[1])


def test_bad_key_files(pkg, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LlamaAotError, match="holds no"):
        verify_signature(pkg, empty)
    with pytest.raises(LlamaAotError, match="not a directory"):
        verify_signature(pkg, tmp_path / "nowhere")
    (empty / "junk.pub").write_text("not a key")
    with pytest.raises(LlamaAotError, match="not a PEM public key"):
        verify_signature(pkg, empty)
    (tmp_path / "junk.key").write_text("not a key")
    with pytest.raises(LlamaAotError, match="not an unencrypted PEM private key"):
        sign_package(pkg, tmp_path / "junk.key")
    with pytest.raises(LlamaAotError, match="does not exist"):
        sign_package(pkg, tmp_path / "absent.key")
