"""Wiring of the server: site directory + credential key + store + bus.

``bootstrap`` takes its parts as arguments, so tests and the demo build the
same server the command line does, with their own data directory, broker
and clock.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from doorkeep.clock import Clock, SystemClock
from doorkeep.config import BrokerConfig, SiteBundle, load_site_dir
from doorkeep.credentials import load_key
from doorkeep.model import Site
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.policy import load_private_key
from server.bus import ServerBus
from server.directory import Directory
from server.publisher import PolicyPublisher
from server.store import Store
from server.supervision import DEFAULT_DEVICE_TIMEOUT_S, DEFAULT_GAP_TIMEOUT_S, Supervisor

log = logging.getLogger("doorkeep.server")


@dataclass
class Server:
    directory: Directory
    store: Store
    bus: ServerBus

    @property
    def site(self) -> Site:
        return self.directory.site

    @property
    def supervisor(self) -> Supervisor:
        return self.bus.supervisor

    def start(self, wait_s: float = 10.0) -> None:
        self.bus.start(wait_s)

    def stop(self) -> None:
        self.bus.stop()
        self.store.close()


def bootstrap(bundle: SiteBundle, data_dir: Path, broker: BrokerConfig, *, key: bytes | None = None,
              signing_key: Ed25519PrivateKey | None = None, clock: Clock | None = None,
              device_timeout_s: float = DEFAULT_DEVICE_TIMEOUT_S,
              gap_timeout_s: float = DEFAULT_GAP_TIMEOUT_S) -> Server:
    """The server for a site; keys default to the site directory's key files.

    ``device_timeout_s``: a device heard from none of its messages for this long raises ``device_offline``;
    ``gap_timeout_s``: missing event numbers not filled within this long raise ``event_gap`` (docs/alarms.md).
    """
    clock = clock or SystemClock()
    if key is None:
        key = load_key(bundle.credential_key_file, source=str(bundle.dir))
    if signing_key is None:
        signing_key = load_private_key(bundle.dir / "keys" / "policy-signing.key")
    door_devices = {door: dev.id for dev in bundle.devices.values() for door in dev.doors}
    store = Store(data_dir)
    directory = Directory(bundle, key, store, clock)
    publisher = PolicyPublisher(bundle.site.id, {d.id: list(d.doors) for d in bundle.devices.values()},
                                signing_key, store, clock)
    # One stable client id per data directory: the broker's persistent session belongs to this store.
    client_id = f"doorkeep-server-{bundle.site.id}-{hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]}"
    supervisor = Supervisor(store, clock, devices=[*(d.id for d in bundle.devices.values()), *door_devices.values()],
                            device_timeout_s=device_timeout_s, gap_timeout_s=gap_timeout_s)
    bus = ServerBus(directory, door_devices, store, broker, clock=clock, publisher=publisher, client_id=client_id,
                    supervisor=supervisor)
    directory.listeners.append(bus.publish_policies)
    directory.defer = bus.defer
    site = directory.site
    log.info("site %s: %d doors, %d people, %d cards", site.id, len(site.doors), len(site.people), len(site.credentials))
    return Server(directory, store, bus)


def load(site_dir: Path | str, data_dir: Path | str, broker_url: str) -> Server:
    return bootstrap(load_site_dir(site_dir), Path(data_dir), BrokerConfig(broker_url))
