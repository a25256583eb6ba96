"""Signed remote commands end to end through a real Mosquitto: server → edge → relay pin → result and events.

A captured unlock command re-published later must leave the relay de-energised (also after the edge
restarts); forged, unsigned and stale ones are refused and recorded as ``command_rejected`` events.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.commands import sign_command
from doorkeep.config import BrokerConfig
from doorkeep.contract import CommandResult, Topics
from doorkeep.pki import OPERATOR
from simulators.brokers import OBSERVER
from simulators.clock import ScenarioClock
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"
DEVICE = "pi-lobby"


@pytest.fixture
def runner(mosquitto, tmp_path: Path) -> Iterator[SiteRunner]:
    """The demo site on a ScenarioClock, so a door's unlock time passes without waiting for it."""
    r = SiteRunner.from_dir(DEMO_SITE, broker_url=mosquitto.url, data_dir=tmp_path,
                            clock=ScenarioClock(time.time()))
    r.start()
    try:
        assert r.wait_connected(10), "edges and server did not connect to Mosquitto"
        assert r.wait_policies(10), "edges did not receive their signed policy"
        yield r
    finally:
        r.stop()


class Wire:
    """A separate paho client: captures the exact command bytes and every result, and re-publishes bytes."""

    def __init__(self, runner: SiteRunner) -> None:
        assert runner.broker_url is not None
        self.topics = Topics(runner.bundle.site.id)
        self.commands: list[bytes] = []
        self.results: list[tuple[str, CommandResult]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        # As the test observer, which the session broker's ACL lets read and write the whole site like the
        # server (as `server` itself it would drop the running server: client ids are bound to certificates).
        self.client = runner.mqtt_client(OBSERVER, f"test-wire-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: subscribed.set()
        broker = BrokerConfig(runner.broker_url)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self.client.subscribe([(self.topics.cmd(DEVICE), 1), (self.topics.all_cmd_results(), 1)])
        assert subscribed.wait(5)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.endswith("/cmd"):
                self.commands.append(bytes(msg.payload))
            else:
                self.results.append((msg.topic.split("/")[3], CommandResult.decode(msg.payload)))

    def publish(self, payload: bytes) -> None:
        self.client.publish(self.topics.cmd(DEVICE), payload, qos=1).wait_for_publish(5)

    def result_for(self, transaction: str | None) -> CommandResult | None:
        with self._lock:
            return next((r for _, r in reversed(self.results) if r.transaction == transaction), None)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def wire(runner: SiteRunner) -> Iterator[Wire]:
    w = Wire(runner)
    yield w
    w.close()


def rejected(runner: SiteRunner) -> list[dict[str, Any]]:
    """The ``command_rejected`` events the server stored, each as its detail plus the door."""
    assert runner.server is not None
    rows = [e for e in runner.server.store.events(500) if e["type"] == "command_rejected"]
    return [{**json.loads(e["detail"] or "{}"), "door": e["door"]} for e in rows]


def stored(runner: SiteRunner, etype: str) -> list[dict[str, Any]]:
    assert runner.server is not None
    return [e for e in runner.server.store.events(500) if e["type"] == etype]


def energised_since(runner: SiteRunner, door: str, mark: int) -> bool:
    return any(state for _, state in runner.doors[door].door.relay_history[mark:])


def restart_edge(runner: SiteRunner, device: str) -> None:
    """Stop one edge agent and start a new one on the same state_dir (fresh simulators, like a reboot)."""
    runner.agents.pop(device).stop()
    for sim in [d for d in runner.doors.values() if d.device == device]:
        sim.reader.close()
    for name in [n for n in runner.cameras if n.startswith(f"{device}/")]:
        runner.cameras.pop(name).stop()
    assert runner.broker_url is not None
    runner._start_device(runner.bundle.devices[device], runner.broker_config(device))
    assert runner.agents[device].link.wait_connected(10)


# ------------------------------------------------------------------------- (a)


def test_server_unlock_energises_the_relay_which_relocks_after_unlock_s(runner: SiteRunner) -> None:
    door = runner.doors["lobby_in"].door
    assert runner.server is not None
    result = runner.server.commands.unlock("lobby_in", timeout=5)
    assert (result["status"], result["error"], result["device"]) == ("ok", None, DEVICE)
    assert door.relay_energised, "the relay is energised by the time the edge reports ok"
    assert wait_until(lambda: any(e["transaction"] == result["transaction"] for e in stored(runner, "remote_unlock")), 5)

    runner.advance(4.0)  # real time passes too: leave a second of margin for a loaded machine
    assert door.relay_energised, "relocked before the door's unlock_s (5 s)"
    runner.advance(1.1)
    assert door.wait_relay(False, 2.0), "the remote unlock did not end after unlock_s"


def test_lock_command_ends_a_remote_unlock_at_once(runner: SiteRunner) -> None:
    assert runner.server is not None
    assert runner.server.commands.unlock("lobby_out")["status"] == "ok"
    assert runner.doors["lobby_out"].door.relay_energised
    assert runner.server.commands.lock("lobby_out")["status"] == "ok"
    assert not runner.doors["lobby_out"].door.relay_energised


# ------------------------------------------------------------------------- (b)


def test_a_replayed_unlock_command_leaves_the_relay_de_energised(runner: SiteRunner, wire: Wire) -> None:
    assert runner.server is not None
    door = runner.doors["lobby_in"].door
    first = runner.server.commands.unlock("lobby_in")
    assert first["status"] == "ok"
    assert wait_until(lambda: wire.commands, 5), "the subscriber did not capture the command"
    captured = wire.commands[0]
    runner.advance(5.1)
    assert door.wait_relay(False, 2.0)

    mark = len(door.relay_history)
    wire.publish(captured)
    assert wait_until(lambda: any(r["reason"] == "replayed" for r in rejected(runner)), 10), \
        "no command_rejected event with reason replayed reached the server"
    assert not energised_since(runner, "lobby_in", mark), "a replayed command energised the relay"
    assert not door.relay_energised
    assert wait_until(lambda: (r := wire.result_for(first["transaction"])) is not None and r.status == "rejected", 5)
    assert wire.result_for(first["transaction"]).error == "replayed"
    event = next(r for r in rejected(runner) if r["reason"] == "replayed")
    assert (event["action"], event["transaction"], event["door"]) == ("unlock", first["transaction"], "lobby_in")
    assert runner.agents[DEVICE].counters["commands_rejected_replayed"] == 1


# ------------------------------------------------------------------------- (c)


def test_forged_unsigned_and_stale_commands_are_refused_and_recorded(runner: SiteRunner, wire: Wire) -> None:
    site_id, now = runner.bundle.site.id, runner.clock.wall()
    forged = sign_command(site_id=site_id, device=DEVICE, action="unlock", args={"door": "lobby_out"},
                          key=Ed25519PrivateKey.generate(), issued_at=now, transaction="forged")
    envelope = json.loads(sign_command(site_id=site_id, device=DEVICE, action="unlock", args={"door": "lobby_out"},
                                       key=runner.signing_key, issued_at=now, transaction="unsigned"))
    del envelope["signature"]
    unsigned = json.dumps(envelope).encode()
    stale = sign_command(site_id=site_id, device=DEVICE, action="unlock", args={"door": "lobby_out"},
                         key=runner.signing_key, issued_at=now - 120, transaction="stale")
    for payload in (forged, unsigned, stale, b"not even json"):
        wire.publish(payload)

    want = {("forged", "bad_signature"), ("unsigned", "unsigned"), ("stale", "stale"), (None, "malformed")}
    assert wait_until(lambda: want <= {(r.get("transaction"), r["reason"]) for r in rejected(runner)}, 10), \
        rejected(runner)
    assert not energised_since(runner, "lobby_out", 0), "a refused command energised the relay"
    assert not energised_since(runner, "lobby_in", 0)
    for tx, reason in [("forged", "bad_signature"), ("unsigned", "unsigned"), ("stale", "stale")]:
        assert wait_until(lambda tx=tx: wire.result_for(tx) is not None, 5)
        assert (wire.result_for(tx).status, wire.result_for(tx).error) == ("rejected", reason)
    assert {r["door"] for r in rejected(runner) if r.get("transaction")} == {"lobby_out"}


# ------------------------------------------------------------------------- (d)


def test_a_replay_is_still_refused_after_the_edge_restarts(runner: SiteRunner, wire: Wire) -> None:
    assert runner.server is not None
    first = runner.server.commands.unlock("lobby_out")
    assert first["status"] == "ok"
    assert wait_until(lambda: wire.commands, 5)
    captured = wire.commands[0]

    restart_edge(runner, DEVICE)
    # A fresh command round trip proves the new agent listens before the replay goes out (its subscription
    # is made in on_connect and may reach the broker just after "connected": ask again until answered).
    assert wait_until(lambda: runner.server.commands.sync(DEVICE, timeout=1.0)["status"] == "ok", 15)
    wire.publish(captured)
    assert wait_until(lambda: any(r["reason"] == "replayed" for r in rejected(runner)), 10), rejected(runner)
    assert not energised_since(runner, "lobby_out", 0), "the replay energised the relay after the restart"
    assert wait_until(lambda: (r := wire.result_for(first["transaction"])) is not None and r.status == "rejected", 5)


# ------------------------------------------------------------------------- (e)


def test_lockdown_command_refuses_a_valid_badge_and_remote_unlocks_until_lifted(runner: SiteRunner) -> None:
    assert runner.server is not None
    results = runner.server.commands.lockdown("site", True)
    assert sorted(r["device"] for r in results) == ["pi-floor7", "pi-lobby"]
    assert all(r["status"] == "ok" for r in results), results
    doors = len(runner.bundle.site.doors)
    assert wait_until(lambda: len(stored(runner, "lockdown")) == doors, 5), "one lockdown event per door"

    door = runner.doors["lobby_in"]
    door.reader.badge(ALICE)
    assert wait_until(lambda: stored(runner, "access"), 5)
    access = stored(runner, "access")[0]
    assert (access["decision"], access["reason"]) == ("denied", "lockdown")
    refused = runner.server.commands.unlock("lobby_in")
    assert (refused["status"], refused["error"]) == ("failed", "lockdown")
    assert not energised_since(runner, "lobby_in", 0)

    assert all(r["status"] == "ok" for r in runner.server.commands.lockdown("site", False))
    assert runner.server.commands.unlock("lobby_in")["status"] == "ok"
    assert door.door.relay_energised


def test_lockdown_applies_on_the_edge_at_once_even_before_the_policy(runner: SiteRunner) -> None:
    """The command alone (as `doorkeep lockdown` sends it) locks the edge's own decisions down."""
    assert runner.server is not None
    results = runner.server.commands.lockdown("lobby", True, persist=False)
    # pi-floor7 drives the lift, one of whose floors is the lobby: the lockdown reaches it too.
    assert [(r["device"], r["status"]) for r in results] == [("pi-floor7", "ok"), ("pi-lobby", "ok")]
    agent = runner.agents[DEVICE]
    assert agent.local_state.locked_down("lobby") and not agent.local_state.locked_down("floor7")
    assert runner.server.commands.unlock("lobby_in")["error"] == "lockdown"
    assert runner.server.commands.unlock("lobby_out")["status"] == "ok"  # into `outside`: not covered


# --------------------------------------------------------------------- the CLI


def _site_with_key(runner: SiteRunner, tmp_path: Path) -> Path:
    site_dir = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site_dir)
    key_file = site_dir / "keys" / "policy-signing.key"
    key_file.parent.mkdir(exist_ok=True)
    key_file.write_bytes(runner.signing_key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    key_file.chmod(0o600)
    # The command client speaks mutual TLS as `operator` (commands and results only, never `server`, which is
    # connected), from SITE/pki/ as `doorkeep pki issue operator` leaves it.
    tls = runner.broker_config(OPERATOR)
    (site_dir / "pki").mkdir()
    for src, name in ((tls.ca_file, "ca.crt"), (tls.cert_file, "operator.crt"), (tls.key_file, "operator.key")):
        assert src is not None
        shutil.copy2(src, site_dir / "pki" / name)
    return site_dir


def test_cli_door_unlock_and_lockdown(runner: SiteRunner, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from doorkeep.cli import main

    site_dir = _site_with_key(runner, tmp_path)
    assert runner.broker_url is not None
    assert main(["door", "unlock", "lab", "--site", str(site_dir), "--broker", runner.broker_url,
                 "--data", str(runner.data_dir / "server")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (out["status"], out["device"], out["action"]) == ("ok", "pi-floor7", "unlock")
    assert runner.doors["lab"].door.relay_energised

    assert main(["lockdown", "on", "--area", "floor7", "--site", str(site_dir), "--broker", runner.broker_url,
                 "--data", str(runner.data_dir / "server")]) == 0
    assert runner.agents["pi-floor7"].local_state.locked_down("floor7")
    assert main(["door", "unlock", "lab", "--site", str(site_dir), "--broker", runner.broker_url,
                 "--data", str(runner.data_dir / "server")]) == 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["error"] == "lockdown"
    assert main(["lockdown", "off", "--area", "floor7", "--site", str(site_dir), "--broker", runner.broker_url,
                 "--data", str(runner.data_dir / "server")]) == 0
    assert not runner.agents["pi-floor7"].local_state.locked_down("floor7")

    # Every command went into the server's audit log first, with the operator who ran it; the chain holds.
    import getpass

    user = f"cli:{getpass.getuser()}"
    records = [r for r in reversed(runner.server.audit.records()) if r["action"] in ("door.unlock", "lockdown.command")]
    assert [(r["action"], r["actor"], r["target"]) for r in records] == [
        ("door.unlock", user, "pi-floor7"),
        ("lockdown.command", user, "pi-floor7"),
        ("door.unlock", user, "pi-floor7"),
        ("lockdown.command", user, "pi-floor7"),
    ]
    assert runner.server.audit.verify().ok


def test_cli_refuses_to_send_a_command_it_cannot_audit(runner: SiteRunner, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from doorkeep.cli import main

    site_dir = _site_with_key(runner, tmp_path)
    assert main(["door", "unlock", "lab", "--site", str(site_dir), "--broker", str(runner.broker_url),
                 "--data", str(tmp_path / "no-store")]) == 2
    assert "audit log" in capsys.readouterr().err
    assert not runner.doors["lab"].door.relay_history, "an unaudited command must not be sent at all"


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from doorkeep.cli import main

    assert main(["door", "unlock", "lab", "--site", str(tmp_path / "missing")]) == 2
    site_dir = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site_dir)
    assert main(["door", "unlock", "lab", "--site", str(site_dir)]) == 2  # no signing key
    assert "policy-signing.key" in capsys.readouterr().err
    (site_dir / "keys").mkdir(exist_ok=True)
    key = Ed25519PrivateKey.generate()
    path = site_dir / "keys" / "policy-signing.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    assert main(["door", "unlock", "no_such_door", "--site", str(site_dir)]) == 2
    assert main(["lockdown", "on", "--area", "mars", "--site", str(site_dir)]) == 2
