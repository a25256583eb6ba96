"""The site runner: a broker, the server and one edge agent per device file,
all wired as in production (MQTT over loopback, serial bytes over ptys,
MJPEG over HTTP), with simulators in place of the hardware.

Each device's file is loaded as written and then pointed at its simulators:
reader URLs become pty paths (an OSDP bus: one pty, one simulated reader per
address; a Wiegand reader: pulse trains on the device's mock D0/D1 pins),
camera sources become the simulated MJPEG URLs, the pin factory becomes a fresh gpiozero ``MockFactory`` of its own
(two Pis use the same GPIO numbers), and the broker is the runner's. Each
edge keeps its verified policy cache under ``DATA/edge/DEVICE``.

Outages for scenarios: :meth:`SiteRunner.stop_server` / :meth:`start_server`
restart the server on the same data directory (the store, presence, visitors
and lockdowns survive, as they would across a real restart), and
:meth:`stop_broker` / :meth:`start_broker` restart the runner's own broker on
the same port, so every client's own reconnect logic brings it back.

With its own Mosquitto (``embedded_broker=False``) the runner also wires the broker's log as production
does (``doorkeep server --broker-log FILE``): Mosquitto logs to ``mosquitto.log`` in its working directory
and the server's :class:`~server.brokerlog.BrokerLogWatcher` follows it (:attr:`SiteRunner.broker_log_watcher`),
so refused certificates raise ``certificate_refused``. :meth:`SiteRunner.revoke_device` takes a device off
the site and revokes its certificate, as an operator does when a Pi is stolen; the stolen pair it returns is
what an attacker still tries to connect with.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import select
import shutil
import tempfile
import threading
import time
import tty
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory

from doorkeep.clock import Clock, SystemClock
from doorkeep.config import BrokerConfig, DeviceConfig, SiteBundle, load_site_dir
from doorkeep.envelope import SnapshotKeys
from doorkeep.pki import revoke
from doorkeep.sites import DEMO_SITE
from edge.agent import EdgeAgent
from edge.osdp.cards import WIEGAND_FORMATS, pack_bits
from edge.osdp.keys import KeyFileError, load_scbk, write_scbk
from server.app import Server, bootstrap
from server.brokerlog import BrokerLogWatcher
from server.passes import PassKeys
from simulators import reader as _reader_module
from simulators.brokers import EmbeddedBroker, MosquittoBroker, mqtt_client, tls_broker_for
from simulators.camera import CameraSimulator
from simulators.door import DoorSimulator, EmergencyContactSimulator
from simulators.lift import LiftSimulator
from simulators.osdp_pd import OsdpPdSimulator
from simulators.reader import ReaderSimulator
from simulators.wait import wait_until
from simulators.wiegand import WiegandSimulator, card_bits

log = logging.getLogger("doorkeep.sim")


class SiteRunnerError(RuntimeError):
    """The runner cannot do what was asked (e.g. restart a broker it does not own)."""


def mosquitto_installed() -> bool:
    """Whether a Mosquitto binary is available for :class:`MosquittoBroker`."""
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


@dataclass
class SimDoor:
    id: str
    device: str
    reader: Any
    """A :class:`ReaderSimulator` (em4100, ascii, pinpad), :class:`OsdpPdSimulator` (osdp) or :class:`WiegandSimulator`."""
    door: DoorSimulator | LiftSimulator
    """A lift's cab is a :class:`LiftSimulator` (floor relays and buttons), anything else a door."""
    protocol: str = "em4100"

    def badge(self, number: str, fmt: str | None = None) -> None:
        """Present a card the way this door's reader sends it: ``fmt`` picks the Wiegand format (default
        ``wiegand26``) on Wiegand and OSDP readers; an OSDP reader also sends ``osdp_raw`` ``"BITS:HEX"`` cards."""
        if self.protocol == "wiegand":
            self.reader.badge(number, fmt or "wiegand26")
        elif self.protocol == "osdp":
            fmt = fmt or "wiegand26"
            head, _, tail = number.partition(":")
            if fmt == "osdp_raw":
                self.reader.present_raw(int(head), bytes.fromhex(tail))
            else:  # every Wiegand layout (doorkeep/card_formats.py), as a RAW reply in the Wiegand format (1)
                raw = pack_bits(card_bits(fmt, number))
                self.reader.present_raw(raw.bits, raw.data, 1)
        else:
            self.reader.badge(number)

    def enter_pin(self, pin: str) -> None:
        """Type a PIN on the reader's keypad (ASCII line, OSDP KEYPAD reply, Wiegand 4-bit bursts, pin pad key
        bytes), then enter."""
        if self.protocol == "osdp":
            self.reader.press_keys(pin + "#")
        else:
            self.reader.enter_pin(pin)


#: The card formats each reader protocol can send (doorkeep/config.py CARD_FORMATS).
READER_CARD_FORMATS: dict[str, tuple[str, ...]] = {
    "em4100": ("em4100",), "ascii": ("ascii",), "wiegand": WIEGAND_FORMATS, "osdp": (*WIEGAND_FORMATS, "osdp_raw"),
    "pinpad": ("ascii",),
}
#: Protocols whose readers have a keypad in simulation.
KEYPAD_PROTOCOLS = ("ascii", "osdp", "wiegand", "pinpad")


class OsdpBusSimulator:
    """An RS-485 bus on one pty with several simulated OSDP readers on it, each at its own address.

    Each :class:`OsdpPdSimulator` keeps its own pty; this hub copies what the control panel writes to every
    reader (each answers only its own address, like on a real multi-drop bus) and every reply back to the
    control panel, which is what the wire pair does.

    With ``baud`` (bench/osdp.py) the hub also holds what the control panel writes for its time on the wire
    (10 bit times per byte), as through a UART: the panel's write returns at once and the bytes arrive later.
    """

    def __init__(self, readers: list[OsdpPdSimulator], *, baud: int | None = None) -> None:
        self.readers = readers
        self._per_byte = 10.0 / baud if baud else 0.0
        self._master, self._slave = os.openpty()
        tty.setraw(self._master)
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="osdp-bus-sim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # Each reader's own pty: the hub writes the bus traffic into its slave end and reads its replies there.
        ends = {pd._pty.slave: pd for pd in self.readers}  # the hub is the readers' wire: their pty's other end
        for fd in ends:
            tty.setraw(fd)
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._master, *ends], [], [], 0.05)
                for fd in ready:
                    data = os.read(fd, 4096)
                    if fd == self._master:
                        if self._per_byte:
                            time.sleep(self._per_byte * len(data))  # the command's time on the wire
                        for end in ends:
                            os.write(end, data)
                    else:
                        os.write(self._master, data)
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for pd in self.readers:
            pd.close()
        for fd in (self._slave, self._master):
            try:
                os.close(fd)
            except OSError:
                pass


#: Set (to anything) to run every runner's server on a fresh PostgreSQL database (``make test-postgres``).
E2E_POSTGRES_ENV = "DOORKEEP_E2E_POSTGRES"


@dataclass
class SiteRunner:
    bundle: SiteBundle
    broker_url: str | None = None
    data_dir: Path | None = None
    clock: Clock = field(default_factory=SystemClock)
    embedded_broker: bool = True
    """With no ``broker_url``: run the embedded amqtt broker (True) or a private Mosquitto (False)."""
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    signing_key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    snapshot_keys: SnapshotKeys = field(default_factory=SnapshotKeys.generate)
    """In memory by default; pass ``load_snapshot_keys(DIR)`` for a file keyring ``doorkeep key rotate`` can change."""
    pass_keys: PassKeys = field(default_factory=lambda: PassKeys(Ed25519PrivateKey.generate()))
    """The visitor pass key (server/passes.py): in memory, so every site the runner starts issues passes."""
    camera_size: tuple[int, int] = (320, 240)
    """Width and height of every simulated camera's frames (bench/qr_pass.py runs 1280x720)."""
    pki: Path | None = None
    """With an ``mqtts://`` ``broker_url``: the site's pki/ directory, where each client finds its
    certificate (``DEVICE.crt``/``.key``, ``server.crt``/``.key``) and ``ca.crt``. None: the TLS
    :class:`MosquittoBroker` of this process at that URL issues them (tests), else the site's own pki/."""
    allow_plain: bool = False
    """Allow a plain ``mqtt://`` ``broker_url`` (development only; every client logs a WARNING). The
    runner's own embedded broker on loopback needs no flag: the runner allows it in code."""
    server: Server | None = None
    agents: dict[str, EdgeAgent] = field(default_factory=dict)
    doors: dict[str, SimDoor] = field(default_factory=dict)
    cameras: dict[str, CameraSimulator] = field(default_factory=dict)
    # device -> its fire panel's release contact ([emergency] in the device file), held clear from the start
    emergency: dict[str, EmergencyContactSimulator] = field(default_factory=dict)
    _buses: list[OsdpBusSimulator] = field(default_factory=list)
    _broker: Any = None
    _broker_dir: Any = None
    _broker_port: int | None = None
    _tmp: Any = None
    _server_started: bool = False
    broker_log_watcher: BrokerLogWatcher | None = None
    """With the runner's own Mosquitto and a server running: the server's watcher of the broker's log."""
    retired: set[str] = field(default_factory=set)
    """Devices taken off the site by :meth:`revoke_device` (their agent stopped, their certificate revoked)."""
    store_url: str | None = None
    """The server's PostgreSQL store (None: the site's ``[store] url``, else SQLite in the data directory). With
    ``$DOORKEEP_E2E_POSTGRES`` set (``make test-postgres``), a runner given none makes a fresh database of its own
    on the PostgreSQL at ``$DOORKEEP_TEST_POSTGRES`` and drops it at :meth:`stop`."""
    _own_database: str | None = None

    @classmethod
    def from_dir(cls, site_dir: Path | str = DEMO_SITE, **kw: Any) -> SiteRunner:
        return cls(load_site_dir(site_dir), **kw)

    def start(self, *, with_server: bool = True) -> SiteRunner:
        if self.broker_url is None:
            self._broker = self._new_broker(None).start()
            self._broker_port = self._broker.port
            if getattr(self._broker, "pki", None) is not None:
                self.pki = self._broker.pki  # its CA issued the server's and every device's certificate
            self.broker_url = self._broker.url
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="doorkeep-site-")
            self.data_dir = Path(self._tmp.name)
        if with_server:
            self.start_server()
        for dev in self.bundle.devices.values():
            self._start_device(dev, self.broker_config(dev.id))
        return self

    def broker_config(self, name: str) -> BrokerConfig:
        """The broker as client ``name`` (a device id or ``server``) sees it: with TLS, its own certificate.

        Plain MQTT only to the runner's own embedded broker (loopback, started here) or with ``allow_plain``;
        anything else is refused by the clients themselves (doorkeep.pki.check_transport).
        """
        assert self.broker_url is not None
        if not BrokerConfig(self.broker_url).tls:
            own_embedded = self.owns_broker and self.embedded_broker
            return BrokerConfig(self.broker_url, allow_plain=self.allow_plain or own_embedded)
        if self.pki is None:
            tls_broker = tls_broker_for(self.broker_url)
            if tls_broker is not None:
                return tls_broker.client_config(name, url=self.broker_url)
        pki = self.pki if self.pki is not None else self.bundle.dir / "pki"
        return BrokerConfig(self.broker_url, ca_file=pki / "ca.crt", cert_file=pki / f"{name}.crt",
                            key_file=pki / f"{name}.key")

    def mqtt_client(self, name: str, client_id: str | None = None, *, clean_session: bool = True) -> Any:
        """A paho client (not yet connected) to the runner's broker as ``name``: a peer on the wire for tests
        (``server`` reads and writes the whole site; a device id only its own subtree)."""
        return mqtt_client(self.broker_config(name), client_id or f"test-{name}-{secrets.token_hex(3)}",
                           clean_session=clean_session)

    @property
    def owns_broker(self) -> bool:
        """True when the runner started the broker itself (and so may stop and restart it)."""
        return self._broker_port is not None

    def _new_broker(self, port: int | None) -> Any:
        if self.embedded_broker:
            return EmbeddedBroker(port=port)
        # Persistent, like a production broker: the server's session and the events queued for it
        # survive a broker restart. The replacement broker reuses the same working directory (and so the
        # same CA). Mutual TLS with the ACL `doorkeep broker config` generates, as in production.
        if self._broker_dir is None:
            self._broker_dir = tempfile.TemporaryDirectory(prefix="doorkeep-broker-")
        live = [d for d in self.bundle.devices if d not in self.retired]  # a revoked device gets no new certificate
        return MosquittoBroker(port=port, workdir=Path(self._broker_dir.name), persistent=True,
                               tls_sites=[self.bundle.site.id], clients=["server", *live])

    @property
    def broker_log(self) -> Path | None:
        """The log file of the runner's own Mosquitto (what ``--broker-log`` names in production); None for the
        embedded broker or an external one."""
        if not self.owns_broker or self.embedded_broker or self._broker_dir is None:
            return None
        return Path(self._broker_dir.name) / "mosquitto.log"

    # --------------------------------------------------------------- server

    def _new_database(self) -> str:
        """A fresh PostgreSQL database for this runner's server (``make test-postgres``); its URL."""
        import psycopg

        admin = os.environ.get("DOORKEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
        name = f"doorkeep_site_{secrets.token_hex(6)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._own_database = name
        return urlunsplit(urlsplit(admin)._replace(path=f"/{name}"))

    @staticmethod
    def _drop_database(name: str) -> None:
        import psycopg

        admin = os.environ.get("DOORKEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def start_server(self) -> Server:
        """Start the server (again) on the runner's data directory: what it stored survives a restart."""
        assert self.broker_url is not None and self.data_dir is not None
        if self.server is not None:
            raise SiteRunnerError("the server is already running")
        if not self._server_started and not self.owns_broker and tls_broker_for(self.broker_url) is not None:
            self._discard_server_session()
        self._server_started = True
        if self.store_url is None and self.bundle.store.url is None and os.environ.get(E2E_POSTGRES_ENV):
            self.store_url = self._new_database()
        server = bootstrap(self.bundle, self.data_dir / "server", self.broker_config("server"),
                           key=self.key, signing_key=self.signing_key, clock=self.clock,
                           snapshot_keys=self.snapshot_keys, pass_keys=self.pass_keys, store_url=self.store_url)
        try:
            server.start()
        except Exception:
            # Refused before anything started (e.g. plain MQTT not allowed): only the store is open.
            server.store.close()
            raise
        self.server = server
        log_file = self.broker_log
        if log_file is not None:
            # As `doorkeep server --broker-log FILE` does (server/cli.py), on the server's store and clock.
            self.broker_log_watcher = BrokerLogWatcher(log_file, server.store, self.clock, poll_s=0.1)
            self.broker_log_watcher.start()
        return self.server

    def _discard_server_session(self) -> None:
        """Start this runner's server on a fresh broker session, on a test broker shared by many runners.

        Client ids are bound to certificates (``use_username_as_clientid``), so every runner's server is the
        client ``server`` with one persistent session: what an earlier runner's edges published after its
        server left would otherwise be delivered to this one. A clean-session connect as ``server`` discards
        that session (MQTT 3.1.1); restarts of this runner's own server keep theirs, as in production.
        """
        done = threading.Event()
        client = self.mqtt_client("server", clean_session=True)
        client.on_connect = lambda *a: done.set()
        assert self.broker_url is not None
        broker = BrokerConfig(self.broker_url)
        try:
            client.connect(broker.host, broker.port)
            client.loop_start()
            if not done.wait(10):
                log.warning("could not reach %s to discard the server's old session", self.broker_url)
        finally:
            client.disconnect()
            client.loop_stop()

    def stop_server(self) -> None:
        """Stop the server cleanly (it says ``stopped`` on its availability topic); the edges carry on alone."""
        if self.server is None:
            raise SiteRunnerError("the server is not running")
        server, self.server = self.server, None
        self._stop_watcher()
        server.stop()

    def _stop_watcher(self) -> None:
        watcher, self.broker_log_watcher = self.broker_log_watcher, None
        if watcher is not None:
            watcher.stop()

    # --------------------------------------------------------------- broker

    def stop_broker(self, timeout: float = 10.0) -> None:
        """Stop the runner's own broker and wait until every client has noticed."""
        if not self.owns_broker:
            raise SiteRunnerError("the broker is external (--broker URL): the runner can only stop a broker it started")
        if self._broker is None:
            raise SiteRunnerError("the broker is already down")
        broker, self._broker = self._broker, None
        broker.stop()
        if not wait_until(lambda: not any(self._client_connected()), timeout):
            log.warning("some clients still look connected %.0f s after the broker stopped", timeout)

    def start_broker(self, timeout: float = 20.0) -> bool:
        """Start the broker again on the same port; True once every client has reconnected by itself.

        paho reconnects with a 1-10 s backoff, so this can take a few seconds.
        """
        if not self.owns_broker:
            raise SiteRunnerError("the broker is external (--broker URL): the runner can only start a broker it started")
        if self._broker is not None:
            raise SiteRunnerError("the broker is already up")
        self._broker = self._new_broker(self._broker_port).start()
        return self.wait_connected(timeout)

    def revoke_device(self, device: str, timeout: float = 20.0) -> BrokerConfig:
        """Take ``device`` off the site as an operator does when its Pi is stolen, and return the stolen pair.

        Its edge agent stops (relays to their safe state), its certificate is revoked (``doorkeep pki revoke``:
        the CRL rewritten, the files moved to ``pki/revoked/``), and the broker is restarted so that it reads the
        new CRL (Mosquitto reads it only at start). Every other client reconnects by itself; the returned
        configuration is the revoked certificate and key, for whoever still holds them. Needs the runner's own
        Mosquitto: the embedded broker has no TLS and an external one is not ours to restart.
        """
        if self.embedded_broker or not self.owns_broker:
            raise SiteRunnerError("revoking a certificate needs the runner's own Mosquitto (mutual TLS, a CRL): "
                                  "install mosquitto and run without --broker")
        if device in self.retired:
            raise SiteRunnerError(f"{device} is already off the site (its certificate revoked)")
        if device not in self.agents:
            raise SiteRunnerError(f"no edge agent {device!r} runs here")
        if self._broker is None:
            raise SiteRunnerError("the broker is down; bring it up first")
        pki = getattr(self._broker, "pki", None)
        if pki is None:
            raise SiteRunnerError("the runner's broker has no PKI")
        self.agents.pop(device).stop()
        self.retired.add(device)
        serial = revoke(pki, device, now=datetime.now(timezone.utc))
        self.stop_broker()
        if not self.start_broker(timeout):
            raise SiteRunnerError(f"not every client reconnected within {timeout:g} s after the broker restart")
        aside = pki / "revoked"
        return BrokerConfig(self.broker_url or "", ca_file=pki / "ca.crt", cert_file=aside / f"{device}-{serial:x}.crt",
                            key_file=aside / f"{device}-{serial:x}.key")

    def _client_connected(self) -> list[bool]:
        states = [a.link.connected for a in self.agents.values()]
        if self.server is not None:
            states.append(self.server.bus.connected)
        return states

    # ---------------------------------------------------------------- edges

    def _start_device(self, dev: DeviceConfig, broker: BrokerConfig) -> None:
        assert self.data_dir is not None
        factory = MockFactory()
        cams = {}
        for cid, cam in dev.cameras.items():
            sim = CameraSimulator(width=self.camera_size[0], height=self.camera_size[1], fps=cam.fps)
            sim.start()
            self.cameras[f"{dev.id}/{cid}"] = sim
            cams[cid] = dataclasses.replace(cam, source=sim.url)
        doors = {}
        readers = self._reader_simulators(dev, factory)
        for did, hw in dev.doors.items():
            reader, rc = readers[did]
            if hw.floors:  # a lift cab: its floor relays and buttons
                cab = LiftSimulator(factory, {f.area: (f.relay, f.relay_active_high, f.button, f.button_active_low)
                                              for f in hw.floors},
                                    tamper_pin=hw.tamper.pin if hw.tamper else None,
                                    tamper_active_low=hw.tamper.active_low if hw.tamper else True)
                self.doors[did] = SimDoor(did, dev.id, reader, cab, hw.reader.protocol)
                doors[did] = dataclasses.replace(hw, reader=rc)
                continue
            assert hw.lock is not None
            door = DoorSimulator(
                factory, relay_pin=hw.lock.pin, relay_active_high=hw.lock.active_high,
                contact_pin=hw.contact.pin if hw.contact else None,
                contact_open_level=hw.contact.open_level if hw.contact else "high",
                rex_pin=hw.rex.pin if hw.rex else None,
                rex_active_low=hw.rex.active_low if hw.rex else True,
                tamper_pin=hw.tamper.pin if hw.tamper else None,
                tamper_active_low=hw.tamper.active_low if hw.tamper else True,
                sounder_pin=hw.sounder.pin if hw.sounder else None,
                sounder_active_high=hw.sounder.active_high if hw.sounder else True,
                passage_pin=hw.passage.pin if hw.passage else None,
                passage_active_low=hw.passage.active_low if hw.passage else True,
            )
            self.doors[did] = SimDoor(did, dev.id, reader, door, hw.reader.protocol)
            doors[did] = dataclasses.replace(hw, reader=rc)
        if dev.emergency is not None:  # before the agent reads it: an undriven line would read as a release
            self.emergency[dev.id] = EmergencyContactSimulator(factory, dev.emergency.pin,
                                                               active_low=dev.emergency.active_low)
        simulated = dataclasses.replace(dev, doors=doors, cameras=cams, broker=broker, gpio_factory="mock")
        agent = EdgeAgent(simulated, self.bundle.site, self.key, clock=self.clock, pin_factory=factory,
                          policy_key=self.signing_key.public_key(), state_dir=self.data_dir / "edge" / dev.id,
                          intrusion=self.bundle.intrusion)
        agent.start()
        self.agents[dev.id] = agent

    def qr_camera(self, door: str) -> CameraSimulator:
        """The simulated camera that reads visitor passes for ``door`` (its device file: ``qr = true`` on a
        camera whose ``qr_door`` is this door); SiteRunnerError naming the fix when there is none."""
        for dev in self.bundle.devices.values():
            for cid, cam in dev.cameras.items():
                if cam.qr and cam.qr_door == door and f"{dev.id}/{cid}" in self.cameras:
                    return self.cameras[f"{dev.id}/{cid}"]
        raise SiteRunnerError(f"no camera reads passes for door {door!r} (fix: set qr = true on the camera of "
                              f"{door} in its device file, with qr_door = \"{door}\" if it watches several doors)")

    def show_qr(self, door: str, text: str | None) -> CameraSimulator:
        """Hold ``text`` (a visitor pass) up to ``door``'s pass-reading camera; None takes it away."""
        camera = self.qr_camera(door)
        camera.show_qr(text)
        return camera

    def _reader_simulators(self, dev: DeviceConfig, factory: Any) -> dict[str, tuple[Any, Any]]:
        """door -> (its reader simulator, the reader config pointed at it).

        Serial readers get a pty each; Wiegand readers pulse the device's own mock D0/D1 pins; OSDP readers get
        an :class:`OsdpPdSimulator` at their address, one pty per bus (a hub when several share it), keyed with
        the door's key file if it exists, else with a fresh key written under the runner's data directory
        (the reader then already holds it, as after ``doorkeep osdp install-key``).
        """
        assert self.data_dir is not None
        out: dict[str, tuple[Any, Any]] = {}
        buses: dict[str, list[str]] = {}
        for did, hw in dev.doors.items():
            rc = hw.reader
            if rc.protocol == "wiegand" and rc.d0_pin is not None and rc.d1_pin is not None:
                out[did] = (WiegandSimulator(factory, rc.d0_pin, rc.d1_pin), rc)
            elif rc.protocol == "osdp" and ReaderSimulator is _reader_module.ReaderSimulator:
                buses.setdefault(rc.url, []).append(did)
            else:
                # A test may swap ReaderSimulator for its own reader of any protocol (e.g. a libosdp one,
                # tests/e2e/test_osdp_door.py): honour it, with the door's own key file untouched.
                sim = ReaderSimulator(rc.protocol)
                out[did] = (sim, dataclasses.replace(rc, url=sim.path))
        for dids in buses.values():
            pds = []
            for did in dids:
                rc = dev.doors[did].reader
                key = self._osdp_key(dev.id, did, rc.scbk_file) if rc.secure_channel else None
                pd = OsdpPdSimulator(address=rc.address, scbk=key, secure_channel=rc.secure_channel)
                pds.append(pd)
                scbk_file = rc.scbk_file
                if key is not None and (scbk_file is None or not scbk_file.exists()):
                    scbk_file = self.data_dir / "osdp-keys" / dev.id / f"{did}.scbk"
                out[did] = (pd, rc if key is None else dataclasses.replace(rc, scbk_file=scbk_file))
            if len(pds) == 1:
                path = pds[0].path
            else:
                bus = OsdpBusSimulator(pds)
                self._buses.append(bus)
                path = bus.path
            for did in dids:
                out[did] = (out[did][0], dataclasses.replace(out[did][1], url=path))
        return out

    def _osdp_key(self, device: str, door: str, scbk_file: Path | None) -> bytes:
        """The Secure Channel key a simulated reader holds: the door's key file's, else a fresh one on file."""
        if scbk_file is not None and scbk_file.exists():
            try:
                key = load_scbk(scbk_file)
                if key is not None:
                    return key
            except KeyFileError as exc:
                log.warning("door %s: %s; the simulated reader gets a fresh key", door, exc)
        assert self.data_dir is not None
        key = secrets.token_bytes(16)
        path = self.data_dir / "osdp-keys" / device / f"{door}.scbk"
        for old in (path, path.with_name(path.name + ".new")):
            old.unlink(missing_ok=True)
        write_scbk(path, key).replace(path)  # written next to it at 0600, then moved into place
        return key

    def poke(self) -> None:
        """Make every edge re-evaluate its deadlines now (after the clock jumped)."""
        for agent in self.agents.values():
            agent.poke()

    def advance(self, seconds: float, timeout: float = 5.0) -> bool:
        """Jump a ``ScenarioClock`` forward, poke every edge and wait until each has caught up."""
        advance = getattr(self.clock, "advance", None)
        if advance is None:
            raise SiteRunnerError(f"{type(self.clock).__name__} cannot be advanced; run the site on a ScenarioClock")
        supervisor = self.server.supervisor if self.server is not None else None
        if supervisor is not None:
            supervisor.clock_jump(lambda: advance(seconds))  # skipped time is not device silence
        else:
            advance(seconds)
        self.poke()
        return self.wait_edges_idle(timeout)

    def edges_idle(self, timeout: float = 1.0) -> bool:
        """True when every edge's loop and jobs worker have caught up and no request is in flight."""
        return all(agent.sync(timeout) and not agent.in_flight for agent in self.agents.values())

    def wait_edges_idle(self, timeout: float = 5.0) -> bool:
        return wait_until(self.edges_idle, timeout)

    def policies_current(self) -> bool:
        """True when every edge holds the policy version the server last published (or there is no server)."""
        if self.server is None or self.server.bus.publisher is None:
            return True
        # Only the devices whose share of the site changed get a new version: each is compared with its own.
        published = dict(self.server.bus.publisher.published)
        for device, agent in self.agents.items():
            cache = getattr(agent, "policy", None)
            if cache is not None and (cache.version or 0) < published.get(device, 0):
                return False
        return True

    def wait_policies(self, timeout: float = 5.0) -> bool:
        return wait_until(self.policies_current, timeout)

    # ------------------------------------------------------------ the rest

    def hardware_up(self) -> bool:
        """True when every edge has its readers open and its cameras streaming."""
        return all(rt.reader.stats.online for a in self.agents.values() for rt in a.doors.values()) and \
            all(c.stats.online for a in self.agents.values() for c in a.cameras.values())

    def wait_hardware(self, timeout: float = 10.0) -> bool:
        """Wait for :meth:`hardware_up`: a clock jump before then would end the edges' start-up grace with a
        camera still opening, and report it offline for a moment that never happened."""
        return wait_until(self.hardware_up, timeout)

    def wait_connected(self, timeout: float = 10.0) -> bool:
        ok = all(a.link.wait_connected(timeout) for a in self.agents.values())
        return ok and (self.server is None or self.server.bus.wait_connected(timeout))

    def relays_energised(self) -> dict[str, bool]:
        return {did: d.door.relay_energised for did, d in self.doors.items()}

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.agents.clear()
        self._stop_watcher()
        if self.server is not None:
            self.server.stop()
            self.server = None
        for bus in self._buses:
            bus.close()  # and the readers on it
        self._buses.clear()
        for d in self.doors.values():
            d.reader.close()
        for cam in self.cameras.values():
            cam.stop()
        self.cameras.clear()
        if self._broker is not None:
            self._broker.stop()
            self._broker = None
        if self._own_database is not None:
            self._drop_database(self._own_database)
            self._own_database = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        if self._broker_dir is not None:
            self._broker_dir.cleanup()
            self._broker_dir = None
