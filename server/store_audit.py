"""The store's audit records: the hash-chained log, its retention anchor and the audited state of the site
files (tables of migration ``005_audit_and_retention``).

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself.
Writing a record and moving the anchor are each one ``BEGIN IMMEDIATE`` transaction here, so the chain's
end is read under SQLite's write lock and another process (``doorkeep retention run``) cannot append in
between. How a record's hash is computed and how the chain is verified stay in server/audit.py.

Runs on SQLite and PostgreSQL (through the connection port, server/sqldb.py): on PostgreSQL the same write
transactions first lock ``audit_log`` against other writers (``SHARE ROW EXCLUSIVE``: reads go on), which is what
``BEGIN IMMEDIATE`` gives on SQLite, so two processes never both append after the same end.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from server import sqldb

GENESIS = "0" * 64  # the hash "before" the first record (server/audit.py uses the same)
#: The most records one search returns (the desk pages through the rest with ``before_seq``).
AUDIT_SEARCH_MAX = 500


@dataclass(frozen=True)
class AuditRow:
    """One audit record as stored (``details`` still the canonical JSON text the hash covers)."""

    seq: int
    ts: str
    actor: str
    action: str
    target: str | None
    details: str
    hash: str


class AuditRecords:
    """The audit log's rows (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock

    def _begin_audit_write(self) -> None:
        """Open the write transaction that reads the chain's end (see the module docstring)."""
        self._conn.begin(immediate=True)
        if self._conn.dialect == sqldb.POSTGRESQL:
            self._conn.execute("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE")

    def append_audit(self, *, ts: str, actor: str, action: str, target: str | None, details: str,
                     digest: Callable[[int, str], str],
                     committed: Callable[[int, str], None] | None = None) -> tuple[int, str]:
        """Append one record at the chain's end; returns its ``(seq, hash)``.

        ``digest(seq, prev_hash)`` computes the record's hash once its place is known (read under the write
        lock); ``committed(seq, hash)`` runs after the commit, still under the store's lock, so the head file
        it writes follows the records in order."""
        conn = self._conn
        with self._lock:
            try:
                self._begin_audit_write()  # take the write lock before reading the chain's end
                prev_seq, prev_hash = self._audit_end()
                seq = prev_seq + 1
                record_hash = digest(seq, prev_hash)
                conn.execute("INSERT INTO audit_log (seq, ts, actor, action, target, details, prev_hash, hash) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             [seq, ts, actor, action, target, details, prev_hash, record_hash])
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            if committed is not None:
                committed(seq, record_hash)
        return seq, record_hash

    def _audit_end(self) -> tuple[int, str]:
        conn = self._conn
        row = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            row = conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
        return (int(row[0]), str(row[1])) if row else (0, GENESIS)

    def prune_audit_before(self, cutoff_ts: str, moved_at: str) -> int:
        """Remove the oldest records written before ``cutoff_ts``, moving the anchor onto the last one removed.

        Only a prefix goes (records up to the first one at or after the cut-off), so the rest still chains
        from the anchor. One transaction; returns how many records went."""
        conn = self._conn
        with self._lock:
            try:
                self._begin_audit_write()
                first_kept = conn.execute("SELECT MIN(seq) FROM audit_log WHERE ts >= ?", [cutoff_ts]).fetchone()[0]
                last = conn.execute("SELECT MAX(seq) FROM audit_log" + (" WHERE seq < ?" if first_kept else ""),
                                    [first_kept] if first_kept else []).fetchone()[0]
                removed = 0
                if last is not None:
                    digest = conn.execute("SELECT hash FROM audit_log WHERE seq = ?", [last]).fetchone()[0]
                    removed = conn.execute("SELECT COUNT(*) FROM audit_log WHERE seq <= ?", [last]).fetchone()[0]
                    if conn.execute("SELECT 1 FROM audit_anchor WHERE id = 1").fetchone():
                        conn.execute("UPDATE audit_anchor SET seq = ?, hash = ?, removed = removed + ?, moved_at = ? "
                                     "WHERE id = 1", [last, digest, removed, moved_at])
                    else:
                        conn.execute("INSERT INTO audit_anchor (id, seq, hash, removed, moved_at) "
                                     "VALUES (1, ?, ?, ?, ?)", [last, digest, removed, moved_at])
                    conn.execute("DELETE FROM audit_log WHERE seq <= ?", [last])
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return int(removed)

    def count_audit_before(self, cutoff_ts: str) -> int:
        """How many records :meth:`prune_audit_before` would remove (a dry run)."""
        with self._lock:
            conn = self._conn
            first_kept = conn.execute("SELECT MIN(seq) FROM audit_log WHERE ts >= ?", [cutoff_ts]).fetchone()[0]
            sql = "SELECT COUNT(*) FROM audit_log" + (" WHERE seq < ?" if first_kept else "")
            return int(conn.execute(sql, [first_kept] if first_kept else []).fetchone()[0])

    def audit_records(self, limit: int | None = None, *, before: int | None = None,
                      target: str | None = None) -> list[dict[str, Any]]:
        """Records as stored (``details`` still JSON text), newest first, all of them without ``limit``;
        only those with a smaller seq than ``before``, or about ``target``."""
        clauses, args = [], []
        if before is not None:
            clauses.append("seq < ?")
            args.append(before)
        if target is not None:
            clauses.append("target = ?")
            args.append(target)
        sql = ("SELECT * FROM audit_log" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
               + " ORDER BY seq DESC" + (" LIMIT ?" if limit is not None else ""))
        with self._lock:
            return self._conn.query(sql, [*args, *([limit] if limit is not None else [])])

    def audit_search(self, *, actor: str | tuple[str, ...] | None = None, action: str | None = None,
                     target: str | tuple[str, ...] | None = None, since_ts: str | None = None,
                     until_ts: str | None = None, before_seq: int | None = None,
                     limit: int = 50) -> list[AuditRow]:
        """Records matching every filter given, newest first, at most ``limit`` (bounded by
        :data:`AUDIT_SEARCH_MAX`). Read-only.

        ``actor`` / ``target``: one value or any of several, matched exactly. ``action``: exact, or every action
        under a prefix when it ends in ``.`` (``visitor.``). ``since_ts`` (inclusive) and ``until_ts``
        (exclusive) compare with the stored UTC ``ts`` text (the ``iso_ms`` form orders as time does).
        ``before_seq``: only older records than that one (paging)."""
        clauses: list[str] = []
        args: list[Any] = []
        for column, wanted in (("actor", actor), ("target", target)):
            if wanted is None:
                continue
            values = (wanted,) if isinstance(wanted, str) else tuple(wanted)
            if not values:
                return []
            clauses.append(f"{column} IN ({', '.join('?' * len(values))})")
            args.extend(values)
        if action is not None:
            if action.endswith("."):  # a prefix: compared as text, so no LIKE wildcard in it can widen it
                clauses.append("substr(action, 1, CAST(? AS INTEGER)) = ?")
                args.extend([len(action), action])
            else:
                clauses.append("action = ?")
                args.append(action)
        if since_ts is not None:
            clauses.append("ts >= ?")
            args.append(since_ts)
        if until_ts is not None:
            clauses.append("ts < ?")
            args.append(until_ts)
        if before_seq is not None:
            clauses.append("seq < ?")
            args.append(before_seq)
        bounded = max(1, min(int(limit), AUDIT_SEARCH_MAX))
        sql = ("SELECT seq, ts, actor, action, target, details, hash FROM audit_log"
               + (f" WHERE {' AND '.join(clauses)}" if clauses else "") + " ORDER BY seq DESC LIMIT ?")
        with self._lock:
            rows = self._conn.execute(sql, [*args, bounded]).fetchall()
        return [AuditRow(int(r[0]), str(r[1]), str(r[2]), str(r[3]), None if r[4] is None else str(r[4]), str(r[5]),
                         str(r[6])) for r in rows]

    def audit_chain(self) -> Iterator[tuple[Any, ...]]:
        """Every record as ``(seq, ts, actor, action, target, details, prev_hash, hash)``, oldest first.

        Holds the store's lock until exhausted or closed (a consistent walk): close it when done early."""
        with self._lock:
            cur = self._conn.execute(
                "SELECT seq, ts, actor, action, target, details, prev_hash, hash FROM audit_log ORDER BY seq")
            while batch := cur.fetchmany(1000):
                yield from batch

    def audit_anchor_and_hashes(self) -> tuple[tuple[int, str] | None, dict[str, int]]:
        """The retention anchor ``(seq, hash)`` (None before any pruning) and every record's hash → seq."""
        with self._lock:
            conn = self._conn
            anchor = conn.execute("SELECT seq, hash FROM audit_anchor WHERE id = 1").fetchone()
            hashes = {str(h): int(s) for s, h in conn.execute("SELECT seq, hash FROM audit_log")}
        return (int(anchor[0]), str(anchor[1])) if anchor else None, hashes

    def audit_state(self, name: str) -> str | None:
        """A value the audit keeps between runs (the digests of the site files as last audited)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM audit_state WHERE name = ?", [name]).fetchone()
        return str(row[0]) if row else None

    def set_audit_state(self, name: str, value: str) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute("INSERT INTO audit_state (name, value) VALUES (?, ?) "
                               "ON CONFLICT (name) DO UPDATE SET value = excluded.value", [name, value])
