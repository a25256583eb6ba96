"""The door state machine: pure, clock-driven, no I/O.

Everything a door does over time (unlock for N seconds, relock once the door
closes, forced-open, held-open with its pre-alarm, relay-stuck, tamper) is
decided here from its inputs (a grant, a REX press, a schedule hold, a
contact change, the tamper loop) and the injected clock. The machine never
sleeps and never reads the time itself: its owner calls :meth:`tick` at or
after :meth:`next_deadline`, so tests drive it with a ``FakeClock`` and no
waiting, and the real edge drives its two outputs from the machine after
every call: the relay from :attr:`DoorMachine.relay_energised`, the sounder
from :attr:`DoorMachine.sounder_on`.

The safe state is relay de-energised. The relay is on only while an unlock
(a grant, or a REX press with ``rex_unlocks``) is in force, or while the door
is held unlocked by its schedule (:meth:`hold_unlocked`, door mode
``unlocked_on_schedule``): then every opening is authorised and no
held-open alarm runs, and releasing the hold relocks the door unless a
grant's unlock window is still running.

Before applying an input, every method first applies the deadlines that are
already due, and deadline events carry the deadline as their time. The result
therefore depends only on when inputs happened, not on how late ``tick()``
was called. The machine is not thread-safe: its owner serialises calls.

Supervision:

- **Held-open pre-alarm.** An authorised opening still open ``prealarm_s``
  before its held-open time emits ``held_open_warning`` and the sounder
  starts; at ``held_open_s`` comes the ``held_open`` alarm, the sounder
  still on. With no pre-alarm (``prealarm_s`` 0, or not less than
  ``held_open_s``) the sounder starts with the ``held_open`` alarm itself.
- **Sounder.** On exactly while the door is open and either an alarm
  (forced or held) is raised or the pre-alarm has started; closing the door
  silences it (and relocks). A schedule hold that starts during the
  pre-alarm cancels the pending held-open and silences it; an alarm already
  raised sounds until the door closes. Tamper does not sound it.
- **Relay stuck.** The contact says open while the machine never released
  the lock, twice in a row: the second consecutive ``forced_open`` with no
  grant, REX press or schedule hold in between also emits ``relay_stuck``
  (the lock or its relay may be stuck released, or the door was forced
  twice; either way someone must look). It is reported once, and re-armed
  only by a normal cycle: an opening authorised while a grant or REX had
  the relay energised (no schedule hold) that closes without an alarm.
- **Tamper.** :meth:`DoorMachine.tamper` reports the enclosure's tamper
  loop (``tamper``, detail ``opened`` / ``restored``). It is an input to
  report, nothing more: it never energises the relay, never authorises an
  opening, and never changes the lock, alarms or sounder.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

from doorkeep.clock import Clock


class DoorState(str, Enum):
    LOCKED = "locked"
    UNLOCKED = "unlocked"
    OPEN = "open"
    ALARM = "alarm"


@dataclass(frozen=True)
class DoorTimings:
    unlock_s: float = 5.0
    """How long a grant or REX keeps the relay energised if the door is not opened."""
    held_open_s: float = 30.0
    """An authorised opening longer than this raises ``held_open``."""
    rex_unlocks: bool = True
    """REX energises the relay (otherwise it only shunts the forced alarm)."""
    prealarm_s: float = 10.0
    """The pre-alarm (``held_open_warning``, sounder on) starts this long before ``held_open``.

    0 disables it; so does a value not less than ``held_open_s`` (a
    pre-alarm from the moment an authorised door opens would sound at every
    passage). Without a pre-alarm the sounder starts with ``held_open``.
    """

    def __post_init__(self) -> None:
        if not self.unlock_s > 0:
            raise ValueError(f"unlock_s must be > 0, got {self.unlock_s!r}")
        if not self.held_open_s > 0:
            raise ValueError(f"held_open_s must be > 0, got {self.held_open_s!r}")
        if not self.prealarm_s >= 0:  # also refuses NaN
            raise ValueError(f"prealarm_s must be >= 0, got {self.prealarm_s!r}")

    @property
    def prealarm_active(self) -> bool:
        """True when an authorised opening gets a pre-alarm before ``held_open``."""
        return 0 < self.prealarm_s < self.held_open_s


@dataclass(frozen=True)
class DoorEvent:
    type: str
    """"unlocked" | "relocked" | "door_opened" | "door_closed" | "forced_open" | "held_open" | "rex" |
    "held_open_warning" | "relay_stuck" | "tamper"."""
    at: float
    """``clock.monotonic()`` when it happened (the deadline itself for timed events)."""
    detail: str = ""
    """"grant" | "rex" | "schedule" (unlocked); "expired" | "closed" | "schedule" | "safe" (relocked);
    "opened" | "restored" (tamper); empty otherwise."""


def tamper_change(was: bool, active: bool, at: float) -> DoorEvent | None:
    """The ``tamper`` event for the tamper loop going from ``was`` to ``active`` at ``at`` (detail ``opened`` or
    ``restored``); None for a repeated value, which is not a change."""
    if active == was:
        return None
    return DoorEvent("tamper", at, "opened" if active else "restored")


class ClockedMachine:
    """What every opening's machine (door, turnstile, lift cab) does the same way: time passes only through
    ``_advance`` (deadlines already due are applied before any input), and the tamper loop is reported on change
    and changes nothing else. Subclasses set ``_clock`` and ``_tampered`` and define ``_advance``."""

    _clock: Clock
    _tampered: bool
    _advance: Callable[[float], list[DoorEvent]]

    @property
    def tampered(self) -> bool:
        """The last tamper input: True while the enclosure's tamper loop is open."""
        return self._tampered

    def tamper(self, active: bool) -> list[DoorEvent]:
        """The tamper loop opened (``True``) or was restored; a repeated value is not a change.

        Reported as ``tamper`` with detail ``opened`` / ``restored``; nothing
        else changes: no relay, no unlock window, no alarm, no sounder, no floor.
        """
        now = self._clock.monotonic()
        events = self._advance(now)
        change = tamper_change(self._tampered, active, now)
        if change is not None:
            self._tampered = active
            events.append(change)
        return events

    def tick(self) -> list[DoorEvent]:
        """Apply the passage of time: every deadline due by now, each exactly once."""
        return self._advance(self._clock.monotonic())


class DoorMachine(ClockedMachine):
    """One door's lock, contact and alarms as a function of inputs and time."""

    def __init__(self, door: str, timings: DoorTimings, clock: Clock) -> None:
        self.door = door
        self.timings = timings
        self._clock = clock
        self._relay = False
        # End of the current unlock window (grant or REX); an opening before
        # it is authorised. None when no unlock is in force.
        self._window_until: float | None = None
        # Until when a grant (or REX with rex_unlocks) keeps the relay energised;
        # never later than the window. A REX that only authorises an opening
        # extends the window, not this.
        self._release_until: float | None = None
        self._open = False
        self._open_authorised = False
        # When an authorised opening becomes "held open"; None once fired or closed.
        self._held_at: float | None = None
        # When its pre-alarm starts; None without a pre-alarm, once fired, or closed.
        self._warn_at: float | None = None
        # The pre-alarm of the current opening has started (sounds until the door closes).
        self._warned = False
        self._alarm: str | None = None  # "forced" | "held"
        # Held unlocked by the door's schedule (door mode unlocked_on_schedule).
        self._hold = False
        # Relay-stuck supervision: forced openings since the last grant/REX/hold,
        # whether relay_stuck was reported (until a normal cycle), and whether
        # the current opening was authorised by a relay a grant or REX energised.
        self._forced_in_a_row = 0
        self._stuck_reported = False
        self._open_released = False
        # The enclosure's tamper loop is open (reported only; never acted on).
        self._tampered = False

    # -- read-only view -------------------------------------------------

    @property
    def state(self) -> DoorState:
        if self._alarm is not None:
            return DoorState.ALARM
        if self._open:
            return DoorState.OPEN
        if self._relay:
            return DoorState.UNLOCKED
        return DoorState.LOCKED

    @property
    def relay_energised(self) -> bool:
        return self._relay

    @property
    def door_open(self) -> bool:
        return self._open

    @property
    def held_unlocked(self) -> bool:
        """True while the schedule holds the door unlocked."""
        return self._hold

    @property
    def sounder_on(self) -> bool:
        """The local sounder: on while the door is open with an alarm raised or its pre-alarm running."""
        return self._open and (self._alarm is not None or self._warned)

    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`tick` next has something to do."""
        pending = [t for t in (self._release_until, self._window_until, self._warn_at, self._held_at)
                   if t is not None]
        return min(pending) if pending else None

    # -- inputs ---------------------------------------------------------

    def grant(self) -> list[DoorEvent]:
        """An access grant: energise the relay for ``unlock_s`` (extending any unlock in force)."""
        now = self._clock.monotonic()
        events = self._advance(now)
        self._forced_in_a_row = 0
        events += self._unlock(now, energise=True, detail="grant")
        return events

    def rex(self) -> list[DoorEvent]:
        """Request-to-exit: unlock like a grant, or with ``rex_unlocks=False`` only authorise an opening."""
        now = self._clock.monotonic()
        events = self._advance(now)
        events.append(DoorEvent("rex", now))
        self._forced_in_a_row = 0
        events += self._unlock(now, energise=self.timings.rex_unlocks, detail="rex")
        return events

    def hold_unlocked(self, on: bool) -> list[DoorEvent]:
        """Hold the door unlocked (schedule open) or release it; repeating the current value does nothing.

        While held, the relay is energised, every opening is authorised and
        no held-open alarm runs. On release the relay goes off (``relocked``,
        detail ``schedule``) unless a grant's unlock window is still running;
        a door still open then gets the usual held-open time from the release.
        """
        now = self._clock.monotonic()
        events = self._advance(now)
        if on == self._hold:
            return events
        self._hold = on
        if on:
            self._forced_in_a_row = 0
            # An opening in progress is now authorised with no time limit: its
            # pre-alarm stops (an alarm already raised sounds until the door closes).
            self._held_at = None
            self._warn_at = None
            self._warned = False
            self._open_released = False
            if self._open and self._alarm is None:
                self._open_authorised = True
            if not self._relay:
                self._relay = True
                events.append(DoorEvent("unlocked", now, "schedule"))
            return events
        if self._open and self._open_authorised and self._alarm is None:
            self._start_held_timer(now)
        if self._release_until is None and self._relay:
            self._relay = False
            events.append(DoorEvent("relocked", now, "schedule"))
        return events

    def contact(self, is_open: bool) -> list[DoorEvent]:
        """The door contact changed; a repeated value is not a change."""
        now = self._clock.monotonic()
        events = self._advance(now)
        if is_open == self._open:
            return events
        self._open = is_open
        if is_open:
            events.append(DoorEvent("door_opened", now))
            if self._hold:
                self._open_authorised = True
            elif self._window_until is not None:
                self._open_authorised = True
                self._open_released = self._release_until is not None
                self._start_held_timer(now)
            else:
                self._alarm = "forced"
                events.append(DoorEvent("forced_open", now))
                self._forced_in_a_row += 1
                if self._forced_in_a_row >= 2 and not self._stuck_reported:
                    self._stuck_reported = True
                    events.append(DoorEvent("relay_stuck", now))
            return events
        # Closing ends everything: one unlock admits one opening, a closed
        # door clears its alarm and silences the sounder.
        events.append(DoorEvent("door_closed", now))
        if self._open_released and self._alarm is None:
            self._stuck_reported = False  # a normal grant/REX cycle: the relay works
        events += self._relock(now, "closed")
        self._open_authorised = False
        self._open_released = False
        self._held_at = None
        self._warn_at = None
        self._warned = False
        self._alarm = None
        return events

    def safe(self) -> list[DoorEvent]:
        """Force the relay off (shutdown, crash path) and cancel any unlock in force, a schedule hold included."""
        now = self._clock.monotonic()
        events = self._advance(now)
        self._hold = False
        events += self._relock(now, "safe")
        return events

    # -- internals ------------------------------------------------------

    def _start_held_timer(self, now: float) -> None:
        """An authorised opening starts (or, after a schedule hold, restarts) its held-open time."""
        self._held_at = now + self.timings.held_open_s
        self._warn_at = (self._held_at - self.timings.prealarm_s) if self.timings.prealarm_active else None

    def _unlock(self, now: float, *, energise: bool, detail: str) -> list[DoorEvent]:
        until = now + self.timings.unlock_s
        if self._window_until is None or until > self._window_until:
            self._window_until = until
        if not energise:
            return []
        if self._release_until is None or until > self._release_until:
            self._release_until = until
        if not self._relay:
            self._relay = True
            return [DoorEvent("unlocked", now, detail)]
        return []

    def _relock(self, at: float, detail: str) -> list[DoorEvent]:
        """End the unlock window; report "relocked" only if the relay was actually on.

        While the schedule holds the door unlocked the relay stays on.
        """
        self._window_until = None
        self._release_until = None
        if self._relay and not self._hold:
            self._relay = False
            return [DoorEvent("relocked", at, detail)]
        return []

    def _advance(self, now: float) -> list[DoorEvent]:
        """Fire every deadline due by ``now``, earliest first."""
        events: list[DoorEvent] = []
        while True:
            deadline = self.next_deadline()
            if deadline is None or deadline > now:
                return events
            if self._release_until is not None and self._release_until == deadline:
                # The grant's time is up; an opening stays authorised while a
                # later REX's window runs (the window is never shorter).
                self._release_until = None
                if self._window_until == deadline:
                    self._window_until = None
                if self._relay and not self._hold:
                    self._relay = False
                    events.append(DoorEvent("relocked", deadline, "expired"))
            elif self._window_until is not None and self._window_until == deadline:
                self._window_until = None
            elif self._warn_at is not None and self._warn_at == deadline:
                self._warn_at = None
                if self._open and self._open_authorised and self._alarm is None:
                    self._warned = True
                    events.append(DoorEvent("held_open_warning", deadline))
            else:
                self._held_at = None
                if self._open and self._open_authorised and self._alarm is None:
                    self._alarm = "held"
                    events.append(DoorEvent("held_open", deadline))
