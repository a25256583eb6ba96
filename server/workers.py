"""Several server workers for one site (issue 20; docs/scale.md "Several server workers").

``doorkeep server --worker NAME`` on a PostgreSQL store runs one worker; start two or more, on one machine or
several, with the same site directory, keys, store and broker. Each worker:

- **answers requests**: its own clean MQTT session subscribes to the requests through a shared subscription
  (``$share/doorkeep-SITE/...``), so the broker hands each request to one worker, and decides it in one PostgreSQL
  transaction on the rules' shared state (server/shared_decisions.py): exact across workers. A worker that dies
  takes only the requests in flight to it; those doors decide on their own at their timeout, as when the server
  is down, and the broker hands the next requests to the others at once (a clean session's subscription ends with
  its connection);
- **competes to lead**: a PostgreSQL session-level advisory lock (:class:`Leadership`) elects one leader, which runs
  everything else a single server runs: event and snapshot ingest on the site's persistent MQTT session (one client
  id, shared by every worker, so the broker's queue of events passes to whoever leads next), the signed policies,
  supervision and alarms, retention, mail, webhooks, SIEM, integrations. The others are standbys: each tries the
  lock every :data:`TRY_EVERY_S` and takes over when the leader's session ends (a killed process's connection is
  closed by its kernel, and PostgreSQL frees its locks at once);
- **keeps the doors asking**: the leader's last will (the server `offline`) waits :data:`WILL_DELAY_S` (MQTT 5),
  and a standby taking the leader's session over sooner cancels it, so the doors never hear of a change of leader;
- **follows the site**: a standby keeps its own directory of the live site from the store, woken by the leader's
  NOTIFY on every change (a card revoked, a visitor checked in), and polls the site revision and people counter
  every second for changes the leader did not make.

Fencing. A leader checks its lock's session every :data:`CHECK_EVERY_S`; when it cannot, it may have lost the lock
to another worker, and it stops at once without a word on MQTT (``on_lost``: the command exits with status 3 for
systemd to restart it as a standby). Its availability message would otherwise overwrite the new leader's
``online``; a last will that still lands later is corrected by the new leader at once (server/bus.py). The lock's
session has short TCP keepalives, so a leader cut off from PostgreSQL frees the lock within about 11 s.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import socket
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import psycopg

from doorkeep.clock import Clock, SystemClock
from doorkeep.config import BrokerConfig, SiteBundle
from doorkeep.contract import SEGMENT, Topics, parse_topic, state_monotonic
from doorkeep.credentials import load_key
from doorkeep.decision import AccessRequest, Decision
from doorkeep.errors import ConfigError, MessageError
from doorkeep.logfmt import log_context
from doorkeep.model import Site
from doorkeep.pki import MAX_WORKER_NAME, check_transport, client_tls_context, worker_identity
from server.app import Server, Workers, bootstrap, keyed_client_id
from server.bus import aim_at_next
from server.decider import Decider
from server.directory import Directory
from server.errors import ServerError
from server.people import PeopleService
from server.shared_decisions import SharedDecisionError, SharedDecisions, ensure_schema
from server.siteadmin import SiteAdmin
from server.sqldb import is_postgres_url
from server.store import Store
from server.store_url import open_store

log = logging.getLogger("doorkeep.server.workers")

#: How often a standby tries to become the leader, and a leader checks it still is.
TRY_EVERY_S = 0.2
CHECK_EVERY_S = 0.5
#: The channel the leader notifies on every change of the live site (payload: the site id).
SITE_CHANNEL = "doorkeep_site"
#: A standby re-reads the live site at least this often, in case a notification was missed.
FULL_REFRESH_S = 30.0
#: The leader's last will (the server `offline`) waits this long (MQTT 5 will delay): a standby that takes the session
#: over sooner cancels it, so the doors never hear of a change of leader; with every worker gone it comes this late.
WILL_DELAY_S = 5.0
#: The lock session's TCP keepalives (idle, interval, count): a dead peer is noticed within ~11 s on either side.
KEEPALIVES = (5, 2, 3)


class WorkerError(ServerError):
    """A worker cannot run as asked (no PostgreSQL store, a name taken by another running worker)."""


def check_worker_name(name: str) -> str:
    """A worker's name: a topic segment of at most 32 characters (it goes into its MQTT client id)."""
    if not (SEGMENT.match(name) and len(name) <= MAX_WORKER_NAME):
        raise ConfigError("--worker", "name", f"{name!r}: a worker's name is 1-32 letters, digits, '-' or '_'",
                          "--worker a, --worker b, ...")
    return name


def worker_broker(broker: BrokerConfig, name: str) -> BrokerConfig:
    """How worker ``name``'s own connection reaches the broker: with TLS, under its certificate ``worker-NAME``
    beside the server's (the broker binds a client id to its certificate: one connection per certificate, and the
    server's is the leader's). WorkerError naming the fix when it is missing."""
    if not broker.tls or broker.cert_file is None:
        return broker
    ident = worker_identity(name)
    folder = Path(broker.cert_file).parent
    cert, key = folder / f"{ident}.crt", folder / f"{ident}.key"
    if not (cert.is_file() and key.is_file()):
        raise WorkerError(f"{cert}: worker {name} has no certificate (fix: `doorkeep pki issue {ident} --site SITE` "
                          "and copy it beside the server's, then `doorkeep broker config` again and restart the "
                          "broker, whose ACL gives it the requests; docs/scale.md)")
    return replace(broker, cert_file=cert, key_file=key)


def workers_client_id(key: bytes, site_id: str) -> str:
    """The leader's MQTT client id: the same for every worker of the site (the broker's persistent session, with
    the events queued while no worker leads, passes to the next leader), unguessable without the credential key
    (as server/app.py ``server_client_id``)."""
    return keyed_client_id(key, site_id, b"workers")


def shared_group(site_id: str) -> str:
    """The shared subscription's group: every worker of the site in one group, each request to one of them."""
    return f"doorkeep-{site_id}"


def _lock_key(*parts: str) -> tuple[int, int]:
    """Two signed 32-bit advisory-lock keys for a name (the 2-key form, apart from shared_decisions' keys)."""
    digest = hashlib.blake2b("\0".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest[:4], "big", signed=True), int.from_bytes(digest[4:], "big", signed=True)


def _holder(conn: psycopg.Connection[Any], *parts: str) -> int | None:
    """The backend pid holding the session advisory lock named ``parts`` in this database, None if nobody does."""
    k1, k2 = (k & 0xFFFFFFFF for k in _lock_key(*parts))  # pg_locks shows the keys as unsigned oids
    row = conn.execute("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s AND "
                       "objid = %s AND objsubid = 2 AND database = (SELECT oid FROM pg_database "
                       "WHERE datname = current_database())", (k1, k2)).fetchone()
    return int(row[0]) if row else None


def leader_of(url: str, site_id: str) -> str | None:
    """The name of the worker that leads ``site_id`` now (whose session holds the election lock), None if none."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        pid = _holder(conn, "leader", site_id)
        row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() \
            if pid is not None else None
    prefix = "doorkeep worker "
    return row[0][len(prefix):] if row and str(row[0]).startswith(prefix) else None


#: Each worker's last heartbeat (every TRY_EVERY_S or CHECK_EVERY_S): what :func:`workers_status` and
#: ``doorkeep doctor`` report.
WORKERS_TABLE = ("CREATE TABLE IF NOT EXISTS dk_workers (site TEXT NOT NULL, name TEXT NOT NULL, "
                 "leader BOOLEAN NOT NULL, decisions BIGINT NOT NULL, started_at DOUBLE PRECISION NOT NULL, "
                 "seen_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (site, name))")
#: Requests for doors not the device's, refused by a standby, for the leader to report (:class:`StandbyReports`).
REPORTS_TABLE = ("CREATE TABLE IF NOT EXISTS dk_reports (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                 "site TEXT NOT NULL, device TEXT NOT NULL, door TEXT, at DOUBLE PRECISION NOT NULL)")


def workers_status(url: str, site_id: str) -> list[dict[str, Any]]:
    """Every worker that ever ran for ``site_id``: name, leader, decisions (since it started), started_at, seen_at
    (its last heartbeat, wall clock), alive (its name's lock is held now)."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        if conn.execute("SELECT to_regclass('dk_workers')").fetchone() == (None,):
            return []
        rows = conn.execute("SELECT name, leader, decisions, started_at, seen_at FROM dk_workers WHERE site = %s "
                            "ORDER BY name", (site_id,)).fetchall()
        out = []
        for name, leader, decisions, started_at, seen_at in rows:
            out.append({"name": name, "leader": leader, "decisions": decisions, "started_at": started_at,
                        "seen_at": seen_at, "alive": _holder(conn, "worker", site_id, name) is not None})
        return out


class Leadership:
    """Leader election and liveness over one PostgreSQL session of its own.

    The lock is a session-level advisory lock: held while this session lives, freed by PostgreSQL the moment the
    session ends, whoever ends it (the process killed, the connection cut, ``pg_terminate_backend``)."""

    def __init__(self, url: str, site_id: str, worker: str) -> None:
        self.url = url
        self.site_id = site_id
        self.worker = worker
        self._lock = threading.Lock()  # one statement at a time on the session (the checker, the notifier)
        self._conn: psycopg.Connection[Any] | None = None
        self._lost_logged = False
        self.held = False

    def connect(self) -> None:
        """Open the session and claim this worker's name (WorkerError when another live worker has it)."""
        with self._lock:
            self._open()

    def _open(self) -> None:
        idle, interval, count = KEEPALIVES
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5, keepalives=1, keepalives_idle=idle,
                                   keepalives_interval=interval, keepalives_count=count)
            # The server side's keepalives too, and no statement here may hang: a check that cannot finish in 2 s is
            # a lost lock.
            conn.execute(f"SET tcp_keepalives_idle = {idle}; SET tcp_keepalives_interval = {interval}; "
                         f"SET tcp_keepalives_count = {count}; SET statement_timeout = 2000; "
                         f"SET application_name = 'doorkeep worker {self.worker}'")
            row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", _lock_key("worker", self.site_id,
                                                                              self.worker)).fetchone()
            if row and row[0]:
                with conn.transaction():  # two workers starting at once would race on the catalogue
                    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _lock_key("workers table"))
                    conn.execute(WORKERS_TABLE)
                    conn.execute(REPORTS_TABLE)
        except psycopg.Error as exc:
            raise WorkerError(f"cannot reach the store's PostgreSQL for the workers' election: {exc}") from exc
        if not (row and row[0]):
            conn.close()
            raise WorkerError(f"another worker named {self.worker!r} is running for site {self.site_id!r} "
                              "(fix: give each worker its own --worker NAME)")
        self._conn = conn

    def try_acquire(self) -> bool:
        """Take the lead if nobody holds it; True once held. A standby whose session failed (PostgreSQL restarted, a
        network cut) opens a new one at its next try, claiming its name again; meanwhile it is not the leader."""
        with self._lock:
            if self.held:
                return True
            if self._conn is None or self._conn.closed:
                try:
                    self._open()
                except WorkerError as exc:
                    if not self._lost_logged:
                        log.warning("worker %s: cannot try for the lead: %s", self.worker, exc)
                        self._lost_logged = True
                    return False
                log.info("worker %s: the election's PostgreSQL session is back", self.worker)
                self._lost_logged = False
            try:
                assert self._conn is not None
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s, %s)",
                                         _lock_key("leader", self.site_id)).fetchone()
            except psycopg.Error as exc:
                log.warning("worker %s: cannot try for the lead (a new session at the next try): %s", self.worker, exc)
                self._conn.close()
                return False
            self.held = bool(row and row[0])
            return self.held

    def check(self) -> bool:
        """Whether this session still lives (and so still holds what it holds)."""
        with self._lock:
            try:
                assert self._conn is not None
                self._conn.execute("SELECT 1")
                return True
            except psycopg.Error as exc:
                log.error("worker %s: the election's PostgreSQL session failed: %s", self.worker, exc)
                return False

    def heartbeat(self, *, leader: bool, decisions: int, started_at: float, now: float) -> None:
        """This worker's row in ``dk_workers`` (best effort: a failure shows in the next :meth:`check`)."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                return  # a standby between sessions: try_acquire opens the next
            try:
                self._conn.execute(
                    "INSERT INTO dk_workers (site, name, leader, decisions, started_at, seen_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (site, name) DO UPDATE SET leader = excluded.leader, "
                    "decisions = excluded.decisions, started_at = excluded.started_at, seen_at = excluded.seen_at",
                    (self.site_id, self.worker, leader, decisions, started_at, now))
            except psycopg.Error as exc:
                log.warning("worker %s: could not record its heartbeat: %s", self.worker, exc)

    def report(self, device: str, door: str | None, *, at: float) -> None:
        """Queue a standby's refusal for the leader (:meth:`take_reports`); logged when it cannot be queued."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                log.error("worker %s: a refusal of %s (door %r) could not be queued for the leader: no session",
                          self.worker, device, door)
                return
            try:
                self._conn.execute("INSERT INTO dk_reports (site, device, door, at) VALUES (%s, %s, %s, %s)",
                                   (self.site_id, device, door, at))
            except psycopg.Error as exc:
                log.error("worker %s: a refusal of %s (door %r) could not be queued for the leader: %s",
                          self.worker, device, door, exc)

    def take_reports(self) -> list[tuple[str, str | None]]:
        """The leader takes the standbys' queued refusals (device, door), oldest first."""
        with self._lock:
            try:
                assert self._conn is not None
                rows = self._conn.execute("DELETE FROM dk_reports WHERE site = %s RETURNING id, device, door",
                                          (self.site_id,)).fetchall()
            except psycopg.Error as exc:
                log.error("worker %s: could not take the standbys' reports: %s", self.worker, exc)
                return []
        return [(device, door) for _, device, door in sorted(rows)]

    def notify(self, site: Site | None = None) -> None:
        """Tell the standbys the live site changed (they read it again from the store)."""
        with self._lock:
            try:
                assert self._conn is not None
                self._conn.execute("SELECT pg_notify(%s, %s)", (SITE_CHANNEL, self.site_id))
            except psycopg.Error as exc:  # they re-read it at least every FULL_REFRESH_S
                log.error("worker %s: could not tell the standbys of a site change: %s", self.worker, exc)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self.held = False


class SharedState:
    """Each thread's own :class:`SharedDecisions` (one connection per thread: a decision is a transaction)."""

    def __init__(self, url: str, site_id: str, site: Callable[[], Site], worker: str) -> None:
        self.url, self.site_id, self.site, self.worker = url, site_id, site, worker
        self._local = threading.local()
        self._all: list[SharedDecisions] = []
        self._lock = threading.Lock()

    def __call__(self) -> SharedDecisions:
        shared = getattr(self._local, "shared", None)
        if shared is None:
            shared = SharedDecisions(lambda: psycopg.connect(self.url, autocommit=True, connect_timeout=5),
                                     self.site_id, self.site, worker=self.worker)
            self._local.shared = shared
            with self._lock:
                self._all.append(shared)
        return shared

    def close(self) -> None:
        with self._lock:
            for shared in self._all:
                shared.close()


class RequestWorker:
    """This worker's share of the site's requests: a clean MQTT session on the shared subscription.

    Live heartbeats (``+/state``, to every worker) give each device's clock offset, so a request that arrives after
    its door stopped waiting is dropped here as by one server (server/decider.py)."""

    def __init__(self, name: str, site_id: str, door_devices: dict[str, str], site: Callable[[], Site],
                 decide: Callable[[AccessRequest], Decision], broker: BrokerConfig, client_id: str,
                 clock: Clock) -> None:
        self.name = name
        self.broker = broker
        self.topics = Topics(site_id)
        self.connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        tls = client_tls_context(broker)
        if tls is not None:
            self._client.tls_set_context(tls)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.max_inflight_messages_set(0)  # as the server's bus: no cap on decisions in flight
        self.addresses = broker.addresses
        self.address_index = 0
        self.decider = Decider(site, door_devices, decide,
                               lambda topic, payload: self._client.publish(topic, payload, qos=1).rc, clock,
                               self.topics, foreign_door=self._foreign_door)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._request_mid = -1
        #: Where a request for a door that is not the device's is reported (device, door): set by the worker.
        self.report: Callable[[str, str | None], None] | None = None

    @property
    def counters(self) -> Any:
        return self.decider.counters

    @property
    def request_filter(self) -> str:
        return f"$share/{shared_group(self.topics.site)}/{self.topics.all_requests()}"

    def start(self) -> None:
        plain = check_transport(self.broker)
        if plain is not None:
            log.warning("worker %s: %s", self.name, plain)
        host, port = self.addresses[self.address_index]
        self._client.connect_async(host, port, keepalive=self.broker.keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        log.info("worker %s: decided %d requests (%d expired, %d not decided: shared state unreachable)", self.name,
                 self.counters["decisions"], self.counters["requests_expired"], self.counters["shared_state_errors"])

    def _move_on(self, client: mqtt.Client) -> None:
        self.address_index = aim_at_next(client, self.addresses, self.address_index)

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._move_on(client)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("worker %s: the broker refused the connection: %s", self.name, reason)
            return
        sock = client.socket()
        if sock is not None:  # as the server's bus: a decision leaves at once, never held back by Nagle
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(f"{self.topics.base}/+/state", qos=0)
        _, self._request_mid = client.subscribe(self.request_filter, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        """The requests' subscription acknowledged: only from now does the broker count this worker in the group."""
        if mid != self._request_mid:
            return
        if any(r.is_failure for r in reasons):
            log.error("worker %s: the broker refused the subscription %s: %s (fix: the broker's ACL must give "
                      "worker-%s the requests: `doorkeep broker config` again, then restart the broker)",
                      self.name, self.request_filter, [str(r) for r in reasons], self.name)
            return
        self.connected.set()
        log.info("worker %s: answering requests (%s)", self.name, self.request_filter)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        if reason.is_failure:
            log.warning("worker %s: disconnected from the broker: %s", self.name, reason)
            self._move_on(client)

    def _foreign_door(self, device: str, door: str | None) -> None:
        """Answered unknown_door by the decider; reported as misbehaviour by ``report`` (the leader's bus, or a
        standby's own reporter), never on this network thread's time."""
        report = self.report
        if report is not None:
            report(device, door)
            return
        self.counters["refused"] += 1
        self.counters["refused_foreign_door"] += 1
        log.warning("refused a request from device %s for door %r, which is not its own", device, door,
                    extra=log_context(device))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(msg.topic)
            if topic.site != self.topics.site:
                raise MessageError(f"message for site {topic.site!r}")
            if topic.kind == "request":
                self.decider.answer(topic, msg.payload)
            elif topic.kind == "state" and msg.payload and not msg.retain:
                mono = state_monotonic(msg.payload)
                if mono is not None:
                    self.decider.note_monotonic(topic.device, mono)
        except MessageError as exc:
            self.counters["malformed"] += 1
            log.warning("worker %s: dropped a malformed message on %s: %s", self.name, msg.topic, exc)
        except SharedDecisionError as exc:
            # No answer: the door decides on its own at its timeout, as with the server down. Never a guess.
            self.counters["shared_state_errors"] += 1
            log.error("worker %s: request on %s not decided: %s", self.name, msg.topic, exc)
        except Exception:  # never let one message kill the network thread
            self.counters["errors"] += 1
            log.exception("worker %s: unexpected error handling %s", self.name, msg.topic)


class StandbyReports:
    """A standby's reports of devices asking about doors not their own. The leader alone raises the alarms
    (``device_misbehaving``: one per device and window, counting every refusal, server/supervision.py), so a standby
    queues each report in ``dk_reports`` and the leader takes them every CHECK_EVERY_S; a thread of its own writes
    them, so the requests' network thread never waits for PostgreSQL. Reports made while no worker leads wait there
    for the next leader."""

    def __init__(self, leadership: Leadership, clock: Clock, door_devices: dict[str, str], counters: Any) -> None:
        self.leadership = leadership
        self.clock = clock
        self.door_devices = door_devices
        self.counters = counters
        self._queue: queue.Queue[tuple[str, str | None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-standby-reports", daemon=True)
        self._thread.start()

    def __call__(self, device: str, door: str | None) -> None:
        category = "foreign_door" if door in self.door_devices else "unknown_door"
        self.counters["refused"] += 1
        self.counters[f"refused_{category}"] += 1
        log.warning("refused a request from device %s for door %r (%s); the leader reports it", device, door,
                    category, extra=log_context(device))
        self._queue.put((device, door))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            self.leadership.report(*item, at=self.clock.wall())

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


class Follower:
    """A standby's view of the live site: built from the store as the leader left it, kept current."""

    def __init__(self, bundle: SiteBundle, key: bytes, store: Store, clock: Clock, url: str) -> None:
        self.store = store
        self.url = url
        self.clock = clock
        self.siteadmin = SiteAdmin(store, bundle.dir, clock)
        live = self.siteadmin.start()  # the leader imported the first revision: nothing is written here
        self.directory = Directory(replace(bundle, site=live.site) if live is not None else bundle, key, store, clock)
        self.siteadmin.people = PeopleService(store, key, clock, directory=self.directory)
        self.siteadmin.apply = self.directory.replace_site
        self.refreshes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="doorkeep-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def refresh(self) -> None:
        """Read the live site again: a new revision, people, visitors, passes, card states."""
        self.siteadmin.poll()
        self.directory.refresh()
        self.refreshes += 1

    def _watch(self) -> None:
        """LISTEN for the leader's notifications; poll the revision and people every second; re-read everything
        after a (re)connection and every FULL_REFRESH_S."""
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {SITE_CHANNEL}")
                    self.refresh()  # whatever changed while not listening
                    full_at = self.clock.monotonic() + FULL_REFRESH_S
                    while not self._stop.is_set():
                        woken = list(conn.notifies(timeout=1.0, stop_after=1))
                        if woken or self.clock.monotonic() >= full_at:
                            full_at = self.clock.monotonic() + FULL_REFRESH_S
                            self.refresh()
                        else:
                            self.siteadmin.poll()
            except Exception as exc:  # PostgreSQL away: try again; the site stays as last read meanwhile
                log.error("standby: cannot follow the live site: %s", exc)
                self._stop.wait(1.0)


class Worker:
    """One worker process's parts: election, its share of the requests, and the full server once it leads.

    ``on_lost``: called (from the checker's thread) when a leader can no longer be sure it leads; the command line
    exits there. ``on_leader``: called with the server once this worker leads. ``bootstrap_kw``: keys and
    timeouts for :func:`server.app.bootstrap`."""

    def __init__(self, bundle: SiteBundle, data_dir: Path, broker: BrokerConfig, name: str, store_url: str, *,
                 clock: Clock | None = None, key: bytes | None = None, on_lost: Callable[[], None] | None = None,
                 on_leader: Callable[[Server], None] | None = None, request_broker: BrokerConfig | None = None,
                 will_delay_s: float = WILL_DELAY_S, **bootstrap_kw: Any) -> None:
        if not is_postgres_url(store_url):
            raise WorkerError("several workers share their state in PostgreSQL (fix: --store postgresql://USER@HOST/DB "
                              "or site.toml [store] url; docs/scale.md)")
        self.bundle = bundle
        self.data_dir = Path(data_dir)
        self.broker = broker
        self.name = check_worker_name(name)
        #: The worker's own connection for the requests (``worker_broker``: its own certificate with TLS).
        self.request_broker = request_broker or worker_broker(broker, self.name)
        self.store_url = store_url
        self.clock = clock or SystemClock()
        self.key = key if key is not None else load_key(bundle.credential_key_file, source=str(bundle.dir))
        self.on_lost = on_lost
        self.on_leader = on_leader
        self.will_delay_s = will_delay_s
        self.bootstrap_kw = bootstrap_kw
        site_id = bundle.site.id
        self.leadership = Leadership(store_url, site_id, self.name)
        self.client_id = workers_client_id(self.key, site_id)
        self.server: Server | None = None
        self.follower: Follower | None = None
        self._follower_store: Store | None = None
        self._directory: Directory | None = None
        self.shared = SharedState(store_url, site_id, lambda: self.site, self.name)
        self.requests: RequestWorker | None = None
        self._reports: StandbyReports | None = None
        self.started_at = self.clock.wall()
        self.lost = threading.Event()
        self.promoted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"doorkeep-worker-{name}", daemon=True)

    @property
    def site(self) -> Site:
        assert self._directory is not None
        return self._directory.site

    @property
    def leader(self) -> bool:
        return self.server is not None

    def start(self, wait_s: float = 10.0) -> None:
        """Lead if nobody does, else follow the leader's store; then answer requests (WorkerError, ConfigError)."""
        self.leadership.connect()
        try:
            if self.leadership.try_acquire():
                self._lead(wait_s)
            else:
                self._follow(wait_s)
            door_devices = {door: dev.id for dev in self.bundle.devices.values() for door in dev.doors}
            self.requests = RequestWorker(self.name, self.bundle.site.id, door_devices, lambda: self.site,
                                          self._decide, self.request_broker, f"{self.client_id}-{self.name}",
                                          self.clock)
            if self.server is not None:
                self._adopt_metrics(self.server)
            else:
                self._reports = StandbyReports(self.leadership, self.clock, door_devices, self.requests.counters)
                self.requests.report = self._reports
            self.requests.start()
        except BaseException:
            self._close()
            raise
        self._heartbeat()
        self._thread.start()

    def _decide(self, request: AccessRequest) -> Decision:
        return self.shared().decide(request, self.clock.wall()).decision

    def _lead(self, wait_s: float) -> None:
        log.info("worker %s: leading site %s", self.name, self.bundle.site.id)
        server = bootstrap(self.bundle, self.data_dir, self.broker, key=self.key, clock=self.clock,
                           store_url=self.store_url, workers=Workers(self.client_id, self.shared, self.leadership.notify,
                                                                     self.will_delay_s), **self.bootstrap_kw)
        try:
            with psycopg.connect(self.store_url, autocommit=True, connect_timeout=5) as conn:
                ensure_schema(conn)  # after the store's migrations: presence and lockdowns are theirs
            server.start(wait_s)
        except BaseException:
            server.store.close()
            raise
        self.server = server
        self._directory = server.directory  # the requests are decided on the leader's own site from now on
        if self.requests is not None:
            self._adopt_metrics(server)  # before the standby's reporter goes: no report falls in between
        self._drop_follower()
        self.promoted.set()
        if self.on_leader is not None:
            self.on_leader(server)

    def _adopt_metrics(self, server: Server) -> None:
        """The leader's /metrics count this worker's decisions (the requests the leader's bus no longer takes), and
        its bus reports the devices that ask about doors not their own."""
        assert self.requests is not None
        self.requests.report = server.bus.refuse_foreign_door
        decider = self.requests.decider
        server.bus.counters.update(decider.counters)
        decider.counters, decider.decisions = server.bus.counters, server.bus.decisions
        decider.observe = server.bus.observe_answer

    def _follow(self, wait_s: float) -> None:
        store = open_store(self.data_dir, self.store_url)
        self._follower_store = store
        deadline = self.clock.monotonic() + max(wait_s, 60.0)
        # The first leader imports the site and the people; until it has, there is no site to decide on.
        while not (store.latest_site_revision_number() > 0 and store.people_seeded()):
            if self.clock.monotonic() > deadline:
                raise WorkerError("no worker has started the site in this store yet (fix: start one worker first "
                                  "and let it lead, or check that every worker has the same [store] url)")
            if self.leadership.try_acquire():
                self._lead(wait_s)
                return
            self._stop.wait(TRY_EVERY_S)
        with psycopg.connect(self.store_url, autocommit=True, connect_timeout=5) as conn:
            ensure_schema(conn)
        self.follower = Follower(self.bundle, self.key, store, self.clock, self.store_url)
        self._directory = self.follower.directory
        self.follower.start()
        log.info("worker %s: standby for site %s, answering its share of the requests", self.name,
                 self.bundle.site.id)

    def _heartbeat(self) -> None:
        decisions = self.requests.counters["decisions"] if self.requests is not None else 0
        self.leadership.heartbeat(leader=self.leader, decisions=decisions, started_at=self.started_at,
                                  now=self.clock.wall())

    def _run(self) -> None:
        """Standby: try for the lead; leader: check it still leads. Both: a heartbeat row."""
        while not self._stop.wait(CHECK_EVERY_S if self.leader else TRY_EVERY_S):
            self._heartbeat()
            if self.server is not None:
                for device, door in self.leadership.take_reports():
                    self.server.bus.refuse_foreign_door(device, door)
                if not self.leadership.check():
                    log.critical("worker %s: cannot confirm it still leads site %s; stopping at once",
                                 self.name, self.bundle.site.id)
                    return self._give_up()
            elif self.leadership.try_acquire():
                try:
                    self._lead(10.0)
                except Exception:
                    log.exception("worker %s: could not take over as leader", self.name)
                    return self._give_up()

    def _give_up(self) -> None:
        """This worker can no longer act for the site (a lead it cannot confirm, a takeover that failed)."""
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        self._close()

    def _drop_follower(self) -> None:
        """The standby's view of the site, its reports and its store, no longer needed (leading, or stopping)."""
        if self._reports is not None:
            self._reports.stop()
            self._reports = None
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
        if self._follower_store is not None:
            self._follower_store.close()
            self._follower_store = None

    def _close(self) -> None:
        if self.requests is not None:
            self.requests.stop()
        self._drop_follower()
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.shared.close()
        self.leadership.close()
