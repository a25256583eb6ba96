"""A request that reaches the server after its door stopped waiting is not decided again (server/bus.py).

The door decided on its own at its timeout (docs/mqtt.md "Deciding without the server"); its access event will say
so. A request held up by a partition or a slow link used to be decided anyway, and that decision's effects (who is
where, a partner waiting, a PIN count) committed for something the door never did.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.contract import DecisionMsg, RequestMsg, state_payload
from doorkeep.credentials import card_hash
from server.app import Server
from tests.unit.test_metrics import T, build, close, scrape, value
from tests.unit.test_bus_ingest import deliver

ALICE = "0F00A1B2C3"  # the demo's Alice: the lobby at any hour
TIMEOUT_S = 1.0  # the demo's lobby_in decision_timeout_ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc).timestamp())


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = build(tmp_path, clock)
    yield srv
    close(srv)


def heartbeat(server: Server, clock: FakeClock, offset_s: float, device: str = "pi-lobby") -> None:
    """A live heartbeat from an edge whose clock reads ``offset_s`` ahead of the server's."""
    deliver(server, T.state(device), state_payload(device, "0.1.0", {}, {}, {}, iso_ms(clock.wall() + offset_s)))


def ask(server: Server, asked_at: float, *, door: str = "lobby_in", device: str = "pi-lobby") -> str:
    tx = secrets.token_hex(4)
    req = RequestMsg(tx, door, card_hash(server.directory.key, "em4100", ALICE), ALICE[-4:], "em4100", iso_ms(asked_at))
    deliver(server, T.request(device, door), req.encode())
    return tx


def answered(server: Server) -> dict[str, DecisionMsg]:
    return {(d := DecisionMsg.decode(payload)).transaction: d for topic, payload in server.client.published  # type: ignore[attr-defined]
            if topic.endswith("/decision")}


def test_a_request_older_than_its_doors_timeout_is_not_decided_and_moves_nobody(server: Server,
                                                                               clock: FakeClock) -> None:
    heartbeat(server, clock, 0.0)
    stale = ask(server, clock.wall() - TIMEOUT_S - 0.5)  # held up 1.5 s on the way: the door decided at 1 s
    assert stale not in answered(server)
    assert "alice" not in server.directory.state.presence, "no effect committed for a decision nobody carried out"
    assert server.bus.counters["requests_expired"] == 1
    assert value(scrape(server), "doorkeep_requests_expired_total") == 1
    fresh = ask(server, clock.wall() - 0.2)
    assert answered(server)[fresh].granted
    assert server.directory.state.presence["alice"].area == "lobby"
    assert server.bus.counters["requests_expired"] == 1


@pytest.mark.parametrize("offset_s", [-30.0, 30.0], ids=["edge-clock-behind", "edge-clock-ahead"])
def test_an_edge_clock_off_by_far_more_than_the_timeout_is_read_through_its_measured_offset(
        server: Server, clock: FakeClock, offset_s: float) -> None:
    heartbeat(server, clock, offset_s)
    fresh = ask(server, clock.wall() + offset_s - 0.2)  # 0.2 s ago by the edge's own clock
    assert answered(server)[fresh].granted
    stale = ask(server, clock.wall() + offset_s - 3.0)
    assert stale not in answered(server) and server.bus.counters["requests_expired"] == 1


def test_without_a_measured_offset_every_request_is_decided(server: Server, clock: FakeClock) -> None:
    # No live heartbeat yet (a server just started): the edge's clock could be anything, so nothing is judged stale.
    tx = ask(server, clock.wall() - 60)
    assert answered(server)[tx].granted and server.bus.counters["requests_expired"] == 0
