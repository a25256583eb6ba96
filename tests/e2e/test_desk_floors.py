"""Issue 16 in a real headless Chromium around a whole demo site on Mosquitto: the floor view follows the live
stream (a badge and a forced door on the simulators change their cards without a reload), and the alarm
console's keyboard shortcuts acknowledge an alarm (and stay quiet while the operator types a note).

Screenshots go to tests/e2e/artifacts/ (not committed). Skipped, with the reason, when chromium or
Playwright is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulators.site import SiteRunner
from simulators.wait import wait_until
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ALICE_CARD = "0F00A1B2C3"  # the demo site's Alice Archer


def card(pg: Any, door: str) -> Any:
    return pg.locator(f'li[data-door="{door}"]')


def test_floor_view_updates_its_cards_from_the_live_stream(page: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    log_in(page, desk, "dex", PASSWORDS["dex"], "/floors")
    assert page.url == desk + "/floors"
    page.locator('#floors[data-live="open"]').wait_for()
    # Areas by name, never by id; each door under the area it leads into.
    headings = [h.strip() for h in page.locator("section.floor-area h2").all_inner_texts()]
    assert [" ".join(h.split()) for h in headings] == ["Floor 7 restricted no open alarm", "Lobby no open alarm",
                                                      "Open-plan office no open alarm", "Outside no open alarm"], headings
    assert card(page, "lab").locator("h3").inner_text() == "Floor 7 lab"
    assert "From Lobby" in card(page, "lab").inner_text()
    lobby = page.locator('section[data-area="lobby"]')
    assert lobby.locator('li[data-door="lobby_in"]').count() == 1
    page.evaluate("() => { window.__sameDocument = true; }")  # gone if the page reloads

    page.evaluate("() => document.getElementById('floors').setAttribute('data-stream-refreshes', '0')")
    site.doors["lobby_in"].reader.badge(ALICE_CARD)
    last = card(page, "lobby_in").locator('[data-field="last_event"]')
    last.filter(has_text="Granted: Alice Archer").wait_for(timeout=10_000)
    when = card(page, "lobby_in").locator('[data-field="last_when"]')
    assert when.is_visible() and when.get_attribute("datetime")
    assert int(page.locator("#floors").get_attribute("data-stream-refreshes") or 0) >= 1  # the stream asked
    card(page, "lobby_in").locator('[data-field="snapshot"] img').wait_for(timeout=10_000)  # the snapshot lands
    img = card(page, "lobby_in").locator('[data-field="snapshot"] img')
    assert img.get_attribute("src", timeout=1000).startswith("/api/v1/snapshots/")
    assert "Lobby entrance" in (img.get_attribute("alt") or "")
    page.wait_for_function("() => { const i = document.querySelector('li[data-door=\"lobby_in\"] img');"
                           " return i && i.complete && i.naturalWidth > 0; }")  # the authenticated JPEG loads

    site.doors["lobby_out"].door.open()  # no badge, no exit button: forced
    gate = card(page, "lobby_out")
    gate.locator('[data-field="state"]').filter(has_text="forced open").wait_for(timeout=10_000)
    gate.locator('[data-field="alarms"]').filter(has_text="1 open alarm").wait_for(timeout=10_000)
    assert gate.get_attribute("data-state") == "forced"
    assert "high priority" in gate.locator('[data-field="alarm_priority"]').inner_text()
    assert "1 open alarm" in page.locator('section[data-area="outside"] [data-field="area_alarms"]').inner_text()
    gate.locator('[data-field="last_event"]').filter(has_text="Alarm: Door forced open").wait_for(timeout=10_000)
    # All of it without a reload: the page changed in place.
    assert page.evaluate("() => window.__sameDocument === true")
    page.screenshot(path=str(ARTIFACTS / "floors-live.png"), full_page=True)


def test_alarm_console_keyboard_shortcuts_move_select_and_acknowledge(page: Any, desk: str,  # noqa: F811
                                                                      site: SiteRunner) -> None:
    assert site.server is not None
    log_in(page, desk, "dex", PASSWORDS["dex"], "/alarms")
    site.doors["lobby_out"].door.open()  # forced: a high-priority alarm
    assert wait_until(lambda: any(a["type"] == "forced_open" for a in site.server.store.open_alarms()), 10)
    alarm = next(a for a in site.server.store.open_alarms() if a["type"] == "forced_open")
    page.goto(desk + "/alarms")
    row = page.locator(f'tr[data-alarm="{alarm["id"]}"]')
    row.wait_for()

    # The help is on the page, and "?" opens it.
    help_box = page.locator("details#shortcuts")
    assert help_box.locator("summary").inner_text() == "Keyboard shortcuts"
    assert not help_box.evaluate("d => d.open")
    page.keyboard.press("Shift+?")
    assert help_box.evaluate("d => d.open") and "Acknowledge" in help_box.inner_text()
    page.keyboard.press("Escape")
    assert not help_box.evaluate("d => d.open")

    # j moves to the first alarm, which takes the focus and shows it.
    page.keyboard.press("j")
    assert page.evaluate("() => document.activeElement.getAttribute('data-alarm')") == str(alarm["id"])
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"

    # x selects it, x again unselects.
    box = row.locator("[data-select]")
    page.keyboard.press("x")
    assert box.is_checked()
    page.keyboard.press("x")
    assert not box.is_checked()

    # r opens its note; an "a" typed there is text, never an acknowledgement.
    page.keyboard.press("r")
    note = row.locator("[data-note]")
    assert page.evaluate("() => document.activeElement.hasAttribute('data-note')")
    page.keyboard.type("a")
    assert note.input_value() == "a"
    assert site.server.store.alarm(alarm["id"])["acknowledged_by"] is None
    page.keyboard.press("Escape")  # back to the row, the note kept
    assert page.evaluate("() => document.activeElement.getAttribute('data-alarm')") == str(alarm["id"])
    assert note.input_value() == "a"
    note.fill("")  # (takes the focus) ...
    page.keyboard.press("Escape")  # ... and back to the row

    # a acknowledges the alarm the operator is on; after the reload the focus is back on that row.
    page.keyboard.press("a")
    assert wait_until(lambda: site.server.store.alarm(alarm["id"])["acknowledged_by"] == "dex", 10)
    page.wait_for_load_state()
    page.locator(f'tr[data-alarm="{alarm["id"]}"].is-current').wait_for()
    assert page.evaluate("() => document.activeElement.getAttribute('data-alarm')") == str(alarm["id"])
    assert "acknowledged by dex" in page.locator(f'tr[data-alarm="{alarm["id"]}"] .timeline').inner_text()
