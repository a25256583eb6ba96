"""Wiring of the server: site directory + credential key + store + bus.

``bootstrap`` takes its parts as arguments, so tests and the demo build the
same server the command line does, with their own data directory, broker
and clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from doorkeep.clock import Clock, SystemClock
from doorkeep.config import BrokerConfig, SiteBundle, load_site_dir, with_people
from doorkeep.credentials import load_key
from doorkeep.model import Site
from server.bus import ServerBus
from server.store import Store

log = logging.getLogger("doorkeep.server")


@dataclass
class Server:
    site: Site
    store: Store
    bus: ServerBus

    def start(self, wait_s: float = 10.0) -> None:
        self.bus.start(wait_s)

    def stop(self) -> None:
        self.bus.stop()
        self.store.close()


def bootstrap(bundle: SiteBundle, data_dir: Path, broker: BrokerConfig, *, key: bytes | None = None,
              clock: Clock | None = None) -> Server:
    if key is None:
        key = load_key(bundle.credential_key_file, source=str(bundle.dir))
    site = with_people(bundle.site, bundle.people, bundle.cards, key)
    door_devices = {door: dev.id for dev in bundle.devices.values() for door in dev.doors}
    store = Store(data_dir)
    bus = ServerBus(site, door_devices, store, broker, clock=clock or SystemClock())
    log.info("site %s: %d doors, %d people, %d cards", site.id, len(site.doors), len(site.people), len(site.credentials))
    return Server(site, store, bus)


def load(site_dir: Path | str, data_dir: Path | str, broker_url: str) -> Server:
    return bootstrap(load_site_dir(site_dir), Path(data_dir), BrokerConfig(broker_url))
