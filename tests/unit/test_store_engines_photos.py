"""server/store_photos.py on both engines: a cardholder photo encrypted in its row (BLOB on SQLite, BYTEA on
PostgreSQL), replaced, read back, re-wrapped by a key rotation, deleted, and orphans found and removed.

PostgreSQL comes from tests/pg.py (a fresh database per test; skipped with the reason when none answers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.envelope import init_data_keys, load_snapshot_keys
from server.errors import StoreError
from server.store import Store
from tests.pg import engine_url, pg_url  # noqa: F401  (fixtures)

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"


@pytest.fixture
def store(engine_url: str | None, tmp_path: Path) -> Iterator[Store]:  # noqa: F811
    init_data_keys(tmp_path / "keys")
    s = Store(tmp_path / "data", keys=load_snapshot_keys(tmp_path / "keys", source="test"), url=engine_url)
    s.save_visitor("v-1", name="Grace", status="registered", registered_at=1.0)
    s.save_visitor("v-2", name="Ada", status="registered", registered_at=1.0)
    yield s
    s.close()


def test_a_photo_is_kept_encrypted_replaced_and_read_back(store: Store) -> None:
    first, replaced = store.put_person_photo("v-1", JPEG, site="demo", width=64, height=80, at=1.0)
    assert not replaced and store.person_photo_id("v-1") == first
    second, replaced = store.put_person_photo("v-1", JPEG + b"2", site="demo", width=32, height=40, at=2.0)
    assert replaced and second != first and store.person_photo_id("v-1") == second
    assert store.person_photo("v-1") == JPEG + b"2"
    assert store.person_photo_info("v-1") == {"id": second, "bytes": len(JPEG) + 1, "width": 32, "height": 40,
                                              "uploaded_at": 2.0}
    with store.connection_for_tests(port=True) as conn:
        (body,) = conn.execute("SELECT body FROM person_photos WHERE person = ?", ["v-1"]).fetchone()
    assert isinstance(body, bytes) and JPEG[:64] not in body  # ciphertext only
    assert store.person_photo("v-2") is None and store.person_photo_info("v-2") is None
    assert store.person_photo_id(None) is None
    with pytest.raises(StoreError, match="no person"):
        store.put_person_photo("nobody", JPEG, site="demo", width=1, height=1, at=1.0)
    assert store.delete_person_photo("v-1") and not store.delete_person_photo("v-1")
    assert store.person_photo("v-1") is None


def test_a_key_rotation_rewraps_photos_and_retires_the_old_key(store: Store) -> None:
    keys = store.keys
    assert keys is not None
    store.put_person_photo("v-1", JPEG, site="demo", width=1, height=1, at=1.0)
    store.put_person_photo("v-2", JPEG + b"x", site="demo", width=1, height=1, at=1.0)
    old = keys.keyring.current()[0]
    keys.keyring.rotate()
    assert store.rewrap_snapshot_keys() == (2, [old])
    assert (store.person_photo("v-1"), store.person_photo("v-2")) == (JPEG, JPEG + b"x")


def test_photos_of_people_no_longer_stored_are_orphans(store: Store) -> None:
    store.put_person_photo("v-1", JPEG, site="demo", width=1, height=1, at=1.0)
    store.put_person_photo("v-2", JPEG, site="demo", width=1, height=1, at=1.0)
    assert store.count_orphan_person_photos() == 0
    store.delete("visitors", "v-2")
    assert store.count_orphan_person_photos() == 1
    assert store.delete_orphan_person_photos() == 1
    assert store.person_photo("v-2") is None and store.person_photo("v-1") == JPEG
