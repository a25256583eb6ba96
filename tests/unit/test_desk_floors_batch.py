"""The floor view reads every door's last event and recent snapshot-bearing events in one store statement
(server/store_desk.py ``door_latest_events``), with the same answer as the two per-door pages it replaced, on
the ``events(door)`` index (never a scan of the events table, which grows with the store).

Real parts: a real ``Server`` on the demo site; events enter through the bus's store-thread entry point.
"""

from __future__ import annotations

from doorkeep import vocabulary
from server.app import Server
from server.web.floors import SNAPSHOT_LOOKBACK
from tests.unit import test_desk_live as live_tests
from tests.unit.test_desk_live import event, ingest

clock, server = live_tests.clock, live_tests.server


def test_one_statement_answers_what_two_queries_per_door_did(server: Server) -> None:
    seq = 0
    for i in range(8):  # the lobby: badges (with snapshots) and door movements, interleaved
        seq += 1
        ingest(server, event(f"b-{i}", seq, door="lobby_in"))
        seq += 1
        ingest(server, event(f"o-{i}", seq, door="lobby_in", type="door_opened", decision=None, reason=None,
                             person=None, snapshot=None, decided_by=None, credential_hash=None,
                             credential_last4=None, transaction=None, latency_ms=None))
    seq += 1
    ingest(server, event("lab-1", seq, door="lab", decision="denied", reason="no_access", person="bob"))
    store = server.store
    types = sorted(vocabulary.SNAPSHOT_EVENTS)
    doors = ["lobby_in", "lab", "lobby_out", "no-such-door"]
    got = store.door_latest_events(doors, types, SNAPSHOT_LOOKBACK)
    assert set(got) == {"lobby_in", "lab"}  # doors without events are absent
    for door in ("lobby_in", "lab"):
        last, snaps = got[door]
        assert last == store.event_page(door=door, limit=1)[0]
        assert snaps == store.event_page(door=door, types=types, limit=SNAPSHOT_LOOKBACK)
    assert got["lobby_in"][0]["id"] == "o-7" and [r["id"] for r in got["lobby_in"][1]] == \
        ["b-7", "b-6", "b-5", "b-4", "b-3"]
    assert store.door_latest_events([], types, SNAPSHOT_LOOKBACK) == {}


def test_the_batched_statement_reads_the_door_index_not_the_whole_table(server: Server) -> None:
    seen: list[str] = []
    with server.store.connection_for_tests() as db:
        db.conn.set_trace_callback(seen.append)
        try:
            server.store.door_latest_events(["lobby_in", "lab"], sorted(vocabulary.SNAPSHOT_EVENTS), 5)
        finally:
            db.conn.set_trace_callback(None)
        (sql,) = [s for s in seen if "json_each" in s]
        plan = " | ".join(str(r[-1]) for r in db.conn.execute("EXPLAIN QUERY PLAN " + sql.replace(
            "?", "NULL")).fetchall())
    assert "events_door" in plan, plan
    assert "SCAN x" not in plan and "SCAN z" not in plan and "SCAN e " not in plan, plan
