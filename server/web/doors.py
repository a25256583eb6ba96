"""The desk's doors board: every door's live state, remote unlock and lockdown, each confirmed and audited.

A door's state is drawn from three things the server already knows: the retained ``state`` message its
edge publishes (relay, contact, tamper: ``ServerBus.states``), the supervisor's view of the device
(offline, stopped) and the open alarms at the door. In that order of precedence: ``offline`` (the
edge is not heard, so nothing else is current), ``alarm`` (an unresolved alarm of severity ``alarm``
at the door, or its tamper switch open), ``open``, ``unlocked``, ``locked``, or ``unknown`` before the
edge has said anything. The page polls ``GET /api/v1/board`` every 2 s and redraws in place.

Remote unlock and lockdown go through ``server.commands`` (signed commands, audited there with the
operator as actor, before they are sent). On the pages each goes through a confirmation page whose form
carries the CSRF token; the API is explicit already and acts at once.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Depends, FastAPI, Form, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

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
STATES = ("offline", "alarm", "open", "unlocked", "locked", "unknown")


route = Routes()


def install(app: FastAPI) -> None:
    install_filters(app.state.desk.templates)
    route.install(app)


class BoardDoorOut(DoorOut):
    state: str = Field(description="offline, alarm, open, unlocked, locked or unknown (see docs/desk.md)")
    open: bool | None = Field(description="the door contact, as the edge last reported (null: not reported)")
    relay: bool | None = Field(description="the lock relay energised (unlocked)")
    tamper: bool | None
    alarms: int = Field(description="unresolved alarms at this door")
    lockdown: bool = Field(description="the area it leads into (or the site) is locked down")


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


def board(request: Request) -> BoardOut:
    server = request.app.state.desk.server
    site = server.site
    states = _door_states(request)
    alarms: dict[str, list[Alarm]] = {}
    for a in request.app.state.desk.alarms.open():
        if a.door:
            alarms.setdefault(a.door, []).append(a)
    locked = site.lockdowns
    out = []
    for d in door_list(request):
        st = states.get(d.id)
        at_door = alarms.get(d.id, [])
        is_open, relay, tamper = (_flag(st.get("open")), _flag(st.get("relay")), _flag(st.get("tamper"))) if st \
            else (None, None, None)
        if d.device_status in ("offline", "stopped"):
            state = "offline"
        elif tamper or any(a.severity == "alarm" for a in at_door):
            state = "alarm"
        elif st is None:
            state = "unknown"
        elif is_open:
            state = "open"
        elif relay or st.get("state") == "unlocked":
            state = "unlocked"
        else:
            state = "locked"
        out.append(BoardDoorOut(**d.model_dump(), state=state, open=is_open, relay=relay, tamper=tamper,
                                alarms=len(at_door), lockdown="site" in locked or d.to_area in locked))
    areas = [AreaOut(id=a.id, name=a.name, lockdown=a.id in locked) for a in sorted(site.areas.values(),
                                                                                      key=lambda a: a.name)]
    return BoardOut(doors=out, areas=areas, site_lockdown="site" in locked)


def unlock(request: Request, door_id: str, who: Principal) -> dict[str, Any]:
    """A momentary remote unlock, audited by server.commands with the operator as actor."""
    return request.app.state.desk.server.commands.unlock(door_id, actor=who.name)


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
    if door_id not in request.app.state.desk.server.site.doors:
        return _error(404, f"no door {door_id!r} on this site (GET /api/v1/doors lists them)")
    try:
        result = unlock(request, door_id, who)
    except CommandSendError as exc:
        return _error(409, str(exc))
    if result["status"] != "ok":
        return _error(502, f"the door's edge {result['device']} did not unlock it ({result['status']}: "
                           f"{result['error']}); check the device on the Doors page and try again", result)
    return CommandOut(**result)


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
    if done == "unlocked" and door:
        return f"{door.name} was unlocked for {door.unlock_s:g} s.", False
    if done == "unlock_failed" and door:
        return f"{door.name} did not confirm the unlock: its edge may be offline. Check the door.", True
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
    return _confirm(request, who, title=f"Unlock {door.name}?",
                    text=f"{door.name} will unlock for {door.unlock_s:g} seconds and then lock again by itself. "
                         "The unlock is recorded in the audit log under your name.",
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
