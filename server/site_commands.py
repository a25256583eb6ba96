"""``doorkeep site import|export|history|show|rollback``: thin calls into server/siteadmin.py on the server's store.

They work beside a running server (SQLite WAL): a revision committed here is picked up by the server
within a second (``SiteAdmin.poll``) and is live at the doors without a restart.
Exit codes: 0 done, 1 refused (invalid site, conflict, unknown revision), 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from doorkeep.clock import SystemClock
from doorkeep.config import load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from server.admin_cli import cli_actor
from server.audit import AuditLog
from server.siteadmin import Revision, SiteAdmin, SiteAdminError, SiteInvalid
from server.store import Store


def _admin(args: argparse.Namespace, cmd: str) -> tuple[SiteAdmin, Store] | None:
    try:
        bundle = load_site_dir(args.site)
    except (ConfigErrors, ConfigError) as exc:
        print(f"doorkeep site {cmd}: {exc}", file=sys.stderr)
        return None
    data = args.data or Path("var") / bundle.site.id
    store = Store(data)
    clock = SystemClock()
    admin = SiteAdmin(store, bundle.dir, clock, audit=AuditLog(store, clock))
    if admin.current() is None:
        admin.start()  # a store that never ran a server: the site directory's file is revision 1
    return admin, store


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _print_revision(rev: Revision, *, changes: bool) -> None:
    extra = f" (rollback to {rev.rollback_of})" if rev.rollback_of else ""
    print(f"revision {rev.number}  {_when(rev.created_at)}  {rev.actor}{extra}\n    {rev.summary}")
    if changes:
        for line in rev.changes:
            print(f"    {line}")


def _run(args: argparse.Namespace, cmd: str, body) -> int:  # type: ignore[no-untyped-def]
    opened = _admin(args, cmd)
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
    def body(admin: SiteAdmin) -> int:
        before = admin.current()
        rev = admin.import_dir(args.dir, actor=cli_actor())
        if before is not None and rev.number == before.number:
            print(f"no change: {args.dir / 'site.toml'} is revision {rev.number}, the live one")
        else:
            print(f"site revision {rev.number} is live: {rev.summary}")
            for line in rev.changes:
                print(f"    {line}")
        return 0
    return _run(args, "import", body)


def site_export(args: argparse.Namespace) -> int:
    def body(admin: SiteAdmin) -> int:
        path = admin.export_dir(args.dir)
        current = admin.current()
        print(f"wrote {path} (site revision {current.number if current else '?'})")
        return 0
    return _run(args, "export", body)


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
