"""Plain MQTT is refused unless explicitly allowed, and loudly logged when it is (issue 5, docs/security.md).

The session broker speaks only mutual TLS; these tests start a private plain Mosquitto on loopback to
show what the development flag lets through and what it costs (a WARNING at every start).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.cli import main
from doorkeep.config import BrokerConfig, check, load_device, load_site_dir
from doorkeep.envelope import SnapshotKeys
from doorkeep.errors import ConfigError
from doorkeep.pki import check_transport
from edge.link import Link
from server.app import bootstrap
from simulators.brokers import MosquittoBroker, subscribed_client
from simulators.site import DEMO_SITE, SiteRunner, mosquitto_installed
from tests.conftest import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not mosquitto_installed(), reason="mosquitto is not installed")]

WARNING_TAIL = "development only; anyone on the network can read and forge door traffic"


@pytest.fixture(scope="module")
def plain() -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker().start()  # the built-in plain listener on 127.0.0.1
    assert broker.url.startswith("mqtt://")
    yield broker
    broker.stop()


def plain_device_file(tmp_path: Path, url: str, extra: str = "") -> Path:
    """A copy of the demo site whose pi-lobby speaks plain MQTT (no TLS files), plus ``extra`` in [broker]."""
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    device = site / "devices" / "pi-lobby.toml"
    lines = [line for line in device.read_text().splitlines(keepends=True)
             if not line.startswith(("ca_file", "cert_file", "key_file"))]
    text = "".join(lines).replace('url = "mqtts://broker.example.internal:8883"', f'url = "{url}"{extra}', 1)
    assert f'url = "{url}"' in text
    device.write_text(text)
    return device


# ------------------------------------------------------------- the core rule


def test_plain_url_is_refused_without_the_flag_naming_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        check_transport(BrokerConfig("mqtt://127.0.0.1:1883"))  # loopback is no exception either
    message = str(err.value)
    assert "plain MQTT without TLS is refused" in message
    assert "mqtts://" in message and "allow_plain_mqtt = true" in message and "--allow-plain-mqtt" in message


def test_the_flag_turns_the_refusal_into_the_warning_text() -> None:
    warning = check_transport(BrokerConfig("mqtt://10.0.0.5:1884", allow_plain=True))
    assert warning == f"plain MQTT without TLS to 10.0.0.5:1884: {WARNING_TAIL}"
    assert check_transport(BrokerConfig("mqtts://b:8883")) is None


def test_device_file_flag_allows_plain_and_is_an_error_with_tls(tmp_path: Path) -> None:
    device = plain_device_file(tmp_path, "mqtt://127.0.0.1:1883", "\nallow_plain_mqtt = true")
    dev, _ = load_device(device)
    assert dev.broker.allow_plain and not dev.broker.tls
    assert check_transport(dev.broker) is not None

    off = plain_device_file(tmp_path / "off", "mqtt://127.0.0.1:1883")
    assert load_device(off)[0].broker.allow_plain is False

    bad = plain_device_file(tmp_path / "bad", "mqtt://127.0.0.1:1883", '\nallow_plain_mqtt = "yes"')
    assert [e.key for e in check(bad)] == ["broker.allow_plain_mqtt"]

    tls = tmp_path / "tls" / "site"
    shutil.copytree(DEMO_SITE, tls)
    f = tls / "devices" / "pi-floor7.toml"
    f.write_text(f.read_text().replace("[broker]\n", "[broker]\nallow_plain_mqtt = true\n", 1))
    errors = [e for e in check(f) if e.key == "broker.allow_plain_mqtt"]
    assert errors and "no effect with an mqtts:// URL" in errors[0].problem


# ------------------------------------------------------------- the clients


def test_edge_link_refuses_plain_before_connecting_and_warns_once_with_the_flag(
        plain: MosquittoBroker, caplog: pytest.LogCaptureFixture) -> None:
    def link(broker: BrokerConfig) -> Link:
        return Link("t", "pi-x", broker, on_decision=lambda door, payload: None, state_payload=lambda: b"{}")

    with pytest.raises(ConfigError, match="plain MQTT without TLS is refused"):
        link(BrokerConfig(plain.url))
    caplog.set_level(logging.WARNING, logger="doorkeep.edge.link")
    allowed = link(BrokerConfig(plain.url, allow_plain=True))
    allowed.start()
    try:
        assert allowed.wait_connected(10)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and WARNING_TAIL in r.getMessage()]
        assert len(warnings) == 1 and f"127.0.0.1:{plain.port}" in warnings[0].getMessage()
    finally:
        allowed.stop()


def test_server_bus_refuses_plain_at_start_and_warns_with_the_flag(
        plain: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = {"key": secrets.token_bytes(32), "signing_key": Ed25519PrivateKey.generate(),
            "snapshot_keys": SnapshotKeys.generate()}
    bundle = load_site_dir(DEMO_SITE)
    refused = bootstrap(bundle, tmp_path / "a", BrokerConfig(plain.url), **keys)
    try:
        with pytest.raises(ConfigError, match="plain MQTT without TLS is refused"):
            refused.start()
        assert not refused.bus.connected
    finally:
        refused.store.close()
    caplog.set_level(logging.WARNING, logger="doorkeep.server.bus")
    server = bootstrap(bundle, tmp_path / "b", BrokerConfig(plain.url, allow_plain=True), **keys)
    server.start()
    try:
        assert server.bus.wait_connected(10)
        assert [r.getMessage() for r in caplog.records if WARNING_TAIL in r.getMessage()] == \
            [f"server: plain MQTT without TLS to 127.0.0.1:{plain.port}: {WARNING_TAIL}"]
    finally:
        server.stop()


def test_site_runner_allows_plain_only_for_its_own_embedded_broker_or_with_allow_plain(plain: MosquittoBroker) -> None:
    external = SiteRunner.from_dir(DEMO_SITE, broker_url=plain.url)
    assert not external.broker_config("server").allow_plain
    with pytest.raises(ConfigError):
        check_transport(external.broker_config("pi-lobby"))
    assert SiteRunner.from_dir(DEMO_SITE, broker_url=plain.url, allow_plain=True).broker_config("server").allow_plain
    own = SiteRunner.from_dir(DEMO_SITE)  # the demo: its embedded amqtt broker on loopback
    own.start(with_server=False)
    try:
        assert own.broker_url is not None and own.broker_url.startswith("mqtt://127.0.0.1:")
        assert own.wait_connected(10)
    finally:
        own.stop()


# ------------------------------------------------------------- the commands


@pytest.mark.parametrize("argv", [
    ["server", "--broker", "mqtt://127.0.0.1:1"],
    ["desk", "--broker", "mqtt://127.0.0.1:1", "--port", "1"],
    ["door", "unlock", "lab", "--broker", "mqtt://127.0.0.1:1"],
    ["lockdown", "on", "--broker", "mqtt://127.0.0.1:1"],
])
def test_server_side_commands_refuse_a_plain_broker_without_the_flag(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    (site / "keys").mkdir(exist_ok=True)
    assert main(["key", "init-signing", str(site / "keys" / "policy-signing.key")]) == 0
    capsys.readouterr()
    assert main([*argv, "--site", str(site), "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "plain MQTT without TLS is refused" in err and "--allow-plain-mqtt" in err, err
    assert not (tmp_path / "data").exists(), "refused before any store was opened"


def test_server_side_commands_default_to_mutual_tls_with_the_sites_pki(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from doorkeep.cli import build_parser
    from server.cli import broker_config

    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    args = build_parser().parse_args(["server", "--site", str(site)])
    broker = broker_config(args)
    assert (broker.url, broker.tls, broker.allow_plain) == ("mqtts://127.0.0.1:8883", True, False)
    assert (broker.ca_file, broker.cert_file, broker.key_file) == (
        site / "pki" / "ca.crt", site / "pki" / "server.crt", site / "pki" / "server.key")
    (site / "keys").mkdir(exist_ok=True)
    assert main(["key", "init-signing", str(site / "keys" / "policy-signing.key")]) == 0
    capsys.readouterr()
    assert main(["lockdown", "on", "--site", str(site), "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert f"{site / 'pki' / 'ca.crt'}: broker.ca_file: file not found" in err, err


def test_edge_command_refuses_a_plain_device_file_before_touching_hardware(tmp_path: Path) -> None:
    device = plain_device_file(tmp_path, "mqtt://127.0.0.1:1")
    proc = subprocess.run([sys.executable, "-m", "doorkeep", "edge", "--device", str(device)],
                          capture_output=True, text=True, timeout=60, env={**os.environ})
    assert proc.returncode == 2
    assert "mqtt://127.0.0.1:1: broker.url: plain MQTT without TLS is refused" in proc.stderr
    assert "allow_plain_mqtt = true" in proc.stderr


def test_server_command_with_the_flag_runs_on_plain_mqtt_and_logs_the_warning_once(
        plain: MosquittoBroker, tmp_path: Path) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    keys = site / "keys"
    assert main(["key", "init", str(keys / "credential.key")]) == 0
    assert main(["key", "init-signing", str(keys / "policy-signing.key")]) == 0
    assert main(["key", "init-data", str(site)]) == 0
    seen: list[bytes] = []
    watcher = subscribed_client("127.0.0.1", plain.port, f"w-{secrets.token_hex(3)}",
                                "doorkeep/v1/demo/server/availability", lambda c, u, m: seen.append(m.payload))
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "doorkeep", "server", "--site", str(site), "--data",
                                 str(tmp_path / "data"), "--broker", plain.url, "--allow-plain-mqtt"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: b"online" in seen, 20), log.read_text()
    finally:
        proc.terminate()
        proc.wait(15)
        watcher.loop_stop()
        watcher.disconnect()
    text = log.read_text()
    assert text.count(WARNING_TAIL) == 1, text
    assert f"WARNING doorkeep.server.bus: server: plain MQTT without TLS to 127.0.0.1:{plain.port}" in text


def test_sim_run_on_an_external_plain_broker_needs_the_flag(plain: MosquittoBroker, tmp_path: Path) -> None:
    import io

    from simulators.scenario import run_files

    scenario = Path(__file__).resolve().parents[2] / "simulators" / "scenarios" / "basic_access.yaml"
    out = io.StringIO()
    assert run_files([scenario], broker_url=plain.url, out=out, err=out) == 1
    assert "plain MQTT without TLS is refused" in out.getvalue(), out.getvalue()
    out = io.StringIO()
    assert run_files([scenario], broker_url=plain.url, out=out, err=out, allow_plain=True) == 0, out.getvalue()
    assert f"external broker {plain.url}" in out.getvalue()
