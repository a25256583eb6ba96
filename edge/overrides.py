"""Timed door overrides held by the edge: unlock until a time, lock until a time.

An operator at the desk says "keep the loading dock unlocked until 14:00" with a signed ``unlock`` command
carrying ``until`` (doorkeep/commands.py). The server may be unreachable at 14:00, so the edge itself holds the
override and its end, and the agent's loop returns the door to its normal state then (the door's schedule,
or locked), with an ``override_ended`` event. Precedence at the door, strongest first (docs/desk.md):

1. a lockdown (the site's or the door's area): an unlock override ends at once (``why: lockdown``);
2. a lock override: the door's unlock schedule does not hold it open (REX still opens it: egress);
3. an unlock override: the door is held unlocked like a schedule hold (every opening authorised);
4. the door's own mode and schedule.

Persistence: the override is kept as the **signed command itself** in ``state_dir/overrides.json``, and
verified again with the policy key when the edge starts. A file edited on the Pi can therefore drop an override
(the door goes back to normal: fail safe) but never make one up; one whose end has passed while the edge was
down ends at the first turn of the loop. Everything here is pure (no clock, no I/O but :func:`encode` /
:func:`decode` of the file's bytes); the agent owns the book on its loop thread.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Callable

from doorkeep.clock import iso_ms
from doorkeep.commands import CommandError, VerifiedCommand, until_of

#: the overrides in force, as their signed commands, in the state_dir
OVERRIDES_FILE = "overrides.json"
UNLOCK = "unlock"
LOCK = "lock"
KINDS = (UNLOCK, LOCK)
#: why an override ended (the ``why`` of ``override_ended``)
ENDED_WHY = ("expired", "released", "replaced", "locked", "lockdown")


@dataclass(frozen=True)
class Override:
    """One door's timed override: ``kind`` (unlock or lock) until ``until`` (UTC epoch seconds)."""

    door: str
    kind: str
    until: float
    transaction: str
    payload: bytes
    """The signed command that set it: what is persisted, verified again at start."""

    def expired(self, wall: float) -> bool:
        return wall >= self.until

    def describe(self) -> dict[str, Any]:
        """What the retained state and the events say about it."""
        return {"kind": self.kind, "until": iso_ms(self.until), "transaction": self.transaction}


def from_command(cmd: VerifiedCommand, payload: bytes) -> Override | None:
    """The override a verified command sets, or None (a momentary unlock, an immediate lock, anything else)."""
    if cmd.action not in KINDS:
        return None
    until = until_of(cmd.args)
    if until is None:
        return None
    return Override(cmd.args["door"], cmd.action, until, cmd.transaction, bytes(payload))


def encode(overrides: dict[str, Override]) -> bytes:
    """The file's bytes: ``{"version": 1, "doors": {door: base64 of the signed command}}``."""
    doors = {d: base64.b64encode(o.payload).decode("ascii") for d, o in sorted(overrides.items())}
    return json.dumps({"version": 1, "doors": doors}, separators=(",", ":")).encode("utf-8")


def decode(data: bytes, verify: Callable[[bytes], VerifiedCommand]) -> tuple[dict[str, Override], list[str]]:
    """The overrides a file holds, each re-verified by ``verify`` (signature, site, device); and the problems.

    Anything malformed, unsigned or not an override is dropped and named in the problems: a bad file never
    holds a door unlocked (fail safe), it only loses overrides."""
    problems: list[str] = []
    try:
        body = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}, ["not UTF-8 JSON"]
    if not isinstance(body, dict) or body.get("version") != 1 or not isinstance(body.get("doors"), dict):
        return {}, ["not a doorkeep overrides file (version 1)"]
    out: dict[str, Override] = {}
    for door, text in body["doors"].items():
        try:
            payload = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
            override = from_command(verify(payload), payload)
        except (binascii.Error, ValueError) as exc:  # CommandError is a ValueError
            problems.append(f"door {str(door)[:64]!r}: {exc if isinstance(exc, CommandError) else 'not base64'}")
            continue
        if override is None or override.door != door:
            problems.append(f"door {str(door)[:64]!r}: the command is not a timed override of this door")
            continue
        out[door] = override
    return out, problems


@dataclass(frozen=True)
class SaveOverrides:
    """A job for the jobs worker (edge/jobs.py): write the overrides file atomically, fsync'd."""

    data: bytes
