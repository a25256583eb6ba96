"""OSDP v2 packets: pure encode/decode and a resynchronising stream parser, no I/O.

A packet on the wire is::

    [0xFF mark]  SOM 0x53 | ADDR | LEN_LSB LEN_MSB | CTRL | [SCB] | CODE | DATA | [MAC x4] | CRC16 (LSB first) or CKSUM

``ADDR`` carries the reply bit 0x80 on everything a peripheral device (PD) sends; ``LEN`` counts every byte from
SOM to the check bytes included; ``CTRL`` holds the sequence number (bits 0-1), the CRC flag (0x04: CRC-16,
else an 8-bit checksum) and the security-control-block flag (0x08). The CRC is CRC-16/CCITT (poly 0x1021, not
reflected) seeded with 0x1D0F as the OSDP specification says.

Like ``edge.framing``, the parser never raises on wire input: noise, a bad CRC or a truncated packet becomes a
:class:`PacketFault` and parsing resumes at the next SOM, so a noisy RS-485 line costs packets, not the bus.
Building the Secure Channel's MAC and encryption on top of these packets is ``edge.osdp.secure``'s job; here a
packet simply carries its ``scb`` and ``mac`` bytes through.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOM = 0x53
MARK = 0xFF
REPLY_BIT = 0x80
BROADCAST = 0x7F
MAX_ADDRESS = 126
CTRL_SQN = 0x03
CTRL_CRC = 0x04
CTRL_SCB = 0x08
HEADER_LEN = 5
MAX_PACKET = 1440
"""Longest packet accepted; anything claiming more is noise (libosdp and most readers stay far below)."""
RAW_CAP = 64

# Commands (CP -> PD)
CMD_POLL = 0x60
CMD_ID = 0x61
CMD_CAP = 0x62
CMD_LSTAT = 0x64
CMD_OUT = 0x68
CMD_LED = 0x69
CMD_BUZ = 0x6A
CMD_COMSET = 0x6E
CMD_KEYSET = 0x75
CMD_CHLNG = 0x76
CMD_SCRYPT = 0x77

# Replies (PD -> CP)
REPLY_ACK = 0x40
REPLY_NAK = 0x41
REPLY_PDID = 0x45
REPLY_PDCAP = 0x46
REPLY_LSTATR = 0x48
REPLY_RAW = 0x50
REPLY_FMT = 0x51
REPLY_KEYPAD = 0x53
REPLY_COM = 0x54
REPLY_CCRYPT = 0x76
REPLY_RMAC_I = 0x78
REPLY_BUSY = 0x79

# Security control block types
SCS_11 = 0x11  # CP -> PD CHLNG
SCS_12 = 0x12  # PD -> CP CCRYPT
SCS_13 = 0x13  # CP -> PD SCRYPT
SCS_14 = 0x14  # PD -> CP RMAC_I
SCS_15 = 0x15  # CP -> PD, MAC, data in clear
SCS_16 = 0x16  # PD -> CP, MAC, data in clear
SCS_17 = 0x17  # CP -> PD, MAC, data encrypted
SCS_18 = 0x18  # PD -> CP, MAC, data encrypted
MAC_LEN = 4

NAK_REASONS: dict[int, str] = {
    0: "no error",
    1: "message check character(s) error",
    2: "command length error",
    3: "unknown command code",
    4: "unexpected sequence number",
    5: "security block not supported",
    6: "encrypted communication required",
    7: "biometric type not supported",
    8: "biometric format not supported",
    9: "unable to process command record",
}
NAK_SC_REQUIRED = 6
NAK_SCB_UNSUPPORTED = 5

# Capability function codes (PDCAP) that the CP looks at
CAP_CHECK_CHARACTER = 8
CAP_COMMUNICATION_SECURITY = 9

# LED colours
LED_OFF = 0
LED_RED = 1
LED_GREEN = 2
LED_AMBER = 3
LED_BLUE = 4


def _crc16_bitwise(data: bytes, seed: int) -> int:
    crc = seed
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else (crc << 1)
            crc &= 0xFFFF
    return crc


_CRC16_TABLE = tuple(_crc16_bitwise(bytes([i]), 0) for i in range(256))
"""The CRC of each byte value from a zero register: one lookup per byte instead of eight shifts, since every
packet of every poll is checked twice (built, then parsed at the other end)."""


def crc16(data: bytes, seed: int = 0x1D0F) -> int:
    """CRC-16/CCITT (poly 0x1021, MSB first) with the OSDP seed 0x1D0F."""
    crc = seed
    table = _CRC16_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc


def checksum(data: bytes) -> int:
    """The 8-bit checksum: two's complement of the byte sum, so that all bytes plus it sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


@dataclass(frozen=True)
class Packet:
    """One OSDP packet, command or reply.

    ``scb`` is the whole security control block (length, type, data) or ``b""``; ``mac`` the 4 MAC bytes of a
    Secure Channel packet (SCS_15..18) or ``b""``. ``data`` is as on the wire (still encrypted under SCS_17/18).
    """

    address: int
    code: int
    data: bytes = b""
    sequence: int = 0
    reply: bool = False
    use_crc: bool = True
    scb: bytes = b""
    mac: bytes = b""

    @property
    def scb_type(self) -> int | None:
        return self.scb[1] if len(self.scb) >= 2 else None

    def header_and_body(self) -> bytes:
        """Everything from SOM to the end of DATA: what the MAC is computed over (length already final)."""
        total = HEADER_LEN + len(self.scb) + 1 + len(self.data) + len(self.mac) + (2 if self.use_crc else 1)
        ctrl = (self.sequence & CTRL_SQN) | (CTRL_CRC if self.use_crc else 0) | (CTRL_SCB if self.scb else 0)
        addr = (self.address & 0x7F) | (REPLY_BIT if self.reply else 0)
        return bytes([SOM, addr]) + struct.pack("<H", total) + bytes([ctrl]) + self.scb + bytes([self.code]) \
            + self.data

    def encode(self, *, mark: bool = False) -> bytes:
        """The wire bytes; ``mark`` prefixes the optional 0xFF mark byte of OSDP 2.2."""
        if not 0 <= self.address <= BROADCAST:
            raise ValueError(f"OSDP address must be 0..127, got {self.address}")
        if self.mac and len(self.mac) != MAC_LEN:
            raise ValueError(f"MAC must be {MAC_LEN} bytes")
        body = self.header_and_body() + self.mac
        check = struct.pack("<H", crc16(body)) if self.use_crc else bytes([checksum(body)])
        return (bytes([MARK]) if mark else b"") + body + check


@dataclass(frozen=True)
class PacketFault:
    """Bytes that were skipped, kept so the bus can count and log them."""

    kind: str  # "garbled" | "check" | "oversized" | "malformed"
    detail: str
    raw: bytes


def _fault(kind: str, detail: str, raw: bytes) -> PacketFault:
    return PacketFault(kind, detail, bytes(raw[:RAW_CAP]))


def _decode_one(frame: bytes) -> Packet | PacketFault:
    """Judge one complete frame (length already known to match)."""
    ctrl = frame[4]
    use_crc = bool(ctrl & CTRL_CRC)
    body_end = len(frame) - (2 if use_crc else 1)
    if body_end < HEADER_LEN + 1:
        return _fault("malformed", f"packet of {len(frame)} bytes has no room for a code", frame)
    body = frame[:body_end]
    if use_crc:
        sent = struct.unpack("<H", frame[body_end:])[0]
        if sent != crc16(body):
            return _fault("check", f"CRC {sent:04X} sent, {crc16(body):04X} computed", frame)
    elif frame[body_end] != checksum(body):
        return _fault("check", f"checksum {frame[body_end]:02X} sent, {checksum(body):02X} computed", frame)
    pos = HEADER_LEN
    scb = b""
    if ctrl & CTRL_SCB:
        scb_len = body[pos]
        if scb_len < 2 or pos + scb_len >= len(body):
            return _fault("malformed", f"security block length {scb_len} does not fit", frame)
        scb = bytes(body[pos : pos + scb_len])
        pos += scb_len
    mac = b""
    mac_end = len(body)
    if scb and scb[1] in (SCS_15, SCS_16, SCS_17, SCS_18):
        if len(body) - pos < 1 + MAC_LEN:
            return _fault("malformed", "secure packet too short for its MAC", frame)
        mac = bytes(body[-MAC_LEN:])
        mac_end = len(body) - MAC_LEN
    addr = body[1]
    return Packet(address=addr & 0x7F, code=body[pos], data=bytes(body[pos + 1 : mac_end]), sequence=ctrl & CTRL_SQN,
                  reply=bool(addr & REPLY_BIT), use_crc=use_crc, scb=scb, mac=mac)


def decode(frame: bytes) -> Packet:
    """Decode exactly one packet (an optional leading mark byte allowed); raises ``ValueError`` on anything else.

    For tests and tools; the bus uses :func:`parse`, which never raises.
    """
    items, rest = parse(frame)
    packets = [i for i in items if isinstance(i, Packet)]
    faults = [i for i in items if isinstance(i, PacketFault)]
    if faults:
        raise ValueError(f"bad OSDP packet: {faults[0].kind}: {faults[0].detail}")
    if rest or len(packets) != 1:
        raise ValueError("not exactly one complete OSDP packet")
    return packets[0]


def parse(buffer: bytes) -> tuple[list[Packet | PacketFault], bytes]:
    """Split a byte stream into packets and faults; ``rest`` is an incomplete packet to prepend to the next read.

    Mark bytes (0xFF) before a SOM are the line's idle state and are skipped silently; any other byte outside a
    packet is reported once per run. A header whose length is impossible is reported and parsing restarts at
    the byte after its SOM, so a SOM inside noise cannot swallow the real packet after it.
    """
    items: list[Packet | PacketFault] = []
    size = len(buffer)
    i = 0
    while i < size:
        if buffer[i] == MARK:
            i += 1
            continue
        if buffer[i] != SOM:
            start = buffer.find(SOM, i)
            end = size if start == -1 else start
            junk = bytes(b for b in buffer[i:end] if b != MARK)
            if junk:
                items.append(_fault("garbled", f"{len(junk)} bytes outside any packet", junk))
            if start == -1:
                return items, b""
            i = start
            continue
        if size - i < HEADER_LEN:
            return items, bytes(buffer[i:])
        length = buffer[i + 2] | (buffer[i + 3] << 8)
        ctrl = buffer[i + 4]
        minimum = HEADER_LEN + 1 + (2 if ctrl & CTRL_CRC else 1)
        if length < minimum or length > MAX_PACKET or ctrl & 0xF0:
            items.append(_fault("oversized" if length > MAX_PACKET else "malformed",
                                f"header claims {length} bytes (ctrl {ctrl:02X})", buffer[i : i + HEADER_LEN]))
            i += 1
            continue
        if size - i < length:
            return items, bytes(buffer[i:])
        item = _decode_one(bytes(buffer[i : i + length]))
        if isinstance(item, PacketFault) and item.kind == "check":
            # A SOM inside noise can fake a header: report it, then look for a real SOM right after it.
            items.append(item)
            nxt = buffer.find(SOM, i + 1, i + length)
            i = nxt if nxt != -1 else i + length  # the rest of the bad packet is not reported a second time
            continue
        items.append(item)
        i += length
    return items, b""


class PacketParser:
    """Keeps the unconsumed bytes between reads so the bus just feeds chunks."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[Packet | PacketFault]:
        items, self._rest = parse(self._rest + bytes(data))
        return items

    def reset(self) -> None:
        self._rest = b""


# ------------------------------------------------------------------ command and reply payloads


@dataclass(frozen=True)
class LedCommand:
    """One LED record: a temporary flash (``on_ms``/``off_ms`` for ``timer_ms``) over a permanent colour."""

    color: int
    on_ms: int = 500
    off_ms: int = 0
    timer_ms: int = 1000
    reader: int = 0
    led: int = 0
    perm_color: int = LED_OFF

    def encode(self) -> bytes:
        on = max(0, min(255, self.on_ms // 100))
        off = max(0, min(255, self.off_ms // 100))
        timer = max(0, min(0xFFFF, self.timer_ms // 100))
        # temp control 2 = set temporary state; permanent control 1 = set permanent state
        return bytes([self.reader, self.led, 2, on, off, self.color, LED_OFF]) + struct.pack("<H", timer) \
            + bytes([1, 1, 0, self.perm_color, self.perm_color])


@dataclass(frozen=True)
class BuzzerCommand:
    """One buzzer record: ``count`` beeps of ``on_ms`` separated by ``off_ms`` (tone 2 = default tone)."""

    count: int = 1
    on_ms: int = 200
    off_ms: int = 100
    reader: int = 0
    tone: int = 2

    def encode(self) -> bytes:
        return bytes([self.reader, self.tone, max(1, min(255, self.on_ms // 100)),
                      max(0, min(255, self.off_ms // 100)), max(0, min(255, self.count))])


def out_command(output: int, control: int, timer_ms: int = 0) -> bytes:
    """OUT record: control 1 = permanent off, 2 = permanent on, 5/6 = temporary on/off for ``timer_ms``."""
    return bytes([output, control]) + struct.pack("<H", max(0, min(0xFFFF, timer_ms // 100)))


def comset_command(address: int, baudrate: int) -> bytes:
    return bytes([address]) + struct.pack("<I", baudrate)


def keyset_command(key: bytes) -> bytes:
    """KEYSET: key type 1 (SCBK), length, key. Only ever sent over an established Secure Channel."""
    if len(key) != 16:
        raise ValueError("an SCBK is 16 bytes")
    return bytes([1, len(key)]) + key


@dataclass(frozen=True)
class PdId:
    vendor: bytes
    model: int
    version: int
    serial: int
    firmware: tuple[int, int, int]


def decode_pdid(data: bytes) -> PdId:
    if len(data) < 12:
        raise ValueError(f"PDID needs 12 bytes, got {len(data)}")
    return PdId(bytes(data[0:3]), data[3], data[4], struct.unpack("<I", data[5:9])[0],
                (data[9], data[10], data[11]))


def encode_pdid(pdid: PdId) -> bytes:
    return pdid.vendor[:3].ljust(3, b"\0") + bytes([pdid.model, pdid.version]) + struct.pack("<I", pdid.serial) \
        + bytes(pdid.firmware)


def decode_pdcap(data: bytes) -> dict[int, tuple[int, int]]:
    """Capability function code -> (compliance level, number of items)."""
    if len(data) % 3:
        raise ValueError(f"PDCAP length {len(data)} is not a multiple of 3")
    return {data[k]: (data[k + 1], data[k + 2]) for k in range(0, len(data), 3)}


def encode_pdcap(caps: dict[int, tuple[int, int]]) -> bytes:
    return b"".join(bytes([fc, lvl, n]) for fc, (lvl, n) in sorted(caps.items()))


@dataclass(frozen=True)
class RawCard:
    """A RAW reply: the card's bits as the reader saw them (``format`` 0 = unspecified, 1 = Wiegand)."""

    reader: int
    format: int
    bits: int
    data: bytes


def decode_raw(data: bytes) -> RawCard:
    if len(data) < 4:
        raise ValueError(f"RAW needs at least 4 bytes, got {len(data)}")
    bits = struct.unpack("<H", data[2:4])[0]
    payload = bytes(data[4:])
    if bits == 0 or (bits + 7) // 8 != len(payload):
        raise ValueError(f"RAW says {bits} bits but carries {len(payload)} bytes")
    return RawCard(data[0], data[1], bits, payload)


def encode_raw(card: RawCard) -> bytes:
    return bytes([card.reader, card.format]) + struct.pack("<H", card.bits) + card.data


def decode_keypad(data: bytes) -> tuple[int, str]:
    """(reader, digits): ASCII 0-9, ``*`` (0x7F in some readers, mapped to ``*``) and ``#`` (0x0D -> ``#``)."""
    if len(data) < 2 or data[1] != len(data) - 2:
        raise ValueError("KEYPAD length does not match its digit count")
    keys = []
    for b in data[2:]:
        if b == 0x7F:
            keys.append("*")
        elif b == 0x0D:
            keys.append("#")
        else:
            keys.append(chr(b))
    return data[0], "".join(keys)


def encode_keypad(digits: str, reader: int = 0) -> bytes:
    return bytes([reader, len(digits)]) + digits.encode("ascii")


def decode_nak(data: bytes) -> int:
    return data[0] if data else 0


@dataclass
class Scb:
    """Helpers to build the security control blocks."""

    @staticmethod
    def handshake(scs: int, key_type: int) -> bytes:
        return bytes([3, scs, key_type])

    @staticmethod
    def secure(scs: int) -> bytes:
        return bytes([2, scs])

