"""An edge started from its device file alone (issue 13): the site comes from the server's signed policy.

A Pi keeps only its hardware (pins, readers, cameras, broker, keys); a device file without ``site_file`` runs its
doors on the newest verified signed policy, the cached one at start, then each one received. Before it holds any
it fails secure: every badge refused with ``no_policy``, no relay energised by a badge or a command, REX still
opening the door from inside. Real parts: the agent's own threads, a reader simulator on a pty speaking EM4100,
the door simulator on gpiozero mock pins; no broker (port 1 refuses), so every decision is the edge's own.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from datetime import time
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory

from doorkeep import cli
from doorkeep.clock import FakeClock
from doorkeep.commands import sign_command
from doorkeep.config import DeviceConfig, load_device
from doorkeep.contract import EventMsg
from doorkeep.credentials import card_hash
from doorkeep.errors import ConfigErrors
from doorkeep.model import AccessEntry, AccessLevel, Area, Credential, Door, OfflineMode, Person, Schedule, Site, \
    TimeWindow, WEEKDAYS
from doorkeep.policy import ReaderSignals, compile_policy, sign_policy, verify_policy
from edge.agent import EdgeAgent
from edge.errors import EdgeError
from edge.osdp.cp import CAUSE_CLEAR_NAK, CAUSE_HANDSHAKE_FAILED
from simulators.door import DoorSimulator
from simulators.reader import ReaderSimulator
from tests.conftest import wait_until

ALICE_CARD = "0F00A1B2C3"
KEY = bytes(range(32))  # the credential key: the policy's hashes and the edge's must agree

DEVICE = """\
device = "pi-lobby"
site = "demo"
gpio_factory = "mock"
credential_key_file = "credential.key"
policy_key_file = "policy-signing.pub"
state_dir = "state"

[broker]
url = "mqtt://127.0.0.1:1"
allow_plain_mqtt = true

[doors.lobby_in]
reader = { url = "loop://", protocol = "em4100" }
lock = { pin = 17 }
contact = { pin = 27 }
rex = { pin = 22 }
"""


def policy_site(unlock_s: float) -> Site:
    """The server's site: one door into the lobby, alice on staff at any time."""
    always = Schedule("always", "Always", (TimeWindow(frozenset(WEEKDAYS), time(0), None),))
    alice_card = card_hash(KEY, "em4100", ALICE_CARD)
    return Site(
        id="demo", name="Demo", timezone="Europe/London",
        areas={"outside": Area("outside", "Outside"), "lobby": Area("lobby", "Lobby")},
        doors={"lobby_in": Door("lobby_in", "Lobby entrance", "outside", "lobby", unlock_s=unlock_s,
                                held_open_s=40.0, offline=OfflineMode.CACHE)},
        schedules={"always": always},
        access_levels={"staff": AccessLevel("staff", "Staff", (AccessEntry("lobby", "always"),))},
        people={"alice": Person("alice", "Alice", access_levels=("staff",))},
        credentials={alice_card: Credential(alice_card, ALICE_CARD[-4:], "em4100", "alice")},
    )


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def device_file(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    """A Pi's /etc/doorkeep: the device file, the credential key and the server's public policy key, nothing else."""
    pi = tmp_path / "etc-doorkeep"
    pi.mkdir()
    (pi / "pi-lobby.toml").write_text(DEVICE)
    (pi / "credential.key").write_text(KEY.hex() + "\n")
    (pi / "credential.key").chmod(0o600)
    pub = signing_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    (pi / "policy-signing.pub").write_bytes(pub)
    (pi / "policy-signing.pub").chmod(0o644)
    return pi / "pi-lobby.toml"


class Edge:
    """One agent on its simulated hardware, with the events it published."""

    def __init__(self, dev: DeviceConfig, signing_key: Ed25519PrivateKey, clock: FakeClock) -> None:
        self.factory = MockFactory()
        self.reader = ReaderSimulator("em4100")
        hw = dev.doors["lobby_in"]
        self.door = DoorSimulator(self.factory, relay_pin=hw.lock.pin, contact_pin=hw.contact.pin,
                                  rex_pin=hw.rex.pin)
        doors = {"lobby_in": dataclasses.replace(hw, reader=dataclasses.replace(hw.reader, url=self.reader.path))}
        dev = dataclasses.replace(dev, doors=doors)
        self.agent = EdgeAgent(dev, None, KEY, clock=clock, pin_factory=self.factory,
                               policy_key=signing_key.public_key(), state_dir=dev.state_dir)
        self.events: list[EventMsg] = []
        self._lock = threading.Lock()
        self.agent.listeners.append(self._heard)

    def _heard(self, ev: EventMsg) -> None:
        with self._lock:
            self.events.append(ev)

    def access(self) -> list[EventMsg]:
        with self._lock:
            return [e for e in self.events if e.type == "access"]

    def badge(self, number: str) -> EventMsg:
        before = len(self.access())
        self.reader.badge(number)
        assert wait_until(lambda: len(self.access()) > before, 5), "the badge was never decided"
        assert self.agent.sync(5)
        return self.access()[-1]

    def state(self) -> dict:
        return json.loads(self.agent._state_payload())

    def stop(self) -> None:
        self.agent.stop()
        self.reader.close()


@pytest.fixture
def edges() -> Iterator[list[Edge]]:
    started: list[Edge] = []
    yield started
    for edge in started:
        edge.stop()


def start(edges: list[Edge], device_file: Path, signing_key: Ed25519PrivateKey, clock: FakeClock) -> Edge:
    dev, site = load_device(device_file)
    assert site is None and dev.site_file is None, "a device file alone has no site"
    edge = Edge(dev, signing_key, clock)
    edges.append(edge)
    edge.agent.start()
    assert wait_until(lambda: edge.agent.doors["lobby_in"].reader.stats.online, 5)
    return edge


# ------------------------------------------------------------------ before any policy


def test_badge_is_refused_with_no_policy_and_the_relay_never_moves_until_the_first_policy(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge],
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="doorkeep.edge"):
        edge = start(edges, device_file, signing_key, clock)
    waiting = [r for r in caplog.records if "holds no signed policy yet" in r.getMessage()]
    assert len(waiting) == 1 and waiting[0].levelno == logging.WARNING, "the edge says once what it waits for"
    assert "doorkeep/v1/demo/pi-lobby/policy" in waiting[0].getMessage()
    assert edge.state()["policy"] == {"status": "waiting_for_first_policy", "version": None}

    ev = edge.badge(ALICE_CARD)
    assert (ev.decision, ev.reason, ev.decided_by) == ("denied", "no_policy", "edge_offline")
    # A signed remote unlock is refused too: nothing says how long this door may stay open yet.
    cmd = sign_command(site_id="demo", device="pi-lobby", action="unlock", args={"door": "lobby_in"},
                       key=signing_key, issued_at=clock.wall())
    edge.agent._on_command_payload(cmd)
    assert edge.agent.sync(5) and edge.agent.counters["commands_failed"] == 1
    assert not any(on for _, on in edge.door.relay_history), "no badge or command energised the relay"

    # Egress is life safety: REX opens the door from inside exactly as with a site file.
    edge.door.press_rex()
    assert edge.door.wait_relay(True, 5), "REX still releases the lock before any policy"

    # The first policy arrives: the same card now opens (decided by the edge: the server is unreachable).
    edge.agent._on_policy(sign_policy(compile_policy(policy_site(7.0), ["lobby_in"]), site_id="demo",
                                      device="pi-lobby", version=5, issued_at=clock.wall(), key=signing_key))
    assert wait_until(lambda: edge.agent.policy is not None and edge.agent.policy.version == 5, 5)
    assert edge.agent.sync(5)
    assert edge.state()["policy"] == {"status": "held", "version": 5}
    clock.advance(10)  # the REX unlock is over
    edge.agent.poke()
    assert edge.door.wait_relay(False, 5)
    ev = edge.badge(ALICE_CARD)
    assert (ev.decision, ev.reason, ev.person) == ("granted", "granted_offline", "alice")
    assert edge.door.wait_relay(True, 5)


def test_a_policy_that_does_not_name_the_door_refuses_its_badges_as_unknown_door(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    edge = start(edges, device_file, signing_key, clock)
    other = dataclasses.replace(policy_site(5.0), doors={})  # the server put lobby_in on another device
    edge.agent._on_policy(sign_policy(other, site_id="demo", device="pi-lobby", version=3,
                                      issued_at=clock.wall(), key=signing_key))
    assert wait_until(lambda: edge.agent.policy is not None and edge.agent.policy.version == 3, 5)
    assert edge.agent.sync(5)
    ev = edge.badge(ALICE_CARD)
    assert (ev.decision, ev.reason) == ("denied", "unknown_door")
    assert not any(on for _, on in edge.door.relay_history)


# ------------------------------------------------------------------ after a policy was cached


def test_a_restarted_edge_decides_offline_from_its_cached_policy_with_the_policys_times(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    first = start(edges, device_file, signing_key, clock)
    first.agent._on_policy(sign_policy(compile_policy(policy_site(7.0), ["lobby_in"]), site_id="demo",
                                       device="pi-lobby", version=9, issued_at=clock.wall(), key=signing_key))
    assert wait_until(lambda: first.agent.policy is not None and first.agent.policy.version == 9, 5)
    edges.remove(first)
    first.stop()
    assert (device_file.parent / "state" / "policy.json").exists(), "the verified policy is on disk"

    edge = start(edges, device_file, signing_key, clock)  # same state_dir, still no site file
    assert edge.state()["policy"] == {"status": "held", "version": 9}
    assert edge.agent.doors["lobby_in"].machine.timings.unlock_s == 7.0, "the cached policy's unlock time"
    assert edge.badge("0F00DEAD01").reason == "unknown_credential"  # decided from the cache, not waved through
    ev = edge.badge(ALICE_CARD)
    assert (ev.decision, ev.reason, ev.decided_by, ev.person) == ("granted", "granted_offline", "edge_offline",
                                                                 "alice")
    assert edge.door.wait_relay(True, 5)
    clock.advance(6.5)  # past the 5 s a door gets without a policy, inside the policy's 7 s
    edge.agent.poke()
    assert edge.agent.sync(5) and edge.door.relay_energised
    clock.advance(1.0)
    edge.agent.poke()
    assert edge.door.wait_relay(False, 5), "relocked when the policy's unlock time ran out"


# ------------------------------------------------------------------ the reader thresholds travel too


def test_the_policys_reader_thresholds_reach_the_osdp_bus_and_defaults_are_left_out(
        tmp_path: Path, device_file: Path, signing_key: Ed25519PrivateKey) -> None:
    subset = compile_policy(policy_site(5.0), ["lobby_in"])
    plain = sign_policy(subset, site_id="demo", device="pi-lobby", version=1, issued_at=1.8e9, key=signing_key,
                        reader_signals=ReaderSignals())
    assert "reader_signals" not in json.loads(json.loads(plain)["signed"]), \
        "defaults are left out, so edges older than the field keep taking the policy"
    assert verify_policy(plain, signing_key.public_key(), site_id="demo", device="pi-lobby").reader_signals is None
    tuned = ReaderSignals(handshake_failures=2, clear_naks=9, window_s=30.0)
    payload = sign_policy(subset, site_id="demo", device="pi-lobby", version=2, issued_at=1.8e9, key=signing_key,
                          reader_signals=tuned)
    assert verify_policy(payload, signing_key.public_key(), site_id="demo", device="pi-lobby").reader_signals == tuned

    state = device_file.parent / "state"
    state.mkdir(mode=0o700)
    (state / "policy.json").write_bytes(payload)
    dev, _ = load_device(device_file)
    osdp = dataclasses.replace(dev.doors["lobby_in"].reader, protocol="osdp", secure_channel=False)
    dev = dataclasses.replace(dev, doors={"lobby_in": dataclasses.replace(dev.doors["lobby_in"], reader=osdp)})
    agent = EdgeAgent(dev, None, KEY, pin_factory=MockFactory(), policy_key=signing_key.public_key(),
                      state_dir=state)
    try:
        bus = agent.doors["lobby_in"].reader.bus  # type: ignore[attr-defined]  # an OsdpReader
        assert (bus.signal_window_s, bus.signal_thresholds[CAUSE_HANDSHAKE_FAILED],
                bus.signal_thresholds[CAUSE_CLEAR_NAK]) == (30.0, 2, 9), "the cached policy's, from the start"
        # A site revision back to the defaults: the next policy leaves the field out, and the bus follows.
        agent._verify_policy(sign_policy(subset, site_id="demo", device="pi-lobby", version=3, issued_at=1.8e9,
                                         key=signing_key, reader_signals=ReaderSignals()))
        agent._policy_arrived()  # what the loop does once the jobs worker verified it
        assert (bus.signal_window_s, bus.signal_thresholds[CAUSE_HANDSHAKE_FAILED],
                bus.signal_thresholds[CAUSE_CLEAR_NAK]) == (60.0, 3, 4)
    finally:
        agent.outbox.close()


def test_the_publisher_signs_new_policies_when_a_revision_changes_the_reader_thresholds(
        tmp_path: Path, signing_key: Ed25519PrivateKey) -> None:
    from server.publisher import PolicyPublisher
    from server.store import Store

    store = Store(tmp_path / "store")
    clock = FakeClock(1_780_000_000.0)
    publisher = PolicyPublisher("demo", {"pi-lobby": ["lobby_in"]}, signing_key, store, clock,
                                reader_signals=ReaderSignals())
    sent: list[bytes] = []
    try:
        first = publisher.publish_all(policy_site(5.0), lambda topic, payload: sent.append(payload))
        assert "reader_signals" not in json.loads(json.loads(sent[-1])["signed"])
        publisher.publish_all(policy_site(5.0), lambda topic, payload: sent.append(payload))
        assert len(sent) == 1, "nothing changed, nothing re-signed"
        publisher.reader_signals = ReaderSignals(clear_naks=8)  # what server/app.py does on a site revision
        clock.advance(0.01)
        second = publisher.publish_all(policy_site(5.0), lambda topic, payload: sent.append(payload))
        held = verify_policy(sent[-1], signing_key.public_key(), site_id="demo", device="pi-lobby",
                             min_version=first + 1)
        assert len(sent) == 2 and held.version == second and held.reader_signals == ReaderSignals(clear_naks=8)
    finally:
        store.close()


# ------------------------------------------------------------------ config


def test_config_check_passes_a_device_file_alone_and_says_the_site_comes_from_the_server(
        device_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "check", str(device_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "ok"
    assert "from the server" in out[1] and "signed policy" in out[1]


def test_a_named_site_file_that_does_not_exist_names_the_file_the_key_and_the_fix(device_file: Path) -> None:
    device_file.write_text(DEVICE.replace('state_dir = "state"', 'state_dir = "state"\nsite_file = "site.toml"'))
    with pytest.raises(ConfigErrors) as exc:
        load_device(device_file)
    [err] = exc.value.errors
    assert (err.file, err.key) == (str(device_file), "site_file")
    assert "site.toml does not exist" in err.problem
    assert "remove site_file" in err.fix and "fix the path" in err.fix


def test_without_a_site_file_the_policy_key_is_required(device_file: Path, signing_key: Ed25519PrivateKey) -> None:
    device_file.write_text(DEVICE.replace('policy_key_file = "policy-signing.pub"\n', ""))
    with pytest.raises(ConfigErrors) as exc:
        load_device(device_file)
    [err] = exc.value.errors
    assert err.key == "policy_key_file" and "policy-signing.pub" in err.fix
    # The agent refuses the same, for whoever builds it without load_device.
    device_file.write_text(DEVICE)
    dev, _ = load_device(device_file)
    with pytest.raises(EdgeError, match="policy_key_file"):
        EdgeAgent(dev, None, KEY, pin_factory=MockFactory())


def test_a_device_file_in_its_site_directory_still_finds_the_site_file(tmp_path: Path, device_file: Path) -> None:
    site = tmp_path / "site"
    (site / "devices").mkdir(parents=True)
    (site / "devices" / "pi-lobby.toml").write_text(DEVICE.replace('credential_key_file = "credential.key"\n', ""))
    (site / "site.toml").write_text(SITE_TOML)
    dev, loaded = load_device(site / "devices" / "pi-lobby.toml")
    assert loaded is not None and loaded.doors["lobby_in"].unlock_s == 4
    assert dev.site_file == site / "devices" / ".." / "site.toml"


SITE_TOML = """\
[site]
id = "demo"
name = "Demo"
timezone = "Europe/London"

[areas.outside]
name = "Outside"

[areas.lobby]
name = "Lobby"

[doors.lobby_in]
name = "Lobby entrance"
from = "outside"
to = "lobby"
unlock_s = 4
"""
