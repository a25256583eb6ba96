"""The decision function and schedules: one test per reason code, rule order, time zones."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date, datetime, time, timezone
from pathlib import Path

import pytest

from doorkeep.config import load_site_dir, with_people
from doorkeep.credentials import card_hash, last4, normalise, pin_hash
from doorkeep.decision import (
    PENDING_ESCORT,
    PENDING_TWO_PERSON,
    PENDING_VISITOR,
    AccessRequest,
    Decision,
    DecisionState,
    Pending,
    Presence,
    Reason,
    commit,
    decide,
)
from doorkeep.model import (
    WEEKDAYS,
    AccessEntry,
    AccessLevel,
    Area,
    Credential,
    CredentialState,
    Door,
    Person,
    PersonKind,
    PersonState,
    Rules,
    Schedule,
    Site,
    TimeWindow,
)
from doorkeep.schedule import is_open

KEY = b"k" * 32
DEMO = Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo"
ALL_DAYS = frozenset(WEEKDAYS)
WEEKDAYS_ONLY = frozenset(WEEKDAYS[:5])


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()  # type: ignore[misc]


# 2026-03-25 is a Wednesday, in GMT (UTC+0); BST (UTC+1) starts on Sunday 2026-03-29.
WED_NOON = utc(2026, 3, 25, 12, 0)
WED_2200 = utc(2026, 3, 25, 22, 0)
SAT_NOON = utc(2026, 3, 28, 12, 0)
CHRISTMAS_NOON = utc(2026, 12, 25, 12, 0)  # a Friday, and a holiday


def number(person: str) -> str:
    """A distinct 10-hex-digit EM4100 number per person."""
    return "0F00" + person.encode().hex().upper()[:6].ljust(6, "0")


def h(num: str) -> str:
    return card_hash(KEY, "em4100", num)


def build_site(people: list[Person], cards: dict[str, CredentialState] | None = None) -> Site:
    """A small site: a lobby for staff around the clock, a lab in business hours, a vault nobody may enter."""
    cards = cards or {}
    areas = {a: Area(a, a) for a in ("outside", "lobby", "lab", "vault")}
    doors = {
        "lobby_in": Door("lobby_in", "Lobby in", "outside", "lobby"),
        "lobby_out": Door("lobby_out", "Lobby out", "lobby", "outside"),
        "lab": Door("lab", "Lab", "lobby", "lab"),
        "vault": Door("vault", "Vault", "lobby", "vault"),
    }
    schedules = {
        "always": Schedule("always", "Always", (TimeWindow(ALL_DAYS, time(0, 0), None),)),
        "business": Schedule("business", "Business", (TimeWindow(WEEKDAYS_ONLY, time(7, 0), time(19, 0)),),
                             frozenset({date(2026, 12, 25)})),
        "evening": Schedule("evening", "Fri evening", (TimeWindow(frozenset({"fri"}), time(20, 0), None),)),
    }
    levels = {
        "staff": AccessLevel("staff", "Staff", (AccessEntry("lobby", "always"), AccessEntry("outside", "always"))),
        "lab": AccessLevel("lab", "Lab", (AccessEntry("lab", "business"),)),
        "lab_evening": AccessLevel("lab_evening", "Lab evening", (AccessEntry("lab", "evening"),)),
    }
    creds = {}
    for p in people:
        n = number(p.id)
        creds[h(n)] = Credential(h(n), last4(n), "em4100", p.id, cards.get(p.id, CredentialState.ACTIVE))
    return Site("t", "Test", "Europe/London", areas, doors, schedules, levels,
                {p.id: p for p in people}, creds)


def badge(site: Site, person: str, door: str, now: float) -> Decision:
    return decide(AccessRequest(door, h(number(person))), site, DecisionState(), now)


ALICE = Person("alice", "Alice", access_levels=("staff", "lab"))
BOB = Person("bob", "Bob", access_levels=("staff",))


# ------------------------------------------------------------ reason codes


def test_granted() -> None:
    site = build_site([ALICE])
    d = badge(site, "alice", "lobby_in", WED_NOON)
    assert d == Decision(Reason.GRANTED, "alice")
    assert d.granted


def test_unknown_credential() -> None:
    site = build_site([ALICE])
    d = decide(AccessRequest("lobby_in", h("0F00DEAD00")), site, DecisionState(), WED_NOON)
    assert d == Decision(Reason.UNKNOWN_CREDENTIAL, None)
    assert not d.granted


def test_unknown_credential_same_number_other_key() -> None:
    site = build_site([ALICE])
    other = card_hash(b"x" * 32, "em4100", number("alice"))
    assert decide(AccessRequest("lobby_in", other), site, DecisionState(), WED_NOON).reason is Reason.UNKNOWN_CREDENTIAL


@pytest.mark.parametrize("state", [CredentialState.LOST, CredentialState.REVOKED])
def test_credential_inactive(state: CredentialState) -> None:
    site = build_site([ALICE], {"alice": state})
    d = badge(site, "alice", "lobby_in", WED_NOON)
    assert d == Decision(Reason.CREDENTIAL_INACTIVE, "alice")
    assert not d.granted


def test_person_inactive_when_suspended() -> None:
    site = build_site([Person("sam", "Sam", access_levels=("staff",), state=PersonState.SUSPENDED)])
    assert badge(site, "sam", "lobby_in", WED_NOON) == Decision(Reason.PERSON_INACTIVE, "sam")


def test_person_inactive_when_card_owner_is_unknown() -> None:
    site = build_site([ALICE])
    orphan = Credential(h("0F00AAAAAA"), "AAAA", "em4100", "ghost")
    site.credentials[orphan.hash] = orphan
    d = decide(AccessRequest("lobby_in", orphan.hash), site, DecisionState(), WED_NOON)
    assert d.reason is Reason.PERSON_INACTIVE and not d.granted
    assert d.person == "ghost", "the event still names whom the card was issued to"


def test_not_yet_valid() -> None:
    site = build_site([Person("val", "Val", access_levels=("staff",), valid_from=WED_NOON + 1)])
    assert badge(site, "val", "lobby_in", WED_NOON) == Decision(Reason.NOT_YET_VALID, "val")
    # valid_from is inclusive
    assert badge(site, "val", "lobby_in", WED_NOON + 1).reason is Reason.GRANTED


def test_expired() -> None:
    site = build_site([Person("exp", "Exp", access_levels=("staff",), valid_until=WED_NOON)])
    assert badge(site, "exp", "lobby_in", WED_NOON - 1).reason is Reason.GRANTED
    # valid_until is exclusive: from that instant on, the person is expired
    assert badge(site, "exp", "lobby_in", WED_NOON) == Decision(Reason.EXPIRED, "exp")
    assert badge(site, "exp", "lobby_in", WED_NOON + 86400).reason is Reason.EXPIRED


@pytest.mark.parametrize("now", [WED_2200, SAT_NOON, CHRISTMAS_NOON], ids=["22:00", "saturday", "holiday"])
def test_outside_schedule(now: float) -> None:
    site = build_site([ALICE])
    d = badge(site, "alice", "lab", now)
    assert d == Decision(Reason.OUTSIDE_SCHEDULE, "alice")
    # same instant, a door her around-the-clock level covers
    assert badge(site, "alice", "lobby_in", now).reason is Reason.GRANTED


def test_lab_open_in_business_hours() -> None:
    site = build_site([ALICE])
    assert badge(site, "alice", "lab", WED_NOON).reason is Reason.GRANTED
    assert badge(site, "alice", "lab", utc(2026, 12, 24, 12, 0)).reason is Reason.GRANTED  # day before the holiday


def test_no_access_area_in_no_level() -> None:
    site = build_site([ALICE, BOB])
    assert badge(site, "alice", "vault", WED_NOON) == Decision(Reason.NO_ACCESS, "alice")
    # bob's levels do not cover the lab at any time: no_access, not outside_schedule
    assert badge(site, "bob", "lab", WED_NOON) == Decision(Reason.NO_ACCESS, "bob")
    assert badge(site, "bob", "lab", WED_2200).reason is Reason.NO_ACCESS


def test_no_access_with_unknown_level() -> None:
    site = build_site([Person("x", "X", access_levels=("gone",))])
    assert badge(site, "x", "lobby_in", WED_NOON).reason is Reason.NO_ACCESS


def test_access_is_by_destination_area() -> None:
    # staff covers "outside": the exit door (lobby -> outside) is granted for bob, but not the lab
    site = build_site([BOB])
    assert badge(site, "bob", "lobby_out", WED_2200).reason is Reason.GRANTED


def test_unknown_door() -> None:
    site = build_site([ALICE])
    d = badge(site, "alice", "garage", WED_NOON)
    assert d.reason is Reason.UNKNOWN_DOOR and not d.granted


def test_a_deleted_first_level_does_not_hide_a_later_one() -> None:
    """A level removed from the site but still named first on the person is skipped, not the end of the search."""
    site = build_site([Person("gil", "Gil", access_levels=("gone", "lab"))])
    assert badge(site, "gil", "lab", WED_NOON) == Decision(Reason.GRANTED, "gil")
    assert badge(site, "gil", "lab", WED_2200).reason is Reason.OUTSIDE_SCHEDULE


def test_any_level_that_is_open_grants() -> None:
    # lab (business hours) is checked first and is closed at Friday 21:00; lab_evening is open.
    site = build_site([Person("eve", "Eve", access_levels=("lab", "lab_evening"))])
    assert badge(site, "eve", "lab", utc(2026, 3, 27, 21, 0)).reason is Reason.GRANTED
    assert badge(site, "eve", "lab", utc(2026, 3, 26, 21, 0)).reason is Reason.OUTSIDE_SCHEDULE  # Thursday


# -------------------------------------------------------------- rule order


def test_lost_card_of_suspended_person_is_credential_inactive() -> None:
    sue = Person("sue", "Sue", access_levels=("staff",), state=PersonState.SUSPENDED)
    site = build_site([sue], {"sue": CredentialState.LOST})
    assert badge(site, "sue", "lobby_in", WED_NOON).reason is Reason.CREDENTIAL_INACTIVE


def test_suspended_and_expired_is_person_inactive() -> None:
    p = Person("p", "P", access_levels=("staff",), state=PersonState.SUSPENDED, valid_until=WED_NOON - 1)
    assert badge(build_site([p]), "p", "lobby_in", WED_NOON).reason is Reason.PERSON_INACTIVE


def test_expired_with_no_access_is_expired() -> None:
    p = Person("p", "P", access_levels=(), valid_until=WED_NOON - 1)
    assert badge(build_site([p]), "p", "vault", WED_NOON).reason is Reason.EXPIRED


def test_not_yet_valid_outside_schedule_is_not_yet_valid() -> None:
    p = Person("p", "P", access_levels=("lab",), valid_from=SAT_NOON + 1)
    assert badge(build_site([p]), "p", "lab", SAT_NOON).reason is Reason.NOT_YET_VALID


def test_decide_is_pure() -> None:
    site = build_site([ALICE])
    state = DecisionState()
    req = AccessRequest("lab", h(number("alice")))
    first = decide(req, site, state, WED_NOON)
    assert [decide(req, site, state, WED_NOON) for _ in range(3)] == [first] * 3
    assert state == DecisionState()


# ------------------------------------------------- schedules and time zones


@pytest.mark.parametrize(
    ("now", "open_"),
    [
        (utc(2026, 3, 30, 6, 30), True),    # Mon 07:30 BST
        (utc(2026, 3, 30, 5, 59), False),   # Mon 06:59 BST
        (utc(2026, 3, 30, 18, 0), False),   # Mon 19:00 BST: end is exclusive
        (utc(2026, 3, 30, 17, 59), True),   # Mon 18:59 BST
        (utc(2026, 3, 27, 6, 30), False),   # Fri 06:30 GMT
        (utc(2026, 3, 27, 7, 0), True),     # Fri 07:00 GMT: start is inclusive
        (utc(2026, 3, 27, 18, 30), True),   # Fri 18:30 GMT
        (utc(2026, 10, 23, 6, 30), True),   # Fri 07:30 BST (before the autumn change)
        (utc(2026, 10, 26, 6, 30), False),  # Mon 06:30 GMT (after it)
        (utc(2026, 10, 26, 7, 0), True),    # Mon 07:00 GMT
    ],
)
def test_schedule_is_read_in_site_time_zone_across_dst(now: float, open_: bool) -> None:
    site = build_site([ALICE])
    assert is_open(site.schedules["business"], now, "Europe/London") is open_
    expected = Reason.GRANTED if open_ else Reason.OUTSIDE_SCHEDULE
    assert badge(site, "alice", "lab", now).reason is expected


def test_2400_end_means_through_midnight() -> None:
    evening = build_site([]).schedules["evening"]  # Fridays 20:00-24:00
    fri = (2026, 1, 9)  # a Friday in GMT
    assert is_open(evening, utc(*fri, 23, 59) + 59.999, "Europe/London")
    assert is_open(evening, utc(*fri, 20, 0), "Europe/London")
    assert not is_open(evening, utc(*fri, 19, 59), "Europe/London")
    assert not is_open(evening, utc(2026, 1, 10, 0, 0), "Europe/London")  # Saturday 00:00


def test_always_open_at_every_hour_of_the_week() -> None:
    always = build_site([]).schedules["always"]
    start = utc(2026, 3, 23, 0, 0)
    assert all(is_open(always, start + k * 1800, "Europe/London") for k in range(7 * 48))


def test_holiday_is_a_local_date() -> None:
    sched = Schedule("s", "s", (TimeWindow(ALL_DAYS, time(0, 0), None),), frozenset({date(2026, 7, 4)}))
    ny = "America/New_York"  # UTC-4 in July
    assert not is_open(sched, utc(2026, 7, 5, 2, 0), ny)   # 4 July 22:00 local: holiday
    assert is_open(sched, utc(2026, 7, 4, 3, 0), ny)       # 3 July 23:00 local: not yet
    assert is_open(sched, utc(2026, 7, 5, 4, 30), ny)      # 5 July 00:30 local


def test_weekday_is_a_local_weekday() -> None:
    mon_only = Schedule("m", "m", (TimeWindow(frozenset({"mon"}), time(0, 0), None),))
    now = utc(2026, 3, 29, 15, 30)  # Sun 16:30 BST, Mon 00:30 JST
    assert is_open(mon_only, now, "Asia/Tokyo")
    assert not is_open(mon_only, now, "Europe/London")


def test_empty_schedule_is_never_open() -> None:
    assert not is_open(Schedule("n", "never", ()), WED_NOON, "Europe/London")


# --------------------------------------------------- midnight-spanning windows

LONDON = "Europe/London"
SAT_NIGHT = Schedule("night", "Saturday night", (TimeWindow(frozenset({"sat"}), time(22, 0), time(6, 0)),))


@pytest.mark.parametrize(
    ("now", "open_"),
    [
        (utc(2026, 3, 28, 21, 59), False),  # Sat 21:59 GMT
        (utc(2026, 3, 28, 22, 0), True),    # Sat 22:00 GMT: start is inclusive
        (utc(2026, 3, 28, 23, 59), True),
        (utc(2026, 3, 29, 0, 0), True),     # Sun 00:00 GMT: past midnight, still the Saturday window
        (utc(2026, 3, 29, 0, 59), True),    # Sun 00:59 GMT, a minute before the clocks go forward
        (utc(2026, 3, 29, 1, 0), True),     # Sun 02:00 BST (01:00-02:00 local never happened)
        (utc(2026, 3, 29, 4, 59), True),    # Sun 05:59 BST
        (utc(2026, 3, 29, 5, 0), False),    # Sun 06:00 BST: end is exclusive, 7 real hours after the start
        (utc(2026, 3, 29, 21, 30), False),  # Sun 22:30 BST: the window starts on Saturdays only
    ],
)
def test_midnight_window_across_spring_dst(now: float, open_: bool) -> None:
    assert is_open(SAT_NIGHT, now, LONDON) is open_


@pytest.mark.parametrize(
    ("now", "open_"),
    [
        (utc(2026, 10, 24, 20, 59), False),  # Sat 21:59 BST
        (utc(2026, 10, 24, 21, 0), True),    # Sat 22:00 BST
        (utc(2026, 10, 25, 0, 30), True),    # Sun 01:30 BST (first time round)
        (utc(2026, 10, 25, 1, 30), True),    # Sun 01:30 GMT (second time round)
        (utc(2026, 10, 25, 5, 59), True),    # Sun 05:59 GMT
        (utc(2026, 10, 25, 6, 0), False),    # Sun 06:00 GMT: 9 real hours after the start
    ],
)
def test_midnight_window_across_autumn_dst(now: float, open_: bool) -> None:
    assert is_open(SAT_NIGHT, now, LONDON) is open_


def test_window_starting_in_the_skipped_hour_opens_when_the_clocks_jump() -> None:
    sched = Schedule("s", "s", (TimeWindow(frozenset({"sun"}), time(1, 30), time(3, 0)),))
    assert not is_open(sched, utc(2026, 3, 29, 0, 59), LONDON)  # 00:59 GMT
    assert is_open(sched, utc(2026, 3, 29, 1, 0), LONDON)       # 02:00 BST
    assert not is_open(sched, utc(2026, 3, 29, 2, 0), LONDON)   # 03:00 BST


def test_midnight_window_wraps_sunday_into_monday() -> None:
    sched = Schedule("s", "s", (TimeWindow(frozenset({"sun"}), time(22, 0), time(2, 0)),))
    assert is_open(sched, utc(2026, 1, 12, 1, 0), LONDON)       # Mon 01:00
    assert not is_open(sched, utc(2026, 1, 12, 2, 0), LONDON)   # Mon 02:00
    assert not is_open(sched, utc(2026, 1, 11, 1, 0), LONDON)   # Sun 01:00: that part started on Saturday


def test_end_equal_to_start_is_a_full_day_from_the_start() -> None:
    sched = Schedule("s", "s", (TimeWindow(frozenset({"mon"}), time(7, 0), time(7, 0)),))
    assert not is_open(sched, utc(2026, 1, 12, 6, 59), LONDON)  # Mon 06:59
    assert is_open(sched, utc(2026, 1, 12, 7, 0), LONDON)
    assert is_open(sched, utc(2026, 1, 13, 6, 59), LONDON)      # Tue 06:59
    assert not is_open(sched, utc(2026, 1, 13, 7, 0), LONDON)


def test_holiday_closes_windows_that_start_on_it() -> None:
    # Thursday and Friday nights; Friday 2026-12-25 is a holiday (GMT: local = UTC).
    sched = Schedule("s", "s", (TimeWindow(frozenset({"thu", "fri"}), time(22, 0), time(6, 0)),),
                     frozenset({date(2026, 12, 25)}))
    assert is_open(sched, utc(2026, 12, 24, 23, 0), LONDON)      # Thu night, before the holiday
    assert is_open(sched, utc(2026, 12, 25, 3, 0), LONDON)       # ... runs on into the holiday morning
    assert not is_open(sched, utc(2026, 12, 25, 6, 0), LONDON)
    assert not is_open(sched, utc(2026, 12, 25, 22, 0), LONDON)  # the holiday's own night never opens
    assert not is_open(sched, utc(2026, 12, 26, 3, 0), LONDON)   # ... nor its Saturday-morning part
    assert is_open(sched, utc(2027, 1, 1, 23, 0), LONDON)        # next Friday night: open


def test_midnight_window_in_a_decision() -> None:
    night = Schedule("night", "Nights", (TimeWindow(WEEKDAYS_ONLY, time(19, 0), time(7, 0)),))
    site = build_site([Person("nora", "Nora", access_levels=("nights",))])
    site.schedules["night"] = night
    site.access_levels["nights"] = AccessLevel("nights", "Nights", (AccessEntry("lab", "night"),))
    assert badge(site, "nora", "lab", WED_2200).reason is Reason.GRANTED
    assert badge(site, "nora", "lab", utc(2026, 3, 28, 6, 0)).reason is Reason.GRANTED   # Sat 06:00, Fri's night
    assert badge(site, "nora", "lab", utc(2026, 3, 28, 7, 0)).reason is Reason.OUTSIDE_SCHEDULE
    assert badge(site, "nora", "lab", utc(2026, 3, 29, 5, 0)).reason is Reason.OUTSIDE_SCHEDULE  # Sun: no Sat night
    assert badge(site, "nora", "lab", WED_NOON).reason is Reason.OUTSIDE_SCHEDULE


# ------------------------------------------------------------------ Reason


def test_reason_values_are_unique_lowercase_identifiers() -> None:
    values = [r.value for r in Reason]
    assert len(values) == len(set(values))
    for v in values:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", v), v


def test_reason_granted_only_for_granted_codes() -> None:
    granted = {r for r in Reason if r.granted}
    assert granted == {Reason.GRANTED, Reason.GRANTED_ESCORTED, Reason.GRANTED_TWO_PERSON, Reason.GRANTED_OFFLINE}
    for r in Reason:
        assert Decision(r).granted is r.granted
    assert all(r.value.startswith("granted") for r in granted)


def test_reason_covers_design_vocabulary() -> None:
    design = ("granted granted_escorted granted_two_person granted_offline unknown_credential credential_inactive "
              "person_inactive expired not_yet_valid outside_schedule no_access clearance_too_low escort_required "
              "awaiting_second_person anti_passback occupancy_full lockdown pin_required wrong_pin "
              "offline_restricted").split()
    assert set(design) <= {r.value for r in Reason}


# ------------------------------------------------------------- card hashes


def test_em4100_hash_ignores_case_and_whitespace() -> None:
    assert card_hash(KEY, "em4100", "0f00a1b2c3") == card_hash(KEY, "em4100", "0F00A1B2C3")
    assert card_hash(KEY, "em4100", " 0F00A1B2C3\n") == card_hash(KEY, "em4100", "0F00A1B2C3")
    assert normalise("em4100", "0f00a1b2c3") == "0F00A1B2C3"


def test_hash_is_keyed_and_format_bound() -> None:
    a = card_hash(KEY, "em4100", "0F00A1B2C3")
    assert re.fullmatch(r"[0-9a-f]{64}", a)
    assert card_hash(b"K" * 32, "em4100", "0F00A1B2C3") != a
    assert card_hash(KEY, "ascii", "0F00A1B2C3") != a
    assert card_hash(KEY, "em4100", "0F00A1B2C4") != a
    assert a != "0F00A1B2C3" and "0F00A1B2C3" not in a


def test_ascii_numbers_keep_their_case() -> None:
    assert card_hash(KEY, "ascii", "abc123") != card_hash(KEY, "ascii", "ABC123")
    assert card_hash(KEY, "ascii", " 40011111 ") == card_hash(KEY, "ascii", "40011111")


def test_pin_hash_is_keyed_hmac_of_prefixed_pin() -> None:
    import hashlib
    import hmac

    assert pin_hash(KEY, "1234") == hmac.new(KEY, b"pin:1234", hashlib.sha256).hexdigest()
    assert pin_hash(KEY, "1234") != pin_hash(b"K" * 32, "1234")
    assert pin_hash(KEY, "1234") != pin_hash(KEY, "01234")
    assert pin_hash(KEY, "1234") != card_hash(KEY, "ascii", "1234")  # never collides with a card of the same digits


def test_access_request_carries_a_pin_hash_not_a_pin() -> None:
    req = AccessRequest("lab", "h")
    assert req.pin_hash is None
    assert AccessRequest("lab", "h", pin_hash(KEY, "1234")).pin_hash == pin_hash(KEY, "1234")
    assert not hasattr(req, "pin")


def test_decision_defaults() -> None:
    d = Decision(Reason.GRANTED, "alice")
    assert d.companions == () and d.violation is None


def test_last4() -> None:
    assert last4("0f00a1b2c3") == "B2C3"
    assert last4("40011111\n") == "1111"
    assert last4("12") == "12"


# -------------------------------------------------------------- demo site


@pytest.fixture(scope="module")
def demo() -> Site:
    b = load_site_dir(DEMO)
    return with_people(b.site, b.people, b.cards, key=KEY)


def demo_badge(site: Site, fmt: str, num: str, door: str, now: float) -> Decision:
    return decide(AccessRequest(door, card_hash(KEY, fmt, num)), site, DecisionState(), now)


MON_1000 = utc(2026, 3, 30, 9, 0)  # Monday 10:00 BST


def test_demo_credentials_hashed_under_key(demo: Site) -> None:
    alice = card_hash(KEY, "em4100", "0F00A1B2C3")
    assert demo.credentials[alice].person == "alice"
    assert demo.credentials[alice].last4 == "B2C3"
    assert all(re.fullmatch(r"[0-9a-f]{64}", k) for k in demo.credentials)


def test_demo_decisions(demo: Site) -> None:
    assert demo_badge(demo, "em4100", "0f00a1b2c3", "lab", MON_1000) == Decision(Reason.GRANTED, "alice")
    assert demo_badge(demo, "ascii", "40011111", "lobby_in", MON_1000) == Decision(Reason.GRANTED, "alice")
    assert demo_badge(demo, "em4100", "0F00A1B2C3", "lab", utc(2026, 3, 30, 21, 0)).reason is Reason.OUTSIDE_SCHEDULE
    assert demo_badge(demo, "em4100", "0F00A1B2C3", "lab", utc(2026, 12, 25, 10, 0)).reason is Reason.OUTSIDE_SCHEDULE
    assert demo_badge(demo, "em4100", "0F00B0B0B0", "lab", MON_1000) == Decision(Reason.NO_ACCESS, "bob")
    assert demo_badge(demo, "em4100", "0F00B0B0B0", "lobby_out", MON_1000).reason is Reason.GRANTED
    assert demo_badge(demo, "em4100", "0F00E5E5E5", "lobby_in", MON_1000) == Decision(Reason.CREDENTIAL_INACTIVE, "eli")
    assert demo_badge(demo, "em4100", "0F00D1D1D1", "lobby_in", utc(2026, 1, 15, 9, 0)).reason is Reason.GRANTED
    assert demo_badge(demo, "em4100", "0F00D1D1D1", "lobby_in", MON_1000) == Decision(Reason.EXPIRED, "dana")
    assert demo_badge(demo, "em4100", "0F00FFFFFF", "lobby_in", MON_1000).reason is Reason.UNKNOWN_CREDENTIAL
    assert demo_badge(demo, "em4100", "0F00A1B2C3", "roof", MON_1000).reason is Reason.UNKNOWN_DOOR


def test_demo_other_key_knows_no_card(demo: Site) -> None:
    other = card_hash(b"z" * 32, "em4100", "0F00A1B2C3")
    assert decide(AccessRequest("lobby_in", other), demo, DecisionState(), MON_1000).reason is Reason.UNKNOWN_CREDENTIAL


# ------------------------------------- partners at a door: rules a silent mistake opens a door with
#
# A small site of its own: a two-person vault and a restricted lab (visitors need an escort into it), everyone
# on a level around the clock but for "daytime", whose vault entry is for business hours only. Person ids
# differ in their first three letters (number() reads only those).

WINDOW = 30.0
ANN = Person("ann", "Ann", access_levels=("all",))
BEN = Person("ben", "Ben", access_levels=("all",))
HAL = Person("hal", "Hal", access_levels=("all",))
HUGH = Person("hugh", "Hugh", access_levels=("all",))
VIC = Person("vic", "Visitor", kind=PersonKind.VISITOR, host="hal", allowed_areas=("lobby", "lab", "vault"))
WES = Person("wes", "Other visitor", kind=PersonKind.VISITOR, host="hugh", allowed_areas=("lobby", "lab"))
VEX = Person("vex", "Visitor with the escort role", kind=PersonKind.VISITOR, host="hal",
              roles=frozenset({"escort"}), allowed_areas=("lobby", "lab"))
FAY = Person("fay", "Visitor, no escort needed", kind=PersonKind.VISITOR, host="hal", escort_required=False,
               allowed_areas=("lobby", "lab"))
PAIR_PEOPLE = [ANN, BEN, HAL, HUGH, VIC, WES, VEX, FAY]


def pair_site(*changed: Person) -> Site:
    """The partners' site; ``changed`` replaces people by id (same cards): the site as an operator left it later."""
    people = {p.id: p for p in PAIR_PEOPLE}
    people.update({p.id: p for p in changed})
    site = build_site(list(people.values()))
    site.areas["vault"] = Area("vault", "Vault", two_person=True)
    site.areas["lab"] = Area("lab", "Lab", restricted=True)
    site.doors.clear()
    site.doors["vault"] = Door("vault", "Vault", "lobby", "vault")
    site.doors["lab"] = Door("lab", "Lab", "lobby", "lab")
    site.access_levels.clear()
    everywhere = tuple(AccessEntry(a, "always") for a in ("lobby", "lab", "vault"))
    site.access_levels["all"] = AccessLevel("all", "All", everywhere)
    site.access_levels["daytime"] = AccessLevel("daytime", "Vault by day", (AccessEntry("vault", "business"),))
    return replace(site, rules=Rules(escort_window_s=WINDOW, two_person_window_s=WINDOW))


PAIRS = pair_site()


def go(state: DecisionState, who: str, door: str, now: float, site: Site = PAIRS) -> Decision:
    """Decide then commit, as the server and the edge do."""
    req = AccessRequest(door, h(number(who)))
    d = decide(req, site, state, now)
    commit(req, d, site, state, now)
    return d


@pytest.mark.parametrize(("first", "second"), [
    (ANN, replace(ANN, state=PersonState.SUSPENDED)),                    # suspended by an operator in between
    (replace(ANN, valid_until=utc(2026, 3, 25, 18, 59, 55)),) * 2,     # valid when badging, expired since
    (replace(ANN, access_levels=("daytime",)),) * 2,                   # in schedule when badging, not since
], ids=["suspended", "expired", "out_of_schedule"])
def test_first_of_two_is_checked_again_when_the_second_arrives(first: Person, second: Person) -> None:
    """Badging first is not a pass: someone suspended, expired or out of schedule since no longer counts."""
    start = utc(2026, 3, 25, 18, 59, 50)  # business hours ("daytime") end at 19:00
    state = DecisionState()
    assert go(state, "ann", "vault", start, pair_site(first)).reason is Reason.AWAITING_SECOND_PERSON
    assert go(state, "ben", "vault", start + 10, pair_site(second)) == Decision(Reason.AWAITING_SECOND_PERSON, "ben")
    assert "ann" not in state.presence


def test_first_of_two_still_authorised_pairs_across_the_schedule_edge() -> None:
    """The control for the test above: the same two badges with nothing changed are a pair."""
    start = utc(2026, 3, 25, 18, 59, 50)
    state = DecisionState()
    go(state, "ann", "vault", start)
    assert go(state, "ben", "vault", start + 10) == Decision(Reason.GRANTED_TWO_PERSON, "ben", ("ann",))


def test_partner_badging_in_the_same_second_counts() -> None:
    state = DecisionState()
    assert go(state, "ann", "vault", WED_NOON).reason is Reason.AWAITING_SECOND_PERSON
    assert go(state, "ben", "vault", WED_NOON) == Decision(Reason.GRANTED_TWO_PERSON, "ben", ("ann",))


def test_escort_badging_in_the_same_second_counts() -> None:
    state = DecisionState()
    go(state, "hal", "lab", WED_NOON)
    assert go(state, "vic", "lab", WED_NOON) == Decision(Reason.GRANTED_ESCORTED, "vic", ("hal",))
    state = DecisionState()
    go(state, "vic", "lab", WED_NOON)
    assert go(state, "hal", "lab", WED_NOON) == Decision(Reason.GRANTED_ESCORTED, "hal", ("vic",))


def test_partner_badge_dated_in_the_future_does_not_count() -> None:
    """The clock stepped back between two badges: a badge "from the future" is no partner, escort or visitor."""
    later = WED_NOON + 10
    state = DecisionState(pending={"vault": [Pending("ann", later, PENDING_TWO_PERSON)],
                                   "lab": [Pending("hal", later, PENDING_ESCORT)]})
    assert go(state, "ben", "vault", WED_NOON).reason is Reason.AWAITING_SECOND_PERSON
    assert go(state, "vic", "lab", WED_NOON).reason is Reason.ESCORT_REQUIRED
    state = DecisionState(pending={"lab": [Pending("vic", later, PENDING_VISITOR)]})
    assert go(state, "hal", "lab", WED_NOON) == Decision(Reason.GRANTED, "hal")


def test_a_visitors_escort_entry_put_into_the_state_is_not_an_escort() -> None:
    """``_may_escort`` on its own: a visitor never escorts (here even one with the escort role, a guest of the
    same host), whatever the state holds. ``commit`` never writes such an entry (next test): it is put in here."""
    state = DecisionState(pending={"lab": [Pending("vex", WED_NOON, PENDING_ESCORT)]})
    assert go(state, "vic", "lab", WED_NOON + 1) == Decision(Reason.ESCORT_REQUIRED, "vic")


@pytest.mark.parametrize("who", ["fay", "vic", "vex"])
def test_a_granted_visitor_leaves_no_escort_entry(who: str) -> None:
    """``commit`` on its own: a visitor let into a restricted area (alone, or escorted) is never recorded as
    someone a later visitor could follow in."""
    state = DecisionState()
    if who != "fay":
        go(state, "hal", "lab", WED_NOON)
    assert go(state, who, "lab", WED_NOON + 1).granted
    assert [p for p in state.pending.get("lab", []) if p.person == who] == []


def test_a_grant_takes_only_its_own_party_from_those_waiting_at_the_door() -> None:
    """The host takes their visitor; the other host's visitor is still waiting, and their host takes them."""
    state = DecisionState()
    assert go(state, "vic", "lab", WED_NOON).reason is Reason.ESCORT_REQUIRED
    assert go(state, "wes", "lab", WED_NOON + 1).reason is Reason.ESCORT_REQUIRED
    assert go(state, "hal", "lab", WED_NOON + 2) == Decision(Reason.GRANTED_ESCORTED, "hal", ("vic",))
    assert [(p.person, p.kind) for p in state.pending["lab"]] == [("wes", PENDING_VISITOR), ("hal", PENDING_ESCORT)]
    assert go(state, "hugh", "lab", WED_NOON + 3) == Decision(Reason.GRANTED_ESCORTED, "hugh", ("wes",))
    assert state.presence["wes"].area == "lab"


def test_a_pair_used_up_leaves_the_other_doors_waiting() -> None:
    state = DecisionState()
    go(state, "vic", "lab", WED_NOON)
    go(state, "ann", "vault", WED_NOON + 1)
    assert go(state, "ben", "vault", WED_NOON + 2).reason is Reason.GRANTED_TWO_PERSON
    assert "vault" not in state.pending, "a pair used up leaves nothing waiting at its door"
    assert state.pending["lab"] == [Pending("vic", WED_NOON, PENDING_VISITOR)]


def test_the_helpers_explanations_use_give_what_the_rules_give() -> None:
    """doorkeep.explain words its answers at the desk through these; each must say what decide() itself reads."""
    from doorkeep.decision import area_of, in_passback, may_escort, own_merits
    from doorkeep.model import AntiPassback

    state = DecisionState()
    lab = PAIRS.areas["lab"]
    assert area_of(PAIRS, "lab") is lab
    assert area_of(PAIRS, "roof") == Area("roof", "roof")  # an area the site does not list: a plain one
    assert own_merits(ANN, lab, PAIRS, state, WED_NOON) is None
    assert own_merits(replace(ANN, state=PersonState.SUSPENDED), lab, PAIRS, state, WED_NOON) is Reason.PERSON_INACTIVE
    assert own_merits(replace(ANN, access_levels=("daytime",)), lab, PAIRS, state, WED_NOON) is Reason.NO_ACCESS
    assert may_escort(HAL, VIC, lab, PAIRS, state, WED_NOON) is True
    assert may_escort(HUGH, VIC, lab, PAIRS, state, WED_NOON) is False   # not the host, no escort role
    assert may_escort(VEX, VIC, lab, PAIRS, state, WED_NOON) is False    # a visitor, escort role or not
    assert may_escort(replace(HUGH, roles=frozenset({"escort"})), VIC, lab, PAIRS, state, WED_NOON) is True
    assert may_escort(HAL, VIC, lab, PAIRS, state, WED_2200) is True
    assert may_escort(replace(HAL, valid_until=WED_NOON), VIC, lab, PAIRS, state, WED_NOON) is False
    hard = Area("hard", "Hard", anti_passback=AntiPassback.HARD)
    door = Door("hard", "Hard", "lobby", "hard")
    state = DecisionState(presence={"ann": Presence("outside", WED_NOON - 60), "ben": Presence("lobby", WED_NOON)})
    assert in_passback("ann", door, hard, state, WED_NOON) is True
    assert in_passback("ben", door, hard, state, WED_NOON) is False
    assert in_passback("hal", door, hard, state, WED_NOON) is False          # never seen
    assert in_passback("ann", door, Area("free", "Free"), state, WED_NOON) is False
    timed = Area("timed", "Timed", anti_passback=AntiPassback.HARD, anti_passback_reset_min=10)
    assert in_passback("ann", door, timed, state, WED_NOON + 539) is True   # seen outside 9 min 59 s before
    assert in_passback("ann", door, timed, state, WED_NOON + 540) is False  # 10 min: the reset has passed


def test_presence_pop_of_someone_absent_names_them() -> None:
    """PresenceMap is a dict to its callers: popping someone it does not hold raises KeyError(person)."""
    state = DecisionState(presence={"ann": Presence("lab", WED_NOON)})
    with pytest.raises(KeyError) as raised:
        state.presence.pop("ben")
    assert raised.value.args == ("ben",)
    assert state.presence.pop("ben", "gone") == "gone" and state.occupancy("lab") == 1


def test_a_badgers_own_earlier_badge_does_not_hide_a_partner_behind_it() -> None:
    state = DecisionState(pending={"vault": [Pending("ann", WED_NOON, PENDING_TWO_PERSON),
                                             Pending("ben", WED_NOON + 1, PENDING_TWO_PERSON)]})
    assert go(state, "ann", "vault", WED_NOON + 2) == Decision(Reason.GRANTED_TWO_PERSON, "ann", ("ben",))


def test_badging_again_while_waiting_keeps_one_entry_the_newest() -> None:
    state = DecisionState()
    go(state, "ann", "vault", WED_NOON)
    go(state, "ann", "vault", WED_NOON + 5)
    assert state.pending["vault"] == [Pending("ann", WED_NOON + 5, PENDING_TWO_PERSON)]


def test_a_badge_exactly_a_window_old_still_pairs_after_another_badge_at_that_door() -> None:
    """The window is inclusive, and a commit at the same door at that instant must not forget the badge first."""
    state = DecisionState()
    go(state, "ann", "vault", WED_NOON)
    assert go(state, "wes", "vault", WED_NOON + WINDOW).reason is Reason.NO_ACCESS  # refused, but committed
    assert go(state, "ben", "vault", WED_NOON + WINDOW) == Decision(Reason.GRANTED_TWO_PERSON, "ben", ("ann",))


def test_a_door_into_an_area_the_site_does_not_list_is_judged_by_its_id() -> None:
    """The area is then a plain one (no clearance, no partners): a level naming its id still covers it."""
    site = build_site([Person("gil", "Gil", access_levels=("annex",)), BOB])
    site.doors["annex"] = Door("annex", "Annex", "lobby", "annex")
    site.access_levels["annex"] = AccessLevel("annex", "Annex", (AccessEntry("annex", "always"),))
    assert badge(site, "gil", "annex", WED_NOON) == Decision(Reason.GRANTED, "gil")
    assert badge(site, "bob", "annex", WED_NOON) == Decision(Reason.NO_ACCESS, "bob")


def test_the_first_of_two_comes_before_the_visitors_an_escort_takes_in() -> None:
    """At a restricted two-person door the second badger brings the first of two and the visitors waiting."""
    site = pair_site()
    site.areas["vault"] = Area("vault", "Vault", restricted=True, two_person=True)
    state = DecisionState(pending={"vault": [Pending("vic", WED_NOON, PENDING_VISITOR),
                                             Pending("ann", WED_NOON + 1, PENDING_TWO_PERSON)]})
    assert go(state, "hal", "vault", WED_NOON + 2, site) == Decision(Reason.GRANTED_TWO_PERSON, "hal", ("ann", "vic"))


def test_a_badger_still_waiting_for_a_partner_counts_alone_against_occupancy() -> None:
    """The visitors an escort would take in do not move until the pair is complete: room for one is enough."""
    site = pair_site()
    site.areas["vault"] = Area("vault", "Vault", restricted=True, two_person=True, max_occupancy=1)
    state = DecisionState(pending={"vault": [Pending("vic", WED_NOON, PENDING_VISITOR)]})
    assert go(state, "hal", "vault", WED_NOON + 1, site) == Decision(Reason.AWAITING_SECOND_PERSON, "hal")


def test_presence_map_built_from_keywords_counts_them() -> None:
    from doorkeep.decision import PresenceMap

    pres = PresenceMap({"ann": Presence("lab", 0)}, ben=Presence("lab", 1), hal=Presence("vault", 2))
    assert (pres.count("lab"), pres.count("vault")) == (2, 1)
