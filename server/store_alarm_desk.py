"""The store's records for the alarm console: when an alarm escalated, and each operator's desk preferences
(migration ``015_alarm_desk``).

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself. The
rules (which alarm is due, what a preference may hold) stay with the callers (server/alarms.py,
server/web/alarm_desk.py).
"""

from __future__ import annotations

import threading
from typing import Any

import sqlite_utils


def m015_alarm_desk(db: sqlite_utils.Database) -> None:
    """``alarms.escalated_at``: when an unacknowledged alarm passed its escalation time (docs/alarms.md);
    ``operator_prefs``: small per-operator settings the desk remembers (the alarm sound muted or not);
    ``alarms_open``: a partial index, so the counter's reads of the open alarms do not scan the resolved ones."""
    db.execute("ALTER TABLE alarms ADD COLUMN escalated_at FLOAT")
    # The counter reads the open alarms at every change (and every second): only those, never the history.
    db.execute("CREATE INDEX alarms_open ON alarms (last_raised_at) WHERE resolved_at IS NULL")
    db["operator_prefs"].create({"operator": str, "name": str, "value": str, "changed_at": float},
                                pk=("operator", "name"), not_null={"value", "changed_at"})


class AlarmDeskRecords:
    """Escalation marks and operator preferences (a base of ``Store``)."""

    _db: sqlite_utils.Database
    _lock: threading.RLock

    def unacknowledged_alarms(self) -> list[dict[str, Any]]:
        """``id, type, raised_at, last_raised_at`` of open alarms nobody acknowledged and not yet escalated."""
        with self._lock:
            return [dict(r) for r in self._db.query(
                "SELECT id, type, raised_at, last_raised_at FROM alarms WHERE resolved_at IS NULL "
                "AND acknowledged_at IS NULL AND escalated_at IS NULL")]

    def mark_escalated(self, alarm_id: str, at: float) -> bool:
        """Mark an alarm escalated; False when it was acknowledged, resolved or escalated in the meantime."""
        with self._lock, self._db.conn:
            cur = self._db.conn.execute(
                "UPDATE alarms SET escalated_at = ? WHERE id = ? AND resolved_at IS NULL "
                "AND acknowledged_at IS NULL AND escalated_at IS NULL", [at, alarm_id])
            return cur.rowcount == 1

    def operator_pref(self, operator: str, name: str) -> str | None:
        with self._lock:
            row = self._db.conn.execute("SELECT value FROM operator_prefs WHERE operator = ? AND name = ?",
                                        [operator, name]).fetchone()
        return None if row is None else str(row[0])

    def set_operator_pref(self, operator: str, name: str, value: str, at: float) -> None:
        with self._lock, self._db.conn:
            self._db["operator_prefs"].upsert({"operator": operator, "name": name, "value": value,
                                               "changed_at": at}, pk=("operator", "name"))
