"""``doorkeep audit …``, ``doorkeep retention run`` and ``doorkeep subject …``: thin calls into
server/audit.py, server/retention.py and server/subjects.py on the server's store.

Exit codes: 0 done / ok, 1 the check failed or the person is unknown, 2 usage or configuration errors.
They work while the server runs (SQLite WAL; each write is its own short transaction).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from doorkeep.config import SiteBundle, load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors, DoorkeepError
from server.audit import AuditLog, subject_ref
from server.errors import ServerError
from server.store import Store
from server.store_url import open_store, resolve_store_url, store_present


class UsageError(Exception):
    """A problem with how a command was run (bad site, no store): reported with exit code 2."""


def cli_actor() -> str:
    """Who ran a command, for the audit log: ``cli:`` and the operating-system account (``cli:system`` if
    it has no name). The prefix keeps shell users apart from the desk's operators."""
    try:
        return f"cli:{getpass.getuser() or 'system'}"
    except (KeyError, OSError):
        return "cli:system"


@contextmanager
def _open(args: argparse.Namespace, cmd: str, *, snapshots: bool = False) -> Iterator[tuple[SiteBundle, Store]]:
    """The site bundle and the server's existing store (``--data``, default var/SITE)."""
    try:
        bundle = load_site_dir(args.site)
    except (ConfigErrors, ConfigError) as exc:
        raise UsageError(f"doorkeep {cmd}: {exc}") from exc
    data = args.data or Path("var") / bundle.site.id
    store_url = resolve_store_url(bundle.store)  # the store the server uses (server/store_url.py)
    if not store_present(data, store_url):
        raise UsageError(f"doorkeep {cmd}: no store in {data} (fix: pass the server's --data directory)")
    keys = None
    if snapshots:
        from doorkeep.envelope import load_snapshot_keys

        try:
            keys = load_snapshot_keys(bundle.dir / "keys", source=str(bundle.dir))
        except DoorkeepError as exc:
            raise UsageError(f"doorkeep {cmd}: {exc}") from exc
    store = open_store(data, store_url, keys=keys)
    try:
        yield bundle, store
    finally:
        store.close()


def _key(bundle: SiteBundle, cmd: str) -> bytes:
    from doorkeep.credentials import load_key

    try:
        return load_key(bundle.credential_key_file, source=str(bundle.dir))
    except DoorkeepError as exc:
        raise UsageError(f"doorkeep {cmd}: {exc}") from exc


def _run(cmd: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (ServerError, DoorkeepError) as exc:
        print(f"doorkeep {cmd}: {exc}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------ audit


def audit_verify(args: argparse.Namespace) -> int:
    """Prints ``ok: N records`` (exit 0) or the first bad record and what is wrong (exit 1)."""
    def body() -> int:
        with _open(args, "audit verify") as (_, store):
            result = AuditLog(store).verify()
        for note in result.notes:
            print(f"note: {note}")
        if result.ok:
            print(f"ok: {result.count} records")
            return 0
        print(f"BAD: record {result.first_bad}: {result.problem}: {result.message} "
              f"({result.count} records before it verified)")
        return 1
    return _run("audit verify", body)


def audit_show(args: argparse.Namespace) -> int:
    """The newest records as a plain table; pseudonyms of people still known are shown with their id."""
    def body() -> int:
        with _open(args, "audit show") as (bundle, store):
            rows = AuditLog(store).records(limit=args.limit)
            names: dict[str, str] = {}
            try:
                key = _key(bundle, "audit show")
            except UsageError:
                key = None  # without the key, pseudonyms stay pseudonyms
            if key is not None:  # the store's people (server/people.py), the file's, and the visitors
                ids = [r["id"] for r in store.people_rows()] + list(bundle.people) \
                    + [r["id"] for r in store.visitor_records()]
                names = {subject_ref(key, pid): pid for pid in ids}
        print(f"{'seq':>6}  {'time (UTC)':24}  {'actor':12}  {'action':22}  {'target':28}  details")
        for r in reversed(rows):
            target = r["target"] or ""
            if target in names:
                target = f"{target} ({names[target]})"
            details = ", ".join(f"{k}={v}" for k, v in sorted(r["details"].items()))
            print(f"{r['seq']:>6}  {r['ts']:24}  {r['actor']:12}  {r['action']:22}  {target:28}  {details}")
        return 0
    return _run("audit show", body)


# -------------------------------------------------------------- retention


def retention_run(args: argparse.Namespace) -> int:
    """Delete what is past its retention period now and print what went (``--dry-run``: only count)."""
    from server.retention import run_retention

    def body() -> int:
        with _open(args, "retention run", snapshots=True) as (bundle, store):
            now = datetime.now(timezone.utc).timestamp()
            report = run_retention(store, bundle.retention, now, AuditLog(store), dry_run=args.dry_run,
                                   actor=cli_actor())
        for line in report.lines():
            print(line)
        return 0
    return _run("retention run", body)


# --------------------------------------------------------------- subjects


def subject_export(args: argparse.Namespace) -> int:
    from server import subjects

    def body() -> int:
        with _open(args, "subject export", snapshots=True) as (bundle, store):
            now = datetime.now(timezone.utc).timestamp()
            counts = subjects.export(bundle, store, _key(bundle, "subject export"), args.person, args.out,
                                     AuditLog(store), now=now, actor=cli_actor())
        print(f"wrote {args.out} (mode 0600): " + ", ".join(f"{n} {k}" for k, n in counts.items()))
        return 0
    return _run("subject export", body)


def subject_erase(args: argparse.Namespace) -> int:
    from server import subjects

    def body() -> int:
        if not args.yes:
            raise UsageError(f"doorkeep subject erase: this deletes everything held about {args.person!r} for good "
                         f"(fix: add --yes to confirm)")
        with _open(args, "subject erase", snapshots=True) as (bundle, store):
            now = datetime.now(timezone.utc).timestamp()
            out = subjects.erase(bundle, store, _key(bundle, "subject erase"), args.person, AuditLog(store),
                                 now=now, actor=cli_actor())
        print(f"erased {args.person!r}; now known as {out['ref']}: "
              + ", ".join(f"{n} {k}" for k, n in out["counts"].items()))
        if out["configured"]:
            print(f"WARNING: {args.person!r} is still listed in {bundle.dir / 'people.toml'}, which holds their "
                  f"name and cards: remove them there (an import skips them: they stay erased)")
        print("a running server drops them from its decisions within a second; restart it so that it also "
              "forgets what it holds in memory (presence)")
        return 0
    return _run("subject erase", body)
