"""A timed override from the doors board, in a real headless Chromium on the demo site (simulated edges, doors
and readers, the real server, Mosquitto), and the board's physical state apart from its open alarms (issue 16):

- the lab gate is forced and closed again: the board reads "locked" with "1 open alarm", not "alarm";
- an operator holds the lab unlocked until a time from the board; the board shows "unlocked until HH:MM";
- the server is stopped; the time comes (a ScenarioClock jumps it); the edge relocks the door by itself;
- the server comes back: the board shows the door "locked", no override, still its open alarm, and the
  server holds the edge's ``override_ended`` event.

Screenshots go to tests/e2e/artifacts/. Skipped, with the reason, when the browser or Playwright is absent.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest

from server.app import Server
from simulators.clock import ScenarioClock
from simulators.site import DEMO_SITE, SiteRunner
from simulators.wait import wait_until
from tests.e2e.test_desk_a11y import AXE, axe_violations
from tests.e2e.test_desk_browser import PASSWORDS, browser, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture
def site(mosquitto: Any, tmp_path: Path) -> Iterator[SiteRunner]:
    """The demo site on a ScenarioClock, so an override's end comes without waiting for it."""
    runner = SiteRunner.from_dir(DEMO_SITE, broker_url=mosquitto.url, data_dir=tmp_path,
                                 clock=ScenarioClock(time.time()))
    runner.start()
    try:
        assert runner.wait_connected(10), "edges and server did not connect to Mosquitto"
        assert runner.wait_policies(10), "the edges did not receive the server's signed policy"
        assert runner.wait_hardware(10)
        yield runner
    finally:
        runner.stop()


@contextmanager
def serve_desk(server: Server, first: bool) -> Iterator[str]:
    """The desk app around ``server`` under uvicorn in a thread (again after a server restart); its base URL."""
    import uvicorn
    from server.web.serving import desk_server, uvicorn_config
    from argon2 import PasswordHasher

    from server.web.app import create_app

    app = create_app(server, hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    if first:
        app.state.desk.operators.add("dex", "desk", PASSWORDS["dex"], actor="test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = desk_server(uvicorn_config(app, host="127.0.0.1", port=port, log_level="warning"))  # as deployed
    thread = threading.Thread(target=web.run, name="desk-uvicorn", daemon=True)
    thread.start()
    assert wait_until(lambda: web.started, 10), "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(10)


def row(page: Any, door: str) -> Any:
    return page.locator(f'tr[data-door="{door}"]')


def field(page: Any, door: str, name: str) -> Any:
    return page.locator(f'tr[data-door="{door}"] [data-field="{name}"]')


def shot(page: Any, name: str) -> None:
    """Keep a screenshot, and check the page with axe-core (when make test fetched it): nothing serious."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)
    if AXE.exists():
        assert axe_violations(page) == [], name


def test_a_timed_unlock_from_the_board_ends_by_itself_with_the_server_stopped(page: Any, site: SiteRunner) -> None:
    assert site.server is not None
    lab = site.doors["lab"]
    agent = next(a for a in site.agents.values() if "lab" in a.doors)
    zone = ZoneInfo(site.server.site.timezone)

    with serve_desk(site.server, first=True) as desk:
        log_in(page, desk, "dex", PASSWORDS["dex"], path="/doors")
        field(page, "lab", "state").filter(has_text=re.compile("^locked$")).wait_for()

        # Forced and closed again: the door is locked, its alarm is still owed.
        lab.door.open()
        field(page, "lab", "state").filter(has_text="forced open").wait_for()
        lab.door.close()
        field(page, "lab", "state").filter(has_text=re.compile("^locked$")).wait_for()
        field(page, "lab", "alarms").filter(has_text="1 open alarm").wait_for()
        assert field(page, "lab", "alarm_priority").inner_text() == "high priority"

        # Hold the lab unlocked until two minutes from now (site time), from the board.
        row(page, "lab").get_by_role("link", name="Override Floor 7 lab…").click()
        assert page.get_by_role("heading", level=1).inner_text() == "Override Floor 7 lab"
        end = dt.datetime.fromtimestamp(site.clock.wall() + 120, zone).replace(second=0, microsecond=0) + \
            dt.timedelta(minutes=1)
        page.get_by_label("Keep unlocked").check()
        page.get_by_label(re.compile(r"^Until \(site time")).fill(end.strftime("%Y-%m-%dT%H:%M"))
        shot(page, "door-override-form.png")
        page.get_by_role("button", name="Set the override").click()
        page.wait_for_url(re.compile(r"/doors\?done=override_set&target=lab$"))
        page.locator("p.notice[role=status]").filter(has_text="The override of Floor 7 lab is in force").wait_for()
        assert lab.door.wait_relay(True, 5), "the override did not energise the lab's relay"
        tag = field(page, "lab", "override")
        assert tag.is_visible() and tag.inner_text() == f"unlocked until {end.strftime('%H:%M')}"
        field(page, "lab", "state").filter(has_text=re.compile("^unlocked$")).wait_for()
        shot(page, "doors-board-override.png")
        audit = [(r["actor"], r["action"], r["details"]["args"].get("until")) for r in site.server.audit.records()
                 if r["action"] == "door.unlock"]
        assert audit and audit[0][0] == "dex" and audit[0][2], "the override is audited under the operator"

    # The server goes away; the override's time comes; the edge alone relocks the door.
    site.stop_server()
    assert lab.door.relay_energised, "stopping the server changes nothing at the door"
    site.advance(end.timestamp() - site.clock.wall() - 1)
    assert lab.door.relay_energised, "a second before its end the door is still held unlocked"
    site.advance(2)
    assert lab.door.wait_relay(False, 5), "the edge did not end the override by itself"
    assert agent.counters["overrides_ended_expired"] == 1
    assert agent.overrides == {}

    # The server comes back: the board shows the door locked, no override, and the alarm still owed.
    server = site.start_server()
    assert site.wait_connected(10)
    with serve_desk(server, first=False) as desk:
        page.goto(desk + "/doors")  # the session is in the store: it outlives the server's restart
        assert page.url == desk + "/doors"
        field(page, "lab", "state").filter(has_text=re.compile("^locked$")).wait_for()
        assert not field(page, "lab", "override").is_visible()
        assert field(page, "lab", "alarms").inner_text() == "1 open alarm"
        assert wait_until(lambda: any(e["type"] == "override_ended" for e in server.store.events(50, door="lab")), 10)
        ended = next(e for e in server.store.events(50, door="lab") if e["type"] == "override_ended")
        detail = json.loads(ended["detail"]) if isinstance(ended["detail"], str) else ended["detail"]
        assert detail["why"] == "expired" and detail["kind"] == "unlock"
        shot(page, "doors-board-after-override.png")
        page.set_viewport_size({"width": 360, "height": 740})
        shot(page, "doors-board-360.png")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 360, f"the board overflows a 360 px screen ({width} px)"
