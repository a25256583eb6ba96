"""The watchlist before the badge and agreements at check-in (server/visitors.py, server/agreements.py,
server/web/agreements.py): a match holds the visit until an admin overrides it with a reason or it is refused;
the list is checked again right before check-in; agreement texts are versioned and never edited; check-in is
refused until every required agreement is accepted at its current version; acceptances (a drawn signature
encrypted at rest) are in the data-subject export and go with erasure and retention.

Real parts: the fixtures of tests/unit/test_desk_visitors.py (a ``Server`` on the demo site, real SQLite store,
FastAPI's TestClient, a fake clock).
"""

from __future__ import annotations

import base64
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import warnings

from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.config import RetentionSettings
from doorkeep.clock import FakeClock
from server import subjects
from server.app import Server
from server.audit import subject_ref
from server.retention import run_retention
from tests.unit.test_desk_visitors import (  # noqa: F401 - fixtures, used by name
    app,
    assert_error,
    audit_rows,
    client,
    clock,
    login,
    register,
    server,
)
from server.web.visitors import load_notice


def png(width: int = 8, height: int = 4) -> bytes:
    """A real (tiny, grey) PNG, as a canvas's toDataURL would give."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + bytes([128] * width) for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def check_in(client: TestClient, csrf: dict[str, str], vid: str, agreements: list[dict[str, Any]] | None = None) -> Any:
    return client.post(f"/api/v1/visitors/{vid}/check-in", headers=csrf,
                       json={"notice_version": load_notice().version, "consent": True, "photo_consent": False,
                             "agreements": agreements or []})


def second(app: FastAPI, name: str) -> tuple[TestClient, dict[str, str]]:
    """Another browser: one client's cookie jar holds one session."""
    other = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    return other, login(other, name)


def add_agreement(client: TestClient, csrf: dict[str, str], kind: str, title: str, text: str) -> dict[str, Any]:
    r = client.post("/api/v1/agreements", json={"kind": kind, "title": title, "text": text}, headers=csrf)
    assert r.status_code == 201, r.text
    return dict(r.json())


# ------------------------------------------------------------------ watchlist holds


def test_a_match_at_registration_holds_the_visit_until_an_admin_overrides_it(client: TestClient, app: FastAPI,
                                                                             server: Server) -> None:
    admin = login(client, "ada")
    dc, desk = second(app, "dex")
    entry = client.post("/api/v1/watchlist", json={"kind": "name", "value": "Mallory Grey"}, headers=admin).json()["id"]
    out = register(dc, desk, name="Mallory  GREY")
    vid = out["visitor"]["id"]
    assert out["visitor"]["hold"]["state"] == "held" and out["visitor"]["hold"]["entries"] == [entry]
    free = server.directory.free_badges()

    assert_error(check_in(dc, desk, vid), 409, "held by a watchlist match")
    assert client.get(f"/api/v1/visitors/{vid}").json()["status"] == "registered"
    assert server.directory.free_badges() == free  # no badge handed out
    # the desk may not override; an admin must, with a reason
    assert_error(dc.post(f"/api/v1/visitors/{vid}/hold/override", json={"reason": "ok"}, headers=desk), 403,
                 "admin")
    assert client.post(f"/api/v1/visitors/{vid}/hold/override", json={"reason": ""},
                       headers=admin).status_code == 422
    assert_error(client.post(f"/api/v1/visitors/{vid}/hold/override", json={"reason": "   "}, headers=admin), 422,
                 "reason")
    r = client.post(f"/api/v1/visitors/{vid}/hold/override", json={"reason": "Host vouches; ID checked"},
                    headers=admin)
    assert r.status_code == 200 and r.json()["hold"]["state"] == "overridden", r.text
    assert r.json()["hold"]["resolved_by"] == "ada"
    assert_error(client.post(f"/api/v1/visitors/{vid}/hold/override", json={"reason": "again"}, headers=admin), 409,
                 "not held")
    r = check_in(dc, desk, vid)
    assert r.status_code == 200 and r.json()["visitor"]["status"] == "checked_in", r.text

    ref = subject_ref(server.directory.key, vid)
    rows = [a for a in audit_rows(server) if a["target"] == ref]
    override = next(a for a in rows if a["action"] == "visitor.watchlist_override")
    assert override["actor"] == "ada" and override["details"] == {"entries": [entry], "reason": "Host vouches; ID checked"}
    assert [a["details"]["stage"] for a in rows if a["action"] == "visitor.watchlist_hold"] == ["register"]
    assert "Mallory" not in str(audit_rows(server))  # entries by id, never the listed text


def test_the_watchlist_is_checked_again_right_before_check_in(client: TestClient, server: Server) -> None:
    admin = login(client, "ada")
    vid = register(client, admin, name="Eve Example", company="Shady Corp")["visitor"]["id"]
    first = client.post("/api/v1/watchlist", json={"kind": "company", "value": "shady corp"}, headers=admin).json()
    assert_error(check_in(client, admin, vid), 409, "now held")
    assert client.get(f"/api/v1/visitors/{vid}").json()["hold"]["stage"] == "check_in"
    client.post(f"/api/v1/visitors/{vid}/hold/override", json={"reason": "contract signed"}, headers=admin)
    # a later entry the override did not clear holds the visit again
    second = client.post("/api/v1/watchlist", json={"kind": "name", "value": "Eve"}, headers=admin).json()
    assert_error(check_in(client, admin, vid), 409, "now held")
    hold = client.get(f"/api/v1/visitors/{vid}").json()["hold"]
    assert hold["state"] == "held" and hold["entries"] == sorted([first["id"], second["id"]])


def test_a_refused_visit_can_never_be_checked_in_and_the_desk_may_refuse(client: TestClient, app: FastAPI,
                                                                          server: Server) -> None:
    admin = login(client, "ada")
    dc, desk = second(app, "dex")
    client.post("/api/v1/watchlist", json={"kind": "name", "value": "Trudy"}, headers=admin)
    vid = register(dc, desk, name="Trudy Test")["visitor"]["id"]
    r = dc.post(f"/api/v1/visitors/{vid}/hold/refuse", json={"reason": "banned after incident 12"}, headers=desk)
    assert r.status_code == 200 and r.json()["hold"]["state"] == "refused", r.text
    assert_error(check_in(dc, desk, vid), 409, "refused")
    assert_error(client.post(f"/api/v1/visitors/{vid}/hold/override", json={"reason": "x"}, headers=admin), 409,
                 "refused")
    assert any(a["action"] == "visitor.refused" and a["actor"] == "dex" for a in audit_rows(server))
    # a visit that was never held cannot be "refused" by this route
    other = register(dc, desk, name="Olivia Ok")["visitor"]["id"]
    assert_error(dc.post(f"/api/v1/visitors/{other}/hold/refuse", json={"reason": "x"}, headers=desk), 409,
                 "not held")


def test_the_pages_show_a_held_visit_and_let_only_an_admin_override(client: TestClient) -> None:
    admin = login(client, "ada")
    client.post("/api/v1/watchlist", json={"kind": "name", "value": "Mallory"}, headers=admin)
    vid = register(client, admin, name="Mallory")["visitor"]["id"]
    assert "Held by watchlist" in client.get("/visitors").text
    page = client.get(f"/visitors/{vid}/check-in").text
    assert "Held by the watchlist" in page and "Override the hold" in page and "Check in and hand over" not in page
    r = client.post(f"/visitors/{vid}/hold/override", data={"csrf_token": admin["X-CSRF-Token"], "reason": ""})
    assert r.status_code == 422 and "give a reason" in r.text
    r = client.post(f"/visitors/{vid}/hold/override", data={"csrf_token": admin["X-CSRF-Token"], "reason": "vouched"})
    assert r.status_code == 200 and "Hold overridden" in r.text and "Check in and hand over" in r.text
    client.post("/logout", data={"csrf_token": admin["X-CSRF-Token"]})
    desk = login(client, "dex")
    vid2 = register(client, desk, name="Mallory")["visitor"]["id"]
    page = client.get(f"/visitors/{vid2}/check-in").text
    assert "Override the hold" not in page and "Refuse the visit" in page
    assert client.post(f"/visitors/{vid2}/hold/override",
                       data={"csrf_token": desk["X-CSRF-Token"], "reason": "x"}).status_code == 403


# ------------------------------------------------------------------ agreements


def test_agreement_versions_are_kept_and_check_in_needs_the_current_one(client: TestClient, app: FastAPI,
                                                                         server: Server) -> None:
    admin = login(client, "ada")
    dc, desk = second(app, "dex")
    assert dc.post("/api/v1/agreements", json={"kind": "nda", "title": "NDA", "text": "x"},
                       headers=desk).status_code == 403
    v1 = add_agreement(client, admin, "nda", "Non-disclosure", "Keep secrets.\n\nFor ever.")
    assert v1["version"] == 1
    assert_error(client.post("/api/v1/agreements", json={"kind": "Bad Kind", "title": "t", "text": "x"},
                             headers=admin), 422, "kind")
    add_agreement(client, admin, "safety", "Safety rules", "Wear the hi-vis vest.")
    assert_error(client.put("/api/v1/agreements/required", json={"kinds": ["nda", "nope"]}, headers=admin), 422,
                 "no agreement nope")
    assert client.put("/api/v1/agreements/required", json={"kinds": ["nda"]}, headers=admin).status_code == 200
    vid = register(dc, desk)["visitor"]["id"]
    # the desk adds the safety rules for this visit
    r = dc.put(f"/api/v1/visitors/{vid}/agreements", json={"kinds": ["safety"]}, headers=desk)
    assert [m["kind"] for m in r.json()["missing"]] == ["nda", "safety"], r.text

    assert_error(check_in(dc, desk, vid), 422, "must accept Non-disclosure (version 1), Safety rules")
    v2 = add_agreement(client, admin, "nda", "Non-disclosure", "Keep secrets, revised.")
    assert v2["version"] == 2
    versions = dc.get("/api/v1/agreements").json()["versions"]
    assert [(v["kind"], v["version"], v["text"]) for v in versions if v["kind"] == "nda"] == \
        [("nda", 1, "Keep secrets.\n\nFor ever."), ("nda", 2, "Keep secrets, revised.")]  # v1 never edited
    typed = {"method": "typed", "typed_name": "Grace Hopper"}
    assert_error(check_in(dc, desk, vid, [{"kind": "nda", "version": 1, **typed}]), 409, "now version 2")
    assert_error(check_in(dc, desk, vid, [{"kind": "nda", "version": 2, "method": "typed", "typed_name": " "},
                                              {"kind": "safety", "version": 1, **typed}]), 422, "type the visitor")
    assert dc.get(f"/api/v1/visitors/{vid}/agreements").json()["accepted"] == []  # nothing half-stored
    r = check_in(dc, desk, vid, [{"kind": "nda", "version": 2, **typed}, {"kind": "safety", "version": 1, **typed}])
    assert r.status_code == 200, r.text
    accepted = dc.get(f"/api/v1/visitors/{vid}/agreements").json()["accepted"]
    assert {(a["kind"], a["version"], a["method"], a["typed_name"], a["operator"]) for a in accepted} == \
        {("nda", 2, "typed", "Grace Hopper", "dex"), ("safety", 1, "typed", "Grace Hopper", "dex")}
    acts = [a for a in audit_rows(server) if a["action"] == "visitor.agreement_accepted"]
    assert sorted((a["details"]["kind"], a["details"]["version"]) for a in acts) == [("nda", 2), ("safety", 1)]
    assert "Grace" not in str(acts)


def test_a_drawn_signature_is_encrypted_at_rest_exported_then_erased(client: TestClient, server: Server,
                                                                      tmp_path: Path) -> None:
    admin = login(client, "ada")
    add_agreement(client, admin, "nda", "Non-disclosure", "Keep secrets.")
    client.put("/api/v1/agreements/required", json={"kinds": ["nda"]}, headers=admin)
    vid = register(client, admin)["visitor"]["id"]
    drawn = png()
    assert_error(client.post(f"/api/v1/visitors/{vid}/agreements/accept", headers=admin,
                             json={"kind": "nda", "version": 1, "method": "drawn",
                                   "signature_png": base64.b64encode(b"GIF89a....").decode()}), 422, "not a PNG")
    r = client.post(f"/api/v1/visitors/{vid}/agreements/accept", headers=admin,
                    json={"kind": "nda", "version": 1, "method": "drawn",
                          "signature_png": "data:image/png;base64," + base64.b64encode(drawn).decode()})
    assert r.status_code == 201 and r.json()["missing"] == [], r.text
    acc = r.json()["accepted"][0]
    assert acc["has_signature"] and acc["method"] == "drawn"
    raw = server.store._db.conn.execute("SELECT signature FROM agreement_acceptances").fetchone()[0]
    assert drawn not in bytes(raw) and b"IHDR" not in bytes(raw)  # ciphertext only
    assert server.store.acceptance_signature(acc["id"]) == drawn
    assert check_in(client, admin, vid).status_code == 200

    out = tmp_path / "export.zip"
    counts = subjects.export(server.directory.bundle, server.store, server.directory.key, vid, out, server.audit,
                             now=server.directory.clock.wall())
    assert counts["agreements"] == 1
    with zipfile.ZipFile(out) as z:
        assert z.read(f"signatures/{acc['id']}.png") == drawn
        import json
        exported = json.loads(z.read("agreements.json"))
    assert exported[0]["version"] == 1 and exported[0]["text"] == "Keep secrets." and exported[0]["method"] == "drawn"

    client.post(f"/api/v1/visitors/{vid}/check-out", headers=admin)
    result = subjects.erase(server.directory.bundle, server.store, server.directory.key, vid, server.audit,
                            now=server.directory.clock.wall())
    assert result["counts"]["agreements"] == 1
    assert server.store.acceptances(vid) == [] and server.store.acceptance_signature(acc["id"]) is None


def test_retention_removes_agreements_and_holds_with_the_visit(client: TestClient, server: Server,
                                                               clock: FakeClock) -> None:
    admin = login(client, "ada")
    add_agreement(client, admin, "nda", "Non-disclosure", "Keep secrets.")
    client.post("/api/v1/watchlist", json={"kind": "name", "value": "Mallory"}, headers=admin)
    held = register(client, admin, name="Mallory")["visitor"]["id"]
    vid = register(client, admin)["visitor"]["id"]
    client.post(f"/api/v1/visitors/{vid}/agreements/accept", headers=admin,
                json={"kind": "nda", "version": 1, "method": "typed", "typed_name": "Grace Hopper"})
    assert server.store.visit_hold(held) is not None and len(server.store.acceptances(vid)) == 1
    report = run_retention(server.store, RetentionSettings(), clock.wall() + 40 * 86400, None)
    assert set(report.visitor_ids) >= {held, vid}
    assert report.deleted["agreements"] == 1
    assert server.store.visit_hold(held) is None and server.store.acceptances(vid) == []
    assert [v["kind"] for v in server.store.agreement_versions()] == ["nda"]  # the texts themselves stay


def test_the_desk_check_in_page_takes_a_typed_name_for_each_agreement(client: TestClient) -> None:
    admin = login(client, "ada")
    add_agreement(client, admin, "safety", "Safety rules", "Wear the vest.")
    client.put("/api/v1/agreements/required", json={"kinds": ["safety"]}, headers=admin)
    vid = register(client, admin)["visitor"]["id"]
    page = client.get(f"/visitors/{vid}/check-in").text
    assert "Wear the vest." in page and 'name="agreement_name"' in page
    form = {"csrf_token": admin["X-CSRF-Token"], "notice_version": load_notice().version, "consent": "yes",
            "agreement_kind": "safety", "agreement_version": "1", "agreement_name": ""}
    r = client.post(f"/visitors/{vid}/check-in", data=form)
    assert r.status_code == 422 and "type the visitor" in r.text
    r = client.post(f"/visitors/{vid}/check-in", data={**form, "agreement_name": "Grace Hopper"})
    assert r.status_code == 200 and "Checked in Grace Hopper" in r.text, r.text
    assert "Agreements" in client.get("/agreements").text



def test_key_rotation_rewraps_signatures_and_keeps_the_old_key_until_none_uses_it(tmp_path: Path) -> None:
    from tests.unit.test_subjects import World

    w = World(tmp_path)
    w.store.add_agreement_version("nda", "Non-disclosure", "Keep secrets.", "ada", 1.0)
    drawn = png(12, 6)
    acc = w.store.add_acceptance("v-zoe", "nda", 1, method="drawn", typed_name=None, operator="ada", at=2.0,
                                 site="demo", signature_png=drawn)
    old = w.keys.keyring.current()[0]
    new = w.keys.keyring.rotate()
    done, retired = w.store.rewrap_snapshot_keys()
    assert done >= 1 and retired == [old]  # retired only because the signature no longer uses it
    row = w.store._db.conn.execute("SELECT kek_id FROM agreement_acceptances WHERE id = ?", [acc]).fetchone()
    assert row[0] == new and w.store.acceptance_signature(acc) == drawn
