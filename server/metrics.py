"""Health and Prometheus metrics of the central server and the desk around it (docs/operations.md "Health",
"Metrics").

Why this shape:

* **One registry per server.** Every :class:`ServerMetrics` has its own ``CollectorRegistry``, never
  prometheus_client's global one: tests and the demo run several servers in one process, and each must show
  its own figures (and registering a name twice in one registry is an error).
* **Read at scrape time.** A custom collector turns what the server already keeps into metric families when
  Prometheus asks: the bus's counters, supervision's devices, the publisher's versions, the edges' retained
  state, open alarms (one grouped query), certificates, backups, the webhook queue (one grouped query). The
  decision path gains one counter and one histogram observe (``doorkeep_decision_handler_seconds``); ingest one
  observe per commit. Nothing here runs on a thread of its own or holds a lock a decision waits on.
* **Bounded labels.** Door and device ids of the site, reason codes, event and alarm types of the vocabulary,
  priorities, and certificate names of the site's PKI. A person, a card, free text or an id a device made up
  is never a label: a reason outside the vocabulary counts as ``other``, a door outside the site as ``""``,
  a device outside the site is left out.
* **Timestamps for moments.** Where the value is a moment (a device last heard, a policy signed, a certificate
  ending, the last backup) the metric is a Unix timestamp in seconds, as Prometheus advises (the age is
  ``time() - metric`` in PromQL and never goes stale between scrapes); what edges report as an age (their
  outbox's oldest event) stays an age.

``/healthz`` says only that the process answers; ``/readyz`` runs :meth:`ServerMetrics.readiness`: broker
connected, store writable (a one-row write and read back), store thread alive, policies current, and backups
not overdue when ``[backup]`` is configured. Neither reveals a path, a name or a version. ``/metrics`` may ask
for a bearer token (``DOORKEEP_METRICS_TOKEN``). The desk serves the three on its own port
(server/web/health.py); ``doorkeep server --metrics-port`` on a small listener of its own
(:class:`MetricsHTTPServer`).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from doorkeep import vocabulary
from doorkeep.alarm_priority import PRIORITIES, priority_of
from doorkeep.clock import Clock
from doorkeep.pki import CA_NAME, certificate_inventory, pki_dir, role_of

if TYPE_CHECKING:
    from server.app import Server
    from server.backup import BackupResult

log = logging.getLogger("doorkeep.server.metrics")

__all__ = ["BACKUP_OVERDUE_PERIODS", "COMMIT_BUCKETS", "CONTENT_TYPE", "DECISION_BUCKETS", "METRICS_TOKEN_ENV",
           "MetricsHTTPServer", "Readiness", "ServerMetrics", "metrics_token_from_env"]

#: What ``/metrics`` answers with: the Prometheus text format 0.0.4, which every Prometheus reads (the names here
#: need none of format 1.0.0's escaping).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: The environment variable that, when set and not empty, makes ``/metrics`` ask for ``Authorization: Bearer``.
METRICS_TOKEN_ENV = "DOORKEEP_METRICS_TOKEN"
#: The server's decision handler takes tens of microseconds to a few milliseconds (bench/run_all.py): buckets
#: from 50 µs to 1 s, so a p99 near the 20 ms target is read between two close bounds.
DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
#: One store commit (a batch of events in one transaction, or one event): a WAL fsync, milliseconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Backups are overdue (``/readyz`` not ready, ``backups_current`` false) after this many ``every_s`` periods
#: without a successful one: one failed run is retried within ``retry_s``, two in a row is an incident.
BACKUP_OVERDUE_PERIODS = 3
#: What an edge's retained state may report of its outbox (contract.state_payload): pending messages, snapshots
#: dropped for space, and the age of the oldest pending event when the edge measures it.
OUTBOX_PENDING, OUTBOX_DROPPED, OUTBOX_OLDEST = "pending", "dropped_snapshots", "oldest_age_s"
#: The webhook queue's states ``doorkeep_webhook_queue_depth`` reports (delivered records are history, not queue),
#: and the outcomes ``doorkeep_webhook_deliveries_total`` counts (server/webhooks.py ``Webhooks.counters``): each
#: always present, 0 until it happens, so ``rate()`` has a series from the start.
WEBHOOK_QUEUE_STATES = ("pending", "dead")
WEBHOOK_OUTCOMES = ("delivered", "retried", "dead")
#: How many published versions per device :meth:`ServerMetrics.behind_since` remembers while an edge is behind.
MAX_REMEMBERED_VERSIONS = 64
#: A label value standing for anything outside the vocabulary (a reason no rule of decide() gives).
OTHER = "other"


#: What a service counter's name may be to become a label value (see ``_integrations``).
_COUNTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")


def metrics_token_from_env(environ: dict[str, str] | None = None) -> str | None:
    """The bearer token ``/metrics`` asks for (``$DOORKEEP_METRICS_TOKEN``), or None (no token: open)."""
    value = (os.environ if environ is None else environ).get(METRICS_TOKEN_ENV, "").strip()
    return value or None


@dataclass(frozen=True)
class Readiness:
    """What ``/readyz`` answers: each check by name, true when it passes; ready when all pass."""

    checks: dict[str, bool]

    @property
    def ready(self) -> bool:
        return all(self.checks.values())

    def body(self) -> dict[str, Any]:
        return {"status": "ready" if self.ready else "not ready", "checks": dict(self.checks)}


@dataclass(frozen=True)
class _Certificate:
    name: str
    role: str
    not_after: float  # Unix seconds


class _Certificates:
    """The site's certificates and their expiry, re-read only when a file changes (one ``stat`` per file and scrape).

    The certificate files of ``SITE/pki`` (doorkeep.pki.certificate_inventory: what the expiry alarm and the
    desk's Certificates page read too); where the server runs without its CA beside it, the files it connects
    with (the CA it trusts, its own certificate). A file that cannot be read is left out: its expiry is unknown,
    and the ``certificate_expiring`` check logs it (server/certificates.py).
    """

    def __init__(self, site_dir: Path | None, own: tuple[Path | None, Path | None]) -> None:
        self.pki = pki_dir(site_dir) if site_dir is not None else None
        self.own_ca, self.own_cert = own
        self._seen: tuple[Any, ...] | None = None
        self._certs: list[_Certificate] = []
        self._lock = threading.Lock()

    @staticmethod
    def _stamp(path: Path) -> tuple[str, float] | None:
        try:
            return str(path), path.stat().st_mtime
        except OSError:
            return None

    def current(self) -> list[_Certificate]:
        files = sorted(self.pki.glob("*.crt")) if self.pki is not None and self.pki.is_dir() else []
        files += [p for p in (self.own_ca, self.own_cert) if p is not None]
        seen = tuple(self._stamp(p) for p in files)
        with self._lock:
            if seen != self._seen:
                self._certs, self._seen = self._load(), seen
            return list(self._certs)

    def _load(self) -> list[_Certificate]:
        found: dict[str, _Certificate] = {}
        for info in certificate_inventory(self.pki) if self.pki is not None else []:
            if info.not_after is not None:
                found[info.name] = _Certificate(info.name, info.role, info.not_after.timestamp())
        for path, is_ca in ((self.own_ca, True), (self.own_cert, False)):
            cert = _read_cert(path)
            if cert is None:
                continue
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            name = CA_NAME if is_ca else str(cn[0].value) if cn else "unknown"
            if name not in found:  # the site's own files first
                found[name] = _Certificate(name, "ca" if is_ca else role_of(name), cert.not_valid_after_utc.timestamp())
        return sorted(found.values(), key=lambda c: c.name)


def _read_cert(path: Path | None) -> x509.Certificate | None:
    if path is None or not path.is_file():
        return None
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (ValueError, OSError) as exc:
        log.warning("certificate expiry: cannot read %s: %s", path, exc)
        return None


class ServerMetrics:
    """The server's health checks and Prometheus metrics (a registry of its own; see the module docstring)."""

    def __init__(self, server: Server, *, clock: Clock | None = None, site_dir: Path | None = None,
                 token: str | None = None, process: bool = True) -> None:
        """``site_dir``: where ``pki/`` may hold the site's certificates; ``token``: the bearer token ``/metrics``
        asks for (None: none); ``process``: also export prometheus_client's ``process_*`` metrics."""
        self.server = server
        self.clock = clock or server.directory.clock
        self.token = token
        self.started = self.clock.wall()
        # auto_describe off: registering the collector must not run a scrape (and the store probe)
        self.registry = CollectorRegistry(auto_describe=False)
        self.decision_seconds = Histogram(
            "doorkeep_decision_handler_seconds", "Time the server took to answer one access request, from the "
            "request's decoding to its decision handed to the MQTT client", buckets=DECISION_BUCKETS,
            registry=self.registry)
        self.commit_seconds = Histogram(
            "doorkeep_store_commit_seconds", "Time to write and commit one batch of received events to the store "
            "(one transaction)", buckets=COMMIT_BUCKETS, registry=self.registry)
        server.bus.observe_answer = self.decision_seconds.observe
        server.bus.observe_commit = self.commit_seconds.observe
        broker = server.bus.broker
        self.certificates = _Certificates(site_dir, (broker.ca_file, broker.cert_file))
        self._published: dict[str, list[tuple[int, float]]] = {}  # device -> versions seen published, signed
        self._behind_lock = threading.Lock()
        self.last_backup: float | None = None
        if server.backup is not None:
            server.backup.listeners.append(self._backup_done)
            self.last_backup = _newest_backup_time(server)
        self.registry.register(_Collector(self))
        if process:
            ProcessCollector(registry=self.registry)

    # ------------------------------------------------------------ health

    def readiness(self) -> Readiness:
        """Every check of ``/readyz``, run now (the store check writes one row: see Store.probe_writable)."""
        server = self.server
        bus = server.bus
        checks = {
            "broker_connected": bus.connected,
            "store_writable": server.store.probe_writable(self.clock.wall()),
            "store_thread": bus.healthy,
            "policy_current": self.policy_current(),
        }
        if server.backup is not None:
            checks["backups_current"] = not self.backups_overdue()
        return Readiness(checks)

    def policy_current(self) -> bool:
        """The publisher signed a policy for every device it serves, its last run did not fail, and none waits
        to be re-signed above a newer one retained on the broker."""
        publisher = self.server.bus.publisher
        if publisher is None:
            return True
        return (not self.server.bus.policy_publish_failed and not publisher.awaiting_resign()
                and all(d in publisher.published for d in publisher.device_doors))

    def backups_overdue(self) -> bool:
        """No successful backup for :data:`BACKUP_OVERDUE_PERIODS` periods (counted from the start without one)."""
        job = self.server.backup
        if job is None:
            return False
        since = self.last_backup if self.last_backup is not None else self.started
        return self.clock.wall() - since > BACKUP_OVERDUE_PERIODS * job.settings.every_s

    def _backup_done(self, result: BackupResult) -> None:
        self.last_backup = self.clock.wall()

    # ------------------------------------------------------------ metrics

    def authorized(self, authorization: str | None) -> bool:
        """Whether a request's ``Authorization`` header may read ``/metrics`` (always, without a token)."""
        if self.token is None:
            return True
        scheme, _, offered = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(offered.strip().encode(), self.token.encode())

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)

    def devices(self) -> list[str]:
        """The site's edge devices: the only device label values."""
        bus = self.server.bus
        known = set(bus.door_devices.values())
        if bus.publisher is not None:
            known |= set(bus.publisher.device_doors)
        known.discard("server")
        return sorted(known)

    def behind_since(self, device: str, held: float | None, published: int, signed_at: float) -> float | None:
        """Since when ``device`` has lacked a policy the server published to it: the signing of the oldest
        version above the one it holds (None when it holds the newest).

        The versions are remembered as scrapes see them, so a republication while the edge is still behind does
        not reset the figure, and an edge that catches up part of the way is measured from the first version it
        still lacks (to within a scrape interval: a version signed and superseded between two scrapes is not
        seen)."""
        with self._behind_lock:
            seen = self._published.setdefault(device, [])
            if not seen or seen[-1][0] != published:
                seen.append((published, signed_at))
                if len(seen) > MAX_REMEMBERED_VERSIONS:
                    del seen[1:len(seen) - MAX_REMEMBERED_VERSIONS + 1]  # keep the oldest: it dates the lag
            if held is not None:
                seen[:] = [(v, at) for v, at in seen if v > held]  # what the edge holds is owed no longer
            return seen[0][1] if seen else None


def _newest_backup_time(server: Server) -> float | None:
    """When the newest backup on disk was taken (its manifest), so a restart does not forget the last backup."""
    from server.backup import BackupError, newest_backup, read_manifest

    job = server.backup
    if job is None or job.settings.dir is None:
        return None
    try:
        newest = newest_backup(job.settings.dir, job.site_id)
        if newest is None:
            return None
        manifest = read_manifest(newest, check=False)[0]
        return float(manifest["created_at_epoch"])
    except (BackupError, OSError, KeyError, TypeError, ValueError) as exc:
        log.warning("could not read the newest backup's time: %s", exc)
        return None


def _state(payload: bytes | None) -> dict[str, Any]:
    """An edge's retained ``doorkeep.state/1`` (validated by the bus on receipt), or {} if it cannot be read."""
    if not payload:
        return {}
    try:
        data = json.loads(payload)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: Any) -> float | None:
    """A reported figure, or None for anything that is not a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 <= value < float("inf") else None


class _Collector(Collector):
    """Reads the server's state at scrape time (see the module docstring)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for part in (self._bus, self._devices, self._alarms, self._certificates, self._backups, self._webhooks,
                     self._siem, self._integrations, self._ready):
            try:
                yield from part()
            except Exception:  # one part failing must not take the rest of the scrape down
                log.exception("metrics: %s failed", part.__name__)

    # ----------------------------------------------------------- the bus

    def _bus(self) -> Iterator[Metric]:
        bus = self.metrics.server.bus
        counters = dict(bus.counters)
        doors = set(self.metrics.server.site.doors)

        def reason(value: str) -> str:
            return value if value in vocabulary.REASONS else OTHER

        decisions = CounterMetricFamily("doorkeep_decisions", "Access requests the server answered, by door and "
                                        "reason code (docs/reason-codes.md); door is empty for a door the site "
                                        "does not have", labels=["door", "reason"])
        for (door, why), n in sorted(dict(bus.decisions).items()):
            decisions.add_metric([door if door in doors else "", reason(why)], n)
        yield decisions
        offline = CounterMetricFamily("doorkeep_offline_decisions", "Access events an edge decided on its own "
                                      "(decided_by edge_offline) that the server stored, by door and reason",
                                      labels=["door", "reason"])
        merged: dict[tuple[str, str], int] = {}
        for (door, why), n in dict(bus.offline_decisions).items():
            key = (door if door in doors else "", reason(why))
            merged[key] = merged.get(key, 0) + n
        for key, n in sorted(merged.items()):
            offline.add_metric(list(key), n)
        yield offline
        events = CounterMetricFamily("doorkeep_events_ingested", "Events stored for the first time, by type",
                                     labels=["type"])
        for kind, n in sorted(dict(bus.ingested).items()):
            events.add_metric([kind if kind in vocabulary.WIRE_EVENT_TYPES else OTHER], n)
        yield events
        refused = CounterMetricFamily("doorkeep_messages_refused", "Messages from devices refused (acknowledged and "
                                      "dropped), by why (docs/mqtt.md \"Validation\")", labels=["category"])
        for name, n in sorted(counters.items()):
            if name.startswith("refused_"):
                refused.add_metric([name.removeprefix("refused_")], n)
        yield refused
        for name, key, text in (
                ("doorkeep_events_duplicate", "duplicate_events", "Events received again after being stored (the "
                 "broker's re-deliveries), stored once"),
                ("doorkeep_snapshots_ingested", "snapshots", "Sealed snapshots stored"),
                ("doorkeep_messages_malformed", "malformed", "Messages that were not valid under the contract"),
                ("doorkeep_store_retries", "store_retries", "Store writes retried because the disk refused them"),
                ("doorkeep_server_errors", "errors", "Unexpected errors while handling a message (see the log)"),
                ("doorkeep_policy_publish_failures", "policy_publish_failures",
                 "Times signing and publishing the devices' policies failed"),
                ("doorkeep_mqtt_disconnects", "mqtt_disconnects", "Times the server lost its broker connection"),
                ("doorkeep_requests_expired", "requests_expired", "Requests that arrived after their door's timeout, "
                 "when the edge had decided on its own: not decided again"),
                ("doorkeep_decisions_not_sent", "decisions_not_sent", "Decisions the MQTT client refused to send (its "
                 "queue full): the door decided on its own at its timeout")):
            yield CounterMetricFamily(name, text, value=counters.get(key, 0))
        yield CounterMetricFamily("doorkeep_mqtt_reconnects", "Connections to the broker after the first",
                                  value=max(0, counters.get("mqtt_connects", 0) - 1))
        yield GaugeMetricFamily("doorkeep_mqtt_connected", "1 while the server is connected to the broker",
                                value=1 if bus.connected else 0)
        yield GaugeMetricFamily("doorkeep_store_backlog", "Events, snapshots and writes received and waiting for "
                                "the store thread", value=bus.backlog)

    # ------------------------------------------------------- devices, policies

    def _devices(self) -> Iterator[Metric]:
        metrics = self.metrics
        bus = metrics.server.bus
        devices = metrics.devices()
        statuses = metrics.server.supervisor.devices()
        online = GaugeMetricFamily("doorkeep_device_online", "1 while supervision counts the device online "
                                   "(docs/alarms.md device_offline)", labels=["device"])
        seen = GaugeMetricFamily("doorkeep_device_last_seen_timestamp_seconds", "When the server last heard from "
                                 "the device (Unix time)", labels=["device"])
        pending = GaugeMetricFamily("doorkeep_device_outbox_pending", "Events and snapshots waiting in the "
                                    "device's outbox, as its retained state last said", labels=["device"])
        oldest = GaugeMetricFamily("doorkeep_device_outbox_oldest_age_seconds", "Age of the oldest event waiting "
                                   "in the device's outbox, as its retained state last said", labels=["device"])
        dropped = GaugeMetricFamily("doorkeep_device_outbox_dropped_snapshots", "Snapshots the device's outbox "
                                    "dropped for space, as its retained state last said", labels=["device"])
        held = GaugeMetricFamily("doorkeep_device_policy_version", "Version of the signed policy the device "
                                 "holds, as its retained state last said", labels=["device"])
        published = GaugeMetricFamily("doorkeep_policy_version", "Version of the signed policy the server last "
                                      "published to the device", labels=["device"])
        signed = GaugeMetricFamily("doorkeep_policy_signed_timestamp_seconds", "When the server signed the "
                                   "policy it last published to the device (Unix time)", labels=["device"])
        current = GaugeMetricFamily("doorkeep_device_policy_current", "1 when the device holds the policy the "
                                    "server published to it (absent until the device reported its state)",
                                    labels=["device"])
        behind = GaugeMetricFamily("doorkeep_device_policy_behind_seconds", "How long the device has held an "
                                   "older policy than the server published to it (0 when current)",
                                   labels=["device"])
        publisher = bus.publisher
        now = metrics.clock.wall()
        for device in devices:
            st = statuses.get(device)
            online.add_metric([device], 1 if st is not None and st.status == "online" else 0)
            if st is not None and st.last_seen_wall is not None:
                seen.add_metric([device], st.last_seen_wall)
            state = _state(bus.states.get(device))
            box = state.get("outbox") if isinstance(state.get("outbox"), dict) else {}
            for family, key in ((pending, OUTBOX_PENDING), (oldest, OUTBOX_OLDEST), (dropped, OUTBOX_DROPPED)):
                value = _number(box.get(key))
                if value is not None:
                    family.add_metric([device], value)
            policy = state.get("policy") if isinstance(state.get("policy"), dict) else None
            version = _number(policy.get("version")) if policy is not None and policy.get("status") == "held" \
                else None
            if version is not None:
                held.add_metric([device], version)
            out = publisher.published.get(device) if publisher is not None else None
            if out is None or publisher is None:
                continue
            at = publisher.published_at.get(device, now)
            published.add_metric([device], out)
            signed.add_metric([device], at)
            if policy is None:
                continue  # the device has not said what it holds (yet): unknown, not behind
            current.add_metric([device], 1 if version is not None and version >= out else 0)
            since = metrics.behind_since(device, version, out, at)
            behind.add_metric([device], 0.0 if since is None else max(0.0, now - since))
        yield from (online, seen, pending, oldest, dropped, held, published, signed, current, behind)

    # ------------------------------------------------------------- alarms

    def _alarms(self) -> Iterator[Metric]:
        server = self.metrics.server
        settings = server.site.alarms
        open_ = GaugeMetricFamily("doorkeep_alarms_open", "Open (unresolved) alarms by type, priority and state "
                                  "(active: the condition holds; cleared: it is over, not yet resolved)",
                                  labels=["type", "priority", "state"])
        unacked = GaugeMetricFamily("doorkeep_alarms_unacknowledged", "Open alarms nobody acknowledged, by "
                                    "priority", labels=["priority"])
        counts: dict[tuple[str, str, str], int] = {}
        waiting = {p: 0 for p in PRIORITIES}
        for kind, state, acknowledged, n in server.store.open_alarm_counts():
            priority = priority_of(settings, kind)
            key = (kind if kind in vocabulary.ALARMS else OTHER, priority, state)
            counts[key] = counts.get(key, 0) + n
            if not acknowledged:
                waiting[priority] = waiting.get(priority, 0) + n
        for key, n in sorted(counts.items()):
            open_.add_metric(list(key), n)
        for priority, n in waiting.items():
            unacked.add_metric([priority], n)
        yield open_
        yield unacked

    # ------------------------------------------------------- certificates, backups

    def _certificates(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("doorkeep_certificate_not_after_timestamp_seconds", "When each live certificate "
                                   "of the site ends (Unix time): the site CA's, every one it issued, or the "
                                   "server's own", labels=["name", "role"])
        for cert in self.metrics.certificates.current():
            family.add_metric([cert.name, cert.role], cert.not_after)
        yield family

    def _backups(self) -> Iterator[Metric]:
        job = self.metrics.server.backup
        if job is None:
            return  # no [backup]: nothing to report, nothing to alert on
        if self.metrics.last_backup is not None:
            yield GaugeMetricFamily("doorkeep_backup_last_success_timestamp_seconds", "When the last successful "
                                    "backup was taken (Unix time)", value=self.metrics.last_backup)
        yield CounterMetricFamily("doorkeep_backup_failures", "Backup runs (or their offsite copies) that failed "
                                  "since the server started", value=job.failures)

    def _webhooks(self) -> Iterator[Metric]:
        hooks = self.metrics.server.webhooks
        if hooks is None:
            return  # a server built without webhooks (a test's): nothing to report
        stats = hooks.stats()  # one grouped count of the queue's rows, and this process's counters
        deliveries, counters = stats["deliveries"], stats["counters"]
        depth = GaugeMetricFamily("doorkeep_webhook_queue_depth", "Webhook deliveries in the store's queue, by "
                                  "state: pending (to be sent or sent again) and dead (given up, listed for an "
                                  "admin to retry)", labels=["state"])
        for state in WEBHOOK_QUEUE_STATES:
            depth.add_metric([state], deliveries.get(state, 0))
        yield depth
        outcomes = CounterMetricFamily("doorkeep_webhook_deliveries", "Webhook delivery outcomes since the server "
                                       "started: delivered (answered 2xx), retried (an attempt failed, tried "
                                       "again later), dead (given up)", labels=["outcome"])
        for outcome in WEBHOOK_OUTCOMES:
            outcomes.add_metric([outcome], counters.get(outcome, 0))
        yield outcomes
        yield CounterMetricFamily("doorkeep_webhook_queued", "Webhook deliveries queued since the server started "
                                  "(one per webhook and event or alarm it subscribes to)",
                                  value=counters.get("queued", 0))

    def _siem(self) -> Iterator[Metric]:
        siem = self.metrics.server.siem
        if siem is None:
            return  # no [siem]: nothing to report
        stats = siem.stats()
        counters = stats["counters"]
        yield GaugeMetricFamily("doorkeep_siem_queue_depth", "Syslog messages queued for the SIEM and not yet "
                                "confirmed", value=stats["depth"])
        yield GaugeMetricFamily("doorkeep_siem_connected", "1 while the server holds a connection to the SIEM",
                                value=1 if stats["connected"] else 0)
        yield CounterMetricFamily("doorkeep_siem_messages_sent", "Syslog messages the SIEM confirmed (deleted from "
                                  "the queue)", value=counters.get("sent", 0))
        yield CounterMetricFamily("doorkeep_siem_messages_resent", "Messages written again after a connection "
                                  "dropped before they were confirmed (the SIEM may hold them twice)",
                                  value=counters.get("resent", 0))
        yield CounterMetricFamily("doorkeep_siem_failures", "Failed connection attempts and connections lost",
                                  value=counters.get("failures", 0))

    def _integrations(self) -> Iterator[Metric]:
        """The integration request API's and Home Assistant's counters, each name a label value. The names are the
        services' own outcome and refusal codes (a fixed vocabulary), never a door, person or integration name;
        anything else is left out, so a label can never carry what a caller sent."""
        server = self.metrics.server
        for service, name, doc in (
                (server.integration_api, "doorkeep_integration_api_events",
                 "The integration request API since the server started: requests answered, refused and dropped "
                 "(with the reason), unlocks by the edge's status, errors"),
                (server.home_assistant, "doorkeep_home_assistant_events",
                 "Home Assistant discovery since the server started: configs published and deleted, alarm "
                 "summaries, HA status messages, lock commands by outcome and refusal reason, errors")):
            if service is None:
                continue  # not configured: nothing to report
            family = CounterMetricFamily(name, doc, labels=["event"])
            for event, value in sorted(service.counts().items()):
                if _COUNTER_NAME.fullmatch(event):
                    family.add_metric([event], value)
            yield family

    def _ready(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("doorkeep_ready", "1 when the /readyz check passes, by check", labels=["check"])
        for check, ok in self.metrics.readiness().checks.items():
            family.add_metric([check], 1 if ok else 0)
        yield family


# ------------------------------------------------------------- listener


class MetricsHTTPServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on a port of their own (``doorkeep server --metrics-port``).

    The standard library's threading HTTP server: a scrape never waits behind another, and nothing is
    served but these three paths (GET and HEAD). Bind it to loopback unless Prometheus scrapes from another
    host (``--metrics-host``), and set ``DOORKEEP_METRICS_TOKEN`` when it listens beyond the host.
    """

    def __init__(self, metrics: ServerMetrics, host: str = "127.0.0.1", port: int = 0) -> None:
        """Binds at once (an ``OSError`` names a port in use); ``port`` 0 picks a free one (see :attr:`port`)."""
        self.metrics = metrics
        handler = type("Handler", (_Handler,), {"metrics": metrics})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    def start(self) -> MetricsHTTPServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="doorkeep-metrics-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
            self._thread = None
        self._httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    metrics: ServerMetrics
    server_version = "doorkeep"  # no library or Python version in the Server header
    sys_version = ""
    timeout = 10  # a client that opens a connection and sends nothing is dropped

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                status, ctype, data = 200, "application/json", b'{"status":"ok"}'
            elif path == "/readyz":
                ready = self.metrics.readiness()
                status, ctype = (200 if ready.ready else 503), "application/json"
                data = json.dumps(ready.body()).encode()
            elif path == "/metrics":
                if not self.metrics.authorized(self.headers.get("Authorization")):
                    self._send(401, "application/json", b'{"error":"a bearer token is required"}', body,
                               (("WWW-Authenticate", "Bearer"),))
                    return
                status, ctype, data = 200, CONTENT_TYPE, self.metrics.exposition()
            else:
                status, ctype, data = 404, "application/json", b'{"error":"nothing here: /healthz, /readyz, /metrics"}'
        except Exception:
            log.exception("metrics listener: %s failed", path)
            status, ctype, data = 500, "application/json", b'{"error":"internal error; see the server log"}'
        self._send(status, ctype, data, body)

    def _send(self, status: int, ctype: str, data: bytes, body: bool, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in (("Content-Type", ctype), ("Content-Length", str(len(data))),
                            ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"), *extra):
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        log.debug("metrics listener: " + format, *args)
