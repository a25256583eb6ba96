"""Signed commands (server -> edge): unlock, lock, release, lockdown, sync.

A command opens a door, so an edge must be able to tell the server's own,
fresh, first-time command from a forged, altered, old or replayed one. The
envelope has the shape of the policy envelope (:mod:`doorkeep.policy`) and is
signed with the same Ed25519 site key::

    {"schema": "doorkeep.cmd/1",
     "signed": "<JSON text: {site, device, transaction, action, args, issued_at, nonce}>",
     "signature": "<base64 Ed25519 signature over the UTF-8 bytes of signed>"}

Unlike a policy, a command is only good for a short time (``max_age_s``,
default 30 s, after ``issued_at``) and only once: its ``nonce`` (at least 128
random bits) is remembered by a :class:`ReplayGuard` for as long as the
command could still pass the age check, so a captured command re-published
later is refused either as ``stale`` or as ``replayed``.

:func:`verify_command` raises :class:`CommandError` whose ``reason`` is one
short machine code (:data:`REASONS`); the edge puts it in its result and its
``command_rejected`` event. Everything here is pure: the caller passes the
current wall time, and the guard's memory is exported and imported as a small
dict the edge persists.

Timed overrides: ``unlock`` and ``lock`` may carry ``until`` (a UTC ISO 8601 time, like ``issued_at``): the
door is held unlocked, or held locked against its unlock schedule, until that wall time, and the edge ends it
by itself then. ``until`` must lie after ``issued_at`` and at most :data:`MAX_OVERRIDE_S` after it, so a
signed override can never hold a door for ever; ``release`` ends a door's override early. A command without
``until`` means what it always meant (a momentary unlock, an immediate lock), so older commands stay valid.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from doorkeep.clock import iso_ms, parse_iso_ms
from doorkeep.errors import DoorkeepError

SCHEMA = "doorkeep.cmd/1"
SIGNATURE_BYTES = 64
ENVELOPE_FIELDS = frozenset({"schema", "signed", "signature"})
BODY_FIELDS = frozenset({"site", "device", "transaction", "action", "args", "issued_at", "nonce"})
#: a command older than this (seconds after issued_at, edge wall clock) is stale
DEFAULT_MAX_AGE_S = 30.0
#: a command issued more than this ahead of the edge's wall clock is from the future (clock skew allowance)
DEFAULT_MAX_SKEW_S = 5.0
#: how many nonces a ReplayGuard holds before it starts refusing older commands wholesale
DEFAULT_MAX_NONCES = 10_000
#: a command payload larger than this is not even parsed
MAX_COMMAND_BYTES = 8 * 1024

ACTIONS = frozenset({"unlock", "lock", "release", "lockdown", "sync"})
#: the longest timed override a command may ask for (``until`` - ``issued_at``)
MAX_OVERRIDE_S = 31 * 24 * 3600.0
#: the actions that take an optional ``until`` (a timed override)
TIMED_ACTIONS = frozenset({"unlock", "lock"})
REASONS = ("malformed", "unsigned", "bad_signature", "wrong_site", "wrong_device", "stale", "future",
           "replayed", "unknown_action", "bad_args")

_IDENT = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
_NONCE = re.compile(r"^[0-9a-f]{32,128}\Z")  # >= 128 bits


class CommandError(DoorkeepError, ValueError):
    """A command was refused. ``reason`` is one of :data:`REASONS`; ``action`` and ``transaction`` are
    filled in when they could be read (from the unverified body too: for the record, never for acting)."""

    def __init__(self, reason: str, message: str, *, action: str | None = None,
                 transaction: str | None = None) -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.action = action
        self.transaction = transaction


@dataclass(frozen=True)
class VerifiedCommand:
    """A command whose signature, site, device, freshness, nonce, action and args have been checked."""

    site: str
    device: str
    transaction: str
    action: str
    args: dict[str, Any]
    issued_at: float  # UTC epoch seconds (millisecond precision)
    nonce: str


# ================================================================= signing


def new_transaction() -> str:
    """A fresh transaction id (matches the result to the command)."""
    return secrets.token_hex(16)


def sign_command(*, site_id: str, device: str, action: str, args: dict[str, Any], key: Ed25519PrivateKey,
                 issued_at: float, transaction: str | None = None, nonce: str | None = None) -> bytes:
    """The signed envelope (UTF-8 JSON bytes) of one command for ``device``.

    ``args`` is checked as :func:`verify_command` would, so the server cannot send what every edge refuses.
    """
    transaction = transaction if transaction is not None else new_transaction()
    nonce = nonce if nonce is not None else secrets.token_hex(16)
    for name, value, pattern in (("site", site_id, _IDENT), ("device", device, _IDENT),
                                 ("transaction", transaction, _IDENT), ("nonce", nonce, _NONCE)):
        if not isinstance(value, str) or not pattern.match(value):
            raise CommandError("malformed", f"{name} {value!r} is not valid")
    check_args(action, args)
    check_until(action, args, issued_at)
    body = {"site": site_id, "device": device, "transaction": transaction, "action": action,
            "args": dict(args), "issued_at": iso_ms(issued_at), "nonce": nonce}
    signed = json.dumps(body, separators=(",", ":"), sort_keys=True, allow_nan=False)
    envelope = {"schema": SCHEMA, "signed": signed,
                "signature": base64.b64encode(key.sign(signed.encode("utf-8"))).decode("ascii")}
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


def check_args(action: Any, args: Any) -> None:
    """Raise ``unknown_action`` or ``bad_args`` unless ``args`` are exactly what ``action`` takes."""
    if not isinstance(action, str) or action not in ACTIONS:
        raise CommandError("unknown_action", f"unknown action {action!r} (known: {', '.join(sorted(ACTIONS))})")
    if not isinstance(args, dict):
        raise CommandError("bad_args", f"{action}: args must be a JSON object", action=action)
    if action in ("unlock", "lock", "release"):
        _only_keys(action, args, {"door", "until"} if "until" in args and action in TIMED_ACTIONS else {"door"})
        if not isinstance(args["door"], str) or not _IDENT.match(args["door"]):
            raise CommandError("bad_args", f"{action}: door {args['door']!r} is not an identifier", action=action)
        if "until" in args and until_of(args) is None:
            raise CommandError("bad_args", f"{action}: until must be a UTC ISO 8601 time", action=action)
    elif action == "lockdown":
        _only_keys(action, args, {"scope", "active"})
        if not isinstance(args["scope"], str) or not _IDENT.match(args["scope"]):
            raise CommandError("bad_args", f"lockdown: scope {args['scope']!r} is not 'site' or an area id",
                               action=action)
        if not isinstance(args["active"], bool):
            raise CommandError("bad_args", "lockdown: active must be true or false", action=action)
    elif args:  # sync
        raise CommandError("bad_args", f"sync takes no args, got {', '.join(map(repr, sorted(args)))}",
                           action=action)


def until_of(args: dict[str, Any]) -> float | None:
    """The ``until`` of a timed override as UTC epoch seconds; None if absent or not a UTC ISO 8601 time."""
    return _issued_at(args.get("until"))


def check_until(action: str, args: dict[str, Any], issued_at: float) -> None:
    """Raise ``bad_args`` unless a timed override ends after it was issued and within :data:`MAX_OVERRIDE_S`.

    Whether it has already passed at the edge is the edge's to judge (with its own clock, when it acts)."""
    until = until_of(args) if action in TIMED_ACTIONS else None
    if until is None:
        return
    if until <= issued_at:
        raise CommandError("bad_args", f"{action}: until is not after issued_at", action=action)
    if until - issued_at > MAX_OVERRIDE_S:
        raise CommandError("bad_args", f"{action}: until is more than {MAX_OVERRIDE_S / 86400:g} days after "
                                       "issued_at", action=action)


def _only_keys(action: str, args: dict[str, Any], keys: set[str]) -> None:
    if set(args) != keys:
        raise CommandError("bad_args", f"{action}: args must be exactly {sorted(keys)}, got {sorted(map(str, args))}",
                           action=action)


# ============================================================ verification


def _readable(body: Any, name: str) -> str | None:
    """``name`` from a body not (yet) trusted, if it is a plain identifier: for the record only."""
    if isinstance(body, dict):
        value = body.get(name)
        if isinstance(value, str) and _IDENT.match(value):
            return value
    return None


def peek_door(payload: Any) -> str | None:
    """The ``door`` a payload's args name, without any check: to file a refused command under its door."""
    try:
        envelope = json.loads(bytes(payload)[:MAX_COMMAND_BYTES])
        body = json.loads(envelope["signed"]) if isinstance(envelope, dict) else None
        args = body.get("args") if isinstance(body, dict) else None
    except Exception:  # anything at all: this is best effort on hostile input
        return None
    return _readable(args, "door")


def verify_command(payload: bytes, key: Ed25519PublicKey, *, site_id: str, device: str, now: float,
                   guard: ReplayGuard | None = None, max_age_s: float = DEFAULT_MAX_AGE_S,
                   max_skew_s: float = DEFAULT_MAX_SKEW_S) -> VerifiedCommand:
    """Check and open a signed command at wall time ``now``; raise :class:`CommandError` with its reason.

    With a ``guard`` the nonce is checked and, if every other check passed, remembered: a second call
    with the same payload raises ``replayed``. Nothing but :class:`CommandError` escapes, whatever the bytes.
    """
    action, transaction = None, None

    def fail(reason: str, message: str) -> CommandError:
        return CommandError(reason, message, action=action, transaction=transaction)

    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise fail("malformed", f"command payload must be bytes, got {type(payload).__name__}")
    raw_payload = bytes(payload)
    if len(raw_payload) > MAX_COMMAND_BYTES:
        raise fail("malformed", f"command of {len(raw_payload)} bytes exceeds {MAX_COMMAND_BYTES}")
    try:
        envelope = json.loads(raw_payload.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise fail("malformed", "command payload is not UTF-8 JSON") from None
    if not isinstance(envelope, dict):
        raise fail("malformed", "command payload is not a JSON object")
    if envelope.get("schema") != SCHEMA:
        raise fail("malformed", f"schema must be {SCHEMA!r}, got {str(envelope.get('schema'))[:40]!r}")
    signed = envelope.get("signed")
    if not isinstance(signed, str):
        raise fail("malformed", "'signed' must be a JSON string")
    extra = sorted(map(str, envelope.keys() - ENVELOPE_FIELDS))
    if extra:
        raise fail("malformed", f"unexpected envelope field(s) {', '.join(map(repr, extra))[:80]}")
    try:
        unverified = json.loads(signed, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        unverified = None
    action, transaction = _readable(unverified, "action"), _readable(unverified, "transaction")
    signature = envelope.get("signature")
    if signature is None or signature == "":
        raise fail("unsigned", "the command carries no signature")
    if not isinstance(signature, str):
        raise fail("bad_signature", "signature is not a string")
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise fail("bad_signature", "signature is not base64") from None
    if len(sig) != SIGNATURE_BYTES:
        raise fail("bad_signature", f"signature has {len(sig)} bytes, expected {SIGNATURE_BYTES}")
    try:
        key.verify(sig, signed.encode("utf-8"))
    except (InvalidSignature, UnicodeEncodeError):
        raise fail("bad_signature", "signature does not match: not signed by this site's key, "
                                    "or altered after signing") from None

    # Signed by the server: still checked as strictly as any message.
    body = unverified
    if not isinstance(body, dict):
        raise fail("malformed", "signed body is not a JSON object")
    missing = sorted(BODY_FIELDS - body.keys())
    if missing:
        raise fail("malformed", f"signed body is missing {', '.join(missing)}")
    extra = sorted(map(str, body.keys() - BODY_FIELDS))
    if extra:
        raise fail("malformed", f"signed body has unexpected field(s) {', '.join(map(repr, extra))[:80]}")
    if transaction is None:
        raise fail("malformed", "transaction is not an identifier")
    if body["site"] != site_id:
        raise fail("wrong_site", f"command is for site {str(body['site'])[:64]!r}, this is site {site_id!r}")
    if body["device"] != device:
        raise fail("wrong_device", f"command is for device {str(body['device'])[:64]!r}, this is {device!r}")
    issued = _issued_at(body["issued_at"])
    if issued is None:
        raise fail("malformed", "issued_at is not a UTC ISO 8601 time")
    nonce = body["nonce"]
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise fail("malformed", "nonce must be 32-128 lowercase hex digits")
    try:
        check_args(body["action"], body["args"])
        check_until(body["action"], body["args"], issued)
    except CommandError as exc:
        raise fail(exc.reason, str(exc).split(": ", 1)[1]) from None
    age = now - issued
    if age > max_age_s:
        raise fail("stale", f"issued {age:.1f} s ago (more than {max_age_s:g} s)")
    if -age > max_skew_s:
        raise fail("future", f"issued {-age:.1f} s in the future (more than {max_skew_s:g} s): check the clocks")
    if guard is not None:
        guard.check_and_remember(nonce, issued, now, on_replay=fail)
    return VerifiedCommand(site=site_id, device=device, transaction=transaction, action=body["action"],
                           args=dict(body["args"]), issued_at=issued, nonce=nonce)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _issued_at(value: Any) -> float | None:
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        stamp = parse_iso_ms(value)
    except (ValueError, OverflowError, OSError):
        return None
    return stamp if math.isfinite(stamp) else None


# ============================================================ replay guard


@dataclass
class ReplayGuard:
    """The nonces of commands accepted within the freshness window, so each is accepted only once.

    A nonce is kept until its command's ``issued_at + window_s`` (the age check refuses it after
    that anyway) and forgotten by :meth:`prune`. Memory is bounded by ``max_nonces``: when full, the
    oldest nonce is dropped and ``floor`` rises to its ``issued_at``; from then on every command
    issued at or before ``floor`` is refused as replayed, since it can no longer be told apart from
    one already accepted. A flood therefore refuses commands, it never reopens the replay window.

    Not tied to a clock: callers pass the wall time. :meth:`export` / :meth:`load` give the small dict
    the edge writes to disk, so a restart does not forget what was accepted.
    """

    window_s: float = DEFAULT_MAX_AGE_S + DEFAULT_MAX_SKEW_S
    max_nonces: int = DEFAULT_MAX_NONCES
    floor: float = float("-inf")
    _seen: dict[str, float] = field(default_factory=dict)  # nonce -> issued_at
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_remember(self, nonce: str, issued_at: float, now: float, *,
                           on_replay: Any = None) -> None:
        """Remember ``nonce``; raise ``replayed`` if it was seen, or if the command is not newer than ``floor``."""
        make = on_replay or (lambda reason, message: CommandError(reason, message))
        with self._lock:
            self._prune(now)
            if nonce in self._seen:
                raise make("replayed", "this command (its nonce) was already accepted")
            if issued_at <= self.floor:
                raise make("replayed", "issued before the oldest command this edge still remembers")
            self._seen[nonce] = issued_at
            while len(self._seen) > self.max_nonces:
                oldest = min(self._seen, key=self._seen.__getitem__)
                self.floor = max(self.floor, self._seen.pop(oldest))

    def prune(self, now: float) -> None:
        with self._lock:
            self._prune(now)

    def _prune(self, now: float) -> None:
        expired = [n for n, t in self._seen.items() if t + self.window_s < now]
        for n in expired:
            del self._seen[n]

    def export(self) -> dict[str, Any]:
        """``{"version": 1, "floor": F|None, "nonces": {nonce: issued_at}}`` (JSON-compatible)."""
        with self._lock:
            return {"version": 1, "floor": self.floor if math.isfinite(self.floor) else None,
                    "nonces": dict(self._seen)}

    def load(self, data: Any) -> None:
        """Take over what :meth:`export` wrote; raise :class:`CommandError` (``malformed``) on anything else."""
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("nonces"), dict):
            raise CommandError("malformed", "not a doorkeep replay guard export (version 1)")
        floor = data.get("floor")
        if floor is not None and (isinstance(floor, bool) or not isinstance(floor, (int, float))
                                  or not math.isfinite(floor)):
            raise CommandError("malformed", "replay guard floor is not a number")
        seen: dict[str, float] = {}
        for nonce, issued in data["nonces"].items():
            if not _NONCE.match(nonce) or isinstance(issued, bool) or not isinstance(issued, (int, float)) \
                    or not math.isfinite(issued):
                raise CommandError("malformed", "replay guard holds an entry that is not nonce -> time")
            seen[nonce] = float(issued)
        with self._lock:
            self._seen = seen
            self.floor = float(floor) if floor is not None else float("-inf")
            while len(self._seen) > self.max_nonces:
                oldest = min(self._seen, key=self._seen.__getitem__)
                self.floor = max(self.floor, self._seen.pop(oldest))

    def refuse_before(self, when: float) -> None:
        """Refuse every command issued at or before ``when`` (after losing the persisted nonces)."""
        with self._lock:
            self.floor = max(self.floor, when)
