"""Secure Channel known answers, recorded from a handshake with libosdp (an independent implementation).

The OSDP specification's Annex E vectors are not available here, and no published SC vectors were found in the
stored public code, so these come from libosdp 3.2.9 (PyPI ``libosdp``) acting as the reader: doorkeep's control
panel sent CHLNG with the fixed RND.A below under SCBK 00..0F, and libosdp answered. Every value marked
"libosdp" was computed by libosdp's C code, not ours:

* CCRYPT: cUID ``beba0100afbeadde``, RND.B ``d764c8cce93255c4``, client cryptogram ``d811fe3d...0946 40``;
* RMAC_I (its answer to our SCRYPT ``791f80ad...ef3d``): ``abf9314e...50d5``;
* the reply to our first secure POLL: a RAW card read, MAC'd and AES-CBC encrypted by libosdp.

Our POLL (MAC ``018ef514``) was accepted by libosdp, so its exact bytes are pinned too.
tests/e2e/test_osdp_interop.py repeats the whole exchange live.
"""

from __future__ import annotations

import pytest

from edge.osdp import packet as pk
from edge.osdp.secure import (
    SCBK_D,
    SecureChannelError,
    SecureSession,
    client_cryptogram,
    compute_mac,
    decrypt_data,
    derive_session_keys,
    encrypt_data,
    initial_rmac,
    pad_data,
    pad_mac,
    server_cryptogram,
    unpad_data,
)

SCBK = bytes(range(16))
RND_A = bytes.fromhex("0102030405060708")
RND_B = bytes.fromhex("d764c8cce93255c4")  # libosdp
CLIENT_CRYPTOGRAM = bytes.fromhex("d811fe3d012d9b3d61c9e422bc094640")  # libosdp
SERVER_CRYPTOGRAM = bytes.fromhex("791f80ad0580c78f194aae30c799ef3d")
RMAC_I = bytes.fromhex("abf9314edc0f356c267c84f30bbc50d5")  # libosdp
OUR_POLL = bytes.fromhex("53650e000d021560018ef5140086")
LIBOSDP_RAW_REPLY = bytes.fromhex("53e51e000d0218508905450b40243b9bf3946205d6978a3ade821cb81d86")  # libosdp


def test_default_key_is_0x30_to_0x3f() -> None:
    assert SCBK_D == b"0123456789:;<=>?"


def test_client_cryptogram_matches_libosdp() -> None:
    keys = derive_session_keys(SCBK, RND_A)
    assert client_cryptogram(keys, RND_A, RND_B) == CLIENT_CRYPTOGRAM
    assert client_cryptogram(derive_session_keys(SCBK_D, RND_A), RND_A, RND_B) != CLIENT_CRYPTOGRAM


def test_server_cryptogram_and_initial_rmac_match_libosdp() -> None:
    keys = derive_session_keys(SCBK, RND_A)
    assert server_cryptogram(keys, RND_A, RND_B) == SERVER_CRYPTOGRAM
    assert initial_rmac(keys, SERVER_CRYPTOGRAM) == RMAC_I


def _session() -> tuple[SecureSession, SecureSession]:
    keys = derive_session_keys(SCBK, RND_A)
    return SecureSession.established(keys, RMAC_I), SecureSession.established(keys, RMAC_I, is_cp=False)


def test_first_secure_poll_and_libosdps_encrypted_card_reply() -> None:
    cp, _ = _session()
    poll = cp.seal(pk.Packet(0x65, pk.CMD_POLL, sequence=1))
    assert poll.encode() == OUR_POLL
    reply = cp.open(pk.decode(LIBOSDP_RAW_REPLY))
    assert reply.code == pk.REPLY_RAW
    assert pk.decode_raw(reply.data) == pk.RawCard(0, 1, 26, bytes.fromhex("864383c0"))


def test_a_replayed_or_altered_reply_fails_the_mac() -> None:
    cp, _ = _session()
    cp.seal(pk.Packet(0x65, pk.CMD_POLL, sequence=1))
    reply = pk.decode(LIBOSDP_RAW_REPLY)
    altered = pk.Packet(reply.address, reply.code, bytes([reply.data[0] ^ 1]) + reply.data[1:], reply.sequence,
                        True, True, reply.scb, reply.mac)
    with pytest.raises(SecureChannelError):
        cp.open(altered)
    cp.open(reply)
    cp.seal(pk.Packet(0x65, pk.CMD_POLL, sequence=2))
    with pytest.raises(SecureChannelError):
        cp.open(reply)  # the same reply again: the chain moved on, its MAC no longer verifies


def test_both_directions_round_trip_with_and_without_data() -> None:
    cp, pd = _session()
    for i, data in enumerate([b"", b"\x00\x01\x02", bytes(15), bytes(16), bytes(40)]):
        cmd = cp.seal(pk.Packet(1, pk.CMD_LED, data, sequence=i % 3 + 1))
        assert cmd.scb_type == (pk.SCS_17 if data else pk.SCS_15)
        assert data == b"" or cmd.data != data, "data is encrypted"
        assert pd.open(pk.decode(cmd.encode())).data == data
        reply = pd.seal(pk.Packet(1, pk.REPLY_KEYPAD, data, sequence=cmd.sequence, reply=True))
        assert cp.open(pk.decode(reply.encode())).data == data


def test_padding_rules() -> None:
    assert pad_mac(bytes(16)) == bytes(16), "MAC input on a block boundary is not padded"
    assert pad_mac(b"\x01") == b"\x01\x80" + bytes(14)
    assert pad_data(bytes(16)) == bytes(16) + b"\x80" + bytes(15), "data is always padded"
    assert unpad_data(pad_data(b"abc")) == b"abc"
    with pytest.raises(SecureChannelError):
        unpad_data(bytes(16))


def test_encryption_iv_is_the_inverted_mac() -> None:
    keys = derive_session_keys(SCBK, RND_A)
    mac = bytes(range(16))
    ct = encrypt_data(keys, mac, b"hello")
    assert decrypt_data(keys, mac, ct) == b"hello"
    with pytest.raises(SecureChannelError):
        decrypt_data(keys, bytes(16), ct)
    assert len(compute_mac(keys, mac, b"x" * 33)) == 16
