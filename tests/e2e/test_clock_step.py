"""An NTP step on the edge's wall clock, forwards and backwards, while cards are badged.

Door timers run on the monotonic clock and must not notice; decisions read the wall clock in the
site's time zone (the demo's lobby is open around the clock); every event still reaches the store.
"""

from __future__ import annotations

import threading
import time

import pytest

from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

CARDS = ("0F00A1B2C3", "0F00B0B0B0", "0F00C4C4C4")


class SteppableClock:
    """The system clock whose wall time can be stepped as NTP would, monotonic untouched."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._lock = threading.Lock()

    def wall(self) -> float:
        with self._lock:
            return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()

    def step(self, seconds: float) -> None:
        with self._lock:
            self.offset += seconds


@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
def test_a_wall_clock_step_changes_no_decision_and_loses_no_event(mosquitto, tmp_path, step_s: float) -> None:
    clock = SteppableClock()
    runner = SiteRunner.from_dir(DEMO_SITE, broker_url=mosquitto.url, data_dir=tmp_path, clock=clock)
    runner.start()
    try:
        assert runner.wait_connected(10)
        door = runner.doors["lobby_in"]
        store = runner.server.store
        seen: list = []
        runner.agents["pi-lobby"].listeners.append(lambda ev: seen.append(ev) if ev.type == "access" else None)

        def badge_and_pass(card: str, n: int) -> None:
            door.reader.badge(card)
            assert door.door.wait_relay(True, 3.0), f"badge {n} was not granted"
            door.door.open()
            door.door.close()
            assert door.door.wait_relay(False, 3.0), "the door did not relock on close"

        badge_and_pass(CARDS[0], 1)
        clock.step(step_s)
        badge_and_pass(CARDS[1], 2)
        badge_and_pass(CARDS[2], 3)
        assert wait_until(lambda: len([e for e in store.events(50, door="lobby_in") if e["type"] == "access"]) == 3, 10)
        assert [e.reason for e in seen] == ["granted"] * 3
        # The events carry the stepped wall time, and their order is kept by seq, not by ts.
        seqs = [e.seq for e in seen]
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        # A grant's unlock window is measured on the monotonic clock: the relay still times out by itself.
        gate = runner.doors["lobby_out"]  # another reader: the lobby's would take Alice's card as still held
        gate.reader.badge(CARDS[0])
        assert gate.door.wait_relay(True, 3.0)
        assert gate.door.wait_relay(False, 10.0), "the unlock window did not end after the clock step"
    finally:
        runner.stop()


def test_a_scenario_jump_is_not_device_silence(mosquitto, tmp_path) -> None:
    """"Three hours later" in a scenario skips heartbeats that were never simulated: no device_offline."""
    from simulators.clock import ScenarioClock

    runner = SiteRunner.from_dir(DEMO_SITE, broker_url=mosquitto.url, data_dir=tmp_path,
                                 clock=ScenarioClock(time.time()))
    runner.start()
    try:
        assert runner.wait_connected(10)
        supervisor = runner.server.supervisor
        assert wait_until(lambda: all(d.status == "online" for d in supervisor.devices().values()), 5)
        assert runner.advance(3 * 3600)
        assert [a for a in supervisor.check() if a.type == "device_offline"] == []
        assert not runner.server.store.open_alarms(type="device_offline")
        # Silence after the jump is still judged: the timer restarted, it did not stop.
        later = runner.clock.monotonic() + supervisor.device_timeout_s + 1
        raised = {a.device for a in supervisor.check(later) if a.type == "device_offline" and a.verb == "raise"}
        assert raised == set(runner.agents), raised
    finally:
        runner.stop()
