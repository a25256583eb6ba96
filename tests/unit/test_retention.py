"""Retention: [retention] settings, what goes at which age, what an open alarm keeps, the audit record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.cli import main
from doorkeep.clock import FakeClock, iso_ms
from doorkeep.config import RetentionSettings, load_site_dir
from doorkeep.contract import EventMsg
from doorkeep.envelope import SnapshotKeys, SnapshotRef, init_data_keys, seal
from doorkeep.errors import ConfigErrors
from server.audit import AuditLog
from server.retention import DAY_S, RetentionJob, run_retention
from server.store import Store
from simulators.wait import wait_until

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
KEYS = SnapshotKeys.generate()
NOW = 1_780_000_000.0


def site_with(tmp_path: Path, retention: str) -> Path:
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    text = (site / "site.toml").read_text()
    if "[retention]" in text:  # replace the demo's own table
        head, _, tail = text.partition("[retention]")
        rest = tail.split("\n[", 1)
        text = head + ("[" + rest[1] if len(rest) > 1 else "")
    (site / "site.toml").write_text(text + "\n" + retention)
    return site


# ------------------------------------------------------------------ config


def test_defaults_a_privacy_officer_accepts_when_the_table_is_absent(tmp_path: Path) -> None:
    site = site_with(tmp_path, "")
    r = load_site_dir(site).retention
    assert r == RetentionSettings()
    assert (r.snapshots_days, r.events_days, r.visitors_days, r.alarms_days, r.audit_days) == (30, 180, 30, 365, 730)


def test_settings_are_read_from_site_toml(tmp_path: Path) -> None:
    site = site_with(tmp_path, "[retention]\nevents_days = 90\nsnapshots_days = 7\n")
    r = load_site_dir(site).retention
    assert (r.events_days, r.snapshots_days, r.visitors_days) == (90, 7, 30)


@pytest.mark.parametrize("body, key, words", [
    ("events_dayz = 90", "retention.events_dayz", "did you mean `events_days`"),
    ("snapshots_days = 0", "retention.snapshots_days", "1 to 36500"),
    ('audit_days = "two years"', "retention.audit_days", "must be int"),
    ("visitors_days = 30.5", "retention.visitors_days", "must be int"),
])
def test_bad_settings_name_the_file_key_and_fix(tmp_path: Path, body: str, key: str, words: str) -> None:
    site = site_with(tmp_path, f"[retention]\n{body}\n")
    with pytest.raises(ConfigErrors) as err:
        load_site_dir(site)
    [e] = err.value.errors
    assert e.file.endswith("site.toml") and e.key == key and words in str(e)


def test_an_edge_reading_the_same_site_file_accepts_the_table(tmp_path: Path) -> None:
    from doorkeep.config import load_device

    site = site_with(tmp_path, "[retention]\nevents_days = 90\n")
    dev, s = load_device(site / "devices" / "pi-lobby.toml")
    assert s.id == "demo"


# -------------------------------------------------------------------- runs


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data", keys=KEYS)
    yield s
    s.close()


def add_event(store: Store, eid: str, age_days: float, *, snapshot: bool = True, received_age: float | None = None,
              person: str = "alice") -> None:
    at = NOW - age_days * DAY_S
    store.ingest_event(EventMsg(id=eid, seq=int(at) % 100000, ts=iso_ms(at), device="pi-lobby", door="lobby_in",
                                type="access", decision="granted", reason="granted", person=person,
                                snapshot=eid if snapshot else None),
                       NOW - (age_days if received_age is None else received_age) * DAY_S)
    if snapshot:
        assert store.insert_snapshot(eid, "pi-lobby", "lobby_in", seal(JPEG, KEYS.recipient,
                                                                       SnapshotRef("demo", "pi-lobby", eid)),
                                     NOW - (age_days if received_age is None else received_age) * DAY_S,
                                     site="demo")


def add_visitor(store: Store, vid: str, *, status: str, ended_days_ago: float) -> None:
    end = NOW - ended_days_ago * DAY_S
    store.upsert("visitors", {"id": vid, "name": f"Visitor {vid}", "host": "alice", "valid_from": end - 3600,
                              "valid_until": end, "allowed_areas": "[]", "escort_required": 1, "status": status,
                              "checked_out_at": end if status == "checked_out" else None}, "id")
    store.upsert("presence", {"person": vid, "area": "lobby", "since": end - 60}, "person")


def ids(store: Store, table: str) -> set[str]:
    with store.connection_for_tests() as db:
        return {r[0] for r in db.conn.execute(f"SELECT id FROM {table}")}


def test_each_class_goes_after_its_own_period(store: Store) -> None:
    add_event(store, "old", 200)                      # past events_days: event and snapshot go
    add_event(store, "mid", 60)                       # past snapshots_days only: the event stays, bare
    add_event(store, "new", 5)                        # kept whole
    add_event(store, "skewed", 400, received_age=1)   # device clock years behind: received yesterday, kept
    add_visitor(store, "v-gone", status="checked_out", ended_days_ago=40)
    add_visitor(store, "v-noshow", status="registered", ended_days_ago=31)
    add_visitor(store, "v-recent", status="checked_out", ended_days_ago=10)
    add_visitor(store, "v-inside", status="checked_in", ended_days_ago=90)  # never checked out: kept
    old_alarm, _ = store.raise_alarm("forced_open", key="a-old", at=NOW - 400 * DAY_S)
    store.resolve(old_alarm, "desk1", "checked", at=NOW - 370 * DAY_S)
    new_alarm, _ = store.raise_alarm("forced_open", key="a-new", at=NOW - 20 * DAY_S)
    store.resolve(new_alarm, "desk1", "checked", at=NOW - 10 * DAY_S)
    open_alarm, _ = store.raise_alarm("tamper", key="a-open", at=NOW - 500 * DAY_S)

    report = run_retention(store, RetentionSettings(), NOW, None)

    assert ids(store, "events") == {"mid", "new", "skewed"}
    assert ids(store, "snapshots") == {"new", "skewed"}
    assert store.event("mid")["snapshot_path"] is None and store.snapshot_bytes("mid") is None
    assert store.snapshot_bytes("new") == JPEG
    assert ids(store, "visitors") == {"v-recent", "v-inside"}
    assert {r["person"] for r in store.rows("presence")} == {"v-recent", "v-inside"}
    assert ids(store, "alarms") == {new_alarm, open_alarm}
    assert report.deleted == {"events": 1, "snapshots": 2, "visitors": 2, "presence": 2, "alarms": 1, "audit": 0}
    assert sorted(report.visitor_ids) == ["v-gone", "v-noshow"]
    assert not list((store.dir / "snapshots").glob("old*")) and not list((store.dir / "snapshots").glob("mid*"))


def test_what_an_open_alarm_points_at_is_kept_until_it_is_resolved(store: Store) -> None:
    add_event(store, "forced", 300)
    alarm, _ = store.raise_alarm("forced_open", key="forced", at=NOW - 300 * DAY_S, source_event="forced", once=True)
    report = run_retention(store, RetentionSettings(), NOW, None)
    assert ids(store, "events") == {"forced"} and store.snapshot_bytes("forced") == JPEG
    assert report.kept_for_alarms == 1 and report.deleted["events"] == 0
    store.resolve(alarm, "desk1", "door repaired", at=NOW)
    run_retention(store, RetentionSettings(), NOW, None)
    assert ids(store, "events") == set() and ids(store, "snapshots") == set()


def test_a_dry_run_counts_and_deletes_nothing(store: Store) -> None:
    add_event(store, "old", 200)
    add_event(store, "mid", 60)
    add_visitor(store, "v-gone", status="checked_out", ended_days_ago=40)
    audit = AuditLog(store, FakeClock(NOW))
    report = run_retention(store, RetentionSettings(), NOW, audit, dry_run=True)
    assert report.deleted["events"] == 1 and report.deleted["snapshots"] == 2 and report.deleted["visitors"] == 1
    assert ids(store, "events") == {"old", "mid"} and ids(store, "snapshots") == {"old", "mid"}
    assert ids(store, "visitors") == {"v-gone"} and audit.records() == []


def test_deletes_in_batches_and_records_one_audit_record(store: Store) -> None:
    for i in range(12):
        add_event(store, f"old{i:02d}", 200 + i)
    clock = FakeClock(NOW - 800 * DAY_S)
    audit = AuditLog(store, clock)
    audit.record("desk1", "lockdown.set", "site")  # 800 days ago: past audit_days
    clock.set_wall(NOW)
    report = run_retention(store, RetentionSettings(), NOW, audit, batch=5, actor="ops")
    assert report.deleted["events"] == 12 and report.deleted["snapshots"] == 12 and report.deleted["audit"] == 1
    [rec] = audit.records()
    assert (rec["seq"], rec["actor"], rec["action"]) == (2, "ops", "retention.run")
    assert rec["details"]["deleted"]["events"] == 12
    assert rec["details"]["cutoffs"]["events"] == iso_ms(NOW - 180 * DAY_S)
    assert audit.verify().ok


def test_the_job_runs_at_start_and_stops_at_once(store: Store) -> None:
    add_visitor(store, "v-gone", status="checked_out", ended_days_ago=40)
    removed: list[list[str]] = []
    job = RetentionJob(store, RetentionSettings(), FakeClock(NOW), AuditLog(store, FakeClock(NOW)),
                       on_visitors_removed=removed.append)
    job.start()
    wait_until(lambda: job.runs == 1, timeout=5)
    assert removed == [["v-gone"]]
    job.stop(timeout=5)
    assert job._thread is not None and not job._thread.is_alive()
    assert job.runs == 1  # the next run is a day away


def test_cli_retention_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    init_data_keys(site / "keys")
    data = tmp_path / "data"
    store = Store(data)
    store.upsert("visitors", {"id": "v-old", "name": "Old Visit", "host": "alice", "valid_from": 1.0,
                              "valid_until": 2.0, "allowed_areas": "[]", "escort_required": 1,
                              "status": "checked_out", "checked_out_at": 2.0}, "id")
    store.close()
    assert main(["retention", "run", "--site", str(site), "--data", str(data), "--dry-run"]) == 0
    assert "would delete 1 visitors" in capsys.readouterr().out
    assert main(["retention", "run", "--site", str(site), "--data", str(data)]) == 0
    assert "deleted 1 visitors" in capsys.readouterr().out
    store = Store(data)
    assert store.rows("visitors") == []
    with store.connection_for_tests() as db:
        rec = json.loads(db.conn.execute("SELECT details FROM audit_log WHERE action = 'retention.run'")
                         .fetchone()[0])
    assert rec["deleted"]["visitors"] == 1
    store.close()
    assert main(["retention", "run", "--site", str(tmp_path / "nosite"), "--data", str(data)]) == 2
