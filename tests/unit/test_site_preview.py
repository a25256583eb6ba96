"""The impact preview of a running server (server/site_preview.py, POST /api/v1/site/preview, /site/preview): a
proposed change is judged on the badges the store recorded, by the conflict and validation rules of a real change,
and nothing is committed. Real server on the demo site, real SQLite store, TestClient."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.contract import EventMsg
from doorkeep.decision import AccessRequest
from server.app import Server
from server.site_preview import PreviewRefused, preview_change
from server.siteadmin import SiteConflict, SiteInvalid
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    app,
    bearer,
    client,
    clock,
    hasher,
    server,
    tokens,
)

ALICE, BOB, CHEN = ("em4100", "0F00A1B2C3"), ("em4100", "0F00B0B0B0"), ("em4100", "0F00C4C4C4")
#: The lab level moved off floor 7: the lab door is taken out of it (its holders keep the lobby through staff).
LAB_OFF_FLOOR7 = {"access_levels.lab.entries": [{"area": "lobby", "schedule": "business_hours"}]}
DAY = 86400.0


def record(server: Server, clock: FakeClock, badges: list[tuple[float, str, tuple[str, str]]]) -> None:
    """Badges decided by the running server at ``now - ago`` and stored as the bus stores an edge's event."""
    now = clock.wall()
    events = []
    try:
        for i, (ago, door, card) in enumerate(badges):
            clock.set_wall(now - ago)
            cred = server.directory.card(*card)
            d = server.directory.decide(AccessRequest(door, cred))
            events.append((EventMsg(id=f"ev{i}", seq=i, ts=iso_ms(now - ago), device="pi-test", door=door,
                                    type="access", decision="granted" if d.granted else "denied",
                                    reason=d.reason.value, decided_by="server", person=d.person,
                                    credential_hash=cred), now - ago))
    finally:
        clock.set_wall(now)
    server.store.ingest_events(events)


@pytest.fixture
def recorded(server: Server, clock: FakeClock) -> Server:
    """Yesterday's business hours (the demo's clock: a Friday 08:00 in London): alice, bob and chen at the lobby
    and the lab; a lab badge of alice 40 days ago, outside a 30-day preview, and one stamped ten minutes from
    now (stored while a replay runs, or by an edge whose clock is ahead), after the replayed period."""
    record(server, clock, [(40 * DAY - 2 * 3600, "lab", ALICE)]
           + [(DAY - 2 * 3600 + 60 * i, "lobby_in", c) for i, c in enumerate((ALICE, BOB, CHEN))]
           + [(DAY - 3600 + 60 * i, "lab", c) for i, c in enumerate((ALICE, BOB, CHEN))]
           + [(-600, "lab", CHEN)])
    return server


def test_a_door_taken_out_of_a_level_flips_its_holders_grants_to_no_access_and_nothing_is_committed(
        recorded: Server) -> None:
    server = recorded
    assert server.siteadmin is not None
    audit_before = len(server.store.rows("audit_log"))
    p = preview_change(server, LAB_OFF_FLOOR7, base=1, days=30)

    r = p.report
    assert (p.base, p.revision, p.days) == (1, 1, 30)
    assert r.attempts == 6, "the badge 40 days ago and the one after now are outside the period"
    assert r.judged == 6 and r.honesty.same_reason == 6, "the live site's replay reproduces the record"
    [flip] = r.to_refused.values()
    assert (flip.before, flip.after, flip.count) == ("granted", "no_access", 2)
    assert {e.person for e in flip.examples} == {"alice", "chen"} and {e.door for e in flip.examples} == {"lab"}
    assert set(r.people) == {"alice", "chen"}, "bob was refused at the lab before and after; lobby grants stay"
    assert r.to_granted == {} and r.granted_before - r.granted_after == 2
    assert p.names == {"alice": "Alice Archer", "chen": "Chen Cho"}
    assert any(line.startswith("~ access_levels.lab.entries") for line in p.changes), p.changes
    body = p.to_dict()
    assert body["grants_to_refusals"] == 2 and body["to_refused"][0]["count"] == 2

    # Nothing committed: no revision, no audit record, the live site unchanged.
    assert server.siteadmin.current().number == 1  # type: ignore[union-attr]
    assert len(server.store.rows("audit_log")) == audit_before
    assert [e.area for e in server.site.access_levels["lab"].entries] == ["floor7"]


def test_the_preview_refuses_what_a_change_would_refuse(recorded: Server) -> None:
    server = recorded
    assert server.siteadmin is not None
    server.siteadmin.change({"access_levels.lab.name": "Lab team"}, base=1, actor="desk:other")
    with pytest.raises(SiteConflict, match="desk:other"):
        preview_change(server, LAB_OFF_FLOOR7, base=1)  # stale, and the same level changed since
    rebased = preview_change(server, {"doors.lab.unlock_s": 9}, base=1)
    assert (rebased.base, rebased.revision) == (1, 2), "nothing it touches changed since: re-based"
    assert rebased.report.to_refused == {} and rebased.report.judged == 6
    with pytest.raises(SiteInvalid, match="attic"):
        preview_change(server, {"access_levels.lab.entries": [{"area": "attic", "schedule": "always"}]}, base=2)
    for days in (0, 367):
        with pytest.raises(PreviewRefused, match="1 to 366"):
            preview_change(server, LAB_OFF_FLOOR7, base=2, days=days)
    assert server.siteadmin.current().number == 2  # type: ignore[union-attr]


def test_the_api_answers_the_preview_as_json_with_the_409_and_422_of_changes_for_admins_only(
        app: FastAPI, client: TestClient, recorded: Server) -> None:
    t = tokens(app)
    url = "/api/v1/site/preview"
    r = client.post(url, headers=bearer(t["ada"]), json={"base": 1, "edits": LAB_OFF_FLOOR7, "days": 30})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["attempts"], body["grants_to_refusals"], body["refusals_to_grants"]) == (6, 2, 0)
    assert body["to_refused"][0]["before"] == "granted" and body["to_refused"][0]["after"] == "no_access"
    assert set(body["people"]) == {"alice", "chen"} and body["names"]["alice"] == "Alice Archer"
    assert body["revision"] == 1 and body["changes"]

    assert client.post("/api/v1/site/changes", headers=bearer(t["ada"]),
                       json={"base": 1, "edits": {"access_levels.lab.name": "Lab team"}}).status_code == 200
    stale = client.post(url, headers=bearer(t["ada"]), json={"base": 1, "edits": LAB_OFF_FLOOR7})
    assert stale.status_code == 409 and stale.json()["detail"]["clashing"] == ["access_levels.lab"]
    invalid = client.post(url, headers=bearer(t["ada"]), json={
        "base": 2, "edits": {"access_levels.lab.entries": [{"area": "attic", "schedule": "always"}]}})
    assert invalid.status_code == 422 and "attic" in str(invalid.json()["detail"])
    for bad in ({"base": 2, "edits": LAB_OFF_FLOOR7, "days": 400}, {"base": 2, "edits": {"doors..lab": 1}}):
        assert client.post(url, headers=bearer(t["ada"]), json=bad).status_code == 422, bad
    for who in ("dex", "aud"):
        assert client.post(url, headers=bearer(t[who]), json={"base": 2, "edits": LAB_OFF_FLOOR7}).status_code == 403
    assert recorded.siteadmin is not None and recorded.siteadmin.current().number == 2  # type: ignore[union-attr]


def test_the_desk_page_renders_the_preview_partial_and_keeps_the_input_on_an_error(
        app: FastAPI, client: TestClient, recorded: Server) -> None:
    t = tokens(app)
    page = client.get("/site/preview", headers=bearer(t["ada"]))
    assert page.status_code == 200 and 'name="base"' in page.text and 'value="1"' in page.text
    assert 'href="/site/preview"' in client.get("/site", headers=bearer(t["ada"])).text
    import json

    edits = json.dumps(LAB_OFF_FLOOR7)
    r = client.post("/site/preview", headers=bearer(t["ada"]), data={"edits": edits, "base": "1", "days": "30"})
    assert r.status_code == 200, r.text
    assert "<caption>Decisions that would change, by reason</caption>" in r.text
    assert 'data-before="granted" data-after="no_access"' in r.text
    assert "Alice Archer (alice)" in r.text and "Chen Cho (chen)" in r.text and "Floor 7 lab" in r.text
    assert '<th scope="col">Grants lost</th>' in r.text

    broken = client.post("/site/preview", headers=bearer(t["ada"]), data={"edits": "{not json", "base": "1", "days": "30"})
    assert broken.status_code == 422 and "not JSON" in broken.text and "{not json</textarea>" in broken.text
    invalid = client.post("/site/preview", headers=bearer(t["ada"]), data={
        "edits": json.dumps({"access_levels.lab.entries": [{"area": "attic", "schedule": "always"}]}),
        "base": "1", "days": "30"})
    assert invalid.status_code == 422 and 'role="alert"' in invalid.text and "attic" in invalid.text
    for who in ("dex", "aud"):
        assert client.get("/site/preview", headers=bearer(t[who])).status_code == 403
    assert recorded.siteadmin is not None and recorded.siteadmin.current().number == 1  # type: ignore[union-attr]
