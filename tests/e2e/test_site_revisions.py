"""A site change is live at the doors without a restart (issue 13): the demo site on the session Mosquitto,
real edges, a change committed through the site service and through ``doorkeep site import`` beside the
running server; the next badge obeys it, and every affected edge holds the new signed policy within 2 s.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from doorkeep.cli import main
from simulators.site import SiteRunner
from simulators.wait import wait_until

pytestmark = pytest.mark.e2e

BOB, CHEN = ("bob", "0F00B0B0B0"), ("chen", "0F00C4C4C4")  # both on the staff level: the lobby and outside


def accesses(site: SiteRunner, door: str, person: str) -> list[dict[str, Any]]:
    assert site.server is not None
    return [e for e in site.server.store.events(50, door=door) if e["type"] == "access" and e["person"] == person]


def badge(site: SiteRunner, door: str, who: tuple[str, str]) -> dict[str, Any]:
    """Badge a card (a different card each time within a test: the reader drops a repeat within a second)."""
    person, card = who
    before = len(accesses(site, door, person))
    site.doors[door].reader.badge(card)
    assert wait_until(lambda: len(accesses(site, door, person)) > before, 10)
    return accesses(site, door, person)[0]


def test_taking_the_lobby_out_of_an_access_level_refuses_the_next_badge_and_reaches_the_edges_in_2_s(
        site: SiteRunner) -> None:
    server = site.server
    assert server is not None and server.siteadmin is not None
    assert badge(site, "lobby_in", CHEN)["decision"] == "granted"
    base = server.siteadmin.current()
    assert base is not None
    publisher = server.bus.publisher
    assert publisher is not None
    published_before = dict(publisher.published)
    started = time.monotonic()
    rev = server.siteadmin.change({"access_levels.staff.entries": [{"area": "outside", "schedule": "always"}]},
                                  base=base.number, actor="ada")
    assert rev.number == base.number + 1
    # every edge whose policy the change touched holds the newer signed policy within 2 s of the commit
    affected = {d for d, v in publisher.published.items() if v > published_before.get(d, 0)}
    assert "pi-lobby" in affected, (published_before, publisher.published)

    def edges_hold_it() -> bool:
        return all((site.agents[d].policy.version or 0) >= publisher.published[d] for d in affected)  # type: ignore[union-attr]

    assert wait_until(edges_hold_it, 2.0), "the affected edges did not hold the new policy within 2 s"
    assert time.monotonic() - started < 2.0
    event = badge(site, "lobby_in", BOB)
    assert (event["decision"], event["reason"]) == ("denied", "no_access")


def test_a_site_import_beside_the_running_server_is_live_without_a_restart(site: SiteRunner, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOORKEEP_CREDENTIAL_KEY", site.key.hex())  # the directory's people.toml is imported too
    server = site.server
    assert server is not None and server.siteadmin is not None and site.bundle is not None
    reviewed = tmp_path / "reviewed"
    shutil.copytree(site.bundle.dir, reviewed, ignore=shutil.ignore_patterns("keys", "pki"))
    text = (reviewed / "site.toml").read_text()
    assert 'unlock_s = 5\nheld_open_s = 20' in text
    (reviewed / "site.toml").write_text(text.replace('unlock_s = 5\nheld_open_s = 20', 'unlock_s = 9\nheld_open_s = 20', 1))
    before = server.siteadmin.current()
    assert before is not None
    assert main(["site", "import", str(reviewed), "--site", str(site.bundle.dir),
                 "--data", str(site.data_dir / "server")]) == 0
    assert wait_until(lambda: server.site.doors["lobby_in"].unlock_s == 9, 3), "the server did not pick it up"
    assert server.siteadmin.current().number == before.number + 1  # type: ignore[union-attr]
    assert badge(site, "lobby_in", BOB)["decision"] == "granted"  # still Bob's door: only its timing changed
    history = [r.summary for r in server.siteadmin.history()]
    assert history[0] == "doors.lobby_in changed"


def test_a_doors_times_reach_the_edges_door_machine_with_the_signed_policy(site: SiteRunner) -> None:
    """The device file holds the hardware; unlock, held-open and pre-alarm times come with the policy."""
    server = site.server
    assert server is not None and server.siteadmin is not None
    machine = site.agents["pi-floor7"].doors["lab"].machine
    assert (machine.timings.unlock_s, machine.timings.held_open_s) == (4.0, 15.0)
    base = server.siteadmin.current()
    assert base is not None
    server.siteadmin.change({"doors.lab.unlock_s": 7, "doors.lab.held_open_s": 40, "doors.lab.prealarm_s": 5},
                            base=base.number, actor="ada")
    assert wait_until(lambda: (machine.timings.unlock_s, machine.timings.held_open_s, machine.timings.prealarm_s)
                      == (7.0, 40.0, 5.0), 2.0), machine.timings
    untouched = site.agents["pi-lobby"].doors["lobby_in"].machine.timings
    assert (untouched.unlock_s, untouched.held_open_s) == (5.0, 20.0)
