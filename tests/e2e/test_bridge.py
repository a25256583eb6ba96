"""A building broker bridged to the campus broker, two real Mosquittos running what `doorkeep broker config`
generates (the campus's plain, the building's with `--bridge east=127.0.0.1:PORT`), over the site CA.

The building (pi-lobby) is carried by the bridge certificate `bridge-east` (`doorkeep pki issue bridge-east
--role bridge --device pi-lobby`); pi-floor7 is another building's. What is proved: an event of a building
device reaches the server on the campus broker and a decision and a retained availability of the server
reach the device; with the campus broker stopped the device keeps publishing (its broker is up) and every
QoS 1 event arrives, in order, once the campus broker is back; the bridge carries nothing of a device not in
its building, either way; and the bridge's certificate on the campus broker reaches its building's devices
only. Non-delivery is proved with a marker sent afterwards on an allowed path (tests/e2e/test_tls.py).
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest

from simulators.brokers import MosquittoBroker, free_port
from simulators.site import DEMO_SITE, mosquitto_installed
from tests.conftest import wait_until
from tests.e2e.test_tls import cli, context

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not mosquitto_installed(), reason="needs Mosquitto (apt-get install mosquitto)")]

A, B = "pi-lobby", "pi-floor7"  # A is in building east; B is not
BRIDGE = "bridge-east"
BASE = "doorkeep/v1/demo"
#: generous: the bridge's back-off is capped at doorkeep.bridge.RESTART_CAP_S (10 s)
UPLINK_S = 30


class Client:
    """A paho client over mutual TLS that keeps its session (clean_session false), resubscribes nothing
    (the broker keeps the subscriptions) and records every message it receives, in order."""

    def __init__(self, site: Path, name: str, port: int) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.subacks = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=False)
        self.client.tls_set_context(context(site, name, port))
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)  # type: ignore[arg-type]
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        assert wait_until(self.client.is_connected, 10), f"{name} did not connect to port {port}"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def _on_subscribe(self, *args: Any) -> None:
        with self._lock:
            self.subacks += 1

    def subscribe(self, *topics: str) -> None:
        before = self.subacks
        for t in topics:
            self.client.subscribe(t, qos=1)
        assert wait_until(lambda: self.subacks >= before + len(topics), 5), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"no PUBACK for {topic}"

    def payloads(self, prefix: bytes = b"") -> list[bytes]:
        with self._lock:
            return [p for _, p in self.messages if p.startswith(prefix)]

    def got(self, payload: bytes) -> bool:
        return payload in self.payloads()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Brokers:
    """The campus and the building broker, each running its generated configuration; restartable."""

    def __init__(self, site: Path, tmp: Path) -> None:
        self.campus_port, self.building_port = free_port(), free_port()
        for name, port, extra in (("campus", self.campus_port, ()),
                                  ("building", self.building_port, ("--bridge", f"east=127.0.0.1:{self.campus_port}"))):
            (tmp / f"{name}-persist").mkdir()
            cli("broker", "config", "--site", site, "--out", tmp / name, "--port", str(port), "--bind", "127.0.0.1",
                "--persistence", tmp / f"{name}-persist", *extra)
            (tmp / f"{name}-run").mkdir()
        self.tmp = tmp
        self.campus: MosquittoBroker | None = None
        self.building: MosquittoBroker | None = None

    def start_campus(self) -> None:
        self.campus = MosquittoBroker(self.campus_port, self.tmp / "campus-run",
                                      config_text=(self.tmp / "campus" / "mosquitto.conf").read_text()).start()

    def stop_campus(self) -> None:
        assert self.campus is not None
        self.campus.stop()
        self.campus = None

    def start(self) -> Brokers:
        self.start_campus()
        self.building = MosquittoBroker(self.building_port, self.tmp / "building-run",
                                        config_text=(self.tmp / "building" / "mosquitto.conf").read_text()).start()
        return self

    def stop(self) -> None:
        for b in (self.building, self.campus):
            if b is not None:
                b.stop()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site)
    cli("pki", "init", "--site", site)
    for name in (A, B, "server", "broker"):
        cli("pki", "issue", name, "--site", site)
    cli("pki", "issue", BRIDGE, "--role", "bridge", "--device", A, "--site", site)
    return site


@pytest.fixture
def brokers(site: Path, tmp_path: Path) -> Iterator[Brokers]:
    b = Brokers(site, tmp_path).start()
    yield b
    b.stop()


@pytest.fixture
def linked(site: Path, brokers: Brokers) -> Iterator[tuple[Client, Client]]:
    """(server on the campus broker subscribed to the site, pi-lobby on the building broker subscribed to its
    subtree and the server's availability), once the bridge carries messages both ways."""
    server = Client(site, "server", brokers.campus_port)
    device = Client(site, A, brokers.building_port)
    server.subscribe(f"{BASE}/#")
    device.subscribe(f"{BASE}/{A}/#", f"{BASE}/server/availability")
    n = iter(range(1_000_000))
    # The bridge connects on its own schedule: probe until one crosses each way.
    assert wait_until(lambda: (device.publish(f"{BASE}/{A}/state", b"probe-up-%d" % next(n))
                               or bool(server.payloads(b"probe-up-"))), UPLINK_S), "building -> campus never bridged"
    assert wait_until(lambda: (server.publish(f"{BASE}/{A}/cmd", b"probe-down-%d" % next(n))
                               or bool(device.payloads(b"probe-down-"))), UPLINK_S), "campus -> building never bridged"
    yield server, device
    server.close()
    device.close()


def test_event_crosses_up_and_decision_and_server_availability_cross_down(linked: tuple[Client, Client]) -> None:
    server, device = linked
    run = uuid.uuid4().hex[:8].encode()
    device.publish(f"{BASE}/{A}/door/lobby_in/event", b"event-" + run)
    assert wait_until(lambda: server.got(b"event-" + run), 5), server.messages[-5:]
    server.publish(f"{BASE}/{A}/door/lobby_in/decision", b"decision-" + run)
    server.publish(f"{BASE}/server/availability", b"online-" + run, retain=True)
    assert wait_until(lambda: device.got(b"decision-" + run) and device.got(b"online-" + run), 5), device.messages[-5:]


def test_events_published_while_the_uplink_is_down_all_arrive_in_order_when_it_returns(
        brokers: Brokers, linked: tuple[Client, Client]) -> None:
    server, device = linked
    run = uuid.uuid4().hex[:8].encode()
    brokers.stop_campus()
    assert wait_until(lambda: not server.client.is_connected(), 5)
    sent = [b"offline-%s-%03d" % (run, i) for i in range(25)]
    for payload in sent:  # the building's broker acknowledges each: the device's door goes on
        device.publish(f"{BASE}/{A}/door/lobby_in/event", payload)
    brokers.start_campus()
    assert wait_until(lambda: len(server.payloads(b"offline-" + run)) >= len(sent), UPLINK_S), \
        f"{len(server.payloads(b'offline-' + run))} of {len(sent)} arrived"
    assert server.payloads(b"offline-" + run) == sent  # none lost, none duplicated, in order
    # and the way down works again on the same persistent session
    server.publish(f"{BASE}/{A}/door/lobby_in/decision", b"after-" + run)
    assert wait_until(lambda: device.got(b"after-" + run), 5)


def test_the_bridge_carries_nothing_of_a_device_outside_its_building(site: Path, brokers: Brokers,
                                                                     linked: tuple[Client, Client]) -> None:
    server, device = linked
    run = uuid.uuid4().hex[:8].encode()
    other = Client(site, B, brokers.building_port)  # a valid certificate of the site, on the wrong building
    try:
        other.subscribe(f"{BASE}/{B}/#")
        other.publish(f"{BASE}/{B}/door/lab/event", b"b-event-" + run)
        other.publish(f"{BASE}/{B}/availability", b"b-online-" + run, retain=True)
        device.publish(f"{BASE}/{A}/door/lobby_in/event", b"marker-up-" + run)
        assert wait_until(lambda: server.got(b"marker-up-" + run), 5)
        assert not server.got(b"b-event-" + run) and not server.got(b"b-online-" + run)
        server.publish(f"{BASE}/{B}/cmd", b"b-cmd-" + run)
        server.publish(f"{BASE}/{A}/cmd", b"marker-down-" + run)
        assert wait_until(lambda: device.got(b"marker-down-" + run), 5)
        assert not other.got(b"b-cmd-" + run), other.messages
    finally:
        other.close()


def test_the_bridge_certificate_reaches_only_its_buildings_devices_on_the_campus_broker(
        site: Path, brokers: Brokers, linked: tuple[Client, Client]) -> None:
    """A stolen bridge key (or a compromised building broker) speaks for its building's devices only."""
    server, _ = linked
    run = uuid.uuid4().hex[:8].encode()
    forged = [(f"{BASE}/{B}/door/lab/event", b"forged-event-" + run),
              (f"{BASE}/{B}/cmd/result", b"forged-result-" + run),
              (f"{BASE}/server/availability", b"forged-server-" + run),
              (f"{BASE}/{BRIDGE}/state", b"forged-own-" + run),
              (f"{BASE}/server/integration/{BRIDGE}/request", b"forged-request-" + run)]
    assert brokers.building is not None
    brokers.building.stop()  # the real bridge leaves: the thief holds the bridge's client id alone
    brokers.building = None
    thief = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="thief", clean_session=True)
    thief.tls_set_context(context(site, BRIDGE, brokers.campus_port))
    thief.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
    thief.connect_async("127.0.0.1", brokers.campus_port)
    thief.loop_start()
    try:
        for topic, payload in forged:
            # Mosquitto 2.0.11 acknowledges a forbidden QoS 1 publish or closes the connection; paho reconnects
            assert wait_until(thief.is_connected, 5)
            info = thief.publish(topic, payload, qos=1)
            assert wait_until(lambda: info.is_published() or not thief.is_connected(), 5)
        assert wait_until(thief.is_connected, 5)
        info = thief.publish(f"{BASE}/{A}/door/lobby_in/event", b"marker-" + run, qos=1)
        assert wait_until(lambda: server.got(b"marker-" + run), 5)
        assert not [p for p in server.payloads() if p.startswith(b"forged-")], server.messages[-8:]
    finally:
        thief.disconnect()
        thief.loop_stop()
