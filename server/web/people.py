"""People and credentials at the desk (admin only), over HTTP: list and search, add, suspend and reinstate,
report a card lost, access levels and clearance, and a CSV import of people and cards.

The rules and the writes live in the people service (server/people.py): the store holds every person and
card (people.toml is only an import/export format), a change is a cheap row change live at every door at once,
card numbers are kept only as keyed hashes, and every change is audited with the operator as actor and the
person as a pseudonym. This module translates HTTP to those calls and their errors to status codes.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from fastapi import Depends, FastAPI, Form, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from doorkeep.config import CARD_FORMATS
from doorkeep.model import PersonState
from server.photos import MAX_UPLOAD_BYTES, NoSuchPerson, PhotoError, PhotoService
from server.people import (KINDS, MAX_CLEARANCE, MAX_IMPORT_ROWS, PeopleError, PeopleService, PersonView,
                           UnknownPerson)
from server.web.access import require
from server.web.alarms import install_filters
from server.web.api import ErrorOut
from server.web.auth import Principal
from server.web.roles import ADMIN, DESK
from server.web.routes import Routes

API_PREFIX = "/api/v1"
#: Any person id already in the site (people.toml may be more liberal than the desk).
PERSON_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
CARD_HASH = r"^[0-9a-f]{64}$"


route = Routes()


def install(app: FastAPI) -> None:
    install_filters(app.state.desk.templates)
    route.install(app)


def _people(request: Request) -> PeopleService:
    """The server's people service (server/people.py)."""
    service: PeopleService | None = request.app.state.desk.server.people
    if service is None:
        raise RuntimeError("the server was built without its people service (server/app.py bootstrap)")
    return service


def _photos(request: Request) -> PhotoService:
    """The desk's cardholder photo service (server/photos.py)."""
    service: PhotoService | None = request.app.state.desk.photos
    if service is None:
        raise RuntimeError("the desk was built without its photo service (server/web/app.py create_app)")
    return service


# ---------------------------------------------------------------- views


class CardOut(BaseModel):
    hash: str = Field(description="the card's keyed hash (its id here; the number itself is never stored)")
    format: str
    last4: str
    state: str = Field(description="active, lost or revoked")


class PersonOut(BaseModel):
    id: str
    name: str
    kind: str
    state: str = Field(description="active or suspended")
    clearance: int
    access_levels: list[str]
    source: str = Field(description="how the person came into the store: people.toml (imported), desk (added "
                                    "here) or people.toml+desk (imported, then changed here)")
    cards: list[CardOut]


class PeopleOut(BaseModel):
    people: list[PersonOut]
    total: int = Field(description="how many people match ?q= (the list holds ?limit= of them from ?offset=)")
    offset: int
    limit: int


class PersonHit(BaseModel):
    id: str
    name: str


class PeopleSearchOut(BaseModel):
    people: list[PersonHit] = Field(description="at most ?limit= matches by name, for a type-ahead picker")
    total: int


#: People shown per page on /people, and the API's default and largest ?limit=.
PAGE_SIZE = 50
API_LIMIT = 100
API_LIMIT_MAX = 1000


def _out(v: PersonView) -> PersonOut:
    return PersonOut(id=v.id, name=v.name, kind=v.kind, state=v.state, clearance=v.clearance,
                     access_levels=list(v.access_levels), source=v.source,
                     cards=[CardOut(hash=c.hash, format=c.format, last4=c.last4, state=c.state) for c in v.cards])


def person_out(request: Request, pid: str) -> PersonOut:
    return _out(_people(request).view(pid))


def people_page(request: Request, q: str, offset: int, limit: int) -> tuple[int, list[PersonOut]]:
    total, views = _people(request).page(q, offset, limit)
    return total, [_out(v) for v in views]


# ------------------------------------------------------------------- API


class CardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: Literal["em4100", "ascii"]
    number: str = Field(min_length=1, max_length=32, description="as the reader sends it; stored only as a hash")


class PersonIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=128)
    kind: Literal["employee", "contractor"] = "employee"
    clearance: int = Field(0, ge=0, le=MAX_CLEARANCE)
    access_levels: list[str] = Field(default_factory=list, max_length=50)
    cards: list[CardIn] = Field(default_factory=list, max_length=10)


class AccessIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clearance: int = Field(ge=0, le=MAX_CLEARANCE)
    access_levels: list[str] = Field(max_length=50)


class ImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    csv: str = Field(min_length=1, max_length=60_000, description="the CSV text (docs/desk.md, People)")


class ImportOut(BaseModel):
    imported: int
    cards: int


class PhotoOut(BaseModel):
    id: str = Field(description="the photo's id (a new one at every replacement)")
    replaced: bool = Field(description="true when it replaced an earlier photo")
    width: int = Field(description="as kept: re-encoded to at most 512 px on the long side")
    height: int
    bytes: int = Field(description="the kept JPEG's size (no metadata survives)")


def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


def _refused(exc: PeopleError) -> JSONResponse:
    return _error(404 if isinstance(exc, UnknownPerson) else 422, str(exc))


@route(API_PREFIX + "/people", "GET", response_model=PeopleOut, tags=["people"],
       dependencies=[Depends(require(ADMIN))],
       summary="People (not visitors), with their cards, by name; ?q= searches, ?offset= and ?limit= page")
def api_people(request: Request, q: str = Query("", max_length=100), offset: int = Query(0, ge=0),
               limit: int = Query(API_LIMIT, ge=1, le=API_LIMIT_MAX)) -> PeopleOut:
    total, people = people_page(request, q, offset, limit)
    return PeopleOut(people=people, total=total, offset=offset, limit=limit)


@route(API_PREFIX + "/people/search", "GET", response_model=PeopleSearchOut, tags=["people"],
       dependencies=[Depends(require(ADMIN, DESK))],
       summary="Names and ids matching ?q= for a type-ahead picker (the visitor's host); no cards")
def api_people_search(request: Request, q: str = Query("", max_length=100),
                      limit: int = Query(10, ge=1, le=50)) -> PeopleSearchOut:
    matched = _people(request).matching(q)
    return PeopleSearchOut(people=[PersonHit(id=pid, name=name) for name, pid in matched[:limit]],
                           total=len(matched))


@route(API_PREFIX + "/people", "POST", status_code=201, response_model=PersonOut, tags=["people"],
       summary="Add a person (and cards); audited")
def api_add_person(body: PersonIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
    people = _people(request)
    try:
        p = people.check_new_person(body.id, body.name, body.kind, body.clearance, body.access_levels,
                                    [(c.format, c.number) for c in body.cards])
        people.add_people([p], actor=who.name, via="desk")
    except PeopleError as exc:
        return _error(409 if "already exists" in str(exc) else 422, str(exc))
    return person_out(request, p.id)


@route(API_PREFIX + "/people/import", "POST", response_model=ImportOut, tags=["people"],
       summary="Import people and cards from CSV: every line valid, or nothing imported (422 lists each line)")
def api_import(body: ImportIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
    people, errors = _people(request).import_csv(body.csv, actor=who.name)
    if errors:
        return _error(422, f"nothing imported: {len(errors)} line(s) need fixing", {"errors": errors})
    return ImportOut(imported=len(people), cards=sum(len(p.cards) for p in people))


@route(API_PREFIX + "/people/{pid}", "GET", response_model=PersonOut, tags=["people"],
       dependencies=[Depends(require(ADMIN))], summary="One person")
def api_person(request: Request, pid: str = Path(pattern=PERSON_ID)) -> Any:
    try:
        _people(request).person(pid)
    except PeopleError as exc:
        return _refused(exc)
    return person_out(request, pid)


def _state_route(state: PersonState) -> Callable[..., Any]:
    def endpoint(request: Request, pid: str = Path(pattern=PERSON_ID),
                 who: Principal = Depends(require(ADMIN))) -> Any:
        try:
            _people(request).set_state(pid, state, actor=who.name)
        except PeopleError as exc:
            return _refused(exc)
        return person_out(request, pid)
    endpoint.__name__ = f"api_{'suspend' if state is PersonState.SUSPENDED else 'reinstate'}"
    return endpoint


route(API_PREFIX + "/people/{pid}/suspend", "POST", response_model=PersonOut, tags=["people"],
      summary="Suspend: refused at every door at once; audited")(_state_route(PersonState.SUSPENDED))
route(API_PREFIX + "/people/{pid}/reinstate", "POST", response_model=PersonOut, tags=["people"],
      summary="Reinstate a suspended person; audited")(_state_route(PersonState.ACTIVE))


@route(API_PREFIX + "/people/{pid}/access", "PUT", response_model=PersonOut, tags=["people"],
       summary="Set clearance and access levels; audited")
def api_access(body: AccessIn, request: Request, pid: str = Path(pattern=PERSON_ID),
               who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        _people(request).set_access(pid, body.clearance, body.access_levels, actor=who.name)
    except PeopleError as exc:
        return _refused(exc)
    return person_out(request, pid)


@route(API_PREFIX + "/people/{pid}/cards", "POST", status_code=201, response_model=PersonOut, tags=["people"],
       summary="Give a person a card; audited")
def api_add_card(body: CardIn, request: Request, pid: str = Path(pattern=PERSON_ID),
                 who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        _people(request).add_card(pid, body.format, body.number, actor=who.name)
    except PeopleError as exc:
        return _refused(exc)
    return person_out(request, pid)


@route(API_PREFIX + "/cards/{card}/lost", "POST", response_model=CardOut, tags=["people"],
       summary="Report a card lost: it stops working at every door at once; audited")
def api_lost(request: Request, card: str = Path(pattern=CARD_HASH), who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        c = _people(request).report_lost(card, actor=who.name)
    except PeopleError as exc:
        return _refused(exc)
    return CardOut(hash=c.hash, format=c.format, last4=c.last4, state=c.state.value)


PHOTO_ERRORS = {404: {"model": ErrorOut}, 413: {"model": ErrorOut}, 415: {"model": ErrorOut}}


@route(API_PREFIX + "/people/{pid}/photo", "GET", tags=["people"], dependencies=[Depends(require(ADMIN, DESK))],
       responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorOut}},
       summary="The person's cardholder photo (JPEG, decrypted in memory, never cached)")
def api_photo(request: Request, pid: str = Path(pattern=PERSON_ID),
              v: str | None = Query(None, max_length=32, description="the photo's version (ignored: it only "
                                    "makes a replaced photo's URL new)")) -> Response:
    data = _photos(request).jpeg(pid)
    if data is None:
        return _error(404, f"no photo for {pid!r} (none uploaded, or removed)")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store, private"})


@route(API_PREFIX + "/people/{pid}/photo", "PUT", response_model=PhotoOut, tags=["people"], responses=PHOTO_ERRORS,
       summary="Upload or replace the person's photo: the body is a JPEG or PNG of at most 5 MiB; kept "
               "re-encoded (512 px, no metadata) and encrypted; audited")
async def api_put_photo(request: Request, pid: str = Path(pattern=PERSON_ID),
                        who: Principal = Depends(require(ADMIN))) -> Any:
    data = await request.body()
    try:
        out = await run_in_threadpool(_photos(request).upload, pid, data, actor=who.name)
    except NoSuchPerson as exc:
        return _error(404, str(exc))
    except PhotoError as exc:
        return _error(exc.status, str(exc))
    return PhotoOut(**{k: out[k] for k in ("id", "replaced", "width", "height", "bytes")})


@route(API_PREFIX + "/people/{pid}/photo", "DELETE", status_code=204, tags=["people"],
       responses={404: {"model": ErrorOut}}, summary="Remove the person's photo and its key for good; audited")
def api_delete_photo(request: Request, pid: str = Path(pattern=PERSON_ID),
                     who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        gone = _photos(request).delete(pid, actor=who.name)
    except NoSuchPerson as exc:
        return _error(404, str(exc))
    if not gone:
        return _error(404, f"no photo for {pid!r}")
    return Response(status_code=204)


# ----------------------------------------------------------------- pages

DONE = {"added": "Person added.", "suspended": "Suspended: refused at every door from now on.",
        "reinstated": "Reinstated.", "access": "Access levels and clearance saved.", "card": "Card added.",
        "lost": "Card reported lost: it opens no door any more.", "imported": "Import done.",
        "photo": "Photo saved.", "photo_replaced": "Photo replaced.", "photo_removed": "Photo removed."}


def _render(request: Request, template: str, who: Principal, status: int = 200, **context: Any) -> Response:
    from server.web.pages import render

    site = request.app.state.desk.server.site
    return render(request, template, who, status, levels=sorted(site.access_levels.values(), key=lambda a: a.name),
                  kinds=KINDS, formats=CARD_FORMATS, max_clearance=MAX_CLEARANCE, **context)


def _list_page(request: Request, who: Principal, q: str = "", status: int = 200, page: int = 1,
               **context: Any) -> Response:
    total, people = people_page(request, q, (page - 1) * PAGE_SIZE, PAGE_SIZE)
    pages = max(1, -(-total // PAGE_SIZE))
    return _render(request, "people.html", who, status, people=people, q=q, total=total, page=min(page, pages),
                   pages=pages, first=(page - 1) * PAGE_SIZE + 1 if people else 0,
                   last=(page - 1) * PAGE_SIZE + len(people), **context)


@route("/people", "GET", include_in_schema=False)
def list_page(request: Request, q: str = Query("", max_length=100), done: str = Query("", max_length=20),
              n: int = Query(0, ge=0, le=MAX_IMPORT_ROWS), page: int = Query(1, ge=1, le=1_000_000),
              who: Principal = Depends(require(ADMIN))) -> Response:
    message = f"Imported {n} people." if done == "imported" else DONE.get(done)
    return _list_page(request, who, q, page=page, message=message)


@route("/people", "POST", include_in_schema=False)
def add_person_form(request: Request, id: str = Form("", max_length=64), name: str = Form("", max_length=128),
                    kind: str = Form("employee", max_length=20), clearance: str = Form("0", max_length=2),
                    access_levels: list[str] = Form([]), card_format: str = Form("em4100", max_length=20),
                    card_number: str = Form("", max_length=32), who: Principal = Depends(require(ADMIN))) -> Response:
    people = _people(request)
    cards = [(card_format, card_number)] if card_number.strip() else []
    try:
        p = people.check_new_person(id, name, kind, clearance, access_levels, cards)
        people.add_people([p], actor=who.name, via="desk")
    except PeopleError as exc:
        return _list_page(request, who, status=422, error=str(exc), form={"id": id, "name": name, "kind": kind})
    return RedirectResponse(f"/people/{p.id}?done=added", status_code=303)


@route("/people/import", "POST", include_in_schema=False)
async def import_form(request: Request, who: Principal = Depends(require(ADMIN))) -> Response:
    form = await request.form()
    text = form.get("csv")
    upload = form.get("file")
    body = text if isinstance(text, str) else ""
    if not body.strip() and upload is not None and not isinstance(upload, str):
        raw = await upload.read()
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            return await _import_failed(request, who, [{"line": 1, "error": "the file is not UTF-8 text: save it as "
                                                                        "CSV UTF-8"}])
    from starlette.concurrency import run_in_threadpool

    people, errors = await run_in_threadpool(_people(request).import_csv, body, actor=who.name)
    if errors:
        return await _import_failed(request, who, errors)
    return RedirectResponse(f"/people?done=imported&n={len(people)}", status_code=303)


async def _import_failed(request: Request, who: Principal, errors: list[dict[str, Any]]) -> Response:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(_list_page, request, who, "", 422, import_errors=errors)


@route("/people/{pid}", "GET", include_in_schema=False)
def person_page(request: Request, pid: str = Path(pattern=PERSON_ID), done: str = Query("", max_length=20),
                who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        _people(request).person(pid)
    except PeopleError as exc:
        return _list_page(request, who, status=404, error=str(exc))
    return _render(request, "person.html", who, p=person_out(request, pid), photo=_photo_view(request, pid),
                   max_upload_mib=MAX_UPLOAD_BYTES // 1048576, message=DONE.get(done))


def _photo_view(request: Request, pid: str) -> dict[str, Any] | None:
    """The person page's photo: its URL (new at each replacement) and size, or None."""
    info = _photos(request).info(pid)
    if info is None:
        return None
    return {**info, "url": f"{API_PREFIX}/people/{pid}/photo?v={info['id'][:12]}"}


def _person_failed(request: Request, who: Principal, pid: str, status: int, error: str) -> Response:
    return _render(request, "person.html", who, status, p=person_out(request, pid), photo=_photo_view(request, pid),
                   max_upload_mib=MAX_UPLOAD_BYTES // 1048576, error=error)


def _person_action(request: Request, who: Principal, pid: str, action: Callable[[], Any], done: str) -> Response:
    try:
        action()
    except UnknownPerson as exc:
        return _list_page(request, who, status=404, error=str(exc))
    except PeopleError as exc:
        return _person_failed(request, who, pid, 422, str(exc))
    return RedirectResponse(f"/people/{pid}?done={done}", status_code=303)


@route("/people/{pid}/suspend", "POST", include_in_schema=False)
def suspend_form(request: Request, pid: str = Path(pattern=PERSON_ID), who: Principal = Depends(require(ADMIN))) -> Response:
    people = _people(request)
    return _person_action(request, who, pid, lambda: people.set_state(pid, PersonState.SUSPENDED, actor=who.name),
                          "suspended")


@route("/people/{pid}/reinstate", "POST", include_in_schema=False)
def reinstate_form(request: Request, pid: str = Path(pattern=PERSON_ID),
                   who: Principal = Depends(require(ADMIN))) -> Response:
    people = _people(request)
    return _person_action(request, who, pid, lambda: people.set_state(pid, PersonState.ACTIVE, actor=who.name),
                          "reinstated")


@route("/people/{pid}/access", "POST", include_in_schema=False)
def access_form(request: Request, pid: str = Path(pattern=PERSON_ID), clearance: str = Form("0", max_length=2),
                access_levels: list[str] = Form([]), who: Principal = Depends(require(ADMIN))) -> Response:
    people = _people(request)
    return _person_action(request, who, pid,
                          lambda: people.set_access(pid, clearance, access_levels, actor=who.name), "access")


@route("/people/{pid}/cards", "POST", include_in_schema=False)
def card_form(request: Request, pid: str = Path(pattern=PERSON_ID), card_format: str = Form("em4100", max_length=20),
              card_number: str = Form("", max_length=32), who: Principal = Depends(require(ADMIN))) -> Response:
    people = _people(request)
    return _person_action(request, who, pid,
                          lambda: people.add_card(pid, card_format, card_number, actor=who.name), "card")


@route("/people/{pid}/cards/{card}/lost", "POST", include_in_schema=False)
def lost_form(request: Request, pid: str = Path(pattern=PERSON_ID), card: str = Path(pattern=CARD_HASH),
              who: Principal = Depends(require(ADMIN))) -> Response:
    people = _people(request)
    return _person_action(request, who, pid, lambda: people.report_lost(card, actor=who.name, owner=pid), "lost")


@route("/people/{pid}/photo", "POST", include_in_schema=False)
async def photo_form(request: Request, pid: str = Path(pattern=PERSON_ID),
                     who: Principal = Depends(require(ADMIN))) -> Response:
    form = await request.form()  # already parsed (and bounded by the desk's body cap) for the CSRF check
    upload = form.get("photo")
    data = b""
    if upload is not None and not isinstance(upload, str):
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
    photos = _photos(request)
    try:
        out = await run_in_threadpool(photos.upload, pid, data, actor=who.name)
    except NoSuchPerson as exc:
        return await run_in_threadpool(_list_page, request, who, "", 404, error=str(exc))
    except PhotoError as exc:
        return await run_in_threadpool(_person_failed, request, who, pid, exc.status, f"Photo not saved: {exc}")
    return RedirectResponse(f"/people/{pid}?done={'photo_replaced' if out['replaced'] else 'photo'}", status_code=303)


@route("/people/{pid}/photo/delete", "POST", include_in_schema=False)
def photo_delete_form(request: Request, pid: str = Path(pattern=PERSON_ID),
                      who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        _photos(request).delete(pid, actor=who.name)
    except NoSuchPerson as exc:
        return _list_page(request, who, status=404, error=str(exc))
    return RedirectResponse(f"/people/{pid}?done=photo_removed", status_code=303)
