"""Wiegand: the pure decoder (every format, parity, lengths, keypad, fuzz), the framer's timeout, the config,
and the gpiozero adapter fed by the simulator's real pulse trains on mock pins."""

from __future__ import annotations

from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from doorkeep.clock import SystemClock
from doorkeep.config import _load_device, check
from doorkeep.sites import DEMO_SITE
from edge.framing import CardRead, FrameFault
from edge.osdp.cards import bits_of, encode_wiegand
from edge.wiegand import KeyPress, WiegandFramer, WiegandReader, decode_bits
from simulators.wait import wait_until
from simulators.wiegand import WiegandSimulator, card_bits, key_bits

# H10301 known answer: facility 1, card 1 -> bits 0 00000001 0000000000000001 1 (even parity over bits 1-12
# counts one 1, so the leading parity bit is 1 ... computed by hand below rather than trusted to the encoder).
KNOWN_26 = [1] + [0, 0, 0, 0, 0, 0, 0, 1] + [0] * 15 + [1] + [0]
# even span bits 1-12 hold one 1 -> even parity bit 1; odd span bits 13-24 hold one 1 -> odd parity bit 0.


def test_a_hand_made_h10301_frame_decodes_to_facility_and_card() -> None:
    assert decode_bits(KNOWN_26) == CardRead("1:1", "wiegand26")


@pytest.mark.parametrize(("fmt", "facility", "card"), [
    ("wiegand26", 0, 0), ("wiegand26", 12, 34567), ("wiegand26", 255, 65535),
    ("wiegand34", 1234, 5678), ("wiegand34", 65535, 65535),
    ("wiegand37", 1234, 56789), ("wiegand37", 65535, (1 << 19) - 1),
])
def test_every_format_round_trips_through_the_wire_bits(fmt: str, facility: int, card: int) -> None:
    bits = card_bits(fmt, f"{facility}:{card}")
    assert len(bits) == int(fmt[-2:])
    assert decode_bits(bits) == CardRead(f"{facility}:{card}", fmt)


@pytest.mark.parametrize("fmt", ["wiegand26", "wiegand34", "wiegand37"])
def test_any_single_flipped_bit_is_a_parity_fault_never_another_card(fmt: str) -> None:
    bits = card_bits(fmt, "100:200")
    for i in range(len(bits)):
        flipped = list(bits)
        flipped[i] ^= 1
        item = decode_bits(flipped)
        assert isinstance(item, FrameFault) and item.kind == "parity", f"bit {i} flipped decoded as {item}"


@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 7, 25, 27, 32, 33, 35, 36, 38, 48, 64])
def test_unknown_lengths_are_length_faults(n: int) -> None:
    item = decode_bits([1, 0] * (n // 2) + [1] * (n % 2))
    assert isinstance(item, FrameFault) and item.kind == "length"
    assert str(n).encode() in item.raw and b":" not in item.raw, "a fault keeps the bit count, not the content"


def test_keypad_bursts_4_and_8_bit() -> None:
    for key in "0123456789*#":
        assert decode_bits(key_bits(key, 4)) == KeyPress(key)
        assert decode_bits(key_bits(key, 8)) == KeyPress(key)
    bad8 = key_bits("5", 8)
    bad8[0] ^= 1
    assert isinstance(decode_bits(bad8), FrameFault) and decode_bits(bad8).kind == "parity"
    assert decode_bits([1, 1, 1, 1]).kind == "length", "code 15 is no key"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.integers(0, 1), max_size=80))
def test_any_bit_string_decodes_to_something_and_never_raises(bits: list[int]) -> None:
    item = decode_bits(bits)
    assert isinstance(item, (CardRead, KeyPress, FrameFault))
    if isinstance(item, CardRead):
        assert len(bits) in (26, 34, 37)
        fac, card = item.number.split(":")
        # Whatever decodes is exactly what the encoder would send for it: parity really was right.
        assert bits_of(encode_wiegand(item.format, int(fac), int(card))) == bits


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 0.1)), max_size=200))
def test_the_framer_never_raises_and_keeps_its_buffer_bounded(timed: list[tuple[int, float]]) -> None:
    f = WiegandFramer(0.025)
    now = 0.0
    for bit, gap in timed:
        now += gap
        for item in f.bit(bit, now):
            assert isinstance(item, (CardRead, FrameFault))
        assert len(f._bits) <= 65
    f.poll(now + 1)
    assert f.deadline is None


def test_the_framer_ends_a_frame_at_its_deadline_and_a_late_bit_starts_a_new_one() -> None:
    f = WiegandFramer(0.025)
    bits = card_bits("wiegand26", "12:34567")
    t = 0.0
    for b in bits:
        assert f.bit(b, t) == []
        t += 0.002
    last = t - 0.002
    assert f.deadline == pytest.approx(last + 0.025)
    assert f.poll(last + 0.024) == [], "not before the gap is over"
    assert f.poll(last + 0.025) == [CardRead("12:34567", "wiegand26")]
    # No poll in between: a bit after the gap still ends the previous frame first, never joins it.
    for b in bits:
        f.bit(b, t)
        t += 0.002
    out = f.bit(1, t + 0.5)
    assert out == [CardRead("12:34567", "wiegand26")]
    assert [i.kind for i in f.poll(t + 1)] == ["length"], "the lone late bit is its own (bad) frame"


def test_keypad_digits_become_a_pin_read_on_enter_and_star_clears() -> None:
    f = WiegandFramer(0.01)
    t = 0.0
    out: list = []
    for key in "12*0417#":
        for b in key_bits(key):
            out += f.bit(b, t)
            t += 0.002
        t += 0.05
        out += f.poll(t)
    assert out == [CardRead("P0417", "keypad")]


def test_keypad_rules_are_the_shared_ones_digits_forgotten_when_idle_and_capped() -> None:
    """The Wiegand keypad follows edge/readers.py's PinEntry, as serial and OSDP keypads do: a half-typed PIN
    does not prefix the next one after KEYPAD_IDLE_S, and digits past KEYPAD_MAX are ignored."""
    from edge.readers import KEYPAD_IDLE_S, KEYPAD_MAX

    f = WiegandFramer(0.01)
    t = 0.0
    out: list = []

    def press(keys: str) -> None:
        nonlocal t
        for key in keys:
            for b in key_bits(key):
                out.extend(f.bit(b, t))
                t += 0.002
            t += 0.05
            out.extend(f.poll(t))

    press("99")
    t += KEYPAD_IDLE_S + 1
    press("1234#")
    press("7" * (KEYPAD_MAX + 3) + "#")
    assert out == [CardRead("P1234", "keypad"), CardRead("P" + "7" * KEYPAD_MAX, "keypad")]


# ------------------------------------------------------------------ config


def _device(tmp_path: Path, reader: str, extra: str = "") -> Path:
    (tmp_path / "site.toml").write_text((DEMO_SITE / "site.toml").read_text())
    dev = tmp_path / "devices" / "pi.toml"
    dev.parent.mkdir()
    dev.write_text(f'device = "pi-lobby"\nsite = "demo"\ngpio_factory = "mock"\n'
                   f'[broker]\nurl = "mqtts://b:8883"\n'
                   f'[doors.lobby_in]\nreader = {{ {reader} }}\nlock = {{ pin = 17 }}\n{extra}')
    return dev


def test_config_reads_a_wiegand_reader(tmp_path: Path) -> None:
    dev = _device(tmp_path, 'protocol = "wiegand", d0_pin = 23, d1_pin = 24, frame_timeout_ms = 40')
    errors = [e for e in check(dev) if "lobby_in" in e.key and "reader" in e.key]
    assert errors == []
    found: list = []
    cfg = _load_device(dev, found)
    rc = cfg.doors["lobby_in"].reader
    assert (rc.protocol, rc.d0_pin, rc.d1_pin, rc.frame_timeout_ms, rc.url) == ("wiegand", 23, 24, 40, "gpio://23,24")


@pytest.mark.parametrize(("reader", "key", "fix"), [
    ('protocol = "wiegand", d1_pin = 24', "d0_pin", "BCM GPIO number"),
    ('protocol = "wiegand", d0_pin = 23, d1_pin = 17', "lock.pin", "own GPIO"),  # the reader claimed it first
    ('protocol = "wiegand", d0_pin = 23, d1_pin = 23', "d1_pin", "own GPIO"),
    ('protocol = "wiegand", d0_pin = 23, d1_pin = 40', "d1_pin", "0 to 27"),
    ('protocol = "wiegand", d0_pin = 23, d1_pin = 24, frame_timeout_ms = 1', "frame_timeout_ms", "5-500"),
    ('protocol = "wiegand", d0_pin = 23, d1_pin = 24, url = "/dev/ttyS0"', "url", "remove it"),
])
def test_config_errors_name_the_key_and_the_fix(tmp_path: Path, reader: str, key: str, fix: str) -> None:
    errors: list = []
    _load_device(_device(tmp_path, reader), errors)
    hits = [e for e in errors if e.key.endswith(key)]
    assert hits, errors
    assert fix in hits[0].fix and hits[0].file.endswith("pi.toml")


# ------------------------------------------------------- adapter + simulator


@pytest.fixture
def wired():
    factory = MockFactory()
    cards: list[tuple[str, CardRead, float]] = []
    reader = WiegandReader("front", 23, 24, lambda d, c, t: cards.append((d, c, t)), factory=factory,
                           clock=SystemClock(), repeat_ignore_s=1.0)
    reader.start()
    sim = WiegandSimulator(factory, 23, 24)
    yield reader, sim, cards
    sim.close()
    reader.stop()


def test_pulse_trains_on_mock_pins_decode_through_the_real_callbacks(wired) -> None:
    reader, sim, cards = wired
    sim.badge("12:34567")
    sim.present_card("wiegand34", 1234, 5678)
    sim.badge("1234:56789", "wiegand37")
    assert wait_until(lambda: len(cards) == 3, 3)
    assert [(d, c) for d, c, _ in cards] == [("front", CardRead("12:34567", "wiegand26")),
                                            ("front", CardRead("1234:5678", "wiegand34")),
                                            ("front", CardRead("1234:56789", "wiegand37"))]
    assert sim.frames_sent == 3 and sim.bits_sent >= 26 + 34 + 37
    s = reader.stats
    assert (s.frames, s.online) == (3, True)
    assert s.faults == {} or sim.stretched_frames, "faults only from a frame this machine failed to send in time"


def test_bad_parity_and_odd_lengths_are_counted_and_skipped(wired) -> None:
    reader, sim, cards = wired
    bits = card_bits("wiegand26", "12:34567")
    bits[5] ^= 1
    sim.send_bits(bits)
    sim.send_bits([1, 0, 1] * 10)  # 30 bits
    assert wait_until(lambda: reader.stats.faults.get("parity") == 1, 3)
    assert wait_until(lambda: reader.stats.faults.get("length", 0) >= 1, 3)
    if not sim.stretched_frames:
        assert reader.stats.faults == {"parity": 1, "length": 1}
    assert cards == [] and reader.stats.frames == 0
    sim.badge("12:34567")  # the reader goes on: the next good card reads
    assert wait_until(lambda: len(cards) == 1, 3)


def test_a_held_card_repeat_is_ignored_and_a_keypad_pin_is_read(wired) -> None:
    reader, sim, cards = wired
    sim.badge("7:7")
    sim.badge("7:7")
    sim.enter_pin("0417")
    assert wait_until(lambda: len(cards) == 2, 3)
    assert [c for _, c, _ in cards] == [CardRead("7:7", "wiegand26"), CardRead("P0417", "keypad")]
    assert reader.stats.repeats == 1


def test_a_line_held_low_takes_the_reader_offline(wired) -> None:
    reader, sim, _ = wired
    clock_reader = reader
    sim.d0.drive_low()
    assert clock_reader.stats.online, "a line low for an instant is a bit, not a fault"
    assert wait_until(lambda: clock_reader.health_reason == "line_stuck_low", 3)
    assert not clock_reader.stats.online
    sim.d0.drive_high()
    assert clock_reader.health_reason is None and clock_reader.stats.online
    reader.tick()  # the stray bit from the drive_low ends as a length fault, never a card
    assert wait_until(lambda: reader.stats.faults.get("length") == 1, 3)


def test_stop_releases_the_pins_and_is_idempotent() -> None:
    factory = MockFactory()
    r = WiegandReader("x", 5, 6, lambda *a: None, factory=factory)
    r.start()
    r.stop()
    r.stop()
    assert not r.stats.online
    r2 = WiegandReader("x", 5, 6, lambda *a: None, factory=factory)
    r2.start()  # the pins were released, so a new reader can claim them
    r2.stop()


# ------------------------------------------------------ scenario validation


READERS_SITE = Path(__file__).resolve().parents[2] / "firmware-config" / "sites" / "readers"


def _scenario_problems(tmp_path: Path, steps: str) -> list[str]:
    from simulators.scenario import ScenarioErrors, load_scenario

    path = tmp_path / "scenario.yaml"
    path.write_text(f'name: t\nsite: {READERS_SITE}\nstart: "2026-03-02 09:00"\nsteps:\n{steps}')
    try:
        load_scenario(path)
    except ScenarioErrors as exc:
        return [str(e) for e in exc.errors]
    return []


def test_scenarios_badge_wiegand_and_osdp_readers_with_their_card_formats(tmp_path: Path) -> None:
    ok = ('  - badge: store_in\n    person: alice\n    pin: "0417"\n'          # Wiegand keypad: a PIN is fine
          '  - badge: gate_in\n    card: "12:999"\n'                           # FACILITY:CARD, wiegand26
          '  - badge: gate_out\n    card: "40:0123456789"\n    format: osdp_raw\n')
    assert _scenario_problems(tmp_path, ok) == []
    [too_big] = _scenario_problems(tmp_path, '  - badge: store_in\n    card: "12:99999999"\n')
    assert "cannot be sent by store_in's wiegand reader" in too_big
    [em] = _scenario_problems(tmp_path, '  - badge: store_in\n    card: "0F00A1B2C3"\n    format: em4100\n')
    assert "wiegand reader cannot send a em4100 card" in em
    [raw] = _scenario_problems(tmp_path, '  - badge: store_in\n    card: "40:01"\n    format: osdp_raw\n')
    assert "cannot send a osdp_raw card" in raw, "a Wiegand reader has no raw-bits format"


def test_two_wiegand_formats_with_the_same_numbers_are_different_cards() -> None:
    from doorkeep.credentials import card_hash

    key = bytes(32)
    hashes = {card_hash(key, fmt, "12:34567") for fmt in ("wiegand26", "wiegand34", "wiegand37", "ascii")}
    assert len(hashes) == 4, "a card of one format must never pass for a card of another"


# ------------------------------------------------ named formats (wiegand_formats)
# Layouts as published for each HID format name (docs/readers.md has the table): every frame has an even parity
# bit first and an odd one last; the 37-bit spans overlap on bit 18. The frames below are written out by hand,
# not by the encoder, so a wrong field split or parity span in doorkeep/card_formats.py fails them.

from doorkeep import card_formats as cf  # noqa: E402 - grouped with the tests that use it
from doorkeep.credentials import card_hash  # noqa: E402

# 34 bits, facility 1 and card 1: E, 15 zeros, 1 (facility), 15 zeros, 1 (card), O. Bits 1-16 hold one 1, so
# E = 1; bits 17-32 hold one 1, so O = 0 (the span plus O must be odd).
KNOWN_34 = [1] + [0] * 15 + [1] + [0] * 15 + [1] + [0]
# 37 bits, all-zero but the last data bit (index 35): bits 1-18 hold none, E = 0; bits 18-35 hold one, O = 0.
KNOWN_37 = [0] + [0] * 34 + [1] + [0]
# 37 bits with only index 18 set (the bit both spans count): E = 1 and O = 0.
KNOWN_37_SHARED = [1] + [0] * 17 + [1] + [0] * 17 + [0]


def _chosen(*pairs: tuple[int, str]) -> dict:
    return cf.resolve(pairs)


@pytest.mark.parametrize(("bits", "choice", "read"), [
    (KNOWN_26, (), CardRead("1:1", "wiegand26")),
    (KNOWN_26, ((26, "raw"),), CardRead("26:65537", "wiegand_raw")),           # facility 1 << 16 | card 1
    (KNOWN_34, (), CardRead("1:1", "wiegand34")),                              # h10306 by default
    (KNOWN_34, ((34, "h10306"),), CardRead("1:1", "wiegand34")),
    (KNOWN_34, ((34, "n10002"),), CardRead("1:1", "wiegand34")),               # the same split as h10306
    (KNOWN_34, ((34, "raw"),), CardRead(f"34:{(1 << 16) + 1}", "wiegand_raw")),
    (KNOWN_37, (), CardRead("0:1", "wiegand37")),                              # h10304 by default
    (KNOWN_37, ((37, "h10304"),), CardRead("0:1", "wiegand37")),
    (KNOWN_37, ((37, "h10302"),), CardRead("1", "h10302")),
    (KNOWN_37, ((37, "raw"),), CardRead("37:1", "wiegand_raw")),
    (KNOWN_37_SHARED, (), CardRead(f"0:{1 << 17}", "wiegand37")),  # index 18 is the 2nd of 19 card bits
    (KNOWN_37_SHARED, ((37, "h10302"),), CardRead(str(1 << 17), "h10302")),  # and the 18th of 35: also 2**17
], ids=["26", "26-raw", "34", "34-h10306", "34-n10002", "34-raw", "37", "37-h10304", "37-h10302", "37-raw",
        "37-shared-bit", "37-shared-bit-h10302"])
def test_hand_made_frames_read_as_each_named_format_splits_them(bits: list[int], choice: tuple,
                                                                   read: CardRead) -> None:
    assert decode_bits(bits, _chosen(*choice)) == read


def test_a_choice_for_one_length_leaves_the_others_at_their_default() -> None:
    layouts = _chosen((37, "h10302"))
    assert decode_bits(KNOWN_26, layouts) == CardRead("1:1", "wiegand26")
    assert decode_bits(KNOWN_34, layouts) == CardRead("1:1", "wiegand34")
    assert cf.DEFAULTS == {26: "h10301", 34: "h10306", 37: "h10304"}, "the defaults keep existing hashes"


@pytest.mark.parametrize(("name", "n"), sorted(cf.LAYOUTS), ids=[f"{n}-{b}" for n, b in sorted(cf.LAYOUTS)])
def test_every_named_format_round_trips_and_any_flipped_bit_is_a_parity_fault(name: str, n: int) -> None:
    layout = cf.LAYOUTS[(name, n)]
    layouts = _chosen((n, name))
    top = (1 << layout.card_bits) - 1  # every field at its largest: a field one bit too narrow fails
    if name == "raw":
        number = f"{n}:{top}"
    elif layout.facility is None:
        number = str(top)
    else:
        number = f"{(1 << layout.facility_bits) - 1}:{top}"
    bits = card_bits(name, number)
    assert len(bits) == n
    assert decode_bits(bits, layouts) == CardRead(number, layout.credential)
    for i in range(n):
        flipped = list(bits)
        flipped[i] ^= 1
        item = decode_bits(flipped, layouts)
        assert isinstance(item, FrameFault) and item.kind == "parity", f"{name}: bit {i} flipped read as {item}"


def test_h10302_and_h10304_share_parity_so_the_configured_choice_decides_the_number() -> None:
    """Both accept the same frames; the card's number (and so its hash) is the reader's configured split."""
    bits = card_bits("h10304", "1234:56789")
    as_h10302 = decode_bits(bits, _chosen((37, "h10302")))
    assert as_h10302 == CardRead(str((1234 << 19) | 56789), "h10302")
    key = bytes(range(32))
    assert card_hash(key, as_h10302.format, as_h10302.number) != card_hash(key, "wiegand37", "1234:56789")


def test_existing_card_hashes_are_unchanged_and_new_formats_get_their_own_family() -> None:
    """The keyed hash is HMAC-SHA256 over "FAMILY:NUMBER"; cards registered before the choice existed hash the
    same, whichever named format (default, explicit or its twin n10002) reads them."""
    import hashlib
    import hmac

    key = bytes(range(32))

    def by_hand(msg: str) -> str:
        return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()

    for name in ("h10306", "n10002"):
        read = decode_bits(card_bits(name, "1234:5678"), _chosen((34, name)))
        assert card_hash(key, read.format, read.number) == by_hand("wiegand34:1234:5678")
    read = decode_bits(card_bits("h10304", "1234:56789"), _chosen((37, "h10304")))
    assert card_hash(key, read.format, read.number) == by_hand("wiegand37:1234:56789")
    assert card_hash(key, "h10302", "123") == by_hand("h10302:123") != card_hash(key, "ascii", "123")
    assert card_hash(key, "wiegand_raw", "26:123") == by_hand("wiegand_raw:26:123")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 1), min_size=26, max_size=37),
       st.sampled_from(sorted(cf.LAYOUTS)))
def test_whatever_a_named_format_reads_is_what_its_encoder_sends(bits: list[int], named: tuple[str, int]) -> None:
    name, n = named
    item = decode_bits(bits, _chosen((n, name)))
    assert isinstance(item, (CardRead, FrameFault))
    if isinstance(item, CardRead):
        fmt = name if len(bits) == n else cf.LAYOUTS[(cf.DEFAULTS[len(bits)], len(bits))].credential
        assert card_bits(fmt, item.number) == bits


@pytest.mark.parametrize(("fmt", "number", "why"), [
    ("h10302", "0123", "write '123'"),
    ("h10302", str(1 << 35), "does not fit"),
    ("h10302", "12:34", "in decimal"),
    ("wiegand_raw", "25:1", "BITS:PAYLOAD"),
    ("wiegand_raw", f"26:{1 << 24}", "does not fit"),
    ("wiegand_raw", "26:007", "write '26:7'"),
])
def test_new_card_numbers_that_no_reader_sends_are_refused(fmt: str, number: str, why: str) -> None:
    problem = cf.number_problem(fmt, number)
    assert problem is not None and why in problem


# ---------------------------------------------------------- config: wiegand_formats


def test_config_reads_wiegand_formats_per_length(tmp_path: Path) -> None:
    dev = _device(tmp_path, 'protocol = "wiegand", d0_pin = 23, d1_pin = 24, '
                            'wiegand_formats = { 37 = "h10302", 34 = "n10002" }')
    errors: list = []
    cfg = _load_device(dev, errors)
    assert [e for e in errors if "reader" in e.key] == []
    assert cfg.doors["lobby_in"].reader.wiegand_formats == ((34, "n10002"), (37, "h10302"))
    (tmp_path / "b").mkdir()
    plain = _load_device(_device(tmp_path / "b", 'protocol = "wiegand", d0_pin = 23, d1_pin = 24'), [])
    assert plain.doors["lobby_in"].reader.wiegand_formats == ()


@pytest.mark.parametrize(("formats", "key", "fix"), [
    ('{ 37 = "h10306" }', "wiegand_formats.37", "h10304, h10302, raw"),
    ('{ 26 = "h10302" }', "wiegand_formats.26", "h10301, raw"),
    ('{ 34 = 5 }', "wiegand_formats.34", "h10306, n10002, raw"),
    ('{ 35 = "raw" }', "wiegand_formats.35", "26 = h10301 | raw; 34 = h10306 | n10002 | raw"),
    ('"h10302"', "wiegand_formats", "[doors.lobby_in.reader.wiegand_formats]"),
])
def test_config_refuses_a_bad_wiegand_format_naming_file_key_and_allowed_values(
        tmp_path: Path, formats: str, key: str, fix: str) -> None:
    errors: list = []
    _load_device(_device(tmp_path, f'protocol = "wiegand", d0_pin = 23, d1_pin = 24, wiegand_formats = {formats}'),
                 errors)
    hits = [e for e in errors if e.key == f"doors.lobby_in.reader.{key}"]
    assert hits, errors
    assert fix in hits[0].fix and hits[0].file.endswith("pi.toml")


def test_wiegand_formats_applies_to_osdp_readers_and_is_unknown_elsewhere(tmp_path: Path) -> None:
    errors: list = []
    cfg = _load_device(_device(tmp_path, 'protocol = "osdp", url = "/dev/ttyS0", address = 0, '
                                         'secure_channel = false, wiegand_formats = { 37 = "raw" }'), errors)
    assert cfg.doors["lobby_in"].reader.wiegand_formats == ((37, "raw"),)
    errors = []
    (tmp_path / "b").mkdir()
    _load_device(_device(tmp_path / "b", 'protocol = "em4100", url = "/dev/ttyS0", '
                                         'wiegand_formats = { 37 = "raw" }'), errors)
    assert [e.problem for e in errors if e.key.endswith("reader.wiegand_formats")] == ["unknown key"]


# ------------------------------- each named format through the real edge code, hashed as the server does


def _people_file_hash(tmp_path: Path, fmt: str, number: str, key: bytes) -> str:
    """The hash the server gives a card registered in a people file (doorkeep/config.py, as `site import`)."""
    from doorkeep.config import load_people_file, load_site_file

    site = load_site_file(DEMO_SITE / "site.toml")
    level = next(iter(site.access_levels))
    path = tmp_path / "people.toml"
    path.write_text(f'[people.pat]\nname = "Pat"\nkind = "employee"\naccess_levels = ["{level}"]\n'
                    f'cards = [{{ format = "{fmt}", number = "{number}" }}]\n')
    _, cards, _ = load_people_file(path, site)
    [card] = cards
    return card.hashed(key)


@pytest.mark.parametrize(("name", "n", "registered"), [
    ("h10301", 26, ("wiegand26", "12:34567")),
    ("h10306", 34, ("wiegand34", "1234:5678")),
    ("n10002", 34, ("wiegand34", "1234:5678")),
    ("h10304", 37, ("wiegand37", "1234:56789")),
    ("h10302", 37, ("h10302", "34359738000")),
    ("raw", 26, ("wiegand_raw", "26:789012")),
    ("raw", 34, ("wiegand_raw", "34:4000000000")),
    ("raw", 37, ("wiegand_raw", "37:34359738000")),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_named_format_reads_through_the_real_reader_as_the_server_registered_it(
        tmp_path: Path, name: str, n: int, registered: tuple[str, str]) -> None:
    """Pulse trains for the card on mock pins, the real gpiozero callbacks, framer and decoder of a reader set to
    the format; the read's keyed hash is the one the server stored for the card."""
    factory = MockFactory()
    cards: list[CardRead] = []
    reader = WiegandReader("front", 23, 24, lambda d, c, t: cards.append(c), factory=factory,
                           clock=SystemClock(), formats=((n, name),))
    reader.start()
    sim = WiegandSimulator(factory, 23, 24)
    try:
        fmt, number = registered
        sim.badge(number, name)  # the simulator sends the card in the named layout
        assert wait_until(lambda: len(cards) == 1, 3), (reader.stats, sim.stretched_frames)
        assert cards == [CardRead(number, fmt)]
        key = bytes(range(32))
        assert card_hash(key, cards[0].format, cards[0].number) == _people_file_hash(tmp_path, fmt, number, key)
    finally:
        sim.close()
        reader.stop()


def test_an_osdp_reader_splits_raw_card_bits_with_its_configured_format(tmp_path: Path) -> None:
    """The device file's choice reaches the OSDP bus (build_buses) and the RAW reply's bits decode with it."""
    from doorkeep.clock import FakeClock
    from edge.osdp import packet as pk
    from edge.osdp.cards import encode_wiegand, pack_bits
    from edge.osdp.cp import build_buses

    errors: list = []
    cfg = _load_device(_device(tmp_path, 'protocol = "osdp", url = "loop://", address = 3, '
                                         'secure_channel = false, wiegand_formats = { 37 = "h10302" }'), errors)
    seen: list[CardRead] = []
    handles = build_buses(dict(cfg.doors), lambda d, c, t: seen.append(c), clock=FakeClock())
    bus = handles["lobby_in"].bus
    reader = bus._readers[3]

    def reply(raw: pk.RawCard) -> None:
        bus._online_reply(reader, pk.CMD_POLL, b"", pk.Packet(3, pk.REPLY_RAW, pk.encode_raw(raw), reply=True))

    reply(encode_wiegand("h10304", 1234, 56789))
    reply(encode_wiegand("wiegand26", 12, 345))  # 26 bits: still the default split
    reply(pack_bits(card_bits("h10302", "7")))
    assert seen == [CardRead(str((1234 << 19) | 56789), "h10302"), CardRead("12:345", "wiegand26"),
                    CardRead("7", "h10302")]


def test_the_desk_registers_wiegand_cards_with_the_hash_the_edge_reads() -> None:
    """server/people.py check_card (the desk's "add card"): a Wiegand number spelled as the edge reads it is
    hashed exactly as the edge hashes that read; one the edge can never read is refused with its spelling."""
    from types import SimpleNamespace

    from server.people import PeopleError, PeopleService

    key = bytes(range(32))
    desk = SimpleNamespace(key=key, _site=lambda: SimpleNamespace(credentials={}),
                           directory=SimpleNamespace(pool_badge=lambda h: None))
    for name, n, fmt, number in [("h10301", 26, "wiegand26", "12:34567"), ("h10302", 37, "h10302", "34359738000"),
                                 ("raw", 34, "wiegand_raw", "34:4000000000")]:
        read = decode_bits(card_bits(name, number), _chosen((n, name)))
        h, stored_fmt, _ = PeopleService.check_card(desk, fmt, number, {})
        assert (stored_fmt, h) == (read.format, card_hash(key, read.format, read.number))
    with pytest.raises(PeopleError, match="write '123'"):
        PeopleService.check_card(desk, "h10302", "0123", {})
