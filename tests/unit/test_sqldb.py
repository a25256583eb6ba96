"""The store's connection port (server/sqldb.py): the placeholder rewrite, and one behaviour on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from server import sqldb
from server.sqldb import pg_placeholders
from tests.pg import engine_url, pg_url  # noqa: F401  (fixtures)


@pytest.mark.parametrize("sql, expected", [
    ("SELECT a FROM t WHERE b = ? AND c = ?", "SELECT a FROM t WHERE b = %s AND c = %s"),
    ("SELECT '?' , ?", "SELECT '?' , %s"),
    ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
    ('SELECT "odd?col" FROM t WHERE x = ?', 'SELECT "odd?col" FROM t WHERE x = %s'),
    ("SELECT a FROM t WHERE b LIKE '10%' AND c = ?", "SELECT a FROM t WHERE b LIKE '10%%' AND c = %s"),
    ("SELECT 7 % ?", "SELECT 7 %% %s"),
    ("SELECT 1", "SELECT 1"),
], ids=["plain", "in-string", "escaped-quote", "in-identifier", "percent-in-string", "modulo", "none"])
def test_placeholders_become_psycopg_ones_only_outside_quotes(sql: str, expected: str) -> None:
    assert pg_placeholders(sql) == expected


def _open(engine_url: str | None, tmp_path: Path) -> sqldb.Connection:  # noqa: F811
    return sqldb.connect(engine_url or tmp_path / "t.db")


def test_connect_picks_the_engine_from_the_url(tmp_path: Path) -> None:
    conn = sqldb.connect(f"sqlite:///{tmp_path}/u.db")
    try:
        assert conn.dialect == "sqlite"
        conn.execute("CREATE TABLE t (a INTEGER)")
    finally:
        conn.close()
    assert (tmp_path / "u.db").is_file()
    assert sqldb.is_postgres_url("postgresql://x/y") and sqldb.is_postgres_url("postgres://x/y")
    assert not sqldb.is_postgres_url(str(tmp_path / "postgresql.db"))


def test_literals_placeholders_booleans_and_transactions_read_the_same_on_both(
        engine_url: str | None, tmp_path: Path) -> None:  # noqa: F811
    conn = _open(engine_url, tmp_path)
    try:
        assert conn.dialect == ("postgresql" if engine_url else "sqlite")
        conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT, note TEXT)")
        with conn.transaction():
            conn.execute("INSERT INTO t (id, n, note) VALUES (?, ?, '50% ? done')", ["a", True])
            conn.executemany("INSERT INTO t (id, n, note) VALUES (?, ?, ?)", [["b", False, "x?"], ["c", 3, "%s"]])
        assert not conn.in_transaction
        assert conn.execute("SELECT id, n, note FROM t ORDER BY id").fetchall() == [
            ("a", 1, "50% ? done"), ("b", 0, "x?"), ("c", 3, "%s")]
        assert conn.query("SELECT id, n FROM t WHERE note LIKE '50%' AND id = ?", ["a"]) == [{"id": "a", "n": 1}]
        cur = conn.execute("INSERT INTO t (id, n) VALUES (?, ?) ON CONFLICT (id) DO NOTHING", ["a", 9])
        assert cur.rowcount == 0
        with pytest.raises(RuntimeError), conn.transaction():
            conn.execute("UPDATE t SET n = 99 WHERE id = ?", ["c"])
            raise RuntimeError("rolled back")
        assert conn.execute("SELECT n FROM t WHERE id = 'c'").fetchone() == (3,)
        conn.begin()
        assert conn.in_transaction
        conn.execute("DELETE FROM t")
        conn.rollback()
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 3
        with pytest.raises(conn.IntegrityError):
            conn.execute("INSERT INTO t (id) VALUES ('a')")
    finally:
        conn.close()
