"""The store's database as bench/campus.py reads it from outside the server: events counted, and its CPU.

SQLite: the server's own file, read on a second, read-only connection (WAL lets it read while the server
writes). The database's CPU is then inside the server process: the bench reports the server's store thread.

PostgreSQL (``--postgres``): a fresh database ``doorkeep_campus_<random>`` on the given server, dropped at the
end; the server's store is opened on it (``Store(data_dir, url=...)``: there is no ``[store] url`` setting yet,
so the bench's server process passes it). The database's CPU is that of the PostgreSQL processes serving it:
the backends connected to the database (this reader's own excepted) and the cluster's WAL writer, background
writer and checkpointer, read from /proc like every other component.
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_SHARED = ("walwriter", "background writer", "checkpointer", "autovacuum worker")


def _proc_cpu_s(pid: int) -> float:
    import os

    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SqliteEvents:
    engine = "sqlite"

    def __init__(self, db: Path) -> None:
        self.db = db

    def _conn(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)

    def count(self, prefix: str | None = None) -> int:
        """Events in the store; ``prefix``: only those whose id starts with it."""
        conn = self._conn()
        try:
            if prefix is None:
                return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
            return int(conn.execute("SELECT count(*) FROM events WHERE id LIKE ?", (f"{prefix}%",)).fetchone()[0])
        finally:
            conn.close()

    def final(self, prefix: str) -> tuple[int, int, dict[str, int]]:
        """(rows, distinct ids, rows by type) of the events whose id starts with ``prefix``."""
        conn = self._conn()
        try:
            n, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM events WHERE id LIKE ?",
                                       (f"{prefix}%",)).fetchone()
            by_type = dict(conn.execute("SELECT type, count(*) FROM events WHERE id LIKE ? GROUP BY type",
                                        (f"{prefix}%",)).fetchall())
            return int(n), int(distinct), by_type
        finally:
            conn.close()

    def cpu_s(self) -> float | None:
        """None: on SQLite the database works inside the server process (see the store thread)."""
        return None

    def pids(self) -> list[int] | None:
        """None: no process of its own (see ``cpu_s``)."""
        return None

    def close(self) -> None:
        pass


class PostgresEvents:
    engine = "postgresql"

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self._psycopg = psycopg
        self.admin_url = admin_url
        self.name = f"doorkeep_campus_{secrets.token_hex(5)}"
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{self.name}"))
        self._reader: Any = None

    def _conn(self) -> Any:
        if self._reader is None:
            self._reader = self._psycopg.connect(self.url, autocommit=True)
        return self._reader

    def count(self, prefix: str | None = None) -> int:
        c = self._conn()
        if prefix is None:
            return int(c.execute("SELECT count(*) FROM events").fetchone()[0])
        return int(c.execute("SELECT count(*) FROM events WHERE id LIKE %s", (f"{prefix}%",)).fetchone()[0])

    def final(self, prefix: str) -> tuple[int, int, dict[str, int]]:
        c = self._conn()
        n, distinct = c.execute("SELECT count(*), count(DISTINCT id) FROM events WHERE id LIKE %s",
                                (f"{prefix}%",)).fetchone()
        by_type = dict(c.execute("SELECT type, count(*) FROM events WHERE id LIKE %s GROUP BY type",
                                 (f"{prefix}%",)).fetchall())
        return int(n), int(distinct), by_type

    def cpu_s(self) -> float | None:
        """CPU of the database's backends (this reader excepted) and the cluster's shared writers."""
        return sum(_proc_cpu_s(pid) for pid in self.pids())

    def pids(self) -> list[int]:
        """The database's backends (this reader excepted) and the cluster's shared writers, as listed now."""
        c = self._conn()
        rows = c.execute("SELECT pid FROM pg_stat_activity WHERE (datname = %s AND pid <> pg_backend_pid()) "
                         "OR backend_type = ANY(%s)", (self.name, list(_SHARED))).fetchall()
        return [int(pid) for (pid,) in rows]

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        with self._psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
