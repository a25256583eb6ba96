"""Snapshots encrypted at rest, end to end on a real Mosquitto: reader pty -> edge -> sealed outbox -> MQTT ->
server -> ciphertext file + wrapped key; plus the proof that no card number is stored anywhere, and a key
rotation (`doorkeep key rotate`, a separate process) while the server keeps ingesting."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest

from doorkeep.config import load_site_dir
from doorkeep.envelope import DATA_KEYS_ENV, SNAPSHOT_KEY_ENV, init_data_keys, load_snapshot_keys
from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until

pytestmark = pytest.mark.e2e

JPEG_MARKER = b"\xff\xd8\xff"
ALICE_EM = "0F00A1B2C3"      # lobby readers are EM4100: the reader sends these 10 hex digits
ALICE_ASCII = "40011111"     # the lab reader is ASCII with a keypad
ALICE_PIN = "2468"
UNKNOWN_EM = "0F00FFFF01"
UNKNOWN_ASCII = "40099999"


def make_site(tmp_path: Path) -> Path:
    """The demo site with a card+PIN lab open around the clock (so the PIN path is exercised on any day)."""
    site = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site)
    text = (site / "site.toml").read_text()
    text = text.replace('[doors.lab]\n', '[doors.lab]\npin_required = true\n', 1)
    text = text.replace('{ area = "floor7", schedule = "business_hours" }', '{ area = "floor7", schedule = "always" }')
    (site / "site.toml").write_text(text)
    people = (site / "people.toml").read_text().replace("[people.alice]\n", f'[people.alice]\npin = "{ALICE_PIN}"\n', 1)
    (site / "people.toml").write_text(people)
    init_data_keys(site / "keys")
    return site


@pytest.fixture
def env_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SNAPSHOT_KEY_ENV, raising=False)
    monkeypatch.delenv(DATA_KEYS_ENV, raising=False)


@pytest.fixture
def secure_site(tmp_path: Path, env_clean: None) -> Iterator[tuple[SiteRunner, Path]]:
    """The site on a private Mosquitto (so a test can stop it) with the server's keys in files."""
    site_dir = make_site(tmp_path)
    runner = SiteRunner(load_site_dir(site_dir), data_dir=tmp_path / "run", embedded_broker=False,
                        snapshot_keys=load_snapshot_keys(site_dir / "keys", source=str(site_dir)))
    runner.start()
    try:
        assert runner.wait_connected(10), "edges and server did not connect to Mosquitto"
        assert wait_until(lambda: all(c.stats.online for a in runner.agents.values() for c in a.cameras.values()), 10)
        # The snapshot key reaches the edges inside the signed policy.
        assert runner.wait_policies(10)
        assert wait_until(lambda: all(a.policy is not None and a.policy.current is not None
                                      and a.policy.current.snapshot_key is not None
                                      for a in runner.agents.values()), 10)
        yield runner, site_dir
    finally:
        runner.stop()


def access_events(runner: SiteRunner, door: str) -> list[dict]:
    assert runner.server is not None
    return [e for e in runner.server.store.events(500, door=door) if e["type"] == "access"]


def wait_snapshots(runner: SiteRunner, door: str, n: int, timeout: float = 10.0) -> list[dict]:
    assert wait_until(lambda: sum(1 for e in access_events(runner, door) if e["snapshot_path"]) >= n, timeout), \
        f"fewer than {n} snapshot(s) stored for {door}"
    return [e for e in access_events(runner, door) if e["snapshot_path"]]


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def decodes(jpeg: bytes | None) -> bool:
    if not jpeg or not jpeg.startswith(JPEG_MARKER):
        return False
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    return image is not None and image.shape[0] > 0 and image.shape[1] > 0


def test_snapshots_travel_and_rest_sealed_and_no_card_number_is_stored(secure_site: tuple[SiteRunner, Path]) -> None:
    runner, _ = secure_site
    lobby, lab = runner.doors["lobby_in"], runner.doors["lab"]
    data_dir = runner.data_dir
    assert data_dir is not None
    edge = runner.agents["pi-lobby"]

    # With the broker down the snapshot waits in the edge's outbox: what a stolen SD card would hold.
    runner.stop_broker()
    lobby.reader.badge(UNKNOWN_EM)
    assert wait_until(lambda: edge.counters["snapshots"] >= 1 and edge.outbox.stats()["pending"] >= 2, 10)
    outbox_files = [p for p in (data_dir / "edge" / "pi-lobby").iterdir() if p.name.startswith("outbox.db")]
    assert any(p.name.endswith("-wal") for p in outbox_files)
    plain = [p.name for p in outbox_files if JPEG_MARKER in p.read_bytes()]
    assert plain == [], f"plaintext JPEG waiting in the edge outbox: {plain}"
    assert runner.start_broker(), "clients did not reconnect"
    # The lab decides online only (offline = deny): badge once every edge hears the server again.
    assert wait_until(lambda: all(a.server_reachable for a in runner.agents.values()), 10)

    lobby.reader.badge(ALICE_EM)
    assert lobby.door.wait_relay(True, 3.0), "alice was not let in"
    lab.reader.badge(ALICE_ASCII)
    lab.reader.enter_pin(ALICE_PIN)
    assert lab.door.wait_relay(True, 5.0), "alice with her PIN was not let into the lab"
    lab.reader.badge(UNKNOWN_ASCII)
    lab.reader.enter_pin("1357")

    lobby_snaps = wait_snapshots(runner, "lobby_in", 2)
    lab_snaps = wait_snapshots(runner, "lab", 2)
    assert {e["decision"] for e in lobby_snaps} == {"granted", "denied"}
    assert {e["decision"] for e in lab_snaps} == {"granted", "denied"}
    assert runner.server is not None
    store = runner.server.store
    for ev in lobby_snaps + lab_snaps:
        assert ev["snapshot_path"].endswith(".bin")
        assert decodes(store.snapshot_bytes(ev["snapshot"])), f"snapshot of {ev['id']} does not decode to a JPEG"
    assert all(a.counters["snapshots_no_key"] == 0 for a in runner.agents.values())
    assert runner.server.bus.counters["snapshots_refused"] == 0

    # Every snapshot went out of the outbox: the edges are idle, then everything is stopped and flushed.
    assert wait_until(lambda: all(a.outbox.stats()["pending"] == 0 for a in runner.agents.values()), 10)
    runner.stop()

    edge_files = files_under(data_dir / "edge")
    server_files = files_under(data_dir / "server")
    assert any(p.name == "outbox.db" for p in edge_files) and any(p.name == "doorkeep.db" for p in server_files)
    assert len([p for p in server_files if p.suffix == ".bin"]) >= 4

    # No card number, in any spelling a reader sends or the site file holds, in any byte on disk
    # (SQLite databases, their WAL and SHM files, policy caches, snapshot files).
    numbers = [ALICE_EM, UNKNOWN_EM, ALICE_ASCII, UNKNOWN_ASCII]
    needles = {n.encode() for n in numbers} | {n.lower().encode() for n in numbers}
    leaks = [(str(p), n) for p in edge_files + server_files for n in needles if n in p.read_bytes()]
    assert leaks == [], f"card numbers found on disk: {leaks}"

    # No plaintext JPEG in the edge outbox (database, WAL, SHM) or the server's snapshot directory.
    outbox_files = [p for p in edge_files if p.name.startswith("outbox.db")]
    assert outbox_files
    snap_files = files_under(data_dir / "server" / "snapshots")
    plain = [str(p) for p in outbox_files + snap_files if JPEG_MARKER in p.read_bytes()]
    assert plain == [], f"plaintext JPEG found in {plain}"


def test_key_rotation_while_the_server_ingests(secure_site: tuple[SiteRunner, Path]) -> None:
    runner, site_dir = secure_site
    assert runner.server is not None and runner.data_dir is not None
    store = runner.server.store
    lobby = runner.doors["lobby_in"]
    ring_file = site_dir / "keys" / "data-keys.json"
    old = json.loads(ring_file.read_text())["current"]

    badged = 0

    def stored_snapshots() -> int:
        with store.connection_for_tests() as db:
            return int(db["snapshots"].count)

    def badge_next() -> None:
        nonlocal badged
        lobby.reader.badge(f"0F00FE{badged:04X}")  # a new unknown card each time: denied, one snapshot each
        badged += 1
        assert wait_until(lambda: stored_snapshots() >= badged, 10), "a snapshot did not arrive"

    for _ in range(5):
        badge_next()

    done = threading.Event()
    during = 0
    failures: list[BaseException] = []

    def keep_badging() -> None:
        nonlocal during
        try:
            while not done.is_set() and during < 200:
                badge_next()
                during += 1
        except BaseException as exc:  # noqa: BLE001 - asserted below
            failures.append(exc)

    worker = threading.Thread(target=keep_badging)
    worker.start()
    try:
        assert wait_until(lambda: during >= 1, 10)
        rotate = subprocess.run([sys.executable, "-m", "doorkeep", "key", "rotate", "--site", str(site_dir),
                                 "--data", str(runner.data_dir / "server")], capture_output=True, text=True,
                                timeout=120)
        at_end = during
        assert wait_until(lambda: during >= at_end + 3, 20), "ingest stopped after the rotation"
    finally:
        done.set()
        worker.join(timeout=30)
    assert rotate.returncode == 0, rotate.stderr
    assert failures == []

    ring = json.loads(ring_file.read_text())
    new = ring["current"]
    assert new != old and old not in ring["keys"] and list(ring["keys"]) == [new]
    with store.connection_for_tests() as db:
        rows = list(db.query("SELECT id, kek_id FROM snapshots"))
    assert len(rows) == badged
    assert {r["kek_id"] for r in rows} == {new}, "a snapshot still refers to the retired key"
    assert all(decodes(store.snapshot_bytes(r["id"])) for r in rows)
    with store.connection_for_tests() as db:
        audit = list(db.query("SELECT actor, action, target, details FROM audit_log WHERE action = 'key.rotate'"))
    assert len(audit) == 1 and audit[0]["target"] == new
    details = json.loads(audit[0]["details"])
    assert details["previous"] == old and details["retired"] == [old]
    assert all(k not in audit[0]["details"] for k in ring["keys"].values())  # no key material in the log


def test_an_edge_without_the_snapshot_key_keeps_no_snapshot(edge_only: SiteRunner,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Never had a policy (no server yet): the snapshot is dropped, counted and logged, never stored in clear."""
    edge = edge_only.agents["pi-lobby"]
    assert edge.policy is not None and edge.policy.current is None
    assert wait_until(lambda: all(c.stats.online for c in edge.cameras.values()), 10)
    with caplog.at_level("WARNING", logger="doorkeep"):
        edge_only.doors["lobby_in"].reader.badge(UNKNOWN_EM)
        assert wait_until(lambda: edge.counters["snapshots_no_key"] == 1, 10)
    assert edge.counters["snapshots"] == 0
    assert any("no snapshot key yet" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert edge_only.data_dir is not None
    outbox = [p for p in (edge_only.data_dir / "edge" / "pi-lobby").iterdir() if p.name.startswith("outbox.db")]
    assert outbox and not any(JPEG_MARKER in p.read_bytes() for p in outbox)
