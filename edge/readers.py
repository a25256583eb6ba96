"""The serial badge-reader adapter: one pyserial port, one reader thread.

The thread owns the port. It timestamps each read before parsing (the badge
time drives latency figures and picks the camera frame), survives any input
and any callback failure, and reopens the port with backoff if it vanishes,
because a door whose reader thread died silently is a door nobody can open.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

import serial

from doorkeep.clock import Clock, SystemClock
from edge.errors import HardwareError
from edge.framing import CardRead, FrameFault, FrameParser
from edge.reader_port import CardCallback, ReaderDeps, ReaderStats, register

if TYPE_CHECKING:
    from doorkeep.config import ReaderConfig
    from doorkeep.policy import ReaderSignals

logger = logging.getLogger("doorkeep.edge.reader")

READ_TIMEOUT_S = 0.05
"""Short so that stop() is noticed quickly; frames still arrive at once since reads return on data."""
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0
STOP_DEADLINE_S = 2.0

FaultCallback = Callable[[str, FrameFault], None]


class RepeatFilter:
    """One badge per card per ``window_s``: a card held on a reader is read over and over.

    Not thread-safe by itself: every reader calls it under the lock that guards its stats. Only cards seen
    within the window are remembered, so a busy door does not grow the table forever.
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._accepted_at: dict[str, float] = {}

    def is_repeat(self, number: str, now: float) -> bool:
        previous = self._accepted_at.get(number)
        if previous is not None and now - previous < self.window_s:
            return True
        self._accepted_at = {n: t for n, t in self._accepted_at.items() if now - t < self.window_s}
        self._accepted_at[number] = now
        return False


KEYPAD_MAX = 12
"""Most PIN digits kept; further digits are ignored until ``#`` or ``*``."""
KEYPAD_IDLE_S = 10.0
"""Digits typed this long ago without ``#`` are forgotten, so a half-typed PIN does not prefix the next one."""
_DIGITS = frozenset("0123456789")


class PinEntry:
    """Keypad keys -> PIN reads, one per keypad: what every reader kind with a keypad does with its keys.

    Digits gather until ``#``, which yields ``CardRead("P" + digits, "keypad")`` (the PIN read the agent
    knows from ASCII readers' ``P####`` lines) for :meth:`CardDelivery._deliver` to count and pass on like a
    card; ``*`` clears; digits typed more than ``idle_s`` before the next key are forgotten; any other key is
    ignored. Pure and clock-free: time comes in with every key. Not thread-safe: one reader's thread feeds it.
    """

    def __init__(self, max_digits: int = KEYPAD_MAX, idle_s: float = KEYPAD_IDLE_S) -> None:
        self.max_digits = max_digits
        self.idle_s = idle_s
        self._digits = ""
        self._last_key_at: float | None = None

    def key(self, key: str, now: float) -> CardRead | None:
        """One key pressed at ``now``; the PIN read when it was ``#`` after at least one digit."""
        if self._last_key_at is not None and now - self._last_key_at > self.idle_s:
            self._digits = ""
        self._last_key_at = now
        if key == "*":
            self._digits = ""
        elif key == "#":
            pin, self._digits = self._digits, ""
            if pin:
                return CardRead("P" + pin, "keypad")
        elif key in _DIGITS and len(self._digits) < self.max_digits:
            self._digits += key
        return None

    def keys(self, keys: str, now: float) -> list[CardRead | FrameFault]:
        """Several keys at once (an OSDP KEYPAD reply carries a burst); the PIN reads they gave."""
        out: list[CardRead | FrameFault] = []
        for k in keys:
            pin = self.key(k, now)
            if pin is not None:
                out.append(pin)
        return out

    def reset(self) -> None:
        """Forget typed digits (a reader restarted, or stopped)."""
        self._digits, self._last_key_at = "", None


class CardDelivery:
    """What every reader kind does with what it decoded: count it, drop a held card's repeats, pass it on.

    Serial and Wiegand readers are one; each reader on an OSDP bus has one (``edge.osdp.cp._Delivery``), so a
    card or a PIN is counted, filtered and logged alike whichever wire it came over.

    Subclasses set ``door``, ``_stats``, ``_repeats``, ``_on_card``, ``_on_fault``, ``_log`` and ``_guard``
    (the lock or condition that guards their stats), and say how a fault reads in the log.
    """

    door: str
    _stats: ReaderStats
    _repeats: RepeatFilter
    _on_card: CardCallback
    _on_fault: FaultCallback | None
    _log: logging.Logger
    _guard: Any

    def _fault_text(self, fault: FrameFault) -> str:
        return f"reader fault {fault.kind}: {fault.detail} (raw {masked(fault.raw)})"

    def _deliver(self, items: list[CardRead | FrameFault], t_read: float) -> None:
        for item in items:
            if isinstance(item, CardRead):
                self._card(item, t_read)
            else:
                self._fault(item)

    def _card(self, card: CardRead, t_read: float) -> None:
        with self._guard:
            self._stats.frames += 1
            self._stats.last_frame_at = t_read
            repeat = self._repeats.is_repeat(card.number, t_read)
            if repeat:
                self._stats.repeats += 1
        if repeat:
            self._log.debug("door %s: card …%s held, repeat ignored", self.door, card.number[-4:])
            return
        try:
            self._on_card(self.door, card, t_read)
        except Exception:
            self._log.exception("door %s: on_card failed for card …%s", self.door, card.number[-4:])

    def _fault(self, fault: FrameFault) -> None:
        with self._guard:
            self._stats.faults[fault.kind] = self._stats.faults.get(fault.kind, 0) + 1
        self._log.warning("door %s: %s", self.door, self._fault_text(fault))
        if self._on_fault is None:
            return
        try:
            self._on_fault(self.door, fault)
        except Exception:
            self._log.exception("door %s: on_fault failed", self.door)


class SerialReader(CardDelivery):
    """Reads one door's badge reader and calls ``on_card`` for each new card."""

    ready_at_start = True
    """A port that opened is a reader that works: a loss right after start is a loss."""

    def __init__(
        self,
        door: str,
        url: str,
        protocol: str,
        on_card: CardCallback,
        *,
        baudrate: int = 9600,
        clock: Clock | None = None,
        repeat_ignore_s: float = 1.0,
        on_fault: FaultCallback | None = None,
    ) -> None:
        FrameParser(protocol)  # reject an unknown protocol now, not in the thread
        self.door = door
        self.url = url
        self.protocol = protocol
        self.baudrate = baudrate
        self._on_card = on_card
        self._on_fault = on_fault
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._stats = ReaderStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: Any = None
        self._repeats = RepeatFilter(repeat_ignore_s)
        self._guard = self._lock
        self._log = logger

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Open the port now so a miswired device file fails loudly at start-up."""
        if self._thread is not None:
            raise RuntimeError(f"reader for door {self.door!r} already started")
        try:
            port = self._open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(f"door {self.door!r}: cannot open reader at {self.url!r}: {exc}") from exc
        self._port = port
        self._set_online(True)
        self._heard(self._clock.monotonic())
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(port,), name=f"reader-{self.door}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, which closes the port; safe to call any number of times."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        port = self._port
        cancel = getattr(port, "cancel_read", None)
        if cancel is not None:
            try:
                cancel()
            except Exception:  # noqa: BLE001 - best effort, the read timeout ends the read anyway
                pass
        thread.join(STOP_DEADLINE_S)
        if thread.is_alive():
            logger.warning("door %s: reader thread did not stop within %.1f s", self.door, STOP_DEADLINE_S)
        self._thread = None

    @property
    def stats(self) -> ReaderStats:
        with self._lock:
            return replace(self._stats, faults=dict(self._stats.faults))

    @property
    def health_reason(self) -> str | None:
        """None: a serial reader is judged by its port (``online``, ``io_errors``) and its silence alone."""
        return None

    def feedback(self, granted: bool) -> None:
        """No LED or buzzer to drive over a one-way serial line."""

    def apply_signals(self, signals: ReaderSignals) -> None:
        """No security signals on a serial reader."""

    # -- reader thread -------------------------------------------------------

    def _open(self) -> Any:
        port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=READ_TIMEOUT_S)
        if self._pty is None:
            self._pty = _is_pty(self.url)
        return port

    _pty: bool | None = None

    def _set_online(self, online: bool) -> None:
        with self._lock:
            self._stats.online = online

    def _heard(self, now: float) -> None:
        with self._lock:
            self._stats.last_data_at = now

    def silent_for(self, now: float) -> float:
        """Seconds since the reader last sent anything (0 before it was opened).

        A reader that sends keep-alives (a blank line every few seconds on an ASCII reader) is judged by this:
        a cut data line or a dead reader is otherwise indistinguishable from a quiet door.
        """
        with self._lock:
            last = self._stats.last_data_at
        return 0.0 if last is None else max(0.0, now - last)

    def _run(self, port: Any) -> None:
        parser = FrameParser(self.protocol)
        delay = RETRY_INITIAL_S
        try:
            while not self._stop.is_set():
                if port is None:
                    if self._pty:
                        # A pseudo-terminal never comes back: its number goes to the next pty opened on this
                        # machine, and reopening the path would read another reader's bytes. Stay offline.
                        self._stop.wait()
                        break
                    port = self._reopen()
                    if port is None:
                        self._stop.wait(delay)
                        delay = min(delay * 2, RETRY_MAX_S)
                        continue
                    delay = RETRY_INITIAL_S
                    parser.reset()  # a half frame from before the outage would only produce a fault
                try:
                    data = port.read(max(1, port.in_waiting))
                except Exception as exc:  # noqa: BLE001 - any failure of the port means reopen it
                    if self._stop.is_set():
                        break
                    self._lost(port, exc)
                    port = None
                    continue
                if not data:
                    continue
                t_read = self._clock.monotonic()
                self._heard(t_read)
                self._deliver(parser.feed(data), t_read)
        finally:
            self._close(port)
            self._set_online(False)

    def _reopen(self) -> Any:
        try:
            port = self._open()
        except Exception as exc:  # noqa: BLE001 - keep retrying whatever the cause
            logger.debug("door %s: reader %s still unavailable: %s", self.door, self.url, exc)
            return None
        self._port = port
        self._set_online(True)
        self._heard(self._clock.monotonic())
        logger.info("door %s: reader %s back online", self.door, self.url)
        return port

    def _lost(self, port: Any, exc: BaseException) -> None:
        with self._lock:
            self._stats.io_errors += 1
            self._stats.online = False
        logger.warning("door %s: reader %s lost: %s; retrying", self.door, self.url, exc)
        self._close(port)

    def _close(self, port: Any) -> None:
        if port is None:
            return
        try:
            port.close()
        except Exception:  # noqa: BLE001 - the port is gone either way
            logger.debug("door %s: closing reader %s failed", self.door, self.url, exc_info=True)


@register("em4100")
@register("ascii")
def _serial_reader(door: str, config: ReaderConfig, deps: ReaderDeps) -> SerialReader:
    """EM4100 and ASCII readers: one serial port per door, framed by :class:`edge.framing.FrameParser`."""
    return SerialReader(door, config.url, config.protocol, deps.on_card, baudrate=config.baudrate,
                        clock=deps.clock, repeat_ignore_s=config.repeat_ignore_s)


def masked(raw: bytes) -> str:
    """A frame fit for a log that ends up on the SD card: its shape without its card number.

    Letters and digits become ``#``; framing and control bytes stay (as ``\\xNN``), so a wiring or baud
    fault can still be told from line noise. Logs keep last four digits at most (docs/privacy.md).
    """
    out = "".join("#" if chr(b).isalnum() and b < 128 else (chr(b) if 32 <= b < 127 else f"\\x{b:02x}")
                  for b in raw[:64])
    return f"{out}{'…' if len(raw) > 64 else ''} ({len(raw)} bytes)"


#: Device majors of Unix98 pseudo-terminal slaves (/dev/pts/N) on Linux.
_PTY_MAJORS = range(136, 144)


def _is_pty(url: str) -> bool:
    """Whether ``url`` names a pseudo-terminal slave (a simulator), which must not be reopened by path."""
    try:
        return os.major(os.stat(url).st_rdev) in _PTY_MAJORS
    except (OSError, ValueError):
        return False  # a URL such as socket:// or loop://, or a path that is gone
