"""Shared fixtures: one real Mosquitto per test session on a free loopback port."""

from __future__ import annotations

from typing import Iterator

import pytest

from simulators.brokers import MosquittoBroker
from simulators.wait import wait_until  # noqa: F401  (re-exported for the tests)



@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker().start()
    yield broker
    broker.stop()
