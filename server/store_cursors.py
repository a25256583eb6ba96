"""Cursors over the store's records: read what was stored after a point, in the order it was stored.

What the durable outbound queues are fed from (webhooks: server/store_webhooks.py; the SIEM export:
server/store_siem.py). Their workers read the store after a cursor instead of being handed each record on the ingest
path, because the bus's store thread commits events in batches and must never wait on anything else (DESIGN §9:
integrations leave through a durable queue and never block a decision). A worker queues what it read *and* moves
its cursor in one transaction, so a crash in between reads the same rows again and nothing stored is missed.

Runs on SQLite and PostgreSQL (through the connection port, server/sqldb.py): ``events`` and ``alarms`` have a
``rowid`` column on PostgreSQL (an identity), and the audit log is read by its ``seq`` on both engines (its rowid on
SQLite, where ``seq`` is the ``INTEGER PRIMARY KEY``; PostgreSQL gives it no rowid column).

A cursor is ``(value, ref, at)``: the rowid read up to, and the id and stored time of the row at that rowid. SQLite
hands the rowid of a deleted newest row to the next row stored (no AUTOINCREMENT on these tables), so when
retention deleted the row a cursor stopped at, ``ref`` no longer matches and :meth:`SourceReads._resume` counts every
row stored no later than ``at`` as read. The audit log needs none of that: its ``seq`` (its rowid) continues from
the retention anchor and is never given out twice.

Part of :class:`server.store.Store` (a base class of the record mixins that keep cursors): every method takes the
store's lock itself; the module functions run inside a caller's transaction (a migration, a queueing).
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any, Iterable, Mapping, Sequence

import sqlite_utils

from server import sqldb

#: How far a worker read a source: a rowid (for escalations a time), and the id and stored time of the row there.
Cursor = tuple[float, "str | None", "float | None"]
#: The tables a cursor may read, with the column naming a row and the column saying when it was stored; None for a
#: table whose rowids are never reused.
SOURCES: Mapping[str, tuple[str, str] | None] = {"events": ("id", "received_at"), "alarms": ("id", "raised_at"),
                                                 "audit_log": None}
#: The column giving a source's arrival order: its rowid, and for the audit log ``seq`` (the same number on SQLite).
_ORDER = {"events": "rowid", "alarms": "rowid", "audit_log": "seq"}


def create_cursor_table(db: sqlite_utils.Database, table: str) -> None:
    """A table of named cursors (``name``, ``value``, ``ref``, ``at``), for a migration."""
    db[table].create({"name": str, "value": float, "ref": str, "at": float}, pk="name", not_null={"value"})


def cursor_at_end(conn: sqlite3.Connection | sqldb.Connection, source: str) -> Cursor:
    """A cursor past every row ``source`` holds now: what a queue starts from so that history is never sent.
    ``conn``: sqlite3's (a SQLite migration) or the port's."""
    kept, order = _columns(source), _ORDER[source]
    if kept is None:
        return float(conn.execute(f"SELECT COALESCE(MAX({order}), 0) FROM {source}").fetchone()[0]), None, None
    top = conn.execute(f"SELECT {order}, {kept[0]}, {kept[1]} FROM {source} ORDER BY {order} DESC LIMIT 1").fetchone()
    return (float(top[0]), top[1], top[2]) if top else (0.0, None, None)


def save_cursors(conn: sqlite3.Connection | sqldb.Connection, table: str, cursors: Mapping[str, Cursor]) -> None:
    """Write these cursors into ``table`` (inside the caller's transaction, beside what was queued)."""
    for name, (value, ref, at) in cursors.items():
        conn.execute(f"INSERT INTO {table} (name, value, ref, at) VALUES (?, ?, ?, ?) ON CONFLICT(name) "
                     "DO UPDATE SET value = excluded.value, ref = excluded.ref, at = excluded.at", [name, value, ref, at])


def _columns(source: str) -> tuple[str, str] | None:
    if source not in SOURCES:
        raise ValueError(f"no cursor source {source!r} (one of {', '.join(SOURCES)})")
    return SOURCES[source]


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


class SourceReads:
    """Reading ``events``, ``alarms`` and ``audit_log`` after a cursor (a base of the record mixins that keep one)."""

    _conn: sqldb.Connection
    _lock: threading.RLock

    def _read_cursors(self, table: str) -> dict[str, Cursor]:
        with self._lock:
            return {str(r[0]): (float(r[1]), r[2], r[3]) for r in
                    self._conn.execute(f"SELECT name, value, ref, at FROM {table}").fetchall()}

    def _queue_and_move(self, insert: str, values: Iterable[Sequence[Any]], table: str,
                        cursors: Mapping[str, Cursor]) -> int:
        """Run ``insert`` (an ``INSERT ... ON CONFLICT DO NOTHING`` into a queue whose unique key makes a repeat a
        no-op) for each of ``values`` and move these cursors of ``table``, in one transaction: the step that makes a
        queue fed from cursors miss nothing and hold nothing twice. How many rows were new."""
        with self._lock, self._conn.transaction():
            conn = self._conn
            queued = sum(conn.execute(insert, list(v)).rowcount for v in values)
            save_cursors(conn, table, cursors)
            return queued

    def _resume(self, source: str, cursor: Cursor) -> int:
        """Where to read on after ``cursor`` in ``source``. Normally its rowid; but when the row it stopped at is gone
        (retention deleted the newest rows) SQLite hands that rowid, and those after it, to the next rows stored:
        then every row stored no later than that row counts as read, and what came since is read."""
        value, ref, at = int(cursor[0]), cursor[1], cursor[2]
        kept = _columns(source)
        if value <= 0 or ref is None or kept is None:
            return value
        row = self._conn.execute(f"SELECT {kept[0]} FROM {source} WHERE rowid = ?", [value]).fetchone()
        if row is not None and row[0] == ref:
            return value
        return int(self._conn.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {source} WHERE {kept[1]} <= ?",
                                      [at if at is not None else float("-inf")]).fetchone()[0])

    def source_rows(self, source: str, cursor: Cursor, limit: int,
                    types: Sequence[str] | None = None) -> tuple[list[dict[str, Any]], Cursor]:
        """Rows of ``source`` stored after ``cursor``, in the order they were stored (``rowid`` included), of these
        ``types`` only when given (an empty list: no rows, the cursor moves to the end); at most ``limit``; and the
        cursor after that read. One lock for both: a row committed meanwhile is neither skipped nor read twice."""
        kept = _columns(source)
        order = _ORDER[source]
        with self._lock:
            after = self._resume(source, cursor)
            top = int(self._conn.execute(f"SELECT COALESCE(MAX({order}), 0) FROM {source}").fetchone()[0])
            rows: list[dict[str, Any]] = []
            if types is None or types:
                kinds = f" AND type IN ({_marks(types)})" if types else ""
                # On PostgreSQL ``*`` holds the rowid column too: the same name and value, kept once by the dict.
                rows = self._conn.query(
                    f"SELECT {order} AS rowid, * FROM {source} WHERE {order} > ? AND {order} <= ?{kinds} "
                    f"ORDER BY {order} LIMIT ?", [after, top, *(types or ()), limit])
            reached = max(int(rows[-1]["rowid"]) if len(rows) >= limit else top, after)
            if reached == int(cursor[0]):
                return rows, cursor  # nothing new, nothing deleted: the cursor stays as it is
            if kept is None:
                return rows, (float(reached), None, None)
            ref = self._conn.execute(f"SELECT {kept[0]}, {kept[1]} FROM {source} WHERE rowid = ?",
                                     [reached]).fetchone()
        return rows, (float(reached), ref[0] if ref else None, ref[1] if ref else None)


__all__ = ["SOURCES", "Cursor", "SourceReads", "create_cursor_table", "cursor_at_end", "save_cursors"]
