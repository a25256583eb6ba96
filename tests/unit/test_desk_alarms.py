"""The desk's alarms (server/alarms.py, its routes server/web/alarms.py): every kind listed until resolved,
acknowledge and resolve with a note, audited with the operator as actor, roles and CSRF on every POST.

Real parts: a real ``Server`` on the demo site with its SQLite store (bus not started), alarms raised through
the store's own API as supervision raises them, FastAPI's TestClient.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient prefers httpx2; httpx works the same here
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from server.app import Server
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

#: (type, severity, device, door, cleared): what supervision raises for each kind the desk must show.
KINDS = [
    ("forced_open", "alarm", "pi-lobby", "lobby_out", False),
    ("held_open", "alarm", "pi-floor7", "lab", False),
    ("tamper", "alarm", "pi-floor7", "lab", False),
    ("device_offline", "trouble", "pi-floor7", None, False),
    ("anti_passback_violation", "warning", "pi-lobby", "lobby_in", True),
]


def raise_all(server: Server, clock: FakeClock) -> dict[str, str]:
    ids = {}
    for i, (kind, severity, device, door, cleared) in enumerate(KINDS):
        clock.advance(1)
        alarm_id, new = server.store.raise_alarm(kind, key=f"{kind}-ev{i}", at=clock.wall(), severity=severity,
                                                 device=device, door=door, once=True, cleared=cleared)
        assert new
        ids[kind] = alarm_id
    return ids


def audit_of(server: Server, action: str) -> list[dict[str, Any]]:
    assert server.audit is not None
    return [r for r in server.audit.records() if r["action"] == action]


def test_every_kind_of_alarm_is_listed_and_shown_until_resolved(app: FastAPI, client: TestClient, server: Server,
                                                                 clock: FakeClock) -> None:
    ids = raise_all(server, clock)
    desk = bearer(tokens(app)["dex"])
    body = client.get("/api/v1/alarms", headers=desk).json()
    assert {a["type"] for a in body["alarms"]} == {k[0] for k in KINDS}
    assert body["open"] == 5 and body["active"] == 4
    assert body["alarms"][0]["id"] == ids["anti_passback_violation"]  # newest first
    page = client.get("/alarms", headers=desk).text
    for title in ("Door forced open", "Door held open", "Tamper", "Device offline", "Anti-passback violation"):
        assert title in page, title
    active = page[page.index('id="active-heading"'):page.index('id="cleared-heading"')]
    cleared = page[page.index('id="cleared-heading"'):page.index('id="history-heading"')]
    assert "Door forced open" in active and "Anti-passback violation" in cleared
    assert "Floor 7 lab" in active  # the door's name, not only its id

    # The door closed: the forced-open alarm is over but stays listed (cleared) until someone resolves it.
    server.store.clear_alarm("forced_open-ev0", clock.wall())
    body = client.get("/api/v1/alarms", headers=desk).json()
    forced = next(a for a in body["alarms"] if a["id"] == ids["forced_open"])
    assert forced["state"] == "cleared" and body["open"] == 5
    page = client.get("/alarms", headers=desk).text
    cleared = page[page.index('id="cleared-heading"'):page.index('id="history-heading"')]
    assert "Door forced open" in cleared


def test_acknowledge_then_resolve_with_a_note_is_audited_with_the_operator(app: FastAPI, client: TestClient,
                                                                           server: Server, clock: FakeClock) -> None:
    ids = raise_all(server, clock)
    desk = bearer(tokens(app)["dex"])
    forced = ids["forced_open"]
    r = client.post(f"/api/v1/alarms/{forced}/acknowledge", headers=desk)
    assert r.status_code == 200 and r.json()["changed"] is True
    assert r.json()["alarm"]["acknowledged_by"] == "dex" and r.json()["alarm"]["state"] == "active"
    assert client.post(f"/api/v1/alarms/{forced}/acknowledge", headers=desk).json()["changed"] is False
    assert [(a["actor"], a["target"]) for a in audit_of(server, "alarm.acknowledge")] == [("dex", forced)]

    empty = client.post(f"/api/v1/alarms/{forced}/resolve", headers=desk, json={"note": "   "})
    assert "note" in assert_json_error(empty, 422)["error"]
    assert server.store.alarm(forced)["resolved_at"] is None
    note = "Courier propped the gate; spoke to Bob Baker, door checked"
    r = client.post(f"/api/v1/alarms/{forced}/resolve", headers=desk, json={"note": note})
    assert r.status_code == 200 and r.json()["alarm"]["state"] == "resolved" and r.json()["alarm"]["note"] == note
    records = audit_of(server, "alarm.resolve")
    assert [(a["actor"], a["target"]) for a in records] == [("dex", forced)]
    assert "Bob" not in str(records[0]["details"])  # free text (may name people) stays out of the audit log

    open_ids = [a["id"] for a in client.get("/api/v1/alarms", headers=desk).json()["alarms"]]
    assert forced not in open_ids and len(open_ids) == 4
    history = client.get("/api/v1/alarms?state=resolved", headers=desk).json()["alarms"]
    assert [(a["id"], a["resolved_by"], a["note"]) for a in history] == [(forced, "dex", note)]
    page = client.get("/alarms", headers=desk).text
    assert note in page[page.index('id="history-heading"'):]


def test_auditor_and_anonymous_cannot_see_or_touch_alarms(app: FastAPI, client: TestClient, server: Server,
                                                          clock: FakeClock) -> None:
    ids = raise_all(server, clock)
    aud = bearer(tokens(app)["aud"])
    assert "auditor" in assert_json_error(client.get("/api/v1/alarms", headers=aud), 403)["error"]
    assert_json_error(client.post(f"/api/v1/alarms/{ids['tamper']}/acknowledge", headers=aud), 403)
    assert_json_error(client.post(f"/api/v1/alarms/{ids['tamper']}/resolve", headers=aud, json={"note": "x"}), 403)
    assert_json_error(client.get("/api/v1/alarms"), 401)
    assert_json_error(client.post(f"/api/v1/alarms/{ids['tamper']}/acknowledge"), 401)
    assert client.get("/alarms", headers=aud).status_code == 403
    alarm = server.store.alarm(ids["tamper"])
    assert alarm["acknowledged_at"] is None and alarm["resolved_at"] is None


def test_forms_need_the_csrf_token_and_then_act(client: TestClient, server: Server, clock: FakeClock) -> None:
    ids = raise_all(server, clock)
    csrf = api_login(client, "dex")  # a cookie session
    tamper = ids["tamper"]
    assert client.post(f"/alarms/{tamper}/acknowledge").status_code == 403
    assert client.post(f"/alarms/{tamper}/resolve", data={"note": "fixed"}).status_code == 403
    assert client.post(f"/api/v1/alarms/{tamper}/acknowledge").status_code == 403
    assert server.store.alarm(tamper)["acknowledged_at"] is None

    page = client.get("/alarms").text
    assert re.search(rf'action="/alarms/{re.escape(tamper)}/acknowledge">\s*<input type="hidden" '
                     rf'name="csrf_token" value="{re.escape(csrf)}"', page)
    r = client.post(f"/alarms/{tamper}/acknowledge", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/alarms?done=acknowledged"
    assert server.store.alarm(tamper)["acknowledged_by"] == "dex"
    r = client.post(f"/alarms/{tamper}/resolve", data={"csrf_token": csrf, "note": ""})
    assert r.headers["location"] == "/alarms?done=note" and server.store.alarm(tamper)["resolved_at"] is None
    r = client.post(f"/alarms/{tamper}/resolve", data={"csrf_token": csrf, "note": "cover refitted"})
    assert r.headers["location"] == "/alarms?done=resolved"
    assert server.store.alarm(tamper)["note"] == "cover refitted"
    assert "Alarm resolved." in client.get("/alarms?done=resolved").text
    assert "<script>" not in client.get("/alarms?done=<script>").text


def test_unknown_alarm_is_a_json_404(app: FastAPI, client: TestClient) -> None:
    desk = bearer(tokens(app)["dex"])
    assert "no alarm" in assert_json_error(client.post("/api/v1/alarms/nope/acknowledge", headers=desk), 404)["error"]
    assert_json_error(client.post("/api/v1/alarms/nope/resolve", headers=desk, json={"note": "x"}), 404)
    assert_json_error(client.post("/api/v1/alarms/a%20b/acknowledge", headers=desk), 422)
    assert client.post("/alarms/nope/acknowledge", headers=desk).headers["location"] == "/alarms?done=gone"
