"""Visitors: pre-registration, check-in with consent, check-out, overdue visits and the watchlist (docs/desk.md).

The application service behind the desk's visitor API and pages (server/web/visitors.py translates HTTP to
it and back). The visit itself lives in the server's directory (server/directory.py: ``register_visitor``,
``check_in`` takes a badge from the site's visitor pool, ``check_out``); this service adds the rules around
it, every change audited with the operator as actor:

- validation with messages an operator can act on (the host must be an active employee or contractor, the
  areas must exist, the window must make sense: :meth:`Visitors.window`), escort required by default when an
  allowed area is restricted;
- at check-in the visitor must have been shown the current privacy notice (:class:`Notice`, whose version
  every recorded consent names) and acknowledged it; the consent is recorded (notice version, photo consent
  yes/no, time, operator: ``visitor_consents``) and the host is told by a ``visitor_arrived`` event
  (server/eventlog.py), which the live feed shows, and by e-mail when the site has a relay (``invitations``:
  server/invitations.py, which also invites a visitor registered with an address);
- check-out revokes the badge and returns it to the pool in one directory change (at the desk, the kiosk, or
  by the visitor's pass granted at a ``visitor_checkout`` door: :class:`DoorCheckout`); visits that end without a
  check-out are closed by :class:`OverdueVisits` (a periodic job on the desk's clock), audited as ``system``;
- the watchlist: names and companies an admin lists; a match at registration *holds* the visit (it is
  returned as a warning, audited with entry ids only: the audit log never holds names, and the desk shows the
  visit "held by watchlist"); the list is checked again right before check-in (it may have changed), and a
  held visit is not checked in (no badge, no active pass: a pass is active only while checked in) until an
  admin overrides the hold with a reason (:meth:`Visitors.override_hold`) or an admin or desk operator
  refuses the visit (:meth:`Visitors.refuse_visit`), both audited;
- agreements (server/agreements.py): check-in is refused until the visitor has accepted every agreement the
  visit needs, at its current version.

Errors: :class:`VisitorError` (422: the input breaks a rule), :class:`VisitConflict` (409: the visit's state
does not allow it now), :class:`VisitorNotFound` (404); all are ``DirectoryError``\\ s, like the directory's own.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
import unicodedata
from dataclasses import dataclass
from datetime import datetime, time as dtime, timedelta
from typing import TYPE_CHECKING, Any, Sequence
from zoneinfo import ZoneInfo

from doorkeep.clock import Clock
from doorkeep.contract import EventMsg
from doorkeep.model import Area, Person, PersonKind, PersonState
from doorkeep.visitor_pass import FORMAT as PASS_FORMAT
from server.audit import Auditor, record_audit, subject_ref
from server.directory import Directory, DirectoryError, Visitor
from server.eventlog import EventLog
from server.store import Store

if TYPE_CHECKING:
    from server.agreements import Acceptance, Agreements
    from server.invitations import Delivery, Invitations
    from server.passes import Passes

log = logging.getLogger("doorkeep.server.desk")

#: The longest visit window (a longer stay is a contractor: add them to people.toml).
MAX_VISIT = timedelta(days=31)
#: How far ahead a visit may be pre-registered (it must start within a year from now).
MAX_AHEAD = timedelta(days=366)
#: How often the desk looks for visits that ended without a check-out.
OVERDUE_EVERY_S = 60.0
EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
WATCH_KINDS = ("name", "company")


# ------------------------------------------------------------------ errors


class VisitorError(DirectoryError):
    """A visitor operation the input does not allow; the message says what to change (HTTP 422)."""


class VisitConflict(VisitorError):
    """The visit's state does not allow this now (already in, already left, no free badge, notice changed): 409."""


class VisitorNotFound(VisitorError, LookupError):
    """No such visitor: 404."""


class WatchlistExists(VisitConflict):
    """The same name or company is listed already."""


class VisitHeld(VisitConflict):
    """The visit is held by a watchlist match (or was refused): no check-in until an admin overrides it (409)."""


# ------------------------------------------------------------------ values


@dataclass(frozen=True)
class Notice:
    """The privacy notice shown at check-in; every recorded consent names its version."""

    version: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


@dataclass(frozen=True)
class Registration:
    """A visit to pre-register. Times without an offset are in the site's time zone."""

    name: str
    host: str
    valid_from: datetime
    valid_until: datetime
    allowed_areas: tuple[str, ...]
    company: str = ""
    email: str = ""
    escort_required: bool | None = None  # None: required when an allowed area is restricted


@dataclass(frozen=True)
class CheckIn:
    """What the visitor was shown and agreed to at the desk."""

    notice_version: str
    consent: bool
    photo_consent: bool


@dataclass(frozen=True)
class Consent:
    notice_version: str
    photo_consent: bool
    consented_at: float
    operator: str | None


@dataclass(frozen=True)
class Hold:
    """A visit held by a watchlist match: ``held`` (check-in refused), ``overridden`` (an admin let it
    through, with a reason) or ``refused`` (the visit is cancelled)."""

    state: str
    entries: tuple[int, ...]
    stage: str | None
    held_at: float
    resolved_by: str | None
    resolved_at: float | None
    reason: str | None


@dataclass(frozen=True)
class VisitRecord:
    """A visit as the desk shows it (instants in epoch seconds; the web shows them in site time)."""

    id: str
    name: str
    company: str
    email: str
    host: str
    host_name: str
    valid_from: float
    valid_until: float
    allowed_areas: tuple[str, ...]
    escort_required: bool
    status: str  # registered | checked_in | checked_out
    badge_last4: str | None  # while checked in: the last digits of the badge handed over
    checked_in_at: float | None
    checked_out_at: float | None
    where: str | None  # on site: the area the doors last saw them enter
    consent: Consent | None
    hold: Hold | None = None


@dataclass(frozen=True)
class Today:
    """Today's visitors in the site's time zone, each list by start of visit and name."""

    expected: list[VisitRecord]
    on_site: list[VisitRecord]
    left: list[VisitRecord]


@dataclass(frozen=True)
class WatchHit:
    """A watchlist entry a visitor's name or company matches."""

    id: int
    kind: str
    value: str
    note: str


@dataclass(frozen=True)
class WatchEntry:
    id: int
    kind: str
    value: str
    note: str
    added_by: str | None
    added_at: float


# ------------------------------------------------------------- text rules


def clean_text(value: str) -> str:
    """A name or company as stored: runs of blanks made one space; control characters refused (ValueError)."""
    value = " ".join(value.split())
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError("control characters are not allowed")
    return value


def check_email(value: str) -> str:
    """An e-mail address, or empty (ValueError for anything else)."""
    value = value.strip()
    if value and not EMAIL.match(value):
        raise ValueError("not an e-mail address (leave it empty if the visitor has none)")
    return value


def fold(text: str) -> str:
    """Case- and accent-insensitive form for matching: ``Zoë  MÜLLER`` and ``zoe muller`` fold the same."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w]+", " ", plain.casefold()).split())


def _matches(entry: str, value: str) -> bool:
    """An entry matches when all its words appear, in order, as whole words of the value (folded)."""
    if not entry or not value:
        return False
    return re.search(r"(?:^| )" + re.escape(entry) + r"(?:$| )", value) is not None


# --------------------------------------------------------------- watchlist


class Watchlist:
    """Names and companies that warn the desk (table ``watchlist``, migration 007)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def entries(self) -> list[WatchEntry]:
        return [WatchEntry(r["id"], r["kind"], r["value"], r["note"] or "", r["added_by"], r["added_at"])
                for r in self.store.watchlist_entries()]

    def add(self, kind: str, value: str, note: str, actor: str, at: float) -> int:
        if kind not in WATCH_KINDS:
            raise VisitorError(f"a watchlist entry is a {' or a '.join(WATCH_KINDS)}, not {kind!r}")
        norm = fold(value)
        if not norm:
            raise VisitorError("the watchlist entry has no letters or digits to match on")
        entry_id = self.store.add_watchlist_entry(kind, value, norm, note, actor, at)
        if entry_id is None:
            raise WatchlistExists(f"the watchlist already has this {kind}")
        return entry_id

    def remove(self, entry_id: int) -> bool:
        return bool(self.store.remove_watchlist_entry(entry_id))

    def check(self, name: str, company: str) -> list[WatchHit]:
        """The entries the visitor's name or company matches."""
        folded = {"name": fold(name), "company": fold(company)}
        rows = sorted(self.store.watchlist_entries(), key=lambda r: r["id"])
        return [WatchHit(r["id"], r["kind"], r["value"], r["note"] or "")
                for r in rows if _matches(r["norm"], folded.get(r["kind"], ""))]


# ----------------------------------------------------------------- service


class Visitors:
    """Visitor operations for the desk; every method records who did it."""

    def __init__(self, directory: Directory, store: Store, clock: Clock, notice: Notice, *,
                 audit: Auditor | None = None, events: EventLog | None = None,
                 invitations: Invitations | None = None) -> None:
        """``invitations``: queues the invitation e-mail at registration and the host's notice at check-in
        (server/invitations.py); None sends no mail."""
        self.directory = directory
        self.store = store
        self.clock = clock
        self.notice = notice
        self.audit_log = audit if audit is not None else directory.audit  # the directory's own by default
        self.events = events  # where visitor_arrived is recorded (and the live feed hears of it)
        self.watchlist = Watchlist(store)
        self.invitations = invitations
        self.agreements: Agreements | None = None  # set by the desk (server/web/app.py); None: none required
        self.passes: Passes | None = None  # set by the desk: the visit's passes end with a cancellation

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.directory.site.timezone)

    def audit(self, actor: str, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
        """Record what already happened; a failing audit is logged loudly and never undoes it."""
        record_audit(self.audit_log, actor, action, target, details)

    def ref(self, person: str) -> str:
        return subject_ref(self.directory.key, person)

    # ------------------------------------------------------------ queries

    def hosts(self) -> list[Person]:
        """Who may host a visit: the site's active employees and contractors, by name."""
        site = self.directory.site
        return sorted((p for p in site.people.values() if p.kind is not PersonKind.VISITOR
                       and p.state is PersonState.ACTIVE), key=lambda p: p.name)

    def host_id(self, typed: str) -> str:
        """The host a receptionist typed into the picker: an id as is, else the id of the one active person whose
        name is exactly that (any case); otherwise what was typed, for the registration to refuse by name."""
        typed = typed.strip()
        site = self.directory.site
        if typed in site.people:
            return typed
        named = [p.id for p in site.people.values() if p.kind is not PersonKind.VISITOR
                 and p.state is PersonState.ACTIVE and p.name.casefold() == typed.casefold()]
        return named[0] if len(named) == 1 else typed

    def areas(self) -> list[Area]:
        """The areas a visit may allow, by name."""
        return sorted(self.directory.site.areas.values(), key=lambda a: a.name)

    def free_badges(self) -> int:
        """How many visitor badges of the pool are free to hand out."""
        return len(self.directory.free_badges())

    def record(self, visitor_id: str) -> VisitRecord:
        """One visit as the desk shows it; :class:`VisitorNotFound` when there is none."""
        for row in self.store.visitor_records():
            if row["id"] == visitor_id:
                return self._record(row)
        raise VisitorNotFound(f"no visitor {visitor_id!r} (it may have been removed by retention)")

    def today(self) -> Today:
        """Today's visitors in the site's time zone: expected, on site (with where), left."""
        now = self.clock.wall()
        tz = self.tz
        day = datetime.fromtimestamp(now, tz).date()
        start = datetime.combine(day, dtime(0), tz).timestamp()
        end = datetime.combine(day + timedelta(days=1), dtime(0), tz).timestamp()
        groups: dict[str, list[VisitRecord]] = {"expected": [], "on_site": [], "left": []}
        for row in self.store.visitor_records():
            if row["status"] == "registered" and row["valid_from"] < end and row["valid_until"] > now:
                groups["expected"].append(self._record(row))
            elif row["status"] == "checked_in":
                groups["on_site"].append(self._record(row))
            elif row["status"] == "checked_out" and (row["checked_out_at"] or 0) >= start:
                groups["left"].append(self._record(row))
        for rows in groups.values():
            rows.sort(key=lambda r: (r.valid_from, r.name))
        return Today(**groups)

    def consent(self, visitor_id: str) -> Consent | None:
        row = self.store.latest_visitor_consent(visitor_id)
        return None if row is None else Consent(row["notice_version"], bool(row["photo_consent"]),
                                                row["consented_at"], row["operator"])

    def mail_delivery(self, visitor_id: str, kind: str = "host_notice") -> Delivery | None:
        """Whether the host's notice (or, with ``kind="invitation"``, the invitation) is queued, sent or
        failed; None when none was queued (no address, or no relay configured)."""
        return None if self.invitations is None else self.invitations.delivery(visitor_id, kind)

    # ----------------------------------------------------------- changes

    def register(self, reg: Registration, actor: str) -> tuple[VisitRecord, list[WatchHit]]:
        """Pre-register a visit; returns it and the watchlist matches (warnings, audited)."""
        visitor = self.check(reg)
        vid, name, company = visitor.id, visitor.name, visitor.company
        self.directory.register_visitor(visitor, actor=actor)
        record = self.record(vid)
        warnings = self._warn(vid, name, company, "register", actor)
        if warnings:
            self._hold(vid, warnings, "register", actor)
            record = self.record(vid)
        if self.invitations is not None and record.email:
            if self.invitations.invite(record) is not None:  # queued: the relay is never waited on here
                self.audit(actor, "visitor.invitation_queued", self.ref(vid))
        return record, warnings

    def check(self, reg: Registration) -> Visitor:
        """The visit ``reg`` would register (with a fresh id), checked by every rule, nothing stored; raises
        :class:`VisitorError` with what to change. A CSV import checks every row with it before storing any."""
        site = self.directory.site
        try:
            name, company, email = clean_text(reg.name), clean_text(reg.company), check_email(reg.email)
        except ValueError as exc:
            raise VisitorError(str(exc)) from exc
        if not name:
            raise VisitorError("the visitor's name is empty")
        host = site.people.get(reg.host)
        if host is None or host.kind is PersonKind.VISITOR:
            raise VisitorError(f"host {reg.host!r} is not an employee or contractor of this site "
                               "(pick one from the list; visitors cannot host)")
        if host.state is not PersonState.ACTIVE:
            raise VisitorError(f"host {host.name} is {host.state.value}: pick another host")
        if not reg.allowed_areas:
            raise VisitorError("a visit allows at least one area")
        unknown = [a for a in reg.allowed_areas if a not in site.areas]
        if unknown:
            raise VisitorError(f"unknown areas {unknown}: the site has {sorted(site.areas)}")
        start, end = self.window(reg.valid_from, reg.valid_until)
        restricted = any(site.areas[a].restricted for a in reg.allowed_areas)
        escort = restricted if reg.escort_required is None else reg.escort_required
        return Visitor(id=f"v-{secrets.token_hex(6)}", name=name, host=reg.host, valid_from=start, valid_until=end,
                       allowed_areas=tuple(dict.fromkeys(reg.allowed_areas)), company=company, email=email,
                       escort_required=escort)

    def instant(self, value: datetime, what: str = "time") -> float:
        """A datetime from a form or JSON; one without an offset is in the site's time zone."""
        if value.tzinfo is None:
            value = value.replace(tzinfo=self.tz)
        try:
            return value.timestamp()
        except (OverflowError, ValueError, OSError) as exc:
            raise VisitorError(f"the visit's {what} {value.isoformat()} is out of range") from exc

    def window(self, valid_from: datetime, valid_until: datetime) -> tuple[float, float]:
        """The visit window as instants, checked before anything is stored (422 with the reason): it ends
        after it starts and after now, lasts at most :data:`MAX_VISIT`, starts within :data:`MAX_AHEAD`.
        So every stored window is shown in the site's time zone without overflow (year 9999 + an offset)."""
        start = self.instant(valid_from, "start ('from')")
        end = self.instant(valid_until, "end ('until')")
        now = self.clock.wall()
        if end <= start:
            raise VisitorError("the visit must end after it starts (check 'until')")
        if end <= now:
            raise VisitorError("the visit window has already ended (check 'until')")
        if start > now + MAX_AHEAD.total_seconds():
            raise VisitorError(f"a visit can be registered at most {MAX_AHEAD.days} days ahead (check 'from')")
        if end - start > MAX_VISIT.total_seconds():
            raise VisitorError(f"a visit lasts at most {MAX_VISIT.days} days; for longer stays add the person to "
                               "people.toml")
        return start, end

    def check_in(self, visitor_id: str, shown: CheckIn, actor: str, *,
                 acceptances: Sequence[Acceptance] = ()) -> tuple[VisitRecord, list[WatchHit]]:
        """Record the consent to the current notice and the agreements accepted, activate a badge from the pool
        and tell the host; refused (409) while the watchlist holds the visit, and (422) until every required
        agreement is accepted."""
        v = self._visitor(visitor_id)
        if v.status == "checked_in":
            raise VisitConflict(f"{v.name} is already checked in (badge …{v.card_last4})")
        if v.status == "checked_out":
            raise VisitConflict(f"{v.name} has already left: register a new visit")
        # First: a held visit gets no further, whatever else the form says (the watchlist may have changed).
        warnings = self._gate(visitor_id, v.name, v.company, actor)
        if not shown.consent:
            raise VisitorError("the visitor must be shown the privacy notice and acknowledge it before check-in "
                               "(tick the consent box)")
        if shown.notice_version != self.notice.version:
            raise VisitConflict(f"the privacy notice is now version {self.notice.version} (you showed "
                                f"{shown.notice_version}): show the current notice and ask again")
        if self.clock.wall() >= v.valid_until:
            raise VisitConflict(f"{v.name}'s visit window has ended: register a new visit")
        if not self.directory.free_badges():
            raise VisitConflict("no free visitor badge in the pool: check out visitors who have left, or add cards "
                                "to [visitor_pool] in people.toml")
        if self.agreements is not None:
            for given in acceptances:  # every one checked before any is stored
                self.agreements.check(visitor_id, given)
            for given in acceptances:
                self.agreements.accept(visitor_id, given, actor)
            missing = self.agreements.missing(visitor_id)
            if missing:
                raise VisitorError("the visitor must accept " + ", ".join(f"{m.title} (version {m.version})"
                                                                          for m in missing) + " before check-in")
        try:
            v = self.directory.check_in(visitor_id, actor=actor)
        except DirectoryError as exc:  # a race for the last badge
            raise VisitConflict(str(exc)) from exc
        self.store.add_visitor_consent(visitor_id, self.notice.version, bool(shown.photo_consent), self.clock.wall(),
                                       actor)
        self.audit(actor, "visitor.consent", self.ref(visitor_id),
                   {"notice_version": self.notice.version, "photo_consent": shown.photo_consent})
        if self.events is not None:
            # Where the visitor waits goes with the event, so a host-notice webhook can say it as the e-mail does.
            self.events.record("visitor_arrived", person=visitor_id,
                               detail={"host": v.host, "badge_last4": v.card_last4,
                                       "waiting_at": self.directory.bundle.invitations.waiting_at})
        record = self.record(visitor_id)
        if self.invitations is not None and self.invitations.notify_host(record) is not None:
            self.audit(actor, "visitor.host_notice_queued", self.ref(visitor_id), {"host": self.ref(v.host)})
        return record, warnings

    def check_out(self, visitor_id: str, actor: str, *, auto: bool = False) -> VisitRecord:
        """Revoke the badge and return it to the pool (one directory change)."""
        v = self._visitor(visitor_id)
        if v.status != "checked_in":
            raise VisitConflict(f"{v.name} is not checked in ({v.status.replace('_', ' ')})")
        try:
            self.directory.check_out(visitor_id, actor=actor, revoke_badge=True)
        except DirectoryError as exc:  # checked out by someone else meanwhile
            raise VisitConflict(str(exc)) from exc
        if auto:
            self.audit(actor, "visitor.auto_check_out", self.ref(visitor_id),
                       {"reason": "the visit ended without a check-out", "valid_until": v.valid_until})
        return self.record(visitor_id)

    def close_overdue(self) -> list[str]:
        """Check out every visitor still checked in after their visit ended; returns their ids."""
        now = self.clock.wall()
        closed = []
        for row in self.store.visitor_records():
            if row["status"] == "checked_in" and row["valid_until"] <= now:
                try:
                    self.check_out(row["id"], "system", auto=True)
                    closed.append(row["id"])
                except DirectoryError:
                    log.exception("could not close the overdue visit of %s", row["id"])
        # Consents of visitors that retention removed go with them.
        self.store.drop_orphan_consents()
        return closed

    def hold(self, visitor_id: str) -> Hold | None:
        row = self.store.visit_hold(visitor_id)
        if row is None:
            return None
        return Hold(row["state"], tuple(row["entries"]), row["stage"], row["held_at"], row["resolved_by"],
                    row["resolved_at"], row["reason"])

    def override_hold(self, visitor_id: str, reason: str, actor: str) -> VisitRecord:
        """Let a held visit be checked in, for a reason (audited with the matched entry ids); only the entries
        matched now are cleared: a later match on another entry holds the visit again."""
        return self._resolve(visitor_id, "overridden", reason, actor)

    def refuse_visit(self, visitor_id: str, reason: str, actor: str) -> VisitRecord:
        """Refuse (cancel) a held visit: it can never be checked in; audited with the reason."""
        return self._resolve(visitor_id, "refused", reason, actor)

    def cancel_visit(self, visitor_id: str, reason: str, actor: str) -> VisitRecord:
        """Cancel a visit not yet checked in (the visitor will not come, or must not): like a refusal it can never
        be checked in, held or not; audited with the reason. Its passes end too (server/passes.py), since an
        invitation may already have carried one out of the building."""
        v = self._visitor(visitor_id)
        reason = _reason(reason)
        if v.status != "registered":
            raise VisitConflict(f"{v.name} is {v.status.replace('_', ' ')}: only a visit not yet checked in can be "
                                "cancelled (check a visitor out instead)")
        hold = self.hold(visitor_id)
        if hold is not None and hold.state == "refused":
            raise VisitConflict(f"{v.name}'s visit was already {'cancelled' if hold.stage == 'cancelled' else 'refused'}")
        self.store.put_visit_hold(visitor_id, state="refused", entries=hold.entries if hold else (), stage="cancelled",
                                  at=self.clock.wall(), resolved_by=actor, reason=reason)
        self.audit(actor, "visitor.cancelled", self.ref(visitor_id), {"reason": reason})
        record = self.record(visitor_id)
        if self.passes is not None and self.passes.enabled:
            self.passes.revoke_pass(visitor_id, "cancelled", actor=actor)
        return record

    def _resolve(self, visitor_id: str, state: str, reason: str, actor: str) -> VisitRecord:
        v = self._visitor(visitor_id)
        reason = _reason(reason)
        if v.status != "registered":
            raise VisitConflict(f"{v.name} is {v.status.replace('_', ' ')}: only a visit not yet checked in is held")
        hold = self.hold(visitor_id)
        if hold is None or hold.state != "held":
            raise VisitConflict(f"{v.name}'s visit is not held by the watchlist"
                                + (f" (it was {hold.state})" if hold else ""))
        if not self.store.resolve_visit_hold(visitor_id, state, actor, reason, self.clock.wall()):
            raise VisitConflict(f"{v.name}'s hold was resolved by someone else meanwhile")
        action = "visitor.watchlist_override" if state == "overridden" else "visitor.refused"
        self.audit(actor, action, self.ref(visitor_id), {"entries": list(hold.entries), "reason": reason})
        return self.record(visitor_id)

    def watch(self, kind: str, value: str, note: str, actor: str) -> WatchEntry:
        """Add a name or company to the watchlist (blanks collapsed), audited without the text itself."""
        entry_id = self.watchlist.add(kind, " ".join(value.split()), note, actor, self.clock.wall())
        self.audit(actor, "watchlist.add", f"watchlist:{entry_id}", {"kind": kind})
        return next(e for e in self.watchlist.entries() if e.id == entry_id)

    def unwatch(self, entry_id: int, actor: str) -> bool:
        """Remove a watchlist entry; False when there is none with that id."""
        if not self.watchlist.remove(entry_id):
            return False
        self.audit(actor, "watchlist.remove", f"watchlist:{entry_id}")
        return True

    # ------------------------------------------------------------ helpers

    def _visitor(self, visitor_id: str) -> Visitor:
        try:
            return self.directory.visitor(visitor_id)
        except DirectoryError as exc:
            raise VisitorNotFound(f"no visitor {visitor_id!r} (it may have been removed by retention)") from exc

    def _hold(self, visitor_id: str, hits: list[WatchHit], stage: str, actor: str) -> None:
        self.store.put_visit_hold(visitor_id, state="held", entries=[h.id for h in hits], stage=stage,
                                  at=self.clock.wall())
        self.audit(actor, "visitor.watchlist_hold", self.ref(visitor_id),
                   {"stage": stage, "entries": [h.id for h in hits]})

    def _gate(self, visitor_id: str, name: str, company: str, actor: str) -> list[WatchHit]:
        """The watchlist, checked again right before a badge is handed over: a held or refused visit, or a
        match on an entry no admin cleared for this visit, raises :class:`VisitHeld`."""
        hold = self.hold(visitor_id)
        if hold is not None and hold.state == "refused":
            raise VisitHeld(f"{name}'s visit was refused ({hold.reason}): it cannot be checked in")
        if hold is not None and hold.state == "held":
            raise VisitHeld(f"{name}'s visit is held by a watchlist match: an admin must override it with a reason, "
                            "or refuse the visit, before check-in")
        hits = self._warn(visitor_id, name, company, "check_in", actor)
        cleared = set(hold.entries) if hold is not None else set()
        if any(h.id not in cleared for h in hits):
            self._hold(visitor_id, hits, "check_in", actor)
            raise VisitHeld(f"{name} matches the watchlist: the visit is now held; an admin must override it with "
                            "a reason, or refuse the visit, before check-in")
        return hits

    def _warn(self, visitor_id: str, name: str, company: str, stage: str, actor: str) -> list[WatchHit]:
        """Watchlist matches, audited (entry ids only: the audit log never holds names)."""
        hits = self.watchlist.check(name, company)
        if hits:
            self.audit(actor, "visitor.watchlist_match", self.ref(visitor_id),
                       {"stage": stage, "entries": [h.id for h in hits], "kinds": sorted({h.kind for h in hits})})
            log.warning("watchlist match at %s for visitor %s (entries %s)", stage, visitor_id, [h.id for h in hits])
        return hits

    def _record(self, row: dict[str, Any]) -> VisitRecord:
        site = self.directory.site
        host = site.people.get(row["host"])
        where = None
        if row["status"] == "checked_in":
            pres = self.directory.presence_of(row["id"])
            area = site.areas.get(pres.area) if pres else None
            where = area.name if area else (pres.area if pres else None)
        return VisitRecord(
            id=row["id"], name=row["name"], company=row["company"] or "", email=row["email"] or "",
            host=row["host"], host_name=host.name if host else row["host"], valid_from=row["valid_from"],
            valid_until=row["valid_until"], allowed_areas=tuple(json.loads(row["allowed_areas"] or "[]")),
            escort_required=bool(row["escort_required"]), status=row["status"],
            badge_last4=row["card_number_last4"] if row["status"] == "checked_in" else None,
            checked_in_at=row["checked_in_at"], checked_out_at=row["checked_out_at"], where=where,
            consent=self.consent(row["id"]), hold=self.hold(row["id"]))


class DoorCheckout:
    """A visitor's pass granted at a door with ``visitor_checkout = true`` checks the visit out (a ``ServerBus``
    event listener, wired in server/app.py).

    The stored access event is the source, not the server's own decision, so an exit an edge granted offline
    checks the visit out when its event arrives, however late. Only a pass does (credential format ``qr-pass``):
    a pool badge still has to be handed back at the desk to be reused, so a badge there only moves presence as
    at any door. A denied event, a re-delivery, or a visit no longer checked in (the desk, the kiosk or an
    earlier event was first) changes nothing. The check-out is the desk's (the badge revoked, the pass inactive
    from the next policy on), by actor ``door:<door id>``, audited with the event that caused it.
    """

    def __init__(self, directory: Directory, audit: Auditor | None = None) -> None:
        self.directory = directory
        self.audit_log = audit if audit is not None else directory.audit

    def on_event(self, ev: EventMsg, new: bool) -> str | None:
        """The visit checked out by this event, or None."""
        if not new or ev.type != "access" or ev.decision != "granted" or not ev.person or not ev.credential_hash:
            return None
        site = self.directory.site
        door = site.doors.get(ev.door)
        if door is None or not door.visitor_checkout:
            return None
        cred = site.credentials.get(ev.credential_hash)
        if cred is None or cred.format != PASS_FORMAT or cred.person != ev.person:
            return None
        actor = f"door:{door.id}"
        try:
            if self.directory.visitor(ev.person).status != "checked_in":
                return None
            self.directory.check_out(ev.person, actor=actor, revoke_badge=True)
        except DirectoryError:  # not a visitor, or checked out meanwhile
            return None
        record_audit(self.audit_log, actor, "visitor.door_check_out", subject_ref(self.directory.key, ev.person),
                     {"door": door.id, "event": ev.id, "decided_by": ev.decided_by})
        return ev.person


class OverdueVisits:
    """Closes visits that ended without a check-out, every ``every_s`` on its own thread (desk lifespan).

    It paces itself with ``Event.wait`` (stoppable at once) and reads the time from the desk's clock, so a
    test calls :meth:`run_once` after moving a fake clock instead of waiting.
    """

    def __init__(self, visitors: Visitors, every_s: float = OVERDUE_EVERY_S) -> None:
        self.visitors = visitors
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> list[str]:
        closed = self.visitors.close_overdue()
        if closed:
            log.info("closed %d visit(s) that ended without a check-out", len(closed))
        return closed

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-desk-visits", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("closing overdue visits failed; trying again in %.0f s", self.every_s)
            self._stop.wait(self.every_s)


def _reason(text: str) -> str:
    """An operator's reason for a hold's override, a refusal or a cancellation: blanks collapsed, 1-500
    characters (it is kept in the audit log)."""
    reason = " ".join(text.split())
    if not reason:
        raise VisitorError("give a reason (it is kept in the audit log)")
    if len(reason) > 500:
        raise VisitorError("the reason is longer than 500 characters")
    return reason
