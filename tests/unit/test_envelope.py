"""Sealed snapshots (doorkeep/envelope.py): round trip, every tampering refused, keyring files and rotation."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from doorkeep import envelope as env
from doorkeep.envelope import (
    DataKeyring,
    EnvelopeError,
    SnapshotKeys,
    SnapshotRecipient,
    SnapshotRef,
    decrypt_body,
    init_data_keys,
    load_snapshot_keys,
    open_sealed,
    parse_sealed,
    seal,
    unwrap_data_key,
    unwrap_sealed,
    wrap_data_key,
)
from doorkeep.errors import ConfigError, DoorkeepError

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"
REF = SnapshotRef("demo", "pi-lobby", "ev-1")
KEYS = SnapshotKeys.generate()


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(env.SNAPSHOT_KEY_ENV, raising=False)
    monkeypatch.delenv(env.DATA_KEYS_ENV, raising=False)


def sealed() -> bytes:
    return seal(JPEG, KEYS.recipient, REF)


# ------------------------------------------------------------- round trip


def test_seal_open_round_trip_and_no_plaintext_in_the_blob() -> None:
    blob = sealed()
    assert blob.startswith(b"DKS1")
    assert b"\xff\xd8\xff" not in blob and bytes(range(64)) not in blob
    assert open_sealed(blob, KEYS.private, REF) == JPEG


def test_every_seal_uses_a_fresh_data_key_and_ephemeral_key() -> None:
    a, b = parse_sealed(sealed()), parse_sealed(sealed())
    assert a.ephemeral != b.ephemeral and a.wrapped != b.wrapped and a.body != b.body
    assert unwrap_sealed(a, KEYS.private, REF) != unwrap_sealed(b, KEYS.private, REF)


def test_kek_rewrap_round_trip_is_what_the_server_stores() -> None:
    parsed = parse_sealed(sealed())
    data_key = unwrap_sealed(parsed, KEYS.private, REF)
    kek_id, kek = KEYS.keyring.current()
    stored = wrap_data_key(kek_id, kek, data_key, REF)
    assert len(stored) == env.STORED_WRAP_BYTES and data_key not in stored
    assert decrypt_body(parsed.body, unwrap_data_key(kek_id, kek, stored, REF), REF) == JPEG


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("where", ["ephemeral", "wrapped", "body-nonce", "body-ct", "body-tag", "key-id"])
def test_any_flipped_bit_is_refused(where: str) -> None:
    blob = bytearray(sealed())
    n = blob[4]
    header = 5 + n
    offset = {
        "key-id": 5 + n - 1,
        "ephemeral": header + 3,
        "wrapped": header + 32 + 12 + 5,
        "body-nonce": header + 32 + 12 + 48 + 1,
        "body-ct": header + 32 + 12 + 48 + 12 + 10,
        "body-tag": len(blob) - 1,
    }[where]
    blob[offset] ^= 0x01
    with pytest.raises(EnvelopeError):
        open_sealed(bytes(blob), KEYS.private, REF)


@pytest.mark.parametrize("other", [SnapshotRef("other", "pi-lobby", "ev-1"), SnapshotRef("demo", "pi-lab", "ev-1"),
                                   SnapshotRef("demo", "pi-lobby", "ev-2")])
def test_a_blob_moved_to_another_site_device_or_event_does_not_open(other: SnapshotRef) -> None:
    with pytest.raises(EnvelopeError, match="does not unwrap"):
        open_sealed(sealed(), KEYS.private, other)


def test_a_body_from_another_snapshot_does_not_decrypt_under_this_key() -> None:
    a = parse_sealed(sealed())
    b = parse_sealed(seal(JPEG, KEYS.recipient, SnapshotRef("demo", "pi-lobby", "ev-2")))
    with pytest.raises(EnvelopeError, match="does not decrypt"):
        decrypt_body(b.body, unwrap_sealed(a, KEYS.private, REF), REF)


def test_wrong_private_key_is_refused_by_key_id_and_by_crypto() -> None:
    other = X25519PrivateKey.generate()
    with pytest.raises(EnvelopeError, match="sealed for key"):
        open_sealed(sealed(), other, REF)
    # Even with a forged key id, the wrapped key does not unwrap with another private key.
    forged = SnapshotRecipient(SnapshotRecipient.of(other).key_id, KEYS.recipient.public)
    with pytest.raises(EnvelopeError, match="does not unwrap"):
        open_sealed(seal(JPEG, forged, REF), other, REF)


def test_stored_wrapped_key_bound_to_its_kek_and_snapshot() -> None:
    data_key = os.urandom(32)
    kek_id, kek = KEYS.keyring.current()
    stored = wrap_data_key(kek_id, kek, data_key, REF)
    with pytest.raises(EnvelopeError):
        unwrap_data_key(kek_id, kek, stored, SnapshotRef("demo", "pi-lobby", "ev-9"))
    with pytest.raises(EnvelopeError):
        unwrap_data_key("kek-other", kek, stored, REF)
    with pytest.raises(EnvelopeError):
        unwrap_data_key(kek_id, os.urandom(32), stored, REF)
    with pytest.raises(EnvelopeError, match="size"):
        unwrap_data_key(kek_id, kek, stored[:-1], REF)


def test_plain_jpeg_and_junk_are_named_as_such() -> None:
    with pytest.raises(EnvelopeError, match="plain JPEG"):
        parse_sealed(JPEG)
    with pytest.raises(EnvelopeError, match="not sealed"):
        parse_sealed(b"GIF89a....")
    with pytest.raises(EnvelopeError, match="truncated"):
        parse_sealed(sealed()[:60])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.binary(max_size=200).map(lambda b: b"DKS1" + b))
def test_arbitrary_bytes_never_crash_open_only_envelope_error(data: bytes) -> None:
    try:
        open_sealed(data, KEYS.private, REF)
    except EnvelopeError:
        pass
    else:  # pragma: no cover - a forgery would be a bug
        pytest.fail("arbitrary bytes opened as a snapshot")


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_of_a_real_blob_is_refused(pos: int, xor: int) -> None:
    blob = bytearray(sealed())
    pos %= len(blob)
    if xor == 0:
        xor = 0x80
    blob[pos] ^= xor
    with pytest.raises(EnvelopeError):
        open_sealed(bytes(blob), KEYS.private, REF)


def test_envelope_error_is_in_the_core_hierarchy() -> None:
    assert issubclass(EnvelopeError, DoorkeepError) and issubclass(EnvelopeError, ValueError)


# ------------------------------------------------------------- recipients


def test_recipient_policy_form_round_trips_and_is_strict() -> None:
    r = KEYS.recipient
    assert SnapshotRecipient.from_policy(r.to_policy()) == r
    bad = [
        None, [], {"id": r.key_id}, {**r.to_policy(), "extra": 1},
        {"id": r.key_id, "x25519": "!!notbase64"},
        {"id": r.key_id, "x25519": "AAAA"},
        {"id": SnapshotKeys.generate().recipient.key_id, "x25519": r.to_policy()["x25519"]},  # id of another key
        {"id": 5, "x25519": r.to_policy()["x25519"]},
    ]
    for value in bad:
        with pytest.raises(EnvelopeError):
            SnapshotRecipient.from_policy(value)


# ------------------------------------------------------------ key files


def test_init_data_keys_writes_0600_files_and_refuses_to_overwrite(tmp_path: Path) -> None:
    snap, ring = init_data_keys(tmp_path / "keys")
    for p in (snap, ring):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    keys = load_snapshot_keys(tmp_path / "keys", source="test")
    assert open_sealed(seal(JPEG, keys.recipient, REF), keys.private, REF) == JPEG
    with pytest.raises(FileExistsError):
        init_data_keys(tmp_path / "keys")


def test_missing_key_files_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_snapshot_keys(tmp_path / "keys", source="site")
    assert "snapshot.key" in str(exc.value) and "doorkeep key init-data" in str(exc.value)
    init_data_keys(tmp_path / "keys")
    (tmp_path / "keys" / "data-keys.json").unlink()
    with pytest.raises(ConfigError) as exc:
        load_snapshot_keys(tmp_path / "keys", source="site")
    assert "data-keys.json" in str(exc.value) and "doorkeep key init-data" in str(exc.value)


@pytest.mark.parametrize("name", ["snapshot.key", "data-keys.json"])
def test_key_files_readable_by_others_are_refused(tmp_path: Path, name: str) -> None:
    init_data_keys(tmp_path / "keys")
    (tmp_path / "keys" / name).chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_snapshot_keys(tmp_path / "keys", source="site")


def test_bad_keyring_file_is_a_clear_error(tmp_path: Path) -> None:
    init_data_keys(tmp_path / "keys")
    ring = tmp_path / "keys" / "data-keys.json"
    ring.write_text(json.dumps({"current": "kek-nope", "keys": {}}))
    with pytest.raises(ConfigError, match="current"):
        load_snapshot_keys(tmp_path / "keys", source="site")


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    private = X25519PrivateKey.generate()
    monkeypatch.setenv(env.SNAPSHOT_KEY_ENV, private.private_bytes_raw().hex())
    monkeypatch.setenv(env.DATA_KEYS_ENV, f"kek-new:{'11' * 32},kek-old:{'22' * 32}")
    keys = load_snapshot_keys(tmp_path / "nothing-here", source="env")
    assert keys.recipient == SnapshotRecipient.of(private)
    assert keys.keyring.current() == ("kek-new", bytes.fromhex("11" * 32))
    assert keys.keyring.get("kek-old") == bytes.fromhex("22" * 32)
    with pytest.raises(EnvelopeError, match="only a key file can be rotated"):
        keys.keyring.rotate()
    secret = "ab" * 32
    monkeypatch.setenv(env.DATA_KEYS_ENV, secret)  # the id forgotten: the error must not echo the key
    with pytest.raises(ConfigError) as exc:
        load_snapshot_keys(tmp_path, source="env")
    assert secret not in str(exc.value)
    monkeypatch.setenv(env.DATA_KEYS_ENV, "kek-new:zz")
    with pytest.raises(ConfigError, match=env.DATA_KEYS_ENV):
        load_snapshot_keys(tmp_path, source="env")
    monkeypatch.setenv(env.SNAPSHOT_KEY_ENV, "abcd")
    with pytest.raises(ConfigError, match=env.SNAPSHOT_KEY_ENV):
        load_snapshot_keys(tmp_path, source="env")


def test_file_keyring_sees_a_rotation_by_another_process(tmp_path: Path) -> None:
    init_data_keys(tmp_path / "keys")
    server = load_snapshot_keys(tmp_path / "keys", source="server").keyring
    cli = load_snapshot_keys(tmp_path / "keys", source="cli").keyring
    old = server.current()[0]
    new = cli.rotate()
    assert new != old
    assert server.current()[0] == new  # the running side picks it up without a restart
    assert cli.retire({old}) == [old]
    with pytest.raises(EnvelopeError, match="retired or lost"):
        server.get(old)
    assert cli.retire({new}) == []  # the current key is never retired
    assert stat.S_IMODE((tmp_path / "keys" / "data-keys.json").stat().st_mode) == 0o600
    assert [p.name for p in (tmp_path / "keys").iterdir() if p.name.endswith(".tmp")] == []


def test_memory_keyring_cannot_be_rotated() -> None:
    ring = DataKeyring.generate()
    with pytest.raises(EnvelopeError):
        ring.retire(set())


# ------------------------------------------------------ delivery to edges


def test_the_publisher_signs_the_snapshot_key_into_every_policy_and_republishes_on_a_new_one(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from doorkeep.clock import SystemClock
    from doorkeep.config import load_site_dir
    from doorkeep.policy import verify_policy
    from server.publisher import PolicyPublisher
    from server.store import Store
    from simulators.site import DEMO_SITE

    site = load_site_dir(DEMO_SITE).site
    signing = Ed25519PrivateKey.generate()
    store = Store(tmp_path)
    first, second = SnapshotKeys.generate().recipient, SnapshotKeys.generate().recipient
    pub = PolicyPublisher("demo", {"pi-lobby": ["lobby_in", "lobby_out"]}, signing, store, SystemClock(),
                          snapshot_key=first)
    sent: list[bytes] = []

    def got() -> SnapshotRecipient | None:
        return verify_policy(sent[-1], signing.public_key(), site_id="demo", device="pi-lobby").snapshot_key

    pub.publish_all(site, lambda topic, payload: sent.append(payload))
    assert len(sent) == 1 and got() == first
    pub.publish_all(site, lambda topic, payload: sent.append(payload))
    assert len(sent) == 1  # nothing changed: nothing re-signed
    pub.snapshot_key = second
    version = pub.publish_all(site, lambda topic, payload: sent.append(payload))
    first_version = verify_policy(sent[0], signing.public_key(), site_id="demo", device="pi-lobby").version
    assert len(sent) == 2 and got() == second and version > first_version
    store.close()
