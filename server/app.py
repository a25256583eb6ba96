"""Wiring of the server: site directory + credential key + store + bus.

``bootstrap`` takes its parts as arguments, so tests and the demo build the
same server the command line does, with their own data directory, broker
and clock.
"""

from __future__ import annotations

import dataclasses

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from doorkeep.clock import Clock, SystemClock
from doorkeep.config import BrokerConfig, SiteBundle, load_site_dir
from doorkeep.credentials import load_key
from doorkeep.envelope import SnapshotKeys, load_snapshot_keys
from doorkeep.model import Site
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.policy import load_private_key
from server.audit import AuditLog, record_site_changes
from server.backup import BackupJob
from server.certificates import CertificateWatch
from server.bus import ServerBus
from server.commands import CommandSender
from server.directory import Directory
from server.home_assistant import HomeAssistant
from server.integration_api import IntegrationApi
from server.intrusion import IntrusionDetector
from server.mail import MailQueue
from server.metrics import ServerMetrics, metrics_token_from_env
from server.passes import PassKeys, Passes, load_pass_keys
from server.people import PeopleService
from server.publisher import PolicyPublisher
from server.retention import RetentionJob
from server.siem import Siem, connector_for
from server.siteadmin import SiteAdmin
from server.store import Store
from server.store_url import check_backup, open_store, resolve_store_url
from server.supervision import DEFAULT_DEVICE_TIMEOUT_S, DEFAULT_GAP_TIMEOUT_S, Supervisor
from server.visitors import DoorCheckout
from server.webhooks import Webhooks

if TYPE_CHECKING:
    from server.shared_decisions import SharedDecisions

log = logging.getLogger("doorkeep.server")


@dataclass(frozen=True)
class Workers:
    """What :func:`bootstrap` needs to run the leader of several workers (server/workers.py).

    ``client_id``: the persistent session every leader of the site uses; ``shared``: the calling thread's access to
    the rules' shared state (moves and presence go there); ``site_changed``: tells the standbys of a change."""

    client_id: str
    shared: Callable[[], SharedDecisions]
    site_changed: Callable[[Site], None]
    will_delay_s: float = 5.0  # the leader's last will waits this long for a standby to take the session over
    # (server/workers.py WILL_DELAY_S)


@dataclass
class Server:
    directory: Directory
    store: Store
    bus: ServerBus
    commands: CommandSender  # signed remote unlock / lock / lockdown / sync (server/commands.py)
    audit: AuditLog | None = None  # the hash-chained audit log every feature records to (server/audit.py)
    retention: RetentionJob | None = None  # deletes expired data at start and daily (server/retention.py)
    intrusion: IntrusionDetector | None = None  # card probing, PIN guessing, door attacks (server/intrusion.py)
    siteadmin: SiteAdmin | None = None  # the site model's revisions: every change goes through it (server/siteadmin.py)
    people: PeopleService | None = None  # people, cards, visitor badges in the store (server/people.py)
    backup: BackupJob | None = None  # scheduled encrypted backups, site.toml [backup] (server/backup.py)
    mail: MailQueue | None = None  # outbound mail (invitations, host notices), site.toml [smtp] (server/mail.py)
    passes: Passes | None = None  # visitor passes: issue, revoke (server/passes.py)
    webhooks: Webhooks | None = None  # signed webhooks from a durable queue (server/webhooks.py)
    certificates: CertificateWatch | None = None  # SITE/pki expiry: certificate_expiring (server/certificates.py)
    metrics: ServerMetrics | None = None  # /healthz, /readyz, /metrics (server/metrics.py, docs/operations.md)
    siem: Siem | None = None  # syslog to a SIEM from a durable queue, site.toml [siem] (server/siem.py)
    home_assistant: HomeAssistant | None = None  # MQTT discovery, site.toml [home_assistant] (server/home_assistant.py)
    integration_api: IntegrationApi | None = None  # integrations' MQTT requests, [integrations.NAME] (server/integration_api.py)

    @property
    def site(self) -> Site:
        return self.directory.site

    @property
    def supervisor(self) -> Supervisor:
        return self.bus.supervisor

    def start(self, wait_s: float = 10.0) -> None:
        self.bus.start(wait_s)
        if self.retention is not None:
            self.retention.start()
        if self.siteadmin is not None:
            self.siteadmin.start_polling()
        if self.backup is not None:
            self.backup.start()
        if self.mail is not None:
            self.mail.start()
        if self.webhooks is not None:
            self.webhooks.start()
        if self.certificates is not None:
            self.certificates.start()
        if self.siem is not None:
            self.siem.start()
        if self.home_assistant is not None:
            self.home_assistant.start()
        if self.integration_api is not None:
            self.integration_api.start()

    def stop(self) -> None:
        if self.siem is not None:
            self.siem.stop()
        if self.home_assistant is not None:
            self.home_assistant.stop()
        if self.integration_api is not None:
            self.integration_api.stop()
        if self.webhooks is not None:
            self.webhooks.stop()
        if self.certificates is not None:
            self.certificates.stop()
        if self.mail is not None:
            self.mail.stop()
        if self.backup is not None:
            self.backup.stop()
        if self.siteadmin is not None:
            self.siteadmin.stop_polling()
        if self.retention is not None:
            self.retention.stop()
        self.bus.stop()
        self.store.close()


def bootstrap(bundle: SiteBundle, data_dir: Path, broker: BrokerConfig, *, key: bytes | None = None,
              signing_key: Ed25519PrivateKey | None = None, clock: Clock | None = None,
              device_timeout_s: float = DEFAULT_DEVICE_TIMEOUT_S,
              gap_timeout_s: float = DEFAULT_GAP_TIMEOUT_S, snapshot_keys: SnapshotKeys | None = None,
              pass_keys: PassKeys | None = None, store_url: str | None = None, workers: Workers | None = None) -> Server:
    """The server for a site; keys default to the site directory's key files.

    ``snapshot_keys``: the X25519 key edges seal snapshots to and the site data keys (default
    ``SITE/keys/snapshot.key`` and ``data-keys.json``, or ``$DOORKEEP_SNAPSHOT_KEY`` / ``$DOORKEEP_DATA_KEYS``).

    ``store_url``: where the records live (a ``postgresql://`` URL); default the site's ``[store] url``, else SQLite
    in ``data_dir`` (``doorkeep server`` resolves ``--store`` and ``$DOORKEEP_STORE_URL`` first: server/store_url.py).

    ``pass_keys``: the visitor pass key (default ``SITE/keys/pass-signing.key`` when it exists; without one the
    site issues no passes: server/passes.py).

    ``workers``: run as the leader of several workers (server/workers.py): the requests are left to the workers'
    shared subscription, and presence moves through the shared decision state.

    ``device_timeout_s``: a device heard from none of its messages for this long raises ``device_offline``;
    ``gap_timeout_s``: missing event numbers not filled within this long raise ``event_gap`` (docs/alarms.md).
    """
    clock = clock or SystemClock()
    store_url = store_url or resolve_store_url(bundle.store)  # $DOORKEEP_STORE_URL, else [store] url
    check_backup(bundle.backup, store_url, str(bundle.dir / "site.toml"))  # [backup] copies SQLite only
    if key is None:
        key = load_key(bundle.credential_key_file, source=str(bundle.dir))
    if signing_key is None:
        signing_key = load_private_key(bundle.dir / "keys" / "policy-signing.key")
    if snapshot_keys is None:
        snapshot_keys = load_snapshot_keys(bundle.dir / "keys", source=str(bundle.dir))
    if pass_keys is None:
        pass_keys = load_pass_keys(bundle.dir / "keys")
    door_devices = {door: dev.id for dev in bundle.devices.values() for door in dev.doors}
    store = open_store(data_dir, store_url, keys=snapshot_keys)
    audit = AuditLog(store, clock)
    record_site_changes(audit, bundle, key)
    # The site model lives in the store (server/siteadmin.py): the first start imports site.toml as revision 1;
    # once a revision newer than the file is live (a change from the desk or `doorkeep site import`), it wins.
    siteadmin = SiteAdmin(store, bundle.dir, clock, audit=audit)
    live = siteadmin.start()
    if live is not None:
        bundle = dataclasses.replace(bundle, site=live.site, retention=live.retention, intrusion=live.intrusion,
                                     backup=live.backup, smtp=live.smtp, invitations=live.invitations,
                                     home_assistant=live.home_assistant, siem=live.siem,
                                     integrations=live.integrations)
    # People live in the store too (server/people.py): the first start imports people.toml (inside Directory);
    # later starts only warn when the file differs from the store.
    people_seeded = store.people_seeded()
    directory = Directory(bundle, key, store, clock, audit=audit)
    people = PeopleService(store, key, clock, audit=audit, directory=directory)
    if people_seeded:
        people.check_file(bundle)
    siteadmin.people = people
    retention = RetentionJob(store, bundle.retention, clock, audit, on_visitors_removed=directory.forget)
    publisher = PolicyPublisher(bundle.site.id, {d.id: list(d.doors) for d in bundle.devices.values()},
                                signing_key, store, clock, snapshot_key=snapshot_keys.recipient,
                                reader_signals=bundle.intrusion.reader_signals(),
                                pass_keys=pass_keys.policy_keys() if pass_keys is not None else None)
    client_id = workers.client_id if workers is not None else server_client_id(key, bundle.site.id, data_dir)
    supervisor = Supervisor(store, clock, devices=[*(d.id for d in bundle.devices.values()), *door_devices.values()],
                            device_timeout_s=device_timeout_s, gap_timeout_s=gap_timeout_s)
    bus = ServerBus(directory, door_devices, store, broker, clock=clock, publisher=publisher, client_id=client_id,
                    supervisor=supervisor, answer_requests=workers is None,
                    will_delay_s=workers.will_delay_s if workers is not None else 0)
    directory.listeners.append(bus.publish_policies)
    if workers is not None:
        directory.shared = workers.shared
        directory.listeners.insert(0, workers.site_changed)  # before the policies: seconds to sign on a large site
    directory.defer = bus.defer
    commands = CommandSender(lambda: directory.site, door_devices, signing_key, clock, bus.publish, directory=directory,
                             audit=audit)
    bus.command_results.append(commands.on_result)
    # Intrusion signals count the events the store took in for the first time (never a re-delivery).
    intrusion = IntrusionDetector(store, bundle.intrusion, clock)
    bus.listeners.append(intrusion.on_event)
    # A visitor's pass granted at a `visitor_checkout` door checks the visit out, from the stored event (also
    # an offline grant that arrives late); server/visitors.py DoorCheckout.
    bus.listeners.append(DoorCheckout(directory, audit).on_event)

    def apply_revision(live: SiteBundle) -> None:
        """A committed site revision, everywhere it matters: decisions and policies, retention, intrusion."""
        publisher.reader_signals = live.intrusion.reader_signals()  # signed into the policies replace_site sends
        directory.replace_site(live)
        retention.settings = live.retention  # read at each run
        intrusion.configure(live.intrusion)

    siteadmin.apply = apply_revision
    # Backups (docs/backups.md): [backup] as the server started; a changed table takes effect at the next start.
    backup = BackupJob(store, bundle.backup, bundle.site.id, data_dir, clock) if bundle.backup.enabled else None
    # Outbound mail (docs/configuration.md [smtp]): a durable queue in the store, sent by its own thread; the
    # relay password is read now, so a missing one stops the start with the key to fix.
    mail = MailQueue(store, bundle.smtp, clock) if bundle.smtp.enabled else None
    site = directory.site
    log.info("site %s: %d doors, %d people, %d cards", site.id, len(site.doors), len(site.people), len(site.credentials))
    passes = Passes(directory, store, clock, pass_keys, audit=audit)
    server = Server(directory, store, bus, commands, audit=audit, retention=retention, intrusion=intrusion,
                    siteadmin=siteadmin, people=people, backup=backup, passes=passes, mail=mail)
    # Webhooks (docs/operations.md "Webhooks"): the bus and alarm writes only wake the worker, which reads what
    # was stored after its cursors and delivers from the queue in the store, on its own thread.
    pki_ca = bundle.dir / "pki" / "ca.crt"
    server.webhooks = Webhooks(store, clock, site=lambda: directory.site, site_id=bundle.site.id, audit=audit,
                               ca_file=pki_ca if pki_ca.is_file() else None)
    bus.listeners.append(server.webhooks.on_event)
    store.on_alarm_write(server.webhooks.on_event)
    # SIEM export (docs/operations.md "SIEM (syslog)"): like webhooks, fed from the store after its cursors; [siem] as
    # the server started (a changed table takes effect at the next start). A CA, certificate or key it cannot use
    # stops the start here, with the key to fix.
    if bundle.siem.enabled:
        server.siem = Siem(store, clock, bundle.siem, site=lambda: directory.site, site_id=bundle.site.id,
                           connector=connector_for(bundle.siem, pki_ca))
        bus.listeners.append(server.siem.wake)
        store.on_alarm_write(server.siem.wake)
    # Certificate expiry (docs/alarms.md certificate_expiring): SITE/pki checked at start and daily.
    server.certificates = CertificateWatch(store, bundle.dir / "pki", clock)
    # Home Assistant MQTT discovery (docs/operations.md "Home Assistant"): routes on the bus before it connects;
    # [home_assistant] as the server started (a changed table takes effect at the next start, as [backup]).
    if bundle.home_assistant.configured:
        server.home_assistant = HomeAssistant(bundle.home_assistant, directory, bus, store, commands, clock,
                                              audit=audit)
    # The integration request API (docs/operations.md "The integration request API"): routes on the bus before it
    # connects; [integrations.NAME] as the server started; SITE/pki/index.json read at each request.
    server.integration_api = IntegrationApi(bundle.integrations, directory, bus, commands, clock,
                                            pki=bundle.dir / "pki", audit=audit)
    # Health and Prometheus metrics (server/metrics.py): a registry of this server's own, read at scrape time;
    # /metrics asks for $DOORKEEP_METRICS_TOKEN as a bearer token when it is set.
    server.metrics = ServerMetrics(server, clock=clock, site_dir=bundle.dir, token=metrics_token_from_env())
    return server


def server_client_id(key: bytes, site_id: str, data_dir: Path) -> str:
    """The server's MQTT client id: stable per site key and data directory, unguessable without the key.

    Stable, because the broker's persistent session (clean_session=False) must survive restarts; secret
    (an HMAC of the credential key, which only the server holds), because on a broker that does not bind
    client ids to certificates (the demo's embedded broker, a third-party broker) whoever knows a client's
    id can connect with it and drop that client again and again (docs/security.md, Transport).
    """
    return keyed_client_id(key, site_id, str(data_dir.resolve()).encode())


def keyed_client_id(key: bytes, site_id: str, scope: bytes) -> str:
    """``doorkeep-server-SITE-TAG``, TAG an HMAC of ``scope`` under the credential key (server_client_id's reasons);
    the several workers of a site share one (server/workers.py ``workers_client_id``)."""
    tag = hmac.new(key, b"doorkeep mqtt client id\0" + scope, hashlib.sha256)
    return f"doorkeep-server-{site_id}-{tag.hexdigest()[:32]}"


def load(site_dir: Path | str, data_dir: Path | str, broker_url: str) -> Server:
    return bootstrap(load_site_dir(site_dir), Path(data_dir), BrokerConfig(broker_url))
