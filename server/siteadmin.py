"""Site administration: the site model lives in the server's store as numbered revisions (docs/administration.md).

The live site's areas, doors, schedules, access levels and rules are the
``site.toml`` text of the newest **site revision** in the store; the file in
the site directory is an import/export format. Every change — an import, a
rollback, a structured edit from the desk or the API — goes through
:meth:`SiteAdmin.commit`, which

1. refuses a stale edit: a change made against revision *b* while *b* is no
   longer the newest is a :class:`SiteConflict` naming who changed what since,
   unless the edit touches none of those objects (it is then re-based);
2. validates the new text with exactly the rules and messages of
   ``doorkeep config check`` (``load_site_dir(..., site_text=...)``: the
   directory's people and device files are checked against it);
3. appends the revision (number, operator, time, the changes in words) in one
   transaction that fails if another commit came first, and audits it;
4. swaps the new site into the running decisions (``Directory.replace_site``),
   which republishes every affected edge's signed policy.

A revision committed by another process (``doorkeep site import`` while the
server runs) is picked up by :meth:`SiteAdmin.poll`, which the server calls
every second; so are people another process changed (server/people.py).

People, cards and the visitor pool are not part of the revisions: they live in
the store's own tables (server/people.py). ``people.toml`` is imported and
exported beside ``site.toml`` (:meth:`SiteAdmin.plan_people`,
:meth:`SiteAdmin.import_people`, :meth:`SiteAdmin.export_people`).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from doorkeep import sitediff
from doorkeep.clock import Clock
from doorkeep.config import SiteBundle, load_site_dir, load_site_file
from doorkeep.errors import ConfigError, ConfigErrors
from server.audit import Auditor, record_audit
from server.errors import ServerError
from server.people import PeopleChanges, PeopleFileInvalid, PeopleService, PeopleSet
from server.people import write_file as write_people_file
from server.store import Store

log = logging.getLogger("doorkeep.server.siteadmin")

#: How many change lines a revision keeps (its text holds everything; this is what people read).
MAX_CHANGE_LINES = 500
LAYOUT_ONLY = "comments and layout only"


class SiteAdminError(ServerError):
    """A site change that cannot be made; the message says why and what to do."""


class RevisionNotFound(SiteAdminError, LookupError):
    """No revision has that number."""


class SiteInvalid(SiteAdminError, ValueError):
    """The proposed site breaks a rule of ``doorkeep config check``; ``errors`` lists each (file, key, fix)."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


class SiteConflict(SiteAdminError):
    """The change was made against an older revision and touches what someone changed since (HTTP 409)."""

    def __init__(self, base: int, current: int, since: list[dict[str, Any]], clashing: set[str]) -> None:
        self.base, self.current, self.since, self.clashing = base, current, since, clashing
        who = "; ".join(f"revision {r['number']} by {r['actor']}: {r['summary']}" for r in reversed(since))
        super().__init__(f"the site changed since revision {base} (now {current}): {who}"
                         + (f"; both change {', '.join(sorted(clashing))}" if clashing else "")
                         + " (fix: reload, look at the change and make yours again)")


@dataclass(frozen=True)
class Revision:
    number: int
    created_at: float
    actor: str
    summary: str
    changes: tuple[str, ...]
    site_toml: str
    rollback_of: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Revision:
        return cls(row["number"], row["created_at"], row["actor"], row["summary"], tuple(row["changes"]),
                   row.get("site_toml", ""), row.get("rollback_of"))


@dataclass(frozen=True)
class Proposal:
    """Structured edits applied to the live revision and validated, not committed (:meth:`SiteAdmin.propose`)."""

    revision: Revision
    """The live revision the edits apply to (the base they were re-based onto)."""
    text: str
    """The proposed site.toml."""
    bundle: SiteBundle
    """The site directory with that site.toml, checked as ``doorkeep config check`` does."""

    def changes(self) -> list[str]:
        """Each change in words, as the revision would record them."""
        return [c.line() for c in sitediff.diff(self.revision.site_toml, self.text)][:MAX_CHANGE_LINES]


SiteSink = Callable[[SiteBundle], None]


class SiteAdmin:
    """The one way the site model changes. Thread-safe: commits are serialised, reads are lock-free."""

    def __init__(self, store: Store, site_dir: Path, clock: Clock, *, audit: Auditor | None = None,
                 apply: SiteSink | None = None) -> None:
        """``apply`` receives each new live site (the running server swaps it into its decisions)."""
        self.store = store
        self.site_dir = Path(site_dir)
        self.clock = clock
        self.audit = audit
        self.apply = apply
        self._commit_lock = threading.RLock()  # change() and rollback() commit while holding it
        self._live: int = 0  # the revision the running decisions use
        #: set by :meth:`start`: the live revision is not the site.toml on disk (the store's revision wins)
        self.live_differs_from_file = False
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        #: people, cards and the visitor pool (server/people.py): people.toml is imported and exported with
        #: site.toml, and the poll picks up another process's people changes. None: site.toml only.
        self.people: PeopleService | None = None
        #: the people.toml going live with an imported site.toml (under the commit lock): what it must fit
        self._incoming_people: PeopleSet | None = None

    # ------------------------------------------------------------ reading

    def current(self) -> Revision | None:
        row = self.store.latest_site_revision()
        return Revision.from_row(row) if row is not None else None

    def revision(self, number: int) -> Revision:
        row = self.store.site_revision(number)
        if row is None:
            raise RevisionNotFound(f"there is no site revision {number} (fix: `doorkeep site history` lists them)")
        return Revision.from_row(row)

    def history(self, limit: int = 50, *, after: int = 0) -> list[Revision]:
        return [Revision.from_row(r) for r in self.store.site_revisions(limit, after=after)]

    def validate(self, text: str) -> SiteBundle:
        """The site directory with ``text`` as its site.toml, checked as ``doorkeep config check`` does."""
        try:
            bundle = load_site_dir(self.site_dir, site_text=text, people=self.people is None)
        except ConfigErrors as exc:
            raise SiteInvalid(list(exc.errors)) from None
        except ConfigError as exc:
            raise SiteInvalid([exc]) from None
        if self.people is not None:  # the people live in the store: they are what the site must still fit
            errors = self.people.check_site(bundle.site, file=str(self.site_dir / "site.toml"),
                                            incoming=self._incoming_people)
            if errors:
                raise SiteInvalid(errors)
        return bundle

    # ------------------------------------------------------------ changing

    def start(self) -> SiteBundle | None:
        """At server start: the first start imports the directory's site.toml as revision 1; later starts
        run the newest revision (a site.toml edited on disk meanwhile is reported, not applied).

        Returns the site bundle to run when it is not the directory's own (the store's revision differs from
        the file); None when the file is the live revision, so nothing is loaded twice.
        """
        current = self.current()
        file_text = self._file_text(self.site_dir)
        if current is None:
            with self._commit_lock:  # no apply yet: the server builds its decisions from the same file
                self.validate(file_text)
                number = self.store.add_site_revision(base=0, site_toml=file_text, actor="system",
                                                      summary="first start: imported site.toml", changes=[],
                                                      at=self.clock.wall())
            if number is not None:
                self._record("system", number, "first start: imported site.toml", [], None)
                self._live = number
                return None
            current = self.current()
            assert current is not None
        elif file_text != current.site_toml:
            self.live_differs_from_file = True
            log.warning("%s differs from site revision %d, which stays live; apply the file with "
                        "`doorkeep site import %s`, or write the live one out with `doorkeep site export`",
                        self.site_dir / "site.toml", current.number, self.site_dir)
        self._live = current.number
        return self.validate(current.site_toml) if self.live_differs_from_file else None

    def commit(self, text: str, *, base: int, actor: str, summary: str | None = None,
               rollback_of: int | None = None) -> Revision:
        """Make ``text`` the live site as revision ``base + 1``; see the module docstring for the steps.

        Returns the new revision, or the current one unchanged when ``text`` is exactly the live text.
        """
        with self._commit_lock:
            current = self.current()
            number = current.number if current is not None else 0
            if base != number:
                raise self._conflict(base, number, None)
            if current is not None and text == current.site_toml:
                return current
            return self._append(current, text, self.validate(text), actor=actor, summary=summary,
                                rollback_of=rollback_of)

    def _append(self, current: Revision | None, text: str, bundle: SiteBundle, *, actor: str, summary: str | None,
                rollback_of: int | None) -> Revision:
        """Store ``text`` (already validated as ``bundle``) as the revision after ``current``, audit it, go live."""
        number = current.number if current is not None else 0
        changes = sitediff.diff(current.site_toml, text) if current is not None else []
        lines = [c.line() for c in changes][:MAX_CHANGE_LINES]
        if summary is None:
            summary = sitediff.summary(current.site_toml, text, changes) if changes else LAYOUT_ONLY
        new = self.store.add_site_revision(base=number, site_toml=text, actor=actor, summary=summary,
                                           changes=lines, at=self.clock.wall(), rollback_of=rollback_of)
        if new is None:  # another process committed between our read and our write
            latest = self.current()
            raise self._conflict(number, latest.number if latest else 0, None)
        self._record(actor, new, summary, lines, rollback_of)
        self._go_live(new, bundle)
        return self.revision(new)

    def change(self, edits: dict[str, Any], *, base: int, actor: str, summary: str | None = None) -> Revision:
        """Apply structured edits — dotted key -> new value, None to remove (``{"doors.lab_in.unlock_s": 8}``,
        ``{"areas.gym": {"name": "Gym"}}``) — to the live site.toml, keeping its comments and layout.

        Made against an older ``base``, the edit still goes through when nothing it touches changed since
        (it is re-based onto the newest revision); otherwise :class:`SiteConflict`.
        """
        with self._commit_lock:
            proposal = self._propose(self.current(), edits, base)
            if proposal.text == proposal.revision.site_toml:
                return proposal.revision
            return self._append(proposal.revision, proposal.text, proposal.bundle, actor=actor, summary=summary,
                                rollback_of=None)

    def propose(self, edits: dict[str, Any], *, base: int) -> Proposal:
        """What :meth:`change` would commit, checked by the same rules (stale base, validation), committing
        nothing: the impact preview (server/site_preview.py) judges it before an operator saves it."""
        return self._propose(self.current(), edits, base)

    def _propose(self, current: Revision | None, edits: dict[str, Any], base: int) -> Proposal:
        """The one rule for structured edits: re-based when nothing they touch changed since ``base``, else
        :class:`SiteConflict`; applied to the live text; validated (:class:`SiteInvalid`)."""
        if current is None:
            raise SiteAdminError("the site has no revision yet (fix: start the server once, or "
                                 "`doorkeep site import DIR`)")
        touched = {sitediff.Change(k, None, v).object for k, v in edits.items()}
        if base != current.number:
            since = [c for r in self.history(1000, after=base) for c in r.changes]
            clashing = touched & {_object_of_line(line) for line in since}
            if clashing or base > current.number:
                raise self._conflict(base, current.number, touched)
        text = apply_edits(current.site_toml, edits)
        return Proposal(current, text, self.validate(text))

    def rollback(self, number: int, *, actor: str) -> Revision:
        """Make revision ``number``'s site live again, as a new revision (the history keeps everything)."""
        old = self.revision(number)
        with self._commit_lock:
            current = self.current()
            assert current is not None
            return self.commit(old.site_toml, base=current.number, actor=actor,
                               summary=f"rollback to revision {number}", rollback_of=number)

    def import_dir(self, directory: Path, *, actor: str, people: PeopleSet | None = None) -> Revision:
        """Apply ``DIRECTORY/site.toml`` (a reviewed file) as the next revision; the live one if identical.

        ``people``: the planned people.toml imported right after it (:meth:`plan_people`); the site is checked
        against those people rather than the store's, so a level both files drop can go."""
        source = Path(directory) / "site.toml"
        text = self._file_text(Path(directory))
        with self._commit_lock:
            current = self.current()
            self._incoming_people = people
            try:
                return self.commit(text, base=current.number if current else 0, actor=actor, summary=None)
            except SiteInvalid as exc:  # name the file the operator gave, not the live site's
                live = str(self.site_dir / "site.toml")
                raise SiteInvalid([ConfigError(str(source), e.key, e.problem, e.fix) if e.file == live else e
                                   for e in exc.errors]) from None
            finally:
                self._incoming_people = None

    def export_dir(self, directory: Path) -> Path:
        """Write the live revision's text to ``DIRECTORY/site.toml`` (atomically; other files untouched)."""
        current = self.current()
        if current is None:
            raise SiteAdminError("the site has no revision yet (fix: start the server once, or "
                                 "`doorkeep site import DIR`)")
        path = Path(directory) / "site.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(current.site_toml, encoding="utf-8")
        os.replace(tmp, path)
        return path

    def poll(self) -> bool:
        """Swap in a revision another process committed, and people another process changed; True when either
        was. Runs every second: only the revision number and the people counter are read until one moves."""
        people = self.people.poll() if self.people is not None else False
        return self._poll_site() or people

    def _poll_site(self) -> bool:
        if self.store.latest_site_revision_number() in (0, self._live):
            return False
        current = self.current()
        if current is None:
            return False
        with self._commit_lock:
            try:
                bundle = self.validate(current.site_toml)
            except SiteInvalid as exc:  # validated when committed; the people or device files changed since
                log.error("site revision %d no longer validates and is not applied: %s", current.number, exc)
                self._live = current.number
                return False
            log.info("site revision %d (by %s: %s) is live", current.number, current.actor, current.summary)
            self._go_live(current.number, bundle)
        return True

    # ------------------------------------------------------------ people.toml

    def plan_people(self, directory: Path) -> PeopleSet | None:
        """``DIRECTORY/people.toml`` read for an import and checked with the rules of ``doorkeep config check``
        against ``DIRECTORY/site.toml`` when there is one (it goes live with it), else the live revision; None
        without such a file (or a people service). Raises :class:`SiteInvalid` listing every problem."""
        path = Path(directory) / "people.toml"
        if self.people is None or not path.exists():
            return None
        own = Path(directory) / "site.toml"
        try:
            if own.exists():
                site = load_site_file(own)
            else:
                current = self.current()
                if current is None:
                    raise SiteAdminError("the site has no revision yet (fix: start the server once, or import a "
                                         "directory with a site.toml)")
                site = load_site_file(self.site_dir / "site.toml", text=current.site_toml)
            return self.people.load_file(path, site)
        except ConfigErrors as exc:
            raise SiteInvalid(list(exc.errors)) from None
        except PeopleFileInvalid as exc:
            raise SiteInvalid(exc.errors) from None

    def import_people(self, wanted: PeopleSet, *, actor: str, file: str = "people.toml") -> PeopleChanges:
        """Make a planned people.toml (:meth:`plan_people`) the full list of people, live at once; what changed."""
        if self.people is None:
            raise SiteAdminError("people cannot be imported here (no people service)")
        return self.people.apply_file(wanted, actor=actor, file=file)

    def export_people(self, directory: Path) -> Path | None:
        """Write the store's people to ``DIRECTORY/people.toml`` (cards and PINs as keyed hashes); None when the
        store holds no people yet (no server started on it: nothing to export)."""
        if not self.store.people_seeded():
            return None
        current = self.current()
        site_id = load_site_file(self.site_dir / "site.toml", text=current.site_toml).id if current else ""
        return write_people_file(self.store, Path(directory), site_id=site_id)

    def start_polling(self, interval_s: float = 1.0) -> None:
        """Pick up revisions other processes commit (``doorkeep site import`` beside a running server)."""
        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:
                    log.exception("could not check for a new site revision")

        self._stop.clear()
        self._poller = threading.Thread(target=loop, name="doorkeep-siteadmin", daemon=True)
        self._poller.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(5)
            self._poller = None

    # ------------------------------------------------------------ helpers

    def _go_live(self, number: int, bundle: SiteBundle) -> None:
        self._live = number
        if self.apply is not None:
            self.apply(bundle)

    def _conflict(self, base: int, current: int, touched: set[str] | None) -> SiteConflict:
        since = [{"number": r.number, "actor": r.actor, "summary": r.summary, "changes": list(r.changes)}
                 for r in self.history(50, after=base)]
        changed = {_object_of_line(line) for r in since for line in r["changes"]}
        return SiteConflict(base, current, since, (touched & changed) if touched else set())

    def _record(self, actor: str, number: int, summary: str, lines: list[str], rollback_of: int | None) -> None:
        details: dict[str, Any] = {"summary": summary, "changes": lines[:50]}
        if rollback_of is not None:
            details["rollback_of"] = rollback_of
        record_audit(self.audit, actor, "site.revision", f"revision {number}", details)

    @staticmethod
    def _file_text(directory: Path) -> str:
        path = directory / "site.toml"
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteInvalid([ConfigError(str(path), "", f"cannot be read: {exc}", "check the path")]) from None


def _object_of_line(line: str) -> str:
    """The object a stored change line (``~ doors.lab_in.unlock_s: 5 -> 8``) is about."""
    key = line[2:].split(" ", 1)[0].rstrip(":")
    return sitediff.Change(key, None, 1).object


def apply_edits(text: str, edits: dict[str, Any]) -> str:
    """``text`` with each dotted key set (or removed, for None), comments and layout kept (tomlkit)."""
    import tomlkit
    from tomlkit.exceptions import TOMLKitError

    doc = tomlkit.parse(text)
    try:
        _apply(doc, edits)
    except (TOMLKitError, TypeError, ValueError, OverflowError) as exc:  # a value TOML cannot hold (null in a list)
        raise SiteInvalid([ConfigError("site.toml", ", ".join(edits)[:200], f"cannot be written as TOML: {exc}",
                                       "send strings, numbers, booleans, lists and tables only; null removes a "
                                       "key")]) from None
    return tomlkit.dumps(doc)


def _apply(doc: Any, edits: dict[str, Any]) -> None:
    import tomlkit

    for key, value in edits.items():
        parts = key.split(".")
        if not parts or not all(parts):
            raise SiteAdminError(f"{key!r} is not a site key (fix: write it like doors.lab_in.unlock_s)")
        node: Any = doc
        for i, part in enumerate(parts[:-1]):
            if part not in node:
                if value is None:
                    break
                node[part] = tomlkit.table(is_super_table=(i == 0 and parts[0] in sitediff.NAMED_TABLES))
            node = node[part]
            if not isinstance(node, dict):
                raise SiteAdminError(f"{'.'.join(parts[:i + 1])} is a value, not a table (fix: edit {key!r} "
                                     "as a whole)")
        else:
            last = parts[-1]
            if value is None:
                node.pop(last, None)
            elif isinstance(value, dict):
                table = tomlkit.table()
                for k, v in value.items():
                    table[k] = v
                node[last] = table
            else:
                node[last] = value
