"""The security desk's ASGI application factory (``uvicorn --factory server.web.app:create_app``).

``create_app(server)`` mounts the desk on a server the caller owns and runs (``doorkeep desk``, tests).
``create_app()`` with no server bootstraps one from the environment (server/web/env.py) and starts and
stops it with the app. Either way the app adds: the API under ``/api/v1`` (JSON everywhere, errors
included), the pages, the static files, a request-body cap and security headers.
"""

from __future__ import annotations

import logging
import re
import uuid
from urllib.parse import quote
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

from argon2 import PasswordHasher
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from doorkeep import __version__
from doorkeep.clock import Clock
from server.alarms import Alarms
from server.app import Server
from server.audit import AuditLog
from server.eventlog import EventLog
from server.operators import Operators
from server.photos import MAX_UPLOAD_BYTES, PhotoService
from server.sessions import DeskAuth
from server.visitors import Visitors
from server.web.access import CSRF_FIELD, AuthRequired, EnrolmentRequired, Forbidden, check_routes
from server.web.roles import sections_for

log = logging.getLogger("doorkeep.server.desk")

HERE = Path(__file__).resolve().parent
API_PREFIX = "/api/v1"
#: Largest request body accepted (forms and JSON are small; nothing is uploaded in this slice).
MAX_BODY_BYTES = 64 * 1024
#: The routes that take a cardholder photo (server/photos.py) may carry one upload and its form around it.
UPLOAD_PATHS = re.compile(r"^(/api/v1)?/people/[^/]+/photo$|^/kiosk/(scan|agree|check-in)$")  # kiosk: frames
UPLOAD_BODY_BYTES = MAX_UPLOAD_BYTES + 64 * 1024
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'")


@dataclass
class Desk:
    """What every request handler needs, hung on ``app.state.desk``: the server and the application services
    (server/*.py) the routes call; the routes reach the store only through these."""

    server: Server
    operators: Operators
    auth: DeskAuth
    audit: AuditLog | None
    templates: Jinja2Templates
    secure_cookies: bool | None  # None: Secure when the request came over https
    events: EventLog  # stored events, snapshots, and the server's own events (server/eventlog.py)
    alarms: Alarms  # acknowledge and resolve (server/alarms.py)
    visitors: Visitors  # registration, check-in and out, the watchlist (server/visitors.py)
    photos: PhotoService | None = None  # cardholder photos (server/photos.py); None without the people service


class BodyTooLarge(StarletteHTTPException):
    """Raised from the request's receive channel once a streamed body passes the cap (answered 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit // 1024} KiB")


class DeskMiddleware:
    """A cap on request bodies (declared or streamed) and security headers on every response."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limit = UPLOAD_BODY_BYTES if UPLOAD_PATHS.match(scope.get("path", "")) else self.max_body
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            response = error_response(413 if declared.isdigit() else 400,
                                      f"the request body is larger than {limit // 1024} KiB"
                                      if declared.isdigit() else "the Content-Length header is not a number")
            await response(scope, receive, self._secured(send))
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, self._secured(send))

    @staticmethod
    def _secured(send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY"), (b"content-security-policy", CSP.encode()),
                         (b"cache-control", b"no-store")]
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *((k, v) for k, v in extra if k not in names)]
            await send(message)
        return wrapped


def error_response(status: int, message: str, detail: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one JSON error shape of the API: ``{"error": message an operator can act on, "detail": ...}``."""
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=headers)


def is_api(request: Request) -> bool:
    return request.url.path == API_PREFIX or request.url.path.startswith(API_PREFIX + "/")


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Validation errors without the offending input (it may be a password)."""
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]


def _install_handlers(app: FastAPI) -> None:
    def page_error(request: Request, status: int, message: str, who: Any = None) -> Response:
        desk: Desk = request.app.state.desk
        context = {"status": status, "message": message, "who": who, "csrf_field": CSRF_FIELD,
                   "nav": sections_for(who.role) if who is not None else []}
        return desk.templates.TemplateResponse(request, "error.html", context, status_code=status)

    @app.exception_handler(AuthRequired)
    async def auth_required(request: Request, exc: AuthRequired) -> Response:
        if is_api(request):
            return error_response(401, "not logged in: POST /api/v1/session with your name and password, or send "
                                       "'Authorization: Bearer TOKEN' (doorkeep user token)",
                                  headers={"WWW-Authenticate": "Bearer"})
        target = request.url.path if request.method == "GET" else "/"
        return RedirectResponse(f"/login?next={quote(target)}" if target != "/" else "/login", status_code=303)

    @app.exception_handler(EnrolmentRequired)
    async def enrolment_required(request: Request, exc: EnrolmentRequired) -> Response:
        if is_api(request):
            return error_response(403, "this site requires two-factor login for admins: enrol an authenticator "
                                       "app at /account/2fa first (API tokens are not affected)")
        return RedirectResponse("/account/2fa", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        if is_api(request):
            return error_response(403, exc.message)
        return page_error(request, 403, exc.message, exc.who)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        detail = _validation_detail(exc)
        where = "; ".join(f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in detail[:5])
        if is_api(request):
            return error_response(422, f"the request is not valid: {where}", detail)
        return page_error(request, 422, f"the form is not valid: {where}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            message = f"nothing at {request.url.path}" + (" (the API is listed at GET /api/v1/openapi.json)"
                                                          if is_api(request) else "")
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        if is_api(request) or exc.status_code == 413:
            return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))
        return page_error(request, exc.status_code, message)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        ref = uuid.uuid4().hex[:10]
        log.error("desk request %s %s failed (ref %s)", request.method, request.url.path, ref, exc_info=exc)
        return error_response(500, f"internal error; the server log has the details (ref {ref})")


#: Error answers any API operation may give (the body is always ``ErrorOut``): bad header (400), no session or
#: token (401), role or CSRF (403), unknown id (404), conflict with the current state (409), body too large
#: (413), invalid request (422), too many failed logins (429).
COMMON_ERRORS = {400: "bad request header", 401: "not logged in", 403: "role may not do this, or missing CSRF token",
                 404: "not found", 409: "conflicts with the current state", 413: "request body too large",
                 422: "request not valid", 429: "too many failed logins: wait"}


def _document_errors(app: FastAPI) -> None:
    """Every API operation's OpenAPI entry lists the shared error answers, so clients and the fuzzer
    (tests/fuzz/test_desk_api_fuzz.py) know every status the desk may give and its JSON shape."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        doc.setdefault("components", {}).setdefault("schemas", {}).setdefault("ErrorOut", {
            "title": "ErrorOut", "type": "object", "required": ["error"],
            "properties": {"error": {"title": "Error", "type": "string",
                                     "description": "what went wrong and what to do about it"},
                           "detail": {"title": "Detail"}}})
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        for path, operations in doc.get("paths", {}).items():
            if not path.startswith(API_PREFIX):
                continue
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                # FastAPI documents its own HTTPValidationError for 422; the desk answers ErrorOut (invalid())
                responses["422"] = {"description": COMMON_ERRORS[422], "content": error}
                for code, text in COMMON_ERRORS.items():
                    responses.setdefault(str(code), {"description": text, "content": error})
                    responses[str(code)].setdefault("content", error)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(server: Server | None = None, *, clock: Clock | None = None, hasher: PasswordHasher | None = None,
               secure_cookies: bool | None = None, require_totp_for_admins: bool | None = None) -> FastAPI:
    """The desk around ``server``; with none, one bootstrapped from the environment and run by the app.

    ``secure_cookies``: True marks cookies Secure always, False never, None (default) when the request
    came over https (behind a TLS proxy trusted with ``--forwarded-allow-ips``; docs/desk.md).
    ``require_totp_for_admins``: admins must enrol a second factor before using the desk; None (default) reads
    ``[desk] require_totp_for_admins`` of the site's site.toml.
    """
    from server.web import account, alarms, api, doors, live, muster, pages, people, site, visitors
    from server.web import operators_pages
    from server.web import alarm_desk
    from server.web import site_pages
    from server.web import floors  # the floor view (issue 16)
    from server.web import audit as audit_pages  # not `audit`: create_app has an AuditLog by that name

    owned = server is None
    if server is None:
        from server.web.env import server_from_env

        server = server_from_env()
    clock = clock or server.directory.clock
    if server.metrics is None:  # bootstrap gives every server its metrics; a server built otherwise gets them here
        from server.metrics import ServerMetrics

        server.metrics = ServerMetrics(server)
    audit = server.audit
    operators = Operators(server.store, clock=clock, audit=audit, hasher=hasher)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    if require_totp_for_admins is None:
        from doorkeep.config import load_desk_settings

        require_totp_for_admins = load_desk_settings(server.directory.bundle.dir).require_totp_for_admins
    auth = DeskAuth(operators, server.store, clock=clock, audit=audit,
                    require_totp_for_admins=require_totp_for_admins)
    # The services run on the directory's clock, as the server's own changes do.
    events = EventLog(server.store, server.directory.clock)
    if server.webhooks is not None:  # the desk's own events (visitor_arrived) wake the webhook worker
        events.listeners.append(server.webhooks.on_event)
    from server.invitations import invitations_for  # invitation e-mails and host notices ([smtp], issue 17)

    notice = visitors.load_notice()
    visitor_service = Visitors(server.directory, server.store, server.directory.clock, notice,
                               audit=audit, events=events, invitations=invitations_for(server, notice))
    from server.agreements import Agreements  # agreements accepted at check-in (issue 17)

    visitor_service.agreements = Agreements(server.store, server.directory.clock, server.directory.key,
                                            server.site.id, audit=audit)
    visitor_service.passes = getattr(server, "passes", None)
    desk = Desk(server, operators, auth, audit, templates, secure_cookies, events=events,
                alarms=Alarms(server.store, server.directory.clock, audit), visitors=visitor_service)
    if server.people is not None:
        desk.photos = PhotoService(server.store, server.people.key, server.directory.clock, site_id=server.site.id,
                                   audit=audit)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(server.start)
        # Checked when the desk starts serving, not when it is built: `doorkeep demo` and tests add their
        # operators in between, and a new operator must not be told to create one that exists.
        if not operators.all():
            log.warning("the desk has no operator yet: create one with "
                        "doorkeep user add NAME --role admin --site DIR --data DIR")
        jobs = list(getattr(app.state, "jobs", []))  # periodic desk jobs (visitors.py: overdue visits closed)
        for job in jobs:
            job.start()
        try:
            yield
        finally:
            for job in jobs:
                job.stop()
            if owned:
                server.stop()

    app = FastAPI(title="doorkeep security desk", version=__version__, openapi_url=None, docs_url=None,
                  redoc_url=None, lifespan=lifespan,
                  description="The security desk's HTTP API. Log in with POST /api/v1/session (cookie + CSRF "
                              "token) or send 'Authorization: Bearer TOKEN'. Errors are "
                              "{\"error\": message, \"detail\": ...}.")
    app.state.desk = desk
    app.add_middleware(DeskMiddleware)
    _install_handlers(app)
    api.install(app)
    from server.web import health  # /healthz, /readyz, /metrics: no login (docs/operations.md "Health")
    health.install(app)
    live.install(app)
    from server.web import why as why_pages  # "Why not?": an event's page and its explanation
    why_pages.install(app)
    alarm_desk.install(app)  # the alarm counter, its sounds, bulk actions (after live: it publishes on the hub)
    from server.web import incidents as incident_pages  # incidents and signed evidence bundles (issue 16)
    incident_pages.install(app)
    visitors.install(app)
    from server.web import agreements as agreement_pages  # agreement texts, holds, acceptances (issue 17)
    agreement_pages.install(app)
    from server.web import kiosk  # the lobby's self check-in tablet (issue 17)
    kiosk.install(app)
    from server.web import visitor_mail  # the CSV of expected visitors, a visit's mail state, hosts' addresses
    visitor_mail.install(app)
    from server.web import badge  # the printed visitor badge and the desk's pass actions (issue 17)
    badge.install(app)
    from server.web import webhooks as webhook_pages  # webhook subscriptions, test delivery, dead letters (issue 19)
    webhook_pages.install(app)
    from server.web import certificates as certificate_pages  # the site's certificates and their expiry (issue 19)
    certificate_pages.install(app)
    for module in (alarms, doors, floors, muster, people, site, site_pages, operators_pages, audit_pages):  # the desk's admin pages and their API (docs/desk.md)
        module.install(app)
    from server.reports import Reports
    from server.web import reports as report_pages  # the Reports section (docs/desk.md "Reports")
    report_pages.install(app, Reports(server.store))
    pages.install(app)
    account.install(app)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    check_routes(app.routes)
    _document_errors(app)
    return app
