"""Running the site from the desk's admin pages, in a real headless Chromium, on a whole demo site (simulated
edges, doors and readers, the real server, Mosquitto) and without a restart (issue 13): an admin adds an area
and a door into it, makes a schedule whose only window is not now and gives it to access level ``lab`` in the
matrix, and Alice's badge at the lab, granted a moment before, is refused with ``outside_schedule``; a rollback
from the site history lets her in again; and an edit saved from a page opened before someone else's save of the
same door answers 409 saying who changed what.

The site runs from a copy of the demo directory, so the test can play the installer who wires the new door's
Pi (its device file) before the admin adds the door. Skipped, with the reason, when the browser or Playwright
is absent (see tests/e2e/test_desk_browser.py).
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest

from doorkeep.model import WEEKDAYS
from simulators.site import DEMO_SITE, SiteRunner
from simulators.wait import wait_until
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ALICE = "40011111"  # her ASCII card: the lab's reader speaks ASCII
STORE_PI = """device = "pi-store"
site = "demo"
gpio_factory = "mock"

[doors.store_in]
reader = { url = "/dev/null", protocol = "em4100" }
lock = { pin = 5 }
"""


@pytest.fixture
def site(mosquitto: Any, tmp_path: Path) -> Iterator[SiteRunner]:
    """The demo site as tests/e2e/conftest.py runs it, from a copy of its directory."""
    site_dir = tmp_path / "site"
    shutil.copytree(DEMO_SITE, site_dir, ignore=shutil.ignore_patterns("keys", "pki"))
    runner = SiteRunner.from_dir(site_dir, broker_url=mosquitto.url, data_dir=tmp_path / "data")
    runner.start()
    assert runner.wait_connected(10), "edges and server did not connect to Mosquitto"
    yield runner
    runner.stop()


def lab_badges(site: SiteRunner) -> list[dict[str, Any]]:
    assert site.server is not None
    return [e for e in site.server.store.events(50, door="lab") if e["type"] == "access" and e["person"] == "alice"]


def badge_alice(site: SiteRunner) -> dict[str, Any]:
    """Alice's badge at the lab, decided by the server; badged again if the reader took it for a held card (it
    drops the same card within a second)."""
    before = len(lab_badges(site))

    def decided() -> bool:
        site.doors["lab"].reader.badge(ALICE)
        return wait_until(lambda: len(lab_badges(site)) > before, 1.5)

    assert wait_until(decided, 15), "no decision for Alice's badge"
    return lab_badges(site)[0]


def saved(page: Any, path: str) -> int:  # noqa: F811 - a page, not the fixture
    """After a Save: the page it redirected to names the new revision; its number."""
    page.wait_for_url(re.compile(re.escape(path) + r"\?saved=\d+"))
    status = page.get_by_role("status").inner_text()
    found = re.search(r"Saved as revision (\d+)", status)
    assert found, status
    return int(found.group(1))


def test_an_admin_builds_and_changes_the_site_from_the_desk_and_badges_obey_at_once(
        page: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811 - fixtures
    server = site.server
    assert server is not None and server.siteadmin is not None and site.bundle is not None
    log_in(page, desk, "ada", PASSWORDS["ada"], path="/site/areas")
    assert page.get_by_role("heading", level=1).inner_text() == "Areas"

    page.get_by_label("Id of the new area (required)").fill("store")
    page.locator("#new-area-name").fill("Store room")
    page.get_by_label("Restricted area").check()
    page.get_by_role("button", name="Add area").click()
    saved(page, "/site/areas")
    assert page.get_by_role("row", name=re.compile("Store room")).is_visible()
    assert server.site.areas["store"].restricted

    (site.bundle.dir / "devices" / "pi-store.toml").write_text(STORE_PI)  # the installer wired its Pi
    page.get_by_role("navigation", name="Site setup").get_by_role("link", name="Doors").click()
    page.get_by_label("Id of the new door (required)").fill("store_in")
    page.locator("#new-door-name").fill("Store room door")
    page.get_by_label("From area (required)").select_option("lobby")
    page.get_by_label("To area (required)").select_option("store")
    page.get_by_role("button", name="Add door").click()
    saved(page, "/site/doors")
    assert (server.site.doors["store_in"].from_area, server.site.doors["store_in"].to_area) == ("lobby", "store")

    # a schedule whose only window is a whole day that is neither today nor yesterday, in the site's time zone
    today = datetime.now(ZoneInfo(server.site.timezone)).weekday()
    day = WEEKDAYS[(today + 3) % 7]
    page.goto(desk + "/site/schedules")
    page.get_by_label("Id of the new schedule (required)").fill("not_now")
    page.locator("#new-schedule-name").fill("Not now")
    page.locator(f"#new-schedule-d0-{day}").check()
    page.get_by_label("Start of window 1").fill("00:00")
    page.get_by_label("End of window 1").fill("24:00")
    page.get_by_role("button", name="Add schedule").click()
    saved(page, "/site/schedules")
    grid = page.locator("#grid-not_now")
    assert grid.get_by_role("row").nth(1 + WEEKDAYS.index(day)).locator("td.cell-open").count() == 24
    assert grid.locator("td.cell-open").count() == 24

    # the lab level around the clock first (so Alice is let in whatever the time), then on the new schedule
    page.goto(desk + "/site/levels")
    page.locator("#level-lab-floor7-1").select_option("always")
    page.get_by_role("button", name="Save level lab").click()
    open_all_day = saved(page, "/site/levels")
    event = badge_alice(site)
    assert (event["decision"], event["reason"]) == ("granted", "granted")

    page.locator("#level-lab-floor7-1").select_option("not_now")
    page.get_by_role("button", name="Save level lab").click()
    saved(page, "/site/levels")
    event = badge_alice(site)  # no restart: the next badge obeys the new revision
    assert (event["decision"], event["reason"]) == ("denied", "outside_schedule")

    page.goto(desk + "/site")
    page.get_by_role("link", name=f"Roll back to revision {open_all_day}").click()
    page.get_by_role("button", name=f"Roll back to revision {open_all_day}").click()
    page.wait_for_url(re.compile(r"/site\?done=rollback$"))
    event = badge_alice(site)
    assert (event["decision"], event["reason"]) == ("granted", "granted")

    # two tabs on the same door: the one opened first saves last, against a revision that is no longer live
    page.goto(desk + "/site/doors/lab")
    other = page.context.new_page()
    other.goto(desk + "/site/doors/lab")
    other.get_by_label("Unlock time (seconds)").fill("6")
    other.get_by_role("button", name="Save door lab").click()
    newest = saved(other, "/site/doors")
    page.get_by_label("Unlock time (seconds)").fill("9")
    page.get_by_role("button", name="Save door lab").click()
    page.wait_for_load_state()
    alert = page.locator("#conflict")
    assert f"Revision {newest} by desk:ada" in alert.inner_text() and "doors.lab" in alert.inner_text()
    assert page.get_by_label("Unlock time (seconds)").input_value() == "9"  # the operator's input, kept
    assert server.site.doors["lab"].unlock_s == 6
