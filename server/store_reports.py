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

Badge counts over a period (the traffic heatmap, activity by day or hour) read ``events_badge_quarters``
(migration ``021_report_index``): the badges alone, keyed by the very groups the counts are made of (UTC hour,
quarter, decision, door), so the count reads index entries in group order, no table row and no sort. On
1,000,000 events in 91 days that took a 91-day heatmap from 0.5-0.7 s to 0.16-0.26 s; a covering index on
``(ts, decision)`` saved only 8 % (the time went into grouping, not reading). It costs one more index entry per
stored badge (within the noise of an insert bench) and ~1.6 s per million events when the migration builds it
(docs/performance.md "Reports").

Runs on SQLite and PostgreSQL (through the connection port, server/sqldb.py). The steering above is SQLite's alone:
``INDEXED BY`` and the unary ``+`` that keeps SQLite off an index are not PostgreSQL (which has no ``+`` for text
at all), and PostgreSQL's planner has the statistics SQLite lacks (autovacuum analyses). So on PostgreSQL the
queries are the same without those hints (:meth:`ReportRecords._by`, :meth:`ReportRecords._plus`), the doors and
time counts are not made, and a period on quarter hours is always counted on ``events_badge_quarters`` (the same
expressions, so its planner can match the index). A list of people is read with SQLite's ``json_each`` and
PostgreSQL's ``json_array_elements_text``. Rows come out the same; the order of the grouped counts, which no caller
relies on, is each engine's.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Sequence

import sqlite_utils

from server import sqldb

#: The bounded counts that choose between the door and time indexes stop here: beyond it both are "large"
#: and the time range (bounded by the report's period) is read.
STEER_CAP = 50_000
#: Group of a stored ts: its UTC hour and quarter (0-3). Every zone's offset is a whole number of quarter
#: hours, so a quarter-hour group falls inside exactly one local hour, whatever the zone.
_QUARTER = "substr(e.ts, 1, 13), CAST(substr(e.ts, 15, 2) AS INTEGER) / 15"
#: The same group as the index of migration 021 spells it (a query must use the same expressions to read it).
_HOUR_X = "substr(ts, 1, 13)"
_QUARTER_X = "CAST(substr(ts, 15, 2) AS INTEGER) / 15"
#: A stored ts on a quarter-hour boundary: a period's ends (local midnights) are, in every zone.
_QUARTER_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:(00|15|30|45):00\.000Z$")


def m021_report_index(db: sqlite_utils.Database) -> None:
    """``events_badge_quarters``: badges (``type = 'access'`` only: a partial index) by UTC hour, quarter,
    decision and door, the groups :meth:`ReportRecords.badge_counts` counts, in that order."""
    db.execute(f"CREATE INDEX IF NOT EXISTS events_badge_quarters ON events ({_HOUR_X}, {_QUARTER_X}, decision, "
               "door) WHERE type = 'access'")


def _quarter_bounds(since: str, until: str) -> tuple[str, int, str, int] | None:
    """``(since hour, since quarter, until hour, until quarter)`` when both ends fall on quarter hours (then
    "in the period" is "in one of its quarter-hour groups"); None otherwise."""
    if not (_QUARTER_TS.match(since) and _QUARTER_TS.match(until)):
        return None
    return since[:13], int(since[14:16]) // 15, until[:13], int(until[14:16]) // 15


class ReportRecords:
    """Read-only report queries over ``events`` (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock

    def _by(self, index: str) -> str:
        """`` INDEXED BY index`` on SQLite (no statistics: the query names its index); nothing on PostgreSQL."""
        return f" INDEXED BY {index}" if self._conn.dialect == sqldb.SQLITE else ""

    @property
    def _plus(self) -> str:
        """SQLite's unary ``+`` that keeps a column's index out of the plan; nothing on PostgreSQL."""
        return "+" if self._conn.dialect == sqldb.SQLITE else ""

    def _doors_are_narrower(self, doors: Sequence[str], since: str, until: str) -> bool:
        """True when the doors hold fewer stored events than the time range (then ``events(door)`` is read).

        Both counts are index-only and bounded: the range's at :data:`STEER_CAP`, the doors' at the range's,
        so choosing costs at most a small fraction of the query it chooses for."""
        if self._conn.dialect != sqldb.SQLITE:
            return False  # nothing to steer: PostgreSQL plans with statistics
        marks = ", ".join("?" for _ in doors)
        in_range = self._conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY idx_events_ts WHERE ts >= ? AND ts < ? LIMIT ?)",
            [since, until, STEER_CAP]).fetchone()[0]
        at_doors = self._conn.execute(
            f"SELECT count(*) FROM (SELECT 1 FROM events INDEXED BY events_door WHERE door IN ({marks}) LIMIT ?)",
            [*doors, in_range + 1]).fetchone()[0]
        return bool(at_doors < in_range)

    def _where(self, doors: Sequence[str] | None, since: str, until: str) -> tuple[str, list[Any]]:
        """The range and door clauses, steered onto one index (a ``+`` keeps SQLite off the other)."""
        if doors is None:
            return "e.ts >= ? AND e.ts < ?", [since, until]
        marks, p = ", ".join("?" for _ in doors), self._plus
        if self._doors_are_narrower(doors, since, until):
            return f"e.door IN ({marks}) AND {p}e.ts >= ? AND {p}e.ts < ?", [*doors, since, until]
        return f"e.ts >= ? AND e.ts < ? AND {p}e.door IN ({marks})", [since, until, *doors]

    def badge_counts(self, since: str, until: str, doors: Sequence[str] | None = None
                     ) -> list[tuple[str, int, str, int]]:
        """Badges (``access`` events) with ``since <= ts < until``, at ``doors`` (None: all), counted per
        ``(UTC hour 'YYYY-MM-DDTHH', quarter 0-3, decision)``: a quarter of the site's doors is ~100 groups
        a day, never one per row or per door."""
        if doors is not None and not doors:
            return []
        bounds = _quarter_bounds(since, until)
        with self._lock:
            if bounds is not None and (doors is None or not self._doors_are_narrower(doors, since, until)):
                return self._badge_counts_by_quarter(bounds, doors)
            where, args = self._where(doors, since, until)
            return [tuple(r) for r in self._conn.execute(  # type: ignore[misc]
                f"SELECT {_QUARTER}, coalesce(e.decision, ''), count(*) FROM events e "
                f"WHERE {where} AND {self._plus}e.type = 'access' GROUP BY 1, 2, 3", args).fetchall()]

    def _badge_counts_by_quarter(self, bounds: tuple[str, int, str, int], doors: Sequence[str] | None
                                 ) -> list[tuple[str, int, str, int]]:
        """:meth:`badge_counts` read from ``events_badge_quarters`` alone: a range on its first column (the
        hours), the edge quarters and the doors checked on its entries, counted in its order."""
        since_h, since_q, until_h, until_q = bounds
        clauses = ["type = 'access'", f"{_HOUR_X} >= ?", f"{_HOUR_X} <= ?", f"({_HOUR_X} > ? OR {_QUARTER_X} >= ?)",
                   f"({_HOUR_X} < ? OR {_QUARTER_X} < ?)"]
        args: list[Any] = [since_h, until_h, since_h, since_q, until_h, until_q]
        if doors is not None:
            clauses.append(f"door IN ({', '.join('?' for _ in doors)})")
            args.extend(doors)
        counts: dict[tuple[str, int, str], int] = {}
        for hour, quarter, decision, n in self._conn.execute(
                f"SELECT {_HOUR_X}, {_QUARTER_X}, decision, count(*) FROM events{self._by('events_badge_quarters')} "
                f"WHERE {' AND '.join(clauses)} GROUP BY {_HOUR_X}, {_QUARTER_X}, decision", args):
            key = (hour, quarter, decision or "")  # no decision and an empty one are one group, as before
            counts[key] = counts.get(key, 0) + n
        return [(*key, n) for key, n in counts.items()]

    def refusal_counts(self, since: str, until: str, doors: Sequence[str] | None = None
                       ) -> list[tuple[str, str, int]]:
        """Refused badges with ``since <= ts < until`` at ``doors`` (None: all): ``(door, reason, count)``."""
        if doors is not None and not doors:
            return []
        with self._lock:
            where, args = self._where(doors, since, until)
            p = self._plus
            return [tuple(r) for r in self._conn.execute(  # type: ignore[misc]
                f"SELECT e.door, coalesce(e.reason, ''), count(*) FROM events e WHERE {where} "
                f"AND {p}e.type = 'access' AND {p}e.decision = 'denied' GROUP BY 1, 2", args).fetchall()]

    def person_badges(self, person: str, since: str, until: str, *, after: tuple[str, int] | None = None,
                      limit: int = 500) -> list[dict[str, Any]]:
        """One person's badges with ``since <= ts < until``, oldest first, each with its ``cursor`` (rowid);
        ``after``: only those after this ``(ts, cursor)`` (the next page). Reads ``events(person, ts)``, whose
        entries are already in ``(ts, rowid)`` order: no sort, and page 100 costs what page 1 does."""
        clauses = ["e.person = ?", "e.ts >= ?", "e.ts < ?", f"{self._plus}e.type = 'access'"]
        args: list[Any] = [person, since, until]
        if after is not None:
            clauses.append("(e.ts, e.rowid) > (?, ?)")
            args.extend(after)
        with self._lock:
            return self._conn.query(
                "SELECT e.rowid AS cursor, e.id, e.ts, e.door, e.decision, e.reason, e.person FROM events e"
                f"{self._by('events_person_ts')} WHERE {' AND '.join(clauses)} ORDER BY e.ts, e.rowid LIMIT ?",
                [*args, limit])

    def last_passages(self, people: Sequence[str], before: str) -> dict[str, str]:
        """person -> the door of their last granted badge before ``before`` (people without one are left out).

        One statement, one backward seek on ``events(person, ts)`` per person: what presence was at that
        moment, without reading the store's history."""
        if not people:
            return {}
        p = self._plus
        people_list = ("json_each(?)" if self._conn.dialect == sqldb.SQLITE
                       else "json_array_elements_text(CAST(? AS json))")
        with self._lock:
            rows = self._conn.execute(
                f"SELECT j.value, (SELECT e.door FROM events e{self._by('events_person_ts')} WHERE e.person = j.value "
                f"AND e.ts < ? AND {p}e.type = 'access' AND {p}e.decision = 'granted' ORDER BY e.ts DESC LIMIT 1) "
                f"FROM {people_list} j", [before, json.dumps(list(people))]).fetchall()
        return {person: door for person, door in rows if door is not None}

    def passages(self, since: str, until: str) -> list[tuple[str, str, str]]:
        """Granted badges with ``since <= ts < until`` in time order: ``(ts, person, door)`` (``events(ts)``)."""
        with self._lock:
            p = self._plus
            return [tuple(r) for r in self._conn.execute(  # type: ignore[misc]
                f"SELECT e.ts, e.person, e.door FROM events e{self._by('idx_events_ts')} WHERE e.ts >= ? AND e.ts < ? "
                f"AND {p}e.type = 'access' AND {p}e.decision = 'granted' AND e.person IS NOT NULL "
                "ORDER BY e.ts, e.rowid", [since, until]).fetchall()]

    def visitor_checkouts(self, before: float) -> list[tuple[float, str]]:
        """``(checked_out_at, visitor id)`` of the visits checked out before ``before`` (epoch seconds), oldest
        first: a check-out ends the visitor's presence (server/directory.py), so occupancy replays it too."""
        with self._lock:
            return [(float(at), str(vid)) for at, vid in self._conn.execute(
                "SELECT checked_out_at, id FROM visitors WHERE checked_out_at IS NOT NULL AND checked_out_at < ? "
                "ORDER BY checked_out_at", [before]).fetchall()]
