"""The Operators page of the desk (admin only): accounts, roles, passwords, second factors and API tokens.

A table of form endpoints calling :class:`server.operators.Operators` (the same service as the API's
``/api/v1/operators`` routes and ``doorkeep user``) and nothing more. Every form carries the session's CSRF
token (checked by ``require``); disabling an account and removing a second factor ask for confirmation
first (confirm.html); a new token's secret is shown once, on the page that answers the form, never again.
A refused change re-renders the page with the reason (409 for the last active admin, 422 for bad input).
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Form, Path, Query, Request, Response
from fastapi.responses import RedirectResponse

from server.operators import (GRANTS, MAX_PASSWORD, MIN_PASSWORD, NAME, ROLES, OperatorConflict, OperatorError,
                              OperatorExists, Operators, UnknownOperator)
from server.sessions import Principal
from server.web.access import require
from server.web.api import OPERATOR_NAME
from server.web.roles import ADMIN
from server.web.routes import Routes

route = Routes(include_in_schema=False)


def install(app: FastAPI) -> None:
    route.install(app)


#: What a finished action says on the page it redirects to (``?done=KEY&op=NAME``).
#: Operators per page on /operators (each has its own forms below the table: the page stays a sane size).
PAGE_SIZE = 50
DONE = {"added": "Operator {op} added.", "role": "Role of {op} changed: their sessions ended, and tokens above "
        "the new role were revoked.", "password": "Password of {op} reset: their sessions ended.",
        "disabled": "{op} disabled: their sessions and tokens stopped working.",
        "already": "{op} was already disabled.", "2fa": "Two-factor login of {op} removed: they log in with the "
        "password and enrol again.", "no2fa": "{op} had no two-factor login.", "revoked": "Token revoked."}


def _status(exc: OperatorError) -> int:
    if isinstance(exc, UnknownOperator):
        return 404
    return 409 if isinstance(exc, (OperatorExists, OperatorConflict)) else 422


def _service(request: Request) -> Operators:
    return request.app.state.desk.operators  # type: ignore[no-any-return]


def _rows(request: Request, page: int, focus: str | None) -> tuple[list[dict[str, Any]], int, int, int]:
    """One page of operators with their state, second factor and live tokens (never a secret): the rows, the
    page shown, how many pages and how many operators. ``focus``: show the page holding that operator (the one
    just acted on) whatever ``page`` says; a page past the end shows the last one."""
    ops = _service(request)
    everyone = ops.all()
    pages = max(1, -(-len(everyone) // PAGE_SIZE))
    if focus:
        at = next((i for i, op in enumerate(everyone) if op.name == focus), None)
        if at is not None:
            page = at // PAGE_SIZE + 1
    page = min(max(page, 1), pages)
    twofactor = request.app.state.desk.auth.twofactor
    rows = [{"op": op, "two_factor": twofactor.enabled(op.name),
             "tokens": [t for t in ops.tokens(op.name) if t.revoked_at is None],
             "grants": [r for r in ROLES if r in GRANTS[op.role]]}
            for op in everyone[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]]
    return rows, page, pages, len(everyone)


def _page(request: Request, who: Principal, status: int = 200, page: int = 1, **context: Any) -> Response:
    from server.web.pages import render

    site = request.app.state.desk.server.site
    # After an action on one operator (its route names it, or the redirect's ?op=), the page holding it.
    focus = request.path_params.get("name") or request.query_params.get("op")
    rows, page, pages, total = _rows(request, page, focus if isinstance(focus, str) else None)
    return render(request, "operators.html", who, status, rows=rows, roles=ROLES, page=page, pages=pages,
                  total=total, min_password=MIN_PASSWORD, max_password=MAX_PASSWORD, tz=site.timezone, **context)


def _done(key: str, name: str) -> Response:
    return RedirectResponse(f"/operators?done={key}&op={name}", status_code=303)


@route("/operators", "GET")
def operators_page(request: Request, done: str = Query("", max_length=20), op: str = Query("", max_length=64),
                   page: int = Query(1, ge=1, le=1_000_000, description="which page of operators, from 1"),
                   who: Principal = Depends(require(ADMIN))) -> Response:
    template = DONE.get(done)
    message = template.format(op=op if NAME.match(op) else "the operator") if template else None
    return _page(request, who, page=page, message=message)


@route("/operators", "POST")
def add_operator_form(request: Request, name: str = Form("", max_length=64), role: str = Form("", max_length=16),
                      password: str = Form("", max_length=MAX_PASSWORD),
                      password2: str = Form("", max_length=MAX_PASSWORD),
                      who: Principal = Depends(require(ADMIN))) -> Response:
    form = {"name": name, "role": role}
    if password != password2:
        return _page(request, who, 422, error="The two passwords differ: nothing was saved.", form=form)
    try:
        op = _service(request).add(name, role, password, actor=who.name)
    except OperatorError as exc:
        return _page(request, who, _status(exc), error=str(exc), form=form)
    return _done("added", op.name)


@route("/operators/{name}/role", "POST")
def role_form(request: Request, name: str = Path(pattern=OPERATOR_NAME), role: str = Form("", max_length=16),
              who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        _service(request).set_role(name, role, actor=who.name)
    except OperatorError as exc:
        return _page(request, who, _status(exc), error=str(exc))
    return _done("role", name)


@route("/operators/{name}/password", "POST")
def password_form(request: Request, name: str = Path(pattern=OPERATOR_NAME),
                  password: str = Form("", max_length=MAX_PASSWORD), password2: str = Form("", max_length=MAX_PASSWORD),
                  who: Principal = Depends(require(ADMIN))) -> Response:
    if password != password2:
        return _page(request, who, 422, error=f"The two passwords for {name} differ: nothing was saved.")
    try:
        _service(request).reset_password(name, password, actor=who.name)
    except OperatorError as exc:
        return _page(request, who, _status(exc), error=str(exc))
    return _done("password", name)


def _confirm(request: Request, who: Principal, name: str, *, title: str, text: str, action: str,
             button: str) -> Response:
    from server.web.pages import render

    try:
        _service(request).require(name)
    except UnknownOperator as exc:
        return _page(request, who, 404, error=str(exc))
    return render(request, "confirm.html", who, title=title, text=text, action=action, fields={}, button=button,
                  back="/operators", danger=True)


@route("/operators/{name}/disable", "GET")
def disable_confirm(request: Request, name: str = Path(pattern=OPERATOR_NAME),
                    who: Principal = Depends(require(ADMIN))) -> Response:
    return _confirm(request, who, name, title=f"Disable {name}?",
                    text=f"{name} can no longer log in; their open sessions, live views and API tokens stop working "
                         "at once. The account stays in the audit log.",
                    action=f"/operators/{name}/disable", button=f"Disable {name}")


@route("/operators/{name}/disable", "POST")
def disable_form(request: Request, name: str = Path(pattern=OPERATOR_NAME),
                 who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        changed = _service(request).disable(name, actor=who.name)
    except OperatorError as exc:
        return _page(request, who, _status(exc), error=str(exc))
    return _done("disabled" if changed else "already", name)


@route("/operators/{name}/2fa/reset", "GET")
def two_factor_confirm(request: Request, name: str = Path(pattern=OPERATOR_NAME),
                       who: Principal = Depends(require(ADMIN))) -> Response:
    return _confirm(request, who, name, title=f"Remove the two-factor login of {name}?",
                    text=f"For a lost phone: {name}'s authenticator app and recovery codes stop working and their "
                         "sessions end. They log in with their password alone and enrol again.",
                    action=f"/operators/{name}/2fa/reset", button="Remove two-factor login")


@route("/operators/{name}/2fa/reset", "POST")
def two_factor_form(request: Request, name: str = Path(pattern=OPERATOR_NAME),
                    who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        changed = request.app.state.desk.auth.reset_second_factor(name, actor=who.name)
    except UnknownOperator as exc:
        return _page(request, who, 404, error=str(exc))
    return _done("2fa" if changed else "no2fa", name)


@route("/operators/{name}/tokens", "POST")
def token_form(request: Request, name: str = Path(pattern=OPERATOR_NAME), label: str = Form("", max_length=64),
               role: str = Form("", max_length=16), who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        secret, token = _service(request).issue_token(name, label.strip(), role=role or None, actor=who.name)
    except OperatorError as exc:
        return _page(request, who, _status(exc), error=str(exc))
    # The one time the secret exists outside the caller's hands: on this page, never stored, never shown again.
    return _page(request, who, issued={"secret": secret, "token": token})


@route("/operators/{name}/tokens/revoke", "POST")
def revoke_form(request: Request, name: str = Path(pattern=OPERATOR_NAME), label: str = Form("", max_length=64),
                who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        revoked = _service(request).revoke_token(name, label, actor=who.name)
    except OperatorError as exc:
        return _page(request, who, _status(exc), error=str(exc))
    if not revoked:
        return _page(request, who, 404, error=f"{name} has no live token labelled {label!r}.")
    return _done("revoked", name)
