"""The self check-in kiosk in a real headless Chromium at a tablet's 768x1024 portrait, against a real demo site
(tests/e2e/test_desk_browser.py's fixtures: the desk served by uvicorn around the running site's server):

a visitor registered with a pass types its code on the kiosk, confirms their name, signs the site's NDA with a
drawn signature on the <canvas>, reads the notice, declines the photo, checks in (host notice queued as at the
desk) and opens their badge to print. Every kiosk step passes axe and fits the tablet's width. Then, in a
Chromium whose fake camera plays frames showing a pass, the kiosk reads the pass with the camera and takes the
visitor's photo.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
from argon2 import PasswordHasher

from server.directory import Visitor
from server.operators import Operators
from simulators.site import SiteRunner
from tests.e2e.test_desk_a11y import AXE, axe_violations
from tests.e2e.test_desk_browser import browser, desk, log_in  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

TABLET = {"width": 768, "height": 1024}
KIOSK_PASSWORD = "kim lobby tablet pass"


@pytest.fixture
def tablet(browser: Any) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport=TABLET, has_touch=True)
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


def test_a_visitor_signs_on_the_kiosk_and_is_checked_in(tablet: Any, desk: str, site: SiteRunner) -> None:  # noqa: F811
    from playwright.sync_api import expect

    server = site.server
    assert server is not None and server.passes is not None
    Operators(server.store, clock=server.directory.clock,
              hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)).add(
        "kim", "kiosk", KIOSK_PASSWORD, actor="test")
    server.store.add_agreement_version("nda", "Non-disclosure agreement", "What you see here stays here.", "test",
                                       server.directory.clock.wall())
    server.store.set_agreement_required("site", ["nda"])
    now = server.directory.clock.wall()
    server.directory.register_visitor(Visitor(id="v-0123456789ab", name="Grace Hopper", host="alice",
                                              valid_from=now - 60, valid_until=now + 4 * 3600,
                                              allowed_areas=("lobby",), company="Navy Labs"))
    token = server.passes.issue_pass("v-0123456789ab", actor="test").token
    problems: dict[str, Any] = {}

    def check(step: str) -> None:
        width = tablet.evaluate("() => document.documentElement.scrollWidth")
        bad = axe_violations(tablet) if AXE.exists() else []
        if bad or width > TABLET["width"]:
            problems[step] = {"width": width, "violations": bad}

    log_in(tablet, desk, "kim", KIOSK_PASSWORD, path="/kiosk")
    assert tablet.url == desk + "/kiosk"
    expect(tablet.get_by_role("heading", level=1)).to_have_text("Welcome")
    check("start")
    tablet.get_by_label("Or type the code printed under your QR code").fill(token)
    tablet.get_by_role("button", name="Continue").click()
    expect(tablet.get_by_role("heading", level=1)).to_have_text("Is this you?")
    expect(tablet.locator(".kiosk-facts")).to_contain_text("Grace Hopper")
    check("confirm")
    tablet.get_by_role("button", name="Yes, that is me").click()

    expect(tablet.get_by_role("heading", level=1)).to_have_text("Non-disclosure agreement")
    check("agreement")
    tablet.emulate_media(color_scheme="dark")  # the theme's variables: dark, and still passing axe
    assert tablet.evaluate("() => getComputedStyle(document.body).backgroundColor") == "rgb(21, 24, 28)"
    check("agreement, dark")
    tablet.emulate_media(color_scheme="light")
    tablet.get_by_role("button", name="I accept: use my signature").click()  # nothing drawn yet: asked to sign
    expect(tablet.locator("#signature-status")).to_contain_text("Sign in the box first")
    pad = tablet.locator("#signature-pad").bounding_box()
    assert pad is not None
    x, y = pad["x"], pad["y"] + pad["height"] / 2
    tablet.mouse.move(x + 40, y)
    tablet.mouse.down()
    for i in range(1, 12):  # a wavy stroke across the box
        tablet.mouse.move(x + 40 + i * 30, y + (20 if i % 2 else -20))
    tablet.mouse.up()
    tablet.get_by_role("button", name="I accept: use my signature").click()

    expect(tablet.get_by_role("heading", level=1)).to_have_text(re.compile("^Almost done, Grace Hopper"))
    check("notice and photo")
    tablet.get_by_label("I have read the privacy notice").check()
    tablet.get_by_role("button", name="Check in").click()
    expect(tablet.get_by_role("status")).to_contain_text("You are checked in")
    check("done")

    v = server.directory.visitor("v-0123456789ab")
    assert v.status == "checked_in"
    accepted = server.store.acceptances("v-0123456789ab")
    assert [(a["kind"], a["version"], a["method"], a["operator"], a["has_signature"]) for a in accepted] == \
        [("nda", 1, "drawn", "kim", 1)]
    signature = server.store.acceptance_signature(accepted[0]["id"])
    assert signature is not None and signature.startswith(b"\x89PNG")
    consent = server.store.latest_visitor_consent("v-0123456789ab")
    assert consent is not None and not consent["photo_consent"] and consent["operator"] == "kim"

    tablet.get_by_role("link", name="Print my badge").click()
    tablet.wait_for_load_state()
    assert re.search(r"/visitors/v-0123456789ab/badge", tablet.url)
    assert "Grace Hopper" in tablet.content()

    # Leaving: the same pass typed under "Leaving?" checks the visit out.
    tablet.goto(desk + "/kiosk")
    tablet.get_by_label("Or type the code on your pass to check out").fill(token)
    tablet.get_by_role("button", name="Check out", exact=True).click()
    expect(tablet.get_by_role("heading", level=1)).to_have_text("Goodbye, Grace Hopper")
    expect(tablet.get_by_role("status")).to_contain_text("You are checked out")
    check("goodbye")
    assert server.directory.visitor("v-0123456789ab").status == "checked_out"
    assert problems == {}, problems


def test_the_kiosk_reads_the_pass_from_the_tablet_camera(browser: Any, desk: str, site: SiteRunner,  # noqa: F811
                                                          tmp_path: Path) -> None:
    """Chromium's fake camera plays a file of JPEG frames showing the pass: the page sends frames to
    /kiosk/scan until OpenCV reads it, then goes on as if the code had been typed; the same camera takes the
    visitor's photo (with consent), kept encrypted under the visit."""
    from playwright.sync_api import expect

    from tests.e2e.test_desk_browser import CHROMIUM, FLAGS
    from tests.unit.test_kiosk import qr_frame

    server = site.server
    assert server is not None and server.passes is not None
    Operators(server.store, clock=server.directory.clock,
              hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)).add(
        "kim", "kiosk", KIOSK_PASSWORD, actor="test")
    now = server.directory.clock.wall()
    server.directory.register_visitor(Visitor(id="v-0123456789ac", name="Ada Lovelace", host="alice",
                                              valid_from=now - 60, valid_until=now + 3600, allowed_areas=("lobby",)))
    token = server.passes.issue_pass("v-0123456789ac", actor="test").token
    video = tmp_path / "pass.mjpeg"
    video.write_bytes(qr_frame(token) * 5)
    camera = browser.browser_type.launch(executable_path=str(CHROMIUM), args=[
        *FLAGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-video-capture={video}"])
    try:
        context = camera.new_context(viewport=TABLET)
        context.grant_permissions(["camera"], origin=desk)
        pg = context.new_page()
        pg.set_default_timeout(10_000)
        log_in(pg, desk, "kim", KIOSK_PASSWORD, path="/kiosk")
        pg.get_by_role("button", name="Scan my pass with the camera").click()
        # The page sends a frame every 400 ms and the server decodes each one: on a loaded two-worker run the
        # camera's start and the first readable frame took longer than expect's default 5 s once in CI.
        expect(pg.get_by_role("heading", level=1)).to_have_text("Is this you?", timeout=30_000)
        expect(pg.locator(".kiosk-facts")).to_contain_text("Ada Lovelace")
        pg.get_by_role("button", name="Yes, that is me").click()  # no agreement needed on this site
        pg.get_by_label("I have read the privacy notice").check()
        pg.get_by_label(re.compile("^I agree to photos")).check()
        pg.get_by_role("button", name="Take my photo").click()
        pg.get_by_role("button", name="Capture").click()
        expect(pg.locator("#photo-status")).to_have_text("Photo taken.")
        pg.get_by_role("button", name="Check in").click()
        expect(pg.get_by_role("status")).to_contain_text("You are checked in")
        assert server.store.person_photo("v-0123456789ac") is not None  # kept, encrypted, under the visit
        consent = server.store.latest_visitor_consent("v-0123456789ac")
        assert consent is not None and consent["photo_consent"]
    finally:
        camera.close()
