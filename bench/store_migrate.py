"""How long `doorkeep store migrate` takes for a store of N events (default 1,000,000): SQLite -> PostgreSQL.

    python bench/store_migrate.py [--events N] [--admin postgresql://postgres@127.0.0.1:5432/postgres]

Builds a store (server/store.py schema) with N access events written straight into SQLite, then times
server/store_migrate.py's migrate_store into a fresh database (dropped afterwards) and prints rows/s. The
baseline is the issue's wish: a site's whole history moved in a maintenance window (minutes, not hours).
"""

from __future__ import annotations

import argparse
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from server.store import Store  # noqa: E402
from server.store_migrate import migrate_store  # noqa: E402


def build(data: Path, n: int) -> float:
    Store(data).close()
    conn = sqlite3.connect(data / "doorkeep.db")
    started = time.perf_counter()
    rows = ((f"ev-{i:08d}", i, f"2026-03-30T09:{(i // 60000) % 60:02d}:00.000Z", f"pi-{i % 50}", f"door{i % 200}",
             "access", "granted" if i % 4 else "denied", "granted" if i % 4 else "no_access", "server",
             f"p{i % 10000}", "ab" * 32, "1234", f"tx-{i}", 12.5, None, '{"k": "v"}', 1.77e9 + i) for i in range(n))
    with conn:
        conn.executemany("INSERT INTO events (id, seq, ts, device, door, type, decision, reason, decided_by, person, "
                         "credential_hash, credential_last4, \"transaction\", latency_ms, snapshot, detail, "
                         "received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.close()
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    name = f"doorkeep_bench_{secrets.token_hex(4)}"
    with psycopg.connect(args.admin, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            built = build(data, args.events)
            print(f"built {args.events:,} events in SQLite in {built:.1f} s")
            target = args.admin.rsplit("/", 1)[0] + "/" + name
            report = migrate_store(f"sqlite:///{data / 'doorkeep.db'}", target)
            assert report.ok, report.problems
            print(f"store migrate: {report.rows:,} rows ({args.events:,} events) in {report.seconds:.1f} s = "
                  f"{report.rows / report.seconds:,.0f} rows/s, verified (counts, audit chain)")
    finally:
        with psycopg.connect(args.admin, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
