"""Failover time of the server's workers after kill -9 (issue 20; docs/scale.md "Several server workers").

Run from the project root:

    .venv/bin/python bench/failover.py [--runs 20] [--rate 20]    # about 1.5 minutes on 2 cores

The fault suite's stack (simulators/faults.py ``FaultStack``): a TLS Mosquitto, the server as two
``doorkeep server --worker`` processes ``a`` and ``b`` on a fresh PostgreSQL database, the real ``doorkeep edge``
for pi-lobby with reader simulators, and a load of ``--rate`` badges/s. Then, ``--runs`` times: kill -9 the worker
that leads, wait for the survivor to take over, start the killed one again (it stands by) and wait until it answers
requests; then the same with the standby. Each kill is taken from a steady state: both workers answering, the
server online, every badge older than CATCH_UP_S stored; then after a random pause of up to JITTER_S, so that the
kill falls anywhere in the workers' election loop (a standby tries for the lead every 0.2 s; without the pause each
leader kill came at the same point of the survivor's loop, started a second before, and "leader named" was
0.18-0.20 s every time). Per kill:

- **resume**: the kill to the ``received_at`` of the first access event decided by the server (``decided_by =
  'server'``) that the store took in after it: tests/faults/test_worker_faults.py's figure, the issue's target (the
  server decides again within 2 s). Events are ingested by the leader only, so after a leader kill this includes the
  takeover. Exact (the store's own clock), whatever the polling;
- **door**: the kill to the first badge made after it that the server answered (its badge time: resolution one
  badge interval). "by edge" counts the unknown-card badges in between that the edge decided itself (a request
  in flight to the killed worker times out after the door's 1 s; while the server's availability says offline the
  edge does not ask);
- **leader named**: the kill to ``FaultStack.leader()`` naming the survivor (the election lock in PostgreSQL),
  polled every POLL_S; each poll opens a session, so the figure is late by up to one poll and one connection;
- **online again**: the kill to the ``online`` after the killed leader's last will (``offline``), as the stack's
  Watcher receives them (exact arrival times). A standby's kill must not change the server's availability: any
  other message counts as a blip.

At the end the load stops, every badge is given its time to be stored, and ``FaultStack.verify()`` must find
nothing lost, duplicated, unexpected or wrongly decided (as tests/faults/test_faults.py ``assert_clean``); lost and
duplicated events are attributed to the kill before them. Exit status 1 if that fails or a kill never resumed,
0 otherwise (a missed target is printed, not an error).

The load (LoadGenerator's mix: unknown cards at lobby_out, granted and unknown alternating at lobby_in) is spaced
so that a granted card is badged again only REPEAT_SPACING_S later: the readers drop the same card within 1 s
(``repeat_ignore_s``), and the stock generator repeats each of its three granted cards every 12 badges (0.6 s at
20/s). PostgreSQL: $DOORKEEP_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/postgres); a database of
its own is created and dropped.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import psycopg  # noqa: E402

from run_all import pct  # noqa: E402
from server.workers import workers_status  # noqa: E402
from simulators.faults import (DENY_DOOR, DEVICE, GRANT_DOOR, GRANTED, SITE, FaultStack,  # noqa: E402
                               LoadGenerator, Verdict, Watcher)
from simulators.reader import ReaderSimulator  # noqa: E402
from simulators.site import mosquitto_installed  # noqa: E402
from simulators.wait import wait_until  # noqa: E402

ADMIN_URL = os.environ.get("DOORKEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
WORKERS = ("a", "b")
#: The issue's bound (tests/faults/test_worker_faults.py RESUME_S): server decisions again within this of a kill.
TARGET_RESUME_S = 2.0
#: A granted card comes back no sooner than this (the readers' repeat filter is 1 s; the rest is jitter).
REPEAT_SPACING_S = 1.5
#: Before a kill, every badge older than this is stored (the door's 1 s decision timeout, and ingest).
CATCH_UP_S = 2.0
#: How often the figures are polled while a failover runs.
POLL_S = 0.02
#: A kill waits a random part of this after the steady state (several periods of the workers' 0.2 s and 0.5 s loops).
JITTER_S = 1.0
#: Load average samples are taken this often.
LOADAVG_EVERY_S = 5.0
KINDS = ("leader", "standby")


class SpacedLoad(LoadGenerator):
    """LoadGenerator's mix at any rate: on lobby_in's turn a granted card when the next one in the cycle was last
    badged REPEAT_SPACING_S ago or more, an unknown card otherwise (at 5/s this is the stock sequence)."""

    def __init__(self, readers: dict[str, ReaderSimulator], rate: float) -> None:
        super().__init__(readers, rate)
        self._cards = list(GRANTED)
        self._card_index = 0
        self._last_badged: dict[str, float] = {}

    def _next(self) -> None:
        turn = next(self._turn)
        if turn % 2:
            self.badge(DENY_DOOR)
            return
        card = self._cards[self._card_index]
        now = time.monotonic()
        if (turn // 2) % 2 == 0 and now - self._last_badged.get(card, -REPEAT_SPACING_S) >= REPEAT_SPACING_S:
            self._card_index = (self._card_index + 1) % len(self._cards)
            self._last_badged[card] = now
            self.badge(GRANT_DOOR, card)
        else:
            self.badge(GRANT_DOOR)


class AvailabilityLog:
    """The server's availability messages with the time the stack's Watcher received each (it keeps the values
    only): its paho callback is chained, so the Watcher sees everything as before."""

    def __init__(self, watcher: Watcher) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[float, str]] = []
        inner = watcher.client.on_message

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            if msg.topic.endswith("/server/availability"):
                with self.lock:
                    self.seen.append((time.time(), msg.payload.decode(errors="replace")))
            inner(client, userdata, msg)

        watcher.client.on_message = on_message

    def since(self, at: float) -> list[tuple[float, str]]:
        with self.lock:
            return [(t, v) for t, v in self.seen if t >= at]

    def online_again(self, at: float) -> float | None:
        """When ``online`` arrived after an ``offline`` (the killed leader's will), both after ``at``."""
        offline = False
        for t, value in self.since(at):
            offline = offline or value == "offline"
            if offline and value == "online":
                return t
        return None


class LoadAverage:
    """The machine's 1-minute load average, sampled every LOADAVG_EVERY_S from a thread while the bench runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="failover-loadavg", daemon=True)

    def _sample(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(LOADAVG_EVERY_S):
                return

    def start(self) -> LoadAverage:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(LOADAVG_EVERY_S + 1)


@dataclass
class Kill:
    kind: str                      # "leader" or "standby"
    victim: str
    survivor: str
    at: float                      # wall time of the SIGKILL
    resume: float | None = None    # seconds after ``at`` (see the module docstring)
    door: float | None = None
    by_edge: int = 0
    leader_named: float | None = None
    online_again: float | None = None
    blips: int = 0                 # standby kills: server availability messages other than online
    leader_after: str | None = None
    restarted_s: float | None = None  # the victim started again and answering, seconds after its restart


class Store:
    """One PostgreSQL session of the bench's own on the stack's store, for the figures polled at POLL_S
    (FaultStack.query opens one per call: a backend forked fifty times a second beside the failover measured)."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(url, autocommit=True, connect_timeout=5)

    def server_decided_since(self, at: float) -> float | None:
        row = self.conn.execute("SELECT MIN(received_at) FROM events WHERE type = 'access' AND decided_by = 'server' "
                                "AND received_at > %s", (at,)).fetchone()
        return row[0] if row and row[0] is not None else None

    def stored_access_count(self) -> int:
        row = self.conn.execute("SELECT count(*) FROM events WHERE device = %s AND type = 'access'", (DEVICE,)).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.conn.close()


def caught_up(stack: FaultStack, store: Store) -> bool:
    """Every badge made more than CATCH_UP_S ago has its access event stored."""
    assert stack.load is not None
    horizon = time.time() - CATCH_UP_S
    with stack.load.lock:
        due = sum(1 for b in stack.load.badges if b.at < horizon)
    return store.stored_access_count() >= due


def answering(stack: FaultStack, name: str, since: float) -> bool:
    """Worker ``name``, started at ``since`` or later, has decided requests (its heartbeat row says so)."""
    return any(w["name"] == name and w["started_at"] >= since and w["decisions"] > 0
               for w in workers_status(stack.store_url or "", SITE))


def steady(stack: FaultStack, store: Store) -> bool:
    """Ready for the next kill: a leader, the server online, both worker processes running, the store caught up."""
    return (stack.leader() in WORKERS and stack.watcher is not None
            and stack.watcher.last_server_availability() == "online"
            and all(stack.workers[w].poll() is None for w in WORKERS) and caught_up(stack, store))


def kill_and_measure(stack: FaultStack, store: Store, avail: AvailabilityLog, kind: str, timeout: float) -> Kill:
    leader = stack.leader()
    assert leader in WORKERS, leader
    standby = next(w for w in WORKERS if w != leader)
    victim, survivor = (leader, standby) if kind == "leader" else (standby, leader)
    kill = Kill(kind, victim, survivor, stack.kill_worker(victim))

    def observed() -> bool:
        if kill.resume is None:
            got = store.server_decided_since(kill.at)
            kill.resume = None if got is None else got - kill.at
        if kind == "leader":
            if kill.leader_named is None and stack.leader() == survivor:
                kill.leader_named = time.time() - kill.at  # after the answer: an upper bound by one query
            online = avail.online_again(kill.at)  # only after an `offline`: the leader's will is delayed (MQTT 5)
            kill.online_again = None if online is None else online - kill.at
            return None not in (kill.resume, kill.leader_named)
        return kill.resume is not None

    wait_until(observed, timeout, POLL_S)
    kill.leader_after = stack.leader()
    restart_at = time.time()
    stack.start_worker(victim, timeout)
    if wait_until(lambda: answering(stack, victim, restart_at), timeout, 0.1):
        kill.restarted_s = time.time() - restart_at
    kill.blips = sum(1 for _, value in avail.since(kill.at) if value != "online")
    return kill


def door_view(stack: FaultStack, kills: list[Kill]) -> None:
    """Fill each kill's ``door`` and ``by_edge`` from the badges and what the store says decided them (unknown cards
    only: each is unique, so its stored event is found by door and last four digits)."""
    assert stack.load is not None
    decided = {(door, last4): by for door, last4, by in stack.query(
        "SELECT door, credential_last4, decided_by FROM events WHERE device = ? AND type = 'access'", DEVICE)}
    badges = sorted((b for b in stack.load.badges if b.number not in GRANTED), key=lambda b: b.at)
    for kill in kills:
        for badge in (b for b in badges if b.at > kill.at):
            by = decided.get((badge.door, badge.number[-4:]))
            if by == "server":
                kill.door = badge.at - kill.at
                break
            if by is not None:
                kill.by_edge += 1


def attribute(kills: list[Kill], at: float) -> str:
    """The kind of the last kill at or before ``at`` ("warm-up" before the first)."""
    kind = "warm-up"
    for kill in kills:
        if kill.at <= at:
            kind = kill.kind
    return kind


def faults_by_kind(stack: FaultStack, verdict: Verdict, kills: list[Kill]) -> dict[str, tuple[int, int]]:
    """Lost badges (by badge time) and duplicated access events (by when the store took the extra one in), per kind
    of the kill before them."""
    assert stack.load is not None
    out = {kind: [0, 0] for kind in (*KINDS, "warm-up")}
    missing = list(verdict.detail.get("missing", []))
    for badge in stack.load.badges:
        key = (badge.door, badge.number[-4:])
        if key in missing:
            missing.remove(key)
            out[attribute(kills, badge.at)][0] += 1
    by_tx: dict[str, list[tuple[Any, ...]]] = {}
    for row in stack.stored_access():
        by_tx.setdefault(row[2] or row[0], []).append(row)
    for rows in by_tx.values():
        for row in sorted(rows, key=lambda r: r[5] or 0)[1:]:
            out[attribute(kills, row[5] or 0)][1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def seconds(values: list[float], p: float | None = None) -> str:
    if not values:
        return "-"
    return f"{(max(values) if p is None else pct(values, p)):.2f}"


def report(kills: list[Kill], faults: dict[str, tuple[int, int]], verdict: Verdict, args: argparse.Namespace,
           rate: float, loads: list[float], load_before: float) -> bool:
    """Print the table; True when the target is met by every kill."""
    print()
    print(f"failover after kill -9 of a server worker: workers {', '.join(WORKERS)} on PostgreSQL, TLS Mosquitto, "
          f"the real edge (pi-lobby); load {args.rate:g} badges/s asked, {rate:.1f}/s made; {os.cpu_count()} cores")
    head = (f"{'kind':<8} {'runs':>4}  {'resume s p50':>12} {'p99':>5} {'max':>5}  {'door s p50':>10} {'p99':>5}  "
            f"{'by edge':>7}  {'leader named p50':>16} {'p99':>5}  {'online again p50':>16} {'p99':>5}  "
            f"{'lost':>4} {'dup':>4}")
    print(head)
    met = True
    for kind in KINDS:
        runs = [k for k in kills if k.kind == kind]
        resumed = [k.resume for k in runs if k.resume is not None]
        doors = [k.door for k in runs if k.door is not None]
        named = [k.leader_named for k in runs if k.leader_named is not None]
        online = [k.online_again for k in runs if k.online_again is not None]
        lost, dup = faults[kind]
        print(f"{kind:<8} {len(runs):>4}  {seconds(resumed, 50):>12} {seconds(resumed, 99):>5} {seconds(resumed):>5}  "
              f"{seconds(doors, 50):>10} {seconds(doors, 99):>5}  {sum(k.by_edge for k in runs):>7}  "
              f"{seconds(named, 50):>16} {seconds(named, 99):>5}  {seconds(online, 50):>16} {seconds(online, 99):>5}  "
              f"{lost:>4} {dup:>4}")
        met = met and len(resumed) == len(runs) and all(r <= TARGET_RESUME_S for r in resumed)
    never = [k for k in kills if k.resume is None]
    print(f"target (issue 20): the server decides again within {TARGET_RESUME_S:g} s of a kill, every kill: "
          f"{'PASS' if met else 'MISS'}" + (f" ({len(never)} kill(s) never resumed within {args.timeout:g} s)"
                                           if never else ""))
    heard = sum(k.blips for k in kills if k.kind == "leader")
    print(f"leader kills: {heard} server availability message(s) other than online reached the doors (the killed "
          "leader's will is delayed 5 s and the new leader's takeover of its session cancels it)")
    blips = sum(k.blips for k in kills if k.kind == "standby")
    moved = sum(1 for k in kills if k.kind == "standby" and k.leader_after != k.survivor)
    restarted = [k.restarted_s for k in kills if k.restarted_s is not None]
    print(f"standby kills: {blips} server availability message(s) other than online, leader changed {moved} time(s); "
          f"a killed worker started again and answering in p50 {seconds(restarted, 50)} s, max {seconds(restarted)} s")
    warm = faults["warm-up"]
    print(f"verify: sent {verdict.sent}, stored {verdict.stored}, lost {verdict.lost}, duplicates {verdict.duplicates}, "
          f"unexpected {verdict.unexpected}, wrong decisions {len(verdict.wrong_decisions)}, "
          f"{DENY_DOOR} relay energised {len(verdict.denied_relay)}, seq holes {len(verdict.seq_holes)}"
          + (f" (before the first kill: lost {warm[0]}, duplicates {warm[1]})" if any(warm) else "")
          + f": {'clean' if verdict.ok else 'NOT CLEAN'}")
    if loads:
        print(f"load average (1 min) during the run: min {min(loads):.2f}, mean {sum(loads) / len(loads):.2f}, "
              f"max {max(loads):.2f} ({len(loads)} samples every {LOADAVG_EVERY_S:g} s; {load_before:.2f} before)")
    print("p99 is the nearest rank: with fewer than 100 runs of a kind it is the worst run")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="kills of each kind, leader and standby (default 20)")
    parser.add_argument("--rate", type=float, default=20.0, help="badges per second (default 20)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a failover or a restart may take")
    args = parser.parse_args()
    if not mosquitto_installed():
        print("mosquitto is not installed (make mosquitto installs it)", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    name = f"doorkeep_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"no PostgreSQL to create a database in at {ADMIN_URL}: {exc}", file=sys.stderr)
        return 2
    url = urlunsplit(urlsplit(ADMIN_URL)._replace(path=f"/{name}"))
    workdir = Path(tempfile.mkdtemp(prefix="doorkeep-failover-"))
    stack = FaultStack(workdir, store_url=url, workers=WORKERS)
    loadavg = LoadAverage()
    store: Store | None = None
    clean = False
    try:
        stack.start()
        assert stack.watcher is not None
        avail = AvailabilityLog(stack.watcher)
        store = Store(url)
        loadavg.start()
        stack.load = SpacedLoad(stack.readers, args.rate).start()
        started = time.time()
        if not wait_until(lambda: all(answering(stack, w, 0) for w in WORKERS) and steady(stack, store), 30, 0.1):
            raise RuntimeError(f"no steady state under load: {stack.verify(check_seq=False)}\n{stack.log('server')}")
        kills: list[Kill] = []
        phase = threading.Event()
        for i in range(args.runs):
            for kind in KINDS:
                if not wait_until(lambda: steady(stack, store), args.timeout, 0.1):
                    raise RuntimeError(f"no steady state before kill {len(kills) + 1}\n{stack.log('server')}")
                phase.wait(random.uniform(0, JITTER_S))  # the fault's timing, not a wait for the system
                kill = kill_and_measure(stack, store, avail, kind, args.timeout)
                kills.append(kill)
                print(f"{kind} kill {i + 1}/{args.runs}: {kill.victim} killed, resume "
                      f"{'-' if kill.resume is None else f'{kill.resume:.2f}'} s, leader now {kill.leader_after}"
                      + (f", named {kill.leader_named:.2f} s, online again {kill.online_again:.2f} s"
                         if kind == "leader" and kill.leader_named is not None and kill.online_again is not None
                         else ""), flush=True)
        stack.load.pause()
        rate = stack.load.sent / (time.time() - started)
        stack.wait_all_stored(30)
        loadavg.stop()
        verdict = stack.verify()
        door_view(stack, kills)
        met = report(kills, faults_by_kind(stack, verdict, kills), verdict, args, rate, loadavg.samples, load_before)
        clean = verdict.ok and all(k.resume is not None for k in kills)
        if not met:
            print("(a missed target is reported, not an error)")
        return 0 if clean else 1
    finally:
        loadavg.stop()
        if store is not None:
            store.close()
        stack.stop()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if clean:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
