"""The live hub's fan-out (server/web/live.py): a message is framed once for every stream, the frames for one
event loop cross to it in one wake-up however many clients it serves (and later messages join a wake-up still
waiting), order is kept, and an event is not even read from the store when only alarm counters are open. And
the alarm watch (server/alarm_watch.py) recomputes the counter at once on a wake-up after a quiet spell.

These are the properties that took the 20-desk feed's delay down (docs/performance.md, "Fan-out"); a change
that hops to the loop once per client per message again, or serialises per client, fails here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from doorkeep.clock import FakeClock
from server.alarm_watch import AlarmWatch
from server.alarms import AlarmSummary
from server.app import Server
from server.eventlog import EventLog
from server.web.live import Client, EventFilter, LiveHub, sse, stored_row
from tests.unit import test_desk_visitors as visitor_tests
from simulators.wait import wait_until
from tests.unit.test_desk_alarm_console import raise_, service
from tests.unit.test_desk_live import event, ingest

clock, server = visitor_tests.clock, visitor_tests.server


class CountingLoop(asyncio.SelectorEventLoop):
    """A real loop that counts the callbacks other threads hand it."""

    def __init__(self) -> None:
        super().__init__()
        self.handed = 0

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:
        self.handed += 1
        return super().call_soon_threadsafe(callback, *args, context=context)


def drain(client: Client) -> list[bytes | None]:
    out: list[bytes | None] = []
    while not client.queue.empty():
        out.append(client.queue.get_nowait())
    return out


def test_a_message_is_framed_once_and_crosses_to_its_loop_once_for_all_clients(server: Server,
                                                                                clock: FakeClock) -> None:
    events = EventLog(server.store, clock)
    hub = LiveHub(server, events)
    loop = CountingLoop()
    try:
        desks = [Client(loop, EventFilter()) for _ in range(20)]
        lab_only = Client(loop, EventFilter(door="lab"))
        counter = Client(loop, EventFilter(), rows=False)
        for c in (*desks, lab_only, counter):
            hub.add(c)
        ingest(server, event("ev-1", 1))
        ingest(server, event("ev-2", 2))
        for eid in ("ev-1", "ev-2"):  # two messages before the loop gets to run: they share its one wake-up
            row = stored_row(events, server.site, eid)
            assert row is not None
            hub.push("row", str(row.cursor), row.model_dump_json(), row=row, site=server.site)
        hub.broadcast("alarms", '{"open": 1}')
        assert loop.handed == 1
        loop.run_until_complete(asyncio.sleep(0))
        got = [drain(c) for c in desks]
        first = got[0]
        assert [f.split(b"\n")[0] for f in first if f] == [b"event: row", b"event: row", b"event: alarms"]
        assert b'"id":"ev-1"' in first[0] and b'"id":"ev-2"' in first[1]  # in the order they were pushed
        assert all(g == first for g in got)
        assert all(g[0] is first[0] for g in got), "each message must be serialised once, not per client"
        assert drain(lab_only) == [sse("alarms", "", '{"open": 1}')]  # its filter: no lobby rows
        assert drain(counter) == [sse("alarms", "", '{"open": 1}')]   # ?only=alarms: never rows
        hub.broadcast("alarms", '{"open": 2}')  # the wake-up ran: the next message needs a new one
        assert loop.handed == 2
    finally:
        loop.close()


def test_only_alarm_counters_open_means_no_row_is_read_or_built(server: Server, clock: FakeClock) -> None:
    reads: list[str] = []

    class CountingLog(EventLog):
        def get(self, event_id: str) -> Any:
            reads.append(event_id)
            return super().get(event_id)

    events = CountingLog(server.store, clock)
    hub = LiveHub(server, events)
    loop = asyncio.new_event_loop()
    try:
        counter = Client(loop, EventFilter(), rows=False)
        hub.add(counter)
        ingest(server, event("ev-1", 1))
        hub.on_event(event("ev-1", 1), True)
        hub.on_snapshot("ev-1", "pi-lobby", "lobby_in")
        assert reads == []  # every page holds a counter stream: an event must cost them nothing
        desk = Client(loop, EventFilter())
        hub.add(desk)
        hub.on_event(event("ev-1", 1), True)
        loop.run_until_complete(asyncio.sleep(0))
        assert reads == ["ev-1"] and len(drain(desk)) == 1 and drain(counter) == []
    finally:
        loop.close()


def test_a_full_queue_cuts_the_client_off_and_wakes_its_stream() -> None:
    loop = asyncio.new_event_loop()
    try:
        client = Client(loop, EventFilter())
        client.waiter = loop.create_future()
        client.offer(sse("row", "1", "{}"))
        assert client.waiter.done(), "a queued frame must wake the waiting stream"
        client.waiter = loop.create_future()
        for i in range(client.queue.maxsize):
            client.offer(("row", str(i), "{}"))  # (kind, id, data) is framed on the way in
        assert client.dropped and client.waiter.done() and drain(client) == [None]
    finally:
        loop.close()


def test_the_alarm_watch_answers_a_wake_up_after_a_quiet_spell_at_once(server: Server, clock: FakeClock) -> None:
    """The coalescing gap counts from the last recomputation; a wake-up later than that is not held back by it."""
    published: list[AlarmSummary] = []
    watch = AlarmWatch(service(server, clock), published.append, every_s=60.0, min_gap_s=30.0)
    watch.start()
    try:
        assert wait_until(lambda: len(published) == 1, 5)
        forced = raise_(server, clock, "forced_open", 1)
        clock.advance(31)  # the gap since the last recomputation is over
        watch.wake()
        # A fixed min_gap_s after every wake-up (as before) would hold this for 30 s.
        assert wait_until(lambda: len(published) == 2, 5), published
        assert published[-1].ring == (forced,)
    finally:
        watch.stop()


def test_clients_of_a_loop_that_closed_with_a_hand_over_pending_are_dropped_not_fed_for_ever(
        server: Server, clock: FakeClock) -> None:
    hub = LiveHub(server, EventLog(server.store, clock))
    loop = asyncio.new_event_loop()
    client = Client(loop, EventFilter())
    hub.add(client)
    hub.broadcast("alarms", '{"open": 1}')  # a hand-over scheduled on the loop ...
    loop.close()                            # ... which closes before running it
    hub.broadcast("alarms", '{"open": 2}')  # must not pile up behind a flush that will never run
    assert hub.clients == 0 and hub._pending == {}
