"""A Pi with its device file alone (no site.toml) on the real broker: it takes its doors' settings from the
server's signed policy and opens for alice (issue 13: device files keep only what belongs to the hardware)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from gpiozero.pins.mock import MockFactory

from doorkeep.config import load_device
from doorkeep.contract import EventMsg
from edge.agent import EdgeAgent
from simulators.door import DoorSimulator
from simulators.reader import ReaderSimulator
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"


@pytest.fixture
def runner(mosquitto, tmp_path: Path) -> Iterator[SiteRunner]:
    """The demo site's server (and its floor-7 edge) on the session's Mosquitto; the lobby Pi is ours."""
    runner = SiteRunner.from_dir(DEMO_SITE, broker_url=mosquitto.url, data_dir=tmp_path / "data")
    runner.start()
    runner.agents.pop("pi-lobby").stop()  # its certificate (and client id) are for the Pi started below
    yield runner
    runner.stop()


def device_file(pi: Path, runner: SiteRunner) -> Path:
    """What an installer copies to the Pi: the hardware, the broker and its TLS files, the policy key. No site."""
    tls = runner.broker_config("pi-lobby")
    pub = runner.signing_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    pi.mkdir()
    (pi / "policy-signing.pub").write_bytes(pub)
    (pi / "policy-signing.pub").chmod(0o644)
    (pi / "pi-lobby.toml").write_text(f"""\
device = "pi-lobby"
site = "demo"
gpio_factory = "mock"
policy_key_file = "policy-signing.pub"
state_dir = "state"

[broker]
url = "{tls.url}"
ca_file = "{tls.ca_file}"
cert_file = "{tls.cert_file}"
key_file = "{tls.key_file}"

[doors.lobby_in]
reader = {{ url = "loop://", protocol = "em4100" }}
lock = {{ pin = 17 }}
contact = {{ pin = 27 }}

[doors.lobby_out]
reader = {{ url = "loop://", protocol = "em4100" }}
lock = {{ pin = 5 }}
""")
    return pi / "pi-lobby.toml"


def test_an_edge_started_from_its_device_file_alone_receives_its_policy_and_opens_for_alice(
        runner: SiteRunner, tmp_path: Path) -> None:
    dev, site = load_device(device_file(tmp_path / "etc-doorkeep", runner))
    assert site is None and dev.site_file is None
    factory = MockFactory()
    readers = {d: ReaderSimulator("em4100") for d in dev.doors}
    lobby = DoorSimulator(factory, relay_pin=17, contact_pin=27)
    DoorSimulator(factory, relay_pin=5)
    doors = {d: dataclasses.replace(hw, reader=dataclasses.replace(hw.reader, url=readers[d].path))
             for d, hw in dev.doors.items()}
    agent = EdgeAgent(dataclasses.replace(dev, doors=doors), None, runner.key, pin_factory=factory,
                      policy_key=runner.signing_key.public_key(), state_dir=dev.state_dir)
    events: list[EventMsg] = []
    agent.listeners.append(events.append)
    agent.start()
    try:
        assert agent.link.wait_connected(10), "the Pi did not reach Mosquitto with its own certificate"
        assert runner.server is not None
        published = runner.server.bus.publisher.published["pi-lobby"]
        assert wait_until(lambda: (agent.policy.version or 0) >= published, 10), "no signed policy arrived"
        held = json.loads(agent._state_payload())["policy"]
        assert held == {"status": "held", "version": agent.policy.version}
        # The control loop applies the policy's times right after the cache took it.
        assert wait_until(lambda: agent.doors["lobby_in"].machine.timings.held_open_s == 20.0, 5), \
            "the site's held-open time did not come with the policy"

        readers["lobby_in"].badge(ALICE)
        assert lobby.wait_relay(True, 5), "alice's badge did not open the lobby door"
        assert wait_until(lambda: any(e.type == "access" for e in events), 5)
        ev = next(e for e in events if e.type == "access")
        assert (ev.decision, ev.reason, ev.decided_by, ev.person) == ("granted", "granted", "server", "alice")
        assert wait_until(lambda: any(e["id"] == ev.id for e in runner.server.store.events(20, door="lobby_in")), 5)
    finally:
        agent.stop()
        for reader in readers.values():
            reader.close()
