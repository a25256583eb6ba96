"""A request that reaches the server after its door stopped waiting is not decided again (server/bus.py).

The door decided on its own at its timeout (docs/mqtt.md "Deciding without the server"); its access event will say
so. A request held up by a partition or a slow link used to be decided anyway, and that decision's effects (who is
where, a partner waiting, a PIN count) committed for something the door never did. The server reads the request's
``mono`` (the edge's monotonic clock when it asked) through the ``mono`` of the edge's last live heartbeat.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.contract import DecisionMsg, RequestMsg, state_payload
from doorkeep.credentials import card_hash
from doorkeep.errors import MessageError
from server.app import Server
from tests.unit.test_bus_ingest import deliver
from tests.unit.test_metrics import T, build, close, scrape, value

ALICE = "0F00A1B2C3"  # the demo's Alice: the lobby at any hour
TIMEOUT_S = 1.0  # the demo's lobby_in decision_timeout_ms
EDGE_MONO = 5_000.0  # the edge's monotonic clock (seconds since its boot) at its heartbeat


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc).timestamp())


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = build(tmp_path, clock)
    yield srv
    close(srv)


def heartbeat(server: Server, clock: FakeClock, *, wall_offset_s: float = 0.0, retain: bool = False,
              device: str = "pi-lobby", mono: float = EDGE_MONO) -> None:
    """A heartbeat from an edge at ``mono`` on its monotonic clock, its wall clock ``wall_offset_s`` off."""
    payload = state_payload(device, "0.1.0", {}, {}, {}, iso_ms(clock.wall() + wall_offset_s), mono=mono)
    msg = mqtt.MQTTMessage(mid=1, topic=T.state(device).encode())
    msg.payload, msg.qos, msg.retain = payload, 1, retain
    server.bus._on_message(server.client, None, msg)  # type: ignore[attr-defined,arg-type]
    assert server.bus.wait_idle(5)


def ask(server: Server, clock: FakeClock, mono: float | None, *, wall_offset_s: float = 0.0) -> str:
    """A request the edge asked at ``mono`` on its monotonic clock (its ts read off its own wall clock)."""
    tx = secrets.token_hex(4)
    req = RequestMsg(tx, "lobby_in", card_hash(server.directory.key, "em4100", ALICE), ALICE[-4:], "em4100",
                     iso_ms(clock.wall() + wall_offset_s), mono=mono)
    deliver(server, T.request("pi-lobby", "lobby_in"), req.encode())
    return tx


def answered(server: Server) -> dict[str, DecisionMsg]:
    return {(d := DecisionMsg.decode(payload)).transaction: d for topic, payload in server.client.published  # type: ignore[attr-defined]
            if topic.endswith("/decision")}


def test_a_request_older_than_its_doors_timeout_is_not_decided_and_moves_nobody(server: Server,
                                                                               clock: FakeClock) -> None:
    heartbeat(server, clock)
    clock.advance(10)
    stale = ask(server, clock, EDGE_MONO + 10 - TIMEOUT_S - 0.5)  # held up 1.5 s on the way: the door decided at 1 s
    assert stale not in answered(server)
    assert "alice" not in server.directory.state.presence, "no effect committed for a decision nobody carried out"
    assert server.bus.counters["requests_expired"] == 1
    assert value(scrape(server), "doorkeep_requests_expired_total") == 1
    fresh = ask(server, clock, EDGE_MONO + 10 - 0.2)
    assert answered(server)[fresh].granted
    assert server.directory.state.presence["alice"].area == "lobby"
    assert server.bus.counters["requests_expired"] == 1


@pytest.mark.parametrize("step_s", [-3600.0, 3600.0], ids=["wall-stepped-back", "wall-stepped-ahead"])
def test_an_edge_wall_clock_stepped_after_its_heartbeat_changes_nothing(server: Server, clock: FakeClock,
                                                                        step_s: float) -> None:
    heartbeat(server, clock)
    # NTP steps the edge's wall clock by an hour; its monotonic clock runs on. The request is fresh.
    fresh = ask(server, clock, EDGE_MONO + 0.1, wall_offset_s=step_s)
    assert answered(server)[fresh].granted and server.bus.counters["requests_expired"] == 0
    stale = ask(server, clock, EDGE_MONO - 5.0, wall_offset_s=step_s)
    assert stale not in answered(server) and server.bus.counters["requests_expired"] == 1


def test_a_heartbeat_held_up_on_the_way_does_not_make_late_requests_look_fresh(server: Server,
                                                                              clock: FakeClock) -> None:
    heartbeat(server, clock)  # on time: edge monotonic EDGE_MONO is server monotonic now
    clock.advance(3)
    heartbeat(server, clock, mono=EDGE_MONO)  # written 3 s ago, held up by a partition with the requests behind it
    stale = ask(server, clock, EDGE_MONO + 0.5)  # asked 2.5 s ago: the door decided long since
    assert stale not in answered(server) and server.bus.counters["requests_expired"] == 1


def test_an_edge_that_rebooted_starts_its_offset_again_and_the_servers_wall_clock_does_not_count(
        server: Server, clock: FakeClock) -> None:
    heartbeat(server, clock)
    clock.advance(120)
    heartbeat(server, clock, mono=42.0)  # rebooted: its monotonic clock counts from its boot again
    fresh = ask(server, clock, 42.1)
    assert answered(server)[fresh].granted, "a fresh request after the edge's reboot is decided"
    clock.set_wall(clock.wall() - 7200)  # the server's own wall clock stepped back two hours
    late = ask(server, clock, 42.0 - 2.0)
    assert late not in answered(server) and server.bus.counters["requests_expired"] == 1
    soon = ask(server, clock, 42.0 + 0.5)  # within the door's timeout and the margin
    assert answered(server)[soon].granted


def test_without_a_live_heartbeat_or_a_mono_every_request_is_decided(server: Server, clock: FakeClock) -> None:
    heartbeat(server, clock, retain=True)  # retained: written who knows when, so it sets no offset
    early = ask(server, clock, 1.0)
    assert answered(server)[early].granted, "no offset known yet: the request is decided"
    heartbeat(server, clock)
    older = ask(server, clock, None)
    assert answered(server)[older].granted, "an edge older than mono: decided as before"
    assert server.bus.counters["requests_expired"] == 0


@pytest.mark.parametrize("mono", ["-1", "1e999", '"12"', "true", "1" + "0" * 400])
def test_a_malformed_mono_is_refused_with_the_field_named(mono: str) -> None:
    payload = RequestMsg("tx", "lobby_in", "ab" * 32, "0001", "em4100", "2026-03-02T09:00:00.000Z").encode()
    assert RequestMsg.decode(payload).mono is None
    with pytest.raises(MessageError, match="mono"):
        RequestMsg.decode(payload.replace(b'"schema"', b'"mono": ' + mono.encode() + b', "schema"'))


def test_a_decision_paho_refuses_is_counted_and_logged_never_dropped_silently(
        server: Server, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    refused = mqtt.MQTTMessageInfo(1)
    refused.rc = mqtt.MQTT_ERR_QUEUE_SIZE  # paho's answer once every message id is waiting for its PUBACK
    server.bus._client.publish = lambda *a, **kw: refused  # type: ignore[method-assign,assignment]
    tx = ask(server, clock, None)
    assert server.bus.counters["decisions_not_sent"] == 1
    assert any(tx in r.getMessage() and "not sent" in r.getMessage() for r in caplog.records)


def test_the_server_puts_no_cap_on_decisions_in_flight(server: Server) -> None:
    assert server.bus._client._max_inflight_messages == 0  # noqa: SLF001  (paho keeps it private)
