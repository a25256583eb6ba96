"""Attacks on the broker with one stolen device certificate (issue 12, items 2 and 5; a revoked device still trying).

All against the real Mosquitto running the configuration ``doorkeep broker config`` generates: the
session broker (tests/conftest.py) for the takeover and size attacks, a private one for revocation,
which needs a broker restart to read the new CRL. The thief holds ``pi-annex``'s certificate, a device
of the demo site with its own subtree and no doors.

A takeover is "the victim was dropped": the server or edge noticing it is disconnected, checked
throughout the attack (a dropped client reconnects after 1-10 s, so a 3 s watch catches every drop).
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import paho.mqtt.client as mqtt
import pytest

from doorkeep.config import BrokerConfig
from doorkeep.contract import Topics
from doorkeep.pki import MESSAGE_SIZE_FLOOR, revoke
from server.app import server_client_id
from server.brokerlog import CERTIFICATE_REFUSED, DEFAULT_THRESHOLD, BrokerLogWatcher
from server.store import Store
from simulators.brokers import OBSERVER, MosquittoBroker, mqtt_client
from simulators.site import SiteRunner, mosquitto_installed
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not mosquitto_installed(), reason="needs Mosquitto (apt-get install mosquitto)")]

THIEF = "pi-annex"  # a demo device of the tests (tests/conftest.py TEST_DEVICES): its certificate is stolen
ALICE = "0F00A1B2C3"
WATCH_S = 3.0


class Attacker:
    """A paho client with the thief's certificate asking for ``client_id``; it reconnects by itself when dropped."""

    def __init__(self, mosquitto: Any, client_id: str, *, name: str = THIEF) -> None:
        self.connects = 0
        self.client = mosquitto.client(name, client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._on_connect
        self.client.connect_async("127.0.0.1", mosquitto.port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self.connects += 1
            client.subscribe(f"doorkeep/v1/demo/{THIEF}/#", qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def dropped_within(connected: Callable[[], bool], seconds: float = WATCH_S) -> bool:
    """True as soon as ``connected()`` is False within ``seconds``; False if it held throughout."""
    return wait_until(lambda: not connected(), seconds)


def server_decides(site: SiteRunner) -> bool:
    """A badge at the lobby gets the server's grant (not an offline decision)."""
    assert site.server is not None
    door = site.doors["lobby_in"]
    before = {e["id"] for e in site.server.store.events(100, door="lobby_in")}
    door.reader.badge(ALICE)
    assert door.door.wait_relay(True, 5.0), "the relay was not energised for a granted card"

    def new_access() -> list[dict[str, Any]]:
        assert site.server is not None
        return [e for e in site.server.store.events(100, door="lobby_in") if e["id"] not in before and e["type"] == "access"]

    assert wait_until(new_access, 5), "the badge's event never reached the server"
    return all(e["decided_by"] == "server" for e in new_access())


@pytest.mark.parametrize("claim", ["its_real_client_id", "server"])
def test_attack_device_certificate_connects_with_the_servers_client_id_and_the_server_keeps_deciding(
        site: SiteRunner, mosquitto: Any, claim: str) -> None:
    server = site.server
    assert server is not None and server.bus.connected
    # The worst case: the thief learned the server's real (secret) id; or asks for its certificate name.
    assert site.data_dir is not None
    client_id = server_client_id(site.key, "demo", site.data_dir / "server") if claim != "server" else "server"
    thief = Attacker(mosquitto, client_id)
    try:
        assert wait_until(lambda: thief.connects >= 1, 5), "the thief's certificate must still connect as itself"
        assert not dropped_within(lambda: server.bus.connected), "the server's session was taken over"
        assert thief.connects == 1, "the thief was dropped and reconnected: a fight over one client id"
        assert server_decides(site)
        assert server.bus.connected
    finally:
        thief.close()


@pytest.mark.parametrize("claim", ["its_real_client_id", "pi-lobby"])
def test_attack_device_certificate_connects_with_another_edges_client_id_and_the_edge_keeps_its_session(
        site: SiteRunner, mosquitto: Any, claim: str) -> None:
    link = site.agents["pi-lobby"].link
    assert link.connected and site.server is not None
    assert wait_until(lambda: site.server is not None and site.server.bus.availability.get("pi-lobby") == "online", 5)
    # The edge's id is 128 random bits; the worst case is that it leaked (read here from the paho client).
    client_id = link._client._client_id.decode() if claim != "pi-lobby" else "pi-lobby"
    thief = Attacker(mosquitto, client_id)
    try:
        assert wait_until(lambda: thief.connects >= 1, 5)
        assert not dropped_within(lambda: link.connected), "pi-lobby's session was taken over"
        assert server_decides(site), "pi-lobby must still get the server's decisions"
        assert site.server.bus.availability.get("pi-lobby") == "online"
        assert site.server.supervisor.devices()["pi-lobby"].status == "online"
    finally:
        thief.close()


def test_attack_device_publishes_an_oversize_snapshot_and_it_never_reaches_the_server(
        site: SiteRunner, mosquitto: Any) -> None:
    topics = Topics("demo")
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with lock:
            seen.append((msg.topic, len(msg.payload)))

    watcher = mosquitto.client(OBSERVER)  # subscribes where the server does, as itself
    subscribed = threading.Event()
    watcher.on_message = on_message
    watcher.on_subscribe = lambda *a: subscribed.set()
    watcher.on_connect = lambda c, *a: c.subscribe(topics.all_snapshots(), qos=1)
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.loop_start()
    thief = mosquitto.client(THIEF)
    connected = threading.Event()
    thief.on_connect = lambda *a: connected.set()
    thief.connect("127.0.0.1", mosquitto.port)
    thief.loop_start()
    try:
        assert subscribed.wait(5) and connected.wait(5)
        big = thief.publish(topics.snapshot(THIEF, "gate", "oversize-1"), b"\xff" * (MESSAGE_SIZE_FLOOR + 1), qos=1)
        # Dropped, yet acknowledged: a device's outbox never sticks on its own oversize message.
        # (Mosquitto 2.0.11 then closes the connection, a quirk of its PUBACK to v3.1.1; paho reconnects.)
        assert wait_until(big.is_published, 20), "the broker must acknowledge (and drop) the oversize publish"
        thief.publish(topics.snapshot(THIEF, "gate", "marker-1"), b"\xff" * 1000, qos=1)
        # Published after the big one by the same client: once it arrived, the big one would have too.
        assert wait_until(lambda: any(t.endswith("/marker-1") for t, _ in seen), 15), seen
        assert not any(t.endswith("/oversize-1") for t, _ in seen), "an oversize snapshot was routed to the server"
    finally:
        thief.disconnect()
        thief.loop_stop()
        watcher.disconnect()
        watcher.loop_stop()
    # A normal snapshot, sealed by the edge, still goes through and is stored with its event.
    assert site.server is not None
    site.doors["lobby_in"].reader.badge(ALICE)
    assert wait_until(lambda: site.server is not None and any(
        e["snapshot_path"] for e in site.server.store.events(20, door="lobby_in") if e["type"] == "access"), 10)


# ------------------------------------------------------ a revoked device still trying


@pytest.fixture
def revoked_broker(tmp_path: Path) -> Iterator[tuple[MosquittoBroker, BrokerConfig]]:
    """A broker of site ``t`` after ``d2``'s certificate was revoked and the broker restarted (CRL re-read);
    with the configuration for the revoked pair ``d2`` still holds."""
    work = tmp_path / "broker"
    first = MosquittoBroker(workdir=work, tls_sites=["t"], clients=["d1", "d2"]).start()
    port = first.port
    assert first.pki is not None
    serial = revoke(first.pki, "d2", now=datetime.now(timezone.utc))
    first.stop()
    broker = MosquittoBroker(port, workdir=work, tls_sites=["t"], clients=["d1"]).start()
    assert broker.pki is not None
    old = broker.pki / "revoked"
    stolen = BrokerConfig(broker.url, ca_file=broker.pki / "ca.crt", cert_file=old / f"d2-{serial:x}.crt",
                          key_file=old / f"d2-{serial:x}.key")
    yield broker, stolen
    broker.stop()


def attempt(broker: MosquittoBroker, config: BrokerConfig) -> str:
    """One connection attempt; "connected" or why not (a refused handshake surfaces as a disconnect)."""
    outcome: list[str] = []
    client = mqtt_client(config, "whoever")
    client.on_connect = lambda c, u, f, reason, p: outcome.append("refused" if reason.is_failure else "connected")
    client.on_disconnect = lambda *a: outcome.append("disconnected")
    client.on_connect_fail = lambda *a: outcome.append("failed")
    client.connect_async("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert wait_until(lambda: outcome, 10), "no answer from the broker"
        return outcome[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_attack_revoked_device_keeps_trying_and_raises_one_certificate_refused_alarm(
        revoked_broker: tuple[MosquittoBroker, BrokerConfig], tmp_path: Path) -> None:
    broker, stolen = revoked_broker
    store = Store(tmp_path / "store")
    watcher = BrokerLogWatcher(broker.log_file, store, poll_s=0.05)
    watcher.start()
    try:
        assert attempt(broker, broker.client_config("d1")) == "connected"  # an honest device is not counted
        for _ in range(DEFAULT_THRESHOLD - 1):
            assert attempt(broker, stolen) != "connected"
        assert wait_until(lambda: watcher.counters["refusals"] >= DEFAULT_THRESHOLD - 1, 5)
        assert store.open_alarms(type=CERTIFICATE_REFUSED) == [], "fewer refusals than the threshold raise nothing"
        assert attempt(broker, stolen) != "connected"
        assert wait_until(lambda: store.open_alarms(type=CERTIFICATE_REFUSED), 5), watcher.counters
        for _ in range(2):  # it goes on trying: still one alarm, not one per attempt
            assert attempt(broker, stolen) != "connected"
        assert wait_until(lambda: watcher.counters["refusals"] >= DEFAULT_THRESHOLD + 2, 5)
        alarms = store.open_alarms(type=CERTIFICATE_REFUSED)
        assert len(alarms) == 1 and alarms[0]["occurrences"] == 1 and alarms[0]["severity"] == "alarm"
        assert alarms[0]["detail"]["address"] == "127.0.0.1"
        assert alarms[0]["detail"]["refusals"] >= DEFAULT_THRESHOLD
        assert watcher.counters["alarms"] == 1
    finally:
        watcher.stop()
        store.close()
