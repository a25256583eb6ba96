"""Signed evidence bundles: the manifest, its signature and their verification (docs/privacy.md "Evidence
bundles"). Pure: bytes in, result out; the server builds bundles with it (server/evidence.py) and
``doorkeep evidence verify`` checks them offline with it (doorkeep/evidence_cli.py).

A bundle is a zip holding the evidence files, ``manifest.json`` and ``manifest.sig``. The manifest lists every
other file with its SHA-256 and size, and names the key that signed it (Ed25519, the server's policy-signing
key: the one key the site already guards and whose public half every edge already holds). ``manifest.sig`` is
the base64 Ed25519 signature over the exact bytes of ``manifest.json``. So a changed file no longer matches its
hash, a changed manifest no longer matches the signature, and a file removed or added is not (or no longer)
what the manifest lists.

The bundle carries the public key so it can be checked anywhere; a bundle that carries its own key proves only
that it was not changed *after signing*. Who signed it is proven by comparing the key with the site's: the
verifier pins it (``--key SITE/keys/policy-signing.pub``) or prints its fingerprint to compare by hand.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from doorkeep.errors import DoorkeepError

FORMAT = "doorkeep-evidence/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")


class EvidenceError(DoorkeepError, ValueError):
    """A key or bundle that cannot be read at all (not a verification failure: see :class:`Verification`)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    """``SHA256:`` and the hex SHA-256 of the raw 32-byte public key: what an operator compares."""
    return "SHA256:" + sha256_hex(raw_public(key))


def public_key_from_bytes(data: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from a PEM file's bytes (``policy-signing.pub``) or the base64 of the raw key."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
            if not isinstance(key, Ed25519PublicKey):
                raise EvidenceError(f"the key is {type(key).__name__}, not Ed25519")
            return key
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        if isinstance(exc, EvidenceError):
            raise
        raise EvidenceError("not an Ed25519 public key (a PEM .pub file such as SITE/keys/policy-signing.pub, "
                            "or the base64 of the raw 32-byte key)") from None


def manifest_bytes(files: Mapping[str, bytes], meta: Mapping[str, Any], key: Ed25519PublicKey) -> bytes:
    """The manifest of ``files`` (in their order): format, ``meta`` (site, incident, who and when), each file's
    path, SHA-256 and size, and the signing key with its fingerprint. Canonical JSON, so it hashes the same
    wherever it is re-read."""
    for path in files:
        check_path(path)
    body = {"format": FORMAT, **meta,
            "files": [{"path": p, "sha256": sha256_hex(b), "bytes": len(b)} for p, b in files.items()],
            "signing_key": {"algorithm": "Ed25519", "public_key": base64.b64encode(raw_public(key)).decode(),
                            "fingerprint": fingerprint(key)}}
    return (json.dumps(body, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode()


def sign(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    """``manifest.sig``: the base64 Ed25519 signature over the manifest's exact bytes, one line."""
    return base64.b64encode(key.sign(manifest)) + b"\n"


def check_path(path: str) -> None:
    """A path a bundle may hold: relative, ``/``-separated, no ``..``, no backslash, not the manifest's own."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts)
            or path in (MANIFEST, SIGNATURE) or len(path) > 255):
        raise EvidenceError(f"not a path an evidence bundle may hold: {path!r}")


@dataclass
class Verification:
    """What :func:`verify` checked (``checked``: one line each) and the first problem, if any."""

    ok: bool
    problem: str | None = None
    checked: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    pinned: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def verify(manifest: bytes | None, signature: bytes | None, digests: Mapping[str, str],
           pinned: Ed25519PublicKey | None = None) -> Verification:
    """Check a bundle: the signature over the manifest (with ``pinned``, else the key the manifest names), then
    every listed file's SHA-256 against ``digests`` (path -> hex SHA-256 of each file in the bundle, the manifest
    and signature excluded), then that no file is there that the manifest does not list. Stops at the first
    problem, named in ``problem``."""
    result = Verification(ok=False, pinned=pinned is not None)

    def fail(problem: str) -> Verification:
        result.problem = problem
        return result

    if manifest is None:
        return fail(f"missing file: {MANIFEST} (not an evidence bundle, or its manifest was removed)")
    if signature is None:
        return fail(f"missing file: {SIGNATURE} (the manifest is not signed, or its signature was removed)")
    try:
        body = json.loads(manifest.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return fail(f"{MANIFEST} is not JSON: changed or not an evidence bundle")
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        return fail(f"{MANIFEST} is not a {FORMAT} manifest")
    result.meta = {k: v for k, v in body.items() if k not in ("files", "signing_key")}
    carried: Ed25519PublicKey | None = None
    named = body.get("signing_key")
    if isinstance(named, dict) and isinstance(named.get("public_key"), str):
        try:
            carried = public_key_from_bytes(named["public_key"].encode())
        except EvidenceError:
            carried = None
    key = pinned or carried
    if key is None:
        return fail(f"{MANIFEST} names no usable signing key; give the site's public key with --key")
    result.fingerprint = fingerprint(key)
    try:
        sig = base64.b64decode(signature.strip(), validate=True)
        key.verify(sig, manifest)
    except (binascii.Error, ValueError, InvalidSignature):
        if pinned is not None and carried is not None and raw_public(carried) != raw_public(pinned):
            return fail(f"bad signature: the bundle was signed with another key ({fingerprint(carried)}) than the "
                        f"pinned one ({fingerprint(pinned)})")
        return fail(f"bad signature: {SIGNATURE} does not match {MANIFEST} under key {result.fingerprint} "
                    "(the manifest or the signature was changed)")
    how = "pinned with --key" if pinned is not None else "carried by the bundle, NOT pinned: compare it with the site's"
    result.checked.append(f"signature: ok (Ed25519 over {MANIFEST}, key {result.fingerprint}, {how})")
    files = body.get("files")
    if not isinstance(files, list):
        return fail(f"{MANIFEST} lists no files")
    listed: set[str] = set()
    for entry in files:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str)
                and isinstance(entry.get("sha256"), str) and _HEX64.match(entry["sha256"])):
            return fail(f"{MANIFEST} has a malformed file entry: {str(entry)[:80]}")
        path = entry["path"]
        if path in listed:
            return fail(f"{MANIFEST} lists {path!r} twice")
        listed.add(path)
        if path not in digests:
            return fail(f"missing file: {path} (listed in the manifest, not in the bundle)")
        if digests[path] != entry["sha256"]:
            return fail(f"changed file: {path} (its SHA-256 is {digests[path]}, the manifest says {entry['sha256']})")
        result.checked.append(f"ok  {path}  sha256:{entry['sha256']}")
    extra = sorted(set(digests) - listed - {MANIFEST, SIGNATURE})
    if extra:
        return fail(f"extra file: {extra[0]} (in the bundle, not in the signed manifest)")
    result.checked.append(f"files: {len(listed)} listed, every one present and unchanged, nothing added")
    result.ok = True
    return result
