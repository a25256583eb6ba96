"""A sliding-window rate limit for requests that arrive from outside (Home Assistant's lock commands, the
integration request API): a flood is counted and refused, never queued up behind the doors' own work."""

from __future__ import annotations

from collections import deque


class RateWindow:
    """At most ``limit`` events in any ``span_s`` (by the monotonic clock the caller passes)."""

    def __init__(self, limit: int, span_s: float = 60.0) -> None:
        self.limit, self.span_s = limit, span_s
        self._times: deque[float] = deque()

    def take(self, now: float) -> bool:
        """Count one event at ``now`` if the window has room; False (not counted) when it is full."""
        while self._times and now - self._times[0] >= self.span_s:
            self._times.popleft()
        if len(self._times) >= self.limit:
            return False
        self._times.append(now)
        return True
