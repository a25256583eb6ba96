"""Invariants of the rules over random sequences of badges (hypothesis).

Each example is a random walk on the rules test site: people badge at
random doors, seconds apart, with or without a PIN, while lockdowns come and
go; every decision is applied with ``commit`` as the server and edge do.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from doorkeep.decision import AccessRequest, Decision, DecisionState, Pending, Presence, Reason, commit, decide
from doorkeep.model import AntiPassback, CredentialState, PersonKind, Site
from tests.unit.test_rules import SITE, UNKNOWN_CARD, WED_NOON, request

SETTINGS = settings(max_examples=200, deadline=None)

PEOPLE = sorted(SITE.people)
NON_RESPONDERS = sorted(p.id for p in SITE.people.values() if "responder" not in p.roles)
DOORS = sorted(SITE.doors) + ["garage"]
AREAS = sorted(SITE.areas)
PINS = [None, "1234", "5678", "0000"]


@dataclass(frozen=True)
class Badge:
    who: str
    door: str
    dt: float
    pin: str | None
    lockdown: str | None  # None: leave as is; "off", "site" or an area id: set before the badge


# Small pools of people and doors, so that partners meet at the same door within the windows.
VISITOR_PLAY = ["vic", "vic2", "vfree", "host", "esc", "esc_biz", "plain", "emp", "low"]
VISITOR_DOORS = ["lab", "lab", "suite", "suite", "vault", "lab_out", "vault_pin", "lobby_out"]
CROWD = ["emp", "emp2", "emp3", "host", "esc", "plain", "vic", "vic2", "pinny", "pinny2"]
CROWD_DOORS = ["gym_in", "gym_out", "gym_pin", "suite", "cage", "lobby_in", "hard_in", "hard_out"]


def badges(people: list[str], doors: list[str] = DOORS, lockdowns: bool = True) -> st.SearchStrategy[list[Badge]]:
    lock = st.sampled_from([None, None, None, "off", "site", *AREAS]) if lockdowns else st.just(None)
    # Gaps around the 30 s partner windows, the 10 min timed anti-passback and the 300 s PIN lockout.
    gap = st.one_of(st.sampled_from([0.0, 1.0, 2.0, 5.0, 10.0, 29.5, 30.0, 30.5, 299.0, 301.0, 600.0]),
                    st.floats(0, 700, allow_nan=False))
    who = st.sampled_from(people + ["?"])
    one = st.builds(Badge, who, st.sampled_from(doors), gap, st.sampled_from(PINS), lock).map(lambda b: [b])
    # Two people at the same door a few seconds apart: the escort and two-person rules need partners.
    pair = st.builds(
        lambda a, b, door, gap1, gap2, pin1, pin2: [Badge(a, door, gap1, pin1, None), Badge(b, door, gap2, pin2, None)],
        who, who, st.sampled_from(doors), gap, st.floats(0, 35, allow_nan=False), st.sampled_from(PINS),
        st.sampled_from(PINS))
    return st.lists(st.one_of(one, pair), min_size=1, max_size=25).map(lambda chunks: [b for c in chunks for b in c])


def walk(steps: list[Badge], site: Site = SITE, state: DecisionState | None = None):  # type: ignore[no-untyped-def]
    """Yield (badge, request, decision, state before, now) for every step, committing as it goes."""
    state = state if state is not None else DecisionState()
    now = WED_NOON
    for b in steps:
        now += b.dt
        if b.lockdown == "off":
            state.lockdown_site = False
            state.lockdown_areas.clear()
        elif b.lockdown == "site":
            state.lockdown_site = True
        elif b.lockdown is not None:
            state.lockdown_areas.add(b.lockdown)
        req = request(b.who, b.door, b.pin)
        before = copy.deepcopy(state)
        decision = decide(req, site, state, now)
        yield b, req, decision, before, now
        commit(req, decision, site, state, now)


def movers(d: Decision) -> list[str]:
    return [p for p in (d.person, *d.companions) if p is not None]


@SETTINGS
@given(badges(PEOPLE))
def test_revoked_lost_or_expired_credential_is_never_granted(steps: list[Badge]) -> None:
    for _, req, d, _, now in walk(steps):
        cred = SITE.credentials.get(req.credential_hash)
        if cred is None or cred.state is not CredentialState.ACTIVE:
            assert not d.granted
            continue
        person = SITE.people[cred.person]
        if person.valid_until is not None and now >= person.valid_until:
            assert not d.granted
        if person.valid_from is not None and now < person.valid_from:
            assert not d.granted


@SETTINGS
@given(st.one_of(badges(PEOPLE), badges(VISITOR_PLAY + ["resp", "vresp"], VISITOR_DOORS)))
def test_lockdown_grants_only_responders(steps: list[Badge]) -> None:
    for _, req, d, before, _ in walk(steps):
        door = SITE.doors.get(req.door)
        if door is None or not d.granted:
            continue
        if before.lockdown_site or door.to_area in before.lockdown_areas:
            for pid in movers(d):
                assert "responder" in SITE.people[pid].roles, (d, pid)


@SETTINGS
@given(st.one_of(badges(VISITOR_PLAY, VISITOR_DOORS, lockdowns=False), badges(PEOPLE)))
def test_visitor_is_never_granted_alone_into_an_escort_area(steps: list[Badge]) -> None:
    for _, req, d, _, _now in walk(steps):
        door = SITE.doors.get(req.door)
        if door is None or not d.granted:
            continue
        area = SITE.areas[door.to_area]
        for pid in movers(d):
            visitor = SITE.people[pid]
            if visitor.kind is not PersonKind.VISITOR:
                continue
            if not (area.escort_required or (area.restricted and visitor.escort_required)):
                continue
            escorts = [SITE.people[e] for e in movers(d) if e != pid]
            assert any(e.kind is not PersonKind.VISITOR and (e.id == visitor.host or "escort" in e.roles)
                       for e in escorts), (d, pid)


@SETTINGS
@given(st.one_of(badges(CROWD, CROWD_DOORS, lockdowns=False), badges(NON_RESPONDERS)))
def test_occupancy_never_exceeds_its_limit_through_granted_passages(steps: list[Badge]) -> None:
    limited = {a.id: a.max_occupancy for a in SITE.areas.values() if a.max_occupancy is not None}
    assert limited
    state = DecisionState()
    for _ in walk(steps, state=state):
        for area, limit in limited.items():
            assert state.occupancy(area) <= limit
    for area in AREAS:  # the running per-area counts agree with a scan of everyone's presence
        assert state.occupancy(area) == sum(1 for p in state.presence.values() if p.area == area)


@SETTINGS
@given(st.one_of(badges(CROWD, CROWD_DOORS), badges(PEOPLE)))
def test_hard_anti_passback_is_never_granted_out_of_place(steps: list[Badge]) -> None:
    for _, req, d, before, now in walk(steps):
        door = SITE.doors.get(req.door)
        if door is None or not d.granted or d.person is None:
            continue
        area = SITE.areas[door.to_area]
        seen = before.presence.get(d.person)
        if area.anti_passback is AntiPassback.HARD and seen is not None and seen.area != door.from_area:
            assert area.anti_passback_reset_min is not None
            assert now - seen.since >= area.anti_passback_reset_min * 60


@SETTINGS
@given(st.one_of(badges(["pinny", "pinny2", "nopin", "emp"], ["pin", "vault_pin", "gym_pin", "lobby_in"]),
                 badges(PEOPLE)))
def test_pin_doors_grant_only_with_the_right_pin(steps: list[Badge]) -> None:
    for b, req, d, _, _ in walk(steps):
        door = SITE.doors.get(req.door)
        if door is not None and door.pin_required and d.granted:
            person = SITE.people[d.person or ""]
            assert req.pin_hash is not None and req.pin_hash == person.pin_hash, b


# -------------------------------------------------------- decide is pure


presences = st.dictionaries(st.sampled_from(PEOPLE), st.builds(Presence, st.sampled_from(AREAS),
                                                                  st.floats(WED_NOON - 3600, WED_NOON)), max_size=8)
pendings = st.dictionaries(
    st.sampled_from(DOORS),
    st.lists(st.builds(Pending, st.sampled_from(PEOPLE), st.floats(WED_NOON - 60, WED_NOON),
                       st.sampled_from(["visitor", "escort", "two_person"])), max_size=4),
    max_size=4)
states = st.builds(
    DecisionState,
    presence=presences,
    lockdown_site=st.booleans(),
    lockdown_areas=st.sets(st.sampled_from(AREAS), max_size=3),
    pending=pendings,
    pin_failures=st.dictionaries(st.sampled_from([request(p, "pin").credential_hash for p in PEOPLE] + [UNKNOWN_CARD]),
                                 st.tuples(st.integers(0, 5), st.floats(WED_NOON - 600, WED_NOON + 600)), max_size=3),
    first_in=st.dictionaries(st.sampled_from(DOORS), st.sampled_from(["2026-03-24", "2026-03-25"]), max_size=2),
)


@SETTINGS
@given(states, st.sampled_from(PEOPLE + ["?"]), st.sampled_from(DOORS), st.sampled_from(PINS),
       st.floats(0, 3600, allow_nan=False))
def test_decide_never_mutates_state(state: DecisionState, who: str, door: str, pin: str | None, dt: float) -> None:
    before = copy.deepcopy(state)
    req: AccessRequest = request(who, door, pin)
    first = decide(req, SITE, state, WED_NOON + dt)
    assert state == before
    assert decide(req, SITE, state, WED_NOON + dt) == first  # and gives the same answer twice
    assert isinstance(first.reason, Reason)
