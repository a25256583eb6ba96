"""Shared fixtures: one real Mosquitto per test session on a free loopback port."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from simulators.brokers import MosquittoBroker
from simulators.wait import wait_until  # noqa: F401  (re-exported for the tests)

# The fault-injection suite (tests/faults, docs/faults.md) runs with `make faults`. It is kept out of
# `make test` until an intermittent loss of reader bytes between consecutive pty simulators in one
# process is understood (see the closing note); DOORKEEP_FAULTS=1 brings it in.
collect_ignore = [] if os.environ.get("DOORKEEP_FAULTS") == "1" else ["faults"]


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker().start()
    yield broker
    broker.stop()
