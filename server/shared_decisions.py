"""Decisions several server workers share, exact across them (issue 20; docs/scale.md "Several server workers").

One server process keeps the rules' state (doorkeep.decision.DecisionState: who is where, badges waiting for a
partner at each door, wrong PINs, first-person-in) in memory and decides under one lock. Several workers on one
site need that state in one place and every decision to see every earlier one that it could depend on. Here the
state lives in PostgreSQL and each decision is one transaction that:

1. takes transaction-scoped advisory locks on everything the decision may read or change, always in one global
   order: the door (its waiting partners, its first-in day), then the people (the badge's holder and everyone
   waiting at the door: the only people decide() looks at), then the areas (where the door leads, and where each
   of those people is now, which a move would leave), each class sorted;
2. reads exactly those rows, builds a DecisionState holding only them (with the areas' head counts), runs the same
   pure ``decide()`` and ``commit()`` as a single server, and writes back what ``commit()`` changed;
3. commits, which releases the locks.

Why it cannot double-grant: two decisions that could affect each other share a lock (the same door, the same
person, or an area one enters or leaves), so PostgreSQL runs them one after the other, and the second reads what
the first wrote. Decisions that share no lock touch disjoint rows and commute. The locks are taken in one order
(door < people < areas, sorted within each), so two decisions never wait on each other in a cycle; the people at a
door can be read only after its lock, and the areas only after the people's, which is exactly that order. The
history (``dk_decision_log``, optional) numbers each decision while its locks are held, so replaying it in that
order through the pure functions gives the same decisions: tests/unit/test_shared_decisions.py checks this.

A decision costs a handful of round trips to PostgreSQL; only decisions that share a door, a person or an area
wait for each other. Its commit does not wait for the WAL to reach the disk (``synchronous_commit = off`` on
the worker's connection): the next decision sees it at once; what a PostgreSQL crash can lose is the last
fraction of a second of who-is-where (the events themselves are stored by the event store), never a
half-written decision, and the doors' own answers were already given. An offline grant's movers, a turnstile passage and a floor chosen move people through
:meth:`SharedDecisions.move`, under the same person and area locks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import psycopg

from doorkeep.decision import (
    AccessRequest,
    Decision,
    DecisionState,
    Pending,
    Presence,
    Reason,
    commit,
    decide,
)
from doorkeep.model import Site
from server.errors import ServerError

log = logging.getLogger(__name__)

#: The tables of the shared decision state, created by :func:`ensure_schema` (idempotent). ``site`` first in
#: every key, so one database may hold several sites.
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dk_presence (site TEXT NOT NULL, person TEXT NOT NULL, area TEXT NOT NULL, "
    "since DOUBLE PRECISION NOT NULL, PRIMARY KEY (site, person))",
    "CREATE INDEX IF NOT EXISTS dk_presence_area ON dk_presence (site, area)",
    "CREATE TABLE IF NOT EXISTS dk_pending (site TEXT NOT NULL, door TEXT NOT NULL, ord INTEGER NOT NULL, "
    "person TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (site, door, ord))",
    "CREATE TABLE IF NOT EXISTS dk_pin_failures (site TEXT NOT NULL, credential TEXT NOT NULL, "
    "failures INTEGER NOT NULL, locked_until DOUBLE PRECISION NOT NULL, PRIMARY KEY (site, credential))",
    "CREATE TABLE IF NOT EXISTS dk_first_in (site TEXT NOT NULL, door TEXT NOT NULL, day TEXT NOT NULL, "
    "PRIMARY KEY (site, door))",
    "CREATE TABLE IF NOT EXISTS dk_lockdown (site TEXT NOT NULL, scope TEXT NOT NULL, PRIMARY KEY (site, scope))",
    "CREATE TABLE IF NOT EXISTS dk_decision_log (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "site TEXT NOT NULL, worker TEXT NOT NULL, door TEXT NOT NULL, credential TEXT NOT NULL, pin TEXT, "
    "floor TEXT, at DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, person TEXT, companions TEXT NOT NULL, "
    "violation TEXT, floors TEXT NOT NULL)",
)

#: Lock classes, taken in this order within a transaction (see the module docstring).
DOOR, PERSON, AREA = "door", "person", "area"

#: A decision that PostgreSQL aborted to break a deadlock (only possible if two lock keys collide across the
#: 32-bit hashes) or a serialization failure is run again, at most this many times.
RETRIES = 5

SITE_SCOPE = "site"


class SharedDecisionError(ServerError):
    """The shared decision state could not be read or written (PostgreSQL down, schema missing)."""


def _key(value: str) -> int:
    """A signed 32-bit advisory-lock key. Two ids may share one (a lock then covers both: slower, never wrong)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=4).digest(), "big", signed=True)


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the shared decision tables if missing (each worker may call it at start)."""
    with conn.transaction():
        # Two workers starting at once would race on CREATE ... IF NOT EXISTS (a unique violation in the catalogue).
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key("doorkeep shared decisions schema"),))
        for statement in SCHEMA:
            conn.execute(statement)


@dataclass
class _View(DecisionState):
    """The rows one decision locked and read, as the DecisionState the pure rules take.

    ``counts``: head count of each area the door leads into, from PostgreSQL (the view holds only the locked
    people's presence, so it cannot count an area itself)."""

    counts: dict[str, int] = field(default_factory=dict)

    def occupancy(self, area: str) -> int:
        return self.counts.get(area, 0)


@dataclass(frozen=True)
class Decided:
    """A decision and its number in the shared history (None when the history is not kept)."""

    decision: Decision
    seq: int | None


class SharedDecisions:
    """One worker's access to the shared decision state: decide, move people, lockdowns.

    ``connect``: opens this worker's own connection (autocommit; each call here runs its own transaction). Not
    thread-safe: a worker decides on one thread, as the single server does under its lock; give each thread its own
    instance. ``site``: the live site, read at each decision (the worker's directory swaps it on a change)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], site_id: str, site: Callable[[], Site], *,
                 worker: str = "worker", keep_history: bool = False) -> None:
        self._connect = connect
        self._conn: psycopg.Connection[Any] | None = None
        self.site_id = site_id
        self._site = site
        self.worker = worker
        self.keep_history = keep_history
        self._ns = {cls: _key(f"{site_id}\0{cls}") for cls in (DOOR, PERSON, AREA)}
        self.retries = 0

    # ------------------------------------------------------------ connection

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._connect()
                # A commit does not wait for its WAL flush (see the module docstring): other workers see it at
                # once, and a PostgreSQL crash can lose only the last moments of presence, never half a decision.
                self._conn.execute("SET synchronous_commit = off")
            except psycopg.Error as exc:
                raise SharedDecisionError(f"cannot reach the shared decision state: {exc}") from exc
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self, work: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """``work`` in one transaction, again after a deadlock or serialization failure; other errors raise."""
        for attempt in range(RETRIES + 1):
            conn = self._connection()
            try:
                # Pipeline mode: the statements of a step leave in one write and their results come back together,
                # each still run (and given its snapshot) only after the one before it, so a read queued behind a
                # lock sees what the lock's previous holder committed. A decision is then about four round trips.
                with conn.pipeline(), conn.transaction():
                    return work(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == RETRIES:
                    raise
                self.retries += 1
            except psycopg.OperationalError as exc:
                self.close()  # a broken connection is opened again by the next call
                raise SharedDecisionError(f"the shared decision state is unreachable: {exc}") from exc
        raise AssertionError("unreachable")

    def _lock(self, conn: psycopg.Connection[Any], cls: str, ids: Iterable[str]) -> None:
        """Advisory locks on ``ids`` of one class, in ascending key order (one statement; the function is
        evaluated row by row in the array's order, which is sorted here)."""
        keys = sorted({_key(i) for i in ids})
        if keys:
            conn.execute("SELECT pg_advisory_xact_lock(%s, k) FROM unnest(%s::int4[]) AS k", (self._ns[cls], keys))

    # ------------------------------------------------------------ reads

    def _presence(self, conn: psycopg.Connection[Any], people: Sequence[str]) -> dict[str, Presence]:
        rows = conn.execute("SELECT person, area, since FROM dk_presence WHERE site = %s AND person = ANY(%s)",
                            (self.site_id, list(people))).fetchall()
        return {person: Presence(area, since) for person, area, since in rows}

    def _counts(self, conn: psycopg.Connection[Any], areas: Sequence[str]) -> dict[str, int]:
        rows = conn.execute("SELECT area, count(*) FROM dk_presence WHERE site = %s AND area = ANY(%s) GROUP BY area",
                            (self.site_id, list(areas))).fetchall()
        return {area: int(n) for area, n in rows}

    # ------------------------------------------------------------ decide

    def decide(self, request: AccessRequest, now: float) -> Decided:
        """Decide ``request`` at ``now`` and apply its effects, exactly as one server would, whatever the other
        workers decide meanwhile."""
        return self._run(lambda conn: self._decide(conn, request, now))  # type: ignore[no-any-return]

    def _decide(self, conn: psycopg.Connection[Any], request: AccessRequest, now: float) -> Decided:
        site = self._site()
        door = site.doors.get(request.door)
        cred = site.credentials.get(request.credential_hash)
        if door is None or cred is None:
            # decide() refuses these without reading any state: nothing to lock, nothing to write.
            return self._logged(conn, request, now, decide(request, site, DecisionState(), now))
        # Step 1: the door, then what waits at it, the lockdowns in force and its first-in day (one statement).
        self._lock(conn, DOOR, [door.id])
        step1 = conn.execute(
            "SELECT (SELECT coalesce(json_agg(json_build_array(person, at, kind) ORDER BY ord), '[]') FROM dk_pending "
            "WHERE site = %(site)s AND door = %(door)s), (SELECT coalesce(array_agg(scope), '{}') FROM dk_lockdown "
            "WHERE site = %(site)s), (SELECT day FROM dk_first_in WHERE site = %(site)s AND door = %(door)s)",
            {"site": self.site_id, "door": door.id})
        waiting, scope_list, first_day = step1.fetchone() or ([], [], None)
        pending = [Pending(person, float(at), kind) for person, at, kind in waiting]
        scopes = set(scope_list)
        first_before = str(first_day) if first_day is not None and door.first_person_in else None
        # Step 2: the people decide() may look at (the holder, everyone waiting here), then where they are and
        # the card's wrong PINs (the card is its holder's: the holder's lock covers it).
        people = sorted({cred.person, *(p.person for p in pending)})
        self._lock(conn, PERSON, people)
        step2 = conn.execute(
            "SELECT (SELECT coalesce(json_agg(json_build_array(person, area, since)), '[]') FROM dk_presence "
            "WHERE site = %(site)s AND person = ANY(%(people)s)), (SELECT json_build_array(failures, locked_until) "
            "FROM dk_pin_failures WHERE site = %(site)s AND credential = %(cred)s)",
            {"site": self.site_id, "people": people, "cred": cred.hash})
        seen, pin_row = step2.fetchone() or ([], None)
        presence = {person: Presence(area, float(since)) for person, area, since in seen}
        pin_before = (int(pin_row[0]), float(pin_row[1])) if pin_row is not None and door.pin_required else None
        # Step 3: the areas the door leads into and those the people would leave, then the head counts.
        entered = list(door.entered)
        self._lock(conn, AREA, [*entered, *(p.area for p in presence.values())])
        state = _View(presence=dict(presence), lockdown_site=SITE_SCOPE in scopes,
                      lockdown_areas=scopes - {SITE_SCOPE}, counts=self._counts(conn, entered))
        if pending:
            state.pending[door.id] = list(pending)
        if pin_before is not None:
            state.pin_failures[cred.hash] = pin_before
        if first_before is not None:
            state.first_in[door.id] = first_before

        decision = decide(request, site, state, now)
        commit(request, decision, site, state, now)

        moved = [(p, state.presence[p]) for p in people if p in state.presence and state.presence[p] != presence.get(p)]
        if moved:
            self._put_presence(conn, [p for p, _ in moved], [w.area for _, w in moved], [w.since for _, w in moved])
        after = state.pending.get(door.id, [])
        if after != pending:
            conn.execute("DELETE FROM dk_pending WHERE site = %s AND door = %s", (self.site_id, door.id))
            if after:
                conn.cursor().executemany(
                    "INSERT INTO dk_pending (site, door, ord, person, at, kind) VALUES (%s, %s, %s, %s, %s, %s)",
                    [(self.site_id, door.id, i, p.person, p.at, p.kind) for i, p in enumerate(after)])
        pin_after = state.pin_failures.get(cred.hash)
        if door.pin_required and pin_after != pin_before:
            if pin_after is None:
                conn.execute("DELETE FROM dk_pin_failures WHERE site = %s AND credential = %s",
                             (self.site_id, cred.hash))
            else:
                conn.execute("INSERT INTO dk_pin_failures (site, credential, failures, locked_until) "
                             "VALUES (%s, %s, %s, %s) ON CONFLICT (site, credential) DO UPDATE SET "
                             "failures = excluded.failures, locked_until = excluded.locked_until",
                             (self.site_id, cred.hash, pin_after[0], pin_after[1]))
        first_after = state.first_in.get(door.id)
        if first_after is not None and first_after != first_before:
            conn.execute("INSERT INTO dk_first_in (site, door, day) VALUES (%s, %s, %s) "
                         "ON CONFLICT (site, door) DO UPDATE SET day = excluded.day", (self.site_id, door.id, first_after))
        # Step 4: the writes, the history row and the commit leave together.
        return self._logged(conn, request, now, decision)

    def _put_presence(self, conn: psycopg.Connection[Any], people: list[str], areas: list[str],
                      since: list[float]) -> None:
        """Upsert where each of ``people`` is, in one statement."""
        conn.execute("INSERT INTO dk_presence (site, person, area, since) SELECT %s, * FROM "
                     "unnest(%s::text[], %s::text[], %s::float8[]) ON CONFLICT (site, person) DO UPDATE SET "
                     "area = excluded.area, since = excluded.since", (self.site_id, people, areas, since))

    def _logged(self, conn: psycopg.Connection[Any], request: AccessRequest, now: float, decision: Decision) -> Decided:
        """The decision, numbered in the history while its locks are still held (when the history is kept)."""
        if not self.keep_history:
            return Decided(decision, None)
        row = conn.execute(
            "INSERT INTO dk_decision_log (site, worker, door, credential, pin, floor, at, reason, person, companions, "
            "violation, floors) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING seq",
            (self.site_id, self.worker, request.door, request.credential_hash, request.pin_hash, request.floor, now,
             decision.reason.value, decision.person, json.dumps(list(decision.companions)), decision.violation,
             json.dumps(list(decision.floors)))).fetchone()
        return Decided(decision, int(row[0]) if row is not None else None)

    # ------------------------------------------------------------ moves and lockdowns

    def move(self, people: Iterable[str], area: str, since: float) -> list[str]:
        """Move ``people`` into ``area`` as of ``since`` (an offline grant's movers, a turnstile passage, a floor
        chosen), each unless a later passage of theirs is already recorded; returns who moved."""
        site = self._site()
        wanted = sorted({p for p in people if p in site.people})
        if not wanted or area not in site.areas:
            return []

        def work(conn: psycopg.Connection[Any]) -> list[str]:
            self._lock(conn, PERSON, wanted)
            presence = self._presence(conn, wanted)
            self._lock(conn, AREA, [area, *(p.area for p in presence.values())])
            moved = [p for p in wanted if p not in presence or presence[p].since <= since]
            if moved:
                self._put_presence(conn, moved, [area] * len(moved), [since] * len(moved))
            return moved

        return self._run(work)  # type: ignore[no-any-return]

    def set_lockdown(self, scope: str, active: bool) -> None:
        """A lockdown of ``scope`` (an area id or ``"site"``) starts or ends for every worker's next decision."""
        def work(conn: psycopg.Connection[Any]) -> None:
            if active:
                conn.execute("INSERT INTO dk_lockdown (site, scope) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                             (self.site_id, scope))
            else:
                conn.execute("DELETE FROM dk_lockdown WHERE site = %s AND scope = %s", (self.site_id, scope))

        self._run(work)

    def presence(self) -> dict[str, Presence]:
        """Everyone's last known area (the muster list, a worker's desk)."""
        def work(conn: psycopg.Connection[Any]) -> dict[str, Presence]:
            rows = conn.execute("SELECT person, area, since FROM dk_presence WHERE site = %s",
                                (self.site_id,)).fetchall()
            return {person: Presence(area, since) for person, area, since in rows}

        return self._run(work)  # type: ignore[no-any-return]

    def history(self) -> list[dict[str, Any]]:
        """The decisions numbered in the shared history, in that order (for checks and replays)."""
        def work(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
            cur = conn.execute("SELECT seq, worker, door, credential, pin, floor, at, reason, person, companions, "
                               "violation, floors FROM dk_decision_log WHERE site = %s ORDER BY seq", (self.site_id,))
            rows = cur.fetchall()  # first: in pipeline mode the description arrives with the rows
            names = [c.name for c in cur.description or ()]
            return [dict(zip(names, row)) for row in rows]

        return self._run(work)  # type: ignore[no-any-return]


def replay(site: Site, history: Iterable[dict[str, Any]]) -> list[Decision]:
    """The decisions one server would have made, fed ``history``'s requests one at a time in its order."""
    state = DecisionState()
    out = []
    for row in history:
        request = AccessRequest(row["door"], row["credential"], row["pin"], row["floor"])
        decision = decide(request, site, state, row["at"])
        commit(request, decision, site, state, row["at"])
        out.append(decision)
    return out


def logged_decision(row: dict[str, Any]) -> Decision:
    """A history row's decision, to compare with :func:`replay`'s."""
    return Decision(Reason(row["reason"]), row["person"], tuple(json.loads(row["companions"])), row["violation"],
                    tuple(json.loads(row["floors"])))
