"""The door state machine, driven by a fake clock: no threads, no waiting."""

from __future__ import annotations

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
    assert door.state is DoorState.LOCKED
    assert not door.relay_energised
    assert not door.door_open
    assert door.next_deadline() is None
    assert door.tick() == []


def test_grant_energises_then_relocks_on_expiry() -> None:
    door, clock = make(unlock_s=5.0)
    events = door.grant()
    assert events == [DoorEvent("unlocked", T0, "grant")]
    assert door.relay_energised and door.state is DoorState.UNLOCKED
    assert door.next_deadline() == T0 + 5.0

    clock.advance(5.0)
    assert door.tick() == [DoorEvent("relocked", T0 + 5.0, "expired")]
    assert not door.relay_energised and door.state is DoorState.LOCKED
    assert door.next_deadline() is None


def test_tick_before_deadline_does_nothing() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(4.5)
    assert door.tick() == []
    assert door.relay_energised
    assert door.next_deadline() == T0 + 5.0


def test_grant_open_close_relocks_at_close() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(1.0)
    assert types(door.contact(True)) == ["door_opened"]
    assert door.state is DoorState.OPEN and door.relay_energised
    clock.advance(1.0)
    events = door.contact(False)
    assert events == [DoorEvent("door_closed", T0 + 2.0), DoorEvent("relocked", T0 + 2.0, "closed")]
    assert door.state is DoorState.LOCKED and not door.relay_energised
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
    assert door.state is DoorState.OPEN and not door.relay_energised
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
    assert door.relay_energised
    clock.advance(2.0)
    assert types(door.contact(True)) == ["door_opened"]
    assert door.state is DoorState.OPEN
    assert types(door.contact(False)) == ["door_closed", "relocked"]


def test_forced_open_while_locked_then_close() -> None:
    door, clock = make()
    events = door.contact(True)
    assert events == [DoorEvent("door_opened", T0), DoorEvent("forced_open", T0)]
    assert door.state is DoorState.ALARM and not door.relay_energised
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
    door, clock = make(unlock_s=5.0, held_open_s=30.0)
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
    assert door.state is DoorState.LOCKED and not door.relay_energised


def test_late_tick_fires_each_event_once_in_time_order() -> None:
    door, clock = make(unlock_s=5.0, held_open_s=30.0)
    door.grant()
    door.contact(True)
    clock.advance(1000.0)
    assert door.tick() == [
        DoorEvent("relocked", T0 + 5.0, "expired"),
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
    assert door.relay_energised and door.state is DoorState.ALARM
    assert types(door.contact(False)) == ["door_closed", "relocked"]
    assert not door.relay_energised and door.state is DoorState.LOCKED


def test_second_grant_extends_expiry() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(3.0)
    assert door.grant() == []  # already unlocked: no second "unlocked"
    assert door.next_deadline() == T0 + 8.0
    clock.advance(2.0)
    assert door.tick() == []
    assert door.relay_energised
    clock.advance(3.0)
    assert types(door.tick()) == ["relocked"]


def test_safe_turns_relay_off_and_cancels_unlock() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    clock.advance(1.0)
    assert door.safe() == [DoorEvent("relocked", T0 + 1.0, "safe")]
    assert not door.relay_energised and door.state is DoorState.LOCKED
    assert door.next_deadline() is None
    assert door.safe() == []  # already safe: nothing to report
    assert types(door.contact(True)) == ["door_opened", "forced_open"]


def test_denied_path_never_energises() -> None:
    """A denied decision never calls grant(): nothing else may energise the relay."""
    door, clock = make()
    for _ in range(3):
        assert not door.relay_energised
        door.contact(True)
        clock.advance(40.0)
        door.tick()
        assert not door.relay_energised
        door.contact(False)
        door.safe()
    assert not door.relay_energised


def test_rex_without_unlock_shunts_forced_alarm_only() -> None:
    door, clock = make(unlock_s=5.0, rex_unlocks=False)
    assert door.rex() == [DoorEvent("rex", T0)]
    assert not door.relay_energised and door.state is DoorState.LOCKED
    clock.advance(2.0)
    assert types(door.contact(True)) == ["door_opened"]
    assert door.state is DoorState.OPEN and not door.relay_energised
    assert types(door.contact(False)) == ["door_closed"]  # relay never on: no "relocked"


def test_rex_without_unlock_window_expires() -> None:
    door, clock = make(unlock_s=5.0, rex_unlocks=False)
    door.rex()
    clock.advance(5.0)
    assert door.tick() == []
    assert types(door.contact(True)) == ["door_opened", "forced_open"]


@pytest.mark.parametrize("kwargs", [{"unlock_s": 0}, {"held_open_s": -1.0}])
def test_timings_reject_non_positive(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DoorTimings(**kwargs)  # type: ignore[arg-type]


# ----------------------------------------------- held unlocked by schedule


def test_hold_unlocked_energises_and_release_relocks() -> None:
    door, clock = make()
    assert door.hold_unlocked(True) == [DoorEvent("unlocked", T0, "schedule")]
    assert door.relay_energised and door.held_unlocked and door.state is DoorState.UNLOCKED
    assert door.next_deadline() is None  # no unlock window: it stays unlocked
    clock.advance(3600.0)
    assert door.tick() == []
    assert door.relay_energised
    assert door.hold_unlocked(False) == [DoorEvent("relocked", T0 + 3600.0, "schedule")]
    assert not door.relay_energised and not door.held_unlocked and door.state is DoorState.LOCKED


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
        assert door.relay_energised and door.state is DoorState.UNLOCKED


def test_release_keeps_relay_while_a_grant_window_runs() -> None:
    door, clock = make(unlock_s=5.0)
    door.hold_unlocked(True)
    clock.advance(1.0)
    assert door.grant() == []  # already energised
    clock.advance(1.0)
    assert door.hold_unlocked(False) == []
    assert door.relay_energised
    clock.advance(3.9)
    assert door.tick() == []
    clock.advance(0.1)
    assert door.tick() == [DoorEvent("relocked", T0 + 6.0, "expired")]
    assert not door.relay_energised


def test_grant_window_expiring_while_held_keeps_relay_on() -> None:
    door, clock = make(unlock_s=5.0)
    door.grant()
    door.hold_unlocked(True)
    clock.advance(10.0)
    assert door.tick() == []
    assert door.relay_energised
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
    assert door.state is DoorState.OPEN and door.relay_energised


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
    assert not door.relay_energised and not door.held_unlocked
    assert types(door.contact(True)) == ["door_opened", "forced_open"]
