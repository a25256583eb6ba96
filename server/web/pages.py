"""The desk's server-rendered pages: login, home, and one page per section of the navigation.

The login form is protected against login CSRF by a double-submit token (a short-lived cookie and the
same value in the form); every other form carries the session's CSRF token, checked by ``require``.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Callable

from fastapi import Depends, FastAPI, Form, Request, Response
from fastapi.responses import RedirectResponse

from server.sessions import CodeNeeded, LoginRefused, Principal
from server.web.access import CSRF_FIELD, SESSION_COOKIE, cookie_secure, identify, public, require
from server.web.api import door_list, open_session, request_client
from server.web.roles import ANY, SECTIONS, Section, sections_for
from server.web.routes import Routes

#: every page (not in the OpenAPI document), added to the app by :func:`install`.
route = Routes(include_in_schema=False)


def install(app: FastAPI) -> None:
    route.install(app)

LOGIN_COOKIE = "doorkeep_login"
#: The two-factor challenge between the password and the code step (HttpOnly, only sent to /login).
CHALLENGE_COOKIE = "doorkeep_2fa"


def render(request: Request, template: str, who: Principal | None, status: int = 200, **context: Any) -> Response:
    desk = request.app.state.desk
    nav = sections_for(who.role) if who is not None else []
    from server.web.alarm_desk import nav_context  # the alarm counter in every page's header

    context.setdefault("alarm_nav", nav_context(request, who))
    return desk.templates.TemplateResponse(request, template, {"who": who, "nav": nav, "csrf_field": CSRF_FIELD,
                                                               **context}, status_code=status)


def _safe_next(target: str | None) -> str:
    """Only a path on this site (never ``//host`` or a URL): no open redirect through the login form."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _login_form(request: Request, status: int = 200, error: str | None = None, name: str = "",
                next_path: str = "/") -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", None, status, error=error, login_token=token, name=name,
                      next_path=_safe_next(next_path))
    response.set_cookie(LOGIN_COOKIE, token, max_age=1800, httponly=True, samesite="strict",
                        secure=cookie_secure(request), path="/login")
    return response


def _code_form(request: Request, status: int = 200, error: str | None = None, next_path: str = "/",
               challenge: str | None = None) -> Response:
    """The second step of a two-factor login: the code from the app, or a recovery code."""
    token = secrets.token_urlsafe(24)
    response = render(request, "login_code.html", None, status, error=error, login_token=token,
                      next_path=_safe_next(next_path))
    response.set_cookie(LOGIN_COOKIE, token, max_age=1800, httponly=True, samesite="strict",
                        secure=cookie_secure(request), path="/login")
    if challenge is not None:
        response.set_cookie(CHALLENGE_COOKIE, challenge, max_age=300, httponly=True, samesite="strict",
                            secure=cookie_secure(request), path="/login")
    return response


def _refused_message(exc: LoginRefused) -> str:
    return exc.message[0].upper() + exc.message[1:] + "."


@route("/login", "GET", dependencies=[Depends(public())])
def login_page(request: Request, next: str = "/") -> Response:
    if identify(request.app.state.desk.auth, request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _login_form(request, next_path=next)


@route("/login", "POST", dependencies=[Depends(public())])
def login_submit(request: Request, name: str = Form("", max_length=256), password: str = Form("", max_length=4096),
                 login_token: str = Form("", max_length=200), next: str = Form("/", max_length=2000)) -> Response:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), login_token.encode()):
        return _login_form(request, 400, "The login form expired. Please enter your name and password again.",
                           name=name, next_path=next)
    if not name or not password:
        return _login_form(request, 401, "Enter your name and password.", name=name, next_path=next)
    response = RedirectResponse(_safe_next(next), status_code=303)
    try:
        result = request.app.state.desk.auth.check_password(name, password, request_client(request))
    except LoginRefused as exc:
        return _login_form(request, 429 if exc.reason == "throttled" else 401, _refused_message(exc), name=name,
                           next_path=next)
    if isinstance(result, CodeNeeded):
        return _code_form(request, next_path=next, challenge=result.challenge)
    open_session(request, response, result)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@route("/login/code", "POST", dependencies=[Depends(public())])
def login_code(request: Request, code: str = Form("", max_length=64), login_token: str = Form("", max_length=200),
               next: str = Form("/", max_length=2000)) -> Response:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    challenge = request.cookies.get(CHALLENGE_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), login_token.encode()) or not challenge:
        return _login_form(request, 400, "The login form expired. Please enter your name and password again.",
                           next_path=next)
    if not code.strip():
        return _code_form(request, 401, "Enter the code from your authenticator app, or a recovery code.",
                          next_path=next)
    try:
        result = request.app.state.desk.auth.check_code(challenge, code, request_client(request))
    except LoginRefused as exc:
        if exc.reason == "bad_code":
            return _code_form(request, 401, _refused_message(exc), next_path=next)
        if exc.reason == "throttled":
            return _code_form(request, 429, _refused_message(exc), next_path=next)
        return _login_form(request, 401, "The login took too long or had too many wrong codes. Please enter your "
                                         "name and password again.", next_path=next)
    response = RedirectResponse(_safe_next(next), status_code=303)
    open_session(request, response, result)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    response.delete_cookie(CHALLENGE_COOKIE, path="/login")
    return response


@route("/logout", "POST")
def logout(request: Request, who: Principal = Depends(require(*ANY))) -> Response:
    request.app.state.desk.auth.logout(who)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@route("/", "GET")
def home(request: Request, who: Principal = Depends(require(*ANY))) -> Response:
    server = request.app.state.desk.server
    return render(request, "home.html", who, site=server.site)


def _section_page(section: Section) -> Callable[..., Response]:
    def page(request: Request, who: Principal = Depends(require(*section.roles))) -> Response:
        doors = door_list(request) if section.key == "doors" else None
        return render(request, "section.html", who, section=section, doors=doors)
    page.__name__ = f"section_{section.key}"
    return page


#: Sections whose own module installs a real page (server/web/visitors.py, live.py): no placeholder for them.
BUILT: set[str] = {"visitors", "live"}
#: ... and server/web/alarms.py, doors.py, muster.py, people.py.
BUILT |= {"alarms", "doors", "muster", "people"}
#: ... and server/web/audit.py.
BUILT |= {"audit"}
#: ... and server/web/operators_pages.py.
BUILT |= {"operators"}
#: ... and server/web/site_pages.py.
BUILT |= {"site_setup"}
#: ... and server/web/floors.py.
BUILT |= {"floors"}
#: ... and server/web/reports.py.
BUILT |= {"reports"}
#: ... and server/web/webhooks.py.
BUILT |= {"webhooks"}

for _section in SECTIONS:
    if _section.key not in BUILT:
        route(_section.path, "GET")(_section_page(_section))
