""""Why not?" over HTTP (server/web/why.py, server/why.py): a stored refusal explained on the site revision in
force at the badge, the event's page with its ``#why`` section, and who may read them.

A real server on the demo site (the visitor tests' fixtures); events enter through the bus's store-thread entry
point as an MQTT delivery would, and a later site revision is committed through the site administration.
"""

from __future__ import annotations

import warnings


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock, iso_ms
from doorkeep.credentials import card_hash
from doorkeep.decision import AccessRequest, Reason
from server.app import Server
from tests.unit import test_desk_visitors as visitor_tests
from tests.unit.test_desk_live import event, ingest
from tests.unit.test_desk_visitors import assert_error, login

clock, server, app, client = visitor_tests.clock, visitor_tests.server, visitor_tests.app, visitor_tests.client

BOB_CARD = "0F00B0B0B0"  # Bob Baker: level "Staff: building" only (doorkeep/sites/demo/people.toml)


def refused_badge(server: Server, clock: FakeClock, eid: str = "ev-bob", seq: int = 1) -> str:
    """Bob badges at the Floor 7 lab, is refused by decide() itself, and the event is stored."""
    h = card_hash(server.directory.key, "em4100", BOB_CARD)
    decision = server.directory.decide(AccessRequest("lab", h))
    assert decision.reason is Reason.NO_ACCESS
    ingest(server, event(eid, seq, door="lab", decision="denied", reason=decision.reason.value, person="bob",
                         credential_hash=h, credential_last4="B0B0", ts=iso_ms(clock.wall())))
    return eid


def test_a_refused_badge_is_explained_with_names_on_the_revision_in_force(client: TestClient, server: Server,
                                                                          clock: FakeClock) -> None:
    login(client, "dex")
    clock.advance(60)
    eid = refused_badge(server, clock)
    r = client.get(f"/api/v1/events/{eid}/why")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["refused"] is True and body["event_url"] == f"/events/{eid}"
    ex = body["explanation"]
    assert ex["reason"] == "no_access" and ex["reason_label"] == "No access to this area"
    assert ex["summary"] == ("Bob Baker's levels do not include Floor 7; the 'Lab team: floor 7 in business hours' "
                             "level does.")
    assert ex["rule"] == "access level and schedule" and ex["would_allow"] and ex["notes"] == []
    assert body["site_revision"] == 1 and "still live" in body["basis"]
    assert "bob" not in ex["summary"] and "floor7" not in ex["summary"]  # names, never ids


def test_after_a_site_change_the_badge_is_explained_on_the_site_as_it_was(client: TestClient, server: Server,
                                                                         clock: FakeClock) -> None:
    login(client, "dex")
    clock.advance(60)
    eid = refused_badge(server, clock)
    clock.advance(3600)
    admin = server.siteadmin
    assert admin is not None
    live = admin.current()
    assert live is not None
    renamed = live.site_toml.replace('name = "Floor 7"', 'name = "Research floor"')
    admin.commit(renamed, base=live.number, actor="test", summary="rename floor 7")
    assert server.site.areas["floor7"].name == "Research floor"

    login(client, "dex")  # an hour later: the session idled out
    r = client.get(f"/api/v1/events/{eid}/why")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["site_revision"] == 1
    assert "in force at that moment" in body["basis"] and "revision 2" in body["basis"]
    assert "include Floor 7;" in body["explanation"]["summary"]  # the area's name then, not now


def test_an_event_before_any_revision_is_explained_on_the_current_site_and_says_so(client: TestClient,
                                                                                  server: Server,
                                                                                  clock: FakeClock) -> None:
    login(client, "dex")
    h = card_hash(server.directory.key, "em4100", BOB_CARD)
    ingest(server, event("ev-old", 1, door="lab", decision="denied", reason="no_access", person="bob",
                         credential_hash=h, ts=iso_ms(clock.wall() - 86400)))
    body = client.get("/api/v1/events/ev-old/why").json()
    assert body["site_revision"] is None and body["basis"].startswith("Explained on the current site")
    assert body["explanation"]["summary"].startswith("Bob Baker's levels do not include Floor 7")


def test_a_granted_badge_has_nothing_to_explain(client: TestClient, server: Server) -> None:
    login(client, "dex")
    ingest(server, event("ev-ok", 1))
    body = client.get("/api/v1/events/ev-ok/why").json()
    assert body["refused"] is False and body["explanation"] is None


def test_why_is_for_the_roles_that_see_events(client: TestClient, server: Server, clock: FakeClock) -> None:
    eid = refused_badge(server, clock)
    assert_error(client.get(f"/api/v1/events/{eid}/why"), 401, "not logged in")
    login(client, "aud")
    assert client.get(f"/api/v1/events/{eid}/why").status_code == 403
    assert client.get(f"/events/{eid}").status_code == 403
    login(client, "ada")
    assert client.get(f"/api/v1/events/{eid}/why").status_code == 200


def test_an_unknown_event_is_a_404(client: TestClient) -> None:
    login(client, "dex")
    assert_error(client.get("/api/v1/events/nope/why"), 404, "no event 'nope'")
    assert client.get("/events/nope").status_code == 404


def test_the_event_page_shows_the_sentence_in_its_why_section(client: TestClient, server: Server,
                                                             clock: FakeClock) -> None:
    login(client, "dex")
    eid = refused_badge(server, clock)
    r = client.get(f"/events/{eid}")
    assert r.status_code == 200, r.text
    html = r.text
    assert '<section id="why"' in html
    assert "Bob Baker&#39;s levels do not include Floor 7" in html
    assert "What would have let them through" in html and "Floor 7 lab" in html


def test_the_live_row_of_a_refusal_links_to_its_why(client: TestClient, server: Server, clock: FakeClock) -> None:
    login(client, "dex")
    eid = refused_badge(server, clock)
    rows = client.get("/api/v1/events?decision=denied").json()["events"]
    assert rows[0]["id"] == eid and rows[0]["why_url"] == f"/events/{eid}#why"




def test_the_event_page_names_who_passed_with_a_grant_and_its_rule(client: TestClient, server: Server) -> None:
    """An offline escorted grant: the page says who passed with the badge and by which rule, and a turnstile's
    passage links back to the badge it used (docs/openings.md)."""
    login(client, "dex")
    ingest(server, event("ev-esc", 1, reason="granted_offline", decided_by="edge_offline", person="alice",
                         companions=("bob",), grant="granted_escorted"))
    html = client.get("/events/ev-esc").text
    assert "<dt>With</dt><dd>Bob Baker" in html
    assert "<dt>Rule</dt><dd>Granted with an escort" in html
    row = client.get("/api/v1/events?decision=granted").json()["events"][0]
    assert row["companions"] == ["Bob Baker"] and row["grant_label"] == "Granted with an escort"

    ingest(server, event("ev-pass", 2, door="gate_in", type="passage", decision=None, reason=None, person=None,
                         credential_hash=None, credential_last4=None, transaction=None, snapshot=None,
                         latency_ms=None, detail={"grant": "ev-esc"}))
    assert '<a href="/events/ev-esc">the badge used</a>' in client.get("/events/ev-pass").text
    plain = client.get("/events/ev-esc")
    assert plain.status_code == 200
    ingest(server, event("ev-alone", 3))
    alone = client.get("/events/ev-alone").text
    assert "<dt>With</dt>" not in alone and "<dt>Rule</dt>" not in alone


def test_a_refusal_at_the_lift_is_explained_for_the_floor_it_is_about(client: TestClient, server: Server,
                                                                      clock: FakeClock) -> None:
    """A lift has no to_area: the words name the floor (here the one asked for before the badge)."""
    login(client, "dex")
    clock.advance(60)
    h = card_hash(server.directory.key, "em4100", BOB_CARD)
    decision = server.directory.decide(AccessRequest("lift", h, floor="floor7"))
    assert decision.reason is Reason.NO_ACCESS
    ingest(server, event("ev-lift", 1, door="lift", device="pi-floor7", decision="denied", reason="no_access",
                         person="bob", credential_hash=h, credential_last4="B0B0", ts=iso_ms(clock.wall()),
                         detail={"floor": "floor7"}))
    ex = client.get("/api/v1/events/ev-lift/why").json()["explanation"]
    assert ex["summary"] == ("Bob Baker's levels do not include Floor 7; the 'Lab team: floor 7 in business hours' "
                             "level does.")
    assert any("destination dispatch" in n for n in ex["notes"])
    page = client.get("/events/ev-lift").text
    assert "Bob Baker&#39;s levels do not include Floor 7" in page or "Bob Baker's levels do not include Floor 7" in page
    assert "<dt>Floor asked for</dt><dd>Floor 7" in page

    # Without a floor asked for, the recorded reason picks the floor that gives it: Bob may reach the lobby and the
    # office, and only Floor 7 refuses him for want of a level (the site would grant the badge now: a note says so).
    ingest(server, event("ev-lift2", 2, door="lift", device="pi-floor7", decision="denied", reason="no_access",
                         person="bob", credential_hash=h, credential_last4="B0B0", ts=iso_ms(clock.wall())))
    ex = client.get("/api/v1/events/ev-lift2/why").json()["explanation"]
    assert ex["summary"].startswith("Bob Baker's levels do not include Floor 7;"), ex["summary"]
    assert any("would give" in n for n in ex["notes"]) and any("This explains Floor 7" in n for n in ex["notes"])
