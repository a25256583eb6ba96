"""Every shipped scenario through the real stack, and the `doorkeep sim run` command's contract.

Each scenario runs on its own site with its own private broker (scenarios
stop and restart brokers and servers, and the server keeps a persistent MQTT
session, so sharing the session's broker would let one scenario's queued
events leak into the next).

Scenarios that wait on a piece of the system still being built are listed in
PENDING with what exactly they need. They are reported as xfail and not run
(they would each spend a few seconds waiting on expectations that cannot
hold yet); run them with DOORKEEP_RUN_PENDING=1 to see where they stand —
strictly, so one that starts passing fails until it leaves PENDING.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from simulators.scenario import load_scenario, run_scenario

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "simulators" / "scenarios"
HQ = ROOT / "firmware-config" / "sites" / "hq"

PENDING: dict[str, str] = {}
RUN_PENDING = os.environ.get("DOORKEEP_RUN_PENDING") == "1"


def _params() -> list[object]:
    params = []
    for path in sorted(SCENARIOS.glob("*.yaml")):
        marks = []
        if path.name in PENDING:
            marks.append(pytest.mark.xfail(reason=f"waits on {PENDING[path.name]}", run=RUN_PENDING, strict=True))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


def test_pending_scenarios_exist() -> None:
    missing = [name for name in PENDING if not (SCENARIOS / name).exists()]
    assert not missing, f"PENDING names scenarios that do not exist: {missing}"


@pytest.mark.parametrize("path", _params())
def test_shipped_scenario_passes(path: Path) -> None:
    out = io.StringIO()
    result = run_scenario(load_scenario(path), out=out)
    assert result.passed, out.getvalue()
    assert result.checks and all(c.status == "pass" for c in result.checks)


def sim_run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "doorkeep", "sim", "run", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)


WRONG = f"""\
name: A deliberately wrong expectation
site: {HQ}
start: "2026-03-02 09:30"
steps:
  - badge: floor3_in
    person: bob
  - expect_decision: floor3_in
    reason: granted
    within: 1s
  - expect_relay: floor3_in
    energised: false
"""


def test_a_wrong_expectation_exits_1_prints_expected_and_actual_and_lands_in_junit(tmp_path: Path) -> None:
    scenario = tmp_path / "wrong.yaml"
    scenario.write_text(WRONG)
    report = tmp_path / "report.xml"
    proc = sim_run(scenario, "--junit", report)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert "expect decision at floor3_in: reason granted ... FAIL" in out
    assert "expected: reason granted" in out
    assert "actual:   denied, reason no_access, person bob, by server" in out
    assert f"({scenario}:7)" in out
    assert "expect relay of floor3_in not energised ... PASS" in out
    assert "FAIL  A deliberately wrong expectation: 1 of 2 expectations failed" in out

    root = ET.parse(report).getroot()  # well-formed, or this raises
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("2", "1", "0")
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "A deliberately wrong expectation"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["step 2: expect decision at floor3_in: reason granted",
                                              "step 3: expect relay of floor3_in not energised"]
    failure = cases[0].find("failure")
    assert failure is not None and cases[1].find("failure") is None
    assert "expected reason granted; actual denied, reason no_access" in failure.get("message", "")
    assert "badge floor3_in" in (suite.findtext("system-out") or "")


def test_an_invalid_file_exits_2_naming_file_step_and_fix_and_runs_nothing(tmp_path: Path) -> None:
    scenario = tmp_path / "invalid.yaml"
    scenario.write_text(WRONG.replace("    person: bob\n", "    persn: bob\n"))
    report = tmp_path / "report.xml"
    proc = sim_run(scenario, SCENARIOS / "basic_access.yaml", "--junit", report)
    assert proc.returncode == 2
    assert f"{scenario}:6: step 1 (badge): unknown key `persn` for `badge` (fix: did you mean `person`?)" in proc.stderr
    assert "nothing was run" in proc.stderr
    assert "scenario:" not in proc.stdout
    error = ET.parse(report).getroot().find("testsuite/testcase/error")
    assert error is not None and "persn" in (error.text or "")


def test_a_passing_scenario_on_the_default_demo_site_exits_0(tmp_path: Path) -> None:
    scenario = tmp_path / "demo.yaml"
    scenario.write_text(
        'name: Demo site default\nstart: "2026-03-02 09:00"\nsteps:\n'
        "  - badge: lobby_in\n    person: alice\n    walk_through: true\n"
        "  - expect_decision: lobby_in\n    reason: granted\n"
        "  - expect_relay: lobby_in\n    energised: false\n"
        "  - settle\n"
        "  - expect_event: door_closed\n    door: lobby_in\n    count: 1\n")
    proc = sim_run(scenario)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "site demo" in proc.stdout and "PASS  Demo site default: 3 of 3 expectations passed" in proc.stdout


def test_an_action_that_cannot_run_stops_the_scenario_and_skips_the_rest(tmp_path: Path) -> None:
    scenario = tmp_path / "error.yaml"
    scenario.write_text(
        f'name: Forcing an unlocked door\nsite: {HQ}\nstart: "2026-03-02 09:00"\nsteps:\n'
        "  - badge: main_out\n    person: alice\n"
        "  - force: main_out\n"
        "  - expect_alarm: main_out\n    type: forced_open\n")
    out = io.StringIO()
    result = run_scenario(load_scenario(scenario), out=out)
    assert not result.passed
    assert [c.status for c in result.checks] == ["error", "skipped"]
    assert "is unlocked (relay energised), so opening it is not forcing it" in out.getvalue()
    assert "the remaining steps are not run" in out.getvalue()
