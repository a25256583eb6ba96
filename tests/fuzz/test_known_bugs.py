"""Crashes the fuzzers found in code this suite does not own, pinned until their owners fix them.

Each test is the smallest input that shows one bug of ``guard.KNOWN_BUGS`` and asserts what the
target documents; it is a strict ``xfail``, so the day the bug is fixed it fails as XPASS: then
delete its marker here and its entry in ``guard.KNOWN_BUGS`` (the fuzzers stop stepping over it).
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.config import check, load_site_dir
from doorkeep.contract import EventMsg, RequestMsg
from doorkeep.errors import ConfigError, MessageError
from doorkeep.policy import PolicyError, site_from_dict, site_to_dict, verify_policy
from simulators.scenario import ScenarioErrors, load_scenario
from simulators.site import DEMO_SITE
from tests.fuzz.guard import KNOWN_BUGS, Unbounded
from tests.fuzz.test_scenario_fuzz import MAX_MESSAGE, alias_bomb

_BUGS = {bug.id: bug for bug in KNOWN_BUGS}
_PINNED: set[str] = set()


def known(bug_id: str) -> pytest.MarkDecorator:
    """Strict xfail that only counts the bug's own exception (an unbounded message fails an assertion)."""
    _PINNED.add(bug_id)
    bug = _BUGS[bug_id]
    raises = tuple(AssertionError if e is Unbounded else e for e in bug.exc)
    return pytest.mark.xfail(strict=True, raises=raises, reason=f"{bug_id}: {bug.summary}")


def test_every_known_bug_has_a_regression_test() -> None:
    assert _PINNED == set(_BUGS)


# ------------------------------------------------------------------ contract


def test_request_with_a_4301_digit_number_raises_message_error() -> None:
    with pytest.raises(MessageError):
        RequestMsg.decode(b'{"schema":"doorkeep.request/1","transaction":' + b"9" * 4301 + b"}")


def test_event_with_latency_beyond_float_range_raises_message_error() -> None:
    event = {"schema": "doorkeep.event/1", "id": "e1", "seq": 1, "ts": "t", "device": "pi-lobby", "door": "lobby_in",
             "type": "rex", "latency_ms": 10**400}
    with pytest.raises(MessageError):
        EventMsg.decode(json.dumps(event).encode())


def test_event_with_detail_nested_600_deep_is_refused_or_can_be_encoded_again() -> None:
    detail = '{"a":' * 600 + "0" + "}" * 600
    payload = ('{"schema":"doorkeep.event/1","id":"e1","seq":1,"ts":"t","device":"pi-lobby","door":"lobby_in",'
               '"type":"rex","detail":' + detail + "}").encode()
    try:
        msg = EventMsg.decode(payload)
    except MessageError:
        return
    assert EventMsg.decode(msg.encode()) == msg


# -------------------------------------------------------------------- policy


def _site_with_huge_unlock_s() -> dict:
    data = site_to_dict(load_site_dir(DEMO_SITE).site)
    doors = data["doors"]
    doors["columns"][doors["fields"].index("unlock_s")][0] = 10**400
    return data


def test_site_from_dict_with_an_integer_beyond_float_range_raises_policy_error() -> None:
    with pytest.raises(PolicyError):
        site_from_dict(_site_with_huge_unlock_s())


def test_verify_policy_with_an_integer_beyond_float_range_raises_policy_error() -> None:
    """Signed with the real key: the edge's policy thread catches only PolicyError and would die here."""
    key = Ed25519PrivateKey.generate()
    body = json.dumps({"site": "demo", "device": "pi-lobby", "version": 1, "issued_at": "2026-03-02T08:55:00.000Z",
                       "nonce": "0" * 32, "policy": _site_with_huge_unlock_s()})
    envelope = {"schema": "doorkeep.policy/1", "signed": body,
                "signature": base64.b64encode(key.sign(body.encode())).decode()}
    with pytest.raises(PolicyError):
        verify_policy(json.dumps(envelope).encode(), key.public_key(), site_id="demo", device="pi-lobby")


# -------------------------------------------------------------------- config


def _demo_with(tmp_path: Path, name: str, content: bytes) -> Path:
    site = tmp_path / "demo"
    shutil.copytree(DEMO_SITE, site, ignore=shutil.ignore_patterns("keys"))
    (site / name).write_bytes(content)
    return site


def _site_toml_plus(line: bytes) -> bytes:
    return (DEMO_SITE / "site.toml").read_bytes() + b"\n" + line + b"\n"


def _returns_config_errors(path: Path) -> None:
    errors = check(path)
    assert errors and all(isinstance(e, ConfigError) for e in errors)


def test_check_on_a_toml_array_nested_1000_deep_returns_a_config_error(tmp_path: Path) -> None:
    _returns_config_errors(_demo_with(tmp_path, "site.toml", _site_toml_plus(b"x = " + b"[" * 1000 + b"]" * 1000)))


def test_check_on_a_5000_digit_toml_integer_returns_a_config_error(tmp_path: Path) -> None:
    _returns_config_errors(_demo_with(tmp_path, "site.toml", _site_toml_plus(b"x = " + b"9" * 5000)))


def test_check_on_a_file_that_is_not_utf8_returns_a_config_error(tmp_path: Path) -> None:
    _returns_config_errors(_demo_with(tmp_path, "site.toml", b"\x80"))


def test_check_on_a_device_file_whose_site_file_holds_a_nul_returns_a_config_error(tmp_path: Path) -> None:
    device = (DEMO_SITE / "devices/pi-lobby.toml").read_bytes()
    device = device.replace(b'site_file = "../site.toml"', b'site_file = "\\u0000"')
    assert b"\\u0000" in device
    _returns_config_errors(_demo_with(tmp_path, "devices/pi-lobby.toml", device) / "devices/pi-lobby.toml")


def test_check_on_valid_until_9999_12_31_does_not_raise(tmp_path: Path) -> None:
    people = (DEMO_SITE / "people.toml").read_bytes().replace(b"valid_until = 2026-01-31", b"valid_until = 9999-12-31")
    assert b"9999-12-31" in people
    site = _demo_with(tmp_path, "people.toml", people)
    assert isinstance(check(site), list)


def test_check_on_the_demo_site_with_a_mistyped_timezone_returns_a_config_error(tmp_path: Path) -> None:
    site_toml = (DEMO_SITE / "site.toml").read_bytes()
    site_toml = site_toml.replace(b'timezone = "Europe/London"', b'timezone = "Europe/London "')
    assert b"London \"" in site_toml
    _returns_config_errors(_demo_with(tmp_path, "site.toml", site_toml))


def test_check_on_a_400_digit_unlock_time_returns_a_config_error(tmp_path: Path) -> None:
    site_toml = (DEMO_SITE / "site.toml").read_bytes().replace(b"unlock_s = 5\n", b"unlock_s = " + b"9" * 400 + b"\n", 1)
    assert b"9" * 400 in site_toml
    _returns_config_errors(_demo_with(tmp_path, "site.toml", site_toml))


def test_check_on_an_access_level_written_as_a_table_returns_a_config_error(tmp_path: Path) -> None:
    people = (DEMO_SITE / "people.toml").read_bytes().replace(b'access_levels = ["staff"]', b"access_levels = [{}]", 1)
    assert b"[{}]" in people
    _returns_config_errors(_demo_with(tmp_path, "people.toml", people))


# ------------------------------------------------------------------ scenario

_SCENARIO = 'name: x\nstart: "2026-03-02 08:55"\nsteps:\n  - settle\n'


def _scenario_errors(tmp_path: Path, text: str) -> ScenarioErrors:
    path = tmp_path / "s.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioErrors) as info:
        load_scenario(path)
    return info.value


@pytest.mark.parametrize("line", [
    "x: " + "[" * 2000 + "]" * 2000,  # RecursionError
    "x: 2026-13-45",  # ValueError: month must be in 1..12
    "x: 0000-00-00",  # ValueError: year 0 is out of range
    "x: !!float abc",  # ValueError
    "x: !!timestamp abc",  # AttributeError
], ids=["nested-2000-deep", "month-13", "year-0", "float-tag", "timestamp-tag"])
def test_load_scenario_on_yaml_pyyaml_cannot_construct_raises_scenario_errors(tmp_path: Path, line: str) -> None:
    _scenario_errors(tmp_path, _SCENARIO + line + "\n")


@pytest.mark.parametrize("site", ['"' + "b" * 300 + '"', '"\\0"', '"\\ud800"'],
                         ids=["name-too-long", "nul", "lone-surrogate"])
def test_load_scenario_on_a_site_that_is_no_possible_path_raises_scenario_errors(tmp_path: Path, site: str) -> None:
    _scenario_errors(tmp_path, _SCENARIO + f"site: {site}\n")


def test_load_scenario_on_a_369_byte_alias_bomb_reports_a_bounded_error(tmp_path: Path) -> None:
    anchors, bomb = alias_bomb(7)
    text = anchors + 'name: bomb\nstart: "2026-03-02 08:55"\nsteps:\n  - ' + bomb + "\n"
    assert len(text) < 500
    assert len(str(_scenario_errors(tmp_path, text))) <= MAX_MESSAGE
