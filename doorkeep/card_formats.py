"""Wiegand card layouts, declared once: which bits are parity, facility and card number, and what a read is
called (pure; no I/O).

A Wiegand frame is only a count of bits: nothing in it says whether a 37-bit card is an H10304 (16-bit
facility, 19-bit card) or an H10302 (35-bit card, no facility), since both use the same parity layout. So the
split is a per-reader choice (``wiegand_formats`` in the device file's reader table, docs/readers.md), and
this module is where every part reads it from: the config loader (names and defaults), the edge's Wiegand and
OSDP decoders (bits -> card), the simulators (card -> bits), and the credential hash (the read's
``credential`` format is the family that enters the keyed hash, doorkeep/credentials.py).

Every layout has an even parity bit first and an odd parity bit last. ``even`` and ``odd`` are the inclusive
spans of bit indices (0 = first bit on the wire) that each covers besides itself; the two may overlap (the
37-bit layouts both count bit 18). Fields are ``[start, end)`` bit indices.

The layout each length had before the choice existed stays the default (h10301, h10306, h10304), and those
reads keep their credential formats ``wiegand26``/``wiegand34``/``wiegand37`` with ``"FACILITY:CARD"``, so
every card registered before still hashes the same. ``n10002`` splits the bits exactly as ``h10306`` does, so
a card reads the same number, and hashes the same, whichever of the two a reader is set to.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

RAW = "raw"
RAW_CREDENTIAL = "wiegand_raw"
"""The credential format of a ``raw`` read: ``"BITS:PAYLOAD"``, the frame's bit count and, in decimal, every
bit between the two parity bits."""


class ParityError(ValueError):
    """A Wiegand frame whose parity bits do not match: skipped and counted, never turned into a card."""


@dataclass(frozen=True)
class WiegandLayout:
    """One named way of reading a frame of ``bits`` bits."""

    name: str
    bits: int
    even: tuple[int, int]
    odd: tuple[int, int]
    facility: tuple[int, int] | None
    card: tuple[int, int]
    credential: str
    """The credential format a read carries (people files, the desk, the keyed hash)."""

    @property
    def facility_bits(self) -> int:
        return 0 if self.facility is None else self.facility[1] - self.facility[0]

    @property
    def card_bits(self) -> int:
        return self.card[1] - self.card[0]


_LAYOUTS: tuple[WiegandLayout, ...] = (
    WiegandLayout("h10301", 26, (1, 12), (13, 24), (1, 9), (9, 25), "wiegand26"),
    WiegandLayout("h10306", 34, (1, 16), (17, 32), (1, 17), (17, 33), "wiegand34"),
    WiegandLayout("n10002", 34, (1, 16), (17, 32), (1, 17), (17, 33), "wiegand34"),
    WiegandLayout("h10304", 37, (1, 18), (18, 35), (1, 17), (17, 36), "wiegand37"),
    WiegandLayout("h10302", 37, (1, 18), (18, 35), None, (1, 36), "h10302"),
    # raw: the payload between the parity bits, checked with the parity of the length's default layout.
    WiegandLayout(RAW, 26, (1, 12), (13, 24), None, (1, 25), RAW_CREDENTIAL),
    WiegandLayout(RAW, 34, (1, 16), (17, 32), None, (1, 33), RAW_CREDENTIAL),
    WiegandLayout(RAW, 37, (1, 18), (18, 35), None, (1, 36), RAW_CREDENTIAL),
)

LENGTHS: tuple[int, ...] = (26, 34, 37)
"""The frame lengths read as cards."""
DEFAULTS: dict[int, str] = {26: "h10301", 34: "h10306", 37: "h10304"}
"""The layout of each length when a reader names none: what doorkeep always read, so hashes stay."""
LAYOUTS: dict[tuple[str, int], WiegandLayout] = {(lay.name, lay.bits): lay for lay in _LAYOUTS}
NAMES_BY_LENGTH: dict[int, tuple[str, ...]] = {
    n: tuple(lay.name for lay in _LAYOUTS if lay.bits == n) for n in LENGTHS}
"""The names a reader may choose for each length, its default first."""
NAMES: tuple[str, ...] = tuple(dict.fromkeys(lay.name for lay in _LAYOUTS))
WIEGAND_CREDENTIALS: tuple[str, ...] = tuple(dict.fromkeys(lay.credential for lay in _LAYOUTS))
"""The credential formats a Wiegand or OSDP reader's card reads carry."""

Choice = tuple[tuple[int, str], ...]
"""A reader's configured layouts as ``((bits, name), ...)`` (hashable, for frozen config): lengths it does not
name keep their default."""


def check_choice(bits: int, name: str) -> str | None:
    """Why ``name`` cannot read ``bits``-bit frames (for the config loader), or None if it can."""
    if bits not in NAMES_BY_LENGTH:
        return f"{bits}-bit frames are not read as cards; formats are chosen for {', '.join(map(str, LENGTHS))} bits"
    if name not in NAMES_BY_LENGTH[bits]:
        return f"{name!r} is not a {bits}-bit format; use one of: {', '.join(NAMES_BY_LENGTH[bits])}"
    return None


def resolve(choice: Iterable[tuple[int, str]] = ()) -> dict[int, WiegandLayout]:
    """Every length's layout for a reader: its choices over the defaults. Raises ValueError on a bad choice
    (the config loader has refused those already, with the file and key)."""
    chosen = dict(DEFAULTS)
    for bits, name in choice:
        problem = check_choice(bits, name)
        if problem is not None:
            raise ValueError(problem)
        chosen[bits] = name
    return {bits: LAYOUTS[(name, bits)] for bits, name in chosen.items()}


_DEFAULT_LAYOUTS = resolve()


def _int(bits: Sequence[int], span: tuple[int, int]) -> int:
    value = 0
    for b in bits[span[0] : span[1]]:
        value = (value << 1) | (1 if b else 0)
    return value


def decode(bits: Sequence[int], layouts: Mapping[int, WiegandLayout] | None = None) -> tuple[str, str] | None:
    """``(credential format, number)`` for one frame, or None for a length read by no layout. Raises
    :class:`ParityError` when either parity bit is wrong: a damaged frame is never a card."""
    layout = (layouts if layouts is not None else _DEFAULT_LAYOUTS).get(len(bits))
    if layout is None:
        return None
    even = sum(bits[layout.even[0] : layout.even[1] + 1]) + bits[0]
    odd = sum(bits[layout.odd[0] : layout.odd[1] + 1]) + bits[-1]
    if even % 2 or odd % 2 == 0:
        raise ParityError(f"{layout.bits}-bit frame ({layout.name}) fails its parity check")
    card = _int(bits, layout.card)
    if layout.name == RAW:
        return layout.credential, f"{layout.bits}:{card}"
    if layout.facility is None:
        return layout.credential, str(card)
    return layout.credential, f"{_int(bits, layout.facility)}:{card}"


def encode(layout: WiegandLayout, facility: int, card: int) -> list[int]:
    """The bits a reader sends for a card (parity included), for the simulators and tests."""
    if not 0 <= facility < (1 << layout.facility_bits):
        raise ValueError(f"{layout.name}: facility must fit {layout.facility_bits} bits" if layout.facility
                         else f"{layout.name} has no facility code")
    if not 0 <= card < (1 << layout.card_bits):
        raise ValueError(f"{layout.name}: card number must fit {layout.card_bits} bits")
    bits = [0] * layout.bits
    if layout.facility is not None:
        for i in range(layout.facility_bits):
            bits[layout.facility[0] + i] = (facility >> (layout.facility_bits - 1 - i)) & 1
    for i in range(layout.card_bits):
        bits[layout.card[0] + i] = (card >> (layout.card_bits - 1 - i)) & 1
    bits[0] = sum(bits[layout.even[0] : layout.even[1] + 1]) % 2
    bits[-1] = 1 - sum(bits[layout.odd[0] : layout.odd[1] + 1]) % 2
    return bits


def find(fmt: str) -> WiegandLayout:
    """The layout a credential format (``wiegand37``, ``h10302``) or a layout name (``h10304``, ``n10002``)
    stands for; ``raw`` needs a length, so it is found with :data:`LAYOUTS` instead. Raises ValueError."""
    for lay in _LAYOUTS:
        if lay.name != RAW and (lay.name == fmt or lay.credential == fmt and lay.name in _BY_CREDENTIAL):
            return lay
    raise ValueError(f"unknown Wiegand format {fmt!r}; known: {', '.join(dict.fromkeys((*WIEGAND_CREDENTIALS, *NAMES)))}")


_BY_CREDENTIAL = (*DEFAULTS.values(), "h10302")
"""The layout a credential format is written in: its length's default (n10002 reads the same numbers)."""


def layout_for(fmt: str, number: str) -> tuple[WiegandLayout, int, int]:
    """``(layout, facility, card)`` for a card written as the people file writes it; ``fmt`` is a credential
    format (``wiegand37``, ``h10302``, ``wiegand_raw``) or a layout name (``h10304``, ``n10002``, ``raw``).
    Raises ValueError, naming the expected spelling, when the number does not fit."""
    if fmt in (RAW, RAW_CREDENTIAL):
        parts = number.split(":")
        if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) not in LENGTHS:
            raise ValueError(f"{number!r} is not BITS:PAYLOAD (BITS one of {', '.join(map(str, LENGTHS))}, "
                             "PAYLOAD in decimal), e.g. 26:789012")
        layout = LAYOUTS[(RAW, int(parts[0]))]
        facility, card = 0, int(parts[1])
    else:
        layout = find(fmt)
        if layout.facility is None:
            if not number.isdigit():
                raise ValueError(f"{number!r} is not a {fmt} card number: write it in decimal, e.g. 123456789")
            facility, card = 0, int(number)
        else:
            parts = number.split(":")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise ValueError(f"{number!r} is not FACILITY:CARD in decimal, e.g. 12:34567")
            facility, card = int(parts[0]), int(parts[1])
    if facility >= 1 << layout.facility_bits or card >= 1 << layout.card_bits:
        raise ValueError(f"{number!r} does not fit {layout.name}'s fields ({layout.facility_bits}-bit facility, "
                         f"{layout.card_bits}-bit card)")
    return layout, facility, card


def card_bits(fmt: str, number: str) -> list[int]:
    """The bits a reader sends for a card written as the people file writes it (see :func:`layout_for`)."""
    layout, facility, card = layout_for(fmt, number)
    return encode(layout, facility, card)


def number_problem(fmt: str, number: str) -> str | None:
    """Why ``number`` cannot be a card of credential format ``fmt`` (for the config loader), or None.

    The number must also be spelled as the edge reads it (no leading zeros), since the keyed hash is taken
    over that spelling: ``"0123"`` would be a card no reader ever matches.
    """
    try:
        layout, facility, card = layout_for(fmt, number)
    except ValueError as exc:
        return str(exc)
    read = decode(encode(layout, facility, card), {layout.bits: layout})
    if read is None or read[1] != number:
        spelled = read[1] if read else "?"
        return f"{number!r} is not written as the reader sends it: write {spelled!r}"
    return None
