"""The real commands as separate processes: `doorkeep server` and `doorkeep edge`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from doorkeep.contract import Topics
from doorkeep.credentials import generate_key_file
from doorkeep.envelope import init_data_keys
from simulators.brokers import OBSERVER
from simulators.camera import CameraSimulator
from simulators.reader import ReaderSimulator
from simulators.site import DEMO_SITE
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e


def doorkeep(*args: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "doorkeep", *args], stdout=log.open("wb"),
                            env={**os.environ, **(env or {})},
                            stderr=subprocess.STDOUT)


def test_server_and_edge_commands_grant_a_card_and_stop_cleanly(mosquitto, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    key = site / "keys" / "credential.key"
    generate_key_file(key)
    init_data_keys(site / "keys")
    signing = subprocess.run([sys.executable, "-m", "doorkeep", "key", "init-signing",
                              str(site / "keys" / "policy-signing.key")], capture_output=True, text=True, timeout=60)
    assert signing.returncode == 0, signing.stderr
    assert (site / "keys" / "policy-signing.pub").exists()
    reader = ReaderSimulator("em4100")
    camera = CameraSimulator()
    camera.start()
    device = site / "devices" / "pi-lobby.toml"
    text = device.read_text()
    text = text.replace('"/etc/doorkeep/credential.key"', '"../keys/credential.key"')
    text = text.replace('"/etc/doorkeep/policy-signing.pub"', '"../keys/policy-signing.pub"')
    text = text.replace('state_dir = "/var/lib/doorkeep"', f'state_dir = "{tmp_path / "edge-state"}"')
    text = text.replace('gpio_factory = "lgpio"', 'gpio_factory = "mock"')
    text = text.replace('url = "/dev/serial0"', f'url = "{reader.path}"')
    text = text.replace('source = "0"', f'source = "{camera.url}"')
    # Mutual TLS as shipped, with pi-lobby's certificate from the session broker's CA.
    assert 'url = "mqtts://' in text
    text = text.replace('"/etc/doorkeep/pki/', f'"{mosquitto.pki}/')
    device.write_text(text)

    topics = Topics("demo")
    states: list[dict] = []
    availability: list[str] = []
    watcher = mosquitto.client(OBSERVER)  # reads the whole site (as `server` it would drop a running server)

    server_availability: list[str] = []

    def on_message(client, userdata, msg):
        if msg.topic.endswith("/state"):
            states.append(json.loads(msg.payload))
        elif msg.topic == topics.server_availability():
            server_availability.append(msg.payload.decode())
        else:
            availability.append(msg.payload.decode())

    watcher.on_message = on_message
    watcher.on_connect = lambda c, *a: (c.subscribe(topics.state("pi-lobby"), 1),
                                        c.subscribe(topics.availability("pi-lobby"), 1),
                                        c.subscribe(topics.server_availability(), 1))
    watcher.connect("127.0.0.1", mosquitto.port)
    watcher.loop_start()

    data = tmp_path / "data"
    pki = mosquitto.pki
    server = doorkeep("server", "--site", str(site), "--data", str(data), "--broker", mosquitto.url,
                      "--ca", str(pki / "ca.crt"), "--cert", str(pki / "server.crt"), "--key", str(pki / "server.key"),
                      log=tmp_path / "server.log")
    # Play systemd: a notify socket and a watchdog, as firmware-config/systemd/doorkeep-edge@.service sets up.
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(5)
    edge = doorkeep("edge", "--device", str(device), "--broker", mosquitto.url, log=tmp_path / "edge.log",
                    env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    try:
        assert wait_until(lambda: "online" in availability, 20), (tmp_path / "edge.log").read_text()
        # The server says online once it has subscribed: from then on it answers every request.
        assert wait_until(lambda: "online" in server_availability, 20), (tmp_path / "server.log").read_text()
        reader.badge("0F00A1B2C3")
        assert wait_until(lambda: any(s["doors"]["lobby_in"]["relay"] for s in states), 5), \
            (tmp_path / "edge.log").read_text()

        def stored() -> list:
            with sqlite3.connect(data / "doorkeep.db") as db:
                return db.execute("SELECT reason, person FROM events WHERE type = 'access'").fetchall()
        assert wait_until(lambda: ("granted", "alice") in stored(), 10)
        # The edge verified and kept the server's signed policy for the day the server is away.
        assert wait_until(lambda: (tmp_path / "edge-state" / "policy.json").exists(), 10)
        said = [notify.recv(256).decode() for _ in range(3)]
        assert said[0] == "READY=1" and "WATCHDOG=1" in said[1:], said
    finally:
        edge.send_signal(signal.SIGTERM)
        edge_rc = edge.wait(15)
        server.send_signal(signal.SIGTERM)
        server_rc = server.wait(15)
        watcher.loop_stop()
        reader.close()
        camera.stop()
    assert edge_rc == 0 and server_rc == 0
    assert wait_until(lambda: availability and availability[-1] == "stopped", 5)
    assert states and not states[-1]["doors"]["lobby_in"]["relay"], "last retained state must show the relay off"


def test_edge_refuses_a_broken_device_file_with_file_key_and_fix(tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    device = site / "devices" / "pi-lobby.toml"
    device.write_text(device.read_text().replace("lock = { pin = 17,", "lock = {"))
    proc = subprocess.run([sys.executable, "-m", "doorkeep", "edge", "--device", str(device)],
                          capture_output=True, text=True, timeout=60, env={**os.environ})
    assert proc.returncode == 2
    assert "pi-lobby.toml" in proc.stderr and "doors.lobby_in.lock.pin" in proc.stderr and "fix:" in proc.stderr


def test_desk_command_tells_systemd_it_is_ready_and_pings_the_watchdog(mosquitto, tmp_path: Path) -> None:
    """firmware-config/systemd/doorkeep-desk.service is Type=notify with WatchdogSec=: the desk must say READY=1
    once it listens, keep pinging while it lives, and say STOPPING=1 on SIGTERM (else systemd kills a healthy
    desk every period, or never restarts a hung one)."""
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    generate_key_file(site / "keys" / "credential.key")
    init_data_keys(site / "keys")
    signing = subprocess.run([sys.executable, "-m", "doorkeep", "key", "init-signing",
                              str(site / "keys" / "policy-signing.key")], capture_output=True, text=True, timeout=60)
    assert signing.returncode == 0, signing.stderr
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(20)
    pki = mosquitto.pki
    desk = doorkeep("desk", "--site", str(site), "--data", str(tmp_path / "data"), "--broker", mosquitto.url,
                    "--ca", str(pki / "ca.crt"), "--cert", str(pki / "server.crt"), "--key", str(pki / "server.key"),
                    "--port", str(port), log=tmp_path / "desk.log",
                    env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"})
    try:
        said = [notify.recv(256).decode() for _ in range(3)]
        assert said[0] == "READY=1" and said[1:] == ["WATCHDOG=1", "WATCHDOG=1"], \
            (said, (tmp_path / "desk.log").read_text())
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # READY=1 came once it listens
    finally:
        desk.send_signal(signal.SIGTERM)
        rc = desk.wait(20)
    rest = []
    notify.settimeout(2)
    try:
        while True:
            rest.append(notify.recv(256).decode())
    except TimeoutError:
        pass
    notify.close()
    assert rc == 0, (tmp_path / "desk.log").read_text()
    assert "STOPPING=1" in rest
