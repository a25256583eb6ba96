"""The store's SIEM records: the durable queue of syslog messages and the cursors that feed it (migration
``024_siem``; the rules are server/siem.py's, docs/operations.md "SIEM (syslog)").

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself.

The design is the webhooks' (server/store_webhooks.py): the ingest path only wakes the SIEM worker, which reads
what was stored after its cursors (server/store_cursors.py: events and alarms by rowid, the audit log by ``seq``),
formats each record once and queues the messages *and* moves the cursors in one transaction. A crash before that
commit reads the same rows again; ``source`` is unique, so queueing one twice is a no-op.

Unlike a webhook, a syslog collector has one destination and acknowledges nothing, so the queue has no per-message
state: a message stays until the sender *confirms* it (server/siem.py says when) and is then deleted (with its
text, which may name people). ``id`` is AUTOINCREMENT: a new message always gets a higher id than any message ever
queued, so the sender's "written up to id N" never skips one queued after the queue ran empty.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import sqlite_utils

from server import sqldb

from server.store_cursors import Cursor, SourceReads, create_cursor_table, cursor_at_end, save_cursors

#: The cursor table, one row per source (``events``, ``alarms``, ``audit_log``), written when forwarding first starts.
CURSORS = "siem_cursors"
SOURCES = ("events", "alarms", "audit_log")


def m024_siem(db: sqlite_utils.Database) -> None:
    """``siem_queue`` (``source`` what a message is about: ``event:ID``, ``alarm:ID``, ``audit:SEQ``; ``kind`` access,
    alarms or audit; ``person`` the person id it names, for erasure; ``stored_at`` when the record was stored;
    ``message`` the RFC 5424 message without its frame) and ``siem_cursors``, left empty: the cursors start at the
    end of each table when forwarding is first configured, so a SIEM never receives the history before it."""
    db.execute("CREATE TABLE siem_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, source TEXT NOT NULL UNIQUE, "
               "kind TEXT NOT NULL, person TEXT, stored_at REAL NOT NULL, queued_at REAL NOT NULL, "
               "message TEXT NOT NULL)")
    db.execute("CREATE INDEX siem_queue_person ON siem_queue (person) WHERE person IS NOT NULL")
    create_cursor_table(db, CURSORS)


class SiemRecords(SourceReads):
    """The SIEM queue and its cursors (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock

    def siem_begin(self) -> bool:
        """Start the cursors at the current end of every source, unless they exist (forwarding was configured
        before: what was stored since is owed and read on). True when they were started now."""
        with self._lock, self._conn.transaction():
            conn = self._conn
            have = {str(r[0]) for r in conn.execute(f"SELECT name FROM {CURSORS}").fetchall()}
            missing = {name: cursor_at_end(conn, name) for name in SOURCES if name not in have}
            save_cursors(conn, CURSORS, missing)
        return bool(missing)

    def siem_cursors(self) -> dict[str, Cursor]:
        return self._read_cursors(CURSORS)

    def queue_siem(self, rows: Sequence[dict[str, Any]], cursors: dict[str, Cursor]) -> int:
        """Queue these messages in this order (a ``source`` already queued is ignored) and move the cursors, in one
        transaction; how many were queued."""
        return self._queue_and_move(
            "INSERT INTO siem_queue (source, kind, person, stored_at, queued_at, message) "
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            ([r["source"], r["kind"], r.get("person"), r["stored_at"], r["queued_at"], r["message"]] for r in rows),
            CURSORS, cursors)

    def siem_pending(self, after: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` queued messages with an id above ``after``, in queue order: ``(id, message)``."""
        with self._lock:
            return [(int(r[0]), str(r[1])) for r in self._conn.execute(
                "SELECT id, message FROM siem_queue WHERE id > ? ORDER BY id LIMIT ?", [after, limit]).fetchall()]

    def siem_confirm(self, through: int) -> int:
        """Delete every queued message up to id ``through`` (the collector has them); how many."""
        with self._lock, self._conn.transaction():
            return int(self._conn.execute("DELETE FROM siem_queue WHERE id <= ?", [through]).rowcount)

    def siem_depth(self) -> tuple[int, float | None]:
        """How many messages wait, and when the oldest of their records was stored (None when none waits)."""
        with self._lock:
            n, oldest = self._conn.execute("SELECT COUNT(*), MIN(stored_at) FROM siem_queue").fetchone()
        return int(n), (float(oldest) if oldest is not None else None)


__all__ = ["CURSORS", "SOURCES", "SiemRecords", "m024_siem"]
