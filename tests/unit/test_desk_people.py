"""People and credentials at the desk (server/web/people.py over server/people.py): admin only, add, suspend and
reinstate, a card reported lost refused at once by ``Directory.decide``, access levels and clearance, CSV import
validated line by line and all or nothing, desk changes kept in the store across a restart, card numbers never
stored, and ``doorkeep subject erase`` removing desk-added people.

Real parts: a real ``Server`` on the demo site with its SQLite store (bus not started), a second server
bootstrapped on the same data directory for the restart, FastAPI's TestClient.
"""

from __future__ import annotations

import re
import secrets
import warnings
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's TestClient prefers httpx2; httpx works the same here
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.decision import AccessRequest
from doorkeep.envelope import SnapshotKeys
from doorkeep.model import Site
from server import subjects
from server.app import Server, bootstrap
from server.audit import subject_ref
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    DEMO,
    api_login,
    app,
    assert_json_error,
    bearer,
    client,
    clock,
    hasher,
    server,
    tokens,
)

ZED_CARD = "0F00ABCDEF"
GOOD_CSV = ("id,name,kind,clearance,access_levels,cards\n"
            "zed,Zed Zimmer,employee,3,staff;lab,em4100:0F00ABCDEF;ascii:77001234\n"
            "yara,Yara Young,contractor,,staff,\n")


def decide(server: Server, door: str, fmt: str, number: str) -> Any:
    return server.directory.decide(AccessRequest(door, server.directory.card(fmt, number)))


def admin(app: FastAPI) -> dict[str, str]:
    """A fresh admin token (each test may ask more than once)."""
    return bearer(app.state.desk.operators.issue_token("ada", secrets.token_hex(4), actor="test")[0])


def audit(server: Server, action: str) -> list[dict[str, Any]]:
    assert server.audit is not None
    return [r for r in reversed(server.audit.records()) if r["action"] == action]


def test_a_desk_operator_or_auditor_cannot_manage_people(app: FastAPI, client: TestClient, server: Server) -> None:
    toks = tokens(app)
    alice_card = server.directory.card("em4100", "0F00A1B2C3")
    for name in ("dex", "aud"):
        h = bearer(toks[name])
        assert "needs admin" in assert_json_error(client.get("/api/v1/people", headers=h), 403)["error"]
        assert_json_error(client.post("/api/v1/people", headers=h, json={"id": "x1", "name": "X"}), 403)
        assert_json_error(client.post("/api/v1/people/import", headers=h, json={"csv": GOOD_CSV}), 403)
        assert_json_error(client.post("/api/v1/people/alice/suspend", headers=h), 403)
        assert_json_error(client.put("/api/v1/people/alice/access", headers=h,
                                     json={"clearance": 9, "access_levels": ["lab"]}), 403)
        assert_json_error(client.post(f"/api/v1/cards/{alice_card}/lost", headers=h), 403)
        assert client.get("/people/alice", headers=h).status_code == 403
        assert client.post("/people/alice/suspend", headers=h).status_code == 403
    assert_json_error(client.get("/api/v1/people"), 401)
    site = server.directory.site
    assert "x1" not in site.people and site.people["alice"].state.value == "active"
    assert site.credentials[alice_card].state.value == "active"


def test_added_person_opens_doors_at_once_and_their_card_is_stored_only_hashed(app: FastAPI, client: TestClient,
                                                                             server: Server) -> None:
    assert decide(server, "lobby_in", "em4100", ZED_CARD).reason.value == "unknown_credential"
    body = {"id": "zed", "name": "Zed Zimmer", "kind": "contractor", "clearance": 1, "access_levels": ["staff"],
            "cards": [{"format": "em4100", "number": ZED_CARD.lower()}]}
    r = client.post("/api/v1/people", headers=admin(app), json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    assert (out["source"], out["kind"], out["cards"][0]["last4"]) == ("desk", "contractor", "CDEF")
    assert decide(server, "lobby_in", "em4100", ZED_CARD).granted
    assert decide(server, "lab", "em4100", ZED_CARD).reason.value == "no_access"

    added = audit(server, "person.add")
    assert [(a["actor"], a["target"]) for a in added] == [("ada", subject_ref(server.directory.key, "zed"))]
    assert "Zed" not in str(added[0]) and ZED_CARD not in str(added[0])
    blobs = b"".join(p.read_bytes() for p in server.store.dir.glob("doorkeep.db*"))
    assert ZED_CARD.encode() not in blobs and ZED_CARD.lower().encode() not in blobs

    again = client.post("/api/v1/people", headers=admin(app), json={**body, "cards": []})
    assert "already exists" in assert_json_error(again, 409)["error"]
    taken = client.post("/api/v1/people", headers=admin(app), json={**body, "id": "zed2"})
    assert "already belongs" in assert_json_error(taken, 422)["error"]
    pool = client.post("/api/v1/people", headers=admin(app),
                       json={**body, "id": "zed3", "cards": [{"format": "em4100", "number": "0F00F00001"}]})
    assert "visitor badge" in assert_json_error(pool, 422)["error"]
    level = client.post("/api/v1/people", headers=admin(app), json={**body, "id": "zed4", "cards": [],
                                                                     "access_levels": ["vault"]})
    assert "no access level 'vault'" in assert_json_error(level, 422)["error"]
    assert set(server.directory.site.people) >= {"zed"} and "zed2" not in server.directory.site.people


def test_lost_card_is_refused_at_once_and_the_policy_is_republished(app: FastAPI, client: TestClient,
                                                                    server: Server) -> None:
    published: list[Site] = []
    server.directory.listeners.append(published.append)  # where the bus republishes the signed policies
    card = server.directory.card("em4100", "0F00A1B2C3")
    assert decide(server, "lobby_in", "em4100", "0F00A1B2C3").granted
    r = client.post(f"/api/v1/cards/{card}/lost", headers=admin(app))
    assert r.status_code == 200 and r.json() == {"hash": card, "format": "em4100", "last4": "B2C3", "state": "lost"}
    refused = decide(server, "lobby_in", "em4100", "0F00A1B2C3")
    assert not refused.granted and refused.reason.value == "credential_inactive"
    assert decide(server, "lobby_in", "ascii", "40011111").granted  # Alice's other card still works
    assert published and published[-1].credentials[card].state.value == "lost"
    assert [(a["actor"], a["action"]) for a in audit(server, "card.lost")] == [("ada", "card.lost")]
    unknown = "0" * 64
    assert_json_error(client.post(f"/api/v1/cards/{unknown}/lost", headers=admin(app)), 404)
    assert_json_error(client.post("/api/v1/cards/not-a-hash/lost", headers=admin(app)), 422)


def test_lost_card_form_needs_csrf_and_the_cards_owner(client: TestClient, server: Server) -> None:
    csrf = api_login(client, "ada")
    card = server.directory.card("em4100", "0F00B0B0B0")  # Bob's
    page = client.get("/people/bob").text
    assert f'action="/people/bob/cards/{card}/lost"' in page and "0F00B0B0B0" not in page
    assert client.post(f"/people/bob/cards/{card}/lost").status_code == 403
    assert client.post(f"/people/alice/cards/{card}/lost", data={"csrf_token": csrf}).status_code == 404
    assert server.directory.site.credentials[card].state.value == "active"
    r = client.post(f"/people/bob/cards/{card}/lost", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/people/bob?done=lost"
    assert decide(server, "lobby_in", "em4100", "0F00B0B0B0").reason.value == "credential_inactive"


def test_suspend_and_access_changes_and_added_people_survive_a_restart(app: FastAPI, client: TestClient,
                                                                      server: Server, clock: FakeClock) -> None:
    h = admin(app)
    assert client.post("/api/v1/people/bob/suspend", headers=h).json()["state"] == "suspended"
    assert decide(server, "lobby_in", "em4100", "0F00B0B0B0").reason.value == "person_inactive"
    r = client.put("/api/v1/people/bob/access", headers=h, json={"clearance": 3, "access_levels": ["staff", "lab"]})
    assert r.status_code == 200 and r.json()["source"] == "people.toml+desk"
    bad = client.put("/api/v1/people/bob/access", headers=h, json={"clearance": 3, "access_levels": ["vault"]})
    assert "no access level" in assert_json_error(bad, 422)["error"]
    assert_json_error(client.put("/api/v1/people/bob/access", headers=h, json={"clearance": 12,
                                                                               "access_levels": []}), 422)
    assert_json_error(client.post("/api/v1/people/nobody/suspend", headers=h), 404)
    assert client.post("/api/v1/people", headers=h, json={"id": "zed", "name": "Zed", "access_levels": ["staff"], "cards": [
        {"format": "em4100", "number": ZED_CARD}]}).status_code == 201
    assert [a["actor"] for a in audit(server, "person.suspend")] == ["ada"]
    assert audit(server, "person.access")[0]["details"]["access_levels"] == [["staff"], ["staff", "lab"]]

    # A restart: a new server on the same store and key runs the store's people (people.toml is not read again).
    server.store.close()
    again = bootstrap(load_site_dir(DEMO), server.store.dir, BrokerConfig("mqtt://127.0.0.1:9"),
                      key=server.directory.key, signing_key=Ed25519PrivateKey.generate(),
                      snapshot_keys=SnapshotKeys.generate(), clock=clock)
    try:
        bob = again.directory.site.people["bob"]
        assert (bob.state.value, bob.clearance, bob.access_levels, bob.name) == ("suspended", 3, ("staff", "lab"),
                                                                                 "Bob Baker")
        assert again.directory.site.people["alice"].clearance == 3  # untouched people keep people.toml's values
        assert decide(again, "lobby_in", "em4100", ZED_CARD).granted
        assert decide(again, "lobby_in", "em4100", "0F00B0B0B0").reason.value == "person_inactive"
    finally:
        again.store.close()


def test_reinstate_through_the_pages(client: TestClient, server: Server) -> None:
    csrf = api_login(client, "ada")
    r = client.post("/people/chen/suspend", data={"csrf_token": csrf})
    assert r.headers["location"] == "/people/chen?done=suspended"
    assert "Reinstate" in client.get("/people/chen").text
    assert decide(server, "lobby_in", "ascii", "40012345").reason.value == "person_inactive"
    r = client.post("/people/chen/reinstate", data={"csrf_token": csrf})
    assert r.headers["location"] == "/people/chen?done=reinstated"
    assert decide(server, "lobby_in", "ascii", "40012345").granted
    r = client.post("/people/chen/access", data={"csrf_token": csrf, "clearance": "5", "access_levels": ["staff"]})
    assert r.status_code == 303 and server.directory.site.people["chen"].access_levels == ("staff",)
    assert server.directory.site.people["chen"].clearance == 5


def test_csv_import_reports_each_bad_line_and_imports_nothing(app: FastAPI, client: TestClient,
                                                              server: Server) -> None:
    bad = ("id,name,kind,clearance,access_levels,cards\n"
           "zed,Zed Zimmer,employee,3,staff;lab,em4100:0F00ABCDEF\n"   # 2: fine
           "alice,Alice Again,employee,0,staff,\n"                     # 3: exists in people.toml
           "Bad Id,Someone,employee,0,staff,\n"                        # 4: id
           "yan,Yan,robot,0,staff,\n"                                  # 5: kind
           "\n"                                                        # 6: blank, skipped
           "wu,Wu,employee,0,vault,\n"                                 # 7: level
           "zed,Zed Twice,employee,0,staff,\n"                         # 8: id twice in the file
           "ola,Ola,employee,0,staff,em4100:0F00ABCDEF\n"              # 9: card twice in the file
           "pia,Pia,employee,0,staff,em4100:XYZ\n"                     # 10: card number
           "quy,Quy,employee,12,staff,\n"                              # 11: clearance
           "rae,Rae,employee,0\n"                                      # 12: field count
           "sol,Sol,employee,0,staff,em4100:0F00A1B2C3\n")             # 13: Alice's card
    r = client.post("/api/v1/people/import", headers=admin(app), json={"csv": bad})
    err = assert_json_error(r, 422)
    lines = {e["line"]: e["error"] for e in err["detail"]["errors"]}
    assert sorted(lines) == [3, 4, 5, 7, 8, 9, 10, 11, 12, 13], lines
    assert "already exists" in lines[3] and "lower-case" in lines[4] and "employee or contractor" in lines[5]
    assert "vault" in lines[7] and "'zed' already exists" in lines[8] and "also given to 'zed'" in lines[9]
    assert "10 hex digits" in lines[10] and "0 to 9" in lines[11] and "4 fields" in lines[12]
    assert "already belongs" in lines[13]
    assert "zed" not in server.directory.site.people  # all or nothing: line 2 was fine, and is not imported
    assert server.store.person_row("zed") is None and server.store.card_rows("zed") == []

    header = client.post("/api/v1/people/import", headers=admin(app), json={"csv": "id,fullname\nx,y\n"})
    assert assert_json_error(header, 422)["detail"]["errors"][0]["line"] == 1

    ok = client.post("/api/v1/people/import", headers=admin(app), json={"csv": GOOD_CSV})
    assert ok.status_code == 200 and ok.json() == {"imported": 2, "cards": 2}
    zed = server.directory.site.people["zed"]
    assert (zed.clearance, zed.access_levels) == (3, ("staff", "lab"))
    assert server.directory.site.people["yara"].kind.value == "contractor"
    assert decide(server, "lobby_in", "ascii", "77001234").granted
    assert [a["details"] for a in audit(server, "people.import")] == [{"people": 2, "cards": 2}]


def test_csv_import_page_uploads_a_file_with_csrf_and_lists_errors(client: TestClient, server: Server) -> None:
    csrf = api_login(client, "ada")
    files = {"file": ("people.csv", b"id,name,access_levels\nwu,Wu,vault\n", "text/csv")}
    assert client.post("/people/import", files=files).status_code == 403  # no CSRF token
    r = client.post("/people/import", data={"csrf_token": csrf}, files=files)
    assert r.status_code == 422 and 'id="import-errors"' in r.text
    assert re.search(r'<th scope="row">2</th><td data-label="Problem">no access level &#39;vault&#39;', r.text)
    r = client.post("/people/import", data={"csrf_token": csrf},
                    files={"file": ("people.csv", GOOD_CSV.encode(), "text/csv")})
    assert r.status_code == 303 and r.headers["location"] == "/people?done=imported&n=2"
    assert "Imported 2 people." in client.get(r.headers["location"]).text
    listing = client.get("/people?q=zimm").text
    assert "Zed Zimmer" in listing and "Alice Archer" not in listing
    r = client.post("/people", data={"csrf_token": csrf, "id": "kai", "name": "Kai Kim", "kind": "employee",
                                     "clearance": "0", "access_levels": ["staff"], "card_format": "ascii",
                                     "card_number": "55501234"})
    assert r.status_code == 303 and r.headers["location"] == "/people/kai?done=added"
    assert decide(server, "lobby_in", "ascii", "55501234").granted


@pytest.mark.parametrize("who", ["dex", "aud"])
def test_people_pages_are_not_in_other_roles_navigation(app: FastAPI, client: TestClient, who: str) -> None:
    page = client.get("/", headers=bearer(tokens(app)[who])).text
    assert 'href="/people"' not in page


def test_subject_erase_removes_desk_added_people_and_their_cards(app: FastAPI, client: TestClient, server: Server,
                                                                 clock: FakeClock) -> None:
    assert client.post("/api/v1/people/import", headers=admin(app), json={"csv": GOOD_CSV}).status_code == 200
    card = server.directory.card("em4100", ZED_CARD)
    found = subjects.find(server.directory.bundle, server.store, server.directory.key, "zed")
    assert found.name == "Zed Zimmer" and card in found.card_hashes
    out = subjects.erase(server.directory.bundle, server.store, server.directory.key, "zed", server.audit,
                         now=clock.wall(), actor="dpo")
    assert out["counts"]["people"] == 1 and out["counts"]["cards"] == 2
    assert server.store.person_row("zed") is None and server.store.person_row("yara") is not None
    assert server.store.card_rows("zed") == []
    assert server.people is not None and server.people.poll()  # the running server picks the erasure up
    site = server.directory.site
    assert "zed" not in site.people and card not in site.credentials and "yara" in site.people


def import_many(app: FastAPI, client: TestClient, n: int, prefix: str = "p") -> None:
    rows = "".join(f"{prefix}{i:04d},Person {prefix.upper()} {i:04d},employee,0,staff,\n" for i in range(n))
    r = client.post("/api/v1/people/import", headers=admin(app), json={"csv": "id,name,kind,clearance,access_levels,"
                                                                        "cards\n" + rows})
    assert r.status_code == 200, r.text


def test_the_people_list_pages_by_name_and_the_api_says_how_many_match(app: FastAPI, client: TestClient,
                                                                       server: Server) -> None:
    import_many(app, client, 120)
    everyone = client.get("/api/v1/people?limit=1000", headers=admin(app)).json()
    names = [p["name"] for p in everyone["people"]]
    assert names == sorted(names, key=str.lower) or names == sorted(names)
    assert everyone["total"] == len(names) >= 120
    page = client.get("/api/v1/people?q=person%20p&offset=100&limit=15", headers=admin(app)).json()
    assert (page["total"], page["offset"], page["limit"]) == (120, 100, 15)
    assert [p["id"] for p in page["people"]] == [f"p{i:04d}" for i in range(100, 115)]
    assert client.get("/api/v1/people?limit=1001", headers=admin(app)).status_code == 422

    api_login(client, "ada")  # the page is for a logged-in admin
    first = client.get("/people?q=Person+P")
    assert first.status_code == 200 and "1–50 of 120" in first.text and "Page 1 of 3" in first.text
    assert 'rel="next" href="/people?q=Person%20P&amp;page=2"' in first.text and 'rel="prev"' not in first.text
    last = client.get("/people?q=Person+P&page=3")
    assert "101–120 of 120" in last.text and "p0119" in last.text and "p0000" not in last.text
    assert 'rel="next"' not in last.text and 'rel="prev"' in last.text


def test_the_type_ahead_search_answers_names_for_the_desk_role_without_cards(app: FastAPI, client: TestClient,
                                                                             server: Server) -> None:
    import_many(app, client, 30, prefix="h")
    toks = tokens(app)
    desk = bearer(toks["dex"])
    r = client.get("/api/v1/people/search?q=person%20h%20001&limit=5", headers=desk)
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == 10 and [p["id"] for p in body["people"]] == [f"h{i:04d}" for i in range(10, 15)]
    assert set(body["people"][0]) == {"id", "name"}, "a picker needs no cards, levels or clearance"
    alice = client.get("/api/v1/people/search?q=ALICE", headers=desk).json()["people"]
    assert [p["id"] for p in alice] == ["alice"]
    assert client.get("/api/v1/people/search?q=a", headers=bearer(toks["aud"])).status_code == 403
    assert client.get("/api/v1/people/search?q=" + "x" * 101, headers=desk).status_code == 422
