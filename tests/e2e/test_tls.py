"""Mutual TLS and the per-device ACL, against a real Mosquitto running exactly the generated configuration.

The site CA, the certificates and the broker files are made by the real
commands (``doorkeep pki …``, ``doorkeep broker config``) in a copy of the
demo site; only the port is chosen free. Under MQTT 3.1.1 a publish the ACL
forbids is acknowledged and silently dropped, so non-delivery is proved with
a marker: a permitted message sent after the forbidden one, on the same
path. Once the marker has arrived, the forbidden message would have too.
"""

from __future__ import annotations

import shutil
import ssl
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest

from doorkeep.cli import main
from doorkeep.config import BrokerConfig
from doorkeep.pki import client_tls_context, init_ca, issue, pki_dir
from simulators.brokers import OBSERVER, MosquittoBroker, free_port
from simulators.site import DEMO_SITE, SiteRunner, mosquitto_installed
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not mosquitto_installed(), reason="needs Mosquitto (apt-get install mosquitto)")]

A, B = "pi-lobby", "pi-floor7"
BASE = "doorkeep/v1/demo"
ALICE = "0F00A1B2C3"


def cli(*args: str | Path) -> None:
    assert main([str(a) for a in args]) == 0, f"doorkeep {' '.join(map(str, args))} failed"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A copy of the demo site with its CA and a certificate for both devices, the server and the broker."""
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site)
    cli("pki", "init", "--site", site)
    for name in (A, B, "server", "broker"):
        cli("pki", "issue", name, "--site", site)
    return site


class Broker:
    """The generated configuration run by a real Mosquitto; restartable on the same port and files."""

    def __init__(self, site: Path, workdir: Path) -> None:
        self.port = free_port()
        out = workdir / "broker"
        cli("broker", "config", "--site", site, "--out", out, "--port", str(self.port), "--bind", "127.0.0.1",
            "--persistence", workdir / "persist")
        (workdir / "persist").mkdir()
        self.text = (out / "mosquitto.conf").read_text()
        self.workdir = workdir / "mosq"
        self.workdir.mkdir()
        self.mosquitto: MosquittoBroker | None = None

    def start(self) -> Broker:
        self.mosquitto = MosquittoBroker(self.port, self.workdir, config_text=self.text).start()
        return self

    def stop(self) -> None:
        if self.mosquitto is not None:
            self.mosquitto.stop()
            self.mosquitto = None

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"


@pytest.fixture
def broker(site: Path, tmp_path: Path) -> Iterator[Broker]:
    b = Broker(site, tmp_path).start()
    yield b
    b.stop()


def context(site: Path, name: str, port: int) -> ssl.SSLContext:
    """The TLS context the edge and server build for ``name`` (doorkeep.pki.client_tls_context)."""
    pki = pki_dir(site)
    ctx = client_tls_context(BrokerConfig(f"mqtts://127.0.0.1:{port}", ca_file=pki / "ca.crt",
                                          cert_file=pki / f"{name}.crt", key_file=pki / f"{name}.key"))
    assert ctx is not None
    return ctx


class Peer:
    """A bare paho client that records its connection result and every message it receives."""

    def __init__(self, port: int, ctx: ssl.SSLContext, name: str) -> None:
        self.result: str | None = None
        self.done = threading.Event()
        self.messages: list[tuple[str, bytes]] = []
        self.suback: list[list[Any]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
        self.client.tls_set_context(ctx)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = lambda *a: self._finish("connect failed")
        self.client.on_disconnect = lambda c, u, f, reason, p: self._finish(f"disconnected: {reason}")
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.suback.append(list(codes))
        self.client.on_message = self._on_message
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _finish(self, result: str) -> None:
        if self.result is None:
            self.result = result
        self.done.set()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._finish(f"refused: {reason}" if reason.is_failure else "connected")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def outcome(self, timeout: float = 10.0) -> str | None:
        """"connected", or why not; waits for the broker's answer rather than trusting connect()."""
        self.done.wait(timeout)
        return self.result

    def subscribe(self, *topics: str) -> None:
        before = len(self.suback)
        for t in topics:
            self.client.subscribe(t, qos=1)
        assert wait_until(lambda: len(self.suback) >= before + len(topics), 5), "no SUBACK"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"no PUBACK for {topic}"

    def got(self, payload: bytes) -> bool:
        with self._lock:
            return any(p == payload for _, p in self.messages)

    def topics(self) -> list[str]:
        with self._lock:
            return [t for t, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers(site: Path, broker: Broker) -> Iterator[dict[str, Peer]]:
    out: dict[str, Peer] = {}
    for name in ("server", A, B):
        out[name] = Peer(broker.port, context(site, name, broker.port), name)
        assert out[name].outcome() == "connected", f"{name}: {out[name].result}"
    out["server"].subscribe(f"{BASE}/#")
    yield out
    for p in out.values():
        p.close()


def refused(peer: Peer) -> bool:
    result = peer.outcome()
    peer.close()
    return result is not None and result != "connected"


def test_device_round_trip_within_its_own_subtree(peers: dict[str, Peer]) -> None:
    server, a = peers["server"], peers[A]
    a.subscribe(f"{BASE}/{A}/#", f"{BASE}/server/availability")
    assert all(code.is_failure is False for codes in a.suback for code in codes)
    server.publish(f"{BASE}/server/availability", b"online", retain=True)
    server.publish(f"{BASE}/{A}/door/lobby_in/decision", b"decision-1")
    assert wait_until(lambda: a.got(b"decision-1") and a.got(b"online"), 5), a.messages
    a.publish(f"{BASE}/{A}/door/lobby_in/request", b"request-1")
    assert wait_until(lambda: server.got(b"request-1"), 5)


def test_device_cannot_publish_under_another_devices_subtree(site: Path, broker: Broker,
                                                            peers: dict[str, Peer]) -> None:
    server = peers["server"]
    forged = [(f"{BASE}/{B}/door/lab/request", b"forged-request", False),
              (f"{BASE}/{B}/availability", b"forged-offline", True),
              (f"{BASE}/server/availability", b"forged-server", True),  # a device may only read this one
              (f"{BASE}/{B}/cmd/result", b"forged-result", False)]
    for topic, payload, retain in forged:
        # Mosquitto 2.0.11 acknowledges a forbidden QoS 1 publish and then closes the connection (measured);
        # either way the broker has handled the packet once the PUBACK or the disconnect is seen.
        a = Peer(broker.port, context(site, A, broker.port), A)
        assert a.outcome() == "connected"
        info = a.client.publish(topic, payload, qos=1, retain=retain)
        assert wait_until(lambda: info.is_published() or not a.client.is_connected(), 5)
        a.close()
    a = Peer(broker.port, context(site, A, broker.port), A)
    assert a.outcome() == "connected"
    a.publish(f"{BASE}/{A}/door/lobby_in/event", b"marker")
    a.close()
    assert wait_until(lambda: server.got(b"marker"), 5)
    assert not any(server.got(payload) for _, payload, _ in forged), server.messages
    assert all(t.startswith(f"{BASE}/{A}/") for t in server.topics()), server.topics()


def test_device_subscribing_to_another_subtree_receives_nothing_of_it(peers: dict[str, Peer]) -> None:
    server, a, b = peers["server"], peers[A], peers[B]
    b.publish(f"{BASE}/{B}/state", b"b-state-retained", retain=True)
    a.subscribe(f"{BASE}/{B}/#", f"{BASE}/+/state", f"{BASE}/{A}/#")
    b.publish(f"{BASE}/{B}/door/lab/decision", b"b-secret")
    server.publish(f"{BASE}/{B}/policy", b"b-policy")
    server.publish(f"{BASE}/{A}/cmd", b"marker")  # routed after everything above
    assert wait_until(lambda: a.got(b"marker"), 5)
    assert wait_until(lambda: server.got(b"b-secret"), 5), "B's own publish must reach the server"
    assert not any(t.startswith(f"{BASE}/{B}/") for t in a.topics()), a.messages


def test_client_without_a_certificate_is_refused(site: Path, broker: Broker) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki_dir(site) / "ca.crt"))
    assert refused(Peer(broker.port, ctx, "anonymous"))


def test_plain_mqtt_is_not_served(broker: Broker) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain")
    outcome: list[str] = []
    client.on_connect = lambda c, u, f, reason, p: outcome.append("refused" if reason.is_failure else "connected")
    client.on_disconnect = lambda *a: outcome.append("disconnected")
    client.on_connect_fail = lambda *a: outcome.append("failed")
    client.connect_async("127.0.0.1", broker.port)
    client.loop_start()
    try:
        assert wait_until(lambda: outcome, 10)
        assert "connected" not in outcome
    finally:
        client.disconnect()
        client.loop_stop()


def test_certificate_from_another_ca_is_refused(site: Path, broker: Broker, tmp_path: Path) -> None:
    other = tmp_path / "other-pki"
    now = datetime.now(timezone.utc)
    init_ca(other, "demo", now=now)
    issue(other, A, now=now)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki_dir(site) / "ca.crt"))  # trusts the real broker
    ctx.load_cert_chain(str(other / f"{A}.crt"), str(other / f"{A}.key"))
    assert refused(Peer(broker.port, ctx, "impostor"))


def test_broker_certificate_cannot_be_used_as_a_client(site: Path, broker: Broker) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(pki_dir(site) / "ca.crt"))
    ctx.load_cert_chain(str(pki_dir(site) / "broker.crt"), str(pki_dir(site) / "broker.key"))
    assert refused(Peer(broker.port, ctx, "broker-as-client"))


def test_revoked_certificate_is_refused_after_a_broker_restart(site: Path, broker: Broker) -> None:
    a_ctx, b_ctx = context(site, A, broker.port), context(site, B, broker.port)
    first = Peer(broker.port, a_ctx, A)
    assert first.outcome() == "connected"
    first.close()
    cli("pki", "revoke", A, "--site", site)
    broker.stop()
    broker.start()
    assert refused(Peer(broker.port, a_ctx, A))
    still = Peer(broker.port, b_ctx, B)
    assert still.outcome() == "connected", "an unrevoked device must still connect"
    still.close()


def test_badge_is_decided_by_the_server_over_mutual_tls(site: Path, broker: Broker, tmp_path: Path) -> None:
    runner = SiteRunner.from_dir(site, broker_url=broker.url, data_dir=tmp_path / "data", pki=pki_dir(site))
    try:
        runner.start()
        assert runner.wait_connected(15), "edges and server did not connect over mutual TLS"
        door = runner.doors["lobby_in"]
        door.reader.badge(ALICE)
        assert door.door.wait_relay(True, 5.0), "relay was not energised for a granted card"
        assert runner.server is not None
        events = lambda: [e for e in runner.server.store.events(50, door="lobby_in") if e["type"] == "access"]  # noqa: E731
        assert wait_until(events, 5)
        ev = events()[0]
        assert (ev["decision"], ev["reason"], ev["decided_by"], ev["person"]) == ("granted", "granted", "server", "alice")
    finally:
        runner.stop()


# ------------------------------------------------- the session broker (several sites)


def test_campus_acl_lists_each_device_in_its_own_site_and_gives_the_server_every_site() -> None:
    from doorkeep.pki import PkiError, broker_acl

    acl = broker_acl({"demo": ["pi-lobby", "pi-floor7"], "hq": ["pi-entrance"]}).splitlines()
    entrance = acl.index("user pi-entrance")
    assert acl[entrance + 1:entrance + 3] == ["topic readwrite doorkeep/v1/hq/pi-entrance/#",
                                              "topic read doorkeep/v1/hq/server/availability"]
    assert "topic readwrite doorkeep/v1/demo/pi-lobby/#" in acl
    server = acl.index("user server")
    assert acl[server + 1:server + 3] == ["topic readwrite doorkeep/v1/demo/#", "topic readwrite doorkeep/v1/hq/#"]
    # A CN does not name its site: a pattern would let pi-lobby write doorkeep/v1/hq/pi-lobby/# too.
    assert not any(line.startswith("pattern") for line in acl)
    with pytest.raises(PkiError, match="unique across"):
        broker_acl({"demo": ["pi-x"], "hq": ["pi-x"]})
    with pytest.raises(PkiError, match="reserved"):
        broker_acl({"demo": ["server"]})
    assert broker_acl("demo").count("pattern readwrite doorkeep/v1/demo/%u/#") == 1  # one site: unchanged


def test_session_broker_runs_the_generated_tls_config_for_every_site_and_confines_devices(mosquitto: Any) -> None:
    """The suite's own broker (tests/conftest.py) is the generated campus configuration: mutual TLS, and
    a device of one site can write neither another device's subtree nor its own id under another site."""
    assert mosquitto.url.startswith("mqtts://") and mosquitto.pki is not None
    assert "require_certificate true" in mosquitto.config_text and "allow_anonymous false" in mosquitto.config_text

    def peer(name: str) -> Peer:
        ctx = client_tls_context(mosquitto.client_config(name))
        assert ctx is not None
        p = Peer(mosquitto.port, ctx, name)
        assert p.outcome() == "connected", f"{name}: {p.result}"
        return p

    run = uuid.uuid4().hex[:8].encode()
    server = peer(OBSERVER)  # the server's rights under its own identity (as `server` it would drop a running one)
    server.subscribe("doorkeep/v1/demo/#", "doorkeep/v1/hq/#")
    try:
        forged = [("doorkeep/v1/hq/pi-entrance/door/entrance/request", b"cross-site-" + run),
                  ("doorkeep/v1/hq/pi-lobby/door/lobby_in/request", b"own-id-other-site-" + run),
                  ("doorkeep/v1/demo/pi-floor7/door/lab/request", b"other-device-" + run)]
        for topic, payload in forged:
            a = peer("pi-lobby")
            info = a.client.publish(topic, payload, qos=1)
            assert wait_until(lambda a=a, info=info: info.is_published() or not a.client.is_connected(), 5)
            a.close()
        a, h = peer("pi-lobby"), peer("pi-entrance")
        a.publish("doorkeep/v1/demo/pi-lobby/door/lobby_in/event", b"marker-demo-" + run)
        h.publish("doorkeep/v1/hq/pi-entrance/door/entrance/event", b"marker-hq-" + run)
        a.close()
        h.close()
        assert wait_until(lambda: server.got(b"marker-demo-" + run) and server.got(b"marker-hq-" + run), 5)
        assert not any(server.got(payload) for _, payload in forged), server.messages
    finally:
        server.close()
