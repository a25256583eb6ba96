"""``doorkeep server --site DIR``: run the central server until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from server.app import bootstrap
from server.errors import ServerError

log = logging.getLogger("doorkeep.server")


def run(args: argparse.Namespace) -> int:
    try:
        bundle = load_site_dir(args.site)
        data = args.data or Path("var") / bundle.site.id
        server = bootstrap(bundle, data, BrokerConfig(args.broker))
    except (ConfigErrors, ConfigError, ServerError) as exc:
        print(f"doorkeep server: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.start()
    log.info("server for site %s running; store in %s; Ctrl-C to stop", bundle.site.id, data)
    try:
        stop.wait()
    finally:
        server.stop()
    return 0
