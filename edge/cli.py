"""``doorkeep edge --device FILE``: run one edge agent until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from sdnotify import SystemdNotifier

from doorkeep.config import load_device, load_intrusion_settings
from doorkeep.credentials import load_key
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.logfmt import set_defaults as set_log_defaults
from doorkeep.pki import check_transport
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
    # numpy and OpenCV each load an OpenBLAS that starts a worker thread per extra core at import; the edge does
    # no linear algebra, so it asks for none. Read only at that import, hence here, before edge.agent pulls them in
    # (docs/performance.md, "Edge footprint"). The application's choice, so not made in a library module.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from edge.agent import EdgeAgent

    try:
        device, site = load_device(args.device)
        set_log_defaults(logging.getLogger(), device=device.id)  # every JSON log line of this process names it
        if args.broker:
            # Only the URL changes: the device file's TLS files (ca_file, cert_file, key_file) still apply.
            device = dataclasses.replace(device, broker=dataclasses.replace(device.broker, url=args.broker))
        if getattr(args, "allow_plain_mqtt", False):
            device = dataclasses.replace(device, broker=dataclasses.replace(device.broker, allow_plain=True))
        check_transport(device.broker)  # plain mqtt:// refused without the flag, before any hardware is touched
        key = load_key(device.credential_key_file, source=device.file)
        policy_key = load_public_key(device.policy_key_file) if device.policy_key_file else None
        if policy_key is None:
            log.warning("no policy_key_file in %s: this edge keeps no offline policy and denies "
                        "whenever the server does not answer", device.file)
        # The readers' reader_security thresholds from the site file; without one, the signed policy's.
        intrusion = load_intrusion_settings(device.site_file) if device.site_file is not None else None
        agent = EdgeAgent(device, site, key, policy_key=policy_key, state_dir=device.state_dir, intrusion=intrusion)
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
        # Under systemd (firmware-config/systemd/), ping the watchdog only while the edge's loop and jobs worker
        # answer: a hung loop stops the pings, and systemd restarts the agent into the locked state.
        while not stop.wait(interval or 3600):
            if interval and agent.sync(timeout=interval):
                notifier.notify("WATCHDOG=1")
    finally:
        notifier.notify("STOPPING=1")
        agent.stop()
        log.info("edge %s stopped; relays de-energised", device.id)
    return 0


INSTALL_KEY_WARNING = (
    "doorkeep osdp install-key: WARNING: the new key is sent under the public default key SCBK-D, so anyone "
    "listening on the RS-485 bus at {url} learns it. Install keys on an isolated bus: the reader alone on its "
    "wire, disconnected from the building's bus, with no other device attached (docs/readers.md)."
)


def osdp_install_key(args: argparse.Namespace) -> int:
    """``doorkeep osdp install-key DOOR --device FILE``: the only way doorkeep ever re-keys a reader.

    The reader must still be on its default key SCBK-D (factory state): a Secure Channel is opened with SCBK-D,
    a fresh random SCBK is sent with KEYSET, and only once the reader acknowledged it is the key file (0600)
    moved into place; the reader is then checked online under the new key. The act is recorded as a
    ``reader_key_installed`` event in the edge's outbox, sent to the server when the agent next runs.
    Run it with the edge agent stopped: both would otherwise drive the same bus.

    The new key is sent encrypted only under SCBK-D, which every reader ships with and the OSDP standard
    publishes: anyone listening on the RS-485 wire during the install learns the key. So, before anything
    is opened, the command says on stderr to do it on an isolated bus, the reader alone on its wire
    (:data:`INSTALL_KEY_WARNING`; docs/readers.md "Installing a key").
    """
    import getpass
    import hashlib
    import secrets
    import uuid

    from doorkeep.clock import SystemClock, iso_ms
    from doorkeep.contract import EventMsg, Topics
    from edge.osdp.cp import OsdpBus, OsdpReaderSpec
    from edge.osdp.keys import write_scbk
    from edge.outbox import Outbox

    def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
        deadline, pause = time.monotonic() + timeout, threading.Event()
        while not cond():
            if time.monotonic() >= deadline:
                return False
            pause.wait(0.05)
        return True

    try:
        device, _ = load_device(args.device)  # the hardware part is all this needs
    except (ConfigErrors, ConfigError) as exc:
        print(f"doorkeep osdp install-key: {exc}", file=sys.stderr)
        return 2
    hw = device.doors.get(args.door)
    if hw is None or hw.reader.protocol != "osdp":
        print(f"doorkeep osdp install-key: {device.file}: door {args.door!r} has no OSDP reader "
              f"(fix: one of {', '.join(d for d, h in device.doors.items() if h.reader.protocol == 'osdp') or 'none'})",
              file=sys.stderr)
        return 2
    rc = hw.reader
    if not rc.secure_channel or rc.scbk_file is None:
        print(f"doorkeep osdp install-key: {device.file}: doors.{args.door}.reader has secure_channel = false "
              "(fix: set scbk_file and remove secure_channel = false first)", file=sys.stderr)
        return 2
    if rc.scbk_file.exists():
        print(f"doorkeep osdp install-key: {rc.scbk_file} already exists: the reader has a key "
              "(fix: to re-key, reset the reader to its default key and move the old file away)", file=sys.stderr)
        return 1
    print(INSTALL_KEY_WARNING.format(url=rc.url), file=sys.stderr, flush=True)
    bus = OsdpBus(rc.url, [OsdpReaderSpec(args.door, rc.address, None)], lambda *_: None,
                  baudrate=rc.baudrate, poll_ms=rc.poll_ms)
    try:
        bus.start()
    except EdgeError as exc:
        print(f"doorkeep osdp install-key: {exc}", file=sys.stderr)
        return 1
    try:
        if not wait_until(lambda: bus.stats(rc.address).reason == "needs_key", args.timeout):
            reason = bus.stats(rc.address).reason
            print(f"doorkeep osdp install-key: the reader at {rc.url} address {rc.address} is not on its default "
                  f"key (state: {reason or 'unknown'}); nothing changed", file=sys.stderr)
            return 1
        key = secrets.token_bytes(16)
        try:
            tmp = write_scbk(rc.scbk_file, key)
        except FileExistsError as exc:
            print(f"doorkeep osdp install-key: {exc.filename} is left from an earlier attempt and may be the "
                  f"reader's key (fix: if the reader refuses its default key, move it to {rc.scbk_file}; "
                  "otherwise delete it)", file=sys.stderr)
            return 1
        if not bus.begin_install(rc.address, key).wait(args.timeout):
            # Kept, not deleted: had the reader taken the key but its ACK been lost, this is the only copy.
            print(f"doorkeep osdp install-key: no acknowledgement of the new key from the reader; the key is kept "
                  f"in {tmp} (0600). If the reader now refuses its default key, it took it: move {tmp} to "
                  f"{rc.scbk_file}; otherwise delete {tmp} and try again", file=sys.stderr)
            return 1
        os.replace(tmp, rc.scbk_file)
        online = wait_until(lambda: bus.stats(rc.address).online and bus.stats(rc.address).secure, args.timeout)
    finally:
        bus.stop()
    fingerprint = hashlib.sha256(key).hexdigest()[:16]
    operator = getpass.getuser()
    log.warning("OSDP key installed on door %s (address %d) by %s, fingerprint %s", args.door, rc.address,
                operator, fingerprint)
    if device.state_dir is not None:
        clock = SystemClock()
        ev = EventMsg(id=uuid.uuid4().hex, seq=0, ts=iso_ms(clock.wall()), device=device.id, door=args.door,
                      type="reader_key_installed",
                      detail={"address": rc.address, "operator": operator, "key_fingerprint": fingerprint})
        outbox = Outbox(device.state_dir / "outbox.db", max_bytes=device.outbox_max_mb * 1024 * 1024, clock=clock)
        try:
            outbox.put_event(Topics(device.site).event(device.id, args.door),
                             lambda n: dataclasses.replace(ev, seq=n).encode())
        finally:
            outbox.close()
    print(f"installed a new Secure Channel key on door {args.door}'s reader; wrote {rc.scbk_file} (mode 0600), "
          f"fingerprint {fingerprint}; reader {'online' if online else 'NOT yet online'} under the new key")
    return 0 if online else 1
