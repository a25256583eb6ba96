"""``doorkeep pki …`` and ``doorkeep broker config``: the site CA and the Mosquitto files, from the command line.

Thin calls into :mod:`doorkeep.pki`; its errors become one line on stderr
and exit status 1 here, at the boundary.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from doorkeep.bridge import BridgeError, bridge_name, bridge_section, parse_bridge
from doorkeep.config import SiteBundle, load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.pki import (
    EXPIRY_WARN_DAYS,
    BRIDGE,
    INTEGRATION,
    RESERVED,
    POLICY_BYTES_PER_PERSON,
    WORKER_PREFIX,
    PkiError,
    broker_acl,
    broker_config,
    certificate_inventory,
    check_integration_name,
    check_integration_settings,
    init_ca,
    issue,
    live_bridges,
    live_integrations,
    live_workers,
    message_size_limit,
    pki_dir,
    revoke,
)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _fail(command: str, exc: Exception) -> int:
    print(f"doorkeep {command}: {exc}", file=sys.stderr)
    return 1


def _bundle(site: Path) -> SiteBundle:
    return load_site_dir(site)


def init(args: argparse.Namespace) -> int:
    try:
        bundle = _bundle(args.site)
        cert = init_ca(pki_dir(args.site), bundle.site.id, now=_now())
    except (PkiError, ConfigErrors, ConfigError) as exc:
        return _fail("pki init", exc)
    print(f"wrote {cert}, {cert.with_suffix('.key')} (mode 0600, keep it off the Pis and back it up) "
          f"and an empty {cert.parent / 'crl.pem'}")
    return 0


def issue_cmd(args: argparse.Namespace) -> int:
    role = getattr(args, "role", None)
    read_only = bool(getattr(args, "read_only", False))
    try:
        bundle = _bundle(args.site)
        known = sorted(bundle.devices)
        if read_only and role != INTEGRATION:
            raise PkiError("--read-only applies to integrations only (fix: add --role integration, or drop --read-only)")
        bridged = tuple(getattr(args, "device", None) or ())
        if bridged and role != BRIDGE:
            raise PkiError("--device applies to bridges only (fix: add --role bridge, or drop --device)")
        worker = role is None and args.name.startswith(WORKER_PREFIX)  # a server worker's: its name gives the role
        if role is None and not worker and args.name not in (*known, *RESERVED):
            raise PkiError(f"{args.name!r} is not a device of site {bundle.site.id} "
                           f"(fix: use one of: {', '.join([*known, *RESERVED])}; `{WORKER_PREFIX}NAME` for a server "
                           f"worker; or `--role integration` for an integration such as Home Assistant)")
        cert, key = issue(pki_dir(args.site), args.name, now=_now(), hosts=tuple(args.host or ()), role=role,
                          read_only=read_only, devices=known, bridged=bridged)
    except (PkiError, ConfigErrors, ConfigError) as exc:
        return _fail("pki issue", exc)
    print(f"wrote {cert} and {key} (mode 0600)")
    if role == INTEGRATION:
        print(f"integration {args.name} ({'read-only' if read_only else 'may send requests'}): regenerate the ACL "
              f"with `doorkeep broker config --site {args.site}` and reload Mosquitto before handing over "
              f"{cert.name}, {key.name} and {pki_dir(args.site) / 'ca.crt'} (docs/operations.md, "
              "\"Certificates for integrations\")")
    elif role == BRIDGE:
        print(f"bridge {args.name} carries {', '.join(bridged)}: regenerate the campus broker's ACL with "
              f"`doorkeep broker config --site {args.site}`, and the building's with `--bridge BUILDING=HOST:PORT` "
              "(docs/scale.md, \"Bridging a building broker\")")
    elif worker:
        print(f"server worker {args.name.removeprefix(WORKER_PREFIX)}: copy them beside the server's certificate "
              f"on the machine that runs it, then regenerate the ACL with `doorkeep broker config --site {args.site}` "
              "and reload Mosquitto (docs/scale.md)")
    elif args.name not in RESERVED:
        print(f"copy them with {pki_dir(args.site) / 'ca.crt'} to the Pi and set [broker] url = \"mqtts://…\", "
              "ca_file, cert_file and key_file in its device file")
    return 0


def revoke_cmd(args: argparse.Namespace) -> int:
    try:
        serial = revoke(pki_dir(args.site), args.name, now=_now())
    except PkiError as exc:
        return _fail("pki revoke", exc)
    print(f"revoked {args.name} (serial {serial:x}); wrote {pki_dir(args.site) / 'crl.pem'}. "
          "Restart the broker: Mosquitto reads the CRL when it starts")
    return 0


def broker_config_cmd(args: argparse.Namespace) -> int:
    try:
        bundle = _bundle(args.site)
        pki = pki_dir(args.site)
        for name, fix in (("ca.crt", "doorkeep pki init"), ("crl.pem", "doorkeep pki init"),
                          ("broker.crt", "doorkeep pki issue broker"), ("broker.key", "doorkeep pki issue broker")):
            if not (pki / name).is_file():
                raise PkiError(f"{pki / name}: does not exist (fix: run `{fix} --site {args.site}` first)")
        out: Path = args.out or Path(args.site) / "broker"
        out.mkdir(parents=True, exist_ok=True)
        acl = out / "acl"
        people = getattr(args, "people", None)
        if people is None:
            people = len(bundle.people)
        limit = message_size_limit(people)
        log_file = getattr(args, "log_file", None)
        integrations = live_integrations(pki)
        for integration in integrations:  # a device added to the site files after the integration was issued
            check_integration_name(integration.name, bundle.devices)
        for warning in check_integration_settings(bundle.integrations, integrations, bundle.devices):
            print(f"broker config: {warning}", file=sys.stderr)
        conf = broker_config(bundle.site.id, pki, acl, port=args.port, bind=args.bind or None,
                             persistence_dir=args.persistence, size_limit=limit,
                             log_file=log_file.resolve() if log_file is not None else None)
        bridges = live_bridges(pki)
        for name in bridges:
            check_integration_name(name, bundle.devices)
        for value in getattr(args, "bridge", None) or ():  # this broker is a building's: its uplinks
            building, host, port = parse_bridge(value)
            name = bridge_name(building)
            if name not in bridges:
                raise PkiError(f"{pki / (name + '.crt')}: no live bridge certificate for building {building} (fix: "
                               f"`doorkeep pki issue {name} --role bridge --device ID … --site {args.site}`)")
            conf += "\n" + bridge_section(bundle.site.id, building, host, port, bridges[name], pki)
        acl_text = broker_acl(bundle.site.id, integrations=integrations, bridges=bridges,
                              home_assistant=bundle.home_assistant, workers=live_workers(pki))
        for path, text in ((acl, acl_text), (out / "mosquitto.conf", conf)):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)  # Mosquitto's own account reads it; it holds no secret (umask is 0077)
            os.replace(tmp, path)
    except (PkiError, BridgeError, ConfigErrors, ConfigError, OSError) as exc:
        return _fail("broker config", exc)
    print(f"wrote {out / 'mosquitto.conf'} (message_size_limit {limit} bytes, for up to "
          f"{limit // POLICY_BYTES_PER_PERSON} people) and {acl}"
          f"{f' ({len(integrations)} integrations)' if integrations else ''}; "
          f"run `mosquitto -c {(out / 'mosquitto.conf').resolve()}`")
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    """``doorkeep pki list``: every certificate file of SITE/pki with its expiry, as the desk shows them."""
    pki = pki_dir(args.site)
    if not pki.is_dir():
        return _fail("pki list", PkiError(f"{pki}: no site CA here (fix: `doorkeep pki init --site {args.site}`)"))
    now = _now()
    rows = [("NAME", "ROLE", "ACCESS", "SERIAL", "EXPIRES (UTC)", "DAYS LEFT", "STATUS")]
    for c in certificate_inventory(pki):
        left = c.days_left(now)
        access = ("read-only" if c.read_only else "requests") if c.role == INTEGRATION else ""
        rows.append((c.name, c.role, access, format(c.serial, "x")[:16] if c.serial is not None else "",
                     c.not_after.strftime("%Y-%m-%d %H:%M") if c.not_after else "",
                     f"{left:.0f}" if left is not None else "", c.error or c.status(now)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    print(f"(expiring: within {EXPIRY_WARN_DAYS} days; the server raises `certificate_expiring` for those and "
          "the expired; revoked certificates are in index.json and pki/revoked/)")
    return 0
