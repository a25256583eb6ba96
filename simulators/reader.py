"""A badge reader that writes real protocol bytes into a pseudo-terminal.

The edge opens the pty's slave path with pyserial exactly as it would open
/dev/ttyUSB0, so framing, timeouts and disconnects are exercised through the
real serial stack rather than a mocked one.
"""

from __future__ import annotations

import os
import time
import tty

from edge.framing import PROTOCOLS, encode_ascii, encode_em4100
from edge.kinds.pinpad import encode_keys

#: The serial reader kinds this simulator speaks: EM4100, ASCII, and the pin pad (ASCII card lines, one byte
#: per key press: edge/kinds/pinpad.py).
SERIAL_PROTOCOLS: tuple[str, ...] = (*PROTOCOLS, "pinpad")


class ReaderSimulator:
    """One simulated reader; the edge reads from :attr:`path`."""

    def __init__(self, protocol: str = "em4100", *, crlf: bool = False) -> None:
        """``crlf``: an EM4100 reader of the ID-12/ID-20 family, which sends CR LF before each frame's ETX
        (an RDM6300 does not); the edge reads both without being told which (docs/readers.md)."""
        if protocol not in SERIAL_PROTOCOLS:
            raise ValueError(f"unknown reader protocol {protocol!r}; allowed: {', '.join(SERIAL_PROTOCOLS)}")
        if crlf and protocol != "em4100":
            raise ValueError(f"crlf is an EM4100 frame form; a {protocol} reader ends lines with CR LF anyway")
        self.protocol = protocol
        self.crlf = crlf
        self.frames_sent = 0
        self._master, self._slave = os.openpty()
        # Raw on both ends: no echo back into the master, no CR/LF translation of frame bytes.
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self._path = os.ttyname(self._slave)
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    def badge(self, number: str) -> float:
        """Present a card; the return value is the moment the last byte left, for latency figures."""
        frame = encode_em4100(number, crlf=self.crlf) if self.protocol == "em4100" else encode_ascii(number)
        self._write(frame)  # one write, so the frame reaches the edge as one burst like a real reader's
        sent_at = time.monotonic()
        self.frames_sent += 1
        return sent_at

    def enter_pin(self, pin: str) -> float:
        """Type a PIN on the reader's keypad: a line "P" + digits on an ASCII reader; on a pin pad the digits
        key by key, then ``#``."""
        if self.protocol == "em4100":
            raise ValueError("EM4100 readers have no keypad; use an ascii or pinpad reader for PIN doors")
        if not pin.isdigit():
            raise ValueError(f"a PIN is digits only, got {pin!r}")
        if self.protocol == "pinpad":
            return self.press_keys(pin + "#")
        self._write(encode_ascii("P" + pin))
        return time.monotonic()

    def press_keys(self, keys: str) -> float:
        """Press keys on a pin pad's keypad (``0``-``9``, ``*`` clears, ``#`` enters), one byte per key, each
        its own write as a person's presses are; returns when the last key left. Pin pads only."""
        if self.protocol != "pinpad":
            raise ValueError(f"a {self.protocol} reader sends no single key presses; use a pinpad reader")
        for key in encode_keys(keys):
            self._write(key)
        return time.monotonic()

    def write_raw(self, data: bytes) -> None:
        """Send arbitrary bytes, e.g. line noise or a deliberately broken frame."""
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self._closed:
            raise RuntimeError("reader simulator is closed")
        view = memoryview(data)
        while view:
            written = os.write(self._master, view)
            view = view[written:]

    def close(self) -> None:
        """Unplug the reader: the edge sees its port fail, as with a pulled USB cable."""
        if self._closed:
            return
        self._closed = True
        for fd in (self._slave, self._master):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> ReaderSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
