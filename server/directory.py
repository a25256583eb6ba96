"""The server's live site: the live site revision plus what the store holds.

Areas, doors and schedules come from the live site revision (server/siteadmin.py); people, their cards and
the visitor badge pool from the store's tables (server/people.py: the first start imports people.toml);
visitors, card states (lost, revoked), lockdowns and presence change while the server runs. They are folded
into a new immutable ``Site`` on every change, so ``decide()`` always reads one consistent snapshot and the
policy publisher republishes it to every edge at once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from doorkeep.clock import Clock, parse_iso_ms
from doorkeep.config import SiteBundle
from doorkeep.credentials import card_hash
from doorkeep.decision import AccessRequest, Decision, DecisionState, Presence, commit, decide
from doorkeep.model import Credential, CredentialState, Person, PersonKind, PersonState, Site
from server.audit import Auditor, record_audit, subject_ref
from server.errors import ServerError
from server.passes import pass_credentials
from server.store_passes import TABLE as PASSES_TABLE
from server.people import load_rows, seed
from server.store import Store

if TYPE_CHECKING:
    from server.shared_decisions import SharedDecisions

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
    def __init__(self, bundle: SiteBundle, key: bytes, store: Store, clock: Clock, audit: Auditor | None = None) -> None:
        """``bundle``: the live site; its people.toml is imported into a store that never held people (the first
        start, server/people.py ``seed``), and never read again: people come from the store."""
        self.bundle = bundle
        #: Where security-relevant changes are recorded (server/audit.py); None records nothing.
        self.audit = audit
        self.key = key
        self.store = store
        self.clock = clock
        self.listeners: list[SiteListener] = []
        #: Several server workers (server/workers.py): this thread's access to the rules' state in PostgreSQL.
        #: Then decisions, moves and lockdowns go through it, and who is where is read from the store, where every
        #: worker's decisions write it; None (one server): the in-memory ``state`` below.
        self.shared: Callable[[], SharedDecisions] | None = None
        #: How presence writes are run: at once by default; the server hands them to its store thread.
        self.defer: Callable[[Callable[[], object]], None] = lambda fn: fn()
        #: The one writer: every change (store write, site rebuild, swap) runs holding it, one at a time. The
        #: site listeners (policy signing, seconds at 100,000 people) run after the outermost holder let go.
        self._lock = _ChangeLock(self._notify)
        #: Held by a decision and by the swap of a rebuilt site or of a decision-state flag only: microseconds.
        #: A change builds its new site outside it, so a decision never waits behind a rebuild.
        self._decide = threading.Lock()
        self._pending = False
        self._notify_lock = threading.Lock()
        self._base = bundle.site
        # The store's people, cards (state active: card states are applied in _build) and visitor badges
        # (hash -> format, last four); people_version is the store's people counter they reflect.
        seed(store, bundle, key, clock.wall(), audit)
        #: Serialises reading all people from the store with the row changes the people service hands in.
        self._people_lock = threading.Lock()
        self.people_version, self._people, self._cards, self._pool = self._read_people()
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

    def _audit(self, actor: str, action: str, target: str | None, details: dict[str, Any] | None = None) -> None:
        """Record an operation that already happened; a failing audit is logged loudly, never undoes it."""
        record_audit(self.audit, actor, action, target, details)

    def forget(self, person_ids: list[str]) -> None:
        """Drop people whose records retention or erasure removed from the store (presence held in memory)."""
        with self._lock:
            with self._decide:
                for pid in person_ids:
                    self.state.presence.pop(pid, None)
            gone = set(person_ids)  # their visitor passes (server/passes.py) go with them
            for row in self.store.rows(PASSES_TABLE):
                if row["visit"] in gone:
                    self.store.delete(PASSES_TABLE, row["id"])
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
        """The live site + the store's people and cards + visitors + card states; under the lock on every change."""
        people = dict(self._people)
        creds = dict(self._cards)
        visitors = self._visitors()
        # Visitor passes (server/passes.py) are the visitors' credentials too, decided like their badges.
        creds.update(pass_credentials(self.store.rows(PASSES_TABLE), {v.id: v for v in visitors}))
        for v in visitors:
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

    def changing(self) -> _ChangeLock:
        """The writer lock, for a service that checks the directory and writes the store as one change
        (server/passes.py: no check-out slips between its check and its write). Call :meth:`refresh` after
        letting go, never under it: refresh may read people again, which takes the people lock first."""
        return self._lock

    def refresh(self, *, action: str | None = None, actor: str = "system", target: str | None = None,
                details: dict[str, Any] | None = None) -> Site:
        """Rebuild the site after a change written to the store by someone else (people read again when the
        store's people counter moved), republish the policies, and audit ``action`` if given; the new site."""
        if self.store.people_version() != self.people_version:
            self.reload_people()
        with self._lock:
            self._changed()
            if action is not None:
                self._audit(actor, action, target, details)
            return self.site

    def replace_site(self, bundle: SiteBundle) -> Site:
        """Swap in a new site model (a committed site revision, server/siteadmin.py): areas, doors, schedules,
        access levels and rules; people (the store's), visitors, card states, presence and lockdowns carry over."""
        with self._lock:
            self.bundle = bundle
            self._base = bundle.site
            self._changed()
            return self.site

    # ------------------------------------------------------------- people

    def _read_people(self) -> tuple[int, dict[str, Person], dict[str, Credential], dict[str, tuple[str, str]]]:
        """The store's people counter, then its people, cards (state active) and visitor badges."""
        version = self.store.people_version()  # first: rows read after it are at least this new
        rows = load_rows(self.store, with_states=False)
        return version, rows.people, rows.cards, rows.pool

    def reload_people(self) -> Site:
        """Read every person, card and visitor badge from the store again (an import, another process's change)
        and swap them in; the rows are read outside the decision lock, so decisions go on meanwhile."""
        with self._people_lock:
            version, people, cards, pool = self._read_people()
            with self._lock:
                self.people_version, self._people, self._cards, self._pool = version, people, cards, pool
                self._changed()
                return self.site

    def update_people(self, people: Mapping[str, Person | None], cards: Mapping[str, Credential | None], *,
                      version: int) -> Site:
        """Swap in people and cards the people service just wrote (None: removed), as one cheap change;
        ``version`` is the store's people counter after that write. When another writer's change came in
        between (the counter skipped one), the counter is left behind so the next poll reads everything again."""
        with self._people_lock, self._lock:
            for pid, person in people.items():
                if person is None:
                    self._people.pop(pid, None)
                else:
                    self._people[pid] = person
            for h, cred in cards.items():
                if cred is None:
                    self._cards.pop(h, None)
                else:
                    self._cards[h] = cred
            if version == self.people_version + 1:
                self.people_version = version
            self._changed()
            return self.site

    def pool_badge(self, credential_hash: str) -> tuple[str, str] | None:
        """``(format, last four)`` of a visitor badge of the pool, None for any other card."""
        return self._pool.get(credential_hash)

    def _changed(self) -> None:
        """Rebuild the site (under the writer lock, outside the decision lock) and swap it in; the listeners
        hear of it once the writer lock is released."""
        site = self._build()
        with self._decide:
            self.site = site
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
        if self.shared is not None:
            return self.shared().decide(request, self.clock.wall()).decision
        with self._decide:
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

    def record_passage(self, person: str, door: str, ts: str, companions: tuple[str, ...] = (), *,
                       area: str | None = None) -> None:
        """A grant the edge made on its own: move the person and everyone who passed with them (``companions``:
        an escorted visitor, the first of two) as a server grant would have. Each moves unless the server has
        seen a later passage of theirs already; people the site does not know are skipped. ``area``: where to
        (a lift's floor, which must be one it serves); by default the door's ``to_area``."""
        d = self.site.doors.get(door)
        if d is None or person not in self.site.people:
            return
        if area is not None and area not in d.entered:
            return
        to_area = area if area is not None else d.to_area
        try:
            since = parse_iso_ms(ts)
        except ValueError:
            since = self.clock.wall()
        if self.shared is not None:  # several workers: under the shared state's person and area locks
            self.shared().move(dict.fromkeys((person, *companions)), to_area, since)
            return
        moved = []
        with self._decide:
            for pid in dict.fromkeys((person, *companions)):
                if pid not in self.site.people:
                    continue
                current = self.state.presence.get(pid)
                if current is not None and current.since > since:
                    continue  # the server has seen a later passage already
                self.state.presence[pid] = Presence(to_area, since)
                moved.append(pid)
        for pid in moved:
            self.store.set_presence(pid, to_area, since)

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
            fmt, shown = self._pool[h]
            self.store.save_visitor(visitor_id, status="checked_in", card_hash=h, card_format=fmt,
                                    card_number_last4=shown, checked_in_at=self.clock.wall())
            # A pool badge may carry a stale 'revoked' from its previous holder.
            self.store.clear_card_state(h)
            self._changed()
            self._audit(actor, "visitor.check_in", subject_ref(self.key, visitor_id), {"badge_last4": shown})
            return self.visitor(visitor_id)

    def check_out(self, visitor_id: str, *, actor: str = "system", revoke_badge: bool = False) -> Visitor:
        """Return the badge to the pool: from now on it opens nothing until the next check-in.

        ``revoke_badge``: mark the badge revoked first (audited ``card.revoked``), in the same change, as the
        desk does (server/visitors.py): a badge not handed back is refused at every door."""
        with self._lock:
            v = self.visitor(visitor_id)
            if v.status != "checked_in":
                raise DirectoryError(f"visitor {visitor_id!r} is not checked in")
            if revoke_badge and v.card_hash and v.card_hash in self.site.credentials:
                self.set_card_state(v.card_hash, CredentialState.REVOKED, actor=actor)
            self.store.save_visitor(visitor_id, status="checked_out", checked_out_at=self.clock.wall())
            with self._decide:
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
            self.store.set_lockdown(scope, active, self.clock.wall())  # several workers read it in each decision
            with self._decide:  # in force for the next decision, before the site is rebuilt
                if area is None:
                    self.state.lockdown_site = active
                elif active:
                    self.state.lockdown_areas.add(area)
                else:
                    self.state.lockdown_areas.discard(area)
            self._changed()
            self._audit(actor, "lockdown.set" if active else "lockdown.clear", scope)

    def presence(self) -> dict[str, Presence]:
        """Who is where now: the in-memory state of one server, or the store's (every worker's decisions)."""
        if self.shared is not None:
            return {r["person"]: Presence(r["area"], r["since"]) for r in self.store.all_presence()}
        with self._decide:
            return dict(self.state.presence)

    def presence_of(self, person: str) -> Presence | None:
        """Where one person is now (as :meth:`presence`)."""
        if self.shared is not None:
            row = self.store.presence_of(person)
            return Presence(row["area"], row["since"]) if row is not None else None
        with self._decide:
            return self.state.presence.get(person)

    def muster(self) -> list[dict[str, Any]]:
        """Who is where now, as the doors saw it; visitors with their hosts."""
        site = self.site
        rows = []
        for person, pres in sorted(self.presence().items(), key=lambda kv: (kv[1].area, kv[0])):
            p = site.people.get(person)
            host = site.people.get(p.host) if p is not None and p.host else None
            rows.append({
                "area": pres.area, "area_name": site.areas[pres.area].name if pres.area in site.areas else pres.area,
                "person": person, "name": p.name if p else person, "kind": p.kind.value if p else "unknown",
                "host": host.name if host else None, "since": pres.since,
            })
        return rows
