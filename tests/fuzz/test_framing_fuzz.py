"""Fuzz the reader framing (edge/framing.py): whatever the serial line sends, parsing never raises,
never keeps more than a bounded ``rest``, and a real frame after the noise is still read."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from edge.framing import RAW_CAP, CardRead, FrameFault, FrameParser, encode_ascii, encode_em4100, parse_ascii, parse_em4100
from tests.fuzz.conftest import fuzz
from tests.fuzz.guard import only_raises
from tests.fuzz.strategies import chunked, cuts, wire_bytes

em4100_numbers = st.text("0123456789ABCDEFabcdef", min_size=10, max_size=10)
ascii_numbers = st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", min_size=1, max_size=32)


def _check_items(items: list, consumed: int) -> None:
    assert len(items) <= max(consumed, 0) + 1, "more items than bytes"
    for item in items:
        assert isinstance(item, (CardRead, FrameFault))
        if isinstance(item, FrameFault):
            assert len(item.raw) <= RAW_CAP
            assert item.kind in ("garbled", "checksum", "oversized", "truncated")


@fuzz(scale=3)
@given(data=wire_bytes)
def test_parse_em4100_never_raises_and_keeps_rest_within_raw_cap(data: bytes) -> None:
    with only_raises("framing"):
        items, rest = parse_em4100(data)
        assert len(rest) <= RAW_CAP
        assert data.endswith(rest)
        _check_items(items, len(data))


@fuzz(scale=3)
@given(data=wire_bytes, max_len=st.integers(min_value=1, max_value=64))
def test_parse_ascii_never_raises_and_keeps_rest_within_max_len(data: bytes, max_len: int) -> None:
    with only_raises("framing"):
        items, rest = parse_ascii(data, max_len=max_len)
        assert len(rest) <= max_len
        _check_items(items, len(data))


@fuzz(scale=3)
@given(protocol=st.sampled_from(["em4100", "ascii"]), data=wire_bytes, splits=cuts)
def test_frame_parser_feed_over_any_split_keeps_rest_bounded(protocol: str, data: bytes, splits: list[int]) -> None:
    parser = FrameParser(protocol)
    with only_raises("framing"):
        for chunk in chunked(data, splits):
            _check_items(parser.feed(chunk), len(chunk) + len(parser._rest))
            assert len(parser._rest) <= (RAW_CAP if protocol == "em4100" else 32)


@fuzz(scale=3)
@given(data=wire_bytes, splits=cuts)
def test_em4100_items_do_not_depend_on_how_reads_split_the_stream(data: bytes, splits: list[int]) -> None:
    whole, rest = parse_em4100(data)
    parser = FrameParser("em4100")
    pieces = [item for chunk in chunked(data, splits) for item in parser.feed(chunk)]
    assert pieces == whole
    assert parser._rest == rest


@fuzz(scale=1.5)
@given(noise=wire_bytes, number=em4100_numbers, trailer=wire_bytes, splits=cuts)
def test_em4100_card_after_line_noise_is_still_read(noise: bytes, number: str, trailer: bytes, splits: list[int]) -> None:
    parser = FrameParser("em4100")
    stream = noise + encode_em4100(number) + trailer
    items = [item for chunk in chunked(stream, splits) for item in parser.feed(chunk)]
    assert CardRead(number.upper(), "em4100") in items


@fuzz(scale=1.5)
@given(noise=wire_bytes, number=ascii_numbers, trailer=wire_bytes, splits=cuts)
def test_ascii_card_on_its_own_line_after_line_noise_is_still_read(noise: bytes, number: str, trailer: bytes,
                                                                     splits: list[int]) -> None:
    parser = FrameParser("ascii")
    stream = noise + b"\n" + encode_ascii(number) + trailer
    items = [item for chunk in chunked(stream, splits) for item in parser.feed(chunk)]
    assert CardRead(number, "ascii") in items


@fuzz(scale=1.5)
@given(data=wire_bytes, splits=cuts)
def test_ascii_cards_do_not_depend_on_how_reads_split_the_stream(data: bytes, splits: list[int]) -> None:
    whole = [i for i in FrameParser("ascii").feed(data) if isinstance(i, CardRead)]
    parser = FrameParser("ascii")
    pieces = [i for chunk in chunked(data, splits) for i in parser.feed(chunk) if isinstance(i, CardRead)]
    assert pieces == whole
