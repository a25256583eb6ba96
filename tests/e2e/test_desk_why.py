""""Why not?" in a real headless Chromium: a card refused at a simulated door, followed from the live feed to
the event's page, whose ``#why`` section says in words which rule refused it and what would have let the person
through; the page passes the axe checks and reflows at 360 px (issue 16).

Screenshots go to tests/e2e/artifacts/. Skipped, with the reason, when the browser, Playwright or (for the axe
part) axe.min.js is missing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from simulators.site import SiteRunner
from tests.e2e.test_desk_a11y import AXE, axe_violations
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
#: Bob Baker's ASCII card (the lab's reader speaks ASCII); his only level is "Staff: building" (demo people.toml)
BOB_CARD = "40067890"
SENTENCE = "Bob Baker's levels do not include Floor 7; the 'Lab team: floor 7 in business hours' level does."


def test_a_refused_badge_page_says_why_in_words(page: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    log_in(page, desk, "dex", PASSWORDS["dex"], "/live")
    site.doors["lab"].reader.badge(BOB_CARD)
    row = page.locator("#live-rows tr", has_text="Bob Baker").filter(has_text="denied").first
    try:
        row.wait_for()
    except Exception:
        page.screenshot(path=str(ARTIFACTS / "why-debug.png"), full_page=True)
        print("ROWS", page.locator("#live-rows tr").all_inner_texts())
        raise
    row.get_by_role("link", name=re.compile("Why was Bob Baker refused at Floor 7 lab")).click()
    page.wait_for_load_state()
    assert re.search(r"/events/[^/]+#why$", page.url), page.url

    why = page.locator("section#why")
    assert why.get_by_role("heading", name="Why not?").is_visible()
    assert why.locator(".why-summary").inner_text() == SENTENCE
    allow = why.get_by_role("listitem").all_inner_texts()
    assert any("Lab team: floor 7 in business hours" in item for item in allow), allow
    assert "site revision 1" in why.locator(".why-basis").inner_text()
    assert page.get_by_role("heading", level=1).inner_text() == "Badge at Floor 7 lab"
    page.screenshot(path=str(ARTIFACTS / "why-1366.png"), full_page=True)

    if AXE.exists():
        assert axe_violations(page) == []
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1366

    page.set_viewport_size({"width": 360, "height": 740})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    page.screenshot(path=str(ARTIFACTS / "why-360.png"), full_page=True)
