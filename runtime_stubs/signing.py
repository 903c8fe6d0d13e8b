"""Optional package signatures: ed25519 over OUT/checksums.json (which lists every file's sha256).

    llama-aot keygen KEYS/release          -> KEYS/release.key (private, 0600) + KEYS/release.pub
    llama-aot sign PKG --key KEYS/release.key   -> PKG/signature.json
    llama-aot run PKG --trusted-keys KEYS  -> refuses a package that no *.pub in KEYS signed

A package runs native code, so an app that downloads packages should only run signed ones.  The
signature covers checksums.json; `run --trusted-keys` then checks every file against it in full.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import LlamaAotError
from .integrity import CHECKSUMS, SIGNATURE, verify_package

ALGORITHM = "ed25519"


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise LlamaAotError("signing needs the `cryptography` package: pip install cryptography") from None
    return ed25519, serialization, InvalidSignature


def _raw_public(key) -> bytes:
    _, serialization, _ = _crypto()
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(raw_public: bytes) -> str:
    return hashlib.sha256(raw_public).hexdigest()[:16]


def generate_key(prefix: str | Path) -> tuple[Path, Path]:
    """Write PREFIX.key (PKCS#8 PEM, owner-only) and PREFIX.pub (PEM); never overwrite either."""
    ed25519, serialization, _ = _crypto()
    prefix = Path(prefix)
    private, public = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for p in (private, public):
        if p.exists():
            raise LlamaAotError(f"{p} already exists; pass another name (keys are never overwritten)")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _load_private(path: Path):
    ed25519, serialization, _ = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise LlamaAotError(f"key {path} does not exist; create one with `llama-aot keygen NAME`") from None
    except (ValueError, TypeError):
        raise LlamaAotError(f"{path} is not an unencrypted PEM private key; create one with `llama-aot keygen NAME`") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise LlamaAotError(f"{path} is not an ed25519 key; create one with `llama-aot keygen NAME`")
    return key


def sign_package(package_dir: str | Path, key_path: str | Path) -> Path:
    """Check the package in full, then write PKG/signature.json (atomically)."""
    package_dir = Path(package_dir)
    key = _load_private(Path(key_path))
    verify_package(package_dir, full=True)  # sign only what is intact
    message = (package_dir / CHECKSUMS).read_bytes()
    raw = _raw_public(key.public_key())
    doc = {"format": 1, "algorithm": ALGORITHM, "key_id": key_id(raw), "public_key": raw.hex(),
           "signed_file": CHECKSUMS, "signature": key.sign(message).hex()}
    tmp = package_dir / f".{SIGNATURE}.tmp"
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, package_dir / SIGNATURE)
    return package_dir / SIGNATURE


def trusted_public_keys(keys_dir: str | Path) -> dict[str, object]:
    """key_id -> public key, for every *.pub in ``keys_dir``."""
    ed25519, serialization, _ = _crypto()
    keys_dir = Path(keys_dir)
    if not keys_dir.is_dir():
        raise LlamaAotError(f"--trusted-keys {keys_dir} is not a directory of *.pub files")
    keys = {}
    for p in sorted(keys_dir.glob("*.pub")):
        try:
            key = serialization.load_pem_public_key(p.read_bytes())
        except (ValueError, TypeError):
            raise LlamaAotError(f"{p} is not a PEM public key; replace it with one from `llama-aot keygen`") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise LlamaAotError(f"{p} is not an ed25519 public key; replace it with one from `llama-aot keygen`")
        keys[key_id(_raw_public(key))] = key
    if not keys:
        raise LlamaAotError(f"--trusted-keys {keys_dir} holds no *.pub file; copy the signer's public key there")
    return keys


def verify_signature(package_dir: str | Path, keys_dir: str | Path) -> str:
    """Refuse (LlamaAotError) a package that no trusted key signed; return the signer's key id."""
    _, _, InvalidSignature = _crypto()
    package_dir = Path(package_dir)
    keys = trusted_public_keys(keys_dir)
    path = package_dir / SIGNATURE
    if not path.is_file():
        raise LlamaAotError(f"{package_dir} is not signed and --trusted-keys was given; sign it with `llama-aot sign`")
    try:
        doc = json.loads(path.read_bytes())
        kid, sig = str(doc["key_id"]), bytes.fromhex(doc["signature"])
        if doc.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {doc.get('algorithm')!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise LlamaAotError(f"{path} is corrupted; sign the package again with `llama-aot sign`") from None
    if kid not in keys:
        raise LlamaAotError(f"{package_dir} is signed by key {kid}, which is not in {keys_dir}; refusing to run it")
    checksums = package_dir / CHECKSUMS
    if not checksums.is_file():
        raise LlamaAotError(f"{checksums} is missing; the package is incomplete: recompile or re-copy it")
    try:
        keys[kid].verify(sig, checksums.read_bytes())
    except InvalidSignature:
        raise LlamaAotError(f"{package_dir}'s signature does not match its contents: it was modified after signing; refusing to run it") from None
    return kid
