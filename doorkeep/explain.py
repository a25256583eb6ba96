""""Why not?": a refusal in plain words, and what would have let the person through (issue 16).

Commercial consoles show a reason code and leave the operator to guess which level, schedule or partner
was missing. :func:`explain` turns a recorded :class:`~doorkeep.decision.Decision` into three things the
desk shows beside a denied badge: a sentence (``summary``), the rule that refused it (``rule``) and the
changes or actions that would have let the person through (``would_allow``), all with names, never ids.

It never re-implements a rule: it reads the details through the decision module's own helpers
(:func:`~doorkeep.decision.covering_entries`, :func:`~doorkeep.decision.may_escort`,
:func:`~doorkeep.decision.in_passback`, :func:`~doorkeep.decision.own_merits`) and, for the rules that read
only the site (card, person, validity, levels, clearance), runs :func:`~doorkeep.decision.decide` again on
the site it is given: when that gives another answer than the one recorded, a note says that the site or
the people changed since, instead of explaining a rule that would no longer refuse.

The rules that read the decision state (partners waiting at the door, presence, occupancy, PIN failures,
lockdowns) are explained from ``state`` when the caller has the state of that moment, and in general
terms otherwise: the server does not keep past states, and the explanation says what it cannot know.

Every reason code has an explainer (:data:`EXPLAINERS`); a new reason without one fails at import, as a
reason without a desk label does in ``doorkeep/vocabulary.py``.

Pure: standard library and ``doorkeep`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

from doorkeep.decision import (
    ESCORT,
    OUTSIDE,
    AccessRequest,
    Decision,
    DecisionState,
    Reason,
    area_of,
    covering_entries,
    decide,
    in_passback,
    may_escort,
    own_merits,
    public_floors,
)
from doorkeep.model import WEEKDAYS, AntiPassback, Area, CredentialState, Door, DoorKind, Person, PersonKind, \
    PersonState, Schedule, Site, TimeWindow
from doorkeep.schedule import is_open, local_datetime, next_opening
from doorkeep.visitor_pass import FORMAT as PASS_FORMAT
from doorkeep.vocabulary import reason_label

#: How many names a list in an explanation shows before "and N more".
MAX_NAMES = 3

#: Reasons whose rules read only the site (and the request), never the decision state: ``decide`` on the
#: given site can check that the recorded answer still holds for them.
SITE_ONLY: frozenset[Reason] = frozenset({
    Reason.UNKNOWN_DOOR, Reason.UNKNOWN_CREDENTIAL, Reason.CREDENTIAL_INACTIVE, Reason.PERSON_INACTIVE,
    Reason.NOT_YET_VALID, Reason.EXPIRED, Reason.OUTSIDE_SCHEDULE, Reason.NO_ACCESS, Reason.CLEARANCE_TOO_LOW,
})


@dataclass(frozen=True)
class Explanation:
    """A decision in plain words (names, never ids)."""

    reason: str
    """The reason code explained."""
    summary: str
    """One sentence: what refused the badge ("Bob's levels do not include Floor 7 lab; the 'Lab' level does")."""
    rule: str
    """The rule in the order of docs/reason-codes.md ("access level and schedule")."""
    would_allow: list[str] = field(default_factory=list)
    """What would have let the person through, each an action or a change someone can make."""
    notes: list[str] = field(default_factory=list)
    """What the explanation cannot vouch for (the site changed since, a state it does not have)."""


@dataclass(frozen=True)
class _Ctx:
    """What every explainer reads, resolved once."""

    request: AccessRequest
    decision: Decision
    site: Site
    state: DecisionState | None
    when: float
    card: str
    door: Door | None
    person: Person | None

    @property
    def who(self) -> str:
        return self.person.name if self.person is not None else "the cardholder"

    @property
    def door_name(self) -> str:
        return self.door.name if self.door is not None else f"door '{self.request.door}'"

    @property
    def area(self) -> Area:
        return area_of(self.site, self.door.to_area) if self.door is not None else Area("?", "the area")

    def area_name(self, area_id: str) -> str:
        return area_of(self.site, area_id).name

    def at(self, epoch: float) -> str:
        return _when(epoch, self.site.timezone, self.when)


Explainer = Callable[[_Ctx], Explanation]


def explain(request: AccessRequest, decision: Decision, site: Site, state: DecisionState | None = None, *,
            when: float, card: str | None = None) -> Explanation:
    """Why ``decision`` (taken for ``request`` at ``when``, UTC epoch seconds) refused, on ``site``.

    ``state``: the decision state of that moment if the caller has it (None: explained in general terms).
    ``card``: how to name the card ("card …1234"), from the recorded event; never the card's hash.
    """
    reason = decision.reason
    door = site.doors.get(request.door)
    pid = decision.person
    if pid is None:
        cred = site.credentials.get(request.credential_hash)
        pid = cred.person if cred is not None else None
    person = site.people.get(pid) if pid else None
    lift_note = None
    if door is not None and door.kind is DoorKind.LIFT and not reason.granted:
        floor = lift_refusal_floor(request, decision, door, site, state, when)
        if floor is None and reason is Reason.NO_ACCESS:  # a destination the lift does not serve
            asked = area_of(site, request.floor or "").name or "a floor"
            served = _names([area_of(site, f.area).name for f in door.floors], quote=False, conj="or")
            return Explanation(reason.value, f"{person.name if person else 'The cardholder'} asked {door.name} for "
                                             f"{asked}, a floor it does not serve.", "access level and schedule",
                               [f"choosing one of its floors ({served}) before the badge"])
        floor = floor or (door.floors[0].area if door.floors else "")
        if reason in _FLOOR_REASONS:
            lift_note = _lift_note(request, decision, door, floor, site)
        door = replace(door, to_area=floor, kind=DoorKind.DOOR, floors=())  # the floor as a door into its area
    ctx = _Ctx(request, decision, site, state, when, card or "this card", door, person)
    if reason.granted:
        return Explanation(reason.value, f"Granted: every rule let {ctx.who} through {ctx.door_name}.", "none")
    out = EXPLAINERS[reason](ctx)
    notes = list(out.notes) + ([lift_note] if lift_note else [])
    if reason in SITE_ONLY:
        now = decide(request, site, state or DecisionState(), when)
        if now.reason is not reason:
            notes.insert(0, f"On the site and people used here the same badge would give "
                            f"\u201c{reason_label(now.reason.value)}\u201d instead: the card, the person or the "
                            "site changed after this badge, so the explanation may not match what the door saw.")
    return Explanation(out.reason, out.summary, out.rule, out.would_allow, notes)


# ------------------------------------------------------------------ lifts

#: The refusals that are a partner still awaited: at a lift they win over any floor's own refusal.
_WAITING = (Reason.ESCORT_REQUIRED, Reason.AWAITING_SECOND_PERSON)
#: The refusals that depend on the floor (its area); the others say the same of every floor of a lift.
_FLOOR_REASONS = frozenset({Reason.LOCKDOWN, Reason.OUTSIDE_SCHEDULE, Reason.NO_ACCESS, Reason.CLEARANCE_TOO_LOW,
                            *_WAITING, Reason.OCCUPANCY_FULL})


def lift_refusal_floor(request: AccessRequest, decision: Decision, lift: Door, site: Site,
                       state: DecisionState | None, when: float) -> str | None:
    """The floor (area id) a refusal at ``lift`` is about, chosen as ``decide()`` chooses the answer there
    (doorkeep/decision.py ``_decide_lift``): the floor asked for in destination dispatch; else the first floor
    waiting for a partner (escort, second person); else the first floor not public at ``when`` (a public floor
    needs no badge, so its refusal explains nothing); else the first floor. None: the floor asked for is not
    one the lift serves.

    Each floor is decided again as a door into it without anti-passback, as the lift decides it. Without the
    state of that moment (``state`` None) the floors' answers may differ from the recorded one (a lockdown, a
    partner waiting): the first floor, in that order, whose answer is the recorded reason is preferred, so the
    words explain the rule that refused.
    """
    floors = [f.area for f in lift.floors if request.floor is None or f.area == request.floor]
    if not floors:
        return None
    now = state or DecisionState()
    outcomes = {area: _floor_decision(request, lift, area, site, now, when).reason for area in floors}
    if decision.reason in _WAITING:
        order = [a for a in floors if outcomes[a] is decision.reason] + \
            [a for a in floors if outcomes[a] in _WAITING]
    else:
        public = set(public_floors(lift, site, now, when))
        badge = [a for a in floors if a not in public]
        order = [a for a in badge if outcomes[a] is decision.reason] + \
            [a for a in floors if outcomes[a] is decision.reason] + badge
    return (order or floors)[0]


def _floor_decision(request: AccessRequest, lift: Door, area: str, site: Site, state: DecisionState,
                    when: float) -> Decision:
    """``decide()`` for one floor of a lift: a door with the lift's id into ``area``, with no anti-passback (the
    cab does not know where the person boarded), on a copy of the site; ``site`` is left as it was."""
    door = replace(lift, to_area=area, kind=DoorKind.DOOR, floors=())
    areas = dict(site.areas)
    if area in areas:
        areas[area] = replace(areas[area], anti_passback=AntiPassback.NONE)
    floor_site = replace(site, doors={**site.doors, lift.id: door}, areas=areas)
    return decide(replace(request, floor=None), floor_site, state, when)


def _lift_note(request: AccessRequest, decision: Decision, lift: Door, floor: str, site: Site) -> str:
    name = area_of(site, floor).name
    if request.floor is not None:
        return f"{lift.name} is a lift in destination dispatch: {name} was asked for before the badge, and only it " \
               "was decided."
    served = _names([area_of(site, f.area).name for f in lift.floors], quote=False)
    why = "the first floor waiting for a partner" if decision.reason in _WAITING else \
        "the first floor that needs a badge then"
    return f"{lift.name} is a lift: each of its floors ({served}) is decided as a door into it, and the badge " \
           f"enabled none of them. This explains {name}, {why}."


# ------------------------------------------------------------------ words


def _names(items: list[str], quote: bool = True, conj: str = "and") -> str:
    """'A', 'A' and 'B', 'A', 'B', 'C' and 2 more (``conj``: "or" for a choice)."""
    shown = [f"'{i}'" if quote else i for i in items[:MAX_NAMES]]
    more = len(items) - len(shown)
    if more > 0:
        return ", ".join(shown) + f" and {more} more"
    if len(shown) <= 1:
        return "".join(shown)
    return ", ".join(shown[:-1]) + f" {conj} " + shown[-1]


def _when(epoch: float, tz: str, ref: float) -> str:
    """A local time as people say it: 'Monday 08:00' within the week after ``ref``, else with its date."""
    local = local_datetime(epoch, tz)
    if abs(epoch - ref) < 6 * 86400:
        return local.strftime("%A %H:%M")
    return local.strftime("%A %d %B %Y %H:%M")


def _duration(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{int(seconds // 60)} min"
    return f"{seconds:g} s"


def _days(days: frozenset[str]) -> str:
    """Mon-Fri, Sat, Sun; every day."""
    if len(days) == len(WEEKDAYS):
        return "every day"
    idx = sorted(WEEKDAYS.index(d) for d in days)
    runs: list[list[int]] = []
    for i in idx:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    parts = []
    for run in runs:
        first, last = WEEKDAYS[run[0]].capitalize(), WEEKDAYS[run[-1]].capitalize()
        parts.append(first if len(run) == 1 else f"{first}-{last}" if len(run) > 2 else f"{first}, {last}")
    return ", ".join(parts)


def _window(w: TimeWindow) -> str:
    end = w.end.strftime("%H:%M") if w.end is not None else "24:00"
    return f"{_days(w.days)} {w.start.strftime('%H:%M')}-{end}"


def describe_schedule(schedule: Schedule) -> str:
    """'Office hours' (Mon-Fri 08:00-18:00, site time)."""
    windows = "; ".join(_window(w) for w in schedule.windows) or "never open"
    return f"'{schedule.name}' ({windows}, site time)"


def _result(reason: Reason, rule: str, summary: str, would_allow: list[str],
            notes: list[str] | None = None) -> Explanation:
    return Explanation(reason.value, summary, rule, would_allow, notes or [])


def _no_state(ctx: _Ctx, what: str) -> list[str]:
    if ctx.state is not None:
        return []
    return [f"The desk does not keep {what} as it was at that moment: this is explained from the rule and the "
            "site's settings."]


# ------------------------------------------------------------------ explainers, in the order of the rules


def _unknown_door(ctx: _Ctx) -> Explanation:
    return _result(Reason.UNKNOWN_DOOR, "door",
                   f"The reader asked about a door '{ctx.request.door}' that this site does not have.",
                   ["adding the door to the site (Site setup, Doors)",
                    "correcting the door id in the reader's device file"])


def _unknown_credential(ctx: _Ctx) -> Explanation:
    card = ctx.card[0].upper() + ctx.card[1:]
    return _result(Reason.UNKNOWN_CREDENTIAL, "card",
                   f"{card} is not enrolled on this site: no person holds it.",
                   ["enrolling the card to its holder (People, the person's page, Cards)",
                    "for a visitor: handing out the badge at check-in (Visitors)"])


def _credential_inactive(ctx: _Ctx) -> Explanation:
    cred = ctx.site.credentials.get(ctx.request.credential_hash)
    if cred is not None and cred.format == PASS_FORMAT:  # a visitor pass (doorkeep/visitor_pass.py)
        return _result(Reason.CREDENTIAL_INACTIVE, "card",
                       f"{ctx.who}'s visitor pass …{cred.last4} opens no door now: the visit is not checked in "
                       "(not yet, or checked out already), or this pass was replaced, reported lost or cancelled.",
                       [f"checking {ctx.who} in at the desk or the kiosk", f"a new pass for {ctx.who}'s visit"])
    state = cred.state.value if cred is not None and cred.state is not CredentialState.ACTIVE else "lost or revoked"
    return _result(Reason.CREDENTIAL_INACTIVE, "card",
                   f"{ctx.who}'s {ctx.card} is reported {state}, so it opens no door.",
                   [f"marking the card found (active) again on {ctx.who}'s page, if it was found",
                    f"a new card for {ctx.who}"])


def _person_inactive(ctx: _Ctx) -> Explanation:
    if ctx.person is None:
        return _result(Reason.PERSON_INACTIVE, "cardholder",
                       f"The holder of {ctx.card} is no longer a person of this site (removed).",
                       ["adding the person back (People), or retiring the card"])
    state = ctx.person.state.value if ctx.person.state is not PersonState.ACTIVE else "not active"
    return _result(Reason.PERSON_INACTIVE, "cardholder",
                   f"{ctx.who} is {state}, so none of their cards opens a door.",
                   [f"making {ctx.who} active again (People, {ctx.who}'s page)"])


def _not_yet_valid(ctx: _Ctx) -> Explanation:
    p = ctx.person
    start = ctx.at(p.valid_from) if p is not None and p.valid_from is not None else "later"
    visit = p is not None and p.kind is PersonKind.VISITOR
    return _result(Reason.NOT_YET_VALID, "validity window",
                   f"{ctx.who}'s {'visit' if visit else 'access'} starts {start} (site time); "
                   f"this badge came before it.",
                   [f"badging again from {start}",
                    "an earlier start of the visit (Visitors)" if visit
                    else f"an earlier 'valid from' for {ctx.who} (People)"])


def _expired(ctx: _Ctx) -> Explanation:
    p = ctx.person
    end = ctx.at(p.valid_until) if p is not None and p.valid_until is not None else "earlier"
    visit = p is not None and p.kind is PersonKind.VISITOR
    return _result(Reason.EXPIRED, "validity window",
                   f"{ctx.who}'s {'visit' if visit else 'access'} ended {end} (site time).",
                   ["a longer visit, or a new one (Visitors)" if visit
                    else f"a later 'valid until' for {ctx.who} (People)"])


def _lockdown(ctx: _Ctx) -> Explanation:
    area = ctx.area
    if ctx.state is not None:
        scope = "The whole site" if ctx.state.lockdown_site else area.name
    else:
        scope = f"The site or {area.name}"
    return _result(Reason.LOCKDOWN, "lockdown",
                   f"{scope} was in lockdown: only responders may enter {area.name}.",
                   ["lifting the lockdown (Doors)", f"the role 'responder' for {ctx.who} (People)"],
                   _no_state(ctx, "which lockdowns were in force"))


def _outside_schedule(ctx: _Ctx) -> Explanation:
    area, p, site = ctx.area, ctx.person, ctx.site
    levels = p.access_levels if p is not None else ()
    schedules: dict[str, Schedule] = {}
    level_names: list[str] = []
    for level, entry in covering_entries(site, levels, area.id):
        if level.name not in level_names:
            level_names.append(level.name)
        sched = site.schedules.get(entry.schedule)
        if sched is not None:
            schedules.setdefault(sched.id, sched)
    described = " or ".join(describe_schedule(s) for s in schedules.values()) or "a schedule the site lacks"
    openings = [t for t in (next_opening(s, ctx.when, site.timezone) for s in schedules.values()) if t is not None]
    nxt = f"; next opening {ctx.at(min(openings))}" if openings else "; it does not open in the next two weeks"
    holiday = [s.name for s in schedules.values()
               if local_datetime(ctx.when, site.timezone).date() in s.holidays]
    summary = (f"Outside the schedule {described} at {ctx.at(ctx.when)}{nxt}. "
               f"{ctx.who}'s level{'s' if len(level_names) > 1 else ''} {_names(level_names)} "
               f"cover{'' if len(level_names) > 1 else 's'} {area.name} only then.")
    if holiday:
        summary += f" That day is a holiday of {_names(holiday)}."
    allow = [f"badging again when the schedule opens ({ctx.at(min(openings))})"] if openings else []
    open_now = _levels_covering(site, area, ctx.when, open_now=True)
    if open_now:
        allow.append(f"the level {_names(open_now, conj='or')} for {ctx.who}, which covers {area.name} at that time")
    else:
        allow.append(f"a level or schedule covering {area.name} at that time (Site setup, Levels and Schedules)")
    return _result(Reason.OUTSIDE_SCHEDULE, "access level and schedule", summary, allow)


def _levels_covering(site: Site, area: Area, when: float, *, open_now: bool = False) -> list[str]:
    """Names of the site's levels that cover ``area`` (only those whose schedule is open at ``when``)."""
    out: list[str] = []
    for level, entry in covering_entries(site, sorted(site.access_levels), area.id):
        if level.name in out:
            continue
        if open_now:
            sched = site.schedules.get(entry.schedule)
            if sched is None or not is_open(sched, when, site.timezone):
                continue
        out.append(level.name)
    return out


def _no_access(ctx: _Ctx) -> Explanation:
    area, p = ctx.area, ctx.person
    if p is not None and p.kind is PersonKind.VISITOR:
        allowed = [ctx.area_name(a) for a in p.allowed_areas if a != OUTSIDE]
        listed = _names(allowed) if allowed else "none"
        return _result(Reason.NO_ACCESS, "access level and schedule",
                       f"Visitor {ctx.who}'s allowed areas ({listed}) do not include {area.name}.",
                       [f"adding {area.name} to the visit's allowed areas (Visitors)"])
    levels = _levels_covering(ctx.site, area, ctx.when)
    lacks = (f"{ctx.who}'s levels do not include {area.name}" if p is not None and p.access_levels
             else f"{ctx.who} has no access level, so none for {area.name}")
    if len(levels) == 1:
        summary = f"{lacks}; the {_names(levels)} level does."
    elif levels:
        summary = f"{lacks}; the levels {_names(levels)} do."
    else:
        summary = f"{lacks}, and no access level of the site covers it."
    open_now = _levels_covering(ctx.site, area, ctx.when, open_now=True)
    if open_now:
        allow = [f"giving {ctx.who} the level {_names(open_now, conj='or')} (People, {ctx.who}'s page), open at "
                 "that time"]
    elif levels:
        allow = [f"giving {ctx.who} the level {_names(levels, conj='or')} (People, {ctx.who}'s page); at that "
                 "time it would still have refused: its schedule was closed"]
    else:
        allow = [f"an access level covering {area.name} (Site setup, Levels), given to {ctx.who}"]
    return _result(Reason.NO_ACCESS, "access level and schedule", summary, allow)


def _clearance(ctx: _Ctx) -> Explanation:
    area = ctx.area
    have = ctx.person.clearance if ctx.person is not None else 0
    return _result(Reason.CLEARANCE_TOO_LOW, "clearance",
                   f"{ctx.who}'s clearance is {have}; {area.name} needs {area.clearance}.",
                   [f"clearance {area.clearance} or more for {ctx.who} (People)",
                    f"a lower clearance for {area.name} (Site setup, Areas)"])


def _escort(ctx: _Ctx) -> Explanation:
    area, site, visitor = ctx.area, ctx.site, ctx.person
    window = _duration(site.rules.escort_window_s)
    summary = f"Escort required: no escort badged at {ctx.door_name} within {window}; " \
              f"{ctx.who} is a visitor and {area.name} needs an escort for them."
    state = ctx.state or DecisionState()
    allow: list[str] = []
    if visitor is not None:
        host = site.people.get(visitor.host) if visitor.host else None
        if host is not None and may_escort(host, visitor, area, site, state, ctx.when):
            allow.append(f"their host {host.name} badging at {ctx.door_name} within {window} of the visitor, "
                         "before or after")
        elif host is not None:
            why = own_merits(host, area, site, state, ctx.when)
            label = reason_label(why.value) if why is not None else "not an eligible escort"
            allow.append(f"their host {host.name} may not take them in ({label}); someone with the role 'escort' "
                         f"who may enter {area.name} badging within {window}")
        escorts = [e.name for e in site.people.values()
                   if ESCORT in e.roles and e.id != visitor.host
                   and may_escort(e, visitor, area, site, state, ctx.when)]
        if escorts:
            allow.append(f"an escort ({_names(sorted(escorts), quote=False)}) badging at {ctx.door_name} "
                         f"within {window}")
    allow.append(f"the visit set not to need an escort into restricted areas (Visitors)"
                 if not area.escort_required else f"{area.name} not requiring escorts (Site setup, Areas)")
    return _result(Reason.ESCORT_REQUIRED, "visitor escort", summary, allow,
                   _no_state(ctx, "who was waiting at the door"))


def _two_person(ctx: _Ctx) -> Explanation:
    area = ctx.area
    window = _duration(ctx.site.rules.two_person_window_s)
    return _result(Reason.AWAITING_SECOND_PERSON, "two-person",
                   f"{area.name} needs two people: no other authorised person badged at {ctx.door_name} "
                   f"within {window}, so {ctx.who} waits as the first.",
                   [f"a second person allowed into {area.name} badging at {ctx.door_name} within {window}"],
                   _no_state(ctx, "who was waiting at the door"))


def _anti_passback(ctx: _Ctx) -> Explanation:
    area, door = ctx.area, ctx.door
    from_name = ctx.area_name(door.from_area) if door is not None else "the area it leads out of"
    reset = area.anti_passback_reset_min
    state, person = ctx.state, ctx.person
    seen = state.presence.get(person.id) if state is not None and person is not None else None
    if (seen is not None and door is not None and state is not None and person is not None
            and in_passback(person.id, door, area, state, ctx.when)):
        where = f"last saw {ctx.who} go into {ctx.area_name(seen.area)} ({ctx.at(seen.since)})"
        leave = f"badging out of {ctx.area_name(seen.area)} first"
    else:
        where = f"had last seen {ctx.who} in an area other than {from_name}"
        leave = "badging out at the exit reader of the area they were last seen in"
    allow = [leave, f"an operator correcting where {ctx.who} is (Muster)"]
    if reset is not None:
        allow.append(f"waiting until {reset:g} min after that badge (the area's timed anti-passback)")
    return _result(Reason.ANTI_PASSBACK, "anti-passback",
                   f"Anti-passback: {ctx.door_name} leads out of {from_name}, but the doors {where}.", allow,
                   _no_state(ctx, "where people were"))


def _occupancy(ctx: _Ctx) -> Explanation:
    area = ctx.area
    count = f" ({ctx.state.occupancy(area.id)} inside)" if ctx.state is not None else ""
    return _result(Reason.OCCUPANCY_FULL, "occupancy",
                   f"{area.name} holds at most {area.max_occupancy} people and was full{count}.",
                   [f"someone leaving {area.name} through an exit reader",
                    f"a higher maximum occupancy for {area.name} (Site setup, Areas)",
                    "responders are not counted against the limit"],
                   _no_state(ctx, "how many people were inside"))


def _pin_required(ctx: _Ctx) -> Explanation:
    return _result(Reason.PIN_REQUIRED, "PIN",
                   f"{ctx.door_name} needs a PIN after the badge, and none was typed.",
                   [f"{ctx.who} typing their PIN on the door's keypad after the badge"])


def _wrong_pin(ctx: _Ctx) -> Explanation:
    rules = ctx.site.rules
    if ctx.person is not None and ctx.person.pin_hash is None:
        return _result(Reason.WRONG_PIN, "PIN", f"{ctx.who} has no PIN set, so no PIN typed can match.",
                       [f"setting a PIN for {ctx.who} (People)"])
    return _result(Reason.WRONG_PIN, "PIN", f"The PIN typed at {ctx.door_name} is not {ctx.who}'s.",
                   [f"the right PIN (after {rules.pin_max_attempts} wrong PINs in a row the card is locked out of "
                    f"PIN doors for {_duration(rules.pin_lockout_s)})", f"a new PIN for {ctx.who} (People)"])


def _pin_locked_out(ctx: _Ctx) -> Explanation:
    rules = ctx.site.rules
    until = ""
    if ctx.state is not None:
        _, locked = ctx.state.pin_failures.get(ctx.request.credential_hash, (0, 0.0))
        if locked > ctx.when:
            until = f" until {ctx.at(locked)}"
    return _result(Reason.PIN_LOCKED_OUT, "PIN",
                   f"{ctx.who}'s card is locked out of PIN doors{until} after {rules.pin_max_attempts} wrong PINs "
                   "in a row.",
                   [f"waiting for the lockout to end ({_duration(rules.pin_lockout_s)} after the last wrong PIN)",
                    "a door without a PIN: the card still opens those"],
                   _no_state(ctx, "PIN failure counts"))


def _offline_restricted(ctx: _Ctx) -> Explanation:
    return _result(Reason.OFFLINE_RESTRICTED, "offline",
                   f"{ctx.door_name} could not reach the server and is set to refuse badges while offline.",
                   ["the door's link to the server restored (Doors shows it)",
                    f"{ctx.door_name} set to decide from its cached policy when offline (offline = \"cache\")"])


def _server_timeout(ctx: _Ctx) -> Explanation:
    timeout = ctx.door.decision_timeout_ms if ctx.door is not None else None
    within = f"within {timeout} ms" if timeout is not None else "in time"
    return _result(Reason.SERVER_TIMEOUT, "offline",
                   f"{ctx.door_name} got no answer from the server {within} and decided nothing itself.",
                   ["a server answering in time (check the server's load and the door's link)",
                    "a longer decision time-out for the door, or offline = \"cache\" (Site setup, Doors)"])


def _no_policy(ctx: _Ctx) -> Explanation:
    return _result(Reason.NO_POLICY, "offline",
                   f"{ctx.door_name} has not received its first signed policy from the server yet.",
                   ["the server publishing the door's policy (check the door's link on Doors)"])


def _pass_invalid(ctx: _Ctx) -> Explanation:
    return _result(Reason.PASS_INVALID, "visitor pass",
                   f"{ctx.door_name} was shown a visitor pass that is not one this site signed: it is damaged, "
                   "altered or forged, or signed with a pass key the door does not hold.",
                   ["a pass issued by this site for the visit (re-issue it from the visitor's page)",
                    "the door holding the current signed policy, which carries the site's pass keys"])


def _interlock_busy(ctx: _Ctx) -> Explanation:
    group = ctx.door.interlock if ctx.door is not None else None
    named = f" of the interlock '{group}'" if group else " of its interlock"
    return _result(Reason.INTERLOCK_BUSY, "interlock",
                   f"{ctx.door_name} is one of the doors{named}: another of its doors was open or unlocked, and "
                   "only one may be at a time.",
                   ["the other door closing (and relocking) first, then badging again",
                    "an operator checking that no door of the airlock is propped open (Doors)"])


#: The explainer of every refusal; granted reasons are answered by :func:`explain` itself.
EXPLAINERS: dict[Reason, Explainer] = {
    Reason.UNKNOWN_DOOR: _unknown_door,
    Reason.UNKNOWN_CREDENTIAL: _unknown_credential,
    Reason.CREDENTIAL_INACTIVE: _credential_inactive,
    Reason.PERSON_INACTIVE: _person_inactive,
    Reason.NOT_YET_VALID: _not_yet_valid,
    Reason.EXPIRED: _expired,
    Reason.LOCKDOWN: _lockdown,
    Reason.OUTSIDE_SCHEDULE: _outside_schedule,
    Reason.NO_ACCESS: _no_access,
    Reason.CLEARANCE_TOO_LOW: _clearance,
    Reason.ESCORT_REQUIRED: _escort,
    Reason.AWAITING_SECOND_PERSON: _two_person,
    Reason.ANTI_PASSBACK: _anti_passback,
    Reason.OCCUPANCY_FULL: _occupancy,
    Reason.PIN_REQUIRED: _pin_required,
    Reason.WRONG_PIN: _wrong_pin,
    Reason.PIN_LOCKED_OUT: _pin_locked_out,
    Reason.OFFLINE_RESTRICTED: _offline_restricted,
    Reason.SERVER_TIMEOUT: _server_timeout,
    Reason.NO_POLICY: _no_policy,
    Reason.PASS_INVALID: _pass_invalid,
    Reason.INTERLOCK_BUSY: _interlock_busy,
}
_unexplained = [r.value for r in Reason if not r.granted and r not in EXPLAINERS]
if _unexplained:  # a programming error: the desk would have no "Why not?" for it
    raise RuntimeError(f"refusal reasons without an explanation in doorkeep/explain.py: {_unexplained}")

__all__ = ["EXPLAINERS", "Explanation", "SITE_ONLY", "describe_schedule", "explain", "lift_refusal_floor"]
