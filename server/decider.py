"""Answering an access request: the part of the server a door waits for.

One server answers on its bus's network thread with the directory's in-memory rules (server/bus.py); each of
several workers answers the requests its shared subscription hands it with the rules' state in PostgreSQL
(server/workers.py). Both go through :class:`Decider`, so a late request is dropped, a foreign door refused and a
decision counted the same way whoever decides.

A request names the edge's monotonic clock (``mono``); a live heartbeat does too, which gives each device's clock
offset. With it a request that reached the server after its door stopped waiting is recognised whatever either wall
clock did, and not decided: the door decided on its own meanwhile, and deciding again would commit a second
decision the door never carried out.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Callable

import paho.mqtt.client as mqtt

from doorkeep.clock import Clock, iso_ms
from doorkeep.contract import DecisionMsg, RequestMsg, Topics
from doorkeep.decision import AccessRequest, Decision, Reason
from doorkeep.errors import MessageError
from doorkeep.logfmt import log_context
from doorkeep.model import Site

log = logging.getLogger("doorkeep.server.bus")

#: A device's clock offset (:meth:`Decider.note_monotonic`) fades by this many seconds per second: 1,000 ppm, ten
#: times more than a quartz clock drifts. A measure this many seconds below the kept one starts the estimate again.
MONO_FADE, MONO_RESET_S = 0.001, 60.0
#: A request is taken as expired only this long after its door's timeout (the drift the offset may carry).
MONO_MARGIN_S = 0.25

#: (device, door) of a request about a door that is not the device's: reported as misbehaviour.
ForeignDoor = Callable[[str, str | None], None]


class Decider:
    """Decides requests and publishes the answers; counts into the caller's counters (the bus's, for metrics).

    ``decide``: the rules (the directory's, or the shared state's); it may raise, and then nothing is answered: the
    door decides on its own at its timeout, and the caller counts and logs it. ``publish(topic, payload)`` returns
    paho's result code. ``foreign_door(device, door)`` reports a request for a door the device does not own."""

    def __init__(self, site: Callable[[], Site], door_devices: dict[str, str], decide: Callable[[AccessRequest], Decision],
                 publish: Callable[[str, bytes], int], clock: Clock, topics: Topics, *,
                 foreign_door: ForeignDoor, counters: Counter[str] | None = None,
                 decisions: Counter[tuple[str, str]] | None = None) -> None:
        self.site = site
        self.door_devices = door_devices
        self.decide = decide
        self.publish = publish
        self.clock = clock
        self.topics = topics
        self.foreign_door = foreign_door
        self.counters: Counter[str] = counters if counters is not None else Counter()
        self.decisions: Counter[tuple[str, str]] = decisions if decisions is not None else Counter()
        #: Device -> (its monotonic clock's offset from the server's, when last measured).
        self.mono_offset: dict[str, tuple[float, float]] = {}
        self.observe: Callable[[float], None] | None = None  # the decision handler's latency, in seconds

    def answer(self, topic: Any, payload: bytes) -> None:
        """Decide the request on ``topic`` and publish the decision; MessageError for a malformed one."""
        started = self.clock.monotonic()
        req = RequestMsg.decode(payload)
        if req.door != topic.door:
            raise MessageError(f"request names door {req.door!r} but was published on door {topic.door!r}")
        self.counters["requests"] += 1
        door = self.site().doors.get(req.door)
        if door is not None and self.expired(topic.device, req, door.decision_timeout_ms / 1000):
            # The door stopped waiting and decided on its own (its access event, decided_by edge, moves people when
            # it arrives). Deciding now would commit a second decision the door never carried out: presence, a
            # partner waiting, a PIN count. A request held up by a partition or a slow link lands here.
            self.counters["requests_expired"] += 1
            log.info("door %s: request %s arrived after the door's %d ms timeout; not decided (the edge decided)",
                     req.door, req.transaction, door.decision_timeout_ms, extra=log_context(topic.device, req.door))
            return
        if self.door_devices.get(req.door) != topic.device:
            # A device may only ask about its own doors; anything else is refused, not ignored: it is
            # answered (so the door is not left waiting) and reported as misbehaviour.
            decision = Decision(Reason.UNKNOWN_DOOR)
            self.foreign_door(topic.device, req.door)
        else:
            decision = self.decide(AccessRequest(req.door, req.credential_hash, req.pin_hash, req.floor))
        answer = DecisionMsg(
            transaction=req.transaction, door=req.door, granted=decision.granted,
            reason=decision.reason.value, person=decision.person,
            unlock_s=door.unlock_s if door else 5.0, ts=iso_ms(self.clock.wall()), violation=decision.violation,
            companions=decision.companions if decision.granted else (),
            grant=decision.reason.value if decision.granted else None,
            floors=decision.floors if decision.granted else (),
        )
        rc = self.publish(self.topics.decision(topic.device, req.door), answer.encode())
        if rc != mqtt.MQTT_ERR_SUCCESS and rc != mqtt.MQTT_ERR_NO_CONN:
            # Refused by paho itself (its queue full): the door decides on its own at its timeout. Never silent.
            self.counters["decisions_not_sent"] += 1
            log.error("door %s: decision for transaction %s not sent: %s", req.door, req.transaction,
                      mqtt.error_string(rc), extra=log_context(topic.device, req.door))
        if log.isEnabledFor(logging.DEBUG):  # paho's thread: nothing is built for a line nobody asked for
            log.debug("door %s: %s (%s), transaction %s", req.door, "granted" if decision.granted else "denied",
                      decision.reason.value, req.transaction, extra=log_context(topic.device, req.door))
        self.counters["decisions"] += 1
        self.decisions[(req.door if door is not None else "", decision.reason.value)] += 1
        if self.observe is not None:
            self.observe(self.clock.monotonic() - started)

    def note_monotonic(self, device: str, mono: float) -> None:
        """A live heartbeat's ``mono`` against the server's monotonic clock: the device's clock offset, estimated.

        Each measure is the true offset less the heartbeat's transit, so the largest is the best; one held up
        by a partition reads seconds low and is passed over. The kept value fades by MONO_FADE per second, faster
        than two real clocks drift apart, so the largest never outlives the clocks' own drift. A measure far below
        it (MONO_RESET_S) means the edge's monotonic clock started again (a reboot), or a heartbeat held up for
        over a minute: the estimate starts again from it, which can only make requests look younger."""
        now = self.clock.monotonic()
        measured = mono - now
        kept = self.mono_offset.get(device)
        if kept is not None:
            faded = kept[0] - MONO_FADE * (now - kept[1])
            if measured >= faded - MONO_RESET_S:
                measured = max(measured, faded)
        self.mono_offset[device] = (measured, now)

    def expired(self, device: str, req: RequestMsg, timeout_s: float) -> bool:
        """True when the door has surely given up on ``req``: asked longer ago than its timeout (and a margin).

        The request's ``mono`` (the edge's monotonic clock when it asked) is read through the device's clock
        offset (:meth:`note_monotonic`). Neither monotonic clock steps, so an NTP step of either wall clock
        changes nothing here. The offset never exceeds the true one, so the age found is never more than the true
        age (within the clocks' drift, which MONO_MARGIN_S covers): a fresh request is never taken for a late one.
        Without a ``mono`` on both (an edge older than this, or no live heartbeat yet) nothing is expired."""
        kept = self.mono_offset.get(device)
        if kept is None or req.mono is None:
            return False
        return self.clock.monotonic() - (req.mono - kept[0]) > timeout_s + MONO_MARGIN_S
