"""The live view: every door event as it happens, pushed to browsers by server-sent events (docs/desk.md).

``GET /api/v1/events/stream`` (``text/event-stream``) sends one ``row`` message per new event (time, door,
person, decision, reason, snapshot state) and a ``snapshot`` message when an event's snapshot lands after
the event did, so "snapshot pending" turns into the picture without a reload. ``GET /api/v1/events`` is
the same rows from the store, newest first, a page at a time; ``GET /api/v1/snapshots/{id}`` the JPEG.
One filter (:class:`EventFilter`, built and checked by :func:`build_filter`: door, area, person, decision,
reason, event kinds, time range) serves the history, the stream and the CSV export (server/web/export.py),
so what the operator sees, what arrives live and what they download are the same set of events.

Stored rows come from the event log (server/eventlog.py, a read service over the store). The server's store
thread learns of events and snapshots through the bus's listener hooks (server/bus.py), and of the events the
server makes itself (``visitor_arrived``) through the event log's listeners; each message goes to
:class:`LiveHub`, which copies it into every connected client's
own bounded queue on that client's event loop. A browser that does not keep up fills its queue and is cut
off (its EventSource reconnects and resumes from ``Last-Event-ID``): the store thread never waits for a
browser, and a client that went away is removed when its response ends.

A stream shows names, so it lives no longer than the login that opened it. When an operator is disabled, an
API token revoked or a session ended (logout, disable) in this process, the operator service tells the hub
(:class:`server.operators.Revocations`) and the matching streams end at once, dropping what they had
queued. As a backstop (a ``doorkeep user disable`` in another process, a session reaching its time limit)
every stream re-checks its caller's login at least every :data:`RECHECK_S`, whether or not messages flow,
and ends with an ``end`` message when the login is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, AsyncIterator
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from doorkeep import vocabulary
from doorkeep.contract import EventMsg
from doorkeep.model import PersonKind, Site
from server.eventlog import DEFAULT_KINDS, KINDS, EventLog, event_kind, kind_types
from server.sessions import Principal
from server.web.access import identify, require
from server.web.api import ERRORS, ErrorOut
from server.web.audit import FilterError, parse_when
from server.web.roles import ADMIN, DESK

log = logging.getLogger("doorkeep.server.desk")

API_PREFIX = "/api/v1"
#: Messages a client may have waiting before it is cut off as too slow (it reconnects and catches up).
CLIENT_QUEUE = 256
#: A comment line this often keeps proxies from closing an idle stream.
HEARTBEAT_S = 15.0
#: The caller's login is re-checked at least this often, busy or idle (the revocation notice is faster).
RECHECK_S = 1.0
#: At most this many stored rows are replayed to a client that reconnects with ``Last-Event-ID``.
RESUME_MAX = 200
EVENT_ID = r"^[A-Za-z0-9_.:-]{1,128}$"


# --------------------------------------------------------------------------- rows


class EventRowOut(BaseModel):
    cursor: int = Field(description="arrival order; pass as ?before= for older rows")
    id: str
    ts: str = Field(description="when it happened, by the device's clock (ISO 8601, UTC)")
    local_time: str = Field(description="ts in the site's time zone, HH:MM:SS")
    local_date: str = Field(default="", description="ts's date in the site's time zone, YYYY-MM-DD")
    zone: str = Field(default="", description="the site's time zone as the clock shows it then (CET, CEST, UTC)")
    kind: str = Field(default="system", description="badge, alarm, door (door movements) or system "
                                                    "(server/eventlog.py event_kind)")
    why_url: str | None = Field(default=None, description="a refused badge: where the desk explains why")
    type: str
    door: str
    door_name: str
    person: str | None
    person_name: str = Field(description="the person's name (site people and visitors), a card's last digits, or —")
    person_kind: str | None
    decision: str | None
    reason: str | None
    reason_label: str | None = Field(default=None, description="the reason as the desk shows it "
                                     "(doorkeep/vocabulary.py, docs/reason-codes.md); an unknown code as it is")
    snapshot: str = Field(description="ready, pending (expected, not arrived yet), withheld (the visitor "
                                      "declined photos) or none")
    snapshot_url: str | None
    photo_url: str | None = Field(default=None, description="the person's cardholder photo (GET, JPEG), to "
                                  "compare with the snapshot; only when they have one (server/photos.py)")
    detail: dict[str, Any]
    companions: list[str] = Field(default_factory=list, description="a grant: the names of the people who passed "
                                  "with the badge (an escorted visitor or their escort, the first of two), "
                                  "offline grants included")
    grant_label: str | None = Field(default=None, description="a grant: the rule behind it as the desk shows it "
                                    "(for granted_offline, the rule the edge applied)")
    floors: list[str] = Field(default_factory=list, description="an access event at a lift: the floors the badge "
                              "enabled (detail.floors), by name")
    floor: str | None = Field(default=None, description="at a lift, by name: the floor chosen (floor_chosen), or the "
                              "destination asked for before the badge (an access event's detail.floor)")
    grant_url: str | None = Field(default=None, description="a passage, floor chosen, unused grant or tailgate: "
                                  "the event page of the badge it used (detail.grant)")


class EventPageOut(BaseModel):
    events: list[EventRowOut] = Field(description="newest first")
    next_before: int | None = Field(description="pass as ?before= for the next (older) page; null at the end")


def person_label(site: Site, person: str | None, last4: str | None) -> tuple[str, str | None]:
    """The name to show and the person's kind: people of the site and visitors by name, else the card."""
    p = site.people.get(person) if person else None
    if p is not None:
        return p.name, p.kind.value
    if last4:
        return f"card …{last4}", None
    return (person or "—"), None


def event_row(row: dict[str, Any], site: Site, events: EventLog) -> EventRowOut:
    """One stored event (``Store.event``/``events`` shape plus ``cursor``) as the live view shows it."""
    name, kind = person_label(site, row.get("person"), row.get("credential_last4"))
    door = site.doors.get(row["door"])
    if not row.get("snapshot"):
        snap = "none"
    elif kind == PersonKind.VISITOR.value and events.photo_declined(row.get("person")):
        snap = "withheld"
    else:
        snap = "ready" if row.get("snapshot_path") else "pending"
    local_date = zone = ""
    try:
        local = datetime.fromisoformat(row["ts"].replace("Z", "+00:00")).astimezone(ZoneInfo(site.timezone))
        local_time, local_date, zone = local.strftime("%H:%M:%S"), local.strftime("%Y-%m-%d"), local.tzname() or ""
    except (ValueError, KeyError, ZoneInfoNotFoundError):
        local_time = row["ts"]
    detail = row.get("detail") or {}
    if isinstance(detail, str):
        try:
            detail = json.loads(detail)
        except ValueError:
            detail = {}
    if row["type"] == "visitor_arrived" and isinstance(detail.get("host"), str):
        detail = {**detail, "host_name": person_label(site, detail["host"], None)[0]}
    photo = events.photo_id(row.get("person")) if row.get("person") and row.get("decision") else None
    try:
        with_ids = json.loads(row["companions"]) if row.get("companions") else []
    except ValueError:
        with_ids = []
    companions = [person_label(site, p, None)[0] for p in with_ids if isinstance(p, str)]
    floors, floor, grant_url = _lift_words(site, row["type"], detail)
    return EventRowOut(
        cursor=int(row["cursor"]), id=row["id"], ts=row["ts"], local_time=local_time, local_date=local_date,
        zone=zone, kind=event_kind(row["type"]),
        why_url=f"/events/{quote(row['id'], safe='')}#why" if row.get("decision") == "denied" else None,
        type=row["type"],
        door=row["door"], door_name=door.name if door else (row["door"] or "security desk"),
        person=row.get("person"), person_name=name, person_kind=kind, decision=row.get("decision"),
        reason=row.get("reason"), reason_label=vocabulary.reason_label(row.get("reason")), snapshot=snap,
        snapshot_url=f"{API_PREFIX}/snapshots/{row['snapshot']}" if snap == "ready" else None,
        photo_url=f"{API_PREFIX}/people/{quote(row['person'], safe='')}/photo?v={photo[:12]}" if photo else None,
        detail=detail, companions=companions,
        grant_label=vocabulary.reason_label(row.get("grant")) if row.get("grant") else None,
        floors=floors, floor=floor, grant_url=grant_url)


#: The events whose detail names the grant they followed (docs/mqtt.md): their page links to that badge.
GRANT_FOLLOWERS = frozenset({"passage", "floor_chosen", "grant_unused", "tailgate"})


def _lift_words(site: Site, etype: str, detail: dict[str, Any]) -> tuple[list[str], str | None, str | None]:
    """A lift's floors named (the floors a badge enabled, the floor chosen or asked for) and the link to the grant
    an event followed; what a malformed detail holds is left out, never shown as ids."""
    raw = detail.get("floors")
    floors = [area_label(site, a) for a in raw if isinstance(a, str)] if isinstance(raw, list) else []
    floor = area_label(site, detail["floor"]) if isinstance(detail.get("floor"), str) else None
    grant = detail.get("grant")
    url = f"/events/{quote(grant, safe='')}" if etype in GRANT_FOLLOWERS and isinstance(grant, str) and grant \
        else None
    return floors, floor, url


def area_label(site: Site, area: str) -> str:
    """An area's name; an id the site no longer knows, as it is."""
    found = site.areas.get(area)
    return found.name if found is not None else area


@dataclass(frozen=True)
class EventFilter:
    """The live view's filters; the same ones apply to the history, the stream and the CSV export.

    Build one from request parameters with :func:`build_filter` (which checks them); the fields hold what the
    store compares: ids for door and area (the desk shows their names), stored ``ts`` text for the range."""

    door: str | None = None
    person: str | None = None    # a person id, or part of a name (case-insensitive)
    decision: str | None = None  # granted | denied
    area: str | None = None      # an area id: events at the doors into or out of it
    reason: str | None = None    # a reason code (doorkeep/vocabulary.py)
    kinds: frozenset[str] | None = None  # event kinds shown (server/eventlog.py KINDS); None: all
    since: str | None = None     # ts >= since (UTC, stored text)
    until: str | None = None     # ts < until

    def person_ids(self, site: Site) -> set[str] | None:
        if not self.person:
            return None
        needle = self.person.casefold()
        return {pid for pid, p in site.people.items() if pid == self.person or needle in p.name.casefold()}

    def area_doors(self, site: Site) -> list[str] | None:
        """The doors into or out of the area (a lift serving it as a floor among them; an unknown area: none), or
        None without an area filter."""
        if not self.area:
            return None
        return sorted(d.id for d in site.doors.values() if self.area in (d.from_area, *d.entered))

    def matches(self, row: EventRowOut, site: Site, ids: set[str] | None = None) -> bool:
        """``ids``: :meth:`person_ids` computed once for many rows (the person filter scans every person)."""
        if self.door and row.door != self.door:
            return False
        if self.decision and row.decision != self.decision:
            return False
        if self.reason and row.reason != self.reason:
            return False
        if self.kinds is not None and row.kind not in self.kinds:
            return False
        if (self.since and row.ts < self.since) or (self.until and row.ts >= self.until):
            return False
        if self.area and row.door not in (self.area_doors(site) or ()):
            return False
        if not self.person:
            return True
        return row.person in (ids if ids is not None else self.person_ids(site) or set())

    def params(self, site: Site) -> dict[str, str]:
        """The filter as API query parameters (times in the site's zone, as the operator wrote them)."""
        out = {"door": self.door or "", "area": self.area or "", "person": self.person or "",
               "decision": self.decision or "", "reason": self.reason or ""}
        if self.kinds is not None:
            out["kinds"] = ",".join(k for k in KINDS if k in self.kinds)
        for name, ts in (("since", self.since), ("until", self.until)):
            if ts:
                out[name] = local_text(ts, site.timezone)
        return {k: v for k, v in out.items() if v or k == "kinds"}


def local_text(ts: str, tz: str) -> str:
    """A stored UTC ``ts`` as the site's local ``YYYY-MM-DDTHH:MM`` (what a datetime-local field holds)."""
    try:
        moment = datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(ZoneInfo(tz))
    except (ValueError, ZoneInfoNotFoundError):
        return ts
    return moment.strftime("%Y-%m-%dT%H:%M" + (":%S" if moment.second else ""))


def build_filter(site: Site, *, door: str | None = None, area: str | None = None, person: str | None = None,
                 decision: str | None = None, reason: str | None = None, kinds: str | None = None,
                 since: str | None = None, until: str | None = None) -> EventFilter:
    """The filter an operator asked for (empty = no filter); raises :class:`FilterError` naming the bad one.

    ``kinds`` is a comma list of :data:`server.eventlog.KINDS` (absent: all; empty: none); ``since`` and
    ``until`` are times in the site's zone unless they name their own (``2026-11-30T08:00``, ``2026-11-30``)."""
    if decision and decision not in ("granted", "denied"):
        raise FilterError("decision", "decision is granted or denied")
    if reason and reason not in vocabulary.REASONS:
        raise FilterError("reason", f"reason is a reason code ({', '.join(vocabulary.REASONS)})")
    chosen: frozenset[str] | None = None
    if kinds is not None:
        chosen = frozenset(k for k in kinds.split(",") if k.strip())
        unknown = sorted(chosen - set(KINDS))
        if unknown:
            raise FilterError("kinds", f"kinds is a comma list of {', '.join(KINDS)} (not {', '.join(unknown)})")
        if set(KINDS) <= chosen:
            chosen = None
    since_ts = parse_when("since", since, site.timezone) if since and since.strip() else None
    until_ts = parse_when("until", until, site.timezone) if until and until.strip() else None
    if since_ts and until_ts and until_ts <= since_ts:
        raise FilterError("until", "until must be later than since")
    return EventFilter(door=door or None, person=(person or "").strip() or None, decision=decision or None,
                       area=area or None, reason=reason or None, kinds=chosen, since=since_ts, until=until_ts)


def history(events: EventLog, site: Site, flt: EventFilter, *, before: int | None = None,
            after: int | None = None, limit: int = 50) -> tuple[list[EventRowOut], bool]:
    """Stored events matching ``flt``, newest first (or oldest first with ``after``); and whether more exist."""
    ids = flt.person_ids(site)
    if ids is not None and not ids:
        return [], False
    rows = events.page(before=before, after=after, door=flt.door or None, decision=flt.decision or None,
                       people=sorted(ids) if ids is not None else None, doors=flt.area_doors(site),
                       types=kind_types(flt.kinds) if flt.kinds is not None else None, reason=flt.reason,
                       since=flt.since, until=flt.until, limit=limit + 1)
    return [event_row(r, site, events) for r in rows[:limit]], len(rows) > limit


def stored_row(events: EventLog, site: Site, event_id: str) -> EventRowOut | None:
    row = events.get(event_id)
    return event_row(row, site, events) if row else None


# --------------------------------------------------------------------------- hub


@dataclass(eq=False)
class Client:
    """One open stream: its own bounded queue of ready SSE frames, filled on its own event loop.

    The stream drains everything queued at each wake-up and writes it as one chunk (a busy feed costs one
    HTTP write per client per loop turn, not one per message), and waits on :attr:`waiter`, a bare future
    that :meth:`offer` and :meth:`end` resolve, rather than ``asyncio.wait_for(queue.get())``, which made a
    task and a timer per message."""

    loop: asyncio.AbstractEventLoop
    flt: EventFilter
    who: Principal | None = None  # the login that opened the stream
    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(maxsize=CLIENT_QUEUE))
    dropped: bool = False
    gone: bool = False  # the browser closed the connection
    revoked: str | None = None  # why the login ended (the stream then ends at once and delivers nothing more)
    valid_until: float | None = None  # a session's end by the desk's clock, if idle from the last re-check on
    rows: bool = True  # False: a stream opened with ?only=alarms (the nav's alarm counter): no event rows
    waiter: asyncio.Future[None] | None = None  # the stream waiting for something to send (on its loop)

    def revoke(self, reason: str) -> None:
        """On the client's loop: the login behind the stream ended; drop what is queued and end the stream."""
        if self.revoked is None:
            self.revoked = reason
            self.end()

    def revoked_by(self, kind: str, value: str) -> bool:
        """Whether a revocation ``(kind, value)`` (server/operators.py Revocations) ends this stream."""
        who = self.who
        if who is None:
            return False
        return ((kind == "operator" and who.name == value) or (kind == "token" and who.token_id == value)
                or (kind == "session" and who.session_hash == value))

    def wake(self) -> None:
        """On the client's loop: let the waiting stream run (something was queued, or it is time to re-check)."""
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def end(self) -> None:
        """On the client's loop: the browser went away; wake the stream so it ends now, not at the heartbeat."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)
        self.wake()

    def offer(self, item: bytes | tuple[str, str, str]) -> None:
        """On the client's loop: queue an SSE frame (bytes from :func:`sse`, or its ``(kind, id, data)``), or cut
        the client off when it is too far behind."""
        if self.dropped or self.revoked is not None:
            return
        try:
            self.queue.put_nowait(item if isinstance(item, bytes) else sse(*item))
        except asyncio.QueueFull:
            self.dropped = True
            self.end()  # the stream ends; the browser reconnects and resumes
            return
        self.wake()


class LiveHub:
    """Fans new events and snapshots out to the open streams; called from the server's store thread.

    Each message is serialised and framed once (:func:`sse`), whatever the number of streams. The frames for
    one event loop are handed over in one ``call_soon_threadsafe`` (:meth:`_deliver`), not one per client per
    message: at 20 desks and 200 events/s the per-client hop was 4,000 wake-ups of the desk's loop a second,
    each a write to its self-pipe and a switch of the interpreter lock, and the feed's delay grew with them
    (docs/performance.md, "Fan-out"). While a hand-over waits for its loop to run, later frames join it."""

    def __init__(self, server: Any, events: EventLog) -> None:
        self.server = server
        self.events = events
        self._clients: set[Client] = set()
        self._clients_lock = threading.Lock()  # guards this hub's own set of open streams (not the store)
        #: frames waiting for their loop to run :meth:`_flush`, per loop; a loop is a key only while its
        #: flush is scheduled (guarded by ``_pending_lock``)
        self._pending: dict[asyncio.AbstractEventLoop, list[tuple[Client, bytes]]] = {}
        self._pending_lock = threading.Lock()
        self.dropped = 0  # clients cut off for being too slow (counted for the log and tests)

    @property
    def clients(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def attach(self) -> None:
        bus = self.server.bus
        bus.listeners.append(self.on_event)
        bus.snapshot_listeners.append(self.on_snapshot)
        self.events.listeners.append(self.on_server_event)

    def detach(self) -> None:
        bus = self.server.bus
        for hooks, fn in ((bus.listeners, self.on_event), (bus.snapshot_listeners, self.on_snapshot),
                          (self.events.listeners, self.on_server_event)):
            if fn in hooks:
                hooks.remove(fn)  # type: ignore[arg-type]

    def add(self, client: Client) -> None:
        with self._clients_lock:
            self._clients.add(client)

    def remove(self, client: Client) -> None:
        with self._clients_lock:
            self._clients.discard(client)
        if client.dropped:
            self.dropped += 1
            log.info("live feed: a client fell %d messages behind and was cut off (it reconnects)", CLIENT_QUEUE)

    def _row_clients(self) -> bool:
        with self._clients_lock:
            return any(c.rows for c in self._clients)

    def end_all(self, reason: str = "the desk is stopping") -> int:
        """End every open stream now (any thread), with an ``end`` message naming ``reason``: a stopping desk
        must not wait for browsers that would keep their streams open for ever. Returns how many were open."""
        with self._clients_lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.loop.call_soon_threadsafe(client.revoke, reason)
            except RuntimeError:  # its loop is closed: the client is gone
                self.remove(client)
        return len(clients)

    def revoked(self, kind: str, value: str) -> None:
        """Revocation listener (any thread): end every open stream of that operator, token or session now."""
        with self._clients_lock:
            clients = [c for c in self._clients if c.revoked_by(kind, value)]
        reason = {"operator": "operator disabled", "token": "token revoked", "session": "logged out"}.get(kind, kind)
        for client in clients:
            try:
                client.loop.call_soon_threadsafe(client.revoke, reason)
            except RuntimeError:  # its loop is closed: the client is gone
                self.remove(client)

    def on_event(self, ev: EventMsg, new: bool) -> None:
        """Bus listener (store thread): a new event is stored; push its row to every matching client."""
        if not new or not self._row_clients():  # most pages hold only the alarm counter's stream: no row read
            return
        site = self.server.site
        row = stored_row(self.events, site, ev.id)
        if row is not None:
            self.push("row", str(row.cursor), row.model_dump_json(), row=row, site=site)

    def on_server_event(self, ev: EventMsg) -> None:
        """Event log listener: an event the server made itself (``visitor_arrived``) is stored; push it too."""
        self.on_event(ev, True)

    def on_snapshot(self, snapshot_id: str, device: str, door: str) -> None:
        """Bus listener (store thread): a snapshot landed; rows showing "pending" for it can load it now."""
        if not self._row_clients():
            return
        site = self.server.site
        row = stored_row(self.events, site, snapshot_id)
        if row is not None and row.snapshot == "ready":
            data = json.dumps({"id": row.id, "snapshot": row.snapshot, "snapshot_url": row.snapshot_url})
            self.push("snapshot", "", data, row=row, site=site)

    def broadcast(self, kind: str, data: str) -> None:
        """Any thread: a message for every open stream whatever its filters (``alarms``: the nav's counter,
        server/web/alarm_desk.py)."""
        frame = sse(kind, "", data)
        with self._clients_lock:
            clients = list(self._clients)
        self._deliver([(client, frame) for client in clients])

    def push(self, kind: str, msg_id: str, data: str, *, row: EventRowOut, site: Site) -> None:
        """Any thread: a row (or its snapshot) for every stream of rows whose filter it matches."""
        frame = sse(kind, msg_id, data)
        with self._clients_lock:
            clients = list(self._clients)
        people: dict[str, set[str]] = {}  # person filter -> the ids it names, once per message
        chosen: list[tuple[Client, bytes]] = []
        for client in clients:
            if not client.rows:
                continue
            flt = client.flt
            ids = people.setdefault(flt.person, flt.person_ids(site) or set()) if flt.person else None
            if flt.matches(row, site, ids):
                chosen.append((client, frame))
        self._deliver(chosen)

    def _deliver(self, frames: list[tuple[Client, bytes]]) -> None:
        """Hand frames to their clients' loops (any thread), one wake-up per loop however many clients."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Client, bytes]]] = {}
        for client, frame in frames:
            by_loop.setdefault(client.loop, []).append((client, frame))
        for loop, items in by_loop.items():
            with self._pending_lock:
                waiting = self._pending.get(loop)
                if waiting is not None and not loop.is_closed():  # its flush is scheduled: it takes these too
                    waiting.extend(items)
                    continue
                self._pending[loop] = items if waiting is None else [*waiting, *items]
            try:
                loop.call_soon_threadsafe(self._flush, loop)
            except RuntimeError:  # the loop is closed (its scheduled flush never ran): its clients are gone
                with self._pending_lock:
                    lost = self._pending.pop(loop, [])
                for client in {c for c, _ in lost}:
                    self.remove(client)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """On ``loop``: queue the frames handed over for its clients, in the order they came."""
        with self._pending_lock:
            items = self._pending.pop(loop, [])
        for client, frame in items:
            client.offer(frame)


def sse(kind: str, msg_id: str, data: str) -> bytes:
    """One server-sent event; ``data`` is JSON (one line), so it needs no further framing."""
    head = f"event: {kind}\n" + (f"id: {msg_id}\n" if msg_id else "")
    return (head + f"data: {data}\n\n").encode()


# --------------------------------------------------------------------------- routes


async def _stream(request: Request, hub: LiveHub, client: Client, resume: int | None) -> AsyncIterator[bytes]:
    desk = request.app.state.desk
    hub.add(client)  # here, not in the handler: only a response that runs can be cleaned up by its `finally`

    async def watch() -> None:
        # ASGI 2.4 servers report a closed connection only through receive(), never to a waiting stream.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        client.gone = True
        client.end()

    watcher = asyncio.ensure_future(watch())
    loop = asyncio.get_running_loop()

    def check() -> bool:
        who = identify(desk.auth, request)
        if who is None or who.role not in (ADMIN, DESK) or who.must_enrol:
            return False
        if who.session_hash is not None:
            client.valid_until = desk.auth.sessions.expires_at(who.session_hash)
        return True

    async def still_allowed() -> bool:
        return await run_in_threadpool(check)

    def expired() -> bool:
        """The session's own time limit passed since the last re-check (no store access: the clock only)."""
        return client.valid_until is not None and desk.auth.clock.wall() >= client.valid_until

    def ended() -> bytes:
        return sse("end", "", json.dumps({"reason": client.revoked or "logged out"}))

    timer: asyncio.TimerHandle | None = None
    try:
        yield b"retry: 2000\n\n"
        if not await still_allowed():  # also learns the session's time limit, checked before every message
            client.revoked = "logged out"
        if resume is not None and client.rows:
            rows, _ = await run_in_threadpool(history, desk.events, desk.server.site, client.flt,
                                              after=resume, limit=RESUME_MAX)
            if rows and client.revoked is None:
                yield b"".join(sse("row", str(row.cursor), row.model_dump_json()) for row in rows)
        recheck_due = False

        def due() -> None:  # on the loop, every RECHECK_S: re-check the login even when nothing flows
            nonlocal recheck_due
            recheck_due = True
            client.wake()

        checked = idle_since = loop.time()
        timer = loop.call_at(checked + RECHECK_S, due)
        while True:
            if client.revoked is not None:
                yield ended()
                return
            if recheck_due or loop.time() - checked >= RECHECK_S or expired():  # on a timer, busy or idle
                if not await still_allowed():
                    client.revoked = client.revoked or "logged out"
                    yield ended()
                    return
                checked, recheck_due = loop.time(), False
                timer.cancel()
                timer = loop.call_at(checked + RECHECK_S, due)
            if client.queue.empty():
                client.waiter = loop.create_future()
                try:
                    await client.waiter
                finally:
                    client.waiter = None
                if client.queue.empty():  # the re-check timer
                    if loop.time() - idle_since >= HEARTBEAT_S:
                        yield b": keep-alive\n\n"
                        idle_since = loop.time()
                    continue
            # Everything queued since the last write goes out as one chunk: one HTTP write per loop turn.
            frames: list[bytes] = []
            last = False
            while not client.queue.empty():
                item = client.queue.get_nowait()
                if item is None:
                    last = True
                    break
                frames.append(item)
            if client.revoked is not None:
                continue  # revoked while these waited: never delivered
            if frames and expired() and not await still_allowed():
                client.revoked = "logged out"
                continue
            if frames:
                yield b"".join(frames)
                idle_since = loop.time()
            if last:
                if not client.gone:
                    yield sse("end", "", json.dumps({"reason": "too slow: reconnect"}))
                return
    finally:
        if timer is not None:
            timer.cancel()
        watcher.cancel()
        hub.remove(client)


def filter_query(request: Request, door: str | None = Query(None, max_length=64, description="a door id"),
                 area: str | None = Query(None, max_length=64, description="an area id: events at its doors"),
                 person: str | None = Query(None, max_length=128, description="a person id or part of a name"),
                 decision: str | None = Query(None, pattern="^(granted|denied)$"),
                 reason: str | None = Query(None, max_length=64, description="a reason code"),
                 kinds: str | None = Query(None, max_length=64, description="comma list of badge, alarm, door, "
                                           "system (absent: all)"),
                 since: str | None = Query(None, max_length=40, description="from this time (site's zone)"),
                 until: str | None = Query(None, max_length=40, description="before this time (site's zone)"),
                 ) -> EventFilter:
    """The shared filter parameters of the history, the stream and the export; a bad one is a 422 naming it."""
    try:
        return build_filter(request.app.state.desk.server.site, door=door, area=area, person=person,
                            decision=decision, reason=reason, kinds=kinds, since=since, until=until)
    except FilterError as exc:
        raise RequestValidationError([{"loc": ("query", exc.param), "msg": str(exc), "type": "value_error",
                                       "input": None}]) from exc


def page_filter(site: Site, query: Any) -> tuple[EventFilter, str | None]:
    """The page's form (``kind`` checkboxes; ``f`` marks a submitted form, else door movements start off)."""
    kinds = ",".join(query.getlist("kind")) if query.get("f") else ",".join(sorted(DEFAULT_KINDS))
    fields = {k: (query.get(k) or "")[:128] for k in ("door", "area", "person", "decision", "reason", "since",
                                                      "until")}
    try:
        return build_filter(site, kinds=kinds, **fields), None
    except FilterError as exc:
        return build_filter(site, kinds=",".join(sorted(DEFAULT_KINDS))), str(exc)


def install(app: FastAPI) -> None:
    """The live-view API and page; the hub hangs on ``app.state.live`` and listens to the server's bus."""
    from server.web import export

    hub = LiveHub(app.state.desk.server, app.state.desk.events)
    hub.attach()
    app.state.desk.operators.revocations.subscribe(hub.revoked)
    app.state.live = hub
    roles = Depends(require(ADMIN, DESK))

    def events(request: Request, before: int | None = Query(None, ge=1, le=2**62),
               flt: EventFilter = Depends(filter_query), limit: int = Query(50, ge=1, le=500)) -> EventPageOut:
        desk = request.app.state.desk
        rows, more = history(desk.events, desk.server.site, flt, before=before, limit=limit)
        return EventPageOut(events=rows, next_before=rows[-1].cursor if more and rows else None)

    async def stream(request: Request, flt: EventFilter = Depends(filter_query),
                     after: int | None = Query(None, ge=0, le=2**62, description="replay stored rows after this "
                                               "cursor first (the newest the page already shows)"),
                     only: str | None = Query(None, pattern="^alarms$", description="alarms: only the alarm "
                                              "counter's messages, no event rows")) -> Response:
        last = request.headers.get("last-event-id", "")
        resume = int(last) if last.isdigit() and len(last) < 19 else after
        who = await run_in_threadpool(identify, request.app.state.desk.auth, request)
        client = Client(asyncio.get_running_loop(), flt, who, rows=only is None)
        return StreamingResponse(_stream(request, hub, client, resume), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    def snapshot(request: Request, snapshot_id: str = Path(pattern=EVENT_ID)) -> Response:
        desk = request.app.state.desk
        row = stored_row(desk.events, desk.server.site, snapshot_id)
        if row is not None and row.snapshot == "withheld":
            return JSONResponse({"error": "this visitor declined photos at check-in: the desk does not show "
                                          "their snapshots", "detail": None}, status_code=404)
        data = desk.events.snapshot(snapshot_id)
        if data is None:
            return JSONResponse({"error": f"no snapshot {snapshot_id!r} (not arrived yet, or removed by "
                                          "retention)", "detail": None}, status_code=404)
        return Response(data, media_type="image/jpeg")

    def page(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Response:
        from server.web.pages import render

        site = request.app.state.desk.server.site
        flt, error = page_filter(site, request.query_params)
        params = flt.params(site)
        kinds = flt.kinds if flt.kinds is not None else frozenset(KINDS)
        try:
            zone = datetime.now(ZoneInfo(site.timezone)).tzname() or site.timezone
        except (ValueError, ZoneInfoNotFoundError):
            zone = "UTC"
        return render(request, "live.html", who, status=422 if error else 200, error=error,
                      doors=sorted(site.doors.values(), key=lambda d: d.name),
                      areas=sorted(site.areas.values(), key=lambda a: a.name),
                      reasons=list(vocabulary.REASONS.values()), kinds=KINDS, chosen=kinds, flt=flt,
                      since=params.get("since", ""), until=params.get("until", ""), timezone=site.timezone,
                      zone=zone, query=urlencode(params))

    app.add_api_route(API_PREFIX + "/events", events, methods=["GET"], response_model=EventPageOut,
                      responses=ERRORS, dependencies=[roles], tags=["desk"],
                      summary="Door events, newest first, a page at a time (filters: door, area, person, "
                              "decision, reason, kinds, since, until)")
    app.add_api_route(API_PREFIX + "/events/stream", stream, methods=["GET"], dependencies=[roles], tags=["desk"],
                      responses={**ERRORS, 200: {"content": {"text/event-stream": {}},
                                                 "description": "server-sent events: row, snapshot, "
                                                                                "alarms, end"}},
                      summary="The live feed as server-sent events (resumes after Last-Event-ID)")
    export.install(app)
    app.add_api_route(API_PREFIX + "/snapshots/{snapshot_id}", snapshot, methods=["GET"], dependencies=[roles],
                      tags=["desk"], responses={**ERRORS, 200: {"content": {"image/jpeg": {}}},
                                                404: {"model": ErrorOut}},
                      summary="An event's snapshot (JPEG, decrypted in memory)")
    app.add_api_route("/live", page, methods=["GET"], include_in_schema=False)


__all__ = ["EventFilter", "LiveHub", "build_filter", "event_row", "filter_query", "history", "install",
           "stored_row"]
