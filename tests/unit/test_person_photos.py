"""Cardholder photos (server/photos.py, server/store_photos.py): checked and re-encoded by OpenCV, kept
encrypted at rest like snapshots, shown to the desk beside a badge's snapshot, covered by erasure, the subject
export, retention and key rotation, and every change audited under the person's pseudonym.

Real parts: the demo site with real key files and a real SQLite store (tests/unit/test_subjects.py ``World``),
real JPEG and PNG files made by OpenCV, and for the HTTP side a real ``Server`` behind FastAPI's TestClient.
"""

from __future__ import annotations

import io
import json
import secrets
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
import pytest
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient prefers httpx2; httpx works the same here
    from fastapi.testclient import TestClient

from doorkeep.config import RetentionSettings
from doorkeep.contract import EventMsg
from doorkeep.envelope import EnvelopeError
from server import subjects
from server.app import Server
from server.audit import subject_ref
from server.photos import MAX_SIDE, MAX_UPLOAD_BYTES, NoSuchPerson, PhotoError, PhotoService, prepare
from server.retention import run_retention
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    app,
    assert_json_error,
    bearer,
    client,
    clock,
    hasher,
    server,
    tokens,
)
from tests.unit.test_subjects import NOW, World

GPS_SECRET = b"GPS 52.5200N 13.4050E secret-home"


def face(width: int = 900, height: int = 1200, seed: int = 7) -> np.ndarray:
    """A photo-like image (smooth gradients, an oval 'face', some noise) so JPEG sizes are realistic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = (x * 200 // width).astype(np.uint8)
    img[..., 1] = (y * 180 // height).astype(np.uint8)
    img[..., 2] = 90
    cv2.ellipse(img, (width // 2, height // 2), (width // 4, height // 3), 0, 0, 360, (80, 140, 210), -1)
    cv2.circle(img, (width * 2 // 5, height * 2 // 5), max(4, width // 30), (30, 30, 30), -1)
    cv2.circle(img, (width * 3 // 5, height * 2 // 5), max(4, width // 30), (30, 30, 30), -1)
    noise = rng.integers(0, 12, img.shape, dtype=np.uint8)
    return cv2.add(img, noise)


def jpeg(width: int = 900, height: int = 1200, seed: int = 7) -> bytes:
    ok, buf = cv2.imencode(".jpg", face(width, height, seed), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def png(width: int = 300, height: int = 200) -> bytes:
    ok, buf = cv2.imencode(".png", face(width, height))
    assert ok
    return buf.tobytes()


def with_exif(data: bytes) -> bytes:
    """The JPEG with an APP1 Exif segment right after SOI, carrying a GPS-looking secret."""
    payload = b"Exif\0\0" + b"MM\0*\0\0\0\x08" + GPS_SECRET
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def with_thumbnail(data: bytes) -> bytes:
    """The JPEG with an Exif thumbnail (a whole small JPEG, with its own end marker) in APP1."""
    payload = b"Exif\0\0" + jpeg(64, 48)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


class PhotoWorld(World):
    """test_subjects' world (alice, bob, their events and snapshots) with the photo service on it."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.photos = PhotoService(self.store, self.key, self.clock, site_id="demo", audit=self.audit)

    def audit_actions(self) -> list[tuple[str, str | None, str]]:
        return [(r["action"], r["target"], r["actor"]) for r in reversed(self.audit.records())
                if r["action"].startswith("person.photo")]

    def photo_row(self, person: str) -> dict[str, Any]:
        with self.store.connection_for_tests() as db:
            return dict(next(iter(db.query("SELECT * FROM person_photos WHERE person = ?", [person]))))


@pytest.fixture
def pw(tmp_path: Path) -> Iterator[PhotoWorld]:
    w = PhotoWorld(tmp_path)
    yield w
    w.store.close()


# ------------------------------------------------------------------ at rest


def test_an_upload_is_kept_encrypted_at_rest_and_decrypts_back_to_the_kept_jpeg(pw: PhotoWorld) -> None:
    out = pw.photos.upload("alice", jpeg(), actor="desk:ada")
    kept = pw.photos.jpeg("alice")
    assert kept is not None and kept.startswith(b"\xff\xd8\xff") and out["bytes"] == len(kept)
    image = cv2.imdecode(np.frombuffer(kept, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (MAX_SIDE, 384) == (out["height"], out["width"])  # 900x1200 scaled to 512 high
    stored = pw.db_bytes()
    # Neither the kept JPEG nor any recognisable run of it is in the database files: only ciphertext.
    assert kept not in stored and kept[:64] not in stored and kept[-64:] not in stored
    assert kept[len(kept) // 2:len(kept) // 2 + 32] not in stored
    row = pw.photo_row("alice")
    assert row["kek_id"] == pw.keys.keyring.current()[0] and len(row["wrapped_key"]) == 60
    assert not row["body"].startswith(b"\xff\xd8") and len(row["body"]) == len(kept) + 28  # nonce + tag


def test_a_photo_moved_to_another_person_does_not_open(pw: PhotoWorld) -> None:
    pw.photos.upload("alice", jpeg(), actor="desk:ada")
    pw.photos.upload("bob", jpeg(seed=3), actor="desk:ada")
    alice = pw.photo_row("alice")
    with pw.store.connection_for_tests() as db:  # plant alice's row under bob's name (an attacker with the db)
        db.execute("UPDATE person_photos SET id = ?, wrapped_key = ?, body = ? WHERE person = 'bob'",
                   [alice["id"], alice["wrapped_key"], alice["body"]])
        db.conn.commit()
    with pytest.raises(EnvelopeError):
        pw.photos.jpeg("bob")
    assert pw.photos.jpeg("alice") is not None


def test_the_kept_photo_loses_exif_and_gps_and_is_at_most_512_px(pw: PhotoWorld) -> None:
    upload = with_exif(jpeg(2400, 1800))
    assert GPS_SECRET in upload and cv2.imdecode(np.frombuffer(upload, np.uint8), cv2.IMREAD_COLOR) is not None
    out = pw.photos.upload("alice", upload, actor="desk:ada")
    kept = pw.photos.jpeg("alice")
    assert kept is not None and GPS_SECRET not in kept and b"Exif" not in kept
    assert (out["width"], out["height"]) == (512, 384)


def test_a_png_is_accepted_and_kept_as_a_jpeg_at_its_own_size_when_small(pw: PhotoWorld) -> None:
    out = pw.photos.upload("alice", png(300, 200), actor="desk:ada")
    kept = pw.photos.jpeg("alice")
    assert kept is not None and kept.startswith(b"\xff\xd8") and (out["width"], out["height"]) == (300, 200)


# ------------------------------------------------------------ hostile input


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"", 422, "empty"),
    (b"%PDF-1.7 not a photo at all", 415, "not a JPEG or PNG"),
    (b"GIF89a" + b"\0" * 100, 415, "not a JPEG or PNG"),
    (jpeg()[:4000], 422, "truncated"),
    (png(300, 200)[:2000], 422, "truncated"),
    (with_thumbnail(jpeg())[:-3000], 422, "truncated"),
    (png_claiming(60_000, 60_000), 422, "60000 x 60000 pixels"),
    (png_claiming(11_000, 11_000), 422, "megapixels"),
    (b"\xff\xd8\xff\xe0" + secrets.token_bytes(3000) + b"\xff\xd9", 422, "JPEG"),
    (jpeg(16, 16), 422, "too small"),
    (jpeg() + b"\0" * (MAX_UPLOAD_BYTES + 1 - len(jpeg())), 413, "MiB"),
], ids=["empty", "pdf", "gif", "truncated-jpeg", "truncated-png", "truncated-behind-a-whole-thumbnail", "huge-dimensions", "too-many-pixels",
        "garbage-jpeg", "tiny", "too-large"])
def test_hostile_uploads_are_refused_with_a_clear_status_and_nothing_is_kept(pw: PhotoWorld, data: bytes,
                                                                             status: int, words: str) -> None:
    with pytest.raises(PhotoError) as err:
        pw.photos.upload("alice", data, actor="desk:ada")
    assert err.value.status == status and words in str(err.value)
    assert pw.photos.jpeg("alice") is None and pw.audit_actions() == []


def test_a_photo_needs_a_person_of_the_site(pw: PhotoWorld) -> None:
    with pytest.raises(NoSuchPerson):
        pw.photos.upload("nobody-here", jpeg(), actor="desk:ada")
    with pytest.raises(NoSuchPerson):
        pw.photos.delete("nobody-here", actor="desk:ada")


def test_a_large_jpeg_is_decoded_at_reduced_scale_to_the_same_size(pw: PhotoWorld) -> None:
    big = prepare(jpeg(4000, 3000))
    assert (big.width, big.height) == (512, 384)


def test_a_phone_photo_with_a_thumbnail_and_a_trailer_after_its_end_is_accepted() -> None:
    kept = prepare(with_thumbnail(jpeg(1200, 900)) + b"SEFH\0\0trailer a phone appends")
    assert (kept.width, kept.height) == (512, 384) and b"trailer" not in kept.jpeg


# ------------------------------------------------------- replace and audit


def test_replace_and_delete_are_audited_under_the_pseudonym_and_replace_changes_the_id(pw: PhotoWorld) -> None:
    first = pw.photos.upload("alice", jpeg(), actor="desk:ada")
    second = pw.photos.upload("alice", jpeg(seed=9), actor="desk:ada")
    assert second["replaced"] and not first["replaced"] and pw.photos.photo_id("alice") == second["id"] != first["id"]
    with pw.store.connection_for_tests() as db:
        assert db["person_photos"].count == 1  # the first photo's row (its key) is gone
    assert pw.photos.delete("alice", actor="desk:ada") and not pw.photos.delete("alice", actor="desk:ada")
    ref = subject_ref(pw.key, "alice")
    assert pw.audit_actions() == [("person.photo.upload", ref, "desk:ada"), ("person.photo.replace", ref, "desk:ada"),
                                  ("person.photo.delete", ref, "desk:ada")]
    assert "alice" not in json.dumps([r["details"] for r in pw.audit.records()
                                      if r["action"].startswith("person.photo")])
    assert pw.photos.jpeg("alice") is None and pw.photos.photo_id("alice") is None


# --------------------------------------------------- erasure, export, retention


def test_erasure_removes_the_photo_and_its_key_material_from_the_database_files(pw: PhotoWorld) -> None:
    pw.photos.upload("alice", jpeg(), actor="desk:ada")
    pw.photos.upload("bob", jpeg(seed=3), actor="desk:ada")
    row = pw.photo_row("alice")
    assert row["wrapped_key"] in pw.db_bytes() and row["body"][:64] in pw.db_bytes()
    out = pw.erase("alice")
    assert out["counts"]["photos"] == 1 and out["wal_truncated"]
    assert pw.photos.jpeg("alice") is None and pw.photos.jpeg("bob") is not None
    stored = pw.db_bytes()
    assert row["wrapped_key"] not in stored and row["body"][:64] not in stored and row["body"][-64:] not in stored
    assert pw.erase("alice")["counts"]["photos"] == 0  # idempotent


def test_the_subject_export_includes_the_photo(pw: PhotoWorld, tmp_path: Path) -> None:
    pw.photos.upload("alice", jpeg(), actor="desk:ada")
    out = tmp_path / "alice.zip"
    counts = subjects.export(pw.bundle, pw.store, pw.key, "alice", out, pw.audit, now=NOW, actor="dpo")
    with zipfile.ZipFile(out) as z:
        manifest = json.loads(z.read("manifest.json"))
        assert z.read("photo.jpg") == pw.photos.jpeg("alice")
    assert counts["photo"] == 1 and "photo.jpg" in manifest["files"] and manifest["unreadable_snapshots"] == []
    # someone without a photo: no photo.jpg, and the export says 0
    counts = subjects.export(pw.bundle, pw.store, pw.key, "bob", tmp_path / "bob.zip", pw.audit, now=NOW)
    with zipfile.ZipFile(tmp_path / "bob.zip") as z:
        assert "photo.jpg" not in z.namelist() and counts["photo"] == 0


def test_retention_deletes_the_photo_once_its_person_left_the_store_and_keeps_the_others(pw: PhotoWorld) -> None:
    pw.photos.upload("alice", jpeg(), actor="desk:ada")
    pw.photos.upload("bob", jpeg(seed=3), actor="desk:ada")
    with pw.store.connection_for_tests() as db:  # bob removed from the site (as an import of people.toml does)
        db.execute("DELETE FROM people WHERE id = 'bob'")
        db.conn.commit()
    dry = run_retention(pw.store, RetentionSettings(), NOW, None, dry_run=True)
    assert dry.deleted["photos"] == 1 and pw.photos.photo_id("bob") is not None
    report = run_retention(pw.store, RetentionSettings(), NOW, pw.audit)
    assert report.deleted["photos"] == 1 and "deleted 1 photos" in report.lines()
    assert pw.photos.photo_id("bob") is None and pw.photos.jpeg("alice") is not None
    assert "photos" not in run_retention(pw.store, RetentionSettings(), NOW, None).deleted  # nothing more to do


def test_key_rotation_rewraps_photos_and_retires_the_old_key_only_when_nothing_uses_it(pw: PhotoWorld) -> None:
    pw.photos.upload("alice", jpeg(), actor="desk:ada")
    kept = pw.photos.jpeg("alice")
    old = pw.keys.keyring.current()[0]
    new = pw.keys.keyring.rotate()
    done, retired = pw.store.rewrap_snapshot_keys()
    assert retired == [old] and done >= 1  # the snapshots of the world and alice's photo
    assert pw.photo_row("alice")["kek_id"] == new and pw.photos.jpeg("alice") == kept


# ------------------------------------------------------------------- HTTP


def alice_badge(server: Server, eid: str = "e-photo-1") -> None:
    server.store.ingest_event(EventMsg(id=eid, seq=1, ts="2026-12-01T08:00:00.000Z", device="pi-lobby",
                                       door="lobby_in", type="access", decision="granted", reason="granted",
                                       person="alice", credential_last4="B2C3", detail={}), 1.0)


def test_the_desk_uploads_shows_with_no_store_and_lists_the_photo_url_on_badge_rows(
        app: FastAPI, client: TestClient, server: Server) -> None:  # noqa: F811 - fixtures
    toks = tokens(app)
    ada, dex, aud = bearer(toks["ada"]), bearer(toks["dex"]), bearer(toks["aud"])
    alice_badge(server)
    rows = client.get("/api/v1/events", headers=dex).json()["events"]
    assert [r["photo_url"] for r in rows if r["id"] == "e-photo-1"] == [None]  # no photo yet: no URL

    assert_json_error(client.put("/api/v1/people/alice/photo", headers=dex, content=jpeg()), 403)
    r = client.put("/api/v1/people/alice/photo", headers=ada, content=jpeg())
    assert r.status_code == 200 and r.json()["width"] == 384 and not r.json()["replaced"], r.text
    shown = client.get("/api/v1/people/alice/photo", headers=dex)
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
    assert "no-store" in shown.headers["cache-control"] and shown.content.startswith(b"\xff\xd8")
    assert_json_error(client.get("/api/v1/people/alice/photo", headers=aud), 403)
    assert_json_error(client.get("/api/v1/people/alice/photo"), 401)

    row = next(r for r in client.get("/api/v1/events", headers=dex).json()["events"] if r["id"] == "e-photo-1")
    assert row["photo_url"].startswith("/api/v1/people/alice/photo?v=")
    assert client.get(row["photo_url"], headers=dex).content == shown.content
    event_page = client.get("/events/e-photo-1", headers=dex)  # the event's page: the photo beside its snapshot
    assert event_page.status_code == 200 and f'src="{row["photo_url"]}" alt="Photo of Alice Archer on file"' in \
        event_page.text.replace("&amp;", "&")

    page = client.get("/people/alice", headers=ada)
    assert 'id="person-photo"' in page.text and row["photo_url"] in page.text and "Replace photo" in page.text
    assert client.delete("/api/v1/people/alice/photo", headers=ada).status_code == 204
    assert_json_error(client.get("/api/v1/people/alice/photo", headers=dex), 404)
    assert_json_error(client.delete("/api/v1/people/alice/photo", headers=ada), 404)
    assert "No photo on file." in client.get("/people/alice", headers=ada).text


def test_the_desk_refuses_hostile_uploads_with_4xx_never_500(app: FastAPI, client: TestClient) -> None:  # noqa: F811
    ada = bearer(tokens(app)["ada"])
    for data, status in ((b"not an image", 415), (jpeg()[:3000], 422), (png_claiming(50_000, 50_000), 422),
                         (b"", 422)):
        assert_json_error(client.put("/api/v1/people/alice/photo", headers=ada, content=data), status)
    assert_json_error(client.put("/api/v1/people/nobody/photo", headers=ada, content=jpeg()), 404)
    # Past the upload cap: the desk's body limit answers 413 before anything is read into memory.
    r = client.put("/api/v1/people/alice/photo", headers=ada, content=b"\xff\xd8\xff" + b"\0" * (MAX_UPLOAD_BYTES + 70_000))
    assert_json_error(r, 413)
    # Other routes keep their small cap.
    assert_json_error(client.put("/api/v1/people/alice/access", headers=ada, content=b"x" * 100_000), 413)


def test_the_person_page_form_uploads_replaces_and_removes_with_csrf(app: FastAPI, client: TestClient,  # noqa: F811
                                                                     server: Server) -> None:  # noqa: F811
    from tests.unit.test_desk_api import PASSWORDS, form_login

    form_login(client, "ada", PASSWORDS["ada"])
    page = client.get("/people/alice")
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    files = {"photo": ("me.jpg", io.BytesIO(jpeg()), "image/jpeg")}
    assert client.post("/people/alice/photo", files=files).status_code == 403  # no CSRF token
    r = client.post("/people/alice/photo", data={"csrf_token": csrf}, files=files)
    assert r.status_code == 303 and r.headers["location"] == "/people/alice?done=photo"
    r = client.post("/people/alice/photo", data={"csrf_token": csrf},
                    files={"photo": ("x.jpg", io.BytesIO(b"%PDF-1.4"), "image/jpeg")})
    assert r.status_code == 415 and "Photo not saved: not a JPEG or PNG" in r.text and 'id="person-photo"' in r.text
    r = client.post("/people/alice/photo", data={"csrf_token": csrf},
                    files={"photo": ("p.png", io.BytesIO(png(300, 200)), "image/png")})
    assert r.headers["location"] == "/people/alice?done=photo_replaced"
    assert "Photo replaced." in client.get(r.headers["location"]).text
    r = client.post("/people/alice/photo/delete", data={"csrf_token": csrf})
    assert r.headers["location"] == "/people/alice?done=photo_removed"
    assert server.store.person_photo_id("alice") is None
