"""The policy publisher: one signed policy snapshot per edge device.

Each device gets only what its doors need (``compile_policy``), signed with
the site's Ed25519 key, published retained on its ``policy`` topic, and
republished on every change to the site (a card reported lost, a visitor
checked in or out, a lockdown), so an edge that must decide on its own
decides on the current policy.

Versions only ever grow for a site, whatever happens to the store. An edge
refuses a policy older than the one it holds (a replay), so a server whose
store was replaced (a fresh data directory, a restored backup) and counted
again from 1 would publish policies every edge refuses, and a card reported
lost afterwards would still open doors offline. A version is therefore the
largest of three values, none of which alone is enough:

* the store's counter + 1: never repeats while the store lives, even when the
  wall clock is stepped back;
* the wall clock in milliseconds since the epoch: a fresh or restored store
  starts above every version issued before, as long as the clock is right;
* the highest version this server finds retained on the broker for any of
  the site's devices + 1 (:meth:`PolicyPublisher.observe`), signature checked
  with the site's own key: covers a fresh store *and* a clock stepped back.
  When such a retained policy arrives after this server already published
  (at connect, the broker hands out the old retained copies while the new
  ones are on their way), the devices it concerns are re-signed above it.

Versions stay below 2**53 (exact in JSON, in a double, in int64):
``MAX_POLICY_VERSION``; wall-clock milliseconds reach that in the year 287396.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import Clock
from doorkeep.contract import Topics
from doorkeep.envelope import SnapshotRecipient
from doorkeep.model import Site
from doorkeep.policy import ReaderSignals, compile_policy, gc_paused, policy_text, sign_policy
from server.store import Store

log = logging.getLogger("doorkeep.server.policy")

Publish = Callable[[str, bytes], None]

#: The largest policy version ever issued or believed: 2**53 - 1, exact in JSON numbers and doubles.
MAX_POLICY_VERSION = 2**53 - 1

# The head of a body sign_policy wrote: {"site":...,"device":...,"version":N,... (json.dumps keeps that order).
# Read only after the signature has been checked, so the text is the site's own words; a full parse of a
# multi-megabyte policy would cost the network thread far more than this.
_SIGNED_HEAD = re.compile(r'\{"site":("(?:[^"\\]|\\.)*"),"device":("(?:[^"\\]|\\.)*"),"version":(0|[1-9][0-9]{0,18})[,}]')


def signed_version(payload: bytes, key: Ed25519PrivateKey, *, site_id: str, device: str) -> int | None:
    """The version of a policy envelope signed with ``key`` for this site and device; None for anything else.

    Cheaper than :func:`doorkeep.policy.verify_policy` (no decode of the site), for reading the versions
    retained on the broker: a device may publish on its own subtree, but it cannot sign.
    """
    try:
        envelope = json.loads(payload)
        signed, signature = envelope["signed"], envelope["signature"]
        if not isinstance(signed, str) or not isinstance(signature, str):
            return None
        raw = signed.encode("utf-8")
        key.public_key().verify(base64.b64decode(signature, validate=True), raw)
    except (ValueError, TypeError, KeyError, binascii.Error, InvalidSignature, UnicodeError, RecursionError):
        return None
    head = _SIGNED_HEAD.match(signed)
    if head is None or json.loads(head[1]) != site_id or json.loads(head[2]) != device:
        return None
    version = int(head[3])
    return version if version <= MAX_POLICY_VERSION else None


class PolicyPublisher:
    def __init__(self, site_id: str, device_doors: dict[str, list[str]], key: Ed25519PrivateKey, store: Store,
                 clock: Clock, snapshot_key: SnapshotRecipient | None = None,
                 reader_signals: ReaderSignals | None = None, pass_keys: dict[str, str] | None = None) -> None:
        """``snapshot_key`` travels in every policy so edges can seal snapshots; ``reader_signals`` (the site's
        ``[intrusion]`` reader thresholds) so an edge without a site file applies them too. Changing either
        republishes; the edges hold them with the rest of their policy."""
        self.topics = Topics(site_id)
        self.site_id = site_id
        self.device_doors = device_doors
        self.key = key
        self.store = store
        self.clock = clock
        self.snapshot_key = snapshot_key
        self.reader_signals = reader_signals
        #: Visitor pass keys (server/passes.py, ``{key id: public key}``) signed into every policy; None: no passes.
        self.pass_keys = pass_keys
        self._signed_pass_keys: dict[str, dict[str, str] | None] = {}
        self._signed_key: dict[str, SnapshotRecipient | None] = {}
        self._signed_signals: dict[str, ReaderSignals | None] = {}
        self.version = 0
        self.published: dict[str, int] = {}
        #: When (wall clock) each device's current version was signed (server/metrics.py: a policy's age).
        self.published_at: dict[str, float] = {}
        self._last: dict[str, tuple[str, bytes]] = {}  # device -> (its policy's text, the signed payload)
        #: The highest version seen retained on the broker for this site (signature checked): the floor.
        self.floor = 0
        self._stale: set[str] = set()  # devices whose retained policy is newer than the one published here
        self._lock = threading.Lock()
        # Guards floor and _stale only: observe() runs on the MQTT network thread and must never wait
        # behind a publish_all() that is signing a large policy under _lock.
        self._seen_lock = threading.Lock()

    def next_version(self) -> int:
        """A version above every one this site has issued: see the module docstring for why three sources."""
        with self._seen_lock:
            floor = self.floor
        at_least = max(int(self.clock.wall() * 1000), floor + 1)
        version = self.store.next_counter("policy_version", at_least=at_least)
        if version > MAX_POLICY_VERSION:
            # Only a wall clock in the year 287396 or a floor at the limit gets here: refuse to sign rather
            # than publish a version that JSON readers would round.
            raise ValueError(f"policy version {version} exceeds {MAX_POLICY_VERSION}; check the server clock "
                             "and the retained policies on the broker")
        return version

    def awaiting_resign(self) -> set[str]:
        """Devices whose policy retained on the broker is at or above this server's, not yet re-signed above it
        (``/readyz``: the publisher is not current while any is)."""
        with self._seen_lock:
            return set(self._stale)

    def observe(self, device: str, payload: bytes) -> bool:
        """A policy seen on the broker for ``device`` (retained, or this server's own echo).

        Returns True when it is one this server did not publish and is at least as new as the one it
        published for that device: the device must be re-signed above it (:meth:`publish_all` does so on
        its next call), otherwise the edge would refuse this server's policies as a replay.
        """
        last = self._last.get(device)  # read without _lock (see __init__): one atomic dict lookup
        if last is not None and last[1] == payload:
            return False  # this server's own policy coming back
        if device not in self.device_doors:
            return False
        version = signed_version(payload, self.key, site_id=self.site_id, device=device)
        if version is None:
            log.warning("ignored a policy on %s's topic that this site's key did not sign", device)
            return False
        with self._seen_lock:
            self.floor = max(self.floor, version)
            if version < self.published.get(device, 0):
                return False
            self._stale.add(device)
        log.warning("policy version %d for %s is retained on the broker, at or above the %d this server "
                    "published (store replaced or restored?): re-signing above it", version, device,
                    self.published.get(device, 0))
        return True

    def publish_all(self, site: Site, publish: Publish, *, force: bool = False) -> int:
        """Publish a new signed version to every device whose policy changed; returns the version.

        Signing is the costly part (about a second for 250,000 credentials), so a device whose subset
        did not change keeps its last policy; ``force`` (on every broker connect) re-sends the last
        payloads, which the edges accept as re-deliveries.
        """
        with self._lock:
            started = time.perf_counter()
            with self._seen_lock:
                stale, self._stale = self._stale, set()
            signals = self.reader_signals  # read once: every device of this version gets the same
            # The collector paused: compiling and writing a device's subset makes hundreds of thousands of
            # short-lived objects, and a full collection they trigger would hold the interpreter lock for
            # hundreds of ms while a decision waits (bench/site_changes.py). Only the text is kept, so
            # nothing of them outlives the change.
            with gc_paused():
                subsets = {d: compile_policy(site, doors) for d, doors in self.device_doors.items()}
                texts = {d: policy_text(sub) for d, sub in subsets.items()}
                changed = {d: sub for d, sub in subsets.items() if d not in self._last
                           or self._last[d][0] != texts[d] or self._signed_key.get(d) != self.snapshot_key
                           or self._signed_signals.get(d) != signals or d in stale
                           or self._signed_pass_keys.get(d) != self.pass_keys}
                if changed:
                    self.version = self.next_version()
                for device, subset in changed.items():
                    payload = sign_policy(subset, site_id=self.site_id, device=device, version=self.version,
                                          issued_at=self.clock.wall(), key=self.key, snapshot_key=self.snapshot_key,
                                          reader_signals=signals, text=texts[device], pass_keys=self.pass_keys)
                    self._last[device] = (texts[device], payload)
                    self._signed_key[device] = self.snapshot_key
                    self._signed_signals[device] = signals
                    self._signed_pass_keys[device] = self.pass_keys
                    self.published[device] = self.version
                    self.published_at[device] = self.clock.wall()
                changed_devices = set(changed)
                subset = None
                del subsets, changed, subset  # freed before the collector runs again: it never walks them
            for device in self.device_doors:
                if device in changed_devices or force:
                    publish(self.topics.policy(device), self._last[device][1])
            log.info("policy version %d: %d of %d device(s) changed, published in %.1f ms", self.version,
                     len(changed_devices), len(self.device_doors), (time.perf_counter() - started) * 1000)
            return self.version
