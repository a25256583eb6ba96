"""The MQTT wire contract (DESIGN §4): topics and JSON messages.

Every message is built and validated here, on both sides, so the edge and
the server cannot drift apart. Validation is strict and explicit: a payload
that does not follow the contract raises :class:`MessageError` saying what
was wrong, and the receiver counts and drops it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from doorkeep.errors import MessageError

PREFIX = "doorkeep/v1"
SEGMENT = re.compile(r"^[A-Za-z0-9_-]+\Z")  # \Z: "$" would let a trailing newline through
MAX_PAYLOAD = 64 * 1024

AVAILABILITY_ONLINE = "online"
AVAILABILITY_OFFLINE = "offline"
AVAILABILITY_STOPPED = "stopped"

EVENT_TYPES = frozenset({
    "access", "door_opened", "door_closed", "forced_open", "held_open", "rex",
    "unlocked", "relocked", "reader_offline", "reader_online", "camera_offline", "camera_online",
    "held_open_warning", "tamper", "relay_stuck",
    "remote_unlock", "command_rejected", "lockdown",
    "reader_security", "reader_key_installed",
})
DECIDED_BY = frozenset({"server", "edge_offline"})


def _seg(value: str, what: str) -> str:
    if not SEGMENT.match(value):
        raise MessageError(f"{what} {value!r} is not a valid topic segment")
    return value


class Topics:
    """Topic names for one site; the server's own subtree is ``.../server/...``."""

    def __init__(self, site: str) -> None:
        self.site = _seg(site, "site")
        self.base = f"{PREFIX}/{site}"

    def device(self, device: str) -> str:
        return f"{self.base}/{_seg(device, 'device')}"

    def availability(self, device: str) -> str:
        return f"{self.device(device)}/availability"

    def state(self, device: str) -> str:
        return f"{self.device(device)}/state"

    def door(self, device: str, door: str, leaf: str) -> str:
        return f"{self.device(device)}/door/{_seg(door, 'door')}/{leaf}"

    def request(self, device: str, door: str) -> str:
        return self.door(device, door, "request")

    def decision(self, device: str, door: str) -> str:
        return self.door(device, door, "decision")

    def event(self, device: str, door: str) -> str:
        return self.door(device, door, "event")

    def snapshot(self, device: str, door: str, event_id: str) -> str:
        return self.door(device, door, f"snapshot/{_seg(event_id, 'event id')}")

    def policy(self, device: str) -> str:
        return f"{self.device(device)}/policy"

    def server_availability(self) -> str:
        return f"{self.base}/server/availability"

    def cmd(self, device: str) -> str:
        """Signed commands to one device (doorkeep/commands.py)."""
        return f"{self.device(device)}/cmd"

    def cmd_result(self, device: str) -> str:
        return f"{self.device(device)}/cmd/result"

    # Subscriptions (wildcards are only ever subscribed to, never published).
    def all_requests(self) -> str:
        return f"{self.base}/+/door/+/request"

    def all_events(self) -> str:
        return f"{self.base}/+/door/+/event"

    def all_snapshots(self) -> str:
        return f"{self.base}/+/door/+/snapshot/+"

    def all_availability(self) -> str:
        return f"{self.base}/+/availability"

    def all_decisions(self, device: str) -> str:
        return f"{self.device(device)}/door/+/decision"

    def all_cmd_results(self) -> str:
        return f"{self.base}/+/cmd/result"


@dataclass(frozen=True)
class ParsedTopic:
    site: str
    device: str
    kind: str  # availability | state | policy | request | decision | event | snapshot | cmd | cmd_result
    door: str | None = None
    event_id: str | None = None


def parse_topic(topic: str) -> ParsedTopic:
    parts = topic.split("/")
    if len(parts) < 4 or "/".join(parts[:2]) != PREFIX:
        raise MessageError(f"topic {topic!r} is not under {PREFIX}/")
    for p in parts[2:]:
        _seg(p, "topic segment")
    site, device, rest = parts[2], parts[3], parts[4:]
    if rest in (["availability"], ["state"], ["policy"], ["cmd"]):
        return ParsedTopic(site, device, rest[0])
    if rest == ["cmd", "result"]:
        return ParsedTopic(site, device, "cmd_result")
    if len(rest) == 3 and rest[0] == "door" and rest[2] in ("request", "decision", "event"):
        return ParsedTopic(site, device, rest[2], rest[1])
    if len(rest) == 4 and rest[0] == "door" and rest[2] == "snapshot":
        return ParsedTopic(site, device, "snapshot", rest[1], rest[3])
    raise MessageError(f"topic {topic!r} is not part of the contract")


# ----------------------------------------------------------------- helpers


def _load(payload: bytes, schema: str) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise MessageError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    try:
        data = json.loads(payload)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer with too many digits
        raise MessageError(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise MessageError("payload is nested too deeply") from None
    if not isinstance(data, dict):
        raise MessageError("payload is not a JSON object")
    if data.get("schema") != schema:
        raise MessageError(f"schema is {data.get('schema')!r}, expected {schema!r}")
    return data


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    if name not in data or data[name] is None:
        if optional:
            return None
        raise MessageError(f"field {name!r} is missing")
    value = data[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise MessageError(f"field {name!r} must be {kind}, got a boolean")
    if not isinstance(value, kind):
        raise MessageError(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _ident(data: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = _field(data, name, str, optional=optional)
    if value is not None and not SEGMENT.match(value):
        raise MessageError(f"field {name!r} value {value!r} is not an identifier")
    return value


def _hash(data: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = _field(data, name, str, optional=optional)
    if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
        raise MessageError(f"field {name!r} is not a hex SHA-256 digest")
    return value


MAX_DETAIL_DEPTH = 8


def _depth(obj: Any, level: int = 0) -> int:
    """How deep a JSON value nests (stops counting past the limit, so a hostile payload costs little)."""
    if level > MAX_DETAIL_DEPTH or not isinstance(obj, (dict, list)):
        return level
    children = obj.values() if isinstance(obj, dict) else obj
    return max((_depth(c, level + 1) for c in children), default=level + 1)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


# ---------------------------------------------------------------- messages


@dataclass(frozen=True)
class RequestMsg:
    """Edge → server: a card was presented at a door."""

    SCHEMA = "doorkeep.request/1"
    transaction: str
    door: str
    credential_hash: str
    credential_last4: str
    credential_format: str
    ts: str
    pin_hash: str | None = None  # HMAC of the PIN typed at the door, when the door asks for one

    def encode(self) -> bytes:
        return _dump({"schema": self.SCHEMA, **asdict(self)})

    @classmethod
    def decode(cls, payload: bytes) -> RequestMsg:
        d = _load(payload, cls.SCHEMA)
        return cls(
            transaction=_ident(d, "transaction"),
            door=_ident(d, "door"),
            credential_hash=_hash(d, "credential_hash"),
            credential_last4=_field(d, "credential_last4", str)[:4],
            credential_format=_ident(d, "credential_format"),
            ts=_field(d, "ts", str),
            pin_hash=_hash(d, "pin_hash", optional=True),
        )


@dataclass(frozen=True)
class DecisionMsg:
    """Server → edge: the answer to one request, matched by transaction id."""

    SCHEMA = "doorkeep.decision/1"
    transaction: str
    door: str
    granted: bool
    reason: str
    person: str | None
    unlock_s: float
    ts: str
    violation: str | None = None  # e.g. "anti_passback": granted, but a soft rule was broken

    def encode(self) -> bytes:
        return _dump({"schema": self.SCHEMA, **asdict(self)})

    @classmethod
    def decode(cls, payload: bytes) -> DecisionMsg:
        d = _load(payload, cls.SCHEMA)
        granted = _field(d, "granted", bool)
        reason = _ident(d, "reason")
        if granted != reason.startswith("granted"):
            raise MessageError(f"granted={granted} contradicts reason {reason!r}")
        unlock = _field(d, "unlock_s", (int, float))
        if not 0 < unlock <= 600:
            raise MessageError(f"unlock_s {unlock} out of range")
        return cls(
            transaction=_ident(d, "transaction"),
            door=_ident(d, "door"),
            granted=granted,
            reason=reason,
            person=_ident(d, "person", optional=True),
            unlock_s=float(unlock),
            ts=_field(d, "ts", str),
            violation=_ident(d, "violation", optional=True),
        )


@dataclass(frozen=True)
class EventMsg:
    """Edge → server: something happened at a door. ``id`` is the idempotency key."""

    SCHEMA = "doorkeep.event/1"
    id: str
    seq: int
    ts: str
    device: str
    door: str
    type: str
    decision: str | None = None       # "granted" | "denied" for access events
    reason: str | None = None
    decided_by: str | None = None     # "server" | "edge_offline"
    person: str | None = None
    credential_hash: str | None = None
    credential_last4: str | None = None
    transaction: str | None = None
    latency_ms: float | None = None   # badge (last frame byte read) to relay energised / denial known
    snapshot: str | None = None       # snapshot id (= event id) when a snapshot follows
    detail: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        return _dump({"schema": self.SCHEMA, **asdict(self)})

    @classmethod
    def decode(cls, payload: bytes) -> EventMsg:
        d = _load(payload, cls.SCHEMA)
        seq = _field(d, "seq", int)
        if seq < 0:
            raise MessageError("seq must not be negative")
        etype = _ident(d, "type")
        if etype not in EVENT_TYPES:
            raise MessageError(f"unknown event type {etype!r}")
        decision = _field(d, "decision", str, optional=True)
        if etype == "access" and decision not in ("granted", "denied"):
            raise MessageError("an access event needs decision 'granted' or 'denied'")
        decided_by = _field(d, "decided_by", str, optional=True)
        if decided_by is not None and decided_by not in DECIDED_BY:
            raise MessageError(f"unknown decided_by {decided_by!r}")
        latency = _field(d, "latency_ms", (int, float), optional=True)
        try:
            latency = float(latency) if latency is not None else None
        except OverflowError:
            raise MessageError("latency_ms is out of range") from None
        if latency is not None and not (math.isfinite(latency) and latency >= 0):
            raise MessageError(f"latency_ms {latency} is not a finite, non-negative number")
        reason = _ident(d, "reason", optional=True)
        if decision is not None and reason is not None and (decision == "granted") != reason.startswith("granted"):
            raise MessageError(f"decision {decision!r} contradicts reason {reason!r}")
        detail = _field(d, "detail", dict, optional=True) or {}
        if _depth(detail) > MAX_DETAIL_DEPTH:
            raise MessageError(f"detail is nested deeper than {MAX_DETAIL_DEPTH} levels")
        return cls(
            id=_ident(d, "id"),
            seq=seq,
            ts=_field(d, "ts", str),
            device=_ident(d, "device"),
            door=_ident(d, "door"),
            type=etype,
            decision=decision,
            reason=reason,
            decided_by=decided_by,
            person=_ident(d, "person", optional=True),
            credential_hash=_hash(d, "credential_hash", optional=True),
            credential_last4=_field(d, "credential_last4", str, optional=True),
            transaction=_ident(d, "transaction", optional=True),
            latency_ms=float(latency) if latency is not None else None,
            snapshot=_ident(d, "snapshot", optional=True),
            detail=detail,
        )


CMD_STATUSES = frozenset({"ok", "rejected", "failed"})
MAX_CMD_ERROR = 200


@dataclass(frozen=True)
class CommandResult:
    """Edge → server: what became of one signed command (doorkeep/commands.py), matched by transaction.

    ``status``: ``ok`` (done), ``rejected`` (refused before acting; ``error`` is the refusal reason,
    e.g. ``replayed``), ``failed`` (valid but not carried out; e.g. ``lockdown``). ``transaction`` is
    None when the refused payload did not even carry a readable one.
    """

    SCHEMA = "doorkeep.cmd_result/1"
    transaction: str | None
    status: str
    error: str | None = None

    def encode(self) -> bytes:
        return _dump({"schema": self.SCHEMA, **asdict(self)})

    @classmethod
    def decode(cls, payload: bytes) -> CommandResult:
        d = _load(payload, cls.SCHEMA)
        status = _field(d, "status", str)
        if status not in CMD_STATUSES:
            raise MessageError(f"unknown command status {status!r}")
        error = _field(d, "error", str, optional=True)
        if error is not None and len(error) > MAX_CMD_ERROR:
            raise MessageError(f"error is longer than {MAX_CMD_ERROR} characters")
        if status != "ok" and not error:
            raise MessageError(f"a {status} result needs an error")
        return cls(transaction=_ident(d, "transaction", optional=True), status=status, error=error)


def state_payload(device: str, version: str, doors: dict[str, Any], readers: dict[str, Any],
                  cameras: dict[str, Any], ts: str, *, outbox: dict[str, int] | None = None) -> bytes:
    """The retained ``state`` message: what a desk needs to draw the door board (and the outbox's backlog)."""
    body = {"schema": "doorkeep.state/1", "device": device, "versions": {"doorkeep": version},
            "doors": doors, "readers": readers, "cameras": cameras, "ts": ts}
    if outbox is not None:
        body["outbox"] = outbox
    return _dump(body)
