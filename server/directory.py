"""The server's live site: the site files plus what changes at runtime.

People, areas, doors and schedules come from the site directory; visitors,
card states (lost, revoked), lockdowns and presence change while the server
runs. They are persisted in the store and folded into a new immutable
``Site`` on every change, so ``decide()`` always reads one consistent
snapshot and the policy publisher republishes it to every edge at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from doorkeep.clock import Clock, parse_iso_ms
from doorkeep.config import SiteBundle, with_people
from doorkeep.credentials import card_hash, last4, normalise
from doorkeep.decision import AccessRequest, Decision, DecisionState, Presence, commit, decide
from doorkeep.model import Credential, CredentialState, Person, PersonKind, PersonState, Site
from server.audit import Auditor, subject_ref
from server.errors import ServerError
from server.store import Store

log = logging.getLogger("doorkeep.server.directory")

SiteListener = Callable[[Site], None]


class DirectoryError(ServerError, ValueError):
    """An operation that the site's current state does not allow (unknown person, no free badge, …)."""


@dataclass(frozen=True)
class Visitor:
    id: str
    name: str
    host: str
    valid_from: float
    valid_until: float
    allowed_areas: tuple[str, ...]
    company: str = ""
    email: str = ""
    escort_required: bool = True
    status: str = "registered"  # registered | checked_in | checked_out
    card_hash: str | None = None
    card_last4: str | None = None


class _ChangeLock:
    """A re-entrant lock that calls ``on_release`` each time its outermost holder releases it (outside it)."""

    def __init__(self, on_release: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._depth = threading.local()
        self._on_release = on_release

    def __enter__(self) -> _ChangeLock:
        self._lock.acquire()
        self._depth.n = getattr(self._depth, "n", 0) + 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth.n -= 1
        outermost = self._depth.n == 0
        self._lock.release()
        if outermost:
            self._on_release()


class Directory:
    def __init__(self, bundle: SiteBundle, key: bytes, store: Store, clock: Clock,
                 visitor_pool: list[tuple[str, str]] | None = None, audit: Auditor | None = None) -> None:
        self.bundle = bundle
        #: Where security-relevant changes are recorded (server/audit.py); None records nothing.
        self.audit = audit
        self.key = key
        self.store = store
        self.clock = clock
        self.listeners: list[SiteListener] = []
        #: How presence writes are run: at once by default; the server hands them to its store thread.
        self.defer: Callable[[Callable[[], object]], None] = lambda fn: fn()
        #: Held for the decision and the site rebuild only; the site listeners (policy signing, seconds at
        #: 100,000 people) run after the outermost holder let go, so a decision never waits behind them.
        self._lock = _ChangeLock(self._notify)
        self._pending = False
        self._notify_lock = threading.Lock()
        people, cards = self._not_erased(bundle)
        self._base = with_people(bundle.site, people, cards, key)
        pool = visitor_pool if visitor_pool is not None else [(c.format, c.number) for c in bundle.visitor_pool]
        self._pool = {card_hash(key, fmt, num): (fmt, normalise(fmt, num)) for fmt, num in pool}
        self.state = DecisionState()
        for row in store.all_presence():
            self.state.presence[row["person"]] = Presence(row["area"], row["since"])
        for row in store.lockdowns():
            if row["active"]:
                if row["scope"] == "site":
                    self.state.lockdown_site = True
                else:
                    self.state.lockdown_areas.add(row["scope"])
        self.site = self._build()

    # ------------------------------------------------------------- building

    def _not_erased(self, bundle: SiteBundle) -> tuple[dict[str, Person], list[Any]]:
        """people.toml minus the people erased with ``doorkeep subject erase`` (and their cards)."""
        erased = self.store.erased_refs()
        gone = {pid for pid in bundle.people if subject_ref(self.key, pid) in erased}
        for pid in sorted(gone):
            log.warning("person %r in people.toml was erased (doorkeep subject erase) and is skipped; "
                        "remove them from people.toml", pid)
        return ({pid: p for pid, p in bundle.people.items() if pid not in gone},
                [c for c in bundle.cards if c.person not in gone])

    def _audit(self, actor: str, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
        """Record an operation that already happened; a failing audit is logged loudly, never undoes it."""
        if self.audit is None:
            return
        try:
            self.audit.record(actor, action, target, details)
        except Exception:
            log.exception("AUDIT FAILED for %s on %s", action, target)

    def forget(self, person_ids: list[str]) -> None:
        """Drop people whose records retention or erasure removed from the store (presence held in memory)."""
        with self._lock:
            for pid in person_ids:
                self.state.presence.pop(pid, None)
            self._changed()

    def _visitors(self) -> list[Visitor]:
        out = []
        for r in self.store.visitor_records():
            out.append(Visitor(
                id=r["id"], name=r["name"], host=r["host"], valid_from=r["valid_from"], valid_until=r["valid_until"],
                allowed_areas=tuple(json.loads(r["allowed_areas"] or "[]")), company=r["company"] or "",
                email=r["email"] or "", escort_required=bool(r["escort_required"]), status=r["status"],
                card_hash=r["card_hash"], card_last4=r["card_number_last4"],
            ))
        return out

    def _build(self) -> Site:
        """The base site + visitors + card state overrides; called under the lock on every change."""
        people = dict(self._base.people)
        creds = dict(self._base.credentials)
        self._merge_desk_people(people, creds)
        for v in self._visitors():
            people[v.id] = Person(
                id=v.id, name=v.name, kind=PersonKind.VISITOR, state=PersonState.ACTIVE,
                valid_from=v.valid_from, valid_until=v.valid_until, host=v.host, company=v.company or None,
                allowed_areas=v.allowed_areas, escort_required=v.escort_required,
            )
            if v.status == "checked_in" and v.card_hash:
                fmt = self._pool.get(v.card_hash, ("em4100", ""))[0]
                creds[v.card_hash] = Credential(v.card_hash, v.card_last4 or "", fmt, v.id, CredentialState.ACTIVE)
        for row in self.store.card_states():
            c = creds.get(row["hash"])
            if c is not None:
                creds[row["hash"]] = dataclasses.replace(c, state=CredentialState(row["state"]))
        lockdowns = frozenset((["site"] if self.state.lockdown_site else []) + sorted(self.state.lockdown_areas))
        return dataclasses.replace(self._base, people=people, credentials=creds, lockdowns=lockdowns)

    def _merge_desk_people(self, people: dict[str, Person], creds: dict[str, Credential]) -> None:
        """Fold in the security desk's people changes (migration 008, server/web/people.py): people.toml is
        the seed, a desk row overrides it field by field (NULL: keep the people.toml value), a desk-added
        person exists only in the store; desk-added cards join their person's cards."""
        for row in self.store.desk_people():
            pid = row["id"]
            seed = people.get(pid)
            if seed is None and not row["added"]:
                continue  # an override of someone people.toml no longer lists (or erased): nothing to override
            base = seed or Person(id=pid, name=row["name"] or pid)
            changes: dict[str, Any] = {}
            if row["name"]:
                changes["name"] = row["name"]
            if row["kind"]:
                changes["kind"] = PersonKind(row["kind"])
            if row["clearance"] is not None:
                changes["clearance"] = int(row["clearance"])
            if row["access_levels"] is not None:
                changes["access_levels"] = tuple(json.loads(row["access_levels"]))
            if row["state"]:
                changes["state"] = PersonState(row["state"])
            people[pid] = dataclasses.replace(base, **changes)
        for row in self.store.desk_cards():
            if row["person"] not in people:
                continue
            if row["hash"] in creds and creds[row["hash"]].person != row["person"]:
                log.warning("a desk-added card of %s is also in people.toml for someone else; people.toml wins",
                            subject_ref(self.key, row["person"]))
                continue
            creds[row["hash"]] = Credential(row["hash"], row["last4"], row["format"], row["person"])

    def refresh(self, *, action: str | None = None, actor: str = "system", target: str | None = None,
                details: dict[str, Any] | None = None) -> Site:
        """Rebuild the site after a change written to the store by someone else (the desk's people
        admin), republish the policies, and audit ``action`` if given; returns the new site."""
        with self._lock:
            self._changed()
            if action is not None:
                self._audit(actor, action, target, details)
            return self.site

    def replace_site(self, bundle: SiteBundle) -> Site:
        """Swap in a new site model (a committed site revision, server/siteadmin.py): areas, doors, schedules,
        access levels and rules; people, visitors, card states, presence and lockdowns carry over."""
        people, cards = self._not_erased(bundle)
        base = with_people(bundle.site, people, cards, self.key)  # built outside the lock: decisions go on
        with self._lock:
            self.bundle = bundle
            self._base = base
            self._changed()
            return self.site

    def _changed(self) -> None:
        """Rebuild the site (under the lock); the listeners hear of it once the lock is released."""
        self.site = self._build()
        self._pending = True

    def _notify(self) -> None:
        """Tell the listeners the newest site, outside the decision lock, one notification at a time.

        A later notifier always reads the newest site, so two changes racing each other can only publish the
        newest one last; publishing an unchanged site again costs nothing (the publisher skips it).
        """
        if not self._pending:
            return
        with self._notify_lock:
            if not self._pending:
                return
            self._pending = False
            site = self.site
            for listener in list(self.listeners):
                try:
                    listener(site)
                except Exception:
                    log.exception("site listener failed")

    # ------------------------------------------------------------ decisions

    def decide(self, request: AccessRequest) -> Decision:
        """Decide and apply the decision's effects (presence, pending partners, PIN counts) atomically.

        Only the people a grant names can move, so only they are looked at; their new presence is
        written by ``self.defer`` (the store's worker thread on a running server), never on the caller's
        thread, because an answer must not wait for the disk.
        """
        with self._lock:
            now = self.clock.wall()
            decision = decide(request, self.site, self.state, now)
            people = [p for p in (decision.person, *decision.companions) if p] if decision.granted else []
            before = {p: self.state.presence.get(p) for p in people}
            commit(request, decision, self.site, self.state, now)
            rows = [{"person": p, "area": pres.area, "since": pres.since}
                    for p in people if (pres := self.state.presence.get(p)) is not None and pres != before[p]]
        if rows:
            self.defer(lambda: [self.store.set_presence(row["person"], row["area"], row["since"]) for row in rows])
        return decision

    def record_passage(self, person: str, door: str, ts: str) -> None:
        """A grant the edge made on its own: move the person as a server grant would have."""
        d = self.site.doors.get(door)
        if d is None or person not in self.site.people:
            return
        try:
            since = parse_iso_ms(ts)
        except ValueError:
            since = self.clock.wall()
        with self._lock:
            current = self.state.presence.get(person)
            if current is not None and current.since > since:
                return  # the server has seen a later passage already
            self.state.presence[person] = Presence(d.to_area, since)
        self.store.set_presence(person, d.to_area, since)

    # ----------------------------------------------------------- operations

    def set_card_state(self, credential_hash: str, state: CredentialState, *, actor: str = "system") -> Credential:
        with self._lock:
            cred = self.site.credentials.get(credential_hash)
            if cred is None:
                raise DirectoryError("no such credential")
            self.store.set_card_state(credential_hash, state.value, self.clock.wall())
            self._changed()
            self._audit(actor, f"card.{state.value}", subject_ref(self.key, cred.person),
                        {"from": cred.state.value, "to": state.value, "format": cred.format,
                         "card": cred.hash[:12]})  # a pseudonymous card id: no digits of the number
            return self.site.credentials[credential_hash]

    def card(self, fmt: str, number: str) -> str:
        """The hash under which a card is known (for operators who hold the card in their hand)."""
        return card_hash(self.key, fmt, number)

    def register_visitor(self, visitor: Visitor, *, actor: str = "system") -> Visitor:
        with self._lock:
            site = self.site
            if visitor.id in site.people:
                raise DirectoryError(f"person {visitor.id!r} already exists")
            host = site.people.get(visitor.host)
            if host is None or host.kind is PersonKind.VISITOR:
                raise DirectoryError(f"host {visitor.host!r} is not an employee or contractor of this site")
            unknown = [a for a in visitor.allowed_areas if a not in site.areas]
            if unknown:
                raise DirectoryError(f"unknown areas {unknown}")
            if visitor.valid_until <= visitor.valid_from:
                raise DirectoryError("the visit must end after it starts")
            self.store.save_visitor(
                visitor.id, name=visitor.name, company=visitor.company, email=visitor.email, host=visitor.host,
                valid_from=visitor.valid_from, valid_until=visitor.valid_until,
                allowed_areas=json.dumps(list(visitor.allowed_areas)), escort_required=int(visitor.escort_required),
                status="registered", card_hash=None, card_format=None, card_number_last4=None,
                registered_at=self.clock.wall(), checked_in_at=None, checked_out_at=None)
            self._changed()
            self._audit(actor, "visitor.register", subject_ref(self.key, visitor.id),
                        {"host": subject_ref(self.key, visitor.host), "areas": list(visitor.allowed_areas),
                         "escort_required": visitor.escort_required})
            return self.visitor(visitor.id)

    def visitor(self, visitor_id: str) -> Visitor:
        for v in self._visitors():
            if v.id == visitor_id:
                return v
        raise DirectoryError(f"no visitor {visitor_id!r}")

    def free_badges(self) -> list[str]:
        used = {v.card_hash for v in self._visitors() if v.status == "checked_in"}
        return [h for h in self._pool if h not in used]

    def check_in(self, visitor_id: str, card: tuple[str, str] | None = None, *, actor: str = "system") -> Visitor:
        """Activate a badge from the visitor pool (the given card, or the first free one)."""
        with self._lock:
            v = self.visitor(visitor_id)
            if v.status == "checked_in":
                raise DirectoryError(f"visitor {visitor_id!r} is already checked in")
            if v.status == "checked_out":
                raise DirectoryError(f"visitor {visitor_id!r} has already left; register a new visit")
            free = self.free_badges()
            if card is not None:
                h = card_hash(self.key, *card)
                if h not in self._pool:
                    raise DirectoryError("that card is not in the visitor badge pool")
                if h not in free:
                    raise DirectoryError("that badge is in use")
            elif free:
                h = free[0]
            else:
                raise DirectoryError("no free visitor badge in the pool")
            fmt, number = self._pool[h]
            self.store.save_visitor(visitor_id, status="checked_in", card_hash=h, card_format=fmt,
                                    card_number_last4=last4(number), checked_in_at=self.clock.wall())
            # A pool badge may carry a stale 'revoked' from its previous holder.
            self.store.clear_card_state(h)
            self._changed()
            self._audit(actor, "visitor.check_in", subject_ref(self.key, visitor_id), {"badge_last4": last4(number)})
            return self.visitor(visitor_id)

    def check_out(self, visitor_id: str, *, actor: str = "system") -> Visitor:
        """Return the badge to the pool: from now on it opens nothing until the next check-in."""
        with self._lock:
            v = self.visitor(visitor_id)
            if v.status != "checked_in":
                raise DirectoryError(f"visitor {visitor_id!r} is not checked in")
            self.store.save_visitor(visitor_id, status="checked_out", checked_out_at=self.clock.wall())
            self.state.presence.pop(visitor_id, None)
            self.store.forget_presence(visitor_id)
            self._changed()
            self._audit(actor, "visitor.check_out", subject_ref(self.key, visitor_id))
            return self.visitor(visitor_id)

    def lockdown(self, area: str | None, active: bool, *, actor: str = "system") -> None:
        """Lock down the whole site (area None) or one area; responders still pass."""
        with self._lock:
            if area is not None and area not in self.site.areas:
                raise DirectoryError(f"no area {area!r}")
            scope = area or "site"
            self.store.set_lockdown(scope, active, self.clock.wall())
            if area is None:
                self.state.lockdown_site = active
            elif active:
                self.state.lockdown_areas.add(area)
            else:
                self.state.lockdown_areas.discard(area)
            self._changed()
            self._audit(actor, "lockdown.set" if active else "lockdown.clear", scope)

    def muster(self) -> list[dict[str, Any]]:
        """Who is where now, as the doors saw it; visitors with their hosts."""
        site = self.site
        rows = []
        for person, pres in sorted(self.state.presence.items(), key=lambda kv: (kv[1].area, kv[0])):
            p = site.people.get(person)
            host = site.people.get(p.host) if p is not None and p.host else None
            rows.append({
                "area": pres.area, "area_name": site.areas[pres.area].name if pres.area in site.areas else pres.area,
                "person": person, "name": p.name if p else person, "kind": p.kind.value if p else "unknown",
                "host": host.name if host else None, "since": pres.since,
            })
        return rows
