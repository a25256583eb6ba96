"""A visitor pass shown to the lobby camera, end to end: server issues it → simulated camera draws it into real
MJPEG frames → the edge's QR scanner decodes it → request → decision → relay; and refused after check-out,
after its window with the server down, forged; the escort rule applies to it as to a card; and a serial QR
scanner (an ASCII reader) typing the same pass as a line."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.contract import EventMsg
from doorkeep.visitor_pass import PassClaims, sign_pass
from server.directory import Visitor
from simulators.clock import ScenarioClock
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

DOOR = "lobby_in"
ALICE = "0F00A1B2C3"  # the visitors' host, staff: she may escort them into the lobby


@pytest.fixture
def site(mosquitto, tmp_path: Path) -> Iterator[SiteRunner]:
    """The demo site with its lobby restricted, so a visitor who needs an escort needs one at the entrance."""
    site_dir = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site_dir)
    toml = site_dir / "site.toml"
    toml.write_text(toml.read_text().replace('[areas.lobby]\nname = "Lobby"\n',
                                             '[areas.lobby]\nname = "Lobby"\nrestricted = true\n'))
    runner = SiteRunner.from_dir(site_dir, broker_url=mosquitto.url, data_dir=tmp_path / "data",
                                 clock=ScenarioClock(time.time()))
    runner.start()
    assert runner.wait_connected(10)
    assert runner.wait_hardware(10) and runner.wait_policies(10)
    yield runner
    runner.stop()


class Accesses:
    """Every access event the lobby edge publishes, as it publishes it (works with the server down)."""

    def __init__(self, runner: SiteRunner) -> None:
        self.events: list[EventMsg] = []
        self._lock = threading.Lock()
        runner.agents["pi-lobby"].listeners.append(self._heard)

    def _heard(self, ev: EventMsg) -> None:
        if ev.type == "access" and ev.door == DOOR:
            with self._lock:
                self.events.append(ev)

    def wait(self, pred: Callable[[EventMsg], bool], timeout: float = 8.0) -> EventMsg:
        found: list[EventMsg] = []

        def seen() -> bool:
            with self._lock:
                found[:] = [e for e in self.events if pred(e)]
            return bool(found)

        assert wait_until(seen, timeout), f"no such access event at {DOOR}; saw {self.events}"
        return found[-1]


def lobby_policy(runner: SiteRunner, device: str = "pi-lobby") -> bool:
    """Wait until the device's edge holds the policy the server last published for it."""
    assert runner.server is not None
    publisher = runner.server.bus.publisher
    cache = runner.agents[device].policy
    assert publisher is not None and cache is not None
    return wait_until(lambda: (cache.version or 0) >= publisher.published.get(device, 0), 5)


def visit(runner: SiteRunner, vid: str, *, escort: bool, hours: float = 4.0,
          areas: tuple[str, ...] = ("lobby",)) -> str:
    """Register and check in a visitor hosted by Alice (allowed into the lobby by default); their pass's text."""
    assert runner.server is not None and runner.server.passes is not None
    now = runner.clock.wall()
    runner.server.directory.register_visitor(Visitor(id=vid, name=f"Visitor {vid}", host="alice", valid_from=now - 60,
                                                     valid_until=now + hours * 3600, allowed_areas=areas,
                                                     escort_required=escort))
    runner.server.directory.check_in(vid)
    token = runner.server.passes.issue_pass(vid, actor="test").token
    assert lobby_policy(runner)
    return token


def show(runner: SiteRunner, accesses: Accesses, token: str, count: int) -> EventMsg:
    """Hold the pass up to the lobby camera until the edge decided, then lower it and let the scanner forget it."""
    runner.show_qr(DOOR, token)
    try:
        accesses.wait(lambda e: len(accesses.events) >= count)
    finally:
        runner.show_qr(DOOR, None)
    runner.advance(3.0)  # out of view longer than the scanner's repeat window: the next showing is new
    return accesses.events[count - 1]


def test_a_pass_opens_the_lobby_and_is_refused_after_check_out_forged_and_after_its_window_offline(
        site: SiteRunner) -> None:
    accesses = Accesses(site)
    relay = site.doors[DOOR].door
    agent = site.agents["pi-lobby"]
    token = visit(site, "v-alone", escort=False)
    assert "Visitor" not in token and len(token) < 200  # no name in the code

    # Shown to the camera: one grant, the relay energised, however many frames showed the pass.
    site.show_qr(DOOR, token)
    ev = accesses.wait(lambda e: e.person == "v-alone")
    assert (ev.decision, ev.reason, ev.decided_by) == ("granted", "granted", "server"), ev
    assert relay.wait_relay(True, 3.0), "the pass was granted but the relay was not energised"
    assert wait_until(lambda: agent.qr_scanners["lobby"].stats.repeats >= 3, 5)  # held up: frames after frames
    site.show_qr(DOOR, None)
    assert site.wait_edges_idle(5)
    assert len(accesses.events) == 1, "a pass held in front of the camera is one request"
    assert ev.latency_ms is not None and ev.latency_ms < 1000
    site.advance(6.0)  # the door relocks and the scanner forgets the code
    assert relay.wait_relay(False, 3.0)

    # A pass signed with another key (a forged one) never reaches the server or the relay.
    forged = sign_pass(PassClaims("v-alone", int(site.clock.wall()) - 60, int(site.clock.wall()) + 3600, 1),
                       Ed25519PrivateKey.generate())
    ev = show(site, accesses, forged, 2)
    assert (ev.decision, ev.reason, ev.decided_by) == ("denied", "pass_invalid", "edge_offline")
    assert agent.counters["passes_invalid"] == 1 and not relay.relay_energised

    # Checked out: the same pass (a photo of it, say) is refused by the server as an inactive credential.
    site.server.directory.check_out("v-alone", revoke_badge=True)
    assert lobby_policy(site)
    ev = show(site, accesses, token, 3)
    assert (ev.decision, ev.reason) == ("denied", "credential_inactive"), ev

    # A visitor who needs an escort waits for one with their pass exactly as with a badge: their host badges.
    escorted = visit(site, "v-escort", escort=True)
    ev = show(site, accesses, escorted, 4)
    assert (ev.decision, ev.reason, ev.person) == ("denied", "escort_required", "v-escort"), ev
    site.doors[DOOR].badge(ALICE)
    ev = accesses.wait(lambda e: e.person == "alice")
    assert (ev.decision, ev.reason) == ("granted", "granted_escorted"), ev
    assert wait_until(lambda: site.server.directory.state.presence.get("v-escort") is not None, 5)
    assert site.server.directory.state.presence["v-escort"].area == "lobby"
    site.advance(6.0)

    # A serial QR scanner (the lab's ASCII reader) types the pass as a line: the same pass, decided as a badge.
    lab_pass = visit(site, "v-lab", escort=False, areas=("lobby", "floor7"))
    assert lobby_policy(site, "pi-floor7")
    lab = site.agents["pi-floor7"]
    seen: list[EventMsg] = []
    lab.listeners.append(lambda e: seen.append(e) if e.type == "access" else None)
    site.doors["lab"].badge(lab_pass)
    assert wait_until(lambda: any(e.person == "v-lab" for e in seen), 5), seen
    assert (seen[-1].decision, seen[-1].reason) == ("granted", "granted")
    assert site.doors["lab"].door.wait_relay(True, 3.0)

    # After its window, with the server down: refused by the edge on its own, on the pass's own window.
    late = visit(site, "v-late", escort=False, hours=1.0)
    site.stop_server()
    assert wait_until(lambda: not agent.server_reachable, 10)
    site.advance(2 * 3600.0)
    before = len(accesses.events)
    ev = show(site, accesses, late, before + 1)
    assert (ev.decision, ev.reason, ev.decided_by) == ("denied", "expired", "edge_offline"), ev
    assert agent.counters["passes_expired"] == 1 and not relay.relay_energised
