"""The desk's alarms and doors in a real headless Chromium, on a whole demo site (simulated edges, doors and
readers, the real server, Mosquitto): a door forced open turns the board red without a reload and raises an
alarm that the operator acknowledges and resolves with a note; an area locked down from the board (after a
confirmation) refuses a badge with reason ``lockdown`` until it is lifted; a remote unlock energises the
simulated relay.

Skipped, with the reason, when the browser or Playwright is absent (see tests/e2e/test_desk_browser.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from simulators.site import SiteRunner
from simulators.wait import wait_until
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ALICE = "0F00A1B2C3"
BOB = "0F00B0B0B0"


def state_cell(page: Any, door: str) -> Any:
    return page.locator(f'tr[data-door="{door}"] [data-field="state"]')


def section(page: Any, heading_id: str) -> Any:
    return page.locator("section", has=page.locator(f"#{heading_id}"))


def access_events(site: SiteRunner, door: str) -> list[dict[str, Any]]:
    assert site.server is not None
    return [e for e in site.server.store.events(50, door=door) if e["type"] == "access"]


def test_forced_door_shows_on_the_board_and_its_alarm_is_acknowledged_and_resolved(
        page: Any, desk: str, site: SiteRunner) -> None:
    log_in(page, desk, "dex", PASSWORDS["dex"], path="/doors")
    assert page.get_by_role("heading", level=1).inner_text() == "Doors"
    state_cell(page, "lobby_out").filter(has_text=re.compile("^locked$")).wait_for()
    page.evaluate("() => { window.__noReload = true; }")

    gate = site.doors["lobby_out"].door
    gate.open()  # no badge, no exit button: forced
    state_cell(page, "lobby_out").filter(has_text="forced open").wait_for()  # redrawn by polling, not by a reload
    assert page.evaluate("() => window.__noReload === true")
    page.locator('tr[data-door="lobby_out"] [data-field="alarms"]').filter(has_text="1 open alarm").wait_for()

    page.get_by_role("navigation", name="Desk sections").get_by_role("link", name="Alarms").click()
    active = section(page, "active-heading")
    row = active.get_by_role("row", name=re.compile("Door forced open"))
    row.wait_for()
    assert "Lobby exit gate" in row.inner_text() and "not yet" in row.inner_text()
    row.get_by_role("button", name=re.compile("^Acknowledge Door forced open")).click()
    page.wait_for_url(re.compile(r"/alarms\?done=acknowledged$"))
    assert page.get_by_role("status").inner_text() == "Alarm acknowledged."
    assert "dex" in active.get_by_role("row", name=re.compile("Door forced open")).inner_text()

    gate.close()  # the alarm is over, but stays until resolved: the page reloads itself into the next list
    cleared = section(page, "cleared-heading").get_by_role("row", name=re.compile("Door forced open"))
    cleared.wait_for(timeout=15_000)
    cleared.get_by_label("Resolution note").fill("Courier leaned on the gate; checked the lock, all fine")
    cleared.get_by_role("button", name="Resolve").click()
    page.wait_for_url(re.compile(r"/alarms\?done=resolved$"))
    history = section(page, "history-heading")
    assert "Courier leaned on the gate" in history.get_by_role("row", name=re.compile("Door forced open")).inner_text()
    assert section(page, "active-heading").get_by_role("row", name=re.compile("Door forced open")).count() == 0
    assert section(page, "cleared-heading").get_by_role("row", name=re.compile("Door forced open")).count() == 0
    assert site.server is not None and site.server.audit is not None
    actions = [(r["actor"], r["action"]) for r in site.server.audit.records()]
    assert ("dex", "alarm.acknowledge") in actions and ("dex", "alarm.resolve") in actions


def test_area_lockdown_from_the_board_refuses_a_badge_until_lifted_and_remote_unlock_opens(
        page: Any, desk: str, site: SiteRunner) -> None:
    assert site.server is not None
    log_in(page, desk, "dex", PASSWORDS["dex"], path="/doors")
    entrance = site.doors["lobby_in"]

    page.get_by_label("Where").select_option(label="Lobby")
    page.get_by_role("button", name="Lock down…").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Lock down Lobby?"
    assert "lobby" not in site.server.site.lockdowns  # asking is not doing
    page.get_by_role("button", name="Lock down Lobby").click()
    page.wait_for_url(re.compile(r"/doors\?done=locked_down&target=lobby$"))
    assert "Lockdown of Lobby is in force" in page.get_by_role("status").inner_text()
    assert page.locator('tr[data-door="lobby_in"] [data-field="lockdown"]').is_visible()
    assert not page.locator('tr[data-door="lab"] [data-field="lockdown"]').is_visible()
    assert site.wait_policies(10)

    entrance.reader.badge(ALICE)
    assert wait_until(lambda: access_events(site, "lobby_in"), 10)
    refused = access_events(site, "lobby_in")[0]
    assert (refused["decision"], refused["reason"], refused["person"]) == ("denied", "lockdown", "alice")
    assert not any(on for _, on in entrance.door.relay_history)

    page.get_by_label("Where").select_option(label="Lobby (locked down)")
    page.get_by_role("button", name="Lift lockdown…").click()
    page.get_by_role("button", name="Lift lockdown of Lobby").click()
    page.wait_for_url(re.compile(r"/doors\?done=lifted&target=lobby$"))
    assert "lobby" not in site.server.site.lockdowns
    assert site.wait_policies(10)
    entrance.reader.badge(BOB)  # another card: the reader ignores the same card again within a second (held)
    assert wait_until(lambda: len(access_events(site, "lobby_in")) == 2, 10)
    granted = access_events(site, "lobby_in")[0]
    assert (granted["decision"], granted["reason"], granted["person"]) == ("granted", "granted", "bob")
    assert entrance.door.wait_relay(True, 10), "a badge after the lockdown was lifted did not open the door"

    lab = site.doors["lab"]
    assert not any(on for _, on in lab.door.relay_history)
    page.get_by_role("link", name="Unlock Floor 7 lab…").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Unlock Floor 7 lab?"
    assert not any(on for _, on in lab.door.relay_history)
    page.get_by_role("button", name="Unlock Floor 7 lab").click()
    page.wait_for_url(re.compile(r"/doors\?done=unlocked&target=lab$"))
    assert lab.door.wait_relay(True, 5), "the remote unlock did not energise the lab's relay"
    assert page.get_by_role("status").inner_text() == "Floor 7 lab was unlocked for 4 s."
    assert site.server.audit is not None
    actions = [(r["actor"], r["action"], r["target"]) for r in site.server.audit.records()]
    assert ("dex", "door.unlock", "pi-floor7") in actions
    assert ("dex", "lockdown.set", "lobby") in actions and ("dex", "lockdown.clear", "lobby") in actions
