"""The store's table of visitor passes (server/passes.py): its migration, apart so the store imports nothing
of the service (which needs the audit log, which needs the store)."""

from __future__ import annotations

import sqlite_utils

TABLE = "visitor_passes"


def m019_visitor_passes(db: sqlite_utils.Database) -> None:
    """Visitor passes (server/passes.py): one row per pass issued; ``hash`` is the credential's keyed hash,
    ``state`` one of active, replaced, lost, cancelled, revoked. No name: the visit id and the hash only."""
    db[TABLE].create({"id": str, "visit": str, "serial": int, "hash": str, "last4": str, "key_id": str,
                      "not_before": int, "not_after": int, "state": str, "issued_at": float,
                      "ended_at": float, "issued_by": str}, pk="id",
                     not_null={"visit", "serial", "hash", "last4", "key_id", "not_before", "not_after", "state",
                               "issued_at"})
    db[TABLE].create_index(["visit"])
    db[TABLE].create_index(["hash"], unique=True)
