"""Invitation e-mails before a visit and host notices on arrival, queued through server/mail.py (issue 17).

An invitation tells the visitor what they need to arrive without a phone call: where and when, who their host
is, what to bring, the privacy notice the desk will show them (so they can read it beforehand), their visitor
pass as a QR code (a PNG shown inline, with the pass text under it for a reader that cannot scan) and an
``.ics`` calendar entry (RFC 5545) to put the visit in their calendar. The message is ``multipart/mixed``:
``multipart/alternative`` (plain text, then HTML with the QR in ``multipart/related``) and the ``.ics``.

The pass itself is not made here: ``pass_text(visit) -> str`` is given by whoever wires the server
(server/passes.py signs it), so this module neither knows the token format nor holds its key.

A host notice tells the visit's host, by e-mail, that their visitor has arrived and where they are waiting;
:meth:`Invitations.delivery` says whether it (or the invitation) is queued, sent or failed, for the desk.
Hosts' addresses are the people store's contacts (server/store_mail.py ``person_contacts``).
"""

from __future__ import annotations

import html
import struct
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import EmailMessage
from email.headerregistry import Address
from typing import Any, Callable
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import segno

from doorkeep.config import InvitationSettings
from server.mail import MailError, MailQueue
from server.store import Store
from server.visitors import Notice, VisitRecord

log = logging.getLogger("doorkeep.server.invitations")

#: The calendar entry's product id (RFC 5545 PRODID).
PRODID = "-//doorkeep//visitor invitation//EN"
#: The Content-ID of the inline QR image the HTML part shows.
QR_CID_PREFIX = "pass-qr"


@dataclass(frozen=True)
class Delivery:
    """Where an invitation or host notice is (the desk shows it): queued, sent or failed."""

    id: str
    kind: str
    status: str
    recipient: str
    attempts: int
    queued_at: float
    sent_at: float | None
    last_error: str | None


# ----------------------------------------------------------- calendar


def ics_text(value: str) -> str:
    """RFC 5545 TEXT escaping (3.3.11): backslash, semicolon, comma and line breaks."""
    return (value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n"))


def ics_fold(line: str) -> str:
    """Fold a content line at 75 octets (RFC 5545 3.1), never inside a UTF-8 sequence."""
    out, current, size = [], "", 0
    for ch in line:
        n = len(ch.encode("utf-8"))
        if size + n > 75:
            out.append(current)
            current, size = " ", 1
        current += ch
        size += n
    out.append(current)
    return "\r\n".join(out)


def ics_time(t: float) -> str:
    """A UTC DATE-TIME (``20261207T090000Z``)."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def calendar_entry(*, uid: str, start: float, end: float, stamp: float, summary: str, location: str,
                   description: str) -> bytes:
    """One VEVENT in a VCALENDAR (METHOD:PUBLISH: an entry to add, not a meeting request to answer)."""
    lines = ["BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:{PRODID}", "CALSCALE:GREGORIAN", "METHOD:PUBLISH",
             "BEGIN:VEVENT", f"UID:{ics_text(uid)}", f"DTSTAMP:{ics_time(stamp)}", f"DTSTART:{ics_time(start)}",
             f"DTEND:{ics_time(end)}", f"SUMMARY:{ics_text(summary)}", f"LOCATION:{ics_text(location)}",
             f"DESCRIPTION:{ics_text(description)}", "TRANSP:OPAQUE", "END:VEVENT", "END:VCALENDAR"]
    return ("\r\n".join(ics_fold(line) for line in lines) + "\r\n").encode("utf-8")


# ---------------------------------------------------------------- QR


def qr_png(text: str, *, scale: int = 8) -> bytes:
    """The pass as a QR code PNG: error correction M (a scuffed print or a cracked screen still reads), a
    quiet zone of 4 modules, ``scale`` pixels per module (large enough for a door camera at arm's length).

    segno makes the symbol (with the mask the standard's penalty rules pick); the PNG is written by OpenCV from
    segno's module matrix, a tenth of the time of segno's pure-Python PNG writer (the sender composes each
    invitation: bench/mail.py)."""
    qr = segno.make_qr(text, error="m", boost_error=False)
    modules = np.pad(np.array(qr.matrix, dtype=np.uint8), 4)  # 1 = dark; the quiet zone light
    img = ((1 - modules) * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    ok, png = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, 6])  # 1-bit, ~0.7 KB
    if not ok:  # pragma: no cover - OpenCV always encodes a grey image
        raise ValueError("the QR image could not be encoded")
    return bytes(png.tobytes())


# ------------------------------------------------------------ compose


def _when(visit: VisitRecord, tz: ZoneInfo) -> str:
    start = datetime.fromtimestamp(visit.valid_from, tz)
    end = datetime.fromtimestamp(visit.valid_until, tz)
    day = f"{start:%A} {start.day} {start:%B %Y}"
    if start.date() == end.date():
        return f"{day}, {start:%H:%M} to {end:%H:%M} ({tz.key})"
    return f"{day} {start:%H:%M} to {end:%A} {end.day} {end:%B %Y} {end:%H:%M} ({tz.key})"


def _address(name: str, email: str) -> Address:
    """A recipient as a structured address: the name quoted or encoded by the e-mail policy itself, so a name
    holding ``"``, ``,`` or ``<x@y>`` stays a name and never becomes (or hides) an address."""
    local, _, domain = email.rpartition("@")
    return Address(display_name=_oneline(name), username=local, domain=domain)


def _oneline(value: str) -> str:
    """A header-safe value: no line breaks (names are cleaned at registration; this is the last guard)."""
    return " ".join(value.split())


@dataclass(frozen=True)
class SiteText:
    """What every message of a site says about the site."""

    name: str
    timezone: str
    settings: InvitationSettings
    notice: Notice

    @property
    def where(self) -> str:
        return self.settings.address or self.name


def invitation_subject(visit: VisitRecord, site: SiteText) -> str:
    return _oneline(f"Your visit to {site.name}: {datetime.fromtimestamp(visit.valid_from, ZoneInfo(site.timezone)):%d %b %Y}")


#: The visit's fields an invitation payload keeps (what the message says about the visit, nothing more).
PAYLOAD_FIELDS = ("id", "name", "company", "email", "host", "host_name", "valid_from", "valid_until",
                  "escort_required")


def visit_payload(visit: VisitRecord, pass_text: str | None, now: float) -> dict[str, Any]:
    return {**{k: getattr(visit, k) for k in PAYLOAD_FIELDS}, "pass": pass_text, "stamp": now}


def payload_visit(payload: dict[str, Any]) -> VisitRecord:
    """The visit as the payload recorded it (enough for the message; the rest left empty)."""
    return VisitRecord(id=str(payload["id"]), name=str(payload["name"]), company=str(payload["company"]),
                       email=str(payload["email"]), host=str(payload["host"]), host_name=str(payload["host_name"]),
                       valid_from=float(payload["valid_from"]), valid_until=float(payload["valid_until"]),
                       allowed_areas=(), escort_required=bool(payload["escort_required"]), status="registered",
                       badge_last4=None, checked_in_at=None, checked_out_at=None, where=None, consent=None)


def compose_invitation(visit: VisitRecord, site: SiteText, *, pass_text: str | None, sender: str, now: float,
                       uid_domain: str) -> EmailMessage:
    """The invitation e-mail for ``visit`` (which must have an e-mail address)."""
    tz = ZoneInfo(site.timezone)
    when = _when(visit, tz)
    host = visit.host_name
    subject = invitation_subject(visit, site)
    escort = ("Your host or someone they name will accompany you in the building."
              if visit.escort_required else "")
    pass_lines = ([f"Your visitor pass: show the QR code in this e-mail (on your phone or printed) at reception "
                   f"or at the door's camera. If it cannot be scanned, give this code: {pass_text}"]
                  if pass_text else ["Reception will give you your visitor badge when you arrive."])
    text = "\n\n".join(p for p in [
        f"Hello {visit.name},",
        f"You are expected at {site.name}.",
        f"When: {when}\nWhere: {site.where}\nYour host: {host}" + (f"\nCompany: {visit.company}" if visit.company
                                                                  else ""),
        f"Please bring: {site.settings.bring}.",
        escort,
        *pass_lines,
        "A calendar entry for the visit is attached (invitation.ics).",
        f"Privacy notice (version {site.notice.version}), which reception will ask you to acknowledge:",
        site.notice.text,
    ] if p)
    e = html.escape
    qr_cid = f"{QR_CID_PREFIX}-{visit.id}@{uid_domain}"
    png = qr_png(pass_text) if pass_text else b""
    side = struct.unpack(">I", png[16:20])[0] if png else 0  # the IHDR width: shown at its own size, never blurred
    pass_html = (f'<h2>Your visitor pass</h2><p>Show this code at reception or to the door\'s camera.</p>'
                 f'<p><img src="cid:{e(qr_cid)}" alt="Visitor pass QR code" width="{side}" height="{side}"></p>'
                 f'<p>If it cannot be scanned, give this code: <code>{e(pass_text)}</code></p>'
                 if pass_text else "<p>Reception will give you your visitor badge when you arrive.</p>")
    notice_html = "".join(f"<p>{e(p)}</p>" for p in site.notice.paragraphs)
    body_html = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(subject)}</title></head>'
        f'<body><p>Hello {e(visit.name)},</p><p>You are expected at {e(site.name)}.</p>'
        f'<table role="presentation"><tr><th scope="row" align="left">When</th><td>{e(when)}</td></tr>'
        f'<tr><th scope="row" align="left">Where</th><td>{e(site.where)}</td></tr>'
        f'<tr><th scope="row" align="left">Your host</th><td>{e(host)}</td></tr></table>'
        f'<p>Please bring: {e(site.settings.bring)}.</p>' + (f"<p>{e(escort)}</p>" if escort else "")
        + pass_html
        + '<p>A calendar entry for the visit is attached (invitation.ics).</p>'
        f'<h2>Privacy notice</h2><p><small>Version {e(site.notice.version)}</small></p>{notice_html}</body></html>')
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = _address(visit.name, visit.email)
    msg.set_content(text)
    msg.add_alternative(body_html, subtype="html")
    if pass_text:
        html_part = msg.get_payload()[1]
        html_part.add_related(png, "image", "png", cid=f"<{qr_cid}>", filename="visitor-pass.png",
                              disposition="inline")
    description = f"Host: {host}. Bring: {site.settings.bring}." + (f" Pass code: {pass_text}" if pass_text else "")
    ics = calendar_entry(uid=f"{visit.id}@{uid_domain}", start=visit.valid_from, end=visit.valid_until, stamp=now,
                         summary=f"Visit to {site.name} ({host})", location=site.where, description=description)
    msg.add_attachment(ics, "text", "calendar", filename="invitation.ics", params={"method": "PUBLISH"})
    return msg


def compose_host_notice(visit: VisitRecord, host_email: str, site: SiteText, *, waiting_at: str, sender: str,
                        now: float) -> EmailMessage:
    """The host's notice that ``visit``'s visitor has checked in and where they wait (no badge number)."""
    tz = ZoneInfo(site.timezone)
    arrived = datetime.fromtimestamp(visit.checked_in_at or now, tz)
    who = visit.name + (f" ({visit.company})" if visit.company else "")
    msg = EmailMessage()
    msg["Subject"] = _oneline(f"Your visitor {visit.name} has arrived")
    msg["From"] = sender
    msg["To"] = _address(visit.host_name, host_email)
    msg.set_content(f"Hello {visit.host_name},\n\nYour visitor {who} checked in at {arrived:%H:%M} "
                    f"({tz.key}) and is waiting at {waiting_at}, {site.name}.\n"
                    + ("\nThey need an escort in the building.\n" if visit.escort_required else ""))
    e = html.escape
    msg.add_alternative(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Your visitor has arrived</title></head>'
        f'<body><p>Hello {e(visit.host_name)},</p><p>Your visitor <strong>{e(who)}</strong> checked in at '
        f'{arrived:%H:%M} ({e(tz.key)}) and is waiting at <strong>{e(waiting_at)}</strong>, {e(site.name)}.</p>'
        + ("<p>They need an escort in the building.</p>" if visit.escort_required else "") + "</body></html>",
        subtype="html")
    return msg


# ------------------------------------------------------------ service


class Invitations:
    """Queues invitations and host notices; says where each one is. Never blocks: the queue delivers."""

    def __init__(self, mail: MailQueue, store: Store, site: SiteText, *,
                 pass_text: Callable[[VisitRecord], str] | None = None) -> None:
        """``pass_text``: the visit's signed pass (server/passes.py), shown as QR and text; None sends
        invitations without a pass."""
        self.mail = mail
        self.store = store
        self.site = site
        self.pass_text = pass_text
        mail.renderer("invitation", self.render_invitation)  # composed by the sender, off the desk's request

    def render_invitation(self, payload: dict[str, Any]) -> EmailMessage:
        """The invitation an :meth:`invite` payload stands for (the sender thread calls this)."""
        return compose_invitation(payload_visit(payload), self.site, pass_text=payload.get("pass"),
                                  sender=self.mail.settings.from_addr, now=float(payload["stamp"]),
                                  uid_domain=self.mail.domain)

    @property
    def enabled(self) -> bool:
        return self.mail.enabled

    def invite(self, visit: VisitRecord) -> str | None:
        """Queue the invitation for a visit with an e-mail address; its queue id, or None (no address, or no
        relay configured). A failure here is logged and never undoes the registration."""
        if not visit.email or not self.enabled:
            return None
        token = None
        if self.pass_text is not None:
            try:
                token = self.pass_text(visit)
            except Exception as exc:  # no pass key, a visit that ended: invite all the same, without a pass
                log.warning("invitation for visitor %s goes without a pass: %s", visit.id, exc)
        try:
            # The message (its QR above all) is composed by the sender thread: queuing is one INSERT.
            return self.mail.enqueue_payload("invitation", visit_payload(visit, token, self.mail.clock.wall()),
                                             recipient=visit.email, subject=invitation_subject(visit, self.site),
                                             about=visit.id)
        except (MailError, ValueError) as exc:
            log.error("could not queue the invitation for visitor %s: %s", visit.id, exc)
            return None

    def notify_host(self, visit: VisitRecord, waiting_at: str | None = None) -> str | None:
        """Queue the host notice for a visitor who checked in; its queue id, or None when the host has no
        e-mail address or no relay is configured (the desk then shows that no notice went)."""
        host_email = self.store.person_email(visit.host)
        if not host_email or not self.enabled:
            return None
        try:
            msg = compose_host_notice(visit, host_email, self.site, waiting_at=waiting_at or self.site.settings.waiting_at,
                                      sender=self.mail.settings.from_addr, now=self.mail.clock.wall())
            return self.mail.enqueue(msg, kind="host_notice", about=visit.id, person=visit.host)
        except (MailError, ValueError) as exc:
            log.error("could not queue the host notice for visitor %s: %s", visit.id, exc)
            return None

    def delivery(self, visitor_id: str, kind: str = "host_notice") -> Delivery | None:
        """The latest ``kind`` message about this visit and where it is, or None when none was queued."""
        rows = self.store.mail_records(about=visitor_id, kind=kind, limit=1)
        if not rows:
            return None
        r = rows[0]
        return Delivery(r["id"], r["kind"], r["status"], r["recipient"], int(r["attempts"]), r["queued_at"],
                        r["sent_at"], r["last_error"])


def invitations_for(server: Any, notice: Notice) -> Invitations | None:
    """The server's invitations (None when the site has no [smtp] relay): the desk's wiring in one call.

    ``server`` is server/app.py's ``Server``: its ``mail`` queue, its site and ``[invitations]`` settings, and,
    when the site has a pass key, its ``passes`` (server/passes.py), whose token becomes the invitation's QR.
    Duck-typed so this module does not depend on how passes are made."""
    mail = getattr(server, "mail", None)
    if mail is None or not mail.enabled:
        return None
    directory = server.directory
    site = SiteText(directory.site.name, directory.site.timezone, directory.bundle.invitations, notice)
    passes = getattr(server, "passes", None)

    def issued(visit: VisitRecord) -> str:
        return str(passes.issue_pass(visit.id, actor="system").token)

    enabled = passes is not None and getattr(passes, "enabled", False)
    return Invitations(mail, server.store, site, pass_text=issued if enabled else None)
