"""Decisions several server workers share, exact across them (issue 20; docs/scale.md "Several server workers").

One server process keeps the rules' state (doorkeep.decision.DecisionState: who is where, badges waiting for a
partner at each door, wrong PINs, first-person-in) in memory and decides under one lock. Several workers on one
site need that state in one place and every decision to see every earlier one that it could depend on. Here the
state lives in PostgreSQL and each decision is one transaction that:

1. takes transaction-scoped advisory locks on everything the decision may read or change, always in one global
   order: the door (its waiting partners, its first-in day), then the people (the badge's holder and everyone
   waiting at the door: the only people decide() looks at), then the areas with an occupancy limit among those the
   door leads into and those the people would leave (a head count is the only rule that reads other people's
   presence: an area without a limit is never locked), each class sorted by key;
2. reads exactly those rows, builds a DecisionState holding only them (with the limited areas' head counts), runs
   the same pure ``decide()`` and ``commit()`` as a single server, and writes back what ``commit()`` changed;
3. commits, which releases the locks.

Why it cannot double-grant: two decisions that could affect each other share a lock (the same door, the same
person, or an area with a limit that one enters or leaves), so PostgreSQL runs them one after the other, and the second reads what
the first wrote. Decisions that share no lock touch disjoint rows and commute. The locks are taken in one order
(door < people < areas, sorted within each), so two decisions never wait on each other in a cycle; the people at a
door can be read only after its lock, and the areas only after the people's, which is exactly that order. The
history (``dk_decision_log``, optional) numbers each decision while its locks are held, so replaying it in that
order through the pure functions gives the same decisions: tests/unit/test_shared_decisions.py checks this.

What a decision costs: at most four statements, each one round trip: BEGIN; ``dk_read`` (a PL/pgSQL function in
:data:`SCHEMA` that takes the three classes of locks, each followed by its reads as a separate query inside the
function, so each read gets a fresh READ COMMITTED snapshot taken after its lock); ``dk_write`` (every change and
the history row in one call); COMMIT. Both calls are prepared statements, the statements inside them are planned
once per connection (``plan_cache_mode = force_generic_plan``), arrays go as text literals, and the rows come back
as arrays rather than JSON. Pipeline mode is not used: with four statements it cost more CPU on both sides than it
saved. Only decisions that share a door, a person or an area wait for each other. A commit does not wait for the
WAL to reach the disk (``synchronous_commit = off`` on the worker's connection): the next decision sees it at once;
what a PostgreSQL crash can lose is the last fraction of a second of who-is-where (the events themselves are stored
by the event store), never a half-written decision, and the doors' own answers were already given. An offline
grant's movers, a turnstile passage and a floor chosen move people through :meth:`SharedDecisions.move`
(``dk_move``), under the same person and area locks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

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

T = TypeVar("T")

#: The tables and functions of the shared decision state, created by :func:`ensure_schema` (idempotent). Presence and
#: lockdowns are the store's tables; the state only workers keep (partners waiting, PIN counts, first-in days) and
#: every lock are keyed by ``site`` too.
SCHEMA = (
    # Who is where and the lockdowns are the store's own tables (server/migrations_pg/002_directory.sql, 025): one
    # database holds one site's store, so the muster list, the desk and `doorkeep muster` read what the workers
    # decide. Created here only in a database no store ever migrated (the tests'), exactly as the migrations do.
    "CREATE TABLE IF NOT EXISTS presence (person TEXT PRIMARY KEY, area TEXT, since DOUBLE PRECISION)",
    "CREATE INDEX IF NOT EXISTS presence_area ON presence (area)",
    "CREATE TABLE IF NOT EXISTS lockdowns (scope TEXT PRIMARY KEY, active BIGINT, changed_at DOUBLE PRECISION)",
    "CREATE TABLE IF NOT EXISTS dk_pending (site TEXT NOT NULL, door TEXT NOT NULL, ord INTEGER NOT NULL, "
    "person TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, PRIMARY KEY (site, door, ord))",
    "CREATE TABLE IF NOT EXISTS dk_pin_failures (site TEXT NOT NULL, credential TEXT NOT NULL, "
    "failures INTEGER NOT NULL, locked_until DOUBLE PRECISION NOT NULL, PRIMARY KEY (site, credential))",
    "CREATE TABLE IF NOT EXISTS dk_first_in (site TEXT NOT NULL, door TEXT NOT NULL, day TEXT NOT NULL, "
    "PRIMARY KEY (site, door))",
    "CREATE TABLE IF NOT EXISTS dk_decision_log (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "site TEXT NOT NULL, worker TEXT NOT NULL, door TEXT NOT NULL, credential TEXT NOT NULL, pin TEXT, "
    "floor TEXT, at DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, person TEXT, companions TEXT NOT NULL, "
    "violation TEXT, floors TEXT NOT NULL)",
    # dk_key(id): the signed 32-bit advisory-lock key of an id (the first 32 bits of its MD5). Two ids may share one
    # (a lock then covers both: slower, never wrong).
    "CREATE OR REPLACE FUNCTION dk_key(id TEXT) RETURNS INTEGER LANGUAGE sql IMMUTABLE PARALLEL SAFE "
    "AS $$ SELECT ('x' || substr(md5(id), 1, 8))::bit(32)::integer $$",
    # dk_lock(class, site, ids): transaction-scoped advisory locks on ``ids`` of one lock class, one at a time in
    # ascending key order. One or two ids (the common case) are ordered with least/greatest, without a query.
    """CREATE OR REPLACE FUNCTION dk_lock(p_class TEXT, p_site TEXT, p_ids TEXT[]) RETURNS void
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        ns INTEGER := dk_key(p_class || '/' || p_site);
        a INTEGER;
        b INTEGER;
        k INTEGER;
    BEGIN
        IF cardinality(p_ids) BETWEEN 1 AND 2 THEN
            a := dk_key(p_ids[1]);
            b := dk_key(p_ids[cardinality(p_ids)]);
            PERFORM pg_advisory_xact_lock(ns, least(a, b));
            IF a <> b THEN
                PERFORM pg_advisory_xact_lock(ns, greatest(a, b));
            END IF;
        ELSE
            FOREACH k IN ARRAY ARRAY(SELECT DISTINCT dk_key(i) FROM unnest(p_ids) AS i ORDER BY 1) LOOP
                PERFORM pg_advisory_xact_lock(ns, k);
            END LOOP;
        END IF;
    END $$""",
    # dk_read(site, door, holder, credential, entered, counted, limited): a decision's locks and reads in one call
    # (``credential``: NULL at a door without a PIN; ``counted``: the entered areas with an occupancy limit, the only
    # ones decide() counts; ``limited``: every area of the site with a limit). VOLATILE (the default, spelled out because exactness rests on it): in READ COMMITTED
    # each query inside a volatile function takes a fresh snapshot when it starts (PostgreSQL docs, "Function
    # Volatility Categories"), so each read below sees what the previous holder of the lock just taken committed.
    # A STABLE function would read with the calling statement's snapshot, taken before any lock:
    # tests/unit/test_shared_decisions.py checks both.
    """CREATE OR REPLACE FUNCTION dk_read(p_site TEXT, p_door TEXT, p_holder TEXT, p_cred TEXT, p_entered TEXT[],
        p_counted TEXT[], p_limited TEXT[], OUT pending_person TEXT[], OUT pending_at DOUBLE PRECISION[], OUT pending_kind TEXT[],
        OUT scopes TEXT[], OUT first_day TEXT, OUT seen_person TEXT[], OUT seen_area TEXT[], OUT seen_since DOUBLE PRECISION[],
        OUT pin_failures INTEGER, OUT pin_locked_until DOUBLE PRECISION, OUT count_area TEXT[],
        OUT count_n INTEGER[])
    LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        -- 1. The door, then what waits at it, the lockdowns in force and its first-in day.
        PERFORM dk_lock('door', p_site, ARRAY[p_door]);
        SELECT coalesce(array_agg(person ORDER BY ord), '{}'), coalesce(array_agg(at ORDER BY ord), '{}'),
               coalesce(array_agg(kind ORDER BY ord), '{}'),
               (SELECT coalesce(array_agg(scope), '{}') FROM lockdowns WHERE active <> 0),
               (SELECT day FROM dk_first_in WHERE site = p_site AND door = p_door)
          INTO pending_person, pending_at, pending_kind, scopes, first_day
          FROM dk_pending WHERE site = p_site AND door = p_door;
        -- 2. The people decide() may look at (the holder, everyone waiting here), then where they are and the
        -- card's wrong PINs (the card is its holder's: the holder's lock covers it).
        PERFORM dk_lock('person', p_site, pending_person || p_holder);
        SELECT coalesce(array_agg(person), '{}'), coalesce(array_agg(area), '{}'), coalesce(array_agg(since), '{}'),
               (SELECT failures FROM dk_pin_failures WHERE site = p_site AND credential = p_cred),
               (SELECT locked_until FROM dk_pin_failures WHERE site = p_site AND credential = p_cred)
          INTO seen_person, seen_area, seen_since, pin_failures, pin_locked_until
          FROM presence WHERE person = ANY(pending_person || p_holder);
        -- 3. Of the areas the door leads into and those the people would leave, those with a limit (nothing else
        -- reads an area: a head count is the only rule about other people's presence), then their head counts.
        PERFORM dk_lock('area', p_site, ARRAY(SELECT DISTINCT a FROM unnest(p_entered || seen_area) AS a
                                              WHERE a = ANY(p_limited)));
        SELECT coalesce(array_agg(area), '{}'), coalesce(array_agg(n), '{}') INTO count_area, count_n
          FROM (SELECT area, count(*)::integer AS n FROM presence WHERE area = ANY(p_counted)
                GROUP BY area) AS c;
    END $$""",
    # dk_write(...): what a decision's commit() changed, and its history row (when kept), in one call; returns the
    # row's number (NULL when the history is not kept). The locks dk_read took are still held.
    """CREATE OR REPLACE FUNCTION dk_write(p_site TEXT, p_door TEXT, p_cred TEXT,
        p_moved TEXT[], p_moved_area TEXT[], p_moved_since DOUBLE PRECISION[],
        p_pending_changed BOOLEAN, p_pending_person TEXT[], p_pending_at DOUBLE PRECISION[], p_pending_kind TEXT[],
        p_pin_changed BOOLEAN, p_pin_failures INTEGER, p_pin_locked_until DOUBLE PRECISION, p_first_day TEXT,
        p_log BOOLEAN, p_worker TEXT, p_pin TEXT, p_floor TEXT, p_at DOUBLE PRECISION, p_reason TEXT, p_person TEXT,
        p_companions TEXT, p_violation TEXT, p_floors TEXT) RETURNS BIGINT
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        logged BIGINT;
    BEGIN
        IF cardinality(p_moved) > 0 THEN
            INSERT INTO presence (person, area, since)
            SELECT * FROM unnest(p_moved, p_moved_area, p_moved_since)
            ON CONFLICT (person) DO UPDATE SET area = excluded.area, since = excluded.since;
        END IF;
        IF p_pending_changed THEN
            DELETE FROM dk_pending WHERE site = p_site AND door = p_door;
            INSERT INTO dk_pending (site, door, ord, person, at, kind)
            SELECT p_site, p_door, u.ord - 1, u.person, u.at, u.kind
              FROM unnest(p_pending_person, p_pending_at, p_pending_kind) WITH ORDINALITY AS u(person, at, kind, ord);
        END IF;
        IF p_pin_changed AND p_pin_failures IS NULL THEN
            DELETE FROM dk_pin_failures WHERE site = p_site AND credential = p_cred;
        ELSIF p_pin_changed THEN
            INSERT INTO dk_pin_failures (site, credential, failures, locked_until)
            VALUES (p_site, p_cred, p_pin_failures, p_pin_locked_until)
            ON CONFLICT (site, credential) DO UPDATE SET failures = excluded.failures,
                locked_until = excluded.locked_until;
        END IF;
        IF p_first_day IS NOT NULL THEN
            INSERT INTO dk_first_in (site, door, day) VALUES (p_site, p_door, p_first_day)
            ON CONFLICT (site, door) DO UPDATE SET day = excluded.day;
        END IF;
        IF p_log THEN
            INSERT INTO dk_decision_log (site, worker, door, credential, pin, floor, at, reason, person, companions,
                                         violation, floors)
            VALUES (p_site, p_worker, p_door, p_cred, p_pin, p_floor, p_at, p_reason, p_person, p_companions,
                    p_violation, p_floors)
            RETURNING seq INTO logged;
        END IF;
        RETURN logged;
    END $$""",
    # dk_move(site, people, area, since, limited): move ``people`` into ``area`` as of ``since``, each unless a later
    # passage of theirs is recorded; returns who moved. The same person-then-area lock order as a decision, the
    # areas with a limit (``limited``) only.
    """CREATE OR REPLACE FUNCTION dk_move(p_site TEXT, p_people TEXT[], p_area TEXT, p_since DOUBLE PRECISION,
        p_limited TEXT[]) RETURNS TEXT[]
    LANGUAGE plpgsql VOLATILE AS $$
    DECLARE
        moved TEXT[];
    BEGIN
        PERFORM dk_lock('person', p_site, p_people);
        PERFORM dk_lock('area', p_site, ARRAY(SELECT DISTINCT a FROM unnest(p_area || ARRAY(
            SELECT area FROM presence WHERE person = ANY(p_people))) AS a WHERE a = ANY(p_limited)));
        SELECT coalesce(array_agg(w ORDER BY o), '{}') INTO moved FROM unnest(p_people) WITH ORDINALITY AS u(w, o)
         WHERE NOT EXISTS (SELECT 1 FROM presence WHERE person = w AND since > p_since);
        INSERT INTO presence (person, area, since) SELECT w, p_area, p_since FROM unnest(moved) AS w
        ON CONFLICT (person) DO UPDATE SET area = excluded.area, since = excluded.since;
        RETURN moved;
    END $$""",
)

#: A decision that PostgreSQL aborted to break a deadlock (only possible if two lock keys collide across the
#: 32-bit hashes) or a serialization failure is run again, at most this many times.
RETRIES = 5

SITE_SCOPE = "site"

#: A decision's two calls (see the module docstring), prepared on the worker's connection at their first use.
_READ = "SELECT * FROM dk_read(%s, %s, %s, %s, %s::text[], %s::text[], %s::text[])"
_WRITE = ("SELECT dk_write(%s, %s, %s, %s::text[], %s::text[], %s::float8[], %s, %s::text[], %s::float8[], "
          "%s::text[], %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")


def _array(items: Iterable[object]) -> str | None:
    """A PostgreSQL array literal of ``items`` (ids or floats), or None (NULL) for none.

    Cheaper than letting psycopg infer each list's element type and dump it (profiled in the worker: parameter
    dumping fell from 27 % of its CPU to 10 %). Every element is quoted (so none reads as NULL), with backslashes
    and double quotes escaped; a float's ``str`` round-trips exactly through float8."""
    quoted = ['"' + str(x).replace("\\", "\\\\").replace('"', '\\"') + '"' for x in items]
    return "{" + ",".join(quoted) + "}" if quoted else None


class SharedDecisionError(ServerError):
    """The shared decision state could not be read or written (PostgreSQL down, schema missing)."""


def _key(value: str) -> int:
    """A signed 32-bit advisory-lock key, for the one lock taken before dk_key exists (creating the schema)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=4).digest(), "big", signed=True)


def ensure_schema(conn: psycopg.Connection[Any]) -> None:
    """Create the shared decision tables and functions if missing (each worker may call it at start)."""
    with conn.transaction():
        # Two workers starting at once would race on CREATE ... IF NOT EXISTS (a unique violation in the catalogue).
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key("doorkeep shared decisions schema"),))
        for statement in SCHEMA:
            conn.execute(statement)


@dataclass
class _View(DecisionState):
    """The rows one decision locked and read, as the DecisionState the pure rules take.

    ``counts``: head count of each area the door leads into that has an occupancy limit, from PostgreSQL (the view
    holds only the locked people's presence, so it cannot count an area itself). decide() asks the occupancy of a
    limited area only, so the others are not counted."""

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
        self._cursor: psycopg.Cursor[Any] | None = None  # the decisions' one cursor (a new one per call costs 25 µs)
        self.site_id = site_id
        self._site = site
        self.worker = worker
        self.keep_history = keep_history
        self.retries = 0
        self._limited_of: tuple[Site, str | None] | None = None

    # ------------------------------------------------------------ connection

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = self._connect()
                # A commit does not wait for its WAL flush (see the module docstring): other workers see it at
                # once, and a PostgreSQL crash can lose only the last moments of presence, never half a decision.
                # Generic plans: the statements inside dk_read and dk_write are planned once per connection, not
                # at every call (PostgreSQL's default kept re-planning some of them: about 0.08 ms more per call).
                self._conn.execute("SET synchronous_commit = off; SET plan_cache_mode = force_generic_plan")
                self._cursor = self._conn.cursor()
            except psycopg.Error as exc:
                raise SharedDecisionError(f"cannot reach the shared decision state: {exc}") from exc
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
            self._cursor = None

    def _run(self, work: Callable[[psycopg.Connection[Any]], Callable[[], T]]) -> T:
        """``work`` in one transaction, again after a deadlock or serialization failure; other errors raise.

        ``work`` runs its statements and returns how to read its answer, which is read only once the transaction
        has committed (a decision is not final before)."""
        for attempt in range(RETRIES + 1):
            conn = self._connection()
            try:
                with conn.transaction():
                    answer = work(conn)
                return answer()
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == RETRIES:
                    raise
                self.retries += 1
            except psycopg.OperationalError as exc:
                self.close()  # a broken connection is opened again by the next call
                raise SharedDecisionError(f"the shared decision state is unreachable: {exc}") from exc
        raise AssertionError("unreachable")

    def _limited(self, site: Site) -> str | None:
        """The site's areas with an occupancy limit, as the array literal dk_read and dk_move take (kept per site
        object: the directory swaps in a new one on every change)."""
        if self._limited_of is None or self._limited_of[0] is not site:
            self._limited_of = (site, _array(sorted(a for a, area in site.areas.items()
                                                    if area.max_occupancy is not None)))
        return self._limited_of[1]

    # ------------------------------------------------------------ decide

    def decide(self, request: AccessRequest, now: float) -> Decided:
        """Decide ``request`` at ``now`` and apply its effects, exactly as one server would, whatever the other
        workers decide meanwhile."""
        return self._run(lambda conn: self._decide(conn, request, now))

    def _decide(self, conn: psycopg.Connection[Any], request: AccessRequest, now: float) -> Callable[[], Decided]:
        site = self._site()
        door = site.doors.get(request.door)
        cred = site.credentials.get(request.credential_hash)
        if door is None or cred is None:
            # decide() refuses these without reading any state: nothing to lock, nothing to write.
            decision = decide(request, site, DecisionState(), now)
            return self._write(conn, request, now, decision, ([], [], []), None, None, None)
        # dk_read: the door's, the people's and the areas' locks, each followed by its reads, in that order.
        cur = self._cursor if self._cursor is not None else conn.cursor()
        (pending_person, pending_at, pending_kind, scopes, first_day, seen_person, seen_area, seen_since, failures,
         locked_until, count_area, count_n) = cur.execute(
            _READ, (self.site_id, door.id, cred.person, cred.hash if door.pin_required else None, _array(door.entered),
                    _array(a for a in door.entered if a in site.areas and site.areas[a].max_occupancy is not None),
                    self._limited(site)),
            prepare=True).fetchone()
        pending = [Pending(p, at, kind) for p, at, kind in zip(pending_person, pending_at, pending_kind)]
        presence = {p: Presence(area, since) for p, area, since in zip(seen_person, seen_area, seen_since)}
        pin_before = (failures, locked_until) if failures is not None and door.pin_required else None
        first_before = first_day if first_day is not None and door.first_person_in else None
        scope_set = set(scopes)
        state = _View(presence=dict(presence), lockdown_site=SITE_SCOPE in scope_set,
                      lockdown_areas=scope_set - {SITE_SCOPE}, counts=dict(zip(count_area, count_n)))
        if pending:
            state.pending[door.id] = list(pending)
        if pin_before is not None:
            state.pin_failures[cred.hash] = pin_before
        if first_before is not None:
            state.first_in[door.id] = first_before

        decision = decide(request, site, state, now)
        commit(request, decision, site, state, now)

        people = sorted({cred.person, *pending_person})
        moved = [(p, state.presence[p]) for p in people if p in state.presence and state.presence[p] != presence.get(p)]
        after = state.pending.get(door.id, [])
        pin_after = state.pin_failures.get(cred.hash)
        first_after = state.first_in.get(door.id)
        return self._write(
            conn, request, now, decision,
            ([p for p, _ in moved], [w.area for _, w in moved], [w.since for _, w in moved]),
            after if after != pending else None,
            (pin_after,) if door.pin_required and pin_after != pin_before else None,
            first_after if first_after is not None and first_after != first_before else None)

    def _write(self, conn: psycopg.Connection[Any], request: AccessRequest, now: float, decision: Decision,
               moved: tuple[list[str], list[str], list[float]], pending: list[Pending] | None,
               pin: tuple[tuple[int, float] | None] | None, first_day: str | None) -> Callable[[], Decided]:
        """Run dk_write with what ``commit()`` changed and the history row (numbered while the locks are held, when
        the history is kept); nothing when there is neither. ``pending``: the door's new waiting list, None when
        unchanged; ``pin``: None when unchanged, else a 1-tuple of the new (count, locked until), or of None when
        the count is cleared. Returns how to read the decision's number once committed."""
        if not (moved[0] or pending is not None or pin is not None or first_day is not None or self.keep_history):
            return lambda: Decided(decision, None)
        pin_failures, pin_until = pin[0] if pin is not None and pin[0] is not None else (None, None)
        log = self.keep_history
        cur = self._cursor if self._cursor is not None else conn.cursor()
        cur.execute(_WRITE, (
            self.site_id, request.door, request.credential_hash, *(_array(column) for column in moved),
            pending is not None, _array(p.person for p in pending or ()), _array(p.at for p in pending or ()),
            _array(p.kind for p in pending or ()),
            pin is not None, pin_failures, pin_until, first_day,
            log, self.worker, request.pin_hash, request.floor, now, decision.reason.value, decision.person,
            json.dumps(list(decision.companions)) if log else None, decision.violation,
            json.dumps(list(decision.floors)) if log else None), prepare=True)

        def answer() -> Decided:
            row = cur.fetchone()
            return Decided(decision, int(row[0]) if log and row is not None and row[0] is not None else None)

        return answer

    # ------------------------------------------------------------ moves and lockdowns

    def move(self, people: Iterable[str], area: str, since: float) -> list[str]:
        """Move ``people`` into ``area`` as of ``since`` (an offline grant's movers, a turnstile passage, a floor
        chosen), each unless a later passage of theirs is already recorded; returns who moved."""
        site = self._site()
        wanted = sorted({p for p in people if p in site.people})
        if not wanted or area not in site.areas:
            return []

        def work(conn: psycopg.Connection[Any]) -> Callable[[], list[str]]:
            cur = conn.execute("SELECT dk_move(%s, %s::text[], %s, %s, %s::text[])",
                               (self.site_id, wanted, area, since, self._limited(site)))
            return lambda: list((cur.fetchone() or ([],))[0])

        return self._run(work)

    def set_lockdown(self, scope: str, active: bool, at: float = 0.0) -> None:
        """A lockdown of ``scope`` (an area id or ``"site"``) starts or ends for every worker's next decision (the
        store's ``lockdowns`` row, as ``Store.set_lockdown`` writes it)."""
        def work(conn: psycopg.Connection[Any]) -> Callable[[], None]:
            conn.execute("INSERT INTO lockdowns (scope, active, changed_at) VALUES (%s, %s, %s) ON CONFLICT (scope) "
                         "DO UPDATE SET active = excluded.active, changed_at = excluded.changed_at",
                         (scope, int(active), at))
            return lambda: None

        self._run(work)

    def presence(self) -> dict[str, Presence]:
        """Everyone's last known area (the muster list, a worker's desk)."""
        def work(conn: psycopg.Connection[Any]) -> Callable[[], dict[str, Presence]]:
            cur = conn.execute("SELECT person, area, since FROM presence")
            return lambda: {person: Presence(area, since) for person, area, since in cur.fetchall()}

        return self._run(work)

    def history(self) -> list[dict[str, Any]]:
        """The decisions numbered in the shared history, in that order (for checks and replays)."""
        def work(conn: psycopg.Connection[Any]) -> Callable[[], list[dict[str, Any]]]:
            cur = conn.execute("SELECT seq, worker, door, credential, pin, floor, at, reason, person, companions, "
                               "violation, floors FROM dk_decision_log WHERE site = %s ORDER BY seq", (self.site_id,))

            def answer() -> list[dict[str, Any]]:
                rows = cur.fetchall()  # first: in pipeline mode the description arrives with the rows
                names = [c.name for c in cur.description or ()]
                return [dict(zip(names, row)) for row in rows]

            return answer

        return self._run(work)


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
