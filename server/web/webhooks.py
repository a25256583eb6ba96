"""The desk's Webhooks page and its API (admin only; docs/operations.md "Webhooks", docs/desk.md "Webhooks").

A table of endpoints calling :class:`server.webhooks.Webhooks` and nothing more: list, create, edit, enable or
disable, rotate the secret, delete, send a test delivery, the deliveries of a webhook and the dead letters with
"retry". Every change is audited by the service. A secret is shown once: on the page (or in the API answer) that
created or rotated it, never again. Forms carry the session's CSRF token (checked by ``require``); deleting and
rotating ask for confirmation first (confirm.html).
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Depends, FastAPI, Form, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from server.sessions import Principal
from server.web.access import require
from server.web.api import API_PREFIX, ERRORS, ErrorOut
from server.web.roles import ADMIN
from server.web.routes import Routes
from server.webhooks import (DECISIONS, EVENT_TYPES, MAX_URL, SIGNATURE_HEADER, PingResult, Subscription,
                             WebhookConflict, WebhookError, WebhookNotFound, Webhooks)

api = Routes(API_PREFIX, tags=["desk"])
page = Routes(include_in_schema=False)

#: The page's path (under the navigation's "Webhooks").
PAGE = "/integrations/webhooks"
WEBHOOK_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
DELIVERY_ID = r"^[A-Za-z0-9_.:-]{1,64}$"
STATES = Literal["pending", "delivered", "dead"]
RESPONSES: dict[int | str, dict[str, Any]] = {**ERRORS, 409: {"model": ErrorOut}}


def install(app: FastAPI) -> None:
    api.install(app)
    page.install(app)


def _service(request: Request) -> Webhooks:
    service = request.app.state.desk.server.webhooks
    if service is None:  # a server built without bootstrap (some tests): nothing to manage
        raise HTTPException(404, "this server runs without webhooks")
    return service  # type: ignore[no-any-return]


def _status(exc: WebhookError) -> int:
    return 404 if isinstance(exc, WebhookNotFound) else 409 if isinstance(exc, WebhookConflict) else 422


def _refused(exc: WebhookError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "detail": None}, status_code=_status(exc))


# --------------------------------------------------------------------------- API models


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64, description="a label unique on the site")
    url: str = Field(min_length=1, max_length=MAX_URL, description="the receiver: https:// (or http://) only")
    event_types: list[str] = Field(min_length=1, max_length=len(EVENT_TYPES),
                                   description="what it receives: event types (docs/mqtt.md), alarm_raised, "
                                               "alarm_escalated (GET /api/v1/webhooks lists them)")
    doors: list[str] = Field(default_factory=list, max_length=500,
                             description="only events and alarms at these doors (empty: everywhere)")
    decision: Literal["granted", "denied"] | None = Field(None, description="only access events with this decision "
                                                                            "(events without one pass)")
    include_names: bool = Field(False, description="carry people's names (docs/privacy.md); ids only when false")
    enabled: bool = True


class CountsOut(BaseModel):
    pending: int
    delivered: int
    dead: int


class WebhookOut(BaseModel):
    id: str
    name: str
    url: str
    event_types: list[str]
    doors: list[str]
    decision: str | None
    include_names: bool
    enabled: bool
    created_by: str
    created_at: float
    updated_at: float
    secret_rotated_at: float | None
    deliveries: CountsOut


class WebhooksOut(BaseModel):
    webhooks: list[WebhookOut]
    event_types: list[str] = Field(description="every type a webhook may subscribe to")
    signature_header: str = SIGNATURE_HEADER


class CreatedOut(WebhookOut):
    secret: str = Field(description="the signing secret: in this answer only, never shown again (rotate to replace)")


class SecretOut(BaseModel):
    id: str
    secret: str = Field(description="the new signing secret, in force now: in this answer only")


class DeletedOut(BaseModel):
    id: str
    deliveries_removed: int


class TestOut(BaseModel):
    delivery: str = Field(description="the test delivery's id (X-Doorkeep-Delivery)")
    ok: bool = Field(description="the receiver answered 2xx")
    status: int | None = Field(description="the HTTP status, null when no answer came")
    error: str | None
    elapsed_ms: float


class DeliveryOut(BaseModel):
    id: str
    webhook: str
    source: str = Field(description="what it is about: the event id, or alarm_raised:ID / alarm_escalated:ID:MS")
    event_type: str
    state: str = Field(description="pending, delivered or dead")
    attempts: int
    next_attempt_at: float | None = Field(description="pending: when it is tried next")
    created_at: float
    updated_at: float
    delivered_at: float | None
    last_status: int | None
    last_error: str | None


class DeliveryDetailOut(DeliveryOut):
    body: str | None = Field(description="the JSON body as signed and sent; null once delivered (it is dropped)")


class DeliveriesOut(BaseModel):
    deliveries: list[DeliveryOut] = Field(description="most recently changed first")


class RetriedOut(BaseModel):
    retried: int


def _out(service: Webhooks, sub: Subscription) -> WebhookOut:
    return WebhookOut(id=sub.id, name=sub.name, url=sub.url, event_types=list(sub.event_types), doors=list(sub.doors),
                      decision=sub.decision, include_names=sub.include_names, enabled=sub.enabled,
                      created_by=sub.created_by, created_at=sub.created_at, updated_at=sub.updated_at,
                      secret_rotated_at=sub.secret_rotated_at, deliveries=CountsOut(**service.counts(sub.id)))


def _delivery(row: dict[str, Any]) -> DeliveryOut:
    return DeliveryOut(id=row["id"], webhook=row["subscription"], source=row["source"], event_type=row["event_type"],
                       state=row["state"], attempts=row["attempts"],
                       next_attempt_at=row["next_attempt_at"] if row["state"] == "pending" else None,
                       created_at=row["created_at"], updated_at=row["updated_at"], delivered_at=row["delivered_at"],
                       last_status=row["last_status"], last_error=row["last_error"])


# --------------------------------------------------------------------------- API


@api("/webhooks", "GET", response_model=WebhooksOut, responses=RESPONSES, dependencies=[Depends(require(ADMIN))],
     summary="Every webhook (never its secret), with its deliveries by state, and the types one may subscribe to")
def list_webhooks(request: Request) -> Any:
    service = _service(request)
    return WebhooksOut(webhooks=[_out(service, s) for s in service.all()], event_types=list(EVENT_TYPES))


@api("/webhooks", "POST", status_code=201, response_model=CreatedOut, responses=RESPONSES,
     summary="Create a webhook: the signing secret is in this answer only (audited, never the secret)")
def create_webhook(body: WebhookIn, request: Request, who: Principal = Depends(require(ADMIN))) -> Any:
    service = _service(request)
    try:
        sub, secret = service.create(**body.model_dump(), actor=who.name)
    except WebhookError as exc:
        return _refused(exc)
    return CreatedOut(**_out(service, sub).model_dump(), secret=secret)


@api("/webhooks/{webhook_id}", "GET", response_model=WebhookOut, responses=RESPONSES,
     dependencies=[Depends(require(ADMIN))], summary="One webhook (never its secret)")
def get_webhook(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID)) -> Any:
    service = _service(request)
    try:
        return _out(service, service.get(webhook_id))
    except WebhookError as exc:
        return _refused(exc)


@api("/webhooks/{webhook_id}", "PUT", response_model=WebhookOut, responses=RESPONSES,
     summary="Replace a webhook's settings (everything but the secret; audited with what changed)")
def update_webhook(body: WebhookIn, request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
                   who: Principal = Depends(require(ADMIN))) -> Any:
    service = _service(request)
    try:
        return _out(service, service.update(webhook_id, **body.model_dump(), actor=who.name))
    except WebhookError as exc:
        return _refused(exc)


@api("/webhooks/{webhook_id}", "DELETE", response_model=DeletedOut, responses=RESPONSES,
     summary="Delete a webhook with its pending deliveries and dead letters (audited)")
def delete_webhook(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
                   who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        removed = _service(request).delete(webhook_id, actor=who.name)
    except WebhookError as exc:
        return _refused(exc)
    return DeletedOut(id=webhook_id, deliveries_removed=removed)


@api("/webhooks/{webhook_id}/rotate-secret", "POST", response_model=SecretOut, responses=RESPONSES,
     summary="A new signing secret, in force at once for every attempt (the old one stops); in this answer only")
def rotate_secret(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
                  who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        secret = _service(request).rotate_secret(webhook_id, actor=who.name)
    except WebhookError as exc:
        return _refused(exc)
    return SecretOut(id=webhook_id, secret=secret)


@api("/webhooks/{webhook_id}/test", "POST", response_model=TestOut, responses=RESPONSES,
     summary="Send a signed test delivery (type ping) now, outside the queue, and say how the receiver answered")
def test_webhook(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
                 who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        result = _service(request).send_test(webhook_id, actor=who.name)
    except WebhookError as exc:
        return _refused(exc)
    return TestOut(**vars(result))


@api("/webhooks/{webhook_id}/deliveries", "GET", response_model=DeliveriesOut, responses=RESPONSES,
     dependencies=[Depends(require(ADMIN))], summary="A webhook's deliveries, most recently changed first")
def webhook_deliveries(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID), state: STATES | None = None,
                       limit: int = Query(100, ge=1, le=1000)) -> Any:
    try:
        rows = _service(request).deliveries(webhook_id, state=state, limit=limit)
    except WebhookError as exc:
        return _refused(exc)
    return DeliveriesOut(deliveries=[_delivery(r) for r in rows])


@api("/webhooks/{webhook_id}/retry-dead", "POST", response_model=RetriedOut, responses=RESPONSES,
     summary="Put every dead letter of a webhook back in the queue, due now (audited)")
def retry_dead(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
               who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        return RetriedOut(retried=_service(request).retry_dead(webhook_id, actor=who.name))
    except WebhookError as exc:
        return _refused(exc)


@api("/webhook-deliveries", "GET", response_model=DeliveriesOut, responses=RESPONSES,
     dependencies=[Depends(require(ADMIN))],
     summary="Deliveries of every webhook (default: the dead letters), most recently changed first")
def all_deliveries(request: Request, state: STATES | None = "dead", limit: int = Query(100, ge=1, le=1000)) -> Any:
    try:
        rows = _service(request).deliveries(state=state, limit=limit)
    except WebhookError as exc:
        return _refused(exc)
    return DeliveriesOut(deliveries=[_delivery(r) for r in rows])


@api("/webhook-deliveries/{delivery_id}", "GET", response_model=DeliveryDetailOut, responses=RESPONSES,
     dependencies=[Depends(require(ADMIN))], summary="One delivery with its body (until it is delivered)")
def one_delivery(request: Request, delivery_id: str = Path(pattern=DELIVERY_ID)) -> Any:
    try:
        row = _service(request).delivery(delivery_id)
    except WebhookError as exc:
        return _refused(exc)
    return DeliveryDetailOut(**_delivery(row).model_dump(), body=row["payload"])


@api("/webhook-deliveries/{delivery_id}/retry", "POST", response_model=RetriedOut, responses=RESPONSES,
     summary="Put one dead letter back in the queue, due now, with a fresh retry window (409 if it is not dead)")
def retry_delivery(request: Request, delivery_id: str = Path(pattern=DELIVERY_ID),
                   who: Principal = Depends(require(ADMIN))) -> Any:
    try:
        _service(request).retry(delivery_id, actor=who.name)
    except WebhookError as exc:
        return _refused(exc)
    return RetriedOut(retried=1)


# --------------------------------------------------------------------------- pages

DONE = {"created": "Webhook created.", "saved": "Webhook saved.", "enabled": "Webhook enabled.",
        "disabled": "Webhook disabled: nothing is queued for it, and what it has pending waits.",
        "deleted": "Webhook deleted, with its pending deliveries and dead letters.",
        "retried": "Dead letters put back in the queue: they are sent again now.", "same": "Nothing changed."}


def _form(name: str, url: str, event_types: list[str], doors: list[str], decision: str, include_names: str,
          enabled: str) -> dict[str, Any]:
    return {"name": name, "url": url, "event_types": event_types, "doors": doors, "decision": decision or None,
            "include_names": include_names == "1", "enabled": enabled == "1"}


def _render(request: Request, template: str, who: Principal, status: int = 200, **context: Any) -> Response:
    from server.web.pages import render

    site = request.app.state.desk.server.site
    doors = sorted(((d.id, d.name) for d in site.doors.values()), key=lambda d: d[1].casefold())
    return render(request, template, who, status, tz=site.timezone, event_types=EVENT_TYPES, decisions=DECISIONS,
                  site_doors=doors, signature_header=SIGNATURE_HEADER, **context)


def _list_page(request: Request, who: Principal, status: int = 200, **context: Any) -> Response:
    service = _service(request)
    rows = [{"sub": s, "counts": service.counts(s.id)} for s in service.all()]
    names = {s.id: s.name for s in service.all()}
    dead = service.deliveries(state="dead", limit=200)
    return _render(request, "webhooks.html", who, status, rows=rows, dead=dead, names=names, **context)


def _detail_page(request: Request, who: Principal, webhook_id: str, status: int = 200, **context: Any) -> Response:
    service = _service(request)
    try:
        sub = service.get(webhook_id)
    except WebhookNotFound as exc:
        return _list_page(request, who, 404, error=str(exc))
    return _render(request, "webhook.html", who, status, sub=sub, counts=service.counts(sub.id),
                   deliveries=service.deliveries(sub.id, limit=100), **context)


@page(PAGE, "GET")
def webhooks_page(request: Request, done: str = Query("", max_length=20),
                  who: Principal = Depends(require(ADMIN))) -> Response:
    return _list_page(request, who, message=DONE.get(done))


@page(PAGE, "POST")
def create_form(request: Request, name: str = Form("", max_length=64), url: str = Form("", max_length=MAX_URL),
                event_types: list[str] = Form([]), doors: list[str] = Form([]), decision: str = Form("", max_length=10),
                include_names: str = Form("", max_length=1), enabled: str = Form("1", max_length=1),
                who: Principal = Depends(require(ADMIN))) -> Response:
    form = _form(name, url, event_types, doors, decision, include_names, enabled)
    try:
        sub, secret = _service(request).create(**form, actor=who.name)
    except WebhookError as exc:
        return _list_page(request, who, _status(exc), error=str(exc), form=form)
    # The one time the secret is shown: on the page that answers the form, never stored in the browser.
    return _detail_page(request, who, sub.id, 201, secret=secret, message=DONE["created"])


@page(PAGE + "/{webhook_id}", "GET")
def webhook_page(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID), done: str = Query("", max_length=20),
                 who: Principal = Depends(require(ADMIN))) -> Response:
    return _detail_page(request, who, webhook_id, message=DONE.get(done))


@page(PAGE + "/{webhook_id}", "POST")
def edit_form(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID), name: str = Form("", max_length=64),
              url: str = Form("", max_length=MAX_URL), event_types: list[str] = Form([]), doors: list[str] = Form([]),
              decision: str = Form("", max_length=10), include_names: str = Form("", max_length=1),
              enabled: str = Form("", max_length=1), who: Principal = Depends(require(ADMIN))) -> Response:
    form = _form(name, url, event_types, doors, decision, include_names, enabled)
    try:
        _service(request).update(webhook_id, **form, actor=who.name)
    except WebhookError as exc:
        return _detail_page(request, who, webhook_id, _status(exc), error=str(exc), form=form)
    return RedirectResponse(f"{PAGE}/{webhook_id}?done=saved", status_code=303)


@page(PAGE + "/{webhook_id}/enabled", "POST")
def enabled_form(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID), enabled: str = Form("", max_length=1),
                 who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        changed = _service(request).set_enabled(webhook_id, enabled == "1", actor=who.name)
    except WebhookError as exc:
        return _detail_page(request, who, webhook_id, _status(exc), error=str(exc))
    done = ("enabled" if enabled == "1" else "disabled") if changed else "same"
    return RedirectResponse(f"{PAGE}/{webhook_id}?done={done}", status_code=303)


@page(PAGE + "/{webhook_id}/test", "POST")
def test_form(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
              who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        result: PingResult = _service(request).send_test(webhook_id, actor=who.name)
    except WebhookError as exc:
        return _detail_page(request, who, webhook_id, _status(exc), error=str(exc))
    return _detail_page(request, who, webhook_id, test=result)


def _confirm(request: Request, who: Principal, webhook_id: str, *, title: str, text: str, action: str, button: str,
             danger: bool) -> Response:
    from server.web.pages import render

    try:
        _service(request).get(webhook_id)
    except WebhookNotFound as exc:
        return _list_page(request, who, 404, error=str(exc))
    return render(request, "confirm.html", who, title=title, text=text, action=action, fields={}, button=button,
                  back=f"{PAGE}/{webhook_id}", danger=danger)


@page(PAGE + "/{webhook_id}/rotate", "GET")
def rotate_confirm(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
                   who: Principal = Depends(require(ADMIN))) -> Response:
    return _confirm(request, who, webhook_id, title="Rotate the signing secret?",
                    text="A new secret signs every delivery from now on, pending ones included; the old secret stops "
                         "at once, so the receiver must be given the new one straight away. It is shown once.",
                    action=f"{PAGE}/{webhook_id}/rotate", button="Rotate the secret", danger=True)


@page(PAGE + "/{webhook_id}/rotate", "POST")
def rotate_form(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
                who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        secret = _service(request).rotate_secret(webhook_id, actor=who.name)
    except WebhookError as exc:
        return _detail_page(request, who, webhook_id, _status(exc), error=str(exc))
    return _detail_page(request, who, webhook_id, secret=secret, message="New signing secret in force.")


@page(PAGE + "/{webhook_id}/delete", "GET")
def delete_confirm(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
                   who: Principal = Depends(require(ADMIN))) -> Response:
    return _confirm(request, who, webhook_id, title="Delete this webhook?",
                    text="Nothing more is sent to its receiver; its pending deliveries and dead letters are deleted "
                         "with it. The audit log keeps the record of it.",
                    action=f"{PAGE}/{webhook_id}/delete", button="Delete the webhook", danger=True)


@page(PAGE + "/{webhook_id}/delete", "POST")
def delete_form(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
                who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        _service(request).delete(webhook_id, actor=who.name)
    except WebhookError as exc:
        return _list_page(request, who, _status(exc), error=str(exc))
    return RedirectResponse(f"{PAGE}?done=deleted", status_code=303)


@page(PAGE + "/{webhook_id}/retry-dead", "POST")
def retry_dead_form(request: Request, webhook_id: str = Path(pattern=WEBHOOK_ID),
                    who: Principal = Depends(require(ADMIN))) -> Response:
    try:
        count = _service(request).retry_dead(webhook_id, actor=who.name)
    except WebhookError as exc:
        return _detail_page(request, who, webhook_id, _status(exc), error=str(exc))
    return RedirectResponse(f"{PAGE}/{webhook_id}?done={'retried' if count else 'same'}", status_code=303)


@page("/integrations/webhook-deliveries/{delivery_id}/retry", "POST")
def retry_form(request: Request, delivery_id: str = Path(pattern=DELIVERY_ID),
               who: Principal = Depends(require(ADMIN))) -> Response:
    service = _service(request)
    try:
        service.retry(delivery_id, actor=who.name)
    except WebhookError as exc:
        return _list_page(request, who, _status(exc), error=str(exc))
    return RedirectResponse(f"{PAGE}?done=retried", status_code=303)
