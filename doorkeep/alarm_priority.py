"""How urgent each alarm type is for the people at the desk, and when an unanswered alarm escalates.

Severity (doorkeep/vocabulary.py) says what *kind* of problem an alarm is and never changes; priority says how
loudly the desk asks for attention, and a site may choose it (site.toml ``[alarms]``, docs/alarms.md
"Priority"). The defaults follow what control rooms expect: someone getting or trying to get through (a door
forced, a tamper switch, the intrusion and reader-security signals, an outbox edited on disk, a device
certificate refused) is ``high``; a door held open is
``medium``; a device that stopped answering, or a certificate within 30 days of expiry, is ``medium`` unless the
site says otherwise; everything else
(equipment trouble, pre-alarms, notes) is ``low``. An alarm nobody acknowledges within its priority's
``escalate_after_s`` escalates: the desk marks it and plays a second, distinct sound.

Pure: the site model keeps only a site's overrides (:class:`doorkeep.model.AlarmSettings`); this module
resolves them against the defaults and parses the ``[alarms]`` table for ``doorkeep.config``.
"""

from __future__ import annotations

import difflib
from types import MappingProxyType
from typing import Any, Mapping

from doorkeep import vocabulary
from doorkeep.model import AlarmSettings

__all__ = ["DEFAULT_ESCALATE_AFTER_S", "DEFAULT_PRIORITY", "HIGH", "LOW", "MEDIUM", "PRIORITIES",
           "escalate_after_s", "parse_alarm_settings", "priority_of"]

HIGH = "high"
MEDIUM = "medium"
LOW = "low"
#: Most urgent first (the desk sorts and counts in this order).
PRIORITIES: tuple[str, ...] = (HIGH, MEDIUM, LOW)

# Tampered outbox rows and a refused device certificate are attacks on the system itself, as high as a door.
_HIGH_TYPES = frozenset({"forced_open", "tamper", "reader_security", "door_attack", "outbox_tampered",
                         "certificate_refused", "emergency_release", "forced_passage", "tailgate"}) | frozenset(
    a.name for a in vocabulary.ALARMS.values() if a.source == vocabulary.INTRUSION)
# A certificate about to lapse is medium: weeks to act, but an expired CA, broker or server certificate cuts
# every door off from the server, and only the desk sees it coming (server/certificates.py).
_MEDIUM_TYPES = frozenset({"held_open", "device_offline", "device_misbehaving", "certificate_expiring"})

#: Every declared alarm type's default priority.
DEFAULT_PRIORITY: Mapping[str, str] = MappingProxyType({
    name: HIGH if name in _HIGH_TYPES else MEDIUM if name in _MEDIUM_TYPES else LOW
    for name in vocabulary.ALARMS})

#: Seconds an alarm may stay unacknowledged before it escalates, per priority; 0: never.
#: Two minutes for a forced door is what a guard needs to look at the camera and send someone.
DEFAULT_ESCALATE_AFTER_S: Mapping[str, float] = MappingProxyType({HIGH: 120.0, MEDIUM: 600.0, LOW: 0.0})

#: The longest escalation time accepted (a day): longer is the same as never.
MAX_ESCALATE_S = 86_400.0


def priority_of(settings: AlarmSettings, alarm_type: str) -> str:
    """The priority of an alarm type at this site; an undeclared type (an old stored row) is ``low``."""
    return settings.priority.get(alarm_type) or DEFAULT_PRIORITY.get(alarm_type, LOW)


def escalate_after_s(settings: AlarmSettings, priority: str) -> float:
    """How long an alarm of this priority may stay unacknowledged before it escalates; 0: never."""
    value = settings.escalate_after_s.get(priority)
    return DEFAULT_ESCALATE_AFTER_S.get(priority, 0.0) if value is None else value


def parse_alarm_settings(t: Any) -> AlarmSettings:
    """site.toml ``[alarms]`` (a ``doorkeep.config._Table``, or None when absent) as the site's overrides.

    Every problem is reported on the table with its dotted key and the fix (``alarms.priority.held_opn:
    unknown alarm type``, did you mean ``held_open``?); the bad key then keeps its default.
    """
    if t is None:
        return AlarmSettings()
    priority: dict[str, str] = {}
    table = t.sub("priority")
    if table is not None:
        table.used.update(table.data)
        for name, value in table.data.items():
            if name not in vocabulary.ALARMS:
                close = difflib.get_close_matches(name, list(vocabulary.ALARMS), n=1, cutoff=0.75)
                table.error(name, "unknown alarm type", f"did you mean `{close[0]}`?" if close else
                            f"use one of: {', '.join(vocabulary.ALARMS)} (docs/alarms.md \"Types\")")
            elif value not in PRIORITIES:
                table.error(name, f"unknown priority {value!r}", f"use one of: {', '.join(PRIORITIES)}")
            else:
                priority[name] = value
    escalate: dict[str, float] = {}
    raw = t.data.get("escalate_after_s")
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        # One number: for high and medium alarms (low ones keep their default: never).
        value = _seconds(t, "escalate_after_s", raw)
        t.used.add("escalate_after_s")
        if value is not None:
            escalate.update({HIGH: value, MEDIUM: value})
    elif raw is not None:
        table = t.sub("escalate_after_s")
        if table is not None:
            table.used.update(table.data)
            for name, value in table.data.items():
                if name not in PRIORITIES:
                    table.error(name, "unknown priority", f"use one of: {', '.join(PRIORITIES)}")
                    continue
                seconds = _seconds(table, name, value)
                if seconds is not None:
                    escalate[name] = seconds
    t.done()
    return AlarmSettings(priority=priority, escalate_after_s=escalate)


def _seconds(t: Any, name: str, value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_ESCALATE_S:
        t.error(name, f"must be a number of seconds from 0 to {MAX_ESCALATE_S:g}, got {value!r}",
                f"write e.g. `{name} = 120`; 0 means never escalate")
        return None
    return float(value)
