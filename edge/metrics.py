"""The edge's own health and Prometheus metrics: ``/healthz`` and ``/metrics`` on a local port (``[metrics]``).

A Pi's own monitoring (node exporter's neighbour, a Prometheus on the site network, a systemd health check)
asks the edge two things: is it OK (``/healthz``: 200, or 503 with the reasons), and how is it doing
(``/metrics``: Prometheus text). Both are served only when the device file has a ``[metrics]`` table, by one
small daemon thread (``doorkeep-metrics-DEVICE``) running a single-threaded ``http.server``: the reactor
(edge/loop.py) never parses HTTP, and without ``[metrics]`` there is no thread, no socket and prometheus_client
is never imported (the edge's footprint, docs/performance.md).

Who owns what (docs/concurrency.md): the scrape runs on the metrics thread, but the doors, relays, readers'
health, the link and the decision counters belong to the loop. So a scrape never reads them itself: it hands
:func:`take_snapshot` to the loop (``call_and_wait``, one wake-up) and reads the frozen copy it gets back. A
loop that does not answer within :data:`LOOP_ANSWER_S` is itself the finding (``loop_not_answering``), and the
metrics it owns are left out of that scrape rather than read unsafely. What is thread-safe by design is read
directly: the outbox's counters and its oldest waiting event (kept in memory by the outbox), each camera's stats
(a copy under the camera's condition), the certificate files.

Labels are bounded and never name a person or a card: ``door`` (this device's doors), ``reason`` (the reason
codes of doorkeep.decision.Reason, else ``other``), ``decided_by``, ``decision``, ``type`` (the declared event
types), ``camera``, ``state`` and ``certificate``. Every metric is listed in docs/operations.md ("Metrics",
"The edge").

Each agent has its own :class:`prometheus_client.CollectorRegistry` (never the process-wide one: tests and the
demo run several agents in one process), holding one custom collector that reads the agent at scrape time and
prometheus_client's process collector.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doorkeep import __version__, vocabulary
from doorkeep.config import MetricsConfig
from doorkeep.contract import EventMsg
from doorkeep.decision import Reason
from edge.door import DoorState
from edge.errors import EdgeError

if TYPE_CHECKING:
    from edge.agent import EdgeAgent

log = logging.getLogger("doorkeep.edge.metrics")

#: How long a scrape waits for the loop to hand over its snapshot before it says the loop is not answering.
LOOP_ANSWER_S = 2.0
#: A client that connects and sends nothing is dropped after this (the server answers one request at a time).
REQUEST_TIMEOUT_S = 5.0
#: Badge-to-relay buckets in seconds: offline decisions take about a millisecond, online a few, a decision
#: timeout (1 s by default) and a PIN wait more.
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                        10.0)
#: The label value for anything outside a bounded label's set (a reason code a newer server sends, ...).
OTHER = "other"
REASON_CODES: frozenset[str] = frozenset(r.value for r in Reason)
DECIDERS: frozenset[str] = frozenset({"server", "edge", "edge_offline"})
DECISIONS: frozenset[str] = frozenset({"granted", "denied"})
EVENT_TYPES: frozenset[str] = frozenset(vocabulary.EVENTS)
DOOR_STATES: tuple[str, ...] = tuple(s.value for s in DoorState)
PROM = "doorkeep_edge_"


class MetricsError(EdgeError):
    """The metrics listener could not start (its port taken, prometheus_client missing)."""


# ------------------------------------------------------------------------------------------ loop-owned state


@dataclass
class _Histogram:
    """Counts per bucket (not cumulative; the last one is above the largest bound), their sum and number."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs as Prometheus wants them, ``+Inf`` last."""
        out, running = [], 0
        for bound, n in zip((*(repr(b) for b in LATENCY_BUCKETS_S), "+Inf"), self.counts):
            running += n
            out.append((bound, running))
        return out


class AccessStats:
    """The access decisions this edge applied, counted from the access events it publishes.

    Owned by the loop: :meth:`observe` is called from ``EdgeAgent._publish_event`` on the loop, and
    :meth:`copy` runs there too (inside :func:`take_snapshot`). Every label is clamped to a bounded set here,
    so a reason code a newer server invents or a malformed event cannot grow the label space."""

    def __init__(self, doors: Iterable[str]) -> None:
        self._doors = frozenset(doors)
        self.decisions: Counter[tuple[str, str]] = Counter()  # (door, reason)
        self.offline: Counter[tuple[str, str]] = Counter()  # (door, granted|denied), decided_by edge_offline
        self.latency: dict[tuple[str, str], _Histogram] = {}  # (door, decided_by) -> badge to relay

    def observe(self, ev: EventMsg) -> None:
        if ev.type != "access":
            return
        door = ev.door if ev.door in self._doors else OTHER
        self.decisions[(door, ev.reason if ev.reason in REASON_CODES else OTHER)] += 1
        decided_by = ev.decided_by if ev.decided_by in DECIDERS else OTHER
        if decided_by == "edge_offline":
            self.offline[(door, ev.decision if ev.decision in DECISIONS else OTHER)] += 1
        if ev.latency_ms is not None and ev.latency_ms >= 0:
            self.latency.setdefault((door, decided_by), _Histogram()).observe(ev.latency_ms / 1000.0)

    def copy(self) -> AccessStats:
        out = AccessStats(self._doors)
        out.decisions = Counter(self.decisions)
        out.offline = Counter(self.offline)
        out.latency = {k: _Histogram(list(h.counts), h.total) for k, h in self.latency.items()}
        return out


@dataclass(frozen=True)
class DoorSnapshot:
    state: str
    relay: bool
    open: bool
    tampered: bool
    reader_online: bool
    reader_frames: int
    reader_faults: int


@dataclass(frozen=True)
class LoopSnapshot:
    """What the loop owns, copied on the loop at one instant for a scrape on another thread."""

    wall: float
    doors: dict[str, DoorSnapshot]
    access: AccessStats
    events: dict[str, int]
    errors: int
    mqtt_connected: bool
    mqtt_connections: int
    mqtt_down_s: float
    server_reachable: bool
    policy_version: int | None
    policy_issued_at: float | None
    problems: list[dict[str, Any]]


def door_problems(agent: EdgeAgent) -> list[dict[str, Any]]:
    """On the loop: what is wrong at this edge as the server could see it too (the retained state's
    ``health``): no policy and no site file (every badge refused ``no_policy``), and each reader reported
    offline (a reader still in its start-up grace is not)."""
    problems: list[dict[str, Any]] = []
    if agent.site is None and (agent.policy is None or agent.policy.current is None):
        problems.append({"check": "no_policy"})
    for did, rt in agent.doors.items():
        if agent.reader_health(did) is False:
            problem: dict[str, Any] = {"check": "reader_offline", "door": did}
            cause = rt.reader.health_reason
            if cause:
                problem["cause"] = cause
            problems.append(problem)
    return problems


def remote_health(agent: EdgeAgent) -> dict[str, Any]:
    """On the loop: the retained state's compact ``health`` object, ``{"ok", "problems"}``."""
    problems = door_problems(agent)
    return {"ok": not problems, "problems": problems}


def take_snapshot(agent: EdgeAgent, broker_grace_s: float) -> LoopSnapshot:
    """On the loop: a frozen copy of the loop's state for one scrape, with the health problems found in it."""
    link = agent.link
    since = link.disconnected_since
    down_s = 0.0 if link.connected or since is None else max(0.0, time.monotonic() - since)
    doors = {}
    for did, rt in agent.doors.items():
        stats = rt.reader.stats
        health = agent.reader_health(did)
        doors[did] = DoorSnapshot(state=rt.machine.state.value, relay=bool(rt.relay_on),
                                  open=bool(rt.machine.door_open), tampered=bool(rt.machine.tampered),
                                  reader_online=stats.online if health is None else health,
                                  reader_frames=stats.frames, reader_faults=sum(stats.faults.values()))
    problems = door_problems(agent)
    if down_s > broker_grace_s:
        problems.insert(0, {"check": "broker_disconnected", "for_s": round(down_s, 1)})
    current = agent.policy.current if agent.policy is not None else None
    prefix = "events_"
    return LoopSnapshot(
        wall=agent.clock.wall(), doors=doors, access=agent.access_stats.copy(),
        events={k[len(prefix):]: v for k, v in agent.counters.items() if k.startswith(prefix)},
        errors=agent.counters["errors"] + agent.loop.errors,
        mqtt_connected=link.connected, mqtt_connections=link.connections, mqtt_down_s=down_s,
        server_reachable=agent.server_reachable,
        policy_version=current.version if current is not None else None,
        policy_issued_at=current.issued_at if current is not None else None,
        problems=problems)


# ------------------------------------------------------------------------------------------ the listener


def _http_server(address: tuple[str, int], metrics: EdgeMetrics) -> Any:
    """A single-threaded ``http.server`` answering ``/metrics`` and ``/healthz`` from ``metrics``.

    http.server (and the 38 modules it pulls in, 2.6 MB) is imported here, when ``[metrics]`` is configured, not
    when the agent is: an edge without the table pays nothing for it."""
    import socketserver
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        timeout = REQUEST_TIMEOUT_S
        server_version = "doorkeep-edge"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(body=False)

        def _answer(self, *, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                data, ctype = metrics.render(self.headers.get("Accept"))
                status = 200
            elif path == "/healthz":
                status, doc = metrics.health()
                data, ctype = json.dumps(doc, separators=(",", ":")).encode() + b"\n", "application/json"
            else:
                status, data, ctype = 404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            log.debug("metrics: %s %s", self.address_string(), format % args)

    class Server(HTTPServer):
        """One request at a time on the metrics thread; never looks the host name up (``HTTPServer.server_bind``
        calls ``getfqdn``, which can hang on a Pi without DNS)."""

        address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET

        def server_bind(self) -> None:
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

        def handle_error(self, request: Any, client_address: Any) -> None:
            log.warning("metrics: error answering %s", client_address, exc_info=True)

    server = Server(address, Handler)
    # A connection reset between select and accept must not park the thread in accept() (nor in
    # handle_request's own wait): the listening socket never blocks, and that wait is bounded.
    server.socket.setblocking(False)
    server.timeout = 0.5
    return server


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class EdgeMetrics:
    """The ``[metrics]`` listener of one agent: ``/metrics`` and ``/healthz`` on ``config.host:config.port``.

    :meth:`start` binds the port and starts the one thread; :meth:`stop` ends it. :meth:`health` and
    :meth:`render` may also be called directly (any thread but the loop's)."""

    def __init__(self, agent: EdgeAgent, config: MetricsConfig) -> None:
        self.agent = agent
        self.config = config
        self.registry: Any = None
        self._server: Any = None  # http.server's HTTPServer, once started
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None  # stop() writes to [1], the thread ends
        self._certs: dict[Path, tuple[int, float]] = {}  # path -> (mtime_ns, not valid after, epoch s)
        self._certs_lock = threading.Lock()

    # -------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Bind and serve; MetricsError when the port cannot be had or prometheus_client is missing."""
        try:
            from prometheus_client import CollectorRegistry, ProcessCollector
        except ImportError as exc:
            raise MetricsError(f"{self.agent.device.file}: [metrics] needs prometheus_client (fix: install "
                               "doorkeep[edge], or remove [metrics])") from exc
        registry = CollectorRegistry(auto_describe=False)  # per agent: never the process-wide registry
        registry.register(_Collector(self))
        ProcessCollector(registry=registry)
        self.registry = registry
        host, port = self.config.host, self.config.port
        try:
            self._server = _http_server((host, port), self)
        except OSError as exc:
            raise MetricsError(f"{self.agent.device.file}: [metrics] cannot listen on {host}:{port}: {exc} "
                               "(fix: choose a free port, or a host address of this Pi)") from exc
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=self._serve, args=(self._server, self._wake[0]),
                                        name=f"doorkeep-metrics-{self.agent.device.id}", daemon=True)
        self._thread.start()
        (log.info if is_loopback(host) else log.warning)(
            "%s: /metrics and /healthz on http://%s:%d%s", self.agent.device.id, host, self.port,
            "" if is_loopback(host) else " (not loopback: anyone who reaches this address may read them; "
                                         "they need no login)")

    @staticmethod
    def _serve(server: Any, wake: socket.socket) -> None:
        """The metrics thread: asleep in ``select`` until a scraper connects or :meth:`stop` writes to ``wake``
        (no polling: an idle edge is not woken by its listener), then one request at a time."""
        with selectors.DefaultSelector() as sel:
            sel.register(server.socket, selectors.EVENT_READ, server)
            sel.register(wake, selectors.EVENT_READ, None)
            while True:
                for key, _ in sel.select():
                    if key.data is None:
                        return
                    server.handle_request()  # the socket is readable: accepts and answers without waiting

    def stop(self) -> None:
        """End the thread (after the request being answered, if any) and close the port."""
        server, self._server = self._server, None
        wake, self._wake = self._wake, None
        if server is None or wake is None:
            return
        wake[1].send(b"x")
        if self._thread is not None:
            self._thread.join(REQUEST_TIMEOUT_S + 1.0)
        server.server_close()
        for sock in wake:
            sock.close()

    @property
    def port(self) -> int:
        """The bound port (the configured one; the kernel's choice when configured 0, as tests do)."""
        return self._server.server_port if self._server is not None else self.config.port

    # ---------------------------------------------------------------- reading

    def snapshot(self) -> LoopSnapshot | None:
        """The loop's state, copied on the loop; None when the loop is not running or did not answer."""
        loop = self.agent.loop
        if not loop.running:
            return None
        done, snap = loop.call_and_wait(lambda: take_snapshot(self.agent, self.config.broker_grace_s),
                                        LOOP_ANSWER_S)
        return snap if done else None

    def health(self) -> tuple[int, dict[str, Any]]:
        """``(200, doc)`` when nothing is wrong, else ``(503, doc)`` naming each problem."""
        snap = self.snapshot()
        if snap is None:
            problems: list[dict[str, Any]] = [{"check": "loop_not_running" if not self.agent.loop.running
                                               else "loop_not_answering"}]
        else:
            problems = snap.problems
        ok = not problems
        return (200 if ok else 503), {"status": "ok" if ok else "unhealthy", "device": self.agent.device.id,
                                      "problems": problems}

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in the text format the scraper asked for (Prometheus text, or OpenMetrics)."""
        from prometheus_client.exposition import choose_encoder

        if self.registry is None:
            raise MetricsError("the metrics listener is not started")
        encoder, ctype = choose_encoder(accept or "")
        return encoder(self.registry), ctype

    def certificate_expiry(self) -> dict[str, float]:
        """``certificate`` label -> not-valid-after (epoch s) of the device's own client certificate and the site
        CA, for those the broker configuration names and that can be read (any thread; files re-read only
        when they change)."""
        out: dict[str, float] = {}
        broker = self.agent.device.broker
        for label, path in (("client", broker.cert_file), ("ca", broker.ca_file)):
            if path is None:
                continue
            not_after = self._not_after(Path(path))
            if not_after is not None:
                out[label] = not_after
        return out

    def _not_after(self, path: Path) -> float | None:
        from cryptography import x509

        try:
            mtime = path.stat().st_mtime_ns
            with self._certs_lock:
                cached = self._certs.get(path)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            cert = x509.load_pem_x509_certificate(path.read_bytes())  # the first certificate of the file
            not_after = cert.not_valid_after_utc.timestamp()
        except (OSError, ValueError) as exc:
            log.debug("metrics: cannot read the certificate %s: %s", path, exc)
            return None
        with self._certs_lock:
            self._certs[path] = (mtime, not_after)
        return not_after

    def collect(self) -> Iterator[Any]:
        """The agent's metrics at this instant (prometheus_client calls this on the scraping thread)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        agent = self.agent

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(PROM + name, doc, labels=list(labels))

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> CounterMetricFamily:
            return CounterMetricFamily(PROM + name, doc, labels=list(labels))

        info = gauge("info", "This edge: its device id and doorkeep version (always 1).", ("device", "version"))
        info.add_metric([agent.device.id, __version__], 1)
        yield info

        snap = self.snapshot()
        up = gauge("loop_responsive", "1 when the edge's loop answered this scrape within 2 s; without it the "
                                      "metrics the loop owns are left out of the scrape.")
        up.add_metric([], 1 if snap is not None else 0)
        yield up
        healthy = gauge("healthy", "1 when /healthz would answer 200, 0 when 503.")
        healthy.add_metric([], 1 if snap is not None and not snap.problems else 0)
        yield healthy

        if snap is not None:
            yield from self._loop_metrics(snap, gauge, counter, HistogramMetricFamily)
        yield from self._outbox_metrics(gauge, counter)
        yield from self._camera_metrics(gauge, counter)
        wall = agent.clock.wall()
        certs = self.certificate_expiry()
        if certs:
            expiry = gauge("certificate_expiry_seconds", "Seconds until the certificate expires (negative once "
                                                         "expired): certificate=client is this device's own "
                                                         "(broker cert_file), ca the site CA (ca_file).",
                           ("certificate",))
            for label, not_after in sorted(certs.items()):
                expiry.add_metric([label], not_after - wall)
            yield expiry

    def _loop_metrics(self, snap: LoopSnapshot, gauge: Any, counter: Any, histogram: Any) -> Iterator[Any]:
        decisions = counter("decisions", "Access decisions applied at this edge (server's and its own), by door "
                                         "and reason code.", ("door", "reason"))
        for (door, reason), n in sorted(snap.access.decisions.items()):
            decisions.add_metric([door, reason], n)
        yield decisions
        offline = counter("offline_decisions", "Access decisions this edge made alone (decided_by edge_offline: "
                                               "no broker, no server, or no answer in time), by door and "
                                               "decision.", ("door", "decision"))
        for (door, decision), n in sorted(snap.access.offline.items()):
            offline.add_metric([door, decision], n)
        yield offline
        latency = histogram(PROM + "badge_to_relay_seconds", "From the badge's last byte read to the relay set "
                                                             "(or the refusal known), by door and who decided.",
                            labels=["door", "decided_by"])
        for (door, decided_by), h in sorted(snap.access.latency.items()):
            latency.add_metric([door, decided_by], h.cumulative(), h.total)
        yield latency
        events = counter("events", "Events this edge published, by type (access, door_opened, forced_open, "
                                   "tamper, ...).", ("type",))
        by_type: Counter[str] = Counter()
        for etype, n in snap.events.items():
            by_type[etype if etype in EVENT_TYPES else OTHER] += n  # one sample per label value
        for etype, n in sorted(by_type.items()):
            events.add_metric([etype], n)
        yield events
        errors = counter("errors", "Handler errors on the edge's loop (counted, logged; the doors went on).")
        errors.add_metric([], snap.errors)
        yield errors

        connected = gauge("mqtt_connected", "1 while the MQTT link to the broker is up.")
        connected.add_metric([], 1 if snap.mqtt_connected else 0)
        yield connected
        reconnects = counter("mqtt_reconnects", "Connections to the broker made after the first one.")
        reconnects.add_metric([], max(0, snap.mqtt_connections - 1))
        yield reconnects
        down = gauge("mqtt_disconnected_seconds", "How long the MQTT link has been down (0 while it is up; "
                                                  "since the start when it never came up).")
        down.add_metric([], snap.mqtt_down_s)
        yield down
        reachable = gauge("server_reachable", "1 while the link is up and the server's availability is not "
                                              "offline: badges are asked to the server, not decided locally.")
        reachable.add_metric([], 1 if snap.server_reachable else 0)
        yield reachable

        held = gauge("policy_held", "1 when a verified signed policy is held (the offline cache).")
        held.add_metric([], 1 if snap.policy_version is not None else 0)
        yield held
        if snap.policy_version is not None and snap.policy_issued_at is not None:
            version = gauge("policy_version", "Version of the signed policy held.")
            version.add_metric([], snap.policy_version)
            yield version
            age = gauge("policy_age_seconds", "Seconds since the server signed the policy held (by this edge's "
                                              "clock).")
            age.add_metric([], snap.wall - snap.policy_issued_at)
            yield age

        reader = gauge("reader_online", "1 while the door's reader is online (as reader_offline/reader_online "
                                        "report it).", ("door",))
        frames = counter("reader_frames", "Valid frames the door's reader sent (cards, keys, repeats).", ("door",))
        faults = counter("reader_faults", "Garbled or refused frames from the door's reader.", ("door",))
        relay = gauge("relay_energised", "1 while the door's lock relay (a lift: any floor relay) is energised.",
                      ("door",))
        is_open = gauge("door_open", "1 while the door's contact says open.", ("door",))
        tampered = gauge("door_tampered", "1 while the door's tamper input is active.", ("door",))
        state = gauge("door_state", "The door's state: 1 for the state it is in, 0 for the others.",
                      ("door", "state"))
        for door, d in sorted(snap.doors.items()):
            reader.add_metric([door], 1 if d.reader_online else 0)
            frames.add_metric([door], d.reader_frames)
            faults.add_metric([door], d.reader_faults)
            relay.add_metric([door], 1 if d.relay else 0)
            is_open.add_metric([door], 1 if d.open else 0)
            tampered.add_metric([door], 1 if d.tampered else 0)
            for s in DOOR_STATES:
                state.add_metric([door, s], 1 if d.state == s else 0)
        yield from (reader, frames, faults, relay, is_open, tampered, state)

    def _outbox_metrics(self, gauge: Any, counter: Any) -> Iterator[Any]:
        import sqlite3

        outbox = self.agent.outbox
        depth = gauge("outbox_messages", "Events and snapshots in the outbox, not yet acknowledged by the broker.")
        depth.add_metric([], outbox.pending)
        yield depth
        dropped = counter("outbox_dropped_snapshots", "Snapshots the outbox's size limit discarded unsent "
                                                      "(since the outbox was created).")
        dropped.add_metric([], outbox.dropped_snapshots)
        yield dropped
        try:
            oldest = outbox.oldest_event_at()
        except sqlite3.Error:  # closed under us by a stop
            return
        age = gauge("outbox_oldest_event_age_seconds", "Age of the oldest event waiting in the outbox (0 when "
                                                       "none waits).")
        age.add_metric([], max(0.0, self.agent.clock.wall() - oldest) if oldest is not None else 0.0)
        yield age

    def _camera_metrics(self, gauge: Any, counter: Any) -> Iterator[Any]:
        online = gauge("camera_online", "1 while the camera delivers frames.", ("camera",))
        frames = counter("camera_frames", "Frames the camera delivered.", ("camera",))
        age = gauge("camera_frame_age_seconds", "Seconds since the camera's newest frame (absent before the "
                                                "first).", ("camera",))
        now = self.agent.clock.monotonic()
        for cid, cam in sorted(self.agent.cameras.items()):
            stats = cam.stats  # a copy, taken under the camera's condition
            online.add_metric([cid], 1 if stats.online else 0)
            frames.add_metric([cid], stats.frames)
            if stats.last_frame_at is not None:
                age.add_metric([cid], max(0.0, now - stats.last_frame_at))
        yield from (online, frames, age)


class _Collector:
    """prometheus_client's view of :class:`EdgeMetrics` (a registry calls ``collect`` on each scrape)."""

    def __init__(self, metrics: EdgeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        return self._metrics.collect()
