"""Lifts on the server (docs/openings.md "Lifts"): a decision at the cab enables floors and moves nobody; the floor
chosen with that grant moves the people it names to that floor; a destination asked for before the badge moves
them at once. What names a floor the grant did not enable, or a grant that is not one of this lift, moves nobody.
The reports replay the same moves.

The bus is the real one on the demo site (its lift serves lobby, office and floor7 from pi-floor7) with a real
store, never connected: each test hands it the message a delivery would (tests/unit/test_offline_companions.py's
harness), requests included, and reads the decision it publishes.
"""

from __future__ import annotations

import json
import secrets
from datetime import date
from typing import Any

from doorkeep.clock import iso_ms
from doorkeep.contract import DecisionMsg, EventMsg, RequestMsg, Topics
from doorkeep.credentials import card_hash
from server.app import Server
from server.reports import Reports, area_doors, period, site_zone
from tests.unit.test_bus_ingest import deliver as deliver_payload
from tests.unit.test_offline_companions import area, deliver, server  # noqa: F401  (fixture)

T = Topics("demo")
BOB_CARD = "0F00B0B0B0"  # Bob Baker: "Staff: building" at any hour (lobby, office, outside), no Floor 7
_seq = iter(range(1, 1_000_000))


def bob(server: Server) -> str:  # noqa: F811
    return card_hash(server.directory.key, "em4100", BOB_CARD)


def ask(server: Server, floor: str | None = None) -> DecisionMsg:  # noqa: F811
    """Bob badges in the cab: the request as pi-floor7 publishes it, and the decision the bus publishes back."""
    req = RequestMsg(transaction=secrets.token_hex(4), door="lift", credential_hash=bob(server),
                     credential_last4="B0B0", credential_format="em4100", ts=iso_ms(server.bus.clock.wall()),
                     floor=floor)
    before = len(server.client.published)  # type: ignore[attr-defined]
    deliver_payload(server, T.request("pi-floor7", "lift"), req.encode())
    answers = [DecisionMsg.decode(p) for t, p in server.client.published[before:]  # type: ignore[attr-defined]
               if t == T.decision("pi-floor7", "lift")]
    assert len(answers) == 1 and answers[0].transaction == req.transaction
    return answers[0]


def event(server: Server, etype: str, door: str = "lift", ts: str | None = None, **kw: Any) -> EventMsg:  # noqa: F811
    base: dict[str, Any] = {"id": secrets.token_hex(8), "seq": next(_seq),
                            "ts": ts or iso_ms(server.bus.clock.wall() - 5),
                            "device": "pi-lobby" if door in ("lobby_in", "lobby_out", "gate_in", "gate_out")
                            else "pi-floor7", "door": door, "type": etype}
    return EventMsg(**{**base, **kw})


def grant(server: Server, floors: list[str], **kw: Any) -> EventMsg:  # noqa: F811
    """The access event the cab publishes for a grant (server-decided unless ``kw`` says otherwise)."""
    fields: dict[str, Any] = {"decision": "granted", "reason": "granted", "decided_by": "server", "person": "bob",
                              "grant": "granted", "detail": {"floors": floors}, **kw}
    return event(server, "access", **fields)


def chosen(server: Server, grant_id: str, floor: str, **kw: Any) -> EventMsg:  # noqa: F811
    return event(server, "floor_chosen", detail={"grant": grant_id, "floor": floor}, **kw)


def test_a_server_decision_at_the_lift_enables_floors_and_moves_nobody(server: Server) -> None:  # noqa: F811
    answer = ask(server)
    assert answer.granted and answer.floors == ("lobby", "office") and answer.person == "bob"
    assert json.loads(answer.encode())["floors"] == ["lobby", "office"]
    assert area(server, "bob") is None, "a lift grant is buttons lit, not a move"
    assert server.directory.state.occupancy("lobby") == server.directory.state.occupancy("office") == 0


def test_the_floor_chosen_with_a_grant_moves_its_person_and_companions_there(server: Server) -> None:  # noqa: F811
    access = grant(server, ["lobby", "office"], companions=("chen",), grant="granted_escorted",
                   reason="granted_escorted")
    deliver(server, access)
    assert area(server, "bob") is None and area(server, "chen") is None
    deliver(server, chosen(server, access.id, "office"))
    assert (area(server, "bob"), area(server, "chen")) == ("office", "office")
    assert {r["person"]: r["area"] for r in server.store.all_presence()} == {"bob": "office", "chen": "office"}
    assert server.bus.counters["floors_without_grant"] == 0


def test_a_floor_chosen_that_the_grant_did_not_enable_moves_nobody(server: Server) -> None:  # noqa: F811
    mine = grant(server, ["lobby", "office"])
    elsewhere = event(server, "access", door="lobby_in", decision="granted", reason="granted_offline",
                      decided_by="edge_offline", person="alice", grant="granted")  # moves alice into the lobby
    refused = event(server, "access", decision="denied", reason="no_access", decided_by="server", person="chen",
                    detail={"floors": ["floor7"]})
    for ev in (mine, elsewhere, refused):
        deliver(server, ev)
    assert area(server, "alice") == "lobby"
    for grant_id, floor in ((mine.id, "floor7"),  # a floor this grant did not enable
                            (elsewhere.id, "lobby"),  # another door's grant
                            (refused.id, "floor7"),  # a refused badge
                            ("no-such-event", "office")):  # nothing stored
        deliver(server, chosen(server, grant_id, floor))
    assert (area(server, "bob"), area(server, "chen"), area(server, "alice")) == (None, None, "lobby")
    assert server.bus.counters["floors_without_grant"] == 4


def test_an_offline_grant_moves_at_once_only_to_a_floor_asked_for_and_enabled(server: Server) -> None:  # noqa: F811
    offline = {"reason": "granted_offline", "decided_by": "edge_offline"}
    deliver(server, grant(server, ["lobby", "office"], **offline))
    assert area(server, "bob") is None, "an offline lift grant without a destination waits for the floor chosen"
    deliver(server, grant(server, ["lobby"], detail={"floors": ["lobby"], "floor": "office"}, **offline))
    assert area(server, "bob") is None, "a destination the grant did not enable moves nobody"
    deliver(server, grant(server, ["lobby", "office"], detail={"floors": ["office"], "floor": "office"},
                          companions=("chen",), **offline))
    assert (area(server, "bob"), area(server, "chen")) == ("office", "office")


def test_a_destination_asked_for_before_the_badge_moves_at_once_on_the_server(server: Server) -> None:  # noqa: F811
    refused = ask(server, floor="floor7")
    assert not refused.granted and refused.reason == "no_access" and refused.floors == ()
    assert area(server, "bob") is None
    answer = ask(server, floor="office")
    assert answer.granted and answer.floors == ("office",)
    assert area(server, "bob") == "office"
    assert server.bus.wait_idle(5)
    assert {r["person"]: r["area"] for r in server.store.all_presence()}["bob"] == "office"


# ------------------------------------------------------------------ reports


DAY = "2026-11-24"


def test_reports_count_a_lift_for_each_floor_and_replay_its_moves(server: Server) -> None:  # noqa: F811
    reports = Reports(server.store)
    site = server.site
    assert "lift" in area_doors(site, "floor7") and "lift" in area_doors(site, "lobby")
    assert "lift" not in area_doors(site, "outside")

    lift_grant = grant(server, ["lobby", "office"], ts=f"{DAY}T09:00:00.000Z", companions=("chen",),
                       grant="granted_escorted", reason="granted_escorted")
    deliver(server, lift_grant)
    deliver(server, chosen(server, lift_grant.id, "office", ts=f"{DAY}T09:00:20.000Z"))
    deliver(server, chosen(server, lift_grant.id, "floor7", ts=f"{DAY}T09:00:30.000Z"))  # not enabled: no move
    dispatch = grant(server, ["office"], ts=f"{DAY}T10:00:00.000Z", person="alice",
                     detail={"floors": ["office"], "floor": "office"})
    deliver(server, dispatch)
    deliver(server, event(server, "access", door="gate_out", ts=f"{DAY}T11:00:00.000Z", decision="granted",
                          reason="granted", decided_by="server", person="bob", grant="granted"))  # bob to the lobby

    zone = site_zone(site)
    occ = reports.occupancy(site, "office", date.fromisoformat(DAY), zone)
    assert [(s.local.strftime("%H:%M:%S"), s.person, s.door_name, s.entered, s.count) for s in occ.steps] == [
        ("09:00:20", "Bob Baker", "Lift", True, 1), ("09:00:20", "Chen Cho", "Lift", True, 2),
        ("10:00:00", "Alice Archer", "Lift", True, 3), ("11:00:00", "Bob Baker", "Office gates out", False, 2)]
    floor7 = reports.occupancy(site, "floor7", date.fromisoformat(DAY), zone)
    assert floor7.steps == [], "a floor the grant did not enable is no move"

    span = period(date.fromisoformat(DAY), date.fromisoformat(DAY), zone)
    activity = reports.activity(site, area_doors(site, "floor7"), span)
    assert sum(b.granted for b in activity) == 2, "the lift's badges count for each floor it serves"
    badges, _ = reports.movements(site, "bob", span)
    lift_rows = [(b.door_name, b.lift, b.from_area, b.to_area) for b in badges if b.door == "lift"]
    assert lift_rows == [("Lift", True, "", "Lobby or Open-plan office")]
    (alice,) = [b for b in reports.movements(site, "alice", span)[0] if b.door == "lift"]
    assert alice.to_area == "Open-plan office"
