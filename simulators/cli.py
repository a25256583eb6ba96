"""Subcommands of the simulators: ``demo``, ``sim reader``, ``sim camera``, ``sim run``."""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from doorkeep.errors import ConfigError, ConfigErrors
from simulators.brokers import BrokerUnavailable


def demo(args: argparse.Namespace) -> int:
    from simulators.demo import run_demo

    try:
        return run_demo(args.duration, args.broker, args.site)
    except (ConfigErrors, ConfigError, BrokerUnavailable) as exc:
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
        return run_files(args.scenarios, junit=args.junit, broker_url=args.broker, check_only=args.check)
    except BrokerUnavailable as exc:
        print(f"doorkeep sim run: {exc}", file=sys.stderr)
        return 2
