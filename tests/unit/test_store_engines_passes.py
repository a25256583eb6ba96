"""server/store_passes.py on both engines: the ``visitor_passes`` table as server/passes.py writes and reads it
(through the store's own ``upsert``, ``rows`` and ``delete``: the module holds only the migration), with the
keyed hash unique, and the rows read back as the credentials the decisions use (``pass_credentials``).

The whole pass service needs a server whose other parts (the people store, the audit log's callers) are ported by
another change; tests/unit/test_passes.py covers it on SQLite. PostgreSQL comes from tests/pg.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from doorkeep.decision import CredentialState
from server.directory import Visitor
from server.passes import pass_credentials
from server.store import Store
from server.store_passes import TABLE
from tests.pg import engine_store, engine_url, pg_url  # noqa: F401  (fixtures)


def row(visit: str, serial: int, **kw: Any) -> dict[str, Any]:
    return {"id": f"{visit}#{serial}", "visit": visit, "serial": serial, "hash": f"h-{visit}-{serial}",
            "last4": "AB12", "key_id": "k1", "not_before": 1_796_029_200, "not_after": 1_796_043_600,
            "state": "active", "issued_at": 1.0, "ended_at": None, "issued_by": "desk", **kw}


def test_passes_are_issued_replaced_and_read_back_as_credentials(store: Store) -> None:
    with store.transaction():  # issue_pass: the first pass of the visit
        store.upsert(TABLE, row("v-1", 1), "id")
    first = store.rows(TABLE)[0]
    with store.transaction():  # re-issue: the earlier one replaced, the new one active, in one transaction
        store.upsert(TABLE, {**first, "state": "replaced", "ended_at": 2.0}, "id")
        store.upsert(TABLE, row("v-1", 2, issued_at=2.0), "id")
    store.upsert(TABLE, row("v-2", 1, state="lost", ended_at=3.0), "id")
    rows = sorted(store.rows(TABLE), key=lambda r: r["id"])
    assert [(r["id"], r["serial"], r["state"], r["ended_at"]) for r in rows] == [
        ("v-1#1", 1, "replaced", 2.0), ("v-1#2", 2, "active", None), ("v-2#1", 1, "lost", 3.0)]
    assert all(set(r) == set(row("x", 1)) for r in rows)  # no engine column leaks out
    assert rows[1]["not_after"] == 1_796_043_600 and isinstance(rows[1]["not_after"], int)
    visitors = {v.id: v for v in (Visitor("v-1", "Grace", "alice", 0.0, 9e9, ("lobby",), status="checked_in"),
                                  Visitor("v-2", "Ada", "alice", 0.0, 9e9, ("lobby",)))}
    creds = pass_credentials(rows, visitors)
    assert {h: (c.person, c.state) for h, c in creds.items()} == {
        "h-v-1-1": ("v-1", CredentialState.REVOKED), "h-v-1-2": ("v-1", CredentialState.ACTIVE),
        "h-v-2-1": ("v-2", CredentialState.LOST)}
    store.delete(TABLE, "v-2#1")  # the directory drops the passes of a visit gone from the register
    assert [r["id"] for r in store.rows(TABLE)] != [] and "v-2#1" not in {r["id"] for r in store.rows(TABLE)}


def test_a_keyed_hash_names_one_pass_only(store: Store) -> None:
    store.upsert(TABLE, row("v-1", 1), "id")
    with store.connection_for_tests(port=True) as conn:
        integrity = conn.IntegrityError
    with pytest.raises(integrity):
        store.upsert(TABLE, row("v-2", 1, hash="h-v-1-1"), "id")
    assert [r["id"] for r in store.rows(TABLE)] == ["v-1#1"]
