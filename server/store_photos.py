"""The store's cardholder photos: one per person, encrypted at rest like snapshots (docs/privacy.md).

Part of :class:`server.store.Store` (a base class of it): every method takes the store's lock itself.
A photo is a small JPEG (server/photos.py re-encodes every upload to at most 512 px, without metadata), so
it lives in the database row itself, not in a file: a backup carries it, and deleting the row (erasure,
retention, the desk's "Remove photo") destroys the only copy of its data key and its ciphertext at once.

The layout is the snapshots' (doorkeep/envelope.py): a fresh 256-bit data key per photo encrypts the JPEG
(AES-256-GCM); the row keeps the data key wrapped under the site's current data key (``kek_id``), so a
``doorkeep key rotate`` re-wraps photos with the snapshots (server/store.py ``rewrap_snapshot_keys``) and
an old key is retired only once no photo uses it either. The site, the person and the photo's id are bound
as AAD, so a row's ciphertext or wrapped key moved to another person does not open.

Runs on SQLite and PostgreSQL (through the connection port, server/sqldb.py), in the same SQL on both; the
ciphertext and the wrapped key are BLOB there and BYTEA here, read back as ``bytes`` either way.
"""

from __future__ import annotations

import secrets
import threading
import uuid
from typing import Any

import sqlite_utils
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from doorkeep.envelope import (
    KEY_BYTES,
    NONCE_BYTES,
    TAG_BYTES,
    EnvelopeError,
    SnapshotKeys,
    SnapshotRef,
    unwrap_data_key,
    wrap_data_key,
)
from server import sqldb
from server.errors import StoreError

#: The ``device`` part of a photo's AAD reference: photos are bound to the person, not to a camera.
PHOTO_OWNER = "person-photo/"
#: A photo whose person is neither a person of the site nor a stored visit (a visitor's photo, taken at the kiosk
#: with consent, lives under the visit id and goes with the visit).
_ORPHAN = "person NOT IN (SELECT id FROM people) AND person NOT IN (SELECT id FROM visitors)"


def m017_person_photos(db: sqlite_utils.Database) -> None:
    """Cardholder photos (server/store_photos.py): one row per person, the encrypted JPEG in ``body``
    (nonce + AES-256-GCM ciphertext + tag), its data key wrapped under ``kek_id`` in ``wrapped_key``."""
    db["person_photos"].create({"person": str, "id": str, "site": str, "kek_id": str, "wrapped_key": bytes,
                                "body": bytes, "bytes": int, "width": int, "height": int, "uploaded_at": float},
                               pk="person", not_null={"id", "site", "kek_id", "wrapped_key", "body", "bytes",
                                                      "width", "height", "uploaded_at"})
    db["person_photos"].create_index(["kek_id"])


def photo_ref(site: str, person: str, photo_id: str) -> SnapshotRef:
    """What a photo is about, bound into both of its layers (data and key wrap)."""
    return SnapshotRef(site, PHOTO_OWNER + person, photo_id)


def _encrypt(jpeg: bytes, data_key: bytes, ref: SnapshotRef) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, jpeg, ref.aad(b"data"))


def _decrypt(body: bytes, data_key: bytes, ref: SnapshotRef) -> bytes:
    if len(body) < NONCE_BYTES + TAG_BYTES:
        raise EnvelopeError("stored photo is truncated")
    try:
        return AESGCM(data_key).decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], ref.aad(b"data"))
    except InvalidTag:
        raise EnvelopeError("stored photo does not decrypt: altered, or another person's") from None


class PhotoRecords:
    """Cardholder photo queries (a base of ``Store``)."""

    _conn: sqldb.Connection
    _lock: threading.RLock
    keys: SnapshotKeys | None
    _snapshot_keys: Any  # Store's: the keys, or a StoreError saying the store was opened without them

    def put_person_photo(self, person: str, jpeg: bytes, *, site: str, width: int, height: int,
                         at: float) -> tuple[str, bool]:
        """Keep ``jpeg`` as ``person``'s photo, encrypted, replacing any earlier one (whose data key goes with
        its row); returns ``(photo id, replaced)``. The person (or visit) must be in the store."""
        keys = self._snapshot_keys()
        photo_id = uuid.uuid4().hex
        ref = photo_ref(site, person, photo_id)
        data_key = secrets.token_bytes(KEY_BYTES)
        body = _encrypt(jpeg, data_key, ref)
        with self._lock:
            conn = self._conn
            try:
                # The write lock before reading the current data key, as insert_snapshot does: a rotation in
                # another process either sees this row or has already made the new key current.
                if not conn.in_transaction:
                    conn.begin(immediate=True)
                if conn.execute("SELECT 1 FROM people WHERE id = ? UNION ALL SELECT 1 FROM visitors WHERE id = ?",
                                [person, person]).fetchone() is None:  # a visitor's: the kiosk's photo
                    raise StoreError(f"no person {person!r} in the store")
                replaced = conn.execute("DELETE FROM person_photos WHERE person = ?", [person]).rowcount > 0
                kek_id, kek = keys.keyring.current()
                conn.execute("INSERT INTO person_photos (person, id, site, kek_id, wrapped_key, body, bytes, width, "
                             "height, uploaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             [person, photo_id, site, kek_id, wrap_data_key(kek_id, kek, data_key, ref), body,
                              len(jpeg), width, height, at])
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
        return photo_id, replaced

    def person_photo_id(self, person: str | None) -> str | None:
        """The id of the person's current photo (changes when it is replaced), or None: a cheap key lookup."""
        if not person:
            return None
        with self._lock:
            row = self._conn.execute("SELECT id FROM person_photos WHERE person = ?", [person]).fetchone()
        return str(row[0]) if row else None

    def person_photo_info(self, person: str) -> dict[str, Any] | None:
        """The photo's facts without its content (id, bytes, width, height, uploaded_at), or None."""
        with self._lock:
            rows = self._conn.query("SELECT id, bytes, width, height, uploaded_at FROM person_photos "
                                    "WHERE person = ?", [person])
        return rows[0] if rows else None

    def person_photo(self, person: str) -> bytes | None:
        """The person's photo, decrypted in memory; None if they have none."""
        for attempt in range(2):
            with self._lock:
                row = self._conn.execute("SELECT id, site, kek_id, wrapped_key, body FROM person_photos "
                                         "WHERE person = ?", [person]).fetchone()
            if row is None:
                return None
            photo_id, site, kek_id, wrapped, body = row
            keys = self._snapshot_keys()
            ref = photo_ref(site, person, photo_id)
            try:
                data_key = unwrap_data_key(kek_id, keys.keyring.get(kek_id), wrapped, ref)
            except EnvelopeError:
                if attempt == 0:
                    continue  # re-wrapped by a rotation between reading the row and the key: read it again
                raise
            return _decrypt(bytes(body), data_key, ref)
        return None  # pragma: no cover - the loop returns or raises

    def delete_person_photo(self, person: str) -> bool:
        """Forget the person's photo for good (its row holds the ciphertext and the only copy of its key)."""
        with self._lock, self._conn.transaction():
            return self._conn.execute("DELETE FROM person_photos WHERE person = ?", [person]).rowcount > 0

    def count_orphan_person_photos(self) -> int:
        """Photos of people no longer in the store (removed by an import of people.toml), and of visits
        retention removed (a kiosk's photo of a visitor: server/web/kiosk.py)."""
        with self._lock:
            return int(self._conn.execute(f"SELECT COUNT(*) FROM person_photos WHERE {_ORPHAN}").fetchone()[0])

    def delete_orphan_person_photos(self) -> int:
        """Delete the photos of people (and visits) no longer in the store (retention); how many."""
        with self._lock, self._conn.transaction():
            return int(self._conn.execute(f"DELETE FROM person_photos WHERE {_ORPHAN}").rowcount)

    def _rewrap_person_photos(self, conn: sqldb.Connection, keys: SnapshotKeys, current: str, kek: bytes) -> int:
        """Inside the caller's write transaction (server/store.py ``rewrap_snapshot_keys``): every photo's data
        key re-wrapped under ``current``; how many. Photos are few (one per person), so one pass."""
        rows = conn.execute("SELECT person, id, site, kek_id, wrapped_key FROM person_photos WHERE kek_id != ?",
                            [current]).fetchall()
        for person, photo_id, site, old, wrapped in rows:
            ref = photo_ref(site, person, photo_id)
            data_key = unwrap_data_key(old, keys.keyring.get(old), wrapped, ref)
            conn.execute("UPDATE person_photos SET kek_id = ?, wrapped_key = ? WHERE person = ? AND kek_id = ?",
                         [current, wrap_data_key(current, kek, data_key, ref), person, old])
        return len(rows)

    @staticmethod
    def _photo_key_ids(conn: sqldb.Connection) -> set[str]:
        return {r[0] for r in conn.execute("SELECT DISTINCT kek_id FROM person_photos")}
