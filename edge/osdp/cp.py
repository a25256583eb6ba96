"""The OSDP control panel (CP): one thread owns one RS-485 bus and polls every reader on it.

Per reader (by address) the CP walks ``ID -> CAP -> Secure Channel handshake -> online polling``. Each exchange
is one command and at most one reply within ``REPLY_TIMEOUT_S`` (the standard's 200 ms), retried with the same
sequence number so the reader repeats its reply rather than acting twice. A reader with no valid reply for
``offline_after_s`` is offline and is brought back by itself (sequence 0, ID, CAP, handshake again).

Security posture (docs/readers.md): Secure Channel is enforced unless the device file explicitly says
``secure_channel = false``. A reader that only knows the default key SCBK-D is never silently re-keyed: it stays
offline with the reason ``needs_key`` until an operator runs ``doorkeep osdp install-key``. A MAC that does not
verify, a reader answering in clear inside a session, or a reader that stops offering Secure Channel after it
had one is reported through ``on_security`` (the agent makes it a ``reader_security`` alarm) and the session is
dropped; nothing read in such a packet is ever passed on as a card.

Security signals (docs/readers.md "Security signals"): besides those, a Secure Channel handshake that fails
again and again (``handshake_failed``: a wrong client cryptogram or R-MAC-I, a refused or malformed challenge)
and NAKs in clear from a reader that must speak Secure Channel (``clear_nak``: what a storm of injected NAKs
looks like) are reported too. Every cause goes through a :class:`SignalLimiter` per reader: reported once it
reaches its threshold within ``signal_window_s``, then at most once per window with the counts, never once per
packet, so an attacker on the wire cannot flood the alarm list.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import serial

from doorkeep.clock import Clock, SystemClock
from edge.errors import HardwareError
from edge.framing import CardRead, FrameFault
from edge.osdp import packet as pk
from edge.osdp.cards import ParityError, decode_card
from edge.osdp.secure import (
    KEY_TYPE_SCBK,
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
from edge.reader_port import ReaderDeps, ReaderStats, SecurityCallback, TamperCallback, register
from edge.readers import CardCallback, CardDelivery, PinEntry, RepeatFilter, _is_pty

if TYPE_CHECKING:
    from doorkeep.config import ReaderConfig
    from doorkeep.policy import ReaderSignals

log = logging.getLogger("doorkeep.edge.osdp")

REPLY_TIMEOUT_S = 0.2
RETRIES = 2
OFFLINE_AFTER_S = 8.0
RETRY_OFFLINE_S = 1.0
RETRY_KEY_PROBLEM_S = 5.0
READ_SLICE_S = 0.005
STOP_DEADLINE_S = 2.0

# Health reasons a reader can be offline with (docs/readers.md)
REASON_NO_REPLY = "no_reply"
REASON_NEEDS_KEY = "needs_key"
REASON_WRONG_KEY = "wrong_key"
REASON_SC_UNSUPPORTED = "sc_unsupported"
REASON_SECURITY = "security_fault"

# Security signal causes (the ``detail.cause`` of a ``reader_security`` event; docs/readers.md)
CAUSE_MAC_FAILURE = "mac_failure"
CAUSE_DOWNGRADE = "downgrade"
CAUSE_HANDSHAKE_FAILED = "handshake_failed"
CAUSE_CLEAR_NAK = "clear_nak"
#: Occurrences within the window before a cause is reported. A MAC failure or a downgrade is an attack on its
#: own; one failed handshake or one clear NAK is a reader rebooting, a few in a minute are not.
SIGNAL_THRESHOLDS: dict[str, int] = {CAUSE_MAC_FAILURE: 1, CAUSE_DOWNGRADE: 1, CAUSE_HANDSHAKE_FAILED: 3,
                                     CAUSE_CLEAR_NAK: 4}
#: One report per cause per reader per window at most; the next one carries the count of what came between.
SIGNAL_WINDOW_S = 60.0


@dataclass(frozen=True)
class OsdpReaderSpec:
    """One reader on the bus: its door, address and key (``scbk`` None = no key installed yet)."""

    door: str
    address: int
    scbk: bytes | None = None
    secure: bool = True
    repeat_ignore_s: float = 1.0


class SignalLimiter:
    """Turns a stream of security faults of one cause at one reader into rare, counted reports (pure).

    :meth:`note` records one occurrence at ``now`` (the bus's wire clock) and returns the counts to report, or
    None: nothing until ``threshold`` occurrences fall within ``window_s``, then one report, then none until
    ``window_s`` after it. ``count`` in a report is every occurrence since the previous report (so nothing
    suppressed goes unaccounted), ``in_window`` those of the last ``window_s``, ``total`` since the start.
    """

    def __init__(self, threshold: int, window_s: float) -> None:
        if threshold < 1 or window_s <= 0:
            raise ValueError("threshold must be at least 1 and window_s positive")
        self.threshold = threshold
        self.window_s = window_s
        self.total = 0
        self._times: collections.deque[float] = collections.deque()
        self._since_report = 0
        self._reported_at: float | None = None

    def note(self, now: float) -> dict[str, Any] | None:
        self.total += 1
        self._since_report += 1
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        if len(self._times) < self.threshold:
            return None
        if self._reported_at is not None and now - self._reported_at < self.window_s:
            return None
        counts = {"count": self._since_report, "in_window": len(self._times), "window_s": self.window_s,
                  "total": self.total}
        self._reported_at = now
        self._since_report = 0
        return counts


class _Delivery(CardDelivery):
    """One reader's cards and PINs, delivered as every reader kind delivers them (:class:`CardDelivery`):
    counted in its stats under the bus's lock, a held card's repeats dropped, a failing ``on_card`` logged."""

    def __init__(self, spec: OsdpReaderSpec, stats: ReaderStats, on_card: CardCallback, guard: Any,
                 url: str) -> None:
        self.door = spec.door
        self._stats = stats
        self._repeats = RepeatFilter(spec.repeat_ignore_s)
        self._on_card = on_card
        self._on_fault = None
        self._log = log
        self._guard = guard
        self._where = f"OSDP {url} address {spec.address}"

    def deliver(self, items: list[CardRead | FrameFault], t_read: float) -> None:
        """Cards and PIN reads to ``on_card``, faults (``parity``, ``malformed``) to the stats and the log."""
        self._deliver(items, t_read)

    def _fault_text(self, fault: FrameFault) -> str:
        return f"{self._where}: {fault.kind}: {fault.detail}"


@dataclass
class _Reader:
    spec: OsdpReaderSpec
    delivery: _Delivery
    """Counts and passes on its cards and PINs; shares :attr:`stats` (the bus thread feeds it)."""
    phase: str = "id"
    seq: int = 0
    session: SecureSession | None = None
    rnd_a: bytes = b""
    keys: Any = None
    key_type: int = KEY_TYPE_SCBK
    last_ok: float | None = None
    next_try: float = 0.0
    had_sc: bool = False
    caps: dict[int, tuple[int, int]] = field(default_factory=dict)
    outq: collections.deque[tuple[int, bytes]] = field(default_factory=collections.deque)
    pins: PinEntry = field(default_factory=PinEntry)
    """Keypad keys -> PIN reads (bus thread only)."""
    stats: ReaderStats = field(default_factory=lambda: ReaderStats(secure=False))
    install_key: bytes | None = None
    installed: threading.Event = field(default_factory=threading.Event)
    last_tamper: bool | None = None
    missed: bool = False
    """The last exchange timed out: the reader may have acted on it and sent a reply we never heard."""
    signals: dict[str, SignalLimiter] = field(default_factory=dict)
    """Per security cause: the limiter that decides when it is reported (bus thread only)."""

    def __post_init__(self) -> None:
        if self.delivery._stats is not self.stats:
            raise ValueError("a reader's delivery must count into the reader's own stats")


class OsdpBus:
    """One serial port (any ``serial_for_url`` URL), one thread, every reader on it polled round-robin."""

    def __init__(self, url: str, readers: list[OsdpReaderSpec], on_card: CardCallback, *,
                 baudrate: int = 9600, poll_ms: int = 100, clock: Clock | None = None,
                 on_tamper: TamperCallback | None = None, on_security: SecurityCallback | None = None,
                 offline_after_s: float = OFFLINE_AFTER_S, reply_timeout_s: float = REPLY_TIMEOUT_S,
                 port: Any = None, retry_key_problem_s: float = RETRY_KEY_PROBLEM_S,
                 signal_window_s: float = SIGNAL_WINDOW_S,
                 signal_thresholds: dict[str, int] | None = None) -> None:
        """``signal_window_s`` and ``signal_thresholds`` (cause -> occurrences, merged over
        :data:`SIGNAL_THRESHOLDS`) shape the ``reader_security`` reports; ``retry_key_problem_s`` is the pause
        before a reader refused for its key or capabilities is tried again."""
        addresses = [r.address for r in readers]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"{url}: two readers share an OSDP address ({addresses})")
        for r in readers:
            if not 0 <= r.address <= pk.MAX_ADDRESS:
                raise ValueError(f"door {r.door}: OSDP address must be 0..{pk.MAX_ADDRESS}, got {r.address}")
        self.url = url
        self.baudrate = baudrate
        self.poll_s = max(0.0, poll_ms / 1000.0)
        self.clock: Clock = clock if clock is not None else SystemClock()
        """The agent's clock: card read times and last_data_at (latency figures, health) are on it."""
        self._wire: Clock = SystemClock()
        """Reply windows, retries and the offline timeout are physical wire time, never a scenario's jumps."""
        self._lock = threading.RLock()
        self._readers: dict[int, _Reader] = {}
        for spec in readers:
            stats = ReaderStats(secure=False)
            delivery = _Delivery(spec, stats, on_card, self._lock, url)
            self._readers[spec.address] = _Reader(spec, delivery, stats=stats)
        self._on_tamper = on_tamper
        self._on_security = on_security
        self.offline_after_s = offline_after_s
        self.reply_timeout_s = reply_timeout_s
        self.retry_key_problem_s = retry_key_problem_s
        self.signal_window_s = signal_window_s
        self.signal_thresholds = {**SIGNAL_THRESHOLDS, **(signal_thresholds or {})}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._port: Any = port
        self._parser = pk.PacketParser()
        self.bus_faults: dict[str, int] = {}
        self.cycle_s: float | None = None
        """Duration of the last full poll cycle over every reader (for bench/osdp.py)."""

    def configure_signals(self, signal_window_s: float, signal_thresholds: dict[str, int]) -> None:
        """New ``reader_security`` thresholds (a signed policy carried the site's): counting starts again
        under them, as after a restart; from any thread."""
        with self._lock:
            thresholds = {**SIGNAL_THRESHOLDS, **signal_thresholds}
            if (signal_window_s, thresholds) == (self.signal_window_s, self.signal_thresholds):
                return
            self.signal_window_s = signal_window_s
            self.signal_thresholds = thresholds
            for r in self._readers.values():
                r.signals.clear()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if self._port is None:
            try:
                self._port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=READ_SLICE_S)
            except (serial.SerialException, OSError, ValueError) as exc:
                raise HardwareError(f"cannot open OSDP bus at {self.url!r}: {exc}") from exc
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"osdp-{self.url}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        thread.join(STOP_DEADLINE_S)
        if thread.is_alive():
            log.warning("OSDP bus %s: thread did not stop within %.1f s", self.url, STOP_DEADLINE_S)
        self._thread = None
        try:
            self._port.close()
        except Exception:  # the port is gone either way
            log.debug("OSDP bus %s: closing the port failed", self.url, exc_info=True)
        self._port = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    # -- API for the agent (any thread) -------------------------------------

    def stats(self, address: int) -> ReaderStats:
        with self._lock:
            s = self._readers[address].stats
            return replace(s, faults=dict(s.faults))

    def send(self, address: int, code: int, data: bytes) -> None:
        """Queue a command (LED, BUZ, OUT, ...) for the reader's next turn; dropped if the reader is offline."""
        with self._lock:
            r = self._readers[address]
            if r.stats.online and len(r.outq) < 16:
                r.outq.append((code, data))

    def feedback(self, address: int, granted: bool) -> None:
        """Grant: green LED and one short beep. Deny: red LED and two beeps."""
        color = pk.LED_GREEN if granted else pk.LED_RED
        self.send(address, pk.CMD_LED, pk.LedCommand(color, on_ms=3000, off_ms=0, timer_ms=3000).encode())
        self.send(address, pk.CMD_BUZ, pk.BuzzerCommand(count=1 if granted else 2, on_ms=200, off_ms=200).encode())

    def begin_install(self, address: int, new_key: bytes) -> threading.Event:
        """Open a session with SCBK-D and send KEYSET(new_key); the event is set once the reader is back
        online under the new key. Only the ``doorkeep osdp install-key`` command calls this."""
        if len(new_key) != 16:
            raise ValueError("an SCBK is 16 bytes")
        with self._lock:
            r = self._readers[address]
            r.installed.clear()
            r.install_key = new_key  # the bus thread starts over with this reader at its next turn
            r.next_try = 0.0
        return r.installed

    # -- bus thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                start = self._wire.monotonic()
                for r in list(self._readers.values()):
                    if self._stop.is_set():
                        break
                    with self._lock:
                        begin_install = r.install_key is not None and r.phase not in ("id", "cap", "chlng")
                    if begin_install:
                        self._restart(r, r.stats.reason)  # leave the session under the old key first
                    if self._wire.monotonic() < r.next_try:
                        continue
                    try:
                        self._turn(r)
                    except _PortGone:
                        if not self._reopen():
                            return
                        break
                    except Exception:
                        log.exception("OSDP %s address %d: unexpected error", self.url, r.spec.address)
                        self._restart(r, REASON_NO_REPLY)
                self.cycle_s = self._wire.monotonic() - start
                self._stop.wait(max(0.0, self.poll_s - self.cycle_s))
        finally:
            with self._lock:
                for r in self._readers.values():
                    r.stats.online = False

    def _reopen(self) -> bool:
        """After the port failed: reopen it with backoff (a USB adapter unplugged and plugged back), every
        reader starting over from ID. A pty is never reopened: its number goes to the next pty opened on this
        machine. False when the bus is to stop."""
        try:
            self._port.close()
        except Exception:  # the port is gone either way
            log.debug("OSDP bus %s: closing the failed port", self.url, exc_info=True)
        for r in self._readers.values():
            self._restart(r, REASON_NO_REPLY)
        if _is_pty(self.url):
            self._stop.wait()
            return False
        delay = 0.1
        while not self._stop.wait(delay):
            try:
                self._port = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=READ_SLICE_S)
            except Exception as exc:  # noqa: BLE001 - keep retrying whatever the cause
                log.debug("OSDP bus %s still unavailable: %s", self.url, exc)
                delay = min(delay * 2, 5.0)
                continue
            self._parser.reset()
            log.info("OSDP bus %s reopened", self.url)
            return True
        return False

    def _turn(self, r: _Reader) -> None:
        """One exchange with one reader, chosen by its phase."""
        spec = r.spec
        if r.phase == "id":
            r.seq = 0
            reply = self._exchange(r, pk.CMD_ID, b"\x00")
            if reply is None:
                return
            if reply.code == pk.REPLY_PDID:
                r.phase = "cap"
            return
        if r.phase == "cap":
            reply = self._exchange(r, pk.CMD_CAP, b"\x00")
            if reply is None or reply.code != pk.REPLY_PDCAP:
                return
            try:
                r.caps = pk.decode_pdcap(reply.data)
            except ValueError as exc:
                self._fault(r, "malformed", str(exc))
                return
            if not spec.secure:
                self._set_online(r, True, None)
                r.phase = "online"
                return
            level = r.caps.get(pk.CAP_COMMUNICATION_SECURITY, (0, 0))[0]
            if level == 0:
                self._refuse(r, REASON_SC_UNSUPPORTED, "reader does not offer Secure Channel")
                return
            r.phase = "chlng"
            return
        if r.phase == "chlng":
            self._challenge(r)
            return
        if r.phase == "online":
            with self._lock:
                item = r.outq.popleft() if r.outq else None
            code, data = item if item is not None else (pk.CMD_POLL, b"")
            if item is None:
                r.stats.polls += 1
            reply = self._exchange(r, code, data)
            if reply is not None:
                self._online_reply(r, code, data, reply)

    def _challenge(self, r: _Reader) -> None:
        install = r.install_key is not None
        key = SCBK_D if install else r.spec.scbk
        if key is None:
            self._refuse(r, REASON_NEEDS_KEY, "no SCBK installed for this reader "
                                              "(fix: doorkeep osdp install-key DOOR --device FILE)")
            return
        r.key_type = KEY_TYPE_SCBK_D if install else KEY_TYPE_SCBK
        r.rnd_a = random_bytes(8)
        reply = self._exchange(r, pk.CMD_CHLNG, r.rnd_a, scb=pk.Scb.handshake(pk.SCS_11, r.key_type))
        if reply is None:
            return
        if reply.code == pk.REPLY_NAK:
            why = f"reader refused the challenge (NAK {pk.decode_nak(reply.data)})"
            self._handshake_failed(r, why)
            self._refuse(r, REASON_SC_UNSUPPORTED, why)
            return
        if reply.code != pk.REPLY_CCRYPT or len(reply.data) != 32 or reply.scb_type != pk.SCS_12:
            self._fault(r, "malformed", "CHLNG not answered by a CCRYPT")
            self._handshake_failed(r, "CHLNG not answered by a CCRYPT")
            self._restart(r, REASON_NO_REPLY)
            return
        rnd_b, crypt = reply.data[8:16], reply.data[16:32]
        keys = derive_session_keys(key, r.rnd_a)
        if not cryptograms_match(client_cryptogram(keys, r.rnd_a, rnd_b), crypt):
            if not install and self._knows_only_default_key(r):
                # Factory state, waiting for install-key: expected, reported as reader_offline needs_key.
                self._refuse(r, REASON_NEEDS_KEY, "reader only knows the default key SCBK-D "
                                                  "(fix: doorkeep osdp install-key DOOR --device FILE)")
            else:
                self._handshake_failed(r, "client cryptogram does not verify under this reader's key")
                self._refuse(r, REASON_WRONG_KEY, "reader's key does not match scbk_file "
                                                  "(fix: point scbk_file at this reader's key, or reset the "
                                                  "reader to its default key and run doorkeep osdp install-key)")
            return
        scrypt = server_cryptogram(keys, r.rnd_a, rnd_b)
        reply = self._exchange(r, pk.CMD_SCRYPT, scrypt, scb=pk.Scb.handshake(pk.SCS_13, r.key_type))
        if reply is None:
            return
        if reply.code != pk.REPLY_RMAC_I or len(reply.data) != 16 \
                or not cryptograms_match(initial_rmac(keys, scrypt), reply.data):
            self._handshake_failed(r, "R-MAC-I does not verify")
            self._refuse(r, REASON_WRONG_KEY, "reader's R-MAC-I does not verify")
            return
        r.session = SecureSession.established(keys, bytes(reply.data))
        r.had_sc = True
        with self._lock:
            r.stats.secure = True
        if install:
            assert r.install_key is not None
            r.phase = "install"
            reply = self._exchange(r, pk.CMD_KEYSET, pk.keyset_command(r.install_key))
            if reply is not None and reply.code == pk.REPLY_ACK:
                log.warning("OSDP %s address %d: new SCBK installed", self.url, r.spec.address)
                r.spec = replace(r.spec, scbk=r.install_key)
                r.install_key = None
                r.installed.set()
            else:
                log.error("OSDP %s address %d: no ACK to KEYSET (%s)", self.url, r.spec.address,
                          "no reply" if reply is None else f"reply {reply.code:02X}")
                r.install_key = None  # one attempt per begin_install(): the operator decides what next
            self._restart(r, REASON_NEEDS_KEY)
            r.next_try = 0.0
            return
        r.phase = "online"
        self._set_online(r, True, None)
        log.info("OSDP %s address %d (door %s): Secure Channel established", self.url, r.spec.address, r.spec.door)

    def _knows_only_default_key(self, r: _Reader) -> bool:
        """After our key failed: does the reader answer a challenge under SCBK-D? Only asked, never used -
        the handshake is abandoned before SCRYPT, so no session under the default key is ever opened here."""
        rnd_a = random_bytes(8)
        reply = self._exchange(r, pk.CMD_CHLNG, rnd_a, scb=pk.Scb.handshake(pk.SCS_11, KEY_TYPE_SCBK_D))
        if reply is None or reply.code != pk.REPLY_CCRYPT or len(reply.data) != 32:
            return False
        keys = derive_session_keys(SCBK_D, rnd_a)
        return cryptograms_match(client_cryptogram(keys, rnd_a, reply.data[8:16]), reply.data[16:32])

    def _online_reply(self, r: _Reader, code: int, data: bytes, reply: pk.Packet) -> None:
        t_read = self.clock.monotonic()
        if reply.code == pk.REPLY_ACK:
            return
        if reply.code == pk.REPLY_NAK:
            reason = pk.decode_nak(reply.data)
            self._fault(r, "nak", f"command {code:02X} refused: {pk.NAK_REASONS.get(reason, reason)}")
            if reason in (pk.NAK_SC_REQUIRED, pk.NAK_SCB_UNSUPPORTED, 4):
                self._restart(r, REASON_NO_REPLY)
            return
        if reply.code == pk.REPLY_BUSY:
            with self._lock:
                if code != pk.CMD_POLL:
                    r.outq.appendleft((code, data))
            return
        if reply.code == pk.REPLY_RAW:
            item: CardRead | FrameFault
            try:
                fmt, number = decode_card(pk.decode_raw(reply.data))
                item = CardRead(number, fmt)
            except ParityError as exc:
                item = FrameFault("parity", str(exc), b"")
            except ValueError as exc:
                item = FrameFault("malformed", str(exc), b"")
            r.delivery.deliver([item], t_read)
            return
        if reply.code == pk.REPLY_KEYPAD:
            try:
                _, keys = pk.decode_keypad(reply.data)
            except ValueError as exc:
                self._fault(r, "malformed", str(exc))
                return
            # ``#`` (or Enter) submits the PIN as a ``keypad`` read ``P<digits>``, ``*`` clears.
            r.delivery.deliver(r.pins.keys(keys, t_read), t_read)
            return
        if reply.code == pk.REPLY_LSTATR and len(reply.data) >= 1:
            tampered = bool(reply.data[0])
            if tampered != r.last_tamper:
                r.last_tamper = tampered
                self._call(self._on_tamper, r.spec.door, tampered)
            return
        self._fault(r, "unexpected", f"reply {reply.code:02X} to command {code:02X} ignored")

    # -- one exchange ---------------------------------------------------------

    def _exchange(self, r: _Reader, code: int, data: bytes, *, scb: bytes = b"") -> pk.Packet | None:
        """Send one command (retried with the same sequence number) and return its verified, clear reply."""
        cmd = pk.Packet(r.spec.address, code, data, sequence=r.seq, scb=scb)
        if r.session is not None and not scb:
            cmd = r.session.seal(cmd)
        wire = cmd.encode()
        for attempt in range(1 + RETRIES):
            if attempt:
                with self._lock:
                    r.stats.retries += 1
            reply = self._send_and_wait(r, wire)
            if reply is not None:
                return self._accept(r, cmd, reply)
            if self._stop.is_set():
                return None
        self._timed_out(r)
        return None

    def _send_and_wait(self, r: _Reader, wire: bytes) -> pk.Packet | None:
        port = self._port
        try:
            port.reset_input_buffer()
            self._parser.reset()
            port.write(wire)
            port.flush()
            deadline = self._wire.monotonic() + self.reply_timeout_s
            while self._wire.monotonic() < deadline and not self._stop.is_set():
                chunk = port.read(max(1, port.in_waiting))
                if not chunk:
                    continue
                for item in self._parser.feed(chunk):
                    if isinstance(item, pk.PacketFault):
                        self._fault(r, item.kind, item.detail)
                    elif item.reply and item.address == r.spec.address:
                        return item
                    # our own echo (half-duplex adapters) or another reader's reply: not for us
        except Exception as exc:
            if self._stop.is_set():
                return None
            with self._lock:
                for other in self._readers.values():
                    # One update under the lock: whoever sees the reader offline also sees why.
                    other.stats.io_errors += 1
                    other.stats.online = False
                    other.stats.reason = REASON_NO_REPLY
            log.error("OSDP bus %s lost: %s", self.url, exc)
            raise _PortGone() from exc
        return None

    def _accept(self, r: _Reader, cmd: pk.Packet, reply: pk.Packet) -> pk.Packet | None:
        """Check sequence and Secure Channel of a reply; None (and a restarted reader) when it cannot be trusted."""
        now = self._wire.monotonic()
        with self._lock:
            r.stats.last_data_at = self.clock.monotonic()
        if r.spec.secure and reply.code == pk.REPLY_NAK and reply.scb_type not in (pk.SCS_16, pk.SCS_18) \
                and cmd.code != pk.CMD_CHLNG:
            # A reader that must speak Secure Channel NAKs in clear: once after a reboot is normal, a stream is
            # what NAKs injected on the wire look like (they cost the attacker no key). A refused challenge is
            # counted as a failed handshake instead.
            self._security(r, CAUSE_CLEAR_NAK, {"detail": f"NAK {pk.decode_nak(reply.data)} in clear to command "
                                                          f"{cmd.code:02X}"}, restart=False)
        if reply.sequence != cmd.sequence:
            self._fault(r, "sequence", f"reply sequence {reply.sequence} to command sequence {cmd.sequence}")
            self._restart(r, REASON_NO_REPLY)
            return None
        secure_reply = reply.scb_type in (pk.SCS_16, pk.SCS_18)
        if r.session is not None and cmd.scb_type in (pk.SCS_15, pk.SCS_17):
            if not secure_reply:
                if reply.code == pk.REPLY_NAK:
                    # The reader lost its session (restart, its own timeout): a new handshake, not an attack.
                    self._fault(r, "session_lost", f"NAK {pk.decode_nak(reply.data)} in clear inside a session")
                    self._restart(r, REASON_NO_REPLY)
                    return None
                self._security(r, CAUSE_DOWNGRADE, {"detail": f"reply {reply.code:02X} in clear inside a session"})
                return None
            try:
                reply = r.session.open(reply)
            except SecureChannelError as exc:
                with self._lock:
                    r.stats.mac_failures += 1
                if r.missed:
                    # After a timeout the reader may be repeating its answer to the command we gave up on
                    # (same sequence number): a desynchronised chain, not an attack. Start a new session.
                    self._fault(r, "session_lost", f"MAC mismatch right after a timeout: {exc}")
                    self._restart(r, REASON_NO_REPLY)
                    return None
                self._security(r, CAUSE_MAC_FAILURE, {"detail": str(exc)})
                return None
        elif secure_reply:
            self._fault(r, "unexpected", "secure reply without a session")
            return None
        r.seq = r.seq % 3 + 1
        r.last_ok = now
        r.missed = False
        return reply

    def _timed_out(self, r: _Reader) -> None:
        now = self._wire.monotonic()
        r.missed = True
        with self._lock:
            r.stats.faults["timeout"] = r.stats.faults.get("timeout", 0) + 1
        if r.last_ok is None or now - r.last_ok >= self.offline_after_s:
            if r.stats.online:
                log.warning("OSDP %s address %d (door %s): no reply for %.1f s, offline", self.url,
                            r.spec.address, r.spec.door, self.offline_after_s)
            self._restart(r, REASON_NO_REPLY)
            r.next_try = now + RETRY_OFFLINE_S
        elif r.phase != "online":
            self._restart(r, r.stats.reason)
            r.next_try = now + RETRY_OFFLINE_S
        # an online reader that missed one exchange keeps its session and sequence: the next poll retries

    # -- state changes ---------------------------------------------------------

    def _restart(self, r: _Reader, reason: str | None) -> None:
        """Back to sequence 0 and ID; offline with ``reason``."""
        r.phase = "id"
        r.seq = 0
        r.session = None
        r.pins.reset()
        with self._lock:
            r.outq.clear()
            r.stats.secure = False
        self._set_online(r, False, reason)

    def _refuse(self, r: _Reader, reason: str, why: str) -> None:
        """A key or capability problem: offline with a reason; downgrade alarm if the reader had SC before."""
        if r.stats.reason != reason:
            log.error("OSDP %s address %d (door %s): %s", self.url, r.spec.address, r.spec.door, why)
        if r.had_sc and reason in (REASON_SC_UNSUPPORTED, REASON_NEEDS_KEY):
            self._security(r, CAUSE_DOWNGRADE, {"detail": why}, restart=False)
        self._restart(r, reason)
        r.next_try = self._wire.monotonic() + self.retry_key_problem_s

    def _handshake_failed(self, r: _Reader, why: str) -> None:
        """A Secure Channel handshake that did not complete (not the factory-key case): a signal when repeated."""
        self._security(r, CAUSE_HANDSHAKE_FAILED, {"detail": why}, restart=False)

    def _security(self, r: _Reader, cause: str, detail: dict[str, Any], *, restart: bool = True) -> None:
        """Count one security fault; report it through ``on_security`` only when its limiter says so."""
        with self._lock:
            r.stats.faults[cause] = r.stats.faults.get(cause, 0) + 1
        with self._lock:  # configure_signals() may swap the thresholds from the agent's thread
            limiter = r.signals.get(cause)
            if limiter is None:
                limiter = r.signals[cause] = SignalLimiter(self.signal_thresholds.get(cause, 1),
                                                           self.signal_window_s)
        counts = limiter.note(self._wire.monotonic())
        if counts is None:
            log.warning("OSDP %s address %d (door %s): security fault %s (%d so far): %s", self.url,
                        r.spec.address, r.spec.door, cause, limiter.total, detail.get("detail", ""))
        else:
            log.error("OSDP %s address %d (door %s): security fault %s, reported (%d since the last report): %s",
                      self.url, r.spec.address, r.spec.door, cause, counts["count"], detail.get("detail", ""))
            self._call(self._on_security, r.spec.door, cause, {"address": r.spec.address, **detail, **counts})
        if restart:
            self._restart(r, REASON_SECURITY)

    def _set_online(self, r: _Reader, online: bool, reason: str | None) -> None:
        with self._lock:
            r.stats.online = online
            r.stats.reason = None if online else reason

    def _fault(self, r: _Reader, kind: str, detail: str) -> None:
        with self._lock:
            r.stats.faults[kind] = r.stats.faults.get(kind, 0) + 1
        log.warning("OSDP %s address %d: %s: %s", self.url, r.spec.address, kind, detail)

    # -- what readers tell us ------------------------------------------------------

    def _call(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("OSDP %s: callback failed", self.url)


class _PortGone(Exception):
    """The serial port failed: the bus thread ends and every reader on it is offline."""


class OsdpReader:
    """One door's view of a shared bus: an :class:`edge.reader_port.Reader` (registered as ``osdp``)."""

    ready_at_start = False
    """The bus opening proves nothing about this reader: it is good once its Secure Channel is up."""

    def __init__(self, bus: OsdpBus, door: str, address: int) -> None:
        self.bus = bus
        self.door = door
        self.address = address
        self.url = bus.url
        self.protocol = "osdp"

    def start(self) -> None:
        self.bus.start()

    def stop(self) -> None:
        self.bus.stop()

    @property
    def stats(self) -> ReaderStats:
        return self.bus.stats(self.address)

    @property
    def health_reason(self) -> str | None:
        return self.bus.stats(self.address).reason

    def silent_for(self, now: float) -> float:
        last = self.bus.stats(self.address).last_data_at
        return 0.0 if last is None else max(0.0, now - last)

    def feedback(self, granted: bool) -> None:
        self.bus.feedback(self.address, granted)

    def apply_signals(self, signals: ReaderSignals) -> None:
        """The bus's thresholds (shared by its readers; unchanged thresholds leave its counts alone)."""
        settings = reader_signal_settings(signals)
        self.bus.configure_signals(settings["signal_window_s"], settings["signal_thresholds"])


def reader_signal_settings(signals: Any) -> dict[str, Any]:
    """``build_buses``'s (and :meth:`OsdpBus.configure_signals`') signal arguments from the site's reader
    thresholds: a ``doorkeep.policy.ReaderSignals`` (the signed policy's) or the site file's ``[intrusion]``
    settings (``doorkeep.config.IntrusionSettings``)."""
    if hasattr(signals, "reader_signals"):
        signals = signals.reader_signals()
    return {"signal_window_s": signals.window_s,
            "signal_thresholds": {CAUSE_HANDSHAKE_FAILED: signals.handshake_failures,
                                  CAUSE_CLEAR_NAK: signals.clear_naks}}


def build_buses(doors: dict[str, Any], on_card: CardCallback, *, clock: Clock | None = None,
                on_tamper: TamperCallback | None = None,
                on_security: SecurityCallback | None = None, signal_window_s: float = SIGNAL_WINDOW_S,
                signal_thresholds: dict[str, int] | None = None) -> dict[str, OsdpReader]:
    """One bus per serial URL for the doors whose reader is OSDP; door -> its reader handle.

    ``signal_window_s`` and ``signal_thresholds`` come from the site's ``[intrusion]`` table (the agent maps
    them): how many handshake failures or clear NAKs within the window make one ``reader_security`` report.

    ``doors`` maps door ids to ``doorkeep.config.DoorHardware``. A key file that cannot be used is logged with
    its fix and the reader left without a key (offline, ``needs_key``): one bad file must not stop the edge.
    """
    from edge.osdp.keys import KeyFileError, load_scbk

    by_url: dict[str, list[tuple[str, Any]]] = {}
    for did, hw in doors.items():
        if hw.reader.protocol == "osdp":
            by_url.setdefault(hw.reader.url, []).append((did, hw.reader))
    handles: dict[str, OsdpReader] = {}
    for url, members in by_url.items():
        specs = []
        for did, rc in members:
            key = None
            if rc.secure_channel and rc.scbk_file is not None:
                try:
                    key = load_scbk(rc.scbk_file)
                except KeyFileError as exc:
                    log.error("door %s: %s", did, exc)
            if not rc.secure_channel:
                log.warning("door %s: OSDP reader at %s address %d runs WITHOUT Secure Channel "
                            "(secure_channel = false): card numbers cross the wire in clear, development only",
                            did, url, rc.address)
            specs.append(OsdpReaderSpec(did, rc.address, key, rc.secure_channel, rc.repeat_ignore_s))
        first = members[0][1]
        poll_ms = min(rc.poll_ms for _, rc in members)
        bus = OsdpBus(url, specs, on_card, baudrate=first.baudrate, poll_ms=poll_ms, clock=clock,
                      on_tamper=on_tamper, on_security=on_security, signal_window_s=signal_window_s,
                      signal_thresholds=signal_thresholds)
        for did, rc in members:
            handles[did] = OsdpReader(bus, did, rc.address)
    return handles


@register("osdp")
def _osdp_reader(door: str, config: ReaderConfig, deps: ReaderDeps) -> OsdpReader:
    """The door's handle on its bus. The first OSDP door builds every bus of the device (one per URL) into
    ``deps.shared["osdp"]``; the others pick their handle from there, so doors on one URL share one bus."""
    handles: dict[str, OsdpReader] | None = deps.shared.get("osdp")
    if handles is None:
        handles = build_buses(dict(deps.doors), deps.on_card, clock=deps.clock, on_tamper=deps.on_tamper,
                              on_security=deps.on_security, **reader_signal_settings(deps.signals))
        deps.shared["osdp"] = handles
    return handles[door]
