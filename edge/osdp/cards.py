"""Card bits from an OSDP RAW reply -> the credential numbers the site's people file uses (pure).

Wiegand formats with the standard parity layout decode to ``"FACILITY:CARD"`` in decimal (what is printed on
the card or its box), so the people file reads ``format = "wiegand26", number = "12:34567"``:

* ``wiegand26`` (H10301): even parity over bits 1-12, facility 8 bits, card 16 bits, odd parity over 13-24.
* ``wiegand34``: even parity over bits 1-16, facility 16 bits, card 16 bits, odd parity over 17-32.
* ``wiegand37`` (H10304): even parity over bits 1-18, facility 16 bits, card 19 bits, odd parity over 18-35.

Anything else (other bit counts, the "unspecified" raw format) becomes ``osdp_raw`` with the number
``"BITS:HEX"`` - the bit count and the bytes exactly as the reader sent them - so no read is ever lost to a
format doorkeep does not know. A Wiegand frame with bad parity is a fault, never a card.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.osdp.packet import RawCard

WIEGAND_FORMATS = ("wiegand26", "wiegand34", "wiegand37")
CARD_FORMATS = (*WIEGAND_FORMATS, "osdp_raw")


class ParityError(ValueError):
    """A Wiegand frame whose parity bits do not match: skipped and counted, never turned into a card."""


@dataclass(frozen=True)
class _Layout:
    name: str
    bits: int
    even_span: tuple[int, int]  # inclusive bit indices (0 = first bit on the wire) covered by the leading parity
    odd_span: tuple[int, int]
    facility: tuple[int, int]   # [start, end) bit indices
    card: tuple[int, int]


_LAYOUTS = {
    26: _Layout("wiegand26", 26, (1, 12), (13, 24), (1, 9), (9, 25)),
    34: _Layout("wiegand34", 34, (1, 16), (17, 32), (1, 17), (17, 33)),
    37: _Layout("wiegand37", 37, (1, 18), (18, 35), (1, 17), (17, 36)),
}


def bits_of(card: RawCard) -> list[int]:
    """The first ``card.bits`` bits, most significant bit of the first byte first (the OSDP packing)."""
    value = int.from_bytes(card.data, "big")
    total = len(card.data) * 8
    return [(value >> (total - 1 - i)) & 1 for i in range(card.bits)]


def _int(bits: list[int], span: tuple[int, int]) -> int:
    value = 0
    for b in bits[span[0] : span[1]]:
        value = (value << 1) | b
    return value


def decode_card(card: RawCard) -> tuple[str, str]:
    """``(format, number)`` for a RAW reply; raises :class:`ParityError` on a Wiegand frame that fails parity."""
    layout = _LAYOUTS.get(card.bits)
    if layout is None:
        return "osdp_raw", f"{card.bits}:{card.data.hex().upper()}"
    bits = bits_of(card)
    even = sum(bits[layout.even_span[0] : layout.even_span[1] + 1]) + bits[0]
    odd = sum(bits[layout.odd_span[0] : layout.odd_span[1] + 1]) + bits[-1]
    if even % 2 or odd % 2 == 0:
        raise ParityError(f"{layout.name} frame fails its parity check")
    return layout.name, f"{_int(bits, layout.facility)}:{_int(bits, layout.card)}"


def encode_wiegand(fmt: str, facility: int, number: int) -> RawCard:
    """The RAW reply a reader sends for a Wiegand card (used by the simulator and tests)."""
    layout = next((lay for lay in _LAYOUTS.values() if lay.name == fmt), None)
    if layout is None:
        raise ValueError(f"unknown Wiegand format {fmt!r}; known: {', '.join(WIEGAND_FORMATS)}")
    fbits = layout.facility[1] - layout.facility[0]
    cbits = layout.card[1] - layout.card[0]
    if not 0 <= facility < (1 << fbits) or not 0 <= number < (1 << cbits):
        raise ValueError(f"{fmt}: facility must fit {fbits} bits and card number {cbits} bits")
    bits = [0] * layout.bits
    for i in range(fbits):
        bits[layout.facility[0] + i] = (facility >> (fbits - 1 - i)) & 1
    for i in range(cbits):
        bits[layout.card[0] + i] = (number >> (cbits - 1 - i)) & 1
    bits[0] = sum(bits[layout.even_span[0] : layout.even_span[1] + 1]) % 2
    bits[-1] = 1 - sum(bits[layout.odd_span[0] : layout.odd_span[1] + 1]) % 2
    nbytes = (layout.bits + 7) // 8
    value = 0
    for b in bits:
        value = (value << 1) | b
    value <<= nbytes * 8 - layout.bits
    return RawCard(0, 1, layout.bits, value.to_bytes(nbytes, "big"))


def parse_number(fmt: str, number: str) -> str | None:
    """Why ``number`` cannot be a card of ``fmt`` (for the config loader), or None if it can."""
    if fmt in WIEGAND_FORMATS:
        layout = next(lay for lay in _LAYOUTS.values() if lay.name == fmt)
        parts = number.split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            return f"{number!r} is not FACILITY:CARD in decimal, e.g. 12:34567"
        if int(parts[0]) >= 1 << (layout.facility[1] - layout.facility[0]) \
                or int(parts[1]) >= 1 << (layout.card[1] - layout.card[0]):
            return f"{number!r} does not fit the {fmt} facility/card field widths"
        return None
    if fmt == "osdp_raw":
        parts = number.split(":")
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1] \
                or any(c not in "0123456789ABCDEFabcdef" for c in parts[1]):
            return f"{number!r} is not BITS:HEX, e.g. 40:0123456789"
        return None
    return None
