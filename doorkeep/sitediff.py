"""What changed between two site documents (``site.toml`` texts), in words an administrator reads.

A site revision (server/siteadmin.py) is a whole ``site.toml``; what an
operator needs to see is not a text diff but which areas, doors, schedules
and access levels changed, and how. :func:`diff` compares the parsed
documents value by value and names each change by its dotted key
(``doors.lab_in.unlock_s: 5 -> 8``), so the history, the audit record and a
409 conflict all speak the same language. :func:`objects` groups changes by
the thing they belong to (``doors.lab_in``, ``rules``): two changes conflict
when they touch the same object.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

#: Top-level tables whose children are named objects (``[areas.lobby]``): a change belongs to the child.
NAMED_TABLES = ("areas", "doors", "schedules", "access_levels")


@dataclass(frozen=True)
class Change:
    """One value added, removed or changed; ``old``/``new`` are None for an addition/removal."""

    key: str
    old: Any = None
    new: Any = None

    @property
    def kind(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        return "changed"

    @property
    def object(self) -> str:
        """The area, door, schedule or level (``doors.lab_in``), or the top-level table (``rules``)."""
        parts = self.key.split(".")
        return ".".join(parts[:2]) if parts[0] in NAMED_TABLES and len(parts) > 1 else parts[0]

    def line(self) -> str:
        if self.kind == "added":
            return f"+ {self.key} = {_show(self.new)}"
        if self.kind == "removed":
            return f"- {self.key} (was {_show(self.old)})"
        return f"~ {self.key}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (date, datetime, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + "}"
    return str(value)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value; arrays of scalars and arrays of tables are leaves (compared whole)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def diff_data(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    a, b = flatten(old), flatten(new)
    changes = [Change(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    return changes


def diff(old_text: str, new_text: str) -> list[Change]:
    """The changes from one site.toml text to another (both must parse; comments and layout do not count)."""
    return diff_data(tomllib.loads(old_text), tomllib.loads(new_text))


def objects(changes: list[Change]) -> set[str]:
    return {c.object for c in changes}


def object_names(data: dict[str, Any]) -> set[str]:
    """Every object a parsed site document holds: ``areas.lobby`` … for named tables, else top-level names."""
    names = set()
    for k, v in data.items():
        if k in NAMED_TABLES and isinstance(v, dict):
            names.update(f"{k}.{child}" for child in v)
        else:
            names.add(k)
    return names


def summary(old_text: str, new_text: str, changes: list[Change] | None = None) -> str:
    """One line for the history: ``doors.lab_in changed; areas.gym added; schedules.night removed``."""
    old, new = tomllib.loads(old_text), tomllib.loads(new_text)
    changes = diff_data(old, new) if changes is None else changes
    if not changes:
        return "no change"
    before, after = object_names(old), object_names(new)
    parts: list[str] = []
    for obj in dict.fromkeys(c.object for c in changes):
        kind = "added" if obj not in before else "removed" if obj not in after else "changed"
        parts.append(f"{obj} {kind}")
    return "; ".join(parts)
