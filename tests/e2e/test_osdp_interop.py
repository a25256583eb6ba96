"""doorkeep's OSDP control panel against libosdp's peripheral device (and against our own PD simulator).

libosdp (PyPI ``libosdp``) is an independent C implementation: it sits on one end of a pty pair, the CP opens
the other with pyserial exactly as it opens an RS-485 adapter. Everything is bounded in time by ``wait_until``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from edge.framing import CardRead
from edge.osdp import packet as pk
from edge.osdp.cp import OsdpBus, OsdpReaderSpec
from simulators.osdp_pd import LibosdpReader, OsdpPdSimulator
from simulators.wait import wait_until

pytest.importorskip("osdp", reason="libosdp (dev extra) is needed for the interoperability tests")

pytestmark = pytest.mark.e2e

KEY = bytes.fromhex("8f1e2d3c4b5a69788796a5b4c3d2e1f0")
ADDR = 101


@dataclass
class Seen:
    cards: list[CardRead] = field(default_factory=list)
    security: list[tuple[str, str]] = field(default_factory=list)
    tamper: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def card(self, door: str, card: CardRead, t_read: float) -> None:
        with self.lock:
            self.cards.append(card)


def _bus(path: str, specs: list[OsdpReaderSpec], seen: Seen, **kw: object) -> OsdpBus:
    return OsdpBus(path, specs, seen.card, baudrate=115200, poll_ms=20,
                   on_security=lambda d, cause, detail: seen.security.append((d, cause)),
                   on_tamper=lambda d, active: seen.tamper.append(active), **kw)  # type: ignore[arg-type]


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def running() -> Iterator[list]:
    """Everything started in a test, stopped (buses first) whatever happens."""
    things: list = []
    yield things
    for thing in reversed(things):
        (thing.stop if isinstance(thing, OsdpBus) else thing.close)()


def test_secure_channel_card_keypad_and_feedback_with_libosdp(seen: Seen, running: list) -> None:
    pd = LibosdpReader(ADDR, KEY)
    running.append(pd)
    bus = _bus(pd.path, [OsdpReaderSpec("front", ADDR, KEY)], seen)
    running.append(bus)
    bus.start()
    assert wait_until(lambda: bus.stats(ADDR).online, 5), bus.stats(ADDR)
    assert bus.stats(ADDR).secure and pd.sc_active, "online means over Secure Channel, on both ends"

    pd.present_card("wiegand26", 12, 34567)
    assert wait_until(lambda: seen.cards, 3)
    assert seen.cards == [CardRead("12:34567", "wiegand26")]

    pd.press_keys("4321#")
    assert wait_until(lambda: len(seen.cards) == 2, 3)
    assert seen.cards[1] == CardRead("P4321", "keypad")

    bus.feedback(ADDR, granted=False)
    assert wait_until(lambda: pd.leds() and pd.beeps(), 3), pd.commands
    assert pd.leds() == [pk.LED_RED] and pd.beeps() == [2], "deny: red and two beeps"
    bus.feedback(ADDR, granted=True)
    assert wait_until(lambda: len(pd.leds()) == 2 and len(pd.beeps()) == 2, 3)
    assert pd.leds()[1] == pk.LED_GREEN and pd.beeps()[1] == 1, "grant: green and one beep"
    stats = bus.stats(ADDR)
    assert stats.mac_failures == 0 and "downgrade" not in stats.faults and seen.security == []


def test_without_secure_channel_when_explicitly_disabled(seen: Seen, running: list) -> None:
    pd = LibosdpReader(ADDR, None, secure_channel=False)
    running.append(pd)
    bus = _bus(pd.path, [OsdpReaderSpec("front", ADDR, None, secure=False)], seen)
    running.append(bus)
    bus.start()
    assert wait_until(lambda: bus.stats(ADDR).online, 5), bus.stats(ADDR)
    assert not bus.stats(ADDR).secure and not pd.sc_active
    pd.present_card("wiegand34", 1234, 5678)
    assert wait_until(lambda: seen.cards == [CardRead("1234:5678", "wiegand34")], 3)


def test_a_wrong_key_is_refused_and_the_reader_never_goes_online(seen: Seen, running: list) -> None:
    pd = LibosdpReader(ADDR, bytes(16))
    running.append(pd)
    bus = _bus(pd.path, [OsdpReaderSpec("front", ADDR, KEY)], seen)
    running.append(bus)
    bus.start()
    assert wait_until(lambda: bus.stats(ADDR).reason == "wrong_key", 5), bus.stats(ADDR)
    pd.present_card("wiegand26", 1, 1)
    assert not wait_until(lambda: bus.stats(ADDR).online or seen.cards, 1.0)
    assert not pd.sc_active


def test_a_reader_with_only_the_default_key_is_not_rekeyed_until_install_key(seen: Seen, running: list) -> None:
    pd = LibosdpReader(ADDR, None)  # factory state: install mode, SCBK-D only
    running.append(pd)
    bus = _bus(pd.path, [OsdpReaderSpec("front", ADDR, KEY)], seen)
    running.append(bus)
    bus.start()
    assert wait_until(lambda: bus.stats(ADDR).reason == "needs_key", 5), bus.stats(ADDR)
    assert not wait_until(lambda: bus.stats(ADDR).online, 1.0), "never silently re-keyed"
    done = bus.begin_install(ADDR, KEY)  # what `doorkeep osdp install-key` does
    assert done.wait(5)
    assert wait_until(lambda: bus.stats(ADDR).online and bus.stats(ADDR).secure, 8), bus.stats(ADDR)
    pd.present_card("wiegand37", 100, 200)
    assert wait_until(lambda: seen.cards == [CardRead("100:200", "wiegand37")], 3)


def test_our_cp_with_our_pd_simulator_two_readers_on_one_bus_security_faults(seen: Seen, running: list) -> None:
    sim = OsdpPdSimulator(address=3, scbk=KEY)
    running.append(sim)
    bus = _bus(sim.path, [OsdpReaderSpec("front", 3, KEY)], seen, offline_after_s=1.0)
    running.append(bus)
    bus.start()
    assert wait_until(lambda: bus.stats(3).online and sim.sc_active, 5), bus.stats(3)
    sim.present_card("wiegand26", 7, 4242)
    sim.press_keys("12#")
    assert wait_until(lambda: len(seen.cards) == 2, 3)
    assert seen.cards == [CardRead("7:4242", "wiegand26"), CardRead("P12", "keypad")]
    sim.set_tamper(True)
    assert wait_until(lambda: seen.tamper == [True], 3)
    bus.feedback(3, granted=True)
    assert wait_until(lambda: sim.leds() == [pk.LED_GREEN] and sim.beeps() == [1], 3)

    # Offline after its timeout, back by itself.
    sim.muted = True
    assert wait_until(lambda: not bus.stats(3).online and bus.stats(3).reason == "no_reply", 5)
    sim.muted = False
    assert wait_until(lambda: bus.stats(3).online and bus.stats(3).secure, 8)

    # A reply whose MAC does not verify: alarm, session dropped, no card passed on.
    sim.forge_next_reply = True
    sim.present_card("wiegand26", 9, 9)
    assert wait_until(lambda: ("front", "mac_failure") in seen.security, 3), seen.security
    assert CardRead("9:9", "wiegand26") not in seen.cards

    # A reader that stops offering Secure Channel after it had it: a downgrade alarm, and it stays offline.
    assert wait_until(lambda: bus.stats(3).online, 8)
    sim.secure_channel = False
    sim._session = None
    assert wait_until(lambda: ("front", "downgrade") in seen.security, 8), seen.security
    assert not bus.stats(3).online and bus.stats(3).reason == "sc_unsupported"


def test_round_robin_over_two_addresses(seen: Seen, running: list) -> None:
    """Two readers on one bus: the simulator answers for one address, the other is absent and goes offline,
    which must not stop the present one from being polled and its card read."""
    sim = OsdpPdSimulator(address=1, scbk=KEY)
    running.append(sim)
    bus = _bus(sim.path, [OsdpReaderSpec("front", 1, KEY), OsdpReaderSpec("back", 2, KEY)], seen,
               offline_after_s=0.5)
    running.append(bus)
    bus.start()
    assert wait_until(lambda: bus.stats(1).online, 5)
    assert wait_until(lambda: bus.stats(2).reason == "no_reply", 5)
    sim.present_card("wiegand26", 1, 2)
    assert wait_until(lambda: seen.cards == [CardRead("1:2", "wiegand26")], 3)
    assert bus.stats(1).online and not bus.stats(2).online


def test_install_key_command_rekeys_a_factory_reader_and_records_it(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`doorkeep osdp install-key`: default-key reader -> new key in a 0600 file, the reader online with it,
    and a reader_key_installed event waiting in the edge's outbox. A second run refuses to overwrite."""
    import json
    import shutil
    import stat

    from doorkeep.cli import main
    from edge.osdp.keys import load_scbk
    from edge.outbox import Outbox
    from simulators.site import DEMO_SITE

    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    sim = OsdpPdSimulator(address=5)  # factory state
    try:
        dev = site / "devices" / "pi-lobby.toml"
        text = dev.read_text()
        text = text.replace('reader = { url = "/dev/serial0", protocol = "em4100", baudrate = 9600 }',
                            f'reader = {{ url = "{sim.path}", protocol = "osdp", address = 5, '
                            f'scbk_file = "keys/lobby_in.scbk" }}')
        text = text.replace('state_dir = "/var/lib/doorkeep"', f'state_dir = "{tmp_path / "state"}"')
        dev.write_text(text)
        assert main(["osdp", "install-key", "lobby_in", "--device", str(dev), "--timeout", "8"]) == 0
        key_file = site / "devices" / "keys" / "lobby_in.scbk"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        assert sim.scbk is not None and load_scbk(key_file) == sim.scbk, "the reader holds the key in the file"
        assert "fingerprint" in capsys.readouterr().out
        outbox = Outbox(tmp_path / "state" / "outbox.db")
        try:
            payloads = [r.payload for r in outbox.peek()]
        finally:
            outbox.close()
        events = [json.loads(p) for p in payloads]
        assert [e["type"] for e in events] == ["reader_key_installed"]
        assert events[0]["detail"]["key_fingerprint"] and sim.scbk.hex() not in payloads[0].decode()
        assert main(["osdp", "install-key", "lobby_in", "--device", str(dev)]) == 1, "never overwrites a key"
    finally:
        sim.close()


def test_a_vanished_port_takes_every_reader_on_the_bus_offline(seen: Seen, running: list) -> None:
    sim = OsdpPdSimulator(address=1, scbk=KEY)
    bus = _bus(sim.path, [OsdpReaderSpec("front", 1, KEY)], seen)
    running.append(bus)
    bus.start()
    assert wait_until(lambda: bus.stats(1).online, 5)
    sim.close()  # the adapter is unplugged: the pty's other end is gone
    assert wait_until(lambda: bus.stats(1).io_errors >= 1 and not bus.stats(1).online, 5), bus.stats(1)
    assert bus.stats(1).reason == "no_reply"
