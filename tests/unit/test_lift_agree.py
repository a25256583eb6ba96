"""The server and the edge agree at a lift, and a lift is its floors as doors (hypothesis).

Each example is a random site with a lift (random floors, areas, levels, schedules, visitors, public floors and a
PIN or not) and a random walk of badges at the cab, with lockdowns coming and going and floors chosen. The
server decides and commits on its state (server/directory.py ``Directory.decide``); the edge sends the request
and follows the answer on its own state (edge/agent.py ``_follow_server``), both over the real wire messages.
Before every badge the edge, deciding alone on its state (``_decide_locally``, before its offline filter), must
give the server's answer, and after it both states must be equal: otherwise an edge that loses the server
grants what the server would refuse. And a lift's grant enables exactly the floors a plain door into each floor
(same person, same state, no anti-passback) would grant.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, replace
from datetime import datetime, time, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from doorkeep.clock import iso_ms
from doorkeep.contract import DecisionMsg, RequestMsg
from doorkeep.credentials import card_hash, last4, pin_hash
from doorkeep.decision import AccessRequest, Decision, DecisionState, Presence, Reason, choose_floor, commit, decide
from doorkeep.model import (
    WEEKDAYS,
    AccessEntry,
    AccessLevel,
    AntiPassback,
    Area,
    Credential,
    Door,
    DoorKind,
    LiftFloor,
    OfflineMode,
    Person,
    PersonKind,
    Schedule,
    Site,
    TimeWindow,
)

SETTINGS = settings(max_examples=150, deadline=None)

KEY = b"A" * 32
PIN = "1234"
LIFT = "lift"
START = datetime(2026, 3, 25, 6, 30, tzinfo=timezone.utc).timestamp()  # a Wednesday morning, GMT
FLOOR_POOL = ["f0", "f1", "f2", "f3", "f4"]
AREA_POOL = ["outside", *FLOOR_POOL]
EMPLOYEES = ["e0", "e1", "e2", "e3"]
VISITORS = ["v0", "v1"]
HOSTS = {"v0": "e0", "v1": "e1"}  # fixed, so that the walks can bring a visitor and their host together
PEOPLE = EMPLOYEES + VISITORS
LEVELS = ["l0", "l1", "l2"]  # l0: every area around the clock (partners need people who may enter)
ALL_DAYS = frozenset(WEEKDAYS)
SCHEDULES = {
    "always": Schedule("always", "Always", (TimeWindow(ALL_DAYS, time(0), None),)),
    "business": Schedule("business", "Business", (TimeWindow(frozenset(WEEKDAYS[:5]), time(7), time(19)),)),
    "night": Schedule("night", "Night", (TimeWindow(ALL_DAYS, time(19), time(7)),)),
    "never": Schedule("never", "Never", ()),
}
UNKNOWN_CARD = card_hash(KEY, "em4100", "0FFFFFFFFF")


def number(person: str) -> str:
    return "0F" + hashlib.sha256(person.encode()).hexdigest()[:8].upper()


CARDS = {p: card_hash(KEY, "em4100", number(p)) for p in PEOPLE}


# ------------------------------------------------------------- random sites


areas = st.builds(
    Area, st.just(""), st.just(""),
    restricted=st.booleans(),
    clearance=st.sampled_from([0, 0, 0, 1, 2]),
    escort_required=st.booleans(),
    two_person=st.sampled_from([False, False, True]),
    anti_passback=st.sampled_from(list(AntiPassback)),
    anti_passback_reset_min=st.sampled_from([None, 1.0]),
    max_occupancy=st.sampled_from([None, None, 1, 2]),
)
schedule_ids = st.sampled_from(["always", "always", "always", "business", "night", "never"])


@st.composite
def sites(draw: st.DrawFn) -> Site:
    site_areas = {a: replace(draw(areas), id=a, name=a) for a in AREA_POOL}
    site_areas["outside"] = Area("outside", "Outside")
    floor_ids = draw(st.lists(st.sampled_from(FLOOR_POOL), min_size=1, max_size=len(FLOOR_POOL), unique=True))
    floors = tuple(LiftFloor(f, draw(st.sampled_from([None, None, "always", "business", "night"])),
                             draw(st.sampled_from([None, OfflineMode.CACHE, OfflineMode.DENY]))) for f in floor_ids)
    lift = Door(LIFT, "Lift", "", "", kind=DoorKind.LIFT, floors=floors,
                pin_required=draw(st.sampled_from([False, False, True])),
                offline=draw(st.sampled_from(list(OfflineMode))))
    levels = {lid: AccessLevel(lid, lid, tuple(AccessEntry(a, s) for a, s in draw(
        st.lists(st.tuples(st.sampled_from(AREA_POOL), schedule_ids), min_size=1, max_size=6))))
              for lid in LEVELS}
    levels["l0"] = AccessLevel("l0", "Everywhere", tuple(AccessEntry(a, "always") for a in AREA_POOL))
    people = {}
    for pid in EMPLOYEES:
        people[pid] = Person(pid, pid, clearance=draw(st.integers(0, 2)),
                             access_levels=tuple(draw(st.lists(st.sampled_from(LEVELS), min_size=1, max_size=2,
                                                               unique=True))),
                             roles=frozenset(draw(st.sets(st.sampled_from(["escort", "responder"])))),
                             pin_hash=draw(st.sampled_from([pin_hash(KEY, PIN), None])))
    for pid in VISITORS:
        people[pid] = Person(pid, pid, kind=PersonKind.VISITOR, host=HOSTS[pid],
                             allowed_areas=tuple(draw(st.lists(st.sampled_from(FLOOR_POOL), min_size=1, max_size=4,
                                                               unique=True))),
                             escort_required=draw(st.booleans()),
                             pin_hash=draw(st.sampled_from([pin_hash(KEY, PIN), None])))
    creds = {CARDS[p]: Credential(CARDS[p], last4(number(p)), "em4100", p) for p in PEOPLE}
    return Site("t", "Lift site", "Europe/London", site_areas, {LIFT: lift}, dict(SCHEDULES), levels, people, creds)


@dataclass(frozen=True)
class Step:
    who: str
    dt: float
    pin: str | None
    floor: str | None  # destination dispatch: the floor asked for (maybe one the lift does not serve)
    lockdown: str | None  # None: leave as is; "off", "site" or an area id: set before the badge
    press: int | None  # after a grant without a dispatched floor: which of its floors is chosen, if any


# Mostly seconds apart (partners must meet within the 30 s windows), at times hours (the schedules' edges).
gaps = st.one_of(st.sampled_from([0.0, 1.0, 5.0, 10.0, 29.5, 30.5, 61.0]), st.floats(0, 30, allow_nan=False),
                 st.floats(0, 4 * 3600, allow_nan=False))
one = st.builds(
    Step,
    st.sampled_from(PEOPLE + ["?"]),
    gaps,
    st.sampled_from([None, PIN, PIN, "0000"]),
    st.sampled_from([None] * 10 + ["outside", "roof", *FLOOR_POOL]),
    st.sampled_from([None] * 16 + ["off", "off", "site", *FLOOR_POOL]),
    st.sampled_from([None, 0, 1, 2]),
).map(lambda s: [s])
# Two people in the cab seconds apart: a visitor and their host (either first), or two colleagues (two-person).
pair = st.builds(
    lambda who, gap, second_gap, pins, floors, press: [Step(who[0], gap, pins[0], floors[0], None, press[0]),
                                                       Step(who[1], second_gap, pins[1], floors[1], None, press[1])],
    st.sampled_from([("v0", "e0"), ("e0", "v0"), ("v1", "e1"), ("e1", "v1"), ("v0", "e2"), ("e2", "e3"),
                     ("e3", "e2"), ("e1", "e2")]),
    gaps,
    st.floats(0, 35, allow_nan=False),
    st.tuples(*[st.sampled_from([None, PIN, PIN])] * 2),
    st.tuples(*[st.sampled_from([None] * 6 + FLOOR_POOL)] * 2),
    st.tuples(*[st.sampled_from([None, 0, 1])] * 2),
)
steps = st.lists(st.one_of(one, pair), min_size=1, max_size=12).map(lambda chunks: [s for c in chunks for s in c])
presences = st.dictionaries(st.sampled_from(PEOPLE), st.builds(Presence, st.sampled_from(AREA_POOL),
                                                              st.floats(START - 3600, START)), max_size=4)


# ------------------------------------------------------------------ the walk


def card_of(who: str) -> str:
    return UNKNOWN_CARD if who == "?" else CARDS[who]


def set_lockdown(state: DecisionState, op: str | None) -> None:
    if op == "off":
        state.lockdown_site = False
        state.lockdown_areas.clear()
    elif op == "site":
        state.lockdown_site = True
    elif op is not None:
        state.lockdown_areas.add(op)


def wire_request(step: Step, n: int, now: float) -> RequestMsg:
    """What the edge puts on the wire for the badge (edge/agent.py)."""
    return RequestMsg(transaction=f"tx-{n}", door=LIFT, credential_hash=card_of(step.who), credential_last4="0000",
                      credential_format="em4100", ts=iso_ms(now),
                      pin_hash=pin_hash(KEY, step.pin) if step.pin is not None else None, floor=step.floor)


def wire_decision(req: RequestMsg, d: Decision, site: Site, now: float) -> DecisionMsg:
    """The server's answer as server/bus.py publishes it."""
    door = site.doors.get(req.door)
    return DecisionMsg(transaction=req.transaction, door=req.door, granted=d.granted, reason=d.reason.value,
                       person=d.person, unlock_s=door.unlock_s if door else 5.0, ts=iso_ms(now),
                       violation=d.violation, companions=d.companions if d.granted else (),
                       grant=d.reason.value if d.granted else None, floors=d.floors if d.granted else ())


@SETTINGS
@given(sites(), steps, presences)
def test_the_edge_following_the_server_decides_and_remembers_as_the_server_does(
        site: Site, walk: list[Step], presence: dict[str, Presence]) -> None:
    server = DecisionState(presence=dict(presence))
    edge = copy.deepcopy(server)
    now = START
    for n, step in enumerate(walk):
        now += step.dt
        set_lockdown(server, step.lockdown)
        set_lockdown(edge, step.lockdown)
        sent = wire_request(step, n, now)
        edge_req = AccessRequest(sent.door, sent.credential_hash, sent.pin_hash, sent.floor)
        alone = decide(edge_req, site, edge, now)  # what the edge would say without the server

        got = RequestMsg.decode(sent.encode())
        server_req = AccessRequest(got.door, got.credential_hash, got.pin_hash, got.floor)
        decision = decide(server_req, site, server, now)
        commit(server_req, decision, site, server, now)
        assert alone == decision, (step, alone, decision)

        answer = DecisionMsg.decode(wire_decision(got, decision, site, now).encode())
        commit(edge_req, Decision(Reason(answer.reason), answer.person, tuple(answer.companions),
                                  violation=answer.violation, floors=tuple(answer.floors)), site, edge, now)
        assert edge == server, step

        if decision.granted and step.floor is None and step.press is not None:
            chosen = decision.floors[step.press % len(decision.floors)]
            movers = [p for p in (decision.person, *decision.companions) if p is not None]
            assert choose_floor(site, server, LIFT, chosen, movers, now) == movers
            assert choose_floor(site, edge, LIFT, chosen, movers, now) == movers
            assert edge == server
            assert all(server.presence[p] == Presence(chosen, now) for p in movers)


def plain_doors(site: Site) -> dict[str, Site]:
    """Per floor of the lift: the site with the lift replaced by a plain door (same id, so partners waiting in the
    cab count) into that floor, and anti-passback off everywhere."""
    lift = site.doors[LIFT]
    no_apb = {a: replace(area, anti_passback=AntiPassback.NONE) for a, area in site.areas.items()}
    return {f.area: replace(site, areas=no_apb, doors={LIFT: Door(LIFT, "Door", "", f.area,
                                                                  pin_required=lift.pin_required)})
            for f in lift.floors}


@SETTINGS
@given(sites(), steps, presences)
def test_a_lift_grant_enables_exactly_the_floors_a_door_into_each_would_grant(
        site: Site, walk: list[Step], presence: dict[str, Presence]) -> None:
    lift = site.doors[LIFT]
    as_doors = plain_doors(site)
    state = DecisionState(presence=dict(presence))
    now = START
    for n, step in enumerate(walk):
        now += step.dt
        set_lockdown(state, step.lockdown)
        req = AccessRequest(LIFT, card_of(step.who), pin_hash(KEY, step.pin) if step.pin is not None else None,
                            step.floor)
        decision = decide(req, site, state, now)
        asked = [f.area for f in lift.floors if step.floor is None or f.area == step.floor]
        doors = {f: decide(req, as_doors[f], state, now) for f in asked}
        granted = tuple(f for f in asked if doors[f].granted)
        assert decision.floors == granted, (step, decision, doors)
        assert decision.granted == bool(granted)
        if decision.granted:
            assert set(decision.companions) == {c for f in granted for c in doors[f].companions}
            assert len(set(decision.companions)) == len(decision.companions)
            assert decision.person not in decision.companions
            assert decision.violation is None, "a cab never reports anti-passback"
        commit(req, decision, site, state, now)
        if decision.granted and step.floor is None and step.press is not None:
            chosen = decision.floors[step.press % len(decision.floors)]
            choose_floor(site, state, LIFT, chosen, [p for p in (decision.person, *decision.companions) if p], now)
