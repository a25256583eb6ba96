"""A lift in the config files (doorkeep/config.py) and on the wire (doorkeep/contract.py): every mistake names the
file, the dotted key and the fix; a request without a floor and a decision without floors look as they always
did, so a peer that knows nothing of lifts sees nothing new."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from doorkeep.config import FloorHardware, check, load_site_dir
from doorkeep.contract import MAX_FLOORS, MAX_IDENT, DecisionMsg, RequestMsg, floor_list
from doorkeep.errors import ConfigError, MessageError
from doorkeep.model import DoorKind, LiftFloor, OfflineMode
from tests.unit.test_config import DEVICE, SITE, make_site, only

LIFT_SITE = SITE + """
[areas.office]
name = "Office"

[areas.roof]
name = "Roof"

[doors.lift]
name = "Lift"
kind = "lift"
floors = ["lobby", "office"]
public_floors = { lobby = "always" }
offline_floors = { office = "cache" }
offline = "deny"
"""

LIFT_DEVICE = DEVICE + """
[doors.lift]
reader = { url = "loop://", protocol = "em4100" }
dispatch = true
tamper = { pin = 4 }

[doors.lift.floors.lobby]
relay = 5
button = 6
button_active_low = false

[doors.lift.floors.office]
relay = 13
relay_active_high = false
"""


def lift_site(root: Path, site: str = LIFT_SITE, device: str = LIFT_DEVICE) -> Path:
    return make_site(root, site=site, devices={"pi-a": device})


def site_with(lift_keys: str) -> str:
    """The lift site with the lift's table written as ``lift_keys`` (its name and kind kept)."""
    head, _ = LIFT_SITE.split("[doors.lift]")
    return head + '[doors.lift]\nname = "Lift"\nkind = "lift"\n' + lift_keys


def lift_error(d: Path, key: str, file: str = "site.toml") -> ConfigError:
    """The one error on ``key``, in ``file`` of the site directory, with a problem and a fix."""
    err = only(check(d), key)
    assert err.file == str(d / file if file == "site.toml" else d / "devices" / file)
    assert err.problem and err.fix
    return err


# ------------------------------------------------------------ a valid lift


def test_a_lift_and_its_cab_parse_into_what_they_say(tmp_path: Path) -> None:
    d = lift_site(tmp_path / "s")
    assert check(d) == []
    bundle = load_site_dir(d)
    lift = bundle.site.doors["lift"]
    assert lift.kind is DoorKind.LIFT and (lift.from_area, lift.to_area) == ("", "")
    assert lift.floors == (LiftFloor("lobby", "always", None), LiftFloor("office", None, OfflineMode.CACHE))
    assert lift.offline is OfflineMode.DENY and lift.entered == ("lobby", "office")
    cab = bundle.devices["pi-a"].doors["lift"]
    assert cab.lock is None and cab.dispatch is True and cab.tamper is not None
    assert cab.floors == (FloorHardware("lobby", 5, True, 6, False), FloorHardware("office", 13, False, None, True))
    plain = bundle.devices["pi-a"].doors["lobby_in"]
    assert plain.floors == () and plain.dispatch is False


# ------------------------------------------------------------- site errors


def test_from_or_to_on_a_lift_is_an_error(tmp_path: Path) -> None:
    d = lift_site(tmp_path / "s", site=LIFT_SITE.replace('kind = "lift"', 'kind = "lift"\nfrom = "outside"'))
    err = lift_error(d, "doors.lift.from")
    assert "floors" in err.problem and "remove from and to" in err.fix
    d = lift_site(tmp_path / "t", site=LIFT_SITE.replace('kind = "lift"', 'kind = "lift"\nto = "lobby"'))
    lift_error(d, "doors.lift.to")


def test_a_floor_that_is_not_an_area(tmp_path: Path) -> None:
    d = lift_site(tmp_path / "s", site=LIFT_SITE.replace('floors = ["lobby", "office"]',
                                                         'floors = ["lobby", "office", "attic"]'))
    err = lift_error(d, "doors.lift.floors[2]")
    assert "'attic'" in err.problem and "[areas.attic]" in err.fix


def test_a_floor_listed_twice(tmp_path: Path) -> None:
    d = lift_site(tmp_path / "s", site=LIFT_SITE.replace('floors = ["lobby", "office"]',
                                                         'floors = ["lobby", "office", "lobby"]'))
    err = lift_error(d, "doors.lift.floors[2]")
    assert "twice" in err.problem and "once" in err.fix


def test_a_lift_with_no_floors(tmp_path: Path) -> None:
    d = lift_site(tmp_path / "s", site=site_with("floors = []\n"))
    err = lift_error(d, "doors.lift.floors")
    assert "at least one floor" in err.problem and "floors = [" in err.fix


@pytest.mark.parametrize("keys", ["", 'floors = "lobby"\n'])
def test_a_lift_without_a_list_of_floors_is_told_once(tmp_path: Path, keys: str) -> None:
    d = lift_site(tmp_path / "s", site=site_with(keys))
    err = lift_error(d, "doors.lift.floors")
    assert "floors = [" in err.fix


def test_a_public_floor_that_is_not_one_of_the_lifts_floors(tmp_path: Path) -> None:
    d = lift_site(tmp_path / "s", site=LIFT_SITE.replace('public_floors = { lobby = "always" }',
                                                         'public_floors = { roof = "always" }'))
    err = lift_error(d, "doors.lift.public_floors.roof")
    assert "not one of this lift's floors" in err.problem and "lobby, office" in err.fix


def test_a_public_floor_on_a_schedule_the_site_lacks(tmp_path: Path) -> None:
    d = lift_site(tmp_path / "s", site=LIFT_SITE.replace('public_floors = { lobby = "always" }',
                                                         'public_floors = { lobby = "weekends" }'))
    err = lift_error(d, "doors.lift.public_floors.lobby")
    assert "'weekends'" in err.problem and "always" in err.fix


@pytest.mark.parametrize("value", ['"sometimes"', "true", "1"])
def test_an_offline_floor_with_a_bad_value(tmp_path: Path, value: str) -> None:
    d = lift_site(tmp_path / "s", site=LIFT_SITE.replace('offline_floors = { office = "cache" }',
                                                         f"offline_floors = {{ office = {value} }}"))
    err = lift_error(d, "doors.lift.offline_floors.office")
    assert "cache" in err.fix and "deny" in err.fix


@pytest.mark.parametrize("key, value", [("floors", '["lobby"]'), ("public_floors", '{ lobby = "always" }'),
                                        ("offline_floors", '{ lobby = "cache" }')])
def test_lift_keys_on_a_door_that_is_not_a_lift(tmp_path: Path, key: str, value: str) -> None:
    site = LIFT_SITE.replace('to = "lobby"\n', f'to = "lobby"\n{key} = {value}\n', 1)
    d = lift_site(tmp_path / "s", site=site)
    err = lift_error(d, f"doors.lobby_in.{key}")
    assert "only a lift" in err.problem and 'kind = "lift"' in err.fix


@pytest.mark.parametrize("extra, key", [
    ('mode = "unlocked_on_schedule"\nunlock_schedule = "always"\n', "mode"),
    ('interlock = "pair"\n', "interlock"),  # lobby_in joins the group too: a group of one is another error
    ("visitor_checkout = true\n", "visitor_checkout"),
])
def test_a_lift_cannot_have_a_door_mode_an_interlock_or_a_visitor_checkout(tmp_path: Path, extra: str,
                                                                            key: str) -> None:
    site = LIFT_SITE.replace('to = "lobby"\n', 'to = "lobby"\ninterlock = "pair"\n', 1) if key == "interlock" \
        else LIFT_SITE
    d = lift_site(tmp_path / "s", site=site + extra)
    err = lift_error(d, f"doors.lift.{key}")
    assert "lift" in err.problem and "remove the key" in err.fix


def test_a_lift_has_no_tailgate_window(tmp_path: Path) -> None:
    d = lift_site(tmp_path / "s", site=LIFT_SITE + "tailgate_s = 2\n")
    err = lift_error(d, "doors.lift.tailgate_s")
    assert "only a turnstile" in err.problem and "remove the key" in err.fix


# ----------------------------------------------------------- device errors


def test_a_lift_cab_with_a_lock(tmp_path: Path) -> None:
    dev = LIFT_DEVICE.replace("dispatch = true", "dispatch = true\nlock = { pin = 20 }")
    err = lift_error(lift_site(tmp_path / "s", device=dev), "doors.lift.lock", "pi-a.toml")
    assert "no lock" in err.problem and "remove the lock" in err.fix


def test_dispatch_on_a_door_that_is_not_a_lift(tmp_path: Path) -> None:
    dev = LIFT_DEVICE + "\n[doors.lobby_in]\ndispatch = true\n"
    err = lift_error(lift_site(tmp_path / "s", device=dev), "doors.lobby_in.dispatch", "pi-a.toml")
    assert "only a lift" in err.problem


def test_destination_dispatch_without_any_button_input(tmp_path: Path) -> None:
    dev = LIFT_DEVICE.replace("button = 6\nbutton_active_low = false\n", "")
    err = lift_error(lift_site(tmp_path / "s", device=dev), "doors.lift.dispatch", "pi-a.toml")
    assert "button" in err.problem and "button = N" in err.fix
    assert check(lift_site(tmp_path / "t", device=dev.replace("dispatch = true\n", ""))) == [], \
        "a cab without buttons is fine when it does not dispatch"


@pytest.mark.parametrize("wire", ["contact = { pin = 20 }", "rex = { pin = 20 }", "sounder = { pin = 20 }"])
def test_a_lift_cab_has_no_contact_rex_or_sounder(tmp_path: Path, wire: str) -> None:
    dev = LIFT_DEVICE.replace("dispatch = true", f"dispatch = true\n{wire}")
    err = lift_error(lift_site(tmp_path / "s", device=dev), "doors.lift.floors", "pi-a.toml")
    assert "no door contact" in err.problem and "tamper and camera may stay" in err.fix


def test_a_floor_of_the_site_without_a_relay_in_the_cab(tmp_path: Path) -> None:
    dev = LIFT_DEVICE.split("[doors.lift.floors.office]")[0]
    err = lift_error(lift_site(tmp_path / "s", device=dev), "doors.lift.floors.office", "pi-a.toml")
    assert "no relay" in err.problem and "relay = N" in err.fix


def test_a_floor_relay_the_site_does_not_list(tmp_path: Path) -> None:
    dev = LIFT_DEVICE + "\n[doors.lift.floors.roof]\nrelay = 26\n"
    err = lift_error(lift_site(tmp_path / "s", device=dev), "doors.lift.floors.roof", "pi-a.toml")
    assert "does not list this floor" in err.problem and "'roof'" in err.fix


def test_a_lift_cab_with_no_floor_relays_at_all(tmp_path: Path) -> None:
    dev = LIFT_DEVICE.split("[doors.lift.floors.lobby]")[0].replace("dispatch = true\n", "") + "lock = { pin = 20 }\n"
    err = lift_error(lift_site(tmp_path / "s", device=dev), "doors.lift.floors", "pi-a.toml")
    assert "floors' relays" in err.problem


def test_a_door_with_floor_relays_that_is_not_a_lift(tmp_path: Path) -> None:
    dev = DEVICE.split("[doors.lobby_in.lock]")[0] + "\n[doors.lobby_in.floors.lobby]\nrelay = 5\n"
    site = LIFT_SITE.split("[doors.lift]")[0]
    err = lift_error(lift_site(tmp_path / "s", site=site, device=dev), "doors.lobby_in.kind")
    assert "not a lift" in err.problem and 'kind = "lift"' in err.fix


@pytest.mark.parametrize("old, new, key", [
    ("relay = 13", "relay = 5", "doors.lift.floors.office.relay"),
    ("relay = 13", "relay = 13\nbutton = 6", "doors.lift.floors.office.button"),
    ("relay = 13", "relay = 17", "doors.lift.floors.office.relay"),
])
def test_a_gpio_claimed_twice_across_floors(tmp_path: Path, old: str, new: str, key: str) -> None:
    err = lift_error(lift_site(tmp_path / "s", device=LIFT_DEVICE.replace(old, new)), key, "pi-a.toml")
    assert "already used by" in err.problem and "own GPIO" in err.fix


def test_an_unknown_key_in_a_floor_table(tmp_path: Path) -> None:
    dev = LIFT_DEVICE.replace("relay = 13", "relay = 13\nrelay_active_hihg = true")
    err = lift_error(lift_site(tmp_path / "s", device=dev), "doors.lift.floors.office.relay_active_hihg", "pi-a.toml")
    assert "relay_active_high" in err.fix


# ---------------------------------------------------------------- contract


HASH = "ab" * 32


def request(**kw: Any) -> RequestMsg:
    return replace(RequestMsg(transaction="tx-1", door="lift", credential_hash=HASH, credential_last4="B2C3",
                              credential_format="em4100", ts="2026-03-30T09:00:00.123Z"), **kw)


def decision(**kw: Any) -> DecisionMsg:
    return replace(DecisionMsg(transaction="tx-1", door="lift", granted=True, reason="granted", person="alice",
                               unlock_s=8.0, ts="2026-03-30T09:00:00.150Z", grant="granted"), **kw)


def body(msg: Any) -> dict[str, Any]:
    return json.loads(msg.encode())


def raw(d: dict[str, Any]) -> bytes:
    return json.dumps(d).encode()


def test_a_request_without_a_floor_encodes_as_it_always_did() -> None:
    assert set(body(request())) == {"schema", "transaction", "door", "credential_hash", "credential_last4",
                                    "credential_format", "ts", "pin_hash"}
    assert RequestMsg.decode(request().encode()).floor is None


def test_a_request_with_a_floor_round_trips() -> None:
    msg = request(floor="level_2")
    assert body(msg)["floor"] == "level_2"
    assert RequestMsg.decode(msg.encode()) == msg


@pytest.mark.parametrize("floor", ["", "a/b", "level 2", 7, "x" * (MAX_IDENT + 1)])
def test_a_request_with_a_floor_that_is_not_an_area_id_is_refused(floor: Any) -> None:
    d = body(request())
    d["floor"] = floor
    with pytest.raises(MessageError, match="floor"):
        RequestMsg.decode(raw(d))


def test_a_decision_without_floors_encodes_as_it_always_did() -> None:
    assert "floors" not in body(decision())
    assert DecisionMsg.decode(decision().encode()).floors == ()


def test_a_decision_with_floors_round_trips_in_order() -> None:
    msg = decision(floors=("office", "lobby", "level_2"))
    assert body(msg)["floors"] == ["office", "lobby", "level_2"]
    back = DecisionMsg.decode(msg.encode())
    assert back == msg and back.floors == ("office", "lobby", "level_2")


def test_a_denial_with_floors_is_refused() -> None:
    d = body(decision(granted=False, reason="no_access", grant=None))
    d["floors"] = ["lobby"]
    with pytest.raises(MessageError, match="floors"):
        DecisionMsg.decode(raw(d))
    d["floors"] = []
    assert DecisionMsg.decode(raw(d)).floors == (), "an empty list says nothing"


@pytest.mark.parametrize("floors", [["lobby", "a/b"], ["lobby", ""], ["lobby", 3], ["x" * (MAX_IDENT + 1)],
                                    ["lobby", "office", "lobby"], "lobby", {"lobby": 1},
                                    [f"f{i}" for i in range(MAX_FLOORS + 1)]])
def test_a_decision_with_bad_floors_is_refused(floors: Any) -> None:
    d = body(decision())
    d["floors"] = floors
    with pytest.raises(MessageError, match="floors"):
        DecisionMsg.decode(raw(d))


def test_floor_list_takes_up_to_max_floors_distinct_area_ids() -> None:
    most = [f"f{i}" for i in range(MAX_FLOORS)]
    assert floor_list(most) == tuple(most)
    assert floor_list([]) == ()
    with pytest.raises(MessageError, match="at most"):
        floor_list([*most, "one_more"])
    with pytest.raises(MessageError, match="twice"):
        floor_list(["a", "b", "a"])
    with pytest.raises(MessageError, match="'dest'"):
        floor_list(["a/b"], name="dest")
