"""Issue 16, "Incidents and evidence", in a real headless Chromium around a whole demo site on Mosquitto: a door
forced open on the simulators raises an alarm; from its row on the Alarms page the operator opens an incident
(the form pre-filled), adds a note, sees the event's snapshot on the incident's page, downloads the signed
evidence bundle, and ``doorkeep evidence verify`` (a separate process, pinned to the site's public key) finds
it intact, and finds one byte changed in a copy. The chain of custody is in the audit log.

Screenshots go to tests/e2e/artifacts/ (not committed). Skipped, with the reason, when chromium or Playwright
is absent.
"""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from simulators.site import SiteRunner
from simulators.wait import wait_until
from tests.e2e.test_desk_browser import PASSWORDS, browser, desk, log_in, page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ROOT = Path(__file__).resolve().parents[2]


def verify(bundle: Path, key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "doorkeep", "evidence", "verify", str(bundle), "--key", str(key)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_an_incident_opened_from_a_forced_door_exports_a_bundle_the_cli_verifies(
        page: Any, desk: str, site: SiteRunner, tmp_path: Path) -> None:  # noqa: F811
    assert site.server is not None and site.server.audit is not None
    ARTIFACTS.mkdir(exist_ok=True)
    site.doors["lobby_out"].door.open()  # forced: no badge, the lock never released
    store = site.server.store
    assert wait_until(lambda: any(a["type"] == "forced_open" for a in store.open_alarms()), 10)
    alarm = next(a for a in store.open_alarms() if a["type"] == "forced_open")
    assert wait_until(lambda: (store.event(alarm["source_event"]) or {}).get("snapshot_path"), 10)

    log_in(page, desk, "dex", PASSWORDS["dex"], "/alarms")
    row = page.locator(f'tr[data-alarm="{alarm["id"]}"]')
    row.get_by_role("link", name=re.compile("^Open an incident from Door forced open")).click()
    page.wait_for_url(re.compile(r"/incidents/new\?alarm="))
    assert page.get_by_label("Title").input_value().startswith("Door forced open at")
    assert page.get_by_label("Severity").input_value() == "high"  # the alarm's priority
    assert page.get_by_label(re.compile("^Alarm: forced_open|^Alarm: Door forced open")).is_checked()
    page.get_by_label("Title").fill("Lobby exit forced during the night")
    page.get_by_label("First note (optional)").fill("Guard sent to check the door")
    page.get_by_role("button", name="Open the incident").click()
    page.wait_for_url(re.compile(r"/incidents/\d+\?done=opened$"))
    incident_url = page.url.split("?")[0]
    assert "Incident opened" in page.get_by_role("status").inner_text()
    events = page.locator("section", has=page.locator("#events-heading"))
    thumb = events.locator(f'tr[data-event="{alarm["source_event"]}"] img.thumb')
    thumb.wait_for()
    assert page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=thumb.element_handle())

    page.get_by_label("Add a note").fill("Door closed, no one seen on camera")
    page.get_by_role("button", name="Add the note").click()
    page.wait_for_url(re.compile(r"\?done=note$"))
    assert "Door closed, no one seen on camera" in page.locator(".incident-timeline").inner_text()
    page.screenshot(path=str(ARTIFACTS / "incident-1366.png"), full_page=True)

    with page.expect_download() as info:
        page.get_by_role("link", name="Download the evidence bundle").click()
    bundle = tmp_path / info.value.suggested_filename
    info.value.save_as(str(bundle))
    assert re.fullmatch(r"incident-\d+-evidence\.zip", bundle.name)
    with zipfile.ZipFile(bundle) as z:
        assert f"snapshots/{alarm['source_event']}.jpg" in z.namelist()
        assert z.read(f"snapshots/{alarm['source_event']}.jpg")[:2] == b"\xff\xd8"  # decrypted: a JPEG

    key = tmp_path / "policy-signing.pub"
    key.write_bytes(site.signing_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    ok = verify(bundle, key)
    assert ok.returncode == 0, ok.stderr
    assert "ok: the bundle is intact and signed by the pinned key" in ok.stdout
    assert page.locator("code.fingerprint").inner_text() in ok.stdout  # the desk shows the same fingerprint

    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item)
            if item.filename == "events.json":
                data = data.replace(b"forced_open", b"forced_opem", 1)
            zout.writestr(item, data)
    bad = verify(tampered, key)
    assert bad.returncode == 1 and "changed file: events.json" in bad.stderr

    ref = "incident:" + incident_url.rsplit("/", 1)[1]
    custody = [(r["actor"], r["action"]) for r in reversed(site.server.audit.records()) if r["target"] == ref]
    assert custody[0] == ("dex", "incident.open") and ("dex", "incident.export") in custody
    assert ("dex", "incident.view") in custody and ("dex", "incident.note") in custody

    page.set_viewport_size({"width": 360, "height": 780})
    page.goto(incident_url)
    page.screenshot(path=str(ARTIFACTS / "incident-360.png"), full_page=True)
    wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 361)
                             .slice(0, 8).map(e => e.tagName + '.' + e.className + '#' + e.id)""")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 360, wide

    # The dark theme (the system's setting): really dark, and no serious accessibility violation in its palette.
    from tests.e2e.test_desk_a11y import AXE, axe_violations
    from tests.e2e.test_desk_dark import luminance

    page.set_viewport_size({"width": 1366, "height": 768})
    page.emulate_media(color_scheme="dark")
    for path in (incident_url, desk + "/incidents"):
        page.goto(path)
        background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
        assert luminance(background) < 0.05, background
        if AXE.exists():
            assert axe_violations(page) == [], path
    page.goto(incident_url)
    page.screenshot(path=str(ARTIFACTS / "incident-dark.png"), full_page=True)
    site.doors["lobby_out"].door.close()
