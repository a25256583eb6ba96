"""Intrusion signals: attacks on doors seen in the stream of stored events (docs/alarms.md).

An attack on a door leaves traces before it succeeds: somebody presenting
card after card at one reader (a cloned-card or brute-force attempt), one
stolen card tried door after door, PINs guessed at a keypad across several
cards (which a per-card PIN lockout never sees), a door forced open while its
reader's cover is off. Each decision on its own is harmless and already
refused; only the pattern says "attack". :class:`IntrusionDetector` watches
for these patterns and raises a **security alarm** (severity ``alarm``):

- ``card_probing`` at a door: ``probe_count`` ``unknown_credential`` / ``credential_inactive`` refusals
  at its reader within ``probe_window_s``;
- ``card_probing`` for a credential: that credential refused (for what the card is, not for the
  situation) at ``probe_doors`` different doors within ``probe_doors_window_s``;
- ``pin_guessing`` at a door: ``pin_guess_count`` ``wrong_pin`` / ``pin_locked_out`` refusals at its
  keypad within ``pin_guess_window_s``, whatever the cards;
- ``door_attack`` at a door: a ``forced_open`` and a ``tamper`` (cover opened) there within
  ``attack_window_s`` of each other, in either order.

(thresholds from site.toml ``[intrusion]``, doorkeep/config.py ``IntrusionSettings``)

Design choices, each for a reason:

- **Fed by stored events, new ones only.** The bus calls :meth:`IntrusionDetector.on_event` on the store
  thread for every event it stored (``ServerBus.listeners``); a duplicate (``new`` False: a QoS 1
  re-delivery, an outbox draining again after an outage) is ignored, so nothing is counted twice.
- **Windows on the event's own time** (``ts``, the device's clock), not on arrival: a backlog drained after
  an outage still shows the burst as it happened, and scenarios on a simulated clock work. Events may
  arrive out of order, so each tracker keeps its times sorted and asks "are there N within any window
  around this one", not "N since the last".
- **One open alarm per (type, subject)**, keyed ``TYPE:door:DOOR`` or ``card_probing:credential:HASH``
  (:meth:`server.store.Store.raise_alarm` without ``once``): while it is open every further event only
  refreshes its ``detail`` (the latest count); an attack raises one alarm, not one per card. It stays
  active until an operator resolves it (an attack does not end by itself); a new burst after that opens a
  new alarm.
- **Bounded memory.** A flood of distinct cards must not grow the server without bound: each signal tracks
  at most :data:`MAX_TRACKED_KEYS` subjects (least recently seen dropped first) and each subject at most a
  few times its threshold of timestamps. Forgetting the quietest subject under a flood is the lesser harm:
  the flood itself is at one door and keeps that door's tracker alive.
- **Memory only.** A server restart forgets partial counts (at most one window's worth); persisting them
  would write on every refused badge for little gain.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from doorkeep import vocabulary
from doorkeep.clock import Clock, SystemClock, iso_ms, parse_iso_ms
from doorkeep.config import IntrusionSettings
from doorkeep.contract import EventMsg
from doorkeep.decision import Reason
from server.store import Store

log = logging.getLogger("doorkeep.server.intrusion")

#: The alarm types this module raises (docs/alarms.md "Intrusion signals"): the vocabulary's ``intrusion`` alarms.
INTRUSION_ALARMS: tuple[str, ...] = vocabulary.alarms_from(vocabulary.INTRUSION)
CARD_PROBING = vocabulary.ALARMS["card_probing"].name  # a KeyError at import if the vocabulary loses one
PIN_GUESSING = vocabulary.ALARMS["pin_guessing"].name
DOOR_ATTACK = vocabulary.ALARMS["door_attack"].name
#: All are security alarms (their declared severity; the store refuses any other).
SEVERITY = vocabulary.severity(CARD_PROBING)

#: Refusals that say the card itself is no good (card probing at one reader).
PROBE_REASONS = frozenset({Reason.UNKNOWN_CREDENTIAL.value, Reason.CREDENTIAL_INACTIVE.value})
#: Refusals for what the card or its holder is (one credential tried at many doors). Left out on purpose:
#: refusals caused by the situation, which an honest person meets at door after door (lockdown, occupancy,
#: anti-passback, waiting for an escort, a second person or a PIN, the server unreachable).
CREDENTIAL_REFUSALS = frozenset({
    Reason.UNKNOWN_CREDENTIAL.value, Reason.CREDENTIAL_INACTIVE.value, Reason.PERSON_INACTIVE.value,
    Reason.EXPIRED.value, Reason.NOT_YET_VALID.value, Reason.NO_ACCESS.value, Reason.CLEARANCE_TOO_LOW.value,
    Reason.OUTSIDE_SCHEDULE.value, Reason.WRONG_PIN.value, Reason.PIN_LOCKED_OUT.value,
})
#: PIN failures at a keypad (a locked-out card still being tried is still guessing).
PIN_REASONS = frozenset({Reason.WRONG_PIN.value, Reason.PIN_LOCKED_OUT.value})

#: Most subjects (doors, credentials) each signal tracks at once; the least recently seen is dropped first.
MAX_TRACKED_KEYS = 4096
#: Each subject keeps at most this many times its threshold of timestamps (the newest).
HISTORY_FACTOR = 4
#: Most credential last-4s listed in an alarm's detail.
MAX_LISTED = 20

K = TypeVar("K")


@dataclass
class _Hit:
    """One event counted for a subject: its time (device clock, epoch s) and what to show about it."""

    ts: float
    event: str
    door: str
    last4: str | None
    credential: str | None


@dataclass
class _Burst:
    """The hits that crossed a threshold, as the alarm's detail reports them."""

    hits: list[_Hit] = field(default_factory=list)

    @property
    def first(self) -> float:
        return self.hits[0].ts

    @property
    def last(self) -> float:
        return self.hits[-1].ts


class _Tracker(Generic[K]):
    """Timestamps per subject, sorted, bounded in subjects (LRU) and in timestamps per subject."""

    def __init__(self, keep: int, max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.keep = keep
        self.max_keys = max_keys
        self._hits: OrderedDict[K, list[_Hit]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._hits)

    def add(self, key: K, hit: _Hit, window_s: float) -> list[_Hit]:
        """Record ``hit`` for ``key``; returns the subject's hits within ``window_s`` on either side of it."""
        hits = self._hits.get(key)
        if hits is None:
            hits = self._hits[key] = []
            while len(self._hits) > self.max_keys:
                self._hits.popitem(last=False)
                self.evicted += 1
        else:
            self._hits.move_to_end(key)
        bisect.insort(hits, hit, key=lambda h: h.ts)
        # Forget what can no longer share a window with anything at or after this hit, then cap the rest.
        cut = bisect.bisect_left(hits, hit.ts - window_s, key=lambda h: h.ts)
        del hits[:cut]
        if len(hits) > self.keep:
            del hits[:len(hits) - self.keep]
        lo = bisect.bisect_left(hits, hit.ts - window_s, key=lambda h: h.ts)
        hi = bisect.bisect_right(hits, hit.ts + window_s, key=lambda h: h.ts)
        return hits[lo:hi]

    def get(self, key: K) -> list[_Hit]:
        return list(self._hits.get(key, ()))


def _dense(hits: list[_Hit], need: int, window_s: float, distinct_doors: bool = False) -> _Burst | None:
    """The latest run of hits (sorted by time) spanning at most ``window_s`` that holds ``need`` of them,
    or ``need`` different doors with ``distinct_doors``; None if there is none."""
    best: _Burst | None = None
    lo = 0
    for hi in range(len(hits)):
        while hits[hi].ts - hits[lo].ts > window_s:
            lo += 1
        run = hits[lo:hi + 1]
        n = len({h.door for h in run}) if distinct_doors else len(run)
        if n >= need:
            best = _Burst(run)
    return best


class IntrusionDetector:
    """Watches stored events for attacks on doors and raises the security alarms of docs/alarms.md.

    Register :meth:`on_event` as a ``ServerBus`` listener; it runs on the store thread, one event at a
    time, but takes a lock anyway so tests and tools may feed it from elsewhere.
    """

    def __init__(self, store: Store, settings: IntrusionSettings | None = None, clock: Clock | None = None) -> None:
        self.store = store
        self.settings = settings or IntrusionSettings()
        self.clock = clock or SystemClock()
        s = self.settings
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._probes: _Tracker[str] = _Tracker(s.probe_count * HISTORY_FACTOR)
        self._card_doors: _Tracker[str] = _Tracker(s.probe_doors * HISTORY_FACTOR)
        self._pins: _Tracker[str] = _Tracker(s.pin_guess_count * HISTORY_FACTOR)
        self._forced: _Tracker[str] = _Tracker(HISTORY_FACTOR)
        self._tampers: _Tracker[str] = _Tracker(HISTORY_FACTOR)

    def configure(self, settings: IntrusionSettings) -> None:
        """New thresholds from a site revision (server/siteadmin.py), live at once. The counts start afresh
        when a count changes, because the history kept per subject is sized by it."""
        with self._lock:
            old, self.settings = self.settings, settings
            if (old.probe_count, old.probe_doors, old.pin_guess_count) != \
                    (settings.probe_count, settings.probe_doors, settings.pin_guess_count):
                self._probes = _Tracker(settings.probe_count * HISTORY_FACTOR)
                self._card_doors = _Tracker(settings.probe_doors * HISTORY_FACTOR)
                self._pins = _Tracker(settings.pin_guess_count * HISTORY_FACTOR)

    # ------------------------------------------------------------ input

    def on_event(self, ev: EventMsg, new: bool) -> None:
        """A stored event (``ServerBus`` listener). Duplicates and, when disabled, everything are ignored."""
        if not new or not self.settings.enabled:
            return
        if ev.type not in ("access", "forced_open", "tamper"):
            return
        if ev.type == "access" and ev.decision != "denied":
            return
        try:
            ts = parse_iso_ms(ev.ts)
        except (ValueError, OverflowError, TypeError):
            self.counters["bad_ts"] += 1
            log.warning("intrusion: event %s from %s has an unreadable ts %r; not counted", ev.id, ev.device,
                        ev.ts[:40])
            return
        raises: list[tuple[str, str, str | None, str | None, dict[str, Any]]] = []
        with self._lock:
            self.counters["events"] += 1
            if ev.type == "access":
                raises += self._access(ev, ts)
            else:
                raises += self._door(ev, ts)
        for alarm_type, key, device, door, detail in raises:
            self._raise(alarm_type, key, device, door, detail, ev)

    def _access(self, ev: EventMsg, ts: float) -> list[tuple[str, str, str | None, str | None, dict[str, Any]]]:
        s = self.settings
        out: list[tuple[str, str, str | None, str | None, dict[str, Any]]] = []
        hit = _Hit(ts, ev.id, ev.door, ev.credential_last4, ev.credential_hash)
        if ev.reason in PROBE_REASONS:
            burst = _dense(self._probes.add(ev.door, hit, s.probe_window_s), s.probe_count, s.probe_window_s)
            if burst is not None:
                out.append((CARD_PROBING, f"{CARD_PROBING}:door:{ev.door}", ev.device, ev.door, {
                    "signal": "door", "door": ev.door, **self._burst_detail(burst, s.probe_count, s.probe_window_s),
                    "reasons": sorted(PROBE_REASONS)}))
        if ev.reason in CREDENTIAL_REFUSALS and ev.credential_hash:
            window = s.probe_doors_window_s
            burst = _dense(self._card_doors.add(ev.credential_hash, hit, window), s.probe_doors, window,
                           distinct_doors=True)
            if burst is not None:
                doors = sorted({h.door for h in burst.hits})
                out.append((CARD_PROBING, f"{CARD_PROBING}:credential:{ev.credential_hash}", None, None, {
                    **self._burst_detail(burst, s.probe_doors, window), "signal": "credential",
                    "credential_hash": ev.credential_hash, "credential_last4": ev.credential_last4,
                    "person": ev.person, "doors": doors, "door_count": len(doors)}))
        if ev.reason in PIN_REASONS:
            burst = _dense(self._pins.add(ev.door, hit, s.pin_guess_window_s), s.pin_guess_count,
                           s.pin_guess_window_s)
            if burst is not None:
                out.append((PIN_GUESSING, f"{PIN_GUESSING}:door:{ev.door}", ev.device, ev.door, {
                    "door": ev.door, **self._burst_detail(burst, s.pin_guess_count, s.pin_guess_window_s)}))
        return out

    def _door(self, ev: EventMsg, ts: float) -> list[tuple[str, str, str | None, str | None, dict[str, Any]]]:
        """A forced door and a tamper at it within ``attack_window_s``, whichever came first."""
        if ev.type == "tamper" and ev.detail.get("detail", "opened") != "opened":
            return []  # the cover put back is no sign of attack
        window = self.settings.attack_window_s
        hit = _Hit(ts, ev.id, ev.door, None, None)
        mine, other = (self._forced, self._tampers) if ev.type == "forced_open" else (self._tampers, self._forced)
        mine.add(ev.door, hit, window)
        partners = [h for h in other.get(ev.door) if abs(h.ts - ts) <= window]
        if not partners:
            return []
        partner = min(partners, key=lambda h: abs(h.ts - ts))
        forced, tamper = (hit, partner) if ev.type == "forced_open" else (partner, hit)
        return [(DOOR_ATTACK, f"{DOOR_ATTACK}:door:{ev.door}", ev.device, ev.door, {
            "door": ev.door, "forced_open_event": forced.event, "forced_open_ts": iso_ms(forced.ts),
            "tamper_event": tamper.event, "tamper_ts": iso_ms(tamper.ts),
            "seconds_apart": round(abs(forced.ts - tamper.ts), 3), "window_s": window})]

    @staticmethod
    def _burst_detail(burst: _Burst, threshold: int, window_s: float) -> dict[str, Any]:
        last4s = sorted({h.last4 for h in burst.hits if h.last4})
        return {"count": len(burst.hits), "threshold": threshold, "window_s": window_s,
                "first_ts": iso_ms(burst.first), "last_ts": iso_ms(burst.last),
                "distinct_credentials": len({h.credential for h in burst.hits if h.credential}),
                "credential_last4": last4s[:MAX_LISTED], "events": [h.event for h in burst.hits][-MAX_LISTED:]}

    # ------------------------------------------------------------ output

    def _raise(self, alarm_type: str, key: str, device: str | None, door: str | None, detail: dict[str, Any],
               ev: EventMsg) -> None:
        try:
            alarm_id, new = self.store.raise_alarm(alarm_type, key=key, at=self.clock.wall(),
                                                   severity=vocabulary.severity(alarm_type),
                                                   device=device, door=door, detail=detail, source_event=ev.id)
        except Exception:
            # The event itself is stored; losing one refresh of an alarm must not stop ingest.
            self.counters["raise_errors"] += 1
            log.exception("intrusion: could not raise %s (%s)", alarm_type, key)
            return
        if new:
            self.counters[f"raised_{alarm_type}"] += 1
            where = door or f"credential …{detail.get('credential_last4') or '?'}"
            log.warning("alarm %s: %s at %s (%s)", alarm_id, alarm_type, where,
                        ", ".join(f"{k} {detail[k]}" for k in ("count", "window_s", "seconds_apart") if k in detail))

    # ------------------------------------------------------------ views

    def tracked(self) -> dict[str, int]:
        """How many subjects each signal tracks now (tests check the memory bound)."""
        with self._lock:
            return {"probes": len(self._probes), "card_doors": len(self._card_doors), "pins": len(self._pins),
                    "forced": len(self._forced), "tampers": len(self._tampers)}
