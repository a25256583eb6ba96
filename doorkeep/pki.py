"""The site's own certificate authority, and the Mosquitto configuration that trusts it.

Every MQTT client of a site (each edge device, the server) and the broker
hold a certificate from one site CA. The broker refuses any client without
one (``require_certificate``), takes the certificate's common name as the
client's user name (``use_identity_as_username``) and also as its client id
(``use_username_as_clientid``: whatever id a client asks for, so no
certificate can take over another client's session), and confines each device
to ``doorkeep/v1/{site}/{device}/#`` with one ACL pattern, so a stolen Pi
can speak only for itself. A revoked certificate lands in the CRL the broker
reads when it starts. One certificate identity is one connection: the server
(``server``), the operator's command-line tools (``operator``: commands and
their results only) and each device hold their own certificate.

Integrations (Home Assistant, Node-RED, a SOC's collector) get a certificate of
their own with ``role="integration"``. Mosquitto sees only a certificate's CN
(the user name), never its OU, so what an integration may do is decided by
name: ``index.json`` records the role and ``read_only`` of every certificate,
and :func:`broker_acl` gives each live integration listed there read access to
events, state and availability, a request topic of the server's integration
API unless it is read-only, and denies it the subtree the device pattern would
otherwise give its CN. An integration's name may therefore never be a device
id or a reserved name. The certificate's OU (``integration`` or
``integration read-only``) only tells a person, or :func:`certificate_inventory`,
what it is for.

Layout (``SITE/pki/``)::

    ca.crt  ca.key          the site CA (EC P-256, 10 years); ca.key never leaves this machine
    crl.pem                 the certificates revoked so far (read by Mosquitto at start)
    index.json              every certificate issued: name, serial, role, expiry, revocation
    NAME.crt  NAME.key      one pair per device id, integration, ``server``, ``operator`` and ``broker``
    revoked/NAME-SERIAL.*   a revoked pair, moved aside so NAME can be issued again

Private keys are written once, mode 0600, with ``O_EXCL``: nothing here ever
overwrites a key. Only key and certificate files are read or written (the
core stays free of other I/O); the broker configuration is returned as text.
Times come from the caller (``now``), so tests pin them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import stat
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Mapping

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from doorkeep.bridge import PREFIX as BRIDGE_PREFIX
from doorkeep.config import SEGMENT, WORKER_CERT_PREFIX, BrokerConfig, HomeAssistantSettings, IntegrationSettings
from doorkeep.contract import MAX_SNAPSHOT_BYTES
from doorkeep.errors import ConfigError, DoorkeepError

CA_DAYS = 3652          # ten years: re-keying every device is a site visit
LEAF_DAYS = 1826        # five years for devices, the server and the broker
BACKDATE = timedelta(minutes=5)  # a Pi whose clock is a little behind still accepts a fresh certificate
SERVER = "server"
BROKER = "broker"
#: The operator's command-line tools (``doorkeep door unlock``, ``doorkeep lockdown``): they run while the
#: server runs, and with client ids bound to certificates a second ``server`` connection would drop the server.
OPERATOR = "operator"
RESERVED = (SERVER, BROKER, OPERATOR)
#: An integration of the site (Home Assistant, Node-RED, a SOC's collector): events and state to read, and
#: unless read-only one request topic of the server's integration API (:func:`integration_topic`).
INTEGRATION = "integration"
#: A building broker's bridge to the campus broker (doorkeep/bridge.py): a client certificate whose ACL on the
#: campus broker is exactly the topics of the building's devices (recorded in ``index.json`` at issue time).
BRIDGE = "bridge"
#: A server worker's own connection (``doorkeep server --worker NAME``, server/workers.py): its share of the
#: requests through the shared subscription, their decisions, the devices' heartbeats. Named ``worker-NAME``;
#: the name alone gives the role (as ``server``'s does), and no device may take the prefix.
WORKER = "worker"
WORKER_PREFIX = WORKER_CERT_PREFIX
#: The longest worker name (server/workers.py check_worker_name): it goes into MQTT client ids.
MAX_WORKER_NAME = 32
#: The CA's own files are ``ca.crt`` and ``ca.key``: no certificate may be issued under that name.
CA_NAME = "ca"
ROLES = ("device", *RESERVED, INTEGRATION, BRIDGE, WORKER)
#: Days before a certificate's expiry from which it is reported (the server's ``certificate_expiring``
#: alarm, ``doorkeep pki list``, the desk's Certificates page).
EXPIRY_WARN_DAYS = 30
#: The longest name a certificate's CN may hold (RFC 5280 ub-common-name).
MAX_NAME = 64
DEFAULT_PORT = 8883

#: The broker's ``message_size_limit`` (payload bytes) is never below this: twice the largest sealed snapshot
#: a device may publish (doorkeep.contract.MAX_SNAPSHOT_BYTES), which also holds the policy of a site of
#: up to 32,768 people.
MESSAGE_SIZE_FLOOR = 2 * MAX_SNAPSHOT_BYTES
#: The signed policy of a door every person may pass weighs ~214 bytes per person with one card and ~326 with
#: two (measured with doorkeep.policy.sign_policy, bench.policy.build_site); the limit allows 512 per person.
POLICY_BYTES_PER_PERSON = 512
MIB = 1024 * 1024


class PkiError(DoorkeepError, ValueError):
    """A PKI file is missing, unreadable or would be overwritten; the message names the file and the fix."""


@dataclass(frozen=True)
class Issued:
    """One row of ``index.json``."""

    name: str
    serial: int
    role: str
    not_after: str
    revoked: str | None = None
    read_only: bool = False
    """An integration that may only read (no request topic in the ACL); False for every other role."""
    bridged: tuple[str, ...] = ()
    """A bridge's building devices (the topics it carries); empty for every other role."""

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"name": self.name, "serial": format(self.serial, "x"), "role": self.role,
                               "not_after": self.not_after, "revoked": self.revoked}
        if self.role == INTEGRATION:
            row["read_only"] = self.read_only
        if self.role == BRIDGE:
            row["devices"] = list(self.bridged)
        return row


@dataclass(frozen=True)
class Integration:
    """A live integration certificate as the ACL needs it: its name (the CN, so the broker's user name) and
    whether it may publish to its request topic."""

    name: str
    read_only: bool


def pki_dir(site_dir: Path | str) -> Path:
    """Where a site keeps its CA: ``SITE/pki``."""
    return Path(site_dir) / "pki"


# ------------------------------------------------------------------ files


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` (never replace it): a key or certificate that exists stays as it is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise PkiError(f"{path}: already exists; not overwriting it "
                       "(fix: revoke the certificate first, or move the file away if it is left over)") from None
    os.fchmod(fd, mode)  # exactly this mode, whatever the umask (`doorkeep` runs under 0077)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _replace(path: Path, data: bytes) -> None:
    """Atomically replace a public file (CRL, index): a crash leaves the old or the new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)  # public, whatever the umask (`doorkeep` runs under 0077)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # Unencrypted: Mosquitto and paho read the key at start without a person to type a passphrase.
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _read(path: Path, what: str, fix: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{path}: {what} does not exist (fix: {fix})") from None
    except OSError as exc:
        raise PkiError(f"{path}: cannot read the {what}: {exc.strerror} (fix: run as the file's owner)") from None


def load_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and key; refuses a key that group or others can read."""
    fix = f"create the site CA with `doorkeep pki init --site {pki.parent}`"
    cert_path, key_path = pki / "ca.crt", pki / "ca.key"
    cert_data = _read(cert_path, "site CA certificate", fix)
    key_data = _read(key_path, "site CA key", fix)
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise PkiError(f"{key_path}: the site CA key is accessible by group or others (mode {mode:03o}) "
                       f"(fix: chmod 600 {key_path})")
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError:
        raise PkiError(f"{cert_path}: not a PEM certificate (fix: restore it from your backup of {pki})") from None
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise PkiError(f"{key_path}: not an unencrypted PEM private key "
                       f"(fix: restore it from your backup of {pki})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{key_path}: does not belong to {cert_path} (fix: restore the matching pair from your backup)")
    return cert, key


def load_index(pki: Path) -> list[Issued]:
    path = pki / "index.json"
    data = _read(path, "certificate index", f"create the site CA with `doorkeep pki init --site {pki.parent}`")
    try:
        rows = json.loads(data)["issued"]
        return [Issued(r["name"], int(r["serial"], 16), r["role"], r["not_after"], r.get("revoked"),
                       bool(r.get("read_only", False)), tuple(r.get("devices", ()))) for r in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise PkiError(f"{path}: not a doorkeep certificate index ({exc}) "
                       "(fix: restore it from your backup; it lists every certificate issued)") from None


def _save_index(pki: Path, rows: list[Issued]) -> None:
    _replace(pki / "index.json", (json.dumps({"issued": [r.to_json() for r in rows]}, indent=2) + "\n").encode())


# -------------------------------------------------------------- CA, certs


def _name(common_name: str, site_id: str, unit: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"doorkeep site {site_id}")]
    if unit is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit))
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def integration_unit(read_only: bool) -> str:
    """The OU of an integration's certificate: says what it is to a person reading it (the broker never does)."""
    return f"{INTEGRATION} read-only" if read_only else INTEGRATION


def init_ca(pki: Path, site_id: str, *, now: datetime) -> Path:
    """Create the site CA, an empty index and an empty CRL in ``pki``; returns the CA certificate's path.

    Refuses if a CA key is already there: a second CA would orphan every certificate issued.
    """
    if not SEGMENT.match(site_id):
        raise PkiError(f"site id {site_id!r} is not a valid topic segment (fix: use letters, digits, '_' and '-')")
    pki.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"doorkeep {site_id} CA", site_id)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(pki / "ca.key", _key_pem(key), 0o600)
    _write_new(pki / "ca.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _save_index(pki, [])
    write_crl(pki, now=now)
    return pki / "ca.crt"


def role_of(name: str) -> str:
    """``server``, ``operator`` and ``broker`` are roles of their own, ``worker-NAME`` is a server worker; every
    other name is a device id."""
    if name.startswith(WORKER_PREFIX):
        return WORKER
    return name if name in RESERVED else "device"


def worker_identity(name: str) -> str:
    """The certificate name (CN) of server worker ``name``."""
    return f"{WORKER_PREFIX}{name}"


def live_workers(pki: Path) -> list[str]:
    """The certificate names of the server workers with a live certificate in ``index.json``."""
    return sorted(r.name for r in load_index(pki) if r.role == WORKER and r.revoked is None)


def worker_acl_lines(base: str, name: str, *, deny_own: bool) -> list[str]:
    """Worker ``name``'s rights in one site: the requests to read (through the shared subscription), the decisions
    to write, the heartbeats to read (each device's clock offset: server/decider.py); nothing else. ``deny_own``: the
    site's ACL has the device pattern, which would give the CN its own subtree."""
    return [*([f"topic deny {base}/{name}/#"] if deny_own else []), f"topic read {base}/+/door/+/request",
            f"topic write {base}/+/door/+/decision", f"topic read {base}/+/state"]


def check_integration_name(name: str, devices: Iterable[str] = ()) -> None:
    """Refuse an integration name the broker could confuse with another identity: a device id of the site
    (``devices``), ``server``, ``operator``, ``broker``, the CA's ``ca``, or anything that is not a topic
    segment of at most 64 characters. The broker knows a client only by its CN: an integration called
    ``pi-lobby`` would be the lobby's edge."""
    if not SEGMENT.match(name) or len(name) > MAX_NAME:
        raise PkiError(f"{name!r} is not a valid integration name "
                       f"(fix: use 1-{MAX_NAME} letters, digits, '_' and '-', e.g. home-assistant)")
    if name in RESERVED or name == CA_NAME or name.startswith(WORKER_PREFIX):
        raise PkiError(f"{name!r} is reserved (fix: give the integration a name of its own, e.g. home-assistant; "
                       f"{WORKER_PREFIX}NAME is a server worker's)")
    if name in set(devices):
        raise PkiError(f"{name!r} is a device id of this site: the broker knows a client only by its certificate's "
                       "CN, so the integration would be that device (fix: give the integration a name of its own)")


def issue(pki: Path, name: str, *, now: datetime, hosts: tuple[str, ...] = (), role: str | None = None,
          read_only: bool = False, devices: Iterable[str] = (), bridged: Iterable[str] = ()) -> tuple[Path, Path]:
    """Issue ``NAME.crt`` and ``NAME.key`` (mode 0600) signed by the site CA; returns their paths.

    Devices, the server and the operator get a client certificate (CN = the name the broker's ACL uses and,
    with ``use_username_as_clientid``, the client id the broker gives the connection). The broker
    gets a server certificate whose SAN holds ``localhost``, ``127.0.0.1`` and ``hosts`` (the names
    the Pis use to reach it): paho checks the broker's name against it.

    ``role``: None derives it from the name (:func:`role_of`); :data:`INTEGRATION` issues a client certificate
    for an integration (OU ``integration``, or ``integration read-only`` with ``read_only``), recorded in
    ``index.json`` for :func:`broker_acl`; its name is checked by :func:`check_integration_name` against
    ``devices``, the site's device ids. :data:`BRIDGE` issues a building broker's bridge certificate (OU
    ``bridge``) carrying ``bridged``, the building's device ids, recorded in ``index.json`` for the campus ACL.
    """
    bridged = tuple(sorted(set(bridged)))
    if role is not None and role not in (INTEGRATION, BRIDGE):
        raise PkiError(f"role {role!r} is not given by hand (fix: use `integration` or `bridge`, or no role: devices, "
                       "`server`, `operator` and `broker` take theirs from the name)")
    if read_only and role != INTEGRATION:
        raise PkiError(f"--read-only applies to integrations only, not to {name!r} (fix: add --role integration, "
                       "or drop --read-only)")
    if (role == BRIDGE) != bool(bridged):
        raise PkiError(f"{name!r}: a bridge carries the devices of its building, and only a bridge does "
                       "(fix: `--role bridge` with at least one `--device ID`)")
    if role in (INTEGRATION, BRIDGE):
        check_integration_name(name, devices)
        if (role == BRIDGE) != name.startswith(BRIDGE_PREFIX):
            # `broker config --bridge BUILDING=…` looks the certificate up as bridge-BUILDING: any other name
            # would sit in the campus ACL and never be picked up, and an integration so named would be taken for one.
            raise PkiError(f"{name!r}: a bridge's certificate is named {BRIDGE_PREFIX}BUILDING, and nothing else is "
                           f"(fix: `doorkeep pki issue {BRIDGE_PREFIX}BUILDING --role bridge --device ID …`, or "
                           f"another name for an integration)")
        unknown = sorted(set(bridged) - set(devices))
        if unknown:
            raise PkiError(f"{', '.join(unknown)}: not a device of this site (fix: give the building's device ids)")
    elif not SEGMENT.match(name):
        raise PkiError(f"{name!r} is not a valid name (fix: use a device id, `server`, `operator` or `broker`)")
    elif role_of(name) == WORKER and not 1 <= len(name) - len(WORKER_PREFIX) <= MAX_WORKER_NAME:
        raise PkiError(f"{name!r}: a server worker's certificate is {WORKER_PREFIX}NAME, NAME 1-{MAX_WORKER_NAME} "
                       f"letters, digits, '_' or '-' as in `doorkeep server --worker NAME` (fix: e.g. {WORKER_PREFIX}a)")
    ca_cert, ca_key = load_ca(pki)
    rows = load_index(pki)
    live = [r for r in rows if r.name == name and r.revoked is None]
    if live:
        raise PkiError(f"{pki / (name + '.crt')}: {name} already has certificate {live[0].serial:x} "
                       f"(fix: `doorkeep pki revoke {name} --site {pki.parent}` first to replace it)")
    role = role or role_of(name)
    site_id = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    site_id = str(site_id).removeprefix("doorkeep site ")
    key = ec.generate_private_key(ec.SECP256R1())
    serial = x509.random_serial_number()
    not_after = min(now + timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc)
    if role == BROKER:
        alt: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        for h in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                alt.append(x509.DNSName(h))
        usage = [ExtendedKeyUsageOID.SERVER_AUTH]
    else:
        if hosts:
            raise PkiError(f"--host applies to the broker's certificate only, not to {name!r} "
                           "(fix: drop --host, or issue `broker`)")
        urn = (f"urn:doorkeep:{site_id}:{role}:{name}" if role in (INTEGRATION, BRIDGE)
               else f"urn:doorkeep:{site_id}:{name}")
        alt = [x509.UniformResourceIdentifier(urn)]
        usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    unit = integration_unit(read_only) if role == INTEGRATION else BRIDGE if role == BRIDGE else None
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name, site_id, unit)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - BACKDATE).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_path, cert_path = pki / f"{name}.key", pki / f"{name}.crt"
    _write_new(key_path, _key_pem(key), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _save_index(pki, [*rows, Issued(name, serial, role, not_after.isoformat(), read_only=read_only,
                                        bridged=bridged)])
    return cert_path, key_path


def live_integrations(pki: Path) -> list[Integration]:
    """The integrations with a live (not revoked) certificate in ``index.json``, by name: what the ACL lists."""
    found = {r.name: Integration(r.name, r.read_only) for r in load_index(pki)
             if r.role == INTEGRATION and r.revoked is None}
    return [found[n] for n in sorted(found)]


def check_integration_settings(settings: Mapping[str, IntegrationSettings], apps: Iterable[Integration],
                               devices: Iterable[str]) -> list[str]:
    """Check site.toml's ``[integrations.NAME]`` against the live integration certificates; returns warnings.

    A NAME that is a device id, or whose live certificate is read-only while ``unlock_doors`` grants a door,
    is refused: the server would hand that device's identity a request API, or the operator would believe an
    integration can unlock what the broker never lets it ask. A NAME with no live certificate yet is only a
    warning: the entry is ready for `doorkeep pki issue NAME --role integration`, and asks nothing until then."""
    known = {a.name: a for a in apps}
    warnings: list[str] = []
    for name in sorted(settings):
        check_integration_name(name, devices)
        entry, app = settings[name], known.get(name)
        if app is None:
            warnings.append(f"[integrations.{name}] has no live certificate yet: its requests reach nothing until "
                            f"`doorkeep pki issue {name} --role integration`")
        elif app.read_only and entry.unlock_doors != ():
            raise PkiError(f"[integrations.{name}] unlock_doors is set, but integration {name!r} is read-only and may "
                           "publish no request (fix: drop unlock_doors, or revoke it and issue it again without "
                           "--read-only)")
    return warnings


def live_bridges(pki: Path) -> dict[str, tuple[str, ...]]:
    """The bridges with a live certificate in ``index.json``: name -> the building devices it carries."""
    return {r.name: r.bridged for r in sorted(load_index(pki), key=lambda r: r.name)
            if r.role == BRIDGE and r.revoked is None}


def revoke(pki: Path, name: str, *, now: datetime) -> int:
    """Revoke NAME's live certificate, rewrite the CRL, move its files to ``revoked/``; returns the serial.

    The broker reads the CRL when it starts: restart it (or reload its configuration) afterwards.
    """
    rows = load_index(pki)
    hits = [i for i, r in enumerate(rows) if r.name == name and r.revoked is None]
    if not hits:
        raise PkiError(f"{pki / 'index.json'}: {name!r} has no live certificate "
                       f"(fix: check the name; `doorkeep pki issue {name} --site {pki.parent}` issues one)")
    i = hits[0]
    rows[i] = Issued(rows[i].name, rows[i].serial, rows[i].role, rows[i].not_after, now.isoformat(), rows[i].read_only)
    _save_index(pki, rows)
    write_crl(pki, now=now)
    aside = pki / "revoked"
    aside.mkdir(exist_ok=True)
    for ext in ("crt", "key"):
        src = pki / f"{name}.{ext}"
        if src.exists():
            os.replace(src, aside / f"{name}-{rows[i].serial:x}.{ext}")
    return rows[i].serial


def write_crl(pki: Path, *, now: datetime) -> Path:
    """Write ``crl.pem`` listing every revoked serial, signed by the CA.

    Its next update is the CA's own expiry: OpenSSL refuses every client once a CRL has expired, and
    a broker that suddenly refuses every door is worse than a CRL that is rewritten only on revocation.
    """
    ca_cert, ca_key = load_ca(pki)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject)
               .last_update(now - BACKDATE)
               .next_update(ca_cert.not_valid_after_utc))
    for r in load_index(pki):
        if r.revoked is not None:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(r.serial)
                .revocation_date(datetime.fromisoformat(r.revoked)).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    _replace(pki / "crl.pem", crl.public_bytes(serialization.Encoding.PEM))
    return pki / "crl.pem"


# ------------------------------------------------------------- inventory


@dataclass(frozen=True)
class CertificateInfo:
    """One certificate file of ``SITE/pki`` with its expiry: a row of ``doorkeep pki list``, of the desk's
    Certificates page, and what the server's expiry watch (server/certificates.py) raises alarms from."""

    name: str
    """The file's stem: ``ca``, ``broker``, ``server``, ``operator``, a device id or an integration's name."""
    role: str
    """``ca``, ``broker``, ``server``, ``operator``, ``device`` or ``integration``, read from the certificate
    itself (``unknown`` when the file cannot be read)."""
    read_only: bool
    serial: int | None
    not_after: datetime | None
    """UTC; None when the file cannot be read (``error`` says why)."""
    error: str | None = None

    def days_left(self, now: datetime) -> float | None:
        """Days until it expires (negative once it has); None for an unreadable file."""
        if self.not_after is None:
            return None
        return (self.not_after - now).total_seconds() / 86_400

    def status(self, now: datetime, warn_days: float = EXPIRY_WARN_DAYS) -> str:
        """``unreadable``, ``expired``, ``expiring`` (within ``warn_days``) or ``ok``."""
        left = self.days_left(now)
        if left is None:
            return "unreadable"
        return "expired" if left <= 0 else "expiring" if left <= warn_days else "ok"


_ROLE_ORDER = ("ca", BROKER, SERVER, WORKER, OPERATOR, "device", INTEGRATION, BRIDGE, "unknown")


def _describe(cert: x509.Certificate) -> tuple[str, bool]:
    """(role, read_only) from the certificate alone: what doorkeep put in it when it issued it."""
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "ca", False
    except x509.ExtensionNotFound:
        pass
    units = {str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)}
    if integration_unit(True) in units:
        return INTEGRATION, True
    if integration_unit(False) in units:
        return INTEGRATION, False
    if BRIDGE in units:
        return BRIDGE, False
    try:
        if ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value:
            return BROKER, False
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return role_of(str(cns[0].value)) if cns else "unknown", False


def certificate_inventory(pki: Path) -> list[CertificateInfo]:
    """Every certificate file in ``pki`` (the CA's, the broker's, the server's, the operator's, each device's
    and integration's; not the revoked ones set aside in ``revoked/``), CA first, then by role and name.

    Read from the files, not from ``index.json``: what expires is what the broker and the clients load. An
    empty list when ``pki`` does not exist (a site on plain MQTT has no certificates); a file that cannot be
    read or parsed is listed with its ``error``, never skipped.
    """
    if not pki.is_dir():
        return []
    found: list[CertificateInfo] = []
    for path in sorted(pki.glob("*.crt")):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except OSError as exc:
            found.append(CertificateInfo(path.stem, "unknown", False, None, None, f"cannot read it: {exc.strerror}"))
            continue
        except ValueError:
            found.append(CertificateInfo(path.stem, "unknown", False, None, None, "not a PEM certificate"))
            continue
        role, read_only = _describe(cert)
        found.append(CertificateInfo(path.stem, role, read_only, cert.serial_number, cert.not_valid_after_utc))
    return sorted(found, key=lambda c: (_ROLE_ORDER.index(c.role), c.name))


def renewal_hint(info: CertificateInfo, site: Path | str = "SITE") -> str:
    """How to replace a certificate: the commands for its role (a new CA means re-issuing every certificate)."""
    if info.role == "ca":
        return ("a new site CA means a new certificate for every client: plan it (`doorkeep pki init` in a new "
                "directory, then issue each certificate again); docs/security.md")
    extra = (" --role integration" + (" --read-only" if info.read_only else "")) if info.role == INTEGRATION else ""
    extra += " --host HOST" if info.role == BROKER else ""
    return (f"`doorkeep pki revoke {info.name} --site {site}` then `doorkeep pki issue {info.name} --site {site}"
            f"{extra}`, copy the new pair where it is used, restart the broker")


# --------------------------------------------------------- Mosquitto files


def integration_topic(site_id: str, name: str, leaf: str) -> str:
    """A topic of the server's integration API for integration ``name``: ``leaf`` is ``request`` (the
    integration publishes) or ``response`` (it reads). Under the server's own subtree, which no device
    may take (``server`` is reserved), so the device pattern never reaches it."""
    return f"doorkeep/v1/{site_id}/{SERVER}/{INTEGRATION}/{name}/{leaf}"


def _integration_lines(base: str, site_id: str, integration: Integration, *, deny_own: bool) -> list[str]:
    """One integration's rights in one site: events, state and availability to read; its request topic to
    write and its response topic to read unless read-only; never a request, decision, command, policy or
    snapshot of a device. ``deny_own``: the site's ACL has the device pattern, which would give the CN
    ``doorkeep/v1/SITE/NAME/#``; an explicit ``topic deny`` in the user's block takes it away (measured on
    Mosquitto 2.0.11: the deny wins over the pattern, tests/e2e/test_integration_acl.py)."""
    name = integration.name
    lines = [f"topic deny {base}/{name}/#"] if deny_own else []
    lines += [f"topic read {base}/+/door/+/event", f"topic read {base}/+/state", f"topic read {base}/+/availability"]
    if not integration.read_only:
        lines += [f"topic write {integration_topic(site_id, name, 'request')}",
                  f"topic read {integration_topic(site_id, name, 'response')}"]
    return lines


def _home_assistant_lines(settings: HomeAssistantSettings, apps: list[Integration]) -> tuple[list[str], dict[str, list[str]]]:
    """Home Assistant's discovery (site.toml [home_assistant], server/home_assistant.py): the server's lines (its
    node's configs, alarm summary and lock commands under the prefix, and HA's status), and the lines of the
    integration HA connects as: the whole prefix to read, its birth and last will (``PREFIX/status``: Mosquitto
    would drop a client whose will it may not publish) and, only with ``unlock``, the lock command topics."""
    if not settings.configured:
        return [], {}
    server = [f"topic readwrite {settings.node_filter()}", f"topic read {settings.status_topic()}"]
    if not settings.enabled:
        return server, {}
    app = next((a for a in apps if a.name == settings.integration), None)
    if app is None:
        return [*server, f"# [home_assistant] integration {settings.integration!r} has no live certificate yet: "
                         f"`doorkeep pki issue {settings.integration} --role integration`, then regenerate this file"], {}
    if settings.unlock and app.read_only:
        raise PkiError(f"[home_assistant] unlock = true, but integration {app.name!r} is read-only (fix: set unlock "
                       f"= false, or revoke it and issue it again without --read-only)")
    lines = [f"topic read {settings.discovery_prefix}/#", f"topic write {settings.status_topic()}"]
    if settings.unlock:
        lines.append(f"topic write {settings.command_filter()}")
    return server, {app.name: lines}


def broker_acl(sites: str | Mapping[str, Iterable[str]], *, observers: Iterable[str] = (),
               integrations: Iterable[Integration] = (), bridges: Mapping[str, Iterable[str]] | None = None,
               workers: Iterable[str] = (),
               home_assistant: HomeAssistantSettings | Mapping[str, HomeAssistantSettings] | None = None) -> str:
    """The ACL: each device its own subtree (plus reading the server's availability), the server the site,
    the operator's tools the commands and their results, each integration what it may read.

    One site id gives a site's own broker: one ``pattern`` line confines every certificate (CN = device id)
    to its subtree. A mapping ``{site: device ids}`` gives one broker serving a campus of sites (and the
    test suite's session broker): a CN says nothing about its site, so each device gets its own subtree in
    its own site only, listed by name, and the certificate named ``server`` reads and writes every site.
    A device id may then appear in one site only.

    ``operator`` (``doorkeep door unlock``, ``doorkeep lockdown``) may write any device's ``cmd`` and read
    any ``cmd/result``, nothing else: it cannot forge decisions, policy or availability. ``observers``:
    extra identities that read and write whole sites like the server (test peers on a test broker only;
    a production ACL has none), so they never need the server's own certificate, and so never drop it.

    ``integrations`` (:func:`live_integrations`): each reads every device's events, state and availability,
    and unless read-only writes its own request topic of the server's integration API and reads its
    response (:func:`integration_topic`); nothing else, and in a one-site ACL an explicit ``deny`` takes
    away the subtree the device pattern would give its CN. With a campus mapping, in every site listed.
    A name that is reserved, a device id, an observer, or listed twice is refused.

    ``workers`` (:func:`live_workers`: certificate names ``worker-NAME``): each server worker reads the requests and
    the heartbeats and writes the decisions, in every site listed (:func:`worker_acl_lines`).

    ``bridges`` (:func:`live_bridges`, one site only): each building broker's bridge reads and writes exactly
    its building's device subtrees and reads the server's availability (doorkeep.bridge.bridge_acl_lines).

    ``home_assistant``: the site's [home_assistant] settings (a mapping by site for a campus): the server may
    write its node's topics under the discovery prefix, and the integration they name reads the prefix and,
    with ``unlock``, writes the lock command topics (:func:`_home_assistant_lines`).
    """
    def segment(value: str, what: str) -> str:
        if not SEGMENT.match(value):
            raise PkiError(f"{what} {value!r} is not a valid topic segment (fix: use letters, digits, '_' and '-')")
        return value

    def operator(base: str) -> list[str]:
        return [f"topic write {base}/+/cmd", f"topic read {base}/+/cmd/result"]

    watchers = [segment(o, "observer") for o in observers]
    worker_names = sorted(set(workers))
    for w in worker_names:
        if not (SEGMENT.match(w) and w.startswith(WORKER_PREFIX)):
            raise PkiError(f"worker certificate {w!r} is not named {WORKER_PREFIX}NAME (fix: `doorkeep pki issue "
                           f"{WORKER_PREFIX}NAME`)")

    def worker_blocks(site_ids: list[str], *, deny_own: bool) -> list[str]:
        out: list[str] = []
        for w in worker_names:
            out += [f"# Server worker {w.removeprefix(WORKER_PREFIX)}: its share of the requests, their decisions, "
                    "the heartbeats.", f"user {w}"]
            for site_id in site_ids:
                out += worker_acl_lines(f"doorkeep/v1/{site_id}", w, deny_own=deny_own)
            out.append("")
        return out

    for o in watchers:
        if o in RESERVED:
            raise PkiError(f"observer {o!r} is reserved (fix: give test observers a name of their own)")
    apps = sorted(integrations, key=lambda i: i.name)
    known_devices = [] if isinstance(sites, str) else [d for devices in sites.values() for d in devices]
    for i, app in enumerate(apps):
        check_integration_name(app.name, known_devices)
        if app.name in watchers or (i and apps[i - 1].name == app.name):
            raise PkiError(f"integration {app.name!r} is listed twice or is an observer (fix: one name per identity)")

    if home_assistant is None:
        ha_settings: dict[str, HomeAssistantSettings] = {}
    elif isinstance(home_assistant, HomeAssistantSettings):
        if not isinstance(sites, str):
            raise PkiError("home_assistant for a campus is a mapping by site (fix: {SITE: settings})")
        ha_settings = {sites: home_assistant}
    else:
        ha_settings = dict(home_assistant)
    ha_server: dict[str, list[str]] = {}
    ha_apps: dict[tuple[str, str], list[str]] = {}
    for site_id, settings in ha_settings.items():
        server_lines, app_lines = _home_assistant_lines(settings, apps)
        ha_server[site_id] = server_lines
        ha_apps.update({(site_id, name): lines for name, lines in app_lines.items()})

    def integration_blocks(site_ids: list[str], *, deny_own: bool) -> list[str]:
        out: list[str] = []
        for app in apps:
            what = ("publishes nothing" if app.read_only
                    else "sends requests to the server's integration API and reads its answers")
            out += [f"# Integration {app.name}{' (read-only)' if app.read_only else ''}: reads events, state and "
                    f"availability; {what}.", "# Never a device's requests, decisions, commands, policy or snapshots.",
                    f"user {app.name}"]
            for site_id in site_ids:
                out += _integration_lines(f"doorkeep/v1/{site_id}", site_id, app, deny_own=deny_own)
                if (site_id, app.name) in ha_apps:
                    unlock = ha_settings[site_id].unlock
                    out += ["# Home Assistant discovery ([home_assistant]): the prefix to read, HA's status to write"
                            + ("; the lock commands, which the server checks, audits and signs." if unlock
                               else "; no lock command (unlock is off)."), *ha_apps[site_id, app.name]]
            out.append("")
        return out

    header = ("# The user name is the client certificate's CN (use_identity_as_username), and so is its client id\n"
              "# (use_username_as_clientid): one connection per certificate.")
    if isinstance(sites, str):
        base = f"doorkeep/v1/{segment(sites, 'site id')}"
        lines = [
            f"# doorkeep ACL for site {sites}, generated by `doorkeep broker config`; regenerate, do not edit.",
            header,
            "",
            "# Every device: read and write its own subtree only (availability, state, requests, decisions,",
            "# events, snapshots, commands, policy).",
            f"pattern readwrite {base}/%u/#",
            "# Every device hears whether the server is up (it then asks the server before deciding offline).",
            f"pattern read {base}/server/availability",
            "",
            "# The server reads and writes the whole site (its own availability included).",
            f"user {SERVER}",
            f"topic readwrite {base}/#",
            *ha_server.get(sites, []),
            "",
            "# The operator's command-line tools: signed commands to any device and their results, nothing else.",
            f"user {OPERATOR}",
            *operator(base),
            "",
            *integration_blocks([sites], deny_own=True),
            *worker_blocks([sites], deny_own=True),
        ]
        from doorkeep.bridge import bridge_acl_lines  # doorkeep.bridge imports nothing of this module
        for name, bridged in sorted((bridges or {}).items()):
            check_integration_name(name, known_devices)
            lines += [f"# Bridge {name}: a building broker's uplink; its building's devices only.", f"user {name}",
                      *bridge_acl_lines(sites, name, bridged, deny_own=True), ""]
        for o in watchers:
            lines += ["# A test observer: the whole site, under its own identity.", f"user {o}",
                      f"topic readwrite {base}/#", ""]
        return "\n".join(lines)
    if bridges:
        raise PkiError("bridges are generated for one site's broker (fix: one `doorkeep broker config` per site)")
    if not sites:
        raise PkiError("no site given (fix: name at least one site and its device ids)")
    seen: dict[str, str] = {}
    lines = [f"# doorkeep ACL for sites {', '.join(sites)}, generated; regenerate, do not edit.", header,
             "# Each device reads and writes its own subtree in its own site, and reads that site's",
             "# server availability; nothing else.", ""]
    for site_id, devices in sites.items():
        base = f"doorkeep/v1/{segment(site_id, 'site id')}"
        for device in sorted(set(devices)):
            segment(device, "device id")
            if device in RESERVED or device in watchers or device.startswith(WORKER_PREFIX):
                raise PkiError(f"{device!r} is reserved (fix: rename the device in site {site_id})")
            if device in seen:
                raise PkiError(f"device id {device!r} is in sites {seen[device]} and {site_id}: a certificate's CN "
                               "cannot tell them apart (fix: device ids must be unique across one broker's sites)")
            seen[device] = site_id
            lines += [f"user {device}", f"topic readwrite {base}/{device}/#", f"topic read {base}/server/availability", ""]
    lines += ["# The server reads and writes every site (its own availability included).", f"user {SERVER}",
              *(f"topic readwrite doorkeep/v1/{site_id}/#" for site_id in sites),
              *(line for site_id in sites for line in ha_server.get(site_id, [])), "",
              "# The operator's tools: signed commands and their results, in every site.", f"user {OPERATOR}",
              *(line for site_id in sites for line in operator(f"doorkeep/v1/{site_id}")), "",
              *integration_blocks(list(sites), deny_own=False), *worker_blocks(list(sites), deny_own=False)]
    for o in watchers:
        lines += ["# A test observer: every site, under its own identity.", f"user {o}",
                  *(f"topic readwrite doorkeep/v1/{site_id}/#" for site_id in sites), ""]
    return "\n".join(lines)


def message_size_limit(people: int = 0) -> int:
    """The broker's ``message_size_limit`` in bytes for a site of ``people`` people: the largest message
    a legitimate client publishes, with margin.

    Devices publish sealed snapshots (at most :data:`~doorkeep.contract.MAX_SNAPSHOT_BYTES`); the server
    publishes each device's signed policy, which grows with the people who may pass its doors (a lobby
    policy at 110,000 people weighs ~24 MB). Mosquitto 2.0 has one limit for every client, so it is the
    larger of :data:`MESSAGE_SIZE_FLOOR` and :data:`POLICY_BYTES_PER_PERSON` per person, in whole MiB.
    A policy above the limit would be dropped by the broker and the doors would keep the older one:
    regenerate the configuration before the site outgrows it (docs/configuration.md, Broker).
    """
    if people < 0:
        raise PkiError(f"people {people} is negative (fix: give the most people the site will hold)")
    policy = -(-people * POLICY_BYTES_PER_PERSON // MIB) * MIB
    return max(MESSAGE_SIZE_FLOOR, policy)


def broker_config(site_id: str | Iterable[str], pki: Path, acl_file: Path, *, port: int = DEFAULT_PORT, bind: str | None = None,
                  persistence_dir: Path | None = Path("/var/lib/mosquitto"), size_limit: int = MESSAGE_SIZE_FLOOR,
                  log_file: Path | None = None) -> str:
    """The Mosquitto configuration: one mutual-TLS listener, the ACL, and what doorkeep needs for reliability.

    ``bind`` None listens on every interface (the Pis reach the broker over the network); give an
    address to listen on one only. Paths are written absolute, so Mosquitto finds them from anywhere.
    ``size_limit``: the largest payload accepted (:func:`message_size_limit`). ``log_file``: where the
    broker logs (instead of stderr), for the server's broker-log watcher (server/brokerlog.py); None: Mosquitto's
    default (stderr, the journal under systemd).
    """
    if not 1 <= port <= 65535:
        raise PkiError(f"port {port} is not a TCP port (fix: use 1-65535; MQTT over TLS is 8883)")
    if size_limit < MESSAGE_SIZE_FLOOR:
        raise PkiError(f"message size limit {size_limit} is below {MESSAGE_SIZE_FLOOR}, the largest sealed snapshot "
                       "with margin (fix: use doorkeep.pki.message_size_limit)")
    pki = pki.resolve()
    site_id = site_id if isinstance(site_id, str) else ", ".join(site_id)
    listener = f"listener {port} {bind}" if bind else f"listener {port}"
    lines = [
        f"# doorkeep Mosquitto configuration for site {site_id}, generated by `doorkeep broker config`.",
        "# Mutual TLS only: no plain listener, no anonymous clients; the ACL confines each device.",
        "# Run it with `mosquitto -c THIS_FILE`; regenerate it rather than editing it.",
        "",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {acl_file.resolve()}",
        "",
        "# Nagle's algorithm adds ~40 ms to every request/decision hop.",
        "set_tcp_nodelay true",
        "# The defaults (1000 queued, 20 in flight per client) drop QoS 1 messages to a",
        "# slow subscriber; doorkeep must lose no event.",
        "max_queued_messages 0",
        "max_inflight_messages 0",
        "",
        "# The largest payload accepted, from any client: a larger one is dropped (and acknowledged, so a",
        "# device's queue moves on). Sized for the largest sealed snapshot and the largest signed policy",
        "# (`doorkeep broker config --people N`; docs/configuration.md, Broker).",
        f"message_size_limit {size_limit}",
        "",
        "# Every connection and every refused TLS handshake (a revoked certificate still trying) is logged;",
        "# the server raises `certificate_refused` from the log file (docs/alarms.md).",
        "connection_messages true",
        *([f"log_dest file {log_file}"] if log_file is not None else []),
        "",
    ]
    if persistence_dir is not None:
        lines += [
            "# The server's persistent session and the events queued for it survive a broker restart.",
            "persistence true",
            f"persistence_location {str(persistence_dir).rstrip('/')}/",
            "autosave_interval 1",
            "",
        ]
    else:
        lines += ["persistence false", ""]
    lines += [
        listener,
        "# The site CA, the broker's own certificate (SAN: the names clients connect to) and the",
        "# revocation list (read at start: restart the broker after `doorkeep pki revoke`).",
        f"cafile {pki / 'ca.crt'}",
        f"certfile {pki / 'broker.crt'}",
        f"keyfile {pki / 'broker.key'}",
        f"crlfile {pki / 'crl.pem'}",
        "require_certificate true",
        "use_identity_as_username true",
        "# The client id is the certificate's CN whatever the client asks for: no certificate can take",
        "# over the server's or another device's session (one connection per certificate).",
        "use_username_as_clientid true",
        "# The minimum version: TLS 1.2 and 1.3 are accepted.",
        "tls_version tlsv1.2",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- clients


PLAIN_FIX = ("use an mqtts:// broker URL with the site CA and this client's certificate (docs/security.md, "
             "Transport); for development only, allow plain MQTT explicitly: `allow_plain_mqtt = true` in the "
             "device file's [broker], or --allow-plain-mqtt")


def check_transport(broker: BrokerConfig) -> str | None:
    """Refuse plain ``mqtt://`` unless ``broker.allow_plain``; returns the WARNING to log when it is allowed.

    Without TLS anyone on the network reads every card hash and decision and can forge a door's traffic,
    so plain MQTT is never a silent default: it needs the explicit development flag (or the demo's own
    embedded broker on loopback, which the site runner allows in code). None for ``mqtts://``.
    """
    if broker.tls:
        return None
    if not broker.allow_plain:
        raise ConfigError(broker.url, "broker.url", "plain MQTT without TLS is refused", PLAIN_FIX)
    return (f"plain MQTT without TLS to {broker.host}:{broker.port}: development only; "
            "anyone on the network can read and forge door traffic")


def client_tls_context(broker: BrokerConfig) -> ssl.SSLContext | None:
    """The TLS context an MQTT client uses for ``broker`` (None for plain ``mqtt://``).

    TLS 1.2 at least, the broker's certificate checked against the site CA and its name against the
    host in the URL, and this client's own certificate presented. A missing or broken file is a
    :class:`ConfigError` naming it, raised before any connection is tried.
    """
    if not broker.tls:
        return None
    files = (("ca_file", broker.ca_file), ("cert_file", broker.cert_file), ("key_file", broker.key_file))
    for key, path in files:
        if path is None:
            raise ConfigError(broker.url, f"broker.{key}", "is required with an mqtts:// URL",
                              f"set {key} to the file `doorkeep pki issue` wrote")
        if not Path(path).is_file():
            raise ConfigError(str(path), f"broker.{key}", "file not found",
                              "copy it from the site's pki/ directory (`doorkeep pki issue NAME --site DIR`)")
    mode = stat.S_IMODE(Path(broker.key_file).stat().st_mode)  # type: ignore[arg-type]
    if mode & 0o077:
        raise ConfigError(str(broker.key_file), "broker.key_file",
                          f"private key is accessible by group or others (mode {mode:03o})",
                          f"chmod 600 {broker.key_file}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED on
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=str(broker.ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(str(broker.ca_file), "broker.ca_file", f"not a usable CA certificate: {exc}",
                          "use the site's pki/ca.crt") from None
    try:
        ctx.load_cert_chain(certfile=str(broker.cert_file), keyfile=str(broker.key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(str(broker.cert_file), "broker.cert_file",
                          f"certificate and key {broker.key_file} are not a usable pair: {exc}",
                          "use NAME.crt and NAME.key issued together by `doorkeep pki issue NAME`") from None
    return ctx
