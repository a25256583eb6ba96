"""A stolen device certificate against the server's MQTT ingest, on the real Mosquitto (issue 12, items 1 and 5).

The attacker holds ``pi-lobby``'s certificate and key: the broker's ACL lets it publish anything under
``doorkeep/v1/demo/pi-lobby/…``, including ``door/lab/event`` although the lab belongs to ``pi-floor7``. The
server must refuse what the device is not entitled to say, acknowledge it all the same (an unacknowledged
QoS 1 message holds one of the broker's in-flight slots for the server's session: twenty of them and the
server hears nothing more), and raise one ``device_misbehaving`` alarm for the device, not one per message.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from doorkeep.clock import iso_ms
from doorkeep.contract import EventMsg, Topics
from simulators.site import SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

T = Topics("demo")
FORGERIES = 6


def device_client(runner: SiteRunner, name: str = "pi-lobby") -> mqtt.Client:
    """A bare paho client over mutual TLS with ``name``'s own certificate: what a stolen Pi can still send.

    The broker binds the client id to the certificate, so one certificate holds one connection: the stolen
    Pi's own edge agent is stopped first (it is in the attacker's hands), or the two would drop each other.
    """
    assert runner.broker_url is not None
    agent = runner.agents.pop(name, None)
    if agent is not None:
        agent.stop()
    port = int(runner.broker_url.rsplit(":", 1)[1])
    client = runner.mqtt_client(name, f"attacker-{uuid.uuid4().hex[:6]}")
    connected = threading.Event()
    client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(5), "the attacker's client could not connect with the device certificate"
    return client


def send(client: mqtt.Client, topic: str, payload: bytes) -> None:
    info = client.publish(topic, payload, qos=1)
    info.wait_for_publish(5)
    assert info.is_published(), f"the broker did not take {topic}"


def forged(runner: SiteRunner, seq: int, **kw: Any) -> EventMsg:
    base: dict[str, Any] = {"id": uuid.uuid4().hex, "seq": seq, "ts": iso_ms(runner.clock.wall()),
                            "device": "pi-lobby", "door": "lab"}
    return EventMsg(**{**base, **kw})


def misbehaving(runner: SiteRunner) -> list[dict[str, Any]]:
    assert runner.server is not None
    return [a for a in runner.server.store.alarms(limit=None) if a["type"] == "device_misbehaving"]


def test_attack_device_forges_event_for_another_devices_door(site: SiteRunner) -> None:
    server = site.server
    assert server is not None
    bob_before = server.directory.state.presence.get("bob")
    bob_rows = [r for r in server.store.rows("presence") if r["person"] == "bob"]
    grant = forged(site, 900_001, type="access", decision="granted", reason="granted_offline",
                   decided_by="edge_offline", person="bob", credential_last4="7890")
    forced = forged(site, 900_002, type="forced_open")
    # The same, with the payload claiming to come from the lab's own device: refused at the topic already.
    as_owner = forged(site, 900_003, type="forced_open", device="pi-floor7")
    client = device_client(site)
    try:
        for i in range(FORGERIES // 3):
            for ev in (grant, forced, as_owner):
                send(client, T.event("pi-lobby", "lab"), ev.encode())
        genuine = EventMsg(id=uuid.uuid4().hex, seq=900_010, ts=iso_ms(site.clock.wall()), device="pi-lobby",
                           door="lobby_in", type="door_opened")
        send(client, T.event("pi-lobby", "lobby_in"), genuine.encode())
    finally:
        client.loop_stop()
        client.disconnect()

    # Published after the forgeries on the same connection: once it is stored, they have all been handled.
    assert wait_until(lambda: server.store.event(genuine.id) is not None, 10), \
        "the device's genuine event after the forgeries was not stored (its queue is blocked?)"
    assert server.bus.wait_idle(5)
    for ev in (grant, forced, as_owner):
        assert server.store.event(ev.id) is None, f"forged {ev.type} event was stored"
    assert server.store.events(100, door="lab") == []
    assert server.directory.state.presence.get("bob") == bob_before, "a forged grant moved Bob in the muster"
    assert [r for r in server.store.rows("presence") if r["person"] == "bob"] == bob_rows
    assert server.store.alarms(limit=None, type="forced_open") == [], "a forged forced_open opened an alarm"
    assert server.bus.counters["refused_foreign_door"] == FORGERIES

    assert wait_until(lambda: misbehaving(site) and misbehaving(site)[0]["detail"].get("refusals") == FORGERIES, 5)
    [alarm] = misbehaving(site)
    assert (alarm["device"], alarm["severity"], alarm["state"]) == ("pi-lobby", "alarm", "active")
    assert alarm["detail"]["reasons"] == {"foreign_door": FORGERIES}
    assert "lab" in alarm["detail"]["last_reason"] and "pi-floor7" in alarm["detail"]["last_reason"]
    assert not any(a["device"] == "pi-floor7" for a in misbehaving(site))


def test_attack_a_burst_of_out_of_range_events_never_blocks_the_servers_queue(site: SiteRunner) -> None:
    # More than Mosquitto's default of 20 in-flight messages per client: unacknowledged, they would stall a
    # production broker's session (the session broker here allows any number, so the counters and the
    # store prove each one was refused, and the genuine event after them that the queue moved on).
    server = site.server
    assert server is not None
    now = site.clock.wall()
    good = EventMsg(id=uuid.uuid4().hex, seq=1, ts=iso_ms(now), device="pi-lobby", door="lobby_in",
                    type="door_closed")
    template = good.encode()
    overflow = template.replace(b'"seq":1', b'"seq":' + str(2**70).encode())  # OverflowError in SQLite
    others = [template.replace(iso_ms(now).encode(), b"9999-12-31T23:59:59.999Z"),        # top of the live feed
              template.replace(iso_ms(now).encode(), b"not-a-time"),                      # outlives retention
              template.replace(iso_ms(now).encode(), iso_ms(now + 3 * 86400).encode())]   # beyond the skew
    client = device_client(site)
    try:
        for payload in [overflow] * 24 + others * 2:
            send(client, T.event("pi-lobby", "lobby_in"), payload)
        send(client, T.event("pi-lobby", "lobby_in"), good.encode())
    finally:
        client.loop_stop()
        client.disconnect()
    assert wait_until(lambda: server.store.event(good.id) is not None, 10), \
        "a genuine event after 30 refused ones never arrived: the refused ones were not acknowledged"
    assert server.bus.wait_idle(5)
    counters = server.bus.counters
    assert (counters["refused_malformed"], counters["refused_future_ts"]) == (28, 2)
    assert counters["errors"] == 0
    assert not any(e["ts"].startswith(("9999", "not")) for e in server.store.events(200))
    assert wait_until(lambda: len(misbehaving(site)) == 1 and misbehaving(site)[0]["detail"]["refusals"] == 30, 5)
