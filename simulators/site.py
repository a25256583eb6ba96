"""The site runner: a broker, the server and one edge agent per device file,
all wired as in production (MQTT over loopback, serial bytes over ptys,
MJPEG over HTTP), with simulators in place of the hardware.

Each device's file is loaded as written and then pointed at its simulators:
reader URLs become pty paths, camera sources become the simulated MJPEG
URLs, the pin factory becomes a fresh gpiozero ``MockFactory`` of its own
(two Pis use the same GPIO numbers), and the broker is the runner's.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import MockFactory

from doorkeep.clock import Clock, SystemClock
from doorkeep.config import BrokerConfig, DeviceConfig, SiteBundle, load_site_dir
from edge.agent import EdgeAgent
from server.app import Server, bootstrap
from simulators.brokers import EmbeddedBroker, MosquittoBroker
from simulators.camera import CameraSimulator
from simulators.door import DoorSimulator
from simulators.reader import ReaderSimulator

log = logging.getLogger("doorkeep.sim")

DEMO_SITE = Path(__file__).resolve().parent.parent / "firmware-config" / "sites" / "demo"


@dataclass
class SimDoor:
    id: str
    device: str
    reader: ReaderSimulator
    door: DoorSimulator


@dataclass
class SiteRunner:
    bundle: SiteBundle
    broker_url: str | None = None
    data_dir: Path | None = None
    clock: Clock = field(default_factory=SystemClock)
    embedded_broker: bool = True
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    server: Server | None = None
    agents: dict[str, EdgeAgent] = field(default_factory=dict)
    doors: dict[str, SimDoor] = field(default_factory=dict)
    cameras: dict[str, CameraSimulator] = field(default_factory=dict)
    _broker: Any = None
    _tmp: Any = None

    @classmethod
    def from_dir(cls, site_dir: Path | str = DEMO_SITE, **kw: Any) -> SiteRunner:
        return cls(load_site_dir(site_dir), **kw)

    def start(self, *, with_server: bool = True) -> SiteRunner:
        if self.broker_url is None:
            self._broker = (EmbeddedBroker() if self.embedded_broker else MosquittoBroker()).start()
            self.broker_url = self._broker.url
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="doorkeep-site-")
            self.data_dir = Path(self._tmp.name)
        broker = BrokerConfig(self.broker_url)
        if with_server:
            self.start_server()
        for dev in self.bundle.devices.values():
            self._start_device(dev, broker)
        return self

    def start_server(self) -> Server:
        assert self.broker_url is not None and self.data_dir is not None
        self.server = bootstrap(self.bundle, self.data_dir / "server", BrokerConfig(self.broker_url),
                                key=self.key, clock=self.clock)
        self.server.start()
        return self.server

    def _start_device(self, dev: DeviceConfig, broker: BrokerConfig) -> None:
        factory = MockFactory()
        cams = {}
        for cid, cam in dev.cameras.items():
            sim = CameraSimulator(fps=cam.fps)
            sim.start()
            self.cameras[f"{dev.id}/{cid}"] = sim
            cams[cid] = dataclasses.replace(cam, source=sim.url)
        doors = {}
        for did, hw in dev.doors.items():
            reader = ReaderSimulator(hw.reader.protocol)
            door = DoorSimulator(
                factory, relay_pin=hw.lock.pin, relay_active_high=hw.lock.active_high,
                contact_pin=hw.contact.pin if hw.contact else None,
                contact_open_level=hw.contact.open_level if hw.contact else "high",
                rex_pin=hw.rex.pin if hw.rex else None,
                rex_active_low=hw.rex.active_low if hw.rex else True,
            )
            self.doors[did] = SimDoor(did, dev.id, reader, door)
            doors[did] = dataclasses.replace(hw, reader=dataclasses.replace(hw.reader, url=reader.path))
        simulated = dataclasses.replace(dev, doors=doors, cameras=cams, broker=broker, gpio_factory="mock")
        agent = EdgeAgent(simulated, self.bundle.site, self.key, clock=self.clock, pin_factory=factory)
        agent.start()
        self.agents[dev.id] = agent

    def wait_connected(self, timeout: float = 10.0) -> bool:
        ok = all(a.link.wait_connected(timeout) for a in self.agents.values())
        return ok and (self.server is None or self.server.bus.wait_connected(timeout))

    def relays_energised(self) -> dict[str, bool]:
        return {did: d.door.relay_energised for did, d in self.doors.items()}

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.agents.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
        for d in self.doors.values():
            d.reader.close()
        for cam in self.cameras.values():
            cam.stop()
        self.cameras.clear()
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
