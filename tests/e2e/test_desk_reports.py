"""The Reports section (issue 16) in a real headless Chromium against the server of a running demo site: search
one person over one week, check that the chart draws one mark per badge, download the CSV and check its rows,
and the page at a 1366x768 desk and on a 360 px phone (screenshots kept in tests/e2e/artifacts/).
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
from simulators.wait import wait_until
from tests.e2e.test_desk_a11y import AXE, axe_violations
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ALICE, BOB = "0F00A1B2C3", "0F00B0B0B0"


def test_a_persons_week_as_a_chart_a_table_and_a_csv(page: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811
    assert site.server is not None
    server = site.server
    tz = ZoneInfo(server.site.timezone)
    today = datetime.now(tz).date()
    # Alice in and out (two readers: a reader ignores the same card held again), Bob in: Bob is not in her report.
    site.doors["lobby_in"].reader.badge(ALICE)
    site.doors["lobby_out"].reader.badge(ALICE)
    site.doors["lobby_in"].reader.badge(BOB)
    week = (datetime.combine(today - timedelta(days=6), datetime.min.time(), tz),
            datetime.combine(today + timedelta(days=1), datetime.min.time(), tz))
    since, until = (w.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%S.000Z") for w in week)
    assert wait_until(lambda: len(server.store.person_badges("alice", since, until)) == 2
                      and len(server.store.person_badges("bob", since, until)) == 1, 10), "badges not stored"

    log_in(page, desk, "dex", PASSWORDS["dex"], path="/reports")
    page.get_by_role("link", name="A person's movements").click()
    page.get_by_label("Person").fill("Alice")
    page.get_by_label("From").fill((today - timedelta(days=6)).isoformat())
    page.get_by_label("To (day, included)").fill(today.isoformat())
    page.get_by_role("button", name="Show report").click()
    page.wait_for_load_state()

    chart = page.locator('svg[data-chart="chart-movements"]')
    assert page.get_by_role("heading", level=2).first.inner_text().startswith("Alice Archer")
    assert chart.locator("circle.mark-granted").count() == 2 and chart.locator("path.mark-denied").count() == 0
    assert chart.locator("text", has_text=today.strftime("%a %d %b")).count() == 1  # seven strips, one today
    assert chart.get_attribute("role") == "img" and "2 granted and 0 refused" in (chart.locator("desc").text_content() or "")
    rows = page.locator("#report-rows tbody tr")
    assert rows.count() == 2
    assert [r.locator("td").nth(2).inner_text() for r in rows.all()] == ["Lobby entrance", "Lobby exit gate"]

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "reports-movements-1366.png"), full_page=True)
    if AXE.exists():
        assert axe_violations(page) == []

    with page.expect_download() as info:
        page.get_by_role("link", name="Download these badges (CSV)").click()
    table = list(csv.DictReader(io.StringIO(Path(info.value.path()).read_text(encoding="utf-8"))))
    assert [(r["person"], r["door"], r["decision"], r["date"]) for r in table] == [
        ("Alice Archer", "Lobby entrance", "granted", today.isoformat()),
        ("Alice Archer", "Lobby exit gate", "granted", today.isoformat())]
    assert [r["event"] for r in table] == [r.get_attribute("data-id") for r in rows.all()]
    assert any(a["action"] == "reports.export" and a["actor"] == "dex" for a in server.audit.records())

    # A phone: the chart scales, the table scrolls in its own region, the page never sideways.
    page.set_viewport_size({"width": 360, "height": 780})
    page.wait_for_timeout(100)  # one layout pass (a settle for the screenshot, not a wait for a condition)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    assert chart.bounding_box()["width"] <= 360
    if AXE.exists():
        assert axe_violations(page) == []
    page.screenshot(path=str(ARTIFACTS / "reports-movements-360.png"), full_page=True)
