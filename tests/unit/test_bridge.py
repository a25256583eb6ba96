"""`doorkeep pki issue bridge-B --role bridge --device …` and `doorkeep broker config --bridge B=HOST:PORT`:
the bridge section and the campus ACL come from one list of devices (tests/e2e/test_bridge.py runs them)."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from doorkeep.bridge import BridgeError, bridge_section, parse_bridge
from doorkeep.cli import main
from doorkeep.pki import BRIDGE, PkiError, broker_acl, certificate_inventory, init_ca, issue, live_bridges, pki_dir
from doorkeep.sites import DEMO_SITE

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    p = tmp_path / "pki"
    init_ca(p, "demo", now=NOW)
    return p


def test_parse_bridge_reads_building_host_and_port_and_refuses_anything_else() -> None:
    assert parse_bridge("east=campus.example:8883") == ("east", "campus.example", 8883)
    assert parse_bridge("east=[::1]:8883") == ("east", "::1", 8883)
    for bad in ("east", "east=campus", "east=campus:0", "east=campus:x", "ea st=campus:8883", "=campus:8883"):
        with pytest.raises(BridgeError, match="fix"):
            parse_bridge(bad)


def test_bridge_section_carries_each_device_both_ways_qos1_with_a_persistent_verified_session(tmp_path: Path) -> None:
    text = bridge_section("demo", "east", "campus.example", 8883, ["pi-b", "pi-a"], tmp_path)
    lines = text.splitlines()
    assert "connection bridge-east" in lines and "remote_clientid bridge-east" in lines
    assert "address campus.example:8883" in lines
    assert "cleansession false" in lines and "bridge_insecure false" in lines
    assert "notifications_local_only true" in lines
    assert f"bridge_certfile {tmp_path.resolve() / 'bridge-east.crt'}" in lines
    assert [l for l in lines if l.startswith("topic ")] == [
        "topic doorkeep/v1/demo/pi-a/# both 1", "topic doorkeep/v1/demo/pi-b/# both 1",
        "topic doorkeep/v1/demo/server/availability in 1"]
    with pytest.raises(BridgeError, match="carries nothing"):
        bridge_section("demo", "east", "h", 1, [], tmp_path)


def test_issue_records_a_bridges_devices_and_refuses_a_bridge_without_devices_or_devices_without_a_bridge(
        pki: Path) -> None:
    with pytest.raises(PkiError, match="only a bridge"):
        issue(pki, "bridge-east", now=NOW, role=BRIDGE, devices=["pi-a"])
    with pytest.raises(PkiError, match="only a bridge"):
        issue(pki, "ha", now=NOW, role="integration", devices=["pi-a"], bridged=["pi-a"])
    with pytest.raises(PkiError, match="not a device"):
        issue(pki, "bridge-east", now=NOW, role=BRIDGE, devices=["pi-a"], bridged=["pi-z"])
    with pytest.raises(PkiError, match="device id"):
        issue(pki, "pi-a", now=NOW, role=BRIDGE, devices=["pi-a"], bridged=["pi-a"])
    with pytest.raises(PkiError, match="named bridge-BUILDING"):
        issue(pki, "east", now=NOW, role=BRIDGE, devices=["pi-a"], bridged=["pi-a"])
    with pytest.raises(PkiError, match="named bridge-BUILDING"):
        issue(pki, "bridge-ha", now=NOW, role="integration", devices=["pi-a"])
    issue(pki, "bridge-east", now=NOW, role=BRIDGE, devices=["pi-a", "pi-b"], bridged=["pi-b", "pi-a"])
    assert live_bridges(pki) == {"bridge-east": ("pi-a", "pi-b")}
    assert [c.role for c in certificate_inventory(pki) if c.name == "bridge-east"] == [BRIDGE]


def test_campus_acl_gives_a_bridge_its_buildings_devices_only() -> None:
    acl = broker_acl("demo", bridges={"bridge-east": ["pi-a"]})
    block = acl.split("user bridge-east\n")[1].split("\n\n")[0].splitlines()
    assert block == ["topic deny doorkeep/v1/demo/bridge-east/#", "topic readwrite doorkeep/v1/demo/pi-a/#",
                     "topic read doorkeep/v1/demo/server/availability"]
    with pytest.raises(PkiError, match="one site"):
        broker_acl({"demo": ["pi-a"]}, bridges={"bridge-east": ["pi-a"]})


def test_broker_config_bridge_needs_a_live_bridge_certificate(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site)
    for args in (["pki", "init"], ["pki", "issue", "broker"]):
        assert main([*args, "--site", str(site)]) == 0
    out = tmp_path / "b"
    argv = ["broker", "config", "--site", str(site), "--out", str(out), "--persistence", str(tmp_path)]
    assert main([*argv, "--bridge", "east=campus:8883"]) == 1
    assert "no live bridge certificate for building east" in capsys.readouterr().err
    assert main(["pki", "issue", "pi-lobby", "--device", "pi-lobby", "--site", str(site)]) == 1
    assert "--device applies to bridges only" in capsys.readouterr().err
    assert main(["pki", "issue", "bridge-east", "--role", "bridge", "--device", "pi-lobby", "--site", str(site)]) == 0
    assert main([*argv, "--bridge", "east=campus:8883"]) == 0
    conf = (out / "mosquitto.conf").read_text()
    assert "connection bridge-east" in conf and "topic doorkeep/v1/demo/pi-lobby/# both 1" in conf
    assert "user bridge-east" in (out / "acl").read_text()
    assert pki_dir(site).is_dir()
