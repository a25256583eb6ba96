"""The door state machine, driven by a fake clock: no threads, no waiting."""

from __future__ import annotations

from pathlib import Path

import pytest

from doorkeep.clock import FakeClock
from edge.door import DoorEvent, DoorMachine, DoorState, DoorTimings

T0 = 1000.0  # FakeClock's default monotonic start


def make(**timings: object) -> tuple[DoorMachine, FakeClock]:
    clock = FakeClock(monotonic=T0)
    return DoorMachine("front", DoorTimings(**timings), clock), clock  # type: ignore[arg-type]


def types(events: list[DoorEvent]) -> list[str]:
    return [e.type for e in events]


def test_starts_locked_with_relay_off() -> None:
    door, _ = make()
    assert door.door == "front"
    assert door.state is DoorState.LOCKED
    assert door.relay_energised is False
    assert not door.door_open
    assert door.next_deadline() is None
    assert door.tick() == []


def test_grant_energises_then_relocks_on_expiry() -> None:
    door, clock = make(unlock_s=5.0)
    events = door.grant()
    assert events == [DoorEvent("unlocked", T0, "grant")]
    assert door.relay_energised is True and door.state is DoorState.UNLOCKED
    assert door.next_deadline() == T0 + 5.0

    clock.advance(5.0)
    assert door.tick() == [DoorEvent("relocked", T0 + 5.0, "expired")]
    assert door.relay_energised is False and door.state is DoorState.LOCKED
    assert door.next_deadline() is None


def test_tick_before_deadline_does_nothing() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(4.5)
    assert door.tick() == []
    assert door.relay_energised is True
    assert door.next_deadline() == T0 + 5.0


def test_grant_open_close_relocks_at_close() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(1.0)
    assert types(door.contact(True)) == ["door_opened"]
    assert door.state is DoorState.OPEN and door.relay_energised is True
    clock.advance(1.0)
    events = door.contact(False)
    assert events == [DoorEvent("door_closed", T0 + 2.0), DoorEvent("relocked", T0 + 2.0, "closed")]
    assert door.state is DoorState.LOCKED and door.relay_energised is False
    assert door.next_deadline() is None
    clock.advance(100.0)
    assert door.tick() == []


def test_one_unlock_admits_one_opening() -> None:
    """After the door closed, reopening inside the original window is forced."""
    door, clock = make(unlock_s=5.0)
    door.grant()
    door.contact(True)
    door.contact(False)
    clock.advance(0.5)
    assert types(door.contact(True)) == ["door_opened", "forced_open"]


def test_unlock_expires_while_open_then_close_only_reports_closed() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0)
    door.grant()
    door.contact(True)
    clock.advance(5.0)
    assert door.tick() == [DoorEvent("relocked", T0 + 5.0, "expired")]
    assert door.state is DoorState.OPEN and door.relay_energised is False
    clock.advance(1.0)
    assert types(door.contact(False)) == ["door_closed"]
    assert door.state is DoorState.LOCKED


def test_repeated_contact_value_is_no_event() -> None:
    door, _ = make()
    assert door.contact(False) == []
    door.grant()
    assert types(door.contact(True)) == ["door_opened"]
    assert door.contact(True) == []


def test_rex_opens_without_forced_alarm() -> None:
    door, clock = make(unlock_s=5.0)
    events = door.rex()
    assert events == [DoorEvent("rex", T0), DoorEvent("unlocked", T0, "rex")]
    assert door.relay_energised is True
    clock.advance(2.0)
    assert types(door.contact(True)) == ["door_opened"]
    assert door.state is DoorState.OPEN
    assert types(door.contact(False)) == ["door_closed", "relocked"]


def test_forced_open_while_locked_then_close() -> None:
    door, clock = make()
    events = door.contact(True)
    assert events == [DoorEvent("door_opened", T0), DoorEvent("forced_open", T0)]
    assert door.state is DoorState.ALARM and door.relay_energised is False
    clock.advance(60.0)
    assert door.tick() == []  # no held-open on top of a forced opening
    assert door.contact(False) == [DoorEvent("door_closed", T0 + 60.0)]
    assert door.state is DoorState.LOCKED


def test_opening_after_unlock_expired_is_forced() -> None:
    """Deadlines due before an input are applied first, however late tick() is."""
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(6.0)  # no tick in between
    events = door.contact(True)
    assert types(events) == ["relocked", "door_opened", "forced_open"]
    assert events[0].at == T0 + 5.0


def test_held_open_fires_exactly_once_then_close() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0, prealarm_s=0)  # no pre-alarm: see below for it
    door.grant()
    clock.advance(1.0)
    door.contact(True)
    assert door.next_deadline() == T0 + 5.0
    clock.advance(4.0)
    assert types(door.tick()) == ["relocked"]
    assert door.next_deadline() == T0 + 31.0
    clock.advance(25.5)
    assert door.tick() == []
    clock.advance(0.5)
    assert door.tick() == [DoorEvent("held_open", T0 + 31.0)]
    assert door.state is DoorState.ALARM
    assert door.next_deadline() is None
    clock.advance(100.0)
    assert door.tick() == []
    assert types(door.contact(False)) == ["door_closed"]
    assert door.state is DoorState.LOCKED and door.relay_energised is False


def test_late_tick_fires_each_event_once_in_time_order() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0)
    door.grant()
    door.contact(True)
    clock.advance(1000.0)
    assert door.tick() == [
        DoorEvent("relocked", T0 + 5.0, "expired"),
        DoorEvent("held_open_warning", T0 + 20.0),  # the default pre-alarm, 10 s before held_open
        DoorEvent("held_open", T0 + 30.0),
    ]
    assert door.tick() == []


def test_held_open_closes_relay_still_on() -> None:
    """If the unlock outlasts held_open_s, closing still turns the relay off."""
    door, clock = make(unlock_s=60.0, held_open_s=10.0)
    door.grant()
    door.contact(True)
    clock.advance(10.0)
    assert types(door.tick()) == ["held_open"]
    assert door.relay_energised is True and door.state is DoorState.ALARM
    assert types(door.contact(False)) == ["door_closed", "relocked"]
    assert door.relay_energised is False and door.state is DoorState.LOCKED


def test_second_grant_extends_expiry() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(3.0)
    assert door.grant() == []  # already unlocked: no second "unlocked"
    assert door.next_deadline() == T0 + 8.0
    clock.advance(2.0)
    assert door.tick() == []
    assert door.relay_energised is True
    clock.advance(3.0)
    assert types(door.tick()) == ["relocked"]


def test_safe_turns_relay_off_and_cancels_unlock() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(1.0)
    assert door.safe() == [DoorEvent("relocked", T0 + 1.0, "safe")]
    assert door.relay_energised is False and door.state is DoorState.LOCKED
    assert door.next_deadline() is None
    assert door.safe() == []  # already safe: nothing to report
    assert types(door.contact(True)) == ["door_opened", "forced_open"]


def test_denied_path_never_energises() -> None:
    """A denied decision never calls grant(): nothing else may energise the relay."""
    door, clock = make()
    for _ in range(3):
        assert door.relay_energised is False
        door.contact(True)
        clock.advance(40.0)
        door.tick()
        assert door.relay_energised is False
        door.contact(False)
        door.safe()
    assert door.relay_energised is False


def test_rex_without_unlock_shunts_forced_alarm_only() -> None:
    door, clock = make(unlock_s=5.0, rex_unlocks=False)
    assert door.rex() == [DoorEvent("rex", T0)]
    assert door.relay_energised is False and door.state is DoorState.LOCKED
    clock.advance(2.0)
    assert types(door.contact(True)) == ["door_opened"]
    assert door.state is DoorState.OPEN and door.relay_energised is False
    assert types(door.contact(False)) == ["door_closed"]  # relay never on: no "relocked"


def test_rex_without_unlock_window_expires() -> None:
    door, clock = make(unlock_s=5.0, rex_unlocks=False)
    door.rex()
    clock.advance(5.0)
    assert door.tick() == []
    assert types(door.contact(True)) == ["door_opened", "forced_open"]


@pytest.mark.parametrize("kwargs", [{"unlock_s": 0}, {"unlock_s": float("nan")}, {"held_open_s": -1.0},
                                    {"held_open_s": 0}, {"held_open_s": float("nan")}, {"prealarm_s": -1.0},
                                    {"prealarm_s": float("nan")}])
def test_timings_reject_non_positive(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DoorTimings(**kwargs)  # type: ignore[arg-type]


def test_smallest_timings_are_accepted() -> None:
    """The bounds are exclusive at 0 only: a tiny unlock or held-open time and no pre-alarm are valid."""
    t = DoorTimings(unlock_s=0.001, held_open_s=0.001, prealarm_s=0.0)
    assert (t.unlock_s, t.held_open_s, t.prealarm_s) == (0.001, 0.001, 0.0)
    assert not t.prealarm_active


def test_held_open_zero_is_refused_by_the_config_check_too(tmp_path: Path) -> None:
    """``held_open_s = 0`` has no meaning to give: it would raise ``held_open`` the instant every authorised
    opening starts, and there is no switching held-open supervision off. The site check refuses it, naming the
    key (docs/configuration.md), before the edge could build a door from it."""
    from doorkeep.config import check
    from tests.unit.test_config import SITE, make_site, only

    d = make_site(tmp_path / "s", site=SITE.replace("unlock_s = 5", "unlock_s = 5\nheld_open_s = 0"))
    err = only(check(d), "doors.lobby_in.held_open_s")
    assert "greater than 0" in err.problem and "held_open_s" in err.fix


# ----------------------------------------------- held unlocked by schedule


def test_hold_unlocked_energises_and_release_relocks() -> None:
    door, clock = make()
    assert door.hold_unlocked(True) == [DoorEvent("unlocked", T0, "schedule")]
    assert door.relay_energised is True and door.held_unlocked and door.state is DoorState.UNLOCKED
    assert door.next_deadline() is None  # no unlock window: it stays unlocked
    clock.advance(3600.0)
    assert door.tick() == []
    assert door.relay_energised is True
    assert door.hold_unlocked(False) == [DoorEvent("relocked", T0 + 3600.0, "schedule")]
    assert door.relay_energised is False and not door.held_unlocked and door.state is DoorState.LOCKED


def test_hold_unlocked_repeated_value_is_no_event() -> None:
    door, _ = make()
    assert door.hold_unlocked(False) == []
    door.hold_unlocked(True)
    assert door.hold_unlocked(True) == []


def test_openings_while_held_are_authorised_and_never_held_open() -> None:
    door, clock = make(held_open_s=10.0)
    door.hold_unlocked(True)
    for _ in range(3):
        assert types(door.contact(True)) == ["door_opened"]
        assert door.state is DoorState.OPEN
        clock.advance(600.0)
        assert door.tick() == []  # propped open for ten minutes: no held_open alarm
        assert types(door.contact(False)) == ["door_closed"]  # closing keeps the relay on
        assert door.relay_energised is True and door.state is DoorState.UNLOCKED


def test_release_keeps_relay_while_a_grant_window_runs() -> None:
    door, clock = make(unlock_s=5.0)
    door.hold_unlocked(True)
    clock.advance(1.0)
    assert door.grant() == []  # already energised
    clock.advance(1.0)
    assert door.hold_unlocked(False) == []
    assert door.relay_energised is True
    clock.advance(3.9)
    assert door.tick() == []
    clock.advance(0.1)
    assert door.tick() == [DoorEvent("relocked", T0 + 6.0, "expired")]
    assert door.relay_energised is False


def test_grant_window_expiring_while_held_keeps_relay_on() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    door.hold_unlocked(True)
    clock.advance(10.0)
    assert door.tick() == []
    assert door.relay_energised is True
    assert door.hold_unlocked(False) == [DoorEvent("relocked", T0 + 10.0, "schedule")]


def test_release_while_open_starts_held_open_time() -> None:
    door, clock = make(held_open_s=10.0)
    door.hold_unlocked(True)
    door.contact(True)
    clock.advance(100.0)
    assert door.hold_unlocked(False) == [DoorEvent("relocked", T0 + 100.0, "schedule")]
    assert door.state is DoorState.OPEN
    assert door.next_deadline() == T0 + 110.0
    clock.advance(10.0)
    assert door.tick() == [DoorEvent("held_open", T0 + 110.0)]
    assert types(door.contact(False)) == ["door_closed"]
    assert door.state is DoorState.LOCKED


def test_hold_authorises_an_opening_already_in_progress() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=10.0)
    door.grant()
    door.contact(True)
    door.hold_unlocked(True)
    clock.advance(60.0)
    assert types(door.tick()) == []  # neither the expiry (held) nor held_open
    assert door.state is DoorState.OPEN and door.relay_energised is True


def test_release_with_the_door_shut_or_forced_starts_no_held_open_time() -> None:
    """Only an authorised opening still open at the release gets a held-open time: nothing is left pending."""
    door, clock = make(held_open_s=10.0)
    door.hold_unlocked(True)
    door.hold_unlocked(False)
    assert door.next_deadline() is None
    door.contact(True)  # forced: its alarm stands until it closes, with no held-open on top
    door.hold_unlocked(True)
    door.hold_unlocked(False)
    assert door.next_deadline() is None
    clock.advance(60.0)
    assert door.tick() == [] and door.state is DoorState.ALARM


def test_opening_after_release_is_forced() -> None:
    door, clock = make()
    door.hold_unlocked(True)
    door.hold_unlocked(False)
    clock.advance(1.0)
    assert types(door.contact(True)) == ["door_opened", "forced_open"]


def test_safe_releases_the_hold() -> None:
    door, _ = make()
    door.hold_unlocked(True)
    assert door.safe() == [DoorEvent("relocked", T0, "safe")]
    assert door.relay_energised is False and not door.held_unlocked
    assert types(door.contact(True)) == ["door_opened", "forced_open"]


# ------------------------------------------------- held-open pre-alarm


def test_prealarm_warns_once_at_its_time_then_held_open_keeps_sounding() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0, prealarm_s=10.0)
    door.grant()
    clock.advance(1.0)
    door.contact(True)
    assert door.sounder_on is False
    clock.advance(4.0)
    assert types(door.tick()) == ["relocked"]
    assert door.next_deadline() == T0 + 21.0
    clock.advance(15.9)
    assert door.tick() == [] and door.sounder_on is False
    clock.advance(0.1)
    assert door.tick() == [DoorEvent("held_open_warning", T0 + 21.0)]
    assert door.sounder_on is True and door.state is DoorState.OPEN  # a warning, not an alarm yet
    assert door.next_deadline() == T0 + 31.0
    clock.advance(5.0)
    assert door.tick() == []  # exactly once
    assert door.sounder_on is True
    clock.advance(5.0)
    assert door.tick() == [DoorEvent("held_open", T0 + 31.0)]
    assert door.sounder_on is True and door.state is DoorState.ALARM
    clock.advance(100.0)
    assert door.tick() == [] and door.next_deadline() is None
    assert types(door.contact(False)) == ["door_closed"]
    assert door.sounder_on is False and door.relay_energised is False and door.state is DoorState.LOCKED


def test_default_prealarm_is_ten_seconds_before_held_open() -> None:
    assert DoorTimings().prealarm_s == 10.0
    door, clock = make(unlock_s=5.0, held_open_s=25.0)
    door.grant()
    door.contact(True)
    clock.advance(1000.0)
    assert door.tick() == [
        DoorEvent("relocked", T0 + 5.0, "expired"),
        DoorEvent("held_open_warning", T0 + 15.0),
        DoorEvent("held_open", T0 + 25.0),
    ]


def test_closing_during_prealarm_silences_and_relocks() -> None:
    door, clock = make(unlock_s=60.0, held_open_s=30.0, prealarm_s=10.0)
    door.grant()
    door.contact(True)
    clock.advance(25.0)
    assert types(door.tick()) == ["held_open_warning"]
    assert door.sounder_on is True and door.relay_energised is True
    assert types(door.contact(False)) == ["door_closed", "relocked"]
    assert door.sounder_on is False and door.relay_energised is False
    assert door.next_deadline() is None
    clock.advance(100.0)
    assert door.tick() == []  # neither the warning's held_open nor a second warning


def test_closing_before_prealarm_means_no_warning() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0, prealarm_s=10.0)
    door.grant()
    door.contact(True)
    clock.advance(19.9)
    door.tick()
    door.contact(False)
    clock.advance(100.0)
    assert door.tick() == [] and door.sounder_on is False


@pytest.mark.parametrize("prealarm", [0.0, 30.0, 45.0])
def test_no_prealarm_sounder_starts_with_held_open(prealarm: float) -> None:
    """0 disables the pre-alarm, and so does one as long as the held-open time itself."""
    door, clock = make(unlock_s=5.0, held_open_s=30.0, prealarm_s=prealarm)
    door.grant()
    door.contact(True)
    clock.advance(29.9)
    assert types(door.tick()) == ["relocked"]
    assert door.sounder_on is False
    clock.advance(0.1)
    assert types(door.tick()) == ["held_open"]
    assert door.sounder_on is True
    door.contact(False)
    assert door.sounder_on is False


def test_hold_during_prealarm_cancels_it_and_silences() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0, prealarm_s=10.0)
    door.grant()
    door.contact(True)
    clock.advance(22.0)
    assert types(door.tick()) == ["relocked", "held_open_warning"]
    assert door.sounder_on is True
    door.hold_unlocked(True)
    assert door.sounder_on is False and door.next_deadline() is None
    clock.advance(600.0)
    assert door.tick() == []
    # Released while still open: a fresh held-open time with its own pre-alarm.
    door.hold_unlocked(False)
    assert door.next_deadline() == T0 + 622.0 + 20.0
    clock.advance(20.0)
    assert types(door.tick()) == ["held_open_warning"]
    assert door.sounder_on is True


def test_held_alarm_keeps_sounding_through_a_schedule_hold() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0, prealarm_s=10.0)
    door.grant()
    door.contact(True)
    clock.advance(30.0)
    door.tick()
    assert door.state is DoorState.ALARM and door.sounder_on is True
    door.hold_unlocked(True)
    assert door.sounder_on is True  # an alarm sounds until the door closes
    door.contact(False)
    assert door.sounder_on is False


def test_no_prealarm_while_held_unlocked_by_schedule() -> None:
    door, clock = make(held_open_s=30.0, prealarm_s=10.0)
    door.hold_unlocked(True)
    door.contact(True)
    clock.advance(3600.0)
    assert door.tick() == [] and door.sounder_on is False


# ------------------------------------------------------------- sounder


def test_sounder_starts_off() -> None:
    door, _ = make()
    assert door.sounder_on is False


def test_forced_opening_sounds_until_closed() -> None:
    door, clock = make(held_open_s=30.0, prealarm_s=10.0)
    assert types(door.contact(True)) == ["door_opened", "forced_open"]
    assert door.sounder_on is True and door.relay_energised is False
    clock.advance(60.0)
    assert door.tick() == []  # no warning or held_open on top of a forced opening
    assert door.sounder_on is True
    door.contact(False)
    assert door.sounder_on is False and door.relay_energised is False


def test_normal_passage_never_sounds() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0, prealarm_s=10.0)
    door.grant()
    clock.advance(1.0)
    door.contact(True)
    assert door.sounder_on is False
    clock.advance(3.0)
    door.contact(False)
    assert door.sounder_on is False


def test_grant_during_forced_alarm_keeps_sounding_until_close() -> None:
    door, _ = make()
    door.contact(True)
    door.grant()
    assert door.sounder_on is True and door.relay_energised is True
    assert types(door.contact(False)) == ["door_closed", "relocked"]
    assert door.sounder_on is False


# ---------------------------------------------------------- relay stuck


def forced_cycle(door: DoorMachine, clock: FakeClock) -> list[str]:
    clock.advance(1.0)
    opened = types(door.contact(True))
    clock.advance(1.0)
    door.contact(False)
    return opened


def normal_cycle(door: DoorMachine, clock: FakeClock, via: str = "grant") -> None:
    clock.advance(1.0)
    if via == "grant":
        door.grant()
    else:
        door.rex()
    door.contact(True)
    clock.advance(1.0)
    assert types(door.contact(False))[0] == "door_closed"


def test_relay_stuck_after_two_forced_openings_in_a_row() -> None:
    door, clock = make()
    assert forced_cycle(door, clock) == ["door_opened", "forced_open"]
    clock.advance(1.0)
    events = door.contact(True)
    assert events == [DoorEvent("door_opened", T0 + 3.0), DoorEvent("forced_open", T0 + 3.0),
                      DoorEvent("relay_stuck", T0 + 3.0)]
    assert door.relay_energised is False


def test_relay_stuck_is_reported_once() -> None:
    door, clock = make()
    forced_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open", "relay_stuck"]
    for _ in range(3):
        assert forced_cycle(door, clock) == ["door_opened", "forced_open"]


@pytest.mark.parametrize("between", ["grant", "rex", "hold"])
def test_grant_rex_or_hold_between_forced_openings_is_no_relay_stuck(between: str) -> None:
    door, clock = make(unlock_s=5.0)
    forced_cycle(door, clock)
    if between == "grant":
        door.grant()
    elif between == "rex":
        door.rex()
    else:
        door.hold_unlocked(True)
        door.hold_unlocked(False)
    clock.advance(10.0)  # the window expires unused
    door.tick()
    assert forced_cycle(door, clock) == ["door_opened", "forced_open"]
    assert forced_cycle(door, clock) == ["door_opened", "forced_open", "relay_stuck"]


def test_normal_grant_cycle_rearms_relay_stuck() -> None:
    door, clock = make()
    forced_cycle(door, clock)
    forced_cycle(door, clock)  # relay_stuck
    normal_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open"]
    assert forced_cycle(door, clock) == ["door_opened", "forced_open", "relay_stuck"]


def test_normal_rex_cycle_rearms_relay_stuck() -> None:
    door, clock = make()
    forced_cycle(door, clock)
    forced_cycle(door, clock)
    normal_cycle(door, clock, via="rex")
    forced_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open", "relay_stuck"]


def test_unused_grant_or_alarmed_cycle_does_not_rearm_relay_stuck() -> None:
    """Only an opening through a released lock that closes without alarm proves the relay works."""
    door, clock = make(unlock_s=5.0, held_open_s=10.0)
    forced_cycle(door, clock)
    forced_cycle(door, clock)  # relay_stuck reported
    door.grant()
    clock.advance(10.0)
    door.tick()  # the grant expires, the door never opened
    forced_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open"]
    door.grant()
    door.contact(True)
    clock.advance(20.0)
    assert "held_open" in types(door.tick())
    door.contact(False)  # closed after a held-open alarm: not a normal cycle
    forced_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open"]


def test_free_egress_rex_cycle_does_not_rearm_relay_stuck() -> None:
    """With rex_unlocks=False the relay stayed off, so that opening proves nothing about it."""
    door, clock = make(rex_unlocks=False)
    forced_cycle(door, clock)
    forced_cycle(door, clock)
    normal_cycle(door, clock, via="rex")
    forced_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open"]


# ---------------------------------------------------------------- tamper


def test_tamper_opened_and_restored() -> None:
    door, clock = make()
    assert not door.tampered
    assert door.tamper(True) == [DoorEvent("tamper", T0, "opened")]
    assert door.tampered
    assert door.tamper(True) == []  # a repeated value is not a change
    clock.advance(5.0)
    assert door.tamper(False) == [DoorEvent("tamper", T0 + 5.0, "restored")]
    assert not door.tampered
    assert door.tamper(False) == []


def test_tamper_never_energises_unlocks_or_sounds() -> None:
    door, _ = make()
    door.tamper(True)
    assert door.relay_energised is False and door.state is DoorState.LOCKED and door.sounder_on is False
    assert door.next_deadline() is None
    assert types(door.contact(True)) == ["door_opened", "forced_open"]  # tamper authorises nothing
    door.contact(False)
    door.tamper(False)
    assert door.relay_energised is False and door.state is DoorState.LOCKED


def test_tamper_leaves_an_unlock_in_force_alone() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(1.0)
    assert types(door.tamper(True)) == ["tamper"]
    assert door.relay_energised is True and door.next_deadline() == T0 + 5.0
    clock.advance(4.0)
    assert types(door.tamper(False)) == ["relocked", "tamper"]  # deadlines due first
    assert door.relay_energised is False


# ------------------------------------- REX that only authorises (rex_unlocks=False)


def test_authorising_rex_does_not_keep_relay_on_after_hold_release() -> None:
    door, _ = make(unlock_s=5.0, rex_unlocks=False)
    door.rex()
    door.hold_unlocked(True)
    assert door.hold_unlocked(False) == [DoorEvent("relocked", T0, "schedule")]
    assert door.relay_energised is False
    assert types(door.contact(True)) == ["door_opened"]  # the REX still authorises the opening


def test_authorising_rex_does_not_stretch_a_grant() -> None:
    door, clock = make(unlock_s=5.0, rex_unlocks=False)
    door.grant()
    clock.advance(4.0)
    assert door.rex() == [DoorEvent("rex", T0 + 4.0)]
    clock.advance(1.0)
    assert door.tick() == [DoorEvent("relocked", T0 + 5.0, "expired")]  # the grant's time, not the REX's
    assert door.next_deadline() == T0 + 9.0
    clock.advance(2.0)
    assert types(door.contact(True)) == ["door_opened"]  # within the REX's window: authorised
    assert door.relay_energised is False


# ------------------------------- deadlines due before an input are kept, not replaced


def test_grant_keeps_the_prealarm_and_held_open_that_fell_due_before_it() -> None:
    """A badge at a door left open with no tick since: the expiry, pre-alarm and alarm due before the badge
    are reported with it, in time order, before its own ``unlocked``: none is lost to the grant."""
    door, clock = make(unlock_s=5.0, held_open_s=30.0, prealarm_s=10.0)
    door.grant()
    door.contact(True)
    clock.advance(35.0)
    assert door.grant() == [
        DoorEvent("relocked", T0 + 5.0, "expired"),
        DoorEvent("held_open_warning", T0 + 20.0),
        DoorEvent("held_open", T0 + 30.0),
        DoorEvent("unlocked", T0 + 35.0, "grant"),
    ]
    assert door.state is DoorState.ALARM and door.sounder_on is True and door.relay_energised is True


def test_safe_keeps_the_alarm_that_fell_due_before_a_shutdown() -> None:
    """Shutdown (or the crash path) just after the held-open time: the pre-alarm and the alarm still come out,
    then the relay goes off; the door is still open, so the alarm stands and sounds (fail safe: relay off)."""
    door, clock = make(unlock_s=60.0, held_open_s=30.0, prealarm_s=10.0)
    door.grant()
    door.contact(True)
    clock.advance(31.0)
    assert door.safe() == [
        DoorEvent("held_open_warning", T0 + 20.0),
        DoorEvent("held_open", T0 + 30.0),
        DoorEvent("relocked", T0 + 31.0, "safe"),
    ]
    assert door.relay_energised is False and door.state is DoorState.ALARM and door.sounder_on is True
    assert door.next_deadline() is None


@pytest.mark.parametrize("name", ["grant", "rex", "hold", "safe", "tamper", "close", "tick"])
def test_every_input_reports_the_deadlines_due_before_it_first(name: str) -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0, prealarm_s=10.0)
    door.grant()
    door.contact(True)
    clock.advance(25.0)
    call = {"grant": door.grant, "rex": door.rex, "hold": lambda: door.hold_unlocked(True), "safe": door.safe,
            "tamper": lambda: door.tamper(True), "close": lambda: door.contact(False), "tick": door.tick}[name]
    events = call()
    assert events[:2] == [DoorEvent("relocked", T0 + 5.0, "expired"), DoorEvent("held_open_warning", T0 + 20.0)]
    assert all(e.at == T0 + 25.0 for e in events[2:])


# ------------------------------------- relay stuck is re-armed by a grant/REX cycle only


def test_schedule_hold_cycle_does_not_rearm_relay_stuck() -> None:
    """An opening while the schedule holds the door unlocked proves nothing about a stuck release."""
    door, clock = make()
    forced_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open", "relay_stuck"]
    door.hold_unlocked(True)
    for _ in range(2):  # the second opening of a hold starts from a cycle the hold already closed
        clock.advance(1.0)
        assert types(door.contact(True)) == ["door_opened"]
        clock.advance(1.0)
        assert types(door.contact(False)) == ["door_closed"]
    door.hold_unlocked(False)
    forced_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open"]  # still reported, not re-armed


def test_grant_opening_taken_over_by_a_schedule_hold_does_not_rearm_relay_stuck() -> None:
    """A granted opening that closes while the schedule holds the door is a hold cycle, not a normal one."""
    door, clock = make(unlock_s=5.0)
    forced_cycle(door, clock)
    forced_cycle(door, clock)  # relay_stuck
    clock.advance(1.0)
    door.grant()
    door.contact(True)
    door.hold_unlocked(True)
    clock.advance(1.0)
    door.contact(False)
    door.hold_unlocked(False)
    forced_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open"]


def test_grant_cycle_with_a_hold_before_it_still_rearms_relay_stuck() -> None:
    """A hold that ended before the grant leaves the next grant cycle a normal one."""
    door, clock = make(unlock_s=5.0)
    forced_cycle(door, clock)
    forced_cycle(door, clock)  # relay_stuck
    door.hold_unlocked(True)
    door.hold_unlocked(False)
    normal_cycle(door, clock)
    forced_cycle(door, clock)
    assert forced_cycle(door, clock) == ["door_opened", "forced_open", "relay_stuck"]


def test_next_deadline_keeps_a_rex_window_that_outlives_the_prealarm() -> None:
    """The owner wakes at next_deadline(): after the pre-alarm it is the end of the REX's window, not later."""
    door, clock = make(unlock_s=25.0, held_open_s=30.0, prealarm_s=10.0, rex_unlocks=False)
    door.rex()
    door.contact(True)
    clock.advance(20.0)
    assert door.tick() == [DoorEvent("held_open_warning", T0 + 20.0)]
    assert door.next_deadline() == T0 + 25.0
    clock.advance(5.0)
    assert door.tick() == [] and door.next_deadline() == T0 + 30.0
