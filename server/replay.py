"""``doorkeep site diff --replay DAYS``: a proposed site judged against the badges really recorded.

Reads the access and lockdown events of the last DAYS from the server's
store (:meth:`Store.access_events_since`, streamed) and runs the pure engine
(:mod:`doorkeep.replay`) with the current site and the proposed one, both
built as the server builds its live site (:class:`server.directory.Directory`:
the site files, people.toml, the desk's people and cards, visitors, card
states), so the only difference between them is the edit under review.

Lockdowns in force now are not carried into the replay: the replay applies
the recorded ``lockdown`` events at their time instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import traceback
import sys
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Callable, Iterable, Iterator
from zoneinfo import ZoneInfo

from doorkeep.clock import SystemClock, iso_ms, parse_iso_ms
from doorkeep.config import SiteBundle, load_site_dir
from doorkeep.credentials import load_key
from doorkeep.decision import Reason
from doorkeep.errors import ConfigError, ConfigErrors, DoorkeepError
from doorkeep.model import Site
from doorkeep.replay import (CODES, LockdownChange, RecordedAttempt, Record, ReplayMismatch, ReplayReport,
                             render_text, replay, side_code_chunks)
from server.directory import Directory
from server.errors import ServerError
from server.store import StoredAccessEvent, Store, read_access_events
from server.store_url import open_store, resolve_store_url, store_present

log = logging.getLogger("doorkeep.server.replay")

#: Recorded reasons that show a PIN was asked for at the badge.
_PIN_REASONS = frozenset({Reason.WRONG_PIN.value, Reason.PIN_REQUIRED.value, Reason.PIN_LOCKED_OUT.value})
#: The default period of ``doorkeep site diff --replay`` (and of the desk's preview): the last 30 days.
DEFAULT_DAYS = 30
#: How long the comparison waits for the next codes of the proposed site's process before replaying alone.
CHILD_SILENCE_S = 20.0


def live_site(bundle: SiteBundle, key: bytes, store: Store) -> Site:
    """The site as the server would run it from ``bundle`` and this store, without today's lockdowns."""
    site = Directory(bundle, key, store, SystemClock()).site
    return dataclasses.replace(site, lockdowns=frozenset())


def records(rows: Iterable[StoredAccessEvent], current: Site, visitor_cards: frozenset[str],
            visitors: frozenset[str]) -> Iterator[Record]:
    """The engine's records from stored rows; a row that cannot be read is counted, logged and skipped."""
    bad = 0
    for row in rows:
        try:
            ts = parse_iso_ms(row.ts)
            if row.type == "lockdown":
                detail = json.loads(row.detail or "{}")
                scope, active = detail.get("scope"), detail.get("active")
                if not isinstance(scope, str) or not isinstance(active, bool):
                    raise ValueError(f"lockdown detail without scope/active: {detail!r}")
                yield LockdownChange(ts, scope, active)
                continue
            door = current.doors.get(row.door)
            yield RecordedAttempt(
                ts=ts, door=row.door, credential_hash=row.credential_hash, granted=row.decision == "granted",
                reason=row.reason, person=row.person, decided_by=row.decided_by,
                pin=row.reason in _PIN_REASONS or (door is not None and door.pin_required),
                visitor=row.credential_hash in visitor_cards or row.person in visitors, event_id=row.id)
        except (ValueError, TypeError) as exc:
            bad += 1
            log.warning("event %s skipped by the replay: %s", row.id, exc)
    if bad:
        log.warning("%d stored events could not be read and were skipped by the replay", bad)


def replay_on_two_cores(make_records: Callable[[], Iterable[Record]], current: Site, proposed: Site) -> ReplayReport:
    """:func:`doorkeep.replay.replay`, with the proposed site's replay in a forked child process.

    The two replays are independent until they are compared, and each is pure Python: on two cores a million
    recorded decisions take little more than one replay (bench/replay.py). The child makes its own pass over
    the records (``make_records`` is called once in each process; it must not use a database connection
    opened before the fork, and must give both processes the same records) and sends one byte per attempt
    (:data:`doorkeep.replay.CODES`) back through a pipe, in chunks that start small so the comparison here
    starts at once and reads them in step; then how many records it read and a digest of their times, which
    must be this process's. Where ``fork`` is not available it is one process; when the child fails, falls
    silent for :data:`CHILD_SILENCE_S` (a fork of a busy server can inherit a lock another thread held), or read
    other records (an event stored meanwhile with an older time), the replay is made again in one process.
    """
    if not hasattr(os, "fork") or len(CODES) > 256:
        return replay(make_records(), current, proposed)
    receive, send = multiprocessing.Pipe(duplex=False)

    def child() -> None:
        tally = _Tally()
        try:
            for chunk in side_code_chunks(tally.over(make_records()), proposed, current):
                send.send_bytes(chunk)
            send.send_bytes(b"")  # the end of the codes
            send.send_bytes(tally.token())
        except BrokenPipeError:  # the parent stopped reading: it found a mismatch and replays alone
            pass
        finally:
            send.close()

    # A bare fork, not multiprocessing.Process: its start-up closes the child's stdin and flushes its standard
    # streams, which blocks for ever when another thread of the server held their lock at the fork (the demo's
    # thread reading typed badges does, always). The child touches neither, logs nothing and leaves with
    # os._exit, so no lock another thread held can stop it.
    pid = os.fork()
    if pid == 0:  # the child
        try:
            receive.close()
            logging.disable(logging.CRITICAL)  # what it would log, the parent logs too (same records)
            child()
        except BaseException:  # straight to the descriptor: sys.stderr's lock may be held by a parent's thread
            os.write(2, f"doorkeep impact preview, proposed side:\n{traceback.format_exc()}".encode())
        finally:
            os._exit(0)
    send.close()

    def receive_bytes() -> bytes:
        try:
            if not receive.poll(CHILD_SILENCE_S):
                raise _ChildFailed(f"the proposed site's replay process sent nothing for {CHILD_SILENCE_S:g} s")
            return receive.recv_bytes()
        except EOFError:
            raise _ChildFailed("the proposed site's replay process ended early (see its error above)") from None

    def chunks() -> Iterator[bytes]:
        while chunk := receive_bytes():
            yield chunk

    try:
        tally = _Tally()
        codes = chain.from_iterable(chunks())
        report = replay(tally.over(make_records()), current, proposed, proposed_codes=codes)
        if next(codes, None) is not None or receive_bytes() != tally.token():
            raise ReplayMismatch("the two processes read different records")
        return report
    except (_ChildFailed, ReplayMismatch) as exc:
        log.warning("impact preview: %s; replaying both sites in this process instead", exc)
        _kill(pid)
    finally:
        receive.close()
        _reap(pid)
    return replay(make_records(), current, proposed)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the child. Its codes are read (or given up on) by now, so nothing it could still do matters:
    it is killed rather than waited for, and cannot outlive the preview."""
    _kill(pid)
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class _ChildFailed(ServerError):
    """The proposed site's replay process ended before its last code."""


class _Tally:
    """How many records a process read and the sum of their times' hashes: the two processes of
    :func:`replay_on_two_cores` compare them (the fork keeps the hash seed)."""

    def __init__(self) -> None:
        self.count = 0
        self.digest = 0

    def over(self, records: Iterable[Record]) -> Iterator[Record]:
        count, digest = 0, 0
        try:
            for rec in records:
                count += 1
                digest += hash(rec.ts)
                yield rec
        finally:
            self.count, self.digest = count, digest

    def token(self) -> bytes:
        return f"{self.count} {self.digest}".encode()


def preview(store: Store, current: Site, proposed: Site, *, since: float, until: float | None = None,
            visitor_cards: frozenset[str] = frozenset()) -> ReplayReport:
    """Replay the events stored from ``since`` to ``until`` (UTC epoch; default: now) with both sites, on two cores.

    ``until`` is fixed before the replay starts, so the badges recorded while it runs are left out of both
    processes alike.
    """
    visitors = frozenset(r["id"] for r in store.rows("visitors"))
    data_dir, url, opened_in = store.dir, store.url, os.getpid()
    first, last = iso_ms(since), iso_ms(SystemClock().wall() if until is None else until)

    def upto(rows: Iterable[StoredAccessEvent]) -> Iterator[StoredAccessEvent]:
        for row in rows:
            if row.ts > last:
                return
            yield row

    def make_records() -> Iterator[Record]:
        if os.getpid() == opened_in:
            yield from records(upto(store.access_events_since(first)), current, visitor_cards, visitors)
            return
        # The forked child: SQLite connections must not cross a fork, and a running server's store must not be
        # opened again (its start-up takes locks the server's store thread may hold): a read-only connection.
        yield from records(upto(read_access_events(data_dir, first, url=url)), current, visitor_cards, visitors)

    return replay_on_two_cores(make_records, current, proposed)


class _Usage(Exception):
    """Reported with exit code 2."""


def _bundle(path: Path, what: str) -> SiteBundle:
    try:
        return load_site_dir(path)
    except (ConfigErrors, ConfigError) as exc:
        raise _Usage(f"doorkeep site diff: the {what} site {path} is not valid:\n{exc}") from exc


def site_diff(args: argparse.Namespace) -> int:
    """``doorkeep site diff --replay DAYS --site CURRENT --proposed PROPOSED [--data DIR] [--json]``."""
    try:
        return _site_diff(args)
    except _Usage as exc:
        print(exc, file=sys.stderr)
        return 2
    except (ServerError, DoorkeepError) as exc:
        print(f"doorkeep site diff: {exc}", file=sys.stderr)
        return 2


def _site_diff(args: argparse.Namespace) -> int:
    days = args.replay
    if not days > 0:
        raise _Usage(f"doorkeep site diff: --replay must be a positive number of days, got {days}")
    current_bundle = _bundle(args.site, "current")
    proposed_bundle = _bundle(args.proposed, "proposed")
    if proposed_bundle.site.id != current_bundle.site.id:
        raise _Usage(f"doorkeep site diff: the proposed site is {proposed_bundle.site.id!r}, not "
                     f"{current_bundle.site.id!r} (fix: edit a copy of the current site directory)")
    data = args.data or Path("var") / current_bundle.site.id
    store_url = resolve_store_url(current_bundle.store)  # the store the server uses (server/store_url.py)
    if not store_present(data, store_url):
        raise _Usage(f"doorkeep site diff: no store in {data} (fix: pass the server's --data directory)")
    try:
        key = load_key(current_bundle.credential_key_file, source=str(current_bundle.dir))
    except DoorkeepError as exc:
        raise _Usage(f"doorkeep site diff: {exc}") from exc
    store = open_store(data, store_url)
    try:
        pool = frozenset(row["hash"] for row in store.pool_rows())  # the visitor badges (server/people.py)
        current = live_site(current_bundle, key, store)
        proposed = live_site(proposed_bundle, key, store)
        since = SystemClock().wall() - days * 86400.0
        report = preview(store, current, proposed, since=since, visitor_cards=pool)
    finally:
        store.close()
    if args.json:
        print(json.dumps({"site": current.id, "days": days, **report.to_dict()}, indent=2, sort_keys=True))
        return 0
    tz = ZoneInfo(current.timezone)
    names = {pid: p.name for pid, p in current.people.items()}
    names.update({pid: p.name for pid, p in proposed.people.items() if pid not in names})
    print(f"Impact of {args.proposed} on {current.name}: the last {days:g} days replayed ({current.timezone})\n")
    print(render_text(report, names=names,
                      fmt_ts=lambda t: datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S")))
    return 0
