"""The impact preview for a running server: a proposed site change judged against the badges recorded.

Before an operator saves a change (the desk's forms, ``POST /api/v1/site/preview``), :func:`preview_change`
applies the same structured edits :meth:`SiteAdmin.change` would, by the same rule
(:meth:`SiteAdmin.propose`: a stale base touching what changed since is a :class:`SiteConflict`, a broken
rule of ``doorkeep config check`` a :class:`SiteInvalid`), and replays the last ``days`` of recorded
badges through ``decide()`` with the live site and with the proposed one (:mod:`server.replay`, the
proposed side on a second core). Nothing is committed: no revision, no audit record, no policy.

Both sites share the running server's people, cards, visitors and card states; only the site model
(areas, doors, schedules, access levels, rules) differs, exactly as :meth:`Directory.replace_site` would
swap it in, so every flip the report shows comes from the edit. Lockdowns in force now are left out: the
replay applies the recorded ``lockdown`` events at their time instead (docs/desk.md, impact preview).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping

from doorkeep.model import Site
from doorkeep.replay import Impact, ReplayReport, summary
from server.replay import DEFAULT_DAYS, preview
from server.siteadmin import SiteAdminError

if TYPE_CHECKING:
    from server.app import Server

log = logging.getLogger("doorkeep.server.site_preview")

#: The periods a preview may replay, in days (a year and a leap day at most: events are kept no longer).
MIN_DAYS, MAX_DAYS = 1, 366


class PreviewRefused(SiteAdminError, ValueError):
    """The preview's own parameters are wrong (the period); the message says what to send."""


@dataclass(frozen=True)
class Preview:
    """What a proposed change would have done to the last ``days`` of recorded badges; nothing was committed."""

    base: int
    """The revision the edits were made against, as sent."""
    revision: int
    """The live revision they were applied to (``base``, or the newest when re-based onto it)."""
    days: int
    since: float
    """UTC epoch: the start of the replayed period (now minus ``days``)."""
    timezone: str
    """The site's time zone, for showing the examples' times."""
    changes: tuple[str, ...]
    """Each change in words, as the revision would record them (``~ doors.lab.unlock_s: 4 -> 7``)."""
    report: ReplayReport
    names: Mapping[str, str]
    """Display names of the people the report names (affected people, examples), by person id."""
    door_names: Mapping[str, str]
    """Display names of the doors, by door id."""

    @property
    def summary(self) -> str:
        """One line, like ``git diff --stat`` for access."""
        return summary(self.report)

    def person(self, pid: str | None) -> str:
        """``Alice Archer (alice)``; a card nobody holds is said so."""
        if not pid:
            return "(card held by nobody)"
        return f"{self.names[pid]} ({pid})" if pid in self.names else pid

    def door(self, door_id: str) -> str:
        return self.door_names.get(door_id, door_id)

    def affected(self, top: int = 20) -> list[tuple[str, Impact]]:
        """The people whose decisions flip, most flips first (person id ``""``: cards nobody holds)."""
        ranked = sorted(self.report.people.items(), key=lambda kv: (-(kv[1].to_refused + kv[1].to_granted), kv[0]))
        return ranked[:top]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: the API's answer. The report's keys as ``doorkeep site diff --json`` has them."""
        return {"base": self.base, "revision": self.revision, "days": self.days, "since": self.since,
                "timezone": self.timezone, "changes": list(self.changes), "summary": self.summary,
                "names": dict(sorted(self.names.items())), **self.report.to_dict()}


def preview_change(server: Server, edits: dict[str, Any], *, base: int, days: int = DEFAULT_DAYS) -> Preview:
    """Judge ``edits`` (dotted site.toml key -> value, as :meth:`SiteAdmin.change` takes them) made against
    revision ``base`` on the badges recorded in the last ``days`` days; commits nothing.

    Raises :class:`SiteConflict` and :class:`SiteInvalid` exactly where ``change`` would, and
    :class:`PreviewRefused` for a period outside 1..366 days.
    """
    if isinstance(days, bool) or not isinstance(days, int) or not MIN_DAYS <= days <= MAX_DAYS:
        raise PreviewRefused(f"days must be a whole number of days from {MIN_DAYS} to {MAX_DAYS}, got {days!r} "
                             f"(fix: send days={DEFAULT_DAYS} for the last month)")
    admin = server.siteadmin
    if admin is None:
        raise SiteAdminError("this server keeps no site revisions")
    proposal = admin.propose(edits, base=base)
    live = server.site  # one snapshot: both sides are built from it
    current = dataclasses.replace(live, lockdowns=frozenset())
    proposed = proposed_site(live, proposal.bundle.site)
    pool = frozenset(row["hash"] for row in server.store.pool_rows())  # visitor badges: not judged
    clock = server.directory.clock
    now = clock.wall()
    since = now - days * 86400.0
    started = clock.monotonic()
    report = preview(server.store, current, proposed, since=since, until=now, visitor_cards=pool)
    log.info("impact preview of %d edit(s) on revision %d: %d recorded decisions of %d days replayed in %.1f s; %s",
             len(edits), proposal.revision.number, report.attempts, days, clock.monotonic() - started, summary(report))
    return Preview(base=base, revision=proposal.revision.number, days=days, since=since, timezone=live.timezone,
                   changes=tuple(proposal.changes()), report=report, names=_names(report, current, proposed),
                   door_names=MappingProxyType({d.id: d.name for s in (current, proposed) for d in s.doors.values()}))


def proposed_site(live: Site, model: Site) -> Site:
    """The running site's people, cards, visitors and card states under ``model``'s areas, doors, schedules,
    access levels and rules, without lockdowns: what :meth:`Directory.replace_site` would make live."""
    return dataclasses.replace(model, people=live.people, credentials=live.credentials, lockdowns=frozenset())


def _names(report: ReplayReport, *sites: Site) -> Mapping[str, str]:
    """Names of the people the report mentions only (a site may have 100,000 people)."""
    mentioned = set(report.people)
    for groups in (report.to_refused, report.to_granted, report.honesty.disagreements):
        mentioned.update(e.person for g in groups.values() for e in g.examples if e.person)
    mentioned.update(e.person for n in report.not_judged.values() for e in n.examples if e.person)
    names: dict[str, str] = {}
    for pid in sorted(mentioned):
        for site in sites:
            person = site.people.get(pid)
            if person is not None:
                names[pid] = person.name
                break
    return MappingProxyType(names)
