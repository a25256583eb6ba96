"""Private data files (issue 12 item 7): the store, the snapshots, the audit head and the edge's policy cache
are readable by their own account only, whatever the umask of the process that made them.

Every test here runs under umask 0022 (what a shell or a test runner usually has), which today leaves
``doorkeep.db`` and ``audit-head.json`` at 0644 in a 0755 directory: any local account reads visitor names,
e-mails and operators' password hashes.
"""

from __future__ import annotations

import argparse
import logging
import os
import stat
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep import cli
from doorkeep.contract import EventMsg
from doorkeep.envelope import SnapshotKeys, SnapshotRef, seal
from doorkeep.policy import sign_policy
from edge.policy_cache import PolicyCache
from server.audit import AuditLog
from server.store import Store
from tests.unit.test_policy_cache import SITE_ID, site

JPEG = b"\xff\xd8\xff\xe0" + b"face" * 100 + b"\xff\xd9"


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """Run the test under umask 0022, then put the process's own back."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (itself included) and its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for current, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(current) / name
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def open_to_others(root: Path) -> dict[str, str]:
    """Paths under ``root`` that are not 0700 (directories) or 0600 (files)."""
    bad = {}
    for rel, mode in modes(root).items():
        want = 0o700 if (root / rel).is_dir() else 0o600
        if mode != want:
            bad[rel] = f"{mode:03o} (want {want:03o})"
    return bad


def run_a_store(data: Path) -> None:
    keys = SnapshotKeys.generate()
    store = Store(data, keys=keys)
    try:
        audit = AuditLog(store)
        audit.record("desk1", "visitor.register", "ps-test", {"company": "Acme"})
        store.ingest_event(EventMsg(id="e-1", seq=1, ts="2026-03-30T09:00:00.000Z", device="pi-lobby",
                                    door="lobby_in", type="access", decision="granted", reason="granted",
                                    person="alice", snapshot="e-1"), 1.0)
        assert store.insert_snapshot("e-1", "pi-lobby", "lobby_in",
                                     seal(JPEG, keys.recipient, SnapshotRef("demo", "pi-lobby", "e-1")), 1.0,
                                     site="demo")
        store.upsert("visitors", {"id": "v-1", "name": "Zoe Zimmer", "email": "zoe@example.org"}, "id")
        names = {p.name for p in data.iterdir()}
        assert {"doorkeep.db", "doorkeep.db-wal", "doorkeep.db-shm", "audit-head.json", "snapshots"} <= names
    finally:
        store.close()


def test_attack_local_account_reads_the_store_its_wal_audit_head_and_snapshots(tmp_path: Path,
                                                                               loose_umask: None) -> None:
    data = tmp_path / "server"
    run_a_store(data)
    assert open_to_others(data) == {}, "the server's data directory is open to other local accounts"
    assert list((data / "snapshots").iterdir()), "the run stored a snapshot file"


def test_an_existing_world_readable_data_dir_is_made_private_at_start_and_logged(
        tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "server"
    run_a_store(data)
    # As an older version left it (or a backup restored with its modes): all open to other accounts.
    for path in [data, *data.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    with caplog.at_level(logging.WARNING, logger="doorkeep.server.files"):
        Store(data, keys=SnapshotKeys.generate()).close()
    assert open_to_others(data) == {}
    logged = caplog.text
    assert "doorkeep.db was mode 644" in logged and "audit-head.json was mode 644" in logged
    assert f"{data} was mode 755" in logged


def test_a_read_only_file_is_never_widened(tmp_path: Path, loose_umask: None) -> None:
    data = tmp_path / "server"
    run_a_store(data)
    os.chmod(data / "audit-head.json", 0o400)
    Store(data).close()
    assert stat.S_IMODE((data / "audit-head.json").stat().st_mode) == 0o400


def test_attack_local_account_reads_the_edge_policy_cache_and_its_state_dir(tmp_path: Path,
                                                                            loose_umask: None) -> None:
    state = tmp_path / "edge" / "pi-a"
    state.mkdir(parents=True)  # as the agent makes it: 0755 under this umask
    key = Ed25519PrivateKey.generate()
    cache = PolicyCache(state / "policy.json", key.public_key(), site_id=SITE_ID, device="pi-a")
    assert cache.offer(sign_policy(site(1), site_id=SITE_ID, device="pi-a", version=1, issued_at=1.7e9, key=key))
    assert {p.name for p in state.iterdir()} == {"policy.json", "policy.json.version"}
    assert open_to_others(state) == {}


def test_the_doorkeep_command_runs_under_umask_0077_and_gives_the_caller_its_umask_back(
        monkeypatch: pytest.MonkeyPatch, loose_umask: None, tmp_path: Path) -> None:
    seen: list[int] = []

    def handler(args: argparse.Namespace) -> int:
        current = os.umask(0o077)
        os.umask(current)
        seen.append(current)
        (tmp_path / "made-by-the-command").write_text("private")
        return 0

    monkeypatch.setattr(cli, "_config_check", handler)
    assert cli.main(["config", "check", str(tmp_path)]) == 0
    assert seen == [0o077]
    assert stat.S_IMODE((tmp_path / "made-by-the-command").stat().st_mode) == 0o600
    current = os.umask(0o022)
    assert current == 0o022, "main() must put the caller's umask back"


def test_attack_edge_outbox_with_its_wal_is_readable_by_its_own_account_only(tmp_path: Path, loose_umask: None) -> None:
    from edge.outbox import Outbox

    state = tmp_path / "edge"
    state.mkdir(mode=0o700)
    ob = Outbox(state / "outbox.db", disk_free=lambda: 1 << 40)
    try:
        ob.put_event("doorkeep/v1/t/d/door/x/event", lambda seq: b'{"seq": %d}' % seq)
        names = {p.name for p in state.iterdir()}
        assert {"outbox.db", "outbox.db-wal"} <= names, names  # the WAL exists while the outbox is open
        assert open_to_others(state) == {}
    finally:
        ob.close()
