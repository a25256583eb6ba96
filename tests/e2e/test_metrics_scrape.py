"""Health and metrics scraped over HTTP from a real server (docs/operations.md "Health", "Metrics").

1. The demo site on simulators and the session's real Mosquitto (mutual TLS): cards are badged at the readers,
   a door is forced, and ``/metrics`` is scraped over HTTP from the desk (uvicorn, as deployed) and from the
   standalone listener ``doorkeep server --metrics-port`` uses. The counts move as the badges say, ``/readyz``
   is ready, and no label value is a person id, a card number, a card hash or its last digits.
2. The real ``doorkeep server --metrics-port`` process: ready once connected, its metrics over HTTP, a clean
   stop; a port in use stops it before it starts, with the fix.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from doorkeep.credentials import generate_key_file
from doorkeep.envelope import init_data_keys
from server.app import Server
from server.metrics import MetricsHTTPServer
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"  # Alice Archer's card (doorkeep/sites/demo/people.toml): lobby granted
UNKNOWN = "0F00DEAD01"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(url: str) -> tuple[int, str, str]:
    """``(status, content type, body)`` of one real HTTP GET."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()
    except OSError:
        return 0, "", ""


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def scrape(base: str) -> Samples:
    status, ctype, body = get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), (status, ctype)
    return samples(body)


def value(s: Samples, metric: str, **labels: str) -> float:
    return s.get((metric, frozenset(labels.items())), 0.0)


@contextmanager
def serve_desk(server: Server) -> Iterator[str]:
    """The desk around ``server`` under uvicorn on a free loopback port, as ``doorkeep desk`` serves it."""
    from server.web.app import create_app
    from server.web.serving import desk_server, uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = desk_server(uvicorn_config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=web.run, name="desk-uvicorn", daemon=True)
    thread.start()
    assert wait_until(lambda: web.started, 10), "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(10)


def secrets_of_the_site(runner: SiteRunner) -> set[str]:
    """Every person id, card number, card hash and card's last digits of the demo site."""
    site = runner.bundle.site
    numbers = set(re.findall(r'number = "([^"]+)"', (DEMO_SITE / "people.toml").read_text()))
    return {*site.people, *numbers, *site.credentials, *(c.last4 for c in site.credentials.values()), ALICE,
            UNKNOWN}


def test_a_badged_site_moves_the_counts_scraped_over_http_and_no_label_names_a_person_or_card(
        site: SiteRunner) -> None:
    server = site.server
    assert server is not None and server.metrics is not None
    listener = MetricsHTTPServer(server.metrics, "127.0.0.1", 0).start()
    own = f"http://127.0.0.1:{listener.port}"
    try:
        with serve_desk(server) as desk:
            assert get(desk + "/healthz")[::2] == (200, '{"status":"ok"}')
            assert wait_until(lambda: get(own + "/readyz")[0] == 200, 10), get(own + "/readyz")
            status, _, body = get(desk + "/readyz")
            assert status == 200 and json.loads(body) == {"status": "ready", "checks": {
                "broker_connected": True, "store_writable": True, "store_thread": True, "policy_current": True}}
            before = scrape(own)

            lobby = site.doors["lobby_in"]
            lobby.badge(ALICE)
            lobby.badge(UNKNOWN)
            assert wait_until(lambda: value(scrape(own), "doorkeep_decisions_total", door="lobby_in",
                                            reason="unknown_credential") >= 1, 10)
            assert wait_until(lambda: value(scrape(own), "doorkeep_events_ingested_total", type="access")
                              >= value(before, "doorkeep_events_ingested_total", type="access") + 2, 10)
            site.doors["lab"].door.open()  # forced: the lab's lock was never released
            assert wait_until(lambda: value(scrape(desk), "doorkeep_alarms_open", type="forced_open",
                                            priority="high", state="active") == 1, 10)
            # Every edge took the server's signed policy and told the server so in its retained state.
            assert wait_until(lambda: all(
                value(scrape(own), "doorkeep_device_policy_current", device=d) == 1 for d in site.agents), 10)

            for base in (own, desk):
                after = scrape(base)
                assert value(after, "doorkeep_decisions_total", door="lobby_in", reason="granted") >= 1
                assert value(after, "doorkeep_decision_handler_seconds_count") >= \
                    value(before, "doorkeep_decision_handler_seconds_count") + 2
                assert value(after, "doorkeep_store_commit_seconds_count") > 0
                assert value(after, "doorkeep_mqtt_connected") == 1
                assert value(after, "doorkeep_ready", check="broker_connected") == 1
                for device in site.agents:
                    assert value(after, "doorkeep_device_online", device=device) == 1
                    assert value(after, "doorkeep_policy_version", device=device) == \
                        value(after, "doorkeep_device_policy_version", device=device) > 0
                certs = {dict(labels)["name"] for name, labels in after
                         if name == "doorkeep_certificate_not_after_timestamp_seconds"}
                assert {"server", "ca"} <= certs  # the server's own TLS files (the site dir has no pki/ here)
                labels = {v for _, ls in after for _, v in ls}
                assert labels & secrets_of_the_site(site) == set(), "a label names a person or a card"
                text = get(base + "/metrics")[2]
                assert not [s for s in secrets_of_the_site(site) if len(s) > 4 and s in text]
    finally:
        listener.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_server_command_serves_health_and_metrics_on_its_metrics_port(mosquitto: Any, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    generate_key_file(site / "keys" / "credential.key")
    init_data_keys(site / "keys")
    signing = subprocess.run([sys.executable, "-m", "doorkeep", "key", "init-signing",
                              str(site / "keys" / "policy-signing.key")], capture_output=True, text=True, timeout=60)
    assert signing.returncode == 0, signing.stderr
    pki = mosquitto.pki
    args = [sys.executable, "-m", "doorkeep", "server", "--site", str(site), "--data", str(tmp_path / "data"),
            "--broker", mosquitto.url, "--ca", str(pki / "ca.crt"), "--cert", str(pki / "server.crt"),
            "--key", str(pki / "server.key")]

    # A port in use: refused before anything starts, with the fix.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = subprocess.run([*args, "--metrics-port", str(taken.getsockname()[1])], capture_output=True,
                              text=True, timeout=60)
    assert busy.returncode == 2 and "--metrics-port" in busy.stderr and "fix:" in busy.stderr, busy.stderr

    port = _free_port()
    log = tmp_path / "server.log"
    proc = subprocess.Popen([*args, "--metrics-port", str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: get(base + "/healthz")[0] == 200, 20), log.read_text()
        assert wait_until(lambda: get(base + "/readyz")[0] == 200, 20), (get(base + "/readyz"), log.read_text())
        s = scrape(base)
        assert value(s, "doorkeep_mqtt_connected") == 1
        assert value(s, "doorkeep_ready", check="store_writable") == 1
        assert value(s, "doorkeep_policy_version", device="pi-lobby") > 0
        assert get(base + "/")[0] == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0, log.read_text()
    assert get(base + "/healthz")[0] == 0  # the listener stopped with the server
