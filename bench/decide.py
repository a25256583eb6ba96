"""Decisions per second: the pure decision function and the server over MQTT, with 110,000 people loaded.

Run from the project root:

    .venv/bin/python bench/decide.py [--employees N] [--visitors N] [--calls N] [--seconds S]
                                     [--concurrency 1,10,50] [--seed N] [--quick] [--json PATH]

The site is the demo site (``doorkeep/sites/demo``: its areas, doors,
schedules and access levels) with a generated population: 100,000 employees
and contractors (access levels "staff" and "staff"+"lab" mixed, some escorts
and responders, a few suspended, expired, lost and revoked cards) and 10,000
visitors (a host, allowed areas, a visit window around the benchmark's
"now"), one EM4100 card each, hashed with ``with_people`` as the server does.

Three parts, printed in one run:

1. **Pure ``decide()``** over a random mix of requests (granted at the lobby
   doors and the lab, unknown card, lost/revoked card, visitor alone at the
   restricted lab door, staff without lab access, clearance too low, the lab
   team after hours). Each call timed with ``perf_counter_ns`` (median, p99)
   and, separately, a tight loop for decisions/s; the same for
   ``decide()`` + ``commit()`` as the server runs them, on a simulated
   timeline of one badge every 0.5 s across the site, and once more with the
   same mix at 500 badges/s to show how the state a door accumulates weighs.
2. **The server over MQTT**: a private Mosquitto, the real server
   (``server.app.bootstrap``) with this site, its start-up time, then
   simulated edges (paho clients, one per demo device, in a child process) that
   keep 1, 10 and 50 requests outstanding on the devices' real request topics
   and match each ``DecisionMsg`` by transaction. Beside it, a bare echo
   through the same broker with the same harness; then the same server with
   everyone present in the building (presence loaded from the store), and
   where the server's time goes (``Directory.decide`` in-process).
3. **The lab device's signed policy** with this site: size, compile, sign
   and verify times (and the lobby device's, which the server also signs at
   start-up).

A benchmark reports; it does not judge. Targets are printed for information;
the exit status is non-zero only when requests went unanswered.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import paho.mqtt
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import iso_ms
from doorkeep.config import BrokerConfig, CardSeed, SiteBundle, load_site_dir, with_people
from doorkeep.contract import DecisionMsg, RequestMsg, Topics
from doorkeep.credentials import card_hash, last4
from doorkeep.decision import AccessRequest, DecisionState, commit, decide
from doorkeep.model import CredentialState, Person, PersonKind, PersonState, Site
from doorkeep.policy import compile_policy, sign_policy, verify_policy
from doorkeep.envelope import SnapshotKeys
from server.app import bootstrap
from server.directory import Directory
from server.store import Store
from simulators.brokers import MosquittoBroker, subscribed_client

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / "doorkeep" / "sites" / "demo"

TARGET_DECIDE_US = 50.0           # issue 3: the pure function under 50 µs per decision at this size
WARMUP_CALLS = 5_000
STEP_S = 0.5                      # simulated timeline: one badge every 0.5 s across the site
BURST_STEP_S = 0.002              # ... and the same mix at 500 badges/s
BURST_CALLS = 10_000
# A Wednesday outside the demo's holidays, in the site's time zone (Europe/London).
DAY = (2026, 11, 25)
DAY_START = (7, 5)                # the day timeline starts after the lab's business hours open (07:00)
NIGHT_START = (20, 0)             # "after hours" requests: after business hours close (19:00)
SERVER_START = (10, 0)            # the server's clock starts here and runs in real time
VISIT = ((6, 0), (19, 30))        # every visitor's window, the same day
CARD_FORMAT = "em4100"
POOL_SIZE = 20_000                # distinct requests the simulated edges cycle through
WARMUP_S = 0.5
DRAIN_S = 15.0


# ----------------------------------------------------------------- helpers

def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    return sorted_values[max(1, math.ceil(len(sorted_values) * p / 100)) - 1]


def local_epoch(hm: tuple[int, int], tz: str) -> float:
    return datetime(*DAY, hm[0], hm[1], tzinfo=ZoneInfo(tz)).timestamp()


def fmt_int(n: float) -> str:
    return f"{n:,.0f}" if math.isfinite(n) else "n/a"


def mosquitto_version() -> str:
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if exe is None:
        return "mosquitto not found"
    try:
        res = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"mosquitto ({exc})"
    text = (res.stdout or res.stderr).strip()
    return text.splitlines()[0] if text else "mosquitto (version unknown)"


def filesystem_of(path: Path) -> str:
    """The mount (device and type) holding ``path``: the store's fsync cost depends on it."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as fh:
            for line in fh:
                dev, mount, fstype = line.split()[:3]
                if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                    best, kind = mount, f"{fstype} on {dev}"
    except OSError:
        pass
    return kind


def machine() -> dict[str, Any]:
    return {
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "paho_mqtt": paho.mqtt.__version__,
        "mosquitto": mosquitto_version(),
    }


class SiteClock:
    """A clock for the server: wall time starting at a chosen instant and running in real time."""

    def __init__(self, start_wall: float) -> None:
        self.offset = start_wall - time.time()

    def wall(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic()


# -------------------------------------------------------------- population

@dataclass
class Population:
    people: dict[str, Person]
    cards: list[CardSeed]
    groups: dict[str, list[tuple[str, str]]]  # group -> [(person id, card number)]
    counts: Counter[str] = field(default_factory=Counter)


def build_population(site: Site, n_employees: int, n_visitors: int, seed: int) -> Population:
    """Employees and contractors with the demo's access levels, and visitors, one card each."""
    for needed in ("staff", "lab"):
        if needed not in site.access_levels:
            raise SystemExit(f"the demo site has no access level {needed!r}: this benchmark needs it")
    rng = random.Random(seed)
    tz = site.timezone
    day = local_epoch((0, 0), tz)
    visit_from, visit_until = local_epoch(VISIT[0], tz), local_epoch(VISIT[1], tz)
    people: dict[str, Person] = {}
    cards: list[CardSeed] = []
    groups: dict[str, list[tuple[str, str]]] = {g: [] for g in (
        "staff", "lab", "lab_low", "no_levels", "lost", "inactive", "visitor_lobby", "visitor_lab")}
    counts: Counter[str] = Counter()
    escort, responder = frozenset({"escort"}), frozenset({"responder"})
    for i in range(n_employees):
        pid, number = f"e{i:06d}", f"E0{i:08X}"
        contractor = rng.random() < 0.05
        r = rng.random()
        if r < 0.20:
            levels: tuple[str, ...] = ("staff", "lab")
            clearance = rng.choice((3, 3, 4, 4, 5)) if rng.random() < 0.9 else rng.choice((1, 2))
        elif r < 0.985:
            levels, clearance = ("staff",), rng.choice((0, 1, 2))
        else:
            levels, clearance = (), 0
        u = rng.random()
        roles = escort if u < 0.01 else responder if u < 0.012 else frozenset()
        suspended = rng.random() < 0.005
        valid_until = None
        if contractor:
            valid_until = day - 10 * 86400 if rng.random() < 0.02 else day + 90 * 86400
        v = rng.random()
        card_state = CredentialState.LOST if v < 0.01 else CredentialState.REVOKED if v < 0.013 \
            else CredentialState.ACTIVE
        people[pid] = Person(
            pid, f"{'Contractor' if contractor else 'Employee'} {i:06d}",
            kind=PersonKind.CONTRACTOR if contractor else PersonKind.EMPLOYEE,
            clearance=clearance, access_levels=levels, roles=roles,
            state=PersonState.SUSPENDED if suspended else PersonState.ACTIVE,
            valid_until=valid_until, company="Contracting Ltd" if contractor else None,
        )
        cards.append(CardSeed(pid, CARD_FORMAT, number, card_state))
        if card_state is not CredentialState.ACTIVE:
            group = "lost"
        elif suspended or (valid_until is not None and valid_until < day):
            group = "inactive"
        elif "lab" in levels:
            group = "lab" if clearance >= 3 else "lab_low"
        elif levels:
            group = "staff"
        else:
            group = "no_levels"
        groups[group].append((pid, number))
        counts["contractors" if contractor else "employees"] += 1
        for role in roles:
            counts[f"role:{role}"] += 1
    hosts_lab = [pid for pid, _ in groups["lab"]]
    hosts_any = [pid for pid, _ in groups["staff"]] + hosts_lab
    if n_visitors and not hosts_lab:
        raise SystemExit("no lab employee to host visitors: use more --employees")
    for j in range(n_visitors):
        pid, number = f"v{j:05d}", f"F1{j:08X}"
        lab = rng.random() < 0.3
        people[pid] = Person(
            pid, f"Visitor {j:05d}", kind=PersonKind.VISITOR,
            valid_from=visit_from, valid_until=visit_until,
            host=rng.choice(hosts_lab if lab else hosts_any), company=f"Guest Co {j % 500}",
            allowed_areas=("lobby", "floor7") if lab else ("lobby",),
        )
        cards.append(CardSeed(pid, CARD_FORMAT, number, CredentialState.ACTIVE))
        groups["visitor_lab" if lab else "visitor_lobby"].append((pid, number))
        counts["visitors"] += 1
    return Population(people, cards, groups, counts)


# -------------------------------------------------------------- request mix

@dataclass(frozen=True)
class Category:
    name: str
    weight: float
    groups: tuple[str, ...]  # () = a card nobody holds
    doors: tuple[str, ...]
    expected: str
    night: bool = False


MIX: tuple[Category, ...] = (
    Category("staff, lobby doors", 0.38, ("staff",), ("lobby_in", "lobby_out"), "granted"),
    Category("lab team, lab door", 0.12, ("lab",), ("lab",), "granted"),
    Category("visitor, lobby doors", 0.10, ("visitor_lobby", "visitor_lab"), ("lobby_in", "lobby_out"), "granted"),
    Category("visitor alone, lab door", 0.08, ("visitor_lab",), ("lab",), "escort_required"),
    Category("unknown card", 0.10, (), ("lobby_in", "lobby_out", "lab"), "unknown_credential"),
    Category("lost or revoked card", 0.05, ("lost",), ("lobby_in", "lobby_out", "lab"), "credential_inactive"),
    Category("staff at lab door", 0.05, ("staff",), ("lab",), "no_access"),
    Category("clearance too low, lab", 0.02, ("lab_low",), ("lab",), "clearance_too_low"),
    Category("lab team after 20:00", 0.10, ("lab",), ("lab",), "outside_schedule", night=True),
)


@dataclass(frozen=True)
class Draw:
    category: int
    door: str
    number: str
    hash: str


def draw_requests(pop: Population, key: bytes, count: int, rng: random.Random,
                  mix: tuple[Category, ...] = MIX) -> list[Draw]:
    cats = rng.choices(range(len(mix)), weights=[c.weight for c in mix], k=count)
    out = []
    for ci in cats:
        cat = mix[ci]
        if cat.groups:
            group = pop.groups[rng.choice(cat.groups)]
            if not group:
                raise SystemExit(f"no one in group {cat.groups} for {cat.name!r}: use a larger population")
            _, number = rng.choice(group)
        else:
            number = f"AB{rng.getrandbits(32):08X}"  # prefix "AB": never issued (people use E0, visitors F1)
        out.append(Draw(ci, rng.choice(cat.doors), number, card_hash(key, CARD_FORMAT, number)))
    return out


# -------------------------------------------------------- 1. pure decide()

@dataclass
class PureRow:
    name: str
    samples_ns: list[int]
    per_s: float | None = None  # tight loop
    note: str = ""

    def stats(self) -> dict[str, float]:
        s = sorted(self.samples_ns)
        return {"n": len(s), "median_us": pct(s, 50) / 1000, "p99_us": pct(s, 99) / 1000,
                "max_us": (s[-1] / 1000) if s else float("nan")}


def timeline(draws: list[Draw], tz: str, step: float) -> list[tuple[AccessRequest, float, bool]]:
    """(request, now, after hours) for each draw: day and after-hours requests each on their own clock."""
    day, night = local_epoch(DAY_START, tz), local_epoch(NIGHT_START, tz)
    out = []
    for d in draws:
        at_night = MIX[d.category].night
        if at_night:
            now, night = night, night + step
        else:
            now, day = day, day + step
        out.append((AccessRequest(d.door, d.hash), now, at_night))
    return out


def bind_states(calls: list[tuple[AccessRequest, float, bool]]) -> tuple[list[tuple[AccessRequest, float, DecisionState]],
                                                                         DecisionState, DecisionState]:
    """Fresh states, one per clock (day, after hours), so each sees its own time move forwards only."""
    day, night = DecisionState(), DecisionState()
    return [(req, now, night if at_night else day) for req, now, at_night in calls], day, night


def timer_overhead_ns() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20_000):
        t0 = clock()
        t1 = clock()
        samples.append(t1 - t0)
    samples.sort()
    return pct(samples, 50)


def run_pure(site: Site, draws: list[Draw], warmup: int) -> tuple[list[PureRow], dict[str, Any]]:
    clock = time.perf_counter_ns
    calls = timeline(draws, site.timezone, STEP_S)
    measured = len(calls) - warmup
    rows: list[PureRow] = []
    info: dict[str, Any] = {}

    # decide() alone, each call timed. It never mutates the state, so empty states do for every call.
    bound, _, _ = bind_states(calls)
    samples: list[int] = []
    by_cat: dict[int, list[int]] = {i: [] for i in range(len(MIX))}
    reasons: Counter[str] = Counter()
    for i, (req, now, st) in enumerate(bound):
        t0 = clock()
        dec = decide(req, site, st, now)
        t1 = clock()
        if i >= warmup:
            samples.append(t1 - t0)
            by_cat[draws[i].category].append(t1 - t0)
            reasons[dec.reason.value] += 1
    # Tight loop: no timer per call.
    for req, now, st in bound[:warmup]:
        decide(req, site, st, now)
    t0 = time.perf_counter()
    for req, now, st in bound[warmup:]:
        decide(req, site, st, now)
    rate = measured / (time.perf_counter() - t0)
    rows.append(PureRow("decide()", samples, rate, "state as the mix leaves it: empty (decide never changes it)"))
    info["reasons_decide"] = dict(reasons.most_common())
    info["by_category"] = by_cat

    # decide() + commit(), as the server does, on fresh states; each call timed.
    bound, day, night = bind_states(calls)
    samples = []
    reasons = Counter()
    for i, (req, now, st) in enumerate(bound):
        t0 = clock()
        dec = decide(req, site, st, now)
        commit(req, dec, site, st, now)
        t1 = clock()
        if i >= warmup:
            samples.append(t1 - t0)
            reasons[dec.reason.value] += 1
    info["reasons_commit"] = dict(reasons.most_common())
    info["presence_after"] = len(day.presence) + len(night.presence)
    # Tight loop on fresh states again.
    bound, day, night = bind_states(calls)
    for req, now, st in bound[:warmup]:
        commit(req, decide(req, site, st, now), site, st, now)
    t0 = time.perf_counter()
    for req, now, st in bound[warmup:]:
        commit(req, decide(req, site, st, now), site, st, now)
    rate = measured / (time.perf_counter() - t0)
    lab_pending = len(day.pending.get("lab", ()))
    rows.append(PureRow("decide() + commit()", samples, rate,
                        f"one badge every {STEP_S:g} s; at the end {lab_pending} badges wait at the lab door"))
    info["lab_pending_normal"] = lab_pending

    # The same mix at 500 badges/s: every badge at a door within its escort window stays pending there.
    # Measured once the first window has filled (escort window / step calls), on BURST_CALLS calls.
    fill = int(site.rules.escort_window_s / BURST_STEP_S)
    burst = timeline(draws[:fill + BURST_CALLS], site.timezone, BURST_STEP_S)
    bound, day, night = bind_states(burst)
    for req, now, st in bound[:fill]:
        commit(req, decide(req, site, st, now), site, st, now)
    samples = []
    for req, now, st in bound[fill:]:
        t0 = clock()
        dec = decide(req, site, st, now)
        commit(req, dec, site, st, now)
        t1 = clock()
        samples.append(t1 - t0)
    lab_pending = len(day.pending.get("lab", ()))
    rate = len(samples) / (sum(samples) / 1e9) if samples else float("nan")
    rows.append(PureRow("decide() + commit(), burst", samples, rate,
                        f"the same mix at {1 / BURST_STEP_S:g} badges/s, after {fill:,} calls filled the "
                        f"{site.rules.escort_window_s:g} s escort window: {lab_pending:,} badges wait at the lab door "
                        f"(decisions/s: from the timed calls)"))
    info["lab_pending_burst"] = lab_pending
    return rows, info


def print_pure(rows: list[PureRow], info: dict[str, Any], n_people: int, overhead_ns: float) -> None:
    print(f"1. Pure decide() with {n_people:,} people, one thread")
    print(f"   {WARMUP_CALLS:,} warm-up calls, then each call timed with perf_counter_ns "
          f"(timer overhead {overhead_ns:.0f} ns, not subtracted); decisions/s from a separate loop without timers")
    header = (f"   {'measurement':<28} {'calls':>7} {'median µs':>10} {'p99 µs':>8} {'max µs':>9} "
              f"{'decisions/s':>12}  target")
    print(header)
    print("   " + "-" * (len(header) - 3))
    for row in rows:
        s = row.stats()
        target = ""
        if row.name == "decide()":
            ok = s["p99_us"] <= TARGET_DECIDE_US
            target = f"< {TARGET_DECIDE_US:g} µs per decision: {'ok' if ok else 'MISSED'} (p99)"
        elif row.name == "decide() + commit()":
            ok = s["p99_us"] <= TARGET_DECIDE_US
            target = f"(< {TARGET_DECIDE_US:g} µs: {'ok' if ok else 'over'} at p99)"
        per_s = fmt_int(row.per_s) if row.per_s else ""
        print(f"   {row.name:<28} {s['n']:>7,} {s['median_us']:>10.2f} {s['p99_us']:>8.2f} {s['max_us']:>9.1f} "
              f"{per_s:>12}  {target}")
        if row.note:
            print(f"   {'':<28} {row.note}")
    print()
    print(f"   decide() by category{'':<18} {'share':>6} {'median µs':>10} {'p99 µs':>8}  expected reason")
    for ci, cat in enumerate(MIX):
        s = sorted(info["by_category"][ci])
        share = len(s) / max(1, rows[0].stats()["n"]) * 100
        print(f"   {cat.name:<38} {share:>5.1f}% {pct(s, 50) / 1000:>10.2f} {pct(s, 99) / 1000:>8.2f}  {cat.expected}")
    print(f"   reasons, decide() alone : {_reasons(info['reasons_decide'])}")
    print(f"   reasons, with commit()  : {_reasons(info['reasons_commit'])}")
    print()


def _reasons(counter: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counter.items())


# ------------------------------------------------------ 2. server over MQTT

# The simulated edges run in a child process (spawned), so that their Python does not share the
# server's interpreter lock: as in production, the server has a process of its own.

def _edge_main(conn: Any, host: str, port: int, mode: str, run_id: str, site_id: str, wall_offset: float,
               device_doors: dict[str, list[str]], pool: list[tuple[str, str, str, str]], levels: list[int],
               warmup_s: float, measure_s: float) -> None:
    try:
        _edge_run(conn, host, port, mode, run_id, site_id, wall_offset, device_doors, pool, levels,
                  warmup_s, measure_s)
    except BaseException as exc:  # reported to the parent, which prints it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        raise


class ClosedLoop:
    """Keep ``c`` requests outstanding; each answer (matched by transaction) sends the next request."""

    def __init__(self, mode: str, clients: dict[str, mqtt.Client], req_topic: dict[tuple[str, str], str],
                 pool: list[tuple[str, str, str, str]], wall_offset: float) -> None:
        self.mode = mode
        self.clients = clients
        self.req_topic = req_topic
        self.pool = pool
        self.wall_offset = wall_offset
        self.lock = threading.Lock()
        self.pending: dict[str, int] = {}
        self.seq = 0
        self.next = 0
        self.recording = False
        self.stopping = False
        self.latencies_ns: list[int] = []
        self.reasons: Counter[str] = Counter()
        self.stray = 0
        self.prefix = uuid.uuid4().hex[:8]

    def send(self) -> None:
        with self.lock:
            self.seq += 1
            seq = self.seq
            device, door, h, tail = self.pool[self.next]
            self.next = (self.next + 1) % len(self.pool)
        tx = f"{self.prefix}{seq:09d}"
        payload = RequestMsg(tx, door, h, tail, CARD_FORMAT, iso_ms(time.time() + self.wall_offset)).encode()
        with self.lock:
            self.pending[tx] = time.perf_counter_ns()
        self.clients[device].publish(self.req_topic[(device, door)], payload, qos=1)

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        t = time.perf_counter_ns()
        if self.mode == "server":
            answer = DecisionMsg.decode(msg.payload)
            tx, reason = answer.transaction, answer.reason
        else:
            echoed = RequestMsg.decode(msg.payload)  # about the same parsing work as a DecisionMsg
            tx, reason = echoed.transaction, "echo"
        with self.lock:
            t0 = self.pending.pop(tx, None)
            if t0 is None:
                self.stray += 1
                return
            if self.recording:
                self.latencies_ns.append(t - t0)
                self.reasons[reason] += 1
            stop = self.stopping
        if not stop:
            self.send()

    def level(self, c: int, warmup_s: float, measure_s: float) -> dict[str, Any]:
        with self.lock:
            self.recording, self.stopping = False, False
            self.latencies_ns, self.reasons = [], Counter()
        for _ in range(c):
            self.send()
        time.sleep(warmup_s)
        with self.lock:
            self.recording = True
            t_start = time.perf_counter_ns()
        time.sleep(measure_s)
        with self.lock:
            self.recording = False
            self.stopping = True
            t_end = time.perf_counter_ns()
            lat, reasons = self.latencies_ns, self.reasons
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            with self.lock:
                if not self.pending:
                    break
            time.sleep(0.01)
        with self.lock:
            lost = len(self.pending)
            self.pending.clear()
        return {"concurrency": c, "seconds": (t_end - t_start) / 1e9, "latencies_ns": lat,
                "reasons": dict(reasons), "lost": lost, "stray": self.stray}


def _edge_run(conn: Any, host: str, port: int, mode: str, run_id: str, site_id: str, wall_offset: float,
              device_doors: dict[str, list[str]], pool: list[tuple[str, str, str, str]], levels: list[int],
              warmup_s: float, measure_s: float) -> None:
    topics = Topics(site_id)
    req_topic: dict[tuple[str, str], str] = {}
    sub_topic: dict[str, str] = {}
    for device, doors in device_doors.items():
        for door in doors:
            req_topic[(device, door)] = (topics.request(device, door) if mode == "server"
                                         else f"bench/echo/{run_id}/req/{device}/{door}")
        sub_topic[device] = (topics.all_decisions(device) if mode == "server"
                             else f"bench/echo/{run_id}/rep/{device}/+")
    clients: dict[str, mqtt.Client] = {}
    loop = ClosedLoop(mode, clients, req_topic, pool, wall_offset)
    for device in device_doors:
        clients[device] = _connect(host, port, f"bench-edge-{device}-{run_id}", sub_topic[device], loop.on_message,
                                   inflight=1000)
    conn.send(("ready", None))
    for c in levels:
        conn.send(("level", loop.level(c, warmup_s, measure_s)))
    for client in clients.values():
        client.disconnect()
        client.loop_stop()
    conn.send(("done", None))


def _connect(host: str, port: int, client_id: str, subscribe: str, on_message: Any,
             inflight: int | None = None) -> mqtt.Client:
    return subscribed_client(host, port, client_id, subscribe, on_message, inflight=inflight, keepalive=60)


class EchoResponder:
    """The bare-transport stand-in for the server: republishes each request on the reply topic (QoS 1).

    It runs where the server runs (this process) with paho's defaults, as the server's client does.
    """

    def __init__(self, host: str, port: int, run_id: str) -> None:
        marker = f"bench/echo/{run_id}/req/"
        reply = f"bench/echo/{run_id}/rep/"

        def on_message(c: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            c.publish(reply + msg.topic[len(marker):], msg.payload, qos=1)

        self.client = _connect(host, port, f"bench-echo-{run_id}", marker + "#", on_message)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class MqttRow:
    name: str
    concurrency: int
    seconds: float
    latencies_ns: list[int]
    lost: int
    reasons: dict[str, int]
    presence_end: int | None = None
    lab_pending_end: int | None = None

    @property
    def per_s(self) -> float:
        return len(self.latencies_ns) / self.seconds if self.seconds > 0 else float("nan")

    def stat_ms(self, p: float) -> float:
        return pct(sorted(self.latencies_ns), p) / 1e6


def run_edges(broker: MosquittoBroker, mode: str, run_id: str, site_id: str, wall_offset: float,
              device_doors: dict[str, list[str]], pool: list[tuple[str, str, str, str]], levels: list[int],
              seconds: float, name: str, after_level: Any = None) -> list[MqttRow]:
    """Run the closed loop at each level in a spawned child process; ``after_level(row)`` may annotate a row."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_edge_main, name=f"bench-edges-{mode}",
                       args=(child, "127.0.0.1", broker.port, mode, run_id, site_id, wall_offset, device_doors, pool,
                             levels, WARMUP_S, seconds), daemon=True)
    proc.start()
    rows: list[MqttRow] = []
    try:
        budget = 60 + len(levels) * (WARMUP_S + seconds + DRAIN_S + 5)
        deadline = time.monotonic() + budget
        while True:
            if not parent.poll(max(0.1, deadline - time.monotonic())):
                raise RuntimeError(f"the simulated edges ({mode}) did not report within {budget:.0f} s")
            kind, body = parent.recv()
            if kind == "error":
                raise RuntimeError(f"simulated edges ({mode}) failed: {body}")
            if kind == "level":
                row = MqttRow(name, body["concurrency"], body["seconds"], body["latencies_ns"], body["lost"],
                              body["reasons"])
                if after_level is not None:
                    after_level(row)
                rows.append(row)
            if kind == "done":
                break
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
    return rows


def make_bundle(demo: SiteBundle, pop: Population) -> SiteBundle:
    return dataclasses.replace(demo, people=pop.people, cards=pop.cards)


def preload_presence(data_dir: Path, people: dict[str, Person], since: float) -> int:
    """Everyone in the building: presence rows in the store, which the server loads at start-up."""
    store = Store(data_dir)
    try:
        rows = [{"person": pid, "area": "floor7" if "lab" in p.access_levels else "lobby", "since": since}
                for pid, p in people.items()]
        store.set_presences(rows)
        return len(rows)
    finally:
        store.close()


@dataclass
class ServerRun:
    rows: list[MqttRow]
    bootstrap_s: float
    start_s: float
    connected: bool
    counters: dict[str, int]
    presence_loaded: int


def run_server(demo: SiteBundle, pop: Population, key: bytes, broker: MosquittoBroker, pool_items: list[Any],
               levels: list[int], seconds: float, name: str, preload: bool) -> ServerRun:
    bundle = make_bundle(demo, pop)
    tz = demo.site.timezone
    clock = SiteClock(local_epoch(SERVER_START, tz))
    data_dir = Path(tempfile.mkdtemp(prefix="doorkeep-bench-decide-"))
    server = None
    try:
        loaded = preload_presence(data_dir, pop.people, clock.wall() - 3600) if preload else 0
        gc.collect()
        t0 = time.perf_counter()
        server = bootstrap(bundle, data_dir, BrokerConfig(broker.url, allow_plain=True), key=key,  # bench broker: plain, like its echo
                           signing_key=Ed25519PrivateKey.generate(), clock=clock,
                           snapshot_keys=SnapshotKeys.generate())
        boot_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        server.start(wait_s=120)
        start_s = time.perf_counter() - t0
        connected = server.bus.connected
        if not connected:
            raise RuntimeError("the server did not connect to the broker within 120 s")
        device_doors = {d.id: list(d.doors) for d in demo.devices.values()}

        def annotate(row: MqttRow) -> None:  # read-only look at the server's state after each level
            row.presence_end = len(server.directory.state.presence)
            row.lab_pending_end = len(server.directory.state.pending.get("lab", ()))

        rows = run_edges(broker, "server", uuid.uuid4().hex[:8], demo.site.id, clock.offset, device_doors,
                         pool_items, levels, seconds, name, annotate)
        return ServerRun(rows, boot_s, start_s, connected, dict(server.bus.counters), loaded)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def edge_pool(pop: Population, key: bytes, demo: SiteBundle, rng: random.Random) -> list[tuple[str, str, str, str]]:
    """Requests for the simulated edges: the day-time part of the mix (the server's clock says 10:00 on a Wednesday)."""
    day_mix = tuple(c for c in MIX if not c.night)
    owner = {door: dev.id for dev in demo.devices.values() for door in dev.doors}
    draws = draw_requests(pop, key, POOL_SIZE, rng, day_mix)
    return [(owner[d.door], d.door, d.hash, last4(d.number)) for d in draws]


# ------------------------------------------------ where the server's time goes

def directory_breakdown(demo: SiteBundle, pop: Population, key: bytes, pool: list[tuple[str, str, str, str]],
                        sizes: list[int]) -> list[dict[str, Any]]:
    """``Directory.decide`` (the server's decision path, without MQTT) with N people present."""
    bundle = make_bundle(demo, pop)
    clock = SiteClock(local_epoch(SERVER_START, demo.site.timezone))
    out = []
    people_ids = list(pop.people)
    for n in sizes:
        data_dir = Path(tempfile.mkdtemp(prefix="doorkeep-bench-dir-"))
        store = None
        try:
            if n:
                subset = {pid: pop.people[pid] for pid in people_ids[:n]}
                preload_presence(data_dir, subset, clock.wall() - 3600)
            store = Store(data_dir)
            directory = Directory(bundle, key, store, clock)
            present_at_start = len(directory.state.presence)
            gc.collect()
            total: list[int] = []
            core: list[int] = []
            budget = time.perf_counter() + 2.0
            i = 0
            while i < 2000 and (i < 20 or time.perf_counter() < budget):
                _, door, h, _ = pool[i % len(pool)]
                req = AccessRequest(door, h)
                # The pure part, on the directory's current site and state (decide only reads them).
                t0 = time.perf_counter_ns()
                decide(req, directory.site, directory.state, clock.wall())
                t1 = time.perf_counter_ns()
                directory.decide(req)
                t2 = time.perf_counter_ns()
                core.append(t1 - t0)
                total.append(t2 - t1)
                i += 1
            upserts = []
            for j in range(50):
                row = {"person": people_ids[j], "area": "lobby", "since": clock.wall()}
                t0 = time.perf_counter_ns()
                store.set_presence(row["person"], row["area"], row["since"])
                upserts.append(time.perf_counter_ns() - t0)
            total.sort()
            core.sort()
            upserts.sort()
            out.append({"present": present_at_start, "present_end": len(directory.state.presence),
                        "lab_pending_end": len(directory.state.pending.get("lab", ())), "calls": len(total),
                        "directory_median_us": pct(total, 50) / 1000, "directory_p99_us": pct(total, 99) / 1000,
                        "decide_median_us": pct(core, 50) / 1000,
                        "presence_upsert_median_us": pct(upserts, 50) / 1000})
        finally:
            if store is not None:
                store.close()
            shutil.rmtree(data_dir, ignore_errors=True)
    return out


# ------------------------------------------------------------ 3. the policy

def run_policy(site: Site, devices: dict[str, list[str]], runs: int) -> list[dict[str, Any]]:
    out = []
    key = Ed25519PrivateKey.generate()
    public = key.public_key()
    for device, doors in devices.items():
        compile_s, sign_s, verify_s = [], [], []
        payload = b""
        subset = None
        for version in range(1, runs + 1):
            t0 = time.perf_counter()
            subset = compile_policy(site, doors)
            t1 = time.perf_counter()
            payload = sign_policy(subset, site_id=site.id, device=device, version=version,
                                  issued_at=time.time(), key=key)
            t2 = time.perf_counter()
            verified = verify_policy(payload, public, site_id=site.id, device=device, min_version=version)
            t3 = time.perf_counter()
            if verified.site != subset:
                raise RuntimeError(f"the {device} policy did not survive sign + verify unchanged")
            compile_s.append(t1 - t0)
            sign_s.append(t2 - t1)
            verify_s.append(t3 - t2)
            del verified
        assert subset is not None
        out.append({"device": device, "doors": doors, "people": len(subset.people),
                    "credentials": len(subset.credentials), "bytes": len(payload),
                    "compile_s": statistics.median(compile_s), "sign_s": statistics.median(sign_s),
                    "verify_s": statistics.median(verify_s), "runs": runs})
    return out


# --------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--employees", type=int, default=100_000, help="employees and contractors (default 100,000)")
    ap.add_argument("--visitors", type=int, default=10_000, help="visitors (default 10,000)")
    ap.add_argument("--calls", type=int, default=60_000, help="measured decide() calls per row (default 60,000)")
    ap.add_argument("--seconds", type=float, default=3.0, help="measured seconds per MQTT level (default 3)")
    ap.add_argument("--concurrency", default="1,10,50", help="outstanding requests per MQTT level (default 1,10,50)")
    ap.add_argument("--runs", type=int, default=3, help="policy sign/verify runs, median reported (default 3)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="pure decide() and the policy only, no MQTT")
    ap.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = ap.parse_args(argv)
    try:
        levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    except ValueError:
        ap.error("--concurrency must be a comma-separated list of integers")
    if args.employees < 100 or args.visitors < 0 or args.calls < 1000 or not levels or min(levels) < 1:
        ap.error("need --employees >= 100, --visitors >= 0, --calls >= 1000 and concurrency levels >= 1")
    started = time.monotonic()

    info = machine()
    demo = load_site_dir(DEMO_DIR)
    site0 = demo.site
    key = secrets.token_bytes(32)
    t0 = time.perf_counter()
    pop = build_population(site0, args.employees, args.visitors, args.seed)
    t_people = time.perf_counter() - t0
    t0 = time.perf_counter()
    site = with_people(site0, pop.people, pop.cards, key)
    t_hash = time.perf_counter() - t0
    rng = random.Random(args.seed + 1)
    draws = draw_requests(pop, key, WARMUP_CALLS + args.calls, rng)

    print("doorkeep decision benchmark (issue 3)")
    print(f"  machine    : {info['platform']}, {info['cpus']} CPUs, Python {info['python']}, "
          f"load average {info['load_average_1m']} at start (other work on the machine shows in the figures)")
    print(f"  libraries  : paho-mqtt {info['paho_mqtt']}, {info['mosquitto']}")
    print(f"  site       : {site.id} from {DEMO_DIR.relative_to(ROOT)}: {len(site.areas)} areas, {len(site.doors)} doors, "
          f"{len(site.schedules)} schedules, {len(site.access_levels)} access levels, time zone {site.timezone}")
    print(f"  population : {pop.counts['employees']:,} employees + {pop.counts['contractors']:,} contractors "
          f"(levels staff / staff+lab ~78/20 %, 1 % escorts, 0.2 % responders, some suspended or expired) + "
          f"{pop.counts['visitors']:,} visitors = {len(site.people):,} people, {len(site.credentials):,} credentials")
    print(f"               generated in {t_people:.1f} s, cards hashed by with_people (HMAC-SHA256) in {t_hash:.1f} s")
    print("  mix        : " + "; ".join(f"{c.name} {c.weight * 100:.0f} %" for c in MIX))
    day_label = datetime(*DAY).strftime("%a %Y-%m-%d")
    print(f"  time       : {day_label} {site.timezone}; day requests from {DAY_START[0]:02d}:{DAY_START[1]:02d}, "
          f"after-hours ones from {NIGHT_START[0]:02d}:{NIGHT_START[1]:02d}; visits "
          f"{VISIT[0][0]:02d}:{VISIT[0][1]:02d}-{VISIT[1][0]:02d}:{VISIT[1][1]:02d}")
    print(f"  targets    : pure decide() < {TARGET_DECIDE_US:g} µs per decision at this size (issue 3; for information)")
    print()

    overhead = timer_overhead_ns()
    pure_rows, pure_info = run_pure(site, draws, WARMUP_CALLS)
    print_pure(pure_rows, pure_info, len(site.people), overhead)
    del draws
    gc.collect()

    doc: dict[str, Any] = {
        "machine": info,
        "population": {"people": len(site.people), "credentials": len(site.credentials), **dict(pop.counts)},
        "mix": [{"name": c.name, "weight": c.weight, "expected": c.expected} for c in MIX],
        "target_decide_us": TARGET_DECIDE_US,
        "pure": [{"name": r.name, "decisions_per_s": r.per_s, "note": r.note, **r.stats()} for r in pure_rows],
        "pure_reasons": {"decide": pure_info["reasons_decide"], "decide_commit": pure_info["reasons_commit"]},
        "timer_overhead_ns": overhead,
    }

    failures = 0
    if not args.quick:
        failures += mqtt_section(args, demo, pop, key, levels, doc)

    print(f"3. Signed policy snapshots with this site (median of {args.runs}; issue 3 target for the edge: "
          "verified and loaded in < 5 s)")
    policy = run_policy(site, {d.id: list(d.doors) for d in sorted(demo.devices.values(), key=lambda d: d.id != "pi-floor7")},
                        args.runs)
    header = (f"   {'device (doors)':<30} {'people':>8} {'creds':>8} {'size MB':>8} {'compile s':>10} "
              f"{'sign s':>7} {'verify s':>9}  target")
    print(header)
    print("   " + "-" * (len(header) - 3))
    for p in policy:
        ok = "ok" if p["verify_s"] < 5.0 else "MISSED"
        print(f"   {p['device'] + ' (' + ', '.join(p['doors']) + ')':<30} {p['people']:>8,} {p['credentials']:>8,} "
              f"{p['bytes'] / 1e6:>8.2f} {p['compile_s']:>10.3f} {p['sign_s']:>7.3f} {p['verify_s']:>9.3f}  "
              f"verify < 5 s: {ok} (this machine, not a Pi)")
    print("   verify = verify_policy: envelope, Ed25519 signature, body JSON and site_from_dict; "
          "the 250,000-credential figure is bench/policy.py's")
    doc["policy"] = policy
    elapsed = time.monotonic() - started
    print()
    print(f"run time {elapsed:.1f} s")
    doc["elapsed_s"] = elapsed
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(_finite(doc), fh, indent=2, allow_nan=False)
            fh.write("\n")
    if failures:
        print(f"FAILED: {failures} request(s) got no decision", file=sys.stderr)
        return 1
    return 0


def mqtt_section(args: argparse.Namespace, demo: SiteBundle, pop: Population, key: bytes, levels: list[int],
                 doc: dict[str, Any]) -> int:
    rng = random.Random(args.seed + 2)
    pool = edge_pool(pop, key, demo, rng)
    device_doors = {d.id: list(d.doors) for d in demo.devices.values()}
    broker = MosquittoBroker().start()
    tmp_fs = filesystem_of(Path(tempfile.gettempdir()))
    try:
        run_id = uuid.uuid4().hex[:8]
        echo = EchoResponder("127.0.0.1", broker.port, run_id)
        try:
            echo_rows = run_edges(broker, "echo", run_id, demo.site.id, 0.0, device_doors, pool, levels, args.seconds,
                                  "echo")
        finally:
            echo.close()
        fresh = run_server(demo, pop, key, broker, pool, levels, args.seconds, "server", preload=False)
        full_levels = [c for c in levels if c <= 10] or levels[:1]
        full = run_server(demo, pop, key, broker, pool, full_levels, args.seconds, "server, all present",
                          preload=True)
    finally:
        broker.stop()
    breakdown = directory_breakdown(demo, pop, key, pool, [0, 10_000, len(pop.people)])

    print(f"2. The server over MQTT ({len(pop.people):,} people), private Mosquitto on 127.0.0.1:{broker.port} "
          "(set_tcp_nodelay true, max_queued_messages 0)")
    print(f"   server     : server.app.bootstrap in this process, fresh data dir in {tempfile.gettempdir()} "
          f"({tmp_fs}), clock set to {datetime(*DAY).strftime('%a')} "
          f"{SERVER_START[0]:02d}:{SERVER_START[1]:02d} {demo.site.timezone}, running in real time")
    print(f"   start-up   : bootstrap {fresh.bootstrap_s:.2f} s (store, hashing {len(pop.cards):,} cards, directory) "
          f"+ start {fresh.start_s:.2f} s (connect, compile + sign + publish {len(device_doors)} device policies) "
          f"= {fresh.bootstrap_s + fresh.start_s:.2f} s until it answers; with {full.presence_loaded:,} presence rows: "
          f"{full.bootstrap_s:.2f} + {full.start_s:.2f} s")
    owned = "; ".join(f"{d}: {', '.join(ds)}" for d, ds in device_doors.items())
    print(f"   edges      : one paho client per demo device ({owned}) "
          f"in a spawned child process, QoS 1, TCP_NODELAY, requests on the devices' own request topics, "
          f"closed loop over {len(pool):,} requests (the day-time mix above)")
    print("   echo       : the same two clients and harness; a paho client in the server's process republishes each "
          "request on a reply topic (QoS 1)")
    print(f"   levels     : {WARMUP_S:g} s warm-up, then {args.seconds:g} s measured per level; latency = publish to "
          f"answer received, by transaction")
    print("   events     : no events or snapshots are sent: the event store is not exercised. The store's presence "
          "table is: the server writes a grant's presence on its store thread, off the network thread.")
    header = (f"   {'measurement':<22} {'outst.':>6} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
              f"{'n':>7} {'lost':>5} {'p50/echo':>9} {'present':>8} {'lab wait':>8}")
    print(header)
    print("   " + "-" * (len(header) - 3))
    echo_by_c = {r.concurrency: r for r in echo_rows}
    failures = 0
    for row in echo_rows + fresh.rows + full.rows:
        ref = echo_by_c.get(row.concurrency)
        ratio = f"{row.stat_ms(50) / ref.stat_ms(50):.1f}x" if ref is not None and row is not ref and ref.latencies_ns \
            else ""
        present = f"{row.presence_end:,}" if row.presence_end is not None else ""
        waiting = f"{row.lab_pending_end:,}" if row.lab_pending_end is not None else ""
        print(f"   {row.name:<22} {row.concurrency:>6} {fmt_int(row.per_s):>12} {row.stat_ms(50):>8.2f} "
              f"{row.stat_ms(99):>8.2f} {row.stat_ms(100):>8.2f} {len(row.latencies_ns):>7,} {row.lost:>5} {ratio:>9} "
              f"{present:>8} {waiting:>8}")
        failures += row.lost
    reasons: Counter[str] = Counter()
    for row in fresh.rows + full.rows:
        reasons.update(row.reasons)
    print("   present = people in the server's presence map after the level; lab wait = badges pending at the lab "
          "door (escort/partner window)")
    print(f"   server reasons: {_reasons(dict(reasons.most_common()))}")
    print(f"   server counters: {fresh.counters} / all present: {full.counters}")
    print()
    print("   Where the server's time goes: Directory.decide (lock, decide, commit, and here, with no store thread,")
    print("   the SQLite upsert of the people a grant moved, run inline) called in-process, no MQTT, N people present")
    print("   at the start (loaded from the store), the server's clock in real time; its parts timed apart")
    header = (f"   {'present':>8} {'calls':>6} {'Directory.decide':>17} {'p99':>8} {'decide()':>9} {'present':>8} "
              f"{'upsert':>8} {'lab wait':>9}")
    print(header)
    print(f"   {'at start':>8} {'':>6} {'p50 µs':>17} {'µs':>8} {'p50 µs':>9} {'at end':>8} "
          f"{'µs':>8} {'at end':>9}")
    print("   " + "-" * (len(header) - 3))
    for b in breakdown:
        print(f"   {b['present']:>8,} {b['calls']:>6} {b['directory_median_us']:>17.1f} {b['directory_p99_us']:>8.1f} "
              f"{b['decide_median_us']:>9.2f} {b['present_end']:>8,} "
              f"{b['presence_upsert_median_us']:>8.1f} {b['lab_pending_end']:>9,}")
    print("   Directory.decide is called up to 2,000 times (at most ~2 s); grants add people to presence as it goes.")
    print("   upsert = Store.upsert of one presence row (a transaction, committed: WAL, SQLite's default synchronous);")
    print("   decide() here runs on the directory's live state, whose lab door collects every badge of the last 30 s")
    print()

    def row_doc(r: MqttRow) -> dict[str, Any]:
        return {"name": r.name, "concurrency": r.concurrency, "decisions_per_s": r.per_s, "p50_ms": r.stat_ms(50),
                "p99_ms": r.stat_ms(99), "max_ms": r.stat_ms(100), "n": len(r.latencies_ns), "lost": r.lost,
                "present_end": r.presence_end, "lab_pending_end": r.lab_pending_end, "reasons": r.reasons}

    doc["mqtt"] = {
        "broker": broker.url, "tmp_fs": tmp_fs, "seconds_per_level": args.seconds, "warmup_s": WARMUP_S,
        "startup": {"bootstrap_s": fresh.bootstrap_s, "start_s": fresh.start_s,
                    "all_present_bootstrap_s": full.bootstrap_s, "all_present_start_s": full.start_s,
                    "presence_rows": full.presence_loaded},
        "rows": [row_doc(r) for r in echo_rows + fresh.rows + full.rows],
        "server_counters": fresh.counters,
        "directory_breakdown": breakdown,
    }
    return failures


def _finite(value: Any) -> Any:
    """NaN becomes null, so the JSON stays strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
