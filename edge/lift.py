"""The lift cab's floor machine: pure, clock-driven, no I/O; which floor buttons work, and which one was chosen.

A lift is a door record whose ``kind`` is ``lift`` (docs/openings.md "Lifts"). Its cab has a reader and one
relay per floor that enables that floor's button, and optionally the buttons' own inputs. Unlike a door:

- a grant is a **credit naming floors** (the floors ``decide()`` let the person reach), lasting ``unlock_s``:
  those floors' relays are energised while any credit names them. Two people who badge one after the other
  have two credits, each with its own floors;
- a floor button pressed while a credit names that floor uses the oldest such credit (``floor_chosen``,
  detail: the grant's token, ``floor``: the area): the other floors of that credit go dark at once, and the
  people the grant named are on that floor. A press of a floor no credit names does nothing here (its button
  is dark, or free);
- with floor buttons wired, a credit not used within ``unlock_s`` is cancelled (``grant_unused``); without
  them nobody can tell, and the credit simply runs out;
- **public** floors (their schedule open, no lockdown) are enabled without a badge; floors of a locked-down
  area are **blocked**: blocking takes the floor out of every credit in force and of the public floors, and a
  remote unlock (a grant without floors) skips it. A grant made later names a blocked floor only if
  ``decide()`` let its holder in despite the lockdown (a responder), and then enables it;
- **held** (the fire panel's release, or an unlock override): every floor is enabled, blocked or not, and
  presses use no credit.

Tokens are opaque (the edge uses the access event's id). The relays' safe state is all off. Like the door
machine it never reads the time itself and applies deadlines already due before any input.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from doorkeep.clock import Clock
from edge.door import ClockedMachine, DoorEvent, DoorState

#: The token of a credit with nobody behind it (a remote unlock): it moves nobody and is never reported unused.
NOBODY = ""


@dataclass(frozen=True)
class LiftTimings:
    unlock_s: float = 5.0
    """How long a grant's floors stay enabled waiting for a button."""

    def __post_init__(self) -> None:
        if not self.unlock_s > 0:
            raise ValueError(f"unlock_s must be > 0, got {self.unlock_s!r}")


@dataclass(frozen=True)
class FloorEvent(DoorEvent):
    """A lift event about one floor: ``floor_chosen`` names the area pressed."""

    floor: str = ""


@dataclass
class _Credit:
    token: str
    floors: frozenset[str]
    until: float


class LiftMachine(ClockedMachine):
    """One lift cab's floor relays and buttons as a function of inputs and time.

    The same read-only view and inputs as :class:`edge.door.DoorMachine` (the agent drives either): ``grant()``
    without floors enables every floor (a remote unlock), ``rex`` and ``contact`` are accepted and ignored (a
    cab has neither). Its own: :meth:`grant` with floors, :meth:`press`, :meth:`set_public`, :meth:`set_blocked`.
    """

    def __init__(self, door: str, floors: tuple[str, ...], timings: LiftTimings, clock: Clock, *,
                 buttons: bool = False) -> None:
        self.door = door
        self.floors = tuple(floors)
        self.timings = timings
        self.buttons = buttons
        self._clock = clock
        self._credits: deque[_Credit] = deque()
        self._public: frozenset[str] = frozenset()
        self._blocked: frozenset[str] = frozenset()
        self._hold = False
        self._enabled: frozenset[str] = frozenset()
        self._tampered = False

    # -- read-only view -------------------------------------------------

    @property
    def enabled(self) -> frozenset[str]:
        """The floors whose relay is energised now."""
        return self._enabled

    @property
    def public(self) -> frozenset[str]:
        return self._public

    @property
    def blocked(self) -> frozenset[str]:
        return self._blocked

    @property
    def state(self) -> DoorState:
        return DoorState.UNLOCKED if self._enabled else DoorState.LOCKED

    @property
    def relay_energised(self) -> bool:
        return bool(self._enabled)

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
        return len(self._credits)

    def covers(self, floor: str) -> bool:
        """Whether a credit names ``floor`` now (a press there would be ``floor_chosen``)."""
        return not self._hold and any(floor in c.floors for c in self._credits)

    def next_deadline(self) -> float | None:
        return min((c.until for c in self._credits), default=None)

    # -- inputs ---------------------------------------------------------

    def grant(self, token: str = NOBODY, floors: tuple[str, ...] | frozenset[str] | None = None) -> list[DoorEvent]:
        """Enable ``floors`` (those this cab serves; None: all of them) for ``unlock_s``, as one credit."""
        now = self._clock.monotonic()
        events = self._advance(now)
        wanted = frozenset(f for f in self.floors if f not in self._blocked) if floors is None \
            else frozenset(f for f in floors if f in self.floors)
        if wanted:
            self._credits.append(_Credit(token, wanted, now + self.timings.unlock_s))
        elif token and self.buttons:
            events.append(DoorEvent("grant_unused", now, token))  # nothing this cab could enable
        return events + self._relays(now, "grant")

    def press(self, floor: str) -> list[DoorEvent]:
        """A floor button was pressed: the oldest credit naming the floor is used (``floor_chosen``)."""
        now = self._clock.monotonic()
        events = self._advance(now)
        if self._hold:
            return events
        used = next((c for c in self._credits if floor in c.floors), None)
        if used is None:
            return events
        self._credits.remove(used)
        if used.token:
            events.append(FloorEvent("floor_chosen", now, used.token, floor))
        return events + self._relays(now, "chosen")

    def set_public(self, floors: frozenset[str]) -> list[DoorEvent]:
        """The floors free without a badge now (their public schedule open)."""
        now = self._clock.monotonic()
        events = self._advance(now)
        self._public = frozenset(f for f in floors if f in self.floors)
        return events + self._relays(now, "schedule")

    def set_blocked(self, floors: frozenset[str]) -> list[DoorEvent]:
        """The floors of a locked-down area now: each newly blocked floor leaves every credit in force (a credit
        left with no floor is cancelled, reported unused where buttons would tell) and the public floors."""
        now = self._clock.monotonic()
        events = self._advance(now)
        newly = frozenset(f for f in floors if f in self.floors) - self._blocked
        self._blocked = frozenset(f for f in floors if f in self.floors)
        if newly:
            kept: deque[_Credit] = deque()
            for credit in self._credits:
                credit.floors = credit.floors - newly
                if credit.floors:
                    kept.append(credit)
                elif credit.token and self.buttons:
                    events.append(DoorEvent("grant_unused", now, credit.token))
            self._credits = kept
        return events + self._relays(now, "lockdown")

    def hold_unlocked(self, on: bool) -> list[DoorEvent]:
        """Every floor free while held (fire recall through the emergency input, an unlock override)."""
        now = self._clock.monotonic()
        events = self._advance(now)
        self._hold = on
        return events + self._relays(now, "schedule")

    def rex(self) -> list[DoorEvent]:
        """A cab has no exit button: nothing happens."""
        return self._advance(self._clock.monotonic())

    def contact(self, is_open: bool) -> list[DoorEvent]:
        """A cab has no door leaf of its own here: nothing happens."""
        return self._advance(self._clock.monotonic())

    def safe(self) -> list[DoorEvent]:
        """Every relay off: the hold and public floors released, every credit cancelled (reported unused where
        the buttons would have told)."""
        now = self._clock.monotonic()
        events = self._advance(now)
        self._hold = False
        self._public = frozenset()
        while self._credits:
            credit = self._credits.popleft()
            if credit.token and self.buttons:
                events.append(DoorEvent("grant_unused", now, credit.token))
        return events + self._relays(now, "safe")

    # -- internals ------------------------------------------------------

    def _relays(self, now: float, detail: str) -> list[DoorEvent]:
        if self._hold:
            want = frozenset(self.floors)
        else:
            want = (self._public - self._blocked).union(*(c.floors for c in self._credits))
        was, self._enabled = self._enabled, want
        if bool(want) == bool(was):
            return []
        return [DoorEvent("unlocked" if want else "relocked", now, detail)]

    def _advance(self, now: float) -> list[DoorEvent]:
        """Cancel every credit whose time ran out by ``now``, earliest first."""
        events: list[DoorEvent] = []
        while (due := min(self._credits, key=lambda c: c.until, default=None)) is not None and due.until <= now:
            self._credits.remove(due)
            if due.token and self.buttons:
                events.append(DoorEvent("grant_unused", due.until, due.token))
            events += self._relays(due.until, "expired")
        return events
