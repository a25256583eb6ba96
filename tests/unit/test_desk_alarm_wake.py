"""The alarm watch wakes only when an alarm changed (issue 16's loose ends, docs/performance.md "Fan-out"):
the store's alarm-write hook (server/store_alarm_desk.py ``on_alarm_write``) fires on a new alarm, one raised
again, acknowledged, resolved or escalated, from whichever writer; not on an ordinary stored event, a condition
clearing, a refresh that changes nothing, or retention deleting resolved alarms. The desk's watch is wired to it
and no longer to every event the bus stores.

Real parts: a real ``Server`` on the demo site with its SQLite store (bus not started: events enter through the
store thread's own entry point), the desk app as created for production, its alarm watch not started.
"""

from __future__ import annotations

from fastapi import FastAPI

from doorkeep.clock import FakeClock
from server.app import Server
from tests.unit.test_desk_alarm_console import service
from tests.unit import test_desk_live as live_tests
from tests.unit.test_desk_live import event, ingest

# The live tests' server and app: their clock is the events' day, so ingest stores them (not "future_ts").
clock, server, app = live_tests.clock, live_tests.server, live_tests.app


def test_the_store_tells_of_alarm_writes_the_counter_shows_and_of_nothing_else(server: Server,
                                                                               clock: FakeClock) -> None:
    writes: list[int] = []
    store = server.store
    store.on_alarm_write(lambda: writes.append(1))

    def count(fn: object) -> int:
        before = len(writes)
        fn()  # type: ignore[operator]
        return len(writes) - before

    key = "device_offline:pi-lobby"
    assert count(lambda: store.raise_alarm("device_offline", key=key, at=clock.wall(), device="pi-lobby")) == 1
    alarm_id = store.open_alarm(key)["id"]
    # Still active, same detail: nothing changes; a new detail or the condition clearing: nothing the counter shows.
    assert count(lambda: store.raise_alarm("device_offline", key=key, at=clock.wall(), device="pi-lobby")) == 0
    assert count(lambda: store.raise_alarm("device_offline", key=key, at=clock.wall(), device="pi-lobby",
                                           detail={"last_seen": 1})) == 0
    assert count(lambda: store.clear_alarm(key, clock.wall())) == 0
    clock.advance(5)
    assert count(lambda: store.raise_alarm("device_offline", key=key, at=clock.wall(), device="pi-lobby")) == 1
    assert count(lambda: store.mark_escalated(alarm_id, clock.wall())) == 1
    assert count(lambda: store.acknowledge(alarm_id, "dex", at=clock.wall())) == 1
    assert count(lambda: store.acknowledge(alarm_id, "dex", at=clock.wall())) == 0  # already acknowledged
    assert count(lambda: store.resolve(alarm_id, "dex", "replaced", at=clock.wall())) == 1
    assert count(lambda: store.delete_resolved_alarms_before(clock.wall() + 1)) == 0  # retention: resolved only
    assert store.alarm(alarm_id) is None
    # Events: a badge stores no alarm; a forced door raises one through supervision on ingest.
    assert count(lambda: ingest(server, event("ev-badge", 1))) == 0
    assert store.event_with_cursor("ev-badge") is not None  # stored, not refused
    assert count(lambda: ingest(server, event("ev-open", 2, type="door_opened", decision=None, reason=None,
                                              person=None, snapshot=None, decided_by=None, credential_hash=None,
                                              credential_last4=None, transaction=None, latency_ms=None))) == 0
    assert count(lambda: ingest(server, event("ev-forced", 3, door="lobby_out", type="forced_open", decision=None,
                                              reason=None, person=None, snapshot=None, decided_by=None,
                                              credential_hash=None, credential_last4=None, transaction=None,
                                              latency_ms=None))) == 1
    assert count(lambda: ingest(server, event("ev-forced", 3, door="lobby_out", type="forced_open", decision=None,
                                              reason=None, person=None, snapshot=None, decided_by=None,
                                              credential_hash=None, credential_last4=None, transaction=None,
                                              latency_ms=None))) == 0  # delivered again: nothing new


def test_a_listener_that_fails_never_fails_the_alarm_write(server: Server, clock: FakeClock) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    server.store.on_alarm_write(broken)
    alarm_id, new = server.store.raise_alarm("forced_open", key="forced_open-x", at=clock.wall(), once=True,
                                             device="pi-lobby", door="lobby_out")
    assert new and server.store.alarm(alarm_id) is not None


def test_the_desks_watch_wakes_on_an_alarm_not_on_every_event(app: FastAPI, server: Server, clock: FakeClock) -> None:
    watch = app.state.alarm_watch  # installed by create_app, not started (no lifespan here)
    assert not watch.pending
    for i in range(1, 6):
        ingest(server, event(f"ev-{i}", i))
    assert not watch.pending, "badges raised no alarm: the watch must stay asleep"
    ingest(server, event("ev-forced", 9, door="lobby_out", type="forced_open", decision=None, reason=None,
                         person=None, snapshot=None, decided_by=None, credential_hash=None, credential_last4=None,
                         transaction=None, latency_ms=None))
    assert watch.pending
    summary = watch.run_once()
    assert summary.open == 1 and summary.unacknowledged_by_priority["high"] == 1
    watch._wake.clear()  # what the watch's loop does before recomputing
    (alarm,) = service(server, clock).open()
    app.state.desk.alarms.acknowledge(alarm.id, "dex")
    assert watch.pending and watch.run_once().unacknowledged == 0
