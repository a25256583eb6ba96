"""Backups (server/backup.py, docs/backups.md): an online copy taken while the store is written, encrypted so a
stolen file reveals nothing, refused when damaged, cut off, foreign or wrongly keyed, and verified on restore;
the [backup] section of site.toml; the server's schedule with its alarm, pruning and offsite copies."""

from __future__ import annotations

import hashlib
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from doorkeep.cli import main
from doorkeep.clock import FakeClock
from doorkeep.config import BackupSettings, load_site_dir
from doorkeep.contract import EventMsg
from doorkeep.envelope import SnapshotKeys, SnapshotRef, seal
from doorkeep.errors import ConfigErrors
from server.audit import AuditLog
from server.backup import (
    BACKUP_FAILED,
    TRAILER,
    BackupError,
    BackupJob,
    create_backup,
    generate_recovery_key,
    load_private_key,
    load_public_key,
    open_keys,
    read_manifest,
    restore_backup,
    seal_keys,
)
from server.store import Store

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
NAME = "Zebulon Quaxworth"  # a visitor's name that must never be readable in a backup
CARD_HASH = "c0ffee" * 10 + "beef"
JPEG = b"\xff\xd8\xff\xe0" + b"snapshot-pixels" * 50


def event(i: int) -> EventMsg:
    return EventMsg(id=f"ev-{i:06d}", seq=i, ts=f"2026-03-30T09:{i // 600 % 60:02d}:{i // 10 % 60:02d}.000Z",
                    device="pi-lobby", door="lobby_in", type="access", decision="granted", reason="granted",
                    person="alice", credential_hash=CARD_HASH, credential_last4="9Q7Z")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    priv, pub, _ = generate_recovery_key(tmp_path / "recovery")
    return priv, pub


@pytest.fixture
def snap_keys() -> SnapshotKeys:
    return SnapshotKeys.generate()


@pytest.fixture
def store(tmp_path: Path, snap_keys: SnapshotKeys) -> Iterator[Store]:
    s = Store(tmp_path / "data", keys=snap_keys)
    audit = AuditLog(s)
    for i in range(1, 301):
        s.ingest_event(event(i), float(i))
    s.insert_snapshot("ev-000001", "pi-lobby", "lobby_in", seal(JPEG, snap_keys.recipient,
                                                                 SnapshotRef("demo", "pi-lobby", "ev-000001")),
                      1.0, site="demo")
    s.save_visitor("v-1", name=NAME, company="Quaxworth Ltd", host="alice", valid_from=0.0, valid_until=1e10,
                   allowed_areas="[]", escort_required=0, status="registered", registered_at=1.0)
    for n in range(3):
        audit.record("system", "test.record", None, {"n": n})
    yield s
    s.close()


def backup_of(store: Store, tmp_path: Path, pub: Path, name: str = "b.dkbackup", site: str = "demo") -> Path:
    out = tmp_path / name
    create_backup(store.dir, out, site_id=site, recipient=load_public_key(pub))
    return out


# ------------------------------------------------------------------ consistency under writes


def test_backup_taken_while_the_store_is_written_restores_exactly_the_events_up_to_its_recovery_point(
        tmp_path: Path, store: Store, keys: tuple[Path, Path], snap_keys: SnapshotKeys) -> None:
    priv, pub = keys
    stop = threading.Event()
    written = [300]

    def writer() -> None:  # the server's store thread, ingesting in small batches all along
        i = 301
        while not stop.is_set() and i < 20_000:
            store.ingest_events([(event(j), float(j)) for j in range(i, i + 20)])
            written[0] = i + 19
            i += 20

    t = threading.Thread(target=writer)
    t.start()
    try:
        out = backup_of(store, tmp_path, pub)
    finally:
        stop.set()
        t.join(10)
    manifest = read_manifest(out)[0]
    point = manifest["recovery_point"]["event_rowid"]
    assert 300 <= point <= written[0] and manifest["tables"]["events"] == point  # a real state of the database
    report = restore_backup(out, tmp_path / "restored", site_id="demo", private=load_private_key(priv))
    assert report.ok and report.integrity == "ok" and report.audit == "ok: 3 records"
    restored = Store(tmp_path / "restored", keys=snap_keys)
    try:
        ids = [e["id"] for e in restored.events(limit=100_000)]
        assert sorted(ids) == [f"ev-{i:06d}" for i in range(1, point + 1)]  # every event before the point, no other
        assert restored.snapshot_bytes("ev-000001") == JPEG  # the snapshot file came along, and still opens
        assert AuditLog(restored).verify().ok
    finally:
        restored.close()


def test_a_stolen_backup_reveals_no_table_content_card_hash_or_name(tmp_path: Path, store: Store,
                                                                    keys: tuple[Path, Path]) -> None:
    out = backup_of(store, tmp_path, keys[1])
    data = out.read_bytes()
    plain_db = (store.dir / "doorkeep.db").read_bytes()
    assert CARD_HASH.encode() in plain_db  # what is being looked for really is in the store
    for secret in (CARD_HASH.encode(), b"9Q7Z", b"ev-000001", b"alice", b"CREATE TABLE", b"SQLite format",
                   b"snapshot-pixels", NAME.encode(), b"Quaxworth"):
        assert secret not in data, secret
    manifest = read_manifest(out)[0]
    assert manifest["site"] == "demo" and manifest["tables"]["events"] == 300  # the manifest: counts, not content


# ------------------------------------------------------------------ refusals


def test_restore_refuses_a_damaged_a_truncated_a_foreign_and_a_wrongly_keyed_file_and_writes_nothing(
        tmp_path: Path, store: Store, keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    out = backup_of(store, tmp_path, pub)
    private = load_private_key(priv)
    damaged = tmp_path / "damaged.dkbackup"
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    truncated = tmp_path / "truncated.dkbackup"
    truncated.write_bytes(out.read_bytes()[: len(data) * 2 // 3])
    foreign = backup_of(store, tmp_path, pub, "other.dkbackup", site="other-site")
    other_priv, other_pub, _ = generate_recovery_key(tmp_path / "other")
    wrong_key = backup_of(store, tmp_path, other_pub, "wrongkey.dkbackup")
    cases = [(damaged, "damaged: its checksum"), (truncated, "truncated"), (foreign, "backup of site 'other-site'"),
             (wrong_key, "encrypted to recovery key rk-")]
    for path, message in cases:
        with pytest.raises(BackupError, match=message):
            restore_backup(path, tmp_path / "target", site_id="demo", private=private)
        assert not (tmp_path / "target").exists(), path
    assert not [p for p in tmp_path.iterdir() if ".restoring-" in p.name]  # no half-restored directory left


def test_restore_refuses_a_payload_altered_behind_a_recomputed_checksum(tmp_path: Path, store: Store,
                                                                        keys: tuple[Path, Path]) -> None:
    out = backup_of(store, tmp_path, keys[1])
    body = bytearray(out.read_bytes()[: -len(TRAILER) - 32])
    body[-20] ^= 0x01  # inside the last chunk's ciphertext
    out.write_bytes(bytes(body) + TRAILER + hashlib.sha256(body).digest())
    with pytest.raises(BackupError, match="does not decrypt"):
        restore_backup(out, tmp_path / "target", site_id="demo", private=load_private_key(keys[0]))
    assert not (tmp_path / "target").exists()


def test_restore_never_writes_into_a_non_empty_directory(tmp_path: Path, store: Store, keys: tuple[Path, Path]) -> None:
    out = backup_of(store, tmp_path, keys[1])
    target = tmp_path / "target"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(BackupError, match="not empty"):
        restore_backup(out, target, site_id="demo", private=load_private_key(keys[0]))
    assert [p.name for p in target.iterdir()] == ["precious.txt"]


def demo_site(tmp_path: Path, extra: str = "") -> Path:
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    if extra:
        with (site / "site.toml").open("a") as f:
            f.write(extra)
    return site


def test_the_commands_print_one_clear_line_and_exit_1_for_a_refused_backup(
        tmp_path: Path, store: Store, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    priv, pub = keys
    site = demo_site(tmp_path)
    out = tmp_path / "cli.dkbackup"
    assert main(["backup", "--site", str(site), "--data", str(store.dir), "--to", str(out),
                 "--recovery-key", str(pub)]) == 0
    assert "300 events" in capsys.readouterr().out
    cut = tmp_path / "cut.dkbackup"
    cut.write_bytes(out.read_bytes()[:-100])
    assert main(["restore", str(cut), "--site", str(site), "--to", str(tmp_path / "r1"),
                 "--recovery-key", str(priv)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated" in err[0]
    assert main(["restore", str(out), "--site", str(site), "--to", str(tmp_path / "r2"),
                 "--recovery-key", str(priv)]) == 0
    printed = capsys.readouterr().out
    assert "integrity_check: ok" in printed and "audit verify: ok: 3 records" in printed
    assert "29 of 29 tables match" in printed or "tables match the manifest" in printed
    assert main(["backup", "--site", str(site), "--data", str(store.dir), "--to", str(out),
                 "--recovery-key", str(priv)]) == 2  # the private key never goes to the server
    assert "PRIVATE key" in capsys.readouterr().err


def test_key_material_goes_only_to_a_separate_file_sealed_to_a_passphrase(tmp_path: Path) -> None:
    site = demo_site(tmp_path)
    (site / "keys").mkdir(exist_ok=True)
    (site / "keys" / "credential.key").write_text("00" * 32)
    out = tmp_path / "b.dkbackup.keys"
    assert seal_keys(site / "keys", out, passphrase="correct horse") == ["credential.key"]
    assert b"00" * 32 not in out.read_bytes()
    assert open_keys(out, passphrase="correct horse") == {"credential.key": b"00" * 32}
    with pytest.raises(BackupError, match="does not open"):
        open_keys(out, passphrase="wrong")


# ------------------------------------------------------------------ site.toml [backup]


def test_backup_section_defaults_paths_and_errors_name_file_key_and_fix(tmp_path: Path,
                                                                        keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    assert load_site_dir(demo_site(tmp_path / "a")).backup == BackupSettings()
    site = demo_site(tmp_path / "b", f'\n[backup]\ndir = "backups"\nrecovery_key = "{pub}"\n'
                                     'offsite_command = ["rsync", "-a", "{file}", "host:/srv/"]\n')
    got = load_site_dir(site).backup
    assert (got.dir, got.every_s, got.keep, got.offsite_command) == (site / "backups", 50.0, 60,
                                                                    ("rsync", "-a", "{file}", "host:/srv/"))
    bad = demo_site(tmp_path / "c", f'\n[backup]\ndir = "b"\nrecovery_key = "{priv}"\nkeep = 0\n'
                                    'offsite_dir = "x"\noffsite_command = ["scp", "here"]\nevery = 5\n')
    with pytest.raises(ConfigErrors) as exc:
        load_site_dir(bad)
    text = str(exc.value)
    for expected in ("backup.keep: must be 1 to 100000", "backup.offsite_command: and offsite_dir are both set",
                     "never names the backup", "backup.recovery_key:", "is a private key", "backup.every: unknown key"):
        assert expected in text, expected
    assert "site.toml" in text and "fix:" in text
    missing = demo_site(tmp_path / "d", '\n[backup]\ndir = "b"\n')
    with pytest.raises(ConfigErrors, match="recovery_key: is required when dir is set"):
        load_site_dir(missing)


# ------------------------------------------------------------------ the schedule


def test_scheduled_backup_keeps_n_copies_offsite_and_raises_then_clears_backup_failed(
        tmp_path: Path, store: Store, keys: tuple[Path, Path]) -> None:
    clock = FakeClock()
    offsite = tmp_path / "offsite"
    settings = BackupSettings(dir=tmp_path / "backups", keep=2, recovery_key=keys[1], offsite_dir=offsite)
    job = BackupJob(store, settings, "demo", store.dir, clock)
    with pytest.raises(BackupError, match="offsite directory"):
        job.run_once()  # the offsite disk is not mounted: the backup is taken, its copy fails
    [alarm] = store.open_alarms(type=BACKUP_FAILED)
    assert alarm["state"] == "active" and alarm["detail"]["stage"] == "offsite" and alarm["severity"] == "trouble"
    offsite.mkdir()
    for _ in range(3):
        clock.advance(60)
        job.run_once()
    assert store.open_alarms(type=BACKUP_FAILED)[0]["state"] == "cleared"  # stays on record until resolved
    kept = sorted(p.name for p in settings.dir.iterdir())  # type: ignore[union-attr]
    assert len(kept) == 2 and kept[-1] == job.last.path.name  # type: ignore[union-attr]
    assert job.last.path.name in [p.name for p in offsite.iterdir()]  # type: ignore[union-attr]
    assert not [p for p in offsite.iterdir() if p.name.endswith(".tmp")]


def test_offsite_command_runs_without_a_shell_and_a_failing_one_raises_the_alarm(
        tmp_path: Path, store: Store, keys: tuple[Path, Path]) -> None:
    clock = FakeClock()
    dest = tmp_path / "copied; touch pwned"  # would run `touch` if a shell ever saw it
    copy = [sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])", "{file}", str(dest)]
    job = BackupJob(store, BackupSettings(dir=tmp_path / "b", recovery_key=keys[1], offsite_command=tuple(copy)),
                    "demo", store.dir, clock)
    result = job.run_once()
    assert dest.read_bytes() == result.path.read_bytes() and not (tmp_path / "pwned").exists()
    clock.advance(60)
    failing = BackupJob(store, BackupSettings(dir=tmp_path / "b", recovery_key=keys[1], offsite_command=(
        sys.executable, "-c", "import sys; sys.exit('host unreachable')", "{file}")), "demo", store.dir, clock)
    with pytest.raises(BackupError, match="exited 1: host unreachable"):
        failing.run_once()
    assert store.open_alarms(type=BACKUP_FAILED)[0]["detail"]["error"].endswith("host unreachable")
