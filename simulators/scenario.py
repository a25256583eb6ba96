"""Scenario files: a tester's timeline of steps and expectations, run against a full site.

A scenario is a YAML file (docs/scenarios.md is the reference)::

    name: Lost card mid-day
    site: ../../firmware-config/sites/hq
    start: "2026-03-02 08:55"
    steps:
      - badge: main_out
        person: alice
      - expect_decision: main_out
        reason: granted
      - advance: 3h
      - report_lost: "0F00A1B2C3"
      - badge: main_out
        card: "0F00A1B2C3"
      - expect_decision: main_out
        reason: credential_inactive

Each step is a mapping with exactly one *verb* key (``badge``, ``advance``,
``expect_decision``, …) whose value is the step's subject (a door, a
duration, a person…), plus the verb's named options. Loading is strict and
happens in two passes before anything runs: the file's shape (every key and
value, the order of outages and visitor steps), then every name against the
site (doors, people, areas, cards, wiring). Every problem names the file,
the line, the step and the fix (:class:`ScenarioError`).

Running starts a broker, the server and every edge agent on simulators
(:class:`simulators.site.SiteRunner`) on a :class:`ScenarioClock` set to
``start``. Actions drive the simulators and the desk operations; each one
waits for what it caused (a badge for its access decision, an opening for
the edge to see it, a clock jump for every edge to catch up). Expectations
wait for their condition up to a deadline (``within``, default 5 s real
time), never a blind sleep. Decisions, relays and alarms are observed at the
edge (so they work while the server or broker is down); stored events,
presence and occupancy at the server, and so are the alarms the server raises itself (intrusion
signals, and ``certificate_refused`` from the broker's log).
"""

from __future__ import annotations

import difflib
import io
import json
import re
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import yaml

from doorkeep.config import CARD_FORMATS, SiteBundle, load_site_dir
from doorkeep.contract import EVENT_TYPES, GRANT_RULES, EventMsg
from doorkeep.credentials import card_hash, last4, normalise
from doorkeep.decision import Reason
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.model import CredentialState, PersonKind
from doorkeep.vocabulary import ADDRESS, CREDENTIAL, EDGE_EVENT, INTRUSION, SECURITY, alarms_about, alarms_from
from edge.agent import PIN_ENTRY_S
from edge.qr import QR_REPEAT_S
from edge.osdp.cp import CAUSE_CLEAR_NAK, CAUSE_DOWNGRADE, CAUSE_HANDSHAKE_FAILED, CAUSE_MAC_FAILURE
from edge.framing import encode_ascii, encode_em4100
from server.directory import Visitor
from simulators.brokers import BrokerUnavailable, connection_attempt
from simulators.clock import ScenarioClock
from simulators.site import DEMO_SITE, KEYPAD_PROTOCOLS, READER_CARD_FORMATS, SiteRunner, SiteRunnerError, mosquitto_installed
from simulators.wiegand import card_bits

SEGMENT = re.compile(r"^[A-Za-z0-9_-]+\Z")
DEFAULT_WITHIN_S = 5.0
MAX_WITHIN_S = 120.0
#: The longest time bound a scenario may state (``decided_within``, ``refused_within``).
MAX_BOUND_S = 60.0
#: Alarms an edge raises by its events (doorkeep/vocabulary.py, source ``edge_event``): checked in the events
#: the edges publish, at a door.
ALARM_TYPES: tuple[str, ...] = alarms_from(EDGE_EVENT)
#: Alarms the server raises from patterns of events (server/intrusion.py) and its security watchers
#: (server/brokerlog.py): checked in the server's alarm store, at a door or, for ``card_probing``, for one card
#: (``expect_alarm`` with ``card:`` and no door).
SERVER_ALARM_TYPES: tuple[str, ...] = alarms_from(INTRUSION, SECURITY)
CARD_ALARM_TYPES: tuple[str, ...] = alarms_about(CREDENTIAL)
#: Server alarms about a network address, at no door (``expect_alarm:`` with only ``type:``): the broker's log
#: names neither the device nor the certificate it refused (server/brokerlog.py).
ADDRESS_ALARM_TYPES: tuple[str, ...] = alarms_about(ADDRESS)
#: ``detail.cause`` of a ``reader_security`` alarm (edge/osdp/cp.py, docs/readers.md "Security signals").
READER_SECURITY_CAUSES = (CAUSE_MAC_FAILURE, CAUSE_DOWNGRADE, CAUSE_HANDSHAKE_FAILED, CAUSE_CLEAR_NAK)
#: The most clear NAKs, wrong-key handshakes or connection attempts one step makes: an attack is a handful
#: around a threshold, and each wrong-key handshake costs the control panel's real retry pause.
MAX_INJECTED = 20


# =================================================================== errors


class ScenarioError(ValueError):
    """One problem in a scenario file: where it is, what is wrong, how to fix it."""

    def __init__(self, file: str, problem: str, fix: str, *, line: int | None = None,
                 step: int | None = None, verb: str | None = None) -> None:
        self.file = file
        self.line = line
        self.step = step
        self.verb = verb
        self.problem = problem
        self.fix = fix
        where = file + (f":{line}" if line else "")
        what = ""
        if step is not None:
            what = f" step {step}" + (f" ({verb})" if verb else "") + ":"
        super().__init__(f"{where}:{what} {problem} (fix: {fix})")


class ScenarioErrors(ValueError):
    """Every problem found in one or more scenario files, reported together."""

    def __init__(self, errors: list[ScenarioError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(_short(e, 2000) for e in self.errors))


def _short(thing: object, limit: int = 200) -> str:
    """A message that stays readable whatever a hostile file holds (a YAML alias bomb expands hugely)."""
    text = str(thing)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more characters)"


class StepFailed(RuntimeError):
    """An action could not be carried out while running (the scenario stops there)."""


class _Bad(Exception):
    """A value that does not fit its field: the problem and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


# =================================================================== values

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``, ``"2d"`` → seconds. A bare number is refused (which unit?)."""
    if isinstance(value, (bool, int, float)):
        raise _Bad(f"{value!r} has no unit", f'write the unit, e.g. "{value}s" (units: ms, s, m, h, d)')
    if not isinstance(value, str):
        raise _Bad(f"must be a duration, got {value!r}", 'write e.g. "30s", "5m", "1h30m"')
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise _Bad(f"{value!r} is not a duration", 'write e.g. "30s", "5m", "1h30m" (units: ms, s, m, h, d)')
    return total


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds:
        return f"{seconds * 1000:g}ms"
    out, rest = [], seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if rest >= size:
            n = int(rest // size)
            out.append(f"{n}{unit}")
            rest -= n * size
    if rest or not out:
        out.append(f"{rest:g}s")
    return "".join(out)


def parse_local_datetime(value: Any) -> datetime:
    """``"2026-03-02 08:55"`` (seconds optional, ``T`` allowed) → naive local date-time."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise _Bad("has a time zone offset", "write the local time in the site's time zone, without offset")
        return value
    if isinstance(value, date):
        raise _Bad(f"{value} has no time of day", f'write the time too, e.g. "{value} 08:55"')
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("T", " "))
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is None and re.match(r"^\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}", value.strip()):
            return parsed
    raise _Bad(f"{value!r} is not a local date-time", 'write it like "2026-03-02 08:55" (site time zone)')


def parse_time_or_datetime(value: Any) -> datetime | dtime:
    """``"19:30"`` (the next such time) or a full local date-time."""
    if isinstance(value, str) and re.match(r"^\d{1,2}:\d{2}(:\d{2})?$", value.strip()):
        parts = [int(p) for p in value.strip().split(":")]
        try:
            return dtime(*parts)
        except ValueError:
            raise _Bad(f"{value!r} is not a time of day", 'write it like "19:30"') from None
    return parse_local_datetime(value)


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


# ============================================================ field kinds


def _k_str(v: Any) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _Bad(f"must be text, got {v!r}", "write it as a (quoted) string")
    return v


def _k_ident(v: Any) -> str:
    if not isinstance(v, str) or not SEGMENT.match(v):
        raise _Bad(f"{v!r} is not an identifier", "use the id from the site files: letters, digits, '_' and '-'")
    return v


def _k_card(v: Any) -> str:
    if isinstance(v, (bool, int, float)):
        raise _Bad(f"card number {v!r} was read as a number (leading zeros and letters would be lost)",
                   f'quote it: "{v}"')
    # Wiegand and OSDP cards are "FACILITY:CARD" (e.g. "12:34567") or "BITS:HEX": one colon allowed.
    if not isinstance(v, str) or not v.strip() or v.count(":") > 1 or not v.strip().replace(":", "").isalnum():
        raise _Bad(f"{v!r} is not a card number",
                   'write it as the reader sends it, quoted: "0F00A1B2C3", or "12:34567" for a Wiegand card')
    return v.strip()


def _k_pin(v: Any) -> str:
    if isinstance(v, (bool, int, float)):
        raise _Bad(f"PIN {v!r} was read as a number (a leading zero would be lost, 0417 even read as octal)",
                   'quote it: pin: "0417"')
    if not isinstance(v, str) or not re.match(r"^[0-9]{1,12}\Z", v):
        raise _Bad(f"{v!r} is not a PIN", 'write the digits typed on the keypad, quoted: pin: "2468"')
    return v


def _k_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad(f"must be true or false, got {v!r}", "write true or false")
    return v


def _k_count(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _Bad(f"must be a whole number >= 0, got {v!r}", "write e.g. count: 1")
    return v


def _k_injected(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_INJECTED:
        raise _Bad(f"must be a whole number from 1 to {MAX_INJECTED}, got {v!r}",
                   "write e.g. count: 3 (one less than the threshold stays just under it)")
    return v


def _k_duration(v: Any) -> float:
    seconds = parse_duration(v)
    if seconds <= 0:
        raise _Bad(f"{v!r} is zero", "give a duration greater than 0")
    return seconds


def _k_within(v: Any) -> float:
    seconds = _k_duration(v)
    if seconds > MAX_WITHIN_S:
        raise _Bad(f"{v!r} is longer than {MAX_WITHIN_S:g} s of real time",
                   "expectations wait in real time: keep `within` short and use `advance` for simulated time")
    return seconds


def _k_optional_duration(v: Any) -> float | None:
    return None if v is None else _k_within(v)


def _k_bound(v: Any) -> float:
    """A time bound a decision or a revocation must meet (``decided_within: 250ms``)."""
    seconds = _k_duration(v)
    if seconds > MAX_BOUND_S:
        raise _Bad(f"{v!r} is longer than {MAX_BOUND_S:g} s", "a time bound is what a person at a door waits: "
                   "keep it to seconds, e.g. 1s or 250ms")
    return seconds


def _k_companions(v: Any) -> tuple[str, ...]:
    """The people who passed with a badge, in any order; ``[]`` for nobody."""
    if not isinstance(v, list):
        raise _Bad(f"must be a list of person ids, got {v!r}", "write e.g. companions: [v-omar], or [] for nobody")
    ids = tuple(_k_ident(x) for x in v)
    if len(set(ids)) != len(ids):
        raise _Bad(f"{list(ids)} names a person twice", "name each companion once")
    return ids


def _k_datetime(v: Any) -> datetime:
    return parse_local_datetime(v)


def _k_time_or_datetime(v: Any) -> datetime | dtime:
    return parse_time_or_datetime(v)


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in choices:
            near = _suggest(v, choices) if isinstance(v, str) else None
            fix = f"did you mean `{near}`?" if near else f"use one of: {', '.join(choices)}"
            raise _Bad(f"unknown value {v!r}", fix)
        return v
    return parse


def _k_onoff(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lower() in ("on", "off"):
        return v.lower() == "on"
    raise _Bad(f"must be on or off, got {v!r}", "write lockdown: on or lockdown: off")


def _k_ident_or_null(v: Any) -> str | None:
    return None if v is None else _k_ident(v)


def _k_floor_list(v: Any) -> tuple[str, ...]:
    """Floors (area ids), any order; ``[]`` for none."""
    if not isinstance(v, list):
        raise _Bad(f"must be a list of floors (area ids), got {v!r}", "write e.g. floors: [lobby, office], or [] for none")
    ids = tuple(_k_ident(x) for x in v)
    if len(set(ids)) != len(ids):
        raise _Bad(f"{list(ids)} names a floor twice", "name each floor once")
    return ids


def _k_ident_list(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise _Bad(f"must be a list of ids, got {v!r}", "write e.g. areas: [lobby, floor3]")
    return tuple(_k_ident(x) for x in v)


_k_reason = _choice(*(r.value for r in Reason))
_k_decision = _choice("granted", "denied")
_k_decided_by = _choice("server", "edge_offline", "edge")
_k_grant = _choice(*sorted(GRANT_RULES))
_k_event_type = _choice(*sorted(EVENT_TYPES))
_k_alarm_type = _choice(*ALARM_TYPES, *SERVER_ALARM_TYPES)
_k_cause = _choice(*READER_SECURITY_CAUSES)
_k_updown = _choice("up", "down")
_k_format = _choice("em4100", "ascii")
_k_card_format = _choice(*CARD_FORMATS)


# ============================================================== vocabulary


@dataclass(frozen=True)
class Field:
    parse: Callable[[Any], Any]
    required: bool = False


@dataclass(frozen=True)
class Verb:
    name: str
    subject: Field | None
    """How the verb's own value is read; None: the verb takes no value (``- settle``)."""
    options: dict[str, Field]
    expectation: bool
    summary: str


def _verb(verb: str, subject: Callable[[Any], Any] | None, summary: str, /, *, expectation: bool = False,
          optional_subject: bool = False, **options: Field) -> Verb:
    opts = dict(options)
    opts["note"] = Field(_k_str)
    if expectation:
        opts["within"] = Field(_k_within)
    subj = None if subject is None else Field(subject, required=not optional_subject)
    return Verb(verb, subj, opts, expectation, summary)


VERBS: dict[str, Verb] = {v.name: v for v in (
    # ---- actions
    _verb("badge", _k_ident, "present a card at a door's reader (optionally type a PIN)",
          card=Field(_k_card), person=Field(_k_ident), pin=Field(_k_pin), walk_through=Field(_k_bool),
          format=Field(_k_card_format)),
    _verb("open", _k_ident, "open a door (its contact)"),
    _verb("close", _k_ident, "close a door"),
    _verb("force", _k_ident, "open a locked door without a grant or REX"),
    _verb("hold_open", _k_ident, "keep a door open for a simulated time, then close it",
          **{"for": Field(_k_duration, required=True)}),
    _verb("rex", _k_ident, "press a door's request-to-exit button"),
    _verb("pass_through", _k_ident, "one person through a turnstile (its passage sensor), granted or not"),
    _verb("badge_lift", _k_ident, "present a card at a lift cab's reader; floor: the floor chosen first on a "
          "destination-dispatch panel; press: the floor button pressed once the badge is decided",
          card=Field(_k_card), person=Field(_k_ident), pin=Field(_k_pin), format=Field(_k_card_format),
          floor=Field(_k_ident), press=Field(_k_ident)),
    _verb("press_floor", _k_ident, "press a floor button in a lift cab (it works if its relay enables it)",
          floor=Field(_k_ident, required=True)),
    _verb("emergency", _k_onoff, "open (on) or close (off) a device's emergency release input (the fire panel)",
          device=Field(_k_ident, required=True)),
    _verb("tamper", _k_ident, "open a door's tamper switch (the reader's cover); restored: true puts it back",
          restored=Field(_k_bool)),
    _verb("register_visitor", _k_ident, "register a visitor at the security desk",
          name=Field(_k_str, required=True), host=Field(_k_ident, required=True),
          areas=Field(_k_ident_list, required=True), company=Field(_k_str), escort_required=Field(_k_bool),
          **{"from": Field(_k_datetime), "until": Field(_k_datetime), "for": Field(_k_duration)}),
    _verb("check_in", _k_ident, "check a visitor in: a badge from the visitor pool becomes theirs",
          card=Field(_k_card)),
    _verb("check_out", _k_ident, "check a visitor out: their badge stops working"),
    _verb("show_qr", _k_ident, "hold a visitor's pass (a QR code; issued by the server on first use) up to a "
          "door's camera until the door decides", door=Field(_k_ident, required=True)),
    _verb("report_lost", _k_card, "report a card lost at the desk", format=Field(_k_format)),
    _verb("lockdown", _k_onoff, "lock the site (or one area) down, or lift it", area=Field(_k_ident)),
    _verb("broker", _k_updown, "stop or restart the MQTT broker"),
    _verb("server", _k_updown, "stop or restart the server"),
    _verb("advance", _k_duration, "jump the simulated clock forward"),
    _verb("advance_to", _k_time_or_datetime, "jump the simulated clock to a local time"),
    _verb("settle", _k_optional_duration, "wait until the system is quiet and every event is stored",
          optional_subject=True),
    _verb("osdp_clear_naks", _k_ident, "inject NAKs in clear on a door's OSDP bus: its reader's next commands are "
          "refused without a MAC", count=Field(_k_injected, required=True)),
    _verb("osdp_wrong_key", _k_ident, "a door's OSDP reader answers its next Secure Channel handshakes under a "
          "wrong key", count=Field(_k_injected, required=True)),
    _verb("revoked_device_connects", _k_ident, "revoke a device's certificate (the Pi is taken off the site) and "
          "try to connect to the broker with it", count=Field(_k_injected, required=True)),
    # ---- expectations
    _verb("expect_decision", _k_ident, "the last access decision at a door", expectation=True,
          decision=Field(_k_decision), reason=Field(_k_reason), person=Field(_k_ident_or_null),
          decided_by=Field(_k_decided_by), grant=Field(_k_grant), companions=Field(_k_companions),
          violation=Field(_k_ident_or_null), decided_within=Field(_k_bound), floors=Field(_k_floor_list)),
    _verb("expect_relay", _k_ident, "a door's lock relay energised or not", expectation=True,
          energised=Field(_k_bool, required=True), at_once=Field(_k_bool)),
    _verb("expect_floors_enabled", _k_ident, "exactly these floors of a lift cab enabled (their relays energised)",
          expectation=True, floors=Field(_k_floor_list, required=True)),
    _verb("expect_refused", _k_card, "a card reported lost (or a visitor's badge checked out) is refused at every "
          "door, by the server and by every edge's cached policy, within a time of the report", expectation=True,
          format=Field(_k_format), refused_within=Field(_k_bound, required=True)),
    _verb("expect_alarm", _k_ident, "an alarm (forced_open, held_open, relay_stuck, tamper, reader_security, …) "
          "raised at a door, an intrusion alarm (card_probing, pin_guessing, door_attack) at a door or for a card, "
          "or certificate_refused from the broker's log",
          expectation=True, optional_subject=True,
          type=Field(_k_alarm_type), count=Field(_k_count), card=Field(_k_card), format=Field(_k_card_format),
          cause=Field(_k_cause)),
    _verb("expect_event", _k_event_type, "an event stored by the server", expectation=True,
          door=Field(_k_ident), decision=Field(_k_decision), reason=Field(_k_reason),
          person=Field(_k_ident_or_null), decided_by=Field(_k_decided_by), violation=Field(_k_ident),
          grant=Field(_k_grant), companions=Field(_k_companions), count=Field(_k_count), floor=Field(_k_ident)),
    _verb("expect_area", _k_ident, "the area the server has a person in", expectation=True,
          area=Field(_k_ident_or_null, required=True)),
    _verb("expect_occupancy", _k_ident, "how many people the server counts in an area", expectation=True,
          count=Field(_k_count, required=True)),
)}

TOP_LEVEL = {"name": True, "description": False, "site": False, "start": True, "steps": True}


# =================================================================== model


@dataclass(frozen=True)
class Step:
    number: int
    verb: str
    subject: Any
    options: dict[str, Any]
    line: int | None = None

    @property
    def expectation(self) -> bool:
        return VERBS[self.verb].expectation

    @property
    def note(self) -> str | None:
        return self.options.get("note")

    def opt(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)

    def text(self) -> str:
        """The step as one line of the transcript."""
        o = self.options
        v = self.verb
        if v == "badge":
            who = f"card {o['card']}" if "card" in o else f"{o['person']}'s card"
            pin = f" + PIN {o['pin']}" if "pin" in o else ""
            walk = ", walks through" if o.get("walk_through") else ""
            return f"badge {self.subject}: {who}{pin}{walk}"
        if v == "hold_open":
            return f"hold {self.subject} open for {format_duration(o['for'])}"
        if v in ("open", "close", "force"):
            return f"{v} {self.subject}"
        if v == "rex":
            return f"press REX at {self.subject}"
        if v == "pass_through":
            return f"someone passes through {self.subject}"
        if v == "badge_lift":
            who = f"card {o['card']}" if "card" in o else f"{o['person']}'s card"
            pin = f" + PIN {o['pin']}" if "pin" in o else ""
            first = f"choose {o['floor']}, then " if "floor" in o else ""
            then = f", presses {o['press']}" if "press" in o else ""
            return f"{first}badge in {self.subject}: {who}{pin}{then}"
        if v == "press_floor":
            return f"press {o['floor']} in {self.subject}"
        if v == "emergency":
            return f"emergency input at {o['device']} {'released' if self.subject else 'cleared'}"
        if v == "tamper":
            return f"{'close' if o.get('restored') else 'open'} the tamper switch at {self.subject}"
        if v == "register_visitor":
            return f"register visitor {self.subject} ({o['name']}, host {o['host']}, areas {', '.join(o['areas'])})"
        if v == "check_in":
            return f"check in {self.subject}" + (f" with badge {o['card']}" if "card" in o else "")
        if v == "check_out":
            return f"check out {self.subject}"
        if v == "show_qr":
            return f"show {self.subject}'s visitor pass to the camera at {o['door']}"
        if v == "report_lost":
            return f"report card {self.subject} lost"
        if v == "lockdown":
            return f"lockdown {'on' if self.subject else 'off'}" + (f" for {o['area']}" if "area" in o else " (site)")
        if v in ("broker", "server"):
            return f"{v} {self.subject}"
        if v == "advance":
            return f"advance {format_duration(self.subject)}"
        if v == "advance_to":
            s = self.subject
            return f"advance to {s:%H:%M}" if isinstance(s, dtime) else f"advance to {s:%Y-%m-%d %H:%M}"
        if v == "settle":
            return "settle"
        if v == "osdp_clear_naks":
            return f"inject {o['count']} NAK{'s' if o['count'] != 1 else ''} in clear at {self.subject}'s OSDP reader"
        if v == "osdp_wrong_key":
            return f"{self.subject}'s OSDP reader answers {o['count']} handshake{'s' if o['count'] != 1 else ''} " \
                   "under a wrong key"
        if v == "revoked_device_connects":
            return f"{o['count']} connection attempt{'s' if o['count'] != 1 else ''} with {self.subject}'s revoked " \
                   "certificate"
        if v == "expect_decision":
            return f"expect decision at {self.subject}: " + _decision_text(o)
        if v == "expect_relay":
            return f"expect relay of {self.subject} {'energised' if o['energised'] else 'not energised'}" \
                + (" at once" if o.get("at_once") else "")
        if v == "expect_floors_enabled":
            return f"expect floors of {self.subject} enabled: {_option_text(tuple(o['floors']))}"
        if v == "expect_refused":
            return f"expect card {self.subject} refused at every door within {format_duration(o['refused_within'])} " \
                "of its report"
        if v == "expect_alarm":
            kind = o.get("type", "alarm") + (f" ({o['cause']})" if "cause" in o else "")
            where = f"for card {o['card']}" if "card" in o else f"at {self.subject}" if self.subject else "(any address)"
            return f"expect {_count_text(o.get('count'))} {kind} {where}"
        if v == "expect_event":
            filters = ", ".join(f"{k} {_option_text(o[k])}" for k in (
                "door", "decision", "reason", "grant", "person", "companions", "decided_by", "violation") if k in o)
            plural = "s" if o.get("count") not in (None, 1) else ""
            return (f"expect {_count_text(o.get('count'))} stored {self.subject} event{plural}"
                    + (f" ({filters})" if filters else ""))
        if v == "expect_area":
            return f"expect {self.subject} in {o['area'] or 'no area'}"
        if v == "expect_occupancy":
            return f"expect {o['count']} in {self.subject}"
        return v


def _count_text(count: int | None) -> str:
    return "at least 1" if count is None else f"exactly {count}"


def _option_text(value: Any) -> str:
    """An option's value as the transcript shows it: ``none`` for null, a list as ``[a, b]``."""
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return "[" + ", ".join(value) + "]"
    return str(value)


def _decision_text(o: dict[str, Any]) -> str:
    """What an ``expect_decision`` expects, in words."""
    parts = [o.get("decision"), o.get("reason") and f"reason {o['reason']}",
             o.get("grant") and f"by rule {o['grant']}",
             "person " + str(o["person"] or "none") if "person" in o else None,
             f"companions {_option_text(o['companions'])}" if "companions" in o else None,
             f"violation {_option_text(o['violation'])}" if "violation" in o else None,
             o.get("decided_by") and f"by {o['decided_by']}",
             f"within {format_duration(o['decided_within'])} of the badge" if "decided_within" in o else None,
             f"floors {_option_text(o['floors'])}" if "floors" in o else None]
    return ", ".join(p for p in parts if p)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    file: Path
    site_dir: Path
    start: datetime
    """Naive local date-time in the site's time zone."""
    steps: tuple[Step, ...]

    @property
    def controls_broker(self) -> bool:
        """Whether the scenario stops and starts the broker (``broker``, and ``revoked_device_connects``, which
        restarts it so it reads the new CRL): only the runner's own broker can be."""
        return any(s.verb in ("broker", "revoked_device_connects") for s in self.steps)


# ================================================================ loading


class _Map(dict):  # type: ignore[type-arg]
    line: int = 0
    lines: dict[Any, int]


class _Seq(list):  # type: ignore[type-arg]
    line: int = 0
    lines: list[int]


class _KeyProblem(yaml.MarkedYAMLError):
    """A duplicate or unhashable key (PyYAML would silently keep the last duplicate)."""

    def __init__(self, problem: str, fix: str, mark: Any) -> None:
        super().__init__(None, None, problem, mark)
        self.fix = fix


class _TagProblem(_KeyProblem):
    """An explicit YAML tag (``!!bool``, ``!!python/object``, ``!local``): the format uses none."""


class _Loader(yaml.SafeLoader):
    """A safe loader that remembers line numbers and refuses duplicate keys and explicit tags.

    Tags are refused as the document is composed, before any value is constructed: PyYAML's own
    constructors fail on tagged values in ways of their own (``!!bool abc`` raised ``KeyError``), and the
    format has no use for a tag, so none gets that far."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        tag = getattr(event, "tag", None)
        if tag is not None and not isinstance(event, yaml.AliasEvent):
            shown = _short("!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag, 60)
            raise _TagProblem(f"explicit YAML tag `{shown}` is not part of the scenario format",
                              'remove the tag and write the value plainly (quote text: "abc")', event.start_mark)
        return super().compose_node(parent, index)


def _construct_map(loader: _Loader, node: yaml.MappingNode) -> _Map:
    loader.flatten_mapping(node)
    out = _Map()
    out.line = node.start_mark.line + 1
    out.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise _KeyProblem(f"a key must be a plain name, got {key!r}", "write the key as a word",
                              key_node.start_mark) from None
        if key in out:
            raise _KeyProblem(f"key {key!r} appears twice in one step or mapping",
                              "keep one of them (a step does one thing: split it into two steps)", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=True)
        out.lines[key] = key_node.start_mark.line + 1
    return out


def _construct_seq(loader: _Loader, node: yaml.SequenceNode) -> _Seq:
    out = _Seq(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_map)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_seq)


#: The deepest nesting a scenario file may have (flow brackets, block indentation, compact ``- -``), counted
#: before PyYAML reads it: a shipped scenario nests 4 deep; PyYAML's scanner takes time quadratic in the flow
#: depth (10,000 ``[`` took 1.5 s on an idle machine, 12.3 s on a busy one, before its recursion gave up).
MAX_NESTING = 32
#: The largest scenario file: a long one is a few kilobytes.
MAX_FILE_BYTES = 1024 * 1024
#: Brackets open at once anywhere in the file, quoted or not: a backstop for a quote the scan above misreads
#: (PyYAML's cost at this depth is negligible; no scenario writes hundreds of brackets into its text).
MAX_RAW_BRACKETS = 256
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BLOCK_SCALAR = re.compile(r"(?:^|[\s:-])[|>][-+0-9]*\s*(?:#.*)?\Z")
_QUOTE_AFTER = frozenset("[{,:-?")


def nesting_problem(text: str, limit: int = MAX_NESTING) -> tuple[int, str] | None:
    """``(line, problem)`` where ``text`` nests deeper than ``limit``, else None: linear passes, no parsing.

    Counts block levels (a stack of indentations, plus compact ``- - x`` on one line) and flow levels
    (``[``/``{`` outside quotes, comments and block scalars) together. It over-counts only for brackets left
    open inside plain text, which a scenario would need dozens of to be refused. A quote this scan reads where
    YAML sees none would hide the brackets after it, so a second pass counts every bracket, quoted or not,
    against :data:`MAX_RAW_BRACKETS`.
    """
    indents: list[int] = []
    flow = 0
    quote = ""
    scalar_indent: int | None = None  # inside a `|` or `>` block scalar opened at this indentation
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if scalar_indent is not None:
            if not stripped or indent > scalar_indent:
                continue
            scalar_indent = None
        block = len(indents)
        if not flow and not quote:
            if not stripped or stripped.startswith("#"):
                continue
            while indents and indents[-1] >= indent:
                indents.pop()
            indents.append(indent)
            rest, compact = stripped, 0
            while rest[:2] in ("- ", "? ") or rest in ("-", "?"):
                compact += 1
                rest = rest[2:].lstrip(" ")
            block = len(indents) + compact
            if block > limit:
                return number, f"nested deeper than {limit} levels (block indentation)"
        prev = ""
        i = 0
        while i < len(line):
            ch = line[i]
            if quote:
                if ch == "\\" and quote == '"':
                    i += 2
                    continue
                if ch == quote:
                    quote = ""
                    prev = ch
            elif ch in "\"'" and (prev == "" or prev in _QUOTE_AFTER):
                quote = ch
            elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
                break
            elif ch in "[{":
                flow += 1
                if block + flow > limit:
                    return number, f"nested deeper than {limit} levels (brackets)"
            elif ch in "]}":
                flow = max(0, flow - 1)
            if not ch.isspace() and not quote and ch not in "\"'":
                prev = ch
            i += 1
        if not flow and not quote and _BLOCK_SCALAR.search(line.split(" #")[0].rstrip()):
            scalar_indent = indent
    opened = 0  # the backstop: brackets anywhere, quoted or not
    for number, line in enumerate(text.splitlines(), 1):
        for ch in _NOT_BRACKET.sub("", line):
            opened = opened + 1 if ch in "[{" else max(0, opened - 1)
            if opened > MAX_RAW_BRACKETS:
                return number, f"nested deeper than {MAX_RAW_BRACKETS} brackets"
    return None


def _read_yaml(path: Path) -> Any:
    f = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ScenarioErrors([ScenarioError(f, f"the file is {size} bytes, more than {MAX_FILE_BYTES}",
                                                "a scenario is a few kilobytes: split it into several files")])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioErrors([ScenarioError(f, "file not found", "check the path")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioErrors([ScenarioError(f, f"cannot be read: {exc}", "check the file and its permissions")]) from None
    deep = nesting_problem(text)
    if deep is not None:
        raise ScenarioErrors([ScenarioError(f, f"not valid for a scenario: {deep[1]}",
                                            "a scenario nests a few levels (steps, a step, its options): flatten it",
                                            line=deep[0])])
    try:
        return yaml.load(text, Loader=_Loader)
    except _KeyProblem as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        raise ScenarioErrors([ScenarioError(f, str(exc.problem), exc.fix, line=line)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioErrors([ScenarioError(
            f, f"not valid YAML: {problem}",
            "check that line: indentation, a missing colon, or a value containing ': ' that needs quotes",
            line=mark.line + 1 if mark else None)]) from None
    except RecursionError:
        raise ScenarioErrors([ScenarioError(f, "not valid YAML: nested too deeply", "flatten the structure")]) from None
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # PyYAML's own constructors fail this way on values like 2026-13-45 (tags never get this far).
        raise ScenarioErrors([ScenarioError(f, f"not valid YAML: a value cannot be read ({_short(exc)})",
                                            "quote the value, or write a valid date, time or number")]) from None


def load_scenario(path: Path | str, *, check_site: bool = True) -> Scenario:
    """Read and validate a scenario file; raise :class:`ScenarioErrors` listing every problem.

    With ``check_site`` (the default) the site directory is loaded too and
    every door, person, area and card the steps name is checked against it.
    """
    p = Path(path)
    f = str(p)
    data = _read_yaml(p)
    errors: list[ScenarioError] = []
    if not isinstance(data, dict):
        raise ScenarioErrors([ScenarioError(f, "the file is not a mapping of name, start, steps, …",
                                            "start the file with `name: ...`, `start: ...` and `steps:`", line=1)])
    lines: dict[Any, int] = getattr(data, "lines", {})
    for key in data:
        if key not in TOP_LEVEL:
            near = _suggest(key, TOP_LEVEL)
            errors.append(ScenarioError(f, f"unknown key `{key}`",
                                        f"did you mean `{near}`?" if near else f"allowed: {', '.join(TOP_LEVEL)}",
                                        line=lines.get(key)))
    for key, required in TOP_LEVEL.items():
        if required and key not in data:
            fixes = {"name": 'add name: "What this scenario proves"',
                     "start": 'add start: "2026-03-02 08:55" (local time in the site\'s time zone)',
                     "steps": "add steps: with a list of actions and expectations"}
            errors.append(ScenarioError(f, f"`{key}` is required but missing", fixes[key], line=1))

    name = data.get("name")
    if "name" in data and (not isinstance(name, str) or not name.strip()):
        errors.append(ScenarioError(f, "`name` must be text", 'write name: "What this scenario proves"',
                                    line=lines.get("name")))
    description = data.get("description") or ""
    if not isinstance(description, str):
        errors.append(ScenarioError(f, "`description` must be text", "write it as a string (use | for several lines)",
                                    line=lines.get("description")))
        description = ""
    site_value = data.get("site")
    site_dir = DEMO_SITE
    if site_value is not None:
        if not isinstance(site_value, str) or not site_value.strip():
            errors.append(ScenarioError(f, f"`site` must be a directory path, got {site_value!r}",
                                        "write the site directory relative to this file", line=lines.get("site")))
        else:
            try:
                site_dir = (p.parent / site_value).resolve()
                has_site = (site_dir / "site.toml").is_file()
            except (OSError, ValueError, UnicodeError):
                site_dir, has_site = DEMO_SITE, False
            if not has_site:
                errors.append(ScenarioError(f, f"`site` {site_value!r} has no site.toml ({site_dir})",
                                            "name a site directory, relative to this scenario file "
                                            "(e.g. ../../firmware-config/sites/hq)", line=lines.get("site")))
    start = datetime(2000, 1, 1)
    if "start" in data:
        try:
            start = parse_local_datetime(data["start"])
        except _Bad as bad:
            errors.append(ScenarioError(f, f"`start`: {bad.problem}", bad.fix, line=lines.get("start")))

    steps: list[Step] = []
    raw_steps = data.get("steps")
    if "steps" in data and (not isinstance(raw_steps, list) or not raw_steps):
        errors.append(ScenarioError(f, "`steps` must be a non-empty list", "write each step as `- verb: value`",
                                    line=lines.get("steps")))
    elif isinstance(raw_steps, list):
        step_lines = getattr(raw_steps, "lines", [])
        for i, raw in enumerate(raw_steps):
            line = step_lines[i] if i < len(step_lines) else None
            step = _parse_step(f, i + 1, raw, line, errors)
            if step is not None:
                steps.append(step)
        _check_sequence(f, steps, errors)

    scenario = Scenario(str(name or p.stem).strip(), description.strip(), p, site_dir, start, tuple(steps))
    site_ok = not any(e.problem.startswith("`site`") for e in errors)
    if check_site and site_ok:
        try:
            bundle, pool = load_site(scenario)
        except ScenarioErrors as exc:
            errors += exc.errors
        else:
            errors += check_against_site(scenario, bundle, pool)
    if errors:
        errors.sort(key=lambda e: (e.line or 0, e.step or 0))
        raise ScenarioErrors(errors)
    return scenario


def _parse_step(f: str, n: int, raw: Any, line: int | None, errors: list[ScenarioError]) -> Step | None:
    verbs = ", ".join(VERBS)
    if isinstance(raw, str):
        verb = VERBS.get(raw)
        if verb is not None and verb.subject is not None and verb.subject.required:
            errors.append(ScenarioError(f, f"`{raw}` needs a value", f"write `- {raw}: VALUE`", line=line, step=n, verb=raw))
            return None
        if verb is None:
            near = _suggest(raw, VERBS)
            errors.append(ScenarioError(f, f"unknown step `{raw}`",
                                        f"did you mean `{near}`?" if near else f"start the step with one of: {verbs}",
                                        line=line, step=n))
            return None
        raw = {raw: None}
    if not isinstance(raw, dict) or not raw:
        errors.append(ScenarioError(f, f"a step must be a mapping like `- badge: main_in`, got {raw!r}",
                                    f"start the step with one of: {verbs}", line=line, step=n))
        return None
    line = getattr(raw, "line", line)
    key_lines: dict[Any, int] = getattr(raw, "lines", {})
    found = [k for k in raw if k in VERBS]
    if len(found) > 1:
        errors.append(ScenarioError(f, f"one step has several verbs: {', '.join(found)}",
                                    "a step does one thing: split it into one step per verb", line=line, step=n))
        return None
    if not found:
        near = next((s for s in (_suggest(k, VERBS) for k in raw) if s), None)
        keys = ", ".join(f"`{k}`" for k in raw)
        fix = f"did you mean `{near}`?" if near else f"start the step with one of: {verbs}"
        errors.append(ScenarioError(f, f"no action or expectation in this step (keys {keys})", fix, line=line, step=n))
        return None
    name = found[0]
    verb = VERBS[name]
    ok = True

    def err(problem: str, fix: str, key: Any = None) -> None:
        nonlocal ok
        ok = False
        errors.append(ScenarioError(f, problem, fix, line=key_lines.get(key, line), step=n, verb=name))

    subject: Any = None
    value = raw[name]
    if verb.subject is None:
        if value is not None:
            err(f"`{name}` takes no value", f"write `- {name}`", name)
    elif value is None and verb.subject.required:
        err(f"`{name}` needs a value", f"write `- {name}: VALUE` ({verb.summary})", name)
    elif value is not None:
        try:
            subject = verb.subject.parse(value)
        except _Bad as bad:
            err(f"`{name}`: {bad.problem}", bad.fix, name)
    options: dict[str, Any] = {}
    for key, val in raw.items():
        if key == name:
            continue
        spec = verb.options.get(key)
        if spec is None:
            near = _suggest(key, verb.options)
            fix = f"did you mean `{near}`?" if near else \
                f"`{name}` takes: {', '.join(verb.options) or 'no options'}"
            err(f"unknown key `{key}` for `{name}`", fix, key)
            continue
        try:
            options[key] = spec.parse(val)
        except _Bad as bad:
            err(f"`{key}`: {bad.problem}", bad.fix, key)
    for key, spec in verb.options.items():
        if spec.required and key not in raw:
            err(f"`{key}` is required", f"add `{key}: ...` to this `{name}` step", None)
    if not ok:
        return None
    step = Step(n, name, subject, options, line)
    before = len(errors)
    _check_step_options(f, step, key_lines, errors)
    return step if len(errors) == before else None


def _check_step_options(f: str, step: Step, key_lines: dict[Any, int], errors: list[ScenarioError]) -> None:
    """Rules between a step's own options."""
    o = step.options

    def err(problem: str, fix: str, key: str | None = None) -> None:
        errors.append(ScenarioError(f, problem, fix, line=key_lines.get(key, step.line), step=step.number, verb=step.verb))

    if step.verb == "badge" and ("card" in o) == ("person" in o):
        err("give either `card` or `person`", 'write card: "0F00A1B2C3", or person: alice for their card')
    if step.verb == "register_visitor" and "until" in o and "for" in o:
        err("`until` and `for` both set the end of the visit", "keep one of them", "for")
    if step.verb == "expect_decision":
        if "decision" not in o and "reason" not in o:
            err("say what decision to expect", "add decision: granted|denied and/or reason: CODE")
        elif "decision" in o and "reason" in o and (o["decision"] == "granted") != o["reason"].startswith("granted"):
            err(f"decision {o['decision']} contradicts reason {o['reason']}",
                "only granted* reasons grant; fix one of them", "reason")
    if step.verb == "expect_alarm" and o.get("type") in ADDRESS_ALARM_TYPES:
        if step.subject is not None or "card" in o or "format" in o:
            err(f"{o['type']} is about a network address, at no door and for no card",
                f"write `- expect_alarm:` with only type: {o['type']} (and count:)",
                "card" if "card" in o else "format" if "format" in o else None)
    elif step.verb == "expect_alarm":
        if "card" in o:
            if step.subject is not None:
                err("give either a door or `card:`, not both", "write `- expect_alarm:` with card: for an alarm "
                    "about one card, or `- expect_alarm: DOOR` for one at a door", "card")
            elif o.get("type") not in CARD_ALARM_TYPES:
                err(f"only {', '.join(CARD_ALARM_TYPES)} is raised for a card",
                    "add type: card_probing, or name a door instead of `card:`", "type")
        elif step.subject is None:
            err("`expect_alarm` needs a door (or `card:` for card_probing of one card, or type: certificate_refused)",
                "write `- expect_alarm: DOOR`, or add card: \"0F00A1B2C3\" and type: card_probing")
        if "format" in o and "card" not in o:
            err("`format` says how to read `card:`, which is not given", "add card: or remove format:", "format")
    if step.verb == "expect_alarm" and "cause" in o and o.get("type") != "reader_security":
        err("`cause` tells reader_security alarms apart; this step expects another type",
            "add type: reader_security, or remove cause:", "cause")
    if step.verb == "expect_event" and "decision" in o and "reason" in o \
            and (o["decision"] == "granted") != o["reason"].startswith("granted"):
        err(f"decision {o['decision']} contradicts reason {o['reason']}",
            "only granted* reasons grant; fix one of them", "reason")
    if step.verb in ("expect_decision", "expect_event"):
        # The rule behind a grant and who passed with it exist on grants only; a server's grant names its rule
        # as its reason, so a reason other than granted_offline must be that rule.
        rule_keys = [k for k in ("grant", "companions") if k in o]
        if rule_keys and (o.get("decision") == "denied" or (o.get("reason") and not o["reason"].startswith("granted"))):
            err(f"`{rule_keys[0]}` is about a grant, and this step expects a refusal",
                f"remove `{rule_keys[0]}`, or expect a grant", rule_keys[0])
        elif "grant" in o and o.get("reason") not in (None, "granted_offline", o["grant"]):
            err(f"reason {o['reason']} contradicts grant {o['grant']} (a server's grant is its own rule)",
                f"write reason: granted_offline for a grant the edge made by rule {o['grant']}, or drop one", "grant")
        if step.verb == "expect_decision" and o.get("violation") and o.get("decision") == "denied":
            err("a violation is a rule broken but not enforced on a grant, and this step expects a refusal",
                "remove `violation`, or expect a grant", "violation")


def _check_sequence(f: str, steps: list[Step], errors: list[ScenarioError]) -> None:
    """Order rules: outages alternate, visitors exist before they check in, in before out."""
    up = {"broker": True, "server": True}
    visitors: dict[str, str] = {}  # id -> registered | in | out
    def problem(s: Step, text: str, fix: str) -> None:
        errors.append(ScenarioError(f, text, fix, line=s.line, step=s.number, verb=s.verb))

    for s in steps:
        def err(text: str, fix: str, s: Step = s) -> None:
            problem(s, text, fix)

        if s.verb in ("broker", "server"):
            want_up = s.subject == "up"
            if want_up == up[s.verb]:
                err(f"the {s.verb} is already {s.subject} here",
                    f"remove this step, or put `{s.verb}: {'down' if want_up else 'up'}` before it")
            up[s.verb] = want_up
        desk = s.verb in ("register_visitor", "check_in", "check_out", "report_lost", "lockdown")
        if desk and not up["server"]:
            err("the security desk works through the server, which is down here", "put `server: up` before this step")
        if s.verb == "revoked_device_connects":
            if not up["server"]:
                err("refused certificates are counted by the server's broker-log watcher, and the server is down here",
                    "put `server: up` before this step")
            if not up["broker"]:
                err("revoking a certificate restarts the broker, which is down here", "put `broker: up` before this step")
        if s.verb == "expect_alarm" and s.options.get("type") in SERVER_ALARM_TYPES and not up["server"]:
            err(f"{s.options['type']} alarms are raised by the server, which is down here",
                "put `server: up` before this expectation")
        if s.verb == "expect_refused" and not any(
                p.number < s.number and (p.verb == "check_out" or (p.verb == "report_lost" and p.subject == s.subject))
                for p in steps):
            err(f"nothing before this step revokes card {s.subject}: the time bound runs from its report",
                f"put `report_lost: \"{s.subject}\"` (or the `check_out` of the visitor holding it) before this step")
        if s.verb in ("expect_event", "expect_area", "expect_occupancy", "expect_refused") and not up["server"]:
            err("stored events, presence and occupancy are the server's, which is down here",
                "put `server: up` before this expectation (events reach the server once it is back)")
        if s.verb == "register_visitor":
            if s.subject in visitors:
                err(f"visitor {s.subject!r} is already registered", "give each visit its own id")
            visitors[s.subject] = "registered"
        elif s.verb == "check_in":
            state = visitors.get(s.subject)
            if state is None:
                err(f"visitor {s.subject!r} is not registered before this step",
                    f"add a `register_visitor: {s.subject}` step before it")
            elif state != "registered":
                err(f"visitor {s.subject!r} is already checked {'in' if state == 'in' else 'out'}",
                    "register a new visit (a new id) for a second check-in")
            else:
                visitors[s.subject] = "in"
        elif s.verb == "check_out":
            if visitors.get(s.subject) != "in":
                err(f"visitor {s.subject!r} is not checked in before this step",
                    f"add a `check_in: {s.subject}` step before it")
            else:
                visitors[s.subject] = "out"
        elif s.verb == "show_qr" and s.subject not in visitors:
            err(f"visitor {s.subject!r} is not registered before this step",
                f"add a `register_visitor: {s.subject}` step before it")
        elif s.verb == "badge" and "person" in s.options and s.options["person"] in visitors \
                and visitors[s.options["person"]] == "registered":
            err(f"visitor {s.options['person']!r} has no badge before check-in",
                f"add `check_in: {s.options['person']}` before this badge")


# ----------------------------------------------------------- site checks


def load_site(scenario: Scenario) -> tuple[SiteBundle, list[tuple[str, str]]]:
    """The scenario's site and its visitor badge pool; site errors become scenario errors."""
    f = str(scenario.file)
    try:
        bundle = load_site_dir(scenario.site_dir)
    except (ConfigErrors, ConfigError) as exc:
        problems = exc.errors if isinstance(exc, ConfigErrors) else [exc]
        raise ScenarioErrors([ScenarioError(f, f"the site {scenario.site_dir} does not load: {p}",
                                            f"fix the site files (doorkeep config check {scenario.site_dir})")
                              for p in problems]) from None
    return bundle, visitor_pool(bundle)


def _check_card(proto: str, fmt: str, card: str) -> None:
    """Raise ValueError when a reader of ``proto`` cannot send ``card`` as ``fmt`` (one of its formats)."""
    if fmt == "em4100":
        encode_em4100(card)
    elif fmt == "ascii":  # ASCII readers and pin pads send the same card lines
        encode_ascii(card)
    elif fmt == "osdp_raw":
        bits, _, hexa = card.partition(":")
        if not bits.isdigit() or not hexa or any(c not in "0123456789abcdefABCDEF" for c in hexa) \
                or len(hexa) % 2:
            raise ValueError(f"{card!r} is not BITS:HEX with whole bytes, e.g. 40:0123456789")
    else:
        card_bits(fmt, card)


def visitor_pool(bundle: SiteBundle) -> list[tuple[str, str]]:
    """The site's visitor badges ``(format, number)`` (people.toml ``[visitor_pool]``)."""
    return [(c.format, c.number) for c in bundle.visitor_pool]


def check_against_site(scenario: Scenario, bundle: SiteBundle, pool: list[tuple[str, str]]) -> list[ScenarioError]:
    """Every door, area, person and card the steps name, checked against the site (nothing runs)."""
    f = str(scenario.file)
    site = bundle.site
    errors: list[ScenarioError] = []
    hardware = {did: hw for dev in bundle.devices.values() for did, hw in dev.doors.items()}
    people = bundle.people
    cards_of: dict[str, list[tuple[str, str]]] = {}
    for seed in bundle.cards:
        cards_of.setdefault(seed.person, []).append((seed.format, seed.number))
    known_cards = {(fmt, normalise(fmt, num)) for fmt, num in [(c.format, c.number) for c in bundle.cards] + pool}
    visitors: set[str] = set()

    def err(s: Step, problem: str, fix: str) -> None:
        errors.append(ScenarioError(f, problem, fix, line=s.line, step=s.number, verb=s.verb))

    def door_ok(s: Step, door: str) -> bool:
        if door in site.doors:
            return True
        near = _suggest(door, site.doors)
        err(s, f"no door {door!r} in site {site.id}",
            f"did you mean `{near}`?" if near else f"use one of: {', '.join(site.doors)}")
        return False

    def area_ok(s: Step, area: str | None) -> None:
        if area is not None and area not in site.areas:
            near = _suggest(area, site.areas)
            err(s, f"no area {area!r} in site {site.id}",
                f"did you mean `{near}`?" if near else f"use one of: {', '.join(site.areas)}")

    def person_ok(s: Step, person: str | None) -> None:
        if person is not None and person not in people and person not in visitors:
            near = _suggest(person, list(people) + sorted(visitors))
            err(s, f"no person {person!r} in {bundle.dir / 'people.toml'} or registered as a visitor before this step",
                f"did you mean `{near}`?" if near else f"use one of: {', '.join(people)}")

    device_of = {did: dev.id for dev in bundle.devices.values() for did in dev.doors}
    retired: dict[str, int] = {}  # device -> the step that revoked it
    for s in scenario.steps:
        o = s.options
        v = s.verb
        if v == "revoked_device_connects":
            if s.subject not in bundle.devices:
                near = _suggest(s.subject, bundle.devices)
                err(s, f"no device {s.subject!r} in {bundle.dir / 'devices'}",
                    f"did you mean `{near}`?" if near else f"use one of: {', '.join(bundle.devices)}")
            retired.setdefault(s.subject, s.number)
            continue
        if v in ("badge", "open", "close", "force", "hold_open", "rex", "tamper", "pass_through", "expect_decision",
                 "expect_relay", "badge_lift", "press_floor", "expect_floors_enabled",
                 "expect_alarm", "osdp_clear_naks", "osdp_wrong_key") and s.subject is not None \
                and not door_ok(s, s.subject):
            continue
        gone = device_of.get(s.subject) if isinstance(s.subject, str) and v not in (
            "expect_event", "expect_area", "expect_occupancy", "report_lost", "advance", "advance_to") else None
        if gone in retired and v != "expect_alarm":
            err(s, f"door {s.subject!r} is on {gone}, which step {retired[gone]} took off the site "
                   "(its certificate revoked, its edge stopped)",
                "use a door of another device, or move this step before the revocation")
            continue
        hw = hardware.get(s.subject) if isinstance(s.subject, str) else None
        if v in ("osdp_clear_naks", "osdp_wrong_key") and hw is not None and \
                (hw.reader.protocol != "osdp" or not hw.reader.secure_channel):
            what = "an OSDP reader without Secure Channel" if hw.reader.protocol == "osdp" \
                else f"an {hw.reader.protocol} reader"
            err(s, f"door {s.subject!r} has {what}; {v} attacks an OSDP reader's Secure Channel",
                "use a door with an OSDP reader on Secure Channel (e.g. gate_in on firmware-config/sites/readers)")
        turnstile = hw is not None and hw.passage is not None
        lift = hw is not None and bool(hw.floors)
        if v in ("badge_lift", "press_floor", "expect_floors_enabled") and hw is not None:
            if not lift:
                err(s, f"door {s.subject!r} is not a lift (no floor relays wired)",
                    'use a door with `kind = "lift"` and its floors in the device file, or `badge` a door')
            else:
                served = [f.area for f in hw.floors]
                named = [o[k] for k in ("floor", "press") if k in o] + list(o.get("floors", ()))
                for floor in named:
                    if floor not in served:
                        err(s, f"lift {s.subject!r} does not serve floor {floor!r}", f"use one of: {', '.join(served)}")
                if v == "badge_lift" and "floor" in o and not hw.dispatch:
                    err(s, f"lift {s.subject!r} is not in destination-dispatch mode, so a floor chosen before the "
                           "badge is not asked for",
                        "badge first and use `press:` (the button pressed on the grant), or set dispatch = true "
                        "on the lift in its device file")
        if v in ("open", "close", "force", "hold_open", "rex", "pass_through") and lift:
            err(s, f"door {s.subject!r} is a lift cab: it has no door leaf, REX or passage sensor here",
                "use `badge_lift`, `press_floor` and `expect_floors_enabled`")
        if v == "pass_through" and hw is not None and not turnstile:
            err(s, f"door {s.subject!r} is not a turnstile (no passage sensor wired)",
                'use a door with `kind = "turnstile"` and a `passage` sensor, or walk through with `badge ... '
                'walk_through: true` / `open` and `close`')
        if v == "emergency":
            dev = bundle.devices.get(o["device"])
            if dev is None:
                err(s, f"no device {o['device']!r} in {bundle.dir / 'devices'}",
                    f"use one of: {', '.join(bundle.devices)}")
            elif dev.emergency is None:
                err(s, f"device {o['device']!r} has no emergency input wired",
                    "add `[emergency]` with `pin = N` to its device file, or use another device")
        opens = v in ("open", "close", "force", "hold_open") or (v == "badge" and o.get("walk_through")
                                                                 and not turnstile)
        if turnstile and v in ("open", "close", "force", "hold_open"):
            err(s, f"door {s.subject!r} is a turnstile: it has no door leaf to {v.replace('_', ' ')}",
                "use `pass_through` (a passage with or without a grant)")
        elif opens and hw is not None and hw.contact is None:
            err(s, f"door {s.subject!r} has no door contact wired, so it cannot be seen opening",
                "add `contact = { pin = N }` to the door in its device file, or use another door")
        if v == "tamper" and hw is not None and hw.tamper is None:
            err(s, f"door {s.subject!r} has no tamper switch wired",
                "add `tamper = { pin = N }` to the door in its device file, or use another door")
        if v == "rex" and hw is not None and hw.rex is None:
            err(s, f"door {s.subject!r} has no REX button wired",
                "add `rex = { pin = N }` to the door in its device file, or use another door")
        if v in ("badge", "badge_lift") and hw is not None:
            proto = hw.reader.protocol
            readable = READER_CARD_FORMATS.get(proto, (proto,))
            if "format" in o and o["format"] not in readable:
                err(s, f"{s.subject}'s {proto} reader cannot send a {o['format']} card",
                    f"use format: {' or '.join(readable)}, or another door")
            elif "card" in o:
                try:
                    _check_card(proto, o.get("format") or readable[0], o["card"])
                except ValueError as exc:
                    err(s, f"card {o['card']!r} cannot be sent by {s.subject}'s {proto} reader: {exc}",
                        "EM4100 readers send 10 hex digits; ASCII readers and pin pads letters and digits; Wiegand and "
                        'OSDP readers "FACILITY:CARD" (format: wiegand26/34/37), CARD (format: h10302), '
                        '"BITS:PAYLOAD" (format: wiegand_raw) or "BITS:HEX" (format: osdp_raw)')
            elif o["person"] in people:
                if not any(fmt in readable for fmt, _ in cards_of.get(o["person"], [])):
                    err(s, f"{o['person']} has no {proto} card for {s.subject}'s {proto} reader",
                        f"give `card:` explicitly, or add a {' or '.join(readable)} card to {o['person']} "
                        "in people.toml")
            elif o["person"] in visitors:
                if pool and not any(fmt in readable for fmt, _ in pool):
                    err(s, f"visitor badges are {pool[0][0]}, but {s.subject} has an {proto} reader",
                        "badge the visitor at a door whose reader reads the pool's cards")
            else:
                person_ok(s, o["person"])
            if "pin" in o and proto not in KEYPAD_PROTOCOLS:
                err(s, f"door {s.subject!r} has an {proto} reader, which has no keypad",
                    "PINs are typed on ASCII, pin pad, OSDP and Wiegand keypad readers; use a PIN door or drop `pin`")
        if v in ("expect_decision", "expect_event"):
            for companion in o.get("companions", ()):
                person_ok(s, companion)
        if v == "expect_decision":
            person_ok(s, o.get("person"))
        if v == "register_visitor":
            if s.subject in people:
                err(s, f"{s.subject!r} is already a person in people.toml", "give the visitor an id of their own")
            host = people.get(o["host"])
            if host is None or host.kind is PersonKind.VISITOR:
                hosts = [p for p, q in people.items() if q.kind is not PersonKind.VISITOR]
                err(s, f"host {o['host']!r} is not an employee or contractor of site {site.id}",
                    f"use one of: {', '.join(hosts)}")
            for area in o["areas"]:
                area_ok(s, area)
            visitors.add(s.subject)
        if v == "check_in" and "card" in o \
                and not any(normalise(fmt, num) == normalise(fmt, o["card"]) for fmt, num in pool):
            err(s, f"card {o['card']!r} is not in the site's visitor badge pool",
                f"use one of: {', '.join(num for _, num in pool) or '(the site has no visitor pool)'}")
        if v == "check_in" and not pool:
            err(s, f"site {site.id} has no visitor badge pool",
                "list visitor badges in people.toml's [visitor_pool] (docs/configuration.md)")
        if v == "show_qr" and door_ok(s, o["door"]) and not any(
                c.qr and c.qr_door == o["door"] for dev in bundle.devices.values() for c in dev.cameras.values()):
            err(s, f"no camera reads visitor passes for door {o['door']!r}",
                f"set qr = true on the camera of {o['door']} in its device file (qr_door = \"{o['door']}\" if the "
                "camera watches several doors; docs/configuration.md), or show the pass at another door")
        if v in ("report_lost", "expect_refused"):
            fmts = [o["format"]] if "format" in o else ["em4100", "ascii"]
            matches = [fmt for fmt in fmts if (fmt, normalise(fmt, s.subject)) in known_cards]
            if not matches:
                err(s, f"card {s.subject!r} belongs to no one in people.toml or the visitor pool",
                    "report a card the site knows (people.toml `cards`)")
            elif len(matches) > 1:
                err(s, f"card {s.subject!r} exists as em4100 and as ascii", "add format: em4100 or format: ascii")
        if v == "lockdown":
            area_ok(s, o.get("area"))
        if v == "expect_event":
            if "door" in o and o["door"] not in site.doors:
                door_ok(s, o["door"])
            person_ok(s, o.get("person"))
        if v == "expect_area":
            person_ok(s, s.subject)
            area_ok(s, o["area"])
        if v == "expect_occupancy":
            area_ok(s, s.subject)
    return errors


# ================================================================ results


@dataclass
class Check:
    """The outcome of one expectation, or of an action that failed or was not run."""

    step: Step
    status: str  # "pass" | "fail" | "error" | "skipped"
    expected: str = ""
    actual: str = ""
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return f"step {self.step.number}: {self.step.text()}"


@dataclass
class ScenarioResult:
    scenario: Scenario
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    transcript: str = ""

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def errors(self) -> list[Check]:
        return [c for c in self.checks if c.status == "error"]

    @property
    def passed(self) -> bool:
        return not self.failures and not self.errors


# ================================================================ running


@dataclass
class _Revocation:
    """A card revoked at the desk (``report_lost``, ``check_out``): when, on the scenario clock, and when the
    server and each edge's cached policy first refused it (None / absent: not within the step's 5 s)."""

    at: float
    server: float | None = None
    edges: dict[str, float] = field(default_factory=dict)
    devices: tuple[str, ...] = ()


class _Recorder:
    """Every event the edges publish, as they publish it (the server need not be up)."""

    def __init__(self, clock: ScenarioClock) -> None:
        self.clock = clock
        self.events: list[tuple[float, EventMsg]] = []
        self._cond = threading.Condition()

    def __call__(self, ev: EventMsg) -> None:
        with self._cond:
            self.events.append((self.clock.wall(), ev))
            self._cond.notify_all()

    def select(self, door: str | None = None, types: Iterable[str] | None = None) -> list[tuple[float, EventMsg]]:
        wanted = set(types) if types is not None else None
        with self._cond:
            return [(t, e) for t, e in self.events
                    if (door is None or e.door == door) and (wanted is None or e.type in wanted)]

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def ids(self) -> list[str]:
        with self._cond:
            return [e.id for _, e in self.events]


def _poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Re-check a condition until it holds or the deadline passes (state read from other threads)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        try:
            if predicate():
                return True
        except RuntimeError:
            pass  # a dict changed size while another thread wrote it: look again
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)


class _Tee(io.TextIOBase):
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.buffer = io.StringIO()

    def write(self, s: str) -> int:
        self.buffer.write(s)
        self.out.write(s)
        return len(s)

    def flush(self) -> None:
        self.out.flush()


class ScenarioRunner:
    """Runs one validated scenario against a freshly started site."""

    def __init__(self, scenario: Scenario, *, bundle: SiteBundle | None = None,
                 pool: list[tuple[str, str]] | None = None, broker_url: str | None = None,
                 out: TextIO | None = None, default_within: float = DEFAULT_WITHIN_S,
                 allow_plain: bool = False) -> None:
        """``allow_plain``: a plain ``mqtt://`` ``broker_url`` is allowed (``--allow-plain-mqtt``, development
        only; every client logs a WARNING). The runner's own brokers need no flag: Mosquitto runs mutual TLS,
        the embedded amqtt broker is started here on loopback."""
        self.scenario = scenario
        self.allow_plain = allow_plain
        if bundle is None:
            bundle, pool = load_site(scenario)
        self.bundle = bundle
        self.pool = pool or []
        self.broker_url = broker_url
        self.out = _Tee(out if out is not None else sys.stdout)
        self.default_within = default_within
        self.tz = ZoneInfo(bundle.site.timezone)
        start = scenario.start.replace(tzinfo=self.tz)
        self.clock = ScenarioClock(start.timestamp())
        self.recorder = _Recorder(self.clock)
        self.runner: SiteRunner | None = None
        self.hardware = {did: hw for dev in bundle.devices.values() for did, hw in dev.doors.items()}
        self.visitor_cards: dict[str, tuple[str, str]] = {}
        self.visitor_passes: dict[str, str] = {}
        """visitor -> the text of their pass, issued on its first ``show_qr`` and shown again as it is after."""
        self._last_read: dict[tuple[str, str], float] = {}
        self._pool_by_hash: dict[str, tuple[str, str]] = {}
        self._stolen: dict[str, Any] = {}
        """device -> the BrokerConfig of its revoked certificate (``revoked_device_connects``)."""
        self._presented: dict[str, tuple[float, float]] = {}
        """door -> (scenario time, real monotonic time) the last card was presented there (``badge``, ``show_qr``)."""
        self._presented_for: dict[str, float] = {}
        """access event id -> the scenario time its card was presented (``decided_within``)."""
        self._revocations: dict[str, _Revocation] = {}
        """card hash -> when it was revoked and when the server and each edge refused it (``expect_refused``)."""
        self._broker_up = True

    # ---------------------------------------------------------------- output

    def _say(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    def _now_text(self) -> str:
        return f"{datetime.fromtimestamp(self.clock.wall(), self.tz):%a %H:%M:%S}"

    def _local(self, epoch: float) -> str:
        return f"{datetime.fromtimestamp(epoch, self.tz):%H:%M:%S}"

    # ------------------------------------------------------------------ run

    def run(self) -> ScenarioResult:
        sc = self.scenario
        result = ScenarioResult(sc)
        began = time.monotonic()
        self._say(f"scenario: {sc.name}  ({sc.file})")
        if sc.description:
            for line in sc.description.splitlines():
                self._say(f"  {line}")
        runner = SiteRunner(self.bundle, broker_url=self.broker_url, clock=self.clock,
                            embedded_broker=not mosquitto_installed(), allow_plain=self.allow_plain)
        self.runner = runner
        try:
            try:
                self._start_site(runner)
            except BrokerUnavailable:
                raise  # nothing can run here: the command says how to get a broker (exit 2)
            except Exception as exc:  # noqa: BLE001 - whatever stops the site is the scenario's error
                self._say(f"  ERROR: the site did not start: {type(exc).__name__}: {exc}")
                self._give_up(result, sc.steps[0], f"the site did not start: {type(exc).__name__}: {exc}", 0)
            else:
                self._run_steps(result)
        finally:
            runner.stop()
            self.runner = None
        result.seconds = time.monotonic() - began
        n = sum(1 for s in sc.steps if s.expectation)
        passed = sum(1 for c in result.checks if c.status == "pass")
        if result.passed:
            self._say(f"PASS  {sc.name}: {passed} of {n} expectations passed ({result.seconds:.1f} s)")
        else:
            parts = []
            if result.failures:
                parts.append(f"{len(result.failures)} of {n} expectations failed")
            for err in result.errors:
                skipped = sum(1 for c in result.checks if c.status == "skipped")
                parts.append(f"step {err.step.number} could not run ({skipped} expectation(s) not run)")
            self._say(f"FAIL  {sc.name}: {', '.join(parts)} ({result.seconds:.1f} s)")
        self._say()
        result.transcript = self.out.buffer.getvalue()
        return result

    def _start_site(self, runner: SiteRunner) -> None:
        runner.start()
        self._pool_by_hash = {card_hash(runner.key, fmt, num): (fmt, num) for fmt, num in self.pool}
        for agent in runner.agents.values():
            agent.listeners.append(self.recorder)
        kind = "external" if self.broker_url else ("embedded amqtt" if runner.embedded_broker
                                                   else "Mosquitto (mutual TLS)")
        self._say(f"  site {self.bundle.site.id} ({len(self.bundle.site.doors)} doors on "
                  f"{len(runner.agents)} edges), {kind} broker {runner.broker_url}, "
                  f"start {datetime.fromtimestamp(self.clock.wall(), self.tz):%a %d %b %Y %H:%M} "
                  f"{self.bundle.site.timezone}")
        if not runner.wait_connected(15.0):
            raise StepFailed("the edges and the server did not all connect to the broker within 15 s")
        if not runner.wait_policies(10.0):
            raise StepFailed("the edges did not all verify the server's policy within 10 s")
        if not runner.wait_hardware(10.0):
            raise StepFailed("the simulated readers and cameras did not all come up within 10 s")

    def _give_up(self, result: ScenarioResult, step: Step, why: str, seconds: float) -> None:
        """Record a step that could not run; the expectations after it are skipped."""
        result.checks.append(Check(step, "error", "the step to run", why, seconds))
        for rest in self.scenario.steps[step.number:]:
            if rest.expectation:
                result.checks.append(Check(rest, "skipped", actual=f"not run: step {step.number} could not run"))

    def _run_steps(self, result: ScenarioResult) -> None:
        for step in self.scenario.steps:
            prefix = f"  [{step.number:3}] {self._now_text()}  {step.text()}"
            if step.note:
                self._say(f"  [{step.number:3}] # {step.note}")
            started = time.monotonic()
            if step.expectation:
                self._say(prefix + " ... ", end="")
                try:
                    ok, expected, actual = getattr(self, f"_expect_{step.verb[len('expect_'):]}")(step)
                except Exception as exc:  # noqa: BLE001 - a broken check is that check's failure, not a crash
                    ok, expected, actual = False, step.text(), f"could not check: {type(exc).__name__}: {exc}"
                result.checks.append(Check(step, "pass" if ok else "fail", expected, actual,
                                           time.monotonic() - started))
                if ok:
                    self._say("PASS")
                else:
                    self._say("FAIL")
                    self._say(f"          expected: {expected}")
                    self._say(f"          actual:   {actual}")
                    self._say(f"          ({self.scenario.file}:{step.line})")
                continue
            self._say(prefix, end="")
            try:
                outcome = getattr(self, f"_do_{step.verb}")(step)
            except Exception as exc:  # noqa: BLE001 - report any failure of an action and stop there
                why = str(exc) if isinstance(exc, (StepFailed, SiteRunnerError, ValueError)) \
                    else f"{type(exc).__name__}: {exc}"
                self._say(" ... ERROR")
                self._say(f"          {why}")
                self._say(f"          ({self.scenario.file}:{step.line}; the remaining steps are not run)")
                self._give_up(result, step, why, time.monotonic() - started)
                return
            self._say(f"  → {outcome}" if outcome else "")

    # -------------------------------------------------------------- helpers

    @property
    def site(self) -> SiteRunner:
        assert self.runner is not None
        return self.runner

    def _agent_door(self, door: str) -> Any:
        sim = self.site.doors[door]
        return self.site.agents[sim.device].doors[door]

    def _within(self, step: Step) -> float:
        return float(step.opt("within", self.default_within))

    def _advance(self, seconds: float) -> None:
        if not self.site.advance(seconds, timeout=5.0):
            raise StepFailed(f"the edges did not catch up within 5 s after the clock moved {format_duration(seconds)}")

    def _card_for(self, step: Step) -> tuple[str, str]:
        door = step.subject
        proto = self.hardware[door].reader.protocol
        readable = READER_CARD_FORMATS.get(proto, (proto,))
        if "card" in step.options:
            return step.opt("format") or readable[0], step.options["card"]
        person = step.options["person"]
        if person in self.visitor_cards:
            fmt, number = self.visitor_cards[person]
            if fmt not in readable:
                raise StepFailed(f"{person}'s visitor badge is {fmt}, but {door} has an {proto} reader")
            return fmt, number
        for seed in self.bundle.cards:  # a card written as a keyed hash (an exported people.toml) cannot be badged
            if seed.person == person and seed.number and seed.format in readable \
                    and step.opt("format") in (None, seed.format):
                return seed.format, seed.number
        raise StepFailed(f"{person} has no {proto} card for {door}")

    def _avoid_repeat_filter(self, door: str, number: str) -> str:
        """A reader ignores the same card again within ``repeat_ignore_s``: step the clock past it."""
        window = self.hardware[door].reader.repeat_ignore_s
        last = self._last_read.get((door, number))
        if last is None:
            return ""
        gap = self.clock.monotonic() - last
        if gap >= window:
            return ""
        self._advance(window - gap + 0.05)
        return f" (clock +{window - gap + 0.05:.2f}s: the reader ignores a repeat within {window:g}s)"

    def _directory(self) -> Any:
        if self.site.server is None:
            raise StepFailed("the server is down; put `server: up` first")
        return self.site.server.directory

    def _wait_open(self, door: str, is_open: bool) -> None:
        rt = self._agent_door(door)
        if not _poll(lambda: rt.machine.door_open == is_open, 3.0):
            raise StepFailed(f"the edge did not see {door} {'open' if is_open else 'close'} within 3 s")

    def _describe_access(self, at: float, ev: EventMsg) -> str:
        who = f", person {ev.person}" if ev.person else ""
        return f"{ev.decision}, reason {ev.reason}{who}, by {ev.decided_by} (badge at {self._local(at)})"

    # -------------------------------------------------------------- actions

    def _do_badge(self, step: Step) -> str:
        door = step.subject
        sim = self.site.doors[door]
        fmt, number = self._card_for(step)
        h = card_hash(self.site.key, fmt, number)
        note = self._avoid_repeat_filter(door, number)
        pin = step.opt("pin")
        if pin is not None:
            note += self._avoid_repeat_filter(door, "P" + pin)
        before = len(self.recorder.select(door, ["access"]))
        self._presented[door] = (self.clock.wall(), time.monotonic())
        sim.badge(number, fmt)
        self._last_read[(door, number)] = self.clock.monotonic()
        site_door = self.bundle.site.doors[door]
        if pin is not None:
            sim.enter_pin(pin)
            self._last_read[(door, "P" + pin)] = self.clock.monotonic()
        elif site_door.pin_required:
            note += self._walk_away_from_keypad(door)

        def decided() -> bool:
            found = self.recorder.select(door, ["access"])[before:]
            return any(e.credential_hash == h for _, e in found)

        timeout = site_door.decision_timeout_ms / 1000.0 + 5.0
        if not self.recorder.wait(decided, timeout):
            raise StepFailed(f"no access decision for card …{last4(number)} at {door} within {timeout:g} s")
        ev = next(e for _, e in self.recorder.select(door, ["access"])[before:] if e.credential_hash == h)
        self._presented_for[ev.id] = self._presented[door][0]
        latency = f", {ev.latency_ms:.1f} ms" if ev.latency_ms is not None else ""
        who = f"{ev.person}, " if ev.person else ""
        outcome = f"{ev.decision}: {ev.reason} ({who}{ev.decided_by}{latency}){note}"
        if step.opt("walk_through") and ev.decision == "granted" and sim.door.turnstile:
            if not sim.door.wait_relay(True, 3.0):
                raise StepFailed(f"{door} was granted but its arms were never freed")
            got = self._pass_turnstile(door)
            if got.type != "passage" or got.detail.get("grant") != ev.id:
                raise StepFailed(f"walking through {door} on this grant gave {got.type} {got.detail}, not its passage")
            outcome += ", walked through"
        elif step.opt("walk_through") and ev.decision == "granted":
            if not sim.door.wait_relay(True, 3.0):
                raise StepFailed(f"{door} was granted but its relay was never energised")
            sim.door.open()
            self._wait_open(door, True)
            sim.door.close()
            self._wait_open(door, False)
            outcome += ", walked through"
        return outcome

    def _walk_away_from_keypad(self, door: str) -> str:
        """A PIN door waits for the PIN; with none given, let the edge's PIN entry time run out."""
        rt = self._agent_door(door)
        if not _poll(lambda: getattr(rt, "awaiting_pin", None) is not None, 3.0):
            return ""  # the edge did not wait for a PIN: the decision comes by itself
        self._advance(PIN_ENTRY_S + 0.1)
        return f" (no PIN typed: clock +{PIN_ENTRY_S + 0.1:g}s, the keypad's entry time)"

    def _do_open(self, step: Step) -> str:
        self.site.doors[step.subject].door.open()
        self._wait_open(step.subject, True)
        return ""

    def _do_close(self, step: Step) -> str:
        self.site.doors[step.subject].door.close()
        self._wait_open(step.subject, False)
        return ""

    def _do_force(self, step: Step) -> str:
        door = step.subject
        sim = self.site.doors[door]
        if sim.door.relay_energised:
            raise StepFailed(f"{door} is unlocked (relay energised), so opening it is not forcing it; "
                             "close it or `advance` past its unlock time first")
        if sim.door.is_open:
            raise StepFailed(f"{door} is already open; `close` it first")
        sim.door.open()
        self._wait_open(door, True)
        return "door open"

    def _do_hold_open(self, step: Step) -> str:
        door = step.subject
        sim = self.site.doors[door]
        if not sim.door.is_open:
            sim.door.open()
            self._wait_open(door, True)
        self._advance(step.options["for"])
        sim.door.close()
        self._wait_open(door, False)
        return f"closed at {self._local(self.clock.wall())}"

    def _do_rex(self, step: Step) -> str:
        door = step.subject
        before = len(self.recorder.select(door, ["rex"]))
        self.site.doors[door].door.press_rex()
        if not self.recorder.wait(lambda: len(self.recorder.select(door, ["rex"])) > before, 3.0):
            raise StepFailed(f"the edge reported no REX press at {door} within 3 s")
        return ""

    def _pass_turnstile(self, door: str) -> EventMsg:
        """Pulse the turnstile's passage sensor once; the edge's event for it (passage, tailgate, forced_passage)."""
        kinds = ["passage", "tailgate", "forced_passage"]
        before = len(self.recorder.select(door, kinds))
        self.site.doors[door].door.pass_through()
        if not self.recorder.wait(lambda: len(self.recorder.select(door, kinds)) > before, 3.0):
            raise StepFailed(f"the edge reported nothing for a passage through {door} within 3 s")
        return self.recorder.select(door, kinds)[before][1]

    def _do_pass_through(self, step: Step) -> str:
        ev = self._pass_turnstile(step.subject)
        grant = ev.detail.get("grant")
        return f"{ev.type}" + (f" (grant {grant[:8]})" if grant else "")

    def _do_badge_lift(self, step: Step) -> str:
        """A badge in a lift cab: a floor chosen first (destination dispatch), the decision, then a press."""
        lift = step.subject
        cab = self.site.doors[lift].door
        chosen = step.opt("floor")
        note = ""
        if chosen is not None:
            cab.press(chosen)  # type: ignore[union-attr]
            rt = self._agent_door(lift)
            if not _poll(lambda: rt.dispatch is not None and rt.dispatch[0] == chosen, 3.0):
                raise StepFailed(f"the cab at {lift} did not take {chosen} as the floor for the next badge within 3 s")
            note = f"{chosen} chosen; "
        outcome = note + self._do_badge(step)
        press = step.opt("press")
        if press is not None:
            outcome += "; " + self._press(lift, press)
        return outcome

    def _do_press_floor(self, step: Step) -> str:
        return self._press(step.subject, step.options["floor"])

    def _press(self, lift: str, floor: str) -> str:
        """Press ``floor`` in the cab; with buttons wired, wait for the edge's floor_chosen if the floor was lit
        by a grant (a free floor's press uses no grant and says nothing)."""
        cab = self.site.doors[lift].door
        rt = self._agent_door(lift)
        granted = rt.machine.covers(floor)
        before = len(self.recorder.select(lift, ["floor_chosen"]))
        lit = cab.press(floor)  # type: ignore[union-attr]
        if not lit:
            return f"{floor} pressed: its button is dark (not enabled)"
        if not cab.has_buttons:  # type: ignore[union-attr]
            return f"{floor} pressed: enabled (no button inputs: the edge cannot tell)"
        if not granted:
            return f"{floor} pressed: enabled, free (no grant used)"
        if not self.recorder.wait(lambda: len(self.recorder.select(lift, ["floor_chosen"])) > before, 3.0):
            raise StepFailed(f"{floor} was enabled by a grant in {lift}, but the edge reported no floor_chosen "
                             "within 3 s")
        ev = self.recorder.select(lift, ["floor_chosen"])[before][1]
        return f"floor_chosen {ev.detail.get('floor')} (grant {str(ev.detail.get('grant'))[:8]})"

    def _do_emergency(self, step: Step) -> str:
        device = step.options["device"]
        contact = self.site.emergency[device]
        agent = self.site.agents[device]
        (contact.release if step.subject else contact.clear)()
        if not _poll(lambda: agent._emergency == bool(step.subject), 3.0):
            raise StepFailed(f"{device} did not see its emergency input {'open' if step.subject else 'close'} "
                             "within 3 s")
        if not agent.sync(3.0):
            raise StepFailed(f"{device} did not act on its emergency input within 3 s")
        return "doors set emergency_release " + ("held unlocked" if step.subject else "back to normal")

    def _do_tamper(self, step: Step) -> str:
        door = step.subject
        restored = bool(step.opt("restored"))
        sim = self.site.doors[door].door
        if sim.tampered != restored:
            raise StepFailed(f"the tamper switch at {door} is already {'closed' if restored else 'open'}")
        rt = self._agent_door(door)
        (sim.restore_tamper if restored else sim.tamper)()
        if not _poll(lambda: rt.machine.tampered != restored, 3.0):
            raise StepFailed(f"the edge did not see the tamper switch at {door} {'close' if restored else 'open'} "
                             "within 3 s")
        return ""

    def _do_register_visitor(self, step: Step) -> str:
        o = step.options
        now = self.clock.wall()
        start = o["from"].replace(tzinfo=self.tz).timestamp() if "from" in o else now
        if "until" in o:
            end = o["until"].replace(tzinfo=self.tz).timestamp()
        else:
            end = start + o.get("for", 8 * 3600.0)
        visitor = Visitor(id=step.subject, name=o["name"], host=o["host"], valid_from=start, valid_until=end,
                          allowed_areas=tuple(o["areas"]), company=o.get("company", ""),
                          escort_required=o.get("escort_required", True))
        self._directory().register_visitor(visitor)
        self.site.wait_policies(5.0)
        return f"visit {self._local(start)}–{self._local(end)}"

    def _do_check_in(self, step: Step) -> str:
        card = step.opt("card")
        wanted = None
        if card is not None:
            wanted = next(((fmt, num) for fmt, num in self.pool if normalise(fmt, num) == normalise(fmt, card)), None)
        visitor = self._directory().check_in(step.subject, card=wanted)
        badge = self._pool_by_hash.get(visitor.card_hash or "")
        if badge is None:
            raise StepFailed(f"{step.subject} was given a badge the runner does not know (hash {visitor.card_hash})")
        self.visitor_cards[step.subject] = badge
        self.site.wait_policies(5.0)
        return f"badge {badge[1]}"

    def _do_check_out(self, step: Step) -> str:
        badge = self.visitor_cards.get(step.subject)
        began = self.clock.wall()
        self._directory().check_out(step.subject)
        if badge is not None:
            self._track_revocation(card_hash(self.site.key, *badge), began)
        self.site.wait_policies(5.0)
        return ""

    def _track_revocation(self, h: str, began: float) -> None:
        """Watch a card just revoked until the server and every edge's cached policy refuse it, and note when each
        did on the scenario clock (``expect_refused``). Polled every few milliseconds, for at most 5 s: the step
        would wait that long for the policies anyway."""
        rev = self._revocations[h] = _Revocation(began)
        agents = dict(self.site.agents)
        server = self.site.server

        def refused_everywhere() -> bool:
            now = self.clock.wall()
            if rev.server is None and server is not None:
                cred = server.directory.site.credentials.get(h)
                if cred is None or cred.state is not CredentialState.ACTIVE:
                    rev.server = now
            for device, agent in agents.items():
                if device in rev.edges:
                    continue
                site = agent.policy.site if agent.policy is not None else None
                cred = site.credentials.get(h) if site is not None else None
                if site is not None and (cred is None or cred.state is not CredentialState.ACTIVE):
                    rev.edges[device] = now
            return rev.server is not None and len(rev.edges) == len(agents)

        _poll(refused_everywhere, 5.0, 0.002)
        rev.devices = tuple(agents)

    def _do_show_qr(self, step: Step) -> str:
        """Issue the visitor's pass once (the server must be up then), hold it up to the door's camera until the
        edge decided, then lower it. The same pass shown again later is the same text: a photo, a replay."""
        visitor, door = step.subject, step.options["door"]
        note = ""
        token = self.visitor_passes.get(visitor)
        if token is None:
            passes = self.site.server.passes if self.site.server is not None else None
            if passes is None:
                raise StepFailed("the server is down, and this visitor has no pass yet: show it first with `server: up`")
            token = passes.issue_pass(visitor, actor="scenario").token
            self.visitor_passes[visitor] = token
            self.site.wait_policies(5.0)
            note = " (pass issued)"
        window = QR_REPEAT_S
        last = self._last_read.get((door, token))
        if last is not None and self.clock.monotonic() - last < window:
            gap = window - (self.clock.monotonic() - last) + 0.05
            self._advance(gap)
            note += f" (clock +{gap:.2f}s: the camera takes a code again only after {window:g}s out of view)"
        before = len(self.recorder.select(door, ["access"]))
        self._presented[door] = (self.clock.wall(), time.monotonic())
        self.site.show_qr(door, token)
        try:
            def decided() -> bool:
                return len(self.recorder.select(door, ["access"])) > before

            timeout = self.bundle.site.doors[door].decision_timeout_ms / 1000.0 + 5.0
            if not self.recorder.wait(decided, timeout):
                raise StepFailed(f"no access decision at {door} within {timeout:g} s of showing {visitor}'s pass")
        finally:
            self.site.show_qr(door, None)
            self._last_read[(door, token)] = self.clock.monotonic()
        ev = self.recorder.select(door, ["access"])[before][1]
        self._presented_for[ev.id] = self._presented[door][0]
        who = f"{ev.person}, " if ev.person else ""
        latency = f", {ev.latency_ms:.1f} ms" if ev.latency_ms is not None else ""
        return f"{ev.decision}: {ev.reason} ({who}{ev.decided_by}{latency}){note}"

    def _do_report_lost(self, step: Step) -> str:
        directory = self._directory()
        fmts = [step.options["format"]] if "format" in step.options else ["em4100", "ascii"]
        for fmt in fmts:
            h = directory.card(fmt, step.subject)
            if h in directory.site.credentials:
                began = self.clock.wall()
                cred = directory.set_card_state(h, CredentialState.LOST)
                self._track_revocation(h, began)
                self.site.wait_policies(5.0)
                return f"{cred.person}'s card …{cred.last4} is lost"
        raise StepFailed(f"card {step.subject} is not an active credential of the site now")

    def _do_lockdown(self, step: Step) -> str:
        self._directory().lockdown(step.opt("area"), bool(step.subject))
        self.site.wait_policies(5.0)
        return ""

    def _do_broker(self, step: Step) -> str:
        if not self.site.owns_broker:
            raise StepFailed("the broker is external (--broker URL); broker steps need the runner's own broker")
        if step.subject == "down":
            self.site.wait_policies(5.0)
            self.site.stop_broker()
            self._broker_up = False
            return "every client disconnected"
        began = time.monotonic()
        if not self.site.start_broker(20.0):
            raise StepFailed("not every client reconnected to the broker within 20 s")
        self._broker_up = True
        if self.site.server is not None:
            # The broker sent the server's last will as it went down; the edges ask the
            # server again only once its retained "online" has reached them.
            agents = list(self.site.agents.values())
            if not _poll(lambda: all(a.server_availability == "online" for a in agents), 5.0):
                raise StepFailed("the edges did not hear the server online within 5 s of reconnecting")
        self.site.wait_policies(5.0)
        return f"every client reconnected in {time.monotonic() - began:.1f} s"

    def _do_server(self, step: Step) -> str:
        agents = list(self.site.agents.values())
        if step.subject == "down":
            self.site.wait_policies(5.0)
            self._do_settle_quietly(3.0)
            self.site.stop_server()
            _poll(lambda: all(a.server_availability != "online" for a in agents), 3.0)
            return "the edges are on their own"
        self.site.start_server()
        if not self.site.wait_connected(15.0):
            raise StepFailed("the server did not reconnect to the broker within 15 s")
        if not _poll(lambda: all(a.server_availability == "online" for a in agents), 5.0):
            raise StepFailed("the edges did not hear the server come back within 5 s")
        self.site.wait_policies(5.0)
        return "the edges see it online"

    def _osdp_reader(self, door: str) -> tuple[Any, Any]:
        """The door's simulated OSDP reader and the edge's view of it (its bus's counters)."""
        sim = self.site.doors[door].reader
        if not hasattr(sim, "inject_clear_naks"):
            raise StepFailed(f"{door}'s reader is not doorkeep's simulated OSDP reader ({type(sim).__name__})")
        return sim, self._agent_door(door).reader

    def _inject(self, door: str, cause: str, count: int, start: Callable[[], None], per_item_s: float) -> str:
        """Start an injection at the door's simulated reader and wait until the edge's control panel has counted
        every one as ``cause`` and has the reader back online under Secure Channel: what the step caused is
        over when the next step runs (so an ``expect_alarm`` with ``count: 0`` cannot pass by coming too soon)."""
        _, edge = self._osdp_reader(door)
        before = edge.stats.faults.get(cause, 0)
        start()
        timeout = 5.0 + per_item_s * count
        if not _poll(lambda: edge.stats.faults.get(cause, 0) >= before + count, timeout, 0.02):
            seen = edge.stats.faults.get(cause, 0) - before
            raise StepFailed(f"the edge counted {seen} of {count} {cause} at {door} within {timeout:g} s")
        back = 10.0 + per_item_s
        if not _poll(lambda: edge.stats.online and edge.stats.secure, back, 0.02):
            raise StepFailed(f"{door}'s OSDP reader did not come back online under Secure Channel within {back:g} s "
                             f"(reason {edge.stats.reason})")
        self.site.wait_edges_idle(5.0)
        total = edge.stats.faults.get(cause, 0)
        return f"the control panel counted {count} {cause} ({total} since the start); the reader is back online"

    def _do_osdp_clear_naks(self, step: Step) -> str:
        sim, _ = self._osdp_reader(step.subject)
        count = step.options["count"]
        return self._inject(step.subject, CAUSE_CLEAR_NAK, count, lambda: sim.inject_clear_naks(count), 0.5)

    def _do_osdp_wrong_key(self, step: Step) -> str:
        sim, edge = self._osdp_reader(step.subject)
        count = step.options["count"]
        # After a handshake fails on the key, the control panel waits before it tries that reader again.
        pause = float(getattr(getattr(edge, "bus", None), "retry_key_problem_s", 5.0))
        return self._inject(step.subject, CAUSE_HANDSHAKE_FAILED, count, lambda: sim.answer_with_wrong_key(count),
                            pause + 1.0)

    def _do_revoked_device_connects(self, step: Step) -> str:
        device, count = step.subject, step.options["count"]
        site = self.site
        watcher = site.broker_log_watcher
        if watcher is None:
            raise StepFailed("no broker log is watched: this needs the runner's own Mosquitto (install mosquitto; "
                             "no --broker) and the server up")
        note = ""
        stolen = self._stolen.get(device)
        if stolen is None:
            began = time.monotonic()
            stolen = self._stolen[device] = site.revoke_device(device)
            # The broker restarted: the edges ask the server again once its retained "online" reaches them.
            agents = list(site.agents.values())
            if not _poll(lambda: all(a.server_availability == "online" for a in agents), 5.0):
                raise StepFailed("the edges did not hear the server online within 5 s of the broker restart")
            site.wait_policies(5.0)
            note = (f"{device}'s edge stopped, its certificate revoked, the broker restarted and every other client "
                    f"reconnected ({time.monotonic() - began:.1f} s); ")
        before = watcher.counters["refusals"]
        outcomes = [connection_attempt(stolen, f"{device}-{i}") for i in range(count)]
        if "connected" in outcomes:
            raise StepFailed(f"the broker accepted {device}'s revoked certificate ({', '.join(outcomes)})")
        if not _poll(lambda: watcher.counters["refusals"] >= before + count, 5.0, 0.05):
            raise StepFailed(f"the broker log shows {watcher.counters['refusals'] - before} of {count} refused "
                             f"handshakes within 5 s ({site.broker_log})")
        return note + f"{count} refused by the broker ({watcher.counters['refusals']} refusals in its log so far)"

    def _do_advance(self, step: Step) -> str:
        self._advance(step.subject)
        return f"now {datetime.fromtimestamp(self.clock.wall(), self.tz):%a %d %b %Y %H:%M:%S}"

    def _do_advance_to(self, step: Step) -> str:
        target: datetime | dtime = step.subject
        now = datetime.fromtimestamp(self.clock.wall(), self.tz)
        if isinstance(target, dtime):
            when = now.replace(hour=target.hour, minute=target.minute, second=target.second, microsecond=0)
            if when <= now:
                when += timedelta(days=1)
            when = when.replace(tzinfo=None).replace(tzinfo=self.tz)  # re-resolve the offset across DST
        else:
            when = target.replace(tzinfo=self.tz)
        delta = when.timestamp() - self.clock.wall()
        if delta <= 0:
            raise StepFailed(f"{when:%Y-%m-%d %H:%M} is in the past (now {now:%Y-%m-%d %H:%M:%S}); time only moves forwards")
        self._advance(delta)
        return f"now {datetime.fromtimestamp(self.clock.wall(), self.tz):%a %d %b %Y %H:%M:%S}"

    def _do_settle(self, step: Step) -> str:
        """Wait for the system to settle within its bound; a system that does not is this step's error, never
        silently gone past (the expectations after it would judge a system still catching up)."""
        bound = step.subject or self.default_within
        outcome, settled = self._settle(bound)
        if not settled:
            raise StepFailed(f"the system did not settle within {format_duration(bound)}: {outcome}")
        return outcome

    def _do_settle_quietly(self, timeout: float) -> str:
        """Settle as far as it goes within ``timeout`` and say how far (before an outage, a ``count: 0``)."""
        return self._settle(timeout)[0]

    def _settle(self, timeout: float) -> tuple[str, bool]:
        """Edges idle, and every event they published stored (when the server can store it): what was reached,
        and whether that is settled. With the server or the broker down, idle edges are as settled as it gets
        (their events wait in the outboxes)."""
        site = self.site
        began = time.monotonic()
        if not site.wait_edges_idle(timeout):
            return "the edges are still busy", False
        if site.server is None:
            return "edges idle (the server is down)", True
        if not self._broker_up:
            return "edges idle (the broker is down: their events wait in the outboxes)", True
        store = site.server.store
        pending = set(self.recorder.ids())

        def stored() -> bool:
            for event_id in list(pending):
                if store.event(event_id) is not None:
                    pending.discard(event_id)
            return not pending

        left = max(0.1, timeout - (time.monotonic() - began))
        if not _poll(stored, left, 0.05):
            return f"{len(pending)} event(s) the edges published are not stored after {timeout:g} s", False
        return "quiet: every event is stored", True

    # --------------------------------------------------------- expectations

    def _expect_decision(self, step: Step) -> tuple[bool, str, str]:
        o = step.options
        door = step.subject
        expected = _decision_text(o)
        if not self.recorder.wait(lambda: bool(self.recorder.select(door, ["access"])), self._within(step)):
            return False, expected, f"no badge has been decided at {door}"
        at, ev = self.recorder.select(door, ["access"])[-1]
        violation = (ev.detail or {}).get("violation")
        ok = (o.get("decision", ev.decision) == ev.decision and o.get("reason", ev.reason) == ev.reason
              and o.get("person", ev.person) == ev.person and o.get("decided_by", ev.decided_by) == ev.decided_by
              and o.get("grant", ev.grant) == ev.grant and o.get("violation", violation) == violation
              and ("companions" not in o or set(o["companions"]) == set(ev.companions))
              and ("floors" not in o or set(o["floors"]) == set((ev.detail or {}).get("floors") or ())))
        actual = self._describe_access(at, ev)
        extra = [f"by rule {ev.grant}" if ev.grant else None,
                 f"companions {_option_text(tuple(ev.companions))}" if ev.companions or "companions" in o else None,
                 f"violation {violation}" if violation else None,
                 f"floors {_option_text(tuple((ev.detail or {}).get('floors') or ()))}"
                 if (ev.detail or {}).get("floors") or "floors" in o else None]
        if "decided_within" in o:
            ok_time, timing = self._decided_in_time(ev, at, o["decided_within"])
            ok = ok and ok_time
            extra.append(timing)
        actual += "".join(f"; {x}" for x in extra if x)
        return ok, expected, actual

    def _decided_in_time(self, ev: EventMsg, at: float, bound: float) -> tuple[bool, str]:
        """Whether a decision came within ``bound`` of its badge, on both clocks: the scenario clock (the card
        presented → the edge's event published, both as the runner saw them) and the latency the edge measured
        itself (``latency_ms``: the card's last byte read → the relay set or the refusal known)."""
        presented = self._presented_for.get(ev.id)
        if presented is None:
            return False, "decided in time: unknown (this decision came from no `badge` or `show_qr` step)"
        elapsed = at - presented
        latency = ev.latency_ms / 1000.0 if ev.latency_ms is not None else None
        ok = elapsed <= bound and latency is not None and latency <= bound
        shown = f"{latency * 1000:.1f} ms" if latency is not None else "not reported"
        return ok, f"decided {elapsed * 1000:.1f} ms after the badge (scenario clock), latency {shown} at the edge"

    def _expect_relay(self, step: Step) -> tuple[bool, str, str]:
        door = step.subject
        want = step.options["energised"]
        sim = self.site.doors[door]
        rt = self._agent_door(door)
        if step.options.get("at_once"):
            return self._relay_at_once(door, want)
        ok = sim.door.wait_relay(want, self._within(step))
        state = "energised" if sim.door.relay_energised else "not energised"
        return ok, "energised" if want else "not energised", f"{state} (door {rt.machine.state.value})"

    def _expect_floors_enabled(self, step: Step) -> tuple[bool, str, str]:
        lift = step.subject
        want = frozenset(step.options["floors"])
        cab = self.site.doors[lift].door
        ok = cab.wait_floors(want, self._within(step))  # type: ignore[union-attr]
        expected = f"floors {_option_text(tuple(sorted(want)))} enabled" if want else "no floor enabled"
        return ok, expected, f"floors {_option_text(tuple(sorted(cab.enabled)))} enabled"  # type: ignore[union-attr]

    def _relay_at_once(self, door: str, want: bool) -> tuple[bool, str, str]:
        """The relay now, without waiting. Not energised also means never energised since the last card was
        presented at the door: a lock still released by an earlier grant, or a refusal that pulsed it, fails
        here instead of passing once the unlock time has run out."""
        sim = self.site.doors[door].door
        rt = self._agent_door(door)
        now_on = sim.relay_energised
        state = f"{'energised' if now_on else 'not energised'} (door {rt.machine.state.value})"
        if want:
            return now_on, "energised now", state
        expected = "not energised now, nor since the last card at this door"
        since = self._presented.get(door, (None, None))[1]
        history = list(sim.relay_history)
        if since is not None:
            before = [on for t, on in history if t <= since]
            energised = [t for t, on in history if on and t > since]
            if before and before[-1]:
                held = next((t for t, on in history if t > since and not on), None)
                return False, expected, state + (
                    "; still energised by an earlier grant when the card was presented"
                    + (f", relocked {held - since:.2f} s later" if held is not None else ""))
            if energised:
                return False, expected, state + f"; energised {energised[0] - since:.3f} s after the card was presented"
        return not now_on, expected, state

    def _expect_refused(self, step: Step) -> tuple[bool, str, str]:
        """A revoked card refused by the server and by every edge's cached policy (so at every door, online or
        offline), each within the bound of the report on the scenario clock."""
        bound = step.options["refused_within"]
        expected = f"refused by the server and every edge within {format_duration(bound)} of the report"
        fmts = [step.options["format"]] if "format" in step.options else ["em4100", "ascii"]
        rev = next((self._revocations[h] for h in (card_hash(self.site.key, f, step.subject) for f in fmts)
                    if h in self._revocations), None)
        if rev is None:
            return False, expected, f"card {step.subject} was never revoked while the scenario ran"
        late: list[str] = []
        parts: list[str] = []
        for who, t in [("the server", rev.server), *((d, rev.edges.get(d)) for d in rev.devices)]:
            if t is None:
                late.append(who)
                parts.append(f"{who}: still lets it in after 5 s")
            else:
                parts.append(f"{who} {(t - rev.at) * 1000:.0f} ms")
                if t - rev.at > bound:
                    late.append(who)
        return not late, expected, ("late: " + ", ".join(late) + "; " if late else "") + ", ".join(parts)

    def _expect_alarm(self, step: Step) -> tuple[bool, str, str]:
        if step.options.get("type") in SERVER_ALARM_TYPES:
            return self._expect_server_alarm(step)
        door = step.subject
        types = [step.options["type"]] if "type" in step.options else list(ALARM_TYPES)
        count = step.options.get("count")
        cause = step.options.get("cause")

        def found() -> list[tuple[float, EventMsg]]:
            return [(t, e) for t, e in self.recorder.select(door, types)
                    if cause is None or (e.detail or {}).get("cause") == cause]

        if count == 0:
            self._do_settle_quietly(self._within(step))
            ok = not found()
        else:
            ok = self.recorder.wait(lambda: len(found()) >= (count or 1), self._within(step))
            ok = ok and (count is None or len(found()) == count)
        alarms = found()
        kinds = " or ".join(types) + (f" ({cause})" if cause else "")
        expected = f"{_count_text(count)} {kinds} at {door}"
        actual = (f"{len(alarms)}: " + ", ".join(f"{e.type} at {self._local(t)}" + _cause_text(e)
                                                 for t, e in alarms)) if alarms else f"no {kinds} at {door}"
        return ok, expected, actual

    def _expect_server_alarm(self, step: Step) -> tuple[bool, str, str]:
        """An alarm the server raised (intrusion signals): every one ever stored of that type at the door, or
        about the card, resolved ones included."""
        o = step.options
        kind, count = o["type"], o.get("count")
        where = f"for card {o['card']}" if "card" in o else f"at {step.subject}" if step.subject else "from any address"
        expected = f"{_count_text(count)} {kind} {where}"
        if self.site.server is None:
            return False, expected, "the server is down: it raises these alarms"
        store = self.site.server.store
        keys: list[str | None]
        if kind in ADDRESS_ALARM_TYPES:
            keys = [None]  # every address: the runner's clients all come from loopback
        elif "card" in o:
            fmt = o.get("format", "em4100")
            keys = [f"{kind}:credential:{card_hash(self.site.key, fmt, o['card'])}"]
        else:
            keys = [f"{kind}:door:{step.subject}"]

        def found() -> list[dict[str, Any]]:
            return [a for key in keys
                    for a in store.alarms(limit=None, type=kind, **({"key": key} if key is not None else {}))]

        if count == 0:
            self._do_settle_quietly(self._within(step))
            ok = not found()
        else:
            ok = _poll(lambda: len(found()) >= (count or 1), self._within(step), 0.05)
            ok = ok and (count is None or len(found()) == count)
        alarms = found()
        actual = (f"{len(alarms)}: " + ", ".join(
            f"{a['id']} ({a['state']}; " + ", ".join(f"{k} {a['detail'][k]}" for k in (
                "address", "count", "refusals", "door_count", "seconds_apart", "window_s") if k in a["detail"]) + ")"
            for a in alarms)) \
            if alarms else f"no {kind} {where}"
        return ok, expected, actual

    def _expect_event(self, step: Step) -> tuple[bool, str, str]:
        o = step.options
        count = o.get("count")
        filters = {"type": step.subject}
        filters.update({k: o[k] for k in ("door", "decision", "reason", "grant", "person", "decided_by") if k in o})
        companions = o.get("companions")
        text = ", ".join(f"{k} {v if v is not None else 'none'}" for k, v in filters.items())
        if companions is not None:
            text += f", companions {_option_text(companions)}"
        expected = f"{_count_text(count)} stored event with {text}"
        if self.site.server is None:
            return False, expected, "the server is down: nothing can be stored"
        store = self.site.server.store

        violation = o.get("violation")
        if violation is not None:
            text += f", violation {violation}"
            expected = f"{_count_text(count)} stored event with {text}"
        floor = o.get("floor")
        if floor is not None:
            text += f", floor {floor}"
            expected = f"{_count_text(count)} stored event with {text}"

        def rows() -> list[dict[str, Any]]:
            where = {k: v for k, v in filters.items() if v is not None}
            found = store.events(limit=100_000, **where)
            return [r for r in found if all(r.get(k) is None for k, v in filters.items() if v is None)
                    and (violation is None or _detail(r).get("violation") == violation)
                    and (floor is None or _detail(r).get("floor") == floor)
                    and (companions is None or set(_companions(r)) == set(companions))]

        if count == 0:
            self._do_settle_quietly(self._within(step))
            ok = not rows()
        else:
            ok = _poll(lambda: len(rows()) >= (count or 1), self._within(step), 0.05)
            ok = ok and (count is None or len(rows()) == count)
        found = rows()
        if found:
            actual = f"{len(found)} matching"
        else:
            around = store.events(limit=5, **({"door": o["door"]} if o.get("door") else {"type": step.subject}))
            recent = "; ".join(f"{r['type']} {r.get('decision') or ''} {r.get('reason') or ''} "
                               f"{r.get('decided_by') or ''} at {r['ts'][11:19]}Z".replace("  ", " ")
                               for r in around)
            actual = "none matching" + (f"; latest there: {recent}" if recent else "; nothing stored there")
        return ok, expected, actual

    def _expect_area(self, step: Step) -> tuple[bool, str, str]:
        person = step.subject
        want = step.options["area"]
        expected = f"{person} in {want}" if want else f"{person} in no area"
        if self.site.server is None:
            return False, expected, "the server is down: presence is the server's"
        directory = self.site.server.directory

        def where() -> Any:
            return directory.state.presence.get(person)

        ok = _poll(lambda: (where().area if where() else None) == want, self._within(step))
        seen = where()
        actual = f"in {seen.area} since {self._local(seen.since)}" if seen else "in no area (never seen by a door)"
        return ok, expected, actual

    def _expect_occupancy(self, step: Step) -> tuple[bool, str, str]:
        area = step.subject
        want = step.options["count"]
        expected = f"{want} in {area}"
        if self.site.server is None:
            return False, expected, "the server is down: occupancy is the server's"
        state = self.site.server.directory.state
        ok = _poll(lambda: state.occupancy(area) == want, self._within(step))

        def who() -> list[str]:
            for _ in range(5):
                try:
                    return sorted(p for p, pres in state.presence.items() if pres.area == area)
                except RuntimeError:
                    continue
            return []

        inside = who()
        return ok, expected, f"{len(inside)} in {area}" + (f" ({', '.join(inside)})" if inside else "")


def _cause_text(ev: EventMsg) -> str:
    """`` (clear_nak, 4 in window)`` for a reader_security event: which check failed and how often."""
    detail = ev.detail or {}
    if "cause" not in detail or ev.type != "reader_security":
        return ""
    return f" ({detail['cause']}" + (f", {detail['in_window']} in window" if "in_window" in detail else "") + ")"


def _companions(row: dict[str, Any]) -> list[str]:
    """A stored event's companions (a JSON list, NULL for none: migration 022)."""
    try:
        found = json.loads(row.get("companions") or "[]")
    except ValueError:
        return []
    return [str(c) for c in found] if isinstance(found, list) else []


def _detail(row: dict[str, Any]) -> dict[str, Any]:
    try:
        detail = json.loads(row.get("detail") or "{}")
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}


def run_scenario(scenario: Scenario, *, broker_url: str | None = None, out: TextIO | None = None,
                 default_within: float = DEFAULT_WITHIN_S, allow_plain: bool = False) -> ScenarioResult:
    """Run one validated scenario against a fresh site and return what happened."""
    if broker_url and scenario.controls_broker:
        raise ScenarioErrors([ScenarioError(str(scenario.file), "this scenario takes the broker down and up, "
                                            "which needs the runner's own broker",
                                            "run it without --broker")])
    return ScenarioRunner(scenario, broker_url=broker_url, out=out, default_within=default_within,
                          allow_plain=allow_plain).run()


# ================================================================= reports


def junit_xml(results: list[ScenarioResult], invalid: dict[str, ScenarioErrors] | None = None) -> str:
    """JUnit XML: one testsuite per scenario file, one testcase per expectation.

    A failed expectation is a ``<failure>`` (expected/actual), an action that
    could not run is an ``<error>``, expectations after it are ``<skipped>``;
    an invalid file is a testsuite with one ``<error>`` listing its problems.
    """
    root = ET.Element("testsuites", name="doorkeep scenarios")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for r in results:
        cases = [c for c in r.checks if c.step.expectation or c.status == "error"]
        counts = {"tests": len(cases), "failures": len(r.failures), "errors": len(r.errors),
                  "skipped": sum(1 for c in cases if c.status == "skipped")}
        suite = ET.SubElement(root, "testsuite", name=r.scenario.name, file=str(r.scenario.file),
                              time=f"{r.seconds:.3f}", **{k: str(v) for k, v in counts.items()})
        classname = f"scenarios.{r.scenario.file.stem}"
        for c in cases:
            case = ET.SubElement(suite, "testcase", classname=classname, name=c.name, time=f"{c.seconds:.3f}",
                                 file=str(r.scenario.file), line=str(c.step.line or 0))
            body = f"expected: {c.expected}\nactual:   {c.actual}\n({r.scenario.file}:{c.step.line})"
            if c.status == "fail":
                ET.SubElement(case, "failure", message=f"expected {c.expected}; actual {c.actual}",
                              type="ExpectationFailed").text = body
            elif c.status == "error":
                ET.SubElement(case, "error", message=c.actual, type="StepFailed").text = body
            elif c.status == "skipped":
                ET.SubElement(case, "skipped", message=c.actual)
        ET.SubElement(suite, "system-out").text = r.transcript
        for k in totals:
            totals[k] += counts[k]
    for file, errs in (invalid or {}).items():
        suite = ET.SubElement(root, "testsuite", name=file, file=file, tests="1", failures="0", errors="1",
                              skipped="0", time="0")
        case = ET.SubElement(suite, "testcase", classname=f"scenarios.{Path(file).stem}",
                             name="the scenario file is valid", file=file)
        ET.SubElement(case, "error", message=f"{len(errs.errors)} problem(s) in {file}",
                      type="InvalidScenario").text = str(errs)
        totals["tests"] += 1
        totals["errors"] += 1
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# ================================================================ commands


def expand(paths: Iterable[Path | str]) -> list[Path]:
    """Files as given; a directory stands for its ``*.yaml`` and ``*.yml`` files, sorted."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix in (".yaml", ".yml"))
        else:
            out.append(p)
    return out


def run_files(paths: Iterable[Path | str], *, junit: Path | str | None = None, broker_url: str | None = None,
              check_only: bool = False, out: TextIO | None = None, err: TextIO | None = None,
              default_within: float = DEFAULT_WITHIN_S, allow_plain: bool = False) -> int:
    """``doorkeep sim run``: 0 every expectation passed, 1 one failed (or a step could not run), 2 a file is invalid.

    Every file is validated before any runs; one invalid file stops the run (exit 2).
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    files = expand(paths)
    scenarios: list[Scenario] = []
    invalid: dict[str, ScenarioErrors] = {}
    if not files:
        print("doorkeep sim run: no scenario files given (a directory holds none?)", file=err)
        return 2
    for f in files:
        try:
            sc = load_scenario(f)
            if broker_url and sc.controls_broker:
                raise ScenarioErrors([ScenarioError(
                    str(f), "this scenario takes the broker down and up, which needs the runner's own broker",
                    "run it without --broker")])
            scenarios.append(sc)
        except ScenarioErrors as exc:
            invalid[str(f)] = exc
    if invalid:
        for exc in invalid.values():
            print(exc, file=err)
        n = sum(len(e.errors) for e in invalid.values())
        print(f"doorkeep sim run: {n} problem(s) in {len(invalid)} scenario file(s); nothing was run", file=err)
        if junit:
            Path(junit).write_text(junit_xml([], invalid), encoding="utf-8")
        return 2
    if check_only:
        for sc in scenarios:
            print(f"ok  {sc.file}  ({sc.name}: {len(sc.steps)} steps)", file=out)
        return 0
    results = [run_scenario(sc, broker_url=broker_url, out=out, default_within=default_within, allow_plain=allow_plain)
               for sc in scenarios]
    if junit:
        Path(junit).write_text(junit_xml(results), encoding="utf-8")
    failed = [r for r in results if not r.passed]
    if len(results) > 1:
        print(f"{len(results) - len(failed)} of {len(results)} scenarios passed"
              + (": failed " + ", ".join(str(r.scenario.file) for r in failed) if failed else ""), file=out)
    return 1 if failed else 0
