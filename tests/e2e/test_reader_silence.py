"""A reader that sends keep-alives and falls silent is reported offline (no frame within its timeout).

The cable is not cut here (the port stays open, so the edge sees no I/O error): only the silence
tells a dead reader from a quiet door, which is what ``silence_timeout_s`` is for.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from doorkeep.config import load_site_dir
from simulators.clock import ScenarioClock
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

TIMEOUT_S = 5.0


def _silence_watched_site(mosquitto, tmp_path: Path, clock: ScenarioClock) -> SiteRunner:
    bundle = load_site_dir(DEMO_SITE)
    dev = bundle.devices["pi-lobby"]
    hw = dev.doors["lobby_out"]
    reader = dataclasses.replace(hw.reader, protocol="ascii", silence_timeout_s=TIMEOUT_S)
    dev = dataclasses.replace(dev, doors={**dev.doors, "lobby_out": dataclasses.replace(hw, reader=reader)})
    bundle = dataclasses.replace(bundle, devices={**bundle.devices, "pi-lobby": dev})
    return SiteRunner(bundle, broker_url=mosquitto.url, data_dir=tmp_path, clock=clock)


def test_a_reader_that_stops_its_keepalives_goes_offline_and_comes_back(mosquitto, tmp_path: Path) -> None:
    clock = ScenarioClock(time.time())
    runner = _silence_watched_site(mosquitto, tmp_path, clock)
    runner.start()
    try:
        assert runner.wait_connected(10)
        sim = runner.doors["lobby_out"].reader
        edge_reader = runner.agents["pi-lobby"].doors["lobby_out"].reader
        store = runner.server.store

        def health_events() -> list[dict]:
            return [e for e in store.events(50, door="lobby_out") if e["type"] in ("reader_offline", "reader_online")]

        def keepalive() -> None:
            before = edge_reader.stats.last_data_at
            sim.write_raw(b"\r\n")  # an ASCII reader's blank keep-alive line: no card, no fault
            assert wait_until(lambda: edge_reader.stats.last_data_at != before, 3)

        # Past the start-up grace, a reader that keeps talking stays online.
        for _ in range(4):
            keepalive()
            assert runner.advance(TIMEOUT_S - 1.5)
        assert runner.server.bus.wait_idle(5)
        assert health_events() == []
        assert sum(edge_reader.stats.faults.values()) == 0, "a keep-alive line is not a garbled frame"

        # Silence beyond the timeout: reader_offline with its cause, and a trouble alarm.
        assert runner.advance(TIMEOUT_S + 1)
        assert wait_until(lambda: [e["type"] for e in health_events()] == ["reader_offline"], 5)
        assert '"cause": "silent"' in health_events()[0]["detail"]
        assert wait_until(lambda: any(a["type"] == "reader_offline" for a in store.open_alarms()), 5)

        # It speaks again: back online, the alarm is cleared, and a card read there still works.
        keepalive()
        assert wait_until(lambda: "reader_online" in [e["type"] for e in health_events()], 5)
        assert wait_until(lambda: all(a["cleared_at"] is not None for a in store.open_alarms(type="reader_offline")), 5), \
            "reader_online clears the reader_offline alarm (it stays listed until an operator resolves it)"
        sim.badge("ALICE01")
        assert wait_until(lambda: any(e["type"] == "access" for e in store.events(50, door="lobby_out")), 5)
        access = [e for e in store.events(50, door="lobby_out") if e["type"] == "access"]
        assert access[0]["reason"] == "unknown_credential", "an ASCII number the site does not know is refused"
        assert not runner.doors["lobby_out"].door.relay_history, "a refused card never energises the relay"
    finally:
        runner.stop()
