"""Home Assistant MQTT discovery: the site's doors, edges and alarms as Home Assistant entities.

With ``[home_assistant]`` in site.toml (doorkeep/config.py ``HomeAssistantSettings``; docs/operations.md "Home
Assistant") the server publishes one retained discovery config per entity on Home Assistant's convention,
``<prefix>/<component>/<node_id>/<object_id>/config``, and Home Assistant builds its devices from them:

- one device per **door** (``via_device`` its edge): a ``lock`` entity when Home Assistant may unlock that door,
  else a ``binary_sensor`` of device class ``lock`` (HA's MQTT lock requires a ``command_topic``, so a read-only
  door gets no lock entity at all and nothing HA could press); a ``door`` contact and a ``tamper`` sensor where
  the door has those inputs; a sensor of the door's open alarms;
- one device per **edge** (``via_device`` the site): a ``connectivity`` sensor read from its availability;
- one device for the **site**: a sensor of the site's open alarms.

State is not copied: the door entities read the edges' own retained ``state`` (``doorkeep.state/1``) with
templates, and their availability is the edge's retained ``availability`` (its last will), mapped by a template
so that both ``offline`` and ``stopped`` make them unavailable. Only the alarms, which live in the server's
store, are published by the server: one retained summary (``<prefix>/sensor/<node_id>/alarms/state``) of
counts by door, type and priority, bounded by the open alarms and carrying no person, card or note.

Unique ids are made of the site id and the door or device id, so they survive restarts. The server subscribes
to its node's configs: a retained config it no longer wants (a door removed while it was down, a lock that
became read-only) is deleted with an empty retained message, as Home Assistant's convention asks.

An unlock from Home Assistant (only with ``unlock = true``, only for ``unlock_doors``) never reaches an edge as
is: the lock's command topic is one the server subscribes to (at QoS 0, so a command is never queued for a
server that is down and replayed later; a retained one is ignored). Each command is rate-limited, checked (the
door exists and Home Assistant may unlock it), audited as ``integration:home_assistant``, and sent as a
normal signed command through :class:`server.commands.CommandSender`, on a thread of its own so paho's network
thread never waits for an edge.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol

from doorkeep import __version__, vocabulary
from doorkeep.alarm_priority import PRIORITIES, priority_of
from doorkeep.clock import Clock, iso_ms
from doorkeep.config import SEGMENT, DeviceConfig, HomeAssistantSettings, SiteBundle
from doorkeep.contract import AVAILABILITY_ONLINE, Topics
from doorkeep.model import DoorKind, Site
from server.audit import Auditor, record_audit
from server.counters import LockedCounter
from server.errors import ServerError
from server.ratelimit import RateWindow

log = logging.getLogger("doorkeep.server.home_assistant")

#: Who Home Assistant's commands are recorded as in the audit log.
ACTOR = "integration:home_assistant"
MANUFACTURER = "doorkeep"
#: The payloads of the lock entity's command topic, and the commands they become.
ACTIONS = {"UNLOCK": "unlock", "LOCK": "lock"}
#: Commands taken from Home Assistant in any minute, site-wide (more are dropped, counted, logged once a minute).
SITE_COMMANDS_PER_MINUTE = 30
#: Commands carried out for one door in any minute (more are refused and audited).
DOOR_COMMANDS_PER_MINUTE = 6
#: Commands waiting for the command thread; more are dropped.
COMMAND_QUEUE = 16
#: A command that waited longer than this behind others is refused: the person who pressed has moved on.
COMMAND_MAX_AGE_S = 10.0
#: Home Assistant's ``online`` (its birth) republishes every config, at most this often.
STATUS_REPUBLISH_S = 10.0
#: The alarm summary is recomputed at most this often after alarm writes, and anyway this often.
ALARMS_MIN_INTERVAL_S = 0.5
ALARMS_REFRESH_S = 60.0
OTHER = "other"


class HomeAssistantError(ServerError, ValueError):
    """A command from Home Assistant that is refused (the message names why)."""


# ------------------------------------------------------------------ the discovery configs (pure)


def _uid(site: str, *parts: str) -> str:
    return "_".join(("doorkeep", site, *parts))


def _door_template(door: str, expr: str) -> str:
    """A template over the edge's state for one door: ``None`` (unknown to HA) while the state lacks the door."""
    return (f"{{% set d = value_json.doors.get({json.dumps(door)}) %}}"
            f"{{% if d is none %}}None{{% else %}}{expr}{{% endif %}}")


#: Both ``offline`` (the last will) and ``stopped`` (a clean stop) make an entity unavailable.
AVAILABILITY_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"


def _availability(topic: str) -> list[dict[str, str]]:
    return [{"topic": topic, "payload_available": AVAILABILITY_ONLINE, "payload_not_available": "offline",
             "value_template": AVAILABILITY_TEMPLATE}]


def discovery_configs(settings: HomeAssistantSettings, site: Site,
                      devices: Mapping[str, DeviceConfig]) -> dict[str, dict[str, Any]]:
    """Every discovery config the site wants, by config topic; empty when Home Assistant is disabled.

    Pure: from the site (doors, names, kinds) and the device files (which door is on which edge, which inputs
    it has). Names are the site's door names and device ids: never a person, a card or an area's occupants.
    """
    if not settings.enabled:
        return {}
    topics = Topics(site.id)
    origin = {"name": "doorkeep", "sw_version": __version__}
    site_dev = {"identifiers": [_uid(site.id)], "name": site.name, "manufacturer": MANUFACTURER,
                "model": "Access control site", "sw_version": __version__}
    server_availability = _availability(topics.server_availability())
    out: dict[str, dict[str, Any]] = {}

    def add(component: str, object_id: str, config: dict[str, Any]) -> None:
        out[settings.config_topic(component, object_id)] = {**config, "origin": origin}

    add("sensor", "site_alarms", {
        "name": "Open alarms", "unique_id": _uid(site.id, "alarms"), "device": site_dev,
        "state_topic": settings.alarms_topic(), "value_template": "{{ value_json.open }}",
        "json_attributes_topic": settings.alarms_topic(),
        "json_attributes_template": ("{{ {'active': value_json.active, 'unacknowledged': value_json.unacknowledged, "
                                     "'highest_priority': value_json.highest, 'by_priority': value_json.by_priority, "
                                     "'by_type': value_json.by_type} | tojson }}"),
        "state_class": "measurement", "icon": "mdi:alarm-light", "availability": server_availability})
    for dev_id in sorted(devices):
        device = devices[dev_id]
        edge = {"identifiers": [_uid(site.id, "edge", dev_id)], "name": dev_id, "manufacturer": MANUFACTURER,
                "model": "Edge agent", "via_device": _uid(site.id)}
        add("binary_sensor", f"edge_{dev_id}_connection", {
            "name": "Connection", "unique_id": _uid(site.id, "edge", dev_id, "connection"), "device": edge,
            "device_class": "connectivity", "entity_category": "diagnostic",
            "state_topic": topics.availability(dev_id),
            "value_template": "{{ 'ON' if value == 'online' else 'OFF' }}"})
        for door_id in sorted(device.doors):
            door = site.doors.get(door_id)
            if door is None:
                continue  # a device file ahead of the site: the site decides what exists
            hw = device.doors[door_id]
            state, availability = topics.state(dev_id), _availability(topics.availability(dev_id))
            dev = {"identifiers": [_uid(site.id, "door", door_id)], "name": door.name,
                   "manufacturer": MANUFACTURER, "model": {DoorKind.LIFT: "Lift", DoorKind.TURNSTILE: "Turnstile"}
                   .get(door.kind, "Door"), "via_device": _uid(site.id, "edge", dev_id)}
            common = {"device": dev, "state_topic": state, "availability": availability}
            attributes = {"json_attributes_topic": state,
                          "json_attributes_template": f"{{{{ value_json.doors.get({json.dumps(door_id)}, {{}}) | tojson }}}}"}
            if settings.may_unlock(door_id):
                add("lock", f"door_{door_id}_lock", {
                    "name": "Lock", "unique_id": _uid(site.id, "door", door_id, "lock"), **common, **attributes,
                    "value_template": _door_template(door_id, "{% if d.state == 'alarm' %}JAMMED{% elif d.relay %}"
                                                              "UNLOCKED{% else %}LOCKED{% endif %}"),
                    "state_locked": "LOCKED", "state_unlocked": "UNLOCKED", "state_jammed": "JAMMED",
                    "command_topic": settings.command_topic(door_id), "payload_lock": "LOCK",
                    "payload_unlock": "UNLOCK", "retain": False, "optimistic": False})
            else:
                add("binary_sensor", f"door_{door_id}_lock", {
                    "name": "Lock", "unique_id": _uid(site.id, "door", door_id, "lock_state"), **common,
                    **attributes, "device_class": "lock",  # on: unlocked
                    "value_template": _door_template(door_id, "{{ 'ON' if d.relay else 'OFF' }}")})
            if hw.contact is not None:
                add("binary_sensor", f"door_{door_id}_contact", {
                    "name": "Door", "unique_id": _uid(site.id, "door", door_id, "contact"), **common,
                    "device_class": "door", "value_template": _door_template(door_id, "{{ 'ON' if d.open else 'OFF' }}")})
            if hw.tamper is not None:
                add("binary_sensor", f"door_{door_id}_tamper", {
                    "name": "Tamper", "unique_id": _uid(site.id, "door", door_id, "tamper"), **common,
                    "device_class": "tamper", "entity_category": "diagnostic",
                    "value_template": _door_template(door_id, "{{ 'ON' if d.tamper else 'OFF' }}")})
            key = json.dumps(door_id)
            add("sensor", f"door_{door_id}_alarms", {
                "name": "Open alarms", "unique_id": _uid(site.id, "door", door_id, "alarms"), "device": dev,
                "state_topic": settings.alarms_topic(),
                "value_template": f"{{{{ value_json.doors.get({key}, {{}}).get('open', 0) }}}}",
                "json_attributes_topic": settings.alarms_topic(),
                "json_attributes_template": f"{{{{ value_json.doors.get({key}, {{}}) | tojson }}}}",
                "state_class": "measurement", "icon": "mdi:alarm-light", "availability": server_availability})
    return out


def alarm_summary(site: Site, counts: list[tuple[str | None, str, bool, bool, int]], now: float) -> dict[str, Any]:
    """The retained alarm summary from the store's grouped counts ``(door, type, active, acknowledged, n)``.

    Bounded: only doors of the site that have an open alarm appear under ``doors`` (an alarm at a door the site
    no longer has counts for the site only), types are the declared alarm types (``other`` for any else), and
    priorities the three of doorkeep/alarm_priority.py. No person, card, note or detail is read.
    """
    rank = {p: i for i, p in enumerate(PRIORITIES)}

    def higher(a: str | None, b: str) -> str:
        return b if a is None or rank[b] < rank[a] else a

    total = {"open": 0, "active": 0, "unacknowledged": 0}
    by_priority = {p: 0 for p in PRIORITIES}
    by_type: Counter[str] = Counter()
    highest: str | None = None
    doors: dict[str, dict[str, Any]] = {}
    for door, kind, active, acked, n in counts:
        priority = priority_of(site.alarms, kind)
        kind = kind if kind in vocabulary.ALARMS else OTHER
        total["open"] += n
        total["active"] += n if active else 0
        total["unacknowledged"] += 0 if acked else n
        by_priority[priority] += n
        by_type[kind] += n
        highest = higher(highest, priority)
        if door is not None and door in site.doors:
            d = doors.setdefault(door, {"open": 0, "active": 0, "unacknowledged": 0, "highest": None, "types": []})
            d["open"] += n
            d["active"] += n if active else 0
            d["unacknowledged"] += 0 if acked else n
            d["highest"] = higher(d["highest"], priority)
            if kind not in d["types"]:
                d["types"] = sorted([*d["types"], kind])
    return {"schema": "doorkeep.ha_alarms/1", "ts": iso_ms(now), **total, "highest": highest,
            "by_priority": by_priority, "by_type": dict(sorted(by_type.items())), "doors": dict(sorted(doors.items()))}


# ------------------------------------------------------------------ the service


class _Bus(Protocol):
    connect_listeners: list[Callable[[], None]]

    def route(self, topic_filter: str, handler: Callable[[Any], None], *, qos: int = 0,
              subscribe: bool = True) -> None: ...

    def publish_retained(self, topic: str, payload: bytes) -> None: ...


class _Directory(Protocol):
    site: Site
    bundle: SiteBundle
    listeners: list[Callable[[Site], None]]


class _Store(Protocol):
    def open_alarm_counts_by_door(self) -> list[tuple[str | None, str, bool, bool, int]]: ...

    def on_alarm_write(self, listener: Callable[[], None]) -> None: ...


class _Commands(Protocol):
    def unlock(self, door: str, *, actor: str = ...) -> dict[str, Any]: ...

    def lock(self, door: str, *, actor: str = ...) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Command:
    door: str
    payload: bytes
    received: float  # monotonic


class HomeAssistant:
    """Publishes the discovery configs and the alarm summary, and carries out Home Assistant's lock commands.

    paho's network thread only notes what arrived (a config echoed by the broker, HA's status, a command) and
    wakes a worker; the publisher thread does every publication and store read, the command thread every
    command, so neither a slow edge nor a store lock ever holds up the MQTT connection.
    """

    def __init__(self, settings: HomeAssistantSettings, directory: _Directory, bus: _Bus, store: _Store,
                 commands: _Commands | None, clock: Clock, *, audit: Auditor | None = None) -> None:
        self.settings = settings
        self.directory = directory
        self.bus = bus
        self.store = store
        self.commands = commands
        self.clock = clock
        self.audit = audit
        self.counters = LockedCounter()  # bumped from paho's thread and the workers
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # What the broker should hold for this node: topic -> payload bytes (wanted), and what was published.
        self._wanted: dict[str, bytes] = self._compute()
        self._last_shape = self._shape()
        self._published: dict[str, bytes] = {}
        self._force = False  # republish every config (a (re)connect, HA's birth)
        self._stale: set[str] = set()  # configs seen on the broker that are not wanted
        self._alarms_dirty = True
        self._alarms_last: bytes | None = None
        self._alarms_at = float("-inf")
        self._status_at = float("-inf")
        self._site_window = RateWindow(SITE_COMMANDS_PER_MINUTE)
        self._door_windows: dict[str, RateWindow] = {}
        self._dropped_logged_at = float("-inf")
        self._queue: queue.Queue[_Command | None] = queue.Queue(COMMAND_QUEUE)
        self._publisher = threading.Thread(target=self._publish_loop, name="doorkeep-ha", daemon=True)
        self._commander = threading.Thread(target=self._command_loop, name="doorkeep-ha-commands", daemon=True)
        bus.route(settings.config_filter(), self._on_config)
        bus.route(settings.status_topic(), self._on_status)
        # Subscribed only with unlock; otherwise unsubscribed (a persistent session may keep an old subscription)
        # and anything still delivered is refused.
        bus.route(settings.command_filter(), self._on_command, subscribe=settings.enabled and settings.unlock)
        bus.connect_listeners.append(self._on_connect)
        directory.listeners.append(self._on_site)
        store.on_alarm_write(self._on_alarm_write)

    def _count(self, *names: str) -> None:
        self.counters.add(*names)

    def counts(self) -> dict[str, int]:
        """A copy of Home Assistant's counters (server/metrics.py reads it at scrape time)."""
        return self.counters.snapshot()

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._publisher.start()
        self._commander.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        for t in (self._publisher, self._commander):
            if t.is_alive():
                t.join(timeout=10)

    # ------------------------------------------------------- what to publish

    def _shape(self) -> tuple[Any, ...]:
        """What the configs and the alarm summary depend on: the device files, the site's name, doors and
        alarm priorities (compared, never hashed)."""
        site = self.directory.site
        return (self.directory.bundle.devices, site.name, site.alarms,
                tuple((d.id, d.name, d.kind) for d in site.doors.values()))

    def _compute(self) -> dict[str, bytes]:
        bundle = self.directory.bundle
        configs = discovery_configs(self.settings, self.directory.site, bundle.devices)
        return {topic: json.dumps(config, sort_keys=True).encode() for topic, config in configs.items()}

    def wanted(self) -> dict[str, dict[str, Any]]:
        """The configs this server wants retained now, decoded (the desk and the tests read them)."""
        with self._lock:
            return {topic: json.loads(payload) for topic, payload in self._wanted.items()}

    # ------------------------------------------------- callbacks (no blocking)

    def _on_connect(self) -> None:
        with self._lock:
            self._force = True
            self._alarms_dirty = True
            self._alarms_last = None
        self._wake.set()

    def _on_site(self, site: Site) -> None:
        """Every change of the directory (people too): the configs are rebuilt only when what they show did."""
        shape = self._shape()
        if shape == self._last_shape:
            return
        self._last_shape = shape
        wanted = self._compute()
        with self._lock:
            self._wanted = wanted  # publish_once sends only what differs, and deletes what went
            self._alarms_dirty = True  # a door gone, a priority changed
        self._wake.set()

    def _on_alarm_write(self) -> None:
        # Runs inside the store's write transaction: only note it.
        self._alarms_dirty = True
        self._wake.set()

    def _on_config(self, msg: Any) -> None:
        """A config of this node as the broker holds it (retained, on subscribing) or as it passes by."""
        if not msg.payload:
            return  # a deletion passing by
        with self._lock:
            if msg.topic in self._wanted:
                return
            self._stale.add(msg.topic)
        self._wake.set()

    def _on_status(self, msg: Any) -> None:
        """Home Assistant's birth (``online``): it may have lost what it knew, so every config goes out again."""
        self._count("ha_status")
        if bytes(msg.payload) != AVAILABILITY_ONLINE.encode():
            return
        now = self.clock.monotonic()
        with self._lock:
            if now - self._status_at < STATUS_REPUBLISH_S:
                return
            self._status_at = now
            self._force = True
        self._wake.set()

    def _on_command(self, msg: Any) -> None:
        """A lock entity's command: noted and queued here, checked and carried out on the command thread."""
        door = str(msg.topic).split("/")[-2]
        if msg.retain:
            # A retained command would be carried out again at every reconnect of the server.
            self._refused_quietly("retained", door)
            return
        if not (self.settings.enabled and self.settings.unlock):
            self._refused_quietly("disabled", door)
            return
        now = self.clock.monotonic()
        with self._lock:
            allowed = self._site_window.take(now)
        if not allowed:
            self._refused_quietly("rate_limited", door)
            return
        try:
            self._queue.put_nowait(_Command(door, bytes(msg.payload[:32]), now))
        except queue.Full:
            self._refused_quietly("queue_full", door)

    def _refused_quietly(self, why: str, door: str) -> None:
        """Counted and logged (at most once a minute), never audited: what a flood would otherwise fill."""
        self._count("commands_refused", f"commands_refused_{why}")
        now = self.clock.monotonic()
        if now - self._dropped_logged_at >= 60.0:
            self._dropped_logged_at = now
            log.warning("home assistant: command for door %r dropped (%s; %d dropped so far)",
                        door[:64], why, self.counters["commands_refused"])

    # ---------------------------------------------------------- the publisher

    def _publish_loop(self) -> None:
        while not self._stopping.is_set():
            now = self.clock.monotonic()
            wait = max(0.0, min(self._alarms_at + ALARMS_REFRESH_S,
                                self._alarms_at + ALARMS_MIN_INTERVAL_S if self._alarms_dirty else float("inf")) - now)
            self._wake.wait(wait)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.publish_once()
            except Exception:
                self._count("errors")
                log.exception("home assistant: publishing failed")

    def publish_once(self) -> None:
        """Publish what changed: configs (all of them after a connect or HA's birth), deletions, the alarms."""
        with self._lock:
            force, self._force = self._force, False
            stale, self._stale = self._stale - set(self._wanted), set()
            wanted = dict(self._wanted)
            gone = [t for t in self._published if t not in wanted]
        for topic in sorted(set(gone) | stale):
            self.bus.publish_retained(topic, b"")  # Home Assistant deletes the entity
            self._published.pop(topic, None)
            self._count("configs_deleted")
        for topic, payload in wanted.items():
            if force or self._published.get(topic) != payload:
                self.bus.publish_retained(topic, payload)
                self._published[topic] = payload
                self._count("configs_published")
        now = self.clock.monotonic()
        if force or (self._alarms_dirty and now - self._alarms_at >= ALARMS_MIN_INTERVAL_S) \
                or now - self._alarms_at >= ALARMS_REFRESH_S:
            self._publish_alarms(now, force=force)

    def _publish_alarms(self, now: float, *, force: bool) -> None:
        """The retained alarm summary, when its counts changed (its ``ts`` alone never republishes it)."""
        self._alarms_dirty = False  # before reading: a write from now on reads again
        self._alarms_at = now
        if not self.settings.enabled:
            if self._alarms_last != b"":
                self.bus.publish_retained(self.settings.alarms_topic(), b"")  # withdrawn: the summary goes too
                self._alarms_last = b""
            return
        summary = alarm_summary(self.directory.site, self.store.open_alarm_counts_by_door(), self.clock.wall())
        counts = json.dumps({k: v for k, v in summary.items() if k != "ts"}, sort_keys=True).encode()
        if counts == self._alarms_last and not force:
            return
        self._alarms_last = counts
        self.bus.publish_retained(self.settings.alarms_topic(), json.dumps(summary, sort_keys=True).encode())
        self._count("alarm_summaries")

    # ------------------------------------------------------------ commands

    def _command_loop(self) -> None:
        while True:
            cmd = self._queue.get()
            if cmd is None or self._stopping.is_set():
                return
            try:
                self.carry_out(cmd.door, cmd.payload, received=cmd.received)
            except Exception:
                self._count("errors")
                log.exception("home assistant: command for door %r failed", cmd.door[:64])

    def check(self, door: str, payload: bytes, *, received: float) -> str:
        """The command ``payload`` asks of ``door``, or :class:`HomeAssistantError` saying why it is refused."""
        if not SEGMENT.match(door) or len(door) > 64:
            raise HomeAssistantError("not a door id")
        if door not in self.directory.site.doors:
            raise HomeAssistantError("unknown_door")
        if not self.settings.may_unlock(door):
            raise HomeAssistantError("door_not_allowed")
        action = ACTIONS.get(payload.decode("ascii", "replace").strip())
        if action is None:
            raise HomeAssistantError("unknown_payload")
        if self.clock.monotonic() - received > COMMAND_MAX_AGE_S:
            raise HomeAssistantError("stale")
        window = self._door_windows.setdefault(door, RateWindow(DOOR_COMMANDS_PER_MINUTE))
        if not window.take(self.clock.monotonic()):
            raise HomeAssistantError("rate_limited")
        return action

    def carry_out(self, door: str, payload: bytes, *, received: float) -> dict[str, Any] | None:
        """Check one command, then send it signed (audited by the sender); a refusal is audited here."""
        try:
            action = self.check(door, payload, received=received)
        except HomeAssistantError as exc:
            why = str(exc)
            self._count("commands_refused", f"commands_refused_{why.replace(' ', '_')}")
            shown = payload.decode("ascii", "replace")[:16]
            shown = "".join(c if c.isprintable() else "?" for c in shown)
            target = f"door:{door}" if SEGMENT.match(door) and len(door) <= 64 else None
            log.warning("home assistant: command %r for door %r refused: %s", shown, door[:64], why)
            record_audit(self.audit, ACTOR, "home_assistant.command_refused", target,
                         {"payload": shown, "reason": why})
            return None
        if self.commands is None:
            raise HomeAssistantError("no command sender")
        try:
            send = self.commands.unlock if action == "unlock" else self.commands.lock
            result = send(door, actor=ACTOR)
        except ServerError as exc:  # e.g. a door added to the site after the server started (no device yet)
            self._count("commands_failed")
            log.warning("home assistant: %s of %s not sent: %s", action, door, exc)
            return None
        self._count(f"commands_{result['status']}")
        return result
