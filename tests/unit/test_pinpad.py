"""The pin pad reader kind (edge/kinds/pinpad.py): ASCII card lines, one byte per key press, PINs through the
shared PinEntry, faults for what is neither, and never an exception on wire input."""

from __future__ import annotations

import os
import queue
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doorkeep.clock import FakeClock, SystemClock
from doorkeep.config import ReaderConfig
from edge.framing import RAW_CAP, CardRead, FrameFault, Item
from edge.kinds.pinpad import KEY_GAP_S, LINE_MAX, PinpadParser, encode_keys
from edge.reader_port import ReaderDeps, build_reader
from edge.readers import KEYPAD_IDLE_S, SerialReader
from simulators.reader import ReaderSimulator
from simulators.wait import wait_until

T0 = 1000.0
LATER = KEY_GAP_S * 2  # a pause: what came before was typed, not sent as a line
QUICK = KEY_GAP_S / 4  # within one burst


def card(number: str) -> CardRead:
    return CardRead(number, "ascii")


def pin(digits: str) -> CardRead:
    return CardRead("P" + digits, "keypad")


def kinds(items: list[Item]) -> list[str]:
    return [i.kind for i in items if isinstance(i, FrameFault)]


def typed(parser: PinpadParser, keys: str, start: float, gap: float = LATER) -> tuple[list[Item], float]:
    """Press ``keys`` one by one, ``gap`` apart, as a person does; the items and the time after the last key."""
    items: list[Item] = []
    now = start
    for key in encode_keys(keys):
        items += parser.feed(key, now)
        now += gap
    return items, now


# -- cards ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("end", [b"\r\n", b"\n", b"\r"])
def test_a_card_line_reads_as_an_ascii_card_whatever_its_line_end(end: bytes) -> None:
    assert PinpadParser().feed(b"40011111" + end, T0) == [card("40011111")]


def test_a_card_line_split_across_reads_within_a_burst_is_one_card() -> None:
    parser = PinpadParser()
    assert parser.feed(b"4001", T0) == []
    assert parser.feed(b"1111\r", T0 + QUICK) == [card("40011111")]
    assert parser.feed(b"\n", T0 + 2 * QUICK) == []  # the CRLF's LF after its CR is no second line


def test_a_blank_line_is_a_keep_alive_and_reads_nothing() -> None:
    parser = PinpadParser()
    assert parser.feed(b"\r\n", T0) == [] and parser.feed(b"  \t\n", T0 + 5) == []
    assert parser.feed(b"40011111\r\n", T0 + 10) == [card("40011111")]


def test_a_whole_p_line_is_passed_on_as_an_ascii_reader_would() -> None:
    """A line is a line: ``P0417`` as a line reads as the ASCII reader's PIN line, which the agent takes as a PIN."""
    assert PinpadParser().feed(b"P0417\r\n", T0) == [card("P0417")]


# -- keys and PINs -------------------------------------------------------------------------------------------

def test_keys_pressed_one_by_one_then_enter_give_the_pin() -> None:
    items, _ = typed(PinpadParser(), "0417#", T0)
    assert items == [pin("0417")]


def test_keys_that_arrive_in_one_burst_before_enter_are_keys_not_a_line() -> None:
    assert PinpadParser().feed(b"2468#", T0) == [pin("2468")]


def test_a_card_then_its_pin_in_one_read_give_both_in_order() -> None:
    assert PinpadParser().feed(b"40011111\r\n2468#", T0) == [card("40011111"), pin("2468")]


def test_star_clears_the_digits_typed_so_far() -> None:
    items, _ = typed(PinpadParser(), "99*1357#", T0)
    assert items == [pin("1357")]


def test_enter_without_digits_is_nothing() -> None:
    items, _ = typed(PinpadParser(), "#*#", T0)
    assert items == []


def test_at_most_twelve_digits_are_kept() -> None:
    items, _ = typed(PinpadParser(), "1234567890123456#", T0)
    assert items == [pin("123456789012")]


def test_digits_left_idle_are_forgotten_before_the_next_key() -> None:
    parser = PinpadParser()
    _, now = typed(parser, "12", T0)
    items, _ = typed(parser, "34#", now + KEYPAD_IDLE_S + 1)
    assert items == [pin("34")]


def test_digits_settled_by_a_pause_keep_the_time_they_were_typed() -> None:
    """``1234`` typed in one burst, ``#`` 11 s later: the digits are 11 s old, so the idle rule forgets them."""
    parser = PinpadParser()
    assert parser.feed(b"1234", T0) == []
    assert parser.feed(b"#", T0 + KEYPAD_IDLE_S + 1) == []


def test_a_lone_digit_between_card_lines_is_a_key() -> None:
    parser = PinpadParser()
    assert parser.feed(b"40011111\r\n", T0) == [card("40011111")]
    assert parser.feed(b"5", T0 + 1) == []
    assert parser.feed(b"40012345\r\n", T0 + 2) == [card("40012345")]  # the 5 was a key, not this line's start
    assert parser.feed(b"#", T0 + 3) == [pin("5")]


def test_digits_followed_within_the_gap_by_a_card_run_into_its_line() -> None:
    """The documented cost of the pause rule: nobody types and badges within 0.2 s."""
    parser = PinpadParser()
    parser.feed(b"7", T0)
    assert parser.feed(b"40011111\r\n", T0 + QUICK) == [card("740011111")]


def test_reset_forgets_a_partial_run_and_half_typed_digits() -> None:
    parser = PinpadParser()
    typed(parser, "12", T0)
    parser.feed(b"4001", T0 + 1)
    parser.reset()
    assert parser.feed(b"1111\r\n", T0 + 1 + QUICK) == [card("1111")]
    assert parser.feed(b"#", T0 + 2) == []


def test_without_a_time_the_injected_clock_times_the_bytes() -> None:
    clock = FakeClock(monotonic=T0)
    parser = PinpadParser(clock=clock)
    assert parser.feed(b"1234") == []
    clock.advance(KEYPAD_IDLE_S + 1)
    assert parser.feed(b"#") == []  # 11 s by the clock: forgotten
    assert parser.feed(b"56#") == [pin("56")]


# -- faults --------------------------------------------------------------------------------------------------

def test_a_line_with_bytes_no_card_has_is_garbled() -> None:
    items = PinpadParser().feed(b"40\x0011\xff\r\n", T0)
    assert kinds(items) == ["garbled"] and items[0].raw == b"40\x0011\xff"  # type: ignore[union-attr]


def test_letters_ended_by_a_pause_are_a_truncated_line() -> None:
    parser = PinpadParser()
    assert parser.feed(b"AB12", T0) == []
    assert kinds(parser.feed(b"40011111\r\n", T0 + LATER)) == ["truncated"]


def test_letters_ended_by_a_key_are_a_truncated_line_and_the_key_still_counts() -> None:
    parser = PinpadParser()
    typed(parser, "12", T0)
    assert kinds(parser.feed(b"AB*", T0 + 5)) == ["truncated"]
    assert parser.feed(b"9#", T0 + 6) == [pin("9")]  # * cleared the 12 typed before


def test_noise_ended_by_a_pause_is_garbled() -> None:
    parser = PinpadParser()
    parser.feed(b"\x00\x13\xfe", T0)
    assert kinds(parser.feed(b"\r\n", T0 + LATER)) == ["garbled"]


def test_an_over_long_run_is_one_fault_and_is_dropped_up_to_its_line_end() -> None:
    parser = PinpadParser()
    items = parser.feed(b"9" * 100 + b"#", T0)
    assert kinds(items) == ["oversized"] and len(items) == 1
    assert len(items[0].raw) <= RAW_CAP  # type: ignore[union-attr]
    assert parser.feed(b"12#\r\n40011111\r\n", T0 + QUICK) == [card("40011111")]


def test_a_pause_ends_the_dropping_too() -> None:
    parser = PinpadParser()
    parser.feed(b"A" * (LINE_MAX + 5), T0)
    assert parser.feed(b"2468#", T0 + LATER) == [pin("2468")]


# -- properties ----------------------------------------------------------------------------------------------

chunks = st.lists(st.tuples(st.binary(max_size=80), st.floats(min_value=0, max_value=30)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(chunks)
def test_any_bytes_at_any_times_never_raise_and_stay_bounded(reads: list[tuple[bytes, float]]) -> None:
    parser = PinpadParser()
    now = T0
    for data, dt in reads:
        now += dt
        for item in parser.feed(data, now):
            if isinstance(item, CardRead):
                assert item.format in ("ascii", "keypad") and item.number
            else:
                assert isinstance(item, FrameFault) and len(item.raw) <= RAW_CAP
        assert len(parser._run) <= LINE_MAX


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=10))
def test_a_burst_reads_the_same_however_it_is_split_into_reads(data: bytes, cuts: list[int]) -> None:
    whole = PinpadParser().feed(data, T0)
    parser = PinpadParser()
    split: list[Item] = []
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for a, b in zip(bounds, bounds[1:]):
        split += parser.feed(data[a:b], T0)
    assert split == whole


numbers = st.text("0123456789ABCDEFXYZ", min_size=1, max_size=LINE_MAX)
pins = st.text("0123456789", min_size=1, max_size=12)
events = st.lists(st.one_of(st.tuples(st.just("card"), numbers), st.tuples(st.just("pin"), pins)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(events, st.booleans())
def test_cards_and_pins_typed_as_people_do_come_out_as_sent(sent: list[tuple[str, str]], key_by_key: bool) -> None:
    parser = PinpadParser()
    now, out = T0, []
    for kind, value in sent:
        now += 1.0
        if kind == "card":
            out += parser.feed(value.encode() + b"\r\n", now)
        elif key_by_key:
            items, now = typed(parser, value + "#", now)
            out += items
        else:
            out += parser.feed(value.encode() + b"#", now)
    assert out == [card(v) if k == "card" else pin(v) for k, v in sent]


# -- the simulator and the real serial stack -----------------------------------------------------------------

def test_the_simulator_sends_card_lines_and_one_byte_per_key() -> None:
    got = bytearray()
    with ReaderSimulator("pinpad") as sim:
        fd = os.open(sim.path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)

        def read_all() -> bool:
            try:
                got.extend(os.read(fd, 256))
            except BlockingIOError:
                pass
            return got.endswith(b"*")

        try:
            sim.badge("40011111")
            sim.enter_pin("0417")
            sim.press_keys("*")
            assert wait_until(read_all, 2.0), bytes(got)
        finally:
            os.close(fd)
    assert bytes(got) == b"40011111\r\n0417#*"


def test_the_simulator_refuses_keys_a_pin_pad_does_not_have() -> None:
    with ReaderSimulator("pinpad") as sim:
        with pytest.raises(ValueError):
            sim.press_keys("12A")
    with ReaderSimulator("ascii") as sim, pytest.raises(ValueError):
        sim.press_keys("1")


Wired = tuple[ReaderSimulator, "queue.Queue[CardRead]", SerialReader]


@pytest.fixture
def pinpad() -> Iterator[Wired]:
    """A pin pad simulator on a pty, read by the reader the registry builds for ``pinpad`` (on its own loop)."""
    sim = ReaderSimulator("pinpad")
    cards: queue.Queue[CardRead] = queue.Queue()
    deps = ReaderDeps(lambda door, c, t: cards.put(c), SystemClock(), None, {})
    reader = build_reader("lab", ReaderConfig(sim.path, "pinpad"), deps)  # what the registry builds for the agent
    assert isinstance(reader, SerialReader) and reader.protocol == "pinpad"
    reader.start()
    yield sim, cards, reader
    reader.stop()
    sim.close()


def test_a_card_and_a_pin_typed_on_the_simulator_reach_on_card(pinpad: Wired) -> None:
    sim, cards, reader = pinpad
    sim.write_raw(b"\r\n")  # a keep-alive
    sim.badge("40011111")
    sim.enter_pin("2468")
    assert cards.get(timeout=2.0) == card("40011111")
    assert cards.get(timeout=2.0) == pin("2468")
    assert wait_until(lambda: reader.stats.frames == 2, 2.0) and reader.stats.faults == {}
