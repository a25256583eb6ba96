"""The store's records for the alarm console: when an alarm escalated, and each operator's desk preferences
(migration ``015_alarm_desk``).

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself. The
rules (which alarm is due, what a preference may hold) stay with the callers (server/alarms.py,
server/web/alarm_desk.py).

It also tells the desk's alarm watch (server/alarm_watch.py) when an alarm row changed in a way the counter
shows (:meth:`AlarmDeskRecords.on_alarm_write`). Alarms are written from many places (supervision and the
intrusion service on ingest, the broker log, backups, operators, escalation), so rather than a call after each
of them, triggers call back after any write that raises, re-raises, acknowledges, resolves or escalates an
alarm, or deletes an open one; whoever adds a new writer is covered. Before this the watch woke on every stored
event and recounted the open alarms up to 50 times a second.

- SQLite: temporary triggers on the store's own connection call a Python function the connection registers,
  inside the writer's statement.
- PostgreSQL has neither temporary triggers on a stored table nor a Python function the server could call, so
  migration 015 (server/migrations_pg/015_alarm_desk.sql) adds the same three triggers, stored, each running
  ``pg_notify('doorkeep_alarm_changed', '')``; the store's connection ``LISTEN``s on that channel once a listener
  is registered, and psycopg hands the notification to a handler when the committing statement returns, on the
  writer's thread, the store's lock still held: no thread and no second connection. Differences, all harmless to a
  wake-up: it fires at the commit (not inside the transaction), never for a rolled-back write, once per
  transaction however many alarm rows it wrote (PostgreSQL folds equal notifications), and another process's
  alarm writes are seen too, at this connection's next statement (the watch's timer covers an idle one).

The methods run on both engines through the connection port (server/sqldb.py).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

import sqlite_utils

from server import sqldb

log = logging.getLogger("doorkeep.server.alarms")

#: The SQL function the triggers call (registered on the store's connection only).
_CHANGED_FN = "doorkeep_alarm_changed"
#: Temporary (per-connection, never stored) triggers: a new alarm, one raised again (``last_raised_at``),
#: acknowledged, resolved or escalated, an open one deleted. A condition clearing, or its detail refreshed,
#: changes nothing the counter shows and wakes nobody; neither does retention deleting resolved alarms.
_TRIGGERS = (
    f"CREATE TEMP TRIGGER IF NOT EXISTS alarm_watch_insert AFTER INSERT ON main.alarms "
    f"BEGIN SELECT {_CHANGED_FN}(); END",
    f"CREATE TEMP TRIGGER IF NOT EXISTS alarm_watch_update AFTER UPDATE OF last_raised_at, acknowledged_at, "
    f"resolved_at, escalated_at ON main.alarms BEGIN SELECT {_CHANGED_FN}(); END",
    f"CREATE TEMP TRIGGER IF NOT EXISTS alarm_watch_delete AFTER DELETE ON main.alarms "
    f"WHEN OLD.resolved_at IS NULL BEGIN SELECT {_CHANGED_FN}(); END",
)


def m015_alarm_desk(db: sqlite_utils.Database) -> None:
    """``alarms.escalated_at``: when an unacknowledged alarm passed its escalation time (docs/alarms.md);
    ``operator_prefs``: small per-operator settings the desk remembers (the alarm sound muted or not);
    ``alarms_open``: a partial index, so the counter's reads of the open alarms do not scan the resolved ones."""
    db.execute("ALTER TABLE alarms ADD COLUMN escalated_at FLOAT")
    # The counter reads the open alarms at every change (and every second): only those, never the history.
    db.execute("CREATE INDEX alarms_open ON alarms (last_raised_at) WHERE resolved_at IS NULL")
    db["operator_prefs"].create({"operator": str, "name": str, "value": str, "changed_at": float},
                                pk=("operator", "name"), not_null={"value", "changed_at"})


#: PostgreSQL: the channel migration 015's triggers notify on (named as SQLite's function).
NOTIFY_CHANNEL = _CHANGED_FN


def _tell(listeners: list[Callable[[], None]]) -> None:
    """The triggers' SQL function: an exception escaping it would fail the writer's statement, so none does."""
    for listener in list(listeners):
        try:
            listener()
        except Exception:
            log.exception("an alarm write listener failed")


class AlarmDeskRecords:
    """Escalation marks and operator preferences (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock
    _alarm_write_listeners: list[Callable[[], None]]

    def on_alarm_write(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (no arguments) after each alarm row written through this store that the desk's
        counter could show differently; see the module's docstring. It runs on the writer's thread, with the
        store's lock held (SQLite: inside the writer's transaction; PostgreSQL: as it commits): it must only note
        the change (set an event), never read or write the store or block. SQLite does not see writes by another
        process (the watch's timer does); PostgreSQL sees them at this connection's next statement."""
        with self._lock:
            listeners: list[Callable[[], None]] | None = getattr(self, "_alarm_write_listeners", None)
            if listeners is None:
                listeners = self._alarm_write_listeners = []
                conn: Any = self._conn
                if conn.dialect == sqldb.SQLITE:
                    conn.raw.create_function(_CHANGED_FN, 0, lambda: _tell(listeners))
                    for sql in _TRIGGERS:
                        conn.raw.execute(sql)
                else:
                    def notified(notify: Any) -> None:
                        if notify.channel == NOTIFY_CHANNEL:
                            _tell(listeners)

                    conn.raw.add_notify_handler(notified)
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            listeners.append(listener)

    def unacknowledged_alarms(self) -> list[dict[str, Any]]:
        """``id, type, raised_at, last_raised_at`` of open alarms nobody acknowledged and not yet escalated."""
        with self._lock:
            return self._conn.query(
                "SELECT id, type, raised_at, last_raised_at FROM alarms WHERE resolved_at IS NULL "
                "AND acknowledged_at IS NULL AND escalated_at IS NULL")

    def mark_escalated(self, alarm_id: str, at: float) -> bool:
        """Mark an alarm escalated; False when it was acknowledged, resolved or escalated in the meantime."""
        with self._lock, self._conn.transaction():
            cur = self._conn.execute(
                "UPDATE alarms SET escalated_at = ? WHERE id = ? AND resolved_at IS NULL "
                "AND acknowledged_at IS NULL AND escalated_at IS NULL", [at, alarm_id])
            return cur.rowcount == 1

    def operator_pref(self, operator: str, name: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM operator_prefs WHERE operator = ? AND name = ?",
                                     [operator, name]).fetchone()
        return None if row is None else str(row[0])

    def set_operator_pref(self, operator: str, name: str, value: str, at: float) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute("INSERT INTO operator_prefs (operator, name, value, changed_at) VALUES (?, ?, ?, ?) "
                               "ON CONFLICT (operator, name) DO UPDATE SET value = excluded.value, "
                               "changed_at = excluded.changed_at", [operator, name, value, at])
