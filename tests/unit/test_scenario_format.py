"""The scenario loader: strict validation with file, line, step and fix, without running a site."""

from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from doorkeep.clock import FakeClock
from simulators.clock import ScenarioClock
from simulators.scenario import (
    VERBS,
    Check,
    Scenario,
    ScenarioErrors,
    ScenarioResult,
    Step,
    expand,
    format_duration,
    junit_xml,
    load_scenario,
    parse_duration,
    run_files,
)

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "simulators" / "scenarios"
HQ = ROOT / "firmware-config" / "sites" / "hq"
DOC = (ROOT / "docs" / "scenarios.md").read_text()

HEAD = 'name: test\nsite: {site}\nstart: "2026-03-02 09:00"\nsteps:\n'


def write(tmp_path: Path, steps: str, *, head: str = HEAD, site: Path = HQ) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(head.format(site=site) + steps)
    return path


def problems(path: Path, *, check_site: bool = True) -> list[str]:
    with pytest.raises(ScenarioErrors) as exc:
        load_scenario(path, check_site=check_site)
    return [str(e) for e in exc.value.errors]


def only(path: Path, *, check_site: bool = True) -> str:
    found = problems(path, check_site=check_site)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- valid files


def test_a_valid_file_loads_with_its_steps_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - badge: vault_in\n    person: alice\n    pin: \"2468\"\n"
        "  - advance: 1h30m\n"
        "  - settle\n"
        "  - lockdown: on\n    area: archive\n"
        "  - expect_decision: vault_in\n    reason: awaiting_second_person\n    person: null\n    within: 2s\n"
    ))
    sc = load_scenario(path)
    assert sc.name == "test" and sc.site_dir == HQ
    assert [s.verb for s in sc.steps] == ["badge", "advance", "settle", "lockdown", "expect_decision"]
    badge, advance, settle, lockdown, expect = sc.steps
    assert badge.subject == "vault_in" and badge.options == {"person": "alice", "pin": "2468"}
    assert advance.subject == 5400.0
    assert settle.subject is None
    assert lockdown.subject is True and lockdown.options["area"] == "archive"
    assert expect.options["person"] is None and expect.options["within"] == 2.0
    assert expect.expectation and not badge.expectation
    assert [s.number for s in sc.steps] == [1, 2, 3, 4, 5]
    assert badge.line == 5


def test_the_site_defaults_to_the_demo_site(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text('name: demo\nstart: "2026-03-02 09:00"\nsteps:\n  - badge: lobby_in\n    person: alice\n')
    assert load_scenario(path).site_dir.name == "demo"


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_scenario_is_valid_against_its_site(path: Path) -> None:
    sc = load_scenario(path)
    assert sc.steps and any(s.expectation for s in sc.steps)


def test_at_least_a_dozen_scenarios_ship() -> None:
    assert len(list(SCENARIOS.glob("*.yaml"))) >= 12


# ------------------------------------------------------------ shape problems


def test_unknown_top_level_key_names_the_closest_one(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text('name: x\nsit: ../x\nstart: "2026-03-02 09:00"\nsteps:\n  - settle\n')
    assert only(path, check_site=False) == f"{path}:2: unknown key `sit` (fix: did you mean `site`?)"


def test_missing_required_keys_are_each_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("description: nothing else\n")
    found = problems(path, check_site=False)
    assert any("`name` is required" in p for p in found)
    assert any("`start` is required" in p and 'start: "2026-03-02 08:55"' in p for p in found)
    assert any("`steps` is required" in p for p in found)


def test_unknown_step_names_file_line_step_and_closest_verb(tmp_path: Path) -> None:
    path = write(tmp_path, "  - settle\n  - badg: main_in\n    card: \"0F00A1B2C3\"\n")
    assert only(path) == (f"{path}:6: step 2: no action or expectation in this step (keys `badg`, `card`) "
                          "(fix: did you mean `badge`?)")


def test_unknown_option_names_the_closest_option(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: main_in\n    crad: \"0F00A1B2C3\"\n")
    found = problems(path)
    assert f"{path}:6: step 1 (badge): unknown key `crad` for `badge` (fix: did you mean `card`?)" in found


def test_a_step_with_two_verbs_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: main_in\n    card: \"0F00A1B2C3\"\n    expect_decision: main_in\n")
    assert "one step has several verbs: badge, expect_decision" in only(path)


def test_unquoted_card_numbers_and_pins_are_refused_with_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: comms_in\n    card: 40070707\n    pin: 0417\n")
    found = problems(path)
    assert any("card number 40070707 was read as a number" in p and 'quote it: "40070707"' in p for p in found)
    # YAML 1.1 reads 0417 as octal 271: say so rather than type the wrong PIN.
    assert any("PIN 271 was read as a number" in p and 'pin: "0417"' in p for p in found)


@pytest.mark.parametrize("text, seconds", [
    ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1h30m", 5400.0), ("250ms", 0.25), ("2d", 172800.0),
    ("1.5s", 1.5),
])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", [30, "30", "30 sec", "h", "", "5m3"])
def test_bad_durations_are_refused(tmp_path: Path, value: object) -> None:
    path = write(tmp_path, f"  - advance: {value!r}\n" if isinstance(value, str) else f"  - advance: {value}\n")
    message = only(path, check_site=False)
    assert "step 1 (advance)" in message and "fix:" in message


def test_format_duration_round_trips_common_values() -> None:
    assert [format_duration(s) for s in (30, 300, 5400, 0.25, 86400 + 60)] == ["30s", "5m", "1h30m", "250ms", "1d1m"]


def test_an_unknown_reason_code_names_the_closest_code(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: main_in\n    person: alice\n  - expect_decision: main_in\n    reason: granted_ofline\n")
    assert "`reason`: unknown value 'granted_ofline' (fix: did you mean `granted_offline`?)" in only(path)


def test_a_decision_that_contradicts_its_reason_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "  - expect_decision: main_in\n    decision: denied\n    reason: granted\n")
    assert "decision denied contradicts reason granted" in only(path)


def test_expect_decision_needs_something_to_expect(tmp_path: Path) -> None:
    path = write(tmp_path, "  - expect_decision: main_in\n")
    assert "add decision: granted|denied and/or reason: CODE" in only(path)


def test_badge_needs_exactly_one_of_card_and_person(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: main_in\n")
    assert "give either `card` or `person`" in only(path)


def test_required_options_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, "  - hold_open: main_out\n  - expect_relay: main_out\n")
    found = problems(path)
    assert any("step 1 (hold_open): `for` is required" in p for p in found)
    assert any("step 2 (expect_relay): `energised` is required" in p for p in found)


def test_outages_must_alternate_down_and_up(tmp_path: Path) -> None:
    path = write(tmp_path, "  - server: up\n  - broker: down\n  - broker: down\n")
    found = problems(path, check_site=False)
    assert any("step 1 (server): the server is already up here" in p for p in found)
    assert any("step 3 (broker): the broker is already down here (fix: remove this step, or put `broker: up` before it)"
               in p for p in found)


def test_desk_steps_and_server_expectations_need_the_server(tmp_path: Path) -> None:
    path = write(tmp_path, "  - server: down\n  - lockdown: on\n  - expect_occupancy: lobby\n    count: 0\n")
    found = problems(path, check_site=False)
    assert any("step 2 (lockdown)" in p and "put `server: up` before this step" in p for p in found)
    assert any("step 3 (expect_occupancy)" in p and "server: up" in p for p in found)


def test_visitors_are_registered_then_checked_in_then_out(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - check_in: v1\n"
        "  - register_visitor: v2\n    name: V\n    host: alice\n    areas: [lobby]\n"
        "  - badge: main_out\n    person: v2\n"
        "  - check_out: v2\n"
    ))
    found = problems(path, check_site=False)
    assert any("step 1 (check_in): visitor 'v1' is not registered" in p and "register_visitor: v1" in p for p in found)
    assert any("step 3 (badge): visitor 'v2' has no badge before check-in" in p for p in found)
    assert any("step 4 (check_out): visitor 'v2' is not checked in" in p for p in found)


def test_duplicate_keys_are_refused_with_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: main_in\n    card: \"1\"\n    card: \"2\"\n")
    message = only(path, check_site=False)
    assert message.startswith(f"{path}:7: key 'card' appears twice")


def test_yaml_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: main_in\n   card: \"1\"\n")
    message = only(path, check_site=False)
    assert message.startswith(f"{path}:6: not valid YAML")
    assert "fix:" in message


def test_a_name_with_a_colon_needs_quotes_and_the_message_says_so(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text('name: Escort: visitor first\nstart: "2026-03-02 09:00"\nsteps:\n  - settle\n')
    assert "that needs quotes" in only(path, check_site=False)


def test_start_needs_a_local_date_and_time(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nstart: 2026-03-02\nsteps:\n  - settle\n")
    assert 'write the time too, e.g. "2026-03-02 08:55"' in only(path, check_site=False)


def test_a_missing_site_directory_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "  - settle\n", site=tmp_path / "nowhere")
    assert "has no site.toml" in only(path)


def test_a_missing_file_is_reported(tmp_path: Path) -> None:
    assert only(tmp_path / "missing.yaml") == f"{tmp_path / 'missing.yaml'}: file not found (fix: check the path)"


# ------------------------------------------------------- checks against the site


def test_unknown_doors_areas_and_people_name_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - badge: main_inn\n    person: alice\n"
        "  - lockdown: on\n    area: archiv\n"
        "  - expect_area: alise\n    area: lobby\n"
    ))
    found = problems(path)
    assert any("step 1 (badge): no door 'main_inn' in site hq (fix: did you mean `main_in`?)" in p for p in found)
    assert any("no area 'archiv' in site hq (fix: did you mean `archive`?)" in p for p in found)
    assert any("no person 'alise'" in p and "did you mean `alice`?" in p for p in found)


def test_site_problems_are_reported_with_shape_problems_in_one_pass(tmp_path: Path) -> None:
    path = write(tmp_path, "  - advance: 30\n  - badge: main_inn\n    person: alice\n")
    found = problems(path)
    assert len(found) == 2 and "has no unit" in found[0] and "no door 'main_inn'" in found[1]


def test_a_pin_needs_a_keypad_reader(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: main_out\n    person: alice\n    pin: \"2468\"\n")
    assert "door 'main_out' has an em4100 reader, which has no keypad" in only(path)


def test_a_card_the_reader_cannot_send_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: main_out\n    card: \"12345\"\n")
    assert "cannot be sent by main_out's em4100 reader" in only(path)


def test_a_person_without_a_card_for_the_readers_format_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "  - badge: comms_in\n    person: dana\n")
    assert "dana has no ascii card for comms_in's ascii reader" in only(path)


def test_wiring_is_checked_for_contact_and_rex(tmp_path: Path) -> None:
    path = write(tmp_path, "  - rex: main_in\n")
    assert "door 'main_in' has no REX button wired" in only(path)


def test_report_lost_needs_a_card_the_site_knows(tmp_path: Path) -> None:
    path = write(tmp_path, "  - report_lost: \"0F00000000\"\n")
    assert "belongs to no one" in only(path)


def test_check_in_card_must_be_in_the_visitor_pool(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - register_visitor: v1\n    name: V\n    host: alice\n    areas: [lobby]\n"
        "  - check_in: v1\n    card: \"0F00A1B2C3\"\n"
    ))
    assert "card '0F00A1B2C3' is not in the site's visitor badge pool" in only(path)


def test_a_visitor_host_must_be_an_employee_or_contractor(tmp_path: Path) -> None:
    path = write(tmp_path, "  - register_visitor: v1\n    name: V\n    host: nobody\n    areas: [lobby]\n")
    assert "host 'nobody' is not an employee or contractor of site hq" in only(path)


# ------------------------------------------- intrusion signals: reader Secure Channel, refused certificates

READERS = ROOT / "firmware-config" / "sites" / "readers"
DEMO = ROOT / "doorkeep" / "sites" / "demo"


def test_injected_clear_naks_and_wrong_key_handshakes_load_with_a_bounded_count(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - osdp_clear_naks: gate_in\n    count: 3\n"
        "  - osdp_wrong_key: gate_out\n    count: 2\n"
        "  - expect_alarm: gate_in\n    type: reader_security\n    cause: clear_nak\n    count: 0\n"
    ), site=READERS)
    naks, wrong, expect = load_scenario(path).steps
    assert (naks.subject, naks.options["count"], wrong.options["count"]) == ("gate_in", 3, 2)
    assert expect.options["cause"] == "clear_nak"
    assert naks.text() == "inject 3 NAKs in clear at gate_in's OSDP reader"
    assert expect.text() == "expect exactly 0 reader_security (clear_nak) at gate_in"


@pytest.mark.parametrize("count", ["0", "21", "-1", "true", "\"3\""])
def test_an_attack_step_count_outside_1_to_20_is_refused(tmp_path: Path, count: str) -> None:
    path = write(tmp_path, f"  - osdp_clear_naks: gate_in\n    count: {count}\n", site=READERS)
    assert "`count`: must be a whole number from 1 to 20" in only(path)


def test_an_attack_step_without_a_count_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "  - osdp_wrong_key: gate_in\n", site=READERS)
    assert "step 1 (osdp_wrong_key): `count` is required" in only(path)


def test_secure_channel_attacks_need_an_osdp_reader_on_secure_channel(tmp_path: Path) -> None:
    path = write(tmp_path, "  - osdp_clear_naks: store_in\n    count: 4\n  - osdp_wrong_key: gate_inn\n    count: 3\n",
                 site=READERS)
    found = problems(path)
    assert any("door 'store_in' has an wiegand reader; osdp_clear_naks attacks an OSDP reader's Secure Channel" in p
               for p in found), found
    assert any("no door 'gate_inn'" in p and "did you mean `gate_in`?" in p for p in found), found


def test_cause_is_only_for_reader_security_alarms(tmp_path: Path) -> None:
    path = write(tmp_path, "  - expect_alarm: gate_in\n    type: tamper\n    cause: clear_nak\n", site=READERS)
    assert "`cause` tells reader_security alarms apart" in only(path, check_site=False)
    path = write(tmp_path, "  - expect_alarm: gate_in\n    type: reader_security\n    cause: clear_nack\n",
                 site=READERS)
    assert "did you mean `clear_nak`?" in only(path, check_site=False)


def test_certificate_refused_is_expected_from_an_address_at_no_door(tmp_path: Path) -> None:
    ok = write(tmp_path, "  - expect_alarm:\n    type: certificate_refused\n    count: 1\n", site=DEMO)
    (step,) = load_scenario(ok).steps
    assert step.subject is None and step.text() == "expect exactly 1 certificate_refused (any address)"
    path = write(tmp_path, "  - expect_alarm: lobby_in\n    type: certificate_refused\n", site=DEMO)
    assert "certificate_refused is about a network address, at no door and for no card" in only(path)


def test_revoked_device_must_be_one_of_the_sites_devices(tmp_path: Path) -> None:
    path = write(tmp_path, "  - revoked_device_connects: pi-floor8\n    count: 3\n", site=DEMO)
    assert "no device 'pi-floor8'" in only(path) and "did you mean `pi-floor7`?" in only(path)


def test_a_revoked_devices_doors_cannot_be_used_after_the_revocation(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - force: lab\n"
        "  - revoked_device_connects: pi-floor7\n    count: 3\n"
        "  - expect_alarm: lab\n    type: forced_open\n"
        "  - badge: lab\n    person: alice\n"
        "  - badge: lobby_in\n    person: alice\n"
    ), site=DEMO)
    found = only(path)
    assert "step 4 (badge): door 'lab' is on pi-floor7, which step 2 took off the site" in found


def test_revoking_a_certificate_needs_the_server_and_the_broker_up(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - server: down\n  - revoked_device_connects: pi-floor7\n    count: 1\n  - server: up\n"
        "  - broker: down\n  - revoked_device_connects: pi-floor7\n    count: 1\n"
    ), site=DEMO)
    found = problems(path, check_site=False)
    assert any("step 2 (revoked_device_connects)" in p and "put `server: up` before this step" in p for p in found)
    assert any("step 5 (revoked_device_connects)" in p and "put `broker: up` before this step" in p for p in found)


def test_revocation_scenarios_are_refused_with_an_external_broker(capsys) -> None:
    """The step restarts the broker so it reads the new CRL: only the runner's own broker can be restarted."""
    path = SCENARIOS / "intrusion_certificate_refused.yaml"
    assert load_scenario(path).controls_broker
    assert run_files([path], broker_url="mqtts://127.0.0.1:1") == 2
    assert "needs the runner's own broker" in capsys.readouterr().err


# --------------------------------------------------------------- the command


def test_run_files_exits_2_and_runs_nothing_when_a_file_is_invalid(tmp_path: Path, capsys) -> None:
    good = SCENARIOS / "basic_access.yaml"
    bad = write(tmp_path, "  - badg: main_in\n")
    assert run_files([good, bad]) == 2
    captured = capsys.readouterr()
    assert "scenario:" not in captured.out  # nothing ran
    assert "1 problem(s) in 1 scenario file(s); nothing was run" in captured.err


def test_check_only_validates_every_file(capsys) -> None:
    assert run_files([SCENARIOS], check_only=True) == 0
    assert capsys.readouterr().out.count("ok  ") == len(expand([SCENARIOS]))


def test_broker_steps_are_refused_with_an_external_broker(capsys) -> None:
    assert run_files([SCENARIOS / "offline_broker_down.yaml"], broker_url="mqtt://127.0.0.1:1") == 2
    assert "needs the runner's own broker" in capsys.readouterr().err


# ----------------------------------------------------------------- the report


def test_junit_xml_lists_failures_errors_and_skips(tmp_path: Path) -> None:
    steps = (Step(1, "badge", "main_in", {"card": "1"}, 5),
             Step(2, "expect_relay", "main_in", {"energised": True}, 7),
             Step(3, "advance", 60.0, {}, 9),
             Step(4, "expect_occupancy", "lobby", {"count": 1}, 10))
    sc = Scenario("demo", "", tmp_path / "s.yaml", HQ, __import__("datetime").datetime(2026, 3, 2, 9), steps)
    result = ScenarioResult(sc, [
        Check(steps[1], "fail", "energised", "not energised (door locked)"),
        Check(steps[2], "error", "the step to run", "boom"),
        Check(steps[3], "skipped", actual="not run"),
    ], 1.5, "transcript")
    root = ET.fromstring(junit_xml([result], {"bad.yaml": ScenarioErrors([])}))
    assert root.tag == "testsuites" and root.get("failures") == "1" and root.get("errors") == "2"
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "3"
    failure = suite.find("testcase/failure")
    assert failure is not None and "expected energised; actual not energised" in failure.get("message", "")
    assert suite.find("testcase/error") is not None and suite.find("testcase/skipped") is not None
    assert suite.findtext("system-out") == "transcript"


# ------------------------------------------------------------------ the docs


def test_every_verb_and_option_is_documented() -> None:
    missing = [f"{name}" for name in VERBS if f"`{name}" not in DOC]
    for name, verb in VERBS.items():
        missing += [f"{name}.{opt}" for opt in verb.options if f"`{opt}" not in DOC]
    assert not missing, f"missing from docs/scenarios.md: {missing}"


def test_every_shipped_scenario_is_listed_in_the_docs() -> None:
    missing = [p.name for p in SCENARIOS.glob("*.yaml") if p.name not in DOC]
    assert not missing, f"scenarios missing from docs/scenarios.md: {missing}"


# ------------------------------------------------------------------ the clock


def test_scenario_clock_runs_from_its_start_and_jumps_both_clocks() -> None:
    base = FakeClock(wall=1000.0, monotonic=50.0)
    clock = ScenarioClock(1_772_441_700.0, base=base)
    assert clock.wall() == 1_772_441_700.0 and clock.monotonic() == 50.0
    base.advance(2.0)  # real time passes
    assert clock.wall() == 1_772_441_702.0 and clock.monotonic() == 52.0
    clock.advance(3600.0)
    assert clock.wall() == 1_772_445_302.0 and clock.monotonic() == 3652.0
    assert clock.advanced == 3600.0
    with pytest.raises(ValueError, match="only moves forwards"):
        clock.advance(-1.0)


def test_scenario_clock_advances_are_thread_safe() -> None:
    clock = ScenarioClock(0.0, base=FakeClock(wall=0.0, monotonic=0.0))
    threads = [threading.Thread(target=lambda: [clock.advance(0.5) for _ in range(1000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.wall() == clock.monotonic() == 2000.0


def test_step_text_reads_like_the_transcript() -> None:
    assert Step(1, "badge", "vault_in", {"person": "alice", "pin": "2468"}).text() == \
        "badge vault_in: alice's card + PIN 2468"
    assert re.match(r"expect exactly 0 forced_open at main_out",
                    Step(2, "expect_alarm", "main_out", {"type": "forced_open", "count": 0}).text())


def test_the_worked_example_in_the_docs_is_valid(tmp_path: Path) -> None:
    block = re.search(r"```yaml\n(# a shorter simulators/scenarios/lost_card.yaml\n.*?)```", DOC, re.S)
    assert block is not None
    path = tmp_path / "example.yaml"
    path.write_text(block.group(1).replace("site: ../../firmware-config/sites/hq", f"site: {HQ}"))
    sc = load_scenario(path)
    assert [s.verb for s in sc.steps][:3] == ["badge", "expect_decision", "advance"]


# ------------------------------------------------------------------ hardening (issue 18)


HEAD_ONLY = 'name: test\nstart: "2026-03-02 09:00"\nsteps:\n  - settle\n'


@pytest.mark.parametrize("text", [
    "!!bool abc\n" + HEAD_ONLY,
    HEAD_ONLY.replace("name: test", "name: !!bool abc"),
    HEAD_ONLY + "description: !!python/object:os.system x\n",
    HEAD_ONLY + "description: !!python/name:os.system\n",
    HEAD_ONLY + "description: !local x\n",
    HEAD_ONLY.replace("steps:", "steps: !!seq"),
    HEAD_ONLY.replace('start: "2026', 'start: !!str "2026'),
], ids=["bool-first-line", "bool-value", "python-object", "python-name", "local-tag", "tagged-sequence",
        "even-str"])
def test_explicit_yaml_tags_are_refused_with_a_scenario_error(tmp_path: Path, text: str) -> None:
    # `!!bool abc` made PyYAML raise KeyError; the format uses no tags, so every explicit one is refused.
    path = tmp_path / "s.yaml"
    path.write_text(text)
    found = only(path, check_site=False)
    assert "explicit YAML tag `!" in found and "is not part of the scenario format" in found
    assert "remove the tag" in found


@pytest.mark.parametrize("text", [
    HEAD_ONLY + "x: " + "[" * 10_000 + "]" * 10_000 + "\n",
    HEAD_ONLY + "x: " + "[" * 10_000 + "\n",
    HEAD_ONLY + "x: " + "{a: " * 10_000 + "b" + "}" * 10_000 + "\n",
    HEAD_ONLY + "".join("  " * i + f"k{i}:\n" for i in range(200)),
    HEAD_ONLY + "x:\n  " + "- " * 10_000 + "y\n",
], ids=["brackets-10000", "unclosed-10000", "flow-maps-10000", "block-200", "compact-10000"])
def test_deep_nesting_is_refused_before_the_yaml_is_parsed(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    found = only(path, check_site=False)
    assert "nested deeper than 32 levels" in found and "flatten it" in found
    assert re.match(rf"{re.escape(str(path))}:\d+: ", found)  # the line where it goes too deep


def test_brackets_in_quotes_comments_and_block_scalars_are_not_nesting(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - advance: 1s\n"
        "    note: \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ quoted, it's text\"\n"
        "  # [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ a comment\n"
        "  - settle\n"
    ), head=HEAD.replace("steps:\n", "description: |\n  {{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{ prose\n"
                                       "  [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\nsteps:\n"))
    sc = load_scenario(path)
    assert [s.verb for s in sc.steps] == ["advance", "settle"]


def test_brackets_behind_a_quote_yaml_does_not_see_are_still_bounded(tmp_path: Path) -> None:
    # `a:'x` is plain text to YAML, a quote to the scan: the brackets after it are counted by the backstop.
    path = tmp_path / "s.yaml"
    path.write_text(HEAD_ONLY + "description: a:'x\n" + "x: " + "[" * 10_000 + "\n")
    assert "nested deeper than 256 brackets" in only(path, check_site=False)


def test_a_file_larger_than_a_megabyte_is_refused_unread(tmp_path: Path) -> None:
    path = write(tmp_path, "  - settle\n" + "# padding\n" * 120_000)
    assert "more than 1048576" in only(path, check_site=False)


# ------------------------------------------------------------------ what a tester can now say (issue 18)


def test_decision_filters_time_bounds_and_shut_locks_load(tmp_path: Path) -> None:
    path = write(tmp_path, (
        "  - register_visitor: v-omar\n    name: Omar\n    host: chen\n    areas: [lobby, floor3]\n"
        "  - expect_decision: floor3_in\n    reason: granted_offline\n    grant: granted_escorted\n"
        "    companions: [v-omar]\n    violation: null\n    decided_within: 250ms\n"
        "  - expect_relay: floor3_in\n    energised: false\n    at_once: true\n"
        "  - report_lost: \"0F00C4C4C4\"\n"
        "  - expect_refused: \"0F00C4C4C4\"\n    refused_within: 1s\n"
        "  - expect_event: access\n    grant: granted_two_person\n    companions: []\n"
    ))
    decision, relay, _, refused, event = load_scenario(path).steps[1:]
    assert decision.options == {"reason": "granted_offline", "grant": "granted_escorted", "companions": ("v-omar",),
                                "violation": None, "decided_within": 0.25}
    assert relay.options["at_once"] is True
    assert refused.subject == "0F00C4C4C4" and refused.options["refused_within"] == 1.0
    assert event.options["companions"] == ()
    assert decision.text() == ("expect decision at floor3_in: reason granted_offline, by rule granted_escorted, "
                               "companions [v-omar], violation none, within 250ms of the badge")
    assert relay.text().endswith("not energised at once")


@pytest.mark.parametrize(("step", "words"), [
    ("  - expect_decision: floor3_in\n    decision: denied\n    companions: [alice]\n", "is about a grant"),
    ("  - expect_event: access\n    reason: no_access\n    grant: granted\n", "is about a grant"),
    ("  - expect_decision: floor3_in\n    reason: granted\n    grant: granted_escorted\n", "contradicts grant"),
    ("  - expect_decision: floor3_in\n    reason: granted\n    grant: granted_offline\n", "unknown value"),
    ("  - expect_decision: floor3_in\n    decision: denied\n    violation: anti_passback\n", "not enforced"),
    ("  - expect_decision: floor3_in\n    reason: granted\n    companions: alice\n", "list of person ids"),
    ("  - expect_decision: floor3_in\n    reason: granted\n    companions: [bob, bob]\n", "twice"),
    ("  - expect_decision: floor3_in\n    reason: granted\n    companions: [bobby]\n", "no person 'bobby'"),
    ("  - expect_decision: floor3_in\n    reason: granted\n    decided_within: 2m\n", "longer than 60 s"),
    ("  - expect_decision: floor3_in\n    reason: granted\n    decided_within: 1\n", "has no unit"),
    ("  - expect_refused: \"0F00C4C4C4\"\n    refused_within: 1s\n", "nothing before this step revokes"),
    ("  - report_lost: \"0F00C4C4C4\"\n  - expect_refused: \"0F00C4C4C4\"\n", "`refused_within` is required"),
    ("  - report_lost: \"0F00C4C4C4\"\n  - server: down\n  - expect_refused: \"0F00C4C4C4\"\n"
     "    refused_within: 1s\n", "which is down here"),
    ("  - report_lost: \"0F00C4C4C4\"\n  - expect_refused: \"0F00DEADBE\"\n    refused_within: 1s\n",
     "nothing before this step revokes"),
], ids=["companions-on-refusal", "grant-on-refusal", "server-reason-vs-grant", "grant-offline", "violation-refused",
        "companions-not-list", "companions-twice", "companions-unknown", "bound-too-long", "bound-no-unit",
        "refused-without-report", "refused-without-bound", "refused-server-down", "refused-other-card"])
def test_new_expectation_options_are_checked(tmp_path: Path, step: str, words: str) -> None:
    found = problems(write(tmp_path, step))
    assert any(words in p for p in found), found


# ------------------------------------------------------------------ running them, on recording stand-ins


class _FakeDoor:
    def __init__(self, energised: bool, history: list[tuple[float, bool]]) -> None:
        self.relay_energised = energised
        self.relay_history = history


class _FakeSite:
    """What the runner reads of a running site, without one: doors, agents, idle edges, a store."""

    def __init__(self, *, idle: bool = True, stored: bool = True, door: _FakeDoor | None = None) -> None:
        from types import SimpleNamespace as NS
        self.idle = idle
        self.server = NS(store=NS(event=lambda eid: {"id": eid} if stored else None))
        self.doors = {"lab_in": NS(device="pi-wing", door=door)}
        self.agents = {"pi-wing": NS(doors={"lab_in": NS(machine=NS(state=NS(value="locked")))})}

    def wait_edges_idle(self, timeout: float) -> bool:
        return self.idle


def _runner(site: _FakeSite) -> object:
    from simulators.scenario import ScenarioRunner
    sc = load_scenario(write_tmp(HEAD.format(site=HQ) + "  - settle\n"))
    runner = ScenarioRunner(sc)
    runner.runner = site  # type: ignore[assignment]
    return runner


def write_tmp(text: str) -> Path:
    import tempfile
    path = Path(tempfile.mkdtemp(prefix="doorkeep-scenario-")) / "s.yaml"
    path.write_text(text)
    return path


def test_settle_fails_when_the_edges_stay_busy_and_settling_quietly_does_not() -> None:
    from simulators.scenario import StepFailed
    runner = _runner(_FakeSite(idle=False))
    with pytest.raises(StepFailed, match=r"did not settle within 250ms: the edges are still busy"):
        runner._do_settle(Step(1, "settle", 0.25, {}))  # type: ignore[attr-defined]
    assert runner._do_settle_quietly(0.25) == "the edges are still busy"  # type: ignore[attr-defined]


def test_settle_fails_when_published_events_are_not_stored_within_its_bound() -> None:
    from doorkeep.contract import EventMsg
    from simulators.scenario import StepFailed
    runner = _runner(_FakeSite(stored=False))
    runner.recorder(EventMsg("e1", 1, "2026-03-02T09:00:00.000Z", "pi-wing", "lab_in", "door_opened"))  # type: ignore[attr-defined]
    with pytest.raises(StepFailed, match=r"1 event\(s\) the edges published are not stored"):
        runner._do_settle(Step(1, "settle", 0.2, {}))  # type: ignore[attr-defined]
    ok = _runner(_FakeSite(stored=True))
    ok.recorder(EventMsg("e2", 1, "2026-03-02T09:00:00.000Z", "pi-wing", "lab_in", "door_opened"))  # type: ignore[attr-defined]
    assert ok._do_settle(Step(1, "settle", 0.2, {})) == "quiet: every event is stored"  # type: ignore[attr-defined]


def test_settle_with_the_broker_down_is_settled_once_the_edges_are_idle() -> None:
    runner = _runner(_FakeSite(stored=False))
    runner._broker_up = False  # type: ignore[attr-defined]
    assert "broker is down" in runner._do_settle(Step(1, "settle", 0.2, {}))  # type: ignore[attr-defined]


@pytest.mark.parametrize(("energised", "history", "ok", "words"), [
    (False, [(5.0, True), (9.0, False)], True, "not energised (door locked)"),
    (True, [(5.0, True)], False, "still energised by an earlier grant"),
    (False, [(5.0, True), (10.5, False)], False, "relocked 0.50 s later"),
    (False, [(5.0, True), (9.0, False), (10.2, True), (10.4, False)], False, "energised 0.200 s after the card"),
], ids=["shut-since", "still-released", "released-at-the-badge", "pulsed-by-the-refusal"])
def test_a_relay_checked_at_once_must_have_stayed_shut_since_the_card(
        energised: bool, history: list[tuple[float, bool]], ok: bool, words: str) -> None:
    runner = _runner(_FakeSite(door=_FakeDoor(energised, history)))
    runner._presented["lab_in"] = (0.0, 10.0)  # type: ignore[attr-defined]
    passed, expected, actual = runner._expect_relay(  # type: ignore[attr-defined]
        Step(1, "expect_relay", "lab_in", {"energised": False, "at_once": True}))
    assert (passed, words in actual) == (ok, True), actual
    assert expected == "not energised now, nor since the last card at this door"


@pytest.mark.parametrize(("presented", "latency_ms", "ok"), [
    (99.5, 20.0, True), (98.9, 20.0, False), (99.5, 1500.0, False), (99.5, None, False), (None, 20.0, False),
], ids=["both-in-time", "late-on-the-scenario-clock", "late-by-the-edges-latency", "no-latency", "no-badge-step"])
def test_decided_within_holds_on_the_scenario_clock_and_the_edges_latency(
        presented: float | None, latency_ms: float | None, ok: bool) -> None:
    from doorkeep.contract import EventMsg
    runner = _runner(_FakeSite())
    ev = EventMsg("e1", 1, "2026-03-02T09:00:00.000Z", "pi-wing", "lab_in", "access", decision="granted",
                  reason="granted", latency_ms=latency_ms)
    if presented is not None:
        runner._presented_for["e1"] = presented  # type: ignore[attr-defined]
    passed, text = runner._decided_in_time(ev, 100.0, 1.0)  # type: ignore[attr-defined]
    assert passed is ok, text


def test_expect_refused_names_who_was_late() -> None:
    from doorkeep.credentials import card_hash
    from simulators.scenario import _Revocation
    runner = _runner(_FakeSite())
    runner.runner.key = b"k" * 32  # type: ignore[attr-defined]
    h = card_hash(b"k" * 32, "em4100", "0F00C4C4C4")
    runner._revocations[h] = _Revocation(100.0, server=100.001, edges={"pi-a": 100.2, "pi-b": 101.5},  # type: ignore[attr-defined]
                                         devices=("pi-a", "pi-b", "pi-c"))
    step = Step(1, "expect_refused", "0F00C4C4C4", {"refused_within": 1.0})
    passed, _, actual = runner._expect_refused(step)  # type: ignore[attr-defined]
    assert not passed and actual.startswith("late: pi-b, pi-c;")
    assert "the server 1 ms" in actual and "pi-a 200 ms" in actual and "pi-c: still lets it in after 5 s" in actual
    runner._revocations[h].edges.update({"pi-b": 100.9, "pi-c": 100.5})  # type: ignore[attr-defined]
    assert runner._expect_refused(step)[0]  # type: ignore[attr-defined]
