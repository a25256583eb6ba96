"""The site model over HTTP: revisions, structured changes, rollback (server/siteadmin.py, docs/administration.md).

A table of endpoints calling the site service and nothing more. A change names the revision it was made
against (``base``): a stale one that touches what someone changed since answers 409 with who changed what;
a change that breaks a rule of ``doorkeep config check`` answers 422 with each problem (file, key, fix).

Roles: admin changes the site and previews a change's effect on the badges recorded (``/site/preview``,
server/site_preview.py: nothing committed); admin and auditor read its history; the desk role has no business here.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fastapi import Depends, FastAPI, Form, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from server.replay import DEFAULT_DAYS
from server.siteadmin import Revision, RevisionNotFound, SiteAdmin, SiteAdminError, SiteConflict, SiteInvalid
from server.site_preview import MAX_DAYS, MIN_DAYS, Preview, PreviewRefused, preview_change
from server.web.access import require
from server.web.auth import Principal
from server.web.roles import ADMIN, AUDITOR
from server.web.routes import Routes

API_PREFIX = "/api/v1"
KEY = r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,5}$"
MAX_EDITS = 200

route = Routes()


def install(app: FastAPI) -> None:
    route.install(app)


class RevisionOut(BaseModel):
    number: int
    created_at: float
    actor: str
    summary: str
    changes: list[str] = Field(description="each change in words: '~ doors.lab_in.unlock_s: 5 -> 8'")
    rollback_of: int | None
    site_toml: str | None = Field(None, description="the whole site.toml of this revision (single revision only)")


class RevisionsOut(BaseModel):
    current: int = Field(description="the live revision's number")
    revisions: list[RevisionOut] = Field(description="newest first")


class ChangeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: int = Field(ge=0, le=2**62, description="the revision this change was made against (for the 409 check)")
    edits: dict[str, Any] = Field(description="dotted site.toml key -> new value (null removes it), e.g. "
                                              "{\"doors.lab_in.unlock_s\": 8}", max_length=MAX_EDITS)
    summary: str | None = Field(None, max_length=200, description="what the change is for (default: derived)")


class RollbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: int = Field(ge=0, le=2**62, description="the live revision the operator saw when confirming")


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: int = Field(ge=0, le=2**62, description="the revision the change was made against (the 409 rule of changes)")
    edits: dict[str, Any] = Field(description="the change, as POST /site/changes takes it", max_length=MAX_EDITS)
    days: int = Field(DEFAULT_DAYS, ge=MIN_DAYS, le=MAX_DAYS, description="replay the badges of the last DAYS days")


class ExampleOut(BaseModel):
    ts: float = Field(description="UTC epoch seconds of the badge")
    door: str
    person: str | None
    before: str = Field(description="the reason with the live site (not judged: the recorded reason)")
    after: str = Field(description="the reason with the proposed site (empty when not judged)")


class FlipOut(BaseModel):
    before: str
    after: str
    count: int
    examples: list[ExampleOut]


class ImpactOut(BaseModel):
    to_refused: int = Field(description="grants that become refusals")
    to_granted: int = Field(description="refusals that become grants")


class NotJudgedOut(BaseModel):
    why: str = Field(description="pin, offline, visitor or no_credential")
    explanation: str
    count: int
    examples: list[ExampleOut]


class HonestyOut(BaseModel):
    judged: int
    same_outcome: int
    same_reason: int
    agreement: float = Field(description="the share of recorded outcomes the live site's replay reproduces")
    disagreements: list[FlipOut]


class PreviewOut(BaseModel):
    base: int
    revision: int = Field(description="the live revision the edits were applied to (base, or newer when re-based)")
    days: int
    since: float = Field(description="UTC epoch: the start of the replayed period")
    timezone: str
    changes: list[str] = Field(description="each change in words, as the revision would record them")
    summary: str
    names: dict[str, str] = Field(description="person id -> name, for the people the report names")
    attempts: int = Field(description="recorded decisions replayed")
    judged: int
    not_judged_total: int
    lockdown_changes: int
    first_ts: float | None
    last_ts: float | None
    granted_before: int
    granted_after: int
    grants_to_refusals: int
    refusals_to_grants: int
    reason_changed: int = Field(description="same outcome, another reason")
    to_refused: list[FlipOut] = Field(description="grants that become refusals, by reason before -> after")
    to_granted: list[FlipOut]
    doors: dict[str, ImpactOut]
    people: dict[str, ImpactOut] = Field(description="person id ('' for cards nobody holds) -> flips")
    not_judged: list[NotJudgedOut]
    honesty: HonestyOut


def _service(request: Request) -> SiteAdmin:
    admin = request.app.state.desk.server.siteadmin
    if admin is None:  # a server built without the site service (some tests): nothing to administer
        raise SiteAdminError("this server keeps no site revisions")
    return admin


def _out(rev: Revision, *, text: bool = False) -> RevisionOut:
    return RevisionOut(number=rev.number, created_at=rev.created_at, actor=rev.actor, summary=rev.summary,
                       changes=list(rev.changes), rollback_of=rev.rollback_of,
                       site_toml=rev.site_toml if text else None)


def _refused(exc: SiteAdminError) -> JSONResponse:
    if isinstance(exc, SiteConflict):
        return JSONResponse({"error": str(exc), "detail": {
            "base": exc.base, "current": exc.current, "clashing": sorted(exc.clashing),
            "since": [{k: r[k] for k in ("number", "actor", "summary")} for r in exc.since]}}, status_code=409)
    if isinstance(exc, SiteInvalid):
        return JSONResponse({"error": "the change breaks the site's rules; nothing changed", "detail": [
            {"file": e.file, "key": e.key, "problem": e.problem, "fix": e.fix} for e in exc.errors]},
            status_code=422)
    if isinstance(exc, PreviewRefused):
        return JSONResponse({"error": str(exc), "detail": None}, status_code=422)
    return JSONResponse({"error": str(exc), "detail": None},
                        status_code=404 if isinstance(exc, RevisionNotFound) else 409)


def _bad_key(edits: dict[str, Any]) -> str | None:
    """Why the edits cannot be taken when a key is not a dotted site.toml key (a 422), else None."""
    bad = [k for k in edits if not isinstance(k, str) or not re.match(KEY, k)]
    return f"not a site key: {bad[0]!r} (write it like doors.lab_in.unlock_s)" if bad else None


def _actor(who: Principal) -> str:
    return f"desk:{who.name}"


@route(API_PREFIX + "/site/revisions", "GET", response_model=RevisionsOut, tags=["site"],
       dependencies=[Depends(require(ADMIN, AUDITOR))], summary="The site's revisions, newest first")
def list_revisions(request: Request, limit: int = Query(50, ge=1, le=500)) -> Any:
    try:
        admin = _service(request)
    except SiteAdminError as exc:
        return _refused(exc)
    current = admin.current()
    return RevisionsOut(current=current.number if current else 0,
                        revisions=[_out(r) for r in admin.history(limit)])


@route(API_PREFIX + "/site/revisions/{number}", "GET", response_model=RevisionOut, tags=["site"],
       dependencies=[Depends(require(ADMIN, AUDITOR))], summary="One revision with its changes and its site.toml")
def get_revision(request: Request, number: int = Path(ge=1, le=2**62)) -> Any:
    try:
        return _out(_service(request).revision(number), text=True)
    except SiteAdminError as exc:
        return _refused(exc)


@route(API_PREFIX + "/site/changes", "POST", response_model=RevisionOut, tags=["site"],
       summary="Change the site (validated, a new revision, live at the doors within seconds; audited)",
       responses={409: {"description": "made against an older revision and touching what changed since"},
                  422: {"description": "breaks a rule of doorkeep config check"}})
def post_change(body: ChangeIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
    bad = _bad_key(body.edits)
    if bad is not None:
        return JSONResponse({"error": bad, "detail": None}, status_code=422)
    try:
        return _out(_service(request).change(body.edits, base=body.base, actor=_actor(who), summary=body.summary))
    except SiteAdminError as exc:
        return _refused(exc)


@route(API_PREFIX + "/site/preview", "POST", response_model=PreviewOut, tags=["site"],
       dependencies=[Depends(require(ADMIN))],
       summary="What a change would have done to the badges recorded in the last DAYS days (nothing is committed)",
       responses={409: {"description": "made against an older revision and touching what changed since"},
                  422: {"description": "breaks a rule of doorkeep config check, or days outside 1..366"}})
def post_preview(body: PreviewIn, request: Request) -> Any:
    bad = _bad_key(body.edits)
    if bad is not None:
        return JSONResponse({"error": bad, "detail": None}, status_code=422)
    try:
        return preview_change(request.app.state.desk.server, body.edits, base=body.base, days=body.days).to_dict()
    except SiteAdminError as exc:
        return _refused(exc)


@route(API_PREFIX + "/site/revisions/{number}/rollback", "POST", response_model=RevisionOut, tags=["site"],
       summary="Make an old revision live again, as a new revision (audited)",
       responses={409: {"description": "the site changed since the operator confirmed"}})
def post_rollback(body: RollbackIn, request: Request, number: int = Path(ge=1, le=2**62),
                  who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        admin = _service(request)
        current = admin.current()
        if current is None or body.base != current.number:
            raise SiteConflict(body.base, current.number if current else 0,
                               [{"number": r.number, "actor": r.actor, "summary": r.summary, "changes": []}
                                for r in admin.history(50, after=body.base)], set())
        return _out(admin.rollback(number, actor=_actor(who)))
    except SiteAdminError as exc:
        return _refused(exc)


# ------------------------------------------------------------------ pages


@route("/site", "GET", include_in_schema=False)
def site_page(request: Request, done: str = Query("", max_length=20),
              who: Principal = Depends(require(ADMIN, AUDITOR))) -> Response:
    from server.web.pages import render

    admin = _service(request)
    current = admin.current()
    site = request.app.state.desk.server.site
    return render(request, "site.html", who, current=current.number if current else 0,
                  revisions=[_out(r) for r in admin.history(100)], can_change=who.role == ADMIN, done=done,
                  tz=site.timezone)


@route("/site/revisions/{number}/rollback", "GET", include_in_schema=False)
def rollback_confirm(request: Request, number: int = Path(ge=1, le=2**62), who: Principal = Depends(require(ADMIN))) -> Response:
    from server.web.pages import render

    admin = _service(request)
    try:
        target = admin.revision(number)
    except RevisionNotFound:
        return RedirectResponse("/site", status_code=303)
    current = admin.current()
    return render(request, "confirm.html", who, title=f"Roll back to revision {number}?",
                  text=f"Revision {number} ({target.summary}, by {target.actor}) becomes live again at every door, "
                       f"as a new revision after {current.number if current else 0}. Nothing is deleted from "
                       "the history.",
                  action=f"/site/revisions/{number}/rollback", fields={"base": current.number if current else 0},
                  button=f"Roll back to revision {number}", back="/site", danger=True)


@route("/site/revisions/{number}/rollback", "POST", include_in_schema=False)
def rollback_form(request: Request, number: int = Path(ge=1, le=2**62), base: int = Form(..., ge=0, le=2**62),
                  who: Principal = Depends(require(ADMIN))) -> Response:
    result = post_rollback(RollbackIn(base=base), request, number, who)
    if isinstance(result, JSONResponse):
        done = {409: "conflict", 422: "invalid"}.get(result.status_code, "conflict")
        return RedirectResponse(f"/site?done={done}", status_code=303)
    return RedirectResponse("/site?done=rollback", status_code=303)


@route("/site/preview", "GET", include_in_schema=False)
def preview_page(request: Request, who: Principal = Depends(require(ADMIN))) -> Response:
    current = _service(request).current()
    return _preview_page(request, who, base=str(current.number if current else 0), days=str(DEFAULT_DAYS))


@route("/site/preview", "POST", include_in_schema=False)
def preview_form(request: Request, edits: str = Form("", max_length=100_000), base: str = Form("", max_length=20),
                 days: str = Form(str(DEFAULT_DAYS), max_length=4), who: Principal = Depends(require(ADMIN))) -> Response:
    """A power user's preview: the edits as JSON, as the API takes them; the answer is the desk's partial."""
    kept = {"edits": edits, "base": base, "days": days}
    try:
        parsed = json.loads(edits or "{}")
    except ValueError as exc:
        return _preview_page(request, who, 422, error=f"The edits are not JSON: {exc}.", **kept)
    if not isinstance(parsed, dict) or len(parsed) > MAX_EDITS:
        return _preview_page(request, who, 422, error="The edits must be one JSON object of at most "
                             f"{MAX_EDITS} keys, like {{\"doors.lab_in.unlock_s\": 8}}.", **kept)
    if not base.isdigit() or not days.isdigit():
        return _preview_page(request, who, 422, error="Revision and days must be whole numbers.", **kept)
    bad = _bad_key(parsed)
    if bad is not None:
        return _preview_page(request, who, 422, error=f"The edits name {bad}.", **kept)
    try:
        result = preview_change(request.app.state.desk.server, parsed, base=int(base), days=int(days))
    except SiteConflict as exc:
        return _preview_page(request, who, 409, error=str(exc), **kept)
    except SiteInvalid as exc:
        return _preview_page(request, who, 422, error="The change breaks the site's rules; nothing was replayed.",
                             problems=exc.errors, **kept)
    except SiteAdminError as exc:
        return _preview_page(request, who, 422, error=str(exc), **kept)
    return _preview_page(request, who, preview=result, **kept)


def _preview_page(request: Request, who: Principal, status: int = 200, **context: Any) -> Response:
    from server.web.pages import render

    return render(request, "site_preview.html", who, status, min_days=MIN_DAYS, max_days=MAX_DAYS,
                  **{"preview": None, "error": None, "problems": [], "edits": "", **context})
