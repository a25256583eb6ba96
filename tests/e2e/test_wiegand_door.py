"""A Wiegand reader on the Pi's GPIO, end to end: the simulator's pulse trains on the agent's own mock D0/D1
pins, the real edge callbacks and decoder, the real server and the session's Mosquitto over mutual TLS.

The demo's lobby_in reader is made a Wiegand reader here (the site runner builds a ``WiegandSimulator`` for
it); the card is given to a person in the test, so the shipped people file stays as it is.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from doorkeep.config import CardSeed, load_site_dir
from doorkeep.model import CredentialState
from simulators.clock import ScenarioClock
from simulators.site import DEMO_SITE, SiteRunner
from simulators.wait import wait_until
from simulators.wiegand import WiegandSimulator, card_bits

pytestmark = pytest.mark.e2e

DOOR = "lobby_in"
D0, D1 = 20, 21


def _wiegand_site(mosquitto, tmp_path: Path) -> SiteRunner:
    bundle = load_site_dir(DEMO_SITE)
    dev = bundle.devices["pi-lobby"]
    hw = dev.doors[DOOR]
    reader = dataclasses.replace(hw.reader, protocol="wiegand", url=f"gpio://{D0},{D1}", d0_pin=D0, d1_pin=D1,
                                 frame_timeout_ms=25)
    dev = dataclasses.replace(dev, doors={**dev.doors, DOOR: dataclasses.replace(hw, reader=reader)})
    cards = [*bundle.cards, CardSeed("alice", "wiegand26", "12:34567", CredentialState.ACTIVE),
             CardSeed("eli", "wiegand26", "12:999", CredentialState.LOST)]
    bundle = dataclasses.replace(bundle, devices={**bundle.devices, "pi-lobby": dev}, cards=cards)
    return SiteRunner(bundle, broker_url=mosquitto.url, data_dir=tmp_path, clock=ScenarioClock(time.time()))


def test_a_wiegand_card_grants_and_bad_parity_is_counted_without_a_decision(mosquitto, tmp_path: Path) -> None:
    runner = _wiegand_site(mosquitto, tmp_path)
    runner.start()
    try:
        assert runner.wait_connected(10)
        assert runner.wait_policies(10)
        sim = runner.doors[DOOR]
        assert isinstance(sim.reader, WiegandSimulator) and sim.reader.path == f"gpio://{D0},{D1}"
        edge_reader = runner.agents["pi-lobby"].doors[DOOR].reader
        assert edge_reader.protocol == "wiegand" and edge_reader.stats.online
        store = runner.server.store

        def access() -> list[dict]:
            return [e for e in store.events(50, door=DOOR) if e["type"] == "access"]

        # Bad parity first: counted, skipped, no request, no decision, the relay untouched.
        bad = card_bits("wiegand26", "12:34567")
        bad[3] ^= 1
        sim.reader.send_bits(bad)  # returns once the frame and the idle gap after it are on the wire
        assert wait_until(lambda: edge_reader.stats.faults.get("parity") == 1, 5), edge_reader.stats
        assert runner.wait_edges_idle(5)
        assert edge_reader.stats.frames == 0 and not runner.agents["pi-lobby"].in_flight
        assert not runner.doors[DOOR].door.relay_history, "a garbled frame never energises the relay"

        # Alice's 26-bit card: a grant decided by the server, and the relay energised.
        sim.badge("12:34567")
        assert wait_until(lambda: len(access()) == 1, 10)
        granted = access()[0]
        assert (granted["decision"], granted["person"], granted["decided_by"]) == ("granted", "alice", "server")
        assert wait_until(lambda: any(on for _, on in runner.doors[DOOR].door.relay_history), 5)
        energised = sum(1 for _, on in runner.doors[DOOR].door.relay_history if on)

        # A lost card read cleanly is decided and denied: the relay stays as it was.
        sim.reader.present_card("wiegand26", 12, 999)
        assert wait_until(lambda: len(access()) == 2, 10)
        denied = [e for e in access() if e["decision"] == "denied"]
        assert len(denied) == 1 and denied[0]["reason"] == "credential_inactive", denied
        assert runner.wait_edges_idle(5)
        assert sum(1 for _, on in runner.doors[DOOR].door.relay_history if on) == energised

        # The health stats the state topic carries: two frames, one fault, online.
        # (More frames or other faults only if this machine's scheduler stretched a bit gap: the simulator
        # then resent the frame, and the stretched one may have been read whole or counted as a fault.)
        s = edge_reader.stats
        assert (s.faults.get("parity"), s.online) == (1, True)
        resent = sim.reader.stretched_frames
        assert 2 <= s.frames <= 2 + resent, (s.frames, resent)
        assert sum(s.faults.values()) == 1 or resent, s.faults
        assert runner.agents["pi-lobby"].counters["timeouts"] == 0
    finally:
        runner.stop()
