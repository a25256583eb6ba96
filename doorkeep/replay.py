"""Impact preview: what a proposed site would have decided on the badges really recorded.

Access rules are easy to get wrong, and a mistake is usually found when
someone is locked out at a door. ``decide()`` is pure and cheap, so a
proposed site can be judged against what happened instead: :func:`replay`
walks a time-ordered stream of recorded access attempts (and the lockdowns
recorded with them) through ``decide()`` and ``commit()`` twice, once with
the current site and once with the proposed one, each replay rebuilding its
own :class:`~doorkeep.decision.DecisionState` (presence, anti-passback,
partners waiting at a door, PIN failure counts, occupancy) from its own
decisions as it goes.

The proposed site is compared with the *current site's replay*, not with
what was recorded: both replays make the same approximations (the state at
the start of the period is unknown, today's people and cards stand in for
the period's), so every difference they show comes from the change alone.
How far the current replay agrees with the record is reported beside it
(:class:`Honesty`): the figure that says how much the preview can be trusted.

Some attempts cannot be judged, and the report says which and why instead
of guessing (:data:`NOT_JUDGED`): PINs are never stored, so an attempt whose
outcome hinges on a PIN the record does not vouch for; a decision the edge
took on its own; a visitor's badge (pool cards are reissued, and the
escort who let a visitor in is not recorded). An attempt not judged still
moves its replay's state as it really happened (its recorded outcome is
committed), so the attempts after it are judged on the best state known.

Pure: the caller reads the records (server/replay.py) and renders the
report (:func:`render_text`, :meth:`ReplayReport.to_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from doorkeep.decision import AccessRequest, Decision, DecisionState, Reason, commit, decide
from doorkeep.errors import DoorkeepError
from doorkeep.model import PersonKind, Site


class ReplayMismatch(DoorkeepError, ValueError):
    """The proposed side replayed elsewhere (``proposed_codes``) does not match the records replayed here."""


#: How many examples each group of the report keeps.
EXAMPLES = 5

# Why an attempt was not judged (ReplayReport.not_judged keys), with the sentence the report prints.
PIN = "pin"
OFFLINE = "offline"
VISITOR = "visitor"
NO_CREDENTIAL = "no_credential"
NOT_JUDGED: dict[str, str] = {
    PIN: "the outcome hinges on a PIN, and PINs are not recorded (the record does not show whether the "
         "right one would have been typed)",
    OFFLINE: "decided by the edge on its own (server unreachable): its cached policy and local state, "
             "not the server's, made that decision",
    VISITOR: "a visitor's badge: pool cards are reissued to other visitors and the escort who let a visitor "
             "in is not recorded",
    NO_CREDENTIAL: "the recorded attempt carries no credential",
}

#: Recorded reasons that mean the attempt got past every rule before the PIN with a PIN typed and right
#: (decide() checks the PIN last, before the two waiting outcomes).
_PIN_PASSED = frozenset({Reason.GRANTED.value, Reason.GRANTED_ESCORTED.value, Reason.GRANTED_TWO_PERSON.value,
                         Reason.ESCORT_REQUIRED.value, Reason.AWAITING_SECOND_PERSON.value})
#: Recorded reasons only the edge gives when it decides alone.
_EDGE_ONLY = frozenset({Reason.GRANTED_OFFLINE.value, Reason.OFFLINE_RESTRICTED.value, Reason.SERVER_TIMEOUT.value})
#: A PIN hash no person has: a typed PIN known to be wrong.
_WRONG_PIN = "!"
#: Looked up rather than ``Decision.granted`` (a string test per call): the replay makes millions of them.
_GRANTED = frozenset(r for r in Reason if r.granted)


@dataclass(frozen=True)
class RecordedAttempt:
    """One access attempt as the store recorded it."""

    ts: float
    """UTC epoch seconds of the badge."""
    door: str
    credential_hash: str | None
    granted: bool
    reason: str | None
    person: str | None = None
    """The person the recorded decision named, if any."""
    decided_by: str | None = "server"
    """``server`` or ``edge_offline``."""
    pin: bool = False
    """A PIN was typed with the badge (as far as the record tells: the door asked for one)."""
    visitor: bool = False
    """The card was a visitor's (from the visitor pool, or the recorded person is a visitor)."""
    event_id: str | None = None


@dataclass(frozen=True)
class LockdownChange:
    """A lockdown recorded at ``ts``: ``scope`` is ``"site"`` or an area id."""

    ts: float
    scope: str
    active: bool


Record = RecordedAttempt | LockdownChange


@dataclass(frozen=True)
class Example:
    ts: float
    door: str
    person: str | None
    before: str
    """The reason before: the current site's replay (or, in :class:`Honesty`, the record)."""
    after: str
    """The reason after: the proposed site's replay (or, in :class:`Honesty`, the current site's replay)."""


@dataclass
class Group:
    """Attempts whose outcome changed the same way: ``before`` reason → ``after`` reason."""

    before: str
    after: str
    count: int = 0
    examples: list[Example] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, "count": self.count,
                "examples": [vars(e) for e in self.examples]}


@dataclass
class Impact:
    """How many of one door's (or one person's) attempts flip each way."""

    to_refused: int = 0
    to_granted: int = 0


@dataclass
class NotJudged:
    why: str
    explanation: str
    count: int = 0
    examples: list[Example] = field(default_factory=list)


@dataclass
class Honesty:
    """How far the current site's replay agrees with what was recorded, over the attempts both judged.

    Disagreement comes from what a replay cannot know (the state before the period, today's cards and
    people standing in for the period's, a site edited by hand since): the flips of the report are
    trustworthy where this is high.
    """

    judged: int = 0
    same_outcome: int = 0
    same_reason: int = 0
    disagreements: dict[tuple[str, str], Group] = field(default_factory=dict)

    @property
    def agreement(self) -> float:
        """The share of judged attempts whose grant or refusal the replay reproduces (1.0 when none)."""
        return self.same_outcome / self.judged if self.judged else 1.0


@dataclass
class ReplayReport:
    attempts: int = 0
    judged: int = 0
    lockdown_changes: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    granted_before: int = 0
    """Judged attempts the current site's replay grants."""
    granted_after: int = 0
    """Judged attempts the proposed site's replay grants."""
    reason_changed: int = 0
    """Judged attempts with the same outcome under both sites but another reason (no_access → outside_schedule)."""
    to_refused: dict[tuple[str, str], Group] = field(default_factory=dict)
    to_granted: dict[tuple[str, str], Group] = field(default_factory=dict)
    doors: dict[str, Impact] = field(default_factory=dict)
    people: dict[str, Impact] = field(default_factory=dict)
    """Person id -> impact; attempts with a card nobody holds are counted under ``""``."""
    not_judged: dict[str, NotJudged] = field(default_factory=dict)
    honesty: Honesty = field(default_factory=Honesty)

    @property
    def grants_to_refusals(self) -> int:
        return sum(g.count for g in self.to_refused.values())

    @property
    def refusals_to_grants(self) -> int:
        return sum(g.count for g in self.to_granted.values())

    @property
    def not_judged_count(self) -> int:
        return sum(n.count for n in self.not_judged.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (``doorkeep site diff --json``, the API)."""
        def groups(gs: dict[tuple[str, str], Group]) -> list[dict[str, Any]]:
            return [g.to_dict() for g in _largest(gs)]

        return {
            "attempts": self.attempts, "judged": self.judged, "not_judged_total": self.not_judged_count,
            "lockdown_changes": self.lockdown_changes, "first_ts": self.first_ts, "last_ts": self.last_ts,
            "granted_before": self.granted_before, "granted_after": self.granted_after,
            "grants_to_refusals": self.grants_to_refusals, "refusals_to_grants": self.refusals_to_grants,
            "reason_changed": self.reason_changed,
            "to_refused": groups(self.to_refused), "to_granted": groups(self.to_granted),
            "doors": {d: vars(i) for d, i in sorted(self.doors.items())},
            "people": {p: vars(i) for p, i in sorted(self.people.items())},
            "not_judged": [{"why": n.why, "explanation": n.explanation, "count": n.count,
                            "examples": [vars(e) for e in n.examples]}
                           for n in sorted(self.not_judged.values(), key=lambda n: -n.count)],
            "honesty": {"judged": self.honesty.judged, "same_outcome": self.honesty.same_outcome,
                        "same_reason": self.honesty.same_reason, "agreement": self.honesty.agreement,
                        "disagreements": groups(self.honesty.disagreements)},
        }


# ------------------------------------------------------------------ replay
#
# Speed (bench/replay.py: a million attempts, two replays each): ``decide()`` and ``commit()`` are the work, about
# 80 % of it; what runs around them per attempt is kept to a few look-ups. What a card's holder is (a visitor?
# their PIN today?) is looked up once per card (:class:`_Holders`), reasons are compared by their string value,
# and the report's counters are local variables written to the report once at the end. Kept out on purpose: a
# cache of requests per door and card (a fresh small object is cheaper than a look-up in a large dict), and
# reusing decisions whose inputs did not change (building a key of everything ``decide()`` reads cost more
# than the decisions it saved; docs/performance.md).


class _Replay:
    """One site's replay: the site and the state its own decisions build."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.state = DecisionState()

    def lockdown(self, change: LockdownChange) -> None:
        if change.scope == "site":
            self.state.lockdown_site = change.active
        elif change.active:
            self.state.lockdown_areas.add(change.scope)
        else:
            self.state.lockdown_areas.discard(change.scope)

    def step(self, a: RecordedAttempt, holders: _Holders) -> Decision | str:
        """Judge one attempt, or say why it cannot be judged (:data:`NOT_JUDGED`), and apply its effects to this
        replay's state: this replay's own decision, or the recorded one when not judged. The common case
        (judged, no PIN asked) is one ``decide()`` and one ``commit()``."""
        why, typed_pin = holders.classify(a)
        req = AccessRequest(a.door, a.credential_hash or "")
        if why is None:
            d = decide(req, self.site, self.state, a.ts)
            if d.reason is not _PIN_REQUIRED:
                commit(req, d, self.site, self.state, a.ts)
                return d
            req, out = self._with_pin(a, req, d, typed_pin)
            if out.__class__ is Decision:
                commit(req, out, self.site, self.state, a.ts)  # type: ignore[arg-type]
                return out
        else:
            out = why
        recorded = _recorded_decision(a, self.site)
        if recorded is not None:
            commit(req, recorded, self.site, self.state, a.ts)
        return out

    def _with_pin(self, a: RecordedAttempt, req: AccessRequest, d: Decision,
                  typed_pin: str | None) -> tuple[AccessRequest, Decision | str]:
        """The decision when only the PIN is left (``pin_required`` without one), or why it cannot be judged.

        A refusal before the PIN rule (or a PIN lock-out this replay's state holds) stands whatever was
        typed, so the badge was decided without a PIN first. The record says what was typed: a recorded
        ``wrong_pin`` or ``pin_required`` is that again; a recorded outcome past the PIN rule, with a PIN
        typed, means the person's current PIN was typed (``typed_pin``). Anything else the record cannot
        vouch for.
        """
        if a.reason in (Reason.WRONG_PIN.value, Reason.PIN_REQUIRED.value):
            return req, Decision(Reason(a.reason), d.person)
        if a.pin and a.reason in _PIN_PASSED:
            req = AccessRequest(a.door, req.credential_hash, typed_pin or _WRONG_PIN)
            return req, decide(req, self.site, self.state, a.ts)
        return req, PIN


def _recorded_decision(a: RecordedAttempt, site: Site) -> Decision | None:
    """The recorded outcome as a Decision, to carry the state past an attempt not judged."""
    try:
        reason = Reason(a.reason) if a.reason else (Reason.GRANTED if a.granted else None)
    except ValueError:
        reason = Reason.GRANTED if a.granted else None
    if reason is None:
        return None
    person = a.person
    if person is None and a.credential_hash:
        cred = site.credentials.get(a.credential_hash)
        person = cred.person if cred is not None else None
    return Decision(reason, person)


def _largest(groups: dict[tuple[str, str], Group]) -> list[Group]:
    return sorted(groups.values(), key=lambda g: (-g.count, g.before, g.after))


def _add(groups: dict[tuple[str, str], Group], before: str, after: str, example: Example, keep: int) -> None:
    key = (before, after)
    g = groups.get(key)
    if g is None:
        g = groups[key] = Group(before, after)
    g.count += 1
    if len(g.examples) < keep:
        g.examples.append(example)


class _Holders:
    """What the current site says of a card's holder, looked up once per card: both replays judge the same
    attempts (the current site decides what can be judged, the record what was typed)."""

    def __init__(self, current: Site) -> None:
        self.current = current
        #: card hash -> (the holder is a visitor, or None when the site knows no such card; their PIN hash today)
        self._cards: dict[str, tuple[bool | None, str | None]] = {}

    def _card(self, cred_hash: str) -> tuple[bool | None, str | None]:
        cred = self.current.credentials.get(cred_hash)
        if cred is None:
            return None, None
        holder = self.current.people.get(cred.person)
        if holder is None:
            return False, None
        return holder.kind is PersonKind.VISITOR, holder.pin_hash

    def classify(self, a: RecordedAttempt) -> tuple[str | None, str | None]:
        """Why the attempt cannot be judged whatever the site (None: it can be), and the PIN its card's holder
        has today (what a recorded grant past the PIN rule must have typed)."""
        cred_hash = a.credential_hash
        if not cred_hash:
            return NO_CREDENTIAL, None
        if a.decided_by != "server" or a.reason in _EDGE_ONLY:
            return OFFLINE, None
        if a.visitor:
            return VISITOR, None
        card = self._cards.get(cred_hash)
        if card is None:
            card = self._cards[cred_hash] = self._card(cred_hash)
        visitor, pin = card
        if visitor is None:  # a card nobody holds: the record's person, if the site knows them
            holder = self.current.people.get(a.person or "")
            visitor = holder is not None and holder.kind is PersonKind.VISITOR
        return (VISITOR, None) if visitor else (None, pin)


#: One small integer per attempt, for a replay run elsewhere (another process): a reason, or why not judged.
CODES: tuple[str, ...] = (*(r.value for r in Reason), *NOT_JUDGED)
_CODE = {value: i for i, value in enumerate(CODES)}
#: Code -> what it stands for: a shared Decision (no person) or why not judged.
_DECODED: tuple[Decision | str, ...] = (*(Decision(r) for r in Reason), *NOT_JUDGED)
_PIN_REQUIRED = Reason.PIN_REQUIRED
#: Granted reasons by value: a string is hashed in C, an Enum member in Python.
_GRANTED_VALUES = frozenset(r.value for r in _GRANTED)


def side_codes(records: Iterable[Record], site: Site, current: Site) -> Iterator[int]:
    """``site``'s replay alone, one code (:data:`CODES`) per attempt, lockdowns followed and not coded.

    The same judgement :func:`replay` makes for each side, so the proposed side can run in another process
    (two cores: server/replay.py) and be fed back through ``replay(..., proposed_codes=...)``.
    """
    for chunk in side_code_chunks(records, site, current):
        yield from chunk


def side_code_chunks(records: Iterable[Record], site: Site, current: Site, size: int = 65536) -> Iterator[bytes]:
    """:func:`side_codes` as bytes (what crosses the pipe between the two processes): the first chunk small, so
    the comparison starts at once, then doubling up to ``size`` codes."""
    if len(CODES) > 256:
        raise ValueError("more codes than a byte holds")
    side, holders, code = _Replay(site), _Holders(current), _CODE
    buf = bytearray()
    limit = min(1024, size)
    for rec in records:
        if isinstance(rec, LockdownChange):
            side.lockdown(rec)
            continue
        out = side.step(rec, holders)
        buf.append(code[out.reason._value_] if out.__class__ is Decision else code[out])  # type: ignore[union-attr]
        if len(buf) >= limit:
            yield bytes(buf)
            buf.clear()
            limit = min(limit * 2, size)
    if buf:
        yield bytes(buf)


def replay(records: Iterable[Record], current: Site, proposed: Site, *, examples: int = EXAMPLES,
           proposed_codes: Iterator[int] | None = None) -> ReplayReport:
    """Replay ``records`` (time-ordered) with ``current`` and ``proposed``; what would change, and how honestly.

    Streams: memory grows with the people, doors and distinct reason pairs, not with the records.
    ``proposed_codes``: the proposed side already replayed elsewhere (:func:`side_codes` over the same records).
    """
    report = ReplayReport()
    before, after = _Replay(current), _Replay(proposed)
    holders = _Holders(current)
    honesty = report.honesty
    granted_values, decoded = _GRANTED_VALUES, _DECODED
    attempts = judged = lockdowns = same_outcome = same_reason = 0
    granted_before = granted_after = reason_changed = 0
    first: RecordedAttempt | None = None
    last: RecordedAttempt | None = None
    for rec in records:
        if isinstance(rec, LockdownChange):
            lockdowns += 1
            before.lockdown(rec)  # type: ignore[arg-type]
            if proposed_codes is None:
                after.lockdown(rec)  # type: ignore[arg-type]
            continue
        a: RecordedAttempt = rec  # type: ignore[assignment]
        attempts += 1
        if first is None:
            first = a
        last = a
        out_b = before.step(a, holders)
        if proposed_codes is None:
            out_a = after.step(a, holders)
        else:
            code = next(proposed_codes, -1)
            if code < 0:
                raise ReplayMismatch(f"the proposed side's replay ended after {attempts - 1:,} attempts; the records go on")
            out_a = decoded[code]
        if out_b.__class__ is not Decision or out_a.__class__ is not Decision:
            why = out_b if out_b.__class__ is str else str(out_a)
            n = report.not_judged.get(why)  # type: ignore[arg-type]
            if n is None:
                n = report.not_judged[why] = NotJudged(why, NOT_JUDGED[why])  # type: ignore[index]
            n.count += 1
            if len(n.examples) < examples:
                n.examples.append(Example(a.ts, a.door, a.person, a.reason or "", ""))
            continue

        judged += 1
        value_b = out_b.reason._value_  # type: ignore[union-attr]
        value_a = out_a.reason._value_  # type: ignore[union-attr]
        granted_b, granted_a = value_b in granted_values, value_a in granted_values
        # Honesty: the current site's replay against the record.
        recorded = a.granted
        if granted_b == recorded:
            same_outcome += 1
        if value_b == a.reason:
            same_reason += 1
        elif granted_b != recorded:
            person = out_b.person or out_a.person or a.person  # type: ignore[union-attr]
            _add(honesty.disagreements, a.reason or "", value_b,
                 Example(a.ts, a.door, person, a.reason or "", value_b), examples)
        # The change: the proposed site's replay against the current site's.
        granted_before += granted_b
        granted_after += granted_a
        if granted_b == granted_a:
            if value_b != value_a:
                reason_changed += 1
            continue
        person = out_b.person or out_a.person or a.person  # type: ignore[union-attr]
        example = Example(a.ts, a.door, person, value_b, value_a)
        _add(report.to_refused if granted_b else report.to_granted, value_b, value_a, example, examples)
        for impacts, key in ((report.doors, a.door), (report.people, person or "")):
            impact = impacts.get(key)
            if impact is None:
                impact = impacts[key] = Impact()
            if granted_b:
                impact.to_refused += 1
            else:
                impact.to_granted += 1
    report.attempts, report.judged, report.lockdown_changes = attempts, judged, lockdowns
    report.first_ts = first.ts if first is not None else None
    report.last_ts = last.ts if last is not None else None
    report.granted_before, report.granted_after, report.reason_changed = granted_before, granted_after, reason_changed
    honesty.judged, honesty.same_outcome, honesty.same_reason = judged, same_outcome, same_reason
    return report


# ------------------------------------------------------------------ render


def _counts(groups: dict[tuple[str, str], Group], side: int) -> str:
    """``no_access 200, outside_schedule 12``: counts by the new (side 1) or old (side 0) reason."""
    by: dict[str, int] = {}
    for g in groups.values():
        key = g.after if side else g.before
        by[key] = by.get(key, 0) + g.count
    return ", ".join(f"{k} {v:,}" for k, v in sorted(by.items(), key=lambda kv: (-kv[1], kv[0])))


def summary(report: ReplayReport) -> str:
    """One line, like ``git diff --stat`` for access."""
    people = sum(1 for p in report.people if p)
    doors = len(report.doors)
    if not report.to_refused and not report.to_granted:
        head = f"no grant or refusal would change over {report.judged:,} judged attempt{'s' * (report.judged != 1)}"
    else:
        head = f"{people:,} {'person' if people == 1 else 'people'} / {doors:,} door{'s' * (doors != 1)} would change:"
        parts = []
        if report.to_refused:
            n = report.grants_to_refusals
            parts.append(f"{n:,} grant{'s' * (n != 1)} become{'s' * (n == 1)} "
                         f"refusal{'s' * (n != 1)} ({_counts(report.to_refused, 1)})")
        if report.to_granted:
            n = report.refusals_to_grants
            parts.append(f"{n:,} refusal{'s' * (n != 1)} become{'s' * (n == 1)} "
                         f"grant{'s' * (n != 1)} (were {_counts(report.to_granted, 0)})")
        head += " " + ", ".join(parts)
    return head


def render_text(report: ReplayReport, *, names: dict[str, str] | None = None, fmt_ts: Any = None,
                top: int = 20) -> str:
    """The report for a terminal. ``names``: person id -> display name; ``fmt_ts``: epoch -> text."""
    names = names or {}
    show_ts = fmt_ts or (lambda t: f"{t:.0f}")

    def who(pid: str | None) -> str:
        if not pid:
            return "(card held by nobody)"
        return f"{names[pid]} ({pid})" if pid in names else pid

    lines = [summary(report), ""]
    span = (f" from {show_ts(report.first_ts)} to {show_ts(report.last_ts)}"
            if report.first_ts is not None and report.last_ts is not None else "")
    lines.append(f"{report.attempts:,} recorded attempts{span}: {report.judged:,} judged, "
                 f"{report.not_judged_count:,} not judged; {report.lockdown_changes:,} lockdown changes replayed")
    lines.append(f"grants: {report.granted_before:,} with the current site, {report.granted_after:,} with the "
                 f"proposed one; {report.reason_changed:,} keep their outcome with another reason")
    for title, groups in (("Grants that become refusals", report.to_refused),
                          ("Refusals that become grants", report.to_granted)):
        if not groups:
            continue
        lines += ["", f"{title}:"]
        for g in _largest(groups):
            lines.append(f"  {g.count:>8,}  {g.before} -> {g.after}")
            for e in g.examples:
                lines.append(f"            e.g. {show_ts(e.ts)}  {e.door}  {who(e.person)}")
    if report.doors:
        lines += ["", "By door (grants lost / grants gained):"]
        for door, i in sorted(report.doors.items(), key=lambda kv: -(kv[1].to_refused + kv[1].to_granted))[:top]:
            lines.append(f"  {door:<24} -{i.to_refused:<8,} +{i.to_granted:,}")
    if report.people:
        ranked = sorted(report.people.items(), key=lambda kv: (-(kv[1].to_refused + kv[1].to_granted), kv[0]))
        lines += ["", f"By person (grants lost / grants gained){f', the first {top}' if len(ranked) > top else ''}:"]
        for pid, i in ranked[:top]:
            lines.append(f"  {who(pid):<40} -{i.to_refused:<8,} +{i.to_granted:,}")
    if report.not_judged:
        lines += ["", "Not judged:"]
        for n in sorted(report.not_judged.values(), key=lambda n: -n.count):
            lines.append(f"  {n.count:>8,}  {n.why}: {n.explanation}")
    h = report.honesty
    lines += ["", f"Replay honesty: the current site's replay reproduces {h.same_outcome:,} of {h.judged:,} recorded "
                  f"outcomes ({h.agreement:.1%}; same reason {h.same_reason:,})."]
    for g in _largest(h.disagreements)[:5]:
        lines.append(f"  {g.count:>8,}  recorded {g.before}, replayed {g.after}")
    if h.judged and h.agreement < 0.95:
        lines.append("  The replay starts with nobody inside and uses today's people and cards: read the flips with "
                     "this in mind.")
    return "\n".join(lines)
