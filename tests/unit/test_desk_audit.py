"""The audit page and its API (server/web/audit.py, server/store_audit.py ``audit_search``): each filter finds
exactly the records it names, a person is found by id although the log holds only their pseudonym, bad filters
answer 422 naming the parameter, and a tampered chain shows as broken in ``/api/v1/audit/verify`` and on the
page.

Records are made by real actions over HTTP (a visitor registered by the desk operator, a card reported lost by
the admin) and through the site service (``server.siteadmin.change``). Real server on the demo site, real SQLite
store, FastAPI's TestClient.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import server.store_audit as store_audit
from doorkeep.clock import FakeClock, iso_ms
from server.app import Server
from server.audit import VERIFY_MAX_AGE_S, subject_ref
from server.web.audit import FilterError, parse_when
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

ALICE_CARD = ("em4100", "0F00A1B2C3")  # Alice's card on the demo site


def search(client: TestClient, token: str, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/api/v1/audit", params={"limit": 500, **params}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return list(r.json()["records"])


def make_history(app: FastAPI, client: TestClient, server: Server, clock: FakeClock) -> dict[str, Any]:
    """Three real actions an hour apart: dex registers a visitor, ada reports Alice's card lost, ada changes
    the site. Returns the times between them and the visitor's id."""
    t = tokens(app)
    start = clock.wall()
    visit = {"name": "Grace Hopper", "company": "Navy Labs", "host": "alice", "allowed_areas": ["lobby"],
             "valid_from": iso_ms(start + 600)[:19], "valid_until": iso_ms(start + 8 * 3600)[:19]}
    r = client.post("/api/v1/visitors", json=visit, headers=bearer(t["dex"]))
    assert r.status_code == 201, r.text
    visitor = r.json()["visitor"]["id"]
    clock.advance(3600)
    card = server.directory.card(*ALICE_CARD)
    assert client.post(f"/api/v1/cards/{card}/lost", headers=bearer(t["ada"])).status_code == 200
    clock.advance(3600)
    assert server.siteadmin is not None
    server.siteadmin.change({"doors.lab.unlock_s": 7}, base=1, actor="desk:ada", summary="slower lab door")
    return {"tokens": t, "start": start, "visitor": visitor}


def tamper(server: Server, seq: int) -> None:
    """Change a stored record behind the application's back, as someone with the disk in hand could."""
    db = sqlite3.connect(server.store.dir / "doorkeep.db", isolation_level=None)
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = ?", [seq])
    db.close()


# ------------------------------------------------------------------ search


def test_actor_filter_finds_only_what_that_operator_did_including_their_site_changes(
        app: FastAPI, client: TestClient, server: Server, clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    aud = h["tokens"]["aud"]
    assert [r["action"] for r in search(client, aud, actor="dex")] == ["visitor.register"]
    ada = search(client, aud, actor="ada")
    assert [(r["actor"], r["action"]) for r in ada] == [("desk:ada", "site.revision"), ("ada", "card.lost")]
    assert [r["action"] for r in search(client, aud, actor="desk:ada")] == ["site.revision"]  # exact when qualified
    assert search(client, aud, actor="nobody") == []


def test_action_filter_is_exact_or_a_prefix_ending_in_a_dot(app: FastAPI, client: TestClient, server: Server,
                                                            clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    aud = h["tokens"]["aud"]
    [lost] = search(client, aud, action="card.lost")
    assert (lost["actor"], lost["target"]) == ("ada", subject_ref(server.directory.key, "alice"))
    visitor = search(client, aud, action="visitor.")
    assert visitor and all(r["action"].startswith("visitor.") for r in visitor)
    assert "visitor.register" in {r["action"] for r in visitor}
    assert search(client, aud, action="visitor") == []  # no dot: an exact action, and there is none by that name
    operators = search(client, aud, action="operator.")
    everything = search(client, aud)
    assert {r["seq"] for r in operators} == {r["seq"] for r in everything if r["action"].startswith("operator.")}
    assert [r["action"] for r in search(client, aud, actor="ada", action="card.lost")] == ["card.lost"]
    assert search(client, aud, actor="dex", action="card.lost") == []


def test_subject_filter_finds_a_person_by_id_although_the_log_holds_only_their_pseudonym(
        app: FastAPI, client: TestClient, server: Server, clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    aud = h["tokens"]["aud"]
    alice = search(client, aud, subject="alice")
    assert [r["action"] for r in alice] == ["card.lost"]
    assert all("alice" not in str(r) for r in alice)  # the answer names the pseudonym, never the id
    ref = subject_ref(server.directory.key, "alice")
    assert [r["seq"] for r in search(client, aud, subject=ref)] == [alice[0]["seq"]]  # the ref itself works too
    assert [r["action"] for r in search(client, aud, subject=h["visitor"])] == ["visitor.register"]
    assert [r["action"] for r in search(client, aud, subject="revision 2")] == ["site.revision"]
    assert [r["action"] for r in search(client, aud, subject="dex")] == ["operator.token_issue", "operator.add"]
    assert search(client, aud, subject="bob") == []


def test_time_filters_take_iso_or_epoch_since_inclusive_until_exclusive(app: FastAPI, client: TestClient,
                                                                         server: Server, clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    aud, start = h["tokens"]["aud"], h["start"]
    middle = search(client, aud, since=iso_ms(start + 1800), until=iso_ms(start + 5400))
    assert [r["action"] for r in middle] == ["card.lost"]
    assert [r["action"] for r in search(client, aud, since=str(int(start + 3600)), until=str(int(start + 5400)))] \
        == ["card.lost"]  # epoch seconds; the lost card was recorded exactly at start + 3600
    assert search(client, aud, since=str(int(start + 1800)), until=str(int(start + 3600))) == []
    last = search(client, aud, since=iso_ms(start + 5400).replace("Z", "+00:00"))
    assert [r["action"] for r in last] == ["site.revision"]
    before_any = search(client, aud, until=iso_ms(start - 1))
    assert before_any == []


def test_a_time_without_an_offset_is_read_in_the_sites_time_zone() -> None:
    assert parse_when("since", "2026-07-01T10:00", "Europe/London") == "2026-07-01T09:00:00.000Z"  # BST
    assert parse_when("since", "2026-07-01 10:00", "UTC") == "2026-07-01T10:00:00.000Z"
    assert parse_when("since", "2026-12-01", "Europe/Paris") == "2026-11-30T23:00:00.000Z"
    assert parse_when("until", "1796029200", "Europe/Paris") == "2026-11-30T09:00:00.000Z"
    for bad in ("yesterday", "-5", "1e400", "99999999999999", "10000-01-01", "2026-13-01", "nan"):
        with pytest.raises(FilterError):
            parse_when("since", bad, "UTC")


def test_pages_of_a_filtered_search_continue_with_the_same_filter(app: FastAPI, client: TestClient,
                                                                  server: Server, clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    aud = h["tokens"]["aud"]
    wanted = [r["seq"] for r in search(client, aud, action="operator.")]
    assert len(wanted) >= 4
    seen: list[int] = []
    before = None
    while True:
        params: dict[str, Any] = {"action": "operator.", "limit": 2, **({"before": before} if before else {})}
        body = client.get("/api/v1/audit", params=params, headers=bearer(aud)).json()
        seen += [r["seq"] for r in body["records"]]
        before = body["next_before"]
        if before is None:
            break
    assert seen == wanted


@pytest.mark.parametrize("params, param", [
    ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-40"}, "until"),
    ({"since": "2026-12-01", "until": "2026-11-30"}, "until"),
    ({"since": "1e400"}, "since"),
    ({"action": "Card.Lost"}, "action"),
    ({"action": "card..lost"}, "action"),
    ({"actor": "ada smith"}, "actor"),
    ({"subject": "alice\x01"}, "subject"),
    ({"subject": "x" * 201}, "subject"),
    ({"since": "2" * 41}, "since"),
], ids=["words", "bad-date", "until-before-since", "huge-epoch", "upper-case-action", "empty-action-part",
        "actor-with-space", "control-char", "long-subject", "long-time"])
def test_a_bad_filter_answers_422_naming_the_parameter_never_500(app: FastAPI, client: TestClient,
                                                                 params: dict[str, str], param: str) -> None:
    r = client.get("/api/v1/audit", params=params, headers=bearer(tokens(app)["aud"]))
    body = assert_json_error(r, 422)
    assert param in body["error"] or param in str(body["detail"]), body


def test_store_action_prefix_is_compared_as_text_not_as_a_like_pattern_and_limit_is_bounded(
        server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    assert server.audit is not None
    server.audit.record("system", "door_x.unlock", "d1")
    server.audit.record("system", "doorzx.unlock", "d2")  # '_' would match 'z' in a LIKE pattern
    assert [r.target for r in server.store.audit_search(action="door_x.")] == ["d1"]
    monkeypatch.setattr(store_audit, "AUDIT_SEARCH_MAX", 1)
    assert len(server.store.audit_search(limit=10_000)) == 1
    assert len(server.store.audit_search(limit=0)) == 1  # bounded below too: never an unbounded "LIMIT -1"
    assert server.store.audit_search(target=()) == []


# ------------------------------------------------------------------ verify


def test_verify_reports_an_intact_chain_to_auditors_and_admins(app: FastAPI, client: TestClient, server: Server,
                                                                clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    count = len(search(client, h["tokens"]["aud"]))
    for name in ("aud", "ada"):
        body = client.get("/api/v1/audit/verify", headers=bearer(h["tokens"][name])).json()
        assert (body["ok"], body["records"], body["first_bad"], body["problem"]) == (True, count, None, None)
        assert body["checked_at"] == iso_ms(clock.wall())
    assert_json_error(client.get("/api/v1/audit/verify", headers=bearer(h["tokens"]["dex"])), 403)


def test_a_tampered_record_shows_as_broken_in_the_api_and_on_the_page(app: FastAPI, client: TestClient,
                                                                      server: Server, clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    [lost] = search(client, h["tokens"]["aud"], action="card.lost")
    tamper(server, lost["seq"])
    body = client.get("/api/v1/audit/verify", headers=bearer(h["tokens"]["aud"])).json()
    assert (body["ok"], body["first_bad"], body["problem"]) == (False, lost["seq"], "changed")
    assert body["records"] == lost["seq"] - 1 and "changed" in body["message"]
    page = client.get("/audit", headers=bearer(h["tokens"]["aud"]))
    assert page.status_code == 200
    assert f"Chain broken at record {lost['seq']}: changed" in page.text and "Chain intact" not in page.text


def test_verify_result_is_reused_for_a_short_time_then_walked_again(app: FastAPI, client: TestClient,
                                                                    server: Server, clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    aud = bearer(h["tokens"]["aud"])
    first = client.get("/api/v1/audit/verify", headers=aud).json()
    assert first["ok"] and first["max_age_s"] == VERIFY_MAX_AGE_S
    tamper(server, 2)
    clock.advance(VERIFY_MAX_AGE_S - 1)
    assert client.get("/api/v1/audit/verify", headers=aud).json() == first  # the documented cache window
    clock.advance(2)
    again = client.get("/api/v1/audit/verify", headers=aud).json()
    assert (again["ok"], again["first_bad"]) == (False, 2) and again["checked_at"] == iso_ms(clock.wall())


# ------------------------------------------------------------------ page


def test_the_page_shows_the_chain_intact_and_finds_a_lost_card_with_its_details_folded(
        app: FastAPI, client: TestClient, server: Server, clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    aud = bearer(h["tokens"]["aud"])
    count = len(search(client, h["tokens"]["aud"]))
    page = client.get("/audit", headers=aud)
    assert page.status_code == 200
    assert f"Chain intact:</strong> {count} records, verified at" in page.text
    found = client.get("/audit", params={"action": "card.lost", "subject": "alice"}, headers=aud).text
    [lost] = search(client, h["tokens"]["aud"], action="card.lost")
    assert f'id="record-{lost["seq"]}"' in found and found.count('<tr id="record-') == 1
    card = server.directory.card(*ALICE_CARD)
    assert "<details><summary>4 fields</summary>" in found and card[:12] in found  # the card's pseudonymous id
    assert 'value="card.lost"' in found and 'value="alice"' in found  # the form keeps what was asked
    assert "alice" not in found.split('id="audit-records"')[1]  # the results name only the pseudonym


def test_the_page_explains_a_bad_filter_and_pages_older_records_with_the_same_filter(
        app: FastAPI, client: TestClient, server: Server, clock: FakeClock) -> None:
    h = make_history(app, client, server, clock)
    aud = bearer(h["tokens"]["aud"])
    bad = client.get("/audit", params={"from": "last tuesday"}, headers=aud)
    assert bad.status_code == 422 and "since is not a time" in bad.text and "Chain intact" in bad.text
    for i in range(55):
        server.audit.record("system", "door.unlock", f"door{i}")  # type: ignore[union-attr]
    first = client.get("/audit", params={"action": "door.unlock"}, headers=aud).text
    assert first.count('<tr id="record-') == 50
    older = first.split('href="')[-1].split('" rel="next"')[0].replace("&amp;", "&")
    assert older.startswith("/audit?action=door.unlock&before=")
    rest = client.get(older, headers=aud).text
    assert rest.count('<tr id="record-') == 5 and 'rel="next"' not in rest


def test_a_search_that_matches_nothing_says_so(app: FastAPI, client: TestClient,
                                                                                 server: Server) -> None:
    page = client.get("/audit", params={"actor": "nobody"}, headers=bearer(tokens(app)["aud"]))
    assert page.status_code == 200 and "No record matches." in page.text

