"""Subcommands of the simulators: ``demo``, ``sim reader``, ``sim camera``, ``sim run``."""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from doorkeep.errors import ConfigError, ConfigErrors
from simulators.brokers import BrokerUnavailable


def demo(args: argparse.Namespace) -> int:
    from server.errors import ServerError
    from simulators.demo import DemoError, run_demo

    try:
        return run_demo(args.duration, args.broker, args.site, desk=not getattr(args, "no_desk", False),
                        desk_port=getattr(args, "desk_port", None) or 8080,
                        allow_plain=bool(getattr(args, "allow_plain_mqtt", False)),
                        store=getattr(args, "store", None), workers=getattr(args, "workers", 1))
    except (ConfigErrors, ConfigError, BrokerUnavailable, DemoError, ServerError) as exc:
        # ServerError: a worker that cannot start (server/workers.py WorkerError names the fix), a store refused.
        print(f"doorkeep demo: {exc}", file=sys.stderr)
        return 2


def reader(args: argparse.Namespace) -> int:
    from simulators.reader import ReaderSimulator

    sim = ReaderSimulator(args.protocol)
    print(f"reader simulator ({args.protocol}) on {sim.path}: point a device file's reader url at it,")
    print("then type a card number and Enter to badge it; Ctrl-D to stop", flush=True)
    try:
        for line in sys.stdin:
            number = line.strip()
            if not number:
                continue
            try:
                sim.badge(number)
                print(f"badged {number}", flush=True)
            except ValueError as exc:
                print(f"not sent: {exc}", flush=True)
    finally:
        sim.close()
    return 0


def camera(args: argparse.Namespace) -> int:
    from simulators.camera import CameraSimulator

    sim = CameraSimulator(fps=args.fps, port=args.port)
    url = sim.start()
    if getattr(args, "qr", None):
        sim.show_qr(args.qr)
    print(f"camera simulator serving {url} (and /snapshot.jpg); Ctrl-C to stop", flush=True)
    try:
        threading.Event().wait()
    finally:
        sim.stop()
    return 0


def run_scenarios(args: argparse.Namespace) -> int:
    from simulators.scenario import run_files

    if not args.verbose:
        # The transcript on stdout tells the story; the parts' own warnings (a broker
        # going down on purpose, a decision timing out) would only drown it.
        logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))
    try:
        return run_files(args.scenarios, junit=args.junit, broker_url=args.broker, check_only=args.check,
                         allow_plain=bool(getattr(args, "allow_plain_mqtt", False)))
    except BrokerUnavailable as exc:
        print(f"doorkeep sim run: {exc}", file=sys.stderr)
        return 2


def osdp(args: argparse.Namespace) -> int:
    """``doorkeep sim osdp``: an OSDP reader on a pty, driven by lines on stdin."""
    from simulators.osdp_pd import OsdpPdSimulator

    scbk = bytes.fromhex(args.scbk) if args.scbk else None
    if scbk is not None and len(scbk) != 16:
        print("--scbk must be 32 hex digits", file=sys.stderr)
        return 2
    sim = OsdpPdSimulator(address=args.address, scbk=scbk, secure_channel=not args.no_secure_channel)
    print(f"OSDP reader simulator (address {args.address}) on {sim.path}: set a door's reader to "
          f'url = "{sim.path}", protocol = "osdp", address = {args.address}', flush=True)
    print("type `w26 FACILITY CARD` (or w34/w37), `keys 1234#`, `tamper on|off`; Ctrl-D to stop", flush=True)
    try:
        for line in sys.stdin:
            words = line.split()
            try:
                if len(words) == 3 and words[0] in ("w26", "w34", "w37"):
                    sim.present_card(f"wiegand{words[0][1:]}", int(words[1]), int(words[2]))
                elif len(words) == 2 and words[0] == "keys":
                    sim.press_keys(words[1])
                elif len(words) == 2 and words[0] == "tamper":
                    sim.set_tamper(words[1] == "on")
                elif words:
                    print("not understood", flush=True)
                    continue
                else:
                    continue
                print(f"sent {line.strip()} (SC {'active' if sim.sc_active else 'inactive'}; "
                      f"LEDs so far {sim.leds()}, beeps {sim.beeps()})", flush=True)
            except ValueError as exc:
                print(f"not sent: {exc}", flush=True)
    finally:
        sim.close()
    return 0
