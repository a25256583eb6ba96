"""CSV export of the live feed's filtered view (docs/desk.md "Live"): ``GET /api/v1/events.csv``.

Three properties matter more than the format:

- **Streamed.** The response is a generator that reads the store a keyset page at a time (the same query as
  the live view, server/web/live.py ``history``) and yields each page's lines; an export of a million rows
  holds one page in memory, never the whole result, and never holds the store's lock between pages.
- **Formula-safe.** A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (and some also
  after a tab or carriage return) as a formula; names come from visitors and card readers, so every cell
  that starts with one of those gets a leading apostrophe (:func:`safe_cell`), the OWASP "CSV injection"
  advice.
- **Audited.** Who exported which filter is recorded (``events.export``) before the first byte goes out;
  people named by the filter appear only as pseudonyms (docs/security.md "No names").
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import StreamingResponse

from doorkeep.model import Site
from server.audit import record_audit, subject_ref
from server.eventlog import EventLog
from server.sessions import Principal
from server.web.access import require
from server.web.api import ERRORS
from server.web.live import API_PREFIX, EventFilter, EventRowOut, filter_query, history
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


def export_rows(events: EventLog, site: Site, flt: EventFilter, page: int = PAGE) -> Iterator[str]:
    """The header, then the matching events newest first, a store page per chunk (a generator: nothing is
    read before the response asks for it, and at most ``page`` rows are held at once)."""
    yield csv_lines([list(COLUMNS)])
    before: int | None = None
    while True:
        rows, more = history(events, site, flt, before=before, limit=page)
        if rows:
            yield csv_lines(row_cells(r) for r in rows)
        if not more or not rows:
            return
        before = rows[-1].cursor


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
