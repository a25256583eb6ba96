"""The openings other than the plain door at the edge (issue 18, docs/openings.md): interlocks, the emergency
release input and turnstiles.

Interlock: of a group of doors, at most one open or unlocked at a time; the rule lives on the edge that owns
the group's doors: a badge, a REX press, a remote unlock or an unlock override at a door of a busy group is
refused there, and the relay stays off. Emergency release: the fire panel's contact holds the doors set
``emergency_release`` unlocked over everything else. Turnstile: one passage per grant, presence moved on the
passage. Real parts: the agent on its loop with the door simulator on gpiozero mock pins, a fake clock, no
broker (port 1 refuses), so grants are the edge's own (``granted_offline``); one test makes the server look
reachable to hold a request in flight, which reserves the group.
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
from doorkeep.config import load_device, load_site_dir
from doorkeep.contract import EventMsg
from doorkeep.credentials import card_hash
from doorkeep.errors import ConfigErrors
from doorkeep.decision import AccessRequest, Decision, Reason
from doorkeep.explain import explain
from doorkeep.model import AccessEntry, AccessLevel, Area, Credential, Door, DoorKind, OfflineMode, Person, \
    Schedule, Site, TimeWindow, WEEKDAYS
from doorkeep.policy import compile_policy, sign_policy
from edge.agent import EdgeAgent
from edge.framing import CardRead
from edge.outbox import Outbox
from simulators.door import DoorSimulator, EmergencyContactSimulator
from tests.conftest import wait_until
from tests.unit.agent_harness import AgentHarness

KEY = bytes(range(32))
CARDS = {"alice": "0A00000001", "bob": "0A00000002"}
DEVICE = """\
device = "pi-airlock"
site = "t"
gpio_factory = "mock"
credential_key_file = "credential.key"
policy_key_file = "policy-signing.pub"
state_dir = "state"

[broker]
url = "mqtt://127.0.0.1:1"
allow_plain_mqtt = true

[emergency]
pin = 16

[doors.outer]
reader = { url = "loop://", protocol = "em4100" }
lock = { pin = 17 }
contact = { pin = 27 }
rex = { pin = 22 }

[doors.inner]
reader = { url = "loop://", protocol = "em4100" }
lock = { pin = 5 }
contact = { pin = 6 }
rex = { pin = 13 }

[doors.side]
reader = { url = "loop://", protocol = "em4100" }
lock = { pin = 19 }
contact = { pin = 26 }

[doors.gate]
reader = { url = "loop://", protocol = "em4100" }
lock = { pin = 20 }
passage = { pin = 21 }
rex = { pin = 12 }
"""


def site() -> Site:
    """An airlock (outer, inner: one interlock) and a side door that belongs to no interlock."""
    always = Schedule("always", "Always", (TimeWindow(frozenset(WEEKDAYS), time(0), None),))
    areas = {a: Area(a, a) for a in ("outside", "airlock", "lab", "yard")}
    doors = {
        "outer": Door("outer", "Outer door", "outside", "airlock", unlock_s=5, held_open_s=30,
                      offline=OfflineMode.CACHE, interlock="lock1", emergency_release=True),
        "inner": Door("inner", "Inner door", "airlock", "lab", unlock_s=5, held_open_s=30,
                      offline=OfflineMode.CACHE, interlock="lock1", emergency_release=True),
        "side": Door("side", "Side door", "outside", "yard", unlock_s=5, offline=OfflineMode.CACHE),
        "gate": Door("gate", "Yard turnstile", "yard", "outside", unlock_s=5, offline=OfflineMode.CACHE,
                     kind=DoorKind.TURNSTILE, tailgate_s=3),
    }
    level = AccessLevel("all", "All", tuple(AccessEntry(a, "always") for a in areas))
    people = {p: Person(p, p.title(), access_levels=("all",)) for p in CARDS}
    creds = {card_hash(KEY, "em4100", n): Credential(card_hash(KEY, "em4100", n), n[-4:], "em4100", p)
             for p, n in CARDS.items()}
    return Site("t", "T", "Europe/London", areas, doors, {"always": always}, {"all": level}, people, creds)


@pytest.fixture(scope="module")
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def device_file(tmp_path: Path, signing_key: Ed25519PrivateKey) -> Path:
    pi = tmp_path / "pi"
    pi.mkdir()
    (pi / "pi-airlock.toml").write_text(DEVICE)
    (pi / "credential.key").write_text(KEY.hex() + "\n")
    (pi / "credential.key").chmod(0o600)
    (pi / "policy-signing.pub").write_bytes(signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return pi / "pi-airlock.toml"


class Airlock(AgentHarness):
    """The agent on mock pins, a door simulator per door, and what it published and answered."""

    def __init__(self, device_file: Path, clock: FakeClock, signing_key: Ed25519PrivateKey, *,
                 fire_at_boot: bool = False, site_file: bool = True, policy: bool = True) -> None:
        dev, _ = load_device(device_file)
        self.factory = MockFactory()
        assert dev.emergency is not None
        self.fire = EmergencyContactSimulator(self.factory, dev.emergency.pin)
        if fire_at_boot:
            self.fire.release()
        self.doors = {did: DoorSimulator(self.factory, relay_pin=hw.lock.pin,
                                         contact_pin=hw.contact.pin if hw.contact else None,
                                         rex_pin=hw.rex.pin if hw.rex else None,
                                         passage_pin=hw.passage.pin if hw.passage else None)
                      for did, hw in dev.doors.items()}
        self.dev = dev
        super().__init__(EdgeAgent(dev, site() if site_file else None, KEY, clock=clock, pin_factory=self.factory,
                                   policy_key=signing_key.public_key(), state_dir=dev.state_dir),
                         clock, signing_key, site_id="t", device="pi-airlock")
        self.agent.start()
        if policy:
            self.send_policy()
        self.settle()

    def send_policy(self, version: int = 1) -> None:
        self.agent._on_policy(sign_policy(compile_policy(site(), self.dev.doors), site_id="t", device="pi-airlock",
                                          version=version, issued_at=self.clock.wall(), key=self.signing_key))
        assert wait_until(lambda: self.agent.policy is not None and self.agent.policy.version == version, 5)

    def badge(self, door: str, person: str) -> EventMsg:
        before = len(self.of("access"))
        self.agent._post(self.agent._card, door, CardRead(CARDS[person], "em4100"), self.clock.monotonic())
        assert wait_until(lambda: len(self.of("access")) > before, 5), "the badge was never decided"
        self.settle()
        return self.of("access")[-1]

    def relay(self, door: str) -> bool:
        return self.doors[door].relay_energised


@pytest.fixture
def airlocks() -> Iterator[list[Airlock]]:
    started: list[Airlock] = []
    yield started
    for a in started:
        a.agent.stop()


@pytest.fixture
def airlock(device_file: Path, airlocks: list[Airlock], signing_key: Ed25519PrivateKey) -> Airlock:
    a = Airlock(device_file, FakeClock(), signing_key)
    airlocks.append(a)
    return a


def test_a_badge_at_the_other_door_is_refused_while_one_is_unlocked_then_decided_once_it_relocks(
        airlock: Airlock) -> None:
    first = airlock.badge("outer", "alice")
    assert (first.reason, airlock.relay("outer")) == ("granted_offline", True)
    refused = airlock.badge("inner", "bob")
    assert (refused.decision, refused.reason, refused.decided_by) == ("denied", "interlock_busy", "edge")
    assert refused.person == "bob", "the cached policy names the cardholder"
    assert refused.detail == {"interlock": "lock1", "busy_door": "outer"}
    assert airlock.relay("inner") is False, "a refused badge never energises the relay"
    assert airlock.badge("side", "bob").reason == "granted_offline", "a door of no interlock is not held up"

    airlock.after(5)  # the outer door was never opened: its unlock ran out and it relocked
    assert airlock.relay("outer") is False
    assert airlock.badge("inner", "bob").reason == "granted_offline"
    assert airlock.relay("inner") is True
    assert airlock.badge("outer", "alice").reason == "interlock_busy", "now the outer door waits"


def test_an_open_door_holds_the_group_until_it_closes_and_its_exit_button_waits_too(airlock: Airlock) -> None:
    airlock.badge("outer", "alice")
    airlock.doors["outer"].open()
    airlock.after(10)  # past its unlock time, still open: the relay is off but the door is not shut
    assert airlock.relay("outer") is False
    assert airlock.badge("inner", "bob").reason == "interlock_busy"

    airlock.doors["inner"].press_rex()
    airlock.settle()
    assert airlock.relay("inner") is False, "the exit button of an interlocked door waits like a badge"
    rex = airlock.of("rex", "inner")
    assert len(rex) == 1 and rex[0].detail == {"detail": "interlock_busy", "busy_door": "outer"}

    airlock.doors["outer"].close()
    airlock.settle()
    airlock.doors["inner"].press_rex()
    airlock.settle()
    assert airlock.relay("inner") is True, "with the outer door shut, REX releases the inner door"


def test_a_forced_door_holds_the_group_and_raises_its_alarm_as_usual(airlock: Airlock) -> None:
    airlock.doors["inner"].open()  # forced: nothing unlocked it
    airlock.settle()
    assert len(airlock.of("forced_open", "inner")) == 1
    assert airlock.badge("outer", "alice").reason == "interlock_busy"
    assert airlock.relay("outer") is False


def test_remote_unlocks_and_unlock_overrides_respect_the_interlock(airlock: Airlock) -> None:
    assert airlock.command("unlock", door="outer") == ("ok", None)
    assert airlock.relay("outer") is True
    assert airlock.command("unlock", door="inner") == ("failed", "interlock_busy")
    until = iso_ms(airlock.clock.wall() + 3600)
    assert airlock.command("unlock", door="inner", until=until) == ("failed", "interlock_busy")
    assert airlock.relay("inner") is False
    assert not airlock.of("override_started"), "a refused override is not started"

    airlock.after(5)
    assert airlock.command("unlock", door="inner", until=until) == ("ok", None)
    assert airlock.relay("inner") is True
    # Held unlocked by the override: the rest of the group is held shut for as long.
    airlock.after(600)
    assert airlock.badge("outer", "alice").reason == "interlock_busy"
    assert airlock.command("unlock", door="outer") == ("failed", "interlock_busy")


def test_a_badge_waiting_for_the_server_reserves_the_group(airlock: Airlock,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Two people at both ends at once: the first badge the loop reads is asked about and holds the group
    until its answer, so the second is refused at once, never both let in."""
    monkeypatch.setattr(EdgeAgent, "server_reachable", property(lambda self: True))
    agent = airlock.agent
    agent._post(agent._card, "outer", CardRead(CARDS["alice"], "em4100"), airlock.clock.monotonic())
    agent._post(agent._card, "inner", CardRead(CARDS["bob"], "em4100"), airlock.clock.monotonic())
    assert wait_until(lambda: len(airlock.of("access")) == 1, 5)
    airlock.settle()
    refused = airlock.of("access")[0]
    assert (refused.door, refused.reason) == ("inner", "interlock_busy")
    assert [p.door for p in agent._pending.values()] == ["outer"], "alice's request is still out"

    monkeypatch.setattr(EdgeAgent, "server_reachable", property(lambda self: False))
    airlock.after(1.0)  # no answer within decision_timeout_ms: the edge decides alice's badge itself
    assert wait_until(lambda: len(airlock.of("access")) == 2, 5)
    assert airlock.of("access")[1].door == "outer" and airlock.relay("outer") is True
    assert airlock.relay("inner") is False


def test_the_desk_explains_interlock_busy() -> None:
    s = site()
    h = card_hash(KEY, "em4100", CARDS["bob"])
    words = explain(AccessRequest("inner", h), Decision(Reason.INTERLOCK_BUSY, "bob"), s, None, when=0.0)
    assert words.rule == "interlock" and "Inner door" in words.summary and "'lock1'" in words.summary
    assert any("closing" in w for w in words.would_allow)


# ------------------------------------------------------------------ config


SITE_HEAD = """\
[site]
id = "t"
timezone = "Europe/London"

[areas.outside]
[areas.airlock]
[areas.lab]

[schedules.always]
windows = [{ days = ["mon"], start = "00:00", end = "24:00" }]
"""

DOOR = """
[doors.{did}]
from = "{frm}"
to = "{to}"
{extra}
"""

DEVICE_FILE = """\
device = "{dev}"
site = "t"
site_file = "../site.toml"
credential_key_file = "/etc/doorkeep/credential.key"
gpio_factory = "mock"

[broker]
url = "mqtt://127.0.0.1:1"
allow_plain_mqtt = true
{doors}
"""


def write_site(tmp_path: Path, doors: dict[str, tuple[str, str, str]], devices: dict[str, list[str]]) -> Path:
    d = tmp_path / "site"
    (d / "devices").mkdir(parents=True)
    text = SITE_HEAD + "".join(DOOR.format(did=did, frm=f, to=t, extra=x) for did, (f, t, x) in doors.items())
    (d / "site.toml").write_text(text)
    pin = iter(range(2, 28))
    for dev, ids in devices.items():
        hw = "".join(f'\n[doors.{did}]\nreader = {{ url = "loop://", protocol = "em4100" }}\n'
                     f'lock = {{ pin = {next(pin)} }}\n' for did in ids)
        (d / "devices" / f"{dev}.toml").write_text(DEVICE_FILE.format(dev=dev, doors=hw))
    return d


def problems(tmp_path: Path, doors: dict[str, tuple[str, str, str]], devices: dict[str, list[str]]) -> list[str]:
    try:
        load_site_dir(write_site(tmp_path, doors, devices), people=False)
    except ConfigErrors as exc:
        return [f"{e.key}: {e.problem} ({e.fix})" for e in exc.errors]
    return []


def test_an_interlock_of_two_doors_on_one_device_loads(tmp_path: Path) -> None:
    doors = {"outer": ("outside", "airlock", 'interlock = "a1"'), "inner": ("airlock", "lab", 'interlock = "a1"')}
    assert problems(tmp_path, doors, {"pi-1": ["outer", "inner"]}) == []
    site_ = load_site_dir(tmp_path / "site", people=False).site
    assert (site_.doors["outer"].interlock, site_.doors["inner"].interlock) == ("a1", "a1")


def test_an_interlock_with_one_door_names_the_key_and_the_fix(tmp_path: Path) -> None:
    doors = {"outer": ("outside", "airlock", 'interlock = "a1"'), "inner": ("airlock", "lab", "")}
    found = problems(tmp_path, doors, {"pi-1": ["outer", "inner"]})
    assert found == ["doors.outer.interlock: interlock 'a1' has only this door "
                     "(give a second door interlock = \"a1\", or remove the key)"]


def test_an_interlock_split_over_two_devices_is_refused(tmp_path: Path) -> None:
    doors = {"outer": ("outside", "airlock", 'interlock = "a1"'), "inner": ("airlock", "lab", 'interlock = "a1"')}
    found = problems(tmp_path, doors, {"pi-1": ["outer"], "pi-2": ["inner"]})
    assert len(found) == 1 and found[0].startswith("doors.outer.interlock: interlock 'a1' has doors on devices "
                                                   "pi-1, pi-2")


def test_a_door_of_an_interlock_cannot_be_unlocked_on_schedule(tmp_path: Path) -> None:
    doors = {"outer": ("outside", "airlock",
                       'interlock = "a1"\nmode = "unlocked_on_schedule"\nunlock_schedule = "always"'),
             "inner": ("airlock", "lab", 'interlock = "a1"')}
    found = problems(tmp_path, doors, {"pi-1": ["outer", "inner"]})
    assert found == ["doors.outer.mode: a door of interlock 'a1' cannot be unlocked on schedule "
                     "(set mode = \"normal\", or take the door out of the interlock)"]


def test_an_interlock_name_must_be_an_identifier(tmp_path: Path) -> None:
    doors = {"outer": ("outside", "airlock", 'interlock = "a 1"'), "inner": ("airlock", "lab", 'interlock = "a1"')}
    found = problems(tmp_path, doors, {"pi-1": ["outer", "inner"]})
    assert any(f.startswith("doors.outer.interlock: 'a 1' is not a valid identifier") for f in found)


# ------------------------------------------------------------ emergency release


def test_the_emergency_input_releases_the_whole_airlock_over_lockdown_and_lock_and_gives_it_back(
        airlock: Airlock) -> None:
    airlock.badge("outer", "alice")  # an unlock in force: the interlock would hold the inner door shut
    airlock.fire.release()
    airlock.settle()
    assert (airlock.relay("outer"), airlock.relay("inner"), airlock.relay("side"), airlock.relay("gate")) == \
        (True, True, False, False), \
        "both airlock doors held unlocked at once; the side door is not set emergency_release"
    assert sorted(e.door for e in airlock.of("emergency_release")) == ["inner", "outer"]
    airlock.after(600)
    assert airlock.relay("outer") and airlock.relay("inner"), "held for as long as the input says"
    assert airlock.badge("inner", "bob").reason == "granted_offline", "no interlock_busy during a release"

    assert airlock.command("lockdown", scope="site", active=True) == ("ok", None)
    assert airlock.relay("outer") and airlock.relay("inner"), "life safety first: a lockdown does not relock"
    assert airlock.command("lock", door="inner") == ("failed", "emergency_release")
    assert airlock.command("lock", door="outer", until=iso_ms(airlock.clock.wall() + 3600)) == ("ok", None)
    assert airlock.relay("outer"), "a lock override waits for the emergency to end"

    airlock.fire.clear()
    airlock.settle()
    assert airlock.relay("outer") is False, "back to normal: the lockdown and the lock override hold it"
    assert airlock.relay("inner") is True, "bob's grant there still runs its unlock time"
    airlock.after(5)
    assert airlock.relay("inner") is False
    assert sorted(e.door for e in airlock.of("emergency_ended")) == ["inner", "outer"]
    assert airlock.badge("outer", "alice").reason == "lockdown", "the lockdown is still in force"


def test_an_emergency_input_open_at_boot_releases_at_once(device_file: Path, airlocks: list[Airlock],
                                                         signing_key: Ed25519PrivateKey) -> None:
    """A cut wire to the fire panel reads as a release (fail safe for people), from the first moment."""
    a = Airlock(device_file, FakeClock(), signing_key, fire_at_boot=True)
    airlocks.append(a)
    assert wait_until(lambda: a.relay("outer") and a.relay("inner"), 5)
    assert len(a.of("emergency_release")) == 2


def test_a_fire_alarm_before_the_first_policy_releases_the_doors_once_their_settings_arrive(
        device_file: Path, airlocks: list[Airlock], signing_key: Ed25519PrivateKey) -> None:
    """A Pi without a site file knows which doors the fire panel releases only from the signed policy: released
    (and reported) as soon as it arrives, each door once."""
    a = Airlock(device_file, FakeClock(), signing_key, fire_at_boot=True, site_file=False, policy=False)
    airlocks.append(a)
    assert a.relay("outer") is False and not a.of("emergency_release"), "nothing says which doors yet"
    a.send_policy()
    a.after(1)  # the loop's next turn applies the door modes with the policy's settings
    assert a.relay("outer") is True and a.relay("inner") is True and a.relay("side") is False
    assert sorted(e.door for e in a.of("emergency_release")) == ["inner", "outer"]
    a.after(60)
    assert len(a.of("emergency_release")) == 2, "reported once, not at every turn"
    a.fire.clear()
    a.settle()
    assert sorted(e.door for e in a.of("emergency_ended")) == ["inner", "outer"]
    assert a.relay("outer") is False and a.relay("inner") is False


def test_a_config_with_doors_of_one_interlock_disagreeing_on_emergency_release_is_refused(tmp_path: Path) -> None:
    doors = {"outer": ("outside", "airlock", 'interlock = "a1"\nemergency_release = true'),
             "inner": ("airlock", "lab", 'interlock = "a1"')}
    found = problems(tmp_path, doors, {"pi-1": ["outer", "inner"]})
    assert len(found) == 1 and found[0].startswith(
        "doors.outer.emergency_release: the doors of interlock 'a1' disagree on emergency_release")


def test_the_emergency_input_claims_its_gpio(tmp_path: Path) -> None:
    d = write_site(tmp_path, {"outer": ("outside", "airlock", "")}, {"pi-1": ["outer"]})
    dev = d / "devices" / "pi-1.toml"
    dev.write_text(dev.read_text() + "\n[emergency]\npin = 2\n")  # pin 2 is the outer door's lock
    with pytest.raises(ConfigErrors) as caught:
        load_site_dir(d, people=False)
    assert [(e.key, e.problem) for e in caught.value.errors] == [("emergency.pin", "GPIO2 is already used by doors.outer.lock")]


# ------------------------------------------------------------------ turnstiles


def where(a: Airlock, person: str) -> str | None:
    seen = a.agent.local_state.presence.get(person)
    return seen.area if seen is not None else None


def test_a_turnstile_grant_moves_the_person_on_the_passage_not_on_the_grant(airlock: Airlock) -> None:
    granted = airlock.badge("gate", "alice")
    assert granted.reason == "granted_offline" and airlock.relay("gate") is True
    assert where(airlock, "alice") is None, "granted but not through yet: nobody moved"
    airlock.doors["gate"].pass_through()
    airlock.settle()
    assert airlock.relay("gate") is False, "the arms lock behind her at once"
    passage = airlock.of("passage", "gate")
    assert len(passage) == 1 and passage[0].detail == {"grant": granted.id}
    assert where(airlock, "alice") == "outside"


def test_an_unused_turnstile_grant_is_cancelled_and_moves_nobody(airlock: Airlock) -> None:
    granted = airlock.badge("gate", "bob")
    airlock.after(5)
    assert airlock.relay("gate") is False
    unused = airlock.of("grant_unused", "gate")
    assert len(unused) == 1 and unused[0].detail == {"grant": granted.id}
    assert where(airlock, "bob") is None
    assert not airlock.agent._turnstile_grants, "nothing is kept for a grant that ended"


def test_a_second_passage_on_one_grant_is_tailgate_and_one_without_any_is_forced(airlock: Airlock) -> None:
    granted = airlock.badge("gate", "alice")
    airlock.doors["gate"].pass_through()
    airlock.doors["gate"].pass_through()  # someone close behind her
    airlock.settle()
    tailgate = airlock.of("tailgate", "gate")
    assert len(tailgate) == 1 and tailgate[0].detail == {"grant": granted.id}
    airlock.after(10)
    airlock.doors["gate"].pass_through()  # jumped, much later
    airlock.settle()
    assert len(airlock.of("forced_passage", "gate")) == 1
    assert airlock.relay("gate") is False
    assert not airlock.of("forced_open", "gate"), "a turnstile has no door leaf to force"


def test_the_turnstile_exit_button_is_one_free_passage(airlock: Airlock) -> None:
    airlock.doors["gate"].press_rex()
    airlock.settle()
    assert airlock.relay("gate") is True
    airlock.doors["gate"].pass_through()
    airlock.settle()
    assert airlock.relay("gate") is False
    assert [e.detail for e in airlock.of("passage", "gate")] == [{}]
    assert not airlock.of("forced_passage") and not airlock.of("tailgate")


# ------------------------------------------------------------------ shutdown


def test_an_alarm_due_just_before_a_shutdown_is_still_published(airlock: Airlock) -> None:
    """safe() returns the deadlines that fell due before it; the agent's stop publishes them (it used to drop
    them), and a turnstile grant cancelled by the stop is reported unused."""
    airlock.badge("outer", "alice")
    airlock.doors["outer"].open()
    airlock.settle()
    waiting = airlock.badge("gate", "bob")
    airlock.clock.advance(31)  # past held_open_s (30): due, but nothing has looked at the clock yet
    state_dir = airlock.agent.device.state_dir
    assert state_dir is not None
    airlock.agent.stop()
    assert airlock.relay("outer") is False and airlock.relay("gate") is False
    outbox = Outbox(state_dir / "outbox.db")  # what the next start sends: the events written at the stop
    try:
        stored = [EventMsg.decode(r.payload) for r in outbox.peek(limit=1000) if r.kind == "event"]
    finally:
        outbox.close()
    assert [(e.door, e.type) for e in stored if e.type in ("held_open_warning", "held_open")] == \
        [("outer", "held_open_warning"), ("outer", "held_open")]
    unused = [e for e in stored if e.type == "grant_unused"]
    assert len(unused) == 1 and unused[0].detail == {"grant": waiting.id}
