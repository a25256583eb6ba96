"""The self check-in kiosk (server/web/kiosk.py): a pass decoded from a camera frame by OpenCV, the pages' flow
(pass, confirm, agreements by drawn signature, notice and photo, check-in with the host told), the kiosk role
refused everywhere else, a held visit sent to the desk without naming the watchlist.

Real parts: a ``Server`` on the demo site with a pass key, real SQLite store, FastAPI's TestClient, a fake clock,
a QR code drawn by segno and decoded by OpenCV.
"""

from __future__ import annotations

import base64
import re
import secrets
import warnings
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
import segno
from argon2 import PasswordHasher
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.decision import AccessRequest
from doorkeep.envelope import SnapshotKeys
from server.app import Server, bootstrap
from server.passes import PassKeys
from server.web.app import create_app
from server.web.kiosk import decode_qr
from server.web.visitors import load_notice
from tests.unit.test_desk_visitors import DEMO, MONDAY_9, PASSWORDS, ROLES, audit_rows, register

KIOSK_PASSWORD = "kim lobby tablet pass"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=MONDAY_9)


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:
    srv = bootstrap(load_site_dir(DEMO), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate(), clock=clock,
                    pass_keys=PassKeys(Ed25519PrivateKey.generate()))
    yield srv
    srv.store.close()


@pytest.fixture
def app(server: Server, clock: FakeClock) -> FastAPI:
    app = create_app(server, clock=clock, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    for name, role in ROLES.items():
        app.state.desk.operators.add(name, role, PASSWORDS[name], actor="test")
    app.state.desk.operators.add("kim", "kiosk", KIOSK_PASSWORD, actor="test")
    return app


def client_for(app: FastAPI, name: str, password: str | None = None) -> tuple[TestClient, str]:
    c = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    r = c.post("/api/v1/session", json={"name": name, "password": password or PASSWORDS[name]})
    assert r.status_code == 200, r.text
    return c, str(r.json()["csrf_token"])


def face_jpeg() -> bytes:
    img = np.zeros((240, 200, 3), np.uint8)
    img[:] = (90, 120, 160)
    cv2.circle(img, (100, 110), 60, (200, 200, 230), -1)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


def qr_frame(text: str) -> bytes:
    """A camera-sized JPEG with the pass's QR code in it, as the tablet would capture."""
    import io

    buf = io.BytesIO()
    segno.make(text, error="m").save(buf, kind="png", scale=6, border=4)
    code = cv2.imdecode(np.frombuffer(buf.getvalue(), np.uint8), cv2.IMREAD_GRAYSCALE)
    frame = np.full((480, 640), 200, np.uint8)
    h, w = code.shape
    frame[40:40 + h, 120:120 + w] = code
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return jpeg.tobytes()


def csrf_of(html: str) -> dict[str, str]:
    return {"csrf_token": re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)}  # type: ignore[union-attr]


ASSETS = Path(__file__).parent / "assets"


def test_decode_qr_reads_a_tablets_frame_that_the_aruco_detector_misses() -> None:
    """A frame a tablet's canvas sent during an e2e run (Chromium's fake camera, JPEG 0.85): OpenCV's ArUco
    detector does not even find its code, the classic one reads it, so the kiosk tries both."""
    frame = (ASSETS / "kiosk_frame_aruco_misses.jpg").read_bytes()
    token = (ASSETS / "kiosk_frame_aruco_misses.txt").read_text().strip()
    image = cv2.imdecode(np.frombuffer(frame, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert cv2.QRCodeDetectorAruco().detectAndDecode(image)[0] == "", "the reason this frame is kept"
    assert decode_qr(frame) == token


def test_decode_qr_reads_a_pass_from_a_camera_frame_and_nothing_from_noise(server: Server) -> None:
    token = "DK1.example-pass-text-0123456789"
    assert decode_qr(qr_frame(token)) == token
    noise = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (240, 320), np.uint8))[1].tobytes()
    assert decode_qr(noise) is None
    assert decode_qr(b"not an image") is None and decode_qr(b"") is None


def test_a_visitor_checks_in_at_the_kiosk_with_a_drawn_signature_and_a_photo(app: FastAPI, server: Server) -> None:
    admin, admin_csrf = client_for(app, "ada")
    h = {"X-CSRF-Token": admin_csrf}
    assert admin.post("/api/v1/agreements", json={"kind": "nda", "title": "Non-disclosure", "text": "Keep it quiet."},
                      headers=h).status_code == 201
    admin.put("/api/v1/agreements/required", json={"kinds": ["nda"]}, headers=h)
    vid = register(admin, h)["visitor"]["id"]
    assert server.passes is not None
    token = server.passes.issue_pass(vid, actor="test").token

    kiosk, csrf = client_for(app, "kim", KIOSK_PASSWORD)
    # the kiosk scans: a frame with the pass in it comes back as the pass's text
    r = kiosk.post("/kiosk/scan", content=qr_frame(token), headers={"X-CSRF-Token": csrf,
                                                                   "Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.json() == {"code": token}, r.text
    assert kiosk.post("/kiosk/scan", content=b"\xff\xd8junk", headers={"X-CSRF-Token": csrf}).status_code == 422
    start = kiosk.get("/kiosk")
    assert start.status_code == 200 and "Scan my pass" in start.text
    form = csrf_of(start.text)
    bad = kiosk.post("/kiosk/pass", data={**form, "code": "DK1.forged"})
    assert bad.status_code == 422 and "not a visitor pass of this site" in bad.text
    r = kiosk.post("/kiosk/pass", data={**form, "code": token})
    assert r.status_code == 200 and "Is this you?" in r.text and "Grace Hopper" in r.text
    r = kiosk.post("/kiosk/confirm", data={**form, "code": token})
    assert "Keep it quiet." in r.text and 'id="signature-pad"' in r.text
    blank = kiosk.post("/kiosk/agree", data={**form, "code": token, "kind": "nda", "version": "1", "method": "drawn",
                                             "signature": "data:image/png;base64," + base64.b64encode(
                                                 cv2.imencode(".png", np.zeros((20, 60, 4), np.uint8))[1].tobytes()
                                             ).decode()})
    assert blank.status_code == 422 and "Sign in the box" in blank.text
    signature = cv2.imencode(".png", np.pad(np.full((10, 50), 20, np.uint8), 5, constant_values=255))[1].tobytes()
    r = kiosk.post("/kiosk/agree", data={**form, "code": token, "kind": "nda", "version": "1", "method": "drawn",
                                         "signature": "data:image/png;base64," + base64.b64encode(signature).decode()})
    assert r.status_code == 200 and "Privacy notice" in r.text, r.text
    r = kiosk.post("/kiosk/check-in", data={**form, "code": token, "notice_version": load_notice().version,
                                            "consent": "yes", "photo_consent": "yes",
                                            "photo": "data:image/jpeg;base64," + base64.b64encode(face_jpeg()).decode()})
    assert r.status_code == 200 and "You are checked in" in r.text, r.text
    assert f'href="/visitors/{vid}/badge"' in r.text

    v = admin.get(f"/api/v1/visitors/{vid}").json()
    assert v["status"] == "checked_in" and v["consent"]["photo_consent"] and v["consent"]["operator"] == "kim"
    accepted = admin.get(f"/api/v1/visitors/{vid}/agreements").json()["accepted"]
    assert [(a["kind"], a["method"], a["operator"], a["has_signature"]) for a in accepted] == \
        [("nda", "drawn", "kim", True)]
    assert server.store.acceptance_signature(accepted[0]["id"]) == signature
    assert server.store.person_photo(vid) is not None  # kept encrypted under the visit
    assert {"visitor.photo", "visitor.consent", "visitor.agreement_accepted"} <= \
        {a["action"] for a in audit_rows(server) if a["actor"] == "kim"}
    # the same pass again: already checked in
    assert "already checked in" in kiosk.post("/kiosk/pass", data={**form, "code": token}).text


def test_declining_the_photo_is_recorded_and_nothing_is_kept(app: FastAPI, server: Server) -> None:
    admin, admin_csrf = client_for(app, "ada")
    vid = register(admin, {"X-CSRF-Token": admin_csrf})["visitor"]["id"]
    assert server.passes is not None
    token = server.passes.issue_pass(vid).token
    kiosk, csrf = client_for(app, "kim", KIOSK_PASSWORD)
    form = {"csrf_token": csrf, "code": token}
    assert "Privacy notice" in kiosk.post("/kiosk/confirm", data=form).text  # no agreement required here
    r = kiosk.post("/kiosk/check-in", data={**form, "notice_version": load_notice().version, "consent": "yes",
                                            "photo": "data:image/jpeg;base64," + base64.b64encode(face_jpeg()).decode()})
    assert r.status_code == 200 and "You are checked in" in r.text
    assert admin.get(f"/api/v1/visitors/{vid}").json()["consent"]["photo_consent"] is False
    assert server.store.person_photo(vid) is None
    assert any(a["action"] == "visitor.photo_declined" for a in audit_rows(server))


def test_a_held_visit_is_sent_to_the_desk_without_naming_the_watchlist(app: FastAPI, server: Server) -> None:
    admin, admin_csrf = client_for(app, "ada")
    h = {"X-CSRF-Token": admin_csrf}
    vid = register(admin, h, name="Mallory Grey")["visitor"]["id"]
    assert server.passes is not None
    token = server.passes.issue_pass(vid).token
    admin.post("/api/v1/watchlist", json={"kind": "name", "value": "Mallory"}, headers=h)  # listed after registration
    kiosk, csrf = client_for(app, "kim", KIOSK_PASSWORD)
    form = {"csrf_token": csrf, "code": token}
    page = kiosk.post("/kiosk/confirm", data=form)  # not held yet: the list is checked at check-in
    assert "Privacy notice" in page.text
    r = kiosk.post("/kiosk/check-in", data={**form, "notice_version": load_notice().version, "consent": "yes"})
    assert r.status_code == 409 and "Please see the reception desk" in r.text
    assert "watchlist" not in r.text.lower()
    assert admin.get(f"/api/v1/visitors/{vid}").json()["hold"]["state"] == "held"
    assert "Please see the reception desk" in kiosk.post("/kiosk/pass", data=form).text


def test_the_kiosk_role_is_refused_by_the_desk_and_its_api(app: FastAPI) -> None:
    kiosk, csrf = client_for(app, "kim", KIOSK_PASSWORD)
    assert kiosk.get("/visitors").status_code == 403
    assert kiosk.get("/api/v1/visitors/today").status_code == 403
    assert kiosk.post("/api/v1/visitors", json={}, headers={"X-CSRF-Token": csrf}).status_code == 403
    home = kiosk.get("/")
    assert home.status_code == 200 and 'href="/kiosk"' in home.text
    # a desk operator may not use the kiosk either (it checks visitors in under the kiosk's account)
    desk, desk_csrf = client_for(app, "dex")
    assert desk.get("/kiosk").status_code == 403
    assert desk.post("/kiosk/scan", content=b"x", headers={"X-CSRF-Token": desk_csrf}).status_code == 403


def test_a_visitor_checks_out_at_the_kiosk_with_their_pass_and_it_ends(app: FastAPI, server: Server) -> None:
    admin, admin_csrf = client_for(app, "ada")
    vid = register(admin, {"X-CSRF-Token": admin_csrf})["visitor"]["id"]
    assert server.passes is not None
    token = server.passes.issue_pass(vid).token
    pass_hash = server.passes.read(token).credential_hash
    kiosk, csrf = client_for(app, "kim", KIOSK_PASSWORD)
    start = kiosk.get("/kiosk")
    assert "Leaving? Scan or type your pass" in start.text and 'action="/kiosk/check-out"' in start.text
    form = {**csrf_of(start.text), "code": token}
    # Not checked in yet: nothing to check out, and nothing changes.
    r = kiosk.post("/kiosk/check-out", data=form)
    assert r.status_code == 409 and "never checked in" in r.text
    assert server.directory.visitor(vid).status == "registered"
    bad = kiosk.post("/kiosk/check-out", data={**form, "code": "DK1.forged"})
    assert bad.status_code == 422 and "not a visitor pass of this site" in bad.text
    r = kiosk.post("/kiosk/check-in", data={**form, "notice_version": load_notice().version, "consent": "yes"})
    assert "You are checked in" in r.text
    badge = server.directory.visitor(vid).card_last4
    assert server.directory.decide(AccessRequest("lobby_in", pass_hash)).granted

    r = kiosk.post("/kiosk/check-out", data=form)
    assert r.status_code == 200 and "Goodbye, Grace Hopper" in r.text and "You are checked out" in r.text, r.text
    assert f"badge (…{badge})" in r.text  # the pool badge goes back to the desk
    v = admin.get(f"/api/v1/visitors/{vid}").json()
    assert v["status"] == "checked_out"
    assert server.directory.decide(AccessRequest("lobby_in", pass_hash)).reason.value == "credential_inactive"
    assert any(a["action"] == "visitor.check_out" and a["actor"] == "kim" for a in audit_rows(server))
    # The same pass again: already gone, said plainly; nothing is checked out twice.
    again = kiosk.post("/kiosk/check-out", data=form)
    assert again.status_code == 200 and "already checked out" in again.text
    assert sum(a["action"] == "visitor.check_out" for a in audit_rows(server)) == 1
