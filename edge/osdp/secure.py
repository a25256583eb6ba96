"""OSDP Secure Channel: key derivation, cryptograms, MAC chaining and data encryption (pure, no I/O).

The handshake (CP -> PD ``CHLNG`` with RND.A, PD -> CP ``CCRYPT`` with cUID, RND.B and the client cryptogram,
CP -> PD ``SCRYPT`` with the server cryptogram, PD -> CP ``RMAC_I`` with the initial R-MAC) proves that both
ends hold the same Secure Channel Base Key (SCBK) without sending it, and derives three AES-128 session keys
from it and RND.A:

* ``S-ENC  = AES(SCBK, 01 82 RND.A[0:6] 00*8)`` encrypts cryptograms and data,
* ``S-MAC1 = AES(SCBK, 01 01 RND.A[0:6] 00*8)`` and ``S-MAC2 = AES(SCBK, 01 02 ...)`` compute MACs.

Every packet after that carries a 4-byte MAC: AES-CBC over the packet (SOM to end of data, padded with 0x80
then zeros to a 16-byte boundary when not already on one) with S-MAC1, the last block with S-MAC2, the IV being
the previous MAC in the other direction - so each MAC chains every earlier packet and a replayed or reordered
packet fails. Data is AES-CBC with S-ENC, always padded with 0x80 then zeros, the IV being the bitwise
inverse of that same previous MAC.

Cross-checked against libosdp (tests/e2e/test_osdp_interop.py: a libosdp peripheral device accepts our
handshake, MACs and ciphertext and we accept its); the packet CRC against libosdp's own unit-test vector
(tests/unit/test_osdp_packet.py).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edge.osdp.packet import MAC_LEN, SCS_15, SCS_16, SCS_17, SCS_18, Packet

SCBK_D = bytes(range(0x30, 0x40))
"""The default key every reader ships with: it authenticates nothing, so doorkeep only uses it to install a key."""
BLOCK = 16
KEY_TYPE_SCBK_D = 0
KEY_TYPE_SCBK = 1


class SecureChannelError(ValueError):
    """A MAC that does not verify, ciphertext that does not decrypt, or a cryptogram that does not match."""


def _ecb(key: bytes, block: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def _cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def _cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return dec.update(data) + dec.finalize()


@dataclass(frozen=True)
class SessionKeys:
    s_enc: bytes
    s_mac1: bytes
    s_mac2: bytes


def derive_session_keys(scbk: bytes, rnd_a: bytes) -> SessionKeys:
    if len(scbk) != BLOCK or len(rnd_a) != 8:
        raise ValueError("SCBK is 16 bytes and RND.A 8 bytes")
    tail = rnd_a[:6] + bytes(8)
    return SessionKeys(_ecb(scbk, b"\x01\x82" + tail), _ecb(scbk, b"\x01\x01" + tail), _ecb(scbk, b"\x01\x02" + tail))


def client_cryptogram(keys: SessionKeys, rnd_a: bytes, rnd_b: bytes) -> bytes:
    """What the PD sends in CCRYPT: proof it holds the SCBK."""
    return _ecb(keys.s_enc, rnd_a + rnd_b)


def server_cryptogram(keys: SessionKeys, rnd_a: bytes, rnd_b: bytes) -> bytes:
    """What the CP sends in SCRYPT: proof the CP holds the SCBK."""
    return _ecb(keys.s_enc, rnd_b + rnd_a)


def initial_rmac(keys: SessionKeys, server_crypt: bytes) -> bytes:
    """R-MAC-I, the PD's answer to SCRYPT and the seed of the MAC chain."""
    return _ecb(keys.s_mac2, _ecb(keys.s_mac1, server_crypt))


def pad_mac(data: bytes) -> bytes:
    """MAC padding: 0x80 then zeros, only when the data is not already on a block boundary."""
    if len(data) % BLOCK == 0:
        return data
    data = data + b"\x80"
    return data + bytes(-len(data) % BLOCK)


def pad_data(data: bytes) -> bytes:
    """Data padding: always 0x80 then zeros to the next block boundary."""
    data = data + b"\x80"
    return data + bytes(-len(data) % BLOCK)


def unpad_data(data: bytes) -> bytes:
    stripped = data.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(data) - len(stripped) >= BLOCK:
        raise SecureChannelError("decrypted data is not padded with 0x80")
    return stripped[:-1]


def compute_mac(keys: SessionKeys, iv: bytes, message: bytes) -> bytes:
    """The full 16-byte MAC of ``message``: CBC with S-MAC1 over all but the last block, S-MAC2 for the last."""
    padded = pad_mac(message)
    if len(padded) > BLOCK:
        chained = _cbc_encrypt(keys.s_mac1, iv, padded[:-BLOCK])
        iv = chained[-BLOCK:]
    return _cbc_encrypt(keys.s_mac2, iv, padded[-BLOCK:])


def encrypt_data(keys: SessionKeys, last_mac: bytes, data: bytes) -> bytes:
    iv = bytes(b ^ 0xFF for b in last_mac)
    return _cbc_encrypt(keys.s_enc, iv, pad_data(data))


def decrypt_data(keys: SessionKeys, last_mac: bytes, data: bytes) -> bytes:
    if not data or len(data) % BLOCK:
        raise SecureChannelError(f"encrypted data of {len(data)} bytes is not whole AES blocks")
    iv = bytes(b ^ 0xFF for b in last_mac)
    return unpad_data(_cbc_decrypt(keys.s_enc, iv, data))


def cryptograms_match(expected: bytes, received: bytes) -> bool:
    """The one way doorkeep compares a cryptogram, an R-MAC-I or a MAC: in constant time.

    ``==`` on bytes returns at the first differing byte, so the time a refusal takes tells a peer on the bus how
    many leading bytes it guessed right; ``hmac.compare_digest`` takes the same time whatever the contents.
    Every comparison of secret-derived bytes in ``edge/osdp/`` and the PD simulator goes through here
    (tests/unit/test_osdp_security.py checks the sources for any other).
    """
    return hmac.compare_digest(bytes(expected), bytes(received))


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


@dataclass
class SecureSession:
    """One established Secure Channel, seen from either end (``is_cp`` chooses the direction).

    ``c_mac`` is the MAC of the last command, ``r_mac`` of the last reply; a command's MAC chains from
    ``r_mac`` and a reply's from ``c_mac``. A packet that fails verification leaves the chain untouched, and
    the caller must drop the session (the spec: an SC ends on the first MAC or decryption failure).
    """

    keys: SessionKeys
    is_cp: bool = True
    r_mac: bytes = b""
    c_mac: bytes = field(default=b"")

    @classmethod
    def established(cls, keys: SessionKeys, rmac_i: bytes, *, is_cp: bool = True) -> SecureSession:
        return cls(keys, is_cp, r_mac=rmac_i, c_mac=b"")

    def _iv_for(self, outgoing_from_cp: bool) -> bytes:
        return self.r_mac if outgoing_from_cp else self.c_mac

    def seal(self, packet: Packet) -> Packet:
        """Turn a clear packet into its Secure Channel form: data encrypted (if any), SCB set, MAC appended."""
        from_cp = not packet.reply
        iv = self._iv_for(from_cp)
        if packet.data:
            data = encrypt_data(self.keys, iv, packet.data)
            scb = bytes([2, SCS_17 if from_cp else SCS_18])
        else:
            data = b""
            scb = bytes([2, SCS_15 if from_cp else SCS_16])
        placeholder = Packet(packet.address, packet.code, data, packet.sequence, packet.reply, packet.use_crc,
                             scb, bytes(MAC_LEN))
        mac = compute_mac(self.keys, iv, placeholder.header_and_body())
        if from_cp:
            self.c_mac = mac
        else:
            self.r_mac = mac
        return Packet(packet.address, packet.code, data, packet.sequence, packet.reply, packet.use_crc, scb,
                      mac[:MAC_LEN])

    def open(self, packet: Packet) -> Packet:
        """Verify and decrypt a received Secure Channel packet; raises :class:`SecureChannelError`."""
        from_cp = not packet.reply
        expected = (SCS_15, SCS_17) if from_cp else (SCS_16, SCS_18)
        if packet.scb_type not in expected:
            raise SecureChannelError(f"packet without a Secure Channel block (SCB {packet.scb.hex() or 'none'})")
        iv = self._iv_for(from_cp)
        mac = compute_mac(self.keys, iv, packet.header_and_body())
        if not cryptograms_match(mac[:MAC_LEN], packet.mac):
            raise SecureChannelError("MAC does not verify")
        data = packet.data
        if packet.scb_type in (SCS_17, SCS_18):
            data = decrypt_data(self.keys, iv, data) if data else b""
        if from_cp:
            self.c_mac = mac
        else:
            self.r_mac = mac
        return Packet(packet.address, packet.code, data, packet.sequence, packet.reply, packet.use_crc,
                      packet.scb, packet.mac)
