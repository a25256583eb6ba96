"""Offline grants move everyone they let in (issue 18): the access event names the companions and the rule behind
the grant (doorkeep/contract.py), the server moves them all on ingest (server/bus.py, server/directory.py
``record_passage``) and the stored event keeps them (migration ``022_event_companions``).

The bus is the real one on the demo site with a real store, never connected: each test hands it the message a
delivery would (as tests/unit/test_bus_ingest.py does).
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from doorkeep.clock import iso_ms
from doorkeep.contract import MAX_COMPANIONS, DecisionMsg, EventMsg, Topics, _dump
from doorkeep.errors import MessageError
from server.app import Server
from tests.unit.test_bus_ingest import deliver as deliver_payload
from tests.unit.test_bus_ingest import server  # noqa: F401  (the fixture: the demo site's bus, never connected)

T = Topics("demo")
TS = "2026-03-02T09:00:00.000Z"


def access(**kw: Any) -> dict[str, Any]:
    """An offline grant at the lab as an edge sends it, as a dict to damage."""
    body: dict[str, Any] = {
        "schema": EventMsg.SCHEMA, "id": "e1", "seq": 1, "ts": TS, "device": "pi-floor7", "door": "lab",
        "type": "access", "decision": "granted", "reason": "granted_offline", "decided_by": "edge_offline",
        "person": "alice", "companions": ["v-omar"], "grant": "granted_escorted",
    }
    body.update(kw)
    return {k: v for k, v in body.items() if v is not ...}


# ------------------------------------------------------------------ contract


def test_an_offline_grant_carries_its_companions_and_rule_across_the_wire() -> None:
    ev = EventMsg.decode(_dump(access()))
    assert ev.companions == ("v-omar",) and ev.grant == "granted_escorted"
    again = EventMsg.decode(ev.encode())
    assert again == ev


def test_an_event_from_an_older_edge_without_the_fields_is_accepted() -> None:
    ev = EventMsg.decode(_dump(access(companions=..., grant=...)))
    assert ev.companions == () and ev.grant is None


def test_events_without_companions_encode_as_before() -> None:
    body = json.loads(EventMsg("e2", 1, TS, "pi-lobby", "lobby_in", "door_opened").encode())
    assert "companions" not in body and "grant" not in body


@pytest.mark.parametrize(("change", "words"), [
    ({"companions": "v-omar"}, "companions"),
    ({"companions": [f"p{i}" for i in range(MAX_COMPANIONS + 1)]}, f"at most {MAX_COMPANIONS}"),
    ({"companions": ["v omar"]}, "not a person id"),
    ({"companions": ["x" * 65]}, "not a person id"),
    ({"companions": [7]}, "not a person id"),
    ({"companions": [None]}, "not a person id"),
    ({"companions": ["v-omar", "v-omar"]}, "twice"),
    ({"companions": ["alice"]}, "badge holder"),
    ({"person": None}, "needs the person"),
    ({"decision": "denied", "reason": "escort_required", "grant": ...}, "granted access"),
    ({"decision": "denied", "reason": "no_access", "companions": ...}, "granted access"),
    ({"type": "door_opened", "decision": None, "reason": None}, "granted access"),
    ({"grant": "granted_offline"}, "not a rule that grants"),
    ({"grant": "no_access"}, "not a rule that grants"),
    ({"grant": ["granted"]}, "grant"),
], ids=["not-a-list", "too-many", "space", "too-long", "number", "null", "duplicate", "the-holder-himself",
        "no-person", "denied-with-companions", "denied-with-grant", "not-access", "grant-offline", "grant-refusal",
        "grant-list"])
def test_a_bad_companions_or_grant_field_is_refused_with_a_clear_error(change: dict[str, Any], words: str) -> None:
    with pytest.raises(MessageError, match=words):
        EventMsg.decode(_dump(access(**change)))


def test_a_server_decision_carries_its_companions_and_rule() -> None:
    msg = DecisionMsg("tx1", "lab", True, "granted_two_person", "chen", 5.0, TS, companions=("alice",),
                      grant="granted_two_person")
    assert DecisionMsg.decode(msg.encode()) == msg
    plain = json.loads(DecisionMsg("tx2", "lab", False, "no_access", "bob", 5.0, TS).encode())
    assert "companions" not in plain and "grant" not in plain
    with pytest.raises(MessageError, match="granted access decision only"):
        DecisionMsg.decode(_dump({**plain, "companions": ["chen"]}))


# ------------------------------------------------------------------ ingest


def deliver(server: Server, ev: EventMsg) -> None:  # noqa: F811
    """An edge's event handed to the bus as paho's network thread would (tests/unit/test_bus_ingest.py)."""
    deliver_payload(server, T.event(ev.device, ev.door), ev.encode())


def offline_grant(server: Server, at: float, **kw: Any) -> EventMsg:
    base: dict[str, Any] = {"id": secrets.token_hex(8), "seq": 1, "ts": iso_ms(at), "device": "pi-floor7",
                            "door": "lab", "type": "access", "decision": "granted", "reason": "granted_offline",
                            "decided_by": "edge_offline", "person": "alice", "companions": ("bob",),
                            "grant": "granted_escorted"}
    return EventMsg(**{**base, **kw})


def area(server: Server, person: str) -> str | None:
    pres = server.directory.state.presence.get(person)
    return pres.area if pres else None


def test_ingesting_an_offline_grant_moves_the_holder_and_every_companion(server: Server) -> None:
    now = server.bus.clock.wall()
    ev = offline_grant(server, now - 60, companions=("bob", "chen"))
    deliver(server, ev)
    assert [area(server, p) for p in ("alice", "bob", "chen")] == ["floor7"] * 3
    assert server.directory.state.occupancy("floor7") == 3
    stored = {r["person"]: r["area"] for r in server.store.all_presence()}
    assert stored == {"alice": "floor7", "bob": "floor7", "chen": "floor7"}
    row = server.store.event(ev.id)
    assert row is not None and json.loads(row["companions"]) == ["bob", "chen"] and row["grant"] == "granted_escorted"


def test_a_companion_seen_later_elsewhere_stays_where_the_later_passage_put_them(server: Server) -> None:
    now = server.bus.clock.wall()
    server.directory.record_passage("bob", "lobby_out", iso_ms(now - 10))  # bob left after the offline grant
    deliver(server, offline_grant(server, now - 60))
    assert area(server, "alice") == "floor7" and area(server, "bob") == "outside"


def test_unknown_companions_are_skipped_and_the_known_ones_move(server: Server) -> None:
    deliver(server, offline_grant(server, server.bus.clock.wall() - 5, companions=("nobody", "chen")))
    assert area(server, "chen") == "floor7" and "nobody" not in server.directory.state.presence


def test_a_server_grants_event_does_not_move_its_companions_a_second_time(server: Server) -> None:
    # The server moved them when it decided; the edge's event of that grant only records who passed.
    ev = offline_grant(server, server.bus.clock.wall() - 5, reason="granted_escorted", decided_by="server")
    deliver(server, ev)
    assert area(server, "alice") is None and area(server, "bob") is None
    row = server.store.event(ev.id)
    assert row is not None and json.loads(row["companions"]) == ["bob"]


def test_an_event_without_companions_stores_null(server: Server) -> None:
    ev = offline_grant(server, server.bus.clock.wall() - 5, companions=(), grant="granted")
    deliver(server, ev)
    row = server.store.event(ev.id)
    assert row is not None and row["companions"] is None and row["grant"] == "granted"
    assert area(server, "alice") == "floor7" and area(server, "bob") is None


def test_erasing_a_companion_pseudonymises_them_in_other_peoples_grants(server: Server) -> None:
    from server import subjects
    ev = offline_grant(server, server.bus.clock.wall() - 5, companions=("bob", "chen"))
    deliver(server, ev)
    directory = server.directory
    out = subjects.erase(directory.bundle, server.store, directory.key, "bob", None, now=server.bus.clock.wall())
    row = server.store.event(ev.id)
    assert row is not None and row["person"] == "alice"  # alice's own event keeps her
    assert json.loads(row["companions"]) == [out["ref"], "chen"] and "bob" not in row["companions"]
    assert out["counts"]["mentions"] >= 1
