"""A counter several threads bump (paho's network thread and a service's workers), read as a copy."""

from __future__ import annotations

import threading
from collections import Counter


class LockedCounter(Counter[str]):
    """A ``Counter`` whose bumps and copies take one lock: a copy made while another thread adds a new name would
    otherwise fail (a dict changing size while it is read). Reading one value needs no lock."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, *names: str) -> None:
        """Each of ``names`` once more."""
        with self._lock:
            for name in names:
                self[name] += 1

    def snapshot(self) -> dict[str, int]:
        """A copy of every count (server/metrics.py reads it at scrape time)."""
        with self._lock:
            return dict(self)
