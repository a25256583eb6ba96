"""Byte framing for badge readers: pure functions, no I/O.

Serial lines drop, duplicate and corrupt bytes, and a reader may be powered
up halfway through a frame. The parsers therefore never raise on wire input:
every problem becomes a :class:`FrameFault` item and parsing resynchronises
on the next frame start, so one bad byte costs one frame, not the reader.

Each ``parse_*`` function takes everything received so far and returns the
items it could decide plus the unconsumed ``rest``, which the caller prepends
to the next read (``FrameParser`` does this). ``rest`` is bounded whatever
arrives, and for EM4100 the items do not depend on how the stream was split
into reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from doorkeep.visitor_pass import FORMAT as PASS_FORMAT, MAX_TOKEN_CHARS, PREFIX as PASS_PREFIX

PROTOCOLS: tuple[str, ...] = ("em4100", "ascii")

RAW_CAP = 64
"""Most bytes of offending input kept in a fault: enough to diagnose, never a flood."""

STX = 0x02
ETX = 0x03
_EM_DIGITS = 10
_EM_BODY = _EM_DIGITS + 2  # ten data digits and two checksum digits
_EM_CRLF = b"\r\n"
"""What ID-12/ID-20 readers (ID Innovations) send between the checksum and ETX; RDM6300 readers send nothing."""
_EM_FRAME = _EM_BODY + len(_EM_CRLF) + 2  # the longest frame: plus CR LF, STX and ETX
_HEX = frozenset(b"0123456789abcdefABCDEF")

_LINE_ENDS = b"\r\n"
_LINE_CHARS = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DISCARD = b"\x1a"
"""``rest`` marker for "drop bytes up to the next line end".

An over-long ASCII line is reported as soon as it passes ``max_len``; its
tail must then be dropped silently even though it arrives in later reads.
The pure parser carries that state in ``rest`` as ASCII SUB ("substitute
for a character in error"). A wire line that itself starts with SUB is
dropped silently too, which costs nothing: it could never be a valid card.
"""


@dataclass(frozen=True)
class CardRead:
    """A credential read off the wire, exactly as the reader sent it."""

    number: str
    format: str


@dataclass(frozen=True)
class FrameFault:
    """Input that was skipped, kept so the edge can count and log it."""

    kind: str  # "garbled" | "checksum" | "oversized" | "truncated"
    detail: str
    raw: bytes


Item = CardRead | FrameFault


def _fault(kind: str, detail: str, raw: bytes) -> FrameFault:
    return FrameFault(kind=kind, detail=detail, raw=bytes(raw[:RAW_CAP]))


def _xor(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def encode_em4100(number: str, *, crlf: bool = False) -> bytes:
    """The frame an EM4100 reader sends for ``number``: 14 bytes from an RDM6300, or 16 with ``crlf`` from
    an ID-12/ID-20 (STX, ten data digits, two checksum digits, CR, LF, ETX).

    Used by the simulator and tests, so it rejects what a real reader could
    never send instead of silently producing a frame the parser would refuse.
    """
    if len(number) != _EM_DIGITS or not all(ord(c) in _HEX for c in number):
        raise ValueError(f"EM4100 number must be {_EM_DIGITS} hex digits, got {number!r}")
    digits = number.upper().encode("ascii")
    checksum = _xor(bytes.fromhex(number))
    tail = _EM_CRLF if crlf else b""
    return bytes([STX]) + digits + f"{checksum:02X}".encode("ascii") + tail + bytes([ETX])


def _decode_em4100_body(body: bytes) -> Item:
    """Judge the bytes between one STX and its ETX: twelve hex digits, optionally followed by CR LF.

    Only the exact CR LF pair is dropped: a lone CR or LF, or CR LF anywhere else, is a damaged frame and
    judged by its length like any other.
    """
    raw = bytes([STX]) + body + bytes([ETX])
    if len(body) == _EM_BODY + len(_EM_CRLF) and body.endswith(_EM_CRLF):
        body = body[:_EM_BODY]
    if len(body) < _EM_BODY:
        return _fault("truncated", f"EM4100 frame has {len(body)} of {_EM_BODY} hex digits", raw)
    if len(body) > _EM_BODY:
        return _fault("oversized", f"EM4100 frame has {len(body)} bytes between STX and ETX, expected "
                      f"{_EM_BODY} hex digits (optionally followed by CR LF)", raw)
    if not all(byte in _HEX for byte in body):
        return _fault("garbled", "EM4100 frame contains non-hex bytes", raw)
    data = bytes.fromhex(body[:_EM_DIGITS].decode("ascii"))
    sent = int(body[_EM_DIGITS:], 16)
    computed = _xor(data)
    if sent != computed:
        return _fault("checksum", f"EM4100 checksum {sent:02X} sent, {computed:02X} computed", raw)
    return CardRead(number=body[:_EM_DIGITS].decode("ascii").upper(), format="em4100")


def parse_em4100(buffer: bytes) -> tuple[list[Item], bytes]:
    """Split an EM4100 byte stream into cards and faults.

    Both frame forms seen in the field are cards: RDM6300 (STX, 12 hex digits, ETX) and ID-12/ID-20 (the
    same with CR LF before ETX). A frame with no ETX within the longer form's length is ``oversized``.

    Junk between frames is reported once per run (in chunks of ``RAW_CAP``
    bytes, so a reader spewing noise still shows up), and a short junk run
    at the end of the buffer is held back in ``rest``: that way a run that
    straddles two reads is still one fault, and the items are the same for
    every way of splitting the stream. ``rest`` never exceeds ``RAW_CAP``.
    """
    items: list[Item] = []
    size = len(buffer)
    i = 0
    while i < size:
        if buffer[i] != STX:
            start = buffer.find(STX, i)
            end = size if start == -1 else start
            while end - i >= RAW_CAP:
                items.append(_fault("garbled", f"{RAW_CAP} bytes outside any frame", buffer[i : i + RAW_CAP]))
                i += RAW_CAP
            if start == -1:
                return items, bytes(buffer[i:])
            if end > i:
                items.append(_fault("garbled", f"{end - i} bytes outside any frame", buffer[i:end]))
            i = end
            continue

        # At an STX: a frame ends at the first ETX; another STX first means bytes were lost.
        window_end = min(size, i + _EM_FRAME)
        for k in range(i + 1, window_end):
            byte = buffer[k]
            if byte == ETX:
                items.append(_decode_em4100_body(bytes(buffer[i + 1 : k])))
                i = k + 1
                break
            if byte == STX:
                items.append(
                    _fault("truncated", f"EM4100 frame cut off after {k - i - 1} bytes by a new STX", buffer[i:k])
                )
                i = k
                break
        else:
            if window_end - i < _EM_FRAME:
                return items, bytes(buffer[i:])  # a frame still arriving
            items.append(
                _fault("oversized", f"no ETX within {_EM_FRAME - 2} bytes after STX", buffer[i:window_end])
            )
            i = window_end
    return items, b""


def encode_ascii(number: str) -> bytes:
    """The line an ASCII reader sends for ``number``."""
    if not number or not all(ord(c) in _LINE_CHARS for c in number):
        raise ValueError(f"ASCII card number must be non-empty letters and digits, got {number!r}")
    return number.encode("ascii") + b"\r\n"


_PASS_PREFIX = PASS_PREFIX.encode("ascii")


def _limit(line: bytes, max_len: int) -> int:
    """A line's length limit: ``max_len``, or a visitor pass's length for a line that starts like one (a serial
    QR scanner prints the pass's text: doorkeep/visitor_pass.py), so a pass is never cut as oversized."""
    return max(max_len, MAX_TOKEN_CHARS + 2) if line.lstrip(b" \t").startswith(_PASS_PREFIX) else max_len


def _decode_line(line: bytes, max_len: int) -> Item | None:
    max_len = _limit(line, max_len)
    if len(line) > max_len:
        return _fault("oversized", f"line of {len(line)} bytes exceeds {max_len}", line)
    text = line.strip(b" \t")
    if not text:
        return None
    if not all(byte in _LINE_CHARS for byte in text):
        return _fault("garbled", "line contains characters other than letters and digits", line)
    # A serial QR scanner's line that starts like a visitor pass is a pass (checked by the agent like one the
    # camera read), not a card number.
    return CardRead(number=text.decode("ascii"),
                    format=PASS_FORMAT if text.startswith(_PASS_PREFIX) else "ascii")


def _find_line_end(buffer: bytes, start: int) -> int:
    ends = [pos for pos in (buffer.find(b"\r", start), buffer.find(b"\n", start)) if pos != -1]
    return min(ends) if ends else -1


def parse_ascii(buffer: bytes, max_len: int = 32) -> tuple[list[Item], bytes]:
    """Split an ASCII line-reader stream into cards and faults.

    CR, LF and CRLF all end a line; the empty line a CRLF leaves between its
    two bytes is skipped, which also makes a CRLF split across reads harmless.
    Spaces and tabs around the number are tolerated because some readers pad.
    ``rest`` stays within ``max_len`` bytes, or a visitor pass's length for a line that starts like one.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len}")
    items: list[Item] = []
    i = 0
    discarding = buffer.startswith(_DISCARD)
    while True:
        end = _find_line_end(buffer, i)
        if end == -1:
            break
        if not discarding:
            item = _decode_line(bytes(buffer[i:end]), max_len)
            if item is not None:
                items.append(item)
        discarding = False
        i = end + 1
    tail = bytes(buffer[i:])
    if discarding:
        return items, _DISCARD
    if len(tail) > _limit(tail, max_len):
        items.append(_fault("oversized", f"more than {_limit(tail, max_len)} bytes without a line end", tail))
        return items, _DISCARD
    return items, tail


class FrameParser:
    """Keeps the unconsumed bytes between reads so callers just feed chunks."""

    def __init__(self, protocol: str) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown reader protocol {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self._rest = b""

    def feed(self, data: bytes) -> list[Item]:
        buffer = self._rest + bytes(data)
        if self.protocol == "em4100":
            items, self._rest = parse_em4100(buffer)
        else:
            items, self._rest = parse_ascii(buffer)
        return items

    def reset(self) -> None:
        """Forget a partial frame, e.g. after the port was reopened."""
        self._rest = b""
