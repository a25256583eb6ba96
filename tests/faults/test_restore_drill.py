"""The restore drill (docs/backups.md, docs/faults.md): the server's disk dies under a steady flow of badges.

The server takes its scheduled backups (site.toml [backup], every 2 s here); it is killed with SIGKILL, its data
directory deleted, the newest backup restored into a new directory by ``doorkeep restore`` (a real process) and
the server started on it. Then: ``doorkeep audit verify`` passes, every event stored up to the backup's
recovery point is there, the edge takes the restored server's policies (a version above the one it held: a
restored store never sends versions backwards) and badges are decided and stored again. The fault table gets
the events lost (stored after the recovery point, before the crash: at most the RPO's worth) and the recovery
time (restore + start, until the server is online).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.backup import generate_recovery_key, newest_backup, read_manifest
from simulators.faults import DENY_DOOR, DEVICE, FaultStack, wait_for
from simulators.site import mosquitto_installed
from tests.faults.test_faults import AFTER, more_badges, settle, warm_up

pytestmark = pytest.mark.e2e

EVERY_S = 2   # the drill's backup period (the shipped default is 50 s: docs/backups.md)
RPO_S = 60    # the recovery point objective the loss is judged against


class BackupStack(FaultStack):
    """The fault stack with [backup] in its site.toml: a backup every EVERY_S seconds into ``backups``."""

    def prepare(self) -> None:
        super().prepare()
        self.recovery_key, pub, _ = generate_recovery_key(self.dir / "recovery")
        self.backups = self.dir / "backups"
        with (self.site / "site.toml").open("a") as f:
            f.write(f'\n[backup]\ndir = "{self.backups}"\nevery_s = {EVERY_S}\nkeep = 5\nrecovery_key = "{pub}"\n')


@pytest.fixture
def backup_stack(tmp_path: Path) -> Iterator[BackupStack]:
    if not mosquitto_installed():
        pytest.skip("mosquitto is not installed (make test installs it)")
    stack = BackupStack(tmp_path)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def doorkeep(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "doorkeep", *args], capture_output=True, text=True, timeout=60)


def policy_floor(stack: FaultStack) -> int:
    path = stack.state_dir / "policy.json.version"
    return int(path.read_text().strip()) if path.exists() else 0


def test_restore_drill_server_disk_lost_under_load(backup_stack: BackupStack, fault_row) -> None:
    stack = backup_stack
    warm_up(stack)
    stored_before = stack.query("SELECT MAX(rowid) FROM events")[0][0]

    def covered() -> bool:  # a backup whose recovery point holds the warm-up's events
        newest = newest_backup(stack.backups, "demo")
        return newest is not None and read_manifest(newest, check=False)[0]["recovery_point"]["event_rowid"] >= stored_before

    assert wait_for(covered, 15), f"no backup taken\n{stack.log('server')}"
    more_badges(stack, 5)  # keep the flow going past the backup: these may be what a crash loses
    floor_before = policy_floor(stack)
    crash = stack.kill_server()
    old_events = stack.query("SELECT rowid, id, received_at FROM events")
    shutil.rmtree(stack.data)  # the disk is gone
    newest = newest_backup(stack.backups, "demo")
    assert newest is not None
    point = read_manifest(newest)[0]["recovery_point"]

    started = time.time()
    stack.data = stack.dir / "data-restored"
    done = doorkeep("restore", str(newest), "--site", str(stack.site), "--to", str(stack.data),
                    "--recovery-key", str(stack.recovery_key))
    assert done.returncode == 0, done.stderr
    restored_s = time.time() - started
    assert "integrity_check: ok" in done.stdout and "audit verify: ok" in done.stdout, done.stdout
    stack.start_server()
    recover_s = time.time() - started

    verify = doorkeep("audit", "verify", "--site", str(stack.site), "--data", str(stack.data))
    assert verify.returncode == 0 and verify.stdout.startswith("ok"), verify.stdout + verify.stderr
    kept = {r[0] for r in stack.query("SELECT id FROM events")}
    before_point = [eid for rowid, eid, _ in old_events if rowid <= point["event_rowid"]]
    assert before_point and all(eid in kept for eid in before_point), "an event up to the recovery point is missing"
    lost = [(eid, at) for rowid, eid, at in old_events if rowid > point["event_rowid"] and eid not in kept]
    assert crash - point["event_received_at"] <= RPO_S, "the newest backup is older than the RPO"
    assert all(at - point["event_received_at"] <= RPO_S for _, at in lost)

    # The edge accepts the restored server's policies: a version above the one it held before the crash.
    assert wait_for(lambda: policy_floor(stack) > floor_before, 15), \
        f"the edge took no policy from the restored server\n{stack.log('edge')}"
    more_badges(stack, AFTER)
    verdict = settle(stack)
    assert verdict.duplicates == 0 and verdict.unexpected == 0 and not verdict.wrong_decisions, verdict
    assert not verdict.denied_relay, f"the {DENY_DOOR} relay was energised"
    assert verdict.lost <= len(lost), f"more badges missing than the backup could lose: {verdict.detail['missing']}"
    assert stack.query("SELECT COUNT(*) FROM events WHERE device = ? AND received_at > ?", DEVICE, crash)[0][0] > 0
    fault_row("server disk lost, restored from backup", verdict, recover_s,
              f"backup every {EVERY_S} s; {len(lost)} event(s) after the recovery point, "
              f"{crash - point['event_received_at']:.1f} s before the crash (RPO {RPO_S} s); restore {restored_s:.2f} s",
              lost=len(lost))
