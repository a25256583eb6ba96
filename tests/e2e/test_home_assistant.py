"""Home Assistant MQTT discovery on a real Mosquitto running exactly what `doorkeep broker config` generates.

A copy of the demo site gets a `[home_assistant]` table; its certificates are issued by the real commands
(`doorkeep pki issue home-assistant --role integration`), the broker runs the generated mosquitto.conf and ACL
(tests/e2e/test_tls.py's Broker), and the whole site runs on simulators over mutual TLS. A paho client presenting
the integration's certificate plays Home Assistant: it connects with HA's last will and birth on
`homeassistant/status`, subscribes to what HA subscribes to, keeps every retained message, and renders each
entity's templates with Jinja's immutable sandbox (what Home Assistant renders them with) against the payloads
of the topics its config names. What a person would see in Home Assistant is therefore what the test asserts:
the lock unlocked by a badge, jammed by a forced door, the door contact, the alarm count, the entities
unavailable once their edge stops; with unlock, an UNLOCK pressed in Home Assistant energises the relay and is
in the audit log; without it, the broker drops the command and nothing happens.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from doorkeep.config import load_site_dir
from server.home_assistant import ACTOR
from simulators.site import DEMO_SITE, SiteRunner, mosquitto_installed
from tests.conftest import wait_until
from tests.e2e.test_tls import Broker, cli, context

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not mosquitto_installed(), reason="needs Mosquitto (apt-get install mosquitto)")]

HA = "home-assistant"
ALICE = "0F00A1B2C3"
PREFIX = "homeassistant"
JINJA = ImmutableSandboxedEnvironment()


def render(template: str, payload: bytes) -> str:
    text = payload.decode()
    try:
        value_json: Any = json.loads(text)
    except ValueError:
        value_json = None
    return JINJA.from_string(template).render(value=text, value_json=value_json).strip()


class HomeAssistantPeer:
    """What Home Assistant's MQTT integration does on the wire, under the integration's certificate."""

    def __init__(self, port: int, site: Path) -> None:
        self.retained: dict[str, bytes] = {}  # the latest payload of every topic, as HA's subscriptions keep it
        self.retain_flags: dict[str, bool] = {}
        self.messages: list[tuple[str, bytes]] = []  # everything received, in order
        self.connected = threading.Event()
        self.connects = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ha-{uuid.uuid4().hex[:6]}")
        self.client.tls_set_context(context(site, HA, port))
        self.client.will_set(f"{PREFIX}/status", "offline", qos=1, retain=False)  # HA's last will
        self.client.reconnect_delay_set(min_delay=0.02, max_delay=0.05)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10), "Home Assistant's certificate was refused"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe(f"{PREFIX}/#", qos=1)  # discovery (HA: +/+/config, +/+/+/config) and the alarm summary
        client.subscribe("doorkeep/v1/demo/+/state", qos=1)  # the state topics the configs name
        client.subscribe("doorkeep/v1/demo/+/availability", qos=1)
        client.publish(f"{PREFIX}/status", "online", qos=1)  # HA's birth
        self.connects += 1
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.retained[msg.topic] = bytes(msg.payload)
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.retain_flags.setdefault(msg.topic, bool(msg.retain))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # -- what Home Assistant shows

    def configs(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {t: json.loads(p) for t, p in self.retained.items() if t.endswith("/config") and p}

    def config(self, component: str, object_id: str) -> dict[str, Any] | None:
        return self.configs().get(f"{PREFIX}/{component}/demo/{object_id}/config")

    def state(self, config: dict[str, Any]) -> str | None:
        """The entity's state as HA renders it from the latest payload of its ``state_topic``."""
        with self._lock:
            payload = self.retained.get(config["state_topic"])
        if payload is None:
            return None
        template = config.get("value_template")
        return render(template, payload) if template else payload.decode()

    def available(self, config: dict[str, Any]) -> bool:
        for entry in config.get("availability", []):
            with self._lock:
                payload = self.retained.get(entry["topic"])
            if payload is None or render(entry["value_template"], payload) != entry["payload_available"]:
                return False
        return True

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.connected.wait(10)
        info = self.client.publish(topic, payload, qos=1)
        # Mosquitto acknowledges a forbidden QoS 1 publish (or closes the connection): handled either way.
        assert wait_until(lambda: info.is_published() or not self.client.is_connected(), 5)


def make_site(tmp_path: Path, table: str) -> Path:
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site)
    with (site / "site.toml").open("a") as f:
        f.write(f"\n[home_assistant]\n{table}\n")
    cli("pki", "init", "--site", site)
    for name in ("pi-lobby", "pi-floor7", "server", "broker"):
        cli("pki", "issue", name, "--site", site)
    cli("pki", "issue", HA, "--role", "integration", "--site", site)
    return site


class Running:
    def __init__(self, tmp_path: Path, table: str) -> None:
        self.site = make_site(tmp_path, table)
        self.broker = Broker(self.site, tmp_path).start()
        self.runner = SiteRunner(load_site_dir(self.site), broker_url=self.broker.url, data_dir=tmp_path / "data",
                                 pki=self.site / "pki")
        self.runner.start()
        assert self.runner.wait_connected(10), "edges and server did not connect to the generated broker"
        assert self.runner.wait_policies(10)
        assert self.runner.server is not None and self.runner.server.home_assistant is not None
        self.ha = HomeAssistantPeer(self.broker.port, self.site)

    def stop(self) -> None:
        self.ha.close()
        self.runner.stop()
        self.broker.stop()


@pytest.fixture
def unlockable(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path, 'unlock = true\nunlock_doors = ["lobby_in"]')
    yield r
    r.stop()


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Running]:
    r = Running(tmp_path, "")
    yield r
    r.stop()


def no_personal_data(r: Running) -> None:
    bundle = r.runner.bundle
    with r.ha._lock:
        text = b"\n".join(p for t, p in r.ha.retained.items() if t.startswith(PREFIX)).decode().lower()
    words = [*(p.id for p in bundle.people.values()), *(p.name for p in bundle.people.values()),
             *(c.number for c in [*bundle.cards, *bundle.visitor_pool] if c.number)]
    found = [w for w in words if re.search(rf"(?<![a-z0-9]){re.escape(w.lower())}(?![a-z0-9])", text)]
    assert not found, f"personal data under {PREFIX}/: {found}"


def test_home_assistant_sees_badges_forced_doors_alarms_and_edges_and_unlocks_through_the_server(
        unlockable: Running) -> None:
    r, ha = unlockable, unlockable.ha
    server = r.runner.server
    assert server is not None
    wanted = server.home_assistant.wanted()  # type: ignore[union-attr]
    assert wait_until(lambda: set(wanted) <= set(ha.configs()), 10), sorted(set(wanted) - set(ha.configs()))
    assert all(ha.retain_flags[t] for t in wanted), "discovery configs must be retained"
    lock = ha.config("lock", "door_lobby_in_lock")
    contact = ha.config("binary_sensor", "door_lobby_in_contact")
    alarms = ha.config("sensor", "door_lobby_in_alarms")
    site_alarms = ha.config("sensor", "site_alarms")
    assert lock and contact and alarms and site_alarms
    assert ha.config("lock", "door_lobby_out_lock") is None, "lobby_out is not in unlock_doors"
    exit_lock = ha.config("binary_sensor", "door_lobby_out_lock")
    assert exit_lock is not None and "command_topic" not in exit_lock
    assert wait_until(lambda: ha.state(lock) == "LOCKED" and ha.state(contact) == "OFF", 10)
    assert ha.available(lock) and ha.available(site_alarms)
    assert wait_until(lambda: ha.state(alarms) == "0", 10)

    # A badge: the lock shows unlocked while the relay is energised, the contact follows the door.
    door = r.runner.doors["lobby_in"]
    door.reader.badge(ALICE)
    assert door.door.wait_relay(True, 5)
    assert wait_until(lambda: ha.state(lock) == "UNLOCKED", 5), ha.state(lock)
    door.door.open()
    assert wait_until(lambda: ha.state(contact) == "ON", 5)
    door.door.close()
    assert door.door.wait_relay(False, 5)
    assert wait_until(lambda: ha.state(lock) == "LOCKED" and ha.state(contact) == "OFF", 5)

    # A forced door: jammed (the door's alarm) while it stands open, and an open alarm counted, at the door and
    # for the site, at the highest priority.
    door.door.open()
    assert wait_until(lambda: ha.state(lock) == "JAMMED" and ha.state(contact) == "ON", 5), ha.state(lock)
    assert wait_until(lambda: ha.state(alarms) == "1", 10), ha.state(alarms)
    assert int(ha.state(site_alarms) or 0) >= 1
    summary = json.loads(ha.retained[site_alarms["state_topic"]])
    assert summary["doors"]["lobby_in"]["highest"] == "high" and "forced_open" in summary["doors"]["lobby_in"]["types"]
    door.door.close()
    assert wait_until(lambda: ha.state(lock) == "LOCKED", 5)

    # UNLOCK pressed in Home Assistant: the server checks, audits and signs it; the edge energises the relay.
    before = len(door.door.relay_history)
    ha.publish(lock["command_topic"], b"UNLOCK")
    assert door.door.wait_relay(True, 5), "an UNLOCK from Home Assistant did not release the lock"
    assert len(door.door.relay_history) > before
    assert wait_until(lambda: ha.state(lock) == "UNLOCKED", 5)
    assert server.audit is not None
    assert wait_until(lambda: any(rec["actor"] == ACTOR and rec["action"] == "door.unlock"
                                  and rec["details"]["args"] == {"door": "lobby_in"}
                                  for rec in server.audit.records(50)), 5)
    # A door Home Assistant may not unlock: the ACL lets the topic through, the server refuses and audits it.
    exit_door = r.runner.doors["lobby_out"]
    ha.publish(f"{PREFIX}/lock/demo/lobby_out/set", b"UNLOCK")
    assert wait_until(lambda: any(rec["action"] == "home_assistant.command_refused" and rec["target"] == "door:lobby_out"
                                  for rec in server.audit.records(50)), 5)
    assert not exit_door.door.relay_energised and not any(on for _, on in exit_door.door.relay_history)

    # An edge stops: its doors' entities become unavailable, its connection sensor goes off; the other's stay.
    lab_lock = ha.config("binary_sensor", "door_lab_lock")
    connection = ha.config("binary_sensor", "edge_pi-floor7_connection")
    assert lab_lock and connection
    assert ha.available(lab_lock) and ha.state(connection) == "ON"
    r.runner.agents["pi-floor7"].stop()
    assert wait_until(lambda: not ha.available(lab_lock) and ha.state(connection) == "OFF", 10)
    assert ha.available(lock)
    no_personal_data(r)


def test_read_only_home_assistant_gets_no_command_topic_and_the_broker_drops_an_unlock(read_only: Running) -> None:
    r, ha = read_only, read_only.ha
    server = r.runner.server
    assert server is not None and server.home_assistant is not None
    assert wait_until(lambda: set(server.home_assistant.wanted()) <= set(ha.configs()), 10)  # type: ignore[union-attr]
    configs = ha.configs()
    assert not any("command_topic" in c for c in configs.values())
    assert not any(f"{PREFIX}/lock/" in t for t in configs)
    lock = ha.config("binary_sensor", "door_lobby_in_lock")
    assert lock is not None and wait_until(lambda: ha.state(lock) == "OFF", 10)

    door = r.runner.doors["lobby_in"]
    statuses = server.home_assistant.counters["ha_status"]
    seen = len(ha.messages)
    command = f"{PREFIX}/lock/demo/lobby_in/set"
    ha.publish(command, b"UNLOCK")  # not in the ACL: acknowledged and dropped
    ha.publish(f"{PREFIX}/status", b"online")  # allowed, and routed after the UNLOCK: a marker
    # The server and Home Assistant itself (subscribed to the whole prefix) both get the marker; had the broker
    # let the UNLOCK through, HA's own subscription would have been handed it first.
    assert wait_until(lambda: server.home_assistant.counters["ha_status"] > statuses  # type: ignore[union-attr]
                      and (f"{PREFIX}/status", b"online") in ha.messages[seen:], 10)
    assert (command, b"UNLOCK") not in ha.messages, "the broker let a read-only Home Assistant publish a command"
    assert not door.door.relay_history, "a read-only Home Assistant released a lock"
    assert not any(k.startswith("commands") for k in server.home_assistant.counters), server.home_assistant.counters
    assert server.audit is not None
    assert not any(rec["action"] == "door.unlock" for rec in server.audit.records(100))
    no_personal_data(r)
