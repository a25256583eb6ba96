"""The store's queries for retention and data-subject rights: what is past its period, what is held about
one person, and the erasure of it (server/retention.py, server/subjects.py, docs/security.md).

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself.
Retention works in small batches (one short transaction each) so the server keeps ingesting meanwhile;
an erasure is one transaction, all or nothing. What an unresolved alarm needs (its source event and that
event's snapshot) is never selected for deletion.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Sequence

from server import sqldb
from server.store_desk import has_table
from server.store_incidents import HELD_ALARMS, held_event

# Events that an alarm an operator has not resolved yet points at: never deleted.
_ALARM_NEEDS = "SELECT source_event FROM alarms WHERE resolved_at IS NULL AND source_event IS NOT NULL"


def _expired_events(dialect: str) -> str:
    """Events past their period: both the device's timestamp and the server's receipt are before the cut-off,
    so a device whose clock is years behind cannot get its fresh events purged. What an open incident holds
    (server/store_incidents.py) is under legal hold: kept until the incident closes (its condition reads the
    held doors' JSON list with each engine's own function, hence the dialect)."""
    return (f"ts < ? AND (received_at IS NULL OR received_at < ?) AND id NOT IN ({_ALARM_NEEDS}) "
            f"AND NOT {held_event(dialect)}")


def _expired_snapshots(dialect: str) -> str:
    return (f"received_at < ? AND id NOT IN ({_ALARM_NEEDS}) "
            f"AND NOT EXISTS (SELECT 1 FROM events WHERE events.id = snapshots.id AND {held_event(dialect)})")


def _contains(dialect: str, column: str) -> str:
    """``column`` holds the text of the next parameter, case-sensitively: SQLite's ``instr`` and PostgreSQL's
    ``strpos`` (the same arguments and answer; neither engine has the other's)."""
    return f"{'strpos' if dialect == sqldb.POSTGRESQL else 'instr'}({column}, ?) > 0"


def _without_rowid(row: dict[str, Any]) -> dict[str, Any]:
    """A row as handed out: without PostgreSQL's explicit ``rowid`` column (``SELECT *`` of events has it there)."""
    row.pop("rowid", None)
    return row

# A visit is over once checked out, or once its window closed without a check-in; a visitor still
# checked in is kept (their badge is live: the desk must check them out).
_ENDED_VISITS = "status != 'checked_in' AND COALESCE(checked_out_at, valid_until) < ?"


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


class PrivacyRecords:
    """Retention and erasure queries (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock

    # ------------------------------------------------------------ retention

    def count_events_kept_for_alarms(self, cutoff_ts: str) -> int:
        """Events older than ``cutoff_ts`` kept only because an open alarm needs them."""
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM events WHERE ts < ? AND id IN ({_ALARM_NEEDS})",
                                          [cutoff_ts]).fetchone()[0])

    def count_expired_events(self, cutoff_ts: str, cutoff_received: float) -> int:
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM events WHERE {_expired_events(self._conn.dialect)}",
                                          [cutoff_ts, cutoff_received]).fetchone()[0])

    def expired_events(self, cutoff_ts: str, cutoff_received: float, limit: int) -> list[tuple[str, str | None]]:
        """Up to ``limit`` events past their period, as ``(event id, snapshot id)``."""
        with self._lock:
            return [(str(r[0]), r[1]) for r in self._conn.execute(
                f"SELECT id, snapshot FROM events WHERE {_expired_events(self._conn.dialect)} LIMIT ?",
                [cutoff_ts, cutoff_received, limit]).fetchall()]

    def delete_events(self, event_ids: Sequence[str]) -> int:
        """Delete these events (their snapshots are deleted first, by :meth:`delete_snapshot`)."""
        if not event_ids:
            return 0
        with self._lock, self._conn.transaction():
            return self._conn.execute(f"DELETE FROM events WHERE id IN ({_marks(event_ids)})",
                                      list(event_ids)).rowcount

    def count_expired_snapshots(self, cutoff_received: float, event_cutoff_ts: str,
                                event_cutoff_received: float) -> int:
        """Snapshots past their own period, or whose event is past its period."""
        dialect = self._conn.dialect
        with self._lock:
            return int(self._conn.execute(
                f"SELECT COUNT(*) FROM snapshots WHERE {_expired_snapshots(dialect)} OR id IN (SELECT snapshot FROM "
                f"events WHERE {_expired_events(dialect)})",
                [cutoff_received, event_cutoff_ts, event_cutoff_received]).fetchone()[0])

    def expired_snapshots(self, cutoff_received: float, limit: int) -> list[str]:
        """Up to ``limit`` ids of snapshots past their own period."""
        with self._lock:
            return [str(r[0]) for r in self._conn.execute(
                f"SELECT id FROM snapshots WHERE {_expired_snapshots(self._conn.dialect)} LIMIT ?", [cutoff_received, limit])]

    def ended_visits(self, cutoff: float) -> list[str]:
        """Ids of the visitors whose visit ended before ``cutoff``."""
        with self._lock:
            return [str(r[0]) for r in self._conn.execute(f"SELECT id FROM visitors WHERE {_ENDED_VISITS}",
                                                          [cutoff])]

    def count_presence_of(self, people: Sequence[str]) -> int:
        if not people:
            return 0
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM presence WHERE person IN ({_marks(people)})",
                                          list(people)).fetchone()[0])

    def delete_visitors(self, visitor_ids: Sequence[str], batch: int) -> int:
        """Delete these visitors and their presence, in one transaction; returns the presence rows removed."""
        removed = 0
        with self._lock, self._conn.transaction():
            for i in range(0, len(visitor_ids), batch):
                chunk = list(visitor_ids[i:i + batch])
                removed += self._conn.execute(f"DELETE FROM presence WHERE person IN ({_marks(chunk)})",
                                              chunk).rowcount
                self._conn.execute(f"DELETE FROM visitors WHERE id IN ({_marks(chunk)})", chunk)
                # Their invitations and host notices go with the visit (server/store_mail.py).
                self._conn.execute(f"DELETE FROM mail_outbox WHERE about IN ({_marks(chunk)})", chunk)
        return removed

    def count_resolved_alarms_before(self, cutoff: float) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM alarms WHERE resolved_at IS NOT NULL "
                                          f"AND resolved_at < ? AND id NOT IN ({HELD_ALARMS})",
                                          [cutoff]).fetchone()[0])

    def delete_resolved_alarms_before(self, cutoff: float) -> int:
        """Delete the alarms resolved before ``cutoff`` (an open alarm stays whatever its age)."""
        with self._lock, self._conn.transaction():
            return self._conn.execute("DELETE FROM alarms WHERE resolved_at IS NOT NULL AND resolved_at < ? "
                                      f"AND id NOT IN ({HELD_ALARMS})", [cutoff]).rowcount

    # ------------------------------------------------------- data subjects

    def subject_cards_and_name(self, person: str) -> tuple[list[str], str | None]:
        """The hashes of ``person``'s cards in the store, and the name the store holds for them (a person of
        the site, else a visitor), if any."""
        with self._lock:
            hashes = [str(r[0]) for r in self._conn.execute("SELECT hash FROM cards WHERE person = ?", [person])]
            row = self._conn.execute("SELECT name FROM people WHERE id = ?", [person]).fetchone()
            row = row or self._conn.execute("SELECT name FROM visitors WHERE id = ?", [person]).fetchone()
        return hashes, (row[0] if row else None)

    @staticmethod
    def _subject_where(person: str, card_hashes: Sequence[str]) -> tuple[str, list[str]]:
        clauses, args = ["person = ?"], [person]
        if card_hashes:
            clauses.append(f"credential_hash IN ({_marks(card_hashes)})")
            args += card_hashes
        return " OR ".join(clauses), args

    def subject_events(self, person: str, card_hashes: Sequence[str]) -> list[dict[str, Any]]:
        """Every stored event of the person or of one of their cards, in time order."""
        where, args = self._subject_where(person, card_hashes)
        with self._lock:
            return [_without_rowid(r) for r in
                    self._conn.query(f"SELECT * FROM events WHERE {where} ORDER BY ts, seq", args)]

    def visitor_rows(self, visitor: str) -> list[dict[str, Any]]:
        """The visitor register's rows for this id (every column)."""
        with self._lock:
            return self._conn.query("SELECT * FROM visitors WHERE id = ?", [visitor])

    def presence_rows(self, person: str) -> list[dict[str, Any]]:
        with self._lock:
            return self._conn.query("SELECT * FROM presence WHERE person = ?", [person])

    def enable_secure_delete(self) -> None:
        """From now on deleted and overwritten content is zeroed on disk, not left in free pages (SQLite's
        ``secure_delete``). PostgreSQL has no such setting: its deleted rows stay in the table's pages until a
        VACUUM reuses them, so there this does nothing."""
        if self._conn.dialect != sqldb.SQLITE:
            return
        with self._lock:
            self._conn.execute("PRAGMA secure_delete = ON")

    def erase_subject_rows(self, person: str, ref: str, card_hashes: Sequence[str],
                           scrub: Callable[[Any], Any], at: float) -> dict[str, int]:
        """Pseudonymise or delete every row about ``person`` in one transaction; the counts by kind.

        Their events get the pseudonym ``ref`` and lose the card; ``scrub`` rewrites a decoded ``detail``
        (theirs, and other people's events and alarms that mention them); visits, consents, presence, desk
        rows, their person and card rows (a running server drops them at its next poll: ``people.changes``) and
        card states, mail about their visit or sent to them and their e-mail address go; visits they hosted
        name the pseudonym; ``ref`` is remembered as erased."""
        counts = dict.fromkeys(("events", "mentions", "visits", "consents", "presence", "card_states", "alarms",
                                "hosted_visits", "people", "cards", "photos", "mails", "contacts", "agreements",
                                "webhooks", "siem"), 0)
        where, args = self._subject_where(person, card_hashes)
        needle = json.dumps(person)  # the id as a JSON string, matched case-sensitively (instr / strpos)
        with self._lock, self._conn.transaction():
            conn = self._conn
            dialect = conn.dialect
            rows = conn.execute(f"SELECT id, detail FROM events WHERE {where}", args).fetchall()
            for eid, detail in rows:
                conn.execute("UPDATE events SET person = ?, credential_hash = NULL, credential_last4 = NULL, "
                             "detail = ? WHERE id = ?",
                             [ref, json.dumps(scrub(json.loads(detail or "{}")), sort_keys=True), eid])
            counts["events"] = len(rows)
            # Other people's events and alarms that mention them (an escort, a companion) keep their own data.
            # The companions of a grant (migration 022) are a JSON list of ids: the same scrub, same needle.
            for table, col, c in (("events", "detail", "mentions"), ("events", "companions", "mentions"),
                                  ("alarms", "detail", "alarms")):
                hits = conn.execute(f"SELECT id, {col} FROM {table} WHERE {_contains(dialect, col)}",
                                    [needle]).fetchall()
                for rid, detail in hits:
                    conn.execute(f"UPDATE {table} SET {col} = ? WHERE id = ?",
                                 [json.dumps(scrub(json.loads(detail or "{}")), sort_keys=True), rid])
                    counts[c] += 1
            counts["visits"] = conn.execute("DELETE FROM visitors WHERE id = ?", [person]).rowcount
            counts["consents"] = conn.execute("DELETE FROM visitor_consents WHERE visitor = ?", [person]).rowcount
            # Agreements they accepted (a drawn signature's ciphertext and only key with the row), what their visit
            # needed and its watchlist hold (server/store_agreements.py); the audit log keeps the proof under the
            # pseudonym (kind, version, method).
            counts["agreements"] = conn.execute("DELETE FROM agreement_acceptances WHERE visit = ?",
                                                [person]).rowcount
            conn.execute("DELETE FROM agreement_required WHERE scope = ?", [person])
            conn.execute("DELETE FROM visit_holds WHERE visit = ?", [person])
            counts["hosted_visits"] = conn.execute("UPDATE visitors SET host = ? WHERE host = ?",
                                                   [ref, person]).rowcount
            counts["presence"] = conn.execute("DELETE FROM presence WHERE person = ?", [person]).rowcount
            # An incident holding their movements keeps its query under the pseudonym, which their events now carry
            # (store_incidents.py); its timeline's "attached person …" line names the pseudonym too.
            conn.execute("UPDATE incident_items SET ref = ? WHERE kind = 'person' AND ref = ?", [ref, person])
            conn.execute("UPDATE incident_log SET text = replace(text, ?, ?) WHERE what = 'attached' "
                         "AND substr(text, 1, CAST(? AS INTEGER)) = ?", [f"person {person} ", f"person {ref} ",
                                                        len(f"person {person} "), f"person {person} "])
            # Mail about their visit or sent to them (queued ones too: they are never sent), and their address.
            counts["mails"] = conn.execute("DELETE FROM mail_outbox WHERE about = ? OR person = ?",
                                           [person, person]).rowcount
            counts["contacts"] = conn.execute("DELETE FROM person_contacts WHERE person = ?", [person]).rowcount
            # Webhook deliveries not sent yet, and dead letters, whose body names them (server/store_webhooks.py; a
            # delivered one's body is already gone).
            counts["webhooks"] = conn.execute("DELETE FROM webhook_deliveries WHERE payload IS NOT NULL AND "
                                              f"{_contains(dialect, 'payload')}", [needle]).rowcount
            # Syslog messages queued for the SIEM about them (server/store_siem.py), not yet taken by the collector.
            counts["siem"] = conn.execute("DELETE FROM siem_queue WHERE person = ?", [person]).rowcount
            counts["cards"] = conn.execute("DELETE FROM cards WHERE person = ?", [person]).rowcount
            counts["people"] = conn.execute("DELETE FROM people WHERE id = ?", [person]).rowcount
            # Their cardholder photo: the row holds its ciphertext and the only copy of its key (store_photos.py).
            counts["photos"] = conn.execute("DELETE FROM person_photos WHERE person = ?", [person]).rowcount
            if has_table(conn, "desk_people"):  # migration 008's rows, not folded in yet (server/people.py seed)
                counts["people"] += conn.execute("DELETE FROM desk_people WHERE id = ?", [person]).rowcount
                counts["cards"] += conn.execute("DELETE FROM desk_cards WHERE person = ?", [person]).rowcount
            if counts["people"] or counts["cards"]:
                conn.execute("INSERT INTO counters (name, value) VALUES ('people.changes', 1) "
                             "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1")
            if card_hashes:
                counts["card_states"] = conn.execute(
                    f"DELETE FROM credential_states WHERE hash IN ({_marks(card_hashes)})", list(card_hashes)).rowcount
            conn.execute("INSERT INTO erased_subjects (ref, erased_at) VALUES (?, ?) ON CONFLICT DO NOTHING",
                         [ref, at])
        return counts

    def checkpoint_wal(self) -> bool:
        """Copy the write-ahead log back into the database and truncate it; False when a reader held it off
        (best effort: old page images live on in the log until then). On PostgreSQL always False: the server's own
        write-ahead log and checkpoints are not the store's to force (``CHECKPOINT`` needs a privileged role), so
        old row images may live on there until PostgreSQL recycles them."""
        if self._conn.dialect != sqldb.SQLITE:
            return False
        with self._lock:
            busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        return not busy
