"""Cardholder photos (issue 16) in a real headless Chromium against the server of a running demo site: an admin
uploads a real JPEG made by OpenCV on Alice's page, sees it there (served decrypted by the authenticated
route), then a desk badge of Alice on Live shows her photo on file beside the camera's snapshot while Bob's row
has none; at a 1366x768 desk and on a 360 px phone, light and dark (screenshots kept in tests/e2e/artifacts/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from simulators.site import SiteRunner
from tests.e2e.test_desk_a11y import AXE, axe_violations
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ALICE, BOB = "0F00A1B2C3", "0F00B0B0B0"
LOADED = "sel => { const i = document.querySelector(sel); return !!i && i.complete && i.naturalWidth > 0; }"


def portrait(path: Path) -> None:
    """A 900x1200 photo-like JPEG (gradient, an oval face, eyes), written by OpenCV."""
    y, x = np.mgrid[0:1200, 0:900]
    img = np.dstack([(x * 200 // 900), (y * 180 // 1200), np.full_like(x, 90)]).astype(np.uint8)
    cv2.ellipse(img, (450, 600), (220, 400), 0, 0, 360, (80, 140, 210), -1)
    for cx in (360, 540):
        cv2.circle(img, (cx, 480), 30, (30, 30, 30), -1)
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])


def test_an_admin_uploads_a_photo_and_live_shows_it_beside_the_badge_snapshot(page: Any, desk: str,  # noqa: F811
                                                                            site: SiteRunner, tmp_path: Path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    photo = tmp_path / "alice.jpg"
    portrait(photo)
    log_in(page, desk, "ada", PASSWORDS["ada"], path="/people/alice")
    assert page.locator("#person-photo-none").is_visible()
    page.locator("#photo-file").set_input_files(str(photo))
    page.get_by_role("button", name="Upload photo").click()
    page.wait_for_load_state()
    assert page.get_by_role("status").inner_text() == "Photo saved."
    page.wait_for_function(LOADED, arg="#person-photo")
    # kept re-encoded: 900x1200 became 384x512, served as a JPEG by the authenticated route
    assert page.evaluate("() => [document.querySelector('#person-photo').naturalWidth, "
                         "document.querySelector('#person-photo').naturalHeight]") == [384, 512]
    assert page.get_by_role("button", name="Replace photo").is_visible()
    page.screenshot(path=str(ARTIFACTS / "person-photo-1366.png"), full_page=True)
    if AXE.exists():  # the person page with a photo and its forms
        assert axe_violations(page) == []

    page.goto(desk + "/live")
    page.get_by_text("Live: new events appear at the top.").wait_for()
    reader = site.doors["lobby_in"].reader
    reader.badge(ALICE)
    alice = page.locator("#live-rows tr[data-kind=badge]", has_text="Alice Archer").first
    alice.wait_for()
    page.wait_for_function(LOADED, arg="#live-rows tr[data-kind=badge] img.photo")
    assert alice.get_by_role("img", name="Photo of Alice Archer on file").is_visible()
    # the camera's frame lands beside it (the lobby has a camera): the operator compares the two
    page.wait_for_function(LOADED, arg="#live-rows tr[data-kind=badge] td.snapshot a img")
    assert alice.locator("figcaption").all_inner_texts() == ["on file", "at the door"]
    site.doors["lobby_out"].reader.badge(BOB)  # another door: Bob has no photo, so his row shows none
    bob = page.locator("#live-rows tr[data-kind=badge]", has_text="Bob").first
    bob.wait_for()
    assert bob.locator("img.photo").count() == 0
    page.screenshot(path=str(ARTIFACTS / "live-photo-1366.png"), full_page=True)
    if AXE.exists():
        assert axe_violations(page) == []

    page.set_viewport_size({"width": 360, "height": 740})
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360
    alice.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "live-photo-360.png"), full_page=True)
    page.emulate_media(color_scheme="dark")  # the dark theme that follows the system: frames from its variables
    assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") != "rgb(255, 255, 255)"
    page.screenshot(path=str(ARTIFACTS / "live-photo-dark-360.png"), full_page=True)
