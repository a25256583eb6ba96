"""A three-node nats-server cluster as doorkeep's MQTT broker (issue 20, "A clustered broker"), on loopback.

Real nats-server processes (simulators/nats_cluster.py: JetStream, MQTT listener, every MQTT stream on three
nodes) and real paho 2.x clients over MQTT 3.1.1. What is proved, and what a bug would break:

- QoS 1 events published at a steady rate on node A reach a persistent-session subscriber on node B, every
  seq, while node C (neither client's) is killed (kill -9) and restarted, and then the subscriber's own node
  is killed and the subscriber moves to another node (as a client given several broker addresses would);
  first arrivals are in seq order except redeliveries (DUP); duplicates are counted and reported;
- a retained message survives those kills (its stream's leader among them whenever it is not A): expected to
  fail at times on nats-server 2.9.10 (xfail, not strict: a restarted node may not serve retained messages);
- a last will set on node A is published at a subscriber on node B when its client dies without DISCONNECT;
- shared subscriptions (``$share/GROUP/TOPIC``): what nats-server 2.9 does with them, pinned so that a
  change (an upgrade that supports them) is noticed; docs/scale.md says what this means for several workers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest

from simulators.nats_cluster import NatsCluster, nats_server_binary
from simulators.wait import wait_until

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(nats_server_binary() is None,
                                 reason="needs nats-server (make test installs it; or apt-get install nats-server)")]

SITE = "campus"
EVENTS = f"doorkeep/v1/{SITE}/+/door/+/event"
RATE = 200.0  # events/s from the publisher


class Node:
    """A paho 2.x client that connects to one node of a list and moves to the next node when its connection
    drops or a connection attempt fails: what a client given several broker addresses does (paho itself
    reconnects to one host only). Records every message, in arrival order, with its DUP flag."""

    def __init__(self, ports: list[int], client_id: str, *, clean_session: bool = True,
                 subscribe: str | None = None, will: tuple[str, bytes] | None = None) -> None:
        self.ports = ports
        self.index = 0
        self.topic = subscribe
        self.messages: list[tuple[str, bytes, bool]] = []
        self.arrivals: list[float] = []
        self.connects = 0
        self.suback = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._next_node
        self.client.on_connect_fail = self._next_node
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self.suback.set()
        self.client.connect_async("127.0.0.1", ports[0], keepalive=10)
        self.client.loop_start()
        assert wait_until(self.client.is_connected, 10), f"{client_id} did not connect to port {ports[0]}"
        if subscribe is not None:
            assert self.suback.wait(10), f"{client_id}: no SUBACK for {subscribe}"

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        self.connects += 1
        if self.topic is not None:  # subscribe in on_connect, as doorkeep's server does
            client.subscribe(self.topic, qos=1)

    def _next_node(self, client: mqtt.Client, *args: Any) -> None:
        # Called on paho's network thread with the socket closed. connect_async only records the new address
        # (paho refuses to change .port here); paho's own reconnect loop then dials it.
        self.index = (self.index + 1) % len(self.ports)
        client.connect_async("127.0.0.1", self.ports[self.index], keepalive=10)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.dup)))
            self.arrivals.append(time.monotonic())

    def payloads(self) -> list[bytes]:
        with self._lock:
            return [p for _, p, _ in self.messages]

    def received(self) -> list[tuple[bytes, bool, float]]:
        """Every message's payload, DUP flag and arrival time (monotonic), in arrival order."""
        with self._lock:
            return [(p, dup, at) for (_, p, dup), at in zip(self.messages, self.arrivals)]

    def gap(self, start: float, end: float) -> float:
        """The longest time without a delivery between ``start`` (a kill) and ``end``."""
        with self._lock:
            times = [start, *(at for at in self.arrivals if start < at <= end)]
        return max(y - x for x, y in zip(times, times[1:])) if len(times) > 1 else end - start

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Publisher:
    """Publishes QoS 1 events with consecutive seq numbers at a steady rate from its own thread and counts
    the PUBACKs (what the edge's outbox waits for before it forgets an event)."""

    def __init__(self, port: int, topic: str, rate: float) -> None:
        self.node = Node([port], f"pub-{uuid.uuid4().hex[:6]}")
        self.topic = topic
        self.rate = rate
        self.sent = 0
        self.acked = 0
        self.node.client.on_publish = self._on_publish
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-publisher", daemon=True)
        self._thread.start()

    def _on_publish(self, *args: Any) -> None:
        self.acked += 1

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            payload = json.dumps({"seq": self.sent, "ts": time.time()}).encode()
            self.node.client.publish(self.topic, payload, qos=1)
            self.sent += 1
            self._stop.wait(max(0.0, start + self.sent / self.rate - time.monotonic()))  # pacing, not waiting

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        assert wait_until(lambda: self.acked >= self.sent, 15), f"PUBACKs {self.acked} of {self.sent}"
        self.node.close()
        return self.sent


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    with NatsCluster(3, ack_wait_s=1.0) as c:
        yield c


def seqs(payloads: list[bytes]) -> list[int]:
    return [json.loads(p)["seq"] for p in payloads]


WILL_CLIENT = """
import sys, paho.mqtt.client as mqtt
port, topic = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pi-floor7")
c.will_set(topic, b"offline", qos=1, retain=True)
c.connect("127.0.0.1", port, keepalive=10)
c.publish(topic, b"online", qos=1, retain=True).wait_for_publish(5)
print("online", flush=True)
c.loop_forever()
"""


def test_last_will_set_on_one_node_reaches_a_subscriber_on_another_when_the_client_dies(cluster: NatsCluster) -> None:
    """An edge's availability: ``online`` retained, last will ``offline``. The edge's process is killed
    (kill -9: no DISCONNECT); the will, published by node A, reaches the server's subscription on node B."""
    a, b = cluster.nodes[0], cluster.nodes[1]
    topic = f"doorkeep/v1/{SITE}/pi-floor7/availability"
    watcher = Node([b.mqtt_port], "will-watcher", subscribe=topic)
    edge = subprocess.Popen([sys.executable, "-c", WILL_CLIENT, str(a.mqtt_port), topic], stdout=subprocess.PIPE)
    try:
        assert edge.stdout is not None and edge.stdout.readline().strip() == b"online"
        assert wait_until(lambda: b"online" in watcher.payloads(), 10), f"no online on {b.name}: {watcher.payloads()}"
        edge.kill()
        edge.wait()
        assert wait_until(lambda: b"offline" in watcher.payloads(), 10), \
            f"the last will did not reach node {b.name}: {watcher.payloads()}"
        late = Node([cluster.nodes[2].mqtt_port], "late-reader", subscribe=topic)
        assert wait_until(lambda: late.payloads() == [b"offline"], 5), f"retained will: {late.payloads()}"
        late.close()
    finally:
        edge.kill()
        watcher.close()


def test_shared_subscriptions_are_not_supported_nothing_reaches_a_share_group(cluster: NatsCluster) -> None:
    """Two workers subscribe ``$share/workers/…/request`` (on two nodes); a plain subscriber beside them gets
    every request, the share group none: nats-server 2.9 acknowledges the subscription and treats it as an
    ordinary topic named ``$share/…``, which no device publishes to. Several server workers therefore cannot
    split the requests through a nats-server cluster (docs/scale.md). If an upgrade makes them work, this
    test fails: then check they split the load and update docs/scale.md."""
    requests = f"doorkeep/v1/{SITE}/+/door/+/request"
    workers = [Node([cluster.nodes[i].mqtt_port], f"worker-{i}", subscribe=f"$share/workers/{requests}") for i in (1, 2)]
    plain = Node([cluster.nodes[1].mqtt_port], "plain-observer", subscribe=requests)
    edge = Node([cluster.nodes[0].mqtt_port], "pi-lobby-2")
    try:
        for n in range(20):
            edge.client.publish(f"doorkeep/v1/{SITE}/pi-lobby-2/door/front/request", b"%d" % n, qos=1).wait_for_publish(5)
        assert wait_until(lambda: len(plain.payloads()) == 20, 10), f"plain subscriber got {len(plain.payloads())} of 20"
        assert wait_until(lambda: len(plain.payloads()) == 20, 0.5)  # and none arrive late below
        assert [len(w.payloads()) for w in workers] == [0, 0], "shared subscriptions now deliver: see the docstring"
    finally:
        for node in (*workers, plain, edge):
            node.close()


class Outcome:
    """What the scenario below saw: everything the persistent subscriber received, what was sent, and the
    fresh subscriber's retained message once both kills were over."""

    sent: int
    received: list[tuple[bytes, bool, float]]
    connects: int
    gaps: dict[str, float]
    retained: dict[str, list[bytes]]
    killed: dict[str, str]


@pytest.fixture(scope="module")
def two_kills(cluster: NatsCluster) -> Outcome:
    """QoS 1 events at 200/s from node A to a persistent session on node B. A retained state message is
    published first. Then kill -9 node C (neither client is on it), restart it (three replicas tolerate one
    node down at a time, not two), and kill -9 node B: the subscriber moves to the next node of its list (A).
    Finally a new client on A subscribes to the retained topic.

    A is the leader of the QoS 1 message stream: killing that leader stalls every QoS 1 publish for about
    8 s (its election), which bench/broker_cluster.py measures; here the kills are of the nodes the clients
    lose. B is the retained-message stream's leader whenever A is not (every node holds a copy: R3).
    """
    a = cluster.stream_leader("$MQTT_msgs")
    retained_leader = cluster.stream_leader("$MQTT_rmsgs")
    others = [n for n in cluster.nodes if n is not a]
    b = retained_leader if retained_leader in others else others[0]
    c = next(n for n in others if n is not b)
    state_topic = f"doorkeep/v1/{SITE}/pi-lobby/state"
    state = json.dumps({"schema": "doorkeep.state/1", "marker": uuid.uuid4().hex}).encode()
    owner = Node([a.mqtt_port], "pi-lobby")
    owner.client.publish(state_topic, state, qos=1, retain=True).wait_for_publish(5)
    owner.close()

    out = Outcome()
    out.killed = {"C": c.name, "B (subscriber's node)": b.name, "retained stream leader": retained_leader.name}
    sub = Node([b.mqtt_port, a.mqtt_port, c.mqtt_port], "server-worker-1", clean_session=False, subscribe=EVENTS)
    pub = Publisher(a.mqtt_port, f"doorkeep/v1/{SITE}/pi-lobby/door/front/event", RATE)
    try:
        assert wait_until(lambda: len(sub.payloads()) >= RATE / 2, 10), "nothing delivered before the kill"
        moment = time.monotonic()
        cluster.kill(c)
        before = len(sub.payloads())
        assert wait_until(lambda: len(sub.payloads()) >= before + RATE / 2, 15), f"nothing delivered after {c.name} died"
        cluster.restart(c)
        moment_b = time.monotonic()
        cluster.kill(b)
        before = len(sub.payloads())
        assert wait_until(lambda: len(sub.payloads()) >= max(before + RATE, pub.sent - RATE / 2), 20), \
            f"delivery did not resume after the subscriber's node {b.name} died"
        stopped = time.monotonic()
        out.sent = pub.stop()
        wait_until(lambda: set(seqs(sub.payloads())) >= set(range(out.sent)), 15)
        out.received = sub.received()
        out.connects = sub.connects
        out.gaps = {"C killed": sub.gap(moment, moment_b), "B killed": sub.gap(moment_b, stopped)}
    finally:
        pub._stop.set()
        sub.close()
    out.retained = {}
    for node in (a, c):  # the survivor, and the node killed first (restarted)
        reader = Node([node.mqtt_port], f"desk-reader-{node.name}", subscribe=state_topic)
        wait_until(lambda: reader.payloads(), 10)
        out.retained[node.name] = reader.payloads()
        reader.close()
    print(f"\nkilled {out.killed}; sent {out.sent}, received {len(out.received)}, "
          f"gaps {', '.join(f'{k} {v * 1000:.0f} ms' for k, v in out.gaps.items())}, subscriber connects {out.connects}")
    return out


def test_every_qos1_event_arrives_while_a_node_and_then_the_subscribers_node_are_killed(two_kills: Outcome) -> None:
    got = seqs([p for p, _, _ in two_kills.received])
    lost = sorted(set(range(two_kills.sent)) - set(got))
    assert not lost, f"{len(lost)} of {two_kills.sent} events lost: {lost[:20]}"
    assert set(got) <= set(range(two_kills.sent)), "a seq nobody published arrived"
    assert two_kills.connects >= 2, "the subscriber never moved to another node"
    print(f"\nduplicates: {len(got) - len(set(got))} of {len(got)} (QoS 1 may repeat; the store dedups by event id)")


def test_events_arrive_in_order_except_redeliveries_which_carry_dup(two_kills: Outcome) -> None:
    """Per publisher, first arrivals are in seq order; a message that overtook none was never redelivered.
    Only a redelivery (MQTT DUP flag set: it was in flight when a node died) may arrive after a later seq."""
    highest = -1
    late: list[tuple[int, bool]] = []
    seen: set[int] = set()
    for payload, dup, _ in two_kills.received:
        seq = json.loads(payload)["seq"]
        if seq in seen:
            continue
        seen.add(seq)
        if seq < highest:
            late.append((seq, dup))
        highest = max(highest, seq)
    assert all(dup for _, dup in late), f"out of order without DUP (a real reordering): {late[:20]}"
    print(f"\nfirst arrivals after a later seq: {len(late)} (all redeliveries with DUP)")


@pytest.mark.xfail(strict=False, reason=(
    "nats-server 2.9.10 defect, seen in 2 of 5 runs: after the kills a new subscriber on the restarted node, once on "
    "the never-killed node, got no retained message within 10 s (the node's retained-message consumer not current); "
    "docs/scale.md, A clustered broker"))
def test_retained_state_survives_the_death_of_the_node_leading_the_retained_stream(two_kills: Outcome) -> None:
    """A new subscriber on the surviving node A and on the restarted node C gets the retained state."""
    assert all(len(got) == 1 for got in two_kills.retained.values()), \
        f"retained state after the kills, by node: {two_kills.retained} (killed: {two_kills.killed})"
    assert all(json.loads(got[0])["schema"] == "doorkeep.state/1" for got in two_kills.retained.values())
