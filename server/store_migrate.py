"""``doorkeep store migrate --from sqlite:///PATH/doorkeep.db --to postgresql://...``: a site's history into PostgreSQL.

Copies every table of a SQLite store, in migration order (the order the migrations created them, so a row's
references and the audit anchor's record are there before it), keeping every id, the rowids the store reads as
arrival order (events, alarms, the mail and webhook queues: copied into PostgreSQL's explicit ``rowid`` column) and
the audit log's ``seq``, into an empty PostgreSQL database, after migrating its schema (server/migrations_pg/). It
then verifies, and exits non-zero unless all holds: the row count of every table equals the source's, the audit
chain verifies on the target (server/audit.py), and its last record (seq and hash) is the source's.

Why with the server stopped: a server writing meanwhile would add rows the copy misses. Nothing is lost while it
is down: the edges keep deciding from their signed policy and keep their events in their outboxes until the server
(now on PostgreSQL) is back. A running server is detected by the SQLite file itself: the copy takes SQLite's
exclusive lock (``locking_mode=EXCLUSIVE``, ``BEGIN EXCLUSIVE``), which no other open connection allows in WAL mode,
and holds it to the end, so no server can start on the file half-way either.

Efficient: rows go with PostgreSQL's ``COPY`` (psycopg's ``copy``), read from SQLite in batches, in one target
transaction (all or nothing); the identities are then moved past the copied ids.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from doorkeep.config import store_url_problem
from server import sqldb
from server.audit import AuditLog
from server.errors import ServerError
from server.store import Store, migrate_pg
from server.store_connection import describe_target

#: Tables a PostgreSQL migration fills by itself (023 starts the webhook cursors): emptied before the copy, which
#: brings the source's rows instead. ``_migrations`` is the target's own record of its schema and is not copied.
SEEDED = ("webhook_cursors",)
BATCH = 5000


class MigrateError(ServerError):
    """The migration was refused or did not verify; the message says what and the fix."""


@dataclass
class MigrateReport:
    counts: list[tuple[str, int, int]] = field(default_factory=list)  # table, source rows, target rows
    audit_records: int = 0
    audit_head: tuple[int, str] | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rows(self) -> int:
        return sum(source for _, source, _ in self.counts)

    def table(self) -> str:
        width = max([len(t) for t, _, _ in self.counts] + [5])
        lines = [f"{'table':<{width}}  {'sqlite':>10}  {'postgresql':>10}"]
        for name, source, target in self.counts:
            mark = "" if source == target else "  <- differs"
            lines.append(f"{name:<{width}}  {source:>10}  {target:>10}{mark}")
        return "\n".join(lines)


def sqlite_path(source: str) -> Path:
    """The file a ``sqlite:///PATH`` URL (or a plain path) names."""
    if source.startswith("sqlite:///"):
        return Path(source[len("sqlite:///") - 1:])
    if "://" in source:
        raise MigrateError(f"--from must be sqlite:///PATH/doorkeep.db, got {source.split('://')[0]}://")
    return Path(source)


def _lock_source(path: Path) -> sqlite3.Connection:
    """The source, opened read-only in spirit and locked exclusively: refused while anyone else has it open."""
    if not path.is_file():
        raise MigrateError(f"no SQLite store at {path} (fix: --from sqlite:///DATA/doorkeep.db, the server's --data)")
    conn = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
    except sqlite3.OperationalError as exc:
        conn.close()
        raise MigrateError(f"{path} is in use ({exc}): a server or another command has it open (fix: stop the "
                           "server first; the doors decide from their policy meanwhile and the edges keep their "
                           "events in their outboxes)") from exc
    return conn


def _source_tables(conn: sqlite3.Connection) -> list[str]:
    """Every table of the source in creation order (sqlite_master's rowid), ``_migrations`` left out."""
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE "
                                       "'sqlite_%' AND name != '_migrations' ORDER BY rowid")]


def _pg_tables(conn: sqldb.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                                       "ORDER BY tablename")]


def _refuse_non_empty(conn: sqldb.Connection, ours: set[str], where: str) -> None:
    """Refuse a target holding anything but (part of) an empty doorkeep schema, naming what is there."""
    tables = _pg_tables(conn)
    foreign = [t for t in tables if t not in ours and t != "_migrations"]
    if foreign:
        raise MigrateError(f"the target database ({where}) is not empty: it holds tables that are not doorkeep's "
                           f"({', '.join(foreign[:8])}{', ...' if len(foreign) > 8 else ''}) (fix: migrate into a "
                           "new, empty database: CREATE DATABASE ... as docs/scale.md shows)")
    filled = []
    for t in tables:
        if t == "_migrations" or t in SEEDED:
            continue
        n = conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
        if n:
            filled.append(f"{t} ({n} rows)")
    if filled:
        raise MigrateError(f"the target database ({where}) is not empty: {', '.join(filled[:8])}"
                           f"{', ...' if len(filled) > 8 else ''} (fix: migrate into a new, empty database; a store "
                           "already migrated is not migrated twice)")


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f'SELECT * FROM pragma_table_info(\'{table}\')')]


def _pg_columns(conn: sqldb.Connection, table: str) -> list[str]:
    return [r[0] for r in conn.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = "
                                       "current_schema() AND table_name = ? ORDER BY ordinal_position", [table])]


def _copy_table(src: sqlite3.Connection, dst: Any, table: str, columns: list[str], batch: int) -> int:
    """COPY the rows of ``table``; ``columns`` may start with ``rowid`` (read as SQLite's rowid)."""
    names = ", ".join(f'"{c}"' for c in columns)
    select = ", ".join("rowid" if c == "rowid" else f'"{c}"' for c in columns)
    cursor = src.execute(f'SELECT {select} FROM "{table}" ORDER BY rowid')
    copied = 0
    with dst.cursor() as cur:
        with cur.copy(f'COPY "{table}" ({names}) FROM STDIN') as copy:
            while True:
                rows = cursor.fetchmany(batch)
                if not rows:
                    break
                for row in rows:
                    copy.write_row(row)
                copied += len(rows)
    return copied


def _move_identities(dst: Any) -> None:
    """Every identity column past the largest copied value, so the server's next row gets a new number."""
    rows = dst.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = "
                       "current_schema() AND is_identity = 'YES'").fetchall()
    for table, column in rows:
        dst.execute(f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'), "
                    f"COALESCE((SELECT max(\"{column}\") FROM \"{table}\"), 0) + 1, false)")


def migrate_store(source: str, target: str, *, batch: int = BATCH, clock: Callable[[], float] = time.perf_counter,
                  before_verify: Callable[[sqldb.Connection], None] | None = None,
                  progress: TextIO | None = None) -> MigrateReport:
    """Copy the SQLite store ``source`` into the empty PostgreSQL database ``target`` and verify it (see the module
    docstring). Raises :class:`MigrateError` when refused; the report's ``problems`` list what did not verify.
    ``before_verify``: tests only, a hook that runs on the target between the copy and the verification."""
    problem = store_url_problem(target)
    if problem is not None:
        raise MigrateError(f"--to {problem[0]} (fix: {problem[1]})")
    path = sqlite_path(source)
    where = describe_target(target)
    started = clock()
    # Bring the source to this version's schema, as a server start would, before locking it for the copy.
    _lock_source(path).close()
    Store(path.parent).close()
    src = _lock_source(path)
    try:
        try:
            dst_port = sqldb.connect(target)
        except Exception as exc:
            raise MigrateError(f"cannot reach the target ({where}): {str(exc).strip().splitlines()[0]} (fix: create "
                               "the database and its role as docs/scale.md shows; the password comes from ~/.pgpass, "
                               "PGPASSFILE or PGPASSWORD)") from exc
        try:
            tables = _source_tables(src)
            _refuse_non_empty(dst_port, set(tables), where)
            migrate_pg(dst_port)
            missing = [t for t in tables if t not in set(_pg_tables(dst_port))]
            if missing:
                raise MigrateError(f"the source has tables this version's PostgreSQL schema lacks: {', '.join(missing)} "
                                   "(fix: migrate with the doorkeep version that wrote the store)")
            report = MigrateReport()
            dst = dst_port.raw  # type: ignore[attr-defined]
            with dst.transaction():
                for table in SEEDED:
                    dst.execute(f'DELETE FROM "{table}"')
                for table in tables:
                    columns = _columns(src, table)
                    if "rowid" in _pg_columns(dst_port, table) and "rowid" not in columns:
                        columns = ["rowid", *columns]
                    _copy_table(src, dst, table, columns, batch)
                    if progress is not None:
                        print(f"copied {table}", file=progress, flush=True)
                _move_identities(dst)
            for table in tables:
                source_rows = src.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                target_rows = dst_port.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                report.counts.append((table, source_rows, target_rows))
                if source_rows != target_rows:
                    report.problems.append(f"{table}: {source_rows} rows in SQLite, {target_rows} in PostgreSQL")
            source_head = src.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
            if before_verify is not None:
                before_verify(dst_port)
        finally:
            dst_port.close()
    finally:
        src.rollback()
        src.close()
    _verify_audit(path.parent, target, source_head, report)
    report.seconds = clock() - started
    return report


def _verify_audit(data_dir: Path, target: str, source_head: tuple[int, str] | None, report: MigrateReport) -> None:
    """The audit chain on the target, walked by server/audit.py against the data directory's head file, and its
    last record against the source's."""
    store = Store(data_dir, url=target)
    try:
        result = AuditLog(store).verify()
        with store.connection_for_tests(port=True) as conn:  # the chain's end, as the store reads it
            head = conn.execute("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        store.close()
    report.audit_records = result.count
    report.audit_head = None if head is None else (int(head[0]), str(head[1]))
    if not result.ok:
        report.problems.append(f"the audit chain does not verify on PostgreSQL: {result.message}")
    if (None if source_head is None else (int(source_head[0]), str(source_head[1]))) != report.audit_head:
        report.problems.append(f"the audit log's last record differs: SQLite {source_head}, PostgreSQL "
                               f"{report.audit_head}")


def cli(args: argparse.Namespace) -> int:
    """``doorkeep store migrate --from sqlite:///PATH --to postgresql://...``: exit 0 when copied and verified, 1
    when it did not verify, 2 when refused."""
    try:
        report = migrate_store(args.source, args.target, progress=sys.stderr if args.verbose else None)
    except MigrateError as exc:
        print(f"doorkeep store migrate: {exc}", file=sys.stderr)
        return 2
    print(report.table())
    rate = report.rows / report.seconds if report.seconds else 0.0
    print(f"{report.rows} rows in {report.seconds:.1f} s ({rate:,.0f} rows/s); audit chain: {report.audit_records} "
          f"records, last {report.audit_head[0] if report.audit_head else '-'}")
    if not report.ok:
        for problem in report.problems:
            print(f"doorkeep store migrate: NOT VERIFIED: {problem}", file=sys.stderr)
        return 1
    print("verified: row counts equal, audit chain verifies, same last record. Start the server with "
          "[store] url (or --store) set to the target.")
    return 0


__all__ = ["MigrateError", "MigrateReport", "cli", "migrate_store", "sqlite_path"]
