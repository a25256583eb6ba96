"""The store's connection port: one small interface over sqlite3 and psycopg 3 (PostgreSQL).

Why a port and not an ORM: the store writes its SQL once, by hand, in the subset both engines speak
(docs/scale.md "State in PostgreSQL": ``INSERT ... ON CONFLICT``, ``"ident"``, ``RETURNING``, explicit
``CAST``), and reads tuples. What differs between the drivers is small and lives here:

- the placeholder: the store writes ``?``; for PostgreSQL each ``?`` outside a quoted string or identifier
  becomes ``%s`` and a literal ``%`` is doubled (:func:`pg_placeholders`), the only rewriting done;
- ``True``/``False`` are stored as 1/0 on PostgreSQL, as sqlite3 does, so a flag reads back the same;
- transactions: SQLite keeps sqlite3's own rules exactly (a write opens a transaction, ``with conn``
  commits); PostgreSQL runs in autocommit and :meth:`PgConnection.begin` opens one, so a lone read never
  leaves a transaction open, and :meth:`Connection.transaction` behaves as ``with sqlite3_connection``.

``connect("postgresql://...")`` opens PostgreSQL; anything else (a path, ``sqlite:///path``) opens SQLite.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

_PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: str | Path) -> bool:
    """Whether ``target`` names a PostgreSQL database (a ``postgresql://`` or ``postgres://`` URL)."""
    return isinstance(target, str) and target.startswith(_PG_SCHEMES)


def connect(target: str | Path) -> "Connection":
    """Open the database ``target`` names: a PostgreSQL URL, a ``sqlite:///path`` URL or a file path."""
    if is_postgres_url(target):
        return PgConnection(str(target))
    if isinstance(target, str) and target.startswith("sqlite:///"):
        target = target[len("sqlite:///") - 1:]  # sqlite:////abs/path and sqlite:///rel/path
    return SqliteConnection(sqlite3.connect(target, check_same_thread=False))


@functools.lru_cache(maxsize=4096)
def pg_placeholders(sql: str) -> str:
    """``sql`` with each ``?`` outside quotes made ``%s`` and every ``%`` doubled (psycopg's placeholder syntax).

    Single-quoted strings (``''`` inside one is a quote) and double-quoted identifiers are copied as they are,
    except that a ``%`` in them is doubled too: psycopg reads ``%`` everywhere in a query given parameters."""
    out: list[str] = []
    quote = ""
    for ch in sql:
        if ch == "%":
            out.append("%%")
        elif quote:
            out.append(ch)
            if ch == quote:
                quote = ""  # a doubled quote closes and reopens: same result
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


def sqlite3_statements(script: str) -> list[str]:
    """``script`` split into complete SQLite statements (sqlite3.complete_statement decides where one ends)."""
    out, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            out.append(pending.strip())
            pending = ""
    if pending.strip():
        out.append(pending.strip())
    return out


def rows_as_dicts(cursor: Any) -> list[dict[str, Any]]:
    """Every row of ``cursor`` as a dict keyed by column name (what sqlite-utils' ``query`` gave)."""
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


class Connection:
    """What the store uses of a database connection, the same on both engines (see the module docstring)."""

    dialect: str
    #: The driver's base exception class, and the one a constraint or a trigger's refusal raises.
    Error: type[Exception]
    IntegrityError: type[Exception]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; the driver's cursor (fetchone, fetchall, iteration, rowcount, description)."""
        raise NotImplementedError

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        raise NotImplementedError

    def insert_rowid(self, sql: str, params: Sequence[Any] = ()) -> int | None:
        """Run a one-row ``INSERT`` into a table with a rowid; the new row's rowid, None when no row was stored
        (``ON CONFLICT DO NOTHING``). SQLite reads the cursor's ``lastrowid`` (a ``RETURNING`` clause halved the
        store's ingest rate there); PostgreSQL appends ``RETURNING rowid`` (the table's explicit rowid column)."""
        raise NotImplementedError

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of a query as dicts keyed by column name."""
        return rows_as_dicts(self.execute(sql, params))

    def execute_script(self, sql: str) -> None:
        """Run several statements without parameters, as written (no placeholder rewriting), inside the current
        transaction: a migration's DDL."""
        raise NotImplementedError

    @property
    def in_transaction(self) -> bool:
        raise NotImplementedError

    def begin(self, *, immediate: bool = False) -> None:
        """Open a transaction (``immediate``: take the write lock now, SQLite's ``BEGIN IMMEDIATE``)."""
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Connection"]:
        """As ``with sqlite3_connection:``: commit at the end (whatever was open), roll back on an error."""
        raise NotImplementedError
        yield self  # pragma: no cover

    def close(self) -> None:
        raise NotImplementedError


class SqliteConnection(Connection):
    """sqlite3 exactly as the store used it before the port: its implicit transactions, its cursors."""

    dialect = SQLITE
    Error = sqlite3.Error
    IntegrityError = sqlite3.IntegrityError

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.raw.execute(sql, params)

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        return self.raw.executemany(sql, seq)

    def insert_rowid(self, sql: str, params: Sequence[Any] = ()) -> int | None:
        cur = self.raw.execute(sql, params)
        return cur.lastrowid if cur.rowcount == 1 else None

    def execute_script(self, sql: str) -> None:
        # Not sqlite3's executescript, which commits first: one statement at a time, in the caller's transaction.
        for statement in sqlite3_statements(sql):
            self.raw.execute(statement)

    @property
    def in_transaction(self) -> bool:
        return self.raw.in_transaction

    def begin(self, *, immediate: bool = False) -> None:
        self.raw.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    def commit(self) -> None:
        self.raw.commit()

    def rollback(self) -> None:
        self.raw.rollback()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.raw:
            yield self

    def close(self) -> None:
        self.raw.close()


class PgConnection(Connection):
    """psycopg 3 in autocommit mode, tuples as rows, booleans stored as integers, ``?`` placeholders."""

    dialect = POSTGRESQL

    def __init__(self, url: str) -> None:
        import psycopg  # only a PostgreSQL store needs the driver
        from psycopg.adapt import Dumper
        from psycopg.pq import TransactionStatus

        class BoolAsInt(Dumper):
            """``True`` -> 1: SQLite has no boolean, the store's flags are INTEGER columns on both engines."""

            oid = psycopg.adapters.types["int8"].oid

            def dump(self, obj: bool) -> bytes:
                return b"1" if obj else b"0"

        self.Error = psycopg.Error
        self.IntegrityError = psycopg.IntegrityError
        self._idle = TransactionStatus.IDLE
        self.raw = psycopg.connect(url, autocommit=True)
        self.raw.adapters.register_dumper(bool, BoolAsInt)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.raw.execute(pg_placeholders(sql), list(params))

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> Any:
        cur = self.raw.cursor()
        cur.executemany(pg_placeholders(sql), [list(p) for p in seq])
        return cur

    def insert_rowid(self, sql: str, params: Sequence[Any] = ()) -> int | None:
        row = self.raw.execute(pg_placeholders(sql + " RETURNING rowid"), list(params)).fetchone()
        return None if row is None else int(row[0])

    def execute_script(self, sql: str) -> None:
        self.raw.execute(sql)  # no parameters: psycopg sends the statements as they are

    @property
    def in_transaction(self) -> bool:
        return self.raw.info.transaction_status != self._idle

    def begin(self, *, immediate: bool = False) -> None:
        # PostgreSQL takes row locks as it writes; ``immediate`` needs nothing more on one database.
        self.raw.execute("BEGIN")

    def commit(self) -> None:
        if self.in_transaction:
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self.raw.execute("ROLLBACK")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        if not self.in_transaction:
            self.begin()
        try:
            yield self
        except BaseException:
            self.rollback()
            raise
        self.commit()

    def close(self) -> None:
        self.raw.close()


__all__ = ["POSTGRESQL", "SQLITE", "Connection", "PgConnection", "SqliteConnection", "connect", "is_postgres_url",
           "pg_placeholders", "rows_as_dicts"]
