"""The systemd units ship the settings the safe-state promises rest on (README, docs/faults.md).

A unit that lost ``Type=notify`` or ``WatchdogSec`` would still start; it would just never restart a hung
agent. ``systemd-analyze verify`` (where installed) also checks each unit loads: sections, values, the
command line.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "firmware-config" / "systemd"


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(UNITS / name)
    return parser


@pytest.mark.parametrize("name, watchdog_s", [("doorkeep-edge@.service", 10), ("doorkeep-server.service", 30)])
def test_units_restart_a_hung_process_and_stop_it_with_sigterm(name: str, watchdog_s: int) -> None:
    service = _unit(name)["Service"]
    assert service["Type"] == "notify", "READY=1 and WATCHDOG=1 are only heard from a Type=notify service"
    assert service["WatchdogSec"] == f"{watchdog_s}s"
    assert service["Restart"] == "always", "a watchdog kill or a crash must bring the process back"
    assert service["KillSignal"] == "SIGTERM", "SIGTERM is what de-energises the relays and says 'stopped'"
    assert "--log-level" in service["ExecStart"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_both_units(tmp_path: Path) -> None:
    doorkeep = Path(sys.executable).with_name("doorkeep")
    for src, dest in (("doorkeep-edge@.service", "doorkeep-edge@pi-lobby.service"),
                      ("doorkeep-server.service", "doorkeep-server.service")):
        text = (UNITS / src).read_text().replace("/opt/doorkeep/bin/doorkeep", str(doorkeep))
        (tmp_path / dest).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "doorkeep" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.glob("*.service")))
def test_every_unit_creates_its_files_private_to_the_service_account(name: str) -> None:
    """UMask=0077: the store, snapshots, outbox and policy cache a service creates are 0600 in 0700 directories,
    whatever umask systemd would otherwise hand down (0022): no other local account reads visitors' names."""
    assert _unit(name)["Service"].get("UMask") == "0077"
