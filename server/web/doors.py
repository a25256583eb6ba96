"""The desk's doors board: every door's live state, remote unlock, timed overrides and lockdown, audited.

A door's row keeps apart what the door **is** and what is **owed** about it, because a control room must see
at a glance whether a gate is open now, whatever old alarms still wait to be resolved (issue 16):

- its physical state, from the retained ``state`` message its edge publishes (relay, contact, the door
  machine's alarm: ``ServerBus.states``) and the supervisor's view of the device: ``offline`` (the edge is
  not heard, so nothing else is current), ``forced`` or ``held_open`` (the door is open now and its edge
  holds the alarm), ``open``, ``unlocked``, ``locked``, or ``unknown`` before the edge has said anything;
  a tamper switch open is a tag beside it;
- its open alarms: how many, and the highest priority among them (doorkeep/alarm_priority.py);
- its timed override (unlock or lock until a time; doorkeep/commands.py), as the edge reports it holding it:
  the edge ends it by itself at its time, and its next state says so; an end already past is not shown.

The page polls ``GET /api/v1/board`` every 2 s and redraws in place (static/doors.js).

Remote unlock, overrides and lockdown go through ``server.commands`` (signed commands, audited there with the
operator as actor, before they are sent). On the pages each goes through a confirmation page or form that
carries the CSRF token; the API is explicit already and acts at once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, FastAPI, Form, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from doorkeep.clock import parse_iso_ms
from doorkeep.commands import MAX_OVERRIDE_S
from doorkeep.model import DoorKind
from server.alarms import Alarm
from server.commands import CommandSendError
from server.sessions import Principal
from server.web.access import require
from server.web.alarms import install_filters
from server.web.api import DOOR_ID, DoorOut, ErrorOut, door_list
from server.web.roles import ADMIN, DESK
from server.web.routes import Routes

API_PREFIX = "/api/v1"
SCOPE = r"^[A-Za-z0-9_-]{1,64}$"
STATES = ("offline", "forced", "held_open", "open", "unlocked", "locked", "unknown")
#: what the board says for each state (the API keeps the id)
STATE_LABELS = {"offline": "offline", "forced": "forced open", "held_open": "held open", "open": "open",
                "unlocked": "unlocked", "locked": "locked", "unknown": "unknown"}
#: what "from" says for a lift: people board it on any floor it serves
LIFT_FROM = "the lift cab"
#: alarm priorities, most urgent first (doorkeep/alarm_priority.py); severities stand in for an alarm without one
PRIORITY_ORDER = ("high", "medium", "low")
_SEVERITY_PRIORITY = {"alarm": "high", "trouble": "medium", "warning": "low", "info": "low"}
OVERRIDE_KINDS = ("unlock", "lock")
#: an override must end at least this far ahead (a shorter one would end before the edge has it)
MIN_OVERRIDE_S = 60.0


route = Routes()


def install(app: FastAPI) -> None:
    install_filters(app.state.desk.templates)
    route.install(app)


class OverrideOut(BaseModel):
    kind: str = Field(description="unlock (held unlocked) or lock (held locked against its schedule)")
    until: str = Field(description="when the edge ends it by itself (UTC ISO 8601)")
    until_text: str = Field(description="the same in the site's time zone, as the board shows it")
    transaction: str | None = Field(description="the signed command that set it")


class BoardDoorOut(DoorOut):
    from_area_name: str = Field(default="", description="the area it leads from, by name (the desk shows names)")
    to_area_name: str = Field(default="", description="the area it leads into, by name")
    state: str = Field(description="the door's physical state: offline, forced, held_open, open, unlocked, locked "
                                   "or unknown (see docs/desk.md); never its old alarms")
    state_label: str = Field(description="the state in words")
    open: bool | None = Field(description="the door contact, as the edge last reported (null: not reported)")
    relay: bool | None = Field(description="the lock relay energised (unlocked)")
    tamper: bool | None
    alarms: int = Field(description="unresolved alarms at this door")
    alarm_priority: str | None = Field(description="the highest priority among them: high, medium, low (null: none)")
    lockdown: bool = Field(description="the area it leads into (or the site) is locked down; a lift: the site or "
                                       "one of its floors")
    locked_floors: list[str] = Field(default_factory=list, description="a lift: its floors locked down (their "
                                                                       "buttons stay dark)")
    override: OverrideOut | None = Field(description="the timed override its edge holds (null: none)")


class OverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(pattern="^(unlock|lock)$", description="unlock: held unlocked; lock: held locked, its unlock "
                                                           "schedule suspended")
    until: str = Field(max_length=40, description="when it ends: an ISO 8601 time with its offset (UTC or local)")


class AreaOut(BaseModel):
    id: str
    name: str
    lockdown: bool


class BoardOut(BaseModel):
    doors: list[BoardDoorOut]
    areas: list[AreaOut]
    site_lockdown: bool


class LockdownIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: str = Field(pattern=SCOPE, description="'site' or an area id")
    active: bool = Field(description="true to lock down, false to lift")


class CommandOut(BaseModel):
    device: str
    action: str
    transaction: str
    status: str = Field(description="ok, rejected, failed or timeout")
    error: str | None


class LockdownOut(BaseModel):
    scope: str
    active: bool
    results: list[CommandOut] = Field(description="one per device with a door into the scope")


def _door_states(request: Request) -> dict[str, dict[str, Any]]:
    """door id -> its entry of the owning edge's latest ``state`` message (malformed ones ignored)."""
    out: dict[str, dict[str, Any]] = {}
    for device, raw in list(request.app.state.desk.server.bus.states.items()):
        try:
            doors = json.loads(raw).get("doors") or {}
        except (ValueError, AttributeError):
            continue
        if isinstance(doors, dict):
            out.update({d: s for d, s in doors.items() if isinstance(s, dict) and
                        request.app.state.desk.server.bus.door_devices.get(d) == device})
    return out


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _zone(request: Request) -> ZoneInfo:
    try:
        return ZoneInfo(request.app.state.desk.server.site.timezone)
    except (ZoneInfoNotFoundError, ValueError):  # checked at load: only a broken tzdata
        return ZoneInfo("UTC")


def until_text(request: Request, until: float) -> str:
    """An override's end as the site's clock reads it: "14:00" today, "Mon 7 Dec 14:00" on another day."""
    zone = _zone(request)
    end = dt.datetime.fromtimestamp(until, zone)
    today = dt.datetime.fromtimestamp(request.app.state.desk.server.directory.clock.wall(), zone).date()
    return end.strftime("%H:%M") if end.date() == today else end.strftime("%a %-d %b %H:%M")


def _physical(st: dict[str, Any] | None, device_status: str, at_door: list[Alarm]) -> str:
    """What the door is now (never what is owed about it): see the module docstring."""
    if device_status in ("offline", "stopped"):
        return "offline"
    if st is None:
        return "unknown"
    if st.get("open") is True:
        if st.get("state") != "alarm":
            return "open"
        # The edge holds an alarm while the door stays open: forced, or held open; the latest alarm says which.
        raised = [a for a in at_door if a.type in ("forced_open", "held_open")]
        latest = max(raised, key=lambda a: a.last_raised_at, default=None)
        return "held_open" if latest is not None and latest.type == "held_open" else "forced"
    if st.get("relay") is True or st.get("state") == "unlocked":
        return "unlocked"
    return "locked"


def _priority(alarms: list[Alarm]) -> str | None:
    found = {getattr(a, "priority", None) if getattr(a, "priority", None) in PRIORITY_ORDER
             else _SEVERITY_PRIORITY.get(a.severity, "low") for a in alarms}
    return next((p for p in PRIORITY_ORDER if p in found), None)


def _override(request: Request, st: dict[str, Any] | None, now: float) -> OverrideOut | None:
    """The override the edge says it holds, unless malformed or already past (the edge ends it by itself)."""
    raw = st.get("override") if st else None
    if not isinstance(raw, dict) or raw.get("kind") not in OVERRIDE_KINDS or not isinstance(raw.get("until"), str):
        return None
    try:
        until = parse_iso_ms(raw["until"])
    except (ValueError, OverflowError):
        return None
    if until <= now:
        return None
    tx = raw.get("transaction")
    return OverrideOut(kind=raw["kind"], until=raw["until"], until_text=until_text(request, until),
                       transaction=tx if isinstance(tx, str) else None)


def board(request: Request) -> BoardOut:
    server = request.app.state.desk.server
    site = server.site
    states = _door_states(request)
    alarms: dict[str, list[Alarm]] = {}
    for a in request.app.state.desk.alarms.open():
        if a.door:
            alarms.setdefault(a.door, []).append(a)
    locked = site.lockdowns
    now = server.directory.clock.wall()
    out = []
    for d in door_list(request):
        st = states.get(d.id)
        at_door = alarms.get(d.id, [])
        is_open, relay, tamper = (_flag(st.get("open")), _flag(st.get("relay")), _flag(st.get("tamper"))) if st \
            else (None, None, None)
        state = _physical(st, d.device_status, at_door)
        names = {a: site.areas[a].name if a in site.areas else a for a in (d.from_area, d.to_area)}
        from_name, to_name = names[d.from_area], names[d.to_area]
        entered = [f.area for f in d.floors] if d.kind == "lift" else [d.to_area]
        if d.kind == "lift":  # a lift serves floors: "into" names them, "from" the cab
            from_name, to_name = LIFT_FROM, ", ".join(f.name for f in d.floors)
        out.append(BoardDoorOut(**d.model_dump(), from_area_name=from_name, to_area_name=to_name,
                                state=state, state_label=STATE_LABELS[state], open=is_open,
                                relay=relay, tamper=tamper, alarms=len(at_door), alarm_priority=_priority(at_door),
                                lockdown="site" in locked or any(a in locked for a in entered),
                                locked_floors=[f.area for f in d.floors if f.area in locked],
                                override=_override(request, st, now) if state != "offline" else None))
    areas = [AreaOut(id=a.id, name=a.name, lockdown=a.id in locked) for a in sorted(site.areas.values(),
                                                                                      key=lambda a: a.name)]
    return BoardOut(doors=out, areas=areas, site_lockdown="site" in locked)


def unlock(request: Request, door_id: str, who: Principal) -> dict[str, Any]:
    """A momentary remote unlock, audited by server.commands with the operator as actor."""
    return request.app.state.desk.server.commands.unlock(door_id, actor=who.name)


def parse_until(request: Request, text: str) -> float:
    """An override's end from the API (ISO 8601 with an offset) or the form (``datetime-local``: site time);
    ValueError unless it lies between a minute and 31 days ahead."""
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("not a date and time (e.g. 2026-12-06T14:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_zone(request))
    until = when.timestamp()
    now = request.app.state.desk.server.directory.clock.wall()
    if until < now + MIN_OVERRIDE_S:
        raise ValueError("the end must be at least a minute from now")
    if until > now + MAX_OVERRIDE_S:
        raise ValueError(f"the end must be within {MAX_OVERRIDE_S / 86400:g} days")
    return until


def override(request: Request, door_id: str, kind: str, until: float, who: Principal) -> dict[str, Any]:
    """A timed override as a signed command, audited by server.commands with the operator as actor."""
    return request.app.state.desk.server.commands.override(door_id, kind, until, actor=who.name)


def release(request: Request, door_id: str, who: Principal) -> dict[str, Any]:
    return request.app.state.desk.server.commands.release(door_id, actor=who.name)


def lockdown(request: Request, scope: str, active: bool, who: Principal) -> list[dict[str, Any]]:
    return request.app.state.desk.server.commands.lockdown(scope, active, actor=who.name)


def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


# ------------------------------------------------------------------- API


@route(API_PREFIX + "/board", "GET", response_model=BoardOut, tags=["doors"],
       dependencies=[Depends(require(ADMIN, DESK))], summary="Every door with its live state, and the lockdowns")
def api_board(request: Request) -> BoardOut:
    return board(request)


@route(API_PREFIX + "/doors/{door_id}/unlock", "POST", response_model=CommandOut, tags=["doors"],
       responses={502: {"model": ErrorOut, "description": "the door's edge refused the command, failed it or did not "
                        "answer in time (detail: the command result); the door stays locked (docs/desk.md)"}},
       summary="Unlock a door momentarily (its unlock_s), as a signed command; audited")
def api_unlock(request: Request, door_id: str = Path(pattern=DOOR_ID),
               who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    return _door_command(request, door_id, lambda: unlock(request, door_id, who), "did not unlock it")


def _door_command(request: Request, door_id: str, send: Callable[[], dict[str, Any]], failed: str) -> Any:
    """One signed command to a door's edge, answered the same way by every door endpoint: 404 for a door the
    site lacks, 409 when it cannot be sent, 502 with the edge's result when the edge did not carry it out."""
    if door_id not in request.app.state.desk.server.site.doors:
        return _error(404, f"no door {door_id!r} on this site (GET /api/v1/doors lists them)")
    try:
        result = send()
    except CommandSendError as exc:
        return _error(409, str(exc))
    if result["status"] != "ok":
        return _error(502, f"the door's edge {result['device']} {failed} ({result['status']}: "
                           f"{result['error']}); check the device on the Doors page and try again", result)
    return CommandOut(**result)


@route(API_PREFIX + "/doors/{door_id}/override", "POST", response_model=CommandOut, tags=["doors"],
       responses={400: {"model": ErrorOut, "description": "until is not a time between a minute and 31 days ahead"},
                  502: {"model": ErrorOut, "description": "the door's edge refused the override, failed it or did "
                        "not answer in time (detail: the command result); nothing changed at the door"}},
       summary="Hold a door unlocked, or locked against its schedule, until a time; the edge ends it by itself")
def api_override(body: OverrideIn, request: Request, door_id: str = Path(pattern=DOOR_ID),
                 who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    if door_id not in request.app.state.desk.server.site.doors:
        return _error(404, f"no door {door_id!r} on this site (GET /api/v1/doors lists them)")
    try:
        until = parse_until(request, body.until)
    except ValueError as exc:
        return _error(400, f"until: {exc}")
    return _door_command(request, door_id, lambda: override(request, door_id, body.kind, until, who),
                         "did not take the override")


@route(API_PREFIX + "/doors/{door_id}/override/release", "POST", response_model=CommandOut, tags=["doors"],
       responses={502: {"model": ErrorOut, "description": "the door's edge did not confirm (detail: the result)"}},
       summary="End a door's timed override now: back to its normal state; audited")
def api_release(request: Request, door_id: str = Path(pattern=DOOR_ID),
                who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    return _door_command(request, door_id, lambda: release(request, door_id, who), "did not confirm")


@route(API_PREFIX + "/lockdown", "POST", response_model=LockdownOut, tags=["doors"],
       summary="Lock down the site or an area, or lift it; audited. Badges into it are refused (reason lockdown)")
def api_lockdown(body: LockdownIn, request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    site = request.app.state.desk.server.site
    if body.scope != "site" and body.scope not in site.areas:
        return _error(404, f"no area {body.scope!r}: use 'site' or one of {', '.join(sorted(site.areas))}")
    try:
        results = lockdown(request, body.scope, body.active, who)
    except CommandSendError as exc:
        return _error(409, str(exc))
    return LockdownOut(scope=body.scope, active=body.active, results=[CommandOut(**r) for r in results])


# ----------------------------------------------------------------- pages


def _scope_name(request: Request, scope: str) -> str | None:
    site = request.app.state.desk.server.site
    if scope == "site":
        return f"the whole site ({site.name})"
    area = site.areas.get(scope)
    return area.name if area else None


def _messages(request: Request, done: str, target: str) -> tuple[str, bool] | None:
    """The message after an action, from a fixed list (never text taken from the URL); (text, is_error)."""
    site = request.app.state.desk.server.site
    door = site.doors.get(target)
    scope = _scope_name(request, target)
    if done == "unlocked" and door and door.kind is DoorKind.LIFT:
        return f"Every floor button of {door.name} not locked down works for {door.unlock_s:g} s.", False
    if done == "unlocked" and door:
        return f"{door.name} was unlocked for {door.unlock_s:g} s.", False
    if done == "unlock_failed" and door:
        return f"{door.name} did not confirm the unlock: its edge may be offline. Check the door.", True
    if done == "override_set" and door:
        return (f"The override of {door.name} is in force; the board shows until when. Its edge ends it by itself "
                "then, even if the server cannot be reached."), False
    if done == "override_failed" and door:
        return f"{door.name} did not confirm the override: its edge may be offline. Nothing changed.", True
    if done == "released" and door:
        return f"The override of {door.name} has ended: the door is back to its normal state.", False
    if done == "release_failed" and door:
        return f"{door.name} did not confirm the end of its override: its edge may be offline.", True
    if done == "locked_down" and scope:
        return f"Lockdown of {scope} is in force: only responders pass.", False
    if done == "lifted" and scope:
        return f"Lockdown of {scope} lifted.", False
    if done == "partial" and scope:
        text = (f"The lockdown change for {scope} is recorded and in the signed policy, but not every edge "
                "confirmed it yet.")
        return text, True
    return None


@route("/doors", "GET", include_in_schema=False)
def doors_page(request: Request, done: str = Query("", max_length=20), target: str = Query("", max_length=64),
               who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    from server.web.pages import render

    message = _messages(request, done, target)
    return render(request, "doors.html", who, board=board(request), message=message)


def _confirm(request: Request, who: Principal, *, title: str, text: str, action: str, fields: dict[str, str],
             button: str, danger: bool = False) -> Response:
    from server.web.pages import render

    return render(request, "confirm.html", who, title=title, text=text, action=action, fields=fields,
                  button=button, danger=danger, back="/doors")


@route("/doors/{door_id}/unlock", "GET", include_in_schema=False)
def unlock_confirm(request: Request, door_id: str = Path(pattern=DOOR_ID),
                   who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    door = request.app.state.desk.server.site.doors.get(door_id)
    if door is None:
        return RedirectResponse("/doors", status_code=303)
    what = (f"Every floor button of {door.name} (but a floor locked down) will work for {door.unlock_s:g} "
            "seconds, as if a badge had enabled them all, and then go dark again by itself."
            if door.kind is DoorKind.LIFT else
            f"{door.name} will unlock for {door.unlock_s:g} seconds and then lock again by itself.")
    return _confirm(request, who, title=f"Unlock {door.name}?",
                    text=f"{what} The unlock is recorded in the audit log under your name.",
                    action=f"/doors/{door.id}/unlock", fields={"confirm": "yes"}, button=f"Unlock {door.name}")


@route("/doors/{door_id}/unlock", "POST", include_in_schema=False)
def unlock_submit(request: Request, door_id: str = Path(pattern=DOOR_ID), confirm: str = Form("", max_length=8),
                  who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    if door_id not in request.app.state.desk.server.site.doors:
        return RedirectResponse("/doors", status_code=303)
    if confirm != "yes":  # only the confirmation page's form says yes
        return RedirectResponse(f"/doors/{door_id}/unlock", status_code=303)
    try:
        result = unlock(request, door_id, who)
    except CommandSendError:
        result = {"status": "failed"}
    done = "unlocked" if result["status"] == "ok" else "unlock_failed"
    return RedirectResponse(f"/doors?done={done}&target={door_id}", status_code=303)


def _override_form(request: Request, who: Principal, door_id: str, *, error: str | None = None, kind: str = "unlock",
                   until: str | None = None, status: int = 200) -> Response:
    from server.web.pages import render

    site = request.app.state.desk.server.site
    door = site.doors[door_id]
    row = next((d for d in board(request).doors if d.id == door_id), None)
    zone = _zone(request)
    now = dt.datetime.fromtimestamp(request.app.state.desk.server.directory.clock.wall(), zone)
    default = (now + dt.timedelta(hours=1)).replace(second=0, microsecond=0)
    return render(request, "door_override.html", who, status=status, door=door, row=row, error=error, kind=kind,
                  until=until or default.strftime("%Y-%m-%dT%H:%M"), min_until=now.strftime("%Y-%m-%dT%H:%M"),
                  tz=site.timezone)


@route("/doors/{door_id}/override", "GET", include_in_schema=False)
def override_page(request: Request, door_id: str = Path(pattern=DOOR_ID),
                  who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    if door_id not in request.app.state.desk.server.site.doors:
        return RedirectResponse("/doors", status_code=303)
    return _override_form(request, who, door_id)


@route("/doors/{door_id}/override", "POST", include_in_schema=False)
def override_submit(request: Request, door_id: str = Path(pattern=DOOR_ID), kind: str = Form("", max_length=8),
                    until: str = Form("", max_length=40), confirm: str = Form("", max_length=8),
                    who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    if door_id not in request.app.state.desk.server.site.doors:
        return RedirectResponse("/doors", status_code=303)
    if confirm != "yes":
        return RedirectResponse(f"/doors/{door_id}/override", status_code=303)
    if kind not in OVERRIDE_KINDS:
        return _override_form(request, who, door_id, error="Choose whether to keep the door unlocked or locked.",
                              until=until, status=400)
    try:
        end = parse_until(request, until)
    except ValueError as exc:
        return _override_form(request, who, door_id, error=f"Until: {exc}.", kind=kind, until=until, status=400)
    try:
        result = override(request, door_id, kind, end, who)
    except CommandSendError:
        result = {"status": "failed"}
    done = "override_set" if result["status"] == "ok" else "override_failed"
    return RedirectResponse(f"/doors?done={done}&target={door_id}", status_code=303)


@route("/doors/{door_id}/release", "POST", include_in_schema=False)
def release_submit(request: Request, door_id: str = Path(pattern=DOOR_ID), confirm: str = Form("", max_length=8),
                   who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    if door_id not in request.app.state.desk.server.site.doors:
        return RedirectResponse("/doors", status_code=303)
    if confirm != "yes":
        return RedirectResponse(f"/doors/{door_id}/override", status_code=303)
    try:
        result = release(request, door_id, who)
    except CommandSendError:
        result = {"status": "failed"}
    done = "released" if result["status"] == "ok" else "release_failed"
    return RedirectResponse(f"/doors?done={done}&target={door_id}", status_code=303)


@route("/doors/lockdown", "GET", include_in_schema=False)
def lockdown_confirm(request: Request, scope: str = Query(pattern=SCOPE), active: int = Query(1, ge=0, le=1),
                     who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    name = _scope_name(request, scope)
    if name is None:
        return RedirectResponse("/doors", status_code=303)
    if active:
        return _confirm(request, who, title=f"Lock down {name}?",
                        text=f"Every badge into {name} will be refused (reason: lockdown) until the lockdown is "
                             "lifted; only responders pass. The edges are told at once and the signed policy "
                             "carries it. Recorded in the audit log under your name.",
                        action="/doors/lockdown", fields={"scope": scope, "active": "1", "confirm": "yes"},
                        button=f"Lock down {name}", danger=True)
    return _confirm(request, who, title=f"Lift the lockdown of {name}?",
                    text=f"Badges into {name} are decided by the normal rules again. Recorded in the audit log "
                         "under your name.",
                    action="/doors/lockdown", fields={"scope": scope, "active": "0", "confirm": "yes"},
                    button=f"Lift lockdown of {name}")


@route("/doors/lockdown", "POST", include_in_schema=False)
def lockdown_submit(request: Request, scope: str = Form(pattern=SCOPE), active: int = Form(ge=0, le=1),
                    confirm: str = Form("", max_length=8), who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    if _scope_name(request, scope) is None:
        return RedirectResponse("/doors", status_code=303)
    if confirm != "yes":
        return RedirectResponse(f"/doors/lockdown?scope={scope}&active={active}", status_code=303)
    try:
        results = lockdown(request, scope, bool(active), who)
    except CommandSendError:
        return RedirectResponse("/doors", status_code=303)
    done = ("locked_down" if active else "lifted") if all(r["status"] == "ok" for r in results) else "partial"
    return RedirectResponse(f"/doors?done={done}&target={scope}", status_code=303)
