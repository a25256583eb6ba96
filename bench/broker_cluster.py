"""A three-node nats-server cluster beside one Mosquitto (issue 20, "A clustered broker").

Run from the project root:

    .venv/bin/python bench/broker_cluster.py [--messages 20000] [--payload 256] [--rate 200] [--kill-runs 2]

Three figures per broker, one paho publisher and one persistent-session paho subscriber (QoS 1, MQTT 3.1.1,
TCP_NODELAY, a ``--payload``-byte event under ``doorkeep/v1/campus/DEVICE/door/DOOR/event``):

1. throughput: ``--messages`` QoS 1 messages as fast as the publisher's 20 in-flight PUBACKs allow (paho's
   default, what the edge uses), messages/s received; on the cluster the publisher is on node A and the
   subscriber on node B, so every message crosses a route and is stored on three nodes first;
2. latency: publish→receive p50/p99 at a steady ``--rate`` messages/s (doorkeep-like: events trickle);
3. a kill under load, at ``--rate``: the longest time without a delivery (the gap), and messages lost,
   duplicated and delivered out of order (a first arrival after a later seq). Cluster: kill -9 the leader
   of the QoS 1 message stream (worst case: a JetStream leader election), restart it, then kill -9 the
   subscriber's node (it moves to the next node of its list). Mosquitto: kill -9 the broker and start it
   again at once on the same port and persistence (what systemd's Restart= does, minus its delay).

Baseline: one Mosquitto 2.0 (simulators/brokers.py: ``max_queued_messages 0``, Nagle off, persistence on).
docs/performance.md ("A clustered broker") holds the figures measured here.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from simulators.brokers import BrokerUnavailable, MosquittoBroker  # noqa: E402
from simulators.nats_cluster import NatsCluster, nats_server_version  # noqa: E402
from simulators.wait import wait_until  # noqa: E402

TOPIC = "doorkeep/v1/campus/pi-lobby/door/front/event"
EVENTS = "doorkeep/v1/campus/+/door/+/event"


class Client:
    """A paho client that moves to the next port of its list when its connection drops (several broker
    addresses) and records what it receives: seq, DUP flag, arrival time, publish→receive latency."""

    def __init__(self, ports: list[int], client_id: str, *, subscribe: str | None = None) -> None:
        self.ports = ports
        self.index = 0
        self.topic = subscribe
        self.got: list[tuple[int, bool, float, float]] = []
        self.acked = 0
        self.suback = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._next
        self.client.on_connect_fail = self._next
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *a: self.suback.set()
        self.client.connect_async("127.0.0.1", ports[0], keepalive=10)
        self.client.loop_start()
        if not wait_until(self.client.is_connected, 15) or (subscribe and not self.suback.wait(15)):
            raise RuntimeError(f"{client_id} could not connect to port {ports[0]}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        sock = client.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.topic is not None:
            client.subscribe(self.topic, qos=1)

    def _next(self, client: mqtt.Client, *args: Any) -> None:
        self.index = (self.index + 1) % len(self.ports)
        client.connect_async("127.0.0.1", self.ports[self.index], keepalive=10)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        seq, sent_at = json.loads(msg.payload[:64].split(b"|", 1)[0])
        with self._lock:
            self.got.append((seq, bool(msg.dup), now, now - sent_at))

    def _on_publish(self, *args: Any) -> None:
        self.acked += 1

    def received(self) -> list[tuple[int, bool, float, float]]:
        with self._lock:
            return list(self.got)

    def count(self) -> int:
        with self._lock:
            return len(self.got)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def payload(seq: int, size: int) -> bytes:
    head = json.dumps([seq, time.monotonic()]).encode() + b"|"
    return head + b"x" * max(0, size - len(head))


def throughput(pub_port: int, sub_port: int, messages: int, size: int, tag: str) -> dict[str, float]:
    sub = Client([sub_port], f"bench-sub-{tag}", subscribe=EVENTS)
    pub = Client([pub_port], f"bench-pub-{tag}")
    start = time.monotonic()
    for seq in range(messages):
        pub.client.publish(TOPIC, payload(seq, size), qos=1)
    ok = wait_until(lambda: sub.count() >= messages, 120, 0.01)
    elapsed = time.monotonic() - start
    seqs = {s for s, *_ in sub.received()}
    pub.close()
    sub.close()
    return {"msg_s": len(seqs) / elapsed, "lost": messages - len(seqs), "complete": float(ok)}


def paced(pub: Client, rate: float, stop: threading.Event, size: int, sent: list[int]) -> None:
    start = time.monotonic()
    while not stop.is_set():
        pub.client.publish(TOPIC, payload(sent[0], size), qos=1)
        sent[0] += 1
        stop.wait(max(0.0, start + sent[0] / rate - time.monotonic()))


def latency(pub_port: int, sub_port: int, rate: float, seconds: float, size: int, tag: str) -> dict[str, float]:
    sub = Client([sub_port], f"bench-lat-sub-{tag}", subscribe=EVENTS)
    pub = Client([pub_port], f"bench-lat-pub-{tag}")
    stop, sent = threading.Event(), [0]
    thread = threading.Thread(target=paced, args=(pub, rate, stop, size, sent), daemon=True)
    thread.start()
    stop.wait(seconds)
    stop.set()
    thread.join()
    wait_until(lambda: sub.count() >= sent[0], 10)
    lat = sorted(d * 1000 for *_, d in sub.received())
    pub.close()
    sub.close()
    return {"p50_ms": statistics.median(lat), "p99_ms": lat[int(0.99 * (len(lat) - 1))]}


def outcome(sub: Client, sent: int, kills: list[float], end: float) -> dict[str, Any]:
    got = sub.received()
    seqs = [s for s, *_ in got]
    first: dict[int, bool] = {}
    order: list[int] = []
    for s, dup, _, _ in got:
        if s not in first:
            first[s] = dup
            order.append(s)
    highest, late, late_dup = -1, 0, 0
    for s in order:
        if s < highest:
            late += 1
            late_dup += first[s]
        highest = max(highest, s)
    gaps = []
    for k, moment in enumerate(kills):
        until = kills[k + 1] if k + 1 < len(kills) else end
        times = [moment, *(at for _, _, at, _ in got if moment < at <= until)]
        gaps.append(max(y - x for x, y in zip(times, times[1:])) if len(times) > 1 else until - moment)
    return {"sent": sent, "lost": len(set(range(sent)) - set(seqs)), "duplicates": len(seqs) - len(set(seqs)),
            "out_of_order": late, "out_of_order_without_dup": late - late_dup, "gaps_s": gaps}


def kill_cluster(rate: float, size: int) -> dict[str, Any]:
    """One run on a fresh cluster: kill the QoS 1 stream leader, restart it, kill the subscriber's node."""
    with NatsCluster(3, ack_wait_s=1.0) as cluster:
        leader = cluster.stream_leader("$MQTT_msgs")
        a, b = [n for n in cluster.nodes if n is not leader]
        c = leader
        sub = Client([b.mqtt_port, a.mqtt_port, c.mqtt_port], "bench-kill-sub", subscribe=EVENTS)
        pub = Client([a.mqtt_port], "bench-kill-pub")
        stop, sent = threading.Event(), [0]
        thread = threading.Thread(target=paced, args=(pub, rate, stop, size, sent), daemon=True)
        thread.start()
        wait_until(lambda: sub.count() >= rate, 10)
        kills = [time.monotonic()]
        cluster.kill(c)
        before = sub.count()
        wait_until(lambda: sub.count() >= before + rate, 30)
        cluster.restart(c)
        wait_until(lambda: sub.count() >= sent[0] - rate / 10, 30)
        kills.append(time.monotonic())
        cluster.kill(b)
        before = sub.count()
        wait_until(lambda: sub.count() >= before + rate and sub.count() >= sent[0] - rate / 10, 30)
        stop.wait(2)  # two more seconds of steady load after delivery resumed, so the gap is measured to its end
        stop.set()
        thread.join()
        end = time.monotonic()
        wait_until(lambda: pub.acked >= sent[0], 30)
        wait_until(lambda: len({s for s, *_ in sub.received()}) >= sent[0], 15)
        result = outcome(sub, sent[0], kills, end)
        result["killed"] = [f"{c.name} (QoS 1 stream leader)", f"{b.name} (subscriber's node)"]
        pub.close()
        sub.close()
        return result


def kill_mosquitto(rate: float, size: int) -> dict[str, Any]:
    broker = MosquittoBroker(persistent=True).start()
    try:
        sub = Client([broker.port], "bench-kill-sub", subscribe=EVENTS)
        pub = Client([broker.port], "bench-kill-pub")
        stop, sent = threading.Event(), [0]
        thread = threading.Thread(target=paced, args=(pub, rate, stop, size, sent), daemon=True)
        thread.start()
        wait_until(lambda: sub.count() >= rate, 10)
        kills = [time.monotonic()]
        assert broker.proc is not None
        broker.proc.kill()
        broker.proc.wait()
        broker.start()
        before = sub.count()
        wait_until(lambda: sub.count() >= before + rate, 30)
        stop.wait(2)
        stop.set()
        thread.join()
        end = time.monotonic()
        wait_until(lambda: pub.acked >= sent[0], 30)
        wait_until(lambda: len({s for s, *_ in sub.received()}) >= sent[0], 10)
        result = outcome(sub, sent[0], kills, end)
        result["killed"] = ["mosquitto (restarted at once)"]
        pub.close()
        sub.close()
        return result
    finally:
        broker.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000, help="messages for the throughput figure")
    parser.add_argument("--payload", type=int, default=256, help="payload bytes (a doorkeep event is ~300-600)")
    parser.add_argument("--rate", type=float, default=200.0, help="messages/s for the latency and kill figures")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of paced load for the latency figure")
    parser.add_argument("--kill-runs", type=int, default=2, help="kill runs per broker")
    args = parser.parse_args(argv)
    try:
        cluster = NatsCluster(3, ack_wait_s=1.0)
    except BrokerUnavailable as exc:
        print(f"skipped: {exc}")
        return 0
    print(f"nats-server {nats_server_version(cluster.binary)}, 3 nodes, MQTT streams R3; payload {args.payload} B, QoS 1")
    results: dict[str, dict[str, Any]] = {"mosquitto": {}, "cluster": {}}
    with cluster:
        a, b = cluster.nodes[0], cluster.nodes[1]
        results["cluster"].update(throughput(a.mqtt_port, b.mqtt_port, args.messages, args.payload, "c"))
        results["cluster"].update(latency(a.mqtt_port, b.mqtt_port, args.rate, args.seconds, args.payload, "c"))
    broker = MosquittoBroker().start()
    try:
        results["mosquitto"].update(throughput(broker.port, broker.port, args.messages, args.payload, "m"))
        results["mosquitto"].update(latency(broker.port, broker.port, args.rate, args.seconds, args.payload, "m"))
    finally:
        broker.stop()
    row: Callable[[str, str, str], None] = lambda name, m, c: print(f"{name:44s} {m:>22s} {c:>30s}")
    print()
    row("", "one Mosquitto", "nats-server cluster (A→B)")
    row("QoS 1 messages/s (20 in flight)", f"{results['mosquitto']['msg_s']:,.0f}", f"{results['cluster']['msg_s']:,.0f}")
    row(f"latency p50 / p99 at {args.rate:g}/s (ms)", f"{results['mosquitto']['p50_ms']:.2f} / {results['mosquitto']['p99_ms']:.2f}",
        f"{results['cluster']['p50_ms']:.2f} / {results['cluster']['p99_ms']:.2f}")
    row("lost in the throughput run", f"{results['mosquitto']['lost']}", f"{results['cluster']['lost']}")
    print()
    for run in range(args.kill_runs):
        m = kill_mosquitto(args.rate, args.payload)
        c = kill_cluster(args.rate, args.payload)
        print(f"kill run {run + 1} at {args.rate:g}/s: mosquitto {m['killed']}; cluster {c['killed']}")
        row("  gap without delivery (s)", " / ".join(f"{g:.2f}" for g in m["gaps_s"]),
            " / ".join(f"{g:.2f}" for g in c["gaps_s"]))
        for key in ("sent", "lost", "duplicates", "out_of_order", "out_of_order_without_dup"):
            row(f"  {key.replace('_', ' ')}", str(m[key]), str(c[key]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
