"""Incidents on the desk (docs/desk.md "Incidents"): the list, a new incident opened from alarms or events, an
incident's page (timeline, notes, assignment, attachments, the events and snapshots it holds, close and
reopen) and its signed evidence bundle. The work and the audit records are the incident service's
(server/incidents.py, server/evidence.py); this module maps it to HTTP.

Roles: admin and desk open and work incidents and export bundles; an auditor may read the list and an
incident's page (without the snapshots). Viewing and exporting are audited (chain of custody).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, FastAPI, Form, HTTPException, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from server.incidents import MAX_NOTE, MAX_TITLE, SEVERITIES, IncidentError, IncidentNotFound, Incidents, IncidentView
from server.sessions import Principal
from server.web.access import require
from server.web.roles import ADMIN, AUDITOR, DESK
from server.web.routes import Routes

route = Routes(include_in_schema=False)
REF = r"^[A-Za-z0-9_.:-]{1,200}$"
#: How many of an incident's events its page lists (the bundle holds them all).
PAGE_EVENTS = 300
#: How many people the person picker lists before scripting narrows it from what is typed (picker.js).
PICKER_OPTIONS = 200
#: Messages after a form, by code (never text taken from the URL).
DONE = {"opened": "Incident opened. Viewing and exporting it are recorded in the audit log.",
        "note": "Note added.", "assigned": "Assignment changed.", "attached": "Attached.",
        "already": "That was already attached.", "detached": "Removed from the incident.",
        "closed": "Incident closed: what it held is no longer under legal hold.", "reopened": "Incident reopened."}


def install(app: FastAPI) -> None:
    desk = app.state.desk
    app.state.incidents = Incidents.for_server(desk.server, desk.operators)
    route.install(app)


def _service(request: Request) -> Incidents:
    service: Incidents = request.app.state.incidents
    return service


def _site(request: Request) -> Any:
    return request.app.state.desk.server.site


def _render(request: Request, template: str, who: Principal, status: int = 200, **context: Any) -> Response:
    from server.web.pages import render

    return render(request, template, who, status=status, tz=_site(request).timezone, **context)


def local_input(ts: float, tz: str) -> str:
    """An epoch time as a ``datetime-local`` input's value in the site's time zone."""
    return dt.datetime.fromtimestamp(ts, _zone(tz)).strftime("%Y-%m-%dT%H:%M")


def parse_local(text: str, tz: str, field: str) -> float:
    """A ``datetime-local`` value (site time) as epoch seconds; IncidentError naming the field when it is not one."""
    try:
        naive = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise IncidentError(f"the {field} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    if naive.tzinfo is not None:
        raise IncidentError(f"the {field} must be a site time, without a zone")
    try:
        at = naive.replace(tzinfo=_zone(tz)).timestamp()
    except (OverflowError, ValueError):
        raise IncidentError(f"the {field} is out of range") from None
    if not 0 <= at < 253_402_214_400:  # the store's ts text orders as time only from 1970 to 9999
        raise IncidentError(f"the {field} must be between 1970 and 9999")
    return at


def _zone(tz: str) -> dt.tzinfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return dt.timezone.utc


def _operators(request: Request) -> list[str]:
    return sorted(o.name for o in request.app.state.desk.operators.all() if o.active and o.role in (ADMIN, DESK))


# ------------------------------------------------------------------- list


@route("/incidents", "GET")
def list_page(request: Request, status: str = Query("open", pattern="^(open|closed|all)$"),
              before: int | None = Query(None, ge=1, le=2**53), who: Principal = Depends(require(ADMIN, DESK, AUDITOR))) -> Response:
    limit = 50
    rows = _service(request).list(status=None if status == "all" else status, limit=limit + 1, before=before)
    return _render(request, "incidents.html", who, incidents=rows[:limit], status_filter=status,
                   next_before=rows[limit - 1].id if len(rows) > limit else None,
                   can_work=who.role in (ADMIN, DESK))


# ------------------------------------------------------------------- new


def _new_context(request: Request, alarms: list[str], events: list[str]) -> dict[str, Any]:
    """What the new-incident form lists: the alarms and events it will hold, a suggested title and severity."""
    from server.web.alarms import alarm_name
    from server.web.live import stored_row

    desk = request.app.state.desk
    site = _site(request)
    alarm_rows = [a for a in (_alarm_get(request, i) for i in alarms) if a is not None]
    event_rows = [r for r in (stored_row(desk.events, site, i) for i in events) if r is not None]
    title, severity = "", "medium"
    if alarm_rows:
        first = alarm_rows[0]
        door = site.doors.get(first.door or "")
        title = f"{alarm_name(first.type)} at {door.name if door else first.door or first.device or 'the site'}"
        severity = {"high": "high", "medium": "medium", "low": "low"}.get(first.priority, "medium")
    elif event_rows:
        first_ev = event_rows[0]
        what = "Refused badge" if first_ev.decision == "denied" else first_ev.type.replace("_", " ").capitalize()
        title = f"{what} at {first_ev.door_name}"
    service = _service(request)
    held = sorted({i for a in alarm_rows for i in service.holding(alarm=a.id)}
                  | {i for e in event_rows for i in service.holding(event=e.id)})
    return {"alarm_rows": alarm_rows, "event_rows": event_rows, "title": title, "severity": severity, "held": held}


def _alarm_get(request: Request, alarm_id: str) -> Any:
    try:
        return request.app.state.desk.alarms.get(alarm_id)
    except LookupError:
        return None


@route("/incidents/new", "GET")
def new_page(request: Request, alarm: list[str] = Query([], max_length=50), event: list[str] = Query([], max_length=50),
             who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    alarms = [a for a in alarm if len(a) <= 200]
    events = [e for e in event if len(e) <= 128]
    ctx = _new_context(request, alarms, events)
    return _render(request, "incident_new.html", who, severities=SEVERITIES, operators=_operators(request),
                   assignee=who.name, note="", error=None, max_title=MAX_TITLE, max_note=MAX_NOTE, **ctx)


@route("/incidents", "POST")
def create(request: Request, title: str = Form("", max_length=MAX_TITLE + 50),
           severity: str = Form("medium", max_length=20), assignee: str = Form("", max_length=100),
           note: str = Form("", max_length=MAX_NOTE + 50), alarms: list[str] = Form([], max_length=50),
           events: list[str] = Form([], max_length=50), who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    try:
        incident = _service(request).open(title, severity, who.name, events=events, alarms=alarms,
                                          assignee=assignee or None, note=note)
    except IncidentError as exc:
        ctx = _new_context(request, alarms, events)
        ctx.update(title=title, severity=severity)
        return _render(request, "incident_new.html", who, status=422, severities=SEVERITIES,
                       operators=_operators(request), assignee=assignee, note=note, error=str(exc),
                       max_title=MAX_TITLE, max_note=MAX_NOTE, **ctx)
    return RedirectResponse(f"/incidents/{incident.id}?done=opened", status_code=303)


# ------------------------------------------------------------------- one incident


def _view(request: Request, incident_id: int, who: Principal) -> IncidentView:
    try:
        return _service(request).view(incident_id, who.name)
    except IncidentNotFound:
        raise HTTPException(404, f"there is no incident {incident_id}") from None


def _page(request: Request, who: Principal, incident_id: int, *, message: str | None = None,
          error: str | None = None, status: int = 200) -> Response:
    from server.web.alarms import alarm_name
    from server.web.live import event_row

    desk = request.app.state.desk
    site = _site(request)
    view = _view(request, incident_id, who)
    rows = [event_row({**e, "cursor": 0}, site, desk.events) for e in view.events[:PAGE_EVENTS]]
    now = desk.server.directory.clock.wall()
    doors = sorted(site.doors.values(), key=lambda d: d.name)
    people = sorted(site.people.values(), key=lambda p: p.name) if who.role in (ADMIN, DESK) else []
    return _render(request, "incident.html", who, status=status, view=view, inc=view.incident, rows=rows,
                   more_events=len(view.events) - len(rows), truncated=view.truncated, message=message, error=error,
                   can_work=who.role in (ADMIN, DESK), is_open=view.incident.status == "open",
                   operators=_operators(request), severities=SEVERITIES, doors=doors, people=people[:PICKER_OPTIONS],
                   more_people=len(people) > PICKER_OPTIONS,
                   door_names={d.id: d.name for d in doors},
                   people_names={i["ref"]: site.people[i["ref"]].name for i in view.items
                                 if i["kind"] == "person" and i["ref"] in site.people},
                   alarm_title=alarm_name, max_note=MAX_NOTE, fingerprint=_service(request).key_fingerprint,
                   window_from=local_input(now - 3600, site.timezone), window_to=local_input(now, site.timezone))


@route("/incidents/{incident_id}", "GET")
def incident_page(request: Request, incident_id: int = Path(ge=1, le=2**53),
                  done: str = Query("", max_length=20),
                  who: Principal = Depends(require(ADMIN, DESK, AUDITOR))) -> Response:
    return _page(request, who, incident_id, message=DONE.get(done))


def _act(request: Request, who: Principal, incident_id: int, done: str, action: Any) -> Response:
    """Run a change; back to the page with its message, or the page again (422) with the service's refusal."""
    try:
        changed = action()
    except IncidentNotFound:
        raise HTTPException(404, f"there is no incident {incident_id}") from None
    except IncidentError as exc:
        return _page(request, who, incident_id, error=str(exc), status=422)
    if done == "attached" and changed is False:
        done = "already"
    return RedirectResponse(f"/incidents/{incident_id}?done={done}", status_code=303)


@route("/incidents/{incident_id}/notes", "POST")
def add_note(request: Request, incident_id: int = Path(ge=1, le=2**53), note: str = Form("", max_length=MAX_NOTE + 50),
             who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    return _act(request, who, incident_id, "note", lambda: _service(request).add_note(incident_id, note, who.name))


@route("/incidents/{incident_id}/assign", "POST")
def assign(request: Request, incident_id: int = Path(ge=1, le=2**53), assignee: str = Form("", max_length=100),
           who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    return _act(request, who, incident_id, "assigned",
                lambda: _service(request).assign(incident_id, assignee or None, who.name))


@route("/incidents/{incident_id}/attach", "POST")
def attach(request: Request, incident_id: int = Path(ge=1, le=2**53),
           kind: str = Form(pattern="^(event|alarm|person|window)$"), ref: str = Form("", max_length=200),
           person: str = Form("", max_length=100), doors: list[str] = Form([], max_length=200),
           since: str = Form("", max_length=30), until: str = Form("", max_length=30),
           who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    service = _service(request)
    tz = _site(request).timezone

    def run() -> bool:
        if kind == "event":
            return service.attach_event(incident_id, ref.strip(), who.name)
        if kind == "alarm":
            return service.attach_alarm(incident_id, ref.strip(), who.name)
        start, end = parse_local(since, tz, "start"), parse_local(until, tz, "end")
        if kind == "person":
            return service.attach_person(incident_id, person, start, end, who.name)
        return service.attach_window(incident_id, doors, start, end, who.name)
    return _act(request, who, incident_id, "attached", run)


@route("/incidents/{incident_id}/items/{item_id}/detach", "POST")
def detach(request: Request, incident_id: int = Path(ge=1, le=2**53), item_id: int = Path(ge=1, le=2**53),
           who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    return _act(request, who, incident_id, "detached", lambda: _service(request).detach(incident_id, item_id, who.name))


@route("/incidents/{incident_id}/close", "POST")
def close(request: Request, incident_id: int = Path(ge=1, le=2**53), note: str = Form("", max_length=MAX_NOTE + 50),
          who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    return _act(request, who, incident_id, "closed", lambda: _service(request).close(incident_id, note, who.name))


@route("/incidents/{incident_id}/reopen", "POST")
def reopen(request: Request, incident_id: int = Path(ge=1, le=2**53),
           who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    return _act(request, who, incident_id, "reopened", lambda: _service(request).reopen(incident_id, who.name))


@route("/incidents/{incident_id}/evidence.zip", "GET")
def evidence(request: Request, incident_id: int = Path(ge=1, le=2**53),
             who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    """The signed bundle as a download (audited as ``incident.export``)."""
    try:
        name, data = _service(request).export(incident_id, who.name)
    except IncidentNotFound:
        raise HTTPException(404, f"there is no incident {incident_id}") from None
    except IncidentError as exc:
        return _page(request, who, incident_id, error=str(exc), status=409)
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


__all__ = ["install", "local_input", "parse_local"]
