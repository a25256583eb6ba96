"""The turnstile state machine: pure, clock-driven, no I/O; one passage per grant.

A turnstile (or a speed gate) is a door record whose ``kind`` is ``turnstile``: the relay frees the arms, a
passage sensor on the door's own direction pulses once per person through, and a grant is a **credit for
one passage**, not an unlock time. So, unlike :class:`edge.door.DoorMachine`:

- a grant adds one credit that lasts ``unlock_s``; the relay is energised while any credit (or a REX press,
  or a hold) is in force. Two people who badge one after the other before the first passes have two credits,
  used in order;
- a passage uses the oldest credit (``passage``, detail: the grant's token) and, with none left, the relay
  goes off at once: the arms lock behind the person;
- a credit not used within ``unlock_s`` is cancelled (``grant_unused``, detail: its token), so the person
  who badged and walked away moves nowhere;
- a passage with no credit within ``tailgate_s`` of the last used one is a second person on that grant:
  ``tailgate`` (detail: the token of the grant they followed); any other passage with no credit, REX or
  hold is ``forced_passage``, the turnstile's ``forced_open``;
- while held unlocked (a schedule, an override, the emergency input) every passage is free: ``passage``
  with an empty detail, and nobody is moved.

Tokens are opaque to the machine (the edge uses the access event's id), so the events can say which grant
a passage used and the server moves exactly the people that grant named. The relay's safe state is off.
Like the door machine it never reads the time itself and applies deadlines already due before any input,
so the result depends only on when inputs happened.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from doorkeep.clock import Clock
from edge.door import ClockedMachine, DoorEvent, DoorState

#: A passage this soon after the last credit was used, with none left, is a tailgater on that grant.
DEFAULT_TAILGATE_S = 3.0

#: The grant token of a REX credit (free exit: nobody to move, no alarm).
REX = ""


@dataclass(frozen=True)
class TurnstileTimings:
    unlock_s: float = 5.0
    """How long a grant's credit waits for its passage."""
    tailgate_s: float = DEFAULT_TAILGATE_S
    """After a credit is used, a passage with no credit within this long is ``tailgate``, later ``forced_passage``."""

    def __post_init__(self) -> None:
        if not self.unlock_s > 0:
            raise ValueError(f"unlock_s must be > 0, got {self.unlock_s!r}")
        if not self.tailgate_s >= 0:
            raise ValueError(f"tailgate_s must be >= 0, got {self.tailgate_s!r}")


@dataclass
class _Credit:
    token: str
    until: float


class TurnstileMachine(ClockedMachine):
    """One turnstile direction's arms and passage sensor as a function of inputs and time.

    The same read-only view and inputs as :class:`edge.door.DoorMachine` (the agent drives either), plus
    :meth:`passage`; :meth:`contact` is accepted and ignored (a turnstile reports passages, not a door leaf).
    """

    def __init__(self, door: str, timings: TurnstileTimings, clock: Clock) -> None:
        self.door = door
        self.timings = timings
        self._clock = clock
        self._credits: deque[_Credit] = deque()
        self._relay = False
        self._hold = False
        self._last_used: tuple[str, float] | None = None  # (token, when) of the last credit a passage used
        self._tampered = False

    # -- read-only view -------------------------------------------------

    @property
    def state(self) -> DoorState:
        return DoorState.UNLOCKED if self._relay else DoorState.LOCKED

    @property
    def relay_energised(self) -> bool:
        return self._relay

    @property
    def door_open(self) -> bool:
        return False

    @property
    def held_unlocked(self) -> bool:
        return self._hold

    @property
    def sounder_on(self) -> bool:
        return False

    @property
    def credits(self) -> int:
        """Passages granted and not used yet."""
        return len(self._credits)

    def next_deadline(self) -> float | None:
        return self._credits[0].until if self._credits else None

    # -- inputs ---------------------------------------------------------

    def grant(self, token: str = REX) -> list[DoorEvent]:
        """One passage granted for ``unlock_s``: the arms are freed until it is used or runs out."""
        now = self._clock.monotonic()
        events = self._advance(now)
        self._credits.append(_Credit(token, now + self.timings.unlock_s))
        return events + self._set_relay(now, "grant" if token else "rex")

    def rex(self) -> list[DoorEvent]:
        """The exit button: one free passage (reported, never moving anyone)."""
        now = self._clock.monotonic()
        events = self._advance(now)
        events.append(DoorEvent("rex", now))
        self._credits.append(_Credit(REX, now + self.timings.unlock_s))
        return events + self._set_relay(now, "rex")

    def passage(self) -> list[DoorEvent]:
        """The passage sensor counted one person through in this direction."""
        now = self._clock.monotonic()
        events = self._advance(now)
        if self._hold:
            events.append(DoorEvent("passage", now))
            return events
        if self._credits:
            used = self._credits.popleft()
            self._last_used = (used.token, now)
            events.append(DoorEvent("passage", now, used.token))
            return events + self._set_relay(now, "closed")
        if self._last_used is not None and now - self._last_used[1] <= self.timings.tailgate_s:
            events.append(DoorEvent("tailgate", now, self._last_used[0]))
            return events
        events.append(DoorEvent("forced_passage", now))
        return events

    def hold_unlocked(self, on: bool) -> list[DoorEvent]:
        """Free passage while held (schedule, override, emergency); releasing it keeps any credit in force."""
        now = self._clock.monotonic()
        events = self._advance(now)
        if on == self._hold:
            return events
        self._hold = on
        return events + self._set_relay(now, "schedule")

    def contact(self, is_open: bool) -> list[DoorEvent]:
        """A turnstile has no door leaf: a contact input, if wired, is not acted on."""
        return self._advance(self._clock.monotonic())

    def safe(self) -> list[DoorEvent]:
        """Relay off, the hold released and every credit cancelled (each reported ``grant_unused``)."""
        now = self._clock.monotonic()
        events = self._advance(now)
        self._hold = False
        while self._credits:
            credit = self._credits.popleft()
            if credit.token:
                events.append(DoorEvent("grant_unused", now, credit.token))
        return events + self._set_relay(now, "safe")

    # -- internals ------------------------------------------------------

    def _set_relay(self, now: float, detail: str) -> list[DoorEvent]:
        want = self._hold or bool(self._credits)
        if want == self._relay:
            return []
        self._relay = want
        return [DoorEvent("unlocked" if want else "relocked", now, detail)]

    def _advance(self, now: float) -> list[DoorEvent]:
        """Cancel every credit whose time ran out by ``now``, earliest first."""
        events: list[DoorEvent] = []
        while self._credits and self._credits[0].until <= now:
            credit = self._credits.popleft()
            if credit.token:
                events.append(DoorEvent("grant_unused", credit.until, credit.token))
            events += self._set_relay(credit.until, "expired")
        return events
