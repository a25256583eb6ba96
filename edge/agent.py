"""The edge agent: readers, door I/O and camera wired to the MQTT link.

One reactor (edge/loop.py) owns every door state machine and every relay, every reader's port and paho's
socket, so a card, a contact change, a decision and a timer can never race each other, and a badge goes from
the reader's bytes to the request on the socket, and from the decision on the socket to the relay, without
handing anything to another thread. gpiozero's pin callbacks are handed to the loop (its eventfd); work that
may block runs on the jobs worker (edge/jobs.py: the outbox and its fsyncs, policy verification, snapshots),
the camera captures on its own thread. The loop wakes at the next deadline (unlock expiry, held-open,
decision timeout) instead of polling, and never sleeps while a relay is energised. docs/concurrency.md says
who owns what.

Fail safe: a relay is energised only by a grant or REX from the door state
machine; a timeout, a malformed decision or a crash leaves it de-energised,
and stop() (also on SIGTERM) de-energises every relay before anything else.

Without a site file (a device file with no ``site_file``: the Pi holds only
its hardware, keys and certificates) every door's name, mode, times, PIN and
offline rules, the time zone and the decision rules come from the newest
verified signed policy: the cached one at start, then each one received.
Until the first is held the edge fails secure: every badge is refused with
``no_policy`` without asking the server, no grant or command releases a
lock, and REX still opens the door from inside as it always does (egress);
the retained state says ``waiting_for_first_policy``.

Signed commands (unlock, lock, lockdown, sync; doorkeep/commands.py) reach
the same loop: verified with the policy key, their nonce written (by the jobs
worker) to ``state_dir/command-nonces.json`` before they act, and a refused one
is never executed, only answered ``rejected`` and recorded (``command_rejected``).

Timed overrides (``unlock`` / ``lock`` with ``until``; edge/overrides.py) are held here, on the loop: the
door is held unlocked, or kept locked against its unlock schedule, until the override's wall time, and the
loop ends it then by itself (``override_ended``), whether or not the server can be reached. A lockdown ends
an unlock override; REX always opens (egress). The signed command is kept in ``state_dir/overrides.json`` and
verified again at start, so an override outlives a restart and a file edited on the Pi never unlocks a door.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from doorkeep import __version__, vocabulary
from doorkeep.clock import Clock, SystemClock, iso_ms
from doorkeep.commands import (
    DEFAULT_MAX_SKEW_S,
    MAX_OVERRIDE_S,
    CommandError,
    ReplayGuard,
    VerifiedCommand,
    peek_door,
    verify_command,
)
from doorkeep.config import DeviceConfig, DoorHardware, IntrusionSettings
from doorkeep.contract import GRANT_RULES, CommandResult, DecisionMsg, EventMsg, RequestMsg, Topics, state_payload
from doorkeep.credentials import card_hash, last4, pin_hash
from doorkeep.envelope import SnapshotRef, seal
from doorkeep.decision import (
    AccessRequest,
    Decision,
    DecisionState,
    Reason,
    choose_floor,
    commit,
    decide,
    door_unlocked_now,
    offline_decision,
    offline_floors,
    offline_site,
    pass_through,
    public_floors,
)
from doorkeep.errors import MessageError
from doorkeep.logfmt import log_context
from doorkeep.model import Door, DoorKind, DoorMode, OfflineMode, Site
from doorkeep.policy import PolicyError, ReaderSignals
from doorkeep.visitor_pass import FORMAT as PASS_FORMAT
from doorkeep.visitor_pass import PassError, looks_like_pass, read_pass
from edge.camera import Camera
from edge.door import DoorEvent, DoorMachine, DoorTimings
from edge.lift import NOBODY as LIFT_CALL
from edge.metrics import AccessStats, EdgeMetrics, MetricsError, remote_health
from edge.lift import FloorEvent, LiftMachine, LiftTimings
from edge.turnstile import TurnstileMachine, TurnstileTimings
from edge.errors import EdgeError, HardwareError
from edge.framing import CardRead
from edge.gpio import DoorInputs, EmergencyInput, FloorButtons, FloorRelays, LockRelay, Sounder, make_pin_factory
from edge.jobs import Barrier, Jobs, SaveNonces, StoreEvent, TakeSnapshot, VerifyPolicy
from edge.link import STOP_ACK_S, Link
from edge.loop import Loop, Timer
from edge.outbox import MAX_REPORTED_IDS, MB, Outbox, OutboxError, Tampered
from edge.overrides import ENDED_WHY, OVERRIDES_FILE, Override, SaveOverrides
from edge import overrides as overrides_file
from edge.policy_cache import PolicyCache
from edge.qr import QrScanner
from edge.reader_port import Reader, ReaderDeps, build_reader

log = logging.getLogger("doorkeep.edge")

# Door state-machine events worth an event message (unlocked/relocked only change the retained state), and the
# events that carry a camera snapshot: both declared in doorkeep/vocabulary.py.
PUBLISHED_DOOR_EVENTS: frozenset[str] = vocabulary.PUBLISHED_DOOR_EVENTS
#: A turnstile's events whose detail names the grant (``{"grant": access event id}``) instead of a plain detail.
TURNSTILE_EVENTS = frozenset({"passage", "grant_unused", "tailgate"})
#: A lift's events whose detail names the grant (and, for floor_chosen, the floor).
LIFT_EVENTS = frozenset({"floor_chosen", "grant_unused"})
#: A lift in destination-dispatch mode: how long a floor chosen before the badge waits for it.
DISPATCH_S = 10.0
SNAPSHOT_EVENTS: frozenset[str] = vocabulary.SNAPSHOT_EVENTS

EventListener = Callable[[EventMsg], None]

#: How long a PIN door waits for the keypad after a card, before asking without a PIN.
PIN_ENTRY_S = 10.0
#: A keypad line is "P" followed by the digits (ASCII readers).
PIN_PREFIX = "P"
#: Seconds a reader or camera has to come up at start before it is reported offline.
HEALTH_GRACE_S = 10.0
#: How often reader and camera health is looked at.
HEALTH_CHECK_S = 0.5
#: The accepted command nonces (doorkeep/commands.py ReplayGuard), in the state_dir.
COMMAND_NONCES_FILE = "command-nonces.json"


@dataclass
class _Pending:
    transaction: str
    door: str
    event_id: str
    credential_hash: str
    credential_last4: str
    t_read: float
    ts: str
    deadline: float
    snapshot: str | None
    pin_hash: str | None = None
    credential_format: str = ""
    floor: str | None = None  # a lift in destination-dispatch mode: the floor chosen before the badge


@dataclass
class _AwaitingPin:
    card: CardRead
    t_read: float
    deadline: float


@dataclass
class _DoorRuntime:
    id: str  # the door's settings (Door) come from _door(): the signed policy's, else the site file's
    hw: DoorHardware
    machine: DoorMachine
    relay: LockRelay | FloorRelays
    inputs: DoorInputs | None
    reader: Reader
    camera: Camera | None
    sounder: Sounder | None = None
    relay_on: bool = False
    sounder_on: bool = False
    last_state: str = "locked"
    last_tampered: bool = False
    awaiting_pin: _AwaitingPin | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    floors_on: frozenset[str] = frozenset()  # a lift: the floor relays energised now
    dispatch: tuple[str, float] | None = None  # a lift in destination dispatch: (floor chosen, until when)


def _nothing() -> None:
    """An entry with no handler: the timers are looked at again (``poke``)."""


class EdgeAgent:
    def __init__(self, device: DeviceConfig, site: Site | None, key: bytes, *, clock: Clock | None = None,
                 pin_factory: Any = None, policy_key: Ed25519PublicKey | None = None,
                 state_dir: Path | None = None, intrusion: IntrusionSettings | None = None) -> None:
        """``site``: the site file's model, or None when the device has no site file; then every door's
        settings come from the signed policy only, and ``policy_key`` is required (EdgeError without it).
        ``policy_key`` verifies the server's signed policy; without it (or, with a site file, without
        ``state_dir``) the edge keeps no offline cache and denies whenever the server does not answer; without
        a site file and ``state_dir`` the policy is held in a temporary directory, so a restart waits for the
        broker's retained copy. ``intrusion``: the site file's ``[intrusion]`` thresholds for the readers'
        ``reader_security`` reports (defaults without it); a policy that carries them wins."""
        if site is None and policy_key is None:
            raise EdgeError(f"{device.file}: no site_file and no policy_key_file: the doors' settings come only "
                            "from the server's signed policy, and nothing here could verify one (fix: set "
                            "policy_key_file to the server's policy-signing.pub, or name the site file)")
        self.device = device
        self.site = site
        self.site_id = site.id if site is not None else device.site
        self.key = key
        self.clock = clock or SystemClock()
        self.topics = Topics(self.site_id)
        self.counters: Counter[str] = Counter()
        # Decisions by door and reason and badge-to-relay times, from the access events (the loop's, like counters);
        # served with the rest on /metrics only when the device file has [metrics] (edge/metrics.py).
        self.access_stats = AccessStats(device.doors)
        self.metrics = EdgeMetrics(self, device.metrics) if device.metrics is not None else None
        self.listeners: list[EventListener] = []
        self.server_availability = "unknown"
        self._factory = pin_factory if pin_factory is not None else make_pin_factory(device.gpio_factory)
        # The reactor that owns the doors, and the one worker for what may block (edge/loop.py, edge/jobs.py).
        self.loop = Loop(self.clock, name=f"doorkeep-edge-{device.id}")
        self.jobs = Jobs({StoreEvent: self._store_event, SaveNonces: self._write_nonces_job,
                          VerifyPolicy: self._verify_policy_job, Barrier: self._barrier,
                          TakeSnapshot: self._snapshot_job, SaveOverrides: self._write_overrides_job},
                         name=f"doorkeep-jobs-{device.id}")
        self._pending: dict[str, _Pending] = {}
        self._tick: Timer | None = None
        self._started = False
        self._stopped = False
        self.cameras = {
            cid: Camera(cid, c.source, fps=c.fps, buffer_seconds=c.buffer_seconds, jpeg_quality=c.jpeg_quality,
                        clock=self.clock, privacy_masks=c.privacy_masks)
            for cid, c in device.cameras.items()
        }
        # Cameras with qr = true read visitor passes off their frames for their qr_door (edge/qr.py), each on a
        # thread of its own that hands what it read to the loop like a reader's card.
        self.qr_scanners = {
            cid: QrScanner(self.cameras[cid], door=c.qr_door, fps=c.qr_fps, roi=c.qr_roi,
                           on_code=lambda door, text, t: self._post(self._card, door, CardRead(text, PASS_FORMAT), t))
            for cid, c in device.cameras.items() if c.qr and c.qr_door in device.doors
        }
        self.doors: dict[str, _DoorRuntime] = {}
        # Without a state_dir, the outbox (and without a site file, the policy) live in a temporary directory.
        self._outbox_tmp: tempfile.TemporaryDirectory[str] | None = None
        if state_dir is None:
            self._outbox_tmp = tempfile.TemporaryDirectory(prefix=f"doorkeep-outbox-{device.id}-")
        self.policy: PolicyCache | None = None
        self._wants_full_policy = False  # a policy delta was refused; cleared when a full policy is taken (loop)
        policy_dir = state_dir
        if policy_dir is None and site is None and self._outbox_tmp is not None:
            policy_dir = Path(self._outbox_tmp.name)  # the policy is all it has: kept, if only until a restart
        if policy_key is not None and policy_dir is not None:
            policy_dir.mkdir(parents=True, exist_ok=True)
            self.policy = PolicyCache(policy_dir / "policy.json", policy_key, site_id=self.site_id, device=device.id)
            self.policy.load()
        # The readers' reader_security thresholds: the cached policy's if it carries them, else the site file's.
        self._site_signals = intrusion.reader_signals() if intrusion is not None else ReaderSignals()
        self._signals = self._reader_signals()
        # Every reader comes from the registry by its protocol (edge/reader_port.py); kinds that share a port
        # between doors (OSDP buses) share it through the deps. Cards, tamper and security faults come back here.
        self._reader_deps = ReaderDeps(self._on_card, self.clock, self._factory, device.doors, self._signals,
                                       on_tamper=lambda d, active: self._post(self._tamper, d, active),
                                       on_security=lambda d, cause, detail: self._post(self._reader_security, d,
                                                                                       cause, detail),
                                       loop=self.loop)
        for did, hw in device.doors.items():
            self.doors[did] = self._build_door(did, hw)
        # The fire panel's release input ([emergency]): while it is active, the doors set emergency_release are
        # held unlocked whatever else holds them (docs/openings.md "Emergency release").
        self._turnstile_grants: dict[str, tuple[str, ...]] = {}  # access event id -> who its passage moves
        self._lift_grants: dict[str, tuple[str, ...]] = {}  # access event id -> who its floor chosen moves
        self._emergency = False
        self._released_doors: set[str] = set()  # doors the input holds now, each reported emergency_release
        self.emergency_input = EmergencyInput(
            device.emergency.pin, factory=self._factory, active_low=device.emergency.active_low,
            on_change=lambda active: self._post(self._emergency_changed, active)) \
            if device.emergency is not None else None
        self.local_state = DecisionState()
        self._healthy: dict[str, bool] = {}
        self._io_errors: dict[str, int] = {}
        self._started_at = self.clock.monotonic()
        self._health_at = float("-inf")
        self._uncovered: set[str] = set()  # doors of this device the policy held does not name (logged once)
        if self.policy is not None:
            self._sync_timings()  # the cached policy's door times, from the first badge on
        if site is None:
            self._say_where_the_site_comes_from()
        # Signed commands: verified with the policy key; accepted nonces persisted so a restart reopens no replay.
        self._policy_key = policy_key
        self._cmd_lockdowns: set[str] = set()  # scopes locked down by command, until lifted by command
        self.replay_guard = ReplayGuard()
        self._nonce_file = state_dir / COMMAND_NONCES_FILE if state_dir is not None else None
        self._load_nonces()
        # Timed overrides (door -> Override), owned by the loop; their signed commands persisted in the state_dir.
        self.overrides: dict[str, Override] = {}
        self._overrides_file = state_dir / OVERRIDES_FILE if state_dir is not None else None
        self._load_overrides()
        # Events and snapshots go to the outbox first (numbered there: seq survives restarts); the link pumps it.
        if state_dir is None:
            assert self._outbox_tmp is not None
            outbox_dir = Path(self._outbox_tmp.name)
            log.warning("%s has no state_dir: events and snapshots wait in %s and are NOT durable "
                        "(an edge restart during an outage loses them, and seq starts again at 1)",
                        device.id, outbox_dir)
        else:
            outbox_dir = state_dir
        # Rows whose MAC fails on drain are never sent; the loop reports them as outbox_tampered.
        self.outbox = Outbox(outbox_dir / "outbox.db", max_bytes=device.outbox_max_mb * MB, clock=self.clock,
                             on_tampered=lambda rows: self._post(self._outbox_tampered, rows))
        self.link = Link(self.site_id, device.id, device.broker, loop=self.loop, jobs=self.jobs,
                         on_decision=self._on_decision_payload,
                         state_payload=self._state_payload, on_server_availability=self._on_server_availability,
                         on_policy=self._on_policy if self.policy is not None else None,
                         on_policy_delta=self._on_policy_delta if self.policy is not None else None,
                         on_command=self._on_command_payload,
                         outbox=self.outbox, heartbeat_s=device.heartbeat_s)

    def _build_door(self, did: str, hw: DoorHardware) -> _DoorRuntime:
        # The site file's times, replaced by the signed policy's (_sync_timings). Without either, the machine's
        # defaults serve REX alone: no badge is granted before a policy.
        door = self.site.doors[did] if self.site is not None else None
        if hw.floors:
            return self._build_lift(did, hw, door)
        machine: DoorMachine | TurnstileMachine
        if hw.passage is not None:  # a turnstile direction: its passage sensor counts one passage per grant
            machine = TurnstileMachine(did, TurnstileTimings(unlock_s=door.unlock_s, tailgate_s=door.tailgate_s)
                                       if door is not None else TurnstileTimings(), self.clock)
        else:
            machine = DoorMachine(did, DoorTimings(unlock_s=door.unlock_s, held_open_s=door.held_open_s,
                                                   prealarm_s=door.prealarm_s) if door is not None else DoorTimings(),
                                  self.clock)
        relay = LockRelay(hw.lock.pin, active_high=hw.lock.active_high, factory=self._factory)
        sounder = Sounder(hw.sounder.pin, active_high=hw.sounder.active_high, factory=self._factory) \
            if hw.sounder is not None else None
        inputs = None
        if hw.contact is not None or hw.rex is not None or hw.tamper is not None or hw.passage is not None:
            inputs = DoorInputs(
                contact_pin=hw.contact.pin if hw.contact else None,
                rex_pin=hw.rex.pin if hw.rex else None,
                factory=self._factory,
                on_contact=lambda is_open, d=did: self._post(self._contact, d, is_open),
                on_rex=lambda d=did: self._post(self._rex, d),
                contact_open_level=hw.contact.open_level if hw.contact else "high",
                rex_active_low=hw.rex.active_low if hw.rex else True,
                tamper_pin=hw.tamper.pin if hw.tamper else None,
                tamper_active_low=hw.tamper.active_low if hw.tamper else True,
                on_tamper=(lambda active, d=did: self._post(self._tamper, d, active)) if hw.tamper else None,
                passage_pin=hw.passage.pin if hw.passage else None,
                passage_active_low=hw.passage.active_low if hw.passage else True,
                on_passage=(lambda d=did: self._post(self._passage, d)) if hw.passage else None,
            )
        reader = build_reader(did, hw.reader, self._reader_deps)
        camera = self.cameras.get(hw.camera) if hw.camera else None
        return _DoorRuntime(did, hw, machine, relay, inputs, reader, camera, sounder)

    def _build_lift(self, did: str, hw: DoorHardware, door: Door | None) -> _DoorRuntime:
        """A lift cab: a relay per floor and, where wired, the floor buttons (docs/openings.md "Lifts")."""
        buttons = {f.area: (f.button, f.button_active_low) for f in hw.floors if f.button is not None}
        machine = LiftMachine(did, tuple(f.area for f in hw.floors),
                              LiftTimings(unlock_s=door.unlock_s) if door is not None else LiftTimings(),
                              self.clock, buttons=bool(buttons))
        relays = FloorRelays({f.area: (f.relay, f.relay_active_high) for f in hw.floors}, factory=self._factory)
        tamper = None
        if hw.tamper is not None:
            tamper = DoorInputs(contact_pin=None, rex_pin=None, factory=self._factory, on_contact=lambda _: None,
                                on_rex=_nothing, tamper_pin=hw.tamper.pin, tamper_active_low=hw.tamper.active_low,
                                on_tamper=lambda active, d=did: self._post(self._tamper, d, active))
        reader = build_reader(did, hw.reader, self._reader_deps)
        camera = self.cameras.get(hw.camera) if hw.camera else None
        rt = _DoorRuntime(did, hw, machine, relays, tamper, reader, camera)  # type: ignore[arg-type]
        if buttons:
            rt.extra["buttons"] = FloorButtons(buttons, factory=self._factory,
                                               on_press=lambda area, d=did: self._post(self._floor_pressed, d, area))
        return rt

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the cameras, the jobs worker, the readers and the link, then the loop's thread.

        Readers and the link register their fds and timers before the loop runs (the loop is not yet anyone's,
        so this thread may); from the moment the loop runs, only its thread touches them."""
        if self._started:
            return
        self._started = True
        for cam in self.cameras.values():
            cam.start()
        for scanner in self.qr_scanners.values():
            scanner.start()
        self.jobs.start()
        for rt in self.doors.values():
            if rt.inputs is not None and rt.inputs.contact_open:
                self._post(self._contact, rt.id, True)
            if rt.inputs is not None and rt.inputs.tampered:
                self._post(self._tamper, rt.id, True)  # an open cover or a cut loop at boot is reported
            try:
                rt.reader.start()
                # Known good from here: a loss right after start is a loss, not a reader still booting.
                # (An OSDP reader is good only once its handshake is done: it gets the start-up grace.)
                if rt.reader.ready_at_start:
                    self._healthy.setdefault(f"reader:{rt.id}", True)
            except HardwareError as exc:
                # One dead reader must not take the other doors down; the state shows it offline.
                self.counters["reader_start_failures"] += 1
                log.error("door %s: %s", rt.id, exc, extra=self._ctx(rt.id))
        if self.emergency_input is not None and self.emergency_input.active:
            self._post(self._emergency_changed, True)  # a fire alarm (or a cut wire) at boot releases at once
        self.link.start()
        self._rearm()
        self.loop.start()
        if self.metrics is not None:
            try:
                self.metrics.start()  # its own thread, reading the loop's state through the loop
            except MetricsError as exc:
                # Monitoring is not worth a door: the edge runs on, and says loudly what it does not serve.
                self._post(self._count, "metrics_unavailable")
                log.error("%s; the edge runs without /metrics and /healthz", exc)

    def stop(self) -> None:
        """Relays to their safe state first, then everything else; idempotent.

        On the loop: relays off, readers and inputs released, the retained state (every relay off) and
        ``stopped`` published. The loop keeps turning until the broker acknowledged ``stopped`` (at most
        ``STOP_ACK_S``), then ends; the jobs worker then writes what is queued to the outbox and ends. What the
        broker has not acknowledged stays in the outbox for the next start."""
        if self._stopped:
            return
        self._stopped = True
        if self.metrics is not None:
            self.metrics.stop()  # before anything it reads goes away
        if not self._started:
            self._make_safe()
            self._release_hardware()
            self.outbox.close()
            self._cleanup_tmp()
            return
        done, _ = self.loop.call_and_wait(self._stop_on_loop, 5.0)
        if not done:
            log.error("%s: the loop did not answer the stop within 5 s; making the relays safe from here",
                      self.device.id)
        self.link.stop_acknowledged.wait(STOP_ACK_S)
        if not self.loop.stop(5.0):
            log.error("%s: the loop thread did not end within 5 s", self.device.id)
        self._make_safe()  # again, from this thread: whatever happened on the loop, the relays end off
        self.link.close()
        self._release_hardware()
        for scanner in self.qr_scanners.values():
            scanner.stop()
        for cam in self.cameras.values():
            cam.stop()
        self.jobs.stop()
        self.outbox.close()
        self.loop.close()
        self._cleanup_tmp()

    def _stop_on_loop(self) -> None:
        self._make_safe(report=True)
        for rt in self.doors.values():
            try:
                rt.reader.stop()
            except Exception:
                log.exception("door %s: stopping the reader failed", rt.id)
        self.link.publish_state()  # the retained state now shows every relay off
        self.link.begin_stop()

    def _release_hardware(self) -> None:
        if self.emergency_input is not None:
            self.emergency_input.close()
        for rt in self.doors.values():
            try:
                rt.reader.stop()
            except Exception:
                log.exception("door %s: stopping the reader failed", rt.id)
            if rt.inputs is not None:
                rt.inputs.close()
            if "buttons" in rt.extra:
                rt.extra["buttons"].close()
            rt.relay.close()
            if rt.sounder is not None:
                rt.sounder.close()

    def _cleanup_tmp(self) -> None:
        if self._outbox_tmp is not None:
            self._outbox_tmp.cleanup()

    def poke(self) -> None:
        """Re-evaluate every deadline now (after a simulated clock jumped forward); any thread."""
        self._post(_nothing)

    def sync(self, timeout: float) -> bool:
        """True once the loop has handled everything handed to it before this call (and any overdue timer) and
        the jobs worker has done what that gave it (events on disk, listeners told); any thread but the loop's."""
        done = threading.Event()

        def on_loop() -> None:
            self.jobs.submit(Barrier(lambda: self.loop.call_soon_threadsafe(done.set)))

        self._post(on_loop)
        return done.wait(timeout)

    @property
    def in_flight(self) -> bool:
        """A request is waiting for the server, or a card for its PIN."""
        return bool(self._pending) or any(rt.awaiting_pin is not None for rt in self.doors.values())

    def _make_safe(self, report: bool = False) -> None:
        """Every relay off and every sounder silent. ``report`` (on the loop, while the jobs worker still writes
        the outbox): what fell due before the stop is still published (a held-open alarm or pre-alarm due just
        before it, a turnstile's grant cancelled by it), so a shutdown never swallows an alarm."""
        for rt in self.doors.values():
            events: list[DoorEvent] = []
            try:
                events = rt.machine.safe()
                rt.relay.set(False)
                rt.relay_on = False
                rt.floors_on = frozenset()
            except Exception:
                log.exception("door %s: could not de-energise the relay", rt.id)
            if report:
                for e in events:
                    if e.type in PUBLISHED_DOOR_EVENTS:
                        try:
                            self._door_event(rt, e)
                        except Exception:
                            log.exception("door %s: could not report %s at shutdown", rt.id, e.type)
            if rt.sounder is not None:
                try:
                    rt.sounder.set(False)
                    rt.sounder_on = False
                except Exception:
                    log.exception("door %s: could not silence the sounder", rt.id)

    # --------------------------------------------------------- entry points

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Hand ``fn(*args)`` to the loop from any thread (gpiozero, the jobs worker, the camera)."""
        self.loop.call_soon_threadsafe(self._entry, fn, args)

    def _entry(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        """Every way into the door logic, on the loop: the handler, then the timers it may have moved.

        A handler that raises is counted and logged; the doors go on (and a relay is only ever energised by the
        state machine's grant or REX, so an error leaves it as it was or de-energised)."""
        try:
            fn(*args)
        except Exception:
            self.counters["errors"] += 1
            log.exception("error handling %s", getattr(fn, "__name__", fn))
        self._timers()

    def _timers(self) -> None:
        try:
            self._on_time()
        except Exception:
            self.counters["errors"] += 1
            log.exception("error handling a timer")
        self._rearm()

    def _rearm(self) -> None:
        """One timer, at the next door deadline, and at least every HEALTH_CHECK_S for health and door modes."""
        now = self.clock.monotonic()
        deadlines = [p.deadline for p in self._pending.values()]
        deadlines += [rt.awaiting_pin.deadline for rt in self.doors.values() if rt.awaiting_pin is not None]
        deadlines += [d for rt in self.doors.values() if (d := rt.machine.next_deadline()) is not None]
        if self.overrides:  # an override ends at a wall time: its monotonic deadline, from now
            wall = self.clock.wall()
            deadlines += [now + max(0.0, o.until - wall) for o in self.overrides.values()]
        when = min([now + HEALTH_CHECK_S, *deadlines])
        if self._tick is not None:
            if self._tick.when <= when and not self._tick.cancelled:
                return
            self._tick.cancel()
        self._tick = self.loop.call_at(when, self._on_tick)

    def _on_tick(self) -> None:
        self._tick = None
        self._timers()

    def _on_card(self, door: str, card: CardRead, t_read: float) -> None:
        """A reader's card or PIN: decided in this very call when the reader runs on the loop (it does)."""
        if self.loop.in_loop():
            self._entry(self._card, (door, card, t_read))
        else:
            self._post(self._card, door, card, t_read)

    def _on_decision_payload(self, door: str, payload: bytes) -> None:
        """The server's answer, read from paho's socket on the loop: the relay is set in this call."""
        try:
            msg = DecisionMsg.decode(payload)
        except MessageError as exc:
            self.counters["malformed_decisions"] += 1
            log.warning("door %s: dropped malformed decision: %s", door, exc, extra=self._ctx(door))
            return
        self._entry(self._decided, (door, msg))

    def reader_health(self, door: str) -> bool | None:
        """On the loop: the door's reader as last reported (``reader_online`` True, ``reader_offline`` False), or
        None while it has not come up within its start-up grace (nothing reported yet)."""
        return self._healthy.get(f"reader:{door}")

    def _on_server_availability(self, value: str) -> None:
        self.server_availability = value

    def _contact(self, door: str, is_open: bool) -> None:
        rt = self.doors[door]
        self._apply(rt, rt.machine.contact(is_open))

    def _grant(self, rt: _DoorRuntime, token: str, movers: tuple[str | None, ...],
               floors: tuple[str, ...] = (), chosen: bool = False) -> list[DoorEvent]:
        """Grant at a door: an unlock time; at a turnstile one passage credit named by the access event's id
        (``token``), remembering who the grant moves once its passage is counted; at a lift the floors granted,
        remembering who moves to the floor chosen. A destination-dispatch grant (``chosen``) has its floor
        chosen already (the grant moved its people): the floor is enabled for the call, and no press is awaited."""
        if isinstance(rt.machine, TurnstileMachine):
            self._turnstile_grants[token] = tuple(m for m in movers if m)
            return rt.machine.grant(token)
        if isinstance(rt.machine, LiftMachine):
            if chosen:
                return rt.machine.grant(LIFT_CALL, floors)
            self._lift_grants[token] = tuple(m for m in movers if m)
            return rt.machine.grant(token, floors)
        return rt.machine.grant()

    def _floor_pressed(self, door: str, floor: str) -> None:
        """A floor button in a lift cab. In destination dispatch, a floor no grant enables is remembered for the
        next badge (DISPATCH_S), which then asks for that floor alone."""
        rt = self.doors[door]
        if not isinstance(rt.machine, LiftMachine):
            return
        self.counters["floor_presses"] += 1
        before = rt.machine.credits
        self._apply(rt, rt.machine.press(floor))
        if rt.hw.dispatch and rt.machine.credits == before and floor not in rt.machine.enabled:
            rt.dispatch = (floor, self.clock.monotonic() + DISPATCH_S)

    def _lift_event(self, rt: _DoorRuntime, e: DoorEvent) -> dict[str, Any]:
        """Follow a lift grant to its end on this edge: the floor chosen moves the people it named there in the
        local state; an unused grant moves nobody. The detail names the grant (and the floor) for the server."""
        token = e.detail
        movers = self._lift_grants.pop(token, ()) if token else ()
        if e.type == "floor_chosen" and isinstance(e, FloorEvent):
            site = self.policy.site if self.policy is not None else None
            if site is not None and movers:
                choose_floor(site, self.local_state, rt.id, e.floor, movers, self.clock.wall())
            return {"grant": token, "floor": e.floor}
        return {"grant": token} if token else {}

    def _passage(self, door: str) -> None:
        rt = self.doors[door]
        if isinstance(rt.machine, TurnstileMachine):
            self._apply(rt, rt.machine.passage())

    def _turnstile_event(self, rt: _DoorRuntime, e: DoorEvent) -> dict[str, Any]:
        """Follow a turnstile's grant to its end on this edge: its passage moves the people it named in the local
        state (anti-passback and occupancy count passages), an unused grant moves nobody. The event's detail names
        the grant (the access event's id) so the server does the same."""
        token = e.detail
        if e.type == "passage" and token:
            movers = self._turnstile_grants.pop(token, ())
            site = self.policy.site if self.policy is not None else None
            if site is not None and movers:
                pass_through(site, self.local_state, rt.id, movers, self.clock.wall())
        elif e.type == "grant_unused":
            self._turnstile_grants.pop(token, None)
        return {"grant": token} if token else {}

    def _rex(self, door: str) -> None:
        rt = self.doors[door]
        busy = self._interlock_busy(door)
        if busy is not None:
            # The exit button of an interlocked door waits like a badge: the lock stays locked (pushing the door
            # open anyway is forced_open), and the press is reported with why nothing happened.
            self.counters["rex_interlock_busy"] += 1
            self._publish_event(EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()),
                                         device=self.device.id, door=door, type="rex",
                                         detail={"detail": "interlock_busy", "busy_door": busy}))
            return
        self._apply(rt, rt.machine.rex())

    def _tamper(self, door: str, active: bool) -> None:
        rt = self.doors[door]
        self._apply(rt, rt.machine.tamper(active))

    def _on_policy(self, payload: bytes) -> None:
        """Verification goes to the jobs worker: a large policy must not stall the doors."""
        self.jobs.submit(VerifyPolicy(payload))

    def _verify_policy_job(self, job: VerifyPolicy) -> None:
        self._verify_policy(job.payload)

    def _verify_policy(self, payload: bytes) -> None:
        """Jobs worker: verify and cache; the loop is told what came of it (it alone counts and applies)."""
        assert self.policy is not None
        first = self.policy.current is None
        try:
            if self.policy.offer(payload):
                log.info("policy version %s verified and cached", self.policy.version)
                if first and self.site is None:
                    log.info("%s: first signed policy held; its doors now follow it (no site_file)", self.device.id)
                self._post(self._policy_arrived)
        except PolicyError as exc:
            # Unsigned, badly signed, foreign or replayed: refused and recorded, the cache keeps what it had.
            log.warning("refused a policy: %s", exc, extra=self._ctx())
            self._post(self._count, "policies_refused")

    def _on_policy_delta(self, payload: bytes) -> None:
        """A signed delta (doorkeep/policy_delta.py) on the jobs worker, in order with the full policies: a
        Barrier job, because a VerifyPolicy keeps only the newest of a burst and a delta must never be skipped."""
        self.jobs.submit(Barrier(lambda: self._apply_policy_delta(payload)))

    def _apply_policy_delta(self, payload: bytes) -> None:
        """Jobs worker: apply the delta to the policy held; refused (a gap, another base, a wrong result, a bad
        signature) it is counted (``policy_deltas_refused``) and the retained state asks for a full policy."""
        assert self.policy is not None
        try:
            if self.policy.offer_delta(payload):
                log.info("policy delta applied: version %s", self.policy.version)
                self._post(self._policy_delta_arrived)
        except PolicyError as exc:
            log.warning("refused a policy delta: %s; asking for a full policy", exc, extra=self._ctx())
            self._post(self._policy_delta_refused)

    def _policy_delta_arrived(self) -> None:
        self.counters["policy_deltas"] += 1
        self._policy_arrived()

    def _policy_delta_refused(self) -> None:
        self.counters["policy_deltas_refused"] += 1
        self._wants_full_policy = True
        self.link.publish_state()  # policy.wants_full: the server answers with a full policy (server/publisher.py)

    def _count(self, name: str) -> None:
        self.counters[name] += 1

    def _ctx(self, door: str | None = None, event_id: str | None = None) -> dict[str, str]:
        """A log call's ``extra=``: this device, and the door and event the line is about (JSON logs' fields)."""
        return log_context(self.device.id, door, event_id)

    def _policy_arrived(self) -> None:
        self.counters["policies"] += 1
        held = self.policy.current if self.policy is not None else None
        if held is not None and self.policy is not None and held.version == self.policy.base_version:
            self._wants_full_policy = False  # a full policy taken: the chain starts again
        self._sync_lockdowns()
        self._sync_timings()
        self._sync_reader_signals()
        self.link.publish_state()  # the version held (and no longer waiting_for_first_policy)

    def _barrier(self, job: Barrier) -> None:
        job.then()

    @property
    def server_reachable(self) -> bool:
        return self.link.connected and self.server_availability not in ("offline", "stopped")

    def _sync_timings(self) -> None:
        """A door's unlock, held-open and pre-alarm times come with the signed policy: a site revision changes
        them at the door without touching the Pi (its device file holds the hardware). The door's state
        machine reads them at each step, and only this thread (the loop, or the constructor before
        it starts) changes them."""
        site = self.policy.site if self.policy is not None else None
        if site is None:
            return
        for rt in self.doors.values():
            door = site.doors.get(rt.id)
            if door is None:
                if self.site is None and rt.id not in self._uncovered:
                    self._uncovered.add(rt.id)
                    log.error("door %s is in %s but not in the signed policy version %s for %s: its badges are "
                              "refused (unknown_door) until the server's site puts this door on this device",
                              rt.id, self.device.file, self.policy.version if self.policy else None,
                              self.device.id)
                continue
            self._uncovered.discard(rt.id)
            now = rt.machine.timings
            if isinstance(now, LiftTimings):
                lift = dataclasses.replace(now, unlock_s=door.unlock_s)
                if lift != now:
                    rt.machine.timings = lift
                    log.info("lift %s: a grant's floors wait %.1f s (signed policy)", rt.id, lift.unlock_s)
                continue
            if isinstance(now, TurnstileTimings):
                turnstile = dataclasses.replace(now, unlock_s=door.unlock_s, tailgate_s=door.tailgate_s)
                if turnstile != now:
                    rt.machine.timings = turnstile
                    log.info("turnstile %s: a grant waits %.1f s, tailgate %.1f s (signed policy)", rt.id,
                             turnstile.unlock_s, turnstile.tailgate_s)
                continue
            new = dataclasses.replace(now, unlock_s=door.unlock_s, held_open_s=door.held_open_s,
                                      prealarm_s=door.prealarm_s)
            if new != now:
                rt.machine.timings = new
                log.info("door %s: unlock %.1f s, held open %.1f s, pre-alarm %.1f s (signed policy)", rt.id,
                         new.unlock_s, new.held_open_s, new.prealarm_s)

    def _reader_signals(self) -> ReaderSignals:
        """The readers' ``reader_security`` thresholds: the held policy's when it carries them, else the site
        file's ``[intrusion]`` (defaults without a site file; a policy leaves them out when they are the
        defaults)."""
        current = self.policy.current if self.policy is not None else None
        if current is not None and current.reader_signals is not None:
            return current.reader_signals
        return self._site_signals

    def _sync_reader_signals(self) -> None:
        """A policy may bring other reader thresholds (a site revision changed ``[intrusion]``): apply them."""
        signals = self._reader_signals()
        if signals == self._signals:
            return
        self._signals = signals
        for rt in self.doors.values():
            rt.reader.apply_signals(signals)
        log.info("reader_security thresholds: %d failed handshakes or %d clear NAKs within %g s (signed policy)",
                 signals.handshake_failures, signals.clear_naks, signals.window_s)

    def _say_where_the_site_comes_from(self) -> None:
        """Without a site file, say once at start what this edge runs on, or what it waits for."""
        held = self.policy.current if self.policy is not None else None
        if held is not None:
            log.info("%s has no site_file: its doors follow the cached signed policy version %d until the "
                     "server sends a newer one", self.device.id, held.version)
            return
        log.warning("%s has no site_file and holds no signed policy yet: every door stays locked (REX still "
                    "opens) and every badge is refused (no_policy) until the server's policy for %s arrives on "
                    "%s, verified with %s%s", self.device.id, self.device.id, self.topics.policy(self.device.id),
                    self.device.policy_key_file or "the policy key",
                    "" if self.device.state_dir is not None else
                    " (no state_dir: it is kept in memory only, so every restart waits for it again)")

    def _sync_lockdowns(self) -> None:
        """Lockdowns travel in the signed policy, so they hold when this edge decides alone; a signed
        lockdown command adds its scope at once (until a command lifts it), before the new policy arrives."""
        site = self.policy.site if self.policy is not None else None
        scopes = set(site.lockdowns) if site is not None else set()
        scopes |= self._cmd_lockdowns
        self.local_state.lockdown_site = "site" in scopes
        self.local_state.lockdown_areas = {a for a in scopes if a != "site"}

    def _door_modes(self) -> None:
        """Hold doors in mode unlocked_on_schedule open while their schedule (and first-person-in) allow, and
        doors under a timed override as it says: a lock override beats the schedule, a lockdown beats both, and
        the emergency input beats everything for the doors set emergency_release."""
        if self.overrides:
            self._end_due_overrides()
        site = self._site()
        if site is None:
            return  # no policy yet, no site file: no door is held open
        wall = self.clock.wall()
        for rt in self.doors.values():
            door = site.doors.get(rt.id)
            override = self.overrides.get(rt.id)
            released = self._released(door)
            self._report_release(rt.id, released)
            if isinstance(rt.machine, LiftMachine):
                self._lift_mode(rt, door, site, override, released, wall)
                continue
            if door is None or (door.mode is DoorMode.NORMAL and override is None and not rt.machine.held_unlocked
                                and not released):
                continue
            if released:
                want = True  # life safety first: an emergency beats a lockdown and a lock override
            elif override is not None:
                want = override.kind == "unlock" and not self.local_state.locked_down(door.to_area)
            else:
                want = door_unlocked_now(door.id, site, self.local_state, wall)
            if want != rt.machine.held_unlocked:
                self._apply(rt, rt.machine.hold_unlocked(want))

    def _lift_mode(self, rt: _DoorRuntime, lift: Door | None, site: Site, override: Override | None,
                   released: bool, wall: float) -> None:
        """A lift's public floors (their schedule open), blocked floors (a lockdown of their area) and hold (the
        fire panel's release beats everything). As at a door, a lock override holds the lift shut against its
        schedule (no public floor) while badges still work, and an unlock override frees every floor not locked
        down."""
        machine = rt.machine
        assert isinstance(machine, LiftMachine)
        if lift is None:
            public: frozenset[str] = frozenset()
            blocked: frozenset[str] = frozenset()
        else:
            public = frozenset(public_floors(lift, site, self.local_state, wall))
            blocked = frozenset(f.area for f in lift.floors if self.local_state.locked_down(f.area))
            if override is not None and override.kind == "lock":
                public = frozenset()
            elif override is not None and override.kind == "unlock":
                public = frozenset(machine.floors) - blocked
        events: list[DoorEvent] = []
        if released != machine.held_unlocked:
            events += machine.hold_unlocked(released)
        if blocked != machine.blocked:
            events += machine.set_blocked(blocked)
        if public != machine.public:
            events += machine.set_public(public)
        if events or machine.enabled != rt.floors_on:
            self._apply(rt, events)

    def _health(self, now: float) -> None:
        """Report readers and cameras that go offline or come back (reader_offline, camera_online, ...).

        At start-up a device only counts as offline once it has had ``HEALTH_GRACE_S`` to come up.
        """
        booting = now - self._started_at < HEALTH_GRACE_S
        for rt in self.doors.values():
            stats = rt.reader.stats
            key = f"reader:{rt.id}"
            lost = stats.io_errors > self._io_errors.get(key, 0)
            self._io_errors[key] = stats.io_errors
            if lost and self._healthy.get(key):
                # Lost and already back between two checks: still an outage worth reporting.
                self._health_change(rt, key, False, "reader", booting, {})
            online, detail = stats.online, {}
            reason = rt.reader.health_reason  # OSDP: no_reply, needs_key, wrong_key, ...; Wiegand: line_stuck_low
            if not online and reason:
                detail = {"cause": reason}
            timeout = rt.hw.reader.silence_timeout_s
            if online and timeout is not None:
                silent = rt.reader.silent_for(now)
                if silent > timeout:
                    # No frame, no keep-alive: a cut data line or a dead reader (docs/alarms.md).
                    online, detail = False, {"cause": "silent", "silent_s": round(silent, 1)}
            self._health_change(rt, key, online, "reader", booting, detail)
        for cid, cam in self.cameras.items():
            rt = next((r for r in self.doors.values() if r.hw.camera == cid), None)
            if rt is not None:
                self._health_change(rt, f"camera:{cid}", cam.stats.online, "camera", booting, {"camera": cid})

    def _health_change(self, rt: _DoorRuntime, key: str, online: bool, what: str, booting: bool,
                       detail: dict[str, Any]) -> None:
        before = self._healthy.get(key)
        if before is None and not online and booting:
            return
        if before == online or (before is None and online):
            self._healthy[key] = online
            return
        self._healthy[key] = online
        kind = f"{what}_{'online' if online else 'offline'}"
        self.counters[kind] += 1
        (log.info if online else log.warning)("door %s: %s %s", rt.id, what, "back online" if online else "offline",
                                              extra=self._ctx(rt.id))
        ev = EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()), device=self.device.id,
                      door=rt.id, type=kind, detail=detail)
        self._publish_event(ev)
        self.link.publish_state()

    def _on_time(self) -> None:
        now = self.clock.monotonic()
        if now - self._health_at >= HEALTH_CHECK_S:
            # Not after every card and decision: a loss between two checks is still seen (io_errors).
            self._health_at = now
            self._health(now)
        self._door_modes()
        for tx in [tx for tx, p in self._pending.items() if p.deadline <= now]:
            p = self._pending.pop(tx)
            self.counters["timeouts"] += 1
            settings = self._door(p.door)
            log.warning("door %s: no decision within %s ms; deciding locally", p.door,
                        settings.decision_timeout_ms if settings is not None else "?", extra=self._ctx(p.door, p.event_id))
            self._decide_locally(p)
        for rt in self.doors.values():
            if rt.awaiting_pin is not None and rt.awaiting_pin.deadline <= now:
                waiting, rt.awaiting_pin = rt.awaiting_pin, None
                self.counters["pin_timeouts"] += 1
                self._request(rt.id, waiting.card, waiting.t_read, None)
        for rt in self.doors.values():
            deadline = rt.machine.next_deadline()
            if deadline is not None and deadline <= now:
                self._apply(rt, rt.machine.tick())

    # ---------------------------------------------------- request/decision

    def _card(self, door: str, card: CardRead, t_read: float) -> None:
        """A card or a keypad entry; PIN doors wait for the PIN before asking."""
        if card.format == PASS_FORMAT and not looks_like_pass(card.number):
            self.counters["qr_not_a_pass"] += 1  # any other QR code in view (a poster, a URL): not a badge
            log.info("door %s: a QR code that is not a visitor pass was ignored", door)
            return
        rt = self.doors[door]
        is_pin = card.format in ("ascii", "keypad") and card.number.startswith(PIN_PREFIX) \
            and card.number[1:].isdigit()
        if self._door(door) is None and not is_pin:
            self._refuse_unsettled(door, card, t_read)
            return
        if card.format == PASS_FORMAT:
            held = self._visitor_pass(door, card, t_read)  # a QR code from the camera or a serial QR scanner
            if held is None:
                return
            card = held
        if is_pin:
            waiting, rt.awaiting_pin = rt.awaiting_pin, None
            if waiting is None:
                self.counters["pin_without_card"] += 1
                log.info("door %s: PIN typed without a card first; ignored", door)
                return
            self._request(door, waiting.card, t_read, pin_hash(self.key, card.number[1:]))
        elif (settings := self._door(door)) is not None and settings.pin_required:
            rt.awaiting_pin = _AwaitingPin(card, t_read, t_read + PIN_ENTRY_S)
        else:
            self._request(door, card, t_read, None)

    def _visitor_pass(self, door: str, card: CardRead, t_read: float) -> CardRead | None:
        """A visitor pass read at ``door``, checked here before anyone is asked (doorkeep/visitor_pass.py):
        the card it stands for (its visit and serial, hashed like a card number under ``qr-pass``), or None
        when it was refused here: ``pass_invalid`` (malformed, or not signed by a key of the signed policy:
        it never reaches the server or the relay), ``not_yet_valid`` / ``expired`` (outside its window by
        this edge's clock, whether or not the server can be reached)."""
        current = self.policy.current if self.policy is not None else None
        keys = current.pass_keys if current is not None and current.pass_keys else {}
        try:
            token = read_pass(card.number, keys)
        except PassError as exc:
            self.counters["passes_invalid"] += 1
            log.warning("door %s: visitor pass refused (%s): %s", door, exc.reason, exc, extra=self._ctx(door))
            shown = "".join(c for c in card.number[-64:] if c.isascii() and c.isalnum()) or "?"
            self._refuse_here(door, CardRead(shown, PASS_FORMAT), t_read, Reason.PASS_INVALID)
            return None
        number = token.credential_number
        outside = token.window_reason(self.clock.wall())
        if outside is not None:
            self.counters[f"passes_{outside}"] += 1
            self._refuse_here(door, CardRead(number, PASS_FORMAT), t_read, Reason(outside))
            return None
        self.counters["passes"] += 1
        return CardRead(number, PASS_FORMAT)

    def _refuse_here(self, door: str, card: CardRead, t_read: float, reason: Reason) -> None:
        """Refuse a badge at once on this edge's own finding, without asking the server (the lock stays locked)."""
        self.counters[f"denied_{reason.value}"] += 1
        p = _Pending(uuid.uuid4().hex, door, uuid.uuid4().hex, card_hash(self.key, card.format, card.number),
                     last4(card.number), t_read, iso_ms(self.clock.wall()), t_read, None, None, card.format)
        self._access_event(p, granted=False, reason=reason.value, person=None, decided_by="edge_offline",
                           t_done=self.clock.monotonic())

    def _door(self, door: str) -> Door | None:
        """The door's settings: from the signed policy when one is cached, else from the site file; None
        without a site file before a policy names the door (its badges are refused, see _refuse_unsettled)."""
        site = self.policy.site if self.policy is not None else None
        found = site.doors.get(door) if site is not None else None
        if found is None and self.site is not None:
            found = self.site.doors[door]
        return found

    def _refuse_unsettled(self, door: str, card: CardRead, t_read: float) -> None:
        """Fail secure without a site file when nothing says how this door behaves: refused at once, never
        asked (``no_policy`` before any policy is held, ``unknown_door`` when the one held lacks the door)."""
        rt = self.doors[door]
        rt.awaiting_pin = None
        held = self.policy is not None and self.policy.current is not None
        reason = Reason.UNKNOWN_DOOR if held else Reason.NO_POLICY
        self.counters[f"denied_{reason.value}"] += 1
        p = _Pending(uuid.uuid4().hex, door, uuid.uuid4().hex, card_hash(self.key, card.format, card.number),
                     last4(card.number), t_read, iso_ms(self.clock.wall()), t_read, None, None, card.format)
        self._access_event(p, granted=False, reason=reason.value, person=None, decided_by="edge_offline",
                           t_done=self.clock.monotonic())

    def _released(self, door: Door | None) -> bool:
        """Whether the emergency input holds this door unlocked now."""
        return self._emergency and door is not None and door.emergency_release

    def _emergency_changed(self, active: bool) -> None:
        """The emergency input opened (release) or closed again: hold the doors set ``emergency_release`` unlocked,
        or hand them back to their normal state, and report it at each of them (the server raises and clears
        the ``emergency_release`` alarm)."""
        if active == self._emergency:
            return
        self._emergency = active
        self.counters["emergency_releases" if active else "emergency_ends"] += 1
        log.warning("%s: emergency input %s", self.device.id, "active: releasing doors" if active else "cleared",
                    extra=self._ctx())
        self._door_modes()  # holds the doors and reports each (_report_release)
        self.link.publish_state()

    def _report_release(self, door: str, released: bool) -> None:
        """Say ``emergency_release`` when the emergency input starts holding a door, ``emergency_ended`` when it
        stops, once each: also when the door's settings arrive only after the input opened (a fire alarm at boot
        before the first policy) or a new policy takes the door out of the release."""
        if released == (door in self._released_doors):
            return
        (self._released_doors.add if released else self._released_doors.discard)(door)
        self._publish_event(EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()),
                                     device=self.device.id, door=door,
                                     type="emergency_release" if released else "emergency_ended", detail={}))

    def _interlock_busy(self, door: str) -> str | None:
        """The other door of ``door``'s interlock that is busy (open, unlocked, held unlocked, or waiting for
        an answer to a badge), or None: at most one door of a group may be in any of these at a time.

        A badge at a group door reserves the group from the moment it is asked about until its answer (and,
        if granted, until the door has relocked), so two people at both ends at once cannot both be let in:
        the first badge this loop reads wins, the second is refused ``interlock_busy`` without being asked.
        """
        settings = self._door(door)
        group = settings.interlock if settings is not None else None
        if group is None or self._released(settings):
            return None  # no interlock, or an emergency holds the whole group open (config: all or none)
        waiting = {p.door for p in self._pending.values()}
        for other, rt in self.doors.items():
            if other == door:
                continue
            mate = self._door(other)
            if mate is None or mate.interlock != group:
                continue
            if rt.machine.relay_energised or rt.machine.door_open or rt.relay_on or other in waiting:
                return other
        return None

    def _refuse_interlock(self, door: str, card: CardRead, t_read: float, busy: str) -> None:
        """Refuse a badge at a door whose interlock is busy, naming the person the cached policy knows the card
        by: the edge decided on a door rule of its own (``decided_by`` ``edge``), the lock stays locked."""
        self.counters["denied_interlock_busy"] += 1
        h = card_hash(self.key, card.format, card.number)
        site = self.policy.site if self.policy is not None else None
        cred = (site or self.site).credentials.get(h) if (site or self.site) is not None else None
        settings = self._door(door)
        log.info("door %s: interlock %s busy (door %s): badge refused", door,
                 settings.interlock if settings is not None else "?", busy, extra=self._ctx(door))
        ev = EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()), device=self.device.id, door=door,
                      type="access", decision="denied", reason=Reason.INTERLOCK_BUSY.value, decided_by="edge",
                      person=cred.person if cred is not None else None, credential_hash=h,
                      credential_last4=last4(card.number), transaction=uuid.uuid4().hex,
                      latency_ms=round((self.clock.monotonic() - t_read) * 1000.0, 3), snapshot=None,
                      detail={"interlock": settings.interlock if settings is not None else None, "busy_door": busy})
        self._publish_event(ev)
        self._reader_feedback(door, False)

    def _request(self, door: str, card: CardRead, t_read: float, pin: str | None) -> None:
        rt = self.doors[door]
        busy = self._interlock_busy(door)
        if busy is not None:
            self._refuse_interlock(door, card, t_read, busy)
            return
        h = card_hash(self.key, card.format, card.number)
        tx = uuid.uuid4().hex
        event_id = uuid.uuid4().hex
        wall = self.clock.wall()
        snapshot = event_id if rt.camera is not None and rt.camera.stats.online else None
        # The timeout runs from the moment the question is asked (after a PIN, that is later than the card).
        asked = max(t_read, self.clock.monotonic())
        p = _Pending(tx, door, event_id, h, last4(card.number), t_read, iso_ms(wall),
                     asked + self._timeout_s(door), snapshot, pin, card.format, self._dispatched(rt))
        self.counters["requests"] += 1
        if not self.server_reachable:
            # No broker or no server: waiting out the timeout would only keep the person at the door.
            self._decide_locally(p)
        else:
            self._pending[tx] = p
            req = RequestMsg(tx, door, h, p.credential_last4, card.format, p.ts, pin, p.floor, round(asked, 3))
            self.link.publish(self.topics.request(self.device.id, door), req.encode())
            self.link.flush()  # on the socket now, before anything else this turn does
        if snapshot is not None and rt.camera is not None:
            self._take_snapshot(rt.camera, t_read, door, event_id)

    def _dispatched(self, rt: _DoorRuntime) -> str | None:
        """The floor chosen in a destination-dispatch cab for this badge (used once), if still fresh."""
        chosen, rt.dispatch = rt.dispatch, None
        if chosen is None or chosen[1] < self.clock.monotonic():
            return None
        return chosen[0]

    def _timeout_s(self, door: str) -> float:
        """How long a request waits for the server: the door's ``decision_timeout_ms`` (policy wins)."""
        settings = self._door(door)
        return (settings.decision_timeout_ms if settings is not None else Door.decision_timeout_ms) / 1000.0

    def _decide_locally(self, p: _Pending) -> None:
        """The same decide() the server runs, on the cached policy and this edge's own state."""
        door = self._door(p.door)
        site = self.policy.site if self.policy is not None else None
        now_mono = self.clock.monotonic()
        if door is None:  # a newer policy took the door off this device while the request was out
            self.counters["offline_denied"] += 1
            self._access_event(p, granted=False, reason=Reason.UNKNOWN_DOOR.value, person=None,
                               decided_by="edge_offline", t_done=now_mono)
            return
        offline_ok = offline_floors(door) if door.kind is DoorKind.LIFT else ()
        if door.offline is OfflineMode.DENY and not offline_ok:
            self.counters["offline_denied"] += 1
            self._access_event(p, granted=False, reason=Reason.OFFLINE_RESTRICTED.value, person=None,
                               decided_by="edge_offline", t_done=now_mono)
            return
        if site is None:
            self.counters["offline_no_policy"] += 1
            self._access_event(p, granted=False, reason=Reason.SERVER_TIMEOUT.value, person=None,
                               decided_by="edge_offline", t_done=now_mono)
            return
        req = AccessRequest(p.door, p.credential_hash, p.pin_hash, p.floor)
        wall = self.clock.wall()
        if door.kind is DoorKind.LIFT:
            # Each floor's own offline behaviour: the cab is decided as if it served only the floors set to cache;
            # a badge those floors refuse but the others would grant is offline_restricted, as at a door.
            full, site = site, offline_site(site, door)
            decision = decide(req, site, self.local_state, wall)
            if not decision.granted and decision.reason not in (Reason.ESCORT_REQUIRED,
                                                                Reason.AWAITING_SECOND_PERSON) \
                    and decide(req, full, self.local_state, wall).granted:
                decision = Decision(Reason.OFFLINE_RESTRICTED, decision.person)
        else:
            decision = decide(req, site, self.local_state, wall)
        commit(req, decision, site, self.local_state, wall)
        # The rule behind the grant, before offline_decision() marks it offline: the server moves the companions
        # and the desk shows who passed by which rule (docs/mqtt.md "Access events").
        rule = decision.reason.value if decision.granted else None
        decision = offline_decision(decision)
        rt = self.doors[p.door]
        t_done = now_mono
        if decision.granted:
            self.counters["offline_granted"] += 1
            t_done = self._apply(rt, self._grant(rt, p.event_id, (decision.person, *decision.companions),
                                                 decision.floors, chosen=p.floor is not None))
        else:
            self.counters["offline_denied"] += 1
        self._access_event(p, granted=decision.granted, reason=decision.reason.value, person=decision.person,
                           decided_by="edge_offline", t_done=t_done, violation=decision.violation,
                           companions=decision.companions, grant=rule, floors=decision.floors)

    def _decided(self, door: str, msg: DecisionMsg) -> None:
        p = self._pending.get(msg.transaction)
        if p is None:
            # Late (already denied on timeout) or unknown: never acted on.
            self.counters["late_decisions"] += 1
            log.warning("door %s: decision for unknown or expired transaction %s ignored", door, msg.transaction,
                        extra=self._ctx(door))
            return
        if p.door != door or msg.door != door:
            self.counters["malformed_decisions"] += 1
            log.warning("door %s: decision names door %s; ignored", door, msg.door, extra=self._ctx(door))
            return
        del self._pending[msg.transaction]
        rt = self.doors[door]
        t_done = self.clock.monotonic()
        if msg.granted:
            self.counters["granted"] += 1
            t_done = self._apply(rt, self._grant(rt, p.event_id, (msg.person, *msg.companions), msg.floors,
                                                 chosen=p.floor is not None))
        else:
            self.counters["denied"] += 1
        self._access_event(p, granted=msg.granted, reason=msg.reason, person=msg.person,
                           decided_by="server", t_done=t_done, violation=msg.violation, companions=msg.companions,
                           grant=msg.grant or (msg.reason if msg.granted and msg.reason in GRANT_RULES else None),
                           floors=msg.floors)
        self._follow_server(p, msg)

    def _follow_server(self, p: _Pending, msg: DecisionMsg) -> None:
        """Apply the server's decision to this edge's own state (presence, first person in, pending partners),
        so anti-passback and door modes still hold if the server goes away."""
        site = self.policy.site if self.policy is not None else None
        if site is None:
            return
        try:
            reason = Reason(msg.reason)
        except ValueError:
            return
        req = AccessRequest(p.door, p.credential_hash, p.pin_hash, p.floor)
        try:
            commit(req, Decision(reason, msg.person, tuple(msg.companions), violation=msg.violation,
                                 floors=tuple(msg.floors)), site, self.local_state, self.clock.wall())
        except Exception:
            log.exception("door %s: could not follow the server's decision locally", p.door,
                          extra=self._ctx(p.door, p.event_id))

    def _access_event(self, p: _Pending, *, granted: bool, reason: str, person: str | None,
                      decided_by: str, t_done: float, violation: str | None = None,
                      companions: tuple[str, ...] = (), grant: str | None = None,
                      floors: tuple[str, ...] = ()) -> None:
        """Publish the access event; a grant carries who passed with the badge and the rule behind it, and at a
        lift the floors it enabled (``detail.floors``) and the floor asked for in destination dispatch
        (``detail.floor``)."""
        detail: dict[str, Any] = {"violation": violation} if violation else {}
        if granted and floors:
            detail["floors"] = list(floors)
        if p.floor is not None:
            detail["floor"] = p.floor
        ev = EventMsg(
            id=p.event_id, seq=0, ts=p.ts, device=self.device.id, door=p.door, type="access",
            decision="granted" if granted else "denied", reason=reason, decided_by=decided_by, person=person,
            credential_hash=p.credential_hash, credential_last4=p.credential_last4, transaction=p.transaction,
            latency_ms=round((t_done - p.t_read) * 1000.0, 3), snapshot=p.snapshot, detail=detail,
            companions=tuple(companions) if granted else (), grant=grant if granted else None,
        )
        self._publish_event(ev)
        log.debug("door %s: %s (%s), decided by %s in %.2f ms", p.door, ev.decision, reason, decided_by,
                  ev.latency_ms, extra=self._ctx(p.door, p.event_id))  # never the card: its hash is in the event
        self._reader_feedback(p.door, granted)

    def _reader_feedback(self, door: str, granted: bool) -> None:
        """LED and buzzer on readers that have them (OSDP): green and one beep, or red and two beeps."""
        try:
            self.doors[door].reader.feedback(granted)
        except Exception:
            self.counters["errors"] += 1
            log.exception("door %s: reader feedback failed", door)

    def _reader_security(self, door: str, cause: str, detail: dict[str, Any]) -> None:
        """A reader's Secure Channel failed its checks (MAC failure, answer in clear, SC withdrawn): an alarm."""
        self.counters[f"reader_security_{cause}"] += 1
        self._publish_event(EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()),
                                     device=self.device.id, door=door, type="reader_security",
                                     reason=None, detail={"cause": cause, **detail}))

    def _outbox_tampered(self, rows: list[Tampered]) -> None:
        """Rows of the outbox failed their MAC (edited, forged or spliced in on disk): they were not sent; say so.

        The event lists what the rows claimed (ids, seqs, kinds: untrusted, for the investigation) and why each
        failed; it is itself a new, MACed row, so it goes out in order with the genuine rows after them.
        """
        self.counters["outbox_tampered_rows"] += len(rows)
        door = min(self.doors) if self.doors else None
        if door is None:
            return
        shown = rows[:MAX_REPORTED_IDS]
        detail: dict[str, Any] = {
            "rows": len(rows),
            "ids": [r.id for r in shown],
            "seqs": [r.seq for r in shown if r.seq is not None],
            "kinds": sorted({r.kind for r in rows}),
            "why": sorted({r.why for r in rows}),
        }
        if len(rows) > len(shown):
            detail["truncated"] = True
        self._publish_event(EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()),
                                     device=self.device.id, door=door, type="outbox_tampered", reason=None,
                                     detail=detail))

    # ------------------------------------------------------------ door I/O

    def _apply(self, rt: _DoorRuntime, events: list[DoorEvent]) -> float:
        """Drive the relay from the state machine, then report what happened.

        Returns the monotonic time right after the relay was set (the end of badge-to-relay).
        """
        if isinstance(rt.machine, LiftMachine) and isinstance(rt.relay, FloorRelays):
            floors = rt.machine.enabled
            changed = floors != rt.floors_on
            if changed:
                rt.relay.set_floors(floors)
                rt.floors_on = floors
                rt.relay_on = bool(floors)
        else:
            want = rt.machine.relay_energised
            changed = want != rt.relay_on
            if changed:
                rt.relay.set(want)
                rt.relay_on = want
        t_relay = self.clock.monotonic()
        want_sounder = rt.machine.sounder_on
        if rt.sounder is not None and want_sounder != rt.sounder_on:
            try:
                rt.sounder.set(want_sounder)
                rt.sounder_on = want_sounder
                changed = True
            except HardwareError:
                # A broken sounder must not stop the alarm events below from going out.
                self.counters["sounder_errors"] += 1
                log.exception("door %s: could not drive the sounder", rt.id)
        if rt.machine.tampered != rt.last_tampered:
            rt.last_tampered = rt.machine.tampered
            changed = True
        for e in events:
            if e.type in PUBLISHED_DOOR_EVENTS:
                self._door_event(rt, e)
        state = rt.machine.state.value
        if changed or state != rt.last_state:
            rt.last_state = state
            self.link.publish_state()
        return t_relay

    def _door_event(self, rt: _DoorRuntime, e: DoorEvent) -> None:
        event_id = uuid.uuid4().hex
        snapshot = None
        if e.type in SNAPSHOT_EVENTS and rt.camera is not None and rt.camera.stats.online:
            snapshot = event_id
        if isinstance(rt.machine, LiftMachine) and e.type in LIFT_EVENTS:
            detail = self._lift_event(rt, e)
        elif e.type in TURNSTILE_EVENTS:
            detail = self._turnstile_event(rt, e)
        else:
            detail = {"detail": e.detail} if e.detail else {}
        ev = EventMsg(id=event_id, seq=0, ts=iso_ms(self.clock.wall()), device=self.device.id,
                      door=rt.id, type=e.type, snapshot=snapshot, detail=detail)
        if e.type in vocabulary.EVENT_ALARMS:
            log.info("door %s: %s", rt.id, e.type, extra=self._ctx(rt.id, event_id))
        self._publish_event(ev)
        if snapshot is not None and rt.camera is not None:
            self._take_snapshot(rt.camera, e.at, rt.id, event_id)

    def _take_snapshot(self, camera: Camera, at: float, door: str, event_id: str) -> None:
        """Ask the jobs worker for the frame nearest ``at``; it waits for a nearer frame at most 1.5 periods."""
        self.jobs.submit(TakeSnapshot(camera, at, door, event_id, give_up_at=time.monotonic() + 1.5 / camera.fps))

    def _publish_event(self, ev: EventMsg) -> None:
        """Hand the event to the jobs worker, which numbers it and puts it in the outbox (fsync'd); the pump
        sends it from there. The loop never waits for the disk."""
        self.counters[f"events_{ev.type}"] += 1
        self.access_stats.observe(ev)
        self.jobs.submit(StoreEvent(self.topics.event(self.device.id, ev.door), ev))

    def _store_event(self, job: StoreEvent) -> None:
        """Jobs worker: number, store and fsync one event; the listeners hear it (on the loop) with its seq."""
        ev = job.event
        try:
            seq = self.outbox.put_event(job.topic, lambda n: dataclasses.replace(ev, seq=n).encode())
        except OutboxError as exc:
            # The disk refused the row: send it now without durability rather than not at all.
            self._post(self._outbox_refused, job.topic, exc.payload)
            seq = exc.seq or 0
        self.loop.call_soon_threadsafe(self._tell_listeners, dataclasses.replace(ev, seq=seq))

    def _outbox_refused(self, topic: str, payload: bytes | None) -> None:
        self.counters["outbox_errors"] += 1
        if payload is not None:
            self.link.publish(topic, payload)

    def _tell_listeners(self, ev: EventMsg) -> None:
        for listener in list(self.listeners):
            try:
                listener(ev)
            except Exception:
                log.exception("event listener failed")

    # ------------------------------------------------------------- commands

    def _on_command_payload(self, payload: bytes) -> None:
        """A signed command from paho's socket (on the loop), or from a test's thread."""
        if self.loop.in_loop():
            self._entry(self._command, (payload,))
        else:
            self._post(self._command, payload)

    def _command(self, payload: bytes) -> None:
        """Verify one command, have its nonce written to disk (jobs worker), then carry it out (back on the
        loop, :meth:`_nonces_saved`); a refusal never acts."""
        self.counters["commands"] += 1
        try:
            if self._policy_key is None:
                raise CommandError("bad_signature", "this edge holds no policy public key (policy_key_file) "
                                                    "to verify commands with")
            cmd = verify_command(payload, self._policy_key, site_id=self.site_id, device=self.device.id,
                                 now=self.clock.wall(), guard=self.replay_guard)
            if cmd.action in ("unlock", "lock", "release") and cmd.args["door"] not in self.doors:
                raise CommandError("bad_args", f"door {cmd.args['door']!r} is not on device {self.device.id}",
                                   action=cmd.action, transaction=cmd.transaction)
            site = self._site()  # None before the first policy without a site file: any area is remembered
            if cmd.action == "lockdown" and cmd.args["scope"] != "site" and site is not None \
                    and cmd.args["scope"] not in site.areas:
                raise CommandError("bad_args", f"no area {cmd.args['scope']!r}", action=cmd.action,
                                   transaction=cmd.transaction)
        except CommandError as exc:
            self._reject(payload, exc)
            return
        if self._nonce_file is None:
            self._nonces_saved(cmd, True, payload)
            return
        data = json.dumps(self.replay_guard.export(), separators=(",", ":")).encode("utf-8")
        self.jobs.submit(SaveNonces(data, lambda ok: self._post(self._nonces_saved, cmd, ok, payload)))

    def _nonces_saved(self, cmd: VerifiedCommand, ok: bool, payload: bytes = b"") -> None:
        if not ok:
            # Fail safe: what cannot be remembered across a restart could be replayed after one.
            self.counters["command_nonce_file_errors"] += 1
            self._command_result(cmd.transaction, "failed", "nonce_not_persisted")
            return
        status, error = self._execute(cmd, payload)
        self.counters[f"commands_{status}"] += 1
        log.info("command %s %s (transaction %s): %s%s", cmd.action, cmd.args, cmd.transaction, status,
                 f" ({error})" if error else "", extra=self._ctx(cmd.args.get("door")))
        self._command_result(cmd.transaction, status, error)

    def _site(self) -> Site | None:
        """The site the doors follow: the signed policy's when one is held, else the site file's (or None)."""
        return (self.policy.site if self.policy is not None else None) or self.site

    def _execute(self, cmd: VerifiedCommand, payload: bytes = b"") -> tuple[str, str | None]:
        """Carry out a verified command; ``(status, error)`` for its result."""
        override = overrides_file.from_command(cmd, payload)
        if override is not None:
            return self._start_override(override)
        if cmd.action == "release":
            self._end_override(cmd.args["door"], "released", transaction=cmd.transaction)
            self._door_modes()
            return "ok", None  # idempotent: a door with no override is already in its normal state
        if cmd.action == "unlock":
            rt = self.doors[cmd.args["door"]]
            settings = self._door(rt.id)
            if settings is None:
                return "failed", Reason.NO_POLICY.value  # fail secure: nothing says how this door behaves yet
            if self.local_state.locked_down(settings.to_area):
                return "failed", "lockdown"
            if self._interlock_busy(rt.id) is not None:
                return "failed", Reason.INTERLOCK_BUSY.value  # a remote unlock respects the interlock too
            self._apply(rt, rt.machine.grant())
            self._publish_event(EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()),
                                         device=self.device.id, door=rt.id, type="remote_unlock",
                                         transaction=cmd.transaction, detail={"transaction": cmd.transaction}))
            return "ok", None
        if cmd.action == "lock":
            rt = self.doors[cmd.args["door"]]
            current = self.overrides.get(rt.id)
            if current is not None and current.kind == "unlock":
                self._end_override(rt.id, "locked", transaction=cmd.transaction)
                self._door_modes()
            if self._released(self._door(rt.id)):
                return "failed", "emergency_release"  # the fire panel holds it open; only it can end that
            if rt.machine.held_unlocked:
                return "failed", "schedule_hold"  # the door mode holds it; a lockdown is the way to lock it
            self._apply(rt, rt.machine.safe())
            return "ok", None
        if cmd.action == "lockdown":
            scope, active = cmd.args["scope"], cmd.args["active"]
            (self._cmd_lockdowns.add if active else self._cmd_lockdowns.discard)(scope)
            self._sync_lockdowns()
            for rt in self.doors.values():
                settings = self._door(rt.id)
                to_area = settings.to_area if settings is not None else None
                if scope != "site" and (settings is None or scope not in settings.entered):
                    continue
                if active and to_area is not None and self.local_state.locked_down(to_area) \
                        and not self._released(settings) and not isinstance(rt.machine, LiftMachine):
                    # An unlock in force ends now (an emergency's never); a lift drops just the floors locked
                    # down, in _door_modes below.
                    self._apply(rt, rt.machine.safe())
                self._publish_event(EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()),
                                             device=self.device.id, door=rt.id, type="lockdown",
                                             transaction=cmd.transaction,
                                             detail={"scope": scope, "active": active,
                                                     "transaction": cmd.transaction}))
            self._door_modes()
            return "ok", None
        # sync: say everything again now
        if self.policy is not None:
            self.policy.load()
        self._sync_lockdowns()
        self._sync_timings()
        self._sync_reader_signals()
        self.link.publish_state()
        self.link.wake()
        return "ok", None

    # ------------------------------------------------------ timed overrides

    def _start_override(self, override: Override) -> tuple[str, str | None]:
        """Hold a door unlocked, or locked against its schedule, until ``override.until``; fail safe: an
        override already over, at a door nothing describes yet, or (unlock) into a lockdown never acts."""
        rt = self.doors[override.door]
        settings = self._door(rt.id)
        if settings is None:
            return "failed", Reason.NO_POLICY.value
        if override.expired(self.clock.wall()):
            return "failed", "expired"
        if override.kind == "unlock" and self.local_state.locked_down(settings.to_area):
            return "failed", "lockdown"
        if override.kind == "unlock" and self._interlock_busy(rt.id) is not None:
            return "failed", Reason.INTERLOCK_BUSY.value
        if rt.id in self.overrides:
            self._end_override(rt.id, "replaced", transaction=override.transaction)
        self.overrides[rt.id] = override
        if override.kind == "lock" and not self._released(settings):
            self._apply(rt, rt.machine.safe())  # a momentary unlock or a schedule hold in force ends now
        self._door_modes()
        self._publish_event(EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()),
                                     device=self.device.id, door=rt.id, type="override_started",
                                     transaction=override.transaction, detail=override.describe()))
        self._save_overrides()
        self.link.publish_state()
        return "ok", None

    def _end_override(self, door: str, why: str, *, transaction: str | None = None) -> bool:
        """End a door's override (the caller then runs :meth:`_door_modes`); False if it had none."""
        assert why in ENDED_WHY, why
        override = self.overrides.pop(door, None)
        if override is None:
            return False
        self.counters[f"overrides_ended_{why}"] += 1
        log.info("door %s: %s override until %s ended (%s)", door, override.kind, iso_ms(override.until), why)
        detail = {**override.describe(), "why": why}
        if transaction is not None:
            detail["by"] = transaction
        self._publish_event(EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()),
                                     device=self.device.id, door=door, type="override_ended",
                                     transaction=override.transaction, detail=detail))
        self._save_overrides()
        self.link.publish_state()
        return True

    def _end_due_overrides(self) -> None:
        """End the overrides whose time has come, and unlock overrides into a lockdown (a lockdown wins)."""
        wall = self.clock.wall()
        for door, override in list(self.overrides.items()):
            settings = self._door(door)
            if override.expired(wall):
                self._end_override(door, "expired")
            elif override.kind == "unlock" and settings is not None and self.local_state.locked_down(settings.to_area):
                self._end_override(door, "lockdown")

    def _load_overrides(self) -> None:
        """Take over the overrides in force before a restart, each verified again with the policy key."""
        if self._overrides_file is None or self._policy_key is None:
            return
        try:
            data = self._overrides_file.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("%s: unreadable (%s); no override is restored", self._overrides_file, exc)
            return
        key = self._policy_key
        found, problems = overrides_file.decode(data, lambda payload: verify_command(
            payload, key, site_id=self.site_id, device=self.device.id, now=self.clock.wall(),
            max_age_s=MAX_OVERRIDE_S + DEFAULT_MAX_SKEW_S))
        for problem in problems:
            self.counters["override_file_errors"] += 1
            log.error("%s: %s; that override is dropped (the door goes back to its normal state)",
                      self._overrides_file, problem)
        self.overrides = {d: o for d, o in found.items() if d in self.doors}
        if self.overrides:
            log.info("restored %d timed override(s): %s", len(self.overrides),
                     ", ".join(f"{d} {o.kind} until {iso_ms(o.until)}" for d, o in sorted(self.overrides.items())))

    def _save_overrides(self) -> None:
        if self._overrides_file is not None:
            self.jobs.submit(SaveOverrides(overrides_file.encode(self.overrides)))

    def _write_overrides_job(self, job: SaveOverrides) -> None:
        if self._overrides_file is not None and not self._write_atomic(self._overrides_file, job.data):
            self._post(self._count, "override_file_errors")

    def _reject(self, payload: bytes, exc: CommandError) -> None:
        """Not executed: counted, logged, answered ``rejected`` and recorded as a durable event."""
        self.counters["commands_rejected"] += 1
        self.counters[f"commands_rejected_{exc.reason}"] += 1
        log.warning("refused a command: %s", exc, extra=self._ctx())
        self._command_result(exc.transaction, "rejected", exc.reason)
        door = peek_door(payload)
        if door not in self.doors:
            door = min(self.doors) if self.doors else None
        if door is None:
            return
        detail: dict[str, Any] = {"reason": exc.reason}
        if exc.action is not None:
            detail["action"] = exc.action
        if exc.transaction is not None:
            detail["transaction"] = exc.transaction
        self._publish_event(EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(self.clock.wall()),
                                     device=self.device.id, door=door, type="command_rejected",
                                     reason=None, transaction=exc.transaction, detail=detail))

    def _command_result(self, transaction: str | None, status: str, error: str | None) -> None:
        try:
            self.link.publish(self.topics.cmd_result(self.device.id),
                              CommandResult(transaction, status, error).encode())
        except Exception:
            self.counters["errors"] += 1
            log.exception("could not publish the result of command %s", transaction)

    def _load_nonces(self) -> None:
        """Take over the nonces accepted before a restart; if they are unreadable, refuse every command
        issued before now (a lost memory must not reopen the replay window)."""
        if self._nonce_file is None:
            log.warning("%s has no state_dir: accepted command nonces are kept in memory only", self.device.id)
            return
        try:
            self.replay_guard.load(json.loads(self._nonce_file.read_text(encoding="utf-8")))
            return
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # CommandError is a ValueError
            problem = str(exc)
        self.counters["command_nonce_file_errors"] += 1
        self.replay_guard.refuse_before(self.clock.wall() + DEFAULT_MAX_SKEW_S)
        log.error("%s: unreadable (%s); refusing every command issued before now (fix: none needed, "
                  "the file is rewritten by the next accepted command)", self._nonce_file, problem)

    def _write_nonces_job(self, job: SaveNonces) -> None:
        job.then(self._write_nonces(job.data))

    def _write_nonces(self, data: bytes) -> bool:
        """Jobs worker: write the guard's nonces atomically and fsync'd; False if the disk refused."""
        if self._nonce_file is None:
            return True
        if self._write_atomic(self._nonce_file, data):
            return True
        log.error("the command is not carried out (its nonce could not be persisted)")
        return False

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> bool:
        """Jobs worker: replace ``path`` with ``data`` atomically and fsync'd; False if the disk refused."""
        tmp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return True
        except OSError as exc:
            log.error("cannot persist %s: %s (fix: free space or permissions in the state_dir)", path, exc)
            return False

    # ------------------------------------------------------------ snapshots

    def _snapshot_job(self, job: TakeSnapshot) -> float | None:
        """Jobs worker: the frame nearest the badge, masked, encoded, sealed and stored; or, while a nearer frame
        may still come, how long to wait before looking again (events keep being written meanwhile)."""
        # Sealed to the server's key from the signed policy: this edge can encrypt but never decrypt,
        # so neither the outbox nor the wire ever holds a plaintext JPEG (docs/security.md).
        current = self.policy.current if self.policy is not None else None
        recipient = current.snapshot_key if current is not None else None
        if recipient is None:
            self._post(self._count, "snapshots_no_key")
            log.warning("snapshot for %s dropped: no snapshot key yet (it comes with the server's signed "
                        "policy%s)", job.event_id, "" if self.policy is not None else
                        "; this edge has no policy_key_file, so it never gets one", extra=self._ctx(job.door, job.event_id))
            return None
        now = time.monotonic()
        if now < job.give_up_at and not self.jobs.stopping and job.camera.nearer_frame_may_come(job.at):
            return min(0.02, job.give_up_at - now)
        snap = job.camera.snapshot(job.at, wait_s=0)
        if snap is None:
            self._post(self._count, "snapshot_missing")
            return None
        sealed = seal(snap.jpeg, recipient, SnapshotRef(self.site_id, self.device.id, job.event_id))
        stored = self.outbox.put_snapshot(self.topics.snapshot(self.device.id, job.door, job.event_id), sealed)
        self._post(self._count, "snapshots" if stored else "snapshots_dropped")
        return None

    # ---------------------------------------------------------------- state

    def _state_payload(self) -> bytes:
        doors = {d: {"state": rt.machine.state.value, "relay": rt.relay_on, "open": rt.machine.door_open,
                     "sounder": rt.sounder_on, "tamper": rt.machine.tampered,
                     "override": self.overrides[d].describe() if d in self.overrides else None,
                     **({"floors": sorted(rt.floors_on)} if isinstance(rt.machine, LiftMachine) else {})}
                 for d, rt in self.doors.items()}
        readers = {d: rt.reader.stats.published() for d, rt in self.doors.items()}
        cameras = {c: {"online": cam.stats.online, "frames": cam.stats.frames} for c, cam in self.cameras.items()}
        now = self.clock.wall()
        return state_payload(self.device.id, __version__, doors, readers, cameras, iso_ms(now),
                             outbox=self._outbox_state(now), policy=self._policy_state(), health=remote_health(self),
                             mono=self.clock.monotonic())

    def _outbox_state(self, now: float) -> dict[str, float]:
        """The ``outbox`` of the retained state: its depth, the snapshots dropped for space, and ``oldest_age_s``,
        how long the oldest waiting event has waited by this edge's clock (0 when none waits), so the server's
        ``/metrics`` shows how far each edge's delivery is behind without reaching the Pi's own port. Read without
        the outbox's lock (Outbox.oldest_event_at): the loop never waits for the disk."""
        oldest = self.outbox.oldest_event_at()
        age = round(max(0.0, now - oldest), 3) if oldest is not None else 0.0
        return {**self.outbox.stats(), "oldest_age_s": age}

    def _policy_state(self) -> dict[str, Any]:
        """The ``policy`` of the retained state: ``held`` (with its version), ``none`` (no policy, the site file
        decides) or ``waiting_for_first_policy`` (no site file and no policy: every badge refused)."""
        held = self.policy.current if self.policy is not None else None
        if held is not None:
            if self._wants_full_policy:  # a delta was refused: the server sends a full policy (docs/mqtt.md)
                return {"status": "held", "version": held.version, "wants_full": True}
            return {"status": "held", "version": held.version}
        return {"status": "none" if self.site is not None else "waiting_for_first_policy", "version": None}
