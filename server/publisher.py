"""The policy publisher: one signed policy snapshot per edge device.

Each device gets only what its doors need (``compile_policy``), signed with
the site's Ed25519 key, published retained on its ``policy`` topic, and
republished on every change to the site (a card reported lost, a visitor
checked in or out, a lockdown), so an edge that must decide on its own
decides on the current policy.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import Clock
from doorkeep.contract import Topics
from doorkeep.envelope import SnapshotRecipient
from doorkeep.model import Site
from doorkeep.policy import compile_policy, sign_policy
from server.store import Store

log = logging.getLogger("doorkeep.server.policy")

Publish = Callable[[str, bytes], None]


class PolicyPublisher:
    def __init__(self, site_id: str, device_doors: dict[str, list[str]], key: Ed25519PrivateKey, store: Store,
                 clock: Clock, snapshot_key: SnapshotRecipient | None = None) -> None:
        """``snapshot_key`` travels in every policy so edges can seal snapshots; changing it republishes."""
        self.topics = Topics(site_id)
        self.site_id = site_id
        self.device_doors = device_doors
        self.key = key
        self.store = store
        self.clock = clock
        self.snapshot_key = snapshot_key
        self._signed_key: dict[str, SnapshotRecipient | None] = {}
        self.version = 0
        self.published: dict[str, int] = {}
        self._last: dict[str, tuple[Site, bytes]] = {}
        self._lock = threading.Lock()

    def publish_all(self, site: Site, publish: Publish, *, force: bool = False) -> int:
        """Publish a new signed version to every device whose policy changed; returns the version.

        Signing is the costly part (about a second for 250,000 credentials), so a device whose subset
        did not change keeps its last policy; ``force`` (on every broker connect) re-sends the last
        payloads, which the edges accept as re-deliveries.
        """
        with self._lock:
            started = time.perf_counter()
            changed = {d: compile_policy(site, doors) for d, doors in self.device_doors.items()}
            changed = {d: sub for d, sub in changed.items() if d not in self._last or self._last[d][0] != sub
                       or self._signed_key.get(d) != self.snapshot_key}
            if changed:
                self.version = self.store.next_counter("policy_version")
            for device, subset in changed.items():
                payload = sign_policy(subset, site_id=self.site_id, device=device, version=self.version,
                                      issued_at=self.clock.wall(), key=self.key, snapshot_key=self.snapshot_key)
                self._last[device] = (subset, payload)
                self._signed_key[device] = self.snapshot_key
                self.published[device] = self.version
            for device in self.device_doors:
                if device in changed or force:
                    publish(self.topics.policy(device), self._last[device][1])
            log.info("policy version %d: %d of %d device(s) changed, published in %.1f ms", self.version,
                     len(changed), len(self.device_doors), (time.perf_counter() - started) * 1000)
            return self.version
