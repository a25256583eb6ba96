"""The server's integration request API: integrations ask the server over MQTT, never an edge directly.

An integration with a certificate of its own (``doorkeep pki issue NAME --role integration``, not
``--read-only``) may publish on ``doorkeep/v1/SITE/server/integration/NAME/request`` and read
``.../NAME/response``: the generated broker ACL (doorkeep/pki.py ``broker_acl``) lets only the certificate NAME
publish there, so the NAME in the topic is the caller. The server subscribes to
``.../server/integration/+/request`` over its one MQTT connection (server/bus.py ``route``) and answers:

- request ``{"id": "<the caller's id>", "action": "status" | "unlock", "door": "<door id>"}`` (at most
  :data:`MAX_REQUEST_BYTES`);
- response ``{"schema": "doorkeep.integration_response/1", "id", "ok", "error", "result"}``.

``status`` returns the site's doors with what their edges last reported (no person, card or event);
``unlock`` is allowed only for the doors site.toml ``[integrations.NAME] unlock_doors`` lists (none by default),
rate-limited, audited as ``integration:NAME`` and sent as a normal signed command through
:class:`server.commands.CommandSender`; the response carries the edge's result.

paho's network thread only checks the size and the site-wide rate and queues the request; a worker thread
reads SITE/pki/index.json (a revoked or read-only integration is refused: defence in depth behind the ACL),
validates, carries out and answers, so a slow edge never holds up the MQTT connection. Anything malformed is
answered with an error where a response can be read (a live, non-read-only integration), counted and logged;
nothing escapes into the bus.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from doorkeep.clock import Clock
from doorkeep.config import SEGMENT, IntegrationSettings
from doorkeep.model import Site
from doorkeep.pki import PkiError, integration_topic, live_integrations
from server.audit import Auditor, record_audit
from server.counters import LockedCounter
from server.errors import ServerError
from server.ratelimit import RateWindow

log = logging.getLogger("doorkeep.server.integration_api")

SCHEMA = "doorkeep.integration_response/1"
ACTIONS = ("status", "unlock")
#: A request payload larger than this is refused (``too_large``) without being parsed.
MAX_REQUEST_BYTES = 4096
#: A request id longer than this (or not a string of printable characters) makes the request ``bad_request``.
MAX_ID_CHARS = 64
#: Requests taken in any minute, site-wide, on the network thread (more are dropped, counted, logged).
SITE_REQUESTS_PER_MINUTE = 240
#: Requests carried out for one integration in any minute (more are answered ``rate_limited``).
INTEGRATION_REQUESTS_PER_MINUTE = 60
#: Unlocks carried out for one door in any minute, whichever integration asks (more: ``rate_limited``, audited).
DOOR_UNLOCKS_PER_MINUTE = 6
#: Requests waiting for the worker; more are dropped.
REQUEST_QUEUE = 32
#: A request that waited longer than this is answered ``stale``: the caller has moved on.
REQUEST_MAX_AGE_S = 10.0


class IntegrationRequestError(ServerError, ValueError):
    """A request that is refused; the message is the error code the response carries."""


class _Bus(Protocol):
    states: dict[str, bytes]
    availability: dict[str, str]
    door_devices: dict[str, str]

    def route(self, topic_filter: str, handler: Callable[[Any], None], *, qos: int = 0,
              subscribe: bool = True) -> None: ...

    def publish(self, topic: str, payload: bytes) -> None: ...


class _Directory(Protocol):
    site: Site


class _Commands(Protocol):
    def unlock(self, door: str, *, actor: str = ...) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Request:
    name: str
    payload: bytes  # empty when ``oversize``
    received: float  # monotonic
    oversize: bool = False


def actor(name: str) -> str:
    """Who an integration's requests are recorded as in the audit log."""
    return f"integration:{name}"


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def door_status(site: Site, door_devices: Mapping[str, str], states: Mapping[str, bytes],
                availability: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each door of the site with what its edge last reported, by door id (pure; the ``status`` result).

    Bounded: only the site's doors, only the flags an edge's ``state`` carries for a door it owns (``open``,
    ``relay``, ``tamper``) and a summary ``state`` as the desk's door board words it (``offline``, ``unknown``,
    ``open``, ``alarm``, ``unlocked``, ``locked``); never a person, a card or an event.
    """
    reported: dict[str, dict[str, Any]] = {}
    for device, raw in states.items():
        try:
            doors = json.loads(raw).get("doors") or {}
        except (ValueError, AttributeError, RecursionError):
            continue
        if isinstance(doors, dict):
            reported.update({d: s for d, s in doors.items() if isinstance(s, dict) and door_devices.get(d) == device})
    locked = site.lockdowns
    out = []
    for door_id in sorted(site.doors):
        door = site.doors[door_id]
        device = door_devices.get(door_id)
        device_status = availability.get(device, "unknown") if device else "unknown"
        st = reported.get(door_id)
        if device_status in ("offline", "stopped"):
            state = "offline"
        elif st is None:
            state = "unknown"
        elif st.get("open") is True:
            state = "alarm" if st.get("state") == "alarm" else "open"
        elif st.get("state") == "alarm":
            state = "alarm"
        elif st.get("relay") is True or st.get("state") == "unlocked":
            state = "unlocked"
        else:
            state = "locked"
        out.append({"id": door_id, "name": door.name, "device": device, "device_status": device_status,
                    "state": state, "open": _flag(st.get("open")) if st else None,
                    "relay": _flag(st.get("relay")) if st else None,
                    "tamper": _flag(st.get("tamper")) if st else None,
                    "lockdown": "site" in locked or any(a in locked for a in door.entered)})
    return out


class IntegrationApi:
    """Answers the integrations' requests (see the module docstring); one worker thread carries them out."""

    def __init__(self, settings: Mapping[str, IntegrationSettings], directory: _Directory, bus: _Bus,
                 commands: _Commands | None, clock: Clock, *, pki: Path, audit: Auditor | None = None) -> None:
        """``settings``: site.toml [integrations.NAME] by name (an integration absent there may ask ``status``
        only); ``pki``: SITE/pki, whose index.json says which integrations are live and which read-only."""
        self.settings = dict(settings)
        self.directory = directory
        self.bus = bus
        self.commands = commands
        self.clock = clock
        self.pki = pki
        self.audit = audit
        self.site_id = directory.site.id
        self.counters = LockedCounter()  # bumped from paho's thread and the workers
        self._site_window = RateWindow(SITE_REQUESTS_PER_MINUTE)
        self._windows: dict[str, RateWindow] = {}
        self._door_windows: dict[str, RateWindow] = {}
        self._dropped_logged_at = float("-inf")
        self._queue: queue.Queue[_Request | None] = queue.Queue(REQUEST_QUEUE)
        self._stopping = threading.Event()
        self._worker = threading.Thread(target=self._loop, name="doorkeep-integration-api", daemon=True)
        bus.route(self.request_filter(), self.on_request)

    def request_filter(self) -> str:
        return integration_topic(self.site_id, "+", "request")

    def _count(self, *names: str) -> None:
        self.counters.add(*names)

    def counts(self) -> dict[str, int]:
        """A copy of the integration request API's counters (server/metrics.py reads it at scrape time)."""
        return self.counters.snapshot()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._worker.start()

    def stop(self) -> None:
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        if self._worker.is_alive():
            self._worker.join(timeout=10)

    # ------------------------------------------------- network thread (no blocking)

    def on_request(self, msg: Any) -> None:
        """A request as the broker delivers it: only noted and queued here."""
        parts = str(msg.topic).split("/")
        name = parts[5] if len(parts) == 7 else ""
        if not SEGMENT.match(name) or len(name) > 64:
            self._dropped("bad_topic", name)
            return
        if msg.retain:
            self._dropped("retained", name)  # would be carried out again at every reconnect of the server
            return
        now = self.clock.monotonic()
        if not self._site_window.take(now):
            self._dropped("rate_limited", name)
            return
        payload = bytes(msg.payload)
        oversize = len(payload) > MAX_REQUEST_BYTES
        try:
            self._queue.put_nowait(_Request(name, b"" if oversize else payload, now, oversize))
        except queue.Full:
            self._dropped("queue_full", name)

    def _dropped(self, why: str, name: str) -> None:
        """Counted and logged (at most once a minute), never answered or audited: what a flood would fill."""
        self._count("requests_dropped", f"requests_dropped_{why}")
        now = self.clock.monotonic()
        if now - self._dropped_logged_at >= 60.0:
            self._dropped_logged_at = now
            shown = "".join(c if c.isprintable() else "?" for c in name[:64])
            log.warning("integration api: request from %r dropped (%s; %d dropped so far)", shown, why,
                        self.counters["requests_dropped"])

    # ------------------------------------------------------------ the worker

    def _loop(self) -> None:
        while True:
            req = self._queue.get()
            if req is None or self._stopping.is_set():
                return
            try:
                self.handle(req.name, req.payload, received=req.received, oversize=req.oversize)
            except Exception:
                self._count("errors")
                log.exception("integration api: request from %r failed", req.name)

    def _live(self, name: str) -> bool | None:
        """Whether ``name`` is a live integration that may send requests: True; read-only: False; None when it
        is not a live integration (or SITE/pki cannot be read: nobody is trusted then)."""
        try:
            found = {i.name: i for i in live_integrations(self.pki)}
        except (PkiError, OSError, ValueError) as exc:
            self._count("pki_unreadable")
            log.warning("integration api: cannot read %s: %s", self.pki / "index.json", exc)
            return None
        hit = found.get(name)
        return None if hit is None else not hit.read_only

    def handle(self, name: str, payload: bytes, *, received: float, oversize: bool = False) -> dict[str, Any] | None:
        """Check and carry out one request, publish and return its response (None: no response, the caller
        cannot read one)."""
        live = self._live(name)
        if not live:
            why = "not_an_integration" if live is None else "read_only"
            self._count("requests_refused", f"requests_refused_{why}")
            log.warning("integration api: request from %r refused: %s", name, why)
            return None
        req_id: str | None = None
        try:
            if oversize:
                raise IntegrationRequestError("too_large")
            body = self._parse(payload)
            req_id = body["id"]
            if self.clock.monotonic() - received > REQUEST_MAX_AGE_S:
                raise IntegrationRequestError("stale")
            if not self._windows.setdefault(name, RateWindow(INTEGRATION_REQUESTS_PER_MINUTE)).take(self.clock.monotonic()):
                raise IntegrationRequestError("rate_limited")
            if body["action"] == "status":
                result = {"doors": door_status(self.directory.site, self.bus.door_devices, dict(self.bus.states),
                                               dict(self.bus.availability))}
                response = self._respond(name, req_id, True, None, result)
            else:
                response = self._unlock(name, req_id, body.get("door"))
        except IntegrationRequestError as exc:
            why = str(exc)
            self._count("requests_refused", f"requests_refused_{why}")
            log.warning("integration api: request %r from %r refused: %s", req_id, name, why)
            return self._respond(name, req_id, False, why, {})
        self._count("requests_answered")
        return response

    @staticmethod
    def _parse(payload: bytes) -> dict[str, Any]:
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):
            raise IntegrationRequestError("bad_request") from None
        if not isinstance(body, dict):
            raise IntegrationRequestError("bad_request")
        req_id = body.get("id")
        if not isinstance(req_id, str) or not 0 < len(req_id) <= MAX_ID_CHARS or not req_id.isprintable():
            raise IntegrationRequestError("bad_request")
        if body.get("action") not in ACTIONS:
            raise IntegrationRequestError("unknown_action")
        return body

    def _unlock(self, name: str, req_id: str, door: Any) -> dict[str, Any]:
        """Check one unlock (a refusal is audited), then send it signed (audited by the sender)."""
        who = actor(name)
        try:
            if not isinstance(door, str) or not SEGMENT.match(door) or len(door) > 64:
                raise IntegrationRequestError("bad_request")
            if door not in self.directory.site.doors:
                raise IntegrationRequestError("unknown_door")
            allowed = self.settings.get(name)
            if allowed is None or not allowed.may_unlock(door):
                raise IntegrationRequestError("door_not_allowed")
            if not self._door_windows.setdefault(door, RateWindow(DOOR_UNLOCKS_PER_MINUTE)).take(self.clock.monotonic()):
                raise IntegrationRequestError("rate_limited")
            if self.commands is None:
                raise IntegrationRequestError("not_sent")
        except IntegrationRequestError as exc:
            target = f"door:{door}" if isinstance(door, str) and SEGMENT.match(door) and len(door) <= 64 else None
            record_audit(self.audit, who, "integration.unlock_refused", target, {"id": req_id, "reason": str(exc)})
            raise
        try:
            result = self.commands.unlock(door, actor=who)
        except ServerError as exc:  # a door added to the site after the server started (no device yet)
            log.warning("integration api: unlock of %s for %r not sent: %s", door, name, exc)
            raise IntegrationRequestError("not_sent") from None
        self._count(f"unlocks_{result['status']}")
        ok = result["status"] == "ok"
        return self._respond(name, req_id, ok, None if ok else f"edge_{result['status']}",
                             {"door": door, "status": result["status"], "transaction": result["transaction"],
                              "edge_error": result["error"]})

    def _respond(self, name: str, req_id: str | None, ok: bool, error: str | None,
                 result: dict[str, Any]) -> dict[str, Any]:
        response = {"schema": SCHEMA, "id": req_id, "ok": ok, "error": error, "result": result}
        self.bus.publish(integration_topic(self.site_id, name, "response"),
                         json.dumps(response, sort_keys=True).encode())
        return response
