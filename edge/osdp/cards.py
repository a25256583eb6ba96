"""Card bits from an OSDP RAW reply -> the credential numbers the site's people file uses (pure).

The Wiegand layouts (which bits are parity, facility and card, and what each read is called) are declared once
in :mod:`doorkeep.card_formats`, shared with the Wiegand reader on GPIO (edge/wiegand.py), the config loader
and the simulators. By default the 26, 34 and 37-bit frames decode as they always did:

* ``wiegand26`` (H10301): even parity over bits 1-12, facility 8 bits, card 16 bits, odd parity over 13-24.
* ``wiegand34`` (H10306): even parity over bits 1-16, facility 16 bits, card 16 bits, odd parity over 17-32.
* ``wiegand37`` (H10304): even parity over bits 1-18, facility 16 bits, card 19 bits, odd parity over 18-35.

A reader's ``wiegand_formats`` picks another layout per length (``n10002``, ``h10302``, ``raw``:
docs/readers.md). Anything else (other bit counts, the "unspecified" raw format) becomes ``osdp_raw`` with the
number ``"BITS:HEX"`` - the bit count and the bytes exactly as the reader sent them - so no read is ever lost
to a format doorkeep does not know. A Wiegand frame with bad parity is a fault, never a card.
"""

from __future__ import annotations

from collections.abc import Mapping

from doorkeep import card_formats as cf
from doorkeep.card_formats import ParityError, WiegandLayout
from edge.osdp.packet import RawCard

__all__ = ["CARD_FORMATS", "WIEGAND_FORMATS", "ParityError", "bits_of", "decode_card", "encode_wiegand",
           "pack_bits", "parse_number"]

WIEGAND_FORMATS: tuple[str, ...] = cf.WIEGAND_CREDENTIALS
CARD_FORMATS = (*WIEGAND_FORMATS, "osdp_raw")


def bits_of(card: RawCard) -> list[int]:
    """The first ``card.bits`` bits, most significant bit of the first byte first (the OSDP packing)."""
    value = int.from_bytes(card.data, "big")
    total = len(card.data) * 8
    return [(value >> (total - 1 - i)) & 1 for i in range(card.bits)]


def pack_bits(bits: list[int]) -> RawCard:
    """The bits as an OSDP RAW reply packs them (first bit = most significant bit of the first byte)."""
    nbytes = (len(bits) + 7) // 8
    value = 0
    for b in bits:
        value = (value << 1) | (1 if b else 0)
    value <<= nbytes * 8 - len(bits)
    return RawCard(0, 1, len(bits), value.to_bytes(nbytes, "big"))


def decode_card(card: RawCard, layouts: Mapping[int, WiegandLayout] | None = None) -> tuple[str, str]:
    """``(format, number)`` for a RAW reply, with the reader's chosen ``layouts`` (``cf.resolve``; None: the
    defaults); raises :class:`ParityError` on a Wiegand frame that fails parity."""
    read = cf.decode(bits_of(card), layouts)
    if read is None:
        return "osdp_raw", f"{card.bits}:{card.data.hex().upper()}"
    return read


def encode_wiegand(fmt: str, facility: int, number: int) -> RawCard:
    """The RAW reply a reader sends for a Wiegand card (used by the simulator and tests); ``fmt`` is a
    credential format or a layout name (``h10302`` takes facility 0)."""
    return pack_bits(cf.encode(cf.find(fmt), facility, number))


def parse_number(fmt: str, number: str) -> str | None:
    """Why ``number`` cannot be a card of ``fmt``, or None if it can."""
    if fmt in WIEGAND_FORMATS:
        return cf.number_problem(fmt, number)
    if fmt == "osdp_raw":
        parts = number.split(":")
        if len(parts) != 2 or not parts[0].isdigit() or not parts[1] \
                or any(c not in "0123456789ABCDEFabcdef" for c in parts[1]):
            return f"{number!r} is not BITS:HEX, e.g. 40:0123456789"
        return None
    return None
