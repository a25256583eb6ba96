"""A clustered MQTT broker for tests and benchmarks: N nats-server processes on loopback (issue 20).

Each node runs Debian's ``nats-server`` with JetStream (its own store directory) and the MQTT listener; the
nodes are joined by cluster routes, and every MQTT stream (sessions, QoS 1 messages, retained messages) is
replicated on three nodes (``stream_replicas: 3``), so the loss of one node loses no persistent session's
queue (retained messages are stored on three nodes too, but 2.9.10 does not always serve them after a kill). docs/scale.md ("A clustered broker") says why nats-server and what
it cannot do for doorkeep.

The configuration is written here (:func:`node_config`), one file per node; ``doorkeep`` generates no NATS
configuration. A node is ready when its monitoring port says JetStream is healthy and knows the cluster's
meta leader, and its MQTT listener answers a CONNECT with a CONNACK (:meth:`NatsCluster.start`): never a
sleep. :meth:`NatsCluster.kill` is ``kill -9``; :meth:`NatsCluster.restart` starts the same node again on
the same ports and store.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from simulators.brokers import BrokerUnavailable, free_port
from simulators.wait import wait_until

#: the cluster's name in every node's ``cluster`` block
CLUSTER_NAME = "doorkeep"


def nats_server_binary() -> str | None:
    """The ``nats-server`` binary (Debian's package installs /usr/sbin/nats-server), or None."""
    found = shutil.which("nats-server")
    if found:
        return found
    return "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None


def nats_server_version(binary: str) -> str:
    """``nats-server --version``'s answer, e.g. ``v2.9.10`` (MQTT needs 2.2 or later)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    return out.strip().rsplit(" ", 1)[-1]


@dataclass
class NatsNode:
    """One node's name, loopback ports and files (kept across :meth:`NatsCluster.restart`)."""

    name: str
    client_port: int
    route_port: int
    mqtt_port: int
    monitor_port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.dir / "nats.conf"

    @property
    def log_file(self) -> Path:
        return self.dir / "nats.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def node_config(node: NatsNode, peers: list[NatsNode], *, replicas: int, ack_wait_s: float, host: str = "127.0.0.1",
                max_ack_pending: int = 1024) -> str:
    """The configuration of one node: client, route, MQTT and monitoring listeners, JetStream, the routes.

    ``replicas`` goes to ``mqtt.stream_replicas``: how many nodes hold each MQTT stream (3 in a three-node
    cluster, so a node's loss keeps a quorum of two). ``ack_wait_s``: how long a QoS 1 message sent to an
    MQTT subscriber waits for its PUBACK before it is sent again (nats-server's default is 30 s; a
    subscriber that moved to another node gets its unacknowledged messages again only after this).
    ``max_ack_pending``: QoS 1 messages in flight per subscription (nats-server's default is 1024).
    """
    routes = ",\n    ".join(f'"nats-route://{host}:{p.route_port}"' for p in peers if p.name != node.name)
    return f"""# nats-server node {node.name} of cluster {CLUSTER_NAME} (written by simulators/nats_cluster.py)
server_name: {node.name}
listen: "{host}:{node.client_port}"
http: "{host}:{node.monitor_port}"
log_file: "{node.log_file}"

jetstream {{
  store_dir: "{node.dir / 'jetstream'}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}

cluster {{
  name: {CLUSTER_NAME}
  listen: "{host}:{node.route_port}"
  routes: [
    {routes}
  ]
}}

mqtt {{
  listen: "{host}:{node.mqtt_port}"
  stream_replicas: {replicas}
  ack_wait: "{ack_wait_s:g}s"
  max_ack_pending: {max_ack_pending}
}}
"""


def _http_json(port: int, path: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]
    except (OSError, urllib.error.URLError, ValueError):
        return None


def mqtt_connack(port: int, timeout: float = 2.0) -> int | None:
    """Send a bare MQTT 3.1.1 CONNECT (clean session, a throw-away client id) and return the CONNACK's return
    code (0 = accepted), or None when nothing answered. nats-server answers only once its MQTT streams exist
    on a JetStream quorum, so a 0 means the node can take MQTT clients."""
    client_id = b"doorkeep-probe"
    var_header = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol name, level 4 (3.1.1), clean session, keepalive 10 s
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = var_header + payload
    packet = b"\x10" + bytes([len(body)]) + body
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(packet)
            answer = b""
            while len(answer) < 4:
                chunk = sock.recv(4 - len(answer))
                if not chunk:
                    return None
                answer += chunk
            sock.sendall(b"\xe0\x00")  # DISCONNECT
    except OSError:
        return None
    return answer[3] if answer[0] == 0x20 else None


class NatsCluster:
    """N nats-server nodes on loopback, joined by routes, each with JetStream and an MQTT listener.

    ``with NatsCluster(3) as cluster:`` starts them and waits until every node accepts MQTT clients;
    ``cluster.nodes[i].mqtt_port`` is where a paho client connects. Raises :class:`BrokerUnavailable`
    (saying how to install it) when ``nats-server`` is missing.
    """

    def __init__(self, size: int = 3, *, replicas: int | None = None, ack_wait_s: float = 2.0,
                 workdir: Path | None = None) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise BrokerUnavailable("nats-server is not installed: run `make test` (installs it) or `apt-get install nats-server`")
        self.binary = binary
        self.replicas = min(3, size) if replicas is None else replicas
        self.ack_wait_s = ack_wait_s
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="doorkeep-nats-")
        self.dir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.nodes = [NatsNode(f"n{i + 1}", free_port(), free_port(), free_port(), free_port(), self.dir / f"n{i + 1}")
                      for i in range(size)]
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            node.config_file.write_text(node_config(node, self.nodes, replicas=self.replicas, ack_wait_s=ack_wait_s))

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, node: NatsNode) -> None:
        node.proc = subprocess.Popen([self.binary, "-c", str(node.config_file)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        """Start every node; return when each one is healthy and answers MQTT (or raise BrokerUnavailable)."""
        for node in self.nodes:
            self._spawn(node)
        for node in self.nodes:
            self.wait_ready(node, timeout)
        return self

    def meta_leader(self, node: NatsNode) -> str | None:
        """The JetStream meta leader as ``node`` sees it (None while there is none or it cannot say)."""
        jsz = _http_json(node.monitor_port, "/jsz")
        meta = (jsz or {}).get("meta_cluster") or {}
        leader = meta.get("leader") if isinstance(meta, dict) else None
        return leader if isinstance(leader, str) and leader else None

    def stream_leader(self, stream: str, timeout: float = 10.0) -> NatsNode:
        """The live node leading a JetStream stream (``$MQTT_msgs``: QoS 1 messages; ``$MQTT_rmsgs``: retained)."""
        found: list[str] = []

        def look() -> bool:
            for node in self.nodes:
                if not node.alive:
                    continue
                jsz = _http_json(node.monitor_port, "/jsz?accounts=true&streams=true") or {}
                for account in jsz.get("account_details") or []:  # type: ignore[union-attr]
                    for detail in account.get("stream_detail") or []:
                        leader = (detail.get("cluster") or {}).get("leader")
                        if detail.get("name") == stream and leader:
                            found.append(leader)
                            return True
            return False

        if not wait_until(look, timeout):
            raise RuntimeError(f"no leader for stream {stream} within {timeout:g} s")
        return next(n for n in self.nodes if n.name == found[-1])

    def healthy(self, node: NatsNode, *, fully: bool = False) -> bool:
        """The node's JetStream is up and it knows the cluster's meta leader.

        ``fully``: also every stream and consumer replica on it is current (``/healthz`` without
        ``js-enabled-only``). A restarted 2.9.10 node can stay short of that for 30 s or more (the
        retained-message consumers catching up, docs/scale.md) while it already serves MQTT clients, so readiness
        does not wait for it.
        """
        health = _http_json(node.monitor_port, "/healthz" if fully else "/healthz?js-enabled-only=true")
        return bool(health) and health.get("status") == "ok" and self.meta_leader(node) is not None  # type: ignore[union-attr]

    def wait_ready(self, node: NatsNode, timeout: float = 30.0) -> None:
        """Wait until ``node`` is healthy and its MQTT listener accepts a connection (CONNACK 0)."""
        ok = wait_until(lambda: not node.alive or (self.healthy(node) and mqtt_connack(node.mqtt_port) == 0),
                        timeout, interval=0.05)
        if not ok or not node.alive:
            tail = node.log_file.read_text(errors="replace")[-2000:] if node.log_file.exists() else ""
            raise BrokerUnavailable(f"nats-server {node.name} did not become ready in {timeout:g} s; log {node.log_file}:\n{tail}")

    def kill(self, node: NatsNode) -> None:
        """``kill -9`` the node: no goodbye to its peers or its MQTT clients (as a power cut or an OOM kill)."""
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait()
        node.proc = None

    def restart(self, node: NatsNode, timeout: float = 30.0) -> None:
        """Start a killed node again with the same ports, configuration and JetStream store; wait until ready."""
        self.kill(node)
        self._spawn(node)
        self.wait_ready(node, timeout)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
            node.proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
