"""The edge's reactor: one thread that owns every door, reader, relay and the MQTT socket.

A badge travels from the reader's file descriptor to the relay on this thread alone: the serial bytes are
read when ``selectors`` says the port is readable, the card is decided (or the request written to paho's
socket) in the same call, and the decision that comes back on the socket sets the relay in the call that
read it. No queue, no other thread's wake-up and no lock sits on that path (docs/concurrency.md).

What the loop offers its owners, all of it to be called *on the loop thread* unless it says otherwise:

* file descriptors: :meth:`Loop.add_reader` / :meth:`Loop.add_writer` call back when the fd is ready;
* timers: :meth:`Loop.call_at` / :meth:`Loop.call_later` on one of two clocks. Door logic (unlock, held
  open, decision timeouts, schedules) runs on the *injected* clock, so the clock-driven tests jump it and
  :meth:`Loop.wake` makes the loop look again; wire timing (OSDP reply windows, MQTT keepalive, the outbox
  pump's rate, Wiegand frame ends) runs on the real monotonic clock (``wire=True``), because a reader's
  reply window is physical whatever a scenario does to the time of day;
* :meth:`Loop.call_soon_threadsafe` (any thread): how gpiozero's pin callbacks, the jobs worker, the camera
  and paho's connector hand work to the loop. It appends to a deque and writes the loop's eventfd, the one
  wake-up a hand-off costs;
* :meth:`Loop.add_flush` hooks run after every turn (paho writes what this turn queued on its socket).

A callback that raises is counted (:attr:`Loop.errors`) and logged, and the loop goes on: a bad frame or a
bug in one handler must not stop the other doors.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from doorkeep.clock import Clock, SystemClock
from edge.errors import EdgeError

log = logging.getLogger("doorkeep.edge.loop")

MAX_WAIT_S = 0.5
"""The longest the loop sleeps without an fd or timer: a fake clock that jumped is seen within this even
without :meth:`Loop.wake`."""

Callback = Callable[..., Any]


class LoopError(EdgeError):
    """The loop was used from the wrong thread or after it stopped."""


class Timer:
    """A scheduled call; :meth:`cancel` before it runs and it never does."""

    __slots__ = ("when", "fn", "args", "cancelled", "wire")

    def __init__(self, when: float, fn: Callback, args: tuple[Any, ...], wire: bool) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False
        self.wire = wire

    def cancel(self) -> None:
        self.cancelled = True


class _Waker:
    """An eventfd (a pipe where there is none) that makes ``select`` return from another thread."""

    def __init__(self) -> None:
        self._eventfd = hasattr(os, "eventfd")
        if self._eventfd:
            self.rfd = self.wfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:  # pragma: no cover - Linux has eventfd; kept for other Unixes
            self.rfd, self.wfd = os.pipe()
            os.set_blocking(self.rfd, False)
            os.set_blocking(self.wfd, False)

    def wake(self) -> None:
        try:
            if self._eventfd:
                os.eventfd_write(self.wfd, 1)
            else:  # pragma: no cover
                os.write(self.wfd, b"\0")
        except (BlockingIOError, OSError):
            pass  # already pending (or closing): the loop wakes either way

    def drain(self) -> None:
        try:
            if self._eventfd:
                os.eventfd_read(self.rfd)
            else:  # pragma: no cover
                while os.read(self.rfd, 4096):
                    pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in {self.rfd, self.wfd}:
            try:
                os.close(fd)
            except OSError:
                pass


class Loop:
    """One ``selectors`` reactor with two deadline heaps (injected clock and wire clock)."""

    def __init__(self, clock: Clock | None = None, *, name: str = "doorkeep-edge",
                 max_wait_s: float = MAX_WAIT_S) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.name = name
        self.max_wait_s = max_wait_s
        self.errors = 0
        self.turns = 0
        self._selector = selectors.DefaultSelector()
        self._waker = _Waker()
        self._selector.register(self._waker.rfd, selectors.EVENT_READ, (self._waker.drain, None))
        self._handlers: dict[int, list[Callback | None]] = {}  # fd -> [on_readable, on_writable]
        self._timers: list[tuple[float, int, Timer]] = []  # on the injected clock
        self._wire_timers: list[tuple[float, int, Timer]] = []  # on time.monotonic
        self._seq = itertools.count()
        self._soon: deque[tuple[Callback, tuple[Any, ...]]] = deque()
        self._flush: list[Callback] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._owner: int | None = None  # ident of the thread running the loop
        self._started = threading.Event()

    # ------------------------------------------------------------ threads

    def in_loop(self) -> bool:
        """True on the loop's thread (or before it runs: the owner sets things up on its own thread)."""
        return self._owner is None or self._owner == threading.get_ident()

    def start(self) -> None:
        """Run the loop on its own thread (the agent's; ``doorkeep edge`` keeps the main thread for signals)."""
        if self._thread is not None:
            raise LoopError(f"loop {self.name} already started")
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        while self._owner is None and self._thread.is_alive() and not self._stopping:
            self._started.wait(0.1)  # from here on only the loop's thread touches its heaps and fds

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the loop to return after its current turn (any thread); True once its thread has ended."""
        self._stopping = True
        self._waker.wake()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def close(self) -> None:
        self._selector.close()
        self._waker.close()

    @property
    def running(self) -> bool:
        return self._owner is not None and not self._stopping

    # -------------------------------------------------------- scheduling

    def call_soon_threadsafe(self, fn: Callback, *args: Any) -> None:
        """Run ``fn(*args)`` on the loop at its next turn; from any thread (deque append is atomic)."""
        self._soon.append((fn, args))
        if self._owner != threading.get_ident():
            self._waker.wake()

    call_soon = call_soon_threadsafe

    def wake(self) -> None:
        """Make the loop look at its timers now (any thread): after a test's clock jumped."""
        self._waker.wake()

    def call_at(self, when: float, fn: Callback, *args: Any, wire: bool = False) -> Timer:
        """Run ``fn(*args)`` once ``when`` is reached on the injected clock (``wire``: on the real one)."""
        timer = Timer(when, fn, args, wire)
        if self.in_loop():
            heapq.heappush(self._wire_timers if wire else self._timers, (when, next(self._seq), timer))
        else:  # the heaps are the loop's alone: push it from there
            self.call_soon_threadsafe(self._push, timer)
        return timer

    def _push(self, timer: Timer) -> None:
        heapq.heappush(self._wire_timers if timer.wire else self._timers, (timer.when, next(self._seq), timer))

    def call_later(self, delay: float, fn: Callback, *args: Any, wire: bool = False) -> Timer:
        now = time.monotonic() if wire else self.clock.monotonic()
        return self.call_at(now + max(0.0, delay), fn, *args, wire=wire)

    def add_flush(self, fn: Callback) -> None:
        """``fn()`` after every turn, once the turn's callbacks ran (paho: write what they published)."""
        self._flush.append(fn)

    # -------------------------------------------------------------- fds

    def add_reader(self, fd: int, fn: Callback) -> None:
        self._set(fd, 0, fn)

    def remove_reader(self, fd: int) -> None:
        self._set(fd, 0, None)

    def add_writer(self, fd: int, fn: Callback) -> None:
        self._set(fd, 1, fn)

    def remove_writer(self, fd: int) -> None:
        self._set(fd, 1, None)

    def _set(self, fd: int, which: int, fn: Callback | None) -> None:
        if self._handlers.get(fd, (None, None))[which] == fn:  # bound methods compare equal, not identical
            return  # nothing changes: no epoll_ctl (paho's flush hook asks for the same state every turn)
        handlers = self._handlers.get(fd, [None, None])
        handlers[which] = fn
        mask = (selectors.EVENT_READ if handlers[0] else 0) | (selectors.EVENT_WRITE if handlers[1] else 0)
        registered = fd in self._handlers
        try:
            if not mask:
                self._handlers.pop(fd, None)
                if registered:
                    self._selector.unregister(fd)
                return
            self._handlers[fd] = handlers
            if registered:
                self._selector.modify(fd, mask, handlers)
            else:
                self._selector.register(fd, mask, handlers)
        except (KeyError, ValueError, OSError) as exc:
            # A closed fd (a port that vanished): forget it; its owner sees the failure on its own read.
            self._handlers.pop(fd, None)
            log.debug("loop %s: fd %s could not be (un)registered: %s", self.name, fd, exc)

    # -------------------------------------------------------------- run

    def run(self) -> None:
        """Turn until :meth:`stop`; the thread that calls this owns the loop."""
        self._owner = threading.get_ident()
        self._started.set()
        try:
            while not self._stopping:
                self.run_once()
        finally:
            self._owner = None

    def run_once(self) -> None:
        """One turn: wait for an fd, a timer or a hand-off; run what is ready; flush."""
        self.turns += 1
        timeout = 0.0 if self._soon else self._timeout()
        try:
            ready = self._selector.select(timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            ready = []
        for key, mask in ready:
            handlers = key.data
            if handlers is None:
                continue
            if mask & selectors.EVENT_READ and handlers[0] is not None:
                self._run(handlers[0], ())
            if mask & selectors.EVENT_WRITE and handlers[1] is not None:
                self._run(handlers[1], ())
        for _ in range(len(self._soon)):  # what was handed over before this point; later ones next turn
            fn, args = self._soon.popleft()
            self._run(fn, args)
        self._run_timers(self._timers, self.clock.monotonic)
        self._run_timers(self._wire_timers, time.monotonic)
        for fn in self._flush:
            self._run(fn, ())

    def _timeout(self) -> float:
        timeout = self.max_wait_s
        for heap, now in ((self._timers, self.clock.monotonic), (self._wire_timers, time.monotonic)):
            while heap and heap[0][2].cancelled:
                heapq.heappop(heap)
            if heap:
                timeout = min(timeout, max(0.0, heap[0][0] - now()))
        return timeout

    def _run_timers(self, heap: list[tuple[float, int, Timer]], now_fn: Callable[[], float]) -> None:
        now = now_fn()
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if not timer.cancelled:
                timer.cancelled = True  # ran: a late cancel() is harmless
                self._run(timer.fn, timer.args)

    def _run(self, fn: Callback, args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception:
            self.errors += 1
            log.exception("loop %s: %s failed", self.name, getattr(fn, "__qualname__", fn))

    # ---------------------------------------------------------- helpers

    def call_and_wait(self, fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
        """Run ``fn()`` on the loop and wait for it (any thread but the loop's): ``(done, result)``."""
        if self._owner is None or self._owner == threading.get_ident():
            return True, fn()
        done = threading.Event()
        box: list[Any] = [None]

        def run() -> None:
            try:
                box[0] = fn()
            finally:
                done.set()

        self.call_soon_threadsafe(run)
        return done.wait(timeout), box[0]
