"""Backups of everything the server holds, encrypted to a recovery key, and their verified restore.

Why this shape (docs/backups.md):

* **Online and consistent.** The store is copied with SQLite's online backup API in one step
  (``Connection.backup`` with ``pages=-1``) on a connection of its own: it reads one snapshot of the
  database under a read transaction while the server keeps writing into the WAL, so the copy is a state
  the database really was in, never a torn file copy. The snapshots (already encrypted files) named by
  that copy and an audit head matching its newest audit record go with it, so the restored log verifies.
* **A stolen backup reveals nothing.** The payload (a tar of the copy, zlib-compressed) is encrypted to
  a recovery **public** key: a fresh ephemeral X25519 key, HKDF-SHA256, AES-256-GCM in 1 MiB chunks whose
  nonce counts the chunk and marks the last one (a STREAM construction: chunks cannot be dropped,
  reordered or cut off unnoticed). The server holds only the public half; the private half
  (``doorkeep backup keygen``) is kept offline. Key material (credential key, signing key, snapshot keys)
  is never in a backup; ``--with-keys`` writes it to a second file encrypted to another key.
* **Refused, never half-restored.** The file ends with a SHA-256 of everything before it, so damage
  and truncation are named before any decryption; the manifest (plain, authenticated as every chunk's
  AAD) names the site, so a backup of another site is refused; a wrong key is named by its key id. A
  restore extracts into a new directory beside the target and moves it into place only after
  ``PRAGMA integrity_check``, the audit chain and the row counts of the manifest agree.

File format ``doorkeep-backup/1``::

    b"doorkeep-backup/1\\n" | u32 n | manifest (n bytes of canonical JSON)
    | chunks: u32 len | AES-256-GCM ciphertext + tag (len bytes), nonce = u88 index | u8 last
    | b"DKBKEND\\n" | SHA-256 of every byte before this trailer (32)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import shlex
import shutil
import sqlite3
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from doorkeep import __version__
from doorkeep.clock import Clock, SystemClock, iso_ms
from doorkeep.config import BackupSettings
from server.audit import HEAD_FILE, AuditLog
from server.errors import ServerError
from server.private_files import open_private, private_dir
from server.store import Store

log = logging.getLogger("doorkeep.server.backup")

MAGIC = b"doorkeep-backup/1\n"
KEYS_MAGIC = b"doorkeep-backup-keys/1\n"
TRAILER = b"DKBKEND\n"
DIGEST_BYTES = 32
TRAILER_BYTES = len(TRAILER) + DIGEST_BYTES
CHUNK = 1 << 20
TAG_BYTES = 16
MAX_MANIFEST = 1 << 20
DB_FILE = "doorkeep.db"
SNAPSHOT_DIR = "snapshots"
SUFFIX = ".dkbackup"
_HKDF_INFO = b"doorkeep backup v1"
#: The key files ``--with-keys`` takes from SITE/keys (credential, policy signing, snapshot keys, and the visitor
#: pass key when the site has one: server/passes.py).
KEY_FILES = ("credential.key", "policy-signing.key", "policy-signing.pub", "snapshot.key", "data-keys.json",
             "pass-signing.key", "pass-signing.pub")


class BackupError(ServerError, ValueError):
    """A backup cannot be taken or restored; the message is one line saying what and the fix."""


# ================================================================ recovery keys


def key_id(public_raw: bytes) -> str:
    """The id of a recovery public key: derived from it, printed by keygen and written in every manifest."""
    return "rk-" + hashlib.sha256(b"doorkeep backup recovery key\0" + public_raw).hexdigest()[:16]


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def generate_recovery_key(out: Path) -> tuple[Path, Path, str]:
    """Write ``OUT.key`` (private, 0600: keep it offline) and ``OUT.pub`` (for the server); refuses to overwrite."""
    priv_path, pub_path = out.with_name(out.name + ".key"), out.with_name(out.name + ".pub")
    for p in (priv_path, pub_path):
        if p.exists():
            raise FileExistsError(p)
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(pub)
    return priv_path, pub_path, key_id(_raw(key.public_key()))


def load_public_key(path: Path) -> X25519PublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read the recovery public key {path}: {exc.strerror or exc} "
                          "(fix: `doorkeep backup keygen --out FILE`, then give FILE.pub)") from None
    if b"PRIVATE KEY" in data:
        raise BackupError(f"{path} is a recovery PRIVATE key: the server needs only the .pub beside it "
                          "(fix: keep the private key offline and give FILE.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise BackupError(f"{path} is not a PEM public key (fix: give the .pub `doorkeep backup keygen` wrote)") \
            from None
    if not isinstance(key, X25519PublicKey):
        raise BackupError(f"{path} is not an X25519 key (fix: give the .pub `doorkeep backup keygen` wrote)")
    return key


def load_private_key(path: Path) -> X25519PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read the recovery private key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise BackupError(f"{path} is not a PEM private key (fix: give the .key `doorkeep backup keygen` wrote)") \
            from None
    if not isinstance(key, X25519PrivateKey):
        raise BackupError(f"{path} is not an X25519 key (fix: give the .key `doorkeep backup keygen` wrote)")
    return key


# ================================================================ sealed stream


def _stream_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_HKDF_INFO).derive(shared)


def _nonce(index: int, last: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class _SealedWriter(io.RawIOBase):
    """A write-only stream: compresses, cuts into chunks, encrypts each, and hashes every byte it writes."""

    def __init__(self, out: IO[bytes], key: bytes, aad: bytes, digest: Any) -> None:
        self.out, self.aead, self.aad, self.digest = out, AESGCM(key), aad, digest
        self.zip = zlib.compressobj(1)
        self.buf = bytearray()
        self.index = 0
        self.plain_bytes = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = len(data)
        self.plain_bytes += n
        self.buf += self.zip.compress(bytes(data))
        while len(self.buf) > CHUNK:  # keep at least one byte back: the last chunk is written by finish()
            self._emit(bytes(self.buf[:CHUNK]), last=False)
            del self.buf[:CHUNK]
        return n

    def _emit(self, plain: bytes, *, last: bool) -> None:
        sealed = self.aead.encrypt(_nonce(self.index, last), plain, self.aad)
        self.index += 1
        for part in (struct.pack(">I", len(sealed)), sealed):
            self.out.write(part)
            self.digest.update(part)

    def finish(self) -> None:
        self.buf += self.zip.flush()
        while len(self.buf) > CHUNK:
            self._emit(bytes(self.buf[:CHUNK]), last=False)
            del self.buf[:CHUNK]
        self._emit(bytes(self.buf), last=True)


class _SealedReader(io.RawIOBase):
    """The reverse of :class:`_SealedWriter` over a byte range of the file already checked by its digest."""

    def __init__(self, f: IO[bytes], end: int, key: bytes, aad: bytes) -> None:
        self.f, self.end, self.aead, self.aad = f, end, AESGCM(key), aad
        self.unzip = zlib.decompressobj()
        self.buf = bytearray()
        self.index = 0
        self.done = False

    def readable(self) -> bool:
        return True

    def _next(self) -> None:
        head = self.f.read(4)
        if len(head) != 4:
            raise BackupError("the backup's payload ends early (fix: take the backup again; this copy is damaged)")
        (n,) = struct.unpack(">I", head)
        if n > CHUNK + TAG_BYTES or self.f.tell() + n > self.end:
            raise BackupError("the backup's payload is malformed (a chunk runs past its end)")
        last = self.f.tell() + n == self.end
        try:
            plain = self.aead.decrypt(_nonce(self.index, last), self.f.read(n), self.aad)
        except InvalidTag:
            raise BackupError("the backup's payload does not decrypt with this recovery key: it was altered or "
                              "belongs to another key") from None
        self.index += 1
        self.buf += self.unzip.decompress(plain)
        if last:
            self.buf += self.unzip.flush()
            self.done = True

    def readinto(self, b: Any) -> int:
        while not self.buf and not self.done:
            self._next()
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        del self.buf[:n]
        return n


# ================================================================ the consistent copy


def _connect_ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30, check_same_thread=False)


def copy_store(data_dir: Path, dest: Path) -> float:
    """Copy the store with SQLite's online backup API, in one step; returns the seconds it took.

    One step (``pages=-1``) reads a single snapshot under one read transaction: the server's writes go on
    into the WAL meanwhile and never restart the copy (a stepwise copy restarts on every foreign write)."""
    src_path = Path(data_dir) / DB_FILE
    if not src_path.exists():
        raise BackupError(f"no store in {data_dir} (fix: pass the server's --data directory)")
    started = time.monotonic()
    src = _connect_ro(src_path)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    dst = sqlite3.connect(dest)
    try:
        src.backup(dst, pages=-1)
    except sqlite3.Error as exc:
        raise BackupError(f"the online backup of {src_path} failed: {exc}") from exc
    finally:
        dst.close()
        src.close()
    return time.monotonic() - started


def store_facts(db: Path) -> dict[str, Any]:
    """What the manifest says about a copy of the store: counts per table, audit head, recovery point."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        counts = {t: int(conn.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]) for t in tables}
        head = point = None
        migrations: list[str] = []
        revision = 0
        if "audit_log" in tables:
            row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            if row is None and "audit_anchor" in tables:
                row = conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
            head = {"seq": int(row[0]), "hash": str(row[1])} if row else None
        if "events" in tables:
            row = conn.execute("SELECT rowid, ts, received_at FROM events ORDER BY rowid DESC LIMIT 1").fetchone()
            if row is not None:
                point = {"event_rowid": int(row[0]), "event_ts": row[1], "event_received_at": row[2]}
        if "_migrations" in tables:
            migrations = [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY name")]
        if "site_revisions" in tables:
            revision = int(conn.execute("SELECT COALESCE(MAX(number), 0) FROM site_revisions").fetchone()[0])
        snapshots = [r[0] for r in conn.execute("SELECT path FROM snapshots")] if "snapshots" in tables else []
    finally:
        conn.close()
    return {"tables": counts, "audit_head": head, "recovery_point": point, "migrations": migrations,
            "site_revision": revision, "_snapshot_files": snapshots}


# ================================================================ taking a backup


@dataclass
class BackupResult:
    path: Path
    manifest: dict[str, Any]
    seconds: float
    copy_seconds: float
    bytes: int

    def line(self) -> str:
        m = self.manifest
        point = m["recovery_point"] or {}
        return (f"backup {self.path}: {m['tables'].get('events', 0)} events, {m['snapshots']['files']} snapshots, "
                f"audit head {(m['audit_head'] or {}).get('seq', 0)}, recovery point event {point.get('event_rowid', '-')}"
                f" at {point.get('event_ts', '-')}; {self.bytes / 1e6:.1f} MB in {self.seconds:.2f} s "
                f"(online copy {self.copy_seconds:.2f} s); encrypted to {m['recipient']}")


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(mtime)
    tar.addfile(info, io.BytesIO(data))


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> int:
    with path.open("rb") as f:
        st = os.fstat(f.fileno())
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = st.st_size, 0o600, int(st.st_mtime)
        tar.addfile(info, f)
    return int(st.st_size)


def create_backup(data_dir: Path | str, out: Path | str, *, site_id: str, recipient: X25519PublicKey,
                  clock: Clock | None = None) -> BackupResult:
    """Write one encrypted backup of the server's data directory to ``out`` (atomically, mode 0600)."""
    clock = clock or SystemClock()
    data_dir, out = Path(data_dir), Path(out)
    started = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".doorkeep-backup-", dir=out.parent))  # beside the target: same disk
    try:
        copy = work / DB_FILE
        copy_s = copy_store(data_dir, copy)
        facts = store_facts(copy)
        files = facts.pop("_snapshot_files")
        recipient_raw = _raw(recipient)
        eph = X25519PrivateKey.generate()
        eph_raw = _raw(eph.public_key())
        key = _stream_key(eph.exchange(recipient), eph_raw, recipient_raw)
        now = clock.wall()
        manifest: dict[str, Any] = {
            "format": "doorkeep-backup/1", "doorkeep": __version__, "sqlite": sqlite3.sqlite_version,
            "site": site_id, "created_at": iso_ms(now), "created_at_epoch": now, "kind": "full",
            **facts, "snapshots": {"files": 0, "bytes": 0, "missing": 0},
            "recipient": key_id(recipient_raw), "ephemeral": base64.b64encode(eph_raw).decode("ascii"),
            "cipher": "X25519+HKDF-SHA256, AES-256-GCM chunks of 1 MiB, zlib",
        }
        # The snapshot files named by the copy: count them first, so the manifest (written before the
        # payload) can say how many; one deleted by retention meanwhile is counted as missing.
        present = [name for name in files if (data_dir / SNAPSHOT_DIR / name).is_file()]
        manifest["snapshots"] = {"files": len(present), "bytes": 0, "missing": len(files) - len(present)}
        text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode("utf-8")
        aad = hashlib.sha256(text).digest()
        tmp = out.with_name(out.name + ".tmp")
        digest = hashlib.sha256()
        with os.fdopen(open_private(tmp), "wb") as f:
            for part in (MAGIC, struct.pack(">I", len(text)), text):
                f.write(part)
                digest.update(part)
            sealed = _SealedWriter(f, key, aad, digest)
            with tarfile.open(fileobj=sealed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                _add_file(tar, DB_FILE, copy)
                head = facts["audit_head"]
                if head is not None:  # the head of the copy, not the live file (which may be ahead of it)
                    _add_bytes(tar, HEAD_FILE, json.dumps(head).encode(), now)
                gone = 0
                for name in present:
                    try:
                        _add_file(tar, f"{SNAPSHOT_DIR}/{name}", data_dir / SNAPSHOT_DIR / name)
                    except FileNotFoundError:
                        # Deleted between the count and now: an empty placeholder keeps the count honest.
                        _add_bytes(tar, f"{SNAPSHOT_DIR}/{name}", b"", now)
                        gone += 1
                if gone:
                    log.warning("%d snapshot file(s) were deleted (retention) while the backup was taken", gone)
            sealed.finish()
            f.write(TRAILER + digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        with contextlib.suppress(OSError):
            dfd = os.open(out.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BackupResult(out, manifest, time.monotonic() - started, copy_s, out.stat().st_size)


# ================================================================ reading and restoring


def read_manifest(path: Path | str, *, check: bool = True) -> tuple[dict[str, Any], bytes, int, int]:
    """``(manifest, its bytes, payload start, payload end)``; with ``check`` the file's checksum is verified
    first, so a damaged or cut-off file is named as such before anything is decrypted."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise BackupError(f"{path} is not a doorkeep backup (it does not start with {MAGIC[:-1].decode()})")
            head = f.read(4)
            if len(head) != 4:
                raise BackupError(f"{path} is truncated: it ends inside its header")
            (n,) = struct.unpack(">I", head)
            if n > MAX_MANIFEST or len(MAGIC) + 4 + n + TRAILER_BYTES > size:
                raise BackupError(f"{path} is truncated or damaged: its manifest runs past the end of the file")
            text = f.read(n)
            if check:
                f.seek(size - TRAILER_BYTES)
                trailer = f.read(TRAILER_BYTES)
                if not trailer.startswith(TRAILER):
                    raise BackupError(f"{path} is truncated: it has no end marker (an interrupted copy? take or "
                                      "fetch the backup again)")
                f.seek(0)
                digest = hashlib.sha256()
                left = size - TRAILER_BYTES
                while left:
                    block = f.read(min(left, 1 << 20))
                    if not block:
                        break
                    digest.update(block)
                    left -= len(block)
                if digest.digest() != trailer[len(TRAILER):]:
                    raise BackupError(f"{path} is damaged: its checksum does not match (fix: use another copy, "
                                      "e.g. the offsite one)")
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(text)
        if not isinstance(manifest, dict) or manifest.get("format") != "doorkeep-backup/1":
            raise ValueError("not a doorkeep-backup/1 manifest")
    except ValueError as exc:
        raise BackupError(f"{path} is damaged: its manifest is unreadable ({exc})") from None
    start = len(MAGIC) + 4 + n
    return manifest, text, start, size - TRAILER_BYTES


@dataclass
class RestoreReport:
    manifest: dict[str, Any]
    integrity: str = ""
    audit: str = ""
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)
    snapshots: tuple[int, int] = (0, 0)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        m = self.manifest
        point = m.get("recovery_point") or {}
        out = [f"backup of site {m['site']} taken {m['created_at']}; recovery point: event {point.get('event_rowid', '-')}"
               f" at {point.get('event_ts', '-')}",
               f"integrity_check: {self.integrity}", f"audit verify: {self.audit}"]
        same = [t for t, (want, got) in self.counts.items() if want == got]
        out.append(f"counts: {len(same)} of {len(self.counts)} tables match the manifest (events "
                   f"{self.counts.get('events', (0, 0))[1]}, audit_log {self.counts.get('audit_log', (0, 0))[1]}, "
                   f"site_revisions {self.counts.get('site_revisions', (0, 0))[1]})")
        out.append(f"snapshots: {self.snapshots[1]} of {self.snapshots[0]} files")
        out += [f"PROBLEM: {p}" for p in self.problems]
        return out


def _safe_member(member: tarfile.TarInfo) -> str | None:
    """The only names a backup holds: the store, the audit head, flat snapshot files. Anything else is refused."""
    name = member.name
    if not member.isfile():
        return None
    if name in (DB_FILE, HEAD_FILE):
        return name
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == SNAPSHOT_DIR and parts[1] and not parts[1].startswith(".") \
            and "\\" not in parts[1] and parts[1] not in ("..", "."):
        return name
    return None


def restore_backup(path: Path | str, data_dir: Path | str, *, site_id: str, private: X25519PrivateKey,
                   clock: Clock | None = None) -> RestoreReport:
    """Restore a backup into a new or empty ``data_dir`` and verify it; raises :class:`BackupError` for a
    damaged, truncated, foreign or wrongly-keyed file. Nothing is left in ``data_dir`` unless it verified."""
    started = time.monotonic()
    path, data_dir = Path(path), Path(data_dir)
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(f"{data_dir} is not empty: a restore never writes over data (fix: name a new directory)")
    manifest, text, start, end = read_manifest(path)
    if manifest.get("site") != site_id:
        raise BackupError(f"{path} is a backup of site {manifest.get('site')!r}, not {site_id!r} (fix: restore it "
                          "with that site's directory, or pick this site's backup)")
    mine = key_id(_raw(private.public_key()))
    if manifest.get("recipient") != mine:
        raise BackupError(f"{path} was encrypted to recovery key {manifest.get('recipient')}, not to this one "
                          f"({mine}) (fix: give that key's .key file)")
    try:
        eph_raw = base64.b64decode(manifest["ephemeral"], validate=True)
        key = _stream_key(private.exchange(X25519PublicKey.from_public_bytes(eph_raw)), eph_raw,
                          _raw(private.public_key()))
    except (KeyError, ValueError, TypeError):
        raise BackupError(f"{path} is damaged: its manifest has no usable ephemeral key") from None
    parent = data_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.restoring-", dir=parent))
    try:
        os.chmod(work, 0o700)
        private_dir(work / SNAPSHOT_DIR)
        with path.open("rb") as f:
            f.seek(start)
            reader = io.BufferedReader(_SealedReader(f, end, key, hashlib.sha256(text).digest()), 1 << 16)
            try:
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    for member in tar:
                        name = _safe_member(member)
                        if name is None:
                            raise BackupError(f"{path} holds an unexpected entry {member.name!r}: refused")
                        src = tar.extractfile(member)
                        assert src is not None
                        with os.fdopen(open_private(work / name), "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
            except (tarfile.TarError, zlib.error, EOFError) as exc:
                raise BackupError(f"{path} is damaged: its payload is unreadable ({exc})") from None
        report = verify_restored(work, manifest, clock=clock)
        if not report.ok:
            raise BackupError(f"the restored data does not match the backup's manifest: {'; '.join(report.problems)}")
        if data_dir.exists():
            data_dir.rmdir()  # empty, checked above
        os.replace(work, data_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.seconds = time.monotonic() - started
    return report


def verify_restored(data_dir: Path, manifest: dict[str, Any], *, clock: Clock | None = None) -> RestoreReport:
    """Integrity check, counts against the manifest (before anything else touches the copy), audit chain."""
    report = RestoreReport(manifest)
    db = data_dir / DB_FILE
    if not db.exists():
        report.problems.append("the backup held no store")
        return report
    conn = sqlite3.connect(db)
    try:
        report.integrity = ", ".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()
    if report.integrity != "ok":
        report.problems.append(f"PRAGMA integrity_check: {report.integrity}")
        return report
    facts = store_facts(db)
    for table, want in (manifest.get("tables") or {}).items():
        got = facts["tables"].get(table, -1)
        report.counts[table] = (int(want), got)
        if got != want:
            report.problems.append(f"table {table}: {got} rows, the manifest says {want}")
    if facts["audit_head"] != manifest.get("audit_head"):
        report.problems.append(f"audit head {facts['audit_head']} differs from the manifest's {manifest.get('audit_head')}")
    snaps = manifest.get("snapshots") or {}
    have = sum(1 for p in (data_dir / SNAPSHOT_DIR).iterdir() if p.is_file())
    report.snapshots = (int(snaps.get("files", 0)), have)
    if have != snaps.get("files", 0):
        report.problems.append(f"{have} snapshot files, the manifest says {snaps.get('files')}")
    store = Store(data_dir)  # applies this version's migrations to an older backup, as a server start would
    try:
        result = AuditLog(store, clock).verify()
    finally:
        store.close()
    report.audit = f"ok: {result.count} records" if result.ok else f"FAILED: {result.message}"
    if not result.ok:
        report.problems.append(f"audit verify: {result.message}")
    return report


# ================================================================ key material (--with-keys)


def seal_keys(keys_dir: Path, out: Path, *, recipient: X25519PublicKey | None = None,
              passphrase: str | None = None) -> list[str]:
    """Write the site's key files to ``out``, encrypted to another X25519 key or to a passphrase (scrypt);
    never to the backup's own recovery key, so one stolen secret opens either the data or the keys, not both."""
    if (recipient is None) == (passphrase is None):
        raise BackupError("--with-keys needs exactly one of --keys-to PUBFILE or $DOORKEEP_BACKUP_PASSPHRASE")
    files = {name: base64.b64encode((keys_dir / name).read_bytes()).decode("ascii")
             for name in KEY_FILES if (keys_dir / name).is_file()}
    if not files:
        raise BackupError(f"no key files in {keys_dir} (fix: pass the site directory whose keys/ holds them)")
    plain = json.dumps(files, sort_keys=True).encode()
    salt = os.urandom(16)
    if recipient is not None:
        eph = X25519PrivateKey.generate()
        eph_raw = _raw(eph.public_key())
        header = {"to": key_id(_raw(recipient)), "ephemeral": base64.b64encode(eph_raw).decode()}
        key = _stream_key(eph.exchange(recipient), eph_raw, _raw(recipient))
    else:
        header = {"to": "passphrase", "scrypt": {"n": 2 ** 15, "r": 8, "p": 1}, "salt": base64.b64encode(salt).decode()}
        key = Scrypt(salt=salt, length=32, n=2 ** 15, r=8, p=1).derive(passphrase.encode("utf-8"))  # type: ignore[union-attr]
    head = json.dumps(header, sort_keys=True).encode()
    nonce = os.urandom(12)
    body = AESGCM(key).encrypt(nonce, plain, KEYS_MAGIC + head)
    with os.fdopen(open_private(out), "wb") as f:
        f.write(KEYS_MAGIC + struct.pack(">I", len(head)) + head + nonce + body)
    return sorted(files)


def open_keys(path: Path, *, private: X25519PrivateKey | None = None, passphrase: str | None = None) -> dict[str, bytes]:
    """The key files of a ``--with-keys`` file, by name."""
    data = Path(path).read_bytes()
    if not data.startswith(KEYS_MAGIC):
        raise BackupError(f"{path} is not a doorkeep keys file")
    (n,) = struct.unpack(">I", data[len(KEYS_MAGIC):len(KEYS_MAGIC) + 4])
    head = data[len(KEYS_MAGIC) + 4:len(KEYS_MAGIC) + 4 + n]
    header = json.loads(head)
    rest = data[len(KEYS_MAGIC) + 4 + n:]
    if header["to"] == "passphrase":
        if passphrase is None:
            raise BackupError(f"{path} is sealed with a passphrase (fix: set $DOORKEEP_BACKUP_PASSPHRASE)")
        s = header["scrypt"]
        key = Scrypt(salt=base64.b64decode(header["salt"]), length=32, n=s["n"], r=s["r"], p=s["p"]).derive(
            passphrase.encode("utf-8"))
    else:
        if private is None or key_id(_raw(private.public_key())) != header["to"]:
            raise BackupError(f"{path} is sealed to key {header['to']} (fix: give that key's .key file)")
        eph_raw = base64.b64decode(header["ephemeral"])
        key = _stream_key(private.exchange(X25519PublicKey.from_public_bytes(eph_raw)), eph_raw,
                          _raw(private.public_key()))
    try:
        plain = AESGCM(key).decrypt(rest[:12], rest[12:], KEYS_MAGIC + head)
    except InvalidTag:
        raise BackupError(f"{path} does not open with that passphrase or key (or it was altered)") from None
    return {name: base64.b64decode(b64) for name, b64 in json.loads(plain).items()}


# ================================================================ the schedule


def backup_name(site_id: str, at: float) -> str:
    return f"doorkeep-{site_id}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(at))}{int(at * 1000) % 1000:03d}Z{SUFFIX}"


def prune(directory: Path, site_id: str, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups of this site in ``directory`` (names sort by time)."""
    mine = sorted(directory.glob(f"doorkeep-{site_id}-*{SUFFIX}"))
    gone = mine[:-keep] if keep > 0 else []
    for p in gone:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return gone


def copy_offsite(path: Path, settings: BackupSettings) -> str | None:
    """Copy one backup to the offsite target; returns what was done (None without a target).

    A directory: copied to a temporary name there, flushed, then renamed (a half copy never looks whole).
    A command: run without a shell, ``{file}`` replaced by the backup's path, killed after its timeout."""
    if settings.offsite_dir is not None:
        target = settings.offsite_dir
        if not target.is_dir():
            raise BackupError(f"the offsite directory {target} does not exist (is its disk mounted?)")
        tmp = target / f".{path.name}.tmp"
        with path.open("rb") as src, os.fdopen(open_private(tmp), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, target / path.name)
        return f"copied to {target}"
    if settings.offsite_command:
        argv = [arg.replace("{file}", str(path)) for arg in settings.offsite_command]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=settings.offsite_timeout_s, check=False)
        except FileNotFoundError:
            raise BackupError(f"offsite_command: program {argv[0]!r} not found") from None
        except subprocess.TimeoutExpired:
            raise BackupError(f"offsite_command timed out after {settings.offsite_timeout_s:g} s: "
                              f"{shlex.join(argv)}") from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise BackupError(f"offsite_command exited {done.returncode}: {tail[0][:200]}")
        return f"ran {argv[0]}"
    return None


BACKUP_FAILED = "backup_failed"


class BackupJob:
    """Takes a backup every ``every_s`` on its own thread, keeps ``keep``, copies each offsite.

    A failure (the backup or its copy) raises ``backup_failed`` (one open alarm, its detail the last error)
    and the job tries again after ``retry_s``; the next success clears the alarm. The wait is the stop
    event's, so stopping is immediate and no logic sleeps."""

    def __init__(self, store: Store, settings: BackupSettings, site_id: str, data_dir: Path,
                 clock: Clock | None = None, *, recipient: X25519PublicKey | None = None) -> None:
        if settings.dir is None:
            raise BackupError("[backup] dir is not set")
        self.store = store
        self.settings = settings
        self.site_id = site_id
        self.data_dir = Path(data_dir)
        self.clock = clock or SystemClock()
        self._recipient = recipient
        self.stop_event = threading.Event()
        self.runs = 0
        self.failures = 0
        self.last: BackupResult | None = None
        self.listeners: list[Callable[[BackupResult], None]] = []
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return f"{BACKUP_FAILED}:{self.site_id}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="doorkeep-backup", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> BackupResult:
        """One backup, prune and offsite copy; raises (after raising the alarm) on any failure."""
        stage = "backup"
        try:
            if self._recipient is None:
                assert self.settings.recovery_key is not None  # config check requires it with dir
                self._recipient = load_public_key(self.settings.recovery_key)
            directory = self.settings.dir
            assert directory is not None
            private_dir(directory)
            out = directory / backup_name(self.site_id, self.clock.wall())
            result = create_backup(self.data_dir, out, site_id=self.site_id, recipient=self._recipient,
                                   clock=self.clock)
            self.last = result
            prune(directory, self.site_id, self.settings.keep)
            stage = "offsite"
            copy_offsite(out, self.settings)
        except Exception as exc:
            self.failures += 1
            detail = {"stage": stage, "error": str(exc)[:500], "failures": self.failures}
            self.store.raise_alarm(BACKUP_FAILED, key=self.key, at=self.clock.wall(), detail=detail)
            raise
        self.runs += 1
        self.store.clear_alarm(self.key, self.clock.wall(), {"last_backup": str(out), "recovered": True})
        log.info("%s", result.line())
        for listener in self.listeners:
            listener(result)
        return result

    def _loop(self) -> None:
        """At a fixed rate: each backup starts ``every_s`` after the previous one started (not ended), so the
        worst-case loss is ``every_s`` plus one backup's duration, whatever the duration (docs/backups.md)."""
        delay = 0.0
        while not self.stop_event.wait(delay):
            started = self.clock.monotonic()
            try:
                self.run_once()
                delay = max(0.0, started + self.settings.every_s - self.clock.monotonic())
            except Exception:  # the alarm is up; the job must keep trying
                log.exception("backup failed; retrying in %.0f s", self.settings.retry_s)
                delay = min(self.settings.retry_s, self.settings.every_s)


def newest_backup(directory: Path, site_id: str) -> Path | None:
    mine = sorted(Path(directory).glob(f"doorkeep-{site_id}-*{SUFFIX}"))
    return mine[-1] if mine else None


def iter_backups(directory: Path, site_id: str) -> Iterator[Path]:
    yield from sorted(Path(directory).glob(f"doorkeep-{site_id}-*{SUFFIX}"))
