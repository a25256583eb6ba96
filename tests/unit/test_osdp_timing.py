"""How fast the OSDP control panel polls (edge/osdp/timing.py): the line's arithmetic and the standard's rules.

The rule: an idle reader is polled again one exchange budget (a secure POLL and its ACK on the wire, both
two-character turnarounds, the standard's typical 3 ms reply delay) per reader on the bus after its previous
poll, ``poll_ms`` being the cap; a reader answering BUSY gets more time. Pure functions, no bus.
"""

from __future__ import annotations

import pytest

from edge.osdp import packet as pk
from edge.osdp import timing
from edge.osdp.secure import SecureSession, derive_session_keys, initial_rmac


def test_one_character_is_ten_bits_and_the_turnaround_two_characters() -> None:
    assert timing.char_s(9600) == pytest.approx(10 / 9600)
    assert timing.turnaround_s(115200) == pytest.approx(20 / 115200)
    assert timing.turnaround_s(9600) == pytest.approx(0.00208, abs=1e-5)
    assert timing.wire_s(14, 9600) == pytest.approx(0.01458, abs=1e-5)


def test_the_budget_counts_the_real_size_of_a_secure_poll_and_its_ack() -> None:
    """The byte counts the budget uses are what a sealed POLL and a sealed ACK really are on the wire."""
    keys = derive_session_keys(bytes(range(16)), bytes(8))
    rmac = initial_rmac(keys, bytes(16))
    cp = SecureSession.established(keys, rmac)
    pd = SecureSession.established(keys, rmac, is_cp=False)
    poll = cp.seal(pk.Packet(1, pk.CMD_POLL, b"", sequence=1))
    pd.open(poll)
    ack = pd.seal(pk.Packet(1, pk.REPLY_ACK, b"", sequence=1, reply=True))
    assert len(poll.encode()) == timing.SECURE_POLL_BYTES
    assert len(ack.encode()) == timing.SECURE_ACK_BYTES


@pytest.mark.parametrize(("baud", "budget_ms"), [(9600, 36.33), (19200, 19.67), (38400, 11.33), (115200, 5.78),
                                                 (230400, 4.39)])
def test_the_exchange_budget_is_the_wire_time_plus_turnarounds_plus_the_typical_reply_delay(
        baud: int, budget_ms: float) -> None:
    assert timing.exchange_budget_s(baud) * 1000 == pytest.approx(budget_ms, abs=0.01)


@pytest.mark.parametrize(("baud", "readers", "poll_ms", "interval_ms"), [
    (115200, 1, 100, 5.78),  # one reader at 115200: every 5.8 ms
    (115200, 4, 100, 23.11),  # four share the line: each every 4 budgets
    (9600, 1, 100, 36.33),
    (9600, 2, 100, 72.67),
    (9600, 4, 100, 100.0),  # the line needs 145 ms a round: poll_ms caps the pacing (the line still rules)
    (115200, 1, 10, 5.78),
    (115200, 4, 10, 10.0),  # poll_ms below the budget: back to back as the line allows
], ids=["115200-1", "115200-4", "9600-1", "9600-2", "9600-4-capped", "115200-1-poll10", "115200-4-poll10"])
def test_the_interval_grows_with_the_readers_on_the_bus_and_poll_ms_caps_it(
        baud: int, readers: int, poll_ms: int, interval_ms: float) -> None:
    assert timing.poll_interval(baud, readers, poll_ms) * 1000 == pytest.approx(interval_ms, abs=0.01)


def test_the_bus_as_a_whole_is_polled_at_the_same_rate_whatever_its_readers() -> None:
    """What an idle bus costs (wire and CPU) does not grow with the readers on it: each just waits longer."""
    rates = [n / timing.poll_interval(115200, n, 10_000) for n in (1, 2, 4, 8)]
    assert max(rates) == pytest.approx(min(rates))
    assert rates[0] == pytest.approx(173, abs=1)


def test_the_line_bound_says_when_poll_ms_cannot_be_kept() -> None:
    assert timing.line_bound_s(9600, 4) > 0.1 > timing.line_bound_s(9600, 2)
    assert timing.line_bound_s(115200, 8) < 0.05


def test_a_bus_without_readers_or_a_bad_baud_rate_is_refused() -> None:
    with pytest.raises(ValueError):
        timing.poll_interval(9600, 0, 100)
    with pytest.raises(ValueError):
        timing.char_s(0)


def test_busy_doubles_a_readers_interval_up_to_poll_ms_and_good_replies_bring_it_back() -> None:
    interval, cap = 0.006, 0.1
    seen = [interval]
    for _ in range(6):
        seen.append(timing.busy_backoff_s(seen[-1], cap))
    assert seen == pytest.approx([0.006, 0.012, 0.024, 0.048, 0.096, 0.1, 0.1])
    back = [seen[-1]]
    for _ in range(6):
        back.append(timing.recovered_s(back[-1], interval))
    assert back[-1] == interval and back == sorted(back, reverse=True)
