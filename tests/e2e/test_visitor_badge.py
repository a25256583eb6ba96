"""The printed visitor badge in a real headless Chromium: printed to PDF at the page's own CSS size
(``preferCSSPageSize``), the PDF checked as a printer would get it: its page size in points (a CR80 card,
54 x 86 mm = 153.07 x 243.78 pt; a 62 x 100 mm label), the visitor's text in it (pypdf), and its QR code,
rendered to pixels (pypdfium2) and decoded by OpenCV, reading back the very pass the server issued.

Skipped, with the reason, when chromium, Playwright, pypdf or pypdfium2 is missing.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from datetime import datetime
from zoneinfo import ZoneInfo
from typing import Any

import pytest

from server.directory import Visitor
from simulators.site import SiteRunner
from tests.e2e.test_desk_a11y import AXE, axe_violations
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures
from tests.e2e.test_desk_dark import luminance

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"  # screenshots and the PDF, looked at by people

MM = 72 / 25.4  # points per millimetre


def decode_qr(pixels: Any) -> str:
    import cv2

    img = cv2.cvtColor(pixels, cv2.COLOR_BGRA2GRAY if pixels.shape[-1] == 4 else cv2.COLOR_BGR2GRAY)
    for detector in (cv2.QRCodeDetectorAruco(), cv2.QRCodeDetector()):
        text, points, _ = detector.detectAndDecode(img)
        if text:
            return str(text)
    return ""


def pdf_facts(pdf: bytes) -> tuple[float, float, str, str]:
    """(width pt, height pt, the text of the page, the QR read from the page rendered at 300 dpi)."""
    pypdf = pytest.importorskip("pypdf", reason="pypdf is in the [dev] extra (pip install -e '.[dev]')")
    pdfium = pytest.importorskip("pypdfium2", reason="pypdfium2 is in the [dev] extra (pip install -e '.[dev]')")
    reader = pypdf.PdfReader(io.BytesIO(pdf))
    assert len(reader.pages) == 1, f"the badge printed on {len(reader.pages)} pages"
    box = reader.pages[0].mediabox
    text = reader.pages[0].extract_text()
    pixels = pdfium.PdfDocument(pdf)[0].render(scale=300 / 72).to_numpy()  # 300 dpi, as a label printer
    return float(box.width), float(box.height), text, decode_qr(pixels)


def test_the_badge_prints_to_a_card_and_a_label_with_the_text_and_a_qr_that_reads_back_the_pass(
        page: Any, desk: str, site: SiteRunner, browser: Any) -> None:  # noqa: F811
    assert site.server is not None and site.server.passes is not None
    now = site.clock.wall()
    site.server.directory.register_visitor(Visitor(
        id="v-0bad9e00c0", name="Grace Hopper", host="alice", valid_from=now - 60, valid_until=now + 4 * 3600,
        allowed_areas=("lobby",), company="Navy Labs", escort_required=False))
    site.server.directory.check_in("v-0bad9e00c0")
    log_in(page, desk, "dex", PASSWORDS["dex"])
    started = time.monotonic()

    page.goto(desk + "/visitors/v-0bad9e00c0/badge")
    assert page.get_by_label("Badge stock").input_value() == "card"
    token = site.server.passes.current("v-0bad9e00c0")
    assert token is not None, "printing the badge issues the visit's pass"
    card = page.pdf(prefer_css_page_size=True, print_background=True)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "visitor-badge-page.png"), full_page=True)
    (ARTIFACTS / "visitor-badge-card.pdf").write_bytes(card)
    width, height, text, qr = pdf_facts(card)
    assert abs(width - 54 * MM) < 1 and abs(height - 86 * MM) < 1, (width, height)  # 153 x 244 pt
    until = datetime.fromtimestamp(now + 4 * 3600, ZoneInfo(site.server.directory.site.timezone))
    for needle in ("Grace Hopper", "Navy Labs", "Host Alice Archer", f"Valid until {until:%Y-%m-%d %H:%M}"):
        assert needle in text, (needle, text)
    assert "VISITOR" in text.replace(" ", "")  # letter-spaced in print
    assert qr == token.token, "the printed QR does not read back the visitor's pass"

    # The label roll, chosen with the page's own select: another page size, the same pass.
    page.get_by_label("Badge stock").select_option("label62")
    page.get_by_role("button", name="Show this size").click()
    page.wait_for_url("**/badge?size=label62")
    width, height, text, qr = pdf_facts(page.pdf(prefer_css_page_size=True, print_background=True))
    assert abs(width - 62 * MM) < 1 and abs(height - 100 * MM) < 1, (width, height)
    assert "Grace Hopper" in text and qr == token.token
    assert site.server.passes.current("v-0bad9e00c0").token == token.token  # two prints, one pass
    assert time.monotonic() - started < 15
    printed = [r for r in site.server.audit.records() if r["action"] == "visitor.badge_printed"]
    assert len(printed) == 2 and {r["actor"] for r in printed} == {"dex"}

    # In the dark theme, on screen: the badge preview and the pass page stay dark and readable (axe), and the
    # QR keeps its own light background, so a walk-in's phone still reads it off the screen.
    if not AXE.exists():
        return
    context = browser.new_context(viewport={"width": 1366, "height": 768}, color_scheme="dark")
    try:
        dark = context.new_page()
        dark.set_default_timeout(10_000)
        log_in(dark, desk, "dex", PASSWORDS["dex"])
        for path in ("/visitors/v-0bad9e00c0/badge", "/visitors/v-0bad9e00c0/pass"):
            dark.goto(desk + path)
            background = dark.evaluate("() => getComputedStyle(document.body).backgroundColor")
            assert luminance(background) < 0.05, (path, background)
            assert axe_violations(dark) == [], path
            dark.screenshot(path=str(ARTIFACTS / f"visitor-{path.rsplit('/', 1)[1]}-dark.png"), full_page=True)
        shot = dark.locator(".pass-qr").screenshot()
        import cv2
        import numpy as np

        assert decode_qr(cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)) == token.token
    finally:
        context.close()
