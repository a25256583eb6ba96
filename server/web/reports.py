"""The Reports section (docs/desk.md "Reports"): a page per report with its filters, a chart and a table, and
the same data as CSV.

=====================================  =====================================================================
``GET /reports``                        the list of reports
``GET /reports/movements``              a person's badges over a period (a strip per day), ``?person=&from=&to=``
``GET /reports/activity``               a door's or area's grants and refusals per day or hour, ``?door=|area=&by=``
``GET /reports/refusals``               refusals by reason and by door, ``?door=|area=``
``GET /reports/traffic``                badges by hour of day and day of week (a heatmap), ``?decision=``
``GET /reports/occupancy``              an area's occupancy over one day, ``?area=&date=``
``GET /api/v1/reports/{report}.csv``    each report's rows as CSV: streamed, formula-safe, audited
=====================================  =====================================================================

Admin, desk and auditor may read reports (the auditor answers "who went where" after the fact); each CSV
download is audited (``reports.export``) as the live feed's export is, a person only as their pseudonym.
The queries and the time-zone bucketing are server/reports.py's; the chart shapes server/web/report_charts.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from doorkeep.model import Site
from server.audit import record_audit, subject_ref
from server.reports import (WEEKDAYS, Period, ReportError, Reports, area_doors, parse_day, period, site_zone)
from server.sessions import Principal
from server.web import report_charts as charts
from server.web.access import require
from server.web.api import ERRORS
from server.web.export import csv_lines, safe_cell
from server.web.roles import ADMIN, AUDITOR, DESK
from server.web.routes import Routes

API_PREFIX = "/api/v1"
#: Who may read reports (docs/desk.md "Reports"): every role; none of them changes anything.
READERS = (ADMIN, DESK, AUDITOR)
#: The reports, in the order the index lists them: key -> (title, what it answers).
REPORTS: dict[str, tuple[str, str]] = {
    "movements": ("A person's movements", "Every badge of one person over a period: doors, areas, decisions, "
                                          "times; a strip per day."),
    "activity": ("Door and area activity", "Grants and refusals at a door or an area's doors, per day or per hour."),
    "refusals": ("Refusals by reason and door", "Which reasons and doors refuse most: a misconfigured level, or "
                                                "someone trying cards."),
    "traffic": ("Traffic by hour and day", "Badges by hour of day and day of week, as a heatmap."),
    "occupancy": ("Occupancy over a day", "How many people an area held through one day, from its entries and "
                                          "exits."),
}
#: At most this many people are offered when a typed name matches several.
CANDIDATES = 20

route = Routes()


def install(app: FastAPI, reports: Reports) -> None:
    """The pages and CSV routes; ``reports`` (the service over the store) hangs on ``app.state.reports``."""
    app.state.reports = reports
    route.install(app)


def _service(request: Request) -> Reports:
    service: Reports = request.app.state.reports
    return service


# --------------------------------------------------------------------------- the query


@dataclass(frozen=True)
class Query:
    """A report's filters as the operator gave them (strings for the form) and as checked (for the queries)."""

    span: Period
    door: str = ""
    area: str = ""
    person: str = ""
    by: str = "day"
    decision: str = ""
    day: date | None = None

    def doors(self, site: Site) -> list[str] | None:
        """The doors the report counts: one door, an area's doors, or None (every door)."""
        if self.door:
            return [self.door]
        if self.area:
            return area_doors(site, self.area)
        return None

    def params(self) -> dict[str, str]:
        """The query as URL parameters (the CSV link carries the page's filters)."""
        out = {"from": self.span.first.isoformat(), "to": self.span.last.isoformat(), "door": self.door,
               "area": self.area, "person": self.person, "by": self.by if self.by != "day" else "",
               "decision": self.decision, "date": self.day.isoformat() if self.day else ""}
        return {k: v for k, v in out.items() if v}


def today(request: Request, site: Site) -> date:
    wall = request.app.state.desk.server.directory.clock.wall()
    return datetime.fromtimestamp(wall, site_zone(site)).date()


def read_query(request: Request, site: Site) -> Query:
    """The filters of the request (the page's form or the CSV link), checked; :class:`ReportError` names a bad
    one. Default period: the last seven days, today included."""
    q = request.query_params
    text = {k: (q.get(k) or "").strip()[:128] for k in ("from", "to", "door", "area", "person", "by", "decision",
                                                        "date")}
    now = today(request, site)
    last = parse_day("to", text["to"], now)
    first = parse_day("from", text["from"], last - timedelta(days=6))
    span = period(first, last, site_zone(site))
    if text["door"] and text["door"] not in site.doors:
        raise ReportError("door", f"no door {text['door']!r}: choose one of the list")
    if text["area"] and text["area"] not in site.areas:
        raise ReportError("area", f"no area {text['area']!r}: choose one of the list")
    if text["door"] and text["area"]:
        raise ReportError("area", "choose a door or an area, not both")
    if text["by"] not in ("", "day", "hour"):
        raise ReportError("by", "by is day or hour")
    if text["decision"] not in ("", "granted", "denied"):
        raise ReportError("decision", "decision is granted or denied")
    day = parse_day("date", text["date"], now)
    return Query(span, door=text["door"], area=text["area"], person=text["person"], by=text["by"] or "day",
                 decision=text["decision"], day=day)


def find_person(site: Site, text: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The person a typed id or name means, or None and the candidates ``(id, name)`` when it is not one.

    An id, or a name matched whole, wins; else a unique part of a name; several matches are offered."""
    if not text:
        return None, []
    if text in site.people:
        return text, []
    needle = text.casefold()
    whole = [pid for pid, p in site.people.items() if p.name.casefold() == needle]
    matches = whole or [pid for pid, p in site.people.items() if needle in p.name.casefold()]
    if len(matches) == 1:
        return matches[0], []
    found = sorted((site.people[pid].name, pid) for pid in matches)[:CANDIDATES]
    return None, [(pid, name) for name, pid in found]


# --------------------------------------------------------------------------- pages


def _page(request: Request, who: Principal, report: str, build: Callable[[Site, Query], dict[str, Any]]) -> Response:
    """One report page: the filters, then what ``build`` makes of them (or the error, status 422)."""
    from server.web.pages import render

    site = request.app.state.desk.server.site
    zone = site_zone(site)
    error = None
    context: dict[str, Any] = {}
    try:
        query = read_query(request, site)
        context = build(site, query)
    except ReportError as exc:
        error = str(exc)
        now = today(request, site)
        query = Query(period(now - timedelta(days=6), now, zone), day=now)
    params = query.params()
    return render(request, f"reports_{report}.html", who, status=422 if error else 200, error=error, q=query,
                  report=report, title=REPORTS[report][0], summary=REPORTS[report][1],
                  doors=sorted(site.doors.values(), key=lambda d: d.name),
                  areas=sorted(site.areas.values(), key=lambda a: a.name), timezone=zone.key,
                  csv_url=f"{API_PREFIX}/reports/{report}.csv?{urlencode(params)}",
                  picker=who.role in (ADMIN, DESK), form=dict(request.query_params), **context)


@route("/reports", "GET", include_in_schema=False)
def reports_index(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    from server.web.pages import render

    return render(request, "reports.html", who, reports=REPORTS)


@route("/reports/movements", "GET", include_in_schema=False)
def movements_page(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def build(site: Site, q: Query) -> dict[str, Any]:
        person, candidates = find_person(site, q.person)
        if person is None:
            if q.person and not candidates:
                raise ReportError("person", f"nobody matches {q.person!r}: type part of a name, or an id")
            return {"candidates": candidates, "badges": None}
        badges, more = _service(request).movements(site, person, q.span)
        days = [d.isoformat() for d in q.span.days]
        name = site.people[person].name
        return {"person_id": person, "person_name": name, "badges": badges, "more": more,
                "chart": charts.timeline("chart-movements", f"{name}'s badges, {days[0]} to {days[-1]}", days,
                                         badges)}
    return _page(request, who, "movements", build)


def _scope(site: Site, q: Query) -> str:
    if q.door:
        return site.doors[q.door].name
    if q.area:
        return f"{site.areas[q.area].name} (its doors)"
    return "Every door"


@route("/reports/activity", "GET", include_in_schema=False)
def activity_page(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def build(site: Site, q: Query) -> dict[str, Any]:
        buckets = _service(request).activity(site, q.doors(site), q.span, q.by)
        per = "hour" if q.by == "hour" else "day"
        return {"buckets": buckets, "scope": _scope(site, q),
                "chart": charts.bars("chart-activity", f"Grants and refusals per {per}: {_scope(site, q)}",
                                     buckets)}
    return _page(request, who, "activity", build)


@route("/reports/refusals", "GET", include_in_schema=False)
def refusals_page(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def build(site: Site, q: Query) -> dict[str, Any]:
        found = _service(request).refusals(site, q.doors(site), q.span)
        return {"refusals": found, "scope": _scope(site, q),
                "by_reason": charts.hbars("chart-reasons", "Refusals by reason",
                                          [(label, n) for _, label, n in found.by_reason]),
                "by_door": charts.hbars("chart-doors", "Refusals by door",
                                        [(name, n) for _, name, n in found.by_door])}
    return _page(request, who, "refusals", build)


@route("/reports/traffic", "GET", include_in_schema=False)
def traffic_page(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def build(site: Site, q: Query) -> dict[str, Any]:
        grid = _service(request).traffic(q.doors(site), q.span, q.decision or None)
        return {"grid": grid, "weekdays": WEEKDAYS, "scope": _scope(site, q),
                "chart": charts.heatmap("chart-traffic", f"Badges by hour and day of week: {_scope(site, q)}",
                                        grid)}
    return _page(request, who, "traffic", build)


@route("/reports/occupancy", "GET", include_in_schema=False)
def occupancy_page(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def build(site: Site, q: Query) -> dict[str, Any]:
        if not q.area:
            return {"occupancy": None}
        assert q.day is not None
        wall = request.app.state.desk.server.directory.clock.wall()
        occ = _service(request).occupancy(site, q.area, q.day, q.span.zone, now=wall)
        return {"occupancy": occ, "chart": charts.steps("chart-occupancy", f"People in {occ.area_name} on "
                                                                           f"{occ.day.isoformat()}", occ)}
    return _page(request, who, "occupancy", build)


# --------------------------------------------------------------------------- CSV


def _csv(rows: Iterable[Iterable[object]]) -> str:
    return csv_lines([safe_cell(v) for v in r] for r in rows)


def _stream(header: list[str], chunks: Iterable[Iterable[Iterable[object]]]) -> Iterator[str]:
    """The header, then each chunk's lines as it is read (a generator: a long export holds one chunk)."""
    yield _csv([header])
    for chunk in chunks:
        yield _csv(chunk)


def _audit_details(request: Request, site: Site, q: Query, report: str, person: str | None) -> dict[str, Any]:
    details: dict[str, Any] = {"report": report, "from": q.span.first.isoformat(), "to": q.span.last.isoformat()}
    details.update({k: v for k, v in (("door", q.door), ("area", q.area), ("by", q.by if report == "activity"
                                                                                  else ""),
                                      ("decision", q.decision)) if v})
    if report == "occupancy" and q.day:
        details = {"report": report, "area": q.area, "date": q.day.isoformat()}
    if person is not None:
        details["person"] = subject_ref(request.app.state.desk.server.directory.key, person)
    return details


def _export(request: Request, who: Principal, report: str,
            rows: Callable[[Site, Query], tuple[list[str], Iterable[Iterable[Iterable[object]]], str | None]]
            ) -> Response:
    """Check the filters, record who exported what (before the first byte), then stream the CSV."""
    desk = request.app.state.desk
    site = desk.server.site
    try:
        q = read_query(request, site)
        header, chunks, person = rows(site, q)
    except ReportError as exc:
        return JSONResponse({"error": str(exc), "detail": [{"loc": ["query", exc.param], "msg": str(exc)}]},
                            status_code=422)
    record_audit(desk.audit, who.name, "reports.export", None, _audit_details(request, site, q, report, person))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(_stream(header, chunks), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="{report}-{stamp}.csv"',
                                      "Cache-Control": "no-store"})


CSV_SUMMARY = "; formula-safe, streamed, audited (reports.export)"


@route(API_PREFIX + "/reports/movements.csv", "GET", responses=ERRORS, tags=["reports"],
       response_class=StreamingResponse, summary="A person's badges over a period as CSV" + CSV_SUMMARY)
def movements_csv(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def rows(site: Site, q: Query) -> tuple[list[str], Iterable[Iterable[Iterable[object]]], str | None]:
        person, candidates = find_person(site, q.person)
        if person is None:
            raise ReportError("person", "person names one person (an id, or a name only they have)"
                              + (f"; {len(candidates)} match" if candidates else ""))
        name = site.people[person].name
        pages = _service(request).all_movements(site, person, q.span)
        return (["date", "time", "zone", "utc", "event", "person", "door", "from_area", "to_area", "decision",
                 "reason", "reason_code"],
                ([[b.date, b.time, b.zone, b.ts, b.id, name, b.door_name, b.from_area, b.to_area, b.decision,
                   b.reason_label, b.reason] for b in page] for page in pages), person)
    return _export(request, who, "movements", rows)


@route(API_PREFIX + "/reports/activity.csv", "GET", responses=ERRORS, tags=["reports"],
       response_class=StreamingResponse, summary="Grants and refusals per day or hour as CSV" + CSV_SUMMARY)
def activity_csv(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def rows(site: Site, q: Query) -> tuple[list[str], Iterable[Iterable[Iterable[object]]], str | None]:
        buckets = _service(request).activity(site, q.doors(site), q.span, q.by)
        return (["period", "label", "granted", "refused", "total"],
                [[[b.key, b.label, b.granted, b.denied, b.total] for b in buckets]], None)
    return _export(request, who, "activity", rows)


@route(API_PREFIX + "/reports/refusals.csv", "GET", responses=ERRORS, tags=["reports"],
       response_class=StreamingResponse, summary="Refusals by door and reason as CSV" + CSV_SUMMARY)
def refusals_csv(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def rows(site: Site, q: Query) -> tuple[list[str], Iterable[Iterable[Iterable[object]]], str | None]:
        found = _service(request).refusals(site, q.doors(site), q.span)
        return (["door", "reason", "reason_code", "refusals"],
                [[[door, label, code, n] for door, code, label, n in found.rows]], None)
    return _export(request, who, "refusals", rows)


@route(API_PREFIX + "/reports/traffic.csv", "GET", responses=ERRORS, tags=["reports"],
       response_class=StreamingResponse, summary="Badges by day of week and hour of day as CSV" + CSV_SUMMARY)
def traffic_csv(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def rows(site: Site, q: Query) -> tuple[list[str], Iterable[Iterable[Iterable[object]]], str | None]:
        grid = _service(request).traffic(q.doors(site), q.span, q.decision or None)
        return (["day", *(f"{h:02d}" for h in range(24)), "total"],
                [[[WEEKDAYS[d], *counts, sum(counts)] for d, counts in enumerate(grid)]], None)
    return _export(request, who, "traffic", rows)


@route(API_PREFIX + "/reports/occupancy.csv", "GET", responses=ERRORS, tags=["reports"],
       response_class=StreamingResponse, summary="An area's occupancy changes over one day as CSV" + CSV_SUMMARY)
def occupancy_csv(request: Request, who: Principal = Depends(require(*READERS))) -> Response:
    def rows(site: Site, q: Query) -> tuple[list[str], Iterable[Iterable[Iterable[object]]], str | None]:
        if not q.area or q.day is None:
            raise ReportError("area", "area is required: the occupancy of which area?")
        occ = _service(request).occupancy(site, q.area, q.day, q.span.zone)
        first = [occ.start.strftime("%Y-%m-%d"), occ.start.strftime("%H:%M:%S"), occ.start.tzname() or "",
                 "", "", "start of day", occ.at_start]
        return (["date", "time", "zone", "person", "door", "change", "occupancy"],
                [[first, *([s.local.strftime("%Y-%m-%d"), s.local.strftime("%H:%M:%S"), s.local.tzname() or "",
                            s.person, s.door_name, "in" if s.entered else "out", s.count] for s in occ.steps)]],
                None)
    return _export(request, who, "occupancy", rows)


__all__ = ["READERS", "REPORTS", "Query", "find_person", "install", "read_query"]
