"""Issue 16, "the tables reflow on a phone (360 px) and a 1366x768 desk", in a real headless Chromium.

Every desk page that holds a table (people, a person, visitors, audit, site revisions, the site setup pages,
muster, live, alarms, doors, floors, operators, the watchlist, reports, incidents) is opened with real rows at 360x740 and at
1366x768; none may scroll sideways (``document.scrollingElement.scrollWidth`` within the viewport), and on a
phone a table's cells are stacked, each labelled by its column (``data-label``, drawn by desk.css). A
screenshot of each page at both sizes goes to tests/e2e/artifacts/ (not committed) to be looked at.

Skipped, with the reason, when chromium or Playwright is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from simulators.site import SiteRunner
from tests.e2e.test_desk_a11y import register_and_check_in
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PHONE = {"width": 360, "height": 740}
DESK = {"width": 1366, "height": 768}
VISITOR_BADGE = "0F00F00001"  # the first card of the demo site's visitor pool
#: (name, path, a selector that must be on the page once it has its content)
PAGES = (
    ("home", "/", "h1"),
    ("visitors", "/visitors", "#on-site tbody tr"),
    ("watchlist", "/visitors/watchlist", "table"),
    ("agreements", "/agreements", "#versions"),
    ("live", "/live", "#live-rows tr"),
    ("alarms", "/alarms", "tr[data-alarm]"),
    ("doors", "/doors", "tr[data-door]"),
    ("floors", "/floors", "li[data-door]"),
    ("muster", "/muster", "h1"),
    ("people", "/people", "table tbody tr"),
    ("person", "/people/alice", "h1"),
    ("audit", "/audit", "#audit-records tbody tr"),
    ("site", "/site", "table tbody tr"),
    ("site-areas", "/site/areas", "#areas"),
    ("site-doors", "/site/doors", "#site-doors"),
    ("site-schedules", "/site/schedules", "h1"),
    ("site-levels", "/site/levels", "h1"),
    ("operators", "/operators", "#operators"),
    ("reports-movements", "/reports/movements", "h1"),
    ("reports-refusals", "/reports/refusals", "h1"),
    ("reports-traffic", "/reports/traffic", "h1"),
    ("incidents", "/incidents", "h1"),
)
#: Pages whose every body cell of a ``.table`` carries its column's label on a phone.
LABELLED = ("visitors", "people", "audit", "site", "doors", "alarms", "person")


def width(pg: Any) -> int:
    return int(pg.evaluate("() => document.scrollingElement.scrollWidth"))


def unlabelled_cells(pg: Any) -> list[str]:
    """Body cells of the page's data tables without a column label (a "none yet" row spanning all is fine)."""
    return list(pg.evaluate("""() => Array.from(document.querySelectorAll('table.table tbody td'))
        .filter(td => !td.hasAttribute('data-label') && !td.hasAttribute('colspan'))
        .map(td => td.closest('table').id + ': ' + td.textContent.trim().slice(0, 40))"""))


def test_every_table_page_fits_a_phone_and_a_desk_without_sideways_scrolling(
        page: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    log_in(page, desk, "ada", PASSWORDS["ada"])
    checkin = register_and_check_in(page, desk)  # a visitor on site, for the visitors and muster tables
    page.goto(checkin)
    page.get_by_label("The visitor has read the privacy notice and agrees to it").check()
    page.get_by_role("button", name="Check in and hand over a badge").click()
    page.wait_for_load_state()
    site.doors["lobby_in"].reader.badge(VISITOR_BADGE)  # a grant (and presence), a refusal, a forced door
    site.doors["lobby_in"].reader.badge("0F0BADBAD0")
    site.doors["lobby_out"].door.open()
    assert site.server is not None
    assert site.server.siteadmin is not None
    site.server.siteadmin.change({"doors.lab.unlock_s": 6}, base=1, actor="desk:ada")  # a second site revision

    wide: dict[str, dict[str, int]] = {}
    missing: dict[str, list[str]] = {}
    for name, path, ready in PAGES:  # each page loaded once, measured at both sizes (a resize relays it out)
        page.set_viewport_size(PHONE)
        page.goto(desk + path)
        page.locator(ready).first.wait_for()
        for size_name, size in (("phone", PHONE), ("desk", DESK)):
            page.set_viewport_size(size)
            got = width(page)
            if got > size["width"]:
                wide.setdefault(name, {})[size_name] = got
            if size_name == "phone" and name in LABELLED and unlabelled_cells(page):
                missing[name] = unlabelled_cells(page)
            page.screenshot(path=str(ARTIFACTS / f"reflow-{name}-{size_name}.png"), full_page=size_name == "phone")
    assert wide == {}, f"pages wider than the screen (scrollWidth by size): {wide}"
    assert missing == {}, f"table cells without a column label on a phone: {missing}"

    # On a phone a table row is a stack of labelled cells, not a row of columns (the people list, as a sample).
    page.set_viewport_size(PHONE)
    page.goto(desk + "/people")
    display = page.evaluate("""() => { const td = document.querySelector('table.table tbody td[data-label]');
        return [getComputedStyle(td).display, getComputedStyle(td, '::before').content]; }""")
    assert display[0] != "table-cell" and display[1] == '"Id: "', display
