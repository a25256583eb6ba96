"""The desk's doors board and muster (server/web/doors.py, muster.py): live state from the edges' retained
``state`` messages, supervision and open alarms; remote unlock and lockdown behind a confirmation, audited,
with roles and CSRF; the muster list with visitors and their hosts.

Real parts: a real ``Server`` on the demo site (SQLite store, directory, the real ``CommandSender`` signing
every command). No broker: the server's publish hook is replaced by a fake edge that answers each signed
command at once, so what is tested is the desk, the signing, the directory and the audit log.
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any, Iterator

import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient prefers httpx2; httpx works the same here
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.contract import CommandResult, state_payload
from doorkeep.decision import AccessRequest
from server.app import Server
from server.directory import Visitor
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    api_login,
    app,
    assert_json_error,
    bearer,
    client,
    clock,
    hasher,
    server,
    tokens,
)

ALICE = ("em4100", "0F00A1B2C3")


class FakeEdges:
    """Stands in for the broker and the edges: records each signed command and answers it with ``status``."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.sent: list[dict[str, Any]] = []
        self.status = "ok"
        server.commands.publish = self.publish

    def publish(self, topic: str, payload: bytes) -> None:
        body = json.loads(json.loads(payload)["signed"])
        self.sent.append(body)
        error = None if self.status == "ok" else "replayed"
        self.server.commands.on_result(body["device"], CommandResult(transaction=body["transaction"],
                                                                     status=self.status, error=error))


@pytest.fixture
def edges(server: Server) -> Iterator[FakeEdges]:
    yield FakeEdges(server)


def report_state(server: Server, device: str, doors: dict[str, dict[str, Any]], clock: FakeClock) -> None:
    """What the bus does with a device's retained state message."""
    payload = state_payload(device, "test", doors, {}, {}, iso_ms(clock.wall()))
    server.bus.states[device] = payload
    server.supervisor.on_availability(device, "online", retained=False)
    server.supervisor.on_state(device, clock.wall(), retained=False)


def door(relay: bool = False, is_open: bool = False, tamper: bool = False, alarm: bool = False,
         override: dict[str, Any] | None = None) -> dict[str, Any]:
    state = "alarm" if alarm else "open" if is_open else "unlocked" if relay else "locked"
    return {"state": state, "relay": relay, "open": is_open, "sounder": alarm, "tamper": tamper,
            "override": override}


def board(client: TestClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    r = client.get("/api/v1/board", headers=headers)
    assert r.status_code == 200, r.text
    return {d["id"]: d for d in r.json()["doors"]}


def test_board_shows_each_doors_live_state(app: FastAPI, client: TestClient, server: Server, clock: FakeClock) -> None:
    desk = bearer(tokens(app)["dex"])
    assert {d["state"] for d in board(client, desk).values()} == {"unknown"}  # no edge heard yet
    report_state(server, "pi-lobby", {"lobby_in": door(relay=True), "lobby_out": door(is_open=True)}, clock)
    report_state(server, "pi-floor7", {"lab": door()}, clock)
    doors = board(client, desk)
    assert (doors["lobby_in"]["state"], doors["lobby_out"]["state"], doors["lab"]["state"]) == \
        ("unlocked", "open", "locked")
    assert doors["lobby_in"]["device_status"] == "online" and doors["lobby_in"]["relay"] is True

    # The physical state and the open alarms are apart: a closed gate with an old alarm reads "locked", 1 alarm.
    alarm_id, _ = server.store.raise_alarm("forced_open", key="forced_open-e1", at=clock.wall(), device="pi-lobby",
                                           door="lobby_out", once=True, cleared=True)
    report_state(server, "pi-lobby", {"lobby_in": door(relay=True), "lobby_out": door()}, clock)
    doors = board(client, desk)
    assert (doors["lobby_out"]["state"], doors["lobby_out"]["alarms"], doors["lobby_out"]["alarm_priority"]) == \
        ("locked", 1, "high")
    # Open now with the edge holding the alarm: forced (the latest alarm at the door says which).
    report_state(server, "pi-lobby", {"lobby_in": door(relay=True), "lobby_out": door(is_open=True, alarm=True)},
                 clock)
    assert (board(client, desk)["lobby_out"]["state_label"]) == "forced open"
    server.store.resolve(alarm_id, "dex", "checked")
    doors = board(client, desk)
    assert (doors["lobby_out"]["alarms"], doors["lobby_out"]["alarm_priority"]) == (0, None)
    report_state(server, "pi-lobby", {"lobby_in": door(relay=True), "lobby_out": door(is_open=True)}, clock)
    assert board(client, desk)["lobby_out"]["state"] == "open"
    report_state(server, "pi-floor7", {"lab": door(tamper=True)}, clock)
    lab = board(client, desk)["lab"]
    assert (lab["state"], lab["tamper"]) == ("locked", True), "tamper is a tag beside the state, not a state"
    page = client.get("/doors", headers=desk).text
    assert re.search(r'data-field="state">locked</span>\s*<span class="tag tag-tamper" data-field="tamper">', page)

    # An edge the server no longer hears: offline, whatever its last state said.
    server.supervisor.on_availability("pi-lobby", "offline", retained=False)
    doors = board(client, desk)
    assert doors["lobby_in"]["state"] == doors["lobby_out"]["state"] == "offline"

    # A state for a door its device does not own is ignored (a device only speaks for its own doors).
    report_state(server, "pi-floor7", {"lab": door(), "lobby_in": door(relay=True)}, clock)
    assert board(client, desk)["lobby_in"]["state"] == "offline"
    page = client.get("/doors", headers=desk).text
    assert 'data-board="/api/v1/board"' in page and '/static/doors.js' in page
    assert re.search(r'<tr data-door="lab">\s*<th scope="row">Floor 7 lab</th>', page)


def test_remote_unlock_needs_confirmation_and_csrf_and_is_audited(client: TestClient, server: Server,
                                                                  edges: FakeEdges) -> None:
    csrf = api_login(client, "dex")
    confirm = client.get("/doors/lab/unlock")
    assert confirm.status_code == 200 and "Unlock Floor 7 lab?" in confirm.text
    assert f'name="csrf_token" value="{csrf}"' in confirm.text and 'name="confirm" value="yes"' in confirm.text
    assert edges.sent == []  # showing the confirmation sends nothing

    assert client.post("/doors/lab/unlock", data={"confirm": "yes"}).status_code == 403  # no CSRF token
    r = client.post("/doors/lab/unlock", data={"csrf_token": csrf})  # not confirmed: back to the question
    assert r.status_code == 303 and r.headers["location"] == "/doors/lab/unlock"
    assert edges.sent == []

    r = client.post("/doors/lab/unlock", data={"csrf_token": csrf, "confirm": "yes"})
    assert r.status_code == 303 and r.headers["location"] == "/doors?done=unlocked&target=lab"
    assert [(c["device"], c["action"], c["args"]) for c in edges.sent] == [("pi-floor7", "unlock", {"door": "lab"})]
    assert server.audit is not None
    unlocks = [r for r in server.audit.records() if r["action"] == "door.unlock"]
    assert [(u["actor"], u["target"], u["details"]["args"]) for u in unlocks] == [("dex", "pi-floor7", {"door": "lab"})]
    assert "Floor 7 lab was unlocked for 4 s." in client.get(r.headers["location"]).text

    edges.status = "rejected"
    r = client.post("/doors/lab/unlock", data={"csrf_token": csrf, "confirm": "yes"})
    assert r.headers["location"] == "/doors?done=unlock_failed&target=lab"


def test_unlock_api_roles_and_errors(app: FastAPI, client: TestClient, edges: FakeEdges) -> None:
    toks = tokens(app)
    aud = bearer(toks["aud"])
    assert "auditor" in assert_json_error(client.post("/api/v1/doors/lab/unlock", headers=aud), 403)["error"]
    assert client.get("/doors/lab/unlock", headers=aud).status_code == 403
    assert_json_error(client.post("/api/v1/lockdown", headers=aud, json={"scope": "site", "active": True}), 403)
    assert_json_error(client.get("/api/v1/board", headers=aud), 403)
    assert_json_error(client.post("/api/v1/doors/lab/unlock"), 401)
    assert edges.sent == []

    admin = bearer(toks["ada"])
    r = client.post("/api/v1/doors/lab/unlock", headers=admin)
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["device"] == "pi-floor7"
    assert "no door 'nope'" in assert_json_error(client.post("/api/v1/doors/nope/unlock", headers=admin), 404)["error"]
    edges.status = "rejected"
    r = client.post("/api/v1/doors/lab/unlock", headers=admin)
    failed = r.json()
    assert r.status_code == 502 and "did not unlock" in failed["error"] and failed["detail"]["status"] == "rejected"


def test_lockdown_of_an_area_refuses_badges_until_lifted(client: TestClient, server: Server,
                                                         edges: FakeEdges) -> None:
    alice = AccessRequest("lobby_in", server.directory.card(*ALICE))
    assert server.directory.decide(alice).granted
    csrf = api_login(client, "dex")
    confirm = client.get("/doors/lockdown?scope=lobby&active=1")
    assert "Lock down Lobby?" in confirm.text and 'name="scope" value="lobby"' in confirm.text
    assert client.post("/doors/lockdown", data={"scope": "lobby", "active": "1", "confirm": "yes"}).status_code == 403
    assert server.directory.decide(alice).granted

    r = client.post("/doors/lockdown", data={"csrf_token": csrf, "scope": "lobby", "active": "1", "confirm": "yes"})
    assert r.headers["location"] == "/doors?done=locked_down&target=lobby"
    decision = server.directory.decide(alice)
    assert not decision.granted and decision.reason.value == "lockdown"
    assert "lobby" in server.directory.site.lockdowns
    # The lift on pi-floor7 serves the lobby as a floor: its cab must drop the lobby button too.
    assert {(c["device"], c["action"]) for c in edges.sent} == {("pi-lobby", "lockdown"), ("pi-floor7", "lockdown")}
    doors = board(client, {})
    assert doors["lobby_in"]["lockdown"] is True and doors["lab"]["lockdown"] is False
    assert doors["lift"]["lockdown"] is True and doors["lift"]["locked_floors"] == ["lobby"]
    page = client.get(r.headers["location"]).text
    assert "Lockdown of Lobby is in force" in page and "<strong>Lobby</strong> is locked down." in page

    r = client.post("/doors/lockdown", data={"csrf_token": csrf, "scope": "lobby", "active": "0", "confirm": "yes"})
    assert r.headers["location"] == "/doors?done=lifted&target=lobby"
    assert server.directory.decide(alice).granted
    assert server.audit is not None
    assert [(a["actor"], a["action"], a["target"]) for a in reversed(server.audit.records())
            if a["action"].startswith("lockdown.set") or a["action"].startswith("lockdown.clear")] == \
        [("dex", "lockdown.set", "lobby"), ("dex", "lockdown.clear", "lobby")]


def test_lockdown_api_checks_the_scope(app: FastAPI, client: TestClient, server: Server, edges: FakeEdges) -> None:
    admin = bearer(tokens(app)["ada"])
    assert "no area 'mars'" in assert_json_error(
        client.post("/api/v1/lockdown", headers=admin, json={"scope": "mars", "active": True}), 404)["error"]
    assert_json_error(client.post("/api/v1/lockdown", headers=admin, json={"scope": "../x", "active": True}), 422)
    r = client.post("/api/v1/lockdown", headers=admin, json={"scope": "site", "active": True})
    assert r.status_code == 200 and {x["device"] for x in r.json()["results"]} == {"pi-lobby", "pi-floor7"}
    assert server.directory.site.lockdowns == frozenset({"site"})
    assert client.get("/doors/lockdown?scope=mars&active=1", headers=admin).status_code == 303


def test_muster_lists_who_is_where_with_visitors_and_hosts(app: FastAPI, client: TestClient, server: Server,
                                                           clock: FakeClock) -> None:
    directory = server.directory
    assert directory.decide(AccessRequest("lobby_in", directory.card(*ALICE))).granted
    assert directory.decide(AccessRequest("lobby_in", directory.card("em4100", "0F00B0B0B0"))).granted  # Bob
    assert directory.decide(AccessRequest("lobby_out", directory.card("em4100", "0F00B0B0B0"))).granted  # left
    now = clock.wall()
    directory.register_visitor(Visitor(id="v-kim", name="Kim Kay", host="alice", valid_from=now - 60,
                                       valid_until=now + 3600, allowed_areas=("lobby",)))
    visitor = directory.check_in("v-kim")
    assert visitor.card_hash is not None
    assert directory.decide(AccessRequest("lobby_in", visitor.card_hash)).granted

    toks = tokens(app)
    desk = bearer(toks["dex"])
    body = client.get("/api/v1/muster", headers=desk).json()
    assert body["total"] == 2 and body["visitors"] == 1
    assert [(a["name"], [(p["name"], p["kind"], p["host"]) for p in a["people"]]) for a in body["areas"]] == \
        [("Lobby", [("Alice Archer", "employee", None), ("Kim Kay", "visitor", "Alice Archer")])]
    page = client.get("/muster", headers=desk).text
    assert "Kim Kay" in page and "Alice Archer" in page and "Bob Baker" not in page  # Bob went outside
    assert "data-print" in page and "/static/admin.css" in page
    assert "@media print" in client.get("/static/admin.css").text
    assert client.get("/muster", headers=bearer(toks["aud"])).status_code == 403
    assert_json_error(client.get("/api/v1/muster"), 401)


def test_timed_override_is_a_signed_audited_command_shown_on_the_board_until_its_end(
        app: FastAPI, client: TestClient, server: Server, clock: FakeClock, edges: FakeEdges) -> None:
    desk = bearer(tokens(app)["dex"])
    until = clock.wall() + 3600
    r = client.post("/api/v1/doors/lab/override", json={"kind": "unlock", "until": iso_ms(until)}, headers=desk)
    assert r.status_code == 200, r.text
    sent = edges.sent[-1]
    assert (sent["device"], sent["action"], sent["args"]) == ("pi-floor7", "unlock", {"door": "lab",
                                                                                     "until": iso_ms(until)})
    record = [x for x in server.audit.records() if x["action"] == "door.unlock"][-1]
    assert record["actor"] == "dex" and record["details"]["args"]["until"] == iso_ms(until)

    # The board shows what the edge says it holds, with its end in site time; once past, it is gone.
    held = {"kind": "unlock", "until": iso_ms(until), "transaction": sent["transaction"]}
    report_state(server, "pi-floor7", {"lab": door(relay=True, override=held)}, clock)
    lab = board(client, desk)["lab"]
    assert lab["override"]["kind"] == "unlock" and lab["override"]["until"] == iso_ms(until)
    assert lab["override"]["until_text"] and lab["state"] == "unlocked"
    page = client.get("/doors", headers=desk).text
    assert f"unlocked until {lab['override']['until_text']}" in page
    clock.advance(3601)
    report_state(server, "pi-floor7", {"lab": door(relay=False, override=held)}, clock)
    assert board(client, desk)["lab"]["override"] is None, "an end already past is never shown as in force"

    # Lock override, then release; bad times refused before anything is signed.
    n = len(edges.sent)
    for bad in ("tomorrow", iso_ms(clock.wall() + 10), iso_ms(clock.wall() + 40 * 86400)):
        r = client.post("/api/v1/doors/lab/override", json={"kind": "unlock", "until": bad}, headers=desk)
        assert r.status_code == 400, bad
    assert client.post("/api/v1/doors/lab/override", json={"kind": "open", "until": iso_ms(until)},
                       headers=desk).status_code == 422
    assert len(edges.sent) == n
    r = client.post("/api/v1/doors/lab/override", json={"kind": "lock", "until": iso_ms(clock.wall() + 600)},
                    headers=desk)
    assert r.status_code == 200 and edges.sent[-1]["action"] == "lock"
    r = client.post("/api/v1/doors/lab/override/release", headers=desk)
    assert r.status_code == 200 and edges.sent[-1]["action"] == "release"
    assert any(x["action"] == "door.release" and x["actor"] == "dex" for x in server.audit.records())
    edges.status = "failed"
    r = client.post("/api/v1/doors/lab/override", json={"kind": "unlock", "until": iso_ms(clock.wall() + 600)},
                    headers=desk)
    assert r.status_code == 502


def test_override_form_takes_site_time_and_needs_csrf(client: TestClient, server: Server, clock: FakeClock,
                                                      edges: FakeEdges) -> None:
    csrf = api_login(client, "dex")
    page = client.get("/doors/lab/override")
    assert page.status_code == 200 and 'type="datetime-local"' in page.text and "Europe/London" in page.text
    assert client.post("/doors/lab/override", data={"kind": "unlock", "until": "2030-01-01T10:00",
                                                    "confirm": "yes"}).status_code == 403
    # The fake clock reads 2025-11-28 08:00 UTC = 08:00 in London: 09:30 London is 09:30 UTC that day.
    r = client.post("/doors/lab/override", data={"csrf_token": csrf, "kind": "unlock", "until": "2025-11-28T09:30",
                                                 "confirm": "yes"})
    assert r.status_code == 303 and r.headers["location"] == "/doors?done=override_set&target=lab"
    assert edges.sent[-1]["args"] == {"door": "lab", "until": "2025-11-28T09:30:00.000Z"}
    r = client.post("/doors/lab/override", data={"csrf_token": csrf, "kind": "unlock", "until": "2020-01-01T09:30",
                                                 "confirm": "yes"})
    assert r.status_code == 400 and "at least a minute from now" in r.text
    r = client.post("/doors/lab/release", data={"csrf_token": csrf, "confirm": "yes"})
    assert r.status_code == 303 and r.headers["location"] == "/doors?done=released&target=lab"
    assert edges.sent[-1]["action"] == "release"


def test_the_board_lists_a_lift_with_its_floors_not_an_empty_from_and_to(app: FastAPI, client: TestClient,
                                                                         server: Server, edges: FakeEdges) -> None:
    """A lift has no from/to (site.toml lists its floors): the API names its floors, the board says where it goes."""
    desk = bearer(tokens(app)["dex"])
    lift = board(client, desk)["lift"]
    assert (lift["kind"], lift["from_area"], lift["to_area"], lift["restricted"]) == ("lift", "", "", True)
    assert [(f["area"], f["name"], f["restricted"], f["public_schedule"], f["offline"]) for f in lift["floors"]] == [
        ("lobby", "Lobby", False, "business_hours", "cache"), ("office", "Open-plan office", False, None, "cache"),
        ("floor7", "Floor 7", True, None, "deny")]
    assert lift["to_area_name"] == "Lobby, Open-plan office, Floor 7" and lift["from_area_name"] == "the lift cab"
    assert client.get("/api/v1/doors/lab", headers=desk).json()["floors"] == []

    api_login(client, "dex")
    row = re.search(r'<tr data-door="lift">.*?</tr>', client.get("/doors").text, re.S)
    assert row is not None
    assert re.search(r'lift to</span> Lobby, Open-plan office, Floor 7 \(restricted\)</td>', row.group(0)), row.group(0)
    assert "from " not in row.group(0).replace("from the", "")
    confirm = client.get("/doors/lift/unlock").text
    assert "Every floor button of Lift (but a floor locked down) will work for 8 seconds" in confirm
