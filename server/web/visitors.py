"""Visitors at the security desk over HTTP: pre-register, check in with consent, check out, the watchlist
(docs/desk.md).

The rules (validation, visit windows, consent, badges, the host's notice, overdue visits, watchlist matches)
are the visitor service's, server/visitors.py; this module is a table of API routes and pages calling it, the
API models, and the translation of its errors: :class:`VisitorNotFound` 404, :class:`VisitConflict` 409, any
other refusal 422, each with the service's message.

The privacy notice shown at check-in is ``templates/privacy-notice.txt``, whose first line is its version
(:func:`load_notice`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, Form, Path as PathParam, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from server.agreements import Acceptance
from server.directory import DirectoryError
from server.sessions import Principal
from server.visitors import (CheckIn, Notice, OverdueVisits, Registration, VisitConflict, VisitorError,
                             VisitorNotFound, VisitRecord, Visitors, WatchHit, check_email, clean_text)
from server.web.access import require
from server.web.badge import issue_at_check_in
from server.web.api import ERRORS, ErrorOut
from server.web.roles import ADMIN, DESK

API_PREFIX = "/api/v1"
NOTICE_FILE = Path(__file__).resolve().parent / "templates" / "privacy-notice.txt"
VISITOR_ID = r"^v-[0-9a-f]{8,32}$"
PERSON_ID = r"^[A-Za-z0-9_.-]{1,64}$"
CONFLICT = {409: {"model": ErrorOut}}
#: Hosts listed in the page itself (the picker's suggestions without scripting); past this, the picker asks
#: /api/v1/people/search as the receptionist types (static/picker.js), so a site of 100,000 stays light.
HOST_OPTIONS = 200


def load_notice(path: Path = NOTICE_FILE) -> Notice:
    """The privacy notice: first line ``version: V``, ``#`` comment lines, paragraphs split by blank lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("version:") or not lines[0][8:].strip():
        raise ValueError(f"{path}: the first line must be 'version: V' (every recorded consent names it)")
    body = "\n".join(line for line in lines[1:] if not line.startswith("#"))
    paragraphs = tuple(" ".join(p.split()) for p in body.split("\n\n") if p.strip())
    return Notice(lines[0][8:].strip(), paragraphs)


def shown(t: float | None, tz: ZoneInfo) -> str | None:
    """A stored instant in site time for display; a value no calendar can show (a row stored before the
    window was validated) is shown as it is rather than failing the whole page."""
    if not t:
        return None
    try:
        return datetime.fromtimestamp(t, tz).isoformat(timespec="minutes")
    except (OverflowError, ValueError, OSError, TypeError):
        return f"invalid time ({t!r})"


# ----------------------------------------------------------------- API models


class VisitorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, description="the visitor's full name")
    company: str = Field("", max_length=128)
    email: str = Field("", max_length=254)
    host: str = Field(pattern=PERSON_ID, description="the person id of the employee they visit")
    valid_from: datetime = Field(description="start of the visit (ISO 8601; without an offset: site time)")
    valid_until: datetime = Field(description="end of the visit; the badge stops working then")
    allowed_areas: list[str] = Field(min_length=1, max_length=32, description="area ids the badge opens")
    escort_required: bool | None = Field(None, description="default: true when an allowed area is restricted")

    @field_validator("name", "company")
    @classmethod
    def _clean(cls, value: str) -> str:
        return clean_text(value)

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("the visitor's name is empty")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return check_email(value)


class ConsentOut(BaseModel):
    notice_version: str
    photo_consent: bool
    consented_at: float
    operator: str | None


class HoldOut(BaseModel):
    state: Literal["held", "overridden", "refused"] = Field(description="held: check-in refused until resolved")
    entries: list[int] = Field(description="the watchlist entry ids matched")
    stage: str | None
    held_at: float
    resolved_by: str | None
    resolved_at: float | None
    reason: str | None


class VisitorOut(BaseModel):
    id: str
    name: str
    company: str
    email: str
    host: str
    host_name: str
    valid_from: str = Field(description="site time, ISO 8601")
    valid_until: str
    allowed_areas: list[str]
    escort_required: bool
    status: Literal["registered", "checked_in", "checked_out"]
    badge_last4: str | None = Field(description="while checked in: the last digits of the badge handed over")
    checked_in_at: str | None
    checked_out_at: str | None
    where: str | None = Field(description="on site: the area the doors last saw them enter")
    consent: ConsentOut | None
    hold: HoldOut | None = Field(None, description="a watchlist hold on the visit (server/visitors.py)")


class WatchHitOut(BaseModel):
    id: int
    kind: str
    value: str
    note: str


class VisitorResultOut(BaseModel):
    visitor: VisitorOut
    warnings: list[WatchHitOut] = Field(description="watchlist matches: the visit is held until an admin "
                                        "overrides it or it is refused")


class TodayOut(BaseModel):
    expected: list[VisitorOut]
    on_site: list[VisitorOut]
    left: list[VisitorOut]


class AcceptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(max_length=32)
    version: int = Field(ge=1, le=2**31)
    method: Literal["typed", "drawn"]
    typed_name: str = Field("", max_length=128)
    signature_png: str = Field("", max_length=70_000, description="drawn: the PNG, base64 (or a data: URL)")


def acceptance(body: AcceptIn) -> Acceptance:
    """The service's input from the API's; a signature that is not base64 is refused here (422)."""
    png = None
    if body.method == "drawn":
        data = body.signature_png.split(",", 1)[1] if body.signature_png.startswith("data:") else body.signature_png
        try:
            png = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise VisitorError("the signature is not base64 PNG data: draw it again") from exc
    return Acceptance(kind=body.kind, version=body.version, method=body.method, typed_name=body.typed_name,
                      signature_png=png)


class CheckInIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notice_version: str = Field(max_length=64, description="the version of the notice shown (GET /visitors/notice)")
    consent: bool = Field(description="the visitor acknowledged the notice (required: true)")
    photo_consent: bool = Field(description="the visitor agrees to snapshots at doors")
    agreements: list[AcceptIn] = Field([], max_length=16,
                                       description="agreements accepted now (GET /visitors/{id}/agreements)")


class NoticeOut(BaseModel):
    version: str
    text: str


class WatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["name", "company"]
    value: str = Field(min_length=1, max_length=128)
    note: str = Field("", max_length=500)


class WatchOut(BaseModel):
    id: int
    kind: str
    value: str
    note: str
    added_by: str | None
    added_at: float


class WatchlistOut(BaseModel):
    entries: list[WatchOut]


# ----------------------------------------------------------------- translation


def _error(exc: DirectoryError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "detail": None}, status_code=_status(exc))


def _status(exc: DirectoryError) -> int:
    return 404 if isinstance(exc, VisitorNotFound) else 409 if isinstance(exc, VisitConflict) else 422


def _desk(request: Request) -> Visitors:
    return request.app.state.desk.visitors  # type: ignore[no-any-return]


def _out(desk: Visitors, v: VisitRecord) -> VisitorOut:
    tz = desk.tz
    return VisitorOut(
        id=v.id, name=v.name, company=v.company, email=v.email, host=v.host, host_name=v.host_name,
        valid_from=shown(v.valid_from, tz) or "", valid_until=shown(v.valid_until, tz) or "",
        allowed_areas=list(v.allowed_areas), escort_required=v.escort_required, status=v.status,  # type: ignore[arg-type]
        badge_last4=v.badge_last4, checked_in_at=shown(v.checked_in_at, tz), checked_out_at=shown(v.checked_out_at, tz),
        where=v.where, consent=ConsentOut(**asdict(v.consent)) if v.consent else None,
        hold=HoldOut(**{**asdict(v.hold), "entries": list(v.hold.entries)}) if v.hold else None)


def _today(desk: Visitors) -> dict[str, list[VisitorOut]]:
    today = desk.today()
    return {"expected": [_out(desk, v) for v in today.expected], "on_site": [_out(desk, v) for v in today.on_site],
            "left": [_out(desk, v) for v in today.left]}


def _hits(hits: list[WatchHit]) -> list[WatchHitOut]:
    return [WatchHitOut(**asdict(h)) for h in hits]


def _registration(body: VisitorIn) -> Registration:
    return Registration(name=body.name, host=body.host, valid_from=body.valid_from, valid_until=body.valid_until,
                        allowed_areas=tuple(body.allowed_areas), company=body.company, email=body.email,
                        escort_required=body.escort_required)


def _check_in(body: CheckInIn) -> CheckIn:
    return CheckIn(notice_version=body.notice_version, consent=body.consent, photo_consent=body.photo_consent)


# ----------------------------------------------------------------- API


def _api(app: FastAPI) -> None:
    def add(path: str, method: str, endpoint: Any, **options: Any) -> None:
        app.add_api_route(API_PREFIX + path, endpoint, methods=[method], tags=["visitors"],
                          responses={**ERRORS, **CONFLICT}, **options)

    def today(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> TodayOut:
        return TodayOut(**_today(_desk(request)))

    def notice(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> NoticeOut:
        n = _desk(request).notice
        return NoticeOut(version=n.version, text=n.text)

    def register(body: VisitorIn, request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            v, hits = desk.register(_registration(body), who.name)
        except DirectoryError as exc:
            return _error(exc)
        return JSONResponse(VisitorResultOut(visitor=_out(desk, v), warnings=_hits(hits)).model_dump(),
                            status_code=201)

    def one(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
            who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            return _out(desk, desk.record(visitor_id))
        except DirectoryError as exc:
            return _error(exc)

    def check_in(body: CheckInIn, request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                 who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            v, hits = desk.check_in(visitor_id, _check_in(body), who.name,
                                    acceptances=[acceptance(a) for a in body.agreements])
        except DirectoryError as exc:
            return _error(exc)
        issue_at_check_in(request, visitor_id, who.name)  # the visit's pass, if it has none yet (server/web/badge.py)
        return VisitorResultOut(visitor=_out(desk, v), warnings=_hits(hits))

    def check_out(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                  who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            return _out(desk, desk.check_out(visitor_id, who.name))
        except DirectoryError as exc:
            return _error(exc)

    def watchlist(request: Request, who: Principal = Depends(require(ADMIN))) -> WatchlistOut:
        return WatchlistOut(entries=[WatchOut(**asdict(e)) for e in _desk(request).watchlist.entries()])

    def watch_add(body: WatchIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
        try:
            entry = _desk(request).watch(body.kind, body.value, body.note, who.name)
        except DirectoryError as exc:
            return _error(exc)
        return JSONResponse(WatchOut(**asdict(entry)).model_dump(), status_code=201)

    def watch_remove(request: Request, entry_id: int = PathParam(ge=1, le=2**62),
                     who: Principal = Depends(require(ADMIN))) -> Response:
        if not _desk(request).unwatch(entry_id, who.name):
            return JSONResponse({"error": f"no watchlist entry {entry_id}", "detail": None}, status_code=404)
        return Response(status_code=204)

    add("/visitors/today", "GET", today, response_model=TodayOut, summary="Today's visitors: expected, on site, left")
    add("/visitors/notice", "GET", notice, response_model=NoticeOut,
        summary="The privacy notice shown at check-in, with its version")
    add("/visitors", "POST", register, status_code=201, response_model=VisitorResultOut,
        summary="Pre-register a visitor (watchlist matches come back as warnings)")
    add("/visitors/{visitor_id}", "GET", one, response_model=VisitorOut, summary="One visitor")
    add("/visitors/{visitor_id}/check-in", "POST", check_in, response_model=VisitorResultOut,
        summary="Check in: record consent and agreements, activate a badge from the pool, tell the host "
                "(409 while the watchlist holds the visit)")
    add("/visitors/{visitor_id}/check-out", "POST", check_out, response_model=VisitorOut,
        summary="Check out: revoke the badge and return it to the pool")
    add("/watchlist", "GET", watchlist, response_model=WatchlistOut, summary="The watchlist (admin)")
    add("/watchlist", "POST", watch_add, status_code=201, response_model=WatchOut,
        summary="Add a name or company to the watchlist (admin)")
    add("/watchlist/{entry_id}", "DELETE", watch_remove, status_code=204, response_class=Response, summary="Remove a watchlist entry (admin)")


# ----------------------------------------------------------------- pages


def _pages(app: FastAPI) -> None:
    from server.web.pages import render

    def page(request: Request, who: Principal, status: int = 200, **context: Any) -> Response:
        desk = _desk(request)
        now = datetime.fromtimestamp(desk.clock.wall(), desk.tz).replace(second=0, microsecond=0, tzinfo=None)
        form = {"name": "", "company": "", "email": "", "host": "", "areas": [],
                "valid_from": now.isoformat(timespec="minutes"),
                "valid_until": now.replace(hour=18, minute=0).isoformat(timespec="minutes")
                if now.hour < 17 else (now + timedelta(hours=2)).isoformat(timespec="minutes"), "escort": "auto"}
        form.update(context.pop("form", {}))
        hosts = desk.hosts()
        return render(request, "visitors.html", who, status, today=_today(desk), hosts=hosts[:HOST_OPTIONS],
                      more_hosts=len(hosts) > HOST_OPTIONS,
                      areas=desk.areas(), form=form, free_badges=desk.free_badges(), **context)

    def visitors_page(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Response:
        return page(request, who)

    def register_form(request: Request, who: Principal = Depends(require(ADMIN, DESK)),
                      name: str = Form("", max_length=256), company: str = Form("", max_length=256),
                      email: str = Form("", max_length=256), host: str = Form("", max_length=64),
                      valid_from: str = Form("", max_length=32), valid_until: str = Form("", max_length=32),
                      areas: list[str] = Form([], max_length=32), escort: str = Form("auto", max_length=8)) -> Response:
        host = _desk(request).host_id(host)
        form = {"name": name, "company": company, "email": email, "host": host, "valid_from": valid_from,
                "valid_until": valid_until, "areas": areas, "escort": escort}
        missing = [what for what, value in (("the visitor's name", name.strip()), ("the host", host),
                                            ("at least one allowed area", areas)) if not value]
        if missing:
            return page(request, who, 422, errors=[f"Enter {', '.join(missing)}."], form=form)
        try:
            body = VisitorIn(name=name, company=company, email=email, host=host, valid_from=valid_from,
                             valid_until=valid_until, allowed_areas=areas,
                             escort_required=None if escort not in ("yes", "no") else escort == "yes")
        except ValueError as exc:
            errors = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in getattr(exc, "errors", lambda: [])()]
            return page(request, who, 422, errors=errors or [str(exc)], form=form)
        try:
            v, hits = _desk(request).register(_registration(body), who.name)
        except DirectoryError as exc:
            return page(request, who, 422, errors=[str(exc)], form=form)
        return page(request, who, 200, message=f"Registered {v.name}. Check them in when they arrive.",
                    warnings=hits)

    def check_in_page(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                      who: Principal = Depends(require(ADMIN, DESK))) -> Response:
        desk = _desk(request)
        try:
            v = _out(desk, desk.record(visitor_id))
        except DirectoryError as exc:
            return page(request, who, 404, errors=[str(exc)])
        return render(request, "visitor_checkin.html", who, **_checkin_context(desk, visitor_id), visitor=v,
                      notice=desk.notice, free_badges=desk.free_badges())

    def check_in_form(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                      who: Principal = Depends(require(ADMIN, DESK)), notice_version: str = Form("", max_length=64),
                      consent: str = Form("", max_length=8), photo_consent: str = Form("", max_length=8),
                      agreement_kind: list[str] = Form([], max_length=16),
                      agreement_version: list[str] = Form([], max_length=16),
                      agreement_name: list[str] = Form([], max_length=16)) -> Response:
        desk = _desk(request)
        shown_now = CheckIn(notice_version=notice_version, consent=consent == "yes",
                            photo_consent=photo_consent == "yes")
        try:
            given = [Acceptance(kind=k[:32], version=int(ver) if ver.isdigit() and len(ver) < 10 else 0,
                                method="typed", typed_name=n[:256])
                     for k, ver, n in zip(agreement_kind, agreement_version, agreement_name)]
            v, hits = desk.check_in(visitor_id, shown_now, who.name, acceptances=given)
        except DirectoryError as exc:
            if isinstance(exc, VisitorNotFound):
                return page(request, who, 404, errors=[str(exc)])
            return render(request, "visitor_checkin.html", who, _status(exc), **_checkin_context(desk, visitor_id),
                          visitor=_out(desk, desk.record(visitor_id)), notice=desk.notice,
                          free_badges=desk.free_badges(), errors=[str(exc)])
        issue_at_check_in(request, visitor_id, who.name)  # the visit's pass, if it has none yet (server/web/badge.py)
        return page(request, who, 200, warnings=hits,
                    message=f"Checked in {v.name}: hand over visitor badge …{v.badge_last4}. "
                            + _host_told(desk.mail_delivery(visitor_id)))

    def check_out_form(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                       who: Principal = Depends(require(ADMIN, DESK))) -> Response:
        desk = _desk(request)
        try:
            v = desk.check_out(visitor_id, who.name)
        except DirectoryError as exc:
            return page(request, who, 404 if isinstance(exc, VisitorNotFound) else 409, errors=[str(exc)])
        return page(request, who, 200, message=f"Checked out {v.name}: their badge is revoked and back in the pool.")

    def watchlist_page(request: Request, who: Principal = Depends(require(ADMIN)), status: int = 200,
                       **context: Any) -> Response:
        return render(request, "watchlist.html", who, status, entries=_desk(request).watchlist.entries(), **context)

    def watchlist_view(request: Request, who: Principal = Depends(require(ADMIN))) -> Response:
        return watchlist_page(request, who)

    def watchlist_add(request: Request, who: Principal = Depends(require(ADMIN)), kind: str = Form("name", max_length=16),
                      value: str = Form("", max_length=256), note: str = Form("", max_length=1000)) -> Response:
        try:
            body = WatchIn(kind=kind, value=value, note=note)  # type: ignore[arg-type]
        except ValueError:
            return watchlist_page(request, who, 422, errors=["Enter a name or company (up to 128 characters) and a "
                                                           "note of up to 500."])
        try:
            _desk(request).watch(body.kind, body.value, body.note, who.name)
        except DirectoryError as exc:
            return watchlist_page(request, who, _status(exc), errors=[str(exc)])
        return watchlist_page(request, who, message="Added to the watchlist.")

    def watchlist_remove(request: Request, entry_id: int = PathParam(ge=1, le=2**62),
                         who: Principal = Depends(require(ADMIN))) -> Response:
        if _desk(request).unwatch(entry_id, who.name):
            return watchlist_page(request, who, message="Removed from the watchlist.")
        return watchlist_page(request, who, 404, errors=[f"no watchlist entry {entry_id}"])

    for path, method, endpoint in (
        ("/visitors", "GET", visitors_page), ("/visitors", "POST", register_form),
        ("/visitors/watchlist", "GET", watchlist_view), ("/visitors/watchlist", "POST", watchlist_add),
        ("/visitors/watchlist/{entry_id}/remove", "POST", watchlist_remove),
        ("/visitors/{visitor_id}/check-in", "GET", check_in_page),
        ("/visitors/{visitor_id}/check-in", "POST", check_in_form),
        ("/visitors/{visitor_id}/check-out", "POST", check_out_form),
    ):
        app.add_api_route(path, endpoint, methods=[method], include_in_schema=False)


def install(app: FastAPI) -> None:
    """Visitor API and pages on the desk's visitor service; the overdue-visit job goes to ``app.state.jobs``."""
    if not hasattr(app.state, "jobs"):
        app.state.jobs = []
    app.state.jobs.append(OverdueVisits(app.state.desk.visitors))
    _api(app)
    _pages(app)


def _checkin_context(desk: Visitors, visitor_id: str) -> dict[str, Any]:
    """What the check-in page shows beside the notice: the agreements still to accept, those accepted, the
    site's agreement kinds (for the per-visit choice) and the watchlist hold."""
    ag = desk.agreements
    if ag is None:
        return {"missing": [], "accepted": [], "kinds": [], "extra": [], "site_required": []}
    return {"missing": ag.missing(visitor_id), "accepted": ag.accepted(visitor_id), "kinds": list(ag.current().values()),
            "extra": ag.visit_extra(visitor_id), "site_required": ag.site_required()}


def _host_told(notice: Any) -> str:
    """What the desk may honestly say about the host's notice: only a queued or sent e-mail tells the host; the
    live feed's row is for the desk (the notice's later state is on ``/api/v1/visitors/{id}/mail``)."""
    if notice is None:
        return ("Their host was not e-mailed (no address on file or no mail relay configured): "
                "tell them yourself.")
    if notice.status == "failed":
        return f"The e-mail to their host failed ({notice.last_error or 'refused'}): tell them yourself."
    return f"Their host is being told by e-mail ({notice.recipient}, {notice.status})."

