"""The demo site with its server on PostgreSQL (site.toml ``[store] url``; a fresh database from tests/pg.py), real
Mosquitto, real edges (docs/scale.md "State in PostgreSQL"):
- badges granted and refused are stored once, in PostgreSQL (nothing in a doorkeep.db);
- the desk's event feed shows them and an alarm (a forced door) is acknowledged through the desk API;
- a server restart keeps everything;
- PostgreSQL ending the server's backend (``pg_terminate_backend``) while events flow loses nothing: the store
  reconnects and the bus retries, as for a full disk; the doors kept deciding meanwhile.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest
from argon2 import PasswordHasher

from server.web.app import create_app
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until
from tests.pg import ADMIN_URL, pg_url  # noqa: F401  (fixture)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"
UNKNOWN = "0F00FFFF01"


@pytest.fixture
def site(mosquitto: Any, tmp_path: Path, pg_url: str) -> Iterator[SiteRunner]:  # noqa: F811
    site_dir = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site_dir, ignore=shutil.ignore_patterns("keys", "pki", "var"))
    with (site_dir / "site.toml").open("a", encoding="utf-8") as f:
        f.write(f'\n[store]\nurl = "{pg_url}"\n')
    runner = SiteRunner.from_dir(site_dir, broker_url=mosquitto.url, data_dir=tmp_path / "run")
    assert runner.bundle.store.url == pg_url
    runner.start()
    try:
        assert runner.wait_connected(10), "edges and server did not connect to Mosquitto"
        assert runner.wait_policies(10), "the edges did not receive the server's signed policy"
        yield runner
    finally:
        runner.stop()


def _access(runner: SiteRunner) -> list[dict[str, Any]]:
    assert runner.server is not None
    return [e for e in runner.server.store.events(500) if e["type"] == "access"]


def _pg_count(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        return int(conn.execute(sql).fetchone()[0])


def _desk(runner: SiteRunner) -> tuple[TestClient, dict[str, str]]:
    assert runner.server is not None
    app = create_app(runner.server, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    try:
        app.state.desk.operators.add("ada", "admin", "ada lovelace engine notes", actor="test")
    except Exception:  # after a restart: already in the store (PostgreSQL kept it)
        pass
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/api/v1/session", json={"name": "ada", "password": "ada lovelace engine notes"})
    assert r.status_code == 200, r.text
    return client, {"X-CSRF-Token": r.json()["csrf_token"]}


def test_demo_site_runs_on_postgresql_and_keeps_everything_across_a_restart(site: SiteRunner, pg_url: str) -> None:  # noqa: F811
    assert site.server is not None and site.server.store.dialect == "postgresql"
    lobby = site.doors["lobby_in"]
    lobby.reader.badge(ALICE)
    assert lobby.door.wait_relay(True, 3.0)
    lobby.reader.badge(UNKNOWN)
    assert wait_until(lambda: len(_access(site)) >= 2, 5)
    reasons = sorted(e["reason"] for e in _access(site))
    assert reasons == ["granted", "unknown_credential"]
    assert _pg_count(pg_url, "SELECT count(*) FROM events WHERE type = 'access'") == 2  # once each, in PostgreSQL
    assert not (site.data_dir / "server" / "doorkeep.db").exists()  # type: ignore[operator]

    site.doors["lobby_out"].door.open()  # forced: an alarm
    assert wait_until(lambda: site.server.store.open_alarms(type="forced_open"), 5)  # type: ignore[union-attr]
    site.doors["lobby_out"].door.close()

    client, csrf = _desk(site)
    feed = client.get("/api/v1/events").json()["events"]
    assert {e["id"] for e in feed} >= {e["id"] for e in _access(site)}
    alarm = client.get("/api/v1/alarms").json()["alarms"]
    forced = next(a for a in alarm if a["type"] == "forced_open")
    r = client.post(f"/api/v1/alarms/{forced['id']}/acknowledge", headers=csrf)
    assert r.status_code == 200, r.text

    before = {e["id"] for e in site.server.store.events(500)}
    site.stop_server()
    site.start_server()
    assert site.server is not None and site.server.store.dialect == "postgresql"
    assert {e["id"] for e in site.server.store.events(500)} == before
    stored = site.server.store.open_alarms(type="forced_open")
    assert stored and stored[0]["acknowledged_by"] == "ada"
    client, _ = _desk(site)
    assert client.get("/api/v1/events").status_code == 200
    assert _pg_count(pg_url, "SELECT count(*) FROM audit_log WHERE action LIKE 'alarm.%'") >= 1


def test_a_killed_backend_loses_no_event_while_the_doors_keep_deciding(site: SiteRunner, pg_url: str) -> None:  # noqa: F811
    assert site.server is not None
    lobby = site.doors["lobby_in"]
    with site.server.store.connection_for_tests(port=True) as conn:
        pid = conn.raw.info.backend_pid
    decided: list[Any] = []  # what the lobby's edge decided, whatever the store does
    site.agents["pi-lobby"].listeners.append(lambda ev: decided.append(ev) if ev.type == "access" else None)
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        for n in range(6):  # a different unknown card each time: a reader ignores the same card read twice at once
            card = f"0F00FFFF{n + 10:02d}"
            lobby.reader.badge(card)
            if n == 2:  # while events flow: the server's connection is ended under it
                assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone() == (True,)
            # The door decided (the server answers from memory; the store is not on that path).
            assert wait_until(lambda: len(decided) == n + 1, 5), n
            assert decided[-1].decided_by == "server" and decided[-1].reason == "unknown_credential"
    # Every badge decided and stored exactly once, after the reconnect.
    assert wait_until(lambda: _pg_count(pg_url, "SELECT count(*) FROM events WHERE type = 'access'") >= 6, 15)
    assert wait_until(site.edges_idle, 10)
    assert _pg_count(pg_url, "SELECT count(*) FROM events WHERE type = 'access'") == 6
    assert _pg_count(pg_url, "SELECT count(DISTINCT id) FROM events") == _pg_count(pg_url, "SELECT count(*) FROM events")
    store = site.server.store
    with store.connection_for_tests(port=True) as conn:
        assert conn.reconnects >= 1 and conn.raw.info.backend_pid != pid
    assert site.server.bus.counters["store_retries"] >= 1  # the bus saw the loss and retried, as for a full disk
