"""The watchlist before the badge and agreements at the desk, in a real headless Chromium against a real demo site
(tests/e2e/test_desk_browser.py's fixtures: the desk served by uvicorn around the running site's server):

an admin lists a name and adds a safety agreement every visit needs; a visitor with that name is registered and
held; the desk's check-in page offers no check-in, and the API answers 409; the admin overrides the hold with a
reason; the visitor accepts the agreement by typed name and is checked in with a badge.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from simulators.site import SiteRunner
from tests.e2e.test_desk_a11y import AXE, axe_violations
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e


def test_a_watchlist_hit_blocks_check_in_until_an_admin_overrides_it_with_a_reason(page: Any, desk: str,  # noqa: F811
                                                                                     site: SiteRunner) -> None:
    from playwright.sync_api import expect

    log_in(page, desk, "ada", PASSWORDS["ada"], path="/visitors/watchlist")
    page.get_by_label("Name or company").fill("Mallory Grey")
    page.get_by_role("button", name="Add to the watchlist").click()
    expect(page.get_by_role("status")).to_contain_text("Added to the watchlist")

    page.goto(desk + "/agreements")
    page.get_by_label("Kind (short name, e.g. nda, safety)").fill("safety")
    page.get_by_label("Title").fill("Safety rules")
    page.get_by_label("Text (blank lines between paragraphs)").fill("Wear the visitor vest.\n\nFollow your host.")
    page.get_by_role("button", name="Add this version").click()
    expect(page.get_by_role("status")).to_contain_text("Added Safety rules, version 1")
    page.get_by_label("Safety rules (safety, version 1)").check()
    page.get_by_role("button", name="Save the site's default").click()
    expect(page.get_by_role("status")).to_contain_text("Saved")

    page.goto(desk + "/visitors")
    page.get_by_label("Name", exact=True).fill("mallory GREY")
    page.get_by_label("Host", exact=True).fill("Alice Archer")
    page.get_by_label("Lobby", exact=True).check()
    page.get_by_role("button", name="Register visitor").click()
    page.wait_for_load_state()
    expect(page.get_by_role("alert")).to_contain_text("The visit is held")
    row = page.locator("#expected").get_by_role("row", name=re.compile("mallory GREY"))
    expect(row).to_contain_text("Held by watchlist")

    row.get_by_role("link", name="Review the hold on mallory GREY").click()
    vid = page.url.split("/")[-2]
    expect(page.get_by_role("heading", level=2, name="Held by the watchlist")).to_be_visible()
    expect(page.get_by_role("button", name="Check in and hand over a badge")).to_have_count(0)
    if AXE.exists():
        assert axe_violations(page) == []  # the held visit's page, with its override and refuse forms
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    refused = page.request.post(f"{desk}/api/v1/visitors/{vid}/check-in", headers={"X-CSRF-Token": csrf},
                                data={"notice_version": "x", "consent": True, "photo_consent": False})
    assert refused.status == 409 and "held by a watchlist match" in refused.json()["error"]

    page.get_by_role("button", name="Override the hold").click()  # the reason is required: nothing is sent
    assert page.url.endswith(f"/visitors/{vid}/check-in")
    expect(page.get_by_role("heading", level=2, name="Held by the watchlist")).to_be_visible()
    page.get_by_label("Reason to let the visit go ahead").fill("Host vouches; photo ID checked")
    page.get_by_role("button", name="Override the hold").click()
    expect(page.get_by_role("status")).to_contain_text("Hold overridden")
    expect(page.locator("#hold-note")).to_contain_text("Host vouches; photo ID checked")

    expect(page.get_by_role("heading", level=2, name=re.compile("Safety rules"))).to_be_visible()
    if AXE.exists():
        assert axe_violations(page) == []  # the check-in page with an agreement to accept
    page.get_by_label("The visitor accepts Safety rules: their full name, typed").fill("Mallory Grey")
    page.get_by_label("The visitor has read the privacy notice and agrees to it").check()
    page.get_by_role("button", name="Check in and hand over a badge").click()
    page.wait_for_load_state()
    expect(page.get_by_role("status")).to_contain_text("hand over visitor badge")
    expect(page.locator("#on-site").get_by_role("row", name=re.compile("mallory GREY"))).to_be_visible()

    accepted = page.request.get(f"{desk}/api/v1/visitors/{vid}/agreements").json()["accepted"]
    assert [(a["kind"], a["version"], a["method"], a["operator"]) for a in accepted] == \
        [("safety", 1, "typed", "ada")]
