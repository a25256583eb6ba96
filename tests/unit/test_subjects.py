"""Data-subject export and erasure: everything about a person out as one zip, or gone for good."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from doorkeep.cli import main
from doorkeep.clock import FakeClock
from doorkeep.config import SiteBundle, load_site_dir
from doorkeep.contract import EventMsg
from doorkeep.credentials import card_hash, generate_key_file
from doorkeep.envelope import SnapshotRef, init_data_keys, load_snapshot_keys, seal
from doorkeep.model import CredentialState
from server import subjects
from server.audit import AuditLog, subject_ref
from server.directory import Directory, Visitor
from server.store import Store

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "doorkeep" / "sites" / "demo"
JPEG = b"\xff\xd8\xff\xe0" + b"alice-face" * 50 + b"\xff\xd9"
NOW = 1_764_316_800.0


class World:
    """A demo site directory with real key files, and a store holding alice's traces through the real APIs."""

    def __init__(self, tmp_path: Path) -> None:
        self.site = tmp_path / "site"
        shutil.copytree(DEMO, self.site)
        generate_key_file(self.site / "keys" / "credential.key")
        init_data_keys(self.site / "keys")
        self.bundle: SiteBundle = load_site_dir(self.site)
        self.key = bytes.fromhex((self.site / "keys" / "credential.key").read_text().strip())
        self.keys = load_snapshot_keys(self.site / "keys", source="test")
        self.data = tmp_path / "data"
        self.clock = FakeClock(NOW)
        self.store = Store(self.data, keys=self.keys)
        self.audit = AuditLog(self.store, self.clock)
        self.alice_card = card_hash(self.key, "em4100", "0F00A1B2C3")
        d = Directory(self.bundle, self.key, self.store, self.clock, audit=self.audit)
        d.set_card_state(self.alice_card, CredentialState.LOST, actor="desk1")
        d.register_visitor(Visitor("v-zoe", "Zoe Zimmer", "alice", NOW, NOW + 3600, ("lobby",)))
        self.event("e-alice", "alice", self.alice_card, "B2C3", snapshot=True)
        self.event("e-lost", None, self.alice_card, "B2C3", reason="credential_inactive")  # her lost card
        self.event("e-bob", "bob", "cd" * 32, "B0B0", detail={"escort": "alice", "note": "Alice Archer"})
        self.event("e-zoe", "v-zoe", "ef" * 32, "0001", snapshot=True)
        self.store.upsert("presence", {"person": "alice", "area": "floor7", "since": NOW}, "person")
        self.store.upsert("presence", {"person": "v-zoe", "area": "lobby", "since": NOW}, "person")

    def event(self, eid: str, person: str | None, chash: str, last4: str, *, snapshot: bool = False,
              reason: str = "granted", detail: dict | None = None) -> None:
        self.store.ingest_event(EventMsg(id=eid, seq=len(eid), ts="2025-11-28T08:00:00.000Z", device="pi-lobby",
                                         door="lobby_in", type="access", decision="granted", reason=reason,
                                         person=person, credential_hash=chash, credential_last4=last4,
                                         snapshot=eid if snapshot else None, detail=detail or {}), NOW)
        if snapshot:
            sealed = seal(JPEG, self.keys.recipient, SnapshotRef("demo", "pi-lobby", eid))
            assert self.store.insert_snapshot(eid, "pi-lobby", "lobby_in", sealed, NOW, site="demo")

    def erase(self, person: str) -> dict:
        return subjects.erase(self.bundle, self.store, self.key, person, self.audit, now=NOW, actor="dpo")

    def db_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in self.data.glob("doorkeep.db*"))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.store.close()


# ------------------------------------------------------------------ export


def test_export_holds_everything_about_the_person_and_no_card_secret(world: World, tmp_path: Path) -> None:
    out = tmp_path / "alice.zip"
    counts = subjects.export(world.bundle, world.store, world.key, "alice", out, world.audit, now=NOW, actor="dpo")
    assert counts["events"] == 2 and counts["snapshots"] == 1 and counts["credentials"] == 2
    assert out.stat().st_mode & 0o777 == 0o600
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
        assert {"manifest.json", "profile.json", "credentials.json", "events.json", "visits.json",
                "presence.json", "snapshots/e-alice.jpg"} <= names
        manifest = json.loads(z.read("manifest.json"))
        profile = json.loads(z.read("profile.json"))
        creds = json.loads(z.read("credentials.json"))
        events = json.loads(z.read("events.json"))
        assert z.read("snapshots/e-alice.jpg") == JPEG
        assert json.loads(z.read("presence.json"))[0]["area"] == "floor7"
        everything = b"".join(z.read(n) for n in names)
    assert manifest["site"] == "demo" and manifest["person"] == "alice" and manifest["schema"].endswith("/1")
    assert profile["name"] == "Alice Archer" and profile["clearance"] == 3 and profile["access_levels"] == ["staff", "lab"]
    assert sorted((c["format"], c["last4"], c["state"]) for c in creds) == [("ascii", "1111", "active"),
                                                                             ("em4100", "B2C3", "lost")]
    assert {e["id"] for e in events} == {"e-alice", "e-lost"}
    for secret in (b"0F00A1B2C3", b"40011111", world.alice_card.encode()):
        assert secret not in everything
    [rec] = [r for r in world.audit.records() if r["action"] == "subject.export"]
    assert rec["target"] == subject_ref(world.key, "alice") and rec["details"]["events"] == 2


def test_export_of_a_visitor_includes_the_visit(world: World, tmp_path: Path) -> None:
    out = tmp_path / "zoe.zip"
    subjects.export(world.bundle, world.store, world.key, "v-zoe", out, world.audit, now=NOW)
    with zipfile.ZipFile(out) as z:
        visits = json.loads(z.read("visits.json"))
        assert json.loads(z.read("profile.json"))["name"] == "Zoe Zimmer"
        assert z.read("snapshots/e-zoe.jpg") == JPEG
    assert visits[0]["host"] == "alice" and "card_hash" not in visits[0]


def test_export_of_an_unknown_person_fails_and_never_overwrites(world: World, tmp_path: Path) -> None:
    with pytest.raises(subjects.SubjectError, match="nothing is held"):
        subjects.export(world.bundle, world.store, world.key, "nobody", tmp_path / "x.zip", world.audit, now=NOW)
    (tmp_path / "old.zip").write_bytes(b"keep")
    with pytest.raises(subjects.SubjectError, match="already exists"):
        subjects.export(world.bundle, world.store, world.key, "alice", tmp_path / "old.zip", world.audit, now=NOW)
    assert (tmp_path / "old.zip").read_bytes() == b"keep"


# ------------------------------------------------------------------- erase


def test_erase_removes_or_pseudonymises_everything(world: World) -> None:
    ref = subject_ref(world.key, "alice")
    out = world.erase("alice")
    assert out["ref"] == ref and out["configured"] is True
    c = out["counts"]
    assert (c["events"], c["snapshots"], c["mentions"], c["presence"], c["card_states"], c["hosted_visits"]) == \
        (2, 1, 1, 1, 1, 1)
    assert world.store.snapshot_bytes("e-alice") is None
    for eid in ("e-alice", "e-lost"):
        e = world.store.event(eid)
        assert e["person"] == ref and e["credential_hash"] is None and e["credential_last4"] is None
    assert json.loads(world.store.event("e-bob")["detail"]) == {"escort": ref, "note": "[erased]"}
    assert world.store.event("e-bob")["person"] == "bob"  # other people's data stays
    assert [r["host"] for r in world.store.rows("visitors")] == [ref]
    assert {r["person"] for r in world.store.rows("presence")} == {"v-zoe"}
    assert world.alice_card not in {r["hash"] for r in world.store.rows("credential_states")}  # eli's lost card stays
    assert world.store.person_row("alice") is None and world.store.card_rows("alice") == []
    assert world.store.snapshot_bytes("e-zoe") == JPEG


def test_erase_is_idempotent(world: World) -> None:
    world.erase("alice")
    with world.store.connection_for_tests() as db:
        before = [dict(r) for r in db.query("SELECT * FROM events ORDER BY id")]
    again = world.erase("alice")
    assert set(again["counts"].values()) == {0}
    with world.store.connection_for_tests() as db:
        assert [dict(r) for r in db.query("SELECT * FROM events ORDER BY id")] == before


def test_the_audit_log_holds_no_personal_data_after_erasure(world: World) -> None:
    world.erase("alice")
    world.erase("v-zoe")
    rec = world.audit.records(limit=1)[0]
    assert (rec["action"], rec["actor"], rec["target"]) == ("subject.erase", "dpo", subject_ref(world.key, "v-zoe"))
    assert set(rec["details"]) >= {"events", "snapshots", "visits"}
    db = sqlite3.connect(world.data / "doorkeep.db")
    audit_bytes = json.dumps(db.execute("SELECT * FROM audit_log").fetchall() +
                             db.execute("SELECT * FROM audit_anchor").fetchall()).encode()
    db.close()
    for secret in (b"alice", b"Alice Archer", b"v-zoe", b"Zoe Zimmer", b"B2C3"):
        assert secret not in audit_bytes
    assert world.audit.verify().ok
    # ... nor does the database file: secure_delete zeroed the old pages and the WAL was checkpointed.
    blob = world.db_bytes()
    for secret in (b"Alice Archer", b"Zoe Zimmer", b'"alice"'):
        assert secret not in blob


def test_a_visitor_is_erased_fully(world: World) -> None:
    out = world.erase("v-zoe")
    assert out["configured"] is False and out["counts"]["visits"] == 1 and out["counts"]["snapshots"] == 1
    assert world.store.rows("visitors") == [] and world.store.snapshot_bytes("e-zoe") is None
    assert world.store.event("e-zoe")["person"] == subject_ref(world.key, "v-zoe")


def test_an_erased_person_stays_erased_even_when_people_toml_still_lists_them(world: World,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    from doorkeep.config import load_site_file
    from server.people import PeopleService

    world.erase("alice")
    d = Directory(world.bundle, world.key, world.store, world.clock)  # a restart: people come from the store
    assert "alice" not in d.site.people and "bob" in d.site.people
    assert world.alice_card not in d.site.credentials  # her card opens nothing any more
    # An import of the site's people.toml, which still lists her, skips her and says so.
    people = PeopleService(world.store, world.key, world.clock, audit=world.audit, directory=d)
    wanted = people.load_file(world.site / "people.toml", load_site_file(world.site / "site.toml"))
    with caplog.at_level(logging.WARNING, logger="doorkeep.server.people"):
        changes = people.apply_file(wanted, actor="ada")
    assert changes.erased == ["alice"] and not changes  # nothing else differs: nothing written
    assert "alice" not in d.site.people and world.alice_card not in d.site.credentials
    assert "was erased" in caplog.text and "alice" not in caplog.text  # named by pseudonym only


# ---------------------------------------------------------------- consents


def check_in_with_consent(world: World, visitor: str = "v-zoe") -> None:
    """Check the visitor in as the desk does (server/visitors.py): notice shown, photo consent given."""
    from server.visitors import CheckIn, Notice, Visitors

    directory = Directory(world.bundle, world.key, world.store, world.clock, audit=world.audit)
    desk = Visitors(directory, world.store, world.clock, Notice("2025-11", ("We record who passes which door.",)))
    desk.check_in(visitor, CheckIn(notice_version="2025-11", consent=True, photo_consent=True), "desk1")


def test_export_of_a_visitor_lists_the_consent_given_at_check_in(world: World, tmp_path: Path) -> None:
    check_in_with_consent(world)
    out = tmp_path / "zoe.zip"
    counts = subjects.export(world.bundle, world.store, world.key, "v-zoe", out, world.audit, now=NOW)
    with zipfile.ZipFile(out) as z:
        consents = json.loads(z.read("consents.json"))
        manifest = json.loads(z.read("manifest.json"))
    assert consents == [{"notice_version": "2025-11", "photo_consent": True,
                         "consented_at": "2025-11-28T08:00:00.000Z"}]
    assert counts["consents"] == 1 and "consents.json" in manifest["files"]
    assert b"desk1" not in json.dumps(consents).encode()  # the operator is another person: not in the export


def test_attack_erased_visitor_is_still_named_by_the_consent_row(world: World) -> None:
    check_in_with_consent(world)
    with world.store.connection_for_tests() as db:
        assert db.execute("SELECT count(*) FROM visitor_consents").fetchone()[0] == 1
    out = world.erase("v-zoe")
    assert out["counts"]["consents"] == 1
    with world.store.connection_for_tests() as db:
        assert db.execute("SELECT count(*) FROM visitor_consents").fetchone()[0] == 0
    # What the law still needs stays provable, without the name: the audit record of the consent.
    [proof] = [r for r in world.audit.records() if r["action"] == "visitor.consent"]
    assert proof["target"] == subject_ref(world.key, "v-zoe") and proof["actor"] == "desk1"
    assert proof["details"] == {"notice_version": "2025-11", "photo_consent": True}
    assert world.audit.verify().ok

    def no_trace(blob: bytes) -> None:
        for secret in (b"v-zoe", b"Zoe Zimmer"):
            assert secret not in blob, f"{secret!r} still stored"

    no_trace(world.db_bytes())  # erase checkpointed the WAL; secure_delete zeroed the freed pages
    with world.store.connection_for_tests() as db:
        db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    no_trace(world.db_bytes())


# --------------------------------------------------------------------- CLI


def test_cli_export_and_erase(world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world.store.close()
    base = ["--site", str(world.site), "--data", str(world.data)]
    out = tmp_path / "bob.zip"
    assert main(["subject", "export", "bob", "--out", str(out), *base]) == 0
    assert out.exists() and "wrote" in capsys.readouterr().out
    assert main(["subject", "export", "nobody", "--out", str(tmp_path / "n.zip"), *base]) == 1
    assert "nothing is held" in capsys.readouterr().err
    assert main(["subject", "erase", "bob", *base]) == 2  # no --yes
    assert "--yes" in capsys.readouterr().err
    assert main(["subject", "erase", "bob", "--yes", *base]) == 0
    printed = capsys.readouterr().out
    assert "ps-" in printed and "remove them there" in printed
    world.store = Store(world.data, keys=world.keys)
    assert world.store.event("e-bob")["person"] == subject_ref(world.key, "bob")
    assert main(["audit", "verify", *base]) == 0
