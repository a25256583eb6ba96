"""OSDP packet layer: known-answer packets, round trips, and a parser that survives any input.

Known answers: libosdp's own unit tests (goToMain/libosdp, ``test_cp_build_packet_poll`` and
``test_cp_phy_fsm_send``) expect ``FF 53 65 08 00 04 60 60 90`` for POLL to address 0x65 with sequence 0 and
``FF 53 65 09 00 05 61 00 E9 4D`` for ID (sequence 1); a Go OSDP library's tests expect ``53 00 09 00 04 41 01
07 70`` for NAK(1) and ``53 00 08 00 04 40 89 8E`` for ACK. These pin the CRC-16 seed (0x1D0F) and the layout.
"""

from __future__ import annotations

import random

import pytest

from edge.osdp import packet as pk
from edge.osdp.cards import ParityError, decode_card, encode_wiegand


@pytest.mark.parametrize(("packet", "mark", "wire"), [
    (pk.Packet(0x65, pk.CMD_POLL), True, "ff 53 65 08 00 04 60 60 90"),
    (pk.Packet(0x65, pk.CMD_ID, b"\x00", sequence=1), True, "ff 53 65 09 00 05 61 00 e9 4d"),
    (pk.Packet(0x00, pk.REPLY_NAK, b"\x01"), False, "53 00 09 00 04 41 01 07 70"),
    (pk.Packet(0x00, pk.REPLY_ACK), False, "53 00 08 00 04 40 89 8e"),
])
def test_known_answer_packets(packet: pk.Packet, mark: bool, wire: str) -> None:
    expected = bytes.fromhex(wire)
    assert packet.encode(mark=mark) == expected
    assert pk.decode(expected) == packet


def test_checksum_packets_round_trip_and_a_bad_checksum_is_a_fault() -> None:
    p = pk.Packet(3, pk.REPLY_PDID, bytes(range(12)), sequence=2, reply=True, use_crc=False)
    wire = p.encode()
    assert sum(wire) % 256 == 0, "the checksum makes the byte sum zero"
    assert pk.decode(wire) == p
    items, rest = pk.parse(wire[:-1] + bytes([wire[-1] ^ 1]))
    assert [type(i) for i in items] == [pk.PacketFault] and items[0].kind == "check" and rest == b""


def test_security_block_and_mac_are_carried_through() -> None:
    p = pk.Packet(1, pk.CMD_LED, bytes(16), sequence=3, scb=b"\x02\x17", mac=b"\xaa\xbb\xcc\xdd")
    decoded = pk.decode(p.encode())
    assert decoded == p and decoded.scb_type == pk.SCS_17
    assert decoded.header_and_body() == p.encode()[:-6], "the MAC covers SOM to the end of data"


def test_parser_resyncs_after_noise_a_fake_som_and_a_corrupted_packet() -> None:
    good = pk.Packet(5, pk.REPLY_ACK, reply=True).encode()
    corrupted = bytearray(good)
    corrupted[5] ^= 0xFF
    stream = b"\x00\x13noise" + b"\x53\x05" + bytes(corrupted) + b"\xff\xff" + good + good[:4]
    items, rest = pk.parse(stream)
    packets = [i for i in items if isinstance(i, pk.Packet)]
    faults = [i for i in items if isinstance(i, pk.PacketFault)]
    assert packets == [pk.decode(good)]
    assert faults, "noise and the corrupted packet are reported"
    assert rest == good[:4], "a packet still arriving is kept for the next read"
    more, rest = pk.parse(rest + good[4:])
    assert more == [pk.decode(good)] and rest == b""


def test_parser_never_raises_and_keeps_a_bounded_rest_on_random_input() -> None:
    rng = random.Random(7)
    parser = pk.PacketParser()
    good = pk.Packet(9, pk.REPLY_ACK, reply=True).encode()
    seen = 0
    for _ in range(400):
        chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        if rng.random() < 0.3:
            chunk += good
        for item in parser.feed(chunk):
            seen += isinstance(item, pk.Packet)
        assert len(parser._rest) <= pk.MAX_PACKET
    assert seen > 50, "valid packets between random noise are still found"


def test_payload_codecs() -> None:
    pdid = pk.PdId(b"ABC", 2, 3, 0xDEADBEEF, (1, 2, 3))
    assert pk.decode_pdid(pk.encode_pdid(pdid)) == pdid
    caps = {pk.CAP_COMMUNICATION_SECURITY: (1, 1), pk.CAP_CHECK_CHARACTER: (1, 0)}
    assert pk.decode_pdcap(pk.encode_pdcap(caps)) == caps
    assert pk.decode_keypad(pk.encode_keypad("12*#")) == (0, "12*#")
    raw = pk.RawCard(0, 1, 26, b"\x86\x43\x83\xc0")
    assert pk.decode_raw(pk.encode_raw(raw)) == raw
    with pytest.raises(ValueError):
        pk.decode_raw(b"\x00\x01\x1a\x00\x01")  # 26 bits need 4 bytes
    led = pk.LedCommand(pk.LED_GREEN, on_ms=3000, timer_ms=3000).encode()
    assert len(led) == 14 and led[5] == pk.LED_GREEN
    assert pk.BuzzerCommand(count=2).encode()[4] == 2
    assert pk.keyset_command(bytes(16))[:2] == b"\x01\x10"


@pytest.mark.parametrize(("fmt", "facility", "number"), [
    ("wiegand26", 12, 34567), ("wiegand26", 255, 65535), ("wiegand34", 1234, 5678), ("wiegand37", 65000, 500000),
])
def test_wiegand_formats_decode_to_facility_and_card(fmt: str, facility: int, number: int) -> None:
    assert decode_card(encode_wiegand(fmt, facility, number)) == (fmt, f"{facility}:{number}")


def test_wiegand26_known_bits_and_parity_failure() -> None:
    # H10301 facility 12, card 34567: 0 00001100 1000011100000111 1 (even parity over 1-12, odd over 13-24)
    card = encode_wiegand("wiegand26", 12, 34567)
    assert card.data.hex() == "864383c0"
    flipped = pk.RawCard(0, 1, 26, bytes([card.data[0] ^ 0x01]) + card.data[1:])
    with pytest.raises(ParityError):
        decode_card(flipped)


def test_unknown_bit_counts_are_kept_as_raw() -> None:
    assert decode_card(pk.RawCard(0, 0, 40, bytes.fromhex("0123456789"))) == ("osdp_raw", "40:0123456789")


def test_the_table_driven_crc_equals_the_bitwise_definition_for_any_bytes_and_seed() -> None:
    rng = random.Random(15)
    for n in (0, 1, 2, 13, 64, 300):
        data = bytes(rng.randrange(256) for _ in range(n))
        for seed in (0x1D0F, 0x0000, 0xFFFF, rng.randrange(0x10000)):
            assert pk.crc16(data, seed) == pk._crc16_bitwise(data, seed), (n, seed)
