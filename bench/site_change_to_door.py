"""Change to door (issue 13): from a site change committed over the desk API to every affected edge holding
the new signed policy, 100 edges.

A generated site (the demo site plus 100 doors outside -> lobby, one per simulated edge, bench/gensite.py)
runs on a private Mosquitto with the real server (``bootstrap``, its site revisions and policy publisher)
and the desk app under uvicorn. Each simulated edge verifies every signed policy it receives
(``verify_policy``) and decides a staff card at its door. A round commits one site change with
``POST /api/v1/site/changes`` — the lobby taken out of the staff access level, then put back — and times,
per edge, the moment it holds a policy that decides the card the new way. Printed: p50 / p99 / max of
those times beside the target (p99 <= 2 s, the issue's "within 2 s") and beside figure 5's revocation path.

    .venv/bin/python bench/site_change_to_door.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from doorkeep.contract import Topics  # noqa: E402
from doorkeep.credentials import card_hash  # noqa: E402
from doorkeep.decision import AccessRequest, DecisionState, decide  # noqa: E402
from doorkeep.policy import PolicyError, verify_policy  # noqa: E402
from run_all import pct, serve_generated_site  # noqa: E402
from simulators.brokers import MosquittoBroker, subscribed_client  # noqa: E402
from simulators.wait import wait_until  # noqa: E402

N_EDGES = 100
TARGET_S = 2.0
WITHOUT_LOBBY = [{"area": "outside", "schedule": "always"}]
WITH_LOBBY = [{"area": "lobby", "schedule": "always"}, {"area": "outside", "schedule": "always"}]


def main(argv: list[str] | None = None) -> int:
    from gensite import STAFF_CARDS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="site changes to time (default 4)")
    args = ap.parse_args(argv)
    broker = MosquittoBroker().start()
    tmp = Path(tempfile.mkdtemp(prefix="doorkeep-bench-change-"))
    bundle, key, public, server, web, port, token = serve_generated_site(tmp, N_EDGES, broker.url)
    topics = Topics(bundle.site.id)
    devices = {dev.id: next(iter(dev.doors)) for dev in bundle.devices.values() if dev.id.startswith("gen-")}
    card = card_hash(key, "em4100", STAFF_CARDS[0])
    lock = threading.Lock()
    versions: dict[str, int] = {}
    granted: dict[str, bool] = {}
    changed_at: dict[str, float] = {}
    want = {"granted": True}

    def on_policy(c: Any, u: Any, msg: Any) -> None:
        dev = msg.topic.split("/")[-2]
        if dev not in devices or not msg.payload:
            return
        try:
            pol = verify_policy(msg.payload, public, site_id=bundle.site.id, device=dev, min_version=versions.get(dev))
        except PolicyError:
            return
        now = time.perf_counter()
        ok = decide(AccessRequest(devices[dev], card), pol.site, DecisionState(), time.time()).granted
        with lock:
            versions[dev] = pol.version
            granted[dev] = ok
            if ok == want["granted"]:
                changed_at.setdefault(dev, now)

    edge = subscribed_client("127.0.0.1", broker.port, f"bench-change-{secrets.token_hex(3)}",
                             f"{topics.base}/+/policy", on_policy, keepalive=60)
    samples: list[float] = []
    incomplete = 0
    try:
        if not wait_until(lambda: web.started and len(versions) == len(devices), 60):
            raise RuntimeError(f"only {len(versions)} of {len(devices)} edges got a policy")
        assert server.siteadmin is not None
        for i in range(args.rounds):
            entries = WITHOUT_LOBBY if i % 2 == 0 else WITH_LOBBY
            with lock:
                want["granted"] = i % 2 == 1
                changed_at.clear()
            base = server.siteadmin.current().number  # type: ignore[union-attr]
            body = json.dumps({"base": base, "edits": {"access_levels.staff.entries": entries}}).encode()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            t0 = time.perf_counter()
            conn.request("POST", "/api/v1/site/changes", body=body,
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status != 200:
                raise RuntimeError(f"POST /api/v1/site/changes answered {resp.status}")
            if not wait_until(lambda: len(changed_at) == len(devices), 30):
                incomplete += 1
            with lock:
                samples += [t - t0 for t in changed_at.values()]
    finally:
        edge.disconnect()
        edge.loop_stop()
        web.should_exit = True
        server.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    samples.sort()
    p50, p99, mx = pct(samples, 50), pct(samples, 99), samples[-1]
    ok = p99 <= TARGET_S and not incomplete
    print(f"change to door: {args.rounds} site changes over the desk API (an access level edited), "
          f"{N_EDGES} edges verifying every signed policy")
    print(f"  commit to the edge holding the new policy: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
          f"max {mx * 1000:.0f} ms over {len(samples)} edge updates ({incomplete} rounds incomplete within 30 s)")
    print(f"  target p99 <= {TARGET_S:g} s: {'met' if ok else 'MISSED'}; "
          "baseline: figure 5 (a lost card to every door) in docs/performance.md")
    return 0 if samples else 1


if __name__ == "__main__":
    sys.exit(main())
