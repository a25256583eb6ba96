"""Brokers for tests, benchmarks and the demo.

``MosquittoBroker`` runs the real Mosquitto on a free loopback port with the
settings doorkeep needs (Nagle off, no QoS 1 queue limit: see
shared MEASURED.md); ``EmbeddedBroker`` runs amqtt inside this process so
the demo needs nothing installed.

``MosquittoBroker(tls_sites=[...])`` runs exactly what ``doorkeep broker
config`` generates (mutual TLS only, the per-site ACL, the CRL) from a CA of
its own made with :mod:`doorkeep.pki` in its working directory; it issues a
client certificate for any name on first use (:meth:`MosquittoBroker.client_config`,
:meth:`MosquittoBroker.client`). A TLS broker started here is registered by
URL (:func:`tls_broker_for`), so a :class:`~simulators.site.SiteRunner`
given only its URL finds each client's certificate by itself.

The broker binds each client id to its certificate (``use_username_as_clientid``):
one connection per certificate. A test peer that reads or writes the whole site
therefore connects as :data:`OBSERVER` (in the ACL of these test brokers only),
never as ``server``, which would drop the running server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from doorkeep.config import BrokerConfig


#: The identity of test peers that watch or write a whole site (a test broker's ACL gives it what the server has).
OBSERVER = "observer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            threading.Event().wait(0.01)
    return False


class BrokerUnavailable(RuntimeError):
    """No broker could be started; the message says how to get one."""


#: TLS brokers started in this process, by URL (see :func:`tls_broker_for`)
_TLS_BROKERS: weakref.WeakValueDictionary[str, MosquittoBroker] = weakref.WeakValueDictionary()


def tls_broker_for(url: str) -> MosquittoBroker | None:
    """The TLS :class:`MosquittoBroker` of this process listening at ``url`` (it holds the clients' certificates)."""
    return _TLS_BROKERS.get(url)


class MosquittoBroker:
    #: Run Mosquitto in a session of its own: a Ctrl-C in the terminal then reaches only the process that started
    #: it, which stops its clients first and the broker last (the demo's workers), instead of killing it at once.
    own_session: bool = False

    def __init__(self, port: int | None = None, workdir: Path | None = None, *, persistent: bool = False,
                 config_text: str | None = None, tls_sites: Sequence[str] | Mapping[str, Iterable[str]] | None = None,
                 clients: Iterable[str] = ()) -> None:
        """``persistent`` keeps sessions and queued QoS 1 messages across a restart, as a production broker
        does; give the same ``workdir`` to the broker that replaces this one.

        ``config_text``: run this configuration (e.g. from ``doorkeep broker config``, whose listener must
        be on ``port``) instead of the built-in plain one; only the run-as user and a log file are added.

        ``tls_sites``: run the configuration ``doorkeep broker config`` generates (mutual TLS on loopback,
        the ACL, the CRL) for one site (``[SITE]``: every device confined by the ``%u`` pattern) or a campus
        (``{SITE: device ids}``: each device listed in its own site), with a CA in ``workdir/pki`` (kept
        when the workdir is reused, so a replacement broker trusts the same clients) and certificates for
        ``clients`` issued now. Its ACL also lets :data:`OBSERVER` read and write every site, and it logs
        to ``log_file`` (every connection, every refused handshake: ``connection_messages``).
        """
        self.binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if self.binary is None:
            raise BrokerUnavailable("mosquitto is not installed: run `make test` (installs it) or `apt-get install mosquitto`")
        self.port = port or free_port()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="doorkeep-mosq-")
        self.dir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.log_file = self.dir / "mosquitto.log"
        self.persistent = persistent
        self.config_text = config_text
        self.proc: subprocess.Popen[bytes] | None = None
        self.pki: Path | None = None
        """With ``tls_sites``: the CA and every certificate issued for this broker's clients."""
        if tls_sites is not None:
            self._setup_tls(tls_sites, clients)

    def _setup_tls(self, tls_sites: Sequence[str] | Mapping[str, Iterable[str]], clients: Iterable[str]) -> None:
        from doorkeep.pki import BROKER, broker_acl, broker_config, init_ca, live_workers

        if self.config_text is not None:
            raise ValueError("give tls_sites or config_text, not both")
        if isinstance(tls_sites, Mapping):
            sites: str | dict[str, list[str]] = {site: list(devices) for site, devices in tls_sites.items()}
        elif len(tls_sites) == 1 and not isinstance(tls_sites, str):
            sites = tls_sites[0]
        else:
            raise ValueError("tls_sites: give [SITE] for one site, or {SITE: [device ids]} for several")
        self.pki = self.dir / "pki"
        if not (self.pki / "ca.key").exists():
            init_ca(self.pki, sites if isinstance(sites, str) else next(iter(sites)), now=datetime.now(timezone.utc))
        self._issue(BROKER)
        for name in [*clients, *(d for devices in (sites.values() if isinstance(sites, dict) else ()) for d in devices)]:
            self._issue(name)
        acl = self.dir / "acl"
        acl.write_text(broker_acl(sites, observers=[OBSERVER], workers=live_workers(self.pki)))
        self.config_text = broker_config(sites, self.pki, acl, port=self.port, bind="127.0.0.1",
                                         persistence_dir=self.dir if self.persistent else None,
                                         log_file=self.log_file)

    def _issue(self, name: str) -> None:
        from doorkeep.pki import issue

        assert self.pki is not None
        if not (self.pki / f"{name}.crt").exists():
            issue(self.pki, name, now=datetime.now(timezone.utc))

    def client_config(self, name: str, *, url: str | None = None) -> BrokerConfig:
        """How client ``name`` (a device id, ``server``, ``operator`` or :data:`OBSERVER`) reaches this broker.

        With TLS: its own certificate, issued on first use. Plain: explicitly allowed (a test broker on
        loopback), so the client logs the development WARNING.
        """
        if self.pki is None:
            return BrokerConfig(url or self.url, allow_plain=not self.tls)
        self._issue(name)
        return BrokerConfig(url or self.url, ca_file=self.pki / "ca.crt", cert_file=self.pki / f"{name}.crt",
                            key_file=self.pki / f"{name}.key")

    def client(self, name: str, client_id: str | None = None, *, clean_session: bool = True) -> Any:
        """A paho 2.x client (callback API v2, not yet connected) that presents ``name``'s certificate."""
        return mqtt_client(self.client_config(name), client_id or f"{name}-{os.urandom(3).hex()}",
                           clean_session=clean_session)

    @property
    def tls(self) -> bool:
        """Whether the given configuration is TLS (the clients then need ``mqtts://`` and certificates)."""
        return self.config_text is not None and "\ncertfile " in self.config_text

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def config(self) -> str:
        # Started as root, Mosquitto switches to the 'mosquitto' user, which cannot write this private
        # directory: its log and persistence would silently go nowhere. Keep the starting user.
        user = [f"user {pwd.getpwuid(os.geteuid()).pw_name}"] if os.geteuid() == 0 else []
        if self.config_text is not None:
            # A generated TLS configuration already logs to log_file; one log file only (Mosquitto 2.0).
            log_dest = [] if f"\nlog_dest file {self.log_file}\n" in self.config_text else [f"log_dest file {self.log_file}"]
            return "\n".join([*user, self.config_text, *log_dest,
                              "log_type error", "log_type warning", "log_type notice", ""])
        return "\n".join([
            *user,
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "set_tcp_nodelay true",
            "max_queued_messages 0",
            "max_inflight_messages 0",
            *(["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1"]
              if self.persistent else ["persistence false"]),
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "",
        ])

    def start(self, timeout: float = 5.0) -> MosquittoBroker:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=self.own_session)
        if not wait_port(self.port, timeout):
            self.stop()
            raise BrokerUnavailable(f"mosquitto did not listen on port {self.port}; see {self.log_file}")
        if self.pki is not None:
            _TLS_BROKERS[self.url] = self
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class EmbeddedBroker:
    """amqtt in a background thread with its own event loop."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        try:
            from amqtt.broker import Broker
        except ImportError as exc:
            raise BrokerUnavailable(
                "the embedded broker needs amqtt: install doorkeep with the [demo] extra (pip install '.[demo]' in a checkout), or pass --broker mqtt://HOST:PORT"
            ) from exc
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            broker = Broker({
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            })
            await broker.start()
            self._ready.set()
            await self._stop.wait()
            await broker.shutdown()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported to start()
                self._error = exc
                self._ready.set()

        self._thread = threading.Thread(target=run, name="doorkeep-embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise BrokerUnavailable(f"the embedded broker did not start: {self._error}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        self._thread = None


def mqtt_client(broker: BrokerConfig, client_id: str, *, clean_session: bool = True) -> Any:
    """A paho 2.x client (callback API v2, not connected) set up for ``broker``: its TLS context when
    ``mqtts://`` (the same one the edge and server build), else nothing (plain must be allowed)."""
    import paho.mqtt.client as mqtt

    from doorkeep.pki import check_transport, client_tls_context

    check_transport(broker)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
    tls = client_tls_context(broker)
    if tls is not None:
        client.tls_set_context(tls)
    return client


def subscribed_client(host: str, port: int, client_id: str, subscribe: str, on_message: Any, *,
                      inflight: int | None = None, keepalive: int = 30, timeout: float = 15.0,
                      broker: BrokerConfig | None = None) -> Any:
    """A paho 2.x client (callback API v2) with Nagle off, returned once its subscription is acknowledged.

    For benchmarks and tests that play a peer on the wire; raises RuntimeError if it cannot connect.
    ``broker``: connect as this client config (TLS certificate); None is plain MQTT to ``host:port``, or,
    if a TLS broker of this process listens there, its :data:`OBSERVER` identity (which may read the whole
    site without dropping the server: client ids are bound to certificates).
    """
    ready = threading.Event()
    failed: list[str] = []
    if broker is None:
        tls_broker = tls_broker_for(f"mqtts://{host}:{port}")
        broker = (tls_broker.client_config(OBSERVER) if tls_broker is not None
                  else BrokerConfig(f"mqtt://{host}:{port}", allow_plain=True))
    client = mqtt_client(broker, client_id)
    if inflight is not None:
        client.max_inflight_messages_set(inflight)

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            failed.append(str(reason))
            ready.set()
            return
        sock = c.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.subscribe(subscribe, qos=1)

    def on_disconnect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        # A refused TLS handshake surfaces here, not as an exception from connect() (MEASURED.md).
        if not ready.is_set():
            failed.append(f"disconnected: {reason}")
            ready.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_subscribe = lambda *args: ready.set()
    client.on_message = on_message
    client.connect(host, port, keepalive=keepalive)
    client.loop_start()
    if not ready.wait(timeout) or failed:
        client.loop_stop()
        raise RuntimeError(f"{client_id}: could not connect and subscribe to {host}:{port} {failed}")
    return client


def connection_attempt(broker: BrokerConfig, client_id: str, *, timeout: float = 10.0) -> str:
    """One connection attempt to ``broker`` as its configuration says (certificate and all), then hang up.

    Returns ``"connected"``, ``"refused"`` (the broker answered CONNACK with a failure) or ``"disconnected"``
    (the TLS handshake was refused: paho reports that as a disconnect, not as an exception from connect;
    MEASURED.md), ``"failed"`` (no TCP connection), or ``"no answer"`` after ``timeout``. For scenarios and tests
    that play a client the broker must turn away, such as a revoked device still trying.
    """
    outcome: list[str] = []
    answered = threading.Event()

    def note(what: str) -> None:
        outcome.append(what)
        answered.set()

    client = mqtt_client(broker, client_id)
    client.on_connect = lambda c, u, f, reason, p: note("refused" if reason.is_failure else "connected")
    client.on_disconnect = lambda *a: note("disconnected")
    client.on_connect_fail = lambda *a: note("failed")
    client.reconnect_delay_set(min_delay=60, max_delay=120)  # one attempt: no reconnect before we hang up
    client.connect_async(broker.host, broker.port)
    client.loop_start()
    try:
        return outcome[0] if answered.wait(timeout) else "no answer"
    finally:
        client.disconnect()
        client.loop_stop()
