"""The durable outbox (DESIGN §5): events and snapshots survive outages, restarts and power cuts.

Every event and snapshot is written here *before* it is published, and its
row is deleted only when the broker has acknowledged it (QoS 1 PUBACK). A
:class:`Pump` publishes the rows strictly in insertion order while the link
is connected, at a bounded rate and with a bounded window of unacknowledged
messages; after an outage the backlog drains in order while new rows queue
behind it, which is what the server's per-device sequence check relies on.

Storage (one SQLite file, WAL, ``synchronous=FULL`` so a row is on disk when
``put_*`` returns)::

    messages(id INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion = publish order, never reused
             kind TEXT,       -- 'event' | 'snapshot'
             codec INTEGER,   -- 0 raw bytes, 1 raw deflate with the event dictionary below
             topic TEXT, payload BLOB,
             seq INTEGER,     -- events: the seq inside the payload
             created_at REAL)
    messages_snapshots: index on messages(id) WHERE kind = 'snapshot'  -- oldest snapshot first
    meta(name PRIMARY KEY, value)  -- 'seq' (last event seq handed out), 'dropped_snapshots'
    quarantine(...)  -- rows that failed their MAC, kept for inspection, never sent (schema 2)

Tamper evidence (schema 2, docs/faults.md "Tampered outbox"): every row carries
``mac = HMAC-SHA256-128(key, id, kind, codec, topic, stored payload, seq, prev_mac)``
and ``prev_mac``, the first 8 bytes of the MAC of the row written just before it, so a row cannot be
edited, moved to another id or spliced in from another file without the key. The
key is 32 random bytes in its own file (``outbox.key`` beside ``outbox.db``, mode
0600, created on first start; a file readable by group or others is refused).
:meth:`Outbox.peek` checks every row (and its link to the row before it, when
that one is still there and verifies) before it is handed to the pump: a row
that fails is never published, it moves to ``quarantine`` and ``on_tampered``
reports it (the agent turns that into an ``outbox_tampered`` event); the rows
after it carry on. Rows deleted legitimately (acknowledged, snapshots dropped
for space) leave gaps in the chain, so a deleted event is caught by the server's
``event_gap`` alarm rather than here. Upgrading a schema 1 file MACs its rows
once, in the transaction that creates the key (trust on first use).

An event's ``seq`` is taken from ``meta`` and written in the same
transaction as its row, so the counter keeps increasing across restarts and
a crash can never leave a number spent without its event.

Size: when the database would grow past its limit (``outbox_max_mb``, or
what the disk has left), the oldest snapshots are deleted first; events are
never dropped — past the limit they are still accepted and an ERROR is
logged. Every dropped snapshot is counted (persisted) and logged.

Threads: in the edge agent one thread touches this file, the jobs worker
(edge/jobs.py): it puts events and snapshots and steps the pump, which reads
and deletes; the loop never waits for the disk. The connection still sits
behind a lock, so tools and tests may share an outbox between threads. The
loop (paho's callbacks) only appends acknowledged message ids to the pump's
queue.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import shutil
import sqlite3
import stat
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doorkeep.clock import Clock, SystemClock
from edge.errors import EdgeError

log = logging.getLogger("doorkeep.edge.outbox")

MB = 1024 * 1024
DEFAULT_MAX_MB = 512
#: Space left free on the disk for the WAL, the policy cache and the system; snapshots go first below it.
DISK_RESERVE_BYTES = 16 * MB
#: Bytes a row costs beyond its payload and topic (record header, cell pointer, page slack): an estimate.
ROW_OVERHEAD = 48
SCHEMA_VERSION = 2
#: The MAC key's file, beside the database unless the caller names another.
KEY_FILE_NAME = "outbox.key"
KEY_BYTES = 32
#: A row's MAC: HMAC-SHA256 truncated to 128 bits (as RFC 4868 does); its link to the row before it: the first
#: 64 bits of that row's MAC (under the row's own MAC, so it cannot be changed; a collision with another genuine
#: row is a 2^-64 chance). 26 bytes a row in all, about a tenth of an event's (bench/outbox.py).
MAC_LEN = 16
LINK_LEN = 8
_MAC_DOMAIN = b"doorkeep.outbox.row/1\x00"
#: How many tampered ids one report lists (the count is always complete).
MAX_REPORTED_IDS = 50

KIND_EVENT = "event"
KIND_SNAPSHOT = "snapshot"

CODEC_RAW = 0
CODEC_EVENT_DEFLATE = 1
# Codec 1's preset dictionary: three typical events (door, denied, granted; the commonest last, nearest),
# so keys and fixed values cost a few bits and a row holds little more than the ids and hashes.
# Rows already on disk depend on these exact bytes: never edit it; add a codec with a new dictionary.
_EVENT_ZDICT = (
    b'{"credential_hash":null,"credential_last4":null,"decided_by":null,"decision":null,"detail":{},'
    b'"device":"","door":"","id":"","latency_ms":null,"person":null,"reason":null,"schema":"doorkeep.event/1",'
    b'"seq":,"snapshot":null,"transaction":null,"ts":"2026-01-01T00:00:00.000Z","type":"door_opened"}'
    b'{"credential_hash":"","credential_last4":"","decided_by":"edge_offline","decision":"denied","detail":{},'
    b'"device":"","door":"","id":"","latency_ms":0.0,"person":null,"reason":"unknown_credential",'
    b'"schema":"doorkeep.event/1","seq":,"snapshot":null,"transaction":"","ts":"2026-01-01T00:00:00.000Z",'
    b'"type":"access"}'
    b'{"credential_hash":"","credential_last4":"","decided_by":"server","decision":"granted","detail":{},'
    b'"device":"","door":"","id":"","latency_ms":0.0,"person":"","reason":"granted","schema":"doorkeep.event/1",'
    b'"seq":,"snapshot":"","transaction":"","ts":"2026-01-01T00:00:00.000Z","type":"access"}'
)
_WBITS = -11  # raw deflate, 2 KiB window: covers the dictionary and a whole event


def _deflate(payload: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, _WBITS, 4, zlib.Z_DEFAULT_STRATEGY, _EVENT_ZDICT)
    return c.compress(payload) + c.flush()


def _inflate(blob: bytes) -> bytes:
    d = zlib.decompressobj(_WBITS, _EVENT_ZDICT)
    out = d.decompress(blob) + d.flush()
    if not d.eof:
        raise zlib.error("truncated deflate stream")
    return out


def _decode(codec: int, blob: bytes) -> bytes:
    if codec == CODEC_RAW:
        return bytes(blob)
    if codec == CODEC_EVENT_DEFLATE:
        return _inflate(blob)
    raise zlib.error(f"unknown codec {codec}")


class OutboxError(EdgeError, OSError):
    """The outbox cannot be opened or written.

    Raised by a failed put; ``events`` are the (seq, topic, payload) that could not be stored
    (their numbers are spent), so the caller can still publish them without durability;
    ``seq`` and ``payload`` are the last of them (the only one, for ``put_event``).
    """

    def __init__(self, message: str, *, events: list[tuple[int, str, bytes]] | None = None) -> None:
        super().__init__(message)
        self.events = events or []
        self.seq = self.events[-1][0] if self.events else None
        self.payload = self.events[-1][2] if self.events else None


class _Unusable(Exception):
    """The file is not a database SQLite can trust (not a database, or damaged)."""


_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


def row_mac(key: bytes, rid: int, kind: str, codec: int, topic: str, blob: bytes, seq: int | None,
            prev_mac: bytes) -> bytes:
    """HMAC-SHA256 of one row as stored (the payload before decoding: checked before it is inflated).

    Every field is length-prefixed, so no two different rows encode alike.
    """
    k = kind.encode("utf-8")
    t = topic.encode("utf-8")
    parts = [_MAC_DOMAIN, struct.pack(">qiB", rid, codec, seq is not None), struct.pack(">q", seq or 0),
             struct.pack(">I", len(k)), k, struct.pack(">I", len(t)), t, struct.pack(">I", len(blob)), bytes(blob),
             struct.pack(">I", len(prev_mac)), bytes(prev_mac)]
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()[:MAC_LEN]


def load_or_create_key(path: Path) -> tuple[bytes, bool]:
    """The outbox's MAC key and whether it was created now; refuses a file open to group or others.

    Created with O_EXCL and mode 0600, fsync'd with its directory, so a crash leaves either no key or a whole one.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OutboxError(f"{path}: cannot create the outbox key ({exc}); fix: make its directory writable "
                          "by the edge's user") from exc
    else:
        key = os.urandom(KEY_BYTES)
        try:
            os.write(fd, (key.hex() + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return key, True
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise OutboxError(f"{path}: cannot read the outbox key ({exc.__class__.__name__}); fix: run as its "
                          "owner") from None
    if mode & 0o077:
        raise OutboxError(f"{path}: outbox key file is open to group or others (mode {mode:o}); "
                          f"fix: chmod 600 {path}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise OutboxError(f"{path}: outbox key is not {KEY_BYTES * 2} hex digits; fix: move it away (a new key is "
                          "made at the next start, and the rows still in the outbox are then reported as "
                          "tampered, since they can no longer be checked)")
    return key, False


@dataclass(frozen=True, slots=True)
class Tampered:
    """A row that failed its check: what it claimed (not trusted) and why it failed."""

    id: int
    kind: str
    topic: str
    seq: int | None
    why: str


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    kind: str
    topic: str
    payload: bytes


_SCHEMA = [
    ("CREATE TABLE messages ("
     " id INTEGER PRIMARY KEY AUTOINCREMENT,"
     " kind TEXT NOT NULL CHECK (kind IN ('event', 'snapshot')),"
     " codec INTEGER NOT NULL,"
     " topic TEXT NOT NULL,"
     " payload BLOB NOT NULL,"
     " seq INTEGER,"
     " created_at REAL NOT NULL)"),
    "CREATE INDEX messages_snapshots ON messages (id) WHERE kind = 'snapshot'",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO meta (name, value) VALUES ('seq', 0), ('dropped_snapshots', 0)",
]
# Schema 1 -> 2: the MAC columns and the quarantine (the rows are MACed by Outbox._migrate, with the key).
_SCHEMA_2 = [
    "ALTER TABLE messages ADD COLUMN mac BLOB",
    "ALTER TABLE messages ADD COLUMN prev_mac BLOB",
    ("CREATE TABLE quarantine ("
     " id INTEGER NOT NULL, kind TEXT, codec INTEGER, topic TEXT, payload BLOB, seq INTEGER, created_at REAL,"
     " mac BLOB, prev_mac BLOB, found_at REAL NOT NULL, why TEXT NOT NULL)"),
]
_COLUMNS = "id, kind, codec, topic, payload, seq, mac, prev_mac"


class Outbox:
    """The SQLite outbox of one edge device. Thread-safe."""

    def __init__(self, path: Path | str, *, max_bytes: int = DEFAULT_MAX_MB * MB, clock: Clock | None = None,
                 disk_free: Callable[[], int] | None = None, key_path: Path | str | None = None,
                 on_tampered: Callable[[list[Tampered]], None] | None = None) -> None:
        """``disk_free`` returns the bytes left on the outbox's disk (default: ``shutil.disk_usage``).

        ``key_path``: the MAC key's file (default ``outbox.key`` beside the database). ``on_tampered`` is called
        (from the thread that peeks, outside the outbox's lock) with the rows that failed their check."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.clock = clock or SystemClock()
        self._disk_free = disk_free or (lambda: shutil.disk_usage(self.path.parent).free)
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        self.write_errors = 0
        self.over_limit_events = 0
        self.corrupt_rows = 0
        self._over_limit_logged = 0.0
        self._over_limit_since_log = 0
        self.set_aside: Path | None = None
        self.on_tampered = on_tampered
        self.tampered_rows = 0
        self.key_path = Path(key_path) if key_path is not None else self.path.with_name(KEY_FILE_NAME)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutboxError(f"cannot create the outbox directory {self.path.parent}: {exc}") from exc
        self._key, self._key_created = load_or_create_key(self.key_path)
        salvaged_seq = 0
        try:
            try:
                self._conn = self._open()
            except _Unusable as exc:
                # Not a database, or damaged: keep the file for inspection and carry on with an empty
                # outbox, so the doors keep working and reporting.
                salvaged_seq = self._set_aside(str(exc))
                self._conn = self._open()
        except (sqlite3.Error, _Unusable) as exc:
            raise OutboxError(f"cannot open the outbox {self.path}: {exc}") from exc
        meta = dict(self._conn.execute("SELECT name, value FROM meta").fetchall())
        self._seq = int(meta["seq"])
        if salvaged_seq > self._seq:
            self._seq = salvaged_seq
            with self._write():
                self._conn.execute("UPDATE meta SET value = ? WHERE name = 'seq'", (self._seq,))
        self._dropped = int(meta["dropped_snapshots"])
        self._pending = int(self._conn.execute("SELECT count(*) FROM messages").fetchone()[0])
        self._oldest_event: float | None = self._query_oldest_event()
        self._page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        last = self._conn.execute("SELECT mac FROM messages ORDER BY id DESC LIMIT 1").fetchone()
        self._last_mac: bytes = bytes(last[0]) if last is not None and last[0] is not None else b""
        """The MAC of the last row written: the next row's ``prev_mac`` (only changed after a commit)."""
        if self._pending:
            log.info("outbox %s: %d message(s) from before the restart to deliver; last seq %d",
                     self.path, self._pending, self._seq)

    # -------------------------------------------------------------- opening

    def _open(self) -> sqlite3.Connection:
        """Connect, check and create the schema; raises _Unusable for a file that is not a sound database."""
        # Created 0600 before SQLite opens it, whatever the umask: SQLite gives the -wal and -shm files the
        # database's own mode, and the rows hold card hashes and snapshots.
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            try:
                mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                    raise _Unusable(str(exc)) from exc
                raise
            if check != "ok":
                raise _Unusable(f"integrity check failed: {check}")
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"journal_mode is {mode}, not wal")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA journal_size_limit={4 * MB}")  # the WAL shrinks back after a checkpoint
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version in (0, 1):
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if version == 0:
                        for stmt in _SCHEMA:
                            conn.execute(stmt)
                    for stmt in _SCHEMA_2:
                        conn.execute(stmt)
                    if version == 1:
                        self._migrate(conn)
                    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            elif version != SCHEMA_VERSION:
                raise sqlite3.OperationalError(f"outbox schema version {version} is newer than this edge "
                                               f"({SCHEMA_VERSION}); upgrade doorkeep")
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Schema 1 -> 2: MAC the rows already waiting, in order, once (they were written before there was a
        key: trusted on first use). Only when the key is new too: a schema 1 file met by an existing key is
        not an upgrade but a file put back or rewritten, and its rows are left without a MAC, so the drain
        reports them as tampered instead of blessing them."""
        count = int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
        if not self._key_created:
            log.error("outbox %s: schema 1 file but the key %s already existed: its %d row(s) are not MACed and "
                      "will be reported as tampered", self.path, self.key_path, count)
            return
        prev = b""
        for rid, kind, codec, topic, blob, seq in conn.execute(
                "SELECT id, kind, codec, topic, payload, seq FROM messages ORDER BY id").fetchall():
            link = prev[:LINK_LEN]
            mac = row_mac(self._key, rid, kind, codec, topic, blob, seq, link)
            conn.execute("UPDATE messages SET mac = ?, prev_mac = ? WHERE id = ?", (mac, link, rid))
            prev = mac
        log.warning("outbox %s upgraded to tamper-evident rows: %d waiting row(s) MACed as found", self.path, count)

    def _next_id(self, conn: sqlite3.Connection) -> int:
        """Inside a write transaction: the id the next row gets (as AUTOINCREMENT would give it)."""
        row = conn.execute("SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),"
                           " coalesce((SELECT max(id) FROM messages), 0))").fetchone()
        return int(row[0]) + 1

    def _set_aside(self, why: str) -> int:
        """Move an unusable database aside (with its WAL); returns the last seq it still shows, if any."""
        seq = 0
        with contextlib.suppress(sqlite3.Error):
            probe = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                seq = int(probe.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()[0])
            finally:
                probe.close()
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                os.replace(src, Path(f"{aside}{suffix}"))
        self.set_aside = aside
        log.error("outbox %s is unusable (%s): set aside as %s and started empty; events in it were not "
                  "delivered; seq continues from %d", self.path, why, aside, seq)
        return seq

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._conn.close()

    @contextlib.contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction; ``durable=False`` skips the fsync (for deletes: a lost one only re-sends)."""
        conn = self._conn
        if not durable:
            conn.execute("PRAGMA synchronous=NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous=FULL")

    # ---------------------------------------------------------------- state

    @property
    def pending(self) -> int:
        """Rows waiting for the broker's acknowledgement."""
        return self._pending

    @property
    def dropped_snapshots(self) -> int:
        """Snapshots deleted unsent to keep within the size limit (persisted across restarts)."""
        return self._dropped

    @property
    def seq(self) -> int:
        """The last event seq handed out (0 before the first event)."""
        return self._seq

    def stats(self) -> dict[str, int]:
        return {"pending": self._pending, "dropped_snapshots": self._dropped}

    def oldest_event_at(self) -> float | None:
        """Wall time (epoch s) the oldest event still waiting was stored, or None when none waits: how far
        delivery is behind (the edge's ``/metrics`` and its retained state's ``outbox.oldest_age_s``).

        Kept in memory by whoever changes the rows (under this outbox's lock, on the jobs worker), so reading it
        takes no lock and touches no disk: the loop builds the retained state from it and never waits behind an
        fsync (the module docstring, "Threads")."""
        return self._oldest_event

    def _query_oldest_event(self) -> float | None:
        """Under the lock (or while opening): when the oldest waiting event was stored, read from the file."""
        row = self._conn.execute("SELECT created_at FROM messages WHERE kind = 'event' ORDER BY id LIMIT 1"
                                 ).fetchone()
        return float(row[0]) if row is not None and row[0] is not None else None

    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` runs after every put (the pump uses it to wake up)."""
        self._listeners.append(fn)

    def _notify(self) -> None:
        for fn in list(self._listeners):
            try:
                fn()
            except Exception:
                log.exception("outbox listener failed")

    def used_bytes(self) -> int:
        """Bytes the database's live pages take (freed pages are reused before the file grows)."""
        with self._lock:
            return self._used()

    def _used(self) -> int:
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages - free) * self._page_size

    def integrity_check(self) -> str:
        """The full ``PRAGMA integrity_check`` ("ok" when consistent)."""
        with self._lock:
            rows = self._conn.execute("PRAGMA integrity_check").fetchall()
        return "\n".join(str(r[0]) for r in rows)

    # ----------------------------------------------------------------- puts

    def put_event(self, topic: str, encode: Callable[[int], bytes]) -> int:
        """Number, store and fsync one event; returns its seq.

        ``encode(seq)`` returns the event's payload carrying that seq. Raises :class:`OutboxError`
        if the row cannot be written (its seq and payload ride on the error).
        """
        return self.put_events([(topic, encode)])[0]

    def put_events(self, items: Iterable[tuple[str, Callable[[int], bytes]]]) -> list[int]:
        """Store several events in one transaction (one fsync); returns their seqs in order."""
        with self._lock:
            seq = self._seq
            rows = []
            for topic, encode in items:
                seq += 1
                payload = encode(seq)
                rows.append((topic, seq, payload, _deflate(payload)))
            if not rows:
                return []
            now = self.clock.wall()
            prev = self._last_mac
            try:
                with self._write() as conn:
                    dropped = 0
                    rid = self._next_id(conn)
                    for topic, s, _, blob in rows:
                        fits, d = self._make_room(self._need(len(blob) + len(topic)))
                        dropped += d
                        if not fits:
                            self._over_limit()
                        link = prev[:LINK_LEN]
                        mac = row_mac(self._key, rid, KIND_EVENT, CODEC_EVENT_DEFLATE, topic, blob, s, link)
                        conn.execute("INSERT INTO messages (id, kind, codec, topic, payload, seq, created_at, mac, "
                                     "prev_mac) VALUES (?, 'event', ?, ?, ?, ?, ?, ?, ?)",
                                     (rid, CODEC_EVENT_DEFLATE, topic, blob, s, now, mac, link))
                        prev = mac
                        rid += 1
                    conn.execute("UPDATE meta SET value = ? WHERE name = 'seq'", (seq,))
            except sqlite3.Error as exc:
                self._seq = seq  # the numbers are spent: the caller publishes these events without the outbox
                self.write_errors += 1
                log.error("outbox: could not store event seq %d (%s): it is not durable", seq, exc)
                raise OutboxError(f"cannot store the event: {exc}",
                                  events=[(s, t, payload) for t, s, payload, _ in rows]) from exc
            self._seq = seq
            self._last_mac = prev
            self._pending += len(rows) - dropped
            if self._oldest_event is None:
                self._oldest_event = now
            self._dropped += dropped
        self._notify()
        return [r[1] for r in rows]

    def put_snapshot(self, topic: str, jpeg: bytes) -> bool:
        """Store one snapshot; False if it was dropped at once because not even it fits."""
        with self._lock:
            need = self._need(len(jpeg) + len(topic))
            mac = self._last_mac
            try:
                with self._write() as conn:
                    fits, dropped_older = self._make_room(need)
                    if fits:
                        rid = self._next_id(conn)
                        link = self._last_mac[:LINK_LEN]
                        mac = row_mac(self._key, rid, KIND_SNAPSHOT, CODEC_RAW, topic, jpeg, None, link)
                        conn.execute("INSERT INTO messages (id, kind, codec, topic, payload, seq, created_at, mac, "
                                     "prev_mac) VALUES (?, 'snapshot', ?, ?, ?, NULL, ?, ?, ?)",
                                     (rid, CODEC_RAW, topic, jpeg, self.clock.wall(), mac, link))
                    else:
                        conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'dropped_snapshots'")
            except sqlite3.Error as exc:
                self.write_errors += 1
                log.error("outbox: could not store the snapshot %s (%s); it is lost", topic, exc)
                raise OutboxError(f"cannot store the snapshot: {exc}") from exc
            self._last_mac = mac
            self._pending += (1 if fits else 0) - dropped_older
            self._dropped += dropped_older + (0 if fits else 1)
        if not fits:
            log.warning("outbox: snapshot %s (%d bytes) dropped: the outbox is full of events (%d dropped so far)",
                        topic, len(jpeg), self._dropped)
        self._notify()
        return fits

    def _need(self, size: int) -> int:
        """Bytes a row of ``size`` content bytes adds: a large one takes whole overflow pages."""
        size += ROW_OVERHEAD
        if size <= self._page_size // 4:
            return size
        per_page = self._page_size - 4  # an overflow page keeps 4 bytes for the next page's number
        return -(-size // per_page) * self._page_size

    def _limit(self) -> int:
        """The size the database may grow to: its own limit, or what the disk has left."""
        free_pages = self._conn.execute("PRAGMA freelist_count").fetchone()[0] * self._page_size
        try:
            disk = self._disk_free()
        except OSError:
            return self.max_bytes
        return min(self.max_bytes, self._used() + free_pages + disk - DISK_RESERVE_BYTES)

    def _make_room(self, need: int) -> tuple[bool, int]:
        """Inside a write transaction: delete the oldest snapshots until ``need`` more bytes fit.

        Returns (fits, snapshots dropped); never deletes an event.
        """
        limit = self._limit()
        used = self._used()
        dropped = 0
        while used + need > limit:
            row = self._conn.execute(
                "SELECT id, topic, length(payload) FROM messages WHERE kind = 'snapshot' ORDER BY id LIMIT 1"
            ).fetchone()
            if row is None:
                break
            self._conn.execute("DELETE FROM messages WHERE id = ?", (row[0],))
            self._conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'dropped_snapshots'")
            dropped += 1
            log.warning("outbox: dropped the oldest unsent snapshot %s (%d bytes) to stay within %d MB "
                        "(%d dropped so far)", row[1], row[2], limit // MB, self._dropped + dropped)
            used = self._used()
        return used + need <= limit, dropped

    def _over_limit(self) -> None:
        self.over_limit_events += 1
        self._over_limit_since_log += 1
        now = time.monotonic()
        if self._over_limit_logged == 0.0 or now - self._over_limit_logged >= 60.0:
            log.error("outbox %s is over its %d MB limit with only events left: still accepting events "
                      "(never dropped), %d over the limit since the last report; free space or restore the link",
                      self.path, self.max_bytes // MB, self._over_limit_since_log)
            self._over_limit_logged = now
            self._over_limit_since_log = 0

    # ---------------------------------------------------------------- drain

    def peek(self, after: int = 0, limit: int = 100) -> list[Row]:
        """The oldest rows with an id above ``after`` that pass their MAC check, in order, payloads decoded.

        A row that fails is quarantined (never returned, so never published) and reported through
        ``on_tampered``; the scan goes on past it, so the good rows behind it still come. The lock is taken
        per chunk, so a file full of forged rows never holds up the doors' puts for long.
        """
        rows: list[Row] = []
        cursor = after
        while len(rows) < limit:
            tampered: list[Tampered] = []
            with self._lock:
                found = self._conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                                           (cursor, max(limit - len(rows), 1))).fetchall()
                if not found:
                    break
                prev_id = found[0][0] - 1
                prev_good = self._verified_mac(prev_id)
                bad: list[tuple[int, Any, Any, Any, str]] = []
                for rid, kind, codec, topic, blob, seq, mac, prev_mac in found:
                    cursor = rid
                    why = self._check(rid, kind, codec, topic, blob, seq, mac, prev_mac,
                                      prev_good if prev_id == rid - 1 else None)
                    prev_id = rid
                    if why is not None:
                        bad.append((rid, kind, topic, seq, why))
                        prev_good = None
                        continue
                    prev_good = bytes(mac)
                    try:
                        rows.append(Row(rid, kind, topic, _decode(codec, blob)))
                    except zlib.error as exc:
                        # MAC-verified yet undecodable: a bug, not an attack; a row no one can send must not
                        # block the rest.
                        self.corrupt_rows += 1
                        log.error("outbox: row %d (%s) cannot be decoded (%s); discarded", rid, topic, exc)
                        with self._write(durable=False) as conn:
                            if conn.execute("DELETE FROM messages WHERE id = ?", (rid,)).rowcount:
                                self._pending -= 1
                        self._oldest_event = self._query_oldest_event()
                if bad:
                    tampered = self._quarantine(bad)
            if tampered:
                self._report(tampered)
        return rows

    def _check(self, rid: int, kind: Any, codec: Any, topic: Any, blob: Any, seq: Any, mac: Any, prev_mac: Any,
               prev_good: bytes | None) -> str | None:
        """Why the row cannot be trusted, or None. ``prev_good``: the verified MAC of row ``rid - 1``, if any."""
        if not isinstance(mac, bytes) or not isinstance(prev_mac, bytes):
            return "no MAC"
        if not (isinstance(kind, str) and isinstance(codec, int) and isinstance(topic, str)
                and isinstance(blob, bytes) and (seq is None or isinstance(seq, int))):
            return "column of the wrong type"
        if not hmac.compare_digest(row_mac(self._key, rid, kind, codec, topic, blob, seq, prev_mac), mac):
            return "MAC does not verify"
        if prev_good is not None and not hmac.compare_digest(prev_good[:LINK_LEN], prev_mac):
            return "not chained to the row before it"
        return None

    def _verified_mac(self, rid: int) -> bytes | None:
        """The MAC of row ``rid`` if it is still there and verifies (the anchor for the next row's link)."""
        found = self._conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (rid,)).fetchone()
        if found is None or self._check(*found, None) is not None:
            return None
        return bytes(found[6])

    def _quarantine(self, bad: list[tuple[int, Any, Any, Any, str]]) -> list[Tampered]:
        """Move rows that failed their check out of the queue (one transaction), kept for inspection; never sent."""
        now = self.clock.wall()
        with self._write(durable=False) as conn:
            gone = 0
            for rid, _, _, _, why in bad:
                conn.execute("INSERT INTO quarantine (id, kind, codec, topic, payload, seq, created_at, mac, "
                             "prev_mac, found_at, why) SELECT id, kind, codec, topic, payload, seq, created_at, mac, "
                             "prev_mac, ?, ? FROM messages WHERE id = ?", (now, why, rid))
                gone += conn.execute("DELETE FROM messages WHERE id = ?", (rid,)).rowcount
        self._pending -= gone
        if gone:
            self._oldest_event = self._query_oldest_event()
        self.tampered_rows += len(bad)
        items = [Tampered(rid, str(kind)[:20], str(topic)[:200],
                          seq if isinstance(seq, int) and not isinstance(seq, bool) else None, why)
                 for rid, kind, topic, seq, why in bad]
        first = items[0]
        log.error("outbox %s: %d row(s) failed their check and are NOT sent (kept in its quarantine table); "
                  "first: row %d (%s %s, claims seq %s): %s", self.path, len(items), first.id, first.kind,
                  first.topic, first.seq, first.why)
        return items

    def _report(self, tampered: list[Tampered]) -> None:
        if self.on_tampered is None:
            return
        try:
            self.on_tampered(tampered)
        except Exception:
            log.exception("outbox: reporting tampered rows failed")

    def quarantined(self) -> list[dict[str, Any]]:
        """The rows set aside as tampered (for inspection and tests)."""
        with self._lock:
            cur = self._conn.execute("SELECT id, kind, topic, seq, why FROM quarantine ORDER BY id")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]

    def ack(self, ids: Iterable[int]) -> int:
        """Delete acknowledged rows; returns how many were still there."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            with self._write(durable=False) as conn:
                gone = 0
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    marks = ",".join("?" * len(chunk))
                    gone += conn.execute(f"DELETE FROM messages WHERE id IN ({marks})", chunk).rowcount
            self._pending -= gone
            if gone and self._oldest_event is not None:
                self._oldest_event = self._query_oldest_event()
            return gone


# --------------------------------------------------------------------- pump


@dataclass(slots=True)
class _InFlight:
    row: int
    generation: int
    size: int


class Pump:
    """Publishes the outbox in order while connected; paho-free, so tests drive it with a fake clock.

    ``send(topic, payload)`` hands one QoS 1 message to the MQTT client and returns its message id,
    or None if the client refused it (try again later). A message id returned while the connection
    was dropping still counts: the client keeps that copy and sends it again on reconnect.

    The link calls :meth:`connected` / :meth:`disconnected` / :meth:`acked` from the edge's loop
    (they only record and wake); one thread (the jobs worker) calls :meth:`step` and waits as long as it
    returns.

    After a reconnect the client first re-sends its own unacknowledged copies; the pump waits for
    those acknowledgements (at most ``resend_grace_s``) and then starts again from the oldest row
    still in the outbox, so nothing overtakes an older row.
    """

    def __init__(self, outbox: Outbox, send: Callable[[str, bytes], int | None], *, clock: Clock | None = None,
                 rate: float = 200.0, burst: int | None = None, window: int = 32,
                 window_bytes: int = 512 * 1024, resend_grace_s: float = 30.0,
                 wake: Callable[[], None] | None = None) -> None:
        if rate <= 0 or window < 1:
            raise ValueError("rate and window must be positive")
        self.outbox = outbox
        self.send = send
        self.clock = clock or SystemClock()
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1, int(rate // 10)))
        self.window = window
        self.window_bytes = window_bytes
        self.resend_grace_s = resend_grace_s
        self.wake = wake or (lambda: None)
        self.published = 0
        self.acknowledged = 0
        self.resends_abandoned = 0
        self._signal = threading.Lock()  # guards the fields paho's thread writes; never held across send()
        self._acks: deque[int] = deque()
        self._connected = False
        self._generation = 0
        # Owned by the stepping thread:
        self._seen_generation = 0
        self._reconnected_at = 0.0
        self._restart = True
        self._cursor = 0
        self._inflight: dict[int, _InFlight] = {}
        self._inflight_bytes = 0
        self._tokens = self.burst
        self._refilled = self.clock.monotonic()
        outbox.add_listener(self._poke)

    def _poke(self) -> None:
        self.wake()

    # ------------------------------------------------ from the edge's loop (paho's callbacks)

    def connected(self) -> None:
        with self._signal:
            self._connected = True
            self._generation += 1
        self.wake()

    def disconnected(self) -> None:
        with self._signal:
            self._connected = False
        self.wake()

    def acked(self, mid: int) -> None:
        """PUBACK for message id ``mid`` (any QoS 1 publish; unknown ids are ignored)."""
        with self._signal:
            self._acks.append(mid)
        self.wake()

    # ------------------------------------------------------- the pump thread

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def step(self) -> float | None:
        """Apply acknowledgements, publish what the window and rate allow.

        Returns how many seconds until it can do more, or None to wait for a wake-up
        (a put, an acknowledgement, a connection change).
        """
        self._apply_acks()
        with self._signal:
            connected, generation = self._connected, self._generation
        if not connected:
            return None
        now = self.clock.monotonic()
        if generation != self._seen_generation:
            self._seen_generation = generation
            self._reconnected_at = now
            self._restart = True
        stale = [mid for mid, f in self._inflight.items() if f.generation != generation]
        if stale:
            waited = now - self._reconnected_at
            if waited < self.resend_grace_s:
                return self.resend_grace_s - waited  # their acknowledgements wake us sooner
            log.warning("outbox: %d message(s) sent before the reconnect were not acknowledged within %.0f s; "
                        "sending them again", len(stale), self.resend_grace_s)
            self.resends_abandoned += len(stale)
            for mid in stale:
                self._forget(mid)
        if self._restart:
            # Everything sent before is acknowledged: resume from the oldest row still stored.
            self._restart = False
            self._cursor = 0
        self._tokens = min(self.burst, self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now
        while True:
            room = self.window - len(self._inflight)
            if room <= 0 or (self._inflight and self._inflight_bytes >= self.window_bytes):
                return None
            if self._tokens < 1.0:
                return (1.0 - self._tokens) / self.rate
            rows = self.outbox.peek(self._cursor, min(room, int(self._tokens)))
            if not rows:
                return None
            for row in rows:
                if self._inflight and self._inflight_bytes + len(row.payload) > self.window_bytes:
                    return None
                mid = self.send(row.topic, row.payload)
                if mid is None:
                    return 0.1
                self._inflight[mid] = _InFlight(row.id, generation, len(row.payload))
                self._inflight_bytes += len(row.payload)
                self._cursor = row.id
                self._tokens -= 1.0
                self.published += 1
            with self._signal:
                if not self._connected or self._generation != generation:
                    return 0.0

    def _apply_acks(self) -> None:
        with self._signal:
            mids = list(self._acks)
            self._acks.clear()
        rows = []
        for mid in mids:
            f = self._forget(mid)
            if f is not None:
                rows.append(f.row)
        if rows:
            self.acknowledged += len(rows)
            self.outbox.ack(rows)

    def _forget(self, mid: int) -> _InFlight | None:
        f = self._inflight.pop(mid, None)
        if f is not None:
            self._inflight_bytes -= f.size
        return f
