"""The edge's MQTT link (paho-mqtt 2.x, callback API v2).

The last will (``offline``, retained) is set before connecting; on every
(re)connect the link subscribes, republishes the retained state, then says
``online``; a clean stop says ``stopped``. Paho reconnects by itself with a
bounded backoff: nothing here sleeps in a callback. Messages are handed to
the agent's callbacks and never processed on the network thread beyond
decoding.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from typing import Any, Callable

import paho.mqtt.client as mqtt

from doorkeep.config import BrokerConfig
from doorkeep.contract import AVAILABILITY_OFFLINE, AVAILABILITY_ONLINE, AVAILABILITY_STOPPED, Topics, parse_topic
from doorkeep.errors import MessageError

log = logging.getLogger("doorkeep.edge.link")


class Link:
    def __init__(self, site: str, device: str, broker: BrokerConfig, *,
                 on_decision: Callable[[str, bytes], None],
                 state_payload: Callable[[], bytes],
                 on_server_availability: Callable[[str], None] | None = None,
                 on_policy: Callable[[bytes], None] | None = None) -> None:
        self.topics = Topics(site)
        self.device = device
        self.broker = broker
        self.on_decision = on_decision
        self.state_payload = state_payload
        self.on_server_availability = on_server_availability
        self.on_policy = on_policy
        self.malformed = 0
        self._connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                   client_id=f"doorkeep-edge-{device}-{uuid.uuid4().hex[:6]}",
                                   clean_session=True)
        self._client.will_set(self.topics.availability(device), AVAILABILITY_OFFLINE, qos=1, retain=True)
        self._client.reconnect_delay_set(min_delay=1, max_delay=10)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self) -> None:
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=self.broker.keepalive)
        self._client.loop_start()

    def stop(self) -> None:
        if self._connected.is_set():
            info = self._client.publish(self.topics.availability(self.device), AVAILABILITY_STOPPED, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2.0)
            except RuntimeError:
                pass
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """QoS 1 publish; paho queues it while the broker is away (the durable outbox comes later)."""
        return self._client.publish(topic, payload, qos=1, retain=retain)

    def publish_state(self) -> None:
        if self._connected.is_set():
            self.publish(self.topics.state(self.device), self.state_payload(), retain=True)

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
        client.publish(self.topics.state(self.device), self.state_payload(), qos=1, retain=True)
        client.publish(self.topics.availability(self.device), AVAILABILITY_ONLINE, qos=1, retain=True)
        self._connected.set()
        log.info("%s connected to %s", self.device, self.broker.url)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connected.clear()
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
