"""Reader security signals on the wire: doorkeep's control panel against its PD simulator over a real pty.

An attacker on the RS-485 bus needs no key to inject NAKs in clear or to put a reader with another key on the
wire; either used to take the reader offline silently. Now each is one ``reader_security`` report per cause per
window, with its counts, and a healthy reader (or a factory one waiting for install-key) reports nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from edge.framing import CardRead
from edge.osdp.cp import OsdpBus, OsdpReaderSpec
from simulators.osdp_pd import OsdpPdSimulator
from simulators.wait import wait_until

pytestmark = pytest.mark.e2e

KEY = bytes.fromhex("8f1e2d3c4b5a69788796a5b4c3d2e1f0")
OTHER_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")
ADDR = 3


@dataclass
class Recorded:
    cards: list[CardRead] = field(default_factory=list)
    security: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def card(self, door: str, card: CardRead, t_read: float) -> None:
        with self.lock:
            self.cards.append(card)

    def on_security(self, door: str, cause: str, detail: dict[str, Any]) -> None:
        with self.lock:
            self.security.append((door, cause, dict(detail)))

    def causes(self) -> list[str]:
        with self.lock:
            return [c for _, c, _ in self.security]


@pytest.fixture
def rec() -> Recorded:
    return Recorded()


@pytest.fixture
def running() -> Iterator[list]:
    things: list = []
    yield things
    for thing in reversed(things):
        (thing.stop if isinstance(thing, OsdpBus) else thing.close)()


def _start(running: list, rec: Recorded, sim: OsdpPdSimulator, key: bytes | None = KEY) -> OsdpBus:
    running.append(sim)
    bus = OsdpBus(sim.path, [OsdpReaderSpec("front", ADDR, key)], rec.card, baudrate=115200, poll_ms=10,
                  on_security=rec.on_security, offline_after_s=1.0, retry_key_problem_s=0.02)
    running.append(bus)
    bus.start()
    return bus


def test_attack_injected_clear_nak_storm_raises_one_reader_security_report_not_one_per_packet(
        rec: Recorded, running: list) -> None:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    bus = _start(running, rec, sim)
    assert wait_until(lambda: bus.stats(ADDR).online and bus.stats(ADDR).secure, 5), bus.stats(ADDR)

    sim.nak_storm = True  # every command now answered first by a NAK in clear
    assert wait_until(lambda: bus.stats(ADDR).faults.get("clear_nak", 0) >= 40, 10), bus.stats(ADDR)
    assert not bus.stats(ADDR).online, "the storm still takes the reader offline (nothing can be trusted)"
    assert rec.causes() == ["clear_nak"], rec.security
    detail = rec.security[0][2]
    assert detail["address"] == ADDR and detail["count"] >= 4 and detail["window_s"] > 0
    assert "in clear" in detail["detail"]
    sim.present_card("wiegand26", 1, 1)
    assert not rec.cards


def test_attack_reader_with_another_key_fails_the_handshake_again_and_again_and_is_reported_once(
        rec: Recorded, running: list) -> None:
    """A swapped reader (or a man in the middle) answers CHLNG with a cryptogram under another key: refused
    every time, never online, and reported once as handshake_failed however often it is retried."""
    sim = OsdpPdSimulator(address=ADDR, scbk=OTHER_KEY)
    bus = _start(running, rec, sim)
    assert wait_until(lambda: bus.stats(ADDR).faults.get("handshake_failed", 0) >= 12, 10), bus.stats(ADDR)
    stats = bus.stats(ADDR)
    assert stats.reason == "wrong_key" and not stats.online and not sim.sc_active
    assert rec.causes() == ["handshake_failed"], rec.security
    assert rec.security[0][2]["count"] == 3  # reported when the third failure in the window came
    sim.present_card("wiegand26", 1, 1)
    assert not wait_until(lambda: rec.cards, 0.3), "no card is read from a reader that failed its handshake"


def test_a_healthy_reader_raises_no_security_signal(rec: Recorded, running: list) -> None:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    bus = _start(running, rec, sim)
    assert wait_until(lambda: bus.stats(ADDR).online and bus.stats(ADDR).secure, 5)
    sim.present_card("wiegand26", 7, 4242)
    assert wait_until(lambda: rec.cards == [CardRead("7:4242", "wiegand26")], 3)
    assert wait_until(lambda: bus.stats(ADDR).polls >= 150, 10)
    assert rec.security == []
    assert not {"clear_nak", "handshake_failed"} & set(bus.stats(ADDR).faults)


def test_a_factory_reader_waiting_for_install_key_is_not_a_failed_handshake(rec: Recorded, running: list) -> None:
    """Offline with needs_key (and a reader_offline from the agent) is the expected state of a new reader."""
    sim = OsdpPdSimulator(address=ADDR, scbk=None)
    bus = _start(running, rec, sim)
    assert wait_until(lambda: bus.stats(ADDR).reason == "needs_key", 5), bus.stats(ADDR)
    assert not wait_until(lambda: rec.security, 1.0), rec.security  # ~50 attempts at retry 0.02 s
    assert "handshake_failed" not in bus.stats(ADDR).faults


def test_a_reader_rebooting_once_inside_a_session_is_not_an_attack(rec: Recorded, running: list) -> None:
    sim = OsdpPdSimulator(address=ADDR, scbk=KEY)
    bus = _start(running, rec, sim)
    assert wait_until(lambda: bus.stats(ADDR).online and bus.stats(ADDR).secure, 5)
    sim._session = None  # the reader restarted: it NAKs the next secure poll in clear, once
    assert wait_until(lambda: bus.stats(ADDR).faults.get("session_lost", 0) >= 1, 5), bus.stats(ADDR)
    assert wait_until(lambda: bus.stats(ADDR).online and bus.stats(ADDR).secure, 5)
    assert rec.security == []
