"""The OSDP bus on the edge's reactor (issue 15): no thread of its own, exchanges driven by the loop.

Each test talks to doorkeep's simulated reader (simulators/osdp_pd.py) - over a pty, exactly as the edge opens
an RS-485 adapter, or through a port object without a file descriptor. Waits are bounded by ``wait_until``;
timing assertions are lower bounds only (a loop can be late, never early).
"""

from __future__ import annotations

import io
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from edge.framing import CardRead
from edge.loop import Loop
from edge.osdp import packet as pk
from edge.osdp import timing
from edge.osdp.cp import OsdpBus, OsdpReaderSpec
from simulators.osdp_pd import OsdpPdSimulator
from simulators.site import OsdpBusSimulator
from simulators.wait import wait_until

KEY = bytes.fromhex("8f1e2d3c4b5a69788796a5b4c3d2e1f0")
ADDR = 4


@dataclass
class Seen:
    """What the bus called back with, and on which thread."""

    cards: list[CardRead] = field(default_factory=list)
    tamper: list[bool] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)

    def card(self, door: str, card: CardRead, t_read: float) -> None:
        self.threads.add(threading.current_thread().name)
        self.cards.append(card)

    def on_tamper(self, door: str, active: bool) -> None:
        self.threads.add(threading.current_thread().name)
        self.tamper.append(active)


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def loop() -> Iterator[Loop]:
    """The edge's loop, running on its own thread as the agent runs it."""
    lp = Loop(name="test-edge-loop")
    lp.start()
    yield lp
    lp.stop()
    lp.close()


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Simulators and buses to close at the end, buses first."""
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        (thing.stop if isinstance(thing, OsdpBus) else thing.close)()


def _on(loop: Loop, fn: Any) -> Any:
    done, result = loop.call_and_wait(fn, 5)
    assert done, "the loop did not run the call"
    return result


def test_on_a_callers_loop_cards_and_tamper_reach_their_callbacks_on_the_loop_thread(
        loop: Loop, seen: Seen, closing: list[Any]) -> None:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    closing.append(sim)
    bus = OsdpBus(sim.path, [OsdpReaderSpec("front", ADDR, KEY)], seen.card, baudrate=115200,
                  on_tamper=seen.on_tamper, loop=loop)
    _on(loop, bus.start)  # the agent calls every reader method on the loop thread
    try:
        assert wait_until(lambda: bus.stats(ADDR).online and bus.stats(ADDR).secure, 5), bus.stats(ADDR)
        assert f"osdp-{sim.path}" not in {t.name for t in threading.enumerate()}, "no thread of the bus's own"
        sim.present_card("wiegand26", 12, 34567)
        sim.set_tamper(True)
        assert wait_until(lambda: seen.cards and seen.tamper, 3)
        assert seen.cards == [CardRead("12:34567", "wiegand26")] and seen.tamper == [True]
        assert seen.threads == {loop.name}
    finally:
        _on(loop, bus.stop)
    assert not bus.stats(ADDR).online and not bus.running


def test_without_a_loop_the_bus_runs_one_of_its_own_and_ends_it_at_stop(seen: Seen, closing: list[Any]) -> None:
    """``doorkeep osdp install-key`` and tests build a bus alone: it keeps working, on a loop of its own."""
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    closing.append(sim)
    bus = OsdpBus(sim.path, [OsdpReaderSpec("front", ADDR, KEY)], seen.card, baudrate=115200)
    for attempt in range(2):  # and it starts again after a stop
        bus.start()
        try:
            assert wait_until(lambda: bus.stats(ADDR).online, 5), (attempt, bus.stats(ADDR))
            sim.present_card("wiegand26", 1, 100 + attempt)
            assert wait_until(lambda attempt=attempt: len(seen.cards) == attempt + 1, 3)
        finally:
            bus.stop()
        assert not bus.stats(ADDR).online
        assert not [t for t in threading.enumerate() if t.name == f"osdp-{sim.path}"], "its loop's thread ended"
    assert seen.threads == {f"osdp-{sim.path}"}


def test_feedback_from_another_thread_is_handed_to_the_loop_and_reaches_the_reader(
        loop: Loop, seen: Seen, closing: list[Any]) -> None:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    closing.append(sim)
    bus = OsdpBus(sim.path, [OsdpReaderSpec("front", ADDR, KEY)], seen.card, baudrate=115200, loop=loop)
    closing.append(bus)
    _on(loop, bus.start)
    assert wait_until(lambda: bus.stats(ADDR).online, 5)
    assert not loop.in_loop()
    bus.feedback(ADDR, granted=True)  # from this thread, not the loop's
    assert wait_until(lambda: sim.leds() and sim.beeps(), 3), sim.commands
    assert sim.leds() == [pk.LED_GREEN] and sim.beeps() == [1]
    with pytest.raises(KeyError):
        bus.send(ADDR + 1, pk.CMD_LED, b"")  # a reader not on this bus is the caller's error, raised to it


def test_readers_share_the_line_round_robin_and_none_is_polled_faster_than_the_interval(
        loop: Loop, seen: Seen, closing: list[Any]) -> None:
    pds = [OsdpPdSimulator(address=a, scbk=KEY) for a in (1, 2)]
    wire = OsdpBusSimulator(pds)
    closing.append(wire)
    bus = OsdpBus(wire.path, [OsdpReaderSpec(f"door{a}", a, KEY) for a in (1, 2)], seen.card, baudrate=115200,
                  loop=loop)
    closing.append(bus)
    _on(loop, bus.start)
    assert wait_until(lambda: bus.stats(1).online and bus.stats(2).online, 5)
    assert bus.interval_s == timing.poll_interval(115200, 2, 100) == pytest.approx(0.01156, abs=1e-5)
    start = time.monotonic()
    assert wait_until(lambda: all(len([t for t in pd.poll_times if t > start]) >= 30 for pd in pds), 5)
    counts, gaps = [], []
    for pd in pds:
        times = [t for t in pd.poll_times if t > start]
        counts.append(len(times))
        gaps.append(statistics.median(b - a for a, b in zip(times, times[1:])))
    assert abs(counts[0] - counts[1]) <= 2 + max(counts) // 10, counts
    assert min(gaps) >= 0.95 * bus.interval_s, (gaps, bus.interval_s)


def test_a_queued_command_does_not_wait_for_the_poll_interval(loop: Loop, seen: Seen, closing: list[Any]) -> None:
    """At 1200 baud an idle reader is polled every 0.27 s; the grant's LED goes at the next free slot."""
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    closing.append(sim)
    bus = OsdpBus(sim.path, [OsdpReaderSpec("front", ADDR, KEY)], seen.card, baudrate=1200, poll_ms=1000,
                  loop=loop)
    closing.append(bus)
    _on(loop, bus.start)
    assert wait_until(lambda: bus.stats(ADDR).online, 5)
    assert bus.interval_s > 0.25
    wait_until(lambda: False, 0.05)  # somewhere inside an idle interval
    t0 = loop.clock.monotonic()
    _on(loop, lambda: bus.feedback(ADDR, granted=False))
    assert wait_until(lambda: sim.leds(), 2)
    led_at = next(c.at for c in sim.commands if c.code == pk.CMD_LED)
    assert led_at - t0 < 0.2, "the LED went out before the next poll was due"


def test_a_reader_answering_busy_is_polled_less_often_then_back_at_the_bus_rate(seen: Seen) -> None:
    bus = OsdpBus("loop://", [OsdpReaderSpec("front", ADDR, secure=False)], seen.card, baudrate=115200,
                  poll_ms=100, port=object())
    r = bus._readers[ADDR]
    busy = pk.Packet(ADDR, pk.REPLY_BUSY, b"", reply=True)
    for _ in range(10):
        bus._online_reply(r, pk.CMD_POLL, b"", busy)
    assert r.interval_s == pytest.approx(0.1), "doubled up to poll_ms"
    for _ in range(10):
        bus._online_reply(r, pk.CMD_POLL, b"", pk.Packet(ADDR, pk.REPLY_ACK, b"", reply=True))
    assert r.interval_s == bus.interval_s
    bus._online_reply(r, pk.CMD_LED, b"\x01", busy)
    assert list(r.outq) == [(pk.CMD_LED, b"\x01")] and r.interval_s == bus.interval_s, \
        "a busy command is sent again, the poll interval left alone"


class FdlessPort:
    """A port object without a file descriptor (what a ``serial_for_url`` handler such as ``loop://`` is),
    whose far end is a simulated reader answering at once. Used on the loop thread only."""

    def __init__(self, pd: OsdpPdSimulator) -> None:
        self.pd = pd
        self.parser = pk.PacketParser()
        self.inbox = b""
        self.closed = False
        self.fail_writes = False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")

    @property
    def in_waiting(self) -> int:
        return len(self.inbox)

    def read(self, size: int) -> bytes:
        data, self.inbox = self.inbox[:size], self.inbox[size:]
        return data

    def write(self, data: bytes) -> int:
        if self.fail_writes:
            raise OSError(5, "Input/output error")  # a USB adapter pulled out
        for item in self.parser.feed(data):
            if isinstance(item, pk.Packet) and not item.reply:
                reply = self.pd._handle(item)
                self.inbox += reply or b""
        return len(data)

    def reset_input_buffer(self) -> None:
        self.inbox = b""

    def close(self) -> None:
        self.closed = True


def test_a_port_without_a_file_descriptor_is_read_on_a_timer_while_a_reply_is_due(
        loop: Loop, seen: Seen, closing: list[Any]) -> None:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    closing.append(sim)
    port = FdlessPort(sim)
    bus = OsdpBus("loop://", [OsdpReaderSpec("front", ADDR, KEY)], seen.card, baudrate=115200, port=port,
                  loop=loop)
    _on(loop, bus.start)
    try:
        assert wait_until(lambda: bus.stats(ADDR).online and bus.stats(ADDR).secure, 5), bus.stats(ADDR)
        sim.present_card("wiegand26", 3, 3)
        assert wait_until(lambda: seen.cards, 3) and seen.threads == {loop.name}
    finally:
        _on(loop, bus.stop)
    assert port.closed


def test_a_silent_bus_times_out_without_spinning_the_loop(loop: Loop, seen: Seen, closing: list[Any]) -> None:
    """``loop://`` hears only its own echo: three attempts, then the reader waits a second before the next."""
    bus = OsdpBus("loop://", [OsdpReaderSpec("front", ADDR, secure=False)], seen.card, baudrate=115200,
                  reply_timeout_s=0.02, loop=loop)
    closing.append(bus)
    turns = loop.turns
    _on(loop, bus.start)
    assert wait_until(lambda: bus.stats(ADDR).faults.get("timeout") == 1, 2), bus.stats(ADDR)
    stats = bus.stats(ADDR)
    assert (stats.retries, stats.reason, stats.online) == (2, "no_reply", False)
    settled = loop.turns
    wait_until(lambda: False, 0.3)  # the reader's retry is a second away: the loop sleeps meanwhile
    assert loop.turns - settled < 20, (loop.turns - settled)
    assert settled - turns < 400, "reading the port on a timer, not in a busy loop"


def test_a_lost_pty_takes_every_reader_offline_and_is_never_reopened(
        loop: Loop, seen: Seen, closing: list[Any]) -> None:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    bus = OsdpBus(sim.path, [OsdpReaderSpec("front", ADDR, KEY)], seen.card, baudrate=115200, loop=loop)
    closing.append(bus)
    _on(loop, bus.start)
    assert wait_until(lambda: bus.stats(ADDR).online, 5)
    sim.close()  # the simulator's end of the pty is gone: the port fails on its next read
    assert wait_until(lambda: bus.stats(ADDR).io_errors >= 1, 3), bus.stats(ADDR)
    stats = bus.stats(ADDR)
    assert not stats.online and stats.reason == "no_reply"
    turns = loop.turns
    wait_until(lambda: False, 0.5)
    assert loop.turns - turns < 10, "the dead port is no longer watched, nor reopened"
    assert bus.stats(ADDR).io_errors == stats.io_errors


def test_a_failed_port_is_reopened_and_every_reader_starts_over_from_id(
        loop: Loop, seen: Seen, closing: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    closing.append(sim)
    first = FdlessPort(sim)
    reopened: list[FdlessPort] = []

    def reopen() -> FdlessPort:
        if len(reopened) < 2:  # the adapter is still unplugged twice: the bus backs off and tries again
            reopened.append(first)
            raise OSError(2, "No such file or directory")
        reopened.append(FdlessPort(sim))
        return reopened[-1]

    bus = OsdpBus("loop://", [OsdpReaderSpec("front", ADDR, KEY)], seen.card, baudrate=115200, port=first,
                  loop=loop)
    closing.append(bus)
    monkeypatch.setattr(bus, "_open", reopen)
    _on(loop, bus.start)
    assert wait_until(lambda: bus.stats(ADDR).online, 5)
    first.fail_writes = True
    assert wait_until(lambda: bus.stats(ADDR).io_errors == 1, 2), bus.stats(ADDR)
    assert not bus.stats(ADDR).online and bus.stats(ADDR).reason == "no_reply" and first.closed
    assert wait_until(lambda: bus.stats(ADDR).online and bus.stats(ADDR).secure, 5), bus.stats(ADDR)
    assert len(reopened) == 3, "two failed attempts, then the port came back"
    sim.present_card("wiegand26", 9, 9)
    assert wait_until(lambda: seen.cards == [CardRead("9:9", "wiegand26")], 3)


def test_a_bus_alone_releases_its_loop_at_each_stop(seen: Seen, closing: list[Any]) -> None:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    closing.append(sim)
    bus = OsdpBus(sim.path, [OsdpReaderSpec("front", ADDR, KEY)], seen.card, baudrate=115200)
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        bus.start()
        bus.stop()
    assert len(os.listdir("/proc/self/fd")) <= fds, "the port, the selector and the wake-up fd are closed"
