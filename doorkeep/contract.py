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
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from doorkeep.decision import Reason
from doorkeep.errors import MessageError
from doorkeep.vocabulary import WIRE_EVENT_TYPES

PREFIX = "doorkeep/v1"
SEGMENT = re.compile(r"^[A-Za-z0-9_-]+\Z")  # \Z: "$" would let a trailing newline through
MAX_PAYLOAD = 64 * 1024
#: The largest sealed snapshot (JPEG) a device may publish: the server drops anything larger before reading
#: it, and ``doorkeep broker config`` sets the broker's ``message_size_limit`` from it (with margin).
MAX_SNAPSHOT_BYTES = 8 * 1024 * 1024

# Ranges every decoder enforces (docs/mqtt.md, "Validation"). A value outside them is a MessageError, so a
# hostile or broken device can never push something the store, the desk or retention cannot handle.
#: identifiers (ids, doors, devices, reasons, transactions): a topic segment of at most this many characters
MAX_IDENT = 64
#: ``seq``: a signed 64-bit integer (what SQLite stores), never negative
MAX_SEQ = 2**63 - 1
#: ``latency_ms``: badge to relay is milliseconds; an hour is already absurd
MAX_LATENCY_MS = 3_600_000.0
#: timestamps: ISO 8601 UTC that parses, with a year in this range (a ``9999-…`` would top the live feed forever)
MIN_TS_YEAR, MAX_TS_YEAR = 2000, 2100
MAX_TS_CHARS = 32
#: ``detail``: free-form JSON, bounded in nesting, size, key length and number range
MAX_DETAIL_BYTES = 8 * 1024
MAX_DETAIL_KEY = 64
#: ``credential_last4``: the last characters of a card number (any reader format), printable, bounded
MAX_LAST4_CHARS = 32
#: ``companions``: the people who pass with a grant (docs/mqtt.md "Access events"): an escort, the visitors they
#: bring, the first of a two-person pair. A tour group is a dozen; more is a broken or hostile device.
MAX_COMPANIONS = 32
#: The most floors a lift decision enables (a tall building's cab, with room to spare).
MAX_FLOORS = 128
#: ``grant``: the rule behind a grant, undecorated (``granted_offline`` says who decided, never which rule).
GRANT_RULES: frozenset[str] = frozenset(r.value for r in Reason if r.granted and r is not Reason.GRANTED_OFFLINE)
_TS = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|\+00:00)\Z")

AVAILABILITY_ONLINE = "online"
AVAILABILITY_OFFLINE = "offline"
AVAILABILITY_STOPPED = "stopped"

#: The event types the decoder accepts: those of the vocabulary that travel on the wire (doorkeep/vocabulary.py).
EVENT_TYPES: frozenset[str] = WIRE_EVENT_TYPES
DECIDED_BY = frozenset({"server", "edge_offline", "edge"})  # "edge": a door rule only the edge knows (interlock)


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

    def policy_delta(self, device: str) -> str:
        """Signed policy deltas to one device (doorkeep/policy_delta.py): QoS 1, never retained."""
        return f"{self.device(device)}/policy/delta"

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
    kind: str  # availability | state | policy | policy_delta | request | decision | event | snapshot | cmd | cmd_result
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
    if rest == ["policy", "delta"]:
        return ParsedTopic(site, device, "policy_delta")
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
    if value is not None and (len(value) > MAX_IDENT or not SEGMENT.match(value)):
        raise MessageError(f"field {name!r} value {value[:MAX_IDENT + 1]!r} is not an identifier "
                           f"([A-Za-z0-9_-], at most {MAX_IDENT} characters)")
    return value


def _int(data: dict[str, Any], name: str, low: int, high: int) -> int:
    """An integer (never a boolean: ``True`` is an int in Python) within ``low..high``."""
    value: int = _field(data, name, int)
    if not low <= value <= high:
        raise MessageError(f"field {name!r} is out of range ({low}..{high})")
    return value


def check_ts(value: str, name: str = "ts") -> str:
    """An ISO 8601 UTC timestamp (``Z`` or ``+00:00``) that parses, with a year in the sane range.

    Shape first (a regular expression on a bounded string), then ``datetime`` for the calendar: no
    February 30th, no hour 25. The text is returned unchanged (it is what the device signed off on).
    """
    if len(value) > MAX_TS_CHARS or not _TS.match(value):
        raise MessageError(f"field {name!r} value {value[:MAX_TS_CHARS + 1]!r} is not an ISO 8601 UTC timestamp")
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise MessageError(f"field {name!r} value {value!r} is not a valid date and time") from None
    if not MIN_TS_YEAR <= parsed.year <= MAX_TS_YEAR:
        raise MessageError(f"field {name!r} year {parsed.year} is outside {MIN_TS_YEAR}..{MAX_TS_YEAR}")
    return value


def _ts(data: dict[str, Any], name: str) -> str:
    return check_ts(_field(data, name, str), name)


def _last4(data: dict[str, Any], name: str, *, optional: bool = False) -> Any:
    value = _field(data, name, str, optional=optional)
    if value is not None and (len(value) > MAX_LAST4_CHARS or not value.isprintable()):
        raise MessageError(f"field {name!r} must be at most {MAX_LAST4_CHARS} printable characters")
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


def _check_detail(obj: Any) -> None:
    """Every value of a ``detail`` tree is JSON the store and the desk can hold: string keys of bounded
    length, integers in the signed 64-bit range, finite floats (json.loads reads ``NaN``/``1e999``)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if len(k) > MAX_DETAIL_KEY:
                raise MessageError(f"detail key {k[:MAX_DETAIL_KEY]!r}… is longer than {MAX_DETAIL_KEY} characters")
            _check_detail(v)
    elif isinstance(obj, list):
        for v in obj:
            _check_detail(v)
    elif isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    elif isinstance(obj, int):
        if not -(2**63) <= obj <= 2**63 - 1:
            raise MessageError("detail holds an integer outside the 64-bit range")
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise MessageError("detail holds a number that is not finite")


def _detail(data: dict[str, Any]) -> dict[str, Any]:
    detail: dict[str, Any] = _field(data, "detail", dict, optional=True) or {}
    if _depth(detail) > MAX_DETAIL_DEPTH:
        raise MessageError(f"detail is nested deeper than {MAX_DETAIL_DEPTH} levels")
    _check_detail(detail)
    if len(_dump(detail)) > MAX_DETAIL_BYTES:
        raise MessageError(f"detail is larger than {MAX_DETAIL_BYTES} bytes")
    return detail


def _companions(data: dict[str, Any]) -> tuple[str, ...]:
    """``companions``: absent or a list of at most :data:`MAX_COMPANIONS` distinct person ids (older devices send none)."""
    value = _field(data, "companions", list, optional=True)
    if value is None:
        return ()
    if len(value) > MAX_COMPANIONS:
        raise MessageError(f"field 'companions' lists {len(value)} people (at most {MAX_COMPANIONS})")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or len(item) > MAX_IDENT or not SEGMENT.match(item):
            shown = item[:MAX_IDENT + 1] if isinstance(item, str) else type(item).__name__
            raise MessageError(f"field 'companions' item {i} {shown!r} is not a person id "
                               f"([A-Za-z0-9_-], at most {MAX_IDENT} characters)")
        out.append(item)
    if len(set(out)) != len(out):
        raise MessageError("field 'companions' names a person twice")
    return tuple(out)


def _grant_fields(data: dict[str, Any], granted: bool, person: str | None) -> tuple[tuple[str, ...], str | None]:
    """``companions`` and ``grant`` of a decision or an access event: only on a grant, with a person, never
    naming that person among the companions; ``grant`` one of :data:`GRANT_RULES`."""
    companions = _companions(data)
    grant = _ident(data, "grant", optional=True)
    if grant is not None and grant not in GRANT_RULES:
        raise MessageError(f"field 'grant' {grant!r} is not a rule that grants ({', '.join(sorted(GRANT_RULES))})")
    if (companions or grant is not None) and not granted:
        raise MessageError("fields 'companions' and 'grant' belong to a granted access decision only")
    if companions and person is None:
        raise MessageError("field 'companions' needs the person whose badge they pass with")
    if person is not None and person in companions:
        raise MessageError(f"field 'companions' names the badge holder {person!r}")
    return companions, grant


def floor_list(value: Any, name: str = "floors") -> tuple[str, ...]:
    """A list of at most :data:`MAX_FLOORS` distinct area ids (a lift's floors), or MessageError naming ``name``."""
    if not isinstance(value, list):
        raise MessageError(f"field {name!r} must be a list of area ids")
    if len(value) > MAX_FLOORS:
        raise MessageError(f"field {name!r} lists {len(value)} floors (at most {MAX_FLOORS})")
    for i, item in enumerate(value):
        if not isinstance(item, str) or len(item) > MAX_IDENT or not SEGMENT.match(item):
            shown = item[:MAX_IDENT + 1] if isinstance(item, str) else type(item).__name__
            raise MessageError(f"field {name!r} item {i} {shown!r} is not an area id")
    if len(set(value)) != len(value):
        raise MessageError(f"field {name!r} names a floor twice")
    return tuple(value)


def _without_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """Leave out ``companions``, ``grant``, ``floor``, ``floors`` and ``mono`` when they say nothing: every other
    message stays as it was, and a receiver that does not know them sees nothing new."""
    for key in ("companions", "floors"):
        if key in body and not body[key]:
            del body[key]
    for key in ("grant", "floor", "mono"):
        if key in body and body[key] is None:
            del body[key]
    return body


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _fields(msg: Any) -> dict[str, Any]:
    """A message's fields as a dict, for JSON. Not ``dataclasses.asdict``: its deep copy of every value was a
    sixth of the edge's CPU between a badge and its request on the wire, and the messages hold only JSON
    values (strings, numbers, None, the ``detail`` dict), which ``json.dumps`` reads without a copy."""
    return {f: getattr(msg, f) for f in msg.__dataclass_fields__}


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
    floor: str | None = None  # a lift in destination-dispatch mode: the floor (area) chosen before the badge
    mono: float | None = None
    """The edge's monotonic clock (seconds) when it asked: with the ``mono`` of its heartbeats, the server tells a
    request that arrives after the door stopped waiting, whatever the edge's wall clock did (an NTP step)."""

    def encode(self) -> bytes:
        return _dump(_without_defaults({"schema": self.SCHEMA, **_fields(self)}))

    @classmethod
    def decode(cls, payload: bytes) -> RequestMsg:
        d = _load(payload, cls.SCHEMA)
        return cls(
            transaction=_ident(d, "transaction"),
            door=_ident(d, "door"),
            credential_hash=_hash(d, "credential_hash"),
            credential_last4=_last4(d, "credential_last4")[:4],
            credential_format=_ident(d, "credential_format"),
            ts=_ts(d, "ts"),
            pin_hash=_hash(d, "pin_hash", optional=True),
            floor=_ident(d, "floor", optional=True),
            mono=monotonic_field(d),
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
    companions: tuple[str, ...] = ()  # the people who pass with this badge (they move with the person)
    grant: str | None = None  # the rule behind a grant (granted, granted_escorted, granted_two_person)
    floors: tuple[str, ...] = ()  # a lift's grant: the floors (areas) it enables

    def encode(self) -> bytes:
        return _dump(_without_defaults({"schema": self.SCHEMA, **_fields(self)}))

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
        person = _ident(d, "person", optional=True)
        companions, grant = _grant_fields(d, granted, person)
        floors = floor_list(d["floors"]) if d.get("floors") is not None else ()
        if floors and not granted:
            raise MessageError("field 'floors' belongs to a granted lift decision only")
        return cls(
            transaction=_ident(d, "transaction"),
            door=_ident(d, "door"),
            granted=granted,
            reason=reason,
            person=person,
            unlock_s=float(unlock),
            ts=_ts(d, "ts"),
            violation=_ident(d, "violation", optional=True),
            companions=companions,
            grant=grant,
            floors=floors,
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
    companions: tuple[str, ...] = ()  # granted access: the people who passed with this badge (they move too)
    grant: str | None = None          # granted access: the rule behind it (granted, granted_escorted, …)

    def encode(self) -> bytes:
        return _dump(_without_defaults({"schema": self.SCHEMA, **_fields(self)}))

    @classmethod
    def decode(cls, payload: bytes) -> EventMsg:
        d = _load(payload, cls.SCHEMA)
        seq = _int(d, "seq", 0, MAX_SEQ)
        etype = _ident(d, "type")
        if etype not in EVENT_TYPES:
            raise MessageError(f"unknown event type {etype!r}")
        decision = _field(d, "decision", str, optional=True)
        if decision is not None and decision not in ("granted", "denied"):
            raise MessageError(f"decision must be 'granted' or 'denied', not {decision[:16]!r}")
        if etype == "access" and decision is None:
            raise MessageError("an access event needs decision 'granted' or 'denied'")
        decided_by = _field(d, "decided_by", str, optional=True)
        if decided_by is not None and decided_by not in DECIDED_BY:
            raise MessageError(f"unknown decided_by {decided_by[:16]!r}")
        latency = _field(d, "latency_ms", (int, float), optional=True)
        if latency is not None:
            # Compared before float(): an integer of 10**400 would raise OverflowError there.
            if not (isinstance(latency, float) and not math.isfinite(latency)) and 0 <= latency <= MAX_LATENCY_MS:
                latency = float(latency)
            else:
                raise MessageError(f"latency_ms must be a finite number in 0..{MAX_LATENCY_MS:g}")
        reason = _ident(d, "reason", optional=True)
        if decision is not None and reason is not None and (decision == "granted") != reason.startswith("granted"):
            raise MessageError(f"decision {decision!r} contradicts reason {reason!r}")
        person = _ident(d, "person", optional=True)
        companions, grant = _grant_fields(d, etype == "access" and decision == "granted", person)
        return cls(
            id=_ident(d, "id"),
            seq=seq,
            ts=_ts(d, "ts"),
            device=_ident(d, "device"),
            door=_ident(d, "door"),
            type=etype,
            decision=decision,
            reason=reason,
            decided_by=decided_by,
            person=person,
            credential_hash=_hash(d, "credential_hash", optional=True),
            credential_last4=_last4(d, "credential_last4", optional=True),
            transaction=_ident(d, "transaction", optional=True),
            latency_ms=latency,
            snapshot=_ident(d, "snapshot", optional=True),
            detail=_detail(d),
            companions=companions,
            grant=grant,
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
        return _dump({"schema": self.SCHEMA, **_fields(self)})

    @classmethod
    def decode(cls, payload: bytes) -> CommandResult:
        d = _load(payload, cls.SCHEMA)
        status = _field(d, "status", str)
        if status not in CMD_STATUSES:
            raise MessageError(f"unknown command status {status!r}")
        error = _field(d, "error", str, optional=True)
        if error is not None and (len(error) > MAX_CMD_ERROR or not error.isprintable()):
            raise MessageError(f"error is longer than {MAX_CMD_ERROR} characters or not printable")
        if status != "ok" and not error:
            raise MessageError(f"a {status} result needs an error")
        transaction = _ident(d, "transaction", optional=True)
        if transaction is None and status != "rejected":
            raise MessageError("only a rejected result may lack a transaction (the command was unreadable)")
        return cls(transaction=transaction, status=status, error=error)


#: The largest ``mono`` taken (seconds of an edge's monotonic clock: since its boot, about 3,000 years).
MAX_MONOTONIC_S = 1e11


def monotonic_field(d: dict[str, Any]) -> float | None:
    """The optional ``mono`` of a request or a state: a finite number of seconds in 0..MAX_MONOTONIC_S."""
    mono = _field(d, "mono", (int, float), optional=True)
    if mono is None:
        return None
    # Compared before float(): an integer of 10**400 would raise OverflowError there.
    if isinstance(mono, bool) or (isinstance(mono, float) and not math.isfinite(mono)) or not 0 <= mono <= MAX_MONOTONIC_S:
        raise MessageError(f"mono must be a finite number of seconds in 0..{MAX_MONOTONIC_S:g}")
    return float(mono)


def state_monotonic(payload: bytes) -> float | None:
    """The ``mono`` of a ``doorkeep.state/1`` payload already found valid, or None (absent, malformed)."""
    try:
        data = json.loads(payload)
        return monotonic_field(data) if isinstance(data, dict) else None
    except (ValueError, RecursionError, MessageError):
        return None


def state_payload(device: str, version: str, doors: dict[str, Any], readers: dict[str, Any],
                  cameras: dict[str, Any], ts: str, *, outbox: dict[str, float] | None = None,
                  policy: dict[str, Any] | None = None, health: dict[str, Any] | None = None,
                  mono: float | None = None) -> bytes:
    """The retained ``state`` message: what a desk needs to draw the door board (and the outbox's backlog:
    ``{"pending", "dropped_snapshots", "oldest_age_s"}``, the last added later, so a reader treats it as optional).

    ``policy``: the signed policy the edge holds, ``{"status", "version"}`` (docs/mqtt.md): an added key, so
    a server that does not know it ignores it. ``health``: ``{"ok", "problems"}``, the edge's own findings that
    its ``/healthz`` reports too (edge/metrics.py), added the same way. ``mono``: the edge's monotonic clock when it
    wrote this, read beside a request's own ``mono`` (:class:`RequestMsg`), added the same way."""
    body = {"schema": "doorkeep.state/1", "device": device, "versions": {"doorkeep": version},
            "doors": doors, "readers": readers, "cameras": cameras, "ts": ts}
    if outbox is not None:
        body["outbox"] = outbox
    if policy is not None:
        body["policy"] = policy
    if health is not None:
        body["health"] = health
    if mono is not None:
        body["mono"] = round(mono, 3)
    return _dump(body)
