"""The desk's Webhooks page and API (server/web/webhooks.py; docs/desk.md "Webhooks", docs/operations.md).

Real parts: a ``Server`` bootstrapped on the demo site with its SQLite store, FastAPI's TestClient with real
sessions and CSRF tokens, the real visitor check-in (its ``visitor_arrived`` event is what a host integration
receives), and a real HTTP receiver on loopback that checks every signature (tests/webhook_receiver.py).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Iterator

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from server.app import Server
from server.webhooks import WebhookSettings
from tests.unit.test_desk_visitors import (  # noqa: F401 - fixtures, used by name
    app,
    check_in,
    client,
    clock,
    login,
    register,
    server,
)
from tests.webhook_receiver import WebhookReceiver


@pytest.fixture
def receiver(clock: FakeClock) -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(now=clock.wall)
    yield r
    r.stop()


def create(client: TestClient, csrf: dict[str, str], receiver: WebhookReceiver, path: str = "/hook",
           **kw: Any) -> dict[str, Any]:
    body = {"name": f"hook {path}", "url": receiver.url(path), "event_types": ["visitor_arrived"], **kw}
    r = client.post("/api/v1/webhooks", json=body, headers=csrf)
    assert r.status_code == 201, r.text
    receiver.secrets[path] = r.json()["secret"]
    return dict(r.json())


def test_the_page_creates_a_webhook_and_shows_its_secret_once(client: TestClient, server: Server,
                                                              receiver: WebhookReceiver) -> None:
    csrf = login(client, "ada")
    home = client.get("/").text
    assert '<a href="/integrations/webhooks">Webhooks</a>' in home
    form = {"name": "Front desk chat", "url": receiver.url(), "event_types": ["visitor_arrived", "alarm_escalated"],
            "doors": [], "decision": "", "enabled": "1"}
    assert client.post("/integrations/webhooks", data=form).status_code == 403  # no CSRF token: refused
    r = client.post("/integrations/webhooks", data=form, headers=csrf)
    assert r.status_code == 201, r.text
    secret = re.search(r'id="webhook-secret"[^>]*value="(whsec_[^"]+)"', r.text)
    assert secret is not None and "Copy this secret now" in r.text
    assert server.webhooks is not None
    [sub] = server.webhooks.all()
    assert sub.name == "Front desk chat" and sub.event_types == ("visitor_arrived", "alarm_escalated")
    assert not sub.include_names and sub.enabled and sub.created_by == "ada"
    for url in ("/integrations/webhooks", f"/integrations/webhooks/{sub.id}"):
        page = client.get(url)
        assert page.status_code == 200 and secret.group(1) not in page.text  # never shown again
    assert sub.name in client.get("/integrations/webhooks").text
    bad = client.post("/integrations/webhooks", data={**form, "name": "other", "url": "ftp://x/y"}, headers=csrf)
    assert bad.status_code == 422 and "scheme" in bad.text and 'value="other"' in bad.text  # the form kept
    # The desk role has no Webhooks page, no link to it, no API.
    client.cookies.clear()
    login(client, "dex")
    assert "/integrations/webhooks" not in client.get("/").text
    assert client.get("/integrations/webhooks").status_code == 403
    assert client.get("/api/v1/webhooks").status_code == 403


def test_the_api_creates_lists_changes_and_deletes_and_never_returns_the_secret_again(
        client: TestClient, receiver: WebhookReceiver) -> None:
    csrf = login(client, "ada")
    made = create(client, csrf, receiver, event_types=["access", "forced_open"], doors=["lab"], decision="denied")
    hook = made["id"]
    assert made["secret"].startswith("whsec_") and made["deliveries"] == {"pending": 0, "delivered": 0, "dead": 0}
    listed = client.get("/api/v1/webhooks")
    assert listed.status_code == 200 and made["secret"] not in listed.text and "secret" not in listed.json()["webhooks"][0]
    assert "visitor_arrived" in listed.json()["event_types"] and "alarm_escalated" in listed.json()["event_types"]
    one = client.get(f"/api/v1/webhooks/{hook}").json()
    assert (one["doors"], one["decision"], one["event_types"]) == (["lab"], "denied", ["access", "forced_open"])
    r = client.put(f"/api/v1/webhooks/{hook}", headers=csrf,
                   json={"name": "SOC", "url": receiver.url(), "event_types": ["access"], "enabled": False})
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["doors"] == []
    assert client.put(f"/api/v1/webhooks/{hook}", headers=csrf,
                      json={"name": "SOC", "url": "gopher://x", "event_types": ["access"]}).status_code == 422
    assert client.put(f"/api/v1/webhooks/{hook}", headers=csrf,
                      json={"name": "SOC", "url": receiver.url(), "event_types": []}).status_code == 422
    dup = client.post("/api/v1/webhooks", headers=csrf, json={"name": "soc", "url": receiver.url(),
                                                              "event_types": ["access"]})
    assert dup.status_code == 409 and "exists already" in dup.json()["error"]
    rotated = client.post(f"/api/v1/webhooks/{hook}/rotate-secret", headers=csrf).json()
    assert rotated["secret"] != made["secret"] and rotated["secret"] not in client.get("/api/v1/webhooks").text
    assert client.get("/api/v1/webhooks/wh-nope").status_code == 404
    assert client.get("/api/v1/webhook-deliveries/dlv-nope").status_code == 404
    assert client.delete(f"/api/v1/webhooks/{hook}", headers=csrf).json() == {"id": hook, "deliveries_removed": 0}
    assert client.get("/api/v1/webhooks").json()["webhooks"] == []


def test_send_a_test_delivery_posts_a_signed_ping_and_the_page_says_how_it_went(
        client: TestClient, receiver: WebhookReceiver) -> None:
    csrf = login(client, "ada")
    hook = create(client, csrf, receiver)["id"]
    r = client.post(f"/integrations/webhooks/{hook}/test", headers=csrf)
    assert r.status_code == 200 and "the receiver answered 200" in r.text
    [ping] = receiver.requests()
    assert ping.signature_ok and ping.event == "ping" and ping.json()["test"] is True
    assert ping.delivery.startswith("test-") and ping.delivery in r.text
    receiver.status["/hook"] = 500
    api = client.post(f"/api/v1/webhooks/{hook}/test", headers=csrf).json()
    assert api["ok"] is False and api["status"] == 500 and "HTTP 500" in api["error"]
    assert "failed: HTTP 500" in client.post(f"/integrations/webhooks/{hook}/test", headers=csrf).text
    # Test deliveries are never queued (nothing to retry, nothing to list).
    assert client.get(f"/api/v1/webhooks/{hook}/deliveries").json()["deliveries"] == []


def test_a_check_in_reaches_the_host_integration_and_a_dead_letter_is_listed_and_retried_from_the_page(
        client: TestClient, server: Server, receiver: WebhookReceiver) -> None:
    assert server.webhooks is not None
    server.webhooks.settings = WebhookSettings(max_attempts=1)
    admin = login(client, "ada")
    hook = create(client, admin, receiver, include_names=True)["id"]
    receiver.status["/hook"] = 503
    vid = register(client, admin)["visitor"]["id"]
    assert check_in(client, admin, vid).status_code == 200  # the desk records visitor_arrived
    assert server.webhooks.run_once().dead == 1
    [dead] = client.get("/api/v1/webhook-deliveries").json()["deliveries"]  # default: the dead letters
    assert dead["webhook"] == hook and dead["event_type"] == "visitor_arrived" and "503" in dead["last_error"]
    body = client.get(f"/api/v1/webhook-deliveries/{dead['id']}").json()["body"]
    assert '"Grace Hopper"' in body and '"Alice Archer"' in body  # this webhook asked for names
    page = client.get("/integrations/webhooks").text
    assert dead["id"] in page and f'action="/integrations/webhook-deliveries/{dead["id"]}/retry"' in page
    receiver.status["/hook"] = 200
    r = client.post(f"/integrations/webhook-deliveries/{dead['id']}/retry", headers=admin)
    assert r.status_code == 303 and r.headers["location"] == "/integrations/webhooks?done=retried"
    assert server.webhooks.run_once().delivered == 1
    [got] = receiver.accepted()
    assert got.delivery == dead["id"] and got.event == "visitor_arrived"
    event = got.json()["event"]
    assert event["person"] == vid and event["detail"]["host"] == "alice" and event["detail"]["waiting_at"] == "reception"
    assert event["names"]["person"] == "Grace Hopper" and event["names"]["host"] == "Alice Archer"
    assert event["names"]["company"] == "Navy Labs"
    assert client.get("/api/v1/webhook-deliveries").json()["deliveries"] == []
    detail = client.get(f"/integrations/webhooks/{hook}").text
    assert "0 pending, 1 delivered, 0 dead" in detail
    assert client.post(f"/api/v1/webhook-deliveries/{dead['id']}/retry", headers=admin).status_code == 409
    actions = [r["action"] for r in server.audit.records()] if server.audit else []
    assert "webhook.retry" in actions and "webhook.create" in actions


def test_disable_delete_and_rotate_from_the_page_ask_first_and_are_audited(
        client: TestClient, server: Server, receiver: WebhookReceiver) -> None:
    csrf = login(client, "ada")
    hook = create(client, csrf, receiver)["id"]
    r = client.post(f"/integrations/webhooks/{hook}/enabled", data={"enabled": "0"}, headers=csrf)
    assert r.status_code == 303 and "done=disabled" in r.headers["location"]
    assert "<strong>disabled</strong>" in client.get(f"/integrations/webhooks/{hook}").text
    confirm = client.get(f"/integrations/webhooks/{hook}/rotate")
    assert confirm.status_code == 200 and "Rotate the signing secret?" in confirm.text
    rotated = client.post(f"/integrations/webhooks/{hook}/rotate", headers=csrf)
    assert rotated.status_code == 200 and re.search(r'value="whsec_[^"]+"', rotated.text)
    edit = client.post(f"/integrations/webhooks/{hook}", headers=csrf,
                       data={"name": "renamed", "url": receiver.url(), "event_types": ["access"], "enabled": "1"})
    assert edit.status_code == 303
    assert server.webhooks is not None and server.webhooks.get(hook).name == "renamed"
    assert "Delete this webhook?" in client.get(f"/integrations/webhooks/{hook}/delete").text
    gone = client.post(f"/integrations/webhooks/{hook}/delete", headers=csrf)
    assert gone.status_code == 303 and gone.headers["location"] == "/integrations/webhooks?done=deleted"
    assert client.get(f"/integrations/webhooks/{hook}").status_code == 404
    assert server.audit is not None
    mine = [r["action"] for r in reversed(server.audit.records()) if r["action"].startswith("webhook.")]
    assert mine == ["webhook.create", "webhook.disable", "webhook.rotate_secret", "webhook.update", "webhook.delete"]
