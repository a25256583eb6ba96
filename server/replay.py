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
import sys
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Iterator
from zoneinfo import ZoneInfo

from doorkeep.clock import SystemClock, iso_ms, parse_iso_ms
from doorkeep.config import SiteBundle, load_site_dir
from doorkeep.credentials import card_hash, load_key
from doorkeep.decision import Reason
from doorkeep.errors import ConfigError, ConfigErrors, DoorkeepError
from doorkeep.model import Site
from doorkeep.replay import (CODES, LockdownChange, RecordedAttempt, Record, ReplayReport, render_text, replay,
                             side_codes)
from server.directory import Directory
from server.errors import ServerError
from server.store import StoredAccessEvent, Store

log = logging.getLogger("doorkeep.server.replay")

#: Recorded reasons that show a PIN was asked for at the badge.
_PIN_REASONS = frozenset({Reason.WRONG_PIN.value, Reason.PIN_REQUIRED.value, Reason.PIN_LOCKED_OUT.value})
#: The default period of ``doorkeep site diff --replay`` (and of the desk's preview): the last 30 days.
DEFAULT_DAYS = 30


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
    """:func:`doorkeep.replay.replay`, with the proposed site's side in a forked child process.

    The two replays are independent until they are compared, and each is pure Python: on two cores a million
    recorded decisions took 13.0 s instead of 18.5 s (bench/replay.py). The child makes its own pass over the records
    (``make_records`` is called once in each process; it must not use a database connection opened before
    the fork) and sends one byte per attempt (:data:`doorkeep.replay.CODES`) back through a pipe, which the
    comparison here reads in step. Where ``fork`` is not available, or the child fails, it is one process.
    """
    if "fork" not in multiprocessing.get_all_start_methods() or len(CODES) > 256:
        return replay(make_records(), current, proposed)
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child() -> None:
        buf = bytearray()
        for code in side_codes(make_records(), proposed, current):
            buf.append(code)
            if len(buf) >= 65536:
                send.send_bytes(bytes(buf))
                buf.clear()
        send.send_bytes(bytes(buf))
        send.send_bytes(b"")  # the end
        send.close()

    proc = ctx.Process(target=child, name="doorkeep-replay-proposed", daemon=True)
    proc.start()
    send.close()

    def codes() -> Iterator[int]:
        while True:
            try:
                chunk = receive.recv_bytes()
            except EOFError:
                raise ServerError("the proposed site's replay process ended early (see its error above)") from None
            if not chunk:
                return
            yield from chunk

    try:
        return replay(make_records(), current, proposed, proposed_codes=codes())
    finally:
        receive.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def preview(store: Store, current: Site, proposed: Site, *, since: float, visitor_cards: frozenset[str] = frozenset(),
            ) -> ReplayReport:
    """Replay the events stored since ``since`` (UTC epoch) with both sites, on two cores."""
    visitors = frozenset(r["id"] for r in store.rows("visitors"))
    data_dir, opened_in = store.dir, os.getpid()

    def make_records() -> Iterator[Record]:
        if os.getpid() == opened_in:
            yield from records(store.access_events_since(iso_ms(since)), current, visitor_cards, visitors)
            return
        own = Store(data_dir)  # the forked child: SQLite connections must not cross a fork
        try:
            yield from records(own.access_events_since(iso_ms(since)), current, visitor_cards, visitors)
        finally:
            own.close()

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
    if not (data / "doorkeep.db").exists():
        raise _Usage(f"doorkeep site diff: no store in {data} (fix: pass the server's --data directory)")
    try:
        key = load_key(current_bundle.credential_key_file, source=str(current_bundle.dir))
    except DoorkeepError as exc:
        raise _Usage(f"doorkeep site diff: {exc}") from exc
    pool = frozenset(card_hash(key, c.format, c.number) for c in current_bundle.visitor_pool)
    store = Store(data)
    try:
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
