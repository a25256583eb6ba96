"""``doorkeep store migrate`` (server/store_migrate.py): a real SQLite store into a fresh PostgreSQL database,
counted and verified, refused when it must be (docs/scale.md "State in PostgreSQL")."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from doorkeep.clock import FakeClock
from server import sqldb
from server.audit import AuditLog
from server.store import Store
from server.store_migrate import MigrateError, migrate_store
from tests.pg import pg_url  # noqa: F401  (fixture)
from tests.unit.test_store_engines import ev
from tests.unit.test_store_engines_desk import card, person
from tests.unit.test_store_engines_webhooks import sub

AT = 1_770_000_000.0


def _site_history(data: Path) -> Store:
    """A store with a bit of everything: events, alarms, audit records, people and cards, an operator, an
    incident, a webhook, a queued mail (bytes), a visitor."""
    store = Store(data)
    clock = FakeClock(AT)
    audit = AuditLog(store, clock)
    for i in range(1, 301):
        store.insert_event(ev(f"e{i}", i, decision="granted" if i % 3 else "denied"), AT + i)
    store.raise_alarm("tamper", key="tamper:lobby_in", at=AT, device="pi-lobby", door="lobby_in")
    store.raise_alarm("forced_open", key="forced:lab", at=AT + 5, device="pi-lab", door="lab")
    store.add_people_rows([person("p1", "Al"), person("p2", "Bo")], [card("c1", "p1"), card("c2", "p2")], AT)
    store.insert_operator("ann", "admin", "argon2id$hash", AT)
    store.create_incident(title="tailgating", severity="high", actor="ann", at=AT, assignee=None,
                          items=[("event", "e3")], note="seen on camera")
    store.add_webhook(sub("w1"))
    store.enqueue_mail("m1", "invitation", "bo@example.com", "Your visit", b"\x00\xffMIME bytes", AT)
    store.save_visitor("v1", name="Vi", status="registered", registered_at=AT)
    for n in range(5):
        audit.record("ann", "person.update", f"p{n}", {"n": n})
    return store


def test_migrate_copies_everything_verifies_and_refuses_a_second_run(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    _site_history(tmp_path / "data").close()
    source = f"sqlite:///{tmp_path / 'data' / 'doorkeep.db'}"
    report = migrate_store(source, pg_url)
    assert report.ok, report.problems
    counts = {t: (s, d) for t, s, d in report.counts}
    assert counts["events"] == (300, 300) and counts["alarms"] == (2, 2) and counts["audit_log"][0] >= 5
    for table in ("people", "cards", "operators", "incidents", "webhook_subscriptions", "mail_outbox", "visitors"):
        assert counts[table][0] >= 1 and counts[table][0] == counts[table][1], table
    assert report.audit_head is not None and report.audit_records == counts["audit_log"][0]

    # The server's store on PostgreSQL reads the same history, in the same arrival order, and goes on from it.
    lite = sqlite3.connect(tmp_path / "data" / "doorkeep.db")
    store = Store(tmp_path / "data", url=pg_url)
    try:
        with store.connection_for_tests(port=True) as conn:
            assert conn.execute("SELECT id FROM events ORDER BY rowid").fetchall() == \
                lite.execute("SELECT id FROM events ORDER BY rowid").fetchall()
            assert conn.execute("SELECT message FROM mail_outbox").fetchone()[0] == b"\x00\xffMIME bytes"
        assert store.ingest_event(ev("after", 301), AT + 400) == 301  # the identity moved past the copied rowids
        assert AuditLog(store).record("ann", "store.migrated") == report.audit_head[0] + 1
        assert AuditLog(store).verify().ok
    finally:
        store.close()
        lite.close()

    with pytest.raises(MigrateError) as info:
        migrate_store(source, pg_url)
    assert "not empty" in str(info.value) and "events (301 rows)" in str(info.value)


def test_a_tampered_audit_row_on_the_target_fails_the_verification_naming_it(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    _site_history(tmp_path / "data").close()

    def tamper(conn: sqldb.Connection) -> None:
        conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
        conn.execute("UPDATE audit_log SET target = 'p9' WHERE seq = 3")
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")

    report = migrate_store(f"sqlite:///{tmp_path / 'data' / 'doorkeep.db'}", pg_url, before_verify=tamper)
    assert not report.ok
    assert any("audit chain" in p and "record 3" in p for p in report.problems), report.problems


def test_migrate_refuses_while_a_server_has_the_store_open(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    running = _site_history(tmp_path / "data")
    try:
        with pytest.raises(MigrateError) as info:
            migrate_store(f"sqlite:///{tmp_path / 'data' / 'doorkeep.db'}", pg_url)
        assert "in use" in str(info.value) and "stop the server" in str(info.value)
    finally:
        running.close()
    with psycopg.connect(pg_url) as conn:  # nothing was written to the target
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone() == (0,)


def test_migrate_refuses_a_database_with_foreign_tables_naming_them(tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    _site_history(tmp_path / "data").close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(MigrateError) as info:
        migrate_store(f"sqlite:///{tmp_path / 'data' / 'doorkeep.db'}", pg_url)
    assert "invoices" in str(info.value)


def test_migrate_refuses_a_url_with_a_password(tmp_path: Path) -> None:
    with pytest.raises(MigrateError) as info:
        migrate_store(f"sqlite:///{tmp_path / 'doorkeep.db'}", "postgresql://u:secret@127.0.0.1/db")
    assert "password" in str(info.value) and "secret" not in str(info.value)


def test_the_command_prints_the_table_of_counts(tmp_path: Path, pg_url: str,  # noqa: F811
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from doorkeep.cli import main

    _site_history(tmp_path / "data").close()
    assert main(["store", "migrate", "--from", f"sqlite:///{tmp_path / 'data' / 'doorkeep.db'}",
                 "--to", pg_url]) == 0
    out = capsys.readouterr().out
    assert "events" in out and "300" in out and "verified" in out and "rows/s" in out
