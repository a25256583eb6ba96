"""The OSDP control panel (CP): one RS-485 bus, every reader on it polled round-robin by the edge's loop.

Per reader (by address) the CP walks ``ID -> CAP -> Secure Channel handshake -> online polling``. Each exchange
is one command and at most one reply within ``REPLY_TIMEOUT_S`` (the standard's 200 ms, counted from the end of
the command on the wire), retried with the same sequence number so the reader repeats its reply rather than
acting twice. A reader with no valid reply for ``offline_after_s`` is offline and is brought back by itself
(sequence 0, ID, CAP, handshake again).

Concurrency (docs/concurrency.md): the bus owns no thread. It runs on an :class:`edge.loop.Loop` - the edge
agent's, passed as ``loop``, or, for callers without one (``doorkeep osdp install-key``, a test building a bus
alone), a loop of its own on a thread of its own. The port is a non-blocking file descriptor on that loop; a
reader's *turn* (one or several exchanges: the handshake is four) is a generator that yields each command's
wire bytes and is sent back the reply, or None when the reply window (a wire timer, physical time whatever a
scenario does to the clock) closed without one. So the checks below are written once, in order, as if the
exchange blocked, and nothing blocks. ``on_card``, ``on_tamper`` and ``on_security`` are called on the loop's
thread. Pacing (edge/osdp/timing.py, docs/readers.md "Timing"): the next command goes out as soon as the
previous exchange ended and the line's turnaround passed, to the next reader that is due; an idle reader is
due one exchange budget per reader on the bus after its previous poll, ``poll_ms`` being the cap.

Security posture (docs/readers.md): Secure Channel is enforced unless the device file explicitly says
``secure_channel = false``. A reader that only knows the default key SCBK-D is never silently re-keyed: it stays
offline with the reason ``needs_key`` until an operator runs ``doorkeep osdp install-key``. A MAC that does not
verify, a reader answering in clear inside a session, or a reader that stops offering Secure Channel after it
had one is reported through ``on_security`` (the agent makes it a ``reader_security`` alarm) and the session is
dropped; nothing read in such a packet is ever passed on as a card.

Security signals (docs/readers.md "Security signals"): besides those, a Secure Channel handshake that fails
again and again (``handshake_failed``: a wrong client cryptogram or R-MAC-I, a refused or malformed challenge)
and NAKs in clear from a reader that must speak Secure Channel (``clear_nak``: what a storm of injected NAKs
looks like) are reported too. Every cause goes through a :class:`SignalLimiter` per reader: reported once it
reaches its threshold within ``signal_window_s``, then at most once per window with the counts, never once per
packet, so an attacker on the wire cannot flood the alarm list.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

import serial

from doorkeep.card_formats import Choice, WiegandLayout, resolve
from doorkeep.clock import Clock, SystemClock
from edge.errors import HardwareError
from edge.framing import CardRead, FrameFault
from edge.loop import Loop, Timer
from edge.osdp import packet as pk
from edge.osdp import timing
from edge.osdp.cards import ParityError, decode_card
from edge.osdp.secure import (
    KEY_TYPE_SCBK,
    KEY_TYPE_SCBK_D,
    SCBK_D,
    SecureChannelError,
    SecureSession,
    client_cryptogram,
    cryptograms_match,
    derive_session_keys,
    initial_rmac,
    random_bytes,
    server_cryptogram,
)
from edge.reader_port import ReaderDeps, ReaderStats, SecurityCallback, TamperCallback, register
from edge.readers import CardCallback, CardDelivery, PinEntry, RepeatFilter, _is_pty

if TYPE_CHECKING:
    from doorkeep.config import ReaderConfig
    from doorkeep.policy import ReaderSignals

log = logging.getLogger("doorkeep.edge.osdp")

REPLY_TIMEOUT_S = 0.2
RETRIES = 2
OFFLINE_AFTER_S = 8.0
RETRY_OFFLINE_S = 1.0
RETRY_KEY_PROBLEM_S = 5.0
STOP_DEADLINE_S = 2.0
REOPEN_FIRST_S = 0.1
REOPEN_MAX_S = 5.0
NO_FD_POLL_S = 0.001
"""A port without a file descriptor (a ``serial_for_url`` handler such as ``loop://``) cannot be watched by the
loop: while a reply is awaited it is read on a wire timer this often instead."""
OUTQ_MAX = 16

# Health reasons a reader can be offline with (docs/readers.md)
REASON_NO_REPLY = "no_reply"
REASON_NEEDS_KEY = "needs_key"
REASON_WRONG_KEY = "wrong_key"
REASON_SC_UNSUPPORTED = "sc_unsupported"
REASON_SECURITY = "security_fault"

# Security signal causes (the ``detail.cause`` of a ``reader_security`` event; docs/readers.md)
CAUSE_MAC_FAILURE = "mac_failure"
CAUSE_DOWNGRADE = "downgrade"
CAUSE_HANDSHAKE_FAILED = "handshake_failed"
CAUSE_CLEAR_NAK = "clear_nak"
#: Occurrences within the window before a cause is reported. A MAC failure or a downgrade is an attack on its
#: own; one failed handshake or one clear NAK is a reader rebooting, a few in a minute are not.
SIGNAL_THRESHOLDS: dict[str, int] = {CAUSE_MAC_FAILURE: 1, CAUSE_DOWNGRADE: 1, CAUSE_HANDSHAKE_FAILED: 3,
                                     CAUSE_CLEAR_NAK: 4}
#: One report per cause per reader per window at most; the next one carries the count of what came between.
SIGNAL_WINDOW_S = 60.0

T = TypeVar("T")
Exchange = Generator[bytes, "pk.Packet | None", T]
"""A reader's turn, or one exchange of it: yields a command's wire bytes, is sent the reply (None: none in time)."""


@dataclass(frozen=True)
class OsdpReaderSpec:
    """One reader on the bus: its door, address and key (``scbk`` None = no key installed yet)."""

    door: str
    address: int
    scbk: bytes | None = None
    secure: bool = True
    repeat_ignore_s: float = 1.0
    wiegand_formats: Choice = ()
    """The reader's ``wiegand_formats``: the layout each card length is read with (doorkeep/card_formats.py)."""


class SignalLimiter:
    """Turns a stream of security faults of one cause at one reader into rare, counted reports (pure).

    :meth:`note` records one occurrence at ``now`` (the bus's wire clock) and returns the counts to report, or
    None: nothing until ``threshold`` occurrences fall within ``window_s``, then one report, then none until
    ``window_s`` after it. ``count`` in a report is every occurrence since the previous report (so nothing
    suppressed goes unaccounted), ``in_window`` those of the last ``window_s``, ``total`` since the start.
    """

    def __init__(self, threshold: int, window_s: float) -> None:
        if threshold < 1 or window_s <= 0:
            raise ValueError("threshold must be at least 1 and window_s positive")
        self.threshold = threshold
        self.window_s = window_s
        self.total = 0
        self._times: collections.deque[float] = collections.deque()
        self._since_report = 0
        self._reported_at: float | None = None

    def note(self, now: float) -> dict[str, Any] | None:
        self.total += 1
        self._since_report += 1
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) < self.threshold:
            return None
        if self._reported_at is not None and now - self._reported_at < self.window_s:
            return None
        counts = {"count": self._since_report, "in_window": len(self._times), "window_s": self.window_s,
                  "total": self.total}
        self._reported_at = now
        self._since_report = 0
        return counts


class _Delivery(CardDelivery):
    """One reader's cards and PINs, delivered as every reader kind delivers them (:class:`CardDelivery`):
    counted in its stats under the bus's lock, a held card's repeats dropped, a failing ``on_card`` logged."""

    def __init__(self, spec: OsdpReaderSpec, stats: ReaderStats, on_card: CardCallback, guard: Any,
                 url: str) -> None:
        self.door = spec.door
        self._stats = stats
        self._repeats = RepeatFilter(spec.repeat_ignore_s)
        self._on_card = on_card
        self._on_fault = None
        self._log = log
        self._guard = guard
        self._where = f"OSDP {url} address {spec.address}"

    def deliver(self, items: list[CardRead | FrameFault], t_read: float) -> None:
        """Cards and PIN reads to ``on_card``, faults (``parity``, ``malformed``) to the stats and the log."""
        self._deliver(items, t_read)

    def _fault_text(self, fault: FrameFault) -> str:
        return f"{self._where}: {fault.kind}: {fault.detail}"


@dataclass
class _Reader:
    spec: OsdpReaderSpec
    delivery: _Delivery
    """Counts and passes on its cards and PINs; shares :attr:`stats` (the loop feeds it)."""
    phase: str = "id"
    seq: int = 0
    session: SecureSession | None = None
    rnd_a: bytes = b""
    keys: Any = None
    key_type: int = KEY_TYPE_SCBK
    last_ok: float | None = None
    next_try: float = 0.0
    had_sc: bool = False
    caps: dict[int, tuple[int, int]] = field(default_factory=dict)
    outq: collections.deque[tuple[int, bytes]] = field(default_factory=collections.deque)
    pins: PinEntry = field(default_factory=PinEntry)
    """Keypad keys -> PIN reads (loop only)."""
    stats: ReaderStats = field(default_factory=lambda: ReaderStats(secure=False))
    install_key: bytes | None = None
    installed: threading.Event = field(default_factory=threading.Event)
    last_tamper: bool | None = None
    missed: bool = False
    """The last exchange timed out: the reader may have acted on it and sent a reply we never heard."""
    signals: dict[str, SignalLimiter] = field(default_factory=dict)
    """Per security cause: the limiter that decides when it is reported (loop only)."""
    interval_s: float = 0.0
    """This reader's poll interval: the bus's, longer for a while after the reader answered BUSY."""
    polled_at: float = -math.inf
    """Wire time its last turn began: an idle online reader is due again ``interval_s`` after it."""
    layouts: dict[int, WiegandLayout] = field(default_factory=dict)
    """How its RAW card bits split, per length (from the spec's ``wiegand_formats``)."""

    def __post_init__(self) -> None:
        if self.delivery._stats is not self.stats:
            raise ValueError("a reader's delivery must count into the reader's own stats")
        self.layouts = resolve(self.spec.wiegand_formats)


class OsdpBus:
    """One serial port (any ``serial_for_url`` URL) and every reader on it, polled round-robin on a loop.

    Every attribute but the readers' stats belongs to the loop's thread. :meth:`stats` copies them under a
    lock from any thread; :meth:`send`, :meth:`feedback`, :meth:`configure_signals` and :meth:`begin_install`
    may be called from any thread and hand their change to the loop.
    """

    def __init__(self, url: str, readers: list[OsdpReaderSpec], on_card: CardCallback, *,
                 baudrate: int = 9600, poll_ms: int = 100, clock: Clock | None = None,
                 on_tamper: TamperCallback | None = None, on_security: SecurityCallback | None = None,
                 offline_after_s: float = OFFLINE_AFTER_S, reply_timeout_s: float = REPLY_TIMEOUT_S,
                 port: Any = None, retry_key_problem_s: float = RETRY_KEY_PROBLEM_S,
                 signal_window_s: float = SIGNAL_WINDOW_S,
                 signal_thresholds: dict[str, int] | None = None, loop: Loop | None = None) -> None:
        """``signal_window_s`` and ``signal_thresholds`` (cause -> occurrences, merged over
        :data:`SIGNAL_THRESHOLDS`) shape the ``reader_security`` reports; ``retry_key_problem_s`` is the pause
        before a reader refused for its key or capabilities is tried again. ``poll_ms`` caps the interval
        between two polls of one reader (edge/osdp/timing.py). ``loop``: the edge's loop; None, the bus runs
        a loop of its own while started. ``port``: an already open port (tests, bench), non-blocking reads."""
        addresses = [r.address for r in readers]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"{url}: two readers share an OSDP address ({addresses})")
        for r in readers:
            if not 0 <= r.address <= pk.MAX_ADDRESS:
                raise ValueError(f"door {r.door}: OSDP address must be 0..{pk.MAX_ADDRESS}, got {r.address}")
        self.url = url
        self.baudrate = baudrate
        self.poll_s = max(0.0, poll_ms / 1000.0)
        """The device file's ``poll_ms``: the longest an idle reader waits between two polls, line allowing."""
        self.interval_s = timing.poll_interval(baudrate, max(1, len(readers)), poll_ms)
        """How often each idle reader is polled (edge/osdp/timing.py)."""
        self.turnaround_s = timing.turnaround_s(baudrate)
        self.clock: Clock = clock if clock is not None else SystemClock()
        """The agent's clock: card read times and last_data_at (latency figures, health) are on it."""
        self._wire: Clock = SystemClock()
        """Reply windows, retries and the offline timeout are physical wire time, never a scenario's jumps."""
        self._lock = threading.RLock()
        """Guards the readers' stats: written on the loop, copied by :meth:`stats` from any thread."""
        self._readers: dict[int, _Reader] = {}
        for spec in readers:
            stats = ReaderStats(secure=False)
            delivery = _Delivery(spec, stats, on_card, self._lock, url)
            self._readers[spec.address] = _Reader(spec, delivery, stats=stats, interval_s=self.interval_s)
        self._order = list(self._readers.values())
        self._on_tamper = on_tamper
        self._on_security = on_security
        self.offline_after_s = offline_after_s
        self.reply_timeout_s = reply_timeout_s
        self.retry_key_problem_s = retry_key_problem_s
        self.signal_window_s = signal_window_s
        self.signal_thresholds = {**SIGNAL_THRESHOLDS, **(signal_thresholds or {})}
        self._loop = loop
        self._own_loop = loop is None
        self._own_thread: int | None = None
        """Ident of the thread running the bus's own loop (no caller's loop), while it runs."""
        self._started = False
        self._stopping = False
        self._port: Any = port
        self._fd: int | None = None
        self._pty = False
        self._parser = pk.PacketParser()
        self._turn_gen: Exchange[None] | None = None
        self._turn_reader: _Reader | None = None
        self._turn_sent = False
        self._awaiting = False
        """A command is on the wire and its reply window open."""
        self._out = b""
        """The part of a command the port did not take at once (written when it is writable)."""
        self._line_free_at = 0.0
        """Wire time from which the CP may transmit: the end of the last reply (or window) plus the turnaround."""
        self._next_index = 0
        self._last_index = -1
        self._round_start: float | None = None
        self._reply_timer: Timer | None = None
        self._send_timer: Timer | None = None
        self._wait_timer: Timer | None = None
        self._poll_timer: Timer | None = None
        self._reopen_timer: Timer | None = None
        self._reopen_delay = REOPEN_FIRST_S
        self.bus_faults: dict[str, int] = {}
        self.cycle_s: float | None = None
        """Duration of the last full round over the bus's readers (wire seconds)."""
        bound = timing.line_bound_s(baudrate, max(1, len(readers)))
        if readers and bound > self.poll_s:
            log.warning("OSDP bus %s: %d reader(s) at %d baud need about %.0f ms per round, more than "
                        "poll_ms = %d: each reader is polled as often as the line allows instead (fix: a higher "
                        "baud rate, or fewer readers on this bus)", url, len(readers), baudrate, bound * 1000,
                        poll_ms)

    def configure_signals(self, signal_window_s: float, signal_thresholds: dict[str, int]) -> None:
        """New ``reader_security`` thresholds (a signed policy carried the site's): counting starts again
        under them, as after a restart; from any thread."""
        self._post(self._set_signals, signal_window_s, {**SIGNAL_THRESHOLDS, **signal_thresholds})

    def _set_signals(self, signal_window_s: float, thresholds: dict[str, int]) -> None:
        if (signal_window_s, thresholds) == (self.signal_window_s, self.signal_thresholds):
            return
        self.signal_window_s = signal_window_s
        self.signal_thresholds = thresholds
        for r in self._readers.values():
            r.signals.clear()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Open the port (:class:`HardwareError` if it cannot be) and start polling. With the caller's loop,
        call it on that loop's thread or before the loop runs; without one, the bus starts its own."""
        if self._started:
            return
        port, self._port = self._port, None
        if port is None:
            port = self._open()
        self._pty = _is_pty(self.url)
        if self._own_loop:
            self._loop = Loop(name=f"osdp-{self.url}")
        self._started = True
        self._stopping = False
        self._reopen_delay = REOPEN_FIRST_S
        self._on_loop(self._attach, port)
        if self._own_loop:
            assert self._loop is not None
            running = threading.Event()

            def on_its_thread() -> None:
                self._own_thread = threading.get_ident()
                running.set()

            self._loop.call_soon_threadsafe(on_its_thread)
            self._loop.start()
            if not running.wait(STOP_DEADLINE_S):  # from here on, other threads' calls are handed to it
                log.warning("OSDP bus %s: its loop did not start within %.1f s", self.url, STOP_DEADLINE_S)

    def stop(self) -> None:
        """Stop polling and close the port; every reader is then offline. Safe to call any number of times."""
        if not self._started:
            return
        self._started = False
        loop = self._loop
        if not self._own_loop or loop is None:
            self._on_loop(self._shutdown)
            return
        stopped = loop.stop(STOP_DEADLINE_S)
        if not stopped:
            log.warning("OSDP bus %s: its loop did not stop within %.1f s", self.url, STOP_DEADLINE_S)
        self._shutdown()  # the loop no longer turns: its state is this thread's now
        if stopped and threading.get_ident() != self._own_thread:  # not from one of its own callbacks
            loop.close()
        self._loop = None
        self._own_thread = None

    @property
    def running(self) -> bool:
        return self._started

    def _open(self) -> Any:
        # Reads never block: the loop says when the port is readable. A device's writes do not either (the
        # rest of a command the driver did not take is written when the port is writable); a URL handler's
        # (loop://, socket://) write is left as it is: theirs take a small packet at once, and some refuse 0.
        extra = {} if "://" in self.url else {"write_timeout": 0}
        try:
            return serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=0, **extra)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise HardwareError(f"cannot open OSDP bus at {self.url!r}: {exc}") from exc

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the loop and wait for it: at once on (or before) the loop, else handed over."""
        loop = self._loop
        if loop is None:
            fn(*args)
            return
        done, _ = loop.call_and_wait(lambda: fn(*args), STOP_DEADLINE_S)
        if not done:
            log.warning("OSDP bus %s: the loop did not answer within %.1f s", self.url, STOP_DEADLINE_S)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the loop without waiting: at once on (or before) the loop, else at its next turn."""
        loop = self._loop
        if loop is None or loop.in_loop():
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    # -- API for the agent (any thread) -------------------------------------

    def stats(self, address: int) -> ReaderStats:
        with self._lock:
            s = self._readers[address].stats
            return replace(s, faults=dict(s.faults))

    def send(self, address: int, code: int, data: bytes) -> None:
        """Queue a command (LED, BUZ, OUT, ...) for the reader's next turn; dropped if the reader is offline."""
        self._post(self._queue, self._readers[address], code, data)

    def feedback(self, address: int, granted: bool) -> None:
        """Grant: green LED and one short beep. Deny: red LED and two beeps."""
        color = pk.LED_GREEN if granted else pk.LED_RED
        self.send(address, pk.CMD_LED, pk.LedCommand(color, on_ms=3000, off_ms=0, timer_ms=3000).encode())
        self.send(address, pk.CMD_BUZ, pk.BuzzerCommand(count=1 if granted else 2, on_ms=200, off_ms=200).encode())

    def begin_install(self, address: int, new_key: bytes) -> threading.Event:
        """Open a session with SCBK-D and send KEYSET(new_key); the event is set once the reader is back
        online under the new key. Only the ``doorkeep osdp install-key`` command calls this."""
        if len(new_key) != 16:
            raise ValueError("an SCBK is 16 bytes")
        r = self._readers[address]
        r.installed.clear()
        self._post(self._install, r, new_key)
        return r.installed

    def _queue(self, r: _Reader, code: int, data: bytes) -> None:
        if r.stats.online and len(r.outq) < OUTQ_MAX:
            r.outq.append((code, data))
            self._kick()

    def _install(self, r: _Reader, new_key: bytes) -> None:
        r.install_key = new_key  # the reader starts over with this key at its next turn
        r.next_try = 0.0
        self._kick()

    # -- the state machine on the loop ----------------------------------------

    def _attach(self, port: Any) -> None:
        """Take ``port``: its fd on the loop (a port without one is read on a timer while a reply is due)."""
        self._port = port
        self._parser.reset()
        try:
            fd = port.fileno()
        except (AttributeError, OSError, ValueError, serial.SerialException):
            fd = None
        self._fd = fd if isinstance(fd, int) else None
        if self._fd is not None:
            assert self._loop is not None
            self._loop.add_reader(self._fd, self._readable)
        self._next_turn()

    def _detach_port(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self._fd = None
        self._out = b""
        port, self._port = self._port, None
        if port is None:
            return
        try:
            port.close()
        except Exception:  # noqa: BLE001 - the port is gone either way
            log.debug("OSDP bus %s: closing the port failed", self.url, exc_info=True)

    def _shutdown(self) -> None:
        self._stopping = True
        self._abandon_turn()
        for timer in (self._wait_timer, self._reopen_timer):
            if timer is not None:
                timer.cancel()
        self._wait_timer = self._reopen_timer = None
        self._detach_port()
        for r in self._readers.values():  # offline, and a start again begins at ID with a new session
            self._restart(r, r.stats.reason)

    def _abandon_turn(self) -> None:
        """Drop the turn in progress (the port failed, or the bus stops) and every timer of its exchange."""
        gen, self._turn_gen, self._turn_reader = self._turn_gen, None, None
        self._awaiting = False
        for timer in (self._reply_timer, self._send_timer, self._poll_timer):
            if timer is not None:
                timer.cancel()
        self._reply_timer = self._send_timer = self._poll_timer = None
        if gen is not None:
            gen.close()

    def _kick(self) -> None:
        """Something became due (a queued command, a key to install): start it now if the line is idle."""
        if self._turn_gen is None and self._port is not None and not self._stopping:
            self._next_turn()

    def _next_turn(self) -> None:
        """The line is idle: begin the turn of the next reader that is due, round-robin, or wait for one."""
        if self._turn_gen is not None or self._port is None or self._stopping:
            return
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        now = self._wire.monotonic()
        first_due = math.inf
        count = len(self._order)
        for k in range(count):
            index = (self._next_index + k) % count
            r = self._order[index]
            if r.install_key is not None and r.phase not in ("id", "cap", "chlng"):
                self._restart(r, r.stats.reason)  # leave the session under the old key first
            due = max(self._due(r), self._line_free_at)
            if due <= now:
                self._next_index = (index + 1) % count
                self._begin(r, index, now)
                return
            first_due = min(first_due, due)
        if first_due < math.inf:
            assert self._loop is not None
            self._wait_timer = self._loop.call_at(first_due, self._next_turn, wire=True)

    def _due(self, r: _Reader) -> float:
        """Wire time from which ``r`` may have its next turn."""
        if r.phase != "online" or r.outq:
            return r.next_try
        return max(r.next_try, r.polled_at + r.interval_s)

    def _begin(self, r: _Reader, index: int, now: float) -> None:
        if index <= self._last_index or self._round_start is None:
            if self._round_start is not None:
                self.cycle_s = now - self._round_start
            self._round_start = now
        self._last_index = index
        r.polled_at = now
        self._turn_reader = r
        self._turn_sent = False
        self._turn_gen = self._turn(r)
        self._resume(None)  # a new generator starts on None

    def _resume(self, reply: pk.Packet | None) -> None:
        """Hand the turn in progress its reply (None: none in time) and put on the wire what it sends next."""
        gen, r = self._turn_gen, self._turn_reader
        if gen is None or r is None:
            return
        try:
            wire = gen.send(reply)
        except StopIteration:
            self._end_turn()
            return
        except Exception:
            log.exception("OSDP %s address %d: unexpected error", self.url, r.spec.address)
            self._restart(r, REASON_NO_REPLY)
            self._end_turn()
            return
        self._turn_sent = True
        wait = self._line_free_at - self._wire.monotonic()
        if wait > 0:
            assert self._loop is not None
            self._send_timer = self._loop.call_later(wait, self._transmit, wire, wire=True)
        else:
            self._transmit(wire)

    def _end_turn(self) -> None:
        sent = self._turn_sent
        self._turn_gen = self._turn_reader = None
        if sent:
            self._next_turn()
        elif self._loop is not None:
            # Nothing went on the wire (a reader refused for its key): the next turn on the loop's next pass,
            # not deeper in this call, however many readers are in that state.
            self._loop.call_soon(self._next_turn)

    def _transmit(self, wire: bytes) -> None:
        """Put one command on the wire and open its reply window."""
        self._send_timer = None
        port, loop = self._port, self._loop
        if port is None or loop is None or self._turn_gen is None:
            return
        try:
            port.reset_input_buffer()  # whatever came late belongs to no exchange
            self._parser.reset()
            written = port.write(wire)
        except Exception as exc:  # noqa: BLE001 - any failure of the port means the bus is lost
            self._port_failed(exc)
            return
        self._out = wire[len(wire) if written is None else written:]
        if self._out and self._fd is not None:
            loop.add_writer(self._fd, self._writable)
        self._awaiting = True
        # The window opens once the command is on the wire: a non-blocking write returns before that.
        window = timing.wire_s(len(wire), self.baudrate) + self.reply_timeout_s
        self._reply_timer = loop.call_later(window, self._no_reply, wire=True)
        if self._fd is None:
            self._poll_timer = loop.call_later(NO_FD_POLL_S, self._poll_port, wire=True)

    def _writable(self) -> None:
        port = self._port
        if port is None or not self._out:
            return
        try:
            written = port.write(self._out)
        except Exception as exc:  # noqa: BLE001
            self._port_failed(exc)
            return
        self._out = self._out[len(self._out) if written is None else written:]
        if not self._out and self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)

    def _poll_port(self) -> None:
        """A port without a file descriptor: read it on a timer while a reply is awaited."""
        self._poll_timer = None
        if self._out:
            self._writable()
        self._readable()
        if self._awaiting and self._fd is None and self._port is not None and self._loop is not None:
            self._poll_timer = self._loop.call_later(NO_FD_POLL_S, self._poll_port, wire=True)

    def _readable(self) -> None:
        port = self._port
        if port is None:
            return
        try:
            data = port.read(max(1, port.in_waiting))
        except Exception as exc:  # noqa: BLE001 - any failure of the port means the bus is lost
            self._port_failed(exc)
            return
        r = self._turn_reader
        if not data or not self._awaiting or r is None:
            return  # bytes outside a reply window: a late reply or noise, dropped before the next command
        for item in self._parser.feed(data):
            if isinstance(item, pk.PacketFault):
                self._fault(r, item.kind, item.detail)
            elif item.reply and item.address == r.spec.address:
                self._reply_came(item)
                return
            # our own echo (half-duplex adapters) or another reader's reply: not for us

    def _reply_came(self, reply: pk.Packet) -> None:
        self._reopen_delay = REOPEN_FIRST_S  # the port works: a later failure starts the backoff again
        self._window_closed()
        self._resume(reply)

    def _no_reply(self) -> None:
        self._reply_timer = None
        if self._awaiting:
            self._window_closed()
            self._resume(None)

    def _window_closed(self) -> None:
        self._awaiting = False
        for timer in (self._reply_timer, self._poll_timer):
            if timer is not None:
                timer.cancel()
        self._reply_timer = self._poll_timer = None
        self._line_free_at = self._wire.monotonic() + self.turnaround_s

    def _port_failed(self, exc: BaseException) -> None:
        """The serial port failed: every reader on it is offline; reopen it with backoff (a USB adapter
        unplugged and plugged back), every reader starting over from ID. A pty is never reopened: its number
        goes to the next pty opened on this machine."""
        if self._stopping:
            return
        with self._lock:
            for other in self._readers.values():
                # One update under the lock: whoever sees the reader offline also sees why.
                other.stats.io_errors += 1
                other.stats.online = False
                other.stats.reason = REASON_NO_REPLY
        log.error("OSDP bus %s lost: %s", self.url, exc)
        self._abandon_turn()
        if self._wait_timer is not None:
            self._wait_timer.cancel()
            self._wait_timer = None
        self._detach_port()
        for r in self._readers.values():
            self._restart(r, REASON_NO_REPLY)
        if self._pty or self._loop is None:
            return
        # A port that opens and fails again before any reply came keeps backing off (up to REOPEN_MAX_S).
        self._reopen_timer = self._loop.call_later(self._reopen_delay, self._reopen, wire=True)
        self._reopen_delay = min(self._reopen_delay * 2, REOPEN_MAX_S)

    def _reopen(self) -> None:
        self._reopen_timer = None
        if self._stopping or not self._started or self._loop is None:
            return
        try:
            port = self._open()
        except Exception as exc:  # noqa: BLE001 - keep retrying whatever the cause
            log.debug("OSDP bus %s still unavailable: %s", self.url, exc)
            self._reopen_timer = self._loop.call_later(self._reopen_delay, self._reopen, wire=True)
            self._reopen_delay = min(self._reopen_delay * 2, REOPEN_MAX_S)
            return
        log.info("OSDP bus %s reopened", self.url)
        self._attach(port)

    # -- one reader's turn (a generator: see the module docstring) -------------

    def _turn(self, r: _Reader) -> Exchange[None]:
        """One exchange with one reader, chosen by its phase (the handshake: several)."""
        spec = r.spec
        if r.phase == "id":
            r.seq = 0
            reply = yield from self._exchange(r, pk.CMD_ID, b"\x00")
            if reply is None:
                return
            if reply.code == pk.REPLY_PDID:
                r.phase = "cap"
            return
        if r.phase == "cap":
            reply = yield from self._exchange(r, pk.CMD_CAP, b"\x00")
            if reply is None or reply.code != pk.REPLY_PDCAP:
                return
            try:
                r.caps = pk.decode_pdcap(reply.data)
            except ValueError as exc:
                self._fault(r, "malformed", str(exc))
                return
            if not spec.secure:
                self._set_online(r, True, None)
                r.phase = "online"
                return
            level = r.caps.get(pk.CAP_COMMUNICATION_SECURITY, (0, 0))[0]
            if level == 0:
                self._refuse(r, REASON_SC_UNSUPPORTED, "reader does not offer Secure Channel")
                return
            r.phase = "chlng"
            return
        if r.phase == "chlng":
            yield from self._challenge(r)
            return
        if r.phase == "online":
            item = r.outq.popleft() if r.outq else None
            code, data = item if item is not None else (pk.CMD_POLL, b"")
            if item is None:
                with self._lock:
                    r.stats.polls += 1
            reply = yield from self._exchange(r, code, data)
            if reply is not None:
                self._online_reply(r, code, data, reply)

    def _challenge(self, r: _Reader) -> Exchange[None]:
        install = r.install_key is not None
        key = SCBK_D if install else r.spec.scbk
        if key is None:
            self._refuse(r, REASON_NEEDS_KEY, "no SCBK installed for this reader "
                                              "(fix: doorkeep osdp install-key DOOR --device FILE)")
            return
        r.key_type = KEY_TYPE_SCBK_D if install else KEY_TYPE_SCBK
        r.rnd_a = random_bytes(8)
        reply = yield from self._exchange(r, pk.CMD_CHLNG, r.rnd_a, scb=pk.Scb.handshake(pk.SCS_11, r.key_type))
        if reply is None:
            return
        if reply.code == pk.REPLY_NAK:
            why = f"reader refused the challenge (NAK {pk.decode_nak(reply.data)})"
            self._handshake_failed(r, why)
            self._refuse(r, REASON_SC_UNSUPPORTED, why)
            return
        if reply.code != pk.REPLY_CCRYPT or len(reply.data) != 32 or reply.scb_type != pk.SCS_12:
            self._fault(r, "malformed", "CHLNG not answered by a CCRYPT")
            self._handshake_failed(r, "CHLNG not answered by a CCRYPT")
            self._restart(r, REASON_NO_REPLY)
            return
        rnd_b, crypt = reply.data[8:16], reply.data[16:32]
        keys = derive_session_keys(key, r.rnd_a)
        if not cryptograms_match(client_cryptogram(keys, r.rnd_a, rnd_b), crypt):
            if not install and (yield from self._knows_only_default_key(r)):
                # Factory state, waiting for install-key: expected, reported as reader_offline needs_key.
                self._refuse(r, REASON_NEEDS_KEY, "reader only knows the default key SCBK-D "
                                                  "(fix: doorkeep osdp install-key DOOR --device FILE)")
            else:
                self._handshake_failed(r, "client cryptogram does not verify under this reader's key")
                self._refuse(r, REASON_WRONG_KEY, "reader's key does not match scbk_file "
                                                  "(fix: point scbk_file at this reader's key, or reset the "
                                                  "reader to its default key and run doorkeep osdp install-key)")
            return
        scrypt = server_cryptogram(keys, r.rnd_a, rnd_b)
        reply = yield from self._exchange(r, pk.CMD_SCRYPT, scrypt, scb=pk.Scb.handshake(pk.SCS_13, r.key_type))
        if reply is None:
            return
        if reply.code != pk.REPLY_RMAC_I or len(reply.data) != 16 \
                or not cryptograms_match(initial_rmac(keys, scrypt), reply.data):
            self._handshake_failed(r, "R-MAC-I does not verify")
            self._refuse(r, REASON_WRONG_KEY, "reader's R-MAC-I does not verify")
            return
        r.session = SecureSession.established(keys, bytes(reply.data))
        r.had_sc = True
        with self._lock:
            r.stats.secure = True
        if install:
            assert r.install_key is not None
            r.phase = "install"
            reply = yield from self._exchange(r, pk.CMD_KEYSET, pk.keyset_command(r.install_key))
            if reply is not None and reply.code == pk.REPLY_ACK:
                log.warning("OSDP %s address %d: new SCBK installed", self.url, r.spec.address)
                r.spec = replace(r.spec, scbk=r.install_key)
                r.install_key = None
                r.installed.set()
            else:
                log.error("OSDP %s address %d: no ACK to KEYSET (%s)", self.url, r.spec.address,
                          "no reply" if reply is None else f"reply {reply.code:02X}")
                r.install_key = None  # one attempt per begin_install(): the operator decides what next
            self._restart(r, REASON_NEEDS_KEY)
            r.next_try = 0.0
            return
        r.phase = "online"
        self._set_online(r, True, None)
        log.info("OSDP %s address %d (door %s): Secure Channel established", self.url, r.spec.address, r.spec.door)

    def _knows_only_default_key(self, r: _Reader) -> Exchange[bool]:
        """After our key failed: does the reader answer a challenge under SCBK-D? Only asked, never used -
        the handshake is abandoned before SCRYPT, so no session under the default key is ever opened here."""
        rnd_a = random_bytes(8)
        reply = yield from self._exchange(r, pk.CMD_CHLNG, rnd_a, scb=pk.Scb.handshake(pk.SCS_11, KEY_TYPE_SCBK_D))
        if reply is None or reply.code != pk.REPLY_CCRYPT or len(reply.data) != 32:
            return False
        keys = derive_session_keys(SCBK_D, rnd_a)
        return cryptograms_match(client_cryptogram(keys, rnd_a, reply.data[8:16]), reply.data[16:32])

    def _online_reply(self, r: _Reader, code: int, data: bytes, reply: pk.Packet) -> None:
        t_read = self.clock.monotonic()
        if reply.code == pk.REPLY_BUSY:
            if code == pk.CMD_POLL:  # the reader asks for time: poll it less often for a while
                r.interval_s = timing.busy_backoff_s(r.interval_s, max(self.poll_s, self.interval_s))
            else:
                r.outq.appendleft((code, data))
            return
        r.interval_s = timing.recovered_s(r.interval_s, self.interval_s)
        if reply.code == pk.REPLY_ACK:
            return
        if reply.code == pk.REPLY_NAK:
            reason = pk.decode_nak(reply.data)
            self._fault(r, "nak", f"command {code:02X} refused: {pk.NAK_REASONS.get(reason, reason)}")
            if reason in (pk.NAK_SC_REQUIRED, pk.NAK_SCB_UNSUPPORTED, 4):
                self._restart(r, REASON_NO_REPLY)
            return
        if reply.code == pk.REPLY_RAW:
            item: CardRead | FrameFault
            try:
                fmt, number = decode_card(pk.decode_raw(reply.data), r.layouts)
                item = CardRead(number, fmt)
            except ParityError as exc:
                item = FrameFault("parity", str(exc), b"")
            except ValueError as exc:
                item = FrameFault("malformed", str(exc), b"")
            r.delivery.deliver([item], t_read)
            return
        if reply.code == pk.REPLY_KEYPAD:
            try:
                _, keys = pk.decode_keypad(reply.data)
            except ValueError as exc:
                self._fault(r, "malformed", str(exc))
                return
            # ``#`` (or Enter) submits the PIN as a ``keypad`` read ``P<digits>``, ``*`` clears.
            r.delivery.deliver(r.pins.keys(keys, t_read), t_read)
            return
        if reply.code == pk.REPLY_LSTATR and len(reply.data) >= 1:
            tampered = bool(reply.data[0])
            if tampered != r.last_tamper:
                r.last_tamper = tampered
                self._call(self._on_tamper, r.spec.door, tampered)
            return
        self._fault(r, "unexpected", f"reply {reply.code:02X} to command {code:02X} ignored")

    # -- one exchange ---------------------------------------------------------

    def _exchange(self, r: _Reader, code: int, data: bytes, *, scb: bytes = b"") -> Exchange[pk.Packet | None]:
        """Send one command (retried with the same sequence number) and return its verified, clear reply."""
        cmd = pk.Packet(r.spec.address, code, data, sequence=r.seq, scb=scb)
        if r.session is not None and not scb:
            cmd = r.session.seal(cmd)
        wire = cmd.encode()
        for attempt in range(1 + RETRIES):
            if attempt:
                with self._lock:
                    r.stats.retries += 1
            reply = yield wire
            if reply is not None:
                return self._accept(r, cmd, reply)
            if self._stopping:
                return None
        self._timed_out(r)
        return None

    def _accept(self, r: _Reader, cmd: pk.Packet, reply: pk.Packet) -> pk.Packet | None:
        """Check sequence and Secure Channel of a reply; None (and a restarted reader) when it cannot be trusted."""
        now = self._wire.monotonic()
        with self._lock:
            r.stats.last_data_at = self.clock.monotonic()
        if r.spec.secure and reply.code == pk.REPLY_NAK and reply.scb_type not in (pk.SCS_16, pk.SCS_18) \
                and cmd.code != pk.CMD_CHLNG:
            # A reader that must speak Secure Channel NAKs in clear: once after a reboot is normal, a stream is
            # what NAKs injected on the wire look like (they cost the attacker no key). A refused challenge is
            # counted as a failed handshake instead.
            self._security(r, CAUSE_CLEAR_NAK, {"detail": f"NAK {pk.decode_nak(reply.data)} in clear to command "
                                                          f"{cmd.code:02X}"}, restart=False)
        if reply.sequence != cmd.sequence:
            self._fault(r, "sequence", f"reply sequence {reply.sequence} to command sequence {cmd.sequence}")
            self._restart(r, REASON_NO_REPLY)
            return None
        secure_reply = reply.scb_type in (pk.SCS_16, pk.SCS_18)
        if r.session is not None and cmd.scb_type in (pk.SCS_15, pk.SCS_17):
            if not secure_reply:
                if reply.code == pk.REPLY_NAK:
                    # The reader lost its session (restart, its own timeout): a new handshake, not an attack.
                    self._fault(r, "session_lost", f"NAK {pk.decode_nak(reply.data)} in clear inside a session")
                    self._restart(r, REASON_NO_REPLY)
                    return None
                self._security(r, CAUSE_DOWNGRADE, {"detail": f"reply {reply.code:02X} in clear inside a session"})
                return None
            try:
                reply = r.session.open(reply)
            except SecureChannelError as exc:
                with self._lock:
                    r.stats.mac_failures += 1
                if r.missed:
                    # After a timeout the reader may be repeating its answer to the command we gave up on
                    # (same sequence number): a desynchronised chain, not an attack. Start a new session.
                    self._fault(r, "session_lost", f"MAC mismatch right after a timeout: {exc}")
                    self._restart(r, REASON_NO_REPLY)
                    return None
                self._security(r, CAUSE_MAC_FAILURE, {"detail": str(exc)})
                return None
        elif secure_reply:
            self._fault(r, "unexpected", "secure reply without a session")
            return None
        r.seq = r.seq % 3 + 1
        r.last_ok = now
        r.missed = False
        return reply

    def _timed_out(self, r: _Reader) -> None:
        now = self._wire.monotonic()
        r.missed = True
        with self._lock:
            r.stats.faults["timeout"] = r.stats.faults.get("timeout", 0) + 1
        if r.last_ok is None or now - r.last_ok >= self.offline_after_s:
            if r.stats.online:
                log.warning("OSDP %s address %d (door %s): no reply for %.1f s, offline", self.url,
                            r.spec.address, r.spec.door, self.offline_after_s)
            self._restart(r, REASON_NO_REPLY)
            r.next_try = now + RETRY_OFFLINE_S
        elif r.phase != "online":
            self._restart(r, r.stats.reason)
            r.next_try = now + RETRY_OFFLINE_S
        # an online reader that missed one exchange keeps its session and sequence: the next poll retries

    # -- state changes ---------------------------------------------------------

    def _restart(self, r: _Reader, reason: str | None) -> None:
        """Back to sequence 0 and ID; offline with ``reason``."""
        r.phase = "id"
        r.seq = 0
        r.session = None
        r.pins.reset()
        r.outq.clear()
        with self._lock:
            r.stats.secure = False
        self._set_online(r, False, reason)

    def _refuse(self, r: _Reader, reason: str, why: str) -> None:
        """A key or capability problem: offline with a reason; downgrade alarm if the reader had SC before."""
        if r.stats.reason != reason:
            log.error("OSDP %s address %d (door %s): %s", self.url, r.spec.address, r.spec.door, why)
        if r.had_sc and reason in (REASON_SC_UNSUPPORTED, REASON_NEEDS_KEY):
            self._security(r, CAUSE_DOWNGRADE, {"detail": why}, restart=False)
        self._restart(r, reason)
        r.next_try = self._wire.monotonic() + self.retry_key_problem_s

    def _handshake_failed(self, r: _Reader, why: str) -> None:
        """A Secure Channel handshake that did not complete (not the factory-key case): a signal when repeated."""
        self._security(r, CAUSE_HANDSHAKE_FAILED, {"detail": why}, restart=False)

    def _security(self, r: _Reader, cause: str, detail: dict[str, Any], *, restart: bool = True) -> None:
        """Count one security fault; report it through ``on_security`` only when its limiter says so."""
        with self._lock:
            r.stats.faults[cause] = r.stats.faults.get(cause, 0) + 1
        limiter = r.signals.get(cause)  # the limiters, like the thresholds, belong to the loop
        if limiter is None:
            limiter = r.signals[cause] = SignalLimiter(self.signal_thresholds.get(cause, 1), self.signal_window_s)
        counts = limiter.note(self._wire.monotonic())
        if counts is None:
            log.warning("OSDP %s address %d (door %s): security fault %s (%d so far): %s", self.url,
                        r.spec.address, r.spec.door, cause, limiter.total, detail.get("detail", ""))
        else:
            log.error("OSDP %s address %d (door %s): security fault %s, reported (%d since the last report): %s",
                      self.url, r.spec.address, r.spec.door, cause, counts["count"], detail.get("detail", ""))
            self._call(self._on_security, r.spec.door, cause, {"address": r.spec.address, **detail, **counts})
        if restart:
            self._restart(r, REASON_SECURITY)

    def _set_online(self, r: _Reader, online: bool, reason: str | None) -> None:
        with self._lock:
            r.stats.online = online
            r.stats.reason = None if online else reason

    def _fault(self, r: _Reader, kind: str, detail: str) -> None:
        with self._lock:
            r.stats.faults[kind] = r.stats.faults.get(kind, 0) + 1
        log.warning("OSDP %s address %d: %s: %s", self.url, r.spec.address, kind, detail)

    # -- what readers tell us ------------------------------------------------------

    def _call(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("OSDP %s: callback failed", self.url)


class OsdpReader:
    """One door's view of a shared bus: an :class:`edge.reader_port.Reader` (registered as ``osdp``)."""

    ready_at_start = False
    """The bus opening proves nothing about this reader: it is good once its Secure Channel is up."""

    def __init__(self, bus: OsdpBus, door: str, address: int) -> None:
        self.bus = bus
        self.door = door
        self.address = address
        self.url = bus.url
        self.protocol = "osdp"

    def start(self) -> None:
        self.bus.start()

    def stop(self) -> None:
        self.bus.stop()

    @property
    def stats(self) -> ReaderStats:
        return self.bus.stats(self.address)

    @property
    def health_reason(self) -> str | None:
        return self.bus.stats(self.address).reason

    def silent_for(self, now: float) -> float:
        last = self.bus.stats(self.address).last_data_at
        return 0.0 if last is None else max(0.0, now - last)

    def feedback(self, granted: bool) -> None:
        self.bus.feedback(self.address, granted)

    def apply_signals(self, signals: ReaderSignals) -> None:
        """The bus's thresholds (shared by its readers; unchanged thresholds leave its counts alone)."""
        settings = reader_signal_settings(signals)
        self.bus.configure_signals(settings["signal_window_s"], settings["signal_thresholds"])


def reader_signal_settings(signals: Any) -> dict[str, Any]:
    """``build_buses``'s (and :meth:`OsdpBus.configure_signals`') signal arguments from the site's reader
    thresholds: a ``doorkeep.policy.ReaderSignals`` (the signed policy's) or the site file's ``[intrusion]``
    settings (``doorkeep.config.IntrusionSettings``)."""
    if hasattr(signals, "reader_signals"):
        signals = signals.reader_signals()
    return {"signal_window_s": signals.window_s,
            "signal_thresholds": {CAUSE_HANDSHAKE_FAILED: signals.handshake_failures,
                                  CAUSE_CLEAR_NAK: signals.clear_naks}}


def build_buses(doors: dict[str, Any], on_card: CardCallback, *, clock: Clock | None = None,
                on_tamper: TamperCallback | None = None,
                on_security: SecurityCallback | None = None, signal_window_s: float = SIGNAL_WINDOW_S,
                signal_thresholds: dict[str, int] | None = None, loop: Loop | None = None) -> dict[str, OsdpReader]:
    """One bus per serial URL for the doors whose reader is OSDP, on ``loop``; door -> its reader handle.

    ``signal_window_s`` and ``signal_thresholds`` come from the site's ``[intrusion]`` table (the agent maps
    them): how many handshake failures or clear NAKs within the window make one ``reader_security`` report.

    ``doors`` maps door ids to ``doorkeep.config.DoorHardware``. A key file that cannot be used is logged with
    its fix and the reader left without a key (offline, ``needs_key``): one bad file must not stop the edge.
    """
    from edge.osdp.keys import KeyFileError, load_scbk

    by_url: dict[str, list[tuple[str, Any]]] = {}
    for did, hw in doors.items():
        if hw.reader.protocol == "osdp":
            by_url.setdefault(hw.reader.url, []).append((did, hw.reader))
    handles: dict[str, OsdpReader] = {}
    for url, members in by_url.items():
        specs = []
        for did, rc in members:
            key = None
            if rc.secure_channel and rc.scbk_file is not None:
                try:
                    key = load_scbk(rc.scbk_file)
                except KeyFileError as exc:
                    log.error("door %s: %s", did, exc)
            if not rc.secure_channel:
                log.warning("door %s: OSDP reader at %s address %d runs WITHOUT Secure Channel "
                            "(secure_channel = false): card numbers cross the wire in clear, development only",
                            did, url, rc.address)
            specs.append(OsdpReaderSpec(did, rc.address, key, rc.secure_channel, rc.repeat_ignore_s,
                                        rc.wiegand_formats))
        first = members[0][1]
        poll_ms = min(rc.poll_ms for _, rc in members)
        bus = OsdpBus(url, specs, on_card, baudrate=first.baudrate, poll_ms=poll_ms, clock=clock,
                      on_tamper=on_tamper, on_security=on_security, signal_window_s=signal_window_s,
                      signal_thresholds=signal_thresholds, loop=loop)
        for did, rc in members:
            handles[did] = OsdpReader(bus, did, rc.address)
    return handles


@register("osdp")
def _osdp_reader(door: str, config: ReaderConfig, deps: ReaderDeps) -> OsdpReader:
    """The door's handle on its bus. The first OSDP door builds every bus of the device (one per URL) into
    ``deps.shared["osdp"]``; the others pick their handle from there, so doors on one URL share one bus."""
    handles: dict[str, OsdpReader] | None = deps.shared.get("osdp")
    if handles is None:
        handles = build_buses(dict(deps.doors), deps.on_card, clock=deps.clock, on_tamper=deps.on_tamper,
                              on_security=deps.on_security, loop=deps.loop,
                              **reader_signal_settings(deps.signals))
        deps.shared["osdp"] = handles
    return handles[door]
