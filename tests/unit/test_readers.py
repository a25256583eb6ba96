"""The real serial stack end to end: simulator bytes into a pty, pyserial out."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import pytest

from doorkeep.clock import SystemClock
from edge.errors import HardwareError
from edge.framing import CardRead, FrameFault
from edge.readers import SerialReader
from simulators.reader import ReaderSimulator

DEADLINE_S = 1.0
CARD = "0F00A1B2C3"
OTHER = "1234567890"


class Harness:
    def __init__(self, protocol: str, repeat_ignore_s: float = 1.0, *, crlf: bool = False) -> None:
        self.sim = ReaderSimulator(protocol, crlf=crlf)
        self.cards: queue.Queue[tuple[str, CardRead, float]] = queue.Queue()
        self.faults: queue.Queue[tuple[str, FrameFault]] = queue.Queue()
        self.reader = SerialReader(
            "front",
            self.sim.path,
            protocol,
            lambda door, card, t: self.cards.put((door, card, t)),
            clock=SystemClock(),
            repeat_ignore_s=repeat_ignore_s,
            on_fault=lambda door, fault: self.faults.put((door, fault)),
        )
        self.reader.start()

    def next_card(self) -> tuple[str, CardRead, float]:
        return self.cards.get(timeout=DEADLINE_S)

    def close(self) -> None:
        self.reader.stop()
        self.sim.close()


@pytest.fixture
def em4100() -> Iterator[Harness]:
    h = Harness("em4100")
    yield h
    h.close()


def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    """For states no callback reports (the port going away); waits on an Event, never sleeps."""
    tick = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        tick.wait(0.01)
    return condition()


def test_badge_arrives_with_door_number_and_format(em4100: Harness) -> None:
    assert em4100.reader.stats.online
    sent_at = em4100.sim.badge(CARD)
    door, card, t_read = em4100.next_card()
    assert door == "front"
    assert card == CardRead(CARD, "em4100")
    assert sent_at - 0.5 < t_read < sent_at + DEADLINE_S
    stats = em4100.reader.stats
    assert stats.frames == 1 and stats.last_frame_at == t_read
    assert em4100.sim.frames_sent == 1


def test_id12_reader_frames_with_cr_lf_before_etx_arrive_as_cards() -> None:
    """An ID-12/ID-20 (STX, 10 data digits, 2 checksum digits, CR, LF, ETX) through pyserial and the real
    reader: each frame is one card, none is a fault, and a damaged one is still counted and skipped."""
    h = Harness("em4100", repeat_ignore_s=0.0, crlf=True)
    try:
        h.sim.badge(CARD)
        assert h.next_card()[1] == CardRead(CARD, "em4100")
        h.sim.write_raw(b"\x02" + CARD.encode() + b"00\r\n\x03")  # the datasheet's layout, wrong checksum
        h.sim.badge(OTHER)
        assert h.next_card()[1] == CardRead(OTHER, "em4100")
        assert h.faults.get(timeout=DEADLINE_S)[1].kind == "checksum"
        stats = h.reader.stats
        assert stats.frames == 2 and stats.faults == {"checksum": 1}
    finally:
        h.close()


def test_garbage_then_valid_frame(em4100: Harness) -> None:
    em4100.sim.write_raw(b"\xff\xfe line noise \x03")
    em4100.sim.badge(CARD)
    door, fault = em4100.faults.get(timeout=DEADLINE_S)
    assert door == "front" and fault.kind == "garbled"
    assert em4100.next_card()[1].number == CARD
    assert em4100.reader.stats.faults == {"garbled": 1}


def test_bad_checksum_is_counted_and_logged(em4100: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="doorkeep.edge.reader")
    em4100.sim.write_raw(b"\x020F00A1B2C300\x03")
    em4100.sim.badge(OTHER)
    assert em4100.next_card()[1].number == OTHER
    assert em4100.reader.stats.faults == {"checksum": 1}
    assert any("front" in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)


def test_logs_never_hold_a_card_number(em4100: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """Logs end up in the journal on the SD card: a fault shows the frame's shape, a card its last four."""
    caplog.set_level("DEBUG", logger="doorkeep.edge.reader")
    em4100.sim.write_raw(b"\x02" + CARD.encode() + b"00\x03")  # the card with a broken checksum
    em4100.sim.badge(CARD)
    em4100.sim.badge(CARD)  # held: the repeat is logged at DEBUG
    em4100.sim.badge(OTHER)
    assert em4100.next_card()[1].number == CARD and em4100.next_card()[1].number == OTHER
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "checksum" in text and r"\x02############\x03" in text, text
    assert "held" in text and CARD[-4:] in text
    assert CARD[:8] not in text and CARD not in text, text


def test_held_card_repeat_is_ignored(em4100: Harness) -> None:
    em4100.sim.badge(CARD)
    em4100.sim.badge(CARD)  # the reader repeating while the card is held
    em4100.sim.badge(OTHER)
    # Frames are handled in order, so once OTHER arrives the repeat has been judged.
    assert em4100.next_card()[1].number == CARD
    assert em4100.next_card()[1].number == OTHER
    assert em4100.cards.empty()
    stats = em4100.reader.stats
    assert stats.repeats == 1 and stats.frames == 3


def test_same_card_after_repeat_window_is_accepted() -> None:
    h = Harness("em4100", repeat_ignore_s=0.0)
    try:
        h.sim.badge(CARD)
        h.sim.badge(CARD)
        assert h.next_card()[1].number == CARD
        assert h.next_card()[1].number == CARD
        assert h.reader.stats.repeats == 0
    finally:
        h.close()


def test_callback_exception_does_not_kill_the_thread() -> None:
    seen: queue.Queue[str] = queue.Queue()

    def explode_first(door: str, card: CardRead, t: float) -> None:
        seen.put(card.number)
        if card.number == CARD:
            raise RuntimeError("boom")

    sim = ReaderSimulator()
    reader = SerialReader("back", sim.path, "em4100", explode_first)
    reader.start()
    try:
        sim.badge(CARD)
        sim.badge(OTHER)
        assert seen.get(timeout=DEADLINE_S) == CARD
        assert seen.get(timeout=DEADLINE_S) == OTHER
    finally:
        reader.stop()
        sim.close()


def test_ascii_protocol() -> None:
    h = Harness("ascii")
    try:
        h.sim.badge("ABC123")
        h.sim.write_raw(b"12-34\r\n")
        h.sim.badge("99")
        door, card, _ = h.next_card()
        assert (door, card) == ("front", CardRead("ABC123", "ascii"))
        assert h.next_card()[1] == CardRead("99", "ascii")
        assert h.reader.stats.faults == {"garbled": 1}
    finally:
        h.close()


def test_bad_url_raises_hardware_error_naming_door_and_url() -> None:
    url = "/dev/doorkeep-no-such-reader"
    reader = SerialReader("lobby", url, "em4100", lambda *a: None)
    with pytest.raises(HardwareError, match="no-such-reader") as info:
        reader.start()
    assert "lobby" in str(info.value)
    assert isinstance(info.value, OSError)
    assert not reader.stats.online
    reader.stop()  # never started: still fine


def test_unknown_protocol_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="em4100"):
        SerialReader("lobby", "/dev/null", "osdp-typo", lambda *a: None)


def test_stop_is_idempotent(em4100: Harness) -> None:
    em4100.reader.stop()
    em4100.reader.stop()
    assert not em4100.reader.stats.online


def test_unplugged_reader_is_counted_and_marked_offline(em4100: Harness) -> None:
    em4100.sim.close()
    assert wait_until(lambda: not em4100.reader.stats.online)
    assert em4100.reader.stats.io_errors == 1
    em4100.reader.stop()  # stops cleanly while retrying the open
