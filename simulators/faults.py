"""Fault-injection harness: the real stack as separate processes, a load generator and a verifier.

:class:`FaultStack` starts a persistent Mosquitto, ``doorkeep server`` and ``doorkeep edge`` (the demo's
``pi-lobby``) as real processes on a private copy of the demo site, with reader simulators (ptys) in place
of both lobby readers and no camera. Everything speaks mutual TLS as shipped: the broker runs what
``doorkeep broker config`` generates, the server gets ``--ca/--cert/--key`` and the edge's device file
names pi-lobby's certificate (all from the stack broker's own CA). :class:`LoadGenerator` badges cards from a thread at a steady rate:
``lobby_in`` gets granted cards (alice, bob, chen) alternating with unknown ones, ``lobby_out`` gets only
unknown cards, so its relay must never be energised. :meth:`FaultStack.verify` compares what was badged
with what the server stored (docs/faults.md explains every figure).

Fault actions are methods: :meth:`FaultStack.kill_broker` / :meth:`restart_broker`, :meth:`kill_server`
/ :meth:`start_server`, :meth:`kill_edge` / :meth:`start_edge` (kill is ``SIGKILL``, a power cut as far
as the process is concerned). Nothing here sleeps to wait for the system: every wait polls a condition
against a deadline.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doorkeep.config import BrokerConfig
from doorkeep.credentials import generate_key_file
from doorkeep.envelope import init_data_keys
from simulators.brokers import OBSERVER, MosquittoBroker, mqtt_client
from simulators.netns import NetNamespace
from simulators.reader import ReaderSimulator
from simulators.site import DEMO_SITE
from simulators.wait import wait_until

SITE = "demo"
DEVICE = "pi-lobby"
GRANT_DOOR = "lobby_in"   # mixed load: granted and unknown cards
DENY_DOOR = "lobby_out"   # unknown cards only: its relay must never be energised


def _faketime_lib() -> Path | None:
    """libfaketime's preload library (Debian package libfaketime), or None."""
    for lib in sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1")) + [Path("/usr/lib/faketime/libfaketime.so.1")]:
        if lib.exists():
            return lib
    return None


FAKETIME_LIB = _faketime_lib()
GRANTED = {"0F00A1B2C3": "alice", "0F00B0B0B0": "bob", "0F00C4C4C4": "chen"}


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    return wait_until(predicate, timeout, interval)


def sqlite_integrity(db: Path) -> tuple[str, int]:
    """``PRAGMA integrity_check`` and the last seq handed out, read from a copy of ``db`` and its WAL.

    Checking a copy leaves the crashed file exactly as the restarted edge will find it.
    """
    with tempfile.TemporaryDirectory(prefix="doorkeep-integrity-") as tmp:
        for suffix in ("", "-wal"):
            src = Path(str(db) + suffix)
            if src.exists():
                shutil.copyfile(src, Path(tmp) / (db.name + suffix))
        conn = sqlite3.connect(Path(tmp) / db.name)
        try:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            row = conn.execute("SELECT value FROM meta WHERE name = 'seq'").fetchone()
            return str(check), int(row[0]) if row else 0
        finally:
            conn.close()


class FaultUnavailable(RuntimeError):
    """This machine cannot inject the fault (e.g. no permission to mount); the message says why."""


@dataclass
class Badge:
    at: float          # wall time (epoch s) the frame was written
    door: str
    number: str
    expect: str        # "granted" or "denied"


@dataclass
class Verdict:
    """What the verifier found; ``ok`` when nothing was lost, duplicated or wrongly decided."""

    sent: int
    stored: int                 # access events stored for the badges' doors (distinct ids)
    duplicates: int             # extra ids for a transaction already stored
    lost: int                   # badges with no stored access event
    unexpected: int             # stored access events no badge accounts for
    wrong_decisions: list[str]  # e.g. a granted card stored as denied
    denied_relay: list[dict[str, Any]]  # states showing the deny-only door's relay energised
    seq_holes: list[int]        # seqs of the device missing between its first and last stored seq
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.lost or self.unexpected or self.wrong_decisions
                    or self.denied_relay or self.seq_holes)


class Watcher:
    """A paho client on the edge's state and availability, the server's availability and the events.

    Its session is persistent (clean session off, fixed client id), so on the persistent broker what was
    queued for it survives a broker restart as well as any other subscriber's.
    """

    def __init__(self, broker: BrokerConfig, client_id: str) -> None:
        """``broker``: how to reach it; over mutual TLS the watcher presents the ``server`` certificate
        (the one identity the ACL lets read the whole site)."""
        self.lock = threading.Lock()
        self.states: list[tuple[float, dict[str, Any]]] = []
        self.availability: list[str] = []
        self.server_availability: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.connected = threading.Event()
        base = f"doorkeep/v1/{SITE}"
        self._subs = [(f"{base}/{DEVICE}/state", 1), (f"{base}/{DEVICE}/availability", 1),
                      (f"{base}/server/availability", 1), (f"{base}/+/door/+/event", 1)]
        self.client = mqtt_client(broker, client_id, clean_session=False)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self._subs)
            self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            if msg.topic.endswith(f"{DEVICE}/state"):
                try:
                    self.states.append((time.time(), json.loads(msg.payload)))
                except ValueError:
                    pass
            elif msg.topic.endswith("server/availability"):
                self.server_availability.append(msg.payload.decode(errors="replace"))
            elif msg.topic.endswith("/availability"):
                self.availability.append(msg.payload.decode(errors="replace"))
            else:
                try:
                    self.events.append(json.loads(msg.payload))
                except ValueError:
                    pass

    def last_availability(self) -> str | None:
        with self.lock:
            return self.availability[-1] if self.availability else None

    def last_server_availability(self) -> str | None:
        with self.lock:
            return self.server_availability[-1] if self.server_availability else None

    def access_events_seen(self) -> int:
        with self.lock:
            return len({e.get("id") for e in self.events if e.get("type") == "access"})

    def relay_on(self, door: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for _, s in self.states if s.get("doors", {}).get(door, {}).get("relay")]

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class LoadGenerator:
    """Badges cards from a thread at ``rate`` per second, alternating the two lobby doors.

    ``lobby_in`` cycles alice, unknown, bob, unknown, chen, unknown (a granted card comes back every
    2.4 s at 5/s, past the reader's 1 s repeat filter); ``lobby_out`` gets a new unknown card every time.
    Unknown numbers are unique, and so are their last four digits, which is how the verifier matches
    stored events (they carry only the card's hash and last four) to badges.
    """

    def __init__(self, readers: dict[str, ReaderSimulator], rate: float = 5.0) -> None:
        self.readers = readers
        self.interval = 1.0 / rate
        self.badges: list[Badge] = []
        self.lock = threading.Lock()
        self._unknown = itertools.count(1)
        self._granted = itertools.cycle(GRANTED)
        self._turn = itertools.count()
        self._run = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    def unknown_card(self) -> str:
        n = next(self._unknown)
        if n > 0xFFFF:
            raise RuntimeError("out of unique unknown card numbers")
        return f"0FEE00{n:04X}"

    def badge(self, door: str, number: str | None = None) -> Badge:
        """Badge one card now (an unknown one unless ``number`` is given) and record it."""
        number = number or self.unknown_card()
        expect = "granted" if door == GRANT_DOOR and number in GRANTED else "denied"
        with self.lock:
            self.readers[door].badge(number)
            badge = Badge(time.time(), door, number, expect)
            self.badges.append(badge)
        return badge

    def _next(self) -> None:
        turn = next(self._turn)
        if turn % 2:
            self.badge(DENY_DOOR)
        elif (turn // 2) % 2 == 0:
            self.badge(GRANT_DOOR, next(self._granted))
        else:
            self.badge(GRANT_DOOR)

    def start(self) -> LoadGenerator:
        self._run.set()
        self._thread = threading.Thread(target=self._loop, name="doorkeep-fault-load", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        pace = threading.Event()  # pacing of a load generator, not a wait for the system
        while not self._stop.is_set():
            if not self._run.is_set():
                self._idle.set()
                self._run.wait(0.05)
                continue
            self._idle.clear()
            self._next()
            self._idle.set()
            pace.wait(self.interval)

    def pause(self) -> None:
        """Stop badging; returns once no badge is being written."""
        self._run.clear()
        wait_for(self._idle.is_set, 5)

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def sent(self) -> int:
        with self.lock:
            return len(self.badges)


class FaultStack:
    """Broker, server and the ``pi-lobby`` edge as processes on a private copy of the demo site."""

    def __init__(self, workdir: Path, *, device_timeout: float = 5, gap_timeout: float = 5,
                 keepalive: int = 5, heartbeat_s: float = 1, data_tmpfs_mb: int | None = None,
                 steppable_edge_clock: bool = False, netns: NetNamespace | None = None,
                 store_url: str | None = None, workers: tuple[str, ...] = ()) -> None:
        """``netns``: run the edge inside this (created) network namespace, reaching the broker over its veth
        pair: Mosquitto then also listens on the pair's root-end address, which its certificate names.
        ``data_tmpfs_mb`` puts the server's data directory on a tmpfs of that size (needs root and
        mount permission; :class:`FaultUnavailable` says why not), so :meth:`fill_data_disk` can fill it.
        ``steppable_edge_clock`` runs the edge under libfaketime, so :meth:`step_edge_clock` can step its
        wall clock as NTP would (its monotonic clock untouched); :class:`FaultUnavailable` if it is missing.
        ``store_url``: the server's store on this PostgreSQL database; with ``workers`` (names), the server is that
        many ``doorkeep server --worker NAME`` processes on it (server/workers.py), the first started leading."""
        if workers and not store_url:
            raise ValueError("several workers need a PostgreSQL store_url")
        self.dir = Path(workdir)
        self.site = self.dir / "site"
        self.data = self.dir / "data"
        self.state_dir = self.dir / "edge-state"
        self.broker_dir = self.dir / "broker"
        self.device_timeout = device_timeout
        self.gap_timeout = gap_timeout
        self.keepalive = keepalive
        self.heartbeat_s = heartbeat_s
        self.readers: dict[str, ReaderSimulator] = {}
        self.broker: MosquittoBroker | None = None
        self.port: int | None = None
        self.server: subprocess.Popen[bytes] | None = None
        self.store_url = store_url
        self.worker_names = workers
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        #: Workers run as ``doorkeep desk --worker NAME --port PORT`` instead (the desk served while leading).
        self.desk_ports: dict[str, int] = {}
        self.edge: subprocess.Popen[bytes] | None = None
        self.watcher: Watcher | None = None
        self.load: LoadGenerator | None = None
        self._logs: list[Any] = []
        self.device_file = self.site / "devices" / f"{DEVICE}.toml"
        self.data_tmpfs_mb = data_tmpfs_mb
        self.netns = netns
        self._mounted = False
        self.edge_clock_file: Path | None = None
        self.edge_clock_offset = 0.0
        if steppable_edge_clock:
            if FAKETIME_LIB is None:
                raise FaultUnavailable("libfaketime is not installed (make test installs it: scripts/ensure-test-tools)")
            self.edge_clock_file = self.dir / "edge-clock-offset"

    # ------------------------------------------------------------ set-up
    def prepare(self) -> None:
        shutil.copytree(DEMO_SITE, self.site)
        keys = self.site / "keys"
        generate_key_file(keys / "credential.key")
        init_data_keys(keys)  # the server's snapshot keys (doorkeep key init-data)
        done = subprocess.run([sys.executable, "-m", "doorkeep", "key", "init-signing", str(keys / "policy-signing.key")],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"doorkeep key init-signing failed: {done.stderr}")
        self.readers = {GRANT_DOOR: ReaderSimulator("em4100"), DENY_DOOR: ReaderSimulator("em4100")}
        text = self.device_file.read_text()
        replacements = [
            ('"/etc/doorkeep/credential.key"', '"../keys/credential.key"'),
            ('"/etc/doorkeep/policy-signing.pub"', '"../keys/policy-signing.pub"'),
            ('state_dir = "/var/lib/doorkeep"', f'state_dir = "{self.state_dir}"\nheartbeat_s = {self.heartbeat_s}'),
            ('gpio_factory = "lgpio"', 'gpio_factory = "mock"'),
            ('url = "/dev/serial0"', f'url = "{self.readers[GRANT_DOOR].path}"'),
            ('url = "/dev/ttyUSB0"', f'url = "{self.readers[DENY_DOOR].path}"'),
            ("keepalive = 30", f"keepalive = {self.keepalive}"),
            ('camera = "lobby"\n', ""),
            # Mutual TLS as shipped: pi-lobby's certificate from the stack broker's CA (see start()).
            ('"/etc/doorkeep/pki/', f'"{self.pki}/'),
        ]
        for old, new in replacements:
            if old not in text:
                raise RuntimeError(f"{self.device_file}: expected {old!r} to rewrite; the demo device file changed")
            text = text.replace(old, new)
        # No camera: snapshots are not what these faults are about, and the 2-core budget is tight.
        text = re.sub(r"\[cameras\.lobby\]\n(?:[^\[\n][^\n]*\n|\n)*", "", text)
        self.device_file.write_text(text)

    def _proc(self, name: str, *args: str, env: dict[str, str] | None = None,
              netns: NetNamespace | None = None) -> subprocess.Popen[bytes]:
        log = (self.dir / f"{name}.log").open("ab")
        self._logs.append(log)
        cmd = [sys.executable, "-m", "doorkeep", *args]
        return subprocess.Popen(netns.exec_args(*cmd) if netns else cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env} if env else None)

    def _edge_env(self) -> dict[str, str] | None:
        """libfaketime in the edge only: its wall clock follows the offset file, its monotonic clock is real."""
        if self.edge_clock_file is None:
            return None
        self.edge_clock_file.write_text(f"{self.edge_clock_offset:+.0f}\n")
        return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME_TIMESTAMP_FILE": str(self.edge_clock_file),
                "FAKETIME_CACHE_DURATION": "1", "DONT_FAKE_MONOTONIC": "1"}

    def step_edge_clock(self, seconds: float) -> float:
        """Step the edge's wall clock by ``seconds`` (an NTP step); returns when. The edge re-reads the
        offset within a second (FAKETIME_CACHE_DURATION)."""
        if self.edge_clock_file is None:
            raise FaultUnavailable("this stack's edge clock is not steppable (steppable_edge_clock=False)")
        self.edge_clock_offset += seconds
        tmp = self.edge_clock_file.with_suffix(".tmp")
        tmp.write_text(f"{self.edge_clock_offset:+.0f}\n")
        os.replace(tmp, self.edge_clock_file)  # never a half-written offset
        return time.time()

    def log(self, name: str, tail: int = 4000) -> str:
        if name == "server" and self.worker_names:
            return "\n".join(f"--- worker {w}\n{self.log(f'server-{w}', tail)}" for w in self.worker_names)
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def mount_data(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            raise FaultUnavailable("a size-capped data directory needs root (mount -t tmpfs)")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.data_tmpfs_mb}m", "tmpfs", str(self.data)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise FaultUnavailable(f"mount -t tmpfs refused here: {done.stderr.strip() or done.returncode}")
        self._mounted = True

    def fill_data_disk(self) -> int:
        """Write a filler file in the server's data directory until the disk is full; returns its size."""
        written = 0
        chunk = b"\0" * 65536
        with (self.data / "filler").open("wb", buffering=0) as f:
            while True:
                try:
                    written += f.write(chunk) or 0
                except OSError:
                    break
            # A smaller write may still fit: fill to the last byte.
            for size in (4096, 512, 1):
                while True:
                    try:
                        written += f.write(chunk[:size]) or 0
                    except OSError:
                        break
        return written

    def free_data_disk(self) -> None:
        (self.data / "filler").unlink(missing_ok=True)

    def start(self) -> FaultStack:
        """Everything up, the edge online with a verified policy, the server online; then the load may start."""
        self.prepare()
        if self.data_tmpfs_mb:
            self.mount_data()
        self.broker_dir.mkdir(parents=True, exist_ok=True)
        self.broker = self._new_broker(None).start()
        self.port = self.broker.port
        self.watcher = self._watch(self.broker)
        self.start_server()
        self.start_edge()
        if not wait_for(lambda: (self.state_dir / "policy.json").exists(), 20):
            raise RuntimeError(f"the edge never cached its policy:\n{self.log('edge')}")
        self.load = LoadGenerator(self.readers)
        return self

    def __enter__(self) -> FaultStack:
        """``with FaultStack(...) as stack``: started, and stopped however the block ends (a start that fails half
        way stops what it started)."""
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self, broker: MosquittoBroker) -> Watcher:
        """A watcher on ``broker``, connected. Its own identity: client ids are bound to certificates, so as
        `server` it would drop the server."""
        watcher = Watcher(broker.client_config(OBSERVER), f"faults-watcher-{broker.port}-{os.getpid()}-{id(self)}")
        if not watcher.connected.wait(10):
            raise RuntimeError(f"the watcher could not connect to the broker on port {broker.port}")
        return watcher

    @property
    def broker_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    @property
    def edge_broker_url(self) -> str:
        """Where the edge reaches the broker: over the veth pair when it runs in a namespace."""
        return f"mqtts://{self.netns.host_addr}:{self.port}" if self.netns else self.broker_url

    @property
    def pki(self) -> Path:
        """The stack broker's CA and certificates (the broker's, the server's, pi-lobby's)."""
        return self.broker_dir / "pki"

    def _new_broker(self, port: int | None) -> MosquittoBroker:
        """Mosquitto running what `doorkeep broker config` generates for the site (mutual TLS, ACL, CRL),
        persistent; a restart reuses the working directory, so the same CA, sessions and queued messages.

        With a namespace: the broker's certificate also names the veth address (what `doorkeep pki issue broker
        --host ADDR` does), and a second listener, the same TLS settings, is bound to that address only."""
        if self.netns is not None and not (self.pki / "broker.crt").exists():
            from datetime import datetime, timezone

            from doorkeep.pki import BROKER, init_ca, issue
            now = datetime.now(timezone.utc)
            init_ca(self.pki, SITE, now=now)
            issue(self.pki, BROKER, now=now, hosts=(self.netns.host_addr,))
        broker = MosquittoBroker(port=port, workdir=self.broker_dir, persistent=True, tls_sites=[SITE],
                                 clients=["server", DEVICE, *(f"worker-{w}" for w in self.worker_names)])
        if self.netns is not None:
            text = broker.config_text or ""
            local = f"listener {broker.port} 127.0.0.1\n"
            if local not in text:
                raise RuntimeError("the generated broker configuration has no loopback listener to copy")
            block = text[text.index(local):]
            broker.config_text = text + "\n" + block.replace(local, f"listener {broker.port} {self.netns.host_addr}\n")
        return broker

    def _server_args(self) -> list[str]:
        args = ["server", "--site", str(self.site), "--data", str(self.data), "--broker", self.broker_url,
                "--ca", str(self.pki / "ca.crt"), "--cert", str(self.pki / "server.crt"),
                "--key", str(self.pki / "server.key"), "--device-timeout", str(self.device_timeout),
                "--gap-timeout", str(self.gap_timeout)]
        return args + (["--store", self.store_url] if self.store_url else [])

    def start_server(self, timeout: float = 20) -> None:
        if self.worker_names:
            for name in self.worker_names:
                self.start_worker(name, timeout)
            return
        before = len(self.watcher.server_availability)  # type: ignore[union-attr]
        self.server = self._proc("server", *self._server_args())
        if not wait_for(lambda: "online" in self.watcher.server_availability[before:], timeout):  # type: ignore[union-attr]
            raise RuntimeError(f"the server did not come online:\n{self.log('server')}")

    def start_worker(self, name: str, timeout: float = 20) -> None:
        """``doorkeep server --worker NAME``; returns once it leads (the server online) or stands by."""
        log = self.dir / f"server-{name}.log"
        start = log.stat().st_size if log.exists() else 0

        def ready() -> bool:
            text = log.read_text(errors="replace")[start:] if log.exists() else ""
            return ("standby for site" in text or "leading site" in text) and \
                self.watcher.last_server_availability() == "online"  # type: ignore[union-attr]

        args = self._server_args()
        if name in self.desk_ports:  # the desk takes no supervision timeouts
            args = ["desk", *args[1:args.index("--device-timeout")], *args[args.index("--gap-timeout") + 2:],
                    "--port", str(self.desk_ports[name])]
        self.workers[name] = self._proc(f"server-{name}", *args, "--worker", name)
        if not wait_for(ready, timeout):
            raise RuntimeError(f"worker {name} is neither leading nor standing by:\n{self.log('server')}")

    def leader(self) -> str | None:
        """The worker that leads now (its election lock in PostgreSQL), or None."""
        from server.workers import leader_of
        return leader_of(self.store_url or "", SITE)

    def decisions_by_worker(self) -> dict[str, int]:
        """Each worker's decisions as its last heartbeat recorded them (server/workers.py ``workers_status``)."""
        from server.workers import workers_status
        return {w["name"]: w["decisions"] for w in workers_status(self.store_url or "", SITE)}

    def kill_worker(self, name: str) -> float:
        at = time.time()
        self._kill(self.workers.get(name))
        return at

    def start_edge(self, timeout: float = 20) -> None:
        before = len(self.watcher.availability)  # type: ignore[union-attr]
        self.edge = self._proc("edge", "edge", "--device", str(self.device_file), "--broker", self.edge_broker_url,
                               env=self._edge_env(), netns=self.netns)
        if not wait_for(lambda: "online" in self.watcher.availability[before:], timeout):  # type: ignore[union-attr]
            raise RuntimeError(f"the edge did not come online:\n{self.log('edge')}")

    # ------------------------------------------------------------ faults
    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | None) -> None:
        if proc is not None and proc.poll() is None:
            proc.kill()  # SIGKILL: no handler runs, nothing is flushed
            proc.wait(10)

    def kill_broker(self) -> float:
        at = time.time()
        self._kill(self.broker.proc)  # type: ignore[union-attr]
        return at

    def restart_broker(self) -> None:
        self.broker = self._new_broker(self.port).start(timeout=10)

    def kill_server(self) -> float:
        at = time.time()
        self._kill(self.server)
        return at

    def kill_edge(self) -> float:
        at = time.time()
        self._kill(self.edge)
        return at

    def edge_alive(self) -> bool:
        return self.edge is not None and self.edge.poll() is None

    def server_alive(self) -> bool:
        return self.server is not None and self.server.poll() is None

    def outbox_integrity(self) -> tuple[str, int]:
        return sqlite_integrity(self.state_dir / "outbox.db")

    # ------------------------------------------------------------ the store
    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.store_url:
            import psycopg
            try:
                with psycopg.connect(self.store_url, autocommit=True, connect_timeout=5) as pg:
                    return pg.execute(sql.replace("?", "%s"), args).fetchall()  # type: ignore[arg-type]
            except psycopg.Error:
                return []  # the schema is not there yet
        db = self.data / "doorkeep.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # the schema is not there yet
        finally:
            conn.close()

    def stored_access(self) -> list[tuple[Any, ...]]:
        return self.query("SELECT id, door, \"transaction\", decision, credential_last4, received_at FROM events "
                          "WHERE device = ? AND type = 'access'", DEVICE)

    def stored_seqs(self) -> list[int]:
        return [r[0] for r in self.query("SELECT seq FROM events WHERE device = ? ORDER BY seq", DEVICE)]

    def alarms(self, type: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT id, type, device, cleared_at, occurrences, detail FROM alarms WHERE type = ?", type)
        return [dict(zip(("id", "type", "device", "cleared_at", "occurrences", "detail"), r)) for r in rows]

    def active_alarms(self, type: str) -> list[dict[str, Any]]:
        return [a for a in self.alarms(type) if a["cleared_at"] is None]

    def first_stored_after(self, at: float) -> float | None:
        rows = self.query("SELECT MIN(received_at) FROM events WHERE device = ? AND type = 'access' AND received_at > ?", DEVICE, at)
        return rows[0][0] if rows and rows[0][0] is not None else None

    def all_stored(self) -> bool:
        """Every badge has its access event in the store (by door and last four digits)."""
        return self.verify(check_seq=False).lost == 0

    def wait_all_stored(self, timeout: float) -> bool:
        return wait_for(self.all_stored, timeout, interval=0.1)

    # ------------------------------------------------------------ verdict
    def verify(self, *, check_seq: bool = True) -> Verdict:
        badges = list(self.load.badges) if self.load else []
        rows = self.stored_access()
        doors = {b.door for b in badges} | {GRANT_DOOR, DENY_DOOR}
        rows = [r for r in rows if r[1] in doors]
        by_tx: dict[str, list[tuple[Any, ...]]] = {}
        for r in rows:
            by_tx.setdefault(r[2] or r[0], []).append(r)
        duplicates = sum(len(v) - 1 for v in by_tx.values())
        firsts = [v[0] for v in by_tx.values()]
        want = Counter((b.door, b.number[-4:]) for b in badges)
        got = Counter((r[1], r[4]) for r in firsts)
        lost = sum((want - got).values())
        unexpected = sum((got - want).values())
        expect = {(b.door, b.number[-4:]): b.expect for b in badges}
        wrong = [f"{r[1]} ...{r[4]}: {r[3]} (expected {expect[(r[1], r[4])]})" for r in firsts
                 if (r[1], r[4]) in expect and r[3] != expect[(r[1], r[4])]]
        holes: list[int] = []
        if check_seq:
            seqs = sorted(set(self.stored_seqs()))
            if seqs:
                holes = sorted(set(range(seqs[0], seqs[-1] + 1)) - set(seqs))
        relay = self.watcher.relay_on(DENY_DOOR) if self.watcher else []
        return Verdict(len(badges), len(rows), duplicates, lost, unexpected, wrong, relay, holes,
                       {"missing": sorted((want - got).elements())})

    # ------------------------------------------------------------ teardown
    def stop(self) -> None:
        if self.load is not None:
            self.load.stop()
        for proc in (self.edge, self.server, *self.workers.values()):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        if self.watcher is not None:
            self.watcher.stop()
        if self.broker is not None:
            self.broker.stop()
        for reader in self.readers.values():
            reader.close()
        for log in self._logs:
            log.close()
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.data)], capture_output=True, timeout=30)
            self._mounted = False
