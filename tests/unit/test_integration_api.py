"""The integration request API (server/integration_api.py): site.toml [integrations.NAME], the status result,
and the request path from a routed message to the published response, with a real SITE/pki (real certificates
issued into a real index.json) and recording fakes for the bus, the command sender and the audit log."""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from doorkeep.config import SiteBundle, load_site_dir
from doorkeep.contract import state_payload
from doorkeep.errors import ConfigErrors
from doorkeep.pki import init_ca, issue, revoke
from doorkeep.sites import DEMO_SITE
from server.integration_api import (
    DOOR_UNLOCKS_PER_MINUTE,
    MAX_REQUEST_BYTES,
    SITE_REQUESTS_PER_MINUTE,
    IntegrationApi,
    door_status,
)

NOW = datetime(2026, 12, 7, 9, 0, tzinfo=timezone.utc)
REQ = "doorkeep/v1/demo/server/integration/{}/request"
RESP = "doorkeep/v1/demo/server/integration/{}/response"


def site_with(tmp_path: Path, table: str) -> Path:
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site)
    with (site / "site.toml").open("a") as f:
        f.write("\n" + table + "\n")
    return site


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def wall(self) -> float:
        return 1_796_029_200.0 + self.t

    def monotonic(self) -> float:
        return self.t


class FakeBus:
    """What IntegrationApi uses of server/bus.py ServerBus: route, publish, and the edges' states."""

    def __init__(self, bundle: SiteBundle) -> None:
        self.routes: dict[str, Callable[[Any], None]] = {}
        self.published: list[tuple[str, bytes]] = []
        self.states: dict[str, bytes] = {}
        self.availability: dict[str, str] = {}
        self.door_devices = {door: dev.id for dev in bundle.devices.values() for door in dev.doors}

    def route(self, topic_filter: str, handler: Callable[[Any], None], *, qos: int = 0, subscribe: bool = True) -> None:
        self.routes[topic_filter] = handler

    def publish(self, topic: str, payload: bytes) -> None:
        self.published.append((topic, payload))

    def deliver(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        for f, handler in self.routes.items():
            if re.match("^" + re.escape(f).replace(r"\+", "[^/]+") + "$", topic):
                handler(SimpleNamespace(topic=topic, payload=payload, retain=retain))
                return
        raise AssertionError(f"no route for {topic}")


class FakeCommands:
    def __init__(self, status: str = "ok") -> None:
        self.sent: list[tuple[str, str]] = []
        self.status = status

    def unlock(self, door: str, *, actor: str = "system") -> dict[str, Any]:
        self.sent.append((door, actor))
        return {"status": self.status, "transaction": "tx1", "error": None if self.status == "ok" else "relay fault"}


class FakeAudit:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str | None, dict[str, Any] | None]] = []

    def record(self, actor: str, action: str, target: str | None = None, details: dict[str, Any] | None = None) -> int:
        self.records.append((actor, action, target, details))
        return len(self.records)


def service(tmp_path: Path, table: str = '[integrations.node-red]\nunlock_doors = ["lobby_in"]',
            status: str = "ok") -> tuple[IntegrationApi, FakeBus, FakeCommands, FakeAudit, FakeClock, Path]:
    bundle = load_site_dir(site_with(tmp_path, table))
    pki = bundle.dir / "pki"
    init_ca(pki, "demo", now=NOW)
    issue(pki, "node-red", now=NOW, role="integration")
    issue(pki, "soc", now=NOW, role="integration", read_only=True)
    issue(pki, "old", now=NOW, role="integration")
    revoke(pki, "old", now=NOW)
    bus, commands, audit, clock = FakeBus(bundle), FakeCommands(status), FakeAudit(), FakeClock()
    api = IntegrationApi(bundle.integrations, SimpleNamespace(site=bundle.site), bus, commands, clock,  # type: ignore[arg-type]
                         pki=pki, audit=audit)
    return api, bus, commands, audit, clock, pki


def ask(api: IntegrationApi, bus: FakeBus, clock: FakeClock, name: str, body: Any) -> dict[str, Any] | None:
    """Deliver one request on the routed topic, then run what the worker would run; the response published."""
    bus.published.clear()
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    bus.deliver(REQ.format(name), payload)
    req = api._queue.get_nowait()
    assert req is not None
    api.handle(req.name, req.payload, received=req.received, oversize=req.oversize)
    if not bus.published:
        return None
    [(topic, raw)] = bus.published
    assert topic == RESP.format(name), "the answer goes to the caller's own response topic only"
    return json.loads(raw)


# ------------------------------------------------------------------ config


def test_integrations_table_lists_doors_or_all_and_defaults_to_none(tmp_path: Path) -> None:
    assert load_site_dir(DEMO_SITE).integrations == {}
    bundle = load_site_dir(site_with(tmp_path, '[integrations.node-red]\nunlock_doors = ["lobby_in"]\n'
                                               '[integrations.bms]\nunlock_doors = "all"\n[integrations.watch]\n'))
    got = bundle.integrations
    assert got["node-red"].may_unlock("lobby_in") and not got["node-red"].may_unlock("lab")
    assert got["bms"].may_unlock("lab") and got["bms"].unlock_doors is None
    assert not got["watch"].may_unlock("lobby_in"), "a table without unlock_doors unlocks nothing"


@pytest.mark.parametrize("table, expected", [
    ('[integrations.x]\nunlock_doors = ["vault"]', "integrations.x.unlock_doors: 'vault' is not a door"),
    ('[integrations.x]\nunlock_doors = "some"', "integrations.x.unlock_doors: unknown value 'some'"),
    ('[integrations.x]\nunlok_doors = "all"', "integrations.x.unlok_doors: unknown key"),
    ('[integrations.server]\nunlock_doors = "all"', "integrations.server: 'server' cannot be an integration"),
], ids=["unknown-door", "bad-value", "typo", "reserved"])
def test_a_bad_integrations_table_names_the_key_and_why(tmp_path: Path, table: str, expected: str) -> None:
    with pytest.raises(ConfigErrors) as exc:
        load_site_dir(site_with(tmp_path, table))
    found = [f"{e.key}: {e.problem}" for e in exc.value.errors]
    assert any(e.startswith(expected) for e in found), found


# ------------------------------------------------------------------ status


def test_status_reports_each_door_from_its_own_edge_and_nothing_about_people(tmp_path: Path) -> None:
    api, bus, _, audit, clock, _ = service(tmp_path)
    full = {"state": "locked", "relay": False, "open": False, "sounder": False, "tamper": False, "override": None}
    bus.states["pi-lobby"] = state_payload("pi-lobby", "0.1.0", {"lobby_in": {**full, "state": "unlocked",
                                                                               "relay": True}, "lobby_out": full,
                                                                  "lab": {**full, "relay": True}}, {}, {},
                                           "2026-12-07T08:55:00.000Z")
    bus.availability.update({"pi-lobby": "online", "pi-floor7": "offline"})
    resp = ask(api, bus, clock, "node-red", {"id": "r1", "action": "status"})
    assert resp is not None and resp["ok"] is True and resp["error"] is None and resp["id"] == "r1"
    doors = {d["id"]: d for d in resp["result"]["doors"]}
    assert set(doors) == set(api.directory.site.doors)
    assert (doors["lobby_in"]["state"], doors["lobby_in"]["relay"]) == ("unlocked", True)
    assert doors["lobby_out"]["state"] == "locked"
    assert doors["lab"]["state"] == "offline", "lab is pi-floor7's, which is offline; pi-lobby cannot speak for it"
    assert doors["lab"]["relay"] is None
    assert set(doors["lobby_in"]) == {"id", "name", "device", "device_status", "state", "open", "relay", "tamper",
                                      "lockdown"}
    assert audit.records == [], "a status read is not audited"


def test_door_status_survives_a_garbled_state() -> None:
    bundle = load_site_dir(DEMO_SITE)
    devices = {door: dev.id for dev in bundle.devices.values() for door in dev.doors}
    out = door_status(bundle.site, devices, {"pi-lobby": b"{not json", "pi-floor7": b"[1]"}, {})
    assert {d["state"] for d in out} == {"unknown"}


# ------------------------------------------------------------------ unlock


def test_unlock_of_a_permitted_door_is_sent_as_the_integration_and_carries_the_edges_result(tmp_path: Path) -> None:
    api, bus, commands, audit, clock, _ = service(tmp_path)
    resp = ask(api, bus, clock, "node-red", {"id": "u1", "action": "unlock", "door": "lobby_in"})
    assert commands.sent == [("lobby_in", "integration:node-red")]
    assert resp == {"schema": "doorkeep.integration_response/1", "id": "u1", "ok": True, "error": None,
                    "result": {"door": "lobby_in", "status": "ok", "transaction": "tx1", "edge_error": None}}
    api2, bus2, commands2, *_ = service(tmp_path / "b", status="rejected")
    resp2 = ask(api2, bus2, clock, "node-red", {"id": "u2", "action": "unlock", "door": "lobby_in"})
    assert resp2 is not None and resp2["ok"] is False and resp2["error"] == "edge_rejected"
    assert resp2["result"]["edge_error"] == "relay fault"


@pytest.mark.parametrize("body, error", [
    ({"id": "a", "action": "unlock", "door": "lab"}, "door_not_allowed"),
    ({"id": "a", "action": "unlock", "door": "vault"}, "unknown_door"),
    ({"id": "a", "action": "unlock", "door": "../lab"}, "bad_request"),
    ({"id": "a", "action": "unlock"}, "bad_request"),
], ids=["not-allowed", "unknown-door", "bad-door", "no-door"])
def test_a_refused_unlock_is_answered_audited_and_never_sent(tmp_path: Path, body: dict[str, Any], error: str) -> None:
    api, bus, commands, audit, clock, _ = service(tmp_path)
    resp = ask(api, bus, clock, "node-red", body)
    assert resp is not None and (resp["ok"], resp["error"], resp["id"]) == (False, error, "a")
    assert commands.sent == []
    assert [(r[0], r[1], r[3]["reason"]) for r in audit.records] == [  # type: ignore[index]
        ("integration:node-red", "integration.unlock_refused", error)]


def test_an_integration_without_a_table_may_ask_status_but_unlocks_nothing(tmp_path: Path) -> None:
    api, bus, commands, _, clock, _ = service(tmp_path, "")
    assert ask(api, bus, clock, "node-red", {"id": "s", "action": "status"})["ok"] is True  # type: ignore[index]
    resp = ask(api, bus, clock, "node-red", {"id": "u", "action": "unlock", "door": "lobby_in"})
    assert resp is not None and resp["error"] == "door_not_allowed" and commands.sent == []


def test_unlocks_of_one_door_are_rate_limited(tmp_path: Path) -> None:
    api, bus, commands, audit, clock, _ = service(tmp_path)
    errors = [ask(api, bus, clock, "node-red", {"id": str(i), "action": "unlock", "door": "lobby_in"})["error"]  # type: ignore[index]
              for i in range(DOOR_UNLOCKS_PER_MINUTE + 2)]
    assert errors == [None] * DOOR_UNLOCKS_PER_MINUTE + ["rate_limited"] * 2
    assert len(commands.sent) == DOOR_UNLOCKS_PER_MINUTE
    clock.t += 60
    assert ask(api, bus, clock, "node-red", {"id": "x", "action": "unlock", "door": "lobby_in"})["ok"] is True  # type: ignore[index]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("payload, error, req_id", [
    (b"{not json", "bad_request", None),
    (b"[1, 2]", "bad_request", None),
    (json.dumps({"action": "status"}).encode(), "bad_request", None),
    (json.dumps({"id": "x" * 65, "action": "status"}).encode(), "bad_request", None),
    (json.dumps({"id": "q", "action": "open_all"}).encode(), "unknown_action", None),
    (json.dumps({"id": "q", "action": "status", "pad": "x" * MAX_REQUEST_BYTES}).encode(), "too_large", None),
    (b"\xff\xfe", "bad_request", None),
], ids=["not-json", "not-object", "no-id", "long-id", "unknown-action", "oversize", "not-utf8"])
def test_malformed_requests_get_a_clear_error(tmp_path: Path, payload: bytes, error: str, req_id: Any) -> None:
    api, bus, commands, _, clock, _ = service(tmp_path)
    resp = ask(api, bus, clock, "node-red", payload)
    assert resp is not None and (resp["ok"], resp["error"], resp["id"]) == (False, error, req_id)
    assert api.counters[f"requests_refused_{error}"] == 1 and commands.sent == []


def test_read_only_revoked_and_unknown_names_get_no_answer_and_nothing_runs(tmp_path: Path) -> None:
    api, bus, commands, audit, clock, pki = service(tmp_path, '[integrations.soc]\nunlock_doors = "all"\n'
                                                              '[integrations.old]\nunlock_doors = "all"')
    for name in ("soc", "old", "pi-lobby", "nobody"):
        assert ask(api, bus, clock, name, {"id": "u", "action": "unlock", "door": "lab"}) is None
    assert commands.sent == [] and audit.records == []
    assert api.counters["requests_refused_read_only"] == 1
    assert api.counters["requests_refused_not_an_integration"] == 3
    (pki / "index.json").write_text("garbage")
    assert ask(api, bus, clock, "node-red", {"id": "s", "action": "status"}) is None, "an unreadable index trusts nobody"


def test_the_network_thread_drops_retained_floods_and_stale_requests_are_refused(tmp_path: Path) -> None:
    api, bus, commands, _, clock, _ = service(tmp_path)
    body = json.dumps({"id": "r", "action": "unlock", "door": "lobby_in"}).encode()
    bus.deliver(REQ.format("node-red"), body, retain=True)
    assert api.counters["requests_dropped_retained"] == 1 and api._queue.qsize() == 0
    for _ in range(SITE_REQUESTS_PER_MINUTE + 5):
        bus.deliver(REQ.format("node-red"), body)
    assert api._queue.qsize() == api._queue.maxsize
    assert api.counters["requests_dropped"] == 1 + SITE_REQUESTS_PER_MINUTE + 5 - api._queue.maxsize
    assert commands.sent == [] and bus.published == [], "the network thread never sends nor answers"
    req = api._queue.get_nowait()
    clock.t += 11
    assert req is not None
    resp = api.handle(req.name, req.payload, received=req.received)
    assert resp is not None and resp["error"] == "stale" and commands.sent == []


def test_the_worker_answers_what_was_queued_and_an_exception_never_escapes(tmp_path: Path) -> None:
    api, bus, commands, _, clock, _ = service(tmp_path)

    def explode(door: str, *, actor: str = "system") -> dict[str, Any]:
        raise RuntimeError("boom")

    commands.unlock = explode  # type: ignore[method-assign]
    bus.deliver(REQ.format("node-red"), json.dumps({"id": "1", "action": "unlock", "door": "lobby_in"}).encode())
    bus.deliver(REQ.format("node-red"), json.dumps({"id": "2", "action": "status"}).encode())
    api.start()
    try:
        api._queue.put(None)  # the worker ends after what was queued before it
        api._worker.join(10)
    finally:
        api.stop()
    assert api.counters["errors"] == 1
    assert [json.loads(p)["id"] for _, p in bus.published] == ["2"], "the next request is still answered"
