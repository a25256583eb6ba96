"""``doorkeep.explain``: every refusal in plain words, with names, and what would have let the person through.

The refusals are produced by ``decide`` itself on the rules test site (tests/unit/test_rules.py), with
``commit`` building the state a rule reads, so each explanation is checked against a real decision; the
edge's own reasons (never produced by ``decide``) are built by hand. A property test over generated sites
checks that the explanation names no ids and that what it proposes really lets the person past the rule.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doorkeep import explain as explain_module
from doorkeep.decision import (
    AccessRequest,
    Decision,
    DecisionState,
    Presence,
    Reason,
    commit,
    covering_entries,
    decide,
)
from doorkeep.explain import EXPLAINERS, Explanation, describe_schedule, explain
from doorkeep.model import (
    WEEKDAYS,
    AccessEntry,
    AccessLevel,
    Area,
    Credential,
    Door,
    Person,
    Schedule,
    Site,
    TimeWindow,
)
from doorkeep.schedule import is_open, next_opening
from tests.unit.test_rules import SITE, WED_NOON, request

WED_1AM = WED_NOON - 11 * 3600


def run(badges: list[tuple[str, str, float, str | None]], site: Site = SITE) -> tuple[Decision, DecisionState,
                                                                                    AccessRequest, float]:
    """Badges (who, door, seconds after Wednesday noon, PIN) through decide + commit; the last one's decision."""
    state = DecisionState()
    out: tuple[Decision, DecisionState, AccessRequest, float] | None = None
    for who, door, dt, pin in badges:
        req = request(who, door, pin)
        now = WED_NOON + dt
        decision = decide(req, site, state, now)
        out = (decision, state, req, now)
        commit(req, decision, site, state, now)
    assert out is not None
    return out


def explained(badges: list[tuple[str, str, float, str | None]], *, with_state: bool = True) -> tuple[Reason,
                                                                                                     Explanation]:
    decision, state, req, now = run(badges)
    return decision.reason, explain(req, decision, SITE, state if with_state else None, when=now,
                                    card="card …1234")


# One row per refusal decide() gives: the badges, the expected reason, and words the explanation must hold.
CASES = [
    pytest.param([("?", "lobby_in", 0, None)], Reason.UNKNOWN_CREDENTIAL, ["Card …1234 is not enrolled"],
                 id="unknown_credential"),
    pytest.param([("lost", "lobby_in", 0, None)], Reason.CREDENTIAL_INACTIVE,
                 ["Lost card's card …1234 is reported lost"], id="credential_inactive"),
    pytest.param([("susp", "lobby_in", 0, None)], Reason.PERSON_INACTIVE, ["Suspended is suspended"],
                 id="person_inactive"),
    pytest.param([("vlate", "lobby_in", 0, None)], Reason.NOT_YET_VALID,
                 ["Visitor tomorrow's visit starts Thursday 12:00"], id="not_yet_valid"),
    pytest.param([("vgone", "lobby_in", 0, None)], Reason.EXPIRED, ["Visitor yesterday's visit ended Tuesday 13:00"],
                 id="expired"),
    pytest.param([("staff", "lab", 0, None)], Reason.NO_ACCESS,
                 ["Staff only's levels do not include Lab", "'Everywhere'", "'Lab in business hours'"],
                 id="no_access"),
    pytest.param([("vic2", "vault", 0, None)], Reason.NO_ACCESS,
                 ["Visitor Second visitor's allowed areas ('Lobby', 'Lab' and 'Client suite') do not include Vault"],
                 id="no_access_visitor"),
    pytest.param([("labby", "lab", -11 * 3600, None)], Reason.OUTSIDE_SCHEDULE,
                 ["Outside the schedule 'Business' (Mon-Fri 07:00-19:00, site time)", "next opening Wednesday 07:00",
                  "'Lab in business hours' covers Lab only then"], id="outside_schedule"),
    pytest.param([("low", "lab", 0, None)], Reason.CLEARANCE_TOO_LOW, ["Low clearance's clearance is 1; Lab needs 3"],
                 id="clearance_too_low"),
    pytest.param([("vic", "lab", 0, None)], Reason.ESCORT_REQUIRED,
                 ["Escort required: no escort badged at Lab within 30 s"], id="escort_required"),
    pytest.param([("emp", "vault", 0, None)], Reason.AWAITING_SECOND_PERSON,
                 ["Vault needs two people: no other authorised person badged at Vault within 30 s"],
                 id="awaiting_second_person"),
    pytest.param([("emp", "hard_in", 0, None), ("emp", "hard_in", 60, None)], Reason.ANTI_PASSBACK,
                 ["Anti-passback: Hard in leads out of Lobby, but the doors last saw Employee go into "
                  "Hard APB floor"], id="anti_passback"),
    pytest.param([("emp", "gym_in", 0, None), ("emp2", "gym_in", 1, None), ("emp3", "gym_in", 2, None)],
                 Reason.OCCUPANCY_FULL, ["Gym holds at most 2 people and was full (2 inside)"], id="occupancy_full"),
    pytest.param([("pinny", "pin", 0, None)], Reason.PIN_REQUIRED, ["PIN room needs a PIN after the badge"],
                 id="pin_required"),
    pytest.param([("pinny", "pin", 0, "0000")], Reason.WRONG_PIN, ["The PIN typed at PIN room is not Has a PIN's",
                                                                   "after 3 wrong PINs in a row"], id="wrong_pin"),
    pytest.param([("nopin", "pin", 0, "0000")], Reason.WRONG_PIN, ["Has no PIN has no PIN set"], id="wrong_pin_none"),
    pytest.param([("pinny", "pin", i, "0000") for i in range(4)], Reason.PIN_LOCKED_OUT,
                 ["Has a PIN's card is locked out of PIN doors until Wednesday 12:05", "after 3 wrong PINs"],
                 id="pin_locked_out"),
    pytest.param([("?", "garage", 0, None)], Reason.UNKNOWN_DOOR, ["door 'garage' that this site does not have"],
                 id="unknown_door"),
]


@pytest.mark.parametrize(("badges", "reason", "words"), CASES)
def test_each_refusal_decide_gives_is_explained_in_words(badges: list[tuple[str, str, float, str | None]],
                                                         reason: Reason, words: list[str]) -> None:
    got, ex = explained(badges)
    assert got is reason
    assert ex.reason == reason.value and ex.rule and ex.would_allow, ex
    said = " ".join([ex.summary, *ex.would_allow])
    for w in words:
        assert w in said, (w, said)
    assert ex.notes == []  # the state of the moment was given and the site did not change


def test_lockdown_names_the_scope_and_the_responder_way_through() -> None:
    state = DecisionState(lockdown_areas={"lab"})
    req = request("emp", "lab")
    decision = decide(req, SITE, state, WED_NOON)
    assert decision.reason is Reason.LOCKDOWN
    ex = explain(req, decision, SITE, state, when=WED_NOON)
    assert ex.summary == "Lab was in lockdown: only responders may enter Lab."
    assert "lifting the lockdown (Doors)" in ex.would_allow
    assert any("responder" in a for a in ex.would_allow)


def test_without_the_state_of_the_moment_the_explanation_says_what_it_cannot_know() -> None:
    reason, ex = explained([("emp", "gym_in", 0, None), ("emp2", "gym_in", 1, None), ("emp3", "gym_in", 2, None)],
                           with_state=False)
    assert reason is Reason.OCCUPANCY_FULL
    assert ex.summary == "Gym holds at most 2 people and was full."
    assert ex.notes and "does not keep how many people were inside" in ex.notes[0]


def test_no_access_names_the_level_that_would_let_them_through() -> None:
    _, ex = explained([("staff", "lab", 0, None)])
    assert ex.summary == ("Staff only's levels do not include Lab; the levels 'Everywhere' and "
                          "'Lab in business hours' do.")
    assert ex.would_allow[0] == ("giving Staff only the level 'Everywhere' or 'Lab in business hours' "
                                 "(People, Staff only's page), open at that time")


def test_no_access_says_when_the_level_named_would_still_refuse_at_that_time() -> None:
    _, ex = explained([("staff", "lab", -11 * 3600, None)])  # 01:00: only 'Everywhere' is open
    assert ex.would_allow[0].startswith("giving Staff only the level 'Everywhere' (People")
    site = dataclasses.replace(SITE, access_levels={k: v for k, v in SITE.access_levels.items() if k != "all"})
    req = request("staff", "lab")
    decision = decide(req, site, DecisionState(), WED_1AM)
    ex = explain(req, decision, site, DecisionState(), when=WED_1AM)
    assert ex.would_allow[0].endswith("at that time it would still have refused: its schedule was closed")


def test_outside_schedule_offers_the_next_opening_and_a_level_open_now() -> None:
    _, ex = explained([("labby", "lab", -11 * 3600, None)])
    assert ex.would_allow[0] == "badging again when the schedule opens (Wednesday 07:00)"
    assert ex.would_allow[1] == "the level 'Everywhere' for Lab by day, which covers Lab at that time"


def test_escort_required_names_the_host_and_the_escorts_who_may_take_the_visitor_in() -> None:
    _, ex = explained([("vic", "lab", 0, None)])
    assert ex.would_allow[0].startswith("their host Host badging at Lab within 30 s")
    assert "an escort (Day escort and Escort) badging at Lab within 30 s" in ex.would_allow


def test_the_edges_own_refusals_are_explained_too() -> None:
    for reason, words in [(Reason.OFFLINE_RESTRICTED, "could not reach the server"),
                          (Reason.SERVER_TIMEOUT, "no answer from the server within 1000 ms"),
                          (Reason.NO_POLICY, "has not received its first signed policy"),
                          (Reason.PASS_INVALID, "visitor pass that is not one this site signed"),
                          (Reason.INTERLOCK_BUSY, "is one of the doors of its interlock: another of its doors")]:
        ex = explain(request("emp", "lab"), Decision(reason, "emp"), SITE, when=WED_NOON)
        assert ex.summary.startswith("Lab ") and words in ex.summary, ex


def test_a_refusal_the_site_no_longer_gives_says_so() -> None:
    """The card was lost when badged and is active on the site given: the note says the site changed."""
    decision = Decision(Reason.CREDENTIAL_INACTIVE, "emp")
    ex = explain(request("emp", "lobby_in"), decision, SITE, when=WED_NOON, card="card …1234")
    assert ex.notes and "“Granted”" in ex.notes[0] and "changed after this badge" in ex.notes[0]


def test_a_grant_has_nothing_to_refuse() -> None:
    ex = explain(request("emp", "lab"), Decision(Reason.GRANTED, "emp"), SITE, when=WED_NOON)
    assert ex.summary == "Granted: every rule let Employee through Lab." and ex.would_allow == []


def test_every_refusal_reason_has_an_explainer() -> None:
    """Like the desk labels in doorkeep/vocabulary.py: a new Reason without an explanation fails here."""
    missing = [r.value for r in Reason if not r.granted and r not in EXPLAINERS]
    assert missing == []
    assert set(EXPLAINERS) == {r for r in Reason if not r.granted}
    assert explain_module._unexplained == []


def test_every_refusal_reason_is_covered_by_a_test_here() -> None:
    tested = {p.values[1] for p in CASES} | {Reason.LOCKDOWN, Reason.OFFLINE_RESTRICTED, Reason.SERVER_TIMEOUT,
                                            Reason.NO_POLICY, Reason.PASS_INVALID, Reason.INTERLOCK_BUSY}
    assert {r for r in Reason if not r.granted} <= tested


# ------------------------------------------------------------------ helpers in decision.py and schedule.py


def test_covering_entries_yields_each_level_entry_for_the_area_in_the_persons_order() -> None:
    got = [(lv.id, e.schedule) for lv, e in covering_entries(SITE, ("lab_biz", "missing", "all"), "lab")]
    assert got == [("lab_biz", "business"), ("all", "always")]
    assert list(covering_entries(SITE, ("staff",), "lab")) == []


LONDON = "Europe/London"


def _utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


OFFICE = Schedule("office", "Office hours", (TimeWindow(frozenset(WEEKDAYS[:5]), time(8), time(18)),),
                  frozenset({date(2026, 12, 25)}))
NIGHT = Schedule("night", "Nights", (TimeWindow(frozenset({"fri"}), time(22), time(6)),))


@pytest.mark.parametrize(("schedule", "at", "expected"), [
    pytest.param(OFFICE, _utc(2026, 12, 5, 12), _utc(2026, 12, 7, 8), id="saturday-to-monday"),
    pytest.param(OFFICE, _utc(2026, 12, 7, 9), _utc(2026, 12, 7, 9), id="open-now"),
    pytest.param(OFFICE, _utc(2026, 12, 24, 19), _utc(2026, 12, 28, 8), id="skips-the-holiday"),
    pytest.param(NIGHT, _utc(2026, 12, 5, 7), _utc(2026, 12, 11, 22), id="midnight-window-next-friday"),
    pytest.param(OFFICE, _utc(2026, 3, 27, 19), _utc(2026, 3, 30, 7), id="after-clocks-go-forward-bst"),
])
def test_next_opening(schedule: Schedule, at: float, expected: float) -> None:
    assert next_opening(schedule, at, LONDON) == expected


def test_next_opening_of_a_schedule_that_never_opens_is_none() -> None:
    assert next_opening(Schedule("never", "Never", ()), _utc(2026, 12, 5, 12), LONDON) is None


def test_describe_schedule_reads_like_a_notice_on_the_door() -> None:
    assert describe_schedule(OFFICE) == "'Office hours' (Mon-Fri 08:00-18:00, site time)"
    assert describe_schedule(NIGHT) == "'Nights' (Fri 22:00-06:00, site time)"


# ------------------------------------------------------------------ property: generated sites


@st.composite
def sites(draw: st.DrawFn) -> tuple[Site, float]:
    """A small random site; every id starts with ``id-`` so that an id leaking into the words is seen."""
    n_areas = draw(st.integers(1, 4))
    areas = {f"id-a{i}": Area(f"id-a{i}", f"Area {chr(65 + i)}", clearance=draw(st.integers(0, 3)))
             for i in range(n_areas)}
    areas["outside"] = Area("outside", "Outside")
    doors = {f"id-d{i}": Door(f"id-d{i}", f"Door {chr(65 + i)}", "outside", a) for i, a in enumerate(areas)}
    scheds = {}
    for i in range(draw(st.integers(1, 3))):
        days = draw(st.frozensets(st.sampled_from(WEEKDAYS), min_size=1))
        start = draw(st.integers(0, 23))
        end = draw(st.integers(0, 23))
        scheds[f"id-s{i}"] = Schedule(f"id-s{i}", f"Schedule {i}", (TimeWindow(days, time(start), time(end)),))
    levels = {}
    for i in range(draw(st.integers(0, 3))):
        covered = draw(st.lists(st.sampled_from(sorted(areas)), min_size=1, max_size=3, unique=True))
        levels[f"id-l{i}"] = AccessLevel(f"id-l{i}", f"Level {i}", tuple(
            AccessEntry(a, draw(st.sampled_from(sorted(scheds)))) for a in covered))
    person = Person("id-p", "Pat Doe", clearance=draw(st.integers(0, 3)),
                    access_levels=tuple(draw(st.lists(st.sampled_from(sorted(levels)), unique=True)))
                    if levels else ())
    cred = Credential("id-hash", "1234", "em4100", "id-p")
    site = Site("id-site", "Generated", LONDON, areas, doors, scheds, levels, {"id-p": person}, {"id-hash": cred})
    when = _utc(2026, 3, 23, 0) + draw(st.integers(0, 14 * 24 * 60)) * 60.0
    return site, when


@settings(max_examples=300, deadline=None)
@given(sites(), st.data())
def test_property_every_refusal_is_explained_with_names_and_its_remedy_works(generated: tuple[Site, float],
                                                                            data: st.DataObject) -> None:
    site, when = generated
    door = data.draw(st.sampled_from(sorted(site.doors)))
    req = AccessRequest(door, "id-hash")
    decision = decide(req, site, DecisionState(), when)
    if decision.granted:
        return
    ex = explain(req, decision, site, DecisionState(), when=when)
    words = " ".join([ex.summary, *ex.would_allow, *ex.notes])
    assert ex.summary and ex.rule and ex.would_allow
    assert "id-" not in words, words
    person = site.people["id-p"]
    area = site.areas[site.doors[door].to_area]
    if decision.reason is Reason.NO_ACCESS:
        levels = [lv for lv, _ in covering_entries(site, sorted(site.access_levels), area.id)]
        for lv in levels:
            assert f"'{lv.name}'" in ex.summary
        if levels:  # giving the person the level named removes this refusal
            fixed = dataclasses.replace(person, access_levels=(*person.access_levels, levels[0].id))
            again = decide(req, dataclasses.replace(site, people={"id-p": fixed}), DecisionState(), when)
            assert again.reason is not Reason.NO_ACCESS
    elif decision.reason is Reason.OUTSIDE_SCHEDULE:
        assert "next opening" in ex.summary or "does not open" in ex.summary
        opens = [next_opening(site.schedules[e.schedule], when, LONDON)
                 for _, e in covering_entries(site, person.access_levels, area.id)]
        at = min(t for t in opens if t is not None) if any(t is not None for t in opens) else None
        if at is not None:  # badging at the next opening passes the schedule
            assert decide(req, site, DecisionState(), at).reason is not Reason.OUTSIDE_SCHEDULE
            assert any(is_open(site.schedules[e.schedule], at, LONDON)
                       for _, e in covering_entries(site, person.access_levels, area.id))
    elif decision.reason is Reason.CLEARANCE_TOO_LOW:
        assert f"needs {area.clearance}" in ex.summary
        fixed = dataclasses.replace(person, clearance=area.clearance)
        again = decide(req, dataclasses.replace(site, people={"id-p": fixed}), DecisionState(), when)
        assert again.reason is not Reason.CLEARANCE_TOO_LOW


def test_presence_in_state_is_named_as_an_area_not_an_id() -> None:
    state = DecisionState(presence={"emp": Presence("hard", WED_NOON - 60)})
    req = request("emp", "hard_in")
    decision = decide(req, SITE, state, WED_NOON)
    assert decision.reason is Reason.ANTI_PASSBACK
    ex = explain(req, decision, SITE, state, when=WED_NOON)
    assert "go into Hard APB floor" in ex.summary and "'hard'" not in ex.summary

