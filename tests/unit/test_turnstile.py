"""The turnstile machine (edge/turnstile.py): one passage per grant, unused grants cancelled, tailgating and
forced passages told apart, on a fake clock."""

from __future__ import annotations

import pytest

from doorkeep.clock import FakeClock
from edge.door import DoorEvent, DoorState
from edge.turnstile import TurnstileMachine, TurnstileTimings


def machine(unlock_s: float = 5.0, tailgate_s: float = 3.0) -> tuple[TurnstileMachine, FakeClock]:
    clock = FakeClock()
    return TurnstileMachine("gate", TurnstileTimings(unlock_s, tailgate_s), clock), clock


def kinds(events: list[DoorEvent]) -> list[tuple[str, str]]:
    return [(e.type, e.detail) for e in events]


def test_a_grant_frees_the_arms_for_one_passage_and_they_lock_behind_it() -> None:
    m, clock = machine()
    assert kinds(m.grant("ev-1")) == [("unlocked", "grant")]
    assert m.relay_energised is True and m.state is DoorState.UNLOCKED and m.credits == 1
    clock.advance(2)
    assert kinds(m.passage()) == [("passage", "ev-1"), ("relocked", "closed")]
    assert m.relay_energised is False and m.credits == 0
    assert m.next_deadline() is None


def test_a_grant_not_used_in_time_is_cancelled_and_says_which() -> None:
    m, clock = machine(unlock_s=5)
    start = clock.monotonic()
    m.grant("ev-1")
    clock.advance(4.999)
    assert m.tick() == [] and m.relay_energised is True
    clock.advance(0.001)
    events = m.tick()
    assert kinds(events) == [("grant_unused", "ev-1"), ("relocked", "expired")]
    assert [e.at for e in events] == [start + 5, start + 5], "dated at its deadline, however late tick() runs"
    assert m.relay_energised is False


def test_two_grants_in_a_row_are_two_passages_used_in_order() -> None:
    m, clock = machine(unlock_s=5)
    m.grant("ev-1")
    clock.advance(1)
    assert kinds(m.grant("ev-2")) == [], "already unlocked: no second unlocked event"
    assert kinds(m.passage()) == [("passage", "ev-1")]
    assert m.relay_energised is True, "the second grant still waits for its person"
    clock.advance(1)
    assert kinds(m.passage()) == [("passage", "ev-2"), ("relocked", "closed")]


def test_the_second_of_two_grants_runs_out_on_its_own_time() -> None:
    m, clock = machine(unlock_s=5)
    m.grant("ev-1")
    clock.advance(3)
    m.grant("ev-2")
    clock.advance(2)  # ev-1 runs out at 5, ev-2 still has 3 s
    assert kinds(m.tick()) == [("grant_unused", "ev-1")]
    assert m.relay_energised is True
    assert kinds(m.passage()) == [("passage", "ev-2"), ("relocked", "closed")]


def test_a_second_passage_on_one_grant_is_tailgate_and_later_a_forced_passage() -> None:
    m, clock = machine(tailgate_s=3)
    m.grant("ev-1")
    m.passage()
    clock.advance(1)
    assert kinds(m.passage()) == [("tailgate", "ev-1")], "the follower is named by the grant they followed"
    clock.advance(2)
    assert kinds(m.passage()) == [("tailgate", "ev-1")], "a third person, 3 s after the one who badged"
    clock.advance(0.01)
    assert kinds(m.passage()) == [("forced_passage", "")]
    assert m.relay_energised is False, "an alarm never releases the arms"


def test_a_passage_with_no_grant_ever_is_forced() -> None:
    m, _ = machine()
    assert kinds(m.passage()) == [("forced_passage", "")]
    assert m.relay_energised is False


def test_rex_is_one_free_passage_that_names_no_grant() -> None:
    m, clock = machine()
    assert kinds(m.rex()) == [("rex", ""), ("unlocked", "rex")]
    clock.advance(1)
    assert kinds(m.passage()) == [("passage", ""), ("relocked", "closed")]
    m.rex()
    clock.advance(5)
    assert kinds(m.tick()) == [("relocked", "expired")], "an unused REX cancels nothing anyone must hear of"


def test_held_unlocked_every_passage_is_free_and_a_credit_outlives_the_hold() -> None:
    m, clock = machine(unlock_s=5)
    assert kinds(m.hold_unlocked(True)) == [("unlocked", "schedule")]
    assert kinds(m.passage()) == [("passage", "")]
    assert kinds(m.passage()) == [("passage", "")], "no tailgate while held: everyone may pass"
    m.grant("ev-1")
    assert kinds(m.hold_unlocked(False)) == [], "ev-1's credit keeps the arms free"
    clock.advance(1)
    assert kinds(m.passage()) == [("passage", "ev-1"), ("relocked", "closed")]


def test_safe_cancels_every_credit_and_locks() -> None:
    m, _ = machine()
    m.grant("ev-1")
    m.grant("ev-2")
    m.rex()
    m.hold_unlocked(True)
    assert kinds(m.safe()) == [("grant_unused", "ev-1"), ("grant_unused", "ev-2"), ("relocked", "safe")]
    assert m.relay_energised is False and m.held_unlocked is False and m.credits == 0


def test_a_contact_input_does_nothing_and_tamper_is_reported_only() -> None:
    m, _ = machine()
    assert m.contact(True) == [] and m.door_open is False
    assert kinds(m.tamper(True)) == [("tamper", "opened")]
    assert m.tamper(True) == []
    assert m.relay_energised is False and m.sounder_on is False


@pytest.mark.parametrize("unlock_s, tailgate_s", [(0, 3), (-1, 3), (5, -0.1), (float("nan"), 3)])
def test_bad_timings_are_refused(unlock_s: float, tailgate_s: float) -> None:
    with pytest.raises(ValueError):
        TurnstileTimings(unlock_s, tailgate_s)


# ------------------------------------------------------------------ what mutation testing asked for


def test_every_event_is_dated_when_it_happened() -> None:
    m, clock = machine(unlock_s=5, tailgate_s=3)
    clock.advance(1)
    t = clock.monotonic()
    assert [e.at for e in m.rex()] == [t, t]
    clock.advance(1)
    assert [e.at for e in m.passage()] == [t + 1, t + 1], "the passage and the arms locking behind it"
    assert [e.at for e in m.passage()] == [t + 1], "a tailgater on the REX passage"
    clock.advance(10)
    assert [e.at for e in m.passage()] == [t + 11], "forced"
    m.grant("ev-1")
    clock.advance(1)
    assert [e.at for e in m.hold_unlocked(True)] == []
    assert [e.at for e in m.passage()] == [t + 12], "a free passage while held"
    m.hold_unlocked(False)
    m.grant("ev-2")
    clock.advance(1)
    assert [(e.type, e.at) for e in m.safe()] == [("grant_unused", t + 13), ("grant_unused", t + 13),
                                                   ("relocked", t + 13)]
    assert [(e.type, e.at) for e in m.hold_unlocked(True)] == [("unlocked", t + 13)]
    assert [e.at for e in m.tamper(True)] == [t + 13]


def test_a_grant_without_a_token_is_a_free_passage_like_rex() -> None:
    m, _ = machine()
    assert kinds(m.grant()) == [("unlocked", "rex")]
    assert kinds(m.passage()) == [("passage", ""), ("relocked", "closed")]


def test_the_next_deadline_is_the_oldest_credits_end() -> None:
    m, clock = machine(unlock_s=5)
    start = clock.monotonic()
    m.grant("ev-1")
    clock.advance(2)
    m.grant("ev-2")
    assert m.next_deadline() == start + 5
    m.passage()
    assert m.next_deadline() == start + 7


def test_any_input_first_applies_the_deadlines_already_due() -> None:
    m, clock = machine(unlock_s=5)
    m.grant("ev-1")
    clock.advance(6)
    assert kinds(m.contact(True)) == [("grant_unused", "ev-1"), ("relocked", "expired")]
    assert m.relay_energised is False
    now = clock.monotonic()
    assert [(e.type, e.at) for e in m.grant("ev-2")] == [("unlocked", now)]
    clock.advance(6)
    assert kinds(m.tamper(True)) == [("grant_unused", "ev-2"), ("relocked", "expired"), ("tamper", "opened")]


def test_a_new_machine_is_locked_not_held_not_tampered_and_named() -> None:
    m, _ = machine()
    assert m.door == "gate"
    assert m.relay_energised is False and m.held_unlocked is False and m.tampered is False
    assert m.state is DoorState.LOCKED and m.next_deadline() is None


def test_the_smallest_timings_are_accepted_and_bad_ones_name_their_key() -> None:
    assert TurnstileTimings(0.5, 0).tailgate_s == 0
    assert TurnstileTimings(0.5, 0.5).unlock_s == 0.5
    with pytest.raises(ValueError, match="unlock_s must be > 0, got 0"):
        TurnstileTimings(0, 3)
    with pytest.raises(ValueError, match="tailgate_s must be >= 0, got -1"):
        TurnstileTimings(5, -1)


def test_commit_leaves_a_turnstiles_movers_to_pass_through_which_moves_exactly_them() -> None:
    """The pure rule the edge and the server share (doorkeep/decision.py): at a turnstile a grant moves nobody,
    its passage moves the people it named (only those the site knows); at a door the grant moves them."""
    from doorkeep.decision import AccessRequest, DecisionState, Presence, commit, decide, pass_through
    from doorkeep.model import AccessEntry, AccessLevel, Area, Credential, Door, DoorKind, Person, Schedule, Site, \
        TimeWindow, WEEKDAYS
    from datetime import time as clock_time

    always = Schedule("always", "Always", (TimeWindow(frozenset(WEEKDAYS), clock_time(0), None),))
    site = Site("t", "T", "UTC", {a: Area(a, a) for a in ("outside", "lobby")},
                {"gate": Door("gate", "Gate", "outside", "lobby", kind=DoorKind.TURNSTILE),
                 "door": Door("door", "Door", "outside", "lobby")},
                {"always": always}, {"all": AccessLevel("all", "All", (AccessEntry("lobby", "always"),))},
                {"ann": Person("ann", "Ann", access_levels=("all",)), "bo": Person("bo", "Bo", access_levels=("all",))},
                {"h-ann": Credential("h-ann", "0001", "em4100", "ann")})
    state = DecisionState(presence={"bo": Presence("outside", 10.0)})
    req = AccessRequest("gate", "h-ann")
    decision = decide(req, site, state, 100.0)
    assert decision.granted
    commit(req, decision, site, state, 100.0)
    assert "ann" not in state.presence and state.occupancy("lobby") == 0
    assert pass_through(site, state, "gate", ["ann", "bo", "ghost"], 101.0) == ["ann", "bo"]
    assert state.presence["ann"] == Presence("lobby", 101.0) and state.presence["bo"] == Presence("lobby", 101.0)
    assert "ghost" not in state.presence and state.occupancy("lobby") == 2
    assert pass_through(site, state, "nowhere", ["ann"], 102.0) == [] and state.presence["ann"].since == 101.0
    req = AccessRequest("door", "h-ann")
    commit(req, decide(req, site, state, 103.0), site, state, 103.0)
    assert state.presence["ann"] == Presence("lobby", 103.0), "at a door the grant itself moves her"
