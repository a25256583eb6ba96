"""Signed webhooks: subscriptions, a durable delivery queue in the store, and the thread that delivers it
(docs/operations.md "Webhooks"; the records are server/store_webhooks.py's).

What leaves, and why this way:

- **Sources.** Every stored event (the types of doorkeep/vocabulary.py, ``visitor_arrived`` included: the desk
  records it in the same events table), every new alarm (``alarm_raised``) and every escalation of an alarm
  nobody acknowledged in time (``alarm_escalated``). The worker reads them from the store after its cursors, so
  the ingest path (the bus's store thread, the desk's check-in) only *wakes* it: queueing costs a decision
  nothing and survives a crash (server/store_webhooks.py says how nothing is missed or queued twice).
- **Filters.** A subscription names its event types, optionally doors (an event or alarm elsewhere, or at no
  door, is not sent) and optionally a decision (``granted`` / ``denied``; events without a decision pass). It
  gets what was stored after it was created, never history.
- **Body.** JSON, ``schema`` ``doorkeep.webhook/1``: the delivery id, type, site and the event (or alarm) as
  the API shows it, minus what a receiver outside the system must not hold: a card only by its last four
  characters (never its keyed hash), people by id and kind; names (the person, a visitor's company, the host,
  companions) only when the subscription was created with ``include_names`` (docs/privacy.md). The body is fixed
  when the delivery is queued, so every retry sends the same bytes.
- **Signature.** ``X-Doorkeep-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``, with
  ``t`` the time of that attempt (a receiver refuses a ``t`` outside its replay window, 5 minutes by default),
  ``X-Doorkeep-Delivery`` (stable across retries: receivers deduplicate on it; delivery is at least once) and
  ``X-Doorkeep-Event``. :func:`verify` is the reference check, the one docs/operations.md shows.
- **Retries.** Any answer but 2xx, a timeout or a refused connection is retried with exponential backoff
  (``retry_s`` doubling up to ``max_retry_s``) until ``max_attempts`` or ``max_age_s`` after queueing, then the
  delivery is dead: listed on the desk's Webhooks page with its last error, where an admin retries it. Redirects
  are not followed (a 3xx is a failure). When a receiver does not answer at all, its other deliveries of that
  round wait for its next attempt untried, so one dead receiver cannot hold up the others.
- **HTTP.** The standard library's http.client, ``http`` or ``https`` only, TLS verified against the system's
  CAs and the site CA (``SITE/pki/ca.crt``, when the site has one), a timeout on every connect and read.

Time comes from the injected clock (due times, backoff, the signature's ``t``), so tests drive retries with a
``FakeClock`` and :meth:`Webhooks.run_once`; the thread only waits on an ``Event`` (woken by the bus, the
desk's own events and alarm writes).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import re
import secrets
import ssl
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence
from urllib.parse import urlsplit

from doorkeep import __version__, vocabulary
from doorkeep.alarm_priority import priority_of
from doorkeep.clock import Clock, iso_ms
from doorkeep.model import Site
from server.audit import Auditor, record_audit
from server.errors import ServerError
from server.store import Store
from server.store_webhooks import ALARMS_CURSOR, DELIVERY_STATES, ESCALATIONS_CURSOR, EVENTS_CURSOR, Cursor

log = logging.getLogger("doorkeep.server.webhooks")

#: The body's schema name.
SCHEMA = "doorkeep.webhook/1"
ALARM_RAISED = "alarm_raised"
ALARM_ESCALATED = "alarm_escalated"
#: The type of a test delivery (the desk's "Send a test delivery"): never queued, never subscribed to.
PING = "ping"
#: What a subscription may ask for: every event type of the vocabulary that is ever stored (an edge publishes it,
#: or the server records it; not the reserved ones), then the two alarm types.
EVENT_TYPES: tuple[str, ...] = (*(e.name for e in vocabulary.EVENTS.values() if e.published or not e.wire),
                                ALARM_RAISED, ALARM_ESCALATED)
ALARM_TYPES = frozenset({ALARM_RAISED, ALARM_ESCALATED})
SIGNATURE_HEADER = "X-Doorkeep-Signature"
DELIVERY_HEADER = "X-Doorkeep-Delivery"
EVENT_HEADER = "X-Doorkeep-Event"
#: The replay window a receiver should enforce on the signature's ``t`` (seconds either side of its clock).
TOLERANCE_S = 300
DECISIONS = ("granted", "denied")
MAX_NAME = 64
MAX_URL = 2000
#: At most this many subscriptions (each costs a match per stored event).
MAX_SUBSCRIPTIONS = 100
#: Events, alarms or escalations read per source and round.
SCAN_BATCH = 500
#: Escalations read per round (everything escalated since the last round; a sweep escalates all due alarms at once).
ESCALATION_BATCH = 10_000
#: At most this much of a receiver's answer is read (and thrown away).
MAX_RESPONSE_BYTES = 64 * 1024
#: The longest the thread waits with nothing due before looking again.
IDLE_S = 5.0
#: The shortest gap between two rounds under a burst of wake-ups (a burst is read in one round): at most ten
#: rounds a second whatever the event rate, each one short transaction on the store.
MIN_GAP_S = 0.1
#: With no webhook enabled, the cursors still move past what is stored, this often (no work per event).
IDLE_CURSOR_S = 60.0
#: How often delivered records and dead letters past their keep time are deleted.
PRUNE_EVERY_S = 3600.0
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._:@()/-]{0,63}$")
_SIG_RE = re.compile(r"^t=(\d{1,12}),v1=([0-9a-f]{64})$")


class WebhookError(ServerError, ValueError):
    """A webhook change refused as asked (bad URL, unknown event type or door, bad name); the message says why."""


class WebhookNotFound(WebhookError, LookupError):
    """No subscription (or delivery) has that id."""


class WebhookConflict(WebhookError):
    """The change conflicts with what exists (a name taken, too many subscriptions, a delivery not dead)."""


@dataclass(frozen=True)
class WebhookSettings:
    """How deliveries are retried and how long their records are kept (docs/operations.md "Webhooks")."""

    retry_s: float = 10.0
    max_retry_s: float = 3600.0
    max_attempts: int = 30
    max_age_s: float = 86_400.0
    timeout_s: float = 10.0
    batch: int = 20
    keep_delivered_s: float = 7 * 86_400.0
    keep_dead_s: float = 14 * 86_400.0

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` failed ones: ``retry_s`` doubling, at most ``max_retry_s``."""
        return min(self.retry_s * 2 ** max(0, attempts - 1), self.max_retry_s)


# ----------------------------------------------------------------------- signature


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Doorkeep-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256(secret, b"<t>." + body)>``."""
    mac = hmac.new(secret.encode("utf-8"), f"{int(timestamp)}.".encode("ascii") + body, hashlib.sha256)
    return f"t={int(timestamp)},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, now: float, tolerance_s: float = TOLERANCE_S) -> bool:
    """A receiver's check: the header is well formed, ``t`` is within ``tolerance_s`` of ``now`` (a captured
    request replayed later is refused) and the MAC matches the raw body (compared in constant time)."""
    found = _SIG_RE.match(header.strip())
    if found is None:
        return False
    t = int(found.group(1))
    if abs(now - t) > tolerance_s:
        return False
    expected = sign(secret, t, body).partition(",v1=")[2]
    return hmac.compare_digest(expected, found.group(2))


def new_secret() -> str:
    """A signing secret: 256 random bits, URL-safe, with a prefix that says what it is."""
    return "whsec_" + secrets.token_urlsafe(32)


def check_url(url: str) -> str:
    """The URL a subscription posts to, stripped; WebhookError naming what is wrong. Only ``http`` and ``https``
    with a host; no user name or password in it (the signature authenticates the server), no fragment."""
    url = (url or "").strip()
    if not url:
        raise WebhookError("the URL is empty: give the receiver's https:// address")
    if len(url) > MAX_URL:
        raise WebhookError(f"the URL is longer than {MAX_URL} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise WebhookError("the URL contains spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookError(f"the URL's scheme {parts.scheme or '(none)'!r} is not allowed: use https:// (or http:// "
                           "on a network you trust)")
    try:
        host, _port = parts.hostname, parts.port
    except ValueError as exc:
        raise WebhookError(f"the URL's port is not valid: {exc}") from None
    if not host:
        raise WebhookError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookError("the URL carries a user name or password: remove it (receivers check the signature)")
    if parts.fragment:
        raise WebhookError("the URL has a #fragment, which is never sent: remove it")
    return url


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what the audit log and the server's log say about a receiver (a path may
    hold a receiver's own secret, as chat-service webhook URLs do)."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


# ----------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class Answer:
    """What one POST came to: the HTTP status (None when none came back) and the reason it failed, if it did."""

    status: int | None
    error: str | None
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


class Sender(Protocol):
    """Where bodies go: :class:`HttpSender` in production; a test may pass its own."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Answer: ...


class HttpSender:
    """POST with http.client: TLS verified (the system's CAs and, if given, the site CA), no redirects followed,
    a timeout on connect and on every read, at most :data:`MAX_RESPONSE_BYTES` of the answer read."""

    def __init__(self, ca_file: Path | None = None) -> None:
        self.context = ssl.create_default_context()
        if ca_file is not None:
            self.context.load_verify_locations(cafile=str(ca_file))

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> Answer:
        started = time.perf_counter()
        parts = urlsplit(url)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        try:
            if parts.scheme.lower() == "https":
                conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout_s,
                                                   context=self.context)
            else:
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s)
        except ValueError as exc:
            return Answer(None, f"bad URL: {exc}")
        try:
            conn.request("POST", path, body=body, headers=dict(headers))
            response = conn.getresponse()
            response.read(MAX_RESPONSE_BYTES)
            status = int(response.status)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return Answer(None, _reason(exc), (time.perf_counter() - started) * 1000.0)
        finally:
            conn.close()
        elapsed = (time.perf_counter() - started) * 1000.0
        if 200 <= status < 300:
            return Answer(status, None, elapsed)
        return Answer(status, f"HTTP {status} {response.reason}".strip(), elapsed)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) or "timed out" in text:
        return f"timed out: {text}" if text else "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------- subscriptions


@dataclass(frozen=True)
class Subscription:
    """One subscription as the desk and the API show it (never its secret)."""

    id: str
    name: str
    url: str
    event_types: tuple[str, ...]
    doors: tuple[str, ...]
    decision: str | None
    include_names: bool
    enabled: bool
    created_by: str
    created_at: float
    updated_at: float
    secret_rotated_at: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Subscription:
        return cls(id=row["id"], name=row["name"], url=row["url"], event_types=tuple(row["event_types"]),
                   doors=tuple(row["doors"]), decision=row["decision"], include_names=bool(row["include_names"]),
                   enabled=bool(row["enabled"]), created_by=row["created_by"], created_at=float(row["created_at"]),
                   updated_at=float(row["updated_at"]), secret_rotated_at=row.get("secret_rotated_at"))

    @property
    def origin(self) -> str:
        return origin(self.url)

    def wants(self, kind: str, door: str | None, decision: str | None = None) -> bool:
        """Whether something of this type, at this door, with this decision goes to this subscription."""
        if kind not in self.event_types:
            return False
        if self.doors and (door or "") not in self.doors:
            return False
        return not (self.decision and decision is not None and decision != self.decision)


@dataclass(frozen=True)
class PingResult:
    """What a test delivery came to (the desk shows it at once)."""

    delivery: str
    ok: bool
    status: int | None
    error: str | None
    elapsed_ms: float


@dataclass
class RoundReport:
    """What one :meth:`Webhooks.run_once` did."""

    queued: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    deferred: int = 0
    more: bool = False  # a source had more than one batch waiting: the next round follows at once


@dataclass
class _Outcome:
    state: str
    attempts: int
    next_at: float
    error: str | None
    status: int | None = None


# ----------------------------------------------------------------------- bodies


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _loads(text: Any, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return default


def _person(site: Site, person_id: Any) -> Any:
    return site.people.get(person_id) if isinstance(person_id, str) and person_id else None


def event_body(row: Mapping[str, Any], site: Site, *, include_names: bool) -> dict[str, Any]:
    """A stored event as a webhook carries it: the API's fields, a card by its last four only, names only when
    the subscription asked for them."""
    detail = _loads(row.get("detail"), {})
    companions = [c for c in _loads(row.get("companions"), []) if isinstance(c, str)]
    door = site.doors.get(row.get("door") or "")
    person = _person(site, row.get("person"))
    out: dict[str, Any] = {
        "id": row["id"], "type": row["type"], "ts": row["ts"], "device": row["device"], "seq": row["seq"],
        "door": row["door"], "door_name": door.name if door is not None else None,
        "decision": row.get("decision"), "reason": row.get("reason"),
        "reason_label": vocabulary.reason_label(row.get("reason")), "decided_by": row.get("decided_by"),
        "grant": row.get("grant"), "person": row.get("person"),
        "person_kind": person.kind.value if person is not None else None,
        "credential_last4": row.get("credential_last4"), "latency_ms": row.get("latency_ms"),
        "snapshot": bool(row.get("snapshot")), "detail": detail if isinstance(detail, dict) else {},
        "companions": companions,
    }
    if include_names:
        host = _person(site, detail.get("host")) if isinstance(detail, dict) else None
        out["names"] = {"person": person.name if person is not None else None,
                        "company": getattr(person, "company", None) if person is not None else None,
                        "host": host.name if host is not None else None,
                        "companions": [p.name if p is not None else c for c, p in
                                       ((c, _person(site, c)) for c in companions)]}
    return out


def alarm_body(row: Mapping[str, Any], site: Site) -> dict[str, Any]:
    """A stored alarm as a webhook carries it (docs/alarms.md fields; times in ISO 8601 UTC)."""
    declared = vocabulary.ALARMS.get(row["type"])
    door = site.doors.get(row.get("door") or "")
    state = "resolved" if row.get("resolved_at") is not None else "cleared" if row.get("cleared_at") is not None \
        else "active"

    def when(key: str) -> str | None:
        value = row.get(key)
        return iso_ms(float(value)) if value is not None else None

    return {"id": row["id"], "type": row["type"], "label": declared.label if declared else row["type"],
            "severity": row["severity"], "priority": priority_of(site.alarms, row["type"]), "state": state,
            "device": row.get("device"), "door": row.get("door"), "door_name": door.name if door else None,
            "raised_at": when("raised_at"), "last_raised_at": when("last_raised_at"),
            "escalated_at": when("escalated_at"), "acknowledged": row.get("acknowledged_at") is not None,
            "occurrences": row.get("occurrences"), "source_event": row.get("source_event"),
            "detail": _loads(row.get("detail"), {})}


# ----------------------------------------------------------------------- the service


class Webhooks:
    """Subscriptions (each change audited), the queue's feeding and its delivery thread."""

    def __init__(self, store: Store, clock: Clock, *, site: Callable[[], Site], site_id: str,
                 settings: WebhookSettings | None = None, sender: Sender | None = None, ca_file: Path | None = None,
                 audit: Auditor | None = None) -> None:
        """``site``: the live site (door and person names, alarm priorities), read at each use; ``ca_file``: a CA
        trusted beside the system's for https receivers (the site CA)."""
        self.store = store
        self.clock = clock
        self.site = site
        self.site_id = site_id
        self.settings = settings or WebhookSettings()
        self.sender: Sender = sender or HttpSender(ca_file)
        self.audit = audit
        self.counters: Counter[str] = Counter()
        self._seen_escalations: set[str] = set()  # sources queued at the escalation cursor's own time
        self._last_prune = float("-inf")
        self._last_idle_read = float("-inf")
        #: Some webhook is enabled (as the last round saw): only then does a stored event wake the worker.
        self.active = True
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round = threading.Lock()  # one round at a time (the thread, a test, the desk's retry)

    @property
    def lease_s(self) -> float:
        """A claim outlives the longest round a batch could take, so no delivery is sent twice meanwhile."""
        return 2 * self.settings.timeout_s * (self.settings.batch + 2)

    # ------------------------------------------------------------ subscriptions

    def all(self) -> list[Subscription]:
        return [Subscription.from_row(r) for r in self.store.webhooks()]

    def get(self, webhook_id: str) -> Subscription:
        row = self.store.webhook(webhook_id)
        if row is None:
            raise WebhookNotFound(f"no webhook {webhook_id!r} (GET /api/v1/webhooks lists them)")
        return Subscription.from_row(row)

    def _check(self, name: str, url: str, event_types: Sequence[str], doors: Sequence[str], decision: str | None,
               *, exclude: str | None = None) -> tuple[str, str, tuple[str, ...], tuple[str, ...], str | None]:
        name = (name or "").strip()
        if not _NAME_RE.match(name):
            raise WebhookError(f"the name must be 1 to {MAX_NAME} letters, digits, spaces or . _ : @ ( ) / - "
                               "(starting with a letter or digit)")
        url = check_url(url)
        types = tuple(dict.fromkeys(t.strip() for t in event_types if t and t.strip()))
        if not types:
            raise WebhookError("choose at least one event type")
        unknown = [t for t in types if t not in EVENT_TYPES]
        if unknown:
            raise WebhookError(f"unknown event type(s) {', '.join(sorted(unknown))} (one of {', '.join(EVENT_TYPES)})")
        chosen = tuple(dict.fromkeys(d.strip() for d in doors if d and d.strip()))
        site_doors = self.site().doors
        bad = [d for d in chosen if d not in site_doors]
        if bad:
            raise WebhookError(f"no door {', '.join(sorted(bad))} on this site (GET /api/v1/doors lists them)")
        decision = (decision or "").strip() or None
        if decision is not None and decision not in DECISIONS:
            raise WebhookError("decision is granted, denied or empty (any)")
        if any(s.name.casefold() == name.casefold() and s.id != exclude for s in self.all()):
            raise WebhookConflict(f"a webhook named {name!r} exists already: choose another name")
        return name, url, types, chosen, decision

    def _details(self, sub: Subscription) -> dict[str, Any]:
        return {"name": sub.name, "origin": sub.origin, "event_types": list(sub.event_types), "doors": list(sub.doors),
                "decision": sub.decision, "include_names": sub.include_names, "enabled": sub.enabled}

    def create(self, *, name: str, url: str, event_types: Sequence[str], doors: Sequence[str] = (),
               decision: str | None = None, include_names: bool = False, enabled: bool = True,
               actor: str) -> tuple[Subscription, str]:
        """A new subscription and its signing secret: the one time the secret is handed out (audited without it)."""
        name, url, types, chosen, decision = self._check(name, url, event_types, doors, decision)
        if len(self.store.webhooks()) >= MAX_SUBSCRIPTIONS:
            raise WebhookConflict(f"a site has at most {MAX_SUBSCRIPTIONS} webhooks: delete one first")
        now = self.clock.wall()
        secret = new_secret()
        webhook_id = "wh-" + uuid.uuid4().hex[:16]
        self.store.add_webhook({"id": webhook_id, "name": name, "url": url, "secret": secret, "event_types": types,
                                "doors": chosen, "decision": decision, "include_names": include_names,
                                "enabled": enabled, "created_by": actor, "created_at": now, "updated_at": now,
                                "secret_rotated_at": None})
        sub = self.get(webhook_id)
        record_audit(self.audit, actor, "webhook.create", f"webhook:{webhook_id}", self._details(sub))
        log.info("webhook %s (%s) created by %s, posting to %s", webhook_id, name, actor, sub.origin)
        self.wake()
        return sub, secret

    def update(self, webhook_id: str, *, name: str, url: str, event_types: Sequence[str], doors: Sequence[str] = (),
               decision: str | None = None, include_names: bool = False, enabled: bool = True,
               actor: str) -> Subscription:
        """Change everything but the secret (:meth:`rotate_secret`); audited with what changed."""
        before = self.get(webhook_id)
        name, url, types, chosen, decision = self._check(name, url, event_types, doors, decision, exclude=webhook_id)
        self.store.update_webhook(webhook_id, {"name": name, "url": url, "event_types": types, "doors": chosen,
                                               "decision": decision, "include_names": include_names,
                                               "enabled": enabled, "updated_at": self.clock.wall()})
        after = self.get(webhook_id)
        old, new = self._details(before), self._details(after)
        changed = sorted(k for k in new if new[k] != old[k]) + (["url"] if before.url != after.url else [])
        if changed:
            record_audit(self.audit, actor, "webhook.update", f"webhook:{webhook_id}",
                         {**new, "changed": sorted(set(changed))})
        self.wake()
        return after

    def set_enabled(self, webhook_id: str, enabled: bool, *, actor: str) -> bool:
        """Enable or disable (a disabled webhook queues nothing; what it has pending waits); False if no change."""
        sub = self.get(webhook_id)
        if sub.enabled == enabled:
            return False
        self.store.update_webhook(webhook_id, {"enabled": enabled, "updated_at": self.clock.wall()})
        record_audit(self.audit, actor, "webhook.enable" if enabled else "webhook.disable", f"webhook:{webhook_id}",
                     {"name": sub.name})
        self.wake()
        return True

    def rotate_secret(self, webhook_id: str, *, actor: str) -> str:
        """A new signing secret, in force for every attempt from now on (pending deliveries included); the old
        one stops at once. Returned this once (audited without it)."""
        sub = self.get(webhook_id)
        secret = new_secret()
        now = self.clock.wall()
        self.store.update_webhook(webhook_id, {"secret": secret, "secret_rotated_at": now, "updated_at": now})
        record_audit(self.audit, actor, "webhook.rotate_secret", f"webhook:{webhook_id}", {"name": sub.name})
        return secret

    def delete(self, webhook_id: str, *, actor: str) -> int:
        """Delete the subscription with its pending deliveries and dead letters; how many deliveries went."""
        sub = self.get(webhook_id)
        removed = self.store.delete_webhook(webhook_id)
        if removed is None:
            raise WebhookNotFound(f"no webhook {webhook_id!r}")
        record_audit(self.audit, actor, "webhook.delete", f"webhook:{webhook_id}",
                     {"name": sub.name, "origin": sub.origin, "deliveries_removed": removed})
        return removed

    # ------------------------------------------------------------ deliveries seen from the desk

    def deliveries(self, webhook_id: str | None = None, *, state: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
        """Deliveries without bodies, most recently changed first (``state`` pending, delivered or dead)."""
        if state is not None and state not in DELIVERY_STATES:
            raise WebhookError(f"state is one of {', '.join(DELIVERY_STATES)}")
        if webhook_id is not None:
            self.get(webhook_id)
        return self.store.webhook_deliveries(subscription=webhook_id, state=state, limit=limit)

    def delivery(self, delivery_id: str) -> dict[str, Any]:
        """One delivery with its body (None once delivered)."""
        row = self.store.webhook_delivery(delivery_id)
        if row is None:
            raise WebhookNotFound(f"no delivery {delivery_id!r}")
        return row

    def counts(self, webhook_id: str | None = None) -> dict[str, int]:
        return self.store.webhook_delivery_counts(webhook_id)

    def retry(self, delivery_id: str, *, actor: str) -> None:
        """Put a dead letter back in the queue, due now, with a fresh retry window (audited)."""
        row = self.delivery(delivery_id)
        if row["state"] != "dead":
            raise WebhookConflict(f"delivery {delivery_id} is {row['state']}, not dead: only dead letters are retried")
        if not self.store.retry_webhook_deliveries(now=self.clock.wall(), delivery_id=delivery_id):
            raise WebhookConflict(f"delivery {delivery_id} is no longer dead")
        record_audit(self.audit, actor, "webhook.retry", f"webhook:{row['subscription']}",
                     {"deliveries": [delivery_id]})
        self.wake()

    def retry_dead(self, webhook_id: str, *, actor: str) -> int:
        """Put every dead letter of a subscription back in the queue (audited with how many)."""
        self.get(webhook_id)
        ids = self.store.retry_webhook_deliveries(now=self.clock.wall(), subscription=webhook_id)
        if ids:
            record_audit(self.audit, actor, "webhook.retry", f"webhook:{webhook_id}",
                         {"deliveries": ids[:50], "count": len(ids)})
            self.wake()
        return len(ids)

    # ------------------------------------------------------------ signing and sending

    def _headers(self, secret: str, delivery_id: str, kind: str, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json; charset=utf-8", "User-Agent": f"doorkeep-webhooks/{__version__}",
                SIGNATURE_HEADER: sign(secret, int(self.clock.wall()), body), DELIVERY_HEADER: delivery_id,
                EVENT_HEADER: kind}

    def send_test(self, webhook_id: str, *, actor: str) -> PingResult:
        """Send a signed ``ping`` now, outside the queue (never retried), and say how the receiver answered.
        Works for a disabled webhook too: that is when an admin checks a receiver. Audited with the outcome."""
        sub = self.get(webhook_id)
        secret = self.store.webhook_secrets([webhook_id]).get(webhook_id)
        if secret is None:
            raise WebhookNotFound(f"no webhook {webhook_id!r}")
        delivery_id = "test-" + uuid.uuid4().hex
        body = _json({"schema": SCHEMA, "id": delivery_id, "type": PING, "site": self.site_id, "webhook": webhook_id,
                      "created_at": iso_ms(self.clock.wall()), "test": True,
                      "ping": {"message": f"test delivery from the doorkeep desk, sent by {actor}"}})
        answer = self.sender.post(sub.url, body, self._headers(secret, delivery_id, PING, body),
                                  self.settings.timeout_s)
        record_audit(self.audit, actor, "webhook.test", f"webhook:{webhook_id}",
                     {"origin": sub.origin, "ok": answer.ok, "status": answer.status, "error": answer.error})
        return PingResult(delivery_id, answer.ok, answer.status, answer.error, round(answer.elapsed_ms, 1))

    # ------------------------------------------------------------ feeding the queue

    def wake(self, *_: object) -> None:
        """Any thread (the bus's store thread after an event, the desk's event log, the store's alarm hook): look
        soon. Only sets an event: it never waits, reads or writes anything."""
        self._wake.set()

    def on_event(self, event: object = None, new: bool = True) -> None:
        """A :class:`server.bus.ServerBus` listener (and the desk's event log's, and the store's alarm-write hook):
        something was stored; the worker reads it from the store. Nothing at all while no webhook is enabled."""
        if self.active:
            self._wake.set()

    def enqueue_new(self) -> tuple[int, bool]:
        """Queue a delivery for each subscription that wants what was stored since the cursors, and move them;
        how many were queued, and whether a source had more than one batch waiting (read again at once)."""
        subs = [Subscription.from_row(r) for r in self.store.webhooks(enabled_only=True)]
        self.active = bool(subs)
        now = self.clock.wall()
        if not subs:
            if now - self._last_idle_read < IDLE_CURSOR_S:
                return 0, False
            self._last_idle_read = now  # below: nothing is queued, the cursors move to the end
        cursors = self.store.webhook_cursors()
        site = self.site()
        rows: list[dict[str, Any]] = []
        moves: dict[str, Cursor] = {}
        more = False

        def add(sub: Subscription, kind: str, source: str, what: str, body: dict[str, Any]) -> None:
            delivery_id = "dlv-" + uuid.uuid4().hex
            rows.append({"id": delivery_id, "subscription": sub.id, "source": source, "event_type": kind,
                         "created_at": now,
                         "payload": _json({"schema": SCHEMA, "id": delivery_id, "type": kind, "site": self.site_id,
                                           "webhook": sub.id, "created_at": iso_ms(now), "test": False,
                                           what: body}).decode("utf-8")})

        # Events, by rowid (arrival order); only the types someone asked for are read.
        wanted = sorted({t for s in subs for t in s.event_types if t not in ALARM_TYPES})
        start = cursors.get(EVENTS_CURSOR, (0.0, None, None))
        events, reached = self.store.source_rows(EVENTS_CURSOR, start, SCAN_BATCH, wanted)
        more |= len(events) >= SCAN_BATCH
        for ev in events:
            for sub in subs:
                if sub.wants(ev["type"], ev["door"], ev["decision"]) and float(ev["received_at"] or 0) >= sub.created_at:
                    add(sub, ev["type"], ev["id"], "event", event_body(ev, site, include_names=sub.include_names))
        if reached != start:
            moves[EVENTS_CURSOR] = reached
        # New alarms, by rowid.
        start = cursors.get(ALARMS_CURSOR, (0.0, None, None))
        alarms, reached = self.store.source_rows(ALARMS_CURSOR, start, SCAN_BATCH)
        more |= len(alarms) >= SCAN_BATCH
        for alarm in alarms:
            for sub in subs:
                if sub.wants(ALARM_RAISED, alarm.get("door")):
                    add(sub, ALARM_RAISED, f"alarm_raised:{alarm['id']}", "alarm", alarm_body(alarm, site))
        if reached != start:
            moves[ALARMS_CURSOR] = reached
        # Escalations, by their time (an escalation is an update: no rowid order). One sweep of the desk's alarm
        # watch escalates every due alarm at the same time, so all escalations at the cursor's own time are read
        # again each round (few: they are skipped by id) and no batch limit can cut such a group in two.
        since = float(cursors.get(ESCALATIONS_CURSOR, (0.0, None, None))[0])
        escalated = self.store.webhook_source_escalations(since, ESCALATION_BATCH)
        for alarm in escalated:
            at = float(alarm["escalated_at"])
            source = f"alarm_escalated:{alarm['id']}:{int(at * 1000)}"
            if source in self._seen_escalations:
                continue  # read again at the cursor's own time, and queued already
            for sub in subs:
                if sub.wants(ALARM_ESCALATED, alarm.get("door")) and at >= sub.created_at:
                    add(sub, ALARM_ESCALATED, source, "alarm", alarm_body(alarm, site))
        if escalated:
            top = max(float(a["escalated_at"]) for a in escalated)
            if top != since:
                moves[ESCALATIONS_CURSOR] = (top, None, None)
            self._seen_escalations = {f"alarm_escalated:{a['id']}:{int(top * 1000)}" for a in escalated
                                      if float(a["escalated_at"]) == top}
        if not rows and not moves:
            return 0, more
        queued = self.store.queue_webhook_deliveries(rows, moves)
        self.counters["queued"] += queued
        return queued, more

    # ------------------------------------------------------------ delivering

    def run_once(self) -> RoundReport:
        """Queue what is new, then deliver what is due now (one batch); record each outcome. Safe to call from a
        test at any time (one round runs at a time)."""
        with self._round:
            report = RoundReport()
            report.queued, report.more = self.enqueue_new()
            now = self.clock.wall()
            claimed = self.store.claim_webhook_deliveries(now, now + self.lease_s, self.settings.batch)
            if claimed:
                self._deliver(claimed, report)
            if now - self._last_prune >= PRUNE_EVERY_S:
                self._last_prune = now
                pruned = self.store.prune_webhook_deliveries(delivered_before=now - self.settings.keep_delivered_s,
                                                             dead_before=now - self.settings.keep_dead_s)
                if pruned:
                    log.info("webhooks: %d old delivery records deleted", pruned)
            return report

    def _deliver(self, claimed: list[dict[str, Any]], report: RoundReport) -> None:
        s = self.settings
        keys = self.store.webhook_secrets(sorted({r["subscription"] for r in claimed}))
        silent: dict[str, _Outcome] = {}  # subscription -> the outcome of its receiver not answering this round
        outcomes: list[tuple[str, str, int, float, str | None, int | None]] = []
        for r in claimed:
            attempts = int(r["attempts"])
            secret = keys.get(r["subscription"])
            if secret is None:
                continue  # the subscription was deleted meanwhile (its deliveries with it)
            if r["subscription"] in silent:
                # Its receiver did not answer this round: wait for its next attempt, untried (no attempt counted).
                first = silent[r["subscription"]]
                outcomes.append((r["id"], "pending", attempts, first.next_at,
                                 f"not tried: the receiver did not answer another delivery ({first.error})", None))
                report.deferred += 1
                continue
            now = self.clock.wall()
            if attempts and now - float(r["age_from"]) > s.max_age_s:
                outcomes.append((r["id"], "dead", attempts, now, f"older than {s.max_age_s:.0f} s: given up", None))
                report.dead += 1
                self.counters["dead"] += 1
                continue
            body = (r["payload"] or "").encode("utf-8")
            try:
                answer = self.sender.post(r["url"], body, self._headers(secret, r["id"], r["event_type"], body),
                                          s.timeout_s)
            except Exception as exc:  # a sender bug must not leave the batch leased until the lease runs out
                log.exception("webhook sender failed unexpectedly")
                answer = Answer(None, f"{type(exc).__name__}: {exc}")
            attempts += 1
            done = self.clock.wall()
            if answer.ok:
                outcomes.append((r["id"], "delivered", attempts, done, None, answer.status))
                report.delivered += 1
                self.counters["delivered"] += 1
                continue
            delay = s.backoff(attempts)
            if attempts >= s.max_attempts or done + delay - float(r["age_from"]) > s.max_age_s:
                outcome = _Outcome("dead", attempts, done, answer.error, answer.status)
                report.dead += 1
                self.counters["dead"] += 1
                log.error("webhook delivery %s to %s failed %d times, given up (dead letter): %s", r["id"],
                          origin(r["url"]), attempts, answer.error)
            else:
                outcome = _Outcome("pending", attempts, done + delay, answer.error, answer.status)
                report.retried += 1
                self.counters["retried"] += 1
                log.warning("webhook delivery %s to %s failed (attempt %d of %d), retrying in %.0f s: %s", r["id"],
                            origin(r["url"]), attempts, s.max_attempts, delay, answer.error)
            if answer.status is None:
                silent[r["subscription"]] = _Outcome("pending", attempts, done + delay, answer.error)
            outcomes.append((r["id"], outcome.state, outcome.attempts, outcome.next_at, outcome.error, outcome.status))
        self.store.record_webhook_outcomes(outcomes, self.clock.wall())

    def stats(self) -> dict[str, Any]:
        """The queue's figures (for the desk and for metrics): deliveries by state, and this process's counters."""
        return {"deliveries": self.counts(), "counters": dict(self.counters)}

    # ------------------------------------------------------------ thread

    def recover(self) -> int:
        """Release what a previous sender of this store claimed and never finished (it stopped mid-round): due
        now. Called by :meth:`start`; only the server sends, so no live sender holds a lease at that moment."""
        released = self.store.release_webhook_leases(self.clock.wall())
        if released:
            log.warning("%d webhook deliveries were being sent when the server stopped; sending them again", released)
        return released

    def start(self) -> None:
        if self._thread is not None:
            return
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-webhooks", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the current round: a request in progress ends within ``timeout_s``; a round still running
        after that keeps its leases, released when the server starts again (the delivery is sent once more)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self.settings.timeout_s + 2)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            more = False
            try:
                report = self.run_once()
                more = bool(report.more or report.queued or report.delivered or report.retried or report.dead)
                due = self.store.next_webhook_due()
            except Exception:
                log.exception("webhook round failed; trying again in %.0f s", IDLE_S)
                due = None
            if due is None:
                wait = IDLE_S
            else:
                wait = min(IDLE_S, max(0.0, due - self.clock.wall()))
            if wait <= 0.0 and not more:
                wait = MIN_GAP_S  # due but nothing moved (leased by a round that died): do not spin
            if self._stop.wait(MIN_GAP_S):  # coalesce a burst of wake-ups into one round
                return
            self._wake.wait(max(0.0, wait - MIN_GAP_S))


__all__ = ["ALARM_ESCALATED", "ALARM_RAISED", "DELIVERY_HEADER", "EVENT_HEADER", "EVENT_TYPES", "PING", "SCHEMA",
           "SIGNATURE_HEADER", "TOLERANCE_S", "Answer", "HttpSender", "RoundReport", "Sender", "Subscription",
           "PingResult", "WebhookConflict", "WebhookError", "WebhookNotFound", "WebhookSettings", "Webhooks",
           "alarm_body", "check_url", "event_body", "new_secret", "origin", "sign", "verify"]
