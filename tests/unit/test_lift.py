"""The lift cab's floor machine (edge/lift.py): credits naming floors, the floor chosen, public, blocked and held
floors, on a fake clock and without a thread."""

from __future__ import annotations

import pytest

from doorkeep.clock import FakeClock
from edge.door import DoorEvent, DoorState
from edge.lift import NOBODY, FloorEvent, LiftMachine, LiftTimings

FLOORS = ("lobby", "office", "lab", "roof")


def machine(unlock_s: float = 5.0, *, buttons: bool = True,
            floors: tuple[str, ...] = FLOORS) -> tuple[LiftMachine, FakeClock]:
    clock = FakeClock()
    return LiftMachine("lift", floors, LiftTimings(unlock_s), clock, buttons=buttons), clock


def kinds(events: list[DoorEvent]) -> list[tuple[str, str]]:
    return [(e.type, e.detail) for e in events]


def chosen(events: list[DoorEvent]) -> list[tuple[str, str]]:
    """The (grant, floor) of every floor_chosen event: the floor must travel on the event itself."""
    out = []
    for e in events:
        if e.type == "floor_chosen":
            assert isinstance(e, FloorEvent), e
            out.append((e.detail, e.floor))
    return out


# ----------------------------------------------------------------- grants


def test_a_grant_enables_exactly_its_floors_and_only_those_the_cab_serves() -> None:
    m, _ = machine()
    assert kinds(m.grant("ev-1", ("office", "basement", "roof"))) == [("unlocked", "grant")]
    assert m.enabled == frozenset({"office", "roof"}), "basement is not served by this cab: never enabled"
    assert m.credits == 1 and m.relay_energised and m.state is DoorState.UNLOCKED
    assert m.covers("office") and m.covers("roof")
    assert not m.covers("lobby") and not m.covers("basement")


def test_a_grant_without_floors_enables_every_floor() -> None:
    m, _ = machine()
    m.grant("ev-1", None)
    assert m.enabled == frozenset(FLOORS)
    assert all(m.covers(f) for f in FLOORS)


def test_a_grant_naming_no_floor_this_cab_serves_is_reported_unused_at_once_with_buttons() -> None:
    m, clock = machine(buttons=True)
    events = m.grant("ev-1", ("basement",))
    assert kinds(events) == [("grant_unused", "ev-1")]
    assert events[0].at == clock.monotonic()
    assert m.credits == 0 and m.enabled == frozenset() and not m.relay_energised


def test_a_grant_naming_no_floor_this_cab_serves_says_nothing_without_buttons() -> None:
    m, _ = machine(buttons=False)
    assert m.grant("ev-1", ("basement",)) == []
    assert m.grant("ev-2", ()) == []
    assert m.credits == 0 and m.enabled == frozenset()


def test_two_grants_are_two_credits_each_with_its_own_floors() -> None:
    m, clock = machine()
    m.grant("ev-1", ("lobby", "office"))
    clock.advance(1)
    assert m.grant("ev-2", ("office", "roof")) == [], "already energised: no second unlocked event"
    assert m.credits == 2
    assert m.enabled == frozenset({"lobby", "office", "roof"})


def test_a_press_uses_the_oldest_credit_naming_that_floor() -> None:
    m, clock = machine()
    m.grant("ev-1", ("lobby", "office"))
    clock.advance(1)
    m.grant("ev-2", ("office", "roof"))
    clock.advance(1)
    events = m.press("office")
    assert chosen(events) == [("ev-1", "office")]
    assert events[0].at == clock.monotonic()
    assert m.credits == 1
    assert m.enabled == frozenset({"office", "roof"}), "ev-1's lobby goes dark; ev-2 still names office and roof"
    events = m.press("office")
    assert chosen(events) == [("ev-2", "office")]
    assert kinds(events)[-1] == ("relocked", "chosen")
    assert m.enabled == frozenset() and m.credits == 0


def test_a_press_skips_older_credits_that_do_not_name_the_floor() -> None:
    m, clock = machine()
    m.grant("ev-1", ("lobby",))
    clock.advance(1)
    m.grant("ev-2", ("roof",))
    assert chosen(m.press("roof")) == [("ev-2", "roof")]
    assert m.credits == 1 and m.enabled == frozenset({"lobby"})
    assert m.covers("lobby") and not m.covers("roof")


def test_the_credit_used_takes_its_other_floors_dark_but_public_floors_stay() -> None:
    m, _ = machine()
    m.set_public(frozenset({"lobby"}))
    m.grant("ev-1", ("lobby", "office", "roof"))
    assert kinds(m.press("office")) == [("floor_chosen", "ev-1")], "the public lobby keeps the relays energised"
    assert m.enabled == frozenset({"lobby"})


def test_a_press_of_a_dark_floor_does_nothing() -> None:
    m, _ = machine()
    m.grant("ev-1", ("office",))
    assert m.press("roof") == []
    assert m.press("basement") == []
    assert m.credits == 1 and m.enabled == frozenset({"office"})


def test_a_press_with_no_credit_at_all_does_nothing() -> None:
    m, _ = machine()
    assert m.press("office") == []
    assert m.enabled == frozenset()


# ----------------------------------------------------------------- expiry


def test_a_credit_not_used_in_time_is_reported_unused_dated_at_its_deadline() -> None:
    m, clock = machine(unlock_s=5, buttons=True)
    start = clock.monotonic()
    m.grant("ev-1", ("office",))
    clock.advance(4.999)
    assert m.tick() == [] and m.enabled == frozenset({"office"})
    assert m.next_deadline() == start + 5
    clock.advance(10)
    events = m.tick()
    assert kinds(events) == [("grant_unused", "ev-1"), ("relocked", "expired")]
    assert [e.at for e in events] == [start + 5, start + 5], "dated at its deadline, however late tick() runs"
    assert m.enabled == frozenset() and m.next_deadline() is None


def test_without_buttons_a_credit_simply_runs_out() -> None:
    m, clock = machine(unlock_s=5, buttons=False)
    m.grant("ev-1", ("office",))
    clock.advance(5)
    assert kinds(m.tick()) == [("relocked", "expired")]
    assert m.credits == 0


def test_the_second_of_two_credits_runs_out_on_its_own_time() -> None:
    m, clock = machine(unlock_s=5)
    m.grant("ev-1", ("office",))
    clock.advance(3)
    m.grant("ev-2", ("roof",))
    clock.advance(2)
    assert kinds(m.tick()) == [("grant_unused", "ev-1")], "roof still enabled: no relocked yet"
    assert m.enabled == frozenset({"roof"})
    clock.advance(3)
    assert kinds(m.tick()) == [("grant_unused", "ev-2"), ("relocked", "expired")]


def test_a_remote_call_with_nobody_behind_it_is_never_reported() -> None:
    m, clock = machine(unlock_s=5, buttons=True)
    m.grant(NOBODY, None)
    assert m.enabled == frozenset(FLOORS)
    assert kinds(m.press("roof")) == [("relocked", "chosen")], "the credit is used, but nobody is named"
    m.grant(NOBODY, ("office",))
    clock.advance(5)
    assert kinds(m.tick()) == [("relocked", "expired")]
    assert m.grant(NOBODY, ("basement",)) == []
    m.grant(NOBODY, ("lobby",))
    assert kinds(m.safe()) == [("relocked", "safe")]


# ----------------------------------------------- deadlines before inputs


def test_a_press_after_the_deadline_finds_the_credit_already_cancelled() -> None:
    m, clock = machine(unlock_s=5)
    start = clock.monotonic()
    m.grant("ev-1", ("office",))
    clock.advance(5)  # exactly at the deadline: the credit is gone
    events = m.press("office")
    assert kinds(events) == [("grant_unused", "ev-1"), ("relocked", "expired")]
    assert [e.at for e in events] == [start + 5, start + 5]
    assert chosen(events) == []


def test_a_press_just_before_the_deadline_uses_the_credit() -> None:
    m, clock = machine(unlock_s=5)
    m.grant("ev-1", ("office",))
    clock.advance(4.999)
    assert chosen(m.press("office")) == [("ev-1", "office")]
    clock.advance(10)
    assert m.tick() == [], "a used credit is never reported unused"


def test_a_grant_after_an_unticked_deadline_reports_the_old_one_first() -> None:
    m, clock = machine(unlock_s=5)
    start = clock.monotonic()
    m.grant("ev-1", ("office",))
    clock.advance(7)
    events = m.grant("ev-2", ("roof",))
    assert kinds(events) == [("grant_unused", "ev-1"), ("relocked", "expired"), ("unlocked", "grant")]
    assert [e.at for e in events] == [start + 5, start + 5, start + 7]
    assert m.enabled == frozenset({"roof"})


def run(script: list[tuple[float, str, tuple[str, ...]]], ticks: list[float]) -> list[tuple[str, float, str, str]]:
    """Play ``script`` (at, input, floors) on a fresh machine, ticking also at each of ``ticks``; every event."""
    m, clock = machine(unlock_s=5)
    start = clock.monotonic()
    out: list[DoorEvent] = []
    steps = sorted([(at, "tick", ()) for at in ticks] + script, key=lambda s: s[0])
    for at, what, floors in steps:
        clock.advance(start + at - clock.monotonic())
        if what == "tick":
            out += m.tick()
        elif what.startswith("grant:"):
            out += m.grant(what.split(":", 1)[1], floors)
        elif what == "press":
            out += m.press(floors[0])
        elif what == "public":
            out += m.set_public(frozenset(floors))
    return [(e.type, e.at - start, e.detail, getattr(e, "floor", "")) for e in out]


def test_the_outcome_depends_only_on_the_input_times_not_on_when_ticks_ran() -> None:
    script = [(0.0, "grant:ev-1", ("lobby", "office")), (2.0, "grant:ev-2", ("office",)),
              (3.0, "public", ("roof",)), (6.5, "press", ("office",)), (8.0, "press", ("lobby",)),
              (9.0, "public", ())]
    lazy = run(script, ticks=[])
    busy = run(script, ticks=[0.5 * i for i in range(30)])
    assert lazy == busy
    assert ("grant_unused", 5.0, "ev-1", "") in lazy
    assert ("floor_chosen", 6.5, "ev-2", "office") in lazy
    assert not any(e[0] == "floor_chosen" and e[3] == "lobby" for e in lazy), "ev-1 had run out by 8 s"


# ----------------------------------------------------- public and blocked


def test_public_floors_are_enabled_without_a_badge_and_never_run_out() -> None:
    m, clock = machine()
    assert kinds(m.set_public(frozenset({"lobby", "basement"}))) == [("unlocked", "schedule")]
    assert m.public == frozenset({"lobby"}) and m.enabled == frozenset({"lobby"})
    clock.advance(3600)
    assert m.tick() == [] and m.enabled == frozenset({"lobby"})
    assert m.press("lobby") == [], "a public floor's button uses no credit and reports nothing"
    assert not m.covers("lobby")
    assert kinds(m.set_public(frozenset())) == [("relocked", "schedule")]
    assert m.enabled == frozenset()


def test_blocking_takes_a_floor_out_of_the_credits_in_force_and_the_public_floors() -> None:
    m, _ = machine()
    m.set_public(frozenset({"lobby"}))
    m.grant("ev-1", ("lobby", "office"))
    m.set_blocked(frozenset({"lobby", "basement"}))
    assert m.blocked == frozenset({"lobby"})
    assert m.enabled == frozenset({"office"})
    assert not m.covers("lobby")
    assert m.press("lobby") == [] and m.credits == 1, "a press of a blocked floor uses no credit"
    m.set_blocked(frozenset())
    assert m.enabled == frozenset({"lobby", "office"}), "the public lobby is back"
    assert not m.covers("lobby"), "the credit does not get back a floor the lockdown took out of it"


def test_a_public_floor_set_during_a_lockdown_stays_dark() -> None:
    m, _ = machine()
    m.set_blocked(frozenset({"lobby"}))
    assert m.set_public(frozenset({"lobby"})) == []
    assert m.enabled == frozenset()


def test_a_grant_naming_a_blocked_floor_enables_it_as_decide_let_its_holder_in() -> None:
    m, _ = machine()
    m.set_blocked(frozenset({"lobby"}))
    m.grant("ev-resp", ("lobby",))  # only a responder is granted a locked-down floor
    assert m.enabled == frozenset({"lobby"}) and m.covers("lobby")
    assert chosen(m.press("lobby")) == [("ev-resp", "lobby")]


def test_a_floor_already_blocked_is_not_taken_again_from_a_later_grant() -> None:
    m, _ = machine()
    m.set_blocked(frozenset({"lobby"}))
    m.grant("ev-resp", ("lobby", "office"))
    m.set_blocked(frozenset({"lobby", "roof"}))
    assert m.enabled == frozenset({"lobby", "office"})


def test_a_remote_unlock_during_a_lockdown_skips_the_blocked_floors() -> None:
    m, _ = machine()
    m.set_blocked(frozenset({"roof"}))
    m.grant(NOBODY, None)
    assert m.enabled == frozenset(FLOORS) - {"roof"}


def test_blocking_every_floor_of_a_credit_cancels_it_and_switches_the_relays_off() -> None:
    m, clock = machine(buttons=True)
    m.grant("ev-1", ("office",))
    events = m.set_blocked(frozenset({"office"}))
    assert kinds(events) == [("grant_unused", "ev-1"), ("relocked", "lockdown")]
    assert events[0].at == clock.monotonic()
    assert not m.relay_energised and m.state is DoorState.LOCKED and m.credits == 0
    assert m.next_deadline() is None
    clock.advance(60)
    assert m.tick() == [], "a cancelled credit is never reported again"


def test_blocking_every_floor_of_a_credit_without_buttons_reports_nothing_unused() -> None:
    m, _ = machine(buttons=False)
    m.grant("ev-1", ("office",))
    assert kinds(m.set_blocked(frozenset({"office"}))) == [("relocked", "lockdown")]
    assert m.credits == 0


def test_hold_enables_every_floor_blocked_or_not_and_presses_use_no_credit() -> None:
    m, _ = machine()
    m.set_blocked(frozenset({"roof"}))
    m.grant("ev-1", ("office",))
    m.hold_unlocked(True)
    assert m.held_unlocked and m.enabled == frozenset(FLOORS)
    assert not m.covers("office")
    assert m.press("office") == [] and m.credits == 1
    m.hold_unlocked(False)
    assert m.enabled == frozenset({"office"}), "the hold released: the credit again, the roof blocked again"


def test_safe_switches_everything_off_and_reports_the_credits_unused() -> None:
    m, clock = machine(buttons=True)
    m.set_public(frozenset({"lobby"}))
    m.grant("ev-1", ("office",))
    clock.advance(1)
    m.grant("ev-2", ("roof",))
    m.hold_unlocked(True)
    events = m.safe()
    assert kinds(events) == [("grant_unused", "ev-1"), ("grant_unused", "ev-2"), ("relocked", "safe")]
    assert m.enabled == frozenset() and m.credits == 0 and not m.held_unlocked and m.public == frozenset()
    assert m.next_deadline() is None


def test_safe_without_buttons_reports_no_credit() -> None:
    m, _ = machine(buttons=False)
    m.grant("ev-1", ("office",))
    assert kinds(m.safe()) == [("relocked", "safe")]
    assert m.credits == 0


# ------------------------------------------------------------------ other


def test_tamper_is_reported_on_change_only_and_leaves_the_floors_alone() -> None:
    m, _ = machine()
    m.grant("ev-1", ("office",))
    assert kinds(m.tamper(True)) == [("tamper", "opened")] and m.tampered
    assert m.tamper(True) == []
    assert kinds(m.tamper(False)) == [("tamper", "restored")] and not m.tampered
    assert m.enabled == frozenset({"office"}) and m.credits == 1


def test_a_cab_ignores_rex_and_contact_but_still_applies_deadlines() -> None:
    m, clock = machine(unlock_s=5)
    m.grant("ev-1", ("office",))
    assert m.rex() == [] and m.contact(True) == [] and m.contact(False) == []
    assert not m.door_open and not m.sounder_on
    clock.advance(5)
    assert kinds(m.rex()) == [("grant_unused", "ev-1"), ("relocked", "expired")]


@pytest.mark.parametrize("unlock_s", [0.0, -1.0, float("nan")])
def test_lift_timings_refuse_a_grant_time_that_is_not_positive(unlock_s: float) -> None:
    with pytest.raises(ValueError):
        LiftTimings(unlock_s)


# ------------------------------------------------- what the events carry (make mutation's survivors)


def test_a_new_machine_is_idle_named_and_reports_nothing_unused_by_default() -> None:
    clock = FakeClock()
    m = LiftMachine("lift-a", FLOORS, LiftTimings(2.0), clock)
    assert m.door == "lift-a"
    assert m.held_unlocked is False and m.tampered is False and m.buttons is False
    m.grant("ev-1", ("lobby",))
    clock.advance(2.0)
    assert m.tick() == [DoorEvent("relocked", clock.monotonic(), "expired")], \
        "without buttons (the default) a credit runs out silently"


def test_every_relay_change_is_dated_now_and_says_why() -> None:
    m, clock = machine()
    clock.advance(1.0)
    assert m.hold_unlocked(True) == [DoorEvent("unlocked", clock.monotonic(), "schedule")]
    clock.advance(1.0)
    assert m.hold_unlocked(False) == [DoorEvent("relocked", clock.monotonic(), "schedule")]
    m.grant("ev-1", ("lobby",))
    clock.advance(1.0)
    assert m.press("lobby") == [FloorEvent("floor_chosen", clock.monotonic(), "ev-1", "lobby"),
                                DoorEvent("relocked", clock.monotonic(), "chosen")]
    m.grant("ev-2", ("office",))
    clock.advance(1.0)
    assert m.set_blocked(frozenset({"office"})) == [DoorEvent("grant_unused", clock.monotonic(), "ev-2"),
                                                    DoorEvent("relocked", clock.monotonic(), "lockdown")]
    m.set_blocked(frozenset())
    m.grant("ev-3", ("lab",))
    clock.advance(1.0)
    assert m.safe() == [DoorEvent("grant_unused", clock.monotonic(), "ev-3"),
                        DoorEvent("relocked", clock.monotonic(), "safe")]


def test_safe_ends_a_hold() -> None:
    m, _ = machine()
    m.hold_unlocked(True)
    m.safe()
    assert m.held_unlocked is False and m.enabled == frozenset()


def test_a_tamper_event_is_dated_when_the_loop_opened() -> None:
    m, clock = machine()
    clock.advance(3.0)
    assert m.tamper(True) == [DoorEvent("tamper", clock.monotonic(), "opened")]


def test_lift_timings_take_any_positive_grant_time_and_name_the_key_when_refused() -> None:
    assert LiftTimings(0.5).unlock_s == 0.5
    with pytest.raises(ValueError, match=r"unlock_s must be > 0, got 0"):
        LiftTimings(0)
