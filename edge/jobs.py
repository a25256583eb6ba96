"""The edge's worker for work that may block, so the reactor (edge/loop.py) never waits on it.

One thread, typed messages, handled in the order they were submitted:

* :class:`StoreEvent` — number an event, write it to the outbox and fsync (``Outbox.put_event``);
* :class:`SaveNonces` — persist the accepted command nonces (fsync) before the command acts;
* :class:`VerifyPolicy` — verify a signed policy and cache it (Ed25519 over megabytes, then an fsync'd file);
  only the newest of a burst is verified;
* :class:`Barrier` — runs its callback once everything submitted before it is done (``EdgeAgent.sync``);
* :class:`TakeSnapshot` — pick the camera frame nearest the badge, mask, encode, seal, store. It may not be
  ready yet (the frame after the badge is still to come): its handler then returns when to try again, and the
  job waits in a deferred heap while events keep being written;
* the outbox :class:`~edge.outbox.Pump`: peeks rows and hands them to paho, applies acknowledgements (deletes).
  Stepped here because the outbox's one SQLite connection is this thread's: the loop never touches the disk.

Handlers are the owner's (the agent's) functions, keyed by message type, and report back to the loop with
``Loop.call_soon_threadsafe``. A handler that raises is counted and logged; the worker goes on.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from doorkeep.contract import EventMsg

log = logging.getLogger("doorkeep.edge.jobs")

#: A pump that failed (a disk or client error) is stepped again this much later: the rows stay.
PUMP_RETRY_S = 1.0
STOP_DEADLINE_S = 5.0


@dataclass(frozen=True)
class StoreEvent:
    topic: str
    event: EventMsg


@dataclass(frozen=True)
class SaveNonces:
    data: bytes
    then: Callable[[bool], None]
    """Called on the worker with whether the nonces are on disk; it hands the rest back to the loop."""


@dataclass(frozen=True)
class VerifyPolicy:
    payload: bytes


@dataclass(frozen=True)
class Barrier:
    then: Callable[[], None]


@dataclass(frozen=True)
class TakeSnapshot:
    camera: Any
    at: float
    door: str
    event_id: str
    give_up_at: float = 0.0
    """Real monotonic time after which the nearest frame buffered is taken without waiting for a nearer one."""


Job = StoreEvent | SaveNonces | VerifyPolicy | Barrier | TakeSnapshot
Handler = Callable[[Any], float | None]
"""Returns None when done, or seconds after which a deferrable job (a snapshot) is to be tried again."""


@dataclass
class JobStats:
    done: int = 0
    errors: int = 0
    deferred: int = 0
    pump_errors: int = 0
    policies_superseded: int = 0
    busy_s: float = 0.0
    by_type: dict[str, int] = field(default_factory=dict)


class Jobs:
    """One worker thread; :meth:`submit` from any thread."""

    def __init__(self, handlers: Mapping[type, Handler], *, name: str = "doorkeep-jobs") -> None:
        self._handlers = dict(handlers)
        self.name = name
        self.stats = JobStats()
        self._cond = threading.Condition()
        self._queue: deque[Job] = deque()
        self._deferred: list[tuple[float, int, Job]] = []  # (real monotonic time, tiebreak, job)
        self._seq = itertools.count()
        self._pump: Any = None
        self._pump_due: float | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    def attach_pump(self, pump: Any) -> None:
        """Step ``pump`` (an :class:`edge.outbox.Pump`) on this thread; its ``wake`` must call :meth:`pump_wake`."""
        self._pump = pump

    # ------------------------------------------------------------ any thread

    def submit(self, job: Job) -> None:
        with self._cond:
            if isinstance(job, VerifyPolicy):
                # Only the newest of a burst matters: a queued older one is dropped unverified.
                before = len(self._queue)
                self._queue = deque(j for j in self._queue if not isinstance(j, VerifyPolicy))
                self.stats.policies_superseded += before - len(self._queue)
            self._queue.append(job)
            self._cond.notify()

    def pump_wake(self, delay: float = 0.0) -> None:
        """Step the pump ``delay`` seconds from now at the latest (a put, an ack, a connection change)."""
        with self._cond:
            due = time.monotonic() + delay
            if self._pump_due is None or due < self._pump_due:
                self._pump_due = due
                self._cond.notify()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called: a deferrable job should finish with what it has."""
        return self._stopping

    @property
    def backlog(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._deferred)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = STOP_DEADLINE_S) -> bool:
        """Finish what is queued (events reach the disk), try deferred snapshots once more, then end."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.error("%s: still busy %.1f s after stop; %d job(s) left", self.name, timeout, self.backlog)
            return False
        self._thread = None
        return True

    # ------------------------------------------------------------ the thread

    def _next(self) -> Job | str | None:
        """The next thing to do: a job, "pump", or None to end."""
        with self._cond:
            while True:
                if self._queue:
                    return self._queue.popleft()
                now = time.monotonic()
                if self._pump is not None and self._pump_due is not None and self._pump_due <= now:
                    self._pump_due = None
                    return "pump"
                if self._deferred and (self._deferred[0][0] <= now or self._stopping):
                    return heapq.heappop(self._deferred)[2]
                if self._stopping:
                    return None
                waits = [t for t in (self._pump_due if self._pump is not None else None,
                                     self._deferred[0][0] if self._deferred else None) if t is not None]
                self._cond.wait(max(0.0, min(waits) - now) if waits else None)

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            started = time.monotonic()
            if item == "pump":
                self._step_pump()
            else:
                assert not isinstance(item, str)
                self._handle(item)
            self.stats.busy_s += time.monotonic() - started

    def _handle(self, job: Job) -> None:
        name = type(job).__name__
        handler = self._handlers.get(type(job))
        try:
            if handler is None:
                raise TypeError(f"no handler for {name}")
            again = handler(job)
        except Exception:
            self.stats.errors += 1
            log.exception("%s: %s failed", self.name, name)
            return
        if isinstance(again, (int, float)) and not isinstance(again, bool) and not self._stopping:
            self.stats.deferred += 1
            with self._cond:
                heapq.heappush(self._deferred, (time.monotonic() + max(0.0, again), next(self._seq), job))
            return
        self.stats.done += 1
        self.stats.by_type[name] = self.stats.by_type.get(name, 0) + 1

    def _step_pump(self) -> None:
        try:
            delay = self._pump.step()
        except Exception:
            # A disk or client error must not kill delivery for good: the rows stay, try again.
            self.stats.pump_errors += 1
            log.exception("outbox pump failed; retrying in %.0f s", PUMP_RETRY_S)
            delay = PUMP_RETRY_S
        if delay is not None:
            self.pump_wake(delay)
