"""The edge's MQTT link (paho-mqtt 2.x, callback API v2) on the edge's reactor.

paho runs in its external-loop mode: its socket is one more file descriptor of :class:`edge.loop.Loop`
(``loop_read`` when it is readable, ``loop_write`` after every turn that queued something, ``loop_misc`` on a
one-second wire timer), so a decision read from the socket is acted on in the same call, on the door's thread,
and a request is written to the socket before that call returns. No paho thread exists.

Connecting is the one blocking step (DNS, TCP, TLS handshake; up to paho's connect timeout when the broker's
host is unreachable). It runs on a short-lived connector thread that only exists while a connection is being
made; the loop does not touch the client until the connector hands the socket over. After a loss the link
reconnects with a bounded backoff (1 s doubling to 10 s), on a wire timer.

Several broker addresses (``[broker] url`` as a list; docs/scale.md, "Several broker addresses"): a failed
connect or a lost connection moves to the next address at once; the backoff applies once per full round,
counted from the address that last worked. Each broker has its own sessions, so on every move the link drops
what paho still held unacknowledged (paho would re-send it to a broker where the server may not yet be
subscribed, and take that broker's PUBACK as delivery): the outbox keeps those rows and its pump sends them
again, in order, once the server says ``online`` on the new broker. A broker on which the server is not
``online`` for SERVER_WAIT_S is left for the next one: the edges follow the server wherever it went.

The last will (``offline``, retained) is set before connecting; on every (re)connect the link subscribes,
republishes the retained state, then says ``online``; a clean stop says ``stopped``. Messages are decoded here
and handed to the agent's callbacks on the loop thread.

Events and snapshots are not published here directly: they sit in the outbox (``edge/outbox.py``) and the
outbox's :class:`~edge.outbox.Pump` (stepped on the jobs worker, edge/jobs.py, which owns the disk) hands
them to :meth:`Link._send` in order while connected; paho's PUBACK callback only hands the message id to
the pump. paho never holds more than the pump's window of outbox messages, and its queue is bounded. Direct
publishes are kept for traffic that is useless later (requests, state, availability). The retained state is
republished every ``heartbeat_s`` seconds: the server treats it as the device's heartbeat.

Signed commands on ``cmd`` are handed to the agent as bytes (``on_command``); the agent verifies and answers
them on ``cmd/result``.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

import paho.mqtt.client as mqtt

from doorkeep.config import BrokerConfig
from doorkeep.contract import AVAILABILITY_OFFLINE, AVAILABILITY_ONLINE, AVAILABILITY_STOPPED, Topics, parse_topic
from doorkeep.errors import MessageError
from doorkeep.pki import check_transport, client_tls_context
from edge.outbox import Outbox, Pump

if TYPE_CHECKING:
    from edge.jobs import Jobs
    from edge.loop import Loop, Timer

log = logging.getLogger("doorkeep.edge.link")

#: Room in paho's queue for direct messages (requests, state, availability) beside the pump's window.
DIRECT_QUEUE = 256
#: After a (re)connect the state is published once more this much later (see _connected_now).
RESTATE_AFTER_CONNECT_S = 1.0
#: paho's keepalive bookkeeping (PINGREQ when due, a dead broker noticed) runs this often.
MISC_INTERVAL_S = 1.0
#: Reconnect backoff: the first retry after this, doubling up to RECONNECT_MAX_S.
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 10.0
#: How long stop() waits for the broker to acknowledge ``stopped``.
STOP_ACK_S = 2.0
#: Several addresses: how long a connected broker may go without the server ``online`` before the link moves on.
SERVER_WAIT_S = 10.0


class Link:
    """One device's MQTT connection, driven by the edge's loop; every method runs on the loop thread unless it
    says otherwise."""

    def __init__(self, site: str, device: str, broker: BrokerConfig, *, loop: Loop | None = None,
                 on_decision: Callable[[str, bytes], None],
                 state_payload: Callable[[], bytes],
                 on_server_availability: Callable[[str], None] | None = None,
                 on_policy: Callable[[bytes], None] | None = None,
                 on_policy_delta: Callable[[bytes], None] | None = None,
                 on_command: Callable[[bytes], None] | None = None,
                 outbox: Outbox | None = None, jobs: Jobs | None = None, heartbeat_s: float = 30.0,
                 drain_rate: float = 200.0, window: int = 32) -> None:
        """``outbox``: the rows to pump out (None: no events from this link), stepped on ``jobs``;
        ``drain_rate`` in messages per second and ``window`` unacknowledged messages bound how fast a backlog
        drains. Without ``loop`` (a test, a benchmark, a tool) the link runs a loop and a jobs worker of its own,
        started by :meth:`start` and ended by :meth:`stop`; the agent passes its own and drives
        :meth:`begin_stop` and :meth:`close` itself."""
        from edge.jobs import Jobs
        from edge.loop import Loop

        self.topics = Topics(site)
        self.device = device
        self.broker = broker
        #: Every broker address, in order (one for a plain ``url``); a bad list is a ConfigError here.
        self.addresses = broker.addresses
        self.address_index = 0          # the address connected to, or being tried (loop thread)
        self._round_start = 0           # where the current round of tries began: the last address that worked
        self._server_here = False       # several addresses: the server said ``online`` on this connection
        self._server_wait: Timer | None = None
        #: Moves to another address (several addresses only; on the loop thread).
        self.address_moves = 0
        self._own = loop is None
        if loop is None:
            loop = Loop(name=f"doorkeep-link-{device}")
        if jobs is None and outbox is not None:
            if not self._own:
                raise ValueError("an outbox needs the jobs worker that steps its pump")
            jobs = Jobs({}, name=f"doorkeep-pump-{device}")
        self._jobs = jobs if self._own else None
        self.loop = loop
        self.on_decision = on_decision
        self.state_payload = state_payload
        self.on_server_availability = on_server_availability
        self.on_policy = on_policy
        self.on_policy_delta = on_policy_delta  # signed deltas on the policy held (doorkeep/policy_delta.py)
        self.on_command = on_command  # signed commands (doorkeep/commands.py); verified by the agent, not here
        self.malformed = 0
        self.heartbeat_s = heartbeat_s
        self.heartbeats = 0
        self.connect_failures = 0
        #: Connections made (the first included; on the loop thread); reconnects are the ones after the first.
        self.connections = 0
        #: ``time.monotonic()`` when the link went down (at creation: it starts down), None while it is up.
        self.disconnected_since: float | None = time.monotonic()
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
        # The pump bounds outbox traffic; paho sends at once (no queue of its own in front of requests)
        # and refuses to hold more than that window plus a little direct traffic.
        self._client.max_inflight_messages_set(0)
        self._client.max_queued_messages_set(window + DIRECT_QUEUE)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        # External loop: paho tells us when its socket closes and when it has bytes to write (then it never
        # writes from the publishing thread itself: a publish from the jobs worker is written by the loop).
        self._client.on_socket_close = self._on_socket_close
        self._client.on_socket_register_write = self._on_register_write
        self._client.on_socket_unregister_write = lambda *_: None
        self._fd: int | None = None
        self._connecting = False
        self._connector: threading.Thread | None = None
        self._stopping = False
        self._backoff = RECONNECT_MIN_S
        self._beat: Timer | None = None
        self._misc: Timer | None = None
        self._retry: Timer | None = None
        self._stopped_mid: int | None = None
        self.stop_acknowledged = threading.Event()
        # Several addresses: paho's unacknowledged copies are dropped on every move (see the module docstring),
        # so the pump re-sends its rows at once instead of waiting for acknowledgements that cannot come.
        grace = {"resend_grace_s": 0.0} if self.several else {}
        self.pump = (Pump(outbox, self._send, rate=drain_rate, window=window, wake=jobs.pump_wake, **grace)
                     if outbox is not None and jobs is not None else None)
        if self.pump is not None and jobs is not None:
            jobs.attach_pump(self.pump)
        loop.add_flush(self._flush)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def several(self) -> bool:
        """More than one broker address: the link moves between them."""
        return len(self.addresses) > 1

    @property
    def address(self) -> str:
        """The URL connected to, or being tried."""
        return self.broker.urls[self.address_index]

    def wait_connected(self, timeout: float) -> bool:
        """Any thread."""
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Connect in the background (loudly, if plain MQTT was explicitly allowed)."""
        if self._plain_warning is not None:
            log.warning("edge %s: %s", self.device, self._plain_warning)
        host, port = self.addresses[self.address_index]
        self._client.connect_async(host, port, keepalive=self.broker.keepalive)
        self._beat = self.loop.call_later(self.heartbeat_s, self._heartbeat, wire=True)
        self._misc = self.loop.call_later(MISC_INTERVAL_S, self._keepalive, wire=True)
        self._connect()
        if self._own:
            if self._jobs is not None:
                self._jobs.start()
            self.loop.start()

    def stop(self) -> None:
        """A link with a loop of its own: say ``stopped`` (acknowledged within STOP_ACK_S), disconnect, end the
        loop and the pump. (The agent, whose loop this is not, calls begin_stop and close at its own steps.)"""
        if not self._own:
            raise RuntimeError("this link runs on its owner's loop: its owner stops it (begin_stop, close)")
        if self.loop.running:
            self.loop.call_and_wait(self.begin_stop, STOP_ACK_S)
            self.stop_acknowledged.wait(STOP_ACK_S)
            self.loop.stop()
        else:
            self.begin_stop()
        self.close()
        if self._jobs is not None:
            self._jobs.stop()
        self.loop.close()

    def begin_stop(self) -> None:
        """Stop pumping (what is not acknowledged stays in the outbox) and say ``stopped``; :attr:`stop_acknowledged`
        is set once the broker has it (or at once when not connected). :meth:`close` then disconnects."""
        self._stopping = True
        for timer in (self._beat, self._misc, self._retry, self._server_wait):
            if timer is not None:
                timer.cancel()
        if self.pump is not None:
            self.pump.disconnected()  # nothing more goes out; unacknowledged rows stay
        if not self._connected.is_set():
            self.stop_acknowledged.set()
            return
        info = self._client.publish(self.topics.availability(self.device), AVAILABILITY_STOPPED, qos=1, retain=True)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            self.stop_acknowledged.set()
            return
        self._stopped_mid = info.mid

    def close(self) -> None:
        """Disconnect and forget the socket (after :meth:`begin_stop`); on the loop thread or once it ended."""
        self._stopping = True
        connector = self._connector
        if connector is not None and connector is not threading.current_thread():
            connector.join(timeout=1.0)
        try:
            self._client.disconnect()  # paho closes the socket once DISCONNECT is written
            self._flush()
        except Exception:  # the socket is going either way
            log.debug("disconnect failed", exc_info=True)
        if self._client.socket() is not None:
            self._client._sock_close()  # noqa: SLF001 - not written (not connected yet): close it anyway
        self._forget_socket()
        self._connected.clear()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Direct QoS 1 publish, for what is useless later (requests); events and snapshots go to the outbox.

        On the loop thread the bytes reach the socket when this turn ends (the flush hook); from another thread
        the loop is woken to write them."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if not self.loop.in_loop():
            self.loop.call_soon_threadsafe(self._flush)
        return info

    def publish_state(self) -> None:
        if self._connected.is_set():
            self.publish(self.topics.state(self.device), self.state_payload(), retain=True)

    def wake(self) -> None:
        """Make the pump look at the outbox now (any thread)."""
        if self.pump is not None:
            self.pump.wake()

    # ------------------------------------------------------ socket on the loop

    def _connect(self) -> None:
        """Start a connection attempt on the connector thread (DNS, TCP and TLS may block)."""
        self._retry = None
        if self._fd is not None and self._client.socket() is None:
            self._forget_socket()  # closed by paho in a callback that did not get to forget it
        if self._stopping or self._connecting or self._fd is not None:
            return
        self._connecting = True
        self._connector = threading.Thread(target=self._connect_blocking, name=f"doorkeep-connect-{self.device}",
                                           daemon=True)
        self._connector.start()

    def _connect_blocking(self) -> None:
        """Connector thread: paho's reconnect() (socket, TLS handshake, CONNECT queued); the loop takes it over."""
        try:
            self._client.reconnect()
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, TLS: all mean "try again later"
            self.loop.call_soon_threadsafe(self._connect_failed, exc)
            return
        self.loop.call_soon_threadsafe(self._socket_ready)

    def _connect_failed(self, exc: BaseException) -> None:
        self._connecting = False
        self.connect_failures += 1
        (log.warning if self.connect_failures == 1 or self.several else log.debug)(
            "%s: cannot reach the broker %s: %s", self.device, self.address, exc)
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        """Try again: the next address at once, or (one address, or a full round tried) after the backoff."""
        if self._stopping or self._retry is not None:
            return
        if self.several:
            self._move_on()
            if self.address_index != self._round_start:
                self._retry = self.loop.call_later(0.0, self._connect, wire=True)
                return
        log.debug("%s: next try in %.0f s", self.device, self._backoff)
        self._retry = self.loop.call_later(self._backoff, self._connect, wire=True)
        self._backoff = min(self._backoff * 2, RECONNECT_MAX_S)

    def _move_on(self) -> None:
        """Point paho at the next address (loop thread, no socket open) and drop what it held for the last one:
        that broker's PUBACKs can no longer come, and the new one has no session for this client. The outbox
        still holds every event not acknowledged; requests and state are useless later anyway."""
        self.address_index = (self.address_index + 1) % len(self.addresses)
        self.address_moves += 1
        host, port = self.addresses[self.address_index]
        self._client.connect_async(host, port, keepalive=self.broker.keepalive)
        with self._client._out_message_mutex:  # noqa: SLF001 - paho has no public way to forget them
            self._client._out_messages.clear()  # noqa: SLF001
            self._client._inflight_messages = 0  # noqa: SLF001

    def _socket_ready(self) -> None:
        self._connecting = False
        sock = self._client.socket()
        if sock is None or self._stopping:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self._fd = sock.fileno()
        self.loop.add_reader(self._fd, self._readable)
        self._flush()  # the CONNECT paho queued

    def _readable(self) -> None:
        rc = self._client.loop_read()
        sock = self._client.socket()
        # TLS: a record may hold more than one packet; what OpenSSL has buffered, select() cannot see.
        while rc == mqtt.MQTT_ERR_SUCCESS and sock is not None and getattr(sock, "pending", lambda: 0)() > 0:
            rc = self._client.loop_read()
            sock = self._client.socket()
        if self._client.socket() is None:
            self._forget_socket()

    def flush(self) -> None:
        """Write what paho has queued now (loop thread), rather than when this turn ends."""
        self._flush()

    def _flush(self) -> None:
        """After every loop turn: write what paho has queued; wait for writability if the socket is full."""
        if self._fd is None or self._connecting or self._client.socket() is None:
            return
        if self._client.want_write():
            self._client.loop_write()
        if self._client.socket() is None:
            self._forget_socket()
            return
        if self._client.want_write():
            self.loop.add_writer(self._fd, self._flush)
        else:
            self.loop.remove_writer(self._fd)

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        """Set only so that paho never writes from the publishing thread itself. Nothing to do here: the loop's
        flush hook writes after every turn, :meth:`publish` wakes the loop for a publish from another thread,
        and :meth:`_socket_ready` writes the CONNECT the connector thread queued."""

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self.loop.in_loop():
            self._forget_socket()
        else:
            self.loop.call_soon_threadsafe(self._forget_socket)

    def _forget_socket(self) -> None:
        if self._fd is not None:
            self.loop.remove_reader(self._fd)
            self.loop.remove_writer(self._fd)
            self._fd = None

    def _keepalive(self) -> None:
        if self._fd is not None and not self._connecting:
            self._client.loop_misc()  # PINGREQ when due; a silent broker is a lost connection
            if self._client.socket() is None:
                self._forget_socket()
        if not self._stopping:
            self._misc = self.loop.call_later(MISC_INTERVAL_S, self._keepalive, wire=True)

    def _heartbeat(self) -> None:
        """Republish the retained state every heartbeat_s: the server's sign of life from this device."""
        if self._stopping:
            return
        self._beat = self.loop.call_later(self.heartbeat_s, self._heartbeat, wire=True)
        try:
            if self._connected.is_set():
                self.publish_state()
                self.heartbeats += 1
        except Exception:
            log.exception("heartbeat state publish failed")

    # ------------------------------------------------------ pump (jobs worker)

    def _send(self, topic: str, payload: bytes) -> int | None:
        """Hand one outbox row to paho (jobs worker); its message id, or None if paho refused it (the row stays)."""
        info = self.publish(topic, payload)
        if info.rc in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: the connection dropped under us; paho keeps this copy and sends it on reconnect.
            return info.mid
        log.debug("paho refused an outbox message (%s); it stays in the outbox", mqtt.error_string(info.rc))
        return None

    # ------------------------------------------------------ paho callbacks (loop thread)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if mid == self._stopped_mid:
            self.stop_acknowledged.set()
        if self.pump is not None:
            self.pump.acked(mid)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("broker %s refused the connection: %s", self.address, reason)
            return
        client.subscribe(self.topics.all_decisions(self.device), qos=1)
        client.subscribe(self.topics.server_availability(), qos=1)
        if self.on_policy is not None:
            client.subscribe(self.topics.policy(self.device), qos=1)
        if self.on_policy_delta is not None:
            client.subscribe(self.topics.policy_delta(self.device), qos=1)
        if self.on_command is not None:
            client.subscribe(self.topics.cmd(self.device), qos=1)
        client.publish(self.topics.state(self.device), self.state_payload(), qos=1, retain=True)
        client.publish(self.topics.availability(self.device), AVAILABILITY_ONLINE, qos=1, retain=True)
        self._connected.set()
        self.connections += 1
        self.disconnected_since = None
        self._backoff = RECONNECT_MIN_S
        self.connect_failures = 0
        # paho re-sends, after on_connect, what it had in flight when the link dropped, an older state among
        # it: say the current state again shortly after, so the retained one is fresh.
        self.loop.call_later(RESTATE_AFTER_CONNECT_S, self.publish_state, wire=True)
        self._round_start = self.address_index  # the next round of tries starts after this address
        if not self.several:
            if self.pump is not None:
                self.pump.connected()
        else:
            # The outbox waits for the server's `online` on this broker: before it, nobody may be subscribed
            # here to take the events (a standby broker has no session for the server yet).
            self._server_here = False
            self._await_server()
        log.info("%s connected to %s", self.device, self.address)

    def _await_server(self) -> None:
        """Several addresses: leave this broker if the server is not ``online`` on it within SERVER_WAIT_S."""
        if self._server_wait is None and not self._stopping:
            self._server_wait = self.loop.call_later(SERVER_WAIT_S, self._server_absent, wire=True)

    def _server_heard(self, value: str) -> None:
        """Several addresses: the server's availability on this broker starts or pauses the outbox here."""
        if not self.several or not self._connected.is_set():
            return
        here = value == AVAILABILITY_ONLINE
        if here == self._server_here:
            return
        self._server_here = here
        if here:
            if self._server_wait is not None:
                self._server_wait.cancel()
                self._server_wait = None
            if self.pump is not None:
                self.pump.connected()
        else:
            # What the outbox sends now would wait on this broker for a server that may come back elsewhere.
            if self.pump is not None:
                self.pump.disconnected()
            self._await_server()

    def _server_absent(self) -> None:
        self._server_wait = None
        if self._stopping or self._server_here or not self._connected.is_set():
            return
        log.warning("%s: the server has not been online on %s for %.0f s; trying the next broker",
                    self.device, self.address, SERVER_WAIT_S)
        # `offline` here (a clean DISCONNECT sends no will), then the disconnect callback moves on.
        self._client.publish(self.topics.availability(self.device), AVAILABILITY_OFFLINE, qos=1, retain=True)
        self._client.disconnect()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._lost(reason)

    def _lost(self, reason: Any = None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._server_here = False
        if self._server_wait is not None:
            self._server_wait.cancel()
            self._server_wait = None
        if was:
            self.disconnected_since = time.monotonic()
        if self.pump is not None:
            self.pump.disconnected()
        if self._stopping:
            self.stop_acknowledged.set()
            return
        if was:
            if reason is not None and not reason.is_failure:
                log.info("disconnected from the broker")
            else:
                log.warning("%s disconnected from the broker: %s", self.device, reason or "connection lost")
        self._schedule_reconnect()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = parse_topic(msg.topic)
            if topic.device == "server" and topic.kind == "availability":
                value = msg.payload.decode("utf-8", "replace")[:16]
                self._server_heard(value)
                if self.on_server_availability:
                    self.on_server_availability(value)
                return
            if topic.kind == "policy" and topic.device == self.device and self.on_policy is not None:
                self.on_policy(msg.payload)
                return
            if topic.kind == "policy_delta" and topic.device == self.device and self.on_policy_delta is not None:
                self.on_policy_delta(msg.payload)
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
