"""Mail around a visit over HTTP: the CSV of expected visitors, a host's e-mail address, a visit's mail state.

A table of API routes calling services (docs/desk.md "Invitations and host notices"):

- ``POST /api/v1/visitors/import``: the expected visitors of an event from CSV (server/visitor_import.py),
  all or nothing; each visit with an e-mail address gets its invitation queued (admin, desk);
- ``GET /api/v1/visitors/{id}/mail``: whether the invitation and the host's notice are queued, sent or failed
  (admin, desk), what the visitor page shows beside "their host has been told";
- ``PUT /api/v1/people/{pid}/email``: set or clear the address host notices go to (admin; audited
  ``person.email``).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from server.directory import DirectoryError
from server.invitations import Delivery
from server.people import PeopleError, PeopleService, UnknownPerson
from server.visitor_import import MAX_ROWS, import_expected
from server.visitors import VisitorNotFound, Visitors
from server.web.access import require
from server.web.api import ErrorOut
from server.web.auth import Principal
from server.web.roles import ADMIN, DESK
from server.web.routes import Routes

API_PREFIX = "/api/v1"
VISITOR_ID = r"^v-[0-9a-f]{8,32}$"
PERSON_ID = r"^[A-Za-z0-9_.-]{1,64}$"
route = Routes(tags=["visitors"], responses={404: {"model": ErrorOut}, 422: {"model": ErrorOut}})


class ExpectedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv: str = Field(min_length=1, max_length=200_000, description=f"the CSV text, at most {MAX_ROWS} rows "
                     "(columns: docs/desk.md, Expected visitors from a CSV)")
    dry_run: bool = Field(False, description="only check the rows; register nobody")


class ImportedVisitor(BaseModel):
    id: str
    name: str
    email: str
    invited: bool
    watchlist_matches: int


class ExpectedOut(BaseModel):
    registered: int
    invitations: int
    visitors: list[ImportedVisitor]
    dry_run: bool


class DeliveryOut(BaseModel):
    status: str = Field(description="queued (waiting or being retried), sent, or failed (given up)")
    recipient: str
    attempts: int
    queued_at: float
    sent_at: float | None
    last_error: str | None


class VisitMailOut(BaseModel):
    invitation: DeliveryOut | None
    host_notice: DeliveryOut | None


class EmailIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=254, description="empty to remove the address")


class EmailOut(BaseModel):
    id: str
    email: str | None
    changed: bool


def install(app: FastAPI) -> None:
    route.install(app)


def _visitors(request: Request) -> Visitors:
    return request.app.state.desk.visitors  # type: ignore[no-any-return]


def _people(request: Request) -> PeopleService | None:
    return request.app.state.desk.server.people  # type: ignore[no-any-return]


def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


def _delivery(d: Delivery | None) -> DeliveryOut | None:
    return None if d is None else DeliveryOut(status=d.status, recipient=d.recipient, attempts=d.attempts,
                                              queued_at=d.queued_at, sent_at=d.sent_at, last_error=d.last_error)


@route(API_PREFIX + "/visitors/import", "POST", response_model=ExpectedOut,
       responses={404: {"model": ErrorOut}, 409: {"model": ErrorOut}, 422: {"model": ErrorOut}},
       summary="Pre-register an event's expected visitors from CSV: every row valid, or nobody registered (422 "
               "lists each line); each with an e-mail address is sent an invitation")
def api_import_expected(body: ExpectedIn, request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    desk = _visitors(request)
    try:
        result = import_expected(desk, body.csv, who.name, dry_run=body.dry_run)
    except DirectoryError as exc:  # a row refused at registration after the check (a race): say which
        return _error(409, str(exc))
    if result.errors:
        return _error(422, f"nobody registered: {len(result.errors)} line(s) need fixing", {"errors": result.errors})
    visitors = [ImportedVisitor(id=v.id, name=v.name, email=v.email,
                                invited=desk.mail_delivery(v.id, "invitation") is not None,
                                watchlist_matches=len(result.warnings.get(v.id, []))) for v in result.registered]
    return ExpectedOut(registered=len(result.registered), invitations=result.invitations, visitors=visitors,
                       dry_run=body.dry_run)


@route(API_PREFIX + "/visitors/{visitor_id}/mail", "GET", response_model=VisitMailOut,
       summary="Whether the visit's invitation and its host's notice are queued, sent or failed")
def api_visit_mail(request: Request, visitor_id: str = Path(pattern=VISITOR_ID),
                   who: Principal = Depends(require(ADMIN, DESK))) -> Any:
    desk = _visitors(request)
    try:
        desk.record(visitor_id)
    except VisitorNotFound as exc:
        return _error(404, str(exc))
    return VisitMailOut(invitation=_delivery(desk.mail_delivery(visitor_id, "invitation")),
                        host_notice=_delivery(desk.mail_delivery(visitor_id, "host_notice")))


@route(API_PREFIX + "/people/{pid}/email", "PUT", response_model=EmailOut, tags=["people"],
       summary="Set or clear the e-mail address a host's visitor notices go to; audited")
def api_person_email(body: EmailIn, request: Request, pid: str = Path(pattern=PERSON_ID),
                     who: Principal = Depends(require(ADMIN))) -> Any:
    people = _people(request)
    if people is None:
        return _error(422, "this desk holds no people store")
    try:
        changed = people.set_email(pid, body.email, actor=who.name)
        return EmailOut(id=pid, email=people.email(pid), changed=changed)
    except PeopleError as exc:
        return _error(404 if isinstance(exc, UnknownPerson) else 422, str(exc))
