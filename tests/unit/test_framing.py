from __future__ import annotations

import random

import pytest

from edge.framing import (
    PROTOCOLS,
    RAW_CAP,
    CardRead,
    FrameFault,
    FrameParser,
    encode_ascii,
    encode_em4100,
    parse_ascii,
    parse_em4100,
)

STX, ETX = b"\x02", b"\x03"
CARD = "0F00A1B2C3"
OTHER = "1234567890"


def kinds(items: list) -> list[str]:
    return [i.kind if isinstance(i, FrameFault) else "card" for i in items]


def feed_split(parser_protocol: str, stream: bytes, *cuts: int) -> list:
    parser = FrameParser(parser_protocol)
    items: list = []
    bounds = [0, *cuts, len(stream)]
    for a, b in zip(bounds, bounds[1:]):
        items.extend(parser.feed(stream[a:b]))
    return items


# -- EM4100 -------------------------------------------------------------------


def test_known_vector_checksum_computed_by_hand() -> None:
    checksum = 0x0F ^ 0x00 ^ 0xA1 ^ 0xB2 ^ 0xC3
    assert checksum == 0xDF
    expected = STX + b"0F00A1B2C3" + b"DF" + ETX
    assert encode_em4100(CARD) == expected
    assert len(expected) == 14
    assert parse_em4100(expected) == ([CardRead(CARD, "em4100")], b"")


def test_round_trip_and_lowercase_reported_uppercase() -> None:
    for number in (CARD, OTHER, "FFFFFFFFFF", "0000000000"):
        assert parse_em4100(encode_em4100(number)) == ([CardRead(number, "em4100")], b"")
    lower = STX + b"0f00a1b2c3df" + ETX
    assert parse_em4100(lower) == ([CardRead(CARD, "em4100")], b"")


def test_encode_rejects_what_no_reader_sends() -> None:
    for bad in ("0F00A1B2C", "0F00A1B2C3D", "0F00A1B2CZ", ""):
        with pytest.raises(ValueError):
            encode_em4100(bad)


def test_garbage_before_frame_is_one_fault_then_the_card() -> None:
    junk = b"\xff\x00noise\x03"
    items, rest = parse_em4100(junk + encode_em4100(CARD))
    assert rest == b""
    assert kinds(items) == ["garbled", "card"]
    assert items[0].raw == junk
    assert items[1] == CardRead(CARD, "em4100")


def test_bad_checksum() -> None:
    frame = STX + b"0F00A1B2C3" + b"DE" + ETX
    items, rest = parse_em4100(frame + encode_em4100(OTHER))
    assert kinds(items) == ["checksum", "card"]
    assert "DE" in items[0].detail and "DF" in items[0].detail
    assert items[0].raw == frame
    assert items[1].number == OTHER and rest == b""


def test_invalid_hex_is_garbled() -> None:
    frame = STX + b"0F00A1B2CG" + b"DF" + ETX
    items, rest = parse_em4100(frame)
    assert kinds(items) == ["garbled"] and rest == b""


def test_short_frame_is_truncated() -> None:
    items, rest = parse_em4100(STX + b"0F00A1B2DF" + ETX + encode_em4100(CARD))
    assert kinds(items) == ["truncated", "card"] and rest == b""


def test_oversized_without_etx_resyncs_on_next_stx() -> None:
    stream = STX + b"0F00A1B2C3DF0000" + encode_em4100(CARD)
    items, rest = parse_em4100(stream)
    # The STX and 15 bytes (the longest frame, an ID-12's, less its ETX) are the oversized frame; the
    # leftover "0" is junk before the next STX.
    assert kinds(items) == ["oversized", "garbled", "card"]
    assert items[0].raw == stream[:16]
    assert items[1].raw == b"0"
    assert items[-1].number == CARD
    assert rest == b""


# -- ID-12 / ID-20 (ID Innovations): CR LF before ETX --------------------------------------------------------
# The datasheet's ASCII output: STX (02h), 10 ASCII data characters, 2 ASCII checksum characters (the XOR of
# the five data bytes), CR (0Dh), LF (0Ah), ETX (03h): 16 bytes. Built here byte by byte from that layout.

ID12_FRAME = b"\x02" + b"0F00A1B2C3" + b"DF" + b"\x0d\x0a" + b"\x03"


def test_id12_frame_with_cr_lf_before_etx_is_a_card() -> None:
    assert len(ID12_FRAME) == 16
    assert parse_em4100(ID12_FRAME) == ([CardRead(CARD, "em4100")], b"")
    assert encode_em4100(CARD, crlf=True) == ID12_FRAME


def test_id12_and_rdm6300_frames_mixed_give_the_same_cards_at_every_split() -> None:
    stream = ID12_FRAME + encode_em4100(OTHER) + b"zz" + encode_em4100(OTHER, crlf=True) + encode_em4100(CARD)
    whole = feed_split("em4100", stream)
    assert whole == [CardRead(CARD, "em4100"), CardRead(OTHER, "em4100"), FrameFault("garbled",
                     "2 bytes outside any frame", b"zz"), CardRead(OTHER, "em4100"), CardRead(CARD, "em4100")]
    for cut in range(len(stream) + 1):
        assert feed_split("em4100", stream, cut) == whole, cut
    assert feed_split("em4100", stream, *range(1, len(stream))) == whole  # byte by byte


def test_id12_frame_with_bad_checksum_is_still_a_checksum_fault() -> None:
    frame = STX + b"0F00A1B2C3" + b"DE" + b"\r\n" + ETX
    items, rest = parse_em4100(frame + ID12_FRAME)
    assert kinds(items) == ["checksum", "card"] and rest == b""
    assert items[0].raw == frame


@pytest.mark.parametrize("tail", [b"\r", b"\n", b"\n\r", b"\r\r", b"00"], ids=["cr", "lf", "lf-cr", "cr-cr", "digits"])
def test_anything_but_exactly_cr_lf_after_the_checksum_is_a_fault(tail: bytes) -> None:
    frame = STX + b"0F00A1B2C3DF" + tail + ETX
    items, rest = parse_em4100(frame + encode_em4100(OTHER))
    assert kinds(items) == ["oversized", "card"] and rest == b""
    assert items[0].raw == frame and items[1].number == OTHER


def test_cr_lf_inside_the_digits_is_not_skipped() -> None:
    frame = STX + b"0F00A1B2C3" + b"\r\n" + b"DF" + ETX  # 14 bytes inside, but the CR LF is not at the end
    items, _ = parse_em4100(frame)
    assert kinds(items) == ["oversized"]


def test_id12_frame_missing_its_etx_is_oversized_and_the_next_frame_reads() -> None:
    items, rest = parse_em4100(ID12_FRAME[:-1] + b"\r" + ID12_FRAME)
    assert kinds(items) == ["oversized", "card"] and rest == b""
    assert items[0].raw == ID12_FRAME[:-1] + b"\r"


def test_new_stx_inside_frame_truncates_previous() -> None:
    partial = STX + b"0F00A1"
    items, rest = parse_em4100(partial + encode_em4100(CARD))
    assert kinds(items) == ["truncated", "card"]
    assert items[0].raw == partial
    assert rest == b""


def test_partial_frame_is_kept_in_rest() -> None:
    frame = encode_em4100(CARD)
    items, rest = parse_em4100(frame[:9])
    assert items == [] and rest == frame[:9]
    items, rest = parse_em4100(rest + frame[9:])
    assert items == [CardRead(CARD, "em4100")] and rest == b""


def test_every_split_point_gives_the_same_items() -> None:
    stream = b"zz" + encode_em4100(CARD) + b"\x00" + encode_em4100(OTHER)
    whole = feed_split("em4100", stream)
    assert kinds(whole) == ["garbled", "card", "garbled", "card"]
    for cut in range(len(stream) + 1):
        assert feed_split("em4100", stream, cut) == whole, cut
    for a in range(len(stream) + 1):
        for b in range(a, len(stream) + 1):
            assert feed_split("em4100", stream, a, b) == whole, (a, b)
    assert feed_split("em4100", stream, *range(1, len(stream))) == whole  # byte by byte


def test_long_junk_run_is_reported_in_chunks_whatever_the_split() -> None:
    stream = bytes(range(0x41, 0x41 + 26)) * 6 + encode_em4100(CARD)  # 156 junk bytes
    whole = feed_split("em4100", stream)
    assert kinds(whole) == ["garbled", "garbled", "garbled", "card"]
    for cut in range(0, len(stream) + 1, 7):
        assert feed_split("em4100", stream, cut) == whole, cut


def test_random_garbage_never_raises_and_rest_stays_bounded() -> None:
    rng = random.Random(20251128)
    alphabet = b"\x02\x03" + b"0123456789ABCDEFabcdef" + bytes(range(256))
    for protocol in PROTOCOLS:
        parser = FrameParser(protocol)
        for _ in range(2000):
            chunk = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
            items = parser.feed(chunk)
            assert all(isinstance(i, (CardRead, FrameFault)) for i in items)
            assert all(len(i.raw) <= RAW_CAP for i in items if isinstance(i, FrameFault))
            assert len(parser._rest) <= RAW_CAP
        # After any amount of noise a clean frame still gets through.
        if protocol == "em4100":
            items = parser.feed(encode_em4100(CARD))
        else:
            items = parser.feed(b"\r" + encode_ascii("ABC123"))
        assert isinstance(items[-1], CardRead), protocol


def test_unknown_protocol_names_allowed_values() -> None:
    with pytest.raises(ValueError, match="em4100.*ascii"):
        FrameParser("wiegand")


# -- ASCII lines --------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\r", b"\n", b"\r\n"])
def test_ascii_line_endings(ending: bytes) -> None:
    items, rest = parse_ascii(b"12345" + ending + b"AbC9" + ending)
    assert items == [CardRead("12345", "ascii"), CardRead("AbC9", "ascii")]
    assert rest == b""


def test_ascii_crlf_split_between_reads_gives_no_extra_item() -> None:
    stream = encode_ascii("12345") + encode_ascii("678")
    whole = feed_split("ascii", stream)
    assert whole == [CardRead("12345", "ascii"), CardRead("678", "ascii")]
    for cut in range(len(stream) + 1):
        assert feed_split("ascii", stream, cut) == whole, cut


def test_ascii_empty_lines_ignored_and_padding_stripped() -> None:
    items, rest = parse_ascii(b"\r\n\r\n  42 \r\n\n")
    assert items == [CardRead("42", "ascii")] and rest == b""


def test_ascii_partial_line_kept() -> None:
    assert parse_ascii(b"1234") == ([], b"1234")


def test_ascii_garbled_characters() -> None:
    items, rest = parse_ascii(b"12-34\r\n99\r\n")
    assert kinds(items) == ["garbled", "card"]
    assert items[0].raw == b"12-34" and items[1].number == "99"


def test_ascii_oversized_line() -> None:
    items, rest = parse_ascii(b"A" * 40 + b"\r\nB1\r\n", max_len=32)
    assert kinds(items) == ["oversized", "card"] and items[1].number == "B1"
    assert rest == b""
    assert parse_ascii(b"A" * 32 + b"\n", max_len=32)[0] == [CardRead("A" * 32, "ascii")]


def test_ascii_oversized_without_terminator_is_reported_and_tail_dropped() -> None:
    parser = FrameParser("ascii")
    items = parser.feed(b"7" * 33)
    assert kinds(items) == ["oversized"]
    assert len(parser._rest) <= 32
    # The tail of that same line is dropped without a second fault or a bogus card.
    assert parser.feed(b"7" * 500) == []
    assert parser.feed(b"777\r\nOK1\n") == [CardRead("OK1", "ascii")]


def test_encode_ascii() -> None:
    assert encode_ascii("ABC123") == b"ABC123\r\n"
    with pytest.raises(ValueError):
        encode_ascii("AB C")
