"""The door state machine: pure, clock-driven, no I/O.

Everything a door does over time (unlock for N seconds, relock once the door
closes, forced-open, held-open) is decided here from three kinds of input
(a grant, a REX press, a contact change) and the injected clock. The machine
never sleeps and never reads the time itself: its owner calls :meth:`tick` at
or after :meth:`next_deadline`, so tests drive it with a ``FakeClock`` and no
waiting, and the real edge drives the relay from the events it returns.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

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

    def __post_init__(self) -> None:
        if not self.unlock_s > 0:
            raise ValueError(f"unlock_s must be > 0, got {self.unlock_s!r}")
        if not self.held_open_s > 0:
            raise ValueError(f"held_open_s must be > 0, got {self.held_open_s!r}")


@dataclass(frozen=True)
class DoorEvent:
    type: str
    """"unlocked" | "relocked" | "door_opened" | "door_closed" | "forced_open" | "held_open" | "rex"."""
    at: float
    """``clock.monotonic()`` when it happened (the deadline itself for timed events)."""
    detail: str = ""


class DoorMachine:
    """One door's lock, contact and alarms as a function of inputs and time."""

    def __init__(self, door: str, timings: DoorTimings, clock: Clock) -> None:
        self.door = door
        self.timings = timings
        self._clock = clock
        self._relay = False
        # End of the current unlock window (grant or REX); an opening before
        # it is authorised. None when no unlock is in force.
        self._window_until: float | None = None
        self._open = False
        self._open_authorised = False
        # When an authorised opening becomes "held open"; None once fired or closed.
        self._held_at: float | None = None
        self._alarm: str | None = None  # "forced" | "held"
        # Held unlocked by the door's schedule (door mode unlocked_on_schedule).
        self._hold = False

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

    def next_deadline(self) -> float | None:
        """The monotonic time at which :meth:`tick` next has something to do."""
        pending = [t for t in (self._window_until, self._held_at) if t is not None]
        return min(pending) if pending else None

    # -- inputs ---------------------------------------------------------

    def grant(self) -> list[DoorEvent]:
        """An access grant: energise the relay for ``unlock_s`` (extending any unlock in force)."""
        now = self._clock.monotonic()
        events = self._advance(now)
        events += self._unlock(now, energise=True, detail="grant")
        return events

    def rex(self) -> list[DoorEvent]:
        """Request-to-exit: unlock like a grant, or with ``rex_unlocks=False`` only authorise an opening."""
        now = self._clock.monotonic()
        events = self._advance(now)
        events.append(DoorEvent("rex", now))
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
            self._held_at = None  # an opening in progress is now authorised with no time limit
            if self._open and self._alarm is None:
                self._open_authorised = True
            if not self._relay:
                self._relay = True
                events.append(DoorEvent("unlocked", now, "schedule"))
            return events
        if self._open and self._open_authorised and self._alarm is None:
            self._held_at = now + self.timings.held_open_s
        if self._window_until is None and self._relay:
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
                self._held_at = now + self.timings.held_open_s
            else:
                self._alarm = "forced"
                events.append(DoorEvent("forced_open", now))
            return events
        # Closing ends everything: one unlock admits one opening, and a closed
        # door clears its alarm.
        events.append(DoorEvent("door_closed", now))
        events += self._relock(now, "closed")
        self._open_authorised = False
        self._held_at = None
        self._alarm = None
        return events

    def tick(self) -> list[DoorEvent]:
        """Apply the passage of time: unlock expiry and held-open, each exactly once."""
        return self._advance(self._clock.monotonic())

    def safe(self) -> list[DoorEvent]:
        """Force the relay off (shutdown, crash path) and cancel any unlock in force, a schedule hold included."""
        now = self._clock.monotonic()
        events = self._advance(now)
        self._hold = False
        events += self._relock(now, "safe")
        return events

    # -- internals ------------------------------------------------------

    def _unlock(self, now: float, *, energise: bool, detail: str) -> list[DoorEvent]:
        until = now + self.timings.unlock_s
        if self._window_until is None or until > self._window_until:
            self._window_until = until
        if energise and not self._relay:
            self._relay = True
            return [DoorEvent("unlocked", now, detail)]
        return []

    def _relock(self, at: float, detail: str) -> list[DoorEvent]:
        """End the unlock window; report "relocked" only if the relay was actually on.

        While the schedule holds the door unlocked the relay stays on.
        """
        self._window_until = None
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
            if self._window_until is not None and self._window_until == deadline:
                events += self._relock(deadline, "expired")
            else:
                self._held_at = None
                if self._open and self._open_authorised and self._alarm is None:
                    self._alarm = "held"
                    events.append(DoorEvent("held_open", deadline))
