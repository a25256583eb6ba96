"""The security desk in a real headless Chromium (Debian's ``chromium``, driven by Playwright), served by
uvicorn on a free loopback port, around the server of a whole demo site on the session's Mosquitto.

Skipped, with the reason, when the browser or Playwright is absent (``make test`` installs chromium through
scripts/ensure-test-tools).
"""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from simulators.site import SiteRunner
from simulators.wait import wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
PASSWORDS = {"ada": "ada correct horse battery", "dex": "dex staple paper clip"}
ALL_SECTIONS = ["Visitors", "Live", "Alarms", "Incidents", "Doors", "Floors", "Muster", "Reports", "People", "Audit", "Site", "Site setup", "Operators", "Webhooks"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium (make test installs it through "
                    "scripts/ensure-test-tools; or: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    pw = sync_playwright().start()
    try:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
    except Exception as exc:  # a browser that cannot start here is an environment problem, said plainly
        pw.stop()
        pytest.skip(f"chromium did not start: {exc}")
    yield chromium
    chromium.close()
    pw.stop()


@pytest.fixture
def desk(site: SiteRunner) -> Iterator[str]:
    """The desk app around the running site's server, served by uvicorn in a thread; yields its base URL."""
    import uvicorn
    from server.web.serving import desk_server, uvicorn_config
    from argon2 import PasswordHasher

    from server.web.app import create_app

    assert site.server is not None
    app = create_app(site.server, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    app.state.desk.operators.add("ada", "admin", PASSWORDS["ada"], actor="test")
    app.state.desk.operators.add("dex", "desk", PASSWORDS["dex"], actor="test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = desk_server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning"))  # as deployed
    thread = threading.Thread(target=server.run, name="desk-uvicorn", daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, 10), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    pg = context.new_page()
    pg.set_default_timeout(10_000)
    yield pg
    context.close()


def log_in(page: Any, base: str, name: str, password: str, path: str = "/") -> None:
    page.goto(base + path)
    assert page.url.startswith(base + "/login")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def nav_links(page: Any) -> list[str]:
    return [t.strip() for t in page.get_by_role("navigation", name="Desk sections").get_by_role("link").all_inner_texts()]


def session_cookie(page: Any) -> dict[str, Any] | None:
    return next((c for c in page.context.cookies() if c["name"] == "doorkeep_session"), None)


def test_wrong_password_shows_an_error_and_opens_no_session(page: Any, desk: str) -> None:
    log_in(page, desk, "ada", "not the password at all")
    alert = page.get_by_role("alert")
    assert "Wrong name or password" in alert.inner_text()
    assert page.get_by_role("heading", level=1).inner_text() == "Log in to the security desk"
    assert session_cookie(page) is None
    page.goto(desk + "/")
    assert page.url.startswith(desk + "/login")


def test_admin_logs_in_sees_home_and_every_section_then_logs_out(page: Any, desk: str) -> None:
    log_in(page, desk, "ada", PASSWORDS["ada"])
    assert page.url == desk + "/"
    page.keyboard.press("Tab")  # the first stop on every page is the skip link, and it shows its focus
    focused = page.evaluate("() => [document.activeElement.textContent.trim(), "
                            "getComputedStyle(document.activeElement).outlineStyle]")
    assert focused[0] == "Skip to main content" and focused[1] != "none"
    assert page.get_by_role("heading", level=1).inner_text() == "Security desk — Demo HQ"
    assert page.get_by_role("heading", level=2, name="What you can do here").is_visible()
    assert re.search(r"Signed in as\s+ada\s+\(admin\)", page.get_by_role("banner").inner_text())
    assert nav_links(page) == ALL_SECTIONS
    assert page.get_by_role("main").count() == 1 and page.get_by_role("contentinfo").count() == 1
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 1366  # no sideways scroll at 1366x768
    cookie = session_cookie(page)
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    nav = page.get_by_role("navigation", name="Desk sections")
    nav.get_by_role("link", name="Doors").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Doors"
    assert page.get_by_role("row", name=re.compile("Floor 7 lab")).is_visible()
    assert nav.get_by_role("link", name="Doors").get_attribute("aria-current") == "page"

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(desk + "/login")
    page.goto(desk + "/")
    assert page.url.startswith(desk + "/login")


def test_desk_operator_sees_no_people_or_audit_and_is_refused_there(page: Any, desk: str) -> None:
    log_in(page, desk, "dex", PASSWORDS["dex"], path="/alarms")
    assert page.url == desk + "/alarms"  # back where the login began
    assert nav_links(page) == ["Visitors", "Live", "Alarms", "Incidents", "Doors", "Floors", "Muster", "Reports"]
    response = page.goto(desk + "/people")
    assert response is not None and response.status == 403
    assert page.get_by_role("heading", level=1).inner_text() == "Not allowed"
    assert "needs admin" in page.get_by_role("alert").inner_text()
    assert nav_links(page) == ["Visitors", "Live", "Alarms", "Incidents", "Doors", "Floors", "Muster", "Reports"]  # still their own way out
    assert page.goto(desk + "/api/v1/audit").status == 403


def test_security_alarms_without_a_door_are_listed_by_name_on_the_alarms_page(page: Any, desk: str,
                                                                                site: SiteRunner) -> None:
    """Intrusion signals and device-level security alarms (issue 12) reach the desk like door alarms do."""
    assert site.server is not None
    store, now = site.server.store, site.clock.wall()
    store.raise_alarm("card_probing", key="card_probing:door:lobby_in", at=now, door="lobby_in",
                      detail={"count": 5, "window_s": 60})
    store.raise_alarm("card_probing", key="card_probing:credential:ab12", at=now,
                      detail={"doors": ["lobby_in", "lobby_out", "lab", "x"], "credential_last4": ["4321"]})
    store.raise_alarm("device_misbehaving", key="device_misbehaving:pi-lobby:0", at=now, device="pi-lobby",
                      detail={"refusals": 6})
    store.raise_alarm("certificate_refused", key="certificate_refused:127.0.0.9", at=now,
                      detail={"address": "127.0.0.9", "refusals": 3})
    log_in(page, desk, "ada", PASSWORDS["ada"], "/alarms")
    body = page.locator("main").inner_text()
    for label in ("Card probing", "Device misbehaving", "Certificate refused by the broker"):
        assert label in body, f"{label!r} is not on the alarms page"
    # two rows (the page's type filter names the type too)
    assert page.locator("#alarm-rows-active th[scope=row]", has_text="Card probing").count() == 2
    assert "Active (4)" in body
    assert "card …4321" in body and "from 127.0.0.9" in body  # what an alarm at no door is about
    page.screenshot(path=str(Path(site.data_dir or ".") / "alarms-security.png"), full_page=True)


def test_admin_finds_a_site_change_in_the_history_and_rolls_it_back_with_confirmation(page: Any, desk: str,
                                                                                      site: SiteRunner) -> None:
    """Issue 13: the site history page lists each revision with its changes; a rollback asks first and is a
    new revision, live in the server's decisions at once."""
    server = site.server
    assert server is not None and server.siteadmin is not None
    server.siteadmin.change({"doors.lab.unlock_s": 9}, base=1, actor="desk:ada", summary="slower lab door")
    assert server.site.doors["lab"].unlock_s == 9
    log_in(page, desk, "ada", PASSWORDS["ada"], "/site")
    assert "Site" in nav_links(page)
    row = page.locator("#revision-2")
    assert "slower lab door" in row.inner_text() and "live" in row.inner_text()
    row.get_by_text("1 change").click()
    assert "~ doors.lab.unlock_s: 4 -> 9" in row.inner_text()
    page.get_by_role("link", name="Roll back to revision 1").click()
    page.wait_for_load_state()
    assert "Roll back to revision 1?" in page.locator("main").inner_text()
    page.get_by_role("button", name="Roll back to revision 1").click()
    page.wait_for_load_state()
    assert page.url.endswith("/site?done=rollback")
    assert "rollback to revision 1" in page.locator("#revision-3").inner_text()
    assert server.site.doors["lab"].unlock_s == 4
    page.screenshot(path=str(Path(site.data_dir or ".") / "site-history.png"), full_page=True)


def test_auditor_searches_the_audit_page_for_a_lost_card_and_sees_the_chain_intact(page: Any, desk: str,
                                                                                   site: SiteRunner) -> None:
    """Issue 13: the audit page shows the hash chain's verify status and finds an action by name."""
    from argon2 import PasswordHasher

    from doorkeep.model import CredentialState
    from server.operators import Operators

    server = site.server
    assert server is not None and server.audit is not None
    Operators(server.store, audit=server.audit, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
              ).add("aud", "auditor", "aud audit trail rules", actor="test")
    card = server.directory.card("em4100", "0F00A1B2C3")  # Alice's card on the demo site
    server.directory.set_card_state(card, CredentialState.LOST, actor="ada")
    log_in(page, desk, "aud", "aud audit trail rules", "/audit")
    assert "Audit" in nav_links(page)
    assert page.get_by_role("heading", level=1).inner_text() == "Audit log"
    status = page.locator("#chain-status")
    assert status.get_attribute("role") == "status" and "Chain intact" in status.inner_text()
    page.get_by_label("Action").fill("card.lost")
    page.get_by_role("button", name="Search").click()
    page.wait_for_load_state()
    assert "action=card.lost" in page.url
    rows = page.locator("#audit-records tbody tr")
    assert rows.count() == 1
    row = rows.first
    assert "card.lost" in row.inner_text() and "ada" in row.inner_text() and "alice" not in row.inner_text()
    row.get_by_text("4 fields").click()
    assert card[:12] in row.inner_text()  # the details unfold: the card's pseudonymous id
    page.screenshot(path=str(Path(site.data_dir or ".") / "audit-search.png"), full_page=True)


def test_admin_adds_an_operator_issues_a_token_shown_once_resets_the_password_and_the_operator_logs_in(
        page: Any, desk: str, browser: Any) -> None:
    """Issue 13: operators are run from the desk, not only the command line."""
    log_in(page, desk, "ada", PASSWORDS["ada"], "/operators")
    assert page.get_by_role("heading", level=1).inner_text() == "Operators"
    assert "Operators" in nav_links(page)
    first, second = "pat first passphrase ok", "pat second passphrase ok"
    page.get_by_label("Login name").fill("pat")
    page.get_by_label("Role", exact=True).select_option("desk")
    page.get_by_label("Password (at least").fill(first)
    page.get_by_label("The same password again").fill(first)
    page.get_by_role("button", name="Add operator").click()
    page.wait_for_load_state()
    assert "Operator pat added." in page.get_by_role("status").inner_text()
    assert page.locator('tr[data-operator="pat"] [data-field="role"]').inner_text() == "desk"

    pat = page.locator('[data-manage="pat"]')
    pat.get_by_label("New API token label").fill("front kiosk")
    pat.get_by_role("button", name="Issue token").click()
    page.wait_for_load_state()
    secret = page.get_by_label(re.compile("Token .front kiosk.")).input_value()
    assert secret.startswith("dkt_") and "shown this once" in page.get_by_role("alert").first.inner_text()
    page.get_by_role("link", name="Done: back to the operators").click()
    page.wait_for_load_state()
    assert secret not in page.content() and "front kiosk (desk)" in page.locator('tr[data-operator="pat"]').inner_text()

    pat = page.locator('[data-manage="pat"]')
    pat.get_by_label("New password for pat").fill(second)
    pat.get_by_label("The same again").fill(second)
    pat.get_by_role("button", name="Reset password").click()
    page.wait_for_load_state()
    assert "Password of pat reset" in page.get_by_role("status").inner_text()

    context = browser.new_context(viewport={"width": 1366, "height": 768})
    try:
        other = context.new_page()
        log_in(other, desk, "pat", first)
        assert "Wrong name or password" in other.get_by_role("alert").inner_text()
        log_in(other, desk, "pat", second)
        assert other.url == desk + "/"
        assert re.search(r"Signed in as\s+pat\s+\(desk\)", other.get_by_role("banner").inner_text())
        assert "Operators" not in nav_links(other)
    finally:
        context.close()
