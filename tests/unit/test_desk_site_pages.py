"""The desk's admin pages for the site model (server/web/site_pages.py, issue 13): areas, doors, schedules with
their week grid, and the access-level matrix, created, edited and deleted from forms; each save is a site
revision live in the server's decisions at once; a broken rule answers 422 with every problem beside the kept
input; a stale edit answers 409 saying who changed what; deleting asks first; only an admin changes anything.

Real parts: a real ``Server`` on a copy of the demo site (so a test may wire a new door into a device file)
with a real SQLite store, real argon2id hashes (cheap parameters), the real app through TestClient.
"""

from __future__ import annotations

import html
import re
import secrets
import shutil
import warnings
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.envelope import SnapshotKeys
from server.app import Server, bootstrap
from server.siteadmin import SiteAdmin
from server.web.site_forms import week_grid
from tests.unit.test_desk_api import (  # noqa: F401 - fixtures, used by name
    DEMO,
    api_login,
    app,
    bearer,
    clock,
    hasher,
    tokens,
)

#: The hardware of a store-room door on a new Pi: the installer's part, written before the admin adds the door.
STORE_PI = """device = "pi-store"
site = "demo"
gpio_factory = "mock"

[doors.store_in]
reader = { url = "/dev/null", protocol = "em4100" }
lock = { pin = 5 }
"""


@pytest.fixture
def server(tmp_path: Path, clock: FakeClock) -> Iterator[Server]:  # noqa: F811 - replaces test_desk_api's
    site_dir = tmp_path / "site"
    shutil.copytree(DEMO, site_dir, ignore=shutil.ignore_patterns("keys", "pki"))
    srv = bootstrap(load_site_dir(site_dir), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                    key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                    snapshot_keys=SnapshotKeys.generate(), clock=clock)
    yield srv
    srv.store.close()


def session(app: FastAPI, name: str = "ada") -> tuple[TestClient, str]:  # noqa: F811
    """A browser logged in as ``name`` and its CSRF token."""
    c = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
    return c, api_login(c, name)


def siteadmin(server: Server) -> SiteAdmin:
    assert server.siteadmin is not None
    return server.siteadmin


def live(server: Server) -> int:
    current = siteadmin(server).current()
    assert current is not None
    return current.number


def form_of(page: str, action: str) -> dict[str, str]:
    """The named inputs and selected options of the form posting to ``action``, as the browser would send them."""
    m = re.search(rf'<form method="post" action="{re.escape(action)}"(.*?)</form>', page, re.DOTALL)
    assert m, f"no form posting to {action}"
    body = m.group(1)
    out = {n: html.unescape(v) for n, v in re.findall(r'<input[^>]*? name="([^"]+)"[^>]*? value="([^"]*)"', body)
           if 'type="checkbox"' not in n}
    for tag in re.findall(r"<input[^>]*>", body):
        name = re.search(r'name="([^"]+)"', tag)
        if name and 'type="checkbox"' in tag:
            out.pop(name.group(1), None)
            if " checked" in tag:
                out[name.group(1)] = "on"
    for name, options in re.findall(r'<select[^>]*? name="([^"]+)"[^>]*>(.*?)</select>', body, re.DOTALL):
        chosen = re.search(r'<option value="([^"]*)" selected', options)
        out[name] = chosen.group(1) if chosen else ""
    return out


def status_text(page: str) -> str:
    m = re.search(r'role="status">([^<]*)<', page)
    return html.unescape(m.group(1)) if m else ""


def alerts(page: str) -> str:
    """The text of the page's alerts, tags dropped and spaces collapsed."""
    text = " ".join(re.findall(r'role="alert"[^>]*>(.*?)</div>', page, re.DOTALL))
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", text)).split())


# ------------------------------------------------------------------ areas and doors


def test_an_admin_adds_an_area_then_a_door_into_it_each_a_revision_live_at_once(app: FastAPI, server: Server) -> None:  # noqa: F811
    c, csrf = session(app)
    page = c.get("/site/areas")
    assert page.status_code == 200 and 'id="area-floor7"' in page.text
    fields = form_of(page.text, "/site/areas") | {"id": "store", "name": "Store room", "restricted": "on",
                                                  "clearance": "2", "action": "save"}
    assert fields["base"] == "1" and fields["csrf_token"] == csrf
    r = c.post("/site/areas", data=fields)
    assert r.status_code == 303 and r.headers["location"].startswith("/site/areas?saved=2")
    assert "Saved as revision 2" in status_text(c.get(r.headers["location"]).text)
    area = server.site.areas["store"]
    assert (area.name, area.restricted, area.clearance) == ("Store room", True, 2)
    fields = form_of(c.get("/site/areas/store").text, "/site/areas/store")
    r = c.post("/site/areas/store", data=fields | {"clearance": "12", "action": "save"})
    assert r.status_code == 422 and "areas.store.clearance: must be 0-9, got 12" in alerts(r.text)
    assert form_of(r.text, "/site/areas/store")["clearance"] == "12" and live(server) == 2

    (server.directory.bundle.dir / "devices" / "pi-store.toml").write_text(STORE_PI)  # the installer wired it
    page = c.get("/site/doors").text
    fields = form_of(page, "/site/doors") | {"id": "store_in", "name": "Store room door", "from": "lobby",
                                             "to": "store", "unlock_s": "3", "offline": "cache", "action": "save"}
    r = c.post("/site/doors", data=fields)
    assert r.status_code == 303 and r.headers["location"].startswith("/site/doors?saved=3"), r.text
    door = server.site.doors["store_in"]
    assert (door.from_area, door.to_area, door.unlock_s, door.offline.value) == ("lobby", "store", 3, "cache")
    rev = siteadmin(server).revision(3)
    assert rev.actor == "desk:ada" and "+ doors.store_in.to = \"store\"" in rev.changes
    assert "[[" not in rev.site_toml  # written as site.toml writes tables, not appended arrays of tables


def test_editing_a_door_sends_only_what_changed_and_an_emptied_field_falls_back_to_its_default(
        app: FastAPI, server: Server) -> None:  # noqa: F811
    c, _ = session(app)
    fields = form_of(c.get("/site/doors/lab").text, "/site/doors/lab")
    assert (fields["unlock_s"], fields["offline"], fields["from"]) == ("4", "deny", "lobby")
    r = c.post("/site/doors/lab", data=fields | {"unlock_s": "7", "action": "save"})
    assert r.status_code == 303
    assert siteadmin(server).revision(2).changes == ("~ doors.lab.unlock_s: 4 -> 7",)
    assert server.site.doors["lab"].unlock_s == 7
    fields = form_of(c.get("/site/doors/lab").text, "/site/doors/lab")
    r = c.post("/site/doors/lab", data=fields | {"held_open_s": "", "pin_required": "on", "action": "save"})
    assert r.status_code == 303
    assert set(siteadmin(server).revision(3).changes) == {"- doors.lab.held_open_s (was 15)",
                                                          "+ doors.lab.pin_required = true"}
    assert (server.site.doors["lab"].held_open_s, server.site.doors["lab"].pin_required) == (30.0, True)
    r = c.post("/site/doors/lab", data=form_of(c.get("/site/doors/lab").text, "/site/doors/lab") | {"action": "save"})
    assert r.headers["location"] == "/site/doors?unchanged=3" and live(server) == 3  # nothing changed: no revision


def test_a_broken_rule_answers_422_with_each_problem_beside_the_operators_input_and_changes_nothing(
        app: FastAPI, server: Server) -> None:  # noqa: F811
    c, _ = session(app)
    fields = form_of(c.get("/site/doors/lab").text, "/site/doors/lab")
    r = c.post("/site/doors/lab", data=fields | {"unlock_s": "0", "held_open_s": "abc", "name": "Lab (new name)",
                                                 "action": "save"})
    assert r.status_code == 422
    said = alerts(r.text)
    assert "doors.lab.unlock_s" in said and "at most 3600" in said and "doors.lab.held_open_s" in said
    assert "Fix:" in said
    kept = form_of(r.text, "/site/doors/lab")
    assert (kept["unlock_s"], kept["held_open_s"], kept["name"]) == ("0", "abc", "Lab (new name)")
    assert 'id="door-unlock_s-error"' in r.text and 'aria-describedby="door-unlock_s-hint door-unlock_s-error"' in r.text
    assert live(server) == 1 and server.site.doors["lab"].unlock_s == 4

    # a new door on no device: config check's own words, naming the file to add it to
    fields = form_of(c.get("/site/doors").text, "/site/doors")
    r = c.post("/site/doors", data=fields | {"id": "attic_in", "from": "lobby", "to": "floor7", "action": "save"})
    assert r.status_code == 422 and "door is on no device" in alerts(r.text)
    assert form_of(r.text, "/site/doors")["id"] == "attic_in"
    for bad, said in (("has space", "not a valid identifier"), ("lab", "already exists"), ("", "the id is missing")):
        r = c.post("/site/doors", data=fields | {"id": bad, "from": "lobby", "to": "floor7", "action": "save"})
        assert r.status_code == 422 and said in alerts(r.text), (bad, alerts(r.text))
    assert live(server) == 1


def test_a_stale_edit_answers_409_saying_who_changed_what_and_keeps_the_input_for_the_newest_revision(
        app: FastAPI, server: Server) -> None:  # noqa: F811
    c, _ = session(app)
    mine = form_of(c.get("/site/doors/lab").text, "/site/doors/lab")  # rendered at revision 1
    siteadmin(server).change({"doors.lab.held_open_s": 25}, base=1, actor="desk:bea", summary="longer lab hold")
    r = c.post("/site/doors/lab", data=mine | {"unlock_s": "9", "action": "save"})
    assert r.status_code == 409
    said = alerts(r.text)
    assert "Revision 2 by desk:bea: longer lab hold" in said and "doors.lab" in said
    kept = form_of(r.text, "/site/doors/lab")
    assert kept["unlock_s"] == "9" and kept["base"] == "2"  # saving again applies it to the newest revision
    assert server.site.doors["lab"].unlock_s == 4
    r = c.post("/site/doors/lab", data=kept | {"action": "save"})
    assert r.status_code == 303 and server.site.doors["lab"].unlock_s == 9
    # kept input is the operator's: their held-open (15, as they saw it) overwrites bea's 25 only because they
    # saw the message and saved again; an edit of another object made on the old page goes through re-based
    assert live(server) == 3
    other = form_of(c.get("/site/areas/lobby").text, "/site/areas/lobby") | {"base": "1", "name": "Main lobby",
                                                                             "action": "save"}
    assert c.post("/site/areas/lobby", data=other).status_code == 303 and server.site.areas["lobby"].name == "Main lobby"


# ------------------------------------------------------------------ schedules


def test_a_schedule_is_saved_row_by_row_with_holidays_and_shown_as_a_week_grid(app: FastAPI, server: Server) -> None:  # noqa: F811
    c, _ = session(app)
    fields = form_of(c.get("/site/schedules").text, "/site/schedules")
    assert fields["rows"] == "2"  # an empty schedule form offers two blank rows
    data: dict[str, Any] = fields | {"id": "nights", "name": "Night shift", "start-0": "22:00", "end-0": "06:00",
                                     "start-1": "", "end-1": "", "holiday": ["2026-12-24", ""], "action": "save",
                                     "days-0": ["fri", "mon"]}
    r = c.post("/site/schedules", data=data)
    assert r.status_code == 303, alerts(r.text)
    nights = server.site.schedules["nights"]
    [window] = nights.windows
    assert (sorted(window.days), window.start.isoformat(), window.end.isoformat() if window.end else None) == \
        (["fri", "mon"], "22:00:00", "06:00:00")
    assert [h.isoformat() for h in nights.holidays] == ["2026-12-24"]
    text = siteadmin(server).revision(2).site_toml
    assert 'windows = [{days = ["mon", "fri"], start = "22:00", end = "06:00"}]' in text
    assert "holidays = [2026-12-24]" in text

    page = c.get("/site/schedules/nights").text
    assert "Europe/London" in page
    grid = re.search(r'<table class="week-grid" id="grid-form">(.*?)</table>', page, re.DOTALL)
    assert grid
    rows = {m.group(1): re.findall(r'class="cell-(\w+)"[^>]*><span class="visually-hidden">([^<]*)<', m.group(2))
            for m in re.finditer(r'<abbr title="(\w+)">.*?</th>(.*?)</tr>', grid.group(1), re.DOTALL)}
    assert rows["Friday"][22] == ("open", "open") and rows["Friday"][21] == ("closed", "closed")
    assert rows["Saturday"][5] == ("open", "open") and rows["Saturday"][6] == ("closed", "closed")  # past midnight
    assert all(state == "closed" for state, _ in rows["Wednesday"])

    # a row with times but no day, and a date that is not one: refused here, input kept
    fields = form_of(page, "/site/schedules/nights")
    r = c.post("/site/schedules/nights", data=fields | {"days-0": [], "start-1": "07:00", "end-1": "09:00",
                                                        "days-1": ["sat"], "holiday": ["2026-02-30"], "action": "save"})
    assert r.status_code == 422
    said = alerts(r.text)
    assert "schedules.nights.windows[0].days" in said and "no day is ticked" in said and "'2026-02-30' is not a date" in said
    assert 'name="start-1" value="07:00"' in r.text and live(server) == 2
    # a time config cannot read: its own message
    r = c.post("/site/schedules/nights", data=fields | {"days-0": ["fri"], "end-0": "25:00", "action": "save"})
    assert r.status_code == 422 and "schedules.nights.windows[0].end" in alerts(r.text)


def test_the_week_grid_says_in_words_which_part_of_an_hour_is_open() -> None:
    rows = {r.day: r.cells for r in week_grid([{"days": ["mon"], "start": "07:30", "end": "19:00"},
                                               {"days": ["sun"], "start": "23:15", "end": "00:45"}])}
    assert (rows["mon"][7].state, rows["mon"][7].text) == ("part", "open 07:30–08:00")
    assert [c.state for c in rows["mon"][8:19]] == ["open"] * 11 and rows["mon"][19].state == "closed"
    assert rows["sun"][23].text == "open 23:15–24:00" and rows["mon"][0].text == "open 00:00–00:45"  # wraps the week
    assert all(c.state == "open" for c in week_grid([{"days": ["tue"], "start": "00:00", "end": "24:00"}])[1].cells)


# ------------------------------------------------------------------ access levels


def test_saving_a_level_row_of_the_matrix_changes_only_that_levels_entries(app: FastAPI, server: Server) -> None:  # noqa: F811
    c, _ = session(app)
    page = c.get("/site/levels").text
    assert re.search(r'<tr id="access-level-lab".*?name="cell-floor7" form="level-lab">.*?'
                     r'<option value="business_hours" selected>', page, re.DOTALL)
    m = re.search(r'<form id="level-lab" method="post" action="/site/levels/lab".*?</form>', page, re.DOTALL)
    assert m and 'name="base" value="1"' in m.group(0)
    data = {"csrf_token": api_login(c, "ada"), "base": "1", "name": "Lab team: floor 7 in business hours",
            "cell-outside": "", "cell-lobby": "always", "cell-floor7": "always", "action": "save"}
    r = c.post("/site/levels/lab", data=data)
    assert r.status_code == 303, alerts(r.text)
    [line] = siteadmin(server).revision(2).changes
    assert line.startswith("~ access_levels.lab.entries: ")
    entries = {(e.area, e.schedule) for e in server.site.access_levels["lab"].entries}
    assert entries == {("lobby", "always"), ("floor7", "always")}
    assert {(e.area, e.schedule) for e in server.site.access_levels["staff"].entries} == {("lobby", "always"), ("office", "always"),
                                                                                       ("outside", "always")}

    r = c.post("/site/levels/lab", data=data | {"cell-floor7": "business_hours"})  # made on the page of revision 1
    assert r.status_code == 409 and "Revision 2 by desk:ada" in alerts(r.text)
    row = re.search(r'<tr id="access-level-lab".*?</tr>', r.text, re.DOTALL)
    assert row and re.search(r'name="cell-floor7" form="level-lab">.*?<option value="business_hours" selected>',
                             row.group(0), re.DOTALL) and 'name="base" value="2"' in row.group(0)
    assert live(server) == 2
    r = c.post("/site/levels/lab", data=data | {"base": "2", "cell-floor7": "night_owls"})
    assert r.status_code == 422 and "schedule 'night_owls' is not defined" in alerts(r.text)
    assert re.search(r'name="cell-floor7" form="level-lab">.*?<option value="night_owls" selected>', r.text, re.DOTALL)

    r = c.post("/site/levels", data={"csrf_token": data["csrf_token"], "base": "2", "id": "cleaners",
                                     "name": "Cleaners", "action": "save"})
    assert r.status_code == 303 and server.site.access_levels["cleaners"].entries == ()


# ------------------------------------------------------------------ deleting, roles, preview


def test_deleting_asks_first_then_deletes_and_refuses_what_something_still_needs(app: FastAPI, server: Server) -> None:  # noqa: F811
    c, csrf = session(app)
    confirm = c.get("/site/schedules/business_hours/delete")
    assert confirm.status_code == 200 and "Delete schedule Business hours (business_hours)?" in html.unescape(confirm.text)
    assert 'action="/site/schedules/business_hours/delete"' in confirm.text and 'name="base" value="1"' in confirm.text
    assert live(server) == 1  # asking is not doing
    r = c.post("/site/schedules/business_hours/delete", data={"csrf_token": csrf, "base": "1"})
    assert r.status_code == 422 and "business_hours" in alerts(r.text) and "is not defined" in alerts(r.text)
    assert "business_hours" in server.site.schedules and live(server) == 1

    c.post("/site/areas", data={"csrf_token": csrf, "base": "1", "id": "attic", "action": "save"})
    assert "attic" in server.site.areas
    r = c.post("/site/areas/attic/delete", data={"csrf_token": csrf, "base": "2"})
    assert r.status_code == 303 and "attic" not in server.site.areas
    assert [line.split(" (")[0] for line in siteadmin(server).revision(3).changes] == ["- areas.attic"]
    assert c.get("/site/areas/attic/delete").status_code == 404
    r = c.post("/site/areas/lobby/delete", data={"base": "3"})
    assert r.status_code == 403 and "lobby" in server.site.areas  # no CSRF token: refused


def test_only_an_admin_changes_the_site_an_auditor_reads_and_the_desk_role_is_refused(app: FastAPI, server: Server) -> None:  # noqa: F811
    t = tokens(app)
    for path in ("/site/areas", "/site/doors", "/site/schedules", "/site/levels"):
        assert TestClient(app).get(path, headers=bearer(t["dex"])).status_code == 403
        page = TestClient(app).get(path, headers=bearer(t["aud"]))
        assert page.status_code == 200 and "<form method=\"post\" action=\"/site" not in page.text
        assert "only an admin changes the site" in page.text
    auditor = TestClient(app, follow_redirects=False)
    for method, path in (("GET", "/site/doors/lab"), ("POST", "/site/doors/lab"), ("POST", "/site/areas"),
                         ("GET", "/site/areas/lobby/delete"), ("POST", "/site/levels/lab")):
        assert auditor.request(method, path, headers=bearer(t["aud"]), data={"base": "1", "unlock_s": "1"}).status_code == 403
    assert live(server) == 1
    page = TestClient(app).get("/site/levels", headers=bearer(t["aud"])).text
    assert "Business hours" in page and "no access" in page  # the matrix, read-only


def test_preview_shows_the_effect_above_the_kept_form_and_commits_nothing(app: FastAPI, server: Server) -> None:  # noqa: F811
    pytest.importorskip("server.site_preview", reason="the impact preview (server/site_preview.py) is not here")
    c, _ = session(app)
    fields = form_of(c.get("/site/doors/lab").text, "/site/doors/lab")
    r = c.post("/site/doors/lab", data=fields | {"unlock_s": "8", "action": "preview"})
    assert r.status_code == 200, r.text[:500]
    assert 'id="site-preview"' in r.text and "Nothing is saved yet" in r.text
    assert r.text.index('id="site-preview"') < r.text.index('<form method="post" action="/site/doors/lab"')
    assert form_of(r.text, "/site/doors/lab")["unlock_s"] == "8"
    assert live(server) == 1 and server.site.doors["lab"].unlock_s == 4
    fields = form_of(c.get("/site/doors/lab").text, "/site/doors/lab")
    r = c.post("/site/doors/lab", data=fields | {"unlock_s": "0", "action": "preview"})
    assert r.status_code == 422 and "doors.lab.unlock_s" in alerts(r.text)


# ------------------------------------------------------------------ lifts


def test_the_door_list_shows_a_lift_with_its_floors_public_schedule_and_offline_overrides(
        app: FastAPI, server: Server) -> None:  # noqa: F811
    c, _ = session(app)
    row = re.search(r'<tr id="door-lift".*?</tr>', c.get("/site/doors").text, re.DOTALL)
    assert row is not None
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", "", row.group(0))).split())
    assert "lift to Lobby (public: Business hours), Open-plan office, Floor 7 (offline: deny)" in text, text
    assert "→" not in row.group(0) and "floors enabled 8 s" in text


def test_saving_a_lift_keeps_its_floors_and_never_writes_from_or_to(app: FastAPI, server: Server) -> None:  # noqa: F811
    c, _ = session(app)
    page = c.get("/site/doors/lift").text
    assert "This is a lift: it serves" in page and "Floor 7</strong>" in page and "site.toml" in page
    fields = form_of(page, "/site/doors/lift")
    assert "from" not in fields and "to" not in fields and "kind" not in fields and "mode" not in fields
    assert (fields["unlock_s"], fields["offline"], fields["public_floors.lobby"], fields["offline_floors.floor7"],
            fields["offline_floors.office"]) == ("8", "cache", "business_hours", "deny", "lift")

    # a posted from/to/floors/kind (a hand-made or stale form) is never written for a lift
    r = c.post("/site/doors/lift", data=fields | {"unlock_s": "10", "from": "lobby", "to": "floor7", "kind": "door",
                                                  "floors": "lobby", "action": "save"})
    assert r.status_code == 303, alerts(r.text)
    assert siteadmin(server).revision(2).changes == ("~ doors.lift.unlock_s: 8 -> 10",)
    lift = server.site.doors["lift"]
    assert [f.area for f in lift.floors] == ["lobby", "office", "floor7"] and lift.unlock_s == 10
    assert (lift.from_area, lift.to_area) == ("", "")

    # per-floor settings: the office public by day, floor 7 back to the lift's own offline, the lobby's schedule off
    fields = form_of(c.get("/site/doors/lift").text, "/site/doors/lift")
    r = c.post("/site/doors/lift", data=fields | {"public_floors.office": "business_hours",
                                                  "offline_floors.floor7": "lift", "action": "save"})
    assert r.status_code == 303, alerts(r.text)
    assert set(siteadmin(server).revision(3).changes) == {
        '+ doors.lift.public_floors.office = "business_hours"', '- doors.lift.offline_floors.floor7 (was "deny")'}
    current = siteadmin(server).current()
    assert current is not None and "offline_floors" not in current.site_toml  # the emptied table went as a whole
    floors = {f.area: f for f in server.site.doors["lift"].floors}
    assert (floors["office"].public_schedule, floors["floor7"].offline, floors["lobby"].public_schedule) == \
        ("business_hours", None, "business_hours")
    fields = form_of(c.get("/site/doors/lift").text, "/site/doors/lift")
    r = c.post("/site/doors/lift", data=fields | {"public_floors.lobby": "", "public_floors.office": "",
                                                  "action": "save"})
    assert r.status_code == 303
    assert [f.public_schedule for f in server.site.doors["lift"].floors] == [None, None, None]
    assert [f.area for f in server.site.doors["lift"].floors] == ["lobby", "office", "floor7"]
    current = siteadmin(server).current()
    assert current is not None and "public_floors" not in current.site_toml  # no empty table left behind

    # a broken per-floor value: config's words beside that floor's field, nothing saved
    fields = form_of(c.get("/site/doors/lift").text, "/site/doors/lift")
    before = live(server)
    r = c.post("/site/doors/lift", data=fields | {"public_floors.office": "nope", "action": "save"})
    assert r.status_code == 422 and "doors.lift.public_floors.office" in alerts(r.text)
    assert 'id="door-public_floors.office-error"' in r.text and live(server) == before
    assert form_of(r.text, "/site/doors/lift")["public_floors.office"] == "nope"  # the input kept, as typed

    # the preview judges the same edits and commits nothing
    r = c.post("/site/doors/lift", data=fields | {"unlock_s": "12", "action": "preview"})
    assert r.status_code == 200 and "Save lift lift" in r.text and live(server) == before


def test_a_lift_is_not_added_nor_made_from_a_door_in_the_form(app: FastAPI, server: Server) -> None:  # noqa: F811
    c, _ = session(app)
    page = c.get("/site/doors").text
    add = re.search(r'<form method="post" action="/site/doors".*?</form>', page, re.DOTALL)
    assert add is not None and '<option value="lift"' not in add.group(0)
    fields = form_of(page, "/site/doors")
    r = c.post("/site/doors", data=fields | {"id": "lift2", "kind": "lift", "action": "save"})
    assert r.status_code == 422 and "a lift cannot be added or made here" in alerts(r.text)
    assert 'kind = "lift"' in html.unescape(alerts(r.text)) or "kind = &quot;lift&quot;" in r.text
    fields = form_of(c.get("/site/doors/lab").text, "/site/doors/lab")
    r = c.post("/site/doors/lab", data=fields | {"kind": "lift", "action": "save"})
    assert r.status_code == 422 and "site.toml" in alerts(r.text)
    assert live(server) == 1 and server.site.doors["lab"].to_area == "floor7"
