"""The decision function: who may pass which door, and why not.

``decide`` is pure: the server calls it with its full state and the edge
calls it with its cached policy when the server cannot be reached, so both
give the same answer for the same inputs. It never mutates the state;
``commit`` applies a decision's effects (presence, partners waiting at a
door, PIN failure counts, first-person-in) and both sides call
``decide`` then ``commit``, so they stay consistent.

Every decision carries one reason code from :class:`Reason`. The rules are
checked in this order and the first that fails gives the reason (DESIGN §3,
docs/reason-codes.md):

unknown door → credential → person → validity window → lockdown → access
level and schedule (visitors: allowed areas) → clearance → visitor escort →
two-person → anti-passback → occupancy → PIN.

The two *waiting* outcomes, ``escort_required`` and
``awaiting_second_person``, are not failures of the person but a partner
missing at the door. They are reported only when every other rule passes
for the person badging: a card with a wrong PIN, a hard anti-passback
violation or a full area never starts a wait, and a partner waiting at a
door is always someone who would be let in on their own merits.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Iterable, Iterator, Self

from doorkeep.model import (
    AccessEntry,
    AccessLevel,
    AntiPassback,
    Area,
    CredentialState,
    Door,
    DoorKind,
    DoorMode,
    LiftFloor,
    OfflineMode,
    Person,
    PersonKind,
    PersonState,
    Site,
)
from doorkeep.schedule import is_open, local_date

RESPONDER = "responder"
ESCORT = "escort"
OUTSIDE = "outside"

# Pending.kind values
PENDING_VISITOR = "visitor"        # a visitor waiting for an escort
PENDING_ESCORT = "escort"          # an escort who just went in, a visitor may follow
PENDING_TWO_PERSON = "two_person"  # the first of two people at a two-person door


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
    PIN_LOCKED_OUT = "pin_locked_out"
    OFFLINE_RESTRICTED = "offline_restricted"
    SERVER_TIMEOUT = "server_timeout"
    UNKNOWN_DOOR = "unknown_door"
    NO_POLICY = "no_policy"  # the edge, never decide(): no site file and no signed policy held yet
    PASS_INVALID = "pass_invalid"  # the edge, never decide(): a visitor pass that is malformed or not signed by the site
    INTERLOCK_BUSY = "interlock_busy"  # the edge, never decide(): another door of the door's interlock is open or unlocked

    @property
    def granted(self) -> bool:
        return self.value.startswith("granted")


@dataclass(frozen=True)
class AccessRequest:
    door: str
    credential_hash: str
    pin_hash: str | None = None
    """``doorkeep.credentials.pin_hash(key, PIN)`` of the PIN typed at the reader, if any."""
    floor: str | None = None
    """At a lift in destination-dispatch mode: the floor (area) asked for; the person moves there on a grant."""


@dataclass(frozen=True)
class Decision:
    reason: Reason
    person: str | None = None
    companions: tuple[str, ...] = ()
    """Other people who pass with this badge (escort/visitor, the first of two); they move with the person."""
    violation: str | None = None
    """A rule broken but not enforced (soft anti-passback: ``"anti_passback"``) on a granted decision."""
    floors: tuple[str, ...] = ()
    """At a lift, on a grant: the floors (areas) the badge enables, in the lift's order; empty elsewhere."""

    @property
    def granted(self) -> bool:
        return self.reason.granted


@dataclass(frozen=True)
class Presence:
    """Where the doors last saw a person go, and when. Frozen: replace it, never edit it in place."""

    area: str
    since: float


class PresenceMap(dict[str, Presence]):
    """Person id -> :class:`Presence`, keeping a count per area as it changes.

    A plain dict in every other respect (it compares equal to one, copies and
    pickles as itself), so occupancy stays O(1) however many people a site
    has, instead of a scan of everyone's presence at every badge.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._counts: dict[str, int] = {}
        self.update(*args, **kwargs)

    def count(self, area: str) -> int:
        return self._counts.get(area, 0)

    def _inc(self, area: str) -> None:
        self._counts[area] = self._counts.get(area, 0) + 1

    def _dec(self, area: str) -> None:
        left = self._counts.get(area, 0) - 1
        if left > 0:
            self._counts[area] = left
        else:
            self._counts.pop(area, None)

    def __setitem__(self, person: str, presence: Presence) -> None:
        old = dict.get(self, person)
        if old is not None:
            self._dec(old.area)
        super().__setitem__(person, presence)
        self._inc(presence.area)

    def __delitem__(self, person: str) -> None:
        old = self[person]
        super().__delitem__(person)
        self._dec(old.area)

    def pop(self, person: str, *default: Any) -> Any:  # type: ignore[override]
        if person in self:
            old = super().pop(person)
            self._dec(old.area)
            return old
        if default:
            return default[0]
        raise KeyError(person)

    def popitem(self) -> tuple[str, Presence]:
        person, old = super().popitem()
        self._dec(old.area)
        return person, old

    def clear(self) -> None:
        super().clear()
        self._counts.clear()

    def update(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        for person, presence in dict(*args, **kwargs).items():
            self[person] = presence

    def setdefault(self, person: str, default: Presence) -> Presence:  # type: ignore[override]
        if person not in self:
            self[person] = default
        return self[person]

    def __ior__(self, other: Any) -> Self:  # type: ignore[override]
        self.update(other)
        return self

    def copy(self) -> PresenceMap:
        return PresenceMap(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (PresenceMap, (dict(self),))


@dataclass
class Pending:
    person: str
    at: float
    kind: str
    """``"visitor"`` | ``"escort"`` | ``"two_person"``."""


@dataclass
class DecisionState:
    """The mutable facts the rules read. ``decide`` only reads it; ``commit`` (and operators) change it."""

    presence: dict[str, Presence] = field(default_factory=PresenceMap)
    """Person id -> the area the doors last saw them go into (a :class:`PresenceMap`; a plain dict is converted)."""
    lockdown_site: bool = False
    lockdown_areas: set[str] = field(default_factory=set)
    pending: dict[str, list[Pending]] = field(default_factory=dict)
    """Door id -> recent badges waiting for a partner at that door, oldest first."""
    pin_failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Credential hash -> (wrong PINs in a row, locked out of PIN doors until this epoch)."""
    first_in: dict[str, str] = field(default_factory=dict)
    """Door id -> local ISO date on which an authorised person first badged in while its schedule was open."""

    def __post_init__(self) -> None:
        if not isinstance(self.presence, PresenceMap):
            self.presence = PresenceMap(self.presence)

    def occupancy(self, area: str) -> int:
        """How many people the doors last saw going into ``area``."""
        if isinstance(self.presence, PresenceMap):
            return self.presence.count(area)
        return sum(1 for p in self.presence.values() if p.area == area)  # a plain dict assigned later

    def locked_down(self, area: str) -> bool:
        return self.lockdown_site or area in self.lockdown_areas


# ------------------------------------------------------------------ decide


def decide(request: AccessRequest, site: Site, state: DecisionState, now: float) -> Decision:
    """The decision for one badge at one door at ``now`` (UTC epoch seconds). Never mutates ``state``."""
    door = site.doors.get(request.door)
    if door is None:
        return Decision(Reason.UNKNOWN_DOOR)
    cred = site.credentials.get(request.credential_hash)
    if cred is None:
        return Decision(Reason.UNKNOWN_CREDENTIAL)
    if cred.state is not CredentialState.ACTIVE:
        return Decision(Reason.CREDENTIAL_INACTIVE, cred.person)
    person = site.people.get(cred.person)
    if person is None:
        return Decision(Reason.PERSON_INACTIVE, cred.person)
    if door.kind is DoorKind.LIFT:
        return _decide_lift(request, door, person, site, state, now)
    return _decide_into(request, door, person, site, state, now)


def _decide_into(request: AccessRequest, door: Door, person: Person, site: Site, state: DecisionState, now: float,
                 *, passback: bool = True) -> Decision:
    """The rules for ``person`` going through ``door`` into its ``to_area``, from their own merits on."""
    area = _area(site, door.to_area)
    refused = _own_merits(person, area, site, state, now)
    if refused is not None:
        return Decision(refused, person.id)

    visitor = person.kind is PersonKind.VISITOR
    companions: list[str] = []
    granted = Reason.GRANTED
    waiting: Reason | None = None

    # Visitor escort rule.
    if visitor:
        if _needs_escort(person, area):
            escort = _waiting_escort(person, door, area, site, state, now)
            if escort is None:
                waiting = Reason.ESCORT_REQUIRED
            else:
                companions.append(escort)
                granted = Reason.GRANTED_ESCORTED
    else:
        visitors = _waiting_visitors(person, door, area, site, state, now)
        if visitors:
            companions.extend(visitors)
            granted = Reason.GRANTED_ESCORTED

    # Two-person rule. A visitor who needs an escort has one (or waits for
    # one): the escort passed the two-person rule themselves on the way in.
    if area.two_person and not (visitor and _needs_escort(person, area)):
        partner = _waiting_partner(person, door, area, site, state, now)
        if partner is None:
            waiting = waiting or Reason.AWAITING_SECOND_PERSON
        else:
            companions.insert(0, partner)
            granted = Reason.GRANTED_TWO_PERSON

    # Anti-passback.
    violation = None
    if passback and _passback(person.id, door, area, state, now):
        if area.anti_passback is AntiPassback.HARD:
            return Decision(Reason.ANTI_PASSBACK, person.id)
        violation = Reason.ANTI_PASSBACK.value

    # Occupancy: everyone who would move in, counted once.
    if area.max_occupancy is not None and RESPONDER not in person.roles:
        movers = [person.id] if waiting else [person.id, *companions]
        newcomers = [p for p in movers if not _inside(state, p, area.id)]
        if newcomers and state.occupancy(area.id) + len(newcomers) > area.max_occupancy:
            return Decision(Reason.OCCUPANCY_FULL, person.id)

    # PIN.
    if door.pin_required:
        refused = _pin_rule(request, person, site, state, now)
        if refused is not None:
            return Decision(refused, person.id)

    if waiting is not None:
        return Decision(waiting, person.id)
    return Decision(granted, person.id, tuple(companions), violation)


def _decide_lift(request: AccessRequest, lift: Door, person: Person, site: Site, state: DecisionState,
                 now: float) -> Decision:
    """One decision per floor, as if each floor were a door from the cab into its area (docs/openings.md "Lifts").

    Each floor is decided by the same rules as a door (access level and schedule, clearance, lockdown of
    the floor's area, visitor escort, two-person, occupancy, PIN), on a door with the lift's id, so a partner
    waiting in the cab pairs on any floor. Anti-passback does not apply: the cab does not know which floor
    the person boarded on. The badge enables every floor granted; with none, the answer is a partner still
    awaited (escort, second person) if any floor waits for one, else the refusal of the first floor that is not
    public now (a public floor needs no badge, so its refusal would explain nothing).
    """
    floors = [f for f in lift.floors if request.floor is None or f.area == request.floor]
    if not floors:
        return Decision(Reason.NO_ACCESS, person.id)  # a destination the lift does not serve
    outcomes = [(f, _decide_into(request, replace(lift, to_area=f.area), person, site, state, now, passback=False))
                for f in floors]
    granted = [d for _, d in outcomes if d.granted]
    if granted:
        reasons = {d.reason for d in granted}
        reason = next((r for r in (Reason.GRANTED_TWO_PERSON, Reason.GRANTED_ESCORTED) if r in reasons),
                      Reason.GRANTED)
        companions = tuple(dict.fromkeys(c for d in granted for c in d.companions))
        return Decision(reason, person.id, companions,
                        floors=tuple(f.area for f, d in outcomes if d.granted))
    for _, d in outcomes:
        if d.reason in (Reason.ESCORT_REQUIRED, Reason.AWAITING_SECOND_PERSON):
            return d
    public = set(public_floors(lift, site, state, now))
    return next((d for f, d in outcomes if f.area not in public), outcomes[0][1])


def public_floors(lift: Door, site: Site, state: DecisionState, now: float) -> tuple[str, ...]:
    """The floors of ``lift`` whose buttons work without a badge at ``now``: their schedule is open and neither
    the site nor the floor's area is locked down."""
    out = []
    for f in lift.floors:
        schedule = site.schedules.get(f.public_schedule) if f.public_schedule else None
        if schedule is not None and not state.locked_down(f.area) and is_open(schedule, now, site.timezone):
            out.append(f.area)
    return tuple(out)


def offline_floors(lift: Door) -> tuple[str, ...]:
    """The floors of ``lift`` an edge may enable from its cache when the server cannot be reached: each
    floor's own ``offline``, else the lift's."""
    return tuple(f.area for f in lift.floors if (f.offline or lift.offline) is OfflineMode.CACHE)


def offline_site(site: Site, lift: Door) -> Site:
    """``site`` as an edge decides ``lift`` from its cache: the lift serves only the floors it may enable without
    the server (:func:`offline_floors`). Deciding on this view, not filtering a decision made on all floors,
    keeps a grant's companions and rule to what the allowed floors earned: an escort's grant whose visitor may
    go only to a floor set to ``deny`` does not take the visitor along."""
    allowed = set(offline_floors(lift))
    limited = replace(lift, floors=tuple(f for f in lift.floors if f.area in allowed))
    return replace(site, doors={**site.doors, lift.id: limited})


def lift_floor(lift: Door, area: str) -> LiftFloor | None:
    """The floor of ``lift`` that is ``area``, or None if the lift does not serve it."""
    return next((f for f in lift.floors if f.area == area), None)


def offline_decision(decision: Decision) -> Decision:
    """The same decision as the edge reports it when it decided from its cache: any grant becomes ``granted_offline``."""
    if not decision.granted:
        return decision
    return replace(decision, reason=Reason.GRANTED_OFFLINE)


def _area(site: Site, area_id: str) -> Area:
    return site.areas.get(area_id) or Area(area_id, area_id)


def _own_merits(person: Person, area: Area, site: Site, state: DecisionState, now: float) -> Reason | None:
    """Person state, validity window, lockdown, access and clearance: whether they may enter on their own."""
    if person.state is not PersonState.ACTIVE:
        return Reason.PERSON_INACTIVE
    if person.valid_from is not None and now < person.valid_from:
        return Reason.NOT_YET_VALID
    if person.valid_until is not None and now >= person.valid_until:
        return Reason.EXPIRED
    if state.locked_down(area.id) and RESPONDER not in person.roles:
        return Reason.LOCKDOWN
    if person.kind is PersonKind.VISITOR:
        # Visitors are held to their allowed areas (and may always leave), not
        # to access levels or clearance: the escort rule covers them instead.
        if area.id != OUTSIDE and area.id not in person.allowed_areas:
            return Reason.NO_ACCESS
        return None
    refused = _access_level_rule(site, person.access_levels, area.id, now)
    if refused is not None:
        return refused
    if person.clearance < area.clearance:
        return Reason.CLEARANCE_TOO_LOW
    return None


def covering_entries(site: Site, levels: Iterable[str], area: str) -> Iterator[tuple[AccessLevel, AccessEntry]]:
    """Each (level, entry) among ``levels`` that names ``area``, in the person's order of levels.

    The access-level rule reads exactly this selection, and ``doorkeep.explain`` names the levels and
    schedules it yields when the rule refuses, so the words shown at the desk cannot drift from the rule.
    """
    for level_id in levels:
        level = site.access_levels.get(level_id)
        if level is None:
            continue
        for entry in level.entries:
            if entry.area == area:
                yield level, entry


def _access_level_rule(site: Site, levels: tuple[str, ...], area: str, now: float) -> Reason | None:
    """None if any of the person's levels covers the area now; outside_schedule if one covers it at other times."""
    covered = False
    for _, entry in covering_entries(site, levels, area):
        covered = True
        schedule = site.schedules.get(entry.schedule)
        if schedule is not None and is_open(schedule, now, site.timezone):
            return None
    return Reason.OUTSIDE_SCHEDULE if covered else Reason.NO_ACCESS


def _needs_escort(visitor: Person, area: Area) -> bool:
    return area.escort_required or (area.restricted and visitor.escort_required)


def _may_escort(escort: Person, visitor: Person, area: Area, site: Site, state: DecisionState, now: float) -> bool:
    """The visitor's host, or someone with the escort role, who may enter the area on their own merits."""
    if escort.id == visitor.id or escort.kind is PersonKind.VISITOR:
        return False
    if escort.id != visitor.host and ESCORT not in escort.roles:
        return False
    return _own_merits(escort, area, site, state, now) is None


def _recent(state: DecisionState, door: Door, kind: str, window: float, now: float) -> list[Pending]:
    return [p for p in state.pending.get(door.id, ()) if p.kind == kind and 0 <= now - p.at <= window]


def _waiting_escort(visitor: Person, door: Door, area: Area, site: Site, state: DecisionState,
                    now: float) -> str | None:
    """The escort who went in at this door within the escort window (the earliest eligible one)."""
    for p in _recent(state, door, PENDING_ESCORT, site.rules.escort_window_s, now):
        escort = site.people.get(p.person)
        if escort is not None and _may_escort(escort, visitor, area, site, state, now):
            return escort.id
    return None


def _waiting_visitors(escort: Person, door: Door, area: Area, site: Site, state: DecisionState,
                      now: float) -> list[str]:
    """Visitors waiting at this door for an escort this person may be."""
    out: list[str] = []
    for p in _recent(state, door, PENDING_VISITOR, site.rules.escort_window_s, now):
        visitor = site.people.get(p.person)
        if (visitor is not None and p.person not in out and visitor.kind is PersonKind.VISITOR
                and _needs_escort(visitor, area) and _own_merits(visitor, area, site, state, now) is None
                and _may_escort(escort, visitor, area, site, state, now)):
            out.append(visitor.id)
    return out


def _waiting_partner(person: Person, door: Door, area: Area, site: Site, state: DecisionState,
                     now: float) -> str | None:
    """A different person, still authorised, who badged first at this two-person door within the window."""
    for p in _recent(state, door, PENDING_TWO_PERSON, site.rules.two_person_window_s, now):
        if p.person == person.id:
            continue
        first = site.people.get(p.person)
        if first is not None and _own_merits(first, area, site, state, now) is None:
            return first.id
    return None


def _inside(state: DecisionState, person: str, area: str) -> bool:
    seen = state.presence.get(person)
    return seen is not None and seen.area == area


def _passback(person: str, door: Door, area: Area, state: DecisionState, now: float) -> bool:
    """True if the person is known to be somewhere other than the area this door leads out of."""
    if area.anti_passback is AntiPassback.NONE:
        return False
    seen = state.presence.get(person)
    if seen is None or seen.area == door.from_area:
        return False
    reset = area.anti_passback_reset_min
    return reset is None or now - seen.since < reset * 60.0


def _pin_rule(request: AccessRequest, person: Person, site: Site, state: DecisionState, now: float) -> Reason | None:
    _, locked_until = state.pin_failures.get(request.credential_hash, (0, 0.0))
    if now < locked_until:
        return Reason.PIN_LOCKED_OUT
    if request.pin_hash is None:
        return Reason.PIN_REQUIRED
    if person.pin_hash is None or not hmac.compare_digest(person.pin_hash, request.pin_hash):
        return Reason.WRONG_PIN
    return None


# ------------------------------------------------------------ for explanations


def area_of(site: Site, area_id: str) -> Area:
    """The area a door leads into as the rules see it (an area the site does not list: a plain one)."""
    return _area(site, area_id)


def own_merits(person: Person, area: Area, site: Site, state: DecisionState, now: float) -> Reason | None:
    """Whether ``person`` may enter ``area`` on their own at ``now`` (None) or the reason they may not."""
    return _own_merits(person, area, site, state, now)


def may_escort(escort: Person, visitor: Person, area: Area, site: Site, state: DecisionState, now: float) -> bool:
    """Whether ``escort`` counts as an escort for ``visitor`` into ``area`` at ``now`` (docs/reason-codes.md)."""
    return _may_escort(escort, visitor, area, site, state, now)


def in_passback(person: str, door: Door, area: Area, state: DecisionState, now: float) -> bool:
    """Whether the anti-passback rule finds ``person`` somewhere other than where ``door`` leads out of."""
    return _passback(person, door, area, state, now)


# ------------------------------------------------------------------ commit


def commit(request: AccessRequest, decision: Decision, site: Site, state: DecisionState, now: float) -> None:
    """Apply a decision's effects to ``state``: presence, partners waiting at the door, PIN counts, first-in."""
    door = site.doors.get(request.door)
    if door is None:
        return
    _prune(state, site, now, request.door)
    person = site.people.get(decision.person) if decision.person else None
    reason = decision.reason

    if door.pin_required:
        _count_pin(request, decision, site, state, now)

    if person is None:
        return
    if decision.granted:
        movers = (person.id, *decision.companions)
        destination = _destination(door, request, decision)
        if destination is not None:
            for pid in movers:
                state.presence[pid] = Presence(destination, now)
        # Partners consumed by this passage are no longer waiting.
        _drop_pending(state, door.id, set(movers))
        entered = decision.floors if door.kind is DoorKind.LIFT else (door.to_area,)
        if person.kind is not PersonKind.VISITOR and any(
                (a := _area(site, aid)).escort_required or a.restricted for aid in entered):
            _add_pending(state, door.id, Pending(person.id, now, PENDING_ESCORT))
        if door.first_person_in and _schedule_open(site, door, now):
            state.first_in[door.id] = local_date(now, site.timezone).isoformat()
    elif reason is Reason.ESCORT_REQUIRED:
        _add_pending(state, door.id, Pending(person.id, now, PENDING_VISITOR))
    elif reason is Reason.AWAITING_SECOND_PERSON:
        _add_pending(state, door.id, Pending(person.id, now, PENDING_TWO_PERSON))


def pass_through(site: Site, state: DecisionState, door_id: str, people: Iterable[str], now: float) -> list[str]:
    """A turnstile's passage sensor counted the grant that named ``people`` through ``door_id``: move them now.

    At a turnstile a grant is a credit for one passage (docs/openings.md); ``commit`` leaves presence alone
    there, so anti-passback and occupancy count passages, not grants. Returns the people moved (those the site
    knows); a door the site does not have moves nobody.
    """
    door = site.doors.get(door_id)
    if door is None:
        return []
    moved = [p for p in people if p in site.people]
    for pid in moved:
        state.presence[pid] = Presence(door.to_area, now)
    return moved


def _destination(door: Door, request: AccessRequest, decision: Decision) -> str | None:
    """Where a grant moves people at once: a door's ``to_area``; at a turnstile nowhere yet (the passage moves
    them, :func:`pass_through`); at a lift the floor a destination-dispatch request named, else nowhere yet
    (the floor button chosen moves them, :func:`choose_floor`)."""
    if door.kind is DoorKind.TURNSTILE:
        return None
    if door.kind is DoorKind.LIFT:
        return request.floor if request.floor is not None and request.floor in decision.floors else None
    return door.to_area


def choose_floor(site: Site, state: DecisionState, lift_id: str, floor: str, people: Iterable[str],
                 now: float) -> list[str]:
    """A floor button pressed in the cab used the grant that named ``people``: they move to ``floor`` now.

    Returns the people moved (those the site knows); a lift the site does not have, or a floor it does not
    serve, moves nobody.
    """
    lift = site.doors.get(lift_id)
    if lift is None or lift.kind is not DoorKind.LIFT or lift_floor(lift, floor) is None:
        return []
    moved = [p for p in people if p in site.people]
    for pid in moved:
        state.presence[pid] = Presence(floor, now)
    return moved


def _count_pin(request: AccessRequest, decision: Decision, site: Site, state: DecisionState, now: float) -> None:
    reason = decision.reason
    key = request.credential_hash
    if reason is Reason.WRONG_PIN:
        count, _ = state.pin_failures.get(key, (0, 0.0))
        count += 1
        if count >= site.rules.pin_max_attempts:
            state.pin_failures[key] = (0, now + site.rules.pin_lockout_s)
        else:
            state.pin_failures[key] = (count, 0.0)
    elif reason.granted or reason in (Reason.ESCORT_REQUIRED, Reason.AWAITING_SECOND_PERSON):
        # PIN is the last rule: these outcomes mean the PIN was right.
        state.pin_failures.pop(key, None)


#: Badges remembered per door while they wait for a partner. A door flooded with badges keeps the newest
#: ones, so its decisions stay cheap (every decision at the door walks this list).
MAX_PENDING_PER_DOOR = 64


def _add_pending(state: DecisionState, door: str, entry: Pending) -> None:
    """Record a badge waiting at a door, replacing that person's earlier entry of the same kind."""
    entries = [p for p in state.pending.get(door, ()) if not (p.person == entry.person and p.kind == entry.kind)]
    entries.append(entry)
    state.pending[door] = entries[-MAX_PENDING_PER_DOOR:]


def _drop_pending(state: DecisionState, door: str, people: set[str]) -> None:
    entries = [p for p in state.pending.get(door, ()) if p.person not in people]
    if entries:
        state.pending[door] = entries
    else:
        state.pending.pop(door, None)


def _prune(state: DecisionState, site: Site, now: float, door: str) -> None:
    """Forget badges older than their window at this door: they can no longer pair with anyone.

    Only the door being decided is pruned (each decision must not walk every door); other doors'
    stale entries are ignored by their window and bounded by MAX_PENDING_PER_DOOR.
    """
    windows = {PENDING_VISITOR: site.rules.escort_window_s, PENDING_ESCORT: site.rules.escort_window_s,
               PENDING_TWO_PERSON: site.rules.two_person_window_s}
    if door not in state.pending:
        return
    kept = [p for p in state.pending[door] if now - p.at <= windows.get(p.kind, 0.0)]
    if kept:
        state.pending[door] = kept
    else:
        del state.pending[door]


# -------------------------------------------------------------- door modes


def _schedule_open(site: Site, door: Door, now: float) -> bool:
    schedule = site.schedules.get(door.unlock_schedule) if door.unlock_schedule else None
    return schedule is not None and is_open(schedule, now, site.timezone)


def door_unlocked_now(door_id: str, site: Site, state: DecisionState, now: float) -> bool:
    """Whether a door in mode ``unlocked_on_schedule`` should be held unlocked at ``now``.

    True while its ``unlock_schedule`` is open and neither the site nor the
    door's target area is locked down; with ``first_person_in``, only once an
    authorised person has been granted at that door on today's local date
    while the schedule was open.
    """
    door = site.doors.get(door_id)
    if door is None or door.mode is not DoorMode.UNLOCKED_ON_SCHEDULE:
        return False
    if state.locked_down(door.to_area) or not _schedule_open(site, door, now):
        return False
    if door.first_person_in:
        return state.first_in.get(door.id) == local_date(now, site.timezone).isoformat()
    return True
