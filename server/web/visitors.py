"""Visitors at the security desk: pre-register, check in with consent, check out, the watchlist (docs/desk.md).

The visit itself lives in the server's directory (server/directory.py: ``register_visitor``, ``check_in``
takes a badge from the site's visitor pool, ``check_out``); this module adds what the desk needs around
it, every change audited with the operator as actor:

- validation with messages an operator can act on (the host must be an employee, the areas must exist,
  the window must make sense), escort required by default when an allowed area is restricted;
- at check-in the privacy notice (``templates/privacy-notice.txt``, whose first line is its version) is
  shown and the visitor's consent recorded: notice version, photo consent yes/no, time, operator
  (``visitor_consents``); the host is told by a ``visitor_arrived`` event on the live feed;
- check-out revokes the badge and returns it to the pool; visits that end without a check-out are closed
  by :class:`OverdueVisits` (a periodic job on the desk's clock), audited as actor ``system``;
- the watchlist: names and companies an admin lists; a match at registration or check-in is shown to the
  operator and audited, and never blocks anything by itself.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from datetime import datetime, time as dtime, timedelta
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo

from fastapi import Depends, FastAPI, Form, Path as PathParam, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from doorkeep.clock import Clock
from doorkeep.model import CredentialState, PersonKind, PersonState
from server.audit import subject_ref
from server.directory import DirectoryError, Visitor
from server.web.access import require
from server.web.api import ERRORS, ErrorOut
from server.web.auth import Principal
from server.web.live import server_event
from server.web.roles import ADMIN, DESK

log = logging.getLogger("doorkeep.server.desk")

API_PREFIX = "/api/v1"
NOTICE_FILE = Path(__file__).resolve().parent / "templates" / "privacy-notice.txt"
VISITOR_ID = r"^v-[0-9a-f]{8,32}$"
PERSON_ID = r"^[A-Za-z0-9_.-]{1,64}$"
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
#: The longest visit window (a longer stay is a contractor: add them to people.toml).
MAX_VISIT = timedelta(days=31)
#: How far ahead a visit may be pre-registered (it must start within a year from now).
MAX_AHEAD = timedelta(days=366)
#: How often the desk looks for visits that ended without a check-out.
OVERDUE_EVERY_S = 60.0
CONFLICT = {409: {"model": ErrorOut}}


# ----------------------------------------------------------------- the notice


@dataclass(frozen=True)
class Notice:
    version: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


def load_notice(path: Path = NOTICE_FILE) -> Notice:
    """The privacy notice: first line ``version: V``, ``#`` comment lines, paragraphs split by blank lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or not lines[0].startswith("version:") or not lines[0][8:].strip():
        raise ValueError(f"{path}: the first line must be 'version: V' (every recorded consent names it)")
    body = "\n".join(line for line in lines[1:] if not line.startswith("#"))
    paragraphs = tuple(" ".join(p.split()) for p in body.split("\n\n") if p.strip())
    return Notice(lines[0][8:].strip(), paragraphs)


# ----------------------------------------------------------------- watchlist


def fold(text: str) -> str:
    """Case- and accent-insensitive form for matching: ``Zoë  MÜLLER`` and ``zoe muller`` fold the same."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w]+", " ", plain.casefold()).split())


def _matches(entry: str, value: str) -> bool:
    """An entry matches when all its words appear, in order, as whole words of the value (folded)."""
    if not entry or not value:
        return False
    return re.search(r"(?:^| )" + re.escape(entry) + r"(?:$| )", value) is not None


class Watchlist:
    """Names and companies that warn the desk (table ``watchlist``, migration 007)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def entries(self) -> list[dict[str, Any]]:
        return [{"id": r["id"], "kind": r["kind"], "value": r["value"], "note": r["note"] or "",
                 "added_by": r["added_by"], "added_at": r["added_at"]} for r in self.store.watchlist_entries()]

    def add(self, kind: str, value: str, note: str, actor: str, at: float) -> int:
        norm = fold(value)
        if not norm:
            raise DirectoryError("the watchlist entry has no letters or digits to match on")
        entry_id = self.store.add_watchlist_entry(kind, value, norm, note, actor, at)
        if entry_id is None:
            raise WatchlistExists(f"the watchlist already has this {kind}")
        return entry_id

    def remove(self, entry_id: int) -> bool:
        return bool(self.store.remove_watchlist_entry(entry_id))

    def check(self, name: str, company: str) -> list[dict[str, Any]]:
        """The entries the visitor's name or company matches."""
        folded = {"name": fold(name), "company": fold(company)}
        rows = sorted(self.store.watchlist_entries(), key=lambda r: r["id"])
        return [{"id": r["id"], "kind": r["kind"], "value": r["value"], "note": r["note"] or ""}
                for r in rows if _matches(r["norm"], folded.get(r["kind"], ""))]


class WatchlistExists(DirectoryError):
    """The same name or company is listed already."""


# ----------------------------------------------------------------- the desk's visitor work


class VisitorDesk:
    """Visitor operations for the desk; every method records who did it."""

    def __init__(self, server: Any, clock: Clock, notice: Notice) -> None:
        self.server = server
        self.directory = server.directory
        self.store = server.store
        self.clock = clock
        self.notice = notice
        self.watchlist = Watchlist(server.store)
        self.hub: Any = None  # the live feed (server/web/live.py), for visitor_arrived

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.directory.site.timezone)

    def audit(self, actor: str, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
        self.directory._audit(actor, action, target, details)

    def ref(self, person: str) -> str:
        return subject_ref(self.directory.key, person)

    def warn(self, visitor_id: str, name: str, company: str, stage: str, actor: str) -> list[dict[str, Any]]:
        """Watchlist matches, audited (entry ids only: the audit log never holds names)."""
        hits = self.watchlist.check(name, company)
        if hits:
            self.audit(actor, "visitor.watchlist_match", self.ref(visitor_id),
                       {"stage": stage, "entries": [h["id"] for h in hits], "kinds": sorted({h["kind"] for h in hits})})
            log.warning("watchlist match at %s for visitor %s (entries %s)", stage, visitor_id,
                        [h["id"] for h in hits])
        return hits

    def register(self, body: VisitorIn, actor: str) -> tuple[Visitor, list[dict[str, Any]]]:
        site = self.directory.site
        host = site.people.get(body.host)
        if host is None or host.kind is PersonKind.VISITOR:
            raise DirectoryError(f"host {body.host!r} is not an employee or contractor of this site "
                                 "(pick one from the list; visitors cannot host)")
        if host.state is not PersonState.ACTIVE:
            raise DirectoryError(f"host {host.name} is {host.state.value}: pick another host")
        unknown = [a for a in body.allowed_areas if a not in site.areas]
        if unknown:
            raise DirectoryError(f"unknown areas {unknown}: the site has {sorted(site.areas)}")
        start, end = self.window(body.valid_from, body.valid_until)
        restricted = any(site.areas[a].restricted for a in body.allowed_areas)
        escort = restricted if body.escort_required is None else body.escort_required
        vid = f"v-{secrets.token_hex(6)}"
        visitor = Visitor(id=vid, name=body.name, host=body.host, valid_from=start, valid_until=end,
                          allowed_areas=tuple(dict.fromkeys(body.allowed_areas)), company=body.company,
                          email=body.email, escort_required=escort)
        out = self.directory.register_visitor(visitor, actor=actor)
        return out, self.warn(vid, body.name, body.company, "register", actor)

    def instant(self, value: datetime, what: str = "time") -> float:
        """A datetime from a form or JSON; one without an offset is in the site's time zone."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.tz)
        try:
            return value.timestamp()
        except (OverflowError, ValueError, OSError) as exc:
            raise DirectoryError(f"the visit's {what} {value.isoformat()} is out of range") from exc

    def window(self, valid_from: datetime, valid_until: datetime) -> tuple[float, float]:
        """The visit window as instants, checked before anything is stored (422 with the reason): it ends
        after it starts and after now, lasts at most :data:`MAX_VISIT`, starts within :data:`MAX_AHEAD`.
        So every stored window is shown in the site's time zone without overflow (year 9999 + an offset)."""
        start = self.instant(valid_from, "start ('from')")
        end = self.instant(valid_until, "end ('until')")
        now = self.clock.wall()
        if end <= start:
            raise DirectoryError("the visit must end after it starts (check 'until')")
        if end <= now:
            raise DirectoryError("the visit window has already ended (check 'until')")
        if start > now + MAX_AHEAD.total_seconds():
            raise DirectoryError(f"a visit can be registered at most {MAX_AHEAD.days} days ahead (check 'from')")
        if end - start > MAX_VISIT.total_seconds():
            raise DirectoryError(f"a visit lasts at most {MAX_VISIT.days} days; for longer stays add the person to "
                                 "people.toml")
        return start, end

    def shown(self, t: float | None) -> str | None:
        """A stored instant in site time for display; a value no calendar can show (a row stored before the
        window was validated) is shown as it is rather than failing the whole page."""
        if not t:
            return None
        try:
            return datetime.fromtimestamp(t, self.tz).isoformat(timespec="minutes")
        except (OverflowError, ValueError, OSError, TypeError):
            return f"invalid time ({t!r})"

    def check_in(self, visitor_id: str, body: CheckInIn, actor: str) -> tuple[Visitor, list[dict[str, Any]]]:
        v = self.get(visitor_id)
        if v.status == "checked_in":
            raise Conflict(f"{v.name} is already checked in (badge …{v.card_last4})")
        if v.status == "checked_out":
            raise Conflict(f"{v.name} has already left: register a new visit")
        if not body.consent:
            raise DirectoryError("the visitor must be shown the privacy notice and acknowledge it before check-in "
                                 "(tick the consent box)")
        if body.notice_version != self.notice.version:
            raise Conflict(f"the privacy notice is now version {self.notice.version} (you showed "
                           f"{body.notice_version}): show the current notice and ask again")
        if self.clock.wall() >= v.valid_until:
            raise Conflict(f"{v.name}'s visit window has ended: register a new visit")
        if not self.directory.free_badges():
            raise Conflict("no free visitor badge in the pool: check out visitors who have left, or add cards to "
                           "[visitor_pool] in people.toml")
        warnings = self.warn(visitor_id, v.name, v.company, "check_in", actor)
        try:
            v = self.directory.check_in(visitor_id, actor=actor)
        except DirectoryError as exc:  # a race for the last badge
            raise Conflict(str(exc)) from exc
        self.store.add_visitor_consent(visitor_id, self.notice.version, bool(body.photo_consent), self.clock.wall(),
                                       actor)
        self.audit(actor, "visitor.consent", self.ref(visitor_id),
                   {"notice_version": self.notice.version, "photo_consent": body.photo_consent})
        if self.hub is not None:
            server_event(self.hub, "visitor_arrived", person=visitor_id,
                         detail={"host": v.host, "badge_last4": v.card_last4})
        return v, warnings

    def check_out(self, visitor_id: str, actor: str, *, auto: bool = False) -> Visitor:
        """Revoke the badge, then return it to the pool (both under the directory's lock, one change)."""
        v = self.get(visitor_id)
        if v.status != "checked_in":
            raise Conflict(f"{v.name} is not checked in ({v.status.replace('_', ' ')})")
        with self.directory._lock:
            if v.card_hash and v.card_hash in self.directory.site.credentials:
                self.directory.set_card_state(v.card_hash, CredentialState.REVOKED, actor=actor)
            out = self.directory.check_out(visitor_id, actor=actor)
        if auto:
            self.audit(actor, "visitor.auto_check_out", self.ref(visitor_id),
                       {"reason": "the visit ended without a check-out", "valid_until": v.valid_until})
        return out

    def get(self, visitor_id: str) -> Visitor:
        try:
            return self.directory.visitor(visitor_id)
        except DirectoryError as exc:
            raise NotFound(f"no visitor {visitor_id!r} (it may have been removed by retention)") from exc

    def close_overdue(self) -> list[str]:
        """Check out every visitor still checked in after their visit ended; returns their ids."""
        now = self.clock.wall()
        closed = []
        for v in self.directory._visitors():
            if v.status == "checked_in" and v.valid_until <= now:
                try:
                    self.check_out(v.id, "system", auto=True)
                    closed.append(v.id)
                except (DirectoryError, Conflict, NotFound):
                    log.exception("could not close the overdue visit of %s", v.id)
        # Consents of visitors that retention removed go with them.
        self.store.drop_orphan_consents()
        return closed

    def consent(self, visitor_id: str) -> dict[str, Any] | None:
        row = self.store.latest_visitor_consent(visitor_id)
        return None if row is None else {"notice_version": row["notice_version"],
                                         "photo_consent": bool(row["photo_consent"]),
                                         "consented_at": row["consented_at"], "operator": row["operator"]}

    def today(self) -> dict[str, list[VisitorOut]]:
        """Today's visitors in the site's time zone: expected, on site (with where), left."""
        now = self.clock.wall()
        day = datetime.fromtimestamp(now, self.tz).date()
        start = datetime.combine(day, dtime(0), self.tz).timestamp()
        end = datetime.combine(day + timedelta(days=1), dtime(0), self.tz).timestamp()
        groups: dict[str, list[VisitorOut]] = {"expected": [], "on_site": [], "left": []}
        for row in self.store.visitor_records():
            if row["status"] == "registered" and row["valid_from"] < end and row["valid_until"] > now:
                groups["expected"].append(self.out(row))
            elif row["status"] == "checked_in":
                groups["on_site"].append(self.out(row))
            elif row["status"] == "checked_out" and (row["checked_out_at"] or 0) >= start:
                groups["left"].append(self.out(row))
        for rows in groups.values():
            rows.sort(key=lambda r: (r.valid_from, r.name))
        return groups

    def out(self, row: dict[str, Any] | Visitor) -> VisitorOut:
        if isinstance(row, Visitor):
            row = next(r for r in self.store.visitor_records() if r["id"] == row.id)
        site = self.directory.site
        host = site.people.get(row["host"])
        where = None
        if row["status"] == "checked_in":
            pres = self.directory.state.presence.get(row["id"])
            area = site.areas.get(pres.area) if pres else None
            where = area.name if area else (pres.area if pres else None)
        iso = self.shown
        return VisitorOut(
            id=row["id"], name=row["name"], company=row["company"] or "", email=row["email"] or "",
            host=row["host"], host_name=host.name if host else row["host"], valid_from=iso(row["valid_from"]) or "",
            valid_until=iso(row["valid_until"]) or "", allowed_areas=json.loads(row["allowed_areas"] or "[]"),
            escort_required=bool(row["escort_required"]), status=row["status"], badge_last4=row["card_number_last4"]
            if row["status"] == "checked_in" else None, checked_in_at=iso(row["checked_in_at"]),
            checked_out_at=iso(row["checked_out_at"]), where=where, consent=self.consent(row["id"]))


class Conflict(DirectoryError):
    """The visit's state does not allow this now (already in, already left, no free badge, notice changed): 409."""


class NotFound(DirectoryError, LookupError):
    """No such visitor: 404."""


class OverdueVisits:
    """Closes visits that ended without a check-out, every ``every_s`` on its own thread (desk lifespan).

    It paces itself with ``Event.wait`` (stoppable at once) and reads the time from the desk's clock, so a
    test calls :meth:`run_once` after moving a fake clock instead of waiting.
    """

    def __init__(self, visitors: VisitorDesk, every_s: float = OVERDUE_EVERY_S) -> None:
        self.visitors = visitors
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[str]:
        closed = self.visitors.close_overdue()
        if closed:
            log.info("closed %d visit(s) that ended without a check-out", len(closed))
        return closed

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-desk-visits", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("closing overdue visits failed; trying again in %.0f s", self.every_s)
            self._stop.wait(self.every_s)


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
        value = " ".join(value.split())
        if any(unicodedata.category(c) == "Cc" for c in value):
            raise ValueError("control characters are not allowed")
        return value

    @field_validator("name")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value:
            raise ValueError("the visitor's name is empty")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.strip()
        if value and not EMAIL.match(value):
            raise ValueError("not an e-mail address (leave it empty if the visitor has none)")
        return value


class ConsentOut(BaseModel):
    notice_version: str
    photo_consent: bool
    consented_at: float
    operator: str | None


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


class WatchHitOut(BaseModel):
    id: int
    kind: str
    value: str
    note: str


class VisitorResultOut(BaseModel):
    visitor: VisitorOut
    warnings: list[WatchHitOut] = Field(description="watchlist matches: tell a supervisor; nothing is blocked")


class TodayOut(BaseModel):
    expected: list[VisitorOut]
    on_site: list[VisitorOut]
    left: list[VisitorOut]


class CheckInIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notice_version: str = Field(max_length=64, description="the version of the notice shown (GET /visitors/notice)")
    consent: bool = Field(description="the visitor acknowledged the notice (required: true)")
    photo_consent: bool = Field(description="the visitor agrees to snapshots at doors")


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


# ----------------------------------------------------------------- routes


def _error(exc: DirectoryError) -> JSONResponse:
    status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422
    return JSONResponse({"error": str(exc), "detail": None}, status_code=status)


def _desk(request: Request) -> VisitorDesk:
    return request.app.state.visitors


def _hits(hits: list[dict[str, Any]]) -> list[WatchHitOut]:
    return [WatchHitOut(**h) for h in hits]


def _api(app: FastAPI) -> None:
    def add(path: str, method: str, endpoint: Any, **options: Any) -> None:
        app.add_api_route(API_PREFIX + path, endpoint, methods=[method], tags=["visitors"],
                          responses={**ERRORS, **CONFLICT}, **options)

    def today(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> TodayOut:
        return TodayOut(**_desk(request).today())

    def notice(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> NoticeOut:
        n = _desk(request).notice
        return NoticeOut(version=n.version, text=n.text)

    def register(body: VisitorIn, request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            v, hits = desk.register(body, who.name)
        except DirectoryError as exc:
            return _error(exc)
        return JSONResponse(VisitorResultOut(visitor=desk.out(v), warnings=_hits(hits)).model_dump(), status_code=201)

    def one(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
            who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            return desk.out(desk.get(visitor_id))
        except DirectoryError as exc:
            return _error(exc)

    def check_in(body: CheckInIn, request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                 who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            v, hits = desk.check_in(visitor_id, body, who.name)
        except DirectoryError as exc:
            return _error(exc)
        return VisitorResultOut(visitor=desk.out(v), warnings=_hits(hits))

    def check_out(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                  who: Principal = Depends(require(ADMIN, DESK))) -> Any:
        desk = _desk(request)
        try:
            return desk.out(desk.check_out(visitor_id, who.name))
        except DirectoryError as exc:
            return _error(exc)

    def watchlist(request: Request, who: Principal = Depends(require(ADMIN))) -> WatchlistOut:
        return WatchlistOut(entries=[WatchOut(**e) for e in _desk(request).watchlist.entries()])

    def watch_add(body: WatchIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
        desk = _desk(request)
        try:
            entry = desk.watchlist.add(body.kind, " ".join(body.value.split()), body.note, who.name, desk.clock.wall())
        except WatchlistExists as exc:
            return JSONResponse({"error": str(exc), "detail": None}, status_code=409)
        except DirectoryError as exc:
            return _error(exc)
        desk.audit(who.name, "watchlist.add", f"watchlist:{entry}", {"kind": body.kind})
        return JSONResponse(next(WatchOut(**e) for e in desk.watchlist.entries() if e["id"] == entry).model_dump(),
                            status_code=201)

    def watch_remove(request: Request, entry_id: int = PathParam(ge=1, le=2**62),
                     who: Principal = Depends(require(ADMIN))) -> Response:
        desk = _desk(request)
        if not desk.watchlist.remove(entry_id):
            return JSONResponse({"error": f"no watchlist entry {entry_id}", "detail": None}, status_code=404)
        desk.audit(who.name, "watchlist.remove", f"watchlist:{entry_id}")
        return Response(status_code=204)

    add("/visitors/today", "GET", today, response_model=TodayOut, summary="Today's visitors: expected, on site, left")
    add("/visitors/notice", "GET", notice, response_model=NoticeOut,
        summary="The privacy notice shown at check-in, with its version")
    add("/visitors", "POST", register, status_code=201, response_model=VisitorResultOut,
        summary="Pre-register a visitor (watchlist matches come back as warnings)")
    add("/visitors/{visitor_id}", "GET", one, response_model=VisitorOut, summary="One visitor")
    add("/visitors/{visitor_id}/check-in", "POST", check_in, response_model=VisitorResultOut,
        summary="Check in: record consent to the current notice, activate a badge from the pool, tell the host")
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
        site = desk.directory.site
        hosts = sorted((p for p in site.people.values() if p.kind is not PersonKind.VISITOR
                        and p.state is PersonState.ACTIVE), key=lambda p: p.name)
        now = datetime.fromtimestamp(desk.clock.wall(), desk.tz).replace(second=0, microsecond=0, tzinfo=None)
        form = {"name": "", "company": "", "email": "", "host": "", "areas": [],
                "valid_from": now.isoformat(timespec="minutes"),
                "valid_until": now.replace(hour=18, minute=0).isoformat(timespec="minutes")
                if now.hour < 17 else (now + timedelta(hours=2)).isoformat(timespec="minutes"), "escort": "auto"}
        form.update(context.pop("form", {}))
        return render(request, "visitors.html", who, status, today=desk.today(), hosts=hosts,
                      areas=sorted(site.areas.values(), key=lambda a: a.name), form=form,
                      free_badges=len(desk.directory.free_badges()), **context)

    def visitors_page(request: Request, who: Principal = Depends(require(ADMIN, DESK))) -> Response:
        return page(request, who)

    def register_form(request: Request, who: Principal = Depends(require(ADMIN, DESK)),
                      name: str = Form("", max_length=256), company: str = Form("", max_length=256),
                      email: str = Form("", max_length=256), host: str = Form("", max_length=64),
                      valid_from: str = Form("", max_length=32), valid_until: str = Form("", max_length=32),
                      areas: list[str] = Form([], max_length=32), escort: str = Form("auto", max_length=8)) -> Response:
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
            v, hits = _desk(request).register(body, who.name)
        except DirectoryError as exc:
            return page(request, who, 422, errors=[str(exc)], form=form)
        return page(request, who, 200, message=f"Registered {v.name}. Check them in when they arrive.",
                    warnings=hits)

    def check_in_page(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                      who: Principal = Depends(require(ADMIN, DESK))) -> Response:
        desk = _desk(request)
        try:
            v = desk.out(desk.get(visitor_id))
        except DirectoryError as exc:
            return page(request, who, 404, errors=[str(exc)])
        return render(request, "visitor_checkin.html", who, visitor=v, notice=desk.notice,
                      free_badges=len(desk.directory.free_badges()))

    def check_in_form(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                      who: Principal = Depends(require(ADMIN, DESK)), notice_version: str = Form("", max_length=64),
                      consent: str = Form("", max_length=8), photo_consent: str = Form("", max_length=8)) -> Response:
        desk = _desk(request)
        body = CheckInIn(notice_version=notice_version, consent=consent == "yes", photo_consent=photo_consent == "yes")
        try:
            v, hits = desk.check_in(visitor_id, body, who.name)
        except DirectoryError as exc:
            status = 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 422
            if isinstance(exc, NotFound):
                return page(request, who, status, errors=[str(exc)])
            return render(request, "visitor_checkin.html", who, status, visitor=desk.out(desk.get(visitor_id)),
                          notice=desk.notice, free_badges=len(desk.directory.free_badges()), errors=[str(exc)])
        return page(request, who, 200, warnings=hits,
                    message=f"Checked in {v.name}: hand over visitor badge …{v.card_last4}. Their host has been told.")

    def check_out_form(request: Request, visitor_id: str = PathParam(pattern=VISITOR_ID),
                       who: Principal = Depends(require(ADMIN, DESK))) -> Response:
        desk = _desk(request)
        try:
            v = desk.check_out(visitor_id, who.name)
        except DirectoryError as exc:
            return page(request, who, 404 if isinstance(exc, NotFound) else 409, errors=[str(exc)])
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
        desk = _desk(request)
        try:
            entry = desk.watchlist.add(body.kind, " ".join(body.value.split()), body.note, who.name, desk.clock.wall())
        except DirectoryError as exc:
            return watchlist_page(request, who, 409 if isinstance(exc, WatchlistExists) else 422, errors=[str(exc)])
        desk.audit(who.name, "watchlist.add", f"watchlist:{entry}", {"kind": body.kind})
        return watchlist_page(request, who, message="Added to the watchlist.")

    def watchlist_remove(request: Request, entry_id: int = PathParam(ge=1, le=2**62),
                         who: Principal = Depends(require(ADMIN))) -> Response:
        desk = _desk(request)
        if desk.watchlist.remove(entry_id):
            desk.audit(who.name, "watchlist.remove", f"watchlist:{entry_id}")
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
    """Visitor API and pages; ``app.state.visitors`` and the overdue-visit job in ``app.state.jobs``."""
    desk = app.state.desk
    visitors = VisitorDesk(desk.server, desk.server.directory.clock, load_notice())
    visitors.hub = getattr(app.state, "live", None)
    app.state.visitors = visitors
    if not hasattr(app.state, "jobs"):
        app.state.jobs = []
    app.state.jobs.append(OverdueVisits(visitors))
    _api(app)
    _pages(app)
