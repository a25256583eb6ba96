"""Webhooks through a server restart on the real Mosquitto (server/webhooks.py; docs/operations.md "Webhooks").

Real parts: the real ``doorkeep`` server (bootstrap, bus, store thread, webhook worker thread) connected to the
session's Mosquitto over mutual TLS, a device publishing events with its own certificate, the SQLite store on disk
that the restarted server opens again, and a real HTTP receiver on loopback that checks every signature from the
documented scheme. The promise under test: every delivery arrives once (by its delivery id) or is visibly
dead-lettered, with deliveries pending, and events published, while the server is down.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import iso_ms
from doorkeep.config import load_site_dir
from doorkeep.contract import EventMsg, Topics
from doorkeep.envelope import SnapshotKeys
from server.app import Server, bootstrap
from server.webhooks import WebhookSettings
from simulators.site import DEMO_SITE
from tests.conftest import wait_until
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

GHOST = "pi-annex"  # a device no edge runs as: the test publishes its events itself
GHOST_DOOR = "annex"
DOWN_FOR_S = 7200.0  # how long the server "was down": the restarted one's clock is this far ahead


class LaterClock:
    """The real clock, ``offset`` seconds on: the restarted server wakes up after the retry times have passed."""

    def __init__(self, offset: float) -> None:
        self.offset = offset

    def wall(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


@pytest.fixture
def publisher(mosquitto: Any) -> Iterator[mqtt.Client]:
    client = mosquitto.client(GHOST, "doorkeep-test-webhooks-ghost")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def publish(client: mqtt.Client, etype: str, n: int, prefix: str) -> list[str]:
    topics = Topics("demo")
    ids = []
    for i in range(n):
        ev = EventMsg(id=f"{prefix}-{i}-{secrets.token_hex(4)}", seq=next(_seq), ts=iso_ms(time.time()), device=GHOST,
                      door=GHOST_DOOR, type=etype)
        client.publish(topics.event(GHOST, GHOST_DOOR), ev.encode(), qos=1).wait_for_publish(5)
        ids.append(ev.id)
    return ids


_seq = iter(range(1, 1_000_000))


def test_every_delivery_arrives_once_or_is_dead_lettered_across_a_server_restart(
        mosquitto: Any, publisher: mqtt.Client, tmp_path: Path) -> None:
    bundle = load_site_dir(DEMO_SITE)
    keys = {"key": secrets.token_bytes(32), "signing_key": Ed25519PrivateKey.generate(),
            "snapshot_keys": SnapshotKeys.generate()}

    def boot(clock: Any = None) -> Server:
        server = bootstrap(bundle, tmp_path / "server", mosquitto.client_config("server"), clock=clock, **keys)
        server.bus.door_devices[GHOST_DOOR] = GHOST  # else its events are refused (an unknown door)
        server.start()
        assert server.bus.wait_connected(10)
        return server

    receiver = WebhookReceiver(status={"/good": 503, "/bad": 410})
    first = boot()
    try:
        wh = first.webhooks
        assert wh is not None
        good, good_secret = wh.create(name="good", url=receiver.url("/good"), event_types=["forced_open"], actor="ada")
        bad, bad_secret = wh.create(name="bad", url=receiver.url("/bad"), event_types=["door_opened"], actor="ada")
        receiver.secrets.update({"/good": good_secret, "/bad": bad_secret})

        # A receiver that refuses for good: three quick attempts each, then dead letters.
        wh.settings = WebhookSettings(retry_s=0.05, max_retry_s=0.1, max_attempts=3, timeout_s=5.0)
        publish(publisher, "door_opened", 3, "bad")
        assert wait_until(lambda: len(wh.deliveries(bad.id, state="dead")) == 3, 20)
        # A receiver that is down for now: one attempt each, the next an hour away, and the server stops.
        wh.settings = WebhookSettings(retry_s=3600.0, max_attempts=30, timeout_s=5.0)
        publish(publisher, "forced_open", 5, "good")
        assert wait_until(lambda: [d["attempts"] for d in wh.deliveries(good.id)] == [1] * 5, 20)
        assert Counter(d["state"] for d in wh.deliveries(good.id)) == Counter(pending=5)
    finally:
        first.stop()

    # While the server is down: the receiver comes back, and the device goes on publishing (the broker keeps its
    # events for the server's persistent session).
    receiver.status["/good"] = 200
    later = publish(publisher, "forced_open", 3, "later")
    clock = LaterClock(DOWN_FOR_S)
    receiver.now = clock.wall  # the receiver's clock agrees with the restarted server's
    second = boot(clock)
    try:
        wh2 = second.webhooks
        assert wh2 is not None
        assert wait_until(lambda: len(receiver.accepted("/good")) >= 8, 20), receiver.requests("/good")
        for _ in range(3):  # nothing more is due: another round sends nothing
            wh2.run_once()
        accepted = Counter(r.delivery for r in receiver.accepted("/good"))
        assert len(accepted) == 8 and set(accepted.values()) == {1}  # each delivery arrived exactly once
        stored = wh2.deliveries(good.id)
        assert {d["id"] for d in stored} == set(accepted) and {d["state"] for d in stored} == {"delivered"}
        arrived = {r.json()["event"]["id"] for r in receiver.accepted("/good")}
        assert set(later) <= arrived and len(arrived) == 8  # the events published while it was down too
        assert all(r.signature_ok for r in receiver.requests())
        # The refusing receiver's deliveries stay dead (listed for an admin), never sent again by themselves.
        dead = wh2.deliveries(bad.id, state="dead")
        assert len(dead) == 3 and all("410" in d["last_error"] for d in dead)
        assert len(receiver.requests("/bad")) == 9
        assert wh2.counts() == {"pending": 0, "delivered": 8, "dead": 3}
    finally:
        second.stop()
        receiver.stop()
