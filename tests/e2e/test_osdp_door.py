"""Issue 7 "done when": a card presented on a libosdp reader reaches a decision and lights the reader's LED,
over Secure Channel, through the real edge agent, the real server and the session's Mosquitto.

The site runner builds its readers from ``simulators.site.ReaderSimulator``; for the door made OSDP here that
name is swapped (monkeypatch) for a libosdp peripheral device on a pty, the rest of the site is unchanged.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import simulators.site as site_module
from doorkeep.config import CardSeed, load_site_dir
from doorkeep.model import CredentialState
from edge.osdp import packet as pk
from simulators.clock import ScenarioClock
from simulators.site import DEMO_SITE, SiteRunner
from simulators.wait import wait_until

pytest.importorskip("osdp", reason="libosdp (dev extra) is needed for the OSDP door test")
from simulators.osdp_pd import LibosdpReader, OsdpPdSimulator

pytestmark = pytest.mark.e2e

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
DOOR = "lobby_in"


def _osdp_site(mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
               make_pd: Callable[[], Any] = lambda: LibosdpReader(0, KEY), *,
               key_on_file: bool = True) -> tuple[SiteRunner, list]:
    key_file = tmp_path / "keys" / "lobby_in.scbk"
    key_file.parent.mkdir()
    if key_on_file:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, KEY.hex().encode() + b"\n")
        os.close(fd)
    bundle = load_site_dir(DEMO_SITE)
    dev = bundle.devices["pi-lobby"]
    hw = dev.doors[DOOR]
    reader = dataclasses.replace(hw.reader, protocol="osdp", address=0, poll_ms=20, baudrate=115200,
                                 scbk_file=key_file, secure_channel=True)
    dev = dataclasses.replace(dev, doors={**dev.doors, DOOR: dataclasses.replace(hw, reader=reader)})
    cards = [*bundle.cards, CardSeed("alice", "wiegand26", "12:34567", CredentialState.ACTIVE),
             CardSeed("eli", "wiegand26", "12:999", CredentialState.LOST)]
    bundle = dataclasses.replace(bundle, devices={**bundle.devices, "pi-lobby": dev}, cards=cards)

    pds: list[Any] = []
    original = site_module.ReaderSimulator

    def reader_for(protocol: str):  # type: ignore[no-untyped-def]
        if protocol != "osdp":
            return original(protocol)
        pd = make_pd()
        pds.append(pd)
        return pd

    monkeypatch.setattr(site_module, "ReaderSimulator", reader_for)
    return SiteRunner(bundle, broker_url=mosquitto.url, data_dir=tmp_path, clock=ScenarioClock(time.time())), pds


def test_card_on_a_libosdp_reader_is_decided_and_lights_its_led_over_secure_channel(
        mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, pds = _osdp_site(mosquitto, tmp_path, monkeypatch)
    runner.start()
    try:
        assert runner.wait_connected(10)
        assert runner.wait_policies(10)
        [pd] = pds
        edge_reader = runner.agents["pi-lobby"].doors[DOOR].reader
        assert wait_until(lambda: edge_reader.stats.online, 10), edge_reader.stats
        assert edge_reader.stats.secure and pd.sc_active, "the reader is online over Secure Channel only"
        store = runner.server.store

        def access() -> list[dict]:
            return [e for e in store.events(50, door=DOOR) if e["type"] == "access"]

        pd.present_card("wiegand26", 12, 34567)
        assert wait_until(lambda: len(access()) == 1, 10)
        granted = access()[0]
        assert granted["decision"] == "granted", granted
        assert granted["person"] == "alice" and granted["decided_by"] == "server"
        assert wait_until(lambda: runner.doors[DOOR].door.relay_history, 5), "a grant energises the relay"
        assert wait_until(lambda: pk.LED_GREEN in pd.leds(), 5), pd.commands
        relay_after_grant = list(runner.doors[DOOR].door.relay_history)
        assert wait_until(lambda: pd.beeps() == [1], 5), "grant: one beep"

        pd.present_card("wiegand26", 12, 999)  # eli's lost card
        assert wait_until(lambda: len(access()) == 2, 10)
        denied = [e for e in access() if e["decision"] == "denied"]
        assert len(denied) == 1 and denied[0]["reason"] == "credential_inactive", denied
        assert wait_until(lambda: pk.LED_RED in pd.leds(), 5), pd.commands
        assert wait_until(lambda: pd.beeps() == [1, 2], 5), "deny: two beeps"
        assert len(runner.doors[DOOR].door.relay_history) == len(relay_after_grant), "a denial never energises"
        assert not [e for e in store.events(50, door=DOOR) if e["type"] in ("reader_offline", "reader_security")]
    finally:
        runner.stop()


def test_a_factory_reader_is_reported_offline_needing_a_key_and_a_forged_reply_raises_an_alarm(
        mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the agent and the server: the health reason travels as reader_offline detail.cause, and a
    reply with a bad MAC becomes a reader_security alarm; neither ever energises the relay."""
    from edge.agent import HEALTH_GRACE_S

    runner, pds = _osdp_site(mosquitto, tmp_path, monkeypatch, lambda: OsdpPdSimulator(address=0),
                             key_on_file=False)
    runner.start()
    try:
        assert runner.wait_connected(10)
        [sim] = pds
        agent = runner.agents["pi-lobby"]
        edge_reader = agent.doors[DOOR].reader
        assert wait_until(lambda: edge_reader.health_reason == "needs_key", 10), edge_reader.stats
        store = runner.server.store
        assert runner.advance(HEALTH_GRACE_S + 1)
        agent.poke()

        def offline() -> list[dict]:
            return [e for e in store.events(50, door=DOOR) if e["type"] == "reader_offline"]

        assert wait_until(lambda: offline(), 10)
        assert '"cause": "needs_key"' in offline()[0]["detail"]
        assert wait_until(lambda: any(a["type"] == "reader_offline" for a in store.open_alarms()), 5)

        # The operator installs the key (what `doorkeep osdp install-key` does), the reader comes online.
        sim_key = KEY
        assert edge_reader.bus.begin_install(0, sim_key).wait(5)
        assert wait_until(lambda: edge_reader.stats.online and edge_reader.stats.secure, 10)
        assert wait_until(lambda: any(e["type"] == "reader_online" for e in store.events(50, door=DOOR)), 10)

        sim.forge_next_reply = True
        sim.present_card("wiegand26", 12, 34567)  # alice's card, in a packet whose MAC is forged
        assert wait_until(lambda: any(a["type"] == "reader_security" for a in store.open_alarms()), 10)
        ev = [e for e in store.events(50, door=DOOR) if e["type"] == "reader_security"]
        assert '"cause": "mac_failure"' in ev[0]["detail"]
        assert not [e for e in store.events(50, door=DOOR) if e["type"] == "access"], "a forged read is no badge"
        assert not runner.doors[DOOR].door.relay_history
    finally:
        runner.stop()


def test_attack_clear_nak_storm_on_the_bus_raises_one_reader_security_alarm_at_the_server(
        mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: a storm of NAKs injected in clear used to take the reader offline with no reader_security
    alarm. Now exactly one event (cause clear_nak, with its counts) reaches the server, not one per packet."""
    runner, pds = _osdp_site(mosquitto, tmp_path, monkeypatch, lambda: OsdpPdSimulator(address=0, scbk=KEY))
    runner.start()
    try:
        assert runner.wait_connected(10)
        [sim] = pds
        edge_reader = runner.agents["pi-lobby"].doors[DOOR].reader
        assert wait_until(lambda: edge_reader.stats.online and edge_reader.stats.secure, 10), edge_reader.stats
        store = runner.server.store

        def security() -> list[dict]:
            return [e for e in store.events(50, door=DOOR) if e["type"] == "reader_security"]

        assert not security()
        sim.nak_storm = True
        assert wait_until(lambda: edge_reader.stats.faults.get("clear_nak", 0) >= 30, 10), edge_reader.stats
        assert wait_until(lambda: security(), 10)
        assert wait_until(lambda: any(a["type"] == "reader_security" for a in store.open_alarms()), 5)
        # The storm goes on: still only one event once everything the edge queued has been delivered.
        agent = runner.agents["pi-lobby"]
        assert wait_until(lambda: edge_reader.stats.faults.get("clear_nak", 0) >= 60, 10)
        assert agent.sync(5) and wait_until(lambda: agent.outbox.pending == 0, 10)
        [ev] = security()
        assert '"cause": "clear_nak"' in ev["detail"] and '"count": ' in ev["detail"]
        assert not runner.doors[DOOR].door.relay_history
    finally:
        runner.stop()
