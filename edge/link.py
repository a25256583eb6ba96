"""The edge's MQTT link (paho-mqtt 2.x, callback API v2).

The last will (``offline``, retained) is set before connecting; on every
(re)connect the link subscribes, republishes the retained state, then says
``online``; a clean stop says ``stopped``. Paho reconnects by itself with a
bounded backoff: nothing here sleeps in a callback. Messages are handed to
the agent's callbacks and never processed on the network thread beyond
decoding.

Events and snapshots are not published here directly: they sit in the
outbox (``edge/outbox.py``) and the link's own thread pumps them out in
order while connected; paho's PUBACK callback only hands the message id to
the pump. paho never holds more than the pump's window of outbox messages
(nothing is published while disconnected), and its queue is bounded. Direct
publishes are kept for traffic that is useless later (requests, state,
availability). The same thread republishes the retained state every
``heartbeat_s`` seconds: the server treats it as the device's heartbeat.

Signed commands on ``cmd`` are handed to the agent as bytes (``on_command``);
the agent verifies and answers them on ``cmd/result``.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt

from doorkeep.config import BrokerConfig
from doorkeep.contract import AVAILABILITY_OFFLINE, AVAILABILITY_ONLINE, AVAILABILITY_STOPPED, Topics, parse_topic
from doorkeep.errors import MessageError
from doorkeep.pki import check_transport, client_tls_context
from edge.outbox import Outbox, Pump

log = logging.getLogger("doorkeep.edge.link")

#: Room in paho's queue for direct messages (requests, state, availability) beside the pump's window.
DIRECT_QUEUE = 256
#: After a (re)connect the state is published once more this much later (see _run).
RESTATE_AFTER_CONNECT_S = 1.0


class Link:
    def __init__(self, site: str, device: str, broker: BrokerConfig, *,
                 on_decision: Callable[[str, bytes], None],
                 state_payload: Callable[[], bytes],
                 on_server_availability: Callable[[str], None] | None = None,
                 on_policy: Callable[[bytes], None] | None = None,
                 on_command: Callable[[bytes], None] | None = None,
                 outbox: Outbox | None = None, heartbeat_s: float = 30.0,
                 drain_rate: float = 200.0, window: int = 32) -> None:
        """``outbox``: the rows to pump out (None: no events from this link); ``drain_rate`` in messages
        per second and ``window`` unacknowledged messages bound how fast a backlog drains."""
        self.topics = Topics(site)
        self.device = device
        self.broker = broker
        self.on_decision = on_decision
        self.state_payload = state_payload
        self.on_server_availability = on_server_availability
        self.on_policy = on_policy
        self.on_command = on_command  # signed commands (doorkeep/commands.py); verified by the agent, not here
        self.malformed = 0
        self._connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   # 128 random bits: unguessable where the broker does not bind ids to
                                   # certificates (a known id lets anyone drop this link); clean session.
                                   client_id=f"doorkeep-edge-{device}-{secrets.token_hex(16)}",
                                   clean_session=True)
        self._client.will_set(self.topics.availability(device), AVAILABILITY_OFFLINE, qos=1, retain=True)
        # Plain mqtt:// is refused (ConfigError) unless explicitly allowed, before anything starts.
        self._plain_warning = check_transport(broker)
        # mqtts://: mutual TLS (1.2 at least) with this client's certificate; a bad file fails here, not later.
        tls = client_tls_context(broker)
        if tls is not None:
            self._client.tls_set_context(tls)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        # The pump bounds outbox traffic; paho sends at once (no queue of its own in front of requests)
        # and refuses to hold more than that window plus a little direct traffic.
        self._client.max_inflight_messages_set(0)
        self._client.max_queued_messages_set(window + DIRECT_QUEUE)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self.heartbeat_s = heartbeat_s
        self.heartbeats = 0
        self._connects = 0
        self.pump_errors = 0
        self._state_lock = threading.Lock()  # one state payload at a time, so an older one never lands last
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.pump = (Pump(outbox, self._send, rate=drain_rate, window=window, wake=self._wake.set)
                     if outbox is not None else None)
        self._thread = threading.Thread(target=self._run, name=f"doorkeep-link-{device}", daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Connect in the background (loudly, if plain MQTT was explicitly allowed)."""
        if self._plain_warning is not None:
            log.warning("edge %s: %s", self.device, self._plain_warning)
        self._thread.start()
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        """Stop pumping (what is not acknowledged stays in the outbox), say ``stopped``, disconnect."""
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._connected.is_set():
            info = self._client.publish(self.topics.availability(self.device), AVAILABILITY_STOPPED, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except RuntimeError:
                pass
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Direct QoS 1 publish, for what is useless later (requests); events and snapshots go to the outbox."""
        return self._client.publish(topic, payload, qos=1, retain=retain)

    def publish_state(self) -> None:
        if self._connected.is_set():
            with self._state_lock:
                self.publish(self.topics.state(self.device), self.state_payload(), retain=True)

    def wake(self) -> None:
        """Make the pump look at the outbox now."""
        self._wake.set()

    # ------------------------------------------------------ pump and heartbeat

    def _send(self, topic: str, payload: bytes) -> int | None:
        """Hand one outbox row to paho; its message id, or None if paho refused it (the row stays)."""
        info = self._client.publish(topic, payload, qos=1)
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: the connection dropped under us; paho keeps this copy and sends it on reconnect.
            return info.mid
        log.debug("paho refused an outbox message (%s); it stays in the outbox", mqtt.error_string(info.rc))
        return None

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if self.pump is not None:
            self.pump.acked(mid)

    def _run(self) -> None:
        """The link's thread: pump the outbox while connected, republish the state every heartbeat_s."""
        next_beat = time.monotonic() + self.heartbeat_s
        seen_connects = 0
        while not self._stopping.is_set():
            self._wake.clear()
            if self._connects != seen_connects:
                # paho re-sends, after on_connect, what it had in flight when the link dropped, an older
                # state among it: say the current state again shortly after, so the retained one is fresh.
                seen_connects = self._connects
                next_beat = min(next_beat, time.monotonic() + RESTATE_AFTER_CONNECT_S)
            delay: float | None = None
            if self.pump is not None:
                try:
                    delay = self.pump.step()
                except Exception:
                    # A disk or client error must not kill delivery for good: the rows stay, try again.
                    self.pump_errors += 1
                    log.exception("outbox pump failed; retrying in 1 s")
                    delay = 1.0
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                try:
                    if self._connected.is_set():
                        self.publish_state()
                        self.heartbeats += 1
                except Exception:
                    log.exception("heartbeat state publish failed")
            wait = next_beat - now if delay is None else min(delay, next_beat - now)
            self._wake.wait(max(0.0, wait))

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker %s refused the connection: %s", self.broker.url, reason)
            return
        sock = client.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(self.topics.all_decisions(self.device), qos=1)
        client.subscribe(self.topics.server_availability(), qos=1)
        if self.on_policy is not None:
            client.subscribe(self.topics.policy(self.device), qos=1)
        if self.on_command is not None:
            client.subscribe(self.topics.cmd(self.device), qos=1)
        with self._state_lock:
            client.publish(self.topics.state(self.device), self.state_payload(), qos=1, retain=True)
        client.publish(self.topics.availability(self.device), AVAILABILITY_ONLINE, qos=1, retain=True)
        self._connected.set()
        self._connects += 1
        if self.pump is not None:
            self.pump.connected()
        self._wake.set()
        log.info("%s connected to %s", self.device, self.broker.url)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
        if self.pump is not None:
            self.pump.disconnected()
        if not reason.is_failure:
            log.info("disconnected from the broker")
            return
        log.warning("%s disconnected from the broker: %s", self.device, reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(msg.topic)
            if topic.device == "server" and topic.kind == "availability":
                if self.on_server_availability:
                    self.on_server_availability(msg.payload.decode("utf-8", "replace")[:16])
                return
            if topic.kind == "policy" and topic.device == self.device and self.on_policy is not None:
                self.on_policy(msg.payload)
                return
            if topic.kind == "cmd" and topic.device == self.device and self.on_command is not None:
                self.on_command(msg.payload)
                return
            if topic.kind in ("availability", "state", "policy"):
                # Not subscribed to, but amqtt delivers other devices' retained messages; ignore them.
                log.debug("ignored %s", msg.topic)
                return
            if topic.kind != "decision" or topic.device != self.device or topic.door is None:
                raise MessageError(f"unexpected topic {msg.topic}")
            self.on_decision(topic.door, msg.payload)
        except MessageError as exc:
            self.malformed += 1
            log.warning("dropped message on %s: %s", msg.topic, exc)
        except Exception:
            self.malformed += 1
            log.exception("error handling %s", msg.topic)
