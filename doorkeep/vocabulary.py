"""One vocabulary: every event type, alarm type and reason code, declared once (DESIGN §9).

Before this module the same names lived in about six lists (the contract's decoder, the edge's published
events, supervision's alarm mapping, the desk's labels, the scenario verbs, the docs), and they drifted:
``reader_security`` was missing from two of them. Now each consumer derives what it needs from the tables
below, and ``tests/unit/test_vocabulary.py`` checks the rest (the docs' tables, every module that raises an
alarm) against them:

- ``doorkeep.contract.EVENT_TYPES``: the event types on the wire (:data:`WIRE_EVENT_TYPES`);
- ``edge.agent.PUBLISHED_DOOR_EVENTS`` / ``SNAPSHOT_EVENTS``: what the door state machine publishes, and which
  events carry a camera snapshot;
- ``server.supervision.EVENT_ALARMS`` / ``RESTORED_BY`` and every severity it raises with;
- ``server.intrusion`` and ``server.brokerlog``: their alarm names and severities;
- ``server.store.Store.raise_alarm``: refuses a type that is not declared here, or a severity other than the
  declared one, so an alarm nobody can label, document or expect in a scenario cannot be stored;
- the desk's alarm titles and reason labels (``server/web/alarms.py``, ``server/web/live.py``);
- the scenario format's ``expect_alarm`` types (``simulators/scenario.py``).

The reason codes stay the :class:`doorkeep.decision.Reason` enum (``decide()`` returns them); this module gives
each one the label the desk shows and derives its list from the enum, so a new reason without a label fails
at import.

Pure: standard library and ``doorkeep`` only (tests/unit/test_layout.py). Changing a name here is a wire and
store change (events and alarms already stored keep their names): add names, never rename them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from doorkeep.decision import Reason

# ------------------------------------------------------------------ alarm severities, sources, subjects

#: Alarm severities, most urgent first (docs/alarms.md "Fields").
ALARM = "alarm"      # security: someone got or may get through
TROUBLE = "trouble"  # equipment or supervision fault
WARNING = "warning"  # a rule broken but not enforced, a pre-alarm
INFO = "info"        # on record, nothing wrong at a door
SEVERITIES: tuple[str, ...] = (ALARM, TROUBLE, WARNING, INFO)

#: Which part of the system raises an alarm.
EDGE_EVENT = "edge_event"    # an edge's event of the same name (server/supervision.py, on ingest)
SUPERVISION = "supervision"  # the server watching its devices: liveness, event numbers, refused messages
INTRUSION = "intrusion"      # a pattern of stored events (server/intrusion.py)
SECURITY = "security"        # a security watcher outside the event stream (server/brokerlog.py)
VIOLATION = "violation"      # a rule broken but not enforced on a grant (an access event's detail.violation)
SOURCES: tuple[str, ...] = (EDGE_EVENT, SUPERVISION, INTRUSION, SECURITY, VIOLATION)

#: What an alarm is about (where the desk shows it; how a scenario names it).
DOOR = "door"
DEVICE = "device"
CREDENTIAL = "credential"
ADDRESS = "address"
SITE = "site"  # the site as a whole: the server's own duties (its backups)
SUBJECTS: tuple[str, ...] = (DOOR, DEVICE, CREDENTIAL, ADDRESS, SITE)

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")


@dataclass(frozen=True)
class AlarmType:
    """One alarm type: what the store keys on, the desk shows, the docs table lists and a scenario expects."""

    name: str
    label: str
    """The title the desk shows ("Door forced open")."""
    severity: str
    source: str
    subjects: tuple[str, ...]
    """What it can be about: ``door``, ``device``, ``credential``, ``address`` (``card_probing``: a door or a card)."""


@dataclass(frozen=True)
class EventType:
    """One event type, as an edge publishes it (or the server records it) and the server reacts to it."""

    name: str
    meaning: str
    wire: bool = True
    """It travels on MQTT (``doorkeep.event/1``). False: the server records it itself; an edge sending it is refused."""
    published: bool = True
    """An edge publishes it today. False: reserved, accepted by the decoder but never sent."""
    door_machine: bool = False
    """Emitted by the door state machine (edge/door.py), published by the agent for each door."""
    snapshot: bool = False
    """The edge attaches a camera snapshot (when the door has a working camera)."""
    raises: str | None = None
    """The alarm type it raises when the server stores it (its severity is the alarm type's)."""
    restores: tuple[str, ...] = ()
    """The alarm types at the same door it ends, when it happened after them (the door closed, the reader is back)."""


@dataclass(frozen=True)
class ReasonCode:
    """A decision reason (:class:`doorkeep.decision.Reason`) with the label the desk shows for it."""

    code: str
    label: str
    granted: bool


# ------------------------------------------------------------------ alarm types

_ALARMS: tuple[AlarmType, ...] = (
    # Raised by the edge's events (edge_event: the alarm has the event's name, one per event, at its door).
    AlarmType("forced_open", "Door forced open", ALARM, EDGE_EVENT, (DOOR,)),
    AlarmType("held_open", "Door held open", ALARM, EDGE_EVENT, (DOOR,)),
    AlarmType("held_open_warning", "Door held open (warning)", WARNING, EDGE_EVENT, (DOOR,)),
    AlarmType("relay_stuck", "Relay stuck", TROUBLE, EDGE_EVENT, (DOOR,)),
    AlarmType("tamper", "Tamper", ALARM, EDGE_EVENT, (DOOR,)),
    AlarmType("reader_offline", "Reader offline", TROUBLE, EDGE_EVENT, (DOOR,)),
    AlarmType("camera_offline", "Camera offline", TROUBLE, EDGE_EVENT, (DOOR,)),
    AlarmType("reader_security", "Reader security", ALARM, EDGE_EVENT, (DOOR,)),
    AlarmType("outbox_tampered", "Edge outbox tampered", ALARM, EDGE_EVENT, (DOOR,)),
    AlarmType("emergency_release", "Emergency release (door held unlocked)", ALARM, EDGE_EVENT, (DOOR,)),
    AlarmType("forced_passage", "Turnstile forced (passage without a grant)", ALARM, EDGE_EVENT, (DOOR,)),
    AlarmType("tailgate", "Tailgating (two passages on one grant)", ALARM, EDGE_EVENT, (DOOR,)),
    # A rule broken but not enforced on a grant (soft anti-passback): "V_violation" for each violation V.
    AlarmType("anti_passback_violation", "Anti-passback violation", WARNING, VIOLATION, (DOOR,)),
    # The server supervising its devices.
    AlarmType("device_offline", "Device offline", TROUBLE, SUPERVISION, (DEVICE,)),
    AlarmType("event_gap", "Events missing", TROUBLE, SUPERVISION, (DEVICE,)),
    AlarmType("sequence_reset", "Event numbering restarted", INFO, SUPERVISION, (DEVICE,)),
    AlarmType("device_misbehaving", "Device misbehaving", ALARM, SUPERVISION, (DEVICE,)),
    # The server supervising its own duties: a backup or its offsite copy failed (server/backup.py).
    AlarmType("backup_failed", "Backup failed", TROUBLE, SUPERVISION, (SITE,)),
    # A certificate of the site's PKI expires within 30 days or has expired (server/certificates.py): about the
    # site (CA, broker, server, an integration) or the device whose certificate it is.
    AlarmType("certificate_expiring", "Certificate expiring", TROUBLE, SUPERVISION, (SITE, DEVICE)),
    # Intrusion signals: patterns of stored events (server/intrusion.py).
    AlarmType("card_probing", "Card probing", ALARM, INTRUSION, (DOOR, CREDENTIAL)),
    AlarmType("pin_guessing", "PIN guessing", ALARM, INTRUSION, (DOOR,)),
    AlarmType("door_attack", "Door attack (forced and tampered)", ALARM, INTRUSION, (DOOR,)),
    # Security watchers outside the event stream.
    AlarmType("certificate_refused", "Certificate refused by the broker", ALARM, SECURITY, (ADDRESS,)),
)

#: Every alarm type by name, in declaration order.
ALARMS: Mapping[str, AlarmType] = MappingProxyType({a.name: a for a in _ALARMS})

# ------------------------------------------------------------------ event types

_EVENTS: tuple[EventType, ...] = (
    EventType("access", "a badge, granted or denied", snapshot=True),
    EventType("door_opened", "the door contact opened", door_machine=True),
    EventType("door_closed", "the door contact closed", door_machine=True,
              restores=("forced_open", "held_open", "held_open_warning")),
    EventType("forced_open", "the door opened while locked, with no grant or REX", door_machine=True, snapshot=True,
              raises="forced_open"),
    EventType("held_open", "an authorised opening lasted longer than the door's held_open_s", door_machine=True,
              raises="held_open"),
    EventType("held_open_warning", "pre-alarm: an authorised opening is about to be held open too long",
              door_machine=True, raises="held_open_warning"),
    EventType("tamper", "the tamper loop of the door's reader or enclosure changed", door_machine=True,
              snapshot=True, raises="tamper"),
    EventType("relay_stuck", "the door opened twice in a row while the lock was never released", door_machine=True,
              raises="relay_stuck"),
    EventType("rex", "the request-to-exit button was pressed", door_machine=True),
    EventType("passage", "a turnstile's passage sensor counted a person through on a grant (or a free passage)",
              door_machine=True),
    EventType("grant_unused", "a turnstile's grant (or a lift grant, with floor buttons wired) was not used within "
                              "its time and was cancelled", door_machine=True),
    EventType("floor_chosen", "a floor button was pressed in a lift cab on a grant: its people are on that floor",
              door_machine=True),
    EventType("tailgate", "a turnstile counted a second passage on one grant", door_machine=True, snapshot=True,
              raises="tailgate"),
    EventType("forced_passage", "a turnstile counted a passage with no grant, REX or hold", door_machine=True,
              snapshot=True, raises="forced_passage"),
    EventType("unlocked", "reserved: the lock was released (reported in the retained state today)",
              published=False, door_machine=True),
    EventType("relocked", "reserved: the lock closed again (reported in the retained state today)",
              published=False, door_machine=True),
    EventType("reader_offline", "the door's reader was lost or went silent", raises="reader_offline"),
    EventType("reader_online", "the door's reader is back", restores=("reader_offline",)),
    EventType("camera_offline", "the camera stopped delivering frames", raises="camera_offline"),
    EventType("camera_online", "the camera delivers frames again", restores=("camera_offline",)),
    EventType("reader_security", "an OSDP reader failed a Secure Channel check", raises="reader_security"),
    EventType("reader_key_installed", "an operator installed an OSDP reader's Secure Channel key"),
    EventType("outbox_tampered", "rows of the edge's outbox failed their MAC and were not sent",
              raises="outbox_tampered"),
    EventType("emergency_release", "the device's emergency input (fire panel) is active: the door is held unlocked",
              raises="emergency_release"),
    EventType("emergency_ended", "the emergency input is clear again: the door is back to its normal state",
              restores=("emergency_release",)),
    EventType("remote_unlock", "a signed unlock command released the door's lock"),
    EventType("command_rejected", "the edge refused a command"),
    EventType("lockdown", "a signed lockdown command reached the edge"),
    EventType("override_started", "a signed timed override (unlock or lock until a time) is in force at the door"),
    EventType("override_ended", "the door's timed override ended (its time came, released, replaced, locked, "
                                "lockdown) and the door is back to its normal state"),
    EventType("visitor_arrived", "the security desk checked a visitor in (recorded by the server)",
              wire=False, published=False),
)

#: Every event type by name, in declaration order.
EVENTS: Mapping[str, EventType] = MappingProxyType({e.name: e for e in _EVENTS})

# ------------------------------------------------------------------ reason codes

#: The label the desk shows for each reason code (docs/reason-codes.md, "desk shows").
_REASON_LABELS: dict[Reason, str] = {
    Reason.GRANTED: "Granted",
    Reason.GRANTED_ESCORTED: "Granted with an escort",
    Reason.GRANTED_TWO_PERSON: "Granted (second of two people)",
    Reason.GRANTED_OFFLINE: "Granted by the door offline (server unreachable)",
    Reason.UNKNOWN_CREDENTIAL: "Unknown card",
    Reason.CREDENTIAL_INACTIVE: "Card not active (lost, revoked)",
    Reason.PERSON_INACTIVE: "Cardholder not active (suspended, removed)",
    Reason.EXPIRED: "Access expired",
    Reason.NOT_YET_VALID: "Access not valid yet",
    Reason.OUTSIDE_SCHEDULE: "Outside the schedule",
    Reason.NO_ACCESS: "No access to this area",
    Reason.CLEARANCE_TOO_LOW: "Clearance too low",
    Reason.ESCORT_REQUIRED: "Visitor waiting for an escort",
    Reason.AWAITING_SECOND_PERSON: "Waiting for a second person",
    Reason.ANTI_PASSBACK: "Anti-passback (not seen leaving)",
    Reason.OCCUPANCY_FULL: "Area full",
    Reason.LOCKDOWN: "Lockdown",
    Reason.PIN_REQUIRED: "PIN required",
    Reason.WRONG_PIN: "Wrong PIN",
    Reason.PIN_LOCKED_OUT: "PIN locked out (too many wrong PINs)",
    Reason.OFFLINE_RESTRICTED: "Refused offline (server unreachable)",
    Reason.SERVER_TIMEOUT: "No answer from the server in time",
    Reason.UNKNOWN_DOOR: "Unknown door",
    Reason.NO_POLICY: "Door waiting for its first policy",
    Reason.PASS_INVALID: "Visitor pass not valid (forged, altered or unknown key)",
    Reason.INTERLOCK_BUSY: "Interlock busy (another door of the airlock is open)",
}
_unlabelled = [r.value for r in Reason if r not in _REASON_LABELS]
if _unlabelled:  # a programming error: the desk would show a raw code
    raise RuntimeError(f"reason codes without a desk label in doorkeep/vocabulary.py: {_unlabelled}")

#: Every reason code, in the order of the enum (derived from :class:`Reason`, never listed twice).
REASONS: Mapping[str, ReasonCode] = MappingProxyType(
    {r.value: ReasonCode(r.value, _REASON_LABELS[r], r.granted) for r in Reason})

#: The rules ``decide()`` may report as broken but not enforced on a grant (``Decision.violation``).
VIOLATIONS: tuple[str, ...] = (Reason.ANTI_PASSBACK.value,)

# ------------------------------------------------------------------ derived views


def violation_alarm(violation: str) -> str:
    """The alarm type of a rule broken but not enforced on a grant: ``anti_passback`` -> ``anti_passback_violation``."""
    return f"{violation}_violation"


#: Event types that travel on MQTT: what the contract's event decoder accepts.
WIRE_EVENT_TYPES: frozenset[str] = frozenset(e.name for e in _EVENTS if e.wire)
#: Event types the server records itself (never on the wire; an edge sending one is refused).
SERVER_EVENT_TYPES: frozenset[str] = frozenset(e.name for e in _EVENTS if not e.wire)
#: Door state-machine events the edge publishes (unlocked/relocked only change its retained state).
PUBLISHED_DOOR_EVENTS: frozenset[str] = frozenset(e.name for e in _EVENTS if e.door_machine and e.published)
#: Events the edge attaches a camera snapshot to.
SNAPSHOT_EVENTS: frozenset[str] = frozenset(e.name for e in _EVENTS if e.snapshot)
#: event type -> the alarm type it raises.
EVENT_ALARMS: Mapping[str, str] = MappingProxyType({e.name: e.raises for e in _EVENTS if e.raises})
#: event type -> the alarm types at the same door it ends.
RESTORED_BY: Mapping[str, tuple[str, ...]] = MappingProxyType({e.name: e.restores for e in _EVENTS if e.restores})


def alarms_from(*sources: str) -> tuple[str, ...]:
    """The alarm types raised by these sources, in declaration order."""
    return tuple(a.name for a in _ALARMS if a.source in sources)


def alarms_about(subject: str) -> tuple[str, ...]:
    """The alarm types that can be about ``subject`` (``door``, ``device``, ``credential``, ``address``)."""
    return tuple(a.name for a in _ALARMS if subject in a.subjects)


def severity(alarm_type: str) -> str:
    """The declared severity of an alarm type; ``KeyError`` for a type that is not declared."""
    return ALARMS[alarm_type].severity


def alarm_label(alarm_type: str) -> str:
    """The desk's title for an alarm type; an undeclared one (an old row) is spelled out from its name."""
    known = ALARMS.get(alarm_type)
    return known.label if known else alarm_type.replace("_", " ").capitalize()


def reason_label(code: str | None) -> str | None:
    """The desk's label for a reason code; an unknown code is shown as it is (never hidden), None stays None."""
    if code is None:
        return None
    known = REASONS.get(code)
    return known.label if known else code


def problems() -> list[str]:
    """What is inconsistent in the tables above (empty when sound); tests/unit/test_vocabulary.py asserts it."""
    found: list[str] = []
    for kind, names in (("alarm", [a.name for a in _ALARMS]), ("event", [e.name for e in _EVENTS])):
        found += [f"{kind} type {n!r} is declared twice" for n in {n for n in names if names.count(n) > 1}]
        found += [f"{kind} type {n!r} is not a lower-case identifier" for n in names if not _NAME.match(n)]
    for a in _ALARMS:
        if a.severity not in SEVERITIES:
            found.append(f"alarm {a.name}: severity {a.severity!r} is not one of {SEVERITIES}")
        if a.source not in SOURCES:
            found.append(f"alarm {a.name}: source {a.source!r} is not one of {SOURCES}")
        if not a.subjects or any(s not in SUBJECTS for s in a.subjects):
            found.append(f"alarm {a.name}: subjects {a.subjects!r} must be some of {SUBJECTS}")
        if not a.label.strip():
            found.append(f"alarm {a.name}: no desk label")
        if a.source == EDGE_EVENT and [e.name for e in _EVENTS if e.raises == a.name] != [a.name]:
            found.append(f"alarm {a.name}: an edge_event alarm is raised by the one event of its name")
        if a.source == VIOLATION and a.name not in {violation_alarm(v) for v in VIOLATIONS}:
            found.append(f"alarm {a.name}: not the alarm of a declared violation")
    for v in VIOLATIONS:
        if violation_alarm(v) not in ALARMS:
            found.append(f"violation {v}: its alarm {violation_alarm(v)} is not declared")
    for e in _EVENTS:
        for alarm in ((e.raises,) if e.raises else ()) + e.restores:
            if alarm not in ALARMS:
                found.append(f"event {e.name}: names alarm {alarm!r}, which is not declared")
        if e.raises in ALARMS and ALARMS[e.raises].source != EDGE_EVENT:
            found.append(f"event {e.name}: raises {e.raises}, which is not an edge_event alarm")
        if not e.wire and (e.published or e.door_machine or e.snapshot or e.raises):
            found.append(f"event {e.name}: a server-recorded event is not published by an edge")
    return found


__all__ = [
    "ADDRESS", "ALARM", "ALARMS", "CREDENTIAL", "DEVICE", "DOOR", "EDGE_EVENT", "EVENTS", "EVENT_ALARMS", "INFO",
    "INTRUSION", "PUBLISHED_DOOR_EVENTS", "REASONS", "RESTORED_BY", "SECURITY", "SERVER_EVENT_TYPES", "SEVERITIES",
    "SITE", "SNAPSHOT_EVENTS", "SOURCES", "SUBJECTS", "SUPERVISION", "TROUBLE", "VIOLATION", "VIOLATIONS", "WARNING",
    "WIRE_EVENT_TYPES", "AlarmType", "EventType", "ReasonCode", "alarm_label", "alarms_about", "alarms_from",
    "problems", "reason_label", "severity", "violation_alarm",
]
