"""A pass reported lost at the desk, end to end: the desk's API (server/web/badge.py) ends the pass and issues
a new one → a new signed policy reaches the lobby edge → the old pass, shown to the lobby camera, is refused
with its reason (``credential_inactive``: the credential is ``lost``), and the new pass opens the door."""

from __future__ import annotations

import warnings

import pytest
from argon2 import PasswordHasher

from server.web.app import create_app
from simulators.site import SiteRunner
from tests.e2e.test_visitor_pass import Accesses, lobby_policy, show, site, visit  # noqa: F401 - fixture

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.e2e

VID = "v-1057e55a11"


def test_a_pass_reported_lost_at_the_desk_is_refused_at_the_door_and_the_new_one_opens(
        site: SiteRunner) -> None:  # noqa: F811
    assert site.server is not None
    accesses = Accesses(site)
    old = visit(site, VID, escort=False)
    ev = show(site, accesses, old, 1)
    assert (ev.decision, ev.person) == ("granted", VID), ev
    site.advance(6.0)  # the door relocks

    app = create_app(site.server, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    app.state.desk.operators.add("dex", "desk", "dex staple paper clip", actor="test")
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/api/v1/session", json={"name": "dex", "password": "dex staple paper clip"})
    csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
    r = client.post(f"/api/v1/visitors/{VID}/pass/lost", headers=csrf)
    assert r.status_code == 200, r.text
    assert r.json()["ended"] == 1 and r.json()["new_pass"]["serial"] == 2
    new = r.json()["new_pass"]["token"]
    assert lobby_policy(site)  # the edge holds the policy that knows the pass is lost

    ev = show(site, accesses, old, 2)
    assert (ev.decision, ev.reason) == ("denied", "credential_inactive"), ev
    lost = site.server.passes.rows(VID)[0]
    assert lost["state"] == "lost" and site.server.directory.site.credentials[lost["hash"]].state.value == "lost"
    assert not site.doors["lobby_in"].door.relay_energised

    ev = show(site, accesses, new, 3)
    assert (ev.decision, ev.reason, ev.person) == ("granted", "granted", VID), ev
    assert any(a["action"] == "visitor.pass_lost" and a["actor"] == "dex" for a in site.server.audit.records())
