"""End to end through a real Mosquitto: reader pty → edge → server → relay pin → store."""

from __future__ import annotations

import threading
import uuid

import cv2
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from doorkeep.contract import DecisionMsg, EventMsg, Topics
from simulators.brokers import OBSERVER
from simulators.site import SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"
UNKNOWN = "0F00FFFF01"


def stored_access(runner: SiteRunner, door: str) -> list[dict]:
    assert runner.server is not None
    return [e for e in runner.server.store.events(50, door=door) if e["type"] == "access"]


def raw_client(runner: SiteRunner, name: str = OBSERVER) -> mqtt.Client:
    """A bare paho client, for injecting what a broken or hostile peer would send (as ``name``).

    By default the test observer, which may write anywhere in the site: client ids are bound to certificates,
    so a client presenting ``pi-lobby``'s certificate would drop the running pi-lobby edge (as a thief with
    that certificate would). What is published, on pi-lobby's own topics, is what a stolen Pi could send."""
    assert runner.broker_url is not None
    port = int(runner.broker_url.rsplit(":", 1)[1])
    # Over mutual TLS, with the certificate of ``name``.
    client = runner.mqtt_client(name, f"test-{uuid.uuid4().hex[:6]}")
    connected = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(5)
    return client


def test_known_card_energises_relay_and_stores_event_with_decodable_snapshot(site: SiteRunner) -> None:
    door = site.doors["lobby_in"]
    door.reader.badge(ALICE)
    assert door.door.wait_relay(True, 3.0), "relay was not energised for a granted card"

    assert wait_until(lambda: any(e["snapshot_path"] for e in stored_access(site, "lobby_in")), 5)
    ev = stored_access(site, "lobby_in")[0]
    assert (ev["decision"], ev["reason"], ev["decided_by"], ev["person"]) == ("granted", "granted", "server", "alice")
    assert ev["credential_last4"] == "B2C3"
    assert ev["latency_ms"] > 0
    jpeg = site.server.store.snapshot_bytes(ev["snapshot"])
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 0 and image.shape[1] > 0

    # The door relocks by itself once the unlock time is over (5 s) or the door is used.
    door.door.open()
    door.door.close()
    assert door.door.wait_relay(False, 3.0)


def test_card_number_never_stored_in_clear(site: SiteRunner) -> None:
    site.doors["lobby_in"].reader.badge(ALICE)
    assert wait_until(lambda: stored_access(site, "lobby_in"), 5)
    data_dir = site.server.store.dir
    blobs = b"".join(p.read_bytes() for p in data_dir.glob("doorkeep.db*"))
    assert ALICE.encode() not in blobs and ALICE.lower().encode() not in blobs


def test_unknown_card_never_energises_relay(site: SiteRunner) -> None:
    door = site.doors["lobby_in"]
    door.reader.badge(UNKNOWN)
    assert wait_until(lambda: stored_access(site, "lobby_in"), 5)
    ev = stored_access(site, "lobby_in")[0]
    assert (ev["decision"], ev["reason"], ev["person"]) == ("denied", "unknown_credential", None)
    assert not any(state for _, state in door.door.relay_history)


def test_denied_lab_badge_names_its_reason_and_keeps_relay_off(site: SiteRunner) -> None:
    lab = site.doors["lab"]
    lab.reader.badge("40067890")  # Bob: staff only, no lab access level
    assert wait_until(lambda: stored_access(site, "lab"), 5)
    assert stored_access(site, "lab")[0]["reason"] == "no_access"
    assert not lab.door.relay_history


def test_malformed_request_is_counted_and_server_still_answers(site: SiteRunner) -> None:
    topics = Topics("demo")
    client = raw_client(site)
    try:
        for payload in (b"\xff\xfe not json", b"[]", b'{"schema":"doorkeep.request/1"}',
                        b'{"schema":"doorkeep.request/1","transaction":"t","door":"lobby_in",'
                        b'"credential_hash":"nothex","credential_last4":"1","credential_format":"em4100","ts":"x"}'):
            client.publish(topics.request("pi-lobby", "lobby_in"), payload, qos=1).wait_for_publish(5)
        client.publish("doorkeep/v1/demo/pi-lobby/door/lobby_in/bogus", b"x", qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    assert wait_until(lambda: site.server.bus.counters["malformed"] >= 4, 5)

    door = site.doors["lobby_in"]
    door.reader.badge(ALICE)
    assert door.door.wait_relay(True, 3.0), "server stopped answering after malformed input"


def test_forged_or_malformed_decisions_never_unlock(site: SiteRunner) -> None:
    """A grant for a transaction the edge never asked about, and garbage, leave the relay off."""
    topics = Topics("demo")
    forged = DecisionMsg(transaction="f" * 32, door="lobby_in", granted=True, reason="granted",
                         person="alice", unlock_s=5, ts="2026-11-28T08:00:00.000Z")
    agent = site.agents["pi-lobby"]
    client = raw_client(site)
    try:
        client.publish(topics.decision("pi-lobby", "lobby_in"), forged.encode(), qos=1).wait_for_publish(5)
        client.publish(topics.decision("pi-lobby", "lobby_in"), b"{not json", qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    assert wait_until(lambda: agent.counters["late_decisions"] >= 1 and agent.counters["malformed_decisions"] >= 1, 5)
    assert not site.doors["lobby_in"].door.relay_history


def test_garbage_on_the_serial_line_is_counted_and_next_card_works(site: SiteRunner) -> None:
    door = site.doors["lobby_in"]
    door.reader.write_raw(b"\x02ZZZZZZZZZZZZ\x03noise\x00\xff")
    door.reader.badge(ALICE)
    assert door.door.wait_relay(True, 3.0)
    stats = site.agents["pi-lobby"].doors["lobby_in"].reader.stats
    assert sum(stats.faults.values()) >= 1


def test_forced_door_raises_forced_open_event_with_snapshot(site: SiteRunner) -> None:
    gate = site.doors["lobby_out"]
    gate.door.open()
    assert wait_until(lambda: any(e["type"] == "forced_open" for e in site.server.store.events(20, door="lobby_out")), 5)
    forced = [e for e in site.server.store.events(20, door="lobby_out") if e["type"] == "forced_open"][0]
    assert wait_until(lambda: site.server.store.event(forced["id"])["snapshot_path"], 5)
    gate.door.close()
    assert not gate.door.relay_history


def test_rex_unlocks_without_forced_alarm(site: SiteRunner) -> None:
    lab = site.doors["lab"]
    lab.door.press_rex()
    assert lab.door.wait_relay(True, 3.0)
    lab.door.open()
    lab.door.close()
    assert lab.door.wait_relay(False, 3.0)
    assert wait_until(lambda: any(e["type"] == "door_closed" for e in site.server.store.events(20, door="lab")), 5)
    types = {e["type"] for e in site.server.store.events(20, door="lab")}
    assert "rex" in types and "forced_open" not in types


def announce_server(runner: SiteRunner, availability: str) -> None:
    """Play the server's retained availability, as a live or a stopped server leaves it."""
    # The ACL lets only `server` write its availability, and the test observer (the server's rights under its
    # own identity: connecting as `server` would drop a running server).
    client = raw_client(runner, OBSERVER)
    try:
        client.publish(Topics("demo").server_availability(), availability, qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def access_events(agent) -> tuple[list[EventMsg], threading.Event]:
    seen: list[EventMsg] = []
    got = threading.Event()

    def listen(ev: EventMsg) -> None:
        if ev.type == "access":
            seen.append(ev)
            got.set()

    agent.listeners.append(listen)
    return seen, got


def test_a_server_that_does_not_answer_means_deny_after_the_timeout(edge_only: SiteRunner) -> None:
    announce_server(edge_only, "online")  # says it is there, never answers
    agent = edge_only.agents["pi-lobby"]
    assert wait_until(lambda: agent.server_availability == "online", 5)
    seen, got = access_events(agent)
    door = edge_only.doors["lobby_in"]
    door.reader.badge(ALICE)
    assert got.wait(5), "no access event after the decision timeout"
    ev = seen[0]
    # No policy was ever received, so there is nothing to decide from: deny, and say so.
    assert (ev.decision, ev.reason, ev.decided_by) == ("denied", "server_timeout", "edge_offline"), ev
    assert ev.latency_ms is not None and ev.latency_ms >= 1000 * 0.99
    assert not door.door.relay_history


def test_a_stopped_server_means_an_immediate_local_decision(edge_only: SiteRunner) -> None:
    announce_server(edge_only, "stopped")
    agent = edge_only.agents["pi-lobby"]
    assert wait_until(lambda: agent.server_availability == "stopped", 5)
    seen, got = access_events(agent)
    edge_only.doors["lobby_in"].reader.badge(ALICE)
    assert got.wait(5)
    assert (seen[0].reason, seen[0].decided_by) == ("server_timeout", "edge_offline")
    assert seen[0].latency_ms is not None and seen[0].latency_ms < 500, "waited for a server known to be away"


def test_offline_edge_decides_from_its_signed_policy_and_reports_after_the_server_returns(site: SiteRunner) -> None:
    lobby = site.agents["pi-lobby"]
    assert wait_until(lambda: lobby.policy.version is not None, 5), "no policy reached the edge"
    assert wait_until(lambda: site.agents["pi-floor7"].policy.version is not None, 5)
    site.server.stop()
    site.server = None
    assert wait_until(lambda: lobby.server_availability == "stopped", 5)
    seen, got = access_events(lobby)
    door = site.doors["lobby_in"]
    door.reader.badge(ALICE)
    assert door.door.wait_relay(True, 3.0), "cached policy should grant Alice at the lobby (offline = cache)"
    assert got.wait(5)
    assert (seen[0].reason, seen[0].decided_by, seen[0].person) == ("granted_offline", "edge_offline", "alice")

    lab_agent = site.agents["pi-floor7"]
    lab_seen, lab_got = access_events(lab_agent)
    site.doors["lab"].reader.badge("40011111")  # Alice may enter the lab online; offline it is set to deny
    assert lab_got.wait(5)
    assert (lab_seen[0].reason, lab_seen[0].decision) == ("offline_restricted", "denied")
    assert not site.doors["lab"].door.relay_history

    server = site.start_server()
    assert server.bus.wait_connected(10)
    # The broker kept the events published while the server was away (persistent session).
    assert wait_until(lambda: server.store.event(seen[0].id) is not None
                      and server.store.event(lab_seen[0].id) is not None, 10)
    assert server.store.event(seen[0].id)["reason"] == "granted_offline"
    assert server.store.event(lab_seen[0].id)["reason"] == "offline_restricted"
    assert wait_until(lambda: server.directory.state.presence.get("alice") is not None, 5)
    assert server.directory.state.presence["alice"].area == "lobby"


def test_duplicate_event_delivery_is_stored_once(site: SiteRunner) -> None:
    topics = Topics("demo")
    ev = EventMsg(id=uuid.uuid4().hex, seq=999, ts="2026-11-28T08:00:00.000Z", device="pi-lobby",
                  door="lobby_in", type="door_opened")
    client = raw_client(site)
    try:
        for _ in range(3):
            client.publish(topics.event("pi-lobby", "lobby_in"), ev.encode(), qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    bus = site.server.bus
    assert wait_until(lambda: bus.counters["duplicate_events"] >= 2, 5)
    assert len([e for e in site.server.store.events(100) if e["id"] == ev.id]) == 1


def test_a_card_reported_lost_is_refused_online_and_from_every_edge_cache(site: SiteRunner) -> None:
    from doorkeep.model import CredentialState

    agents = list(site.agents.values())
    assert wait_until(lambda: all(a.policy.version is not None for a in agents), 5)
    before = {a.device.id: a.policy.version for a in agents}
    directory = site.server.directory
    directory.set_card_state(directory.card("em4100", ALICE), CredentialState.LOST)
    assert wait_until(lambda: all(a.policy.version > before[a.device.id] for a in agents), 5), \
        "the change did not reach every edge's policy"

    door = site.doors["lobby_in"]
    door.reader.badge(ALICE)
    assert wait_until(lambda: stored_access(site, "lobby_in"), 5)
    assert stored_access(site, "lobby_in")[0]["reason"] == "credential_inactive"

    site.server.stop()
    site.server = None
    lobby = site.agents["pi-lobby"]
    assert wait_until(lambda: lobby.server_availability == "stopped", 5)
    seen, got = access_events(lobby)
    gate = site.doors["lobby_out"]  # another reader: the lobby one would take this as the same card held
    gate.reader.badge(ALICE)
    assert got.wait(5)
    assert (seen[0].reason, seen[0].decided_by) == ("credential_inactive", "edge_offline")
    assert not door.door.relay_history and not gate.door.relay_history


def test_muster_lists_who_is_in_which_area_with_visitors_and_hosts(site: SiteRunner, capsys) -> None:
    from doorkeep.cli import main
    from server.directory import Visitor
    from simulators.site import DEMO_SITE

    directory = site.server.directory
    now = site.clock.wall()
    directory.register_visitor(Visitor(id="v-zoe", name="Zoe Visitor", host="alice", valid_from=now - 60,
                                       valid_until=now + 3600, allowed_areas=("lobby", "outside")))
    visitor = directory.check_in("v-zoe")
    assert visitor.card_hash is not None and visitor.status == "checked_in"
    site.doors["lobby_in"].reader.badge(ALICE)
    site.doors["lobby_out"].reader.badge("0F00F00001")  # the first pool badge, now Zoe's... leaving the lobby
    assert wait_until(lambda: "alice" in directory.state.presence and "v-zoe" in directory.state.presence, 5)
    assert directory.state.presence["v-zoe"].area == "outside"
    site.doors["lobby_in"].reader.badge("0F00F00001")  # Zoe comes in
    assert wait_until(lambda: directory.state.presence["v-zoe"].area == "lobby", 5)

    assert site.server.bus.wait_idle(5), "presence is written by the store thread"
    assert main(["muster", "--site", str(DEMO_SITE), "--data", str(site.data_dir / "server")]) == 0
    out = capsys.readouterr().out
    lobby = out.split("Lobby (")[1]
    assert "Alice Archer" in lobby and "Zoe Visitor" in lobby and "host Alice Archer" in lobby
    assert "2 on site" in out

    directory.check_out("v-zoe")
    from doorkeep.decision import AccessRequest

    badge = directory.card("em4100", "0F00F00001")
    assert directory.decide(AccessRequest("lobby_in", badge)).reason.value == "unknown_credential", \
        "a returned pool badge must stop working at once"
    assert "v-zoe" not in directory.state.presence


def test_tamper_and_a_forced_lab_door_raise_alarms_and_the_sounder_follows_the_door(site: SiteRunner) -> None:
    lab = site.doors["lab"]
    store = site.server.store
    lab.door.tamper()
    assert wait_until(lambda: any(a["type"] == "tamper" and a["door"] == "lab" for a in store.open_alarms()), 5)
    lab.door.restore_tamper()

    lab.door.open()  # forced: the lab's sounder sounds until the door is shut
    assert lab.door.wait_sounder(True, 3.0)
    assert wait_until(lambda: any(a["type"] == "forced_open" and a["door"] == "lab" for a in store.open_alarms()), 5)
    lab.door.close()
    assert lab.door.wait_sounder(False, 3.0)
    assert not lab.door.relay_history, "neither tamper nor a forced door may energise the relay"


def test_a_cut_reader_and_a_camera_gone_dark_are_reported_and_the_doors_keep_working(site: SiteRunner) -> None:
    store = site.server.store
    site.doors["lobby_out"].reader.close()  # the cable is cut: the pty goes away under the edge
    assert wait_until(lambda: any(e["type"] == "reader_offline" for e in store.events(50, door="lobby_out")), 10)
    assert wait_until(lambda: any(a["type"] == "reader_offline" for a in store.open_alarms()), 5)
    site.cameras["pi-floor7/lab"].stop()
    assert wait_until(lambda: any(e["type"] == "camera_offline" for e in store.events(50, door="lab")), 15)
    assert wait_until(lambda: any(a["type"] == "camera_offline" for a in store.open_alarms()), 5)
    site.doors["lobby_in"].reader.badge(ALICE)
    assert site.doors["lobby_in"].door.wait_relay(True, 3.0)
