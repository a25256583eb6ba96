"""Two server workers on one PostgreSQL store with the demo site's real edges (issue 20; docs/scale.md "Several
server workers"): a private TLS Mosquitto whose ACL lets each worker's own certificate take requests through the
shared subscription, the workers in this process (server/workers.py), the edges of simulators/site.py.

What one worker decides the other sees at once: who is where (hard anti-passback, occupancy), a card lost at the
leader's desk, a lockdown; the leader's muster list shows the standby's grants; and when the leader stops, the
standby leads and the doors keep getting the server's answers. The broker hands requests out in turn, so
consecutive badges are decided by different workers: each check below is made by both.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from doorkeep.clock import iso_ms
from doorkeep.contract import RequestMsg, Topics
from doorkeep.credentials import card_hash
from doorkeep.model import CredentialState
from server.doctor import check_workers, diagnose
from server.workers import Worker, workers_status
from simulators.brokers import OBSERVER, MosquittoBroker
from simulators.site import DEMO_SITE, SiteRunner, mosquitto_installed
from tests.conftest import wait_until
from tests.pg import pg_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.e2e

ALICE, BOB, CHEN = "0F00A1B2C3", "0F00B0B0B0", "0F00C4C4C4"
WILL_DELAY_S = 1.0  # shorter than the 5 s default: the last test waits for it


class Campus:
    """The site runner's edges and the two workers; ``decide`` badges and returns the stored access event."""

    def __init__(self, runner: SiteRunner, workers: dict[str, Worker], url: str, broker: MosquittoBroker) -> None:
        self.runner, self.workers, self.url, self.broker = runner, workers, url, broker

    def access(self) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url) as conn:
            return conn.execute("SELECT person, decision, reason, decided_by, door FROM events WHERE type = 'access' "
                                "ORDER BY received_at, rowid").fetchall()

    def decide(self, door: str, card: str) -> tuple[Any, ...]:
        before = len(self.access())
        self.runner.doors[door].reader.badge(card)
        assert wait_until(lambda: len(self.access()) > before, 10), f"no access event stored for {card} at {door}"
        row = self.access()[before]
        assert row[3] == "server", f"decided by {row[3]}, not by a worker: {row}"
        sim = self.runner.doors[door].door
        if row[1] == "granted":  # through, and the door locked again before the next badge
            assert sim.wait_relay(True, 3.0)
            sim.open()
            sim.close()
            assert sim.wait_relay(False, 3.0)
        return row

    def decisions(self) -> dict[str, int]:
        return {name: w.requests.counters["decisions"] for name, w in self.workers.items() if w.requests}


def _forged_requests(campus: Campus, n: int) -> None:
    """``n`` requests on pi-lobby's subtree for the lab, pi-floor7's door (as a compromised pi-lobby would send
    them), published by the test's observer identity; the broker hands them to the workers in turn."""
    broker = campus.broker
    client = broker.client(OBSERVER)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for i in range(n):
            request = RequestMsg(transaction=f"forged-{i}", door="lab", credential_hash=card_hash(campus.runner.key,
                                 "em4100", ALICE), credential_last4="B2C3", credential_format="em4100",
                                 ts=iso_ms(time.time()))
            client.publish(Topics("demo").request("pi-lobby", "lab"), request.encode(), qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.fixture
def campus(tmp_path: Path, pg_url: str) -> Iterator[Campus]:  # noqa: F811
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it)")
    site_dir = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site_dir, ignore=shutil.ignore_patterns("keys", "pki", "var"))
    text = (site_dir / "site.toml").read_text()
    lobby = '[areas.lobby]\nname = "Lobby"\n'
    assert lobby in text
    (site_dir / "site.toml").write_text(text.replace(lobby, lobby + 'anti_passback = "hard"\nmax_occupancy = 2\n'))
    # The same card again at once is a second badge, not a card held on the reader (repeat_ignore_s, 1 s by default).
    device = site_dir / "devices" / "pi-lobby.toml"
    reader = 'protocol = "em4100", baudrate = 9600 }'
    assert reader in device.read_text()
    device.write_text(device.read_text().replace(reader, 'protocol = "em4100", baudrate = 9600, repeat_ignore_s = 0.01 }'))
    broker = MosquittoBroker(workdir=tmp_path / "broker", tls_sites=["demo"],
                             clients=["server", "worker-a", "worker-b", "pi-lobby", "pi-floor7"]).start()
    runner = SiteRunner.from_dir(site_dir, broker_url=broker.url, data_dir=tmp_path / "run")
    keys = dict(key=runner.key, signing_key=runner.signing_key, snapshot_keys=runner.snapshot_keys,
                pass_keys=runner.pass_keys)
    workers: dict[str, Worker] = {}
    try:
        for name in ("a", "b"):
            workers[name] = Worker(runner.bundle, tmp_path / "data", broker.client_config("server"), name, pg_url,
                                   will_delay_s=WILL_DELAY_S, **keys)
            workers[name].start()
        assert workers["a"].leader and not workers["b"].leader
        runner.start(with_server=False)
        assert wait_until(lambda: all(a.policy is not None and a.server_availability == "online"
                                      for a in runner.agents.values()), 15), "the edges never heard the leader"
        assert wait_until(lambda: all(w.requests and w.requests.connected.is_set() for w in workers.values()), 10), \
            "a worker's subscription to the requests was never acknowledged"
        yield Campus(runner, workers, pg_url, broker)
    finally:
        runner.stop()
        for w in workers.values():
            w.stop()
        broker.stop()


def test_two_workers_share_presence_cards_and_lockdowns_and_the_standby_takes_over(campus: Campus) -> None:
    c = campus
    a, b = c.workers["a"], c.workers["b"]
    # Hard anti-passback and an occupancy of 2 at the lobby, each decision by whichever worker the broker picked:
    # the second must see what the first wrote, whoever made it.
    assert c.decide("lobby_in", ALICE)[1:3] == ("granted", "granted")
    assert c.decide("lobby_in", ALICE)[1:3] == ("denied", "anti_passback")
    assert c.decide("lobby_in", BOB)[1:3] == ("granted", "granted")
    assert c.decide("lobby_in", CHEN)[1:3] == ("denied", "occupancy_full")
    assert c.decide("lobby_out", ALICE)[1:3] == ("granted", "granted")
    assert c.decide("lobby_in", CHEN)[1:3] == ("granted", "granted")
    by = c.decisions()
    assert by["a"] > 0 and by["b"] > 0, f"one worker decided everything: {by}"
    assert sum(by.values()) == 6
    # The leader's muster list (its desk) reads what both wrote.
    assert a.server is not None
    assert {r["person"]: r["area"] for r in a.server.directory.muster()} == \
        {"alice": "outside", "bob": "lobby", "chen": "lobby"}

    # A card reported lost at the leader: the standby's directory has it within a moment (NOTIFY), and both refuse.
    lost = card_hash(c.runner.key, "em4100", BOB)
    a.server.directory.set_card_state(lost, CredentialState.LOST, actor="test")
    assert wait_until(lambda: b.site.credentials[lost].state is CredentialState.LOST, 5), "the standby kept the card"
    before = c.decisions()
    for _ in range(2):
        assert c.decide("lobby_out", BOB)[1] == "denied"
    after = c.decisions()
    assert after["a"] > before["a"] and after["b"] > before["b"]
    assert not c.runner.doors["lobby_out"].door.relay_energised

    # A lockdown of the lobby set at the leader is in force for both workers' next decisions.
    a.server.directory.lockdown("lobby", True, actor="test")
    assert [c.decide("lobby_in", ALICE)[2] for _ in range(2)] == ["lockdown", "lockdown"]
    a.server.directory.lockdown("lobby", False, actor="test")

    # The leader stops: the standby takes the lead, says online, and the doors get its answers.
    a.stop()
    assert wait_until(lambda: b.leader, 10), "the standby did not take the lead"
    assert wait_until(lambda: all(ag.server_availability == "online" for ag in c.runner.agents.values()), 10)
    assert c.decide("lobby_in", ALICE)[1:3] == ("denied", "occupancy_full"), "bob and chen are still inside"
    assert c.decide("lobby_out", CHEN)[1:3] == ("granted", "granted")
    assert c.decide("lobby_in", ALICE)[1:3] == ("granted", "granted")
    assert b.server is not None
    assert {r["person"] for r in b.server.directory.muster() if r["area"] == "lobby"} == {"alice", "bob"}
    # What doorkeep doctor reports (each worker's heartbeat row, its name's lock): b leads, a is gone.
    def status() -> dict[str, tuple[bool, bool]]:
        return {w["name"]: (w["leader"], w["alive"]) for w in workers_status(c.url, "demo")}
    assert wait_until(lambda: status() == {"a": (True, False), "b": (True, True)}, 5), status()
    found = diagnose(c.runner.bundle, store_url=c.url, checks=[check_workers])
    assert [(f.check, f.severity) for f in found] == [("workers_no_standby", "medium")], found
    b.stop()
    found = diagnose(c.runner.bundle, store_url=c.url, checks=[check_workers])
    assert [(f.check, f.severity) for f in found] == [("workers_no_leader", "high")], found


def test_the_doctor_finds_nothing_to_say_of_two_live_workers(campus: Campus) -> None:
    assert diagnose(campus.runner.bundle, store_url=campus.url, checks=[check_workers]) == []


def test_a_standby_whose_database_session_ends_opens_another_and_still_takes_over(campus: Campus) -> None:
    """PostgreSQL restarted, or the standby's connection cut: it must not stay a standby that can never lead."""
    a, b = campus.workers["a"], campus.workers["b"]
    with psycopg.connect(campus.url, autocommit=True) as admin:
        (ended,) = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE "
                                 "application_name = 'doorkeep worker b' AND datname = current_database()"
                                 ).fetchone()  # type: ignore[misc]
    assert ended == 1
    assert wait_until(lambda: {w["name"]: w["alive"] for w in workers_status(campus.url, "demo")}.get("b"), 5), \
        "the standby did not claim its name again on a new session"
    a.stop()
    assert wait_until(lambda: b.leader, 10), "the standby did not take the lead"
    assert campus.decide("lobby_in", ALICE)[1:3] == ("granted", "granted")


def test_with_every_worker_gone_the_doors_hear_the_server_offline_after_the_will_delay(campus: Campus) -> None:
    """The leader leaves its will behind (MQTT 5 will delay) for a standby to cancel by taking its session over; with
    no standby left the broker publishes it, and the doors decide from cache at once again instead of waiting."""
    a, b = campus.workers["a"], campus.workers["b"]
    lobby = campus.runner.agents["pi-lobby"]
    b.stop()
    a.stop()
    assert wait_until(lambda: lobby.server_availability == "offline", WILL_DELAY_S + 5), lobby.server_availability


def test_a_device_asking_about_another_devices_door_is_reported_by_whichever_worker_took_it(campus: Campus) -> None:
    """The leader's bus no longer sees requests: each worker must report the misbehaviour it was handed (one
    device_misbehaving alarm per device and window, server/supervision.py), the standby through the leader."""
    a, b = campus.workers["a"], campus.workers["b"]
    _forged_requests(campus, 4)
    assert wait_until(lambda: a.requests.counters["refused_foreign_door"] >= 1
                      and b.requests.counters["refused_foreign_door"] >= 1, 10), (a.requests.counters,
                                                                                  b.requests.counters)
    assert a.server is not None

    def misbehaving() -> list[dict[str, Any]]:
        return a.server.store.open_alarms(type="device_misbehaving", device="pi-lobby")  # type: ignore[union-attr]

    # The leader raises the one alarm of the device's window and counts every refusal, the standby's too (queued
    # for it in dk_reports): four forged requests, four refusals, whichever worker took each.
    assert wait_until(lambda: len(misbehaving()) == 1 and misbehaving()[0]["detail"]["refusals"] == 4, 10), \
        misbehaving()
    assert misbehaving()[0]["detail"]["reasons"] == {"foreign_door": 4}
    assert a.server.bus.counters["refused_foreign_door"] == 4, "the leader's /metrics count the standby's refusals"
