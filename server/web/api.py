"""The desk's JSON API under ``/api/v1`` (slice 1: session, who am I, doors, operators; docs/desk.md; the audit
log's routes are in server/web/audit.py).

Every route declares who may call it (server/web/access.py). Handlers that touch SQLite or argon2 are
plain ``def`` functions, so FastAPI runs them on its worker threads and the event loop never waits on
the disk or a password hash.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from doorkeep.model import DoorKind
from server.operators import (MAX_PASSWORD, MIN_PASSWORD, Operator, OperatorConflict, OperatorError,
                              OperatorExists, Token, UnknownOperator)
from server.sessions import SESSION_ABSOLUTE_S, SESSION_IDLE_S, LoginRefused, Principal
from server.web.access import SESSION_COOKIE, cookie_secure, public, require
from server.web.auth import client_key
from server.web.roles import ADMIN, ANY, DESK, sections_for
from server.web.routes import Routes

API_PREFIX = "/api/v1"
#: every API route, added to the app by :func:`install`
#: (on the app itself, not through an included router: the route list stays flat and checkable).
route = Routes(API_PREFIX, tags=["desk"])


def install(app: FastAPI) -> None:
    route.install(app)


DOOR_ID = r"^[A-Za-z0-9_-]{1,64}$"
OPERATOR_NAME = r"^[a-z0-9][a-z0-9._@-]{0,63}$"


class ErrorOut(BaseModel):
    error: str = Field(description="what went wrong and what to do about it")
    detail: Any = None


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 403, 404, 413, 422, 429)}


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, description="the operator's login name")
    password: str = Field(min_length=1, max_length=1024)
    code: str | None = Field(None, max_length=32, description="accounts with two-factor login: the 6-digit code "
                                                             "from the authenticator app, or a recovery code")


class SessionOut(BaseModel):
    operator: str
    role: str
    csrf_token: str = Field(description="send as X-CSRF-Token on every POST/PUT/PATCH/DELETE made with the cookie")
    idle_timeout_s: int
    absolute_timeout_s: int


class MeOut(BaseModel):
    name: str
    role: str
    via: str = Field(description="session (cookie) or token (Authorization: Bearer)")
    csrf_token: str | None = None
    sections: list[str] = Field(description="the desk sections this role may open")
    two_factor: bool = Field(False, description="the operator has enrolled a second factor (TOTP)")
    must_enrol: bool = Field(False, description="the site requires two-factor login for admins and this session "
                                                "must enrol at /account/2fa before anything else")


class LiftFloorOut(BaseModel):
    area: str = Field(description="the area the floor's button takes people to")
    name: str = Field(description="the area's name")
    restricted: bool
    public_schedule: str | None = Field(description="the floor's button works without a badge while this "
                                                    "schedule is open (null: never)")
    offline: str = Field(description="with the server away: cache (the edge may enable it from its cache) or deny; "
                                     "the floor's own setting, else the lift's")


class DoorOut(BaseModel):
    id: str
    name: str
    from_area: str = Field(description="the area it leads from; empty for a lift (it serves floors)")
    to_area: str = Field(description="the area it leads into; empty for a lift (see floors)")
    restricted: bool = Field(description="the area it leads into is restricted (a lift: one of its floors is)")
    kind: str = Field("door", description="door, turnstile or lift (docs/openings.md)")
    floors: list[LiftFloorOut] = Field(default_factory=list, description="a lift: the floors it serves, in order; "
                                                                         "empty for any other door")
    device: str | None
    device_status: str = Field(description="unknown, online, offline or stopped (as the server last heard)")
    mode: str
    offline: str = Field(description="what the door does when its edge cannot reach the server: cache or deny")
    unlock_s: float


class DoorsOut(BaseModel):
    doors: list[DoorOut]


def _cookie(request: Request, response: Response, sid: str) -> None:
    response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="strict", secure=cookie_secure(request),
                        path="/")


def request_client(request: Request) -> str:
    """The client address the throttle counts and the audit log records: the TCP peer, or the address a proxy
    named only when the desk was started to trust that proxy (``--forwarded-allow-ips``; docs/desk.md)."""
    return client_key(request.client.host if request.client else None)


def open_session(request: Request, response: Response, result: Any) -> Any:
    """Set the cookie of a new session (ending any session id the browser already had); returns ``result``."""
    desk = request.app.state.desk
    old = request.cookies.get(SESSION_COOKIE)
    if old:  # a fresh id on every login: a planted cookie never becomes a logged-in session
        found = desk.auth.sessions.lookup(old)
        if found is not None:
            desk.auth.sessions.end(found[2])
    _cookie(request, response, result.session_id)
    return result


def start_session(request: Request, response: Response, name: str, password: str, code: str | None = None) -> Any:
    """The API's one-request login (name, password, and code for two-factor accounts): the logged-in result, or
    raises :class:`LoginRefused`."""
    result = request.app.state.desk.auth.login(name, password, request_client(request), code)
    return open_session(request, response, result)


def refused(exc: LoginRefused) -> JSONResponse:
    """401 for a wrong password or code (or a missing code: ``detail.reason`` = ``code_required``), 429 throttled."""
    status = 429 if exc.reason == "throttled" else 401
    headers = {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))} if status == 429 else None
    return JSONResponse({"error": exc.message, "detail": {"reason": exc.reason}}, status_code=status,
                        headers=headers)


@route("/session", "POST", response_model=SessionOut, responses=ERRORS, dependencies=[Depends(public())],
             summary="Log in: sets the session cookie and returns the CSRF token")
def login(body: LoginIn, request: Request, response: Response) -> Any:
    try:
        result = start_session(request, response, body.name, body.password, body.code)
    except LoginRefused as exc:
        return refused(exc)
    return SessionOut(operator=result.operator.name, role=result.operator.role, csrf_token=result.csrf,
                      idle_timeout_s=SESSION_IDLE_S, absolute_timeout_s=SESSION_ABSOLUTE_S)


@route("/session", "DELETE", status_code=204, responses=ERRORS, summary="Log out (needs the CSRF token)")
def logout(request: Request, who: Principal = Depends(require(*ANY))) -> Response:
    if who.via != "session":
        return JSONResponse({"error": "a bearer token has no session to end; revoke the token instead "
                                      "(doorkeep user token NAME --label LABEL --revoke)", "detail": None},
                            status_code=400)
    request.app.state.desk.auth.logout(who)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@route("/me", "GET", response_model=MeOut, responses=ERRORS, summary="Who is calling, with which role")
def me(request: Request, who: Principal = Depends(require(*ANY))) -> MeOut:
    return MeOut(name=who.name, role=who.role, via=who.via, csrf_token=who.csrf,
                 sections=[s.key for s in sections_for(who.role)],
                 two_factor=request.app.state.desk.auth.twofactor.enabled(who.name), must_enrol=who.must_enrol)


def door_list(request: Request) -> list[DoorOut]:
    server = request.app.state.desk.server
    site = server.directory.site
    devices = server.bus.door_devices
    status = server.supervisor.devices()
    out = []
    for door in sorted(site.doors.values(), key=lambda d: d.id):
        floors = [LiftFloorOut(area=f.area, name=site.areas[f.area].name if f.area in site.areas else f.area,
                               restricted=bool(f.area in site.areas and site.areas[f.area].restricted),
                               public_schedule=f.public_schedule, offline=(f.offline or door.offline).value)
                  for f in door.floors] if door.kind is DoorKind.LIFT else []
        restricted = any(site.areas[a].restricted for a in door.entered if a in site.areas)
        device = devices.get(door.id)
        out.append(DoorOut(id=door.id, name=door.name, from_area=door.from_area, to_area=door.to_area,
                           restricted=restricted, kind=door.kind.value, floors=floors, device=device,
                           device_status=status[device].status if device in status else "unknown",
                           mode=door.mode.value, offline=door.offline.value, unlock_s=door.unlock_s))
    return out


@route("/doors", "GET", response_model=DoorsOut, responses=ERRORS, dependencies=[Depends(require(ADMIN, DESK))],
            summary="Every door of the site")
def doors(request: Request) -> DoorsOut:
    return DoorsOut(doors=door_list(request))


@route("/doors/{door_id}", "GET", response_model=DoorOut, responses=ERRORS,
            dependencies=[Depends(require(ADMIN, DESK))], summary="One door")
def door(request: Request, door_id: str = Path(pattern=DOOR_ID, description="the door's id (site.toml)")) -> Any:
    for d in door_list(request):
        if d.id == door_id:
            return d
    return JSONResponse({"error": f"no door {door_id!r} on this site (GET /api/v1/doors lists them)",
                         "detail": None}, status_code=404)


class OperatorOut(BaseModel):
    name: str
    role: str
    active: bool
    created_at: float
    two_factor: bool = Field(False, description="has enrolled a second factor (TOTP)")


class OperatorsOut(BaseModel):
    operators: list[OperatorOut]


class OperatorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, description="login name: lower-case letters, digits, . _ @ -")
    role: Literal["admin", "desk", "auditor", "kiosk"]
    password: str = Field(min_length=1, max_length=1024, description=f"at least {MIN_PASSWORD} characters")


class DisabledOut(BaseModel):
    name: str
    disabled: bool = Field(description="false when the account was already disabled")


def _operator_out(op: Operator, two_factor: bool = False) -> OperatorOut:
    return OperatorOut(name=op.name, role=op.role, active=op.active, created_at=op.created_at, two_factor=two_factor)


@route("/operators", "GET", response_model=OperatorsOut, responses=ERRORS, dependencies=[Depends(require(ADMIN))],
       summary="Every operator account")
def operators(request: Request) -> OperatorsOut:
    tf = request.app.state.desk.auth.twofactor
    return OperatorsOut(operators=[_operator_out(op, tf.enabled(op.name))
                                   for op in request.app.state.desk.operators.all()])


@route("/operators", "POST", status_code=201, response_model=OperatorOut, responses={**ERRORS, 409: {"model": ErrorOut}},
       summary="Create an operator account (needs the CSRF token with a cookie session)")
def add_operator(body: OperatorIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        op = request.app.state.desk.operators.add(body.name, body.role, body.password, actor=who.name)
    except OperatorError as exc:
        return JSONResponse({"error": str(exc), "detail": None},
                            status_code=409 if isinstance(exc, OperatorExists) else 422)
    return _operator_out(op)


@route("/operators/{name}/disable", "POST", response_model=DisabledOut, responses=ERRORS,
       summary="Disable an operator: its sessions and tokens stop working at once (409 for the last active admin)")
def disable_operator(request: Request, name: str = Path(pattern=OPERATOR_NAME),
                     who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        changed = request.app.state.desk.operators.disable(name, actor=who.name)
    except OperatorError as exc:
        return operator_refused(exc)
    return DisabledOut(name=name, disabled=changed)


class TwoFactorResetOut(BaseModel):
    name: str
    reset: bool = Field(description="false when the operator had no second factor")


@route("/operators/{name}/2fa/reset", "POST", response_model=TwoFactorResetOut, responses=ERRORS,
       summary="Remove an operator's second factor (a lost phone): they log in with the password and enrol "
               "again; their sessions end (audited)")
def reset_two_factor(request: Request, name: str = Path(pattern=OPERATOR_NAME),
                     who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        changed = request.app.state.desk.auth.reset_second_factor(name, actor=who.name)
    except UnknownOperator as exc:
        return JSONResponse({"error": str(exc), "detail": None}, status_code=404)
    return TwoFactorResetOut(name=name, reset=changed)


TOKEN_LABEL = r"^[A-Za-z0-9][A-Za-z0-9 ._:@-]{0,63}$"


def operator_refused(exc: OperatorError) -> JSONResponse:
    """The answer to a refused operator change: 404 unknown name, 409 taken name or label, or the last active
    admin; 422 a bad name, role, password or label (the message says which and how to fix it)."""
    status = 404 if isinstance(exc, UnknownOperator) else 409 if isinstance(exc, (OperatorExists, OperatorConflict)) \
        else 422
    return JSONResponse({"error": str(exc), "detail": None}, status_code=status)


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: str = Field(min_length=1, max_length=MAX_PASSWORD, description=f"at least {MIN_PASSWORD} characters")


class PasswordResetOut(BaseModel):
    name: str
    sessions_ended: int = Field(description="the operator's sessions ended by the reset (API tokens stay)")


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["admin", "desk", "auditor", "kiosk"]


class TokenOut(BaseModel):
    label: str
    role: str
    created_at: float
    last_used_at: float | None = Field(description="roughly (updated at most once a minute); null if never used")


class RoleOut(BaseModel):
    name: str
    role: str
    tokens_revoked: list[TokenOut] = Field(description="live tokens that carried more than the new role grants")


class TokensOut(BaseModel):
    name: str
    tokens: list[TokenOut] = Field(description="live tokens, oldest first; never their secrets")


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(min_length=1, max_length=64, pattern=TOKEN_LABEL,
                       description="unique among the operator's live tokens: letters, digits, spaces, . _ : @ -")
    role: Literal["admin", "desk", "auditor", "kiosk"] | None = Field(
        None, description="at most what the operator's own role grants (default: the operator's role)")


class IssuedTokenOut(TokenOut):
    token: str = Field(description="the secret: shown this once, never stored in clear; send it as "
                                   "'Authorization: Bearer TOKEN'")


class RevokedOut(BaseModel):
    name: str
    label: str
    revoked: bool


def _token_out(token: Token) -> TokenOut:
    return TokenOut(label=token.label, role=token.role, created_at=token.created_at, last_used_at=token.last_used_at)


@route("/operators/{name}/password", "POST", response_model=PasswordResetOut, responses=ERRORS,
       summary="Set an operator's password (the password rules of account creation); their sessions end (audited, "
               "never the password)")
def reset_password(body: PasswordIn, request: Request, name: str = Path(pattern=OPERATOR_NAME),
                   who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        ended = request.app.state.desk.operators.reset_password(name, body.password, actor=who.name)
    except OperatorError as exc:
        return operator_refused(exc)
    return PasswordResetOut(name=name, sessions_ended=ended)


@route("/operators/{name}/role", "POST", response_model=RoleOut, responses=ERRORS,
       summary="Give an operator another role: their sessions end and tokens above the new role are revoked "
               "(409 for the last active admin)")
def set_role(body: RoleIn, request: Request, name: str = Path(pattern=OPERATOR_NAME),
             who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        revoked = request.app.state.desk.operators.set_role(name, body.role, actor=who.name)
    except OperatorError as exc:
        return operator_refused(exc)
    return RoleOut(name=name, role=body.role, tokens_revoked=[_token_out(t) for t in revoked])


@route("/operators/{name}/tokens", "GET", response_model=TokensOut, responses=ERRORS,
       dependencies=[Depends(require(ADMIN))], summary="An operator's live API tokens (never their secrets)")
def operator_tokens(request: Request, name: str = Path(pattern=OPERATOR_NAME)) -> Any:
    try:
        live = request.app.state.desk.operators.live_tokens(name)
    except OperatorError as exc:
        return operator_refused(exc)
    return TokensOut(name=name, tokens=[_token_out(t) for t in live])


@route("/operators/{name}/tokens", "POST", status_code=201, response_model=IssuedTokenOut, responses=ERRORS,
       summary="Issue an API token for an operator: the secret is in this answer only (audited, never the secret)")
def issue_token(body: TokenIn, request: Request, name: str = Path(pattern=OPERATOR_NAME),
                who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        secret, token = request.app.state.desk.operators.issue_token(name, body.label, role=body.role,
                                                                      actor=who.name)
    except OperatorError as exc:
        return operator_refused(exc)
    return IssuedTokenOut(token=secret, **_token_out(token).model_dump())


@route("/operators/{name}/tokens/{label}/revoke", "POST", response_model=RevokedOut, responses=ERRORS,
       summary="Revoke an operator's live token by its label: it stops working at once (audited)")
def revoke_token(request: Request, name: str = Path(pattern=OPERATOR_NAME),
                 label: str = Path(pattern=TOKEN_LABEL, description="the token's label (GET .../tokens lists them)"),
                 who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        revoked = request.app.state.desk.operators.revoke_token(name, label, actor=who.name)
    except OperatorError as exc:
        return operator_refused(exc)
    if not revoked:
        return JSONResponse({"error": f"operator {name!r} has no live token labelled {label!r} "
                                      f"(GET /api/v1/operators/{name}/tokens lists them)", "detail": None},
                            status_code=404)
    return RevokedOut(name=name, label=label, revoked=True)


@route("/openapi.json", "GET", include_in_schema=False, dependencies=[Depends(require(*ANY))])
def openapi(request: Request) -> JSONResponse:
    """The API's OpenAPI document (for any logged-in operator or token: it lists what exists, not data)."""
    return JSONResponse(request.app.openapi())
