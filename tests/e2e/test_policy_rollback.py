"""Policy versions never go back (issue 12 item 3), end to end on the real Mosquitto.

The attack: the server's store is replaced (a fresh data directory, or a restored backup) while the edges
keep the policy they hold. A server counting versions from 1 again publishes policies every edge refuses
as replays, so a card reported lost afterwards still opens doors while the server is down.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from doorkeep.contract import EventMsg
from doorkeep.model import CredentialState
from server.app import Server, bootstrap
from simulators.clock import ScenarioClock
from simulators.site import SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"


def access_events(agent) -> tuple[list[EventMsg], threading.Event]:
    seen: list[EventMsg] = []
    got = threading.Event()

    def listen(ev: EventMsg) -> None:
        if ev.type == "access":
            seen.append(ev)
            got.set()

    agent.listeners.append(listen)
    return seen, got


def replace_server_store(site: SiteRunner, data_dir: Path, *, clock=None) -> Server:
    """Stop the server and start it again on an empty data directory with the same site keys."""
    site.stop_server()
    server = bootstrap(site.bundle, data_dir, site.broker_config("server"), key=site.key,
                       signing_key=site.signing_key, snapshot_keys=site.snapshot_keys, clock=clock or site.clock)
    server.start()
    site.server = server
    assert server.bus.wait_connected(10)
    return server


def live_a_while(site: SiteRunner) -> int:
    """The old server's store issues a few versions (cards lost and found), as any site in use does, so a
    store counting from 1 again stays below what the edges hold. Returns the version the lobby edge holds."""
    server, lobby = site.server, site.agents["pi-lobby"]
    assert server is not None
    directory = server.directory
    # an active card: eli's is lost already, and losing it again changes nothing (the credentials' order is the
    # store's, by keyed hash, so which card comes first differs from run to run)
    other = next(h for h, c in lobby.policy.site.credentials.items()
                 if c.person != "alice" and c.state is CredentialState.ACTIVE)
    for state in (CredentialState.LOST, CredentialState.ACTIVE) * 3:
        before = lobby.policy.version
        directory.set_card_state(other, state, actor="desk")
        assert wait_until(lambda: lobby.policy.version > before, 5)
    assert lobby.policy.version is not None
    return lobby.policy.version


def badge_once_online(site: SiteRunner) -> None:
    door = site.doors["lobby_in"]
    door.reader.badge(ALICE)
    assert door.door.wait_relay(True, 3.0), "Alice was not let in before the attack"
    door.door.open()
    door.door.close()
    assert door.door.wait_relay(False, 5.0)


def report_lost_and_expect_offline_refusal(site: SiteRunner, server: Server, held_before: int) -> None:
    lobby = site.agents["pi-lobby"]
    directory = server.directory
    directory.set_card_state(directory.card("em4100", ALICE), CredentialState.LOST, actor="desk")
    publisher = server.bus.publisher
    assert publisher is not None
    assert wait_until(lambda: lobby.policy.version is not None and lobby.policy.version > held_before
                      and lobby.policy.version == publisher.published.get("pi-lobby"), 10), (
        f"the edge still holds version {lobby.policy.version} (before: {held_before}); the replaced server "
        f"published {publisher.published.get('pi-lobby')}: refused as older")

    site.stop_server()
    assert wait_until(lambda: lobby.server_availability == "stopped", 5)
    seen, got = access_events(lobby)
    gate = site.doors["lobby_out"]  # another reader: the lobby one would take this as the same card held
    gate.reader.badge(ALICE)
    assert got.wait(5)
    assert (seen[0].decision, seen[0].reason, seen[0].decided_by) == ("denied", "credential_inactive",
                                                                      "edge_offline")
    assert not gate.door.relay_history, "a card reported lost opened a door offline"


def test_attack_replaced_server_store_cannot_roll_policy_back_and_lost_card_is_refused_offline(
        site: SiteRunner, tmp_path: Path) -> None:
    badge_once_online(site)
    held_before = live_a_while(site)

    server = replace_server_store(site, tmp_path / "server-replaced")
    report_lost_and_expect_offline_refusal(site, server, held_before)


def test_attack_replaced_store_with_server_clock_stepped_back_still_issues_newer_policies(
        site: SiteRunner, tmp_path: Path) -> None:
    """A fresh store on a server whose clock runs a day behind: the wall clock alone would give older
    versions; the retained policies on the broker (signed with the site's key) lift them above."""
    badge_once_online(site)
    held_before = live_a_while(site)

    behind = ScenarioClock(time.time() - 86_400)
    assert int(behind.wall() * 1000) < held_before or held_before < 10**9, "the clock must be behind the edge"
    server = replace_server_store(site, tmp_path / "server-behind", clock=behind)
    report_lost_and_expect_offline_refusal(site, server, held_before)
