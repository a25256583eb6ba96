"""server/store_cursors.py on both engines: reading events, alarms and the audit log after a cursor, in arrival order,
and resuming after retention deleted the row a cursor stopped at (SQLite hands that rowid out again, PostgreSQL's
identity never does), each asserted on SQLite and on PostgreSQL (tests/pg.py; skipped when no PostgreSQL answers).
"""

from __future__ import annotations

import pytest

from server.store import Store
from server.store_cursors import cursor_at_end
from tests.pg import engine_store, engine_url, pg_url  # noqa: F401  (fixtures)
from tests.unit.test_store_engines import ev

AT = 1_780_000_000.0


def test_source_rows_read_in_arrival_order_by_type_and_limit_and_move_the_cursor(store: Store) -> None:
    rid = [store.ingest_event(ev(f"e{i}", i, type="access" if i % 2 else "door_held", decision=None), AT + i)
           for i in range(1, 6)]
    with store.connection_for_tests(port=True) as conn:
        start = cursor_at_end(conn, "events")
    assert start == (float(rid[-1]), "e5", AT + 5)
    rows, cur = store.source_rows("events", (0.0, None, None), 2)
    assert [(r["rowid"], r["id"]) for r in rows] == [(rid[0], "e1"), (rid[1], "e2")]
    assert list(rows[0])[:3] == ["rowid", "id", "seq"] and cur == (float(rid[1]), "e2", AT + 2)
    rows, cur = store.source_rows("events", cur, 10, types=["access"])
    assert [r["id"] for r in rows] == ["e3", "e5"] and cur == (float(rid[4]), "e5", AT + 5)
    assert store.source_rows("events", cur, 10) == ([], cur)
    rows, moved = store.source_rows("events", (0.0, None, None), 10, types=[])
    assert rows == [] and moved == (float(rid[4]), "e5", AT + 5)


def test_a_cursor_whose_row_retention_deleted_reads_only_what_came_since(store: Store) -> None:
    for i in range(1, 4):
        store.ingest_event(ev(f"e{i}", i), AT + i)
    _, cur = store.source_rows("events", (0.0, None, None), 10)
    assert cur[1] == "e3"
    store.delete_events(["e3"])  # the newest row, the one the cursor stopped at
    new = store.ingest_event(ev("e4", 4), AT + 10)  # SQLite may give it e3's rowid again; PostgreSQL never does
    rows, after = store.source_rows("events", cur, 10)
    assert [r["id"] for r in rows] == ["e4"]
    # On SQLite e4 took e3's rowid, so the cursor's number did not move and it is returned as it was (e4 is then
    # read again by the next call: the queues' unique keys make that a no-op); on PostgreSQL it moves onto e4.
    assert after == ((3.0, "e3", AT + 3) if store.dialect == "sqlite" else (float(new), "e4", AT + 10))  # type: ignore[arg-type]
    store.ingest_event(ev("e5", 5), AT + 11)
    assert [r["id"] for r in store.source_rows("events", after, 10)[0]] == (
        ["e4", "e5"] if store.dialect == "sqlite" else ["e5"])


def test_alarms_and_the_audit_log_by_seq_on_both_engines(store: Store) -> None:
    store.raise_alarm("forced_open", key="a1", at=AT, device="d", door="x", once=True)
    rows, cur = store.source_rows("alarms", (0.0, None, None), 10)
    assert [r["id"] for r in rows] == ["a1"] and cur[1:] == ("a1", AT)
    for i in range(3):
        store.append_audit(ts=f"2026-01-0{i + 1}T00:00:00.000Z", actor="ann", action="x", target=None,
                           details="{}", digest=lambda seq, prev: f"h{seq}")
    with store.connection_for_tests(port=True) as conn:
        assert cursor_at_end(conn, "audit_log") == (3.0, None, None)
    rows, cur = store.source_rows("audit_log", (1.0, None, None), 10)
    assert [(r["rowid"], r["seq"], r["hash"]) for r in rows] == [(2, 2, "h2"), (3, 3, "h3")] and cur == (3.0, None, None)
    with pytest.raises(ValueError):
        store.source_rows("people", (0.0, None, None), 1)
