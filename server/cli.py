"""``doorkeep server --site DIR``: run the central server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from sdnotify import SystemdNotifier

from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.policy import PolicyError
from server.app import bootstrap
from server.errors import ServerError

log = logging.getLogger("doorkeep.server")


def run(args: argparse.Namespace) -> int:
    try:
        timeouts = _supervision_timeouts(args)
        bundle = load_site_dir(args.site)
        data = args.data or Path("var") / bundle.site.id
        server = bootstrap(bundle, data, BrokerConfig(args.broker), **timeouts)
    except (ConfigErrors, ConfigError, ServerError, PolicyError, ValueError) as exc:
        print(f"doorkeep server: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log.info("server for site %s running; store in %s; Ctrl-C to stop", bundle.site.id, data)
    notifier = SystemdNotifier()
    notifier.notify("READY=1")
    interval = _watchdog_interval()
    try:
        # Under systemd, ping the watchdog while the store thread is alive (events are being stored).
        while not stop.wait(interval or 3600):
            if interval and server.bus.healthy:
                notifier.notify("WATCHDOG=1")
    finally:
        notifier.notify("STOPPING=1")
        server.stop()
    return 0


def _watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC), or None when no watchdog is asked for."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def _supervision_timeouts(args: argparse.Namespace) -> dict[str, float]:
    """``--device-timeout S`` and ``--gap-timeout S`` (docs/alarms.md); absent flags keep the defaults."""
    out = {}
    for flag, name in (("device_timeout", "device_timeout_s"), ("gap_timeout", "gap_timeout_s")):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if not value > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be a positive number of seconds, got {value}")
        out[name] = float(value)
    return out


def muster(args: argparse.Namespace) -> int:
    """Roll call from the server's store: who is in which area now, visitors with their hosts."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from server.store import Store

    try:
        bundle = load_site_dir(args.site)
    except (ConfigErrors, ConfigError) as exc:
        print(f"doorkeep muster: {exc}", file=sys.stderr)
        return 2
    site = bundle.site
    data = args.data or Path("var") / site.id
    if not (data / "doorkeep.db").exists():
        print(f"doorkeep muster: no store in {data} (fix: pass the server's --data directory)", file=sys.stderr)
        return 2
    store = Store(data)
    try:
        visitors = {v["id"]: v for v in store.rows("visitors")}
        presence = sorted(store.rows("presence"), key=lambda r: (r["area"], r["person"]))
    finally:
        store.close()
    tz = ZoneInfo(site.timezone)
    names = {pid: p.name for pid, p in bundle.people.items()}
    print(f"Muster for {site.name} — {datetime.now(tz):%Y-%m-%d %H:%M} {site.timezone}")
    inside = [r for r in presence if r["area"] != "outside"]
    for area_id in sorted({r["area"] for r in inside}):
        rows = [r for r in inside if r["area"] == area_id]
        area = site.areas.get(area_id)
        print(f"\n{area.name if area else area_id} ({len(rows)})")
        for r in rows:
            since = datetime.fromtimestamp(r["since"], tz).strftime("%H:%M")
            v = visitors.get(r["person"])
            if v is not None:
                host = names.get(v["host"], v["host"])
                print(f"  {v['name']:28} visitor, host {host}, since {since}")
            else:
                print(f"  {names.get(r['person'], r['person']):28} since {since}")
    print(f"\n{len(inside)} on site")
    return 0
