"""Group commit on the server's store thread (server/bus.py ``_store_batch``, server/store.py ``transaction``).

Events and deferred presence writes that queue up together are stored in one transaction. These tests pin
what must not change with it: every event is stored once and in order, duplicates and malformed events are
counted, an event is acknowledged to the broker only once committed, a refused disk is retried (never
dropped, never mistaken for duplicates after the rollback), and a shutdown mid-retry acknowledges nothing.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.contract import EventMsg, Topics, parse_topic
from doorkeep.envelope import SnapshotKeys
from server.app import Server, bootstrap
from server.bus import _Work
from simulators.site import DEMO_SITE


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    # Never started: the bus's store-thread entry points are called directly, as a delivery hands them over.
    srv = bootstrap(load_site_dir(DEMO_SITE), tmp_path, BrokerConfig("mqtt://127.0.0.1:1", allow_plain=True),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate())
    acks: list[int] = []
    srv.bus._client.ack = lambda mid, qos: acks.append(mid)  # type: ignore[method-assign]
    srv.acks = acks  # type: ignore[attr-defined]
    yield srv
    srv.store.close()


def event(seq: int, eid: str | None = None) -> EventMsg:
    return EventMsg(id=eid or f"ev{seq:04d}", seq=seq, ts=f"2026-11-30T09:00:{seq % 60:02d}.000Z", device="pi-lobby",
                    door="lobby_in", type="access", decision="granted", reason="granted", decided_by="server",
                    person="alice", credential_hash="ab" * 32, credential_last4="B2C3", transaction=f"tx{seq}")


def work(server: Server, ev: EventMsg, mid: int) -> _Work:
    topic = parse_topic(Topics(server.site.id).event(ev.device, ev.door))
    return _Work("event", topic, ev.encode(), 1000.0 + mid, mid=mid, qos=1)


def stored_ids(server: Server) -> list[str]:
    with server.store.connection_for_tests() as db:
        return [r["id"] for r in db.query("SELECT id FROM events ORDER BY rowid")]


def test_batch_stores_in_order_runs_deferred_writes_and_acks_each(server: Server) -> None:
    ran: list[str] = []
    bad = work(server, event(3), 3)
    bad = _Work("event", bad.topic, b'{"schema": "doorkeep.event/1"}', bad.received_at, mid=3, qos=1)
    batch = [work(server, event(1), 1), work(server, event(2), 2), bad,
             _Work("call", None, b"", 0.0, call=lambda: (server.store.upsert("presence", {
                 "person": "alice", "area": "lobby", "since": 1.0}, "person"), ran.append("presence"))),
             work(server, event(4), 4), work(server, event(2), 5)]  # the last one: a re-delivery of event 2
    server.bus._store_batch(batch)
    assert stored_ids(server) == ["ev0001", "ev0002", "ev0004"]
    assert ran == ["presence"]
    assert [r["area"] for r in server.store.rows("presence") if r["person"] == "alice"] == ["lobby"]
    assert server.bus.counters["events"] == 3
    assert server.bus.counters["duplicate_events"] == 1
    assert server.bus.counters["malformed"] == 1
    assert sorted(server.acks) == [1, 2, 3, 4, 5]  # type: ignore[attr-defined]
    assert server.bus._done == len(batch)


def test_refused_disk_is_retried_for_the_whole_batch_without_false_duplicates(server: Server,
                                                                               monkeypatch: Any) -> None:
    real = server.store.ingest_event
    calls = {"n": 0}

    def flaky(ev: EventMsg, received_at: float) -> int | None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second row of the first attempt: the first row is already written
            raise sqlite3.OperationalError("database or disk is full")
        return real(ev, received_at)

    monkeypatch.setattr(server.store, "ingest_event", flaky)
    server.bus._store_batch([work(server, event(i), i) for i in (1, 2, 3)])
    assert stored_ids(server) == ["ev0001", "ev0002", "ev0003"]
    assert server.bus.counters["store_retries"] == 1
    assert server.bus.counters["events"] == 3 and server.bus.counters["duplicate_events"] == 0
    assert sorted(server.acks) == [1, 2, 3]  # type: ignore[attr-defined]


def test_shutdown_while_the_disk_refuses_acknowledges_nothing(server: Server, monkeypatch: Any) -> None:
    def full(ev: EventMsg, received_at: float) -> int | None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(server.store, "ingest_event", full)
    server.bus._stopping.set()
    server.bus._store_batch([work(server, event(i), i) for i in (1, 2)])
    assert stored_ids(server) == []
    assert server.acks == []  # type: ignore[attr-defined]  # the broker keeps them for the next server
    assert server.bus._done == 2


def test_transaction_is_all_or_nothing(server: Server) -> None:
    store = server.store
    with pytest.raises(RuntimeError), store.transaction():
        assert store.ingest_event(event(1), 1.0) is not None
        store.upsert("presence", {"person": "bob", "area": "lobby", "since": 1.0}, "person")
        raise RuntimeError("boom")
    assert stored_ids(server) == []
    assert not [r for r in store.rows("presence") if r["person"] == "bob"]
    # Rolled back, so the same event is new afterwards, not a duplicate.
    assert store.ingest_events([(event(1), 1.0), (event(1), 1.0)])[1] is None
    assert stored_ids(server) == ["ev0001"]
