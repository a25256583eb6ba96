"""Who may call a route: one dependency, declared on every route, deny by default.

Every route says either ``Depends(require(ROLE, ...))`` or ``Depends(public())``. :func:`check_routes`
runs when the app is built and refuses to build one with a route that declares neither, so a forgotten
declaration is a start-up error, not an open door. ``require`` also enforces CSRF: a state-changing
request (anything but GET/HEAD/OPTIONS) made with a session cookie must carry the session's token in the
``X-CSRF-Token`` header or a ``csrf_token`` form field; a bearer token needs none (a browser never adds
it by itself).
"""

from __future__ import annotations

from typing import Any, Iterator

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Mount

from server.sessions import DeskAuth, Principal
from server.web.roles import ROLES

SESSION_COOKIE = "doorkeep_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Mounted apps that are public by design (the stylesheet and script the login page needs).
PUBLIC_MOUNTS = frozenset({"/static"})
#: What an admin session that must enrol a second factor first (Principal.must_enrol) may still open.
ENROL_PATHS = frozenset({"/account/2fa", "/logout", "/api/v1/session", "/api/v1/me"})


class AuthRequired(Exception):
    """No valid session or token: 401 for the API, a redirect to the login page for pages."""


class Forbidden(Exception):
    """Logged in, but the role may not do this (403), or a cookie request without its CSRF token."""

    def __init__(self, message: str, who: Principal | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.who = who  # so a refused page still shows the operator's own navigation


class EnrolmentRequired(Exception):
    """The site requires two-factor login for admins and this admin has none yet: enrol first (403 for the API,
    a redirect to the enrolment page for pages)."""


class Access:
    """A route's declared access. ``roles`` None means public (login page, the login API)."""

    def __init__(self, roles: tuple[str, ...] | None) -> None:
        if roles is not None:
            unknown = [r for r in roles if r not in ROLES]
            if not roles or unknown:
                raise ValueError(f"require() needs one or more of {ROLES}, got {roles}")
        self.roles = roles

    def __repr__(self) -> str:
        return "public()" if self.roles is None else f"require{self.roles}"

    async def __call__(self, request: Request) -> Principal | None:
        if self.roles is None:
            return None  # public: the handler identifies the caller itself if it cares
        auth: DeskAuth = request.app.state.desk.auth
        who = await run_in_threadpool(identify, auth, request)
        if who is None:
            raise AuthRequired()
        if who.must_enrol and request.url.path not in ENROL_PATHS:
            raise EnrolmentRequired()
        if who.role not in self.roles:
            raise Forbidden(f"your role ({who.role}) may not do this; it needs {' or '.join(self.roles)}", who)
        if request.method not in SAFE_METHODS and who.via == "session":
            offered = request.headers.get(CSRF_HEADER)
            if offered is None and _is_form(request):
                form = await request.form()
                value = form.get(CSRF_FIELD)
                offered = value if isinstance(value, str) else None
            if not who.csrf_ok(offered):
                raise Forbidden(f"missing or wrong CSRF token: send the {CSRF_HEADER} header (GET /api/v1/me "
                                "gives it) or reload the page and submit the form again", who)
        return who


def identify(auth: DeskAuth, request: Request) -> Principal | None:
    """The caller: a bearer token if one is sent (then the cookie is ignored), else the session cookie."""
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        return auth.from_token(secret.strip()) if scheme.lower() == "bearer" else None
    sid = request.cookies.get(SESSION_COOKIE)
    return auth.from_session(sid) if sid else None


def cookie_secure(request: Request) -> bool:
    """Whether cookies get ``Secure``: as configured, else when the request came over https (directly, or
    through a proxy trusted with --proxy-headers)."""
    forced = request.app.state.desk.secure_cookies
    return bool(forced) if forced is not None else request.url.scheme == "https"


def _is_form(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype in ("application/x-www-form-urlencoded", "multipart/form-data")


def require(*roles: str) -> Access:
    """The route needs a logged-in operator (session or token) with one of these roles."""
    return Access(tuple(roles))


def public() -> Access:
    """The route answers without a login (only the login page and the login API should say this)."""
    return Access(None)


def _accesses(dependant: Any) -> Iterator[Access]:
    for dep in dependant.dependencies:
        if isinstance(dep.call, Access):
            yield dep.call
        yield from _accesses(dep)


def route_access(route: BaseRoute) -> list[Access]:
    """The access declarations of one route (empty: undeclared)."""
    return list(_accesses(route.dependant)) if isinstance(route, APIRoute) else []


class UndeclaredRoute(RuntimeError):
    """A route that says neither require(...) nor public(): the app refuses to start."""


def check_routes(routes: list[BaseRoute]) -> None:
    """Deny by default: every route must declare its access; only the known static mount is exempt."""
    bad = []
    for route in routes:
        if isinstance(route, Mount) and route.path in PUBLIC_MOUNTS:
            continue
        if not route_access(route):
            bad.append(getattr(route, "path", repr(route)))
    if bad:
        raise UndeclaredRoute(f"routes without require(...) or public(): {', '.join(bad)} "
                              "(fix: add dependencies=[Depends(require(ROLE, ...))] to each)")
