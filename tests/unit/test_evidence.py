"""Signed evidence bundles (doorkeep/evidence.py, doorkeep/evidence_cli.py, server/evidence.py): a bundle built
from an incident holds the events, decrypted snapshots, alarms and audit records with a signed manifest, and
``doorkeep evidence verify`` finds every tampering: one byte of a file changed, a file removed, a file added,
the signature swapped or the manifest edited, a bundle signed by another key than the pinned one.

Real parts: a real store with sealed snapshots, the real audit log, real Ed25519 keys, real zip files, the
``doorkeep`` command's own entry point.
"""

from __future__ import annotations

import base64
import json
import shutil
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.cli import main
from doorkeep.clock import FakeClock
from doorkeep.credentials import generate_key_file
from doorkeep.envelope import init_data_keys
from doorkeep.evidence import MANIFEST, SIGNATURE, fingerprint, sha256_hex, verify
from doorkeep.policy import generate_signing_key, load_private_key
from server.audit import AuditLog
from server.incidents import Incidents
from server.retention import DAY_S
from server.store import Store
from tests.unit.test_incidents import SITE
from tests.unit.test_retention import JPEG, KEYS, NOW, add_event

KEY = Ed25519PrivateKey.generate()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "data", keys=KEYS)
    yield s
    s.close()


def pub_file(tmp_path: Path, key: Ed25519PrivateKey, name: str = "site.pub") -> Path:
    path = tmp_path / name
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def make_bundle(store: Store, tmp_path: Path, key: Ed25519PrivateKey = KEY) -> Path:
    """An incident holding an alarm (its event and snapshot), a second event and a door window, exported."""
    add_event(store, "forced", 2)
    add_event(store, "badge", 2, person="bob")
    alarm, _ = store.raise_alarm("forced_open", key="forced", at=NOW - 2 * DAY_S, device="pi-lobby",
                                 door="lobby_in", source_event="forced", once=True)
    clock = FakeClock(wall=NOW)
    svc = Incidents(store, clock, AuditLog(store, clock), site=lambda: SITE, signing_key=key)
    inc = svc.open("Forced lobby door", "high", "dex", alarms=[alarm], events=["badge"], note="camera check")
    name, data = svc.export(inc.id, "dex")
    assert name == f"incident-{inc.id}-evidence.zip"
    path = tmp_path / name
    path.write_bytes(data)
    return path


def rewrite(src: Path, dst: Path, change: dict[str, bytes | None], add: dict[str, bytes] | None = None) -> Path:
    """A copy of the zip with members replaced (bytes) or removed (None), and members added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in change:
                if change[info.filename] is not None:
                    zout.writestr(info, change[info.filename])  # type: ignore[arg-type]
                continue
            zout.writestr(info, zin.read(info))
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def run_verify(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["evidence", "verify", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_bundle_holds_events_decrypted_snapshots_alarms_audit_and_a_signed_manifest(store: Store,
                                                                                    tmp_path: Path) -> None:
    path = make_bundle(store, tmp_path)
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        events = json.loads(z.read("events.json"))
        manifest = json.loads(z.read(MANIFEST))
        assert z.read("snapshots/forced.jpg") == JPEG and z.read("snapshots/badge.jpg") == JPEG
        audit = json.loads(z.read("audit.json"))
        alarms = json.loads(z.read("alarms.json"))
        incident = json.loads(z.read("incident.json"))
    assert names == {"README.txt", "incident.json", "events.json", "alarms.json", "audit.json",
                     "snapshots/forced.jpg", "snapshots/badge.jpg", MANIFEST, SIGNATURE}
    assert sorted(e["id"] for e in events) == ["badge", "forced"]
    badge = next(e for e in events if e["id"] == "badge")
    assert badge["person_name"] == SITE.people["bob"].name and badge["snapshot_file"] == "snapshots/badge.jpg"
    assert "credential_hash" not in badge
    assert [a["type"] for a in alarms] == ["forced_open"]
    assert [(r["action"], r["target"]) for r in audit] == [("incident.open", "incident:1")]
    assert len(audit[0]["hash"]) == 64 and audit[0]["hash"] == AuditLog(store).records()[-1]["hash"]
    assert incident["timeline"][1]["text"] == "camera check"
    assert {f["path"] for f in manifest["files"]} == names - {MANIFEST, SIGNATURE}
    assert manifest["signing_key"]["fingerprint"] == fingerprint(KEY.public_key())
    exported = [r for r in AuditLog(store).records() if r["action"] == "incident.export"]
    with zipfile.ZipFile(path) as z:
        assert exported[0]["details"]["manifest_sha256"] == sha256_hex(z.read(MANIFEST))


def test_verify_passes_an_intact_bundle_and_prints_what_it_checked(store: Store, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = make_bundle(store, tmp_path)
    code, out, err = run_verify(capsys, str(path), "--key", str(pub_file(tmp_path, KEY)))
    assert code == 0, err
    assert fingerprint(KEY.public_key()) in out and "pinned with --key" in out
    assert "ok  snapshots/forced.jpg" in out and "ok  events.json" in out
    assert "ok: the bundle is intact and signed by the pinned key" in out
    code, out, _ = run_verify(capsys, str(path))  # not pinned: still checked, and said so
    assert code == 0 and "NOT pinned" in out and fingerprint(KEY.public_key()) in out


@pytest.mark.parametrize("tamper, words", [
    ("byte", "changed file: events.json"),
    ("snapshot_byte", "changed file: snapshots/forced.jpg"),
    ("remove", "missing file: snapshots/badge.jpg"),
    ("add", "extra file: notes.txt"),
    ("swap_signature", "bad signature"),
    ("edit_manifest", "bad signature"),
    ("no_signature", f"missing file: {SIGNATURE}"),
    ("no_manifest", f"missing file: {MANIFEST}"),
])
def test_verify_names_the_first_tampering(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          tamper: str, words: str) -> None:
    path = make_bundle(store, tmp_path)
    with zipfile.ZipFile(path) as z:
        events, snap, manifest = z.read("events.json"), z.read("snapshots/forced.jpg"), z.read(MANIFEST)
    flipped = bytearray(events)
    flipped[len(flipped) // 2] ^= 0x01
    snap_flipped = bytearray(snap)
    snap_flipped[-3] ^= 0x80
    other_sig = base64.b64encode(Ed25519PrivateKey.generate().sign(manifest)) + b"\n"
    changes = {
        "byte": ({"events.json": bytes(flipped)}, None),
        "snapshot_byte": ({"snapshots/forced.jpg": bytes(snap_flipped)}, None),
        "remove": ({"snapshots/badge.jpg": None}, None),
        "add": ({}, {"notes.txt": b"planted"}),
        "swap_signature": ({SIGNATURE: other_sig}, None),
        "edit_manifest": ({MANIFEST: manifest.replace(b'"dex"', b'"eve"')}, None),
        "no_signature": ({SIGNATURE: None}, None),
        "no_manifest": ({MANIFEST: None}, None),
    }
    change, add = changes[tamper]
    bad = rewrite(path, tmp_path / "bad.zip", change, add)
    code, out, err = run_verify(capsys, str(bad), "--key", str(pub_file(tmp_path, KEY)))
    assert code == 1, out
    assert f"FAILED: {words}" in err, err
    assert "ok: the bundle is intact" not in out


def test_a_bundle_signed_by_another_key_fails_against_the_pinned_site_key(store: Store, tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Someone rebuilds the bundle with a key of their own: self-consistent, so only pinning catches it."""
    forger = Ed25519PrivateKey.generate()
    path = make_bundle(store, tmp_path, key=forger)
    code, out, _ = run_verify(capsys, str(path))
    assert code == 0 and fingerprint(forger.public_key()) in out and "NOT pinned" in out
    code, _, err = run_verify(capsys, str(path), "--key", str(pub_file(tmp_path, KEY)))
    assert code == 1 and "signed with another key" in err and fingerprint(forger.public_key()) in err


def test_unreadable_input_is_exit_2_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    code, _, err = run_verify(capsys, str(junk))
    assert code == 2 and "not a zip file" in err
    code, _, err = run_verify(capsys, str(tmp_path / "absent.zip"))
    assert code == 2 and "cannot read" in err
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("hello")
    code, _, err = run_verify(capsys, str(junk), "--key", str(bad_key))
    assert code == 2 and "not an Ed25519 public key" in err


def test_the_pure_check_rejects_hostile_manifests() -> None:
    sig = b"AAAA"
    assert verify(b"{", sig, {}).problem == f"{MANIFEST} is not JSON: changed or not an evidence bundle"
    assert "not a doorkeep-evidence/1" in str(verify(b'{"format": "x"}', sig, {}).problem)
    assert "names no usable signing key" in str(verify(b'{"format": "doorkeep-evidence/1"}', sig, {}).problem)


def test_cli_export_writes_a_bundle_the_cli_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    shutil.copytree(Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo", site)
    init_data_keys(site / "keys")
    generate_signing_key(site / "keys" / "policy-signing.key")
    generate_key_file(site / "keys" / "credential.key")
    data = tmp_path / "data"
    store = Store(data)
    try:
        svc = Incidents(store, FakeClock(wall=NOW), AuditLog(store), site=lambda: SITE)
        inc = svc.open("From the shell", "low", "dex")
    finally:
        store.close()
    out = tmp_path / "out.zip"
    assert main(["evidence", "export", str(inc.id), "--site", str(site), "--data", str(data), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out and out.stat().st_mode & 0o077 == 0
    code, stdout, err = run_verify(capsys, str(out), "--key", str(site / "keys" / "policy-signing.pub"))
    assert code == 0, err
    assert fingerprint(load_private_key(site / "keys" / "policy-signing.key").public_key()) in stdout
    assert main(["evidence", "export", "99", "--site", str(site), "--data", str(data), "--out", str(out)]) == 1
    assert "no incident 99" in capsys.readouterr().err
