"""The integration request API on a real Mosquitto running exactly what `doorkeep broker config` generates.

A copy of the demo site gets `[integrations.node-red] unlock_doors = ["lobby_in"]`; `node-red` and a read-only
`soc` get their certificates from the real commands, the broker runs the generated configuration and ACL
(tests/e2e/test_tls.py's Broker) and the whole site runs on simulators over mutual TLS. A paho client under
node-red's certificate asks on its request topic and reads its response topic: status lists the doors; an
unlock of lobby_in energises its relay and is in the audit log as `integration:node-red`; an unlock of
lobby_out is answered ok=false and nothing moves. A paho client under soc's certificate publishes a request:
the broker drops it and the server never sees it.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from doorkeep.config import load_site_dir
from simulators.site import DEMO_SITE, SiteRunner, mosquitto_installed
from tests.conftest import wait_until
from tests.e2e.test_tls import Broker, cli, context

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not mosquitto_installed(), reason="needs Mosquitto (apt-get install mosquitto)")]

BASE = "doorkeep/v1/demo/server/integration"


class Peer:
    """An integration on the wire under its own certificate: publishes requests, collects its responses."""

    def __init__(self, port: int, site: Path, name: str) -> None:
        self.name = name
        self.responses: dict[str, dict[str, Any]] = {}
        self.connected = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
        self.client.tls_set_context(context(site, name, port))
        self.client.reconnect_delay_set(min_delay=0.02, max_delay=0.05)  # type: ignore[arg-type]
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10), f"{name}'s certificate was refused"
        assert self.subscribed.wait(10)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe(f"{BASE}/{self.name}/response", qos=1)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        with self._lock:
            self.responses[str(body.get("id"))] = body

    def send(self, body: dict[str, Any]) -> None:
        assert self.connected.wait(10)
        info = self.client.publish(f"{BASE}/{self.name}/request", json.dumps(body).encode(), qos=1)
        # Mosquitto acknowledges a forbidden QoS 1 publish (or closes the connection): handled either way.
        assert wait_until(lambda: info.is_published() or not self.client.is_connected(), 5)

    def ask(self, body: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
        self.send(body)
        assert wait_until(lambda: body["id"] in self.responses, timeout), f"no response to {body}"
        with self._lock:
            return self.responses[body["id"]]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_an_integration_asks_status_and_unlocks_only_its_doors_and_a_read_only_one_is_never_heard(
        tmp_path: Path) -> None:
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site)
    with (site / "site.toml").open("a") as f:
        f.write('\n[integrations.node-red]\nunlock_doors = ["lobby_in"]\n')
    cli("pki", "init", "--site", site)
    for name in ("pi-lobby", "pi-floor7", "server", "broker"):
        cli("pki", "issue", name, "--site", site)
    cli("pki", "issue", "node-red", "--role", "integration", "--site", site)
    cli("pki", "issue", "soc", "--role", "integration", "--read-only", "--site", site)
    broker = Broker(site, tmp_path).start()
    runner = SiteRunner(load_site_dir(site), broker_url=broker.url, data_dir=tmp_path / "data", pki=site / "pki")
    peers: list[Peer] = []
    try:
        runner.start()
        assert runner.wait_connected(10), "edges and server did not connect to the generated broker"
        server = runner.server
        assert server is not None and server.integration_api is not None and server.audit is not None
        api = server.integration_api
        red = Peer(broker.port, site, "node-red")
        peers.append(red)

        # status: every door, with what its edge last reported (once both edges' retained state has arrived).
        assert wait_until(lambda: {"pi-lobby", "pi-floor7"} <= set(server.bus.states), 10)
        status = red.ask({"id": "s1", "action": "status"})
        assert status["ok"] is True and status["error"] is None
        assert {d["id"] for d in status["result"]["doors"]} == set(server.site.doors)
        assert {d["state"] for d in status["result"]["doors"]} == {"locked"}, status

        # unlock of a permitted door: the relay energises, the audit log has it as the integration.
        lobby = runner.doors["lobby_in"]
        resp = red.ask({"id": "u1", "action": "unlock", "door": "lobby_in"})
        assert (resp["ok"], resp["error"], resp["result"]["status"]) == (True, None, "ok"), resp
        assert lobby.door.wait_relay(True, 5), "the integration's unlock did not release the lock"
        assert any(rec["actor"] == "integration:node-red" and rec["action"] == "door.unlock"
                   and rec["details"]["args"] == {"door": "lobby_in"} for rec in server.audit.records(50))

        # a door it may not unlock: ok=false, audited, and nothing moves.
        exit_door = runner.doors["lobby_out"]
        resp = red.ask({"id": "u2", "action": "unlock", "door": "lobby_out"})
        assert (resp["ok"], resp["error"]) == (False, "door_not_allowed"), resp
        assert not exit_door.door.relay_energised and not any(on for _, on in exit_door.door.relay_history)
        assert any(rec["action"] == "integration.unlock_refused" and rec["target"] == "door:lobby_out"
                   for rec in server.audit.records(50))

        # a read-only integration: the broker drops its request; the server never sees it. node-red's request
        # published after it (the broker acknowledged soc's first) is answered, so the server's queue has moved on.
        soc = Peer(broker.port, site, "soc")
        peers.append(soc)
        soc.send({"id": "ro1", "action": "unlock", "door": "lobby_out"})
        assert red.ask({"id": "marker", "action": "status"})["ok"] is True
        assert "ro1" not in soc.responses
        assert api.counters["requests_refused_read_only"] == 0 and api.counters["requests_dropped"] == 0, api.counters
        assert not any(on for _, on in exit_door.door.relay_history)
        assert not any(rec["actor"] == "integration:soc" for rec in server.audit.records(100))
    finally:
        for p in peers:
            p.close()
        runner.stop()
        broker.stop()
