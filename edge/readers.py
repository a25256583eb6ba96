"""The serial badge-reader adapter: one pyserial port, read by the edge's reactor.

The port is opened non-blocking and its file descriptor handed to :class:`edge.loop.Loop`: when bytes are
there, the loop reads them, stamps them with the clock before parsing (the badge time drives latency figures
and picks the camera frame), and calls ``on_card`` in the same call, on the loop thread, where the door is
decided. Any input and any callback failure is survived, and a port that vanishes is reopened with backoff on
a wire timer, because a door whose reader died silently is a door nobody can open.

Built without a loop (a test, a tool), the reader runs a loop of its own on a thread of its own.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Protocol

import serial

from doorkeep.clock import Clock, SystemClock
from edge.errors import HardwareError
from edge.framing import CardRead, FrameFault, FrameParser
from edge.reader_port import CardCallback, ReaderDeps, ReaderStats, register

if TYPE_CHECKING:
    from doorkeep.config import ReaderConfig
    from doorkeep.policy import ReaderSignals
    from edge.loop import Loop, Timer


class Parser(Protocol):
    """Bytes from a serial reader -> what they mean; :class:`FrameParser` for EM4100 and ASCII readers."""

    def feed(self, data: bytes) -> list[CardRead | FrameFault]: ...

    def reset(self) -> None: ...

logger = logging.getLogger("doorkeep.edge.reader")

POLL_NO_FD_S = 0.01
"""How often a port with no file descriptor (a ``loop://`` or ``socket://`` URL in a test) is read."""
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
        parser: Parser | None = None,
        loop: Loop | None = None,
    ) -> None:
        """``parser``: what turns the port's bytes into cards, PINs and faults (``feed(data)``, ``reset()``);
        by default the :class:`FrameParser` of ``protocol`` (an unknown one is refused here, not later).
        ``loop``: the edge's reactor; without one the reader runs its own on a thread."""
        self._parser: Parser = parser if parser is not None else FrameParser(protocol)
        self.door = door
        self.url = url
        self.protocol = protocol
        self.baudrate = baudrate
        self._on_card = on_card
        self._on_fault = on_fault
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._stats = ReaderStats()
        self._lock = threading.Lock()  # guards _stats: read from any thread, written on the loop
        self._port: Any = None
        self._fd: int | None = None
        self._timer: Timer | None = None
        self._started = False
        self._delay = RETRY_INITIAL_S
        self._repeats = RepeatFilter(repeat_ignore_s)
        self._guard = self._lock
        self._log = logger
        self._own_loop = loop is None
        self._loop: Loop = loop if loop is not None else _new_loop(f"reader-{door}")

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Open the port now so a miswired device file fails loudly at start-up."""
        if self._started:
            raise RuntimeError(f"reader for door {self.door!r} already started")
        try:
            port = self._open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(f"door {self.door!r}: cannot open reader at {self.url!r}: {exc}") from exc
        self._started = True
        self._on_loop(self._attach, port)
        if self._own_loop:
            self._loop.start()

    def stop(self) -> None:
        """Stop reading and close the port; safe to call any number of times."""
        if not self._started:
            return
        self._started = False
        if self._own_loop:
            self._loop.stop(STOP_DEADLINE_S)
        self._on_loop(self._detach)

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` where the port lives: at once if on (or before) the loop, else on the loop, and wait."""
        done, _ = self._loop.call_and_wait(lambda: fn(*args), STOP_DEADLINE_S)
        if not done:
            logger.warning("door %s: the reader's loop did not answer within %.1f s", self.door, STOP_DEADLINE_S)

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

    # -- on the loop ---------------------------------------------------------

    def _open(self) -> Any:
        port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0)  # reads never block
        if self._pty is None:
            self._pty = _is_pty(self.url)
        return port

    _pty: bool | None = None

    def _attach(self, port: Any) -> None:
        """Start reading ``port``: its fd on the loop, or (a URL with no fd, e.g. ``loop://``) a poll timer."""
        self._port = port
        self._set_online(True)
        self._heard(self._clock.monotonic())
        try:
            self._fd = port.fileno()
        except (AttributeError, OSError, ValueError, serial.SerialException):
            self._fd = None
        if self._fd is not None:
            self._loop.add_reader(self._fd, self._readable)
        else:
            self._timer = self._loop.call_later(POLL_NO_FD_S, self._poll, wire=True)

    def _detach(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        port, self._port = self._port, None
        self._close(port)
        self._set_online(False)

    def _poll(self) -> None:
        self._timer = None
        if self._port is None:
            return
        self._readable()
        if self._port is not None and self._fd is None and self._started:
            self._timer = self._loop.call_later(POLL_NO_FD_S, self._poll, wire=True)

    def _readable(self) -> None:
        port = self._port
        if port is None:
            return
        try:
            data = port.read(max(1, port.in_waiting))
        except Exception as exc:  # noqa: BLE001 - any failure of the port means reopen it
            self._lost(port, exc)
            return
        if not data:
            return
        t_read = self._clock.monotonic()
        self._heard(t_read)
        self._deliver(self._parser.feed(data), t_read)

    def _lost(self, port: Any, exc: BaseException) -> None:
        with self._lock:
            self._stats.io_errors += 1
        logger.warning("door %s: reader %s lost: %s; retrying", self.door, self.url, exc)
        self._detach()
        if self._pty:
            # A pseudo-terminal never comes back: its number goes to the next pty opened on this machine, and
            # reopening the path would read another reader's bytes. Stay offline.
            return
        self._delay = RETRY_INITIAL_S
        self._timer = self._loop.call_later(self._delay, self._reopen, wire=True)

    def _reopen(self) -> None:
        self._timer = None
        if not self._started:
            return
        try:
            port = self._open()
        except Exception as exc:  # noqa: BLE001 - keep retrying whatever the cause
            logger.debug("door %s: reader %s still unavailable: %s", self.door, self.url, exc)
            self._delay = min(self._delay * 2, RETRY_MAX_S)
            self._timer = self._loop.call_later(self._delay, self._reopen, wire=True)
            return
        self._parser.reset()  # a half frame from before the outage would only produce a fault
        self._attach(port)
        logger.info("door %s: reader %s back online", self.door, self.url)

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

    def _close(self, port: Any) -> None:
        if port is None:
            return
        try:
            port.close()
        except Exception:  # noqa: BLE001 - the port is gone either way
            logger.debug("door %s: closing reader %s failed", self.door, self.url, exc_info=True)


def _new_loop(name: str) -> Loop:
    from edge.loop import Loop

    return Loop(name=name)


@register("em4100")
@register("ascii")
def _serial_reader(door: str, config: ReaderConfig, deps: ReaderDeps) -> SerialReader:
    """EM4100 and ASCII readers: one serial port per door, framed by :class:`edge.framing.FrameParser`."""
    return SerialReader(door, config.url, config.protocol, deps.on_card, baudrate=config.baudrate,
                        clock=deps.clock, repeat_ignore_s=config.repeat_ignore_s, loop=deps.loop)


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
