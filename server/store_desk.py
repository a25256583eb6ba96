"""The store's security-desk records: the visitor watchlist and consents (migration ``007_visitor_desk``),
people and cards added or changed at the desk (``008_desk_admin``), and the pages of events the live view
reads.

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself; a
change of several rows (a CSV import of people and their cards) is one transaction here, all or nothing.
The rules (what a valid person or card is, what a watchlist entry matches) stay with the callers
(server/web/visitors.py, people.py, live.py).
"""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol, Sequence

import sqlite_utils

# The columns of desk_people the desk may set on a person of people.toml (a NULL keeps the file's value).
OVERRIDABLE = frozenset({"name", "kind", "clearance", "access_levels", "state"})


class DeskPerson(Protocol):
    """A validated person to add at the desk, cards already hashed (server/web/people.py ``NewPerson``)."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def clearance(self) -> int: ...
    @property
    def access_levels(self) -> list[str]: ...
    @property
    def cards(self) -> list[tuple[str, str, str]]: ...  # (hash, format, last4)


class DeskRecords:
    """Watchlist, visitor consents, desk people and cards, event pages (a base of ``Store``)."""

    _db: sqlite_utils.Database
    _lock: threading.RLock

    # ----------------------------------------------------------- watchlist

    def watchlist_entries(self) -> list[dict[str, Any]]:
        """Every entry (``id, kind, value, norm, note, added_by, added_at``), by kind and folded text."""
        with self._lock:
            return list(self._db.query("SELECT id, kind, value, norm, note, added_by, added_at FROM watchlist "
                                       "ORDER BY kind, norm"))

    def add_watchlist_entry(self, kind: str, value: str, norm: str, note: str, added_by: str, at: float) -> int | None:
        """Add an entry; its id, or None (nothing written) when the same kind and folded text is listed."""
        with self._lock, self._db.conn:
            if self._db.conn.execute("SELECT 1 FROM watchlist WHERE kind = ? AND norm = ?", [kind, norm]).fetchone():
                return None
            cur = self._db.conn.execute(
                "INSERT INTO watchlist (kind, value, norm, note, added_by, added_at) VALUES (?, ?, ?, ?, ?, ?)",
                [kind, value, norm, note, added_by, at])
            return int(cur.lastrowid or 0)

    def remove_watchlist_entry(self, entry_id: int) -> bool:
        with self._lock, self._db.conn:
            return self._db.conn.execute("DELETE FROM watchlist WHERE id = ?", [entry_id]).rowcount == 1

    # ----------------------------------------------------- visitor consents

    def add_visitor_consent(self, visitor: str, notice_version: str, photo_consent: bool, at: float,
                            operator: str) -> None:
        """Record the consent given at a check-in (which notice was shown, photos yes/no, taken by whom)."""
        with self._lock, self._db.conn:
            self._db.conn.execute(
                "INSERT INTO visitor_consents (visitor, notice_version, photo_consent, consented_at, operator) "
                "VALUES (?, ?, ?, ?, ?)", [visitor, notice_version, int(photo_consent), at, operator])

    def latest_visitor_consent(self, visitor: str) -> dict[str, Any] | None:
        """The visitor's latest consent (``notice_version, photo_consent, consented_at, operator``), if any."""
        with self._lock:
            rows = list(self._db.query("SELECT notice_version, photo_consent, consented_at, operator "
                                       "FROM visitor_consents WHERE visitor = ? ORDER BY id DESC LIMIT 1", [visitor]))
        return rows[0] if rows else None

    def visitor_consents(self, visitor: str) -> list[dict[str, Any]]:
        """Every consent the visitor gave, oldest first (``notice_version, photo_consent, consented_at``)."""
        with self._lock:
            return list(self._db.query("SELECT notice_version, photo_consent, consented_at FROM visitor_consents "
                                       "WHERE visitor = ? ORDER BY id", [visitor]))

    def drop_orphan_consents(self) -> int:
        """Delete the consents of visitors no longer stored (removed by retention); how many."""
        with self._lock, self._db.conn:
            return self._db.conn.execute(
                "DELETE FROM visitor_consents WHERE visitor NOT IN (SELECT id FROM visitors)").rowcount

    # ------------------------------------------------- desk people and cards

    def desk_person(self, person: str) -> dict[str, Any] | None:
        """The desk's row for a person (added at the desk, or overriding people.toml), if any."""
        with self._lock:
            rows = list(self._db.query("SELECT * FROM desk_people WHERE id = ?", [person]))
        return rows[0] if rows else None

    def add_desk_people(self, people: Sequence[DeskPerson], at: float) -> None:
        """Add people and their cards in one transaction: all of them, or (on any error) none."""
        with self._lock, self._db.conn:
            conn = self._db.conn
            for p in people:
                conn.execute("INSERT INTO desk_people (id, added, name, kind, clearance, access_levels, state, "
                             "changed_at) VALUES (?, 1, ?, ?, ?, ?, 'active', ?)",
                             [p.id, p.name, p.kind, p.clearance, json.dumps(p.access_levels), at])
                for card_hash, fmt, last4 in p.cards:
                    conn.execute("INSERT INTO desk_cards (hash, person, format, last4, added_at) "
                                 "VALUES (?, ?, ?, ?, ?)", [card_hash, p.id, fmt, last4, at])

    def override_desk_person(self, person: str, columns: dict[str, Any], at: float) -> None:
        """Set desk columns of a person (an override row for a people.toml person, other columns kept NULL)."""
        unknown = set(columns) - OVERRIDABLE
        if unknown or not columns:
            raise ValueError(f"cannot set desk_people columns {sorted(unknown) or 'none'}")
        sets = ", ".join(f"{k} = ?" for k in columns)
        with self._lock, self._db.conn:
            self._db.conn.execute("INSERT OR IGNORE INTO desk_people (id, added, changed_at) VALUES (?, 0, ?)",
                                  [person, at])
            self._db.conn.execute(f"UPDATE desk_people SET {sets}, changed_at = ? WHERE id = ?",
                                  [*columns.values(), at, person])

    def add_desk_card(self, card_hash: str, person: str, fmt: str, last4: str, at: float) -> None:
        """Add a card (its keyed hash and last four characters only); raises if the hash is already a card."""
        with self._lock, self._db.conn:
            self._db.conn.execute("INSERT INTO desk_cards (hash, person, format, last4, added_at) "
                                  "VALUES (?, ?, ?, ?, ?)", [card_hash, person, fmt, last4, at])

    # -------------------------------------------------------- event pages

    def event_page(self, *, before: int | None = None, after: int | None = None, door: str | None = None,
                   decision: str | None = None, people: Sequence[str] | None = None,
                   limit: int = 50) -> list[dict[str, Any]]:
        """Stored events with their arrival ``cursor`` (rowid) and ``snapshot_path``: newest first, or oldest
        first with ``after``; only those before/after a cursor, at a door, with a decision, of ``people``."""
        clauses: list[str] = []
        args: list[Any] = []
        if before is not None:
            clauses.append("e.rowid < ?")
            args.append(before)
        if after is not None:
            clauses.append("e.rowid > ?")
            args.append(after)
        if door:
            clauses.append("e.door = ?")
            args.append(door)
        if decision:
            clauses.append("e.decision = ?")
            args.append(decision)
        if people is not None:
            if not people:
                return []
            clauses.append(f"e.person IN ({', '.join('?' for _ in people)})")
            args.extend(people)
        sql = ("SELECT e.rowid AS cursor, e.*, s.path AS snapshot_path FROM events e "
               "LEFT JOIN snapshots s ON s.id = e.snapshot" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
               + f" ORDER BY e.rowid {'ASC' if after is not None else 'DESC'} LIMIT ?")
        with self._lock:
            return list(self._db.query(sql, [*args, limit]))

    def event_with_cursor(self, event_id: str) -> dict[str, Any] | None:
        """One stored event as :meth:`event_page` gives it."""
        with self._lock:
            rows = list(self._db.query("SELECT e.rowid AS cursor, e.*, s.path AS snapshot_path FROM events e "
                                       "LEFT JOIN snapshots s ON s.id = e.snapshot WHERE e.id = ?", [event_id]))
        return rows[0] if rows else None
