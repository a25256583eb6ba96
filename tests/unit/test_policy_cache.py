"""The edge's decision cache: verified, persisted atomically, re-verified at start-up."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from datetime import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.model import AccessEntry, AccessLevel, Area, Credential, Door, Person, Schedule, Site, TimeWindow
from doorkeep.policy import PolicyError, sign_policy
from edge.policy_cache import PolicyCache

SITE_ID = "t"
DEVICE = "pi-a"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def site(revision: int = 0) -> Site:
    """A small site; ``revision`` changes one person's name so versions differ in content too."""
    always = Schedule("always", "Always", (TimeWindow(frozenset({"mon", "sat"}), time(0, 0), None),))
    return Site(
        SITE_ID, "Test", "Europe/London",
        areas={"outside": Area("outside", "Outside"), "lobby": Area("lobby", "Lobby")},
        doors={"lobby_in": Door("lobby_in", "Lobby entrance", "outside", "lobby")},
        schedules={"always": always},
        access_levels={"staff": AccessLevel("staff", "Staff", (AccessEntry("lobby", "always"),))},
        people={"alice": Person("alice", f"Alice r{revision}", access_levels=("staff",))},
        credentials={"ab" * 32: Credential("ab" * 32, "1234", "em4100", "alice")},
    )


def payload(key: Ed25519PrivateKey, version: int, *, device: str = DEVICE, revision: int | None = None) -> bytes:
    return sign_policy(site(version if revision is None else revision), site_id=SITE_ID, device=device,
                       version=version, issued_at=1_767_225_600.0 + version, key=key)


def cache(path: Path, key: Ed25519PrivateKey) -> PolicyCache:
    return PolicyCache(path, key.public_key(), site_id=SITE_ID, device=DEVICE)


def test_an_empty_cache_has_no_policy(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    c = cache(tmp_path / "policy.json", key)
    assert c.site is None and c.version is None and c.issued_at is None and c.current is None


def test_an_offered_policy_is_persisted_and_loads_in_a_new_cache(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "state" / "policy.json"
    first = cache(path, key)
    offered = payload(key, 3)
    assert first.offer(offered) is True
    assert first.version == 3 and first.site == site(3)
    assert path.read_bytes() == offered  # exactly the signed bytes, so they can be verified again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(path.parent.glob("*.tmp"))

    second = cache(path, key)
    assert second.load() is True
    assert second.version == 3 and second.site == site(3)
    assert second.issued_at == pytest.approx(1_767_225_603.0)


def test_a_missing_file_loads_nothing_without_complaint(tmp_path: Path, key: Ed25519PrivateKey,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    c = cache(tmp_path / "policy.json", key)
    with caplog.at_level(logging.INFO, logger="doorkeep.edge.policy"):
        assert c.load() is False
    assert c.site is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("spoil", [
    lambda data: data.replace(b"Alice r3", b"Alice r4"),           # edited on the SD card
    lambda data: data[: len(data) // 2],                          # truncated by a power cut
    lambda data: b"\x00" * 64,                                    # zeroed
    lambda data: json.dumps({**json.loads(data), "signature": ""}).encode(),
])
def test_a_tampered_or_corrupt_file_is_set_aside_at_load(tmp_path: Path, key: Ed25519PrivateKey,
                                                         caplog: pytest.LogCaptureFixture, spoil) -> None:
    path = tmp_path / "policy.json"
    cache(path, key).offer(payload(key, 3))
    spoiled = spoil(path.read_bytes())
    assert spoiled != payload(key, 3)
    path.write_bytes(spoiled)

    c = cache(path, key)
    with caplog.at_level(logging.ERROR, logger="doorkeep.edge.policy"):
        assert c.load() is False
    assert c.site is None and c.version is None
    assert not path.exists()
    assert (tmp_path / "policy.json.rejected").read_bytes() == spoiled
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "doorkeep.edge.policy"]
    assert errors and "rejected" in errors[0].getMessage()


def test_a_file_signed_for_another_device_is_set_aside(tmp_path: Path, key: Ed25519PrivateKey,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(payload(key, 3, device="pi-b"))
    c = cache(path, key)
    with caplog.at_level(logging.ERROR, logger="doorkeep.edge.policy"):
        assert c.load() is False
    assert "pi-b" in caplog.text
    assert path.with_name("policy.json.rejected").exists()


def test_a_file_signed_by_another_key_is_set_aside(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(payload(Ed25519PrivateKey.generate(), 3))
    c = cache(path, key)
    assert c.load() is False and c.site is None
    assert path.with_name("policy.json.rejected").exists()


def test_an_older_version_is_refused_after_a_newer_one(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "policy.json"
    c = cache(path, key)
    assert c.offer(payload(key, 5))
    with pytest.raises(PolicyError, match="older"):
        c.offer(payload(key, 4))
    assert c.version == 5 and c.site == site(5)
    reloaded = cache(path, key)
    assert reloaded.load() and reloaded.version == 5


def test_a_newer_version_replaces_the_held_one(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    c = cache(tmp_path / "policy.json", key)
    assert c.offer(payload(key, 5)) and c.offer(payload(key, 6))
    assert c.version == 6 and c.site == site(6)


def test_the_same_version_again_is_a_redelivery_and_does_not_rewrite_the_file(
        tmp_path: Path, key: Ed25519PrivateKey, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policy.json"
    c = cache(path, key)
    first = payload(key, 5)
    assert c.offer(first) is True
    before = path.stat()
    assert c.offer(first) is False                   # the broker re-delivering the retained message
    with caplog.at_level(logging.WARNING, logger="doorkeep.edge.policy"):
        assert c.offer(payload(key, 5)) is False     # same version signed again (new nonce): kept, flagged
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert path.read_bytes() == first
    assert "signed again" in caplog.text


@pytest.mark.parametrize("bad", [b"", b"not json", b"{}", b"\xff" * 10])
def test_a_refused_offer_raises_and_keeps_the_held_policy(tmp_path: Path, key: Ed25519PrivateKey, bad: bytes) -> None:
    path = tmp_path / "policy.json"
    c = cache(path, key)
    c.offer(payload(key, 5))
    held = path.read_bytes()
    with pytest.raises(PolicyError):
        c.offer(bad)
    assert c.version == 5 and path.read_bytes() == held


def test_an_offer_for_another_device_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    c = cache(tmp_path / "policy.json", key)
    with pytest.raises(PolicyError, match="pi-b"):
        c.offer(payload(key, 1, device="pi-b"))
    assert c.site is None and not (tmp_path / "policy.json").exists()


def test_load_does_not_roll_back_a_newer_offered_policy(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    old_path, path = tmp_path / "old.json", tmp_path / "policy.json"
    cache(old_path, key).offer(payload(key, 2))
    c = cache(path, key)
    c.offer(payload(key, 7))
    os.replace(old_path, path)  # the file goes back in time under a running cache
    assert c.load() is False
    assert c.version == 7


def test_offers_and_reads_from_two_threads_do_not_interfere(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    c = cache(tmp_path / "policy.json", key)
    payloads = [payload(key, v) for v in range(1, 31)]
    errors: list[BaseException] = []
    seen: list[int] = []
    done = threading.Event()

    def offer_all() -> None:
        try:
            for p in payloads:
                c.offer(p)
        except BaseException as e:  # noqa: BLE001 - any failure in a thread is reported by the test
            errors.append(e)
        finally:
            done.set()

    def read_until_done() -> None:
        try:
            while not done.is_set():
                current = c.current
                if current is not None:
                    assert current.site == site(current.version)  # site and version belong together
                    seen.append(current.version)
                _ = c.site, c.version, c.issued_at
        except BaseException as e:  # noqa: BLE001 - any failure in a thread is reported by the test
            errors.append(e)

    threads = [threading.Thread(target=offer_all), threading.Thread(target=read_until_done)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert seen == sorted(seen), "a reader never sees the version go backwards"
    assert c.version == 30


# ------------------------------------------ never an older policy, on any path (issue 12 item 3)


def test_attack_replayed_older_policy_is_refused_after_the_cached_file_was_lost(
        tmp_path: Path, key: Ed25519PrivateKey) -> None:
    """A stolen device certificate may publish, retained, an old policy its server once signed (the ACL lets a
    device write its own subtree). With the cached file damaged or deleted, the edge must still refuse it."""
    path = tmp_path / "policy.json"
    c = cache(path, key)
    assert c.offer(payload(key, 7))
    path.write_bytes(b"damaged by a power cut")
    restarted = cache(path, key)
    assert restarted.load() is False and restarted.current is None  # set aside
    assert restarted.floor == 7
    with pytest.raises(PolicyError, match="older"):
        restarted.offer(payload(key, 6))
    assert restarted.current is None
    assert restarted.offer(payload(key, 7)) is True  # the broker's retained copy of the one lost: taken again
    assert restarted.offer(payload(key, 8)) is True and restarted.version == 8


def test_an_older_cached_file_than_the_floor_is_set_aside_at_start(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "policy.json"
    old = payload(key, 3)
    c = cache(path, key)
    assert c.offer(old) and c.offer(payload(key, 9))
    path.write_bytes(old)  # a copy of an older, validly signed file put back on the SD card
    restarted = cache(path, key)
    assert restarted.load() is False and restarted.current is None
    assert restarted.rejected_path.read_bytes() == old


def test_a_load_never_swaps_the_held_policy_for_another_body_of_the_same_version(
        tmp_path: Path, key: Ed25519PrivateKey) -> None:
    path = tmp_path / "policy.json"
    c = cache(path, key)
    held = payload(key, 5, revision=1)
    assert c.offer(held)
    path.write_bytes(payload(key, 5, revision=2))  # same version, other content
    assert c.load() is False
    assert c.site == site(1)


def test_a_version_beyond_what_json_holds_exactly_is_refused(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    c = cache(tmp_path / "policy.json", key)
    huge = sign_policy(site(1), site_id=SITE_ID, device=DEVICE, version=2**53, issued_at=1_767_225_600.0, key=key)
    with pytest.raises(PolicyError, match="above"):
        c.offer(huge)
    assert c.current is None and c.floor == 0


def test_an_unreadable_floor_file_falls_back_to_the_cached_policy(tmp_path: Path, key: Ed25519PrivateKey,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policy.json"
    assert cache(path, key).offer(payload(key, 4))
    (tmp_path / "policy.json.version").write_text("garbage")
    with caplog.at_level(logging.ERROR, logger="doorkeep.edge.policy"):
        c = cache(path, key)
    assert "not a version" in caplog.text
    assert c.load() and c.version == 4 and c.floor == 4
    with pytest.raises(PolicyError, match="older"):
        c.offer(payload(key, 3))
