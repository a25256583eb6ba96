"""Visitor passes at the edge with no server (the broker refuses): the pass checked before any request (form,
signature against the signed policy's pass keys, its own window by the edge's clock), then decided like a card
on the cached policy. Real parts: the agent's threads, mock pins, a signed policy; the pass handed to the loop
as the QR scanner hands it (``CardRead(text, "qr-pass")``) and as a serial QR scanner's ASCII line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import FakeClock
from doorkeep.contract import EventMsg
from doorkeep.credentials import card_hash
from doorkeep.model import Credential, Person, PersonKind
from doorkeep.policy import compile_policy, sign_policy
from doorkeep.visitor_pass import FORMAT, PassClaims, credential_number, key_id, public_key_text, sign_pass
from edge.framing import CardRead, encode_ascii, parse_ascii
from tests.conftest import wait_until
from tests.unit.test_edge_without_site import (  # noqa: F401  (fixtures)
    KEY,
    Edge,
    device_file,
    edges,
    policy_site,
    signing_key,
    start,
)

PASS_KEY = Ed25519PrivateKey.generate()


def show(edge: Edge, text: str, fmt: str = FORMAT) -> EventMsg:
    before = len(edge.access())
    agent = edge.agent
    agent._post(agent._card, "lobby_in", CardRead(text, fmt), agent.clock.monotonic())
    assert wait_until(lambda: len(edge.access()) > before, 5), "the pass was never decided"
    assert agent.sync(5)
    return edge.access()[-1]


def test_an_offline_edge_checks_a_pass_itself_and_refuses_it_after_its_window(
        device_file: Path, signing_key: Ed25519PrivateKey, edges: list[Edge]) -> None:  # noqa: F811
    clock = FakeClock(wall=1_796_029_200.0)
    edge = start(edges, device_file, signing_key, clock)
    now = int(clock.wall())
    # The visit runs all day in the policy; this pass was issued for its first hour only.
    h = card_hash(KEY, FORMAT, credential_number("v-1", 1))
    site = policy_site(0.5)
    visitor = Person("v-1", "v-1", kind=PersonKind.VISITOR, valid_from=now - 60, valid_until=now + 8 * 3600,
                     host="alice", allowed_areas=("lobby",), escort_required=False)
    site = dataclasses.replace(site, people={**site.people, "v-1": visitor},
                               credentials={**site.credentials, h: Credential(h, "v-1"[-4:], FORMAT, "v-1")})
    kid = key_id(PASS_KEY.public_key())
    edge.agent._on_policy(sign_policy(compile_policy(site, ["lobby_in"]), site_id="demo", device="pi-lobby",
                                      version=7, issued_at=clock.wall(), key=signing_key,
                                      pass_keys={kid: public_key_text(PASS_KEY.public_key())}))
    assert wait_until(lambda: edge.agent.policy is not None and edge.agent.policy.version == 7, 5)
    assert edge.agent.sync(5)  # the loop took the policy's door times (unlock 0.5 s) too
    token = sign_pass(PassClaims("v-1", now - 60, now + 3600, 1), PASS_KEY)

    ev = show(edge, token)
    assert (ev.decision, ev.reason, ev.person, ev.credential_hash) == ("granted", "granted_offline", "v-1", h)
    assert edge.door.wait_relay(True, 5)

    # The same pass typed by a serial QR scanner (an ASCII reader's line) is the same credential.
    clock.advance(2)
    edge.agent.poke()
    assert edge.door.wait_relay(False, 5)
    (line,), _ = parse_ascii(encode_ascii(token))
    assert isinstance(line, CardRead) and line.format == FORMAT, line
    ev = show(edge, line.number, line.format)
    assert (ev.decision, ev.credential_hash) == ("granted", h)

    # Forged (another key), or damaged: refused here, with its own reason, the relay never moves.
    clock.advance(2)
    edge.agent.poke()
    assert edge.door.wait_relay(False, 5)
    marks = len(edge.door.relay_history)
    forged = sign_pass(PassClaims("v-1", now - 60, now + 3600, 1), Ed25519PrivateKey.generate())
    i = len(token) - 10  # a character of the signature, changed to another (a token may end in "AAA" itself)
    damaged = token[:i] + ("B" if token[i] != "B" else "C") + token[i + 1:]
    assert (show(edge, forged).reason, show(edge, damaged).reason) == ("pass_invalid", "pass_invalid")
    assert edge.agent.counters["passes_invalid"] == 2

    # An hour later the visit is still on in the cached policy, but the pass's own window has ended.
    clock.advance(3600)
    ev = show(edge, token)
    assert (ev.decision, ev.reason, ev.decided_by) == ("denied", "expired", "edge_offline")
    assert edge.agent.counters["passes_expired"] == 1
    assert not any(on for _, on in edge.door.relay_history[marks:]), "no refused pass energised the relay"
    # Any other QR code in view is not a badge at all.
    before = len(edge.access())
    edge.agent._post(edge.agent._card, "lobby_in", CardRead("https://example.com/menu", FORMAT), 0.0)
    assert edge.agent.sync(5) and len(edge.access()) == before and edge.agent.counters["qr_not_a_pass"] == 1
