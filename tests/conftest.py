"""Shared fixtures: one real Mosquitto per test session on a free loopback port."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterator

import pytest

from simulators.brokers import MosquittoBroker

# The fault-injection suite (tests/faults, docs/faults.md) runs with `make faults`. It is kept out of
# `make test` until an intermittent loss of reader bytes between consecutive pty simulators in one
# process is understood (see the closing note); DOORKEEP_FAULTS=1 brings it in.
collect_ignore = [] if os.environ.get("DOORKEEP_FAULTS") == "1" else ["faults"]


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker().start()
    yield broker
    broker.stop()


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll a condition until it holds or the deadline passes (never a blind sleep)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)
