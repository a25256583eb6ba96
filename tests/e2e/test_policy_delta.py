"""Policy deltas end to end (issue 20): a card reported lost at the desk API reaches the edge as a signed delta
on the real Mosquitto, a few hundred bytes on ``policy/delta``, and the card is refused at the door, online
and from the edge's cache."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

from doorkeep.contract import Topics
from doorkeep.policy_delta import SCHEMA as DELTA_SCHEMA
from simulators.brokers import OBSERVER
from simulators.site import SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"


@pytest.fixture
def desk_api(site: SiteRunner) -> Iterator[tuple[int, str]]:
    """The desk app around the running server, served by uvicorn; yields (port, an admin's bearer token)."""
    from argon2 import PasswordHasher

    from server.web.app import create_app
    from server.web.serving import desk_server, uvicorn_config

    assert site.server is not None
    app = create_app(site.server, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    app.state.desk.operators.add("ada", "admin", "a long enough test password", actor="test")
    token = app.state.desk.operators.issue_token("ada", "test", actor="test")[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = desk_server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="desk-uvicorn", daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 10), "uvicorn did not start"
    yield port, token
    server.should_exit = True
    thread.join(10)


def test_a_card_reported_lost_reaches_the_edge_as_a_small_signed_delta_and_is_refused(site: SiteRunner,
                                                                                     desk_api) -> None:
    port, token = desk_api
    lobby = site.agents["pi-lobby"]
    assert site.wait_policies(10) and lobby.policy.version is not None
    topics = Topics("demo")
    seen: dict[str, list[bytes]] = {"delta": [], "full": []}
    watcher = site.mqtt_client(OBSERVER, f"test-{uuid.uuid4().hex[:6]}")
    subscribed = threading.Event()

    def on_message(client, userdata, msg) -> None:
        if msg.retain:
            return  # the retained full policy handed out on subscribing
        seen["delta" if msg.topic == topics.policy_delta("pi-lobby") else "full"].append(msg.payload)

    watcher.on_message = on_message
    watcher.on_connect = lambda c, *a: (c.subscribe([(topics.policy_delta("pi-lobby"), 1),
                                                     (topics.policy("pi-lobby"), 1)]), None)
    watcher.on_subscribe = lambda *a: subscribed.set()
    port_broker = int(site.broker_url.rsplit(":", 1)[1])
    watcher.connect("127.0.0.1", port_broker)
    watcher.loop_start()
    try:
        assert subscribed.wait(5)
        before = lobby.policy.version
        card = site.server.directory.card("em4100", ALICE)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", f"/api/v1/cards/{card}/lost", body=b"",
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        conn.close()

        assert wait_until(lambda: lobby.counters["policy_deltas"] >= 1 and lobby.policy.version > before, 5), \
            lobby.counters
        assert wait_until(lambda: seen["delta"], 2)
        delta = seen["delta"][0]
        envelope = json.loads(delta)
        body = json.loads(envelope["signed"])
        assert envelope["schema"] == DELTA_SCHEMA and body["base_version"] == before
        assert body["version"] == lobby.policy.version
        assert list(body["changes"]["tables"]) == ["credentials"]
        assert body["changes"]["tables"]["credentials"]["upsert"][card]["state"] == "lost"
        assert len(delta) < 2048, f"a revocation delta weighs {len(delta)} bytes"
        assert not seen["full"], "the full policy was re-sent for a revocation"
        assert lobby.counters["policy_deltas_refused"] == 0
        assert lobby.policy.deltas_path.exists()  # persisted as a chain on the signed full policy

        door = site.doors["lobby_in"]
        door.reader.badge(ALICE)
        assert wait_until(lambda: any(e["type"] == "access" for e in site.server.store.events(20, door="lobby_in")), 5)
        access = [e for e in site.server.store.events(20, door="lobby_in") if e["type"] == "access"]
        assert access[0]["reason"] == "credential_inactive"
        assert not door.door.relay_history

        # From the edge's cache too: the delta's result is what it decides on when the server is away.
        site.server.stop()
        site.server = None
        assert wait_until(lambda: lobby.server_availability == "stopped", 5)
        got = threading.Event()
        reasons: list[tuple[str, str]] = []
        lobby.listeners.append(lambda ev: (reasons.append((ev.reason, ev.decided_by)), got.set())
                               if ev.type == "access" else None)
        gate = site.doors["lobby_out"]
        gate.reader.badge(ALICE)
        assert got.wait(5)
        assert reasons[0] == ("credential_inactive", "edge_offline")
        assert not gate.door.relay_history
    finally:
        watcher.loop_stop()
        watcher.disconnect()
