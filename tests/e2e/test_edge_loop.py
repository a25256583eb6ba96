"""The edge on one reactor (issue 15): a badge reaches its relay on the loop's thread alone, online and offline,
and the edge runs no thread per reader, no paho thread and no control thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from simulators.site import SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"
DEVICE = "pi-lobby"
DOOR = "lobby_in"


def record_threads(site: SiteRunner) -> dict[str, list[str]]:
    """Wrap the hops of a badge (request publish, decision read, relay set) to note which thread ran each."""
    agent = site.agents[DEVICE]
    rt = agent.doors[DOOR]
    seen: dict[str, list[str]] = {"request": [], "decision": [], "relay": [], "card": []}

    def wrap(obj: Any, name: str, key: str, only: Any = None) -> None:
        inner = getattr(obj, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if only is None or only(*args):
                seen[key].append(threading.current_thread().name)
            return inner(*args, **kwargs)

        setattr(obj, name, wrapped)

    wrap(agent.link, "publish", "request", only=lambda topic, *rest: topic.endswith("/request"))
    wrap(agent.link, "on_decision", "decision")  # what the link calls with a decision read from its socket
    wrap(agent, "_card", "card")
    wrap(rt.relay, "set", "relay", only=lambda on: on)
    return seen


def test_online_a_badge_is_read_asked_decided_and_relayed_on_the_loop_thread_alone(site: SiteRunner) -> None:
    seen = record_threads(site)
    loop_name = f"doorkeep-edge-{DEVICE}"
    site.doors[DOOR].reader.badge(ALICE)
    assert site.doors[DOOR].door.wait_relay(True, 3.0), "the relay was not energised for a granted card"
    assert seen == {"card": [loop_name], "request": [loop_name], "decision": [loop_name], "relay": [loop_name]}


def test_offline_the_cached_policy_decides_on_the_loop_thread_too(site: SiteRunner) -> None:
    agent = site.agents[DEVICE]
    assert wait_until(lambda: agent.policy is not None and agent.policy.current is not None, 10)
    seen = record_threads(site)
    agent._on_server_availability("offline")  # what the server's retained last will says when it dies
    site.doors[DOOR].reader.badge(ALICE)
    assert site.doors[DOOR].door.wait_relay(True, 3.0), "the cached policy did not grant a card it grants"
    loop_name = f"doorkeep-edge-{DEVICE}"
    assert seen["card"] == [loop_name] and seen["relay"] == [loop_name]
    assert seen["request"] == [] and seen["decision"] == [], "offline, nothing is asked"


def test_the_edge_runs_its_loop_its_jobs_worker_and_one_thread_per_camera_nothing_else(site: SiteRunner) -> None:
    agent = site.agents[DEVICE]
    assert agent.link.wait_connected(10)
    names = [t.name for t in threading.enumerate()]
    mine = sorted(n for n in names if n.endswith(DEVICE) or n in {f"reader-{d}" for d in agent.doors}
                  or n.startswith(("wiegand-", "osdp-")))
    cameras = sorted(n for n in names if n in {f"camera-{c}" for c in agent.cameras})
    assert mine == [f"doorkeep-edge-{DEVICE}", f"doorkeep-jobs-{DEVICE}"], names
    assert len(cameras) == len(agent.cameras)
    assert not any(n.startswith("paho-mqtt-client-") and DEVICE in n for n in names)
