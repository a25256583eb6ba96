"""The alarm console (server/alarms.py bulk actions and escalation, server/alarm_watch.py, the routes of
server/web/alarm_desk.py and server/web/alarms.py): bulk acknowledge and resolve by ids or by filter, a note
required for high priority (422 naming the field), escalation driven by a fake clock, the counter on every
page, the operator's sound switch remembered server-side.

Real parts: a real ``Server`` on the demo site with its SQLite store (bus not started), alarms raised through
the store's API as supervision raises them, FastAPI's TestClient.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from doorkeep.model import AlarmSettings
from server.alarm_watch import AlarmWatch
from server.alarms import AlarmFilter, Alarms, AlarmSummary
from server.app import Server
from server.web.alarm_desk import tone_wav
from tests.unit.test_desk_alarms import audit_of
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    api_login,
    app,
    assert_json_error,
    bearer,
    client,
    clock,
    form_login,
    hasher,
    server,
    tokens,
)
from tests.unit.test_desk_api import PASSWORDS
from tests.unit.test_desk_live import Reader, ingest, served  # noqa: F401 - served is a fixture
from tests.unit.test_desk_live import event as live_event
from tests.unit.test_desk_live import token as live_token
from simulators.wait import wait_until


def raise_(server: Server, clock: FakeClock, kind: str, n: int, door: str | None = "lobby_out",
           device: str = "pi-lobby") -> str:
    clock.advance(1)
    alarm_id, new = server.store.raise_alarm(kind, key=f"{kind}-ev{n}", at=clock.wall(), device=device, door=door,
                                             once=True)
    assert new
    return alarm_id


def service(server: Server, clock: FakeClock, settings: AlarmSettings | None = None) -> Alarms:
    site = dataclasses.replace(server.site, alarms=settings) if settings is not None else server.site
    return Alarms(server.store, clock, server.audit, site=lambda: site)


# ------------------------------------------------------------------ bulk


def test_bulk_acknowledge_by_ids_audits_each_and_reports_unchanged_and_missing(app: FastAPI, client: TestClient,
                                                                               server: Server, clock: FakeClock) -> None:
    a, b = raise_(server, clock, "forced_open", 1), raise_(server, clock, "held_open", 2)
    desk = bearer(tokens(app)["dex"])
    assert client.post(f"/api/v1/alarms/{a}/acknowledge", headers=desk).status_code == 200
    r = client.post("/api/v1/alarms/acknowledge", headers=desk, json={"ids": [a, b, "gone-1"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"changed": [b], "unchanged": [a], "missing": ["gone-1"]}
    assert sorted(x["target"] for x in audit_of(server, "alarm.acknowledge")) == sorted([a, b])
    assert all(x["actor"] == "dex" for x in audit_of(server, "alarm.acknowledge"))


def test_bulk_resolve_of_low_priority_alarms_by_filter_needs_no_note(app: FastAPI, client: TestClient,
                                                                     server: Server, clock: FakeClock) -> None:
    low = [raise_(server, clock, "relay_stuck", i) for i in range(3)]
    high = raise_(server, clock, "forced_open", 9)
    desk = bearer(tokens(app)["dex"])
    r = client.post("/api/v1/alarms/resolve", headers=desk, json={"filter": {"priority": "low"}})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["changed"]) == sorted(low)
    assert [a["id"] for a in server.store.open_alarms()] == [high]
    assert len(audit_of(server, "alarm.resolve")) == 3


def test_bulk_resolve_with_a_high_priority_alarm_and_no_note_is_422_on_the_note_and_changes_nothing(
        app: FastAPI, client: TestClient, server: Server, clock: FakeClock) -> None:
    ids = [raise_(server, clock, "relay_stuck", 1), raise_(server, clock, "tamper", 2)]
    desk = bearer(tokens(app)["dex"])
    r = client.post("/api/v1/alarms/resolve", headers=desk, json={"ids": ids, "note": "   "})
    body = assert_json_error(r, 422)
    assert body["detail"][0]["loc"] == ["body", "note"] and body["detail"][0]["type"] == "missing_note"
    assert "high-priority" in body["error"]
    assert len(server.store.open_alarms()) == 2 and audit_of(server, "alarm.resolve") == []
    r = client.post("/api/v1/alarms/resolve", headers=desk, json={"ids": ids, "note": "cover refitted, relay swapped"})
    assert r.status_code == 200 and sorted(r.json()["changed"]) == sorted(ids)
    assert {server.store.alarm(i)["note"] for i in ids} == {"cover refitted, relay swapped"}


def test_bulk_needs_either_ids_or_a_filter(app: FastAPI, client: TestClient) -> None:
    issued = tokens(app)
    desk = bearer(issued["dex"])
    assert_json_error(client.post("/api/v1/alarms/acknowledge", headers=desk, json={}), 422)
    assert_json_error(client.post("/api/v1/alarms/acknowledge", headers=desk,
                                  json={"ids": ["a"], "filter": {"priority": "low"}}), 422)
    assert_json_error(client.post("/api/v1/alarms/acknowledge", headers=desk, json={"ids": ["a b"]}), 422)
    assert_json_error(client.post("/api/v1/alarms/acknowledge", headers=bearer(issued["aud"]),
                                  json={"ids": ["a"]}), 403)


def test_the_filter_selects_by_priority_type_door_state_and_acknowledgement(server: Server, clock: FakeClock) -> None:
    alarms = service(server, clock)
    forced = raise_(server, clock, "forced_open", 1, door="lobby_out")
    held = raise_(server, clock, "held_open", 2, door="lab", device="pi-floor7")
    alarms.acknowledge(held, "dex")
    assert [a.id for a in alarms.open(AlarmFilter(priority="high"))] == [forced]
    assert [a.id for a in alarms.open(AlarmFilter(door="lab"))] == [held]
    assert [a.id for a in alarms.open(AlarmFilter(type="held_open"))] == [held]
    assert [a.id for a in alarms.open(AlarmFilter(unacknowledged=True))] == [forced]
    assert alarms.open(AlarmFilter(state="cleared")) == []


def test_bulk_form_resolves_all_matching_and_without_a_note_shows_the_page_again_with_the_error(
        app: FastAPI, client: TestClient, server: Server, clock: FakeClock) -> None:
    ids = [raise_(server, clock, "forced_open", i) for i in range(2)]
    form_login(client, "dex", PASSWORDS["dex"])
    page = client.get("/alarms?priority=high").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    assert "Resolve all 2 matching" in page and "High priority" in page
    r = client.post("/alarms/bulk", data={"csrf_token": csrf, "op": "resolve:filter", "f_priority": "high"})
    assert r.status_code == 422 and 'aria-invalid="true"' in r.text and "high-priority alarm needs a note" in r.text
    r = client.post("/alarms/bulk", data={"csrf_token": csrf, "op": "acknowledge:selected", "ids": [ids[0]]})
    assert r.status_code == 303 and r.headers["location"] == "/alarms?done=bulk_acknowledged"
    assert server.store.alarm(ids[0])["acknowledged_by"] == "dex" and server.store.alarm(ids[1])["acknowledged_by"] is None
    r = client.post("/alarms/bulk", data={"csrf_token": csrf, "op": "resolve:filter", "f_priority": "high",
                                          "note": "Gate checked by the guard"})
    assert r.status_code == 303 and server.store.open_alarms() == []
    page = client.get("/alarms").text
    assert "Gate checked by the guard" in page[page.index('id="history-heading"'):]


def test_an_alarm_row_shows_its_priority_in_words_the_door_state_and_a_timeline(
        app: FastAPI, client: TestClient, server: Server, clock: FakeClock) -> None:
    forced = raise_(server, clock, "forced_open", 1)
    service(server, clock).acknowledge(forced, "dex")
    form_login(client, "dex", PASSWORDS["dex"])
    page = client.get("/alarms").text
    row = page[page.index(f'id="alarm-{forced}"'):]
    row = row[:row.index("</tr>")]
    assert "High priority" in row and "Door now:" in row
    assert re.search(r"raised</li>.*acknowledged by dex", row, re.S)


# ------------------------------------------------------------------ escalation


def test_an_unacknowledged_high_alarm_escalates_after_its_time_by_the_clock(server: Server, clock: FakeClock) -> None:
    alarms = service(server, clock)
    forced = raise_(server, clock, "forced_open", 1)
    seen = raise_(server, clock, "tamper", 2)
    low = raise_(server, clock, "relay_stuck", 3)
    alarms.acknowledge(seen, "dex")
    clock.advance(117)  # 118 s since the forced door: not yet
    assert alarms.escalate_due() == [] and server.store.alarm(forced)["escalated_at"] is None
    clock.advance(2)
    assert [a.id for a in alarms.escalate_due()] == [forced]
    assert server.store.alarm(forced)["escalated_at"] == clock.wall()
    assert server.store.alarm(seen)["escalated_at"] is None  # acknowledged in time
    clock.advance(10_000)
    assert alarms.escalate_due() == []  # once only; a low alarm never escalates by default
    assert server.store.alarm(low)["escalated_at"] is None
    [record] = audit_of(server, "alarm.escalate")
    assert record["actor"] == "doorkeep" and record["target"] == forced and record["details"]["priority"] == "high"
    assert alarms.summary().escalated_ids == (forced,)
    alarms.acknowledge(forced, "dex")
    assert alarms.summary().escalated == 0


def test_a_site_sets_its_own_escalation_time_and_priority(server: Server, clock: FakeClock) -> None:
    alarms = service(server, clock, AlarmSettings(priority={"relay_stuck": "high"}, escalate_after_s={"high": 10}))
    stuck = raise_(server, clock, "relay_stuck", 1)
    clock.advance(10)
    assert [a.id for a in alarms.escalate_due()] == [stuck]
    assert alarms.get(stuck).priority == "high"


def test_a_recurring_alarm_forgets_its_escalation_with_its_acknowledgement(server: Server, clock: FakeClock) -> None:
    alarms = service(server, clock, AlarmSettings(escalate_after_s={"medium": 5}))
    key = "device_offline:pi-lobby"
    alarm_id, _ = server.store.raise_alarm("device_offline", key=key, at=clock.wall(), device="pi-lobby")
    clock.advance(5)
    assert [a.id for a in alarms.escalate_due()] == [alarm_id]
    server.store.clear_alarm(key, clock.wall())
    clock.advance(1)
    server.store.raise_alarm("device_offline", key=key, at=clock.wall(), device="pi-lobby")
    assert server.store.alarm(alarm_id)["escalated_at"] is None
    clock.advance(5)
    assert [a.id for a in alarms.escalate_due()] == [alarm_id]


def test_the_watch_escalates_and_publishes_only_when_the_summary_changes(server: Server, clock: FakeClock) -> None:
    published: list[AlarmSummary] = []
    watch = AlarmWatch(service(server, clock), published.append)
    watch.run_once()
    assert [p.open for p in published] == [0]
    watch.run_once()
    assert len(published) == 1  # nothing changed: nothing sent
    forced = raise_(server, clock, "forced_open", 1)
    watch.run_once()
    assert published[-1].ring == (forced,) and published[-1].unacknowledged_by_priority["high"] == 1
    clock.advance(120)
    watch.run_once()
    assert published[-1].escalated_ids == (forced,) and len(published) == 3


# ------------------------------------------------------------------ counter and sound


def test_the_counter_is_on_every_page_for_desk_roles_and_not_for_an_auditor(app: FastAPI, client: TestClient,
                                                                            server: Server, clock: FakeClock) -> None:
    raise_(server, clock, "forced_open", 1)
    raise_(server, clock, "held_open", 2)
    form_login(client, "dex", PASSWORDS["dex"])
    for path in ("/", "/live", "/doors", "/visitors"):
        page = client.get(path).text
        assert 'id="alarm-counter"' in page, path
        counter = page[page.index('id="alarm-counter"'):page.index('id="alarm-announce"')]
        assert re.search(r'High <span data-count>1</span>', counter) and "2</span> unacknowledged" in counter
    summary = client.get("/api/v1/alarms/summary").json()
    assert summary["by_priority"] == {"high": 1, "medium": 1, "low": 0} and summary["sound"] is True
    other = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    form_login(other, "aud", PASSWORDS["aud"])
    assert 'id="alarm-counter"' not in other.get("/audit").text
    assert other.get("/api/v1/alarms/summary").status_code == 403


def test_the_sound_switch_is_remembered_for_the_operator(app: FastAPI, client: TestClient, server: Server) -> None:
    csrf = api_login(client, "dex")
    r = client.put("/api/v1/me/alarm-sound", json={"on": False}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json() == {"on": False}
    assert client.get("/api/v1/alarms/summary").json()["sound"] is False
    assert server.store.operator_pref("dex", "alarm_sound") == "off"
    assert 'data-sound="off"' in client.get("/live").text
    r = client.post("/alarms/sound", data={"csrf_token": csrf, "on": "on", "back": "/live"})
    assert r.status_code == 303 and r.headers["location"] == "/live"
    r = client.post("/alarms/sound", data={"csrf_token": csrf, "on": "off", "back": "//evil.example"})
    assert r.headers["location"] == "/alarms"  # never an open redirect
    assert client.get("/api/v1/alarms/summary").json()["sound"] is False


def test_the_two_sounds_are_wav_files_and_differ(app: FastAPI, client: TestClient) -> None:
    api_login(client, "dex")
    alarm, escalation = client.get("/sounds/alarm.wav"), client.get("/sounds/escalation.wav")
    for r in (alarm, escalation):
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav" and r.content[:4] == b"RIFF"
    assert alarm.content != escalation.content and tone_wav("alarm") == alarm.content
    assert client.get("/sounds/other.wav").status_code in (404, 422)


# ------------------------------------------------------------------ the live stream


def test_a_new_alarm_reaches_an_alarms_only_stream_as_a_counter_message_and_no_rows(
        app: FastAPI, server: Server, clock: FakeClock, served: str) -> None:
    """The nav's stream (``?only=alarms``): the alarm watch (a desk job, started by the app's lifespan) pushes
    the new summary when woken (an event stored, an operator's action); event rows are not sent on it."""
    hub = app.state.live
    reader = Reader(f"{served}/api/v1/events/stream?only=alarms&after=0", live_token(app, "dex"))
    try:
        assert wait_until(lambda: hub.clients == 1, 5)
        ingest(server, live_event("ev-1", 1))  # a badge: a row for the live feed, not for this stream
        forced = raise_(server, clock, "forced_open", 1)
        app.state.alarm_watch.wake()
        assert wait_until(lambda: any(m[0] == "alarms" and m[2]["ring"] for m in reader.messages), 5), \
            reader.messages
        summary = next(m[2] for m in reader.messages if m[0] == "alarms" and m[2]["ring"])
        assert summary["ring"] == [forced] and summary["unacknowledged_by_priority"]["high"] == 1
        assert not any(m[0] == "row" for m in reader.messages)
    finally:
        reader.close()
