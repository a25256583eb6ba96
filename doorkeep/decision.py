"""The decision function: who may pass which door, and why not.

``decide`` is pure: the server calls it with its full state and, later, the
edge calls it with its cached policy when the server cannot be reached, so
both give the same answer for the same inputs. Every decision carries one
reason code from :class:`Reason`; the first failing rule gives it.

Rules checked so far, in order: credential → person → validity window →
access level and schedule. The remaining rules of DESIGN §3 (lockdown,
clearance, visitors, two-person, anti-passback, occupancy, PIN) slot in
between, in the documented order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from doorkeep.model import CredentialState, PersonState, Site
from doorkeep.schedule import is_open


class Reason(str, Enum):
    """The fixed vocabulary of decision reasons (documented in docs/reason-codes.md)."""

    GRANTED = "granted"
    GRANTED_ESCORTED = "granted_escorted"
    GRANTED_TWO_PERSON = "granted_two_person"
    GRANTED_OFFLINE = "granted_offline"
    UNKNOWN_CREDENTIAL = "unknown_credential"
    CREDENTIAL_INACTIVE = "credential_inactive"
    PERSON_INACTIVE = "person_inactive"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    OUTSIDE_SCHEDULE = "outside_schedule"
    NO_ACCESS = "no_access"
    CLEARANCE_TOO_LOW = "clearance_too_low"
    ESCORT_REQUIRED = "escort_required"
    AWAITING_SECOND_PERSON = "awaiting_second_person"
    ANTI_PASSBACK = "anti_passback"
    OCCUPANCY_FULL = "occupancy_full"
    LOCKDOWN = "lockdown"
    PIN_REQUIRED = "pin_required"
    WRONG_PIN = "wrong_pin"
    OFFLINE_RESTRICTED = "offline_restricted"
    SERVER_TIMEOUT = "server_timeout"
    UNKNOWN_DOOR = "unknown_door"

    @property
    def granted(self) -> bool:
        return self.value.startswith("granted")


@dataclass(frozen=True)
class AccessRequest:
    door: str
    credential_hash: str
    pin: str | None = None


@dataclass(frozen=True)
class Decision:
    reason: Reason
    person: str | None = None

    @property
    def granted(self) -> bool:
        return self.reason.granted


@dataclass
class DecisionState:
    """Mutable facts the rules read (presence, lockdowns, pending escorts). Empty for now."""

    presence: dict[str, str] = field(default_factory=dict)


def decide(request: AccessRequest, site: Site, state: DecisionState, now: float) -> Decision:
    door = site.doors.get(request.door)
    if door is None:
        return Decision(Reason.UNKNOWN_DOOR)
    cred = site.credentials.get(request.credential_hash)
    if cred is None:
        return Decision(Reason.UNKNOWN_CREDENTIAL)
    person = site.people.get(cred.person)
    if cred.state is not CredentialState.ACTIVE:
        return Decision(Reason.CREDENTIAL_INACTIVE, cred.person)
    if person is None or person.state is not PersonState.ACTIVE:
        return Decision(Reason.PERSON_INACTIVE, cred.person)
    if person.valid_from is not None and now < person.valid_from:
        return Decision(Reason.NOT_YET_VALID, person.id)
    if person.valid_until is not None and now >= person.valid_until:
        return Decision(Reason.EXPIRED, person.id)
    return _access_level_rule(site, person.access_levels, door.to_area, now, person.id)


def _access_level_rule(site: Site, levels: tuple[str, ...], area: str, now: float, person: str) -> Decision:
    """Granted if any of the person's levels covers the area now; outside_schedule if one covers it at other times."""
    covered = False
    for level_id in levels:
        level = site.access_levels.get(level_id)
        if level is None:
            continue
        for entry in level.entries:
            if entry.area != area:
                continue
            covered = True
            schedule = site.schedules.get(entry.schedule)
            if schedule is not None and is_open(schedule, now, site.timezone):
                return Decision(Reason.GRANTED, person)
    return Decision(Reason.OUTSIDE_SCHEDULE if covered else Reason.NO_ACCESS, person)
