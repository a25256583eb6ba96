"""``doorkeep doctor`` on a running site: the edges' clocks as the server measured them from their heartbeats.

The demo site runs on the session Mosquitto; its edges share the test's clock, so their drift is nothing.
A Pi whose clock is ten seconds ahead is played by a peer publishing the retained ``state`` heartbeat of
``pi-annex`` (a device of the demo site's broker ACL with no doors) with a ``ts`` ten seconds ahead.
"""

from __future__ import annotations

import json

import pytest

from doorkeep.clock import iso_ms
from doorkeep.config import load_site_dir
from doorkeep.contract import Topics
from server.doctor import MEDIUM, diagnose
from tests.conftest import wait_until
from simulators.site import DEMO_SITE, SiteRunner
from tests.e2e.test_door import raw_client

pytestmark = pytest.mark.e2e


def drift_rows(site: SiteRunner) -> dict[str, float]:
    assert site.server is not None
    return {r["device"]: r["drift_s"] for r in site.server.store.rows("device_clock")}


def test_doctor_reports_an_edge_clock_ten_seconds_ahead_from_its_live_heartbeat(site: SiteRunner) -> None:
    assert site.server is not None and site.data_dir is not None
    # The running edges' heartbeats are measured: the same clock, so well under a second apart.
    assert wait_until(lambda: {"pi-lobby", "pi-floor7"} <= set(drift_rows(site)), 10), drift_rows(site)
    assert all(abs(d) < 1.0 for d in drift_rows(site).values())

    client = raw_client(site, "pi-annex")
    try:
        state = {"schema": "doorkeep.state/1", "device": "pi-annex", "ts": iso_ms(site.clock.wall() + 10.0),
                 "versions": {}, "doors": {}, "readers": {}}
        client.publish(Topics("demo").state("pi-annex"), json.dumps(state).encode(), qos=1, retain=True) \
            .wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()
    assert wait_until(lambda: 9.0 < drift_rows(site).get("pi-annex", 0.0) < 11.0, 10), drift_rows(site)
    assert site.server.bus.wait_idle(5)

    found = [f for f in diagnose(load_site_dir(DEMO_SITE), data_dir=site.data_dir / "server", store_url=site.store_url)
             if f.check == "clock_drift"]
    assert [(f.where, f.severity) for f in found] == [("device pi-annex", MEDIUM)]
    assert "ahead of" in found[0].what
