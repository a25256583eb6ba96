"""Invitations and host notices (server/invitations.py) from the visitor service, delivered to a real SMTP server.

Real parts: a ``Server`` bootstrapped on the demo site with its SQLite store (bus not started), the visitor
service (server/visitors.py) wired with :class:`Invitations`, the durable queue (server/mail.py) sending to
aiosmtpd on loopback (tests/smtp_relay.py), OpenCV's QR detector reading the PNG the visitor gets. The pass
text is a fake token here: the signed pass is server/passes.py's, wired by the server.
"""

from __future__ import annotations

import json
import re
import secrets
import zipfile
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, InvitationSettings, RetentionSettings, SmtpSettings, load_site_dir
from doorkeep.envelope import SnapshotKeys
from server import subjects
from server.app import Server, bootstrap
from server.invitations import Invitations, SiteText, calendar_entry, ics_fold, ics_text
from server.mail import MailQueue
from server.people import PeopleError
from server.retention import run_retention
from server.visitors import CheckIn, Registration, VisitRecord, Visitors
from server.web.visitors import load_notice
from tests.smtp_relay import LoopbackSmtp, relay  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
#: 2026-11-30 09:00 Europe/London (= UTC in winter), a Monday.
MONDAY_9 = 1_796_029_200.0


def fake_pass(visit: VisitRecord) -> str:
    return f"DKP1.{visit.id}.{int(visit.valid_until)}.fake-signature"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=MONDAY_9)


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = bootstrap(load_site_dir(DEMO), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate(), clock=clock)
    yield srv
    srv.store.close()


@pytest.fixture
def queue(server: Server, relay: LoopbackSmtp, clock: FakeClock) -> MailQueue:
    smtp = SmtpSettings(host="127.0.0.1", port=relay.port, security="none", from_addr="Demo HQ <desk@example.com>",
                        timeout_s=10.0)
    return MailQueue(server.store, smtp, clock)


@pytest.fixture
def visitors(server: Server, queue: MailQueue) -> Visitors:
    notice = load_notice()
    site = SiteText(server.site.name, server.site.timezone,
                    InvitationSettings(address="1 Quay Street, Leeds; Gate B", waiting_at="the lobby sofas"), notice)
    invitations = Invitations(queue, server.store, site, pass_text=fake_pass)
    return Visitors(server.directory, server.store, server.directory.clock, notice, audit=server.audit,
                    invitations=invitations)


def registration(**kw: object) -> Registration:
    base = dict(name="Grace Hopper", company="Navy Labs, Inc.", email="grace@example.org", host="alice",
                valid_from=datetime(2026, 11, 30, 8, 30), valid_until=datetime(2026, 11, 30, 17, 0),
                allowed_areas=("lobby",))
    base.update(kw)
    return Registration(**base)  # type: ignore[arg-type]


def unfolded_ics(data: bytes) -> dict[str, str]:
    text = data.decode("utf-8")
    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")  # CRLF only
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))  # folded at 75 octets
    lines = text.replace("\r\n ", "").split("\r\n")
    out: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            out.setdefault(name, value)
    return out


def decode_qr(png: bytes) -> str:
    """What a phone's camera reads off the invitation's QR image: OpenCV's classic detector, else the ArUco one
    (each misses a code now and then that the other reads; a full run once met such a visit id)."""
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    for detector in (cv2.QRCodeDetector(), cv2.QRCodeDetectorAruco()):
        text, _, _ = detector.detectAndDecode(img)
        if text:
            return str(text)
    return ""


def parts(msg: EmailMessage) -> dict[str, EmailMessage]:
    return {p.get_content_type(): p for p in msg.walk()}  # type: ignore[misc]


def test_registration_with_an_email_sends_an_invitation_with_text_html_qr_pass_and_calendar_entry(
        server: Server, visitors: Visitors, queue: MailQueue, relay: LoopbackSmtp) -> None:
    v, _ = visitors.register(registration(), actor="dex")
    assert visitors.mail_delivery(v.id, "invitation").status == "queued"  # type: ignore[union-attr]
    assert relay.messages == []  # registering sent nothing itself: the queue does
    assert queue.run_once().sent == 1
    delivery = visitors.mail_delivery(v.id, "invitation")
    assert delivery is not None and delivery.status == "sent" and delivery.recipient == "grace@example.org"

    [got] = relay.messages
    assert got.rcpt_tos == ("grace@example.org",)
    msg = got.message()
    assert msg["To"] == "Grace Hopper <grace@example.org>" and msg["Subject"] == "Your visit to Demo HQ: 30 Nov 2026"
    assert msg.get_content_type() == "multipart/mixed"
    p = parts(msg)
    assert {"multipart/alternative", "multipart/related", "text/plain", "text/html", "image/png",
            "text/calendar"} <= set(p)
    text = p["text/plain"].get_content()
    for needle in ("Monday 30 November 2026, 08:30 to 17:00 (Europe/London)", "1 Quay Street, Leeds; Gate B",
                   "Alice Archer", "a photo ID", fake_pass(v), load_notice().paragraphs[0],
                   f"version {load_notice().version}"):
        assert needle in text, needle
    html = p["text/html"].get_content()
    cid = p["image/png"]["Content-ID"].strip("<>")
    assert f'src="cid:{cid}"' in html and "Alice Archer" in html and "<script" not in html
    assert p["image/png"].get_content_disposition() == "inline"
    assert decode_qr(p["image/png"].get_content()) == fake_pass(v)  # the QR carries exactly the pass

    cal = p["text/calendar"]
    assert cal.get_filename() == "invitation.ics" and cal.get_param("method") == "PUBLISH"
    ics = unfolded_ics(cal.get_content().encode() if isinstance(cal.get_content(), str) else cal.get_content())
    assert ics["BEGIN"] == "VCALENDAR" and ics["VERSION"] == "2.0" and ics["PRODID"]
    assert ics["UID"] == f"{v.id}@example.com"
    assert ics["DTSTART"] == "20261130T083000Z" and ics["DTEND"] == "20261130T170000Z"  # UTC
    assert ics["DTSTAMP"] == "20261130T090000Z"
    assert ics["LOCATION"] == "1 Quay Street\\, Leeds\\; Gate B"  # RFC 5545 TEXT escaping
    assert ics["SUMMARY"] == "Visit to Demo HQ (Alice Archer)"

    assert server.audit is not None
    actions = [r["action"] for r in server.audit.records()]
    assert "visitor.invitation_queued" in actions
    assert all("Grace" not in json.dumps(r["details"]) for r in server.audit.records())


def test_no_email_no_invitation_and_a_dead_relay_never_blocks_registration(
        server: Server, visitors: Visitors, queue: MailQueue, relay: LoopbackSmtp, clock: FakeClock) -> None:
    v, _ = visitors.register(registration(email=""), actor="dex")
    assert visitors.mail_delivery(v.id, "invitation") is None
    relay.refuse("451 4.3.0 try again later")
    w, _ = visitors.register(registration(name="Ada Lovelace", email="ada@example.org"), actor="dex")
    assert queue.run_once().retried == 1
    d = visitors.mail_delivery(w.id, "invitation")
    assert d is not None and d.status == "queued" and d.attempts == 1 and "451" in (d.last_error or "")
    relay.refuse(None)
    clock.advance(queue.settings.retry_s)
    assert queue.run_once().sent == 1
    assert visitors.mail_delivery(w.id, "invitation").status == "sent"  # type: ignore[union-attr]


def test_check_in_notifies_the_host_by_mail_and_the_desk_sees_whether_it_went(
        server: Server, visitors: Visitors, queue: MailQueue, relay: LoopbackSmtp) -> None:
    assert server.people is not None
    assert server.people.set_email("alice", "alice@example.com", actor="ada")
    v, _ = visitors.register(registration(email=""), actor="dex")
    assert visitors.mail_delivery(v.id) is None  # not arrived yet
    visitors.check_in(v.id, CheckIn(load_notice().version, consent=True, photo_consent=False), actor="dex")
    assert visitors.mail_delivery(v.id).status == "queued"  # type: ignore[union-attr]
    assert queue.run_once().sent == 1
    d = visitors.mail_delivery(v.id)
    assert d is not None and d.status == "sent" and d.recipient == "alice@example.com"
    [got] = relay.messages
    msg = got.message()
    assert msg["To"] == "Alice Archer <alice@example.com>" and msg["Subject"] == "Your visitor Grace Hopper has arrived"
    text = parts(msg)["text/plain"].get_content()
    assert "Grace Hopper (Navy Labs, Inc.)" in text and "the lobby sofas" in text and "09:00" in text
    record = visitors.record(v.id)
    assert record.badge_last4 and record.badge_last4 not in msg.as_string()  # never the badge number

    # A host without an address: no notice, and the desk can say so (None).
    assert server.people.set_email("alice", "", actor="ada")
    w, _ = visitors.register(registration(name="Ada Lovelace", email=""), actor="dex")
    visitors.check_in(w.id, CheckIn(load_notice().version, consent=True, photo_consent=False), actor="dex")
    assert visitors.mail_delivery(w.id) is None


def test_a_person_email_is_validated_and_survives_nothing_it_should_not(server: Server) -> None:
    assert server.people is not None
    with pytest.raises(PeopleError, match="not an e-mail address"):
        server.people.set_email("alice", "alice at example", actor="ada")
    with pytest.raises(PeopleError, match="no person"):
        server.people.set_email("nobody", "n@example.com", actor="ada")
    assert server.people.set_email("alice", "alice@example.com", actor="ada")
    assert not server.people.set_email("alice", "alice@example.com", actor="ada")  # unchanged
    assert server.people.email("alice") == "alice@example.com"


def test_export_erasure_and_retention_cover_the_mail(tmp_path: Path, server: Server, visitors: Visitors,
                                                      queue: MailQueue, clock: FakeClock) -> None:
    assert server.people is not None
    server.people.set_email("alice", "alice@example.com", actor="ada")
    bundle = load_site_dir(DEMO)
    key = server.directory.key
    v, _ = visitors.register(registration(), actor="dex")
    visitors.check_in(v.id, CheckIn(load_notice().version, consent=True, photo_consent=False), actor="dex")
    queue.run_once()
    out = tmp_path / "export.zip"
    counts = subjects.export(bundle, server.store, key, v.id, out, server.audit, now=clock.wall())
    assert counts["mails"] == 2
    with zipfile.ZipFile(out) as z:
        mails = json.loads(z.read("mail.json"))
    assert sorted(m["kind"] for m in mails) == ["host_notice", "invitation"]
    assert all(m["status"] == "sent" and "message" not in m for m in mails)
    host_out = tmp_path / "host.zip"
    subjects.export(bundle, server.store, key, "alice", host_out, server.audit, now=clock.wall())
    with zipfile.ZipFile(host_out) as z:
        assert json.loads(z.read("profile.json"))["email"] == "alice@example.com"
        assert [m["kind"] for m in json.loads(z.read("mail.json"))] == ["host_notice"]

    # Retention: the visit's mail goes with the visit.
    w, _ = visitors.register(registration(name="Ada Lovelace", email="ada@example.org"), actor="dex")
    assert len(server.store.mail_records(about=w.id)) == 1
    visitors.check_out(v.id, actor="dex")
    clock.advance(40 * 86400.0)
    report = run_retention(server.store, RetentionSettings(), clock.wall(), None)
    assert v.id in report.visitor_ids and w.id in report.visitor_ids
    assert server.store.mail_records() == []

    # Erasure: mail to them and their address go.
    x, _ = visitors.register(registration(name="Lin", email="lin@example.org",
                                          valid_from=datetime(2027, 1, 11, 9), valid_until=datetime(2027, 1, 11, 12)),
                             actor="dex")
    assert server.store.mail_records(about=x.id)
    erased = subjects.erase(bundle, server.store, key, x.id, server.audit, now=clock.wall())
    assert erased["counts"]["mails"] == 1 and server.store.mail_records(about=x.id) == []
    erased = subjects.erase(bundle, server.store, key, "alice", server.audit, now=clock.wall())
    assert erased["counts"]["contacts"] == 1 and server.store.person_email("alice") is None


def test_ics_text_is_escaped_and_long_lines_fold_without_splitting_characters() -> None:
    assert ics_text("a,b;c\\d\nE\r\nF") == "a\\,b\\;c\\\\d\\nE\\nF"
    line = "DESCRIPTION:" + "é" * 80
    folded = ics_fold(line)
    assert all(len(part.encode()) <= 75 for part in folded.split("\r\n"))
    assert folded.replace("\r\n ", "") == line
    data = calendar_entry(uid="v-1@example.com", start=0.0, end=3600.0, stamp=0.0, summary="S, with; marks",
                          location="L", description="D")
    assert b"SUMMARY:S\\, with\\; marks\r\n" in data and b"DTSTART:19700101T000000Z\r\n" in data
    assert re.search(rb"DTEND:19700101T010000Z\r\n", data)


# ------------------------------------------------------------- CSV import and the API

EXPECTED = ("name,email,company,host,valid_from,valid_until,areas,escort\n"
            "Grace Hopper,grace@example.org,\"Navy Labs, Inc.\",alice,2026-12-07T09:00,2026-12-07 17:00,lobby,\n"
            "Ada Lovelace,,Analytical,Alice Archer,2026-12-07T09:00,2026-12-07T12:00,lobby;floor7,yes\n")


def test_a_csv_of_expected_visitors_registers_each_and_invites_those_with_an_address(
        server: Server, visitors: Visitors, queue: MailQueue, relay: LoopbackSmtp) -> None:
    from server.visitor_import import import_expected

    dry = import_expected(visitors, EXPECTED, "dex", dry_run=True)
    assert dry.errors == [] and dry.registered == [] and server.store.visitor_records() == []
    result = import_expected(visitors, EXPECTED, "dex")
    assert result.errors == [] and [v.name for v in result.registered] == ["Grace Hopper", "Ada Lovelace"]
    grace, ada = result.registered
    assert result.invitations == 1 and ada.host == "alice" and ada.escort_required and ada.allowed_areas == (
        "lobby", "floor7")
    assert grace.company == "Navy Labs, Inc." and grace.valid_from == 1_796_634_000.0  # 09:00 London = UTC
    assert queue.run_once().sent == 1 and relay.messages[0].rcpt_tos == ("grace@example.org",)


def test_a_csv_with_one_bad_row_registers_nobody_and_names_each_line(server: Server, visitors: Visitors) -> None:
    from server.visitor_import import import_expected

    bad = EXPECTED + ("Eve,eve@,X,nobody,2026-12-07T09:00,2026-12-07T10:00,lobby,\n"
                      "Mallory,,X,alice,tomorrow,2026-12-07T10:00,lobby,maybe\n")
    result = import_expected(visitors, bad, "dex")
    assert result.registered == [] and server.store.visitor_records() == []
    assert len(result.errors) == 2 and result.errors[0].startswith("line 4: ") and "e-mail" in result.errors[0]
    assert result.errors[1].startswith("line 5: ")
    assert import_expected(visitors, "name,host,when\nx,alice,now\n", "dex").errors == [
        "line 1: unknown column(s) when; missing column(s) valid_from, valid_until, areas (the columns are name, "
        "email, company, host, valid_from, valid_until, areas, escort)"]
    assert import_expected(visitors, "", "dex").errors and import_expected(visitors, "name,host,valid_from,"
                                                                           "valid_until,areas\n", "dex").errors
    huge = import_expected(visitors, "name,host,valid_from,valid_until,areas\n" + "x" * 140_000, "dex")
    assert len(huge.errors) == 1 and "not readable as CSV" in huge.errors[0]  # csv's field limit: a 422, not a 500


def test_the_desk_api_imports_shows_mail_state_and_sets_a_host_address(
        server: Server, queue: MailQueue, relay: LoopbackSmtp, clock: FakeClock) -> None:
    import warnings

    from argon2 import PasswordHasher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    from server.web.app import create_app

    server.mail = queue  # as bootstrap does for a site with [smtp]
    app = create_app(server, clock=clock, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    app.state.desk.operators.add("ada", "admin", "ada correct horse battery", actor="test")
    app.state.desk.operators.add("dex", "desk", "dex staple paper clip", actor="test")
    client = TestClient(app, raise_server_exceptions=False)

    def login(name: str, password: str) -> dict[str, str]:
        r = client.post("/api/v1/session", json={"name": name, "password": password})
        assert r.status_code == 200, r.text
        return {"X-CSRF-Token": r.json()["csrf_token"]}

    dex = login("dex", "dex staple paper clip")
    assert client.post("/api/v1/visitors/import", json={"csv": EXPECTED}).status_code == 403  # no CSRF token
    r = client.post("/api/v1/visitors/import", json={"csv": EXPECTED + "Eve,,X,nobody,x,y,lobby,\n"}, headers=dex)
    assert r.status_code == 422 and r.json()["detail"]["errors"][0].startswith("line 4: ")
    r = client.put("/api/v1/people/alice/email", json={"email": "alice@example.com"}, headers=dex)
    assert r.status_code == 403  # only an admin sets addresses
    r = client.post("/api/v1/visitors/import", json={"csv": EXPECTED}, headers=dex)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["registered"] == 2 and body["invitations"] == 1 and [v["invited"] for v in body["visitors"]] == [
        True, False]
    vid = body["visitors"][0]["id"]
    assert queue.run_once().sent == 1
    mail = client.get(f"/api/v1/visitors/{vid}/mail").json()
    assert mail["invitation"]["status"] == "sent" and mail["host_notice"] is None

    client.cookies.clear()
    ada = login("ada", "ada correct horse battery")
    r = client.put("/api/v1/people/alice/email", json={"email": "alice@example.com"}, headers=ada)
    assert r.status_code == 200 and r.json() == {"id": "alice", "email": "alice@example.com", "changed": True}
    assert client.put("/api/v1/people/alice/email", json={"email": "nope"}, headers=ada).status_code == 422
    assert client.put("/api/v1/people/ghost/email", json={"email": "g@example.com"}, headers=ada).status_code == 404
    assert client.get("/api/v1/visitors/v-0123456789ab/mail").status_code == 404
    assert server.audit is not None and "person.email" in [r["action"] for r in server.audit.records()]


def test_an_invitation_queued_before_a_restart_is_composed_and_sent_after_it_once(
        tmp_path: Path, server: Server, visitors: Visitors, relay: LoopbackSmtp, clock: FakeClock) -> None:
    down = SmtpSettings(host="127.0.0.1", port=1, security="none", from_addr="Demo HQ <desk@example.com>")
    assert visitors.invitations is not None
    visitors.invitations.mail.settings = down  # the relay address at the time: nothing listens there
    visitors.invitations.mail.relay = MailQueue(server.store, down, clock).relay
    v, _ = visitors.register(registration(), actor="dex")
    assert visitors.invitations.mail.run_once().retried == 1
    server.store.close()

    from server.store import Store
    store = Store(tmp_path / "data")  # the restarted server, with the relay reachable
    try:
        queue = MailQueue(store, SmtpSettings(host="127.0.0.1", port=relay.port, security="none",
                                              from_addr="Demo HQ <desk@example.com>"), clock)
        Invitations(queue, store, visitors.invitations.site, pass_text=fake_pass)  # registers its renderer
        clock.advance(60.0)
        assert queue.run_once().sent == 1 and queue.run_once().sent == 0
        [got] = relay.messages
        png = parts(got.message())["image/png"].get_content()
        assert decode_qr(png) == fake_pass(v)
    finally:
        store.close()
        server.store = Store(tmp_path / "data")  # for the fixture's close


def test_invitations_for_wires_the_servers_queue_and_passes_and_invites_without_a_pass_it_cannot_issue(
        server: Server, queue: MailQueue, relay: LoopbackSmtp) -> None:
    from server.invitations import invitations_for

    notice = load_notice()
    assert invitations_for(server, notice) is None  # the demo site has no [smtp]

    class FakePasses:
        enabled = True
        fail = False

        def issue_pass(self, visitor_id: str, *, actor: str) -> object:
            if self.fail:
                raise ValueError("the site has no pass key")
            return type("Issued", (), {"token": f"DKP1.{visitor_id}.signed"})()

    passes = FakePasses()
    server.mail, server.passes = queue, passes  # type: ignore[assignment]
    inv = invitations_for(server, notice)
    assert inv is not None and inv.site.name == "Demo HQ" and inv.site.timezone == "Europe/London"
    desk = Visitors(server.directory, server.store, server.directory.clock, notice, invitations=inv)
    v, _ = desk.register(registration(), actor="dex")
    passes.fail = True
    w, _ = desk.register(registration(name="Ada Lovelace", email="ada@example.org"), actor="dex")
    assert queue.run_once().sent == 2
    by_to = {m.rcpt_tos[0]: m.message() for m in relay.messages}
    assert decode_qr(parts(by_to["grace@example.org"])["image/png"].get_content()) == f"DKP1.{v.id}.signed"
    without = by_to["ada@example.org"]
    assert "image/png" not in parts(without) and "Reception will give you" in parts(without)["text/plain"].get_content()


def test_a_name_that_looks_like_an_address_stays_a_name(server: Server, visitors: Visitors, queue: MailQueue,
                                                         relay: LoopbackSmtp) -> None:
    assert server.people is not None
    server.people.set_email("alice", "alice@example.com", actor="ada")
    odd = 'Mallory, "the" <boss@evil.example>'
    v, _ = visitors.register(registration(name=odd, email="mallory@example.org"), actor="dex")
    visitors.check_in(v.id, CheckIn(load_notice().version, consent=True, photo_consent=False), actor="dex")
    assert queue.run_once().sent == 2
    got = {m.rcpt_tos: m.message() for m in relay.messages}
    assert set(got) == {("mallory@example.org",), ("alice@example.com",)}
    invitation = got[("mallory@example.org",)]
    assert [a.addr_spec for a in invitation["To"].addresses] == ["mallory@example.org"]
    assert invitation["To"].addresses[0].display_name == odd
    assert [a.addr_spec for a in got[("alice@example.com",)]["To"].addresses] == ["alice@example.com"]


def test_a_site_with_smtp_gets_a_mail_queue_at_bootstrap_and_the_desk_invites_through_it(
        tmp_path: Path, relay: LoopbackSmtp, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from doorkeep.errors import ConfigError
    from server.web.app import create_app

    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    text = (site / "site.toml").read_text()
    (site / "site.toml").write_text(text + f'\n[smtp]\nhost = "127.0.0.1"\nport = {relay.port}\nsecurity = "none"\n'
                                    'from = "Demo HQ <desk@example.com>"\n[invitations]\naddress = "Gate B"\n')

    def boot(data: str) -> Server:
        return bootstrap(load_site_dir(site), tmp_path / data, BrokerConfig("mqtt://127.0.0.1:9"),
                         key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                         snapshot_keys=SnapshotKeys.generate(), clock=clock)

    srv = boot("data")
    try:
        assert srv.mail is not None and srv.mail.enabled
        app = create_app(srv, clock=clock)
        desk = app.state.desk.visitors
        assert desk.invitations is not None and desk.invitations.site.settings.address == "Gate B"
        v, _ = desk.register(registration(), actor="dex")
        assert srv.mail.run_once().sent == 1
        assert "Gate B" in parts(relay.messages[0].message())["text/plain"].get_content()
    finally:
        srv.store.close()

    # A relay account whose password the server cannot find stops the start, naming the key and the fix.
    (site / "site.toml").write_text(text + '\n[smtp]\nhost = "127.0.0.1"\nusername = "door"\n'
                                    'password_env = "DK_TEST_SMTP_PW"\nfrom = "desk@example.com"\n')
    monkeypatch.delenv("DK_TEST_SMTP_PW", raising=False)
    with pytest.raises(ConfigError) as exc:
        boot("data2")
    assert exc.value.key == "smtp.password_env" and "DK_TEST_SMTP_PW" in exc.value.fix
    assert exc.value.file == str(site / "site.toml")
