""""Why not?" for a stored event: the refusal explained on the site as it was at that moment (issue 16).

Events do not carry the policy or site revision they were decided on, but the store keeps every site
revision with the time it was committed (server/siteadmin.py), so the revision in force at a badge is the
newest one committed at or before the badge's time. Its ``site.toml`` is loaded again (cached per
revision) and given today's people, cards and lockdowns: those are not revisioned, and the explanation
says so. With no revision at or before the badge (a store older than revisions, an event from before the
first import) the current site is used, and the explanation says that too.

The words come from :func:`doorkeep.explain.explain`, the pure explainer built on the decision rules. At a lift
it names the floor the refusal is about (``doorkeep.explain.lift_refusal_floor``); a badge that asked for a
floor first (destination dispatch, the event's ``detail.floor``) is explained for that floor alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from doorkeep.clock import parse_iso_ms
from doorkeep.config import load_site_file
from doorkeep.decision import AccessRequest, Decision, Reason
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.explain import Explanation, explain
from doorkeep.model import Site
from server.store import Store

if TYPE_CHECKING:
    from server.app import Server

log = logging.getLogger("doorkeep.server.why")

#: Parsed site revisions kept in memory (a desk looking at last week's refusals reads the same few).
CACHE_REVISIONS = 8


@dataclass(frozen=True)
class Why:
    """A stored event and, for a refused badge, why it was refused."""

    event: dict[str, Any]
    """The stored event (``Store.event`` shape)."""
    refused: bool
    """A denied access event: the only kind with something to explain."""
    explanation: Explanation | None
    basis: str
    """Which site the explanation was computed on, in words."""
    revision: int | None
    """The site revision used; None: the current site (no revision found for the badge's time)."""
    at: float | None
    """The badge's time (UTC epoch seconds, by the device's clock)."""


class WhyService:
    """Explains stored refusals; thread-safe (the cache has its own lock)."""

    def __init__(self, store: Store, live_site: Callable[[], Site], site_dir: Path | None) -> None:
        """``live_site``: the running site (people, cards and lockdowns included); ``site_dir``: where the
        site's files live (a revision's text is checked as that directory's site.toml); None: no revisions."""
        self.store = store
        self.live_site = live_site
        self.site_dir = site_dir
        self._cache: OrderedDict[int, Site] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_server(cls, server: Server) -> WhyService:
        """The service over a running server's store, live site and site directory."""
        admin = server.siteadmin
        return cls(server.store, lambda: server.site, admin.site_dir if admin is not None else None)

    def why(self, event_id: str) -> Why | None:
        """The explanation for one stored event; None when there is no such event."""
        row = self.store.event(event_id)
        if row is None:
            return None
        at = _epoch(row.get("ts"))
        refused = row.get("type") == "access" and row.get("decision") == "denied"
        try:
            reason = Reason(row.get("reason") or "")
        except ValueError:
            reason = None
        if not refused or reason is None or at is None:
            basis = "" if not refused else f"The reason {row.get('reason')!r} is not one this server knows."
            return Why(row, refused, None, basis, None, at)
        site, revision, basis = self._site_at(at)
        request = AccessRequest(door=row.get("door") or "", credential_hash=row.get("credential_hash") or "",
                                floor=_asked_floor(row))
        last4 = row.get("credential_last4")
        explanation = explain(request, Decision(reason, row.get("person")), site, None, when=at,
                              card=f"card …{last4}" if last4 else None)
        return Why(row, True, explanation, basis, revision, at)

    def _site_at(self, at: float) -> tuple[Site, int | None, str]:
        """The site in force at ``at``, its revision number, and a sentence saying which it is."""
        live = self.live_site()
        number = self.store.site_revision_number_at(at) if self.site_dir is not None else None
        if number is None:
            return live, None, ("Explained on the current site: no site revision was recorded at or before this "
                                "badge, so areas, doors, schedules and levels are as they are now.")
        latest = self.store.latest_site_revision_number()
        people = "People, cards and lockdowns are as they are now (the desk keeps no history of them)."
        if number == latest:
            return live, number, f"Explained on site revision {number}, in force then and still live. {people}"
        site = self._revision_site(number)
        if site is None:
            return live, None, (f"Explained on the current site: site revision {number}, in force then, could not "
                                "be read again (the server log says why).")
        merged = dataclasses.replace(site, people=live.people, credentials=live.credentials,
                                     lockdowns=live.lockdowns)
        return merged, number, (f"Explained on site revision {number}, in force at that moment (the live site is "
                                f"revision {latest}). {people}")

    def _revision_site(self, number: int) -> Site | None:
        with self._lock:
            if number in self._cache:
                self._cache.move_to_end(number)
                return self._cache[number]
        row = self.store.site_revision(number)
        if row is None or self.site_dir is None:
            return None
        try:
            site = load_site_file(self.site_dir / "site.toml", text=row["site_toml"])
        except (ConfigErrors, ConfigError) as exc:
            log.warning("site revision %s no longer loads for an explanation: %s", number, exc)
            return None
        with self._lock:
            self._cache[number] = site
            while len(self._cache) > CACHE_REVISIONS:
                self._cache.popitem(last=False)
        return site


def _asked_floor(row: dict[str, Any]) -> str | None:
    """At a lift in destination dispatch, the floor asked for before the badge (the event's ``detail.floor``):
    only that floor was decided, so only it is explained."""
    raw = row.get("detail")
    try:
        detail = json.loads(raw) if isinstance(raw, str) and raw else raw
    except ValueError:
        return None
    floor = detail.get("floor") if isinstance(detail, dict) else None
    return floor if isinstance(floor, str) and floor else None


def _epoch(ts: Any) -> float | None:
    try:
        return parse_iso_ms(ts) if isinstance(ts, str) else None
    except ValueError:
        return None
