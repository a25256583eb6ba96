"""The store's records for incidents: the incident, its timeline and what is attached to it, and the legal
hold that keeps what an open incident holds out of retention (migration ``016_incidents``).

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself. The rules
(who may do what, what is audited, how a bundle is built) are the incident service's (server/incidents.py,
server/evidence.py).

Attachments are of four kinds: ``event`` and ``alarm`` (``ref`` is the id), and two stored *queries* resolved
when the incident is read or exported, so events stored later in the window are included: ``person`` (``ref``
the person id, between ``since`` and ``until``) and ``window`` (every event between ``since`` and ``until`` at
the doors of ``doors``, a JSON list; NULL: every door). ``since``/``until`` are the store's ``ts`` text (UTC).

Runs on SQLite and PostgreSQL (through the connection port, server/sqldb.py). Two things differ and are chosen by
the connection's dialect: the list of doors is read with SQLite's ``json_each`` and PostgreSQL's
``json_array_elements_text`` (:func:`json_values`), hence the legal-hold conditions come per engine
(:func:`held_event`, :func:`held_event_ids`; the constants are SQLite's, as before); and "the assignee changes" is
SQLite's ``IS NOT ?`` and PostgreSQL's ``IS DISTINCT FROM ?``. A new incident's id is read with ``RETURNING id``
on both (incidents have no rowid column on PostgreSQL).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Sequence

import sqlite_utils

from server import sqldb


def json_values(dialect: str, expr: str) -> str:
    """A subquery of the text values of the JSON list ``expr`` (a column or ``?``), one ``value`` per element:
    SQLite's ``json_each``, PostgreSQL's ``json_array_elements_text`` (the only SQLite-only function here)."""
    if dialect == sqldb.POSTGRESQL:
        return f"SELECT value FROM json_array_elements_text(CAST({expr} AS json))"
    return f"SELECT value FROM json_each({expr})"


#: The ids of the events an open incident holds: attached, raised an attached alarm, or in an attached person or
#: door-window query. Never NULL (``x NOT IN`` a set holding NULL is never true, and nothing would ever go). Not
#: correlated, so SQLite builds the set once per statement (each query item a range read of ``events(ts)``),
#: whatever the size of the table. Retention (server/store_privacy.py) never deletes such an event or its
#: snapshot (a snapshot's id is its event's): the legal hold.
_OPEN_ITEMS = "incident_items h JOIN incidents n ON n.id = h.incident AND n.status = 'open'"
def held_event_ids(dialect: str) -> str:
    """:data:`HELD_EVENT_IDS` for the store's engine (``sqlite`` or ``postgresql``)."""
    return (
        f"SELECT h.ref FROM {_OPEN_ITEMS} WHERE h.kind = 'event' AND h.ref IS NOT NULL "
        f"UNION SELECT a.source_event FROM {_OPEN_ITEMS} JOIN alarms a ON a.id = h.ref "
        "WHERE h.kind = 'alarm' AND a.source_event IS NOT NULL "
        f"UNION SELECT e.id FROM {_OPEN_ITEMS} JOIN events e ON e.ts >= h.since AND e.ts < h.until "
        "WHERE h.kind IN ('person', 'window') AND (h.kind = 'window' OR e.person = h.ref) "
        f"AND (h.doors IS NULL OR e.door IN ({json_values(dialect, 'h.doors')}))")


HELD_EVENT_IDS = held_event_ids(sqldb.SQLITE)
#: The same as a correlated condition on one row of ``events`` (written without an alias): cheaper than the set
#: when only a batch of rows is checked (retention's ``LIMIT 500`` reads), since it reads the open incidents' items
#: (few: through ``incidents(status)``) for each row instead of every event of every window.
def held_event(dialect: str) -> str:
    """:data:`HELD_EVENT` for the store's engine (``sqlite`` or ``postgresql``)."""
    return (
        "EXISTS (SELECT 1 FROM incidents n JOIN incident_items h ON h.incident = n.id WHERE n.status = 'open' AND ("
        "(h.kind = 'event' AND h.ref = events.id) "
        "OR (h.kind = 'alarm' AND EXISTS (SELECT 1 FROM alarms a WHERE a.id = h.ref AND a.source_event = events.id)) "
        "OR (h.kind IN ('person', 'window') AND events.ts >= h.since AND events.ts < h.until "
        "AND (h.kind = 'window' OR events.person = h.ref) "
        f"AND (h.doors IS NULL OR events.door IN ({json_values(dialect, 'h.doors')})))))")


HELD_EVENT = held_event(sqldb.SQLITE)
#: Alarm ids an open incident holds (retention keeps them even once resolved).
HELD_ALARMS = ("SELECT h.ref FROM incident_items h JOIN incidents n ON n.id = h.incident "
               "WHERE n.status = 'open' AND h.kind = 'alarm'")


def m016_incidents(db: sqlite_utils.Database) -> None:
    """``incidents``: one row per investigation (``status`` open or closed); ``incident_log``: its timeline,
    oldest first (``what``: opened, note, assigned, attached, detached, exported, closed, reopened; ``text`` a
    note or what changed, free text that stays here and never goes to the append-only audit log);
    ``incident_items``: what is attached (see the module docstring)."""
    db["incidents"].create({"id": int, "title": str, "severity": str, "status": str, "assignee": str,
                            "created_at": float, "created_by": str, "closed_at": float, "closed_by": str},
                           pk="id", not_null={"title", "severity", "status", "created_at", "created_by"})
    db["incidents"].create_index(["status", "created_at"])
    db["incident_log"].create({"id": int, "incident": int, "at": float, "actor": str, "what": str, "text": str},
                              pk="id", not_null={"incident", "at", "actor", "what"})
    db["incident_log"].create_index(["incident", "id"])
    db["incident_items"].create({"id": int, "incident": int, "kind": str, "ref": str, "since": str, "until": str,
                                 "doors": str, "added_by": str, "added_at": float}, pk="id",
                                not_null={"incident", "kind", "added_by", "added_at"})
    db["incident_items"].create_index(["incident"])
    # One row per attached event or alarm (the queries may repeat: two windows at different doors).
    db.execute("CREATE UNIQUE INDEX incident_items_ref ON incident_items (incident, kind, ref) "
               "WHERE kind IN ('event', 'alarm')")
    db["incident_items"].create_index(["kind", "ref"])


class IncidentRecords:
    """Incidents, their timeline and attachments (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock

    def create_incident(self, *, title: str, severity: str, actor: str, at: float, assignee: str | None,
                        items: Sequence[tuple[str, str]], note: str | None) -> int:
        """A new open incident with its first attachments (``(kind, ref)`` of events and alarms) and an optional
        first note, in one transaction; its id."""
        with self._lock, self._conn.transaction():
            (row,) = self._conn.execute(
                "INSERT INTO incidents (title, severity, status, assignee, created_at, created_by) "
                "VALUES (?, ?, 'open', ?, ?, ?) RETURNING id", [title, severity, assignee, at, actor]).fetchall()
            incident = int(row[0])
            self._log(incident, at, actor, "opened", None)
            for kind, ref in items:
                self._conn.execute("INSERT INTO incident_items (incident, kind, ref, added_by, added_at) "
                                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", [incident, kind, ref, actor, at])
            if note:
                self._log(incident, at, actor, "note", note)
            if assignee:
                self._log(incident, at, actor, "assigned", assignee)
            return incident

    def _log(self, incident: int, at: float, actor: str, what: str, text: str | None) -> None:
        self._conn.execute("INSERT INTO incident_log (incident, at, actor, what, text) VALUES (?, ?, ?, ?, ?)",
                           [incident, at, actor, what, text])

    def incident_row(self, incident: int) -> dict[str, Any] | None:
        with self._lock:
            rows = self._conn.query("SELECT * FROM incidents WHERE id = ?", [incident])
        return rows[0] if rows else None

    def incident_rows(self, *, status: str | None = None, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        """Incidents newest first (``before``: only ids below it, for paging), optionally of one status."""
        clauses, args = [], []
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        if before is not None:
            clauses.append("id < ?")
            args.append(before)
        sql = ("SELECT * FROM incidents" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
               + " ORDER BY id DESC LIMIT ?")
        with self._lock:
            return self._conn.query(sql, [*args, limit])

    def incident_log_rows(self, incident: int) -> list[dict[str, Any]]:
        with self._lock:
            return self._conn.query(
                "SELECT at, actor, what, text FROM incident_log WHERE incident = ? ORDER BY id", [incident])

    def incident_items(self, incident: int) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r, doors=json.loads(r["doors"]) if r["doors"] else None) for r in self._conn.query(
                "SELECT id, kind, ref, since, until, doors, added_by, added_at FROM incident_items "
                "WHERE incident = ? ORDER BY id", [incident])]

    def add_incident_item(self, incident: int, *, kind: str, ref: str | None, since: str | None, until: str | None,
                          doors: Sequence[str] | None, actor: str, at: float, text: str) -> bool:
        """Attach one item and log it; False when that event or alarm was already attached."""
        with self._lock, self._conn.transaction():
            cur = self._conn.execute(
                "INSERT INTO incident_items (incident, kind, ref, since, until, doors, added_by, added_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [incident, kind, ref, since, until, json.dumps(list(doors)) if doors else None, actor, at])
            if cur.rowcount == 1:
                self._log(incident, at, actor, "attached", text)
            return cur.rowcount == 1

    def remove_incident_item(self, incident: int, item: int, *, actor: str, at: float, text: str) -> bool:
        with self._lock, self._conn.transaction():
            cur = self._conn.execute("DELETE FROM incident_items WHERE incident = ? AND id = ?", [incident, item])
            if cur.rowcount == 1:
                self._log(incident, at, actor, "detached", text)
            return cur.rowcount == 1

    def add_incident_log(self, incident: int, *, what: str, actor: str, at: float, text: str | None) -> None:
        with self._lock, self._conn.transaction():
            self._log(incident, at, actor, what, text)

    def set_incident_assignee(self, incident: int, assignee: str | None, *, actor: str, at: float) -> bool:
        with self._lock, self._conn.transaction():
            differs = "IS NOT" if self._conn.dialect == sqldb.SQLITE else "IS DISTINCT FROM"  # NULL-safe !=
            cur = self._conn.execute(f"UPDATE incidents SET assignee = ? WHERE id = ? AND assignee {differs} ?",
                                     [assignee, incident, assignee])
            if cur.rowcount == 1:
                self._log(incident, at, actor, "assigned", assignee or "nobody")
            return cur.rowcount == 1

    def set_incident_status(self, incident: int, status: str, *, actor: str, at: float, note: str | None) -> bool:
        """Close (``closed``) or reopen (``open``) with an optional note; False when it already was."""
        closing = status == "closed"
        with self._lock, self._conn.transaction():
            cur = self._conn.execute(
                "UPDATE incidents SET status = ?, closed_at = ?, closed_by = ? WHERE id = ? AND status != ?",
                [status, at if closing else None, actor if closing else None, incident, status])
            if cur.rowcount == 1:
                self._log(incident, at, actor, "closed" if closing else "reopened", note or None)
            return cur.rowcount == 1

    def incident_events(self, incident: int, limit: int) -> list[dict[str, Any]]:
        """The stored events an incident holds (attached, raised an attached alarm, or in an attached query),
        oldest first, at most ``limit`` (ask one more to know it was cut), with the snapshot's file name when it
        is stored (``snapshot_path``). One indexed query per attachment, never a scan of the whole table."""
        base = "SELECT e.*, s.path AS snapshot_path FROM events e LEFT JOIN snapshots s ON s.id = e.snapshot WHERE "
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for item in self._conn.execute("SELECT kind, ref, since, until, doors FROM incident_items "
                                           "WHERE incident = ? ORDER BY id", [incident]).fetchall():
                kind, ref, since, until, doors = item
                if kind == "event":
                    sql, args = base + "e.id = ?", [ref]
                elif kind == "alarm":
                    sql, args = base + "e.id = (SELECT source_event FROM alarms WHERE id = ?)", [ref]
                else:
                    sql, args = base + "e.ts >= ? AND e.ts < ?", [since, until]
                    if kind == "person":
                        sql, args = sql + " AND e.person = ?", [*args, ref]
                    if doors:
                        sql, args = sql + f" AND e.door IN ({json_values(self._conn.dialect, '?')})", [*args, doors]
                    sql, args = sql + " ORDER BY e.ts LIMIT ?", [*args, limit]
                for row in self._conn.query(sql, args):
                    row.pop("rowid", None)  # PostgreSQL's explicit rowid column, part of e.* there
                    found.setdefault(str(row["id"]), row)
                if len(found) >= limit:
                    break
        return sorted(found.values(), key=lambda r: (r["ts"], r["id"]))[:limit]

    def incidents_holding(self, *, event: str | None = None, alarm: str | None = None) -> list[int]:
        """Open and closed incidents that have this event or alarm attached (the event and alarm pages link them)."""
        kind, ref = ("event", event) if event is not None else ("alarm", alarm)
        with self._lock:
            return [int(r[0]) for r in self._conn.execute(
                "SELECT incident FROM incident_items WHERE kind = ? AND ref = ? ORDER BY incident", [kind, ref])]

    def count_events_kept_for_incidents(self, cutoff_ts: str) -> int:
        """Events older than ``cutoff_ts`` that an open incident holds (retention's report)."""
        with self._lock:
            held = held_event_ids(self._conn.dialect)
            return int(self._conn.execute(f"SELECT COUNT(*) FROM events WHERE ts < ? AND id IN ({held})",
                                          [cutoff_ts]).fetchone()[0])
