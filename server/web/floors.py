"""The desk's floor view: per area, its doors as cards with what each door is now, what is owed about it, what
last happened there and the last picture its camera took (issue 16, "Doors").

The Doors board answers "which door needs me" in a list; a control room also looks at a building by place, so
this page groups the same doors by the area they lead into (an exit is a door into Outside), each area by
name; a lift leads into every floor it serves, so its card is under each of them. A card's state and open alarms come from the board's own computation (server/web/doors.py ``board``):
one rule for "what is this door now", never two. Its last event is said in words in the site's time zone
(:func:`event_words`), and its snapshot is the newest ready one among the door's latest snapshot-bearing
events (a visitor who declined photos is never shown: server/web/live.py ``event_row`` decides that).

The page follows the live stream (``GET /api/v1/events/stream``, the same one the Live page reads): every new
event, snapshot or alarm change makes it fetch ``GET /api/v1/floors`` again and redraw the cards in place
(static/floors.js); a slow poll catches a state the edge reported without an event. Roles: admin and desk.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from jinja2 import pass_context
from pydantic import BaseModel, Field

from doorkeep import vocabulary
from doorkeep.model import Site
from server.sessions import Principal
from server.web.access import require
from server.web.api import ERRORS
from server.web.doors import BoardDoorOut, board
from server.web.live import EventRowOut, event_row
from server.web.roles import ADMIN, DESK
from server.web.routes import Routes

API_PREFIX = "/api/v1"
#: how many of a door's latest snapshot-bearing events are looked at for a picture that is ready
SNAPSHOT_LOOKBACK = 5

route = Routes()


def install(app: FastAPI) -> None:
    install_name_filters(app.state.desk.templates.env)
    route.install(app)


# ------------------------------------------------------------------ names


def area_name(site: Site, area_id: str | None) -> str:
    """An area's name as the site model has it; an id the site no longer knows is shown as it is."""
    area = site.areas.get(area_id) if area_id else None
    return area.name if area is not None else (area_id or "—")


def door_name(site: Site, door_id: str | None) -> str:
    door = site.doors.get(door_id) if door_id else None
    return door.name if door is not None else (door_id or "—")


def install_name_filters(env: Any) -> None:
    """``{{ id | area_name }}``, ``door_name`` and ``level_name`` for every desk template: names, not ids
    (issue 16), read from the site as it is at render time (the site admin pages change it live)."""

    @pass_context
    def _area(ctx: Any, area_id: str | None) -> str:
        return area_name(ctx["request"].app.state.desk.server.site, area_id)

    @pass_context
    def _door(ctx: Any, door_id: str | None) -> str:
        return door_name(ctx["request"].app.state.desk.server.site, door_id)

    @pass_context
    def _level(ctx: Any, level_id: str | None) -> str:
        level = ctx["request"].app.state.desk.server.site.access_levels.get(level_id) if level_id else None
        return level.name if level is not None else (level_id or "—")

    env.filters["area_name"] = _area
    env.filters["door_name"] = _door
    env.filters["level_name"] = _level


# ------------------------------------------------------------------ models


class LastEventOut(BaseModel):
    id: str
    text: str = Field(description="what happened, in words (\"Granted: Alice Archer\", \"Alarm: Door forced open\")")
    kind: str = Field(description="badge, alarm, door or system (server/eventlog.py)")
    ts: str = Field(description="UTC ISO 8601")
    when: str = Field(description="date and time in the site's time zone, as the page shows it")


class SnapshotOut(BaseModel):
    url: str = Field(description="the JPEG (GET /api/v1/snapshots/{id}, the desk's login)")
    event: str
    when: str = Field(description="when it was taken, in the site's time zone")
    text: str = Field(description="the event it belongs to, in words")


class FloorDoorOut(BaseModel):
    id: str
    name: str
    from_area: str
    from_area_name: str
    state: str = Field(description="as on the Doors board: offline, forced, held_open, open, unlocked, locked, "
                                   "unknown")
    state_label: str
    tamper: bool | None
    lockdown: bool
    alarms: int = Field(description="unresolved alarms at this door")
    alarm_priority: str | None
    override_text: str | None = Field(description="its timed override in words (\"unlocked until 14:00\")")
    device_status: str
    kind: str = Field("door", description="door, turnstile or lift")
    lift_floors: list[str] = Field(default_factory=list, description="a lift: every floor it serves, by name (the "
                                   "lift is listed under each of them)")
    last_event: LastEventOut | None
    snapshot: SnapshotOut | None = Field(description="the newest snapshot ready at this door (null: none)")


class FloorAreaOut(BaseModel):
    id: str
    name: str
    restricted: bool
    lockdown: bool
    alarms: int = Field(description="unresolved alarms at the doors into it")
    doors: list[FloorDoorOut] = Field(description="the doors into it, by name; a lift serving it among them")


class FloorsOut(BaseModel):
    areas: list[FloorAreaOut] = Field(description="areas with a door into them, by name")
    site_lockdown: bool


# ------------------------------------------------------------------ service


def event_words(row: EventRowOut) -> str:
    """An event as a control room says it: who was let in or refused and why, which alarm, what the door did."""
    if row.type == "access":
        if row.decision == "granted":
            return f"Granted: {row.person_name}" + (f" (floors {', '.join(row.floors)})" if row.floors else "")
        reason = row.reason_label or row.reason
        return f"Refused: {row.person_name}" + (f" ({reason})" if reason else "")
    if row.type == "visitor_arrived":
        return "Visitor arrived"
    if row.type == "floor_chosen":
        return f"Floor chosen: {row.floor or '—'}"
    alarm = vocabulary.EVENT_ALARMS.get(row.type)
    if alarm:
        return f"Alarm: {vocabulary.alarm_label(alarm)}"
    return row.type.replace("_", " ").capitalize()


def _when(row: EventRowOut) -> str:
    return " ".join(p for p in (row.local_date, row.local_time, row.zone) if p)


def _last_events(request: Request, door_ids: list[str]) -> dict[str, tuple[LastEventOut | None,
                                                                          SnapshotOut | None]]:
    """Each door's last event and newest ready snapshot, read for all doors in one store query (a refresh
    follows every event: two queries per door did not stay cheap with hundreds of doors)."""
    desk = request.app.state.desk
    site = desk.server.site
    picked = desk.events.latest_at_doors(door_ids, sorted(vocabulary.SNAPSHOT_EVENTS), SNAPSHOT_LOOKBACK)
    out: dict[str, tuple[LastEventOut | None, SnapshotOut | None]] = {}
    for door_id, (latest, recent) in picked.items():
        last = None
        if latest is not None:
            row = event_row(latest, site, desk.events)
            last = LastEventOut(id=row.id, text=event_words(row), kind=row.kind, ts=row.ts, when=_when(row))
        snap = None
        for raw in recent:
            row = event_row(raw, site, desk.events)
            if row.snapshot == "ready" and row.snapshot_url:
                snap = SnapshotOut(url=row.snapshot_url, event=row.id, when=_when(row), text=event_words(row))
                break
        out[door_id] = (last, snap)
    return out


def _override_text(d: BoardDoorOut) -> str | None:
    if d.override is None:
        return None
    return ("unlocked" if d.override.kind == "unlock" else "locked") + f" until {d.override.until_text}"


def floors(request: Request) -> FloorsOut:
    """Every area with a door into it, and those doors as the board sees them now, with their last event."""
    site = request.app.state.desk.server.site
    b = board(request)
    by_area: dict[str, list[FloorDoorOut]] = {}
    latest = _last_events(request, [d.id for d in b.doors])
    for d in b.doors:
        last, snap = latest.get(d.id, (None, None))
        card = FloorDoorOut(
            id=d.id, name=d.name, from_area=d.from_area, from_area_name=d.from_area_name, state=d.state,
            state_label=d.state_label, tamper=d.tamper, lockdown=d.lockdown, alarms=d.alarms,
            alarm_priority=d.alarm_priority, override_text=_override_text(d), device_status=d.device_status,
            kind=d.kind, lift_floors=[f.name for f in d.floors], last_event=last, snapshot=snap)
        # A lift is a way into each floor it serves: an operator looking at Floor 7 expects its lift there.
        for area_id in [f.area for f in d.floors] if d.kind == "lift" else [d.to_area]:
            by_area.setdefault(area_id, []).append(card)
    locked = {a.id for a in b.areas if a.lockdown}
    areas = []
    for area_id, doors in by_area.items():
        area = site.areas.get(area_id)
        doors.sort(key=lambda x: x.name.casefold())
        areas.append(FloorAreaOut(id=area_id, name=area_name(site, area_id), restricted=bool(area and area.restricted),
                                  lockdown=b.site_lockdown or area_id in locked, alarms=sum(x.alarms for x in doors),
                                  doors=doors))
    areas.sort(key=lambda a: a.name.casefold())
    return FloorsOut(areas=areas, site_lockdown=b.site_lockdown)


# ------------------------------------------------------------------ routes


@route(API_PREFIX + "/floors", "GET", response_model=FloorsOut, responses=ERRORS, tags=["doors"],
       dependencies=[Depends(require(ADMIN, DESK))],
       summary="The floor view: per area, its doors with their state, open alarms, last event and snapshot")
def api_floors(request: Request) -> FloorsOut:
    return floors(request)


@route("/floors", "GET", include_in_schema=False)
def floors_page(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    from server.web.pages import render

    return render(request, "floors.html", who, floors=floors(request),
                  tz=request.app.state.desk.server.site.timezone)
