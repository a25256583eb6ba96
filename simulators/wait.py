"""Waiting on a condition with a deadline: the only way tests, simulators and benches wait."""

from __future__ import annotations

import threading
import time
from typing import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` seconds pass (False); never a blind sleep."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        pause.wait(interval)
