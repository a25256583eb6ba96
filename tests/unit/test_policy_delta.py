"""Signed policy deltas (issue 20, "Policy deltas"): diff/apply, the digest, the envelope, the edge's cache and
the publisher's choice between a delta and a full policy. The wire is in tests/e2e/test_policy_delta.py."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doorkeep.clock import FakeClock
from doorkeep.config import load_site_dir
from doorkeep.model import AccessEntry, Credential, CredentialState, Person, PersonState, Site
from doorkeep.policy import PolicyError, compile_policy, sign_policy
from doorkeep.policy_delta import (DeltaBaseMismatch, PolicyChanges, PolicyDeltaError, PolicyDigest, TableChange,
                                   apply_changes, apply_delta, diff_policy, sign_delta, verify_delta)
from edge.policy_cache import PolicyCache
from server.publisher import DeltaSettings, PolicyPublisher
from server.store import Store
from simulators.site import DEMO_SITE

KEY = Ed25519PrivateKey.generate()
PUB = KEY.public_key()
DOORS = ["lobby_in", "lobby_out"]
NOW = 1_780_000_000.0


@pytest.fixture(scope="module")
def site() -> Site:
    """The demo site with 40 staff and their cards (its site files hold no people)."""
    demo = load_site_dir(DEMO_SITE).site
    people = {f"s{i:03d}": Person(f"s{i:03d}", f"Staff {i}", access_levels=("staff",)) for i in range(40)}
    creds = {f"{i:064x}": Credential(f"{i:064x}", f"{i:04d}", "em4100", f"s{i:03d}") for i in range(40)}
    return dataclasses.replace(demo, people=people, credentials=creds)


def lose(site: Site, h: str) -> Site:
    return dataclasses.replace(site, credentials={**site.credentials,
                                                  h: dataclasses.replace(site.credentials[h], state=CredentialState.LOST)})


# ------------------------------------------------------------------ diff / apply / digest

def mutate(site: Site, ops: list[tuple[str, int]]) -> Site:
    """Apply generated edits: the kinds of change the desk makes (cards lost, people added or removed, levels edited)."""
    people, creds = dict(site.people), dict(site.credentials)
    levels, lockdowns, rules = dict(site.access_levels), set(site.lockdowns), site.rules
    for op, n in ops:
        if op == "lose" and creds:
            h = sorted(creds)[n % len(creds)]
            creds[h] = dataclasses.replace(creds[h], state=CredentialState.LOST)
        elif op == "add":
            pid = f"gen{n}"
            people[pid] = Person(pid, pid, access_levels=tuple(sorted(levels))[:1], clearance=n % 4)
            creds[f"{n:064x}"] = Credential(f"{n:064x}", f"{n % 10000:04d}", "em4100", pid)
        elif op == "remove" and people:
            pid = sorted(people)[n % len(people)]
            del people[pid]
            creds = {h: c for h, c in creds.items() if c.person != pid}
        elif op == "suspend" and people:
            pid = sorted(people)[n % len(people)]
            people[pid] = dataclasses.replace(people[pid], state=PersonState.SUSPENDED)
        elif op == "level" and levels:
            lid = sorted(levels)[n % len(levels)]
            entries = levels[lid].entries
            levels[lid] = dataclasses.replace(levels[lid], entries=entries[:-1] if len(entries) > 1
                                              else (*entries, AccessEntry("outside", "always")))
        elif op == "lockdown":
            lockdowns ^= {"site"}
        elif op == "rules":
            rules = dataclasses.replace(rules, escort_window_s=float(10 + n % 50))
    return dataclasses.replace(site, people=people, credentials=creds, access_levels=levels,
                               lockdowns=frozenset(lockdowns), rules=rules)


OPS = st.lists(st.tuples(st.sampled_from(["lose", "add", "remove", "suspend", "level", "lockdown", "rules"]),
                         st.integers(0, 10_000)), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=OPS, after=OPS)
def test_apply_of_diff_gives_the_new_policy_and_its_digest_on_generated_sites(site: Site, before: list, after: list) -> None:
    base = compile_policy(mutate(site, before), DOORS)
    new = compile_policy(mutate(mutate(site, before), after), DOORS)
    changes = diff_policy(base, new)
    # The changes survive the wire's JSON.
    changes = PolicyChanges.from_json(json.loads(json.dumps(changes.to_json())))
    result = apply_changes(base, changes)
    assert result == new  # dict equality: every table record for record, every head field
    assert PolicyDigest.of(base).updated(base, changes).hexdigest() == PolicyDigest.of(new).hexdigest()
    assert changes.empty == (base == new)


def test_the_digest_ignores_record_order_and_sees_any_change(site: Site) -> None:
    sub = compile_policy(site, DOORS)
    reordered = dataclasses.replace(sub, credentials=dict(reversed(list(sub.credentials.items()))))
    assert PolicyDigest.of(reordered).hexdigest() == PolicyDigest.of(sub).hexdigest()
    assert PolicyDigest.of(lose(sub, next(iter(sub.credentials)))).hexdigest() != PolicyDigest.of(sub).hexdigest()


def test_apply_refuses_removing_a_record_the_base_does_not_hold(site: Site) -> None:
    sub = compile_policy(site, DOORS)
    with pytest.raises(PolicyDeltaError, match="does not hold"):
        apply_changes(sub, PolicyChanges(tables={"people": TableChange(remove=("nobody",))}))


# ------------------------------------------------------------------ envelope

def signed(base: Site, new: Site, *, version: int = 2, base_version: int = 1, key: Ed25519PrivateKey = KEY,
           device: str = "pi-lobby", site_id: str = "demo", result_digest: str | None = None) -> bytes:
    changes = diff_policy(base, new)
    digest = PolicyDigest.of(base)
    return sign_delta(changes, site_id=site_id, device=device, base_version=base_version,
                      base_digest=digest.hexdigest(), version=version,
                      result_digest=result_digest or digest.updated(base, changes).hexdigest(), issued_at=NOW, key=key)


def test_a_delta_verifies_and_applies_to_its_base_only(site: Site) -> None:
    base = compile_policy(site, DOORS)
    h = next(iter(base.credentials))
    new = lose(base, h)
    delta = verify_delta(signed(base, new), PUB, site_id="demo", device="pi-lobby")
    result, digest = apply_delta(base, 1, PolicyDigest.of(base), delta)
    assert result.credentials[h].state is CredentialState.LOST
    assert digest.hexdigest() == delta.result_digest
    with pytest.raises(DeltaBaseMismatch, match="applies to version 1, this edge holds version 7"):
        apply_delta(base, 7, PolicyDigest.of(base), delta)
    other = lose(base, list(base.credentials)[1])  # same version number, another content
    with pytest.raises(DeltaBaseMismatch, match="digest"):
        apply_delta(other, 1, PolicyDigest.of(other), delta)


def test_a_result_digest_that_does_not_match_is_refused_and_nothing_is_used(site: Site) -> None:
    base = compile_policy(site, DOORS)
    payload = signed(base, lose(base, next(iter(base.credentials))), result_digest="0" * 64)
    delta = verify_delta(payload, PUB, site_id="demo", device="pi-lobby")
    with pytest.raises(PolicyDeltaError, match="digest mismatch"):
        apply_delta(base, 1, PolicyDigest.of(base), delta)


def tamper_change(payload: bytes) -> bytes:
    env = json.loads(payload)
    env["signed"] = env["signed"].replace('"lost"', '"active"')
    return json.dumps(env).encode()


def tamper_signature(payload: bytes) -> bytes:
    env = json.loads(payload)
    sig = bytearray(base64.b64decode(env["signature"]))
    sig[10] ^= 1
    env["signature"] = base64.b64encode(bytes(sig)).decode()
    return json.dumps(env).encode()


@pytest.mark.parametrize("make, message", [
    (lambda b, n: tamper_change(signed(b, n)), "signature does not match"),
    (lambda b, n: tamper_signature(signed(b, n)), "signature does not match"),
    (lambda b, n: signed(b, n, key=Ed25519PrivateKey.generate()), "signature does not match"),
    (lambda b, n: signed(b, n, device="pi-vault"), "device 'pi-vault'"),
    (lambda b, n: signed(b, n, site_id="elsewhere"), "site 'elsewhere'"),
    (lambda b, n: b'{"schema": "doorkeep.policy/1"}', "schema"),
    (lambda b, n: b"\xff", "not UTF-8 JSON"),
], ids=["tampered-change", "tampered-signature", "foreign-key", "wrong-device", "wrong-site", "a-full-policy",
        "garbage"])
def test_a_bad_delta_is_refused_with_a_clear_error(site: Site, make, message: str) -> None:
    base = compile_policy(site, DOORS)
    with pytest.raises(PolicyDeltaError, match=message):
        verify_delta(make(base, lose(base, next(iter(base.credentials)))), PUB, site_id="demo", device="pi-lobby")


def test_a_revocation_on_a_large_site_is_a_few_kilobytes(site: Site) -> None:
    people = {f"p{i:06d}": Person(f"p{i:06d}", f"p{i:06d}", access_levels=("staff",)) for i in range(20_000)}
    creds = {f"{i:064x}": Credential(f"{i:064x}", f"{i % 10000:04d}", "em4100", f"p{i:06d}") for i in range(20_000)}
    big = compile_policy(dataclasses.replace(site, people={**site.people, **people},
                                             credentials={**site.credentials, **creds}), DOORS)
    payload = signed(big, lose(big, f"{7:064x}"))
    full = sign_policy(big, site_id="demo", device="pi-lobby", version=1, issued_at=NOW, key=KEY)
    assert len(payload) < 2048 < 1_000_000 < len(full)


# ------------------------------------------------------------------ the edge's cache

def full(sub: Site, version: int) -> bytes:
    return sign_policy(sub, site_id="demo", device="pi-lobby", version=version, issued_at=NOW, key=KEY)


def test_the_cache_applies_a_chain_refuses_a_gap_and_restarts_on_the_newest_with_its_floor(tmp_path: Path,
                                                                                          site: Site) -> None:
    v1 = compile_policy(site, DOORS)
    hashes = list(v1.credentials)
    v2, v3 = lose(v1, hashes[0]), lose(lose(v1, hashes[0]), hashes[1])
    cache = PolicyCache(tmp_path / "policy.json", PUB, site_id="demo", device="pi-lobby")
    f1 = full(v1, 1)
    assert cache.offer(f1)
    d12, d23 = signed(v1, v2, base_version=1, version=2), signed(v2, v3, base_version=2, version=3)
    with pytest.raises(DeltaBaseMismatch):  # delta 2 dropped: delta 3 does not apply to version 1
        cache.offer_delta(d23)
    assert cache.version == 1
    assert cache.offer_delta(d12) and cache.offer_delta(d23)
    assert not cache.offer_delta(d23)  # a re-delivery
    assert cache.version == 3 and cache.site.credentials[hashes[1]].state is CredentialState.LOST
    assert not cache.offer(f1)  # the chain's base, retained on the broker: a re-delivery
    with pytest.raises(PolicyError, match="older"):  # version 1 signed again (another nonce): a replay
        cache.offer(full(v1, 1))
    assert cache.version == 3

    again = PolicyCache(tmp_path / "policy.json", PUB, site_id="demo", device="pi-lobby")
    assert again.load() and again.version == 3 and again.floor == 3
    assert again.site == cache.site
    with pytest.raises(PolicyError, match="older"):  # an older full policy signed by the site: a replay
        again.offer(full(v2, 2))

    # A tampered persisted delta is not trusted: the chain stops before it, and the floor refuses the result.
    lines = again.deltas_path.read_bytes().splitlines()
    again.deltas_path.write_bytes(lines[0] + b"\n" + tamper_change(lines[1]) + b"\n")
    third = PolicyCache(tmp_path / "policy.json", PUB, site_id="demo", device="pi-lobby")
    assert not third.load() and third.current is None

    # A full policy at a new version replaces the chain.
    assert third.offer(full(v3, 4)) and third.version == 4 and not third.deltas_path.exists()


# ------------------------------------------------------------------ the publisher

class Wire:
    """What the publisher sent: retained full policies and deltas, per device, in order."""

    def __init__(self) -> None:
        self.fulls: list[bytes] = []
        self.deltas: list[bytes] = []

    def full(self, topic: str, payload: bytes) -> None:
        assert topic == "doorkeep/v1/demo/pi-lobby/policy"
        self.fulls.append(payload)

    def delta(self, topic: str, payload: bytes) -> None:
        assert topic == "doorkeep/v1/demo/pi-lobby/policy/delta"
        self.deltas.append(payload)


def test_a_missed_delta_is_refused_counted_and_the_edge_converges_through_a_full_policy(tmp_path: Path,
                                                                                        site: Site) -> None:
    clock = FakeClock(NOW)
    store = Store(tmp_path / "store")
    pub = PolicyPublisher("demo", {"pi-lobby": DOORS}, KEY, store, clock,
                          deltas=DeltaSettings(behind_grace_s=0.0))
    wire = Wire()
    cache = PolicyCache(tmp_path / "edge" / "policy.json", PUB, site_id="demo", device="pi-lobby")
    pub.publish_all(site, wire.full, publish_delta=wire.delta)
    assert cache.offer(wire.fulls[-1])
    hashes = [h for h, c in site.credentials.items() if c.state is CredentialState.ACTIVE][:3]
    current = site
    for h in hashes:
        clock.advance(1)
        current = lose(current, h)
        pub.publish_all(current, wire.full, publish_delta=wire.delta)
    assert len(wire.fulls) == 1 and len(wire.deltas) == 3 and all(len(d) < 2048 for d in wire.deltas)
    assert cache.offer_delta(wire.deltas[0])
    refused = 0
    for payload in wire.deltas[2:]:  # delta 2 dropped on the way
        try:
            cache.offer_delta(payload)
        except DeltaBaseMismatch:
            refused += 1
    assert refused == 1 and cache.site.credentials[hashes[1]].state is CredentialState.ACTIVE
    # The edge's retained state asks for a full policy; the server answers with one at a new version.
    state = json.dumps({"policy": {"status": "held", "version": cache.version, "wants_full": True}}).encode()
    assert pub.note_state("pi-lobby", state)
    pub.publish_full(current, wire.full, wire.delta)
    assert len(wire.fulls) == 2 and cache.offer(wire.fulls[-1])
    assert cache.version == pub.published["pi-lobby"]
    assert all(cache.site.credentials[h].state is CredentialState.LOST for h in hashes)
    # An edge at the newest version is not behind.
    assert not pub.note_state("pi-lobby", json.dumps({"policy": {"version": cache.version}}).encode())
    store.close()


def test_full_policies_come_every_k_deltas_and_on_a_changed_snapshot_key(tmp_path: Path, site: Site) -> None:
    from doorkeep.envelope import SnapshotKeys

    clock = FakeClock(NOW)
    store = Store(tmp_path / "store")
    pub = PolicyPublisher("demo", {"pi-lobby": DOORS}, KEY, store, clock, deltas=DeltaSettings(max_deltas=2))
    wire = Wire()
    pub.publish_all(site, wire.full, publish_delta=wire.delta)
    current = site
    for h in [h for h, c in site.credentials.items() if c.state is CredentialState.ACTIVE][:3]:
        clock.advance(1)
        current = lose(current, h)
        pub.publish_all(current, wire.full, publish_delta=wire.delta)
    assert (len(wire.fulls), len(wire.deltas)) == (2, 2)  # full, delta, delta, full
    pub.snapshot_key = SnapshotKeys.generate().recipient
    pub.publish_all(current, wire.full, publish_delta=wire.delta)
    assert (len(wire.fulls), len(wire.deltas)) == (3, 2)
    pub.publish_all(current, wire.full, publish_delta=wire.delta)  # nothing changed: nothing sent
    assert (len(wire.fulls), len(wire.deltas)) == (3, 2)
    store.close()
