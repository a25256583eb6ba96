"""decide() and commit() at a lift (doorkeep/decision.py, docs/openings.md "Lifts"): each floor decided as a door
into its area, the floors granted enabled, presence moved only to a floor chosen or dispatched."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime, time, timezone

import pytest

from doorkeep.credentials import card_hash, last4, pin_hash
from doorkeep.decision import (
    PENDING_ESCORT,
    PENDING_TWO_PERSON,
    PENDING_VISITOR,
    AccessRequest,
    Decision,
    DecisionState,
    Presence,
    Reason,
    choose_floor,
    commit,
    decide,
    lift_floor,
    offline_floors,
    offline_site,
    public_floors,
)
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

KEY = b"L" * 32


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


# 2026-03-25 is a Wednesday in GMT: local time is UTC.
WED_NOON = utc(2026, 3, 25, 12, 0)
WED_2200 = utc(2026, 3, 25, 22, 0)
SAT_NOON = utc(2026, 3, 28, 12, 0)

ALL_DAYS = frozenset(WEEKDAYS)
AREAS = [
    Area("outside", "Outside"),
    Area("lobby", "Lobby"),
    Area("office", "Office"),
    Area("lab", "Lab", restricted=True, clearance=2),
    Area("vault", "Vault", two_person=True),
    Area("gym", "Gym", max_occupancy=1),
    Area("suite", "Client suite", escort_required=True),
    Area("secure", "Secure floor", anti_passback=AntiPassback.HARD),
]
SCHEDULES = [
    Schedule("always", "Always", (TimeWindow(ALL_DAYS, time(0), None),)),
    Schedule("business", "Business", (TimeWindow(frozenset(WEEKDAYS[:5]), time(7), time(19)),)),
    Schedule("early", "Early", (TimeWindow(ALL_DAYS, time(6), time(7)),)),
]
LEVELS = [
    AccessLevel("staff", "Staff", (AccessEntry("outside", "always"), AccessEntry("lobby", "always"),
                                   AccessEntry("office", "business"), AccessEntry("gym", "always"),
                                   AccessEntry("suite", "always"), AccessEntry("secure", "always"))),
    AccessLevel("basic", "Basic", (AccessEntry("lobby", "always"), AccessEntry("office", "always"))),
    AccessLevel("lab", "Lab", (AccessEntry("lab", "always"),)),
    AccessLevel("vault", "Vault", (AccessEntry("vault", "always"),)),
    AccessLevel("early", "Early lobby", (AccessEntry("lobby", "early"),)),
]
LIFT_FLOORS = ("lobby", "office", "lab", "vault", "gym", "suite", "secure")
DOORS = [
    Door("lift", "Lift", "", "", kind=DoorKind.LIFT, offline=OfflineMode.CACHE,
         floors=tuple(LiftFloor(a, "business" if a == "lobby" else None,
                                OfflineMode.DENY if a == "vault" else None) for a in LIFT_FLOORS)),
    Door("pinlift", "Goods lift (PIN)", "", "", kind=DoorKind.LIFT, pin_required=True,
         floors=(LiftFloor("office"), LiftFloor("gym", offline=OfflineMode.CACHE))),
    Door("lobbylift", "Lobby shuttle", "", "", kind=DoorKind.LIFT, floors=(LiftFloor("lobby", "business"),)),
    Door("secure_in", "Secure floor door", "lobby", "secure"),
]
STAFF = ("staff",)
PEOPLE = [
    Person("alice", "Alice", access_levels=STAFF),
    Person("dave", "Dave", access_levels=("basic",)),
    Person("bob", "Bob", access_levels=("staff", "lab"), clearance=2),
    Person("lowlab", "Low clearance", access_levels=("lab",)),
    Person("host", "Host", access_levels=STAFF),
    Person("esc", "Escort", access_levels=STAFF, roles=frozenset({"escort"})),
    Person("resp", "Responder", access_levels=STAFF, roles=frozenset({"responder"})),
    Person("vic", "Visitor to the suite", kind=PersonKind.VISITOR, host="host", allowed_areas=("suite",)),
    Person("vfree", "Visitor, open floors", kind=PersonKind.VISITOR, host="host", allowed_areas=("lobby", "office")),
    Person("vx", "Vault only", access_levels=("vault",)),
    Person("vy", "Vault only too", access_levels=("vault",)),
    Person("vz", "Staff and vault", access_levels=("staff", "vault")),
    Person("early", "Early bird", access_levels=("early",)),
    Person("pinny", "Has a PIN", access_levels=STAFF, pin_hash=pin_hash(KEY, "1234")),
    Person("nobody", "No levels"),
]


def number(person: str) -> str:
    return "0F" + hashlib.sha256(person.encode()).hexdigest()[:8].upper()


def card(person: str) -> str:
    return card_hash(KEY, "em4100", number(person))


def build_site() -> Site:
    creds = {card(p.id): Credential(card(p.id), last4(number(p.id)), "em4100", p.id) for p in PEOPLE}
    return Site("t", "Lifts", "Europe/London", {a.id: a for a in AREAS}, {d.id: d for d in DOORS},
                {s.id: s for s in SCHEDULES}, {lv.id: lv for lv in LEVELS}, {p.id: p for p in PEOPLE}, creds)


SITE = build_site()
LIFT = SITE.doors["lift"]
ALICE_DAY = ("lobby", "office", "gym", "suite", "secure")


def req(who: str, door: str = "lift", *, floor: str | None = None, pin: str | None = None) -> AccessRequest:
    return AccessRequest(door, card(who), pin_hash(KEY, pin) if pin is not None else None, floor)


def at_lift(who: str, now: float = WED_NOON, state: DecisionState | None = None, **kw: str) -> Decision:
    return decide(req(who, **kw), SITE, state if state is not None else DecisionState(), now)


def badge(state: DecisionState, who: str, now: float, door: str = "lift", **kw: str) -> Decision:
    """Decide and commit, as the server does for every badge."""
    r = req(who, door, **kw)
    d = decide(r, SITE, state, now)
    commit(r, d, SITE, state, now)
    return d


# ---------------------------------------------------- levels and schedules


def test_a_badge_enables_the_floors_its_access_levels_open_now_in_the_lifts_order() -> None:
    assert at_lift("alice") == Decision(Reason.GRANTED, "alice", floors=ALICE_DAY)
    assert at_lift("alice", WED_2200) == Decision(Reason.GRANTED, "alice",
                                                  floors=("lobby", "gym", "suite", "secure")), \
        "the office is on business hours for staff"
    assert at_lift("dave", WED_2200).floors == ("lobby", "office")


def test_clearance_decides_a_restricted_floor() -> None:
    assert at_lift("bob").floors == ("lobby", "office", "lab", "gym", "suite", "secure")
    assert at_lift("lowlab", floor="lab") == Decision(Reason.CLEARANCE_TOO_LOW, "lowlab")


def test_a_grant_at_a_lift_names_its_floors_and_a_door_decision_names_none() -> None:
    assert at_lift("alice", door="secure_in") == Decision(Reason.GRANTED, "alice")
    assert at_lift("alice").floors


# -------------------------------------------------------------- lockdown


def test_a_lockdown_of_one_floors_area_drops_just_that_floor() -> None:
    state = DecisionState(lockdown_areas={"office"})
    assert at_lift("alice", state=state).floors == ("lobby", "gym", "suite", "secure")


def test_a_responder_still_gets_a_locked_down_floor() -> None:
    state = DecisionState(lockdown_areas={"office"})
    assert at_lift("resp", state=state).floors == ALICE_DAY


def test_a_site_lockdown_refuses_everyone_but_responders() -> None:
    state = DecisionState(lockdown_site=True)
    assert at_lift("alice", state=state) == Decision(Reason.LOCKDOWN, "alice")
    assert at_lift("resp", state=state).floors == ALICE_DAY


# --------------------------------------------------------------- visitors


def test_a_visitor_is_held_to_their_allowed_areas_not_to_schedules() -> None:
    assert at_lift("vfree") == Decision(Reason.GRANTED, "vfree", floors=("lobby", "office"))
    assert at_lift("vfree", WED_2200).floors == ("lobby", "office")


def test_a_visitor_alone_for_an_escort_floor_waits_for_an_escort() -> None:
    assert at_lift("vic") == Decision(Reason.ESCORT_REQUIRED, "vic")
    assert at_lift("vic", WED_2200) == Decision(Reason.ESCORT_REQUIRED, "vic"), \
        "the wait wins over the lobby's no_access, even when the lobby is not public"


def test_visitor_first_then_their_escort_within_the_window_takes_the_visitor_along() -> None:
    state = DecisionState()
    assert badge(state, "vic", WED_NOON).reason is Reason.ESCORT_REQUIRED
    assert [(p.person, p.kind) for p in state.pending["lift"]] == [("vic", PENDING_VISITOR)]
    d = badge(state, "host", WED_NOON + 10)
    assert d == Decision(Reason.GRANTED_ESCORTED, "host", ("vic",), floors=ALICE_DAY)
    assert "suite" in d.floors
    assert state.presence == {}, "nobody moves before a floor is chosen"
    assert [(p.person, p.kind) for p in state.pending["lift"]] == [("host", PENDING_ESCORT)], \
        "the visitor was taken along; the host may still bring another"


def test_someone_with_the_escort_role_may_take_a_waiting_visitor_but_a_plain_colleague_may_not() -> None:
    state = DecisionState()
    badge(state, "vic", WED_NOON)
    assert at_lift("alice", WED_NOON + 5, state) == Decision(Reason.GRANTED, "alice", floors=ALICE_DAY)
    assert at_lift("esc", WED_NOON + 5, state).companions == ("vic",)


def test_an_escort_after_the_window_takes_nobody_along() -> None:
    state = DecisionState()
    badge(state, "vic", WED_NOON)
    assert at_lift("host", WED_NOON + 31, state) == Decision(Reason.GRANTED, "host", floors=ALICE_DAY)


def test_escort_first_then_the_visitor_within_the_window_is_granted_the_escort_floor() -> None:
    state = DecisionState()
    assert badge(state, "host", WED_NOON).reason is Reason.GRANTED
    assert at_lift("vic", WED_NOON + 5, state) == Decision(Reason.GRANTED_ESCORTED, "vic", ("host",),
                                                           floors=("suite",))
    assert at_lift("vic", WED_NOON + 31, state) == Decision(Reason.ESCORT_REQUIRED, "vic")


# -------------------------------------------------------------- two-person


def test_two_person_floor_waits_for_the_second_then_enables_it_with_the_first_along() -> None:
    state = DecisionState()
    assert badge(state, "vx", WED_NOON) == Decision(Reason.AWAITING_SECOND_PERSON, "vx")
    assert [(p.person, p.kind) for p in state.pending["lift"]] == [("vx", PENDING_TWO_PERSON)]
    d = at_lift("vz", WED_NOON + 10, state)
    assert d == Decision(Reason.GRANTED_TWO_PERSON, "vz", ("vx",),
                         floors=("lobby", "office", "vault", "gym", "suite", "secure"))
    assert at_lift("vy", WED_NOON + 10, state) == Decision(Reason.GRANTED_TWO_PERSON, "vy", ("vx",),
                                                          floors=("vault",))


def test_someone_without_the_two_person_floor_does_not_consume_the_waiting_partner() -> None:
    state = DecisionState()
    badge(state, "vx", WED_NOON)
    assert badge(state, "alice", WED_NOON + 5) == Decision(Reason.GRANTED, "alice", floors=ALICE_DAY)
    assert at_lift("vy", WED_NOON + 10, state).companions == ("vx",)


def test_the_second_person_after_the_window_waits_in_turn() -> None:
    state = DecisionState()
    badge(state, "vx", WED_NOON)
    assert at_lift("vy", WED_NOON + 31, state) == Decision(Reason.AWAITING_SECOND_PERSON, "vy")


# --------------------------------------------------------------- occupancy


def test_a_full_floor_is_dropped_and_the_others_stay() -> None:
    state = DecisionState(presence={"dave": Presence("gym", WED_NOON - 60)})
    assert at_lift("alice", state=state).floors == ("lobby", "office", "suite", "secure")


def test_a_full_floor_stays_enabled_for_someone_already_counted_on_it() -> None:
    state = DecisionState(presence={"alice": Presence("gym", WED_NOON - 60)})
    assert at_lift("alice", state=state).floors == ALICE_DAY


# --------------------------------------------------------------------- PIN


def test_a_pin_lift_grants_only_with_the_right_pin() -> None:
    assert at_lift("pinny", door="pinlift", pin="1234") == Decision(Reason.GRANTED, "pinny", floors=("office", "gym"))
    assert at_lift("pinny", door="pinlift", pin="9999") == Decision(Reason.WRONG_PIN, "pinny")
    assert at_lift("pinny", door="pinlift") == Decision(Reason.PIN_REQUIRED, "pinny")


def test_wrong_pins_at_a_pin_lift_lock_the_card_out() -> None:
    state = DecisionState()
    for i in range(3):
        assert badge(state, "pinny", WED_NOON + i, "pinlift", pin="0000").reason is Reason.WRONG_PIN
    assert at_lift("pinny", WED_NOON + 5, state, door="pinlift", pin="1234").reason is Reason.PIN_LOCKED_OUT


# ------------------------------------------------------------ anti-passback


def test_a_lift_ignores_anti_passback_where_a_door_enforces_it() -> None:
    state = DecisionState(presence={"alice": Presence("office", WED_NOON - 60)})
    assert at_lift("alice", state=state, door="secure_in") == Decision(Reason.ANTI_PASSBACK, "alice")
    d = at_lift("alice", state=state)
    assert d.granted and "secure" in d.floors and d.violation is None


# ---------------------------------------------------------------- refusals


def test_the_refusal_is_the_first_floor_that_is_not_public_now() -> None:
    # The lobby (first floor) refuses "early" outside its 06:00-07:00 schedule; every other floor: no access.
    assert at_lift("early", WED_2200) == Decision(Reason.OUTSIDE_SCHEDULE, "early"), "the lobby is not public"
    assert at_lift("early", WED_NOON) == Decision(Reason.NO_ACCESS, "early"), \
        "the lobby is public by day: its refusal explains nothing, the office's does"
    assert at_lift("early", utc(2026, 3, 25, 6, 30)).floors == ("lobby",)


def test_a_lift_whose_every_floor_is_public_refuses_with_its_first_floors_reason() -> None:
    assert at_lift("nobody", door="lobbylift") == Decision(Reason.NO_ACCESS, "nobody")
    assert at_lift("vx", door="lobbylift") == Decision(Reason.NO_ACCESS, "vx")


def test_waiting_for_a_second_person_wins_over_every_refusal() -> None:
    assert at_lift("vx", WED_2200) == Decision(Reason.AWAITING_SECOND_PERSON, "vx")


def test_a_card_nobody_holds_is_refused_before_any_floor() -> None:
    d = decide(AccessRequest("lift", card_hash(KEY, "em4100", "0FFFFFFFFF")), SITE, DecisionState(), WED_NOON)
    assert d == Decision(Reason.UNKNOWN_CREDENTIAL)


# ------------------------------------------------------ destination dispatch


def test_a_dispatched_floor_enables_only_that_floor() -> None:
    assert at_lift("alice", floor="office") == Decision(Reason.GRANTED, "alice", floors=("office",))


def test_a_dispatched_floor_the_person_may_not_reach_is_refused_with_its_own_reason() -> None:
    assert at_lift("alice", WED_2200, floor="office") == Decision(Reason.OUTSIDE_SCHEDULE, "alice")
    assert at_lift("alice", floor="lab") == Decision(Reason.NO_ACCESS, "alice")
    assert at_lift("vic", floor="suite") == Decision(Reason.ESCORT_REQUIRED, "vic")


@pytest.mark.parametrize("floor", ["roof", "outside"])
def test_a_dispatched_floor_the_lift_does_not_serve_is_no_access(floor: str) -> None:
    assert at_lift("alice", floor=floor) == Decision(Reason.NO_ACCESS, "alice")


# ------------------------------------------------------------------ commit


def test_commit_moves_nobody_without_a_dispatched_floor() -> None:
    state = DecisionState(presence={"alice": Presence("outside", WED_NOON - 60)})
    assert badge(state, "alice", WED_NOON).granted
    assert state.presence == {"alice": Presence("outside", WED_NOON - 60)}


def test_commit_moves_the_person_and_companions_to_the_dispatched_floor() -> None:
    state = DecisionState()
    badge(state, "host", WED_NOON)
    assert badge(state, "vic", WED_NOON + 5, floor="suite").reason is Reason.GRANTED_ESCORTED
    assert state.presence == {"vic": Presence("suite", WED_NOON + 5), "host": Presence("suite", WED_NOON + 5)}
    assert state.occupancy("suite") == 2


def test_a_refused_dispatch_moves_nobody() -> None:
    state = DecisionState()
    assert not badge(state, "alice", WED_2200, floor="office").granted
    assert state.presence == {}


def test_commit_moves_nobody_to_a_dispatched_floor_the_grant_did_not_enable() -> None:
    state = DecisionState()
    r = req("alice", floor="office")
    commit(r, Decision(Reason.GRANTED, "alice", floors=("gym",)), SITE, state, WED_NOON)
    assert state.presence == {}


def test_a_grant_with_a_restricted_or_escort_floor_lets_a_visitor_follow() -> None:
    state = DecisionState()
    badge(state, "bob", WED_NOON)
    assert [(p.person, p.kind) for p in state.pending["lift"]] == [("bob", PENDING_ESCORT)]


def test_a_grant_with_no_restricted_floor_lets_nobody_follow() -> None:
    state = DecisionState()
    assert badge(state, "dave", WED_NOON).granted
    assert state.pending == {}
    assert badge(state, "vfree", WED_NOON + 1).granted
    assert state.pending == {}, "a visitor is never someone another visitor follows"


def test_a_dispatched_floor_still_lets_a_visitor_follow_when_it_is_an_escort_floor() -> None:
    state = DecisionState()
    badge(state, "host", WED_NOON, floor="suite")
    assert [(p.person, p.kind) for p in state.pending["lift"]] == [("host", PENDING_ESCORT)]
    state = DecisionState()
    badge(state, "host", WED_NOON, floor="office")
    assert state.pending == {}, "only the floor enabled counts, not the lift's other floors"


# ------------------------------------------------------------ choose_floor


def test_choose_floor_moves_the_grants_people_to_a_floor_the_lift_serves() -> None:
    state = DecisionState()
    assert choose_floor(SITE, state, "lift", "office", ["alice", "ghost", "vic"], WED_NOON) == ["alice", "vic"]
    assert state.presence == {"alice": Presence("office", WED_NOON), "vic": Presence("office", WED_NOON)}


@pytest.mark.parametrize("lift, floor", [("lift", "outside"), ("lift", "roof"), ("secure_in", "secure"),
                                         ("nowhere", "office"), ("pinlift", "lobby")])
def test_choose_floor_moves_nobody_off_a_lifts_floors(lift: str, floor: str) -> None:
    state = DecisionState(presence={"alice": Presence("lobby", WED_NOON - 60)})
    assert choose_floor(SITE, state, lift, floor, ["alice"], WED_NOON) == []
    assert state.presence == {"alice": Presence("lobby", WED_NOON - 60)}


# ------------------------------------------------------- public and offline


def test_public_floors_follow_their_schedule() -> None:
    state = DecisionState()
    assert public_floors(LIFT, SITE, state, WED_NOON) == ("lobby",)
    assert public_floors(LIFT, SITE, state, WED_2200) == ()
    assert public_floors(LIFT, SITE, state, SAT_NOON) == ()


def test_a_lockdown_of_the_floor_or_the_site_ends_its_public_hours() -> None:
    assert public_floors(LIFT, SITE, DecisionState(lockdown_areas={"lobby"}), WED_NOON) == ()
    assert public_floors(LIFT, SITE, DecisionState(lockdown_site=True), WED_NOON) == ()
    assert public_floors(LIFT, SITE, DecisionState(lockdown_areas={"office"}), WED_NOON) == ("lobby",)


def test_a_floor_naming_a_schedule_the_site_lacks_is_never_public() -> None:
    lift = replace(LIFT, floors=(LiftFloor("lobby", "gone"), LiftFloor("office", "always")))
    assert public_floors(lift, SITE, DecisionState(), WED_NOON) == ("office",)


def test_offline_floors_take_each_floors_own_setting_over_the_lifts() -> None:
    assert offline_floors(LIFT) == ("lobby", "office", "lab", "gym", "suite", "secure")
    assert offline_floors(SITE.doors["pinlift"]) == ("gym",)
    assert offline_floors(SITE.doors["lobbylift"]) == ()


def test_deciding_on_the_offline_view_keeps_companions_to_what_the_cached_floors_earned() -> None:
    """The edge decides a lift from its cache on offline_site(): with the client suite set to deny offline, the
    host's grant no longer takes the visitor waiting for an escort there (filtering a decision made on every
    floor kept her as a companion and the rule granted_escorted, earned only on the suite)."""
    suite_deny = replace(LIFT, floors=tuple(replace(f, offline=OfflineMode.DENY) if f.area == "suite" else f
                                            for f in LIFT.floors))
    site = replace(SITE, doors={**SITE.doors, "lift": suite_deny})
    view = offline_site(site, suite_deny)
    assert [f.area for f in view.doors["lift"].floors] == ["lobby", "office", "lab", "gym", "secure"]
    assert view.doors["secure_in"] is site.doors["secure_in"] and site.doors["lift"] is suite_deny, \
        "a view: the site itself is unchanged"
    state = DecisionState()
    r = req("vic")
    waiting = decide(r, site, state, WED_NOON)
    commit(r, waiting, site, state, WED_NOON)
    assert waiting.reason is Reason.ESCORT_REQUIRED
    online = decide(req("host"), site, state, WED_NOON)
    assert (online.reason, online.companions) == (Reason.GRANTED_ESCORTED, ("vic",))
    offline = decide(req("host"), view, state, WED_NOON)
    assert (offline.reason, offline.companions) == (Reason.GRANTED, ()), \
        "offline the host cannot take her to the suite, so she is no companion"
    assert "suite" not in offline.floors


def test_lift_floor_finds_a_served_floor_only() -> None:
    assert lift_floor(LIFT, "lobby") == LiftFloor("lobby", "business")
    assert lift_floor(LIFT, "outside") is None
