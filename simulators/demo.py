"""`doorkeep demo`: the demo site on simulators, playing a scripted morning.

Time in the demo is "demo time": the wall clock shifted to 08:55 on a
working day in the site's time zone, so business-hours rules give the same
answers whenever the demo is run. Each scripted badge says which reason it
expects; the summary says whether every one came out as expected, and the
exit status follows it.

``--store postgresql://…`` puts the demo's server on a PostgreSQL database (:func:`prepare_store` says which
databases it takes), and ``--workers N`` runs N server workers on it (server/workers.py) instead of one server:
w1 starts first and leads (its server carries the desk and the transcript's events), the others stand by and
answer their share of the requests through a shared subscription, which needs Mosquitto (the embedded amqtt
broker acknowledges ``$share/`` subscriptions and never delivers to them), so the demo starts a private plain
one on loopback unless ``--broker`` names one.
"""

from __future__ import annotations

import dataclasses
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TextIO
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

from doorkeep.config import store_url_problem
from doorkeep.contract import EventMsg
from doorkeep.schedule import is_open
from simulators.door import DoorSimulator
from simulators.site import SiteRunner
from simulators.wait import wait_until

if TYPE_CHECKING:
    from server.workers import Worker


class DemoError(ValueError):
    """The demo cannot start as asked (a flag missing, a database it must not touch); the message names the fix."""


class ShiftedClock:
    """The system clock, with the wall time moved to a chosen start; monotonic untouched."""

    def __init__(self, start_wall: float) -> None:
        self._offset = start_wall - time.time()

    def wall(self) -> float:
        return time.time() + self._offset

    def monotonic(self) -> float:
        return time.monotonic()


def demo_morning(tz: str, holidays: frozenset[date], today: date | None = None) -> float:
    """08:55 local on the next working day (today if it is one)."""
    day = today or datetime.now(ZoneInfo(tz)).date()
    while day.weekday() >= 5 or day in holidays:
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, 8, 55, tzinfo=ZoneInfo(tz)).timestamp()


@dataclass(frozen=True)
class Step:
    at: float                 # seconds into the script
    action: str               # badge | force | rex
    door: str
    card: str = ""
    expect: str = ""          # expected reason of a badge
    walk_through: bool = True  # open and close the door after a grant
    note: str = ""
    press: str = ""           # a lift: the floor button pressed after the badge


MORNING: tuple[Step, ...] = (
    Step(0.5, "badge", "lobby_in", "0F00A1B2C3", "granted", note="Alice arrives"),
    Step(2.0, "badge", "lobby_in", "0F00B0B0B0", "granted", note="Bob arrives"),
    Step(3.5, "badge", "lobby_in", "0F00C4C4C4", "granted", note="Chen arrives"),
    Step(4.2, "badge", "gate_in", "0F00B0B0B0", "granted", note="Bob goes through the office gates"),
    Step(5.0, "badge", "lab", "40067890", "no_access", note="Bob tries the lab"),
    Step(5.6, "badge", "lift", "0F00A1B2C3", "granted", press="floor7", note="Alice takes the lift to floor 7"),
    Step(6.5, "badge", "lab", "40011111", "granted", note="Alice enters the lab"),
    Step(7.2, "badge", "lift", "0F00B0B0B0", "granted", press="floor7",
         note="Bob presses floor 7 in the lift: his badge does not light it, and his grant goes unused"),
    Step(8.0, "badge", "lobby_in", "0F00FFFF01", "unknown_credential", note="a stranger's card"),
    Step(9.0, "badge", "lobby_in", "0F00E5E5E5", "credential_inactive", note="Eli's card, reported lost"),
    Step(10.0, "badge", "lobby_in", "0F00D1D1D1", "expired", note="Dana's contract has ended"),
    Step(11.0, "force", "lobby_out", note="someone forces the exit gate"),
    Step(12.0, "badge", "gate_out", "0F00B0B0B0", "granted", note="Bob comes back out through the gates"),
    Step(12.6, "force", "gate_in", note="someone jumps the office gates"),
    Step(13.0, "rex", "lab", note="Chen leaves the lab by the exit button"),
    Step(14.5, "badge", "lobby_out", "0F00B0B0B0", "granted", note="Bob leaves"),
)
SCRIPT_LENGTH = 17.0


@dataclass
class Row:
    event: EventMsg
    person: str


class Demo:
    def __init__(self, runner: SiteRunner, out: TextIO = sys.stdout) -> None:
        self.runner = runner
        self.out = out
        self.rows: list[Row] = []
        self.expected: list[tuple[Step, str | None]] = []
        self._lock = threading.Lock()
        self._access = threading.Condition(self._lock)
        self._stop = threading.Event()
        self.tz = ZoneInfo(runner.bundle.site.timezone)
        #: With ``--workers N``: the workers, w1 first (its server is ``runner.server``).
        self.workers: list[Worker] = []
        #: Why the demo stopped early (a worker that lost the lead), for the summary.
        self.failure: str | None = None

    #: Alarms the transcript shows, and a turnstile's passages (the grant used, or cancelled unused).
    ALARMS = ("forced_open", "held_open", "forced_passage", "tailgate")
    TURNSTILE = {"passage": "passed", "grant_unused": "unused", "floor_chosen": "floor"}

    def header(self) -> None:
        print(f"{'time':8}  {'door':16}  {'person':18}  {'decision':8}  {'reason':20}  {'latency':>9}", file=self.out)
        print("-" * 88, file=self.out)

    def on_event(self, ev: EventMsg, new: bool) -> None:
        if not new or ev.type not in ("access", *self.ALARMS, *self.TURNSTILE):
            return
        site = self.runner.server.site if self.runner.server else self.runner.bundle.site
        if ev.type in self.TURNSTILE:  # the person is the one the grant named (its access event)
            with self._lock:
                granted = [r for r in self.rows if r.event.id == ev.detail.get("grant")]
            ev = dataclasses.replace(ev, person=granted[0].event.person if granted else None)
        if ev.person and ev.person in site.people:
            person = site.people[ev.person].name
        elif ev.credential_last4:
            person = f"card …{ev.credential_last4}"
        else:
            person = "—"
        door = site.doors[ev.door].name if ev.door in site.doors else ev.door
        local = datetime.fromtimestamp(self.runner.clock.wall(), self.tz).strftime("%H:%M:%S")
        if ev.type == "access":
            decision, reason = ev.decision or "", ev.reason or ""
            latency = f"{ev.latency_ms:7.2f} ms" if ev.latency_ms is not None else ""
        elif ev.type == "floor_chosen":  # the lift went where the grant allowed: that floor's name
            floor = str(ev.detail.get("floor", ""))
            decision, reason, latency = "floor", site.areas[floor].name if floor in site.areas else floor, ""
        elif ev.type in self.TURNSTILE:
            decision, reason, latency = self.TURNSTILE[ev.type], "", ""
        else:
            decision, reason, latency = "ALARM", ev.type, ""
        with self._lock:
            self.rows.append(Row(ev, person))
            print(f"{local:8}  {door[:16]:16}  {person[:18]:18}  {decision:8}  {reason:20}  {latency:>9}",
                  file=self.out, flush=True)
            self._access.notify_all()

    def _count(self, kind: str, door: str | None = None) -> int:
        return sum(1 for r in self.rows if r.event.type == kind and door in (None, r.event.door))

    def _wait_access(self, before: int, timeout: float, door: str | None = None) -> EventMsg | None:
        """The access event after the first ``before`` ones (at ``door``: a card badged by hand at the
        terminal, at another door, is not the scripted step's answer)."""
        with self._access:
            ok = self._access.wait_for(lambda: self._count("access", door) > before, timeout)
            if not ok:
                return None
            return [r.event for r in self.rows if r.event.type == "access" and door in (None, r.event.door)][before]

    def play(self, steps: tuple[Step, ...], started: float) -> None:
        for step in steps:
            if self._stop.wait(max(0.0, started + step.at - time.monotonic())):
                return
            sim = self.runner.doors[step.door]
            if step.action == "badge":
                with self._lock:
                    before = self._count("access", step.door)
                sim.reader.badge(step.card)
                ev = self._wait_access(before, 3.0, step.door)
                self.expected.append((step, ev.reason if ev else None))
                if ev is not None and ev.decision == "granted" and step.press:
                    if sim.door.wait_relay(True, 2.0):
                        self._stop.wait(0.5)
                        sim.door.press(step.press)  # type: ignore[union-attr]
                elif ev is not None and ev.decision == "granted" and step.walk_through:
                    if sim.door.wait_relay(True, 2.0):
                        self._walk(sim.door, 0.8)
            elif step.action == "force" and sim.door.turnstile:
                sim.door.pass_through()  # over the arms: a passage with no grant
            elif step.action == "force":
                sim.door.open()
                self._stop.wait(1.2)
                sim.door.close()
            elif step.action == "rex":
                sim.door.press_rex()
                if sim.door.wait_relay(True, 2.0):
                    self._walk(sim.door, 0.8)

    def _walk(self, door: DoorSimulator, seconds: float) -> None:
        """Through a door: open it, wait, close it behind; through a turnstile: one passage."""
        if door.turnstile:
            self._stop.wait(seconds)
            door.pass_through()
            return
        door.open()
        self._stop.wait(seconds)
        door.close()

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> bool:
        access = [r.event for r in self.rows if r.event.type == "access"]
        granted = [e.latency_ms for e in access if e.decision == "granted" and e.latency_ms is not None]
        denied = [e for e in access if e.decision == "denied"]
        alarms = [r for r in self.rows if r.event.type in self.ALARMS]
        wrong = [(s, got) for s, got in self.expected if got != s.expect]
        server = self.runner.server
        print("-" * 88, file=self.out)
        print(f"{len(access)} badges: {len(granted)} granted, {len(denied)} denied; {len(alarms)} alarm(s)", file=self.out)
        if granted:
            ordered = sorted(granted)
            p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
            print(f"badge-to-relay: median {statistics.median(ordered):.2f} ms, p99 {p99:.2f} ms, "
                  f"max {ordered[-1]:.2f} ms", file=self.out)
        if server is not None:
            c = server.bus.counters
            print(f"server: {server.store.count_events()} events stored, {c['snapshots']} snapshots, "
                  f"{c['malformed']} malformed messages dropped", file=self.out)
        for w in self.workers:
            decisions = w.requests.counters["decisions"] if w.requests is not None else 0
            print(f"worker {w.name}: {decisions} decisions, {'leads' if w.leader else 'standby'}", file=self.out)
        problems = [f"{step.note or step.door}: expected {step.expect}, got {got or 'no decision'}"
                    for step, got in wrong]
        if self.workers and not any(w.requests and w.requests.counters["decisions"] for w in self.workers):
            # The doors then decided offline (the morning fails on its reasons): say why.
            problems.append("no worker decided a request: the doors decided offline (the broker must deliver "
                            "shared subscriptions, $share/...: Mosquitto does, the embedded amqtt does not)")
        if self.failure is not None:
            problems.append(self.failure)
        for problem in problems:
            print(f"UNEXPECTED: {problem}", file=self.out)
        return not problems


DESK_ADMIN = "demo"


class DemoDesk:
    """The security desk on the demo's server, served by uvicorn on its own thread (docs/desk.md).

    A demo admin ``demo`` gets a fresh random password each run (printed): the demo's store lives in a
    temporary directory and goes away with it (a ``--store`` database is emptied by the next demo).
    """

    def __init__(self, runner: SiteRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self.password = secrets.token_urlsafe(12)
        self._server: object = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> str | None:
        """Serve the desk; returns why it could not start (port taken), or None."""
        import socket

        import uvicorn
        from argon2 import PasswordHasher

        from server.web.app import create_app
        from server.operators import Operators
        from server.web.serving import uvicorn_config

        with socket.socket() as probe:
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                return f"cannot listen on {self.host}:{self.port} ({exc.strerror}); try --desk-port"
        assert self.runner.server is not None
        # Cheaper argon2 than production: the demo admin is thrown away with the demo's temporary store.
        # The admin exists before the app is built, which warns about a desk with no operator.
        hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
        srv = self.runner.server
        Operators(srv.store, clock=srv.directory.clock, audit=srv.audit, hasher=hasher).add(
            DESK_ADMIN, "admin", self.password, actor="demo")
        app = create_app(srv, hasher=hasher)
        # No forwarded headers: the demo has no proxy, and uvicorn's default would trust them from 127.0.0.1.
        server = uvicorn.Server(uvicorn_config(app, host=self.host, port=self.port, log_level="warning"))
        self._server = server
        self._thread = threading.Thread(target=server.run, name="demo-desk", daemon=True)
        self._thread.start()
        if not wait_until(lambda: server.started or not self._thread.is_alive(), timeout) or not server.started:
            return f"the desk did not start on {self.host}:{self.port}"
        return None

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True  # type: ignore[attr-defined]
        if self._thread is not None:
            self._thread.join(10)


def badge_from_stdin(runner: SiteRunner, out: TextIO, stop: threading.Event) -> None:
    """``DOOR CARD`` typed on the terminal badges CARD at DOOR's simulated reader (a visitor's badge, say)."""
    for line in sys.stdin:
        if stop.is_set():
            return
        parts = line.split()
        if len(parts) != 2:
            if parts:
                print(f"type DOOR CARD, e.g. lobby_in 0F00F00001 (doors: {', '.join(sorted(runner.doors))})",
                      file=out, flush=True)
            continue
        door, card = parts
        sim = runner.doors.get(door)
        if sim is None:
            print(f"no door {door!r}; doors: {', '.join(sorted(runner.doors))}", file=out, flush=True)
            continue
        try:
            sim.reader.badge(card)
        except ValueError as exc:
            print(f"not sent: {exc}", file=out, flush=True)


#: The table that marks a PostgreSQL database as the demo's own (:func:`prepare_store`).
DEMO_MARK = "doorkeep_demo"
#: Every relation outside PostgreSQL's own schemas: none in an empty database.
_RELATIONS = ("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
              "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND n.nspname NOT IN ('pg_catalog', "
              "'information_schema') AND n.nspname !~ '^pg_(toast|temp)'")


def prepare_store(url: str) -> str:
    """Make the ``--store`` database ready for a demo; returns what it was (``created``, ``empty``, ``a previous
    demo's, emptied``).

    The morning is judged from an empty store: the demo's credential and signing keys are new each run, so a
    previous demo's people, card hashes and presence would make its badges unknown or refused. A database that does
    not exist is created (through the server's ``postgres`` database); an empty one is taken; one a previous demo
    filled (its :data:`DEMO_MARK` table says so) is emptied, unless a client is still connected to it (a demo
    still running); PostgreSQL's own databases and any other are refused, so a mistyped URL never fills or empties
    a database that is not the demo's."""
    import psycopg
    from psycopg import sql

    problem = store_url_problem(url)
    if problem is not None:
        raise DemoError(f"--store {url}: {problem[0]} (fix: {problem[1]})")
    parts = urlsplit(url)
    database = parts.path.strip("/")
    if database in ("postgres", "template0", "template1"):  # empty, but every client's and tool's to share
        raise DemoError(f"--store {url}: {database!r} is PostgreSQL's own database, not one for a demo (fix: name "
                        "a new database, which the demo creates, e.g. "
                        f"{urlunsplit(parts._replace(path='/doorkeep_demo'))})")
    created = False
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[-1].strip()
        if "does not exist" not in reason:
            raise DemoError(f"--store {url}: cannot reach PostgreSQL: {reason} (fix: start PostgreSQL, or correct "
                            "the URL's host, port or user)") from exc
        try:
            with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True,
                                 connect_timeout=5) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        except psycopg.Error as exc2:
            why = str(exc2).strip().splitlines()[-1].strip()
            raise DemoError(f"--store {url}: database {database!r} does not exist and could not be created: {why} "
                            f"(fix: createdb -h {parts.hostname} -p {parts.port or 5432} -U {parts.username or 'USER'}"
                            f" {database})") from exc2
        created = True
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
    with conn:
        relations = [row[0] for row in conn.execute(_RELATIONS)]
        what = "created" if created else "empty"
        if relations:
            if f"public.{DEMO_MARK}" not in relations:
                raise DemoError(f"--store {url}: database {database!r} is not empty and is not a previous demo's "
                                f"({len(relations)} tables and other relations, no {DEMO_MARK} table): the demo "
                                "never empties a store it did not fill (fix: name a new database, which the demo "
                                "creates, or an empty one)")
            others = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                                  "pid <> pg_backend_pid() AND backend_type = 'client backend'").fetchone()
            if others and others[0]:
                raise DemoError(f"--store {url}: a previous demo's database, but {others[0]} other client(s) are "
                                "connected to it (fix: stop the demo or server still using it, or name another "
                                "database)")
            with conn.transaction():
                drops = [("VIEW", "SELECT format('%I.%I', schemaname, viewname) FROM pg_views "
                                  "WHERE schemaname = 'public'"),
                         ("MATERIALIZED VIEW", "SELECT format('%I.%I', schemaname, matviewname) FROM pg_matviews "
                                               "WHERE schemaname = 'public'"),
                         ("TABLE", "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                   "WHERE schemaname = 'public'"),
                         ("SEQUENCE", "SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences "
                                      "WHERE schemaname = 'public'"),
                         ("FUNCTION", "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n "
                                      "ON n.oid = p.pronamespace WHERE n.nspname = 'public'")]
                for kind, query in drops:
                    names = [row[0] for row in conn.execute(query)]
                    if names:  # the names come from the catalogue, quoted by format('%I') and regprocedure
                        conn.execute(f"DROP {kind} IF EXISTS {', '.join(names)} CASCADE")
            what = "a previous demo's, emptied"
        conn.execute(f"CREATE TABLE IF NOT EXISTS {DEMO_MARK} (prepared_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        conn.execute(f"INSERT INTO {DEMO_MARK} DEFAULT VALUES")
    return what


def run_demo(duration: float | None, broker: str | None, site_dir: object = None,
             out: TextIO = sys.stdout, on_ready: Callable[[SiteRunner], None] | None = None, *,
             desk: bool = True, desk_host: str = "127.0.0.1", desk_port: int = 8080, allow_plain: bool = False,
             store: str | None = None, workers: int = 1) -> int:
    """Play the morning; 0 when every scripted badge got its expected reason and every relay ended locked.

    ``store``: the server's PostgreSQL database (:func:`prepare_store`), else SQLite in a temporary directory.
    ``workers``: 1 runs one server; N >= 2 runs workers w1..wN on ``store`` (DemoError without it)."""
    from doorkeep.config import load_site_dir
    from simulators.site import DEMO_SITE

    if workers < 1:
        raise DemoError(f"--workers {workers}: there is at least one server (fix: --workers 1, the default, for one "
                        "server, or 2 or more for several workers on --store)")
    if workers > 1 and store is None:
        raise DemoError(f"--workers {workers} needs --store: several workers share their state in PostgreSQL (fix: "
                        "add --store postgresql://USER@HOST:PORT/DB, e.g. --store "
                        "postgresql://postgres@127.0.0.1:5432/doorkeep_demo; the demo creates the database)")
    if store is not None and store.startswith("postgres://"):
        store = "postgresql://" + store[len("postgres://"):]  # one spelling: the workers take only this one
    bundle = load_site_dir(site_dir or DEMO_SITE)  # type: ignore[arg-type]
    store_was = prepare_store(store) if store is not None else None
    holidays: frozenset[date] = frozenset().union(*(s.holidays for s in bundle.site.schedules.values()))
    clock = ShiftedClock(demo_morning(bundle.site.timezone, holidays))
    own_broker = None
    if workers > 1 and broker is None:
        # The workers split the requests through a shared subscription, which the embedded amqtt broker does not
        # deliver: a private Mosquitto, plain on loopback as the embedded broker is.
        from simulators.brokers import MosquittoBroker

        own_broker = MosquittoBroker()
        own_broker.own_session = True  # Ctrl-C stops the demo, which stops the broker last
        broker, allow_plain = own_broker.url, True
    # allow_plain: --allow-plain-mqtt for a plain --broker URL; the embedded broker needs no flag.
    runner = SiteRunner(bundle, broker_url=broker, clock=clock, allow_plain=allow_plain,
                        store_url=store if workers == 1 else None)
    demo = Demo(runner, out)
    print(f"doorkeep demo: site {bundle.site.name!r}, {len(bundle.site.doors)} doors on "
          f"{len(bundle.devices)} edge devices; demo time starts "
          f"{datetime.fromtimestamp(clock.wall(), demo.tz):%a %d %b %H:%M} {bundle.site.timezone}", file=out)
    ok = False
    interrupted = threading.Event()
    stoppers: list[Callable[[], None]] = []
    work_dir: tempfile.TemporaryDirectory[str] | None = None

    def on_signal(signum: int, frame: object) -> None:
        interrupted.set()
        demo.stop()

    def on_lost(name: str) -> Callable[[], None]:
        def lost() -> None:  # as `doorkeep server --worker` exits: the demo stops and is not judged a pass
            demo.failure = f"worker {name} could not be sure it leads (its PostgreSQL session failed); demo stopped"
            demo.stop()
        return lost

    if threading.current_thread() is threading.main_thread():
        # Explicit handlers: a shell may start the demo with SIGINT ignored, and SIGTERM must stop it cleanly too.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    try:
        if own_broker is not None:
            own_broker.start()
        if workers > 1:
            from server.workers import Worker

            assert store is not None
            work_dir = tempfile.TemporaryDirectory(prefix="doorkeep-demo-workers-")
            for n in range(1, workers + 1):  # w1 first: it leads, and imports the site the others wait for
                worker = Worker(bundle, Path(work_dir.name) / "server", runner.broker_config("server"), f"w{n}",
                                store, clock=clock, key=runner.key, on_lost=on_lost(f"w{n}"),
                                signing_key=runner.signing_key, snapshot_keys=runner.snapshot_keys,
                                pass_keys=runner.pass_keys)
                worker.start()
                demo.workers.append(worker)
            if demo.workers[0].server is None:
                raise DemoError(f"--store {store}: worker w1 does not lead: another worker of site "
                                f"{bundle.site.id!r} holds the lead on this database (fix: stop it, or name another "
                                "database)")
            runner.server = demo.workers[0].server  # the desk and the transcript use the leader's server
            runner.start(with_server=False)
        else:
            runner.start()
        assert runner.server is not None
        runner.server.bus.listeners.append(demo.on_event)
        if not runner.wait_connected(10.0):
            print("doorkeep demo: the broker did not accept every client within 10 s", file=out)
            return 1
        if demo.workers and not wait_until(lambda: all(w.requests is not None and w.requests.connected.is_set()
                                                       for w in demo.workers), 10.0):
            print("doorkeep demo: the broker did not acknowledge every worker's subscription to the requests "
                  "within 10 s", file=out)
            return 1
        print(f"broker {runner.broker_url}; Ctrl-C stops everything with the relays locked", file=out)
        if store is not None:
            print(f"store {store} ({store_was})", file=out)
        if demo.workers:
            standbys = ", ".join(w.name for w in demo.workers[1:])
            print(f"{workers} server workers: w1 leads (the desk and this transcript use its server), {standbys} "
                  f"stand{'s' if workers == 2 else ''} by; each answers its share of the requests", file=out)
        if desk:
            web = DemoDesk(runner, desk_host, desk_port)
            why = web.start()
            if why is None:
                pool = ", ".join(c.number for c in bundle.visitor_pool)
                print(f"security desk: http://{desk_host}:{desk_port}/  log in as {DESK_ADMIN!r} with password "
                      f"{web.password!r}\n  visitor badges (checked in at the desk): {pool}\n  to badge a card at "
                      f"a door, type DOOR CARD and Enter, e.g. 'lobby_in {bundle.visitor_pool[0].number if bundle.visitor_pool else 'CARD'}' "
                      f"(doors: {', '.join(sorted(runner.doors))})", file=out, flush=True)
                stoppers.append(web.stop)
                if sys.stdin is not None and sys.stdin.isatty():
                    threading.Thread(target=badge_from_stdin, args=(runner, out, demo._stop), name="demo-stdin",
                                     daemon=True).start()
            else:
                print(f"security desk not started: {why}", file=out, flush=True)
        print(file=out)
        if on_ready:
            on_ready(runner)
        demo.header()
        begin = time.monotonic()
        while not interrupted.is_set():
            demo.play(MORNING, time.monotonic())
            if duration is not None and time.monotonic() - begin + SCRIPT_LENGTH > duration:
                break
            if demo._stop.wait(max(0.0, SCRIPT_LENGTH - MORNING[-1].at)):
                break
        if duration is not None:
            demo._stop.wait(max(0.0, begin + duration - time.monotonic()))
        if interrupted.is_set():
            print("\nstopping…", file=out)
        runner.server.bus.wait_idle(5.0)
        # An interrupted morning may end mid-step: the summary is shown, but only a full run is judged.
        ok = demo.summary() or (interrupted.is_set() and demo.failure is None)
    finally:
        demo.stop()
        for stop in stoppers:
            stop()
        if demo.workers:
            runner.server = None  # the leader's server: its worker stops it, once
        runner.stop()  # the edges first: every relay to its safe state
        for worker in reversed(demo.workers):  # the standbys first, so that none takes over a stopping site
            worker.stop()
        if own_broker is not None:
            own_broker.stop()
        if work_dir is not None:
            work_dir.cleanup()
        locked = not any(runner.relays_energised().values())
        print(f"stopped; all relays de-energised: {'yes' if locked else 'NO'}", file=out)
        ok = ok and locked
    return 0 if ok else 1


__all__ = ["run_demo", "prepare_store", "DemoError", "demo_morning", "ShiftedClock", "MORNING", "is_open"]
