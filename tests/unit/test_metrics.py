"""The server's health checks and Prometheus metrics (server/metrics.py, docs/operations.md "Health", "Metrics").

The server is the real one ``bootstrap`` builds on the demo site, with a real store and a ``FakeClock``, never
connected: each test hands the bus the messages a delivery would (as tests/unit/test_bus_ingest.py does) and
reads the figures back the way Prometheus does, by parsing ``/metrics``'s text.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.config import BackupSettings, BrokerConfig, load_site_dir
from doorkeep.contract import EventMsg, RequestMsg, Topics, state_payload
from doorkeep.credentials import card_hash
from doorkeep.envelope import SnapshotKeys
from doorkeep.pki import init_ca, issue, revoke
from server.app import Server, bootstrap
from server.backup import BackupJob, generate_recovery_key
from server.metrics import BACKUP_OVERDUE_PERIODS, METRICS_TOKEN_ENV, MetricsHTTPServer, ServerMetrics
from server.webhooks import Answer, WebhookSettings
from simulators.site import DEMO_SITE
from tests.unit.test_bus_ingest import Client
from tests.unit.test_bus_ingest import deliver as deliver_payload

T = Topics("demo")
ALICE_CARD = "0F00A1B2C3"  # Alice Archer: staff and lab (doorkeep/sites/demo/people.toml)
UNKNOWN_CARD = "0F00DEAD01"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def build(tmp_path: Path, clock: FakeClock) -> Server:
    srv = bootstrap(load_site_dir(DEMO_SITE), tmp_path, BrokerConfig("mqtt://127.0.0.1:1", allow_plain=True),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate(), clock=clock)
    client = Client()
    srv.bus._client.ack = client.ack  # type: ignore[method-assign]
    srv.bus._client.publish = client.publish  # type: ignore[method-assign,assignment]
    srv.client = client  # type: ignore[attr-defined]
    srv.bus._worker.start()
    return srv


def close(srv: Server) -> None:
    srv.bus._work.put(None)
    srv.bus._worker.join(5)
    srv.store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc).timestamp())


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = build(tmp_path / "one", clock)
    yield srv
    close(srv)


def metrics_of(server: Server) -> ServerMetrics:
    assert server.metrics is not None
    return server.metrics


def scrape(server: Server) -> Samples:
    """Every sample of ``/metrics`` as Prometheus would read it: (name, labels) -> value."""
    text = metrics_of(server).exposition().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def ask(server: Server, card: str, door: str = "lobby_in", device: str = "pi-lobby") -> None:
    req = RequestMsg(transaction=secrets.token_hex(4), door=door,
                     credential_hash=card_hash(server.directory.key, "em4100", card), credential_last4=card[-4:],
                     credential_format="em4100", ts=iso_ms(server.bus.clock.wall()))
    deliver_payload(server, T.request(device, door), req.encode())


_seq = iter(range(1, 1_000_000))


def send_event(server: Server, etype: str = "door_opened", *, device: str = "pi-lobby", door: str = "lobby_in",
               event_id: str | None = None, **kw: Any) -> EventMsg:
    ev = EventMsg(**{"id": event_id or secrets.token_hex(8), "seq": next(_seq), "ts": iso_ms(server.bus.clock.wall()),
                     "device": device, "door": door, "type": etype, **kw})
    deliver_payload(server, T.event(device, door), ev.encode())
    return ev


def send_state(server: Server, device: str, *, outbox: dict[str, Any] | None = None,
               policy: dict[str, Any] | None = None) -> None:
    payload = state_payload(device, "0.1.0", {}, {}, {}, iso_ms(server.bus.clock.wall()), outbox=outbox, policy=policy)
    deliver_payload(server, T.state(device), payload)


def publish_policies(server: Server) -> None:
    server.bus.publish_policies(force=True)
    assert server.bus.publisher is not None and server.bus.publisher.published


# ------------------------------------------------------------------ decisions


def test_each_answer_is_counted_by_door_and_reason_and_its_handling_time_observed(server: Server) -> None:
    ask(server, ALICE_CARD)
    ask(server, ALICE_CARD)
    ask(server, UNKNOWN_CARD, door="lobby_out")
    s = scrape(server)
    assert value(s, "doorkeep_decisions_total", door="lobby_in", reason="granted") == 2
    assert value(s, "doorkeep_decisions_total", door="lobby_out", reason="unknown_credential") == 1
    assert value(s, "doorkeep_decision_handler_seconds_count") == 3
    assert value(s, "doorkeep_decision_handler_seconds_bucket", le="+Inf") == 3


def test_a_request_for_a_door_the_site_lacks_counts_under_an_empty_door_never_the_made_up_id(server: Server) -> None:
    ask(server, ALICE_CARD, door="made_up_door_4711")
    s = scrape(server)
    assert value(s, "doorkeep_decisions_total", door="", reason="unknown_door") == 1
    assert not any("made_up_door_4711" in v for _, labels in s for _, v in labels)
    assert value(s, "doorkeep_messages_refused_total", category="unknown_door") == 1


def test_offline_decisions_are_counted_on_ingest_once_and_an_unknown_reason_becomes_other(server: Server) -> None:
    grant = send_event(server, "access", decision="granted", reason="granted_offline", decided_by="edge_offline",
                       person="alice")
    deliver_payload(server, T.event("pi-lobby", "lobby_in"), grant.encode())  # re-delivered: stored once
    send_event(server, "access", decision="denied", reason="invented_by_a_device", decided_by="edge_offline")
    send_event(server, "access", decision="granted", reason="granted", decided_by="server", person="alice")
    s = scrape(server)
    assert value(s, "doorkeep_offline_decisions_total", door="lobby_in", reason="granted_offline") == 1
    assert value(s, "doorkeep_offline_decisions_total", door="lobby_in", reason="other") == 1
    assert value(s, "doorkeep_events_ingested_total", type="access") == 3
    assert value(s, "doorkeep_events_duplicate_total") == 1
    assert value(s, "doorkeep_store_commit_seconds_count") >= 3  # type: ignore[operator]
    assert not any(v in ("alice", "invented_by_a_device") for _, labels in s for _, v in labels)


# ------------------------------------------------------------------ devices and policies


def test_outbox_and_policy_figures_come_from_each_edges_retained_state(server: Server, clock: FakeClock) -> None:
    publish_policies(server)
    publisher = server.bus.publisher
    assert publisher is not None
    published = publisher.published["pi-lobby"]
    signed_at = clock.wall()
    send_state(server, "pi-lobby", outbox={"pending": 7, "dropped_snapshots": 1, "oldest_age_s": 12.5},
               policy={"status": "held", "version": published})
    send_state(server, "pi-floor7", outbox={"pending": 0, "dropped_snapshots": 0},
               policy={"status": "held", "version": published - 1})
    clock.advance(40)
    s = scrape(server)
    assert value(s, "doorkeep_device_outbox_pending", device="pi-lobby") == 7
    assert value(s, "doorkeep_device_outbox_oldest_age_seconds", device="pi-lobby") == 12.5
    assert value(s, "doorkeep_device_outbox_dropped_snapshots", device="pi-lobby") == 1
    assert value(s, "doorkeep_device_outbox_oldest_age_seconds", device="pi-floor7") is None  # not reported
    assert value(s, "doorkeep_policy_version", device="pi-lobby") == published
    assert value(s, "doorkeep_policy_signed_timestamp_seconds", device="pi-lobby") == signed_at
    assert value(s, "doorkeep_device_policy_version", device="pi-floor7") == published - 1
    assert value(s, "doorkeep_device_policy_current", device="pi-lobby") == 1
    assert value(s, "doorkeep_device_policy_behind_seconds", device="pi-lobby") == 0
    assert value(s, "doorkeep_device_policy_current", device="pi-floor7") == 0
    assert value(s, "doorkeep_device_policy_behind_seconds", device="pi-floor7") == 40
    # A policy published again while the edge is still behind does not reset how long it has been behind.
    server.directory.lockdown(None, True)
    server.bus.publish_policies(force=True)
    clock.advance(20)
    assert publisher.published["pi-floor7"] > published
    assert value(scrape(server), "doorkeep_device_policy_behind_seconds", device="pi-floor7") == 60
    # Caught up with the first version it missed, not the second: behind since the second was signed.
    send_state(server, "pi-floor7", policy={"status": "held", "version": published})
    assert value(scrape(server), "doorkeep_device_policy_behind_seconds", device="pi-floor7") == 20
    send_state(server, "pi-floor7", policy={"status": "held", "version": publisher.published["pi-floor7"]})
    s = scrape(server)
    assert value(s, "doorkeep_device_policy_current", device="pi-floor7") == 1
    assert value(s, "doorkeep_device_policy_behind_seconds", device="pi-floor7") == 0


def test_a_device_that_never_reported_has_no_policy_verdict_and_a_hostile_state_is_ignored(server: Server) -> None:
    publish_policies(server)
    send_state(server, "pi-lobby", outbox={"pending": "lots", "oldest_age_s": -3}, policy={"status": "none"})
    s = scrape(server)
    assert value(s, "doorkeep_device_policy_current", device="pi-floor7") is None
    assert value(s, "doorkeep_device_policy_current", device="pi-lobby") == 0  # holds none: not current
    assert value(s, "doorkeep_device_outbox_pending", device="pi-lobby") is None
    assert value(s, "doorkeep_device_outbox_oldest_age_seconds", device="pi-lobby") is None


def test_devices_online_and_last_seen_follow_supervision_and_only_site_devices_are_labels(
        server: Server, clock: FakeClock) -> None:
    deliver_payload(server, T.availability("pi-lobby"), b"online")
    send_event(server)
    deliver_payload(server, T.availability("intruder-pi"), b"online")  # a certificate the site does not know
    s = scrape(server)
    assert value(s, "doorkeep_device_online", device="pi-lobby") == 1
    assert value(s, "doorkeep_device_online", device="pi-floor7") == 0
    assert value(s, "doorkeep_device_last_seen_timestamp_seconds", device="pi-lobby") == clock.wall()
    assert value(s, "doorkeep_device_last_seen_timestamp_seconds", device="pi-floor7") is None
    assert not any(v == "intruder-pi" for _, labels in s for _, v in labels)


# ------------------------------------------------------------------ alarms, certificates, backups


def test_open_alarms_are_counted_by_type_priority_and_state_and_leave_when_resolved(server: Server,
                                                                                    clock: FakeClock) -> None:
    store = server.store
    forced, _ = store.raise_alarm("forced_open", key="forced_open-e1", at=clock.wall(), device="pi-lobby",
                                  door="lobby_in", once=True, cleared=True)
    store.raise_alarm("forced_open", key="forced_open-e2", at=clock.wall(), device="pi-lobby", door="lobby_in",
                      once=True)
    offline, _ = store.raise_alarm("device_offline", key="device_offline:pi-floor7", at=clock.wall(),
                                   device="pi-floor7")
    store.acknowledge(offline, "dex", at=clock.wall())
    s = scrape(server)
    assert value(s, "doorkeep_alarms_open", type="forced_open", priority="high", state="active") == 1
    assert value(s, "doorkeep_alarms_open", type="forced_open", priority="high", state="cleared") == 1
    assert value(s, "doorkeep_alarms_open", type="device_offline", priority="medium", state="active") == 1
    assert value(s, "doorkeep_alarms_unacknowledged", priority="high") == 2
    assert value(s, "doorkeep_alarms_unacknowledged", priority="medium") == 0
    store.resolve(forced, "dex", "checked the camera: a delivery", at=clock.wall())
    assert value(scrape(server), "doorkeep_alarms_open", type="forced_open", priority="high", state="cleared") is None


def test_certificate_expiry_covers_the_ca_and_every_live_certificate_of_the_site(tmp_path: Path,
                                                                                server: Server) -> None:
    site = tmp_path / "site"
    pki = site / "pki"
    now = datetime(2026, 3, 2, tzinfo=timezone.utc)
    init_ca(pki, "demo", now=now)
    issue(pki, "server", now=now)
    issue(pki, "pi-lobby", now=now)
    issue(pki, "pi-floor7", now=now)
    revoke(pki, "pi-floor7", now=now + timedelta(days=1))
    server.metrics = ServerMetrics(server, site_dir=site, process=False)
    s = scrape(server)
    names = {dict(labels)["name"]: dict(labels)["role"] for name, labels in s
             if name == "doorkeep_certificate_not_after_timestamp_seconds"}
    assert names == {"ca": "ca", "server": "server", "pi-lobby": "device"}  # the revoked one is gone
    lobby = value(s, "doorkeep_certificate_not_after_timestamp_seconds", name="pi-lobby", role="device")
    assert lobby == pytest.approx((now + timedelta(days=1826)).timestamp())
    issue(pki, "pi-floor7", now=now + timedelta(days=2))  # re-issued: read again, no restart
    assert value(scrape(server), "doorkeep_certificate_not_after_timestamp_seconds", name="pi-floor7",
                 role="device") == pytest.approx((now + timedelta(days=1828)).timestamp())


def test_without_a_site_pki_the_servers_own_certificate_is_reported_and_a_missing_one_skipped(
        tmp_path: Path, server: Server) -> None:
    pki = tmp_path / "elsewhere"
    now = datetime(2026, 3, 2, tzinfo=timezone.utc)
    init_ca(pki, "demo", now=now)
    cert, key = issue(pki, "server", now=now)
    server.bus.broker = BrokerConfig("mqtts://127.0.0.1:8883", ca_file=pki / "ca.crt", cert_file=cert, key_file=key)
    server.metrics = ServerMetrics(server, site_dir=tmp_path / "no-site", process=False)
    s = scrape(server)
    assert value(s, "doorkeep_certificate_not_after_timestamp_seconds", name="server", role="server") is not None
    assert value(s, "doorkeep_certificate_not_after_timestamp_seconds", name="ca", role="ca") is not None
    cert.unlink()
    assert value(scrape(server), "doorkeep_certificate_not_after_timestamp_seconds", name="server",
                 role="server") is None


def test_backups_report_the_last_success_and_become_overdue_after_missed_periods(
        tmp_path: Path, server: Server, clock: FakeClock) -> None:
    assert "backups_current" not in metrics_of(server).readiness().checks  # no [backup]: no such check
    _, pub, _ = generate_recovery_key(tmp_path / "recovery")
    settings = BackupSettings(dir=tmp_path / "backups", every_s=60, recovery_key=pub)
    server.backup = BackupJob(server.store, settings, "demo", server.store.dir, clock)
    server.metrics = ServerMetrics(server, process=False)
    assert metrics_of(server).readiness().checks["backups_current"]  # just started: not overdue yet
    taken = clock.wall()
    server.backup.run_once()
    s = scrape(server)
    assert value(s, "doorkeep_backup_last_success_timestamp_seconds") == taken
    assert value(s, "doorkeep_backup_failures_total") == 0
    clock.advance(BACKUP_OVERDUE_PERIODS * 60)
    assert metrics_of(server).readiness().checks["backups_current"]
    clock.advance(1)
    assert not metrics_of(server).readiness().checks["backups_current"]
    assert value(scrape(server), "doorkeep_ready", check="backups_current") == 0
    # A restart remembers the last backup from the newest file's manifest.
    server.metrics = ServerMetrics(server, process=False)
    assert value(scrape(server), "doorkeep_backup_last_success_timestamp_seconds") == taken


class Answering:
    """A webhook receiver standing in for the network: each URL answers with its fixed status."""

    def __init__(self, status: dict[str, int]) -> None:
        self.status = status

    def post(self, url: str, body: bytes, headers: Any, timeout_s: float) -> Answer:
        code = self.status[url]
        return Answer(code, None if 200 <= code < 300 else f"HTTP {code}")


def test_the_webhook_queue_by_state_and_delivery_outcomes_are_counted(server: Server, clock: FakeClock) -> None:
    hooks = server.webhooks
    assert hooks is not None
    s = scrape(server)  # before any webhook: every series there at 0, so rate() has a start
    assert {st: value(s, "doorkeep_webhook_queue_depth", state=st) for st in ("pending", "dead")} == {
        "pending": 0, "dead": 0}
    assert {o: value(s, "doorkeep_webhook_deliveries_total", outcome=o) for o in ("delivered", "retried", "dead")} \
        == {"delivered": 0, "retried": 0, "dead": 0}
    assert value(s, "doorkeep_webhook_queued_total") == 0
    hooks.sender = Answering({"https://up.example/hook": 200, "https://down.example/hook": 503})
    hooks.settings = WebhookSettings(retry_s=10.0, max_attempts=2)
    hooks.create(name="up", url="https://up.example/hook", event_types=["forced_open"], actor="ada")
    hooks.create(name="down", url="https://down.example/hook", event_types=["forced_open"], actor="ada")
    send_event(server, "forced_open")
    send_event(server, "forced_open")

    hooks.run_once()  # 4 queued: the up receiver takes its 2, the down one refuses its 2 (tried again in 10 s)
    s = scrape(server)
    assert value(s, "doorkeep_webhook_queued_total") == 4
    assert value(s, "doorkeep_webhook_queue_depth", state="pending") == 2
    assert value(s, "doorkeep_webhook_queue_depth", state="dead") == 0
    assert value(s, "doorkeep_webhook_deliveries_total", outcome="delivered") == 2
    assert value(s, "doorkeep_webhook_deliveries_total", outcome="retried") == 2
    clock.advance(10)
    hooks.run_once()  # the second refusal is the last attempt: both dead letters, out of the pending queue
    s = scrape(server)
    assert value(s, "doorkeep_webhook_queue_depth", state="pending") == 0
    assert value(s, "doorkeep_webhook_queue_depth", state="dead") == 2
    assert value(s, "doorkeep_webhook_deliveries_total", outcome="dead") == 2
    assert value(s, "doorkeep_webhook_deliveries_total", outcome="retried") == 2
    assert value(s, "doorkeep_webhook_deliveries_total", outcome="delivered") == 2
    labels = {v for (name, ls) in s for _, v in ls if name.startswith("doorkeep_webhook_")}
    assert labels == {"pending", "dead", "delivered", "retried"}, "no URL, webhook name or event as a label"


def test_a_delivery_given_up_for_its_age_without_another_attempt_counts_as_dead(server: Server,
                                                                               clock: FakeClock) -> None:
    hooks = server.webhooks
    assert hooks is not None
    hooks.sender = Answering({"https://down.example/hook": 503})
    hooks.settings = WebhookSettings(retry_s=10.0, max_attempts=30, max_age_s=100.0)
    hooks.create(name="down", url="https://down.example/hook", event_types=["forced_open"], actor="ada")
    send_event(server, "forced_open")
    hooks.run_once()
    clock.advance(500)  # the server was down past the delivery's age limit: given up when next claimed
    hooks.run_once()
    s = scrape(server)
    assert value(s, "doorkeep_webhook_queue_depth", state="dead") == 1
    assert value(s, "doorkeep_webhook_deliveries_total", outcome="retried") == 1
    assert value(s, "doorkeep_webhook_deliveries_total", outcome="dead") == 1


# ------------------------------------------------------------------ readiness


def test_readiness_names_each_check_and_the_store_probe_fails_without_raising(server: Server) -> None:
    ready = metrics_of(server).readiness()
    assert ready.checks == {"broker_connected": False, "store_writable": True, "store_thread": True,
                            "policy_current": False}
    assert not ready.ready and ready.body()["status"] == "not ready"
    server.bus._connected.set()  # as on_connect does, after subscribing
    publish_policies(server)
    assert metrics_of(server).readiness().ready
    server.store.close()
    assert metrics_of(server).readiness().checks["store_writable"] is False


def test_the_policy_is_not_current_while_a_newer_retained_one_waits_or_after_a_failed_publish(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    publish_policies(server)
    assert metrics_of(server).policy_current()
    publisher = server.bus.publisher
    assert publisher is not None
    monkeypatch.setattr(publisher, "awaiting_resign", lambda: {"pi-lobby"})
    assert not metrics_of(server).policy_current()
    monkeypatch.undo()

    def broken(*a: Any, **k: Any) -> int:
        raise ValueError("policy version exceeds the limit")
    monkeypatch.setattr(publisher, "publish_all", broken)
    with pytest.raises(ValueError):
        server.bus.publish_policies(force=True)
    assert not metrics_of(server).policy_current()
    assert value(scrape(server), "doorkeep_policy_publish_failures_total") == 1
    monkeypatch.undo()
    server.bus.publish_policies(force=True)
    assert metrics_of(server).policy_current()


def test_two_servers_in_one_process_keep_their_own_figures(tmp_path: Path, server: Server, clock: FakeClock) -> None:
    other = build(tmp_path / "two", clock)
    try:
        ask(server, ALICE_CARD)
        assert value(scrape(server), "doorkeep_decisions_total", door="lobby_in", reason="granted") == 1
        assert value(scrape(other), "doorkeep_decisions_total", door="lobby_in", reason="granted") is None
    finally:
        close(other)


# ------------------------------------------------------------------ endpoints


@pytest.fixture
def desk(server: Server) -> TestClient:
    from server.web.app import create_app

    return TestClient(create_app(server))


def test_healthz_answers_ok_and_readyz_names_its_checks_without_anything_sensitive(server: Server,
                                                                                   desk: TestClient) -> None:
    r = desk.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = desk.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert set(body) == {"status", "checks"} and body["status"] == "not ready"
    assert all(isinstance(v, bool) for v in body["checks"].values()) and body["checks"]["broker_connected"] is False
    assert str(server.store.dir) not in r.text and "demo" not in r.text
    server.bus._connected.set()
    publish_policies(server)
    r = desk.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_desk_metrics_are_prometheus_text_and_ask_for_the_token_when_one_is_set(server: Server,
                                                                               desk: TestClient) -> None:
    ask(server, ALICE_CARD)
    r = desk.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"doorkeep_decisions", "doorkeep_decision_handler_seconds", "doorkeep_ready"} <= names
    metrics_of(server).token = "s3cret-token"
    assert desk.get("/metrics").status_code == 401
    assert desk.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = desk.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert r.status_code == 200 and "doorkeep_decisions_total" in r.text
    assert desk.get("/healthz").status_code == 200  # the token guards /metrics only


def test_the_token_comes_from_the_environment(tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(METRICS_TOKEN_ENV, "  from-env  ")
    srv = build(tmp_path / "env", clock)
    try:
        assert metrics_of(srv).token == "from-env"
        assert not metrics_of(srv).authorized(None) and metrics_of(srv).authorized("Bearer from-env")
    finally:
        close(srv)


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_standalone_listener_serves_the_three_paths_over_http_and_nothing_else(server: Server) -> None:
    listener = MetricsHTTPServer(metrics_of(server), "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{listener.port}"
    try:
        ask(server, ALICE_CARD)
        assert get(f"{base}/healthz")[::2] == (200, b'{"status":"ok"}')
        status, _, body = get(f"{base}/readyz")
        assert status == 503 and json.loads(body)["checks"]["broker_connected"] is False
        status, headers, body = get(f"{base}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        assert 'doorkeep_decisions_total{door="lobby_in",reason="granted"} 1.0' in body.decode()
        assert "Python" not in headers.get("Server", "")  # no versions
        assert get(f"{base}/metrics", method="HEAD")[::2] == (200, b"")
        assert get(f"{base}/")[0] == 404 and get(f"{base}/metrics/../etc")[0] == 404
        metrics_of(server).token = "tok"
        status, headers, _ = get(f"{base}/metrics")
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert get(f"{base}/metrics", {"Authorization": "Bearer tok"})[0] == 200
    finally:
        listener.stop()


def test_integration_api_and_home_assistant_counters_are_exported_with_their_codes_only(
        server: Server, tmp_path: Path) -> None:
    from tests.unit.test_integration_api import ask as ask_api
    from tests.unit.test_integration_api import service

    assert not any(n.startswith(("doorkeep_integration_api", "doorkeep_home_assistant")) for n, _ in scrape(server)), \
        "neither is configured: nothing reported"
    api, bus, _, _, api_clock, _ = service(tmp_path / "ia")
    assert ask_api(api, bus, api_clock, "node-red", {"id": "a", "action": "unlock", "door": "lab"})["ok"] is False  # type: ignore[index]
    assert ask_api(api, bus, api_clock, "node-red", {"id": "s", "action": "status"})["ok"] is True  # type: ignore[index]
    api.counters["Node-RED lab"] += 1  # a name no code path makes: never a label

    class HomeAssistantCounts:  # the one method the scrape reads of server/home_assistant.py's service
        def counts(self) -> dict[str, int]:
            return {"configs_published": 7, "commands_refused_rate_limited": 2, "x" * 65: 1}

    server.integration_api = api
    server.home_assistant = HomeAssistantCounts()  # type: ignore[assignment]
    s = scrape(server)
    assert value(s, "doorkeep_integration_api_events_total", event="requests_refused_door_not_allowed") == 1
    assert value(s, "doorkeep_integration_api_events_total", event="requests_answered") == 1  # the refusal is counted as refused
    assert value(s, "doorkeep_home_assistant_events_total", event="configs_published") == 7
    assert value(s, "doorkeep_home_assistant_events_total", event="commands_refused_rate_limited") == 2
    events = {dict(labels)["event"] for name, labels in s if name.endswith("_events_total")}
    assert "Node-RED lab" not in events and "x" * 65 not in events
    server.integration_api = None
    server.home_assistant = None
