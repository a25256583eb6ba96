"""What operators do with alarms: see the open ones and the history, acknowledge, resolve with a note
(docs/alarms.md, docs/desk.md). The application service behind the desk's alarm API and page
(server/web/alarms.py) and its doors board (server/web/doors.py).

Raising and clearing alarms is supervision's and the bus's (server/supervision.py, server/intrusion.py); an
alarm stays open until an operator resolves it with a note, even after its condition ended (the door closed,
the device came back). Acknowledging ("I have seen it") and resolving ("it is dealt with, and this is what
happened") are recorded in the audit log with the operator as actor (``alarm.acknowledge``,
``alarm.resolve``). The note itself stays in the alarms table, not in the append-only audit log, because free
text may name people (and retention can remove it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from doorkeep.alarm_priority import HIGH, PRIORITIES, escalate_after_s, priority_of
from doorkeep.clock import Clock
from doorkeep.model import AlarmSettings, Site
from server.audit import Auditor, record_audit
from server.errors import ServerError
from server.store import AlarmNotFound, Store

log = logging.getLogger("doorkeep.server.alarms")

__all__ = ["MAX_BULK", "MAX_NOTE", "Alarm", "AlarmError", "AlarmFilter", "AlarmNotFound", "Alarms", "AlarmSummary", "BulkResult",
           "NoteMissing"]

#: The longest resolution note accepted (characters).
MAX_NOTE = 2000
#: The operator preference that remembers the alarm sound (``on`` / ``off``; on when never set).
SOUND_PREF = "alarm_sound"
#: The most alarms one bulk action takes (a filter matching more is refused: narrow it).
MAX_BULK = 1000


class AlarmError(ServerError, ValueError):
    """An alarm action refused as asked; the message says why (unknown alarms raise ``AlarmNotFound``)."""


class NoteMissing(AlarmError):
    """A resolution needs a note: what happened and what was done."""


@dataclass(frozen=True)
class Alarm:
    """One alarm as the store keeps it, ``state`` spelled out: active, cleared (over, not resolved) or resolved."""

    id: str
    type: str
    severity: str
    state: str
    device: str | None
    door: str | None
    raised_at: float
    last_raised_at: float
    occurrences: int
    cleared_at: float | None
    acknowledged_at: float | None
    acknowledged_by: str | None
    resolved_at: float | None
    resolved_by: str | None
    note: str | None
    detail: dict[str, Any]
    escalated_at: float | None = None
    source_event: str | None = None
    priority: str = "low"  # high, medium or low: the site's choice for the type (doorkeep/alarm_priority.py)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Alarm:
        return cls(id=row["id"], type=row["type"], severity=row["severity"], state=row["state"],
                   device=row["device"], door=row["door"], raised_at=row["raised_at"],
                   last_raised_at=row["last_raised_at"], occurrences=row["occurrences"],
                   cleared_at=row["cleared_at"], acknowledged_at=row["acknowledged_at"],
                   acknowledged_by=row["acknowledged_by"], resolved_at=row["resolved_at"],
                   resolved_by=row["resolved_by"], note=row["note"], detail=row["detail"] or {},
                   escalated_at=row.get("escalated_at"), source_event=row.get("source_event"))

    def timeline(self) -> list[tuple[str, float, str | None, str | None]]:
        """What happened to the alarm, oldest first: ``(what, when, who, note)`` from its record."""
        out: list[tuple[str, float, str | None, str | None]] = [("raised", self.raised_at, None, None)]
        if self.occurrences > 1:
            out.append((f"raised again ({self.occurrences} times in all)", self.last_raised_at, None, None))
        if self.cleared_at is not None:
            out.append(("condition over", self.cleared_at, None, None))
        if self.escalated_at is not None:
            out.append(("escalated: not acknowledged in time", self.escalated_at, None, None))
        if self.acknowledged_at is not None:
            out.append(("acknowledged", self.acknowledged_at, self.acknowledged_by, None))
        if self.resolved_at is not None:
            out.append(("resolved", self.resolved_at, self.resolved_by, self.note))
        return sorted(out, key=lambda e: e[1])


@dataclass(frozen=True)
class AlarmFilter:
    """A selection of open alarms (the alarms page's filters; "select all matching" acts on it)."""

    priority: str | None = None
    type: str | None = None
    door: str | None = None
    state: str | None = None  # active | cleared
    unacknowledged: bool = False

    def matches(self, a: Alarm) -> bool:
        return ((not self.priority or a.priority == self.priority) and (not self.type or a.type == self.type)
                and (not self.door or a.door == self.door) and (not self.state or a.state == self.state)
                and (not self.unacknowledged or a.acknowledged_at is None))


@dataclass(frozen=True)
class AlarmSummary:
    """What the desk's alarm counter shows on every page: the open alarms by priority, how many nobody has
    acknowledged, and the ids the browser compares to know when to ring (a new high alarm, a new escalation)."""

    open: int
    unacknowledged: int
    by_priority: dict[str, int]           # open alarms per priority
    unacknowledged_by_priority: dict[str, int]
    escalated: int                        # open, unacknowledged and escalated
    ring: tuple[str, ...]                 # unacknowledged high-priority alarm ids, newest first (at most 50)
    escalated_ids: tuple[str, ...]        # escalated unacknowledged alarm ids (at most 50)


@dataclass(frozen=True)
class BulkResult:
    """One bulk action: the alarms it changed, those already in that state, and ids that no longer exist."""

    changed: list[Alarm]
    unchanged: list[Alarm]
    missing: list[str]


class Alarms:
    """The desk's alarm actions on one store, each audited with the operator as actor."""

    def __init__(self, store: Store, clock: Clock, audit: Auditor | None = None,
                 site: Callable[[], Site] | None = None) -> None:
        """``site``: the live site model, read at each call (its ``[alarms]`` priorities change with a revision)."""
        self.store = store
        self.clock = clock
        self.audit = audit
        self.site = site
        #: Called (any thread) after operators changed alarms: the desk's counter pushes its update at once.
        self.listeners: list[Callable[[], None]] = []

    def on_write(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after any alarm write the counter could show (raised, raised again, acknowledged,
        resolved, escalated), by whichever part of this process wrote it (``Store.on_alarm_write``: it runs in
        the writer's transaction, so it must only note the change). The desk's alarm watch wakes on it."""
        self.store.on_alarm_write(listener)

    def settings(self) -> AlarmSettings:
        return self.site().alarms if self.site is not None else AlarmSettings()

    def _with_priority(self, rows: Iterable[dict[str, Any]]) -> list[Alarm]:
        settings = self.settings()
        return [replace(a, priority=priority_of(settings, a.type)) for a in map(Alarm.from_row, rows)]

    def open(self, flt: AlarmFilter | None = None) -> list[Alarm]:
        """Every unresolved alarm (active and cleared) matching ``flt``, newest first."""
        found = self._with_priority(self.store.open_alarms())
        return found if flt is None else [a for a in found if flt.matches(a)]

    def resolved(self, limit: int) -> list[Alarm]:
        """The most recently resolved alarms first (the history)."""
        return self._with_priority(self.store.resolved_alarms(limit))

    def get(self, alarm_id: str) -> Alarm:
        """One alarm with its priority; raises :class:`AlarmNotFound`."""
        return self._get(alarm_id)

    def sound_on(self, operator: str) -> bool:
        """Whether the desk plays the alarm sounds for this operator (on unless they turned it off)."""
        return self.store.operator_pref(operator, SOUND_PREF) != "off"

    def set_sound(self, operator: str, on: bool) -> None:
        """Remember the operator's choice server-side, so it follows them to any desk they log in at."""
        self.store.set_operator_pref(operator, SOUND_PREF, "on" if on else "off", self.clock.wall())

    def summary(self) -> AlarmSummary:
        """The counter's figures over the open alarms."""
        current = self.open()
        unacked = [a for a in current if a.acknowledged_at is None]
        escalated = [a for a in unacked if a.escalated_at is not None]
        return AlarmSummary(
            open=len(current), unacknowledged=len(unacked),
            by_priority={p: sum(1 for a in current if a.priority == p) for p in PRIORITIES},
            unacknowledged_by_priority={p: sum(1 for a in unacked if a.priority == p) for p in PRIORITIES},
            escalated=len(escalated), ring=tuple(a.id for a in unacked if a.priority == HIGH)[:50],
            escalated_ids=tuple(a.id for a in escalated)[:50])

    def escalate_due(self) -> list[Alarm]:
        """Mark every open alarm that nobody acknowledged within its priority's escalation time (by the
        injected clock, from when it was last raised); the ones escalated now. Audited (actor ``doorkeep``)."""
        now = self.clock.wall()
        settings = self.settings()
        done: list[Alarm] = []
        for row in self.store.unacknowledged_alarms():
            after = escalate_after_s(settings, priority_of(settings, row["type"]))
            if after <= 0 or now - float(row["last_raised_at"]) < after:
                continue
            if self.store.mark_escalated(row["id"], now):
                alarm = self._get(row["id"])
                done.append(alarm)
                if self.audit is not None:
                    record_audit(self.audit, "doorkeep", "alarm.escalate", alarm.id,
                                 {"type": alarm.type, "door": alarm.door, "priority": alarm.priority,
                                  "after_s": after})
        if done:
            self._changed()
        return done

    def acknowledge_many(self, alarm_ids: Iterable[str], actor: str) -> BulkResult:
        """Acknowledge each alarm (each audited as one ``alarm.acknowledge``); unknown ids are reported."""
        return self._each(_unique(alarm_ids), lambda alarm_id: self.acknowledge(alarm_id, actor, notify=False))

    def resolve_many(self, alarm_ids: Iterable[str], note: str, actor: str) -> BulkResult:
        """Resolve each alarm with one note; refused as a whole (:class:`NoteMissing`) when the note is blank
        and any of them is high priority, before anything changes."""
        ids = _unique(alarm_ids)
        if len(ids) > MAX_BULK:
            raise AlarmError(f"{len(ids)} alarms at once is more than {MAX_BULK}: narrow the filter")
        note = self._check_note(note, [a for a in (self.store.alarm(i) for i in ids) if a is not None])
        return self._each(ids, lambda alarm_id: self._resolve(alarm_id, note, actor))

    def _each(self, ids: list[str], act: Callable[[str], tuple[Alarm, bool]]) -> BulkResult:
        """``act`` on each alarm (each audited by itself); the desks are told once, if anything changed."""
        changed, unchanged, missing = [], [], []
        for alarm_id in ids:
            try:
                alarm, did = act(alarm_id)
            except AlarmNotFound:
                missing.append(alarm_id)
                continue
            (changed if did else unchanged).append(alarm)
        if changed:
            self._changed()
        return BulkResult(changed, unchanged, missing)

    def _check_note(self, note: str, rows: list[dict[str, Any]]) -> str:
        note = note.strip()
        if len(note) > MAX_NOTE:
            raise AlarmError(f"the note has more than {MAX_NOTE} characters: shorten it")
        settings = self.settings()
        high = [r for r in rows if r["resolved_at"] is None and priority_of(settings, r["type"]) == HIGH]
        if not note and high:
            raise NoteMissing("a high-priority alarm needs a note to be resolved: say what happened and what "
                              "was done")
        return note

    def _changed(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # a desk listener never undoes an operator's action
                log.exception("alarm change listener failed")

    def acknowledge(self, alarm_id: str, actor: str, *, notify: bool = True) -> tuple[Alarm, bool]:
        """Mark the alarm seen; ``changed`` is False when it was already acknowledged or resolved.
        Raises :class:`AlarmNotFound`."""
        changed = self.store.acknowledge(alarm_id, actor, at=self.clock.wall())
        alarm = self._get(alarm_id)
        if changed and self.audit is not None:
            self.audit.record(actor, "alarm.acknowledge", alarm_id, {"type": alarm.type, "door": alarm.door})
        if changed and notify:
            self._changed()
        return alarm, changed

    def resolve(self, alarm_id: str, note: str, actor: str) -> tuple[Alarm, bool]:
        """Close the alarm with a note (stripped; refused blank or over :data:`MAX_NOTE` with
        :class:`NoteMissing` / :class:`AlarmError`); ``changed`` is False when it was already resolved.
        Raises :class:`AlarmNotFound`. The note stays out of the audit log. A blank note is refused only for a
        high-priority alarm (docs/alarms.md "Priority")."""
        row = self.store.alarm(alarm_id)
        if row is None:
            raise AlarmNotFound(f"no alarm {alarm_id!r}")
        alarm, changed = self._resolve(alarm_id, self._check_note(note, [row]), actor)
        if changed:
            self._changed()
        return alarm, changed

    def _resolve(self, alarm_id: str, note: str, actor: str) -> tuple[Alarm, bool]:
        changed = self.store.resolve(alarm_id, actor, note or None, at=self.clock.wall())
        alarm = self._get(alarm_id)
        if changed and self.audit is not None:
            self.audit.record(actor, "alarm.resolve", alarm_id,
                              {"type": alarm.type, "door": alarm.door,
                               "state_before": "active" if alarm.cleared_at is None else "cleared"})
        return alarm, changed

    def _get(self, alarm_id: str) -> Alarm:
        row = self.store.alarm(alarm_id)
        if row is None:  # removed between the change and the read (retention)
            raise AlarmNotFound(f"no alarm {alarm_id!r}")
        return self._with_priority([row])[0]


def _unique(ids: Iterable[str]) -> list[str]:
    """The ids once each, in the order given."""
    return list(dict.fromkeys(ids))
