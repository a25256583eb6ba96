"""What an operator types into the desk's site forms, turned into structured site edits, and back.

The admin pages (server/web/site_pages.py) change areas, doors, schedules and access levels through
:meth:`server.siteadmin.SiteAdmin.change`, which takes dotted ``site.toml`` keys -> value (None removes the
key). This module is the translation, and nothing else: no HTTP, no store, no rule of its own.

The rules live in one place, :mod:`doorkeep.config`. A value typed here that breaks one (an unlock time of 0,
a clearance of 12, ``abc`` for seconds, ``25:00`` for a time) is handed on as typed, so the answer names the
key, the problem and the fix exactly as ``doorkeep config check`` does for a file. Only what cannot become a
site key or value at all is refused here: an id that is not an identifier or already exists, a date that is
not one, a window with times but no day.

Edits are minimal: a field left as it was is not sent and a field emptied removes its key (the documented
default applies), so a revision records only what the operator changed, and an edit made on an older page
still goes through when someone else changed other objects meanwhile.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Iterable, Mapping, Sequence

from doorkeep.model import WEEKDAYS, AntiPassback, DoorKind, DoorMode, OfflineMode

#: An object id: what doorkeep.config accepts as a table name, at most 64 characters like the API's site keys.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
#: Blank window rows and holiday fields offered after the filled ones (save, and more appear).
SPARE_ROWS = 2
#: The most window rows a form may post (the form says how many it has; a bigger count is capped).
MAX_ROWS = 100
DAY_NAMES = {"mon": "Monday", "tue": "Tuesday", "wed": "Wednesday", "thu": "Thursday", "fri": "Friday",
             "sat": "Saturday", "sun": "Sunday"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a form, said as ``doorkeep config check`` says it: the key, what, and the fix."""

    key: str
    problem: str
    fix: str
    file: str = ""  # set when the problem is in another file of the site directory (a device file)


@dataclass(frozen=True)
class Field:
    """One key of an area's or a door's table, as a form field.

    ``kind``: ``text``, ``number`` (float), ``int``, ``bool`` (a checkbox), ``choice`` (one of ``choices``),
    ``area`` or ``schedule`` (a select of the site's ids; empty for none). ``default`` is what an absent key
    means for bools and choices: choosing it for an absent key sends nothing. ``minimum``/``maximum`` are the
    limits doorkeep.config enforces, offered to the browser and in the hint; config stays the judge.
    """

    key: str
    label: str
    kind: str
    hint: str = ""
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    required: bool = False

    @property
    def step(self) -> str:
        return "1" if self.kind == "int" else "any"


AREA_FIELDS: tuple[Field, ...] = (
    Field("name", "Name", "text", "shown at the desk and in reports; empty: the id"),
    Field("restricted", "Restricted area", "bool",
          "visitors whose escort_required is true need an escort to enter", default=False),
    Field("clearance", "Clearance needed", "int", "0 to 9: the clearance a person needs to enter (empty: 0)",
          minimum=0, maximum=9),
    Field("escort_required", "Every visitor needs an escort", "bool",
          "whatever the visitor's own escort_required", default=False),
    Field("two_person", "Two-person rule", "bool",
          "two different authorised people must badge at the same door within the site's two-person window",
          default=False),
    Field("anti_passback", "Anti-passback", "choice",
          "hard refuses entry while the doors last saw the person elsewhere; soft grants and records it",
          default=AntiPassback.NONE.value, choices=tuple(m.value for m in AntiPassback)),
    Field("anti_passback_reset_min", "Anti-passback reset (minutes)", "number",
          "more than 0: a presence this old no longer counts; needs anti-passback (empty: never)", minimum=0),
    Field("max_occupancy", "Most people at once", "int", "1 or more, counted from presence (empty: no limit)",
          minimum=1),
)

DOOR_FIELDS: tuple[Field, ...] = (
    Field("name", "Name", "text", "shown at the desk and in reports; empty: the id"),
    Field("from", "From area", "area", "the area the door leads out of", required=True),
    Field("to", "To area", "area", "the area it leads into: access levels are checked against it", required=True),
    Field("mode", "Mode", "choice", "unlocked_on_schedule holds the lock released while the unlock schedule is open",
          default=DoorMode.NORMAL.value, choices=tuple(m.value for m in DoorMode)),
    Field("unlock_schedule", "Unlock schedule", "schedule",
          "only with mode unlocked_on_schedule, and required there"),
    Field("first_person_in", "First person in", "bool",
          "with unlocked_on_schedule: stay locked each day until an authorised person is granted here",
          default=False),
    Field("unlock_s", "Unlock time (seconds)", "number",
          "more than 0, at most 3600: how long a grant releases the lock (empty: 5)", minimum=0, maximum=3600),
    Field("held_open_s", "Held-open limit (seconds)", "number",
          "more than 0, at most 86400: an opening longer than this raises held_open (empty: 30)",
          minimum=0, maximum=86400),
    Field("prealarm_s", "Pre-alarm (seconds before the held-open limit)", "number",
          "0 (none) or less than the held-open limit (empty: 10, or none when the limit is 10 s or less)",
          minimum=0),
    Field("decision_timeout_ms", "Decision timeout (ms)", "int",
          "50 to 10000: how long the edge waits for the server before it refuses (empty: 1000)",
          minimum=50, maximum=10000),
    Field("offline", "When the server cannot be reached", "choice",
          "cache decides from the edge's signed policy, deny refuses", default=OfflineMode.DENY.value,
          choices=tuple(m.value for m in OfflineMode)),
    Field("pin_required", "Card and PIN", "bool", "the PIN typed at the reader must match the person's", default=False),
    Field("kind", "Kind", "choice", "turnstile: one passage per grant, counted by its passage sensor (a lift is "
          "added in site.toml with its floors, and in its device file with a relay per floor)",
          default=DoorKind.DOOR.value, choices=tuple(k.value for k in DoorKind if k is not DoorKind.LIFT)),
    Field("tailgate_s", "Tailgate window (seconds)", "number",
          "turnstiles only, 0 to 60: a passage with no grant this soon after one is tailgating (empty: 3)",
          minimum=0, maximum=60),
    Field("interlock", "Interlock group", "text",
          "doors with the same group name (a mantrap) never open at once; empty: none"),
    Field("emergency_release", "Released by the emergency input", "bool",
          "held unlocked while its device's emergency input (the fire panel) is active", default=False),
    Field("visitor_checkout", "Visitor check-out by pass", "bool",
          "a visitor's pass granted here checks the visit out (an exit door; a pool badge still goes back to the desk)",
          default=False),
)

#: A lift's keys the desk edits. A lift has no from/to, leaf timings, mode or passage (doorkeep/config.py
#: ``_check_lifts``), and its floors are wired in the device file too, so ``floors`` is never written here.
LIFT_FIELDS: tuple[Field, ...] = (
    Field("name", "Name", "text", "shown at the desk and in reports; empty: the id"),
    Field("unlock_s", "Floors enabled for (seconds)", "number",
          "more than 0, at most 3600: how long a badge's floor buttons wait to be pressed (empty: 5)",
          minimum=0, maximum=3600),
    Field("decision_timeout_ms", "Decision timeout (ms)", "int",
          "50 to 10000: how long the edge waits for the server before it decides offline (empty: 1000)",
          minimum=50, maximum=10000),
    Field("offline", "When the server cannot be reached", "choice",
          "cache enables the floors the edge's signed policy allows, deny enables none; a floor may say otherwise "
          "below", default=OfflineMode.DENY.value, choices=tuple(m.value for m in OfflineMode)),
    Field("pin_required", "Card and PIN", "bool", "the PIN typed at the cab's reader must match the person's",
          default=False),
    Field("emergency_release", "Released by the emergency input", "bool",
          "every floor button works while its device's emergency input (the fire panel) is active", default=False),
)
#: A lift's per-floor tables (``public_floors.lobby = "day"``): their fields are ``TABLE.FLOOR``.
PER_FLOOR = ("public_floors", "offline_floors")
#: The offline choice of a floor that follows the lift's own ``offline`` (its key is absent).
AS_THE_LIFT = "lift"

FormValues = dict[str, Any]


# ------------------------------------------------------------------ ids


def new_id_problems(table: str, oid: str, existing: Mapping[str, Any]) -> list[Problem]:
    """An id for a new area, door, schedule or level: an identifier, and not one the site already has."""
    if not _ID.match(oid):
        return [Problem(f"{table}.{oid}" if oid else table, f"{oid!r} is not a valid identifier" if oid
                        else "the id is missing", "use 1 to 64 letters, digits, '_' and '-', e.g. store_room")]
    if oid in existing:
        return [Problem(f"{table}.{oid}", "already exists", "choose another id, or edit the existing one")]
    return []


# ------------------------------------------------------------------ areas and doors


def table_values(table: Mapping[str, Any] | None, fields: Sequence[Field]) -> FormValues:
    """A stored table as the strings its form shows (a checkbox: ``on`` or empty)."""
    table = table or {}
    out: FormValues = {}
    for f in fields:
        value = table.get(f.key)
        if f.kind == "bool":
            out[f.key] = "on" if value is True else ""
        elif f.kind == "choice" and value is None:
            out[f.key] = f.default
        else:
            out[f.key] = "" if value is None else _text(value)
    return out


def submitted_values(form: Mapping[str, Any], fields: Sequence[Field]) -> FormValues:
    """What the operator sent, kept as typed (to show it again when the change is refused)."""
    return {f.key: str(form.get(f.key) or "")[:200] for f in fields}


def table_edits(prefix: str, fields: Sequence[Field], values: FormValues,
                old: Mapping[str, Any] | None) -> dict[str, Any]:
    """The edits that make table ``prefix`` (``doors.lab``) what the form says.

    A new table (``old`` None) is one edit holding what was filled in; an existing one gets an edit per key
    that changed, None for a key emptied.
    """
    if old is None:
        table = {}
        for f in fields:
            value = _parse(f, values.get(f.key, ""))
            if value is None or (f.kind in ("bool", "choice") and value == f.default):
                continue
            table[f.key] = value
        return {prefix: table}
    edits: dict[str, Any] = {}
    for f in fields:
        value = _parse(f, values.get(f.key, ""))
        present = f.key in old
        if not present and (value is None or (f.kind in ("bool", "choice") and value == f.default)):
            continue
        if value is None:
            edits[f"{prefix}.{f.key}"] = None
        elif not present or not _same(old[f.key], value):
            edits[f"{prefix}.{f.key}"] = value
    return edits


# ------------------------------------------------------------------ lifts


def is_lift(table: Mapping[str, Any] | None) -> bool:
    return bool(table) and table.get("kind") == DoorKind.LIFT.value  # type: ignore[union-attr]


def lift_floors(table: Mapping[str, Any]) -> list[str]:
    """The floors a lift's table lists, in its order (what is not an area id is left to config to name)."""
    floors = table.get("floors")
    return [a for a in floors if isinstance(a, str)] if isinstance(floors, list) else []


def lift_fields(floors: Sequence[str], names: Mapping[str, str] | None = None) -> tuple[Field, ...]:
    """A lift's form: its own keys, then per floor its public schedule and what it does offline."""
    names = names or {}
    out = list(LIFT_FIELDS)
    for area in floors:
        name = names.get(area, area)
        out.append(Field(f"public_floors.{area}", f"{name}: public on schedule", "schedule",
                         "its button works without a badge while this schedule is open (and its area is not locked "
                         "down); none: a badge is always needed"))
        out.append(Field(f"offline_floors.{area}", f"{name}: when the server cannot be reached", "choice",
                         f"{AS_THE_LIFT}: as the lift's own setting above; cache or deny for this floor alone",
                         default=AS_THE_LIFT, choices=(AS_THE_LIFT, *(m.value for m in OfflineMode))))
    return tuple(out)


def _flat_lift(table: Mapping[str, Any]) -> dict[str, Any]:
    """A lift's table with its per-floor tables as ``public_floors.FLOOR`` keys, as its form fields name them."""
    flat = {k: v for k, v in table.items() if k not in PER_FLOOR}
    for key in PER_FLOOR:
        inner = table.get(key)
        if isinstance(inner, Mapping):
            flat.update({f"{key}.{floor}": value for floor, value in inner.items()})
    return flat


def lift_values(table: Mapping[str, Any], names: Mapping[str, str] | None = None) -> FormValues:
    return table_values(_flat_lift(table), lift_fields(lift_floors(table), names))


def submitted_lift(form: Mapping[str, Any], table: Mapping[str, Any]) -> FormValues:
    return submitted_values(form, lift_fields(lift_floors(table)))


def lift_edits(prefix: str, values: FormValues, old: Mapping[str, Any]) -> dict[str, Any]:
    """The edits that make lift ``prefix`` what its form says. Only the lift's own keys and its per-floor settings
    are ever written: never ``from``/``to`` (a lift has none), ``kind`` or ``floors`` (wired in the device file
    too), so a save cannot turn the lift into something else or drop a floor."""
    edits = table_edits(prefix, lift_fields(lift_floors(old)), values, _flat_lift(old))
    for key in list(edits):
        if key.startswith(f"{prefix}.offline_floors.") and edits[key] == AS_THE_LIFT:
            edits[key] = None  # the floor follows the lift again: its own setting goes
    for table in PER_FLOOR:  # a per-floor table emptied goes as a whole (no `public_floors = {}` left behind)
        inner = old.get(table)
        if not isinstance(inner, Mapping) or not inner:
            continue
        mine = {k: v for k, v in edits.items() if k.startswith(f"{prefix}.{table}.")}
        kept = [floor for floor in inner if edits.get(f"{prefix}.{table}.{floor}", inner[floor]) is not None]
        if not kept and mine and all(v is None for v in mine.values()):
            for k in mine:
                del edits[k]
            edits[f"{prefix}.{table}"] = None
    return edits


def _parse(f: Field, text: Any) -> Any:
    """The value a field's text stands for; None when left empty. A number that does not parse is handed on
    as typed, so doorkeep.config names it (``must be float, got 'abc'``)."""
    s = str(text or "").strip()
    if f.kind == "bool":
        return bool(s)
    if not s:
        return None
    if f.kind in ("number", "int"):
        return _number(s)
    return s


def _number(s: str) -> Any:
    try:
        return int(s)
    except ValueError:
        pass
    try:
        value = float(s)
    except (ValueError, OverflowError):
        return s
    return value if math.isfinite(value) else s


def _same(old: Any, new: Any) -> bool:
    return old == new and isinstance(old, bool) == isinstance(new, bool) and isinstance(old, str) == isinstance(new, str)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ------------------------------------------------------------------ schedules


def schedule_values(table: Mapping[str, Any] | None) -> FormValues:
    """A stored schedule as its form shows it: name, window rows (days, start, end) and holiday dates."""
    table = table or {}
    windows = [{"days": [d for d in WEEKDAYS if d in (w.get("days") or [])], "start": str(w.get("start", "")),
                "end": str(w.get("end", ""))} for w in table.get("windows") or [] if isinstance(w, Mapping)]
    holidays = [h.isoformat() if isinstance(h, date) else str(h) for h in table.get("holidays") or []]
    return {"name": str(table.get("name", "")), "windows": windows, "holidays": holidays}


def submitted_schedule(form: Any) -> FormValues:
    """What the operator sent for a schedule (a starlette FormData: repeated fields), kept as typed.

    Rows are ``days-N`` (the ticked days), ``start-N`` and ``end-N`` for N below the form's ``rows``;
    holidays are repeated ``holiday`` fields. Rows left wholly empty are dropped.
    """
    try:
        rows = min(max(int(str(form.get("rows") or 0)), 0), MAX_ROWS)
    except ValueError:
        rows = 0
    windows = []
    for i in range(rows):
        ticked = set(form.getlist(f"days-{i}"))
        row = {"days": [d for d in WEEKDAYS if d in ticked], "start": str(form.get(f"start-{i}") or "").strip()[:10],
               "end": str(form.get(f"end-{i}") or "").strip()[:10]}
        if row["days"] or row["start"] or row["end"]:
            windows.append(row)
    holidays = [str(h).strip()[:20] for h in form.getlist("holiday") if str(h).strip()][:1000]
    return {"name": str(form.get("name") or "")[:200], "windows": windows, "holidays": holidays}


def schedule_edits(prefix: str, values: FormValues, old: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[Problem]]:
    """The edits that make schedule ``prefix`` (``schedules.night``) what the form says, or the problems."""
    problems = []
    for i, w in enumerate(values["windows"]):
        if not w["days"]:
            problems.append(Problem(f"{prefix}.windows[{i}].days", "no day is ticked",
                                    "tick the days the window opens on, or empty its times to remove it"))
    holidays: list[date] = []
    for text in values["holidays"]:
        try:
            holidays.append(date.fromisoformat(text))
        except ValueError:
            problems.append(Problem(f"{prefix}.holidays", f"{text!r} is not a date", "write it as 2026-12-25"))
    if problems:
        return {}, problems
    holidays = sorted(set(holidays))
    windows = [{"days": w["days"], "start": w["start"], "end": w["end"]} for w in values["windows"]]
    name = values["name"].strip()
    if old is None:
        table: dict[str, Any] = {"name": name} if name else {}
        table["windows"] = inline_rows(windows)
        if holidays:
            table["holidays"] = holidays
        return {prefix: table}, []
    edits: dict[str, Any] = {}
    if name != str(old.get("name", "")) and (name or "name" in old):
        edits[f"{prefix}.name"] = name or None
    if windows != schedule_values(old)["windows"]:
        edits[f"{prefix}.windows"] = inline_rows(windows) if windows else None
    if holidays != sorted(h for h in old.get("holidays") or [] if isinstance(h, date)):
        edits[f"{prefix}.holidays"] = holidays or None
    return edits, []


@dataclass(frozen=True)
class Cell:
    """One hour of one day in a schedule's week grid: ``open``, ``part`` or ``closed``, and the words."""

    state: str
    text: str


@dataclass(frozen=True)
class GridRow:
    day: str
    name: str
    cells: tuple[Cell, ...]


def week_grid(windows: Iterable[Mapping[str, Any]]) -> list[GridRow]:
    """Seven rows of 24 hours, each hour open, partly open (with the open minutes in words) or closed.

    Read as doorkeep.schedule reads windows: an ``end`` at or before ``start`` runs into the next day, 24:00
    is midnight. Holidays are not in the grid (they close a date, not a weekday): the page lists them.
    """
    minutes = [[False] * 1440 for _ in WEEKDAYS]
    for w in windows:
        start, end = _minute(w.get("start")), _minute(w.get("end"))
        if start is None or end is None or start >= 1440:
            continue
        for day in w.get("days") or []:
            if day not in WEEKDAYS:
                continue
            d = WEEKDAYS.index(day)
            if end > start:
                _fill(minutes[d], start, end)
            else:  # spans midnight: start .. 24:00, then 00:00 .. end the next day
                _fill(minutes[d], start, 1440)
                _fill(minutes[(d + 1) % 7], 0, end)
    rows = []
    for d, day in enumerate(WEEKDAYS):
        cells = []
        for hour in range(24):
            span = minutes[d][hour * 60:(hour + 1) * 60]
            if all(span):
                cells.append(Cell("open", "open"))
            elif not any(span):
                cells.append(Cell("closed", "closed"))
            else:
                cells.append(Cell("part", "open " + ", ".join(f"{_hhmm(hour * 60 + a)}–{_hhmm(hour * 60 + b)}"
                                                              for a, b in _runs(span))))
        rows.append(GridRow(day, DAY_NAMES[day], tuple(cells)))
    return rows


def _minute(text: Any) -> int | None:
    m = re.match(r"^(\d{2}):(\d{2})$", str(text or ""))
    if not m:
        return None
    value = int(m.group(1)) * 60 + int(m.group(2))
    return value if value <= 1440 and int(m.group(2)) < 60 else None


def _fill(day: list[bool], start: int, end: int) -> None:
    day[start:end] = [True] * (end - start)


def _runs(span: list[bool]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, on in enumerate([*span, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


# ------------------------------------------------------------------ access levels


def level_values(table: Mapping[str, Any] | None, areas: Iterable[str]) -> FormValues:
    """A stored level as its matrix row shows it: the name, and for each area its schedules (a cell may hold
    several entries; none is "no access")."""
    table = table or {}
    cells: dict[str, list[str]] = {a: [] for a in areas}
    for e in table.get("entries") or []:
        if isinstance(e, Mapping) and e.get("area") in cells:
            cells[str(e["area"])].append(str(e.get("schedule", "")))
    return {"name": str(table.get("name", "")), "cells": cells}


def submitted_level(form: Any, areas: Iterable[str]) -> FormValues:
    """A matrix row as sent: ``name`` and, per area, the ``cell-AREA`` selects (repeated when a cell holds
    several entries)."""
    cells = {a: [str(v)[:64] for v in form.getlist(f"cell-{a}")][:20] for a in areas}
    return {"name": str(form.get("name") or "")[:200], "cells": cells}


def level_edits(prefix: str, values: FormValues, old: Mapping[str, Any] | None) -> dict[str, Any]:
    """The edits that make level ``prefix`` (``access_levels.lab``) what its matrix row says: its name and
    its entries (area + schedule), and nothing of any other level."""
    entries: list[dict[str, str]] = []
    for area, schedules in values["cells"].items():
        for schedule in schedules:
            entry = {"area": area, "schedule": schedule}
            if schedule and entry not in entries:
                entries.append(entry)
    name = values["name"].strip()
    if old is None:
        table: dict[str, Any] = {"name": name} if name else {}
        table["entries"] = inline_rows(entries)
        return {prefix: table}
    edits: dict[str, Any] = {}
    if name != str(old.get("name", "")) and (name or "name" in old):
        edits[f"{prefix}.name"] = name or None
    before = [{"area": str(e.get("area")), "schedule": str(e.get("schedule"))}
              for e in old.get("entries") or [] if isinstance(e, Mapping)]
    if sorted(map(_pair, entries)) != sorted(map(_pair, before)):
        edits[f"{prefix}.entries"] = inline_rows(entries) if entries else None
    return edits


def _pair(entry: Mapping[str, str]) -> tuple[str, str]:
    return entry["area"], entry["schedule"]


# ------------------------------------------------------------------ writing


def inline_rows(rows: list[dict[str, Any]]) -> Any:
    """A list of small tables written the way site.toml writes them, ``[{ area = "lab", schedule = "x" }]``
    (one per line when there are several), not as ``[[...]]`` tables at the end of the file."""
    import tomlkit

    array = tomlkit.array()
    for row in rows:
        item = tomlkit.inline_table()
        item.update(row)
        array.append(item)
    if len(rows) > 1:
        array.multiline(True)
    return array
