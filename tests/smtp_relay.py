"""A real SMTP server on loopback for the mail tests and bench: aiosmtpd on a free port, capturing messages.

It speaks real SMTP over TCP (EHLO, optional STARTTLS with a certificate of the tests' own CA, AUTH LOGIN/PLAIN
after TLS, MAIL/RCPT/DATA), so what server/mail.py does against it is what it does against a site's relay.
``refuse`` makes it answer DATA with a given reply (``"550 5.7.1 relaying denied"``, ``"451 4.3.0 try later"``)
until cleared; every accepted message is kept with its envelope, in arrival order.
"""

from __future__ import annotations

import email
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from doorkeep import pki


@dataclass(frozen=True)
class Captured:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes

    def message(self) -> EmailMessage:
        msg = email.message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


class _Handler:
    def __init__(self) -> None:
        self.messages: list[Captured] = []
        self.refuse: str | None = None
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        if self.refuse is not None:
            return self.refuse
        with self.lock:
            self.messages.append(Captured(envelope.mail_from, tuple(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 2.0.0 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA (doorkeep.pki, as the broker's) and a server certificate for 127.0.0.1: (CA file, server context)."""
    now = datetime.now(timezone.utc)
    ca = pki.init_ca(directory, "mailtest", now=now)
    cert, key = pki.issue(directory, "broker", now=now)  # SAN localhost and 127.0.0.1, serverAuth
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ca, ctx


class LoopbackSmtp:
    """aiosmtpd on 127.0.0.1:``port``. ``starttls``: a server context offered by STARTTLS (and required);
    ``users``: accounts for AUTH (only after TLS)."""

    def __init__(self, *, starttls: ssl.SSLContext | None = None, users: dict[str, str] | None = None,
                 port: int | None = None) -> None:
        self.handler = _Handler()
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.users = users or {}
        self.logins: list[str] = []
        kwargs: dict[str, Any] = {}
        if starttls is not None:
            kwargs.update(tls_context=starttls, require_starttls=True)
        if users:
            kwargs.update(authenticator=self._auth, auth_required=True, auth_require_tls=starttls is not None)
        self.controller = Controller(self.handler, hostname=self.host, port=self.port, **kwargs)

    def _auth(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if self.users.get(user) == password:
                self.logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    def start(self) -> LoopbackSmtp:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[Captured]:
        with self.handler.lock:
            return list(self.handler.messages)

    def refuse(self, reply: str | None) -> None:
        self.handler.refuse = reply


@pytest.fixture
def relay() -> Iterator[LoopbackSmtp]:
    """A plain (no TLS) loopback relay for one test; import it into a test module as a fixture."""
    smtp = LoopbackSmtp().start()
    yield smtp
    smtp.stop()
