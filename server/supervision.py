"""Device supervision and event-sequence gap detection (docs/alarms.md).

The bus feeds facts in as they arrive, from whichever thread received them
(``heard``, ``on_availability``, ``on_state`` on paho's network thread,
``on_event`` on the store thread); these only update memory under a lock,
except that an event of an alarm type raises its alarm at once, on the
store thread that ingested it. Everything that depends on time is decided
by :meth:`Supervisor.check`, with an injected clock: the supervision thread
calls it whenever a fact may have changed something (``wake``) and at the
next deadline, and unit tests call it with a ``FakeClock``. Conditions
(``device_offline``, ``event_gap``) are raised and cleared only there, so one
thread writes them and they cannot race.

Sequence gaps: each device numbers its events (``seq``). :class:`SequenceWindow`
keeps, per device, the range of numbers seen and the runs missing inside it
(out-of-order arrival and duplicates are normal after an outage); a run still
missing ``gap_timeout_s`` after it was noticed raises ``event_gap``, filling
it clears it. A device whose counter goes back (an event id never seen, with a
number already seen) has restarted its counter: the window starts over (a new
*epoch*) and ``sequence_reset`` records it. The windows are saved in the store
with a checkpoint (the last event rowid they account for); at start the events
stored after the checkpoint are replayed, so a restart, even a crash, invents
no gap and forgets none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from doorkeep import vocabulary
from doorkeep.clock import Clock, SystemClock, iso_ms, parse_iso_ms
from doorkeep.contract import AVAILABILITY_OFFLINE, AVAILABILITY_ONLINE, AVAILABILITY_STOPPED, EventMsg
from doorkeep.errors import MessageError
from doorkeep.logfmt import log_context
from server.store import Store

log = logging.getLogger("doorkeep.server.supervision")

DEFAULT_DEVICE_TIMEOUT_S = 90.0  # 3 x the edge's 30 s heartbeat
DEFAULT_GAP_TIMEOUT_S = 60.0

#: event type -> the alarm type it raises (doorkeep/vocabulary.py declares both, and the alarm's severity)
EVENT_ALARMS: Mapping[str, str] = vocabulary.EVENT_ALARMS
#: event type -> the alarm types at the same door that it ends (the door closed, the reader is back)
RESTORED_BY: Mapping[str, tuple[str, ...]] = vocabulary.RESTORED_BY
#: alarm type -> the event types that end it (the inverse of RESTORED_BY)
RESTORES: dict[str, tuple[str, ...]] = {
    alarm: tuple(ev for ev, alarms in RESTORED_BY.items() if alarm in alarms)
    for alarm in {a for alarms in RESTORED_BY.values() for a in alarms}
}
# The alarm types this module raises besides those of events; their severities are the vocabulary's.
DEVICE_OFFLINE = "device_offline"
EVENT_GAP = "event_gap"
SEQUENCE_RESET = "sequence_reset"
DEVICE_MISBEHAVING = "device_misbehaving"
MAX_LISTED_RANGES = 50
#: A device whose messages the bus refuses raises one ``device_misbehaving`` alarm per window, not one per message.
MISBEHAVING_WINDOW_S = 3600.0
MAX_REASON_CHARS = 300


violation_alarm = vocabulary.violation_alarm


# ------------------------------------------------------------ sequences


@dataclass
class Gap:
    """A run of missing sequence numbers, ``first..last`` inclusive."""

    first: int
    last: int
    noticed: float  # clock.monotonic() when the run was first known to be missing
    raised: bool = False  # it outlived gap_timeout_s and is reported by an event_gap alarm

    @property
    def size(self) -> int:
        return self.last - self.first + 1


@dataclass
class SequenceWindow:
    """One device's event numbers as the server has seen them, in one epoch of its counter.

    Every number in ``base..top`` has arrived except those in ``gaps`` (sorted, disjoint, strictly inside).
    """

    epoch: int
    base: int
    top: int
    started: float  # monotonic time the epoch began (first contact or reset)
    gaps: list[Gap] = field(default_factory=list)

    @property
    def high(self) -> int:
        """The contiguous high-water mark: every number from ``base`` up to it has arrived."""
        return self.gaps[0].first - 1 if self.gaps else self.top

    def seen(self, seq: int) -> bool:
        return self.base <= seq <= self.top and not any(g.first <= seq <= g.last for g in self.gaps)

    def observe(self, seq: int, now: float, late_grace_s: float) -> str:
        """Take in the number of an event never stored before.

        Returns ``"next"`` (the number after ``top``), ``"ahead"`` (beyond it: a new gap), ``"fill"``
        (inside a gap), ``"late"`` (below ``base`` in the epoch's first ``late_grace_s``: the window
        grows downwards) or ``"reset"`` (a number already seen, or below ``base`` later on: the
        counter went back; the caller starts a new epoch).
        """
        if seq > self.top:
            kind = "next" if seq == self.top + 1 else "ahead"
            if kind == "ahead":
                self.gaps.append(Gap(self.top + 1, seq - 1, now))
            self.top = seq
            return kind
        if seq < self.base:
            if now - self.started > late_grace_s:
                return "reset"
            if seq < self.base - 1:
                self.gaps.insert(0, Gap(seq + 1, self.base - 1, now))
            self.base = seq
            return "late"
        for i, g in enumerate(self.gaps):
            if g.first <= seq <= g.last:
                parts = [Gap(a, b, g.noticed, g.raised) for a, b in ((g.first, seq - 1), (seq + 1, g.last)) if a <= b]
                self.gaps[i:i + 1] = parts
                return "fill"
        return "reset"

    def overdue(self, now: float, timeout_s: float) -> bool:
        """Mark the gaps missing for ``timeout_s`` or more as raised; True if any changed."""
        changed = False
        for g in self.gaps:
            if not g.raised and now - g.noticed >= timeout_s:
                g.raised = True
                changed = True
        return changed

    def raised_ranges(self) -> list[tuple[int, int]]:
        return [(g.first, g.last) for g in self.gaps if g.raised]

    def next_deadline(self, timeout_s: float) -> float | None:
        pending = [g.noticed + timeout_s for g in self.gaps if not g.raised]
        return min(pending) if pending else None

    def rearm(self, now: float) -> None:
        """Gaps not yet reported start their timeout again (the server could not have received fills)."""
        for g in self.gaps:
            if not g.raised:
                g.noticed = now


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _listed(ranges: list[tuple[int, int]]) -> list[list[int]]:
    return [[a, b] for a, b in ranges[:MAX_LISTED_RANGES]]


# --------------------------------------------------------------- devices


@dataclass
class DeviceStatus:
    """What the server knows of one device's liveness (shown on the desk's device board)."""

    device: str
    status: str = "unknown"  # unknown | online | offline | stopped
    availability: str | None = None  # the last availability payload
    last_seen: float | None = None  # monotonic time a message from it last arrived
    last_seen_wall: float | None = None
    offline_reason: str | None = None  # "lwt" (the broker published its last will) | "silent"
    confirmed: bool = False  # heard from it (not only retained messages) since the server started
    alarmed: bool = False  # a device_offline alarm is active for it (as far as this server raised it)


@dataclass(frozen=True)
class Action:
    """A change to the alarms that :meth:`Supervisor.check` made (returned for tests and logs)."""

    verb: str  # "raise" | "clear" | "update"
    type: str
    device: str
    detail: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass
class Misbehaviour:
    """One device's refused messages within one alarm window (``MISBEHAVING_WINDOW_S``)."""

    key: str        # the alarm's key: device_misbehaving:{device}:{window start, epoch s}
    started: float  # wall time of the window's first refusal
    refusals: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # category -> count
    raised: bool = False  # this window's alarm was raised (an operator may have resolved it since)

    def detail(self, reason: str, topic: str | None, at: float) -> dict[str, Any]:
        return {"refusals": self.refusals, "reasons": dict(sorted(self.reasons.items())),
                "last_reason": reason[:MAX_REASON_CHARS], "last_topic": (topic or "")[:MAX_REASON_CHARS],
                "window_start": iso_ms(self.started), "last_at": iso_ms(at), "window_s": MISBEHAVING_WINDOW_S}


def state_timestamp(payload: bytes, device: str) -> float | None:
    """Validate a ``doorkeep.state/1`` payload enough to trust it for liveness; its ``ts`` (epoch s) or None."""
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise MessageError("state is not JSON") from None
    if not isinstance(data, dict) or data.get("schema") != "doorkeep.state/1":
        raise MessageError("state is not a doorkeep.state/1 object")
    if data.get("device", device) != device:
        raise MessageError(f"state names device {data.get('device')!r} but was published by {device!r}")
    ts = data.get("ts")
    if not isinstance(ts, str):
        return None
    try:
        return parse_iso_ms(ts)
    except ValueError:
        return None


class Supervisor:
    """Supervises the site's devices and their event sequences, and raises the alarms of docs/alarms.md."""

    def __init__(self, store: Store, clock: Clock | None = None, *, devices: Iterable[str] = (),
                 device_timeout_s: float = DEFAULT_DEVICE_TIMEOUT_S, gap_timeout_s: float = DEFAULT_GAP_TIMEOUT_S,
                 max_wait_s: float = 1.0) -> None:
        if not device_timeout_s > 0 or not gap_timeout_s > 0:
            raise ValueError("device_timeout_s and gap_timeout_s must be positive")
        self.store = store
        self.clock = clock or SystemClock()
        self.device_timeout_s = float(device_timeout_s)
        self.gap_timeout_s = float(gap_timeout_s)
        self.max_wait_s = max_wait_s
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self._devices: dict[str, DeviceStatus] = {d: DeviceStatus(d) for d in devices if d != "server"}
        self._windows: dict[str, SequenceWindow] = {}
        self._lost: dict[str, list[tuple[int, list[tuple[int, int]]]]] = {}  # device -> [(old epoch, ranges)]
        self._gap_applied: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = {}  # device -> (epoch, raised)
        self._resets: list[tuple[str, str, dict[str, Any]]] = []  # sequence_reset alarms to raise: (device, event, detail)
        self._misbehaving: dict[str, Misbehaviour] = {}  # device -> its current window (store thread only)
        self._misbehaving_lock = threading.Lock()
        #: ``unknown_violation``: access events naming a violation the vocabulary does not declare (store thread)
        self.counters: Counter[str] = Counter()
        self._dirty: set[str] = set()
        self._through_rowid = 0
        self._saved_rowid = 0
        self._paused = False  # the bus is not connected: silence proves nothing
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._load()

    # ---------------------------------------------------------- startup

    def _load(self) -> None:
        now = self.clock.monotonic()
        rows, self._through_rowid = self.store.load_sequences()
        self._saved_rowid = self._through_rowid
        for r in rows:
            # Gaps not yet reported start their timeout again; the epoch is not new (no late grace).
            gaps = [Gap(a, b, now, bool(raised)) for a, b, raised in r["gaps"]]
            self._windows[r["device"]] = SequenceWindow(r["epoch"], r["base"], r["top"], float("-inf"), gaps)
            if r["lost"]:
                self._lost[r["device"]] = [(int(e), [(a, b) for a, b in ranges]) for e, ranges in r["lost"]]
        for alarm in self.store.open_alarms():
            dev = alarm["device"]
            if alarm["state"] != "active" or dev is None:
                continue
            if alarm["type"] == "device_offline":
                self._status(dev).alarmed = True
            elif alarm["type"] == "event_gap" and dev in self._windows:
                win = self._windows[dev]
                if alarm["detail"].get("epoch") != win.epoch:
                    continue
                missing = [(a, b) for a, b in alarm["detail"].get("missing", [])]
                # A crash may have come between raising the alarm and saving the window: what the alarm
                # lists as missing was reported, whatever the saved window says.
                for g in win.gaps:
                    if any(a <= g.last and g.first <= b for a, b in missing):
                        g.raised = True
                self._gap_applied[dev] = (win.epoch, tuple(missing))
        replayed = 0
        for rowid, event_id, device, seq in self.store.events_after(self._through_rowid):
            self._observe(device, seq, event_id, rowid, now)
            replayed += 1
        self._raise_resets()
        if replayed:
            log.info("gap detection caught up with %d events stored after its last checkpoint", replayed)

    # ------------------------------------------------------------ facts

    def _status(self, device: str) -> DeviceStatus:
        st = self._devices.get(device)
        if st is None:
            st = self._devices[device] = DeviceStatus(device)
        return st

    def heard(self, device: str, now: float | None = None) -> None:
        """A message from the device arrived (an event, a request, a snapshot, a live state)."""
        if device == "server":
            return
        now = self.clock.monotonic() if now is None else now
        wall = self.clock.wall()
        with self._lock:
            st = self._status(device)
            changed = st.status in ("unknown", "offline")
            self._seen(st, now, wall)
            # A cleanly stopped device comes back by saying `online`; what it published before its
            # `stopped` (and what arrives late) must not make it look alive.
            if changed:
                st.status, st.offline_reason = "online", None
        if changed:
            self.wake()

    @staticmethod
    def _seen(st: DeviceStatus, now: float, wall: float) -> None:
        if st.last_seen is None or now >= st.last_seen:
            st.last_seen, st.last_seen_wall = now, wall
        st.confirmed = True

    def on_availability(self, device: str, value: str, *, retained: bool, now: float | None = None) -> None:
        """The device's ``availability`` topic: ``online``, ``offline`` (its last will) or ``stopped``.

        ``retained``: delivered from the broker's memory when the server subscribed, so it may be old;
        ``offline`` is believed at once either way, ``online`` starts the silence timer without counting as
        hearing from the device (an alarm already active stays until the device really speaks).
        """
        if device == "server":
            return
        if value not in (AVAILABILITY_ONLINE, AVAILABILITY_OFFLINE, AVAILABILITY_STOPPED):
            raise MessageError(f"availability {value!r} is not online, offline or stopped")
        now = self.clock.monotonic() if now is None else now
        wall = self.clock.wall()
        with self._lock:
            st = self._status(device)
            st.availability = value
            if value == AVAILABILITY_OFFLINE:
                st.status, st.offline_reason = "offline", "lwt"
            elif value == AVAILABILITY_STOPPED:
                st.status, st.offline_reason = "stopped", None
                if not retained:
                    self._seen(st, now, wall)
            else:
                st.status, st.offline_reason = "online", None
                if retained:
                    if st.last_seen is None or now > st.last_seen:
                        st.last_seen, st.last_seen_wall = now, wall
                else:
                    self._seen(st, now, wall)
        self.wake()

    def on_state(self, device: str, ts: float | None, *, retained: bool, now: float | None = None) -> None:
        """The device's ``state`` (its heartbeat). A live one is hearing from it. A retained one may be
        arbitrarily old: it counts only when its ``ts`` is within ``device_timeout_s`` of the server's
        clock, and never overrides an ``offline`` or ``stopped`` availability."""
        if device == "server":
            return
        if not retained:
            self.heard(device, now)
            return
        if ts is None:
            return
        now = self.clock.monotonic() if now is None else now
        wall = self.clock.wall()
        age = max(0.0, wall - ts)
        if age > self.device_timeout_s:
            return
        with self._lock:
            st = self._status(device)
            if st.status in ("offline", "stopped"):
                return
            seen_at = now - age
            if st.last_seen is None or seen_at > st.last_seen:
                st.last_seen, st.last_seen_wall = seen_at, wall - age
            st.confirmed = True
            st.status = "online"
        self.wake()

    def clock_jump(self, jump: Callable[[], None]) -> None:
        """Run ``jump``, which moves a simulated clock forward (scenarios), without judging anyone silent.

        A scenario's "three hours later" skips time the devices spent talking: their heartbeats were
        simply not simulated. Silence is not judged while the clock moves, and every online device's
        silence timer restarts after it. Gap windows keep their timers: events still missing after the
        jump are as late as the jump says.
        """
        with self._lock:
            paused, self._paused = self._paused, True
        try:
            jump()
        finally:
            now = self.clock.monotonic()
            with self._lock:
                self._paused = paused
                for st in self._devices.values():
                    if st.status == "online" and st.last_seen is not None and st.last_seen < now:
                        st.last_seen = now
            self.wake()

    def set_connected(self, connected: bool, now: float | None = None) -> None:
        """The bus's broker connection. While it is down nothing can be heard, so nothing is judged
        silent and no gap can be filled; on reconnecting, every timer starts again."""
        now = self.clock.monotonic() if now is None else now
        with self._lock:
            self._paused = not connected
            if connected:
                for st in self._devices.values():
                    if st.status == "online" and st.last_seen is not None and st.last_seen < now:
                        st.last_seen = now
                for win in self._windows.values():
                    win.rearm(now)
        self.wake()

    # ----------------------------------------------------------- events

    def on_event(self, ev: EventMsg, rowid: int | None) -> None:
        """An event was ingested (on the store thread); ``rowid`` is None for a duplicate delivery.

        Alarm events raise their alarm (again for a duplicate: harmless, and it heals a crash between
        storing the event and raising its alarm); new events move the device's sequence window.
        """
        self._event_alarms(ev)
        if rowid is not None:
            now = self.clock.monotonic()
            with self._lock:
                kind = self._observe(ev.device, ev.seq, ev.id, rowid, now)
            if kind == "reset":
                self._raise_resets()
            if kind in ("ahead", "fill", "late", "reset"):
                self.wake()

    def misbehaving(self, device: str, category: str, reason: str, topic: str | None = None) -> tuple[str | None, bool]:
        """The bus refused a message published under ``device``'s subtree (called on the store thread).

        Raises ``device_misbehaving`` once per device and window (``MISBEHAVING_WINDOW_S`` from the first
        refusal); later refusals in the window only update its detail (how many, of which kinds, the last
        reason), so a device that floods the bus with forgeries costs one alarm, never one per message. An
        operator who resolves the alarm silences the rest of that window (still counted and logged); the next
        window raises again. After a restart the open alarm of the current window is picked up again.
        Returns ``(alarm id or None, True if newly raised)``.
        """
        at = self.clock.wall()
        with self._misbehaving_lock:
            m = self._misbehaving.get(device)
            if m is None or at - m.started >= MISBEHAVING_WINDOW_S or at < m.started:
                m = self._misbehaving[device] = self._resume_misbehaviour(device, at)
            m.refusals += 1
            m.reasons[category] = m.reasons.get(category, 0) + 1
            detail = m.detail(reason, topic, at)
            if m.raised and self.store.open_alarm(m.key) is None:
                return None, False  # resolved by an operator within this window
            alarm_id, new = self.store.raise_alarm(DEVICE_MISBEHAVING, key=m.key, at=at,
                                                   severity=vocabulary.severity(DEVICE_MISBEHAVING), device=device,
                                                   detail=detail)
            m.raised = True
        if new:
            log.warning("alarm %s: device %s is misbehaving (%s: %s)", alarm_id, device, category, reason,
                        extra=log_context(device))
        return alarm_id, new

    def _resume_misbehaviour(self, device: str, at: float) -> Misbehaviour:
        """The window an open alarm of this device still covers (a restart), or a new one starting now."""
        for alarm in self.store.open_alarms(type="device_misbehaving", device=device):
            detail = alarm["detail"] if isinstance(alarm["detail"], dict) else {}
            try:
                started = parse_iso_ms(str(detail.get("window_start")))
            except ValueError:
                continue
            if 0 <= at - started < MISBEHAVING_WINDOW_S:
                reasons = detail.get("reasons") if isinstance(detail.get("reasons"), dict) else {}
                return Misbehaviour(str(alarm["key"]), started, int(detail.get("refusals", 0)),
                                    {str(k): int(v) for k, v in reasons.items()}, raised=True)
        return Misbehaviour(f"device_misbehaving:{device}:{int(at)}", at)

    def _event_alarms(self, ev: EventMsg) -> None:
        at = self.clock.wall()
        if ev.type in EVENT_ALARMS:
            alarm = EVENT_ALARMS[ev.type]
            restorers = RESTORES.get(alarm, ())
            # Out of order after an outage, the event that ended it may have arrived first.
            cleared = self.store.later_event(ev.device, ev.door, restorers, ev.ts) is not None if restorers else False
            alarm_id, new = self.store.raise_alarm(
                alarm, key=f"{alarm}-{ev.id}", at=at, severity=vocabulary.severity(alarm), device=ev.device,
                door=ev.door, source_event=ev.id, once=True, cleared=cleared,
                detail={"event_ts": ev.ts, "seq": ev.seq, **({"event_detail": ev.detail} if ev.detail else {})})
            if new:
                log.info("alarm %s: %s at %s/%s", alarm_id, ev.type, ev.device, ev.door,
                         extra=log_context(ev.device, ev.door, ev.id))
        violation = ev.detail.get("violation") if ev.type == "access" else None
        if isinstance(violation, str) and violation and violation not in vocabulary.VIOLATIONS:
            # Not a rule decide() can report: a device speaking outside the contract. The event is stored as it
            # came; no alarm of an undeclared type is invented (Store.raise_alarm would refuse it).
            self.counters["unknown_violation"] += 1
            log.warning("event %s from %s names an unknown violation %r (known: %s): no alarm raised", ev.id,
                        ev.device, violation[:64], ", ".join(vocabulary.VIOLATIONS))
        elif isinstance(violation, str) and violation:
            kind = violation_alarm(violation)
            alarm_id, new = self.store.raise_alarm(
                kind, key=f"{kind}-{ev.id}", at=at, severity=vocabulary.severity(kind), device=ev.device, door=ev.door,
                source_event=ev.id, once=True, cleared=True,
                detail={"event_ts": ev.ts, "seq": ev.seq, "person": ev.person, "reason": ev.reason,
                        "decided_by": ev.decided_by})
            if new:
                log.info("alarm %s: %s by %s at %s", alarm_id, kind, ev.person, ev.door,
                         extra=log_context(ev.device, ev.door, ev.id))
        if ev.type in RESTORED_BY:
            n = self.store.clear_door_alarms(ev.device, ev.door, RESTORED_BY[ev.type], before_ts=ev.ts, at=at)
            if n:
                log.info("%s at %s/%s cleared %d alarm(s)", ev.type, ev.device, ev.door, n,
                         extra=log_context(ev.device, ev.door, ev.id))

    def _observe(self, device: str, seq: int, event_id: str, rowid: int, now: float) -> str:
        """Move the device's window for a new event (caller holds the lock, or is starting up)."""
        self._through_rowid = max(self._through_rowid, rowid)
        self._dirty.add(device)
        win = self._windows.get(device)
        if win is None:
            # First contact: what came before the first event this store ever got is unknowable, so the
            # window starts there (and may grow downwards for a while: see observe()).
            self._windows[device] = SequenceWindow(0, seq, seq, now)
            return "first"
        kind = win.observe(seq, now, self.gap_timeout_s)
        if kind == "reset":
            self._reset(device, win, seq, event_id, now)
        return kind

    def _reset(self, device: str, win: SequenceWindow, seq: int, event_id: str, now: float) -> None:
        lost = [(g.first, g.last) for g in win.gaps]
        if lost:
            # These can never be told from the new epoch's numbers: they are reported as lost now.
            self._lost.setdefault(device, []).append((win.epoch, lost))
        self._windows[device] = SequenceWindow(win.epoch + 1, seq, seq, now)
        detail = {"epoch": win.epoch + 1, "seq": seq, "previous_epoch": win.epoch, "previous_base": win.base,
                  "previous_top": win.top, "lost": _listed(lost)}
        self._resets.append((device, event_id, detail))
        log.info("device %s restarted its event counter: seq %d after %d (epoch %d)", device, seq, win.top,
                 win.epoch + 1)

    def _raise_resets(self) -> None:
        """Raise the sequence_reset alarms noted under the lock (store writes happen outside it)."""
        with self._lock:
            resets, self._resets = self._resets, []
        for device, event_id, detail in resets:
            self.store.raise_alarm(SEQUENCE_RESET, key=f"{SEQUENCE_RESET}-{event_id}", at=self.clock.wall(),
                                   severity=vocabulary.severity(SEQUENCE_RESET), device=device,
                                   source_event=event_id, once=True, cleared=True, detail=detail)

    # ------------------------------------------------------------ check

    def check(self, now: float | None = None) -> list[Action]:
        """Decide on everything time-driven, raise and clear alarms, save the windows; returns what changed."""
        with self._check_lock:
            now = self.clock.monotonic() if now is None else now
            actions: list[Action] = []
            with self._lock:
                device_plan = self._plan_devices(now)
                gap_plan = self._plan_gaps(now)
            for verb, device, detail in device_plan:
                try:
                    actions.append(self._apply_device(verb, device, detail))
                except Exception:
                    log.exception("could not %s device_offline for %s; trying again", verb, device)
            for plan in gap_plan:
                try:
                    actions.append(self._apply_gap(*plan))
                except Exception:
                    log.exception("could not update event_gap for %s; trying again", plan[0])
            self.save()
            return actions

    def _plan_devices(self, now: float) -> list[tuple[str, str, dict[str, Any]]]:
        plan = []
        for st in self._devices.values():
            if (not self._paused and st.status == "online" and st.last_seen is not None
                    and now - st.last_seen >= self.device_timeout_s):
                st.status, st.offline_reason = "offline", "silent"
                log.info("device %s silent for %.0f s", st.device, now - st.last_seen)
            if st.status == "offline" and not st.alarmed:
                st.alarmed = True
                plan.append(("raise", st.device, {"reason": st.offline_reason, "availability": st.availability,
                                                  "last_seen": st.last_seen_wall,
                                                  "timeout_s": self.device_timeout_s}))
            elif st.status in ("online", "stopped") and st.confirmed and st.alarmed:
                st.alarmed = False
                plan.append(("clear", st.device, {"status": st.status}))
        return plan

    def _apply_device(self, verb: str, device: str, detail: dict[str, Any]) -> Action:
        key, at = f"device_offline:{device}", self.clock.wall()
        try:
            if verb == "raise":
                alarm_id, new = self.store.raise_alarm(DEVICE_OFFLINE, key=key, at=at,
                                                       severity=vocabulary.severity(DEVICE_OFFLINE), device=device,
                                                       detail=detail)
                if new:
                    log.info("alarm %s: device %s offline (%s)", alarm_id, device, detail["reason"],
                             extra=log_context(device))
            else:
                if self.store.clear_alarm(key, at) is not None:
                    log.info("device %s is back (%s): device_offline cleared", device, detail["status"])
        except Exception:
            with self._lock:  # try again at the next check
                self._devices[device].alarmed = verb != "raise"
            raise
        return Action(verb, "device_offline", device, detail)

    def _plan_gaps(self, now: float) -> list[tuple[str, int, list[tuple[int, int]], bool, tuple[tuple[int, int], ...]]]:
        """``(device, epoch, ranges, lost, previous ranges)``: the gap alarm each device should now show, where it changed."""
        plan = []
        for device, lost in self._lost.items():
            for epoch, ranges in lost:
                plan.append((device, epoch, ranges, True, ()))
            self._dirty.add(device)
        self._lost.clear()
        for device, win in self._windows.items():
            if not self._paused and win.overdue(now, self.gap_timeout_s):
                self._dirty.add(device)
            ranges = win.raised_ranges()
            applied = self._gap_applied.get(device)
            if applied is not None and applied[0] != win.epoch:
                # The epoch that alarm was about ended in a reset: its gaps were reported as lost.
                del self._gap_applied[device]
                applied = None
            previous = applied[1] if applied else ()
            if tuple(ranges) != previous:
                plan.append((device, win.epoch, ranges, False, previous))
                self._gap_applied[device] = (win.epoch, tuple(ranges))
        return plan

    def _apply_gap(self, device: str, epoch: int, ranges: list[tuple[int, int]], lost: bool,
                   previous: tuple[tuple[int, int], ...]) -> Action:
        try:
            return self._write_gap(device, epoch, ranges, lost, previous)
        except Exception:
            with self._lock:  # try again at the next check
                if lost:
                    self._lost.setdefault(device, []).append((epoch, ranges))
                else:
                    self._gap_applied.pop(device, None)
            raise

    def _write_gap(self, device: str, epoch: int, ranges: list[tuple[int, int]], lost: bool,
                   previous: tuple[tuple[int, int], ...]) -> Action:
        key, at = f"event_gap:{device}:{epoch}", self.clock.wall()
        current = self.store.open_alarm(key)
        grown = any(not any(pa <= a and b <= pb for pa, pb in previous) for a, b in ranges)
        if current is None and not grown:
            # An operator resolved the alarm while events were still missing; some have arrived since.
            # Nothing new went missing, so nothing new is raised.
            return Action("none", "event_gap", device, {"epoch": epoch, "missing": _listed(ranges)})
        earlier = [(a, b) for a, b in current["detail"].get("reported", [])] if current else []
        detail: dict[str, Any] = {
            "epoch": epoch, "missing": _listed(ranges), "missing_events": sum(b - a + 1 for a, b in ranges),
            "reported": _listed(_merge([*earlier, *ranges]))}
        if lost:
            detail["sequence_reset"] = True
        if ranges:
            alarm_id, new = self.store.raise_alarm(EVENT_GAP, key=key, at=at, severity=vocabulary.severity(EVENT_GAP),
                                                   device=device, detail=detail)
            log.info("alarm %s: %s missing events %s%s", alarm_id, device,
                     ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges[:5]),
                     " (lost in a counter reset)" if lost else "")
            return Action("raise" if new else "update", "event_gap", device, detail)
        if self.store.clear_alarm(key, at, detail=detail) is not None:
            log.info("device %s: every missing event arrived; event_gap cleared", device)
        return Action("clear", "event_gap", device, detail)

    # ------------------------------------------------------ persistence

    def save(self) -> None:
        """Save the windows that changed since the last save, with the checkpoint, in one transaction."""
        with self._lock:
            if not self._dirty and self._through_rowid == self._saved_rowid:
                return
            rows = []
            for device in self._dirty:
                win = self._windows.get(device)
                if win is None:
                    continue
                lost = [[e, [[a, b] for a, b in r]] for e, r in self._lost.get(device, [])]
                rows.append({"device": device, "epoch": win.epoch, "base": win.base, "top": win.top,
                             "gaps": [[g.first, g.last, g.raised] for g in win.gaps], "lost": lost})
            through = self._through_rowid
            self._dirty.clear()
        try:
            self.store.save_sequences(rows, through, self.clock.wall())
        except Exception:
            with self._lock:
                self._dirty.update(r["device"] for r in rows)
            raise
        self._saved_rowid = through

    # ------------------------------------------------------------ views

    def devices(self) -> dict[str, DeviceStatus]:
        """A copy of every device's status."""
        with self._lock:
            return {d: dataclasses.replace(st) for d, st in self._devices.items()}

    def window(self, device: str) -> SequenceWindow | None:
        with self._lock:
            win = self._windows.get(device)
            if win is None:
                return None
            return SequenceWindow(win.epoch, win.base, win.top, win.started,
                                  [Gap(g.first, g.last, g.noticed, g.raised) for g in win.gaps])

    def next_deadline(self) -> float | None:
        """The monotonic time something may next become due (a device's silence, a gap's timeout); None
        when nothing is, or while the bus is disconnected (nothing is judged then)."""
        with self._lock:
            if self._paused:
                return None
            times = [st.last_seen + self.device_timeout_s for st in self._devices.values()
                     if st.status == "online" and st.last_seen is not None]
            times += [t for w in self._windows.values() if (t := w.next_deadline(self.gap_timeout_s)) is not None]
        return min(times) if times else None

    # ----------------------------------------------------------- thread

    def wake(self) -> None:
        """Run a check now (from any thread)."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-supervision", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, then save the windows one last time."""
        if self._thread is not None:
            self._stop.set()
            self._wake.set()
            self._thread.join(timeout)
            self._thread = None
        try:
            self.save()
        except Exception:
            log.exception("could not save the event sequence state")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.check()
            except Exception:
                log.exception("supervision check failed; trying again")
            deadline = self.next_deadline()
            timeout = self.max_wait_s
            if deadline is not None:
                timeout = min(timeout, max(0.0, deadline - self.clock.monotonic()))
            self._wake.wait(timeout)
