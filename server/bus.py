"""The server's MQTT side (paho-mqtt 2.x, callback API v2).

Requests are answered on paho's network thread, because a decision is a
pure, microsecond-scale function and every millisecond there is a
millisecond at the door. Events and snapshots go to a worker thread that
writes the store, so a slow disk never delays an answer. A malformed
message is counted, logged with what was wrong and dropped.

Every message a device publishes is also news for the :class:`Supervisor`
(server/supervision.py): availability, the retained ``state`` heartbeat,
requests, events and snapshots tell it the device is alive, and each
ingested event moves that device's sequence window; alarms are raised there.

A device's certificate only lets it publish under its own subtree (the
broker's ACL), but inside it, it could say anything. So every message is
also checked against what that device may say (docs/mqtt.md, "Validation"):
a request, event or snapshot only for one of its own doors, an event whose
payload names the same device and door as its topic and whose ``ts`` is not
from the future, a command result only for a command that was sent to it.
A refused message is acknowledged (it never blocks the device's queue),
counted, logged with the device and why, and reported to the supervisor,
which raises one ``device_misbehaving`` alarm per device and hour.
"""

from __future__ import annotations

import logging
import queue
import socket
import sqlite3
import json
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from doorkeep.clock import Clock, SystemClock, parse_iso_ms
from doorkeep.config import BrokerConfig
from doorkeep.contract import (
    AVAILABILITY_OFFLINE,
    AVAILABILITY_ONLINE,
    AVAILABILITY_STOPPED,
    MAX_PAYLOAD,
    MAX_SNAPSHOT_BYTES,
    SEGMENT,
    CommandResult,
    EventMsg,
    Topics,
    parse_topic,
    state_monotonic,
)
from doorkeep.envelope import EnvelopeError
from doorkeep.errors import MessageError
from doorkeep.logfmt import log_context
from doorkeep.model import DoorKind, Site
from doorkeep.pki import check_transport, client_tls_context
from server.decider import Decider
from server.directory import Directory
from server.publisher import PolicyPublisher
from server.store import Store
from server.supervision import Supervisor, state_timestamp

log = logging.getLogger("doorkeep.server.bus")

EventListener = Callable[[EventMsg, bool], None]
#: Called on the store thread with (snapshot id = event id, device, door) once a new snapshot is stored.
SnapshotListener = Callable[[str, str, str], None]
#: Most events the store thread commits in one transaction (those already queued; it never waits for more).
STORE_BATCH = 256

_BATCHED = ("event", "call")  # snapshots (files on disk) and misbehaviour reports are handled one by one
#: An event whose ``ts`` is further than this ahead of the server's clock is refused (ServerBus max_event_skew_s).
DEFAULT_MAX_EVENT_SKEW_S = 86_400.0
#: How many commands (transaction -> device) the bus remembers, and for how long, to match their results.
MAX_TRACKED_COMMANDS = 10_000
COMMAND_MEMORY_S = 3_600.0


class Refused(MessageError):
    """A message the device was not entitled to send; ``category`` names the kind (docs/mqtt.md)."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


def peek_transaction(payload: bytes) -> str | None:
    """The transaction a signed command (doorkeep/commands.py envelope) names, without verifying it.

    Only to match the device's ``cmd/result`` to a command that really went to that device; whether the
    command was genuine is the edge's business (it refuses and reports forged ones).
    """
    try:
        envelope = json.loads(payload)
        body = json.loads(envelope["signed"]) if isinstance(envelope, dict) else None
    except Exception:  # anything at all: best effort on input that may be hostile
        return None
    tx = body.get("transaction") if isinstance(body, dict) else None
    return tx if isinstance(tx, str) and len(tx) <= 64 and SEGMENT.match(tx) else None


def aim_at_next(client: mqtt.Client, addresses: tuple[tuple[str, int], ...], index: int) -> int:
    """Several broker addresses: aim paho's next try (on its network thread, after its backoff) at the address after
    ``index``; returns its index (``index`` itself with one address). paho refuses to change ``host`` until the
    connection is closed, which it is not yet inside its callbacks; the attributes behind the property are what its
    reconnect() reads. The server's bus and each worker's request connection (server/workers.py) move alike."""
    if len(addresses) < 2:
        return index
    index = (index + 1) % len(addresses)
    client._host, client._port = addresses[index]  # noqa: SLF001
    return index


@dataclass(frozen=True)
class _Work:
    kind: str  # "event" | "snapshot" | "call" (batched) | "task" (alone, outside a transaction) | "report"
    topic: Any
    payload: bytes
    received_at: float
    call: Callable[[], object] | None = None
    mid: int = 0   # the MQTT message to acknowledge once it is stored
    qos: int = 0


class ServerBus:
    """Connects the site's decisions and store to the broker."""

    def __init__(self, directory: Directory, door_devices: dict[str, str], store: Store, broker: BrokerConfig,
                 *, clock: Clock | None = None, client_id: str | None = None,
                 publisher: PolicyPublisher | None = None, supervisor: Supervisor | None = None,
                 max_event_skew_s: float = DEFAULT_MAX_EVENT_SKEW_S, answer_requests: bool = True,
                 will_delay_s: float = 0) -> None:
        """``max_event_skew_s``: an event dated further ahead of this server's clock is refused as misbehaviour
        (a device whose clock is that wrong cannot be trusted to date anything; docs/mqtt.md)."""
        if not max_event_skew_s > 0:
            raise ValueError("max_event_skew_s must be positive")
        self.max_event_skew_s = float(max_event_skew_s)
        self.directory = directory
        site = directory.site
        self.door_devices = door_devices  # door id -> the device that owns it
        self.publisher = publisher
        self.store = store
        self.broker = broker
        self.clock = clock or SystemClock()
        self.topics = Topics(site.id)
        self.counters: Counter[str] = Counter()
        self.availability: dict[str, str] = {}
        #: The latest ``state`` payload of each device (raw JSON, as retained on the broker): the desk's door
        #: board reads it (server/web/doors.py); parsing waits until someone looks.
        self.states: dict[str, bytes] = {}
        self.listeners: list[EventListener] = []
        self.snapshot_listeners: list[SnapshotListener] = []  # the desk's live feed updates "snapshot pending"
        # What server/metrics.py reads at scrape time (plain counters, one owner each: the network thread writes
        # ``decisions``, the store thread ``offline_decisions`` and ``ingested``) and the two latencies it
        # observes: the decision handler's and each store commit's, in seconds (None: nobody measures).
        self.decisions: Counter[tuple[str, str]] = Counter()  # (door, or "" for none of the site's; reason)
        self.offline_decisions: Counter[tuple[str, str]] = Counter()  # (door, reason) of edge_offline events
        self.ingested: Counter[str] = Counter()  # new events stored, by type
        self.observe_commit: Callable[[float], None] | None = None
        self.policy_publish_failed = False  # the last signing and publishing of the policies raised
        # (device, result) of signed commands (server/commands.py CommandSender.on_result), on the network thread.
        self.command_results: list[Callable[[str, CommandResult], None]] = []
        #: Subscriptions outside ``doorkeep/v1`` (server/home_assistant.py), made on every connect: filter -> QoS,
        #: or None to unsubscribe (a persistent session would otherwise keep one from an earlier configuration).
        self._routes: dict[str, int | None] = {}
        #: Called on paho's network thread after every (re)connect, once subscribed and announced ``online``;
        #: must not block (server/home_assistant.py only wakes its worker).
        self.connect_listeners: list[Callable[[], None]] = []
        # transaction -> (device, wall time) of every command seen going to a device (ours, the CLI's, anyone's
        # on its cmd topic): a cmd/result must answer one of these, from that device.
        self._sent: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._sent_lock = threading.Lock()
        self.supervisor = supervisor or Supervisor(store, self.clock, devices=set(door_devices.values()))
        self.supervisor.set_connected(False)
        self._work: queue.Queue[_Work | None] = queue.Queue()
        self._idle = threading.Condition()
        self._stopping = threading.Event()
        self._leaving = threading.Event()  # stop() began: this server's own `stopped` stands
        self._queued = 0
        self._done = 0
        self._worker = threading.Thread(target=self._store_loop, name="doorkeep-store", daemon=True)
        self._connected = threading.Event()
        # A persistent session under a stable client id: the broker keeps the QoS 1 events and snapshots
        # that edges publish while the server restarts, and delivers them when it returns.
        #: Several workers (``will_delay_s`` > 0, server/workers.py): MQTT 5, whose last will can wait. A leader that
        #: dies is replaced by a standby on the same session within a fraction of a second; the broker then drops
        #: the will unsent (MQTT 5, 3.1.3.2.2), so the doors never hear `offline` and keep asking the workers, who
        #: answer throughout. Only with every worker gone does `offline` come, ``will_delay_s`` late.
        self.will_delay_s = will_delay_s
        session: dict[str, Any] = {"protocol": mqtt.MQTTv5} if will_delay_s > 0 else {"clean_session": False}
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"doorkeep-server-{site.id}", **session)
        will = None
        if will_delay_s > 0:
            will = Properties(PacketTypes.WILLMESSAGE)
            will.WillDelayInterval = int(will_delay_s)
        self._client.will_set(self.topics.server_availability(), AVAILABILITY_OFFLINE, qos=1, retain=True,
                              properties=will)
        # mqtts://: mutual TLS (1.2 at least) with this client's certificate; a bad file fails here, not later.
        tls = client_tls_context(broker)
        if tls is not None:
            self._client.tls_set_context(tls)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        # No cap on QoS 1 messages in flight: paho's default of 20 let decisions out 20 at a time under a backlog,
        # each PUBACK queued behind thousands of requests on the same connection, until paho's 65,535 message ids
        # were all waiting and it refused new decisions (bench/campus.py's morning rush lost a third of them).
        self._client.max_inflight_messages_set(0)
        # Several broker addresses (docs/scale.md, "Several broker addresses"): every failed try and every lost
        # connection moves to the next one, after paho's backoff (1 s doubling to 10 s, reset once connected).
        # The persistent session is per broker: on a standby it starts with this server's first connection there.
        self.addresses = broker.addresses  # a bad list is a ConfigError here
        self.address_index = 0
        # Events are acknowledged only once stored: a server killed in between gets them again.
        self._client.manual_ack_set(True)
        #: Answers the requests (server/decider.py) with the directory's rules, on paho's network thread. With
        #: ``answer_requests`` False (several workers: server/workers.py) the requests go to the workers' own
        #: deciders through a shared subscription, and this bus does not subscribe to them.
        self.answer_requests = answer_requests
        self.decider = Decider(lambda: self.directory.site, door_devices, directory.decide,
                               lambda topic, payload: self._client.publish(topic, payload, qos=1).rc, self.clock,
                               self.topics, foreign_door=self.refuse_foreign_door, counters=self.counters,
                               decisions=self.decisions)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # ------------------------------------------------------------ lifecycle

    def start(self, wait_s: float = 10.0) -> None:
        """Connect; plain ``mqtt://`` is refused here unless explicitly allowed (ConfigError, nothing started)."""
        plain = check_transport(self.broker)
        if plain is not None:
            log.warning("server: %s", plain)
        self._worker.start()
        self.supervisor.start()
        host, port = self.addresses[self.address_index]
        if self.will_delay_s > 0:
            # The persistent session of MQTT 5: kept by the broker for ever (as clean_session=False in 3.1.1).
            session = Properties(PacketTypes.CONNECT)
            session.SessionExpiryInterval = 0xFFFFFFFF
            self._client.connect_async(host, port, keepalive=self.broker.keepalive, clean_start=False,
                                       properties=session)
        else:
            self._client.connect_async(host, port, keepalive=self.broker.keepalive)
        self._client.loop_start()
        if not self._connected.wait(wait_s):
            log.warning("broker %s not reachable yet; still trying", self.broker.url)

    @property
    def address(self) -> str:
        """The broker URL connected to, or being tried."""
        return self.broker.urls[self.address_index]

    def _move_on(self, client: mqtt.Client) -> None:
        if len(self.addresses) > 1:
            self.address_index = aim_at_next(client, self.addresses, self.address_index)
            self.counters["broker_moves"] += 1

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        if len(self.addresses) > 1:
            log.warning("cannot reach the broker %s", self.address)
        self._move_on(client)

    def stop(self) -> None:
        self._leaving.set()
        if self.will_delay_s > 0:
            # A leader of several workers leaves its will behind instead of saying `stopped`: a standby takes the
            # session over within the delay and the doors never hear the server go (docs/scale.md).
            self._client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        else:
            if self._connected.is_set():
                info = self._client.publish(self.topics.server_availability(), AVAILABILITY_STOPPED, qos=1,
                                            retain=True)
                try:
                    info.wait_for_publish(timeout=2.0)
                except RuntimeError:
                    pass
            self._client.disconnect()
        self._client.loop_stop()
        self._stopping.set()
        self._work.put(None)
        self._worker.join(timeout=10)
        self.supervisor.stop()

    def defer(self, fn: Callable[[], object], *, alone: bool = False) -> None:
        """Run ``fn`` on the store thread, in order with event ingest (keeps disk writes off the network thread).

        ``alone``: outside any store transaction, not batched with the writes around it. For work that takes a
        lock of its own and then the store's (signing policies: the publisher's lock, then a version from the
        store): run inside a batch's transaction, which holds the store's lock, it would take the two locks in
        the opposite order to a desk thread publishing the same policies, and both would wait for ever."""
        with self._idle:
            self._queued += 1
        self._work.put(_Work("task" if alone else "call", None, b"", 0.0, fn))

    @property
    def healthy(self) -> bool:
        """The store thread is alive (the network thread is paho's, which reconnects by itself)."""
        return self._worker.is_alive()

    @property
    def site(self) -> Site:
        return self.directory.site

    def publish_policies(self, site: Site | None = None, *, force: bool = False) -> None:
        """Sign and publish the devices' policies (retained); called on connect (force) and on every site change."""
        if self.publisher is not None and (force or self._connected.is_set()):
            # While disconnected nothing is sent: paho would deliver the queued policy after the one
            # on_connect publishes, and the broker would keep the older version retained.
            try:
                # Full policies retained; deltas (doorkeep/policy_delta.py) QoS 1 and never retained.
                self.publisher.publish_all(site or self.directory.site,
                                           lambda topic, payload: self._client.publish(topic, payload, qos=1,
                                                                                       retain=True),
                                           force=force,
                                           publish_delta=lambda topic, payload: self._client.publish(topic, payload,
                                                                                                     qos=1))
            except Exception:
                self.counters["policy_publish_failures"] += 1
                self.policy_publish_failed = True  # /readyz: the publisher is not current
                raise
            self.policy_publish_failed = False

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, not retained (signed commands, server/commands.py); paho queues it while disconnected."""
        try:
            parsed = parse_topic(topic)
        except MessageError:
            parsed = None
        if parsed is not None and parsed.kind == "cmd":
            self._note_command(parsed.device, payload)  # before publishing: the result can be quick
        self._client.publish(topic, payload, qos=1)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """QoS 1, retained (Home Assistant's discovery configs; an empty payload deletes the retained message)."""
        self._client.publish(topic, payload, qos=1, retain=True)

    def route(self, topic_filter: str, handler: Callable[[mqtt.MQTTMessage], None], *, qos: int = 0,
              subscribe: bool = True) -> None:
        """Hand the messages on ``topic_filter`` (a filter outside ``doorkeep/v1``) to ``handler``, on paho's
        network thread (it must not block), then acknowledge them. Subscribed at ``qos`` on every connect; with
        ``subscribe`` False unsubscribed instead, its messages still handed over (a persistent session may
        hold the subscription from an earlier configuration). Call before :meth:`start`."""
        def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            try:
                handler(msg)
            except Exception:  # never let one message kill the network thread
                self.counters["errors"] += 1
                log.exception("unexpected error handling %s", msg.topic)
            finally:
                client.ack(msg.mid, msg.qos)

        self._client.message_callback_add(topic_filter, on_message)
        self._routes[topic_filter] = qos if subscribe else None

    def _note_command(self, device: str, payload: bytes) -> None:
        tx = peek_transaction(payload)
        if tx is None:
            return
        now = self.clock.wall()
        with self._sent_lock:
            self._sent[tx] = (device, now)
            self._sent.move_to_end(tx)
            while self._sent and (len(self._sent) > MAX_TRACKED_COMMANDS
                                  or now - next(iter(self._sent.values()))[1] > COMMAND_MEMORY_S):
                self._sent.popitem(last=False)

    def _check_result(self, device: str, result: CommandResult) -> None:
        """A result must answer a command that went to this device (never another device's transaction)."""
        if result.transaction is None:
            return  # a rejected result for a payload the edge could not even read (decode allows only that)
        with self._sent_lock:
            sent = self._sent.get(result.transaction)
        if sent is None:
            raise Refused("unmatched_result", f"result for transaction {result.transaction!r}, "
                                              "which no command to this device carried")
        if sent[0] != device:
            raise Refused("foreign_result", f"result for transaction {result.transaction!r}, "
                                            f"a command sent to {sent[0]!r}")

    def _check_door(self, device: str, door: str | None) -> None:
        """A request, event or snapshot may only be about a door the site gives to this device."""
        owner = self.door_devices.get(door or "")
        if owner is None:
            raise Refused("unknown_door", f"door {door!r} is not a door of this site")
        if owner != device:
            raise Refused("foreign_door", f"door {door!r} belongs to {owner!r}, not to {device!r}")

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def backlog(self) -> int:
        """Events, snapshots and deferred writes received but not yet handled by the store thread."""
        with self._idle:
            return self._queued - self._done

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # ------------------------------------------------------------ callbacks

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker %s refused the connection: %s", self.address, reason)
            return
        sock = client.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.answer_requests:
            client.subscribe(self.topics.all_requests(), qos=1)
        else:  # the workers' deciders take them (server/workers.py); a persistent session may still hold it
            client.unsubscribe(self.topics.all_requests())
        # Availability before state: the retained copies arrive in that order, and a retained state never
        # overrides a retained `offline` or `stopped`.
        for sub in (self.topics.all_events(), self.topics.all_snapshots(),
                    self.topics.all_availability(), f"{self.topics.base}/+/state", self.topics.all_cmd_results(),
                    f"{self.topics.base}/+/policy",  # the retained policies: versions never go back (publisher.py)
                    f"{self.topics.base}/+/cmd"):  # commands seen going out, to match their results (H1)
            client.subscribe(sub, qos=1)
        for sub, qos in self._routes.items():
            if qos is None:
                client.unsubscribe(sub)
            else:
                client.subscribe(sub, qos=qos)
        self.counters["mqtt_connects"] += 1
        self.supervisor.set_connected(True)
        self.publish_policies(force=True)
        client.publish(self.topics.server_availability(), AVAILABILITY_ONLINE, qos=1, retain=True)
        log.info("connected to %s", self.address)
        self._connected.set()
        for listener in list(self.connect_listeners):
            try:
                listener()
            except Exception:
                self.counters["errors"] += 1
                log.exception("a connect listener failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        self.counters["mqtt_disconnects"] += 1
        self.supervisor.set_connected(False)
        lost = self.address
        if not self._stopping.is_set():
            self._move_on(client)
        if not reason.is_failure:
            log.info("disconnected from the broker %s", lost)
            return
        log.warning("disconnected from the broker %s: %s", lost, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        deferred = False  # events and snapshots are acknowledged by the store thread, once on disk
        device: str | None = None  # whose subtree the message came from, once the topic is known
        try:
            topic = parse_topic(msg.topic)
            if topic.site != self.site.id:
                raise MessageError(f"message for site {topic.site!r}")
            device = topic.device if topic.kind != "cmd" else None  # what goes *to* a device is not its doing
            if topic.kind == "policy":
                # The site's signed policies, retained (this server's own, or an older server's): checked by
                # signature in the publisher, never held to MAX_PAYLOAD (a large site's policy is bigger).
                device = None
                if msg.payload and self.publisher is not None and self.publisher.observe(topic.device, msg.payload):
                    self.defer(self.publish_policies, alone=True)  # re-sign above a newer retained version (publisher.py)
                return
            limit = MAX_SNAPSHOT_BYTES if topic.kind == "snapshot" else MAX_PAYLOAD
            if len(msg.payload) > limit:
                # Defence in depth: the broker's message_size_limit should already have refused it.
                raise Refused("oversize", f"{topic.kind} of {len(msg.payload)} bytes exceeds {limit}")
            if topic.kind == "request":
                self.decider.answer(topic, msg.payload)
                self.supervisor.heard(topic.device)
            elif topic.kind == "availability":
                if msg.payload:  # an empty one is a retained availability being deleted
                    value = msg.payload.decode("utf-8", "replace")[:16]
                    self.availability[topic.device] = value
                    self.supervisor.on_availability(topic.device, value, retained=bool(msg.retain))
                    if topic.device == "server" and value != AVAILABILITY_ONLINE:
                        self._still_online(client)
            elif topic.kind == "state":
                if msg.payload:
                    ts = state_timestamp(msg.payload, topic.device)
                    self.states[topic.device] = bytes(msg.payload)
                    self.supervisor.on_state(topic.device, ts, retained=bool(msg.retain))
                    if self.publisher is not None and self.publisher.note_state(topic.device, msg.payload):
                        self.defer(self.publish_policies, alone=True)  # its policy is behind the deltas: a full one (publisher.py)
                    if ts is not None and not msg.retain and topic.device != "server":
                        self._measure_clock(topic.device, ts)
                    mono = state_monotonic(msg.payload) if not msg.retain else None
                    if mono is not None:  # a live heartbeat: a retained one was written who knows when
                        self.decider.note_monotonic(topic.device, mono)
            elif topic.kind == "cmd":
                self._note_command(topic.device, msg.payload)
            elif topic.kind == "cmd_result":
                result = CommandResult.decode(msg.payload)
                self.supervisor.heard(topic.device)
                self._check_result(topic.device, result)
                for hook in list(self.command_results):
                    hook(topic.device, result)
            elif topic.kind in ("event", "snapshot"):
                self._check_door(topic.device, topic.door)
                self.supervisor.heard(topic.device)
                with self._idle:
                    self._queued += 1
                self._work.put(_Work(topic.kind, topic, msg.payload, self.clock.wall(), mid=msg.mid, qos=msg.qos))
                deferred = True
        except MessageError as exc:
            if device is None or device == "server":
                self._drop(msg.topic, str(exc))
            else:
                self._refuse(device, msg.topic, exc)
        except Exception:  # never let one message kill the network thread
            self.counters["errors"] += 1
            log.exception("unexpected error handling %s", msg.topic, extra=log_context(device))
        finally:
            if not deferred:
                client.ack(msg.mid, msg.qos)

    def _still_online(self, client: mqtt.Client) -> None:
        """The leader of several workers (``answer_requests`` False) heard the server called offline or stopped:
        a worker that led before it (its last will, or its goodbye) may land after this leader's ``online``. The
        doors would decide offline while the workers answer, so the leader says ``online`` again. One server is the
        only one who speaks for itself and never does this (its own ``stopped`` on the way out must stand)."""
        if self.answer_requests or self._leaving.is_set() or not self._connected.is_set():
            return
        self.counters["availability_restored"] += 1
        log.warning("the server's availability was set to something other than online (a previous leader); "
                    "saying online again")
        client.publish(self.topics.server_availability(), AVAILABILITY_ONLINE, qos=1, retain=True)

    def _measure_clock(self, device: str, ts: float) -> None:
        """A live heartbeat's ``ts`` against the server's clock: the edge's drift, kept for ``doorkeep doctor``
        (written on the store thread, like every other store write)."""
        wall = self.clock.wall()
        drift = ts - wall
        self.defer(lambda: self.store.record_device_clock(device, drift_s=drift, at=wall))

    def _drop(self, topic: str, why: str) -> None:
        self.counters["malformed"] += 1
        log.warning("dropped malformed message on %s: %s", topic, why)

    def _refuse(self, device: str, topic: str, exc: MessageError) -> None:
        """Count and log a message refused from ``device``'s subtree, and report it as misbehaviour.

        ``malformed`` (the contract's decode refused it) keeps its old counter; every refusal also counts
        under ``refused`` and ``refused_<category>``. The caller acknowledges the message either way.
        """
        category = exc.category if isinstance(exc, Refused) else "malformed"
        self.counters["refused"] += 1
        self.counters[f"refused_{category}"] += 1
        if category == "malformed":
            self.counters["malformed"] += 1
        log.warning("refused a message from device %s on %s (%s): %s", device, topic, category, exc,
                    extra=log_context(device))
        if threading.current_thread() is self._worker:
            self._report(device, category, str(exc), topic)
        else:  # alarms are written on the store thread, in order with the events
            with self._idle:
                self._queued += 1
            self._work.put(_Work("report", None, b"", 0.0,
                                 lambda: self._report(device, category, str(exc), topic)))

    def _report(self, device: str, category: str, why: str, topic: str) -> None:
        try:
            self.supervisor.misbehaving(device, category, why, topic)
        except (sqlite3.OperationalError, OSError):
            raise  # the store thread retries a refused disk
        except Exception:
            self.counters["errors"] += 1
            log.exception("could not report misbehaviour of %s", device, extra=log_context(device))

    # ------------------------------------------------------------ decisions

    def refuse_foreign_door(self, device: str, door: str | None) -> None:
        """A request about a door that is not the device's (answered unknown_door by a decider: this bus's, or a
        worker's in the leader's process, server/workers.py): counted, logged and reported as misbehaviour."""
        try:
            self._check_door(device, door)
        except Refused as exc:
            self._refuse(device, self.topics.request(device, door or ""), exc)

    @property
    def mono_offset(self) -> dict[str, tuple[float, float]]:
        """Device -> its monotonic clock's offset from the server's (server/decider.py)."""
        return self.decider.mono_offset

    @property
    def observe_answer(self) -> Callable[[float], None] | None:
        return self.decider.observe

    @observe_answer.setter
    def observe_answer(self, observe: Callable[[float], None] | None) -> None:
        self.decider.observe = observe

    # --------------------------------------------------------------- ingest

    def _store_loop(self) -> None:
        carry: list[_Work | None] = []  # an item taken off the queue while batching, handled next
        while True:
            work = carry.pop() if carry else self._work.get()
            if work is None:
                return
            if work.kind not in _BATCHED:
                self._store_one(work)
                continue
            # Group commit: the events and deferred presence writes already queued behind this one (in
            # order, up to STORE_BATCH; it never waits for more) go into one transaction. One commit per
            # row capped ingest at ~2,000 events/s and starved the decisions of the GIL (figures 3 and 4).
            batch = [work]
            while len(batch) < STORE_BATCH:
                try:
                    nxt = self._work.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or nxt.kind not in _BATCHED:
                    carry.append(nxt)
                    break
                batch.append(nxt)
            if len(batch) == 1:
                self._store_one(work)
            else:
                self._store_batch(batch)

    def _store_batch(self, batch: list[_Work]) -> None:
        """Store queued events and deferred writes in one transaction, then acknowledge each event.

        The rules of ``_store_one`` hold: a malformed event is dropped and acknowledged alone; a refused
        disk (full, read-only) is retried for the whole batch, never dropped; anything unexpected falls
        back to storing the items one by one, so one odd item cannot take the others down with it.
        Deferred writes are idempotent upserts, so running them again on a retry is harmless.
        """
        items: list[tuple[_Work, EventMsg | None]] = []
        for work in batch:
            if work.kind != "event":
                items.append((work, None))
                continue
            try:
                ev = self._decode_event(work)
            except MessageError as exc:
                self._refuse(work.topic.device, self.topics.event(work.topic.device, work.topic.door), exc)
                self._finish(work, stored=True)
                continue
            items.append((work, ev))
        if not items:
            return
        backoff = 0.1
        while True:
            try:
                rowids: list[int | None] = []
                began = self.clock.monotonic()
                with self.store.transaction():
                    for work, ev in items:
                        if ev is not None:
                            rowids.append(self.store.ingest_event(ev, work.received_at))
                        elif work.call is not None:
                            work.call()
                            rowids.append(None)
                if self.observe_commit is not None:
                    self.observe_commit(self.clock.monotonic() - began)
                break
            except (sqlite3.OperationalError, OSError) as exc:
                self.counters["store_retries"] += 1
                log.error("could not store %d items (%s); retrying in %.1f s", len(items), exc, backoff)
                if self._stopping.wait(backoff):
                    for work, _ in items:  # shutting down: not acknowledged, the broker delivers them again
                        self._finish(work, stored=False)
                    return
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("could not store a batch of %d items; storing them one by one", len(items))
                for work, _ in items:
                    self._store_one(work)
                return
        for (work, ev), rowid in zip(items, rowids):
            if ev is not None:
                try:
                    self._after_event(ev, rowid)
                except MessageError as exc:
                    self._refuse(ev.device, self.topics.event(ev.device, ev.door), exc)
                except Exception:
                    self.counters["errors"] += 1
                    log.exception("could not handle stored event %s", ev.id, extra=log_context(ev.device, ev.door, ev.id))
            self._finish(work, stored=True)

    def _finish(self, work: _Work, *, stored: bool) -> None:
        if stored and work.mid:
            self._client.ack(work.mid, work.qos)
        with self._idle:
            self._done += 1
            self._idle.notify_all()

    def _store_one(self, work: _Work) -> None:
        """Store one item, retrying while the disk refuses it (full, read-only): an event is never dropped.

        It is acknowledged to the broker only once stored (or found malformed), so until then the
        broker keeps it, and a server killed meanwhile gets it again from its persistent session.
        """
        backoff = 0.1
        stored = False
        try:
            while True:
                try:
                    if work.kind == "event":
                        self._ingest_event(work)
                    elif work.kind in ("call", "report", "task") and work.call is not None:
                        work.call()
                    else:
                        self._ingest_snapshot(work)
                    stored = True
                    return
                except MessageError as exc:
                    self._refuse(work.topic.device, f"{self.topics.device(work.topic.device)}/door/"
                                                    f"{work.topic.door}/{work.kind}", exc)
                    stored = True  # nothing to gain from having it sent again
                    return
                except (sqlite3.OperationalError, OSError) as exc:
                    self.counters["store_retries"] += 1
                    log.error("could not store %s (%s); retrying in %.1f s", work.kind, exc, backoff)
                    if self._stopping.wait(backoff):
                        return  # shutting down: not acknowledged, the broker delivers it again
                    backoff = min(backoff * 2, 5.0)
                except Exception:
                    # Acknowledged all the same: a message that fails the same way at every delivery would
                    # otherwise hold one of the broker's in-flight slots for this session forever.
                    self.counters["errors"] += 1
                    log.exception("could not store %s from %s; dropped", work.kind,
                                  work.topic.device if work.topic else "server",
                                  extra=log_context(work.topic.device if work.topic else None))
                    stored = True
                    return
        finally:
            if stored and work.mid:
                self._client.ack(work.mid, work.qos)
            with self._idle:
                self._done += 1
                self._idle.notify_all()

    def _decode_event(self, work: _Work) -> EventMsg:
        """Decode an event and check it against its topic and the server's clock (MessageError if refused)."""
        ev = EventMsg.decode(work.payload)
        if ev.device != work.topic.device or ev.door != work.topic.door:
            raise Refused("topic_mismatch", f"event names {ev.device}/{ev.door} but was published on "
                                            f"{work.topic.device}/{work.topic.door}")
        ahead = parse_iso_ms(ev.ts) - self.clock.wall()
        if ahead > self.max_event_skew_s:
            raise Refused("future_ts", f"event ts {ev.ts} is {ahead:.0f} s ahead of the server's clock "
                                       f"(at most {self.max_event_skew_s:.0f} s allowed)")
        return ev

    def _ingest_event(self, work: _Work) -> None:
        ev = self._decode_event(work)
        began = self.clock.monotonic()
        rowid = self.store.ingest_event(ev, work.received_at)
        if self.observe_commit is not None:
            self.observe_commit(self.clock.monotonic() - began)
        self._after_event(ev, rowid)

    def _after_event(self, ev: EventMsg, rowid: int | None) -> None:
        """Counters, presence, supervision and listeners for an event just stored (rowid None: a duplicate)."""
        new = rowid is not None
        if not new:
            # The same id stored for another device or door: not a re-delivery but a forgery that would
            # re-run another device's alarms and listeners under this one's name.
            first = self.store.event(ev.id)
            if first is not None and (first["device"], first["door"]) != (ev.device, ev.door):
                raise Refused("foreign_event_id", f"event id {ev.id!r} already belongs to an event at "
                                                  f"{first['device']}/{first['door']}")
        self.counters["events" if new else "duplicate_events"] += 1
        if new:
            self.ingested[ev.type] += 1
            if ev.type == "access" and ev.decided_by == "edge_offline":
                self.offline_decisions[(ev.door, ev.reason or "")] += 1
        if new and ev.decided_by == "edge_offline" and ev.decision == "granted" and ev.person:
            self._offline_grant(ev)
        if new and ev.type == "passage" and ev.detail.get("grant"):
            self._turnstile_passage(ev)
        if new and ev.type == "floor_chosen" and ev.detail.get("grant"):
            self._floor_chosen(ev)
        try:
            self.supervisor.on_event(ev, rowid)
        except Exception:
            self.counters["errors"] += 1
            log.exception("supervision of event %s failed", ev.id, extra=log_context(ev.device, ev.door, ev.id))
        for listener in list(self.listeners):
            try:
                listener(ev, new)
            except Exception:
                log.exception("event listener failed")

    def _offline_grant(self, ev: EventMsg) -> None:
        """The edge let someone through on its own: presence follows the door, as if the server had decided,
        for the badge holder and everyone who passed with them (an escorted visitor, the first of two). At a
        turnstile they move when the passage is counted instead; at a lift when the floor is chosen, or at once
        to the floor a destination-dispatch badge asked for and was granted."""
        d = self.directory.site.doors.get(ev.door)
        if d is not None and d.kind is DoorKind.TURNSTILE:
            return
        if d is not None and d.kind is DoorKind.LIFT:
            floor, floors = ev.detail.get("floor"), ev.detail.get("floors")
            if isinstance(floor, str) and isinstance(floors, list) and floor in floors \
                    and floor in d.entered:
                self.directory.record_passage(ev.person or "", ev.door, ev.ts, ev.companions, area=floor)
            return
        self.directory.record_passage(ev.person or "", ev.door, ev.ts, ev.companions)

    def _turnstile(self, door: str) -> bool:
        d = self.directory.site.doors.get(door)
        return d is not None and d.kind is DoorKind.TURNSTILE

    def _granted_here(self, ev: EventMsg, grant: Any) -> dict[str, Any] | None:
        """The stored granted access event ``grant`` names, if it is one of the same device and door with a
        person: a passage or a floor chosen cannot move people another door let in."""
        access = self.store.event(grant) if isinstance(grant, str) else None
        if access is None or access["type"] != "access" or access["decision"] != "granted" \
                or (access["device"], access["door"]) != (ev.device, ev.door) or not access["person"]:
            return None
        return access

    def _floor_chosen(self, ev: EventMsg) -> None:
        """A lift cab's floor button used a grant: move the people that grant named to the floor chosen, at the
        time of the press (docs/openings.md "Lifts"). Only a floor the grant enabled counts."""
        grant, floor = ev.detail.get("grant"), ev.detail.get("floor")
        access = self._granted_here(ev, grant)
        enabled = json.loads(access["detail"]).get("floors", []) if access and access.get("detail") else []
        if access is None or not isinstance(floor, str) or floor not in enabled:
            self.counters["floors_without_grant"] += 1
            log.warning("floor_chosen %s at %s/%s names grant %r and floor %r, which that grant did not enable: "
                        "nobody moved", ev.id, ev.device, ev.door, grant, floor,
                        extra=log_context(ev.device, ev.door, ev.id))
            return
        companions = tuple(json.loads(access["companions"])) if access.get("companions") else ()
        self.directory.record_passage(access["person"], ev.door, ev.ts, companions, area=floor)

    def _turnstile_passage(self, ev: EventMsg) -> None:
        """A turnstile counted the passage of a grant: move the people that grant's access event names (the badge
        holder and their companions), at the time of the passage (docs/openings.md "Turnstiles").

        Only a granted access event of the same device and door counts, so a passage cannot move people another
        door let in; a grant whose access event is not stored (yet) moves nobody and is counted.
        """
        grant = ev.detail.get("grant")
        access = self._granted_here(ev, grant)
        if access is None:
            self.counters["passages_without_grant"] += 1
            log.warning("passage %s at %s/%s names grant %r, which is not a grant stored for that door: nobody moved",
                        ev.id, ev.device, ev.door, grant, extra=log_context(ev.device, ev.door, ev.id))
            return
        companions = tuple(json.loads(access["companions"])) if access.get("companions") else ()
        self.directory.record_passage(access["person"], ev.door, ev.ts, companions)

    def _ingest_snapshot(self, work: _Work) -> None:
        """Store a sealed snapshot (doorkeep/envelope.py); an unsealed, forged or foreign one is dropped."""
        event = self.store.event(work.topic.event_id)
        if event is not None and (event["device"], event["door"]) != (work.topic.device, work.topic.door):
            self.counters["snapshots_refused"] += 1
            raise Refused("topic_mismatch", f"snapshot published on door {work.topic.door!r} for an event at "
                                            f"{event['device']}/{event['door']}")
        try:
            new = self.store.insert_snapshot(work.topic.event_id, work.topic.device, work.topic.door,
                                             work.payload, work.received_at, site=self.site.id)
        except EnvelopeError as exc:
            self.counters["snapshots_refused"] += 1
            raise Refused("bad_snapshot", f"snapshot refused: {exc}") from None
        self.counters["snapshots" if new else "duplicate_snapshots"] += 1
        if new:
            for listener in list(self.snapshot_listeners):
                try:
                    listener(work.topic.event_id, work.topic.device, work.topic.door)
                except Exception:
                    log.exception("snapshot listener failed")

    def wait_idle(self, timeout: float) -> bool:
        """True once every event and snapshot received so far has been stored (tests and the demo use it)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._done >= self._queued, timeout)
