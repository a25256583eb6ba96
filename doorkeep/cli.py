"""The ``doorkeep`` command's face: parses arguments and hands each
subcommand to the CLI module of its part, imported only when it runs, so the
core never depends on paho, OpenCV or gpiozero, and a Pi installed with only
the ``[edge]`` extra runs its commands without the server's web stack. A
command whose part's extra is not installed says which one to install.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path

from doorkeep import __version__
from doorkeep.logfmt import ENV_VAR as LOG_FORMAT_ENV, LOG_FORMATS, TEXT_FORMAT, JsonFormatter, choose_log_format

#: subcommand -> "module:function" that runs it (each documented in README.md)
HANDLERS = {
    "config check": "doorkeep.cli:_config_check",
    "key init": "doorkeep.cli:_key_init",
    "key init-signing": "doorkeep.cli:_key_init_signing",
    "key init-data": "doorkeep.cli:_key_init_data",
    "key rotate": "server.cli:key_rotate",
    "pki init": "doorkeep.pki_cli:init",
    "pki issue": "doorkeep.pki_cli:issue_cmd",
    "pki revoke": "doorkeep.pki_cli:revoke_cmd",
    "pki list": "doorkeep.pki_cli:list_cmd",
    "broker config": "doorkeep.pki_cli:broker_config_cmd",
    "muster": "server.cli:muster",
    "door unlock": "server.cli:door_unlock",
    "lockdown": "server.cli:lockdown",
    "edge": "edge.cli:run",
    "server": "server.cli:run",
    "demo": "simulators.cli:demo",
    "sim reader": "simulators.cli:reader",
    "sim osdp": "simulators.cli:osdp",
    "osdp install-key": "edge.cli:osdp_install_key",
    "sim camera": "simulators.cli:camera",
    "sim run": "simulators.cli:run_scenarios",
    "audit verify": "server.cli:audit_verify",
    "audit show": "server.cli:audit_show",
    "retention run": "server.cli:retention_run",
    "backup": "server.cli:backup",
    "backup keygen": "server.cli:backup_keygen",
    "restore": "server.cli:restore",
    "store migrate": "server.cli:store_migrate",
    "subject export": "server.cli:subject_export",
    "subject erase": "server.cli:subject_erase",
    "user add": "server.web.cli:user_add",
    "user token": "server.web.cli:user_token",
    "user list": "server.web.cli:user_list",
    "user disable": "server.web.cli:user_disable",
    "desk": "server.web.cli:desk",
    "doctor": "server.cli:doctor",
    "site import": "server.cli:site_import",
    "site export": "server.cli:site_export",
    "site history": "server.cli:site_history",
    "site show": "server.cli:site_show",
    "site rollback": "server.cli:site_rollback",
    "site diff": "server.cli:site_diff",
    "evidence verify": "doorkeep.evidence_cli:verify_cmd",
    "evidence export": "server.cli:evidence_export",
}


#: the extra (pyproject.toml) a part's commands need, by the top-level package of their handler; the core's
#: own commands (``doorkeep.cli``, ``doorkeep.pki_cli``) need none
EXTRAS = {"edge": "edge", "server": "server", "simulators": "demo"}
OWN_PACKAGES = ("doorkeep", "edge", "server", "simulators")


def missing_extra(target: str, exc: ModuleNotFoundError) -> str | None:
    """The extra to install when running ``target`` ("module:function") raised ``exc``, or None when ``exc`` is
    not a missing third-party dependency of a part (a missing doorkeep module is a broken install: let it show)."""
    missing = (exc.name or "").split(".")[0]
    if not missing or missing in OWN_PACKAGES:
        return None
    return EXTRAS.get(target.split(".")[0])


def missing_extra_message(command: str, extra: str, module: str) -> str:
    """One line: what is missing and how to install it (no registry holds doorkeep: docs/deploy.md)."""
    return (f"doorkeep {command}: needs the [{extra}] extra (Python module {module!r} is not installed); install "
            f"doorkeep with it: pip install 'doorkeep-{__version__}-py3-none-any.whl[{extra}]' (the built wheel) "
            f"or pip install '.[{extra}]' in a checkout (docs/deploy.md)")


ALLOW_PLAIN_HELP = ("development only: allow a plain mqtt:// broker (no TLS; logged as a WARNING at start). "
                    "Without it a plain URL is refused")
#: the default broker of the server-side commands: the site's own Mosquitto over mutual TLS (SITE/pki)
DEFAULT_BROKER = "mqtts://127.0.0.1:8883"


def _tls_flags(sp: argparse.ArgumentParser) -> None:
    """``--broker`` (default mutual TLS), ``--ca/--cert/--key`` and ``--allow-plain-mqtt`` for a server-side client."""
    sp.add_argument("--broker", default=DEFAULT_BROKER, help=f"broker URL (default {DEFAULT_BROKER})")
    sp.add_argument("--ca", type=Path, help="mqtts:// only: the site CA (default SITE/pki/ca.crt)")
    sp.add_argument("--cert", type=Path, help="mqtts:// only: this client's certificate (default SITE/pki/server.crt; "
                                              "operator.crt for door unlock and lockdown)")
    sp.add_argument("--key", type=Path, help="mqtts:// only: this client's key (default SITE/pki/server.key; "
                                             "operator.key for door unlock and lockdown)")
    sp.add_argument("--allow-plain-mqtt", action="store_true", help=ALLOW_PLAIN_HELP)


LOG_FORMAT_HELP = (f"text (default) or json: one JSON object per line with time, level, component, device, door, "
                   f"event_id, message (docs/operations.md#logs); without it ${LOG_FORMAT_ENV} decides")


def _log_format_flag(sp: argparse.ArgumentParser) -> None:
    """``--log-format`` after a long-running subcommand too (``doorkeep demo --log-format json``); not given there,
    the one before the subcommand (or the environment) holds."""
    sp.add_argument("--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS, help=LOG_FORMAT_HELP)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="doorkeep", description="doorkeep physical access control")
    p.add_argument("--version", action="version", version=f"doorkeep {__version__}")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="how much to log on stderr (default INFO)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default=None, help=LOG_FORMAT_HELP)
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
    kid = key_sub.add_parser("init-data", help="create the server's snapshot keys in SITE_DIR/keys (mode 0600): "
                                               "snapshot.key (X25519) and data-keys.json (site data keys)")
    kid.add_argument("site_dir", type=Path, metavar="SITE_DIR")
    krt = key_sub.add_parser("rotate", help="new current site data key; re-wrap every snapshot's key under it "
                                            "(the server keeps running), then retire the old key")
    krt.add_argument("--site", required=True, type=Path, help="the site directory (its keys/data-keys.json)")
    krt.add_argument("--data", type=Path, help="the server's data directory (default: var/SITE)")

    pki = sub.add_parser("pki", help="the site CA and the MQTT certificates (docs/security.md)")
    pki_sub = pki.add_subparsers(dest="action", required=True, metavar="ACTION")
    pin = pki_sub.add_parser("init", help="create the site CA in SITE/pki (key mode 0600) and an empty CRL")
    pin.add_argument("--site", required=True, type=Path, help="the site directory")
    pis = pki_sub.add_parser("issue", help="issue NAME.crt and NAME.key for a device id, `server`, `operator`, "
                                           "`broker`, `worker-NAME` (a server worker), or an integration (--role integration)")
    pis.add_argument("name", metavar="NAME")
    pis.add_argument("--site", required=True, type=Path, help="the site directory")
    pis.add_argument("--host", action="append", metavar="HOST",
                     help="broker only: a DNS name or IP the Pis use to reach it (repeatable; "
                          "localhost and 127.0.0.1 are always in)")
    pis.add_argument("--role", choices=["integration", "bridge"], help="integration: a client certificate for Home "
                     "Assistant, Node-RED, a SOC collector (NAME must not be a device id or reserved); bridge: a "
                     "building broker's uplink `bridge-BUILDING` (with --device); regenerate the broker config afterwards")
    pis.add_argument("--device", action="append", metavar="ID", help="with --role bridge: a device of the building "
                     "whose topics the bridge carries (repeatable; docs/scale.md)")
    pis.add_argument("--read-only", action="store_true", help="with --role integration: read events and state only, "
                     "no request topic")
    pls = pki_sub.add_parser("list", help="every certificate in SITE/pki with its role and expiry")
    pls.add_argument("--site", required=True, type=Path, help="the site directory")
    prv = pki_sub.add_parser("revoke", help="revoke NAME's certificate and rewrite SITE/pki/crl.pem")
    prv.add_argument("name", metavar="NAME")
    prv.add_argument("--site", required=True, type=Path, help="the site directory")

    brk = sub.add_parser("broker", help="the MQTT broker")
    brk_sub = brk.add_subparsers(dest="action", required=True, metavar="ACTION")
    bcf = brk_sub.add_parser("config", help="write mosquitto.conf and acl: mutual TLS only, one subtree per device")
    bcf.add_argument("--site", required=True, type=Path, help="the site directory (its pki/ must exist)")
    bcf.add_argument("--out", type=Path, help="where to write the files (default SITE/broker)")
    bcf.add_argument("--port", type=int, default=8883, help="the TLS listener's port (default 8883)")
    bcf.add_argument("--bind", help="listen on this address only (default: every interface)")
    bcf.add_argument("--persistence", type=Path, default=Path("/var/lib/mosquitto"), metavar="DIR",
                     help="where Mosquitto keeps sessions and queued messages (default /var/lib/mosquitto)")
    bcf.add_argument("--people", type=int, metavar="N", help="the most people the site will hold: sizes "
                     "message_size_limit for the signed policies (default: the site files' count; at least 16 MiB)")
    bcf.add_argument("--log-file", type=Path, metavar="FILE", help="log to FILE for `doorkeep server --broker-log` "
                     "(default: stderr, i.e. the journal)")
    bcf.add_argument("--bridge", action="append", metavar="BUILDING=HOST:PORT", help="this is BUILDING's broker: "
                     "bridge its devices' topics to the campus broker at HOST:PORT over TLS with the certificate "
                     "bridge-BUILDING (`doorkeep pki issue bridge-BUILDING --role bridge --device ID …`; "
                     "docs/scale.md)")

    aud = sub.add_parser("audit", help="the hash-chained audit log (docs/security.md)")
    aud_sub = aud.add_subparsers(dest="action", required=True, metavar="ACTION")
    avf = aud_sub.add_parser("verify", help="check the hash chain: prints 'ok: N records' (exit 0) or the first "
                                           "bad record and what is wrong (exit 1); 2 for usage/config errors")
    ash = aud_sub.add_parser("show", help="the newest audit records as a table")
    ash.add_argument("--limit", type=int, default=50, help="how many records (default 50)")
    ret = sub.add_parser("retention", help="delete data past its retention period (site.toml [retention])")
    ret_sub = ret.add_subparsers(dest="action", required=True, metavar="ACTION")
    rrun = ret_sub.add_parser("run", help="run retention now and print what it deleted")
    rrun.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    bak = sub.add_parser("backup", help="an online, consistent backup of the server's store, snapshots and audit "
                         "head, encrypted to a recovery public key (docs/backups.md); `backup keygen` makes that key")
    bak.add_argument("action", nargs="?", choices=["keygen"], help="keygen: write a recovery key pair (--out FILE)")
    bak.add_argument("--site", type=Path, help="the site directory (its id goes in the manifest)")
    bak.add_argument("--data", type=Path, help="the server's data directory (default: var/SITE)")
    bak.add_argument("--to", type=Path, metavar="FILE", help="the backup file to write (mode 0600)")
    bak.add_argument("--recovery-key", type=Path, metavar="PUBFILE",
                     help="the recovery public key (default: site.toml [backup] recovery_key)")
    bak.add_argument("--with-keys", action="store_true", help="also write FILE.keys: the site's key files, sealed "
                     "to --keys-to PUBFILE or to $DOORKEEP_BACKUP_PASSPHRASE (never to the recovery key)")
    bak.add_argument("--keys-to", type=Path, metavar="PUBFILE", help="the public key FILE.keys is sealed to")
    bak.add_argument("--out", type=Path, metavar="FILE", help="keygen: write FILE.key (private) and FILE.pub")
    sto = sub.add_parser("store", help="the server's store (docs/scale.md \"State in PostgreSQL\")")
    sto_sub = sto.add_subparsers(dest="action", required=True, metavar="ACTION")
    smg = sto_sub.add_parser("migrate", help="copy a stopped server's SQLite store into an empty PostgreSQL "
                             "database and verify it: row counts per table, the audit chain and its last record")
    smg.add_argument("--from", dest="source", required=True, metavar="sqlite:///PATH",
                     help="the SQLite store: sqlite:///DATA/doorkeep.db (the server's --data)")
    smg.add_argument("--to", dest="target", required=True, metavar="postgresql://USER@HOST:PORT/DB",
                     help="the new, empty PostgreSQL database (no password in the URL: ~/.pgpass or PGPASSWORD)")
    smg.add_argument("--verbose", action="store_true", help="name each table as it is copied (on stderr)")
    rst = sub.add_parser("restore", help="restore a backup into a new data directory and verify it: integrity "
                         "check, audit chain, counts against the manifest; exit 1 for a damaged, foreign, truncated "
                         "or wrongly-keyed file")
    rst.add_argument("file", type=Path, metavar="FILE")
    rst.add_argument("--site", required=True, type=Path, help="the site directory (the backup must be of this site)")
    rst.add_argument("--to", required=True, type=Path, metavar="DATA", help="the new (or empty) data directory")
    rst.add_argument("--recovery-key", required=True, type=Path, metavar="PRIVFILE", help="the recovery private key")
    rst.add_argument("--keys", type=Path, metavar="FILE.keys", help="also open the key file `backup --with-keys` wrote")
    rst.add_argument("--keys-key", type=Path, metavar="PRIVFILE",
                     help="the private key FILE.keys was sealed to (or $DOORKEEP_BACKUP_PASSPHRASE)")
    rst.add_argument("--keys-out", type=Path, metavar="DIR", help="where the key files go (default DATA-keys, beside DATA)")
    subj = sub.add_parser("subject", help="data-subject rights: export or erase everything held about a person")
    subj_sub = subj.add_subparsers(dest="action", required=True, metavar="ACTION")
    sex = subj_sub.add_parser("export", help="write one zip with everything held about PERSON")
    sex.add_argument("--out", required=True, type=Path, metavar="FILE.zip", help="the zip to write (mode 0600)")
    ser = subj_sub.add_parser("erase", help="delete or pseudonymise everything held about PERSON")
    ser.add_argument("--yes", action="store_true", help="confirm: erasure cannot be undone")
    for sp in (sex, ser):
        sp.add_argument("person", metavar="PERSON", help="the person's id (people.toml or visitor id)")
    for sp in (avf, ash, rrun, sex, ser):
        sp.add_argument("--site", required=True, type=Path, help="the site directory")
        sp.add_argument("--data", type=Path, help="the server's data directory (default: var/SITE)")

    evd = sub.add_parser("evidence", help="signed evidence bundles of incidents (docs/privacy.md)")
    evd_sub = evd.add_subparsers(dest="action", required=True, metavar="ACTION")
    evv = evd_sub.add_parser("verify", help="check a bundle offline: the signature over its manifest and every "
                                            "file's SHA-256; exit 0 intact, 1 the first changed/missing/extra file "
                                            "or a bad signature, 2 unreadable")
    evv.add_argument("bundle", type=Path, metavar="BUNDLE")
    evv.add_argument("--key", type=Path, metavar="PUBFILE", help="pin the signer: the site's public key "
                     "(SITE/keys/policy-signing.pub); without it the key the bundle carries is used and its "
                     "fingerprint printed to compare")
    eve = evd_sub.add_parser("export", help="write the signed evidence bundle of incident INCIDENT (audited)")
    eve.add_argument("incident", type=int, metavar="INCIDENT", help="the incident's number")
    eve.add_argument("--out", type=Path, metavar="FILE.zip", help="where (default incident-N-evidence.zip; mode 0600)")
    eve.add_argument("--site", required=True, type=Path, help="the site directory (signs with keys/policy-signing.key)")
    eve.add_argument("--data", type=Path, help="the server's data directory (default: var/SITE)")

    usr = sub.add_parser("user", help="security-desk operator accounts and API tokens (docs/desk.md)")
    usr_sub = usr.add_subparsers(dest="action", required=True, metavar="ACTION")
    uad = usr_sub.add_parser("add", help="a new operator; asks for the password twice (or --password-stdin)")
    uad.add_argument("name", metavar="NAME", help="login name: lower-case letters, digits, . _ @ -")
    uad.add_argument("--role", required=True, choices=["admin", "desk", "auditor", "kiosk"], help="what the operator may do")
    uad.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    utk = usr_sub.add_parser("token", help="print a new API token for NAME once (or --revoke the one labelled L)")
    utk.add_argument("name", metavar="NAME")
    utk.add_argument("--label", required=True, help="what the token is for (unique per operator)")
    utk.add_argument("--role", choices=["admin", "desk", "auditor", "kiosk"],
                     help="the token's role (default the operator's; never more than the operator's)")
    utk.add_argument("--revoke", action="store_true", help="revoke the operator's token with this label")
    uls = usr_sub.add_parser("list", help="every operator, role, state and live token labels")
    udi = usr_sub.add_parser("disable", help="disable NAME: its sessions and tokens stop working at once")
    udi.add_argument("name", metavar="NAME")
    for sp in (uad, utk, uls, udi):
        sp.add_argument("--site", required=True, type=Path, help="the site directory")
        sp.add_argument("--data", type=Path, help="the server's data directory (default: var/SITE)")

    dsk = sub.add_parser("desk", help="run the server and the security desk (web UI and API) in one process")
    _log_format_flag(dsk)
    dsk.add_argument("--site", required=True, type=Path, help="the site directory (site.toml, people.toml, devices/)")
    dsk.add_argument("--data", type=Path, help="where the event store and snapshots live (default: var/SITE)")
    _tls_flags(dsk)
    dsk.add_argument("--host", default="127.0.0.1", help="address the desk listens on (default 127.0.0.1)")
    dsk.add_argument("--port", type=int, default=8080, help="the desk's HTTP port (default 8080)")
    dsk.add_argument("--forwarded-allow-ips", metavar="ADDRS",
                     help="behind a TLS reverse proxy: trust X-Forwarded-Proto/-For only from these comma-separated "
                          "proxy addresses (default: trusted from nobody)")
    dsk.add_argument("--broker-log", type=Path, metavar="FILE", help="the broker's log file (`doorkeep broker config "
                     "--log-file`): raise certificate_refused when a refused certificate keeps trying")
    dsk.add_argument("--proxy-headers", action="store_true",
                     help="the same as --forwarded-allow-ips 127.0.0.1,::1 (a proxy on this host)")
    dsk.add_argument("--store", metavar="URL", help="keep the records in this PostgreSQL database, as `doorkeep "
                     "server --store` (default: $DOORKEEP_STORE_URL, site.toml [store] url, else SQLite in --data)")
    dsk.add_argument("--worker", metavar="NAME", help="run as worker NAME of several on a PostgreSQL store, as "
                     "`doorkeep server --worker`: the desk is served while this worker leads; a standby answers "
                     "requests and keeps its port closed (docs/scale.md#several-server-workers)")

    # `doorkeep site …`: the site model's revisions in the server's store (server/siteadmin.py,
    # docs/administration.md). Add further `site` actions to site_sub.
    site = sub.add_parser("site", help="the site model the server holds: import, export, history, rollback")
    site_sub = site.add_subparsers(dest="action", required=True, metavar="ACTION")
    sim_ = site_sub.add_parser("import", help="apply DIR/site.toml (checked as `config check` does) as the next "
                                              "site revision and DIR/people.toml as the full list of people; live "
                                              "at the doors within seconds, no restart")
    sim_.add_argument("dir", type=Path, metavar="DIR")
    sex_ = site_sub.add_parser("export", help="write the live site revision to DIR/site.toml and the people to "
                                              "DIR/people.toml (cards and PINs as keyed hashes)")
    sex_.add_argument("dir", type=Path, metavar="DIR")
    shi = site_sub.add_parser("history", help="the site revisions, newest first: number, when, who, what")
    shi.add_argument("--limit", type=int, default=50, help="how many (default 50)")
    ssh = site_sub.add_parser("show", help="one revision with its changes")
    ssh.add_argument("number", type=int, metavar="N")
    srb = site_sub.add_parser("rollback", help="make revision N live again, as a new revision (needs --yes)")
    srb.add_argument("number", type=int, metavar="N")
    srb.add_argument("--yes", action="store_true", help="confirm the rollback")
    sdf = site_sub.add_parser("diff", help="replay the recorded badges of the last DAYS with the current and a "
                                           "proposed site: which grants and refusals would change, for whom, why")
    sdf.add_argument("--replay", required=True, type=int, metavar="DAYS", help="how many days of recorded badges "
                     "to replay (the desk's default is 30)")
    sdf.add_argument("--proposed", required=True, type=Path, metavar="DIR",
                     help="the proposed site: an edited copy of the site directory")
    sdf.add_argument("--json", action="store_true", help="print the report as JSON")
    sdf.add_argument("--site", required=True, type=Path, help="the current site directory, as the server runs it")
    sdf.add_argument("--data", type=Path, help="the server's data directory (default: var/SITE)")
    for sp in (sim_, sex_, shi, ssh, srb):
        sp.add_argument("--site", required=True, type=Path, help="the site directory (its people and devices "
                                                                "are checked against every revision)")
        sp.add_argument("--data", type=Path, help="the server's data directory (default: var/SITE)")

    doc = sub.add_parser("doctor", help="a hardening report for a site: each finding with its fix; exit 0 none "
                                        "high, 1 a high finding, 2 usage (docs/security.md)")
    doc.add_argument("--site", required=True, type=Path, help="the site directory")
    doc.add_argument("--data", type=Path, help="the server's data directory, to check its modes, retention, "
                                               "operators' 2FA and the edges' clocks (default: not checked)")
    doc.add_argument("--broker-config", type=Path, metavar="FILE",
                     help="the Mosquitto configuration to check (default SITE/broker/mosquitto.conf)")
    doc.add_argument("--json", action="store_true", help="print the findings as JSON")

    mus = sub.add_parser("muster", help="who is in which area now (roll call), visitors with their hosts")
    mus.add_argument("--site", required=True, type=Path, help="the site directory")
    mus.add_argument("--data", type=Path, help="the server's data directory (default: var/SITE)")

    door = sub.add_parser("door", help="signed remote commands to one door")
    door_sub = door.add_subparsers(dest="action", required=True, metavar="ACTION")
    dun = door_sub.add_parser("unlock", help="momentarily unlock DOOR (its unlock_s) by a signed command; prints "
                                             "the edge's result; exit 0 ok, 1 refused/failed/timeout, 2 usage")
    dun.add_argument("door", metavar="DOOR")
    dun.add_argument("--site", required=True, type=Path, help="the site directory (signs with keys/policy-signing.key)")
    _tls_flags(dun)
    dun.add_argument("--data", type=Path, help="the server's data directory, whose audit log records the command "
                                               "(default: var/SITE)")

    ldn = sub.add_parser("lockdown", help="send a signed lockdown on/off to the edges now (not persisted by the "
                                          "server: see README); exit 0 ok, 1 refused/failed/timeout, 2 usage")
    ldn.add_argument("state", choices=["on", "off"])
    ldn.add_argument("--area", help="lock down only doors into this area (default: the whole site)")
    ldn.add_argument("--site", required=True, type=Path, help="the site directory (signs with keys/policy-signing.key)")
    _tls_flags(ldn)
    ldn.add_argument("--data", type=Path, help="the server's data directory, whose audit log records the command "
                                               "(default: var/SITE)")

    edge = sub.add_parser("edge", help="run an edge agent for one device file")
    _log_format_flag(edge)
    edge.add_argument("--device", required=True, type=Path, help="the device file (devices/NAME.toml)")
    edge.add_argument("--broker", help="override the device file's broker URL")
    edge.add_argument("--allow-plain-mqtt", action="store_true",
                      help=ALLOW_PLAIN_HELP + " (or `allow_plain_mqtt = true` in the device file's [broker])")

    osd = sub.add_parser("osdp", help="OSDP readers (docs/readers.md)")
    osd_sub = osd.add_subparsers(dest="action", required=True, metavar="ACTION")
    oik_help = ("give DOOR's OSDP reader (still on the default key) a new random Secure Channel key and write it "
                "to its scbk_file (0600); run with the edge agent stopped. The key travels under the public "
                "default key SCBK-D: anyone on the RS-485 wire learns it, so do it on an isolated bus, the reader "
                "alone on its wire")
    oik = osd_sub.add_parser("install-key", help=oik_help, description=oik_help)
    oik.add_argument("door", help="the door id whose reader gets the key")
    oik.add_argument("--device", required=True, type=Path, help="the device file (devices/NAME.toml)")
    oik.add_argument("--timeout", type=float, default=15.0, metavar="S", help="give up after S seconds (15)")

    srv = sub.add_parser("server", help="run the central server for a site directory")
    _log_format_flag(srv)
    srv.add_argument("--site", required=True, type=Path, help="the site directory (site.toml, people.toml, devices/)")
    srv.add_argument("--data", type=Path, help="where the event store and snapshots live (default: var/SITE)")
    srv.add_argument("--store", metavar="URL", help="keep the records in this PostgreSQL database "
                     "(postgresql://USER@HOST:PORT/DB, no password); overrides $DOORKEEP_STORE_URL and site.toml "
                     "[store] url (default: SQLite in --data; docs/configuration.md#store)")
    _tls_flags(srv)
    srv.add_argument("--device-timeout", type=float, metavar="S",
                     help="raise device_offline for a device silent this long (default 90)")
    srv.add_argument("--gap-timeout", type=float, metavar="S",
                     help="raise event_gap for event numbers missing this long (default 60)")
    srv.add_argument("--broker-log", type=Path, metavar="FILE", help="the broker's log file (`doorkeep broker config "
                     "--log-file`): raise certificate_refused when a refused certificate keeps trying")
    srv.add_argument("--metrics-port", type=int, metavar="PORT", help="serve /healthz, /readyz and /metrics "
                     "(Prometheus) on this port (default: off; docs/operations.md#metrics)")
    srv.add_argument("--metrics-host", default="127.0.0.1", metavar="ADDR",
                     help="the address --metrics-port listens on (default 127.0.0.1)")
    srv.add_argument("--worker", metavar="NAME", help="run as worker NAME, one of several for the site on a "
                     "PostgreSQL store: each answers its share of the requests, one leads and the others stand by "
                     "(--metrics-port serves the leader only; docs/scale.md#several-server-workers)")

    demo = sub.add_parser("demo", help="run the demo site on simulators and play a scripted morning")
    _log_format_flag(demo)
    demo.add_argument("--duration", type=float, help="stop after this many seconds and print a summary")
    demo.add_argument("--broker", help="use this broker instead of starting the embedded one (mqtts://: the "
                                       "site's pki/ holds each client's certificate)")
    demo.add_argument("--allow-plain-mqtt", action="store_true", help=ALLOW_PLAIN_HELP + " (for --broker)")
    demo.add_argument("--site", type=Path, help="site directory (default: the embedded demo site)")
    demo.add_argument("--no-desk", action="store_true", help="do not serve the security desk on 127.0.0.1")
    demo.add_argument("--desk-port", type=int, metavar="PORT", help="the desk's port (default 8080)")
    demo.add_argument("--store", metavar="URL", help="the server's store on this PostgreSQL database "
                      "(postgresql://USER@HOST:PORT/DB): created when missing, emptied when a previous demo's, "
                      "refused when it holds anything else")
    demo.add_argument("--workers", type=int, default=1, metavar="N", help="run N server workers on --store "
                      "(N >= 2 needs --store; a private Mosquitto unless --broker; default 1: one server)")

    sim = sub.add_parser("sim", help="hardware simulators")
    sim_sub = sim.add_subparsers(dest="action", required=True, metavar="ACTION")
    rd = sim_sub.add_parser("reader", help="a reader on a new pty: prints its path, then badges each card number typed")
    rd.add_argument("--protocol", default="em4100", choices=["em4100", "ascii"])
    sos = sim_sub.add_parser("osdp", help="an OSDP reader on a new pty (Secure Channel, keypad, cards): prints its "
                                          "path, then presents each line typed (`w26 FAC CARD`, `keys 1234#`)")
    sos.add_argument("--address", type=int, default=0, help="the reader's OSDP address (0)")
    sos.add_argument("--scbk", metavar="HEX", help="its installed key (32 hex digits); without it the reader is in "
                                                   "factory state (default key only: try `doorkeep osdp install-key`)")
    sos.add_argument("--no-secure-channel", action="store_true", help="a reader that offers no Secure Channel")
    cam = sim_sub.add_parser("camera", help="serve a simulated MJPEG camera on loopback")
    cam.add_argument("--port", type=int, default=8081)
    cam.add_argument("--fps", type=float, default=10.0)
    cam.add_argument("--qr", metavar="TEXT", help="hold a QR code of TEXT (a visitor pass) up in every frame")
    run = sim_sub.add_parser("run", help="run scenario files against a full simulated site (docs/scenarios.md); "
                                         "exit 0 all passed, 1 an expectation failed, 2 a file is invalid")
    run.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO",
                     help="scenario YAML files, or directories of them")
    run.add_argument("--junit", type=Path, metavar="FILE", help="also write a JUnit XML report to FILE")
    run.add_argument("--broker", help="use this broker instead of a private one (no broker down/up steps then)")
    run.add_argument("--allow-plain-mqtt", action="store_true", help=ALLOW_PLAIN_HELP + " (for --broker)")
    run.add_argument("--check", action="store_true", help="only validate the files (exit 0 or 2); run nothing")
    run.add_argument("--verbose", action="store_true",
                     help="show the system's own log on stderr at --log-level (default: errors only)")
    for long_running in (rd, sos, cam, run):
        _log_format_flag(long_running)
    return p


def _config_check(args: argparse.Namespace) -> int:
    from doorkeep.config import check, site_source

    errors = check(args.path)
    for e in errors:
        print(e)
    if not errors:
        print("ok")
        source = site_source(args.path)  # a device file: its site file, or the server's signed policy
        if source is not None:
            print(source)
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


def _key_init_data(args: argparse.Namespace) -> int:
    from doorkeep.envelope import init_data_keys

    try:
        snap, ring = init_data_keys(args.site_dir / "keys")
    except FileExistsError as exc:
        print(f"{exc} already exists; not overwriting a key (rotate with `doorkeep key rotate`)", file=sys.stderr)
        return 1
    print(f"wrote {snap} and {ring} (mode 0600); back them up: without them no snapshot can be read")
    return 0


#: The command's umask: what it creates (the server's store, snapshots, audit head, the edge's outbox, policy
#: cache and nonces, keys) is readable by its own account only. Files meant for others (certificates, the
#: broker's configuration) are given their mode explicitly where they are written.
UMASK = 0o077


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand under ``UMASK``.

    The umask is process state, so it is set here, at the command's entry point, never in a library; it is
    put back on return for a caller (a test) that runs ``main`` in its own process."""
    previous = os.umask(UMASK)
    try:
        args = build_parser().parse_args(argv)
        log_format, ignored = choose_log_format(args.log_format, os.environ)
        if log_format == "json":
            handler = logging.StreamHandler()
            handler.setFormatter(JsonFormatter())
            logging.basicConfig(level=args.log_level, handlers=[handler])
        else:
            logging.basicConfig(level=args.log_level, format=TEXT_FORMAT)
        if ignored:
            logging.getLogger("doorkeep").warning("%s", ignored)
        name = args.command + (f" {args.action}" if getattr(args, "action", None) else "")
        target = HANDLERS[name]
        module, func = target.split(":")
        try:
            handler = getattr(importlib.import_module(module), func)
            return int(handler(args) or 0)
        except KeyboardInterrupt:
            return 130
        except ModuleNotFoundError as exc:
            # the part's extra is not installed (e.g. `doorkeep desk` on a Pi with only [edge]): one line, exit 2
            extra = missing_extra(target, exc)
            if extra is None:
                raise
            print(missing_extra_message(name, extra, exc.name or "?"), file=sys.stderr)
            return 2
    finally:
        os.umask(previous)


if __name__ == "__main__":
    sys.exit(main())
