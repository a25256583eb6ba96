"""The edge's /metrics and /healthz on a whole demo site over the session's real Mosquitto (mutual TLS).

The demo site runs with ``[metrics]`` on both of its edges (port 0: each gets a free loopback port), its server
deciding; badges at the lobby are scraped over real HTTP as Prometheus would, then the server is stopped and a
badge decided by the edge alone shows as an offline decision. Nothing in any scrape names a person or a card.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from doorkeep.config import MetricsConfig, load_site_dir
from doorkeep.credentials import card_hash
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"
UNKNOWN = "0F00FFFF01"


@pytest.fixture
def site(mosquitto: Any, tmp_path: Path) -> Iterator[SiteRunner]:
    bundle = load_site_dir(DEMO_SITE)
    devices = {d: dataclasses.replace(dev, metrics=MetricsConfig(port=0)) for d, dev in bundle.devices.items()}
    runner = SiteRunner(dataclasses.replace(bundle, devices=devices), broker_url=mosquitto.url, data_dir=tmp_path)
    runner.start()
    try:
        assert runner.wait_connected(10), "edges and server did not connect to Mosquitto"
        assert wait_until(lambda: all(c.stats.online for a in runner.agents.values() for c in a.cameras.values()),
                          10)
        assert runner.wait_policies(10), "the edges did not receive the server's signed policy"
        yield runner
    finally:
        runner.stop()


def get(runner: SiteRunner, device: str, path: str) -> tuple[int, str]:
    metrics = runner.agents[device].metrics
    assert metrics is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics.port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(runner: SiteRunner, device: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    status, text = get(runner, device, "/metrics")
    assert status == 200
    return text, {(s.name, tuple(sorted(s.labels.items()))): s.value
                  for fam in text_string_to_metric_families(text) for s in fam.samples}


def value(runner: SiteRunner, device: str, name: str, **labels: str) -> float | None:
    return scrape(runner, device)[1].get((name, tuple(sorted(labels.items()))))


def stored_access(runner: SiteRunner, door: str) -> list[dict]:
    assert runner.server is not None
    return [e for e in runner.server.store.events(50, door=door) if e["type"] == "access"]


def test_a_running_edge_is_scraped_after_badges_and_shows_nothing_sensitive(site: SiteRunner) -> None:
    lobby = site.doors["lobby_in"]
    assert get(site, "pi-lobby", "/healthz") == (200, json.dumps({"status": "ok", "device": "pi-lobby",
                                                                  "problems": []}, separators=(",", ":")) + "\n")
    lobby.reader.badge(ALICE)
    assert lobby.door.wait_relay(True, 3.0), "relay was not energised for a granted card"
    lobby.reader.badge(UNKNOWN)
    assert wait_until(lambda: len(stored_access(site, "lobby_in")) == 2, 5)

    text, m = scrape(site, "pi-lobby")

    def at(name: str, **labels: str) -> float | None:
        return m.get((name, tuple(sorted(labels.items()))))

    assert at("doorkeep_edge_decisions_total", door="lobby_in", reason="granted") == 1
    assert at("doorkeep_edge_decisions_total", door="lobby_in", reason="unknown_credential") == 1
    assert at("doorkeep_edge_badge_to_relay_seconds_count", door="lobby_in", decided_by="server") == 2
    stored = sum(e["latency_ms"] for e in stored_access(site, "lobby_in")) / 1000.0
    assert at("doorkeep_edge_badge_to_relay_seconds_sum", door="lobby_in", decided_by="server") == \
        pytest.approx(stored, rel=1e-6, abs=1e-6), "the histogram holds the stored events' own latency"
    assert at("doorkeep_edge_offline_decisions_total", door="lobby_in", decision="granted") is None
    assert at("doorkeep_edge_mqtt_connected") == 1 and at("doorkeep_edge_server_reachable") == 1
    assert at("doorkeep_edge_policy_held") == 1
    assert at("doorkeep_edge_policy_version") == site.agents["pi-lobby"].policy.version  # type: ignore[union-attr]
    assert at("doorkeep_edge_camera_online", camera="lobby") == 1
    age = at("doorkeep_edge_camera_frame_age_seconds", camera="lobby")
    assert age is not None and 0 <= age < 5
    assert at("doorkeep_edge_reader_online", door="lobby_in") == 1
    left = at("doorkeep_edge_certificate_expiry_seconds", certificate="client")
    assert left is not None and left > 30 * 86400, "the device's own TLS certificate, read from its cert_file"
    assert at("doorkeep_edge_healthy") == 1
    # The broker acknowledged every event: the outbox drains to nothing.
    assert wait_until(lambda: value(site, "pi-lobby", "doorkeep_edge_outbox_messages") == 0, 10)
    assert value(site, "pi-lobby", "doorkeep_edge_outbox_oldest_event_age_seconds") == 0

    # Each edge serves its own figures: the other Pi saw none of these badges.
    _, floor7 = scrape(site, "pi-floor7")
    assert not [k for k in floor7 if k[0] == "doorkeep_edge_decisions_total"]
    assert {dict(k[1]).get("device") for k in floor7 if k[0] == "doorkeep_edge_info"} == {"pi-floor7"}

    # Nothing sensitive: no card number, credential hash, last digits or person in any label or value.
    persons = set(site.bundle.people)
    numbers = {c.number for c in site.bundle.cards} | {ALICE, UNKNOWN}
    hashes = {card_hash(site.key, c.format, c.number) for c in site.bundle.cards}
    for device in site.agents:
        text, _ = scrape(site, device)
        assert not [s for s in numbers | hashes if s in text or s.lower() in text], device
        labels = {v for fam in text_string_to_metric_families(text) for s in fam.samples for v in s.labels.values()}
        assert not labels & persons, f"{device}: a person became a label value"
        assert not [v for v in labels for n in numbers if n[-4:] in v], f"{device}: a card's last digits in a label"


def test_with_the_server_gone_the_edges_own_decisions_show_as_offline(site: SiteRunner) -> None:
    site.stop_server()
    agent = site.agents["pi-lobby"]
    assert wait_until(lambda: not agent.server_reachable, 10), "the edge never saw the server leave"
    assert wait_until(lambda: value(site, "pi-lobby", "doorkeep_edge_server_reachable") == 0, 5)
    lobby = site.doors["lobby_in"]
    lobby.reader.badge(ALICE)
    assert lobby.door.wait_relay(True, 3.0), "the cached policy grants Alice"
    assert wait_until(lambda: value(site, "pi-lobby", "doorkeep_edge_offline_decisions_total", door="lobby_in",
                                    decision="granted") == 1, 5)
    _, m = scrape(site, "pi-lobby")
    assert m[("doorkeep_edge_decisions_total", (("door", "lobby_in"), ("reason", "granted_offline")))] == 1
    assert m[("doorkeep_edge_badge_to_relay_seconds_count", (("decided_by", "edge_offline"), ("door", "lobby_in")))] \
        == 1
    # Still connected to the broker, a policy held, readers up: the edge itself is healthy without its server.
    assert m[("doorkeep_edge_mqtt_connected", ())] == 1
    assert get(site, "pi-lobby", "/healthz")[0] == 200
