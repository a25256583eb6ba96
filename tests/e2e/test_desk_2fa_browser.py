"""Two-factor login in a real headless Chromium (docs/desk.md "Two-factor login"): an admin enrols an
authenticator app from the page, logs out, logs in with password then code, logs in with a recovery code,
and the same recovery code is refused the second time.

Real parts: Debian's chromium driven by Playwright, the real desk app served by uvicorn on a loopback port
around a real server and SQLite store on the demo site (its bus is not started: no door is involved), codes
computed with pyotp from the secret the page shows. The desk runs on a fake clock moved 30 s between logins,
so each login has a fresh code without waiting (a code is never accepted twice).
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pyotp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import FakeClock
from doorkeep.config import BrokerConfig, load_site_dir
from doorkeep.envelope import SnapshotKeys
from simulators.wait import wait_until
from tests.e2e.test_desk_browser import PASSWORDS, browser, page  # noqa: F401 - fixtures, used by name

pytestmark = pytest.mark.e2e
DEMO = Path(__file__).resolve().parents[2] / "doorkeep" / "sites" / "demo"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(wall=time.time())


@pytest.fixture
def desk(tmp_path: Path, clock: FakeClock) -> Iterator[str]:
    import uvicorn
    from server.web.serving import desk_server, uvicorn_config
    from argon2 import PasswordHasher

    from server.app import bootstrap
    from server.web.app import create_app

    server = bootstrap(load_site_dir(DEMO), tmp_path / "data", BrokerConfig("mqtt://127.0.0.1:9"),
                       key=secrets.token_bytes(32), signing_key=Ed25519PrivateKey.generate(),
                       snapshot_keys=SnapshotKeys.generate(), clock=clock)
    app = create_app(server, clock=clock, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    app.state.desk.operators.add("ada", "admin", PASSWORDS["ada"], actor="test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = desk_server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning"))  # as deployed
    thread = threading.Thread(target=srv.run, name="desk-uvicorn", daemon=True)
    thread.start()
    assert wait_until(lambda: srv.started, 10), "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    server.store.close()


def password_step(page: Any, base: str) -> None:
    page.goto(base + "/")
    assert page.url.startswith(base + "/login")
    page.get_by_label("Name").fill("ada")
    page.get_by_label("Password").fill(PASSWORDS["ada"])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", level=1).inner_text() == "Enter your code"


def code_step(page: Any, code: str) -> None:
    page.get_by_label("Code", exact=True).fill(code)
    page.get_by_role("button", name="Verify").click()
    page.wait_for_load_state()


def log_out(page: Any, base: str) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(base + "/login")


def test_enrol_then_log_in_with_a_code_and_with_a_recovery_code_that_works_only_once(
        page: Any, desk: str, clock: FakeClock) -> None:
    page.goto(desk + "/")
    page.get_by_label("Name").fill("ada")
    page.get_by_label("Password").fill(PASSWORDS["ada"])
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(desk + "/")  # no second factor yet: the password alone

    page.get_by_role("link", name="Two-factor login").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Two-factor login"
    assert page.get_by_role("img", name="QR code of the secret for your authenticator app").is_visible()
    secret = page.locator("#totp-secret").inner_text().replace(" ", "")
    assert page.locator("#totp-uri").inner_text().startswith("otpauth://totp/")
    page.get_by_label("Code from the app").fill(pyotp.TOTP(secret).at(clock.wall()))
    page.get_by_role("button", name="Turn on two-factor login").click()
    page.wait_for_load_state()
    codes = [c.strip() for c in page.get_by_role("list", name="Recovery codes").get_by_role("listitem").all_inner_texts()]
    assert len(codes) == 10 and "Two-factor login is on" in page.get_by_role("status").first.inner_text()
    log_out(page, desk)

    clock.advance(30)
    password_step(page, desk)
    code_step(page, pyotp.TOTP(secret).at(clock.wall()))
    assert page.url == desk + "/"
    assert page.get_by_role("heading", level=1).inner_text() == "Security desk — Demo HQ"
    log_out(page, desk)

    password_step(page, desk)
    code_step(page, codes[0])
    assert page.url == desk + "/"
    log_out(page, desk)

    password_step(page, desk)
    code_step(page, codes[0])
    assert "Wrong or already used code" in page.get_by_role("alert").inner_text()
    assert page.get_by_role("heading", level=1).inner_text() == "Enter your code"
    assert not any(c["name"] == "doorkeep_session" for c in page.context.cookies())
