"""The outbound mail queue (server/mail.py, server/store_mail.py) against a real SMTP server on loopback.

Real parts: aiosmtpd speaking SMTP over TCP on 127.0.0.1 (tests/smtp_relay.py), STARTTLS with a certificate of
a CA made by doorkeep.pki, smtplib, the SQLite store on disk (closed and reopened for the restart cases). Time
for due dates and backoff is a FakeClock driven by the test through ``MailQueue.run_once``; the one threaded
test waits on a condition with a deadline.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.clock import FakeClock, SystemClock
from doorkeep.config import SmtpSettings, load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.sites import DEMO_SITE
from server.mail import MailNotConfigured, MailQueue, load_password
from server.store import Store
from tests.conftest import wait_until
from tests.smtp_relay import LoopbackSmtp, free_port, make_tls, relay  # noqa: F401 - fixture

T0 = 1_796_029_200.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    yield s
    s.close()


def settings(port: int, **kw: object) -> SmtpSettings:
    base = SmtpSettings(host="127.0.0.1", port=port, security="none", from_addr="Reception <desk@example.com>",
                        timeout_s=10.0, max_attempts=4, retry_s=30.0, max_retry_s=100.0)
    return replace(base, **kw)  # type: ignore[arg-type]


def note(to: str, subject: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content(f"body of {subject}")
    return msg


def statuses(store: Store) -> dict[str, str]:
    return {r["subject"]: r["status"] for r in store.mail_records()}


def test_a_queued_message_is_delivered_once_with_its_headers_and_its_body_is_dropped(
        relay: LoopbackSmtp, store: Store) -> None:
    clock = FakeClock(wall=T0)
    q = MailQueue(store, settings(relay.port), clock)
    mid = q.enqueue(note("Grace <grace@example.org>"), kind="invitation", about="v-1")
    assert statuses(store) == {"hello": "queued"} and store.mail_message(mid) is not None
    assert q.run_once().sent == 1
    assert q.run_once().sent == 0  # nothing left: sent once
    [got] = relay.messages
    assert got.mail_from == "desk@example.com" and got.rcpt_tos == ("grace@example.org",)
    msg = got.message()
    assert msg["Message-ID"] == f"<{mid}@example.com>" and msg["From"] == "Reception <desk@example.com>"
    assert msg["Date"] and msg.get_content().strip() == "body of hello"
    [row] = store.mail_records(about="v-1")
    assert row["status"] == "sent" and row["attempts"] == 1 and row["sent_at"] == T0
    assert store.mail_message(mid) is None  # the body (personal data) is not kept once sent


def test_starttls_with_login_against_a_relay_whose_certificate_the_site_ca_signed(tmp_path: Path, store: Store) -> None:
    ca, ctx = make_tls(tmp_path / "pki")
    smtp = LoopbackSmtp(starttls=ctx, users={"door": "s3cret pass"}).start()
    try:
        pw = tmp_path / "smtp.pw"
        pw.write_text("s3cret pass\n")
        pw.chmod(0o600)
        s = settings(smtp.port, security="starttls", username="door", password_file=pw, ca_file=ca)
        q = MailQueue(store, s, FakeClock(wall=T0))
        q.enqueue(note("a@example.org"), kind="test")
        assert q.run_once().sent == 1
        assert smtp.logins == ["door"] and len(smtp.messages) == 1

        # Without the site CA the relay's certificate is not trusted: retried, never sent in clear.
        q2 = MailQueue(store, replace(s, ca_file=None), FakeClock(wall=T0))
        q2.enqueue(note("b@example.org", "untrusted"), kind="test")
        assert q2.run_once().retried == 1
        [row] = store.mail_records(status="queued")
        assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"] and len(smtp.messages) == 1
    finally:
        smtp.stop()


def test_a_relay_that_refuses_is_retried_with_backoff_then_dead_lettered(relay: LoopbackSmtp, store: Store) -> None:
    clock = FakeClock(wall=T0)
    q = MailQueue(store, settings(relay.port, max_attempts=3), clock)
    relay.refuse("550 5.7.1 relaying denied")
    mid = q.enqueue(note("x@example.org"), kind="invitation")
    assert q.run_once().retried == 1
    [row] = store.mail_records()
    assert row["attempts"] == 1 and "550 5.7.1 relaying denied" in row["last_error"]
    assert row["next_attempt_at"] == T0 + 30.0  # retry_s after the first failure
    clock.advance(29.0)
    assert q.run_once().retried == 0  # not due yet
    clock.advance(1.0)
    assert q.run_once().retried == 1
    assert store.mail_records()[0]["next_attempt_at"] == T0 + 30.0 + 60.0  # doubled
    clock.advance(60.0)
    assert q.run_once().failed == 1  # third attempt: dead letter
    [row] = store.mail_records()
    assert row["status"] == "failed" and row["attempts"] == 3
    assert store.mail_message(mid) is not None  # kept for the admin to see, until retention
    relay.refuse(None)
    clock.advance(10_000.0)
    assert q.run_once().sent == 0 and relay.messages == []


def test_backoff_doubles_up_to_the_cap() -> None:
    q = MailQueue.__new__(MailQueue)
    q.settings = settings(25, retry_s=30.0, max_retry_s=100.0)
    assert [q.backoff(n) for n in (1, 2, 3, 4)] == [30.0, 60.0, 100.0, 100.0]


def test_a_relay_that_is_down_is_retried_and_delivers_when_it_is_back(store: Store) -> None:
    port = free_port()  # nothing listens here yet
    clock = FakeClock(wall=T0)
    q = MailQueue(store, settings(port), clock)
    q.enqueue(note("x@example.org", "while down"), kind="test")
    assert q.run_once().retried == 1
    assert "ConnectionRefusedError" in store.mail_records()[0]["last_error"]
    smtp = LoopbackSmtp(port=port).start()
    try:
        clock.advance(30.0)
        assert q.run_once().sent == 1
        assert [m.message()["Subject"] for m in smtp.messages] == ["while down"]
    finally:
        smtp.stop()


def test_pending_mail_survives_a_restart_and_each_message_is_sent_once(tmp_path: Path, relay: LoopbackSmtp) -> None:
    data = tmp_path / "data"
    clock = FakeClock(wall=T0)
    first = Store(data)
    q = MailQueue(first, settings(free_port()), clock)  # relay unreachable before the restart
    ids = [q.enqueue(note(f"p{i}@example.org", f"m{i}"), kind="invitation", about=f"v-{i}") for i in range(3)]
    assert q.run_once().retried == 3
    # A sender that died mid-send: its claim (lease) on a fourth message outlives the process.
    late = q.enqueue(note("p3@example.org", "m3"), kind="invitation")
    assert [r["id"] for r in first.claim_due_mail(clock.wall(), clock.wall() + 120.0, 10)] == [late]
    first.close()

    second = Store(data)  # the server restarts with a working relay
    try:
        q2 = MailQueue(second, settings(relay.port), clock)
        clock.advance(30.0)
        assert q2.run_once().sent == 3  # the leased one waits for its lease ...
        assert q2.recover() == 1  # ... until the restarted server releases it (start() does)
        assert q2.run_once().sent == 1
        clock.advance(100_000.0)
        assert q2.run_once().sent == 0
        got = sorted(m.message()["Message-ID"] for m in relay.messages)
        assert got == sorted(f"<{i}@example.com>" for i in [*ids, late])  # each once
        assert second.mail_counts() == {"queued": 0, "sent": 4, "failed": 0}
    finally:
        second.close()


def test_enqueue_never_waits_on_a_relay_that_hangs(store: Store) -> None:
    """A relay that accepts the connection and never answers: the sender thread waits out its timeout,
    while the desk's enqueues return at once."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    accepted = threading.Event()
    conns: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                conns.append(hung.accept()[0])
                accepted.set()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    q = MailQueue(store, settings(hung.getsockname()[1], timeout_s=3.0), SystemClock())
    q.start()
    try:
        q.enqueue(note("first@example.org"), kind="test")
        assert accepted.wait(5.0)  # the sender is now inside the SMTP session, waiting for a greeting
        t = time.perf_counter()
        for i in range(20):
            q.enqueue(note(f"n{i}@example.org", f"n{i}"), kind="test")
        elapsed = time.perf_counter() - t
        assert elapsed < 1.0, f"20 enqueues took {elapsed:.2f} s while the relay hung"
        assert store.mail_counts()["queued"] == 21
    finally:
        for c in list(conns):  # the relay hangs up: the session in progress ends at once
            c.close()
        q.stop(timeout=10.0)
        hung.shutdown(socket.SHUT_RDWR)
        hung.close()


def test_the_sender_thread_delivers_what_is_enqueued(relay: LoopbackSmtp, store: Store) -> None:
    q = MailQueue(store, settings(relay.port), SystemClock())
    q.start()
    try:
        for i in range(5):
            q.enqueue(note(f"t{i}@example.org", f"t{i}"), kind="test")
        assert wait_until(lambda: len(relay.messages) == 5, timeout=10.0)
        assert wait_until(lambda: store.mail_counts()["sent"] == 5, timeout=10.0)
    finally:
        q.stop()
    assert sorted(m.message()["Subject"] for m in relay.messages) == [f"t{i}" for i in range(5)]


def test_enqueue_refuses_without_a_relay_or_a_recipient(store: Store, relay: LoopbackSmtp) -> None:
    off = MailQueue(store, SmtpSettings(), FakeClock())
    assert not off.enabled
    with pytest.raises(MailNotConfigured):
        off.enqueue(note("a@example.org"), kind="test")
    q = MailQueue(store, settings(relay.port), FakeClock())
    with pytest.raises(ValueError, match="recipient"):
        q.enqueue(EmailMessage(), kind="test")
    assert store.mail_counts()["queued"] == 0


def test_password_from_the_environment_or_a_private_file_with_errors_naming_the_key(tmp_path: Path) -> None:
    s = settings(25, username="door", password_env="DK_SMTP_PW")
    assert load_password(s, {"DK_SMTP_PW": "pw1"}) == "pw1"
    with pytest.raises(ConfigError) as exc:
        load_password(s, {})
    assert exc.value.key == "smtp.password_env" and "DK_SMTP_PW" in str(exc.value)
    pw = tmp_path / "smtp.pw"
    pw.write_text("pw2\n")
    pw.chmod(0o644)
    f = settings(25, username="door", password_file=pw)
    with pytest.raises(ConfigError) as exc:
        load_password(f)
    assert exc.value.key == "smtp.password_file" and f"chmod 600 {pw}" in exc.value.fix
    pw.chmod(0o600)
    assert load_password(f) == "pw2"


def test_smtp_table_in_site_toml_is_checked_with_file_key_and_fix(tmp_path: Path) -> None:
    import shutil
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    text = (site / "site.toml").read_text()
    (site / "site.toml").write_text(text + '\n[smtp]\nhost = "mail.example.com"\nusername = "door"\n'
                                    'security = "none"\nfrom = "not an address"\nport = 70000\n')
    with pytest.raises(ConfigErrors) as exc:
        load_site_dir(site)
    found = {e.key: e for e in exc.value.errors}
    assert {"smtp.username", "smtp.security", "smtp.from", "smtp.port"} <= set(found)
    assert all(e.file.endswith("site.toml") and e.fix for e in found.values())
    (site / "keys").mkdir(exist_ok=True)
    (site / "keys" / "smtp.pw").write_text("pw")
    os.chmod(site / "keys" / "smtp.pw", 0o600)
    (site / "site.toml").write_text(text + '\n[smtp]\nhost = "mail.example.com"\nusername = "door"\n'
                                    'password_file = "keys/smtp.pw"\nfrom = "Desk <desk@example.com>"\n'
                                    '[invitations]\naddress = "1 Quay St"\n')
    bundle = load_site_dir(site)
    assert bundle.smtp.enabled and bundle.smtp.port == 587 and bundle.smtp.security == "starttls"
    assert bundle.smtp.password_file == site / "keys" / "smtp.pw" and bundle.invitations.address == "1 Quay St"


def test_a_payload_is_composed_by_the_sender_once_and_one_it_cannot_compose_is_dead_lettered(
        relay: LoopbackSmtp, store: Store) -> None:
    clock = FakeClock(wall=T0)
    q = MailQueue(store, settings(relay.port, max_attempts=2), clock)
    composed: list[dict[str, object]] = []

    def compose(payload: dict[str, object]) -> EmailMessage:
        composed.append(payload)
        if payload.get("broken"):
            raise KeyError("name")
        return note(str(payload["to"]), str(payload["subject"]))

    ok = q.enqueue_payload("invitation", {"to": "a@example.org", "subject": "composed"}, recipient="a@example.org",
                           subject="composed")
    orphan = q.enqueue_payload("test", {"x": 1}, recipient="b@example.org", subject="no renderer")
    bad = q.enqueue_payload("host_notice", {"broken": True}, recipient="c@example.org", subject="broken")
    assert store.mail_message(ok) is None  # nothing composed by the caller
    q.renderer("invitation", compose)
    q.renderer("host_notice", compose)
    report = q.run_once()
    assert (report.sent, report.retried) == (1, 2)
    [got] = relay.messages
    assert got.message()["Subject"] == "composed" and got.message()["Message-ID"] == f"<{ok}@example.com>"
    errors = {r["id"]: r["last_error"] for r in store.mail_records(status="queued")}
    assert "nothing registered its renderer" in errors[orphan] and "KeyError" in errors[bad]
    clock.advance(30.0)
    assert q.run_once().failed == 2 and store.mail_counts() == {"queued": 0, "sent": 1, "failed": 2}
    assert len(composed) == 3  # the good one once; the broken one at each of its two attempts

    relay.refuse("451 4.3.0 try again later")  # composed, refused: the retry sends the same bytes, not recomposed
    again = q.enqueue_payload("invitation", {"to": "d@example.org", "subject": "retried"}, recipient="d@example.org",
                              subject="retried")
    assert q.run_once().retried == 1 and store.mail_message(again) is not None
    relay.refuse(None)
    clock.advance(30.0)
    assert q.run_once().sent == 1 and len(composed) == 4
    assert relay.messages[-1].message()["Subject"] == "retried" and store.mail_message(again) is None
