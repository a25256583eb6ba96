"""Incidents (server/incidents.py, server/store_incidents.py, server/web/incidents.py): opened from alarms and
events, worked (notes, assignment, attachments, close and reopen), every action audited; what an open incident
holds survives retention (the legal hold) until it is closed; the desk's pages and their roles.

Real parts: a real SQLite store and audit log; a real ``Server`` on the demo site for the pages (bus not
started) and FastAPI's TestClient.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path
from typing import Iterator

import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.config import RetentionSettings, load_site_dir
from server.app import Server
from server.audit import AuditLog
from server.incidents import IncidentError, Incidents
from server.retention import DAY_S, run_retention
from server.store import Store
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    app,
    bearer,
    client,
    clock,
    form_login,
    hasher,
    server,
    tokens,
)
from tests.unit.test_desk_api import PASSWORDS
from tests.unit.test_retention import JPEG, KEYS, NOW, add_event, ids

DEMO = Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo"
_BUNDLE = load_site_dir(DEMO)
SITE = dataclasses.replace(_BUNDLE.site, people=_BUNDLE.people)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data", keys=KEYS)
    yield s
    s.close()


def service(store: Store, at: float = NOW) -> Incidents:
    return Incidents(store, FakeClock(wall=at), AuditLog(store, FakeClock(wall=at)), site=lambda: SITE,
                     subject_ref=lambda p: f"ref-{len(p)}")


def audit_actions(store: Store) -> list[tuple[str, str, str | None]]:
    return [(r["actor"], r["action"], r["target"]) for r in reversed(AuditLog(store).records())]


# ------------------------------------------------------------------ service


def test_an_incident_opened_from_an_alarm_holds_its_event_and_every_action_is_audited(store: Store) -> None:
    add_event(store, "forced-1", 1)
    alarm, _ = store.raise_alarm("forced_open", key="forced-1", at=NOW - DAY_S, device="pi-lobby", door="lobby_in",
                                 source_event="forced-1", once=True)
    svc = service(store)
    inc = svc.open("Lobby door forced", "high", "dex", alarms=[alarm], assignee=None, note="guard on the way")
    assert (inc.status, inc.severity, inc.created_by) == ("open", "high", "dex")
    view = svc.view(inc.id, "aud")
    assert [e["id"] for e in view.events] == ["forced-1"] and [a["id"] for a in view.alarms] == [alarm]
    assert [t["what"] for t in view.timeline] == ["opened", "note"]
    svc.add_note(inc.id, "contractor pushed the door", "dex")
    assert svc.assign(inc.id, "dex", "ada") and not svc.assign(inc.id, "dex", "ada")
    assert svc.close(inc.id, "no intrusion; door adjusted", "dex")
    assert svc.get(inc.id).status == "closed" and svc.get(inc.id).closed_by == "dex"
    with pytest.raises(IncidentError, match="reopen it first"):
        svc.add_note(inc.id, "late", "dex")
    assert svc.reopen(inc.id, "ada")
    assert audit_actions(store) == [
        ("dex", "incident.open", f"incident:{inc.id}"), ("aud", "incident.view", f"incident:{inc.id}"),
        ("dex", "incident.note", f"incident:{inc.id}"), ("ada", "incident.assign", f"incident:{inc.id}"),
        ("dex", "incident.close", f"incident:{inc.id}"), ("ada", "incident.reopen", f"incident:{inc.id}")]
    texts = str(AuditLog(store).records())
    assert "contractor" not in texts and "guard on the way" not in texts and "Lobby door forced" not in texts


def test_person_and_door_window_queries_are_resolved_when_read_so_later_events_join(store: Store) -> None:
    svc = service(store)
    inc = svc.open("Tailgating at the lobby", "medium", "dex")
    add_event(store, "alice-in", 2, person="alice")
    add_event(store, "bob-in", 2, person="bob")
    add_event(store, "alice-before", 9, person="alice")
    assert svc.attach_person(inc.id, "alice", NOW - 3 * DAY_S, NOW, "dex")
    assert {e["id"] for e in svc.view(inc.id, None).events} == {"alice-in"}
    assert svc.attach_window(inc.id, ["lobby_in"], NOW - 3 * DAY_S, NOW, "dex")
    assert {e["id"] for e in svc.view(inc.id, None).events} == {"alice-in", "bob-in"}
    add_event(store, "later", 1, person="carol")  # stored after the window was attached: it joins
    assert "later" in {e["id"] for e in svc.view(inc.id, None).events}
    window = [i for i in svc.view(inc.id, None).items if i["kind"] == "window"][0]
    assert svc.detach(inc.id, window["id"], "dex")
    assert {e["id"] for e in svc.view(inc.id, None).events} == {"alice-in"}
    person_audit = [r for r in AuditLog(store).records() if r["action"] == "incident.attach"
                    and r["details"]["kind"] == "person"]
    assert person_audit and "alice" not in str(person_audit)  # a pseudonym, never the id


@pytest.mark.parametrize("call, words", [
    (lambda s, i: s.open("", "high", "dex"), "title is required"),
    (lambda s, i: s.open("x", "urgent", "dex"), "severity must be one of"),
    (lambda s, i: s.open("x", "low", "dex", events=["nope"]), "no event 'nope'"),
    (lambda s, i: s.open("x", "low", "dex", alarms=["nope"]), "no alarm 'nope'"),
    (lambda s, i: s.attach_person(i, "nobody", NOW - 10, NOW, "dex"), "no person 'nobody'"),
    (lambda s, i: s.attach_window(i, ["moon"], NOW - 10, NOW, "dex"), "no door 'moon'"),
    (lambda s, i: s.attach_window(i, [], NOW, NOW - 10, "dex"), "end must be after its start"),
    (lambda s, i: s.attach_window(i, [], NOW - 40 * DAY_S, NOW, "dex"), "at most 31 days"),
    (lambda s, i: s.add_note(i, "   ", "dex"), "note is required"),
    (lambda s, i: s.close(i, "", "dex"), "note is required"),
])
def test_refusals_say_why(store: Store, call, words: str) -> None:  # type: ignore[no-untyped-def]
    svc = service(store)
    inc = svc.open("Investigation", "low", "dex")
    with pytest.raises(IncidentError, match=words):
        call(svc, inc.id)


# ------------------------------------------------------------------ legal hold


def test_legal_hold_keeps_what_an_open_incident_holds_past_retention_until_it_is_closed(store: Store) -> None:
    for eid in ("held-direct", "held-by-alarm", "held-by-window", "held-by-person", "free"):
        add_event(store, eid, 300, person="bob" if eid == "held-by-person" else "alice")
    with store.connection_for_tests() as db:  # move the window's event to another door
        db.conn.execute("UPDATE events SET door = 'lab' WHERE id = 'held-by-window'")
        db.conn.commit()
    alarm, _ = store.raise_alarm("forced_open", key="k", at=NOW - 400 * DAY_S, source_event="held-by-alarm", once=True)
    store.resolve(alarm, "dex", "done", at=NOW - 399 * DAY_S)  # past the alarms' 365 days: only the incident holds it
    svc = service(store)
    inc = svc.open("Old case", "high", "dex", events=["held-direct"], alarms=[alarm])
    at = NOW - 300 * DAY_S
    svc.attach_window(inc.id, ["lab"], at - 3600, at + 3600, "dex")
    svc.attach_person(inc.id, "bob", at - 3600, at + 3600, "dex")

    report = run_retention(store, RetentionSettings(), NOW, None)

    held = {"held-direct", "held-by-alarm", "held-by-window", "held-by-person"}
    assert ids(store, "events") == held and ids(store, "snapshots") == held
    assert ids(store, "alarms") == {alarm}
    assert report.kept_for_incidents == 4 and report.deleted["events"] == 1
    assert any("legal hold" in line for line in report.lines())
    assert store.snapshot_bytes("held-by-window") == JPEG

    svc.close(inc.id, "case closed", "dex")
    run_retention(store, RetentionSettings(), NOW, None)
    assert ids(store, "events") == set() and ids(store, "snapshots") == set() and ids(store, "alarms") == set()


def test_a_dry_run_counts_held_rows_as_kept(store: Store) -> None:
    add_event(store, "held", 300)
    add_event(store, "free", 300)
    service(store).open("Case", "low", "dex", events=["held"])
    report = run_retention(store, RetentionSettings(), NOW, None, dry_run=True)
    assert report.deleted["events"] == 1 and report.deleted["snapshots"] == 1 and report.kept_for_incidents == 1


# ------------------------------------------------------------------ desk pages


def raise_forced(server: Server, clock: FakeClock) -> str:
    from tests.unit.test_desk_live import event, ingest, ingest_snapshot

    ev = event("forced-ev", 7, door="lobby_out", type="forced_open", decision=None, reason=None, person=None,
               credential_hash=None, credential_last4=None, ts=iso_ms(clock.wall() - 5))
    ingest(server, ev)
    ingest_snapshot(server, ev)
    alarm_id, _ = server.store.raise_alarm("forced_open", key="forced-ev", at=clock.wall(), device="pi-lobby",
                                           door="lobby_out", source_event="forced-ev", once=True)
    return alarm_id


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def test_desk_opens_an_incident_from_an_alarm_works_it_and_exports_a_bundle(app: FastAPI, client: TestClient,
                                                                            server: Server, clock: FakeClock) -> None:
    alarm = raise_forced(server, clock)
    assert form_login(client, "dex", PASSWORDS["dex"]).status_code == 303
    alarms_page = client.get("/alarms").text
    assert f'/incidents/new?alarm={alarm}' in alarms_page
    form = client.get(f"/incidents/new?alarm={alarm}")
    assert form.status_code == 200 and "Door forced open at" in form.text and f'value="{alarm}" checked' in form.text
    token = csrf_of(form.text)
    r = client.post("/incidents", data={"csrf_token": token, "title": "Forced lobby exit", "severity": "high",
                                        "assignee": "dex", "alarms": [alarm], "note": "checking cameras"})
    assert r.status_code == 303, r.text
    url = r.headers["location"].split("?")[0]
    page = client.get(url)
    assert page.status_code == 200 and "Forced lobby exit" in page.text and "checking cameras" in page.text
    assert 'data-event="forced-ev"' in page.text and "/api/v1/snapshots/" in page.text
    r = client.post(url + "/notes", data={"csrf_token": token, "note": "seen on camera 2"})
    assert r.status_code == 303
    r = client.post(url + "/attach", data={"csrf_token": token, "kind": "window", "doors": ["lab"],
                                           "since": "2026-01-01T08:00", "until": "2026-01-01T09:00"})
    assert r.status_code == 303 and r.headers["location"].endswith("done=attached")
    bad = client.post(url + "/attach", data={"csrf_token": token, "kind": "person", "person": "alice",
                                             "since": "yesterday", "until": "2026-01-01T09:00"})
    assert bad.status_code == 422 and "not a date and time" in bad.text
    z = client.get(url + "/evidence.zip")
    assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
    assert z.content[:2] == b"PK"
    actions = [r["action"] for r in server.audit.records()]  # type: ignore[union-attr]
    assert {"incident.open", "incident.view", "incident.note", "incident.attach", "incident.export"} <= set(actions)
    again = client.get(f"/incidents/new?alarm={alarm}").text
    assert f'<a href="{url}">incident #' in again  # already held: the form says where
    r = client.post(url + "/attach", data={"csrf_token": token, "kind": "person", "person": "alice archer",
                                           "since": "2026-01-01T08:00", "until": "2026-01-01T09:00"})
    assert r.status_code == 303  # a name typed into the picker, any case, is the person
    assert client.post(url + "/close", data={"csrf_token": token, "note": ""}).status_code == 422
    assert client.post(url + "/close", data={"csrf_token": token, "note": "resolved"}).status_code == 303
    assert "closed" in client.get("/incidents?status=closed").text


def test_roles_an_auditor_reads_without_snapshots_and_cannot_work_or_export(app: FastAPI, client: TestClient,
                                                                            server: Server, clock: FakeClock) -> None:
    alarm = raise_forced(server, clock)
    toks = tokens(app)
    inc = app.state.incidents.open("Case", "low", "dex", alarms=[alarm])
    aud = bearer(toks["aud"])
    assert client.get("/incidents", headers=aud).status_code == 200
    page = client.get(f"/incidents/{inc.id}", headers=aud)
    assert page.status_code == 200 and "/api/v1/snapshots/" not in page.text and "evidence.zip" not in page.text
    assert client.get(f"/incidents/{inc.id}/evidence.zip", headers=aud).status_code == 403
    assert client.post(f"/incidents/{inc.id}/notes", headers=aud, data={"note": "x"}).status_code == 403
    assert client.get("/incidents/new", headers=aud).status_code == 403
    assert client.get(f"/incidents/{inc.id}", headers=bearer(toks["dex"])).status_code == 200
    assert client.get("/incidents/999", headers=bearer(toks["dex"])).status_code == 404
    assert client.get("/incidents/abc", headers=bearer(toks["dex"])).status_code == 422
    # without the CSRF token, a cookie session changes nothing
    assert form_login(client, "dex", PASSWORDS["dex"]).status_code == 303
    assert client.post(f"/incidents/{inc.id}/notes", data={"note": "x"}).status_code == 403


def test_erasing_a_person_keeps_the_incident_query_under_their_pseudonym(store: Store) -> None:
    svc = service(store)
    inc = svc.open("Tailgating", "medium", "dex")
    add_event(store, "alice-in", 1, person="alice")
    svc.attach_person(inc.id, "alice", NOW - 2 * DAY_S, NOW, "dex")
    store.erase_subject_rows("alice", "ps-alice0", [], lambda d: d, NOW)
    view = svc.view(inc.id, None)
    assert [e["id"] for e in view.events] == ["alice-in"] and view.events[0]["person"] == "ps-alice0"
    with store.connection_for_tests() as db:
        rows = db.conn.execute("SELECT ref FROM incident_items UNION ALL SELECT text FROM incident_log").fetchall()
    assert rows and not any("alice" in str(r[0]).replace("ps-alice0", "") for r in rows)


def test_hostile_input_on_the_incident_routes_gets_a_4xx_never_a_500(app: FastAPI, client: TestClient,
                                                                     server: Server, clock: FakeClock) -> None:
    inc = app.state.incidents.open("Case", "low", "dex")
    desk = bearer(tokens(app)["dex"])
    base = f"/incidents/{inc.id}"
    cases = [
        ("GET", "/incidents?before=99999999999999999999999", None),
        ("GET", "/incidents?status=everything", None),
        ("GET", "/incidents/0", None),
        ("GET", "/incidents/99999999999999999999999", None),
        ("POST", "/incidents", {"title": "t" * 5000, "severity": "high"}),
        ("POST", "/incidents", {"title": "ok", "severity": "x" * 30}),
        ("POST", "/incidents", {"title": "ok", "severity": "high", "alarms": ["../../etc"]}),
        ("POST", "/incidents", {"title": "ok", "severity": "high", "assignee": "mallory"}),
        ("POST", base + "/attach", {"kind": "sql"}),
        ("POST", base + "/attach", {"kind": "window", "since": "2026-13-45T99:99", "until": "x"}),
        ("POST", base + "/attach", {"kind": "window", "doors": ["lab"], "since": "2026-01-01T10:00+05:00",
                                    "until": "2026-01-01T11:00"}),
        ("POST", base + "/attach", {"kind": "event", "ref": "\x00" * 10}),
        ("POST", base + "/items/99999999999999999999/detach", {}),
        ("POST", base + "/notes", {"note": "n" * 10_000}),
        ("POST", base + "/assign", {"assignee": "aud"}),  # an auditor cannot work an incident
    ]
    for method, path, data in cases:
        r = client.request(method, path, headers=desk, data=data)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text[:300])
    assert app.state.incidents.view(inc.id, None).items == []
    r = client.get("/incidents/new?alarm=" + "x" * 5000, headers=desk)  # an id no alarm can have: ignored
    assert r.status_code == 200 and "What it holds" not in r.text
