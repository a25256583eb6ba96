"""The desk's dark theme (issue 16), in a real headless Chromium whose system setting asks for dark.

The theme follows ``prefers-color-scheme`` (static/theme.css): the pages must really turn dark, and axe-core
must find no serious or critical violation on them (contrast above all) in the dark palette, as
tests/e2e/test_desk_a11y.py checks the light one. Screenshots are kept in tests/e2e/artifacts/ (not committed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from simulators.site import SiteRunner
from tests.e2e.test_desk_a11y import AXE, axe_violations
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


@pytest.fixture
def dark_page(browser: Any) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1366, "height": 768}, color_scheme="dark")
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


def luminance(rgb: str) -> float:
    """Relative luminance (WCAG) of a computed ``rgb(r, g, b)`` colour."""
    parts = [int(p) / 255 for p in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3]]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in parts]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_the_desk_follows_a_dark_system_setting_and_stays_readable(dark_page: Any, desk: str,  # noqa: F811
                                                                   site: SiteRunner) -> None:
    if not AXE.exists():
        pytest.skip("axe-core is not in tests/e2e/assets/ (make test fetches it: scripts/fetch-axe)")
    pg = dark_page
    site.doors["lobby_in"].reader.badge("0F00A1B2C3")  # a row for the live feed
    found: dict[str, Any] = {}
    pg.goto(desk + "/login")
    log_in(pg, desk, "ada", PASSWORDS["ada"])
    for path in ("/", "/people", "/visitors", "/live", "/floors", "/alarms", "/muster", "/audit", "/site",
                 "/agreements"):
        pg.goto(desk + path)
        pg.wait_for_load_state()
        background = pg.evaluate("() => getComputedStyle(document.body).backgroundColor")
        text = pg.evaluate("() => getComputedStyle(document.body).color")
        assert luminance(background) < 0.05 < luminance(text), f"{path} is not dark: {background} / {text}"
        bad = axe_violations(pg)
        if bad:
            found[path] = bad
        if path in ("/", "/people", "/live", "/floors"):
            ARTIFACTS.mkdir(exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / f"dark{path.replace('/', '-') if path != '/' else '-home'}.png"),
                          full_page=True)
    assert not found, found
