"""The OSDP panel delivers cards and keypad PINs with the code every reader kind shares (issue 15).

:class:`edge.readers.CardDelivery` counts a reader's frames and drops a held card's repeats, and
:class:`edge.readers.PinEntry` turns keypad keys into PIN reads; the serial and Wiegand readers use them, and so
does each reader on an OSDP bus. These tests hand the bus's reply handler the replies a reader would send (no
port, no thread): the live exchange is tests/e2e/test_osdp_interop.py and tests/e2e/test_osdp_door.py.
"""

from __future__ import annotations

import pytest

from doorkeep.clock import FakeClock
from edge.framing import CardRead
from edge.osdp import packet as pk
from edge.osdp.cards import encode_wiegand
from edge.osdp.cp import OsdpBus, OsdpReaderSpec
from edge.readers import KEYPAD_IDLE_S, KEYPAD_MAX, PinEntry

ADDR = 2

Seen = list[tuple[str, CardRead, float]]


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture()
def seen() -> Seen:
    return []


@pytest.fixture()
def bus(clock: FakeClock, seen: Seen) -> OsdpBus:
    spec = OsdpReaderSpec("gate_in", ADDR, secure=False, repeat_ignore_s=1.0)
    return OsdpBus("loop://", [spec], lambda door, card, t: seen.append((door, card, t)), clock=clock,
                   port=object())


def _reply(bus: OsdpBus, code: int, data: bytes) -> None:
    """What the bus thread does with a reader's verified reply to a POLL."""
    bus._online_reply(bus._readers[ADDR], pk.CMD_POLL, b"", pk.Packet(ADDR, code, data, reply=True))


def _keys(bus: OsdpBus, keys: str) -> None:
    _reply(bus, pk.REPLY_KEYPAD, pk.encode_keypad(keys))


def _card(bus: OsdpBus, facility: int, number: int) -> None:
    _reply(bus, pk.REPLY_RAW, pk.encode_raw(encode_wiegand("wiegand26", facility, number)))


def test_a_card_is_counted_passed_on_once_while_held_and_again_after_the_window(
        bus: OsdpBus, clock: FakeClock, seen: Seen) -> None:
    _card(bus, 7, 4242)
    clock.advance(0.3)
    _card(bus, 7, 4242)  # the card still on the reader
    stats = bus.stats(ADDR)
    assert [(d, c) for d, c, _ in seen] == [("gate_in", CardRead("7:4242", "wiegand26"))]
    assert (stats.frames, stats.repeats, stats.last_frame_at) == (2, 1, clock.monotonic())
    clock.advance(1.0)
    _card(bus, 7, 4242)
    assert len(seen) == 2 and seen[1][2] == clock.monotonic(), "read time is the agent's clock"


def test_a_card_with_bad_parity_is_a_counted_fault_never_a_card(bus: OsdpBus, seen: Seen) -> None:
    raw = encode_wiegand("wiegand26", 7, 4242)
    flipped = pk.RawCard(raw.reader, raw.format, raw.bits, bytes([raw.data[0] ^ 0x80]) + raw.data[1:])
    _reply(bus, pk.REPLY_RAW, pk.encode_raw(flipped))
    _reply(bus, pk.REPLY_RAW, b"\x00")  # too short to be a RAW reply
    stats = bus.stats(ADDR)
    assert seen == []
    assert stats.frames == 0 and stats.faults == {"parity": 1, "malformed": 1}


def test_keypad_hash_submits_star_clears_and_the_pin_counts_as_a_frame(
        bus: OsdpBus, clock: FakeClock, seen: Seen) -> None:
    _keys(bus, "12*04")
    _keys(bus, "17\r")  # Enter (0x0D) is '#'
    assert [c for _, c, _ in seen] == [CardRead("P0417", "keypad")]
    _keys(bus, "#")  # nothing typed: nothing read
    clock.advance(2.0)
    _keys(bus, "9" * (KEYPAD_MAX + 3) + "#")
    assert seen[-1][1] == CardRead("P" + "9" * KEYPAD_MAX, "keypad"), "digits past the most kept are ignored"
    assert bus.stats(ADDR).frames == 2


def test_half_typed_digits_are_forgotten_after_the_idle_time_and_on_restart(
        bus: OsdpBus, clock: FakeClock, seen: Seen) -> None:
    _keys(bus, "55")
    clock.advance(KEYPAD_IDLE_S + 0.1)
    _keys(bus, "1#")
    assert [c for _, c, _ in seen] == [CardRead("P1", "keypad")]
    _keys(bus, "66")
    bus._restart(bus._readers[ADDR], None)  # the reader dropped offline and comes back
    _keys(bus, "2#")
    assert [c for _, c, _ in seen][-1] == CardRead("P2", "keypad")


def test_the_same_pin_twice_within_the_repeat_window_is_one_read_as_at_every_reader(
        bus: OsdpBus, clock: FakeClock, seen: Seen) -> None:
    _keys(bus, "0417#")
    _keys(bus, "0417#")
    assert len(seen) == 1 and bus.stats(ADDR).repeats == 1
    clock.advance(1.5)
    _keys(bus, "0417#")
    assert len(seen) == 2


def test_a_failing_on_card_is_logged_and_the_bus_goes_on(clock: FakeClock) -> None:
    calls: list[str] = []

    def boom(door: str, card: CardRead, t: float) -> None:
        calls.append(card.number)
        raise RuntimeError("agent bug")

    bus = OsdpBus("loop://", [OsdpReaderSpec("gate_in", ADDR, secure=False)], boom, clock=clock, port=object())
    _card(bus, 1, 1)
    _keys(bus, "3#")
    assert calls == ["1:1", "P3"]


def test_pin_entry_alone_ignores_keys_that_are_not_digits() -> None:
    pins = PinEntry()
    assert pins.keys("1A²2#", 0.0) == [CardRead("P12", "keypad")]
