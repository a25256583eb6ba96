"""`doorkeep demo`: the demo site on simulators, playing a scripted morning.

Time in the demo is "demo time": the wall clock shifted to 08:55 on a
working day in the site's time zone, so business-hours rules give the same
answers whenever the demo is run. Each scripted badge says which reason it
expects; the summary says whether every one came out as expected, and the
exit status follows it.
"""

from __future__ import annotations

import dataclasses
import secrets
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Callable, TextIO
from zoneinfo import ZoneInfo

from doorkeep.contract import EventMsg
from doorkeep.schedule import is_open
from simulators.door import DoorSimulator
from simulators.site import SiteRunner


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
        for step, got in wrong:
            print(f"UNEXPECTED: {step.note or step.door}: expected {step.expect}, got {got or 'no decision'}",
                  file=self.out)
        return not wrong


DESK_ADMIN = "demo"


class DemoDesk:
    """The security desk on the demo's server, served by uvicorn on its own thread (docs/desk.md).

    A demo admin ``demo`` gets a fresh random password each run (printed): the demo's store lives in a
    temporary directory and goes away with it.
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
        from simulators.wait import wait_until

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


def run_demo(duration: float | None, broker: str | None, site_dir: object = None,
             out: TextIO = sys.stdout, on_ready: Callable[[SiteRunner], None] | None = None, *,
             desk: bool = True, desk_host: str = "127.0.0.1", desk_port: int = 8080, allow_plain: bool = False) -> int:
    from doorkeep.config import load_site_dir
    from simulators.site import DEMO_SITE

    bundle = load_site_dir(site_dir or DEMO_SITE)  # type: ignore[arg-type]
    holidays: frozenset[date] = frozenset().union(*(s.holidays for s in bundle.site.schedules.values()))
    clock = ShiftedClock(demo_morning(bundle.site.timezone, holidays))
    # allow_plain: --allow-plain-mqtt for a plain --broker URL; the embedded broker needs no flag.
    runner = SiteRunner(bundle, broker_url=broker, clock=clock, allow_plain=allow_plain)
    demo = Demo(runner, out)
    print(f"doorkeep demo: site {bundle.site.name!r}, {len(bundle.site.doors)} doors on "
          f"{len(bundle.devices)} edge devices; demo time starts "
          f"{datetime.fromtimestamp(clock.wall(), demo.tz):%a %d %b %H:%M} {bundle.site.timezone}", file=out)
    ok = False
    interrupted = threading.Event()
    stoppers: list[Callable[[], None]] = []

    def on_signal(signum: int, frame: object) -> None:
        interrupted.set()
        demo.stop()

    if threading.current_thread() is threading.main_thread():
        # Explicit handlers: a shell may start the demo with SIGINT ignored, and SIGTERM must stop it cleanly too.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
    try:
        runner.start()
        assert runner.server is not None
        runner.server.bus.listeners.append(demo.on_event)
        if not runner.wait_connected(10.0):
            print("doorkeep demo: the broker did not accept every client within 10 s", file=out)
            return 1
        print(f"broker {runner.broker_url}; Ctrl-C stops everything with the relays locked", file=out)
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
        ok = demo.summary() or interrupted.is_set()
    finally:
        demo.stop()
        for stop in stoppers:
            stop()
        runner.stop()
        locked = not any(runner.relays_energised().values())
        print(f"stopped; all relays de-energised: {'yes' if locked else 'NO'}", file=out)
        ok = ok and locked
    return 0 if ok else 1


__all__ = ["run_demo", "demo_morning", "ShiftedClock", "MORNING", "is_open"]
