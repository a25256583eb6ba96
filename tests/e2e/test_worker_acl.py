"""A server worker's certificate against a real Mosquitto running the ACL ``doorkeep broker config`` generates.

``MosquittoBroker(tls_sites=[SITE])`` issues ``server``, a device, ``worker-a`` and the test observer from its own CA
and writes the ACL with ``live_workers`` (simulators/brokers.py), as the command does. What is proved: worker-a on
the workers' shared subscription receives a device's request and its heartbeat, and its decision reaches the
device; it reads nothing else, even subscribed to the whole site; whatever else it publishes under a device, the
server or its own CN's subtree is dropped (the device and a whole-site observer never see it, and what was retained
stays). Under MQTT 3.1.1 a forbidden publish is acknowledged (or the connection closed) and dropped, so non-delivery
is proved with a marker sent afterwards on an allowed path: once the marker has arrived, the forbidden message would
have too.
"""

from __future__ import annotations

import ssl
import uuid
from typing import Iterator

import pytest

from doorkeep.pki import client_tls_context
from server.workers import shared_group
from simulators.brokers import OBSERVER, MosquittoBroker
from simulators.site import mosquitto_installed
from tests.conftest import wait_until
from tests.e2e.test_integration_acl import Peers

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not mosquitto_installed(), reason="needs Mosquitto (apt-get install mosquitto)")]

SITE, DEVICE, WORKER = "hq", "pi-gate", "worker-a"
BASE = f"doorkeep/v1/{SITE}"
SHARED_REQUESTS = f"$share/{shared_group(SITE)}/{BASE}/+/door/+/request"  # what server/workers.py subscribes to


@pytest.fixture(scope="module")
def broker() -> Iterator[MosquittoBroker]:
    b = MosquittoBroker(tls_sites=[SITE], clients=["server", DEVICE, WORKER, OBSERVER]).start()
    assert f"user {WORKER}" in (b.dir / "acl").read_text(), "the ACL did not list the live worker certificate"
    yield b
    b.stop()


def _context(broker: MosquittoBroker, name: str) -> ssl.SSLContext:
    ctx = client_tls_context(broker.client_config(name))
    assert ctx is not None
    return ctx


@pytest.fixture
def peers(broker: MosquittoBroker) -> Iterator[Peers]:
    p = Peers(broker.port, lambda name: _context(broker, name))
    yield p
    p.close()


def test_worker_receives_a_request_on_the_shared_subscription_and_its_decision_reaches_the_device(
        peers: Peers) -> None:
    run = uuid.uuid4().hex[:8].encode()
    worker, device = peers[WORKER], peers[DEVICE]
    worker.subscribe(SHARED_REQUESTS, f"{BASE}/+/state")
    assert all(not code.is_failure for codes in worker.suback for code in codes), worker.suback
    device.subscribe(f"{BASE}/{DEVICE}/door/+/decision")
    device.publish(f"{BASE}/{DEVICE}/state", b"heartbeat-" + run)
    device.publish(f"{BASE}/{DEVICE}/door/gate_in/request", b"request-" + run)
    assert wait_until(lambda: worker.got(b"request-" + run) and worker.got(b"heartbeat-" + run), 5), worker.messages
    assert f"{BASE}/{DEVICE}/door/gate_in/request" in worker.topics()
    worker.publish(f"{BASE}/{DEVICE}/door/gate_in/decision", b"decision-" + run)
    assert wait_until(lambda: device.got(b"decision-" + run), 5), device.messages


def test_worker_reads_no_event_policy_command_decision_or_availability_even_subscribed_to_the_whole_site(
        peers: Peers) -> None:
    run = uuid.uuid4().hex[:8].encode()
    server, device = peers["server"], peers[DEVICE]
    server.publish(f"{BASE}/{DEVICE}/policy", b"policy-" + run, retain=True)  # retained before it subscribes
    worker = peers[WORKER]
    # What a careless or stolen worker certificate asks for: the broker hands it only what the ACL lets it read.
    worker.subscribe(f"{BASE}/#", f"$share/{shared_group(SITE)}/{BASE}/+/door/+/event")
    forbidden = [(server, f"{BASE}/{DEVICE}/cmd", b"cmd-" + run),
                 (server, f"{BASE}/{DEVICE}/door/gate_in/decision", b"decision-" + run),
                 (device, f"{BASE}/{DEVICE}/door/gate_in/event", b"event-" + run),
                 (device, f"{BASE}/{DEVICE}/door/gate_in/snapshot/ev-{run.decode()}", b"snapshot-" + run),
                 (device, f"{BASE}/{DEVICE}/cmd/result", b"result-" + run),
                 (device, f"{BASE}/{DEVICE}/availability", b"online-" + run)]
    for sender, topic, payload in forbidden:
        sender.publish(topic, payload)
    device.publish(f"{BASE}/{DEVICE}/door/gate_in/request", b"marker-" + run)  # routed after everything above
    assert wait_until(lambda: worker.got(b"marker-" + run), 5), worker.messages
    assert not worker.got(b"policy-" + run)
    assert not any(worker.got(payload) for _, _, payload in forbidden), worker.topics()
    assert all(t.endswith(("/request", "/state")) or t == f"{BASE}/server/availability" for t in worker.topics()), \
        worker.topics()


def test_worker_cannot_publish_an_event_policy_command_or_state_the_device_and_observer_never_receive_it(
        peers: Peers) -> None:
    run = uuid.uuid4().hex[:8].encode()
    device, observer = peers[DEVICE], peers[OBSERVER]
    # What is retained before the attempts, and must still be once they are over.
    observer.publish(f"{BASE}/{DEVICE}/policy", b"policy-legit-" + run, retain=True)
    observer.publish(f"{BASE}/server/availability", b"server-legit-" + run, retain=True)
    device.publish(f"{BASE}/{DEVICE}/availability", b"online-legit-" + run, retain=True)
    device.subscribe(f"{BASE}/{DEVICE}/#")
    observer.subscribe(f"{BASE}/#")
    forged = [(f"{BASE}/{DEVICE}/door/gate_in/event", b"event-" + run, False),
              (f"{BASE}/{DEVICE}/policy", b"policy-" + run, True),
              (f"{BASE}/{DEVICE}/cmd", b"unlock-" + run, False),
              (f"{BASE}/{DEVICE}/door/gate_in/request", b"request-" + run, False),
              (f"{BASE}/{DEVICE}/state", b"state-" + run, False),
              (f"{BASE}/{DEVICE}/availability", b"offline-" + run, True),
              (f"{BASE}/{DEVICE}/cmd/result", b"result-" + run, False),
              (f"{BASE}/server/availability", b"server-offline-" + run, True),
              # the subtree the device pattern would give the CN `worker-a`: denied to the worker
              (f"{BASE}/{WORKER}/door/gate_in/request", b"own-subtree-" + run, False),
              (f"{BASE}/{WORKER}/door/gate_in/event", b"own-event-" + run, False)]
    for topic, payload, retain in forged:
        # Mosquitto 2.0.11 acknowledges a forbidden QoS 1 publish and may then close the connection: one
        # connection per attempt, and the packet is handled once the PUBACK or the disconnect is seen.
        p = peers[WORKER]
        info = p.client.publish(topic, payload, qos=1, retain=retain)
        assert wait_until(lambda: info.is_published() or not p.client.is_connected(), 5), topic
        peers.drop(WORKER)
    peers[WORKER].publish(f"{BASE}/{DEVICE}/door/gate_in/decision", b"decision-" + run)  # its one write: delivered
    assert wait_until(lambda: device.got(b"decision-" + run) and observer.got(b"decision-" + run), 5)
    assert not any(device.got(payload) or observer.got(payload) for _, payload, _ in forged), observer.topics()
    peers.drop(OBSERVER)  # a new subscription is sent what is retained now: still the legitimate messages
    fresh = peers[OBSERVER]
    fresh.subscribe(f"{BASE}/{DEVICE}/policy", f"{BASE}/{DEVICE}/availability", f"{BASE}/server/availability")
    assert wait_until(lambda: all(fresh.got(p + run) for p in (b"policy-legit-", b"online-legit-", b"server-legit-")),
                      5), fresh.messages
