"""`doorkeep demo --workers 2 --store postgresql://…` as a new user runs it (simulators/demo.py): a private Mosquitto,
two server workers on a fresh PostgreSQL database, the desk on the leader's server; and the database the demo
takes, empties or refuses (``prepare_store``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from server.workers import workers_status
from simulators.brokers import free_port
from simulators.demo import DEMO_MARK, DemoError, prepare_store
from simulators.site import mosquitto_installed
from tests.pg import pg_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e


def test_demo_with_two_workers_plays_the_morning_and_both_decide(pg_url: str) -> None:  # noqa: F811
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it): the workers need shared subscriptions")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "doorkeep", "--log-level", "WARNING", "demo", "--workers", "2",
                             "--store", pg_url, "--duration", "20", "--desk-port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    desk_seen = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("security desk: http"):
                desk_seen.set()
        desk_seen.set()  # the process ended: stop waiting

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # The desk runs on the leader's server while the morning plays: ready means its store and broker answer.
        assert desk_seen.wait(60) and any(line.startswith("security desk: http") for line in lines), \
            "".join(lines) + (proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as resp:
            assert resp.status == 200 and json.load(resp)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    out = "".join(lines)
    assert proc.returncode == 0, out + (proc.stderr.read() if proc.stderr else "")
    assert "(created)" not in out and "(empty)" in out  # the fixture made the database
    assert "UNEXPECTED" not in out
    rows = [line for line in out.splitlines() if line[:2].isdigit() and ":" in line[:8]]
    assert any("Alice Archer" in r and "granted" in r and " ms" in r for r in rows), out
    assert any("Bob Baker" in r and "no_access" in r for r in rows), out
    decisions = {name: (int(n), role) for name, n, role in re.findall(r"^worker (w\d): (\d+) decisions, (\w+)$", out,
                                                                     re.M)}
    assert decisions.keys() == {"w1", "w2"}, out
    assert decisions["w1"][1] == "leads" and decisions["w2"][1] == "standby", out
    assert decisions["w1"][0] >= 1 and decisions["w2"][0] >= 1, f"a worker decided nothing: {decisions}"
    assert "all relays de-energised: yes" in out
    # The store agrees: every badge was answered by a worker (none decided offline at the door), as many as the
    # workers counted, and each worker's last heartbeat shows its share.
    with psycopg.connect(pg_url) as conn:
        by = dict(conn.execute("SELECT decided_by, count(*) FROM events WHERE type = 'access' GROUP BY 1").fetchall())
    assert by == {"server": decisions["w1"][0] + decisions["w2"][0]}, by
    assert {w["name"]: w["leader"] for w in workers_status(pg_url, "demo")} == {"w1": True, "w2": False}


def test_demo_refuses_workers_without_a_store_and_names_the_fix() -> None:
    proc = subprocess.run([sys.executable, "-m", "doorkeep", "demo", "--workers", "2", "--no-desk"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--workers 2 needs --store" in proc.stderr
    assert "fix: add --store postgresql://USER@HOST:PORT/DB" in proc.stderr
    assert proc.stdout == ""  # refused before anything started


def _relations(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_store_is_taken_empty_emptied_when_a_previous_demos_and_refused_otherwise(pg_url: str) -> None:  # noqa: F811
    assert prepare_store(pg_url) == "empty"
    assert _relations(pg_url) == {DEMO_MARK}
    with psycopg.connect(pg_url, autocommit=True) as conn:  # what a demo's server leaves behind
        conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY); CREATE FUNCTION dk_f() RETURNS int "
                     "LANGUAGE sql AS 'SELECT 1'")
        # A client still connected (a demo running): not emptied under it.
        with pytest.raises(DemoError, match="other client"):
            prepare_store(pg_url)
    assert prepare_store(pg_url) == "a previous demo's, emptied"
    assert _relations(pg_url) == {DEMO_MARK}
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname = 'dk_f'").fetchone() == (0,)
        # A database the demo did not fill (a real site's store, say): refused, untouched.
        conn.execute(f"DROP TABLE {DEMO_MARK}; CREATE TABLE people (id TEXT)")
    with pytest.raises(DemoError, match="not empty and is not a previous demo's"):
        prepare_store(pg_url)
    assert _relations(pg_url) == {"people"}
    with pytest.raises(DemoError, match="PostgreSQL's own database"):
        prepare_store(urlunsplit(urlsplit(pg_url)._replace(path="/postgres")))
    # A database that does not exist yet is created.
    missing = pg_url + "_new"
    try:
        assert prepare_store(missing) == "created"
        assert _relations(missing) == {DEMO_MARK}
    finally:
        with psycopg.connect(urlunsplit(urlsplit(pg_url)._replace(path="/postgres")), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{urlsplit(missing).path.strip("/")}" WITH (FORCE)')
