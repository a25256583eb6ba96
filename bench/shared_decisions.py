"""Decisions on the shared state in PostgreSQL (server/shared_decisions.py) by 1, 2 and 4 worker processes.

Issue 20: several server workers with exact global rules. Each worker is a process with its own PostgreSQL
connection, deciding badges as fast as it can (a closed loop: the next badge when the last is decided), for
``--seconds`` per run. The site: ``--buildings`` buildings, each a lobby and ``--floors`` floors (an in and an out
door each, occupancy limits and hard anti-passback on every floor), ``--people`` people with access everywhere;
each badge is a random person at a random door. Printed beside the baseline, one process deciding the same badges
on the in-memory state under one lock (what a single server does today), and the CPU per decision of the workers
(their decision loop only, not building the site and the badges) and of the PostgreSQL processes serving them.

    python bench/shared_decisions.py            # about 40 s
    python bench/shared_decisions.py --check    # also replays the history and checks no rule was broken

PostgreSQL: $DOORKEEP_TEST_POSTGRES (default the machine's, postgresql://postgres@127.0.0.1:5432/postgres); a
database of its own is created and dropped.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import secrets
import statistics
import sys
import time
from datetime import time as dtime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from doorkeep.credentials import card_hash, last4  # noqa: E402
from doorkeep.decision import AccessRequest, DecisionState, commit, decide  # noqa: E402
from doorkeep.model import (  # noqa: E402
    WEEKDAYS,
    AccessEntry,
    AccessLevel,
    AntiPassback,
    Area,
    Credential,
    Door,
    Person,
    Schedule,
    Site,
    TimeWindow,
)
from server.shared_decisions import SharedDecisions, ensure_schema, logged_decision, replay  # noqa: E402

KEY = b"k" * 32
ADMIN_URL = os.environ.get("DOORKEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
T0 = 1_780_000_000.0


def number(i: int) -> str:
    return f"0F{i:08X}"


def build_site(buildings: int, floors: int, people: int) -> Site:
    areas: dict[str, Area] = {"outside": Area("outside", "Outside")}
    doors: dict[str, Door] = {}
    for b in range(buildings):
        lobby = f"b{b}-lobby"
        areas[lobby] = Area(lobby, lobby)
        doors[f"{lobby}-in"] = Door(f"{lobby}-in", lobby, "outside", lobby)
        doors[f"{lobby}-out"] = Door(f"{lobby}-out", lobby, lobby, "outside")
        for f in range(floors):
            fl = f"b{b}-f{f}"
            areas[fl] = Area(fl, fl, anti_passback=AntiPassback.HARD, max_occupancy=max(2, people // (buildings * floors)))
            doors[f"{fl}-in"] = Door(f"{fl}-in", fl, lobby, fl)
            doors[f"{fl}-out"] = Door(f"{fl}-out", fl, fl, lobby)
    always = Schedule("always", "Always", (TimeWindow(frozenset(WEEKDAYS), dtime(0, 0), None),))
    level = AccessLevel("all", "All", tuple(AccessEntry(a, "always") for a in areas))
    persons = {f"u{i}": Person(f"u{i}", f"U{i}", access_levels=("all",)) for i in range(people)}
    creds = {}
    for i in range(people):
        h = card_hash(KEY, "em4100", number(i))
        creds[h] = Credential(h, last4(number(i)), "em4100", f"u{i}")
    return Site("campus", "Campus", "UTC", areas, doors, {"always": always}, {"all": level}, persons, creds)


def requests(site: Site, n: int, seed: int) -> list[AccessRequest]:
    rnd = random.Random(seed)
    doors, cards = sorted(site.doors), sorted(site.credentials)
    return [AccessRequest(rnd.choice(doors), rnd.choice(cards)) for _ in range(n)]


def worker(url: str, args: argparse.Namespace, index: int, start: Any, out: Any) -> None:
    site = build_site(args.buildings, args.floors, args.people)
    backends: list[int] = []

    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(url, autocommit=True)
        backends.append(conn.info.backend_pid)  # the PostgreSQL process serving this worker, for its CPU
        return conn

    shared = SharedDecisions(connect, site.id, lambda: site, worker=f"w{index}", keep_history=args.check)
    todo = requests(site, 200_000, seed=index)
    latencies: list[float] = []
    start.wait()
    cpu0 = time.process_time()  # the loop's CPU only, not building the site and the badges above
    deadline = time.monotonic() + args.seconds
    i = 0
    while time.monotonic() < deadline:
        t = time.perf_counter()
        shared.decide(todo[i % len(todo)], T0 + i * 0.01)
        latencies.append(time.perf_counter() - t)
        i += 1
    backend_cpu = sum(cpu_seconds(pid) for pid in backends)  # read before closing: the backend exits with it
    shared.close()
    out.put((index, latencies, shared.retries, backend_cpu, time.process_time() - cpu0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (this machine's /proc), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(url: str, args: argparse.Namespace, n: int) -> dict[str, float]:
    ctx = mp.get_context("fork")
    start, out = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, args, i, start, out)) for i in range(n)]
    for p in procs:
        p.start()
    start.wait()
    t0 = time.monotonic()
    results = [out.get(timeout=args.seconds + 60) for _ in procs]
    wall = time.monotonic() - t0
    for p in procs:
        p.join()
    lat = sorted(x for r in results for x in r[1])
    count = len(lat)
    return {"workers": n, "decisions": count, "per_s": count / wall, "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(0.99 * (count - 1))] * 1000,
            "pg_cpu_ms_per_decision": sum(r[3] for r in results) / count * 1000,
            "worker_cpu_ms_per_decision": sum(r[4] for r in results) / count * 1000,
            "retries": sum(r[2] for r in results)}


def baseline(args: argparse.Namespace) -> dict[str, float]:
    """One process, in-memory state, the same rules: decide + commit per badge, as ServerBus does under its lock."""
    site = build_site(args.buildings, args.floors, args.people)
    todo = requests(site, 200_000, seed=0)
    state = DecisionState()
    deadline = time.monotonic() + min(args.seconds, 5)
    t0, i, lat = time.monotonic(), 0, []
    while time.monotonic() < deadline:
        t = time.perf_counter()
        req = todo[i % len(todo)]
        decision = decide(req, site, state, T0 + i * 0.01)
        commit(req, decision, site, state, T0 + i * 0.01)
        lat.append(time.perf_counter() - t)
        i += 1
    lat.sort()
    return {"per_s": i / (time.monotonic() - t0), "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--buildings", type=int, default=10)
    parser.add_argument("--floors", type=int, default=10)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--check", action="store_true", help="keep the history, replay it and check the rules")
    args = parser.parse_args()

    name = f"doorkeep_bench_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            ensure_schema(conn)
        base = baseline(args)
        doors = 2 * args.buildings * (args.floors + 1)
        print(f"shared decisions on PostgreSQL: {args.people:,} people, {doors} doors, {args.seconds:g} s per run, "
              f"closed loop (each worker decides its next badge when the last is done), {os.cpu_count()} cores")
        print(f"{'workers':>8} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/decision: worker':>24} "
              f"{'database':>9} {'retries':>8}")
        print(f"{'baseline':>8} {base['per_s']:>12,.0f} {base['p50_ms']:>8.3f} {base['p99_ms']:>8.3f} {'-':>24} {'-':>9} "
              f"{'-':>8}   (one process, in-memory state, no database)")
        for n in args.workers:
            with psycopg.connect(url, autocommit=True) as conn:  # each run starts with nobody anywhere
                for table in ("presence", "dk_pending", "dk_pin_failures", "dk_first_in", "dk_decision_log"):
                    conn.execute(f"TRUNCATE {table}")
            r = run(url, args, n)
            print(f"{n:>8} {r['per_s']:>12,.0f} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} "
                  f"{r['worker_cpu_ms_per_decision']:>24.3f} {r['pg_cpu_ms_per_decision']:>9.3f} {r['retries']:>8.0f}")
            if args.check:
                site = build_site(args.buildings, args.floors, args.people)
                checker = SharedDecisions(lambda: psycopg.connect(url, autocommit=True), site.id, lambda: site)
                history = checker.history()
                same = [logged_decision(row) for row in history] == replay(site, history)
                checker.close()
                print(f"{'':>8} history of {len(history):,} decisions replayed as one server: "
                      f"{'identical' if same else 'DIFFERENT'}")
                if not same:
                    return 1
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
