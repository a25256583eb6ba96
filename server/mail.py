"""Outbound mail through the site's SMTP relay, from a durable queue in the store (site.toml [smtp]).

Why a queue and a thread, not a send in the request: a receptionist pre-registering a visitor must never wait
on a relay that is slow, down or refusing, and an invitation must not be lost because the server restarted
before the relay answered. So :meth:`MailQueue.enqueue` is one committed INSERT (server/store_mail.py) and
returns; :class:`MailQueue`'s thread delivers what is due, oldest first, one SMTP session per batch.

Delivery rules (docs/configuration.md "[smtp]"):

- every failure (relay unreachable, timeout, TLS or login refused, a 4xx or 5xx reply) is retried with
  exponential backoff, ``retry_s`` doubling per attempt up to ``max_retry_s``, and dead-lettered (``failed``)
  after ``max_attempts``; a 5xx is retried too, because the usual cause is the relay's configuration (an
  account, a sender policy) that an admin fixes, not the message;
- a message is leased while it is being sent, so no second sender takes it; the server (the only sender)
  releases the leases of a sender that died when it starts (:meth:`MailQueue.recover`), and pending messages
  are sent once after a restart. The one window for a duplicate (the relay took
  the message and the process died before recording it) is covered by the stable ``Message-ID``: the
  queue's id, which mail clients use to fold duplicates;
- the password is read at start from ``password_file`` (mode 0600) or ``password_env``, never from site.toml.

Time comes from the injected clock (due times, backoff), so tests drive retries with a ``FakeClock`` and
:meth:`MailQueue.run_once`; the thread only waits on an ``Event`` (stoppable, woken by every enqueue).
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import ssl
import stat
import threading
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, parseaddr
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol

from doorkeep.clock import Clock
from doorkeep.config import SmtpSettings
from doorkeep.errors import ConfigError
from server.errors import ServerError
from server.store import Store

log = logging.getLogger("doorkeep.server.mail")

#: Messages taken per SMTP session; the rest wait for the next round (a few seconds at most).
BATCH = 50
#: The longest the thread waits with nothing due before looking again (another process may have queued).
IDLE_S = 30.0
#: Kinds of message the queue carries (the desk shows the state of each per visit).
KINDS = ("invitation", "host_notice", "test")


class MailError(ServerError, ValueError):
    """Outbound mail could not be queued (no relay, no recipient, an unknown kind)."""


class MailNotConfigured(MailError):
    """The site has no [smtp] relay: nothing can be queued."""


class DeliveryError(MailError):
    """One delivery attempt failed; ``message`` says why (kept as the queue row's ``last_error``)."""


@dataclass(frozen=True)
class Outgoing:
    """A message claimed for delivery."""

    id: str
    recipient: str
    message: bytes
    attempts: int


@dataclass
class DeliveryReport:
    """What one round of :meth:`MailQueue.run_once` did."""

    sent: int = 0
    retried: int = 0
    failed: int = 0


class Relay(Protocol):
    """Where messages go. :class:`SmtpRelay` in production; a test or the bench may pass its own."""

    def deliver(self, batch: list[Outgoing]) -> list[str | None]:
        """Send each message; per message None (taken) or the reason it was not. Raises DeliveryError when
        no message could be tried at all (the relay is unreachable)."""
        ...


def load_password(settings: SmtpSettings, env: Mapping[str, str] | None = None) -> str | None:
    """The relay password from ``password_file`` or ``password_env``; ConfigError naming the key and the fix."""
    env = os.environ if env is None else env
    if settings.password_env is not None:
        value = env.get(settings.password_env)
        if not value:
            raise ConfigError(settings.file, "smtp.password_env", f"the environment variable {settings.password_env} "
                              "is not set or empty", f"set {settings.password_env} in the server's environment "
                              "(systemd: an EnvironmentFile= readable by the server only)")
        return value
    path = settings.password_file
    if path is None:
        return None
    try:
        st = path.stat()
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(settings.file, "smtp.password_file", f"{path} cannot be read: {exc}",
                          "write the relay password into that file, readable by the server's account") from exc
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(settings.file, "smtp.password_file",
                          f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):o})", f"chmod 600 {path}")
    password = text.strip("\r\n")
    if not password:
        raise ConfigError(settings.file, "smtp.password_file", f"{path} is empty",
                          "write the relay password into it (one line)")
    return password


def envelope_sender(settings: SmtpSettings) -> str:
    """The bare address of ``from`` (``Reception <r@example.com>`` -> ``r@example.com``)."""
    return parseaddr(settings.from_addr)[1] or settings.from_addr


class SmtpRelay:
    """The site's relay through smtplib: one session per batch, STARTTLS or implicit TLS checked against the
    system's CAs or ``ca_file``, login when a username is set."""

    def __init__(self, settings: SmtpSettings, password: str | None) -> None:
        if not settings.enabled:
            raise MailNotConfigured("no [smtp] host in site.toml: the server sends no mail")
        self.settings = settings
        self._password = password
        self._context: ssl.SSLContext | None = None
        if settings.security != "none":
            self._context = ssl.create_default_context(
                cafile=str(settings.ca_file) if settings.ca_file is not None else None)

    def _session(self) -> smtplib.SMTP:
        s = self.settings
        assert s.host is not None
        smtp: smtplib.SMTP
        if s.security == "tls":
            smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=self._context)
        else:
            smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        try:
            if s.security == "starttls":
                smtp.starttls(context=self._context)
            if s.username is not None:
                smtp.login(s.username, self._password or "")
        except BaseException:
            smtp.close()
            raise
        return smtp

    def deliver(self, batch: list[Outgoing]) -> list[str | None]:
        sender = envelope_sender(self.settings)
        try:
            smtp = self._session()
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"relay {self.settings.host}:{self.settings.port}: {_reason(exc)}") from exc
        results: list[str | None] = []
        try:
            for item in batch:
                try:
                    smtp.sendmail(sender, [item.recipient], item.message)
                    results.append(None)
                except smtplib.SMTPServerDisconnected as exc:
                    results.append(_reason(exc))
                    break  # the rest of the batch is tried again next round
                except (smtplib.SMTPException, OSError) as exc:
                    results.append(_reason(exc))
                    try:
                        smtp.rset()
                    except (smtplib.SMTPException, OSError):
                        break
        finally:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                smtp.close()
        results += ["the relay closed the session before this message"] * (len(batch) - len(results))
        return results


def _reason(exc: BaseException) -> str:
    """A short, loggable reason: the SMTP code and text when the relay answered."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [f"{code} {msg.decode('utf-8', 'replace') if isinstance(msg, bytes) else msg}"
                 for code, msg in exc.recipients.values()]
        return "recipient refused: " + "; ".join(codes)
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return f"{exc.smtp_code} {text}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class MailQueue:
    """The durable outbound queue and its sender thread. :meth:`enqueue` never waits on the relay."""

    def __init__(self, store: Store, settings: SmtpSettings, clock: Clock, *, relay: Relay | None = None,
                 password: str | None = None, batch: int = BATCH, env: Mapping[str, str] | None = None) -> None:
        """``relay``: where messages go (default :class:`SmtpRelay` with the password from the settings;
        a ConfigError names the key and the fix when it cannot be read)."""
        self.store = store
        self.settings = settings
        self.clock = clock
        self.batch = batch
        if relay is None and settings.enabled:
            relay = SmtpRelay(settings, password if password is not None else load_password(settings, env))
        self.relay = relay
        # A claim outlives the longest session a batch could take, so no message is sent twice by two senders;
        # a dead sender's claims are released when the server starts again (recover), or run out after this.
        self.lease_s = 2 * settings.timeout_s * (batch + 2)
        self._renderers: dict[str, Callable[[dict[str, Any]], EmailMessage]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    @property
    def enabled(self) -> bool:
        return self.relay is not None

    @property
    def domain(self) -> str:
        return envelope_sender(self.settings).rpartition("@")[2] or "doorkeep.invalid"

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try after ``attempts`` failed ones: doubling from ``retry_s``, capped."""
        return min(self.settings.retry_s * 2 ** max(0, attempts - 1), self.settings.max_retry_s)

    def _check(self, kind: str, recipient: str) -> None:
        if self.relay is None:
            raise MailNotConfigured("no [smtp] host in site.toml: the server sends no mail (docs/configuration.md)")
        if kind not in KINDS:
            raise MailError(f"unknown kind of mail {kind!r} (one of {', '.join(KINDS)})")
        if not recipient or "@" not in recipient:
            raise MailError("the message has no recipient address (To)")

    def _headers(self, msg: EmailMessage, mail_id: str, queued_at: float) -> bytes:
        """From, Date and Message-ID (the queue id: a resend after a crash is recognisably the same message),
        then the bytes with CRLF line ends, as SMTP wants them: smtplib sends bytes as they are, and a relay
        reads lines by CRLF (bare LFs make one "line too long" to aiosmtpd, Postfix and Exchange alike)."""
        if msg.get("From") is None:
            msg["From"] = self.settings.from_addr
        if msg.get("Date") is None:
            msg["Date"] = format_datetime(datetime.fromtimestamp(queued_at, timezone.utc))
        if msg.get("Message-ID") is None:
            msg["Message-ID"] = f"<{mail_id}@{self.domain}>"
        return msg.as_bytes(policy=SMTP_POLICY)

    def enqueue(self, msg: EmailMessage, *, kind: str, about: str | None = None, person: str | None = None) -> str:
        """Queue ``msg`` for its single ``To`` address; returns the queue id. One INSERT, then the sender is
        woken: the caller (the desk) never waits on the relay. Sets From, Date and Message-ID when absent."""
        to = msg.get("To")
        addresses = getattr(to, "addresses", None)  # a parsed header (the default policy): trust its parse
        if addresses is not None and len(addresses) != 1:
            raise MailError(f"a queued message goes to exactly one address, not {len(addresses)}")
        recipient = addresses[0].addr_spec if addresses else parseaddr(str(to or ""))[1]
        self._check(kind, recipient)
        mail_id = uuid.uuid4().hex
        now = self.clock.wall()
        data = self._headers(msg, mail_id, now)
        self.store.enqueue_mail(mail_id, kind, recipient, str(msg.get("Subject", "")), data, now,
                                about=about, person=person)
        self._wake.set()
        return mail_id

    def renderer(self, kind: str, compose: Callable[[dict[str, Any]], EmailMessage]) -> None:
        """Let the sender compose ``kind`` messages queued by :meth:`enqueue_payload` (registered at start:
        a payload queued before a restart is composed by the restarted server's renderer)."""
        self._renderers[kind] = compose

    def enqueue_payload(self, kind: str, payload: dict[str, Any], *, recipient: str, subject: str,
                        about: str | None = None, person: str | None = None) -> str:
        """Queue a message the sender thread composes from ``payload`` (JSON) with the ``kind``'s renderer.

        Why: an invitation's QR image takes tens of milliseconds to draw; composed here, in the caller, it
        would hold up the desk's request (and a CSV import of hundreds of rows for that many times over).
        The row is as durable as a composed message; the composition happens once, before the first attempt.
        """
        self._check(kind, recipient)
        mail_id = uuid.uuid4().hex
        self.store.enqueue_mail(mail_id, kind, recipient, subject, None, self.clock.wall(), about=about,
                                person=person, payload=json.dumps(payload, sort_keys=True))
        self._wake.set()
        return mail_id

    def _compose(self, row: dict[str, Any]) -> bytes:
        """The row's message bytes, composed from its payload on first use (kept by the outcome, if not sent)."""
        if row["message"] is not None:
            return bytes(row["message"])
        compose = self._renderers.get(row["kind"])
        if compose is None or not row["payload"]:
            raise DeliveryError(f"no way to compose a {row['kind']} message (nothing registered its renderer)")
        try:
            data = self._headers(compose(json.loads(row["payload"])), row["id"], row["queued_at"])
        except DeliveryError:
            raise
        except Exception as exc:  # a payload the renderer cannot use: tried again, then dead-lettered
            raise DeliveryError(f"cannot compose the message: {type(exc).__name__}: {exc}") from exc
        return data

    def run_once(self) -> DeliveryReport:
        """Deliver what is due now (one batch); record each outcome. Safe to call from a test at any time."""
        report = DeliveryReport()
        if self.relay is None:
            return report
        now = self.clock.wall()
        rows = self.store.claim_due_mail(now, now + self.lease_s, self.batch)
        if not rows:
            return report
        batch: list[Outgoing] = []
        errors: dict[str, str | None] = {}
        composed: dict[str, bytes] = {}
        for r in rows:
            try:
                data = self._compose(r)
            except DeliveryError as exc:
                errors[r["id"]] = str(exc)
                continue
            if r["message"] is None:
                composed[r["id"]] = data
            batch.append(Outgoing(r["id"], r["recipient"], data, int(r["attempts"])))
        if batch:
            try:
                results = self.relay.deliver(batch)
            except DeliveryError as exc:
                results = [str(exc)] * len(batch)
            except Exception as exc:  # a relay bug must not leave the batch leased for the whole lease
                log.exception("mail relay failed unexpectedly")
                results = [f"{type(exc).__name__}: {exc}"] * len(batch)
            errors.update(zip((item.id for item in batch), results))
        done = self.clock.wall()
        outcomes: list[tuple[str, str, int, float, str | None, bytes | None]] = []
        for r in rows:
            error, attempts, fresh = errors[r["id"]], int(r["attempts"]) + 1, composed.get(r["id"])
            if error is None:
                outcomes.append((r["id"], "sent", attempts, done, None, None))
                report.sent += 1
            elif attempts >= self.settings.max_attempts:
                outcomes.append((r["id"], "failed", attempts, done, error, fresh))
                report.failed += 1
                log.error("mail %s failed %d times, given up (dead letter): %s", r["id"], attempts, error)
            else:
                delay = self.backoff(attempts)
                outcomes.append((r["id"], "queued", attempts, done + delay, error, fresh))
                report.retried += 1
                log.warning("mail %s not delivered (attempt %d of %d), retrying in %.0f s: %s", r["id"], attempts,
                            self.settings.max_attempts, delay, error)
        self.store.record_mail_outcomes(outcomes, done)
        self.rounds += 1
        return report

    # ------------------------------------------------------------ thread

    def recover(self) -> int:
        """Release what a previous sender of this store claimed and never finished (it died mid-send): due now.
        Called by :meth:`start`; only the server sends, so no live sender holds a lease at that moment."""
        released = self.store.release_mail_leases(self.clock.wall())
        if released:
            log.warning("%d message(s) were being sent when the server stopped; sending them again", released)
        return released

    def start(self) -> None:
        if self.relay is None or self._thread is not None:
            return
        self.recover()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-mail", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current round (an SMTP session in progress ends within ``timeout_s``)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                report = self.run_once()
                progressed = bool(report.sent or report.retried or report.failed)
                due = self.store.next_mail_due()
            except Exception:
                log.exception("mail round failed; trying again in %.0f s", IDLE_S)
                progressed, due = False, None
            if due is None:
                wait = IDLE_S
            else:
                wait = min(IDLE_S, max(0.0, due - self.clock.wall()))
                if wait == 0.0 and not progressed:
                    wait = 0.05  # due but nothing moved (another sender holds it): do not spin
            self._wake.wait(wait)

