"""The edge's ``[metrics]`` listener (edge/metrics.py, docs/operations.md "Health" and "Metrics", "The edge").

Real parts: an EdgeAgent on its loop with gpiozero mock pins and a fake clock, readers on ``loop://``, no
broker (port 1 refuses, so every badge is decided by the edge from its signed policy), and ``/metrics`` and
``/healthz`` fetched over real HTTP from the agent's own listener on a free loopback port (port 0: the kernel
picks it). The scrape is parsed with prometheus_client's own parser, as Prometheus would read it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory
from prometheus_client.parser import text_string_to_metric_families

import edge.metrics as edge_metrics
from doorkeep import __version__, pki
from doorkeep.clock import FakeClock
from doorkeep.config import MetricsConfig, load_device
from doorkeep.credentials import card_hash
from doorkeep.errors import ConfigErrors
from doorkeep.model import AccessEntry, AccessLevel, Area, Credential, Door, OfflineMode, Person, Schedule, Site, \
    TimeWindow, WEEKDAYS
from doorkeep.policy import compile_policy, sign_policy
from edge.agent import HEALTH_GRACE_S, EdgeAgent
from edge.framing import CardRead
from edge.metrics import EdgeMetrics
from tests.conftest import wait_until
from tests.unit.agent_harness import AgentHarness

KEY = bytes(range(32))
CARDS = {"alice": "0A00000001", "bob": "0A00000002"}
UNKNOWN = "0A0000FFFF"
DEVICE = """\
device = "pi-m"
site = "t"
gpio_factory = "mock"
credential_key_file = "credential.key"
policy_key_file = "policy-signing.pub"
state_dir = "state"
EXTRA
[broker]
url = "mqtt://127.0.0.1:1"
allow_plain_mqtt = true

[doors.front]
reader = { url = "loop://", protocol = "em4100" }
lock = { pin = 17 }
contact = { pin = 27 }

[doors.back]
reader = { url = "loop://", protocol = "ascii", silence_timeout_s = 5 }
lock = { pin = 5 }
"""


def site() -> Site:
    """Alice may pass both doors, Bob only the front; both doors decide from the cache when offline."""
    always = Schedule("always", "Always", (TimeWindow(frozenset(WEEKDAYS), time(0), None),))
    areas = {"outside": Area("outside", "Outside"), "office": Area("office", "Office"),
             "yard": Area("yard", "Yard")}
    doors = {"front": Door("front", "Front", "outside", "office", offline=OfflineMode.CACHE),
             "back": Door("back", "Back", "office", "yard", offline=OfflineMode.CACHE)}
    levels = {"all": AccessLevel("all", "All", (AccessEntry("office", "always"), AccessEntry("yard", "always"))),
              "office": AccessLevel("office", "Office", (AccessEntry("office", "always"),))}
    people = {"alice": Person("alice", "Alice", access_levels=("all",)),
              "bob": Person("bob", "Bob", access_levels=("office",))}
    creds = {card_hash(KEY, "em4100", n): Credential(card_hash(KEY, "em4100", n), n[-4:], "em4100", p)
             for p, n in CARDS.items()}
    return Site("t", "T", "Europe/London", areas, doors, {"always": always}, levels, people, creds)


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_device(tmp_path: Path, signing_key: Ed25519PrivateKey, extra: str = "") -> Path:
    pi = tmp_path / "pi"
    pi.mkdir(parents=True, exist_ok=True)
    (pi / "pi-m.toml").write_text(DEVICE.replace("EXTRA", extra))
    (pi / "credential.key").write_text(KEY.hex() + "\n")
    (pi / "credential.key").chmod(0o600)
    (pi / "policy-signing.pub").write_bytes(signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pi / "pi-m.toml"


class Edge(AgentHarness):
    """The agent with its listener on a free loopback port; ``get`` fetches a path over HTTP."""

    def __init__(self, device_file: Path, clock: FakeClock, signing_key: Ed25519PrivateKey, *,
                 with_site: bool = True, metrics: MetricsConfig | None = MetricsConfig(port=0),
                 policy: bool = True, **replace: Any) -> None:
        dev, _ = load_device(device_file)
        dev = dataclasses.replace(dev, metrics=metrics, **replace)
        self.dev = dev
        self.factory = MockFactory()
        super().__init__(EdgeAgent(dev, site() if with_site else None, KEY, clock=clock, pin_factory=self.factory,
                                   policy_key=signing_key.public_key(), state_dir=dev.state_dir),
                         clock, signing_key, site_id="t", device=dev.id)
        self.factory.pin(27).drive_low()  # the front door's contact: closed (a reed switch to ground)
        self.agent.start()
        if policy:
            self.give_policy(1)

    def give_policy(self, version: int) -> None:
        self.agent._on_policy(sign_policy(compile_policy(site(), self.dev.doors), site_id="t", device=self.dev.id,
                                          version=version, issued_at=self.clock.wall(), key=self.signing_key))
        assert wait_until(lambda: self.agent.policy is not None and self.agent.policy.version == version, 5)
        self.settle()

    def badge(self, door: str, number: str) -> Any:
        before = len(self.of("access"))
        self.agent._post(self.agent._card, door, CardRead(number, "em4100"), self.clock.monotonic())
        assert wait_until(lambda: len(self.of("access")) > before, 5), "the badge was never decided"
        self.settle()
        return self.of("access")[-1]

    @property
    def url(self) -> str:
        assert self.agent.metrics is not None
        return f"http://127.0.0.1:{self.agent.metrics.port}"

    def get(self, path: str, method: str = "GET") -> tuple[int, str, str]:
        """``(status, content type, body)`` of one real HTTP request to the agent's listener."""
        req = urllib.request.Request(self.url + path, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers["Content-Type"], resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of ``/metrics``, keyed by name and sorted labels."""
        status, ctype, text = self.get("/metrics")
        assert status == 200 and ctype.startswith("text/plain"), (status, ctype)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def health(self) -> tuple[int, dict[str, Any]]:
        status, ctype, body = self.get("/healthz")
        assert ctype == "application/json"
        return status, json.loads(body)

    def retained_health(self) -> dict[str, Any]:
        done, payload = self.agent.loop.call_and_wait(self.agent._state_payload, 5)  # the loop's state, on the loop
        assert done
        return json.loads(payload)["health"]


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def edges() -> Iterator[list[Edge]]:
    started: list[Edge] = []
    yield started
    for e in started:
        e.agent.stop()


@pytest.fixture
def edge(tmp_path: Path, edges: list[Edge], signing_key: Ed25519PrivateKey) -> Edge:
    e = Edge(write_device(tmp_path, signing_key), FakeClock(), signing_key)
    edges.append(e)
    return e


def test_a_scrape_counts_decisions_by_door_and_reason_and_times_each_badge_to_its_relay(edge: Edge) -> None:
    granted = edge.badge("front", CARDS["alice"])
    assert (granted.reason, granted.decided_by) == ("granted_offline", "edge_offline")
    assert edge.badge("front", UNKNOWN).reason == "unknown_credential"
    assert edge.badge("back", CARDS["bob"]).reason == "no_access"
    m = edge.scrape()
    assert sample(m, "doorkeep_edge_decisions_total", door="front", reason="granted_offline") == 1
    assert sample(m, "doorkeep_edge_decisions_total", door="front", reason="unknown_credential") == 1
    assert sample(m, "doorkeep_edge_decisions_total", door="back", reason="no_access") == 1
    assert sample(m, "doorkeep_edge_decisions_total", door="back", reason="granted_offline") is None
    assert sample(m, "doorkeep_edge_offline_decisions_total", door="front", decision="granted") == 1
    assert sample(m, "doorkeep_edge_offline_decisions_total", door="front", decision="denied") == 1
    assert sample(m, "doorkeep_edge_offline_decisions_total", door="back", decision="denied") == 1
    # The histogram holds the access events' own latency_ms, in seconds: one observation per badge.
    assert sample(m, "doorkeep_edge_badge_to_relay_seconds_count", door="front", decided_by="edge_offline") == 2
    total = sample(m, "doorkeep_edge_badge_to_relay_seconds_sum", door="front", decided_by="edge_offline")
    front = [e.latency_ms for e in edge.of("access", "front")]
    assert total == pytest.approx(sum(front) / 1000.0)
    assert sample(m, "doorkeep_edge_badge_to_relay_seconds_bucket", door="front", decided_by="edge_offline",
                  le="+Inf") == 2
    assert sample(m, "doorkeep_edge_events_total", type="access") == 3
    # The grant energised the front relay only; the door board's state, per door.
    assert sample(m, "doorkeep_edge_relay_energised", door="front") == 1
    assert sample(m, "doorkeep_edge_relay_energised", door="back") == 0
    assert sample(m, "doorkeep_edge_door_state", door="front", state="unlocked") == 1
    assert sample(m, "doorkeep_edge_door_state", door="front", state="locked") == 0
    assert sample(m, "doorkeep_edge_door_state", door="back", state="locked") == 1
    assert sample(m, "doorkeep_edge_door_open", door="front") == 0
    assert sample(m, "doorkeep_edge_reader_online", door="front") == 1
    assert sample(m, "doorkeep_edge_info", device="pi-m", version=__version__) == 1
    # No broker: every event waits in the outbox, and the link says it is down.
    assert sample(m, "doorkeep_edge_outbox_messages") == edge.agent.outbox.pending >= 3
    assert sample(m, "doorkeep_edge_mqtt_connected") == 0
    assert sample(m, "doorkeep_edge_server_reachable") == 0
    assert sample(m, "doorkeep_edge_mqtt_reconnects_total") == 0
    assert sample(m, "doorkeep_edge_loop_responsive") == 1
    assert sample(m, "doorkeep_edge_policy_held") == 1 and sample(m, "doorkeep_edge_policy_version") == 1
    assert any(name.startswith("process_") for name, _ in m), "the process collector is in the agent's registry"

    edge.after(5.5)  # unlock_s 5: the front door relocks by itself, and the scrape follows
    m = edge.scrape()
    assert sample(m, "doorkeep_edge_relay_energised", door="front") == 0
    assert sample(m, "doorkeep_edge_door_state", door="front", state="locked") == 1


def test_no_label_carries_a_card_number_a_person_or_a_credential_hash(edge: Edge) -> None:
    for door, number in (("front", CARDS["alice"]), ("front", UNKNOWN), ("back", CARDS["bob"])):
        edge.badge(door, number)
    status, _, text = edge.get("/metrics")
    assert status == 200
    numbers = (*CARDS.values(), UNKNOWN)
    secrets = [*numbers, *(card_hash(KEY, "em4100", n) for n in numbers)]
    leaked = [s for s in secrets if s in text or s.lower() in text]
    assert not leaked, f"the scrape shows {leaked}"
    labels = {(k, v) for fam in text_string_to_metric_families(text) for s in fam.samples for k, v in s.labels.items()}
    values = {v for _, v in labels}
    assert not values & {"alice", "bob", "Alice", "Bob"}, "a person became a label value"
    assert not [v for v in values for n in numbers if n[-4:] in v], "a card's last digits became a label value"
    # Every label is one of the bounded set the docs list.
    assert {k for k, _ in labels} <= {"door", "reason", "decision", "decided_by", "type", "state", "camera",
                                      "certificate", "le", "device", "version"}
    assert {v for k, v in labels if k == "door"} == {"front", "back"}


def test_the_listener_answers_healthz_and_metrics_and_nothing_else(edge: Edge) -> None:
    status, ctype, body = edge.get("/nothing")
    assert status == 404 and "/healthz" in body
    status, _, body = edge.get("/metrics", method="HEAD")
    assert status == 200 and body == ""
    status, doc = edge.health()
    assert (status, doc) == (200, {"status": "ok", "device": "pi-m", "problems": []})
    assert edge.retained_health() == {"ok": True, "problems": []}
    assert sample(edge.scrape(), "doorkeep_edge_healthy") == 1


def test_a_reader_that_goes_silent_makes_healthz_503_naming_its_door(edge: Edge) -> None:
    edge.after(HEALTH_GRACE_S + 6)  # the back reader's silence_timeout_s is 5; the front (em4100) has none
    assert edge.of("reader_offline", "back"), "the agent itself reported the reader offline"
    status, doc = edge.health()
    assert status == 503 and doc["status"] == "unhealthy"
    assert {"check": "reader_offline", "door": "back"} in doc["problems"]
    assert not [p for p in doc["problems"] if p.get("door") == "front"]
    m = edge.scrape()
    assert sample(m, "doorkeep_edge_reader_online", door="back") == 0
    assert sample(m, "doorkeep_edge_reader_online", door="front") == 1
    assert sample(m, "doorkeep_edge_healthy") == 0
    # The retained state says the same to the server (the remote view of the same findings).
    assert edge.retained_health() == {"ok": False, "problems": [{"check": "reader_offline", "door": "back"}]}


def test_without_a_site_file_healthz_is_503_until_the_first_policy(tmp_path: Path, edges: list[Edge],
                                                                   signing_key: Ed25519PrivateKey) -> None:
    e = Edge(write_device(tmp_path, signing_key), FakeClock(), signing_key, with_site=False, policy=False)
    edges.append(e)
    status, doc = e.health()
    assert status == 503 and doc["problems"] == [{"check": "no_policy"}]
    assert e.retained_health() == {"ok": False, "problems": [{"check": "no_policy"}]}
    assert sample(e.scrape(), "doorkeep_edge_policy_held") == 0
    e.give_policy(3)
    assert e.health() == (200, {"status": "ok", "device": "pi-m", "problems": []})
    e.after(120)
    m = e.scrape()
    assert sample(m, "doorkeep_edge_policy_version") == 3
    assert sample(m, "doorkeep_edge_policy_age_seconds") == pytest.approx(120, abs=0.01)


def test_a_broker_down_longer_than_the_grace_makes_healthz_503(edge: Edge) -> None:
    # The configured grace (60 s) has not run out: the edge is fine deciding alone for now.
    assert edge.health()[0] == 200
    strict = EdgeMetrics(edge.agent, MetricsConfig(port=0, broker_grace_s=0.05))
    assert wait_until(lambda: strict.health()[0] == 503, 5)
    status, doc = strict.health()
    [problem] = doc["problems"]
    assert problem["check"] == "broker_disconnected" and problem["for_s"] >= 0.05


def test_a_loop_that_does_not_answer_is_unhealthy_and_the_scrape_still_answers(
        edge: Edge, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(edge_metrics, "LOOP_ANSWER_S", 0.2)
    release = threading.Event()
    edge.agent.loop.call_soon_threadsafe(release.wait, 10)  # a handler that hangs the loop
    try:
        status, doc = edge.health()
        assert (status, doc["problems"]) == (503, [{"check": "loop_not_answering"}])
        m = edge.scrape()
        assert sample(m, "doorkeep_edge_loop_responsive") == 0
        assert sample(m, "doorkeep_edge_healthy") == 0
        assert sample(m, "doorkeep_edge_relay_energised", door="front") is None, "the loop's state is not read"
        assert sample(m, "doorkeep_edge_outbox_messages") is not None, "what is thread-safe is still served"
    finally:
        release.set()
    assert wait_until(lambda: edge.health()[0] == 200, 5)


def test_outbox_depth_and_the_age_of_its_oldest_event_follow_the_clock(edge: Edge) -> None:
    edge.badge("front", UNKNOWN)
    m = edge.scrape()
    assert sample(m, "doorkeep_edge_outbox_messages") == edge.agent.outbox.pending > 0
    first = sample(m, "doorkeep_edge_outbox_oldest_event_age_seconds")
    assert first is not None and first >= 0
    edge.clock.advance(90)
    m = edge.scrape()
    assert sample(m, "doorkeep_edge_outbox_oldest_event_age_seconds") == pytest.approx(first + 90, abs=0.01)


def test_the_retained_state_says_how_long_the_oldest_waiting_event_has_waited(edge: Edge) -> None:
    def outbox_state() -> dict[str, Any]:
        done, payload = edge.agent.loop.call_and_wait(edge.agent._state_payload, 5)  # built on the loop, as sent
        assert done
        return json.loads(payload)["outbox"]  # type: ignore[no-any-return]

    edge.badge("front", UNKNOWN)  # no broker: the event waits in the outbox
    box = outbox_state()
    assert box["pending"] == edge.agent.outbox.pending > 0 and box["oldest_age_s"] >= 0
    edge.clock.advance(90)
    box = outbox_state()
    assert box["oldest_age_s"] == pytest.approx(sample(edge.scrape(), "doorkeep_edge_outbox_oldest_event_age_seconds"),
                                                abs=0.01), "the state and the edge's own /metrics agree"
    assert box["oldest_age_s"] >= 90
    outbox = edge.agent.outbox
    outbox.ack([r.id for r in outbox.peek(limit=10_000)])  # as the broker's acknowledgements would
    assert outbox_state() == {"pending": 0, "dropped_snapshots": 0, "oldest_age_s": 0.0}


def test_the_device_certificate_days_to_expiry_come_from_its_cert_file(tmp_path: Path, edges: list[Edge],
                                                                        signing_key: Ed25519PrivateKey) -> None:
    store = tmp_path / "pki"
    clock = FakeClock()
    now = datetime.fromtimestamp(clock.wall(), tz=UTC)
    pki.init_ca(store, "t", now=now)
    crt, key = pki.issue(store, "pi-m", now=now)
    device_file = write_device(tmp_path, signing_key)
    dev, _ = load_device(device_file)
    broker = dataclasses.replace(dev.broker, url="mqtts://127.0.0.1:1", allow_plain=False, ca_file=store / "ca.crt",
                                 cert_file=crt, key_file=key)
    e = Edge(device_file, clock, signing_key, broker=broker)
    edges.append(e)
    not_after = x509.load_pem_x509_certificate(crt.read_bytes()).not_valid_after_utc
    m = e.scrape()
    left = sample(m, "doorkeep_edge_certificate_expiry_seconds", certificate="client")
    assert left == pytest.approx((not_after - now).total_seconds(), abs=1)
    assert left > 30 * 86400
    ca_left = sample(m, "doorkeep_edge_certificate_expiry_seconds", certificate="ca")
    assert ca_left is not None and ca_left > left
    e.clock.advance((not_after - now).total_seconds() - 10 * 86400)  # ten days before it runs out
    m = e.scrape()
    assert sample(m, "doorkeep_edge_certificate_expiry_seconds", certificate="client") == \
        pytest.approx(10 * 86400, abs=1)


def test_two_agents_in_one_process_each_serve_their_own_registry(tmp_path: Path, edges: list[Edge],
                                                                 signing_key: Ed25519PrivateKey) -> None:
    a = Edge(write_device(tmp_path / "a", signing_key), FakeClock(), signing_key)
    edges.append(a)
    b = Edge(write_device(tmp_path / "b", signing_key), FakeClock(), signing_key)
    edges.append(b)
    a.badge("front", CARDS["alice"])
    assert a.agent.metrics is not None and b.agent.metrics is not None
    assert a.agent.metrics.registry is not b.agent.metrics.registry
    assert sample(a.scrape(), "doorkeep_edge_decisions_total", door="front", reason="granted_offline") == 1
    assert sample(b.scrape(), "doorkeep_edge_decisions_total", door="front", reason="granted_offline") is None


def test_without_metrics_no_thread_and_no_socket_is_added(tmp_path: Path, edges: list[Edge],
                                                          signing_key: Ed25519PrivateKey) -> None:
    e = Edge(write_device(tmp_path, signing_key), FakeClock(), signing_key, metrics=None)
    edges.append(e)
    assert e.agent.metrics is None
    assert not [t for t in threading.enumerate() if t.name == "doorkeep-metrics-pi-m"]
    assert e.badge("front", CARDS["alice"]).reason == "granted_offline"
    assert e.agent.access_stats.decisions[("front", "granted_offline")] == 1, "counted all the same, for a scrape"


def test_an_edge_without_metrics_never_loads_the_http_server_or_prometheus_client() -> None:
    """The footprint (docs/performance.md): importing the agent pulls in neither; only [metrics] does."""
    code = "import sys, edge.agent; print(sorted(m for m in ('http.server', 'prometheus_client') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2], env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_taken_port_leaves_the_doors_working_and_says_so(tmp_path: Path, edges: list[Edge],
                                                           signing_key: Ed25519PrivateKey,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        e = Edge(write_device(tmp_path, signing_key), FakeClock(), signing_key, metrics=MetricsConfig(port=port))
        edges.append(e)
        assert e.badge("front", CARDS["alice"]).reason == "granted_offline", "the door still decides"
        assert e.agent.counters["metrics_unavailable"] == 1
        assert any("cannot listen on 127.0.0.1:" in r.getMessage() for r in caplog.records)
        assert not [t for t in threading.enumerate() if t.name == "doorkeep-metrics-pi-m"]


def test_the_metrics_thread_ends_with_the_agent(edge: Edge) -> None:
    assert [t for t in threading.enumerate() if t.name == "doorkeep-metrics-pi-m"]
    port = edge.agent.metrics.port if edge.agent.metrics is not None else 0
    edge.agent.stop()
    assert not [t for t in threading.enumerate() if t.name == "doorkeep-metrics-pi-m"]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)


# ------------------------------------------------------------------------------------------ the device file


@pytest.mark.parametrize(("table", "expected"), [
    ("", None),
    ("[metrics]\nport = 9101\n", MetricsConfig(9101, "127.0.0.1", 60.0)),
    ('[metrics]\nport = 9101\nhost = "0.0.0.0"\nbroker_grace_s = 120\n', MetricsConfig(9101, "0.0.0.0", 120.0)),
    ('[metrics]\nport = 9101\nhost = "::1"\n', MetricsConfig(9101, "::1", 60.0)),
], ids=["absent-off", "port-only", "every-key", "ipv6"])
def test_the_metrics_table_of_a_device_file(tmp_path: Path, signing_key: Ed25519PrivateKey, table: str,
                                            expected: MetricsConfig | None) -> None:
    dev, _ = load_device(write_device(tmp_path, signing_key, table))
    assert dev.metrics == expected


@pytest.mark.parametrize(("table", "key"), [
    ("[metrics]\n", "metrics.port"),
    ("[metrics]\nport = 0\n", "metrics.port"),
    ("[metrics]\nport = 70000\n", "metrics.port"),
    ('[metrics]\nport = "9101"\n', "metrics.port"),
    ('[metrics]\nport = 9101\nhost = "not a host"\n', "metrics.host"),
    ("[metrics]\nport = 9101\nbroker_grace_s = 0\n", "metrics.broker_grace_s"),
    ("[metrics]\nport = 9101\npath = \"/m\"\n", "metrics.path"),
], ids=["no-port", "port-0", "port-too-big", "port-string", "bad-host", "grace-0", "unknown-key"])
def test_a_bad_metrics_table_is_refused_naming_the_key(tmp_path: Path, signing_key: Ed25519PrivateKey, table: str,
                                                       key: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_device(write_device(tmp_path, signing_key, table))
    assert key in str(caught.value)
