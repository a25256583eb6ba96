"""Timed overrides at the edge (issue 16): a door held unlocked or locked until a time ends by itself.

The edge is the real agent on its loop with the door simulator on gpiozero mock pins, a fake clock and no broker
(port 1 refuses): the server is unreachable throughout, which is the point. Commands are signed with the site's
key and handed to the agent as paho would; time moves only when the test says so (``clock.advance`` then
``agent.poke``/``sync``), so nothing here waits for a real deadline.
"""

from __future__ import annotations

import base64
import json
from datetime import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.commands import sign_command, verify_command
from doorkeep.config import load_device
from doorkeep.model import Area, Door, DoorMode, Schedule, Site, TimeWindow, WEEKDAYS
from edge.agent import EdgeAgent
from edge.overrides import OVERRIDES_FILE
from simulators.door import DoorSimulator
from tests.unit.agent_harness import AgentHarness

KEY = bytes(range(32))
DOOR = "dock"
DEVICE = """\
device = "pi-dock"
site = "demo"
gpio_factory = "mock"
credential_key_file = "credential.key"
policy_key_file = "policy-signing.pub"
state_dir = "state"

[broker]
url = "mqtt://127.0.0.1:1"
allow_plain_mqtt = true

[doors.dock]
reader = { url = "loop://", protocol = "em4100" }
lock = { pin = 17 }
contact = { pin = 27 }
rex = { pin = 22 }
"""


def site(mode: DoorMode = DoorMode.NORMAL) -> Site:
    """One loading dock; with ``mode`` unlocked_on_schedule it is held open all day (the fake clock is 08:00)."""
    always = Schedule("always", "Always", (TimeWindow(frozenset(WEEKDAYS), time(0), None),))
    return Site(
        id="demo", name="Demo", timezone="Europe/London",
        areas={"outside": Area("outside", "Outside"), "store": Area("store", "Store")},
        doors={DOOR: Door(DOOR, "Loading dock", "outside", "store", unlock_s=5.0, held_open_s=40.0, mode=mode,
                          unlock_schedule="always" if mode is DoorMode.UNLOCKED_ON_SCHEDULE else None)},
        schedules={"always": always},
    )


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def device_file(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    pi = tmp_path / "etc-doorkeep"
    pi.mkdir()
    (pi / "pi-dock.toml").write_text(DEVICE)
    (pi / "credential.key").write_text(KEY.hex() + "\n")
    (pi / "credential.key").chmod(0o600)
    pub = signing_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    (pi / "policy-signing.pub").write_bytes(pub)
    return pi / "pi-dock.toml"


class Edge(AgentHarness):
    """One agent on simulated hardware, the events it published, and a way to send it signed commands."""

    def __init__(self, device_file: Path, the_site: Site, key: Ed25519PrivateKey, clock: FakeClock) -> None:
        dev, _ = load_device(device_file)
        self.key = key
        self.factory = MockFactory()
        hw = dev.doors[DOOR]
        self.door = DoorSimulator(self.factory, relay_pin=hw.lock.pin, contact_pin=hw.contact.pin,
                                  rex_pin=hw.rex.pin)
        self.state_dir = dev.state_dir
        super().__init__(EdgeAgent(dev, the_site, KEY, clock=clock, pin_factory=self.factory,
                                   policy_key=key.public_key(), state_dir=dev.state_dir),
                         clock, key, site_id="demo", device="pi-dock")
        self.agent.start()
        self.settle()

    def override_state(self) -> Any:
        return json.loads(self.agent._state_payload())["doors"][DOOR]["override"]

    def stop(self) -> None:
        self.agent.stop()


@pytest.fixture
def edges() -> Iterator[list[Edge]]:
    started: list[Edge] = []
    yield started
    for edge in started:
        edge.stop()


def start(edges: list[Edge], device_file: Path, key: Ed25519PrivateKey, clock: FakeClock,
          mode: DoorMode = DoorMode.NORMAL) -> Edge:
    edge = Edge(device_file, site(mode), key, clock)
    edges.append(edge)
    return edge


def test_unlock_until_t_holds_the_door_unlocked_and_relocks_at_t_with_no_server(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    edge = start(edges, device_file, signing_key, clock)
    assert not edge.agent.server_reachable
    until = clock.wall() + 3600
    assert edge.command("unlock", door=DOOR, until=iso_ms(until)) == ("ok", None)
    assert edge.door.relay_energised
    assert edge.override_state() == {"kind": "unlock", "until": iso_ms(until),
                                     "transaction": edge.of("override_started")[0].transaction}
    started = edge.of("override_started")[0]
    assert started.detail["kind"] == "unlock" and started.detail["until"] == iso_ms(until)

    # Far longer than unlock_s and held_open_s: the door stays unlocked, people pass, no held-open alarm.
    edge.after(600)
    edge.door.open()
    edge.after(120)
    edge.door.close()
    edge.after(3600 - 600 - 120 - 1)
    assert edge.door.relay_energised, "one second before its end the override still holds the door"
    assert not edge.of("held_open") and not edge.of("forced_open")

    edge.after(1)
    assert not edge.door.relay_energised, "at T the edge relocks by itself"
    ended = edge.of("override_ended")
    assert len(ended) == 1 and ended[0].detail["why"] == "expired" and ended[0].detail["kind"] == "unlock"
    assert edge.override_state() is None
    assert not (edge.state_dir / OVERRIDES_FILE).exists() or \
        json.loads((edge.state_dir / OVERRIDES_FILE).read_text())["doors"] == {}

    # Back to normal: an opening now is forced.
    edge.door.open()
    edge.settle()
    assert len(edge.of("forced_open")) == 1


def test_lock_override_beats_the_unlock_schedule_but_rex_still_opens(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    edge = start(edges, device_file, signing_key, clock, DoorMode.UNLOCKED_ON_SCHEDULE)
    assert edge.door.relay_energised, "the schedule holds the dock open"
    until = clock.wall() + 1800
    assert edge.command("lock", door=DOOR, until=iso_ms(until)) == ("ok", None)
    assert not edge.door.relay_energised, "locked at once, although the schedule is open"
    edge.after(60)
    assert not edge.door.relay_energised, "the schedule never reopens it while the lock override runs"

    edge.door.press_rex()  # egress is life safety: REX opens from inside whatever the override
    edge.settle()
    assert edge.door.relay_energised
    edge.after(6)
    assert not edge.door.relay_energised, "after the REX unlock, locked again (not the schedule hold)"

    edge.after(1800 - 66)
    assert edge.door.relay_energised, "at its end the door returns to its normal state: held by its schedule"
    assert [e.detail["why"] for e in edge.of("override_ended")] == ["expired"]


def test_a_lockdown_wins_over_an_unlock_override_and_refuses_a_new_one(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    edge = start(edges, device_file, signing_key, clock)
    assert edge.command("unlock", door=DOOR, until=iso_ms(clock.wall() + 3600)) == ("ok", None)
    assert edge.door.relay_energised
    assert edge.command("lockdown", scope="site", active=True) == ("ok", None)
    assert not edge.door.relay_energised
    assert [e.detail["why"] for e in edge.of("override_ended")] == ["lockdown"]
    assert edge.command("unlock", door=DOOR, until=iso_ms(clock.wall() + 3600)) == ("failed", "lockdown")
    assert not edge.door.relay_energised
    assert edge.command("lockdown", scope="site", active=False) == ("ok", None)
    edge.after(1)
    assert not edge.door.relay_energised, "lifting the lockdown does not bring an ended override back"
    assert edge.override_state() is None


def test_release_and_lock_end_an_unlock_override_early(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    edge = start(edges, device_file, signing_key, clock)
    assert edge.command("unlock", door=DOOR, until=iso_ms(clock.wall() + 3600)) == ("ok", None)
    assert edge.command("release", door=DOOR) == ("ok", None)
    assert not edge.door.relay_energised
    assert edge.command("unlock", door=DOOR, until=iso_ms(clock.wall() + 3600)) == ("ok", None)
    assert edge.command("lock", door=DOOR, until=iso_ms(clock.wall() + 60)) == ("ok", None)
    assert not edge.door.relay_energised and edge.override_state()["kind"] == "lock"
    assert edge.command("lock", door=DOOR) == ("ok", None)  # a plain lock: nothing else changes
    assert [e.detail["why"] for e in edge.of("override_ended")] == ["released", "replaced"]
    assert edge.command("release", door=DOOR) == ("ok", None)
    assert edge.override_state() is None


def test_an_override_whose_time_has_passed_at_the_edge_unlocks_nothing(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    edge = start(edges, device_file, signing_key, clock)
    # Fresh enough to pass the age check (10 s old), but its end is already past on the edge's clock.
    status = edge.command("unlock", issued_at=clock.wall() - 10, door=DOOR, until=iso_ms(clock.wall() - 1))
    assert status == ("failed", "expired")
    assert not any(on for _, on in edge.door.relay_history)
    assert edge.override_state() is None and not edge.of("override_started")


def test_an_override_survives_a_restart_and_still_ends_at_its_time(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    edge = start(edges, device_file, signing_key, clock)
    until = clock.wall() + 900
    assert edge.command("unlock", door=DOOR, until=iso_ms(until)) == ("ok", None)
    edge.stop()
    edges.remove(edge)
    assert not edge.door.relay_energised, "a stopped edge leaves the relay safe"

    edge = start(edges, device_file, signing_key, clock)
    assert edge.door.relay_energised, "the restarted edge holds the door unlocked again"
    assert edge.override_state()["until"] == iso_ms(until)
    edge.after(900)
    assert not edge.door.relay_energised
    assert [e.detail["why"] for e in edge.of("override_ended")] == ["expired"]


def test_an_override_that_ended_while_the_edge_was_down_ends_at_start(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    edge = start(edges, device_file, signing_key, clock)
    assert edge.command("unlock", door=DOOR, until=iso_ms(clock.wall() + 60)) == ("ok", None)
    edge.stop()
    edges.remove(edge)
    clock.advance(120)
    edge = start(edges, device_file, signing_key, clock)
    assert not any(on for _, on in edge.door.relay_history), "never unlocked after the restart"
    assert [e.detail["why"] for e in edge.of("override_ended")] == ["expired"]


def test_a_forged_or_garbled_overrides_file_never_unlocks_a_door(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    state_dir = device_file.parent / "state"
    state_dir.mkdir(exist_ok=True)
    forged = sign_command(site_id="demo", device="pi-dock", action="unlock",
                          args={"door": DOOR, "until": iso_ms(clock.wall() + 3600)},
                          key=Ed25519PrivateKey.generate(), issued_at=clock.wall())
    (state_dir / OVERRIDES_FILE).write_text(json.dumps(
        {"version": 1, "doors": {DOOR: base64.b64encode(forged).decode()}}))
    edge = start(edges, device_file, signing_key, clock)
    assert not any(on for _, on in edge.door.relay_history), "a command not signed by the site's key is dropped"
    assert edge.agent.counters["override_file_errors"] == 1
    edge.stop()
    edges.remove(edge)

    (state_dir / OVERRIDES_FILE).write_bytes(b"\x00not json")
    edge = start(edges, device_file, signing_key, clock)
    assert not any(on for _, on in edge.door.relay_history)
    assert edge.agent.counters["override_file_errors"] == 1


def test_the_override_file_holds_the_signed_command_not_a_bare_time(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:
    clock = FakeClock()
    edge = start(edges, device_file, signing_key, clock)
    assert edge.command("lock", door=DOOR, until=iso_ms(clock.wall() + 60)) == ("ok", None)
    assert edge.agent.sync(5)
    body = json.loads((edge.state_dir / OVERRIDES_FILE).read_text())
    payload = base64.b64decode(body["doors"][DOOR])
    cmd = verify_command(payload, signing_key.public_key(), site_id="demo", device="pi-dock", now=clock.wall())
    assert (cmd.action, cmd.args["door"], cmd.transaction) == ("lock", DOOR, edge.of("override_started")[0].transaction)
