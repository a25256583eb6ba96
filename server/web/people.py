"""People and credentials at the desk (admin only): list and search, add, suspend and reinstate, report a
card lost, access levels and clearance, and a CSV import of people and cards.

people.toml (the site directory) is the seed; what an admin changes here is kept in the server's store
(migration 008: ``desk_people``, ``desk_cards``) and merged over it by ``Directory`` whenever it builds
the site, so changes survive restarts and reach every edge with the next signed policy at once. A desk
change to a person of people.toml overrides only the fields it sets (state, clearance, access levels);
people added here exist only in the store. Card numbers are never stored: only their keyed hash
(doorkeep/credentials.py ``card_hash``) and last four characters. Every change is audited with the
operator as actor and the person only as a pseudonym (server/audit.py ``subject_ref``).
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from fastapi import Depends, FastAPI, Form, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from doorkeep.config import CARD_FORMATS
from doorkeep.credentials import card_hash, last4, normalise
from doorkeep.model import CredentialState, PersonKind, PersonState, Site
from server.audit import subject_ref
from server.directory import DirectoryError
from server.errors import ServerError
from server.web.access import require
from server.web.alarms import install_filters
from server.web.auth import Principal
from server.web.roles import ADMIN
from server.web.routes import Routes

API_PREFIX = "/api/v1"
#: A new person's id: what people.toml keys look like.
NEW_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
#: Any person id already in the site (people.toml may be more liberal than the desk).
PERSON_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
CARD_HASH = r"^[0-9a-f]{64}$"
KINDS = ("employee", "contractor")
MAX_CLEARANCE = 9
MAX_IMPORT_ROWS = 2000
CSV_COLUMNS = ("id", "name", "kind", "clearance", "access_levels", "cards")


route = Routes()


def install(app: FastAPI) -> None:
    install_filters(app.state.desk.templates)
    route.install(app)


class PeopleError(ServerError, ValueError):
    """A people change the site does not allow (unknown level, card in use, …): the message says what to fix."""


class UnknownPerson(PeopleError, LookupError):
    """No (non-visitor) person with that id."""


# ------------------------------------------------------------------ core


@dataclass
class NewPerson:
    """A validated person to add, with cards already hashed (the clear numbers go no further)."""

    id: str
    name: str
    kind: str
    clearance: int
    access_levels: list[str]
    cards: list[tuple[str, str, str]] = field(default_factory=list)  # (hash, format, last4)


def check_card(server: Any, fmt: str, number: str, taken: dict[str, str]) -> tuple[str, str, str]:
    """A card number checked and hashed: ``(hash, format, last4)``; ``taken`` maps hashes seen in this batch."""
    number = number.strip()
    if fmt not in CARD_FORMATS:
        raise PeopleError(f"card format {fmt!r} is not one of {', '.join(CARD_FORMATS)}")
    if fmt == "em4100" and not re.fullmatch(r"[0-9A-Fa-f]{10}", number):
        raise PeopleError("an em4100 card number is 10 hex digits, as the reader sends it (e.g. 0F00A1B2C3)")
    if fmt != "em4100" and not re.fullmatch(r"[0-9A-Za-z]{1,32}", number):
        raise PeopleError(f"a {fmt} card number is 1 to 32 letters and digits, as the reader sends it")
    directory = server.directory
    h = card_hash(directory.key, fmt, number)
    owner = directory.site.credentials.get(h)
    if owner is not None:
        raise PeopleError(f"that card (…{last4(number)}) already belongs to someone; report it lost or revoke it there "
                          "first")
    if h in directory._pool:
        raise PeopleError(f"that card (…{last4(number)}) is a visitor badge of the pool (people.toml visitor_pool)")
    if h in taken:
        raise PeopleError(f"that card (…{last4(number)}) is also given to {taken[h]!r} in this import")
    return h, fmt, last4(normalise(fmt, number))


def check_access(site: Site, clearance: Any, levels: list[str]) -> tuple[int, list[str]]:
    try:
        value = int(clearance)
    except (TypeError, ValueError):
        raise PeopleError(f"clearance {clearance!r} is not a number from 0 to {MAX_CLEARANCE}") from None
    if not 0 <= value <= MAX_CLEARANCE:
        raise PeopleError(f"clearance must be 0 to {MAX_CLEARANCE}, got {value}")
    clean = []
    for level in levels:
        level = level.strip()
        if not level:
            continue
        if level not in site.access_levels:
            raise PeopleError(f"no access level {level!r} (known: {', '.join(sorted(site.access_levels))})")
        if level not in clean:
            clean.append(level)
    return value, clean


def check_new_person(server: Any, pid: str, name: str, kind: str, clearance: Any, levels: list[str],
                     cards: list[tuple[str, str]], *, taken: dict[str, str] | None = None,
                     ids: set[str] | None = None) -> NewPerson:
    """Validate one new person against the live site (and, for an import, the rest of the file)."""
    site = server.directory.site
    pid = pid.strip()
    if not NEW_ID.fullmatch(pid):
        raise PeopleError(f"id {pid!r} must be lower-case letters, digits and . _ - (at most 64), like 'jdoe'")
    if pid in site.people or (ids is not None and pid in ids) or _row(server, pid) is not None:
        raise PeopleError(f"person {pid!r} already exists; change them on their page instead")
    name = " ".join(name.split())
    if not name or len(name) > 128:
        raise PeopleError("name is required (at most 128 characters)")
    kind = (kind or "employee").strip()
    if kind not in KINDS:
        raise PeopleError(f"kind {kind!r} must be employee or contractor (visitors are registered on the Visitors page)")
    value, clean = check_access(site, clearance if clearance not in (None, "") else 0, levels)
    taken = taken if taken is not None else {}
    hashed = []
    for fmt, number in cards:
        h, f, l4 = check_card(server, fmt, number, taken)
        taken[h] = pid
        hashed.append((h, f, l4))
    return NewPerson(pid, name, kind, value, clean, hashed)


def _row(server: Any, pid: str) -> dict[str, Any] | None:
    row: dict[str, Any] | None = server.store.desk_person(pid)
    return row


def add_people(server: Any, people: list[NewPerson], *, actor: str, via: str) -> None:
    """Write every person and card in one transaction (all or nothing), then rebuild the site once."""
    server.store.add_desk_people(people, server.directory.clock.wall())
    key = server.directory.key
    server.directory.refresh()
    audit = server.audit
    if audit is not None:
        for p in people:
            audit.record(actor, "person.add", subject_ref(key, p.id),
                         {"kind": p.kind, "clearance": p.clearance, "access_levels": p.access_levels,
                          "cards": len(p.cards), "via": via})
        if via == "csv":
            audit.record(actor, "people.import", None, {"people": len(people),
                                                         "cards": sum(len(p.cards) for p in people)})


def person(server: Any, pid: str) -> Any:
    p = server.directory.site.people.get(pid)
    if p is None or p.kind is PersonKind.VISITOR:
        raise UnknownPerson(f"no person {pid!r} (visitors are on the Visitors page)")
    return p


def _override(server: Any, pid: str, **columns: Any) -> None:
    """Set desk columns of a person (a new override row for a people.toml person, kept NULL elsewhere)."""
    server.store.override_desk_person(pid, columns, server.directory.clock.wall())


def set_state(server: Any, pid: str, state: PersonState, *, actor: str) -> bool:
    """Suspend or reinstate; False when already so. A suspended person is refused at every door at once."""
    p = person(server, pid)
    if p.state is state:
        return False
    _override(server, pid, state=state.value)
    server.directory.refresh(action="person.suspend" if state is PersonState.SUSPENDED else "person.reinstate",
                             actor=actor, target=subject_ref(server.directory.key, pid),
                             details={"from": p.state.value, "to": state.value})
    return True


def set_access(server: Any, pid: str, clearance: Any, levels: list[str], *, actor: str) -> None:
    p = person(server, pid)
    value, clean = check_access(server.directory.site, clearance, levels)
    _override(server, pid, clearance=value, access_levels=json.dumps(clean))
    server.directory.refresh(action="person.access", actor=actor, target=subject_ref(server.directory.key, pid),
                             details={"clearance": [p.clearance, value],
                                      "access_levels": [list(p.access_levels), clean]})


def add_card(server: Any, pid: str, fmt: str, number: str, *, actor: str) -> str:
    person(server, pid)
    h, fmt, l4 = check_card(server, fmt, number, {})
    server.store.add_desk_card(h, pid, fmt, l4, server.directory.clock.wall())
    server.directory.refresh(action="card.add", actor=actor, target=subject_ref(server.directory.key, pid),
                             details={"format": fmt, "card": h[:12]})
    return h


def report_lost(server: Any, h: str, *, actor: str, owner: str | None = None) -> Any:
    """The card stops working at every door at once: Directory.set_card_state + the policy republish."""
    cred = server.directory.site.credentials.get(h)
    if cred is None or (owner is not None and cred.person != owner):
        raise UnknownPerson("no such card" + (f" for {owner!r}" if owner else ""))
    holder = server.directory.site.people.get(cred.person)
    if holder is not None and holder.kind is PersonKind.VISITOR:
        raise PeopleError("that is a visitor badge: check the visitor out on the Visitors page instead")
    if cred.state is CredentialState.LOST:
        return cred
    try:
        return server.directory.set_card_state(h, CredentialState.LOST, actor=actor)
    except DirectoryError as exc:
        raise PeopleError(str(exc)) from None


def parse_csv(server: Any, text: str) -> tuple[list[NewPerson], list[dict[str, Any]]]:
    """Validate every line; ``(people, errors)`` where each error is ``{"line": n, "error": text}``.

    The header names the columns (``id`` and ``name`` required; ``kind``, ``clearance``,
    ``access_levels`` separated by ``;``, ``cards`` as ``format:number`` separated by ``;``)."""
    errors: list[dict[str, Any]] = []
    text = text.removeprefix("\ufeff")  # Excel's "CSV UTF-8" starts with a byte order mark
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        return [], [{"line": 1, "error": f"the file is empty: the first line names the columns, e.g. "
                                        f"{','.join(CSV_COLUMNS)}"}]
    cols = [h.strip().lower() for h in header]
    unknown = [c for c in cols if c not in CSV_COLUMNS]
    missing = [c for c in ("id", "name") if c not in cols]
    if unknown or missing or len(set(cols)) != len(cols):
        problem = (f"unknown columns {unknown}" if unknown else f"missing columns {missing}" if missing
                   else "a column is named twice")
        return [], [{"line": 1, "error": f"{problem}; the header is {','.join(CSV_COLUMNS)} (id and name required)"}]
    people: list[NewPerson] = []
    taken: dict[str, str] = {}
    ids: set[str] = set()
    rows = 0
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append({"line": reader.line_num, "error": f"not valid CSV: {exc}"})
            break
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        rows += 1
        if rows > MAX_IMPORT_ROWS:
            errors.append({"line": line, "error": f"more than {MAX_IMPORT_ROWS} people: split the file"})
            break
        if len(values) != len(cols):
            errors.append({"line": line, "error": f"{len(values)} fields, the header has {len(cols)}"})
            continue
        row = dict(zip(cols, (v.strip() for v in values)))
        try:
            cards = []
            for item in (row.get("cards") or "").split(";"):
                if not item.strip():
                    continue
                fmt, sep, number = item.strip().partition(":")
                if not sep:
                    raise PeopleError(f"card {item.strip()[:3]}… is not format:number (e.g. em4100:0F00A1B2C3)")
                cards.append((fmt.strip(), number.strip()))
            p = check_new_person(server, row["id"], row["name"], row.get("kind") or "employee",
                                 row.get("clearance") or 0, (row.get("access_levels") or "").split(";"), cards,
                                 taken=taken, ids=ids)
        except PeopleError as exc:
            errors.append({"line": line, "error": str(exc)})
            continue
        ids.add(p.id)
        people.append(p)
    if not people and not errors:
        errors.append({"line": 2, "error": "no people in the file"})
    return people, errors


def import_csv(server: Any, text: str, *, actor: str) -> tuple[list[NewPerson], list[dict[str, Any]]]:
    """All or nothing: nothing is written unless every line is valid."""
    people, errors = parse_csv(server, text)
    if not errors:
        add_people(server, people, actor=actor, via="csv")
    return people, errors


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
    source: str = Field(description="people.toml, desk (added here) or people.toml+desk (changed here)")
    cards: list[CardOut]


class PeopleOut(BaseModel):
    people: list[PersonOut]


def person_out(server: Any, pid: str, rows: dict[str, dict[str, Any]] | None = None) -> PersonOut:
    site = server.directory.site
    p = site.people[pid]
    row = rows.get(pid) if rows is not None else _row(server, pid)
    source = "people.toml" if row is None else "desk" if row["added"] else "people.toml+desk"
    cards = sorted((CardOut(hash=c.hash, format=c.format, last4=c.last4, state=c.state.value)
                    for c in site.credentials.values() if c.person == pid), key=lambda c: (c.state, c.last4))
    return PersonOut(id=p.id, name=p.name, kind=p.kind.value, state=p.state.value, clearance=p.clearance,
                     access_levels=list(p.access_levels), source=source, cards=cards)


def people_list(server: Any, q: str = "") -> list[PersonOut]:
    rows = {r["id"]: r for r in server.store.desk_people()}
    needle = q.strip().lower()
    out = []
    for pid, p in server.directory.site.people.items():
        if p.kind is PersonKind.VISITOR:
            continue
        if needle and needle not in pid.lower() and needle not in p.name.lower():
            continue
        out.append(person_out(server, pid, rows))
    return sorted(out, key=lambda p: (p.name.lower(), p.id))


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


def _error(status: int, message: str, detail: Any = None) -> JSONResponse:
    return JSONResponse({"error": message, "detail": detail}, status_code=status)


def _refused(exc: PeopleError) -> JSONResponse:
    return _error(404 if isinstance(exc, UnknownPerson) else 422, str(exc))


@route(API_PREFIX + "/people", "GET", response_model=PeopleOut, tags=["people"],
       dependencies=[Depends(require(ADMIN))], summary="People (not visitors), with their cards; ?q= searches")
def api_people(request: Request, q: str = Query("", max_length=100)) -> PeopleOut:
    return PeopleOut(people=people_list(request.app.state.desk.server, q))


@route(API_PREFIX + "/people", "POST", status_code=201, response_model=PersonOut, tags=["people"],
       summary="Add a person (and cards); audited")
def api_add_person(body: PersonIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
    server = request.app.state.desk.server
    try:
        p = check_new_person(server, body.id, body.name, body.kind, body.clearance, body.access_levels,
                             [(c.format, c.number) for c in body.cards])
        add_people(server, [p], actor=who.name, via="desk")
    except PeopleError as exc:
        return _error(409 if "already exists" in str(exc) else 422, str(exc))
    return person_out(server, p.id)


@route(API_PREFIX + "/people/import", "POST", response_model=ImportOut, tags=["people"],
       summary="Import people and cards from CSV: every line valid, or nothing imported (422 lists each line)")
def api_import(body: ImportIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
    people, errors = import_csv(request.app.state.desk.server, body.csv, actor=who.name)
    if errors:
        return _error(422, f"nothing imported: {len(errors)} line(s) need fixing", {"errors": errors})
    return ImportOut(imported=len(people), cards=sum(len(p.cards) for p in people))


@route(API_PREFIX + "/people/{pid}", "GET", response_model=PersonOut, tags=["people"],
       dependencies=[Depends(require(ADMIN))], summary="One person")
def api_person(request: Request, pid: str = Path(pattern=PERSON_ID)) -> Any:
    server = request.app.state.desk.server
    try:
        person(server, pid)
    except PeopleError as exc:
        return _refused(exc)
    return person_out(server, pid)


def _state_route(state: PersonState) -> Callable[..., Any]:
    def endpoint(request: Request, pid: str = Path(pattern=PERSON_ID),
                 who: Principal = Depends(require(ADMIN))) -> Any:
        server = request.app.state.desk.server
        try:
            set_state(server, pid, state, actor=who.name)
        except PeopleError as exc:
            return _refused(exc)
        return person_out(server, pid)
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
    server = request.app.state.desk.server
    try:
        set_access(server, pid, body.clearance, body.access_levels, actor=who.name)
    except PeopleError as exc:
        return _refused(exc)
    return person_out(server, pid)


@route(API_PREFIX + "/people/{pid}/cards", "POST", status_code=201, response_model=PersonOut, tags=["people"],
       summary="Give a person a card; audited")
def api_add_card(body: CardIn, request: Request, pid: str = Path(pattern=PERSON_ID),
                 who: Principal = Depends(require(ADMIN))) -> Any:
    server = request.app.state.desk.server
    try:
        add_card(server, pid, body.format, body.number, actor=who.name)
    except PeopleError as exc:
        return _refused(exc)
    return person_out(server, pid)


@route(API_PREFIX + "/cards/{card}/lost", "POST", response_model=CardOut, tags=["people"],
       summary="Report a card lost: it stops working at every door at once; audited")
def api_lost(request: Request, card: str = Path(pattern=CARD_HASH), who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        c = report_lost(request.app.state.desk.server, card, actor=who.name)
    except PeopleError as exc:
        return _refused(exc)
    return CardOut(hash=c.hash, format=c.format, last4=c.last4, state=c.state.value)


# ----------------------------------------------------------------- pages

DONE = {"added": "Person added.", "suspended": "Suspended: refused at every door from now on.",
        "reinstated": "Reinstated.", "access": "Access levels and clearance saved.", "card": "Card added.",
        "lost": "Card reported lost: it opens no door any more.", "imported": "Import done."}


def _render(request: Request, template: str, who: Principal, status: int = 200, **context: Any) -> Response:
    from server.web.pages import render

    site = request.app.state.desk.server.site
    return render(request, template, who, status, levels=sorted(site.access_levels.values(), key=lambda a: a.name),
                  kinds=KINDS, formats=CARD_FORMATS, max_clearance=MAX_CLEARANCE, **context)


def _list_page(request: Request, who: Principal, q: str = "", status: int = 200, **context: Any) -> Response:
    return _render(request, "people.html", who, status, people=people_list(request.app.state.desk.server, q), q=q,
                   **context)


@route("/people", "GET", include_in_schema=False)
def people_page(request: Request, q: str = Query("", max_length=100), done: str = Query("", max_length=20),
                n: int = Query(0, ge=0, le=MAX_IMPORT_ROWS), who: Principal = Depends(require(ADMIN))) -> Response:
    message = f"Imported {n} people." if done == "imported" else DONE.get(done)
    return _list_page(request, who, q, message=message)


@route("/people", "POST", include_in_schema=False)
def add_person_form(request: Request, id: str = Form("", max_length=64), name: str = Form("", max_length=128),
                    kind: str = Form("employee", max_length=20), clearance: str = Form("0", max_length=2),
                    access_levels: list[str] = Form([]), card_format: str = Form("em4100", max_length=20),
                    card_number: str = Form("", max_length=32), who: Principal = Depends(require(ADMIN))) -> Response:
    server = request.app.state.desk.server
    cards = [(card_format, card_number)] if card_number.strip() else []
    try:
        p = check_new_person(server, id, name, kind, clearance, access_levels, cards)
        add_people(server, [p], actor=who.name, via="desk")
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

    people, errors = await run_in_threadpool(import_csv, request.app.state.desk.server, body, actor=who.name)
    if errors:
        return await _import_failed(request, who, errors)
    return RedirectResponse(f"/people?done=imported&n={len(people)}", status_code=303)


async def _import_failed(request: Request, who: Principal, errors: list[dict[str, Any]]) -> Response:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(_list_page, request, who, "", 422, import_errors=errors)


@route("/people/{pid}", "GET", include_in_schema=False)
def person_page(request: Request, pid: str = Path(pattern=PERSON_ID), done: str = Query("", max_length=20),
                who: Principal = Depends(require(ADMIN))) -> Response:
    server = request.app.state.desk.server
    try:
        person(server, pid)
    except PeopleError as exc:
        return _list_page(request, who, status=404, error=str(exc))
    return _render(request, "person.html", who, p=person_out(server, pid), message=DONE.get(done))


def _person_action(request: Request, who: Principal, pid: str, action: Callable[[], Any], done: str) -> Response:
    server = request.app.state.desk.server
    try:
        action()
    except UnknownPerson as exc:
        return _list_page(request, who, status=404, error=str(exc))
    except PeopleError as exc:
        return _render(request, "person.html", who, 422, p=person_out(server, pid), error=str(exc))
    return RedirectResponse(f"/people/{pid}?done={done}", status_code=303)


@route("/people/{pid}/suspend", "POST", include_in_schema=False)
def suspend_form(request: Request, pid: str = Path(pattern=PERSON_ID), who: Principal = Depends(require(ADMIN))) -> Response:
    server = request.app.state.desk.server
    return _person_action(request, who, pid, lambda: set_state(server, pid, PersonState.SUSPENDED, actor=who.name),
                          "suspended")


@route("/people/{pid}/reinstate", "POST", include_in_schema=False)
def reinstate_form(request: Request, pid: str = Path(pattern=PERSON_ID),
                   who: Principal = Depends(require(ADMIN))) -> Response:
    server = request.app.state.desk.server
    return _person_action(request, who, pid, lambda: set_state(server, pid, PersonState.ACTIVE, actor=who.name),
                          "reinstated")


@route("/people/{pid}/access", "POST", include_in_schema=False)
def access_form(request: Request, pid: str = Path(pattern=PERSON_ID), clearance: str = Form("0", max_length=2),
                access_levels: list[str] = Form([]), who: Principal = Depends(require(ADMIN))) -> Response:
    server = request.app.state.desk.server
    return _person_action(request, who, pid,
                          lambda: set_access(server, pid, clearance, access_levels, actor=who.name), "access")


@route("/people/{pid}/cards", "POST", include_in_schema=False)
def card_form(request: Request, pid: str = Path(pattern=PERSON_ID), card_format: str = Form("em4100", max_length=20),
              card_number: str = Form("", max_length=32), who: Principal = Depends(require(ADMIN))) -> Response:
    server = request.app.state.desk.server
    return _person_action(request, who, pid,
                          lambda: add_card(server, pid, card_format, card_number, actor=who.name), "card")


@route("/people/{pid}/cards/{card}/lost", "POST", include_in_schema=False)
def lost_form(request: Request, pid: str = Path(pattern=PERSON_ID), card: str = Path(pattern=CARD_HASH),
              who: Principal = Depends(require(ADMIN))) -> Response:
    server = request.app.state.desk.server
    return _person_action(request, who, pid, lambda: report_lost(server, card, actor=who.name, owner=pid), "lost")
