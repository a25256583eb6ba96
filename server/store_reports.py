"""The store's report queries (docs/desk.md "Reports"): a person's badges over a period, badge counts by door,
decision and quarter hour, refusals by door and reason, and the passages an area's occupancy is replayed from.

Part of :class:`server.store.Store` (a base class of it); every method takes the store's lock itself and reads
only. The meaning (time zones, names, what occupancy is) is server/reports.py's: here, stored ``ts`` text (UTC,
ISO 8601 with milliseconds) and ids in, rows out.

Every query names the index it walks, because the store has no ANALYZE statistics and SQLite would otherwise
guess: one person reads ``events(person, ts)`` (migration 014); a time range reads ``events(ts)``; doors read
``events(door)`` when they hold fewer rows than the range does (a quiet door over a long period), decided by
two bounded, index-only counts (:meth:`ReportRecords._doors_are_narrower`). Counts are grouped in SQL (a
week of a busy site is a few hundred groups, never its rows); a person's badges are paged on ``(ts, rowid)``.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Sequence

import sqlite_utils

#: The bounded counts that choose between the door and time indexes stop here: beyond it both are "large"
#: and the time range (bounded by the report's period) is read.
STEER_CAP = 50_000
#: Group of a stored ts: its UTC hour and quarter (0-3). Every zone's offset is a whole number of quarter
#: hours, so a quarter-hour group falls inside exactly one local hour, whatever the zone.
_QUARTER = "substr(e.ts, 1, 13), CAST(substr(e.ts, 15, 2) AS INTEGER) / 15"


class ReportRecords:
    """Read-only report queries over ``events`` (a base of ``Store``)."""

    _db: sqlite_utils.Database
    _lock: threading.RLock

    def _doors_are_narrower(self, doors: Sequence[str], since: str, until: str) -> bool:
        """True when the doors hold fewer stored events than the time range (then ``events(door)`` is read).

        Both counts are index-only and bounded: the range's at :data:`STEER_CAP`, the doors' at the range's,
        so choosing costs at most a small fraction of the query it chooses for."""
        marks = ", ".join("?" for _ in doors)
        in_range = self._db.execute(
            "SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY idx_events_ts WHERE ts >= ? AND ts < ? LIMIT ?)",
            [since, until, STEER_CAP]).fetchone()[0]
        at_doors = self._db.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY events_door WHERE door IN ({marks}) LIMIT ?)",
            [*doors, in_range + 1]).fetchone()[0]
        return bool(at_doors < in_range)

    def _where(self, doors: Sequence[str] | None, since: str, until: str) -> tuple[str, list[Any]]:
        """The range and door clauses, steered onto one index (a ``+`` keeps SQLite off the other)."""
        if doors is None:
            return "e.ts >= ? AND e.ts < ?", [since, until]
        marks = ", ".join("?" for _ in doors)
        if self._doors_are_narrower(doors, since, until):
            return f"e.door IN ({marks}) AND +e.ts >= ? AND +e.ts < ?", [*doors, since, until]
        return f"e.ts >= ? AND e.ts < ? AND +e.door IN ({marks})", [since, until, *doors]

    def badge_counts(self, since: str, until: str, doors: Sequence[str] | None = None
                     ) -> list[tuple[str, int, str, int]]:
        """Badges (``access`` events) with ``since <= ts < until``, at ``doors`` (None: all), counted per
        ``(UTC hour 'YYYY-MM-DDTHH', quarter 0-3, decision)``: a quarter of the site's doors is ~100 groups
        a day, never one per row or per door."""
        if doors is not None and not doors:
            return []
        with self._lock:
            where, args = self._where(doors, since, until)
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                f"SELECT {_QUARTER}, coalesce(e.decision, ''), count(*) FROM events e "
                f"WHERE {where} AND +e.type = 'access' GROUP BY 1, 2, 3", args).fetchall()]

    def refusal_counts(self, since: str, until: str, doors: Sequence[str] | None = None
                       ) -> list[tuple[str, str, int]]:
        """Refused badges with ``since <= ts < until`` at ``doors`` (None: all): ``(door, reason, count)``."""
        if doors is not None and not doors:
            return []
        with self._lock:
            where, args = self._where(doors, since, until)
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                f"SELECT e.door, coalesce(e.reason, ''), count(*) FROM events e WHERE {where} "
                "AND +e.type = 'access' AND +e.decision = 'denied' GROUP BY 1, 2", args).fetchall()]

    def person_badges(self, person: str, since: str, until: str, *, after: tuple[str, int] | None = None,
                      limit: int = 500) -> list[dict[str, Any]]:
        """One person's badges with ``since <= ts < until``, oldest first, each with its ``cursor`` (rowid);
        ``after``: only those after this ``(ts, cursor)`` (the next page). Reads ``events(person, ts)``, whose
        entries are already in ``(ts, rowid)`` order: no sort, and page 100 costs what page 1 does."""
        clauses = ["e.person = ?", "e.ts >= ?", "e.ts < ?", "+e.type = 'access'"]
        args: list[Any] = [person, since, until]
        if after is not None:
            clauses.append("(e.ts, e.rowid) > (?, ?)")
            args.extend(after)
        with self._lock:
            return list(self._db.query(
                "SELECT e.rowid AS cursor, e.id, e.ts, e.door, e.decision, e.reason, e.person FROM events e "
                f"INDEXED BY events_person_ts WHERE {' AND '.join(clauses)} ORDER BY e.ts, e.rowid LIMIT ?",
                [*args, limit]))

    def last_passages(self, people: Sequence[str], before: str) -> dict[str, str]:
        """person -> the door of their last granted badge before ``before`` (people without one are left out).

        One statement, one backward seek on ``events(person, ts)`` per person: what presence was at that
        moment, without reading the store's history."""
        if not people:
            return {}
        with self._lock:
            rows = self._db.execute(
                "SELECT j.value, (SELECT e.door FROM events e INDEXED BY events_person_ts WHERE e.person = j.value "
                "AND e.ts < ? AND +e.type = 'access' AND +e.decision = 'granted' ORDER BY e.ts DESC LIMIT 1) "
                "FROM json_each(?) j", [before, json.dumps(list(people))]).fetchall()
        return {person: door for person, door in rows if door is not None}

    def passages(self, since: str, until: str) -> list[tuple[str, str, str]]:
        """Granted badges with ``since <= ts < until`` in time order: ``(ts, person, door)`` (``events(ts)``)."""
        with self._lock:
            return [tuple(r) for r in self._db.execute(  # type: ignore[misc]
                "SELECT e.ts, e.person, e.door FROM events e INDEXED BY idx_events_ts WHERE e.ts >= ? AND e.ts < ? "
                "AND +e.type = 'access' AND +e.decision = 'granted' AND e.person IS NOT NULL "
                "ORDER BY e.ts, e.rowid", [since, until]).fetchall()]

    def visitor_checkouts(self, before: float) -> list[tuple[float, str]]:
        """``(checked_out_at, visitor id)`` of the visits checked out before ``before`` (epoch seconds), oldest
        first: a check-out ends the visitor's presence (server/directory.py), so occupancy replays it too."""
        with self._lock:
            return [(float(at), str(vid)) for at, vid in self._db.execute(
                "SELECT checked_out_at, id FROM visitors WHERE checked_out_at IS NOT NULL AND checked_out_at < ? "
                "ORDER BY checked_out_at", [before]).fetchall()]
