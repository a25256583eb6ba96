"""``doorkeep site import|export|history|show|rollback``: thin calls into server/siteadmin.py on the server's store.

They work beside a running server (SQLite WAL): a revision committed here, or people imported here, are picked
up by the server within a second (``SiteAdmin.poll``) and are live at the doors without a restart.
``import`` and ``export`` also carry ``people.toml`` (server/people.py); reading card numbers in it needs the
site's credential key (``SITE/keys/credential.key`` or ``$DOORKEEP_CREDENTIAL_KEY``).
Exit codes: 0 done, 1 refused (invalid site or people, conflict, unknown revision), 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from doorkeep.clock import SystemClock
from doorkeep.config import load_site_dir
from doorkeep.credentials import load_key
from doorkeep.errors import ConfigError, ConfigErrors, DoorkeepError
from server.admin_cli import cli_actor
from server.audit import AuditLog
from server.people import PeopleService
from server.siteadmin import Revision, SiteAdmin, SiteAdminError, SiteInvalid
from server.store import Store
from server.store_url import open_store, resolve_store_url


def _admin(args: argparse.Namespace, cmd: str, *, people: str = "") -> tuple[SiteAdmin, Store] | None:
    """The site service on the server's store. ``people``: "need" attaches the people service (the credential
    key is required), "want" attaches it when the key is there."""
    try:
        bundle = load_site_dir(args.site)
    except (ConfigErrors, ConfigError) as exc:
        print(f"doorkeep site {cmd}: {exc}", file=sys.stderr)
        return None
    data = args.data or Path("var") / bundle.site.id
    store = open_store(data, resolve_store_url(bundle.store))  # the server's store (server/store_url.py)
    clock = SystemClock()
    audit = AuditLog(store, clock)
    admin = SiteAdmin(store, bundle.dir, clock, audit=audit)
    if admin.current() is None:
        admin.start()  # a store that never ran a server: the site directory's file is revision 1
    if people:
        try:
            key = load_key(bundle.credential_key_file, source=str(bundle.dir))
        except DoorkeepError as exc:
            if people == "need":
                print(f"doorkeep site {cmd}: people.toml needs the site's credential key: {exc}", file=sys.stderr)
                store.close()
                return None
        else:
            admin.people = PeopleService(store, key, clock, audit=audit)
            admin.people.seed(bundle)  # a store that never ran a server: the directory's people.toml is imported
    return admin, store


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_revision(rev: Revision, *, changes: bool) -> None:
    extra = f" (rollback to {rev.rollback_of})" if rev.rollback_of else ""
    print(f"revision {rev.number}  {_when(rev.created_at)}  {rev.actor}{extra}\n    {rev.summary}")
    if changes:
        for line in rev.changes:
            print(f"    {line}")


def _run(args: argparse.Namespace, cmd: str, body, *, people: str = "") -> int:  # type: ignore[no-untyped-def]
    opened = _admin(args, cmd, people=people)
    if opened is None:
        return 2
    admin, store = opened
    try:
        return int(body(admin))
    except SiteInvalid as exc:
        print(f"doorkeep site {cmd}: the site is not valid; nothing changed:", file=sys.stderr)
        for e in exc.errors:
            print(f"  {e}", file=sys.stderr)
        return 1
    except SiteAdminError as exc:
        print(f"doorkeep site {cmd}: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()


def site_import(args: argparse.Namespace) -> int:
    has_site, has_people = (args.dir / "site.toml").exists(), (args.dir / "people.toml").exists()
    if not has_site and not has_people:
        print(f"doorkeep site import: {args.dir} has neither site.toml nor people.toml (fix: give the directory "
              "`doorkeep site export` wrote, or one holding the edited files)", file=sys.stderr)
        return 2

    def body(admin: SiteAdmin) -> int:
        wanted = admin.plan_people(args.dir)  # people.toml checked first: an invalid one changes nothing at all
        if has_site:
            before = admin.current()
            rev = admin.import_dir(args.dir, actor=cli_actor(), people=wanted)
            if before is not None and rev.number == before.number:
                print(f"no change: {args.dir / 'site.toml'} is revision {rev.number}, the live one")
            else:
                print(f"site revision {rev.number} is live: {rev.summary}")
                for line in rev.changes:
                    print(f"    {line}")
        if wanted is not None:
            changes = admin.import_people(wanted, actor=cli_actor(), file=str(args.dir / "people.toml"))
            if not changes:
                print(f"no change: {args.dir / 'people.toml'} holds the live people")
                for line in changes.kept_lines():
                    print(f"    {line}")
            else:
                print(f"people are live: {changes.summary()}")
                for line in changes.lines():
                    print(f"    {line}")
            for pid in changes.erased:
                print(f"    skipped {pid}: erased (doorkeep subject erase); remove them from the file")
        return 0
    return _run(args, "import", body, people="need" if has_people else "want")


def site_export(args: argparse.Namespace) -> int:
    def body(admin: SiteAdmin) -> int:
        path = admin.export_dir(args.dir)
        current = admin.current()
        print(f"wrote {path} (site revision {current.number if current else '?'})")
        people = admin.export_people(args.dir)
        if people is not None:
            print(f"wrote {people} (cards and PINs as keyed hashes: import it only with this site's credential key)")
        else:
            print("people.toml not written: the store holds no people yet (start the server once, or give the "
                  "credential key)", file=sys.stderr)
        return 0
    return _run(args, "export", body, people="want")


def site_history(args: argparse.Namespace) -> int:
    def body(admin: SiteAdmin) -> int:
        for rev in admin.history(args.limit):
            _print_revision(rev, changes=False)
        return 0
    return _run(args, "history", body)


def site_show(args: argparse.Namespace) -> int:
    def body(admin: SiteAdmin) -> int:
        _print_revision(admin.revision(args.number), changes=True)
        return 0
    return _run(args, "show", body)


def site_rollback(args: argparse.Namespace) -> int:
    def body(admin: SiteAdmin) -> int:
        if not args.yes:
            target = admin.revision(args.number)
            print(f"doorkeep site rollback: this makes revision {target.number} ({target.summary}) live again "
                  "as a new revision; add --yes to do it", file=sys.stderr)
            return 2
        rev = admin.rollback(args.number, actor=cli_actor())
        print(f"site revision {rev.number} is live: {rev.summary}")
        for line in rev.changes:
            print(f"    {line}")
        return 0
    return _run(args, "rollback", body)
