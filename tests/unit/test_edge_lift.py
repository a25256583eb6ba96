"""A lift cab at the edge (issue 18, docs/openings.md "Lifts"): a badge enables exactly the floors its holder may
reach, the floor button chosen uses the grant and moves its people, public floors, lockdowns, fire recall,
destination dispatch and overrides drive the floor relays, and nothing ever enables a floor on a refusal or
after a stop.

Real parts: the agent on its loop with the lift simulator on gpiozero mock pins (the floor relays the edge drives
and the buttons it reads), a fake clock, no broker (port 1 refuses), so every decision is the edge's own from
its signed policy (``granted_offline``), per floor by each floor's ``offline``.
"""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.config import load_device
from doorkeep.contract import EventMsg
from doorkeep.credentials import card_hash
from doorkeep.model import AccessEntry, AccessLevel, Area, Credential, Door, DoorKind, LiftFloor, OfflineMode, \
    Person, Schedule, Site, TimeWindow, WEEKDAYS
from doorkeep.policy import compile_policy, sign_policy
from edge.agent import DISPATCH_S, EdgeAgent
from edge.framing import CardRead
from simulators.door import EmergencyContactSimulator
from simulators.lift import LiftSimulator
from tests.unit.agent_harness import AgentHarness
from tests.conftest import wait_until

KEY = bytes(range(32))
CARDS = {"alice": "0A00000001", "bob": "0A00000002", "vic": "0A00000003", "rita": "0A00000004", "ron": "0A00000005"}
DEVICE = """\
device = "pi-lift"
site = "t"
gpio_factory = "mock"
credential_key_file = "credential.key"
policy_key_file = "policy-signing.pub"
state_dir = "state"
{dispatch_comment}
[broker]
url = "mqtt://127.0.0.1:1"
allow_plain_mqtt = true

[emergency]
pin = 4

[doors.lift]
reader = { url = "loop://", protocol = "em4100" }
tamper = { pin = 12 }
dispatch = DISPATCH

[doors.lift.floors.lobby]
relay = 17
button = 27

[doors.lift.floors.l2]
relay = 22
button = 23

[doors.lift.floors.roof]
relay = 5
button = 6
"""
FLOORS = ("lobby", "l2", "roof")


def site() -> Site:
    """A lift serving the lobby (public in the day), level 2 and the roof (restricted, never from the cache).

    Alice may go everywhere; Bob to the lobby and level 2; Vic (a visitor) nowhere on his own."""
    always = Schedule("always", "Always", (TimeWindow(frozenset(WEEKDAYS), time(0), None),))
    day = Schedule("day", "Day", (TimeWindow(frozenset(WEEKDAYS), time(7), time(19)),))
    areas = {"outside": Area("outside", "Outside"), "lobby": Area("lobby", "Lobby"), "l2": Area("l2", "Level 2"),
             "roof": Area("roof", "Roof", restricted=True, clearance=1)}
    lift = Door("lift", "Lift", "", "", unlock_s=8, offline=OfflineMode.CACHE, emergency_release=True,
                kind=DoorKind.LIFT, floors=(LiftFloor("lobby", public_schedule="day"), LiftFloor("l2"),
                                            LiftFloor("roof", offline=OfflineMode.DENY)))
    levels = {"all": AccessLevel("all", "All", tuple(AccessEntry(a, "always") for a in areas)),
              "staff": AccessLevel("staff", "Staff", (AccessEntry("lobby", "always"), AccessEntry("l2", "always"))),
              "roof": AccessLevel("roof", "Roof only", (AccessEntry("roof", "always"),))}
    people = {"alice": Person("alice", "Alice", access_levels=("all",), clearance=2),
              "bob": Person("bob", "Bob", access_levels=("staff",)),
              "rita": Person("rita", "Rita", access_levels=("staff",), roles=frozenset({"responder"})),
              "ron": Person("ron", "Ron", access_levels=("roof",), clearance=1)}
    creds = {card_hash(KEY, "em4100", n): Credential(card_hash(KEY, "em4100", n), n[-4:], "em4100", p)
             for p, n in CARDS.items() if p in people}
    return Site("t", "T", "Europe/London", areas, {"lift": lift}, {"always": always, "day": day}, levels, people,
                creds)


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def write_device(tmp_path: Path, signing_key: Ed25519PrivateKey, *, dispatch: bool) -> Path:
    pi = tmp_path / "pi"
    pi.mkdir()
    text = DEVICE.replace("{dispatch_comment}", "").replace("DISPATCH", "true" if dispatch else "false")
    (pi / "pi-lift.toml").write_text(text)
    (pi / "credential.key").write_text(KEY.hex() + "\n")
    (pi / "credential.key").chmod(0o600)
    (pi / "policy-signing.pub").write_bytes(signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pi / "pi-lift.toml"


class Cab(AgentHarness):
    """The agent on mock pins with the lift simulator, and what it published and answered."""

    def __init__(self, device_file: Path, clock: FakeClock, signing_key: Ed25519PrivateKey) -> None:
        dev, _ = load_device(device_file)
        self.dev = dev
        self.factory = MockFactory()
        assert dev.emergency is not None
        self.fire = EmergencyContactSimulator(self.factory, dev.emergency.pin)
        hw = dev.doors["lift"]
        self.cab = LiftSimulator(self.factory, {f.area: (f.relay, f.relay_active_high, f.button, f.button_active_low)
                                                for f in hw.floors}, tamper_pin=hw.tamper.pin if hw.tamper else None)
        super().__init__(EdgeAgent(dev, site(), KEY, clock=clock, pin_factory=self.factory,
                                   policy_key=signing_key.public_key(), state_dir=dev.state_dir),
                         clock, signing_key, site_id="t", device="pi-lift")
        self.agent.start()
        self.agent._on_policy(sign_policy(compile_policy(site(), dev.doors), site_id="t", device="pi-lift",
                                          version=1, issued_at=clock.wall(), key=signing_key))
        assert wait_until(lambda: self.agent.policy is not None and self.agent.policy.version == 1, 5)
        self.settle()

    def badge(self, person: str) -> EventMsg:
        before = len(self.of("access"))
        self.agent._post(self.agent._card, "lift", CardRead(CARDS[person], "em4100"), self.clock.monotonic())
        assert wait_until(lambda: len(self.of("access")) > before, 5), "the badge was never decided"
        self.settle()
        return self.of("access")[-1]

    def press(self, floor: str) -> bool:
        lit = self.cab.press(floor)
        self.settle()
        return lit

    @property
    def floors(self) -> frozenset[str]:
        return self.cab.enabled

    def where(self, person: str) -> str | None:
        seen = self.agent.local_state.presence.get(person)
        return seen.area if seen is not None else None


@pytest.fixture
def cabs() -> Iterator[list[Cab]]:
    started: list[Cab] = []
    yield started
    for c in started:
        c.agent.stop()


@pytest.fixture
def cab(tmp_path: Path, cabs: list[Cab], signing_key: Ed25519PrivateKey) -> Cab:
    c = Cab(write_device(tmp_path, signing_key, dispatch=False), FakeClock(), signing_key)  # a Friday, 08:00 GMT
    cabs.append(c)
    return c


@pytest.fixture
def dispatch_cab(tmp_path: Path, cabs: list[Cab], signing_key: Ed25519PrivateKey) -> Cab:
    c = Cab(write_device(tmp_path, signing_key, dispatch=True), FakeClock(), signing_key)
    cabs.append(c)
    return c


def test_a_badge_enables_the_floors_its_holder_may_reach_and_the_floor_chosen_moves_them(cab: Cab) -> None:
    assert cab.floors == {"lobby"}, "the lobby is public in the day, without a badge"
    bob = cab.badge("bob")
    assert (bob.reason, bob.detail.get("floors")) == ("granted_offline", ["lobby", "l2"])
    assert cab.floors == {"lobby", "l2"}
    assert cab.press("roof") is False and cab.floors == {"lobby", "l2"}, "a dark button does nothing"
    assert not cab.of("floor_chosen")
    assert cab.press("l2") is True
    chosen = cab.of("floor_chosen")
    assert [(e.detail["floor"], e.detail["grant"]) for e in chosen] == [("l2", bob.id)]
    assert cab.floors == {"lobby"}, "the grant is used: the floors it added go dark at once"
    assert cab.where("bob") == "l2", "the edge's own state follows the floor chosen (offline anti-passback, occupancy)"


def test_a_floor_set_to_deny_offline_is_never_enabled_from_the_cache(cab: Cab) -> None:
    alice = cab.badge("alice")
    assert alice.detail.get("floors") == ["lobby", "l2"], "the roof is offline = deny: left out of the grant"
    assert "roof" not in cab.floors
    assert cab.press("roof") is False


def test_a_badge_only_a_deny_floor_would_let_through_is_offline_restricted(cab: Cab) -> None:
    ron = cab.badge("ron")
    assert (ron.decision, ron.reason, ron.person) == ("denied", "offline_restricted", "ron"), \
        "his only floor is never enabled from the cache: the refusal says so, not no_access"
    assert cab.floors == {"lobby"}


def test_a_grant_not_used_in_time_is_cancelled_and_moves_nobody(cab: Cab) -> None:
    bob = cab.badge("bob")
    cab.after(7.9)
    assert cab.floors == {"lobby", "l2"}
    cab.after(0.2)
    assert cab.floors == {"lobby"}
    assert [e.detail for e in cab.of("grant_unused")] == [{"grant": bob.id}]
    assert cab.where("bob") is None


def test_a_refused_badge_enables_nothing(cab: Cab) -> None:
    cab.after(12 * 3600)  # 20:00: the lobby is no longer public
    assert cab.floors == frozenset()
    before = list(cab.cab.floor_history)
    vic = cab.badge("vic")  # a card the site does not know
    assert (vic.decision, vic.reason) == ("denied", "unknown_credential")
    assert cab.floors == frozenset() and cab.cab.floor_history == before, "no floor relay ever moved"


def test_fire_recall_frees_every_floor_over_a_lockdown_and_the_lockdown_comes_back_after(cab: Cab) -> None:
    assert cab.command("lockdown", scope="lobby", active=True) == ("ok", None)
    assert cab.floors == frozenset(), "a lockdown of the lobby takes its public button away"
    assert cab.badge("bob").detail.get("floors") == ["l2"]
    assert cab.floors == {"l2"}
    cab.fire.release()
    assert wait_until(lambda: cab.floors == set(FLOORS), 5), "fire recall frees every floor, the locked-down one too"
    cab.settle()
    assert [e.type for e in cab.events if e.type.startswith("emergency")] == ["emergency_release"]
    assert cab.press("l2") is True
    assert not cab.of("floor_chosen"), "while held free, a press uses no grant"
    cab.fire.clear()
    assert wait_until(lambda: "roof" not in cab.floors and "lobby" not in cab.floors, 5)
    cab.settle()
    assert [e.type for e in cab.events if e.type.startswith("emergency")] == ["emergency_release", "emergency_ended"]


def test_a_lockdown_takes_its_floor_out_of_grants_in_force_but_a_responder_still_gets_it(cab: Cab) -> None:
    bob = cab.badge("bob")
    assert cab.floors == {"lobby", "l2"}
    assert cab.command("lockdown", scope="l2", active=True) == ("ok", None)
    assert cab.floors == {"lobby"}, "a grant made before the lockdown loses the locked-down floor at once"
    assert cab.press("l2") is False
    assert [e.detail.get("scope") for e in cab.of("lockdown")] == ["l2"], "the lift serves l2: it reports it"
    assert cab.badge("bob").detail.get("floors") == ["lobby"]
    assert cab.badge("rita").detail.get("floors") == ["lobby", "l2"]
    assert cab.floors == {"lobby", "l2"}, "decide() let the responder in: the cab enables the floor for her"
    assert cab.press("l2") is True
    assert cab.where("rita") == "l2" and cab.where("bob") is None
    assert bob.id not in {e.detail["grant"] for e in cab.of("floor_chosen")}


def test_lock_and_unlock_overrides_and_a_remote_unlock(cab: Cab) -> None:
    until = iso_ms(cab.clock.wall() + 3600)
    assert cab.command("lock", door="lift", until=until) == ("ok", None)
    assert cab.floors == frozenset(), "a lock override holds the lift shut against its public schedule"
    cab.badge("alice")
    assert cab.floors == {"lobby", "l2"}, "as at a door, a badge still works under a lock override"
    cab.after(8.1)
    assert cab.floors == frozenset()
    assert cab.command("release", door="lift") == ("ok", None)
    assert cab.floors == {"lobby"}
    assert cab.command("lockdown", scope="roof", active=True) == ("ok", None)
    assert cab.command("unlock", door="lift", until=until) == ("ok", None)
    assert cab.floors == {"lobby", "l2"}, "an unlock override frees every floor not locked down"
    assert cab.command("release", door="lift") == ("ok", None)
    assert cab.command("unlock", door="lift") == ("ok", None)
    assert cab.floors == {"lobby", "l2"}, "a remote unlock enables every floor for the unlock time, lockdowns apart"
    cab.after(8.1)
    assert cab.floors == {"lobby"}


def test_destination_dispatch_asks_for_the_floor_chosen_first_and_moves_at_once(dispatch_cab: Cab) -> None:
    cab = dispatch_cab
    assert cab.press("l2") is False, "chosen before any badge: dark, remembered for the next badge"
    bob = cab.badge("bob")
    assert (bob.reason, bob.detail.get("floor"), bob.detail.get("floors")) == ("granted_offline", "l2", ["l2"])
    assert cab.floors == {"lobby", "l2"} and cab.where("bob") == "l2", "the call is sent and Bob is on level 2"
    cab.after(8.1)
    assert not cab.of("grant_unused") and not cab.of("floor_chosen"), "the floor was chosen before the badge"

    cab.press("roof")
    refused = cab.badge("bob")
    assert (refused.decision, refused.reason, refused.detail.get("floor")) == ("denied", "no_access", "roof")
    cab.press("l2")
    cab.after(DISPATCH_S + 0.1)
    late = cab.badge("bob")
    assert "floor" not in late.detail and late.detail.get("floors") == ["lobby", "l2"], \
        "a choice older than DISPATCH_S is forgotten: the badge asks for every floor"


def test_the_retained_state_lists_the_floors_on_and_a_stop_switches_every_floor_off(cab: Cab) -> None:
    cab.badge("bob")
    import json
    state = json.loads(cab.agent._state_payload())
    assert state["doors"]["lift"]["floors"] == ["l2", "lobby"] and state["doors"]["lift"]["relay"] is True
    cab.agent.stop()
    assert cab.floors == frozenset(), "a stopped edge leaves no floor enabled"
