"""The Grafana dashboard and the Prometheus alert rules shipped in firmware-config/ use only metrics the code
exports, and every server metric is documented (docs/operations.md "Metrics"), so neither can drift from the
code.

The server's names come from a real server's registry (server/metrics.py), with backups configured so every
family is there. The edge's (``doorkeep_edge_*``) are read from edge/metrics.py's source, where each is declared
by a ``gauge("...")``, ``counter("...")`` or ``histogram(PROM + "...")`` call.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.config import BackupSettings, BrokerConfig, load_site_dir
from doorkeep.envelope import SnapshotKeys
from server.app import bootstrap
from server.backup import BackupJob, generate_recovery_key
from server.metrics import ServerMetrics
from simulators.site import DEMO_SITE

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "firmware-config" / "grafana" / "doorkeep.json"
ALERTS = ROOT / "firmware-config" / "prometheus" / "alerts.yml"
EXAMPLE = ROOT / "firmware-config" / "prometheus" / "prometheus.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
NAME = re.compile(r"\b(doorkeep_[a-z0-9_]+)\b")
#: What Prometheus adds to every target itself.
BUILTIN = {"up"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "summary": ("_count", "_sum")}


@pytest.fixture(scope="module")
def server_families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every metric family a real server exports: name -> type."""
    tmp = tmp_path_factory.mktemp("metrics")
    srv = bootstrap(load_site_dir(DEMO_SITE), tmp / "data", BrokerConfig("mqtt://127.0.0.1:1", allow_plain=True),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate())
    try:
        _, pub, _ = generate_recovery_key(tmp / "recovery")
        srv.backup = BackupJob(srv.store, BackupSettings(dir=tmp / "backups", recovery_key=pub), "demo",
                               tmp / "data")
        srv.backup.run_once()
        metrics = ServerMetrics(srv, process=False)
        return {f.name: f.type for f in metrics.registry.collect()}
    finally:
        srv.store.close()


def sample_names(families: dict[str, str]) -> set[str]:
    return {name + suffix for name, kind in families.items() for suffix in SUFFIXES[kind]}


def edge_sample_names() -> set[str]:
    source = (ROOT / "edge" / "metrics.py").read_text()
    prefix = re.search(r'^PROM = "([a-z_]+)"', source, re.M)
    assert prefix is not None, "edge/metrics.py no longer declares PROM: update this scan"
    families = {prefix[1] + n: "gauge" for n in re.findall(r'\bgauge\(\s*"([a-z0-9_]+)"', source)}
    families |= {prefix[1] + n: "counter" for n in re.findall(r'\bcounter\(\s*"([a-z0-9_]+)"', source)}
    families |= {prefix[1] + n: "histogram" for n in re.findall(r'\bhistogram\(\s*PROM \+ "([a-z0-9_]+)"', source)}
    return sample_names(families)


def expressions(node: Any) -> list[str]:
    """Every ``expr`` anywhere in a parsed JSON or YAML document."""
    if isinstance(node, dict):
        return ([node["expr"]] if isinstance(node.get("expr"), str) else []) + \
            [e for v in node.values() for e in expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return []


def used(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in NAME.findall(e)}


def test_the_edge_scan_finds_the_edges_metrics() -> None:
    names = edge_sample_names()
    assert len(names) > 15
    assert {"doorkeep_edge_badge_to_relay_seconds_bucket", "doorkeep_edge_outbox_oldest_event_age_seconds",
            "doorkeep_edge_decisions_total"} <= names


def test_every_metric_the_dashboard_uses_is_exported(server_families: dict[str, str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = expressions(dashboard["panels"])
    assert len(exprs) > 20
    names = used(exprs) | used([json.dumps(dashboard["templating"])])  # the Edge variable's query too
    exported = sample_names(server_families) | edge_sample_names()
    assert names - exported == set(), "the dashboard names metrics nobody exports"
    server_used = {n for n in names if not n.startswith("doorkeep_edge_")}
    assert len(server_used) >= 20 and any(n.startswith("doorkeep_edge_") for n in names)


def test_every_metric_the_alert_rules_use_is_exported(server_families: dict[str, str]) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = expressions(rules["groups"])
    assert all(isinstance(r.get("alert"), str) for g in rules["groups"] for r in g["rules"])
    names = used(exprs)
    assert names - (sample_names(server_families) | edge_sample_names()) == set()
    wanted = {"doorkeep_device_online", "doorkeep_device_outbox_pending", "doorkeep_device_policy_behind_seconds",
              "doorkeep_certificate_not_after_timestamp_seconds", "doorkeep_ready"}
    assert wanted <= names, "edge offline, outbox growing, policy stale, certificate expiring, server not ready"
    for e in exprs:  # an expression without a doorkeep metric may only ask Prometheus whether a target is up
        assert NAME.search(e) or re.fullmatch(r'(\w+)\{job="doorkeep-(server|edge)"\} == 0', e)[1] in BUILTIN, e


def test_the_example_configuration_scrapes_the_jobs_the_rules_name() -> None:
    config = yaml.safe_load(EXAMPLE.read_text())
    jobs = {c["job_name"] for c in config["scrape_configs"]}
    assert jobs == {"doorkeep-server", "doorkeep-edge"} and config["rule_files"] == ["alerts.yml"]
    assert 'job="doorkeep-server"' in ALERTS.read_text()


def test_every_server_metric_and_endpoint_is_documented(server_families: dict[str, str]) -> None:
    doc = OPERATIONS.read_text()
    section = doc.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    missing = [n + ("_total" if kind == "counter" else "") for n, kind in sorted(server_families.items())
               if f"`{n}{'_total' if kind == 'counter' else ''}`" not in section]
    assert missing == [], "server metrics missing from docs/operations.md \"## Metrics\""
    health = doc.split("## Health", 1)[1].split("\n## ", 1)[0]
    for endpoint in ("/healthz", "/readyz", "/metrics", "--metrics-port", "DOORKEEP_METRICS_TOKEN"):
        assert endpoint in health
    for check in ("broker_connected", "store_writable", "store_thread", "policy_current", "backups_current"):
        assert f"`{check}`" in health
