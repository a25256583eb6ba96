"""Brokers for tests, benchmarks and the demo.

``MosquittoBroker`` runs the real Mosquitto on a free loopback port with the
settings doorkeep needs (Nagle off, no QoS 1 queue limit: see
shared MEASURED.md); ``EmbeddedBroker`` runs amqtt inside this process so
the demo needs nothing installed.
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
from pathlib import Path
from typing import Any


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


class MosquittoBroker:
    def __init__(self, port: int | None = None, workdir: Path | None = None, *, persistent: bool = False,
                 config_text: str | None = None) -> None:
        """``persistent`` keeps sessions and queued QoS 1 messages across a restart, as a production broker
        does; give the same ``workdir`` to the broker that replaces this one.

        ``config_text``: run this configuration (e.g. from ``doorkeep broker config``, whose listener must
        be on ``port``) instead of the built-in plain one; only the run-as user and a log file are added.
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
            return "\n".join([*user, self.config_text, f"log_dest file {self.log_file}",
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
        self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not wait_port(self.port, timeout):
            self.stop()
            raise BrokerUnavailable(f"mosquitto did not listen on port {self.port}; see {self.log_file}")
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
                "the embedded broker needs amqtt: pip install 'doorkeep[demo]', or pass --broker mqtt://HOST:PORT"
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


def subscribed_client(host: str, port: int, client_id: str, subscribe: str, on_message: Any, *,
                      inflight: int | None = None, keepalive: int = 30, timeout: float = 15.0) -> Any:
    """A paho 2.x client (callback API v2) with Nagle off, returned once its subscription is acknowledged.

    For benchmarks and tests that play a peer on the wire; raises RuntimeError if it cannot connect.
    """
    import paho.mqtt.client as mqtt

    ready = threading.Event()
    failed: list[str] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
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

    client.on_connect = on_connect
    client.on_subscribe = lambda *args: ready.set()
    client.on_message = on_message
    client.connect(host, port, keepalive=keepalive)
    client.loop_start()
    if not ready.wait(timeout) or failed:
        client.loop_stop()
        raise RuntimeError(f"{client_id}: could not connect and subscribe to {host}:{port} {failed}")
    return client
