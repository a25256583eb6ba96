"""Snapshots sealed at rest: per-snapshot data keys, wrapped for the server, re-wrapped under the site keys.

Why this shape (docs/security.md, "Encryption at rest"):

* An edge must be able to *encrypt* a snapshot but never *decrypt* one, so a
  stolen SD card (the outbox) reveals nothing. The server holds an X25519
  "snapshot key pair"; its public half reaches every edge inside the signed
  policy (:class:`SnapshotRecipient`). The edge seals each JPEG with a fresh
  256-bit data key (AES-256-GCM) and wraps that data key to the server's
  public key (ephemeral X25519 + HKDF-SHA256 -> AES-256-GCM key wrap).
* The server unwraps the data key on ingest and wraps it again under the
  current site data key (a KEK, AES-256-GCM) from the :class:`DataKeyring`.
  The ciphertext file is kept exactly as received; only the small wrapped
  key lives in the database row, so deleting the row destroys the key and
  with it every way to read the file (crypto-shredding).
* Everything a snapshot is about (site, device, event id) is bound as AAD,
  so a blob or a wrapped key moved to another snapshot does not open.

Sealed format ``DKS1`` (what the outbox stores and what travels on MQTT)::

    b"DKS1" | u8 n | key id (n ASCII bytes) | ephemeral X25519 public (32)
            | wrap nonce (12) | wrapped data key (32 + 16 tag)
            | body: nonce (12) | AES-256-GCM ciphertext + tag (16)

The only file I/O here is the key files (like :mod:`doorkeep.credentials`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import secrets
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from doorkeep.errors import ConfigError, DoorkeepError

MAGIC = b"DKS1"
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WRAPPED_BYTES = KEY_BYTES + TAG_BYTES
#: a KEK-wrapped data key as the server stores it: nonce + wrapped key + tag
STORED_WRAP_BYTES = NONCE_BYTES + WRAPPED_BYTES
JPEG_MAGIC = b"\xff\xd8\xff"

SNAPSHOT_KEY_FILE = "snapshot.key"
DATA_KEYS_FILE = "data-keys.json"
SNAPSHOT_KEY_ENV = "DOORKEEP_SNAPSHOT_KEY"
DATA_KEYS_ENV = "DOORKEEP_DATA_KEYS"
INIT_FIX = "doorkeep key init-data SITE_DIR"

_KEY_ID = re.compile(r"^[a-z0-9][a-z0-9-]{2,62}\Z")
_HKDF_INFO = b"doorkeep snapshot key wrap v1"


class EnvelopeError(DoorkeepError, ValueError):
    """A sealed snapshot, wrapped key or key is unusable; the message says what was wrong."""


# ================================================================ binding


@dataclass(frozen=True)
class SnapshotRef:
    """What a snapshot is about: bound as AAD into every layer, so nothing can be moved to another snapshot."""

    site: str
    device: str
    event_id: str

    def aad(self, purpose: bytes) -> bytes:
        out = bytearray(b"doorkeep.snapshot/1\0" + purpose + b"\0")
        for part in (self.site, self.device, self.event_id):
            if not isinstance(part, str):
                raise EnvelopeError(f"snapshot reference parts must be strings, got {type(part).__name__}")
            try:
                raw = part.encode("utf-8")
            except UnicodeEncodeError:
                raise EnvelopeError("snapshot reference is not valid Unicode") from None
            if len(raw) > 0xFFFF:
                raise EnvelopeError("snapshot reference part is too long")
            out += struct.pack(">H", len(raw)) + raw
        return bytes(out)


# ============================================================= recipients


def recipient_key_id(public_raw: bytes) -> str:
    """The id of an X25519 public key: derived from it, so a policy cannot pair a key with a wrong id."""
    return "x25519-" + hashlib.sha256(b"doorkeep snapshot key\0" + public_raw).hexdigest()[:16]


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class SnapshotRecipient:
    """The server's snapshot public key as an edge holds it (from the signed policy)."""

    key_id: str
    public: bytes  # raw 32-byte X25519 public key

    @classmethod
    def of(cls, key: X25519PrivateKey | X25519PublicKey) -> SnapshotRecipient:
        pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
        raw = _raw_public(pub)
        return cls(recipient_key_id(raw), raw)

    def to_policy(self) -> dict[str, str]:
        """The ``snapshot_key`` field of a signed policy body."""
        return {"id": self.key_id, "x25519": base64.b64encode(self.public).decode("ascii")}

    @classmethod
    def from_policy(cls, value: Any) -> SnapshotRecipient:
        """Strictly parse a policy's ``snapshot_key``; raises :class:`EnvelopeError` saying what is wrong."""
        if not isinstance(value, dict):
            raise EnvelopeError(f"snapshot_key must be an object, got {type(value).__name__}")
        if set(value) != {"id", "x25519"}:
            raise EnvelopeError(f"snapshot_key must have exactly 'id' and 'x25519', got {sorted(map(str, value))}")
        key_id, b64 = value["id"], value["x25519"]
        if not isinstance(b64, str) or not isinstance(key_id, str):
            raise EnvelopeError("snapshot_key id and x25519 must be strings")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise EnvelopeError("snapshot_key x25519 is not base64") from None
        if len(raw) != KEY_BYTES:
            raise EnvelopeError(f"snapshot_key x25519 has {len(raw)} bytes, expected {KEY_BYTES}")
        if key_id != recipient_key_id(raw):
            raise EnvelopeError(f"snapshot_key id {key_id!r} does not belong to its public key")
        return cls(key_id, raw)


# ================================================================ sealing


@dataclass(frozen=True)
class Sealed:
    """A parsed ``DKS1`` blob; ``body`` (nonce + ciphertext + tag) is what the server keeps on disk."""

    key_id: str
    ephemeral: bytes
    wrap_nonce: bytes
    wrapped: bytes
    body: bytes


def _wrap_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=ephemeral + recipient,
                info=_HKDF_INFO).derive(shared)


def _wrap_aad(ref: SnapshotRef, key_id: str, ephemeral: bytes) -> bytes:
    return ref.aad(b"wrap") + key_id.encode("ascii") + ephemeral


def seal(jpeg: bytes, recipient: SnapshotRecipient, ref: SnapshotRef) -> bytes:
    """Encrypt a snapshot for the server under a fresh data key; the edge can never open the result."""
    data_key = AESGCM.generate_key(bit_length=256)
    nonce = secrets.token_bytes(NONCE_BYTES)
    body = nonce + AESGCM(data_key).encrypt(nonce, bytes(jpeg), ref.aad(b"data"))
    eph = X25519PrivateKey.generate()
    eph_raw = _raw_public(eph.public_key())
    try:
        shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient.public))
    except ValueError:
        raise EnvelopeError("the snapshot public key is unusable (a low-order point)") from None
    wrap_nonce = secrets.token_bytes(NONCE_BYTES)
    wrapped = AESGCM(_wrap_key(shared, eph_raw, recipient.public)).encrypt(
        wrap_nonce, data_key, _wrap_aad(ref, recipient.key_id, eph_raw))
    kid = recipient.key_id.encode("ascii")
    return MAGIC + bytes([len(kid)]) + kid + eph_raw + wrap_nonce + wrapped + body


def parse_sealed(blob: bytes) -> Sealed:
    """Split a ``DKS1`` blob into its parts; raises :class:`EnvelopeError` if it is not one."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise EnvelopeError(f"a sealed snapshot must be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if blob[:3] == JPEG_MAGIC[:3] or blob[:2] == b"\xff\xd8":
        raise EnvelopeError("snapshot is a plain JPEG, not sealed (DKS1): an edge older than the encryption "
                            "at rest, or one that bypassed it")
    if not blob.startswith(MAGIC):
        raise EnvelopeError(f"snapshot is not sealed: expected magic {MAGIC!r}, got {blob[:4]!r}")
    if len(blob) < 5:
        raise EnvelopeError("sealed snapshot is truncated")
    n = blob[4]
    pos = 5
    kid_raw = blob[pos:pos + n]
    pos += n
    fixed = KEY_BYTES + NONCE_BYTES + WRAPPED_BYTES
    if len(kid_raw) != n or len(blob) < pos + fixed + NONCE_BYTES + TAG_BYTES:
        raise EnvelopeError("sealed snapshot is truncated")
    try:
        key_id = kid_raw.decode("ascii")
    except UnicodeDecodeError:
        raise EnvelopeError("sealed snapshot key id is not ASCII") from None
    if not _KEY_ID.match(key_id):
        raise EnvelopeError(f"sealed snapshot key id {key_id!r} is malformed")
    eph = blob[pos:pos + KEY_BYTES]
    pos += KEY_BYTES
    wrap_nonce = blob[pos:pos + NONCE_BYTES]
    pos += NONCE_BYTES
    wrapped = blob[pos:pos + WRAPPED_BYTES]
    pos += WRAPPED_BYTES
    return Sealed(key_id, eph, wrap_nonce, wrapped, blob[pos:])


def unwrap_sealed(sealed: Sealed, private: X25519PrivateKey, ref: SnapshotRef) -> bytes:
    """The data key of a sealed snapshot, with the server's private key."""
    mine = SnapshotRecipient.of(private)
    if sealed.key_id != mine.key_id:
        raise EnvelopeError(f"snapshot was sealed for key {sealed.key_id}, this server holds {mine.key_id}")
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(sealed.ephemeral))
    except ValueError:
        raise EnvelopeError("sealed snapshot has an unusable ephemeral key") from None
    try:
        return AESGCM(_wrap_key(shared, sealed.ephemeral, mine.public)).decrypt(
            sealed.wrap_nonce, sealed.wrapped, _wrap_aad(ref, sealed.key_id, sealed.ephemeral))
    except InvalidTag:
        raise EnvelopeError("sealed snapshot's data key does not unwrap: altered, or sealed for another "
                            "site, device or event") from None


def decrypt_body(body: bytes, data_key: bytes, ref: SnapshotRef) -> bytes:
    """The JPEG from ``nonce + ciphertext + tag`` (the server's file) and its data key."""
    if len(body) < NONCE_BYTES + TAG_BYTES:
        raise EnvelopeError("snapshot ciphertext is truncated")
    if len(data_key) != KEY_BYTES:
        raise EnvelopeError(f"data key has {len(data_key)} bytes, expected {KEY_BYTES}")
    try:
        return AESGCM(data_key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], ref.aad(b"data"))
    except InvalidTag:
        raise EnvelopeError("snapshot ciphertext does not decrypt: altered, or another snapshot's") from None


def open_sealed(blob: bytes, private: X25519PrivateKey, ref: SnapshotRef) -> bytes:
    """Open a ``DKS1`` blob (tests and tools; the server re-wraps instead, see :func:`wrap_data_key`)."""
    sealed = parse_sealed(blob)
    return decrypt_body(sealed.body, unwrap_sealed(sealed, private, ref), ref)


# ============================================================ KEK wrapping


def _kek_aad(kek_id: str, ref: SnapshotRef) -> bytes:
    return ref.aad(b"kek") + kek_id.encode("ascii")


def wrap_data_key(kek_id: str, kek: bytes, data_key: bytes, ref: SnapshotRef) -> bytes:
    """A data key wrapped under a site data key (KEK) as the server stores it (nonce + ciphertext + tag)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(kek).encrypt(nonce, data_key, _kek_aad(kek_id, ref))


def unwrap_data_key(kek_id: str, kek: bytes, wrapped: bytes, ref: SnapshotRef) -> bytes:
    if not isinstance(wrapped, (bytes, bytearray)) or len(wrapped) != STORED_WRAP_BYTES:
        raise EnvelopeError("stored wrapped data key has the wrong size")
    try:
        return AESGCM(kek).decrypt(bytes(wrapped[:NONCE_BYTES]), bytes(wrapped[NONCE_BYTES:]), _kek_aad(kek_id, ref))
    except InvalidTag:
        raise EnvelopeError(f"stored data key does not unwrap under {kek_id}: altered, or another snapshot's") from None


# ================================================================= keyring


def new_kek_id() -> str:
    return "kek-" + secrets.token_hex(6)


class DataKeyring:
    """The site data keys (KEKs): one current, older ones kept until no snapshot refers to them.

    File-backed (``SITE/keys/data-keys.json``, 0600) or from ``$DOORKEEP_DATA_KEYS``. A file-backed
    keyring notices when the file is replaced (``doorkeep key rotate``) and reloads it, so a running
    server wraps under the new current key without a restart.
    """

    def __init__(self, keys: dict[str, bytes], current: str, *, path: Path | None = None,
                 source: str = "memory") -> None:
        if current not in keys:
            raise EnvelopeError(f"{source}: current data key {current!r} is not among the keys")
        self._keys = dict(keys)
        self._current = current
        self.path = Path(path) if path is not None else None
        self.source = source
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            self._stamp = _stamp(self.path)

    # ------------------------------------------------------------ reading

    @classmethod
    def generate(cls) -> DataKeyring:
        kid = new_kek_id()
        return cls({kid: AESGCM.generate_key(bit_length=256)}, kid)

    def current(self) -> tuple[str, bytes]:
        """``(key id, key)`` to wrap new data keys under; reloads the file first if it was replaced."""
        with self._lock:
            self._refresh(force=False)
            return self._current, self._keys[self._current]

    def get(self, kek_id: str) -> bytes:
        """The KEK with this id; a replaced file is reloaded (a retired key leaves memory too), and an unknown
        id forces a reload (another process may have rotated within the file's timestamp granularity)."""
        with self._lock:
            self._refresh(force=kek_id not in self._keys)
            try:
                return self._keys[kek_id]
            except KeyError:
                raise EnvelopeError(f"data key {kek_id!r} is not in {self.source} (retired or lost)") from None

    def ids(self) -> list[str]:
        with self._lock:
            self._refresh(force=False)
            return sorted(self._keys)

    def _refresh(self, *, force: bool) -> None:
        if self.path is None:
            return
        stamp = _stamp(self.path)
        if not force and stamp == self._stamp:
            return
        keys, current = _read_keyring_file(self.path)
        self._keys, self._current, self._stamp = keys, current, stamp

    # ------------------------------------------------------------ changing (file-backed only)

    def rotate(self) -> str:
        """Add a new KEK, make it current and save the file atomically; returns its id."""
        with self._lock:
            path = self._require_file("rotate")
            keys, _ = _read_keyring_file(path)
            kid = new_kek_id()
            keys[kid] = AESGCM.generate_key(bit_length=256)
            write_keyring_file(path, keys, kid, replace=True)
            self._keys, self._current, self._stamp = keys, kid, _stamp(path)
            return kid

    def retire(self, kek_ids: set[str]) -> list[str]:
        """Remove these KEKs (never the current one) from the file; returns those removed."""
        with self._lock:
            path = self._require_file("retire keys of")
            keys, current = _read_keyring_file(path)
            gone = sorted(k for k in kek_ids if k in keys and k != current)
            if gone:
                for k in gone:
                    del keys[k]
                write_keyring_file(path, keys, current, replace=True)
            self._keys, self._current, self._stamp = keys, current, _stamp(path)
            return gone

    def _require_file(self, what: str) -> Path:
        if self.path is None:
            raise EnvelopeError(f"cannot {what} a keyring from {self.source}: only a key file can be rotated "
                                f"(fix: keep the keys in SITE/keys/{DATA_KEYS_FILE}, or rotate "
                                f"${DATA_KEYS_ENV} in your secret store and restart)")
        return self.path


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(str(path), "data keys", "key file does not exist", f"create it with `{INIT_FIX}`") from None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _check_mode(path: Path, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(str(path), what, f"key file is accessible by group or others (mode {mode:03o})",
                          f"chmod 600 {path}")


def _parse_key_hex(text: str, where: str, what: str, fix: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise ConfigError(where, what, "is not hexadecimal", fix) from None
    if len(key) != KEY_BYTES:
        raise ConfigError(where, what, f"has {len(key)} bytes, expected {KEY_BYTES}", fix)
    return key


def _read_keyring_file(path: Path) -> tuple[dict[str, bytes], str]:
    fix = f"restore it from backup, or create a new one with `{INIT_FIX}` (older snapshots are then lost)"
    try:
        _check_mode(path, "data keys")
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "data keys", "key file does not exist", f"create it with `{INIT_FIX}`") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise ConfigError(str(path), "data keys", "is not JSON", fix) from None
    if not isinstance(data, dict) or set(data) != {"current", "keys"} or not isinstance(data["keys"], dict):
        raise ConfigError(str(path), "data keys", 'must be {"current": ID, "keys": {ID: HEX, ...}}', fix)
    keys = {}
    for kid, hexkey in data["keys"].items():
        if not _KEY_ID.match(kid) or not isinstance(hexkey, str):
            raise ConfigError(str(path), f"keys.{kid}", "bad key id or value", fix)
        keys[kid] = _parse_key_hex(hexkey, str(path), f"keys.{kid}", fix)
    if data["current"] not in keys:
        raise ConfigError(str(path), "current", f"{data['current']!r} is not one of the keys", fix)
    return keys, data["current"]


def _write_private(path: Path, data: bytes, *, replace: bool) -> None:
    """Write a key file 0600: atomically (temp, fsync, rename) when replacing, never over one otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not replace:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_keyring_file(path: Path, keys: dict[str, bytes], current: str, *, replace: bool = False) -> None:
    text = json.dumps({"current": current, "keys": {k: v.hex() for k, v in sorted(keys.items())}}, indent=1)
    _write_private(Path(path), (text + "\n").encode(), replace=replace)


# ========================================================= server's keys


@dataclass
class SnapshotKeys:
    """What the server needs for snapshots: the X25519 private key edges seal to, and the KEKs."""

    private: X25519PrivateKey
    keyring: DataKeyring

    @classmethod
    def generate(cls) -> SnapshotKeys:
        """In-memory keys (simulators, tests)."""
        return cls(X25519PrivateKey.generate(), DataKeyring.generate())

    @property
    def recipient(self) -> SnapshotRecipient:
        return SnapshotRecipient.of(self.private)


def init_data_keys(keys_dir: Path) -> tuple[Path, Path]:
    """Create ``snapshot.key`` and ``data-keys.json`` (0600) in ``keys_dir``; never overwrites (FileExistsError)."""
    keys_dir = Path(keys_dir)
    snap, ring = keys_dir / SNAPSHOT_KEY_FILE, keys_dir / DATA_KEYS_FILE
    for p in (snap, ring):
        if p.exists():
            raise FileExistsError(str(p))
    private = X25519PrivateKey.generate().private_bytes_raw()
    _write_private(snap, (private.hex() + "\n").encode(), replace=False)
    kid = new_kek_id()
    write_keyring_file(ring, {kid: AESGCM.generate_key(bit_length=256)}, kid)
    return snap, ring


def load_snapshot_keys(keys_dir: Path, *, source: str) -> SnapshotKeys:
    """The server's snapshot keys from ``$DOORKEEP_SNAPSHOT_KEY`` / ``$DOORKEEP_DATA_KEYS`` or ``keys_dir``'s files.

    Environment: ``DOORKEEP_SNAPSHOT_KEY`` = 64 hex digits (the X25519 private key);
    ``DOORKEEP_DATA_KEYS`` = ``ID:HEX[,ID:HEX...]``, the first one current.
    """
    keys_dir = Path(keys_dir)
    env = os.environ.get(SNAPSHOT_KEY_ENV)
    if env:
        raw = _parse_key_hex(env, SNAPSHOT_KEY_ENV, SNAPSHOT_KEY_ENV, "set it to 64 hex digits")
    else:
        path = keys_dir / SNAPSHOT_KEY_FILE
        try:
            _check_mode(path, "snapshot key")
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(str(path), "snapshot key", "key file does not exist",
                              f"create it with `doorkeep key init-data {keys_dir.parent}` or set "
                              f"${SNAPSHOT_KEY_ENV}") from None
        raw = _parse_key_hex(text, str(path), "snapshot key", f"restore it from backup (source: {source})")
    private = X25519PrivateKey.from_private_bytes(raw)
    env = os.environ.get(DATA_KEYS_ENV)
    if env:
        keys: dict[str, bytes] = {}
        first = None
        for i, part in enumerate(p for p in env.split(",") if p.strip()):
            kid, _, hexkey = part.strip().partition(":")
            if not _KEY_ID.match(kid):
                raise ConfigError(DATA_KEYS_ENV, f"entry {i + 1}", "key id is missing or malformed",
                                  "use ID:HEX, ID of 3-63 lowercase letters, digits or '-'")
            keys[kid] = _parse_key_hex(hexkey, DATA_KEYS_ENV, f"entry {i + 1}", "use ID:HEX with 64 hex digits")
            first = first or kid
        if first is None:
            raise ConfigError(DATA_KEYS_ENV, DATA_KEYS_ENV, "is empty", "set it to ID:HEX[,ID:HEX...]")
        ring = DataKeyring(keys, first, source=f"${DATA_KEYS_ENV}")
    else:
        path = keys_dir / DATA_KEYS_FILE
        if not path.exists():
            raise ConfigError(str(path), "data keys", "key file does not exist",
                              f"create it with `doorkeep key init-data {keys_dir.parent}` or set ${DATA_KEYS_ENV}")
        keys, current = _read_keyring_file(path)
        ring = DataKeyring(keys, current, path=path, source=str(path))
    return SnapshotKeys(private, ring)
