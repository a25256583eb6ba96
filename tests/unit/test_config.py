"""Strict config loading: every mistake names the file, the dotted key and the fix."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from doorkeep import cli
from doorkeep.config import DeviceConfig, check, load_device, load_site_dir
from doorkeep.credentials import KEY_ENV, load_key
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.model import OfflineMode, Site

DEMO = Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo"

SITE = """\
[site]
id = "t"
name = "Test site"
timezone = "Europe/London"

[areas.outside]
name = "Outside"

[areas.lobby]
name = "Lobby"

[doors.lobby_in]
name = "Lobby entrance"
from = "outside"
to = "lobby"
unlock_s = 5

[schedules.always]
windows = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "24:00" }]

[access_levels.staff]
entries = [{ area = "lobby", schedule = "always" }]
"""

PEOPLE = """\
[people.alice]
name = "Alice"
access_levels = ["staff"]
cards = [{ format = "em4100", number = "0F00A1B2C3" }]
"""

DEVICE = """\
device = "pi-a"
site = "t"
gpio_factory = "mock"

[doors.lobby_in.reader]
url = "loop://"
protocol = "em4100"

[doors.lobby_in.lock]
pin = 17
"""


def make_site(root: Path, site: str = SITE, people: str | None = PEOPLE,
              devices: dict[str, str] | None = None) -> Path:
    """A minimal valid site directory (unless told otherwise): site.toml, people.toml, devices/*.toml."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "site.toml").write_text(site)
    if people is not None:
        (root / "people.toml").write_text(people)
    dev_dir = root / "devices"
    dev_dir.mkdir(exist_ok=True)
    for name, text in (devices if devices is not None else {"pi-a": DEVICE}).items():
        (dev_dir / f"{name}.toml").write_text(text)
    return root


def only(errors: list[ConfigError], key: str) -> ConfigError:
    """The single error about one dotted key (fails listing all errors otherwise)."""
    hits = [e for e in errors if e.key == key]
    assert len(hits) == 1, f"expected one error on {key!r}, got: {[str(e) for e in errors]}"
    return hits[0]


# ------------------------------------------------------------- clean inputs


def test_minimal_site_is_clean(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s")
    assert check(d) == []
    assert check(d / "site.toml") == []
    assert check(d / "devices" / "pi-a.toml") == []


def test_demo_site_dir_checks_clean() -> None:
    assert check(DEMO) == []
    assert check(DEMO / "site.toml") == []


PI_TLS_FILES = {"broker.ca_file", "broker.cert_file", "broker.key_file"}


@pytest.mark.parametrize("device", sorted(p.name for p in (DEMO / "devices").glob("*.toml")))
def test_demo_device_files_check_clean_but_for_the_pis_own_certificate_files(device: str) -> None:
    # The shipped device files speak mutual TLS with the Pi's certificate under /etc/doorkeep/pki/,
    # which exists only on the Pi: off it, those three files are all `config check` misses.
    errors = check(DEMO / "devices" / device)
    assert {e.key for e in errors} == PI_TLS_FILES
    assert all("/etc/doorkeep/pki/" in e.problem and "does not exist" in e.problem for e in errors)
    dev, _ = load_device(DEMO / "devices" / device)
    assert dev.broker.tls and dev.broker.url.startswith("mqtts://") and not dev.broker.allow_plain
    assert dev.broker.cert_file == Path(f"/etc/doorkeep/pki/{dev.id}.crt")


def test_demo_site_dir_loads_what_it_says() -> None:
    bundle = load_site_dir(DEMO)
    assert bundle.site.id == "demo"
    assert bundle.site.timezone == "Europe/London"
    assert set(bundle.site.doors) == {"lobby_in", "lobby_out", "gate_in", "gate_out", "lab", "lift"}
    assert set(bundle.devices) == {"pi-lobby", "pi-floor7"}
    assert set(bundle.devices["pi-lobby"].doors) == {"lobby_in", "lobby_out", "gate_in", "gate_out"}
    lab_lock = bundle.devices["pi-floor7"].doors["lab"].lock
    assert lab_lock is not None and lab_lock.active_high is False
    assert bundle.site.doors["lab"].to_area == "floor7"
    lift = bundle.site.doors["lift"]
    assert lift.entered == ("lobby", "office", "floor7") and (lift.from_area, lift.to_area) == ("", "")
    assert [(f.area, f.public_schedule, f.offline) for f in lift.floors] == [
        ("lobby", "business_hours", None), ("office", None, None), ("floor7", None, OfflineMode.DENY)]
    cab = bundle.devices["pi-floor7"].doors["lift"]
    assert cab.lock is None and [(f.area, f.relay, f.button) for f in cab.floors] == [
        ("lobby", 5, 6), ("office", 13, 19), ("floor7", 26, 21)]
    assert {c.person for c in bundle.cards} == set(bundle.people)
    assert bundle.credential_key_file == DEMO / "keys" / "credential.key"


def test_load_device_returns_device_and_its_site(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s")
    dev, site = load_device(d / "devices" / "pi-a.toml")
    assert isinstance(dev, DeviceConfig) and isinstance(site, Site)
    assert dev.id == "pi-a" and dev.site == "t" and site.id == "t"
    assert dev.site_file == d / "devices" / ".." / "site.toml"
    assert dev.doors["lobby_in"].lock.pin == 17
    assert dev.doors["lobby_in"].reader.protocol == "em4100"
    assert dev.gpio_factory == "mock"
    assert dev.broker.host == "127.0.0.1" and dev.broker.port == 1883
    assert site.doors["lobby_in"].unlock_s == 5.0
    assert site.people == {}  # a device never sees people


def test_load_device_demo() -> None:
    dev, site = load_device(DEMO / "devices" / "pi-floor7.toml")
    assert dev.id == "pi-floor7" and site.id == "demo"
    assert dev.doors["lab"].camera == "lab" and dev.cameras["lab"].source.startswith("rtsp://")


# ------------------------------------------------------------ unknown keys


@pytest.mark.parametrize("value", ["inf", "nan", "1180591620717411303424", "3601"])
def test_an_unlock_time_that_is_endless_or_beyond_an_hour_is_refused(tmp_path: Path, value: str) -> None:
    # A door unlocked "for ever" by a typo (or a hostile site change) is a door left open: an hour is the
    # most a grant may hold a lock; longer belongs to a door mode with a schedule.
    d = make_site(tmp_path / "s", site=SITE.replace("unlock_s = 5", f"unlock_s = {value}"))
    err = only(check(d), "doors.lobby_in.unlock_s")
    assert "at most 3600" in err.problem


def test_unknown_key_names_file_dotted_key_and_fix(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE.replace("unlock_s = 5", "unlcok_s = 5"))
    err = only(check(d), "doors.lobby_in.unlcok_s")
    assert err.file == str(d / "site.toml")
    assert err.problem == "unknown key"
    assert "unlock_s" in err.fix  # the key they meant is named in the fix
    assert "site.toml" in str(err) and "doors.lobby_in.unlcok_s" in str(err)


def test_unknown_key_did_you_mean(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE.replace("unlock_s = 5", "heldopen_s = 5"))
    err = only(check(d), "doors.lobby_in.heldopen_s")
    assert err.fix == "did you mean `held_open_s`?"


def test_unknown_key_in_device_file(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.replace("pin = 17", "pin = 17\nactive_hgih = true")})
    err = only(check(d), "doors.lobby_in.lock.active_hgih")
    assert err.file == str(d / "devices" / "pi-a.toml")
    assert "active_high" in err.fix


def test_unknown_top_level_table(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE + '\n[door.x]\nfrom = "a"\n')
    err = only(check(d), "door")
    assert err.problem == "unknown key" and err.file.endswith("site.toml")


# ----------------------------------------------------------------- devices


def test_missing_lock_pin(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.replace("pin = 17", "active_high = true")})
    err = only(check(d), "doors.lobby_in.lock.pin")
    assert err.file == str(d / "devices" / "pi-a.toml")
    assert "missing" in err.problem
    assert "pin = N" in err.fix and "GPIO" in err.fix


def test_missing_lock_table(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.split("[doors.lobby_in.lock]")[0]})
    err = only(check(d), "doors.lobby_in.lock")
    assert "[doors.lobby_in.lock]" in err.fix


def test_site_door_on_no_device(tmp_path: Path) -> None:
    site = SITE + '\n[doors.lobby_out]\nfrom = "lobby"\nto = "outside"\n'
    d = make_site(tmp_path / "s", site=site)
    err = only(check(d), "doors.lobby_out")
    assert err.file == str(d / "site.toml")
    assert "on no device" in err.problem
    assert "devices/" in err.fix


def test_device_door_not_in_site(tmp_path: Path) -> None:
    extra = '\n[doors.garage]\nreader = { url = "loop://", protocol = "em4100" }\nlock = { pin = 18 }\n'
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE + extra})
    err = only(check(d), "doors.garage")
    assert err.file == str(d / "devices" / "pi-a.toml")
    assert "not defined in the site file" in err.problem
    assert "[doors.garage]" in err.fix


def test_device_door_not_in_site_via_load_device(tmp_path: Path) -> None:
    extra = '\n[doors.garage]\nreader = { url = "loop://", protocol = "em4100" }\nlock = { pin = 18 }\n'
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE + extra})
    with pytest.raises(ConfigErrors) as exc:
        load_device(d / "devices" / "pi-a.toml")
    assert [e.key for e in exc.value.errors] == ["doors.garage"]


def test_same_door_on_two_devices(tmp_path: Path) -> None:
    other = DEVICE.replace('device = "pi-a"', 'device = "pi-b"')
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE, "pi-b": other})
    err = only(check(d), "doors.lobby_in")
    assert err.file == str(d / "devices" / "pi-b.toml")
    assert "pi-a" in err.problem
    assert "one device" in err.fix


def test_same_device_id_in_two_files(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE, "pi-z": DEVICE})
    errors = check(d)
    err = only(errors, "device")
    assert err.file == str(d / "devices" / "pi-z.toml")


def test_device_for_another_site(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.replace('site = "t"', 'site = "other"')})
    err = only(check(d), "site")
    assert err.file.endswith("pi-a.toml") and 'site = "t"' in err.fix


def test_duplicate_gpio_within_one_device(tmp_path: Path) -> None:
    dev = DEVICE + "\n[doors.lobby_in.contact]\npin = 17\n"
    d = make_site(tmp_path / "s", devices={"pi-a": dev})
    err = only(check(d), "doors.lobby_in.contact.pin")
    assert "GPIO17" in err.problem and "doors.lobby_in.lock" in err.problem


def test_same_gpio_on_two_devices_is_fine(tmp_path: Path) -> None:
    site = SITE + '\n[doors.lobby_out]\nfrom = "lobby"\nto = "outside"\n'
    other = DEVICE.replace('device = "pi-a"', 'device = "pi-b"').replace("lobby_in", "lobby_out")
    d = make_site(tmp_path / "s", site=site, devices={"pi-a": DEVICE, "pi-b": other})
    assert check(d) == []


@pytest.mark.parametrize("pin", [28, 40, -1])
def test_pin_out_of_range(tmp_path: Path, pin: int) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.replace("pin = 17", f"pin = {pin}")})
    err = only(check(d), "doors.lobby_in.lock.pin")
    assert f"GPIO{pin}" in err.problem and "0 to 27" in err.fix


def test_pin_at_range_edges_is_fine(tmp_path: Path) -> None:
    dev = DEVICE.replace("pin = 17", "pin = 0") + "\n[doors.lobby_in.rex]\npin = 27\n"
    assert check(make_site(tmp_path / "s", devices={"pi-a": dev})) == []


def test_string_where_int_expected(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.replace("pin = 17", 'pin = "17"')})
    err = only(check(d), "doors.lobby_in.lock.pin")
    assert "must be int" in err.problem and "'17'" in err.problem


def test_bool_where_number_expected(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE.replace("unlock_s = 5", "unlock_s = true"))
    err = only(check(d), "doors.lobby_in.unlock_s")
    assert "must be float" in err.problem and "True" in err.problem


def test_bool_where_int_expected(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.replace("pin = 17", "pin = true")})
    err = only(check(d), "doors.lobby_in.lock.pin")
    assert "must be int" in err.problem


def test_int_is_accepted_where_float_expected(tmp_path: Path) -> None:
    bundle = load_site_dir(make_site(tmp_path / "s"))
    assert bundle.site.doors["lobby_in"].unlock_s == 5.0
    assert isinstance(bundle.site.doors["lobby_in"].unlock_s, float)


def test_negative_unlock_time(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE.replace("unlock_s = 5", "unlock_s = -1"))
    err = only(check(d), "doors.lobby_in.unlock_s")
    assert "greater than 0" in err.problem


def test_unknown_choice(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.replace('protocol = "em4100"', 'protocol = "osdp3"')})
    err = only(check(d), "doors.lobby_in.reader.protocol")
    assert "em4100" in err.fix and "ascii" in err.fix


# -------------------------------------------------------------------- site


@pytest.mark.parametrize("tz", ["Europe/Londres", "Mars/Olympus", "/etc/localtime", "Europe", ""])
def test_bad_time_zone(tmp_path: Path, tz: str) -> None:
    d = make_site(tmp_path / "s", site=SITE.replace('"Europe/London"', f'"{tz}"'))
    err = only(check(d), "site.timezone")
    assert err.file == str(d / "site.toml")
    assert "Europe/London" in err.fix


def test_missing_time_zone(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE.replace('timezone = "Europe/London"\n', ""))
    err = only(check(d), "site.timezone")
    assert "missing" in err.problem


def test_schedule_end_before_start_spans_midnight(tmp_path: Path) -> None:
    from datetime import time

    site = SITE + '\n[schedules.night]\nwindows = [{ days = ["mon"], start = "19:00", end = "07:00" }]\n'
    d = make_site(tmp_path / "s", site=site)
    assert check(d) == []
    (w,) = load_site_dir(d).site.schedules["night"].windows
    assert w.days == frozenset({"mon"}) and w.start == time(19, 0) and w.end == time(7, 0)


def test_schedule_end_equal_to_start_is_a_full_day(tmp_path: Path) -> None:
    from datetime import time

    site = SITE + '\n[schedules.day]\nwindows = [{ days = ["mon"], start = "07:00", end = "07:00" }]\n'
    (w,) = load_site_dir(make_site(tmp_path / "s", site=site)).site.schedules["day"].windows
    assert w.start == w.end == time(7, 0)


@pytest.mark.parametrize("value", ["7:00", "25:00", "07:60", "24:01", "noon"])
def test_schedule_bad_time(tmp_path: Path, value: str) -> None:
    site = SITE + f'\n[schedules.s]\nwindows = [{{ days = ["mon"], start = "{value}", end = "24:00" }}]\n'
    err = only(check(make_site(tmp_path / "s", site=site)), "schedules.s.windows[0].start")
    assert "24:00" in err.fix or "07:30" in err.fix


def test_schedule_cannot_start_at_2400(tmp_path: Path) -> None:
    site = SITE + '\n[schedules.s]\nwindows = [{ days = ["mon"], start = "24:00", end = "24:00" }]\n'
    only(check(make_site(tmp_path / "s", site=site)), "schedules.s.windows[0].start")


def test_schedule_unknown_day_names(tmp_path: Path) -> None:
    site = SITE + '\n[schedules.s]\nwindows = [{ days = ["mon", "Tuesday", "fry"], start = "07:00", end = "19:00" }]\n'
    err = only(check(make_site(tmp_path / "s", site=site)), "schedules.s.windows[0].days")
    assert "Tuesday" in err.problem and "fry" in err.problem
    assert "mon" in err.fix and "sun" in err.fix


def test_schedule_holiday_must_be_a_date(tmp_path: Path) -> None:
    site = SITE + '\n[schedules.s]\nwindows = []\nholidays = ["2026-12-25"]\n'
    err = only(check(make_site(tmp_path / "s", site=site)), "schedules.s.holidays[0]")
    assert "unquoted" in err.fix


@pytest.mark.parametrize("value", ["2026-12-25T00:00:00Z", "2026-12-25T00:00:00", "07:00:00"])
def test_schedule_holiday_date_time_is_not_a_date(tmp_path: Path, value: str) -> None:
    # A date-time would never equal the local date a schedule is checked against: a silent non-holiday.
    site = SITE + f'\n[schedules.s]\nwindows = []\nholidays = [{value}]\n'
    only(check(make_site(tmp_path / "s", site=site)), "schedules.s.holidays[0]")


def test_schedule_loaded_with_2400_end_and_holidays(tmp_path: Path) -> None:
    from datetime import date, time

    site = (SITE + '\n[schedules.late]\nwindows = [{ days = ["fri"], start = "20:00", end = "24:00" }]\n'
            "holidays = [2026-12-25]\n")
    sched = load_site_dir(make_site(tmp_path / "s", site=site)).site.schedules["late"]
    (w,) = sched.windows
    assert w.days == frozenset({"fri"}) and w.start == time(20, 0) and w.end is None
    assert sched.holidays == frozenset({date(2026, 12, 25)})


def test_access_level_unknown_area_and_schedule(tmp_path: Path) -> None:
    site = SITE + '\n[access_levels.lab]\nentries = [{ area = "floor9", schedule = "weekdays" }]\n'
    errors = check(make_site(tmp_path / "s", site=site))
    area = only(errors, "access_levels.lab.entries[0].area")
    sched = only(errors, "access_levels.lab.entries[0].schedule")
    assert "floor9" in area.problem and "lobby" in area.fix
    assert "weekdays" in sched.problem and "always" in sched.fix


def test_door_into_unknown_area(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE.replace('to = "lobby"', 'to = "lobyb"'))
    err = only(check(d), "doors.lobby_in.to")
    assert "lobyb" in err.problem and "[areas.lobyb]" in err.fix


def test_site_without_outside_area(tmp_path: Path) -> None:
    site = SITE.replace('[areas.outside]\nname = "Outside"\n', "").replace('from = "outside"', 'from = "lobby"')
    errors = check(make_site(tmp_path / "s", site=site))
    assert any(e.key == "areas" and "outside" in e.problem for e in errors)


def test_invalid_identifier_as_table_name(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE + '\n[areas."floor 7"]\nname = "x"\n')
    err = only(check(d), "areas.floor 7")
    assert "identifier" in err.problem


def test_identifier_with_trailing_newline_is_rejected(tmp_path: Path) -> None:
    # TOML escapes make "pi-a\n" easy to write; it must not pass as an MQTT topic segment.
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.replace('device = "pi-a"', 'device = "pi-a\\n"')})
    err = only(check(d), "device")
    assert "identifier" in err.problem
    d2 = make_site(tmp_path / "s2", site=SITE + '\n[areas."lab\\n"]\nname = "x"\n')
    assert "identifier" in only(check(d2), "areas.lab\n").problem


# ------------------------------------------------------------------ people


def test_person_with_unknown_access_level(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", people=PEOPLE.replace('["staff"]', '["staff", "vip"]'))
    err = only(check(d), "people.alice.access_levels")
    assert err.file == str(d / "people.toml")
    assert "vip" in err.problem and "staff" in err.fix


@pytest.mark.parametrize("number", ["0F00A1B2C", "0F00A1B2C3D", "0F00A1B2CZ", "0F00 A1B2C"])
def test_invalid_em4100_number(tmp_path: Path, number: str) -> None:
    d = make_site(tmp_path / "s", people=PEOPLE.replace("0F00A1B2C3", number))
    err = only(check(d), "people.alice.cards[0].number")
    assert "10 hex digits" in err.problem


@pytest.mark.parametrize("fmt", ["em4100", "ascii"])
@pytest.mark.parametrize("number", ["", "   "])
def test_empty_card_number_is_an_error_not_a_dropped_card(tmp_path: Path, fmt: str, number: str) -> None:
    people = PEOPLE.replace('"em4100"', f'"{fmt}"').replace('"0F00A1B2C3"', f'"{number}"')
    err = only(check(make_site(tmp_path / "s", people=people)), "people.alice.cards[0].number")
    assert err.file.endswith("people.toml")


def test_card_given_to_two_people(tmp_path: Path) -> None:
    # The same card, spelt in lower case: still the same card.
    people = PEOPLE + '\n[people.bob]\nname = "Bob"\ncards = [{ format = "em4100", number = "0f00a1b2c3" }]\n'
    d = make_site(tmp_path / "s", people=people)
    err = only(check(d), "people.bob.cards[0].number")
    assert "alice" in err.problem and "one person" in err.fix


def test_same_number_in_two_formats_is_two_cards(tmp_path: Path) -> None:
    people = PEOPLE + '\n[people.bob]\nname = "Bob"\ncards = [{ format = "ascii", number = "0F00A1B2C3" }]\n'
    bundle = load_site_dir(make_site(tmp_path / "s", people=people))
    assert len(bundle.cards) == 2


def test_person_unknown_state_and_card_state(tmp_path: Path) -> None:
    people = PEOPLE.replace('name = "Alice"', 'name = "Alice"\nstate = "on_leave"').replace(
        '"0F00A1B2C3" }', '"0F00A1B2C3", state = "stolen" }')
    errors = check(make_site(tmp_path / "s", people=people))
    only(errors, "people.alice.state")
    only(errors, "people.alice.cards[0].state")


def test_person_valid_until_needs_a_time_zone(tmp_path: Path) -> None:
    people = PEOPLE + "valid_until = 2026-12-01T09:00:00\n"
    err = only(check(make_site(tmp_path / "s", people=people)), "people.alice.valid_until")
    assert "time zone" in err.problem


def test_people_loaded_with_validity(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    people = PEOPLE + "valid_from = 2026-01-01\nvalid_until = 2026-06-01T12:00:00Z\n"
    bundle = load_site_dir(make_site(tmp_path / "s", people=people))
    alice = bundle.people["alice"]
    assert alice.valid_from == datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    assert alice.valid_until == datetime(2026, 6, 1, 12, tzinfo=timezone.utc).timestamp()
    assert alice.access_levels == ("staff",)


# ------------------------------------------------------- syntax, many errors


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE + "\n[doors.broken\n")
    errors = check(d)
    assert len(errors) == 1
    assert errors[0].file == str(d / "site.toml")
    assert "not valid TOML" in errors[0].problem


def test_invalid_toml_in_device_file(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE + "pin = = 3\n"})
    errors = check(d)
    assert [e.file for e in errors if "not valid TOML" in e.problem] == [str(d / "devices" / "pi-a.toml")]


def test_missing_path(tmp_path: Path) -> None:
    errors = check(tmp_path / "nope.toml")
    assert errors and errors[0].file == str(tmp_path / "nope.toml")


def test_several_errors_reported_in_one_pass(tmp_path: Path) -> None:
    site = SITE.replace("unlock_s = 5", "unlcok_s = 5").replace('"Europe/London"', '"Nowhere/City"')
    people = PEOPLE.replace("0F00A1B2C3", "XYZ")
    dev = DEVICE.replace("pin = 17", "pin = 99")
    d = make_site(tmp_path / "s", site=site, people=people, devices={"pi-a": dev})
    with pytest.raises(ConfigErrors) as exc:
        load_site_dir(d)
    errors = exc.value.errors
    assert len(errors) > 1
    keys = {(Path(e.file).name, e.key) for e in errors}
    assert {("site.toml", "doors.lobby_in.unlcok_s"), ("site.toml", "site.timezone"),
            ("people.toml", "people.alice.cards[0].number"),
            ("pi-a.toml", "doors.lobby_in.lock.pin")} <= keys
    # The aggregate message lists every one of them.
    assert all(str(e) in str(exc.value) for e in errors)
    assert [str(e) for e in check(d)] == [str(e) for e in errors]


def test_config_errors_are_value_errors(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", devices={"pi-a": DEVICE.replace("pin = 17", "pin = 99")})
    with pytest.raises(ValueError):
        load_site_dir(d)


# --------------------------------------------------------------------- CLI


def test_cli_config_check_demo_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "check", str(DEMO)]) == 0
    assert capsys.readouterr().out.strip() == "ok"


def test_cli_config_check_demo_device_names_the_missing_pi_certificate(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "check", str(DEMO / "devices" / "pi-lobby.toml")]) == 1
    out = capsys.readouterr().out
    assert "broker.cert_file: /etc/doorkeep/pki/pi-lobby.crt does not exist" in out and "fix:" in out


def test_cli_config_check_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = SITE.replace("unlock_s = 5", "unlcok_s = 5")
    d = make_site(tmp_path / "s", site=site, devices={"pi-a": DEVICE.replace("pin = 17", "pin = 99")})
    assert cli.main(["config", "check", str(d)]) == 1
    out = capsys.readouterr().out
    assert "ok" not in out.split()
    assert "doors.lobby_in.unlcok_s" in out and str(d / "site.toml") in out
    assert "doors.lobby_in.lock.pin" in out and str(d / "devices" / "pi-a.toml") in out
    assert len(out.strip().splitlines()) == 2


def test_cli_key_init_writes_0600_hex_and_refuses_overwrite(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys" / "credential.key"
    assert cli.main(["key", "init", str(path)]) == 0
    text = path.read_text().strip()
    assert len(text) == 64 and all(c in "0123456789abcdef" for c in text)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path, source="test") == bytes.fromhex(text)

    assert cli.main(["key", "init", str(path)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert path.read_text().strip() == text  # untouched


def test_two_key_files_differ(tmp_path: Path) -> None:
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    assert cli.main(["key", "init", str(a)]) == 0
    assert cli.main(["key", "init", str(b)]) == 0
    assert a.read_text() != b.read_text()


# ---------------------------------------------------------------- load_key


def test_load_key_rejects_world_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "credential.key"
    path.write_text("ab" * 32 + "\n")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError) as exc:
        load_key(path, source="dev.toml")
    assert exc.value.fix == f"chmod 600 {path}"
    assert "644" in exc.value.problem
    os.chmod(path, 0o600)
    assert load_key(path, source="dev.toml") == b"\xab" * 32


def test_load_key_missing_file_says_how_to_create(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError) as exc:
        load_key(tmp_path / "none.key", source="dev.toml")
    assert "doorkeep key init" in exc.value.fix and exc.value.file == "dev.toml"


def test_load_key_rejects_short_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "credential.key"
    path.write_text("ab" * 16)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="16 bytes"):
        load_key(path, source="x")


def test_load_key_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "cd" * 32)
    # The environment wins over a (here unusable) key file and over no file at all.
    bad = tmp_path / "credential.key"
    bad.write_text("not a key")
    os.chmod(bad, 0o644)
    assert load_key(bad, source="x") == b"\xcd" * 32
    assert load_key(None, source="x") == b"\xcd" * 32


@pytest.mark.parametrize("value", ["zz" * 32, "cd" * 31])
def test_load_key_env_must_be_64_hex(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(ConfigError) as exc:
        load_key(None, source="x")
    assert "64 hex" in exc.value.fix


def test_load_key_without_file_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError) as exc:
        load_key(None, source="dev.toml")
    assert KEY_ENV in exc.value.fix


def test_typo_gets_a_did_you_mean_hint(tmp_path: Path) -> None:
    d = make_site(tmp_path / "s", site=SITE.replace("unlock_s = 5", "unlcok_s = 5"))
    assert only(check(d), "doors.lobby_in.unlcok_s").fix == "did you mean `unlock_s`?"


def test_valid_until_date_lasts_through_that_local_day(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    people = PEOPLE + "valid_from = 2026-07-01\nvalid_until = 2026-07-31\n"
    alice = load_site_dir(make_site(tmp_path / "s", people=people)).people["alice"]
    # Europe/London is on BST (UTC+1) in July: the day starts at 23:00 UTC the evening before.
    assert alice.valid_from == datetime(2026, 6, 30, 23, tzinfo=timezone.utc).timestamp()
    assert alice.valid_until == datetime(2026, 7, 31, 23, tzinfo=timezone.utc).timestamp()


@pytest.mark.parametrize("extra, key", [
    ("\n[broker]\nkeepalive = 0\n", "broker.keepalive"),
    ("baudrate = 0\n", "doors.lobby_in.reader.baudrate"),
    ("silence_timeout_s = 0\n", "doors.lobby_in.reader.silence_timeout_s"),
])
def test_zero_is_an_error_not_a_silent_default(tmp_path: Path, extra: str, key: str) -> None:
    device = DEVICE + extra if extra.startswith("\n[") else DEVICE.replace(
        'protocol = "em4100"\n', 'protocol = "em4100"\n' + extra)
    errors = check(make_site(tmp_path / "s", devices={"pi-a": device}))
    assert [e.key for e in errors] == [key], [str(e) for e in errors]


def test_jpeg_quality_zero_is_out_of_range(tmp_path: Path) -> None:
    device = DEVICE + '\n[cameras.c]\nsource = "0"\njpeg_quality = 0\n'
    only(check(make_site(tmp_path / "s", devices={"pi-a": device})), "cameras.c.jpeg_quality")


# ------------------------------------------------------- rules: site keys

RULE_SITE = SITE + """
[areas.vault]
restricted = true
clearance = 5
escort_required = true
two_person = true
anti_passback = "hard"
anti_passback_reset_min = 15
max_occupancy = 4

[doors.vault]
from = "lobby"
to = "vault"
pin_required = true

[schedules.business]
windows = [{ days = ["mon", "tue", "wed", "thu", "fri"], start = "07:00", end = "19:00" }]

[doors.front]
from = "outside"
to = "lobby"
mode = "unlocked_on_schedule"
unlock_schedule = "business"
first_person_in = true

[rules]
escort_window_s = 20
two_person_window_s = 45.5
pin_max_attempts = 5
pin_lockout_s = 600
"""

RULE_DEVICE = DEVICE + """
[doors.vault]
reader = { url = "loop://", protocol = "em4100" }
lock = { pin = 18 }

[doors.front]
reader = { url = "loop://", protocol = "em4100" }
lock = { pin = 19 }
"""


def rule_site(tmp_path: Path, site: str = RULE_SITE, people: str | None = PEOPLE) -> Path:
    return make_site(tmp_path / "s", site=site, people=people, devices={"pi-a": RULE_DEVICE})


def test_rule_keys_load(tmp_path: Path) -> None:
    from doorkeep.model import AntiPassback, DoorMode, Rules

    site = load_site_dir(rule_site(tmp_path)).site
    vault = site.areas["vault"]
    assert (vault.escort_required, vault.two_person, vault.anti_passback, vault.anti_passback_reset_min,
            vault.max_occupancy) == (True, True, AntiPassback.HARD, 15.0, 4)
    assert site.doors["vault"].pin_required and site.doors["vault"].mode is DoorMode.NORMAL
    front = site.doors["front"]
    assert (front.mode, front.unlock_schedule, front.first_person_in) == (DoorMode.UNLOCKED_ON_SCHEDULE, "business", True)
    assert site.rules == Rules(escort_window_s=20.0, two_person_window_s=45.5, pin_max_attempts=5, pin_lockout_s=600.0)


def test_rule_keys_default(tmp_path: Path) -> None:
    from doorkeep.model import AntiPassback, DoorMode, Rules

    site = load_site_dir(make_site(tmp_path / "s")).site
    lobby, door = site.areas["lobby"], site.doors["lobby_in"]
    assert (lobby.escort_required, lobby.two_person, lobby.anti_passback, lobby.anti_passback_reset_min,
            lobby.max_occupancy) == (False, False, AntiPassback.NONE, None, None)
    assert (door.pin_required, door.mode, door.unlock_schedule, door.first_person_in) == (
        False, DoorMode.NORMAL, None, False)
    assert site.rules == Rules()


def test_rules_survive_with_people(tmp_path: Path) -> None:
    from doorkeep.config import with_people

    b = load_site_dir(rule_site(tmp_path))
    site = with_people(b.site, b.people, b.cards, b"k" * 32)
    assert site.rules.pin_max_attempts == 5 and site.doors["front"].first_person_in


@pytest.mark.parametrize(("old", "new", "key", "hint"), [
    ('anti_passback = "hard"', 'anti_passback = "strict"', "areas.vault.anti_passback", "soft"),
    ("anti_passback_reset_min = 15", "anti_passback_reset_min = 0", "areas.vault.anti_passback_reset_min", "minutes"),
    ("max_occupancy = 4", "max_occupancy = 0", "areas.vault.max_occupancy", "no limit"),
    ("max_occupancy = 4", 'max_occupancy = "4"', "areas.vault.max_occupancy", "int"),
    ("two_person = true", 'two_person = "yes"', "areas.vault.two_person", "bool"),
    ("pin_required = true", "pin_required = 1", "doors.vault.pin_required", "bool"),
    ('mode = "unlocked_on_schedule"', 'mode = "open"', "doors.front.mode", "unlocked_on_schedule"),
    ('unlock_schedule = "business"', 'unlock_schedule = "busines"', "doors.front.unlock_schedule", "business"),
    ("escort_window_s = 20", "escort_window_s = 0", "rules.escort_window_s", "positive"),
    ("pin_max_attempts = 5", "pin_max_attempts = 0", "rules.pin_max_attempts", "wrong PINs"),
    ("pin_lockout_s = 600", "pin_lockout_s = -1", "rules.pin_lockout_s", "positive"),
    ("pin_lockout_s = 600", "pin_lockout_s = 600\npin_lockout = 3", "rules.pin_lockout", "pin_lockout_s"),
])
def test_rule_key_errors(tmp_path: Path, old: str, new: str, key: str, hint: str) -> None:
    assert old in RULE_SITE
    err = only(check(rule_site(tmp_path, site=RULE_SITE.replace(old, new))), key)
    assert err.file.endswith("site.toml")
    assert hint in err.fix or hint in err.problem, str(err)


def test_reset_minutes_without_anti_passback(tmp_path: Path) -> None:
    site = RULE_SITE.replace('anti_passback = "hard"\n', "")
    err = only(check(rule_site(tmp_path, site=site)), "areas.vault.anti_passback_reset_min")
    assert "no effect" in err.problem and 'anti_passback = "soft"' in err.fix


def test_unlocked_on_schedule_needs_a_schedule(tmp_path: Path) -> None:
    site = RULE_SITE.replace('unlock_schedule = "business"\n', "")
    err = only(check(rule_site(tmp_path, site=site)), "doors.front.unlock_schedule")
    assert "required" in err.problem


@pytest.mark.parametrize("key", ["unlock_schedule", "first_person_in"])
def test_door_mode_keys_need_the_mode(tmp_path: Path, key: str) -> None:
    site = RULE_SITE.replace('mode = "unlocked_on_schedule"\n', "")
    if key == "unlock_schedule":
        site = site.replace("first_person_in = true\n", "")
    err = only(check(rule_site(tmp_path, site=site)), f"doors.front.{key}")
    assert "no effect" in err.problem and "unlocked_on_schedule" in err.fix


def test_rules_must_be_a_table(tmp_path: Path) -> None:
    site = SITE.replace("[site]", "rules = 3\n\n[site]")
    only(check(make_site(tmp_path / "s", site=site)), "rules")


def test_midnight_window_loads_clean(tmp_path: Path) -> None:
    site = SITE + '\n[schedules.nights]\nwindows = [{ days = ["fri"], start = "22:00", end = "06:00" }]\n'
    assert check(make_site(tmp_path / "s", site=site)) == []


# ----------------------------------------------------- rules: people keys

VISITOR = """
[people.vic]
name = "Vic Visitor"
kind = "visitor"
host = "alice"
company = "Acme Ltd"
allowed_areas = ["lobby"]
escort_required = false
valid_from = 2026-04-01T09:00:00Z
valid_until = 2026-04-01T17:00:00Z
cards = [{ format = "ascii", number = "V0001" }]
"""


def test_visitor_keys_load(tmp_path: Path) -> None:
    people = load_site_dir(make_site(tmp_path / "s", people=PEOPLE + VISITOR)).people
    vic = people["vic"]
    assert (vic.host, vic.company, vic.allowed_areas, vic.escort_required) == ("alice", "Acme Ltd", ("lobby",), False)
    assert people["alice"].host is None and people["alice"].allowed_areas == ()


def test_visitor_escort_required_defaults_to_true(tmp_path: Path) -> None:
    people = PEOPLE + VISITOR.replace("escort_required = false\n", "")
    assert load_site_dir(make_site(tmp_path / "s", people=people)).people["vic"].escort_required is True


@pytest.mark.parametrize(("old", "new", "key", "hint"), [
    ('host = "alice"', 'host = "alise"', "people.vic.host", "alice"),
    ('host = "alice"', 'host = "vic"', "people.vic.host", "alice"),
    ('allowed_areas = ["lobby"]', 'allowed_areas = ["lobby", "roof"]', "people.vic.allowed_areas", "outside"),
    ("escort_required = false", 'escort_required = "no"', "people.vic.escort_required", "bool"),
    ('company = "Acme Ltd"', "company = 7", "people.vic.company", "str"),
    ('kind = "visitor"\n', 'kind = "visitor"\naccess_levels = ["staff"]\n', "people.vic.access_levels", "allowed_areas"),
])
def test_visitor_key_errors(tmp_path: Path, old: str, new: str, key: str, hint: str) -> None:
    assert old in VISITOR
    err = only(check(make_site(tmp_path / "s", people=PEOPLE + VISITOR.replace(old, new))), key)
    assert err.file.endswith("people.toml")
    assert hint in err.fix or hint in err.problem, str(err)


@pytest.mark.parametrize("key, value", [("host", '"alice"'), ("allowed_areas", '["lobby"]'),
                                        ("escort_required", "true")])
def test_visitor_keys_on_an_employee(tmp_path: Path, key: str, value: str) -> None:
    people = PEOPLE + f'\n[people.bob]\nname = "Bob"\n{key} = {value}\n'
    err = only(check(make_site(tmp_path / "s", people=people)), f"people.bob.{key}")
    assert "only applies to visitors" in err.problem and 'kind = "visitor"' in err.fix


def test_pin_is_hashed_with_the_key_and_never_kept_in_clear(tmp_path: Path) -> None:
    from doorkeep.config import with_people
    from doorkeep.credentials import pin_hash

    people = PEOPLE + 'pin = "0417"\n'
    bundle = load_site_dir(make_site(tmp_path / "s", people=people))
    assert bundle.people["alice"].pin_hash is None  # not hashed before the key is known
    assert [c.pin for c in bundle.cards] == ["0417"]
    assert "0417" not in repr(bundle.cards)
    site = with_people(bundle.site, bundle.people, bundle.cards, b"k" * 32)
    alice = site.people["alice"]
    assert alice.pin_hash == pin_hash(b"k" * 32, "0417")
    assert "0417" not in repr(site)


@pytest.mark.parametrize("value", ['"123"', '"123456789"', '"12a4"', '" 1234"', '""'])
def test_pin_must_be_4_to_8_digits(tmp_path: Path, value: str) -> None:
    err = only(check(make_site(tmp_path / "s", people=PEOPLE + f"pin = {value}\n")), "people.alice.pin")
    assert "4 to 8 digits" in err.problem


def test_pin_as_a_number_must_be_quoted(tmp_path: Path) -> None:
    err = only(check(make_site(tmp_path / "s", people=PEOPLE + "pin = 417\n")), "people.alice.pin")
    assert 'pin = "417"' in err.fix


def test_pin_without_a_card(tmp_path: Path) -> None:
    people = PEOPLE + '\n[people.bob]\nname = "Bob"\npin = "1234"\n'
    err = only(check(make_site(tmp_path / "s", people=people)), "people.bob.pin")
    assert "card" in err.fix


# ------------------------------------------- door supervision: tamper, sounder, pre-alarm


def test_tamper_and_sounder_keys_load(tmp_path: Path) -> None:
    dev = DEVICE + "\n[doors.lobby_in.tamper]\npin = 23\nactive_low = false\n" \
        "\n[doors.lobby_in.sounder]\npin = 18\nactive_high = false\n"
    d = make_site(tmp_path / "s", devices={"pi-a": dev})
    assert check(d) == []
    hw = load_site_dir(d).devices["pi-a"].doors["lobby_in"]
    assert (hw.tamper.pin, hw.tamper.active_low) == (23, False)  # type: ignore[union-attr]
    assert (hw.sounder.pin, hw.sounder.active_high) == (18, False)  # type: ignore[union-attr]


def test_tamper_and_sounder_default_polarity_and_absence(tmp_path: Path) -> None:
    dev = DEVICE + "\n[doors.lobby_in.tamper]\npin = 23\n\n[doors.lobby_in.sounder]\npin = 18\n"
    hw = load_site_dir(make_site(tmp_path / "s", devices={"pi-a": dev})).devices["pi-a"].doors["lobby_in"]
    assert hw.tamper is not None and hw.tamper.active_low is True
    assert hw.sounder is not None and hw.sounder.active_high is True
    plain = load_site_dir(make_site(tmp_path / "p")).devices["pi-a"].doors["lobby_in"]
    assert plain.tamper is None and plain.sounder is None


def test_demo_has_tamper_switches_and_a_lab_sounder() -> None:
    bundle = load_site_dir(DEMO)
    doors = {did: hw for dev in bundle.devices.values() for did, hw in dev.doors.items()}
    assert all(hw.tamper is not None for hw in doors.values())
    assert doors["lab"].sounder is not None


@pytest.mark.parametrize("table, other", [("tamper", "lock"), ("sounder", "lock")])
def test_tamper_or_sounder_pin_conflict(tmp_path: Path, table: str, other: str) -> None:
    dev = DEVICE + f"\n[doors.lobby_in.{table}]\npin = 17\n"
    err = only(check(make_site(tmp_path / "s", devices={"pi-a": dev})), f"doors.lobby_in.{table}.pin")
    assert err.file.endswith("pi-a.toml")
    assert "GPIO17" in err.problem and f"doors.lobby_in.{other}" in err.problem
    assert "own GPIO" in err.fix


def test_tamper_and_sounder_on_the_same_pin(tmp_path: Path) -> None:
    dev = DEVICE + "\n[doors.lobby_in.tamper]\npin = 23\n\n[doors.lobby_in.sounder]\npin = 23\n"
    err = only(check(make_site(tmp_path / "s", devices={"pi-a": dev})), "doors.lobby_in.sounder.pin")
    assert "doors.lobby_in.tamper" in err.problem


@pytest.mark.parametrize("table, body, key, problem, fix", [
    ("tamper", "active_low = true", "doors.lobby_in.tamper.pin", "required", "pin = N"),
    ("sounder", "active_high = true", "doors.lobby_in.sounder.pin", "required", "pin = N"),
    ("tamper", "pin = 30", "doors.lobby_in.tamper.pin", "GPIO30", "0 to 27"),
    ("sounder", "pin = 18\nactive_high = \"yes\"", "doors.lobby_in.sounder.active_high", "must be bool",
     "active_high"),
    ("tamper", "pin = 23\nactive_high = true", "doors.lobby_in.tamper.active_high", "unknown key",
     "active_low"),
    ("sounder", "pin = 18\nactive_low = true", "doors.lobby_in.sounder.active_low", "unknown key",
     "active_high"),
])
def test_tamper_and_sounder_errors_name_file_key_and_fix(tmp_path: Path, table: str, body: str, key: str,
                                                          problem: str, fix: str) -> None:
    dev = DEVICE + f"\n[doors.lobby_in.{table}]\n{body}\n"
    err = only(check(make_site(tmp_path / "s", devices={"pi-a": dev})), key)
    assert err.file.endswith("pi-a.toml")
    assert problem in err.problem and fix in err.fix


def test_tamper_must_be_a_table(tmp_path: Path) -> None:
    dev = DEVICE + "\n[doors.lobby_in]\ntamper = 23\n"
    err = only(check(make_site(tmp_path / "s", devices={"pi-a": dev})), "doors.lobby_in.tamper")
    assert "must be a table" in err.problem


def prealarm_site(tmp_path: Path, keys: str) -> Path:
    return make_site(tmp_path / "s", site=SITE.replace("unlock_s = 5", "unlock_s = 5\n" + keys))


@pytest.mark.parametrize("keys, expected", [
    ("", 10.0),                                   # the default: 10 s before held_open_s (30 s)
    ("prealarm_s = 5", 5.0),
    ("prealarm_s = 0", 0.0),                      # no pre-alarm
    ("held_open_s = 12\nprealarm_s = 3.5", 3.5),
    ("held_open_s = 10", 0.0),                    # left out on a short held-open time: none
    ("held_open_s = 8", 0.0),
    ("held_open_s = 10.5", 10.0),
])
def test_prealarm_loads(tmp_path: Path, keys: str, expected: float) -> None:
    d = prealarm_site(tmp_path, keys)
    assert check(d) == []
    assert load_site_dir(d).site.doors["lobby_in"].prealarm_s == expected


@pytest.mark.parametrize("keys, problem", [
    ("prealarm_s = 30", "not less than held_open_s (30 s)"),
    ("held_open_s = 8\nprealarm_s = 10", "not less than held_open_s (8 s)"),
    ("prealarm_s = -1", "must be 0 or more"),
    ("prealarm_s = nan", "must be 0 or more"),
    ('prealarm_s = "10"', "must be float"),
])
def test_prealarm_errors_name_file_key_and_fix(tmp_path: Path, keys: str, problem: str) -> None:
    d = prealarm_site(tmp_path, keys)
    err = only(check(d), "doors.lobby_in.prealarm_s")
    assert err.file == str(d / "site.toml")
    assert problem in err.problem
    assert "prealarm_s" in err.fix


def test_prealarm_travels_in_the_policy(tmp_path: Path) -> None:
    """The edge reads door timings from its signed policy: the pre-alarm must survive the codec."""
    from doorkeep.policy import site_from_dict, site_to_dict

    site = load_site_dir(prealarm_site(tmp_path, "prealarm_s = 7.5")).site
    assert site_from_dict(site_to_dict(site)).doors["lobby_in"].prealarm_s == 7.5



@pytest.mark.parametrize("name", ["server", "broker"])
def test_a_device_may_not_take_the_servers_or_the_brokers_name(tmp_path: Path, name: str) -> None:
    # The broker ACL gives the certificate named `server` the whole site: a device so named would get it too.
    device = DEVICE.replace('device = "pi-a"', f'device = "{name}"')
    errors = check(make_site(tmp_path / "s", devices={name: device}))
    assert "device" in [e.key for e in errors], [str(e) for e in errors]
    assert any("reserved" in str(e) for e in errors)
