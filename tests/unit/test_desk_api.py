"""The security desk's API and pages (server/web): access on every route, roles, sessions, CSRF, tokens,
failed-login throttling, audit records, OpenAPI, and hostile input answered with 4xx JSON, never 500.

Real parts: a real ``Server`` bootstrapped on the demo site with a real SQLite store in tmp_path (its bus is
not started: these tests need no broker), real argon2id hashes (cheap parameters), FastAPI's TestClient.
"""

from __future__ import annotations

import io
import json
import re
import secrets
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.routing import APIRoute

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient prefers httpx2; httpx works the same here
    from fastapi.testclient import TestClient

from doorkeep.cli import main
from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.envelope import SnapshotKeys
from server import sessions as auth_mod
from server.app import Server, bootstrap
from server.operators import OperatorError, Operators
from server.web.access import SESSION_COOKIE, UndeclaredRoute, check_routes, route_access
from server.web.app import create_app
from simulators.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
PASSWORDS = {"ada": "ada correct horse battery", "dex": "dex staple paper clip", "aud": "aud audit trail rules"}
ROLES = {"ada": "admin", "dex": "desk", "aud": "auditor"}
PUBLIC_ROUTES = {("POST", "/api/v1/session"), ("GET", "/login"), ("POST", "/login"), ("POST", "/login/code"),
                 # monitoring (server/web/health.py): /metrics may ask for its own bearer token
                 ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")}


class CountingHasher(PasswordHasher):
    """argon2id with test-cheap parameters, counting verifications (the timing-safe path must verify too)."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verifies = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 - argon2's own name
        self.verifies += 1
        return super().verify(hash, password)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = bootstrap(load_site_dir(DEMO), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate(), clock=clock)
    yield srv
    srv.store.close()


@pytest.fixture
def hasher() -> CountingHasher:
    return CountingHasher()


@pytest.fixture
def app(server: Server, clock: FakeClock, hasher: CountingHasher) -> FastAPI:
    app = create_app(server, clock=clock, hasher=hasher)
    for name, role in ROLES.items():
        app.state.desk.operators.add(name, role, PASSWORDS[name], actor="test")
    return app


@pytest.fixture
def client(app: FastAPI) -> TestClient:
    return TestClient(app, raise_server_exceptions=False, follow_redirects=False)


def tokens(app: FastAPI) -> dict[str, str]:
    ops: Operators = app.state.desk.operators
    return {name: ops.issue_token(name, "tests", actor="test")[0] for name in ROLES}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_login(client: TestClient, name: str) -> str:
    r = client.post("/api/v1/session", json={"name": name, "password": PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return str(r.json()["csrf_token"])


def form_login(client: TestClient, name: str, password: str, next_path: str = "/") -> Any:
    page = client.get("/login")
    token = re.search(r'name="login_token" value="([^"]+)"', page.text)
    assert token, page.text
    return client.post("/login", data={"name": name, "password": password, "login_token": token.group(1),
                                       "next": next_path})


def actions(server: Server) -> list[str]:
    assert server.audit is not None
    return [r["action"] for r in reversed(server.audit.records())]


def assert_json_error(r: Any, status: int | None = None) -> dict[str, Any]:
    assert r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str) and body["error"], body
    return dict(body)


# ------------------------------------------------------------- every route


def test_every_route_declares_access_and_no_private_route_answers_without_login(app: FastAPI,
                                                                                client: TestClient) -> None:
    seen_public = set()
    checked = 0
    for route in app.routes:
        if not isinstance(route, APIRoute):
            continue
        declared = route_access(route)
        assert declared, f"{route.path} declares no access"
        for method in route.methods:
            path = route.path.replace("{door_id}", "lab").replace("{name}", "ada")
            if all(a.roles is None for a in declared):
                seen_public.add((method, route.path))
                continue
            r = client.request(method, path)
            checked += 1
            if path.startswith("/api/"):
                body = assert_json_error(r, 401)
                assert "POST /api/v1/session" in body["error"]
                assert r.headers["www-authenticate"] == "Bearer"
            else:
                assert r.status_code == 303 and r.headers["location"].startswith("/login"), (method, path)
    assert seen_public == PUBLIC_ROUTES
    assert checked >= 15


def test_a_route_without_a_declared_role_stops_the_app_from_building(app: FastAPI) -> None:
    check_routes(app.routes)  # the real app passes
    app.add_api_route("/api/v1/forgotten", lambda: {"open": True}, methods=["GET"])
    with pytest.raises(UndeclaredRoute, match="/api/v1/forgotten"):
        check_routes(app.routes)


def test_static_files_are_public_but_cannot_escape_their_directory(client: TestClient) -> None:
    assert client.get("/static/desk.css").status_code == 200
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py"):
        r = client.get(path)
        assert r.status_code == 404 and "create_app" not in r.text, path


# ---------------------------------------------------------------- roles


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/api/v1/me", {"ada", "dex", "aud"}),
    ("GET", "/api/v1/openapi.json", {"ada", "dex", "aud"}),
    ("GET", "/api/v1/audit", {"ada", "aud"}),
    ("GET", "/api/v1/doors", {"ada", "dex"}),
    ("GET", "/api/v1/doors/lab", {"ada", "dex"}),
    ("GET", "/api/v1/operators", {"ada"}),
    ("GET", "/", {"ada", "dex", "aud"}),
    ("GET", "/visitors", {"ada", "dex"}),
    ("GET", "/live", {"ada", "dex"}),
    ("GET", "/alarms", {"ada", "dex"}),
    ("GET", "/doors", {"ada", "dex"}),
    ("GET", "/floors", {"ada", "dex"}),
    ("GET", "/api/v1/floors", {"ada", "dex"}),
    ("GET", "/muster", {"ada", "dex"}),
    ("GET", "/people", {"ada"}),
    ("GET", "/audit", {"ada", "aud"}),
])
def test_each_role_gets_exactly_its_routes(app: FastAPI, client: TestClient, method: str, path: str,
                                           allowed: set[str]) -> None:
    toks = tokens(app)
    for name in ROLES:
        r = client.request(method, path, headers=bearer(toks[name]))
        if name in allowed:
            assert r.status_code == 200, (name, path, r.text)
        else:
            assert r.status_code == 403, (name, path, r.status_code)
            if path.startswith("/api/"):
                assert ROLES[name] in assert_json_error(r)["error"]
            else:
                assert "Not allowed" in r.text


def test_only_an_admin_creates_operators_and_a_desk_operator_cannot_manage_people(app: FastAPI,
                                                                                  client: TestClient) -> None:
    toks = tokens(app)
    body = {"name": "newbie", "role": "desk", "password": "a long enough password"}
    for name in ("dex", "aud"):
        assert_json_error(client.post("/api/v1/operators", json=body, headers=bearer(toks[name])), 403)
        assert_json_error(client.post("/api/v1/operators/dex/disable", headers=bearer(toks[name])), 403)
    assert app.state.desk.operators.get("newbie") is None
    r = client.post("/api/v1/operators", json=body, headers=bearer(toks["ada"]))
    assert r.status_code == 201 and r.json() == {"name": "newbie", "role": "desk", "active": True,
                                                 "created_at": r.json()["created_at"], "two_factor": False}
    assert "already exists" in assert_json_error(client.post("/api/v1/operators", json=body,
                                                             headers=bearer(toks["ada"])), 409)["error"]
    weak = client.post("/api/v1/operators", json={**body, "name": "weak", "password": "short"},
                       headers=bearer(toks["ada"]))
    assert "at least 12" in assert_json_error(weak, 422)["error"]


def test_home_page_shows_operator_role_and_only_the_nav_the_role_may_use(app: FastAPI, client: TestClient) -> None:
    toks = tokens(app)
    expected = {"ada": {"Visitors", "Live", "Alarms", "Incidents", "Doors", "Floors", "Muster", "Reports", "People",
                        "Audit", "Site", "Operators"},
                "dex": {"Visitors", "Live", "Alarms", "Incidents", "Doors", "Floors", "Muster", "Reports"},
                "aud": {"Incidents", "Reports", "Audit", "Site"}}
    for name, titles in expected.items():
        page = client.get("/", headers=bearer(toks[name])).text
        nav = page[page.index('<nav aria-label="Desk sections">'):page.index("</nav>")]
        assert set(re.findall(r'<a href="/[a-z]+">([A-Za-z]+)</a>', nav)) == titles, name
        assert f"<strong>{name}</strong>" in page and f"<strong>{ROLES[name]}</strong>" in page
        assert '<a class="skip-link" href="#main">' in page and '<main id="main"' in page and "<h1>" in page


# ------------------------------------------------------------- sessions


def test_api_login_sets_a_strict_httponly_cookie_and_returns_the_csrf_token(client: TestClient,
                                                                            server: Server) -> None:
    r = client.post("/api/v1/session", json={"name": "Ada ", "password": PASSWORDS["ada"]})
    assert r.status_code == 200 and r.json()["operator"] == "ada" and r.json()["role"] == "admin"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http (TestClient); see the https test
    sid = cookie.split(";")[0].split("=", 1)[1]
    with server.store.connection_for_tests() as db:
        stored = [r[0] for r in db.conn.execute("SELECT hash FROM operator_sessions")]
    assert stored and sid not in stored  # only the hash is kept
    me = client.get("/api/v1/me").json()
    assert me["name"] == "ada" and me["via"] == "session" and me["csrf_token"] == r.json()["csrf_token"]


def test_cookies_are_secure_over_https(app: FastAPI) -> None:
    https = TestClient(app, base_url="https://testserver", follow_redirects=False)
    r = https.post("/api/v1/session", json={"name": "dex", "password": PASSWORDS["dex"]})
    assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]
    fresh = TestClient(app, base_url="https://testserver", follow_redirects=False)
    assert "Secure" in fresh.get("/login").headers["set-cookie"]


def test_csrf_token_is_required_for_state_changes_with_a_cookie_session(client: TestClient) -> None:
    csrf = api_login(client, "ada")
    body = {"name": "newbie", "role": "desk", "password": "a long enough password"}
    assert "CSRF" in assert_json_error(client.post("/api/v1/operators", json=body), 403)["error"]
    assert_json_error(client.post("/api/v1/operators", json=body, headers={"X-CSRF-Token": "forged"}), 403)
    assert_json_error(client.delete("/api/v1/session"), 403)
    assert client.get("/api/v1/me").status_code == 200  # the refused logout did not end the session
    assert client.post("/api/v1/operators", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    assert client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert_json_error(client.get("/api/v1/me"), 401)


def test_form_logout_needs_the_csrf_field_and_ends_the_session(client: TestClient, server: Server) -> None:
    assert form_login(client, "dex", PASSWORDS["dex"]).status_code == 303
    home = client.get("/")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', home.text)
    assert csrf
    assert client.post("/logout", data={"csrf_token": "nope"}).status_code == 403
    assert client.get("/").status_code == 200
    r = client.post("/logout", data={"csrf_token": csrf.group(1)})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert client.get("/").status_code == 303
    assert actions(server)[-2:] == ["operator.login", "operator.logout"]


def test_bearer_token_works_without_csrf_and_a_revoked_token_stops_at_once(app: FastAPI, client: TestClient,
                                                                           server: Server) -> None:
    ops: Operators = app.state.desk.operators
    secret, token = ops.issue_token("ada", "integration", actor="ada")
    body = {"name": "viatoken", "role": "auditor", "password": "a long enough password"}
    assert client.post("/api/v1/operators", json=body, headers=bearer(secret)).status_code == 201  # no CSRF
    assert client.get("/api/v1/me", headers=bearer(secret)).json()["via"] == "token"
    assert "revoke the token" in assert_json_error(client.delete("/api/v1/session", headers=bearer(secret)),
                                                   400)["error"]
    with server.store.connection_for_tests() as db:
        hashes = [r[0] for r in db.conn.execute("SELECT hash FROM operator_tokens")]
    assert secret not in hashes and all(len(h) == 64 for h in hashes)
    assert ops.revoke_token("ada", "integration", actor="ada")
    assert_json_error(client.get("/api/v1/me", headers=bearer(secret)), 401)
    assert_json_error(client.get("/api/v1/me", headers=bearer(secret[:-1] + ("x" if secret[-1] != "x" else "y"))), 401)
    assert_json_error(client.get("/api/v1/me", headers={"Authorization": "Basic YWRhOmFkYQ=="}), 401)
    assert {"operator.token_issue", "operator.token_revoke"} <= set(actions(server))


def test_a_token_never_carries_more_than_its_operators_role(app: FastAPI, client: TestClient) -> None:
    ops: Operators = app.state.desk.operators
    with pytest.raises(OperatorError, match="cannot hold a admin token"):
        ops.issue_token("dex", "escalate", role="admin", actor="dex")
    with pytest.raises(OperatorError, match="cannot hold a desk token"):
        ops.issue_token("aud", "escalate", role="desk", actor="aud")
    narrow, _ = ops.issue_token("ada", "readonly", role="auditor", actor="ada")
    assert client.get("/api/v1/audit", headers=bearer(narrow)).status_code == 200
    assert_json_error(client.get("/api/v1/doors", headers=bearer(narrow)), 403)


def test_disabling_an_operator_ends_its_sessions_and_tokens(app: FastAPI, client: TestClient) -> None:
    toks = tokens(app)
    dex = TestClient(app, follow_redirects=False)
    api_login(dex, "dex")
    r = client.post("/api/v1/operators/dex/disable", headers=bearer(toks["ada"]))
    assert r.json() == {"name": "dex", "disabled": True}
    assert_json_error(dex.get("/api/v1/me"), 401)
    assert_json_error(client.get("/api/v1/me", headers=bearer(toks["dex"])), 401)
    assert_json_error(client.post("/api/v1/session", json={"name": "dex", "password": PASSWORDS["dex"]}), 401)
    assert_json_error(client.post("/api/v1/operators/nobody/disable", headers=bearer(toks["ada"])), 404)


def test_sessions_expire_when_idle_and_after_the_absolute_limit(client: TestClient, clock: FakeClock) -> None:
    api_login(client, "dex")
    clock.advance(auth_mod.SESSION_IDLE_S - 5)
    assert client.get("/api/v1/me").status_code == 200  # activity keeps it alive
    clock.advance(auth_mod.SESSION_IDLE_S + 1)
    assert_json_error(client.get("/api/v1/me"), 401)
    api_login(client, "dex")
    logged_in_at, step = clock.wall(), auth_mod.SESSION_IDLE_S / 2
    for _ in range(100):  # a busy operator: a request every 15 minutes
        clock.advance(step)
        if client.get("/api/v1/me").status_code != 200:
            break
    lived = clock.wall() - logged_in_at
    assert auth_mod.SESSION_ABSOLUTE_S < lived <= auth_mod.SESSION_ABSOLUTE_S + step
    assert_json_error(client.get("/api/v1/me"), 401)


def test_login_replaces_any_session_id_the_browser_already_had(client: TestClient) -> None:
    api_login(client, "dex")
    first = client.cookies.get(SESSION_COOKIE)
    api_login(client, "dex")
    second = client.cookies.get(SESSION_COOKIE)
    assert first and second and first != second
    stale = TestClient(client.app, cookies={SESSION_COOKIE: first})
    assert_json_error(stale.get("/api/v1/me"), 401)


# ---------------------------------------------------------------- login form


def test_wrong_password_on_the_form_shows_an_error_and_sets_no_session(client: TestClient) -> None:
    r = form_login(client, "ada", "not the password")
    assert r.status_code == 401 and 'role="alert"' in r.text and "wrong name or password" in r.text.lower()
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    assert client.get("/").status_code == 303


def test_login_form_needs_its_own_token_and_never_redirects_off_site(client: TestClient) -> None:
    r = client.post("/login", data={"name": "ada", "password": PASSWORDS["ada"], "login_token": "x", "next": "/"})
    assert r.status_code == 400 and "expired" in r.text and SESSION_COOKIE not in r.headers.get("set-cookie", "")
    for evil in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        r = form_login(TestClient(client.app, follow_redirects=False), "ada", PASSWORDS["ada"], next_path=evil)
        assert r.status_code == 303 and r.headers["location"] == "/", evil
    r = form_login(TestClient(client.app, follow_redirects=False), "ada", PASSWORDS["ada"], next_path="/audit")
    assert r.headers["location"] == "/audit"


# ----------------------------------------------------------- throttling


def test_failed_logins_slow_down_then_lock_the_account(client: TestClient, clock: FakeClock, server: Server) -> None:
    wrong = {"name": "dex", "password": "wrong password!"}
    for _ in range(auth_mod.ACCOUNT_DELAY_AFTER):
        assert_json_error(client.post("/api/v1/session", json=wrong), 401)
    r = client.post("/api/v1/session", json={"name": "dex", "password": PASSWORDS["dex"]})
    assert "wait" in assert_json_error(r, 429)["error"] and r.headers["retry-after"] == "1"
    delays = []
    for _ in range(100):
        wait = int(client.post("/api/v1/session", json=wrong).headers.get("retry-after", "0"))
        if wait:
            delays.append(wait)
            clock.advance(wait)
            continue
        with server.store.connection_for_tests() as db:
            if db.conn.execute("SELECT MAX(locked_until) FROM login_failures").fetchone()[0]:
                break
    assert delays[:4] == [1, 2, 4, 8]  # exponential
    r = client.post("/api/v1/session", json={"name": "dex", "password": PASSWORDS["dex"]})
    assert "locked" in assert_json_error(r, 429)["error"] and int(r.headers["retry-after"]) > 800
    clock.advance(auth_mod.LOCKOUT_S + 1)
    assert client.post("/api/v1/session", json={"name": "dex", "password": PASSWORDS["dex"]}).status_code == 200
    acts = actions(server)
    assert acts.count("operator.login_failed") == auth_mod.ACCOUNT_LOCK_AFTER and acts.count("operator.lockout") == 1


def test_one_client_guessing_many_names_is_throttled_by_address(client: TestClient) -> None:
    for i in range(auth_mod.ADDRESS_DELAY_AFTER):
        assert_json_error(client.post("/api/v1/session", json={"name": f"guess{i}", "password": "x"}), 401)
    assert_json_error(client.post("/api/v1/session", json={"name": "ada", "password": PASSWORDS["ada"]}), 429)


def test_unknown_names_get_the_same_answer_and_the_same_argon2_work(client: TestClient, hasher: CountingHasher,
                                                                     server: Server) -> None:
    hasher.verifies = 0
    known = client.post("/api/v1/session", json={"name": "ada", "password": "wrong password!"})
    assert hasher.verifies == 1
    unknown = client.post("/api/v1/session", json={"name": "nobody", "password": "wrong password!"})
    assert hasher.verifies == 2  # verified against the dummy hash
    odd = client.post("/api/v1/session", json={"name": "Not A Valid Name!", "password": "wrong password!"})
    assert hasher.verifies == 3
    assert known.status_code == unknown.status_code == odd.status_code == 401
    assert known.json() == unknown.json() == odd.json()
    assert server.audit is not None
    failed = [r for r in server.audit.records() if r["action"] == "operator.login_failed"]
    assert [(r["target"], r["details"]["known_name"]) for r in reversed(failed)] == [
        ("ada", True), (None, False), (None, False)]
    assert "nobody" not in json.dumps(server.audit.records())  # a mistyped name (a password?) is never kept


def test_a_longer_password_is_never_accepted_for_its_stored_prefix(app: FastAPI, hasher: CountingHasher) -> None:
    ops: Operators = app.state.desk.operators
    longest = "p" * 1024
    ops.add("max", "desk", longest, actor="test")
    assert ops.verify_password("max", longest) is not None
    hasher.verifies = 0
    assert ops.verify_password("max", longest + "x") is None
    assert hasher.verifies == 1  # still one argon2 run: no timing difference
    with pytest.raises(OperatorError, match="at most 1024"):
        ops.add("toolong", "desk", longest + "x", actor="test")


def test_audit_records_every_account_event_and_never_a_password(app: FastAPI, client: TestClient,
                                                                server: Server) -> None:
    csrf = api_login(client, "ada")
    client.post("/api/v1/session", json={"name": "ada", "password": "wrong password!"})
    client.delete("/api/v1/session", headers={"X-CSRF-Token": csrf})
    assert server.audit is not None
    text = json.dumps(server.audit.records())
    assert not any(p in text for p in PASSWORDS.values()) and "wrong password!" not in text
    assert {"operator.add", "operator.login", "operator.login_failed", "operator.logout"} <= set(actions(server))
    login = next(r for r in server.audit.records() if r["action"] == "operator.login")
    assert login["actor"] == "ada" and login["details"] == {"client": "testclient"}
    assert server.audit.verify().ok
    auditor = bearer(tokens(app)["aud"])
    page = client.get("/api/v1/audit", params={"limit": 2}, headers=auditor).json()
    assert len(page["records"]) == 2 and page["records"][0]["seq"] > page["records"][1]["seq"]
    older = client.get("/api/v1/audit", params={"limit": 500, "before": page["next_before"]}, headers=auditor).json()
    assert older["next_before"] is None and all(r["seq"] < page["next_before"] for r in older["records"])


# ------------------------------------------------------------ OpenAPI, doors


def test_openapi_document_is_served_as_json_and_lists_the_api(app: FastAPI, client: TestClient) -> None:
    r = client.get("/api/v1/openapi.json", headers=bearer(tokens(app)["aud"]))
    doc = json.loads(r.content)
    assert r.headers["content-type"].startswith("application/json") and doc["openapi"].startswith("3.")
    assert {"/api/v1/session", "/api/v1/me", "/api/v1/audit", "/api/v1/doors", "/api/v1/operators"} <= set(doc["paths"])
    assert not any(p.startswith("/login") or p == "/" for p in doc["paths"])  # pages are not API


def test_doors_lists_the_sites_doors_from_the_servers_directory(app: FastAPI, client: TestClient,
                                                               server: Server) -> None:
    desk = bearer(tokens(app)["dex"])
    doors = client.get("/api/v1/doors", headers=desk).json()["doors"]
    assert {d["id"] for d in doors} == set(server.site.doors)
    assert all(d["device"] == server.bus.door_devices[d["id"]] for d in doors)
    assert client.get("/api/v1/doors/lab", headers=desk).json()["restricted"] is True
    assert "no door 'nope'" in assert_json_error(client.get("/api/v1/doors/nope", headers=desk), 404)["error"]


def test_security_headers_on_pages_and_api(client: TestClient) -> None:
    for path in ("/login", "/api/v1/me"):
        h = client.get(path).headers
        assert "frame-ancestors 'none'" in h["content-security-policy"] and h["x-content-type-options"] == "nosniff"
        assert h["cache-control"] == "no-store"


# ---------------------------------------------------------- hostile input


def test_hostile_input_gets_4xx_json_never_500(app: FastAPI, client: TestClient) -> None:
    admin = bearer(tokens(app)["ada"])
    huge = client.post("/api/v1/session", content=b"{" + b" " * 200_000 + b"}",
                       headers={"content-type": "application/json"})
    assert "larger than" in assert_json_error(huge, 413)["error"]

    def stream() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 4096
    assert_json_error(client.post("/api/v1/session", content=stream(), headers={"content-type": "application/json"}),
                      413)
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/v1/session", {"content": b"name=ada", "headers": {"content-type": "text/plain"}}),
        ("POST", "/api/v1/session", {"content": b"<a/>", "headers": {"content-type": "application/xml"}}),
        ("POST", "/api/v1/session", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data; boundary=x"}}),
        ("POST", "/api/v1/session", {"content": b"{not json", "headers": {"content-type": "application/json"}}),
        ("POST", "/api/v1/session", {"content": b"\xff\xfe\x00", "headers": {"content-type": "application/json"}}),
        ("POST", "/api/v1/session", {"json": ["ada", "pw"]}),
        ("POST", "/api/v1/session", {"json": {"name": "ada", "password": "x", "admin": True}}),
        ("POST", "/api/v1/session", {"json": {"name": "a" * 65, "password": "x"}}),
        ("POST", "/api/v1/session", {"json": {"name": "\u202eada\u0000", "password": "\U0001f511" * 10}}),
        ("POST", "/api/v1/session", {"json": {"name": "ада", "password": "пароль пароль пароль"}}),
        ("POST", "/api/v1/session", {"content": b"", "headers": {"content-length": "nope"}}),
        ("GET", "/api/v1/audit?limit=-1", {"headers": admin}),
        ("GET", "/api/v1/audit?limit=abc", {"headers": admin}),
        ("GET", "/api/v1/audit?before=99999999999999999999999999", {"headers": admin}),
        ("GET", "/api/v1/doors/..%2F..%2Fetc%2Fpasswd", {"headers": admin}),
        ("GET", "/api/v1/doors/%2e%2e", {"headers": admin}),
        ("GET", "/api/v1/doors/" + "d" * 500, {"headers": admin}),
        ("GET", "/api/v1/doors/%00", {"headers": admin}),
        ("GET", "/api/v1/doors/caf%C3%A9", {"headers": admin}),
        ("POST", "/api/v1/operators/..%2Fada/disable", {"headers": admin}),
        ("POST", "/api/v1/operators/ADA/disable", {"headers": admin}),
        ("POST", "/api/v1/operators", {"json": {"name": "../etc", "role": "desk", "password": "long enough pw!"},
                                       "headers": admin}),
        ("POST", "/api/v1/operators", {"json": {"name": "x", "role": "root", "password": "long enough pw!"},
                                       "headers": admin}),
        ("PUT", "/api/v1/me", {"headers": admin}),
        ("GET", "/api/v1/../../etc/passwd", {}),
        ("GET", "/api/v1/nothing/here", {"headers": admin}),
    ]
    for method, path, kwargs in cases:
        r = client.request(method, path, **kwargs)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        if r.request.url.path.startswith("/api/"):
            assert_json_error(r)
    for name in ("\u0000", "ada' OR '1'='1", "<script>alert(1)</script>", "\U0001f600" * 30):
        r = form_login(client, name, "pw")
        assert r.status_code == 401 and "<script>alert" not in r.text


def test_a_crash_inside_a_handler_is_a_json_500_without_the_traceback(app: FastAPI, client: TestClient,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> list[Any]:
        raise RuntimeError("secret internals")
    monkeypatch.setattr(app.state.desk.operators, "all", boom)
    r = client.get("/api/v1/operators", headers=bearer(tokens(app)["ada"]))
    assert r.status_code == 500 and "ref" in r.json()["error"] and "secret internals" not in r.text


# ------------------------------------------------------------------ CLI


def run_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch, stdin: str = "") -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return main(argv)


def test_user_commands_create_accounts_and_tokens_that_work_at_the_desk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    common = ["--site", str(DEMO), "--data", str(data)]
    assert run_cli(["user", "add", "root-admin", "--role", "admin", "--password-stdin", *common], monkeypatch,
                   "a very good passphrase\n") == 0
    assert run_cli(["user", "add", "root-admin", "--role", "desk", "--password-stdin", *common], monkeypatch,
                   "a very good passphrase\n") == 1
    assert run_cli(["user", "add", "shorty", "--role", "desk", "--password-stdin", *common], monkeypatch,
                   "short\n") == 2
    assert run_cli(["user", "add", "Bad Name", "--role", "desk", "--password-stdin", *common], monkeypatch,
                   "a very good passphrase\n") == 2
    capsys.readouterr()
    assert run_cli(["user", "token", "root-admin", "--label", "ci", "--role", "auditor", *common], monkeypatch) == 0
    secret = capsys.readouterr().out.strip()
    assert secret.startswith("dkt_")
    assert run_cli(["user", "list", *common], monkeypatch) == 0
    listing = capsys.readouterr().out
    assert "root-admin" in listing and "ci (auditor)" in listing and secret not in listing

    srv = bootstrap(load_site_dir(DEMO), data, BrokerConfig("mqtt://127.0.0.1:9"), key=secrets.token_bytes(32),
                    signing_key=Ed25519PrivateKey.generate(), snapshot_keys=SnapshotKeys.generate())
    try:
        client = TestClient(create_app(srv))
        assert client.get("/api/v1/me", headers=bearer(secret)).json()["role"] == "auditor"
        r = client.post("/api/v1/session", json={"name": "root-admin", "password": "a very good passphrase"})
        assert r.status_code == 200 and r.json()["role"] == "admin"
        assert run_cli(["user", "token", "root-admin", "--label", "ci", "--revoke", *common], monkeypatch) == 0
        assert client.get("/api/v1/me", headers=bearer(secret)).status_code == 401
        # the last active admin cannot be disabled (a site never locks itself out); with a second admin it can
        assert run_cli(["user", "disable", "root-admin", *common], monkeypatch) == 1
        assert client.get("/api/v1/me").status_code == 200
        assert run_cli(["user", "add", "second-admin", "--role", "admin", "--password-stdin", *common], monkeypatch,
                       "another very good passphrase\n") == 0
        assert run_cli(["user", "disable", "root-admin", *common], monkeypatch) == 0
        assert client.get("/api/v1/me").status_code == 401
        assert srv.audit is not None and srv.audit.verify().ok
        assert {"operator.add", "operator.token_issue", "operator.token_revoke", "operator.disable"} <= \
            {r["action"] for r in srv.audit.records()}
    finally:
        srv.store.close()


# -------------------------------------------------------- app from the environment


def test_create_app_without_arguments_runs_the_demo_server_from_the_environment(
        mosquitto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOORKEEP_SITE", raising=False)
    monkeypatch.setenv("DOORKEEP_DATA", str(tmp_path / "envdata"))
    monkeypatch.setenv("DOORKEEP_BROKER", mosquitto.url)
    tls = mosquitto.client_config("server")  # the session broker speaks mutual TLS only
    for var, path in (("DOORKEEP_CA", tls.ca_file), ("DOORKEEP_CERT", tls.cert_file), ("DOORKEEP_KEY", tls.key_file)):
        monkeypatch.setenv(var, str(path))
    app = create_app()
    with TestClient(app) as client:  # the lifespan starts the server's bus, and stops it at the end
        server = app.state.desk.server
        assert wait_until(lambda: server.bus._connected.is_set(), 10)
        assert client.get("/login").status_code == 200
    assert (tmp_path / "envdata" / "doorkeep.db").exists()


def test_uvicorn_factory_serves_the_desk(mosquitto: Any, tmp_path: Path) -> None:
    import os
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tls = mosquitto.client_config("server")  # the session broker speaks mutual TLS only
    env = {**os.environ, "DOORKEEP_DATA": str(tmp_path / "uv"), "DOORKEEP_BROKER": mosquitto.url,
           "DOORKEEP_CA": str(tls.ca_file), "DOORKEEP_CERT": str(tls.cert_file), "DOORKEEP_KEY": str(tls.key_file)}
    env.pop("DOORKEEP_SITE", None)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "server.web.app:create_app", "--host",
                             "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=1) as r:
                return bool(r.status == 200 and b"Log in" in r.read())
        except OSError:
            return False
    try:
        assert wait_until(up, 30), proc.stderr.read1().decode() if proc.poll() is not None and proc.stderr else ""
    finally:
        proc.terminate()
        proc.wait(15)
