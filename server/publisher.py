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

Deltas (doorkeep/policy_delta.py; on when the caller passes ``publish_delta``): a change reaches a device
that holds a policy from this server as a signed delta on the version last sent to it (QoS 1, not retained,
on ``policy/delta``), a few hundred bytes instead of the whole policy, and without re-signing the whole
policy. A full policy is signed and retained instead when the device has none from this server yet, when
``snapshot_key``, ``reader_signals`` or ``pass_keys`` changed, every :attr:`DeltaSettings.max_deltas`
deltas, once :attr:`DeltaSettings.full_every_s` has passed since the last full one, when the delta would
weigh more than :attr:`DeltaSettings.max_fraction` of the full one, and on every broker connect. The
retained full policy is then older than the version the connected edges hold; an edge that joins late, or
missed a delta, says so in its retained ``state`` (``policy.version`` behind, or ``policy.wants_full``
after refusing a delta): :meth:`PolicyPublisher.note_state` picks that up and the device gets a new full
policy (:meth:`PolicyPublisher.publish_full`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import Clock
from doorkeep.contract import Topics
from doorkeep.envelope import SnapshotRecipient
from doorkeep.model import Site
from doorkeep.policy import ReaderSignals, compile_policy, gc_paused, policy_text, sign_policy
from doorkeep.policy_delta import PolicyChanges, PolicyDigest, diff_policy, sign_delta
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


@dataclass(frozen=True)
class DeltaSettings:
    """When a change goes as a delta and when as a full policy (see the module docstring)."""

    max_deltas: int = 100          # deltas on one full policy before the next full one
    full_every_s: float = 3600.0   # a change after this long since the last full policy sends a full one
    max_fraction: float = 0.25     # a delta heavier than this share of the full policy is sent as a full one
    behind_grace_s: float = 2.0    # an edge's state behind the version sent this soon after it is in flight


class PolicyPublisher:
    def __init__(self, site_id: str, device_doors: dict[str, list[str]], key: Ed25519PrivateKey, store: Store,
                 clock: Clock, snapshot_key: SnapshotRecipient | None = None,
                 reader_signals: ReaderSignals | None = None, pass_keys: dict[str, str] | None = None,
                 deltas: DeltaSettings | None = None) -> None:
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
        self.deltas = deltas or DeltaSettings()
        # Per device, the chain the deltas continue (under _lock): the subset last sent, its digest, when the
        # last full policy was signed and its size, and how many deltas went since.
        self._subset: dict[str, Site] = {}
        self._digest: dict[str, PolicyDigest] = {}
        self._full_at: dict[str, float] = {}
        self._full_size: dict[str, int] = {}
        self._since_full: dict[str, int] = {}
        self._sent_at: dict[str, float] = {}  # monotonic time of the last policy or delta sent to each device
        self._want_full: set[str] = set()  # devices whose edge is behind: a full policy on the next publish
        self._reported: dict[str, int] = {}  # the version each edge's retained state says it holds (unsigned)
        #: Deltas and full policies sent, for /metrics and the benches.
        self.deltas_sent = 0
        self.fulls_sent = 0
        self.delta_bytes = 0

    def next_version(self) -> int:
        """A version above every one this site has issued: see the module docstring for why three sources."""
        with self._seen_lock:
            floor = self.floor
            reported = max(self._reported.values(), default=0)
        if floor:
            # An edge may hold a delta's version, above the retained full policy the floor was read from (a
            # replaced store): its retained state says so. Unsigned, so believed only within what a delta can
            # be above its base (full_every_s of wall clock and max_deltas steps): a lying device lifts
            # versions by an hour at most.
            floor = max(floor, min(reported, floor + int(self.deltas.full_every_s * 1000) + self.deltas.max_deltas))
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

    def note_state(self, device: str, payload: bytes) -> bool:
        """An edge's retained ``state`` (any thread): True when its policy is behind and it needs a full policy.

        Behind: ``policy.wants_full`` (it refused a delta), or a version below the one sent to it last, once
        that was sent longer than ``behind_grace_s`` ago (sooner, the delta is still on its way).
        """
        if device not in self.device_doors:
            return False
        try:
            policy = json.loads(payload).get("policy")
        except (ValueError, AttributeError, RecursionError):
            return False
        if not isinstance(policy, dict):
            return False
        version = policy.get("version")
        if version is None and device in self.published:
            version = 0  # it holds none (a lost or set-aside policy.json, below the retained one): behind
        if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= MAX_POLICY_VERSION:
            return False
        sent = self.published.get(device, 0)
        with self._seen_lock:
            self._reported[device] = version
            if version > sent:
                # It holds more than this server sent it (a replaced store; deltas the retained full policy
                # does not show): re-signed above it (next_version), or the edge refuses this server's policies.
                self._stale.add(device)
                return device in self.published or self.floor > 0
        if version == sent or device not in self.published:
            return False
        if not policy.get("wants_full") and time.monotonic() - self._sent_at.get(device, 0.0) < self.deltas.behind_grace_s:
            return False
        with self._seen_lock:
            self._want_full.add(device)
        log.info("%s holds policy version %s, behind the %d sent to it%s: a full policy follows", device, version,
                 sent, " (it refused a delta)" if policy.get("wants_full") else "")
        return True

    def publish_full(self, site: Site, publish: Publish, publish_delta: Publish | None = None) -> int:
        """Publish what :meth:`note_state` found behind (a new full policy each), with any other change."""
        return self.publish_all(site, publish, publish_delta=publish_delta)

    def publish_all(self, site: Site, publish: Publish, *, force: bool = False,
                    publish_delta: Publish | None = None) -> int:
        """Publish a new signed version to every device whose policy changed; returns the version.

        Signing is the costly part (about a second for 250,000 credentials), so a device whose subset
        did not change keeps its last policy; ``force`` (on every broker connect) re-sends the last
        payloads, which the edges accept as re-deliveries, and signs a full policy for every device that got
        deltas since its last full one (so the retained one is current). ``publish_delta`` (QoS 1, not
        retained): with it, a change goes to a device as a signed delta where it can (module docstring).
        """
        with self._lock:
            started = time.perf_counter()
            with self._seen_lock:
                stale, self._stale = self._stale, set()
                want_full, self._want_full = self._want_full, set()
            signals = self.reader_signals  # read once: every device of this version gets the same
            now = self.clock.wall()
            deltas: dict[str, bytes] = {}
            fulls: set[str] = set()
            # The collector paused: compiling and writing a device's subset makes hundreds of thousands of
            # short-lived objects, and a full collection they trigger would hold the interpreter lock for
            # hundreds of ms while a decision waits (bench/site_changes.py).
            with gc_paused():
                subsets = {d: compile_policy(site, doors) for d, doors in self.device_doors.items()}
                changes = {}
                for d, sub in subsets.items():
                    old = self._subset.get(d)
                    extras_same = (self._signed_key.get(d) == self.snapshot_key and self._signed_signals.get(d) == signals
                                   and self._signed_pass_keys.get(d) == self.pass_keys)
                    diff = diff_policy(old, sub) if old is not None else None
                    if (old is None or not extras_same or d in stale or d in want_full
                            or (force and self._since_full.get(d, 0) > 0)):
                        fulls.add(d)
                    elif diff is not None and not diff.empty:
                        changes[d] = diff
                if fulls or changes:
                    self.version = self.next_version()
                for d, diff in changes.items():
                    payload = self._delta(d, subsets[d], diff, now) if publish_delta is not None else None
                    if payload is None:
                        fulls.add(d)
                    else:
                        deltas[d] = payload
                for device in fulls:
                    subset = subsets[device]
                    text = policy_text(subset)
                    payload = sign_policy(subset, site_id=self.site_id, device=device, version=self.version,
                                          issued_at=now, key=self.key, snapshot_key=self.snapshot_key,
                                          reader_signals=signals, text=text, pass_keys=self.pass_keys)
                    del text
                    self._last[device] = ("", payload)
                    self._signed_key[device] = self.snapshot_key
                    self._signed_signals[device] = signals
                    self._signed_pass_keys[device] = self.pass_keys
                    self._subset[device] = subset
                    self._full_at[device] = now
                    self._full_size[device] = len(payload)
                    self._since_full[device] = 0
                    if publish_delta is not None:  # the chain's first base: hashed once, per full policy
                        self._digest[device] = PolicyDigest.of(subset)
                    self.published[device] = self.version
                    self.published_at[device] = now
                subset = None
                del subsets, changes, subset  # freed before the collector runs again: it never walks them
            sent = time.monotonic()
            for device in self.device_doors:
                if device in fulls or (force and device in self._last):
                    publish(self.topics.policy(device), self._last[device][1])
                    self._sent_at[device] = sent
                    self.fulls_sent += device in fulls
                elif device in deltas and publish_delta is not None:
                    publish_delta(self.topics.policy_delta(device), deltas[device])
                    self._sent_at[device] = sent
                    self.deltas_sent += 1
                    self.delta_bytes += len(deltas[device])
            log.info("policy version %d: %d full and %d delta(s) of %d device(s), published in %.1f ms",
                     self.version, len(fulls), len(deltas), len(self.device_doors),
                     (time.perf_counter() - started) * 1000)
            return self.version

    def _delta(self, device: str, subset: Site, diff: PolicyChanges, now: float) -> bytes | None:
        """The signed delta from the device's last version to ``subset``; None when a full policy is due."""
        base, digest = self._subset.get(device), self._digest.get(device)
        if (base is None or digest is None or self._since_full.get(device, 0) >= self.deltas.max_deltas
                or now - self._full_at.get(device, now) >= self.deltas.full_every_s):
            return None
        result = digest.updated(base, diff)
        payload = sign_delta(diff, site_id=self.site_id, device=device, base_version=self.published[device],
                             base_digest=digest.hexdigest(), version=self.version, result_digest=result.hexdigest(),
                             issued_at=now, key=self.key)
        if len(payload) > self.deltas.max_fraction * self._full_size.get(device, 0):
            return None
        self._subset[device] = subset
        self._digest[device] = result
        self._since_full[device] = self._since_full.get(device, 0) + 1
        self.published[device] = self.version
        self.published_at[device] = now
        return payload
