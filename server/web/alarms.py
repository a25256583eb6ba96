"""The desk's alarms over HTTP: what is active, what cleared but nobody has closed yet, and what was resolved.

An alarm stays on the desk until an operator resolves it with a note, even after its condition ended
(docs/alarms.md). Acknowledging and resolving, and their audit records, are the alarm service's
(server/alarms.py); this module is its routes, the API models and the alarm titles the pages show.

Roles: admin and desk. An auditor reads what operators did with alarms in the audit log instead.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, FastAPI, Form, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from doorkeep import vocabulary
from server.alarms import MAX_NOTE, Alarm, AlarmError, AlarmFilter, AlarmNotFound, Alarms
from server.sessions import Principal
from server.web.access import require
from server.web.roles import ADMIN, DESK
from server.web.routes import Routes

API_PREFIX = "/api/v1"
ALARM_ID = r"^[A-Za-z0-9_.:-]{1,200}$"
#: How many resolved alarms the history shows.
HISTORY = 50
#: Human names of the alarm types, as doorkeep/vocabulary.py declares them (docs/alarms.md).
TYPE_NAMES: dict[str, str] = {a.name: a.label for a in vocabulary.ALARMS.values()}


route = Routes()


def install(app: FastAPI) -> None:
    install_filters(app.state.desk.templates)
    route.install(app)


def install_filters(templates: Jinja2Templates) -> None:
    """Template filters the desk-admin pages share (alarms, doors, muster, people)."""
    templates.env.filters["localtime"] = local_time
    templates.env.filters["alarm_name"] = alarm_name
    templates.env.filters["reason_label"] = vocabulary.reason_label


def local_time(ts: float | None, tz: str = "UTC") -> str:
    """An epoch time as the site's wall clock reads it ("2026-11-28 09:15:02"); "—" for none."""
    if ts is None:
        return "—"
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):  # the site's timezone was checked at load: only a broken tzdata
        zone = ZoneInfo("UTC")
    return dt.datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M:%S")


def alarm_name(alarm_type: str) -> str:
    """The desk's title for an alarm type; a type no longer declared (an old row) is spelled out from its id."""
    return vocabulary.alarm_label(alarm_type)


class AlarmOut(BaseModel):
    id: str
    type: str
    title: str = Field(description="the type in words")
    severity: str = Field(description="alarm, trouble, warning or info")
    state: str = Field(description="active, cleared (condition over, not yet resolved) or resolved")
    device: str | None
    door: str | None
    door_name: str | None
    subject: str | None = Field(default=None, description="what an alarm at no door is about: a card's last "
                                "digits (card_probing) or a network address (certificate_refused)")
    raised_at: float
    last_raised_at: float
    occurrences: int
    cleared_at: float | None
    acknowledged_at: float | None
    acknowledged_by: str | None
    resolved_at: float | None
    resolved_by: str | None
    note: str | None
    detail: dict[str, Any]
    priority: str = Field(default="low", description="high, medium or low: the site's choice for the type "
                          "(site.toml [alarms], docs/alarms.md)")
    escalated_at: float | None = Field(default=None, description="when it passed its escalation time unacknowledged")
    source_event: str | None = Field(default=None, description="the event that raised it (its snapshot: "
                                     "GET /api/v1/snapshots/{source_event})")


class AlarmsOut(BaseModel):
    alarms: list[AlarmOut] = Field(description="newest first")
    open: int = Field(description="how many are not resolved (active or cleared)")
    active: int


class ResolveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=MAX_NOTE, description="what happened and what was done (required "
                      "for a high-priority alarm)")


class ActionOut(BaseModel):
    alarm: AlarmOut
    changed: bool = Field(description="false when it was already acknowledged / resolved")


def _subject(alarm: Alarm) -> str | None:
    """A security alarm raised at no door names its subject in its detail; shown where the door would be."""
    detail = alarm.detail
    if alarm.door:
        return None
    last4 = detail.get("credential_last4")
    if isinstance(last4, list):
        last4 = ", ".join(str(x) for x in last4[:3])
    if last4:
        return f"card …{last4}"
    address = detail.get("address")
    return f"from {address}" if isinstance(address, str) and address else None


def _out(request: Request, a: Alarm) -> AlarmOut:
    site = request.app.state.desk.server.site
    door = site.doors.get(a.door) if a.door else None
    return AlarmOut(id=a.id, type=a.type, title=alarm_name(a.type), severity=a.severity, state=a.state,
                    device=a.device, door=a.door, door_name=door.name if door else None, subject=_subject(a),
                    raised_at=a.raised_at, last_raised_at=a.last_raised_at, occurrences=a.occurrences,
                    cleared_at=a.cleared_at, acknowledged_at=a.acknowledged_at, acknowledged_by=a.acknowledged_by,
                    resolved_at=a.resolved_at, resolved_by=a.resolved_by, note=a.note, detail=a.detail,
                    priority=a.priority, escalated_at=a.escalated_at, source_event=a.source_event)


def _service(request: Request) -> Alarms:
    return request.app.state.desk.alarms  # type: ignore[no-any-return]


def open_alarms(request: Request) -> list[AlarmOut]:
    """Every unresolved alarm, newest first (active and cleared)."""
    return [_out(request, a) for a in _service(request).open()]


def _history(request: Request, limit: int) -> list[AlarmOut]:
    return [_out(request, a) for a in _service(request).resolved(limit)]


def _not_found(alarm_id: str) -> JSONResponse:
    return JSONResponse({"error": f"no alarm {alarm_id!r} (GET /api/v1/alarms lists them)", "detail": None},
                        status_code=404)


def acknowledge(request: Request, alarm_id: str, who: Principal) -> tuple[AlarmOut, bool]:
    """Acknowledge (audited by the service; raises AlarmNotFound)."""
    alarm, changed = _service(request).acknowledge(alarm_id, who.name)
    return _out(request, alarm), changed


def resolve(request: Request, alarm_id: str, note: str, who: Principal) -> tuple[AlarmOut, bool]:
    """Resolve with a note (audited by the service, never the note; raises AlarmNotFound, AlarmError)."""
    alarm, changed = _service(request).resolve(alarm_id, note, who.name)
    return _out(request, alarm), changed


# ------------------------------------------------------------------- API


@route(API_PREFIX + "/alarms", "GET", response_model=AlarmsOut, tags=["alarms"],
       dependencies=[Depends(require(ADMIN, DESK))],
       summary="Open alarms (active and cleared, until resolved), or the resolved history")
def list_alarms(request: Request, state: str = Query("open", pattern="^(open|resolved)$",
                                                     description="open (default) or resolved"),
                limit: int = Query(HISTORY, ge=1, le=500)) -> AlarmsOut:
    current = open_alarms(request)
    shown = current if state == "open" else _history(request, limit)
    return AlarmsOut(alarms=shown, open=len(current), active=sum(1 for a in current if a.state == "active"))


@route(API_PREFIX + "/alarms/{alarm_id}/acknowledge", "POST", response_model=ActionOut, tags=["alarms"],
       summary="Acknowledge an alarm (audited)")
def api_acknowledge(request: Request, alarm_id: str = Path(pattern=ALARM_ID),
                    who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    try:
        alarm, changed = acknowledge(request, alarm_id, who)
    except AlarmNotFound:
        return _not_found(alarm_id)
    return ActionOut(alarm=alarm, changed=changed)


@route(API_PREFIX + "/alarms/{alarm_id}/resolve", "POST", response_model=ActionOut, tags=["alarms"],
       summary="Resolve an alarm with a note (audited); it then leaves the open list")
def api_resolve(body: ResolveIn, request: Request, alarm_id: str = Path(pattern=ALARM_ID),
                who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    try:
        alarm, changed = resolve(request, alarm_id, body.note, who)
    except AlarmNotFound:
        return _not_found(alarm_id)
    except AlarmError as exc:
        return JSONResponse({"error": str(exc), "detail": None}, status_code=422)
    return ActionOut(alarm=alarm, changed=changed)


# ----------------------------------------------------------------- pages

#: Messages the alarms page shows after a form, by code (never text taken from the URL).
DONE = {"acknowledged": "Alarm acknowledged.", "resolved": "Alarm resolved.", "note": "Write a note to resolve "
        "the alarm: what happened and what was done.", "gone": "That alarm no longer exists.",
        "bulk_acknowledged": "The selected alarms are acknowledged.", "bulk_resolved": "The selected alarms are "
        "resolved.", "none": "No alarm was selected: tick the alarms first, or use the buttons for all matching."}
PRIORITY_ORDER = {"high": 0, "medium": 1, "low": 2}
#: Open alarms shown per page, most urgent first (the buttons for "all matching" still act on every page).
PAGE_SIZE = 100


def render_page(request: Request, who: Principal, flt: AlarmFilter, message: str | None = None,
                error: str | None = None, status: int = 200, note: str = "", page: int = 1) -> Response:
    """The alarms page: open alarms (filtered, most urgent first, :data:`PAGE_SIZE` a page) with priority, the
    door's state now, the snapshot and the timeline; bulk actions; the resolved history. A page past the end
    shows the last one."""
    from urllib.parse import urlencode

    from server.web import alarm_desk
    from server.web.pages import render

    service = _service(request)
    everything = service.open()
    matching = sorted((a for a in everything if flt.matches(a)),
                      key=lambda a: (PRIORITY_ORDER.get(a.priority, 3), -a.last_raised_at))
    pages = max(1, -(-len(matching) // PAGE_SIZE))
    page = min(max(page, 1), pages)
    current = matching[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
    keep = urlencode([(k, v) for k, v in request.query_params.multi_items() if k not in ("page", "done")])
    site = request.app.state.desk.server.site
    shown = [_out(request, a) for a in current]
    timelines = {a.id: a.timeline() for a in current}
    return render(request, "alarms.html", who, status=status, active=[a for a in shown if a.state == "active"],
                  cleared=[a for a in shown if a.state == "cleared"], history=_history(request, HISTORY),
                  message=message, error=error, note=note, tz=site.timezone, max_note=MAX_NOTE,
                  flt=flt, filtered=flt != AlarmFilter(), total=len(everything),
                  types=sorted({a.type for a in everything} | ({flt.type} if flt.type else set())),
                  doors=sorted(site.doors.values(), key=lambda d: d.name),
                  door_states=alarm_desk.door_states(request), snapshots=alarm_desk.snapshots(request, current),
                  timelines=timelines, priorities=("high", "medium", "low"), matching_total=len(matching),
                  page=page, pages=pages, first_shown=(page - 1) * PAGE_SIZE + 1 if current else 0,
                  last_shown=(page - 1) * PAGE_SIZE + len(current), page_query=keep + "&" if keep else "",
                  fingerprint=",".join(f"{a.id}:{a.state}:{a.occurrences}:{a.escalated_at or ''}" for a in everything))


@route("/alarms", "GET", include_in_schema=False)
def alarms_page(request: Request, done: str = Query("", max_length=20), priority: str = Query("", max_length=10),
                type: str = Query("", max_length=64), door: str = Query("", max_length=64),
                state: str = Query("", max_length=10), unack: str = Query("", max_length=5),
                page: int = Query(1, ge=1, le=1_000_000, description="which page of open alarms, from 1"),
                who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    from server.web.alarm_desk import page_filter

    return render_page(request, who, page_filter(priority, type, door, state, unack), message=DONE.get(done),
                       page=page)


@route("/alarms/bulk", "POST", include_in_schema=False)
def bulk_form(request: Request, op: str = Form(pattern="^(acknowledge|resolve):(selected|filter)$"),
              ids: list[str] = Form([]),
              note: str = Form("", max_length=MAX_NOTE), f_priority: str = Form("", max_length=10),
              f_type: str = Form("", max_length=64), f_door: str = Form("", max_length=64),
              f_state: str = Form("", max_length=10), f_unack: str = Form("", max_length=5),
              who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    """Acknowledge or resolve the ticked alarms, or every one matching the page's filter. A high-priority
    alarm without a note: the page again (422) with the note marked as the field to fill."""
    from server.web.alarm_desk import bulk_form_ids, page_filter

    action, scope = op.split(":")
    flt = page_filter(f_priority, f_type, f_door, f_state, f_unack)
    chosen = bulk_form_ids(scope, ids, request, flt)
    if not chosen:
        return RedirectResponse("/alarms?done=none", status_code=303)
    if action == "acknowledge":
        _service(request).acknowledge_many(chosen, who.name)
        return RedirectResponse("/alarms?done=bulk_acknowledged", status_code=303)
    try:
        _service(request).resolve_many(chosen, note, who.name)
    except AlarmError as exc:
        return render_page(request, who, flt, error=str(exc), status=422, note=note)
    return RedirectResponse("/alarms?done=bulk_resolved", status_code=303)


@route("/alarms/{alarm_id}/acknowledge", "POST", include_in_schema=False)
def acknowledge_form(request: Request, alarm_id: str = Path(pattern=ALARM_ID),
                     who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    try:
        acknowledge(request, alarm_id, who)
    except AlarmNotFound:
        return RedirectResponse("/alarms?done=gone", status_code=303)
    return RedirectResponse("/alarms?done=acknowledged", status_code=303)


@route("/alarms/{alarm_id}/resolve", "POST", include_in_schema=False)
def resolve_form(request: Request, alarm_id: str = Path(pattern=ALARM_ID), note: str = Form("", max_length=MAX_NOTE),
                 who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    try:
        resolve(request, alarm_id, note, who)
    except AlarmNotFound:
        return RedirectResponse("/alarms?done=gone", status_code=303)
    except AlarmError:  # no note (the form caps its length)
        return RedirectResponse("/alarms?done=note", status_code=303)
    return RedirectResponse("/alarms?done=resolved", status_code=303)
