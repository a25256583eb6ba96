"""Alarm priorities and escalation times (doorkeep/alarm_priority.py, site.toml ``[alarms]``): the defaults a
control room expects, a site's overrides, and errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from doorkeep import vocabulary
from doorkeep.alarm_priority import (DEFAULT_PRIORITY, HIGH, LOW, MEDIUM, PRIORITIES, escalate_after_s,
                                     priority_of)
from doorkeep.config import load_site_file
from doorkeep.errors import ConfigErrors
from doorkeep.model import AlarmSettings
from simulators.site import DEMO_SITE

HEAD = '[site]\nid = "hq"\ntimezone = "UTC"\n[areas.outside]\n'


def site_with(tmp_path: Path, alarms: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(HEAD + "[alarms]\n" + alarms)
    return path


def errors_of(path: Path) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigErrors) as info:
        load_site_file(path)
    return [(e.key, e.problem, e.fix) for e in info.value.errors]


@pytest.mark.parametrize("alarm_type, expected", [
    ("forced_open", HIGH), ("tamper", HIGH), ("reader_security", HIGH), ("card_probing", HIGH),
    ("pin_guessing", HIGH), ("door_attack", HIGH), ("held_open", MEDIUM), ("device_offline", MEDIUM),
    ("held_open_warning", LOW), ("relay_stuck", LOW), ("sequence_reset", LOW), ("backup_failed", LOW),
])
def test_default_priority_follows_what_a_control_room_expects(alarm_type: str, expected: str) -> None:
    assert priority_of(AlarmSettings(), alarm_type) == expected


def test_every_declared_alarm_type_has_a_default_priority_and_an_undeclared_one_is_low() -> None:
    assert set(DEFAULT_PRIORITY) == set(vocabulary.ALARMS)
    assert set(DEFAULT_PRIORITY.values()) <= set(PRIORITIES)
    assert priority_of(AlarmSettings(), "an_old_type_no_longer_declared") == LOW


def test_high_and_medium_escalate_by_default_and_low_never() -> None:
    settings = AlarmSettings()
    assert escalate_after_s(settings, HIGH) == 120 and escalate_after_s(settings, MEDIUM) == 600
    assert escalate_after_s(settings, LOW) == 0


def test_the_demo_site_has_no_alarms_table_and_keeps_the_defaults() -> None:
    assert load_site_file(Path(DEMO_SITE) / "site.toml").alarms == AlarmSettings()


def test_a_site_overrides_priorities_and_escalation_per_priority(tmp_path: Path) -> None:
    site = load_site_file(site_with(tmp_path, 'priority.held_open = "high"\npriority.device_offline = "low"\n'
                                              'escalate_after_s.high = 30\nescalate_after_s.low = 3600\n'))
    assert priority_of(site.alarms, "held_open") == HIGH and priority_of(site.alarms, "device_offline") == LOW
    assert priority_of(site.alarms, "forced_open") == HIGH  # not overridden: the default
    assert escalate_after_s(site.alarms, HIGH) == 30 and escalate_after_s(site.alarms, LOW) == 3600
    assert escalate_after_s(site.alarms, MEDIUM) == 600


def test_one_escalation_number_applies_to_high_and_medium(tmp_path: Path) -> None:
    site = load_site_file(site_with(tmp_path, "escalate_after_s = 45\n"))
    assert escalate_after_s(site.alarms, HIGH) == 45 and escalate_after_s(site.alarms, MEDIUM) == 45
    assert escalate_after_s(site.alarms, LOW) == 0


def test_an_unknown_alarm_type_is_named_with_the_closest_declared_one(tmp_path: Path) -> None:
    [(key, problem, fix)] = errors_of(site_with(tmp_path, 'priority.held_opn = "high"\n'))
    assert key == "alarms.priority.held_opn" and problem == "unknown alarm type" and "`held_open`" in fix


def test_an_unknown_priority_lists_the_allowed_ones(tmp_path: Path) -> None:
    [(key, problem, fix)] = errors_of(site_with(tmp_path, 'priority.tamper = "urgent"\n'))
    assert key == "alarms.priority.tamper" and "'urgent'" in problem and fix == "use one of: high, medium, low"


@pytest.mark.parametrize("value", ["-1", "100000", '"soon"', "true"])
def test_an_escalation_time_out_of_range_is_refused_with_the_fix(tmp_path: Path, value: str) -> None:
    [(key, problem, fix)] = errors_of(site_with(tmp_path, f"escalate_after_s.high = {value}\n"))
    assert key == "alarms.escalate_after_s.high" and "0 to 86400" in problem and "0 means never" in fix


def test_an_unknown_key_in_the_alarms_table_suggests_the_right_one(tmp_path: Path) -> None:
    [(key, problem, fix)] = errors_of(site_with(tmp_path, 'priorty.tamper = "high"\n'))
    assert key == "alarms.priorty" and problem == "unknown key" and "`priority`" in fix


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = errors_of(site_with(tmp_path, 'priority.nope = "high"\npriority.tamper = "x"\n'
                                          'escalate_after_s.urgent = 5\n'))
    assert [k for k, _, _ in found] == ["alarms.priority.nope", "alarms.priority.tamper",
                                        "alarms.escalate_after_s.urgent"]
