"""Operators' TOTP two-factor login (server/operators.py, server/sessions.py; docs/desk.md "Two-factor login"):
enrolment confirmed by a code, recovery codes shown once and stored hashed, login as password then code, single-use
codes (replay refused), recovery codes usable once, wrong codes throttled like wrong passwords, an admin's
reset, a site that requires it for admins, and API tokens unaffected.

Real parts: a real ``Server`` on the demo site with a real SQLite store, the real desk app through FastAPI's
TestClient, real pyotp codes computed from the secret the enrolment page shows, the desk's fake clock.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import pyotp
import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from doorkeep.config import load_desk_settings
from doorkeep.errors import ConfigErrors
from server.app import Server
from server.web.app import create_app
from server import sessions as auth_mod
from server.web.access import SESSION_COOKIE
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    PASSWORDS,
    actions,
    api_login,
    app,
    bearer,
    client,
    clock,
    form_login,
    hasher,
    server,
    tokens,
)


def enrol(client: TestClient, clock: FakeClock) -> tuple[str, list[str]]:
    """Enrol the logged-in operator through the page: the secret it shows, and the recovery codes it shows."""
    page = client.get("/account/2fa")
    assert page.status_code == 200, page.text
    secret = re.search(r'id="totp-secret">([A-Z2-7 ]+)</code>', page.text)
    uri = re.search(r'id="totp-uri">(otpauth://[^<]+)</code>', page.text)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert secret and uri and csrf, page.text
    plain = secret.group(1).replace(" ", "")
    assert f"secret={plain}" in uri.group(1).replace("&amp;", "&") and 'src="data:image/png;base64,' in page.text
    done = client.post("/account/2fa", data={"code": pyotp.TOTP(plain).at(clock.wall()), "csrf_token": csrf.group(1)})
    assert done.status_code == 200, done.text
    codes = re.findall(r"<li><code>([a-z2-9]{5}-[a-z2-9]{5})</code></li>", done.text)
    return plain, codes


def code_at(secret: str, clock: FakeClock) -> str:
    return pyotp.TOTP(secret).at(clock.wall())


def session(client: TestClient, name: str, code: str | None = None) -> Any:
    return client.post("/api/v1/session", json={"name": name, "password": PASSWORDS[name],
                                                **({"code": code} if code is not None else {})})


def test_enrolment_needs_a_valid_code_and_shows_ten_recovery_codes_once_stored_salted_and_hashed(
        client: TestClient, clock: FakeClock, server: Server) -> None:
    api_login(client, "dex")
    page = client.get("/account/2fa")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf
    wrong = client.post("/account/2fa", data={"code": "000000", "csrf_token": csrf.group(1)})
    assert wrong.status_code == 422 and "not right" in wrong.text
    assert client.get("/api/v1/me").json()["two_factor"] is False
    assert client.post("/account/2fa", data={"code": "123456"}).status_code == 403  # no CSRF token

    secret, codes = enrol(client, clock)
    assert len(codes) == 10 and len(set(codes)) == 10
    assert client.get("/api/v1/me").json()["two_factor"] is True
    again = client.get("/account/2fa").text
    assert "10 recovery code(s) left" in again and not any(c in again for c in codes) and secret not in again
    with server.store.connection_for_tests() as db:
        rows = db.conn.execute("SELECT salt, hash FROM operator_recovery_codes "
                               "WHERE operator = 'dex'").fetchall()
        dump = "\n".join(db.conn.iterdump())
    assert len(rows) == 10 and len({salt for salt, _ in rows}) == 10
    assert not any(c in dump or c.replace("-", "") in dump for c in codes)
    assert actions(server).count("operator.totp_enrol") == 1


def test_login_is_password_then_code_and_a_code_is_never_accepted_twice(client: TestClient, clock: FakeClock,
                                                                        server: Server) -> None:
    api_login(client, "dex")
    secret, _ = enrol(client, clock)
    fresh = TestClient(client.app, raise_server_exceptions=False, follow_redirects=False)
    r = session(fresh, "dex")
    assert r.status_code == 401 and r.json()["detail"]["reason"] == "code_required"
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
    clock.advance(30)
    code = code_at(secret, clock)
    assert session(fresh, "dex", code).status_code == 200
    replay = session(TestClient(client.app, raise_server_exceptions=False), "dex", code)
    assert replay.status_code == 401 and replay.json()["detail"]["reason"] == "bad_code"
    clock.advance(30)
    assert session(TestClient(client.app), "dex", code_at(secret, clock)).status_code == 200
    login = [r for r in server.audit.records() if r["action"] == "operator.login"]  # type: ignore[union-attr]
    assert login[0]["details"]["second_factor"] == "totp"


def test_the_login_form_asks_for_the_code_on_a_second_page(client: TestClient, clock: FakeClock) -> None:
    api_login(client, "dex")
    secret, _ = enrol(client, clock)
    browser = TestClient(client.app, raise_server_exceptions=False, follow_redirects=False)
    step = form_login(browser, "dex", PASSWORDS["dex"], next_path="/alarms")
    assert step.status_code == 200 and "Enter your code" in step.text
    assert SESSION_COOKIE not in step.headers.get("set-cookie", "")
    token = re.search(r'name="login_token" value="([^"]+)"', step.text)
    assert token
    bad = browser.post("/login/code", data={"code": "000000", "login_token": token.group(1), "next": "/alarms"})
    assert bad.status_code == 401 and "Wrong or already used code" in bad.text
    token = re.search(r'name="login_token" value="([^"]+)"', bad.text)
    assert token
    clock.advance(30)
    ok = browser.post("/login/code", data={"code": code_at(secret, clock), "login_token": token.group(1),
                                           "next": "/alarms"})
    assert ok.status_code == 303 and ok.headers["location"] == "/alarms"
    assert browser.get("/api/v1/me").json()["name"] == "dex"
    # without the password step's challenge the code page logs nobody in
    stranger = TestClient(client.app, raise_server_exceptions=False, follow_redirects=False)
    r = stranger.post("/login/code", data={"code": code_at(secret, clock), "login_token": "x", "next": "/"})
    assert r.status_code == 400 and SESSION_COOKIE not in r.headers.get("set-cookie", "")


def test_a_recovery_code_works_once_and_its_use_is_audited(client: TestClient, clock: FakeClock,
                                                           server: Server) -> None:
    api_login(client, "dex")
    _, codes = enrol(client, clock)
    assert session(TestClient(client.app), "dex", codes[3].upper()).status_code == 200
    again = session(TestClient(client.app, raise_server_exceptions=False), "dex", codes[3])
    assert again.status_code == 401 and again.json()["detail"]["reason"] == "bad_code"
    assert server.audit is not None
    used = [r for r in server.audit.records() if r["action"] == "operator.totp_recovery_used"]
    assert len(used) == 1 and used[0]["details"]["left"] == 9 and used[0]["target"] == "dex"
    assert codes[3] not in str(server.audit.records())


def test_wrong_codes_count_toward_the_login_throttle(client: TestClient, clock: FakeClock, server: Server) -> None:
    api_login(client, "dex")
    secret, _ = enrol(client, clock)
    other = TestClient(client.app, raise_server_exceptions=False)
    for _ in range(auth_mod.ACCOUNT_DELAY_AFTER):  # the right password each time: it must not wipe the count
        assert session(other, "dex", "111111").json()["detail"]["reason"] == "bad_code"
    clock.advance(30)
    r = session(other, "dex", code_at(secret, clock))
    assert r.status_code == 429 and "wait" in r.json()["error"]
    assert actions(server).count("operator.login_failed") == auth_mod.ACCOUNT_DELAY_AFTER


def test_an_admin_resets_a_lost_second_factor_and_the_operators_sessions_end(app: FastAPI, client: TestClient,
                                                                             clock: FakeClock,
                                                                             server: Server) -> None:
    api_login(client, "dex")
    enrol(client, clock)
    toks = tokens(app)
    assert client.post("/api/v1/operators/dex/2fa/reset", headers=bearer(toks["dex"])).status_code == 403
    r = client.post("/api/v1/operators/dex/2fa/reset", headers=bearer(toks["ada"]))
    assert r.json() == {"name": "dex", "reset": True}
    assert client.get("/api/v1/me").status_code == 401  # the session ended with it
    assert session(TestClient(client.app), "dex").status_code == 200  # password alone, until enrolled again
    assert client.post("/api/v1/operators/dex/2fa/reset", headers=bearer(toks["ada"])).json()["reset"] is False
    assert client.post("/api/v1/operators/nobody/2fa/reset", headers=bearer(toks["ada"])).status_code == 404
    with server.store.connection_for_tests() as db:
        assert db.conn.execute("SELECT COUNT(*) FROM operator_recovery_codes").fetchone()[0] == 0
    reset = [r for r in server.audit.records() if r["action"] == "operator.totp_reset"]  # type: ignore[union-attr]
    assert len(reset) == 1 and reset[0]["actor"] == "ada" and reset[0]["target"] == "dex"


def test_api_tokens_are_not_affected_by_two_factor_login(app: FastAPI, client: TestClient, clock: FakeClock) -> None:
    api_login(client, "ada")
    enrol(client, clock)
    secret = tokens(app)["ada"]
    assert TestClient(app).get("/api/v1/doors", headers=bearer(secret)).status_code == 200


def test_a_site_requiring_2fa_for_admins_sends_an_admin_without_it_to_enrol_first(
        server: Server, clock: FakeClock, hasher: Any) -> None:
    strict = create_app(server, clock=clock, hasher=hasher, require_totp_for_admins=True)
    for name, role in (("ada", "admin"), ("dex", "desk")):
        strict.state.desk.operators.add(name, role, PASSWORDS[name], actor="test")
    admin = TestClient(strict, raise_server_exceptions=False, follow_redirects=False)
    api_login(admin, "ada")
    home = admin.get("/")
    assert home.status_code == 303 and home.headers["location"] == "/account/2fa"
    refused = admin.get("/api/v1/doors")
    assert refused.status_code == 403 and "two-factor" in refused.json()["error"]
    assert admin.get("/api/v1/me").json()["must_enrol"] is True
    assert "requires two-factor login for administrators" in admin.get("/account/2fa").text
    enrol(admin, clock)
    assert admin.get("/").status_code == 200 and admin.get("/api/v1/doors").status_code == 200
    desk = TestClient(strict, raise_server_exceptions=False, follow_redirects=False)
    api_login(desk, "dex")
    assert desk.get("/").status_code == 200  # only admins are required to enrol
    token = strict.state.desk.operators.issue_token("ada", "ci", actor="test")[0]
    assert TestClient(strict).get("/api/v1/doors", headers=bearer(token)).status_code == 200


def test_the_site_setting_comes_from_site_toml(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text("[desk]\nrequire_totp_for_admins = true\n")
    assert load_desk_settings(tmp_path).require_totp_for_admins is True
    (tmp_path / "site.toml").write_text("[desk]\nrequire_2fa = true\n")
    with pytest.raises(ConfigErrors, match="require_2fa"):
        load_desk_settings(tmp_path)
    (tmp_path / "site.toml").write_text('id = "x"\n')
    assert load_desk_settings(tmp_path).require_totp_for_admins is False
