"""server/store_siem.py on both engines: cursors started once at the end of every source, the queue fed with its
cursors in one transaction (a source queued twice is a no-op), read in order, confirmed and measured, each asserted
on SQLite and on PostgreSQL (tests/pg.py; skipped with the reason when no PostgreSQL answers).
"""

from __future__ import annotations

from typing import Any


from server.store import Store
from tests.pg import engine_store, engine_url, pg_url  # noqa: F401  (fixtures)
from tests.unit.test_store_engines import ev

AT = 1_780_000_000.0


def msg(source: str, stored: float, person: str | None = None) -> dict[str, Any]:
    return {"source": source, "kind": "access", "person": person, "stored_at": stored, "queued_at": stored + 1,
            "message": f"<134>1 {source}"}


def test_cursors_start_at_the_end_of_each_source_once(store: Store) -> None:
    rowid = store.ingest_event(ev("e1", 1), AT)
    store.append_audit(ts="2026-01-01T00:00:00.000Z", actor="a", action="x", target=None, details="{}",
                       digest=lambda seq, prev: "h")
    assert store.siem_cursors() == {}
    assert store.siem_begin() is True
    assert store.siem_cursors() == {"events": (float(rowid), "e1", AT), "alarms": (0.0, None, None),  # type: ignore[arg-type]
                                    "audit_log": (1.0, None, None)}
    store.ingest_event(ev("e2", 2), AT + 1)
    assert store.siem_begin() is False and store.siem_cursors()["events"][1] == "e1"  # what came since is owed


def test_the_queue_is_fed_in_order_without_repeats_confirmed_and_measured(store: Store) -> None:
    assert store.siem_depth() == (0, None)
    assert store.queue_siem([msg("event:e1", AT + 5, "ann"), msg("event:e2", AT + 2)],
                            {"events": (2.0, "e2", AT + 2)}) == 2
    assert store.queue_siem([msg("event:e2", AT + 2), msg("alarm:a1", AT + 7)], {"alarms": (1.0, "a1", AT)}) == 1
    assert store.siem_cursors() == {"events": (2.0, "e2", AT + 2), "alarms": (1.0, "a1", AT)}
    pending = store.siem_pending(0, 10)
    assert [m for _, m in pending] == ["<134>1 event:e1", "<134>1 event:e2", "<134>1 alarm:a1"]
    ids = [i for i, _ in pending]
    assert ids == sorted(ids) and store.siem_pending(ids[0], 1) == [pending[1]]
    assert store.siem_depth() == (3, AT + 2)
    assert store.siem_confirm(ids[1]) == 2 and store.siem_depth() == (1, AT + 7)
    assert store.siem_confirm(ids[2]) == 1
    # A message queued after the queue ran empty still gets a higher id (AUTOINCREMENT / identity).
    store.queue_siem([msg("audit:9", AT)], {})
    assert store.siem_pending(ids[2], 10)[0][0] > ids[2]
