"""Turnstiles on the server (issue 18, docs/openings.md): a grant at a turnstile moves nobody; the passage that
uses it moves the people its access event names, so presence, anti-passback and occupancy count passages.

The bus is the real one on the demo site (its office gates are turnstiles) with a real store, never connected:
each test hands it the message a delivery would (tests/unit/test_offline_companions.py's harness).
"""

from __future__ import annotations

import secrets
from typing import Any

from doorkeep.clock import iso_ms
from doorkeep.contract import EventMsg
from doorkeep.credentials import card_hash
from doorkeep.decision import AccessRequest, DecisionState, commit, decide, pass_through
from server.app import Server
from tests.unit.test_offline_companions import area, deliver, server  # noqa: F401  (fixture)

ALICE_CARD = "0F00A1B2C3"
_seq = iter(range(1, 1_000_000))


def event(server: Server, etype: str, door: str = "gate_in", **kw: Any) -> EventMsg:  # noqa: F811
    base: dict[str, Any] = {"id": secrets.token_hex(8), "seq": next(_seq), "ts": iso_ms(server.bus.clock.wall() - 5),
                            "device": "pi-lobby", "door": door, "type": etype}
    return EventMsg(**{**base, **kw})


def grant(server: Server, door: str = "gate_in", **kw: Any) -> EventMsg:  # noqa: F811
    fields = {"decision": "granted", "reason": "granted_offline", "decided_by": "edge_offline", "person": "alice",
              "grant": "granted", **kw}
    return event(server, "access", door, **fields)


def test_a_server_grant_at_a_turnstile_moves_nobody_until_its_passage(server: Server) -> None:  # noqa: F811
    h = card_hash(server.directory.key, "em4100", ALICE_CARD)
    decision = server.directory.decide(AccessRequest("gate_in", h))
    assert decision.granted
    assert area(server, "alice") is None, "a grant is a credit for one passage, not a move"
    access = grant(server, reason="granted", decided_by="server")
    deliver(server, access)
    assert area(server, "alice") is None
    deliver(server, event(server, "passage", detail={"grant": access.id}))
    assert area(server, "alice") == "office"
    assert {r["person"]: r["area"] for r in server.store.all_presence()}["alice"] == "office"


def test_an_offline_turnstile_grant_moves_its_companions_on_the_passage(server: Server) -> None:  # noqa: F811
    access = grant(server, companions=("bob",), grant="granted_escorted")
    deliver(server, access)
    assert area(server, "alice") is None and area(server, "bob") is None
    deliver(server, event(server, "passage", detail={"grant": access.id}))
    assert (area(server, "alice"), area(server, "bob")) == ("office", "office")
    assert server.directory.state.occupancy("office") == 2


def test_an_unused_grant_moves_nobody(server: Server) -> None:  # noqa: F811
    access = grant(server)
    deliver(server, access)
    deliver(server, event(server, "grant_unused", detail={"grant": access.id}))
    assert area(server, "alice") is None


def test_a_passage_naming_another_doors_or_a_refused_badge_moves_nobody(server: Server) -> None:  # noqa: F811
    elsewhere = grant(server, door="lobby_in")  # a grant at a plain door moves alice into the lobby at once
    deliver(server, elsewhere)
    assert area(server, "alice") == "lobby"
    refused = event(server, "access", decision="denied", reason="no_access", decided_by="server", person="bob")
    deliver(server, refused)
    for named in (elsewhere.id, refused.id, "no-such-event"):
        deliver(server, event(server, "passage", detail={"grant": named}))
    assert area(server, "alice") == "lobby" and area(server, "bob") is None
    assert server.bus.counters["passages_without_grant"] == 3


def test_a_free_passage_moves_nobody_and_raises_nothing(server: Server) -> None:  # noqa: F811
    deliver(server, event(server, "passage"))
    assert server.directory.state.presence == {} and not [a for a in server.store.open_alarms() if a["door"]]


def test_tailgate_and_forced_passage_raise_their_alarms(server: Server) -> None:  # noqa: F811
    access = grant(server)
    deliver(server, access)
    deliver(server, event(server, "passage", detail={"grant": access.id}))
    deliver(server, event(server, "tailgate", detail={"grant": access.id}))
    deliver(server, event(server, "forced_passage", door="gate_out"))
    alarms = sorted((a["type"], a["door"]) for a in server.store.open_alarms() if a["door"])
    assert alarms == [("forced_passage", "gate_out"), ("tailgate", "gate_in")]


def test_commit_leaves_presence_to_the_passage_at_a_turnstile_only(server: Server) -> None:  # noqa: F811
    """The pure rule both sides share: commit() moves at a door, pass_through() at a turnstile."""
    site = server.directory.site
    h = card_hash(server.directory.key, "em4100", ALICE_CARD)
    state = DecisionState()
    for door, moved in (("gate_in", None), ("lobby_in", "lobby")):
        req = AccessRequest(door, h)
        commit(req, decide(req, site, state, 1000.0), site, state, 1000.0)
        assert (state.presence["alice"].area if "alice" in state.presence else None) == moved
    assert pass_through(site, state, "gate_in", ["alice", "nobody"], 1001.0) == ["alice"]
    assert state.presence["alice"].area == "office" and state.occupancy("office") == 1
    assert pass_through(site, state, "no_such_door", ["alice"], 1002.0) == []
