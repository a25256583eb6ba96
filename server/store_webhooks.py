"""The store's webhook records: subscriptions, the durable delivery queue and the cursors that feed it
(migration ``023_webhooks``; the rules are server/webhooks.py's, docs/operations.md "Webhooks").

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself.

Why cursors and not an INSERT on the ingest path: the bus's store thread commits events in batches and must
never wait on anything else (DESIGN §9: integrations leave through a durable queue and never block a
decision). So the ingest path only wakes the webhook worker; the worker reads what was stored after its cursor
(events by rowid, alarms by rowid: server/store_cursors.py, shared with the SIEM export; escalations by time) and
queues the deliveries *and* moves the cursor in one transaction. A crash before that commit leaves the cursor where
it was and the same rows are read again; the unique ``(subscription, source)`` index makes queueing them a second
time a no-op. Nothing stored is missed and nothing is queued twice.

A delivery is *claimed* before it is sent (``leased`` 1, ``next_attempt_at`` moved past the lease) so no other
sender takes it meanwhile; the server, the only sender, releases every lease when it starts. Its body is kept
until it is delivered (then dropped: it names people) or, for a dead letter, until it is retried or pruned.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Sequence

import sqlite_utils

from server import sqldb
from server.store_cursors import Cursor, SourceReads, create_cursor_table, cursor_at_end, save_cursors

#: Delivery states: pending (waiting or retrying) -> delivered | dead (dead letter; an admin may retry it).
DELIVERY_STATES = ("pending", "delivered", "dead")
#: The cursors the worker keeps (``webhook_cursors.name``).
EVENTS_CURSOR, ALARMS_CURSOR, ESCALATIONS_CURSOR = "events", "alarms", "escalations"
#: The cursor table (a :data:`server.store_cursors.Cursor` per name).
CURSORS = "webhook_cursors"
_SUB_COLUMNS = ("id, name, url, event_types, doors, decision, include_names, enabled, created_by, created_at, "
                "updated_at, secret_rotated_at")
_DELIVERY_META = ("id, subscription, source, event_type, state, attempts, leased, next_attempt_at, created_at, "
                  "age_from, updated_at, delivered_at, last_error, last_status")


def m023_webhooks(db: sqlite_utils.Database) -> None:
    """``webhook_subscriptions`` (the secret is kept so the server can sign; event types and doors as JSON lists,
    an empty door list meaning every door), ``webhook_deliveries`` (the queue: ``source`` is what it is about, an
    event id or an alarm's raise or escalation, unique per subscription; ``payload`` the exact JSON body, NULL once
    delivered; ``age_from`` when its retry window started, reset by a manual retry) and ``webhook_cursors`` (how far
    the worker has read the events and alarms, with the id and time of the row it stopped at), started at the
    current end so history is never sent."""
    db["webhook_subscriptions"].create(
        {"id": str, "name": str, "url": str, "secret": str, "event_types": str, "doors": str, "decision": str,
         "include_names": int, "enabled": int, "created_by": str, "created_at": float, "updated_at": float,
         "secret_rotated_at": float},
        pk="id", not_null={"name", "url", "secret", "event_types", "doors", "include_names", "enabled", "created_by",
                           "created_at", "updated_at"})
    db["webhook_deliveries"].create(
        {"id": str, "subscription": str, "source": str, "event_type": str, "payload": str, "state": str,
         "attempts": int, "leased": int, "next_attempt_at": float, "created_at": float, "age_from": float,
         "updated_at": float, "delivered_at": float, "last_error": str, "last_status": int},
        pk="id", not_null={"subscription", "source", "event_type", "state", "attempts", "leased", "next_attempt_at",
                           "created_at", "age_from", "updated_at"}, defaults={"leased": 0})
    db["webhook_deliveries"].create_index(["subscription", "source"], unique=True)
    db["webhook_deliveries"].create_index(["state", "next_attempt_at"])
    create_cursor_table(db, CURSORS)
    save_cursors(db.conn, CURSORS, {name: cursor_at_end(db.conn, name) for name in (EVENTS_CURSOR, ALARMS_CURSOR)})
    last_escalation = db.execute("SELECT COALESCE(MAX(escalated_at), 0) FROM alarms").fetchone()[0]
    db["webhook_cursors"].insert({"name": ESCALATIONS_CURSOR, "value": last_escalation})


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


def _quoted(name: str) -> str:
    """A column name quoted the standard way, which both engines read (SQLite's ``[name]`` is not)."""
    return '"' + name.replace('"', '""') + '"'


def _subscription_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["event_types"] = json.loads(row["event_types"])
    out["doors"] = json.loads(row["doors"])
    out["include_names"] = bool(row["include_names"])
    out["enabled"] = bool(row["enabled"])
    return out


class WebhookRecords(SourceReads):
    """Webhook subscriptions, deliveries and cursors (a base of ``Store``); the worker reads events and alarms with
    :meth:`SourceReads.source_rows`."""

    _conn: sqldb.Connection
    _lock: threading.RLock

    # ------------------------------------------------------------ subscriptions

    def add_webhook(self, row: dict[str, Any]) -> None:
        """Insert a subscription (``event_types`` and ``doors`` as lists)."""
        values = {**row, "event_types": json.dumps(list(row["event_types"])), "doors": json.dumps(list(row["doors"])),
                  "include_names": int(bool(row["include_names"])), "enabled": int(bool(row["enabled"]))}
        with self._lock, self._conn.transaction():
            self._conn.execute(f"INSERT INTO webhook_subscriptions ({', '.join(_quoted(k) for k in values)}) "
                               f"VALUES ({_marks(values)})", list(values.values()))

    def update_webhook(self, webhook_id: str, changes: dict[str, Any]) -> bool:
        """Change a subscription's columns; False when there is no such subscription."""
        values = dict(changes)
        for key in ("event_types", "doors"):
            if key in values:
                values[key] = json.dumps(list(values[key]))
        for key in ("include_names", "enabled"):
            if key in values:
                values[key] = int(bool(values[key]))
        if not values:
            return self.webhook(webhook_id) is not None
        sets = ", ".join(f"{_quoted(k)} = ?" for k in values)
        with self._lock, self._conn.transaction():
            cur = self._conn.execute(f"UPDATE webhook_subscriptions SET {sets} WHERE id = ?",
                                     [*values.values(), webhook_id])
            return cur.rowcount == 1

    def webhook(self, webhook_id: str) -> dict[str, Any] | None:
        """One subscription without its secret."""
        with self._lock:
            rows = self._conn.query(f"SELECT {_SUB_COLUMNS} FROM webhook_subscriptions WHERE id = ?", [webhook_id])
        return _subscription_row(rows[0]) if rows else None

    def webhooks(self, *, enabled_only: bool = False) -> list[dict[str, Any]]:
        """Every subscription without its secret, oldest first."""
        where = " WHERE enabled = 1" if enabled_only else ""
        with self._lock:
            rows = self._conn.query(f"SELECT {_SUB_COLUMNS} FROM webhook_subscriptions{where} ORDER BY created_at, id")
        return [_subscription_row(r) for r in rows]

    def webhook_secrets(self, webhook_ids: Sequence[str]) -> dict[str, str]:
        """The signing secrets of these subscriptions (the sender's only reader of them)."""
        if not webhook_ids:
            return {}
        with self._lock:
            rows = self._conn.execute(f"SELECT id, secret FROM webhook_subscriptions WHERE id IN "
                                      f"({_marks(webhook_ids)})", list(webhook_ids)).fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def delete_webhook(self, webhook_id: str) -> int | None:
        """Delete a subscription and every delivery of it, in one transaction; how many deliveries went, or None
        when there is no such subscription."""
        with self._lock, self._conn.transaction():
            conn = self._conn
            if conn.execute("DELETE FROM webhook_subscriptions WHERE id = ?", [webhook_id]).rowcount != 1:
                return None
            return int(conn.execute("DELETE FROM webhook_deliveries WHERE subscription = ?", [webhook_id]).rowcount)

    # ------------------------------------------------------------ feeding the queue

    def webhook_cursors(self) -> dict[str, Cursor]:
        return self._read_cursors(CURSORS)

    def webhook_source_escalations(self, since: float, limit: int) -> list[dict[str, Any]]:
        """Alarms escalated at or after ``since``, oldest escalation first (``since`` itself is read again: an
        escalation at exactly that time may have come after the last read; queueing it again is a no-op)."""
        with self._lock:
            # On PostgreSQL ``*`` holds the rowid column too: the same name and value, kept once by the dict.
            return self._conn.query("SELECT rowid AS rowid, * FROM alarms WHERE escalated_at IS NOT NULL AND "
                                    "escalated_at >= ? ORDER BY escalated_at, rowid LIMIT ?", [since, limit])

    def queue_webhook_deliveries(self, rows: Sequence[dict[str, Any]], cursors: dict[str, Cursor]) -> int:
        """Queue these deliveries (each once per subscription and source: a repeat is ignored) and move the
        cursors, in one transaction; how many were queued."""
        return self._queue_and_move(
            "INSERT INTO webhook_deliveries (id, subscription, source, event_type, payload, state, attempts, "
            "leased, next_attempt_at, created_at, age_from, updated_at) "
            "VALUES (?, ?, ?, ?, ?, 'pending', 0, 0, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            ([r["id"], r["subscription"], r["source"], r["event_type"], r["payload"], r["created_at"], r["created_at"],
              r["created_at"], r["created_at"]] for r in rows), CURSORS, cursors)

    # ------------------------------------------------------------ sending

    def next_webhook_due(self) -> float | None:
        """When the earliest pending delivery of an enabled subscription is due, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT MIN(d.next_attempt_at) FROM webhook_deliveries d JOIN webhook_subscriptions s "
                "ON s.id = d.subscription WHERE d.state = 'pending' AND s.enabled = 1").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def claim_webhook_deliveries(self, now: float, lease_until: float, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` pending deliveries of enabled subscriptions due at ``now``, oldest first, each with its
        payload, leased until ``lease_until`` so no other round takes it meanwhile. Read and leased under the store's
        lock (the server is the only sender); a round with nothing due writes nothing."""
        names = ("id", "subscription", "source", "event_type", "payload", "attempts", "age_from", "created_at", "url")
        with self._lock:
            conn = self._conn
            rows = [dict(zip(names, r)) for r in conn.execute(
                "SELECT d.id, d.subscription, d.source, d.event_type, d.payload, d.attempts, d.age_from, "
                "d.created_at, s.url FROM webhook_deliveries d JOIN webhook_subscriptions s "
                "ON s.id = d.subscription WHERE d.state = 'pending' AND s.enabled = 1 AND d.next_attempt_at <= ? "
                "ORDER BY d.next_attempt_at, d.created_at LIMIT ?", [now, limit])]
            if rows:
                with conn.transaction():
                    conn.execute(f"UPDATE webhook_deliveries SET leased = 1, next_attempt_at = ? WHERE id IN "
                                 f"({_marks(rows)})", [lease_until, *(r["id"] for r in rows)])
        return rows

    def release_webhook_leases(self, now: float) -> int:
        """Make every claimed, unfinished delivery due at ``now`` (its sender is gone); how many."""
        with self._lock, self._conn.transaction():
            return int(self._conn.execute("UPDATE webhook_deliveries SET leased = 0, next_attempt_at = ? "
                                          "WHERE state = 'pending' AND leased = 1", [now]).rowcount)

    def record_webhook_outcomes(self, outcomes: Sequence[tuple[str, str, int, float, str | None, int | None]],
                                at: float) -> None:
        """A round's outcomes in one transaction: each ``(id, state, attempts, next_attempt_at, error, status)``.
        ``delivered``: the body (it names people) is dropped, the record stays; ``dead``: kept for an admin to see
        and retry; ``pending``: tried again at ``next_attempt_at``. A delivery deleted meanwhile (its subscription
        removed) is left alone."""
        with self._lock, self._conn.transaction():
            conn = self._conn
            for delivery_id, state, attempts, next_at, error, status in outcomes:
                if state == "delivered":
                    conn.execute("UPDATE webhook_deliveries SET state = 'delivered', payload = NULL, leased = 0, "
                                 "attempts = ?, delivered_at = ?, updated_at = ?, last_error = NULL, last_status = ? "
                                 "WHERE id = ? AND state = 'pending'", [attempts, at, at, status, delivery_id])
                else:
                    conn.execute("UPDATE webhook_deliveries SET state = ?, leased = 0, attempts = ?, "
                                 "next_attempt_at = ?, last_error = ?, last_status = ?, updated_at = ? "
                                 "WHERE id = ? AND state = 'pending'",
                                 [state, attempts, next_at, (error or "")[:500], status, at, delivery_id])

    def retry_webhook_deliveries(self, *, now: float, delivery_id: str | None = None,
                                 subscription: str | None = None) -> list[str]:
        """Dead letters back to pending, due now, with a fresh retry window (attempts from 0): one by id, or every
        dead letter of a subscription. The ids put back."""
        clauses, args = ["state = 'dead'"], []
        if delivery_id is not None:
            clauses.append("id = ?")
            args.append(delivery_id)
        if subscription is not None:
            clauses.append("subscription = ?")
            args.append(subscription)
        where = " AND ".join(clauses)
        with self._lock, self._conn.transaction():
            conn = self._conn
            ids = [str(r[0]) for r in conn.execute(f"SELECT id FROM webhook_deliveries WHERE {where}", args)]
            if ids:
                conn.execute(f"UPDATE webhook_deliveries SET state = 'pending', attempts = 0, leased = 0, "
                             f"next_attempt_at = ?, age_from = ?, updated_at = ? WHERE id IN ({_marks(ids)})",
                             [now, now, now, *ids])
        return ids

    # ------------------------------------------------------------ reading

    def webhook_deliveries(self, *, subscription: str | None = None, state: str | None = None,
                           limit: int = 100) -> list[dict[str, Any]]:
        """Deliveries without their bodies, newest first, filtered by subscription and state."""
        clauses, args = [], []
        for col, value in (("subscription", subscription), ("state", state)):
            if value is not None:
                clauses.append(f"{col} = ?")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            return self._conn.query(f"SELECT {_DELIVERY_META} FROM webhook_deliveries{where} "
                                    "ORDER BY updated_at DESC, rowid DESC LIMIT ?", [*args, limit])

    def webhook_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        """One delivery with its body (None once delivered)."""
        with self._lock:
            rows = self._conn.query(f"SELECT {_DELIVERY_META}, payload FROM webhook_deliveries WHERE id = ?",
                                    [delivery_id])
        return rows[0] if rows else None

    def webhook_delivery_counts(self, subscription: str | None = None) -> dict[str, int]:
        """How many deliveries are in each state (of one subscription, or of all)."""
        where, args = (" WHERE subscription = ?", [subscription]) if subscription is not None else ("", [])
        with self._lock:
            found = dict(self._conn.execute(f"SELECT state, COUNT(*) FROM webhook_deliveries{where} "
                                            "GROUP BY state", args).fetchall())
        return {s: int(found.get(s, 0)) for s in DELIVERY_STATES}

    def prune_webhook_deliveries(self, *, delivered_before: float, dead_before: float) -> int:
        """Delete records of deliveries delivered before ``delivered_before`` and dead letters that died before
        ``dead_before`` (their bodies name people); how many."""
        with self._lock, self._conn.transaction():
            return int(self._conn.execute(
                "DELETE FROM webhook_deliveries WHERE (state = 'delivered' AND delivered_at < ?) "
                "OR (state = 'dead' AND updated_at < ?)", [delivered_before, dead_before]).rowcount)
