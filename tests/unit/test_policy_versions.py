"""Policy versions only ever grow for a site, whatever happens to the server's store (issue 12 item 3).

The edge refuses a policy older than the one it holds (a replay). A server whose store was replaced (a
fresh data directory, a restored backup) and counted from 1 again would publish policies every edge
refuses, and a card reported lost afterwards would still open doors offline. server/publisher.py takes
each version as the largest of: the store's counter + 1, the wall clock in milliseconds, and the highest
version retained on the broker (signed with the site's key) + 1. The e2e test is
tests/e2e/test_policy_rollback.py; the edge side is in tests/unit/test_policy_cache.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import FakeClock
from doorkeep.config import load_site_dir
from doorkeep.envelope import SnapshotKeys
from doorkeep.model import Site
from doorkeep.policy import compile_policy, sign_policy, verify_policy
from server.publisher import MAX_POLICY_VERSION, PolicyPublisher, signed_version
from server.store import Store
from simulators.site import DEMO_SITE

DOORS = ["lobby_in", "lobby_out"]


@pytest.fixture(scope="module")
def site() -> Site:
    return load_site_dir(DEMO_SITE).site


def publisher(tmp_path: Path, name: str, clock: FakeClock, key: Ed25519PrivateKey) -> tuple[Store, PolicyPublisher]:
    store = Store(tmp_path / name)
    return store, PolicyPublisher("demo", {"pi-lobby": DOORS}, key, store, clock)


def test_attack_a_fresh_store_restarts_policy_versions_below_what_the_edges_hold(tmp_path: Path, site: Site) -> None:
    key = Ed25519PrivateKey.generate()
    clock = FakeClock(1_780_000_000.0)
    old_store, old = publisher(tmp_path, "old", clock, key)
    sent: list[bytes] = []
    for _ in range(5):  # a site in use: several changes, several versions
        old.snapshot_key = SnapshotKeys.generate().recipient
        old.publish_all(site, lambda topic, payload: sent.append(payload))
        clock.advance(0.001)
    held = verify_policy(sent[-1], key.public_key(), site_id="demo", device="pi-lobby").version
    old_store.close()

    clock.advance(60.0)  # the minute it takes to replace the data directory
    new_store, new = publisher(tmp_path, "fresh", clock, key)  # the store replaced, same keys
    version = new.publish_all(site, lambda topic, payload: sent.append(payload))
    assert version > held
    # The edge's own check (min_version = what it holds) takes it.
    verify_policy(sent[-1], key.public_key(), site_id="demo", device="pi-lobby", min_version=held + 1)
    new_store.close()


def test_a_clock_stepped_back_never_lowers_the_version_of_the_same_store(tmp_path: Path, site: Site) -> None:
    clock = FakeClock(1_780_000_000.0)
    store, pub = publisher(tmp_path, "s", clock, Ed25519PrivateKey.generate())
    first = pub.publish_all(site, lambda topic, payload: None)
    assert first == 1_780_000_000_000  # wall-clock milliseconds
    clock.set_wall(1_700_000_000.0)  # NTP steps the clock back a long way
    pub.snapshot_key = SnapshotKeys.generate().recipient
    assert pub.publish_all(site, lambda topic, payload: None) == first + 1
    store.close()


def test_a_retained_policy_of_this_site_lifts_the_version_even_with_the_clock_behind(tmp_path: Path,
                                                                                       site: Site) -> None:
    key = Ed25519PrivateKey.generate()
    clock = FakeClock(1_000_000.0)  # a fresh store on a server whose clock reset to 1970
    store, pub = publisher(tmp_path, "s", clock, key)
    sent: list[bytes] = []
    pub.publish_all(site, lambda topic, payload: sent.append(payload))
    assert pub.observe("pi-lobby", sent[-1]) is False  # its own policy coming back from the broker
    subset = compile_policy(site, DOORS)
    retained = sign_policy(subset, site_id="demo", device="pi-lobby", version=1_790_000_000_000,
                           issued_at=1_790_000_000.0, key=key)
    forged = sign_policy(subset, site_id="demo", device="pi-lobby", version=2**52, issued_at=1_790_000_000.0,
                         key=Ed25519PrivateKey.generate())
    assert pub.observe("pi-lobby", forged) is False and pub.floor < 2**52  # not this site's key: ignored
    assert pub.observe("pi-floor7", retained) is False  # signed for another device: ignored
    assert pub.observe("pi-lobby", retained) is True  # older server's: re-sign above it
    version = pub.publish_all(site, lambda topic, payload: sent.append(payload))
    assert version == 1_790_000_000_001
    assert verify_policy(sent[-1], key.public_key(), site_id="demo", device="pi-lobby").version == version
    assert pub.observe("pi-lobby", retained) is False  # now older than what this server published
    store.close()


def test_signed_version_reads_only_this_sites_signed_envelopes(site: Site) -> None:
    key = Ed25519PrivateKey.generate()
    good = sign_policy(compile_policy(site, DOORS), site_id="demo", device="pi-lobby", version=42,
                       issued_at=1_790_000_000.0, key=key)
    assert signed_version(good, key, site_id="demo", device="pi-lobby") == 42
    assert signed_version(good, key, site_id="other", device="pi-lobby") is None
    for junk in (b"", b"[]", b"{}", b"not json", good.replace(b"42", b"43"), b'{"signed": 1, "signature": 2}'):
        assert signed_version(junk, key, site_id="demo", device="pi-lobby") is None


def test_versions_stay_exact_in_json_and_a_clock_in_the_far_future_is_refused(tmp_path: Path, site: Site) -> None:
    clock = FakeClock(MAX_POLICY_VERSION / 1000 + 10)
    store, pub = publisher(tmp_path, "s", clock, Ed25519PrivateKey.generate())
    sent: list[bytes] = []
    with pytest.raises(ValueError, match="exceeds"):
        pub.publish_all(site, lambda topic, payload: sent.append(payload))
    assert sent == []
    store.close()
