"""A revoked device still trying to connect: refused TLS handshakes in the broker's log (docs/alarms.md).

A revoked certificate never reaches doorkeep: Mosquitto refuses the TLS
handshake (the CRL), so the server sees no message at all. Only the broker's
log knows, and what Mosquitto 2.0.11 writes there (``log_type`` error and
notice, ``connection_messages true``) is, measured::

    1796524957: New connection from 10.0.0.7:37821 on port 8883.
    1796524957: OpenSSL Error[0]: error:0A000086:SSL routines::certificate verify failed
    1796524957: Client <unknown> disconnected: Protocol error.

or, when the handshake fails while the connection is being accepted::

    1796524960: Client connection from 10.0.0.7 failed: error:0A000086:SSL routines::certificate verify failed.

What that can and cannot tell, and so what this module claims:

- **The address, never the certificate.** The log names neither the CN nor the serial, and a revoked
  certificate, an expired one and one from another CA all read ``certificate verify failed``. So the
  alarm is ``certificate_refused`` from an address, not "device X is revoked": the operator compares the
  address with the devices' addresses. A client with no certificate (``peer did not return a
  certificate``) or speaking plain MQTT to the TLS port (``wrong version number``) is not counted: it
  presented no identity to refuse.
- **The address is sometimes unknown.** The first form puts the address on the ``New connection`` line
  only; the refusal is tied to it when every connection still in its handshake comes from one address,
  and counted under ``unknown`` otherwise (several hosts connecting at once), rather than guessed.
- **Repeated, not once.** One refused handshake is a Pi with a stale certificate after a re-issue as
  often as an attacker; :data:`DEFAULT_THRESHOLD` refusals from one address within :data:`DEFAULT_WINDOW_S`
  raise the alarm (severity ``alarm``), at most once per address per window: further refusals only
  refresh its count when the window has passed (one alarm with a count, not one per retry).
- **From the moment the server starts.** The watcher reads from the end of the file at start (history is
  not alarmed twice across restarts), follows rotation (the file replaced or truncated) and counts in
  memory only.

The parser (:class:`LogParser`) and the counter (:class:`RefusalTracker`) are pure; the watcher thread
(:class:`BrokerLogWatcher`) only reads the file and feeds them, on the server's injected clock.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from doorkeep import vocabulary
from doorkeep.clock import Clock, SystemClock
from server.store import Store

log = logging.getLogger("doorkeep.server.brokerlog")

#: The alarm type (docs/alarms.md): a certificate the broker refused, presented again and again from one address;
#: its name and severity as doorkeep/vocabulary.py declares them.
CERTIFICATE_REFUSED = vocabulary.ALARMS["certificate_refused"].name
SEVERITY = vocabulary.severity(CERTIFICATE_REFUSED)
#: Refused handshakes from one address within the window that raise the alarm: a Pi retrying with a revoked
#: certificate reconnects every 1-10 s, so it crosses this in under half a minute.
DEFAULT_THRESHOLD = 3
#: The counting window, and the least time between two raises for one address.
DEFAULT_WINDOW_S = 3600.0
#: How often the watcher looks at the file.
DEFAULT_POLL_S = 1.0
#: A connection still in its handshake this long after its ``New connection`` line is forgotten.
PENDING_S = 60.0
#: Most connections in their handshake, and most addresses counted, at once (memory stays bounded).
MAX_PENDING = 1024
MAX_ADDRESSES = 4096
#: Most bytes read per poll: a log flooded by an attack is read a slice at a time.
MAX_READ = 1 << 20
UNKNOWN = "unknown"

_TS = r"^(?:(\d+(?:\.\d+)?): )?"
_NEW = re.compile(_TS + r"New connection from (.+):(\d+) on port \d+")
_CONNECTED = re.compile(_TS + r"New client connected from (.+):(\d+) as ")
_ACCEPT_FAILED = re.compile(_TS + r"Client connection from (.+?) failed: (.*certificate verify failed.*?)\.?$")
_SSL_FAILED = re.compile(_TS + r"OpenSSL Error\[\d+\]: (.*certificate verify failed.*)$")


@dataclass(frozen=True)
class Refusal:
    """One refused certificate: from ``address`` (``unknown`` when the log cannot tie it to one)."""

    address: str
    error: str


class LogParser:
    """Turns Mosquitto log lines into :class:`Refusal` s; pure (no I/O, no clock: the log's own timestamps)."""

    def __init__(self) -> None:
        # "host:port" -> (log time, host) of connections whose handshake has not finished yet, oldest first
        self._pending: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def feed(self, line: str) -> Refusal | None:
        line = line.rstrip("\r\n")
        if m := _NEW.match(line):
            at = float(m.group(1) or 0.0)
            self._pending[f"{m.group(2)}:{m.group(3)}"] = (at, m.group(2))
            self._pending.move_to_end(f"{m.group(2)}:{m.group(3)}")
            self._prune(at)
            return None
        if m := _CONNECTED.match(line):
            self._pending.pop(f"{m.group(2)}:{m.group(3)}", None)
            return None
        if m := _ACCEPT_FAILED.match(line):
            return Refusal(m.group(2), m.group(3))
        if m := _SSL_FAILED.match(line):
            self._prune(float(m.group(1) or 0.0))
            hosts = {host for _, host in self._pending.values()}
            if len(hosts) != 1:
                return Refusal(UNKNOWN, m.group(2))
            self._pending.popitem(last=True)  # that connection is over
            return Refusal(hosts.pop(), m.group(2))
        return None

    def _prune(self, now: float) -> None:
        while self._pending:
            key, (at, _) = next(iter(self._pending.items()))
            stale = bool(now and at and now - at > PENDING_S)
            if len(self._pending) <= MAX_PENDING and not stale:
                break
            del self._pending[key]


class RefusalTracker:
    """Counts refusals per address on the server's clock and raises ``certificate_refused``.

    At most one raise per address per ``window_s``: the first when ``threshold`` refusals fall within
    ``window_s``, then (if they go on) a refresh of the same alarm's count once the window has passed.
    """

    def __init__(self, store: Store, clock: Clock, *, threshold: int = DEFAULT_THRESHOLD,
                 window_s: float = DEFAULT_WINDOW_S) -> None:
        if threshold < 1 or window_s <= 0:
            raise ValueError(f"threshold {threshold} and window {window_s} must be positive")
        self.store = store
        self.clock = clock
        self.threshold = threshold
        self.window_s = window_s
        self.counters: Counter[str] = Counter()
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        self._raised: dict[str, float] = {}
        self._first: dict[str, float] = {}
        self._total: dict[str, int] = {}

    def on_refusal(self, refusal: Refusal) -> str | None:
        """Count one refusal; returns the alarm id when this one raised (or refreshed) the alarm."""
        now = self.clock.wall()
        address = refusal.address
        self.counters["refusals"] += 1
        times = self._times.pop(address, None) or deque(maxlen=max(self.threshold, 1) * 4)
        self._times[address] = times  # most recently seen last
        while len(self._times) > MAX_ADDRESSES:
            old, _ = self._times.popitem(last=False)
            for seen in (self._raised, self._first, self._total):
                seen.pop(old, None)
        times.append(now)
        while times and now - times[0] > self.window_s:
            times.popleft()
        self._first.setdefault(address, now)
        self._total[address] = self._total.get(address, 0) + 1
        if len(times) < self.threshold:
            return None
        last = self._raised.get(address)
        if last is not None and now - last < self.window_s:
            return None
        self._raised[address] = now
        detail = {"address": address, "refusals": self._total[address],
                  "in_window": len(times), "window_s": self.window_s, "first_seen": self._first[address],
                  "last_seen": now, "error": refusal.error[:200],
                  "meaning": "a client certificate the broker refused (revoked, expired or not from the site CA)"}
        try:
            alarm_id, _ = self.store.raise_alarm(CERTIFICATE_REFUSED, key=f"{CERTIFICATE_REFUSED}:{address}", at=now,
                                                 severity=SEVERITY, detail=detail)
        except Exception:  # the store refusing must not stop the watcher: logged, counted, tried next window
            self.counters["errors"] += 1
            self._raised.pop(address, None)
            log.exception("broker log: could not raise %s for %s", CERTIFICATE_REFUSED, address)
            return None
        self.counters["alarms"] += 1
        log.warning("alarm %s: %s from %s (%d refused handshakes, the last: %s)", alarm_id, CERTIFICATE_REFUSED,
                    address, detail["refusals"], refusal.error)
        return alarm_id


class BrokerLogWatcher:
    """Follows the broker's log file (``log_dest file``) and raises ``certificate_refused``.

    A missing or unreadable file is logged once (and counted), and tried again every poll: the broker may
    start after the server. The file is read from its end at start, and from its start after rotation.
    """

    def __init__(self, path: Path | str, store: Store, clock: Clock | None = None, *,
                 threshold: int = DEFAULT_THRESHOLD, window_s: float = DEFAULT_WINDOW_S,
                 poll_s: float = DEFAULT_POLL_S) -> None:
        self.path = Path(path)
        self.poll_s = poll_s
        self.parser = LogParser()
        self.tracker = RefusalTracker(store, clock or SystemClock(), threshold=threshold, window_s=window_s)
        self._file: BinaryIO | None = None
        self._inode: tuple[int, int] | None = None
        self._tail = b""
        self._warned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="doorkeep-brokerlog", daemon=True)

    @property
    def counters(self) -> Counter[str]:
        return self.tracker.counters

    def start(self) -> None:
        self._open(at_end=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._file is not None:
            self._file.close()
            self._file = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # never let one bad read end the watcher
                self.counters["errors"] += 1
                log.exception("broker log: reading %s failed", self.path)

    def _open(self, *, at_end: bool) -> bool:
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            self.counters["unreadable"] += 1
            if not self._warned:
                log.warning("broker log %s cannot be read (%s): refused certificates go unnoticed until it can "
                            "(fix: `doorkeep broker config --log-file` and let the server's user read it)",
                            self.path, exc.strerror)
                self._warned = True
            return False
        st = os.fstat(f.fileno())
        if at_end:
            f.seek(0, os.SEEK_END)
        self._file, self._inode, self._tail, self._warned = f, (st.st_dev, st.st_ino), b"", False
        return True

    def poll(self) -> int:
        """Read what the broker wrote since the last poll; returns the refusals found."""
        if self._file is None and not self._open(at_end=False):
            return 0
        assert self._file is not None
        try:
            st = os.stat(self.path)
            rotated = (st.st_dev, st.st_ino) != self._inode or st.st_size < self._file.tell()
        except OSError:
            rotated = False  # moved away and not yet recreated: finish the old file
        found = self._read()
        if rotated:
            self._file.close()
            self._file = None
            if self._open(at_end=False):
                found += self._read()
        return found

    def _read(self) -> int:
        assert self._file is not None
        data = self._tail + self._file.read(MAX_READ)
        *lines, self._tail = data.split(b"\n")
        if len(self._tail) > 64 * 1024:  # a line that never ends is not a Mosquitto log line
            self._tail = b""
        found = 0
        for raw in lines:
            self.counters["lines"] += 1
            refusal = self.parser.feed(raw.decode("utf-8", "replace"))
            if refusal is not None:
                found += 1
                self.tracker.on_refusal(refusal)
        return found
