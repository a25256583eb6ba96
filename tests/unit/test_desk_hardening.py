"""Attacks on the desk's HTTP side (issue 12, items 6 and 9): a visit window in year 9999, a parallel burst of
logins against the throttle, and a forged ``X-Forwarded-For``.

Real parts: a real ``Server`` on the demo site with a real SQLite store, the real desk app, served by uvicorn
over loopback HTTP where the attack needs a real socket (the throttle burst, forwarded headers), real argon2.
"""

from __future__ import annotations

import argparse
import re
import socket
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from server.app import Server
from server.web.app import create_app
from server.directory import Visitor
from server import sessions as auth_mod
from server.web.serving import parse_allow_ips
from simulators.wait import wait_until
from tests.unit import test_desk_visitors as visitor_tests
from tests.unit.test_desk_visitors import PASSWORDS, check_in, login, visit

# The visitor tests' real server, app and client (fake clock at Monday 2026-11-30 09:00, Europe/London).
clock, server, app, client = visitor_tests.clock, visitor_tests.server, visitor_tests.app, visitor_tests.client
ROOT = Path(__file__).resolve().parents[2]


def stored_visitors(server: Server) -> list[Any]:
    with server.store.connection_for_tests() as db:
        return db.conn.execute("SELECT id, valid_from, valid_until FROM visitors").fetchall()


def audit_actions(server: Server) -> list[str]:
    assert server.audit is not None
    return [r["action"] for r in server.audit.records()]


# ----------------------------------------------------------------- the visit window


def test_attack_visit_window_in_year_9999_is_refused_and_nothing_is_stored(client: TestClient,
                                                                           server: Server) -> None:
    csrf = login(client, "dex")
    before = audit_actions(server)
    # 23:59 at UTC-5 on the last day of 9999 is year 10000 in UTC: no calendar of the site can show it.
    r = client.post("/api/v1/visitors", json=visit(valid_from="9999-12-31T08:00:00-05:00",
                                                   valid_until="9999-12-31T23:59:00-05:00"), headers=csrf)
    assert r.status_code == 422, r.text
    assert "366 days ahead" in r.json()["error"]
    assert stored_visitors(server) == []
    assert audit_actions(server) == before  # nothing registered, nothing audited
    assert client.get("/api/v1/visitors/today").status_code == 200
    page = client.post("/visitors", data={"name": "Grace", "host": "alice", "areas": ["lobby"],
                                          "valid_from": "9999-12-31T08:00", "valid_until": "9999-12-31T23:59",
                                          "csrf_token": csrf["X-CSRF-Token"]})
    assert page.status_code == 422 and "366 days ahead" in page.text and stored_visitors(server) == []


@pytest.mark.parametrize("window, reason", [
    (("2026-11-30T17:00:00", "2026-11-30T08:30:00"), "end after it starts"),
    (("2026-11-01T08:00:00", "2026-11-02T08:00:00"), "already ended"),
    (("2026-11-30T08:00:00", "2027-01-15T08:00:00"), "at most 31 days"),
    (("2028-01-01T08:00:00", "2028-01-01T17:00:00"), "366 days ahead"),
], ids=["end-before-start", "in-the-past", "too-long", "too-far-ahead"])
def test_an_unreasonable_visit_window_gets_422_with_its_reason(client: TestClient, server: Server,
                                                              window: tuple[str, str], reason: str) -> None:
    csrf = login(client, "dex")
    r = client.post("/api/v1/visitors", json=visit(valid_from=window[0], valid_until=window[1]), headers=csrf)
    assert r.status_code == 422 and reason in r.json()["error"], r.text
    assert stored_visitors(server) == []


def test_a_visitor_stored_with_an_impossible_window_can_still_be_read_and_checked_out(
        client: TestClient, server: Server) -> None:
    """A row an older version stored (window in year 10000 in site time) is shown, never a 500."""
    csrf = login(client, "dex")
    server.directory.register_visitor(Visitor(id="v-0badc0ffee", name="Old Row", host="alice",
                                              valid_from=1_796_029_200.0, valid_until=253402318740.0,
                                              allowed_areas=("lobby",)), actor="test")
    one = client.get("/api/v1/visitors/v-0badc0ffee")
    assert one.status_code == 200 and one.json()["valid_until"].startswith("invalid time"), one.text
    assert check_in(client, csrf, "v-0badc0ffee").status_code == 200
    assert client.get("/api/v1/visitors/today").status_code == 200
    assert client.get("/visitors").status_code == 200
    assert client.post("/api/v1/visitors/v-0badc0ffee/check-out", headers=csrf).status_code == 200


# ----------------------------------------------------------------- the login throttle


class SlowCountingHasher(PasswordHasher):
    """Production-strength argon2id (so checks overlap in a burst), counting verifications under a lock."""

    def __init__(self) -> None:
        super().__init__()
        self.verifies = 0
        self._lock = threading.Lock()

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 - argon2's own name
        with self._lock:
            self.verifies += 1
        return super().verify(hash, password)


def serve(app: FastAPI, config: Any = None) -> Iterator[str]:
    import uvicorn

    if config is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    assert wait_until(lambda: srv.started, 10)
    yield f"http://127.0.0.1:{config.port}"
    srv.should_exit = True
    thread.join(10)


def test_attack_parallel_login_burst_gets_no_more_password_checks_than_allowed(server: Server) -> None:
    hasher = SlowCountingHasher()
    app = create_app(server, hasher=hasher)
    app.state.desk.operators.add("dex", "desk", PASSWORDS["dex"], actor="test")
    hasher.verifies = 0
    burst = 8
    statuses: list[int] = []
    gate = threading.Barrier(burst)

    def attempt(base: str) -> None:
        gate.wait(10)
        r = httpx.post(f"{base}/api/v1/session", json={"name": "dex", "password": "guess guess guess"}, timeout=30)
        statuses.append(r.status_code)

    for base in serve(app):
        threads = [threading.Thread(target=attempt, args=(base,)) for _ in range(burst)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(statuses) == burst
    assert hasher.verifies <= auth_mod.ACCOUNT_DELAY_AFTER, f"{hasher.verifies} password checks in a burst"
    assert statuses.count(401) == hasher.verifies and statuses.count(429) == burst - hasher.verifies


# ----------------------------------------------------------------- forwarded headers


def forged_logins(base: str, server: Server) -> None:
    """Guess names from 'many addresses' (forged), then the right password: the real address is throttled and
    every audit record names the real client."""
    for i in range(auth_mod.ADDRESS_DELAY_AFTER):
        r = httpx.post(f"{base}/api/v1/session", json={"name": f"guess{i}", "password": "nope nope nope"},
                       headers={"X-Forwarded-For": f"203.0.113.{i + 1}"}, timeout=10)
        assert r.status_code == 401, r.text
    r = httpx.post(f"{base}/api/v1/session", json={"name": "ada", "password": PASSWORDS["ada"]},
                   headers={"X-Forwarded-For": "198.51.100.77"}, timeout=10)
    assert r.status_code == 429, "a forged X-Forwarded-For split the throttle"
    assert server.audit is not None
    clients = {r["details"].get("client") for r in server.audit.records() if r["action"] == "operator.login_failed"}
    assert clients == {"127.0.0.1"}, clients


def test_attack_forged_forwarded_for_at_the_demo_desk(server: Server) -> None:
    from simulators.demo import DemoDesk

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = argparse.Namespace(server=server)  # DemoDesk needs only the runner's server
    demo = DemoDesk(runner, "127.0.0.1", port)  # type: ignore[arg-type]
    assert demo.start() is None
    try:
        from server.operators import Operators

        Operators(server.store, audit=server.audit,
                  hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)).add(
            "ada", "admin", PASSWORDS["ada"], actor="test")
        forged_logins(f"http://127.0.0.1:{port}", server)
    finally:
        demo.stop()


def test_attack_forged_forwarded_for_at_doorkeep_desk(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """``doorkeep desk`` as started by an operator (no proxy flag): the config it builds, served for real."""
    import uvicorn

    import server.app as server_app
    from server.web import cli as desk_cli

    built: list[Any] = []

    class Capture:
        def __init__(self, config: Any) -> None:
            built.append(config)

        def run(self) -> None:
            return None

    monkeypatch.setattr(server_app, "bootstrap", lambda *a, **k: server)
    monkeypatch.setattr(server, "start", lambda *a, **k: None)
    monkeypatch.setattr(server, "stop", lambda *a, **k: None)
    monkeypatch.setattr(uvicorn, "Server", Capture)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = argparse.Namespace(site=ROOT / "doorkeep" / "sites" / "demo", data=None, host="127.0.0.1",
                              port=port, broker="mqtt://127.0.0.1:9", allow_plain_mqtt=True, ca=None, cert=None,
                              key=None, proxy_headers=False, forwarded_allow_ips=None)
    assert desk_cli.desk(args) == 0
    (config,) = built
    monkeypatch.undo()
    config.app.state.desk.operators.add("ada", "admin", PASSWORDS["ada"], actor="test")
    for base in serve(config.app, config):
        forged_logins(base, server)


def documented_factory_command() -> list[str]:
    """The ``uvicorn --factory`` command line docs/desk.md tells an operator to run."""
    text = (ROOT / "docs" / "desk.md").read_text()
    match = re.search(r"^uvicorn --factory server\.web\.app:create_app[^\n]*$", text, re.M)
    assert match, "docs/desk.md documents no uvicorn --factory command"
    return match.group(0).split()


def test_the_documented_uvicorn_command_trusts_no_forwarded_headers() -> None:
    from uvicorn.main import main as uvicorn_main

    argv = documented_factory_command()[1:]
    with uvicorn_main.make_context("uvicorn", argv) as ctx:
        params = ctx.params
    assert params["factory"] and params["app"] == "server.web.app:create_app"
    assert params["proxy_headers"] is False, "the documented command trusts X-Forwarded-For from 127.0.0.1"


def test_forwarded_allow_ips_names_addresses_never_everyone() -> None:
    assert parse_allow_ips(None) == [] and parse_allow_ips("") == []
    assert parse_allow_ips("127.0.0.1, 10.0.0.0/8 ,::1") == ["127.0.0.1", "10.0.0.0/8", "::1"]
    with pytest.raises(ValueError, match="every client"):
        parse_allow_ips("*")
    with pytest.raises(ValueError, match="not an IP"):
        parse_allow_ips("proxy.example")


def test_a_proxy_named_with_forwarded_allow_ips_is_trusted(server: Server) -> None:
    from server.web.serving import uvicorn_config

    app = create_app(server, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning", forwarded_allow_ips="127.0.0.1")
    for base in serve(app, config):
        r = httpx.post(f"{base}/api/v1/session", json={"name": "x", "password": "y"},
                       headers={"X-Forwarded-For": "203.0.113.5"}, timeout=10)
        assert r.status_code == 401
    assert server.audit is not None
    failed = [r for r in server.audit.records() if r["action"] == "operator.login_failed"]
    assert failed[0]["details"]["client"] == "203.0.113.5"
