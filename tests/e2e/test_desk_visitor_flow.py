"""A visitor's day at the desk, in a real headless Chromium against a real demo site (edges, simulated readers
and cameras, the server on the session's Mosquitto), with the desk served by uvicorn on a free loopback port:

log in, register and check in a visitor (consent ticked), badge the visitor's card at the lobby door with the
simulated reader, see the row appear on the live page by itself (granted, snapshot image loaded), check the
visitor out, badge again: refused on the live feed.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from simulators.site import SiteRunner
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

VISITOR_BADGE = "0F00F00001"  # the first card of the demo site's visitor pool


def live_row(pg: Any, *texts: str) -> Any:
    rows = pg.locator("#live-rows tr")
    for text in texts:
        rows = rows.filter(has_text=text)
    return rows


def test_register_check_in_badge_on_live_feed_with_snapshot_check_out_refused(page: Any, desk: str,  # noqa: F811
                                                                              site: SiteRunner) -> None:
    log_in(page, desk, "dex", PASSWORDS["dex"], path="/visitors")
    assert page.url == desk + "/visitors"
    assert page.get_by_role("heading", level=1).inner_text() == "Visitors"

    page.get_by_label("Name", exact=True).fill("Grace <b>Hopper</b>")
    page.get_by_label("Company").fill("Navy Labs")
    host = page.get_by_label("Host", exact=True)
    host.press_sequentially("Alice")  # the type-ahead asks the server and keeps only what matches
    from playwright.sync_api import expect

    expect(page.locator("#v-host-options option")).to_have_count(1)  # the page's CSP forbids eval'd waits
    assert page.locator("#v-host-options option").get_attribute("value") == "alice"
    host.fill("Alice Archer")  # a typed name is taken when exactly one active person has it
    page.get_by_label("Lobby", exact=True).check()
    page.get_by_role("button", name="Register visitor").click()
    page.wait_for_load_state()
    assert "Registered Grace <b>Hopper</b>" in page.get_by_role("status").inner_text()  # shown as text, not markup

    page.get_by_role("link", name="Check in Grace <b>Hopper</b>").click()
    assert page.get_by_role("heading", level=2, name=re.compile("Privacy notice")).is_visible()
    page.get_by_label("The visitor has read the privacy notice and agrees to it").check()
    page.get_by_label("The visitor agrees to photos (snapshots) when they use a door").check()
    page.get_by_role("button", name="Check in and hand over a badge").click()
    page.wait_for_load_state()
    assert "hand over visitor badge …0001" in page.get_by_role("status").inner_text()
    on_site = page.locator("#on-site")
    assert on_site.get_by_role("row", name=re.compile("Grace")).is_visible()

    page.get_by_role("navigation", name="Desk sections").get_by_role("link", name="Live").click()
    page.get_by_text("Live: new events appear at the top.").wait_for()
    arrived = live_row(page, "Grace <b>Hopper</b>", "visitor arrived")
    assert arrived.count() == 1 and "Alice Archer" in arrived.inner_text()

    site.doors["lobby_in"].reader.badge(VISITOR_BADGE)
    granted = live_row(page, "Lobby entrance", "Grace <b>Hopper</b>", "granted")
    granted.wait_for()  # appears by itself: no reload
    img = granted.locator("img.thumb")
    img.wait_for(timeout=15_000)  # "snapshot pending" turns into the picture when the snapshot lands
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    assert "Lobby entrance" in (img.get_attribute("alt") or "")

    page.get_by_role("navigation", name="Desk sections").get_by_role("link", name="Visitors").click()
    page.get_by_role("button", name="Check out Grace <b>Hopper</b>").click()
    page.wait_for_load_state()
    assert "their badge is revoked" in page.get_by_role("status").inner_text()
    assert page.locator("#left").get_by_role("row", name=re.compile("Grace")).is_visible()

    page.get_by_role("navigation", name="Desk sections").get_by_role("link", name="Live").click()
    page.get_by_text("Live: new events appear at the top.").wait_for()
    assert site.doors["lobby_in"].door.wait_relay(False, 10.0)  # the earlier grant's unlock time is over
    site.doors["lobby_in"].reader.badge(VISITOR_BADGE)
    refused = live_row(page, "Lobby entrance", "card …0001", "denied")
    refused.wait_for()
    assert "Unknown card" in refused.first.inner_text()  # the reason in words (doorkeep/vocabulary.py)
    assert refused.first.locator("td", has_text="Unknown card").get_attribute("title") == "unknown_credential"
    assert not site.doors["lobby_in"].door.relay_energised  # refused: the lock never moved
