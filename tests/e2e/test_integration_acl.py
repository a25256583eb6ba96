"""Integrations against a real Mosquitto running exactly what `doorkeep broker config` generates.

The certificates are issued by the real commands (`doorkeep pki issue home-assistant --role integration`,
`doorkeep pki issue soc --role integration --read-only`) in a copy of the demo site, and the broker runs the
generated mosquitto.conf and acl (tests/e2e/test_tls.py's Broker). What is proved: an integration receives
every device's events, retained state and availability; it never receives a command, decision, policy,
request or snapshot, even subscribed to `#`; whatever it publishes under a device, the server or its own CN's
subtree is dropped (a device subscriber and a whole-site observer never see it); only a non-read-only
integration reaches its request topic of the server's integration API. Under MQTT 3.1.1 a forbidden publish
is acknowledged (or the connection closed) and dropped, so non-delivery is proved with a marker sent
afterwards on an allowed path: once the marker has arrived, the forbidden message would have too.
"""

from __future__ import annotations

import shutil
import ssl
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from doorkeep.pki import integration_topic
from simulators.site import DEMO_SITE, mosquitto_installed
from tests.conftest import wait_until
from tests.e2e.test_tls import Broker, Peer, cli, context

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not mosquitto_installed(), reason="needs Mosquitto (apt-get install mosquitto)")]

A, B = "pi-lobby", "pi-floor7"
HA, SOC = "home-assistant", "soc"
BASE = "doorkeep/v1/demo"


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site)
    cli("pki", "init", "--site", site)
    for name in (A, B, "server", "broker"):
        cli("pki", "issue", name, "--site", site)
    cli("pki", "issue", HA, "--role", "integration", "--site", site)
    cli("pki", "issue", SOC, "--role", "integration", "--read-only", "--site", site)
    return site


@pytest.fixture
def broker(site: Path, tmp_path: Path) -> Iterator[Broker]:
    b = Broker(site, tmp_path).start()
    assert f"user {HA}" in (tmp_path / "broker" / "acl").read_text(), "broker config did not list the integration"
    yield b
    b.stop()


class Peers:
    """Connected peers by identity (one connection per certificate: the broker binds the client id to the CN)."""

    def __init__(self, port: int, context_for: Callable[[str], ssl.SSLContext]) -> None:
        """``context_for(name)``: the TLS context presenting ``name``'s certificate (tests/e2e/test_worker_acl.py
        takes them from a MosquittoBroker)."""
        self.port, self.context_for = port, context_for
        self.open: dict[str, Peer] = {}

    def __getitem__(self, name: str) -> Peer:
        if name not in self.open:
            peer = Peer(self.port, self.context_for(name), name)
            # After the broker closes a connection (a forbidden publish), paho waits a whole second before
            # reconnecting and loop_stop() waits for that: a short delay keeps each attempt fast.
            peer.client.reconnect_delay_set(min_delay=0.02, max_delay=0.02)  # type: ignore[arg-type]
            assert peer.outcome() == "connected", f"{name}: {peer.result}"
            self.open[name] = peer
        return self.open[name]

    def drop(self, name: str) -> None:
        self.open.pop(name).close()

    def close(self) -> None:
        for p in self.open.values():
            p.close()


@pytest.fixture
def peers(site: Path, broker: Broker) -> Iterator[Peers]:
    p = Peers(broker.port, lambda name: context(site, name, broker.port))
    yield p
    p.close()


def test_integration_receives_events_state_and_availability_but_no_command_decision_policy_or_request(
        peers: Peers) -> None:
    run = uuid.uuid4().hex[:8].encode()
    server, a, b = peers["server"], peers[A], peers[B]
    a.publish(f"{BASE}/{A}/state", b"state-a-" + run, retain=True)  # retained before the integration subscribes
    server.publish(f"{BASE}/server/availability", b"online", retain=True)
    ha = peers[HA]
    ha.subscribe("#")  # what a careless integration asks for: the broker hands it only what the ACL lets it read
    assert all(not code.is_failure for codes in ha.suback for code in codes)
    assert wait_until(lambda: ha.got(b"state-a-" + run) and ha.got(b"online"), 5), ha.messages
    forbidden = [(server, f"{BASE}/{A}/cmd", b"cmd-" + run), (server, f"{BASE}/{A}/policy", b"policy-" + run),
                 (server, f"{BASE}/{A}/door/lobby_in/decision", b"decision-" + run),
                 (a, f"{BASE}/{A}/door/lobby_in/request", b"request-" + run),
                 (a, f"{BASE}/{A}/cmd/result", b"result-" + run),
                 (a, f"{BASE}/{A}/door/lobby_in/snapshot/ev-{run.decode()}", b"snapshot-" + run),
                 (server, integration_topic("demo", SOC, "response"), b"other-response-" + run)]
    for sender, topic, payload in forbidden:
        sender.publish(topic, payload)
    a.publish(f"{BASE}/{A}/door/lobby_in/event", b"event-a-" + run)
    b.publish(f"{BASE}/{B}/door/lab/event", b"event-b-" + run)
    b.publish(f"{BASE}/{B}/availability", b"online-b-" + run, retain=True)
    server.publish(integration_topic("demo", HA, "response"), b"response-" + run)
    assert wait_until(lambda: all(ha.got(p + run) for p in (b"event-a-", b"event-b-", b"online-b-", b"response-")), 5)
    assert not any(ha.got(payload) for _, _, payload in forbidden), ha.topics()
    assert all(t.endswith(("/event", "/state", "/availability")) or t == integration_topic("demo", HA, "response")
               for t in ha.topics()), ha.topics()


def test_read_only_integration_reads_events_and_not_the_other_integrations_answers(peers: Peers) -> None:
    run = uuid.uuid4().hex[:8].encode()
    soc = peers[SOC]
    soc.subscribe(f"{BASE}/+/door/+/event", f"{BASE}/server/#", f"{BASE}/{A}/#")
    peers["server"].publish(integration_topic("demo", HA, "response"), b"ha-response-" + run)
    peers["server"].publish(f"{BASE}/{A}/cmd", b"cmd-" + run)
    peers[A].publish(f"{BASE}/{A}/door/lobby_in/event", b"marker-" + run)
    assert wait_until(lambda: soc.got(b"marker-" + run), 5)
    assert not soc.got(b"ha-response-" + run) and not soc.got(b"cmd-" + run), soc.topics()


def test_integration_cannot_publish_a_command_decision_policy_or_request_the_device_never_receives_it(
        peers: Peers) -> None:
    run = uuid.uuid4().hex[:8].encode()
    device, observer = peers[A], peers["server"]
    # What is retained before the attempts, and must still be once they are over.
    observer.publish(f"{BASE}/{A}/policy", b"policy-legit-" + run, retain=True)
    observer.publish(f"{BASE}/server/availability", b"server-legit-" + run, retain=True)
    device.publish(f"{BASE}/{A}/availability", b"online-legit-" + run, retain=True)
    device.subscribe(f"{BASE}/{A}/#")
    observer.subscribe(f"{BASE}/#")
    forged = [(HA, f"{BASE}/{A}/cmd", b"unlock-" + run, False),
              (HA, f"{BASE}/{A}/door/lobby_in/decision", b"grant-" + run, False),
              (HA, f"{BASE}/{A}/policy", b"policy-" + run, True),
              (HA, f"{BASE}/{A}/door/lobby_in/request", b"request-" + run, False),
              (HA, f"{BASE}/{A}/availability", b"offline-" + run, True),
              (HA, f"{BASE}/{A}/door/lobby_in/event", b"event-" + run, False),
              (HA, f"{BASE}/server/availability", b"server-offline-" + run, True),
              # the subtree the device pattern would give the CN `home-assistant`: denied to the integration
              (HA, f"{BASE}/{HA}/door/lobby_in/request", b"own-subtree-" + run, False),
              (HA, f"{BASE}/{HA}/availability", b"own-availability-" + run, True),
              (HA, integration_topic("demo", SOC, "request"), b"as-soc-" + run, False),
              # read-only: not even its own request topic
              (SOC, integration_topic("demo", SOC, "request"), b"soc-request-" + run, False),
              (SOC, f"{BASE}/{A}/cmd", b"soc-unlock-" + run, False)]
    for name, topic, payload, retain in forged:
        # Mosquitto 2.0.11 acknowledges a forbidden QoS 1 publish and may then close the connection: one
        # connection per attempt, and the packet is handled once the PUBACK or the disconnect is seen.
        p = peers[name]
        info = p.client.publish(topic, payload, qos=1, retain=retain)
        assert wait_until(lambda: info.is_published() or not p.client.is_connected(), 5), topic
        peers.drop(name)
    peers[HA].publish(integration_topic("demo", HA, "request"), b"ha-request-" + run)  # its one topic: delivered
    observer.publish(f"{BASE}/{A}/cmd", b"marker-" + run)  # routed after everything above
    assert wait_until(lambda: device.got(b"marker-" + run) and observer.got(b"ha-request-" + run), 5)
    assert not any(device.got(payload) or observer.got(payload) for _, _, payload, _ in forged), observer.topics()
    peers.drop("server")  # a new subscription is sent what is retained now: still the legitimate messages
    fresh = peers["server"]
    fresh.subscribe(f"{BASE}/{A}/policy", f"{BASE}/{A}/availability", f"{BASE}/server/availability")
    assert wait_until(lambda: all(fresh.got(p + run) for p in (b"policy-legit-", b"online-legit-", b"server-legit-")),
                      5), fresh.messages


def test_a_revoked_integration_is_refused_after_the_broker_restarts(site: Path, broker: Broker) -> None:
    ctx = context(site, HA, broker.port)  # loaded now: `pki revoke` moves the pair to pki/revoked/
    first = Peer(broker.port, ctx, HA)
    assert first.outcome() == "connected"
    first.close()
    cli("pki", "revoke", HA, "--site", site)
    broker.stop()
    broker.start()
    again = Peer(broker.port, ctx, HA)
    result = again.outcome()
    again.close()
    assert result is not None and result != "connected"
    still = Peer(broker.port, context(site, SOC, broker.port), SOC)
    assert still.outcome() == "connected", "an unrevoked integration must still connect"
    still.close()
