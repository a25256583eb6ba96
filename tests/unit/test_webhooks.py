"""Signed webhooks (server/webhooks.py, server/store_webhooks.py; docs/operations.md "Webhooks").

Real parts: a ``Server`` bootstrapped on the demo site with its SQLite store on disk (bus not started, events
stored as the bus's store thread stores them), a real HTTP receiver on loopback (tests/webhook_receiver.py) that
checks each signature from the documented scheme alone, http.client, TLS with a CA made by doorkeep.pki. Time for
due dates, backoff and the signature's ``t`` is a FakeClock driven through ``Webhooks.run_once``; the one threaded
test waits on a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.contract import EventMsg
from doorkeep.envelope import SnapshotKeys
from doorkeep.sites import DEMO_SITE
from server.app import Server, bootstrap
from server.eventlog import EventLog
from server.webhooks import (EVENT_TYPES, WebhookConflict, WebhookError, WebhookNotFound, Webhooks, WebhookSettings,
                             check_url, sign, verify)
from tests.conftest import wait_until
from tests.smtp_relay import make_tls
from tests.webhook_receiver import WebhookReceiver, documented_check

T0 = 1_796_029_200.0  # 2026-11-30 09:00 UTC, a Monday


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=T0)


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = bootstrap(load_site_dir(DEMO_SITE), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate(), clock=clock)
    yield srv
    if srv.webhooks is not None:
        srv.webhooks.stop()
    srv.store.close()


@pytest.fixture
def receiver(clock: FakeClock) -> Iterator[WebhookReceiver]:
    r = WebhookReceiver(now=clock.wall)
    yield r
    r.stop()


def hooks(server: Server, **settings: Any) -> Webhooks:
    assert server.webhooks is not None
    if settings:
        server.webhooks.settings = WebhookSettings(**settings)
    return server.webhooks


def subscribe(server: Server, receiver: WebhookReceiver, path: str = "/hook", **kw: Any) -> str:
    """A webhook to ``receiver``'s ``path``, the receiver told its secret; returns the webhook's id."""
    kw.setdefault("event_types", ["access"])
    sub, secret = hooks(server).create(name=kw.pop("name", f"hook {path}"), url=receiver.url(path), actor="ada", **kw)
    receiver.secrets[path] = secret
    return sub.id


_seq = iter(range(1, 1_000_000))


def store_event(server: Server, clock: FakeClock, type: str = "access", *, door: str = "lobby_in",
                device: str = "pi-lobby", **kw: Any) -> EventMsg:
    """An event stored as the bus stores one it received now."""
    if type == "access":
        kw = {"decision": "granted", "reason": "granted", "person": "alice", "credential_hash": "ab" * 32,
              "credential_last4": "1111", "decided_by": "server", **kw}
    ev = EventMsg(id=f"ev-{secrets.token_hex(6)}", seq=next(_seq), ts=iso_ms(clock.wall()), device=device, door=door,
                  type=type, **kw)
    assert server.store.ingest_event(ev, clock.wall()) is not None
    return ev


def states(server: Server) -> Counter[str]:
    return Counter(d["state"] for d in server.store.webhook_deliveries(limit=10_000))


# ------------------------------------------------------------------ signature


def test_the_signature_is_hmac_sha256_of_t_dot_body_and_verify_enforces_body_secret_and_window() -> None:
    body = b'{"id":"dlv-1","type":"access"}'
    header = sign("whsec_test", 1_796_029_200, body)
    expected = hmac.new(b"whsec_test", b"1796029200." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1796029200,v1={expected}"  # the documented scheme, byte for byte
    assert verify("whsec_test", header, body, now=1_796_029_200 + 299)
    assert documented_check("whsec_test", header, body, now=1_796_029_200)  # the docs' receiver agrees
    assert not verify("whsec_test", header, body + b" ", now=1_796_029_200)  # a changed body
    assert not verify("whsec_other", header, body, now=1_796_029_200)  # another secret
    assert not verify("whsec_test", header, body, now=1_796_029_200 + 301)  # replayed after the window
    assert not verify("whsec_test", header, body, now=1_796_029_200 - 301)  # from the future
    forged_t = header.replace("t=1796029200", "t=1796029500")  # a fresh t on an old MAC
    assert not verify("whsec_test", forged_t, body, now=1_796_029_500)
    for bad in ("", "v1=" + expected, f"t=x,v1={expected}", f"t=1796029200,v1={expected[:-1]}",
                f"t=1796029200,v1={expected.upper()}"):
        assert not verify("whsec_test", bad, body, now=1_796_029_200), bad


def test_backoff_doubles_from_retry_s_up_to_its_cap() -> None:
    s = WebhookSettings(retry_s=10.0, max_retry_s=3600.0)
    assert [s.backoff(n) for n in range(1, 11)] == [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600]
    assert s.backoff(40) == 3600.0


@pytest.mark.parametrize("url, needle", [
    ("ftp://example.com/hook", "scheme 'ftp' is not allowed"),
    ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ("javascript:alert(1)", "scheme 'javascript' is not allowed"),
    ("example.com/hook", "scheme"),
    ("https:///hook", "no host"),
    ("https://user:pw@example.com/hook", "user name or password"),
    ("https://example.com/hook#frag", "fragment"),
    ("https://example.com/a b", "spaces"),
    ("https://example.com:99999/", "port"),
    ("", "empty"),
])
def test_a_url_of_another_scheme_or_with_credentials_is_refused(url: str, needle: str) -> None:
    with pytest.raises(WebhookError, match=needle):
        check_url(url)


def test_http_and_https_urls_are_taken_as_written() -> None:
    for url in ("https://soc.example.com/doorkeep?x=1", "http://10.0.0.5:8080/hook", "https://[::1]:8443/h"):
        assert check_url(f"  {url} ") == url


# ------------------------------------------------------------------ delivery to a real receiver


def test_a_stored_event_reaches_a_real_receiver_once_signed_with_ids_and_no_card_number(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    wh = hooks(server)
    hook = subscribe(server, receiver, event_types=["access", "forced_open"])
    ev = store_event(server, clock, credential_last4="1111")
    store_event(server, clock, "door_opened")  # not subscribed
    report = wh.run_once()
    assert (report.queued, report.delivered) == (1, 1)
    [got] = receiver.requests()
    assert got.signature_ok and got.event == "access" and got.delivery.startswith("dlv-")
    assert got.headers["content-type"].startswith("application/json")
    body = got.json()
    assert body["schema"] == "doorkeep.webhook/1" and body["id"] == got.delivery and body["type"] == "access"
    assert body["site"] == "demo" and body["webhook"] == hook and body["test"] is False
    e = body["event"]
    assert (e["id"], e["door"], e["door_name"], e["decision"], e["reason"], e["person"], e["person_kind"]) == (
        ev.id, "lobby_in", "Lobby entrance", "granted", "granted", "alice", "employee")
    assert e["credential_last4"] == "1111" and "names" not in e
    assert "ab" * 32 not in got.body.decode() and "credential_hash" not in e  # never the keyed hash
    assert "Alice" not in got.body.decode()  # ids only, unless asked for names
    assert wh.run_once().delivered == 0 and len(receiver.requests()) == 1  # once
    [row] = server.store.webhook_deliveries()
    assert row["state"] == "delivered" and row["attempts"] == 1 and row["last_status"] == 200
    assert server.store.webhook_delivery(row["id"])["payload"] is None  # the body (it names people) is dropped


def test_history_before_a_webhook_existed_is_never_sent(server: Server, receiver: WebhookReceiver,
                                                        clock: FakeClock) -> None:
    wh = hooks(server)
    store_event(server, clock)  # before any webhook
    clock.advance(1.0)
    subscribe(server, receiver)
    clock.advance(1.0)
    after = store_event(server, clock)
    assert wh.run_once().delivered == 1
    assert [r.json()["event"]["id"] for r in receiver.requests()] == [after.id]


def test_doors_and_decision_filter_what_a_webhook_receives(server: Server, receiver: WebhookReceiver,
                                                           clock: FakeClock) -> None:
    wh = hooks(server)
    subscribe(server, receiver, "/lab", doors=["lab"], decision="denied", event_types=["access", "forced_open"])
    subscribe(server, receiver, "/all", event_types=["access"])
    store_event(server, clock, door="lobby_in", decision="denied", reason="no_access")
    lab_granted = store_event(server, clock, door="lab", device="pi-floor7")
    lab_denied = store_event(server, clock, door="lab", device="pi-floor7", decision="denied", reason="no_access")
    forced = store_event(server, clock, "forced_open", door="lab", device="pi-floor7")  # no decision: passes
    store_event(server, clock, "forced_open", door="lobby_in")
    assert wh.run_once().delivered == 5  # two at the lab (denied, forced), the three badges everywhere
    assert sorted(r.json()["event"]["id"] for r in receiver.requests("/lab")) == sorted([lab_denied.id, forced.id])
    assert len(receiver.requests("/all")) == 3 and lab_granted.id in {r.json()["event"]["id"]
                                                                       for r in receiver.requests("/all")}
    with pytest.raises(WebhookError, match="no door nowhere"):
        wh.create(name="x", url=receiver.url(), event_types=["access"], doors=["nowhere"], actor="ada")
    with pytest.raises(WebhookError, match="unknown event type"):
        wh.create(name="x", url=receiver.url(), event_types=["access", "coffee"], actor="ada")
    with pytest.raises(WebhookConflict, match="exists already"):
        wh.create(name="HOOK /lab", url=receiver.url(), event_types=["access"], actor="ada")


def test_names_travel_only_when_the_webhook_asked_for_them_and_visitor_arrival_is_deliverable(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    wh = hooks(server)
    subscribe(server, receiver, "/ids", event_types=["visitor_arrived", "access"])
    subscribe(server, receiver, "/names", event_types=["visitor_arrived"], include_names=True)
    # The desk records a check-in as a server event (server/visitors.py), through the event log the desk uses.
    events = EventLog(server.store, clock)
    events.listeners.append(wh.on_event)
    events.record("visitor_arrived", person="dana", detail={"host": "alice", "badge_last4": "0001"})
    store_event(server, clock, person="bob", companions=("chen",))
    assert wh.run_once().delivered == 3
    [named] = receiver.requests("/names")
    assert named.event == "visitor_arrived"
    e = named.json()["event"]
    assert e["person"] == "dana" and e["detail"] == {"host": "alice", "badge_last4": "0001"}
    assert e["names"] == {"person": "Dana Diaz", "company": None, "host": "Alice Archer", "companions": []}
    plain = {r.event: r for r in receiver.requests("/ids")}
    assert "names" not in plain["visitor_arrived"].json()["event"]
    assert plain["access"].json()["event"]["companions"] == ["chen"]
    for r in receiver.requests("/ids"):
        assert not any(n in r.body.decode() for n in ("Dana Diaz", "Alice Archer", "Bob Baker", "Chen Cho"))


def test_alarms_raised_and_escalations_are_deliverable_and_each_escalation_goes_once(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    wh = hooks(server)
    subscribe(server, receiver, event_types=["alarm_raised", "alarm_escalated"])
    subscribe(server, receiver, "/lab", event_types=["alarm_raised"], doors=["lab"])
    alarm_id, _ = server.store.raise_alarm("device_offline", key="device_offline:pi-lobby", at=clock.wall(),
                                           device="pi-lobby", detail={"reason": "lwt"})
    assert wh.run_once().delivered == 1  # the door filter: a device alarm is at no door
    [raised] = receiver.requests("/hook")
    assert raised.event == "alarm_raised"
    a = raised.json()["alarm"]
    assert (a["id"], a["type"], a["device"], a["state"], a["label"]) == (alarm_id, "device_offline", "pi-lobby",
                                                                          "active", "Device offline")
    clock.advance(600.0)
    assert server.store.mark_escalated(alarm_id, clock.wall())
    for _ in range(3):  # read again at the cursor's own time: queued once
        wh.run_once()
    escalations = [r for r in receiver.requests("/hook") if r.event == "alarm_escalated"]
    assert len(escalations) == 1 and escalations[0].signature_ok
    assert escalations[0].json()["alarm"]["escalated_at"] == iso_ms(clock.wall())
    assert states(server) == Counter(delivered=2)


def test_a_rowid_that_sqlite_reuses_after_retention_deleted_the_newest_rows_is_not_skipped(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    wh = hooks(server)
    subscribe(server, receiver, event_types=["door_opened", "alarm_raised"])
    old = [store_event(server, clock, "door_opened") for _ in range(3)]
    alarm_id, _ = server.store.raise_alarm("device_offline", key="device_offline:pi-lobby", at=clock.wall(),
                                           device="pi-lobby")
    assert wh.run_once().delivered == 4
    # A quiet half-year: retention deletes every event and the resolved alarm; SQLite then gives the next rows the
    # rowids the deleted ones had, which are not above the cursors any more.
    clock.advance(200 * 86_400.0)
    server.store.delete_events([e.id for e in old])
    server.store.resolve(alarm_id, "ada", "replaced the switch", at=clock.wall())
    assert server.store.delete_resolved_alarms_before(clock.wall() + 1) == 1
    new = store_event(server, clock, "door_opened")
    server.store.raise_alarm("device_offline", key="device_offline:pi-floor7", at=clock.wall(), device="pi-floor7")
    assert wh.run_once().delivered == 2
    sent = [r.json() for r in receiver.requests()[4:]]
    assert {b["type"] for b in sent} == {"door_opened", "alarm_raised"}
    assert [b["event"]["id"] for b in sent if b["type"] == "door_opened"] == [new.id]
    assert wh.run_once().delivered == 0  # and once


def test_a_failing_receiver_is_retried_with_backoff_then_dead_lettered_and_a_retry_delivers(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    wh = hooks(server, retry_s=10.0, max_retry_s=25.0, max_attempts=4)
    subscribe(server, receiver)
    receiver.status["/hook"] = 503
    store_event(server, clock)
    assert wh.run_once().retried == 1
    [row] = server.store.webhook_deliveries()
    assert row["state"] == "pending" and row["attempts"] == 1 and row["last_error"].startswith("HTTP 503")
    assert row["next_attempt_at"] == T0 + 10.0
    clock.advance(9.0)
    assert wh.run_once().retried == 0  # not due yet
    clock.advance(1.0)
    assert wh.run_once().retried == 1
    assert server.store.webhook_deliveries()[0]["next_attempt_at"] == clock.wall() + 20.0  # doubled
    clock.advance(20.0)
    assert wh.run_once().retried == 1
    assert server.store.webhook_deliveries()[0]["next_attempt_at"] == clock.wall() + 25.0  # capped
    clock.advance(25.0)
    assert wh.run_once().dead == 1  # the fourth attempt: a dead letter
    [dead] = wh.deliveries(state="dead")
    assert dead["attempts"] == 4 and "503" in dead["last_error"]
    assert server.store.webhook_delivery(dead["id"])["payload"]  # kept, to be retried
    clock.advance(10_000.0)
    assert wh.run_once().dead == 0 and len(receiver.requests()) == 4  # dead means never tried again by itself
    # Retry: due now, a fresh window, the same delivery id and body.
    first = receiver.requests()[0]
    receiver.status["/hook"] = 200
    wh.retry(dead["id"], actor="ada")
    with pytest.raises(WebhookConflict, match="not dead"):
        wh.retry(dead["id"], actor="ada")
    assert wh.run_once().delivered == 1
    last = receiver.requests()[-1]
    assert last.delivery == first.delivery == dead["id"] and last.body == first.body and last.signature_ok
    assert states(server) == Counter(delivered=1)
    with pytest.raises(WebhookNotFound):
        wh.retry("dlv-nothing", actor="ada")


def test_a_delivery_older_than_max_age_is_dead_lettered_without_more_attempts(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    wh = hooks(server, retry_s=100.0, max_retry_s=1000.0, max_attempts=30, max_age_s=250.0)
    subscribe(server, receiver)
    receiver.status["/hook"] = 500
    store_event(server, clock)
    assert wh.run_once().retried == 1  # next at +100
    clock.advance(100.0)
    assert wh.run_once().dead == 1  # the next wait (+200) would end past the 250 s window: given up now
    assert len(receiver.requests()) == 2


def test_a_receiver_that_does_not_answer_costs_its_other_deliveries_no_attempt(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    wh = hooks(server, retry_s=30.0, max_attempts=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens there once the socket closes
    sub, _ = wh.create(name="down", url=f"http://127.0.0.1:{closed}/h", event_types=["access"], actor="ada")
    subscribe(server, receiver)
    for _ in range(3):
        store_event(server, clock)
    report = wh.run_once()
    assert (report.retried, report.deferred, report.delivered) == (1, 2, 3)  # the live receiver got all three
    down = wh.deliveries(sub.id)
    assert sorted(d["attempts"] for d in down) == [0, 0, 1]
    assert {d["next_attempt_at"] for d in down} == {T0 + 30.0}
    assert all(d["last_error"] for d in down)
    assert any("ConnectionRefused" in d["last_error"] for d in down)


def test_a_lease_left_by_a_sender_that_died_is_released_at_start(server: Server, receiver: WebhookReceiver,
                                                                 clock: FakeClock) -> None:
    wh = hooks(server)
    subscribe(server, receiver)
    store_event(server, clock)
    wh.enqueue_new()
    [claimed] = server.store.claim_webhook_deliveries(clock.wall(), clock.wall() + 1000.0, 10)  # then it died
    assert wh.run_once().delivered == 0  # leased: nobody else sends it
    assert wh.recover() == 1
    assert wh.run_once().delivered == 1 and receiver.requests()[0].delivery == claimed["id"]


def test_an_https_receiver_is_trusted_only_through_the_site_ca(tmp_path: Path, server: Server,
                                                               clock: FakeClock) -> None:
    ca, ctx = make_tls(tmp_path / "pki")
    rx = WebhookReceiver(now=clock.wall, tls=ctx)
    try:
        untrusted = Webhooks(server.store, clock, site=lambda: server.directory.site, site_id="demo")
        sub, secret = untrusted.create(name="tls", url=rx.url(), event_types=["access"], actor="ada")
        rx.secrets["/hook"] = secret
        store_event(server, clock)
        assert untrusted.run_once().retried == 1
        [row] = untrusted.deliveries(sub.id)
        assert "CERTIFICATE_VERIFY_FAILED" in row["last_error"] and rx.accepted() == []
        trusted = Webhooks(server.store, clock, site=lambda: server.directory.site, site_id="demo", ca_file=ca)
        clock.advance(60.0)
        assert trusted.run_once().delivered == 1 and len(rx.accepted()) == 1
        assert trusted.send_test(sub.id, actor="ada").ok
    finally:
        rx.stop()


def test_rotating_the_secret_signs_every_later_attempt_with_the_new_one(server: Server, receiver: WebhookReceiver,
                                                                        clock: FakeClock) -> None:
    wh = hooks(server)
    hook = subscribe(server, receiver)
    old = receiver.secrets["/hook"]
    new = wh.rotate_secret(hook, actor="ada")
    assert new != old and new.startswith("whsec_") and len(new) > 40
    store_event(server, clock)
    wh.run_once()
    [got] = receiver.requests()
    assert not got.signature_ok  # the receiver still holds the old secret
    assert documented_check(new, got.headers["x-doorkeep-signature"], got.body, clock.wall())
    assert wh.get(hook).secret_rotated_at == clock.wall()


def test_every_change_is_audited_without_the_secret_or_the_urls_path(server: Server, receiver: WebhookReceiver,
                                                                     clock: FakeClock) -> None:
    wh = hooks(server)
    sub, secret = wh.create(name="chat", url=receiver.url("/services/T000/B000/XXXXSECRETPATH"),
                            event_types=["forced_open"], actor="ada")
    wh.update(sub.id, name="chat", url=sub.url, event_types=["forced_open", "held_open"], actor="ada")
    wh.set_enabled(sub.id, False, actor="ada")
    assert not wh.set_enabled(sub.id, False, actor="ada")  # no change, no record
    secret2 = wh.rotate_secret(sub.id, actor="ada")
    test = wh.send_test(sub.id, actor="ada")  # a disabled webhook can still be tested
    assert test.ok and test.status == 200
    assert wh.delete(sub.id, actor="ada") == 0
    assert server.audit is not None
    records = [r for r in reversed(server.audit.records()) if r["action"].startswith("webhook.")]
    assert [r["action"] for r in records] == ["webhook.create", "webhook.update", "webhook.disable",
                                              "webhook.rotate_secret", "webhook.test", "webhook.delete"]
    assert all(r["actor"] == "ada" and r["target"] == f"webhook:{sub.id}" for r in records)
    assert records[1]["details"]["changed"] == ["event_types"]
    text = json.dumps(records)
    assert secret not in text and secret2 not in text and "XXXXSECRETPATH" not in text
    assert f"http://127.0.0.1:{receiver.port}" in text  # the origin only
    with pytest.raises(WebhookNotFound):
        wh.get(sub.id)


def test_deleting_a_webhook_drops_its_queue_and_a_disabled_one_queues_nothing(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    wh = hooks(server)
    receiver.status["/hook"] = 500
    hook = subscribe(server, receiver)
    store_event(server, clock)
    wh.run_once()
    assert states(server) == Counter(pending=1)
    wh.set_enabled(hook, False, actor="ada")
    store_event(server, clock)  # stored while disabled: never queued
    clock.advance(3600.0)
    assert wh.run_once().retried == 0  # what it had pending waits
    wh.set_enabled(hook, True, actor="ada")
    receiver.status["/hook"] = 200
    assert wh.run_once().delivered == 1 and states(server) == Counter(delivered=1)
    store_event(server, clock)
    wh.enqueue_new()
    assert wh.delete(hook, actor="ada") == 2 and states(server) == Counter()


def test_the_worker_thread_delivers_what_the_bus_stores_without_being_asked(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    wh = hooks(server)
    subscribe(server, receiver)
    wh.start()
    ev = store_event(server, clock)
    wh.on_event(ev, True)  # what the bus does after storing it (a bus listener)
    assert wait_until(lambda: len(receiver.requests()) == 1, 5)
    wh.stop()
    assert not wh.running and receiver.requests()[0].json()["event"]["id"] == ev.id


def test_a_receiver_that_hangs_holds_up_neither_the_store_nor_the_ingest_path(
        server: Server, receiver: WebhookReceiver, clock: FakeClock) -> None:
    import threading
    import time

    wh = hooks(server)
    wh.run_once()
    assert not wh.active  # no webhook: a stored event does not even wake the worker
    subscribe(server, receiver)
    receiver.hold = threading.Event()  # the receiver accepts the connection and never answers (until released)
    wh.start()
    try:
        store_event(server, clock)
        wh.on_event()
        assert wait_until(lambda: len(server.store.webhook_deliveries()) == 1, 5)
        started = time.perf_counter()
        for _ in range(200):  # what the bus's store thread does meanwhile: store, then tell the listeners
            store_event(server, clock)
            wh.on_event()
        assert time.perf_counter() - started < 2.0  # no wait on the hung receiver (each would cost its timeout)
        assert server.store.webhook_deliveries(state="delivered") == []
    finally:
        receiver.hold.set()
        wh.stop()
    assert wait_until(lambda: len(receiver.requests()) >= 1, 5)


def test_erasure_deletes_queued_and_dead_bodies_that_name_the_person(server: Server, receiver: WebhookReceiver,
                                                                     clock: FakeClock) -> None:
    from server.subjects import erase

    wh = hooks(server, max_attempts=1)
    subscribe(server, receiver, include_names=True)
    receiver.status["/hook"] = 500
    store_event(server, clock, person="bob")  # dies at its first attempt: a dead letter naming Bob
    wh.run_once()
    store_event(server, clock, person="bob")  # queued, not sent yet
    store_event(server, clock, person="alice")
    wh.enqueue_new()
    assert states(server) == Counter(dead=1, pending=2)
    result = erase(server.directory.bundle, server.store, server.directory.key, "bob", server.audit, now=clock.wall())
    assert result["counts"]["webhooks"] == 2
    left = server.store.webhook_deliveries()
    assert len(left) == 1 and "alice" in server.store.webhook_delivery(left[0]["id"])["payload"]


def test_delivered_records_go_after_a_week_and_dead_letters_after_two(server: Server, receiver: WebhookReceiver,
                                                                        clock: FakeClock) -> None:
    wh = hooks(server, max_attempts=1)
    subscribe(server, receiver, "/ok")
    subscribe(server, receiver, "/dead", name="dead")
    receiver.status["/dead"] = 500
    store_event(server, clock)
    wh.run_once()
    assert states(server) == Counter(delivered=1, dead=1)
    clock.advance(7 * 86_400.0 + 3600.0)
    wh.run_once()
    assert states(server) == Counter(dead=1)
    clock.advance(7 * 86_400.0)
    wh.run_once()
    assert states(server) == Counter()


def test_every_stored_event_type_and_both_alarm_types_can_be_subscribed_to() -> None:
    from doorkeep import vocabulary

    stored = {e.name for e in vocabulary.EVENTS.values() if e.published or not e.wire}
    assert set(EVENT_TYPES) == {*stored, "alarm_raised", "alarm_escalated"}
    assert {"access", "forced_open", "visitor_arrived"} <= set(EVENT_TYPES)
    assert not {"ping", "unlocked", "relocked"} & set(EVENT_TYPES)  # a test, and types no edge publishes yet
