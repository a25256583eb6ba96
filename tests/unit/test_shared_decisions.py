"""Several workers deciding on one shared state in PostgreSQL (server/shared_decisions.py): exact global rules.

Workers here are threads, each with its own connection and its own SharedDecisions: the races that matter happen
in PostgreSQL, between transactions, which is what several worker processes would produce. A property test drives
them with concurrent badges at the same areas, then checks the stored history two ways: it is what one server
would have decided given the same requests in the history's order (so every single-server rule test carries over),
and, independently of decide(), no rule is broken in it: occupancy never above its limit, no hard anti-passback
violation granted, no two-person grant without a partner who was waiting at that door. Two targeted tests pin the PostgreSQL behaviour
the one-call read (dk_read) rests on: a read queued behind a lock sees what the lock's holder committed.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
from datetime import time
from typing import Any, Callable

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from doorkeep.credentials import card_hash, last4, pin_hash
from doorkeep.decision import AccessRequest, Presence, Reason
from doorkeep.model import (
    WEEKDAYS,
    AccessEntry,
    AccessLevel,
    AntiPassback,
    Area,
    Credential,
    Door,
    Person,
    PersonKind,
    Rules,
    Schedule,
    Site,
    TimeWindow,
)
from server.shared_decisions import SharedDecisions, _array, ensure_schema, logged_decision, replay
from simulators.wait import wait_until
from tests.pg import pg_url  # noqa: F401  (a fixture)

KEY = b"k" * 32
T0 = 1_780_000_000.0  # a Thursday, 2026
STAFF = [f"p{i}" for i in range(6)]
VISITORS = ["v0", "v1"]
PIN = "1234"


def card(person: str) -> str:
    return card_hash(KEY, "em4100", "0F" + person.encode().hex().upper().ljust(8, "0"))


def build_site(site_id: str = "t") -> Site:
    """A lobby (hard anti-passback, at most 3), a two-person lab (at most 2), a vault visitors need an escort into
    (hard anti-passback, a PIN at its door), each with a way in and a way out."""
    areas = {
        "outside": Area("outside", "Outside"),
        "lobby": Area("lobby", "Lobby", anti_passback=AntiPassback.HARD, max_occupancy=3),
        "lab": Area("lab", "Lab", restricted=True, two_person=True, max_occupancy=2),
        "vault": Area("vault", "Vault", restricted=True, escort_required=True, anti_passback=AntiPassback.HARD),
    }
    doors = {d.id: d for d in (
        Door("lobby_in", "Lobby in", "outside", "lobby"), Door("lobby_out", "Lobby out", "lobby", "outside"),
        Door("lab_in", "Lab in", "lobby", "lab"), Door("lab_out", "Lab out", "lab", "lobby"),
        Door("vault_in", "Vault in", "lobby", "vault", pin_required=True), Door("vault_out", "Vault out", "vault", "lobby"),
    )}
    always = Schedule("always", "Always", (TimeWindow(frozenset(WEEKDAYS), time(0, 0), None),))
    level = AccessLevel("all", "All", tuple(AccessEntry(a, "always") for a in areas))
    people = {p: Person(p, p.upper(), access_levels=("all",), pin_hash=pin_hash(KEY, PIN)) for p in STAFF}
    people.update({v: Person(v, v.upper(), kind=PersonKind.VISITOR, allowed_areas=("lobby", "vault"),
                             valid_from=T0 - 3600, valid_until=T0 + 86_400) for v in VISITORS})
    creds = {card(p): Credential(card(p), last4("0F" + p.encode().hex()), "em4100", p) for p in people}
    return Site(site_id, "Test", "UTC", areas, doors, {"always": always}, {"all": level}, people, creds,
                Rules(escort_window_s=20, two_person_window_s=20, pin_max_attempts=2, pin_lockout_s=30))


DOORS = ["lobby_in", "lobby_out", "lab_in", "lab_out", "vault_in", "vault_out"]
_sites = itertools.count()


def workers(url: str, site: Site, n: int) -> list[SharedDecisions]:
    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(url, autocommit=True)

    with connect() as conn:
        ensure_schema(conn)
        # Who is where and the lockdowns are the store's tables, one site per database: each test (and each
        # hypothesis example, under its own site id for the state keyed by site) starts with nobody anywhere.
        conn.execute("TRUNCATE presence, lockdowns")
    return [SharedDecisions(connect, site.id, lambda: site, worker=f"w{i}", keep_history=True) for i in range(n)]


def run_concurrently(deciders: list[SharedDecisions], jobs: list[Callable[[SharedDecisions], None]]) -> None:
    """Each decider takes every n-th job on its own thread; all start together."""
    start = threading.Barrier(len(deciders))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        start.wait()
        try:
            for job in jobs[i::len(deciders)]:
                job(deciders[i])
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(deciders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a worker hung (a lock never released?)"
    assert errors == []


def rule_breaches(site: Site, history: list[dict[str, Any]]) -> list[str]:
    """Rules broken in ``history`` (in its order), checked without decide(): what a reviewer would check by hand."""
    where: dict[str, str] = {}
    waiting: dict[tuple[str, str], float] = {}  # (door, person) -> when they badged and were told to wait
    breaches = []
    for row in history:
        door = site.doors[row["door"]]
        person, at = row["person"], row["at"]
        reason = Reason(row["reason"])
        if reason is Reason.AWAITING_SECOND_PERSON:
            waiting[door.id, person] = at
        if not reason.granted:
            continue
        companions = json.loads(row["companions"])
        area = site.areas[door.to_area]
        if area.anti_passback is AntiPassback.HARD and where.get(person, door.from_area) != door.from_area:
            breaches.append(f"seq {row['seq']}: {person} granted into {area.id} from {where[person]} (hard APB)")
        if area.two_person and site.people[person].kind is not PersonKind.VISITOR:
            partners = [c for c in companions if c != person and
                        0 <= at - waiting.get((door.id, c), float("-inf")) <= site.rules.two_person_window_s]
            if not partners:
                breaches.append(f"seq {row['seq']}: {person} granted into two-person {area.id} with no partner")
        for mover in (person, *companions):
            where[mover] = area.id
            waiting.pop((door.id, mover), None)
        inside = sum(1 for a in where.values() if a == area.id)
        if area.max_occupancy is not None and inside > area.max_occupancy:
            breaches.append(f"seq {row['seq']}: {area.id} holds {inside} > {area.max_occupancy}")
    return breaches


def check_history(site: Site, decider: SharedDecisions, expected: int) -> list[dict[str, Any]]:
    history = decider.history()
    assert len(history) == expected, "every decision is in the history once"
    assert [logged_decision(r) for r in history] == replay(site, history), \
        "the workers decided as one server would have, in the history's order"
    assert rule_breaches(site, history) == []
    state: dict[str, Presence] = {}
    for row in history:  # where the granted moved people last, by the history
        if Reason(row["reason"]).granted:
            for mover in (row["person"], *json.loads(row["companions"])):
                state[mover] = Presence(site.doors[row["door"]].to_area, row["at"])
    assert decider.presence() == state, "the stored presence is what the history's grants leave"
    return history


badge = st.tuples(st.sampled_from(STAFF + VISITORS), st.sampled_from(DOORS), st.sampled_from([PIN, PIN, "0000"]))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(badges=st.lists(badge, min_size=30, max_size=90))
def test_concurrent_workers_decide_as_one_server_and_break_no_rule(pg_url: str, badges: list[tuple[str, str, str]]
                                                                     ) -> None:
    site = build_site(f"s{next(_sites)}")
    deciders = workers(pg_url, site, 3)
    # Badges come close together (0.2 s apart: partners pair, the lobby fills), each decided by whichever worker
    # the broker's shared subscription would hand it to.
    jobs = [(lambda d, p=p, door=door, pin=pin, at=T0 + i * 0.2:
             d.decide(AccessRequest(door, card(p), pin_hash(KEY, pin)), at)) for i, (p, door, pin) in enumerate(badges)]
    try:
        run_concurrently(deciders, jobs)
        check_history(site, deciders[0], len(badges))
    finally:
        for d in deciders:
            d.close()


def test_a_rush_at_one_area_never_overfills_it_and_pairs_each_partner_once(pg_url: str) -> None:
    """Everyone at once: six people at the lobby (at most 3), then the three inside at the two-person lab (at most 2),
    on 4 workers."""
    site = build_site("rush")
    deciders = workers(pg_url, site, 4)
    try:
        run_concurrently(deciders, [lambda d, p=p: d.decide(AccessRequest("lobby_in", card(p)), T0) for p in STAFF])
        granted = [r for r in deciders[0].history() if Reason(r["reason"]).granted]
        assert len(granted) == 3, "the lobby holds 3: the other three are refused occupancy_full"
        inside = sorted(r["person"] for r in granted)
        run_concurrently(deciders, [lambda d, p=p: d.decide(AccessRequest("lab_in", card(p)), T0 + 1) for p in inside])
        history = check_history(site, deciders[0], 9)
        lab = [r for r in history[6:] if Reason(r["reason"]).granted]
        assert len(lab) == 1 and lab[0]["reason"] == "granted_two_person"
        assert len({lab[0]["person"], *json.loads(lab[0]["companions"])}) == 2, "two people, two distinct ones"
        # Whoever came first waited, the second paired with them, the third found the lab full (2 inside).
        assert [r["reason"] for r in history[6:]] == ["awaiting_second_person", "granted_two_person", "occupancy_full"]
    finally:
        for d in deciders:
            d.close()


def test_pin_lockout_and_moves_are_shared_across_workers(pg_url: str) -> None:
    site = build_site("pins")
    a, b = workers(pg_url, site, 2)
    try:
        assert a.move(["p0", "nobody"], "lobby", T0) == ["p0"]
        wrong = AccessRequest("vault_in", card("p0"), pin_hash(KEY, "0000"))
        assert a.decide(wrong, T0 + 1).decision.reason is Reason.WRONG_PIN
        assert b.decide(wrong, T0 + 2).decision.reason is Reason.WRONG_PIN  # the second, on the other worker
        right = AccessRequest("vault_in", card("p0"), pin_hash(KEY, PIN))
        assert a.decide(right, T0 + 3).decision.reason is Reason.PIN_LOCKED_OUT, "the lockout is shared"
        assert b.decide(right, T0 + 40).decision.granted
        assert a.presence()["p0"] == Presence("vault", T0 + 40)
        assert b.move(["p0"], "lobby", T0 + 10) == [], "an older passage never undoes a later one"
        b.set_lockdown("lobby", True)
        assert a.decide(AccessRequest("lobby_in", card("p1")), T0 + 41).decision.reason is Reason.LOCKDOWN
        b.set_lockdown("lobby", False)
        assert a.decide(AccessRequest("lobby_in", card("p1")), T0 + 42).decision.granted
    finally:
        a.close()
        b.close()



def waiting_on_an_advisory_lock(conn: psycopg.Connection[Any]) -> bool:
    """Whether some session of this test's database is queued for an advisory lock."""
    row = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND database = "
                       "(SELECT oid FROM pg_database WHERE datname = current_database())").fetchone()
    return row is not None and row[0] > 0


def test_a_decision_queued_behind_a_door_lock_reads_what_its_holder_committed(pg_url: str) -> None:
    """dk_read takes the door's lock, then reads who waits there in a separate query inside the (volatile)
    function: that query's snapshot is taken after the lock was granted, so a partner whom the lock's previous
    holder made wait is seen, though its commit came after the call started. (A STABLE dk_read fails this.)"""
    site = build_site("snapshot")
    (decider,) = workers(pg_url, site, 1)
    holder = psycopg.connect(pg_url, autocommit=True)
    try:
        assert decider.move(["p0", "p1"], "lobby", T0) == ["p0", "p1"]
        holder.execute("BEGIN")
        holder.execute("SELECT dk_lock('door', %s, ARRAY['lab_in'])", (site.id,))
        holder.execute("INSERT INTO dk_pending (site, door, ord, person, at, kind) VALUES (%s, 'lab_in', 0, 'p0', %s, "
                       "'two_person')", (site.id, T0 + 1))
        result: list[Any] = []
        badge = threading.Thread(target=lambda: result.append(
            decider.decide(AccessRequest("lab_in", card("p1")), T0 + 2).decision))
        badge.start()
        assert wait_until(lambda: waiting_on_an_advisory_lock(holder), timeout=10), "the decision never queued"
        holder.execute("COMMIT")
        badge.join(timeout=10)
        assert result, "the decision never finished"
        assert result[0].reason is Reason.GRANTED_TWO_PERSON and result[0].companions == ("p0",), \
            "the read after the lock saw the partner committed while the call waited"
    finally:
        holder.close()
        decider.close()


def test_badges_into_an_area_without_a_limit_at_two_doors_never_wait_for_each_other(pg_url: str) -> None:
    """Only a head count reads other people's presence, so only areas with a limit are locked: two people entering
    an unlimited hall by two doors share no lock (a busy campus lobby with no limit must not serialise every
    decision). The first decision is held open with its locks taken; the second must finish meanwhile."""
    base = build_site("hall")
    hall = Area("hall", "Hall")
    site = dataclasses.replace(base, areas={**base.areas, "hall": hall}, doors={
        **base.doors, "east_in": Door("east_in", "East in", "outside", "hall"),
        "west_in": Door("west_in", "West in", "outside", "hall")},
        access_levels={"all": AccessLevel("all", "All", tuple(AccessEntry(a, "always") for a in [*base.areas, "hall"]))})
    (decider,) = workers(pg_url, site, 1)
    holder = psycopg.connect(pg_url, autocommit=True)
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT * FROM dk_read(%s, 'east_in', 'p0', NULL, '{hall}', '{}', '{lab,lobby}')", (site.id,))
        result: list[Any] = []
        badge = threading.Thread(target=lambda: result.append(
            decider.decide(AccessRequest("west_in", card("p1")), T0).decision))
        badge.start()
        badge.join(timeout=5)
        assert result and result[0].granted, "a decision into an unlimited area waited on another door's decision"
        assert not waiting_on_an_advisory_lock(holder)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        decider.close()


def test_a_lock_and_a_read_in_one_statement_would_miss_that_commit(pg_url: str) -> None:
    """Why dk_read reads in separate queries: one statement has one snapshot, taken before its lock is granted."""
    holder = psycopg.connect(pg_url, autocommit=True)
    reader = psycopg.connect(pg_url, autocommit=True)
    try:
        holder.execute("CREATE TABLE t (n INTEGER)")
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(1, 2)")
        holder.execute("INSERT INTO t VALUES (1)")
        seen: list[Any] = []
        read = threading.Thread(target=lambda: seen.append(reader.execute(
            "SELECT pg_advisory_xact_lock(1, 2), (SELECT count(*) FROM t)").fetchone()))
        read.start()
        assert wait_until(lambda: waiting_on_an_advisory_lock(holder), timeout=10)
        holder.execute("COMMIT")
        read.join(timeout=10)
        assert seen and seen[0][1] == 0, "the statement read with the snapshot it took before waiting"
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,), "the next statement sees the row"
    finally:
        holder.close()
        reader.close()


def test_ids_and_times_reach_postgresql_unchanged_as_array_literals(pg_url: str) -> None:
    """The decisions pass their arrays as text literals (_array): any id, however quoted, and any float must arrive
    as they were, and none may turn into NULL."""
    ids = ['p"1', "back\\slash", "{braces,comma}", "NULL", "", " spaced ", "é✓", "a'b"]
    times = [T0 + 0.1, 1e-300, -0.0, 1_780_000_000.123456789]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT %s::text[], %s::float8[]", (_array(ids), _array(times))).fetchone() == (ids, times)
    assert _array([]) is None, "no items: NULL, which the functions read as none"
