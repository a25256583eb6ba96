"""The site model over HTTP (server/web/site.py): a change is a new revision live in the server's decisions at
once, a stale edit of the same thing answers 409 naming who changed it, a broken rule answers 422 with the
config-check message, a rollback is a new revision. Real server on the demo site, real store, TestClient."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.app import Server
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    app,
    bearer,
    client,
    clock,
    hasher,
    server,
    tokens,
)


def test_an_admin_change_is_a_revision_live_in_decisions_at_once(app: FastAPI, client: TestClient,
                                                                 server: Server) -> None:
    t = tokens(app)
    assert server.site.doors["lab"].unlock_s == 4
    r = client.post("/api/v1/site/changes", headers=bearer(t["ada"]),
                    json={"base": 1, "edits": {"doors.lab.unlock_s": 7}, "summary": "slower lab door"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["number"], body["actor"], body["summary"]) == (2, "desk:ada", "slower lab door")
    assert body["changes"] == ["~ doors.lab.unlock_s: 4 -> 7"]
    assert server.site.doors["lab"].unlock_s == 7
    listed = client.get("/api/v1/site/revisions", headers=bearer(t["aud"])).json()
    assert listed["current"] == 2 and [r["number"] for r in listed["revisions"]] == [2, 1]
    one = client.get("/api/v1/site/revisions/2", headers=bearer(t["aud"])).json()
    assert "unlock_s = 7" in one["site_toml"]


def test_a_stale_edit_of_the_same_door_answers_409_naming_who_changed_it(app: FastAPI, client: TestClient,
                                                                          server: Server) -> None:
    t = tokens(app)
    assert client.post("/api/v1/site/changes", headers=bearer(t["ada"]),
                       json={"base": 1, "edits": {"doors.lab.unlock_s": 7}}).status_code == 200
    r = client.post("/api/v1/site/changes", headers=bearer(t["ada"]),
                    json={"base": 1, "edits": {"doors.lab.unlock_s": 2}})
    assert r.status_code == 409
    detail = r.json()["detail"]
    assert detail["clashing"] == ["doors.lab"] and detail["since"][0]["actor"] == "desk:ada"
    assert server.site.doors["lab"].unlock_s == 7


def test_a_change_that_breaks_a_rule_answers_422_and_changes_nothing(app: FastAPI, client: TestClient,
                                                                      server: Server) -> None:
    t = tokens(app)
    r = client.post("/api/v1/site/changes", headers=bearer(t["ada"]),
                    json={"base": 1, "edits": {"access_levels.staff.entries": [{"area": "attic", "schedule": "always"}]}})
    assert r.status_code == 422
    [problem] = r.json()["detail"]
    assert problem["file"].endswith("site.toml") and "attic" in problem["problem"] + problem["key"]
    assert server.siteadmin is not None and server.siteadmin.current().number == 1  # type: ignore[union-attr]
    bad_key = client.post("/api/v1/site/changes", headers=bearer(t["ada"]),
                          json={"base": 1, "edits": {"doors..lab": 1}})
    assert bad_key.status_code == 422


def test_rollback_is_a_new_revision_and_only_an_admin_may_change_the_site(app: FastAPI, client: TestClient,
                                                                         server: Server) -> None:
    t = tokens(app)
    client.post("/api/v1/site/changes", headers=bearer(t["ada"]), json={"base": 1, "edits": {"doors.lab.unlock_s": 7}})
    for who in ("dex", "aud"):
        assert client.post("/api/v1/site/changes", headers=bearer(t[who]),
                           json={"base": 2, "edits": {"doors.lab.unlock_s": 1}}).status_code == 403
    assert client.get("/api/v1/site/revisions", headers=bearer(t["dex"])).status_code == 403
    stale = client.post("/api/v1/site/revisions/1/rollback", headers=bearer(t["ada"]), json={"base": 1})
    assert stale.status_code == 409
    r = client.post("/api/v1/site/revisions/1/rollback", headers=bearer(t["ada"]), json={"base": 2})
    assert r.status_code == 200 and (r.json()["number"], r.json()["rollback_of"]) == (3, 1)
    assert server.site.doors["lab"].unlock_s == 4
    assert client.get("/api/v1/site/revisions/99", headers=bearer(t["ada"])).status_code == 404


def test_values_toml_cannot_hold_and_out_of_range_numbers_are_refused_not_a_500(app: FastAPI, client: TestClient,
                                                                                 server: Server) -> None:
    t = tokens(app)
    for body in ({"base": 2**70, "edits": {"doors.lab.unlock_s": 7}},
                 {"base": 1, "edits": {"doors.lab.unlock_s": [1, None]}},
                 {"base": 1, "edits": {"doors.lab.unlock_s": 2**70}}):
        r = client.post("/api/v1/site/changes", headers=bearer(t["ada"]), json=body)
        assert r.status_code == 422, (body, r.text)
    assert client.get(f"/api/v1/site/revisions/{2**70}", headers=bearer(t["ada"])).status_code == 422
    assert server.siteadmin is not None and server.siteadmin.current().number == 1  # type: ignore[union-attr]


def test_retention_and_intrusion_settings_of_a_revision_are_live_without_a_restart(app: FastAPI, client: TestClient,
                                                                                   server: Server) -> None:
    t = tokens(app)
    assert server.retention is not None and server.intrusion is not None
    assert (server.retention.settings.events_days, server.intrusion.settings.probe_count) == (180, 5)
    r = client.post("/api/v1/site/changes", headers=bearer(t["ada"]),
                    json={"base": 1, "edits": {"retention.events_days": 90, "intrusion.probe_count": 3}})
    assert r.status_code == 200, r.text
    assert server.retention.settings.events_days == 90
    assert server.intrusion.settings.probe_count == 3
