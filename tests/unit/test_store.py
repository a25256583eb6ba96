"""The event store: migrations, idempotent ingest, snapshot linking, WAL, concurrent writers."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
import sqlite_utils

from doorkeep.contract import EventMsg
from server import store as store_mod
from doorkeep.envelope import (
    EnvelopeError,
    SnapshotKeys,
    SnapshotRef,
    init_data_keys,
    load_snapshot_keys,
    parse_sealed,
    seal,
)
from server.errors import StoreError
from server.store import MIGRATIONS, Store, migrate
from simulators.wait import wait_until

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
KEYS = SnapshotKeys.generate()


def sealed(eid: str, jpeg: bytes = JPEG, device: str = "pi-lobby") -> bytes:
    """A snapshot as an edge sends it (doorkeep/envelope.py)."""
    return seal(jpeg, KEYS.recipient, SnapshotRef("demo", device, eid))


def ev(eid: str = "ev-1", seq: int = 1, door: str = "lobby_in", ts: str = "2026-03-30T09:00:00.000Z",
       **kw: object) -> EventMsg:
    base = EventMsg(id=eid, seq=seq, ts=ts, device="pi-lobby", door=door, type="access", decision="granted",
                    reason="granted", decided_by="server", person="alice", credential_hash="ab" * 32,
                    credential_last4="B2C3", transaction=f"tx-{eid}", latency_ms=12.5, snapshot=eid,
                    detail={"k": "v"})
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data", keys=KEYS)
    yield s
    s.close()


# -------------------------------------------------------------- migrations


def test_migrations_applied_once_and_recorded(tmp_path: Path) -> None:
    s = Store(tmp_path)
    with s.connection_for_tests() as db:
        names = [r["name"] for r in db["_migrations"].rows]
        assert names == [name for name, _ in MIGRATIONS]
        assert {"events", "snapshots", "_migrations"} <= set(db.table_names())
        assert migrate(db) == []  # nothing left to apply
    s.insert_event(ev(), 1.0)
    s.close()

    again = Store(tmp_path)  # re-opening applies nothing new and keeps the data
    with again.connection_for_tests() as db:
        assert [r["name"] for r in db["_migrations"].rows] == names
        assert db["_migrations"].count == len(MIGRATIONS)
    assert again.count_events() == 1
    again.close()


def test_fresh_database_migrate_reports_what_it_applied(tmp_path: Path) -> None:
    db = sqlite_utils.Database(sqlite3.connect(tmp_path / "x.db"))
    assert migrate(db) == [name for name, _ in MIGRATIONS]
    assert migrate(db) == []


def test_failed_migration_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A migration that fails half-way leaves nothing behind, so it can be fixed and re-run."""

    def broken(db: sqlite_utils.Database) -> None:
        db["extra"].create({"id": int}, pk="id")
        raise RuntimeError("boom")

    def fixed(db: sqlite_utils.Database) -> None:
        db["extra"].create({"id": int, "name": str}, pk="id")

    db = sqlite_utils.Database(sqlite3.connect(tmp_path / "x.db"))
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, ("999_extra", broken)])
    with pytest.raises(RuntimeError):
        migrate(db)
    assert "extra" not in db.table_names()
    assert "999_extra" not in {r["name"] for r in db["_migrations"].rows}
    assert {"events", "snapshots"} <= set(db.table_names())  # the good migration before it stayed

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*MIGRATIONS, ("999_extra", fixed)])
    assert migrate(db) == ["999_extra"]
    assert set(db["extra"].columns_dict) == {"id", "name"}


def test_wal_mode(store: Store) -> None:
    with store.connection_for_tests() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ------------------------------------------------------------------ events


def test_insert_event_is_idempotent(store: Store) -> None:
    assert store.insert_event(ev(), 1.0) is True
    assert store.insert_event(ev(), 2.0) is False
    assert store.insert_event(ev(latency_ms=99.0), 3.0) is False  # a re-delivery never overwrites
    assert store.count_events() == 1
    row = store.event("ev-1")
    assert row is not None
    assert row["received_at"] == 1.0 and row["latency_ms"] == 12.5


def test_event_row_holds_every_field(store: Store) -> None:
    store.insert_event(ev(), 5.0)
    row = store.event("ev-1")
    assert row is not None
    assert row["seq"] == 1 and row["device"] == "pi-lobby" and row["door"] == "lobby_in"
    assert row["decision"] == "granted" and row["reason"] == "granted" and row["decided_by"] == "server"
    assert row["credential_hash"] == "ab" * 32 and row["transaction"] == "tx-ev-1"
    assert row["detail"] == '{"k": "v"}'
    assert row["snapshot_path"] is None  # no snapshot yet


def test_unknown_event_is_none(store: Store) -> None:
    assert store.event("nope") is None
    assert store.snapshot_bytes("nope") is None


def test_snapshot_before_event_is_linked(store: Store) -> None:
    assert store.insert_snapshot("ev-1", "pi-lobby", "lobby_in", sealed("ev-1"), 1.0, site="demo") is True
    assert store.event("ev-1") is None
    assert store.insert_event(ev("ev-1"), 2.0) is True
    row = store.event("ev-1")
    assert row is not None and row["snapshot_path"] == "ev-1.bin"
    assert store.snapshot_bytes("ev-1") == JPEG


def test_snapshot_after_event_is_linked(store: Store) -> None:
    store.insert_event(ev("ev-2"), 1.0)
    assert store.insert_snapshot("ev-2", "pi-lobby", "lobby_in", sealed("ev-2"), 2.0, site="demo") is True
    row = store.event("ev-2")
    assert row is not None and row["snapshot_path"] == "ev-2.bin"
    on_disk = (store.snapshot_dir / row["snapshot_path"]).read_bytes()
    assert b"\xff\xd8\xff" not in on_disk and bytes(range(64)) not in on_disk  # encrypted at rest
    assert store.snapshot_bytes("ev-2") == JPEG


def test_event_without_snapshot_is_not_linked_to_another(store: Store) -> None:
    store.insert_snapshot("ev-1", "pi-lobby", "lobby_in", sealed("ev-1"), 1.0, site="demo")
    store.insert_event(ev("ev-9", snapshot=None), 1.0)
    row = store.event("ev-9")
    assert row is not None and row["snapshot_path"] is None


def test_duplicate_snapshot(store: Store) -> None:
    assert store.insert_snapshot("ev-1", "pi-lobby", "lobby_in", sealed("ev-1"), 1.0, site="demo") is True
    assert store.insert_snapshot("ev-1", "pi-lobby", "lobby_in", b"other", 2.0, site="demo") is False
    assert store.snapshot_bytes("ev-1") == JPEG  # the first one wins, the file is not replaced
    with store.connection_for_tests() as db:
        assert db["snapshots"].count == 1
    assert list(store.snapshot_dir.glob("*.tmp")) == []


def test_events_newest_first_with_limit_and_filter(store: Store) -> None:
    for i in range(10):
        door = "lab" if i % 3 == 0 else "lobby_in"
        store.insert_event(ev(f"e{i}", seq=i, door=door, ts=f"2026-03-30T09:00:{i:02d}.000Z"), float(i))
    all_ = store.events(100)
    assert [r["id"] for r in all_] == [f"e{i}" for i in reversed(range(10))]
    assert [r["id"] for r in store.events(3)] == ["e9", "e8", "e7"]
    lab = store.events(100, door="lab")
    assert [r["id"] for r in lab] == ["e9", "e6", "e3", "e0"]
    assert [r["id"] for r in store.events(2, door="lab")] == ["e9", "e6"]
    assert store.events(10, door="garage") == []
    assert [r["id"] for r in store.events(100, door="lab", seq=6)] == ["e6"]


def test_events_same_ts_ordered_by_seq(store: Store) -> None:
    for i in (3, 1, 2):
        store.insert_event(ev(f"s{i}", seq=i), 0.0)
    assert [r["id"] for r in store.events(10)] == ["s3", "s2", "s1"]


def test_events_show_snapshot_path(store: Store) -> None:
    store.insert_event(ev("a", seq=1), 0.0)
    store.insert_event(ev("b", seq=2), 0.0)
    store.insert_snapshot("a", "pi-lobby", "lobby_in", sealed("a"), 0.0, site="demo")
    rows = {r["id"]: r["snapshot_path"] for r in store.events(10)}
    assert rows == {"a": "a.bin", "b": None}


def test_data_survives_reopen(tmp_path: Path) -> None:
    s = Store(tmp_path, keys=KEYS)
    s.insert_event(ev("ev-1"), 1.0)
    s.insert_snapshot("ev-1", "pi-lobby", "lobby_in", sealed("ev-1"), 1.0, site="demo")
    s.close()
    s2 = Store(tmp_path, keys=KEYS)
    assert s2.insert_event(ev("ev-1"), 2.0) is False  # still a duplicate after a restart
    assert s2.snapshot_bytes("ev-1") == JPEG
    s2.close()


# ------------------------------------------------------------- concurrency


def test_concurrent_inserts_lose_nothing(store: Store) -> None:
    threads, per_thread = 4, 250
    errors: list[BaseException] = []
    results: list[list[bool]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                results[n].append(store.insert_event(ev(f"t{n}-{i}", seq=i, device=f"pi-{n}"), float(i)))
                if i % 50 == 0:  # readers interleave with writers
                    store.events(5)
                    store.count_events()
            # a re-delivery of every other thread's first event is a duplicate
            for other in range(threads):
                results[n].append(store.insert_event(ev(f"t{other}-0", seq=0, device=f"pi-{other}"), 0.0))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in pool)
    assert errors == []
    assert store.count_events() == threads * per_thread
    assert all(r[:per_thread] == [True] * per_thread for r in results)
    assert all(r[per_thread:] == [False] * threads for r in results)
    with store.connection_for_tests() as db:
        ids = {r["id"] for r in db.query("SELECT id FROM events")}
    assert ids == {f"t{n}-{i}" for n in range(threads) for i in range(per_thread)}


# ------------------------------------------------ snapshots encrypted at rest


def test_snapshot_file_is_the_received_ciphertext_and_the_row_holds_the_wrapped_key(store: Store) -> None:
    blob = sealed("ev-1")
    assert store.insert_snapshot("ev-1", "pi-lobby", "lobby_in", blob, 1.0, site="demo")
    on_disk = (store.snapshot_dir / "ev-1.bin").read_bytes()
    assert on_disk == parse_sealed(blob).body and not on_disk.startswith(b"\xff\xd8")
    with store.connection_for_tests() as db:
        row = next(db.query("SELECT * FROM snapshots WHERE id = 'ev-1'"))
    assert row["kek_id"] == KEYS.keyring.current()[0] and len(row["wrapped_key"]) == 60
    assert row["site"] == "demo"
    assert store.snapshot_bytes("ev-1") == JPEG
    assert list(store.snapshot_dir.glob("*.jpg")) == []


@pytest.mark.parametrize("payload, why", [
    (JPEG, "plain JPEG"),
    (sealed("ev-1", device="pi-lab"), "does not unwrap"),  # sealed for another device
    (sealed("ev-other"), "does not unwrap"),                # another event's blob replayed under this id
    (sealed("ev-1", jpeg=b"GIF89a" + bytes(100)), "JPEG"),
    (seal(JPEG, SnapshotKeys.generate().recipient, SnapshotRef("demo", "pi-lobby", "ev-1")), "sealed for key"),
])
def test_unsealed_forged_or_foreign_snapshot_is_refused_and_nothing_kept(store: Store, payload: bytes,
                                                                         why: str) -> None:
    with pytest.raises(EnvelopeError, match=why):
        store.insert_snapshot("ev-1", "pi-lobby", "lobby_in", payload, 1.0, site="demo")
    with store.connection_for_tests() as db:
        assert db["snapshots"].count == 0 and list(store.snapshot_dir.iterdir()) == []
    assert store.snapshot_bytes("ev-1") is None


def test_store_without_keys_refuses_snapshots(tmp_path: Path) -> None:
    s = Store(tmp_path)
    with pytest.raises(StoreError, match="snapshot keys"):
        s.insert_snapshot("ev-1", "pi-lobby", "lobby_in", sealed("ev-1"), 1.0, site="demo")
    s.close()


def test_delete_destroys_the_key_with_the_row(store: Store) -> None:
    store.insert_snapshot("ev-1", "pi-lobby", "lobby_in", sealed("ev-1"), 1.0, site="demo")
    kept = (store.snapshot_dir / "ev-1.bin").read_bytes()  # as if the disk kept the blocks
    assert store.delete_snapshot("ev-1") is True
    with store.connection_for_tests() as db:
        assert db["snapshots"].count == 0 and not (store.snapshot_dir / "ev-1.bin").exists()
    (store.snapshot_dir / "ev-1.bin").write_bytes(kept)
    assert store.snapshot_bytes("ev-1") is None  # no row, no key: the ciphertext is all that is left
    assert b"\xff\xd8\xff" not in kept
    assert store.delete_snapshot("ev-1") is False


def test_plaintext_snapshot_from_before_migration_004_still_reads(store: Store) -> None:
    (store.snapshot_dir / "old.jpg").write_bytes(JPEG)
    with store.connection_for_tests() as db:
        db.conn.execute("INSERT INTO snapshots (id, device, door, path, bytes, received_at) "
                        "VALUES ('old', 'pi-lobby', 'lobby_in', 'old.jpg', ?, 0)", [len(JPEG)])
        db.conn.commit()
    assert store.snapshot_bytes("old") == JPEG


def _file_keys(tmp_path: Path) -> SnapshotKeys:
    if not (tmp_path / "keys" / "data-keys.json").exists():
        init_data_keys(tmp_path / "keys")
    return load_snapshot_keys(tmp_path / "keys", source="test")


def test_rotation_rewraps_every_key_and_retires_the_old_one(tmp_path: Path) -> None:
    server_keys = _file_keys(tmp_path)
    server = Store(tmp_path / "data", keys=server_keys)
    for i in range(250):
        blob = seal(JPEG + bytes([i]), server_keys.recipient, SnapshotRef("demo", "pi-lobby", f"e{i}"))
        server.insert_snapshot(f"e{i}", "pi-lobby", "lobby_in", blob, 1.0, site="demo")
    old = server_keys.keyring.current()[0]
    # `doorkeep key rotate` is another process: its own keyring and its own connection.
    cli_keys = _file_keys(tmp_path)
    cli = Store(tmp_path / "data", keys=cli_keys)
    new = cli_keys.keyring.rotate()
    assert cli.rewrap_snapshot_keys(batch=40) == (250, [old])
    cli.close()
    with server.connection_for_tests() as db:
        assert {r["kek_id"] for r in db.query("SELECT kek_id FROM snapshots")} == {new}
    assert old not in (tmp_path / "keys" / "data-keys.json").read_text()
    assert all(server.snapshot_bytes(f"e{i}") == JPEG + bytes([i]) for i in range(250))
    blob = seal(JPEG, server_keys.recipient, SnapshotRef("demo", "pi-lobby", "after"))
    server.insert_snapshot("after", "pi-lobby", "lobby_in", blob, 2.0, site="demo")
    with server.connection_for_tests() as db:
        assert next(db.query("SELECT kek_id FROM snapshots WHERE id = 'after'"))["kek_id"] == new
    server.close()


def test_rotation_while_the_server_ingests_loses_no_key(tmp_path: Path) -> None:
    server_keys = _file_keys(tmp_path)
    server = Store(tmp_path / "data", keys=server_keys)
    for i in range(100):
        server.insert_snapshot(f"a{i}", "pi-lobby", "lobby_in", sealed_for(server_keys, f"a{i}"), 1.0, site="demo")
    old = server_keys.keyring.current()[0]
    stop = threading.Event()
    errors: list[BaseException] = []
    ingested: list[str] = []

    def ingest() -> None:
        n = 0
        try:
            while not stop.is_set() and n < 2000:
                eid = f"b{n}"
                server.insert_snapshot(eid, "pi-lobby", "lobby_in", sealed_for(server_keys, eid), 1.0, site="demo")
                ingested.append(eid)
                n += 1
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)

    worker = threading.Thread(target=ingest)
    worker.start()
    assert wait_until(lambda: len(ingested) >= 20, 10)
    cli_keys = _file_keys(tmp_path)
    cli = Store(tmp_path / "data", keys=cli_keys)
    new = cli_keys.keyring.rotate()
    rewrapped, retired = cli.rewrap_snapshot_keys(batch=10)
    cli.close()
    assert wait_until(lambda: len(ingested) >= 40, 10)  # still ingesting after the rotation
    stop.set()
    worker.join(timeout=30)
    assert errors == [] and not worker.is_alive()
    assert retired == [old] and rewrapped >= 100
    with server.connection_for_tests() as db:
        rows = list(db.query("SELECT id, kek_id FROM snapshots"))
    assert len(rows) == 100 + len(ingested)
    assert {r["kek_id"] for r in rows} == {new}
    assert all(server.snapshot_bytes(r["id"]) == JPEG for r in rows)
    server.close()


def sealed_for(keys: SnapshotKeys, eid: str) -> bytes:
    return seal(JPEG, keys.recipient, SnapshotRef("demo", "pi-lobby", eid))


def test_audit_searches_by_actor_or_action_use_an_index_not_a_walk_of_the_log(tmp_path: Path) -> None:
    store = Store(tmp_path)
    try:
        with store.connection_for_tests() as db:
            for where in ("actor = 'ada'", "action = 'card.lost'"):
                plan = " ".join(str(r[3]) for r in db.execute(
                    f"EXPLAIN QUERY PLAN SELECT * FROM audit_log WHERE {where} ORDER BY seq DESC LIMIT 50"))
                assert "USING INDEX audit_log_" in plan, (where, plan)
    finally:
        store.close()
