"""Policy deltas (issue 20): bytes on the wire and signing time per revocation, delta vs full policy, and a
revocation fanned out as signed deltas to many simulated edges on a real Mosquitto.

Part 1, on the synthetic 110,000-person site of bench/policy.py (250,000 cards; the lobby device's policy
holds everyone): one card reported lost. Printed: the full policy's size and the time to write and sign it
(``policy_text`` + ``sign_policy``, what every revocation cost before deltas) beside the delta's size and the
time to compute and sign it (``diff_policy`` + ``PolicyDigest.updated`` + ``sign_delta``, the publisher's
delta path after ``compile_policy``), and the edge's cost to verify and apply it to the 110,000-person
policy it holds (``verify_delta`` + ``apply_delta``, digest check included).

Part 2, revocation to every door: ``--edges`` simulated edges (default 1,000), light paho clients (``--clients``
connections, each subscribed to its share of the edges' ``policy/delta`` topics, QoS 1) on a private
Mosquitto. Each simulated edge holds its own policy state (version, digest, site subset of a small door:
``--edge-people`` people) and, for each delta, verifies the Ed25519 signature, checks base version and digest,
applies the changes, checks the result's digest and decides the lost card; it counts "refused" when the
decision refuses it. The "server" signs one delta per edge (its own device id, base and digest) and publishes
it; the clock starts before the first signature. Not simulated: the server's ``compile_policy`` of 1,000
devices (each a scan of the whole site), the desk API, edges' disks.

    .venv/bin/python bench/policy_delta.py [--people 110000] [--edges 1000] [--clients 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from doorkeep.decision import AccessRequest, DecisionState, decide  # noqa: E402
from doorkeep.model import CredentialState, Site  # noqa: E402
from doorkeep.policy import compile_policy, gc_paused, policy_text, sign_policy, verify_policy  # noqa: E402
from doorkeep.policy_delta import (PolicyDeltaError, PolicyDigest, apply_delta, diff_policy,  # noqa: E402
                                   sign_delta, verify_delta)
from policy import DOOR, SITE_ID, build_site  # noqa: E402
from run_all import pct  # noqa: E402
from simulators.brokers import MosquittoBroker, subscribed_client  # noqa: E402

TARGET_BYTES = 4096   # "a few kilobytes whatever the site's size"
TARGET_P99_S = 1.0    # revocation to every door, 1,000 edges


def lose(site: Site, h: str) -> Site:
    return dataclasses.replace(site, credentials={**site.credentials,
                                                  h: dataclasses.replace(site.credentials[h], state=CredentialState.LOST)})


def part_sizes(n_people: int, key: Ed25519PrivateKey) -> None:
    site = build_site(n_people, n_people * 25 // 11)
    with gc_paused():
        sub = compile_policy(site, [DOOR])
    card = next(h for h, c in sub.credentials.items() if c.state is CredentialState.ACTIVE)
    new = lose(sub, card)
    with gc_paused():
        t0 = time.perf_counter()
        full = sign_policy(new, site_id=SITE_ID, device="pi-lobby", version=2, issued_at=time.time(), key=key,
                           text=policy_text(new))
        full_s = time.perf_counter() - t0
        digest = PolicyDigest.of(sub)  # held by the publisher since the last full policy
        t0 = time.perf_counter()
        changes = diff_policy(sub, new)
        result = digest.updated(sub, changes)
        delta = sign_delta(changes, site_id=SITE_ID, device="pi-lobby", base_version=1, base_digest=digest.hexdigest(),
                           version=2, result_digest=result.hexdigest(), issued_at=time.time(), key=key)
        delta_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        verified = verify_delta(delta, key.public_key(), site_id=SITE_ID, device="pi-lobby")
        applied, _ = apply_delta(sub, 1, digest, verified)
        apply_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        verify_policy(full, key.public_key(), site_id=SITE_ID, device="pi-lobby")
        verify_full_s = time.perf_counter() - t0
    assert applied.credentials[card].state is CredentialState.LOST
    print(f"part 1: one card lost on a {len(site.people):,}-person site ({len(site.credentials):,} cards), lobby "
          f"device policy ({len(sub.people):,} people, {len(sub.credentials):,} cards)")
    print(f"  bytes on the wire per revocation: delta {len(delta):,} B vs full policy {len(full):,} B "
          f"({len(full) / len(delta):,.0f}x); target <= {TARGET_BYTES:,} B: "
          f"{'met' if len(delta) <= TARGET_BYTES else 'MISSED'}")
    print(f"  server: compute + sign the delta {delta_s * 1000:.1f} ms vs write + sign the full policy "
          f"{full_s * 1000:.0f} ms (compile_policy, the same for both, not included)")
    print(f"  edge: verify + apply the delta (digest checked) {apply_s * 1000:.1f} ms vs verify the full policy "
          f"{verify_full_s * 1000:.0f} ms")


class Edges:
    """Simulated edges: each holds (version, site, digest) and applies the deltas addressed to it."""

    def __init__(self, names: list[str], base: Site, digest: PolicyDigest, public: Any, card_hash: dict[str, str]) -> None:
        self.public = public
        self.state = {n: (1, base, digest) for n in names}
        self.card = card_hash
        self.refused_at: dict[str, float] = {}
        self.refused_deltas = 0
        self.lock = threading.Lock()

    def on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        dev = msg.topic.split("/")[3]
        version, site, digest = self.state[dev]
        try:
            delta = verify_delta(msg.payload, self.public, site_id=SITE_ID, device=dev)
            site, digest = apply_delta(site, version, digest, delta)
        except PolicyDeltaError:
            with self.lock:
                self.refused_deltas += 1
            return
        self.state[dev] = (delta.version, site, digest)
        if not decide(AccessRequest(DOOR, self.card["hash"]), site, DecisionState(), time.time()).granted:
            now = time.perf_counter()
            with self.lock:
                self.refused_at.setdefault(dev, now)


def part_fanout(n_edges: int, n_clients: int, edge_people: int, rounds: int, key: Ed25519PrivateKey) -> None:
    site = build_site(edge_people, edge_people * 2)
    base = compile_policy(site, [DOOR])
    cards = [h for h, c in base.credentials.items() if c.state is CredentialState.ACTIVE
             and "staff" in base.people[c.person].access_levels][:rounds]
    digest = PolicyDigest.of(base)
    names = [f"e{i:04d}" for i in range(n_edges)]
    watch = {"hash": ""}
    edges = Edges(names, base, digest, key.public_key(), watch)
    broker = MosquittoBroker().start()
    clients = []
    samples: list[float] = []
    incomplete = 0
    try:
        for c in range(n_clients):
            mine = names[c::n_clients]
            client = subscribed_client("127.0.0.1", broker.port, f"bench-delta-edges-{c}",
                                       f"doorkeep/v1/{SITE_ID}/{mine[0]}/policy/delta", edges.on_message, keepalive=60)
            result, _ = client.subscribe([(f"doorkeep/v1/{SITE_ID}/{n}/policy/delta", 1) for n in mine[1:]])
            clients.append(client)
        server = subscribed_client("127.0.0.1", broker.port, "bench-delta-server", f"doorkeep/v1/{SITE_ID}/none",
                                   lambda *a: None, keepalive=60)
        time.sleep(0.5)  # bench only: let the last SUBACKs land (no condition to wait on for a bulk subscribe)
        current, current_digest, version = base, digest, 1
        for r, card in enumerate(cards):
            new = lose(current, card)
            with edges.lock:
                edges.refused_at.clear()
            watch["hash"] = card
            t0 = time.perf_counter()
            changes = diff_policy(current, new)
            result = current_digest.updated(current, changes)
            for name in names:  # one signed delta per device (its own id), as the publisher does
                payload = sign_delta(changes, site_id=SITE_ID, device=name, base_version=version,
                                     base_digest=current_digest.hexdigest(), version=version + 1,
                                     result_digest=result.hexdigest(), issued_at=time.time(), key=key)
                server.publish(f"doorkeep/v1/{SITE_ID}/{name}/policy/delta", payload, qos=1)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len(edges.refused_at) < n_edges:
                time.sleep(0.01)
            with edges.lock:
                per = [t - t0 for t in edges.refused_at.values()]
            if len(per) < n_edges:
                incomplete += 1
            samples += per
            current, current_digest, version = new, result, version + 1
            print(f"  round {r + 1}: {len(per)} of {n_edges} edges refused the card, slowest {max(per) * 1000:.0f} ms")
        server.disconnect()
    finally:
        for client in clients:
            client.disconnect()
            client.loop_stop()
        broker.stop()
    samples.sort()
    p50, p99, mx = pct(samples, 50), pct(samples, 99), samples[-1]
    print(f"part 2: revocation to every door, {n_edges} simulated edges over {n_clients} paho connections, "
          f"each holding a {len(base.people)}-person policy and verifying + applying every delta")
    print(f"  lost to refused: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {mx * 1000:.0f} ms over "
          f"{len(samples)} edge-refusals ({incomplete} rounds incomplete within 30 s, {edges.refused_deltas} deltas "
          f"refused); target p99 <= {TARGET_P99_S:g} s: {'met' if p99 <= TARGET_P99_S and not incomplete else 'MISSED'}")
    print("  baseline: figure 5 in docs/performance.md (full policies, 100 edges, demo-size site)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, default=110_000)
    ap.add_argument("--edges", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=20, help="paho connections the simulated edges share")
    ap.add_argument("--edge-people", type=int, default=200, help="people in each simulated edge's policy")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    key = Ed25519PrivateKey.generate()
    part_sizes(args.people, key)
    part_fanout(args.edges, args.clients, args.edge_people, args.rounds, key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
