"""``doorkeep doctor``: a hardening report for a real site (docs/security.md, "doorkeep doctor").

Every check reads what an installer left on disk — the site directory, the
device files, the broker configuration, the PKI, the server's data directory
— and never changes anything: the store is opened read-only, no broker is
contacted. Each finding names the file or object, what is wrong, how bad it is
and the fix; the command exits 1 when any finding is ``high``, so it can gate
a deployment or run from a timer.

Severity, as this module uses it:

* ``high`` — an attacker on the network, on the RS-485 bus or with a local
  account gains something now (plain MQTT, a reader without Secure Channel or
  still on its public default key, a broker that lets one certificate take
  another's session or accepts any size, a key or the store readable by
  others, a certificate that has expired or expires within a week, an admin
  without the required second factor, retention that does not run).
* ``medium`` — a weakness that becomes a failure later or degrades the record
  (a certificate within 30 days of expiry, an edge clock more than a second
  off, a broker configuration that was not found to check).
* ``low`` — worth knowing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from doorkeep.config import SiteBundle
from server.store_url import store_url_for

HIGH, MEDIUM, LOW = "high", "medium", "low"
SEVERITIES = (HIGH, MEDIUM, LOW)
#: days before a certificate's expiry that it is reported (medium), and that it becomes high
CERT_WARN_DAYS = 30
CERT_URGENT_DAYS = 7
#: an edge whose heartbeat is further than this from the server's clock is reported (medium; high past the second)
CLOCK_DRIFT_S = 1.0
CLOCK_DRIFT_HIGH_S = 300.0
#: grace beyond a retention period before data still present means retention is not running
RETENTION_GRACE_DAYS = 2


@dataclass(frozen=True)
class Finding:
    """One weakness: ``check`` is a stable id (docs/security.md lists them), ``where`` the file or object."""

    severity: str
    check: str
    where: str
    what: str
    fix: str

    def line(self) -> str:
        return f"{self.severity.upper():6} {self.check:24} {self.where}: {self.what}\n{'':32}fix: {self.fix}"


@dataclass(frozen=True)
class Context:
    """What the checks look at; ``now`` is injected so expiry and drift are testable."""

    bundle: SiteBundle
    data_dir: Path | None
    broker_config: Path | None
    now: datetime
    store_url: str | None = None
    """The server's PostgreSQL store (server/store_url.py), None: SQLite, ``doorkeep.db`` in ``data_dir``."""

    @property
    def has_store(self) -> bool:
        return self.store_url is not None or self.data_dir is not None


Check = Callable[[Context], Iterable[Finding]]


# ------------------------------------------------------------------ helpers


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(path.lstat().st_mode)
    except OSError:
        return None


def _open_to_others(path: Path, what: str) -> Finding | None:
    mode = _mode(path)
    if mode is None or not mode & 0o077:
        return None
    want = "700" if path.is_dir() else "600"
    return Finding(HIGH, "file_permissions", str(path), f"{what} is open to group or others (mode {mode:03o})",
                   f"chmod {want} {path} (and run the service with UMask=0077)")


class _Store:
    """The server's store, read only, whichever engine holds it: rows as dicts, and which tables and columns it
    has (a store from an older version may lack some). The checks never write, and on SQLite never create the
    file; on PostgreSQL the session is read-only."""

    def __init__(self, ctx: Context) -> None:
        self.pg = None
        self.lite: sqlite3.Connection | None = None
        if ctx.store_url is not None:
            from server.sqldb import connect

            self.pg = connect(ctx.store_url)
            self.pg.execute("SET default_transaction_read_only = on")
        elif ctx.data_dir is not None and (ctx.data_dir / "doorkeep.db").is_file():
            self.lite = sqlite3.connect(f"file:{ctx.data_dir / 'doorkeep.db'}?mode=ro", uri=True)
            self.lite.row_factory = sqlite3.Row

    @property
    def present(self) -> bool:
        return self.pg is not None or self.lite is not None

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if self.pg is not None:
            return self.pg.query(sql, params)
        assert self.lite is not None
        return [dict(r) for r in self.lite.execute(sql, params)]

    def has_table(self, name: str) -> bool:
        if self.pg is not None:
            return bool(self.rows("SELECT 1 AS found FROM information_schema.tables WHERE table_schema = "
                                  "current_schema() AND table_name = ?", (name,)))
        return bool(self.rows("SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def columns(self, table: str) -> set[str]:
        if self.pg is not None:
            return {r["column_name"] for r in self.rows(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = ?", (table,))}
        return {r["name"] for r in self.rows(f"PRAGMA table_info({table})")}

    def close(self) -> None:
        for conn in (self.pg, self.lite):
            if conn is not None:
                conn.close()


def _iso(ts: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


# ------------------------------------------------------------------- checks


def check_transport(ctx: Context) -> Iterator[Finding]:
    """Plain MQTT anywhere: a device file with an mqtt:// URL or ``allow_plain_mqtt``."""
    for dev in ctx.bundle.devices.values():
        if not dev.broker.tls:
            yield Finding(HIGH, "plain_mqtt", dev.file, f"[broker] url {dev.broker.url} is plain MQTT: anyone on the "
                          "network reads card hashes and decisions and can forge door traffic",
                          "use an mqtts:// URL with ca_file, cert_file and key_file (docs/security.md, Transport)")
        elif dev.broker.allow_plain:
            yield Finding(HIGH, "plain_mqtt", dev.file, "[broker] allow_plain_mqtt = true",
                          "remove allow_plain_mqtt")


def check_osdp(ctx: Context) -> Iterator[Finding]:
    """OSDP readers without Secure Channel, or still on the public default key (no installed key file)."""
    for dev in ctx.bundle.devices.values():
        for door, hw in sorted(dev.doors.items()):
            r = hw.reader
            if r.protocol != "osdp":
                continue
            where = f"{dev.file} doors.{door}.reader"
            if not r.secure_channel:
                yield Finding(HIGH, "osdp_no_secure_channel", where, "OSDP without Secure Channel: card numbers "
                              "cross the RS-485 wire in clear and replies can be forged",
                              "remove secure_channel = false and install a key with `doorkeep osdp install-key`")
            elif r.scbk_file is None or not r.scbk_file.is_file():
                yield Finding(HIGH, "osdp_default_key", where, "no installed Secure Channel key "
                              f"({r.scbk_file or 'scbk_file not set'}): the reader runs on the public default key",
                              f"run `doorkeep osdp install-key {door} --device {dev.file}` on an isolated bus")
            else:
                f = _open_to_others(r.scbk_file, "the reader's Secure Channel key")
                if f is not None:
                    yield f


_LIMIT_OPTIONS = ("max_packet_size", "message_size_limit")


def _broker_lines(text: str) -> list[tuple[str, str]]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        out.append((key, value.strip()))
    return out


def check_broker(ctx: Context) -> Iterator[Finding]:
    """The Mosquitto configuration: TLS-only listeners with client certificates, client ids bound to the
    certificate, a message size limit, a CRL, an ACL, no anonymous clients."""
    path = ctx.broker_config
    if path is None or not path.is_file():
        yield Finding(MEDIUM, "broker_config", str(path or ctx.bundle.dir / "broker" / "mosquitto.conf"),
                      "the broker configuration was not found, so it was not checked",
                      "generate it with `doorkeep broker config --site SITE`, or pass --broker-config FILE")
        return
    lines = _broker_lines(path.read_text(errors="replace"))
    opts: dict[str, str] = {}
    listeners: list[dict[str, str]] = []
    for key, value in lines:
        if key == "listener":
            listeners.append({"listener": value})
        elif listeners and key in ("cafile", "capath", "certfile", "keyfile", "require_certificate", "crlfile",
                                   "use_identity_as_username", "use_subject_as_username"):
            listeners[-1][key] = value
        else:
            opts[key] = value
    where = str(path)
    if not listeners:
        yield Finding(HIGH, "plain_mqtt", where, "no listener line: Mosquitto listens on plain port 1883",
                      "regenerate with `doorkeep broker config` (one mutual-TLS listener)")
    for lst in listeners:
        name = f"listener {lst['listener']}"
        if "certfile" not in lst:
            yield Finding(HIGH, "plain_mqtt", where, f"{name} has no TLS (no certfile)",
                          "remove the plain listener; doorkeep speaks mutual TLS only")
            continue
        if lst.get("require_certificate") != "true":
            yield Finding(HIGH, "broker_client_certificates", where, f"{name} does not require client certificates",
                          "add `require_certificate true` under the listener")
        if lst.get("use_identity_as_username", opts.get("use_identity_as_username")) != "true":
            yield Finding(HIGH, "broker_identity", where, f"{name} does not take the user name from the certificate "
                          "(the ACL then confines nobody)", "add `use_identity_as_username true`")
        if "crlfile" not in lst:
            yield Finding(HIGH, "broker_crl", where, f"{name} has no crlfile: a revoked certificate still connects",
                          "add `crlfile SITE/pki/crl.pem` under the listener")
    if opts.get("allow_anonymous") != "false":
        yield Finding(HIGH, "broker_anonymous", where, "anonymous clients are not refused",
                      "add `allow_anonymous false`")
    if "acl_file" not in opts:
        yield Finding(HIGH, "broker_acl", where, "no acl_file: every certificate reads and writes every topic",
                      "regenerate with `doorkeep broker config` (per-device ACL)")
    if opts.get("use_username_as_clientid") != "true":
        yield Finding(HIGH, "broker_client_id_binding", where, "client ids are not bound to the certificate: one "
                      "device's certificate can take over the server's or another device's session",
                      "add `use_username_as_clientid true` (regenerate with `doorkeep broker config`)")
    limit = next((opts[o] for o in _LIMIT_OPTIONS if o in opts), None)
    if limit is None or not limit.isdigit() or int(limit) == 0:
        yield Finding(HIGH, "broker_message_size", where, "no message size limit: any client can push messages "
                      "of hundreds of megabytes at the server", "add `max_packet_size` (regenerate with "
                      "`doorkeep broker config`, which sizes it for the site's policy and snapshots)")


def check_key_files(ctx: Context) -> Iterator[Finding]:
    """Key files and the PKI's private keys must be readable by their owner only."""
    paths: list[tuple[Path, str]] = []
    site = ctx.bundle.dir
    for folder, what in ((site / "keys", "a site key"), (site / "pki", "a PKI private key")):
        if folder.is_dir():
            f = _open_to_others(folder, f"the {folder.name}/ directory")
            if f is not None and folder.name == "keys":
                yield f
            for p in sorted(folder.iterdir()):
                public = p.suffix in (".pub", ".crt")  # public halves are meant to be copied about
                if p.is_file() and (folder.name == "keys" and not public or p.suffix == ".key"):
                    paths.append((p, what))
    paths.append((ctx.bundle.credential_key_file, "the credential key"))
    for dev in ctx.bundle.devices.values():
        for p in (dev.credential_key_file, dev.broker.key_file):
            if p is not None:
                paths.append((p, f"{dev.id}'s key"))  # resolved by the loader
    seen: set[Path] = set()
    for p, what in paths:
        if p in seen:
            continue
        seen.add(p)
        f = _open_to_others(p, what)
        if f is not None:
            yield f


def check_data_dir(ctx: Context) -> Iterator[Finding]:
    """The server's data directory holds names, e-mails, password hashes and snapshots: owner only."""
    if ctx.data_dir is None or not ctx.data_dir.is_dir():
        return
    worst: list[Finding] = []
    for root, dirs, files in os.walk(ctx.data_dir):
        for name in [*dirs, *files]:
            f = _open_to_others(Path(root) / name, "server data")
            if f is not None:
                worst.append(f)
    top = _open_to_others(ctx.data_dir, "the server's data directory")
    if top is not None:
        yield top
    yield from worst[:20]
    if len(worst) > 20:
        yield Finding(HIGH, "file_permissions", str(ctx.data_dir), f"{len(worst) - 20} more files open to others",
                      f"chmod -R go-rwx {ctx.data_dir}")


def check_certificates(ctx: Context) -> Iterator[Finding]:
    """Certificates of the site PKI that have expired or expire soon. A revoked certificate is moved aside into
    ``pki/revoked/`` (``doorkeep pki revoke``), so every file left in ``pki/`` is one clients load, including a
    certificate issued again under the name of a revoked one."""
    from doorkeep.pki import certificate_inventory

    pki = ctx.bundle.dir / "pki"
    for info in certificate_inventory(pki):
        crt = pki / f"{info.name}.crt"
        if info.not_after is None:
            yield Finding(MEDIUM, "certificate_expiry", str(crt), "not a readable PEM certificate",
                          "restore it from the backup of SITE/pki, or reissue it")
            continue
        left = info.not_after - ctx.now
        days = left.total_seconds() / 86400
        if days <= CERT_URGENT_DAYS:
            what = "has expired" if days < 0 else f"expires in {days:.1f} days"
            yield Finding(HIGH, "certificate_expiry", str(crt), f"{what} ({info.not_after:%Y-%m-%d})",
                          f"reissue it: `doorkeep pki revoke {crt.stem}` then `doorkeep pki issue {crt.stem}`")
        elif days <= CERT_WARN_DAYS:
            yield Finding(MEDIUM, "certificate_expiry", str(crt), f"expires in {days:.0f} days "
                          f"({info.not_after:%Y-%m-%d})",
                          f"plan the reissue: `doorkeep pki revoke {crt.stem}` then `doorkeep pki issue {crt.stem}`")


def check_retention(ctx: Context) -> Iterator[Finding]:
    """Retention that does not run: data older than its period (plus a grace) is still in the store."""
    if not ctx.has_store:
        return
    db = _Store(ctx)
    if not db.present:
        return
    r = ctx.bundle.retention
    where = ctx.data_dir if ctx.store_url is None else "the PostgreSQL store"
    try:
        for table, column, days, key in (("events", "ts", r.events_days, "events_days"),
                                         ("alarms", "resolved_at", r.alarms_days, "alarms_days")):
            if not db.has_table(table) or column not in db.columns(table):
                continue
            row = db.rows(f"SELECT min({column}) AS oldest FROM {table} WHERE {column} IS NOT NULL")
            oldest = _iso(row[0]["oldest"]) if row and row[0]["oldest"] else None
            if oldest is not None and ctx.now - oldest > timedelta(days=days + RETENTION_GRACE_DAYS):
                yield Finding(HIGH, "retention", f"{where} {table}",
                              f"holds data from {oldest:%Y-%m-%d}, older than [retention] {key} = {days}: "
                              "retention is not running", "run the server (it purges daily) or "
                              "`doorkeep retention run --site SITE --data DIR`, and keep it running")
    finally:
        db.close()


def check_operators(ctx: Context) -> Iterator[Finding]:
    """Admins without a second factor where the site requires one (docs/desk.md, two-factor login)."""
    if not ctx.has_store:
        return
    required = _two_factor_required(ctx.bundle)
    if not required:
        return
    db = _Store(ctx)
    if not db.present:
        return
    try:
        if not db.has_table("operators"):
            return
        cols = db.columns("operators")
        totp = "totp_secret" if "totp_secret" in cols else None  # NULL: no second factor (docs/desk.md)
        where_active = " AND disabled_at IS NULL" if "disabled_at" in cols else ""
        rows = db.rows(f"SELECT * FROM operators WHERE role = 'admin'{where_active} ORDER BY name")
        for row in rows:
            if totp is None or not row[totp]:
                yield Finding(HIGH, "operator_2fa", f"operator {row['name']}",
                              "an admin without two-factor login where the site requires it",
                              "log in as that admin and enrol an authenticator (the desk forces it at next login)")
    finally:
        db.close()


def _two_factor_required(bundle: SiteBundle) -> bool:
    from doorkeep.config import load_desk_settings

    return load_desk_settings(bundle.dir).require_totp_for_admins


def check_clock_drift(ctx: Context) -> Iterator[Finding]:
    """Edge clocks, from the drift the server measured on each device's last live heartbeat."""
    if not ctx.has_store:
        return
    db = _Store(ctx)
    if not db.present:
        return
    try:
        if not db.has_table("device_clock"):
            return
        for row in db.rows("SELECT device, drift_s, measured_at FROM device_clock ORDER BY device"):
            drift = float(row["drift_s"])
            if abs(drift) <= CLOCK_DRIFT_S:
                continue
            sev = HIGH if abs(drift) > CLOCK_DRIFT_HIGH_S else MEDIUM
            ahead = "ahead of" if drift > 0 else "behind"
            yield Finding(sev, "clock_drift", f"device {row['device']}",
                          f"its clock was {abs(drift):.1f} s {ahead} the server's at {row['measured_at']}",
                          "enable NTP on the Pi (timedatectl set-ntp true) and check its network time source")
    finally:
        db.close()


def check_workers(ctx: Context) -> Iterator[Finding]:
    """Several server workers on a PostgreSQL store (server/workers.py): one must lead, and one alone is no standby.
    Nothing to say for a site that never ran a worker."""
    if ctx.store_url is None:
        return
    from server.workers import workers_status

    workers = workers_status(ctx.store_url, ctx.bundle.site.id)
    if not workers:
        return
    alive = [w for w in workers if w["alive"]]
    where = f"site {ctx.bundle.site.id}"
    if not any(w["leader"] for w in alive):
        gone = ", ".join(w["name"] for w in workers if not w["alive"]) or "none"
        yield Finding(HIGH, "workers_no_leader", where,
                      f"no running worker leads (running: {', '.join(w['name'] for w in alive) or 'none'}; "
                      f"stopped: {gone}): no event is stored and no policy published; the doors decide from cache "
                      "whenever the server is offline for them",
                      "start a worker: doorkeep server --worker NAME --site DIR --store URL (docs/scale.md)")
    elif len(alive) == 1:
        yield Finding(MEDIUM, "workers_no_standby", where,
                      f"worker {alive[0]['name']} runs alone: losing its host stops every server decision until "
                      "it is back",
                      "start a second worker on another machine: doorkeep server --worker NAME (docs/scale.md)")


CHECKS: tuple[Check, ...] = (check_transport, check_osdp, check_broker, check_key_files, check_data_dir,
                             check_certificates, check_retention, check_operators, check_clock_drift, check_workers)


def diagnose(bundle: SiteBundle, *, data_dir: Path | None = None, broker_config: Path | None = None,
             now: datetime | None = None, checks: Iterable[Check] = CHECKS,
             store_url: str | None = None) -> list[Finding]:
    """Every finding, the most severe first (stable within a severity: in check order). ``store_url``: the
    server's PostgreSQL store, read instead of ``doorkeep.db`` (server/store_url.py)."""
    ctx = Context(bundle, data_dir, broker_config, now or datetime.now(timezone.utc), store_url)
    found: list[Finding] = []
    for check in checks:
        try:
            found.extend(check(ctx))
        except (OSError, sqlite3.Error, psycopg.Error) as exc:
            found.append(Finding(MEDIUM, "doctor", check.__name__, f"could not run this check: {exc}",
                                 "run doorkeep doctor as the service's user, with read access to what it checks"))
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def report(findings: list[Finding]) -> str:
    if not findings:
        return "doorkeep doctor: no findings: a clean bill\n"
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    body = "\n".join(f.line() for f in findings)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return f"{body}\n\ndoorkeep doctor: {len(findings)} finding(s): {summary}\n"


def as_json(findings: list[Finding]) -> str:
    rows: list[dict[str, Any]] = [f.__dict__ for f in findings]
    return json.dumps({"findings": rows, "high": sum(f.severity == HIGH for f in findings)}, indent=2)



def cli(args: Any) -> int:
    """``doorkeep doctor --site DIR [--data DIR] [--broker-config FILE] [--json]``: 0 no high finding, 1 some, 2 usage."""
    import sys

    from doorkeep.config import load_site_dir
    from doorkeep.errors import ConfigError, ConfigErrors

    try:
        bundle = load_site_dir(args.site)
    except (ConfigErrors, ConfigError) as exc:
        print(f"doorkeep doctor: {exc}", file=sys.stderr)
        return 2
    data = args.data
    if data is not None and not data.is_dir():
        print(f"doorkeep doctor: {data}: no such data directory (fix: pass the server's --data directory)",
              file=sys.stderr)
        return 2
    try:
        url = store_url_for(bundle.dir)  # the store the server uses: [store] url or $DOORKEEP_STORE_URL
    except (ConfigErrors, ConfigError) as exc:
        print(f"doorkeep doctor: {exc}", file=sys.stderr)
        return 2
    broker = args.broker_config or bundle.dir / "broker" / "mosquitto.conf"
    findings = diagnose(bundle, data_dir=data, broker_config=broker, store_url=url)
    print(as_json(findings) if args.json else report(findings), end="" if not args.json else "\n")
    return 1 if any(f.severity == HIGH for f in findings) else 0
