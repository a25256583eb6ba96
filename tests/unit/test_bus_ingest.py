"""What the server's bus refuses from a device, and that it still acknowledges it (server/bus.py; issue 12).

The bus is built by the real ``bootstrap`` on the demo site and a real SQLite store, but never connected:
each test hands ``_on_message`` the paho message a delivery would, with a recording stand-in for the
client's ``ack`` and ``publish``, and the real store thread runs. An unacknowledged QoS 1 message holds one
of the broker's in-flight slots for the server's session forever, so "acknowledged" is asserted every time.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import iso_ms
from doorkeep.commands import sign_command
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.contract import MAX_PAYLOAD, CommandResult, EventMsg, Topics
from doorkeep.envelope import SnapshotKeys
from server.app import Server, bootstrap
from simulators.site import DEMO_SITE

T = Topics("demo")


class Client:
    """Records what the bus acknowledges and publishes."""

    def __init__(self) -> None:
        self.acks: list[int] = []
        self.published: list[tuple[str, bytes]] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> mqtt.MQTTMessageInfo:
        self.published.append((topic, payload))
        return mqtt.MQTTMessageInfo(len(self.published))  # rc 0: taken, as paho answers


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = bootstrap(load_site_dir(DEMO_SITE), tmp_path, BrokerConfig("mqtt://127.0.0.1:1", allow_plain=True),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate())
    client = Client()
    srv.bus._client.ack = client.ack  # type: ignore[method-assign]
    srv.bus._client.publish = client.publish  # type: ignore[method-assign,assignment]
    srv.client = client  # type: ignore[attr-defined]
    srv.bus._worker.start()
    yield srv
    srv.bus._work.put(None)
    srv.bus._worker.join(5)
    srv.store.close()


_mids = iter(range(1, 10_000))


def deliver(server: Server, topic: str, payload: bytes) -> int:
    """Hand the bus one QoS 1 message as paho's network thread would; returns its mid."""
    msg = mqtt.MQTTMessage(mid=next(_mids), topic=topic.encode())
    msg.payload, msg.qos = payload, 1
    server.bus._on_message(server.client, None, msg)  # type: ignore[attr-defined,arg-type]
    assert server.bus.wait_idle(5)
    return msg.mid


def event(server: Server, seq: int = 1, *, device: str = "pi-lobby", door: str = "lobby_in", **kw: Any) -> EventMsg:
    base: dict[str, Any] = {"id": secrets.token_hex(8), "seq": seq, "ts": iso_ms(server.bus.clock.wall()),
                            "device": device, "door": door, "type": "door_opened"}
    return EventMsg(**{**base, **kw})


def misbehaving(server: Server, device: str = "pi-lobby") -> list[dict[str, Any]]:
    return server.store.open_alarms(type="device_misbehaving", device=device)


def test_attack_event_seq_2_to_the_70_is_acknowledged_counted_and_the_queue_moves_on(server: Server) -> None:
    # Used to pass decode and raise OverflowError in SQLite on the store thread: never acknowledged.
    bad = event(server).encode().replace(b'"seq":1', b'"seq":' + str(2**70).encode())
    mid = deliver(server, T.event("pi-lobby", "lobby_in"), bad)
    good = event(server, 2)
    good_mid = deliver(server, T.event("pi-lobby", "lobby_in"), good.encode())
    assert {mid, good_mid} <= set(server.client.acks)  # type: ignore[attr-defined]
    assert server.bus.counters["malformed"] == 1 and server.bus.counters["refused_malformed"] == 1
    assert server.bus.counters["errors"] == 0
    assert server.store.event(good.id) is not None
    assert len(server.store.events(10)) == 1
    [alarm] = misbehaving(server)
    assert alarm["detail"]["reasons"] == {"malformed": 1} and "seq" in alarm["detail"]["last_reason"]


@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59.999Z", "not-a-time"])
def test_attack_event_with_an_impossible_ts_is_acknowledged_and_not_stored(server: Server, ts: str) -> None:
    ev = event(server, ts=ts)
    mid = deliver(server, T.event("pi-lobby", "lobby_in"), ev.encode())
    assert mid in server.client.acks  # type: ignore[attr-defined]
    assert server.store.event(ev.id) is None
    assert server.bus.counters["refused_malformed"] == 1


def test_attack_event_dated_beyond_the_clock_skew_is_refused(server: Server) -> None:
    now = server.bus.clock.wall()
    ahead = event(server, ts=iso_ms(now + server.bus.max_event_skew_s + 60))
    within = event(server, 2, ts=iso_ms(now + 3600))
    past = event(server, 3, ts=iso_ms(now - 30 * 86400))  # an outbox draining after a long outage
    mids = [deliver(server, T.event("pi-lobby", "lobby_in"), e.encode()) for e in (ahead, within, past)]
    assert set(mids) <= set(server.client.acks)  # type: ignore[attr-defined]
    assert server.store.event(ahead.id) is None
    assert server.store.event(within.id) is not None and server.store.event(past.id) is not None
    assert server.bus.counters["refused_future_ts"] == 1
    [alarm] = misbehaving(server)
    assert alarm["detail"]["reasons"] == {"future_ts": 1}


def test_attack_device_forges_event_for_another_devices_door_at_the_bus(server: Server) -> None:
    forged = event(server, door="lab", type="forced_open")
    unknown = event(server, 2, door="vault", type="forced_open")
    mids = [deliver(server, T.event("pi-lobby", "lab"), forged.encode()),
            deliver(server, T.event("pi-lobby", "vault"), unknown.encode()),
            # The payload names pi-lobby's own door, the topic another's: refused at the topic.
            deliver(server, T.event("pi-lobby", "lab"), event(server, 3).encode())]
    assert set(mids) <= set(server.client.acks)  # type: ignore[attr-defined]
    assert server.store.events(10) == []
    assert server.store.open_alarms(type="forced_open") == []
    assert (server.bus.counters["refused_foreign_door"], server.bus.counters["refused_unknown_door"]) == (2, 1)
    [alarm] = misbehaving(server)
    assert alarm["detail"]["refusals"] == 3


def test_attack_device_reuses_another_devices_event_id(server: Server) -> None:
    genuine = event(server, device="pi-floor7", door="lab", type="door_opened")
    deliver(server, T.event("pi-floor7", "lab"), genuine.encode())
    forged = event(server, 5, id=genuine.id, type="forced_open")
    mid = deliver(server, T.event("pi-lobby", "lobby_in"), forged.encode())
    assert mid in server.client.acks  # type: ignore[attr-defined]
    assert server.store.open_alarms(type="forced_open") == []
    assert server.bus.counters["refused_foreign_event_id"] == 1
    assert len(misbehaving(server)) == 1 and misbehaving(server, "pi-floor7") == []


def test_attack_oversize_event_is_refused_before_it_is_parsed(server: Server) -> None:
    mid = deliver(server, T.event("pi-lobby", "lobby_in"), b"{" + b" " * MAX_PAYLOAD + b"}")
    assert mid in server.client.acks  # type: ignore[attr-defined]
    assert server.bus.counters["refused_oversize"] == 1
    assert server.bus._queued == server.bus._done


def test_attack_cmd_result_for_another_devices_transaction_does_not_confirm_it(server: Server) -> None:
    seen: list[tuple[str, CommandResult]] = []
    server.bus.command_results.append(lambda device, result: seen.append((device, result)))
    key = Ed25519PrivateKey.generate()
    payload = sign_command(site_id="demo", device="pi-floor7", action="unlock", args={"door": "lab"}, key=key,
                           issued_at=server.bus.clock.wall(), transaction="tx-floor7")
    server.bus.publish(T.cmd("pi-floor7"), payload)
    forged = CommandResult("tx-floor7", "ok").encode()
    m1 = deliver(server, T.cmd_result("pi-lobby"), forged)
    m2 = deliver(server, T.cmd_result("pi-lobby"), CommandResult("tx-never-sent", "ok").encode())
    assert seen == []
    assert (server.bus.counters["refused_foreign_result"], server.bus.counters["refused_unmatched_result"]) == (1, 1)
    [alarm] = misbehaving(server)
    assert alarm["detail"]["refusals"] == 2
    # The device the command went to still confirms it; an unreadable command's rejection is fine too.
    m3 = deliver(server, T.cmd_result("pi-floor7"), forged)
    m4 = deliver(server, T.cmd_result("pi-floor7"), CommandResult(None, "rejected", "malformed").encode())
    assert [d for d, _ in seen] == ["pi-floor7", "pi-floor7"]
    assert {m1, m2, m3, m4} <= set(server.client.acks)  # type: ignore[attr-defined]
    assert misbehaving(server, "pi-floor7") == []


def test_command_seen_on_the_wire_from_another_sender_matches_its_result(server: Server) -> None:
    # `doorkeep door unlock` signs and publishes from its own client; the server sees it on +/cmd.
    payload = sign_command(site_id="demo", device="pi-lobby", action="sync", args={},
                           key=Ed25519PrivateKey.generate(), issued_at=server.bus.clock.wall(), transaction="tx-cli")
    deliver(server, T.cmd("pi-lobby"), payload)
    deliver(server, T.cmd_result("pi-lobby"), CommandResult("tx-cli", "ok").encode())
    assert server.bus.counters["refused"] == 0
    assert misbehaving(server) == []


def test_foreign_door_request_is_answered_refused_and_reported(server: Server) -> None:
    from doorkeep.contract import DecisionMsg, RequestMsg

    req = RequestMsg("tx-1", "lab", "ab" * 32, "7890", "em4100", iso_ms(server.bus.clock.wall()))
    mid = deliver(server, T.request("pi-lobby", "lab"), req.encode())
    assert mid in server.client.acks  # type: ignore[attr-defined]
    [(topic, payload)] = [p for p in server.client.published if "/decision" in p[0]]  # type: ignore[attr-defined]
    answer = DecisionMsg.decode(payload)
    assert (answer.granted, answer.reason) == (False, "unknown_door")
    assert server.bus.counters["refused_foreign_door"] == 1
    assert len(misbehaving(server)) == 1
