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

from doorkeep.config import SiteBundle, load_site_dir
from doorkeep.errors import ConfigError, ConfigErrors
from doorkeep.pki import (
    RESERVED,
    POLICY_BYTES_PER_PERSON,
    PkiError,
    broker_acl,
    broker_config,
    init_ca,
    issue,
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
    try:
        bundle = _bundle(args.site)
        known = sorted(bundle.devices)
        if args.name not in (*known, *RESERVED):
            raise PkiError(f"{args.name!r} is not a device of site {bundle.site.id} "
                           f"(fix: use one of: {', '.join([*known, *RESERVED])})")
        cert, key = issue(pki_dir(args.site), args.name, now=_now(), hosts=tuple(args.host or ()))
    except (PkiError, ConfigErrors, ConfigError) as exc:
        return _fail("pki issue", exc)
    print(f"wrote {cert} and {key} (mode 0600)")
    if args.name not in RESERVED:
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
        conf = broker_config(bundle.site.id, pki, acl, port=args.port, bind=args.bind or None,
                             persistence_dir=args.persistence, size_limit=limit,
                             log_file=log_file.resolve() if log_file is not None else None)
        for path, text in ((acl, broker_acl(bundle.site.id)), (out / "mosquitto.conf", conf)):
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            os.chmod(tmp, 0o644)  # Mosquitto's own account reads it; it holds no secret (umask is 0077)
            os.replace(tmp, path)
    except (PkiError, ConfigErrors, ConfigError, OSError) as exc:
        return _fail("broker config", exc)
    print(f"wrote {out / 'mosquitto.conf'} (message_size_limit {limit} bytes, for up to "
          f"{limit // POLICY_BYTES_PER_PERSON} people) and {acl}; run `mosquitto -c {(out / 'mosquitto.conf').resolve()}`")
    return 0
