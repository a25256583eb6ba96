"""The printed visitor badge and the desk's pass actions (issue 17; docs/desk.md "Badges and passes").

- ``GET /visitors/{id}/badge?size=card|label62``: a page that prints as the visitor's badge on a CR80 card
  (54 x 86 mm) or a 62 mm label roll (62 x 100 mm): name, company, host, valid until (site time), their
  photo when one was taken with consent, and the QR of their pass. The QR is an inline SVG made here by
  segno from the pass text (nothing fetched from anywhere); the print size is the stylesheet's named
  ``@page`` (static/badge.css), so the browser's print dialog (or Chromium's PDF) gets the label's size.
  The visit must be checked in: the badge is what the desk hands over, and the pass is issued then if the
  visit has none yet (a walk-in gets one too). Every rendering is audited ``visitor.badge_printed``.
- ``GET /visitors/{id}/pass``: the pass as QR and text, for a walk-in to photograph, with the actions
  "Report pass lost" (the pass ends as ``lost``, refused at every door from the next policy on, and a new
  one is issued) and "Resend invitation" (the invitation again, with the pass the visitor holds: never a
  replacement), and where the invitation and the host's notice are (queued, sent, failed and why).
- The same over the API: ``GET /api/v1/visitors/{id}/pass``, ``POST .../pass/lost``,
  ``POST .../invitation/resend``.

The pass is the one the visitor already holds (server/passes.py ``current``: the token re-signed from its
row, byte for byte the text issued), so printing a badge or resending an invitation never voids the QR in
the visitor's e-mail.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import segno
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from server.audit import subject_ref
from server.directory import DirectoryError
from server.invitations import Delivery, invitation_subject, visit_payload
from server.mail import MailError
from server.passes import IssuedPass, PassError, Passes, PassesDisabled
from server.sessions import Principal
from server.visitors import VisitorNotFound, VisitRecord, Visitors
from server.web.access import require
from server.web.api import ErrorOut
from server.web.roles import ADMIN, DESK, KIOSK
from server.web.routes import Routes

#: Who may print a badge: the desk, and the lobby's self check-in kiosk (server/web/kiosk.py) after a check-in.
BADGE_ROLES = (ADMIN, DESK, KIOSK)

log = logging.getLogger("doorkeep.server.desk")

API_PREFIX = "/api/v1"
VISITOR_ID = r"^v-[0-9a-f]{8,32}$"
ERRORS = {404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}}
route = Routes(tags=["visitors"], responses=ERRORS)


@dataclass(frozen=True)
class BadgeSize:
    """A badge stock the print stylesheet knows: its ``@page`` name (static/badge.css) and size in mm."""

    key: str
    label: str
    width_mm: int
    height_mm: int


#: The stocks a badge prints on; the first is the default. Each has a named @page in static/badge.css.
SIZES: dict[str, BadgeSize] = {s.key: s for s in (
    BadgeSize("card", "CR80 card, 54 × 86 mm", 54, 86),
    BadgeSize("label62", "62 mm label roll, 62 × 100 mm", 62, 100),
)}


class PassOut(BaseModel):
    visitor: str
    token: str = Field(description="the pass text: what the QR code carries, and what a visitor types")
    serial: int = Field(description="1 for the first pass of the visit, +1 at each re-issue (a lost pass)")
    valid_from: str = Field(description="site time, ISO 8601")
    valid_until: str
    key_id: str


class LostOut(BaseModel):
    ended: int = Field(description="how many passes ended as lost (0: the visit had none active)")
    new_pass: PassOut


class ResendOut(BaseModel):
    queued: str = Field(description="the mail queue's id of the invitation (its state: GET .../mail)")
    recipient: str


def install(app: FastAPI) -> None:
    """The routes, and ``visit_mail(id)`` for templates: the visitors page shows each row's mail state."""
    route.install(app)
    desk = app.state.desk

    def visit_mail(visitor_id: str) -> dict[str, Delivery | None]:
        visitors: Visitors = desk.visitors
        return {"invitation": visitors.mail_delivery(visitor_id, "invitation"),
                "host_notice": visitors.mail_delivery(visitor_id, "host_notice")}

    desk.templates.env.globals["visit_mail"] = visit_mail


# ------------------------------------------------------------------ helpers


def _visitors(request: Request) -> Visitors:
    return request.app.state.desk.visitors  # type: ignore[no-any-return]


def _passes(request: Request) -> Passes | None:
    return getattr(request.app.state.desk.server, "passes", None)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "detail": None}, status_code=status)


def _status(exc: Exception) -> int:
    if isinstance(exc, VisitorNotFound):
        return 404
    if isinstance(exc, PassError) and str(exc).startswith("no visitor "):
        return 404
    return 409


def _site_time(visitors: Visitors, t: float) -> str:
    return datetime.fromtimestamp(t, visitors.tz).isoformat(timespec="minutes")


def _shown(visitors: Visitors, t: float) -> str:
    """An instant as the badge prints it: site time to the minute (``2026-11-30 17:00``)."""
    try:
        return datetime.fromtimestamp(t, visitors.tz).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, ValueError, OSError):
        return "—"


def _pass_out(visitors: Visitors, issued: IssuedPass) -> PassOut:
    c = issued.claims
    return PassOut(visitor=c.visit, token=issued.token, serial=c.serial, valid_from=_site_time(visitors, c.not_before),
                   valid_until=_site_time(visitors, c.not_after), key_id=c.key_id or "")


def ensure_pass(request: Request, visitor_id: str, actor: str) -> IssuedPass:
    """The visit's pass (issued now if it has none); :class:`PassesDisabled` when the site issues none."""
    passes = _passes(request)
    if passes is None or not passes.enabled:
        raise PassesDisabled("this site issues no visitor passes (no pass key: docs/configuration.md)")
    return passes.ensure_pass(visitor_id, actor=actor)


def issue_at_check_in(request: Request, visitor_id: str, actor: str) -> None:
    """Called by the desk's check-in: the visit gets its pass now if it has none (a walk-in). Never fails
    the check-in: a site without a pass key, or a race with a check-out, only means no pass."""
    passes = _passes(request)
    if passes is None or not passes.enabled:
        return
    try:
        passes.ensure_pass(visitor_id, actor=actor)
    except (PassError, DirectoryError) as exc:
        log.warning("visitor %s checked in without a pass: %s", visitor_id, exc)


def qr_svg(text: str) -> str:
    """The pass as an inline SVG QR code (error correction M, quiet zone 4): sized by the stylesheet, sharp at
    any print resolution, black on white whatever the theme (a QR must stay dark on light to scan)."""
    qr = segno.make_qr(text, error="m", boost_error=False)
    svg = qr.svg_inline(scale=1, border=4, dark="#000", light="#fff", omitsize=True, title="Visitor pass QR code",
                        svgclass="qr", lineclass=None)
    return str(svg).replace("<svg ", '<svg role="img" aria-label="Visitor pass QR code" ', 1)


def _photo(request: Request, v: VisitRecord) -> str | None:
    """The visitor's photo as a data: URI, only when one was taken and they consented to photos."""
    photos = getattr(request.app.state.desk, "photos", None)
    if photos is None or v.consent is None or not v.consent.photo_consent:
        return None
    try:
        jpeg = photos.jpeg(v.id)
    except Exception:  # a photo that cannot be read (key gone with retention) is no reason to refuse the badge
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii") if jpeg else None


def _audit(request: Request, actor: str, action: str, visitor_id: str, details: dict[str, Any]) -> None:
    visitors = _visitors(request)
    visitors.audit(actor, action, subject_ref(visitors.directory.key, visitor_id), details)


def _resend(request: Request, v: VisitRecord, actor: str) -> str:
    """Queue the invitation again, with the pass the visitor holds (issued if none); its queue id.
    :class:`PassError` (409) when mail is not configured or the visit has no address."""
    visitors = _visitors(request)
    invitations = visitors.invitations
    if invitations is None or not invitations.enabled:
        raise PassError("this site sends no mail (no [smtp] relay configured): give the visitor the pass "
                        "from the desk instead")
    if not v.email:
        raise PassError(f"{v.name} has no e-mail address on file: show them the pass instead")
    if v.status == "checked_out":
        raise PassError(f"{v.name}'s visit has ended: register a new visit")
    token = None
    passes = _passes(request)
    if passes is not None and passes.enabled:
        token = passes.ensure_pass(v.id, actor=actor).token
    mail = invitations.mail
    try:
        queued = mail.enqueue_payload("invitation", visit_payload(v, token, mail.clock.wall()), recipient=v.email,
                                      subject=invitation_subject(v, invitations.site), about=v.id)
    except (MailError, ValueError) as exc:
        raise PassError(f"the invitation could not be queued: {exc}") from None
    _audit(request, actor, "visitor.invitation_resent", v.id, {"with_pass": token is not None})
    return str(queued)


# ------------------------------------------------------------------ API


@route(API_PREFIX + "/visitors/{visitor_id}/pass", "GET", response_model=PassOut,
       summary="The visit's pass (issued now if it has none): its text for a QR code; audited")
def api_pass(request: Request, visitor_id: str = Path(pattern=VISITOR_ID),
             who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    visitors = _visitors(request)
    try:
        v = visitors.record(visitor_id)
        if v.status == "checked_out":  # its pass row may still say active: the doors refuse it all the same
            raise PassError(f"{v.name}'s visit has ended (checked out): register a new visit")
        issued = ensure_pass(request, visitor_id, who.name)
    except (PassError, DirectoryError) as exc:
        return _error(_status(exc), str(exc))
    _audit(request, who.name, "visitor.pass_shown", visitor_id, {"serial": issued.claims.serial, "via": "api"})
    return _pass_out(visitors, issued)


@route(API_PREFIX + "/visitors/{visitor_id}/pass/lost", "POST", response_model=LostOut,
       summary="Report the pass lost: it is refused at every door from now on, and a new one is issued; audited")
def api_pass_lost(request: Request, visitor_id: str = Path(pattern=VISITOR_ID),
                  who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    visitors = _visitors(request)
    passes = _passes(request)
    try:
        visitors.record(visitor_id)
        if passes is None or not passes.enabled:
            raise PassesDisabled("this site issues no visitor passes")
        before = sum(1 for r in passes.rows(visitor_id) if r["state"] == "active")
        issued = passes.report_lost(visitor_id, actor=who.name)
    except (PassError, DirectoryError) as exc:
        return _error(_status(exc), str(exc))
    return LostOut(ended=before, new_pass=_pass_out(visitors, issued))


@route(API_PREFIX + "/visitors/{visitor_id}/invitation/resend", "POST", response_model=ResendOut,
       summary="Send the invitation again, with the pass the visitor holds; audited")
def api_resend(request: Request, visitor_id: str = Path(pattern=VISITOR_ID),
               who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    visitors = _visitors(request)
    try:
        v = visitors.record(visitor_id)
        queued = _resend(request, v, who.name)
    except (PassError, DirectoryError) as exc:
        return _error(_status(exc), str(exc))
    return ResendOut(queued=queued, recipient=v.email)


# ------------------------------------------------------------------ pages


def _error_page(request: Request, who: Principal, code: int, message: str) -> Response:
    """The desk's error page (templates/error.html names the status ``status``, as render's own argument is)."""
    from server.web.access import CSRF_FIELD
    from server.web.roles import sections_for

    context = {"status": code, "message": message, "who": who, "csrf_field": CSRF_FIELD,
               "nav": sections_for(who.role)}
    return request.app.state.desk.templates.TemplateResponse(request, "error.html", context,  # type: ignore[no-any-return]
                                                              status_code=code)


@route("/visitors/{visitor_id}/badge", "GET", include_in_schema=False)
def badge_page(request: Request, visitor_id: str = Path(pattern=VISITOR_ID),
               size: str = Query("card", max_length=16), who: Principal = Depends(require(*BADGE_ROLES))) -> Response:
    from server.web.pages import render

    stock = SIZES.get(size)
    if stock is None:
        return _error_page(request, who, 422, f"no badge size {size[:16]!r}: choose {' or '.join(SIZES)}")
    visitors = _visitors(request)
    try:
        v = visitors.record(visitor_id)
    except DirectoryError as exc:
        return _error_page(request, who, 404, str(exc))
    if v.status != "checked_in":
        return _error_page(request, who, 409, f"{v.name} is not checked in ({v.status.replace('_', ' ')}): "
                                              "a badge is printed at check-in")
    qr, pass_note, serial = None, None, None
    try:
        issued = ensure_pass(request, visitor_id, who.name)
        qr, serial = qr_svg(issued.token), issued.claims.serial
    except PassesDisabled:
        pass_note = "This site issues no visitor passes: the badge card opens the doors."
    except (PassError, DirectoryError) as exc:
        return _error_page(request, who, 409, str(exc))
    photo = _photo(request, v)
    _audit(request, who.name, "visitor.badge_printed", visitor_id,
           {"size": stock.key, "serial": serial, "photo": photo is not None})
    return render(request, "visitor_badge.html", who, visitor=v, stock=stock, sizes=list(SIZES.values()), qr=qr,
                  pass_note=pass_note, photo=photo, until=_shown(visitors, v.valid_until))


def _pass_page(request: Request, who: Principal, visitor_id: str, status: int = 200, *,
               message: str | None = None, errors: list[str] | None = None) -> Response:
    from server.web.pages import render

    visitors = _visitors(request)
    try:
        v = visitors.record(visitor_id)
    except DirectoryError as exc:
        return _error_page(request, who, 404, str(exc))
    issued, note = None, None
    if v.status != "checked_out":
        try:
            issued = ensure_pass(request, visitor_id, who.name)
        except PassesDisabled as exc:
            note = str(exc)
        except (PassError, DirectoryError) as exc:
            note = str(exc)
    else:
        note = f"{v.name}'s visit has ended: their pass no longer opens any door."
    if issued is not None:
        _audit(request, who.name, "visitor.pass_shown", visitor_id, {"serial": issued.claims.serial, "via": "page"})
    invitations = visitors.invitations
    return render(request, "visitor_pass.html", who, status, visitor=v,
                  token=issued.token if issued else None, qr=qr_svg(issued.token) if issued else None,
                  serial=issued.claims.serial if issued else None, note=note, message=message, errors=errors,
                  mail_enabled=invitations is not None and invitations.enabled, sizes=list(SIZES.values()),
                  since=_shown(visitors, v.valid_from), until=_shown(visitors, v.valid_until))


@route("/visitors/{visitor_id}/pass", "GET", include_in_schema=False)
def pass_page(request: Request, visitor_id: str = Path(pattern=VISITOR_ID),
              who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    return _pass_page(request, who, visitor_id)


@route("/visitors/{visitor_id}/pass/lost", "POST", include_in_schema=False)
def pass_lost_form(request: Request, visitor_id: str = Path(pattern=VISITOR_ID),
                   who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    passes = _passes(request)
    try:
        _visitors(request).record(visitor_id)
        if passes is None or not passes.enabled:
            raise PassesDisabled("this site issues no visitor passes")
        issued = passes.report_lost(visitor_id, actor=who.name)
    except (PassError, DirectoryError) as exc:
        if _status(exc) == 404:
            return _error_page(request, who, 404, str(exc))
        return _pass_page(request, who, visitor_id, 409, errors=[str(exc)])
    return _pass_page(request, who, visitor_id, message=f"The lost pass is refused at every door from now on. "
                                                        f"This is the new pass (number {issued.claims.serial}): "
                                                        "print a new badge or let the visitor photograph it.")


@route("/visitors/{visitor_id}/invitation/resend", "POST", include_in_schema=False)
def resend_form(request: Request, visitor_id: str = Path(pattern=VISITOR_ID),
                who: Principal = Depends(require(ADMIN, DESK))) -> Response:
    try:
        v = _visitors(request).record(visitor_id)
        _resend(request, v, who.name)
    except (PassError, DirectoryError) as exc:
        if _status(exc) == 404:
            return _error_page(request, who, 404, str(exc))
        return _pass_page(request, who, visitor_id, 409, errors=[str(exc)])
    return _pass_page(request, who, visitor_id, message=f"The invitation is queued again for {v.email}.")
