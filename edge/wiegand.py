"""Wiegand readers on two GPIO inputs: a pure frame decoder and the gpiozero adapter that feeds it.

A Wiegand reader idles both data lines high (5 V on the reader side, pulled up on the Pi side) and sends each
bit as a short low pulse (about 50 us) on D0 for a 0 or on D1 for a 1, about 2 ms apart. Nothing on the wire
marks the end of a frame: a frame ends when no bit has come for a while (``frame_timeout_ms``, 25 ms by
default, ten bit periods), so the decoder works on *timed bits* and a deadline.

* :func:`decode_bits` turns one frame into a :class:`~edge.framing.CardRead` (26, 34 and 37 bits, parity
  checked, split by the layout the reader's ``wiegand_formats`` chose for that length or the default one; the
  layouts are :mod:`doorkeep.card_formats`, the same the OSDP readers use, so a card reads ``wiegand26``
  ``"FACILITY:CARD"`` whichever kind of reader saw it), a keypad key (4-bit bursts,
  or 8-bit bursts whose high nibble is the complement of the low one), or a
  :class:`~edge.framing.FrameFault` (``parity``, ``length``). It never raises on wire input.
* :class:`WiegandFramer` collects timed bits into frames and keypad keys into PINs, pure and clock-free.
* :class:`WiegandReader` is the adapter: gpiozero ``DigitalInputDevice`` edge callbacks on D0/D1 (pull-ups,
  a falling edge is a bit), each bit stamped with the injected clock on the pin's thread and handed to the
  edge's loop (edge/loop.py), where a timer ends each frame at its deadline. It implements :class:`edge.reader_port.Reader` (registered as ``wiegand``), with the
  same health stats as a serial reader.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gpiozero import DigitalInputDevice
from gpiozero.exc import GPIOZeroError

from doorkeep import card_formats as cf
from doorkeep.card_formats import ParityError, WiegandLayout
from doorkeep.clock import Clock, SystemClock
from edge.errors import EdgeError, HardwareError
from edge.framing import CardRead, FrameFault
from edge.reader_port import ReaderDeps, register
from edge.readers import CardCallback, CardDelivery, FaultCallback, PinEntry, ReaderStats, RepeatFilter

if TYPE_CHECKING:
    from doorkeep.config import ReaderConfig
    from doorkeep.policy import ReaderSignals
    from edge.loop import Loop, Timer

logger = logging.getLogger("doorkeep.edge.wiegand")

CARD_LENGTHS: tuple[int, ...] = cf.LENGTHS
"""The bit counts decoded as cards; their layouts live in :mod:`doorkeep.card_formats`."""
MAX_BITS = 64
"""Longer than any format doorkeep knows: a longer train is noise (a floating line), dropped as ``length``."""
DEFAULT_FRAME_TIMEOUT_S = 0.025
STUCK_LOW_S = 0.5
"""A data line held low this long is a short or a dead reader (bits are 50 us pulses): the reader is offline."""
STOP_DEADLINE_S = 2.0

#: Key codes of 4-bit keypad bursts (and the low nibble of 8-bit ones): 0-9, then ESC and ENTER.
KEY_ESC = 10
KEY_ENTER = 11


@dataclass(frozen=True)
class KeyPress:
    """One keypad key sent as a Wiegand burst: ``"0"``-``"9"``, ``"*"`` (clear) or ``"#"`` (enter)."""

    key: str


Decoded = CardRead | KeyPress | FrameFault


def _raw_of(bits: Sequence[int]) -> bytes:
    """The frame's shape for a fault, without its content: the bit count only (a card number is personal)."""
    return f"{len(bits)} bits".encode()


def _key(code: int) -> str | None:
    if 0 <= code <= 9:
        return str(code)
    return {KEY_ESC: "*", KEY_ENTER: "#"}.get(code)


def decode_bits(bits: Sequence[int], layouts: Mapping[int, WiegandLayout] | None = None) -> Decoded:
    """One Wiegand frame -> a card, a keypad key, or a fault. Pure; never raises on any sequence of 0/1.

    ``layouts`` (from :func:`doorkeep.card_formats.resolve`) is how the reader splits each card length; None
    reads every length with its default layout.
    """
    n = len(bits)
    if n in CARD_LENGTHS:
        try:
            read = cf.decode([1 if b else 0 for b in bits], layouts)
        except ParityError as exc:
            return FrameFault("parity", str(exc), _raw_of(bits))
        if read is not None:
            return CardRead(read[1], read[0])
    if n == 4:
        key = _key(int("".join(str(b) for b in bits), 2))
        if key is None:
            return FrameFault("length", "4-bit burst is not a keypad key (0-9, * or #)", _raw_of(bits))
        return KeyPress(key)
    if n == 8:
        high = int("".join(str(b) for b in bits[:4]), 2)
        low = int("".join(str(b) for b in bits[4:]), 2)
        key = _key(low)
        if high != (~low & 0xF) or key is None:
            return FrameFault("parity", "8-bit keypad burst fails its complement check", _raw_of(bits))
        return KeyPress(key)
    return FrameFault("length", f"{n}-bit frame: doorkeep decodes 26, 34 and 37-bit cards and 4/8-bit keys",
                      _raw_of(bits))


class WiegandFramer:
    """Timed bits -> decoded frames; keypad keys -> PIN reads. Pure: time comes in with every call.

    A frame ends ``frame_timeout_s`` after its last bit: :meth:`poll` at or after :attr:`deadline` ends it,
    and a bit that arrives later than that ends the previous frame first (so even a late poll never joins two
    frames). Keypad digits gather until ``#``, which yields ``CardRead("P" + digits, "keypad")`` (the PIN read
    the agent already knows from ASCII and OSDP keypads); ``*`` clears them.
    """

    def __init__(self, frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S,
                 layouts: Mapping[int, WiegandLayout] | None = None) -> None:
        if not frame_timeout_s > 0:
            raise ValueError(f"frame_timeout_s must be greater than 0, got {frame_timeout_s!r}")
        self.frame_timeout_s = frame_timeout_s
        self.layouts = dict(layouts) if layouts is not None else cf.resolve()
        self._bits: list[int] = []
        self._last_bit_at: float | None = None
        self._pin = PinEntry()  # the keypad rules every reader kind shares (edge/readers.py)

    @property
    def deadline(self) -> float | None:
        """When the frame being received ends (None when no frame is open)."""
        return None if self._last_bit_at is None else self._last_bit_at + self.frame_timeout_s

    def bit(self, value: int, now: float) -> list[CardRead | FrameFault]:
        """A falling edge on D0 (``value`` 0) or D1 (1) at ``now``; returns what an ended earlier frame gave."""
        out = self.poll(now)
        if len(self._bits) <= MAX_BITS:  # past MAX_BITS it is noise: keep the count bounded, end it as `length`
            self._bits.append(1 if value else 0)
        self._last_bit_at = now
        return out

    def poll(self, now: float) -> list[CardRead | FrameFault]:
        """End the open frame if its deadline has passed; cards, PINs and faults it gave (keys are kept)."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        bits, self._bits, self._last_bit_at = self._bits, [], None
        item = decode_bits(bits, self.layouts)
        if not isinstance(item, KeyPress):
            return [item]
        pin = self._pin.key(item.key, now)
        return [pin] if pin is not None else []

    def reset(self) -> None:
        """Forget a half-received frame and typed digits (at start and stop)."""
        self._bits, self._last_bit_at = [], None
        self._pin.reset()


_GPIO_ERRORS = (GPIOZeroError, OSError)


class WiegandReader(CardDelivery):
    """One door's Wiegand reader on two GPIO inputs; calls ``on_card`` for each new card or PIN, on the loop.

    gpiozero calls :meth:`_edge` from its own thread (for mock pins: the thread that drove the pin) with the
    pin's falling edge; the bit is stamped with the injected clock at once, because a card's read time picks the
    camera frame and measures latency, and appended to a deque the loop drains (one wake-up per burst of bits,
    not per bit). On the loop a timer at the frame's deadline ends it. Built without a loop (a test), the reader
    runs a loop of its own on a thread of its own.
    """

    ready_at_start = True
    """Both pins claimed is a reader wired: a stuck line or silence after that is reported as it comes."""

    def __init__(
        self,
        door: str,
        d0_pin: int,
        d1_pin: int,
        on_card: CardCallback,
        *,
        factory: Any,
        clock: Clock | None = None,
        frame_timeout_s: float = DEFAULT_FRAME_TIMEOUT_S,
        repeat_ignore_s: float = 1.0,
        on_fault: FaultCallback | None = None,
        loop: Loop | None = None,
        formats: cf.Choice = (),
    ) -> None:
        """``formats``: the reader's ``wiegand_formats`` as ``((bits, name), ...)``; lengths it does not name
        keep their default layout (a bad name raises ValueError: the config loader refuses it first)."""
        if d0_pin == d1_pin:
            raise ValueError("D0 and D1 must be different GPIOs")
        self.door = door
        self.d0_pin = d0_pin
        self.d1_pin = d1_pin
        self.url = f"gpio://{d0_pin},{d1_pin}"
        self.protocol = "wiegand"
        self._factory = factory
        self._on_card = on_card
        self._on_fault = on_fault
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._framer = WiegandFramer(frame_timeout_s, cf.resolve(formats))  # the loop's alone
        self._stats = ReaderStats()
        self._lock = threading.Lock()  # guards _stats
        self._guard = self._lock
        self._log = logger
        self._started = False
        self._bits: deque[tuple[int, float]] = deque()  # pin threads append, the loop drains
        self._drain_scheduled = False
        self._timer: Timer | None = None
        self._devices: list[DigitalInputDevice] = []
        self._repeats = RepeatFilter(repeat_ignore_s)
        self._low_since: dict[int, float] = {}
        self._own_loop = loop is None
        if loop is None:
            from edge.loop import Loop as _Loop

            loop = _Loop(clock=self._clock, name=f"wiegand-{door}")
        self._loop: Loop = loop

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Claim both pins now, so a miswired device file fails loudly at start-up."""
        if self._started:
            raise RuntimeError(f"reader for door {self.door!r} already started")
        try:
            for value, pin in ((0, self.d0_pin), (1, self.d1_pin)):
                dev = DigitalInputDevice(pin, pull_up=True, pin_factory=self._factory)
                self._devices.append(dev)
                # Pulled up: "active" is low, so activation is the falling edge that starts a bit. (A partial with
                # every argument bound: gpiozero then calls it with none, never with the device.)
                dev.when_activated = functools.partial(self._edge, value)
        except _GPIO_ERRORS as exc:
            self._close_devices()
            raise HardwareError(f"door {self.door!r}: Wiegand reader on GPIO{self.d0_pin}/GPIO{self.d1_pin}: "
                                f"{exc}") from exc
        now = self._clock.monotonic()
        self._framer.reset()
        with self._lock:
            self._stats.online = True
            self._stats.last_data_at = now
        self._started = True
        if self._own_loop:
            self._loop.start()

    def stop(self) -> None:
        """Release the pins and forget a half-received frame; safe to call any number of times."""
        started, self._started = self._started, False
        with self._lock:
            self._stats.online = False
        self._close_devices()
        if not started:
            return
        if self._own_loop:
            self._loop.stop(STOP_DEADLINE_S)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._bits.clear()

    def _close_devices(self) -> None:
        devices, self._devices = self._devices, []
        for dev in devices:
            try:
                dev.close()
            except Exception:  # the pin is released either way
                logger.debug("door %s: closing a Wiegand input failed", self.door, exc_info=True)

    # -- health --------------------------------------------------------------

    @property
    def stats(self) -> ReaderStats:
        """Frames decoded, faults by kind (``parity``, ``length``), online (False while a line is stuck low)."""
        with self._lock:
            stats = replace(self._stats, faults=dict(self._stats.faults))
        if stats.online and self.health_reason is not None:
            stats.online = False
        return stats

    @property
    def health_reason(self) -> str | None:
        """``line_stuck_low`` while D0 or D1 has been held low for longer than any bit: a short or a fault."""
        now = self._clock.monotonic()
        for dev in list(self._devices):
            try:
                low = bool(dev.is_active)
            except Exception:  # a device closed under us (stop) is not a stuck line
                logger.debug("door %s: reading a Wiegand line failed", self.door, exc_info=True)
                continue
            key = id(dev)
            if not low:
                self._low_since.pop(key, None)
                continue
            since = self._low_since.setdefault(key, now)
            if now - since >= STUCK_LOW_S:
                return "line_stuck_low"
        return None

    def silent_for(self, now: float) -> float:
        """Seconds since the last bit (or since start): Wiegand readers send nothing while idle."""
        with self._lock:
            last = self._stats.last_data_at
        return 0.0 if last is None else max(0.0, now - last)

    def feedback(self, granted: bool) -> None:
        """No-op: doorkeep does not drive a Wiegand reader's LED and beeper lines yet (docs/readers.md)."""

    def apply_signals(self, signals: ReaderSignals) -> None:
        """No security signals on a Wiegand reader: it has no secure channel to watch."""

    # -- bits ----------------------------------------------------------------

    def _edge(self, value: int) -> None:
        """A falling edge, on the pin's thread: stamp it, queue it, wake the loop if it is not already coming."""
        if not self._started:
            return
        self._bits.append((value, self._clock.monotonic()))
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        """On the loop: feed the queued bits to the framer and (re)arm the frame-end timer."""
        self._drain_scheduled = False  # before popping: a bit queued from here on schedules another drain
        while self._bits:
            value, now = self._bits.popleft()
            with self._lock:
                self._stats.last_data_at = now
            self._deliver(self._framer.bit(value, now), now)
        self._arm()

    def _arm(self) -> None:
        deadline = self._framer.deadline
        if self._timer is not None:
            if deadline is not None and self._timer.when == deadline:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._started:
            self._timer = self._loop.call_at(deadline, self.tick)

    def tick(self) -> None:
        """End a frame whose deadline has passed now (the loop's timer does this; tests on a fake clock too)."""
        self._timer = None
        now = self._clock.monotonic()
        items = self._framer.poll(now)
        self._deliver(items, now)
        self._arm()

    def _fault_text(self, fault: FrameFault) -> str:
        return f"Wiegand fault {fault.kind}: {fault.detail}"


@register("wiegand")
def _wiegand_reader(door: str, config: ReaderConfig, deps: ReaderDeps) -> WiegandReader:
    """D0/D1 on the agent's own pin factory (two agents in one process never share mock pins)."""
    if config.d0_pin is None or config.d1_pin is None:
        raise EdgeError(f"door {door!r}: a Wiegand reader needs d0_pin and d1_pin; fix: add both to the door's "
                        "reader table")
    return WiegandReader(door, config.d0_pin, config.d1_pin, deps.on_card, factory=deps.pin_factory,
                         clock=deps.clock, frame_timeout_s=config.frame_timeout_ms / 1000.0,
                         repeat_ignore_s=config.repeat_ignore_s, loop=deps.loop, formats=config.wiegand_formats)
