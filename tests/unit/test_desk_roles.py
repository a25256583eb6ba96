"""The desk's whole role matrix, table-driven: every route (API and pages) x every way in (an admin, desk and
auditor token, and no login at all), against the table in docs/desk.md "Roles are not a ladder".

The table is written out here by hand, not read from the routes' declarations, so a route that declares the
wrong roles fails; and it must list exactly the app's routes, so a new route without a row fails too.

An allowed caller gets past the access check (no 401/403, no redirect to the login page): requests name ids
that do not exist or carry no body, so they end in 404/422/409 or a harmless 200 and change nothing that
matters (nothing is unlocked: the publish hook records every command). A refused role gets 403 with the
role it needs (API) or the "Not allowed" page; no login gets 401 JSON (API) or a redirect to /login (pages).

Real parts: a real ``Server`` on the demo site, real SQLite store, FastAPI's TestClient, real tokens.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from server.app import Server
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    app,
    bearer,
    client,
    clock,
    hasher,
    server,
    tokens,
)

A, D, U = "ada", "dex", "aud"  # admin, desk, auditor (tests/unit/test_desk_api.py ROLES)
K = "kim"  # the lobby's self check-in kiosk (server/web/kiosk.py), added by the test below
EVERYONE = {A, D, U, K}  # session-level routes: home, who am I, log out, two-factor enrolment
STAFF = {A, D, U}  # every role of the desk itself (not the kiosk)
DESK = {A, D}
PUBLIC: set[str] = set()  # marker: no login needed

#: (method, route path) -> who may call it. The rows follow docs/desk.md's role table.
MATRIX: dict[tuple[str, str], set[str]] = {
    ("POST", "/api/v1/session"): PUBLIC,
    ("GET", "/login"): PUBLIC,
    ("POST", "/login"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,  # monitoring: server/web/health.py
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("DELETE", "/api/v1/session"): EVERYONE,
    ("GET", "/api/v1/me"): EVERYONE,
    ("GET", "/api/v1/openapi.json"): EVERYONE,
    ("GET", "/"): EVERYONE,
    ("POST", "/logout"): EVERYONE,
    ("GET", "/api/v1/audit"): {A, U},
    ("GET", "/audit"): {A, U},
    ("GET", "/api/v1/audit/verify"): {A, U},
    ("GET", "/api/v1/doors"): DESK,
    ("GET", "/api/v1/doors/{door_id}"): DESK,
    ("GET", "/api/v1/operators"): {A},
    ("POST", "/api/v1/operators"): {A},
    ("POST", "/api/v1/operators/{name}/disable"): {A},
    ("POST", "/api/v1/operators/{name}/2fa/reset"): {A},
    ("POST", "/api/v1/operators/{name}/password"): {A},
    ("POST", "/api/v1/operators/{name}/role"): {A},
    ("GET", "/api/v1/operators/{name}/tokens"): {A},
    ("POST", "/api/v1/operators/{name}/tokens"): {A},
    ("POST", "/api/v1/operators/{name}/tokens/{label}/revoke"): {A},
    # the Operators page: admin only
    ("GET", "/operators"): {A},
    ("POST", "/operators"): {A},
    ("POST", "/operators/{name}/role"): {A},
    ("POST", "/operators/{name}/password"): {A},
    ("GET", "/operators/{name}/disable"): {A},
    ("POST", "/operators/{name}/disable"): {A},
    ("GET", "/operators/{name}/2fa/reset"): {A},
    ("POST", "/operators/{name}/2fa/reset"): {A},
    ("POST", "/operators/{name}/tokens"): {A},
    ("POST", "/operators/{name}/tokens/revoke"): {A},
    # two-factor login: the code step of the login form is public (it needs the password step's challenge);
    # every operator may open their own enrolment page
    ("POST", "/login/code"): PUBLIC,
    ("GET", "/account/2fa"): EVERYONE,
    ("POST", "/account/2fa"): EVERYONE,
    # live view and snapshots
    ("GET", "/api/v1/events"): DESK,
    ("GET", "/api/v1/events/stream"): DESK,
    ("GET", "/api/v1/events.csv"): DESK,
    ("GET", "/api/v1/snapshots/{snapshot_id}"): DESK,
    ("GET", "/live"): DESK,
    ("GET", "/api/v1/events/{event_id}/why"): DESK,  # "Why not?" (server/web/why.py)
    ("GET", "/events/{event_id}"): DESK,
    # visitors; the watchlist is admin only
    ("GET", "/api/v1/visitors/today"): DESK,
    ("GET", "/api/v1/visitors/notice"): DESK,
    ("POST", "/api/v1/visitors"): DESK,
    ("GET", "/api/v1/visitors/{visitor_id}"): DESK,
    ("POST", "/api/v1/visitors/{visitor_id}/check-in"): DESK,
    ("POST", "/api/v1/visitors/{visitor_id}/check-out"): DESK,
    ("POST", "/api/v1/visitors/import"): DESK,  # expected visitors from CSV (server/web/visitor_mail.py)
    ("GET", "/api/v1/visitors/{visitor_id}/mail"): DESK,
    # the visitor's pass and printed badge (server/web/badge.py)
    ("GET", "/api/v1/visitors/{visitor_id}/pass"): DESK,
    ("POST", "/api/v1/visitors/{visitor_id}/pass/lost"): DESK,
    ("POST", "/api/v1/visitors/{visitor_id}/invitation/resend"): DESK,
    ("GET", "/visitors/{visitor_id}/badge"): DESK | {K},  # the kiosk prints it too (server/web/badge.py)
    ("GET", "/visitors/{visitor_id}/pass"): DESK,
    ("POST", "/visitors/{visitor_id}/pass/lost"): DESK,
    ("POST", "/visitors/{visitor_id}/invitation/resend"): DESK,
    ("PUT", "/api/v1/people/{pid}/email"): {A},
    ("GET", "/visitors"): DESK,
    ("POST", "/visitors"): DESK,
    ("GET", "/visitors/{visitor_id}/check-in"): DESK,
    ("POST", "/visitors/{visitor_id}/check-in"): DESK,
    ("POST", "/visitors/{visitor_id}/check-out"): DESK,
    ("GET", "/api/v1/watchlist"): {A},
    ("POST", "/api/v1/watchlist"): {A},
    ("DELETE", "/api/v1/watchlist/{entry_id}"): {A},
    ("GET", "/visitors/watchlist"): {A},
    ("POST", "/visitors/watchlist"): {A},
    ("POST", "/visitors/watchlist/{entry_id}/remove"): {A},
    # the self check-in kiosk (server/web/kiosk.py): its own account, and an admin trying it out
    ("GET", "/kiosk"): {A, K},
    ("POST", "/kiosk/scan"): {A, K},
    ("POST", "/kiosk/pass"): {A, K},
    ("POST", "/kiosk/confirm"): {A, K},
    ("POST", "/kiosk/agree"): {A, K},
    ("POST", "/kiosk/check-in"): {A, K},
    ("POST", "/kiosk/check-out"): {A, K},
    # watchlist holds: only an admin overrides, the desk may refuse; agreements (server/web/agreements.py): texts
    # and the site's default are the admin's, a visit's agreements and acceptances the desk's
    ("POST", "/api/v1/visitors/{visitor_id}/hold/override"): {A},
    ("POST", "/visitors/{visitor_id}/hold/override"): {A},
    ("POST", "/api/v1/visitors/{visitor_id}/hold/refuse"): DESK,
    ("POST", "/visitors/{visitor_id}/hold/refuse"): DESK,
    ("POST", "/api/v1/visitors/{visitor_id}/cancel"): DESK,
    ("POST", "/visitors/{visitor_id}/cancel"): DESK,
    ("GET", "/api/v1/agreements"): DESK,
    ("POST", "/api/v1/agreements"): {A},
    ("PUT", "/api/v1/agreements/required"): {A},
    ("GET", "/api/v1/visitors/{visitor_id}/agreements"): DESK,
    ("PUT", "/api/v1/visitors/{visitor_id}/agreements"): DESK,
    ("POST", "/api/v1/visitors/{visitor_id}/agreements/accept"): DESK,
    ("POST", "/visitors/{visitor_id}/agreements"): DESK,
    ("GET", "/agreements"): {A},
    ("POST", "/agreements"): {A},
    ("POST", "/agreements/required"): {A},
    # the site model's revisions (docs/administration.md): admin changes, admin and auditor read
    ("GET", "/api/v1/site/revisions"): {A, U},
    ("GET", "/api/v1/site/revisions/{number}"): {A, U},
    ("POST", "/api/v1/site/changes"): {A},
    ("POST", "/api/v1/site/revisions/{number}/rollback"): {A},
    ("POST", "/api/v1/site/preview"): {A},
    ("GET", "/site/preview"): {A},
    ("POST", "/site/preview"): {A},
    ("GET", "/site"): {A, U},
    ("GET", "/site/revisions/{number}/rollback"): {A},
    ("POST", "/site/revisions/{number}/rollback"): {A},
    # the site's certificates and their expiry (server/web/certificates.py): admin and auditor read, admin checks
    ("GET", "/api/v1/site/certificates"): {A, U},
    ("POST", "/api/v1/site/certificates/check"): {A},
    ("GET", "/site/certificates"): {A, U},
    ("POST", "/site/certificates/check"): {A},
    # the site admin pages (server/web/site_pages.py): admin changes, auditor reads the lists and the matrix
    ("GET", "/site/areas"): {A, U},
    ("POST", "/site/areas"): {A},
    ("GET", "/site/areas/{oid}"): {A},
    ("POST", "/site/areas/{oid}"): {A},
    ("GET", "/site/areas/{oid}/delete"): {A},
    ("POST", "/site/areas/{oid}/delete"): {A},
    ("GET", "/site/doors"): {A, U},
    ("POST", "/site/doors"): {A},
    ("GET", "/site/doors/{oid}"): {A},
    ("POST", "/site/doors/{oid}"): {A},
    ("GET", "/site/doors/{oid}/delete"): {A},
    ("POST", "/site/doors/{oid}/delete"): {A},
    ("GET", "/site/schedules"): {A, U},
    ("POST", "/site/schedules"): {A},
    ("GET", "/site/schedules/{oid}"): {A},
    ("POST", "/site/schedules/{oid}"): {A},
    ("GET", "/site/schedules/{oid}/delete"): {A},
    ("POST", "/site/schedules/{oid}/delete"): {A},
    ("GET", "/site/levels"): {A, U},
    ("POST", "/site/levels"): {A},
    ("POST", "/site/levels/{oid}"): {A},
    ("GET", "/site/levels/{oid}/delete"): {A},
    ("POST", "/site/levels/{oid}/delete"): {A},
    # alarms
    ("GET", "/api/v1/alarms"): DESK,
    ("POST", "/api/v1/alarms/{alarm_id}/acknowledge"): DESK,
    ("POST", "/api/v1/alarms/{alarm_id}/resolve"): DESK,
    ("GET", "/alarms"): DESK,
    ("POST", "/alarms/{alarm_id}/acknowledge"): DESK,
    ("POST", "/alarms/{alarm_id}/resolve"): DESK,
    # the alarm console (server/web/alarm_desk.py)
    ("GET", "/api/v1/alarms/summary"): DESK,
    ("POST", "/api/v1/alarms/acknowledge"): DESK,
    ("POST", "/api/v1/alarms/resolve"): DESK,
    ("PUT", "/api/v1/me/alarm-sound"): DESK,
    ("POST", "/alarms/bulk"): DESK,
    ("POST", "/alarms/sound"): DESK,
    # incidents and evidence bundles (server/web/incidents.py): an auditor reads, admin and desk work and export
    ("GET", "/incidents"): STAFF,
    ("GET", "/incidents/{incident_id}"): STAFF,
    ("GET", "/incidents/new"): DESK,
    ("POST", "/incidents"): DESK,
    ("POST", "/incidents/{incident_id}/notes"): DESK,
    ("POST", "/incidents/{incident_id}/assign"): DESK,
    ("POST", "/incidents/{incident_id}/attach"): DESK,
    ("POST", "/incidents/{incident_id}/items/{item_id}/detach"): DESK,
    ("POST", "/incidents/{incident_id}/close"): DESK,
    ("POST", "/incidents/{incident_id}/reopen"): DESK,
    ("GET", "/incidents/{incident_id}/evidence.zip"): DESK,
    ("GET", "/sounds/{kind}.wav"): DESK,
    # doors: board, remote unlock, lockdown
    ("GET", "/api/v1/board"): DESK,
    ("POST", "/api/v1/doors/{door_id}/unlock"): DESK,
    ("POST", "/api/v1/doors/{door_id}/override"): DESK,
    ("POST", "/api/v1/doors/{door_id}/override/release"): DESK,
    ("GET", "/doors/{door_id}/override"): DESK,
    ("POST", "/doors/{door_id}/override"): DESK,
    ("POST", "/doors/{door_id}/release"): DESK,
    ("POST", "/api/v1/lockdown"): DESK,
    ("GET", "/doors"): DESK,
    ("GET", "/doors/{door_id}/unlock"): DESK,
    ("POST", "/doors/{door_id}/unlock"): DESK,
    ("GET", "/doors/lockdown"): DESK,
    ("POST", "/doors/lockdown"): DESK,
    # the floor view (server/web/floors.py)
    ("GET", "/api/v1/floors"): DESK,
    ("GET", "/floors"): DESK,
    # muster
    ("GET", "/api/v1/muster"): DESK,
    ("GET", "/muster"): DESK,
    # reports (server/web/reports.py): every role reads them
    ("GET", "/reports"): STAFF,
    ("GET", "/reports/movements"): STAFF,
    ("GET", "/reports/activity"): STAFF,
    ("GET", "/reports/refusals"): STAFF,
    ("GET", "/reports/traffic"): STAFF,
    ("GET", "/reports/occupancy"): STAFF,
    ("GET", "/api/v1/reports/movements.csv"): STAFF,
    ("GET", "/api/v1/reports/activity.csv"): STAFF,
    ("GET", "/api/v1/reports/refusals.csv"): STAFF,
    ("GET", "/api/v1/reports/traffic.csv"): STAFF,
    ("GET", "/api/v1/reports/occupancy.csv"): STAFF,
    # people and cards: admin only
    ("GET", "/api/v1/people"): {A},
    ("GET", "/api/v1/people/search"): {A, D},  # names and ids for the visitor's host picker, no cards
    ("POST", "/api/v1/people"): {A},
    ("POST", "/api/v1/people/import"): {A},
    ("GET", "/api/v1/people/{pid}"): {A},
    ("POST", "/api/v1/people/{pid}/suspend"): {A},
    ("POST", "/api/v1/people/{pid}/reinstate"): {A},
    ("PUT", "/api/v1/people/{pid}/access"): {A},
    ("POST", "/api/v1/people/{pid}/cards"): {A},
    ("POST", "/api/v1/cards/{card}/lost"): {A},
    ("GET", "/people"): {A},
    ("POST", "/people"): {A},
    ("POST", "/people/import"): {A},
    ("GET", "/people/{pid}"): {A},
    ("POST", "/people/{pid}/suspend"): {A},
    ("POST", "/people/{pid}/reinstate"): {A},
    ("POST", "/people/{pid}/access"): {A},
    ("POST", "/people/{pid}/cards"): {A},
    ("POST", "/people/{pid}/cards/{card}/lost"): {A},
    # cardholder photos (server/photos.py): the desk sees them beside snapshots, only admins change them
    ("GET", "/api/v1/people/{pid}/photo"): {A, D},
    ("PUT", "/api/v1/people/{pid}/photo"): {A},
    ("DELETE", "/api/v1/people/{pid}/photo"): {A},
    ("POST", "/people/{pid}/photo"): {A},
    ("POST", "/people/{pid}/photo/delete"): {A},
    # webhooks (server/web/webhooks.py): admin only, the API and the Webhooks page
    ("GET", "/api/v1/webhooks"): {A},
    ("POST", "/api/v1/webhooks"): {A},
    ("GET", "/api/v1/webhooks/{webhook_id}"): {A},
    ("PUT", "/api/v1/webhooks/{webhook_id}"): {A},
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): {A},
    ("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret"): {A},
    ("POST", "/api/v1/webhooks/{webhook_id}/test"): {A},
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): {A},
    ("POST", "/api/v1/webhooks/{webhook_id}/retry-dead"): {A},
    ("GET", "/api/v1/webhook-deliveries"): {A},
    ("GET", "/api/v1/webhook-deliveries/{delivery_id}"): {A},
    ("POST", "/api/v1/webhook-deliveries/{delivery_id}/retry"): {A},
    ("GET", "/integrations/webhooks"): {A},
    ("POST", "/integrations/webhooks"): {A},
    ("GET", "/integrations/webhooks/{webhook_id}"): {A},
    ("POST", "/integrations/webhooks/{webhook_id}"): {A},
    ("POST", "/integrations/webhooks/{webhook_id}/enabled"): {A},
    ("POST", "/integrations/webhooks/{webhook_id}/test"): {A},
    ("GET", "/integrations/webhooks/{webhook_id}/rotate"): {A},
    ("POST", "/integrations/webhooks/{webhook_id}/rotate"): {A},
    ("GET", "/integrations/webhooks/{webhook_id}/delete"): {A},
    ("POST", "/integrations/webhooks/{webhook_id}/delete"): {A},
    ("POST", "/integrations/webhooks/{webhook_id}/retry-dead"): {A},
    ("POST", "/integrations/webhook-deliveries/{delivery_id}/retry"): {A},
}

#: Ids that name nothing: an allowed request stops at "not found" (or validation) and changes nothing.
PLACEHOLDERS = {"{door_id}": "no-such-door", "{name}": "no-such-operator", "{label}": "no-such-token", "{snapshot_id}": "no-such-snapshot",
                "{visitor_id}": "999999", "{entry_id}": "999999", "{alarm_id}": "999999", "{pid}": "no-such-person",
                "{card}": "0" * 64, "{oid}": "no-such-object", "{incident_id}": "999999", "{item_id}": "999999",
                "{webhook_id}": "no-such-webhook", "{delivery_id}": "no-such-delivery"}
#: Query strings that make an allowed request end early (the live stream would otherwise never end).
QUERIES = {"/api/v1/events/stream": {"door": "x" * 65}}


def concrete(path: str) -> str:
    for name, value in PLACEHOLDERS.items():
        path = path.replace(name, value)
    return path


def call(http: Any, method: str, path: str, headers: dict[str, str]) -> Any:
    return http.request(method, concrete(path), headers=headers, params=QUERIES.get(path))


def test_the_matrix_lists_exactly_the_apps_routes(app: FastAPI) -> None:  # noqa: F811 - fixture
    routes = {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
    assert routes == set(MATRIX), {"missing from MATRIX": routes - set(MATRIX), "no such route": set(MATRIX) - routes}


def test_every_route_answers_each_role_as_the_table_says(app: FastAPI, client: Any,  # noqa: F811 - fixtures
                                                         server: Server) -> None:  # noqa: F811
    sent: list[tuple[str, bytes]] = []
    server.commands.publish = lambda topic, payload: sent.append((topic, payload))  # a command would show here
    toks = tokens(app)
    app.state.desk.operators.add(K, "kiosk", "kim lobby tablet pass", actor="test")
    toks[K] = app.state.desk.operators.issue_token(K, "tests", actor="test")[0]
    wrong: list[str] = []
    # POST /logout last: logging out is allowed for everyone and must not end anything the other rows need
    for (method, path), allowed in sorted(MATRIX.items(), key=lambda kv: kv[0][1] == "/logout"):
        api = path.startswith("/api/")
        for who in (A, D, U, K, None):
            r = call(client, method, path, bearer(toks[who]) if who else {})
            where = f"{method} {path} as {who or 'nobody'} -> {r.status_code}"
            if not allowed:  # public
                ok = r.status_code not in (401, 403)
            elif who is None:
                ok = (r.status_code == 401 and "error" in r.json()) if api else (
                    r.status_code == 303 and r.headers["location"].startswith("/login"))
            elif who in allowed:
                to_login = r.status_code in (302, 303) and r.headers.get("location", "").startswith("/login")
                ok = r.status_code not in (401, 403) and r.status_code < 500 and (not to_login or path == "/logout")
            else:
                ok = r.status_code == 403 and (
                    ("needs" in r.json()["error"]) if api else "Not allowed" in r.text)
            if not ok:
                wrong.append(f"{where}: {r.text[:160]}")
    assert wrong == []
    assert sent == []  # no request of the matrix published a command (no door exists under the placeholders)
