"""The scenario clock: real speed from a chosen start, with jumps forward.

A scenario runs the real stack, so MQTT round trips, decision timeouts and
reader timeouts still happen in real time; but it also needs "three hours
later" without waiting three hours. :class:`ScenarioClock` does both: it
ticks at the speed of the system clock from ``start_wall``, and
:meth:`ScenarioClock.advance` moves its wall *and* monotonic readings
forward at once, so door timers (``unlock_s``, ``held_open_s``), the
reader's repeat filter, schedules and validity windows all see the jump.

Everything driven by the clock only notices a jump when it next looks at
it: after advancing, poke every edge agent (``SiteRunner.advance`` does).
"""

from __future__ import annotations

import threading

from doorkeep.clock import Clock, SystemClock


class ScenarioClock:
    """Implements doorkeep's ``Clock`` protocol (``wall()``, ``monotonic()``); thread-safe."""

    def __init__(self, start_wall: float, *, base: Clock | None = None) -> None:
        self._base: Clock = base if base is not None else SystemClock()
        self._lock = threading.Lock()
        self._wall_offset = start_wall - self._base.wall()
        self._mono_offset = 0.0
        self._advanced = 0.0

    def wall(self) -> float:
        """UTC epoch seconds: ``start_wall`` plus the real time elapsed plus every jump."""
        with self._lock:
            offset = self._wall_offset
        return self._base.wall() + offset

    def monotonic(self) -> float:
        """The system's monotonic clock plus every jump: never goes backwards."""
        with self._lock:
            offset = self._mono_offset
        return self._base.monotonic() + offset

    def advance(self, seconds: float) -> None:
        """Jump wall and monotonic time forward together by ``seconds`` (>= 0)."""
        if not seconds >= 0:
            raise ValueError(f"the scenario clock only moves forwards, got {seconds!r} s")
        with self._lock:
            self._wall_offset += seconds
            self._mono_offset += seconds
            self._advanced += seconds

    @property
    def advanced(self) -> float:
        """Total seconds jumped so far (simulated time not spent in real time)."""
        with self._lock:
            return self._advanced
