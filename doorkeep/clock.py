"""Clocks injected into every piece of time-driven logic.

Logic never reads the time itself and never sleeps: it is handed a clock, so
tests drive door timers and schedules with a fake clock and no waiting.
``wall()`` is UTC epoch seconds (for timestamps and schedules); ``monotonic()``
measures intervals and is immune to NTP steps.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> float:
        """Seconds since the epoch, UTC."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""


class SystemClock:
    """The real clock."""

    def wall(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told; thread-safe so tests may share it."""

    def __init__(self, wall: float = 1_764_316_800.0, monotonic: float = 1000.0) -> None:
        self._wall = wall
        self._mono = monotonic
        self._lock = threading.Lock()

    def wall(self) -> float:
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a fake clock only moves forwards; use set_wall for an NTP step")
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def set_wall(self, wall: float) -> None:
        """Step the wall clock (as NTP might) without touching the monotonic clock."""
        with self._lock:
            self._wall = wall


def iso_ms(epoch: float) -> str:
    """UTC timestamp with milliseconds, the form every message carries."""
    dt = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso_ms(text: str) -> float:
    """Inverse of :func:`iso_ms`; accepts any ISO 8601 UTC timestamp."""
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone")
    return dt.timestamp()
