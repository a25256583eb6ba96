"""The floor view (server/web/floors.py) and names instead of ids on the desk's pages (issue 16).

Real parts: a real ``Server`` on the demo site; events and snapshots enter through the bus's store-thread entry
point (as an MQTT delivery hands them over), door states as the edges' retained ``state`` messages.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from server.app import Server
from server.web.floors import event_words
from server.web.live import EventRowOut
from tests.unit import test_desk_visitors as visitor_tests
from tests.unit.test_desk_doors import door, report_state
from tests.unit.test_desk_live import event, ingest, ingest_snapshot
from tests.unit.test_desk_visitors import login

clock, server, app, client = visitor_tests.clock, visitor_tests.server, visitor_tests.app, visitor_tests.client


def floors(client: TestClient) -> dict[str, Any]:
    r = client.get("/api/v1/floors")
    assert r.status_code == 200, r.text
    return dict(r.json())


def cards(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["id"]: d for a in data["areas"] for d in a["doors"]}


def test_floor_view_groups_doors_by_area_name_with_state_alarms_last_event_and_snapshot(
        client: TestClient, server: Server, clock: FakeClock) -> None:
    login(client, "dex")
    data = floors(client)
    # The lift (no from/to: floors lobby, office, floor7) is a way into each floor it serves: its card is under
    # each of them, never in an area of its own.
    assert [(a["id"], a["name"], [d["id"] for d in a["doors"]]) for a in data["areas"]] == [
        ("floor7", "Floor 7", ["lab", "lift"]), ("lobby", "Lobby", ["lift", "lobby_in", "gate_out"]),
        ("office", "Open-plan office", ["lift", "gate_in"]), ("outside", "Outside", ["lobby_out"])]
    assert all(d["last_event"] is None and d["snapshot"] is None and d["state"] == "unknown"
               for d in cards(data).values())
    lifts = [d for a in data["areas"] for d in a["doors"] if d["id"] == "lift"]
    assert len(lifts) == 3 and all(d["kind"] == "lift" for d in lifts)
    assert lifts[0]["lift_floors"] == ["Lobby", "Open-plan office", "Floor 7"]

    # A granted badge with its snapshot, then the door opening (no snapshot): the last event is the opening,
    # the picture stays the badge's.
    badge = event("ev-1", 1, door="lobby_in")
    ingest(server, badge)
    ingest_snapshot(server, badge)
    ingest(server, event("ev-2", 2, door="lobby_in", type="door_opened", decision=None, reason=None, person=None,
                         credential_hash=None, credential_last4=None, transaction=None, snapshot=None))
    refused = event("ev-3", 3, door="lab", decision="denied", reason="unknown_credential", person=None,
                    credential_last4="BAD0", snapshot="ev-3")  # its snapshot has not arrived
    ingest(server, refused)
    report_state(server, "pi-lobby", {"lobby_in": door(is_open=True), "lobby_out": door()}, clock)
    server.store.raise_alarm("forced_open", key="forced_open-x", at=clock.wall(), device="pi-lobby",
                             door="lobby_out", once=True, cleared=True)
    c = cards(floors(client))
    lobby_in = c["lobby_in"]
    assert (lobby_in["state"], lobby_in["state_label"], lobby_in["from_area_name"]) == ("open", "open", "Outside")
    assert lobby_in["last_event"]["text"] == "Door opened" and lobby_in["last_event"]["id"] == "ev-2"
    assert re.fullmatch(r"2026-11-30 09:00:02 \S+", lobby_in["last_event"]["when"]), lobby_in["last_event"]
    assert lobby_in["snapshot"]["url"] == "/api/v1/snapshots/ev-1"
    assert lobby_in["snapshot"]["text"] == "Granted: Alice Archer"
    lab = c["lab"]
    assert lab["last_event"]["text"] == "Refused: card …BAD0 (Unknown card)", lab["last_event"]
    assert lab["snapshot"] is None, "a snapshot that has not arrived is not shown"
    gate = c["lobby_out"]
    assert (gate["state"], gate["alarms"], gate["alarm_priority"]) == ("locked", 1, "high")
    outside = next(a for a in floors(client)["areas"] if a["id"] == "outside")
    assert outside["alarms"] == 1

    page = client.get("/floors")
    assert page.status_code == 200
    html = page.text
    assert 'data-floors="/api/v1/floors"' in html and "/static/floors.js" in html
    assert re.search(r'<h2 id="area-outside">Outside', html) and "Doors into Outside" in html
    assert "Granted: Alice Archer" in html and 'src="/api/v1/snapshots/ev-1"' in html
    floor7 = html[html.index('id="area-floor7"'):html.index('id="area-lobby"')]
    assert 'data-door="lift"' in floor7 and "Lift to Lobby, Open-plan office, Floor 7" in floor7
    assert "From —" not in html and 'id="area-"' not in html
    assert '<a href="/floors" aria-current="page">Floors</a>' in html


def test_floor_view_is_for_admin_and_desk_only(app: FastAPI, client: TestClient) -> None:
    from tests.unit.test_desk_api import bearer, tokens

    toks = tokens(app)
    assert client.get("/api/v1/floors", headers=bearer(toks["aud"])).status_code == 403
    assert client.get("/floors", headers=bearer(toks["aud"])).status_code == 403
    assert client.get("/api/v1/floors").status_code == 401


def test_event_words_say_what_happened_in_plain_language() -> None:
    base: dict[str, Any] = dict(cursor=1, id="e", ts="2026-11-30T09:00:00.000Z", local_time="09:00:00", type="access",
                                door="lab", door_name="Floor 7 lab", person="alice", person_name="Alice Archer",
                                person_kind="employee", decision="granted", reason="granted", snapshot="none",
                                snapshot_url=None, detail={})
    assert event_words(EventRowOut(**base)) == "Granted: Alice Archer"
    assert event_words(EventRowOut(**{**base, "decision": "denied", "reason": "credential_inactive",
                                      "reason_label": "Card reported lost or disabled"})) == \
        "Refused: Alice Archer (Card reported lost or disabled)"
    assert event_words(EventRowOut(**{**base, "type": "forced_open", "decision": None})) == "Alarm: Door forced open"
    assert event_words(EventRowOut(**{**base, "type": "door_closed", "decision": None})) == "Door closed"


def test_pages_show_area_and_level_names_not_ids(client: TestClient, server: Server) -> None:
    csrf = login(client, "ada")
    v = visitor_tests.register(client, csrf, allowed_areas=["lobby", "floor7"])
    visitors = client.get("/visitors").text
    assert "Lobby, Floor 7" in visitors and "lobby, floor7" not in visitors
    checkin = client.get(f"/visitors/{v['visitor']['id']}/check-in").text
    assert "<dd>Lobby, Floor 7" in checkin
    people = client.get("/people").text
    assert "Staff: building" in people and re.search(r'data-label="Access levels">[^<]*Staff: building', people)
    board = client.get("/doors").text
    assert re.search(r'<td data-label="Into">Floor 7 \(restricted\) <span class="hint">from Lobby</span>', board)
    api = client.get("/api/v1/board").json()
    lab = next(d for d in api["doors"] if d["id"] == "lab")
    assert (lab["to_area"], lab["to_area_name"], lab["from_area_name"]) == ("floor7", "Floor 7", "Lobby")
