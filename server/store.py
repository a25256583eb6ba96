"""The event store: SQLite through sqlite-utils (or PostgreSQL, see below), plus snapshot files on disk.

Ingest is idempotent on the event id, because MQTT QoS 1 delivers at least
once and an edge re-sends after an outage. A snapshot and its event are
linked by the event id, so whichever arrives first waits for the other
without any bookkeeping: the join is done when read.

The methods of this module go through the connection port (server/sqldb.py, ``self._conn``) and write their
SQL in the subset SQLite and PostgreSQL both speak, so :class:`Store` also opens on a PostgreSQL URL
(``Store(data_dir, url=...)``, chosen by ``[store] url``: docs/scale.md "State in PostgreSQL"). The record mixins
(server/store_*.py) do the same; a method that still reached sqlite-utils (``self._db``) would refuse with a
:class:`StoreError` on PostgreSQL rather than fail inside a driver. On PostgreSQL the schema comes from server/migrations_pg/ (one file per migration, same
names and order); ``SELECT *`` there also returns a ``rowid`` column, which the rows handed out here drop.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import uuid
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import sqlite_utils

from doorkeep import vocabulary
from doorkeep.clock import iso_ms
from doorkeep.contract import EventMsg
from doorkeep.envelope import (
    JPEG_MAGIC,
    EnvelopeError,
    SnapshotKeys,
    SnapshotRef,
    decrypt_body,
    parse_sealed,
    unwrap_data_key,
    unwrap_sealed,
    wrap_data_key,
)
from server import sqldb
from server.errors import ServerError, StoreError
from server.store_passes import m019_visitor_passes
from server.store_agreements import AgreementRecords, m020_visitor_agreements
from server.private_files import create_private_file, open_private, private_dir, tighten_tree
from server.store_alarm_desk import AlarmDeskRecords, m015_alarm_desk
from server.store_incidents import IncidentRecords, m016_incidents
from server.store_mail import MailRecords, m018_mail_outbox
from server.store_audit import AuditRecords
from server.store_desk import DeskRecords
from server.store_operators import OperatorRecords
from server.store_photos import PhotoRecords, m017_person_photos
from server.store_privacy import PrivacyRecords
from server.store_reports import ReportRecords, m021_report_index
from server.store_webhooks import WebhookRecords, m023_webhooks
from server.store_siem import SiemRecords, m024_siem

SEVERITIES = vocabulary.SEVERITIES


class AlarmNotFound(ServerError, LookupError):
    """No alarm has that id."""


def _m001_events(db: sqlite_utils.Database) -> None:
    db["events"].create(
        {
            "id": str, "seq": int, "ts": str, "device": str, "door": str, "type": str,
            "decision": str, "reason": str, "decided_by": str, "person": str,
            "credential_hash": str, "credential_last4": str, "transaction": str,
            "latency_ms": float, "snapshot": str, "detail": str, "received_at": float,
        },
        pk="id",
        not_null={"seq", "ts", "device", "door", "type"},
    )
    db["events"].create_index(["ts"])
    db["events"].create_index(["device", "seq"])
    db["snapshots"].create(
        {"id": str, "device": str, "door": str, "path": str, "bytes": int, "received_at": float},
        pk="id",
    )


def _m002_directory(db: sqlite_utils.Database) -> None:
    """What changes at runtime on top of the site files: visitors, card states, lockdowns, presence."""
    db["visitors"].create(
        {
            "id": str, "name": str, "company": str, "email": str, "host": str, "valid_from": float,
            "valid_until": float, "allowed_areas": str, "escort_required": int, "status": str,
            "card_hash": str, "card_format": str, "card_number_last4": str, "registered_at": float,
            "checked_in_at": float, "checked_out_at": float,
        },
        pk="id",
    )
    db["credential_states"].create({"hash": str, "state": str, "changed_at": float}, pk="hash")
    db["lockdowns"].create({"scope": str, "active": int, "changed_at": float}, pk="scope")
    db["presence"].create({"person": str, "area": str, "since": float}, pk="person")
    db["counters"].create({"name": str, "value": int}, pk="name")


def _m003_alarms(db: sqlite_utils.Database) -> None:
    """Alarms (docs/alarms.md) and the per-device event sequence state that gap detection keeps."""
    db["alarms"].create(
        {
            "id": str, "key": str, "type": str, "severity": str, "device": str, "door": str,
            "raised_at": float, "last_raised_at": float, "occurrences": int, "cleared_at": float,
            "acknowledged_at": float, "acknowledged_by": str, "resolved_at": float, "resolved_by": str,
            "note": str, "detail": str, "source_event": str,
        },
        pk="id",
        not_null={"key", "type", "severity", "raised_at", "last_raised_at", "occurrences"},
    )
    # At most one open (unresolved) alarm per key: one device_offline per device, one alarm per event.
    db.execute("CREATE UNIQUE INDEX alarms_open_key ON alarms ([key]) WHERE resolved_at IS NULL")
    db["alarms"].create_index(["raised_at"])
    db["alarms"].create_index(["device", "door"])
    db["sequences"].create(
        {"device": str, "epoch": int, "base": int, "top": int, "gaps": str, "lost": str, "saved_at": float},
        pk="device",
    )
    # Events up to this rowid have been seen by gap detection; later ones are replayed at start.
    db["sequence_checkpoint"].create({"id": int, "through_rowid": int, "saved_at": float}, pk="id")


def _m005_audit_and_retention(db: sqlite_utils.Database) -> None:
    """The hash-chained audit log (server/audit.py, docs/security.md) and what erasure must remember.

    Triggers make the log append-only for every writer of this file, the server's own code included:
    no UPDATE, and a DELETE only of records already behind the retention anchor (the seq and hash of the
    last record retention removed), which itself only moves forward onto an existing record.
    """
    db.execute("CREATE TABLE audit_log (seq INTEGER PRIMARY KEY, ts TEXT NOT NULL, actor TEXT NOT NULL, "
               "action TEXT NOT NULL, target TEXT, details TEXT NOT NULL, prev_hash TEXT NOT NULL, "
               "hash TEXT NOT NULL)")
    db.execute("CREATE TABLE audit_anchor (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, "
               "hash TEXT NOT NULL, removed INTEGER NOT NULL, moved_at TEXT NOT NULL)")
    refuse = "BEGIN SELECT RAISE(ABORT, '{}'); END"
    db.execute("CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
               + refuse.format("the audit log is append-only"))
    db.execute("CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
               "WHEN OLD.seq > COALESCE((SELECT seq FROM audit_anchor WHERE id = 1), 0) "
               + refuse.format("the audit log is append-only: only records behind the retention anchor may go"))
    db.execute("CREATE TRIGGER audit_anchor_insert BEFORE INSERT ON audit_anchor "
               "WHEN NEW.hash IS NOT (SELECT hash FROM audit_log WHERE seq = NEW.seq) "
               + refuse.format("the audit anchor must name an existing record"))
    db.execute("CREATE TRIGGER audit_anchor_forward BEFORE UPDATE ON audit_anchor "
               "WHEN NEW.seq < OLD.seq OR NEW.hash IS NOT (SELECT hash FROM audit_log WHERE seq = NEW.seq) "
               + refuse.format("the audit anchor only moves forward, onto an existing record"))
    db.execute("CREATE TRIGGER audit_anchor_no_delete BEFORE DELETE ON audit_anchor "
               + refuse.format("the audit anchor cannot be removed"))
    # Digests of the site files' people and access data as last audited (keys never hold names).
    db["audit_state"].create({"name": str, "value": str}, pk="name")
    # Pseudonyms of erased people: the server skips a person of people.toml whose pseudonym is here.
    db["erased_subjects"].create({"ref": str, "erased_at": float}, pk="ref")
    db["events"].create_index(["person"], if_not_exists=True)
    db["visitors"].create_index(["checked_out_at"], if_not_exists=True)

def _m004_snapshot_keys(db: sqlite_utils.Database) -> None:
    """Snapshots encrypted at rest (doorkeep/envelope.py): each row holds the only copy of its data key,
    wrapped under the site data key ``kek_id``; the site is kept because it is bound into the key's AAD.
    A row without ``kek_id`` is a plaintext snapshot stored before this migration."""
    db["snapshots"].add_column("site", str)
    db["snapshots"].add_column("kek_id", str)
    db["snapshots"].add_column("wrapped_key", bytes)
    db["snapshots"].create_index(["kek_id"])


def _m006_operators(db: sqlite_utils.Database) -> None:
    """Security-desk operators (server/operators.py, docs/desk.md): accounts with argon2id hashes, API
    tokens and sessions kept only as SHA-256 hashes, and failed-login counters keyed by a hash of the name
    or client address (a name typed by mistake, maybe a password, is never stored)."""
    db["operators"].create({"name": str, "role": str, "password_hash": str, "created_at": float,
                            "disabled_at": float}, pk="name", not_null={"role", "password_hash", "created_at"})
    db["operator_tokens"].create({"id": str, "operator": str, "label": str, "role": str, "hash": str,
                                  "created_at": float, "last_used_at": float, "revoked_at": float},
                                 pk="id", not_null={"operator", "label", "role", "hash", "created_at"})
    db["operator_tokens"].create_index(["hash"], unique=True)
    db["operator_sessions"].create({"hash": str, "operator": str, "csrf": str, "created_at": float,
                                    "last_seen_at": float, "client": str},
                                   pk="hash", not_null={"operator", "csrf", "created_at", "last_seen_at"})
    db["login_failures"].create({"key": str, "failures": int, "last_failure_at": float, "locked_until": float},
                                pk="key")


def _m007_visitor_desk(db: sqlite_utils.Database) -> None:
    """The desk's visitor records (server/visitors.py, docs/desk.md): the consent given at each check-in
    (which privacy notice version was shown, photo consent yes/no, when, taken by which operator) and the
    admin-managed watchlist of names and companies that warns the desk (``norm`` is the accent- and
    case-folded text the match uses)."""
    db["visitor_consents"].create({"id": int, "visitor": str, "notice_version": str, "photo_consent": int,
                                   "consented_at": float, "operator": str}, pk="id",
                                  not_null={"visitor", "notice_version", "photo_consent", "consented_at"})
    db["visitor_consents"].create_index(["visitor"])
    db["watchlist"].create({"id": int, "kind": str, "value": str, "norm": str, "note": str, "added_by": str,
                            "added_at": float}, pk="id", not_null={"kind", "value", "norm", "added_at"})
    db["watchlist"].create_index(["kind", "norm"], unique=True)


def _m008_desk_admin(db: sqlite_utils.Database) -> None:
    """People and cards changed at the security desk (server/web/people.py, docs/desk.md "People").

    ``desk_people`` holds people added at the desk (``added`` 1) and overrides of people.toml people
    (``added`` 0: a NULL column keeps the people.toml value); Directory merged it over people.toml.
    ``desk_cards`` holds cards added at the desk, only as the keyed hash and the last four characters.
    Both are folded into migration 013's tables, then dropped, at the first start with the credential key.
    """
    db["desk_people"].create({"id": str, "added": int, "name": str, "kind": str, "clearance": int,
                              "access_levels": str, "state": str, "changed_at": float},
                             pk="id", not_null={"added", "changed_at"})
    db["desk_cards"].create({"hash": str, "person": str, "format": str, "last4": str, "added_at": float},
                            pk="hash", not_null={"person", "format", "last4", "added_at"})
    db["desk_cards"].create_index(["person"])


def _m_operator_2fa(db: sqlite_utils.Database) -> None:
    """Operators' TOTP second factor (server/operators.py, docs/desk.md "Two-factor login").

    ``operators.totp_secret`` is the confirmed RFC 6238 secret (NULL: no 2FA), ``totp_enabled_at`` when it was
    confirmed, ``totp_last_step`` the last 30-second step a code was accepted for (a code is never accepted
    twice), ``totp_pending`` a secret shown at enrolment but not yet confirmed with a code.
    ``operator_recovery_codes`` keeps each one-time recovery code only as SHA-256 over its own random salt.
    """
    for column in ("totp_secret", "totp_pending"):
        db["operators"].add_column(column, str)
    db["operators"].add_column("totp_enabled_at", float)
    db["operators"].add_column("totp_last_step", int)
    db["operator_recovery_codes"].create({"id": int, "operator": str, "salt": str, "hash": str,
                                          "created_at": float, "used_at": float}, pk="id",
                                         not_null={"operator", "salt", "hash", "created_at"})
    db["operator_recovery_codes"].create_index(["operator"])


def _m010_device_clock(db: sqlite_utils.Database) -> None:
    """Each edge's clock drift, measured on its last live ``state`` heartbeat (``doorkeep doctor`` reads it):
    ``drift_s`` is the heartbeat's own ``ts`` minus the server's clock when it arrived (positive: the edge is
    ahead), ``measured_at`` the server's ISO time of that measure."""
    db["device_clock"].create({"device": str, "drift_s": float, "measured_at": str}, pk="device",
                              not_null={"drift_s", "measured_at"})


def _m011_site_revisions(db: sqlite_utils.Database) -> None:
    """The site model's history (server/siteadmin.py, docs/administration.md): each revision is the whole
    ``site.toml`` text as committed, with who, when, a one-line summary and the changes in words (JSON list).
    The highest number is the live site; rows are never updated or deleted (a rollback is a new revision)."""
    db["site_revisions"].create({"number": int, "created_at": float, "actor": str, "summary": str,
                                 "changes": str, "site_toml": str, "rollback_of": int}, pk="number",
                                not_null={"created_at", "actor", "summary", "changes", "site_toml"})


def _m012_audit_search(db: sqlite_utils.Database) -> None:
    """Indexes for the audit page's search (server/web/audit.py): by actor, by action, by time; each with
    seq, so a page of the newest matches is read from the index instead of a walk over the whole log."""
    for column in ("actor", "action", "ts"):
        db.execute(f"CREATE INDEX IF NOT EXISTS audit_log_{column} ON audit_log ({column}, seq)")


def _m013_people(db: sqlite_utils.Database) -> None:
    """People, their cards and the visitor badge pool, held by the server (server/people.py,
    docs/administration.md): people.toml becomes an import/export format.

    ``people``: one row per person (lists as JSON text; ``pin_hash`` the keyed PIN hash, never a PIN;
    ``source`` how they came, ``people.toml`` or ``desk``; ``desk_changed`` 1 once the desk changed them).
    ``cards``: each card only as its keyed hash and last four characters; its state (lost, revoked) stays in
    ``credential_states``. ``visitor_pool``: the badges the desk hands visitors, in the file's order (the first
free one is handed out first). The rows of migration 008
    (``desk_people``, ``desk_cards``) are folded in with people.toml at the first start that has the
    credential key (server/people.py ``seed``), which drops those tables. The counters ``people.changes``
    (grows with every change: a running server polls it to pick up another process's import) and
    ``people.seeded`` (the first import is done) live in ``counters``.
    """
    db["people"].create({"id": str, "name": str, "kind": str, "clearance": int, "access_levels": str,
                         "roles": str, "state": str, "valid_from": float, "valid_until": float, "pin_hash": str,
                         "host": str, "company": str, "allowed_areas": str, "escort_required": int,
                         "source": str, "desk_changed": int, "changed_at": float}, pk="id",
                        not_null={"name", "kind", "clearance", "access_levels", "roles", "state", "allowed_areas",
                                  "escort_required", "source", "desk_changed", "changed_at"})
    db["cards"].create({"hash": str, "person": str, "format": str, "last4": str, "added_at": float}, pk="hash",
                       not_null={"person", "format", "last4", "added_at"})
    db["cards"].create_index(["person"])
    db["visitor_pool"].create({"hash": str, "format": str, "last4": str, "position": int}, pk="hash",
                              not_null={"format", "last4", "position"})


def _m014_event_feed_indexes(db: sqlite_utils.Database) -> None:
    """The live feed's searches stay fast on a large store (server/store_desk.py ``event_page``): one person
    over a week reads ``events(person, ts)`` (which also serves every lookup by person, so the person-only
    index of migration 005 goes), one door reads ``events(door)`` in rowid order."""
    db.execute("CREATE INDEX IF NOT EXISTS events_person_ts ON events (person, ts)")
    db.execute("CREATE INDEX IF NOT EXISTS events_door ON events (door)")
    db.execute("DROP INDEX IF EXISTS idx_events_person")


def _m022_event_companions(db: sqlite_utils.Database) -> None:
    """Who passed with a grant and by which rule (doorkeep/contract.py ``EventMsg.companions``, ``grant``), so the
    desk and the reports show everyone a badge let in, offline grants included. ``companions`` is a JSON list of
    person ids, NULL when nobody passed with the badge; older rows keep NULL in both."""
    db.execute("ALTER TABLE events ADD COLUMN companions TEXT")
    db.execute("ALTER TABLE events ADD COLUMN [grant] TEXT")


def _m025_presence_area(db: sqlite_utils.Database) -> None:
    """Head counts by area: several server workers count a limited area's people inside each decision
    (server/shared_decisions.py dk_read), which without an index reads every row of ``presence``."""
    db.execute("CREATE INDEX presence_area ON presence (area)")


MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
    ("001_events_and_snapshots", _m001_events),
    ("002_directory", _m002_directory),
    ("003_alarms", _m003_alarms),
    ("004_snapshot_keys", _m004_snapshot_keys),
    ("005_audit_and_retention", _m005_audit_and_retention),
    ("006_operators", _m006_operators),
    ("007_visitor_desk", _m007_visitor_desk),
    ("008_desk_admin", _m008_desk_admin),
    ("009_operator_2fa", _m_operator_2fa),
    ("010_device_clock", _m010_device_clock),
    ("011_site_revisions", _m011_site_revisions),
    ("012_audit_search", _m012_audit_search),
    ("013_people", _m013_people),
    ("014_event_feed_indexes", _m014_event_feed_indexes),
    ("015_alarm_desk", m015_alarm_desk),
    ("016_incidents", m016_incidents),
    ("017_person_photos", m017_person_photos),  # cardholder photos, encrypted (server/store_photos.py)
    ("018_mail_outbox", m018_mail_outbox),  # outbound mail queue, people's e-mail (server/store_mail.py)
    ("019_visitor_passes", m019_visitor_passes),  # visitor passes issued (server/passes.py, store_passes.py)
    ("020_visitor_agreements", m020_visitor_agreements),  # agreements, signatures, watchlist holds (store_agreements.py)
    ("021_report_index", m021_report_index),  # badges by quarter hour, for report counts (store_reports.py)
    ("022_event_companions", _m022_event_companions),  # who passed with a grant, and the rule behind it
    ("023_webhooks", m023_webhooks),  # webhook subscriptions, deliveries, cursors (server/store_webhooks.py)
    ("024_siem", m024_siem),  # the SIEM's syslog queue and cursors (server/store_siem.py)
    ("025_presence_area", _m025_presence_area),  # head counts by area for several workers (shared_decisions.py)
]


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply the named migrations not yet applied, each in its own transaction."""
    if "_migrations" not in db.table_names():
        db["_migrations"].create({"name": str, "applied_at": float}, pk="name")
    done = {r["name"] for r in db["_migrations"].rows}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        with db.conn:
            # sqlite3 does not open a transaction before DDL by itself: begin one so that a
            # migration failing half-way leaves no tables behind (the `with` rolls it back).
            if not db.conn.in_transaction:
                db.conn.execute("BEGIN")
            fn(db)
            db["_migrations"].insert({"name": name, "applied_at": time.time()})
        applied.append(name)
    return applied


PG_MIGRATIONS = Path(__file__).with_name("migrations_pg")
_PG_MIGRATE_LOCK = 0x646B6D67  # "dkmg": one migrating process at a time per database


def migrate_pg(conn: sqldb.Connection) -> list[str]:
    """:func:`migrate` for PostgreSQL: each migration's DDL from ``server/migrations_pg/NAME.sql``, in the order and
    under the names of :data:`MIGRATIONS`, each in its own transaction under an advisory lock (two servers starting
    together apply each migration once)."""
    if conn.dialect != sqldb.POSTGRESQL:
        raise ValueError("migrate_pg runs on PostgreSQL; SQLite uses migrate()")
    applied = []
    for name, _ in MIGRATIONS:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(?)", [_PG_MIGRATE_LOCK])
            conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION)")
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                continue
            conn.execute_script((PG_MIGRATIONS / f"{name}.sql").read_text(encoding="utf-8"))
            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", [name, time.time()])
        applied.append(name)
    return applied


def _upsert_sql(table: str, columns: tuple[str, ...], pk: str) -> str:
    """An upsert of ``columns`` keyed on ``pk``: the columns given replace the stored ones, the others stay (what
    sqlite-utils' ``upsert`` does, written once for both engines)."""
    names = ", ".join(_quoted(c) for c in columns)
    updates = ", ".join(f"{_quoted(c)} = excluded.{_quoted(c)}" for c in columns if c != pk)
    return (f"INSERT INTO {_quoted(table)} ({names}) VALUES ({', '.join('?' for _ in columns)}) "
            f"ON CONFLICT ({_quoted(pk)}) DO " + (f"UPDATE SET {updates}" if updates else "NOTHING"))


def _quoted(name: str) -> str:
    """An identifier quoted the standard way (``"grant"``), which both engines read; SQLite's ``[grant]`` is not."""
    return '"' + name.replace('"', '""') + '"'


def _cell(value: Any) -> Any:
    """A value as sqlite-utils stored it: a dict, list or tuple as JSON text."""
    return json.dumps(value, default=repr) if isinstance(value, (dict, list, tuple)) else value


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A row as handed out: without PostgreSQL's explicit ``rowid`` column, which ``SELECT *`` includes there
    (SQLite's rowid is never part of ``*``)."""
    row.pop("rowid", None)
    return row


def _open_postgres(url: str) -> sqldb.Connection:
    """The PostgreSQL database at ``url``, or a :class:`StoreError` naming it (without its password)."""
    where = url.split("@")[-1]
    if not sqldb.is_postgres_url(url):
        raise StoreError(f"not a PostgreSQL URL: {where!r}")
    try:
        import psycopg
    except ImportError as exc:
        raise StoreError("a PostgreSQL store needs psycopg: pip install 'doorkeep[server]'") from exc
    from server.store_connection import ReconnectingPgConnection

    try:
        # Reopens after a lost backend and raises StoreUnavailable (an OSError, which the bus retries) for the
        # driver's OperationalError, as SQLite's refused disk (server/store_connection.py).
        return ReconnectingPgConnection(url)
    except psycopg.Error as exc:
        raise StoreError(f"cannot open the store at {where}: {exc}") from exc


class _NotOnPostgres:
    """``Store._db`` on PostgreSQL: the sqlite-utils database the record mixins not yet ported would use. Any use
    refuses, naming what is missing, instead of failing somewhere inside a driver."""

    def __getattr__(self, name: str) -> Any:
        raise StoreError("this part of the store does not run on PostgreSQL yet (docs/scale.md \"State in "
                         "PostgreSQL\" lists what does)")

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)


# The events INSERT, built once: a shallow read of EventMsg's fields (dataclasses.asdict deep-copies
# every value, a third of the cost of storing an event).
_EVENT_FIELDS = [f.name for f in fields(EventMsg)]
_EVENT_DETAIL = _EVENT_FIELDS.index("detail")
_EVENT_COMPANIONS = _EVENT_FIELDS.index("companions")
_EVENT_INSERT = (f"INSERT INTO events ({', '.join(_quoted(k) for k in [*_EVENT_FIELDS, 'received_at'])}) "
                 f"VALUES ({', '.join('?' for _ in range(len(_EVENT_FIELDS) + 1))}) ON CONFLICT DO NOTHING")


class StoredAccessEvent(NamedTuple):
    """An ``access`` or ``lockdown`` event as :meth:`Store.access_events_since` reads it (impact preview)."""

    id: str
    ts: str
    device: str
    door: str
    type: str
    decision: str | None
    reason: str | None
    decided_by: str | None
    person: str | None
    credential_hash: str | None
    detail: str | None
    """The event's detail, JSON text (a lockdown's ``scope`` and ``active``)."""


class Store(OperatorRecords, DeskRecords, AuditRecords, PrivacyRecords, AlarmDeskRecords, IncidentRecords,
            PhotoRecords, ReportRecords, MailRecords, AgreementRecords, WebhookRecords, SiemRecords):
    """Events and snapshots of one site. Thread-safe: one connection behind a lock.

    The connection (``_db``) and the lock (``_lock``) are private: every caller uses a typed method, each
    taking the lock itself, and a change of several statements is one transaction inside the store
    (tests/unit/test_layout.py keeps it so). The methods of one kind of record live in the base classes
    (server/store_operators.py, store_desk.py, store_audit.py, store_privacy.py).
    """

    def __init__(self, data_dir: Path | str, *, keys: SnapshotKeys | None = None, url: str | None = None) -> None:
        """``keys``: the snapshot keys (without them the store can neither take nor show a snapshot).

        ``url``: a ``postgresql://`` URL to keep the records there instead of ``doorkeep.db`` (snapshot files stay
        in ``data_dir``): site.toml ``[store] url``, ``--store`` or ``$DOORKEEP_STORE_URL`` (server/store_url.py)."""
        self.dir = Path(data_dir)
        self.keys = keys
        #: The PostgreSQL URL the records live at (no password: server/store_url.py), None for SQLite in ``dir``.
        self.url = url
        self.snapshot_dir = self.dir / "snapshots"
        self._db: Any
        try:
            # Private to this account (server/private_files.py): directories 0700, files 0600, whatever the
            # umask; a data directory left open by an older version is narrowed now, each change logged.
            private_dir(self.dir)
            tighten_tree(self.dir)
            private_dir(self.snapshot_dir)
            if url is None:
                create_private_file(self.dir / "doorkeep.db")  # SQLite gives -wal and -shm the same mode
                # One connection shared by the bus's store worker and readers, serialised by self._lock.
                raw = sqlite3.connect(self.dir / "doorkeep.db", check_same_thread=False)
                self._conn: sqldb.Connection = sqldb.SqliteConnection(raw)
                self._db = sqlite_utils.Database(raw)  # the same connection, for the record mixins
            else:
                self._conn = _open_postgres(url)
                self._db = _NotOnPostgres()
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store in {self.dir}: {exc}") from exc
        # Re-entrant: a method called inside transaction() takes it again on the same thread.
        self._lock = threading.RLock()
        self._in_tx = False
        self._pks: dict[str, str] = {}
        if self._conn.dialect == sqldb.SQLITE:
            self._db.enable_wal()
            with self._lock:
                migrate(self._db)
        else:
            with self._lock:
                migrate_pg(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``: which engine holds the records."""
        return self._conn.dialect

    @contextlib.contextmanager
    def connection_for_tests(self, *, port: bool = False) -> Iterator[Any]:
        """Tests only: the database itself, under the store's lock, to check what is really stored (a hash,
        never a card number) or to plant a row no public method writes. Product code never calls this
        (tests/unit/test_layout.py); it uses the typed methods. The sqlite-utils database by default (SQLite
        only); ``port``: the connection port (server/sqldb.py), the same on both engines."""
        with self._lock:
            yield self._conn if port else self._db

    def insert_event(self, ev: EventMsg, received_at: float) -> bool:
        """Store an event once; returns False for a duplicate delivery."""
        return self.ingest_event(ev, received_at) is not None

    def ingest_event(self, ev: EventMsg, received_at: float) -> int | None:
        """Store an event once; returns its rowid (arrival order), or None for a duplicate delivery.

        Committed at once, unless inside :meth:`transaction` (then with the rest of it)."""
        values = [getattr(ev, k) for k in _EVENT_FIELDS]
        values[_EVENT_DETAIL] = json.dumps(ev.detail, sort_keys=True)
        values[_EVENT_COMPANIONS] = json.dumps(list(ev.companions)) if ev.companions else None
        values.append(received_at)
        with self._lock:
            rowid = self._conn.insert_rowid(_EVENT_INSERT, values)
            if not self._in_tx:
                self._conn.commit()
            return rowid

    def ingest_events(self, items: list[tuple[EventMsg, float]]) -> list[int | None]:
        """Store several events in one transaction (one commit): the rowid of each, None for a duplicate."""
        with self.transaction():
            return [self.ingest_event(ev, received_at) for ev, received_at in items]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group commit: the events and upserts written inside commit once, at the end, all or nothing.

        The bus's store thread wraps whatever has queued up (events, deferred presence writes) in one,
        so a burst costs one commit (a WAL fsync) instead of one per row: one commit per row capped
        ingest at ~2,000 events/s (bench/run_all.py figure 4). On any error everything inside is rolled
        back and the error raised, so a retry never mistakes its own uncommitted rows for duplicates.
        Other threads wait on the store's lock meanwhile (a batch is a few milliseconds).
        """
        with self._lock:
            if self._in_tx:  # nested: part of the outer transaction
                yield
                return
            conn = self._conn
            if not conn.in_transaction:
                conn.begin()
            self._in_tx = True
            try:
                yield
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                self._in_tx = False

    def _snapshot_keys(self) -> SnapshotKeys:
        if self.keys is None:
            raise StoreError("this store was opened without the snapshot keys (SITE/keys/snapshot.key, "
                             "data-keys.json)")
        return self.keys

    def insert_snapshot(self, event_id: str, device: str, door: str, sealed: bytes, received_at: float, *,
                        site: str) -> bool:
        """Keep a sealed (``DKS1``) snapshot encrypted at rest; False for a duplicate.

        The data key is unwrapped with the server's X25519 key and the ciphertext checked (decrypted in
        memory only, never to disk); the file keeps the ciphertext exactly as received, and the row the
        data key wrapped under the current site data key. Raises :class:`EnvelopeError` for a payload that
        is not a sealed JPEG for this site, device and event.
        """
        keys = self._snapshot_keys()
        with self._lock:
            if self._conn.execute("SELECT count(*) FROM snapshots WHERE id = ?", [event_id]).fetchone()[0]:
                return False
        ref = SnapshotRef(site, device, event_id)
        parsed = parse_sealed(sealed)
        data_key = unwrap_sealed(parsed, keys.private, ref)
        if not decrypt_body(parsed.body, data_key, ref).startswith(JPEG_MAGIC):
            raise EnvelopeError("sealed snapshot does not hold a JPEG")
        path = self.snapshot_dir / f"{event_id}.bin"
        tmp = path.with_suffix(".tmp")
        with os.fdopen(open_private(tmp), "wb") as f:
            f.write(parsed.body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        with self._lock:
            conn = self._conn
            try:
                # Take the write lock before reading the current data key: `doorkeep key rotate` (another
                # process) replaces the key file and then re-wraps under this same lock, so a row is either
                # visible to its scan or wrapped under the new key. Never one it misses.
                if not conn.in_transaction:
                    conn.begin(immediate=True)
                kek_id, kek = keys.keyring.current()
                cur = conn.execute(
                    "INSERT INTO snapshots (id, device, door, path, bytes, received_at, site, kek_id, "
                    "wrapped_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [event_id, device, door, path.name, len(parsed.body), received_at, site, kek_id,
                     wrap_data_key(kek_id, kek, data_key, ref)],
                )
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            return cur.rowcount == 1

    def event(self, event_id: str) -> dict[str, Any] | None:
        """An event with its snapshot file name (``snapshot_path``) when the snapshot has arrived."""
        with self._lock:
            rows = self._conn.query(
                "SELECT e.*, s.path AS snapshot_path FROM events e "
                "LEFT JOIN snapshots s ON s.id = e.snapshot WHERE e.id = ?", [event_id])
        return _public(rows[0]) if rows else None

    def events(self, limit: int = 100, **where: Any) -> list[dict[str, Any]]:
        clauses = " AND ".join(f"e.{_quoted(k)} = ?" for k in where)
        sql = ("SELECT e.*, s.path AS snapshot_path FROM events e LEFT JOIN snapshots s ON s.id = e.snapshot"
               + (f" WHERE {clauses}" if clauses else "") + " ORDER BY e.ts DESC, e.seq DESC LIMIT ?")
        with self._lock:
            return [_public(r) for r in self._conn.query(sql, [*where.values(), limit])]

    def access_events_since(self, since_ts: str, batch: int = 5000) -> Iterator[StoredAccessEvent]:
        """Every ``access`` and ``lockdown`` event at or after ``since_ts`` (ISO UTC), oldest first; read only.

        Streams in batches, the lock taken per batch only, so a month of badges replayed (server/replay.py)
        neither fills memory nor holds up the store thread's writes.
        """
        def fetch(query: str, params: list[Any]) -> list[Any]:
            with self._lock:
                return self._conn.execute(query, params).fetchall()

        return _access_events(fetch, since_ts, batch)


    def snapshot_bytes(self, snapshot_id: str) -> bytes | None:
        """The snapshot's JPEG, decrypted in memory; None if there is none (never stored, or deleted)."""
        for attempt in range(2):
            with self._lock:
                rows = self._conn.query("SELECT path, site, device, kek_id, wrapped_key FROM snapshots "
                                        "WHERE id = ?", [snapshot_id])
            if not rows:
                return None
            row = rows[0]
            data = (self.snapshot_dir / row["path"]).read_bytes()
            if row["kek_id"] is None:
                return data  # stored in plaintext before migration 004
            keys = self._snapshot_keys()
            ref = SnapshotRef(row["site"], row["device"], snapshot_id)
            try:
                data_key = unwrap_data_key(row["kek_id"], keys.keyring.get(row["kek_id"]), row["wrapped_key"], ref)
            except EnvelopeError:
                if attempt == 0:
                    continue  # re-wrapped by a rotation between reading the row and the key: read it again
                raise
            return decrypt_body(data, data_key, ref)
        return None  # pragma: no cover - the loop returns or raises

    def rewrap_snapshot_keys(self, *, batch: int = 100) -> tuple[int, list[str]]:
        """Re-wrap every stored data key under the keyring's current key, then retire the keys no row uses.

        ``doorkeep key rotate`` calls it right after making a new key current. Each batch is one short
        write transaction, so a running server keeps ingesting in between. Returns ``(re-wrapped, retired)``.
        """
        keys = self._snapshot_keys()
        conn = self._conn
        done = 0
        while True:
            with self._lock:
                try:
                    if not conn.in_transaction:
                        conn.begin(immediate=True)
                    current, kek = keys.keyring.current()
                    rows = conn.execute(
                        "SELECT id, site, device, kek_id, wrapped_key FROM snapshots "
                        "WHERE kek_id IS NOT NULL AND kek_id != ? LIMIT ?", [current, batch]).fetchall()
                    for sid, site, device, old, wrapped in rows:
                        ref = SnapshotRef(site, device, sid)
                        data_key = unwrap_data_key(old, keys.keyring.get(old), wrapped, ref)
                        conn.execute("UPDATE snapshots SET kek_id = ?, wrapped_key = ? WHERE id = ? AND kek_id = ?",
                                     [current, wrap_data_key(current, kek, data_key, ref), sid, old])
                    done += len(rows)
                    retired: list[str] = []
                    if not rows:
                        # Cardholder photos use the same keys (server/store_photos.py): re-wrapped here too.
                        done += self._rewrap_person_photos(conn, keys, current, kek)
                        done += self._rewrap_signatures(conn, keys, current, kek)  # drawn signatures
                        # Still under the write lock: no insert can be wrapping under an old key right now.
                        used = {r[0] for r in conn.execute(
                            "SELECT DISTINCT kek_id FROM snapshots WHERE kek_id IS NOT NULL")}
                        used |= self._photo_key_ids(conn)
                        used |= self._signature_key_ids(conn)
                        retired = keys.keyring.retire(set(keys.keyring.ids()) - used - {current})
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
            if not rows:
                return done, retired

    def delete_snapshot(self, snapshot_id: str) -> bool:
        """Forget a snapshot for good (retention, erasure): its row first, then its file; False if unknown.

        The row holds the only copy of the snapshot's data key, so once it is gone the file (ciphertext)
        is unreadable even if the unlink fails or the disk keeps the blocks."""
        with self._lock, self._conn.transaction():
            rows = self._conn.query("SELECT path FROM snapshots WHERE id = ?", [snapshot_id])
            if not rows:
                return False
            self._conn.execute("DELETE FROM snapshots WHERE id = ?", [snapshot_id])
        try:
            (self.snapshot_dir / rows[0]["path"]).unlink()
        except FileNotFoundError:
            pass
        return True

    def count_events(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM events").fetchone()[0])

    # ------------------------------------------------------------ directory

    def upsert(self, table: str, row: dict[str, Any], pk: str) -> None:
        """Create the row keyed ``row[pk]`` or change the columns ``row`` gives (the others are kept)."""
        self._upsert_many(table, [row], pk)

    def _upsert_many(self, table: str, rows: list[dict[str, Any]], pk: str) -> None:
        """:meth:`upsert` of several rows in one statement batch: committed at once, unless inside
        :meth:`transaction` (or another transaction of the store's: then with it)."""
        if not rows:
            return
        columns = tuple(dict.fromkeys(c for r in rows for c in r))  # every column any row names, in order
        params = [[_cell(r.get(c)) for c in columns] for r in rows]
        sql = _upsert_sql(table, columns, pk)
        with self._lock:
            if self._in_tx:  # transaction() commits
                self._conn.executemany(sql, params)
                return
            with self._conn.transaction():
                self._conn.executemany(sql, params)

    def _primary_key(self, table: str) -> str:
        """The single-column primary key of ``table``, read from the schema once."""
        if table not in self._pks:
            if self._conn.dialect == sqldb.SQLITE:
                found = self._conn.execute("SELECT name FROM pragma_table_info(?) WHERE pk = 1", [table]).fetchall()
            else:
                found = self._conn.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = CAST(? AS regclass) AND i.indisprimary",
                    [_quoted(table)]).fetchall()
            if len(found) != 1:
                raise ValueError(f"table {table!r} has no single-column primary key")
            self._pks[table] = str(found[0][0])
        return self._pks[table]

    def delete(self, table: str, pk_value: str) -> None:
        """Delete the row of ``table`` whose primary key is ``pk_value`` (none: nothing happens)."""
        with self._lock, self._conn.transaction():
            self._conn.execute(f"DELETE FROM {_quoted(table)} WHERE {_quoted(self._primary_key(table))} = ?",
                               [pk_value])

    def rows(self, table: str) -> list[dict[str, Any]]:
        with self._lock:
            return [_public(r) for r in self._conn.query(f"SELECT * FROM {_quoted(table)}")]

    # What the directory keeps on top of the site (migration 002, 005, 008): typed, so no caller names a table.
    # Writes go through upsert()/delete(), so inside transaction() they join the store thread's batch.

    def all_presence(self) -> list[dict[str, Any]]:
        """Where everyone is (``person, area, since``)."""
        return self.rows("presence")

    def presence_of(self, person: str) -> dict[str, Any] | None:
        """Where one person is (``person, area, since``), None when nowhere known."""
        with self._lock:
            rows = self._conn.query("SELECT person, area, since FROM presence WHERE person = ?", [person])
        return dict(rows[0]) if rows else None

    def set_presence(self, person: str, area: str, since: float) -> None:
        self.upsert("presence", {"person": person, "area": area, "since": since}, "person")

    def set_presences(self, rows: list[dict[str, Any]]) -> None:
        """Many ``person, area, since`` rows at once, in one transaction (a building's worth, bench/decide.py)."""
        self._upsert_many("presence", rows, "person")

    def forget_presence(self, person: str) -> None:
        self.delete("presence", person)

    def lockdowns(self) -> list[dict[str, Any]]:
        """Every lockdown scope ever set (``scope, active, changed_at``): ``site`` or an area id."""
        return self.rows("lockdowns")

    def set_lockdown(self, scope: str, active: bool, at: float) -> None:
        self.upsert("lockdowns", {"scope": scope, "active": int(active), "changed_at": at}, "scope")

    def erased_refs(self) -> set[str]:
        """Pseudonyms of the people erased from this store (``doorkeep subject erase``)."""
        return {str(r["ref"]) for r in self.rows("erased_subjects")}

    def visitor_records(self) -> list[dict[str, Any]]:
        """Every visitor in the register, every column."""
        return self.rows("visitors")

    def save_visitor(self, visitor_id: str, **columns: Any) -> None:
        """Create a visitor or change the given columns of one (the others are kept)."""
        self.upsert("visitors", {"id": visitor_id, **columns}, "id")

    def card_states(self) -> list[dict[str, Any]]:
        """States set on cards at runtime (``hash, state, changed_at``) over what the site files say."""
        return self.rows("credential_states")

    def set_card_state(self, card_hash: str, state: str, at: float) -> None:
        self.upsert("credential_states", {"hash": card_hash, "state": state, "changed_at": at}, "hash")

    def clear_card_state(self, card_hash: str) -> None:
        self.delete("credential_states", card_hash)

    def next_counter(self, name: str, at_least: int = 0) -> int:
        """A counter that only grows, across restarts (policy versions)."""
        with self._lock, self._conn.transaction():
            rows = self._conn.execute("SELECT value FROM counters WHERE name = ?", [name]).fetchall()
            value = max((rows[0][0] + 1) if rows else 1, at_least)
            self._conn.execute(_upsert_sql("counters", ("name", "value"), "name"), [name, value])
        return value

    def record_device_clock(self, device: str, *, drift_s: float, at: float) -> None:
        """Keep the latest clock drift measured for ``device`` (one row per device, replaced each time)."""
        with self._lock, self._conn.transaction():
            self._conn.execute(_upsert_sql("device_clock", ("device", "drift_s", "measured_at"), "device"),
                               [device, float(drift_s), iso_ms(at)])

    # ------------------------------------------------- health and metrics (server/metrics.py)

    def probe_writable(self, at: float) -> bool:
        """Write one row (``counters`` ``health.probe``) in its own commit and read it back: whether the database
        takes writes now (``/readyz``). False, never an exception, for a full, read-only, closed or broken one."""
        value = int(at * 1000)
        try:
            with self._lock:
                with self._conn.transaction():
                    self._conn.execute("INSERT INTO counters (name, value) VALUES ('health.probe', ?) "
                                       "ON CONFLICT (name) DO UPDATE SET value = excluded.value", [value])
                row = self._conn.execute("SELECT value FROM counters WHERE name = 'health.probe'").fetchone()
        except (self._conn.Error, OSError):
            return False
        return row is not None and int(row[0]) == value

    def open_alarm_counts(self) -> list[tuple[str, str, bool, int]]:
        """``(type, state, acknowledged, count)`` over the open (unresolved) alarms, ``state`` active or cleared:
        one grouped query, so a scrape of ``/metrics`` reads no alarm row into Python."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT type, cleared_at IS NULL, acknowledged_at IS NOT NULL, count(*) FROM alarms "
                "WHERE resolved_at IS NULL GROUP BY 1, 2, 3").fetchall()
        return [(str(t), "active" if active else "cleared", bool(acked), int(n)) for t, active, acked, n in rows]

    def open_alarm_counts_by_door(self) -> list[tuple[str | None, str, bool, bool, int]]:
        """``(door or None, type, active, acknowledged, count)`` over the open alarms: one grouped query for Home
        Assistant's alarm sensors (server/home_assistant.py), never a row's detail."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT door, type, cleared_at IS NULL, acknowledged_at IS NOT NULL, count(*) FROM alarms "
                "WHERE resolved_at IS NULL GROUP BY 1, 2, 3, 4").fetchall()
        return [(str(d) if d else None, str(t), bool(active), bool(acked), int(n)) for d, t, active, acked, n in rows]


    # -------------------------------------------------------- site revisions

    def latest_site_revision(self) -> dict[str, Any] | None:
        """The live site's revision row (``changes`` decoded), or None before the first import."""
        with self._lock:
            rows = self._conn.query("SELECT * FROM site_revisions ORDER BY number DESC LIMIT 1")
        return _revision_row(rows[0]) if rows else None

    def latest_site_revision_number(self) -> int:
        """The live revision's number (0 before the first): what a poll needs, without the revision's text."""
        with self._lock:
            return int(self._conn.execute("SELECT COALESCE(MAX(number), 0) FROM site_revisions").fetchone()[0])

    def site_revision_number_at(self, epoch: float) -> int | None:
        """The number of the site revision in force at ``epoch`` (the newest committed at or before it); None
        when the first revision came later (the desk's "Why not?" then explains on the current site)."""
        with self._lock:
            row = self._conn.execute("SELECT MAX(number) FROM site_revisions WHERE created_at <= ?",
                                     [epoch]).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def site_revision(self, number: int) -> dict[str, Any] | None:
        with self._lock:
            rows = self._conn.query("SELECT * FROM site_revisions WHERE number = ?", [number])
        return _revision_row(rows[0]) if rows else None

    def site_revisions(self, limit: int = 50, *, after: int = 0) -> list[dict[str, Any]]:
        """Newest first; ``after`` keeps only revisions numbered above it (what changed since a base)."""
        with self._lock:
            rows = self._conn.query("SELECT number, created_at, actor, summary, changes, rollback_of FROM "
                                    "site_revisions WHERE number > ? ORDER BY number DESC LIMIT ?", [after, limit])
        return [_revision_row(r) for r in rows]

    def add_site_revision(self, *, base: int, site_toml: str, actor: str, summary: str, changes: list[str],
                          at: float, rollback_of: int | None = None) -> int | None:
        """Append revision ``base + 1`` if ``base`` is still the latest (0: none yet); None if another commit
        came first. The check and the insert are one transaction: two writers can never both win."""
        with self._lock, self._conn.transaction():
            latest = self._conn.execute("SELECT COALESCE(MAX(number), 0) FROM site_revisions").fetchone()[0]
            if latest != base:
                return None
            self._conn.execute("INSERT INTO site_revisions (number, created_at, actor, summary, changes, site_toml, "
                               "rollback_of) VALUES (?, ?, ?, ?, ?, ?, ?)",
                               [base + 1, at, actor, summary, json.dumps(changes), site_toml, rollback_of])
        return base + 1
    # ---------------------------------------------------------------- alarms

    def raise_alarm(self, type: str, *, key: str, at: float, severity: str | None = None, device: str | None = None,
                    door: str | None = None, detail: dict[str, Any] | None = None, source_event: str | None = None,
                    once: bool = False, cleared: bool = False) -> tuple[str, bool]:
        """Raise an alarm; returns ``(alarm id, True if it was raised or raised again now)``.

        ``once``: the key can raise at most one alarm, ever (an alarm from an event: re-delivering the
        event, or ingesting it again after the alarm was resolved, changes nothing); its id is the key.
        Otherwise the key names a condition (``device_offline:pi-lobby``) with at most one open alarm:
        raising it while that alarm is active only refreshes its detail; raising it after the condition
        cleared but before an operator resolved the alarm makes the same alarm active again (``occurrences``
        counts the times, and the acknowledgement is dropped: a recurrence needs a new look); raising it
        after the alarm was resolved opens a new alarm. ``cleared``: the alarm records something that is
        already over (a momentary event); it is stored cleared but still open until resolved.

        ``type`` must be declared in doorkeep/vocabulary.py and ``severity`` (default: the declared one) must be
        the declared one: an alarm the desk cannot label, the docs do not list and a scenario cannot expect is
        a programming error, refused (``ValueError``) before anything is stored.
        """
        declared = vocabulary.ALARMS.get(type)
        if declared is None:
            raise ValueError(f"alarm type {type!r} is not declared in doorkeep/vocabulary.py")
        severity = declared.severity if severity is None else severity
        if severity != declared.severity:
            raise ValueError(f"alarm type {type!r} has severity {declared.severity!r}, not {severity!r}")
        detail_json = json.dumps(detail or {}, sort_keys=True)
        row = {"key": key, "type": type, "severity": severity, "device": device, "door": door, "raised_at": at,
               "last_raised_at": at, "occurrences": 1, "cleared_at": at if cleared else None,
               "detail": detail_json, "source_event": source_event}
        insert = (f"INSERT INTO alarms (id, {', '.join(_quoted(k) for k in row)}) "
                  f"VALUES (?, {', '.join('?' for _ in row)})")
        with self._lock, self._conn.transaction():
            if once:
                cur = self._conn.execute(insert + " ON CONFLICT DO NOTHING", [key, *row.values()])
                return key, cur.rowcount == 1
            open_ = self._conn.query('SELECT id, cleared_at, detail FROM alarms WHERE "key" = ? AND resolved_at IS NULL',
                                     [key])
            if not open_:
                alarm_id = f"{type}-{device or 'site'}-{uuid.uuid4().hex[:12]}"
                self._conn.execute(insert, [alarm_id, *row.values()])
                return alarm_id, True
            current = open_[0]
            if current["cleared_at"] is None:
                if detail is not None and current["detail"] != detail_json:
                    self._conn.execute("UPDATE alarms SET detail = ? WHERE id = ?", [detail_json, current["id"]])
                return current["id"], False
            self._conn.execute(
                "UPDATE alarms SET cleared_at = ?, last_raised_at = ?, occurrences = occurrences + 1, "
                "acknowledged_at = NULL, acknowledged_by = NULL, escalated_at = NULL, detail = ? WHERE id = ?",
                [at if cleared else None, at, detail_json if detail is not None else current["detail"], current["id"]])
            return current["id"], True

    def clear_alarm(self, key: str, at: float, detail: dict[str, Any] | None = None) -> str | None:
        """The condition behind the open, active alarm with this key is gone; returns its id, or None if none was active.

        The alarm stays open (listed) until an operator resolves it."""
        with self._lock, self._conn.transaction():
            rows = self._conn.query(
                'SELECT id FROM alarms WHERE "key" = ? AND resolved_at IS NULL AND cleared_at IS NULL', [key])
            if not rows:
                return None
            sets, args = "cleared_at = ?", [at]
            if detail is not None:
                sets, args = sets + ", detail = ?", [at, json.dumps(detail, sort_keys=True)]
            self._conn.execute(f"UPDATE alarms SET {sets} WHERE id = ?", [*args, rows[0]["id"]])
            return str(rows[0]["id"])

    def clear_door_alarms(self, device: str, door: str, types: tuple[str, ...], *, before_ts: str, at: float) -> int:
        """Clear the active alarms of these types at a door whose source event happened before ``before_ts``
        (the event that restored the door, by the device's own clock); returns how many."""
        if not types:
            return 0
        marks = ", ".join("?" for _ in types)
        with self._lock, self._conn.transaction():
            cur = self._conn.execute(
                f"UPDATE alarms SET cleared_at = ? WHERE resolved_at IS NULL AND cleared_at IS NULL AND device = ? "
                f"AND door = ? AND type IN ({marks}) AND source_event IN "
                f"(SELECT id FROM events WHERE device = ? AND door = ? AND ts < ?)",
                [at, device, door, *types, device, door, before_ts])
            return cur.rowcount

    def later_event(self, device: str, door: str, types: tuple[str, ...], after_ts: str) -> str | None:
        """The id of a stored event of these types at the door that happened after ``after_ts``, if any."""
        if not types:
            return None
        marks = ", ".join("?" for _ in types)
        with self._lock:
            rows = self._conn.query(
                f"SELECT id FROM events WHERE device = ? AND door = ? AND type IN ({marks}) AND ts > ? "
                f"ORDER BY ts LIMIT 1", [device, door, *types, after_ts])
        return str(rows[0]["id"]) if rows else None

    def acknowledge(self, alarm_id: str, who: str, *, at: float | None = None) -> bool:
        """An operator has seen the alarm; False if it was already acknowledged or is resolved."""
        if not who:
            raise ValueError("acknowledge needs the operator's name")
        with self._lock, self._conn.transaction():
            self._require_alarm(alarm_id)
            cur = self._conn.execute(
                "UPDATE alarms SET acknowledged_at = ?, acknowledged_by = ? "
                "WHERE id = ? AND acknowledged_at IS NULL AND resolved_at IS NULL",
                [time.time() if at is None else at, who, alarm_id])
            return cur.rowcount == 1

    def resolve(self, alarm_id: str, who: str, note: str, *, at: float | None = None) -> bool:
        """An operator closes the alarm with a note; False if it was already resolved.

        Resolving implies acknowledging. An alarm whose condition is still active may be resolved (a
        device being replaced); the condition then raises a new alarm only when it recurs after clearing."""
        if not who:
            raise ValueError("resolve needs the operator's name")
        now = time.time() if at is None else at
        with self._lock, self._conn.transaction():
            self._require_alarm(alarm_id)
            cur = self._conn.execute(
                "UPDATE alarms SET resolved_at = ?, resolved_by = ?, note = ?, "
                "acknowledged_at = COALESCE(acknowledged_at, ?), acknowledged_by = COALESCE(acknowledged_by, ?) "
                "WHERE id = ? AND resolved_at IS NULL",
                [now, who, note, now, who, alarm_id])
            return cur.rowcount == 1

    def _require_alarm(self, alarm_id: str) -> None:
        if not self._conn.execute("SELECT 1 FROM alarms WHERE id = ?", [alarm_id]).fetchone():
            raise AlarmNotFound(f"no alarm {alarm_id!r}")

    def alarm(self, alarm_id: str) -> dict[str, Any] | None:
        with self._lock:
            rows = self._conn.query("SELECT * FROM alarms WHERE id = ?", [alarm_id])
        return _alarm_row(rows[0]) if rows else None

    def open_alarm(self, key: str) -> dict[str, Any] | None:
        """The open (unresolved) alarm with this key, if any."""
        with self._lock:
            rows = self._conn.query('SELECT * FROM alarms WHERE "key" = ? AND resolved_at IS NULL', [key])
        return _alarm_row(rows[0]) if rows else None

    def open_alarms(self, **where: Any) -> list[dict[str, Any]]:
        """Alarms not yet resolved (active or cleared), newest first; ``where`` filters on columns."""
        return self.alarms(limit=None, open_only=True, **where)

    def alarms(self, limit: int | None = 100, *, open_only: bool = False, **where: Any) -> list[dict[str, Any]]:
        """Alarms newest first, resolved ones too unless ``open_only``; ``where`` filters on columns."""
        clauses = [f"{_quoted(k)} = ?" for k in where] + (["resolved_at IS NULL"] if open_only else [])
        sql = ("SELECT * FROM alarms" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
               + " ORDER BY last_raised_at DESC, raised_at DESC" + (" LIMIT ?" if limit is not None else ""))
        args = [*where.values(), *([limit] if limit is not None else [])]
        with self._lock:
            return [_alarm_row(r) for r in self._conn.query(sql, args)]

    def resolved_alarms(self, limit: int = 100) -> list[dict[str, Any]]:
        """Resolved alarms, the most recently resolved first (the desk's alarm history)."""
        with self._lock:
            return [_alarm_row(r) for r in self._conn.query(
                "SELECT * FROM alarms WHERE resolved_at IS NOT NULL ORDER BY resolved_at DESC LIMIT ?", [limit])]

    # ------------------------------------------------- event sequence state

    def load_sequences(self) -> tuple[list[dict[str, Any]], int]:
        """Every device's saved sequence state and the rowid of the last event it accounts for."""
        with self._lock:
            rows = [dict(r, gaps=json.loads(r["gaps"] or "[]"), lost=json.loads(r["lost"] or "[]"))
                    for r in self._conn.query("SELECT * FROM sequences")]
            cp = self._conn.execute("SELECT through_rowid FROM sequence_checkpoint WHERE id = 1").fetchall()
        return rows, int(cp[0][0]) if cp else 0

    def save_sequences(self, rows: list[dict[str, Any]], through_rowid: int, at: float) -> None:
        """Save changed devices' sequence state and the checkpoint together, in one transaction."""
        with self._lock, self._conn.transaction():
            for r in rows:
                row = {**r, "gaps": json.dumps(r["gaps"]), "lost": json.dumps(r["lost"]), "saved_at": at}
                self._conn.execute(_upsert_sql("sequences", tuple(row), "device"), [_cell(v) for v in row.values()])
            self._conn.execute(_upsert_sql("sequence_checkpoint", ("id", "through_rowid", "saved_at"), "id"),
                               [1, through_rowid, at])

    def events_after(self, rowid: int, batch: int = 5000) -> Iterator[tuple[int, str, str, int]]:
        """``(rowid, event id, device, seq)`` of events stored after ``rowid``, in arrival order."""
        while True:
            with self._lock:
                rows = self._conn.execute(
                    "SELECT rowid, id, device, seq FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    [rowid, batch]).fetchall()
            if not rows:
                return
            for r in rows:
                yield int(r[0]), str(r[1]), str(r[2]), int(r[3])
            rowid = int(rows[-1][0])


def _alarm_row(row: dict[str, Any]) -> dict[str, Any]:
    """An alarm as the API hands it out: ``detail`` decoded and its ``state`` spelled out."""
    out = _public(dict(row))
    out["detail"] = json.loads(row["detail"] or "{}")
    out["state"] = "resolved" if row["resolved_at"] is not None else "cleared" if row["cleared_at"] is not None \
        else "active"
    return out


def _revision_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "changes": json.loads(row["changes"])}

def read_access_events(data_dir: Path | str, since_ts: str, batch: int = 5000, *,
                       url: str | None = None) -> Iterator[StoredAccessEvent]:
    """:meth:`Store.access_events_since` on a connection of its own, opened read-only: for a process forked
    from a running server (the impact preview's second core), which must neither share the server's
    connection nor run the store's start-up (migrations, permission checks) while the server writes.
    ``url``: the store is in that PostgreSQL database (``Store.url``): a second connection through server/sqldb.py,
    its transactions read-only."""
    if url is not None:
        try:
            pg = sqldb.connect(url)
            pg.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        except Exception as exc:
            raise StoreError(f"cannot read the store at {url.split('@')[-1]}: {exc}") from exc
        try:
            yield from _access_events(lambda query, params: pg.execute(query, params).fetchall(), since_ts, batch)
        finally:
            pg.close()
        return
    path = Path(data_dir) / "doorkeep.db"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the store in {data_dir}: {exc}") from exc
    try:
        yield from _access_events(lambda query, params: conn.execute(query, params).fetchall(), since_ts, batch)
    finally:
        conn.close()


def _access_events(fetch: Callable[[str, list[Any]], list[Any]], since_ts: str,
                   batch: int) -> Iterator[StoredAccessEvent]:
    last_ts, last_rowid = since_ts, -1
    while True:
        rows = fetch("SELECT rowid, id, ts, device, door, type, decision, reason, decided_by, person, credential_hash, "
                     "detail FROM events WHERE ts >= ? AND (ts > ? OR rowid > ?) AND type IN ('access', 'lockdown') "
                     "ORDER BY ts, rowid LIMIT ?", [last_ts, last_ts, last_rowid, batch])
        if not rows:
            return
        for r in rows:
            yield StoredAccessEvent(*r[1:])
        last_ts, last_rowid = rows[-1][2], int(rows[-1][0])
