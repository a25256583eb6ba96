"""Issue 19's "Done when": one run of the demo site with every operations integration at once, each checked for
exactly what it should receive, signed and complete, and for nothing sensitive (docs/operations.md).

Real parts, all at the same time:

- the demo site copied with ``[siem]`` and ``[home_assistant]`` in its site.toml and ``[metrics]`` in each device
  file; its own PKI made by the real commands (``doorkeep pki init``, ``pki issue`` for the edges, the server and
  the broker, ``pki issue home-assistant --role integration`` and ``pki issue soc-collector --role integration
  --read-only``); a real Mosquitto running what ``doorkeep broker config`` generates (mutual TLS, the ACL that
  lists both integrations; tests/e2e/test_tls.py's Broker);
- the server and both edges on simulators (tests/e2e/conftest.py's way, with the site's own certificates);
- Prometheus-style scrapes over HTTP of the server's ``/metrics`` (the ``--metrics-port`` listener) and of each
  edge's ``[metrics]`` port, parsed with prometheus_client's own parser;
- a webhook receiver on loopback subscribed through the Webhooks service to access events and raised alarms, that
  checks every signature from the documented scheme alone (tests/webhook_receiver.py);
- Debian's rsyslogd receiving the SIEM stream over TLS, accepting only the ``soc-collector`` certificate
  (tests/syslog_collector.py);
- a paho client playing Home Assistant under its integration certificate (tests/e2e/test_home_assistant.py's peer,
  which renders each entity's templates as Home Assistant does);
- every log record of the run as JSON lines (doorkeep.logfmt's formatter on the root logger, at DEBUG, so each
  access decision is logged too).

Then three badges (Alice granted at the lobby, an unknown card refused there, Bob refused at the lab on the other
edge) and the lobby door forced; and each receiver is checked. Skipped, saying why, only without Mosquitto or
rsyslog (``make test`` installs both).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tomllib
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from doorkeep.config import load_site_dir
from doorkeep.credentials import card_hash
from doorkeep.logfmt import OPTIONAL_KEYS, STABLE_KEYS, JsonFormatter
from doorkeep.sites import DEMO_SITE
from server.metrics import MetricsHTTPServer
from server.store import Store
from simulators.brokers import free_port
from simulators.site import SiteRunner, mosquitto_installed
from tests.conftest import wait_until
from tests.e2e.test_home_assistant import HomeAssistantPeer, render
from tests.e2e.test_tls import Broker, cli
from tests.syslog_collector import Rsyslog, parse_5424, require_rsyslog
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not mosquitto_installed(), reason="needs Mosquitto (`make test` installs it, or "
                                                                   "apt-get install mosquitto)")]

HA = "home-assistant"  # the Home Assistant integration: may read, and send requests the server checks
SOC = "soc-collector"  # the SIEM export's client certificate (read-only): the only peer rsyslog accepts
ALICE = "0F00A1B2C3"  # Alice Archer: staff, the lobby opens
BOB = "40067890"  # Bob Baker's card for ASCII readers (the lab's): staff only, so the lab refuses him (no_access)
UNKNOWN = "0F00DEAD01"  # a card in no file
HOOK = "/doorkeep"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ----------------------------------------------------------------------------------------------- the site

def make_site(tmp_path: Path, syslog_port: int) -> Path:
    """The demo site with [siem], [home_assistant] (Home Assistant may unlock the lobby entrance: a lock entity)
    and [metrics] on each edge, and its PKI with both integrations' certificates."""
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site)
    cli("pki", "init", "--site", site)
    for name in ("pi-lobby", "pi-floor7", "server", "broker"):
        cli("pki", "issue", name, "--site", site)
    cli("pki", "issue", HA, "--role", "integration", "--site", site)
    cli("pki", "issue", SOC, "--role", "integration", "--read-only", "--site", site)
    # Then the tables, as an operator adds them once the certificates they name exist (config check wants them).
    with (site / "site.toml").open("a") as f:
        f.write(f'\n[siem]\nhost = "127.0.0.1"\nport = {syslog_port}\ncert_file = "pki/{SOC}.crt"\n'
                f'key_file = "pki/{SOC}.key"\nhostname = "doorkeep-e2e"\n'
                '\n[home_assistant]\nunlock = true\nunlock_doors = ["lobby_in"]\n')
    for device_file in sorted((site / "devices").glob("*.toml")):
        with device_file.open("a") as f:
            f.write(f"\n[metrics]\nport = {free_port()}\n")
    return site


class JsonLog(logging.Handler):
    """Every record of the run, formatted as ``--log-format json`` writes it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def json_logs() -> Iterator[JsonLog]:
    root = logging.getLogger()
    handler, level = JsonLog(), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


# ----------------------------------------------------------------------------------------------- scraping

def scrape(url: str) -> tuple[str, Samples]:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain"), r.headers["Content-Type"]
        text = r.read().decode()
    return text, {(s.name, frozenset(s.labels.items())): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}


def moved(before: Samples, after: Samples, metric: str) -> dict[frozenset[tuple[str, str]], float]:
    """How much each series of ``metric`` moved between two scrapes (the series that did not move left out)."""
    keys = {labels for name, labels in (*before, *after) if name == metric}
    deltas = {labels: after.get((metric, labels), 0.0) - before.get((metric, labels), 0.0) for labels in keys}
    return {labels: d for labels, d in deltas.items() if d}


def series(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


# ----------------------------------------------------------------------------------------------- secrets

def secrets_of(runner: SiteRunner) -> dict[str, set[str]]:
    """What must never leave: card numbers (as written, either case, a hex number's decimal), their keyed hashes,
    PINs, people's names; and, for the metrics' labels, person ids and cards' last digits as well."""
    people = tomllib.loads((DEMO_SITE / "people.toml").read_text())
    numbers = {str(c["number"]) for p in people.get("people", {}).values() for c in p.get("cards", [])}
    numbers |= {str(c["number"]) for c in people.get("visitor_pool", {}).get("cards", [])} | {ALICE, BOB, UNKNOWN}
    spelled = set()
    for n in numbers:
        spelled |= {n, n.lower(), n.upper()}
        if re.fullmatch(r"[0-9A-Fa-f]{8,}", n):
            spelled.add(str(int(n, 16)))
    bundle = runner.bundle
    cards = [*bundle.cards, *bundle.visitor_pool]
    hashes = {card_hash(runner.key, c.format, c.number) for c in cards if c.number}
    hashes |= {card_hash(runner.key, "em4100", UNKNOWN)}
    pins = {str(p["pin"]) for p in people.get("people", {}).values() if "pin" in p}
    return {"numbers": spelled, "hashes": hashes, "pins": pins, "names": {p.name for p in bundle.people.values()},
            "ids": set(bundle.people), "last4": {n[-4:] for n in numbers}}


def leaks(text: str, secrets: dict[str, set[str]], kinds: tuple[str, ...] = ("numbers", "hashes", "pins", "names")
          ) -> list[str]:
    return sorted(s for kind in kinds for s in secrets[kind] if s and s in text)


# ----------------------------------------------------------------------------------------------- the test

def test_one_badged_and_forced_site_feeds_metrics_webhooks_syslog_home_assistant_and_logs_exactly_and_safely(
        tmp_path: Path) -> None:
    require_rsyslog()
    with ExitStack() as stack:
        logs = stack.enter_context(json_logs())
        syslog_port = free_port()
        site = make_site(tmp_path, syslog_port)
        pki = site / "pki"
        rsyslog = Rsyslog(tmp_path / "rsyslog", ca=pki / "ca.crt", cert=pki / "broker.crt", key=pki / "broker.key",
                          peer=SOC, port=syslog_port).start()
        stack.callback(rsyslog.stop)
        broker = Broker(site, tmp_path).start()
        stack.callback(broker.stop)
        assert f"user {HA}" in (tmp_path / "broker" / "acl").read_text(), "the generated ACL lacks Home Assistant"
        data = tmp_path / "data"
        blank = Store(data / "server")  # forwarding to the SIEM set up before the store's first record
        blank.siem_begin()
        blank.close()

        runner = SiteRunner(load_site_dir(site), broker_url=broker.url, data_dir=data, pki=pki)
        stack.callback(runner.stop)
        runner.start()
        assert runner.wait_connected(10), "edges and server did not connect to the generated broker"
        assert runner.wait_policies(10)
        assert wait_until(lambda: all(c.stats.online for a in runner.agents.values() for c in a.cameras.values()),
                          10)
        server = runner.server
        assert server is not None and server.metrics is not None and server.webhooks is not None
        assert server.siem is not None and server.home_assistant is not None
        store = server.store
        secrets = secrets_of(runner)

        receiver = WebhookReceiver()
        stack.callback(receiver.stop)
        hook, secret = server.webhooks.create(name="soc-bridge", url=receiver.url(HOOK),
                                              event_types=["access", "alarm_raised"], actor="ada")
        receiver.secrets[HOOK] = secret
        listener = MetricsHTTPServer(server.metrics, "127.0.0.1", 0).start()
        stack.callback(listener.stop)
        server_url = f"http://127.0.0.1:{listener.port}/metrics"
        edge_urls = {}
        for device, agent in runner.agents.items():
            assert agent.metrics is not None, f"{device}: [metrics] in its device file did not start a listener"
            edge_urls[device] = f"http://127.0.0.1:{agent.metrics.port}/metrics"
        ha = HomeAssistantPeer(broker.port, site)
        stack.callback(ha.close)

        wanted = server.home_assistant.wanted()
        assert wait_until(lambda: set(wanted) <= set(ha.configs()), 10), sorted(set(wanted) - set(ha.configs()))
        lock = ha.config("lock", "door_lobby_in_lock")
        door_alarms = ha.config("sensor", "door_lobby_in_alarms")
        site_alarms = ha.config("sensor", "site_alarms")
        assert lock and door_alarms and site_alarms
        assert wait_until(lambda: ha.state(lock) == "LOCKED" and ha.state(door_alarms) == "0", 10)
        assert wait_until(lambda: server.siem is not None and server.siem.connected, 10), "no TLS link to rsyslog"

        before = scrape(server_url)[1]
        edges_before = {d: scrape(u)[1] for d, u in edge_urls.items()}

        def access(**match: Any) -> list[dict[str, Any]]:
            return [e for e in store.events(200, type="access") if all(e.get(k) == v for k, v in match.items())]

        # ------------------------------------------------------------------------------------- the script
        lobby, lab = runner.doors["lobby_in"], runner.doors["lab"]
        lobby.badge(ALICE)
        assert lobby.door.wait_relay(True, 5), "Alice's grant did not release the lobby lock"
        assert wait_until(lambda: ha.state(lock) == "UNLOCKED", 5), ha.state(lock)
        lobby.door.open()  # she walks through; the door relocks as it closes
        lobby.door.close()
        assert lobby.door.wait_relay(False, 5)
        assert wait_until(lambda: access(person="alice", door="lobby_in") and ha.state(lock) == "LOCKED", 5)
        lobby.badge(UNKNOWN)
        assert wait_until(lambda: access(reason="unknown_credential", door="lobby_in"), 5)
        lab.badge(BOB)
        assert wait_until(lambda: access(person="bob", door="lab"), 5)
        assert not lobby.door.relay_energised and not lab.door.relay_energised
        lobby.door.open()  # forced: nobody was granted, the lock was never released
        assert wait_until(lambda: ha.state(lock) == "JAMMED", 5), ha.state(lock)
        assert wait_until(lambda: ha.state(door_alarms) == "1", 10), ha.state(door_alarms)
        lobby.door.close()
        assert wait_until(lambda: ha.state(lock) == "LOCKED", 5), ha.state(lock)

        # ------------------------------------------------------------------- everything delivered
        def forced_alarms() -> list[dict[str, Any]]:
            return [a for a in store.source_rows("alarms", (0.0, None, None), 1000)[0] if a["type"] == "forced_open"]

        assert wait_until(lambda: len(forced_alarms()) == 1, 10)

        def stored() -> dict[str, list[dict[str, Any]]]:
            return {src: store.source_rows(src, (0.0, None, None), 100_000)[0] for src in ("events", "alarms",
                                                                                          "audit_log")}

        def delivered() -> bool:
            held = stored()
            return (len(receiver.requests(HOOK)) >= 4 and server.webhooks is not None
                    and server.webhooks.counts()["pending"] == 0
                    and server.siem is not None and server.siem.stats()["depth"] == 0
                    and len(rsyslog.raw_lines()) == sum(len(rows) for rows in held.values())
                    and len(rsyslog.records()) == len(rsyslog.raw_lines()))

        assert wait_until(delivered, 15), (len(receiver.requests(HOOK)), server.webhooks.counts(),
                                           server.siem.stats(), len(rsyslog.raw_lines()),
                                           {k: len(v) for k, v in stored().items()})
        held = stored()
        events = held["events"]
        alice = next(e for e in events if e["type"] == "access" and e["person"] == "alice")
        unknown = next(e for e in events if e["type"] == "access" and e["reason"] == "unknown_credential")
        bob = next(e for e in events if e["type"] == "access" and e["person"] == "bob")
        forced = next(e for e in events if e["type"] == "forced_open")
        [alarm] = forced_alarms()
        assert [e["id"] for e in events if e["type"] == "access"] == [alice["id"], unknown["id"], bob["id"]]
        assert (alice["decision"], unknown["decision"], bob["decision"], bob["reason"]) == (
            "granted", "denied", "denied", "no_access")
        assert forced["door"] == "lobby_in" and alarm["source_event"] == forced["id"]
        card_hashes = {e["credential_hash"] for e in events if e.get("credential_hash")}
        assert len(card_hashes) == 3 and card_hashes <= secrets["hashes"]

        # ------------------------------------------------------------------------------- 1. metrics
        def edge_decisions_moved() -> bool:
            return all(sum(moved(edges_before[d], scrape(edge_urls[d])[1], "doorkeep_edge_decisions_total").values())
                       == n for d, n in (("pi-lobby", 2), ("pi-floor7", 1)))

        assert wait_until(edge_decisions_moved, 5)
        text, after = scrape(server_url)
        assert moved(before, after, "doorkeep_decisions_total") == {
            series(door="lobby_in", reason="granted"): 1, series(door="lobby_in", reason="unknown_credential"): 1,
            series(door="lab", reason="no_access"): 1}, "exactly the three badges, by door and reason"
        assert moved(before, after, "doorkeep_decision_handler_seconds_count") == {series(): 3}
        ingested = moved(before, after, "doorkeep_events_ingested_total")
        assert ingested[series(type="access")] == 3 and ingested[series(type="forced_open")] == 1
        assert sum(v for (name, labels), v in after.items() if name == "doorkeep_alarms_open"
                   and dict(labels)["type"] == "forced_open") == 1
        assert {dict(labels)["outcome"]: v for (name, labels), v in after.items()
                if name == "doorkeep_webhook_deliveries_total"} == {"delivered": 4, "retried": 0, "dead": 0}
        assert after[("doorkeep_webhook_queued_total", series())] == 4
        assert {dict(labels)["state"]: v for (name, labels), v in after.items()
                if name == "doorkeep_webhook_queue_depth"} == {"pending": 0, "dead": 0}
        lines = rsyslog.raw_lines()
        assert after[("doorkeep_siem_messages_sent_total", series())] == len(lines)
        assert after[("doorkeep_siem_queue_depth", series())] == 0 and after[("doorkeep_siem_connected", series())] == 1
        for device in runner.agents:
            assert after[("doorkeep_device_online", series(device=device))] == 1
            age = after.get(("doorkeep_device_outbox_oldest_age_seconds", series(device=device)))
            assert age is not None and 0 <= age < 30, f"{device}: its retained state reports its outbox's oldest age"
        integrations = {dict(labels)["name"] for (name, labels) in after
                        if name == "doorkeep_certificate_not_after_timestamp_seconds"
                        and dict(labels)["role"] == "integration"}
        assert integrations == {HA, SOC}
        edge_after = {d: scrape(u) for d, u in edge_urls.items()}
        lobby_m, floor7_m = edge_after["pi-lobby"][1], edge_after["pi-floor7"][1]
        assert moved(edges_before["pi-lobby"], lobby_m, "doorkeep_edge_decisions_total") == {
            series(door="lobby_in", reason="granted"): 1, series(door="lobby_in", reason="unknown_credential"): 1}
        assert moved(edges_before["pi-floor7"], floor7_m, "doorkeep_edge_decisions_total") == {
            series(door="lab", reason="no_access"): 1}
        assert moved(edges_before["pi-lobby"], lobby_m, "doorkeep_edge_badge_to_relay_seconds_count") == {
            series(door="lobby_in", decided_by="server"): 2}
        assert moved(edges_before["pi-lobby"], lobby_m, "doorkeep_edge_events_total")[series(type="forced_open")] == 1
        assert not moved(edges_before["pi-lobby"], lobby_m, "doorkeep_edge_offline_decisions_total")
        for where, (body, samples) in {"server": (text, after), **edge_after}.items():
            labels = {v for _, ls in samples for _, v in ls}
            sensitive = set().union(*(secrets[k] for k in ("numbers", "hashes", "names", "ids", "last4")))
            assert not labels & sensitive, f"{where}: a label names a person or a card: {labels & sensitive}"
            assert not [s for s in (*leaks(body, secrets), *secrets["ids"]) if len(s) > 4 and s in body], where

        # ------------------------------------------------------------------------------ 2. webhooks
        got = receiver.requests(HOOK)
        assert len(got) == 4 and all(r.signature_ok and r.answered == 200 for r in got), [
            (r.event, r.signature_ok, r.answered) for r in got]
        assert len({r.delivery for r in got}) == 4, "each delivery once"
        bodies = [r.json() for r in got]
        assert all(b["schema"] == "doorkeep.webhook/1" and b["site"] == "demo" and b["webhook"] == hook.id
                   and b["test"] is False and b["id"] == r.delivery and b["type"] == r.event
                   for b, r in zip(bodies, got))
        by_event = {b["event"]["id"]: b["event"] for b in bodies if b["type"] == "access"}
        assert Counter(b["type"] for b in bodies) == Counter(access=3, alarm_raised=1)
        assert set(by_event) == {alice["id"], unknown["id"], bob["id"]}
        for ev in (alice, unknown, bob):
            sent = by_event[ev["id"]]
            assert {k: sent[k] for k in ("door", "decision", "reason", "person", "credential_last4", "device")} == {
                k: ev[k] for k in ("door", "decision", "reason", "person", "credential_last4", "device")}
            assert "names" not in sent and "credential_hash" not in sent, "names off, never the card's hash"
        [raised] = [b["alarm"] for b in bodies if b["type"] == "alarm_raised"]
        assert (raised["id"], raised["type"], raised["door"], raised["priority"], raised["source_event"]) == (
            alarm["id"], "forced_open", "lobby_in", "high", forced["id"])
        for r in got:
            assert not leaks(r.body.decode(), secrets), f"webhook {r.event}: {leaks(r.body.decode(), secrets)}"

        # -------------------------------------------------------------------------------- 3. syslog
        parsed = [parse_5424(line) for line in lines]

        def key(p: dict[str, Any]) -> tuple[str, str]:
            if p["msgid"] == "audit":
                return "audit_log", p["params"]["seq"]
            if p["msgid"] == "alarm_raised":
                return "alarms", p["params"]["alarm"]
            return "events", p["params"]["event"]

        keys = [key(p) for p in parsed]
        assert len(set(keys)) == len(keys), Counter(keys).most_common(3)
        for source, rows, field in (("events", held["events"], "id"), ("alarms", held["alarms"], "id"),
                                    ("audit_log", held["audit_log"], "seq")):
            assert [k for s, k in keys if s == source] == [str(r[field]) for r in rows], source
        at = {k: i for i, k in enumerate(keys)}
        script = [("events", alice["id"]), ("events", unknown["id"]), ("events", bob["id"]),
                  ("events", forced["id"]), ("alarms", alarm["id"])]
        assert [at[k] for k in script] == sorted(at[k] for k in script), "the access events and the alarm in order"
        by_key = dict(zip(keys, parsed))
        for ev in (alice, unknown, bob):
            p = by_key[("events", ev["id"])]
            assert p["msgid"] == "access" and p["hostname"] == "doorkeep-e2e" and p["ts"] == ev["ts"]
            assert (p["params"]["door"], p["params"]["decision"], p["params"]["reason"], p["params"]["card_last4"]) \
                == (ev["door"], ev["decision"], ev["reason"], ev["credential_last4"])
            assert p["params"].get("person") == ev["person"] and "name" not in p["params"]
        p = by_key[("alarms", alarm["id"])]
        assert (p["params"]["type"], p["params"]["door"], p["params"]["event"], p["pri"]) == (
            "forced_open", "lobby_in", forced["id"], 16 * 8 + 2)
        for ours, theirs in zip(parsed, rsyslog.records()):  # rsyslog parsed each as the same RFC 5424 message
            assert (int(theirs["pri"]), theirs["msgid"], theirs["hostname"]) == (ours["pri"], ours["msgid"],
                                                                                   ours["hostname"])
        written = "\n".join(f.read_text(errors="replace") for f in rsyslog.dir.iterdir() if f.is_file())
        assert not leaks(written, secrets), leaks(written, secrets)

        # ------------------------------------------------------------------------ 4. Home Assistant
        with ha._lock:
            messages = list(ha.messages)

        def rendered(config: dict[str, Any]) -> list[str]:
            """The entity's state after each message on its state topic, repeats collapsed: what HA showed."""
            shown: list[str] = []
            for topic, payload in messages:
                if topic == config["state_topic"]:
                    value = render(config["value_template"], payload)
                    if not shown or shown[-1] != value:
                        shown.append(value)
            return shown

        def in_order(wanted: list[str], shown: list[str]) -> bool:
            it = iter(shown)
            return all(any(s == w for s in it) for w in wanted)

        assert in_order(["LOCKED", "UNLOCKED", "LOCKED", "JAMMED", "LOCKED"], rendered(lock)), rendered(lock)
        assert in_order(["0", "1"], rendered(door_alarms)), rendered(door_alarms)
        assert int(ha.state(site_alarms) or 0) >= 1
        summary = json.loads(ha.retained[site_alarms["state_topic"]])
        assert summary["doors"]["lobby_in"]["highest"] == "high" and "forced_open" in summary["doors"]["lobby_in"][
            "types"]
        everything = b"\n".join(t.encode() + b" " + p for t, p in messages).decode(errors="replace")
        assert not leaks(everything, secrets), leaks(everything, secrets)
        assert not [i for i in secrets["ids"] if re.search(rf"(?<![a-z0-9_-]){re.escape(i)}(?![a-z0-9_-])",
                                                           everything.lower())], "a person id reached Home Assistant"

        # --------------------------------------------------------------------------- 5. JSON logs
        records = []
        for line in list(logs.lines):
            record = json.loads(line)
            assert tuple(record)[:len(STABLE_KEYS)] == STABLE_KEYS and set(record) - set(STABLE_KEYS) <= set(
                OPTIONAL_KEYS), line
            records.append(record)
        assert len(records) > 30
        assert not leaks("\n".join(logs.lines), secrets), [
            line for line in logs.lines if leaks(line, secrets)][:5]
        edge_forced = [r for r in records if r["component"] == "doorkeep.edge" and r["event_id"] == forced["id"]]
        assert edge_forced and edge_forced[0]["device"] == "pi-lobby" and edge_forced[0]["door"] == "lobby_in"
        assert [r for r in records if r["component"] == "doorkeep.server.supervision" and r["event_id"] == forced["id"]
                and r["door"] == "lobby_in"], "the server's alarm line names the edge's event"
        decided = {r["event_id"] for r in records if r["component"] == "doorkeep.edge" and r["event_id"]
                   and "decided by server" in r["message"]}
        assert {alice["id"], unknown["id"], bob["id"]} <= decided, "each access decision logged with its event"
