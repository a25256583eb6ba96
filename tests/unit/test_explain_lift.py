""""Why not?" at a lift (doorkeep/explain.py): a refusal names the floor it is about, the one ``decide()`` took
its answer from (doorkeep/decision.py ``_decide_lift``), never the lift's empty ``to_area``.

Every refusal is produced by ``decide()`` itself on the demo site's lift (floors Lobby, Open-plan office and
Floor 7; the lobby public in business hours) with people made for each case, then explained.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from doorkeep.config import load_site_dir
from doorkeep.decision import AccessRequest, Decision, DecisionState, Reason, commit, decide
from doorkeep.explain import explain, lift_refusal_floor
from doorkeep.model import Credential, Person, PersonKind, Site
from doorkeep.sites import DEMO_SITE

WEDNESDAY_10 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC).timestamp()  # business hours: the lobby is public
SATURDAY_10 = datetime(2026, 12, 5, 10, 0, tzinfo=UTC).timestamp()   # closed: every floor needs a badge


def site_with(*people: Person) -> Site:
    site = load_site_dir(DEMO_SITE, people=False).site
    creds = {f"card-{p.id}": Credential(f"card-{p.id}", "0001", "em4100", p.id) for p in people}
    return dataclasses.replace(site, people={p.id: p for p in people}, credentials=creds)


CAROL = Person("carol", "Carol Cole", access_levels=("lab",), clearance=0)   # floor 7 only, and too low for it
BOB = Person("bob", "Bob Baker", access_levels=("staff",), clearance=1)      # lobby and office


def refused(site: Site, who: str, when: float, *, floor: str | None = None,
            state: DecisionState | None = None) -> tuple[AccessRequest, Decision]:
    req = AccessRequest("lift", f"card-{who}", floor=floor)
    decision = decide(req, site, state or DecisionState(), when)
    assert not decision.granted, decision
    return req, decision


def test_a_refusal_names_the_first_floor_that_needs_a_badge_not_the_public_lobby() -> None:
    site = site_with(CAROL)
    req, decision = refused(site, "carol", WEDNESDAY_10)
    assert decision.reason is Reason.NO_ACCESS
    assert lift_refusal_floor(req, decision, site.doors["lift"], site, None, WEDNESDAY_10) == "office"
    ex = explain(req, decision, site, None, when=WEDNESDAY_10)
    assert ex.summary == "Carol Cole's levels do not include Open-plan office; the 'Staff: building' level does."
    assert "''" not in ex.summary and "Lobby" not in ex.summary
    assert any("Lift is a lift" in n and "This explains Open-plan office" in n for n in ex.notes), ex.notes


def test_out_of_hours_the_lobby_needs_a_badge_too_and_is_the_floor_explained() -> None:
    site = site_with(CAROL)
    req, decision = refused(site, "carol", SATURDAY_10)
    assert lift_refusal_floor(req, decision, site.doors["lift"], site, None, SATURDAY_10) == "lobby"
    assert explain(req, decision, site, None, when=SATURDAY_10).summary.startswith(
        "Carol Cole's levels do not include Lobby")


def test_a_floor_refused_for_another_rule_is_explained_by_that_rule() -> None:
    """The recorded reason wins: a clearance refusal is explained at the floor that gives it (Floor 7)."""
    site = site_with(CAROL)
    req = AccessRequest("lift", "card-carol")
    recorded = Decision(Reason.CLEARANCE_TOO_LOW, "carol")
    assert lift_refusal_floor(req, recorded, site.doors["lift"], site, None, WEDNESDAY_10) == "floor7"
    assert explain(req, recorded, site, None, when=WEDNESDAY_10).summary == \
        "Carol Cole's clearance is 0; Floor 7 needs 3."


def test_a_destination_asked_for_is_the_floor_explained() -> None:
    site = site_with(BOB)
    req, decision = refused(site, "bob", WEDNESDAY_10, floor="floor7")
    assert decision.reason is Reason.NO_ACCESS
    ex = explain(req, decision, site, None, when=WEDNESDAY_10)
    assert ex.summary.startswith("Bob Baker's levels do not include Floor 7")
    assert any("destination dispatch" in n and "Floor 7 was asked for" in n for n in ex.notes), ex.notes
    req, decision = refused(site, "bob", WEDNESDAY_10, floor="outside")
    assert lift_refusal_floor(req, decision, site.doors["lift"], site, None, WEDNESDAY_10) is None
    ex = explain(req, decision, site, None, when=WEDNESDAY_10)
    assert ex.summary == "Bob Baker asked Lift for Outside, a floor it does not serve."
    assert ex.would_allow == ["choosing one of its floors (Lobby, Open-plan office or Floor 7) before the badge"]


def test_a_visitor_waiting_for_an_escort_is_explained_at_the_floor_that_waits() -> None:
    visitor = Person("v-omar", "Omar Visitor", kind=PersonKind.VISITOR, allowed_areas=("floor7",), host="alice")
    alice = Person("alice", "Alice Archer", access_levels=("staff", "lab"), clearance=3)
    site = site_with(visitor, alice)
    req, decision = refused(site, "v-omar", WEDNESDAY_10)
    assert decision.reason is Reason.ESCORT_REQUIRED
    assert lift_refusal_floor(req, decision, site.doors["lift"], site, None, WEDNESDAY_10) == "floor7"
    ex = explain(req, decision, site, None, when=WEDNESDAY_10)
    assert "Floor 7 needs an escort" in ex.summary and "at Lift" in ex.summary
    assert any("the first floor waiting for a partner" in n for n in ex.notes)


def test_a_lockdown_with_the_state_of_the_moment_names_the_floor_locked_down() -> None:
    site = site_with(BOB)
    state = DecisionState()
    state.lockdown_areas = {"lobby", "office"}
    req, decision = refused(site, "bob", WEDNESDAY_10, state=state)
    assert decision.reason is Reason.LOCKDOWN
    ex = explain(req, decision, site, state, when=WEDNESDAY_10)
    assert ex.summary == "Lobby was in lockdown: only responders may enter Lobby.", ex.summary


@pytest.mark.parametrize("when", [WEDNESDAY_10, SATURDAY_10], ids=["public-lobby", "closed"])
def test_the_floor_explained_is_the_floor_decide_answered_for(when: float) -> None:
    """Mirror of _decide_lift's choice: deciding that floor as a door gives the lift's own answer."""
    site = site_with(CAROL, BOB)
    for who in ("carol",):
        req, decision = refused(site, who, when)
        floor = lift_refusal_floor(req, decision, site.doors["lift"], site, None, when)
        door = dataclasses.replace(site.doors["lift"], to_area=floor, kind=site.doors["lab"].kind, floors=())
        alone = dataclasses.replace(site, doors={**site.doors, "lift": door})
        assert decide(req, alone, DecisionState(), when).reason is decision.reason


def test_explaining_leaves_the_site_and_state_as_they_were() -> None:
    site = site_with(CAROL)
    state = DecisionState()
    req, decision = refused(site, "carol", WEDNESDAY_10, state=state)
    commit(req, decision, site, state, WEDNESDAY_10)
    before = (dict(site.doors), dict(site.areas), dict(state.presence))
    explain(req, decision, site, state, when=WEDNESDAY_10)
    assert (dict(site.doors), dict(site.areas), dict(state.presence)) == before
    assert site.doors["lift"].kind.value == "lift"
