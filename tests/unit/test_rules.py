"""The full rule set, table-driven: every reason code and the interactions between rules.

Each row is a sequence of badges on one site, each applied with ``decide``
then ``commit`` (as the server and the edge do), and the expected outcome of
every badge. Times are seconds after the row's start (Wednesday 2026-03-25
12:00 in London, GMT, unless the row says otherwise).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time

import pytest

from doorkeep.credentials import card_hash, last4, pin_hash
from doorkeep.decision import (
    AccessRequest,
    Decision,
    DecisionState,
    Pending,
    Presence,
    PresenceMap,
    Reason,
    commit,
    decide,
    door_unlocked_now,
    offline_decision,
)
from doorkeep.model import (
    WEEKDAYS,
    AccessEntry,
    AccessLevel,
    AntiPassback,
    Area,
    Credential,
    CredentialState,
    Door,
    DoorMode,
    Person,
    PersonKind,
    PersonState,
    Rules,
    Schedule,
    Site,
    TimeWindow,
)

KEY = b"r" * 32
ALL_DAYS = frozenset(WEEKDAYS)


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


WED_NOON = utc(2026, 3, 25, 12, 0)  # Wednesday, GMT: local time = UTC
RULES = Rules(escort_window_s=30.0, two_person_window_s=30.0, pin_max_attempts=3, pin_lockout_s=300.0)


def number(person: str) -> str:
    """A distinct 10-hex-digit EM4100 number per person id."""
    return "0F" + hashlib.sha256(person.encode()).hexdigest()[:8].upper()


def card(person: str) -> str:
    return card_hash(KEY, "em4100", number(person))


UNKNOWN_CARD = card_hash(KEY, "em4100", "0FFFFFFFFF")

AREAS = [
    Area("outside", "Outside"),
    Area("lobby", "Lobby"),
    Area("lab", "Lab", restricted=True, clearance=3),
    Area("suite", "Client suite", escort_required=True, max_occupancy=2),
    Area("vault", "Vault", restricted=True, clearance=5, two_person=True),
    Area("gym", "Gym", max_occupancy=2),
    Area("soft", "Soft APB floor", anti_passback=AntiPassback.SOFT),
    Area("hard", "Hard APB floor", anti_passback=AntiPassback.HARD),
    Area("timed", "Timed APB floor", anti_passback=AntiPassback.HARD, anti_passback_reset_min=10),
    Area("secure", "PIN room"),
    Area("cage", "Full, hard APB", anti_passback=AntiPassback.HARD, max_occupancy=1),
]

DOORS = [
    Door("lobby_in", "Lobby in", "outside", "lobby"),
    Door("lobby_out", "Lobby out", "lobby", "outside"),
    Door("lab", "Lab", "lobby", "lab"),
    Door("lab_out", "Lab out", "lab", "lobby"),
    Door("suite", "Suite", "lobby", "suite"),
    Door("vault", "Vault", "lobby", "vault"),
    Door("vault_pin", "Vault (PIN)", "lobby", "vault", pin_required=True),
    Door("gym_in", "Gym in", "lobby", "gym"),
    Door("gym_out", "Gym out", "gym", "lobby"),
    Door("soft_in", "Soft in", "lobby", "soft"),
    Door("hard_in", "Hard in", "lobby", "hard"),
    Door("hard_out", "Hard out", "hard", "lobby"),
    Door("timed_in", "Timed in", "lobby", "timed"),
    Door("pin", "PIN room", "lobby", "secure", pin_required=True),
    Door("gym_pin", "Gym (PIN)", "lobby", "gym", pin_required=True),
    Door("cage", "Cage", "lobby", "cage"),
    Door("front", "Front (first person in)", "outside", "lobby", mode=DoorMode.UNLOCKED_ON_SCHEDULE,
         unlock_schedule="business", first_person_in=True),
    Door("side", "Side (on schedule)", "outside", "lobby", mode=DoorMode.UNLOCKED_ON_SCHEDULE,
         unlock_schedule="business"),
]

SCHEDULES = [
    Schedule("always", "Always", (TimeWindow(ALL_DAYS, time(0, 0), None),)),
    Schedule("business", "Business", (TimeWindow(frozenset(WEEKDAYS[:5]), time(7, 0), time(19, 0)),)),
]

LEVELS = [
    AccessLevel("all", "Everywhere", tuple(AccessEntry(a.id, "always") for a in AREAS)),
    AccessLevel("staff", "Staff", (AccessEntry("outside", "always"), AccessEntry("lobby", "always"))),
    AccessLevel("lab_biz", "Lab in business hours", (AccessEntry("lobby", "always"), AccessEntry("lab", "business"))),
]

ALL = ("all",)
PEOPLE = [
    Person("emp", "Employee", clearance=9, access_levels=ALL),
    Person("emp2", "Second employee", clearance=9, access_levels=ALL),
    Person("emp3", "Third employee", clearance=9, access_levels=ALL),
    Person("host", "Host", clearance=9, access_levels=ALL),
    Person("esc", "Escort", clearance=9, access_levels=ALL, roles=frozenset({"escort"})),
    Person("esc_biz", "Day escort", clearance=9, access_levels=("lab_biz",), roles=frozenset({"escort"})),
    Person("plain", "Not host, no role", clearance=9, access_levels=ALL),
    Person("staff", "Staff only", clearance=9, access_levels=("staff",)),
    Person("labby", "Lab by day", clearance=9, access_levels=("lab_biz",)),
    Person("low", "Low clearance", clearance=1, access_levels=ALL),
    Person("resp", "Responder", clearance=9, access_levels=ALL, roles=frozenset({"responder"})),
    Person("resp_staff", "Responder, staff only", clearance=9, access_levels=("staff",),
           roles=frozenset({"responder"})),
    Person("susp", "Suspended", access_levels=ALL, state=PersonState.SUSPENDED),
    Person("lost", "Lost card", access_levels=ALL),
    Person("revoked", "Revoked card", access_levels=ALL),
    Person("pinny", "Has a PIN", clearance=9, access_levels=ALL, pin_hash=pin_hash(KEY, "1234")),
    Person("pinny2", "Has another PIN", clearance=9, access_levels=ALL, pin_hash=pin_hash(KEY, "5678")),
    Person("nopin", "Has no PIN", clearance=9, access_levels=ALL),
    Person("vic", "Visitor", kind=PersonKind.VISITOR, host="host", company="Acme",
           allowed_areas=("lobby", "lab", "suite", "vault", "gym"),
           valid_from=WED_NOON - 3600, valid_until=WED_NOON + 10 * 3600),
    Person("vic2", "Second visitor", kind=PersonKind.VISITOR, host="host",
           allowed_areas=("lobby", "lab", "suite"), valid_from=WED_NOON - 3600, valid_until=WED_NOON + 4 * 3600),
    Person("vfree", "Visitor, no escort needed", kind=PersonKind.VISITOR, host="host", escort_required=False,
           allowed_areas=("lobby", "lab", "suite")),
    Person("vlate", "Visitor tomorrow", kind=PersonKind.VISITOR, host="host", allowed_areas=("lobby",),
           valid_from=WED_NOON + 86400, valid_until=WED_NOON + 86400 + 3600),
    Person("vgone", "Visitor yesterday", kind=PersonKind.VISITOR, host="host", allowed_areas=("lobby",),
           valid_from=WED_NOON - 86400, valid_until=WED_NOON - 86400 + 3600),
    Person("vresp", "Visitor with a responder role", kind=PersonKind.VISITOR, allowed_areas=("lobby",),
           roles=frozenset({"responder"})),
]

CARD_STATES = {"lost": CredentialState.LOST, "revoked": CredentialState.REVOKED}


def build_site(people: list[Person] = PEOPLE, rules: Rules = RULES) -> Site:
    creds = {}
    for p in people:
        h = card(p.id)
        creds[h] = Credential(h, last4(number(p.id)), "em4100", p.id, CARD_STATES.get(p.id, CredentialState.ACTIVE))
    return Site("r", "Rules", "Europe/London", {a.id: a for a in AREAS}, {d.id: d for d in DOORS},
                {s.id: s for s in SCHEDULES}, {lv.id: lv for lv in LEVELS}, {p.id: p for p in people}, creds, rules)


SITE = build_site()


def test_every_person_has_their_own_card() -> None:
    assert len(SITE.credentials) == len(PEOPLE) and UNKNOWN_CARD not in SITE.credentials


def request(who: str, door: str, pin: str | None = None) -> AccessRequest:
    cred = UNKNOWN_CARD if who == "?" else card(who)
    return AccessRequest(door, cred, pin_hash(KEY, pin) if pin is not None else None)


# --------------------------------------------------------------------- table


@dataclass(frozen=True)
class B:
    """One badge: who (``"?"`` for an unknown card), at which door, ``t`` seconds into the row, with a PIN."""

    who: str
    door: str
    expect: Reason
    t: float = 0.0
    pin: str | None = None
    companions: tuple[str, ...] | None = None  # checked when given
    violation: str | None = None


@dataclass(frozen=True)
class Row:
    id: str
    badges: list[B]
    setup: Callable[[DecisionState], None] | None = None
    start: float = WED_NOON
    expect_presence: dict[str, str] = field(default_factory=dict)
    expect_occupancy: dict[str, int] = field(default_factory=dict)


def at(person: str, area: str, ago: float = 60.0) -> Callable[[DecisionState], None]:
    def setup(state: DecisionState) -> None:
        state.presence[person] = Presence(area, WED_NOON - ago)
    return setup


def lockdown_site(state: DecisionState) -> None:
    state.lockdown_site = True


def lockdown_lab(state: DecisionState) -> None:
    state.lockdown_areas.add("lab")


def gym_full(state: DecisionState) -> None:
    state.presence["emp2"] = Presence("gym", WED_NOON - 60)
    state.presence["emp3"] = Presence("gym", WED_NOON - 60)


G, GE, G2 = Reason.GRANTED, Reason.GRANTED_ESCORTED, Reason.GRANTED_TWO_PERSON
R = Reason

ROWS = [
    # ---------------------------------------------------------- basic codes
    Row("granted", [B("emp", "lobby_in", G, companions=())], expect_presence={"emp": "lobby"}),
    Row("unknown_door", [B("emp", "garage", R.UNKNOWN_DOOR)]),
    Row("unknown_credential", [B("?", "lobby_in", R.UNKNOWN_CREDENTIAL)]),
    Row("credential_inactive_lost", [B("lost", "lobby_in", R.CREDENTIAL_INACTIVE)]),
    Row("credential_inactive_revoked", [B("revoked", "lobby_in", R.CREDENTIAL_INACTIVE)]),
    Row("person_inactive", [B("susp", "lobby_in", R.PERSON_INACTIVE)]),
    Row("visitor_not_yet_valid", [B("vlate", "lobby_in", R.NOT_YET_VALID)]),
    Row("visitor_expired", [B("vgone", "lobby_in", R.EXPIRED)]),
    Row("visitor_inside_window", [B("vic", "lobby_in", G)]),
    Row("outside_schedule", [B("labby", "lab", R.OUTSIDE_SCHEDULE)], start=utc(2026, 3, 25, 20, 0)),
    Row("inside_schedule", [B("labby", "lab", G)]),
    Row("no_access", [B("staff", "lab", R.NO_ACCESS)]),
    Row("clearance_too_low", [B("low", "lab", R.CLEARANCE_TOO_LOW)]),
    Row("clearance_enough", [B("low", "gym_in", G)]),
    # ------------------------------------------------------------- lockdown
    Row("lockdown_site", [B("emp", "lobby_in", R.LOCKDOWN)], setup=lockdown_site),
    Row("lockdown_area", [B("emp", "lab", R.LOCKDOWN), B("emp", "gym_in", G, t=1)], setup=lockdown_lab),
    Row("lockdown_area_leave_it", [B("emp", "lab_out", G)], setup=lockdown_lab),
    Row("lockdown_beats_no_access", [B("staff", "lab", R.LOCKDOWN)], setup=lockdown_site),
    Row("lockdown_responder_passes", [B("resp", "lab", G)], setup=lockdown_site),
    Row("lockdown_responder_still_needs_access", [B("resp_staff", "lab", R.NO_ACCESS)], setup=lockdown_site),
    Row("lockdown_unknown_card_is_unknown", [B("?", "lobby_in", R.UNKNOWN_CREDENTIAL)], setup=lockdown_site),
    Row("lockdown_inactive_card_beats_it", [B("lost", "lobby_in", R.CREDENTIAL_INACTIVE)], setup=lockdown_site),
    Row("lockdown_expired_beats_it", [B("vgone", "lobby_in", R.EXPIRED)], setup=lockdown_site),
    Row("lockdown_visitor_with_responder_role", [B("vresp", "lobby_in", G)], setup=lockdown_site),
    # -------------------------------------------------------------- visitors
    Row("visitor_no_access_outside_allowed_areas", [B("vic", "hard_in", R.NO_ACCESS)]),
    Row("visitor_may_always_leave", [B("vic", "lobby_out", G)]),
    Row("visitor_not_held_to_clearance", [B("vfree", "lab", G, companions=())]),
    Row("visitor_alone_escort_required", [B("vic", "lab", R.ESCORT_REQUIRED)]),
    Row("visitor_unrestricted_area_alone", [B("vic", "lobby_in", G, companions=())]),
    Row("escort_area_needs_escort_even_without_person_flag", [B("vfree", "suite", R.ESCORT_REQUIRED)]),
    Row("escort_host_first", [B("host", "lab", G), B("vic", "lab", GE, t=10, companions=("host",))],
        expect_presence={"host": "lab", "vic": "lab"}),
    Row("escort_visitor_first", [B("vic", "lab", R.ESCORT_REQUIRED), B("host", "lab", GE, t=10, companions=("vic",))],
        expect_presence={"host": "lab", "vic": "lab"}),
    Row("escort_role_not_host", [B("vic", "suite", R.ESCORT_REQUIRED), B("esc", "suite", GE, t=5, companions=("vic",))]),
    Row("escort_at_exact_window_edge", [B("host", "lab", G), B("vic", "lab", GE, t=30)]),
    Row("escort_outside_window_host_first", [B("host", "lab", G), B("vic", "lab", R.ESCORT_REQUIRED, t=31)]),
    Row("escort_outside_window_visitor_first",
        [B("vic", "lab", R.ESCORT_REQUIRED), B("host", "lab", G, t=31, companions=())],
        expect_presence={"host": "lab"}),
    Row("escort_not_host_no_role", [B("plain", "lab", G), B("vic", "lab", R.ESCORT_REQUIRED, t=5)]),
    Row("escort_not_host_no_role_visitor_first",
        [B("vic", "lab", R.ESCORT_REQUIRED), B("plain", "lab", G, t=5, companions=())]),
    Row("escort_at_another_door_does_not_count", [B("host", "vault", R.AWAITING_SECOND_PERSON),
                                                   B("host", "lab", G, t=1), B("vic", "suite", R.ESCORT_REQUIRED, t=2)]),
    Row("escort_must_still_be_authorised", [B("esc_biz", "lab", G), B("vic", "lab", R.ESCORT_REQUIRED, t=20)],
        start=utc(2026, 3, 25, 18, 59, 50)),
    Row("escort_denied_leaves_visitor_waiting",
        [B("vic", "lab", R.ESCORT_REQUIRED), B("low", "lab", R.CLEARANCE_TOO_LOW, t=1),
         B("host", "lab", GE, t=2, companions=("vic",))]),
    Row("escort_takes_every_waiting_visitor",
        [B("vic", "lab", R.ESCORT_REQUIRED), B("vic2", "lab", R.ESCORT_REQUIRED, t=1),
         B("host", "lab", GE, t=2, companions=("vic", "vic2"))],
        expect_occupancy={"lab": 3}),
    Row("escort_pending_is_used_once", [B("host", "lab", G), B("vic", "lab", GE, t=1),
                                        B("vic2", "lab", R.ESCORT_REQUIRED, t=2)]),
    Row("visitor_twice_alone_still_waits", [B("vic", "lab", R.ESCORT_REQUIRED), B("vic", "lab", R.ESCORT_REQUIRED, t=5)]),
    Row("visitor_escorted_into_occupancy_area_is_counted",
        [B("vic", "suite", R.ESCORT_REQUIRED), B("esc", "suite", GE, t=1)], expect_occupancy={"suite": 2}),
    # ------------------------------------------------------------ two-person
    Row("two_person_first_waits", [B("emp", "vault", R.AWAITING_SECOND_PERSON)], expect_occupancy={"vault": 0}),
    Row("two_person_second_grants_both",
        [B("emp", "vault", R.AWAITING_SECOND_PERSON), B("emp2", "vault", G2, t=10, companions=("emp",))],
        expect_presence={"emp": "vault", "emp2": "vault"}),
    Row("two_person_same_person_twice",
        [B("emp", "vault", R.AWAITING_SECOND_PERSON), B("emp", "vault", R.AWAITING_SECOND_PERSON, t=5),
         B("emp2", "vault", G2, t=10, companions=("emp",))]),
    Row("two_person_outside_window",
        [B("emp", "vault", R.AWAITING_SECOND_PERSON), B("emp2", "vault", R.AWAITING_SECOND_PERSON, t=31)]),
    Row("two_person_second_not_authorised",
        [B("emp", "vault", R.AWAITING_SECOND_PERSON), B("low", "vault", R.CLEARANCE_TOO_LOW, t=1),
         B("emp2", "vault", G2, t=2, companions=("emp",))]),
    Row("two_person_pair_is_used_once",
        [B("emp", "vault", R.AWAITING_SECOND_PERSON), B("emp2", "vault", G2, t=1),
         B("emp3", "vault", R.AWAITING_SECOND_PERSON, t=2)]),
    Row("two_person_visitor_with_escort",
        [B("emp", "vault", R.AWAITING_SECOND_PERSON), B("host", "vault", G2, t=1, companions=("emp",)),
         B("vic", "vault", GE, t=2, companions=("host",))],
        expect_presence={"emp": "vault", "host": "vault", "vic": "vault"}),
    Row("two_person_wrong_pin_never_starts_a_wait",
        [B("pinny", "vault_pin", R.WRONG_PIN, pin="9999"),
         B("pinny2", "vault_pin", R.AWAITING_SECOND_PERSON, t=1, pin="5678"),
         B("pinny", "vault_pin", G2, t=2, pin="1234", companions=("pinny2",))]),
    Row("two_person_first_needs_its_pin", [B("pinny", "vault_pin", R.PIN_REQUIRED)]),
    # -------------------------------------------------------- anti-passback
    Row("apb_first_time_seen_is_no_violation", [B("emp", "hard_in", G, violation=None)]),
    Row("apb_hard", [B("emp", "lobby_in", G), B("emp", "hard_in", G, t=1), B("emp", "hard_in", R.ANTI_PASSBACK, t=2)]),
    Row("apb_hard_from_elsewhere", [B("emp", "hard_in", R.ANTI_PASSBACK)], setup=at("emp", "outside")),
    Row("apb_hard_after_proper_exit", [B("emp", "hard_in", G), B("emp", "hard_out", G, t=1),
                                       B("emp", "hard_in", G, t=2)]),
    Row("apb_soft_grants_with_violation", [B("emp", "soft_in", G, violation="anti_passback")],
        setup=at("emp", "outside"), expect_presence={"emp": "soft"}),
    Row("apb_soft_no_violation_from_right_area", [B("emp", "soft_in", G, violation=None)], setup=at("emp", "lobby")),
    Row("apb_timed_within_reset", [B("emp", "timed_in", R.ANTI_PASSBACK)], setup=at("emp", "outside", ago=599)),
    Row("apb_timed_after_reset", [B("emp", "timed_in", G)], setup=at("emp", "outside", ago=600)),
    Row("apb_responder_not_exempt", [B("resp", "hard_in", R.ANTI_PASSBACK)], setup=at("resp", "outside")),
    Row("apb_beats_occupancy", [B("emp", "cage", R.ANTI_PASSBACK)],
        setup=lambda s: (at("emp", "outside")(s), at("emp2", "cage")(s))),
    # ------------------------------------------------------------ occupancy
    Row("occupancy_full", [B("emp", "gym_in", G), B("emp2", "gym_in", G, t=1), B("emp3", "gym_in", R.OCCUPANCY_FULL, t=2)],
        expect_occupancy={"gym": 2}),
    Row("occupancy_counted_across_exits",
        [B("emp", "gym_in", G), B("emp2", "gym_in", G, t=1), B("emp3", "gym_in", R.OCCUPANCY_FULL, t=2),
         B("emp", "gym_out", G, t=3), B("emp3", "gym_in", G, t=4)],
        expect_occupancy={"gym": 2, "lobby": 1}),
    Row("occupancy_already_inside_not_counted_twice", [B("emp2", "gym_in", G, t=1)], setup=gym_full),
    Row("occupancy_responder_exempt", [B("resp", "gym_in", G)], setup=gym_full, expect_occupancy={"gym": 3}),
    Row("occupancy_counts_the_whole_group",
        [B("vic", "suite", R.ESCORT_REQUIRED), B("esc", "suite", R.OCCUPANCY_FULL, t=1),
         B("emp", "suite", G, t=2, companions=())],
        setup=at("emp2", "suite"), expect_occupancy={"suite": 2}),
    Row("occupancy_beats_pin", [B("pinny", "gym_pin", R.OCCUPANCY_FULL)], setup=gym_full),
    # ------------------------------------------------------------------ PIN
    Row("pin_required", [B("pinny", "pin", R.PIN_REQUIRED)]),
    Row("pin_wrong", [B("pinny", "pin", R.WRONG_PIN, pin="4321")]),
    Row("pin_right", [B("pinny", "pin", G, pin="1234")], expect_presence={"pinny": "secure"}),
    Row("pin_ignored_at_normal_door", [B("nopin", "lobby_in", G, pin="0000")]),
    Row("pin_person_without_pin", [B("nopin", "pin", R.WRONG_PIN, pin="1234")]),
    Row("pin_lockout_after_max_attempts",
        [B("pinny", "pin", R.WRONG_PIN, pin="1"), B("pinny", "pin", R.WRONG_PIN, t=1, pin="2"),
         B("pinny", "pin", R.WRONG_PIN, t=2, pin="3"), B("pinny", "pin", R.PIN_LOCKED_OUT, t=3, pin="1234"),
         B("pinny", "pin", R.PIN_LOCKED_OUT, t=301.9, pin="1234"),
         B("pinny", "pin", G, t=2 + 300, pin="1234")]),
    Row("pin_lockout_only_at_pin_doors",
        [B("pinny", "pin", R.WRONG_PIN, pin="1"), B("pinny", "pin", R.WRONG_PIN, t=1, pin="2"),
         B("pinny", "pin", R.WRONG_PIN, t=2, pin="3"), B("pinny", "lobby_in", G, t=3)]),
    Row("pin_lockout_without_pin_is_locked_out",
        [B("pinny", "pin", R.WRONG_PIN, pin="1"), B("pinny", "pin", R.WRONG_PIN, t=1, pin="2"),
         B("pinny", "pin", R.WRONG_PIN, t=2, pin="3"), B("pinny", "pin", R.PIN_LOCKED_OUT, t=3)]),
    Row("pin_right_resets_the_count",
        [B("pinny", "pin", R.WRONG_PIN, pin="1"), B("pinny", "pin", R.WRONG_PIN, t=1, pin="2"),
         B("pinny", "pin", G, t=2, pin="1234"), B("pinny", "pin", R.WRONG_PIN, t=3, pin="1"),
         B("pinny", "pin", R.WRONG_PIN, t=4, pin="2"), B("pinny", "pin", G, t=5, pin="1234")]),
    Row("pin_missing_does_not_count",
        [B("pinny", "pin", R.WRONG_PIN, pin="1"), B("pinny", "pin", R.WRONG_PIN, t=1, pin="2"),
         B("pinny", "pin", R.PIN_REQUIRED, t=2), B("pinny", "pin", G, t=3, pin="1234")]),
    Row("pin_lockout_restarts_the_count",
        [B("pinny", "pin", R.WRONG_PIN, pin="1"), B("pinny", "pin", R.WRONG_PIN, t=1, pin="2"),
         B("pinny", "pin", R.WRONG_PIN, t=2, pin="3"), B("pinny", "pin", R.WRONG_PIN, t=400, pin="4"),
         B("pinny", "pin", G, t=401, pin="1234")]),
    Row("pin_checked_after_clearance", [B("low", "vault_pin", R.CLEARANCE_TOO_LOW)]),
]


def run(row: Row) -> DecisionState:
    state = DecisionState()
    if row.setup is not None:
        row.setup(state)
    for i, b in enumerate(row.badges):
        now = row.start + b.t
        req = request(b.who, b.door, b.pin)
        before = copy.deepcopy(state)
        decision = decide(req, SITE, state, now)
        assert state == before, "decide() mutated the state"
        where = f"badge {i} ({b.who} at {b.door}, t={b.t})"
        assert decision.reason is b.expect, f"{where}: got {decision.reason.value}, expected {b.expect.value}"
        if b.companions is not None:
            assert decision.companions == b.companions, where
        assert decision.violation == b.violation, where
        if b.who != "?" and decision.reason not in (Reason.UNKNOWN_DOOR,):
            assert decision.person == b.who, where
        commit(req, decision, SITE, state, now)
    return state


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_rules(row: Row) -> None:
    state = run(row)
    for person, area in row.expect_presence.items():
        assert state.presence[person].area == area, person
    for area, count in row.expect_occupancy.items():
        assert state.occupancy(area) == count, area


def test_every_reason_decide_gives_has_a_row() -> None:
    # pass_invalid: a visitor pass that is malformed or not signed by a key of the policy is refused by the
    # edge before any request (tests/unit/test_edge_passes.py)
    # interlock_busy: the edge's own door rule, checked before any request (tests/unit/test_edge_openings.py)
    edge_only = {Reason.GRANTED_OFFLINE, Reason.OFFLINE_RESTRICTED, Reason.SERVER_TIMEOUT, Reason.NO_POLICY,
                 Reason.PASS_INVALID, Reason.INTERLOCK_BUSY}
    covered = {b.expect for row in ROWS for b in row.badges}
    assert set(Reason) - edge_only <= covered, sorted(r.value for r in set(Reason) - edge_only - covered)


# ------------------------------------------------------------ commit effects


def test_commit_records_pending_and_consumes_it() -> None:
    state = DecisionState()
    t0 = WED_NOON
    for who, t in (("vic", 0.0), ("emp", 1.0)):
        req = request(who, "lab" if who == "vic" else "vault")
        commit(req, decide(req, SITE, state, t0 + t), SITE, state, t0 + t)
    assert state.pending == {"lab": [Pending("vic", t0, "visitor")], "vault": [Pending("emp", t0 + 1, "two_person")]}
    req = request("host", "lab")
    commit(req, decide(req, SITE, state, t0 + 2), SITE, state, t0 + 2)
    # the visitor is consumed; the host is now waiting as an escort for the next visitor
    assert state.pending["lab"] == [Pending("host", t0 + 2, "escort")]


def test_commit_prunes_stale_pending_at_the_door_it_decides() -> None:
    state = DecisionState()
    req = request("emp", "vault")
    commit(req, decide(req, SITE, state, WED_NOON), SITE, state, WED_NOON)
    assert "vault" in state.pending
    other = request("emp2", "lobby_in")
    commit(other, decide(other, SITE, state, WED_NOON + 31), SITE, state, WED_NOON + 31)
    assert "vault" in state.pending, "other doors are not walked on every decision"
    again = request("emp2", "vault")
    commit(again, decide(again, SITE, state, WED_NOON + 62), SITE, state, WED_NOON + 62)
    assert "emp" not in [p.person for p in state.pending.get("vault", [])], "a stale badge was kept"


def test_a_flooded_door_remembers_a_bounded_number_of_badges() -> None:
    from doorkeep.decision import MAX_PENDING_PER_DOOR, Pending, _add_pending

    state = DecisionState()
    for i in range(MAX_PENDING_PER_DOOR * 3):
        _add_pending(state, "vault", Pending(f"p{i}", WED_NOON + i, "escort"))
    kept = state.pending["vault"]
    assert len(kept) == MAX_PENDING_PER_DOOR
    assert kept[-1].person == f"p{MAX_PENDING_PER_DOOR * 3 - 1}", "the newest badges are the ones kept"


def test_commit_pin_failures_are_per_credential() -> None:
    state = DecisionState()
    for i in range(2):
        req = request("pinny", "pin", "0000")
        commit(req, decide(req, SITE, state, WED_NOON + i), SITE, state, WED_NOON + i)
    assert state.pin_failures == {card("pinny"): (2, 0.0)}
    req = request("pinny", "pin", "0000")
    commit(req, decide(req, SITE, state, WED_NOON + 2), SITE, state, WED_NOON + 2)
    assert state.pin_failures == {card("pinny"): (0, WED_NOON + 2 + 300.0)}


def test_commit_on_denial_moves_nobody() -> None:
    state = DecisionState()
    req = request("staff", "lab")
    d = decide(req, SITE, state, WED_NOON)
    commit(req, d, SITE, state, WED_NOON)
    assert state == DecisionState()


def test_commit_unknown_door_or_card_is_harmless() -> None:
    state = DecisionState()
    for req in (request("emp", "garage"), request("?", "lobby_in")):
        commit(req, decide(req, SITE, state, WED_NOON), SITE, state, WED_NOON)
    assert state == DecisionState()


def test_occupancy_counts_presence() -> None:
    state = DecisionState(presence={"a": Presence("gym", 0), "b": Presence("gym", 1), "c": Presence("lobby", 2)})
    assert state.occupancy("gym") == 2 and state.occupancy("lobby") == 1 and state.occupancy("vault") == 0


def test_presence_map_counts_every_way_it_changes() -> None:
    import pickle

    state = DecisionState(presence={"a": Presence("gym", 0), "b": Presence("gym", 1)})
    assert isinstance(state.presence, PresenceMap) and state.occupancy("gym") == 2
    pres = state.presence
    pres["a"] = Presence("gym", 5)               # same area again: still counted once
    pres["c"] = Presence("lobby", 2)
    pres["b"] = Presence("lobby", 3)             # moved
    assert (state.occupancy("gym"), state.occupancy("lobby")) == (1, 2)
    del pres["c"]
    assert pres.pop("zz", None) is None
    assert pres.pop("b") == Presence("lobby", 3)
    pres.setdefault("d", Presence("vault", 4))
    pres.update({"e": Presence("vault", 5)}, f=Presence("gym", 6))
    pres |= {"g": Presence("gym", 7)}
    expected = {"a": Presence("gym", 5), "d": Presence("vault", 4), "e": Presence("vault", 5),
                "f": Presence("gym", 6), "g": Presence("gym", 7)}
    assert pres == expected and expected == pres
    for area in ("gym", "lobby", "vault", "nowhere"):
        assert state.occupancy(area) == sum(1 for p in expected.values() if p.area == area)
    for twin in (copy.deepcopy(pres), copy.copy(pres), pres.copy(), pickle.loads(pickle.dumps(pres))):
        assert isinstance(twin, PresenceMap) and twin == pres and twin.count("gym") == 3
    person, _ = pres.popitem()
    assert person not in pres and sum(pres.count(a) for a in ("gym", "vault")) == 4
    pres.clear()
    assert state.occupancy("gym") == 0 and pres == {}


def test_occupancy_with_a_plain_dict_assigned_later() -> None:
    state = DecisionState()
    state.presence = {"a": Presence("gym", 0)}
    assert state.occupancy("gym") == 1


def test_custom_windows_from_rules() -> None:
    site = build_site(rules=Rules(escort_window_s=5.0, two_person_window_s=60.0))
    state = DecisionState()

    def go(who: str, door: str, t: float) -> Reason:
        req = request(who, door)
        d = decide(req, site, state, WED_NOON + t)
        commit(req, d, site, state, WED_NOON + t)
        return d.reason

    assert go("emp", "vault", 0) is Reason.AWAITING_SECOND_PERSON
    assert go("emp2", "vault", 59) is Reason.GRANTED_TWO_PERSON
    assert go("host", "lab", 100) is Reason.GRANTED
    assert go("vic", "lab", 106) is Reason.ESCORT_REQUIRED


def test_pin_max_attempts_from_rules() -> None:
    site = build_site(rules=Rules(pin_max_attempts=1, pin_lockout_s=10.0))
    state = DecisionState()
    req = request("pinny", "pin", "0000")
    commit(req, decide(req, site, state, WED_NOON), site, state, WED_NOON)
    ok = request("pinny", "pin", "1234")
    assert decide(ok, site, state, WED_NOON + 9.9).reason is Reason.PIN_LOCKED_OUT
    assert decide(ok, site, state, WED_NOON + 10).reason is Reason.GRANTED


# --------------------------------------------------------------- offline


@pytest.mark.parametrize("reason", [r for r in Reason if r.granted])
def test_offline_decision_maps_every_grant(reason: Reason) -> None:
    d = Decision(reason, "emp", ("emp2",), "anti_passback")
    assert offline_decision(d) == Decision(Reason.GRANTED_OFFLINE, "emp", ("emp2",), "anti_passback")


@pytest.mark.parametrize("reason", [r for r in Reason if not r.granted])
def test_offline_decision_keeps_denials(reason: Reason) -> None:
    d = Decision(reason, "emp")
    assert offline_decision(d) is d


def test_offline_decision_of_a_real_decision() -> None:
    state = DecisionState()
    d = decide(request("emp", "lobby_in"), SITE, state, WED_NOON)
    assert offline_decision(d) == Decision(Reason.GRANTED_OFFLINE, "emp")
    assert offline_decision(d).granted


# ------------------------------------------------------------ door modes


def _badge(state: DecisionState, who: str, door: str, now: float) -> Decision:
    req = request(who, door)
    d = decide(req, SITE, state, now)
    commit(req, d, SITE, state, now)
    return d


def test_first_person_in_across_two_days() -> None:
    state = DecisionState()

    def wed(h: int, m: int = 0) -> float:  # GMT: local = UTC
        return utc(2026, 3, 25, h, m)

    def thu(h: int, m: int = 0) -> float:
        return utc(2026, 3, 26, h, m)

    assert not door_unlocked_now("front", SITE, state, wed(6))    # schedule closed
    assert not door_unlocked_now("front", SITE, state, wed(8))    # open, but nobody badged in yet
    _badge(state, "emp", "front", wed(6, 30))                     # granted before the schedule opens ...
    assert not door_unlocked_now("front", SITE, state, wed(8))    # ... does not count
    assert _badge(state, "staff", "front", wed(8, 5)).granted
    assert state.first_in == {"front": "2026-03-25"}
    assert door_unlocked_now("front", SITE, state, wed(8, 5))
    assert door_unlocked_now("front", SITE, state, wed(18, 59))
    assert not door_unlocked_now("front", SITE, state, wed(19))   # schedule closed again
    assert not door_unlocked_now("front", SITE, state, thu(8))    # a new day: wait for the first person
    _badge(state, "susp", "front", thu(8, 1))                     # a denied badge does not count
    assert not door_unlocked_now("front", SITE, state, thu(8, 2))
    _badge(state, "emp", "front", thu(9))
    assert door_unlocked_now("front", SITE, state, thu(9))
    assert state.first_in == {"front": "2026-03-26"}


def test_first_person_in_is_a_local_date() -> None:
    # In BST, 23:30 UTC on Monday is already Tuesday 00:30 locally.
    state = DecisionState(first_in={"front": "2026-03-30"})
    assert door_unlocked_now("front", SITE, state, utc(2026, 3, 30, 9, 0))
    assert not door_unlocked_now("front", SITE, state, utc(2026, 3, 31, 9, 0))


def test_unlocked_on_schedule_without_first_person() -> None:
    state = DecisionState()
    assert door_unlocked_now("side", SITE, state, utc(2026, 3, 25, 8, 0))
    assert not door_unlocked_now("side", SITE, state, utc(2026, 3, 25, 20, 0))
    assert not door_unlocked_now("side", SITE, state, utc(2026, 3, 28, 10, 0))  # Saturday


def test_lockdown_keeps_scheduled_doors_locked() -> None:
    now = utc(2026, 3, 25, 8, 0)
    assert not door_unlocked_now("side", SITE, DecisionState(lockdown_site=True), now)
    assert not door_unlocked_now("side", SITE, DecisionState(lockdown_areas={"lobby"}), now)
    assert door_unlocked_now("side", SITE, DecisionState(lockdown_areas={"lab"}), now)


def test_normal_and_unknown_doors_are_never_unlocked_by_schedule() -> None:
    now = utc(2026, 3, 25, 8, 0)
    assert not door_unlocked_now("lobby_in", SITE, DecisionState(), now)
    assert not door_unlocked_now("garage", SITE, DecisionState(), now)
