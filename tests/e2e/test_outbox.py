"""Durable delivery end to end: real Mosquitto stopped and restarted, an edge crashed and replaced.

Every event badged while the broker is away reaches the server's store exactly once, in seq order; an
edge that dies with undelivered events delivers them after its restart and its seq carries on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from doorkeep.config import load_site_dir
from doorkeep.contract import EventMsg, Topics
from edge.agent import EdgeAgent
from edge.link import Link
from edge.outbox import Outbox
from simulators.brokers import OBSERVER, MosquittoBroker, subscribed_client
from simulators.site import DEMO_SITE, SiteRunner, mosquitto_installed
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

DEVICE = "pi-lobby"
DOOR = "lobby_in"  # offline = "cache": the edge decides from its cached policy while the broker is away
ALICE = "0F00A1B2C3"


def strangers(n: int, block: int) -> list[str]:
    """Distinct unknown EM4100 numbers (distinct, so the reader's repeat filter never merges two badges)."""
    return [f"0F{block:02X}EE{i:04X}" for i in range(n)]


@pytest.fixture
def private_site(tmp_path: Path) -> Iterator[SiteRunner]:
    """The demo site on its own persistent Mosquitto, which the test may stop and restart."""
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed")
    runner = SiteRunner.from_dir(DEMO_SITE, data_dir=tmp_path, embedded_broker=False)
    runner.start()
    try:
        assert runner.wait_connected(10), "edges and server did not connect"
        agent = runner.agents[DEVICE]
        assert wait_until(lambda: agent.policy is not None and agent.policy.version is not None, 10), \
            "the edge never received its policy, so it could not decide offline"
        assert wait_until(lambda: all(c.stats.online for c in agent.cameras.values()), 10)
        yield runner
    finally:
        runner.stop()


def badge_all(runner: SiteRunner, cards: list[str], seen: list[EventMsg]) -> None:
    """Badge each card and wait for the edge to have decided it (an access event in the outbox)."""
    reader = runner.doors[DOOR].reader
    for card in cards:
        before = len(seen)
        reader.badge(card)
        assert wait_until(lambda before=before: len(seen) > before, 5), f"no decision for {card}"


def stored_seqs(runner: SiteRunner, ids: set[str]) -> list[tuple[str, int]]:
    """(id, seq) of this device's stored events among ``ids``, in the order the server stored them."""
    assert runner.server is not None
    store = runner.server.store
    with store.connection_for_tests(port=True) as db:  # the same on SQLite and PostgreSQL (make test-postgres)
        rows = db.execute("SELECT id, seq FROM events WHERE device = ? ORDER BY rowid", [DEVICE]).fetchall()
    return [(i, s) for i, s in rows if i in ids]


def access_events(agent: EdgeAgent) -> list[EventMsg]:
    seen: list[EventMsg] = []
    agent.listeners.append(lambda ev: seen.append(ev) if ev.type == "access" and ev.door == DOOR else None)
    return seen


def test_events_badged_during_a_broker_outage_reach_the_store_once_and_in_seq_order(private_site: SiteRunner) -> None:
    agent = private_site.agents[DEVICE]
    seen = access_events(agent)
    private_site.stop_broker()
    assert not agent.link.connected

    badge_all(private_site, [ALICE, *strangers(11, 1)], seen)
    assert [ev.decided_by for ev in seen] == ["edge_offline"] * 12
    assert seen[0].reason == "granted_offline" and {ev.reason for ev in seen[1:]} == {"unknown_credential"}
    seqs = [ev.seq for ev in seen]
    assert seqs == list(range(seqs[0], seqs[0] + 12))
    assert wait_until(lambda: agent.outbox.pending >= 12 + 12, 5)  # the events and their snapshots wait on disk
    state = json.loads(agent._state_payload())
    assert state["outbox"]["pending"] >= 24 and state["outbox"]["dropped_snapshots"] == 0

    assert private_site.start_broker(30), "clients did not reconnect to the restarted broker"
    ids = {ev.id for ev in seen}
    assert wait_until(lambda: len(stored_seqs(private_site, ids)) == len(ids), 30), \
        f"stored {len(stored_seqs(private_site, ids))} of {len(ids)} events"
    stored = stored_seqs(private_site, ids)
    assert [s for _, s in stored] == seqs, "events were not stored in seq order"
    assert private_site.server.bus.counters["duplicate_events"] == 0
    store = private_site.server.store
    assert wait_until(lambda: all(store.event(ev.id)["snapshot_path"] for ev in seen), 10), "a snapshot is missing"
    assert wait_until(lambda: agent.outbox.pending == 0, 10)


def crash(agent: EdgeAgent) -> None:
    """As near to kill -9 as one process allows: the edge's loop stops dead (no drain, no final state,
    no ``stopped``); then the hardware is released so a new agent can open the same pty and pins.
    (A real power cut during outbox writes is tests/unit/test_outbox.py's SIGKILL test.)"""
    agent.loop.stop(5)  # the loop ends between two turns: nothing more is read, written or pumped
    link = agent.link
    sock = link._client.socket()
    if sock is not None:
        sock.close()
    link._connected.clear()
    agent.stop()


def test_an_edge_restarted_after_a_crash_delivers_what_it_had_not_sent_and_seq_carries_on(
        private_site: SiteRunner) -> None:
    runner = private_site
    old = runner.agents[DEVICE]
    seen = access_events(old)
    badge_all(runner, strangers(2, 2), seen)  # delivered normally
    ids = {ev.id for ev in seen}
    assert wait_until(lambda: len(stored_seqs(runner, ids)) == 2, 10)

    runner.stop_broker()
    badge_all(runner, strangers(5, 3), seen)
    undelivered = seen[2:]
    assert [ev.seq for ev in seen] == list(range(seen[0].seq, seen[0].seq + 7))
    crash(old)

    state_dir = runner.data_dir / "edge" / DEVICE
    new = EdgeAgent(old.device, runner.bundle.site, runner.key, clock=runner.clock, pin_factory=old._factory,
                    policy_key=runner.signing_key.public_key(), state_dir=state_dir)
    runner.agents[DEVICE] = new
    assert new.outbox.seq == seen[-1].seq
    assert new.outbox.pending >= len(undelivered)
    after = access_events(new)
    new.start()

    assert runner.start_broker(30)
    ids = {ev.id for ev in undelivered}
    assert wait_until(lambda: len(stored_seqs(runner, ids)) == len(ids), 30), \
        f"stored {len(stored_seqs(runner, ids))} of {len(ids)} events the crashed edge had not sent"
    assert [s for _, s in stored_seqs(runner, ids)] == [ev.seq for ev in undelivered]

    assert wait_until(lambda: new.server_reachable, 10)
    badge_all(runner, strangers(1, 4), after)
    assert after[0].seq == seen[-1].seq + 1, "seq restarted instead of carrying on"
    everything = {ev.id for ev in seen + after}
    assert wait_until(lambda: len(stored_seqs(runner, everything)) == 8, 10)
    assert [s for _, s in stored_seqs(runner, everything)] == list(range(seen[0].seq, seen[0].seq + 8))
    assert wait_until(lambda: new.outbox.pending == 0, 10)


def test_attack_denial_rewritten_as_a_grant_in_the_edge_outbox_never_reaches_the_server(
        private_site: SiteRunner) -> None:
    """Issue 12: a denial waiting in ``outbox.db`` is rewritten with sqlite3 into a grant while the edge is down.
    The restarted edge refuses the row on drain: the server never stores it (as a grant or at all), gets an
    ``outbox_tampered`` alarm naming the row, and every genuine event before and after it is stored."""
    import sqlite3

    from edge.outbox import _deflate, _inflate

    runner = private_site
    old = runner.agents[DEVICE]
    seen = access_events(old)
    runner.stop_broker()
    badge_all(runner, strangers(3, 5), seen)  # three denials wait in the outbox
    assert [ev.decision for ev in seen] == ["denied"] * 3
    victim = seen[1]
    crash(old)

    state_dir = runner.data_dir / "edge" / DEVICE
    conn = sqlite3.connect(state_dir / "outbox.db", isolation_level=None)
    try:
        rid, blob = conn.execute("SELECT id, payload FROM messages WHERE seq = ?", (victim.seq,)).fetchone()
        forged = json.loads(_inflate(blob))
        assert forged["id"] == victim.id and forged["decision"] == "denied"
        forged.update(decision="granted", reason="granted_offline", person="alice")
        conn.execute("UPDATE messages SET payload = ? WHERE id = ?", (_deflate(json.dumps(forged).encode()), rid))
    finally:
        conn.close()

    new = EdgeAgent(old.device, runner.bundle.site, runner.key, clock=runner.clock, pin_factory=old._factory,
                    policy_key=runner.signing_key.public_key(), state_dir=state_dir)
    runner.agents[DEVICE] = new
    after = access_events(new)
    new.start()
    assert runner.start_broker(30)
    store = runner.server.store

    def tampered_alarms() -> list[dict]:
        return [a for a in store.open_alarms() if a["type"] == "outbox_tampered"]

    assert wait_until(lambda: tampered_alarms(), 30), "no outbox_tampered alarm"
    genuine = {seen[0].id, seen[2].id}
    assert wait_until(lambda: len(stored_seqs(runner, genuine)) == 2, 30), "a genuine event was lost"
    assert store.event(victim.id) is None, "the rewritten row reached the server"
    assert not [e for e in store.events(200) if e["type"] == "access" and e["decision"] == "granted"
                and e["device"] == DEVICE]
    [report] = [e for e in store.events(200) if e["type"] == "outbox_tampered"]
    detail = json.loads(report["detail"])
    assert detail["rows"] == 1 and detail["ids"] == [rid] and detail["seqs"] == [victim.seq]
    assert new.outbox.quarantined()[0]["id"] == rid

    assert wait_until(lambda: new.server_reachable, 10)
    badge_all(runner, strangers(1, 6), after)  # the queue is not blocked: new events still flow
    assert wait_until(lambda: store.event(after[0].id) is not None, 10)
    assert wait_until(lambda: new.outbox.pending == 0, 10)


def test_the_retained_state_is_republished_every_heartbeat_with_the_outbox_figures(mosquitto, tmp_path: Path) -> None:
    bundle = load_site_dir(DEMO_SITE)
    fast = {d: dataclasses.replace(dev, heartbeat_s=0.2) for d, dev in bundle.devices.items()}
    runner = SiteRunner(dataclasses.replace(bundle, devices=fast), broker_url=mosquitto.url, data_dir=tmp_path)
    runner.start(with_server=False)
    states: list[dict] = []
    got = threading.Event()

    def on_message(client, userdata, msg) -> None:
        states.append(json.loads(msg.payload))
        got.set()

    # The test observer: as DEVICE itself it would drop the running edge (client ids are bound to certificates).
    client = mosquitto.client(OBSERVER, f"test-{uuid.uuid4().hex[:6]}")
    client.on_connect = lambda c, *a: c.subscribe(Topics("demo").state(DEVICE), qos=1)
    client.on_message = on_message
    try:
        assert runner.wait_connected(10)
        client.connect("127.0.0.1", mosquitto.port)
        client.loop_start()
        assert wait_until(lambda: len(states) >= 6, 5), f"{len(states)} state messages in 5 s at heartbeat_s 0.2"
        assert len({s["ts"] for s in states}) >= 3  # fresh payloads, not one retained copy
        assert {"pending", "dropped_snapshots"} <= set(states[-1]["outbox"])
        assert runner.agents[DEVICE].link.heartbeats >= 3
    finally:
        client.loop_stop()
        client.disconnect()
        runner.stop()


def test_messages_in_flight_when_the_connection_drops_are_resent_before_anything_newer(tmp_path: Path) -> None:
    """The broker freezes with a full window unacknowledged and the connection drops: after the reconnect
    paho's own copies go first and are acknowledged, then the pump carries on; nothing overtakes."""
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed")
    broker = MosquittoBroker(tls_sites=["t"], clients=["server", "d"]).start()  # mutual TLS, as in production
    arrivals: list[int] = []
    sub = subscribed_client("127.0.0.1", broker.port, f"sub-{uuid.uuid4().hex[:6]}", "doorkeep/v1/t/d/door/+/event",
                            lambda c, u, msg: arrivals.append(json.loads(msg.payload)["seq"]))
    outbox = Outbox(tmp_path / "outbox.db")
    link = Link("t", "d", broker.client_config("d"), on_decision=lambda door, payload: None,
                state_payload=lambda: b"{}", outbox=outbox, drain_rate=5000, window=32)
    topic = Topics("t").event("d", "x")
    try:
        link.start()
        assert link.wait_connected(10)
        assert link.pump is not None and broker.proc is not None
        broker.proc.send_signal(signal.SIGSTOP)  # no PUBACK from now on
        outbox.put_events((topic, lambda n: json.dumps({"seq": n}).encode()) for _ in range(200))
        assert wait_until(lambda: link.pump.in_flight == 32, 5)
        link._client.socket().shutdown(socket.SHUT_RDWR)  # the network drops
        assert wait_until(lambda: not link.connected, 5)
        broker.proc.send_signal(signal.SIGCONT)

        assert wait_until(lambda: outbox.pending == 0, 30), f"{outbox.pending} rows never acknowledged"
        assert wait_until(lambda: set(arrivals) == set(range(1, 201)), 10)
        first = list(dict.fromkeys(arrivals))  # each seq where it first arrived
        assert first == list(range(1, 201)), "a newer message overtook an older one"
        assert link.pump.resends_abandoned == 0  # paho's re-sent copies were acknowledged, as relied on
        assert len(arrivals) - 200 <= 64  # duplicates (harmless: ingest is idempotent) stay within the window
    finally:
        if broker.proc is not None:
            broker.proc.send_signal(signal.SIGCONT)
        link.stop()
        outbox.close()
        sub.loop_stop()
        sub.disconnect()
        broker.stop()


def test_without_a_state_dir_the_outbox_is_temporary_and_the_edge_says_so(mosquitto, caplog) -> None:
    bundle = load_site_dir(DEMO_SITE)
    dev = bundle.devices[DEVICE]
    doors = {d: dataclasses.replace(hw, reader=dataclasses.replace(hw.reader, url="loop://"))
             for d, hw in dev.doors.items()}
    dev = dataclasses.replace(dev, doors=doors, cameras={}, broker=mosquitto.client_config(DEVICE),
                              gpio_factory="mock")
    caplog.set_level(logging.WARNING, logger="doorkeep.edge")
    agent = EdgeAgent(dev, bundle.site, os.urandom(32), pin_factory=MockFactory(), state_dir=None)
    where = agent.outbox.path.parent
    assert any("NOT durable" in r.getMessage() for r in caplog.records)
    agent.start()
    try:
        assert agent.link.wait_connected(10)
        assert where.exists()
    finally:
        agent.stop()
    assert not where.exists()
