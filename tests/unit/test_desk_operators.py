"""Operators from the desk (issue 13): reset a password, change a role, list, issue and revoke API tokens, over
the API and the Operators page; the last active admin can be neither demoted nor disabled.

Real parts: a real ``Server`` on the demo site with a real SQLite store, real argon2id hashes (cheap
parameters), the real FastAPI app through TestClient (fixtures of tests/unit/test_desk_api.py).
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from server.app import Server
from server.operators import OperatorConflict, Operators
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    PASSWORDS,
    actions,
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

NEW_PASSWORD = "a brand new dex passphrase"


def fresh(app: FastAPI) -> TestClient:  # noqa: F811 - fixture name
    """Another browser: its own cookie jar."""
    return TestClient(app, raise_server_exceptions=False, follow_redirects=False)


def audit_text(server: Server) -> str:  # noqa: F811
    assert server.audit is not None
    return json.dumps(server.audit.records())


# ------------------------------------------------------------ password reset


def test_reset_password_lets_the_new_one_in_keeps_the_old_one_out_and_ends_the_operators_sessions(
        app: FastAPI, server: Server) -> None:  # noqa: F811
    toks = tokens(app)
    dex = fresh(app)
    api_login(dex, "dex")
    assert dex.get("/api/v1/me").status_code == 200
    r = fresh(app).post("/api/v1/operators/dex/password", json={"password": NEW_PASSWORD}, headers=bearer(toks["ada"]))
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "dex", "sessions_ended": 1}
    assert dex.get("/api/v1/me").status_code == 401  # the open session ended with the reset
    other = fresh(app)
    assert other.post("/api/v1/session", json={"name": "dex", "password": PASSWORDS["dex"]}).status_code == 401
    assert other.post("/api/v1/session", json={"name": "dex", "password": NEW_PASSWORD}).status_code == 200
    assert "operator.password_reset" in actions(server)
    text = audit_text(server)
    assert NEW_PASSWORD not in text and PASSWORDS["dex"] not in text


def test_reset_password_refuses_a_short_password_and_keeps_the_old_one(app: FastAPI) -> None:  # noqa: F811
    toks = tokens(app)
    c = fresh(app)
    body = assert_json_error(c.post("/api/v1/operators/dex/password", json={"password": "short"},
                                    headers=bearer(toks["ada"])), 422)
    assert "at least 12" in body["error"]
    assert c.post("/api/v1/session", json={"name": "dex", "password": PASSWORDS["dex"]}).status_code == 200
    assert_json_error(c.post("/api/v1/operators/nobody/password", json={"password": NEW_PASSWORD},
                             headers=bearer(toks["ada"])), 404)


# ---------------------------------------------------------------- roles


def test_role_change_revokes_tokens_stronger_than_the_new_role_and_ends_sessions(app: FastAPI,
                                                                               server: Server) -> None:  # noqa: F811
    ops: Operators = app.state.desk.operators
    ops.add("eve", "admin", "eve correct horse battery", actor="test")
    strong, _ = ops.issue_token("eve", "ci-admin", role="admin", actor="test")
    reader, _ = ops.issue_token("eve", "ci-audit", role="auditor", actor="test")
    desk, _ = ops.issue_token("eve", "ci-desk", role="desk", actor="test")
    eve = fresh(app)
    eve.post("/api/v1/session", json={"name": "eve", "password": "eve correct horse battery"})
    assert eve.get("/api/v1/me").json()["role"] == "admin"
    toks = tokens(app)
    r = fresh(app).post("/api/v1/operators/eve/role", json={"role": "desk"}, headers=bearer(toks["ada"]))
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "desk"
    assert {t["label"] for t in r.json()["tokens_revoked"]} == {"ci-admin", "ci-audit"}
    c = fresh(app)
    assert c.get("/api/v1/me", headers=bearer(strong)).status_code == 401
    assert c.get("/api/v1/me", headers=bearer(reader)).status_code == 401
    assert c.get("/api/v1/me", headers=bearer(desk)).json()["role"] == "desk"  # within the new role: kept
    assert eve.get("/api/v1/me").status_code == 401  # the admin session ended
    listed = c.get("/api/v1/operators/eve/tokens", headers=bearer(toks["ada"])).json()
    assert [t["label"] for t in listed["tokens"]] == ["ci-desk"]
    assert "operator.role_change" in actions(server)
    assert_json_error(c.post("/api/v1/operators/eve/role", json={"role": "root"}, headers=bearer(toks["ada"])), 422)


def test_attack_the_last_active_admin_can_be_neither_demoted_nor_disabled(app: FastAPI,
                                                                          server: Server) -> None:  # noqa: F811
    toks = tokens(app)
    c = fresh(app)
    admin = bearer(toks["ada"])
    body = assert_json_error(c.post("/api/v1/operators/ada/role", json={"role": "desk"}, headers=admin), 409)
    assert "last active admin" in body["error"]
    assert_json_error(c.post("/api/v1/operators/ada/disable", headers=admin), 409)
    assert c.get("/api/v1/me", headers=admin).json()["role"] == "admin"  # nothing changed, the token still works
    assert "operator.role_change" not in actions(server) and "operator.disable" not in actions(server)
    # with a second active admin, either may go; then the other is the last one again
    assert c.post("/api/v1/operators", json={"name": "bob", "role": "admin", "password": "bob correct horse staple"},
                  headers=admin).status_code == 201
    assert c.post("/api/v1/operators/bob/disable", headers=admin).status_code == 200
    assert_json_error(c.post("/api/v1/operators/ada/role", json={"role": "auditor"}, headers=admin), 409)


def test_two_admins_disabling_each_other_leave_one_admin(app: FastAPI) -> None:  # noqa: F811
    ops: Operators = app.state.desk.operators
    ops.disable("dex", actor="test")
    ops.set_role("aud", "admin", actor="test")
    ops.disable("ada", actor="aud")
    with pytest.raises(OperatorConflict):
        ops.disable("aud", actor="ada")
    assert [op.name for op in ops.all() if op.active and op.role == "admin"] == ["aud"]


# --------------------------------------------------------------- tokens


def test_issued_token_is_shown_once_works_and_stops_working_when_revoked(app: FastAPI,
                                                                         server: Server) -> None:  # noqa: F811
    toks = tokens(app)
    c = fresh(app)
    admin = bearer(toks["ada"])
    r = c.post("/api/v1/operators/dex/tokens", json={"label": "kiosk 1", "role": "desk"}, headers=admin)
    assert r.status_code == 201, r.text
    secret = r.json()["token"]
    assert secret.startswith("dkt_") and r.json()["label"] == "kiosk 1" and r.json()["role"] == "desk"
    assert c.get("/api/v1/me", headers=bearer(secret)).json()["name"] == "dex"
    listed = c.get("/api/v1/operators/dex/tokens", headers=admin)
    assert listed.status_code == 200 and secret not in listed.text
    assert {t["label"] for t in listed.json()["tokens"]} == {"tests", "kiosk 1"}
    assert next(t for t in listed.json()["tokens"] if t["label"] == "kiosk 1")["last_used_at"] is not None
    assert_json_error(c.post("/api/v1/operators/dex/tokens", json={"label": "kiosk 1"}, headers=admin), 409)
    r = c.post("/api/v1/operators/dex/tokens/kiosk 1/revoke", headers=admin)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert c.get("/api/v1/me", headers=bearer(secret)).status_code == 401
    assert_json_error(c.post("/api/v1/operators/dex/tokens/kiosk 1/revoke", headers=admin), 404)
    assert secret not in audit_text(server)
    assert {"operator.token_issue", "operator.token_revoke"} <= set(actions(server))


def test_attack_desk_operator_is_not_given_an_admin_token(app: FastAPI) -> None:  # noqa: F811
    toks = tokens(app)
    c = fresh(app)
    body = assert_json_error(c.post("/api/v1/operators/dex/tokens", json={"label": "up", "role": "admin"},
                                    headers=bearer(toks["ada"])), 422)
    assert "cannot hold" in body["error"]
    assert [t["label"] for t in c.get("/api/v1/operators/dex/tokens",
                                      headers=bearer(toks["ada"])).json()["tokens"]] == ["tests"]


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/v1/operators/dex/tokens", {"label": "<script>", "role": "desk"}),
    ("POST", "/api/v1/operators/dex/tokens", {"label": "x" * 65}),
    ("POST", "/api/v1/operators/dex/tokens", {"label": "ok", "extra": 1}),
    ("POST", "/api/v1/operators/DEX/tokens", {"label": "ok"}),
    ("POST", "/api/v1/operators/dex/role", {"role": "admin", "extra": True}),
    ("POST", "/api/v1/operators/dex/password", {"password": "p" * 1025}),
    ("POST", "/api/v1/operators/dex/password", {}),
    ("GET", "/api/v1/operators/a%3Bdrop/tokens", None),
    ("POST", "/api/v1/operators/dex/tokens/%00/revoke", None),
], ids=["label-chars", "label-long", "extra-field", "name-case", "role-extra", "password-long", "password-missing",
        "name-semicolon", "label-nul"])
def test_hostile_input_to_the_operator_routes_is_422_json_never_a_500(app: FastAPI, method: str, path: str,
                                                                      body: Any) -> None:  # noqa: F811
    toks = tokens(app)
    r = fresh(app).request(method, path, json=body, headers=bearer(toks["ada"]))
    assert r.status_code == 422, (r.status_code, r.text)
    assert_json_error(r)


ROUTES = [("GET", "/api/v1/operators/dex/tokens", None), ("POST", "/api/v1/operators/dex/tokens", {"label": "x"}),
          ("POST", "/api/v1/operators/dex/tokens/tests/revoke", None),
          ("POST", "/api/v1/operators/dex/password", {"password": NEW_PASSWORD}),
          ("POST", "/api/v1/operators/dex/role", {"role": "admin"}), ("POST", "/api/v1/operators/ada/disable", None),
          ("GET", "/operators", None), ("POST", "/operators/dex/role", {"role": "admin"}),
          ("POST", "/operators/dex/password", {"password": NEW_PASSWORD, "password2": NEW_PASSWORD}),
          ("POST", "/operators/dex/tokens", {"label": "x"}), ("GET", "/operators/ada/disable", None),
          ("POST", "/operators/ada/disable", None)]


@pytest.mark.parametrize("name", ["dex", "aud"])
def test_attack_desk_and_auditor_tokens_are_refused_everywhere_on_operators(app: FastAPI, server: Server,
                                                                            name: str) -> None:  # noqa: F811
    toks = tokens(app)
    c = fresh(app)
    for method, path, body in ROUTES:
        api = path.startswith("/api/")
        r = c.request(method, path, headers=bearer(toks[name]),
                      **({"json": body} if api else {"data": body or {}}))
        assert r.status_code == 403, (method, path, r.status_code)
        assert ("needs admin" in r.json()["error"]) if api else ("Not allowed" in r.text)
    assert c.get("/api/v1/me", headers=bearer(toks["dex"])).json()["role"] == "desk"  # no promotion happened
    assert c.get("/api/v1/me", headers=bearer(toks["ada"])).status_code == 200  # ada was not disabled
    assert not {"operator.role_change", "operator.password_reset", "operator.disable"} & set(actions(server))


# ---------------------------------------------------------------- the page


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def test_admin_adds_an_operator_from_the_page_and_mismatched_passwords_save_nothing(app: FastAPI) -> None:  # noqa: F811
    c = fresh(app)
    api_login(c, "ada")
    page = c.get("/operators")
    assert page.status_code == 200 and 'data-operator="dex"' in page.text
    csrf = csrf_of(page.text)
    r = c.post("/operators", data={"csrf_token": csrf, "name": "zed", "role": "desk", "password": NEW_PASSWORD,
                                   "password2": NEW_PASSWORD + "x"})
    assert r.status_code == 422 and "differ" in r.text
    assert app.state.desk.operators.get("zed") is None
    r = c.post("/operators", data={"name": "zed", "role": "desk", "password": NEW_PASSWORD, "password2": NEW_PASSWORD})
    assert r.status_code == 403 and app.state.desk.operators.get("zed") is None  # no CSRF token: refused
    r = c.post("/operators", data={"csrf_token": csrf, "name": "zed", "role": "desk", "password": NEW_PASSWORD,
                                   "password2": NEW_PASSWORD})
    assert r.status_code == 303 and r.headers["location"] == "/operators?done=added&op=zed"
    assert "Operator zed added." in c.get(r.headers["location"]).text
    assert app.state.desk.operators.get("zed").role == "desk"


def test_page_issues_a_token_shown_once_and_refuses_to_disable_the_last_admin(app: FastAPI) -> None:  # noqa: F811
    c = fresh(app)
    api_login(c, "ada")
    csrf = csrf_of(c.get("/operators").text)
    r = c.post("/operators/dex/tokens", data={"csrf_token": csrf, "label": "door tablet", "role": "desk"})
    assert r.status_code == 200 and "shown this once" in r.text
    secret = re.search(r'id="token-secret"[^>]*value="(dkt_[^"]+)"', r.text)
    assert secret, r.text
    again = c.get("/operators").text
    assert secret.group(1) not in again and "door tablet (desk)" in again
    confirm = c.get("/operators/ada/disable")
    assert confirm.status_code == 200 and 'action="/operators/ada/disable"' in confirm.text
    r = c.post("/operators/ada/disable", data={"csrf_token": csrf})
    assert r.status_code == 409 and "last active admin" in r.text
    r = c.post("/operators/dex/disable", data={"csrf_token": csrf})
    assert r.status_code == 303 and not app.state.desk.operators.get("dex").active
    r = c.post("/operators/dex/tokens/revoke", data={"csrf_token": csrf, "label": "door tablet"})
    assert r.status_code == 303
    assert fresh(app).get("/api/v1/me", headers=bearer(secret.group(1))).status_code == 401


# ------------------------------------------------------------ paging


def test_the_operators_page_pages_and_opens_on_the_operator_just_acted_on(app: FastAPI,  # noqa: F811
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from server.web import operators_pages

    monkeypatch.setattr(operators_pages, "PAGE_SIZE", 3)
    ops = app.state.desk.operators
    for i in range(5):
        ops.add(f"op{i}", "desk", NEW_PASSWORD, actor="test")
    everyone = [op.name for op in ops.all()]
    c = fresh(app)
    api_login(c, "ada")

    def shown(query: str) -> list[str]:
        r = c.get("/operators" + query)
        assert r.status_code == 200, r.text
        return re.findall(r'<tr data-operator="([^"]+)"', r.text)

    pages = -(-len(everyone) // 3)
    seen = [shown(f"?page={n}") for n in range(1, pages + 1)]
    assert [name for page in seen for name in page] == everyone  # every operator once, in order
    assert all(len(page) == 3 for page in seen[:-1])
    first = c.get("/operators").text
    assert f"{len(everyone)} operators, page 1 of {pages}" in first and 'href="/operators?page=2"' in first
    assert "Previous operators" not in first
    assert shown(f"?page={pages + 7}") == seen[-1]  # past the end: the last page
    assert shown(f"?done=added&op={everyone[-1]}") == seen[-1]  # the redirect after an action finds its operator
    assert c.get("/operators?page=0").status_code == 422 and c.get("/operators?page=x").status_code == 422
