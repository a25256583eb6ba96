"""The systemd units ship the settings the safe-state promises rest on (README, docs/faults.md, docs/deploy.md).

A unit that lost ``Type=notify`` or ``WatchdogSec`` would still start; it would just never restart a hung
agent. A unit "hardened" with ``PrivateDevices=yes`` would start too, and its edge would never reach a GPIO.
So the settings are pinned here, each with the reason it matters, and three systemd tools check the files:

- ``systemd-analyze verify`` loads every unit (sections, values, the command line). It insists that the
  ExecStart binary exists, so each unit is copied to a temporary directory with ``/opt/doorkeep/bin/doorkeep``
  replaced by the ``doorkeep`` of the interpreter running the tests (the same console script a
  ``pip install`` into /opt/doorkeep makes); nothing else of the unit changes. The Mosquitto drop-in is
  verified on top of Debian's own ``mosquitto.service``, as it will run.
- ``systemd-analyze security --offline=yes`` scores each unit's sandbox, so a lost option shows as a number.
- ``systemd-sysusers`` and ``systemd-tmpfiles`` apply the shipped files to a temporary root (``--root``):
  systemd 252's tmpfiles has no ``--dry-run``, and sysusers' dry run does not show group members.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "firmware-config" / "systemd"
DROPIN = UNITS / "mosquitto.service.d" / "doorkeep.conf"
SERVICES = sorted(p.name for p in UNITS.glob("*.service"))
DEBIAN_MOSQUITTO = Path("/lib/systemd/system/mosquitto.service")
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

#: the module whose command each unit runs, to tie the notify settings to what the process sends
COMMAND_SOURCES = {"server": "server/cli.py", "edge": "edge/cli.py", "desk": "server/web/cli.py"}


def _entries(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Every ``Key=value`` of a unit file by section, repeats kept in order (DeviceAllow=, ExecStart= …)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections.setdefault(current, [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not a Key=value line: {raw!r}"
        sections[current].append((key.strip(), value.strip()))
    return sections


def _values(path: Path, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in _entries(path).get(section, []) if k == key]


def _last(path: Path, key: str, section: str = "Service") -> str | None:
    values = _values(path, key, section)
    return values[-1] if values else None


def _doorkeep_command(name: str) -> str:
    """The doorkeep subcommand of a unit's ExecStart (``server``, ``edge``, ``desk``)."""
    words = (_last(UNITS / name, "ExecStart") or "").split()
    return next(w for w in words[1:] if not w.startswith("-") and w.isalpha() and w != "INFO")


def _with_test_binary(src: Path, dest: Path) -> None:
    doorkeep = Path(sys.executable).with_name("doorkeep")
    assert doorkeep.exists(), f"{doorkeep}: the tests' interpreter has no doorkeep console script"
    dest.write_text(src.read_text().replace("/opt/doorkeep/bin/doorkeep", str(doorkeep)))


def _instance(name: str) -> str:
    return name.replace("@.service", "@pi-lobby.service")


# ------------------------------------------------------------------ notify, watchdog, restart


@pytest.mark.parametrize("name, watchdog_s", [("doorkeep-edge@.service", 10), ("doorkeep-server.service", 30)])
def test_units_restart_a_hung_process_and_stop_it_with_sigterm(name: str, watchdog_s: int) -> None:
    unit = UNITS / name
    assert _last(unit, "Type") == "notify", "READY=1 and WATCHDOG=1 are only heard from a Type=notify service"
    assert _last(unit, "WatchdogSec") == f"{watchdog_s}s"
    assert _last(unit, "Restart") == "always", "a watchdog kill or a crash must bring the process back"
    assert _last(unit, "KillSignal") == "SIGTERM", "SIGTERM is what de-energises the relays and says 'stopped'"
    assert "--log-level" in (_last(unit, "ExecStart") or "")


@pytest.mark.parametrize("name", SERVICES)
def test_a_unit_has_a_watchdog_exactly_when_its_process_pings_one(name: str) -> None:
    """WatchdogSec= on a process that never sends WATCHDOG=1 kills a healthy desk every period; Type=notify on
    one that never sends READY=1 fails its start. Tied to the command's own source, so a desk that learns to
    notify makes this test ask for the unit to follow."""
    source = (ROOT / COMMAND_SOURCES[_doorkeep_command(name)]).read_text()
    unit = UNITS / name
    assert (_last(unit, "Type") == "notify") == ("READY=1" in source)
    assert (_last(unit, "WatchdogSec") is not None) == ("WATCHDOG=1" in source)
    assert _last(unit, "Restart") == "always"


@pytest.mark.parametrize("path", [*(UNITS / n for n in SERVICES), DROPIN], ids=lambda p: p.name)
def test_every_unit_keeps_restarting_however_often_it_fails(path: Path) -> None:
    """The default start limit (5 starts in 10 s) would leave a crashing edge, server or broker down for good:
    an edge that stays down answers no REX button and raises no alarm."""
    assert _last(path, "StartLimitIntervalSec", "Unit") == "0"
    assert _last(path, "Restart") == "always"


def test_the_server_and_the_desk_never_run_together_on_one_store() -> None:
    """`doorkeep desk` runs the whole server: both units at once would ingest every event twice and publish
    two streams of policies from one store. Each conflicts with the other, and both use the same data."""
    server, desk = UNITS / "doorkeep-server.service", UNITS / "doorkeep-desk.service"
    assert _last(server, "Conflicts", "Unit") == "doorkeep-desk.service"
    assert _last(desk, "Conflicts", "Unit") == "doorkeep-server.service"
    for unit in (server, desk):
        command = _last(unit, "ExecStart") or ""
        assert "--site /etc/doorkeep/site --data /var/lib/doorkeep/server" in command, unit.name
        assert "mosquitto.service" in (_last(unit, "After", "Unit") or "")
    assert "--host 127.0.0.1" in (_last(desk, "ExecStart") or ""), "the desk is served to others only via a proxy"


# ------------------------------------------------------------------ sandbox


@pytest.mark.parametrize("path", [*(UNITS / n for n in SERVICES), DROPIN], ids=lambda p: p.name)
def test_every_unit_creates_its_files_private_and_runs_in_a_read_only_system(path: Path) -> None:
    """UMask=0077: the store, snapshots, outbox and policy cache a service creates are 0600 in 0700 directories,
    whatever umask systemd would otherwise hand down (0022): no other local account reads visitors' names.
    ProtectSystem=strict and NoNewPrivileges=yes: a compromised process can change neither the system nor its
    own configuration, and cannot gain privileges through a setuid program."""
    for key, want in (("UMask", "0077"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                      ("ProtectHome", "yes"), ("PrivateTmp", "yes"), ("ProtectKernelTunables", "yes"),
                      ("ProtectKernelModules", "yes"), ("SystemCallArchitectures", "native"),
                      ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6")):
        assert _last(path, key) == want, f"{path.name}: {key}={_last(path, key)!r}, want {want}"


@pytest.mark.parametrize("name", SERVICES)
def test_doorkeep_units_run_as_doorkeep_with_no_capability_and_a_private_state_directory(name: str) -> None:
    unit = UNITS / name
    assert (_last(unit, "User"), _last(unit, "Group")) == ("doorkeep", "doorkeep")
    assert _last(unit, "CapabilityBoundingSet") == "", "the devices are reached by group, never by capability"
    # The default StateDirectoryMode=0755 would chmod /var/lib/doorkeep open again at every start.
    assert (_last(unit, "StateDirectory"), _last(unit, "StateDirectoryMode")) == ("doorkeep", "0700")
    assert "/var/lib/doorkeep" in (_last(unit, "ReadWritePaths") or "").split()


def test_the_edge_reaches_its_gpio_serial_and_camera_devices_and_nothing_else() -> None:
    """What each edge device needs under the sandbox: a regression here is a Pi whose doors never open."""
    unit = UNITS / "doorkeep-edge@.service"
    assert _last(unit, "PrivateDevices") in (None, "no"), "PrivateDevices=yes hides /dev/gpiochip* and the ports"
    assert _last(unit, "DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in _values(unit, "DeviceAllow")}
    assert {"char-gpiochip", "char-ttyAMA", "char-ttyS", "char-ttyUSB", "char-ttyACM", "char-video4linux"} <= allowed
    assert all(v.split()[1] == "rw" for v in _values(unit, "DeviceAllow"))
    assert {"gpio", "dialout", "video"} <= set(" ".join(_values(unit, "SupplementaryGroups")).split())
    assert _last(unit, "ProcSubset") is None, "gpiozero reads /proc/device-tree and /proc/cpuinfo"
    assert _last(unit, "PrivateUsers") in (None, "no"), "PrivateUsers maps gpio/dialout/video to nobody"
    # lgpio makes its notification FIFO in $LG_WD (else the working directory, read-only here): it must be a
    # directory the service may write.
    runtime = _last(unit, "RuntimeDirectory")
    assert runtime and f"LG_WD=%t/{runtime}" in _values(unit, "Environment")
    # The device groups are resolved at start: the USB serial and video modules are loaded before it.
    for module in ("usbserial", "cdc_acm", "videodev"):
        assert f"modprobe@{module}.service" in (_last(unit, "After", "Unit") or "").split()


def test_the_broker_drop_in_runs_the_generated_configuration_with_the_fewest_capabilities() -> None:
    start = _values(DROPIN, "ExecStart")
    assert start[0] == "", "an empty ExecStart= first, or Debian's command line would run as well"
    assert start[1:] == ["/usr/sbin/mosquitto -c /etc/doorkeep/site/broker/mosquitto.conf"]
    caps = set((_last(DROPIN, "CapabilityBoundingSet") or "").split())
    assert caps == {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_SETGID", "CAP_SETUID"}
    assert set((_last(DROPIN, "ReadWritePaths") or "").split()) == {"/var/lib/mosquitto", "/var/log/mosquitto"}
    # Debian's ExecStartPre creates /run/mosquitto, read-only under ProtectSystem=strict without this.
    assert _last(DROPIN, "RuntimeDirectory") == "mosquitto"


# ------------------------------------------------------------------ systemd's own checks


def _verify_dir(tmp_path: Path) -> list[Path]:
    units = []
    for name in SERVICES:
        dest = tmp_path / _instance(name)
        _with_test_binary(UNITS / name, dest)
        units.append(dest)
    return units


@needs_analyze
def test_systemd_analyze_verifies_every_unit(tmp_path: Path) -> None:
    units = _verify_dir(tmp_path)
    proc = subprocess.run([ANALYZE, "verify", "--man=no", *map(str, units)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    # verify exits 0 on an unknown key or a bad value: it only warns, naming the file.
    assert str(tmp_path) not in proc.stderr and "doorkeep" not in proc.stderr, proc.stderr


@needs_analyze
@pytest.mark.skipif(not DEBIAN_MOSQUITTO.exists() or not Path("/usr/sbin/mosquitto").exists(),
                    reason="Debian's mosquitto package is not installed")
def test_systemd_analyze_verifies_the_broker_drop_in_on_debians_unit(tmp_path: Path) -> None:
    shutil.copy(DEBIAN_MOSQUITTO, tmp_path / "mosquitto.service")
    (tmp_path / "mosquitto.service.d").mkdir()
    shutil.copy(DROPIN, tmp_path / "mosquitto.service.d" / "doorkeep.conf")
    proc = subprocess.run([ANALYZE, "verify", "--man=no", str(tmp_path / "mosquitto.service")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(tmp_path) not in proc.stderr, proc.stderr
    # The drop-in was read: its sandbox brings Debian's unit from "UNSAFE" to a low exposure.
    proc = subprocess.run([ANALYZE, "security", "--offline=yes", "--threshold=35", "--no-pager",
                           str(tmp_path / "mosquitto.service")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-400:]


@needs_analyze
@pytest.mark.parametrize("name", SERVICES)
def test_systemd_analyze_scores_each_sandbox_low(name: str, tmp_path: Path) -> None:
    """systemd's own exposure score (0 = locked down, 10 = none): 1.7 to 1.9 for these units on systemd 252.
    Losing a handful of options (ProtectSystem, CapabilityBoundingSet, the syscall filter) pushes it past 2.5."""
    unit = tmp_path / _instance(name)
    _with_test_binary(UNITS / name, unit)
    proc = subprocess.run([ANALYZE, "security", "--offline=yes", "--threshold=25", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-600:]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
                    reason="systemd-sysusers / systemd-tmpfiles are not installed")
@pytest.mark.skipif(os.geteuid() != 0, reason="creating files owned by doorkeep in a temporary root needs root")
def test_sysusers_and_tmpfiles_make_the_user_its_groups_and_private_directories(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    sysusers = [str(UNITS / "doorkeep.sysusers"), str(UNITS / "doorkeep-pi.sysusers")]
    dry = subprocess.run(["systemd-sysusers", "--dry-run", f"--root={root}", *sysusers], capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0 and not any(f in dry.stderr for f in sysusers), dry.stderr
    assert not (root / "etc" / "passwd").exists(), "a dry run writes nothing"
    proc = subprocess.run(["systemd-sysusers", f"--root={root}", *sysusers], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()}
    user = passwd["doorkeep"]
    assert (user[5], user[6]) == ("/var/lib/doorkeep", "/usr/sbin/nologin"), "no login shell; home = state"
    assert int(user[2]) < 1000, "a system account"
    members = {line.split(":")[0]: line.split(":")[3].split(",") for line in
               (root / "etc" / "group").read_text().splitlines()}
    for group in ("gpio", "dialout", "video"):
        assert "doorkeep" in members[group], group

    proc = subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}", str(UNITS / "doorkeep.tmpfiles")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    uid, gid = int(user[2]), int(user[3])
    for path, mode, owner in (("etc/doorkeep", 0o750, (0, gid)), ("var/lib/doorkeep", 0o700, (uid, gid)),
                              ("var/backups/doorkeep", 0o700, (uid, gid))):
        st = (root / path).stat()
        assert (st.st_mode & 0o7777, (st.st_uid, st.st_gid)) == (mode, owner), path
    assert not (root / "var" / "log" / "doorkeep").exists(), "doorkeep logs to the journal"


def test_every_shipped_file_is_in_the_deploy_guide() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    shipped = [p.name for p in UNITS.iterdir() if p.is_file()] + ["mosquitto.service.d/doorkeep.conf"]
    missing = [name for name in shipped if name not in guide]
    assert not missing, f"firmware-config/systemd files docs/deploy.md does not mention: {missing}"
    options = set(re.findall(r"^([A-Z][A-Za-z]+)=", "\n".join(
        (UNITS / n).read_text() for n in SERVICES) + DROPIN.read_text(), re.M))
    undocumented = sorted(o for o in options if f"`{o}=" not in guide)
    assert not undocumented, f"unit options docs/deploy.md does not explain: {undocumented}"
