"""The self check-in kiosk: a tablet in the lobby, logged in with a ``kiosk`` account (docs/desk.md "Self
check-in kiosk").

The visitor scans their pass with the tablet's camera (a captured JPEG frame is sent to ``POST /kiosk/scan``
and decoded here with OpenCV's QR detector) or types its code, confirms their name, accepts each agreement the
visit needs (a typed name or a signature drawn on a ``<canvas>``, kept as an encrypted PNG), reads the privacy
notice, agrees to a photo or declines (recorded either way; a photo is checked and re-encoded by
server/photos.py and kept encrypted under the visit), and is checked in exactly as the desk checks them in
(server/visitors.py: the watchlist gate, the agreements, a badge from the pool, the host told); then the badge
page (``/visitors/{id}/badge``, server/web/badge.py) prints their badge.

"Leaving?" on the first page checks a visitor out with the same pass (``POST /kiosk/check-out``): the desk's own
check-out by the kiosk's operator (the badge revoked and back in the pool, the pass inactive), then "Goodbye".

Nothing here takes a visit id from the browser: every step carries the pass's own text and reads it again
(server/passes.py ``read``: signed by this site, not replaced, lost or cancelled), so the kiosk cannot be used
to browse visits. A held or refused visit is sent to the reception desk without saying why (the watchlist is
never shown to a visitor). The ``kiosk`` role opens these pages, ``/``, logout and the badge page, nothing else.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from fastapi import Depends, FastAPI, Form, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from server.agreements import Acceptance
from server.audit import record_audit
from server.directory import DirectoryError
from server.passes import PassError
from server.sessions import Principal
from server.visitors import CheckIn, VisitHeld, VisitorNotFound, VisitRecord, Visitors
from server.web.access import require
from server.web.roles import ADMIN, KIOSK

#: Who may open the kiosk: its own account, and an admin trying it out (checked in by the admin's name).
log = logging.getLogger("doorkeep.server.desk")

KIOSK_ROLES = (KIOSK, ADMIN)
#: A scanned frame or a photo: a tablet camera's JPEG (the desk's body cap lets these routes carry it).
MAX_FRAME_BYTES = 1024 * 1024
MAX_CODE = 512
SEE_DESK = "We cannot check you in here. Please see the reception desk."
#: For a pass the kiosk cannot use, whether the visitor came to check in or out.
ASK_DESK = "Please see the reception desk."
NOT_IN = ("This visit was never checked in, so there is nothing to check out. If you are leaving, please "
          "tell the reception desk.")


class KioskError(Exception):
    """What the visitor is told on the kiosk's first page (never a watchlist match)."""


def decode_qr(jpeg: bytes) -> str | None:
    """The text of the QR code in a camera frame (JPEG or PNG), or None when there is none or it is unreadable.

    OpenCV's ArUco-based detector where this OpenCV has it, then the classic one: each misses codes the other
    reads (a tablet's canvas JPEG of a pass that the ArUco detector did not even find is kept as a test), and a
    kiosk sends one frame every 400 ms, so both can look at every frame. The edge does the same on its own
    schedule (edge/qr.py; the server does not import the edge).
    """
    import cv2  # the desk's image library (server/photos.py); imported here so the app starts without using it
    import numpy as np

    if not jpeg or len(jpeg) > MAX_FRAME_BYTES:
        return None
    try:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    except cv2.error:
        return None
    if image is None or image.size == 0:
        return None
    aruco = getattr(cv2, "QRCodeDetectorAruco", None)
    for detector in ((aruco(),) if aruco is not None else ()) + (cv2.QRCodeDetector(),):
        try:
            text, _points, _ = detector.detectAndDecode(image)
        except cv2.error:
            continue
        if text:
            return str(text)
    return None


def _drawn(png: bytes) -> bool:
    """Whether a signature PNG has any stroke at all (a blank canvas is one colour, or fully transparent)."""
    import cv2
    import numpy as np

    try:
        image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return False
    return image is not None and image.size > 0 and int(image.max()) != int(image.min())


def _data_url(value: str, kind: str) -> bytes | None:
    """The bytes of a ``data:image/...;base64,`` URL (or bare base64); None when empty; KioskError when garbled."""
    value = value.strip()
    if not value:
        return None
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KioskError(f"The {kind} did not come through. Please try again.") from None


def _desk(request: Request) -> Visitors:
    return request.app.state.desk.visitors  # type: ignore[no-any-return]


def _visit(request: Request, code: str) -> VisitRecord:
    """The visit a pass's text names, read again at every step."""
    passes = request.app.state.desk.server.passes
    code = code.strip()
    if not code:
        raise KioskError("Scan your pass, or type the code printed under it.")
    if passes is None or not passes.enabled:
        raise KioskError("This site issues no visitor passes. " + ASK_DESK)
    if len(code) > MAX_CODE:
        raise KioskError("That is not a visitor pass of this site. Check the code, or see the reception desk.")
    try:
        held = passes.read(code)
        return _desk(request).record(held.claims.visit)
    except PassError as exc:
        msg = str(exc)
        if "no longer valid" in msg:
            raise KioskError("This pass is no longer valid. " + ASK_DESK) from None
        raise KioskError("That is not a visitor pass of this site. Check the code, or see the reception desk.") from None
    except VisitorNotFound:
        raise KioskError("This visit is not on our list any more. " + ASK_DESK) from None


def _page(request: Request, who: Principal, step: str, status: int = 200, **context: Any) -> Response:
    desk = request.app.state.desk
    from server.web.access import CSRF_FIELD

    return desk.templates.TemplateResponse(request, "kiosk.html", {"who": who, "csrf_field": CSRF_FIELD, "step": step,
                                                                   **context}, status_code=status)


def _next(request: Request, who: Principal, v: VisitRecord, code: str, status: int = 200, **context: Any) -> Response:
    """The step the visit is at: done, sent to the desk, the next agreement, or the notice and photo."""
    desk = _desk(request)
    if v.status == "checked_in":
        return _page(request, who, "done", status, visitor=v, already=True)
    if v.status != "registered" or (v.hold is not None and v.hold.state in ("held", "refused")):
        return _page(request, who, "desk", status, message=SEE_DESK)
    missing = desk.agreements.missing(v.id) if desk.agreements is not None else []
    if missing:
        return _page(request, who, "agree", status, visitor=v, code=code, agreement=missing[0],
                     remaining=len(missing), **context)
    return _page(request, who, "finish", status, visitor=v, code=code, notice=desk.notice, **context)


def install(app: FastAPI) -> None:
    """The kiosk's pages and its scan endpoint."""

    def start(request: Request, who: Principal = Depends(require(*KIOSK_ROLES))) -> Response:
        return _page(request, who, "start")

    async def scan(request: Request, who: Principal = Depends(require(*KIOSK_ROLES))) -> Response:
        body = await request.body()
        if not body or len(body) > MAX_FRAME_BYTES:
            return JSONResponse({"error": f"send one camera frame as a JPEG of at most {MAX_FRAME_BYTES // 1024} KiB",
                                 "detail": None}, status_code=413 if body else 422)
        text = await run_in_threadpool(decode_qr, body)
        if text is None:
            return JSONResponse({"error": "no QR code found in this frame", "detail": None}, status_code=422)
        return JSONResponse({"code": text[:MAX_CODE]})

    def pass_form(request: Request, who: Principal = Depends(require(*KIOSK_ROLES)),
                  code: str = Form("", max_length=4096)) -> Response:
        try:
            v = _visit(request, code)
        except KioskError as exc:
            return _page(request, who, "start", 422, errors=[str(exc)], code=code[:MAX_CODE])
        if v.status != "registered" or (v.hold is not None and v.hold.state in ("held", "refused")):
            return _next(request, who, v, code.strip())  # already in, or for the desk to see
        return _page(request, who, "confirm", visitor=v, code=code.strip())

    def confirm_form(request: Request, who: Principal = Depends(require(*KIOSK_ROLES)),
                     code: str = Form("", max_length=4096)) -> Response:
        try:
            v = _visit(request, code)
        except KioskError as exc:
            return _page(request, who, "start", 422, errors=[str(exc)])
        return _next(request, who, v, code.strip())

    def agree_form(request: Request, who: Principal = Depends(require(*KIOSK_ROLES)),
                   code: str = Form("", max_length=4096), kind: str = Form("", max_length=32),
                   version: str = Form("", max_length=12), method: str = Form("", max_length=8),
                   typed_name: str = Form("", max_length=256), signature: str = Form("", max_length=100_000)) -> Response:
        desk = _desk(request)
        try:
            v = _visit(request, code)
        except KioskError as exc:
            return _page(request, who, "start", 422, errors=[str(exc)])
        if desk.agreements is None or v.status != "registered":
            return _next(request, who, v, code.strip())
        try:
            png = _data_url(signature, "signature") if method == "drawn" else None
            if method == "drawn" and (png is None or not _drawn(png)):
                raise KioskError("Sign in the box with your finger first, or type your name instead.")
            desk.agreements.accept(v.id, Acceptance(kind=kind, version=int(version) if version.isdigit() else 0,
                                                    method=method, typed_name=typed_name, signature_png=png), who.name)
        except KioskError as exc:
            return _next(request, who, v, code.strip(), 422, errors=[str(exc)])
        except DirectoryError as exc:
            return _next(request, who, v, code.strip(), 422, errors=[str(exc)])
        return _next(request, who, v, code.strip())

    def check_in_form(request: Request, who: Principal = Depends(require(*KIOSK_ROLES)),
                      code: str = Form("", max_length=4096), notice_version: str = Form("", max_length=64),
                      consent: str = Form("", max_length=8), photo_consent: str = Form("", max_length=8),
                      photo: str = Form("", max_length=2_000_000)) -> Response:
        desk = _desk(request)
        try:
            v = _visit(request, code)
        except KioskError as exc:
            return _page(request, who, "start", 422, errors=[str(exc)])
        wants_photo = photo_consent == "yes"
        try:
            jpeg = _data_url(photo, "photo") if wants_photo else None
            prepared = None
            if jpeg is not None:
                from server.photos import PhotoError, prepare

                try:
                    prepared = prepare(jpeg)
                except PhotoError as exc:
                    raise KioskError(f"The photo did not work ({exc}). Take it again, or untick the photo box.") from None
            v, _hits = desk.check_in(v.id, CheckIn(notice_version=notice_version, consent=consent == "yes",
                                                   photo_consent=wants_photo), who.name)
        except KioskError as exc:
            return _next(request, who, v, code.strip(), 422, errors=[str(exc)])
        except VisitHeld:
            return _page(request, who, "desk", 409, message=SEE_DESK)
        except DirectoryError as exc:
            return _next(request, who, v, code.strip(), 422, errors=[str(exc)])
        photos = request.app.state.desk.photos
        if prepared is not None and photos is None:  # a desk without the people service keeps no photos
            log.warning("kiosk: a visitor's photo was taken but this desk keeps no photos; it was dropped")
            prepared = None
        if prepared is not None:
            photo_id = photos.keep_visitor_photo(v.id, prepared)
            record_audit(desk.audit_log, who.name, "visitor.photo", desk.ref(v.id),
                         {"photo": photo_id[:12], "width": prepared.width, "height": prepared.height})
        elif not wants_photo:
            record_audit(desk.audit_log, who.name, "visitor.photo_declined", desk.ref(v.id), {})
        delivery = desk.mail_delivery(v.id)
        return _page(request, who, "done", visitor=v, photo=prepared is not None,
                     host_told=delivery is not None and delivery.status != "failed")

    def check_out_form(request: Request, who: Principal = Depends(require(*KIOSK_ROLES)),
                       code: str = Form("", max_length=4096)) -> Response:
        """The "Leaving?" form: the desk's own check-out (server/visitors.py ``check_out``) by the kiosk's
        operator; the pass stops opening doors with it (a pass is active only while its visit is checked in)."""
        try:
            v = _visit(request, code)
        except KioskError as exc:
            return _page(request, who, "start", 422, out_errors=[str(exc)], out_code=code[:MAX_CODE])
        if v.status == "checked_out":
            return _page(request, who, "goodbye", visitor=v, already=True)
        if v.status != "checked_in":
            return _page(request, who, "start", 409, out_code=code.strip()[:MAX_CODE], out_errors=[NOT_IN])
        badge = v.badge_last4  # the pool badge they still hold: it goes back to the desk
        try:
            v = _desk(request).check_out(v.id, who.name)
        except DirectoryError:  # checked out meanwhile (the desk, or their pass at the exit gate)
            return _page(request, who, "goodbye", visitor=_desk(request).record(v.id), already=True)
        return _page(request, who, "goodbye", visitor=v, already=False, badge=badge)

    for path, method, endpoint in (
        ("/kiosk", "GET", start), ("/kiosk/scan", "POST", scan), ("/kiosk/pass", "POST", pass_form),
        ("/kiosk/confirm", "POST", confirm_form), ("/kiosk/agree", "POST", agree_form),
        ("/kiosk/check-in", "POST", check_in_form), ("/kiosk/check-out", "POST", check_out_form),
    ):
        app.add_api_route(path, endpoint, methods=[method], include_in_schema=False)
