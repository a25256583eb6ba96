"""The store's security-desk records: the visitor watchlist and consents (migration ``007_visitor_desk``),
people, their cards and the visitor badge pool (``013_people``), and the pages of events the live view
reads.

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself; a
change of several rows (an import of people and their cards) is one transaction here, all or nothing.
The rules (what a valid person or card is, what a watchlist entry matches) stay with the callers
(server/people.py, server/visitors.py, server/eventlog.py).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any, Mapping, Sequence

from server import sqldb

# The columns of a stored person that :meth:`DeskRecords.update_person_row` may set (migration 013).
PERSON_COLUMNS = frozenset({"name", "kind", "clearance", "access_levels", "roles", "state", "valid_from",
                            "valid_until", "pin_hash", "host", "company", "allowed_areas", "escort_required",
                            "source", "desk_changed"})


#: Every column of ``people`` but its key: what a whole-row write sets (``INSERT OR REPLACE`` did, a column the row
#: does not give becoming NULL).
_PEOPLE_ROW_COLUMNS = (*sorted(PERSON_COLUMNS), "changed_at")


def _bump_people(conn: sqldb.Connection) -> int:
    """Move the ``people.changes`` counter on, inside the caller's transaction; its new value."""
    conn.execute("INSERT INTO counters (name, value) VALUES ('people.changes', 1) "
                 "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1")
    return int(conn.execute("SELECT value FROM counters WHERE name = 'people.changes'").fetchone()[0])


def has_table(conn: sqldb.Connection, table: str) -> bool:
    """Whether ``table`` exists (migration 008's tables go at the first seed), asked of each engine's catalog."""
    if conn.dialect == sqldb.POSTGRESQL:
        sql = "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = ?"
    else:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(sql, [table]).fetchone() is not None


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _replace_sql(table: str, columns: Sequence[str], key: str, every: Sequence[str]) -> str:
    """SQLite's ``INSERT OR REPLACE`` of ``columns``, written for both engines: on a conflict on ``key`` every column
    of ``every`` (the table's other columns) takes the new row's value, NULL where the row gives none, as a replaced
    row would (the tables written so have no other unique index and no defaults)."""
    updates = ", ".join(f"{_quoted(c)} = excluded.{_quoted(c)}" for c in every)
    return (f"INSERT INTO {table} ({', '.join(_quoted(c) for c in columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)}) ON CONFLICT ({_quoted(key)}) DO UPDATE SET {updates}")


#: The columns of :meth:`DeskRecords.event_tuples`, in order: the rowid (``cursor``) first, the snapshot's
#: stored path (``snapshot_path``, None until it arrived) last.
EVENT_TUPLE_COLUMNS = ("cursor", "id", "ts", "door", "type", "person", "credential_last4", "decision", "reason",
                       "snapshot", "detail", "snapshot_path")


def _event_pick(*, before: int | None, after: int | None, door: str | None, decision: str | None,
                people: Sequence[str] | None, doors: Sequence[str] | None, types: Sequence[str] | None,
                reason: str | None, since: str | None, until: str | None,
                limit: int, plus: str) -> tuple[str, list[Any], str] | None:
    """The query picking the matching rowids for :meth:`DeskRecords.event_page` (its docstring says which
    index answers and why), its arguments and the order; None when the filter matches nothing by itself
    (an empty list of doors, types or people). ``plus`` is ``+`` on SQLite, whose unary plus keeps a column's
    index out of the plan, and empty on PostgreSQL, which has no unary plus on text and plans from statistics."""
    clauses: list[str] = []
    args: list[Any] = []
    if before is not None:
        clauses.append("e.rowid < ?")
        args.append(before)
    if after is not None:
        clauses.append("e.rowid > ?")
        args.append(after)
    steer_person = people is not None
    steer_door = not steer_person and bool(door) and doors is None
    if door:
        clauses.append(("e.door" if steer_door else f"{plus}e.door") + " = ?")
        args.append(door)
    if doors is not None:
        if not doors:
            return None
        clauses.append(f"{plus}e.door IN ({', '.join('?' for _ in doors)})")
        args.extend(doors)
    if decision:
        clauses.append(f"{plus}e.decision = ?")
        args.append(decision)
    if reason:
        clauses.append(f"{plus}e.reason = ?")
        args.append(reason)
    if types is not None:
        if not types:
            return None
        clauses.append(f"{plus}e.type IN ({', '.join('?' for _ in types)})")
        args.extend(types)
    if people is not None:
        if not people:
            return None
        clauses.append(f"e.person IN ({', '.join('?' for _ in people)})")
        args.extend(people)
    ts_col = "e.ts" if steer_person or (since and until and not steer_door) else f"{plus}e.ts"
    if since:
        clauses.append(f"{ts_col} >= ?")
        args.append(since)
    if until:
        clauses.append(f"{ts_col} < ?")
        args.append(until)
    order = "ASC" if after is not None else "DESC"
    sql = ("SELECT e.rowid FROM events e" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
           + f" ORDER BY e.rowid {order} LIMIT ?")
    return sql, [*args, limit], order


class DeskRecords:
    """Watchlist, visitor consents, people and cards, event pages (a base of ``Store``)."""

    _conn: sqldb.Connection
    _db: Any  # sqlite-utils on SQLite: only the seam of :meth:`_pick_rowids`
    _lock: threading.RLock

    # ----------------------------------------------------------- watchlist

    def watchlist_entries(self) -> list[dict[str, Any]]:
        """Every entry (``id, kind, value, norm, note, added_by, added_at``), by kind and folded text."""
        with self._lock:
            return self._conn.query("SELECT id, kind, value, norm, note, added_by, added_at FROM watchlist "
                                    "ORDER BY kind, norm")

    def add_watchlist_entry(self, kind: str, value: str, norm: str, note: str, added_by: str, at: float) -> int | None:
        """Add an entry; its id, or None (nothing written) when the same kind and folded text is listed."""
        with self._lock, self._conn.transaction():
            if self._conn.execute("SELECT 1 FROM watchlist WHERE kind = ? AND norm = ?", [kind, norm]).fetchone():
                return None
            # The id is an identity on PostgreSQL (no rowid there): RETURNING reads it on both engines.
            rows = self._conn.execute(
                "INSERT INTO watchlist (kind, value, norm, note, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?) "
                "RETURNING id", [kind, value, norm, note, added_by, at]).fetchall()
            return int(rows[0][0] or 0)

    def remove_watchlist_entry(self, entry_id: int) -> bool:
        with self._lock, self._conn.transaction():
            return self._conn.execute("DELETE FROM watchlist WHERE id = ?", [entry_id]).rowcount == 1

    # ----------------------------------------------------- visitor consents

    def add_visitor_consent(self, visitor: str, notice_version: str, photo_consent: bool, at: float,
                            operator: str) -> None:
        """Record the consent given at a check-in (which notice was shown, photos yes/no, taken by whom)."""
        with self._lock, self._conn.transaction():
            self._conn.execute(
                "INSERT INTO visitor_consents (visitor, notice_version, photo_consent, consented_at, operator) "
                "VALUES (?, ?, ?, ?, ?)", [visitor, notice_version, int(photo_consent), at, operator])

    def latest_visitor_consent(self, visitor: str) -> dict[str, Any] | None:
        """The visitor's latest consent (``notice_version, photo_consent, consented_at, operator``), if any."""
        with self._lock:
            rows = self._conn.query("SELECT notice_version, photo_consent, consented_at, operator "
                                    "FROM visitor_consents WHERE visitor = ? ORDER BY id DESC LIMIT 1", [visitor])
        return rows[0] if rows else None

    def visitor_consents(self, visitor: str) -> list[dict[str, Any]]:
        """Every consent the visitor gave, oldest first (``notice_version, photo_consent, consented_at``)."""
        with self._lock:
            return self._conn.query("SELECT notice_version, photo_consent, consented_at FROM visitor_consents "
                                    "WHERE visitor = ? ORDER BY id", [visitor])

    def drop_orphan_consents(self) -> int:
        """Delete the consents of visitors no longer stored (removed by retention); how many."""
        with self._lock, self._conn.transaction():
            return self._conn.execute(
                "DELETE FROM visitor_consents WHERE visitor NOT IN (SELECT id FROM visitors)").rowcount

    # ---------------------------------------------- people and cards (migration 013)
    # The rows are built and read by server/people.py (which owns what a valid person is); every write here is one
    # transaction that also moves the ``people.changes`` counter, so a server polling it sees another process's
    # change, and returns the counter's new value.

    def people_seeded(self) -> bool:
        """True once people.toml (and the desk rows of migration 008) were imported into the store."""
        with self._lock:
            return self._conn.execute("SELECT 1 FROM counters WHERE name = 'people.seeded'").fetchone() is not None

    def people_version(self) -> int:
        """The ``people.changes`` counter: it grows with every change to people, cards or the visitor pool."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM counters WHERE name = 'people.changes'").fetchone()
        return int(row[0]) if row else 0

    def people_rows(self) -> list[dict[str, Any]]:
        """Every person's row, by id."""
        with self._lock:
            return self._conn.query("SELECT * FROM people ORDER BY id")

    def person_row(self, person: str) -> dict[str, Any] | None:
        with self._lock:
            rows = self._conn.query("SELECT * FROM people WHERE id = ?", [person])
        return rows[0] if rows else None

    def people_sources(self) -> list[dict[str, Any]]:
        """``id, source, desk_changed`` of the people not simply imported from people.toml (added or changed at the
        desk): the few rows the desk's list needs to say where each person came from."""
        with self._lock:
            return self._conn.query("SELECT id, source, desk_changed FROM people "
                                    "WHERE source != 'people.toml' OR desk_changed != 0")

    def card_rows(self, person: str | None = None) -> list[dict[str, Any]]:
        """Every card (``hash, person, format, last4, added_at``), or one person's; by hash."""
        with self._lock:
            if person is None:
                return self._conn.query("SELECT * FROM cards ORDER BY hash")
            return self._conn.query("SELECT * FROM cards WHERE person = ? ORDER BY hash", [person])

    def pool_rows(self) -> list[dict[str, Any]]:
        """The visitor badge pool (``hash, format, last4, position``), in its order."""
        with self._lock:
            return self._conn.query("SELECT * FROM visitor_pool ORDER BY position")

    def legacy_desk_rows(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The rows of migration 008 (``desk_people``, ``desk_cards``) not folded in yet; empty once folded."""
        with self._lock:
            conn = self._conn
            people = conn.query("SELECT * FROM desk_people") if has_table(conn, "desk_people") else []
            cards = conn.query("SELECT * FROM desk_cards") if has_table(conn, "desk_cards") else []
        return people, cards

    def write_people(self, *, people: Sequence[Mapping[str, Any]] = (), remove: Sequence[str] = (),
                     cards: Sequence[Mapping[str, Any]] = (), remove_cards: Sequence[str] = (),
                     states: Mapping[str, str | None] | None = None, pool: Sequence[Mapping[str, Any]] | None = None,
                     seeded: bool = False, at: float) -> int:
        """One transaction: people rows written whole (inserted or replaced) or removed with their cards, card
        rows written or removed, card states set (None clears one), the visitor pool replaced when given (in that
        order); with
        ``seeded`` the first import is marked done and migration 008's tables dropped. The new counter."""
        with self._lock, self._conn.transaction():
            conn = self._conn
            if remove:
                ids = [[pid] for pid in remove]
                conn.executemany("DELETE FROM cards WHERE person = ?", ids)
                conn.executemany("DELETE FROM people WHERE id = ?", ids)
            if remove_cards:
                conn.executemany("DELETE FROM cards WHERE hash = ?", [[h] for h in remove_cards])
            if people:
                cols = list(people[0])
                conn.executemany(_replace_sql("people", cols, "id", _PEOPLE_ROW_COLUMNS),
                                 [[p[c] for c in cols] for p in people])
            if cards:
                conn.executemany(_replace_sql("cards", ("hash", "person", "format", "last4", "added_at"), "hash",
                                              ("person", "format", "last4", "added_at")),
                                 [[c["hash"], c["person"], c["format"], c["last4"], at] for c in cards])
            for h, state in (states or {}).items():
                if state is None:
                    conn.execute("DELETE FROM credential_states WHERE hash = ?", [h])
                else:
                    conn.execute(_replace_sql("credential_states", ("hash", "state", "changed_at"), "hash",
                                              ("state", "changed_at")), [h, state, at])
            if pool is not None:
                conn.execute("DELETE FROM visitor_pool")
                conn.executemany("INSERT INTO visitor_pool (hash, format, last4, position) VALUES (?, ?, ?, ?)",
                                 [[c["hash"], c["format"], c["last4"], i] for i, c in enumerate(pool)])
            if seeded:
                conn.execute(_replace_sql("counters", ("name", "value"), "name", ("value",)), ["people.seeded", 1])
                conn.execute("DROP TABLE IF EXISTS desk_cards")
                conn.execute("DROP TABLE IF EXISTS desk_people")
            return _bump_people(conn)

    def _duplicate_row(self, exc: Exception) -> Exception:
        """A unique key refused on PostgreSQL, as the ``sqlite3.IntegrityError`` this mixin's callers catch (its
        documented error, server/people.py): the same error whichever engine holds the rows."""
        return sqlite3.IntegrityError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)

    def add_people_rows(self, people: Sequence[Mapping[str, Any]], cards: Sequence[Mapping[str, Any]],
                        at: float) -> int:
        """Add new people and their cards in one transaction: all of them, or (an id or a card already
        stored: sqlite3.IntegrityError, on either engine) none. The new counter."""
        try:
            with self._lock, self._conn.transaction():
                conn = self._conn
                for p in people:
                    cols = list(p)
                    conn.execute(f"INSERT INTO people ({', '.join(_quoted(c) for c in cols)}) "
                                 f"VALUES ({', '.join('?' for _ in cols)})", [p[c] for c in cols])
                for c in cards:
                    conn.execute("INSERT INTO cards (hash, person, format, last4, added_at) VALUES (?, ?, ?, ?, ?)",
                                 [c["hash"], c["person"], c["format"], c["last4"], at])
                return _bump_people(conn)
        except sqlite3.IntegrityError:
            raise
        except self._conn.IntegrityError as exc:
            raise self._duplicate_row(exc) from exc

    def update_person_row(self, person: str, columns: Mapping[str, Any], at: float) -> int:
        """Set some columns of one person (a cheap row change: a suspension, new access levels). The new
        counter; raises LookupError when no such person is stored."""
        unknown = set(columns) - PERSON_COLUMNS
        if unknown or not columns:
            raise ValueError(f"cannot set people columns {sorted(unknown) or 'none'}")
        sets = ", ".join(f"{_quoted(k)} = ?" for k in columns)
        with self._lock, self._conn.transaction():
            cur = self._conn.execute(f"UPDATE people SET {sets}, changed_at = ? WHERE id = ?",
                                     [*columns.values(), at, person])
            if cur.rowcount != 1:
                raise LookupError(f"no stored person {person!r}")
            return _bump_people(self._conn)

    def add_card_row(self, card_hash: str, person: str, fmt: str, last4: str, at: float) -> int:
        """Add a card (its keyed hash and last four characters only); raises sqlite3.IntegrityError (on either
        engine) if the hash is already a card."""
        try:
            with self._lock, self._conn.transaction():
                self._conn.execute("INSERT INTO cards (hash, person, format, last4, added_at) VALUES (?, ?, ?, ?, ?)",
                                   [card_hash, person, fmt, last4, at])
                return _bump_people(self._conn)
        except sqlite3.IntegrityError:
            raise
        except self._conn.IntegrityError as exc:
            raise self._duplicate_row(exc) from exc

    # -------------------------------------------------------- event pages

    def _pick_rowids(self, sql: str, args: list[Any]) -> list[Any]:
        """The rowids :func:`_event_pick`'s query selects (call with the lock held). On SQLite through the
        sqlite-utils database's ``execute`` on the same connection: the seam tests/unit/test_desk_feed.py watches
        to check the plan SQLite picks (the port could be watched as well, once that test does)."""
        if self._conn.dialect == sqldb.SQLITE:
            return [r[0] for r in self._db.execute(sql, args).fetchall()]
        return [r[0] for r in self._conn.execute(sql, args).fetchall()]

    def _index_plus(self) -> str:
        """SQLite's unary ``+`` that keeps a column's index out of a plan (see :func:`_event_pick`); none on
        PostgreSQL."""
        return "+" if self._conn.dialect == sqldb.SQLITE else ""

    def event_page(self, *, before: int | None = None, after: int | None = None, door: str | None = None,
                   decision: str | None = None, people: Sequence[str] | None = None,
                   doors: Sequence[str] | None = None, types: Sequence[str] | None = None,
                   reason: str | None = None, since: str | None = None, until: str | None = None,
                   limit: int = 50) -> list[dict[str, Any]]:
        """Stored events with their arrival ``cursor`` (rowid) and ``snapshot_path``: newest first, or oldest
        first with ``after``; only those before/after a cursor, at a door (or one of ``doors``), with a
        decision, a reason, of ``people``, of ``types``, with ``since <= ts < until`` (stored ``ts`` text).

        Keyset paging on the rowid, so page 1000 costs what page 1 does. Which index answers is chosen here,
        not left to chance (the store has no ANALYZE statistics): the people filter uses ``events(person,
        ts)`` (migration 014), one door ``events(door)`` (rows come out in rowid order, no sort); otherwise the
        scan walks the rowid from the newest end and stops after ``limit`` matches; the ``ts`` index is used
        only for a closed time range without people or a door (an old week: a bounded range, then a sort).
        On PostgreSQL the same query runs without those hints (its planner keeps statistics)."""
        pick = _event_pick(before=before, after=after, door=door, decision=decision, people=people, doors=doors,
                           types=types, reason=reason, since=since, until=until, limit=limit,
                           plus=self._index_plus())
        if pick is None:
            return []
        sql, args, order = pick
        # Two steps: the matching rowids first (a sort over a time range then holds rowids, not whole rows:
        # a busy week is ~4x faster), then those rows with their snapshot paths.
        with self._lock:
            rowids = self._pick_rowids(sql, args)
            if not rowids:
                return []
            return [_without_rowid(r) for r in self._conn.query(
                "SELECT e.rowid AS cursor, e.*, s.path AS snapshot_path FROM events e "
                f"LEFT JOIN snapshots s ON s.id = e.snapshot WHERE e.rowid IN ({', '.join('?' for _ in rowids)}) "
                f"ORDER BY e.rowid {order}", rowids)]

    def event_tuples(self, *, before: int | None = None, door: str | None = None, decision: str | None = None,
                     people: Sequence[str] | None = None, doors: Sequence[str] | None = None,
                     types: Sequence[str] | None = None, reason: str | None = None, since: str | None = None,
                     until: str | None = None, limit: int = 500) -> list[tuple[Any, ...]]:
        """What :meth:`event_page` selects (newest first), as bare tuples of :data:`EVENT_TUPLE_COLUMNS`: the
        CSV export (server/web/export.py) reads 100,000 rows and a dict per row plus the columns it never
        writes were a tenth of its time."""
        pick = _event_pick(before=before, after=None, door=door, decision=decision, people=people, doors=doors,
                           types=types, reason=reason, since=since, until=until, limit=limit,
                           plus=self._index_plus())
        if pick is None:
            return []
        sql, args, order = pick
        cols = ", ".join(("e.rowid",) + tuple(f"e.{c}" for c in EVENT_TUPLE_COLUMNS[1:-1]) + ("s.path",))
        with self._lock:
            rowids = self._pick_rowids(sql, args)
            if not rowids:
                return []
            return list(self._conn.execute(
                f"SELECT {cols} FROM events e LEFT JOIN snapshots s ON s.id = e.snapshot "
                f"WHERE e.rowid IN ({', '.join('?' for _ in rowids)}) ORDER BY e.rowid {order}", rowids).fetchall())

    def door_latest_events(self, doors: Sequence[str], snapshot_types: Sequence[str],
                           lookback: int) -> dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
        """For each door: its newest stored event, and its newest ``lookback`` events of ``snapshot_types``
        (newest first), as :meth:`event_page` gives them. One statement for every door (the floor view refreshes
        on every event; two queries per door made a site with hundreds of doors cost hundreds of queries).

        Each door's picks are correlated subqueries on ``events(door)`` (migration 014), walked from the newest
        row down, so the cost grows with the number of doors, not with the store. Doors without events are
        absent from the result. The doors come in as one JSON list, one parameter: SQLite reads it with
        ``json_each``, PostgreSQL with ``json_array_elements_text`` (neither engine has the other's)."""
        if not doors:
            return {}
        marks = ", ".join("?" for _ in snapshot_types) or "NULL"
        door_list = ("json_each(?)" if self._conn.dialect == sqldb.SQLITE
                     else "json_array_elements_text(CAST(? AS json)) AS j(value)")
        plus = self._index_plus()
        sql = (
            f"WITH d(door) AS (SELECT value FROM {door_list}), picks(door, role, rid) AS ("
            " SELECT d.door, 0, (SELECT x.rowid FROM events x WHERE x.door = d.door ORDER BY x.rowid DESC LIMIT 1)"
            " FROM d"
            " UNION ALL"
            " SELECT d.door, 1, y.rowid FROM d JOIN events y ON y.rowid IN (SELECT z.rowid FROM events z"
            f"  WHERE z.door = d.door AND {plus}z.type IN ({marks}) ORDER BY z.rowid DESC LIMIT ?))"
            " SELECT p.door AS pick_door, p.role AS pick_role, e.rowid AS cursor, e.*, s.path AS snapshot_path"
            " FROM picks p JOIN events e ON e.rowid = p.rid LEFT JOIN snapshots s ON s.id = e.snapshot"
            " ORDER BY p.door, p.role, e.rowid DESC")
        out: dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]]]] = {}
        with self._lock:
            rows = self._conn.query(sql, [json.dumps(list(doors)), *snapshot_types, lookback])
        for row in rows:
            row = _without_rowid(row)
            door, role = row.pop("pick_door"), row.pop("pick_role")
            last, snaps = out.get(door, (None, []))
            if role == 0:
                last = row
            else:
                snaps.append(row)
            out[door] = (last, snaps)
        return out

    def event_with_cursor(self, event_id: str) -> dict[str, Any] | None:
        """One stored event as :meth:`event_page` gives it."""
        with self._lock:
            rows = self._conn.query("SELECT e.rowid AS cursor, e.*, s.path AS snapshot_path FROM events e "
                                    "LEFT JOIN snapshots s ON s.id = e.snapshot WHERE e.id = ?", [event_id])
        return _without_rowid(rows[0]) if rows else None


def _without_rowid(row: dict[str, Any]) -> dict[str, Any]:
    """An event row as handed out: without PostgreSQL's explicit ``rowid`` column, which ``e.*`` includes there
    (the row's ``cursor`` is that rowid on both engines)."""
    row.pop("rowid", None)
    return row
