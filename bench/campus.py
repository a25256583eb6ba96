"""A simulated campus (issue 20, "Figures (bench)"): 10,000 doors on 1,000 edges against one real server (or N workers).

Run from the project root:

    .venv/bin/python bench/campus.py [--quick] [--store sqlite,postgresql] [--postgres ADMIN_URL]
                                     [--steps 250,500,...] [--step-seconds S] [--rush-seconds W] [--peak RATE]
                                     [--server-inflight N] [--workers 1,2,4] [--cardholders N] [--buildings B]
                                     [--json PATH]

What runs: a private Mosquitto on loopback (plain MQTT, ``set_tcp_nodelay true``, ``max_queued_messages 0``,
as bench/capacity.py), the real server (``server.app.bootstrap``, the code behind ``doorkeep server``) in its
own process with its store on SQLite (or PostgreSQL with ``--postgres``: bench/campus_db.py), on a generated site (bench/gensite.py: the demo plus 10,000 doors on
1,000 devices of 10 doors each in ``--buildings`` buildings, default 100, and ``--cardholders`` people, default
10,000, with one EM4100 card each and the access level of one building, imported by the server at its first
start), and 1,000 simulated edges: state in ``PROCS`` processes, each multiplexing its edges on ``CONNS`` paho
connections (every connection subscribes to its edges' decision topics, as each edge would). Each badge is a
``RequestMsg`` (QoS 1) on its door's request topic for the card of one of the door's building's cardholders, picked
at random (3 % of badges: one of 200 cards the site does not know, refused); when the ``DecisionMsg``
comes back the edge publishes the ``access`` event (``EventMsg``, numbered per device like a real edge) and,
for half of the grants, a ``door_opened``/``door_closed`` pair, which the server stores.

Two phases, both open loop (badges are due at fixed times whatever the answers do):

1. **Steps**: a constant offered rate, raised step by step. The knee is the last step before the p99
   request->decision first crosses 20 ms or the answers fall behind (under 95 % of the offered rate answered
   within the step); the steps go on past a p99 crossing until the answers fall behind (where this machine
   flattens the curve) or the p99 passes the doors' 1 s timeout.
2. **The morning rush**: 30 minutes of arrivals (a Gaussian centred on the middle of the half hour, sigma
   7.5 minutes, so the half hour holds the central 95 % of the bell) played in ``--rush-seconds`` of wall
   time: time runs ``1800 / W`` times faster, the curve's shape and badge count are kept, and its peak is
   ``--peak`` badges/s (default the issue's 3,000/s).

Several server workers (``--workers 1,2,4``; docs/scale.md "Several server workers"): after the one-server
run on each ``--store`` engine (default PostgreSQL with ``--workers``), the same campus once per count N with the
server as N processes, each running a ``server.workers.Worker`` (the code behind ``doorkeep server --worker``)
on one fresh PostgreSQL database: ``w1`` starts first and leads (events, policies, supervision on the site's
persistent session), ``w2``.. stand by; every worker answers its share of the requests through the shared
subscription ``$share/doorkeep-SITE/doorkeep/v1/SITE/+/door/+/request``. The report gives each worker process's
CPU per decision and how many requests it decided, and ends with every run side by side.

The bench checks its own results and exits 1 when they do not hold: every decision matched to a request of
the same door (none unmatched, none twice), every request answered in the end, every cardholder granted and every
unknown card refused (the server's directory holds the generated people), and every event the edges sent
stored exactly once (counted in the store's database by the run's event-id prefix after the server stopped);
with workers, also that w1 led throughout and that every worker decided some of the requests.
"""

from __future__ import annotations

import argparse
import bisect
import functools
import inspect
import json
import math
import multiprocessing as mp
import os
import platform
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
import uuid
from array import array
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campus_db import PostgresEvents, SqliteEvents  # noqa: E402
from gensite import building_id, cardholder_building, cardholder_card, generate_site  # noqa: E402
from run_all import pct, stop_children  # noqa: E402

DOORS = 10_000
DOORS_PER_EDGE = 10
PROCS = 2                 # edge-simulator processes
CONNS = 4                 # paho connections per process (125 edges each)
INFLIGHT = 256            # QoS 1 messages in flight per connection (paho scans them all on every PUBACK)
TARGET_RATE = 3000.0      # issue 20: decisions/s sustained, persisted
P99_LIMIT_MS = 20.0       # the knee: p99 request->decision above this ...
BEHIND = 0.95             # ... or fewer than this share of the offered badges answered within the step
STOP_P99_MS = 1000.0      # the steps stop at the first falling behind, or at a p99 over the doors' 1 s timeout
WARMUP_S = 1.0            # the first second of a step is not measured
WARM_RATE, WARM_S = 500.0, 4.0   # before the steps: 2,000 badges, about two per edge
DRAIN_S = 300.0           # how long the edges wait for late answers after a phase
SETTLE_S = 900.0          # how long the bench waits for the store to hold every event sent ...
STALL_S = 20.0            # ... or for its count to move again
CARDHOLDERS = 10_000      # people with one card each (bench/gensite.py), every badge one of them at random ...
BUILDINGS = 100           # ... among those of the door's building (100 people and 10 edges in each) ...
UNKNOWN_SHARE = 0.03      # ... or, this share of the badges, a card the site does not know (refused)
PAIR_SHARE = 0.5          # grants followed by a door_opened/door_closed pair
RUSH_REAL_S = 1800.0      # the rush: 30 minutes ...
RUSH_SIGMA = 0.25         # ... sigma = a quarter of the half hour (7.5 min): the half hour is +-2 sigma
BUCKETS = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")
# The capacity curve this bench sits beside (docs/performance.md, figure 3, closed loop): its best level.
CAPACITY_FIGURE = "1,598-1,883 decisions/s (10-2,000 doors badging at once, closed loop), p99 9.76 ms at 1,000/s paced"


# ------------------------------------------------------------ arrival schedules

def rush_offsets(n: int, seconds: float, phase: float) -> list[float]:
    """``n`` arrival times in [0, seconds) following the truncated Gaussian: the inverse of its CDF at (k+phase)/n.

    Deterministic (no random gaps) so that every run offers the same curve; ``phase`` in [0, 1) staggers the
    processes' badges against each other."""
    grid = 2000
    xs = [i / grid for i in range(grid + 1)]
    dens = [math.exp(-0.5 * ((x - 0.5) / RUSH_SIGMA) ** 2) for x in xs]
    cdf = [0.0]
    for i in range(grid):
        cdf.append(cdf[-1] + (dens[i] + dens[i + 1]) / 2)
    total = cdf[-1]
    cdf = [c / total for c in cdf]
    out = []
    for k in range(n):
        u = (k + phase) / n
        i = min(grid - 1, max(0, bisect.bisect_right(cdf, u) - 1))
        span = cdf[i + 1] - cdf[i]
        frac = (u - cdf[i]) / span if span > 0 else 0.0
        out.append((xs[i] + frac / grid) * seconds)
    return out


def rush_mean_over_peak() -> float:
    """The truncated Gaussian's mean rate over its peak rate (about 0.6): badges = peak * this * seconds."""
    grid = 2000
    return sum(math.exp(-0.5 * (((i + 0.5) / grid - 0.5) / RUSH_SIGMA) ** 2) for i in range(grid)) / grid


# ------------------------------------------------------------ child: the server

def _serve(conn: Any, site_dir: str, broker_url: str, key: bytes, signing_raw: bytes, data_dir: str,
           inflight: int | None, store_url: str | None) -> None:
    """The real server in its own process (as bench/server_proc.py), reporting its threads' native ids.

    ``inflight``: an experiment, not the server's setting: the QoS 1 window of the server's paho client (paho's
    default, which the server keeps, is 20; 0 = no limit). ``store_url``: open the server's store on this
    PostgreSQL database (``Store(data_dir, url=...)``; there is no ``[store] url`` setting yet)."""
    import logging

    from doorkeep.config import BrokerConfig, load_site_dir
    from doorkeep.envelope import SnapshotKeys
    import server.app as app

    logging.basicConfig(level=logging.ERROR)
    os.environ.pop("DOORKEEP_STORE_URL", None)  # the bench says where the store is, not the environment
    extra: dict[str, Any] = {}
    if store_url is not None:
        if "store_url" in inspect.signature(app.bootstrap).parameters:
            extra["store_url"] = store_url
        else:  # a server from before bootstrap(store_url=...): open its Store on PostgreSQL all the same
            app.Store = functools.partial(app.Store, url=store_url)  # type: ignore[misc]
    try:
        server = app.bootstrap(load_site_dir(site_dir), Path(data_dir), BrokerConfig(broker_url, allow_plain=True),
                               key=key, signing_key=Ed25519PrivateKey.from_private_bytes(signing_raw),
                               snapshot_keys=SnapshotKeys.generate(), **extra)
        if inflight is not None:
            server.bus._client.max_inflight_messages_set(inflight)
        server.start(wait_s=120)
        threads = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        conn.send(("ready", {"connected": server.bus.connected, "threads": threads}))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.recv()
    server.bus.wait_idle(120)
    server.stop()
    conn.send(("stopped", dict(server.bus.counters)))


class ServerChild:
    def __init__(self, site_dir: Path, data_dir: Path, broker_url: str, key: bytes, inflight: int | None,
                 store_url: str | None) -> None:
        raw = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                         serialization.NoEncryption())
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, str(site_dir), broker_url, key, raw, str(data_dir), inflight, store_url),
                                daemon=True)
        self.proc.start()
        if not self._conn.poll(300):
            raise RuntimeError("the server process did not start within 300 s")
        kind, body = self._conn.recv()
        if kind != "ready" or not body["connected"]:
            raise RuntimeError(f"the server process failed: {body}")
        self.threads: dict[int, str] = body["threads"]

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def stop(self) -> dict[str, int]:
        counters: dict[str, int] = {}
        if self.proc.is_alive():
            try:
                self._conn.send("stop")
                if self._conn.poll(180):
                    _, counters = self._conn.recv()
            except (OSError, EOFError):
                pass
            self.proc.join(timeout=10)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(timeout=5)
        return counters


def _work(conn: Any, site_dir: str, broker_url: str, key: bytes, signing_raw: bytes, keys_dir: str, data_dir: str,
          store_url: str, name: str, lead: bool) -> None:
    """One server worker in its own process (as ``doorkeep server --worker NAME``), reporting its threads' ids.

    ``lead``: whether this worker must lead (w1, started first) or stand by (the others); a worker that ends up
    otherwise fails the run. Every worker loads the same snapshot and data keys from ``keys_dir`` and signs with
    the same key, as the workers of one site do."""
    import logging

    from doorkeep.config import BrokerConfig, load_site_dir
    from doorkeep.envelope import load_snapshot_keys
    from server.workers import Worker

    logging.basicConfig(level=logging.ERROR)
    os.environ.pop("DOORKEEP_STORE_URL", None)
    lost = threading.Event()
    try:
        worker = Worker(load_site_dir(site_dir), Path(data_dir), BrokerConfig(broker_url, allow_plain=True), name,
                        store_url, key=key, on_lost=lost.set,
                        signing_key=Ed25519PrivateKey.from_private_bytes(signing_raw),
                        snapshot_keys=load_snapshot_keys(Path(keys_dir), source="bench/campus.py"))
        worker.start(120)
        if worker.leader != lead:
            raise RuntimeError(f"worker {name} {'stands by' if lead else 'leads'}, expected the opposite")
        assert worker.requests is not None
        if not worker.requests.connected.wait(60):
            raise RuntimeError(f"worker {name}: no connection to the broker for the requests within 60 s")
        threads = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        conn.send(("ready", {"leader": worker.leader, "threads": threads}))
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise
    conn.recv()
    led = worker.leader
    if worker.server is not None:
        worker.server.bus.wait_idle(120)
    counters = dict(worker.requests.counters)
    worker.stop()
    conn.send(("stopped", {"counters": counters, "leader": led, "lost": lost.is_set()}))


class WorkerChild:
    """One worker process (``_work``); ``start()`` returns at once, ``ready()`` waits for it to lead or stand by."""

    def __init__(self, name: str, lead: bool, site_dir: Path, data_dir: Path, broker_url: str, key: bytes,
                 signing_raw: bytes, keys_dir: Path, store_url: str) -> None:
        self.name, self.lead = name, lead
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_work, args=(child, str(site_dir), broker_url, key, signing_raw, str(keys_dir),
                                                    str(data_dir), store_url, name, lead), daemon=True)
        self.proc.start()
        self.threads: dict[int, str] = {}

    def ready(self, timeout: float = 300) -> None:
        if not self._conn.poll(timeout):
            raise RuntimeError(f"worker {self.name} did not start within {timeout:.0f} s")
        try:
            kind, body = self._conn.recv()
        except EOFError:
            self.proc.join(timeout=5)
            raise RuntimeError(f"worker {self.name} ended while starting (exit status {self.proc.exitcode})") from None
        if kind != "ready":
            raise RuntimeError(f"worker {self.name} failed: {body}")
        self.threads = body["threads"]

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def stop(self) -> dict[str, Any]:
        """Its counters, whether it still led at the end, and whether it lost the lead (empty if it died)."""
        out: dict[str, Any] = {}
        if self.proc.is_alive():
            try:
                self._conn.send("stop")
                if self._conn.poll(180):
                    _, out = self._conn.recv()
            except (OSError, EOFError):
                pass
            self.proc.join(timeout=20)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(timeout=5)
        return out


class WorkerGroup:
    """N workers on one site: w1 started first (it leads), then the standbys together."""

    def __init__(self, n: int, site_dir: Path, tmp: Path, broker_url: str, key: bytes, store_url: str) -> None:
        from doorkeep.envelope import init_data_keys

        raw = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                                         serialization.NoEncryption())
        keys_dir = tmp / "keys"
        keys_dir.mkdir(mode=0o700)
        init_data_keys(keys_dir)
        self.workers: list[WorkerChild] = []

        def child(i: int) -> WorkerChild:
            name = f"w{i}"
            return WorkerChild(name, i == 1, site_dir, tmp / f"data-{name}", broker_url, key, raw, keys_dir,
                               store_url)

        try:
            self.workers.append(child(1))
            self.workers[0].ready()
            self.workers += [child(i) for i in range(2, n + 1)]
            for w in self.workers[1:]:
                w.ready()
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.workers[0].pid

    def stop(self) -> dict[str, dict[str, Any]]:
        """Standbys first, then the leader (a standby left alone would take the lead and start a whole server)."""
        return {w.name: w.stop() for w in [*self.workers[1:], *self.workers[:1]]}


# ------------------------------------------------------------ child: simulated edges

class Edges:
    """The edges of one process on ``CONNS`` paho connections: badges on a schedule, events after each decision."""

    def __init__(self, port: int, site_id: str, index: int, run_id: str, edges: list[tuple[str, list[str]]],
                 cards: dict[str, list[tuple[str, str]]], door_area: dict[str, str],
                 unknown: list[tuple[str, str]]) -> None:
        """``cards``: (hash, last 4) of the cards allowed into each area; a badge at a door is one of those of
        the area ``door_area`` says it leads into (or, ``UNKNOWN_SHARE`` of the time, one of ``unknown``)."""
        from doorkeep.contract import Topics
        from simulators.brokers import subscribed_client

        self.topics = Topics(site_id)
        self.index, self.run_id, self.unknown = index, run_id, unknown
        self.rng = random.Random(index)
        self.lock = threading.Lock()
        self.pending: dict[str, tuple[int, str, str, str, bool]] = {}   # tx -> (sent ns, door, hash, last 4, known)
        self.tx_seq = 0
        self.event_seq: dict[str, int] = {dev: 0 for dev, _ in edges}
        self.event_n = 0
        self.device_of: dict[str, str] = {}
        self.cards_at: dict[str, list[tuple[str, str]]] = {}
        self.client_of: dict[str, Any] = {}
        self.doors: list[str] = []
        self.req_topic: dict[str, str] = {}
        self.evt_topic: dict[str, str] = {}
        self.clients: list[Any] = []
        for c in range(CONNS):
            mine = edges[c::CONNS]
            if not mine:
                continue
            subs = [self.topics.all_decisions(dev) for dev, _ in mine]
            client = subscribed_client("127.0.0.1", port, f"campus-{run_id}-{index}-{c}", subs[0], self.on_message,
                                       inflight=INFLIGHT, keepalive=120)
            acked = threading.Event()
            client.on_subscribe = lambda *a, ev=acked: ev.set()
            if len(subs) > 1:
                client.subscribe([(s, 1) for s in subs[1:]])
                if not acked.wait(30):
                    raise RuntimeError("subscriptions not acknowledged")
            self.clients.append(client)
            for dev, doors in mine:
                for d in doors:
                    self.device_of[d], self.client_of[d] = dev, client
                    self.cards_at[d] = cards[door_area[d]]
                    self.req_topic[d] = self.topics.request(dev, d)
                    self.evt_topic[d] = self.topics.event(dev, d)
                    self.doors.append(d)
        self._reset()

    def _reset(self) -> None:
        self.sent_at = array("d")      # offsets (s) from the phase start of every request sent
        self.ans_sent = array("d")     # answered requests: their send offset ...
        self.ans_lat = array("d")      # ... and request->decision (ms)
        self.unmatched = 0             # decisions for no pending request (unknown or answered twice)
        self.wrong_door = 0
        self.misjudged = 0             # a cardholder refused at their building's door, or an unknown card granted
        self.events = {"access": 0, "door_opened": 0, "door_closed": 0}
        self.granted = self.denied = 0
        self.t0_ns = time.perf_counter_ns()

    def _event(self, client: Any, door: str, etype: str, **fields: Any) -> None:
        from doorkeep.clock import iso_ms
        from doorkeep.contract import EventMsg

        dev = self.device_of[door]
        with self.lock:
            self.event_seq[dev] += 1
            self.event_n += 1
            seq, n = self.event_seq[dev], self.event_n
            self.events[etype] += 1
        ev = EventMsg(id=f"{self.run_id}-{self.index}-{n}", seq=seq, ts=iso_ms(time.time()), device=dev, door=door,
                      type=etype, **fields)
        client.publish(self.evt_topic[door], ev.encode(), qos=1)

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        from doorkeep.contract import DecisionMsg

        t = time.perf_counter_ns()
        ans = DecisionMsg.decode(msg.payload)
        with self.lock:
            got = self.pending.pop(ans.transaction, None)
            if got is None:
                self.unmatched += 1
                return
            sent_ns, door, h, tail, known = got
            if ans.door != door:
                self.wrong_door += 1
            if ans.granted != known:
                self.misjudged += 1
            self.ans_sent.append((sent_ns - self.t0_ns) / 1e9)
            self.ans_lat.append((t - sent_ns) / 1e6)
            if ans.granted:
                self.granted += 1
            else:
                self.denied += 1
        self._event(client, door, "access", decision="granted" if ans.granted else "denied", reason=ans.reason,
                    decided_by="server", person=ans.person, credential_hash=h, credential_last4=tail,
                    transaction=ans.transaction, latency_ms=(t - sent_ns) / 1e6)
        if ans.granted and self.rng.random() < PAIR_SHARE:
            self._event(client, door, "door_opened")
            self._event(client, door, "door_closed")

    def badge(self) -> None:
        from doorkeep.clock import iso_ms
        from doorkeep.contract import RequestMsg

        door = self.rng.choice(self.doors)
        known = self.rng.random() >= UNKNOWN_SHARE
        h, tail = self.rng.choice(self.cards_at[door] if known else self.unknown)
        now = time.perf_counter_ns()
        with self.lock:
            self.tx_seq += 1
            tx = f"{self.run_id}{self.index}t{self.tx_seq}"
            self.pending[tx] = (now, door, h, tail, known)
            self.sent_at.append((now - self.t0_ns) / 1e9)
        self.client_of[door].publish(self.req_topic[door],
                                     RequestMsg(tx, door, h, tail, "em4100", iso_ms(time.time())).encode(), qos=1)

    def run(self, start_wall: float, offsets: list[float]) -> dict[str, Any]:
        """Badge at ``start_wall + offset`` for each offset (open loop), then wait for the last answers."""
        start_perf = time.perf_counter() + (start_wall - time.time())
        with self.lock:
            self._reset()
            self.t0_ns = int(start_perf * 1e9)
        for off in offsets:
            delay = start_perf + off - time.perf_counter()
            if delay > 0.0005:
                time.sleep(delay)
            self.badge()
        end_s = time.perf_counter() - start_perf
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    break
            time.sleep(0.02)
        with self.lock:
            unanswered = len(self.pending)
            self.pending.clear()
            return {"sent_at": self.sent_at, "ans_sent": self.ans_sent, "ans_lat": self.ans_lat,
                    "unanswered": unanswered, "unmatched": self.unmatched, "wrong_door": self.wrong_door,
                    "misjudged": self.misjudged,
                    "events": dict(self.events), "granted": self.granted, "denied": self.denied,
                    "pacer_end_s": end_s, "drained_s": time.perf_counter() - start_perf}

    def close(self) -> None:
        for c in self.clients:
            c.disconnect()
            c.loop_stop()


def _edges_main(conn: Any, port: int, site_id: str, index: int, run_id: str, edges: list[tuple[str, list[str]]],
                cards: dict[str, list[tuple[str, str]]], door_area: dict[str, str],
                unknown: list[tuple[str, str]]) -> None:
    try:
        sim = Edges(port, site_id, index, run_id, edges, cards, door_area, unknown)
        conn.send(("ready", len(sim.doors)))
        while True:
            cmd = conn.recv()
            if cmd is None:
                break
            start_wall, kind, seconds, rate = cmd
            if kind == "step":
                n = int(rate * seconds)
                offsets = [(k + index / PROCS) / rate for k in range(n)]
            else:  # "rush": rate is this process's peak badges/s
                n = int(rate * rush_mean_over_peak() * seconds)
                offsets = rush_offsets(n, seconds, (index + 0.5) / PROCS)
            conn.send(("done", sim.run(start_wall, offsets)))
        sim.close()
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class EdgeProcs:
    def __init__(self, port: int, site_id: str, run_id: str, edges: list[tuple[str, list[str]]],
                 cards: dict[str, list[tuple[str, str]]], door_area: dict[str, str],
                 unknown: list[tuple[str, str]]) -> None:
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        for k in range(PROCS):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_edges_main,
                            args=(child, port, site_id, k, run_id, edges[k::PROCS], cards, door_area, unknown),
                            daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)
        self.doors = sum(self._recv(p, "ready", 120) for p in self.pipes)

    @staticmethod
    def _recv(parent: Any, want: str, timeout: float) -> Any:
        if not parent.poll(timeout):
            raise RuntimeError(f"an edge process did not answer within {timeout:.0f} s")
        kind, body = parent.recv()
        if kind != want:
            raise RuntimeError(f"edge process said {kind}: {body}")
        return body

    def start(self, start_wall: float, kind: str, seconds: float, rate_total: float) -> None:
        for p in self.pipes:
            p.send((start_wall, kind, seconds, rate_total / PROCS))

    def results(self, timeout: float) -> list[dict[str, Any]]:
        return [self._recv(p, "done", timeout) for p in self.pipes]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def close(self) -> None:
        stop_children(self.pipes, self.procs)


# ------------------------------------------------------------ measuring

COMPONENTS = ("broker", "server", "store_thread", "database", "edges")


def _stat(pid: int, tid: int | None = None) -> tuple[float, int] | None:
    """(utime + stime in seconds, start time in clock ticks) of a process or one of its threads; None if gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[19])


def cpu_s(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (or one of its threads) from /proc, in seconds."""
    got = _stat(pid, tid)
    return got[0] if got else 0.0


class Meter:
    """CPU of each component and the events in the store, sampled at the edges of a measured window.

    ``servers``: the server process, or the worker processes (each also measured on its own, as ``w1``...). The
    database's processes (PostgreSQL) are listed anew at every sample and each one's CPU kept by (pid, start
    time), so a backend that ends between two samples does not take its earlier CPU out of the total."""

    def __init__(self, broker_pid: int, servers: list[ServerChild] | list[WorkerChild], edge_pids: list[int],
                 db: SqliteEvents | PostgresEvents) -> None:
        self.broker_pid, self.servers, self.edge_pids, self.db = broker_pid, servers, edge_pids, db
        self.store_tid = next((tid for tid, name in servers[0].threads.items() if name == "doorkeep-store"), None)
        self.names = [s.name for s in servers if isinstance(s, WorkerChild)]
        self._db_cpu: dict[tuple[int, int], float] = {}

    def stored(self, prefix: str | None = None) -> int:
        return self.db.count(prefix)

    def database(self) -> float | None:
        pids = self.db.pids()
        if pids is None:
            return None
        for pid in pids:
            got = _stat(pid)
            if got is not None:
                self._db_cpu[(pid, got[1])] = got[0]
        return sum(self._db_cpu.values())

    def sample(self) -> dict[str, float]:
        store_thread = cpu_s(self.servers[0].pid, self.store_tid) if self.store_tid else float("nan")
        db = self.database()
        per = {f"proc:{name}": cpu_s(s.pid) for name, s in zip(self.names, self.servers)}
        return {"t": time.perf_counter(), "broker": cpu_s(self.broker_pid),
                "server": sum(cpu_s(s.pid) for s in self.servers), "store_thread": store_thread,
                "database": store_thread if db is None else db, "edges": sum(cpu_s(p) for p in self.edge_pids),
                "stored": float(self.stored()), "load1": os.getloadavg()[0]} | per

    @staticmethod
    def delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
        return {k: b[k] - a[k] for k in a if k != "load1"} | {"load1": max(a["load1"], b["load1"])}


def _components(d: dict[str, float]) -> list[tuple[str, str]]:
    """(name, key in ``d``) of the components measured: COMPONENTS, then each worker process ("w1", ...)."""
    return [(k, k) for k in COMPONENTS] + [(k.split(":", 1)[1], k) for k in d if k.startswith("proc:")]


def window_figures(parts: list[dict[str, Any]], lo: float, hi: float, d: dict[str, float]) -> dict[str, Any]:
    """Offered, answered, latency, stored and CPU per decision for the requests of [lo, hi) of a phase."""
    secs = hi - lo
    offered = sum(1 for p in parts for s in p["sent_at"] if lo <= s < hi)
    lat = [lt for p in parts for s, lt in zip(p["ans_sent"], p["ans_lat"]) if lo <= s < hi]
    answered_in = sum(1 for p in parts for s, lt in zip(p["ans_sent"], p["ans_lat"]) if lo <= s + lt / 1e3 < hi)
    per = max(answered_in, 1)
    return {"seconds": secs, "offered_per_s": offered / secs, "answered_per_s": answered_in / secs,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat) if lat else float("nan"),
            "n": len(lat), "stored_per_s": d["stored"] / d["t"],
            "cpu_ms_per_decision": {name: 1e3 * d[k] / per for name, k in _components(d)},
            "cores_busy": {name: d[k] / d["t"] for name, k in _components(d)},
            "load1": d["load1"]}


def phase_totals(parts: list[dict[str, Any]]) -> dict[str, Any]:
    ev: dict[str, int] = {}
    for p in parts:
        for k, v in p["events"].items():
            ev[k] = ev.get(k, 0) + v
    return {"sent": sum(len(p["sent_at"]) for p in parts), "answered": sum(len(p["ans_lat"]) for p in parts),
            "unanswered": sum(p["unanswered"] for p in parts), "unmatched": sum(p["unmatched"] for p in parts),
            "wrong_door": sum(p["wrong_door"] for p in parts), "misjudged": sum(p["misjudged"] for p in parts),
            "events": ev,
            "granted": sum(p["granted"] for p in parts), "denied": sum(p["denied"] for p in parts),
            "drained_s": max(p["drained_s"] for p in parts), "pacer_end_s": max(p["pacer_end_s"] for p in parts)}


# ------------------------------------------------------------ the run

def run(steps: list[float], step_s: float, rush_s: float, peak: float, server_inflight: int | None = None,
        postgres: str | None = None, log: Any = print, workers: int | None = None,
        cardholders: int = CARDHOLDERS, buildings: int = BUILDINGS) -> dict[str, Any]:
    """One campus run: the one server process, or ``workers`` worker processes (PostgreSQL ``postgres`` only).

    ``rush_s`` 0: no rush. ``cardholders``: the people who badge (one card each), in ``buildings`` buildings
    (bench/gensite.py; 0: all of them allowed at every door); a badge at a door is one of its building's at random."""
    from doorkeep.credentials import card_hash, last4
    from simulators.brokers import MosquittoBroker

    if workers is not None and (workers < 1 or postgres is None):
        raise ValueError("several workers need at least one worker and a PostgreSQL store")
    if cardholders < max(1, buildings):
        raise ValueError("the edges badge the cards of at least one cardholder in every building")
    tmp = Path(tempfile.mkdtemp(prefix="doorkeep-bench-campus-"))
    broker = MosquittoBroker().start()
    server: ServerChild | WorkerGroup | None = None
    edges: EdgeProcs | None = None
    db: SqliteEvents | PostgresEvents = SqliteEvents(tmp / "data" / "doorkeep.db")
    try:
        if postgres is not None:
            db = PostgresEvents(postgres)
        t_setup = time.perf_counter()
        bundle = generate_site(tmp / "site", DOORS, DOORS_PER_EDGE, cardholders, buildings)
        key = secrets.token_bytes(32)
        devs = sorted((dev.id, sorted(dev.doors)) for dev in bundle.devices.values() if dev.id.startswith("gen-"))
        door_area = {d: bundle.site.doors[d].to_area for _, doors in devs for d in doors}
        cards: dict[str, list[tuple[str, str]]] = {}
        for i in range(cardholders):
            c = cardholder_card(i)
            area = building_id(cardholder_building(i, buildings)) if buildings else "lobby"
            cards.setdefault(area, []).append((card_hash(key, "em4100", c), last4(c)))
        rng = random.Random(20)
        unknown = []
        for _ in range(200):
            c = f"0E{rng.randrange(16 ** 8):08X}"
            unknown.append((card_hash(key, "em4100", c), last4(c)))
        if workers is None:
            server = ServerChild(tmp / "site", tmp / "data", broker.url, key, server_inflight,
                                 db.url if isinstance(db, PostgresEvents) else None)
            procs: list[ServerChild] | list[WorkerChild] = [server]
            up = f"server up in {time.perf_counter() - t_setup:.1f} s (pid {server.pid})"
        else:
            assert isinstance(db, PostgresEvents)
            server = WorkerGroup(workers, tmp / "site", tmp, broker.url, key, db.url)
            procs = server.workers
            up = (f"{workers} worker{'s' if workers > 1 else ''} up in {time.perf_counter() - t_setup:.1f} s ("
                  + ", ".join(f"{w.name} pid {w.pid}{' leads' if w.lead else ''}" for w in procs) + ")")
        t_server = time.perf_counter() - t_setup
        run_id = uuid.uuid4().hex[:8]
        edges = EdgeProcs(broker.port, bundle.site.id, run_id, devs, cards, door_area, unknown)
        assert broker.proc is not None
        meter = Meter(broker.proc.pid, procs, edges.pids(), db)
        log(f"   {len(devs):,} edges, {edges.doors:,} doors on {PROCS} processes x {CONNS} connections, "
            f"{cardholders:,} cardholders ({_buildings(buildings)}); "
            f"{up}, broker pid {broker.proc.pid}")
        events_sent = 0
        checks: list[tuple[str, bool]] = []
        totals: list[dict[str, Any]] = []

        def settle() -> float:
            """Wait until the store holds every event sent so far (the next phase starts on a clean store).

            Gives up when the count has not moved for ``STALL_S`` (an event lost: the final check reports it)."""
            t0 = time.perf_counter()
            last, moved = -1, time.monotonic()
            while True:
                now = meter.stored(f"{run_id}-")
                if now >= events_sent:
                    break
                if now != last:
                    last, moved = now, time.monotonic()
                elif time.monotonic() - moved > STALL_S or time.perf_counter() - t0 > SETTLE_S:
                    log(f"   the store stopped at {now:,} of {events_sent:,} events sent")
                    break
                time.sleep(0.25)
            return time.perf_counter() - t0

        # Warm-up, not measured: every edge is heard from once (the server's first message from a device sets up
        # its supervision and sequence state) before the first step.
        edges.start(time.time() + 0.3, "step", WARM_S, WARM_RATE)
        for t in edges.results(WARM_S + DRAIN_S + 60):
            events_sent += sum(t["events"].values())
            totals.append(phase_totals([t]))
        log(f"   warm-up: {WARM_RATE * WARM_S:,.0f} badges, store caught up {settle():.1f} s after")
        step_rows: list[dict[str, Any]] = []
        knee: dict[str, Any] | None = None
        for rate in steps:
            start = time.time() + 0.5
            edges.start(start, "step", step_s, rate)
            time.sleep(max(0.0, start + WARMUP_S - time.time()))
            a = meter.sample()
            time.sleep(max(0.0, start + step_s - time.time()))
            b = meter.sample()
            parts = edges.results(step_s + DRAIN_S + 60)
            tot = phase_totals(parts)
            totals.append(tot)
            events_sent += sum(tot["events"].values())
            row = window_figures(parts, WARMUP_S, step_s, Meter.delta(a, b))
            row |= {"offered_nominal": rate, "totals": tot, "store_catch_up_s": settle()}
            step_rows.append(row)
            fast = row["p99_ms"] <= P99_LIMIT_MS
            keeping_up = row["answered_per_s"] >= BEHIND * row["offered_per_s"]
            row["held"] = fast and keeping_up
            row["keeping_up"] = keeping_up
            row["verdict"] = ("held" if row["held"] else "answers falling behind" if not keeping_up
                              else f"p99 over {P99_LIMIT_MS:g} ms")
            cpu = row["cpu_ms_per_decision"]
            log(f"   step {rate:>6,.0f}/s: offered {row['offered_per_s']:>6,.0f}/s answered {row['answered_per_s']:>6,.0f}/s"
                f" p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms stored {row['stored_per_s']:,.0f}/s"
                f" CPU ms/decision broker {cpu['broker']:.3f} server {cpu['server']:.3f}{_per_worker(cpu)}"
                f" database {cpu['database']:.3f} edges {cpu['edges']:.3f}"
                f" load {row['load1']:.1f}: {row['verdict']}")
            if row["held"] and all(r["held"] for r in step_rows):
                knee = row
            # Past the latency knee the steps go on until the answers fall behind (where the machine flattens the
            # curve), or the p99 passes the doors' 1 s timeout (a backlog that only grows from there).
            if not keeping_up or row["p99_ms"] > STOP_P99_MS:
                break

        # The morning rush (none with rush_s 0).
        rush: dict[str, Any] | None = None
        if rush_s > 0:
            start = time.time() + 0.5
            edges.start(start, "rush", rush_s, peak)
            samples = []
            for i in range(BUCKETS + 1):
                time.sleep(max(0.0, start + i * rush_s / BUCKETS - time.time()))
                samples.append(meter.sample())
            parts = edges.results(rush_s + DRAIN_S + 60)
            tot = phase_totals(parts)
            totals.append(tot)
            events_sent += sum(tot["events"].values())
            buckets = [window_figures(parts, i * rush_s / BUCKETS, (i + 1) * rush_s / BUCKETS,
                                      Meter.delta(samples[i], samples[i + 1])) for i in range(BUCKETS)]
            whole = window_figures(parts, 0.0, rush_s, Meter.delta(samples[0], samples[-1]))
            rush = {"seconds": rush_s, "real_seconds": RUSH_REAL_S, "speedup": RUSH_REAL_S / rush_s, "peak": peak,
                    "badges": tot["sent"], "buckets": buckets, "whole": whole, "totals": tot,
                    "answered_after_rush_s": tot["drained_s"] - rush_s}
            rush["store_catch_up_s"] = settle()
            for i, bk in enumerate(buckets):
                log(f"   rush {i + 1:>2}/{BUCKETS}: offered {bk['offered_per_s']:>6,.0f}/s answered "
                    f"{bk['answered_per_s']:>6,.0f}/s p50 {bk['p50_ms']:.2f} ms p99 {bk['p99_ms']:.2f} ms stored "
                    f"{bk['stored_per_s']:,.0f}/s load {bk['load1']:.1f}")

        edges.close()
        edges = None
        counters = server.stop()
        server = None
        stored_ours, distinct_ours, by_type = db.final(f"{run_id}-")
        sent_types: dict[str, int] = {}
        for t in totals:
            for k, v in t["events"].items():
                sent_types[k] = sent_types.get(k, 0) + v
        checks = [
            ("every request answered", sum(t["unanswered"] for t in totals) == 0),
            ("no decision without its request (or twice)", sum(t["unmatched"] for t in totals) == 0),
            ("every decision for its request's door", sum(t["wrong_door"] for t in totals) == 0),
            ("every cardholder granted at their building's doors, every unknown card refused",
             sum(t["misjudged"] for t in totals) == 0),
            ("every event stored", stored_ours == events_sent),
            ("no event stored twice", distinct_ours == stored_ours),
            ("each event type stored as sent", all(by_type.get(k, 0) == v for k, v in sent_types.items())),
        ]
        if workers is not None:
            checks += worker_checks(counters)
        return {"steps": step_rows, "knee": knee, "rush": rush, "events_sent": events_sent,
                "events_stored": stored_ours, "events_distinct": distinct_ours, "sent_by_type": sent_types,
                "stored_by_type": by_type, "checks": checks, "server_counters": counters,
                "setup": {"doors": DOORS, "edges": len(devs), "cardholders": cardholders, "buildings": buildings,
                          "procs": PROCS, "conns_per_proc": CONNS,
                          "server_start_s": t_server, "store": db.engine, "workers": workers,
                          "server_inflight": "the server's own" if server_inflight is None else server_inflight}}
    finally:
        if edges is not None:
            edges.close()
        if server is not None:
            server.stop()
        broker.stop()
        db.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _buildings(n: int) -> str:
    return "each allowed at every door" if n == 0 else f"in {n:,} buildings, each badging at its own building's doors"


def _label(res: dict[str, Any]) -> str:
    n = res["setup"]["workers"]
    store = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}[res["setup"]["store"]]
    return f"{store}, one server" if n is None else f"{store}, {n} worker{'s' if n > 1 else ''}"


def _workers_of(cpu: dict[str, float]) -> list[str]:
    return [k for k in cpu if k not in COMPONENTS]


def _per_worker(cpu: dict[str, float], fmt: str = ".3f") -> str:
    """" (w1 0.512 w2 0.301)": each worker process's share of a figure; "" for the one server process."""
    names = _workers_of(cpu)
    return " (" + " ".join(f"{k} {cpu[k]:{fmt}}" for k in names) + ")" if names else ""


def _flattens(res: dict[str, Any]) -> str:
    """How the top of the steps reads: where the answers fell behind, or no flattening within the steps."""
    if any(not r.get("keeping_up", True) for r in res["steps"]):
        return "flattens at"
    return "did not flatten within the steps (every step kept up), top"


def _best(res: dict[str, Any]) -> float:
    rush = res["rush"]
    return max([r["answered_per_s"] for r in res["steps"]] + [b["answered_per_s"] for b in (rush or {}).get("buckets", [])])


def worker_checks(stopped: dict[str, dict[str, Any]]) -> list[tuple[str, bool]]:
    """The workers' own checks from what each said as it stopped (``WorkerGroup.stop``; a worker that died said
    nothing): w1 led to the end and no worker lost or took the lead, and the broker gave every worker requests."""
    return [
        ("w1 led throughout, no worker lost the lead",
         all(c.get("leader") == (name == "w1") and c.get("lost") is False for name, c in stopped.items())),
        ("every worker decided some of the requests",
         all(c.get("counters", {}).get("decisions", 0) > 0 for c in stopped.values())),
    ]


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    setup = res["setup"]
    n = setup["workers"]
    print()
    if n is None:
        servers = f"one server process (QoS 1 window {setup['server_inflight']})"
    else:
        servers = (f"{n} server worker process{'es' if n > 1 else ''} (w1 leads: events, policies, supervision; "
                   f"every worker answers its share of the requests through $share/doorkeep-SITE/...)")
    print(f"Simulated campus: {setup['doors']:,} doors on {setup['edges']:,} edges "
          f"({PROCS} processes x {CONNS} paho connections), {setup['cardholders']:,} cardholders "
          f"({_buildings(setup['buildings'])}; {100 * UNKNOWN_SHARE:g} % of badges unknown cards), {servers}, "
          f"store on {setup['store']}; "
          f"{os.cpu_count()} cores, {platform.python_version()}")
    names = _workers_of(res["steps"][0]["cpu_ms_per_decision"]) if res["steps"] else []
    print(f"{'offered/s':>10} {'answered/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'stored/s':>9} "
          f"{'broker':>7} {'server' if n is None else 'workers':>7} " + "".join(f"{w:>7} " for w in names)
          + f"{'database':>9} {'edges':>7}  CPU ms/decision; load")
    for r in res["steps"]:
        c = r["cpu_ms_per_decision"]
        print(f"{r['offered_per_s']:>10,.0f} {r['answered_per_s']:>11,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['stored_per_s']:>9,.0f} {c['broker']:>7.3f} {c['server']:>7.3f} "
              + "".join(f"{c[w]:>7.3f} " for w in names)
              + f"{c['database']:>9.3f} {c['edges']:>7.3f}  {r['load1']:.1f}  {r['verdict']}")
    k = res["knee"]
    if k:
        busy = k["cores_busy"]
        print(f"knee: {k['offered_per_s']:,.0f} decisions/s offered, {k['answered_per_s']:,.0f}/s answered, "
              f"p99 {k['p99_ms']:.2f} ms; cores busy there: broker {busy['broker']:.2f}, server {busy['server']:.2f}"
              f"{_per_worker(busy, '.2f')} (store thread {busy['store_thread']:.2f}), database {busy['database']:.2f}, "
              f"edges {busy['edges']:.2f} of {os.cpu_count()}")
    else:
        print("knee: below the first step")
    top = max(res["steps"], key=lambda r: r["answered_per_s"])
    busy = top["cores_busy"]
    print(f"{_flattens(res)}: {top['answered_per_s']:,.0f} decisions/s answered (step offering {top['offered_per_s']:,.0f}/s), "
          f"cores busy there: broker {busy['broker']:.2f}, server {busy['server']:.2f}{_per_worker(busy, '.2f')}, "
          f"database {busy['database']:.2f}{' (in the server)' if setup['store'] == 'sqlite' else ''}, "
          f"edges {busy['edges']:.2f}; load {top['load1']:.1f}")
    ru = res["rush"]
    if ru is None:
        print("rush: not run (--rush-seconds 0)")
    else:
        w = ru["whole"]
        print(f"rush: 30 min played in {ru['seconds']:g} s (x{ru['speedup']:.0f}), {ru['badges']:,} badges, peak offered "
              f"{ru['peak']:,.0f}/s (a real peak of {ru['peak'] / ru['speedup']:,.0f}/s): answered "
              f"{w['answered_per_s']:,.0f}/s on average, p50 {w['p50_ms']:.2f} ms p99 {w['p99_ms']:.2f} ms max "
              f"{w['max_ms']:.0f} ms; last answer {ru['answered_after_rush_s']:.1f} s after the rush, store caught up "
              f"{ru['store_catch_up_s']:.1f} s later")
    print(f"events: {res['events_sent']:,} sent, {res['events_stored']:,} stored ({res['events_distinct']:,} distinct), "
          f"lost {res['events_sent'] - res['events_stored']:,}; by type sent {res['sent_by_type']} stored "
          f"{res['stored_by_type']}")
    if n is not None:
        decided = {name: c.get("counters", {}).get("decisions", 0) for name, c in res["server_counters"].items()}
        total = max(sum(decided.values()), 1)
        print("decided by each worker (the whole run): " + ", ".join(
            f"{name} {decided[name]:,} ({100 * decided[name] / total:.0f} %)" for name in sorted(decided)))
    best = _best(res)
    print(f"target: >= {TARGET_RATE:,.0f} decisions/s sustained, persisted: best answered {best:,.0f}/s, knee "
          f"{(k or {}).get('answered_per_s', 0):,.0f}/s -> {'MET' if k and k['answered_per_s'] >= TARGET_RATE else 'MISSED'}")
    print(f"capacity curve (figure 3): {CAPACITY_FIGURE}")
    if setup["store"] == "sqlite":
        print("database = the server's store thread (SQLite works inside the server process, so it is part of 'server')")
    else:
        print("database = the PostgreSQL processes serving the store's database (backends, WAL writer, bg writer, "
              f"checkpointer), beside the {'server process' if n is None else 'worker processes'}")
    for name, ok in res["checks"]:
        print(f"check: {name}: {'ok' if ok else 'FAILED'}")


def side_by_side(results: list[dict[str, Any]]) -> None:
    """Every run's steps in one table, then each run's knee, top and checks: the workers beside the one server."""
    print()
    print("Side by side (CPU in ms per decision answered; 'server' = the server process, or all the worker "
          "processes together, each in 'per worker'; load = 1-minute load average):")
    print(f"{'run':<24} {'offered/s':>9} {'answered/s':>10} {'p50 ms':>7} {'p99 ms':>8} {'stored/s':>8} {'broker':>6} "
          f"{'server':>6} {'database':>8} {'edges':>6} {'load':>4}  {'verdict':<24} per worker")
    for res in results:
        for r in res["steps"]:
            c = r["cpu_ms_per_decision"]
            print(f"{_label(res):<24} {r['offered_per_s']:>9,.0f} {r['answered_per_s']:>10,.0f} {r['p50_ms']:>7.2f} "
                  f"{r['p99_ms']:>8.2f} {r['stored_per_s']:>8,.0f} {c['broker']:>6.3f} {c['server']:>6.3f} "
                  f"{c['database']:>8.3f} {c['edges']:>6.3f} {r['load1']:>4.1f}  {r['verdict']:<24}"
                  f"{_per_worker(c).strip(' ()')}".rstrip())
    for res in results:
        k = res["knee"]
        top = max(res["steps"], key=lambda r: r["answered_per_s"])
        knee = (f"knee {k['answered_per_s']:,.0f}/s answered (p99 {k['p99_ms']:.2f} ms)" if k
                else "knee below the first step")
        lost = res["events_sent"] - res["events_stored"]
        twice = res["events_stored"] - res["events_distinct"]
        ok = all(good for _, good in res["checks"])
        print(f"{_label(res)}: {knee}; {_flattens(res)} {top['answered_per_s']:,.0f}/s answered (offered "
              f"{top['offered_per_s']:,.0f}/s, p99 {top['p99_ms']:.2f} ms); best {_best(res):,.0f}/s; events "
              f"{res['events_sent']:,} sent, {res['events_stored']:,} stored, lost {lost:,}, twice {twice:,}; "
              f"checks {'all ok' if ok else 'FAILED: ' + ', '.join(n for n, good in res['checks'] if not good)}; "
              f"{res['wall_s']:.0f} s, load {res['load_at_start'][0]:.2f} -> {res['load_at_end'][0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="about 60 s (30 s of it starting the server): short steps and a 10 s rush")
    ap.add_argument("--steps", help="offered decisions/s of the steps, comma-separated "
                    "(default 250,500,750,1000,1250,1500,2000,2500,3000; --quick 400,800,1200)")
    ap.add_argument("--step-seconds", type=float, help="seconds per step, the first one unmeasured (default 6; quick 3)")
    ap.add_argument("--rush-seconds", type=float, help="wall seconds the 30-minute rush is played in (default 60; "
                    "quick 10; 0: no rush)")
    ap.add_argument("--peak", type=float, default=TARGET_RATE, help="the rush's peak offered badges/s (default 3000)")
    ap.add_argument("--server-inflight", type=int, help="experiment: set the one server process's paho QoS 1 window "
                    "to this (0 = no limit, what server/bus.py sets itself since the fix of docs/performance.md) "
                    "instead of the server's own setting; the workers keep theirs")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres", metavar="ADMIN_URL",
                    help="the PostgreSQL server the PostgreSQL run creates (and drops) its database on "
                    "(default postgresql://postgres@127.0.0.1:5432/postgres, as the tests)")
    ap.add_argument("--store", help="sqlite, postgresql or both (sqlite,postgresql; the default, PostgreSQL skipped "
                    "with a note when none answers; --quick: sqlite; with --workers: postgresql): the one-server runs")
    ap.add_argument("--workers", metavar="N,N,...", help="after the one-server runs, run the campus once per count "
                    "N with the server as N worker processes (server.workers.Worker, what `doorkeep server --worker` "
                    "runs) on a fresh PostgreSQL database: w1 starts first and leads, the others stand by, all "
                    "answer their share of the requests through the shared subscription; e.g. 1,2,4. Prints every "
                    "run side by side at the end. Needs PostgreSQL (--postgres). Default: no worker runs")
    ap.add_argument("--cardholders", type=int, default=CARDHOLDERS, metavar="N",
                    help=f"people on the generated site, one EM4100 card each, every badge one of them at random "
                    f"(or, {100 * UNKNOWN_SHARE:g} %% of badges, an unknown card); the server imports them at its "
                    f"first start (default {CARDHOLDERS:,})")
    ap.add_argument("--buildings", type=int, default=BUILDINGS, metavar="B",
                    help=f"split the edges (in order) and the cardholders (round robin) into B buildings: a "
                    f"building's doors lead into its own area and only its cardholders may enter and badge there, "
                    f"so each edge's signed policy carries its building's people (default {BUILDINGS}); 0: every "
                    "door leads into the demo's lobby and every cardholder may badge everywhere, so every edge's "
                    "policy carries every cardholder (10,000 of them: minutes of signing at the server's start)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    steps = args.steps or ("400,800,1200" if args.quick else "250,500,750,1000,1250,1500,2000,2500,3000")
    step_s = args.step_seconds or (3.0 if args.quick else 6.0)
    rush_s = args.rush_seconds if args.rush_seconds is not None else (10.0 if args.quick else 60.0)
    try:
        counts = [int(x) for x in (args.workers or "").split(",") if x.strip()]
    except ValueError:
        counts = [0]
    if args.buildings < 0 or args.buildings > DOORS // DOORS_PER_EDGE:
        ap.error(f"--buildings: from 0 to {DOORS // DOORS_PER_EDGE:,} (one edge each)")
    if args.cardholders < max(1, args.buildings):
        ap.error("--cardholders: at least 1, and at least one per building")
    if any(n < 1 for n in counts):
        ap.error(f"--workers {args.workers}: worker counts are whole numbers from 1, comma-separated (e.g. 1,2,4)")
    default_store = "postgresql" if counts else "sqlite" if args.quick else "sqlite,postgresql"
    engines = [e.strip() for e in (args.store or default_store).split(",")]
    if "postgresql" in engines or counts:
        why = postgres_unavailable(args.postgres)
        if why:
            print(f"PostgreSQL run{'s' if counts else ''} skipped: {why}")
            if args.store or counts:
                return 2
            engines.remove("postgresql")
    plan: list[tuple[str, int | None]] = [(e, None) for e in engines] + [("postgresql", n) for n in counts]
    results, ok = [], True
    for engine, n in plan:
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        print(f"== store on {engine}" + ("" if n is None else f", {n} worker{'s' if n > 1 else ''}"))
        res = run([float(x) for x in steps.split(",") if x.strip()], step_s, rush_s, args.peak, args.server_inflight,
                  args.postgres if engine == "postgresql" else None, workers=n, cardholders=args.cardholders,
                  buildings=args.buildings)
        res["load_at_start"] = load0
        res["load_at_end"] = os.getloadavg()
        res["wall_s"] = time.perf_counter() - t0
        report(res, args)
        print(f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, at end "
              f"{res['load_at_end'][0]:.2f} {res['load_at_end'][1]:.2f} {res['load_at_end'][2]:.2f}; "
              f"{res['wall_s']:.0f} s")
        results.append(res)
        ok = ok and all(good for _, good in res["checks"])
    if counts:
        side_by_side(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=list) + "\n")
    return 0 if ok else 1


def postgres_unavailable(admin_url: str) -> str:
    """Why no PostgreSQL run can be made ("" when one answers at ``admin_url``)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install -e '.[server]')"
    try:
        psycopg.connect(admin_url, autocommit=True, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL answers at {admin_url}: {str(exc).strip().splitlines()[0]}"
    return ""


if __name__ == "__main__":
    sys.exit(main())
