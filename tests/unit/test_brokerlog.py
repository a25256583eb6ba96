"""The broker-log watcher's parser and counter (server/brokerlog.py), fed the lines Mosquitto 2.0.11 really writes.

The end-to-end test with a real revoked certificate is tests/e2e/test_attacks_broker.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.clock import FakeClock
from server.brokerlog import CERTIFICATE_REFUSED, UNKNOWN, BrokerLogWatcher, LogParser, Refusal, RefusalTracker
from server.store import Store

VERIFY = "error:0A000086:SSL routines::certificate verify failed"
#: Measured on Mosquitto 2.0.11: a revoked certificate, both forms; then an honest client; then no certificate.
REVOKED_LOG = f"""\
1796524957: New connection from 10.0.0.7:37821 on port 8883.
1796524957: OpenSSL Error[0]: {VERIFY}
1796524957: Client <unknown> disconnected: Protocol error.
1796524960: Client connection from 10.0.0.7 failed: {VERIFY}.
1796524961: New connection from 10.0.0.9:41221 on port 8883.
1796524961: New client connected from 10.0.0.9:41221 as pi-lobby (p2, c1, k60, u'pi-lobby').
1796524965: New connection from 10.0.0.8:56606 on port 8883.
1796524965: OpenSSL Error[0]: error:0A0000C7:SSL routines::peer did not return a certificate
1796524966: Client connection from 10.0.0.8 failed: error:0A00010B:SSL routines::wrong version number.
"""


def refusals(text: str) -> list[Refusal]:
    parser = LogParser()
    return [r for line in text.splitlines() if (r := parser.feed(line)) is not None]


def test_refused_certificates_are_found_with_their_address_in_both_log_forms() -> None:
    assert refusals(REVOKED_LOG) == [Refusal("10.0.0.7", VERIFY), Refusal("10.0.0.7", VERIFY)]


def test_a_refusal_is_never_pinned_on_an_address_it_cannot_be_told_from() -> None:
    # Two hosts in their handshake at once: the OpenSSL line names neither, so it counts as unknown.
    text = (f"1: New connection from 10.0.0.7:1000 on port 8883.\n1: New connection from 10.0.0.9:2000 on port 8883.\n"
            f"1: OpenSSL Error[0]: {VERIFY}\n")
    assert refusals(text) == [Refusal(UNKNOWN, VERIFY)]
    # A connection still pending after a minute is forgotten, so it no longer blurs the picture.
    text = f"1: New connection from 10.0.0.9:2000 on port 8883.\n100: New connection from 10.0.0.7:1000 on port 8883.\n" \
           f"100: OpenSSL Error[0]: {VERIFY}\n"
    assert refusals(text) == [Refusal("10.0.0.7", VERIFY)]


def test_ipv6_addresses_keep_their_colons() -> None:
    text = f"1: New connection from ::ffff:10.0.0.7:1000 on port 8883.\n1: OpenSSL Error[0]: {VERIFY}\n"
    assert refusals(text) == [Refusal("::ffff:10.0.0.7", VERIFY)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "store")
    yield s
    s.close()


def test_repeated_refusals_from_one_address_raise_one_alarm_per_window(store: Store) -> None:
    clock = FakeClock()
    tracker = RefusalTracker(store, clock, threshold=3, window_s=3600)
    r = Refusal("10.0.0.7", VERIFY)
    assert tracker.on_refusal(r) is None and tracker.on_refusal(r) is None
    assert tracker.on_refusal(Refusal("10.0.0.8", VERIFY)) is None  # another address counts on its own
    clock.advance(10)
    alarm = tracker.on_refusal(r)
    assert alarm is not None
    (row,) = store.open_alarms(type=CERTIFICATE_REFUSED)
    assert (row["severity"], row["detail"]["address"], row["detail"]["refusals"]) == ("alarm", "10.0.0.7", 3)
    raised = []
    for i in range(1000):  # still trying every 5 s for 5000 s: one more raise, an hour after the first
        clock.advance(5)
        if tracker.on_refusal(r) is not None:
            raised.append(i)
    assert raised == [719]  # 720 x 5 s = 3600 s
    (row,) = store.open_alarms(type=CERTIFICATE_REFUSED)  # the same open alarm, its count refreshed
    assert row["id"] == alarm and row["detail"]["refusals"] == 3 + 720


def test_refusals_spread_wider_than_the_window_stay_quiet(store: Store) -> None:
    clock = FakeClock()
    tracker = RefusalTracker(store, clock, threshold=3, window_s=60)
    for _ in range(10):
        assert tracker.on_refusal(Refusal("10.0.0.7", VERIFY)) is None
        clock.advance(31)
    assert store.open_alarms(type=CERTIFICATE_REFUSED) == []


def test_watcher_reads_only_new_lines_and_follows_rotation(store: Store, tmp_path: Path) -> None:
    log = tmp_path / "mosquitto.log"
    old = f"1: Client connection from 10.0.0.1 failed: {VERIFY}.\n"
    log.write_text(old * 5)  # before the server started: not counted again
    watcher = BrokerLogWatcher(log, store, FakeClock(), threshold=2)
    watcher._open(at_end=True)
    assert watcher.poll() == 0
    with log.open("a") as f:
        f.write(f"2: Client connection from 10.0.0.7 failed: {VERIFY}.\n2: Client connection from 10.0.0.7 fa")
    assert watcher.poll() == 1  # the half-written line waits for its end
    with log.open("a") as f:
        f.write(f"iled: {VERIFY}.\n")
    assert watcher.poll() == 1
    assert [a["detail"]["address"] for a in store.open_alarms(type=CERTIFICATE_REFUSED)] == ["10.0.0.7"]
    log.rename(tmp_path / "mosquitto.log.1")  # logrotate: a new file under the old name
    log.write_text(f"3: Client connection from 10.0.0.8 failed: {VERIFY}.\n" * 2)
    assert watcher.poll() == 2
    assert {a["detail"]["address"] for a in store.open_alarms(type=CERTIFICATE_REFUSED)} == {"10.0.0.7", "10.0.0.8"}


def test_missing_log_file_is_counted_and_tried_again(store: Store, tmp_path: Path) -> None:
    log = tmp_path / "later.log"
    watcher = BrokerLogWatcher(log, store, FakeClock())
    assert watcher.poll() == 0 and watcher.counters["unreadable"] == 1
    log.write_text(f"1: Client connection from 10.0.0.7 failed: {VERIFY}.\n")
    assert watcher.poll() == 1  # a file that appears later is read from its start
