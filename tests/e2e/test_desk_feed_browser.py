"""The live feed people can read (issue 16), in a real headless Chromium against the server of a running demo
site: search one person over a week, export that view as CSV and check its rows, see new matching rows arrive
at the top while others stay out, and the page at a 1366x768 desk and on a 360 px phone (screenshots kept in
tests/e2e/artifacts/).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from simulators.site import SiteRunner
from tests.e2e.test_desk_a11y import AXE, axe_violations
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ALICE, BOB, ELI_LOST = "0F00A1B2C3", "0F00B0B0B0", "0F00E5E5E5"


def rows(page: Any) -> Any:
    return page.locator("#live-rows tr")


def test_search_a_person_over_a_week_export_it_and_watch_new_rows(page: Any, desk: str,  # noqa: F811
                                                                 site: SiteRunner) -> None:
    assert site.server is not None
    tz = ZoneInfo(site.server.site.timezone)
    reader = site.doors["lobby_in"].reader
    log_in(page, desk, "dex", PASSWORDS["dex"], path="/live")
    page.get_by_text("Live: new events appear at the top.").wait_for()
    exit_reader = site.doors["lobby_out"].reader  # a reader ignores the same card held again: another door
    for n, (door, card) in enumerate(((reader, ALICE), (reader, BOB), (reader, ELI_LOST), (exit_reader, ALICE)),
                                     start=1):  # one at a time, each row seen before the next
        door.badge(card)
        page.wait_for_function("n => document.querySelectorAll('#live-rows tr[data-kind=badge]').length >= n",
                               arg=n)
    refused = rows(page).filter(has_text="Eli Evans").first
    refused.wait_for()
    # plain words beside the code, the local date and zone, and the slot for "Why?"
    assert "Card not active (lost, revoked)" in refused.inner_text() and "credential_inactive" in refused.inner_text()
    assert refused.get_by_role("link", name="Why was Eli Evans refused at Lobby entrance?").get_attribute(
        "href").endswith("#why")
    today = datetime.now(tz)
    assert today.strftime("%Y-%m-%d") in refused.locator("time").inner_text()
    assert not page.get_by_label("Door movements").is_checked() and page.get_by_label("Badges").is_checked()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "live-feed-unfiltered-1366.png"), full_page=True)
    if AXE.exists():  # the unfiltered page: a refusal with its "Why?" link and grants
        assert axe_violations(page) == []

    # One person, one week (in the site's zone).
    page.get_by_label("Person").fill("Alice")
    page.get_by_label("From").fill((today - timedelta(days=6)).strftime("%Y-%m-%dT00:00"))
    page.get_by_label("Until").fill((today + timedelta(days=1)).strftime("%Y-%m-%dT00:00"))
    page.get_by_role("button", name="Filter").click()
    page.wait_for_load_state()
    page.get_by_text("Live: new events appear at the top.").wait_for()
    alice = rows(page).filter(has_text="Alice Archer")
    alice.nth(1).wait_for()
    shown = [r.get_attribute("data-id") for r in rows(page).all()]
    assert len(shown) == alice.count() >= 2  # Alice only: Bob's and Eli's badges are filtered out

    page.screenshot(path=str(ARTIFACTS / "live-feed-1366.png"), full_page=True)
    if AXE.exists():  # the filtered page with its rows (the a11y suite checks the page too)
        assert axe_violations(page) == []
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 1366

    with page.expect_download() as info:
        page.get_by_role("link", name="Export these events (CSV)").click()
    text = Path(info.value.path()).read_text(encoding="utf-8")
    table = list(csv.DictReader(io.StringIO(text)))
    assert [r["event"] for r in table] == shown
    assert {r["person"] for r in table} == {"Alice Archer"}
    assert {r["door"] for r in table} == {"Lobby entrance", "Lobby exit gate"}
    assert all(r["zone"] and r["date"] == today.strftime("%Y-%m-%d") for r in table)

    # The live view keeps working under the filter: Alice's next badge arrives at the top, Bob's never shows.
    # At the office gates: the lobby reader read her card a moment ago and ignores it again within its
    # repeat window (repeat_ignore_s), which a fast run is still inside.
    exit_reader.badge(BOB)
    site.doors["gate_in"].reader.badge(ALICE)
    page.wait_for_function("n => document.querySelectorAll('#live-rows tr').length > n", arg=len(shown))
    assert "Alice Archer" in rows(page).first.inner_text()
    assert rows(page).filter(has_text="Bob Baker").count() == 0

    # A phone: the rows reflow into labelled blocks, nothing scrolls sideways.
    page.set_viewport_size({"width": 360, "height": 780})
    page.wait_for_timeout(100)  # one layout pass (a settle for the screenshot, not a wait for a condition)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    if AXE.exists():
        assert axe_violations(page) == []
    page.screenshot(path=str(ARTIFACTS / "live-feed-360.png"), full_page=True)


def test_a_bad_time_is_explained_on_the_page(page: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811
    log_in(page, desk, "dex", PASSWORDS["dex"], path="/live")
    page.goto(desk + "/live?f=1&kind=badge&since=2026-11-30&until=2026-11-01")
    assert "until must be later than since" in page.get_by_role("alert").inner_text()
