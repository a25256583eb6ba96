"""Server capacity curve (issue 8, figure 3): decisions/s and latency from 10 to 2,000 doors badging at once.

Run from the project root:

    .venv/bin/python bench/capacity.py [--levels 10,100,500,1000,2000] [--seconds S] [--paced 1000] [--json PATH]

A private Mosquitto (set_tcp_nodelay true, max_queued_messages 0), the real server
(``server.app.bootstrap``) on a generated site (the demo plus 2,000 doors on 200
devices of 10 doors each, bench/gensite.py) and lightweight simulated edges: paho
clients in child processes, many doors per client, speaking the real contract. Each
door keeps one badge outstanding (``RequestMsg`` on its request topic, QoS 1); when the
``DecisionMsg`` comes back it publishes the ``access`` event (``EventMsg``, QoS 1),
which the server persists, and badges again. So N doors = N requests in flight, and
every decision costs the server one request, one decision and one stored event.

Baseline, same broker, same harness: a bare echo "server" (one paho client in this
process republishing every request on a reply topic), whose messages/s is the
transport's own limit for this request pattern. One more row paces the doors to a
fixed offered load (``--paced`` decisions/s, open loop) for the "p99 at 1,000
decisions/s" target. The knee is the first level after which one more step buys
less than 10 % more decisions/s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import iso_ms
from doorkeep.config import BrokerConfig
from doorkeep.contract import DecisionMsg, EventMsg, RequestMsg, Topics
from doorkeep.credentials import card_hash, last4
from doorkeep.envelope import SnapshotKeys
from server.app import bootstrap
from simulators.brokers import MosquittoBroker, subscribed_client
from simulators.wait import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gensite import STAFF_CARDS, generate_site

DOORS_PER_DEVICE = 10
CHILDREN = 2            # load-generator processes (one paho client each)
WARMUP_S = 0.5
DRAIN_S = 10.0
TARGET_RATE = 3000.0    # decisions/s sustained
TARGET_P99_AT_PACED_MS = 20.0
KNEE_GAIN = 1.10


def pct(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[max(1, math.ceil(len(sorted_values) * p / 100)) - 1]


# ------------------------------------------------------------ child: simulated edges

class Doors:
    """The doors of one child: each keeps one request outstanding (closed loop) or badges on a timer (paced)."""

    def __init__(self, client: mqtt.Client, mode: str, run_id: str, site_id: str,
                 doors: list[tuple[str, str]], pool: list[tuple[str, str]]) -> None:
        self.client, self.mode, self.pool = client, mode, pool
        self.topics = Topics(site_id)
        base = f"bench/cap/{run_id}"
        self.req = {d: (self.topics.request(dev, d) if mode == "server" else f"{base}/req/{dev}/{d}")
                    for dev, d in doors}
        self.evt = {d: (self.topics.event(dev, d) if mode == "server" else f"{base}/evt/{dev}/{d}")
                    for dev, d in doors}
        self.device = {d: dev for dev, d in doors}
        self.order = [d for _, d in doors]
        self.lock = threading.Lock()
        self.pending: dict[str, tuple[int, str, int]] = {}  # tx -> (t0 ns, door, pool index)
        self.seq = 0
        # One event sequence per device, as a real edge numbers its events (the server's supervision checks it).
        self.event_seq: dict[str, int] = {dev: 0 for dev, _ in doors}
        self.active: set[str] = set()
        self.closed = True
        self.recording = False
        self.lat: list[int] = []
        self.events = 0
        self.prefix = uuid.uuid4().hex[:6]

    def badge(self, door: str) -> None:
        with self.lock:
            self.seq += 1
            i = self.seq % len(self.pool)
            tx = f"{self.prefix}{self.seq:09d}"
            self.pending[tx] = (time.perf_counter_ns(), door, i)
        h, tail = self.pool[i]
        self.client.publish(self.req[door], RequestMsg(tx, door, h, tail, "em4100", iso_ms(time.time())).encode(),
                            qos=1)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.perf_counter_ns()
        if self.mode == "server":
            ans = DecisionMsg.decode(msg.payload)
            tx, granted, reason, person = ans.transaction, ans.granted, ans.reason, ans.person
        else:
            req = RequestMsg.decode(msg.payload)
            tx, granted, reason, person = req.transaction, True, "echo", None
        with self.lock:
            got = self.pending.pop(tx, None)
            if got is None:
                return
            t0, door, i = got
            if self.recording:
                self.lat.append(t - t0)
            self.event_seq[self.device[door]] += 1
            seq = self.event_seq[self.device[door]]
            again = self.closed and door in self.active
        h, tail = self.pool[i]
        ev = EventMsg(id=uuid.uuid4().hex, seq=seq, ts=iso_ms(time.time()), device=self.device[door], door=door,
                      type="access", decision="granted" if granted else "denied", reason=reason,
                      decided_by="server", person=person, credential_hash=h, credential_last4=tail,
                      transaction=tx, latency_ms=(t - t0) / 1e6)
        client.publish(self.evt[door], ev.encode(), qos=1)
        with self.lock:
            self.events += 1
        if again:
            self.badge(door)

    def run_level(self, n: int, warmup_s: float, measure_s: float, rate_per_door: float | None) -> dict[str, Any]:
        doors = self.order[:n]
        with self.lock:
            self.lat, self.recording, self.events = [], False, 0
            self.active = set(doors)
            self.closed = rate_per_door is None
        stop = threading.Event()
        pacer = None
        if rate_per_door is None:
            for d in doors:
                self.badge(d)
        else:
            def paced() -> None:  # open loop: n doors, each badging rate_per_door times a second, spread evenly
                interval = 1.0 / (rate_per_door * len(doors))
                k, start = 0, time.perf_counter()
                while not stop.is_set():
                    due = start + k * interval
                    delay = due - time.perf_counter()
                    if delay > 0:
                        stop.wait(delay)
                    self.badge(doors[k % len(doors)])
                    k += 1
            pacer = threading.Thread(target=paced, daemon=True)
            pacer.start()
        time.sleep(warmup_s)
        with self.lock:
            self.recording = True
            t0 = time.perf_counter()
        time.sleep(measure_s)
        with self.lock:
            self.recording = False
            self.active = set()
            secs = time.perf_counter() - t0
            lat = self.lat
        stop.set()
        if pacer is not None:
            pacer.join()
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    break
            time.sleep(0.01)
        with self.lock:
            lost = len(self.pending)
            self.pending.clear()
            events = self.events
        return {"seconds": secs, "latencies_ns": lat, "lost": lost, "events": events}


def _child(conn: Any, port: int, mode: str, run_id: str, site_id: str, doors: list[tuple[str, str]],
           pool: list[tuple[str, str]]) -> None:
    try:
        topics = Topics(site_id)
        holder: list[Doors] = []
        subs = sorted({(topics.all_decisions(dev) if mode == "server" else f"bench/cap/{run_id}/rep/{dev}/+")
                       for dev, _ in doors})
        client = subscribed_client("127.0.0.1", port, f"bench-cap-{mode}-{uuid.uuid4().hex[:6]}", subs[0],
                                   lambda c, u, m: holder[0].on_message(c, u, m), inflight=5000, keepalive=60)
        acked = threading.Event()
        client.on_subscribe = lambda *a: acked.set()
        if len(subs) > 1:
            client.subscribe([(s, 1) for s in subs[1:]])
            if not acked.wait(15):
                raise RuntimeError("subscriptions not acknowledged")
        holder.append(Doors(client, mode, run_id, site_id, doors, pool))
        conn.send(("ready", None))
        while True:
            cmd = conn.recv()
            if cmd is None:
                break
            n, warmup, measure, rate = cmd
            conn.send(("level", holder[0].run_level(n, warmup, measure, rate)))
        client.disconnect()
        client.loop_stop()
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class Generators:
    """CHILDREN processes sharing the doors; a level of N doors puts N/CHILDREN on each."""

    def __init__(self, port: int, mode: str, run_id: str, site_id: str, doors: list[tuple[str, str]],
                 pool: list[tuple[str, str]]) -> None:
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        # Whole devices per child, so each child subscribes only to its own devices' decisions.
        devices = sorted({dev for dev, _ in doors})
        for k in range(CHILDREN):
            mine = set(devices[k::CHILDREN])
            share = [(dev, d) for dev, d in doors if dev in mine]
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_child, args=(child, port, mode, run_id, site_id, share, pool), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)
        for parent in self.pipes:
            self._recv(parent, "ready", 60)

    @staticmethod
    def _recv(parent: Any, want: str, timeout: float) -> Any:
        if not parent.poll(timeout):
            raise RuntimeError(f"a load generator did not answer within {timeout:.0f} s")
        kind, body = parent.recv()
        if kind == "error":
            raise RuntimeError(f"load generator failed: {body}")
        if kind != want:
            raise RuntimeError(f"load generator said {kind!r}, expected {want!r}")
        return body

    def level(self, n: int, measure_s: float, rate_total: float | None = None) -> dict[str, Any]:
        per = max(1, n // CHILDREN)
        rate = None if rate_total is None else rate_total / (per * CHILDREN)
        for parent in self.pipes:
            parent.send((per, WARMUP_S, measure_s, rate))
        parts = [self._recv(parent, "level", 60 + measure_s + DRAIN_S) for parent in self.pipes]
        lat = sorted(x for p in parts for x in p["latencies_ns"])
        secs = max(p["seconds"] for p in parts)
        return {"doors": per * CHILDREN, "offered_per_s": rate_total, "per_s": len(lat) / secs if secs else 0.0,
                "p50_ms": pct(lat, 50) / 1e6, "p99_ms": pct(lat, 99) / 1e6, "max_ms": pct(lat, 100) / 1e6,
                "n": len(lat), "lost": sum(p["lost"] for p in parts), "events": sum(p["events"] for p in parts)}

    def close(self) -> None:
        from run_all import stop_children  # here: run_all (figure 3) imports this module
        stop_children(self.pipes, self.procs)


class EchoServer:
    """The bare-transport stand-in for the server: republishes each request on the reply topic (QoS 1)."""

    def __init__(self, port: int, run_id: str) -> None:
        marker, reply = f"bench/cap/{run_id}/req/", f"bench/cap/{run_id}/rep/"

        def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            c.publish(reply + msg.topic[len(marker):], msg.payload, qos=1)

        self.client = subscribed_client("127.0.0.1", port, f"bench-cap-echo-{run_id}", marker + "#", on_message,
                                        keepalive=60)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def knee(rows: list[dict[str, Any]]) -> int | None:
    """The first level after which one more step buys less than 10 % more decisions/s."""
    for a, b in itertools.pairwise(rows):
        if b["per_s"] < a["per_s"] * KNEE_GAIN:
            return a["doors"]
    return None


def run_capacity(levels: list[int], seconds: float, paced: float, broker: MosquittoBroker | None = None,
                 log: Any = print) -> dict[str, Any]:
    own = broker is None
    if broker is None:
        broker = MosquittoBroker().start()
    tmp = Path(tempfile.mkdtemp(prefix="doorkeep-bench-cap-"))
    server = None
    try:
        bundle = generate_site(tmp / "site", max(levels), DOORS_PER_DEVICE)
        key = secrets.token_bytes(32)
        doors = [(dev.id, d) for dev in bundle.devices.values() if dev.id.startswith("gen-") for d in dev.doors]
        doors.sort(key=lambda x: x[1])
        pool = [(card_hash(key, "em4100", c), last4(c)) for c in STAFF_CARDS]
        run_id = uuid.uuid4().hex[:8]
        echo_rows: list[dict[str, Any]] = []
        echo = EchoServer(broker.port, run_id)
        gens = Generators(broker.port, "echo", run_id, bundle.site.id, doors, pool)
        try:
            for n in levels:
                echo_rows.append(gens.level(n, seconds))
                log(f"   echo   {n:>5} doors: {echo_rows[-1]['per_s']:>8,.0f}/s p99 {echo_rows[-1]['p99_ms']:.1f} ms")
            echo_paced = gens.level(min(1000, max(levels)), seconds, paced)
        finally:
            gens.close()
            echo.close()
        server = bootstrap(bundle, tmp / "server", BrokerConfig(broker.url, allow_plain=True), key=key,
                           signing_key=Ed25519PrivateKey.generate(), snapshot_keys=SnapshotKeys.generate())
        server.start(wait_s=60)
        if not server.bus.connected:
            raise RuntimeError("the server did not connect to the bench broker")
        rows: list[dict[str, Any]] = []
        gens = Generators(broker.port, "server", run_id, bundle.site.id, doors, pool)
        sent_so_far = 0

        def settle(r: dict[str, Any]) -> None:
            """Wait until the server has stored every event of the level, so the next level starts clean."""
            nonlocal sent_so_far
            sent_so_far += r["events"]
            t0 = time.perf_counter()
            counters = server.bus.counters
            wait_until(lambda: counters["events"] + counters["duplicate_events"] >= sent_so_far, 60)
            server.bus.wait_idle(60)
            r["store_catch_up_s"] = time.perf_counter() - t0

        try:
            # The paced row first, on a fresh server: the figure for a steady 1,000 badges/s.
            paced_n = min(1000, max(levels))
            paced_row = gens.level(paced_n, seconds, paced)
            settle(paced_row)
            log(f"   server paced {paced:,.0f}/s over {paced_n} doors: p99 {paced_row['p99_ms']:.1f} ms")
            for n in levels:
                rows.append(gens.level(n, seconds))
                settle(rows[-1])
                log(f"   server {n:>5} doors: {rows[-1]['per_s']:>8,.0f}/s p99 {rows[-1]['p99_ms']:.1f} ms, "
                    f"store caught up {rows[-1]['store_catch_up_s']:.1f} s after")
        finally:
            gens.close()
        t0 = time.perf_counter()
        idle = server.bus.wait_idle(60)
        drain_s = time.perf_counter() - t0
        stored = server.store.count_events()
        sent = sum(r["events"] for r in rows) + paced_row["events"]
        reasons = dict(server.bus.counters)
        return {"levels": levels, "seconds": seconds, "echo": echo_rows, "server": rows, "paced": paced_row,
                "echo_paced": echo_paced,
                "knee_doors": knee(rows), "events_sent": sent, "events_stored": stored, "store_idle": idle,
                "store_drain_s": drain_s, "counters": reasons, "doors_per_device": DOORS_PER_DEVICE,
                "children": CHILDREN, "max_echo_per_s": max(r["per_s"] for r in echo_rows),
                "max_server_per_s": max(r["per_s"] for r in rows)}
    finally:
        if server is not None:
            server.stop()
        if own:
            broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--levels", default="10,100,500,1000,2000", help="doors badging at once, comma-separated")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per level (default 3)")
    ap.add_argument("--paced", type=float, default=1000.0, help="offered decisions/s of the paced row (default 1000)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    res = run_capacity(levels, args.seconds, args.paced)
    print(f"{'':8}{'doors':>6} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'lost':>5}")
    for name, rows in (("echo", res["echo"] + [res["echo_paced"]]), ("server", res["server"] + [res["paced"]])):
        for r in rows:
            print(f"{name:<8}{r['doors']:>6} {r['per_s']:>12,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['max_ms']:>8.2f} {r['lost']:>5}")
    print(f"knee at {res['knee_doors']} doors; events sent {res['events_sent']:,}, stored {res['events_stored']:,} "
          f"(store drained {res['store_drain_s']:.1f} s after the load); targets >= {TARGET_RATE:,.0f}/s, "
          f"p99 <= {TARGET_P99_AT_PACED_MS:g} ms at {args.paced:,.0f}/s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
