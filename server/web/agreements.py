"""Agreements and watchlist holds at the desk over HTTP (docs/desk.md "Agreements", "Watchlist holds").

The rules are the services': server/agreements.py (versions, requirements, acceptances) and server/visitors.py
(holds: :meth:`Visitors.override_hold`, :meth:`Visitors.refuse_visit`). Who may do what:

- agreement texts and the site's default: admin (the desk reads them);
- which agreements one visit needs, and recording an acceptance: admin and desk;
- overriding a watchlist hold: admin only (letting a listed person in is a supervisor's decision); refusing a
  held visit: admin and desk (refusing is always the safe way).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import Depends, FastAPI, Form, Path as PathParam, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from server.agreements import AgreementVersion, Agreements
from server.directory import DirectoryError
from server.sessions import Principal
from server.visitors import VisitConflict, VisitorNotFound, Visitors
from server.web.access import require
from server.web.api import ERRORS, ErrorOut
from server.web.roles import ADMIN, DESK
from server.web.visitors import (VISITOR_ID, AcceptIn, VisitorOut, _error, _out, _status, acceptance)

API_PREFIX = "/api/v1"
CONFLICT = {409: {"model": ErrorOut}}


class ReasonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=500, description="kept in the audit log")


class AgreementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(min_length=1, max_length=32, description="short name: nda, safety")
    title: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=20_000, description="paragraphs separated by blank lines")


class AgreementOut(BaseModel):
    kind: str
    version: int
    title: str
    text: str
    added_by: str | None
    added_at: float


class AgreementsOut(BaseModel):
    current: list[AgreementOut] = Field(description="the latest version of each agreement")
    versions: list[AgreementOut] = Field(description="every version ever kept, by kind then version")
    site_required: list[str] = Field(description="the kinds every visit needs")


class KindsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kinds: list[str] = Field(max_length=32)


class AcceptedOut(BaseModel):
    id: str
    kind: str
    version: int
    accepted_at: float
    method: str
    typed_name: str | None
    operator: str | None
    has_signature: bool


class VisitAgreementsOut(BaseModel):
    required: list[AgreementOut]
    missing: list[AgreementOut] = Field(description="required and not yet accepted at the current version")
    extra: list[str] = Field(description="kinds this visit needs beyond the site's default")
    accepted: list[AcceptedOut]


def _desk(request: Request) -> Visitors:
    return request.app.state.desk.visitors  # type: ignore[no-any-return]


def _ag(request: Request) -> Agreements:
    ag = _desk(request).agreements
    assert ag is not None  # wired in server/web/app.py
    return ag


def _a(v: AgreementVersion) -> AgreementOut:
    return AgreementOut(**asdict(v))


def _visit_agreements(ag: Agreements, visit: str) -> VisitAgreementsOut:
    return VisitAgreementsOut(required=[_a(v) for v in ag.required(visit)], missing=[_a(v) for v in ag.missing(visit)],
                              extra=ag.visit_extra(visit), accepted=[AcceptedOut(**asdict(a)) for a in ag.accepted(visit)])


def _api(app: FastAPI) -> None:
    def add(path: str, method: str, endpoint: Any, **options: Any) -> None:
        app.add_api_route(API_PREFIX + path, endpoint, methods=[method], tags=["visitors"],
                          responses={**ERRORS, **CONFLICT}, **options)

    def override(body: ReasonIn, request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                 who: Principal = Depends(require(ADMIN))) -> Any:
        desk = _desk(request)
        try:
            return _out(desk, desk.override_hold(visitor_id, body.reason, who.name))
        except DirectoryError as exc:
            return _error(exc)

    def refuse(body: ReasonIn, request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
               who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            return _out(desk, desk.refuse_visit(visitor_id, body.reason, who.name))
        except DirectoryError as exc:
            return _error(exc)

    def cancel(body: ReasonIn, request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
               who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            v = desk.cancel_visit(visitor_id, body.reason, who.name)
        except DirectoryError as exc:
            return _error(exc)
        return _out(desk, v)

    def agreements(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> AgreementsOut:
        ag = _ag(request)
        return AgreementsOut(current=[_a(v) for v in ag.current().values()], versions=[_a(v) for v in ag.versions()],
                             site_required=ag.site_required())

    def add_version(body: AgreementIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
        try:
            v = _ag(request).add_version(body.kind, body.title, body.text, who.name)
        except DirectoryError as exc:
            return _error(exc)
        return JSONResponse(_a(v).model_dump(), status_code=201)

    def site_required(body: KindsIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
        try:
            return {"site_required": _ag(request).set_site_required(body.kinds, who.name)}
        except DirectoryError as exc:
            return _error(exc)

    def visit_agreements(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                         who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        try:
            _desk(request).record(visitor_id)
        except DirectoryError as exc:
            return _error(exc)
        return _visit_agreements(_ag(request), visitor_id)

    def set_visit(body: KindsIn, request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                  who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        try:
            _desk(request).record(visitor_id)
            _ag(request).set_visit_required(visitor_id, body.kinds, who.name)
        except DirectoryError as exc:
            return _error(exc)
        return _visit_agreements(_ag(request), visitor_id)

    def accept(body: AcceptIn, request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
               who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            v = desk.record(visitor_id)
            if v.status != "registered":
                raise VisitConflict(f"{v.name} is {v.status.replace('_', ' ')}: agreements are accepted at check-in")
            _ag(request).accept(visitor_id, acceptance(body), who.name)
        except DirectoryError as exc:
            return _error(exc)
        return JSONResponse(_visit_agreements(_ag(request), visitor_id).model_dump(), status_code=201)

    add("/visitors/{visitor_id}/hold/override", "POST", override, response_model=VisitorOut,
        summary="Override a watchlist hold with a reason (admin; audited with the entry ids matched)")
    add("/visitors/{visitor_id}/hold/refuse", "POST", refuse, response_model=VisitorOut,
        summary="Refuse a visit held by the watchlist, with a reason (audited); it can never be checked in")
    add("/visitors/{visitor_id}/cancel", "POST", cancel, response_model=VisitorOut,
        summary="Cancel a visit not yet checked in, with a reason (audited); its pass stops working")
    add("/agreements", "GET", agreements, response_model=AgreementsOut,
        summary="Agreement texts (current and every version) and the site's default")
    add("/agreements", "POST", add_version, status_code=201, response_model=AgreementOut,
        summary="Add a new version of an agreement (admin); earlier versions are kept unchanged")
    add("/agreements/required", "PUT", site_required, summary="The agreements every visit needs (admin)")
    add("/visitors/{visitor_id}/agreements", "GET", visit_agreements, response_model=VisitAgreementsOut,
        summary="A visit's agreements: required, missing, accepted")
    add("/visitors/{visitor_id}/agreements", "PUT", set_visit, response_model=VisitAgreementsOut,
        summary="The agreements this visit needs beyond the site's default")
    add("/visitors/{visitor_id}/agreements/accept", "POST", accept, status_code=201,
        response_model=VisitAgreementsOut, summary="Record the visitor's acceptance of one agreement")


def _pages(app: FastAPI) -> None:
    from server.web.pages import render

    def back(visitor_id: str) -> Response:
        return RedirectResponse(f"/visitors/{visitor_id}/check-in", status_code=303)

    def checkin_page(request: Request, who: Principal, visitor_id: str, status: int, **context: Any) -> Response:
        from server.web.visitors import _checkin_context

        desk = _desk(request)
        try:
            v = _out(desk, desk.record(visitor_id))
        except VisitorNotFound as exc:
            return render(request, "error.html", who, 404, status=404, message=str(exc))
        return render(request, "visitor_checkin.html", who, status, **_checkin_context(desk, visitor_id), visitor=v,
                      notice=desk.notice, free_badges=desk.free_badges(), **context)

    def cancel_form(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                    who: Principal = Depends(require(ADMIN, DESK)), reason: str = Form("", max_length=1000)) -> Response:
        try:
            _desk(request).cancel_visit(visitor_id, reason, who.name)
        except DirectoryError as exc:
            return checkin_page(request, who, visitor_id, _status(exc), errors=[str(exc)])
        return checkin_page(request, who, visitor_id, 200, message="The visit was cancelled; its pass no longer opens.")

    def resolve(request: Request, who: Principal, visitor_id: str, reason: str, refuse: bool) -> Response:
        desk = _desk(request)
        try:
            if refuse:
                desk.refuse_visit(visitor_id, reason, who.name)
            else:
                desk.override_hold(visitor_id, reason, who.name)
        except DirectoryError as exc:
            return checkin_page(request, who, visitor_id, _status(exc), errors=[str(exc)])
        if refuse:
            return checkin_page(request, who, visitor_id, 200, message="The visit was refused.")
        return checkin_page(request, who, visitor_id, 200, message="Hold overridden: you may check the visitor in.")

    def override_form(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                      who: Principal = Depends(require(ADMIN)), reason: str = Form("", max_length=1000)) -> Response:
        return resolve(request, who, visitor_id, reason, refuse=False)

    def refuse_form(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                    who: Principal = Depends(require(ADMIN, DESK)), reason: str = Form("", max_length=1000)) -> Response:
        return resolve(request, who, visitor_id, reason, refuse=True)

    def visit_form(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                   who: Principal = Depends(require(ADMIN, DESK)),
                   kinds: list[str] = Form([], max_length=32)) -> Response:
        try:
            _desk(request).record(visitor_id)
            _ag(request).set_visit_required(visitor_id, [k[:32] for k in kinds], who.name)
        except VisitorNotFound as exc:
            return render(request, "error.html", who, 404, status=404, message=str(exc))
        except DirectoryError as exc:
            return checkin_page(request, who, visitor_id, _status(exc), errors=[str(exc)])
        return back(visitor_id)

    def page(request: Request, who: Principal, status: int = 200, **context: Any) -> Response:
        ag = _ag(request)
        return render(request, "agreements.html", who, status, current=list(ag.current().values()),
                      versions=ag.versions(), site_required=ag.site_required(), **context)

    def agreements_page(request: Request, who: Principal = Depends(require(ADMIN))) -> Response:
        return page(request, who)

    def add_form(request: Request, who: Principal = Depends(require(ADMIN)), kind: str = Form("", max_length=64),
                 title: str = Form("", max_length=256), text: str = Form("", max_length=40_000)) -> Response:
        try:
            v = _ag(request).add_version(kind, title, text, who.name)
        except DirectoryError as exc:
            return page(request, who, _status(exc), errors=[str(exc)], form={"kind": kind, "title": title,
                                                                           "text": text})
        return page(request, who, message=f"Added {v.title}, version {v.version}.")

    def required_form(request: Request, who: Principal = Depends(require(ADMIN)),
                      kinds: list[str] = Form([], max_length=32)) -> Response:
        try:
            _ag(request).set_site_required([k[:32] for k in kinds], who.name)
        except DirectoryError as exc:
            return page(request, who, _status(exc), errors=[str(exc)])
        return page(request, who, message="Saved the agreements every visit needs.")

    for path, method, endpoint in (
        ("/visitors/{visitor_id}/hold/override", "POST", override_form),
        ("/visitors/{visitor_id}/hold/refuse", "POST", refuse_form),
        ("/visitors/{visitor_id}/cancel", "POST", cancel_form),
        ("/visitors/{visitor_id}/agreements", "POST", visit_form),
        ("/agreements", "GET", agreements_page), ("/agreements", "POST", add_form),
        ("/agreements/required", "POST", required_form),
    ):
        app.add_api_route(path, endpoint, methods=[method], include_in_schema=False)


def install(app: FastAPI) -> None:
    """Agreement and hold routes (API and pages) on the desk's visitor service."""
    _api(app)
    _pages(app)
