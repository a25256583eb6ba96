"""The store's records for agreements and watchlist holds (migration ``020_visitor_agreements``).

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself. The rules
(which agreements a visit needs, who may lift a hold) are the callers' (server/agreements.py,
server/visitors.py).

- ``agreement_versions``: every version of every agreement text the site keeps; a row is never updated (a
  change is a new version), so an acceptance names exactly the text the visitor saw.
- ``agreement_required``: which agreements a visit needs: ``scope`` ``site`` (the site's default) or a visit id.
- ``agreement_acceptances``: who accepted which version, when, how (``typed`` name or ``drawn`` signature), and
  the desk operator (or ``kiosk`` account) in front of them. A drawn signature is a PNG encrypted like a
  cardholder photo (server/store_photos.py): its own data key, wrapped under the site's current data key,
  the site, visit and acceptance id bound as AAD; deleting the row destroys it.
- ``visit_holds``: a visit held by a watchlist match (entry ids only, never the text) until an operator
  overrides it with a reason or refuses the visit.

Runs on SQLite and PostgreSQL (through the connection port, server/sqldb.py) in the same SQL; ``has_signature`` is
spelled as a ``CASE`` giving 1 or 0 on both (PostgreSQL's ``IS NOT NULL`` would read back as a boolean).
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from typing import Any, Sequence

import sqlite_utils

from doorkeep.envelope import KEY_BYTES, SnapshotKeys, SnapshotRef, unwrap_data_key, wrap_data_key
from server import sqldb
from server.store_photos import _decrypt, _encrypt

#: The ``device`` part of a signature's AAD reference: bound to the visit.
SIGNATURE_OWNER = "visit-signature/"


def m020_visitor_agreements(db: sqlite_utils.Database) -> None:
    """Agreement texts (versioned, never edited), what visits need, acceptances (signatures encrypted) and
    watchlist holds (server/store_agreements.py)."""
    db["agreement_versions"].create({"id": int, "kind": str, "version": int, "title": str, "text": str,
                                     "added_by": str, "added_at": float}, pk="id",
                                    not_null={"kind", "version", "title", "text", "added_at"})
    db["agreement_versions"].create_index(["kind", "version"], unique=True)
    db["agreement_required"].create({"scope": str, "kind": str}, pk=("scope", "kind"))
    db["agreement_acceptances"].create({"id": str, "visit": str, "kind": str, "version": int, "accepted_at": float,
                                        "method": str, "typed_name": str, "operator": str, "site": str,
                                        "kek_id": str, "wrapped_key": bytes, "signature": bytes}, pk="id",
                                       not_null={"visit", "kind", "version", "accepted_at", "method"})
    db["agreement_acceptances"].create_index(["visit"])
    db["visit_holds"].create({"visit": str, "state": str, "entries": str, "stage": str, "held_at": float,
                              "resolved_by": str, "resolved_at": float, "reason": str}, pk="visit",
                             not_null={"state", "entries", "held_at"})


def signature_ref(site: str, visit: str, acceptance_id: str) -> SnapshotRef:
    return SnapshotRef(site, SIGNATURE_OWNER + visit, acceptance_id)


class AgreementRecords:
    """Agreement versions, requirements, acceptances and watchlist holds (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock
    _snapshot_keys: Any

    # ------------------------------------------------------------ versions

    def add_agreement_version(self, kind: str, title: str, text: str, actor: str, at: float) -> int:
        """Store the next version of ``kind``; returns its number (1 for a new agreement)."""
        with self._lock, self._conn.transaction():
            conn = self._conn
            (last,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM agreement_versions WHERE kind = ?",
                                   [kind]).fetchone()
            conn.execute("INSERT INTO agreement_versions (kind, version, title, text, added_by, added_at) "
                         "VALUES (?, ?, ?, ?, ?, ?)", [kind, last + 1, title, text, actor, at])
            return int(last) + 1

    def agreement_versions(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every version (of one kind), by kind then version."""
        with self._lock:
            if kind is None:
                return self._conn.query("SELECT * FROM agreement_versions ORDER BY kind, version")
            return self._conn.query("SELECT * FROM agreement_versions WHERE kind = ? ORDER BY version", [kind])

    # -------------------------------------------------------- requirements

    def agreement_required(self, scope: str) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT kind FROM agreement_required WHERE scope = ? "
                                                     "ORDER BY kind", [scope])]

    def set_agreement_required(self, scope: str, kinds: Sequence[str]) -> None:
        with self._lock, self._conn.transaction():
            self._conn.execute("DELETE FROM agreement_required WHERE scope = ?", [scope])
            self._conn.executemany("INSERT INTO agreement_required (scope, kind) VALUES (?, ?)",
                                   [(scope, k) for k in dict.fromkeys(kinds)])

    # --------------------------------------------------------- acceptances

    def add_acceptance(self, visit: str, kind: str, version: int, *, method: str, typed_name: str | None,
                       operator: str | None, at: float, site: str, signature_png: bytes | None = None) -> str:
        """Record an acceptance; a drawn signature is encrypted before it is written. Returns its id."""
        acc_id = uuid.uuid4().hex
        kek_id = wrapped = body = None
        if signature_png is not None:
            keys = self._snapshot_keys()
            ref = signature_ref(site, visit, acc_id)
            data_key = secrets.token_bytes(KEY_BYTES)
            body = _encrypt(signature_png, data_key, ref)
            kek_id, kek = keys.keyring.current()
            wrapped = wrap_data_key(kek_id, kek, data_key, ref)
        with self._lock, self._conn.transaction():
            self._conn.execute(
                "INSERT INTO agreement_acceptances (id, visit, kind, version, accepted_at, method, typed_name, "
                "operator, site, kek_id, wrapped_key, signature) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [acc_id, visit, kind, version, at, method, typed_name, operator, site, kek_id, wrapped, body])
        return acc_id

    def acceptances(self, visit: str) -> list[dict[str, Any]]:
        """A visit's acceptances without the signature's bytes (``has_signature`` says whether there is one)."""
        with self._lock:
            return self._conn.query(
                "SELECT id, visit, kind, version, accepted_at, method, typed_name, operator, "
                "CASE WHEN signature IS NULL THEN 0 ELSE 1 END AS has_signature FROM agreement_acceptances "
                "WHERE visit = ? ORDER BY accepted_at, kind", [visit])

    def acceptance_signature(self, acceptance_id: str) -> bytes | None:
        """The drawn signature's PNG, decrypted in memory; None when the acceptance was typed or is gone."""
        with self._lock:
            row = self._conn.execute("SELECT visit, site, kek_id, wrapped_key, signature FROM "
                                     "agreement_acceptances WHERE id = ?", [acceptance_id]).fetchone()
        if row is None or row[4] is None:
            return None
        visit, site, kek_id, wrapped, body = row
        ref = signature_ref(site, visit, acceptance_id)
        keys = self._snapshot_keys()
        data_key = unwrap_data_key(kek_id, keys.keyring.get(kek_id), wrapped, ref)
        return _decrypt(bytes(body), data_key, ref)

    def delete_visit_agreements(self, visits: Sequence[str]) -> int:
        """Forget the acceptances (signatures with them), requirements and holds of these visits; how many
        acceptances went."""
        if not visits:
            return 0
        marks = ", ".join("?" for _ in visits)
        with self._lock, self._conn.transaction():
            conn = self._conn
            n = conn.execute(f"DELETE FROM agreement_acceptances WHERE visit IN ({marks})", list(visits)).rowcount
            conn.execute(f"DELETE FROM agreement_required WHERE scope IN ({marks})", list(visits))
            conn.execute(f"DELETE FROM visit_holds WHERE visit IN ({marks})", list(visits))
            return int(n)

    def delete_orphan_agreements(self) -> int:
        """Acceptances, requirements and holds of visits no longer stored (retention removed them); how many rows."""
        with self._lock, self._conn.transaction():
            conn = self._conn
            n = conn.execute("DELETE FROM agreement_acceptances WHERE visit NOT IN (SELECT id FROM visitors)"
                             ).rowcount
            n += conn.execute("DELETE FROM agreement_required WHERE scope != 'site' AND scope NOT IN "
                              "(SELECT id FROM visitors)").rowcount
            n += conn.execute("DELETE FROM visit_holds WHERE visit NOT IN (SELECT id FROM visitors)").rowcount
            return int(n)

    def _rewrap_signatures(self, conn: sqldb.Connection, keys: SnapshotKeys, current: str, kek: bytes) -> int:
        """Inside the caller's write transaction (``rewrap_snapshot_keys``): every signature's data key
        re-wrapped under ``current``; how many."""
        rows = conn.execute("SELECT id, visit, site, kek_id, wrapped_key FROM agreement_acceptances "
                            "WHERE kek_id IS NOT NULL AND kek_id != ?", [current]).fetchall()
        for acc_id, visit, site, old, wrapped in rows:
            ref = signature_ref(site, visit, acc_id)
            data_key = unwrap_data_key(old, keys.keyring.get(old), wrapped, ref)
            conn.execute("UPDATE agreement_acceptances SET kek_id = ?, wrapped_key = ? WHERE id = ?",
                         [current, wrap_data_key(current, kek, data_key, ref), acc_id])
        return len(rows)

    @staticmethod
    def _signature_key_ids(conn: sqldb.Connection) -> set[str]:
        return {r[0] for r in conn.execute("SELECT DISTINCT kek_id FROM agreement_acceptances "
                                           "WHERE kek_id IS NOT NULL")}

    # --------------------------------------------------------------- holds

    def visit_hold(self, visit: str) -> dict[str, Any] | None:
        with self._lock:
            rows = self._conn.query("SELECT * FROM visit_holds WHERE visit = ?", [visit])
        if not rows:
            return None
        row = rows[0]
        row["entries"] = json.loads(row["entries"] or "[]")
        return row

    def put_visit_hold(self, visit: str, *, state: str, entries: Sequence[int], stage: str | None, at: float,
                       resolved_by: str | None = None, reason: str | None = None) -> None:
        """Set the visit's hold (one row per visit: the latest state wins; the audit log keeps the history)."""
        with self._lock, self._conn.transaction():
            row = {"visit": visit, "state": state, "entries": json.dumps(sorted(set(entries))), "stage": stage,
                   "held_at": at, "resolved_by": resolved_by, "resolved_at": at if resolved_by else None,
                   "reason": reason}
            self._conn.execute(f"INSERT INTO visit_holds ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)}) "
                               "ON CONFLICT (visit) DO UPDATE SET "
                               + ", ".join(f"{c} = excluded.{c}" for c in row if c != "visit"), list(row.values()))

    def resolve_visit_hold(self, visit: str, state: str, actor: str, reason: str, at: float) -> bool:
        """Mark a held visit overridden or refused; False when it is not held (any more)."""
        with self._lock, self._conn.transaction():
            cur = self._conn.execute("UPDATE visit_holds SET state = ?, resolved_by = ?, resolved_at = ?, "
                                     "reason = ? WHERE visit = ? AND state = 'held'",
                                     [state, actor, at, reason, visit])
            return cur.rowcount == 1
