"""The site model: the vocabulary of DESIGN §2 as frozen dataclasses.

Everything here is plain data, built by ``doorkeep.config`` from the site
file and read by the decision function. Nothing mutates it: a change to the
site is a new ``Site``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, time
from enum import Enum

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class PersonKind(str, Enum):
    EMPLOYEE = "employee"
    CONTRACTOR = "contractor"
    VISITOR = "visitor"


class PersonState(str, Enum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class CredentialState(str, Enum):
    ACTIVE = "active"
    LOST = "lost"
    REVOKED = "revoked"


class OfflineMode(str, Enum):
    CACHE = "cache"
    DENY = "deny"


class AntiPassback(str, Enum):
    NONE = "none"
    SOFT = "soft"   # grant, and record a violation
    HARD = "hard"   # deny with anti_passback


class DoorKind(str, Enum):
    DOOR = "door"            # a leaf with a contact: an unlock time, forced and held-open alarms
    TURNSTILE = "turnstile"  # one passage per grant, counted by a passage sensor (docs/openings.md)
    LIFT = "lift"            # a cab reader enabling floor buttons: one decision per floor (docs/openings.md)


class DoorMode(str, Enum):
    NORMAL = "normal"
    UNLOCKED_ON_SCHEDULE = "unlocked_on_schedule"


@dataclass(frozen=True)
class Area:
    id: str
    name: str
    restricted: bool = False
    clearance: int = 0
    escort_required: bool = False
    two_person: bool = False
    anti_passback: AntiPassback = AntiPassback.NONE
    anti_passback_reset_min: float | None = None  # timed anti-passback: a presence older than this no longer counts
    max_occupancy: int | None = None


@dataclass(frozen=True)
class LiftFloor:
    """One floor a lift serves: an area, public while its schedule is open, and how the cab treats it offline."""

    area: str
    public_schedule: str | None = None   # the floor's button works without a badge while this schedule is open
    offline: OfflineMode | None = None   # with the server away: the lift's own ``offline`` unless set here


@dataclass(frozen=True)
class Door:
    """A passage from one area into another; an exit reader is a second door."""

    id: str
    name: str
    from_area: str
    to_area: str
    unlock_s: float = 5.0
    held_open_s: float = 30.0
    decision_timeout_ms: int = 1000
    offline: OfflineMode = OfflineMode.DENY
    pin_required: bool = False
    mode: DoorMode = DoorMode.NORMAL
    unlock_schedule: str | None = None   # with mode unlocked_on_schedule: the door stays unlocked while it is open
    first_person_in: bool = False        # ... but only once an authorised person has badged in that day
    prealarm_s: float = 10.0             # held-open pre-alarm this long before held_open_s; 0: none
    visitor_checkout: bool = False       # a visitor's pass granted here checks the visit out (server-side)
    interlock: str | None = None         # interlock group (mantrap): at most one of its doors open or unlocked
    emergency_release: bool = False      # held unlocked while its device's emergency input (fire panel) is active
    kind: DoorKind = DoorKind.DOOR       # turnstile: presence moves on the passage, not on the grant
    tailgate_s: float = 3.0              # turnstile: a passage with no grant this soon after one is a tailgate
    floors: tuple[LiftFloor, ...] = ()   # lift: the floors its buttons serve, in order (a lift has no from/to)

    @property
    def entered(self) -> tuple[str, ...]:
        """The areas this opening lets people into: a lift's floors, else its ``to_area``."""
        return tuple(f.area for f in self.floors) if self.kind is DoorKind.LIFT else (self.to_area,)


@dataclass(frozen=True)
class TimeWindow:
    """Days of the week and a local start/end; ``end`` of 24:00 is written as ``None``.

    An ``end`` at or before ``start`` spans midnight: the window starts on the
    listed day and ends on the next (see ``doorkeep.schedule``).
    """

    days: frozenset[str]
    start: time
    end: time | None


@dataclass(frozen=True)
class Schedule:
    id: str
    name: str
    windows: tuple[TimeWindow, ...]
    holidays: frozenset[date] = frozenset()


@dataclass(frozen=True)
class AccessEntry:
    area: str
    schedule: str


@dataclass(frozen=True)
class AccessLevel:
    id: str
    name: str
    entries: tuple[AccessEntry, ...]


@dataclass(frozen=True)
class Credential:
    """A card bound to a person. ``hash`` is HMAC-SHA256 under the site's credential key."""

    hash: str
    last4: str
    format: str
    person: str
    state: CredentialState = CredentialState.ACTIVE


@dataclass(frozen=True)
class Person:
    id: str
    name: str
    kind: PersonKind = PersonKind.EMPLOYEE
    clearance: int = 0
    access_levels: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset()
    state: PersonState = PersonState.ACTIVE
    valid_from: float | None = None      # for a visitor: the start of the visit window
    valid_until: float | None = None     # for a visitor: the end of the visit window
    pin_hash: str | None = None          # HMAC-SHA256 of "pin:" + PIN under the credential key
    host: str | None = None              # visitors: the employee they visit
    company: str | None = None           # visitors
    allowed_areas: tuple[str, ...] = ()  # visitors: the areas they may enter (instead of access levels)
    escort_required: bool = True         # visitors: needs an escort into restricted areas


@dataclass(frozen=True)
class Rules:
    """Site-wide rule settings."""

    escort_window_s: float = 30.0      # visitor and escort badge at the same door within this time
    two_person_window_s: float = 30.0  # the second authorised person badges within this time
    pin_max_attempts: int = 3          # wrong PINs in a row before the card is locked out of PIN doors
    pin_lockout_s: float = 300.0


@dataclass(frozen=True)
class AlarmSettings:
    """A site's alarm priorities and escalation times (site.toml ``[alarms]``): only what the site overrides;
    doorkeep/alarm_priority.py holds the defaults and resolves against them."""

    priority: dict[str, str] = field(default_factory=dict)           # alarm type -> high | medium | low
    escalate_after_s: dict[str, float] = field(default_factory=dict)  # priority -> seconds; 0: never


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    timezone: str
    areas: dict[str, Area] = field(default_factory=dict)
    doors: dict[str, Door] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)
    access_levels: dict[str, AccessLevel] = field(default_factory=dict)
    people: dict[str, Person] = field(default_factory=dict)
    credentials: dict[str, Credential] = field(default_factory=dict)  # keyed by hash
    rules: Rules = field(default_factory=Rules)
    # Lockdowns in force ("site" or area ids): set by the server, carried in the policy so that an
    # edge deciding on its own honours them too.
    lockdowns: frozenset[str] = frozenset()
    alarms: AlarmSettings = field(default_factory=AlarmSettings)  # desk priorities ([alarms]; server only)
