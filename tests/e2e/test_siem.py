"""SIEM export to a real rsyslog over TLS (server/siem.py; docs/operations.md "SIEM (syslog)").

Real parts: Debian's rsyslogd in the foreground on a free loopback port (tests/syslog_collector.py: imtcp with the
``ossl`` or ``gtls`` driver, a server certificate and the CA from the site's own PKI made by doorkeep.pki, client
certificates required and checked by name), the demo site copied with a ``[siem]`` table in its site.toml and an
integration certificate (``pki issue NAME --role integration``) presented by the export, the real server and edges
on simulators over the session's Mosquitto (mutual TLS), and what rsyslog wrote to its files.

1. Badges, a forced door and an audited acknowledgement: the file holds every record the store holds, each once, in
   the order stored, as RFC 5424 that rsyslog parsed to the same fields, and no card number, card hash or name.
2. rsyslog restarted while events stream in (CEF this time): every event arrives, at least once, in order of first
   arrival.
3. A visitor whose name holds every character the structured data escapes, and a line break: one record, which
   rsyslog parses to the same structured data and message.
"""

from __future__ import annotations

import re
import secrets
import shutil
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import iso_ms
from doorkeep.config import load_site_dir
from doorkeep.contract import EventMsg, Topics
from doorkeep.envelope import SnapshotKeys
from doorkeep.pki import init_ca, issue
from server.alarms import Alarms
from server.app import Server, bootstrap
from server.store import Store
from simulators.brokers import free_port
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until
from tests.syslog_collector import Rsyslog, parse_5424, parse_cef, require_rsyslog

pytestmark = pytest.mark.e2e

PEER = "siem-export"  # the export's integration certificate: the only client rsyslog accepts
ALICE = "0F00A1B2C3"  # Alice Archer's card: lobby granted
UNKNOWN = "0F00DEAD01"
GHOST, GHOST_DOOR = "pi-annex", "annex"  # a device the test plays itself (tests/conftest.py TEST_DEVICES)


def siem_site(tmp_path: Path, port: int, *extra: str) -> Path:
    """The demo site with its own CA: a server certificate for rsyslog on 127.0.0.1 (issued as the PKI's
    ``broker``, the one role with a server certificate) and the export's integration certificate; and a [siem]
    table naming them (the CA by default: the site's)."""
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    now = datetime.now(timezone.utc)
    init_ca(site / "pki", "demo", now=now)
    issue(site / "pki", "broker", now=now)
    issue(site / "pki", PEER, now=now, role="integration", read_only=True)
    table = ['host = "127.0.0.1"', f"port = {port}", f'cert_file = "pki/{PEER}.crt"', f'key_file = "pki/{PEER}.key"',
             'hostname = "doorkeep-e2e"', *extra]
    (site / "site.toml").write_text((site / "site.toml").read_text() + "\n[siem]\n" + "\n".join(table) + "\n")
    return site


def collector(tmp_path: Path, site: Path, port: int) -> Rsyslog:
    pki = site / "pki"
    return Rsyslog(tmp_path / "rsyslog", ca=pki / "ca.crt", cert=pki / "broker.crt", key=pki / "broker.key",
                   peer=PEER, port=port)


@pytest.fixture(autouse=True)
def _rsyslog_installed() -> None:
    require_rsyslog()


def stored(store: Store) -> dict[str, list[dict[str, Any]]]:
    """Every event, alarm and audit record the store holds, in the order stored."""
    return {src: store.source_rows(src, (0.0, None, None), 100_000)[0] for src in ("events", "alarms", "audit_log")}


def key_of(parsed: dict[str, Any]) -> tuple[str, str]:
    p = parsed["params"]
    if parsed["msgid"] == "audit":
        return "audit_log", p["seq"]
    if parsed["msgid"] == "alarm_raised":
        return "alarms", p["alarm"]
    return "events", p["event"]


def test_badges_a_forced_door_and_an_acknowledgement_reach_rsyslog_once_each_in_order_and_nothing_sensitive(
        mosquitto: Any, tmp_path: Path) -> None:
    port = free_port()
    site = siem_site(tmp_path, port)
    data = tmp_path / "data"
    # Forwarding configured before the store's first record: everything it will ever hold is owed to the SIEM.
    blank = Store(data / "server")
    blank.siem_begin()
    blank.close()
    with collector(tmp_path, site, port) as rsyslog:
        runner = SiteRunner.from_dir(site, broker_url=mosquitto.url, data_dir=data)
        runner.start()
        try:
            assert runner.wait_connected(10) and runner.wait_policies(10)
            assert wait_until(lambda: all(c.stats.online for a in runner.agents.values()
                                          for c in a.cameras.values()), 10)
            server = runner.server
            assert server is not None and server.siem is not None
            store = server.store
            assert wait_until(lambda: server.siem is not None and server.siem.connected, 10)

            def events(**match: Any) -> list[dict[str, Any]]:
                return [e for e in stored(store)["events"] if all(e.get(k) == v for k, v in match.items())]

            lobby = runner.doors["lobby_in"]
            lobby.badge(ALICE)
            assert wait_until(lambda: events(type="access", person="alice", door="lobby_in"), 10)
            lobby.badge(UNKNOWN)
            assert wait_until(lambda: events(type="access", reason="unknown_credential"), 10)
            runner.doors["lab"].door.open()  # forced: the lab's lock was never released
            assert wait_until(lambda: [a for a in stored(store)["alarms"] if a["type"] == "forced_open"], 10)
            alarm = next(a for a in stored(store)["alarms"] if a["type"] == "forced_open")
            Alarms(store, server.directory.clock, server.audit, site=lambda: server.site).acknowledge(alarm["id"], "ada")
            runner.doors["lab"].door.close()

            def complete() -> bool:
                held = stored(store)
                return (server.siem is not None and server.siem.stats()["depth"] == 0
                        and len(rsyslog.raw_lines()) == sum(len(rows) for rows in held.values())
                        and len(rsyslog.records()) == len(rsyslog.raw_lines())
                        and any(r["action"] == "alarm.acknowledge" for r in held["audit_log"]))

            assert wait_until(complete, 20), (len(rsyslog.raw_lines()), {k: len(v) for k, v in stored(store).items()})
            held = stored(store)
            stats = server.siem.stats()
            exposition = server.metrics.exposition().decode() if server.metrics is not None else ""
            cards = {e["credential_hash"] for e in held["events"] if e.get("credential_hash")}
        finally:
            runner.stop()

    lines = rsyslog.raw_lines()
    parsed = [parse_5424(line) for line in lines]
    # Exactly what the store holds, each record once, each source in the order it was stored.
    keys = [key_of(p) for p in parsed]
    assert len(set(keys)) == len(keys), Counter(keys).most_common(3)
    expected = {"events": [e["id"] for e in held["events"]], "alarms": [a["id"] for a in held["alarms"]],
                "audit_log": [str(r["seq"]) for r in held["audit_log"]]}
    for source, order in expected.items():
        assert [k for s, k in keys if s == source] == order, source
    # The scripted records, in the order they happened, with what each must say.
    alice = next(e for e in held["events"] if e["person"] == "alice" and e["door"] == "lobby_in")
    unknown = next(e for e in held["events"] if e["reason"] == "unknown_credential")
    forced = next(e for e in held["events"] if e["type"] == "forced_open")
    ack = next(r for r in held["audit_log"] if r["action"] == "alarm.acknowledge")
    at = {k: i for i, k in enumerate(keys)}
    script = [("events", alice["id"]), ("events", unknown["id"]), ("events", forced["id"]), ("alarms", alarm["id"]),
              ("audit_log", str(ack["seq"]))]
    assert [at[k] for k in script] == sorted(at[k] for k in script)
    by_key = dict(zip(keys, parsed))
    a = by_key[("events", alice["id"])]
    assert a["msgid"] == "access" and a["hostname"] == "doorkeep-e2e" and a["app"] == "doorkeep"
    assert a["sd_id"] == "doorkeep@32473" and a["pri"] == 16 * 8 + 6 and a["ts"] == alice["ts"]
    assert {k: a["params"].get(k) for k in ("site", "device", "door", "decision", "person", "kind", "card_last4")} == {
        "site": "demo", "device": alice["device"], "door": "lobby_in", "decision": "granted", "person": "alice",
        "kind": "employee", "card_last4": alice["credential_last4"]}
    u = by_key[("events", unknown["id"])]
    assert u["pri"] == 16 * 8 + 5 and u["params"]["reason"] == "unknown_credential" and "person" not in u["params"]
    al = by_key[("alarms", alarm["id"])]
    assert al["pri"] == 16 * 8 + 2 and al["params"]["type"] == "forced_open" and al["params"]["door"] == "lab"
    assert al["params"]["event"] == forced["id"] and al["msg"] == "Door forced open at Floor 7 lab"
    ac = by_key[("audit_log", str(ack["seq"]))]
    assert (ac["params"]["actor"], ac["params"]["action"], ac["params"]["target"]) == (
        "ada", "alarm.acknowledge", alarm["id"])
    assert ac["params"]["hash"] == ack["hash"]
    # rsyslog parsed every message as RFC 5424, to the same fields.
    for ours, theirs in zip(parsed, rsyslog.records()):
        assert (int(theirs["pri"]), theirs["hostname"], theirs["app_name"], theirs["procid"], theirs["msgid"]) == (
            ours["pri"], ours["hostname"], ours["app"], ours["procid"], ours["msgid"])
        assert theirs["sd"].startswith("[doorkeep@32473 ") and theirs["msg"].strip() == ours["msg"]
    # Nothing sensitive anywhere rsyslog wrote: no card number, no card hash, no person's name.
    numbers = set(re.findall(r'number = "([^"]+)"', (DEMO_SITE / "people.toml").read_text())) | {ALICE, UNKNOWN}
    names = {p.name for p in load_site_dir(DEMO_SITE).people.values()}
    written = "\n".join(p.read_text(errors="replace") for p in rsyslog.dir.iterdir() if p.is_file())
    assert cards and not [s for s in numbers | cards | names if s in written]
    # Counted: the queue is empty and every message was confirmed.
    assert stats["counters"]["sent"] == len(lines) and stats["depth"] == 0
    assert "doorkeep_siem_queue_depth 0.0" in exposition and f"doorkeep_siem_messages_sent_total {len(lines)}.0" \
        in exposition


@pytest.fixture
def ghost(mosquitto: Any) -> Iterator[mqtt.Client]:
    client = mosquitto.client(GHOST, f"doorkeep-test-siem-{secrets.token_hex(3)}")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def test_a_restart_of_rsyslog_mid_stream_loses_nothing(mosquitto: Any, ghost: mqtt.Client, tmp_path: Path) -> None:
    port = free_port()
    site = siem_site(tmp_path, port, 'format = "cef"', 'send = ["access"]', "retry_s = 0.2", "max_retry_s = 1",
                     "confirm_s = 1")
    rsyslog = collector(tmp_path, site, port).start()
    server: Server | None = None
    topics = Topics("demo")
    sent: list[str] = []

    def publish(n: int) -> None:
        for _ in range(n):
            ev = EventMsg(id=f"stream-{len(sent)}-{secrets.token_hex(3)}", seq=len(sent) + 1, ts=iso_ms(time.time()),
                          device=GHOST, door=GHOST_DOOR, type="door_opened")
            ghost.publish(topics.event(GHOST, GHOST_DOOR), ev.encode(), qos=1).wait_for_publish(5)
            sent.append(ev.id)

    def arrived() -> list[str]:
        return [parse_cef(parse_5424(line)["msg"])["ext"]["externalId"] for line in rsyslog.raw_lines()]

    try:
        server = bootstrap(load_site_dir(site), tmp_path / "server", mosquitto.client_config("server"),
                           key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                           snapshot_keys=SnapshotKeys.generate())
        server.bus.door_devices[GHOST_DOOR] = GHOST  # else its events are refused (an unknown door)
        server.start()
        assert server.bus.wait_connected(10) and server.siem is not None
        siem = server.siem
        publish(100)
        assert wait_until(lambda: len(arrived()) >= 30, 15)
        # The collector restarts while the rest streams in: some messages are in flight when it goes.
        rest = threading.Thread(target=publish, args=(200,), name="ghost-publisher")
        rest.start()
        rsyslog.stop()
        rsyslog.start()
        rest.join(30)
        assert not rest.is_alive() and len(sent) == 300
        assert wait_until(lambda: set(sent) <= set(arrived()) and siem.stats()["depth"] == 0, 30), (
            len(set(sent) - set(arrived())), siem.stats())
        counters = dict(siem.counters)
    finally:
        if server is not None:
            server.stop()
        rsyslog.stop()

    got = arrived()
    firsts = list(dict.fromkeys(got))
    assert firsts == sent  # every event, in the order stored
    assert counters["failures"] >= 1  # the drop was noticed, and the connection made again
    assert len(got) - len(sent) <= counters.get("resent", 0)  # duplicates only from the messages sent again
    for line in rsyslog.raw_lines():
        c = parse_cef(parse_5424(line)["msg"])
        assert (c["vendor"], c["signature"], c["ext"]["cat"], c["ext"]["cs2"]) == (
            "doorkeep", "door_opened", "access", GHOST_DOOR)


def test_a_hostile_name_reaches_rsyslog_as_one_record_it_parses(tmp_path: Path) -> None:
    """A visitor named with every character the structured data must escape, and a line break: rsyslog still finds
    the end of the structured data and the message, and writes one line."""
    import dataclasses

    from doorkeep.clock import SystemClock
    from doorkeep.model import Person, PersonKind
    from server.siem import Siem, connector_for

    port = free_port()
    site_dir = siem_site(tmp_path, port, "include_names = true")
    bundle = load_site_dir(site_dir)
    hostile = 'Eve "]\\\n|= [Mallory]'
    site = dataclasses.replace(bundle.site, people={**bundle.people, "eve": Person("eve", hostile,
                                                                                     kind=PersonKind.VISITOR)})
    store = Store(tmp_path / "store")
    clock = SystemClock()
    with collector(tmp_path, site_dir, port) as rsyslog:
        siem = Siem(store, clock, bundle.siem, site=lambda: site, site_id="demo",
                    connector=connector_for(bundle.siem, site_dir / "pki" / "ca.crt"))
        store.ingest_event(EventMsg(id="ev-hostile", seq=1, ts=iso_ms(clock.wall()), device="pi-lobby",
                                    door="lobby_in", type="access", decision="granted", reason="granted",
                                    person="eve", credential_last4="4242"), clock.wall())
        assert wait_until(lambda: siem.run_once() is not None and len(rsyslog.records()) == 1, 10)
        siem.close()
    store.close()
    [line] = rsyslog.raw_lines()
    [theirs] = rsyslog.records()
    ours = parse_5424(line)
    assert ours["params"]["name"] == 'Eve "]\\ |= [Mallory]' and ours["params"]["person"] == "eve"
    assert theirs["msgid"] == "access" and theirs["sd"] == line[line.index("[doorkeep@32473"):line.index("] access") + 1]
    assert theirs["msg"].strip() == ours["msg"] == 'access granted at Lobby entrance by Eve "]\\ |= [Mallory]'
