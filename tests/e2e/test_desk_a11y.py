"""Accessibility and screen size of every desk page, in a real headless Chromium at a desk's 1366x768.

axe-core (the rules engine behind most accessibility checkers; its ``axe.min.js`` is fetched from the npm
registry into tests/e2e/assets/ by scripts/fetch-axe, which ``make test`` runs) checks each page as an
admin sees it, with real content: a registered visitor on the visitors and check-in pages, a granted and a
refused badge on the live feed, a forced door's alarm on the alarms page and the doors board. No page may
have a violation of impact ``serious`` or ``critical`` (missing labels, headings, contrast, landmarks,
names of links and buttons), and no page may scroll sideways (``scrollWidth <= 1366``).

Skipped, with the reason, when chromium, Playwright or axe.min.js is missing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from simulators.site import SiteRunner
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

AXE = Path(__file__).resolve().parent / "assets" / "axe.min.js"
WIDTH = 1366
BLOCKING = ("serious", "critical")
VISITOR_BADGE = "0F00F00001"  # the first card of the demo site's visitor pool


def axe_violations(pg: Any) -> list[dict[str, Any]]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2.x A/AA and best practice)."""
    if not pg.evaluate("() => typeof window.axe !== 'undefined'"):
        pg.evaluate(AXE.read_text(encoding="utf-8"))  # evaluated by the browser's devtools, so CSP allows it
    result = pg.evaluate("""async () => {
        const r = await axe.run(document, {resultTypes: ['violations']});
        return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                       nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': ' +
                                                                       (n.failureSummary || '').slice(0, 200))}));
    }""")
    return [v for v in result if v["impact"] in BLOCKING]


def register_and_check_in(pg: Any, base: str) -> str:
    """Register a visitor through the visitors page; the check-in page's URL (checked in afterwards)."""
    pg.goto(base + "/visitors")
    pg.get_by_label("Name", exact=True).fill("Grace Hopper")
    pg.get_by_label("Company").fill("Navy Labs")
    pg.get_by_label("Host", exact=True).fill("alice")
    pg.get_by_label("Lobby", exact=True).check()
    pg.get_by_role("button", name="Register visitor").click()
    pg.wait_for_load_state()
    link = pg.get_by_role("link", name="Check in Grace Hopper")
    href = link.get_attribute("href")
    assert href and "/check-in" in href
    return base + href


def test_every_desk_page_has_no_serious_accessibility_violation_and_fits_1366(page: Any, desk: str,  # noqa: F811
                                                                              site: SiteRunner) -> None:
    if not AXE.exists():
        pytest.skip("axe-core is not in tests/e2e/assets/ (make test fetches it: scripts/fetch-axe; "
                    "it could not be fetched from the npm registry here)")
    assert page.viewport_size == {"width": WIDTH, "height": 768}
    found: dict[str, Any] = {}

    def check(name: str) -> None:
        # The alarms page reloads itself when the open alarms change (a new occurrence may land while axe
        # runs): then check the reloaded page.
        for attempt in range(3):
            page.wait_for_load_state()
            try:
                bad = axe_violations(page)
                width = page.evaluate("() => document.documentElement.scrollWidth")
                break
            except Exception as e:  # playwright's Error: imported lazily, as the fixtures do
                if "Execution context was destroyed" not in str(e) or attempt == 2:
                    raise
        if bad or width > WIDTH:
            found[name] = {"url": page.url, "scrollWidth": width, "violations": bad}

    page.goto(desk + "/login")
    check("login")
    log_in(page, desk, "ada", PASSWORDS["ada"])
    check("home")

    checkin = register_and_check_in(page, desk)
    check("visitors")
    page.goto(checkin)
    check("check-in")
    page.get_by_label("The visitor has read the privacy notice and agrees to it").check()
    page.get_by_role("button", name="Check in and hand over a badge").click()
    page.wait_for_load_state()
    assert "hand over visitor badge" in page.get_by_role("status").inner_text()
    page.get_by_role("link", name="Pass and badge of Grace Hopper").click()  # server/web/badge.py
    page.locator(".pass-qr svg").wait_for()
    check("visitor pass")
    page.get_by_role("link", name=re.compile("^Print badge: CR80")).click()
    page.locator(".badge-qr svg").wait_for()
    check("visitor badge")

    # real rows for the live feed, the alarms page and the board: a grant, a refusal, a forced door
    site.doors["lobby_in"].reader.badge(VISITOR_BADGE)
    site.doors["lobby_in"].reader.badge("0F0BADBAD0")
    page.goto(desk + "/live")
    page.locator("#live-rows tr", has_text="Grace Hopper").first.wait_for()
    page.locator("#live-rows tr", has_text="denied").first.wait_for()
    check("live")
    page.locator("#live-rows tr", has_text="denied").first.get_by_role("link", name=re.compile("^Why was")).click()
    page.locator("section#why .why-summary").wait_for()
    check("event page with its why")
    page.goto(desk + "/doors")
    site.doors["lobby_out"].door.open()  # no badge, no exit button: forced
    page.locator('tr[data-door="lobby_out"] [data-field="state"]').filter(has_text="forced open").wait_for()
    check("doors")
    page.goto(desk + "/floors")
    page.locator('li[data-door="lobby_out"] [data-field="state"]').filter(has_text="forced open").wait_for()
    check("floors")
    page.goto(desk + "/alarms")
    page.get_by_role("row", name=re.compile("Door forced open")).first.wait_for()
    check("alarms")
    page.get_by_role("link", name=re.compile("^Open an incident from Door forced open")).first.click()
    page.wait_for_url(re.compile(r"/incidents/new\?alarm="))
    check("new incident")
    page.get_by_label("First note (optional)").fill("Checking the door")
    page.get_by_role("button", name="Open the incident").click()
    page.wait_for_url(re.compile(r"/incidents/\d+\?done=opened$"))
    check("incident")
    page.goto(desk + "/incidents")
    check("incidents")
    page.goto(desk + "/doors/lab/unlock")
    check("unlock confirmation")
    page.goto(desk + "/doors/lockdown?scope=site")
    check("lockdown confirmation")
    page.goto(desk + "/doors/lab/override")
    check("door override")
    page.goto(desk + "/muster")
    check("muster")
    for name, path in (("reports", "/reports"), ("report: movements", "/reports/movements?person=alice"),
                       ("report: activity", "/reports/activity"), ("report: refusals", "/reports/refusals"),
                       ("report: traffic", "/reports/traffic"), ("report: occupancy", "/reports/occupancy?area=lobby")):
        page.goto(desk + path)  # the Reports section (server/web/reports.py), with the badges above in it
        check(name)
    page.goto(desk + "/people")
    check("people")
    page.get_by_role("link", name="Alice Archer").first.click()
    check("person")
    page.goto(desk + "/visitors/watchlist")
    check("watchlist")
    page.goto(desk + "/agreements")  # agreement texts (server/web/agreements.py)
    check("agreements")
    page.goto(desk + "/audit")
    check("audit")
    page.goto(desk + "/account/2fa")
    check("two-factor enrolment")
    assert site.server is not None and site.server.siteadmin is not None
    site.server.siteadmin.change({"doors.lab.unlock_s": 6}, base=1, actor="desk:ada")
    page.goto(desk + "/site")
    check("site history")
    page.goto(desk + "/site/revisions/1/rollback")
    check("rollback confirmation")
    for name, path in (("site areas", "/site/areas"), ("site door form", "/site/doors/lab"),
                       ("site schedules", "/site/schedules"), ("site schedule form", "/site/schedules/business_hours"),
                       ("site access levels", "/site/levels")):
        page.goto(desk + path)
        check(name)
    page.goto(desk + "/operators")
    check("operators")
    page.goto(desk + "/no-such-page")
    check("error page")

    assert found == {}, json.dumps(found, indent=1)
