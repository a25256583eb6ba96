"""SIEM export: access events, alarms and audit records as RFC 5424 syslog messages (or CEF in the message part)
over TCP with TLS and octet-counting framing (RFC 5425), from a durable queue in the store (docs/operations.md
"SIEM (syslog)"; the records are server/store_siem.py's, the settings site.toml [siem]).

What leaves, and why this way:

- **Sources.** ``access``: every stored event (badges, door and device events, duplicates from an edge's resends
  excluded: the event id is stored once); ``alarms``: every new alarm; ``audit``: every audit record (they never
  name people: server/audit.py). As for webhooks (server/webhooks.py), the ingest path, alarm writes and the audit
  log only *wake* the worker or not even that (it looks every :data:`POLL_S` anyway: an audit record written by
  another process, a CLI tool, is found the same way); the worker reads the store after its cursors
  (server/store_cursors.py), formats each record once and queues the messages and moves the cursors in one
  transaction. Queueing costs a decision nothing and survives a crash.
- **Formats.** :func:`syslog_message`: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [doorkeep@32473 …] MSG``
  with the record's own UTC time to the millisecond, MSGID the event type (``alarm_raised``, ``audit``), the
  structured data escaped as RFC 5424 §6.3.3 says (``"``, ``\\`` and ``]``), or with ``format = "cef"`` the same
  header, no structured data and ``CEF:0|doorkeep|doorkeep|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSION`` as the
  message (header fields escape ``|`` and ``\\``; extension values ``\\``, ``=`` and line breaks as ``\\n``/``\\r``).
  Any other control character becomes a space, so one record is always one line in a collector's file.
- **Privacy** (docs/privacy.md), as webhooks: a card by its last four characters at most, never its number or
  keyed hash; people by id and kind; names only with ``include_names``; no event detail, no snapshot.
- **Delivery: at least once.** TCP syslog has no application acknowledgement: a message the socket took may still
  be lost in the collector's buffers if it dies or restarts. So a message written to the socket is only
  *written*: it stays in the queue and is *confirmed* (deleted) once the connection has stayed up for
  ``confirm_s`` after it, the peer's TCP has acknowledged every byte (the socket's send queue is empty) and the
  collector has not closed the connection. When the connection drops, every written, unconfirmed message is sent
  again on the next connection, in order: a collector may receive a few messages twice (the ``event=`` id, the
  alarm id or the audit ``seq`` tell them apart), never none of them. A clean stop closes TLS with ``close_notify``
  (plain TCP: a half-close) and waits for the collector to close too, which it does only after reading everything
  before it: then all written messages are confirmed.
- **Never blocking a decision.** One worker thread owns the connection; connecting, writing and waiting happen
  there, with ``timeout_s`` on each, and failures reconnect with exponential backoff (``retry_s`` doubling up to
  ``max_retry_s``). The queue is bounded by ``max_queue``: when it is full the worker stops reading the sources
  (their rows stay in the store, under its retention) instead of dropping anything it queued.

Time comes from the injected clock (the confirmation window, backoff), so tests drive rounds with a ``FakeClock``
and :meth:`Siem.run_once`, and a fake :class:`Connector`.
"""

from __future__ import annotations

import logging
import os
import re
import select
import socket
import ssl
import stat
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

from doorkeep import __version__, vocabulary
from doorkeep.alarm_priority import HIGH, LOW, MEDIUM, priority_of
from doorkeep.clock import Clock, iso_ms, parse_iso_ms
from doorkeep.config import SiemSettings
from doorkeep.errors import ConfigError
from doorkeep.model import Site
from server.store import Store
from server.store_cursors import Cursor

try:  # the send queue's unacknowledged bytes (SIOCOUTQ) where the system has them; else confirmation is by time
    import fcntl
    import termios
except ImportError:  # pragma: no cover - not POSIX
    fcntl = termios = None  # type: ignore[assignment]
log = logging.getLogger("doorkeep.server.siem")

#: The structured data's SD-ID: 32473 is the private enterprise number IANA reserves for documentation (RFC 5612);
#: doorkeep has none of its own.
SD_ID = "doorkeep@32473"
#: The longest message sent (RFC 5425 §4.3.1: receivers SHOULD take 8192 octets; rsyslog's default limit is 8 KiB).
MAX_MESSAGE = 8192
#: The longest value (a name, a door's name) and message text, in characters, before escaping.
MAX_VALUE = 200
MAX_TEXT = 1024
#: Records read per source and round, and messages written per round.
SCAN_BATCH = 500
SEND_BATCH = 500
#: The longest the worker waits before looking at the store again (audit records written by other processes).
POLL_S = 1.0
#: The shortest gap between two rounds under a burst of wake-ups.
MIN_GAP_S = 0.05
#: The longest a clean close waits for the collector to close its side.
CLOSE_S = 2.0
#: Syslog severities (RFC 5424 §6.2.1) the records use.
CRIT, ERR, WARNING, NOTICE, INFO = 2, 3, 4, 5, 6
#: An alarm's syslog severity by its priority at the site (docs/alarms.md "Priority").
ALARM_SEVERITY = {HIGH: CRIT, MEDIUM: ERR, LOW: WARNING}
#: CEF's 0-10 severity for each syslog severity.
CEF_SEVERITY = {CRIT: 9, ERR: 7, WARNING: 5, NOTICE: 3, INFO: 1}
#: Records stored at the same moment go out events first, then alarms, then audit records (an event raises its
#: alarm; an operator acts on both).
_RANK = {"access": 0, "alarms": 1, "audit": 2}
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z\Z")
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


# ----------------------------------------------------------------------- records


@dataclass(frozen=True)
class Record:
    """One event, alarm or audit record as it leaves, before it is formatted: the header's parts, the structured
    data's parameters (absent values left out) with a short text, and the CEF fields."""

    kind: str
    """``access``, ``alarms`` or ``audit`` (site.toml [siem] ``send``)."""
    source: str
    """What it is about, unique: ``event:ID``, ``alarm:ID``, ``audit:SEQ``."""
    msgid: str
    at: float
    """The record's own time (an event's ``ts``, when an alarm was raised, an audit record's ``ts``), UTC."""
    timestamp: str
    """``at`` as the header's TIMESTAMP: the stored text itself when it is RFC 3339 UTC already (a float would
    round ``.123`` down to ``.122``)."""
    stored_at: float
    severity: int
    params: tuple[tuple[str, str], ...]
    text: str
    signature: str
    name: str
    extension: tuple[tuple[str, str], ...]
    person: str | None = None


def _pairs(*items: tuple[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple((k, str(v)) for k, v in items if v is not None and v != "")


def _when(text: Any, fallback: float) -> tuple[float, str]:
    """A stored ISO 8601 time as seconds and as an RFC 5424 TIMESTAMP (``fallback`` when it is not one)."""
    try:
        at = parse_iso_ms(str(text))
    except (TypeError, ValueError):
        return fallback, iso_ms(fallback)
    return at, str(text) if _TIMESTAMP.match(str(text)) else iso_ms(at)


def _person(site: Site, person_id: Any) -> Any:
    return site.people.get(person_id) if isinstance(person_id, str) and person_id else None


def event_record(row: Mapping[str, Any], site: Site, *, site_id: str, include_names: bool) -> Record:
    """A stored event (a row of ``events``) as it leaves: person by id and kind, card by its last four, the
    person's name only with ``include_names``."""
    etype = str(row["type"])
    door = site.doors.get(row.get("door") or "")
    person = _person(site, row.get("person"))
    name = person.name if include_names and person is not None else None
    decision, reason = row.get("decision"), row.get("reason")
    declared = vocabulary.EVENTS.get(etype)
    raises = declared.raises if declared is not None else None
    if etype == "access":
        severity = INFO if decision == "granted" else NOTICE
        what = f"access {decision or 'undecided'}" + (f" ({reason})" if reason and reason != decision else "")
        title = f"Access {decision or 'undecided'}"
    else:
        severity = WARNING if raises else INFO
        what = etype.replace("_", " ")
        title = vocabulary.alarm_label(raises) if raises else what.capitalize()
    where = door.name if door is not None else (row.get("door") or row.get("device") or "the site")
    text = f"{what} at {where}" + (f" by {name}" if name else "")
    kind = person.kind.value if person is not None else None
    received = float(row.get("received_at") or 0.0)
    at, timestamp = _when(row.get("ts"), received)
    return Record(
        kind="access", source=f"event:{row['id']}", msgid=etype, at=at, timestamp=timestamp,
        stored_at=received, severity=severity,
        params=_pairs(("site", site_id), ("device", row.get("device")), ("door", row.get("door")),
                      ("decision", decision), ("reason", reason), ("decided_by", row.get("decided_by")),
                      ("person", row.get("person")), ("kind", kind), ("card_last4", row.get("credential_last4")),
                      ("name", name), ("event", row["id"]), ("seq", row.get("seq"))),
        text=text, signature=etype, name=title,
        extension=_pairs(("cat", "access"), ("externalId", row["id"]), ("dvchost", row.get("device")),
                         ("cs1Label", "site"), ("cs1", site_id), ("cs2Label", "door"), ("cs2", row.get("door")),
                         ("outcome", decision), ("reason", reason),
                         ("cs3Label", "decidedBy" if row.get("decided_by") else None), ("cs3", row.get("decided_by")),
                         ("suid", row.get("person")), ("cs4Label", "personKind" if kind else None), ("cs4", kind),
                         ("cs5Label", "cardLast4" if row.get("credential_last4") else None),
                         ("cs5", row.get("credential_last4")), ("suser", name),
                         ("cn1Label", "seq" if row.get("seq") is not None else None), ("cn1", row.get("seq"))),
        person=row.get("person") if isinstance(row.get("person"), str) else None)


def alarm_record(row: Mapping[str, Any], site: Site, *, site_id: str) -> Record:
    """A new alarm (a row of ``alarms``) as it leaves: its type, priority at the site and where it is."""
    atype = str(row["type"])
    door = site.doors.get(row.get("door") or "")
    priority = priority_of(site.alarms, atype)
    label = vocabulary.alarm_label(atype)
    where = door.name if door is not None else (row.get("door") or row.get("device"))
    raised = float(row.get("raised_at") or 0.0)
    return Record(
        kind="alarms", source=f"alarm:{row['id']}", msgid="alarm_raised", at=raised, timestamp=iso_ms(raised),
        stored_at=raised,
        severity=ALARM_SEVERITY.get(priority, WARNING),
        params=_pairs(("site", site_id), ("device", row.get("device")), ("door", row.get("door")),
                      ("alarm", row["id"]), ("type", atype), ("severity", row.get("severity")),
                      ("priority", priority), ("event", row.get("source_event"))),
        text=f"{label} at {where}" if where else label, signature=f"alarm:{atype}", name=label,
        extension=_pairs(("cat", "alarm"), ("externalId", row["id"]), ("dvchost", row.get("device")),
                         ("cs1Label", "site"), ("cs1", site_id), ("cs2Label", "door"), ("cs2", row.get("door")),
                         ("cs3Label", "priority"), ("cs3", priority), ("cs4Label", "alarmSeverity"),
                         ("cs4", row.get("severity")),
                         ("cs5Label", "sourceEvent" if row.get("source_event") else None),
                         ("cs5", row.get("source_event"))))


def audit_record(row: Mapping[str, Any], *, site_id: str) -> Record:
    """An audit record (a row of ``audit_log``) as it leaves: who did what to what, its details (canonical JSON,
    never a name: server/audit.py) and its hash, so a SIEM can follow the chain."""
    seq = int(row["seq"])
    at, timestamp = _when(row.get("ts"), 0.0)
    target = row.get("target")
    text = " ".join(str(p) for p in (row["actor"], row["action"], target, row.get("details") or "{}") if p)
    return Record(
        kind="audit", source=f"audit:{seq}", msgid="audit", at=at, timestamp=timestamp, stored_at=at,
        severity=NOTICE,
        params=_pairs(("site", site_id), ("seq", seq), ("actor", row["actor"]), ("action", row["action"]),
                      ("target", target), ("hash", row.get("hash"))),
        text=text, signature=f"audit:{row['action']}", name=f"Audit {row['action']}",
        extension=_pairs(("cat", "audit"), ("externalId", seq), ("cs1Label", "site"), ("cs1", site_id),
                         ("suser", row["actor"]), ("act", row["action"]), ("cs6Label", "target" if target else None),
                         ("cs6", target), ("msg", row.get("details"))))


# ----------------------------------------------------------------------- formats


def _clean(value: str, limit: int = MAX_VALUE) -> str:
    """Control characters (line breaks included) as spaces, at most ``limit`` characters."""
    value = _CONTROL.sub(" ", value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


def header_field(value: str, limit: int) -> str:
    """An RFC 5424 header field (HOSTNAME, APP-NAME, PROCID, MSGID): printable US-ASCII without spaces, anything
    else as ``_``; at most ``limit`` characters; ``-`` (NILVALUE) when empty."""
    out = "".join(c if 33 <= ord(c) <= 126 else "_" for c in value)[:limit]
    return out or "-"


def sd_escape(value: str) -> str:
    """A PARAM-VALUE (RFC 5424 §6.3.3): ``\\``, ``"`` and ``]`` escaped with a backslash, control characters as
    spaces."""
    return _clean(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def structured_data(params: Iterable[tuple[str, str]]) -> str:
    """One SD-ELEMENT ``[doorkeep@32473 name="value" …]``."""
    return "[" + SD_ID + "".join(f' {header_field(k, 32)}="{sd_escape(v)}"' for k, v in params) + "]"


def cef_header(value: str) -> str:
    """A CEF header field: ``\\`` and ``|`` escaped, line breaks and other control characters as spaces."""
    return _clean(value).replace("\\", "\\\\").replace("|", "\\|")


def cef_value(value: str, limit: int = MAX_VALUE) -> str:
    """A CEF extension value: ``\\`` and ``=`` escaped, line breaks as ``\\n`` / ``\\r``, other control characters as
    spaces (``|`` needs no escape in the extension)."""
    value = value if len(value) <= limit else value[: limit - 1] + "…"
    value = value.replace("\\", "\\\\").replace("=", "\\=").replace("\r\n", "\\n").replace("\n", "\\n")
    return _CONTROL.sub(" ", value.replace("\r", "\\r"))


def cef(record: Record) -> str:
    """``CEF:0|doorkeep|doorkeep|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSION``: ``rt`` (the record's time, ms since
    the epoch) first, ``msg`` (the short text) last unless the record brings its own."""
    ext = [("rt", str(int(round(record.at * 1000)))), *record.extension]
    if not any(k == "msg" for k, _ in record.extension):
        ext.append(("msg", record.text))
    head = "|".join(cef_header(p) for p in ("doorkeep", "doorkeep", __version__, record.signature, record.name))
    body = " ".join(f"{k}={cef_value(v, MAX_TEXT if k == 'msg' else MAX_VALUE)}" for k, v in ext)
    return f"CEF:0|{head}|{CEF_SEVERITY.get(record.severity, 5)}|{body}"


@dataclass(frozen=True)
class Header:
    """The parts of the syslog header that come from the settings and the process, not from a record."""

    facility: int = 16
    hostname: str = "-"
    app_name: str = "doorkeep"
    procid: str = "-"
    format: str = "rfc5424"


def syslog_message(record: Record, header: Header) -> str:
    """The RFC 5424 message for ``record`` (without its frame): structured data and a short text, or (``cef``) no
    structured data and the CEF line as the message. At most :data:`MAX_MESSAGE` octets: a longer one loses the
    end of its text."""
    head = (f"<{header.facility * 8 + record.severity}>1 {record.timestamp} {header_field(header.hostname, 255)} "
            f"{header_field(header.app_name, 48)} {header_field(header.procid, 128)} {header_field(record.msgid, 32)}")
    if header.format == "cef":
        line = f"{head} - {cef(record)}"
    else:
        line = f"{head} {structured_data(record.params)} {_clean(record.text, MAX_TEXT)}"
    data = line.encode("utf-8")
    if len(data) > MAX_MESSAGE:
        line = data[: MAX_MESSAGE - 3].decode("utf-8", errors="ignore").rstrip("\\") + "…"
    return line


def frame(message: str) -> bytes:
    """Octet-counting framing (RFC 5425 §4.3, RFC 6587 §3.4.1): ``MSG-LEN SP SYSLOG-MSG``, no trailer."""
    data = message.encode("utf-8")
    return str(len(data)).encode("ascii") + b" " + data


# ----------------------------------------------------------------------- transport


class Channel(Protocol):
    """One connection to the collector (:class:`SocketChannel`; a test passes its own)."""

    def send(self, data: bytes) -> None:
        """Write all of ``data`` or raise OSError (the connection is then unusable: a frame may be cut)."""

    def alive(self) -> bool:
        """False once the collector closed or reset the connection (it never sends anything)."""

    def unacked(self) -> int | None:
        """Bytes written that the peer's TCP has not acknowledged yet; None where the system cannot say."""

    def close(self, graceful: bool) -> bool:
        """Close; with ``graceful``, end the stream and wait for the collector to close its side, which it does only
        after reading everything: True when it did."""


class Connector(Protocol):
    """Opens a :class:`Channel` to the collector, or raises OSError (ssl.SSLError included)."""

    def connect(self) -> Channel: ...

    def describe(self) -> str: ...


class SocketChannel:
    """A TCP socket, TLS-wrapped or plain, with a timeout on every write."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self.sock = sock
        self.timeout_s = timeout_s

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def alive(self) -> bool:
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        if not readable:
            return True
        self.sock.settimeout(0.0)
        try:
            data = self.sock.recv(4096)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return True  # only TLS records without data (a TLS 1.3 session ticket)
        except OSError:
            return False  # reset, or a TLS alert
        finally:
            self.sock.settimeout(self.timeout_s)
        return bool(data)  # b"": the collector closed; data: it spoke (syslog collectors do not), ignored

    def unacked(self) -> int | None:
        if fcntl is None or termios is None:
            return None
        try:
            raw = fcntl.ioctl(self.sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")  # SIOCOUTQ on a TCP socket
        except (OSError, ValueError):
            return None
        return int(struct.unpack("i", raw)[0])

    def close(self, graceful: bool) -> bool:
        drained = False
        try:
            if graceful:
                self.sock.settimeout(min(self.timeout_s, CLOSE_S))
                if isinstance(self.sock, ssl.SSLSocket):
                    try:
                        self.sock = self.sock.unwrap()  # close_notify, then the collector's close_notify
                        drained = True
                    except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                        drained = True  # it closed TCP after reading ours: its buffer was empty (else: a reset)
                else:
                    self.sock.shutdown(socket.SHUT_WR)
                    while self.sock.recv(4096):
                        pass
                    drained = True
        except OSError as exc:
            log.debug("SIEM connection did not close cleanly: %s", exc)
        finally:
            try:
                self.sock.close()
            except OSError:
                pass
        return drained


class TcpConnector:
    """TCP to ``host:port``, with TLS when ``context`` is given (the collector's name checked against ``host``);
    TCP_NODELAY (each round's write leaves at once) and keep-alive on."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None, timeout_s: float) -> None:
        self.host, self.port, self.context, self.timeout_s = host, port, context, timeout_s

    def describe(self) -> str:
        return f"{'tls' if self.context is not None else 'tcp'}://{self.host}:{self.port}"

    def connect(self) -> Channel:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock = raw if self.context is None else self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        return SocketChannel(sock, self.timeout_s)


def tls_context(settings: SiemSettings, site_ca: Path | None) -> ssl.SSLContext:
    """The client TLS context for the collector: TLS 1.2 at least, its certificate verified against ``ca_file``
    (default: the system's CAs and ``site_ca`` when it exists) and its name against ``host``; the client
    certificate presented when configured. ConfigError naming the key and the fix when a file cannot be used."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ca = settings.ca_file if settings.ca_file is not None else site_ca
    try:
        if settings.ca_file is None:
            ctx.load_default_certs()
        if ca is not None and (settings.ca_file is not None or ca.is_file()):
            ctx.load_verify_locations(cafile=str(ca))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(settings.file, "siem.ca_file", f"{ca} is not a usable CA certificate: {exc}",
                          "point ca_file at the PEM file of the CA that signed the collector's certificate") from None
    cert, key = settings.cert_file, settings.key_file
    if cert is not None and key is not None:
        try:
            mode = stat.S_IMODE(key.stat().st_mode)
        except OSError as exc:
            raise ConfigError(settings.file, "siem.key_file", f"{key} cannot be read: {exc}",
                              "point key_file at the NAME.key `doorkeep pki issue` wrote") from None
        if mode & 0o077:
            raise ConfigError(settings.file, "siem.key_file", f"{key} is readable by group or others (mode {mode:03o})",
                              f"chmod 600 {key}")
        try:
            ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(settings.file, "siem.cert_file", f"{cert} and {key} are not a usable pair: {exc}",
                              "use NAME.crt and NAME.key issued together by `doorkeep pki issue NAME --role "
                              "integration`") from None
    return ctx


def connector_for(settings: SiemSettings, site_ca: Path | None) -> TcpConnector:
    """The production connector for ``settings`` (its TLS context built now, so a bad file stops the start)."""
    assert settings.host is not None
    context = tls_context(settings, site_ca) if settings.tls else None
    if context is None:
        log.warning("SIEM messages go to %s:%d over plain TCP (tls = false): anyone on the network can read them",
                    settings.host, settings.port)
    return TcpConnector(settings.host, settings.port, context, settings.timeout_s)


# ----------------------------------------------------------------------- the service


@dataclass
class RoundReport:
    """What one :meth:`Siem.run_once` did."""

    queued: int = 0
    written: int = 0
    confirmed: int = 0
    resent: int = 0  # written, unconfirmed messages put back when the connection dropped
    connected: bool = False
    more: bool = False  # more is waiting: the next round follows at once


@dataclass
class _Written:
    id: int
    at: float  # monotonic


class Siem:
    """The queue's feeding and the thread that keeps one connection to the collector."""

    def __init__(self, store: Store, clock: Clock, settings: SiemSettings, *, site: Callable[[], Site], site_id: str,
                 connector: Connector, hostname: str | None = None) -> None:
        """``site``: the live site (door and person names, alarm priorities), read at each round; ``hostname``: the
        syslog HOSTNAME when ``settings`` names none (default: this machine's name)."""
        self.store = store
        self.clock = clock
        self.settings = settings
        self.site = site
        self.site_id = site_id
        self.connector = connector
        self.header = Header(facility=settings.facility, hostname=settings.hostname or hostname or socket.gethostname(),
                             app_name=settings.app_name, procid=str(os.getpid()), format=settings.format)
        self.counters: Counter[str] = Counter()
        self._channel: Channel | None = None
        self._written: list[_Written] = []
        self._through = 0  # the highest id written on this connection (or confirmed)
        self._confirmed = 0
        self._failures = 0
        self._next_connect = float("-inf")
        self._full = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._round = threading.Lock()
        if store.siem_begin():
            log.info("SIEM forwarding starts: records stored from now on are sent to %s", connector.describe())

    # ------------------------------------------------------------ feeding the queue

    def wake(self, *_: object, **__: object) -> None:
        """Any thread (the bus after an event, the store after an alarm write): look soon. Only sets an event."""
        self._wake.set()

    def _record(self, source: str, row: Mapping[str, Any], site: Site) -> Record:
        if source == "events":
            return event_record(row, site, site_id=self.site_id, include_names=self.settings.include_names)
        if source == "alarms":
            return alarm_record(row, site, site_id=self.site_id)
        return audit_record(row, site_id=self.site_id)

    def enqueue_new(self) -> tuple[int, bool]:
        """Format and queue what was stored after the cursors (only the kinds ``send`` names; the others' cursors
        move past them), in the order it was stored, and move the cursors; how many were queued, and whether more
        is waiting. Reads nothing while the queue holds ``max_queue`` messages."""
        depth, _ = self.store.siem_depth()
        room = self.settings.max_queue - depth
        if room <= 0:
            if not self._full:
                log.error("the SIEM queue is full (%d messages): new records wait in the store until %s takes some",
                          depth, self.connector.describe())
            self._full = True
            return 0, False
        self._full = False
        cursors = self.store.siem_cursors()
        site = self.site()
        now = self.clock.wall()
        records: list[Record] = []
        moves: dict[str, Cursor] = {}
        more = False
        for source, kind in (("events", "access"), ("alarms", "alarms"), ("audit_log", "audit")):
            start = cursors.get(source, (0.0, None, None))
            limit = max(1, min(SCAN_BATCH, room - len(records)))
            rows, reached = self.store.source_rows(source, start, limit, None if kind in self.settings.send else [])
            more |= len(rows) >= limit
            for row in rows:
                try:
                    records.append(self._record(source, row, site))
                except Exception:  # one bad row must not stop the export: counted, logged, skipped
                    self.counters["format_errors"] += 1
                    log.exception("SIEM: cannot format a record of %s (rowid %s); skipped", source, row.get("rowid"))
            if reached != start:
                moves[source] = reached
        if not records and not moves:
            return 0, more
        records.sort(key=lambda r: (r.stored_at, _RANK[r.kind]))  # stable: each source keeps its own order
        rows_out = [{"source": r.source, "kind": r.kind, "person": r.person, "stored_at": r.stored_at,
                     "queued_at": now, "message": syslog_message(r, self.header)} for r in records]
        queued = self.store.queue_siem(rows_out, moves)
        self.counters["queued"] += queued
        return queued, more

    # ------------------------------------------------------------ sending

    def backoff(self, failures: int) -> float:
        """Seconds before the next connection attempt after ``failures`` failed ones in a row."""
        return min(self.settings.retry_s * 2 ** max(0, failures - 1), self.settings.max_retry_s)

    @property
    def connected(self) -> bool:
        return self._channel is not None

    def _fail(self, why: str, *, drop: bool) -> int:
        """The connection failed (or could not be made): close it, put back what it did not confirm, schedule the
        next attempt. How many written messages go out again."""
        resent = len(self._written)
        if self._channel is not None:
            self._channel.close(graceful=False)
            self._channel = None
        self._written = []
        self._through = self._confirmed
        self._failures += 1
        delay = self.backoff(self._failures)
        self._next_connect = self.clock.monotonic() + delay
        self.counters["failures"] += 1
        self.counters["resent"] += resent
        log.warning("SIEM %s %s: %s; %s again in %.0f s%s", self.connector.describe(),
                    "connection lost" if drop else "connection failed", why, "connecting" if drop else "trying",
                    delay, f" ({resent} messages not confirmed will be sent again)" if resent else "")
        return resent

    def _confirm(self, now: float, report: RoundReport) -> None:
        assert self._channel is not None
        window = self.settings.confirm_s
        ripe = [w for w in self._written if now - w.at >= window]
        if not ripe:
            return
        unacked = self._channel.unacked()
        if unacked:
            if now - self._written[0].at > window + self.settings.timeout_s:
                report.resent += self._fail(f"{unacked} bytes unacknowledged for {now - self._written[0].at:.0f} s",
                                            drop=True)
            return
        through = ripe[-1].id
        self.store.siem_confirm(through)
        self._confirmed = through
        self._written = self._written[len(ripe):]
        self._failures = 0
        report.confirmed += len(ripe)
        self.counters["sent"] += len(ripe)

    def _send(self, now: float, report: RoundReport) -> None:
        assert self._channel is not None
        pending = self.store.siem_pending(self._through, SEND_BATCH)
        if not pending:
            return
        try:
            self._channel.send(b"".join(frame(m) for _, m in pending))
        except OSError as exc:
            report.resent += self._fail(f"{type(exc).__name__}: {exc}", drop=True)
            return
        self._written.extend(_Written(i, now) for i, _ in pending)
        self._through = pending[-1][0]
        report.written += len(pending)
        report.more |= len(pending) >= SEND_BATCH
        self.counters["written"] += len(pending)

    def run_once(self) -> RoundReport:
        """One round: queue what is new; connect when due; drop a connection the collector closed; confirm what
        has been written long enough; write what waits. Safe to call from a test at any time."""
        with self._round:
            report = RoundReport()
            report.queued, report.more = self.enqueue_new()
            now = self.clock.monotonic()
            if self._channel is None:
                if now < self._next_connect:
                    return report
                try:
                    self._channel = self.connector.connect()
                except (OSError, ValueError) as exc:
                    self._fail(f"{type(exc).__name__}: {exc}", drop=False)
                    return report
                self.counters["connects"] += 1
                log.info("SIEM connected to %s", self.connector.describe())
            if not self._channel.alive():
                report.resent += self._fail("the collector closed the connection", drop=True)
                return report
            self._confirm(now, report)
            if self._channel is not None:
                self._send(now, report)
            report.connected = self._channel is not None
            return report

    def close(self) -> bool:
        """End the connection cleanly: when the collector closes its side in turn (it has read everything), every
        written message is confirmed. True when nothing written is left unconfirmed."""
        with self._round:
            if self._channel is None:
                return not self._written
            drained = self._channel.close(graceful=True)
            self._channel = None
            if drained and self._written:
                self.store.siem_confirm(self._written[-1].id)
                self.counters["sent"] += len(self._written)
                self._confirmed = self._written[-1].id
            left = not drained and bool(self._written)
            self._written = []  # what is left stays queued: written again on the next connection
            self._through = self._confirmed
            return not left

    def stats(self) -> dict[str, Any]:
        """The queue's figures for metrics: depth, when its oldest record was stored, connected, and this process's
        counters (queued, written, sent: confirmed, resent, failures, connects, format_errors)."""
        depth, oldest = self.store.siem_depth()
        return {"depth": depth, "oldest_stored_at": oldest, "connected": self.connected,
                "counters": dict(self.counters)}

    # ------------------------------------------------------------ thread

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-siem", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the current round and close the connection cleanly (waiting at most ``timeout_s`` for the
        collector); what stays unconfirmed is sent again at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else 2 * self.settings.timeout_s + 2)
            self._thread = None
        else:
            self.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _pause(self, report: RoundReport) -> float:
        """How long to wait for a wake-up after a round."""
        if report.more:
            return 0.0
        if self._channel is not None and self._written:
            return max(MIN_GAP_S, min(POLL_S, self.settings.confirm_s / 4))  # watch the connection, then confirm
        if self._channel is None and self._next_connect > self.clock.monotonic():
            return max(MIN_GAP_S, min(POLL_S, self._next_connect - self.clock.monotonic()))
        return POLL_S

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    report = self.run_once()
                except Exception:
                    log.exception("SIEM round failed; trying again in %.0f s", POLL_S)
                    report = RoundReport()
                pause = self._pause(report)
                if self._stop.wait(MIN_GAP_S):  # coalesce a burst of wake-ups into one round
                    break
                if pause > MIN_GAP_S:
                    self._wake.wait(pause - MIN_GAP_S)
        finally:
            self.close()


__all__ = ["ALARM_SEVERITY", "CEF_SEVERITY", "MAX_MESSAGE", "SD_ID", "Channel", "Connector", "Header", "Record",
           "RoundReport", "Siem", "SocketChannel", "TcpConnector", "alarm_record", "audit_record", "cef",
           "cef_header", "cef_value", "connector_for", "event_record", "frame", "header_field", "sd_escape",
           "structured_data", "syslog_message", "tls_context"]
