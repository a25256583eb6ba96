"""Impact preview: 1 million recorded decisions replayed against a proposed site (issue 13's figure, ≤ 10 s).

Run from the project root:

    .venv/bin/python bench/replay.py [--decisions N] [--people N] [--days N] [--seed N] [--json PATH]

The site is the hq site (``firmware-config/sites/hq``: its 8 areas, 14 doors
with two PIN doors, anti-passback, a two-person vault, occupancy limits,
4 schedules and 6 access levels) with a generated population (default 5,000
people, each given one of the hq people's combinations of access levels,
clearance and roles, one card and a PIN each).

The "recorded" badges are made the way the server makes them: a random
person at a random door every few seconds over ``--days`` days, decided live
with ``decide()`` + ``commit()`` on the current site (PINs typed right on the
PIN doors). That recording is then replayed with :func:`doorkeep.replay.replay`
against a proposal that removes the ``office`` access level: the time of
that call is the figure (both replays, the comparison and the report), beside
the time to make the recording, which is not part of it. Reading the events
from the store (``Store.access_events_since``) is not included either.

A benchmark reports; it does not judge. The target is printed for information.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from doorkeep.decision import AccessRequest, DecisionState, commit, decide  # noqa: E402
from doorkeep.model import Credential, Person, Site  # noqa: E402
from doorkeep.config import load_site_dir  # noqa: E402
from doorkeep.replay import RecordedAttempt, replay, summary  # noqa: E402
from server.replay import replay_on_two_cores  # noqa: E402

HQ = ROOT / "firmware-config" / "sites" / "hq"
TARGET_S = 10.0
TARGET_N = 1_000_000
#: The access level the proposal removes.
REMOVED = "office"


def build_site(people: int, rng: random.Random) -> Site:
    """The hq site with ``people`` generated people shaped like hq's own (levels, clearance, roles)."""
    bundle = load_site_dir(HQ)
    shapes = [p for p in bundle.people.values() if p.kind.value != "visitor"]
    folk: dict[str, Person] = {}
    creds: dict[str, Credential] = {}
    for i in range(people):
        shape = rng.choice(shapes)
        pid = f"p{i:06d}"
        folk[pid] = dataclasses.replace(shape, id=pid, name=f"Person {i}", valid_from=None, valid_until=None,
                                        pin_hash=f"pin-{pid}")
        h = f"{i:064x}"
        creds[h] = Credential(h, h[-4:], "em4100", pid)
    return dataclasses.replace(bundle.site, people=folk, credentials=creds)


def record(site: Site, n: int, days: float, rng: random.Random) -> list[RecordedAttempt]:
    """``n`` badges over ``days``, decided live on ``site`` as the server would have recorded them."""
    state = DecisionState()
    doors = list(site.doors.values())
    holders = list(site.credentials.values())
    step = days * 86400.0 / n
    t = 1_767_225_600.0  # 2026-01-01 00:00 UTC
    out = []
    for _ in range(n):
        t += step
        door = rng.choice(doors)
        cred = rng.choice(holders)
        pin = door.pin_required
        req = AccessRequest(door.id, cred.hash, site.people[cred.person].pin_hash if pin else None)
        d = decide(req, site, state, t)
        commit(req, d, site, state, t)
        out.append(RecordedAttempt(t, door.id, cred.hash, d.granted, d.reason.value, d.person, pin=pin))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=TARGET_N, help=f"recorded decisions (default {TARGET_N:,})")
    ap.add_argument("--people", type=int, default=5000, help="generated people (default 5,000)")
    ap.add_argument("--days", type=float, default=30.0, help="the recorded period (default 30 days)")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    site = build_site(args.people, rng)
    levels = dict(site.access_levels)
    del levels[REMOVED]
    proposed = dataclasses.replace(site, access_levels=levels)
    t0 = time.perf_counter()
    records = record(site, args.decisions, args.days, rng)
    recording_s = time.perf_counter() - t0

    gc.collect()
    t0 = time.perf_counter()
    one = replay(records, site, proposed)
    one_s = time.perf_counter() - t0
    gc.collect()
    load = os.getloadavg()[0]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0, cpu0 = time.perf_counter(), time.process_time()
    report = replay_on_two_cores(lambda: records, site, proposed)  # as server/replay.py runs it
    replay_s, parent_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu_s = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    assert report.to_dict() == one.to_dict(), "the two-process replay disagrees with the one-process replay"
    rate = args.decisions / replay_s if replay_s else float("inf")
    projected = TARGET_N / rate

    print(f"impact preview: {args.decisions:,} recorded decisions, hq site ({len(site.doors)} doors), "
          f"{args.people:,} people, {args.days:g} days; proposal: access level {REMOVED!r} removed")
    print(f"  recording (decide + commit, not timed as the figure): {recording_s:.2f} s")
    print(f"  replay in one process (both sites, comparison, report): {one_s:.2f} s")
    print(f"  replay on two cores (server/replay.py): {replay_s:.2f} s = {rate:,.0f} recorded decisions/s; "
          f"1 million in {projected:.1f} s (target <= {TARGET_S:g} s: {'PASS' if projected <= TARGET_S else 'MISS'})")
    print(f"    CPU: {parent_cpu_s:.2f} s comparing process (the current site's replay and the comparison), "
          f"{child_cpu_s:.2f} s proposed site's process; load average {load:.1f} on {os.cpu_count()} cores at the start "
          "(above 0 means other work shared the cores)")
    print(f"  {summary(report)}")
    print(f"  judged {report.judged:,}, not judged {report.not_judged_count:,}, "
          f"replay honesty {report.honesty.agreement:.1%}")
    print(f"  Python {platform.python_version()} on {platform.machine()}")
    if args.json:
        args.json.write_text(json.dumps({
            "decisions": args.decisions, "people": args.people, "days": args.days, "recording_s": recording_s,
            "replay_s": replay_s, "decisions_per_s": rate, "projected_1m_s": projected, "target_s": TARGET_S,
            "parent_cpu_s": parent_cpu_s, "child_cpu_s": child_cpu_s, "load_average": load,
            "grants_to_refusals": report.grants_to_refusals, "refusals_to_grants": report.refusals_to_grants,
            "not_judged": report.not_judged_count, "honesty": report.honesty.agreement,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
