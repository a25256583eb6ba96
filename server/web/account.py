"""The operator's own account page: enrol a second factor (TOTP) and see how many recovery codes are left
(docs/desk.md "Two-factor login"). Any logged-in operator may open it; a session is needed to enrol (an API
token has no person at a screen to scan a code), and an admin the site requires to enrol is sent here first.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Form, Request, Response

from server.sessions import Principal
from server.web.access import require
from server.web.roles import ANY
from server.web.routes import Routes
from server.web.twofactor import qr_data_uri

#: the account pages (not in the OpenAPI document), added to the app by :func:`install`.
route = Routes(include_in_schema=False)


def install(app: FastAPI) -> None:
    route.install(app)


def _page(request: Request, who: Principal, status: int = 200, **context: object) -> Response:
    from server.web.pages import render

    tf = request.app.state.desk.auth.twofactor
    status_now = tf.status(who.name)
    enrolment = None
    if not status_now.enabled and who.via == "session" and "codes" not in context:
        enrolment = tf.begin(who.name)
    return render(request, "account_2fa.html", who, status, state=status_now, enrolment=enrolment,
                  qr=qr_data_uri(enrolment.uri) if enrolment else None, **context)


@route("/account/2fa", "GET")
def two_factor_page(request: Request, who: Principal = Depends(require(*ANY))) -> Response:
    return _page(request, who)


@route("/account/2fa", "POST")
def two_factor_confirm(request: Request, who: Principal = Depends(require(*ANY)),
                       code: str = Form("", max_length=64)) -> Response:
    tf = request.app.state.desk.auth.twofactor
    if who.via != "session":
        return _page(request, who, 400, errors=["Enrol from a logged-in browser session, not with an API token."])
    if tf.enabled(who.name):
        return _page(request, who, 409, errors=["Two-factor login is already on for your account. An admin can "
                                                "reset it if you lost your phone."])
    codes = tf.confirm(who.name, code, actor=who.name)
    if codes is None:
        return _page(request, who, 422, errors=["That code is not right for this secret. Check that your app shows "
                                                "the account and that the phone's clock is right, then type the "
                                                "current code."])
    # The session's Principal was built before enrolment: render as a principal that no longer must enrol.
    from dataclasses import replace

    return _page(request, replace(who, must_enrol=False), codes=codes,
                 message="Two-factor login is on. From now on you log in with your password and a code.")
