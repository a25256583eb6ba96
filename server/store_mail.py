"""The store's outbound mail queue and people's e-mail addresses (server/mail.py, server/invitations.py).

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself.

The queue is durable because the desk must never wait on a relay: enqueueing is one INSERT, and the sender
thread (server/mail.py) delivers later, so a relay that is down, slow or refusing costs the receptionist
nothing and a server restart loses nothing. A message is *claimed* (``leased``) before it is sent by moving its
``next_attempt_at`` past a lease, so no other sender takes it meanwhile; the server, the only sender, releases
every lease when it starts (:meth:`MailRecords.release_mail_leases`), so what a sender that died mid-send held
is due again at once after the restart rather than when the lease runs out.

Personal data is kept no longer than needed: once a message is sent its body (names, the pass, the QR) is
dropped and only who, what kind, when and how it went stays, for the desk and the data subject; rows about a
visit go with the visit (retention, erasure: server/store_privacy.py).

Runs on SQLite and PostgreSQL (through the connection port, server/sqldb.py), in the same SQL on both, but for the
claim: SQLite's ``BEGIN IMMEDIATE`` makes another process's claim wait for this one; on PostgreSQL the claim's
read locks the rows it returns (``FOR UPDATE SKIP LOCKED``), so two senders never take the same message and
neither waits for the other. ``rowid``, the tie-break of the time orders, is an explicit column there.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

import sqlite_utils

from server import sqldb

#: Delivery states a message moves through: queued (waiting or retrying) -> sent | failed (dead letter).
MAIL_STATES = ("queued", "sent", "failed")
_META = ("id, kind, about, person, recipient, subject, status, attempts, next_attempt_at, queued_at, sent_at, "
         "last_error, updated_at")


def m018_mail_outbox(db: sqlite_utils.Database) -> None:
    """The outbound mail queue (``mail_outbox``: the RFC 5322 bytes in ``message`` until sent, or, for a message
    the sender composes itself, the JSON ``payload`` it is composed from; the delivery state beside it;
    ``about`` the visitor a message concerns, ``person`` the site person it goes to, if any)
    and people's e-mail addresses (``person_contacts``: apart from ``people`` so a people.toml import, which
    rewrites people rows, keeps them)."""
    db["mail_outbox"].create(
        {"id": str, "kind": str, "about": str, "person": str, "recipient": str, "subject": str, "message": bytes,
         "payload": str, "status": str, "attempts": int, "leased": int, "next_attempt_at": float, "queued_at": float, "sent_at": float,
         "last_error": str, "updated_at": float},
        pk="id", not_null={"kind", "recipient", "status", "attempts", "leased", "next_attempt_at", "queued_at",
                           "updated_at"}, defaults={"leased": 0})
    db["mail_outbox"].create_index(["status", "next_attempt_at"])
    db["mail_outbox"].create_index(["about"])
    db["mail_outbox"].create_index(["person"])
    db["person_contacts"].create({"person": str, "email": str, "changed_at": float}, pk="person",
                                 not_null={"email", "changed_at"})


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" for _ in values)


class MailRecords:
    """Mail queue and contact queries (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock

    # ------------------------------------------------------------ queue

    def enqueue_mail(self, mail_id: str, kind: str, recipient: str, subject: str, message: bytes | None, at: float, *,
                     about: str | None = None, person: str | None = None, payload: str | None = None) -> None:
        """Queue one message (its bytes, or the JSON ``payload`` the sender composes it from), due now.
        Committed before returning: a crash right after loses nothing."""
        with self._lock, self._conn.transaction():
            self._conn.execute(
                "INSERT INTO mail_outbox (id, kind, about, person, recipient, subject, message, payload, status, "
                "attempts, next_attempt_at, queued_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?, ?)",
                [mail_id, kind, about, person, recipient, subject, message, payload, at, at, at])

    def next_mail_due(self) -> float | None:
        """When the earliest queued message is due (epoch seconds), or None when nothing is queued."""
        with self._lock:
            row = self._conn.execute("SELECT MIN(next_attempt_at) FROM mail_outbox WHERE status = 'queued'"
                                     ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def claim_due_mail(self, now: float, lease_until: float, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` messages due at ``now``, oldest first, each leased until ``lease_until`` so no other
        sender takes it meanwhile; each row with its ``message`` bytes and ``attempts`` so far."""
        with self._lock:
            conn = self._conn
            lock = " FOR UPDATE SKIP LOCKED" if conn.dialect == sqldb.POSTGRESQL else ""  # see the module docstring
            try:
                if not conn.in_transaction:
                    conn.begin(immediate=True)  # SQLite: another process's sender waits for this claim
                rows = [dict(zip(("id", "kind", "recipient", "message", "payload", "attempts", "queued_at"), r))
                        for r in conn.execute(
                    "SELECT id, kind, recipient, message, payload, attempts, queued_at FROM mail_outbox "
                    "WHERE status = 'queued' "
                    "AND next_attempt_at <= ? ORDER BY next_attempt_at, queued_at LIMIT ?" + lock, [now, limit])]
                if rows:
                    conn.execute(f"UPDATE mail_outbox SET next_attempt_at = ?, leased = 1 WHERE id IN ({_marks(rows)})",
                                 [lease_until, *(r["id"] for r in rows)])
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return rows

    def release_mail_leases(self, now: float) -> int:
        """Make every claimed, unfinished message due at ``now`` (the sender that claimed it is gone); how many."""
        with self._lock, self._conn.transaction():
            return int(self._conn.execute("UPDATE mail_outbox SET leased = 0, next_attempt_at = ? "
                                          "WHERE status = 'queued' AND leased = 1", [now]).rowcount)

    def record_mail_outcomes(self, outcomes: Sequence[tuple[str, str, int, float, str | None, bytes | None]],
                             at: float) -> None:
        """A batch's outcomes in one transaction (one commit, not one per message): each ``(id, status,
        attempts, next_attempt_at, error, composed)``. ``sent``: the body (personal data, the pass) is dropped
        and the record of delivery stays; ``failed`` (dead letter): the body stays until retention, for an admin
        to see what failed; ``queued``: tried again at ``next_attempt_at``. ``composed``: the bytes the sender
        composed from the row's payload this round, kept (and the payload dropped) so a retry sends the same."""
        with self._lock, self._conn.transaction():
            conn = self._conn
            for mail_id, status, attempts, next_at, error, composed in outcomes:
                if composed is not None and status != "sent":
                    conn.execute("UPDATE mail_outbox SET message = ?, payload = NULL WHERE id = ?", [composed, mail_id])
                if status == "sent":
                    conn.execute("UPDATE mail_outbox SET status = 'sent', message = NULL, payload = NULL, leased = 0, attempts = ?, "
                                 "sent_at = ?, updated_at = ?, last_error = NULL WHERE id = ?",
                                 [attempts, at, at, mail_id])
                else:
                    conn.execute("UPDATE mail_outbox SET status = ?, leased = 0, attempts = ?, next_attempt_at = ?, last_error = ?, "
                                 "updated_at = ? WHERE id = ? AND status = 'queued'",
                                 [status, attempts, next_at, (error or "")[:500], at, mail_id])

    def mail_records(self, *, about: str | None = None, kind: str | None = None, status: str | None = None,
                     limit: int = 200) -> list[dict[str, Any]]:
        """Queue rows without their bodies, newest first, filtered by visitor, kind and state."""
        clauses, args = [], []
        for col, value in (("about", about), ("kind", kind), ("status", status)):
            if value is not None:
                clauses.append(f"{col} = ?")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            return self._conn.query(f"SELECT {_META} FROM mail_outbox{where} ORDER BY queued_at DESC, rowid DESC "
                                    "LIMIT ?", [*args, limit])

    def mail_message(self, mail_id: str) -> bytes | None:
        """The queued (or dead-lettered) message's bytes; None once sent, or when there is no such message."""
        with self._lock:
            row = self._conn.execute("SELECT message FROM mail_outbox WHERE id = ?", [mail_id]).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def mail_counts(self) -> dict[str, int]:
        """How many messages are in each state."""
        with self._lock:
            found = dict(self._conn.execute("SELECT status, COUNT(*) FROM mail_outbox GROUP BY status").fetchall())
        return {s: int(found.get(s, 0)) for s in MAIL_STATES}

    # ------------------------------------------------------- data subjects

    def subject_mail(self, person: str) -> list[dict[str, Any]]:
        """Every message about this visitor or sent to this person, without bodies, oldest first."""
        with self._lock:
            return self._conn.query(f"SELECT {_META} FROM mail_outbox WHERE about = ? OR person = ? "
                                    "ORDER BY queued_at, rowid", [person, person])

    # ------------------------------------------------------------ contacts

    def set_person_email(self, person: str, email: str | None, at: float) -> bool:
        """Set (or, with None or empty, remove) a person's e-mail address; False when nothing changed."""
        with self._lock, self._conn.transaction():
            conn = self._conn
            if not email:
                return conn.execute("DELETE FROM person_contacts WHERE person = ?", [person]).rowcount > 0
            old = conn.execute("SELECT email FROM person_contacts WHERE person = ?", [person]).fetchone()
            if old is not None and old[0] == email:
                return False
            conn.execute("INSERT INTO person_contacts (person, email, changed_at) VALUES (?, ?, ?) "
                         "ON CONFLICT(person) DO UPDATE SET email = excluded.email, changed_at = excluded.changed_at",
                         [person, email, at])
            return True

    def person_email(self, person: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT email FROM person_contacts WHERE person = ?", [person]).fetchone()
        return None if row is None else str(row[0])
