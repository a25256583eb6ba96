"""CSV export of the live feed's filtered view (docs/desk.md "Live"): ``GET /api/v1/events.csv``.

Three properties matter more than the format:

- **Streamed.** The response is a generator that reads the store a keyset page at a time (the same query as
  the live view, server/web/live.py ``history``) and yields each page's lines; an export of a million rows
  holds one page in memory, never the whole result, and never holds the store's lock between pages.
- **Formula-safe.** A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and some also
  after a tab or carriage return) as a formula; names come from visitors and card readers, so every cell
  that starts with one of those gets a leading apostrophe (:func:`safe_cell`), the OWASP "CSV injection"
  advice.
- **Cheap per row.** A row is written straight from the store's tuple (``EventLog.rows_for_export``), not through the
  live view's model: names, door names, labels and kinds are looked up once per export, the site's UTC offset
  once per hour of events, and only the rare rows the shortcut cannot vouch for (a server event with a host in
  its detail, a time that is not plain UTC) go the live view's way (:func:`server.web.live.event_row`). The
  output is the same bytes either way (tests/unit/test_desk_export.py); 100,000 rows went from 6.7 s to about
  1 s (docs/performance.md "CSV export").
- **Audited.** Who exported which filter is recorded (``events.export``) before the first byte goes out;
  people named by the filter appear only as pseudonyms (docs/security.md "No names").
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from doorkeep import vocabulary
from doorkeep.model import PersonKind, Site
from server.audit import record_audit, subject_ref
from server.eventlog import EXPORT_COLUMNS, EventLog, event_kind, kind_types
from server.sessions import Principal
from server.web.access import require
from server.web.api import ERRORS
from server.web.live import API_PREFIX, EventFilter, EventRowOut, event_row, filter_query, person_label
from server.web.roles import ADMIN, DESK

#: Rows read from the store per query while streaming: small enough to keep memory flat, large enough that
#: the per-query cost is noise.
PAGE = 500
#: Characters a spreadsheet may read as the start of a formula (OWASP CSV injection).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: At most this many pseudonyms of matched people go into the audit record (the count always does).
AUDIT_PEOPLE_MAX = 50

COLUMNS = ("date", "time", "zone", "utc", "event", "kind", "type", "door", "person", "decision", "reason",
           "reason_code", "snapshot")


def safe_cell(value: object) -> str:
    """The cell as text, with a leading apostrophe when a spreadsheet would run it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def row_cells(row: EventRowOut) -> list[str]:
    """One exported line: what the live view shows, plus the UTC time and the raw reason code."""
    reason = row.reason_label or ""
    if row.type == "visitor_arrived":
        reason = f"host: {row.detail.get('host_name', '—')} notified"
    decision = row.decision or row.type.replace("_", " ")
    return [safe_cell(v) for v in (row.local_date, row.local_time, row.zone, row.ts, row.id, row.kind, row.type,
                                   row.door_name, row.person_name, decision, reason, row.reason or "",
                                   row.snapshot)]


def csv_lines(rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue()


#: The first characters :func:`safe_cell` neutralises, as a set for a per-cell test.
_FORMULA_FIRST = frozenset(FORMULA_START)
#: Distinct people (or cards) remembered at once while writing an export.
CACHE_MAX = 10_000
_ONE_HOUR = timedelta(hours=1) - timedelta(microseconds=1)


def _safe(text: str) -> str:
    """:func:`safe_cell` for a value already text (the per-row cells)."""
    return "'" + text if text[:1] in _FORMULA_FIRST else text


class _RowWriter:
    """Turns the store's event tuples into CSV cells for one export, exactly as :func:`row_cells` of
    :func:`server.web.live.event_row` would, with what repeats (a person's name and kind, a door's name, a
    reason's label, an hour's UTC offset and zone name, whether a visitor declined photos) worked out once."""

    def __init__(self, events: EventLog, site: Site) -> None:
        self.events = events
        self.site = site
        try:
            self.zone: ZoneInfo | None = ZoneInfo(site.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            self.zone = None  # every row then takes the live view's way (which shows the raw ts)
        self._people: dict[tuple[str | None, str | None], tuple[str, bool]] = {}
        self._doors: dict[str | None, str] = {}
        self._types: dict[str, tuple[str, str, str]] = {}
        self._reasons: dict[str | None, tuple[str, str]] = {}
        self._hour_key: datetime | None = None  # rows come newest first: one hour is remembered at a time
        self._hour_value: tuple[timedelta, str] | None = None
        self._declined: dict[str, bool] = {}

    def _person(self, person: str | None, last4: str | None) -> tuple[str, bool]:
        """The person's cell (made safe) and whether they are a visitor (whose photo choice decides the
        snapshot cell). Someone not of the site shows as their card, so the card is part of the key then."""
        key = (person, None) if person in self.site.people else (person, last4)
        cached = self._people.get(key)
        if cached is None:
            if len(self._people) >= CACHE_MAX:  # many cards of people no longer on the site: stay bounded
                self._people.clear()
            name, kind = person_label(self.site, person, last4)
            cached = self._people[key] = (_safe(name), kind == PersonKind.VISITOR.value)
        return cached

    def _door(self, door: str | None) -> str:
        got = self._doors.get(door)
        if got is None:
            found = self.site.doors.get(door) if door is not None else None
            got = self._doors[door] = _safe(found.name if found else (door or "security desk"))
        return got

    def _type(self, etype: str) -> tuple[str, str, str]:
        """The kind, the type and the decision shown when there is none, each made safe."""
        got = self._types.get(etype)
        if got is None:
            got = self._types[etype] = (_safe(event_kind(etype)), _safe(etype), _safe(etype.replace("_", " ")))
        return got

    def _reason(self, reason: str | None) -> tuple[str, str]:
        """The reason's label and its code, made safe."""
        got = self._reasons.get(reason)
        if got is None:
            got = self._reasons[reason] = (_safe(vocabulary.reason_label(reason) or ""), _safe(reason or ""))
        return got

    def _hour(self, hour: datetime) -> tuple[timedelta, str] | None:
        """The site's UTC offset and zone name through the hour starting at ``hour`` (naive UTC); None when
        they change inside it (a daylight-saving switch: those rows are converted one by one)."""
        if hour == self._hour_key:
            return self._hour_value
        assert self.zone is not None
        start = hour.replace(tzinfo=timezone.utc)
        first, last = start.astimezone(self.zone), (start + _ONE_HOUR).astimezone(self.zone)
        offset = first.utcoffset()
        got = None
        if offset is not None and offset == last.utcoffset() and first.tzname() == last.tzname():
            got = (offset, first.tzname() or "")
        self._hour_key, self._hour_value = hour, got
        return got

    def _declined_photos(self, person: str) -> bool:
        got = self._declined.get(person)
        if got is None:
            got = self._declined[person] = self.events.photo_declined(person)
        return got

    def _slow(self, row: tuple[Any, ...]) -> list[str]:
        """The live view's own way, for a row the shortcut does not cover."""
        return row_cells(event_row(dict(zip(EXPORT_COLUMNS, row)), self.site, self.events))

    def cells(self, row: tuple[Any, ...]) -> list[str]:
        cursor, eid, ts, door, etype, person, last4, decision, reason, snapshot, _detail, path = row
        if etype == "visitor_arrived" or self.zone is None or not isinstance(ts, str) or not ts.endswith("Z"):
            return self._slow(row)
        try:
            utc = datetime.fromisoformat(ts[:-1])
        except ValueError:
            return self._slow(row)
        if utc.tzinfo is not None or utc.year < 1000 or utc.year > 9998:
            return self._slow(row)
        hour = self._hour(utc.replace(minute=0, second=0, microsecond=0))
        if hour is None:
            return self._slow(row)
        local = utc + hour[0]
        name, visitor = self._person(person, last4)
        if not snapshot:
            snap = "none"
        elif visitor and self._declined_photos(person):
            snap = "withheld"
        else:
            snap = "ready" if path else "pending"
        kind, type_cell, no_decision = self._type(etype)
        label, code = self._reason(reason)
        return [f"{local.year:04d}-{local.month:02d}-{local.day:02d}",
                f"{local.hour:02d}:{local.minute:02d}:{local.second:02d}", _safe(hour[1]), _safe(ts), _safe(eid),
                kind, type_cell, self._door(door), name, _safe(decision) if decision else no_decision, label, code,
                snap]


def _store_filter(flt: EventFilter, site: Site) -> dict[str, Any] | None:
    """The store's arguments for the filter, as :func:`server.web.live.history` builds them; None when it
    matches nobody (a person filter naming no one)."""
    ids = flt.person_ids(site)
    if ids is not None and not ids:
        return None
    return {"door": flt.door or None, "decision": flt.decision or None,
            "people": sorted(ids) if ids is not None else None, "doors": flt.area_doors(site),
            "types": kind_types(flt.kinds) if flt.kinds is not None else None, "reason": flt.reason,
            "since": flt.since, "until": flt.until}


def export_rows(events: EventLog, site: Site, flt: EventFilter, page: int = PAGE) -> Iterator[str]:
    """The header, then the matching events newest first, a store page per chunk (a generator: nothing is
    read before the response asks for it, and at most ``page`` rows are held at once)."""
    yield csv_lines([list(COLUMNS)])
    args = _store_filter(flt, site)
    if args is None:
        return
    writer = _RowWriter(events, site)
    before: int | None = None
    while True:
        rows = events.rows_for_export(before=before, limit=page, **args)
        if rows:
            yield csv_lines(writer.cells(r) for r in rows)
        if len(rows) < page:
            return
        before = rows[-1][0]


def audit_details(flt: EventFilter, site: Site, key: bytes) -> dict[str, Any]:
    """The filter as the audit log keeps it: ids and codes as given, a typed person only as the pseudonyms of
    the people it matched (the text itself could be a name)."""
    details: dict[str, Any] = {k: v for k, v in (("door", flt.door), ("area", flt.area), ("decision", flt.decision),
                                                 ("reason", flt.reason), ("since", flt.since),
                                                 ("until", flt.until)) if v}
    details["kinds"] = sorted(flt.kinds) if flt.kinds is not None else "all"
    ids = flt.person_ids(site)
    if ids is not None:
        details["people"] = [subject_ref(key, pid) for pid in sorted(ids)[:AUDIT_PEOPLE_MAX]]
        details["people_matched"] = len(ids)
    return details


def install(app: FastAPI) -> None:
    """``GET /api/v1/events.csv``: the same filters as ``GET /api/v1/events``; admin and desk."""

    def export(request: Request, flt: EventFilter = Depends(filter_query),
               who: Principal = Depends(require(ADMIN, DESK))) -> StreamingResponse:
        desk = request.app.state.desk
        site = desk.server.site
        record_audit(desk.audit, who.name, "events.export", None,
                     audit_details(flt, site, desk.server.directory.key))
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(export_rows(desk.events, site, flt), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="events-{stamp}.csv"',
                                          "Cache-Control": "no-store"})

    app.add_api_route(API_PREFIX + "/events.csv", export, methods=["GET"], responses=ERRORS, tags=["desk"],
                      response_class=StreamingResponse,
                      summary="The filtered events as CSV, streamed, formula-safe; audited (events.export)")


__all__ = ["COLUMNS", "FORMULA_START", "export_rows", "install", "safe_cell"]
