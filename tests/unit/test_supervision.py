"""Device supervision, sequence-gap detection and the alarms store, on a fake clock (docs/alarms.md)."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from doorkeep.clock import FakeClock
from doorkeep.contract import EventMsg
from doorkeep.errors import MessageError
from server.cli import _supervision_timeouts
from server.store import AlarmNotFound, Store
from server.supervision import SequenceWindow, Supervisor, state_timestamp
from tests.conftest import wait_until

GAP_S = 60.0
DEVICE_S = 90.0
_ids = itertools.count(1)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    yield s
    s.close()


@pytest.fixture
def sup(store: Store, clock: FakeClock) -> Supervisor:
    return Supervisor(store, clock, devices=["pi-lobby", "pi-floor7"], device_timeout_s=DEVICE_S, gap_timeout_s=GAP_S)


def ev(seq: int, *, device: str = "pi-lobby", door: str = "lobby_in", type: str = "door_opened",
       eid: str | None = None, ts: str = "2026-03-30T09:00:00.000Z", **kw: Any) -> EventMsg:
    return EventMsg(id=eid or f"e{next(_ids)}", seq=seq, ts=ts, device=device, door=door, type=type, **kw)


def feed(sup: Supervisor, store: Store, *events: EventMsg) -> None:
    """What the bus's store thread does: store each event, then tell the supervisor."""
    for e in events:
        sup.on_event(e, store.ingest_event(e, 0.0))


def open_of(store: Store, type: str, **where: Any) -> list[dict[str, Any]]:
    return store.open_alarms(type=type, **where)


def active_of(store: Store, type: str, **where: Any) -> list[dict[str, Any]]:
    return [a for a in open_of(store, type, **where) if a["state"] == "active"]


# ------------------------------------------------------------ the window


def test_window_tracks_contiguous_high_and_missing_runs() -> None:
    w = SequenceWindow(0, base=1, top=1, started=0.0)
    assert w.observe(2, 1.0, GAP_S) == "next"
    assert w.observe(6, 1.0, GAP_S) == "ahead"
    assert (w.high, w.top, [(g.first, g.last) for g in w.gaps]) == (2, 6, [(3, 5)])
    assert w.observe(4, 2.0, GAP_S) == "fill"
    assert [(g.first, g.last) for g in w.gaps] == [(3, 3), (5, 5)]
    assert w.observe(3, 2.0, GAP_S) == "fill" and w.observe(5, 2.0, GAP_S) == "fill"
    assert (w.high, w.gaps) == (6, [])
    assert w.observe(4, 3.0, GAP_S) == "reset"  # a new event with a number already seen


def test_window_grows_downwards_only_at_first() -> None:
    w = SequenceWindow(0, base=100, top=100, started=0.0)
    assert w.observe(97, 10.0, GAP_S) == "late"
    assert (w.base, [(g.first, g.last) for g in w.gaps]) == (97, [(98, 99)])
    assert w.observe(50, GAP_S + 1, GAP_S) == "reset"


# ------------------------------------------------------------------ gaps


def test_gap_raises_event_gap_after_the_timeout_not_before(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    feed(sup, store, ev(1), ev(2), ev(5))
    clock.advance(GAP_S - 0.5)
    sup.check()
    assert open_of(store, "event_gap") == []
    clock.advance(0.5)
    sup.check()
    [alarm] = active_of(store, "event_gap")
    assert alarm["device"] == "pi-lobby" and alarm["severity"] == "trouble"
    assert alarm["detail"]["missing"] == [[3, 4]] and alarm["detail"]["missing_events"] == 2


def test_filled_gap_clears_its_alarm_which_stays_open(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    feed(sup, store, ev(1), ev(4))
    clock.advance(GAP_S)
    sup.check()
    assert len(active_of(store, "event_gap")) == 1
    feed(sup, store, ev(2))
    sup.check()
    [alarm] = active_of(store, "event_gap")
    assert alarm["detail"]["missing"] == [[3, 3]] and alarm["detail"]["reported"] == [[2, 3]]
    feed(sup, store, ev(3))
    sup.check()
    [alarm] = open_of(store, "event_gap")
    assert alarm["state"] == "cleared" and alarm["detail"]["missing"] == []
    assert alarm["detail"]["reported"] == [[2, 3]]  # what went missing stays on record


def test_gap_filled_within_the_timeout_raises_nothing(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    feed(sup, store, ev(1), ev(3))
    clock.advance(GAP_S - 1)
    feed(sup, store, ev(2))
    clock.advance(10 * GAP_S)
    assert sup.check() == []
    assert store.open_alarms() == []


def test_out_of_order_and_duplicates_raise_nothing(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    events = [ev(i) for i in range(1, 21)]
    # An outbox draining old events while new ones flow, and QoS 1 re-deliveries of both.
    order = [*events[:5], *events[15:], *events[5:15], events[3], events[17], events[0]]
    feed(sup, store, *order)
    clock.advance(10 * GAP_S)
    sup.check()
    assert store.open_alarms() == []
    w = sup.window("pi-lobby")
    assert w is not None and (w.base, w.high, w.top, w.epoch) == (1, 20, 20, 0)


def test_first_contact_starts_the_window_where_the_device_is(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    """A store that never heard of a device cannot know what came before: no gap for 1..999."""
    feed(sup, store, ev(1000), ev(1001))
    clock.advance(1)
    feed(sup, store, ev(997), ev(999), ev(998))  # an outbox's backlog arriving after the first live event
    clock.advance(10 * GAP_S)
    sup.check()
    assert store.open_alarms() == []


def test_counter_reset_rebaselines_with_an_info_alarm(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    feed(sup, store, *(ev(i) for i in range(1, 51)))
    clock.advance(GAP_S + 1)
    feed(sup, store, ev(1, eid="after-reset"), ev(2), ev(3))  # the edge's outbox database was replaced
    clock.advance(10 * GAP_S)
    sup.check()
    [reset] = open_of(store, "sequence_reset")
    assert reset["severity"] == "info" and reset["state"] == "cleared" and reset["source_event"] == "after-reset"
    assert reset["detail"]["previous_top"] == 50 and reset["detail"]["epoch"] == 1
    assert open_of(store, "event_gap") == []
    w = sup.window("pi-lobby")
    assert w is not None and (w.epoch, w.base, w.top) == (1, 1, 3)


def test_reset_reports_the_old_epochs_missing_events_at_once(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    feed(sup, store, ev(1), ev(2), ev(6))
    feed(sup, store, ev(1))  # reset, before the gap 3..5 was due
    sup.check()
    [gap] = active_of(store, "event_gap")
    assert gap["detail"]["missing"] == [[3, 5]] and gap["detail"]["sequence_reset"] is True
    assert gap["detail"]["epoch"] == 0
    feed(sup, store, ev(2), ev(3))  # the new epoch's numbers do not fill the old epoch's gap
    clock.advance(10 * GAP_S)
    sup.check()
    assert [a["id"] for a in active_of(store, "event_gap")] == [gap["id"]]


def test_restart_does_not_invent_gaps(store: Store, clock: FakeClock, tmp_path: Path) -> None:
    first = Supervisor(store, clock, device_timeout_s=DEVICE_S, gap_timeout_s=GAP_S)
    feed(first, store, *(ev(i) for i in range(1, 11)))
    first.stop()  # saves the windows
    again = Supervisor(store, clock, device_timeout_s=DEVICE_S, gap_timeout_s=GAP_S)
    feed(again, store, ev(11), ev(12))
    clock.advance(10 * GAP_S)
    again.check()
    assert store.open_alarms() == []


def test_crash_before_the_checkpoint_replays_what_was_stored(store: Store, clock: FakeClock) -> None:
    first = Supervisor(store, clock, device_timeout_s=DEVICE_S, gap_timeout_s=GAP_S)
    feed(first, store, ev(1), ev(2))
    first.save()
    feed(first, store, ev(3), ev(4), ev(5))  # stored, but the process dies before saving the window
    again = Supervisor(store, clock, device_timeout_s=DEVICE_S, gap_timeout_s=GAP_S)
    w = again.window("pi-lobby")
    assert w is not None and (w.high, w.top) == (5, 5)
    feed(again, store, ev(6))
    clock.advance(10 * GAP_S)
    again.check()
    assert store.open_alarms() == []


def test_raised_gap_survives_a_restart_and_clears_when_filled(store: Store, clock: FakeClock) -> None:
    first = Supervisor(store, clock, device_timeout_s=DEVICE_S, gap_timeout_s=GAP_S)
    feed(first, store, ev(1), ev(3))
    clock.advance(GAP_S)
    first.check()
    first.stop()
    again = Supervisor(store, clock, device_timeout_s=DEVICE_S, gap_timeout_s=GAP_S)
    again.set_connected(True)
    again.check()
    assert len(active_of(store, "event_gap")) == 1  # still missing: still active
    feed(again, store, ev(2))
    again.check()
    assert [a["state"] for a in open_of(store, "event_gap")] == ["cleared"]


def test_gap_timer_waits_while_the_bus_is_disconnected(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    feed(sup, store, ev(1), ev(3))
    sup.set_connected(False)
    clock.advance(10 * GAP_S)
    sup.check()
    assert store.open_alarms() == []
    sup.set_connected(True)  # the fill may be queued at the broker: a full timeout again
    clock.advance(GAP_S - 1)
    sup.check()
    assert store.open_alarms() == []
    clock.advance(1)
    sup.check()
    assert len(active_of(store, "event_gap")) == 1


def test_resolved_gap_alarm_is_not_reopened_by_a_partial_fill(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    feed(sup, store, ev(1), ev(5))
    clock.advance(GAP_S)
    sup.check()
    [alarm] = active_of(store, "event_gap")
    store.resolve(alarm["id"], "desk", "edge SD card replaced, events 2-4 are gone")
    feed(sup, store, ev(3))
    sup.check()
    assert open_of(store, "event_gap") == []
    feed(sup, store, ev(9))  # something new goes missing: a new alarm
    clock.advance(GAP_S)
    sup.check()
    [again] = active_of(store, "event_gap")
    assert again["id"] != alarm["id"] and [6, 8] in again["detail"]["missing"]


# --------------------------------------------------------------- devices


def test_silent_device_goes_offline_after_the_timeout(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    sup.heard("pi-lobby")
    clock.advance(DEVICE_S - 0.5)
    sup.check()
    assert open_of(store, "device_offline") == []
    assert sup.devices()["pi-lobby"].status == "online"
    clock.advance(0.5)
    sup.check()
    [alarm] = active_of(store, "device_offline", device="pi-lobby")
    assert alarm["detail"]["reason"] == "silent" and alarm["severity"] == "trouble"
    assert sup.devices()["pi-lobby"].status == "offline"


def test_heartbeats_keep_a_device_online(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    for _ in range(10):
        sup.on_state("pi-lobby", clock.wall(), retained=False)
        clock.advance(30)
        sup.check()
    assert store.open_alarms() == []


def test_last_will_raises_at_once(sup: Supervisor, store: Store) -> None:
    sup.heard("pi-lobby")
    sup.on_availability("pi-lobby", "offline", retained=False)
    sup.check()
    [alarm] = active_of(store, "device_offline", device="pi-lobby")
    assert alarm["detail"]["reason"] == "lwt"


def test_clean_stop_raises_nothing_and_is_shown(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    sup.heard("pi-lobby")
    sup.on_availability("pi-lobby", "stopped", retained=False)
    sup.heard("pi-lobby")  # its last state, delivered after `stopped`, does not make it look alive
    clock.advance(10 * DEVICE_S)
    sup.check()
    assert store.open_alarms() == []
    assert sup.devices()["pi-lobby"].status == "stopped"
    sup.on_availability("pi-lobby", "online", retained=False)  # restarted
    assert sup.devices()["pi-lobby"].status == "online"


def test_heard_again_clears_and_a_recurrence_reactivates_the_same_alarm(sup: Supervisor, store: Store,
                                                                       clock: FakeClock) -> None:
    sup.on_availability("pi-lobby", "offline", retained=False)
    sup.check()
    [alarm] = active_of(store, "device_offline")
    store.acknowledge(alarm["id"], "desk")
    sup.on_state("pi-lobby", clock.wall(), retained=False)
    sup.check()
    [cleared] = open_of(store, "device_offline")
    assert cleared["id"] == alarm["id"] and cleared["state"] == "cleared"
    clock.advance(DEVICE_S)
    sup.check()
    [again] = open_of(store, "device_offline")
    assert again["id"] == alarm["id"] and again["state"] == "active" and again["occurrences"] == 2
    assert again["acknowledged_at"] is None  # a recurrence needs a new look


def test_unknown_devices_never_alarm(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    clock.advance(100 * DEVICE_S)
    sup.check()
    assert store.open_alarms() == []
    assert {d: s.status for d, s in sup.devices().items()} == {"pi-lobby": "unknown", "pi-floor7": "unknown"}


def test_retained_online_starts_the_timer_but_proves_nothing(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    sup.on_availability("pi-lobby", "offline", retained=False)
    sup.check()
    sup.on_availability("pi-lobby", "online", retained=True)  # e.g. after a server restart
    sup.check()
    assert len(active_of(store, "device_offline")) == 1
    clock.advance(DEVICE_S)
    sup.check()
    assert len(active_of(store, "device_offline")) == 1


def test_retained_state_counts_only_when_fresh(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    sup.on_state("pi-lobby", clock.wall() - 10 * DEVICE_S, retained=True)
    assert sup.devices()["pi-lobby"].status == "unknown"
    sup.on_state("pi-lobby", clock.wall() - 20, retained=True)
    assert sup.devices()["pi-lobby"].status == "online"
    clock.advance(DEVICE_S - 20)  # it was heard 20 s before it was received
    sup.check()
    assert len(active_of(store, "device_offline")) == 1


def test_retained_state_never_overrides_offline(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    sup.on_availability("pi-lobby", "offline", retained=True)
    sup.on_state("pi-lobby", clock.wall(), retained=True)
    sup.check()
    assert sup.devices()["pi-lobby"].status == "offline"
    assert len(active_of(store, "device_offline")) == 1


def test_no_silence_while_the_server_is_disconnected(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    sup.heard("pi-lobby")
    sup.set_connected(False)
    clock.advance(10 * DEVICE_S)
    sup.check()
    assert store.open_alarms() == []
    sup.set_connected(True)
    clock.advance(DEVICE_S - 1)
    sup.check()
    assert store.open_alarms() == []


def test_active_offline_alarm_survives_a_restart(store: Store, clock: FakeClock) -> None:
    first = Supervisor(store, clock, devices=["pi-lobby"])
    first.on_availability("pi-lobby", "offline", retained=False)
    first.check()
    again = Supervisor(store, clock, devices=["pi-lobby"])
    again.check()  # unknown after a restart: the alarm stays
    assert len(active_of(store, "device_offline")) == 1
    again.heard("pi-lobby")
    again.check()
    assert [a["state"] for a in open_of(store, "device_offline")] == ["cleared"]


def test_bad_availability_is_refused(sup: Supervisor) -> None:
    with pytest.raises(MessageError):
        sup.on_availability("pi-lobby", "maybe", retained=False)


def test_supervision_thread_raises_a_last_will_at_once(sup: Supervisor, store: Store) -> None:
    sup.start()
    try:
        sup.on_availability("pi-floor7", "offline", retained=False)
        assert wait_until(lambda: active_of(store, "device_offline", device="pi-floor7"), 5)
    finally:
        sup.stop()


# ----------------------------------------------------------- event alarms


def test_alarm_events_raise_once_however_often_they_arrive(sup: Supervisor, store: Store) -> None:
    forced = ev(1, door="lobby_out", type="forced_open", eid="f1")
    feed(sup, store, forced, forced)
    [alarm] = open_of(store, "forced_open")
    assert alarm["id"] == "forced_open-f1" and alarm["source_event"] == "f1" and alarm["door"] == "lobby_out"
    assert alarm["state"] == "active" and alarm["severity"] == "alarm"
    store.resolve(alarm["id"], "desk", "checked on camera")
    feed(sup, store, forced)  # a re-delivery after the operator resolved it
    assert open_of(store, "forced_open") == []


@pytest.mark.parametrize("etype, severity", [("held_open", "alarm"), ("tamper", "alarm"),
                                             ("held_open_warning", "warning"), ("relay_stuck", "trouble"),
                                             ("reader_offline", "trouble"), ("camera_offline", "trouble")])
def test_every_alarm_event_type_raises_its_alarm(sup: Supervisor, store: Store, etype: str, severity: str) -> None:
    # tamper, held_open_warning and relay_stuck are not in the contract yet: build them as the edge will send them.
    e = ev(1, type=etype)
    sup.on_event(e, 1)
    [alarm] = open_of(store, etype)
    assert alarm["severity"] == severity and alarm["source_event"] == e.id


def test_door_closing_clears_its_forced_open_alarm(sup: Supervisor, store: Store) -> None:
    feed(sup, store, ev(1, door="lobby_out", type="forced_open", ts="2026-03-30T09:00:00.000Z"),
         ev(2, door="lobby_in", type="door_closed", ts="2026-03-30T09:00:05.000Z"))
    assert open_of(store, "forced_open")[0]["state"] == "active"  # another door closing changes nothing
    feed(sup, store, ev(3, door="lobby_out", type="door_closed", ts="2026-03-30T09:00:06.000Z"))
    assert open_of(store, "forced_open")[0]["state"] == "cleared"


def test_door_closed_arriving_first_raises_the_alarm_already_cleared(sup: Supervisor, store: Store) -> None:
    feed(sup, store, ev(2, door="lobby_out", type="door_closed", ts="2026-03-30T09:00:06.000Z"),
         ev(1, door="lobby_out", type="forced_open", ts="2026-03-30T09:00:00.000Z"))
    [alarm] = open_of(store, "forced_open")
    assert alarm["state"] == "cleared"


def test_soft_anti_passback_violation_raises_a_warning(sup: Supervisor, store: Store) -> None:
    feed(sup, store, ev(1, type="access", decision="granted", reason="granted", person="alice",
                        detail={"violation": "anti_passback"}),
         ev(2, type="access", decision="granted", reason="granted", person="bob"))
    [alarm] = open_of(store, "anti_passback_violation")
    assert alarm["severity"] == "warning" and alarm["detail"]["person"] == "alice" and alarm["state"] == "cleared"
    assert len(store.open_alarms()) == 1


# --------------------------------------------------------- the alarm store


def test_acknowledge_and_resolve(store: Store) -> None:
    alarm_id, new = store.raise_alarm("tamper", key="tamper-x", at=1.0, once=True, device="pi-lobby")
    assert new and store.alarm(alarm_id)["state"] == "active"
    assert store.acknowledge(alarm_id, "carol", at=2.0) is True
    assert store.acknowledge(alarm_id, "dave", at=3.0) is False  # the first acknowledgement stands
    assert store.resolve(alarm_id, "carol", "cover refitted", at=4.0) is True
    assert store.resolve(alarm_id, "carol", "again", at=5.0) is False
    row = store.alarm(alarm_id)
    assert row is not None
    assert (row["acknowledged_by"], row["acknowledged_at"], row["resolved_by"], row["note"], row["state"]) == \
        ("carol", 2.0, "carol", "cover refitted", "resolved")
    assert store.open_alarms() == [] and len(store.alarms()) == 1
    with pytest.raises(AlarmNotFound):
        store.acknowledge("nope", "carol")
    with pytest.raises(ValueError):
        store.resolve(alarm_id, "", "no name")


def test_one_open_condition_alarm_per_key(store: Store) -> None:
    a, new = store.raise_alarm("device_offline", key="device_offline:pi", at=1.0, device="pi")
    assert new
    assert store.raise_alarm("device_offline", key="device_offline:pi", at=2.0, device="pi") == (a, False)
    assert store.clear_alarm("device_offline:pi", 3.0) == a
    assert store.clear_alarm("device_offline:pi", 4.0) is None
    store.resolve(a, "desk", "cable replaced")
    b, new = store.raise_alarm("device_offline", key="device_offline:pi", at=5.0, device="pi")
    assert new and b != a
    assert [r["id"] for r in store.open_alarms()] == [b]


# ------------------------------------------------------------ bits and CLI


def test_state_timestamp_validates_the_heartbeat() -> None:
    good = b'{"schema": "doorkeep.state/1", "device": "pi-lobby", "ts": "2026-03-30T09:00:00.000Z"}'
    assert state_timestamp(good, "pi-lobby") == pytest.approx(1774861200.0)
    assert state_timestamp(b'{"schema": "doorkeep.state/1"}', "pi-lobby") is None
    for bad in (b"not json", b"[]", b'{"schema": "x"}', good.replace(b'"pi-lobby"', b'"pi-other"')):
        with pytest.raises(MessageError):
            state_timestamp(bad, "pi-lobby")


def test_server_timeout_flags() -> None:
    assert _supervision_timeouts(argparse.Namespace()) == {}
    assert _supervision_timeouts(argparse.Namespace(device_timeout=45, gap_timeout=None)) == {"device_timeout_s": 45.0}
    with pytest.raises(ValueError):
        _supervision_timeouts(argparse.Namespace(device_timeout=0, gap_timeout=10))


def test_nothing_is_due_while_disconnected(sup: Supervisor, store: Store, clock: FakeClock) -> None:
    """The thread would spin on overdue deadlines it is not allowed to act on."""
    sup.heard("pi-lobby")
    feed(sup, store, ev(1), ev(3))
    assert sup.next_deadline() == clock.monotonic() + GAP_S
    sup.set_connected(False)
    clock.advance(10 * DEVICE_S)
    assert sup.next_deadline() is None


def test_a_failed_alarm_write_is_tried_again(sup: Supervisor, store: Store, clock: FakeClock,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real = store.raise_alarm
    calls = []

    def flaky(*args: Any, **kw: Any) -> Any:
        calls.append(args[0])
        if len(calls) <= 2:
            raise OSError("disk full")
        return real(*args, **kw)

    monkeypatch.setattr(store, "raise_alarm", flaky)
    feed(sup, store, ev(1), ev(3))
    sup.on_availability("pi-floor7", "offline", retained=False)
    clock.advance(GAP_S)
    sup.check()  # both writes fail: logged, not lost
    assert store.open_alarms() == []
    sup.check()
    assert {a["type"] for a in store.open_alarms()} == {"device_offline", "event_gap"}


# ------------------------------------------------------ device_misbehaving (issue 12, item 1)


def test_attack_forgery_flood_raises_one_device_misbehaving_alarm_per_device_and_hour(
        sup: Supervisor, store: Store, clock: FakeClock) -> None:
    first, new = sup.misbehaving("pi-lobby", "foreign_door", "door 'lab' belongs to 'pi-floor7'", "t/lab/event")
    assert new and first is not None
    for i in range(49):
        clock.advance(60.0 if i == 0 else 1.0)
        assert sup.misbehaving("pi-lobby", "future_ts" if i % 2 else "foreign_door", f"refusal {i}") == (first, False)
    alarms = open_of(store, "device_misbehaving")
    assert [a["id"] for a in alarms] == [first]
    a = alarms[0]
    assert (a["severity"], a["device"], a["state"]) == ("alarm", "pi-lobby", "active")
    assert a["detail"]["refusals"] == 50
    assert a["detail"]["reasons"] == {"foreign_door": 26, "future_ts": 24}
    assert a["detail"]["last_reason"] == "refusal 48"
    # Another device is another alarm; the next hour of this one is another alarm too.
    other, new = sup.misbehaving("pi-floor7", "malformed", "seq out of range")
    assert new and other != first
    clock.advance(3600.0)
    later, new = sup.misbehaving("pi-lobby", "foreign_door", "again")
    assert new and later not in (first, other)
    assert len(open_of(store, "device_misbehaving", device="pi-lobby")) == 2


def test_resolved_device_misbehaving_is_not_raised_again_within_its_hour(
        sup: Supervisor, store: Store, clock: FakeClock) -> None:
    first, _ = sup.misbehaving("pi-lobby", "foreign_door", "x")
    assert first is not None
    store.resolve(first, "carol", "certificate revoked, Pi collected")
    clock.advance(600.0)
    assert sup.misbehaving("pi-lobby", "foreign_door", "y") == (None, False)
    assert open_of(store, "device_misbehaving") == []
    clock.advance(3000.0)
    again, new = sup.misbehaving("pi-lobby", "foreign_door", "z")
    assert new and again != first


def test_device_misbehaving_window_survives_a_server_restart(store: Store, clock: FakeClock) -> None:
    first, _ = Supervisor(store, clock).misbehaving("pi-lobby", "unmatched_result", "tx never sent")
    clock.advance(120.0)
    restarted = Supervisor(store, clock)
    assert restarted.misbehaving("pi-lobby", "unmatched_result", "again") == (first, False)
    [a] = open_of(store, "device_misbehaving")
    assert a["detail"]["refusals"] == 2
