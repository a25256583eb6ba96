"""OSDP peripheral devices (readers) on a pseudo-terminal, for tests, benches and testers.

Two of them, both speaking real OSDP bytes to the edge's control panel through a pty that the edge opens with
pyserial, exactly like an RS-485 adapter:

* :class:`OsdpPdSimulator` - doorkeep's own reader simulator (``doorkeep sim osdp``): Secure Channel with an
  installed key or the default key in install mode, card presentation (Wiegand 26/34/37 or raw bits), keypad,
  and a record of every LED/buzzer/output command it was sent.
* :class:`LibosdpReader` - the independent implementation: a libosdp (PyPI ``libosdp``) peripheral device on
  the pty, used by the interoperability tests and the bench. Needs the dev extra installed.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import threading
import time
import tty
from dataclasses import dataclass, field
from typing import Any, Self

from edge.osdp import packet as pk
from edge.osdp.cards import encode_wiegand
from edge.osdp.secure import (
    KEY_TYPE_SCBK_D,
    SCBK_D,
    SecureChannelError,
    SecureSession,
    client_cryptogram,
    cryptograms_match,
    derive_session_keys,
    initial_rmac,
    random_bytes,
    server_cryptogram,
)

log = logging.getLogger("doorkeep.sim.osdp")


class _Pty:
    """A raw pty pair: the edge opens :attr:`path`, the simulator talks on the master side."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fd in (self.slave, self.master):
            try:
                os.close(fd)
            except OSError:
                pass


@dataclass
class RecordedCommand:
    """A command the reader was sent (LED, BUZ, OUT, KEYSET, COMSET), with its clear data."""

    code: int
    data: bytes
    at: float


@dataclass
class OsdpPdSimulator:
    """doorkeep's own OSDP reader on a pty. ``scbk`` None = factory state (default key, install mode)."""

    address: int = 0
    scbk: bytes | None = None
    secure_channel: bool = True
    commands: list[RecordedCommand] = field(default_factory=list)
    muted: bool = False
    """True: hear nothing, answer nothing (a cut bus or a dead reader)."""
    forge_next_reply: bool = False
    """True: the next secure card or keypad reply carries a wrong MAC (a forged packet), once."""
    nak_storm: bool = False
    """True: every command is answered by a NAK in clear, what an attacker injecting NAKs on the RS-485 wire
    ahead of the real reader makes the control panel hear (a NAK needs no key)."""
    line_baud: int | None = None
    """Pace writes at this line rate (a pty carries bytes instantly whatever the baud rate; bench only)."""
    clear_naks_pending: int = 0
    """The next this many commands are answered by a NAK in clear, like :attr:`nak_storm` but bounded
    (:meth:`inject_clear_naks`): a scenario can stay just under the control panel's threshold."""
    wrong_key_pending: int = 0
    """The next this many Secure Channel challenges are answered under a wrong key (:meth:`answer_with_wrong_key`):
    what a reader swapped on the wall, or a man in the middle without the key, looks like to the control panel."""

    def __post_init__(self) -> None:
        self._pty = _Pty()
        self._events: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self._session: SecureSession | None = None
        self._drop_session = False
        self._handshake: dict[str, Any] = {}
        self._last: tuple[int, bytes] | None = None
        self._stop = threading.Event()
        self._parser = pk.PacketParser()
        self.faults = 0
        self.mac_failures = 0
        self.poll_times: collections.deque[float] = collections.deque(maxlen=2000)
        """Arrival time of each POLL (monotonic): the poll cycle as the reader sees it (bench/osdp.py)."""
        self._thread = threading.Thread(target=self._run, name=f"osdp-pd-{self.address}", daemon=True)
        self._thread.start()

    @property
    def path(self) -> str:
        return self._pty.path

    @property
    def sc_active(self) -> bool:
        return self._session is not None

    # -- what a tester does at the reader --------------------------------------------

    def present_card(self, fmt: str, facility: int, number: int) -> None:
        self._queue(pk.REPLY_RAW, pk.encode_raw(encode_wiegand(fmt, facility, number)))

    def present_raw(self, bits: int, data: bytes, fmt: int = 0) -> None:
        self._queue(pk.REPLY_RAW, pk.encode_raw(pk.RawCard(0, fmt, bits, data)))

    def press_keys(self, keys: str) -> None:
        self._queue(pk.REPLY_KEYPAD, pk.encode_keypad(keys))

    def set_tamper(self, active: bool) -> None:
        self._queue(pk.REPLY_LSTATR, bytes([1 if active else 0, 0]))

    def inject_clear_naks(self, count: int) -> None:
        """Answer the next ``count`` commands (whatever they are) by a NAK in clear, then answer normally again."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        with self._lock:
            self.clear_naks_pending += count

    def answer_with_wrong_key(self, count: int) -> None:
        """Lose the Secure Channel session (like a reader swapped on the wall, or rebooted: the control panel's
        next secure command is NAKed in clear, once) and answer the next ``count`` challenges under our own key
        with a cryptogram under another key (each a failed handshake for the control panel), then under the
        right key again. A probe under the default key SCBK-D is answered as before (a keyed reader refuses it)
        and is not counted."""
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        with self._lock:
            self.wrong_key_pending += count
            self._drop_session = count > 0

    @property
    def injections_pending(self) -> int:
        """Clear NAKs and wrong-key answers still to be sent: 0 once the control panel has heard them all."""
        with self._lock:
            return self.clear_naks_pending + self.wrong_key_pending

    def _take(self, name: str) -> bool:
        """Consume one pending injection of kind ``name`` (an attribute); True if there was one."""
        with self._lock:
            left = getattr(self, name)
            if left <= 0:
                return False
            setattr(self, name, left - 1)
            return True

    def leds(self) -> list[int]:
        """The colours of every LED command received, in order."""
        return [c.data[5] for c in self.commands if c.code == pk.CMD_LED and len(c.data) >= 6]

    def beeps(self) -> list[int]:
        return [c.data[4] for c in self.commands if c.code == pk.CMD_BUZ and len(c.data) >= 5]

    def _queue(self, code: int, data: bytes) -> None:
        with self._lock:
            self._events.append((code, data))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._pty.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the device ------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._pty.master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self._pty.master, 4096)
            except OSError:
                return
            for item in self._parser.feed(data):
                if isinstance(item, pk.PacketFault):
                    self.faults += 1
                    continue
                if item.reply or item.address not in (self.address, pk.BROADCAST) or self.muted:
                    continue
                reply = self._handle(item)
                if reply is not None:
                    self._send(reply)

    def _send(self, wire: bytes) -> None:
        try:
            if self.line_baud:
                time.sleep(10.0 * len(wire) / self.line_baud)  # bench only: the packet's time on the wire
            os.write(self._pty.master, wire)
        except OSError:
            pass

    def _handle(self, cmd: pk.Packet) -> bytes | None:
        with self._lock:
            drop, self._drop_session = self._drop_session, False
        if drop:
            self._session = None  # the bus thread owns the session; a tester only asks for it to go
            self._last = None
        if self.nak_storm or self._take("clear_naks_pending"):
            self._session = None
            wire = pk.Packet(self.address, pk.REPLY_NAK, bytes([pk.NAK_SC_REQUIRED]), sequence=cmd.sequence,
                             reply=True).encode()
            self._last = None
            return wire
        if cmd.sequence == 0:
            self._session = None
            self._last = None
        elif self._last is not None and self._last[0] == cmd.sequence:
            return self._last[1]  # the CP did not hear our reply: say it again, do not act twice
        secure_cmd = cmd.scb_type in (pk.SCS_15, pk.SCS_17)
        if secure_cmd:
            if self._session is None:
                return self._reply(cmd, pk.REPLY_NAK, bytes([pk.NAK_SC_REQUIRED]), clear=True)
            try:
                cmd = self._session.open(cmd)
            except SecureChannelError:
                self.mac_failures += 1
                self._session = None
                return self._reply(cmd, pk.REPLY_NAK, bytes([pk.NAK_SC_REQUIRED]), clear=True)
        elif self._session is not None and cmd.code not in (pk.CMD_CHLNG, pk.CMD_SCRYPT):
            self._session = None  # a command in clear ends the session
        code = cmd.code
        if code == pk.CMD_ID:
            return self._reply(cmd, pk.REPLY_PDID, pk.encode_pdid(pk.PdId(b"DKP", 1, 1, 0x1234, (1, 0, 0))))
        if code == pk.CMD_CAP:
            caps = {pk.CAP_CHECK_CHARACTER: (1, 0), 4: (1, 1), 5: (1, 1)}
            if self.secure_channel:
                caps[pk.CAP_COMMUNICATION_SECURITY] = (1, 1)
            return self._reply(cmd, pk.REPLY_PDCAP, pk.encode_pdcap(caps))
        if code == pk.CMD_CHLNG:
            return self._challenge(cmd)
        if code == pk.CMD_SCRYPT:
            return self._scrypt(cmd)
        if self.secure_channel and self._session is None:
            return self._reply(cmd, pk.REPLY_NAK, bytes([pk.NAK_SC_REQUIRED]), clear=True)
        if code == pk.CMD_POLL:
            self.poll_times.append(time.monotonic())
            with self._lock:
                event = self._events.pop(0) if self._events else None
            if event is None:
                return self._reply(cmd, pk.REPLY_ACK, b"")
            return self._reply(cmd, event[0], event[1])
        if code in (pk.CMD_LED, pk.CMD_BUZ, pk.CMD_OUT, pk.CMD_COMSET):
            self.commands.append(RecordedCommand(code, cmd.data, time.monotonic()))
            return self._reply(cmd, pk.REPLY_ACK, b"")
        if code == pk.CMD_KEYSET and len(cmd.data) == 18 and cmd.data[0] == 1 and cmd.data[1] == 16:
            self.commands.append(RecordedCommand(code, b"(key)", time.monotonic()))
            self.scbk = bytes(cmd.data[2:18])
            return self._reply(cmd, pk.REPLY_ACK, b"")
        return self._reply(cmd, pk.REPLY_NAK, bytes([3]))

    def _challenge(self, cmd: pk.Packet) -> bytes | None:
        if not self.secure_channel or len(cmd.data) != 8 or len(cmd.scb) != 3:
            return self._reply(cmd, pk.REPLY_NAK, bytes([pk.NAK_SCB_UNSUPPORTED]), clear=True)
        key_type = cmd.scb[2]
        if key_type == KEY_TYPE_SCBK_D:
            key = SCBK_D if self.scbk is None else bytes(16)  # a keyed reader refuses the default key
        else:
            key = self.scbk if self.scbk is not None else bytes(16)
            if self._take("wrong_key_pending"):
                key = bytes(b ^ 0xA5 for b in key)  # not the key the control panel holds
        rnd_a, rnd_b = bytes(cmd.data), random_bytes(8)
        keys = derive_session_keys(key, rnd_a)
        self._handshake = {"keys": keys, "rnd_a": rnd_a, "rnd_b": rnd_b, "type": key_type}
        data = b"DKPSIM01" + rnd_b + client_cryptogram(keys, rnd_a, rnd_b)
        return self._reply(cmd, pk.REPLY_CCRYPT, data, scb=pk.Scb.handshake(pk.SCS_12, key_type))

    def _scrypt(self, cmd: pk.Packet) -> bytes | None:
        hs = self._handshake
        if not hs or not cryptograms_match(server_cryptogram(hs["keys"], hs["rnd_a"], hs["rnd_b"]), cmd.data):
            self._handshake = {}
            return self._reply(cmd, pk.REPLY_NAK, bytes([pk.NAK_SC_REQUIRED]), clear=True)
        rmac = initial_rmac(hs["keys"], bytes(cmd.data))
        reply = self._reply(cmd, pk.REPLY_RMAC_I, rmac, scb=pk.Scb.handshake(pk.SCS_14, 1), clear=True)
        self._session = SecureSession.established(hs["keys"], rmac, is_cp=False)
        self._handshake = {}
        return reply

    def _reply(self, cmd: pk.Packet, code: int, data: bytes, *, scb: bytes = b"", clear: bool = False) -> bytes:
        packet = pk.Packet(self.address, code, data, sequence=cmd.sequence, reply=True, scb=scb)
        if self._session is not None and not clear and not scb:
            packet = self._session.seal(packet)
        if self.forge_next_reply and packet.mac and code in (pk.REPLY_RAW, pk.REPLY_KEYPAD):
            # What a man in the middle would send: the right shape, a MAC it cannot compute.
            self.forge_next_reply = False
            packet = pk.Packet(packet.address, packet.code, packet.data, packet.sequence, True, packet.use_crc,
                               packet.scb, bytes(b ^ 0x5A for b in packet.mac))
        wire = packet.encode()
        self._last = (cmd.sequence, wire) if cmd.sequence else None
        return wire


class LibosdpReader:
    """A libosdp peripheral device on a pty: the independent peer of the interoperability tests.

    ``scbk`` None starts it in install mode (it knows only SCBK-D). Commands it receives (LED, buzzer, ...)
    are kept in :attr:`commands` as libosdp reports them.
    """

    def __init__(self, address: int = 0, scbk: bytes | None = None, *, secure_channel: bool = True) -> None:
        import osdp  # the dev extra: pip install -e '.[dev]'

        self._osdp = osdp
        self._pty = _Pty()
        self.address = address
        self.commands: list[dict[str, Any]] = []
        flags = [] if scbk is not None or not secure_channel else [osdp.LibFlag.InstallMode]
        caps = [(osdp.Capability.LEDControl, 1, 1), (osdp.Capability.AudibleControl, 1, 1),
                (osdp.Capability.CheckCharacter, 1, 1)]
        if secure_channel:
            caps.append((osdp.Capability.CommunicationSecurity, 1, 1))
        info = osdp.PDInfo(address, _FdChannel(osdp, self._pty.master), scbk=scbk, flags=flags)
        self.pd = osdp.PeripheralDevice(info, osdp.PDCapabilities(caps), log_level=osdp.LogLevel.Warning,
                                        command_handler=self._on_command)
        self.pd.start()

    @property
    def path(self) -> str:
        return self._pty.path

    def _on_command(self, command: dict[str, Any]) -> tuple[int, Any]:
        self.commands.append(dict(command))
        return 0, None

    def leds(self) -> list[int]:
        return [c["on_color"] for c in self.commands if c.get("command") == self._osdp.Command.LED]

    def beeps(self) -> list[int]:
        return [c["rep_count"] for c in self.commands if c.get("command") == self._osdp.Command.Buzzer]

    def present_card(self, fmt: str, facility: int, number: int) -> None:
        raw = encode_wiegand(fmt, facility, number)
        self.pd.submit_event({"event": self._osdp.Event.CardRead, "reader_no": 0,
                              "format": self._osdp.CardFormat.Wiegand, "direction": 0, "length": raw.bits,
                              "data": raw.data})

    def press_keys(self, keys: str) -> None:
        self.pd.submit_event({"event": self._osdp.Event.KeyPress, "reader_no": 0, "data": keys.encode("ascii")})

    @property
    def sc_active(self) -> bool:
        return bool(self.pd.is_sc_active())

    def close(self) -> None:
        if self._pty.closed:
            return
        try:
            self.pd.stop()
        finally:
            self._pty.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _FdChannel(osdp: Any, fd: int) -> Any:
    class FdChannel(osdp.Channel):
        """libosdp's Channel over a pty fd: non-blocking read, write, nothing to flush."""

        def __init__(self) -> None:
            super().__init__()
            os.set_blocking(fd, False)

        def read(self, max_bytes: int) -> bytes:
            try:
                return os.read(fd, max_bytes)
            except (BlockingIOError, OSError):
                return b""

        def write(self, buf: bytes) -> int:
            try:
                return os.write(fd, buf)
            except OSError:
                return 0

        def flush(self) -> None:
            return None

    return FdChannel()
