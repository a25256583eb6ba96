"""Home Assistant MQTT discovery (server/home_assistant.py): the [home_assistant] table, the discovery configs,
the alarm summary, the broker ACL, and the service's publishing and command path with recording fakes.

Templates are rendered with Jinja's immutable sandbox, the environment Home Assistant renders them in, against
state payloads made by the edge's own ``state_payload``: a template that reads the wrong key or breaks on a
door id with a hyphen fails here, not in somebody's Home Assistant.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from doorkeep.config import HomeAssistantSettings, SiteBundle, load_site_dir
from doorkeep.contract import state_payload
from doorkeep.errors import ConfigErrors
from doorkeep.model import Site
from doorkeep.pki import Integration, PkiError, broker_acl
from doorkeep.sites import DEMO_SITE
from server.home_assistant import (
    ACTOR,
    DOOR_COMMANDS_PER_MINUTE,
    SITE_COMMANDS_PER_MINUTE,
    HomeAssistant,
    alarm_summary,
    discovery_configs,
)

JINJA = ImmutableSandboxedEnvironment()
DOORS = ("lobby_in", "lobby_out", "gate_in", "gate_out", "lab", "lift")


def render(template: str, payload: bytes) -> str:
    """What Home Assistant makes of ``payload`` with ``template`` (``value`` the text, ``value_json`` the JSON)."""
    text = payload.decode()
    try:
        value_json: Any = json.loads(text)
    except ValueError:
        value_json = None
    return JINJA.from_string(template).render(value=text, value_json=value_json).strip()


def site_with(tmp_path: Path, table: str) -> Path:
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site)
    with (site / "site.toml").open("a") as f:
        f.write("\n[home_assistant]\n" + table + "\n")
    return site


def load(tmp_path: Path, table: str) -> SiteBundle:
    return load_site_dir(site_with(tmp_path, table))


def errors_of(tmp_path: Path, table: str) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load(tmp_path, table)
    return [f"{e.key}: {e.problem}" for e in exc.value.errors]


def edge_state(device: str, doors: dict[str, dict[str, Any]]) -> bytes:
    full = {d: {"state": "locked", "relay": False, "open": False, "sounder": False, "tamper": False,
                "override": None, **v} for d, v in doors.items()}
    return state_payload(device, "0.1.0", full, {}, {}, "2026-12-07T08:55:00.000Z")


# ------------------------------------------------------------------ config


def test_without_the_table_nothing_is_configured() -> None:
    ha = load_site_dir(DEMO_SITE).home_assistant
    assert not ha.configured and not ha.enabled and not ha.may_unlock("lobby_in")


def test_the_table_alone_turns_discovery_on_read_only_with_the_defaults(tmp_path: Path) -> None:
    ha = load(tmp_path, "").home_assistant
    assert (ha.configured, ha.enabled, ha.discovery_prefix, ha.node_id, ha.integration, ha.unlock) == \
        (True, True, "homeassistant", "demo", "home-assistant", False)
    assert not any(ha.may_unlock(d) for d in DOORS)
    assert ha.config_topic("lock", "door_lab_lock") == "homeassistant/lock/demo/door_lab_lock/config"
    assert ha.command_topic("lab") == "homeassistant/lock/demo/lab/set"


def test_unlock_is_limited_to_the_listed_doors_or_all(tmp_path: Path) -> None:
    listed = load(tmp_path / "a", 'unlock = true\nunlock_doors = ["lobby_in"]').home_assistant
    assert listed.may_unlock("lobby_in") and not listed.may_unlock("lab")
    every = load(tmp_path / "b", 'unlock = true\nunlock_doors = "all"\nnode_id = "hq-1"\n'
                 'discovery_prefix = "ha/discovery"').home_assistant
    assert all(every.may_unlock(d) for d in DOORS)
    assert every.command_filter() == "ha/discovery/lock/hq-1/+/set"
    withdrawn = load(tmp_path / "c", 'enabled = false\nunlock = true\nunlock_doors = "all"').home_assistant
    assert withdrawn.configured and not withdrawn.may_unlock("lobby_in")


@pytest.mark.parametrize("table, expected", [
    ("unlock = true", "home_assistant.unlock_doors: is required with unlock = true"),
    ("unlock = true\nunlock_doors = []", "home_assistant.unlock_doors: is required with unlock = true"),
    ('unlock_doors = ["lab"]', "home_assistant.unlock_doors: is set but unlock is not true"),
    ('unlock = true\nunlock_doors = ["lab", "vault"]', "home_assistant.unlock_doors: 'vault' is not a door"),
    ('unlock = true\nunlock_doors = "some"', "home_assistant.unlock_doors: unknown value 'some'"),
    ('discovery_prefix = "doorkeep/v1/demo"', "home_assistant.discovery_prefix: 'doorkeep/v1/demo' is inside"),
    ('discovery_prefix = "homeassistant/#"', "home_assistant.discovery_prefix: 'homeassistant/#' is not a topic"),
    ('discovery_prefix = "/homeassistant"', "home_assistant.discovery_prefix: '/homeassistant' is not a topic"),
    ('node_id = "a/b"', "home_assistant.node_id: 'a/b' is not a valid identifier"),
    ('integration = "server"', "home_assistant.integration: 'server' cannot be an integration"),
    ('enabled = "yes"', "home_assistant.enabled: must be bool"),
    ("unlok = true", "home_assistant.unlok: unknown key"),
], ids=["unlock-no-doors", "unlock-empty", "doors-no-unlock", "unknown-door", "bad-doors", "inside-doorkeep",
        "wildcard", "leading-slash", "bad-node", "reserved", "not-bool", "typo"])
def test_a_bad_table_names_the_key_and_why(tmp_path: Path, table: str, expected: str) -> None:
    assert any(e.startswith(expected) for e in errors_of(tmp_path, table)), errors_of(tmp_path, table)


# ------------------------------------------------------------------ discovery configs


def configs(tmp_path: Path, table: str = "") -> tuple[SiteBundle, dict[str, dict[str, Any]]]:
    bundle = load(tmp_path, table)
    return bundle, discovery_configs(bundle.home_assistant, bundle.site, bundle.devices)


def test_topics_follow_the_discovery_convention_and_unique_ids_are_stable_and_distinct(tmp_path: Path) -> None:
    bundle, out = configs(tmp_path)
    assert out and all(re.fullmatch(r"homeassistant/(lock|binary_sensor|sensor)/demo/[A-Za-z0-9_-]+/config", t)
                       for t in out), sorted(out)
    ids = [c["unique_id"] for c in out.values()]
    assert len(ids) == len(set(ids)), "two entities share a unique_id"
    assert all(i.startswith("doorkeep_demo_") for i in ids)
    # Stable: the same site gives the same configs, byte for byte (a restart changes no entity).
    again = discovery_configs(bundle.home_assistant, load_site_dir(bundle.dir).site, bundle.devices)
    assert json.dumps(again, sort_keys=True) == json.dumps(out, sort_keys=True)
    for config in out.values():
        dev = config["device"]
        assert dev["identifiers"] and dev["manufacturer"] == "doorkeep" and config["origin"]["name"] == "doorkeep"


def test_one_device_per_door_via_its_edge_via_the_site(tmp_path: Path) -> None:
    _, out = configs(tmp_path)
    doors = {c["device"]["identifiers"][0]: c["device"] for c in out.values()
             if c["device"]["identifiers"][0].startswith("doorkeep_demo_door_")}
    assert sorted(doors) == sorted(f"doorkeep_demo_door_{d}" for d in DOORS)
    assert doors["doorkeep_demo_door_lobby_in"]["name"] == "Lobby entrance"
    assert doors["doorkeep_demo_door_lobby_in"]["via_device"] == "doorkeep_demo_edge_pi-lobby"
    assert doors["doorkeep_demo_door_lab"]["via_device"] == "doorkeep_demo_edge_pi-floor7"
    assert doors["doorkeep_demo_door_lift"]["model"] == "Lift"
    edge = out["homeassistant/binary_sensor/demo/edge_pi-lobby_connection/config"]
    assert edge["device"]["via_device"] == "doorkeep_demo" and edge["device_class"] == "connectivity"


def test_read_only_publishes_no_command_topic_and_shows_the_lock_as_a_binary_sensor(tmp_path: Path) -> None:
    _, out = configs(tmp_path)
    assert not any("command_topic" in c for c in out.values())
    assert not any("/lock/" in t for t in out)
    lock = out["homeassistant/binary_sensor/demo/door_lobby_in_lock/config"]
    assert lock["device_class"] == "lock" and lock["state_topic"] == "doorkeep/v1/demo/pi-lobby/state"
    locked = edge_state("pi-lobby", {"lobby_in": {}})
    released = edge_state("pi-lobby", {"lobby_in": {"state": "unlocked", "relay": True}})
    assert (render(lock["value_template"], locked), render(lock["value_template"], released)) == ("OFF", "ON")


def test_an_unlockable_door_is_a_lock_with_its_command_topic_the_others_stay_read_only(tmp_path: Path) -> None:
    bundle, out = configs(tmp_path, 'unlock = true\nunlock_doors = ["lobby_in"]')
    lock = out["homeassistant/lock/demo/door_lobby_in_lock/config"]
    assert lock["command_topic"] == bundle.home_assistant.command_topic("lobby_in") == \
        "homeassistant/lock/demo/lobby_in/set"
    assert (lock["payload_unlock"], lock["payload_lock"], lock["retain"]) == ("UNLOCK", "LOCK", False)
    assert "homeassistant/binary_sensor/demo/door_lobby_in_lock/config" not in out
    assert "homeassistant/binary_sensor/demo/door_lab_lock/config" in out
    assert [c["command_topic"] for c in out.values() if "command_topic" in c] == [lock["command_topic"]]
    tpl = lock["value_template"]
    cases = {"LOCKED": {}, "UNLOCKED": {"state": "unlocked", "relay": True},
             "JAMMED": {"state": "alarm", "open": True}}
    for expected, door in cases.items():
        assert render(tpl, edge_state("pi-lobby", {"lobby_in": door})) == expected
    assert {lock["state_locked"], lock["state_unlocked"], lock["state_jammed"]} == set(cases)
    # A state that does not carry the door (an edge of another version): unknown, never a guess.
    assert render(tpl, edge_state("pi-lobby", {"lobby_out": {}})) == "None"


def test_contact_and_tamper_exist_only_where_the_door_has_those_inputs(tmp_path: Path) -> None:
    bundle, out = configs(tmp_path)
    for door in DOORS:
        dev = next(d for d in bundle.devices.values() if door in d.doors)
        hw = dev.doors[door]
        assert (f"homeassistant/binary_sensor/demo/door_{door}_contact/config" in out) == (hw.contact is not None)
        assert (f"homeassistant/binary_sensor/demo/door_{door}_tamper/config" in out) == (hw.tamper is not None)
    contact = out["homeassistant/binary_sensor/demo/door_lab_contact/config"]
    assert contact["device_class"] == "door"
    assert render(contact["value_template"], edge_state("pi-floor7", {"lab": {"open": True, "state": "open"}})) == "ON"
    assert render(contact["value_template"], edge_state("pi-floor7", {"lab": {}})) == "OFF"
    tamper = out["homeassistant/binary_sensor/demo/door_lab_tamper/config"]
    assert render(tamper["value_template"], edge_state("pi-floor7", {"lab": {"tamper": True}})) == "ON"


def test_availability_follows_the_edges_last_will_and_a_clean_stop(tmp_path: Path) -> None:
    _, out = configs(tmp_path)
    contact = out["homeassistant/binary_sensor/demo/door_lobby_in_contact/config"]
    [entry] = contact["availability"]
    assert entry["topic"] == "doorkeep/v1/demo/pi-lobby/availability"
    seen = {p: render(entry["value_template"], p.encode()) for p in ("online", "offline", "stopped")}
    assert seen == {"online": entry["payload_available"], "offline": entry["payload_not_available"],
                    "stopped": entry["payload_not_available"]}
    edge = out["homeassistant/binary_sensor/demo/edge_pi-lobby_connection/config"]
    assert "availability" not in edge, "the connection sensor must show OFF, not vanish, when the edge is gone"
    assert [render(edge["value_template"], p) for p in (b"online", b"offline", b"stopped")] == ["ON", "OFF", "OFF"]
    alarms = out["homeassistant/sensor/demo/site_alarms/config"]
    assert alarms["availability"][0]["topic"] == "doorkeep/v1/demo/server/availability"


def test_no_person_card_or_personal_name_in_any_config(tmp_path: Path) -> None:
    bundle, out = configs(tmp_path, 'unlock = true\nunlock_doors = "all"')
    text = json.dumps(out).lower()
    secrets = [*(p.id for p in bundle.people.values()), *(p.name for p in bundle.people.values()),
               *(c.number for c in [*bundle.cards, *bundle.visitor_pool] if c.number)]
    assert len(secrets) > 10
    # As whole words: a person id "eli" is no hit in a template's "elif".
    found = [s for s in secrets if re.search(rf"(?<![a-z0-9]){re.escape(s.lower())}(?![a-z0-9])", text)]
    assert not found, found


def test_disabled_wants_nothing(tmp_path: Path) -> None:
    _, out = configs(tmp_path, "enabled = false")
    assert out == {}


# ------------------------------------------------------------------ alarm summary


def test_alarm_summary_counts_by_door_type_and_priority_and_names_nobody() -> None:
    site = load_site_dir(DEMO_SITE).site
    counts = [("lobby_out", "forced_open", True, False, 2), ("lobby_out", "held_open", False, True, 1),
              (None, "device_offline", True, False, 1), ("vault", "forced_open", True, False, 1),
              ("lab", "something_new", True, True, 1)]
    s = alarm_summary(site, counts, 1_796_029_200.0)
    assert (s["open"], s["active"], s["unacknowledged"], s["highest"]) == (6, 5, 4, "high")
    assert s["by_priority"] == {"high": 3, "medium": 2, "low": 1}
    assert s["by_type"] == {"device_offline": 1, "forced_open": 3, "held_open": 1, "other": 1}
    assert sorted(s["doors"]) == ["lab", "lobby_out"], "a door the site does not have is no key"
    assert s["doors"]["lobby_out"] == {"open": 3, "active": 2, "unacknowledged": 2, "highest": "high",
                                       "types": ["forced_open", "held_open"]}
    assert s["doors"]["lab"]["types"] == ["other"] and s["doors"]["lab"]["highest"] == "low"
    empty = alarm_summary(site, [], 0.0)
    assert (empty["open"], empty["highest"], empty["doors"]) == (0, None, {})


def test_alarm_sensor_templates_read_the_summary(tmp_path: Path) -> None:
    bundle, out = configs(tmp_path)
    summary = json.dumps(alarm_summary(bundle.site, [("lobby_out", "forced_open", True, False, 2)], 0.0)).encode()
    door = out["homeassistant/sensor/demo/door_lobby_out_alarms/config"]
    quiet = out["homeassistant/sensor/demo/door_lab_alarms/config"]
    site = out["homeassistant/sensor/demo/site_alarms/config"]
    assert (render(door["value_template"], summary), render(quiet["value_template"], summary)) == ("2", "0")
    assert json.loads(render(door["json_attributes_template"], summary))["highest"] == "high"
    assert json.loads(render(quiet["json_attributes_template"], summary)) == {}
    assert render(site["value_template"], summary) == "2"
    assert json.loads(render(site["json_attributes_template"], summary))["highest_priority"] == "high"


# ------------------------------------------------------------------ broker ACL


def ha(**kw: Any) -> HomeAssistantSettings:
    return HomeAssistantSettings(**{"configured": True, "enabled": True, "node_id": "demo", **kw})


def block(acl: str, user: str) -> list[str]:
    lines = acl.splitlines()
    start = lines.index(f"user {user}") + 1
    out = []
    for line in lines[start:]:
        if not line or line.startswith("user "):
            break
        if not line.startswith("#"):
            out.append(line)
    return out


def test_acl_lets_the_server_write_its_node_and_home_assistant_read_the_prefix_and_write_only_its_status() -> None:
    acl = broker_acl("demo", integrations=[Integration("home-assistant", False), Integration("soc", True)],
                     home_assistant=ha())
    assert block(acl, "server")[1:] == ["topic readwrite homeassistant/+/demo/#", "topic read homeassistant/status"]
    ha_lines = block(acl, "home-assistant")
    assert "topic read homeassistant/#" in ha_lines and "topic write homeassistant/status" in ha_lines
    assert not any("/set" in line for line in ha_lines), "read-only: no lock command topic"
    assert not any("homeassistant" in line for line in block(acl, "soc")), "only the integration HA uses"


def test_acl_gives_the_lock_command_topics_only_with_unlock() -> None:
    apps = [Integration("home-assistant", False)]
    acl = broker_acl("demo", integrations=apps, home_assistant=ha(unlock=True, unlock_doors=None))
    assert "topic write homeassistant/lock/demo/+/set" in block(acl, "home-assistant")
    withdrawn = broker_acl("demo", integrations=apps, home_assistant=ha(enabled=False))
    assert "topic readwrite homeassistant/+/demo/#" in block(withdrawn, "server"), "the server deletes its configs"
    assert not any("homeassistant" in line for line in block(withdrawn, "home-assistant"))
    assert broker_acl("demo", integrations=apps) == broker_acl("demo", integrations=apps,
                                                                home_assistant=HomeAssistantSettings())
    with pytest.raises(PkiError, match="read-only"):
        broker_acl("demo", integrations=[Integration("home-assistant", True)],
                   home_assistant=ha(unlock=True, unlock_doors=None))


def test_broker_config_writes_the_home_assistant_lines_from_site_toml(tmp_path: Path) -> None:
    from doorkeep.cli import main

    site = site_with(tmp_path, 'unlock = true\nunlock_doors = ["lobby_in"]')
    for args in (["pki", "init"], ["pki", "issue", "broker"], ["pki", "issue", "home-assistant", "--role", "integration"]):
        assert main([*args, "--site", str(site)]) == 0
    assert main(["broker", "config", "--site", str(site), "--out", str(tmp_path / "b")]) == 0
    acl = (tmp_path / "b" / "acl").read_text()
    assert "topic write homeassistant/lock/demo/+/set" in block(acl, "home-assistant")
    assert "topic readwrite homeassistant/+/demo/#" in block(acl, "server")


# ------------------------------------------------------------------ the service, with recording fakes


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def wall(self) -> float:
        return 1_796_029_200.0 + self.t

    def monotonic(self) -> float:
        return self.t


class FakeBus:
    def __init__(self) -> None:
        self.connect_listeners: list[Callable[[], None]] = []
        self.routes: dict[str, tuple[Callable[[Any], None], bool]] = {}
        self.published: list[tuple[str, bytes]] = []

    def route(self, topic_filter: str, handler: Callable[[Any], None], *, qos: int = 0, subscribe: bool = True) -> None:
        self.routes[topic_filter] = (handler, subscribe)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))

    def deliver(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        for f, (handler, _) in self.routes.items():
            pattern = "^" + re.escape(f).replace(r"\+", "[^/]+") + "$"
            if re.match(pattern, topic):
                handler(SimpleNamespace(topic=topic, payload=payload, retain=retain))
                return
        raise AssertionError(f"no route for {topic}")


class FakeStore:
    def __init__(self) -> None:
        self.counts: list[tuple[str | None, str, bool, bool, int]] = []
        self.listeners: list[Callable[[], None]] = []

    def open_alarm_counts_by_door(self) -> list[tuple[str | None, str, bool, bool, int]]:
        return list(self.counts)

    def on_alarm_write(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)


class FakeCommands:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def unlock(self, door: str, *, actor: str = "system") -> dict[str, Any]:
        self.sent.append(("unlock", door, actor))
        return {"status": "ok"}

    def lock(self, door: str, *, actor: str = "system") -> dict[str, Any]:
        self.sent.append(("lock", door, actor))
        return {"status": "ok"}


class FakeAudit:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str | None, dict[str, Any] | None]] = []

    def record(self, actor: str, action: str, target: str | None = None, details: dict[str, Any] | None = None) -> int:
        self.records.append((actor, action, target, details))
        return len(self.records)


class FakeDirectory:
    def __init__(self, bundle: SiteBundle) -> None:
        self.bundle = bundle
        self.site: Site = bundle.site
        self.listeners: list[Callable[[Site], None]] = []

    def replace(self, bundle: SiteBundle) -> None:
        self.bundle, self.site = bundle, bundle.site
        for listener in self.listeners:
            listener(self.site)


def service(tmp_path: Path, table: str = "") -> tuple[HomeAssistant, FakeBus, FakeStore, FakeCommands, FakeAudit,
                                                      FakeDirectory, FakeClock]:
    bundle = load(tmp_path, table)
    bus, store, commands, audit, directory, clock = (FakeBus(), FakeStore(), FakeCommands(), FakeAudit(),
                                                     FakeDirectory(bundle), FakeClock())
    svc = HomeAssistant(bundle.home_assistant, directory, bus, store, commands, clock, audit=audit)  # type: ignore[arg-type]
    return svc, bus, store, commands, audit, directory, clock


def test_a_connect_publishes_every_config_retained_and_the_alarm_summary(tmp_path: Path) -> None:
    svc, bus, store, _, _, _, clock = service(tmp_path)
    for listener in bus.connect_listeners:
        listener()
    svc.publish_once()
    topics = dict(bus.published)
    assert set(svc.wanted()) <= set(topics)
    summary = json.loads(topics["homeassistant/sensor/demo/alarms/state"])
    assert summary["open"] == 0 and summary["schema"] == "doorkeep.ha_alarms/1"
    bus.published.clear()
    svc.publish_once()
    assert bus.published == [], "nothing changed: nothing sent again"
    store.counts = [("lab", "forced_open", True, False, 1)]
    for listener in store.listeners:
        listener()
    svc.publish_once()
    assert bus.published == [], "a burst of alarm writes is summarised at most every half second"
    clock.t += 0.5
    svc.publish_once()
    [(topic, payload)] = bus.published
    assert topic == "homeassistant/sensor/demo/alarms/state" and json.loads(payload)["doors"]["lab"]["open"] == 1


def test_a_door_removed_from_the_site_deletes_its_entities_with_empty_retained_configs(tmp_path: Path) -> None:
    svc, bus, _, _, _, directory, _ = service(tmp_path)
    svc.publish_once()
    before = set(svc.wanted())
    # The lab leaves the site (and pi-floor7's file): a site revision as server/siteadmin.py applies it.
    site = directory.bundle.dir
    text = (site / "site.toml").read_text()
    start = text.index("[doors.lab]")
    (site / "site.toml").write_text(text[:start] + text[text.index("# The lift", start):])
    dev = (site / "devices" / "pi-floor7.toml").read_text()
    start = dev.index("[doors.lab]")
    (site / "devices" / "pi-floor7.toml").write_text(dev[:start] + dev[dev.index("[doors.lift]", start):])
    bus.published.clear()
    directory.replace(load_site_dir(site))
    svc.publish_once()
    gone = sorted(t for t in before if "_lab_" in t)
    assert len(gone) == 4  # lock, contact, tamper, alarms
    assert sorted(t for t, p in bus.published if p == b"") == gone
    assert not any("_lab_" in t for t in svc.wanted())


def test_a_retained_config_the_server_no_longer_wants_is_deleted_when_the_broker_hands_it_over(tmp_path: Path) -> None:
    svc, bus, *_ = service(tmp_path)
    svc.publish_once()
    bus.published.clear()
    old = "homeassistant/binary_sensor/demo/door_vault_contact/config"  # a door removed while the server was down
    bus.deliver(old, b'{"name": "Door"}', retain=True)
    bus.deliver("homeassistant/sensor/demo/site_alarms/config", b"{}", retain=True)  # wanted: left alone
    bus.deliver(old, b"", retain=True)  # a deletion passing by
    svc.publish_once()
    assert bus.published == [(old, b"")]


def test_disabled_withdraws_every_entity_and_the_summary(tmp_path: Path) -> None:
    svc, bus, *_ = service(tmp_path, "enabled = false")
    assert bus.routes["homeassistant/lock/demo/+/set"][1] is False, "no command subscription"
    bus.deliver("homeassistant/lock/demo/door_lab_lock/config", b"{}", retain=True)
    for listener in bus.connect_listeners:
        listener()
    svc.publish_once()
    assert sorted(bus.published) == [("homeassistant/lock/demo/door_lab_lock/config", b""),
                                     ("homeassistant/sensor/demo/alarms/state", b"")]


def test_home_assistants_birth_republishes_at_most_every_ten_seconds(tmp_path: Path) -> None:
    svc, bus, _, _, _, _, clock = service(tmp_path)
    svc.publish_once()
    bus.published.clear()
    bus.deliver("homeassistant/status", b"online")
    svc.publish_once()
    n = len(bus.published)
    assert n >= len(svc.wanted())
    bus.deliver("homeassistant/status", b"online")
    svc.publish_once()
    assert len(bus.published) == n
    clock.t += 11
    bus.deliver("homeassistant/status", b"offline")
    bus.deliver("homeassistant/status", b"online")
    svc.publish_once()
    assert len(bus.published) >= 2 * n - 1


def test_an_unlock_from_home_assistant_is_checked_audited_and_sent_as_the_integration(tmp_path: Path) -> None:
    svc, _, _, commands, audit, _, clock = service(tmp_path, 'unlock = true\nunlock_doors = ["lobby_in"]')
    assert svc.carry_out("lobby_in", b"UNLOCK", received=clock.t) == {"status": "ok"}
    assert svc.carry_out("lobby_in", b"LOCK", received=clock.t) == {"status": "ok"}
    assert commands.sent == [("unlock", "lobby_in", ACTOR), ("lock", "lobby_in", ACTOR)]
    assert ACTOR == "integration:home_assistant"
    refused = {"lab": b"UNLOCK", "vault": b"UNLOCK", "lobby-in/../x": b"UNLOCK"}
    for door, payload in refused.items():
        assert svc.carry_out(door, payload, received=clock.t) is None
    assert svc.carry_out("lobby_in", b"OPEN", received=clock.t) is None
    assert svc.carry_out("lobby_in", b"UNLOCK", received=clock.t - 11) is None  # waited too long
    assert len(commands.sent) == 2, "no refused command reaches an edge"
    reasons = [(r[1], r[2], r[3]["reason"]) for r in audit.records]  # type: ignore[index]
    assert reasons == [("home_assistant.command_refused", "door:lab", "door_not_allowed"),
                       ("home_assistant.command_refused", "door:vault", "unknown_door"),
                       ("home_assistant.command_refused", None, "not a door id"),
                       ("home_assistant.command_refused", "door:lobby_in", "unknown_payload"),
                       ("home_assistant.command_refused", "door:lobby_in", "stale")]
    assert all(r[0] == ACTOR for r in audit.records)


def test_commands_for_one_door_are_rate_limited(tmp_path: Path) -> None:
    svc, _, _, commands, audit, _, clock = service(tmp_path, 'unlock = true\nunlock_doors = "all"')
    for _ in range(DOOR_COMMANDS_PER_MINUTE + 2):
        svc.carry_out("lab", b"UNLOCK", received=clock.t)
    assert len(commands.sent) == DOOR_COMMANDS_PER_MINUTE
    assert [r[3]["reason"] for r in audit.records] == ["rate_limited"] * 2  # type: ignore[index]
    assert svc.carry_out("lobby_in", b"UNLOCK", received=clock.t) == {"status": "ok"}, "another door is not held up"
    clock.t += 60
    assert svc.carry_out("lab", b"UNLOCK", received=clock.t) == {"status": "ok"}


def test_the_network_thread_queues_commands_and_drops_retained_floods_and_disabled_ones(tmp_path: Path) -> None:
    svc, bus, _, commands, audit, _, _ = service(tmp_path, 'unlock = true\nunlock_doors = "all"')
    assert bus.routes["homeassistant/lock/demo/+/set"][1] is True
    bus.deliver("homeassistant/lock/demo/lab/set", b"UNLOCK", retain=True)
    assert svc.counters["commands_refused_retained"] == 1 and svc._queue.qsize() == 0
    for _ in range(SITE_COMMANDS_PER_MINUTE + 5):
        bus.deliver("homeassistant/lock/demo/lab/set", b"UNLOCK")
    assert svc.counters["commands_refused_rate_limited"] + svc.counters["commands_refused_queue_full"] == 5 + \
        max(0, SITE_COMMANDS_PER_MINUTE - 16)
    assert commands.sent == [] and audit.records == [], "the network thread never sends nor audits"
    svc.start()
    try:
        svc._queue.put(None)  # the command thread ends after what was queued before it
        svc._commander.join(10)
    finally:
        svc.stop()
    assert len(commands.sent) == DOOR_COMMANDS_PER_MINUTE, "the per-door limit applies to what was queued"
    read_only, bus2, _, commands2, *_ = service(tmp_path / "ro")
    bus2.deliver("homeassistant/lock/demo/lab/set", b"UNLOCK")  # an old subscription of a persistent session
    assert read_only.counters["commands_refused_disabled"] == 1 and commands2.sent == []
