"""The alarm console's heartbeat: escalate what nobody answered, and tell every open desk when the open
alarms change (the counter in the navigation, its sounds; docs/alarms.md "Priority and escalation").

Alarms are raised by several parts of the server (supervision on ingest, intrusion signals, the broker log,
backups) and changed by operators; :class:`AlarmWatch` recomputes the desk's summary
(:meth:`server.alarms.Alarms.summary`) when woken and at least every ``every_s`` (escalation is due by the
clock; a priority changed with a site revision; another process wrote an alarm), and publishes it only when
it changed. It is woken by the store when an alarm row changed in a way the counter shows (raised, raised
again, acknowledged, resolved, escalated: ``Store.on_alarm_write``, triggers on the store's connection), not by
every stored event: with 100 open alarms a recount takes ~6 ms, and at 200 events/s waking on each held the
store's connection up to 50 times a second for nothing (docs/performance.md "Fan-out"). Waking is coalesced:
a burst of alarms costs one recomputation, not one per alarm.

The decision (:meth:`run_once`) reads the time from the injected clock and never sleeps; only the thread's
loop paces itself with ``Event.wait``, so a test moves a fake clock and calls :meth:`run_once`.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from server.alarms import Alarms, AlarmSummary

log = logging.getLogger("doorkeep.server.alarms")

#: The longest the desk's counter lags an alarm raised with no event behind it (device offline, escalation).
EVERY_S = 1.0
#: The shortest gap between two recomputations under a burst of events (the counter's p99 budget is 100 ms).
MIN_GAP_S = 0.02


class AlarmWatch:
    """Escalates due alarms and publishes the summary when it changes, on its own thread (desk lifespan)."""

    def __init__(self, alarms: Alarms, publish: Callable[[AlarmSummary], None], every_s: float = EVERY_S,
                 min_gap_s: float = MIN_GAP_S) -> None:
        self.alarms = alarms
        self.publish = publish
        self.every_s = every_s
        self.min_gap_s = min_gap_s
        self.last: AlarmSummary | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self, *_: object) -> None:
        """Any thread (the store's alarm-write hook, an alarm listener): recompute soon. Cheap, never blocks the
        caller (the store's hook calls it inside the writer's transaction)."""
        self._wake.set()

    @property
    def pending(self) -> bool:
        """Whether a wake-up is waiting to be answered (tests and the bench read it)."""
        return self._wake.is_set()

    def run_once(self) -> AlarmSummary:
        """Escalate what is due now, then publish the summary if it differs from the last one published."""
        self.alarms.escalate_due()
        summary = self.alarms.summary()
        if summary != self.last:
            self.last = summary
            self.publish(summary)
        return summary

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-desk-alarms", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        clock = self.alarms.clock
        while not self._stop.is_set():
            self._wake.clear()
            started = clock.monotonic()
            try:
                self.run_once()
            except Exception:
                if self._stop.is_set():  # the desk is shutting down and closed the store first
                    return
                log.exception("the alarm watch failed; trying again in %.0f s", self.every_s)
            ended = clock.monotonic()
            self._wake.wait(self.every_s)
            # Coalesce a burst of wake-ups: at most one recomputation per min_gap_s, and, when a recomputation
            # is slow (a loaded machine, many open alarms), a pause as long as it took, so the watch never holds
            # the store and the interpreter back to back. A wake-up after a quiet spell recomputes at once: a
            # fixed pause after every wake-up put min_gap_s into every counter update's delay.
            now = clock.monotonic()
            rest = max(self.min_gap_s - (now - started), (ended - started) - (now - ended))
            if rest > 0:
                self._stop.wait(rest)
