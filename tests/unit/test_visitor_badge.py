"""The printed visitor badge page and the desk's pass actions (server/web/badge.py, server/passes.py ``current``,
``report_lost``): roles, hostile input, the audit trail, the pass kept (never silently replaced) across badge
prints and a resent invitation, a lost pass refused by the server's own decision.

Real parts: a ``Server`` bootstrapped on the demo site with a real SQLite store and a real pass key, real
decisions through ``Directory.decide``, the real mail queue (its relay down: queuing never waits on it),
FastAPI's TestClient, a fake clock.
"""

from __future__ import annotations

import json
import secrets
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, SmtpSettings, load_site_dir
from doorkeep.decision import AccessRequest
from doorkeep.envelope import SnapshotKeys
from server.app import Server, bootstrap
from server.mail import MailQueue
from server.passes import PassError, PassKeys
from server.web.app import create_app

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
PASSWORDS = {"ada": "ada correct horse battery", "dex": "dex staple paper clip", "aud": "aud audit trail rules"}
ROLES = {"ada": "admin", "dex": "desk", "aud": "auditor"}
MONDAY_9 = 1_796_029_200.0  # 2026-11-30 09:00 Europe/London


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=MONDAY_9)


def make_server(tmp_path: Path, clock: FakeClock, *, passes: bool = True, mail: bool = True) -> Server:
    srv = bootstrap(load_site_dir(DEMO), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate(), clock=clock,
                    pass_keys=PassKeys(Ed25519PrivateKey.generate()) if passes else None)
    if not passes:
        srv.passes.keys = None
    if mail:  # a relay that is down: the queue takes the message and the desk never waits on the relay
        srv.mail = MailQueue(srv.store, SmtpSettings(host="127.0.0.1", port=1, security="none",
                                                     from_addr="Demo HQ <desk@example.com>"), clock)
    return srv


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = make_server(tmp_path, clock)
    yield srv
    srv.store.close()


def make_app(server: Server, clock: FakeClock) -> FastAPI:
    app = create_app(server, clock=clock, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    for name, role in ROLES.items():
        app.state.desk.operators.add(name, role, PASSWORDS[name], actor="test")
    return app


@pytest.fixture
def client(server: Server, clock: FakeClock) -> TestClient:
    return TestClient(make_app(server, clock), raise_server_exceptions=False, follow_redirects=False)


def login(client: TestClient, name: str) -> dict[str, str]:
    r = client.post("/api/v1/session", json={"name": name, "password": PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return {"X-CSRF-Token": r.json()["csrf_token"]}


def register(client: TestClient, csrf: dict[str, str], **overrides: Any) -> str:
    body = {"name": "Grace Hopper", "company": "Navy Labs", "email": "grace@example.org", "host": "alice",
            "valid_from": "2026-11-30T08:30:00", "valid_until": "2026-11-30T17:00:00", "allowed_areas": ["lobby"],
            "escort_required": False}
    body.update(overrides)
    r = client.post("/api/v1/visitors", json=body, headers=csrf)
    assert r.status_code == 201, r.text
    return str(r.json()["visitor"]["id"])


def check_in(server: Server, vid: str) -> None:
    """Checked in as the directory does it (the desk's consent and agreement rules are tested elsewhere)."""
    server.directory.check_in(vid, actor="test")


def actions(server: Server) -> list[dict[str, Any]]:
    assert server.audit is not None
    return list(reversed(server.audit.records()))


def decide(server: Server, credential_hash: str) -> Any:
    return server.directory.decide(AccessRequest("lobby_in", credential_hash))


def test_the_badge_page_prints_name_company_host_until_and_the_pass_it_keeps(client: TestClient,
                                                                             server: Server) -> None:
    csrf = login(client, "dex")
    vid = register(client, csrf)
    invited = server.passes.current(vid)
    assert invited is not None  # the invitation issued the pass at registration
    check_in(server, vid)
    r = client.get(f"/visitors/{vid}/badge")
    assert r.status_code == 200, r.text
    html = r.text
    for text in ("Grace Hopper", "Navy Labs", "Alice", "2026-11-30 17:00", "/static/badge.css",
                 'class="badge badge-card"', '<svg role="img" aria-label="Visitor pass QR code"'):
        assert text in html, text
    assert "data:image/jpeg" not in html  # no photo was taken
    # The same pass as the invitation's: printing never voids the QR the visitor already holds.
    assert server.passes.current(vid).token == invited.token
    assert [r["serial"] for r in server.passes.rows(vid)] == [1]
    rec = next(a for a in actions(server) if a["action"] == "visitor.badge_printed")
    assert rec["actor"] == "dex" and vid not in json.dumps(rec)  # a pseudonym, never the visit id or name
    details = rec["details"] if isinstance(rec["details"], dict) else json.loads(rec["details"])
    assert details["size"] == "card" and details["serial"] == 1 and details["photo"] is False
    r = client.get(f"/visitors/{vid}/badge?size=label62")
    assert r.status_code == 200 and 'class="badge badge-label62"' in r.text and "62 × 100 mm" in r.text


def test_current_pass_is_the_issued_text_and_a_walk_in_gets_one_at_check_in(client: TestClient,
                                                                           server: Server) -> None:
    csrf = login(client, "dex")
    vid = register(client, csrf, email="")  # no address: no invitation, so no pass yet
    assert server.passes.current(vid) is None
    issued = server.passes.issue_pass(vid, actor="test")
    assert server.passes.current(vid).token == issued.token  # Ed25519 is deterministic: the row re-signs
    walk_in = register(client, csrf, name="Walk In", email="")
    from server.web.visitors import load_notice
    r = client.post(f"/api/v1/visitors/{walk_in}/check-in", headers=csrf,
                    json={"notice_version": load_notice().version, "consent": True, "photo_consent": False})
    if r.status_code == 200:  # the desk's check-in issues the pass (unless agreements are required first)
        assert server.passes.current(walk_in) is not None


def test_badge_roles_hostile_input_and_state(client: TestClient, server: Server) -> None:
    csrf = login(client, "ada")
    vid = register(client, csrf)
    r = client.get(f"/visitors/{vid}/badge")
    assert r.status_code == 409 and "not checked in" in r.text  # printed at check-in, not before
    check_in(server, vid)
    r = client.get(f"/visitors/{vid}/badge?size=%3Cb%3Ex%22")
    assert r.status_code == 422 and "card or label62" in r.text
    assert "<b>x" not in r.text and "&lt;b&gt;x" in r.text  # shown escaped, never as markup
    assert client.get(f"/visitors/{vid}/badge?size=" + "x" * 500).status_code == 422
    assert client.get("/visitors/v-00000000deadbeef/badge").status_code == 404
    assert client.get("/visitors/..%2Fetc/badge").status_code in (404, 422)
    assert client.get("/api/v1/visitors/v-%3Cscript%3E/pass").status_code == 422
    client.delete("/api/v1/session", headers=csrf)
    login(client, "aud")
    assert client.get(f"/visitors/{vid}/badge").status_code == 403
    assert client.get(f"/api/v1/visitors/{vid}/pass").status_code == 403
    client.cookies.clear()
    assert client.get(f"/api/v1/visitors/{vid}/pass").status_code == 401
    assert client.get(f"/visitors/{vid}/badge").status_code in (302, 303)


def test_show_pass_and_report_lost_the_old_pass_is_refused_as_lost_the_new_one_opens(client: TestClient,
                                                                                     server: Server) -> None:
    csrf = login(client, "dex")
    vid = register(client, csrf)
    check_in(server, vid)
    r = client.get(f"/api/v1/visitors/{vid}/pass")
    assert r.status_code == 200, r.text
    old = r.json()
    assert old["serial"] == 1 and old["valid_until"].startswith("2026-11-30T17:00")
    old_hash = server.passes.read(old["token"]).credential_hash
    assert decide(server, old_hash).reason.value == "granted"
    assert any(a["action"] == "visitor.pass_shown" and a["actor"] == "dex" for a in actions(server))

    assert client.post(f"/api/v1/visitors/{vid}/pass/lost").status_code == 403  # a cookie session needs CSRF
    r = client.post(f"/api/v1/visitors/{vid}/pass/lost", headers=csrf)
    assert r.status_code == 200, r.text
    assert r.json()["ended"] == 1 and r.json()["new_pass"]["serial"] == 2
    new = r.json()["new_pass"]["token"]
    assert new != old["token"]
    with pytest.raises(PassError, match="lost"):
        server.passes.read(old["token"])
    refused = decide(server, old_hash)
    assert refused.reason.value == "credential_inactive"
    assert server.directory.site.credentials[old_hash].state.value == "lost"
    assert decide(server, server.passes.read(new).credential_hash).reason.value == "granted"
    assert {"visitor.pass_lost", "visitor.pass_issue"} <= {a["action"] for a in actions(server) if a["actor"] == "dex"}

    # the page: the QR and the text, and the same action as a form with the CSRF field
    page = client.get(f"/visitors/{vid}/pass")
    assert page.status_code == 200 and new in page.text and "Report pass lost" in page.text
    assert 'action="/visitors/%s/pass/lost"' % vid in page.text
    r = client.post(f"/visitors/{vid}/pass/lost", data={})
    assert r.status_code == 403  # no CSRF field
    token_field = page.text.split('name="csrf_token" value="')[1].split('"')[0] if 'name="csrf_token"' in page.text \
        else None
    if token_field is not None:
        r = client.post(f"/visitors/{vid}/pass/lost", data={"csrf_token": token_field})
        assert r.status_code == 200 and "refused at every door" in r.text
        assert [row["serial"] for row in server.passes.rows(vid)] == [1, 2, 3]

    # after check-out no pass can be re-issued: a clear 409, never a 500
    server.directory.check_out(vid, revoke_badge=True)
    r = client.post(f"/api/v1/visitors/{vid}/pass/lost", headers=csrf)
    assert r.status_code == 409 and "ended" in r.json()["error"]
    assert client.post("/api/v1/visitors/v-00000000deadbeef/pass/lost", headers=csrf).status_code == 404


def test_resend_invitation_carries_the_same_pass_and_refuses_without_address_or_relay(
        tmp_path: Path, client: TestClient, server: Server, clock: FakeClock) -> None:
    csrf = login(client, "dex")
    vid = register(client, csrf)
    token = server.passes.current(vid).token
    before = server.store.mail_records(about=vid, kind="invitation", limit=10)
    r = client.post(f"/api/v1/visitors/{vid}/invitation/resend", headers=csrf)
    assert r.status_code == 200, r.text
    after = server.store.mail_records(about=vid, kind="invitation", limit=10)
    assert len(after) == len(before) + 1 and r.json()["recipient"] == "grace@example.org"
    assert server.passes.current(vid).token == token  # the pass in the first invitation still opens
    assert any(a["action"] == "visitor.invitation_resent" for a in actions(server))
    assert "queued" in client.get("/visitors").text  # the visitor row shows the invitation's state

    no_mail = register(client, csrf, email="", name="Ada Lovelace")
    r = client.post(f"/api/v1/visitors/{no_mail}/invitation/resend", headers=csrf)
    assert r.status_code == 409 and "no e-mail address" in r.json()["error"]

    bare = make_server(tmp_path / "bare", clock, passes=False, mail=False)
    try:
        c2 = TestClient(make_app(bare, clock), raise_server_exceptions=False, follow_redirects=False)
        csrf2 = login(c2, "dex")
        v2 = register(c2, csrf2)
        r = c2.post(f"/api/v1/visitors/{v2}/invitation/resend", headers=csrf2)
        assert r.status_code == 409 and "no [smtp] relay" in r.json()["error"]
        assert c2.get(f"/api/v1/visitors/{v2}/pass").status_code == 409
        check_in(bare, v2)
        page = c2.get(f"/visitors/{v2}/badge")  # no pass key: the badge prints without a QR, and says why
        assert page.status_code == 200 and "issues no visitor passes" in page.text and "<svg" not in page.text
    finally:
        bare.store.close()


def test_a_pass_under_a_retired_key_is_replaced_at_the_next_print_and_an_ended_visit_shows_none(
        client: TestClient, server: Server) -> None:
    csrf = login(client, "dex")
    vid = register(client, csrf)
    first = server.passes.current(vid)
    check_in(server, vid)
    old_key = server.passes.keys
    server.passes.keys = PassKeys(Ed25519PrivateKey.generate(), (old_key.signing.public_key(),))  # a rotation
    assert server.passes.current(vid) is None  # cannot be re-signed under the new key: never a forged copy
    assert client.get(f"/visitors/{vid}/badge").status_code == 200
    now = server.passes.current(vid)
    assert now is not None and now.claims.serial == 2 and now.token != first.token
    assert [r["state"] for r in server.passes.rows(vid)] == ["replaced", "active"]

    server.directory.check_out(vid, revoke_badge=True)
    r = client.get(f"/api/v1/visitors/{vid}/pass")
    assert r.status_code == 409 and "ended" in r.json()["error"]
    page = client.get(f"/visitors/{vid}/pass")
    assert page.status_code == 200 and "has ended" in page.text and now.token not in page.text
    assert "Report pass lost" not in page.text and "Print badge" not in page.text


def test_a_cancelled_visit_can_never_be_checked_in_and_the_pass_its_invitation_carried_stops_working(
        client: TestClient, server: Server) -> None:
    csrf = login(client, "dex")
    vid = register(client, csrf)
    mailed = server.passes.issue_pass(vid, actor="system").token  # as the invitation's composer issues it
    assert client.post(f"/api/v1/visitors/{vid}/cancel", headers=csrf, json={"reason": "  "}).status_code == 422
    assert client.post(f"/api/v1/visitors/{vid}/cancel", json={"reason": "no show"}).status_code == 403  # no CSRF

    r = client.post(f"/api/v1/visitors/{vid}/cancel", headers=csrf, json={"reason": "meeting moved to March"})
    assert r.status_code == 200, r.text
    assert (r.json()["hold"]["state"], r.json()["hold"]["stage"]) == ("refused", "cancelled")
    states = [row["state"] for row in server.passes.rows(vid)]
    assert states[-1] == "cancelled" and "active" not in states, states
    with pytest.raises(PassError):
        server.passes.read(mailed)
    assert any(a["action"] == "visitor.cancelled" and a["actor"] == "dex" for a in actions(server))

    r = client.post(f"/api/v1/visitors/{vid}/check-in", headers=csrf,
                    json={"notice_version": "x", "consent": True, "photo_consent": False})
    assert r.status_code == 409, r.text
    assert client.post(f"/api/v1/visitors/{vid}/cancel", headers=csrf, json={"reason": "again"}).status_code == 409
    page = client.get("/visitors")
    assert page.status_code == 200 and "Cancelled" in page.text

    # a visitor already in the building is checked out, not cancelled
    other = register(client, csrf, name="Ada Byron")
    check_in(server, other)
    r = client.post(f"/api/v1/visitors/{other}/cancel", headers=csrf, json={"reason": "wrong day"})
    assert r.status_code == 409 and "check a visitor out" in r.json()["error"]
    assert client.post("/api/v1/visitors/v-00000000deadbeef/cancel", headers=csrf,
                       json={"reason": "x"}).status_code == 404
