"""The alarm console over HTTP: the counter in every page's navigation, its sounds and the operator's mute
switch, bulk acknowledge and resolve, and what the alarms page shows beside each alarm (docs/desk.md
"Alarm console", docs/alarms.md "Priority and escalation").

The counter is kept current by the live stream (``GET /api/v1/events/stream?only=alarms``, an ``alarms``
message from :class:`server.alarm_watch.AlarmWatch` whenever the open alarms change); without scripting the
page shows the figures it was rendered with. Acknowledging, resolving, escalating and their audit records are
the alarm service's (server/alarms.py); this module is routes, API models and the page's context.

Roles: admin and desk (an auditor reads alarm actions in the audit log).
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import wave
from functools import lru_cache
from typing import Any

from fastapi import Depends, FastAPI, Form, Path, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from doorkeep.alarm_priority import PRIORITIES
from server.alarm_watch import AlarmWatch
from server.alarms import (MAX_BULK, MAX_NOTE, Alarm, AlarmError, AlarmFilter, Alarms, AlarmSummary, BulkResult,
                           NoteMissing)
from server.sessions import Principal
from server.web.access import require
from server.web.roles import ADMIN, DESK
from server.web.routes import Routes

API_PREFIX = "/api/v1"
ALARM_ID = r"^[A-Za-z0-9_.:-]{1,200}$"
SOUNDS = ("alarm", "escalation")

route = Routes()


def install(app: FastAPI) -> None:
    """Routes, and the alarm watch (a desk job) publishing on the live hub; after ``live.install``."""
    desk = app.state.desk
    hub = app.state.live
    watch = AlarmWatch(desk.alarms, lambda s: hub.broadcast("alarms", summary_out(s).model_dump_json()))
    # An alarm raised, re-raised, acknowledged, resolved or escalated by any writer (not every stored event: a
    # recount per event held the store up to 50 times a second; docs/performance.md "Fan-out").
    desk.alarms.on_write(watch.wake)
    desk.alarms.listeners.append(watch.wake)      # an operator acknowledged or resolved
    if not hasattr(app.state, "jobs"):
        app.state.jobs = []
    app.state.jobs.append(watch)
    app.state.alarm_watch = watch
    route.install(app)


def _service(request: Request) -> Alarms:
    return request.app.state.desk.alarms  # type: ignore[no-any-return]


# ------------------------------------------------------------------- counter


class SummaryOut(BaseModel):
    open: int = Field(description="alarms not yet resolved")
    unacknowledged: int
    by_priority: dict[str, int] = Field(description="open alarms per priority: high, medium, low")
    unacknowledged_by_priority: dict[str, int]
    escalated: int = Field(description="unacknowledged alarms past their escalation time")
    ring: list[str] = Field(description="unacknowledged high-priority alarm ids, newest first: a new one rings")
    escalated_ids: list[str] = Field(description="escalated alarm ids: a new one plays the escalation sound")
    sound: bool | None = Field(default=None, description="the caller's alarm sound setting (GET only)")


def summary_out(s: AlarmSummary, sound: bool | None = None) -> SummaryOut:
    return SummaryOut(open=s.open, unacknowledged=s.unacknowledged, by_priority=s.by_priority,
                      unacknowledged_by_priority=s.unacknowledged_by_priority, escalated=s.escalated,
                      ring=list(s.ring), escalated_ids=list(s.escalated_ids), sound=sound)


def sound_on(request: Request, who: Principal) -> bool:
    return _service(request).sound_on(who.name)


def nav_context(request: Request, who: Principal | None) -> dict[str, Any] | None:
    """The counter as the page is rendered (base.html), for the roles that see alarms; None for others."""
    if who is None or who.role not in (ADMIN, DESK) or getattr(who, "must_enrol", False):
        return None
    s = _service(request).summary()
    return {"summary": summary_out(s), "json": summary_out(s).model_dump_json(), "sound": sound_on(request, who)}


@route(API_PREFIX + "/alarms/summary", "GET", response_model=SummaryOut, tags=["alarms"],
       summary="The alarm counter: open and unacknowledged alarms by priority, escalations")
def api_summary(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> SummaryOut:
    return summary_out(_service(request).summary(), sound_on(request, who))


class SoundIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on: bool = Field(description="play a sound on a new high-priority alarm and on an escalation")


class SoundOut(BaseModel):
    on: bool


def _set_sound(request: Request, who: Principal, on: bool) -> None:
    _service(request).set_sound(who.name, on)


@route(API_PREFIX + "/me/alarm-sound", "PUT", response_model=SoundOut, tags=["alarms"],
       summary="Turn the caller's alarm sound on or off (remembered for the operator)")
def api_sound(body: SoundIn, request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> SoundOut:
    _set_sound(request, who, body.on)
    return SoundOut(on=body.on)


def _back(target: str) -> str:
    """Only a path on this site (never ``//host``): no open redirect through the form."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/alarms"


@route("/alarms/sound", "POST", include_in_schema=False)
def sound_form(request: Request, on: str = Form("on", pattern="^(on|off)$"), back: str = Form("/", max_length=300),
               who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    _set_sound(request, who, on == "on")
    return RedirectResponse(_back(back), status_code=303)


@lru_cache(maxsize=None)
def tone_wav(kind: str) -> bytes:
    """A short sound as a WAV (8 kHz, 8-bit mono), made here so nothing is fetched from elsewhere.

    ``alarm``: a two-tone call (880/660 Hz, twice); ``escalation``: three fast high beeps (1320 Hz) — distinct
    by pitch and rhythm, so an operator tells them apart without looking."""
    rate = 8000
    parts = [(880, .18), (660, .18), (880, .18), (660, .18)] if kind == "alarm" else \
        [(1320, .09), (0, .06), (1320, .09), (0, .06), (1320, .09), (0, .06), (1760, .25)]
    frames = bytearray()
    for freq, seconds in parts:
        n = int(rate * seconds)
        for i in range(n):
            fade = min(1.0, i / 80, (n - i) / 80)  # no click at each edge
            value = math.sin(2 * math.pi * freq * i / rate) * 0.6 * fade if freq else 0.0
            frames += struct.pack("B", int(128 + 127 * value))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return buf.getvalue()


@route("/sounds/{kind}.wav", "GET", include_in_schema=False, dependencies=[Depends(require(ADMIN, DESK))])
def sound_file(kind: str = Path(pattern="^(alarm|escalation)$")) -> Response:
    return Response(tone_wav(kind), media_type="audio/wav", headers={"Cache-Control": "private, max-age=86400"})


# ------------------------------------------------------------------- bulk


class FilterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    priority: str | None = Field(default=None, pattern="^(high|medium|low)$")
    type: str | None = Field(default=None, max_length=64)
    door: str | None = Field(default=None, max_length=64)
    state: str | None = Field(default=None, pattern="^(active|cleared)$")
    unacknowledged: bool = False


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[str] | None = Field(default=None, max_length=MAX_BULK, description="these alarms")
    filter: FilterIn | None = Field(default=None, description="or every open alarm matching this filter")
    note: str = Field(default="", max_length=MAX_NOTE, description="resolve only; required when any of the "
                                                                   "alarms is high priority")


class BulkOut(BaseModel):
    changed: list[str] = Field(description="ids acknowledged / resolved now")
    unchanged: list[str] = Field(description="ids already acknowledged / resolved")
    missing: list[str] = Field(description="ids that no longer exist")


def _bulk_out(r: BulkResult) -> BulkOut:
    return BulkOut(changed=[a.id for a in r.changed], unchanged=[a.id for a in r.unchanged], missing=r.missing)


def _selected(request: Request, body: BulkIn) -> list[str] | JSONResponse:
    if (body.ids is None) == (body.filter is None):
        return JSONResponse({"error": "send either ids or filter", "detail": [
            {"loc": ["body", "ids"], "msg": "send either ids or filter, not both or neither", "type": "value_error"}]},
            status_code=422)
    if body.ids is not None:
        bad = [i for i in body.ids if not re.match(ALARM_ID, i)]
        if bad:
            return JSONResponse({"error": f"not an alarm id: {bad[0][:60]!r}", "detail": [
                {"loc": ["body", "ids"], "msg": "not an alarm id", "type": "value_error"}]}, status_code=422)
        return body.ids
    assert body.filter is not None
    return [a.id for a in _service(request).open(AlarmFilter(**body.filter.model_dump()))]


def note_error(exc: AlarmError) -> JSONResponse:
    """422 with the note as the field at fault (a high-priority alarm needs one, or it is too long)."""
    return JSONResponse({"error": str(exc), "detail": [{"loc": ["body", "note"], "msg": str(exc),
                                                        "type": "missing_note" if isinstance(exc, NoteMissing)
                                                        else "value_error"}]}, status_code=422)


@route(API_PREFIX + "/alarms/acknowledge", "POST", response_model=BulkOut, tags=["alarms"],
       summary="Acknowledge many alarms: by ids, or every open alarm matching a filter (each audited)")
def api_acknowledge_many(body: BulkIn, request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    ids = _selected(request, body)
    if isinstance(ids, JSONResponse):
        return ids
    return _bulk_out(_service(request).acknowledge_many(ids, who.name))


@route(API_PREFIX + "/alarms/resolve", "POST", response_model=BulkOut, tags=["alarms"],
       summary="Resolve many alarms with one note (required when any is high priority; each audited)")
def api_resolve_many(body: BulkIn, request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    ids = _selected(request, body)
    if isinstance(ids, JSONResponse):
        return ids
    try:
        return _bulk_out(_service(request).resolve_many(ids, body.note, who.name))
    except AlarmError as exc:
        return note_error(exc)


# ------------------------------------------------------------------- page


def page_filter(priority: str, type_: str, door: str, state: str, unacknowledged: str) -> AlarmFilter:
    """The page's query (or the bulk form's hidden fields) as a filter; unknown values are ignored."""
    return AlarmFilter(priority=priority if priority in PRIORITIES else None, type=type_[:64] or None,
                       door=door[:64] or None, state=state if state in ("active", "cleared") else None,
                       unacknowledged=unacknowledged in ("1", "on", "true"))


def door_states(request: Request) -> dict[str, str]:
    """door id -> its physical state now: offline, open, unlocked, locked or unknown (from the owning edge's
    retained ``state`` message and supervision; the board's open alarms are not mixed in)."""
    from server.web.api import door_list

    server = request.app.state.desk.server
    raw_states: dict[str, dict[str, Any]] = {}
    for device, raw in list(server.bus.states.items()):
        try:
            doors = json.loads(raw).get("doors") or {}
        except (ValueError, AttributeError):
            continue
        if isinstance(doors, dict):
            raw_states.update({d: s for d, s in doors.items()
                               if isinstance(s, dict) and server.bus.door_devices.get(d) == device})
    out = {}
    for d in door_list(request):
        st = raw_states.get(d.id)
        if d.device_status in ("offline", "stopped"):
            out[d.id] = "offline"
        elif st is None:
            out[d.id] = "unknown"
        elif st.get("open") is True:
            out[d.id] = "open"
        elif st.get("relay") is True or st.get("state") == "unlocked":
            out[d.id] = "unlocked"
        else:
            out[d.id] = "locked"
    return out


def snapshots(request: Request, alarms: list[Alarm]) -> dict[str, dict[str, str | None]]:
    """alarm id -> the snapshot of the event that raised it, under the live feed's access rules (a visitor
    who declined photos: withheld): ``{"state": ready | pending | withheld | none, "url": ...}``."""
    from server.web.live import stored_row

    desk = request.app.state.desk
    out: dict[str, dict[str, str | None]] = {}
    for a in alarms:
        row = stored_row(desk.events, desk.server.site, a.source_event) if a.source_event else None
        out[a.id] = {"state": row.snapshot, "url": row.snapshot_url, "time": row.local_time} if row else \
            {"state": "none", "url": None, "time": None}
    return out


def bulk_form_ids(scope: str, ids: list[str], request: Request, flt: AlarmFilter) -> list[str]:
    if scope == "filter":
        return [a.id for a in _service(request).open(flt)]
    return [i for i in ids if len(i) <= 200][:MAX_BULK]


__all__ = ["install", "nav_context", "page_filter", "door_states", "snapshots", "tone_wav"]
