"""Supervision end to end on the real Mosquitto: event gaps, last wills, door alarms (docs/alarms.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from doorkeep.clock import iso_ms
from doorkeep.contract import EventMsg, Topics
from server.app import bootstrap
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

GHOST = "pi-annex"  # a device no edge runs as: the test publishes its events itself
GHOST_DOOR = "annex"  # not in the demo site: the server is told the ghost owns it (server/bus.py refuses others)


def alarms(runner: SiteRunner, type: str, **where: Any) -> list[dict[str, Any]]:
    assert runner.server is not None
    return runner.server.store.open_alarms(type=type, **where)


def active(runner: SiteRunner, type: str, **where: Any) -> list[dict[str, Any]]:
    # The session's broker keeps earlier tests' retained availability: a server starting may see a
    # device's old `offline` before its edge reconnects, which leaves a cleared alarm behind.
    return [a for a in alarms(runner, type, **where) if a["state"] == "active"]


@pytest.fixture
def short_gaps(mosquitto, tmp_path: Path) -> Iterator[SiteRunner]:
    """The demo site with a server whose gap timeout is half a second."""
    runner = SiteRunner.from_dir(DEMO_SITE, broker_url=mosquitto.url, data_dir=tmp_path)
    runner.start(with_server=False)
    runner.server = bootstrap(runner.bundle, tmp_path / "server", runner.broker_config("server"), key=runner.key,
                              signing_key=runner.signing_key, gap_timeout_s=0.5,
                              snapshot_keys=runner.snapshot_keys)
    runner.server.bus.door_devices[GHOST_DOOR] = GHOST  # else its events are refused (an unknown door)
    runner.server.start()
    assert runner.wait_connected(10)
    yield runner
    runner.stop()


@pytest.fixture
def publisher(mosquitto) -> Iterator[mqtt.Client]:
    client = mosquitto.client(GHOST, "doorkeep-test-ghost")  # its own certificate: its own subtree only
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def publish_seq(client: mqtt.Client, site: str, *seqs: int, prefix: str = "ghost") -> None:
    topics = Topics(site)
    for seq in seqs:
        ev = EventMsg(id=f"{prefix}-{seq}", seq=seq, ts=iso_ms(1_774_861_200 + seq), device=GHOST, door="annex",
                      type="door_opened")
        client.publish(topics.event(GHOST, "annex"), ev.encode(), qos=1).wait_for_publish(5)


def test_sequence_gap_raises_event_gap_and_the_fill_clears_it(short_gaps: SiteRunner, publisher: mqtt.Client) -> None:
    server = short_gaps.server
    assert server is not None
    site = short_gaps.bundle.site.id
    publish_seq(publisher, site, 1, 2, 5, 2)  # 3 and 4 missing; 2 delivered twice
    assert wait_until(lambda: alarms(short_gaps, "event_gap", device=GHOST), 10)
    [gap] = alarms(short_gaps, "event_gap", device=GHOST)
    assert gap["state"] == "active" and gap["detail"]["missing"] == [[3, 4]]
    # the ghost's three numbers, the duplicate stored once (the site's own edges may add events of theirs)
    assert sorted(e["seq"] for e in server.store.events(100, device=GHOST)) == [1, 2, 5]

    publish_seq(publisher, site, 4, 3)  # late, out of order
    assert wait_until(lambda: alarms(short_gaps, "event_gap", device=GHOST)[0]["state"] == "cleared", 10)

    # A restart of the server keeps the window: the next number is no gap.
    short_gaps.stop_server()
    short_gaps.server = bootstrap(short_gaps.bundle, short_gaps.data_dir / "server", short_gaps.broker_config("server"),
                                  key=short_gaps.key, signing_key=short_gaps.signing_key, gap_timeout_s=0.5,
                                  snapshot_keys=short_gaps.snapshot_keys)
    short_gaps.server.bus.door_devices[GHOST_DOOR] = GHOST
    short_gaps.server.start()
    assert short_gaps.server.bus.wait_connected(10)
    publish_seq(publisher, site, 6)
    assert wait_until(lambda: short_gaps.server.store.event("ghost-6") is not None, 10)
    window = short_gaps.server.supervisor.window(GHOST)
    assert window is not None and (window.high, window.top) == (6, 6)
    assert [a["state"] for a in alarms(short_gaps, "event_gap")] == ["cleared"]


def test_edge_dying_without_goodbye_raises_device_offline_and_clears_on_return(site: SiteRunner) -> None:
    assert site.server is not None
    assert wait_until(lambda: site.server.supervisor.devices()["pi-floor7"].status == "online", 10)
    client = site.agents["pi-floor7"].link._client
    client.loop_stop()  # the process hangs...
    client.socket().close()  # ...and its connection drops: the broker publishes its last will
    assert wait_until(lambda: active(site, "device_offline", device="pi-floor7"), 10)
    [alarm] = active(site, "device_offline", device="pi-floor7")
    assert alarm["detail"]["reason"] == "lwt"
    assert site.server.supervisor.devices()["pi-floor7"].status == "offline"
    assert active(site, "device_offline", device="pi-lobby") == []

    client.loop_start()  # paho reconnects by itself, republishes its state, then `online`
    assert wait_until(lambda: site.server.store.alarm(alarm["id"])["state"] == "cleared", 15)
    assert site.server.supervisor.devices()["pi-floor7"].status == "online"


def test_clean_stop_is_shown_without_an_alarm(site: SiteRunner) -> None:
    assert site.server is not None
    site.agents["pi-floor7"].stop()
    assert wait_until(lambda: site.server.supervisor.devices()["pi-floor7"].status == "stopped", 10)
    site.server.supervisor.check()
    assert active(site, "device_offline") == []


def test_forced_door_is_an_alarm_until_it_closes(site: SiteRunner) -> None:
    assert site.server is not None
    gate = site.doors["lobby_out"]
    gate.door.open()
    assert wait_until(lambda: alarms(site, "forced_open", door="lobby_out"), 10)
    [alarm] = alarms(site, "forced_open", door="lobby_out")
    assert alarm["state"] == "active" and alarm["device"] == "pi-lobby" and alarm["severity"] == "alarm"
    event = site.server.store.event(alarm["source_event"])
    assert event is not None and event["type"] == "forced_open"

    gate.door.close()
    assert wait_until(lambda: alarms(site, "forced_open", door="lobby_out")[0]["state"] == "cleared", 10)
    assert site.server.store.resolve(alarm["id"], "desk", "contractor with a trolley; talked to them")
    assert alarms(site, "forced_open") == []
