"""Visitor passes on the server (server/passes.py): issuing for a visit's window, the pass as the visitor's
credential decided by the same rules as a card, revocation (check-out, cancellation, lost pass), the key file,
the signed policy carrying the pass keys, and the edge refusing a pass after its window with no server.

Real parts: a ``Server`` bootstrapped on the demo site with a real SQLite store (bus not started), real
decisions through ``Directory.decide``, a fake clock; an ``EdgeAgent`` on mock pins with its cached policy.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.credentials import card_hash
from doorkeep.decision import AccessRequest, Reason
from doorkeep.envelope import SnapshotKeys
from doorkeep.explain import explain
from doorkeep.policy import compile_policy, generate_signing_key, sign_policy, verify_policy
from doorkeep.visitor_pass import FORMAT, key_id, read_pass
from server.app import Server, bootstrap
from server.directory import Visitor
from server.passes import PassError, PassesDisabled, PassKeys, load_pass_keys

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
MONDAY_9 = 1_796_029_200.0  # 2026-11-30 09:00 Europe/London
PASS_KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=MONDAY_9)


def make_server(tmp_path: Path, clock: FakeClock, keys: PassKeys | None) -> Server:
    return bootstrap(load_site_dir(DEMO), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                     key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                     snapshot_keys=SnapshotKeys.generate(), clock=clock, pass_keys=keys)


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = make_server(tmp_path, clock, PassKeys(PASS_KEY))
    yield srv
    srv.store.close()


def register(server: Server, vid: str = "v-1", *, areas: tuple[str, ...] = ("lobby",), escort: bool = False,
             hours: float = 4.0) -> None:
    now = server.directory.clock.wall()
    server.directory.register_visitor(Visitor(vid, "Grace Hopper", "alice", now, now + hours * 3600, areas,
                                              escort_required=escort))


def decide(server: Server, token: str, door: str = "lobby_in") -> Reason:
    """What the server decides for a pass shown at ``door``: hashed as the edge hashes it."""
    number = read_pass(token, {key_id(PASS_KEY.public_key()): PASS_KEY.public_key()}).credential_number
    return server.directory.decide(AccessRequest(door, card_hash(server.directory.key, FORMAT, number))).reason


def test_a_pass_covers_the_visit_window_names_no_one_and_opens_only_once_checked_in(server: Server) -> None:
    register(server)
    issued = server.passes.issue_pass("v-1", actor="desk")
    v = server.directory.visitor("v-1")
    assert issued.claims.not_before <= v.valid_from and issued.claims.not_after >= v.valid_until
    assert issued.claims.not_after - v.valid_until < 1 and issued.claims.serial == 1
    assert "Grace" not in issued.token and "alice" not in issued.token
    cred = server.site.credentials[issued.credential_hash]
    assert (cred.person, cred.format) == ("v-1", "qr-pass")
    assert decide(server, issued.token) is Reason.CREDENTIAL_INACTIVE  # registered, not checked in yet
    server.directory.check_in("v-1")
    assert decide(server, issued.token) is Reason.GRANTED
    assert decide(server, issued.token, "lab") is Reason.NO_ACCESS  # the visit's areas, as for a badge


def test_check_out_cancellation_and_a_lost_pass_each_stop_it(server: Server, clock: FakeClock) -> None:
    for vid in ("v-out", "v-cancel", "v-lost"):
        register(server, vid)
        server.directory.check_in(vid)
    tokens = {vid: server.passes.issue_pass(vid).token for vid in ("v-out", "v-cancel", "v-lost")}
    assert all(decide(server, t) is Reason.GRANTED for t in tokens.values())
    server.directory.check_out("v-out", revoke_badge=True)
    assert server.passes.revoke_pass("v-cancel", "cancelled", actor="desk") == 1
    assert server.passes.revoke_pass("v-lost", "lost", actor="desk") == 1
    assert {vid: decide(server, t) for vid, t in tokens.items()} == {
        "v-out": Reason.CREDENTIAL_INACTIVE, "v-cancel": Reason.CREDENTIAL_INACTIVE, "v-lost": Reason.CREDENTIAL_INACTIVE}
    # A lost pass is replaced by a new one (the next serial) that works while the old one stays refused.
    new = server.passes.issue_pass("v-lost", actor="desk")
    assert new.claims.serial == 2
    assert decide(server, new.token) is Reason.GRANTED and decide(server, tokens["v-lost"]) is Reason.CREDENTIAL_INACTIVE
    actions = {r["action"] for r in server.store.audit_records(limit=100)}
    assert {"visitor.pass_issue", "visitor.pass_cancelled", "visitor.pass_lost"} <= actions


def test_the_desk_explains_a_refused_pass_as_a_pass_not_as_a_lost_card(server: Server) -> None:
    register(server)
    token = server.passes.issue_pass("v-1").token
    number = read_pass(token, {key_id(PASS_KEY.public_key()): PASS_KEY.public_key()}).credential_number
    req = AccessRequest("lobby_in", card_hash(server.directory.key, FORMAT, number))
    decision = server.directory.decide(req)
    ex = explain(req, decision, server.site, when=MONDAY_9)
    assert ex.rule == "card" and "visitor pass" in ex.summary and "not checked in" in ex.summary
    assert "reported lost" not in ex.summary.split(":")[0]


def test_re_issuing_replaces_the_earlier_pass_and_the_kiosk_reads_only_the_current_one(server: Server) -> None:
    register(server)
    server.directory.check_in("v-1")
    first = server.passes.issue_pass("v-1").token
    second = server.passes.issue_pass("v-1").token
    assert decide(server, first) is Reason.CREDENTIAL_INACTIVE and decide(server, second) is Reason.GRANTED
    assert [r["state"] for r in server.passes.rows("v-1")] == ["replaced", "active"]
    assert server.passes.read(second).claims.visit == "v-1"
    with pytest.raises(PassError, match="replaced"):
        server.passes.read(first)
    # one character of the signature changed (to another: a token may already end in "AA", base32's padding bits)
    i = len(second) - 10
    damaged = second[:i] + ("B" if second[i] != "B" else "C") + second[i + 1:]
    with pytest.raises(PassError, match="not a visitor pass of this site"):
        server.passes.read(damaged)


def test_the_escort_rule_applies_to_a_pass_as_to_a_badge(server: Server) -> None:
    register(server, areas=("lobby", "floor7"), escort=True)
    server.directory.check_in("v-1")
    token = server.passes.issue_pass("v-1").token
    assert decide(server, token, "lab") is Reason.ESCORT_REQUIRED  # floor 7 is restricted: an escort must come
    alice = server.directory.decide(AccessRequest("lab", card_hash(server.directory.key, "em4100", "0F00A1B2C3")))
    assert alice.reason is Reason.GRANTED_ESCORTED and alice.companions == ("v-1",)


def test_no_pass_for_an_ended_visit_or_an_unknown_one(server: Server, clock: FakeClock) -> None:
    register(server, hours=1)
    with pytest.raises(PassError, match="no visitor"):
        server.passes.issue_pass("v-nobody")
    server.directory.check_in("v-1")
    server.directory.check_out("v-1")
    with pytest.raises(PassError, match="checked out"):
        server.passes.issue_pass("v-1")
    register(server, "v-2", hours=1)
    clock.advance(2 * 3600)
    with pytest.raises(PassError, match="window has ended"):
        server.passes.issue_pass("v-2")
    with pytest.raises(PassError, match="revoked as"):
        server.passes.revoke_pass("v-2", "stolen")


def test_without_a_pass_key_passes_are_off_and_the_error_names_the_fix(tmp_path: Path, clock: FakeClock) -> None:
    srv = make_server(tmp_path, clock, None)
    try:
        register(srv)
        with pytest.raises(PassesDisabled, match="init-signing .*pass-signing.key"):
            srv.passes.issue_pass("v-1")
        assert srv.passes.policy_keys() is None and srv.bus.publisher.pass_keys is None
    finally:
        srv.store.close()


def test_the_pass_key_file_is_loaded_like_the_policy_key_and_refused_when_open(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert load_pass_keys(keys) is None
    generate_signing_key(keys / "pass-signing.key")
    loaded = load_pass_keys(keys)
    assert loaded is not None and list(loaded.policy_keys()) == [loaded.key_id]
    generate_signing_key(tmp_path / "old" / "k.key")
    (keys / "pass-signing.retired-2026.pub").write_bytes((tmp_path / "old" / "k.pub").read_bytes())
    assert len(load_pass_keys(keys).policy_keys()) == 2  # type: ignore[union-attr]
    (keys / "pass-signing.key").chmod(0o644)
    with pytest.raises(PassError, match="chmod 600"):
        load_pass_keys(keys)


def test_the_edges_policy_carries_the_pass_key(server: Server) -> None:
    register(server)
    server.directory.check_in("v-1")
    publisher = server.bus.publisher
    assert publisher.pass_keys == {key_id(PASS_KEY.public_key()): server.passes.policy_keys()[key_id(PASS_KEY.public_key())]}
    token = server.passes.issue_pass("v-1").token
    signer = Ed25519PrivateKey.generate()
    payload = sign_policy(compile_policy(server.site, ["lobby_in"]), site_id="demo", device="pi-lobby", version=1,
                          issued_at=MONDAY_9, key=signer, pass_keys=publisher.pass_keys)
    held = verify_policy(payload, signer.public_key(), site_id="demo", device="pi-lobby")
    assert held.pass_keys is not None and read_pass(token, held.pass_keys).claims.visit == "v-1"
    number = read_pass(token, held.pass_keys).credential_number
    cred = held.site.credentials[card_hash(server.directory.key, FORMAT, number)]
    assert cred.person == "v-1" and cred.state.value == "active"  # the edge decides it offline like a badge
