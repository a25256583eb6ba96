"""The hash-chained audit log: records chain, tampering is found and named, the table is append-only."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.cli import main
from doorkeep.clock import FakeClock
from doorkeep.config import load_site_dir
from doorkeep.credentials import generate_key_file
from doorkeep.model import CredentialState
from server.audit import GENESIS, HEAD_FILE, AuditError, AuditLog, record_site_changes, subject_ref
from server.directory import Directory, Visitor
from server.store import Store

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
KEY = bytes(range(32))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data")
    yield s
    s.close()


def fill(audit: AuditLog, clock: FakeClock, n: int = 5) -> None:
    for i in range(n):
        audit.record("desk1", "door.unlock", f"door{i}", {"n": i, "why": "delivery"})
        clock.advance(1)


def raw(store: Store) -> sqlite3.Connection:
    """A second, plain connection to the same file: what someone with the disk in hand can do."""
    return sqlite3.connect(store.dir / "doorkeep.db", isolation_level=None)


# ------------------------------------------------------------------ chain


def test_records_chain_with_increasing_seq_and_documented_hash(store: Store, clock: FakeClock) -> None:
    audit = AuditLog(store, clock)
    assert audit.record("desk1", "lockdown.set", "site") == 1
    clock.advance(0.25)
    assert audit.record("system", "retention.run", None, {"deleted": {"events": 3}}) == 2
    rows = list(reversed(audit.records()))
    assert [r["seq"] for r in rows] == [1, 2]
    assert rows[0]["prev_hash"] == GENESIS and rows[1]["prev_hash"] == rows[0]["hash"]
    assert rows[0]["ts"] == "2025-11-28T08:00:00.000Z" and rows[1]["ts"] == "2025-11-28T08:00:00.250Z"
    # Recomputed from the documented format alone (docs/security.md), without server.audit.
    with store.connection_for_tests() as db:
        r = db.conn.execute("SELECT * FROM audit_log WHERE seq = 2").fetchone()
    body = {"seq": r[0], "ts": r[1], "actor": r[2], "action": r[3], "target": r[4], "details": r[5],
            "prev_hash": r[6]}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert hashlib.sha256(text.encode()).hexdigest() == r[7]
    assert r[5] == '{"deleted":{"events":3}}'
    assert audit.verify().ok and audit.verify().count == 2


def test_bad_action_names_and_non_json_details_are_refused(store: Store) -> None:
    audit = AuditLog(store)
    for bad in ("unlock", "Door.Unlock", "door.", "door unlock"):
        with pytest.raises(AuditError):
            audit.record("desk1", bad)
    with pytest.raises(AuditError):
        audit.record("desk1", "door.unlock", "x", {"when": object()})
    with pytest.raises(AuditError):
        audit.record("", "door.unlock")
    assert audit.records() == []


def test_concurrent_writers_get_distinct_consecutive_seqs(tmp_path: Path) -> None:
    a, b = Store(tmp_path), Store(tmp_path)  # two connections, as the server and a CLI command have
    logs = [AuditLog(a), AuditLog(b)]
    seqs: list[int] = []

    def write(log: AuditLog) -> None:
        for _ in range(25):
            seqs.append(log.record("system", "site.people_changed"))

    threads = [threading.Thread(target=write, args=(lg,)) for lg in logs * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(1, 101))
    assert logs[0].verify().ok and logs[0].verify().count == 100
    a.close()
    b.close()


# ---------------------------------------------------------- append-only


def test_the_table_refuses_updates_and_deletes(store: Store, clock: FakeClock) -> None:
    fill(AuditLog(store, clock), clock, 3)
    db = raw(store)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit_log WHERE seq = 3")
    with pytest.raises(sqlite3.IntegrityError, match="anchor"):
        db.execute("INSERT INTO audit_anchor (id, seq, hash, removed, moved_at) VALUES (1, 3, 'forged', 3, 'x')")
    db.close()
    assert AuditLog(store).verify().count == 3


# ---------------------------------------------------------------- tamper


def test_a_changed_field_is_named(store: Store, clock: FakeClock) -> None:
    audit = AuditLog(store, clock)
    fill(audit, clock)
    db = raw(store)
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET target = 'vault' WHERE seq = 3")
    db.close()
    result = audit.verify()
    assert (result.ok, result.first_bad, result.problem, result.count) == (False, 3, "changed", 2)
    assert audit.record("system", "door.unlock") == 6  # an early answer let go of the store


def test_a_changed_and_rehashed_record_is_found_by_the_next_link(store: Store, clock: FakeClock) -> None:
    from server.audit import record_hash

    audit = AuditLog(store, clock)
    fill(audit, clock)
    db = raw(store)
    db.execute("DROP TRIGGER audit_log_no_update")
    seq, ts, actor, action, target, details, prev, _ = db.execute("SELECT * FROM audit_log WHERE seq = 2").fetchone()
    db.execute("UPDATE audit_log SET actor = 'nobody', hash = ? WHERE seq = 2",
               [record_hash(seq, ts, "nobody", action, target, details, prev)])
    db.close()
    result = audit.verify()
    assert (result.ok, result.first_bad, result.problem) == (False, 2, "changed")


def test_a_removed_middle_record_is_named(store: Store, clock: FakeClock) -> None:
    audit = AuditLog(store, clock)
    fill(audit, clock)
    db = raw(store)
    db.execute("DROP TRIGGER audit_log_no_delete")
    db.execute("DELETE FROM audit_log WHERE seq = 3")
    db.close()
    result = audit.verify()
    assert (result.ok, result.first_bad, result.problem) == (False, 3, "removed")
    assert "jumps from 2 to 4" in result.message


def test_two_swapped_records_are_reported_as_reordered(store: Store, clock: FakeClock) -> None:
    audit = AuditLog(store, clock)
    fill(audit, clock)
    db = raw(store)
    db.execute("DROP TRIGGER audit_log_no_update")
    cols = "ts, actor, action, target, details, prev_hash, hash"
    two = db.execute(f"SELECT {cols} FROM audit_log WHERE seq = 2").fetchone()
    four = db.execute(f"SELECT {cols} FROM audit_log WHERE seq = 4").fetchone()
    sets = ", ".join(f"{c.strip()} = ?" for c in cols.split(","))
    db.execute(f"UPDATE audit_log SET {sets} WHERE seq = 2", list(four))
    db.execute(f"UPDATE audit_log SET {sets} WHERE seq = 4", list(two))
    db.close()
    result = audit.verify()
    assert (result.ok, result.first_bad, result.problem) == (False, 2, "reordered")
    assert "written as record 4" in result.message


def test_a_cut_off_tail_is_found_only_through_the_head_file(store: Store, clock: FakeClock) -> None:
    """The chain alone cannot see the newest records removed; the head file beside the database can."""
    audit = AuditLog(store, clock)
    fill(audit, clock)
    assert json.loads((store.dir / HEAD_FILE).read_text())["seq"] == 5
    db = raw(store)
    db.execute("DROP TRIGGER audit_log_no_delete")
    db.execute("DELETE FROM audit_log WHERE seq = 5")
    db.close()
    result = audit.verify()
    assert (result.ok, result.first_bad, result.problem) == (False, 5, "truncated")
    # Without the head file the shortened chain is consistent: verify passes and says what it cannot see.
    (store.dir / HEAD_FILE).unlink()
    result = audit.verify()
    assert result.ok and result.count == 4 and "cannot be detected" in result.notes[0]


def test_retention_prunes_a_prefix_behind_an_anchor_and_the_rest_still_verifies(store: Store,
                                                                                  clock: FakeClock) -> None:
    audit = AuditLog(store, clock)
    fill(audit, clock, 6)  # ts +0 .. +5 s
    from doorkeep.clock import iso_ms

    assert audit.count_before(iso_ms(clock.wall() - 3)) == 3
    assert audit.prune_before(iso_ms(clock.wall() - 3)) == 3
    assert [r["seq"] for r in audit.records()] == [6, 5, 4]
    assert audit.verify().ok and audit.verify().count == 3
    assert audit.record("system", "retention.run") == 7  # the chain continues across the anchor
    assert audit.verify().ok
    db = raw(store)  # the anchor only moves forward
    with pytest.raises(sqlite3.IntegrityError, match="anchor"):
        db.execute("UPDATE audit_anchor SET seq = 1")
    db.execute("DROP TRIGGER audit_log_no_delete")
    db.execute("DELETE FROM audit_log WHERE seq = 4")
    db.close()
    assert (audit.verify().first_bad, audit.verify().problem) == (4, "removed")


def test_a_forged_anchor_is_reported(store: Store, clock: FakeClock) -> None:
    audit = AuditLog(store, clock)
    fill(audit, clock, 4)
    from doorkeep.clock import iso_ms

    audit.prune_before(iso_ms(clock.wall() - 2))
    db = raw(store)
    db.execute("DROP TRIGGER audit_anchor_forward")
    db.execute("UPDATE audit_anchor SET hash = ? WHERE id = 1", ["f" * 64])
    db.close()
    result = audit.verify()
    assert (result.ok, result.first_bad, result.problem) == (False, 3, "bad_anchor")


# ------------------------------------------------------------ wiring


def test_directory_operations_are_audited_without_names(tmp_path: Path, clock: FakeClock) -> None:
    bundle = load_site_dir(DEMO)
    store = Store(tmp_path / "data")
    audit = AuditLog(store, clock)
    d = Directory(bundle, KEY, store, clock, audit=audit)
    d.register_visitor(Visitor("v-zoe", "Zoe Zimmer", "alice", clock.wall(), clock.wall() + 3600, ("lobby",)),
                       actor="desk1")
    d.check_in("v-zoe", actor="desk1")
    d.check_out("v-zoe")
    d.lockdown("floor7", True, actor="guard")
    d.set_card_state(d.card("em4100", "0F00B0B0B0"), CredentialState.LOST, actor="desk1")
    first, *rows = list(reversed(audit.records()))
    # The first start imported people.toml into the store: one record, counts only (server/people.py).
    assert (first["actor"], first["action"], first["details"]["first_start"]) == ("system", "people.file_import", True)
    assert first["details"]["people"] == len(bundle.people)
    assert [(r["actor"], r["action"]) for r in rows] == [
        ("desk1", "visitor.register"), ("desk1", "visitor.check_in"), ("system", "visitor.check_out"),
        ("guard", "lockdown.set"), ("desk1", "card.lost")]
    assert rows[0]["target"] == subject_ref(KEY, "v-zoe") and rows[3]["target"] == "floor7"
    assert rows[4]["target"] == subject_ref(KEY, "bob") and rows[4]["details"]["card"] == d.card("em4100", "0F00B0B0B0")[:12]
    audit_text = json.dumps(audit.records())
    for secret in ("Zoe Zimmer", "v-zoe", "bob", "Bob Baker"):
        assert secret not in audit_text
    assert audit.verify().ok
    store.close()


def test_bootstrap_records_site_file_changes_as_counts(tmp_path: Path, clock: FakeClock) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    store = Store(tmp_path / "data")
    audit = AuditLog(store, clock)
    first = record_site_changes(audit, load_site_dir(site), KEY)
    assert len(first) == 2
    assert record_site_changes(audit, load_site_dir(site), KEY) == []  # unchanged files: nothing recorded
    people = (site / "people.toml").read_text()
    people = people.replace('clearance = 1\n', 'clearance = 2\n', 1)  # bob
    people = people.replace('[people.eli]', '[people.fay]\nname = "Fay"\n\n[people.eli]')
    (site / "people.toml").write_text(people)
    seqs = record_site_changes(audit, load_site_dir(site), KEY)
    assert len(seqs) == 1
    rec = audit.records(limit=1)[0]
    assert rec["action"] == "site.people_changed"
    assert {k: rec["details"][k] for k in ("added", "removed", "changed")} == {"added": 1, "removed": 0,
                                                                              "changed": 1}
    assert "bob" not in json.dumps(audit.records()) and "Fay" not in json.dumps(audit.records())
    store.close()


# ------------------------------------------------------------------ CLI


def test_cli_verify_exit_codes(tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    store = Store(data)
    fill(AuditLog(store, clock), clock, 3)
    store.close()
    assert main(["audit", "verify", "--site", str(DEMO), "--data", str(data)]) == 0
    assert "ok: 3 records" in capsys.readouterr().out
    db = sqlite3.connect(data / "doorkeep.db", isolation_level=None)
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET actor = 'x' WHERE seq = 2")
    db.close()
    assert main(["audit", "verify", "--site", str(DEMO), "--data", str(data)]) == 1
    out = capsys.readouterr().out
    assert "record 2: changed" in out
    assert main(["audit", "verify", "--site", str(DEMO), "--data", str(tmp_path / "none")]) == 2
    assert "no store" in capsys.readouterr().err
    assert main(["audit", "verify", "--site", str(tmp_path), "--data", str(data)]) == 2


def test_cli_show_prints_the_table_with_known_people_resolved(tmp_path: Path, clock: FakeClock,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    shutil.copytree(DEMO, site)
    generate_key_file(site / "keys" / "credential.key")
    key = bytes.fromhex((site / "keys" / "credential.key").read_text().strip())
    data = tmp_path / "data"
    store = Store(data)
    AuditLog(store, clock).record("desk1", "card.lost", subject_ref(key, "alice"), {"last4": "B2C3"})
    store.close()
    assert main(["audit", "show", "--site", str(site), "--data", str(data), "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "card.lost" in out and "(alice)" in out and "last4=B2C3" in out
