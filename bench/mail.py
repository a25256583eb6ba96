"""Invitation e-mails: how many the desk can queue per second, and how many the sender delivers per second.

Run from the project root (needs the dev extras: aiosmtpd):

    .venv/bin/python bench/mail.py [--invitations N] [--dir DIR]

* **queue**: ``Invitations.invite`` for N visits, as registration calls it: the invitation's payload (the
  visit, its pass) committed to the store's durable queue; the message itself is composed by the sender;
* **deliver**: the same N invitations drained by ``MailQueue.run_once`` (one SMTP session and one store commit
  per batch of 50), each composed (text, HTML, the QR PNG, the ``.ics``) and sent to a real SMTP server on
  loopback (aiosmtpd, tests/smtp_relay.py), in clear and with STARTTLS (a certificate of a doorkeep.pki CA);
  then composing alone, and small ready-made messages through ``MailQueue.enqueue``, to tell the parts apart.

The store is a real one on disk (``--dir``, default a temporary directory). A benchmark reports; it does not
judge.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from doorkeep.clock import SystemClock  # noqa: E402
from doorkeep.config import InvitationSettings, SmtpSettings  # noqa: E402
from server.invitations import Invitations, SiteText, compose_invitation  # noqa: E402
from server.mail import MailQueue  # noqa: E402
from server.store import Store  # noqa: E402
from server.visitors import VisitRecord  # noqa: E402
from server.web.visitors import load_notice  # noqa: E402
from tests.smtp_relay import LoopbackSmtp, make_tls  # noqa: E402


def visit(i: int, now: float) -> VisitRecord:
    return VisitRecord(id=f"v-{i:012x}", name=f"Visitor Number{i}", company="Example Ltd", email=f"v{i}@example.org",
                       host="alice", host_name="Alice Archer", valid_from=now + 86400, valid_until=now + 86400 + 28800,
                       allowed_areas=("lobby",), escort_required=False, status="registered", badge_last4=None,
                       checked_in_at=None, checked_out_at=None, where=None, consent=None)


def fake_pass(v: VisitRecord) -> str:
    # the size of a real pass token (server/passes.py): visit id, window, key id and an Ed25519 signature
    return f"DKP1.{v.id}.{int(v.valid_from)}.{int(v.valid_until)}.k1." + "A" * 86


def drain(q: MailQueue, n: int) -> float:
    t = time.perf_counter()
    sent = 0
    while sent < n:
        report = q.run_once()
        if not report.sent and (report.retried or report.failed):
            raise SystemExit(f"delivery failed: {q.store.mail_records(status='queued', limit=1)}")
        sent += report.sent
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--invitations", type=int, default=300, help="messages per run (default 300)")
    ap.add_argument("--dir", type=Path, help="where the store goes (default: a temporary directory)")
    args = ap.parse_args()
    n = args.invitations
    print(f"{platform.node()} {platform.machine()} python {platform.python_version()}: {n} invitations")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        base = Path(tmp)
        relay = LoopbackSmtp().start()
        ca, ctx = make_tls(base / "pki")
        tls_relay = LoopbackSmtp(starttls=ctx).start()
        store = Store(base / "data")
        try:
            clock = SystemClock()
            plain = SmtpSettings(host="127.0.0.1", port=relay.port, security="none",
                                 from_addr="Reception <desk@example.com>", timeout_s=10.0)
            q = MailQueue(store, plain, clock)
            site = SiteText("Demo HQ", "Europe/London", InvitationSettings(address="1 Quay Street"), load_notice())
            inv = Invitations(q, store, site, pass_text=fake_pass)
            now = clock.wall()
            visits = [visit(i, now) for i in range(n)]

            t = time.perf_counter()
            for v in visits:
                assert inv.invite(v) is not None
            dt = time.perf_counter() - t
            print(f"queue (Invitations.invite: the payload committed to the durable queue): {n / dt:,.0f} "
                  f"invitations/s, {dt / n * 1000:.2f} ms each")
            dt = drain(q, n)
            print(f"deliver (the sender composes text+HTML+QR PNG+.ics, SMTP in clear, 50 per session): "
                  f"{n / dt:,.0f} messages/s ({len(relay.messages)} received, "
                  f"{len(relay.messages[0].data):,} bytes each)")

            t = time.perf_counter()
            for v in visits[:100]:
                compose_invitation(v, site, pass_text=fake_pass(v), sender=plain.from_addr, now=now,
                                   uid_domain="example.com")
            dt = (time.perf_counter() - t) / 100
            print(f"  of which composing one invitation: {dt * 1000:.1f} ms ({1 / dt:,.0f}/s per core)")
            t = time.perf_counter()
            for i in range(n):
                m = EmailMessage()
                m["To"] = f"v{i}@example.org"
                m["Subject"] = "x"
                m.set_content("body")
                q.enqueue(m, kind="test")
            dt_enqueue = time.perf_counter() - t
            dt = drain(q, n)
            print(f"small composed messages: enqueue {n / dt_enqueue:,.0f}/s ({dt_enqueue / n * 1000:.2f} ms, one "
                  f"commit each), deliver {n / dt:,.0f}/s (SMTP in clear)")

            tls = MailQueue(store, replace(plain, port=tls_relay.port, security="starttls", ca_file=ca), clock)
            tls_inv = Invitations(tls, store, site, pass_text=fake_pass)
            for v in visits:
                tls_inv.invite(v)
            dt = drain(tls, n)
            print(f"deliver (composed by the sender, SMTP with STARTTLS, 50 per session): {n / dt:,.0f} messages/s "
                  f"({len(tls_relay.messages)} received)")
        finally:
            store.close()
            relay.stop()
            tls_relay.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
