"""The ``doorkeep`` command's face: parses arguments and hands each
subcommand to the CLI module of its part, imported only when it runs, so the
core never depends on paho, OpenCV or gpiozero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from doorkeep import __version__

#: subcommand -> "module:function" that runs it (each documented in README.md)
HANDLERS = {
    "config check": "doorkeep.cli:_config_check",
    "key init": "doorkeep.cli:_key_init",
    "key init-signing": "doorkeep.cli:_key_init_signing",
    "muster": "server.cli:muster",
    "edge": "edge.cli:run",
    "server": "server.cli:run",
    "demo": "simulators.cli:demo",
    "sim reader": "simulators.cli:reader",
    "sim camera": "simulators.cli:camera",
    "sim run": "simulators.cli:run_scenarios",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="doorkeep", description="doorkeep physical access control")
    p.add_argument("--version", action="version", version=f"doorkeep {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="how much to log on stderr (default INFO)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="configuration files")
    cfg_sub = cfg.add_subparsers(dest="action", required=True, metavar="ACTION")
    chk = cfg_sub.add_parser("check", help="check a site directory, site.toml or device file; prints errors or 'ok'")
    chk.add_argument("path", type=Path)

    key = sub.add_parser("key", help="keys")
    key_sub = key.add_subparsers(dest="action", required=True, metavar="ACTION")
    kin = key_sub.add_parser("init", help="create a new credential key file (mode 0600)")
    kin.add_argument("path", type=Path)
    ksg = key_sub.add_parser("init-signing", help="create the server's Ed25519 policy signing key (PATH, mode 0600) "
                                                  "and its public key (PATH with .pub) for the edges")
    ksg.add_argument("path", type=Path)

    mus = sub.add_parser("muster", help="who is in which area now (roll call), visitors with their hosts")
    mus.add_argument("--site", required=True, type=Path, help="the site directory")
    mus.add_argument("--data", type=Path, help="the server's data directory (default: var/SITE)")

    edge = sub.add_parser("edge", help="run an edge agent for one device file")
    edge.add_argument("--device", required=True, type=Path, help="the device file (devices/NAME.toml)")
    edge.add_argument("--broker", help="override the device file's broker URL")

    srv = sub.add_parser("server", help="run the central server for a site directory")
    srv.add_argument("--site", required=True, type=Path, help="the site directory (site.toml, people.toml, devices/)")
    srv.add_argument("--data", type=Path, help="where the event store and snapshots live (default: var/SITE)")
    srv.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="broker URL (default mqtt://127.0.0.1:1883)")
    srv.add_argument("--device-timeout", type=float, metavar="S",
                     help="raise device_offline for a device silent this long (default 90)")
    srv.add_argument("--gap-timeout", type=float, metavar="S",
                     help="raise event_gap for event numbers missing this long (default 60)")

    demo = sub.add_parser("demo", help="run the demo site on simulators and play a scripted morning")
    demo.add_argument("--duration", type=float, help="stop after this many seconds and print a summary")
    demo.add_argument("--broker", help="use this broker instead of starting the embedded one")
    demo.add_argument("--site", type=Path, help="site directory (default: the embedded demo site)")

    sim = sub.add_parser("sim", help="hardware simulators")
    sim_sub = sim.add_subparsers(dest="action", required=True, metavar="ACTION")
    rd = sim_sub.add_parser("reader", help="a reader on a new pty: prints its path, then badges each card number typed")
    rd.add_argument("--protocol", default="em4100", choices=["em4100", "ascii"])
    cam = sim_sub.add_parser("camera", help="serve a simulated MJPEG camera on loopback")
    cam.add_argument("--port", type=int, default=8081)
    cam.add_argument("--fps", type=float, default=10.0)
    run = sim_sub.add_parser("run", help="run scenario files against a full simulated site (docs/scenarios.md); "
                                         "exit 0 all passed, 1 an expectation failed, 2 a file is invalid")
    run.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO",
                     help="scenario YAML files, or directories of them")
    run.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report to FILE")
    run.add_argument("--broker", help="use this broker instead of a private one (no broker down/up steps then)")
    run.add_argument("--check", action="store_true", help="only validate the files (exit 0 or 2); run nothing")
    run.add_argument("--verbose", action="store_true",
                     help="show the system's own log on stderr at --log-level (default: errors only)")
    return p


def _config_check(args: argparse.Namespace) -> int:
    from doorkeep.config import check

    errors = check(args.path)
    for e in errors:
        print(e)
    if not errors:
        print("ok")
    return 1 if errors else 0


def _key_init(args: argparse.Namespace) -> int:
    from doorkeep.credentials import generate_key_file

    try:
        generate_key_file(args.path)
    except FileExistsError:
        print(f"{args.path} already exists; not overwriting a key", file=sys.stderr)
        return 1
    print(f"wrote {args.path} (mode 0600)")
    return 0


def _key_init_signing(args: argparse.Namespace) -> int:
    from doorkeep.policy import generate_signing_key, public_key_path

    try:
        generate_signing_key(args.path)
    except FileExistsError:
        print(f"{args.path} already exists; not overwriting a key", file=sys.stderr)
        return 1
    print(f"wrote {args.path} (mode 0600) and {public_key_path(args.path)} (copy it to every edge device)")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    name = args.command + (f" {args.action}" if getattr(args, "action", None) else "")
    module, func = HANDLERS[name].split(":")
    handler = getattr(importlib.import_module(module), func)
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
