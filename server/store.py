"""The event store: SQLite through sqlite-utils, plus snapshot files on disk.

Ingest is idempotent on the event id, because MQTT QoS 1 delivers at least
once and an edge re-sends after an outage. A snapshot and its event are
linked by the event id, so whichever arrives first waits for the other
without any bookkeeping: the join is done when read.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import sqlite_utils

from doorkeep.contract import EventMsg
from server.errors import StoreError


def _m001_events(db: sqlite_utils.Database) -> None:
    db["events"].create(
        {
            "id": str, "seq": int, "ts": str, "device": str, "door": str, "type": str,
            "decision": str, "reason": str, "decided_by": str, "person": str,
            "credential_hash": str, "credential_last4": str, "transaction": str,
            "latency_ms": float, "snapshot": str, "detail": str, "received_at": float,
        },
        pk="id",
        not_null={"seq", "ts", "device", "door", "type"},
    )
    db["events"].create_index(["ts"])
    db["events"].create_index(["device", "seq"])
    db["snapshots"].create(
        {"id": str, "device": str, "door": str, "path": str, "bytes": int, "received_at": float},
        pk="id",
    )


def _m002_directory(db: sqlite_utils.Database) -> None:
    """What changes at runtime on top of the site files: visitors, card states, lockdowns, presence."""
    db["visitors"].create(
        {
            "id": str, "name": str, "company": str, "email": str, "host": str, "valid_from": float,
            "valid_until": float, "allowed_areas": str, "escort_required": int, "status": str,
            "card_hash": str, "card_format": str, "card_number_last4": str, "registered_at": float,
            "checked_in_at": float, "checked_out_at": float,
        },
        pk="id",
    )
    db["credential_states"].create({"hash": str, "state": str, "changed_at": float}, pk="hash")
    db["lockdowns"].create({"scope": str, "active": int, "changed_at": float}, pk="scope")
    db["presence"].create({"person": str, "area": str, "since": float}, pk="person")
    db["counters"].create({"name": str, "value": int}, pk="name")


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_events_and_snapshots", _m001_events),
    ("002_directory", _m002_directory),
]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the named migrations not yet applied, each in its own transaction."""
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
    done = {r["name"] for r in db["_migrations"].rows}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with db.conn:
            # sqlite3 does not open a transaction before DDL by itself: begin one so that a
            # migration failing half-way leaves no tables behind (the `with` rolls it back).
            if not db.conn.in_transaction:
                db.conn.execute("BEGIN")
            fn(db)
            db["_migrations"].insert({"name": name, "applied_at": time.time()})
        applied.append(name)
    return applied


class Store:
    """Events and snapshots of one site. Thread-safe: one connection behind a lock."""

    def __init__(self, data_dir: Path | str) -> None:
        self.dir = Path(data_dir)
        self.snapshot_dir = self.dir / "snapshots"
        try:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
            # One connection shared by the bus's store worker and readers, serialised by self._lock.
            conn = sqlite3.connect(self.dir / "doorkeep.db", check_same_thread=False)
            self.db = sqlite_utils.Database(conn)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store in {self.dir}: {exc}") from exc
        self.db.enable_wal()
        self._lock = threading.Lock()
        with self._lock:
            migrate(self.db)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def insert_event(self, ev: EventMsg, received_at: float) -> bool:
        """Store an event once; returns False for a duplicate delivery."""
        row = asdict(ev)
        row["detail"] = json.dumps(row["detail"], sort_keys=True)
        row["received_at"] = received_at
        cols = ", ".join(f"[{k}]" for k in row)
        marks = ", ".join("?" for _ in row)
        with self._lock:
            cur = self.db.conn.execute(f"INSERT OR IGNORE INTO events ({cols}) VALUES ({marks})", list(row.values()))
            self.db.conn.commit()
            return cur.rowcount == 1

    def insert_snapshot(self, event_id: str, device: str, door: str, jpeg: bytes, received_at: float) -> bool:
        """Write the JPEG durably (temp file, fsync, rename), then record it; False for a duplicate."""
        with self._lock:
            if self.db["snapshots"].count_where("id = ?", [event_id]):
                return False
        path = self.snapshot_dir / f"{event_id}.jpg"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(jpeg)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with self._lock:
            cur = self.db.conn.execute(
                "INSERT OR IGNORE INTO snapshots (id, device, door, path, bytes, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                [event_id, device, door, path.name, len(jpeg), received_at],
            )
            self.db.conn.commit()
            return cur.rowcount == 1

    def event(self, event_id: str) -> dict[str, Any] | None:
        """An event with its snapshot file name (``snapshot_path``) when the snapshot has arrived."""
        with self._lock:
            rows = list(self.db.query(
                "SELECT e.*, s.path AS snapshot_path FROM events e "
                "LEFT JOIN snapshots s ON s.id = e.snapshot WHERE e.id = ?", [event_id]))
        return rows[0] if rows else None

    def events(self, limit: int = 100, **where: Any) -> list[dict[str, Any]]:
        clauses = " AND ".join(f"e.[{k}] = ?" for k in where)
        sql = ("SELECT e.*, s.path AS snapshot_path FROM events e LEFT JOIN snapshots s ON s.id = e.snapshot"
               + (f" WHERE {clauses}" if clauses else "") + " ORDER BY e.ts DESC, e.seq DESC LIMIT ?")
        with self._lock:
            return list(self.db.query(sql, [*where.values(), limit]))

    def snapshot_bytes(self, snapshot_id: str) -> bytes | None:
        with self._lock:
            rows = list(self.db.query("SELECT path FROM snapshots WHERE id = ?", [snapshot_id]))
        if not rows:
            return None
        return (self.snapshot_dir / rows[0]["path"]).read_bytes()

    def count_events(self) -> int:
        with self._lock:
            return self.db["events"].count

    # ------------------------------------------------------------ directory

    def upsert(self, table: str, row: dict[str, Any], pk: str) -> None:
        with self._lock, self.db.conn:
            self.db[table].upsert(row, pk=pk)

    def delete(self, table: str, pk_value: str) -> None:
        with self._lock, self.db.conn:
            self.db.conn.execute(f"DELETE FROM [{table}] WHERE rowid IN (SELECT rowid FROM [{table}] "
                                 f"WHERE {self.db[table].pks[0]} = ?)", [pk_value])

    def rows(self, table: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.db[table].rows)

    def next_counter(self, name: str, at_least: int = 0) -> int:
        """A counter that only grows, across restarts (policy versions)."""
        with self._lock, self.db.conn:
            rows = list(self.db.query("SELECT value FROM counters WHERE name = ?", [name]))
            value = max((rows[0]["value"] + 1) if rows else 1, at_least)
            self.db["counters"].upsert({"name": name, "value": value}, pk="name")
        return value
