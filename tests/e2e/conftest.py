"""A whole demo site on simulators, wired to the session's real Mosquitto over mutual TLS.

``mosquitto.url`` is ``mqtts://``; the runner finds each client's certificate (the server's, every
device's) in the session broker's PKI by itself (see tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from simulators.site import DEMO_SITE, SiteRunner
from tests.conftest import wait_until


@pytest.fixture
def site(mosquitto, tmp_path: Path) -> Iterator[SiteRunner]:
    runner = SiteRunner.from_dir(DEMO_SITE, broker_url=mosquitto.url, data_dir=tmp_path)
    runner.start()
    assert runner.broker_config("server").tls, "the e2e site must run over mutual TLS"
    assert runner.wait_connected(10), "edges and server did not connect to Mosquitto"
    # Snapshots need a camera with frames in its ring buffer, and the snapshot key of the signed policy.
    assert wait_until(lambda: all(c.stats.online for a in runner.agents.values() for c in a.cameras.values()), 10)
    assert runner.wait_policies(10), "the edges did not receive the server's signed policy"
    yield runner
    runner.stop()


@pytest.fixture
def edge_only(mosquitto, tmp_path: Path) -> Iterator[SiteRunner]:
    runner = SiteRunner.from_dir(DEMO_SITE, broker_url=mosquitto.url, data_dir=tmp_path)
    runner.start(with_server=False)
    assert runner.wait_connected(10)
    yield runner
    runner.stop()
