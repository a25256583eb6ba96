"""The audit log over HTTP: search by actor, action, subject and time, and the hash chain's verify status
(docs/desk.md "Audit page"; the chain itself is server/audit.py, the SQL server/store_audit.py).

A table of endpoints calling the audit log's read-only search and its verify, and nothing more:
this module translates query parameters into a search and answers 422 naming the parameter that is wrong.

Subjects: people and visitors never appear in the log by id, only as pseudonyms (``subject_ref``, an HMAC of
the id under the site's credential key). A subject the operator types is searched as given (a door, an
area, an operator, a ref) *and* as the pseudonym of that id, so typing a person's id finds their records
without the log ever holding the id.

Verifying walks the whole chain and holds the store's lock while it does, so the result is kept for
:data:`VERIFY_MAX_AGE_S` seconds and computed by one request at a time (server/audit.py :class:`VerifyCache`;
``checked_at`` says when).

Roles: admin and auditor read the log; nobody changes it here.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from doorkeep.clock import iso_ms, parse_iso_ms
from server.audit import AuditLog, AuditRow, VerifyCache, subject_ref
from server.sessions import Principal
from server.web.access import require
from server.web.alarms import install_filters
from server.web.api import ERRORS
from server.web.roles import ADMIN, AUDITOR
from server.web.routes import Routes

API_PREFIX = "/api/v1"
#: Records per page on the audit page.
PAGE_SIZE = 50
#: The latest time a filter may name (the end of year 9999, UTC): beyond it no timestamp can be written.
MAX_EPOCH = 253_402_300_799.0

ACTOR = r"^[A-Za-z0-9][A-Za-z0-9._@:-]{0,127}$"
ACTION = r"^[a-z][a-z0-9_]{0,63}(\.[a-z][a-z0-9_]{0,63}){0,7}\.?$"
SUBJECT = r"^[^\x00-\x1f\x7f]{1,200}$"
WHEN_HELP = ("ISO 8601 (2026-11-30T08:30, 2026-11-30T08:30:00Z, 2026-11-30) or seconds since the epoch; "
             "a time without an offset is read in the site's time zone")

route = Routes()


def install(app: FastAPI) -> None:
    desk = app.state.desk
    install_filters(desk.templates)
    app.state.audit_verify = VerifyCache(desk.audit, desk.audit.clock) if desk.audit is not None else None
    route.install(app)


# ------------------------------------------------------------------ filters


class FilterError(ValueError):
    """A search parameter that cannot be used; ``param`` names it, the message says how to write it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class AuditQuery:
    """A search as the audit log takes it (server/audit.py ``AuditLog.search``)."""

    actor: tuple[str, ...] | None = None
    action: str | None = None
    target: tuple[str, ...] | None = None
    since_ts: str | None = None
    until_ts: str | None = None

    def search(self, log: AuditLog, *, before_seq: int | None, limit: int) -> list[AuditRow]:
        return log.search(actor=self.actor, action=self.action, target=self.target, since_ts=self.since_ts,
                          until_ts=self.until_ts, before_seq=before_seq, limit=limit)


def parse_when(param: str, text: str, tz: str) -> str:
    """A filter time as the stored ``ts`` text (UTC, milliseconds); raises :class:`FilterError`."""
    t = text.strip()
    try:
        if re.fullmatch(r"\d{1,12}(\.\d{1,6})?", t):
            epoch = float(t)
        else:
            moment = dt.datetime.fromisoformat(t)
            if moment.tzinfo is None:
                try:
                    zone = ZoneInfo(tz)
                except (ZoneInfoNotFoundError, ValueError):
                    zone = ZoneInfo("UTC")
                moment = moment.replace(tzinfo=zone)
            epoch = moment.timestamp()
    except (ValueError, OverflowError, OSError) as exc:
        raise FilterError(param, f"{param} is not a time: write {WHEN_HELP}") from exc
    if not math.isfinite(epoch) or not 0 <= epoch <= MAX_EPOCH:
        raise FilterError(param, f"{param} is out of range: name a time between 1970 and 9999")
    return iso_ms(epoch)


def build_query(*, key: bytes, tz: str, actor: str = "", action: str = "", subject: str = "", since: str = "",
                until: str = "") -> AuditQuery:
    """The search the operator asked for (empty = no filter); raises :class:`FilterError` for a bad value.

    ``actor``: an operator's name also finds what they did through the site service (``desk:NAME``).
    ``subject``: searched as given and as the pseudonym of a person or visitor with that id."""
    actor, action, subject = actor.strip(), action.strip(), subject.strip()
    if actor and not re.match(ACTOR, actor):
        raise FilterError("actor", "actor is an operator's name (letters, digits, . _ @ : -), 'system' or 'cli:USER'")
    if action and not re.match(ACTION, action):
        raise FilterError("action", "action is a dotted lower-case name such as card.lost, or a prefix ending "
                                    "in a dot such as visitor.")
    if subject and not re.match(SUBJECT, subject):
        raise FilterError("subject", "subject is an id of up to 200 characters without control characters")
    since_ts = parse_when("since", since, tz) if since.strip() else None
    until_ts = parse_when("until", until, tz) if until.strip() else None
    if since_ts is not None and until_ts is not None and until_ts <= since_ts:
        raise FilterError("until", "until must be later than since")
    actors = None
    if actor:
        actors = (actor,) if ":" in actor else (actor, f"desk:{actor}")
    targets = None
    if subject:
        ref = subject_ref(key, subject)
        targets = (subject,) if subject == ref else (subject, ref)
    return AuditQuery(actor=actors, action=action or None, target=targets, since_ts=since_ts, until_ts=until_ts)


# ------------------------------------------------------------------ API


class AuditRecordOut(BaseModel):
    seq: int
    ts: str
    actor: str
    action: str
    target: str | None
    details: dict[str, Any]
    hash: str


class AuditPageOut(BaseModel):
    records: list[AuditRecordOut] = Field(description="newest first")
    next_before: int | None = Field(description="pass as ?before= for the next (older) page; null at the end")


class VerifyOut(BaseModel):
    ok: bool = Field(description="every record chains from the one before, up to the head file")
    records: int = Field(description="records checked and found good")
    first_bad: int | None = Field(description="the seq of the first bad record; null when ok")
    problem: str | None = Field(description="changed, removed, reordered, bad_anchor or truncated; null when ok")
    message: str = Field(description="what is wrong, in words")
    notes: list[str] = Field(description="caveats even when ok (e.g. no head file)")
    checked_at: str = Field(description="when the chain was walked (UTC); results are reused for max_age_s")
    max_age_s: float


def _record_out(row: AuditRow) -> AuditRecordOut:
    return AuditRecordOut(seq=row.seq, ts=row.ts, actor=row.actor, action=row.action, target=row.target,
                          details=json.loads(row.details), hash=row.hash)


def _no_log() -> JSONResponse:
    return JSONResponse({"error": "this server keeps no audit log", "detail": None}, status_code=409)


def _refused(exc: FilterError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "detail": {"param": exc.param}}, status_code=422)


@route(API_PREFIX + "/audit", "GET", response_model=AuditPageOut, responses=ERRORS, tags=["desk"],
       dependencies=[Depends(require(ADMIN, AUDITOR))],
       summary="The audit log, newest first, a page at a time; filtered by actor, action, subject and time")
def api_audit(request: Request, limit: int = Query(50, ge=1, le=500),
              before: int | None = Query(None, ge=1, le=2**62, description="only records with a smaller seq"),
              actor: str | None = Query(None, max_length=128, pattern=ACTOR,
                                        description="who acted: an operator's name (also finds desk:NAME), "
                                                    "system, cli:USER"),
              action: str | None = Query(None, max_length=100, pattern=ACTION,
                                         description="an action (card.lost) or a prefix ending in a dot (visitor.)"),
              subject: str | None = Query(None, max_length=200, pattern=SUBJECT,
                                          description="what it was about: a person or visitor id (searched as its "
                                                      "pseudonym), a door or area id, an operator, a ref"),
              since: str | None = Query(None, max_length=40, description="from this time, inclusive: " + WHEN_HELP),
              until: str | None = Query(None, max_length=40, description="before this time, exclusive: " + WHEN_HELP),
              ) -> Any:
    desk = request.app.state.desk
    if desk.audit is None:
        return _no_log()
    server = desk.server
    try:
        query = build_query(key=server.directory.key, tz=server.site.timezone, actor=actor or "",
                            action=action or "", subject=subject or "", since=since or "", until=until or "")
    except FilterError as exc:
        return _refused(exc)
    rows = query.search(desk.audit, before_seq=before, limit=limit + 1)
    records = [_record_out(r) for r in rows[:limit]]
    return AuditPageOut(records=records, next_before=records[-1].seq if len(rows) > limit else None)


@route(API_PREFIX + "/audit/verify", "GET", response_model=VerifyOut, responses=ERRORS, tags=["desk"],
       dependencies=[Depends(require(ADMIN, AUDITOR))],
       summary="Whether the audit log's hash chain is intact (the result is reused for up to 30 s)")
def api_verify(request: Request) -> Any:
    cache: VerifyCache | None = request.app.state.audit_verify
    if cache is None:
        return _no_log()
    result, at = cache.result()
    return VerifyOut(ok=result.ok, records=result.count, first_bad=result.first_bad, problem=result.problem,
                     message=result.message, notes=list(result.notes), checked_at=iso_ms(at),
                     max_age_s=cache.max_age_s)


# ------------------------------------------------------------------ page


@route("/audit", "GET", include_in_schema=False)
def audit_page(request: Request, actor: str = Query("", max_length=128), action: str = Query("", max_length=100),
               subject: str = Query("", max_length=200), since: str = Query("", alias="from", max_length=40),
               until: str = Query("", alias="to", max_length=40), before: int | None = Query(None, ge=1, le=2**62),
               who: Principal = Depends(require(ADMIN, AUDITOR))) -> Response:
    from server.web.pages import render

    desk = request.app.state.desk
    server = desk.server
    tz = server.site.timezone
    form = {"actor": actor, "action": action, "subject": subject, "from": since, "to": until}
    cache: VerifyCache | None = request.app.state.audit_verify
    verify = cache.result() if cache is not None else None
    error: FilterError | None = None
    records: list[dict[str, Any]] = []
    older: str | None = None
    if desk.audit is not None:
        try:
            query = build_query(key=server.directory.key, tz=tz, actor=actor, action=action, subject=subject,
                                since=since, until=until)
        except FilterError as exc:
            error = exc
        else:
            rows = query.search(desk.audit, before_seq=before, limit=PAGE_SIZE + 1)
            records = [{"seq": r.seq, "at": parse_iso_ms(r.ts), "actor": r.actor, "action": r.action,
                        "target": r.target, "details": json.loads(r.details)} for r in rows[:PAGE_SIZE]]
            if len(rows) > PAGE_SIZE:
                kept = {k: v for k, v in form.items() if v}
                older = "/audit?" + urlencode({**kept, "before": records[-1]["seq"]})
    filtered = any(v.strip() for v in form.values())
    return render(request, "audit.html", who, status=422 if error else 200, form=form, error=error,
                  records=records, older=older, paged=before is not None, filtered=filtered, tz=tz,
                  verify=verify[0] if verify else None, checked_at=verify[1] if verify else None,
                  pretty=_pretty)


def _pretty(details: dict[str, Any]) -> str:
    """A record's details for reading (the template escapes it)."""
    return json.dumps(details, indent=2, sort_keys=True, ensure_ascii=False)
