"""Issue 16, "Alarms nobody can miss", in a real headless Chromium around a whole demo site on Mosquitto:
doors forced open on the simulators count in the header and ring on a page other than Alarms (the page's
audio ``play`` is hooked and recorded), an escalation plays the second sound, then on the Alarms page their snapshot thumbnails load, they are
acknowledged in bulk, refused a bulk resolve without a note (high priority), and resolved in bulk with one.

Screenshots go to tests/e2e/artifacts/ (not committed). Skipped, with the reason, when chromium or
Playwright is absent.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from simulators.site import SiteRunner
from simulators.wait import wait_until
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
HOOK_AUDIO = """
  window.__played = [];
  HTMLMediaElement.prototype.play = function () { window.__played.push(this.src); return Promise.resolve(); };
"""
FORCED = ("lobby_out", "lab")


def counter(pg: Any, priority: str) -> str:
    return str(pg.locator(f'#alarm-counter [data-priority="{priority}"] [data-count]').inner_text())


def forced_alarms(site: SiteRunner) -> list[dict[str, Any]]:
    assert site.server is not None
    return [a for a in site.server.store.open_alarms() if a["type"] == "forced_open"]


def test_forced_doors_ring_and_count_on_another_page_then_are_acknowledged_and_resolved_in_bulk(
        page: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811
    assert site.server is not None and site.server.audit is not None
    ARTIFACTS.mkdir(exist_ok=True)
    page.add_init_script(HOOK_AUDIO)
    log_in(page, desk, "dex", PASSWORDS["dex"], "/visitors")
    assert page.url == desk + "/visitors"
    page.locator('#alarm-counter[data-live="open"]').wait_for()  # the counter's stream is up
    assert counter(page, "high") == "0" and page.evaluate("() => window.__played") == []

    for door in FORCED:
        site.doors[door].door.open()  # forced: no grant, the lock never released
    page.wait_for_function("() => document.querySelector('#alarm-counter [data-priority=\"high\"] "
                           "[data-count]').textContent === '2'", timeout=15_000)
    assert page.url == desk + "/visitors"  # it counted and rang here, not on the Alarms page
    page.wait_for_function("() => window.__played.length > 0")
    played = page.evaluate("() => window.__played")
    assert played and all(p.endswith("/sounds/alarm.wav") for p in played), played
    header = page.get_by_role("banner").inner_text()
    assert re.search(r"High\s+2", header) and "2 unacknowledged" in header
    page.screenshot(path=str(ARTIFACTS / "alarm-counter-visitors.png"))

    # One of them is left unanswered past its escalation time (marked as the desk's watch marks it, without
    # waiting the 120 s): the page plays the second, distinct sound and the header says so.
    assert wait_until(lambda: len(forced_alarms(site)) == 2, 10)
    assert site.server.store.mark_escalated(forced_alarms(site)[0]["id"], time.time())
    page.wait_for_function("() => window.__played.some(p => p.endsWith('/sounds/escalation.wav'))", timeout=10_000)
    assert "1 escalated" in page.get_by_role("banner").inner_text()
    page.screenshot(path=str(ARTIFACTS / "alarm-counter-escalated.png"))

    # The snapshots of the forced openings are stored before the page that shows them is opened.
    assert wait_until(lambda: len(forced_alarms(site)) == 2, 10)
    sources = [a["source_event"] for a in forced_alarms(site)]
    assert wait_until(lambda: all(site.server.store.event(s)["snapshot_path"] for s in sources), 10)

    page.get_by_role("navigation", name="Desk sections").get_by_role("link", name="Alarms").click()
    page.wait_for_url(desk + "/alarms")
    active = page.locator("section", has=page.locator("#active-heading"))
    rows = active.locator("tr[data-alarm]")
    assert rows.count() == 2
    for i in range(2):
        row = rows.nth(i)
        text = row.inner_text()
        assert "Door forced open" in text and "High priority" in text and "not yet acknowledged" in text
        assert re.search(r"Door now: (open|locked|unlocked)", text), text
        img = row.locator("img.thumb")
        img.wait_for()
        assert page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    page.screenshot(path=str(ARTIFACTS / "alarms-console-1366.png"), full_page=True)

    # Acknowledge both at once: the select-all box of the list, then the bulk button.
    active.get_by_label("Select every alarm in this list").check()
    page.get_by_role("button", name="Acknowledge selected").click()
    page.wait_for_url(re.compile(r"/alarms\?done=bulk_acknowledged$"))
    page.wait_for_function("() => document.querySelector('#alarm-counter [data-field=\"unacknowledged\"]')"
                           ".textContent === '0'")
    assert all(a["acknowledged_by"] == "dex" for a in forced_alarms(site))

    # Resolving high-priority alarms needs a note: refused with the field marked, nothing resolved.
    page.get_by_role("button", name=re.compile(r"^Resolve all 2 open")).click()
    alert = page.get_by_role("alert")
    assert "needs a note" in alert.inner_text()
    assert page.get_by_label(re.compile("^Note for resolving")).get_attribute("aria-invalid") == "true"
    assert len(forced_alarms(site)) == 2
    page.screenshot(path=str(ARTIFACTS / "alarms-console-note-required.png"), full_page=True)

    page.get_by_label(re.compile("^Note for resolving")).fill("Both doors checked by the guard; contractor "
                                                             "pushed them, locks fine")
    page.get_by_role("button", name=re.compile(r"^Resolve all 2 open")).click()
    page.wait_for_url(re.compile(r"/alarms\?done=bulk_resolved$"))
    assert forced_alarms(site) == []
    history = page.locator("section", has=page.locator("#history-heading")).inner_text()
    assert history.count("Both doors checked by the guard") == 2
    page.wait_for_function("() => document.querySelector('#alarm-counter [data-field=\"open\"]').textContent "
                           "=== String(" + str(len(site.server.store.open_alarms())) + ")")
    actions = [(r["actor"], r["action"]) for r in site.server.audit.records()]
    assert actions.count(("dex", "alarm.acknowledge")) == 2 and actions.count(("dex", "alarm.resolve")) == 2
    for door in FORCED:
        site.doors[door].door.close()


def test_the_alarm_console_reflows_on_a_phone_and_the_sound_switch_is_remembered(
        page: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811
    ARTIFACTS.mkdir(exist_ok=True)
    page.add_init_script(HOOK_AUDIO)
    site.doors["lobby_out"].door.open()
    assert wait_until(lambda: len(forced_alarms(site)) == 1, 10)
    page.set_viewport_size({"width": 360, "height": 780})
    log_in(page, desk, "dex", PASSWORDS["dex"], "/alarms")
    page.screenshot(path=str(ARTIFACTS / "alarms-console-360.png"), full_page=True)
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 361)
                             .slice(0, 8).map(e => e.tagName + '.' + e.className + '#' + e.id)""")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360, wide
    page.get_by_role("button", name=re.compile("^Sound on")).click()
    page.wait_for_url(desk + "/alarms")
    assert page.get_by_role("button", name=re.compile("^Sound off")).is_visible()
    page.goto(desk + "/live")
    assert page.locator("#alarm-counter").get_attribute("data-sound") == "off"  # remembered server-side
    site.doors["lobby_out"].door.close()


def test_the_alarm_console_in_the_dark_theme_has_no_serious_accessibility_violation(
        browser: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811
    """The counter and the console keep their contrast in the dark palette (static/theme.css)."""
    from tests.e2e.test_desk_a11y import AXE, axe_violations

    if not AXE.exists():
        pytest.skip("axe-core is not in tests/e2e/assets/ (make test fetches it: scripts/fetch-axe)")
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1366, "height": 768}, color_scheme="dark")
    try:
        pg = context.new_page()
        pg.add_init_script(HOOK_AUDIO)
        site.doors["lobby_out"].door.open()
        assert wait_until(lambda: len(forced_alarms(site)) == 1, 10)
        log_in(pg, desk, "dex", PASSWORDS["dex"], "/alarms")
        pg.locator("tr[data-alarm]").first.wait_for()
        pg.screenshot(path=str(ARTIFACTS / "alarms-console-dark.png"), full_page=True)
        assert axe_violations(pg) == []
        site.doors["lobby_out"].door.close()
    finally:
        context.close()
