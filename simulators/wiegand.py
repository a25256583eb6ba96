"""A Wiegand reader on gpiozero mock pins: real pulse trains on D0/D1 for the edge's real edge callbacks.

A reader sends each bit as a short low pulse (``pulse_s``, about 50 us) on D0 for a 0 or D1 for a 1, one
bit every ``interval_s`` (about 2 ms), and lets both lines idle high between frames. The simulator does the
same with ``MockPin.drive_low()`` / ``drive_high()`` from its own thread, so the edge's
``DigitalInputDevice`` callbacks fire on real falling edges and its inter-bit timeout really ends the frame.
The pulse timing is physical, so this thread does wait in real time (a pulse is a busy wait of a few tens of
microseconds, a bit gap a short sleep); nothing in the edge's logic does.

Frames are queued and sent one after another, each followed by ``frame_gap_s`` of idle line (longer than any
edge's ``frame_timeout_ms``), so two cards or two keys never run together. On a loaded test machine the
scheduler can stretch a gap between two bits past the edge's frame timeout; the edge then rightly reads two
broken frames. The simulator measures every gap, and a frame it failed to send in time is sent again after
the idle gap (at most ``MAX_TRIES`` times, like a holder presenting the card again) and counted in
:attr:`WiegandSimulator.stretched_frames`, so a test can tell its machine's hiccup from a decoder bug.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import Any, Self

from gpiozero.pins.mock import MockPin

from doorkeep import card_formats as cf
from edge.osdp.cards import bits_of, encode_wiegand

PULSE_S = 50e-6
INTERVAL_S = 0.002
FRAME_GAP_S = 0.1
"""Idle line after every frame: four times the edge's default 25 ms frame timeout."""
STRETCHED_S = 0.02
"""A gap between two bits this long may have ended the frame at an edge with the default 25 ms timeout."""
MAX_TRIES = 3


def card_bits(fmt: str, number: str) -> list[int]:
    """The bits a reader sends for a card (parity included), in every layout doorkeep reads.

    ``fmt`` is a credential format as the people file writes it (``wiegand26``/``34``/``37`` with
    ``"FACILITY:CARD"``, ``h10302`` with ``"CARD"``, ``wiegand_raw`` with ``"BITS:PAYLOAD"``) or a layout name
    (``h10301``, ``h10306``, ``n10002``, ``h10304``, ``h10302``, ``raw``; doorkeep/card_formats.py), so a test
    can send each named format through the edge's real decoder. Raises ValueError for what no reader sends.
    """
    return cf.card_bits(fmt, number)


def key_bits(key: str, burst: int = 4) -> list[int]:
    """A keypad key as a 4-bit burst, or an 8-bit one (high nibble = complement of the low one)."""
    codes = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
    if key not in codes:
        raise ValueError(f"a Wiegand keypad sends 0-9, * and #, not {key!r}")
    if burst not in (4, 8):
        raise ValueError(f"keypad bursts are 4 or 8 bits, not {burst}")
    code = codes[key]
    value = code if burst == 4 else ((~code & 0xF) << 4) | code
    return [(value >> (burst - 1 - i)) & 1 for i in range(burst)]


class WiegandSimulator:
    """One Wiegand reader wired to ``d0_pin``/``d1_pin`` of a ``MockFactory`` (the edge agent's own)."""

    def __init__(self, factory: Any, d0_pin: int, d1_pin: int, *, fmt: str = "wiegand26",
                 pulse_s: float = PULSE_S, interval_s: float = INTERVAL_S, frame_gap_s: float = FRAME_GAP_S) -> None:
        self.d0: MockPin = factory.pin(d0_pin)
        self.d1: MockPin = factory.pin(d1_pin)
        for line in (self.d0, self.d1):
            if not isinstance(line, MockPin):
                raise TypeError(f"the Wiegand simulator needs a MockFactory, got {type(factory).__name__}")
        self.d0_pin, self.d1_pin = d0_pin, d1_pin
        self.fmt = fmt
        self.pulse_s, self.interval_s, self.frame_gap_s = pulse_s, interval_s, frame_gap_s
        self.frames_sent = 0
        self.bits_sent = 0
        self.stretched_frames = 0
        """Frames whose bit gaps the machine stretched past ``STRETCHED_S`` (each was sent again)."""
        self._q: queue.Queue[tuple[list[int], threading.Event, list[float]] | None] = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"wiegand-sim-{d0_pin}-{d1_pin}", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        """Where the reader is wired, in the form the edge names it (``gpio://D0,D1``)."""
        return f"gpio://{self.d0_pin},{self.d1_pin}"

    # -- what a tester does at the reader --------------------------------------------

    def badge(self, number: str, fmt: str | None = None) -> float:
        """Present a card written as :func:`card_bits` takes it (``"FACILITY:CARD"`` for the default
        ``wiegand26``); returns when its last bit left (monotonic), for latency figures."""
        return self.send_bits(card_bits(fmt or self.fmt, number))

    def present_card(self, fmt: str, facility: int, number: int) -> float:
        return self.send_bits(bits_of(encode_wiegand(fmt, facility, number)))

    def press_keys(self, keys: str, burst: int = 4) -> float:
        """Type keys on the reader's keypad, one burst per key (``#`` submits, ``*`` clears)."""
        sent = 0.0
        for key in keys:
            sent = self.send_bits(key_bits(key, burst))
        return sent

    def enter_pin(self, pin: str) -> float:
        """A PIN as a keypad reader sends it: the digits, then ``#``."""
        if not pin.isdigit():
            raise ValueError(f"a PIN is digits only, got {pin!r}")
        return self.press_keys(pin + "#")

    def send_bits(self, bits: Sequence[int], *, wait: bool = True) -> float:
        """Queue one frame of raw bits (any length, bad parity welcome); by default wait until it is on the wire.

        Returns the monotonic time the last bit left (0.0 with ``wait=False``).
        """
        if self._closed:
            raise RuntimeError("Wiegand simulator is closed")
        done = threading.Event()
        sent: list[float] = []
        self._q.put(([1 if b else 0 for b in bits], done, sent))
        if not wait:
            return 0.0
        if not done.wait(10.0):
            raise RuntimeError("the Wiegand simulator did not send its frame within 10 s")
        return sent[0] if sent else 0.0

    # -- the wire ----------------------------------------------------------------------

    def _pulse(self, line: MockPin) -> None:
        line.drive_low()  # the falling edge: the edge's callback runs here, in this thread
        end = time.perf_counter() + self.pulse_s
        while time.perf_counter() < end:
            pass
        line.drive_high()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            bits, done, sent = item
            try:
                for _ in range(MAX_TRIES):
                    stretched = self._train(bits)
                    time.sleep(self.frame_gap_s)  # idle line: the edge's frame timeout ends the frame
                    if not stretched:
                        break
                    self.stretched_frames += 1
                sent.append(time.monotonic())
                self.frames_sent += 1
            finally:
                done.set()

    def _train(self, bits: list[int]) -> bool:
        """One frame on the wire; True if a gap between two bits ran past ``STRETCHED_S``."""
        stretched = False
        last = 0.0
        for i, bit in enumerate(bits):
            if i:
                time.sleep(self.interval_s)
            now = time.perf_counter()
            stretched = stretched or (i > 0 and now - last > STRETCHED_S)
            last = now
            self._pulse(self.d1 if bit else self.d0)
            self.bits_sent += 1
        return stretched

    def close(self) -> None:
        """Stop the wire thread (queued frames still go out first)."""
        if self._closed:
            return
        self._closed = True
        self._q.put(None)
        self._thread.join(10.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
