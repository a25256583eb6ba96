"""Strict, typed loading of site, people and device files (TOML).

An installer's typo must not become a door that silently behaves
differently, so every table rejects unknown keys, every value is
type-checked, and every problem is reported as a :class:`ConfigError`
naming the file, the dotted key and the fix. All problems found in one pass
are reported together (:class:`ConfigErrors`).

Layout of a site directory::

    site.toml          areas, doors, schedules, access levels (no secrets;
                       deployed to the edge devices too)
    people.toml        people and their cards: read by the server only,
                       card numbers are hashed on load and never sent
    devices/*.toml     one file per edge device (Raspberry Pi)
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Callable, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from doorkeep import card_formats
from doorkeep.alarm_priority import parse_alarm_settings
from doorkeep.credentials import card_hash, last4, normalise, pin_hash
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.policy import ReaderSignals
from doorkeep.model import (
    WEEKDAYS,
    AccessEntry,
    AccessLevel,
    AntiPassback,
    Area,
    Credential,
    CredentialState,
    Door,
    DoorKind,
    DoorMode,
    LiftFloor,
    OfflineMode,
    Person,
    PersonKind,
    PersonState,
    Rules,
    Schedule,
    Site,
    TimeWindow,
)

SEGMENT = re.compile(r"^[A-Za-z0-9_-]+\Z")  # \Z: "$" would let a trailing newline through
#: pinpad: an ASCII card reader whose keypad sends each key as one byte (edge/kinds/pinpad.py); same keys as ascii
READER_PROTOCOLS = ("em4100", "ascii", "osdp", "wiegand", "pinpad")
#: wiegand*: "FACILITY:CARD" in decimal; h10302: CARD in decimal; wiegand_raw: "BITS:PAYLOAD" in decimal
#: (doorkeep/card_formats.py); osdp_raw: "BITS:HEX" (edge/osdp/cards.py, docs/readers.md)
CARD_FORMATS = ("em4100", "ascii", *card_formats.WIEGAND_CREDENTIALS, "osdp_raw")
_CARD_NUMBER_RULES: dict[str, tuple[str, str]] = {
    "em4100": (r"^[0-9A-Fa-f]{10}$", "write EM4100 numbers as the reader sends them, e.g. 0F00A1B2C3"),
    "wiegand26": (r"^\d{1,3}:\d{1,5}$", "write FACILITY:CARD in decimal, e.g. 12:34567"),
    "wiegand34": (r"^\d{1,5}:\d{1,5}$", "write FACILITY:CARD in decimal, e.g. 1234:5678"),
    "wiegand37": (r"^\d{1,5}:\d{1,6}$", "write FACILITY:CARD in decimal, e.g. 1234:56789"),
    "osdp_raw": (r"^\d{1,4}:[0-9A-Fa-f]+$", "write BITS:HEX as the edge logs it, e.g. 40:0123456789"),
}
GPIO_FACTORIES = ("mock", "lgpio", "rpigpio", "pigpio", "native")
LOCK_FAIL_MODES = ("secure", "safe")
BROKER_SCHEMES = ("mqtt", "tcp", "mqtts")
TLS_SCHEMES = ("mqtts",)

T = TypeVar("T")
_MISSING = object()


class _Table:
    """One TOML table being read: remembers which keys were used so leftovers are errors."""

    def __init__(self, data: Any, file: str, path: str, errors: list[ConfigError]) -> None:
        self.file = file
        self.path = path
        self.errors = errors
        if not isinstance(data, dict):
            self.error("", f"must be a table, got {type(data).__name__}", f"write it as [{path}]")
            data = {}
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str, fix: str) -> None:
        self.errors.append(ConfigError(self.file, self.key(name) if name else self.path, problem, fix))

    def get(self, name: str, kind: type | tuple[type, ...], default: Any = _MISSING, *, fix: str = "") -> Any:
        self.used.add(name)
        if name not in self.data:
            if default is _MISSING:
                self.error(name, "is required but missing", fix or f"add `{name} = ...`")
                return None
            return default
        value = self.data[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        elif float in kinds and isinstance(value, int) and not isinstance(value, bool):
            try:
                value, ok = float(value), True
            except OverflowError:
                ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.error(name, f"must be {names}, got {value!r}", fix or f"write {name} as a {names}")
            return None if default is _MISSING else default
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _MISSING) -> Any:
        value = self.get(name, str, default, fix=f"use one of: {', '.join(choices)}")
        if value is not None and value not in choices:
            self.error(name, f"unknown value {value!r}", f"use one of: {', '.join(choices)}")
            return None
        return value

    def ident(self, name: str, default: Any = _MISSING) -> Any:
        value = self.get(name, str, default)
        if isinstance(value, str) and not SEGMENT.match(value):
            self.error(name, f"{value!r} is not a valid identifier", "use only letters, digits, '_' and '-'")
            return None
        return value

    def positive(self, name: str, default: float, maximum: float = 1_000_000.0) -> float:
        """A finite number above 0 and at most ``maximum`` (TOML also spells inf and nan, and any size)."""
        value = self.get(name, float, default)
        if value is not None and not (0 < value <= maximum):  # also false for nan
            self.error(name, f"must be greater than 0 and at most {maximum:g}, got {value}",
                       f"set {name} to a positive number, at most {maximum:g}")
            return default
        return value if value is not None else default

    def sub(self, name: str, required: bool = False) -> _Table | None:
        self.used.add(name)
        if name not in self.data:
            if required:
                self.error(name, "is required but missing", f"add a [{self.key(name)}] table")
            return None
        return _Table(self.data[name], self.file, self.key(name), self.errors)

    def children(self, name: str) -> list[tuple[str, _Table]]:
        """Named sub-tables such as [doors.lobby_in], with their names checked."""
        table = self.sub(name)
        if table is None:
            return []
        table.used.update(table.data)
        out = []
        for child, data in table.data.items():
            if not SEGMENT.match(child):
                table.error(child, f"{child!r} is not a valid identifier", "use only letters, digits, '_' and '-'")
                continue
            out.append((child, _Table(data, self.file, table.key(child), self.errors)))
        return out

    def done(self) -> None:
        for extra in sorted(set(self.data) - self.used):
            close = difflib.get_close_matches(extra.lower(), sorted(self.used), n=1, cutoff=0.75)
            hint = f"did you mean `{close[0]}`?" if close else f"remove it; allowed keys here: {', '.join(sorted(self.used))}"
            self.error(extra, "unknown key", hint)


def _read_toml(path: Path, errors: list[ConfigError], text: str | None = None) -> dict[str, Any] | None:
    """The TOML at ``path``; with ``text``, that text stands for the file's content (a site revision held by
    the server, checked with the same rules and messages as the file itself)."""
    try:
        if text is not None:
            return tomllib.loads(text)
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        errors.append(ConfigError(str(path), "", "file not found", "check the path"))
    except tomllib.TOMLDecodeError as exc:
        errors.append(ConfigError(str(path), "", f"not valid TOML: {exc}", "fix the TOML syntax at that line"))
    except OSError as exc:
        errors.append(ConfigError(str(path), "", f"cannot be read: {exc}", "check the file's permissions"))
    except UnicodeDecodeError as exc:
        errors.append(ConfigError(str(path), "", f"not UTF-8 text: {exc}", "save the file as UTF-8"))
    except RecursionError:
        errors.append(ConfigError(str(path), "", "arrays or tables nested too deeply", "flatten the structure"))
    except ValueError as exc:  # an integer with thousands of digits, a NUL in the path
        errors.append(ConfigError(str(path), "", f"cannot be read: {exc}", "check the path and the numbers in it"))
    return None


# --------------------------------------------------------------------- site


def _parse_time(t: _Table, name: str, value: Any) -> time | None | str:
    if not isinstance(value, str) or not re.match(r"^\d{2}:\d{2}$", value):
        t.error(name, f"must be a time written HH:MM, got {value!r}", 'write it like "07:30"')
        return "bad"
    hh, mm = int(value[:2]), int(value[3:])
    if (hh, mm) == (24, 0):
        return None
    if hh > 23 or mm > 59:
        t.error(name, f"{value!r} is not a time of day", "use 00:00 to 24:00")
        return "bad"
    return time(hh, mm)


def _schedule(sid: str, t: _Table) -> Schedule:
    windows = []
    raw = t.get("windows", list, [])
    for i, item in enumerate(raw or []):
        w = _Table(item, t.file, f"{t.key('windows')}[{i}]", t.errors)
        days = w.get("days", list, fix=f'list days from {", ".join(WEEKDAYS)}')
        bad = [d for d in (days or []) if d not in WEEKDAYS]
        if bad:
            w.error("days", f"unknown day(s) {bad}", f"use {', '.join(WEEKDAYS)}")
        start = _parse_time(w, "start", w.get("start", str))
        end = _parse_time(w, "end", w.get("end", str))
        w.done()
        if start == "bad" or end == "bad" or start is None:
            if start is None:
                w.error("start", "24:00 cannot start a window", "start at 00:00 to 23:59")
            continue
        windows.append(TimeWindow(frozenset(d for d in days or [] if d in WEEKDAYS), start, end))
    holidays = set()
    for i, h in enumerate(t.get("holidays", list, []) or []):
        if isinstance(h, date) and not isinstance(h, datetime):  # a datetime is a date too
            holidays.add(h)
        else:
            t.error(f"holidays[{i}]", f"must be a date, got {h!r}", "write dates unquoted, e.g. 2026-12-25")
    name = t.get("name", str, sid)
    t.done()
    return Schedule(sid, name, tuple(windows), frozenset(holidays))


def _area(aid: str, t: _Table) -> Area:
    clearance = t.get("clearance", int, 0)
    if clearance is not None and not 0 <= clearance <= 9:
        t.error("clearance", f"must be 0-9, got {clearance}", "use a clearance from 0 to 9")
    apb = t.choice("anti_passback", tuple(m.value for m in AntiPassback), "none") or "none"
    reset = t.get("anti_passback_reset_min", float, None)
    if reset is not None:
        if reset <= 0:
            t.error("anti_passback_reset_min", f"must be greater than 0, got {reset}",
                    "set the minutes after which a presence no longer counts, or remove the key")
            reset = None
        elif apb == "none":
            t.error("anti_passback_reset_min", "has no effect without anti-passback",
                    'set anti_passback = "soft" or "hard", or remove the key')
    occupancy = t.get("max_occupancy", int, None)
    if occupancy is not None and occupancy < 1:
        t.error("max_occupancy", f"must be at least 1, got {occupancy}",
                "set the number of people the area may hold, or remove the key for no limit")
        occupancy = None
    area = Area(
        id=aid,
        name=t.get("name", str, aid),
        restricted=bool(t.get("restricted", bool, False)),
        clearance=clearance or 0,
        escort_required=bool(t.get("escort_required", bool, False)),
        two_person=bool(t.get("two_person", bool, False)),
        anti_passback=AntiPassback(apb),
        anti_passback_reset_min=reset,
        max_occupancy=occupancy,
    )
    t.done()
    return area


def _door_mode(t: _Table, schedules: dict[str, Schedule]) -> tuple[DoorMode, str | None, bool]:
    mode = DoorMode(t.choice("mode", tuple(m.value for m in DoorMode), "normal") or "normal")
    sched = t.ident("unlock_schedule", None)
    first = bool(t.get("first_person_in", bool, False))
    if sched is not None and sched not in schedules:
        t.error("unlock_schedule", f"schedule {sched!r} is not defined",
                f"add [schedules.{sched}] or use one of: {', '.join(schedules) or '(none defined)'}")
        sched = None
    if mode is DoorMode.UNLOCKED_ON_SCHEDULE:
        if sched is None and "unlock_schedule" not in t.data:
            t.error("unlock_schedule", 'is required with mode = "unlocked_on_schedule"',
                    "name the schedule during which the door stays unlocked")
    else:
        if sched is not None:
            t.error("unlock_schedule", "has no effect unless the door is unlocked on schedule",
                    'set mode = "unlocked_on_schedule", or remove the key')
            sched = None
        if first:
            t.error("first_person_in", "has no effect unless the door is unlocked on schedule",
                    'set mode = "unlocked_on_schedule" and unlock_schedule, or remove the key')
            first = False
    return mode, sched, first


DEFAULT_PREALARM_S = 10.0


def _prealarm(t: _Table, held_open_s: float) -> float:
    """The held-open pre-alarm: 0 (none) or less than ``held_open_s``.

    Left out, it is 10 s, or none on a door whose ``held_open_s`` is 10 s or
    less (it would sound at every opening); written, a value that does not
    fit is an error rather than a silent change.
    """
    if "prealarm_s" not in t.data:
        t.used.add("prealarm_s")
        return DEFAULT_PREALARM_S if DEFAULT_PREALARM_S < held_open_s else 0.0
    value = t.get("prealarm_s", float, DEFAULT_PREALARM_S)
    if value is None:
        return 0.0
    if not value >= 0:  # negative or nan
        t.error("prealarm_s", f"must be 0 or more, got {value}",
                "set prealarm_s to the seconds before held_open_s at which the sounder starts, "
                "or 0 for no pre-alarm")
        return 0.0
    if value > 0 and value >= held_open_s:
        t.error("prealarm_s", f"{value:g} s is not less than held_open_s ({held_open_s:g} s)",
                "set prealarm_s below held_open_s (the pre-alarm starts that many seconds before the "
                "held_open alarm), or 0 for no pre-alarm")
        return 0.0
    return value


def _tailgate(t: _Table) -> float:
    """A turnstile's tailgate window: 0 to 60 s (0: every passage without a grant is forced_passage)."""
    value = t.get("tailgate_s", (int, float), 3.0)
    if value is None:
        return 3.0
    if "tailgate_s" in t.data and t.data.get("kind") != DoorKind.TURNSTILE.value:
        t.error("tailgate_s", "only a turnstile has a tailgate window", 'set kind = "turnstile", or remove the key')
    if not 0 <= value <= 60:
        t.error("tailgate_s", f"{value} is out of range", "use 0 to 60 seconds (default 3)")
        return 3.0
    return float(value)


def _lift_floors(t: _Table, areas: dict[str, Area], schedules: dict[str, Schedule], lift: bool) -> tuple[LiftFloor, ...]:
    """A lift's ``floors`` (areas, in order), ``public_floors`` (floor -> schedule) and ``offline_floors``
    (floor -> cache | deny); on any other door these keys are errors."""
    keys = ("floors", "public_floors", "offline_floors")
    if not lift:
        for key in keys:
            if key in t.data:
                t.used.add(key)
                t.error(key, "only a lift has floors", 'set kind = "lift" (and remove from and to), or remove the key')
        return ()
    names = t.get("floors", list, fix='list the areas the lift serves: floors = ["lobby", "level_2"]')
    floors: list[str] = []
    for i, name in enumerate(names or []):
        if not isinstance(name, str) or name not in areas:
            t.error(f"floors[{i}]", f"{name!r} is not a defined area",
                    f"add [areas.{name}] or use one of: {', '.join(areas)}")
        elif name in floors:
            t.error(f"floors[{i}]", f"floor {name!r} is listed twice", "list each floor once")
        else:
            floors.append(name)
    if names == []:  # None: missing or not a list, already reported by get()
        t.error("floors", "a lift needs at least one floor", 'list the areas the lift serves: floors = ["lobby"]')

    def per_floor(key: str, check: Callable[[str, Any], bool], fix: str) -> dict[str, Any]:
        table = t.get(key, dict, {}) or {}
        for floor, value in table.items():
            if floor not in floors:
                t.error(f"{key}.{floor}", f"{floor!r} is not one of this lift's floors",
                        f"use one of: {', '.join(floors) or '(none)'}")
            elif not check(floor, value):
                t.error(f"{key}.{floor}", f"{value!r} is not allowed here", fix)
        return {k: v for k, v in table.items() if k in floors and check(k, v)}

    public = per_floor("public_floors", lambda _, v: isinstance(v, str) and v in schedules,
                       f"name a schedule: one of {', '.join(schedules) or '(none defined)'}")
    offline = per_floor("offline_floors", lambda _, v: v in tuple(m.value for m in OfflineMode),
                        f"use one of: {', '.join(m.value for m in OfflineMode)}")
    return tuple(LiftFloor(a, public.get(a), OfflineMode(offline[a]) if a in offline else None) for a in floors)


def _check_lifts(root: _Table, doors: dict[str, Door]) -> None:
    """A lift has no leaf to hold open: no schedule mode (its floors have public_floors), interlock or visitor
    checkout (docs/openings.md "Lifts"); a tailgate window is refused by :func:`_tailgate`."""
    for did, door in doors.items():
        if door.kind is not DoorKind.LIFT:
            continue
        for key, bad in (("mode", door.mode is not DoorMode.NORMAL), ("interlock", door.interlock is not None),
                         ("visitor_checkout", door.visitor_checkout)):
            if bad:
                root.error(f"doors.{did}.{key}", f"a lift cannot have {key}",
                           "remove the key (public floors on a schedule: public_floors = { lobby = \"day\" })"
                           if key == "mode" else "remove the key")


def interlock_groups(doors: dict[str, Door]) -> dict[str, list[str]]:
    """Interlock group -> its doors, in the order the site lists them."""
    groups: dict[str, list[str]] = {}
    for did, door in doors.items():
        if door.interlock is not None:
            groups.setdefault(door.interlock, []).append(did)
    return groups


def _check_interlocks(root: _Table, doors: dict[str, Door]) -> None:
    """An interlock needs two doors or more, and none of them held unlocked by a schedule: a door the schedule
    holds open would keep every other door of the group shut for the whole schedule (docs/openings.md)."""
    for group, members in interlock_groups(doors).items():
        if len(members) < 2:
            root.error(f"doors.{members[0]}.interlock", f"interlock {group!r} has only this door",
                       f"give a second door interlock = \"{group}\", or remove the key")
        released = {doors[did].emergency_release for did in members}
        if len(released) > 1:
            root.error(f"doors.{members[0]}.emergency_release",
                       f"the doors of interlock {group!r} disagree on emergency_release",
                       "set emergency_release the same on every door of the interlock: an emergency releases "
                       "all of them or none")
        for did in members:
            if doors[did].mode is not DoorMode.NORMAL:
                root.error(f"doors.{did}.mode", f"a door of interlock {group!r} cannot be unlocked on schedule",
                           'set mode = "normal", or take the door out of the interlock')


def _rules(t: _Table | None) -> Rules:
    if t is None:
        return Rules()
    d = Rules()
    attempts = t.get("pin_max_attempts", int, d.pin_max_attempts)
    if attempts is None or attempts < 1:
        if attempts is not None:
            t.error("pin_max_attempts", f"must be at least 1, got {attempts}",
                    "set how many wrong PINs in a row lock a card out of PIN doors")
        attempts = d.pin_max_attempts
    rules = Rules(
        escort_window_s=t.positive("escort_window_s", d.escort_window_s),
        two_person_window_s=t.positive("two_person_window_s", d.two_person_window_s),
        pin_max_attempts=attempts,
        pin_lockout_s=t.positive("pin_lockout_s", d.pin_lockout_s),
    )
    t.done()
    return rules


def _load_site(path: Path, errors: list[ConfigError], text: str | None = None) -> Site | None:
    data = _read_toml(path, errors, text)
    if data is None:
        return None
    f = str(path)
    root = _Table(data, f, "", errors)
    head = root.sub("site", required=True) or _Table({}, f, "site", [])
    site_id = head.ident("id")
    name = head.get("name", str, site_id or "")
    tz = head.get("timezone", str, fix='add e.g. timezone = "Europe/London"')
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            head.error("timezone", f"unknown time zone {tz!r}", 'use an IANA name such as "Europe/London"')
    head.done()

    areas = {aid: _area(aid, t) for aid, t in root.children("areas")}
    if "outside" not in areas:
        root.error("areas", "has no `outside` area", "add an [areas.outside] table")

    schedules = {sid: _schedule(sid, t) for sid, t in root.children("schedules")}

    doors = {}
    for did, t in root.children("doors"):
        lift = t.data.get("kind") == DoorKind.LIFT.value
        frm = t.ident("from", None if lift else _MISSING)
        to = t.ident("to", None if lift else _MISSING)
        if lift and (frm or to):
            t.error("from" if frm else "to", "a lift serves floors, not one passage from an area into another",
                    'remove from and to, and list the floors: floors = ["lobby", "level_2"]')
            frm = to = None
        for key, area in (("from", frm), ("to", to)):
            if area and area not in areas:
                t.error(key, f"area {area!r} is not defined", f"add [areas.{area}] or use one of: {', '.join(areas)}")
        if frm and to and frm == to:
            t.error("to", "a door must lead into another area", "set `to` to a different area than `from`")
        timeout = t.get("decision_timeout_ms", int, 1000)
        if timeout is not None and not 50 <= timeout <= 10_000:
            t.error("decision_timeout_ms", f"{timeout} is out of range", "use 50 to 10000 milliseconds")
            timeout = 1000
        offline = t.choice("offline", tuple(m.value for m in OfflineMode), "deny")
        mode, unlock_schedule, first_person_in = _door_mode(t, schedules)
        held_open_s = t.positive("held_open_s", 30.0, maximum=86_400.0)
        doors[did] = Door(
            id=did,
            name=t.get("name", str, did),
            from_area=frm or "",
            to_area=to or "",
            unlock_s=t.positive("unlock_s", 5.0, maximum=3600.0),  # longer than an hour is a door mode
            held_open_s=held_open_s,
            decision_timeout_ms=timeout or 1000,
            offline=OfflineMode(offline or "deny"),
            pin_required=bool(t.get("pin_required", bool, False)),
            mode=mode,
            unlock_schedule=unlock_schedule,
            first_person_in=first_person_in,
            prealarm_s=_prealarm(t, held_open_s),
            visitor_checkout=bool(t.get("visitor_checkout", bool, False,
                                             fix="write `visitor_checkout = true` or `false` (no quotes)")),
            interlock=t.ident("interlock", None),
            emergency_release=bool(t.get("emergency_release", bool, False,
                                         fix="write `emergency_release = true` or `false` (no quotes)")),
            kind=DoorKind(t.choice("kind", tuple(k.value for k in DoorKind), "door") or "door"),
            tailgate_s=_tailgate(t),
            floors=_lift_floors(t, areas, schedules, lift),
        )
        t.done()
    _check_interlocks(root, doors)
    _check_lifts(root, doors)

    levels = {}
    for lid, t in root.children("access_levels"):
        entries = []
        for i, item in enumerate(t.get("entries", list, []) or []):
            e = _Table(item, f, f"{t.key('entries')}[{i}]", errors)
            area = e.ident("area")
            sched = e.ident("schedule")
            if area and area not in areas:
                e.error("area", f"area {area!r} is not defined", f"use one of: {', '.join(areas)}")
            if sched and sched not in schedules:
                e.error("schedule", f"schedule {sched!r} is not defined", f"use one of: {', '.join(schedules) or '(none defined)'}")
            e.done()
            if area and sched:
                entries.append(AccessEntry(area, sched))
        levels[lid] = AccessLevel(lid, t.get("name", str, lid), tuple(entries))
        t.done()
    rules = _rules(root.sub("rules"))
    alarms = parse_alarm_settings(root.sub("alarms"))  # the desk's priorities (docs/alarms.md "Priority")
    root.used.add("retention")  # server-side only: read by _load_retention, not part of the Site
    root.used.add("intrusion")  # server-side only: read by _load_intrusion, not part of the Site
    root.used.add("desk")  # server-side only: read by load_desk_settings, not part of the Site
    root.used.add("backup")  # server-side only: read by _load_backup, not part of the Site
    root.used.add("store")  # server-side only: read by load_store_settings, not part of the Site
    root.used.add("smtp")  # server-side only: read by _load_smtp, not part of the Site
    root.used.add("invitations")  # server-side only: read by _load_smtp, not part of the Site
    root.used.add("siem")  # server-side only: read by _load_siem, not part of the Site
    root.used.add("home_assistant")  # server-side only: read by _load_home_assistant, not part of the Site
    root.used.add("integrations")  # server-side only: read by _load_integrations, not part of the Site
    root.done()
    if site_id is None or tz is None:
        return None
    return Site(site_id, name or site_id, tz, areas, doors, schedules, levels, rules=rules, alarms=alarms)


@dataclass(frozen=True)
class RetentionSettings:
    """How many days each class of data is kept (site.toml [retention]; server/retention.py enforces it).

    Defaults a privacy officer can sign off: snapshots a month, access events half a year, a visitor's
    record a month after the visit, resolved alarms a year, the audit log two years.
    """

    events_days: int = 180
    snapshots_days: int = 30
    visitors_days: int = 30
    alarms_days: int = 365
    audit_days: int = 730


def _retention(t: _Table | None) -> RetentionSettings:
    d = RetentionSettings()
    if t is None:
        return d

    def days(name: str, value: Any) -> int:
        default = getattr(d, name)
        if value is not None and not 1 <= value <= 36500:
            t.error(name, f"must be 1 to 36500 days, got {value}",
                    f"set {name} to the whole days to keep that data, or remove it for {default}")
            value = None
        return default if value is None else int(value)

    out = RetentionSettings(
        events_days=days("events_days", t.get("events_days", int, d.events_days)),
        snapshots_days=days("snapshots_days", t.get("snapshots_days", int, d.snapshots_days)),
        visitors_days=days("visitors_days", t.get("visitors_days", int, d.visitors_days)),
        alarms_days=days("alarms_days", t.get("alarms_days", int, d.alarms_days)),
        audit_days=days("audit_days", t.get("audit_days", int, d.audit_days)),
    )
    t.done()
    return out


def _load_retention(path: Path, errors: list[ConfigError], text: str | None = None) -> RetentionSettings:
    """The [retention] table of site.toml (the file's own problems are reported by _load_site)."""
    data = _read_toml(path, [], text)
    if data is None:
        return RetentionSettings()
    return _retention(_Table(data, str(path), "", errors).sub("retention"))


@dataclass(frozen=True)
class BackupSettings:
    """The server's own backups (site.toml [backup]; server/backup.py takes them, docs/backups.md).

    Off until ``dir`` is set. Every ``every_s`` seconds a full online backup of the store, encrypted to the
    recovery public key, is written to ``dir`` and the newest ``keep`` are kept; each is then copied offsite
    (a directory on another mount, or a command run without a shell, ``{file}`` standing for the backup).
    A failed backup or copy raises ``backup_failed`` and is retried after ``retry_s``. Paths are relative to
    the site directory. The default period, 50 s, keeps the worst-case loss (the period plus one backup's
    duration, about 2 s at 1M events) within the 60 s recovery point objective (docs/backups.md).
    """

    dir: Path | None = None
    every_s: float = 50.0
    keep: int = 60
    recovery_key: Path | None = None
    offsite_dir: Path | None = None
    offsite_command: tuple[str, ...] = ()
    offsite_timeout_s: float = 300.0
    retry_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return self.dir is not None


def _backup(t: _Table | None, base: Path) -> BackupSettings:
    d = BackupSettings()
    if t is None:
        return d

    def path(name: str) -> Path | None:
        value = t.get(name, str, None)
        if value is None:
            return None
        if not value.strip():
            t.error(name, "is empty", f"write a path (relative to the site directory) or remove {name}")
            return None
        return base / value

    directory = path("dir")
    recovery = path("recovery_key")
    offsite_dir = path("offsite_dir")
    command = t.get("offsite_command", list, [])
    if command is not None and (not all(isinstance(c, str) and c for c in command)):
        t.error("offsite_command", "must be a list of non-empty strings (the program, then its arguments)",
                'write it like ["rsync", "-a", "{file}", "backup-host:/srv/doorkeep/"]')
        command = []
    if command and offsite_dir is not None:
        t.error("offsite_command", "and offsite_dir are both set", "name one offsite target: a directory or a command")
    if command and not any("{file}" in c for c in command):
        t.error("offsite_command", "never names the backup", 'put "{file}" where the backup file goes')
    keep = t.get("keep", int, d.keep)
    if keep is not None and not 1 <= keep <= 100_000:
        t.error("keep", f"must be 1 to 100000 backups, got {keep}", f"set keep to how many backups to keep, "
                f"or remove it for {d.keep}")
        keep = d.keep
    out = BackupSettings(
        dir=directory, every_s=t.positive("every_s", d.every_s, 7 * 86400.0), keep=int(keep or d.keep),
        recovery_key=recovery, offsite_dir=offsite_dir, offsite_command=tuple(command or ()),
        offsite_timeout_s=t.positive("offsite_timeout_s", d.offsite_timeout_s, 86400.0),
        retry_s=t.positive("retry_s", d.retry_s, 86400.0))
    if directory is not None and recovery is None:
        t.error("recovery_key", "is required when dir is set: backups are encrypted to it",
                "run `doorkeep backup keygen --out FILE`, keep FILE.key offline and set recovery_key to FILE.pub")
    elif recovery is not None:
        try:
            text = recovery.read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            t.error("recovery_key", f"{recovery} cannot be read: {exc}",
                    "run `doorkeep backup keygen --out FILE` and set recovery_key to FILE.pub")
        else:
            if "PRIVATE KEY" in text:
                t.error("recovery_key", f"{recovery} is a private key: it must stay offline, not on the server",
                        "set recovery_key to the .pub file `doorkeep backup keygen` wrote beside it")
            elif "PUBLIC KEY" not in text:
                t.error("recovery_key", f"{recovery} is not a public key file",
                        "set recovery_key to the .pub file `doorkeep backup keygen` wrote")
    t.done()
    return out


def _load_backup(path: Path, errors: list[ConfigError], text: str | None = None) -> BackupSettings:
    """The [backup] table of site.toml (the file's own problems are reported by _load_site)."""
    data = _read_toml(path, [], text)
    if data is None:
        return BackupSettings()
    return _backup(_Table(data, str(path), "", errors).sub("backup"), path.parent)


#: The URL schemes of ``[store] url``: PostgreSQL's (libpq reads both). SQLite needs no URL: it is the default.
STORE_URL_SCHEMES = ("postgresql", "postgres")
_STORE_URL_FORM = "postgresql://USER@HOST:PORT/DATABASE"
_STORE_PASSWORD_FIX = ("remove the password from the URL and give it to libpq outside site.toml: a password file "
                       "(~/.pgpass of the server's account, or PGPASSFILE) or PGPASSWORD in the server's environment")


@dataclass(frozen=True)
class StoreSettings:
    """Where the server keeps its records (site.toml [store]; docs/configuration.md, docs/scale.md).

    ``url`` None (the default): SQLite, ``doorkeep.db`` in the data directory. A ``postgresql://`` URL: the records
    live in that PostgreSQL database (snapshots, keys and the other files stay in the data directory). Never with a
    password: site.toml is kept in the server's site revisions and audited, so a password there would be copied into
    every revision and every diff; libpq reads it from a password file or the environment instead.
    ``doorkeep server --store URL`` and ``$DOORKEEP_STORE_URL`` override it (server/store_url.py).
    """

    url: str | None = None

    @property
    def postgresql(self) -> bool:
        return self.url is not None


def store_url_problem(url: str) -> tuple[str, str] | None:
    """``(problem, fix)`` when ``url`` cannot name the server's store, else None: a ``postgresql://`` URL naming a
    database, without a password. The same rule for ``[store] url``, ``--store`` and ``$DOORKEEP_STORE_URL``."""
    from urllib.parse import parse_qs, urlsplit

    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        password = parts.password
        query = parse_qs(parts.query)
        if parts.hostname is not None and "," not in (parts.netloc or ""):
            parts.port  # raises ValueError for a port that is not a number in 0-65535
    except ValueError as exc:
        return f"is not a valid URL ({exc})", f"write it as {_STORE_URL_FORM}"
    if scheme not in STORE_URL_SCHEMES:
        return (f"must be a postgresql:// URL, got {scheme + '://' if scheme else 'no scheme'}",
                f"write it as {_STORE_URL_FORM}, or remove it to keep SQLite in the data directory")
    if password is not None or "password" in query:
        return "holds a password", _STORE_PASSWORD_FIX
    if not parts.path.strip("/"):
        return "names no database", f"end the URL with the database's name: {_STORE_URL_FORM}"
    return None


def _store(t: _Table | None) -> StoreSettings:
    if t is None:
        return StoreSettings()
    url = t.get("url", str, None, fix=f"write it as {_STORE_URL_FORM}")
    if url is not None:
        problem = store_url_problem(url)
        if problem is not None:
            t.error("url", problem[0], problem[1])
            url = None
    t.done()
    return StoreSettings(url=url)


def load_store_settings(path: Path, errors: list[ConfigError], text: str | None = None) -> StoreSettings:
    """The [store] table of site.toml (the file's own problems are reported by _load_site)."""
    data = _read_toml(path, [], text)
    if data is None:
        return StoreSettings()
    return _store(_Table(data, str(path), "", errors).sub("store"))


def check_backup_store(backup: BackupSettings, store: StoreSettings, site_file: str) -> ConfigError | None:
    """The refusal of ``[backup]`` with a PostgreSQL store: doorkeep's backups copy the SQLite file, and a
    PostgreSQL database is backed up with PostgreSQL's own tools (docs/backups.md)."""
    if not (backup.enabled and store.postgresql):
        return None
    return ConfigError(site_file, "backup.dir", "doorkeep's backups copy the SQLite store, but the store is in "
                       "PostgreSQL ([store] url or $DOORKEEP_STORE_URL)",
                       "remove [backup] and back up the database with PostgreSQL's own tools: pg_dump, or base "
                       "backups with WAL archiving (docs/backups.md \"PostgreSQL\")")


SIEM_FORMATS = ("rfc5424", "cef")
#: What a SIEM may be sent: stored events (badges and door events), new alarms, audit records.
SIEM_KINDS = ("access", "alarms", "audit")
#: Syslog facility names (RFC 5424 §6.2.1 codes); a number 0-23 is accepted too.
SYSLOG_FACILITIES = {"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
                     "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
                     **{f"local{n}": 16 + n for n in range(8)}}
#: An RFC 5424 header field: printable US-ASCII, no space.
_HEADER_FIELD = re.compile(r"^[\x21-\x7e]+\Z")


@dataclass(frozen=True)
class SiemSettings:
    """Forwarding to a SIEM as syslog over TCP (site.toml [siem]; server/siem.py sends, docs/operations.md "SIEM").

    Off until ``host`` is set. RFC 5424 messages (or CEF in the message part) with octet-counting framing over TLS
    (RFC 5425), verified against ``ca_file`` (default: the system's CAs and the site CA, ``SITE/pki/ca.crt``),
    the collector's name checked against ``host``; ``cert_file``/``key_file`` present a client certificate (an
    integration's, ``doorkeep pki issue NAME --role integration``). ``tls = false`` sends in clear (a collector
    on the same host only). Paths are relative to the site directory. People travel by id unless
    ``include_names``; a card never beyond its last four characters.
    """

    # the connection
    host: str | None = None
    port: int = 6514
    tls: bool = True
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    timeout_s: float = 10.0
    # what is sent, and how it looks
    format: str = "rfc5424"
    send: tuple[str, ...] = SIEM_KINDS
    app_name: str = "doorkeep"
    facility: int = SYSLOG_FACILITIES["local0"]
    hostname: str | None = None
    include_names: bool = False
    # the queue: reconnecting, confirming, bounding
    retry_s: float = 1.0
    max_retry_s: float = 60.0
    confirm_s: float = 2.0
    max_queue: int = 10_000
    #: The file the table was read from: errors found at server start (an unusable key) name it too.
    file: str = "site.toml"

    @property
    def enabled(self) -> bool:
        return self.host is not None


def _siem_file(t: _Table, name: str, base: Path, what: str) -> Path | None:
    """A file [siem] names, relative to the site directory. Whether it exists and can be used is checked when
    the server starts (server/siem.py ``tls_context``, the same file/key/fix line), not here: the site is also
    read by ``doorkeep pki issue``, which writes the very certificate the table may name."""
    value = t.get(name, str, None)
    if value is None:
        return None
    if not value.strip():
        t.error(name, "is empty", f"point {name} at {what} (relative to the site directory), or remove {name}")
        return None
    return base / value


def _siem(t: _Table | None, base: Path) -> SiemSettings:
    d = SiemSettings()
    if t is None:
        return d
    host = t.get("host", str, fix='write the collector\'s host name or address, e.g. host = "siem.example.com", '
                 "or remove the [siem] table to send nothing")
    if host is not None and not _HEADER_FIELD.match(host.strip()):
        t.error("host", f"{host!r} is not a host name", 'write a name or address without spaces, e.g. "siem.example.com"')
        host = None
    tls = bool(t.get("tls", bool, True, fix="write `tls = true` or `false` (no quotes)"))
    default_port = 6514 if tls else 514
    port = t.get("port", int, default_port)
    if port is not None and not 1 <= port <= 65535:
        t.error("port", f"must be 1 to 65535, got {port}", f"set port to the collector's TCP port ({default_port} is "
                "syslog over TLS)" if tls else f"set port to the collector's TCP port (often {default_port})")
        port = None
    ca = _siem_file(t, "ca_file", base, "the PEM file of the CA that signed the collector's certificate")
    cert = _siem_file(t, "cert_file", base, "a client certificate (`doorkeep pki issue NAME --role integration`)")
    key = _siem_file(t, "key_file", base, "the private key issued with cert_file")
    if "cert_file" in t.data and "key_file" not in t.data:
        t.error("key_file", "is required with cert_file", "set key_file to the NAME.key issued with the certificate")
    if "key_file" in t.data and "cert_file" not in t.data:
        t.error("cert_file", "is required with key_file", "set cert_file to the NAME.crt issued with the key")
    if not tls:
        for name in ("ca_file", "cert_file", "key_file"):
            if name in t.data:
                t.error(name, "is set but tls is false: nothing would be verified or presented",
                        f"set tls = true, or remove {name}")
    fmt = t.choice("format", SIEM_FORMATS, d.format) or d.format
    send = t.get("send", list, list(d.send))
    if send is not None:
        bad = [k for k in send if k not in SIEM_KINDS]
        if bad or not send or len(set(send)) != len(send):
            t.error("send", f"{send!r} is not a list of distinct kinds" if not bad else
                    f"unknown kind(s) {', '.join(map(repr, bad))}",
                    f"list one or more of {', '.join(SIEM_KINDS)}, e.g. send = [\"access\", \"alarms\"], or remove "
                    "the [siem] table to send nothing")
            send = None
    app_name = t.get("app_name", str, d.app_name)
    if app_name is not None and not (_HEADER_FIELD.match(app_name) and len(app_name) <= 48):
        t.error("app_name", f"{app_name!r} is not an RFC 5424 APP-NAME", "use 1 to 48 printable ASCII characters "
                'without spaces, e.g. "doorkeep"')
        app_name = None
    hostname = t.get("hostname", str, None)
    if hostname is not None and not (_HEADER_FIELD.match(hostname) and len(hostname) <= 255):
        t.error("hostname", f"{hostname!r} is not an RFC 5424 HOSTNAME", "use the server's name, 1 to 255 printable "
                "ASCII characters without spaces, or remove hostname for the machine's own")
        hostname = None
    facility = t.get("facility", (str, int), "local0")
    code = SYSLOG_FACILITIES.get(facility) if isinstance(facility, str) else facility
    if facility is not None and (code is None or not 0 <= code <= 23):
        t.error("facility", f"unknown facility {facility!r}", f"use a number 0-23 or one of: "
                f"{', '.join(SYSLOG_FACILITIES)}")
        code = None
    max_queue = t.get("max_queue", int, d.max_queue)
    if max_queue is not None and not 100 <= max_queue <= 10_000_000:
        t.error("max_queue", f"must be 100 to 10000000 messages, got {max_queue}",
                f"set max_queue, or remove it for {d.max_queue}")
        max_queue = None
    retry_s = t.positive("retry_s", d.retry_s, 3600.0)
    max_retry_s = t.positive("max_retry_s", d.max_retry_s, 86400.0)
    if max_retry_s < retry_s:
        t.error("max_retry_s", f"is less than retry_s ({max_retry_s:g} < {retry_s:g})",
                "set max_retry_s to at least retry_s")
    out = SiemSettings(
        host=host.strip() if host else None, port=int(port or default_port), tls=tls, ca_file=ca, cert_file=cert,
        key_file=key, format=fmt, send=tuple(send or d.send), app_name=app_name or d.app_name,
        facility=d.facility if code is None else int(code), hostname=hostname,
        include_names=bool(t.get("include_names", bool, False, fix="write `include_names = true` or `false`")),
        max_queue=int(max_queue or d.max_queue), timeout_s=t.positive("timeout_s", d.timeout_s, 600.0),
        retry_s=retry_s, max_retry_s=max_retry_s, confirm_s=t.positive("confirm_s", d.confirm_s, 600.0), file=t.file)
    t.done()
    return out


def _load_siem(path: Path, errors: list[ConfigError], text: str | None = None) -> SiemSettings:
    """The [siem] table of site.toml (the file's own problems are reported by _load_site)."""
    data = _read_toml(path, [], text)
    return SiemSettings() if data is None else _siem(_Table(data, str(path), "", errors).sub("siem"), path.parent)


SMTP_SECURITY = ("starttls", "tls", "none")


@dataclass(frozen=True)
class SmtpSettings:
    """The site's SMTP relay for outbound mail (site.toml [smtp]; server/mail.py sends, docs/configuration.md).

    Off until ``host`` is set. The password is never written in site.toml (deployed to every edge too): it is
    read at server start from ``password_file`` (relative to the site directory, mode 0600) or from the
    environment variable ``password_env``. ``ca_file`` verifies a relay whose certificate the system does not
    trust (a site CA). A message is retried with exponential backoff from ``retry_s`` up to ``max_retry_s``
    and dead-lettered after ``max_attempts``; the queue lives in the store, so a restart loses nothing.
    """

    host: str | None = None
    port: int = 587
    security: str = "starttls"
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    from_addr: str = ""
    ca_file: Path | None = None
    timeout_s: float = 30.0
    max_attempts: int = 8
    retry_s: float = 30.0
    max_retry_s: float = 3600.0
    #: The file the table was read from: errors found at server start (the password) name it too.
    file: str = "site.toml"

    @property
    def enabled(self) -> bool:
        return self.host is not None


@dataclass(frozen=True)
class InvitationSettings:
    """What an invitation e-mail and a host notice say beyond the visit itself (site.toml [invitations])."""

    address: str = ""
    bring: str = "a photo ID, and this e-mail's visitor pass (on your phone or printed)"
    waiting_at: str = "reception"


_EMAIL = re.compile(r"^[^@\s<>]{1,64}@[^@\s<>]+\.[^@\s<>]{2,}$")
_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


def _smtp(t: _Table | None, base: Path) -> SmtpSettings:
    d = SmtpSettings()
    if t is None:
        return d
    host = t.get("host", str, None)
    if host is not None and not host.strip():
        t.error("host", "is empty", "write the relay's host name, or remove the [smtp] table to send no mail")
        host = None
    security = t.choice("security", SMTP_SECURITY, d.security) or d.security
    port = t.get("port", int, _DEFAULT_PORTS[security])
    if port is not None and not 1 <= port <= 65535:
        t.error("port", f"must be 1 to 65535, got {port}", f"set port to the relay's port (usually "
                f"{_DEFAULT_PORTS[security]} with security = \"{security}\")")
        port = None
    username = t.get("username", str, None) or None
    password_file = t.get("password_file", str, None)
    password_env = t.get("password_env", str, None)
    if password_file is not None and password_env is not None:
        t.error("password_file", "and password_env are both set", "name one place for the password")
    if username is not None and password_file is None and password_env is None:
        t.error("username", "is set but no password is", "set password_file (a file, mode 0600, beside site.toml) "
                "or password_env (an environment variable of the server)")
    if (password_file is not None or password_env is not None) and username is None:
        t.error("username", "is required with a password", "set username to the relay account's name")
    if password_env is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", password_env):
        t.error("password_env", f"{password_env!r} is not an environment variable name",
                "use letters, digits and '_' (e.g. DOORKEEP_SMTP_PASSWORD)")
    pw_path = None
    if password_file is not None:
        pw_path = base / password_file
        if not pw_path.is_file():
            t.error("password_file", f"{pw_path} does not exist", "write the relay password into that file "
                    "(chmod 600), or point password_file at the file that holds it")
    if security == "none" and username is not None:
        t.error("security", "is \"none\" but a username is set: the password would cross the network in clear",
                "use security = \"starttls\" or \"tls\"")
    from_addr = t.get("from", str, None)
    if host is not None and from_addr is None:
        t.error("from", "is required with host", 'set from = "Reception <reception@example.com>"')
    elif from_addr is not None:
        bare = from_addr.rsplit("<", 1)[-1].rstrip(">").strip()
        if not _EMAIL.match(bare) or any(c in from_addr for c in "\r\n"):
            t.error("from", f"{from_addr!r} is not an e-mail address", 'write it like "Reception <reception@example.com>"')
            from_addr = None
    ca = t.get("ca_file", str, None)
    ca_path = base / ca if ca is not None else None
    if ca_path is not None and not ca_path.is_file():
        t.error("ca_file", f"{ca_path} does not exist", "point ca_file at the PEM file of the CA that signed the "
                "relay's certificate, or remove it to use the system's trusted CAs")
    attempts = t.get("max_attempts", int, d.max_attempts)
    if attempts is not None and not 1 <= attempts <= 100:
        t.error("max_attempts", f"must be 1 to 100, got {attempts}", f"set max_attempts, or remove it for {d.max_attempts}")
        attempts = None
    retry_s = t.positive("retry_s", d.retry_s, 86400.0)
    max_retry_s = t.positive("max_retry_s", d.max_retry_s, 7 * 86400.0)
    if max_retry_s < retry_s:
        t.error("max_retry_s", f"is less than retry_s ({max_retry_s:g} < {retry_s:g})",
                "set max_retry_s to at least retry_s")
    out = SmtpSettings(host=host.strip() if host else None, port=int(port or _DEFAULT_PORTS[security]),
                       security=security, username=username, password_file=pw_path, password_env=password_env,
                       from_addr=from_addr or "", ca_file=ca_path, timeout_s=t.positive("timeout_s", d.timeout_s, 600.0),
                       max_attempts=int(attempts or d.max_attempts), retry_s=retry_s, max_retry_s=max_retry_s,
                       file=t.file)
    t.done()
    return out


def _invitations(t: _Table | None) -> InvitationSettings:
    d = InvitationSettings()
    if t is None:
        return d
    out = InvitationSettings(address=t.get("address", str, d.address) or "", bring=t.get("bring", str, d.bring) or d.bring,
                             waiting_at=t.get("waiting_at", str, d.waiting_at) or d.waiting_at)
    t.done()
    return out


def _load_smtp(path: Path, errors: list[ConfigError], text: str | None = None) -> tuple[SmtpSettings, InvitationSettings]:
    """The [smtp] and [invitations] tables of site.toml (the file's own problems are reported by _load_site)."""
    data = _read_toml(path, [], text)
    if data is None:
        return SmtpSettings(), InvitationSettings()
    root = _Table(data, str(path), "", errors)
    return _smtp(root.sub("smtp"), path.parent), _invitations(root.sub("invitations"))


#: Names an integration's certificate may not have (doorkeep.pki.RESERVED and the CA's own files): repeated here
#: because doorkeep.pki imports this module.
_RESERVED_IDENTITIES = ("server", "broker", "operator", "ca")


@dataclass(frozen=True)
class HomeAssistantSettings:
    """Home Assistant MQTT discovery (site.toml [home_assistant]; server/home_assistant.py, docs/operations.md).

    Off while the table is absent. With it, the server publishes retained discovery configs under
    ``discovery_prefix`` (HA's ``<prefix>/<component>/<node_id>/<object_id>/config``) whose entities read the
    edges' own retained state and availability; ``enabled = false`` keeps the table but withdraws every entity
    (empty retained configs). ``integration`` is the certificate name Home Assistant connects with
    (``doorkeep pki issue NAME --role integration``): the generated broker ACL lets it read the prefix and, only
    with ``unlock``, publish the lock command topics, which the server validates, audits and signs. The
    topics are methods here so the server and the ACL (doorkeep/pki.py) cannot disagree on them.
    """

    configured: bool = False
    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    node_id: str = ""
    integration: str = "home-assistant"
    unlock: bool = False
    #: The doors Home Assistant may unlock: a tuple of door ids, or None for every door ("all").
    unlock_doors: tuple[str, ...] | None = ()

    def may_unlock(self, door: str) -> bool:
        """Whether a command from Home Assistant may unlock (or relock) ``door``."""
        return self.enabled and self.unlock and (self.unlock_doors is None or door in self.unlock_doors)

    def config_topic(self, component: str, object_id: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node_id}/{object_id}/config"

    def config_filter(self) -> str:
        """Every discovery config of this node (any component)."""
        return f"{self.discovery_prefix}/+/{self.node_id}/+/config"

    def node_filter(self) -> str:
        """Everything the server writes or reads under the prefix for this node (its ACL line)."""
        return f"{self.discovery_prefix}/+/{self.node_id}/#"

    def command_topic(self, door: str) -> str:
        """Where Home Assistant's lock entity of ``door`` publishes ``LOCK`` / ``UNLOCK``."""
        return f"{self.discovery_prefix}/lock/{self.node_id}/{door}/set"

    def command_filter(self) -> str:
        return f"{self.discovery_prefix}/lock/{self.node_id}/+/set"

    def alarms_topic(self) -> str:
        """The server's retained summary of the open alarms (the alarm sensors' state)."""
        return f"{self.discovery_prefix}/sensor/{self.node_id}/alarms/state"

    def status_topic(self) -> str:
        """Home Assistant's own birth and last-will topic (``online`` / ``offline``)."""
        return f"{self.discovery_prefix}/status"


def _unlock_doors(t: _Table, raw: Any, site: Site) -> tuple[str, ...] | None:
    """An ``unlock_doors`` value ([home_assistant], [integrations.NAME]): None for ``"all"``, else the site's doors
    it lists (each other value reported with its fix)."""
    if raw == "all":
        return None
    if isinstance(raw, str):
        t.error("unlock_doors", f"unknown value {raw!r}", 'write "all" or a list of door ids, e.g. ["lobby_in"]')
        return ()
    if not isinstance(raw, list):
        return ()
    unknown = [x for x in raw if not isinstance(x, str) or x not in site.doors]
    if unknown:
        t.error("unlock_doors", f"{', '.join(map(repr, unknown))} is not a door of the site",
                f"use door ids: {', '.join(site.doors)}")
    return tuple(x for x in raw if isinstance(x, str) and x in site.doors)


def _home_assistant(t: _Table | None, site: Site) -> HomeAssistantSettings:
    d = HomeAssistantSettings()
    if t is None:
        return d
    enabled = t.get("enabled", bool, True, fix="write `enabled = true` or `false` (no quotes)")
    prefix = t.get("discovery_prefix", str, d.discovery_prefix)
    if prefix is not None:
        parts = prefix.split("/")
        if not all(SEGMENT.match(p) for p in parts) or len(parts) > 4 or len(prefix) > 128:
            t.error("discovery_prefix", f"{prefix!r} is not a topic prefix", "use one to four levels of letters, "
                    "digits, '_' and '-' separated by '/', e.g. \"homeassistant\" (no wildcard, no leading '/')")
            prefix = None
        elif parts[0] == "doorkeep":
            t.error("discovery_prefix", f"{prefix!r} is inside doorkeep's own topics",
                    "use Home Assistant's prefix, \"homeassistant\" by default")
            prefix = None
    node = t.ident("node_id", site.id)
    integration = t.ident("integration", d.integration)
    if integration is not None and (integration in _RESERVED_IDENTITIES or len(integration) > 64):
        t.error("integration", f"{integration!r} cannot be an integration's certificate name",
                "name the certificate Home Assistant connects with, e.g. \"home-assistant\" "
                "(`doorkeep pki issue home-assistant --role integration`)")
        integration = None
    unlock = bool(t.get("unlock", bool, False, fix="write `unlock = true` or `false` (no quotes)"))
    raw = t.get("unlock_doors", (list, str), None)
    doors = _unlock_doors(t, raw, site)
    if unlock and (raw is None or raw == []):
        t.error("unlock_doors", "is required with unlock = true",
                'list the doors Home Assistant may unlock, e.g. ["lobby_in"], or write "all"')
    if raw is not None and not unlock:
        t.error("unlock_doors", "is set but unlock is not true", "set unlock = true, or remove unlock_doors")
    t.done()
    return HomeAssistantSettings(configured=True, enabled=bool(enabled),
                                 discovery_prefix=prefix or d.discovery_prefix, node_id=node or site.id,
                                 integration=integration or d.integration, unlock=unlock, unlock_doors=doors)


def _load_home_assistant(path: Path, errors: list[ConfigError], site: Site,
                         text: str | None = None) -> HomeAssistantSettings:
    """The [home_assistant] table of site.toml (the file's own problems are reported by _load_site)."""
    data = _read_toml(path, [], text)
    if data is None:
        return HomeAssistantSettings()
    return _home_assistant(_Table(data, str(path), "", errors).sub("home_assistant"), site)


@dataclass(frozen=True)
class IntegrationSettings:
    """What one integration may ask of the server's integration request API (site.toml [integrations.NAME];
    server/integration_api.py, docs/operations.md "The integration request API"). ``NAME`` is the integration's
    certificate name. Every live, non-read-only integration may ask ``status``; ``unlock`` only for
    ``unlock_doors``: a tuple of door ids, or None for every door (``"all"``). Absent: no door (the default)."""

    name: str
    unlock_doors: tuple[str, ...] | None = ()

    def may_unlock(self, door: str) -> bool:
        return self.unlock_doors is None or door in self.unlock_doors


def _integrations(root: _Table, site: Site) -> dict[str, IntegrationSettings]:
    out: dict[str, IntegrationSettings] = {}
    for name, t in root.children("integrations"):
        if name in _RESERVED_IDENTITIES or len(name) > 64:
            t.error("", f"{name!r} cannot be an integration's certificate name",
                    "use the name its certificate was issued with (`doorkeep pki issue NAME --role integration`)")
            continue
        doors = _unlock_doors(t, t.get("unlock_doors", (list, str), []), site)
        t.done()
        out[name] = IntegrationSettings(name, doors)
    return out


def _load_integrations(path: Path, errors: list[ConfigError], site: Site,
                       text: str | None = None) -> dict[str, IntegrationSettings]:
    """The [integrations.NAME] tables of site.toml (the file's own problems are reported by _load_site)."""
    data = _read_toml(path, [], text)
    if data is None:
        return {}
    return _integrations(_Table(data, str(path), "", errors), site)


@dataclass(frozen=True)
class IntrusionSettings:
    """Thresholds of the server's intrusion signals (site.toml [intrusion]; server/intrusion.py applies them).

    Defaults chosen so that an honest bad day (a few mistyped PINs, a visitor trying a wrong card twice) stays
    quiet while a scripted attack is caught within its first minute: five unknown or inactive cards at one
    reader in a minute, one card refused at four doors in ten minutes, five wrong PINs at one keypad in five
    minutes whatever the cards, a door forced within a minute of a tamper at it.
    """

    enabled: bool = True
    probe_count: int = 5
    probe_window_s: float = 60.0
    probe_doors: int = 4
    probe_doors_window_s: float = 600.0
    pin_guess_count: int = 5
    pin_guess_window_s: float = 300.0
    attack_window_s: float = 60.0
    #: The edge's OSDP readers (edge/osdp/cp.py): reader_security after this many failed Secure Channel
    #: handshakes, or clear (unsecured) NAKs from a reader that must use Secure Channel, within the window.
    reader_handshake_failures: int = ReaderSignals.handshake_failures
    reader_clear_naks: int = ReaderSignals.clear_naks
    reader_window_s: float = ReaderSignals.window_s

    def reader_signals(self) -> ReaderSignals:
        """The edge's part of these settings, as the signed policy carries it to the edges."""
        return ReaderSignals(self.reader_handshake_failures, self.reader_clear_naks, self.reader_window_s)


#: Allowed ranges of the [intrusion] thresholds: a count of 1 would alarm on every mistyped card; a window
#: over a day would keep an honest person's old mistakes counting against them.
INTRUSION_COUNT_RANGE = (2, 1000)
INTRUSION_WINDOW_RANGE = (1.0, 86400.0)


def _intrusion(t: _Table | None) -> IntrusionSettings:
    d = IntrusionSettings()
    if t is None:
        return d

    def count(name: str, lo: int = INTRUSION_COUNT_RANGE[0]) -> int:
        default = getattr(d, name)
        value = t.get(name, int, default)
        hi = INTRUSION_COUNT_RANGE[1]
        if value is not None and not lo <= value <= hi:
            t.error(name, f"must be {lo} to {hi}, got {value}",
                    f"set {name} to a whole number from {lo} to {hi}, or remove it for {default}")
            value = None
        return default if value is None else int(value)

    def window(name: str) -> float:
        default = getattr(d, name)
        value = t.get(name, float, default)
        lo, hi = INTRUSION_WINDOW_RANGE
        if value is not None and not lo <= value <= hi:
            t.error(name, f"must be {lo:g} to {hi:g} seconds, got {value:g}",
                    f"set {name} to a number of seconds from {lo:g} to {hi:g}, or remove it for {default:g}")
            value = None
        return default if value is None else float(value)

    enabled = t.get("enabled", bool, d.enabled)
    out = IntrusionSettings(
        enabled=d.enabled if enabled is None else bool(enabled),
        probe_count=count("probe_count"),
        probe_window_s=window("probe_window_s"),
        probe_doors=count("probe_doors"),
        probe_doors_window_s=window("probe_doors_window_s"),
        pin_guess_count=count("pin_guess_count"),
        pin_guess_window_s=window("pin_guess_window_s"),
        attack_window_s=window("attack_window_s"),
        # One failed handshake or clear NAK may already be worth a report on a bus nobody else can reach.
        reader_handshake_failures=count("reader_handshake_failures", lo=1),
        reader_clear_naks=count("reader_clear_naks", lo=1),
        reader_window_s=window("reader_window_s"),
    )
    t.done()
    return out


def load_intrusion_settings(site_file: Path | str) -> IntrusionSettings:
    """The [intrusion] table of a site file, for the edge (its readers' thresholds); raises ConfigErrors."""
    errors: list[ConfigError] = []
    path = Path(site_file)
    data = _read_toml(path, errors)
    if data is None:
        raise ConfigErrors(errors)
    out = _intrusion(_Table(data, str(path), "", errors).sub("intrusion"))
    if errors:
        raise ConfigErrors(errors)
    return out


def _load_intrusion(path: Path, errors: list[ConfigError], text: str | None = None) -> IntrusionSettings:
    """The [intrusion] table of site.toml (the file's own problems are reported by _load_site)."""
    data = _read_toml(path, [], text)
    if data is None:
        return IntrusionSettings()
    return _intrusion(_Table(data, str(path), "", errors).sub("intrusion"))


@dataclass(frozen=True)
class DeskSettings:
    """The security desk's site settings (site.toml [desk]; server/web reads them, docs/desk.md).

    ``require_totp_for_admins``: an admin without a second factor is sent to enrol one before using the desk.
    Off by default so a new site can be set up; ``doorkeep doctor`` reports admins without 2FA when it is on.
    """

    require_totp_for_admins: bool = False


def load_desk_settings(directory: Path | str) -> DeskSettings:
    """The [desk] table of a site directory's site.toml (defaults when absent); raises ConfigErrors."""
    path = Path(directory) / "site.toml"
    errors: list[ConfigError] = []
    data = _read_toml(path, errors) if path.exists() else None
    if errors:
        raise ConfigErrors(errors)
    t = _Table(data, str(path), "", errors).sub("desk") if data is not None else None
    if t is None:
        return DeskSettings()
    value = t.get("require_totp_for_admins", bool, False)
    t.done()
    if errors:
        raise ConfigErrors(errors)
    return DeskSettings(require_totp_for_admins=bool(value))


@dataclass(frozen=True)
class CardSeed:
    """A card as written in people.toml; hashed with the credential key before use.

    ``pin`` is the holder's clear PIN (people.toml ``pin``), typed with this
    card at PIN doors. It lives only here, on the server, until
    :func:`with_people` turns it into ``Person.pin_hash``.
    """

    person: str
    format: str
    number: str
    state: CredentialState
    pin: str | None = field(default=None, repr=False)
    #: A card written as ``doorkeep site export`` writes it: its keyed hash and last four characters (``number``
    #: is then empty). The hash is only meaningful under the credential key it was made with.
    hash: str | None = None
    last4: str | None = None

    def hashed(self, key: bytes) -> str:
        """The card's keyed hash under ``key`` (as given, for a card written as a hash)."""
        return self.hash if self.hash is not None else card_hash(key, self.format, self.number)

    def shown(self) -> str:
        """The last four characters, the only part of a number the desk shows."""
        return self.last4 if self.last4 is not None else last4(self.number)


def _epoch(value: Any, t: _Table, name: str, tz: str | None, *, end_of_day: bool) -> float | None:
    """A date means the whole local day in the site's time zone: valid_from at its start, valid_until at its end."""
    from datetime import datetime, timedelta

    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            t.error(name, "has no time zone", "write it with an offset, e.g. 2026-12-01T09:00:00Z")
            return None
        return value.timestamp()
    if isinstance(value, date):
        try:
            zone = ZoneInfo(tz or "UTC")
        except (ZoneInfoNotFoundError, ValueError, OSError):
            zone = ZoneInfo("UTC")  # the site's bad time zone is reported where it is written
        try:
            day = value + timedelta(days=1) if end_of_day else value
        except OverflowError:
            return None  # through 9999-12-31: no end at all
        return datetime(day.year, day.month, day.day, tzinfo=zone).timestamp()
    t.error(name, f"must be a date or date-time, got {value!r}", "write e.g. 2026-12-01 or 2026-12-01T09:00:00Z")
    return None


def _load_people(path: Path, site: Site | None,
                 errors: list[ConfigError]) -> tuple[dict[str, Person], list[CardSeed], list[CardSeed]]:
    """People, their cards, and the visitor badge pool (cards the desk hands out at check-in)."""
    data = _read_toml(path, errors)
    if data is None:
        return {}, [], []
    root = _Table(data, str(path), "", errors)
    people: dict[str, Person] = {}
    cards: list[CardSeed] = []
    seen: dict[tuple[str, str], str] = {}
    hosts: dict[str, str] = {}
    tz = site.timezone if site is not None else None
    for pid, t in root.children("people"):
        levels = t.get("access_levels", list, []) or []
        if any(not isinstance(lvl, str) for lvl in levels):
            t.error("access_levels", "must be a list of access level names", 'write e.g. access_levels = ["staff"]')
            levels = [lvl for lvl in levels if isinstance(lvl, str)]
        for lvl in levels:
            if site is not None and lvl not in site.access_levels:
                t.error("access_levels", f"access level {lvl!r} is not defined in the site file",
                        f"use one of: {', '.join(site.access_levels)}")
        roles = t.get("roles", list, []) or []
        clearance = t.get("clearance", int, 0) or 0
        if not 0 <= clearance <= 9:
            t.error("clearance", f"must be 0-9, got {clearance}", "use a clearance from 0 to 9")
        kind = PersonKind(t.choice("kind", tuple(k.value for k in PersonKind), "employee") or "employee")
        visitor = kind is PersonKind.VISITOR
        pin = _person_pin(t)
        stored_pin = t.get("pin_hash", str, None)
        if stored_pin is not None and pin is not None:
            t.error("pin_hash", "a person has a pin or a pin_hash, not both", "keep one of the two")
            stored_pin = None
        elif stored_pin is not None and not KEYED_HASH.match(stored_pin):
            t.error("pin_hash", "is not a PIN hash", HASH_FIX)
            stored_pin = None
        host = t.ident("host", None)
        allowed = t.get("allowed_areas", list, None)
        escort_required = t.get("escort_required", bool, None)
        if not visitor:
            for key, value in (("host", host), ("allowed_areas", allowed), ("escort_required", escort_required)):
                if value is not None:
                    t.error(key, "only applies to visitors", 'set kind = "visitor", or remove the key')
        elif levels:
            t.error("access_levels", "visitors are not given access levels",
                    "list the areas the visitor may enter in allowed_areas instead")
        for area in allowed or []:
            if not isinstance(area, str) or (site is not None and area not in site.areas):
                t.error("allowed_areas", f"area {area!r} is not defined in the site file",
                        f"use one of: {', '.join(site.areas) if site else '(the areas of site.toml)'}")
        if host is not None:
            hosts[pid] = host
        person = Person(
            id=pid,
            name=t.get("name", str, fix='add name = "Full Name"') or pid,
            kind=kind,
            clearance=clearance,
            access_levels=tuple(str(x) for x in levels),
            roles=frozenset(str(r) for r in roles),
            state=PersonState(t.choice("state", tuple(s.value for s in PersonState), "active") or "active"),
            valid_from=_epoch(t.get("valid_from", object, None), t, "valid_from", tz, end_of_day=False),
            valid_until=_epoch(t.get("valid_until", object, None), t, "valid_until", tz, end_of_day=True),
            host=host if visitor else None,
            company=t.get("company", str, None),
            allowed_areas=tuple(str(a) for a in allowed or []) if visitor else (),
            escort_required=True if escort_required is None else bool(escort_required),
            pin_hash=stored_pin,
        )
        n_cards = len(cards)
        for i, item in enumerate(t.get("cards", list, []) or []):
            c = _Table(item, str(path), f"{t.key('cards')}[{i}]", errors)
            fmt = c.choice("format", CARD_FORMATS)
            read = _card_fields(c, fmt)
            state = c.choice("state", tuple(s.value for s in CredentialState), "active")
            c.done()
            if fmt and read is not None:
                norm, number, hashed, shown = read
                if norm in seen:
                    c.error("hash" if hashed else "number", f"card already belongs to {seen[norm]!r}",
                            "give each card to one person only")
                    continue
                seen[norm] = pid
                cards.append(CardSeed(pid, fmt, number, CredentialState(state or "active"), pin, hashed, shown))
        if pin is not None and len(cards) == n_cards:
            t.error("pin", "a PIN is typed with a card, and this person has none",
                    "add the person's card to `cards`, or remove the PIN")
        t.done()
        people[pid] = person
    for pid, host in hosts.items():
        host_person = people.get(host)
        if host_person is None or host_person.kind is PersonKind.VISITOR:
            hosts_of = [p for p, q in people.items() if q.kind is not PersonKind.VISITOR]
            problem = f"host {host!r} is not a person in this file" if host_person is None else \
                f"host {host!r} is a visitor"
            errors.append(ConfigError(str(path), f"people.{pid}.host", problem,
                                      f"name the employee the visitor comes to see: one of {', '.join(hosts_of) or '(none)'}"))
    pool: list[CardSeed] = []
    pool_table = root.sub("visitor_pool")
    if pool_table is not None:
        for i, item in enumerate(pool_table.get("cards", list, []) or []):
            c = _Table(item, str(path), f"{pool_table.key('cards')}[{i}]", errors)
            fmt = c.choice("format", CARD_FORMATS)
            read = _card_fields(c, fmt)
            c.done()
            if fmt and read is not None:
                norm, number, hashed, shown = read
                if norm in seen:
                    owner = seen[norm]
                    c.error("hash" if hashed else "number",
                            f"card already belongs to {owner!r}" if owner else "card is in the pool twice",
                            "a pool badge belongs to no one until check-in")
                    continue
                seen[norm] = ""
                pool.append(CardSeed("", fmt, number, CredentialState.ACTIVE, None, hashed, shown))
        pool_table.done()
    root.done()
    return people, cards, pool


#: A card hash or PIN hash as ``doorkeep site export`` writes it: HMAC-SHA256 in lower-case hex.
KEYED_HASH = re.compile(r"^[0-9a-f]{64}\Z")
#: The last four characters of a card number as the desk shows them (Wiegand numbers keep their ':').
LAST4 = re.compile(r"^[0-9A-Za-z:]{1,4}\Z")
HASH_FIX = ("write it exactly as `doorkeep site export` wrote it (64 lower-case hex digits) for a site with the "
            "same credential key (keys/credential.key), or give the clear value instead")


def _card_fields(c: _Table, fmt: str | None) -> tuple[tuple[str, ...], str, str | None, str | None] | None:
    """A card table's ``number``, or its keyed ``hash`` and ``last4`` (what ``doorkeep site export`` writes):
    ``(identity for the duplicate check, number or "", hash or None, last4 or None)``; None when unusable (the
    error is reported)."""
    if "hash" in c.data or "last4" in c.data:
        hashed = c.get("hash", str, fix=f"add hash = \"...\": {HASH_FIX}")
        shown = c.get("last4", str, fix='add last4 = "B2C3", the last four characters of the card number')
        if "number" in c.data:
            c.used.add("number")
            c.error("number", "a card is written with its number or with its hash and last4, not both",
                    "keep one of the two")
            return None
        if hashed is not None and not KEYED_HASH.match(hashed):
            c.error("hash", "is not a card hash", HASH_FIX)
            return None
        if shown is not None and not LAST4.match(shown):
            c.error("last4", f"{shown!r} is not the last four characters of a card number",
                    'write 1 to 4 letters, digits or ":" (e.g. last4 = "B2C3")')
            return None
        if hashed is None or shown is None:
            return None
        return ("hash", hashed), "", hashed, shown.upper()
    number = c.get("number", str, fix='add number = "0F00A1B2C3" (the card number as the reader sends it), or '
                                      'hash and last4 as `doorkeep site export` writes them')
    if number is None:
        return None
    if not number.strip():
        c.error("number", "is empty", "write the card number as the reader sends it")
        return None
    if fmt == "em4100" and not re.match(r"^[0-9A-Fa-f]{10}$", number):
        c.error("number", f"{number!r} is not 10 hex digits", "write EM4100 numbers as the reader sends them, e.g. 0F00A1B2C3")
        return None
    if fmt in _CARD_NUMBER_RULES and fmt != "em4100" and not re.match(_CARD_NUMBER_RULES[fmt][0], number):
        c.error("number", f"{number!r} is not a {fmt} card number", _CARD_NUMBER_RULES[fmt][1])
        return None
    if fmt in card_formats.WIEGAND_CREDENTIALS and fmt not in _CARD_NUMBER_RULES:
        problem = card_formats.number_problem(fmt, number)
        if problem is not None:
            c.error("number", f"{number!r} is not a {fmt} card number: {problem}",
                    "write h10302 cards as CARD in decimal (e.g. 123456789) and wiegand_raw cards as "
                    "BITS:PAYLOAD in decimal (e.g. 26:789012), as the edge logs them")
            return None
    if fmt is None:
        return None
    return (fmt, normalise(fmt, number)), number, None, None


def _person_pin(t: _Table) -> str | None:
    """A PIN as digits in a string: an integer would lose its leading zeros."""
    if "pin" in t.data and isinstance(t.data["pin"], int) and not isinstance(t.data["pin"], bool):
        t.used.add("pin")
        t.error("pin", "must be a string of digits", f'quote it, e.g. pin = "{t.data["pin"]}"')
        return None
    pin = t.get("pin", str, None)
    if pin is not None and not re.match(r"^[0-9]{4,8}\Z", pin):
        t.error("pin", "must be 4 to 8 digits", 'write it as a quoted string of digits, e.g. pin = "0417"')
        return None
    return pin


def load_site_file(path: Path | str, *, text: str | None = None) -> Site:
    """One site.toml (or ``text`` standing for it) on its own, checked as ``doorkeep config check`` checks it;
    raises ConfigErrors. What a people.toml is checked against (server/people.py)."""
    errors: list[ConfigError] = []
    site = _load_site(Path(path), errors, text)
    if errors or site is None:
        raise ConfigErrors(errors)
    return site


def load_people_file(path: Path | str, site: Site) -> tuple[dict[str, Person], list[CardSeed], list[CardSeed]]:
    """A people.toml checked against ``site`` with the rules and messages of ``doorkeep config check``:
    ``(people, cards, visitor pool)``; raises ConfigErrors (``doorkeep site import``, server/people.py)."""
    errors: list[ConfigError] = []
    out = _load_people(Path(path), site, errors)
    if errors:
        raise ConfigErrors(errors)
    return out


def with_people(site: Site, people: dict[str, Person], cards: list[CardSeed], key: bytes) -> Site:
    """The site with its people and their cards and PINs, hashed under the credential key."""
    creds = {}
    people = dict(people)
    for c in cards:
        h = c.hashed(key)
        creds[h] = Credential(h, c.shown(), c.format, c.person, c.state)
        if c.pin is not None and c.person in people:
            people[c.person] = replace(people[c.person], pin_hash=pin_hash(key, c.pin))
    return replace(site, people=people, credentials=creds)


# ------------------------------------------------------------------- device


@dataclass(frozen=True)
class ReaderConfig:
    url: str
    protocol: str
    baudrate: int = 9600
    repeat_ignore_s: float = 1.0
    silence_timeout_s: float | None = None  # offline after this long without a byte (readers that send keep-alives)
    # OSDP only (protocol = "osdp"; docs/readers.md)
    address: int = 0
    poll_ms: int = 100
    scbk_file: Path | None = None
    secure_channel: bool = True
    # Wiegand only (protocol = "wiegand"; docs/readers.md): the two data lines, and the gap that ends a frame
    d0_pin: int | None = None
    d1_pin: int | None = None
    frame_timeout_ms: int = 25
    # Wiegand and OSDP: the card layout chosen per frame length, ((bits, name), ...); others keep their default
    wiegand_formats: card_formats.Choice = ()


@dataclass(frozen=True)
class LockConfig:
    pin: int
    active_high: bool = True
    fail: str = "secure"


@dataclass(frozen=True)
class ContactConfig:
    pin: int
    open_level: str = "high"


@dataclass(frozen=True)
class RexConfig:
    pin: int
    active_low: bool = True


@dataclass(frozen=True)
class PassageConfig:
    """A turnstile's passage sensor for this door record's direction: one pulse per person through."""

    pin: int
    active_low: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the edge's local HTTP listener for ``/metrics`` (Prometheus) and ``/healthz``, for the Pi's own
    monitoring (edge/metrics.py, docs/operations.md). Off without the table."""

    port: int
    host: str = "127.0.0.1"
    broker_grace_s: float = 60.0
    """How long the broker may stay unreachable before ``/healthz`` answers 503 (reconnects back off to 10 s)."""


@dataclass(frozen=True)
class EmergencyConfig:
    """The device's emergency release input: a normally closed contact from the fire alarm panel (or a break-glass
    unit) that opens to release. Wired like the tamper loop, so a cut wire releases: fail safe for people."""

    pin: int
    active_low: bool = True
    """True: the closed contact goes to ground (pin pulled up), so high means release; False: contact to 3V3."""


@dataclass(frozen=True)
class TamperConfig:
    """The enclosure's tamper loop (normally closed while the cover is on)."""

    pin: int
    active_low: bool = True
    """True: the intact loop goes to ground (pin pulled up), so high means tampered; False: loop to 3V3."""


@dataclass(frozen=True)
class SounderConfig:
    """The door's local sounder (pre-alarm and alarms)."""

    pin: int
    active_high: bool = True


@dataclass(frozen=True)
class FloorHardware:
    """One floor of a lift cab: the relay that enables its button and, if wired, the button's own input."""

    area: str
    relay: int
    relay_active_high: bool = True
    button: int | None = None
    button_active_low: bool = True


@dataclass(frozen=True)
class DoorHardware:
    door: str
    reader: ReaderConfig
    lock: LockConfig | None  # None only at a lift: its floors' relays take the lock's place
    contact: ContactConfig | None = None
    rex: RexConfig | None = None
    camera: str | None = None
    tamper: TamperConfig | None = None
    sounder: SounderConfig | None = None
    passage: PassageConfig | None = None  # a turnstile's passage sensor (site: kind = "turnstile")
    floors: tuple[FloorHardware, ...] = ()  # a lift cab's floors (site: kind = "lift")
    dispatch: bool = False  # a lift in destination-dispatch mode: a floor chosen before the badge is asked for


@dataclass(frozen=True)
class CameraConfig:
    id: str
    source: str
    fps: float = 10.0
    buffer_seconds: float = 2.0
    jpeg_quality: int = 85
    # Polygons of (x, y) fractions of the frame width/height (0.0-1.0), blacked out before a snapshot is encoded.
    privacy_masks: tuple[tuple[tuple[float, float], ...], ...] = ()
    # Visitor passes read off the frames (edge/qr.py): on/off, scans a second, the region looked at as
    # (x0, y0, x1, y1) fractions of the frame, and the door a pass shown here asks for.
    qr: bool = False
    qr_fps: float = 5.0
    qr_roi: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    qr_door: str | None = None


@dataclass(frozen=True)
class BrokerConfig:
    """Where the MQTT broker is; ``mqtts://`` means mutual TLS with the three files (docs/security.md)."""

    url: str
    keepalive: int = 30
    ca_file: Path | None = None     # the site CA that signed the broker's certificate
    cert_file: Path | None = None   # this client's certificate (CN = device id or `server`)
    key_file: Path | None = None    # its private key (mode 0600)
    # Plain mqtt:// is refused unless this is set (device file `allow_plain_mqtt`, `--allow-plain-mqtt`, or
    # the site runner for the embedded broker it starts itself); when set, the client logs a WARNING.
    allow_plain: bool = False

    # ``url`` holds one broker URL, or several separated by commas (the same text as `--broker A,B` and
    # DOORKEEP_BROKER, so every path that carries one URL carries the list unchanged): clients try them in
    # order and move to the next when one fails (docs/scale.md, "Several broker addresses").

    @property
    def urls(self) -> tuple[str, ...]:
        """Every broker address, in the order tried; ConfigError naming the fix if the list is not valid."""
        urls, problem = split_broker_urls(self.url)
        if problem is not None:
            raise ConfigError(self.url, "broker.url", problem[0], problem[1])
        return urls

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """(host, port) of every address in :attr:`urls`, in order."""
        return tuple((_url_host(u), _url_port(u)) for u in self.urls)

    @property
    def tls(self) -> bool:
        return self.url.split("://", 1)[0] in TLS_SCHEMES

    @property
    def host(self) -> str:
        """The first address's host (several addresses: see :attr:`addresses`)."""
        return _url_host(self.url.split(",", 1)[0].strip())

    @property
    def port(self) -> int:
        return _url_port(self.url.split(",", 1)[0].strip())


_BROKER_URL = re.compile(r"^(\w+)://([^:/,\s]+)(?::(\d+))?/?$")
_BROKER_URL_FIX = 'write it like "mqtts://broker.lan:8883" or "mqtt://127.0.0.1:1883"'


def _url_host(url: str) -> str:
    return url.split("://", 1)[1].rstrip("/").rsplit(":", 1)[0]


def _url_port(url: str) -> int:
    rest = url.split("://", 1)[1].rstrip("/")
    return int(rest.rsplit(":", 1)[1]) if ":" in rest else (8883 if url.split("://", 1)[0] in TLS_SCHEMES else 1883)


def split_broker_urls(text: str | list[Any]) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    """One broker URL, several separated by commas, or a TOML list of them -> (the URLs, None), or
    ((), (problem, fix)). All must share TLS or plain (one set of certificate files serves every address; a
    plain fallback would undo the TLS of the others), none may repeat, ports must be 1-65535."""
    items = [str(u).strip() for u in text] if isinstance(text, list) else [u.strip() for u in str(text).split(",")]
    if isinstance(text, list) and not all(isinstance(u, str) for u in text):
        return (), ("a list of broker URLs must hold only strings", 'write it like ["mqtts://a.lan:8883", "mqtts://b.lan:8883"]')
    if not items or (len(items) == 1 and not items[0]):
        return (), ("no broker URL given", _BROKER_URL_FIX)
    for url in items:
        m = _BROKER_URL.match(url)
        if not m or m.group(1) not in BROKER_SCHEMES:
            return (), (f"{url!r} is not a broker URL", _BROKER_URL_FIX)
        if m.group(3) is not None and not 1 <= int(m.group(3)) <= 65535:
            return (), (f"{url!r}: port {m.group(3)} is out of range", "use a port from 1 to 65535 (mqtts:// 8883)")
    if len({u.split("://", 1)[0] in TLS_SCHEMES for u in items}) > 1:
        return (), ("mixes mqtts:// and plain mqtt:// addresses",
                    "give every address the same scheme, mqtts:// (one set of certificate files serves them all)")
    seen: set[tuple[str, int]] = set()
    for url in items:
        address = (_url_host(url).lower(), _url_port(url))
        if address in seen:
            return (), (f"{url!r} is listed twice", "list each broker address once")
        seen.add(address)
    return tuple(items), None


@dataclass(frozen=True)
class DeviceConfig:
    id: str
    site: str
    file: str
    # The site file beside this device, or None: the doors' settings then come from the server's signed policy
    # alone (a Pi needs only this file, its keys and certificates; docs/configuration.md, Device files).
    site_file: Path | None
    broker: BrokerConfig
    gpio_factory: str
    credential_key_file: Path | None
    doors: dict[str, DoorHardware] = field(default_factory=dict)
    cameras: dict[str, CameraConfig] = field(default_factory=dict)
    policy_key_file: Path | None = None   # the server's public policy key (verifies the signed policy)
    state_dir: Path | None = None         # where the edge keeps its policy cache and its outbox
    heartbeat_s: float = 30.0             # the retained state is republished this often (the server's heartbeat)
    outbox_max_mb: int = 512              # the outbox drops its oldest snapshots (never events) beyond this
    emergency: EmergencyConfig | None = None  # [emergency]: the fire panel's release input (docs/openings.md)
    metrics: MetricsConfig | None = None  # [metrics]: /metrics and /healthz on a local port (docs/operations.md)


TLS_FILE_KEYS = ("ca_file", "cert_file", "key_file")


def _broker(t: _Table | None, f: str, errors: list[ConfigError], base: Path | None = None) -> BrokerConfig:
    """The [broker] table; TLS file paths are relative to the device file (``base``), like its other paths."""
    if t is None:
        return BrokerConfig("mqtt://127.0.0.1:1883")
    # One URL, or a list of them (tried in order, docs/scale.md "Several broker addresses"); kept as one
    # comma-separated string, the form `--broker` takes.
    raw = t.get("url", (str, list), "mqtt://127.0.0.1:1883")
    urls, problem = split_broker_urls(raw) if raw is not None else ((), None)
    if problem is not None:
        t.error("url", problem[0], problem[1])
    first = str(raw[0] if isinstance(raw, list) and raw else raw or "")
    # A bad URL: carry on with one of the same kind, so the TLS keys are not reported as well.
    url = ",".join(urls) if urls else ("mqtts://127.0.0.1:8883" if first.startswith("mqtts://") else "mqtt://127.0.0.1:1883")
    keepalive = t.get("keepalive", int, 30)
    if keepalive is None or not 5 <= keepalive <= 3600:
        if keepalive is not None:
            t.error("keepalive", f"{keepalive} is out of range", "use 5 to 3600 seconds")
        keepalive = 30
    files: dict[str, Path | None] = {}
    for key, raw in (("ca_file", t.get("ca_file", str, None)), ("cert_file", t.get("cert_file", str, None)),
                     ("key_file", t.get("key_file", str, None))):
        files[key] = (base / raw) if (raw and base is not None) else (Path(raw) if raw else None)
    tls = url.split("://", 1)[0] in TLS_SCHEMES
    allow_plain = t.get("allow_plain_mqtt", bool, False)
    if allow_plain and tls:
        t.error("allow_plain_mqtt", "has no effect with an mqtts:// URL", "remove it")
    for key in TLS_FILE_KEYS:
        if tls and files[key] is None:
            t.error(key, "is required with an mqtts:// URL",
                    f"set {key} to the file `doorkeep pki issue` wrote (docs/security.md)")
        elif not tls and files[key] is not None:
            t.error(key, "has no effect with a plain mqtt:// URL",
                    'write the URL as "mqtts://HOST:8883", or remove the key')
            files[key] = None
    t.done()
    return BrokerConfig(url, keepalive, files["ca_file"], files["cert_file"], files["key_file"],
                        allow_plain=bool(allow_plain) and not tls)


def _check_tls_files(dev: DeviceConfig, errors: list[ConfigError]) -> None:
    """On the device itself the TLS files must exist (the server, loading every device file, skips this)."""
    for key in TLS_FILE_KEYS:
        path = getattr(dev.broker, key)
        if path is not None and not path.is_file():
            errors.append(ConfigError(dev.file, f"broker.{key}", f"{path} does not exist",
                                      "copy it from the site's pki/ directory (`doorkeep pki issue DEVICE`), "
                                      "or fix the path (relative to this file)"))


def _pin(t: _Table, name: str = "pin") -> int | None:
    pin = t.get(name, int, fix=f"add `{name} = N` with the BCM GPIO number the wire is on")
    if pin is not None and not 0 <= pin <= 27:
        t.error(name, f"GPIO{pin} does not exist on the 40-pin header", "use a BCM GPIO number from 0 to 27")
        return None
    return pin


PRIVACY_MASK_FIX = ("write each polygon as at least 3 [x, y] points given as fractions of the frame's width "
                    "and height (0.0 = left/top, 1.0 = right/bottom), e.g. "
                    "privacy_masks = [[[0.6, 0.0], [1.0, 0.0], [1.0, 0.4], [0.6, 0.4]]]")


QR_ROI_FIX = ("write qr_roi as [x0, y0, x1, y1], the region's left, top, right and bottom as fractions of the "
              "frame (0.0-1.0, x0 < x1, y0 < y1), e.g. qr_roi = [0.25, 0.2, 0.75, 0.9]")


def _qr_roi(t: _Table) -> tuple[float, float, float, float]:
    """A camera's ``qr_roi``: the part of the frame searched for a pass (fractions, so a resolution change
    keeps it); the whole frame by default."""
    raw = t.get("qr_roi", list, None, fix=QR_ROI_FIX)
    if raw is None:
        return (0.0, 0.0, 1.0, 1.0)
    if len(raw) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        t.error("qr_roi", f"must be four numbers, got {raw!r}", QR_ROI_FIX)
        return (0.0, 0.0, 1.0, 1.0)
    x0, y0, x1, y1 = (float(v) for v in raw)
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        t.error("qr_roi", f"{raw!r} is not a region inside the frame", QR_ROI_FIX)
        return (0.0, 0.0, 1.0, 1.0)
    return (x0, y0, x1, y1)


def _qr_doors(cameras: dict[str, CameraConfig], doors: dict[str, DoorHardware],
              tables: dict[str, _Table]) -> dict[str, CameraConfig]:
    """Each ``qr = true`` camera's door: ``qr_door``, which must be a door that names the camera, or the one
    door that does; a camera over several doors must say which one a pass shown to it opens."""
    out = dict(cameras)
    for cid, cam in cameras.items():
        serving = sorted(d for d, hw in doors.items() if hw.camera == cid)
        t = tables[cid]
        if cam.qr_door is not None and cam.qr_door not in serving:
            t.error("qr_door", f"door {cam.qr_door!r} does not use camera {cid!r}",
                    f"name one of the doors with camera = \"{cid}\": {', '.join(serving) or '(none)'}")
            continue
        if not cam.qr:
            continue
        if cam.qr_door is None:
            if len(serving) == 1:
                out[cid] = replace(cam, qr_door=serving[0])
            elif not serving:
                t.error("qr", f"camera {cid!r} reads passes but no door uses it",
                        f"add camera = \"{cid}\" to the door it watches, or set qr = false")
            else:
                t.error("qr_door", f"camera {cid!r} watches doors {', '.join(serving)}: which one does a pass "
                        "shown to it open?", f"add qr_door = \"{serving[0]}\" (one of {', '.join(serving)})")
    return out


def _privacy_masks(t: _Table) -> tuple[tuple[tuple[float, float], ...], ...]:
    """A camera's ``privacy_masks``, every polygon and point checked.

    Fractions rather than pixels so that a mask survives a change of the
    camera's resolution; a value above 1 is almost always a pixel coordinate,
    and the error says so. A polygon with a bad point is dropped as a whole
    (and reported): a half-checked mask would hide the wrong area.
    """
    raw = t.get("privacy_masks", list, [], fix=PRIVACY_MASK_FIX)
    polygons = []
    for i, poly in enumerate(raw or []):
        name = f"privacy_masks[{i}]"
        if not isinstance(poly, list):
            t.error(name, f"must be a list of [x, y] points, got {poly!r}", PRIVACY_MASK_FIX)
            continue
        if poly and not any(isinstance(p, list) for p in poly):  # one bracket level short, e.g. [[0.1, 0.2], ...]
            t.error(name, f"must be a list of [x, y] points, got the numbers {poly!r}",
                    "privacy_masks is a list of polygons, each a list of points: even one polygon needs three "
                    "levels of brackets, e.g. privacy_masks = [[[0.6, 0.0], [1.0, 0.0], [1.0, 0.4]]]")
            continue
        if len(poly) < 3:
            t.error(name, f"has {len(poly)} point(s); a polygon needs at least 3",
                    "add points to make an area to black out, or remove the polygon")
            continue
        points = []
        for j, point in enumerate(poly):
            where = f"{name}[{j}]"
            if not (isinstance(point, list) and len(point) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)):
                t.error(where, f"must be a point [x, y] of two numbers, got {point!r}", "write it like [0.25, 0.5]")
                continue
            x, y = float(point[0]), float(point[1])
            bad = [f"{axis} = {v:g}" for axis, v in (("x", x), ("y", y)) if not 0.0 <= v <= 1.0]  # nan fails too
            if bad:
                t.error(where, f"{' and '.join(bad)} is outside 0.0-1.0",
                        "give x and y as fractions of the frame's width and height (0.0 = left/top, "
                        "1.0 = right/bottom), not pixels: x = pixel column / frame width")
                continue
            points.append((x, y))
        if len(points) != len(poly):
            continue
        twice_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))
        if abs(twice_area) < 1e-12:
            t.error(name, "has no area (all its points lie on one line)",
                    "give the corners of the area to black out, in order around it")
            continue
        polygons.append(tuple(points))
    return tuple(polygons)


#: Client names the site's PKI and broker ACL give to the server and the broker, never to a device.
RESERVED_DEVICE_IDS = frozenset({"server", "broker", "operator"})  # certificate identities (doorkeep.pki)
#: A certificate named worker-NAME is a server worker's (doorkeep.pki WORKER_PREFIX, which takes it from here).
WORKER_CERT_PREFIX = "worker-"

#: Where a device file without ``site_file`` finds its site file, if there is one: a device file inside a site
#: directory (``SITE/devices/NAME.toml``), as the server and the demo read it.
DEFAULT_SITE_FILE = "../site.toml"


def _site_file(device_file: Path, named: str | None) -> Path | None:
    """The device's site file: the one ``site_file`` names (it must exist: :func:`load_device` says so), else
    ``../site.toml`` when that file exists, else None: the site then comes from the server's signed policy.

    The default is kept for device files that sit in their site directory and never named it; a device file
    copied alone to a Pi (``/etc/doorkeep/pi-lobby.toml``) has no ``../site.toml`` and needs none."""
    if named:
        return device_file.parent / named
    default = device_file.parent / DEFAULT_SITE_FILE
    try:
        return default if default.is_file() else None
    except (OSError, ValueError):  # an unreadable directory: no site file to take
        return None


def _load_device(path: Path, errors: list[ConfigError]) -> DeviceConfig | None:
    data = _read_toml(path, errors)
    if data is None:
        return None
    f = str(path)
    root = _Table(data, f, "", errors)
    dev_id = root.ident("device")
    if dev_id in RESERVED_DEVICE_IDS:
        # The broker's ACL gives the certificate named `server` the whole site, and `broker` is the broker's own.
        root.error("device", f"{dev_id!r} is reserved for the site's {dev_id}",
                   "name the device after where it is, e.g. device = \"pi-lobby\"")
    elif dev_id and dev_id.startswith(WORKER_CERT_PREFIX):
        root.error("device", f"{dev_id!r}: names starting with {WORKER_CERT_PREFIX!r} are the server workers'",
                   "name the device after where it is, e.g. device = \"pi-lobby\"")
    site = root.ident("site")
    site_file = _site_file(path, root.get("site_file", str, None))
    key_file = root.get("credential_key_file", str, None)
    policy_key = root.get("policy_key_file", str, None)
    state_dir = root.get("state_dir", str, None)
    heartbeat_s = root.positive("heartbeat_s", 30.0)
    outbox_max_mb = root.get("outbox_max_mb", int, 512)
    if outbox_max_mb is None or not 1 <= outbox_max_mb <= 1_048_576:
        if outbox_max_mb is not None:
            root.error("outbox_max_mb", f"{outbox_max_mb} is out of range", "use 1 to 1048576 (MB); the default is 512")
        outbox_max_mb = 512
    factory = root.choice("gpio_factory", GPIO_FACTORIES)
    broker = _broker(root.sub("broker"), f, errors, path.parent)

    cameras = {}
    qr_tables: dict[str, _Table] = {}
    for cid, t in root.children("cameras"):
        src = t.get("source", (str, int), fix='add source = "0" (V4L2 device), an rtsp:// or http:// URL, or a file')
        quality = t.get("jpeg_quality", int, 85)
        if quality is None:
            quality = 85
        elif not 10 <= quality <= 100:
            t.error("jpeg_quality", f"{quality} is out of range", "use 10 to 100")
        fps = t.positive("fps", 10.0)
        qr = bool(t.get("qr", bool, False))
        qr_fps = t.positive("qr_fps", min(5.0, fps), maximum=30.0)
        if qr and qr_fps > fps:
            t.error("qr_fps", f"{qr_fps:g} scans a second is more than the camera's {fps:g} frames",
                    f"set qr_fps to at most fps ({fps:g}); 5 is plenty for a pass held up to the camera")
            qr_fps = fps
        cameras[cid] = CameraConfig(cid, str(src), fps, t.positive("buffer_seconds", 2.0), quality,
                                    _privacy_masks(t), qr, qr_fps, _qr_roi(t), t.ident("qr_door", None))
        qr_tables[cid] = t
        t.done()

    doors = {}
    pins_used: dict[int, str] = {}

    def claim(pin: int | None, where: str, t: _Table, key: str = "pin") -> None:
        if pin is None:
            return
        if pin in pins_used:
            t.error(key, f"GPIO{pin} is already used by {pins_used[pin]}", "wire each input and relay to its own GPIO")
        else:
            pins_used[pin] = where

    def wired(t: _Table, did: str, name: str, build: Callable[[int, _Table], Any]) -> Any:
        """An optional [doors.X.NAME] table wired to one GPIO: parsed, its pin claimed, unknown keys refused."""
        sub = t.sub(name)
        if sub is None:
            return None
        pin = _pin(sub)
        claim(pin, f"doors.{did}.{name}", sub)
        value = build(pin if pin is not None else -1, sub)
        sub.done()
        return value

    for did, t in root.children("doors"):
        r = t.sub("reader", required=True)
        reader = None
        if r is not None:
            proto = r.choice("protocol", READER_PROTOCOLS)
            # A Wiegand reader is two GPIO lines, no port: its url names the pins (unique, as pins are claimed).
            url = None if proto == "wiegand" else r.get("url", str, fix='add url = "/dev/serial0" (any pyserial URL)')
            baud = r.get("baudrate", int, 9600)
            if baud is None or baud <= 0:
                if baud is not None:
                    r.error("baudrate", f"{baud} is not a baud rate", "use the reader's rate, e.g. 9600")
                baud = 9600
            silence = r.get("silence_timeout_s", float, None)
            if silence is not None and silence <= 0:
                r.error("silence_timeout_s", f"must be greater than 0, got {silence}",
                        "remove it (no silence check) or set it to about three keep-alive intervals")
                silence = None
            reader = ReaderConfig(url or "", proto or "em4100", baud, r.positive("repeat_ignore_s", 1.0), silence)
            if proto == "osdp":
                reader = _osdp_reader(r, reader, path)
            if proto == "wiegand":
                reader = _wiegand_reader(r, reader, did, claim)
            if proto in ("wiegand", "osdp"):
                reader = replace(reader, wiegand_formats=_wiegand_formats(r))
            r.done()
        floors = _floor_hardware(t, did, claim)
        lk = t.sub("lock", required=not floors)
        lock = None
        if lk is not None:
            pin = _pin(lk)
            claim(pin, f"doors.{did}.lock", lk)
            lock = LockConfig(pin if pin is not None else -1, bool(lk.get("active_high", bool, True)),
                              lk.choice("fail", LOCK_FAIL_MODES, "secure") or "secure")
            lk.done()
        contact = wired(t, did, "contact", lambda pin, s: ContactConfig(
            pin, s.choice("open_level", ("high", "low"), "high") or "high"))
        rex = wired(t, did, "rex", lambda pin, s: RexConfig(pin, bool(s.get("active_low", bool, True))))
        tamper = wired(t, did, "tamper", lambda pin, s: TamperConfig(pin, bool(s.get("active_low", bool, True))))
        sounder = wired(t, did, "sounder", lambda pin, s: SounderConfig(pin, bool(s.get("active_high", bool, True))))
        passage = wired(t, did, "passage", lambda pin, s: PassageConfig(pin, bool(s.get("active_low", bool, True))))
        cam = t.ident("camera", None)
        if cam is not None and cam not in cameras:
            t.error("camera", f"camera {cam!r} is not defined in this file",
                    f"add a [cameras.{cam}] table or use one of: {', '.join(cameras) or '(none defined)'}")
            cam = None
        dispatch = bool(t.get("dispatch", bool, False, fix="write `dispatch = true` or `false` (no quotes)"))
        t.done()
        if floors and lock is not None:
            t.error("lock", "a lift cab has no lock: its floors' relays enable the buttons", "remove the lock table")
        if dispatch and not floors:
            t.error("dispatch", "only a lift has destination dispatch", "remove the key, or add the cab's floors")
        elif dispatch and not any(f.button is not None for f in floors):
            t.error("dispatch", "destination dispatch needs the floor buttons' inputs: the floor is chosen on them "
                                "before the badge", "add button = N to the floors of the panel, or remove dispatch")
        if floors and any(x is not None for x in (contact, rex, passage, sounder)):
            t.error("floors", "a lift cab has no door contact, REX, passage sensor or sounder",
                    "remove contact, rex, passage and sounder from this door (tamper and camera may stay)")
        if reader and (lock or floors):
            doors[did] = DoorHardware(did, reader, lock, contact, rex, cam, tamper, sounder, passage, floors,
                                      dispatch)
    if not doors:
        root.error("doors", "no door is configured", "add a [doors.NAME] table for each door this device drives")
    emergency = None
    em = root.sub("emergency")
    if em is not None:
        pin = _pin(em)
        claim(pin, "emergency", em)
        emergency = EmergencyConfig(pin if pin is not None else -1, bool(em.get("active_low", bool, True)))
        em.done()
    metrics = _metrics(root.sub("metrics"))
    cameras = _qr_doors(cameras, doors, qr_tables)
    _check_shared_buses(doors, root)
    root.done()
    if dev_id is None or site is None or factory is None:
        return None
    return DeviceConfig(dev_id, site, f, site_file, broker, factory,
                        (path.parent / key_file) if key_file else None, doors, cameras,
                        (path.parent / policy_key) if policy_key else None,
                        (path.parent / state_dir) if state_dir else None,
                        heartbeat_s=heartbeat_s, outbox_max_mb=outbox_max_mb, emergency=emergency,
                        metrics=metrics)


def _metrics(t: _Table | None) -> MetricsConfig | None:
    """The ``[metrics]`` table: ``port`` (required in it; no table, no listener), ``host`` and ``broker_grace_s``."""
    if t is None:
        return None
    port = t.get("port", int, fix="add `port = 9101` (a free local port), or remove [metrics] to serve nothing")
    if port is not None and not 1 <= port <= 65535:
        t.error("port", f"{port} is not a TCP port", "use 1 to 65535, e.g. 9101")
        port = None
    host = t.get("host", str, "127.0.0.1")
    if host is not None and not re.match(r"^(?:[A-Za-z0-9.-]{1,253}|[0-9A-Fa-f:.]{2,45})\Z", host):
        t.error("host", f"{host!r} is not an address to listen on",
                'use "127.0.0.1" (this Pi only, the default), or the address of the interface a monitor reaches')
        host = None
    grace = t.positive("broker_grace_s", 60.0, maximum=86_400.0)
    t.done()
    if port is None or host is None:
        return None
    return MetricsConfig(port, host, grace)


def _floor_hardware(t: _Table, did: str, claim: Callable[..., None]) -> tuple[FloorHardware, ...]:
    """A lift cab's ``[doors.X.floors.AREA]`` tables: ``relay`` (the GPIO that enables the floor's button),
    ``relay_active_high``, and optionally ``button`` (the button's input) and ``button_active_low``."""
    out = []
    for area, f in t.children("floors"):
        relay = _pin(f, "relay")
        claim(relay, f"doors.{did}.floors.{area}.relay", f, "relay")
        button = _pin(f, "button") if "button" in f.data else None
        f.used.add("button")
        claim(button, f"doors.{did}.floors.{area}.button", f, "button")
        if relay is not None:
            out.append(FloorHardware(area, relay, bool(f.get("relay_active_high", bool, True)), button,
                                     bool(f.get("button_active_low", bool, True))))
        f.done()
    return tuple(out)


def _osdp_reader(r: _Table, reader: ReaderConfig, path: Path) -> ReaderConfig:
    """The OSDP keys of a reader table: address, poll_ms, and its key (or an explicit opt-out of Secure Channel)."""
    address = r.get("address", int, fix="add address = 0 (the reader's OSDP address, 0-126, set on the reader)")
    if address is not None and not 0 <= address <= 126:
        r.error("address", f"{address} is not an OSDP address", "use 0-126 (127 is the broadcast address)")
        address = None
    poll_ms = r.get("poll_ms", int, 100)
    if poll_ms is None or not 10 <= poll_ms <= 10000:
        if poll_ms is not None:
            r.error("poll_ms", f"{poll_ms} is out of range", "use 10-10000 ms (100 is the usual poll interval)")
        poll_ms = 100
    secure = r.get("secure_channel", bool, True)
    scbk = r.get("scbk_file", str, None)
    if secure and scbk is None:
        r.error("scbk_file", "an OSDP reader needs its Secure Channel key file",
                'add scbk_file = "keys/front.scbk" (written by `doorkeep osdp install-key`), or '
                "secure_channel = false for development only")
    if not secure and scbk is not None:
        r.error("scbk_file", "is set but secure_channel = false", "remove one of the two")
    return replace(reader, address=address if address is not None else 0, poll_ms=poll_ms,
                               scbk_file=(path.parent / scbk) if scbk else None, secure_channel=bool(secure))


def _wiegand_reader(r: _Table, reader: ReaderConfig, did: str,
                    claim: Callable[[int | None, str, _Table, str], None]) -> ReaderConfig:
    """The Wiegand keys of a reader table: D0 and D1 (claimed like every other pin) and ``frame_timeout_ms``."""
    d0 = _pin(r, "d0_pin")
    d1 = _pin(r, "d1_pin")
    claim(d0, f"doors.{did}.reader D0", r, "d0_pin")
    claim(d1, f"doors.{did}.reader D1", r, "d1_pin")
    timeout = r.get("frame_timeout_ms", int, 25)
    if timeout is None or not 5 <= timeout <= 500:
        if timeout is not None:
            r.error("frame_timeout_ms", f"{timeout} is out of range",
                    "use 5-500 ms: longer than the reader's gap between bits (about 2 ms), 25 is usual")
        timeout = 25
    url = f"gpio://{d0 if d0 is not None else '?'},{d1 if d1 is not None else '?'}"
    return replace(reader, url=url, d0_pin=d0, d1_pin=d1, frame_timeout_ms=timeout)


def _wiegand_formats(r: _Table) -> card_formats.Choice:
    """``wiegand_formats = { 37 = "h10302" }``: the layout a Wiegand or OSDP reader reads each card length with
    (doorkeep/card_formats.py, docs/readers.md); lengths not named keep their default, so hashes stay."""
    table = r.sub("wiegand_formats")
    if table is None:
        return ()
    table.used.update(table.data)
    allowed = "; ".join(f"{n} = {' | '.join(names)}" for n, names in card_formats.NAMES_BY_LENGTH.items())
    chosen: list[tuple[int, str]] = []
    for key, name in table.data.items():
        bits = int(key) if key.isdigit() else None
        if bits not in card_formats.NAMES_BY_LENGTH:
            table.error(key, "is not a card length doorkeep reads",
                        f"key each format by its bit count, one of: {allowed}")
            continue
        if not isinstance(name, str) or card_formats.check_choice(bits, name) is not None:
            table.error(key, f"unknown {bits}-bit format {name!r}",
                        f"use one of: {', '.join(card_formats.NAMES_BY_LENGTH[bits])}")
            continue
        chosen.append((bits, name))
    return tuple(sorted(chosen))


def _check_shared_buses(doors: dict[str, DoorHardware], root: _Table) -> None:
    """Doors may share a serial URL only as OSDP readers on one RS-485 bus, each with its own address."""
    by_url: dict[str, list[DoorHardware]] = {}
    for hw in doors.values():
        by_url.setdefault(hw.reader.url, []).append(hw)
    for url, hws in by_url.items():
        if len(hws) < 2 or url.startswith("loop://"):  # every loop:// opens its own loopback
            continue
        names = ", ".join(h.door for h in hws)
        if any(h.reader.protocol != "osdp" for h in hws):
            root.error("doors", f"doors {names} share the reader url {url!r}",
                       "give each door its own reader port; only OSDP readers (protocol = \"osdp\") share a bus")
            continue
        addresses = [h.reader.address for h in hws]
        if len(set(addresses)) != len(addresses):
            root.error("doors", f"OSDP readers of doors {names} on {url!r} share an address ({addresses})",
                       "set a different address on each reader of one bus")
        if len({h.reader.baudrate for h in hws}) != 1:
            root.error("doors", f"OSDP readers of doors {names} on {url!r} have different baudrate",
                       "one bus runs at one baud rate: set the same baudrate on each")


# ----------------------------------------------------------------- bundles


@dataclass(frozen=True)
class SiteBundle:
    """Everything in a site directory, checked against each other."""

    dir: Path
    site: Site
    people: dict[str, Person]
    cards: list[CardSeed]
    devices: dict[str, DeviceConfig]
    credential_key_file: Path
    visitor_pool: list[CardSeed] = field(default_factory=list)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    intrusion: IntrusionSettings = field(default_factory=IntrusionSettings)
    backup: BackupSettings = field(default_factory=BackupSettings)
    #: Where the server keeps its records (site.toml [store]); read from the site directory's file at start.
    store: StoreSettings = field(default_factory=StoreSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    invitations: InvitationSettings = field(default_factory=InvitationSettings)
    siem: SiemSettings = field(default_factory=SiemSettings)
    home_assistant: HomeAssistantSettings = field(default_factory=HomeAssistantSettings)
    #: The integration request API's permissions by certificate name (site.toml [integrations.NAME]).
    integrations: dict[str, IntegrationSettings] = field(default_factory=dict)


def _cross_check(site: Site, devices: list[DeviceConfig], site_file: str, errors: list[ConfigError],
                 require_all_doors: bool) -> None:
    owner: dict[str, str] = {}
    for dev in devices:
        if dev.site != site.id:
            errors.append(ConfigError(dev.file, "site", f"{dev.site!r} does not match the site id {site.id!r}",
                                      f'set site = "{site.id}"'))
        for did in dev.doors:
            if did not in site.doors:
                errors.append(ConfigError(dev.file, f"doors.{did}", "door is not defined in the site file",
                                          f"add [doors.{did}] to {site_file} or use one of: {', '.join(site.doors)}"))
            elif did in owner:
                errors.append(ConfigError(dev.file, f"doors.{did}", f"door is already on device {owner[did]!r}",
                                          "put each door on exactly one device"))
            else:
                owner[did] = dev.id
                _check_kind(site.doors[did], dev.doors[did], dev.file, site_file, errors)
    for group, members in interlock_groups(site.doors).items():
        devices_of = sorted({owner[did] for did in members if did in owner})
        if len(devices_of) > 1:
            errors.append(ConfigError(site_file, f"doors.{members[0]}.interlock",
                                      f"interlock {group!r} has doors on devices {', '.join(devices_of)}",
                                      "wire every door of an interlock to one device: it enforces the group"))
    if require_all_doors:
        for did in site.doors:
            if did not in owner:
                errors.append(ConfigError(site_file, f"doors.{did}", "door is on no device",
                                          f"add [doors.{did}] with its reader and lock to one file in devices/"))


def _check_kind(door: Door, hw: DoorHardware, device_file: str, site_file: str, errors: list[ConfigError]) -> None:
    """A turnstile counts passages: it needs its passage sensor, and a door with one must be a turnstile. A lift's
    cab has a relay for each of the site's floors and nothing else; a door with floors must be a lift."""
    lift = door.kind is DoorKind.LIFT
    if lift != bool(hw.floors):
        errors.append(ConfigError(device_file, f"doors.{door.id}.floors", "a lift needs its floors' relays",
                                  "add [doors.ID.floors.AREA] with relay = N for each floor in the site file")
                      if lift else
                      ConfigError(site_file, f"doors.{door.id}.kind", "the door has floor relays but is not a lift",
                                  'set kind = "lift" in the site file, or remove floors from the device file'))
    elif lift:
        wired = [f.area for f in hw.floors]
        served = [f.area for f in door.floors]
        for area in served:
            if area not in wired:
                errors.append(ConfigError(device_file, f"doors.{door.id}.floors.{area}",
                                          "a floor of the lift has no relay in the cab",
                                          "add relay = N for it (the GPIO that enables its button)"))
        for area in wired:
            if area not in served:
                errors.append(ConfigError(device_file, f"doors.{door.id}.floors.{area}",
                                          "the site file does not list this floor for the lift",
                                          f"add {area!r} to the lift's floors in {site_file}, or remove the table"))
        return
    turnstile = door.kind is DoorKind.TURNSTILE
    if turnstile and hw.passage is None:
        errors.append(ConfigError(device_file, f"doors.{door.id}.passage", "a turnstile needs its passage sensor",
                                  "add passage = { pin = N } (the sensor of this direction)"))
    elif not turnstile and hw.passage is not None:
        errors.append(ConfigError(site_file, f"doors.{door.id}.kind", "the door has a passage sensor but is not a turnstile",
                                  'set kind = "turnstile" in the site file, or remove passage from the device file'))


def load_site_dir(directory: Path | str, *, site_text: str | None = None, people: bool = True) -> SiteBundle:
    """Load and cross-check a whole site directory; raise ConfigErrors listing every problem.

    ``site_text`` stands for ``site.toml``'s content: a site revision the server holds (server/siteadmin.py)
    is checked against the directory's devices with exactly the rules of ``doorkeep config check``.
    ``people`` False leaves ``people.toml`` unread: the server checks a revision against the people its
    store holds instead (the file is only an import format there).
    """
    d = Path(directory)
    errors: list[ConfigError] = []
    site = _load_site(d / "site.toml", errors, site_text)
    people_, cards, pool = _load_people(d / "people.toml", site, errors) \
        if people and (d / "people.toml").exists() else ({}, [], [])
    devices: dict[str, DeviceConfig] = {}
    dev_dir = d / "devices"
    for p in sorted(dev_dir.glob("*.toml")) if dev_dir.is_dir() else []:
        dev = _load_device(p, errors)
        if dev is None:
            continue
        if dev.id in devices:
            errors.append(ConfigError(str(p), "device", f"device id {dev.id!r} is used by {devices[dev.id].file}",
                                      "give every device file its own id"))
        devices[dev.id] = dev
    if site is not None:
        _cross_check(site, list(devices.values()), str(d / "site.toml"), errors, require_all_doors=True)
    # Where the server keeps the credential key unless $DOORKEEP_CREDENTIAL_KEY is set.
    key_file = d / "keys" / "credential.key"
    retention = _load_retention(d / "site.toml", errors, site_text) if site is not None else RetentionSettings()
    intrusion = _load_intrusion(d / "site.toml", errors, site_text) if site is not None else IntrusionSettings()
    backup = _load_backup(d / "site.toml", errors, site_text) if site is not None else BackupSettings()
    store = load_store_settings(d / "site.toml", errors, site_text) if site is not None else StoreSettings()
    refused = check_backup_store(backup, store, str(d / "site.toml"))
    if refused is not None:
        errors.append(refused)
    smtp, invitations = (_load_smtp(d / "site.toml", errors, site_text) if site is not None
                         else (SmtpSettings(), InvitationSettings()))
    home_assistant = (_load_home_assistant(d / "site.toml", errors, site, site_text) if site is not None
                      else HomeAssistantSettings())
    siem = _load_siem(d / "site.toml", errors, site_text) if site is not None else SiemSettings()
    integrations = _load_integrations(d / "site.toml", errors, site, site_text) if site is not None else {}
    if errors:
        raise ConfigErrors(errors)
    assert site is not None
    return SiteBundle(d, site, people_, cards, devices, key_file, pool, retention=retention, intrusion=intrusion,
                      backup=backup, store=store, smtp=smtp, invitations=invitations,
                      home_assistant=home_assistant, siem=siem, integrations=integrations)


def load_device(path: Path | str) -> tuple[DeviceConfig, Site | None]:
    """Load a device file and the site file it points at, if any; its doors must exist in that site.

    The site is None when the device has no site file (see :func:`_site_file`): the edge then takes every
    door's settings from the server's signed policy, so it needs ``policy_key_file`` to verify one.
    The TLS files it names are not opened here (like the key files, they exist only on the Pi):
    :func:`check` reports missing ones, and the edge's link refuses to start without them.
    """
    p = Path(path)
    errors: list[ConfigError] = []
    dev = _load_device(p, errors)
    site = None
    if dev is not None and dev.site_file is not None:
        try:
            present = dev.site_file.exists()
        except (OSError, ValueError):
            present = True  # let the loader name what is wrong with the path
        if present:
            site = _load_site(dev.site_file, errors)
        else:
            errors.append(ConfigError(dev.file, "site_file", f"{dev.site_file} does not exist",
                                      "remove site_file (the doors' settings then come from the server's signed "
                                      "policy) or fix the path (relative to this file)"))
    elif dev is not None and dev.policy_key_file is None:
        errors.append(ConfigError(dev.file, "policy_key_file",
                                  "is required when the device has no site_file: the doors' names, modes, times "
                                  "and rules come only from the server's signed policy, which this key verifies",
                                  "set policy_key_file to the server's policy-signing.pub (relative to this "
                                  "file), or name the site file in site_file"))
    if dev is not None and site is not None:
        _cross_check(site, [dev], str(dev.site_file), errors, require_all_doors=False)
    if errors:
        raise ConfigErrors(errors)
    assert dev is not None
    return dev, site


def site_source(path: Path | str) -> str | None:
    """For ``doorkeep config check DEVICE_FILE``: where the device's site comes from, in one line, or None for
    a path that is not a loadable device file. Says so when it is the server's signed policy (no site file)."""
    p = Path(path)
    if p.is_dir() or p.name == "site.toml":
        return None
    try:
        dev, site = load_device(p)
    except (ConfigErrors, ConfigError):
        return None
    if site is not None:
        return f"site: {dev.site_file}"
    return (f"site: from the server (no site_file): the doors' names, modes, times and rules come with the "
            f"signed policy for {dev.id}, verified with {dev.policy_key_file}; until the edge holds one it keeps every door locked "
            "(REX still opens) and refuses every badge (no_policy)")


def _load_device_on_the_pi(path: Path) -> None:
    """``doorkeep config check DEVICE_FILE``, run on the Pi: the device file loads and its TLS files exist."""
    dev, _ = load_device(path)
    errors: list[ConfigError] = []
    _check_tls_files(dev, errors)
    if errors:
        raise ConfigErrors(errors)


def check(path: Path | str) -> list[ConfigError]:
    """Every problem in a site directory, a site.toml, or a device file ([] when all is well)."""
    p = Path(path)
    loader: Callable[[Path], object]
    if p.is_dir():
        loader = load_site_dir
    elif p.name == "site.toml":
        loader = lambda q: load_site_dir(q.parent)  # noqa: E731
    else:
        loader = _load_device_on_the_pi
    try:
        loader(p)
    except ConfigErrors as exc:
        return exc.errors
    except ConfigError as exc:
        return [exc]
    if not p.exists():
        return [ConfigError(str(p), "", "no such file or directory", "check the path")]
    return []
