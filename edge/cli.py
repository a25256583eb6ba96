"""``doorkeep edge --device FILE``: run one edge agent until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading

from sdnotify import SystemdNotifier

from doorkeep.config import load_device
from doorkeep.credentials import load_key
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.policy import PolicyError, load_public_key
from edge.errors import EdgeError

log = logging.getLogger("doorkeep.edge")


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC), or None when no watchdog is asked for."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


def run(args: argparse.Namespace) -> int:
    from edge.agent import EdgeAgent

    try:
        device, site = load_device(args.device)
        if args.broker:
            # Only the URL changes: the device file's TLS files (ca_file, cert_file, key_file) still apply.
            device = dataclasses.replace(device, broker=dataclasses.replace(device.broker, url=args.broker))
        key = load_key(device.credential_key_file, source=device.file)
        policy_key = load_public_key(device.policy_key_file) if device.policy_key_file else None
        if policy_key is None:
            log.warning("no policy_key_file in %s: this edge keeps no offline policy and denies "
                        "whenever the server does not answer", device.file)
        agent = EdgeAgent(device, site, key, policy_key=policy_key, state_dir=device.state_dir)
    except (ConfigErrors, ConfigError, EdgeError, PolicyError) as exc:
        print(f"doorkeep edge: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    agent.start()
    log.info("edge %s running %d door(s); Ctrl-C to stop", device.id, len(device.doors))
    notifier = SystemdNotifier()
    notifier.notify("READY=1")
    interval = watchdog_interval()
    try:
        # Under systemd (firmware-config/systemd/), ping the watchdog only while the door control loop
        # answers: a hung loop stops the pings, and systemd restarts the agent into the locked state.
        while not stop.wait(interval or 3600):
            if interval and agent.sync(timeout=interval):
                notifier.notify("WATCHDOG=1")
    finally:
        notifier.notify("STOPPING=1")
        agent.stop()
        log.info("edge %s stopped; relays de-energised", device.id)
    return 0
