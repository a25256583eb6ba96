"""People and credentials: the server's store holds every person, card and visitor badge (issue 13).

``people.toml`` is an import/export format, like ``site.toml`` (docs/administration.md, "People and cards"):

- **First start** (a store that never held people): the site directory's people.toml is imported, as one
  audited change (:func:`seed`). A store that already has the desk's rows of migration 008 (``desk_people``
  overriding people.toml field by field, ``desk_cards``) folds people.toml and those overrides into the
  store's tables in that same step, so nothing anyone sees changes, and drops the old tables.
- **Later starts** never read people.toml for decisions; a file that differs from the store is reported
  with one WARNING (:meth:`PeopleService.check_file`).
- ``doorkeep site import DIR`` applies ``DIR/people.toml`` as the full list of people
  (:meth:`PeopleService.load_file`, :meth:`PeopleService.apply_file`): checked with the rules and messages
  of ``doorkeep config check``, the changes computed (people by id, cards by keyed hash), applied in one
  transaction, audited with pseudonyms, live at once. People erased with ``doorkeep subject erase`` stay
  erased: an import skips them. ``doorkeep site export DIR`` writes the store back out (:func:`render`), cards
  and PINs as keyed hashes, so an export followed by an import changes nothing.
- The security desk's changes (add people and cards, suspend, access levels, lost cards, a CSV import) are
  cheap row changes here (:class:`PeopleService`); the web module only translates HTTP.

A card number or PIN never reaches the store: only the keyed hash (doorkeep/credentials.py), the last four
characters of a card and the PIN's hash. Every change moves the store's ``people.changes`` counter, which a
running server polls (:meth:`PeopleService.poll`) to pick up a change another process made.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import hmac
import io
import json
import logging
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from doorkeep.clock import Clock
from doorkeep.card_formats import WIEGAND_CREDENTIALS, number_problem
from doorkeep.config import CARD_FORMATS, CardSeed, SiteBundle, load_people_file
from doorkeep.credentials import card_hash, last4, normalise, pin_hash
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.model import Credential, CredentialState, Person, PersonKind, PersonState, Site
from server.audit import Auditor, record_audit, subject_ref
from server.errors import ServerError
from server.store import Store

if TYPE_CHECKING:
    from server.directory import Directory

log = logging.getLogger("doorkeep.server.people")

#: A new person's id at the desk: an identifier (it may become an MQTT topic segment) in lower case.
NEW_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
KINDS = ("employee", "contractor")
MAX_CLEARANCE = 9
MAX_IMPORT_ROWS = 2000
CSV_COLUMNS = ("id", "name", "kind", "clearance", "access_levels", "cards")
#: An e-mail address a host notice can go to (the same rule as a visitor's: server/visitors.py).
EMAIL = re.compile(r"^[^@\s<>]{1,64}@[^@\s<>]+\.[^@\s<>]{2,}$")
#: The audit action of a people.toml import (the first start's, and ``doorkeep site import``'s).
FILE_IMPORT = "people.file_import"
#: How many pseudonyms an import's audit record lists per kind of change (the counts are always whole).
AUDIT_REFS = 200


class PeopleError(ServerError, ValueError):
    """A people change the site does not allow (unknown level, card in use, …): the message says what to fix."""


class UnknownPerson(PeopleError, LookupError):
    """No (non-visitor) person with that id."""


class PeopleFileInvalid(PeopleError):
    """A people.toml that cannot be imported; ``errors`` lists each problem (file, key, fix)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


# ------------------------------------------------------------------ rows


def person_row(p: Person, *, source: str, desk_changed: bool, at: float) -> dict[str, Any]:
    """A person as the store's ``people`` row (lists as JSON text)."""
    return {"id": p.id, "name": p.name, "kind": p.kind.value, "clearance": p.clearance,
            "access_levels": json.dumps(list(p.access_levels)), "roles": json.dumps(sorted(p.roles)),
            "state": p.state.value, "valid_from": p.valid_from, "valid_until": p.valid_until, "pin_hash": p.pin_hash,
            "host": p.host, "company": p.company, "allowed_areas": json.dumps(list(p.allowed_areas)),
            "escort_required": int(p.escort_required), "source": source, "desk_changed": int(desk_changed),
            "changed_at": at}


def person_from_row(row: Mapping[str, Any], memo: dict[tuple[str, str], Any] | None = None) -> Person:
    """A stored person. ``memo`` keeps the decoded lists and enums across rows: at 110,000 people most rows share
    the same few values, and decoding each once keeps a full reload to a fraction of a second per 100,000."""
    memo = memo if memo is not None else {}

    def dec(kind: str, text: str) -> Any:
        value = memo.get((kind, text))
        if value is None:
            value = memo[(kind, text)] = (PersonKind(text) if kind == "kind" else PersonState(text)
                                          if kind == "state" else frozenset(json.loads(text)) if kind == "roles"
                                          else tuple(json.loads(text)))
        return value

    return Person(id=row["id"], name=row["name"], kind=dec("kind", row["kind"]), clearance=int(row["clearance"]),
                  access_levels=dec("list", row["access_levels"]), roles=dec("roles", row["roles"]),
                  state=dec("state", row["state"]), valid_from=row["valid_from"], valid_until=row["valid_until"],
                  pin_hash=row["pin_hash"], host=row["host"], company=row["company"],
                  allowed_areas=dec("list", row["allowed_areas"]), escort_required=bool(row["escort_required"]))


def card_row(c: Credential) -> dict[str, Any]:
    return {"hash": c.hash, "person": c.person, "format": c.format, "last4": c.last4}


@dataclass
class PeopleSet:
    """People, their cards (by keyed hash, each with its state) and the visitor pool (hash -> format, last4):
    what the store holds, or what a people.toml would make it hold."""

    people: dict[str, Person] = field(default_factory=dict)
    cards: dict[str, Credential] = field(default_factory=dict)
    pool: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: ids of a people.toml that were erased (``doorkeep subject erase``) and are left out
    erased: list[str] = field(default_factory=list)


def load_rows(store: Store, *, with_states: bool = True) -> PeopleSet:
    """What the store holds; cards with the state ``credential_states`` gives them (active when none), or all
    active with ``with_states`` False (Directory applies the states itself on every rebuild)."""
    states = {r["hash"]: CredentialState(r["state"]) for r in store.card_states()} if with_states else {}
    memo: dict[tuple[str, str], Any] = {}
    people = {r["id"]: person_from_row(r, memo) for r in store.people_rows()}
    active = CredentialState.ACTIVE
    cards = {r["hash"]: Credential(r["hash"], r["last4"], r["format"], r["person"], states.get(r["hash"], active))
             for r in store.card_rows()}
    pool = {r["hash"]: (r["format"], r["last4"]) for r in store.pool_rows()}
    return PeopleSet(people, cards, pool)


def from_file(people: Mapping[str, Person], cards: Iterable[CardSeed], pool: Iterable[CardSeed], key: bytes,
              erased_refs: set[str], *, file: str = "people.toml") -> PeopleSet:
    """A loaded people.toml under the credential key: cards and PINs hashed, erased people left out.

    Checks what only the key shows (raises :class:`PeopleFileInvalid`): one card given to two people, or to a
    person and the visitor pool, once as a number and once as a hash."""
    errors: list[ConfigError] = []
    out = PeopleSet()
    gone = {pid for pid in people if subject_ref(key, pid) in erased_refs}
    out.erased = sorted(gone)
    pins: dict[str, str] = {}
    owner: dict[str, str] = {}
    for c in cards:
        h = c.hashed(key)
        if h in owner and owner[h] != c.person:
            errors.append(ConfigError(file, f"people.{c.person}.cards", f"card …{c.shown()} also belongs to "
                                      f"{owner[h]!r} (written once as a number, once as a hash)",
                                      "give each card to one person only"))
            continue
        owner[h] = c.person
        if c.pin is not None:
            pins[c.person] = pin_hash(key, c.pin)
        if c.person in gone:
            continue
        out.cards[h] = Credential(h, c.shown(), c.format, c.person, c.state)
    for c in pool:
        h = c.hashed(key)
        if h in owner:
            errors.append(ConfigError(file, "visitor_pool.cards", f"badge …{c.shown()} also belongs to {owner[h]!r}",
                                      "a pool badge belongs to no one until check-in"))
            continue
        out.pool[h] = (c.format, c.shown())
    if errors:
        raise PeopleFileInvalid(errors)
    for pid, p in people.items():
        if pid in gone:
            continue
        out.people[pid] = dataclasses.replace(p, pin_hash=pins[pid]) if pid in pins else p
    return out


# --------------------------------------------------------------- changes


_FIELDS = ("name", "kind", "clearance", "access_levels", "roles", "state", "valid_from", "valid_until", "pin_hash",
           "host", "company", "allowed_areas", "escort_required")


def _shown(name: str, value: Any) -> str:
    """A person's field in words: lists in brackets, times in UTC, never a hash."""
    if value is None:
        return "none"
    if name in ("valid_from", "valid_until"):
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, (tuple, list, frozenset, set)):
        items = sorted(value) if isinstance(value, (frozenset, set)) else list(value)
        return "[" + ", ".join(str(v) for v in items) + "]"
    if hasattr(value, "value"):
        return str(value.value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class PeopleChanges:
    """What an import changes, by person id and card hash; ``lines()`` says it in words (names yes, numbers never)."""

    added: list[Person] = field(default_factory=list)
    changed: list[tuple[Person, Person]] = field(default_factory=list)
    removed: list[Person] = field(default_factory=list)
    cards_added: list[Credential] = field(default_factory=list)
    cards_changed: list[tuple[Credential, Credential]] = field(default_factory=list)
    cards_removed: list[Credential] = field(default_factory=list)
    pool_added: list[tuple[str, str, str]] = field(default_factory=list)  # (hash, format, last4)
    pool_removed: list[tuple[str, str, str]] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)  # people of the file skipped: erased
    #: cards the file gives as active that are lost or revoked here: they stay so (never re-activated by a file)
    kept_inactive: list[tuple[Credential, str]] = field(default_factory=list)
    version: int = 0  # the store's people counter after the change (0: nothing written)

    def __bool__(self) -> bool:
        return any((self.added, self.changed, self.removed, self.cards_added, self.cards_changed,
                    self.cards_removed, self.pool_added, self.pool_removed))

    def counts(self) -> dict[str, int]:
        return {"people_added": len(self.added), "people_changed": len(self.changed),
                "people_removed": len(self.removed), "cards_added": len(self.cards_added),
                "cards_changed": len(self.cards_changed), "cards_removed": len(self.cards_removed),
                "pool_added": len(self.pool_added), "pool_removed": len(self.pool_removed)}

    def summary(self) -> str:
        """``1 person added, 3 cards removed``; ``no change``."""
        words = {"people": ("person", "people"), "cards": ("card", "cards"), "pool": ("visitor badge", "visitor badges")}
        parts = []
        for what, n in self.counts().items():
            kind, verb = what.split("_")
            if n:
                parts.append(f"{n} {words[kind][n != 1]} {verb}")
        return ", ".join(parts) if parts else "no change"

    def kept_lines(self) -> list[str]:
        """The cards the file would have re-activated, in words (they stay lost or revoked)."""
        return _kept_lines(self.kept_inactive)

    def lines(self) -> list[str]:
        """Each change in words: ``+ person alice``, ``~ person bob: access_levels [staff] -> [staff, lab]``,
        ``- card …C3 of eli``; a PIN only as "pin changed"."""
        out = [f"+ person {p.id}" for p in self.added]
        for old, new in self.changed:
            for name in _FIELDS:
                a, b = getattr(old, name), getattr(new, name)
                if a == b:
                    continue
                if name == "pin_hash":
                    out.append(f"~ person {new.id}: pin {'set' if a is None else 'removed' if b is None else 'changed'}")
                else:
                    out.append(f"~ person {new.id}: {name} {_shown(name, a)} -> {_shown(name, b)}")
        out += [f"- person {p.id}" for p in self.removed]
        out += [f"+ card …{c.last4} of {c.person}" + (f" ({c.state.value})" if c.state is not CredentialState.ACTIVE
                                                      else "") for c in self.cards_added]
        for old, new in self.cards_changed:
            if old.person != new.person:
                out.append(f"~ card …{new.last4}: {old.person} -> {new.person}")
            if old.state is not new.state:
                out.append(f"~ card …{new.last4} of {new.person}: state {old.state.value} -> {new.state.value}")
            if (old.format, old.last4) != (new.format, new.last4):
                out.append(f"~ card …{new.last4} of {new.person}: format {old.format} -> {new.format}")
        out += [f"- card …{c.last4} of {c.person}" for c in self.cards_removed]
        out += self.kept_lines()
        out += [f"+ visitor badge …{l4}" for _, _, l4 in self.pool_added]
        out += [f"- visitor badge …{l4}" for _, _, l4 in self.pool_removed]
        return out


#: Card states no import undoes (server/people.py ``PeopleService.apply_file``).
_TERMINAL = frozenset({CredentialState.LOST.value, CredentialState.REVOKED.value})


def _kept_lines(kept: list[tuple[Credential, str]]) -> list[str]:
    return [f"= card …{c.last4} of {c.person} stays {state}: an import never re-activates a lost or revoked card "
            "(give the person a new card)" for c, state in kept]


def diff(current: PeopleSet, new: PeopleSet) -> PeopleChanges:
    """What makes ``current`` into ``new``: people by id, cards by keyed hash, the pool by hash."""
    out = PeopleChanges(erased=list(new.erased))
    for pid, p in new.people.items():
        old = current.people.get(pid)
        if old is None:
            out.added.append(p)
        elif old != p:
            out.changed.append((old, p))
    out.removed = [p for pid, p in current.people.items() if pid not in new.people]
    for h, c in new.cards.items():
        old_card = current.cards.get(h)
        if old_card is not None and c.state is CredentialState.ACTIVE and old_card.state.value in _TERMINAL:
            out.kept_inactive.append((c, old_card.state.value))  # never re-activated: see apply_file
            c = replace(c, state=old_card.state)
        if old_card is None:
            out.cards_added.append(c)
        elif old_card != c:
            out.cards_changed.append((old_card, c))
    out.cards_removed = [c for h, c in current.cards.items() if h not in new.cards]
    out.pool_added = [(h, f, l4) for h, (f, l4) in new.pool.items() if current.pool.get(h) != (f, l4)]
    out.pool_removed = [(h, f, l4) for h, (f, l4) in current.pool.items() if h not in new.pool]
    for changes in (out.added, out.removed):
        changes.sort(key=lambda p: p.id)
    out.changed.sort(key=lambda pair: pair[1].id)
    for cards in (out.cards_added, out.cards_removed):
        cards.sort(key=lambda c: (c.person, c.last4, c.hash))
    out.cards_changed.sort(key=lambda pair: (pair[1].person, pair[1].last4, pair[1].hash))
    return out


# ----------------------------------------------------------------- export


def _toml_str(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's (``\\"``, ``\\\\``, ``\\n``, ``\\uXXXX``)."""
    return json.dumps(value, ensure_ascii=False)


def _toml_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


def _toml_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _toml_key(pid: str) -> str:
    return pid if re.fullmatch(r"[A-Za-z0-9_-]+", pid) else _toml_str(pid)


def render(people: PeopleSet, *, site_id: str = "") -> str:
    """people.toml for ``people``, in one deterministic order (people by id, cards by hash, the visitor pool in
    its own order): the file
    ``doorkeep site export`` writes. Cards and PINs appear only as keyed hashes."""
    by_person: dict[str, list[Credential]] = {}
    for c in people.cards.values():
        by_person.setdefault(c.person, []).append(c)
    out = [f"# people.toml{f' of site {site_id}' if site_id else ''}, written by `doorkeep site export`.",
           "# Cards and PINs are keyed hashes: they mean something only to a site with the same credential key",
           "# (keys/credential.key). A card may also be written with its number, as the reader sends it.", ""]
    for pid in sorted(people.people):
        p = people.people[pid]
        out.append(f"[people.{_toml_key(pid)}]")
        out.append(f"name = {_toml_str(p.name)}")
        out.append(f"kind = {_toml_str(p.kind.value)}")
        if p.clearance:
            out.append(f"clearance = {p.clearance}")
        if p.access_levels:
            out.append(f"access_levels = {_toml_list(p.access_levels)}")
        if p.roles:
            out.append(f"roles = {_toml_list(sorted(p.roles))}")
        if p.state is not PersonState.ACTIVE:
            out.append(f"state = {_toml_str(p.state.value)}")
        if p.valid_from is not None:
            out.append(f"valid_from = {_toml_time(p.valid_from)}")
        if p.valid_until is not None:
            out.append(f"valid_until = {_toml_time(p.valid_until)}")
        if p.company is not None:
            out.append(f"company = {_toml_str(p.company)}")
        if p.kind is PersonKind.VISITOR:
            if p.host is not None:
                out.append(f"host = {_toml_str(p.host)}")
            if p.allowed_areas:
                out.append(f"allowed_areas = {_toml_list(p.allowed_areas)}")
            if not p.escort_required:
                out.append("escort_required = false")
        if p.pin_hash is not None:
            out.append(f"pin_hash = {_toml_str(p.pin_hash)}")
        cards = sorted(by_person.get(pid, []), key=lambda c: c.hash)
        if cards:
            out.append("cards = [")
            for c in cards:
                state = "" if c.state is CredentialState.ACTIVE else f", state = {_toml_str(c.state.value)}"
                out.append(f"    {{ format = {_toml_str(c.format)}, hash = {_toml_str(c.hash)}, "
                           f"last4 = {_toml_str(c.last4)}{state} }},")
            out.append("]")
        out.append("")
    if people.pool:
        out.append("[visitor_pool]")
        out.append("cards = [")
        for h, (fmt, l4) in people.pool.items():  # in the pool's order: the first free badge is handed out first
            out.append(f"    {{ format = {_toml_str(fmt)}, hash = {_toml_str(h)}, last4 = {_toml_str(l4)} }},")
        out.append("]")
        out.append("")
    return "\n".join(out)


def write_file(store: Store, directory: Path, *, site_id: str = "") -> Path:
    """Write the store's people, cards and visitor pool to ``DIRECTORY/people.toml`` (:func:`render`), atomically
    and mode 0600 (names are personal data); needs no key: cards and PINs are already keyed hashes."""
    path = Path(directory) / "people.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(render(load_rows(store), site_id=site_id))
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------- first start


KEY_CHECK = "people.key_check"


def key_check(key: bytes) -> str:
    """A fingerprint of the credential key the store's card and PIN hashes were made under (not the key)."""
    return hmac.new(key, b"doorkeep people key check", hashlib.sha256).hexdigest()[:16]


def check_key(store: Store, key: bytes) -> bool:
    """False (and an ERROR in the log) when the store's cards were hashed under another credential key: none
    of them can match a card then. The fix is to import a people.toml that gives the cards by number."""
    stored = store.audit_state(KEY_CHECK)
    if stored is None:  # a store from before the check: take the key it runs with
        store.set_audit_state(KEY_CHECK, key_check(key))
        return True
    if stored != key_check(key):
        log.error("the credential key is not the one the people in the store were imported with: no stored card "
                  "or PIN can match (fix: `doorkeep site import` a people.toml that gives the cards by number and "
                  "the PINs as pin; cards added at the desk must be added again)")
        return False
    return True


def seed(store: Store, bundle: SiteBundle, key: bytes, at: float, audit: Auditor | None = None) -> bool:
    """First start: put people.toml (``bundle``) into a store that never held people, folding in the desk's
    rows of migration 008 so that nothing anyone sees changes; one audited change. False when already done.

    A desk override (``added`` 0) sets the fields it names on a people.toml person (an override of someone
    the file no longer lists is dropped, as before); a desk-added person and card join the rest; a desk card
    also given to someone else in people.toml is dropped (people.toml won before too). Card states the file
    gives (lost, revoked) go to ``credential_states`` unless the desk set one already. Erased people stay out.
    """
    if store.people_seeded():
        check_key(store, key)
        return False
    people = from_file(bundle.people, bundle.cards, bundle.visitor_pool, key, store.erased_refs(),
                       file=str(bundle.dir / "people.toml"))
    source = {pid: "people.toml" for pid in people.people}
    changed: set[str] = set()
    desk_people, desk_cards = store.legacy_desk_rows()
    erased = store.erased_refs()
    for row in desk_people:
        pid = row["id"]
        seeded = people.people.get(pid)
        if (seeded is None and not row["added"]) or subject_ref(key, pid) in erased:
            continue
        base = seeded or Person(id=pid, name=row["name"] or pid)
        fields: dict[str, Any] = {}
        if row["name"]:
            fields["name"] = row["name"]
        if row["kind"]:
            fields["kind"] = PersonKind(row["kind"])
        if row["clearance"] is not None:
            fields["clearance"] = int(row["clearance"])
        if row["access_levels"] is not None:
            fields["access_levels"] = tuple(json.loads(row["access_levels"]))
        if row["state"]:
            fields["state"] = PersonState(row["state"])
        people.people[pid] = dataclasses.replace(base, **fields)
        if seeded is None:
            source[pid] = "desk"
        else:
            changed.add(pid)
    folded_cards = 0
    for row in desk_cards:
        h = row["hash"]
        if row["person"] not in people.people or h in people.pool:
            continue
        if h in people.cards and people.cards[h].person != row["person"]:
            log.warning("a desk-added card of %s is also in people.toml for someone else; people.toml wins",
                        subject_ref(key, row["person"]))
            continue
        people.cards[h] = Credential(h, row["last4"], row["format"], row["person"])
        folded_cards += 1
    known_states = {r["hash"] for r in store.card_states()}
    states: dict[str, str | None] = {h: c.state.value for h, c in people.cards.items()
                                     if c.state is not CredentialState.ACTIVE and h not in known_states}
    for pid in people.erased:
        log.warning("person %s of people.toml was erased (doorkeep subject erase) and is not imported; remove "
                    "them from %s", subject_ref(key, pid), bundle.dir / "people.toml")
    version = store.write_people(
        people=[person_row(p, source=source[pid], desk_changed=pid in changed, at=at)
                for pid, p in people.people.items()],
        cards=[card_row(c) for c in people.cards.values()], states=states,
        pool=[{"hash": h, "format": f, "last4": l4} for h, (f, l4) in people.pool.items()], seeded=True, at=at)
    store.set_audit_state(KEY_CHECK, key_check(key))
    details = {"first_start": True, "people": len(people.people), "cards": len(people.cards),
               "pool": len(people.pool), "desk_people": len(desk_people), "desk_cards": folded_cards,
               "erased_skipped": len(people.erased)}
    log.info("first start: people.toml imported into the store (%d people, %d cards, %d visitor badges%s)",
             len(people.people), len(people.cards), len(people.pool),
             f"; {len(desk_people)} desk rows folded in" if desk_people else "")
    record_audit(audit, "system", FILE_IMPORT, bundle.site.id, details)
    return True


# --------------------------------------------------------------- service


@dataclass
class NewPerson:
    """A validated person to add, with cards already hashed (the clear numbers go no further)."""

    id: str
    name: str
    kind: str
    clearance: int
    access_levels: list[str]
    cards: list[tuple[str, str, str]] = field(default_factory=list)  # (hash, format, last4)


@dataclass(frozen=True)
class CardView:
    hash: str
    format: str
    last4: str
    state: str


@dataclass(frozen=True)
class PersonView:
    """A person as the desk shows them; ``source``: people.toml, desk (added there) or people.toml+desk."""

    id: str
    name: str
    kind: str
    state: str
    clearance: int
    access_levels: tuple[str, ...]
    source: str
    cards: tuple[CardView, ...]


class PeopleService:
    """The one way people, cards and the visitor pool change: the desk's actions, an import, an export.

    ``directory`` is the running server's live site (None in a command such as ``doorkeep site import``, which
    only writes the store: the server picks the change up with :meth:`poll`). Changes are serialised; each is a
    row change in one transaction, then handed to the directory, which swaps the new site in.
    """

    def __init__(self, store: Store, key: bytes, clock: Clock, *, audit: Auditor | None = None,
                 directory: Directory | None = None) -> None:
        self.store = store
        self.key = key
        self.clock = clock
        self.audit = audit
        self.directory = directory
        self._lock = threading.RLock()

    # ------------------------------------------------------------ files

    def seed(self, bundle: SiteBundle) -> bool:
        """First start (see :func:`seed`); False when the store already holds the people."""
        with self._lock:
            return seed(self.store, bundle, self.key, self.clock.wall(), self.audit)

    def check_file(self, bundle: SiteBundle) -> PeopleChanges | None:
        """At a later start: the site directory's people.toml is not read for decisions; when it differs from the
        store, one WARNING names the file and `doorkeep site import`. Returns the difference (None: none)."""
        path = bundle.dir / "people.toml"
        if not path.exists():
            return None
        try:
            wanted = from_file(bundle.people, bundle.cards, bundle.visitor_pool, self.key, self.store.erased_refs(),
                               file=str(path))
        except PeopleFileInvalid as exc:
            log.warning("%s cannot be imported as it is (%s); the people in the store stay live", path, exc)
            return None
        changes = diff(load_rows(self.store), wanted)
        if not changes:
            return None
        log.warning("%s differs from the people in the store (%s), which stay live; apply the file with "
                    "`doorkeep site import %s`, or write the live ones out with `doorkeep site export`",
                    path, changes.summary(), bundle.dir)
        return changes

    def load_file(self, path: Path, site: Site) -> PeopleSet:
        """A people.toml to import, checked against ``site`` with the rules and messages of ``doorkeep config
        check`` plus what only the key shows; raises :class:`PeopleFileInvalid` listing every problem."""
        try:
            people, cards, pool = load_people_file(path, site)
        except ConfigErrors as exc:
            raise PeopleFileInvalid(list(exc.errors)) from None
        except ConfigError as exc:
            raise PeopleFileInvalid([exc]) from None
        wanted = from_file(people, cards, pool, self.key, self.store.erased_refs(), file=str(path))
        visitors = {r["id"] for r in self.store.visitor_records()}
        clash = sorted(pid for pid in wanted.people if pid in visitors)
        if clash:
            raise PeopleFileInvalid([ConfigError(str(path), f"people.{pid}", "is the id of a visitor registered at "
                                                 "the desk", "give the person another id") for pid in clash])
        return wanted

    def apply_file(self, wanted: PeopleSet, *, actor: str, file: str = "people.toml") -> PeopleChanges:
        """Make ``wanted`` the full list of people: the changes applied in one transaction, audited (counts and
        pseudonyms), live at once in this process (another process's server polls). Nothing is written, and
        nothing audited, when nothing changes."""
        with self._lock:
            changes = diff(load_rows(self.store), wanted)
            for pid in changes.erased:
                log.warning("person %s of %s was erased (doorkeep subject erase) and is not imported",
                            subject_ref(self.key, pid), file)
            if not changes:
                return changes
            at = self.clock.wall()
            rows = [person_row(p, source="people.toml", desk_changed=False, at=at)
                    for p in [*changes.added, *(new for _, new in changes.changed)]]
            cards = [*changes.cards_added, *(new for _, new in changes.cards_changed)]
            states: dict[str, str | None] = {}
            current_states = {r["hash"]: r["state"] for r in self.store.card_states()}
            for c in cards:
                stored = current_states.get(c.hash, "active")
                if stored == c.state.value:
                    continue
                if c.state is CredentialState.ACTIVE and stored in _TERMINAL:
                    # A lost or revoked card is gone for good: an old or hand-edited file must not bring it back.
                    changes.kept_inactive.append((c, stored))
                    log.warning("card …%s of %s stays %s: %s gives it as active, and an import never "
                                "re-activates a lost or revoked card", c.last4, subject_ref(self.key, c.person),
                                stored, file)
                    continue
                states[c.hash] = None if c.state is CredentialState.ACTIVE else c.state.value
            pool_changed = bool(changes.pool_added or changes.pool_removed)
            changes.version = self.store.write_people(
                people=rows, remove=[p.id for p in changes.removed], cards=[card_row(c) for c in cards],
                remove_cards=[c.hash for c in changes.cards_removed], states=states,
                pool=[{"hash": h, "format": f, "last4": l4} for h, (f, l4) in wanted.pool.items()]
                if pool_changed else None, at=at)
            self.store.set_audit_state(KEY_CHECK, key_check(self.key))  # the file's hashes are this key's now
            self._audit(actor, FILE_IMPORT, None, {
                **changes.counts(), "file": Path(file).name,
                "added": self._refs(p.id for p in changes.added),
                "changed": self._refs(new.id for _, new in changes.changed),
                "removed": self._refs(p.id for p in changes.removed),
                "erased_skipped": len(changes.erased)})
            if self.directory is not None:
                self.directory.reload_people()
                if changes.removed:
                    self.directory.forget([p.id for p in changes.removed])
            return changes

    def export_file(self, directory: Path, *, site_id: str = "") -> Path:
        """Write the store's people to ``DIRECTORY/people.toml`` (:func:`write_file`)."""
        return write_file(self.store, directory, site_id=site_id)

    def poll(self) -> bool:
        """Pick up a change another process made (``doorkeep site import``, ``doorkeep subject erase``); True when
        one was. Runs every second: one counter is read until it moves."""
        if self.directory is None or self.store.people_version() == self.directory.people_version:
            return False
        log.info("people changed in the store (by another process): reloading")
        self.directory.reload_people()
        return True

    def check_site(self, site: Site, *, file: str, incoming: PeopleSet | None = None) -> list[ConfigError]:
        """What a proposed site breaks for the people: an access level someone holds that it no longer defines.

        The people are the store's (the running site's when this process decides), or ``incoming`` when a
        people.toml goes live with the site (``doorkeep site import`` of both files)."""
        if incoming is not None:
            people: Iterable[Person] = incoming.people.values()
        elif self.directory is not None:
            people = self.directory.site.people.values()
        else:
            people = load_rows(self.store).people.values()
        holders: dict[str, list[str]] = {}
        for p in people:
            for level in p.access_levels:
                if level not in site.access_levels:
                    holders.setdefault(level, []).append(p.id)
        out = []
        for level, ids in sorted(holders.items()):
            ids.sort()
            who = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
            out.append(ConfigError(file, f"access_levels.{level}",
                                   f"is held by {len(ids)} {'person' if len(ids) == 1 else 'people'} ({who})",
                                   "take the level away from them first (the People pages, or people.toml with "
                                   "`doorkeep site import`), or keep the level"))
        return out

    # ------------------------------------------------------------ reading

    def _site(self) -> Site:
        if self.directory is None:
            raise PeopleError("people can only be changed here on a running server (fix: use the desk, or "
                              "`doorkeep site import`)")
        return self.directory.site

    def person(self, pid: str) -> Person:
        p = self._site().people.get(pid)
        if p is None or p.kind is PersonKind.VISITOR:
            raise UnknownPerson(f"no person {pid!r} (visitors are on the Visitors page)")
        return p

    def view(self, pid: str, *, sources: Mapping[str, str] | None = None,
             cards: Mapping[str, list[Credential]] | None = None) -> PersonView:
        site = self._site()
        p = site.people[pid]
        if sources is None:
            row = self.store.person_row(pid)
            source = _source(row) if row is not None else "people.toml"
        else:
            source = sources.get(pid, "people.toml")
        held = cards.get(pid, []) if cards is not None else [c for c in site.credentials.values() if c.person == pid]
        shown = sorted((CardView(c.hash, c.format, c.last4, c.state.value) for c in held),
                       key=lambda c: (c.state, c.last4))
        return PersonView(p.id, p.name, p.kind.value, p.state.value, p.clearance, tuple(p.access_levels), source,
                          tuple(shown))

    def people(self, q: str = "") -> list[PersonView]:
        """People (not visitors) whose id or name holds ``q``, by name."""
        return self.page(q, 0, None)[1]

    def matching(self, q: str = "") -> list[tuple[str, str]]:
        """``(name, id)`` of the people (not visitors) whose id or name holds ``q``, sorted by name then id.

        Cheap enough for 100,000 people on every keystroke: no view, no card is built here."""
        needle = q.strip().lower()
        return sorted((p.name, pid) for pid, p in self._site().people.items() if p.kind is not PersonKind.VISITOR
                      and (not needle or needle in pid.lower() or needle in p.name.lower()))

    def page(self, q: str, offset: int, limit: int | None) -> tuple[int, list[PersonView]]:
        """``(how many match, the views of matches offset..offset+limit)``; only the page's views and cards
        are built, so a page of 50 stays fast whatever the number of people."""
        matched = self.matching(q)
        shown = [pid for _, pid in (matched[offset:] if limit is None else matched[offset:offset + limit])]
        if not shown:
            return len(matched), []
        wanted = set(shown)
        sources = {r["id"]: _source(r) for r in self.store.people_sources() if r["id"] in wanted}
        cards: dict[str, list[Credential]] = {}
        for c in self._site().credentials.values():
            if c.person in wanted:
                cards.setdefault(c.person, []).append(c)
        return len(matched), [self.view(pid, sources=sources, cards=cards) for pid in shown]

    # ------------------------------------------------------------ checks

    def check_card(self, fmt: str, number: str, taken: dict[str, str]) -> tuple[str, str, str]:
        """A card number checked and hashed: ``(hash, format, last4)``; ``taken`` maps hashes seen in this batch."""
        number = number.strip()
        if fmt not in CARD_FORMATS:
            raise PeopleError(f"card format {fmt!r} is not one of {', '.join(CARD_FORMATS)}")
        if fmt == "em4100" and not re.fullmatch(r"[0-9A-Fa-f]{10}", number):
            raise PeopleError("an em4100 card number is 10 hex digits, as the reader sends it (e.g. 0F00A1B2C3)")
        if fmt in WIEGAND_CREDENTIALS:  # spelled exactly as the edge reads it, or its hash never matches a read
            problem = number_problem(fmt, number)
            if problem is not None:
                raise PeopleError(f"not a {fmt} card number: {problem} (docs/readers.md, Wiegand card formats)")
        elif fmt != "em4100" and not re.fullmatch(r"[0-9A-Za-z]{1,32}", number):
            raise PeopleError(f"a {fmt} card number is 1 to 32 letters and digits, as the reader sends it")
        h = card_hash(self.key, fmt, number)
        if h in self._site().credentials:
            raise PeopleError(f"that card (…{last4(number)}) already belongs to someone; report it lost or revoke "
                              "it there first")
        assert self.directory is not None
        if self.directory.pool_badge(h) is not None:
            raise PeopleError(f"that card (…{last4(number)}) is a visitor badge of the pool (people.toml "
                              "visitor_pool)")
        if h in taken:
            raise PeopleError(f"that card (…{last4(number)}) is also given to {taken[h]!r} in this import")
        return h, fmt, last4(normalise(fmt, number))

    def check_access(self, clearance: Any, levels: list[str]) -> tuple[int, list[str]]:
        site = self._site()
        try:
            value = int(clearance)
        except (TypeError, ValueError):
            raise PeopleError(f"clearance {clearance!r} is not a number from 0 to {MAX_CLEARANCE}") from None
        if not 0 <= value <= MAX_CLEARANCE:
            raise PeopleError(f"clearance must be 0 to {MAX_CLEARANCE}, got {value}")
        clean = []
        for level in levels:
            level = level.strip()
            if not level:
                continue
            if level not in site.access_levels:
                raise PeopleError(f"no access level {level!r} (known: {', '.join(sorted(site.access_levels))})")
            if level not in clean:
                clean.append(level)
        return value, clean

    def check_new_person(self, pid: str, name: str, kind: str, clearance: Any, levels: list[str],
                         cards: list[tuple[str, str]], *, taken: dict[str, str] | None = None,
                         ids: set[str] | None = None) -> NewPerson:
        """Validate one new person against the live site (and, for an import, the rest of the file)."""
        site = self._site()
        pid = pid.strip()
        if not NEW_ID.fullmatch(pid):
            raise PeopleError(f"id {pid!r} must be lower-case letters, digits, _ and - (at most 64), like 'jdoe'")
        if pid in site.people or (ids is not None and pid in ids) or self.store.person_row(pid) is not None:
            raise PeopleError(f"person {pid!r} already exists; change them on their page instead")
        name = " ".join(name.split())
        if not name or len(name) > 128:
            raise PeopleError("name is required (at most 128 characters)")
        kind = (kind or "employee").strip()
        if kind not in KINDS:
            raise PeopleError(f"kind {kind!r} must be employee or contractor (visitors are registered on the "
                              "Visitors page)")
        value, clean = self.check_access(clearance if clearance not in (None, "") else 0, levels)
        taken = taken if taken is not None else {}
        hashed = []
        for fmt, number in cards:
            h, f, l4 = self.check_card(fmt, number, taken)
            taken[h] = pid
            hashed.append((h, f, l4))
        return NewPerson(pid, name, kind, value, clean, hashed)

    # ------------------------------------------------------------ changing

    def add_people(self, people: list[NewPerson], *, actor: str, via: str) -> None:
        """Write every person and card in one transaction (all or nothing), then swap the new site in once."""
        with self._lock:
            directory = self._directory()
            at = self.clock.wall()
            persons = {p.id: Person(id=p.id, name=p.name, kind=PersonKind(p.kind), clearance=p.clearance,
                                    access_levels=tuple(p.access_levels)) for p in people}
            creds = {h: Credential(h, l4, fmt, p.id) for p in people for h, fmt, l4 in p.cards}
            try:
                version = self.store.add_people_rows(
                    [person_row(persons[p.id], source="desk", desk_changed=False, at=at) for p in people],
                    [card_row(c) for c in creds.values()], at)
            except sqlite3.IntegrityError:
                raise PeopleError("a person or card of this change was added meanwhile; reload and try again") \
                    from None
            directory.update_people(persons, creds, version=version)
        if self.audit is not None:
            for p in people:
                self._audit(actor, "person.add", subject_ref(self.key, p.id),
                            {"kind": p.kind, "clearance": p.clearance, "access_levels": p.access_levels,
                             "cards": len(p.cards), "via": via})
            if via == "csv":
                self._audit(actor, "people.import", None, {"people": len(people),
                                                           "cards": sum(len(p.cards) for p in people)})

    def _change_person(self, pid: str, columns: dict[str, Any], **changes: Any) -> Person:
        """One person's row changed (a cheap row change) and the new site swapped in; the person before."""
        directory = self._directory()
        before = self.person(pid)
        after = dataclasses.replace(before, **changes)
        try:
            version = self.store.update_person_row(pid, {**columns, "desk_changed": 1}, self.clock.wall())
        except LookupError:
            raise UnknownPerson(f"no person {pid!r} (visitors are on the Visitors page)") from None
        directory.update_people({pid: after}, {}, version=version)
        return before

    def set_state(self, pid: str, state: PersonState, *, actor: str) -> bool:
        """Suspend or reinstate; False when already so. A suspended person is refused at every door at once."""
        with self._lock:
            p = self.person(pid)
            if p.state is state:
                return False
            self._change_person(pid, {"state": state.value}, state=state)
        self._audit(actor, "person.suspend" if state is PersonState.SUSPENDED else "person.reinstate",
                    subject_ref(self.key, pid), {"from": p.state.value, "to": state.value})
        return True

    def email(self, pid: str) -> str | None:
        """The person's e-mail address (host notices go there: server/invitations.py), or None."""
        self.person(pid)
        return self.store.person_email(pid)

    def set_email(self, pid: str, email: str, *, actor: str) -> bool:
        """Set a person's e-mail address, or remove it with an empty one; False when nothing changed.
        Kept apart from the person row (``person_contacts``), so a people.toml import leaves it as it is."""
        email = email.strip()
        if email and (len(email) > 254 or not EMAIL.match(email)):
            raise PeopleError(f"{email!r} is not an e-mail address (leave it empty to remove it)")
        with self._lock:
            self.person(pid)
            changed = self.store.set_person_email(pid, email or None, self.clock.wall())
        if changed:
            self._audit(actor, "person.email", subject_ref(self.key, pid), {"set": bool(email)})
        return changed

    def set_access(self, pid: str, clearance: Any, levels: list[str], *, actor: str) -> None:
        with self._lock:
            self.person(pid)
            value, clean = self.check_access(clearance, levels)
            p = self._change_person(pid, {"clearance": value, "access_levels": json.dumps(clean)},
                                    clearance=value, access_levels=tuple(clean))
        self._audit(actor, "person.access", subject_ref(self.key, pid),
                    {"clearance": [p.clearance, value], "access_levels": [list(p.access_levels), clean]})

    def add_card(self, pid: str, fmt: str, number: str, *, actor: str) -> str:
        with self._lock:
            directory = self._directory()
            self.person(pid)
            h, fmt, l4 = self.check_card(fmt, number, {})
            try:
                version = self.store.add_card_row(h, pid, fmt, l4, self.clock.wall())
            except sqlite3.IntegrityError:
                raise PeopleError(f"that card (…{l4}) already belongs to someone") from None
            directory.update_people({}, {h: Credential(h, l4, fmt, pid)}, version=version)
        self._audit(actor, "card.add", subject_ref(self.key, pid), {"format": fmt, "card": h[:12]})
        return h

    def report_lost(self, h: str, *, actor: str, owner: str | None = None) -> Credential:
        """The card stops working at every door at once: Directory.set_card_state + the policy republish."""
        from server.directory import DirectoryError

        directory = self._directory()
        cred = directory.site.credentials.get(h)
        if cred is None or (owner is not None and cred.person != owner):
            raise UnknownPerson("no such card" + (f" for {owner!r}" if owner else ""))
        holder = directory.site.people.get(cred.person)
        if holder is not None and holder.kind is PersonKind.VISITOR:
            raise PeopleError("that is a visitor badge: check the visitor out on the Visitors page instead")
        if cred.state is CredentialState.LOST:
            return cred
        try:
            return directory.set_card_state(h, CredentialState.LOST, actor=actor)
        except DirectoryError as exc:
            raise PeopleError(str(exc)) from None

    # ------------------------------------------------------------ CSV

    def parse_csv(self, text: str) -> tuple[list[NewPerson], list[dict[str, Any]]]:
        """Validate every line; ``(people, errors)`` where each error is ``{"line": n, "error": text}``.

        The header names the columns (``id`` and ``name`` required; ``kind``, ``clearance``,
        ``access_levels`` separated by ``;``, ``cards`` as ``format:number`` separated by ``;``)."""
        errors: list[dict[str, Any]] = []
        text = text.removeprefix("\ufeff")  # Excel's "CSV UTF-8" starts with a byte order mark
        reader = csv.reader(io.StringIO(text))
        try:
            header = next(reader)
        except (StopIteration, csv.Error):
            return [], [{"line": 1, "error": f"the file is empty: the first line names the columns, e.g. "
                                            f"{','.join(CSV_COLUMNS)}"}]
        cols = [h.strip().lower() for h in header]
        unknown = [c for c in cols if c not in CSV_COLUMNS]
        missing = [c for c in ("id", "name") if c not in cols]
        if unknown or missing or len(set(cols)) != len(cols):
            problem = (f"unknown columns {unknown}" if unknown else f"missing columns {missing}" if missing
                       else "a column is named twice")
            return [], [{"line": 1, "error": f"{problem}; the header is {','.join(CSV_COLUMNS)} (id and name "
                                            "required)"}]
        people: list[NewPerson] = []
        taken: dict[str, str] = {}
        ids: set[str] = set()
        rows = 0
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                errors.append({"line": reader.line_num, "error": f"not valid CSV: {exc}"})
                break
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            rows += 1
            if rows > MAX_IMPORT_ROWS:
                errors.append({"line": line, "error": f"more than {MAX_IMPORT_ROWS} people: split the file"})
                break
            if len(values) != len(cols):
                errors.append({"line": line, "error": f"{len(values)} fields, the header has {len(cols)}"})
                continue
            row = dict(zip(cols, (v.strip() for v in values)))
            try:
                cards = []
                for item in (row.get("cards") or "").split(";"):
                    if not item.strip():
                        continue
                    fmt, sep, number = item.strip().partition(":")
                    if not sep:
                        raise PeopleError(f"card {item.strip()[:3]}… is not format:number (e.g. em4100:0F00A1B2C3)")
                    cards.append((fmt.strip(), number.strip()))
                p = self.check_new_person(row["id"], row["name"], row.get("kind") or "employee",
                                          row.get("clearance") or 0, (row.get("access_levels") or "").split(";"),
                                          cards, taken=taken, ids=ids)
            except PeopleError as exc:
                errors.append({"line": line, "error": str(exc)})
                continue
            ids.add(p.id)
            people.append(p)
        if not people and not errors:
            errors.append({"line": 2, "error": "no people in the file"})
        return people, errors

    def import_csv(self, text: str, *, actor: str) -> tuple[list[NewPerson], list[dict[str, Any]]]:
        """All or nothing: nothing is written unless every line is valid."""
        with self._lock:
            people, errors = self.parse_csv(text)
            if not errors:
                self.add_people(people, actor=actor, via="csv")
        return people, errors

    # ------------------------------------------------------------ helpers

    def _directory(self) -> Directory:
        self._site()
        assert self.directory is not None
        return self.directory

    def _refs(self, ids: Iterable[str]) -> list[str]:
        return [subject_ref(self.key, pid) for pid in ids][:AUDIT_REFS]

    def _audit(self, actor: str, action: str, target: str | None, details: dict[str, Any]) -> None:
        """Record a change that already happened; a failing audit is logged loudly, never undoes it."""
        record_audit(self.audit, actor, action, target, details)


def _source(row: Mapping[str, Any]) -> str:
    if row["source"] == "desk":
        return "desk"
    return "people.toml+desk" if row["desk_changed"] else "people.toml"
