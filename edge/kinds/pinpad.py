"""The pin pad reader (``protocol = "pinpad"``): ASCII card lines plus a keypad that sends each key as it is pressed.

A pin pad is a serial reader with the same port and keys as an ``ascii`` reader. Cards arrive exactly as on an
ASCII reader, one number per line ended by CR, LF or CRLF (decoded by :func:`edge.framing.parse_ascii`, so a
card reads ``CardRead(number, "ascii")`` and matches the people file's ASCII cards). The keypad does not send a
whole ``P1234`` line: every key press is one byte, ``0``-``9``, ``*`` (clear) or ``#`` (enter), the moment it
is pressed. The keys go through the shared :class:`edge.readers.PinEntry`, so ``#`` after digits gives
``CardRead("P" + digits, "keypad")``, the PIN read the agent knows from every kind with a keypad.

Telling a key from a card line, since a digit may start either:

* ``*`` and ``#`` are keys wherever they come; they never occur in a card line.
* Bytes gather in a *run* until something ends it. A line end (CR or LF) makes the run a card line: **a line
  needs its terminator**. A run that is blank at its line end is a keep-alive (the reader's "I am here"), as
  on an ASCII reader: no item, but the bytes count as data for ``silence_timeout_s``.
* A ``*`` or ``#`` ends the run too: digits in it were keys typed just before (``2468#``), so they are keys.
* A pause ends the run: a reader sends a line in one burst (a 32-byte line takes 33 ms at 9600 baud), a person
  presses keys far apart. When bytes arrive more than ``key_gap_s`` (0.2 s) after the run's last byte, the
  run was not a line: digits alone are keys (**a lone key byte between lines is a key**); anything else is a
  line cut off before its end, a ``truncated`` fault (``garbled`` when it holds bytes no line may hold).
* A run longer than a line may be (32 bytes) is an ``oversized`` fault, reported once; what follows is dropped,
  keys included, up to the next line end or pause (line noise, not a person typing).

What that costs: the keys of a run are known only when the next byte arrives, which is harmless because a PIN
is only ever submitted by ``#``, and ``#`` settles the run at once. Digits typed and followed within 0.2 s by a
card (no ``#`` between) run into the card's line and read as one wrong card number; no person is that quick.

The parser is pure: no I/O, no thread, time comes in with every :meth:`PinpadParser.feed` (or from the
injected clock when the caller gives none). It never raises on wire input and keeps at most ``max_len`` bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from doorkeep.clock import Clock, SystemClock
from edge.framing import RAW_CAP, FrameFault, Item, parse_ascii
from edge.reader_port import ReaderDeps, register
from edge.readers import PinEntry, SerialReader

if TYPE_CHECKING:
    from doorkeep.config import ReaderConfig

PROTOCOL = "pinpad"
KEYS = "0123456789*#"
"""The bytes the keypad sends, one per key press: digits, ``*`` (clear), ``#`` (enter)."""
KEY_GAP_S = 0.2
"""A run of bytes followed by this long a pause was typed, not sent as a line (see the module docstring)."""
LINE_MAX = 32
"""Most bytes of a card line, as on an ASCII reader (:func:`edge.framing.parse_ascii`'s ``max_len``)."""

_LINE_ENDS = frozenset(b"\r\n")
_ENTER_CLEAR = frozenset(b"*#")
_DIGITS = frozenset(b"0123456789")
_LINE_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz \t")


def encode_keys(keys: str) -> list[bytes]:
    """The bytes a pin pad sends for ``keys`` typed one after the other: one single-byte write per key.

    For the simulator and tests; it refuses what the keypad has no key for.
    """
    bad = [k for k in keys if k not in KEYS]
    if bad or not keys:
        raise ValueError(f"a pin pad has the keys 0-9, * and #; cannot type {keys!r}")
    return [k.encode("ascii") for k in keys]


class PinpadParser:
    """A pin pad's byte stream -> cards, PINs and faults, with the shape of :class:`edge.framing.FrameParser`.

    ``feed(data, now)`` takes the bytes of one read and the monotonic time they arrived; ``reset()`` forgets a
    partial run and half-typed digits (the port was reopened). Not thread-safe: one reader feeds it.
    """

    def __init__(self, *, clock: Clock | None = None, max_len: int = LINE_MAX, key_gap_s: float = KEY_GAP_S,
                 pins: PinEntry | None = None) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self.max_len = max_len
        self.key_gap_s = key_gap_s
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._pins = pins if pins is not None else PinEntry()
        self._run = bytearray()
        self._run_at: float | None = None
        """When the run's latest bytes arrived (None: no run, or nothing being discarded)."""
        self._discarding = False
        """An over-long run was reported: drop bytes until a line end or a pause."""

    def feed(self, data: bytes, now: float | None = None) -> list[Item]:
        """The cards, PINs and faults that ``data``, arrived at ``now``, completes.

        ``now`` defaults to the injected clock, for a caller that passes bytes only; a reader that stamps its
        reads should pass that stamp, so the key timing is the one its badges are timed by.
        """
        if now is None:
            now = self._clock.monotonic()
        items: list[Item] = []
        if self._run_at is not None and now - self._run_at > self.key_gap_s:
            self._settle(self._run_at, items)  # a pause: what came before was typed, or a cut line
            self._discarding = False
        for byte in bytes(data):
            if byte in _LINE_ENDS:
                if not self._discarding:
                    items.extend(self._line())
                self._run.clear()
                self._discarding = False
            elif self._discarding:
                continue
            elif byte in _ENTER_CLEAR:
                self._settle(now, items)
                self._key(chr(byte), now, items)
            else:
                self._run.append(byte)
                if len(self._run) > self.max_len:
                    items.append(FrameFault("oversized", f"more than {self.max_len} bytes without a line end",
                                            bytes(self._run[:RAW_CAP])))
                    self._run.clear()
                    self._discarding = True
        self._run_at = now if (self._run or self._discarding) else None
        return items

    def reset(self) -> None:
        """Forget a partial run and any half-typed PIN, e.g. after the port was reopened."""
        self._run.clear()
        self._run_at = None
        self._discarding = False
        self._pins.reset()

    # -- internals ------------------------------------------------------------------------------------------

    def _line(self) -> list[Item]:
        """The run, ended by its terminator: a card line decoded exactly as an ASCII reader's (blank: nothing)."""
        items, _rest = parse_ascii(bytes(self._run) + b"\n", self.max_len)
        return items

    def _settle(self, at: float, items: list[Item]) -> None:
        """End the run without a line end (a key or a pause came): digits are keys typed at ``at``."""
        run = bytes(self._run).strip(b" \t")
        self._run.clear()
        if not run:
            return
        if all(b in _DIGITS for b in run):
            for digit in run.decode("ascii"):
                self._key(digit, at, items)
        elif all(b in _LINE_CHARS for b in run):
            items.append(FrameFault("truncated", f"{len(run)} bytes without a line end, then a key or a pause",
                                    run[:RAW_CAP]))
        else:
            items.append(FrameFault("garbled", "bytes that are neither a key nor part of a card line",
                                    run[:RAW_CAP]))

    def _key(self, key: str, at: float, items: list[Item]) -> None:
        pin = self._pins.key(key, at)
        if pin is not None:
            items.append(pin)


@register(PROTOCOL)
def _pinpad_reader(door: str, config: ReaderConfig, deps: ReaderDeps) -> SerialReader:
    """A pin pad: a serial port like an ASCII reader's, framed by :class:`PinpadParser`."""
    return SerialReader(door, config.url, PROTOCOL, deps.on_card, baudrate=config.baudrate, clock=deps.clock,
                        repeat_ignore_s=config.repeat_ignore_s, parser=PinpadParser(clock=deps.clock),
                        loop=deps.loop)
