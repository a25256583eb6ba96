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

from dataclasses import dataclass
from typing import Any

from doorkeep.clock import Clock
from server.audit import Auditor
from server.errors import ServerError
from server.store import AlarmNotFound, Store

__all__ = ["MAX_NOTE", "Alarm", "AlarmError", "AlarmNotFound", "Alarms", "NoteMissing"]

#: The longest resolution note accepted (characters).
MAX_NOTE = 2000


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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Alarm:
        return cls(id=row["id"], type=row["type"], severity=row["severity"], state=row["state"],
                   device=row["device"], door=row["door"], raised_at=row["raised_at"],
                   last_raised_at=row["last_raised_at"], occurrences=row["occurrences"],
                   cleared_at=row["cleared_at"], acknowledged_at=row["acknowledged_at"],
                   acknowledged_by=row["acknowledged_by"], resolved_at=row["resolved_at"],
                   resolved_by=row["resolved_by"], note=row["note"], detail=row["detail"] or {})


class Alarms:
    """The desk's alarm actions on one store, each audited with the operator as actor."""

    def __init__(self, store: Store, clock: Clock, audit: Auditor | None = None) -> None:
        self.store = store
        self.clock = clock
        self.audit = audit

    def open(self) -> list[Alarm]:
        """Every unresolved alarm (active and cleared), newest first."""
        return [Alarm.from_row(r) for r in self.store.open_alarms()]

    def resolved(self, limit: int) -> list[Alarm]:
        """The most recently resolved alarms first (the history)."""
        return [Alarm.from_row(r) for r in self.store.resolved_alarms(limit)]

    def acknowledge(self, alarm_id: str, actor: str) -> tuple[Alarm, bool]:
        """Mark the alarm seen; ``changed`` is False when it was already acknowledged or resolved.
        Raises :class:`AlarmNotFound`."""
        changed = self.store.acknowledge(alarm_id, actor, at=self.clock.wall())
        alarm = self._get(alarm_id)
        if changed and self.audit is not None:
            self.audit.record(actor, "alarm.acknowledge", alarm_id, {"type": alarm.type, "door": alarm.door})
        return alarm, changed

    def resolve(self, alarm_id: str, note: str, actor: str) -> tuple[Alarm, bool]:
        """Close the alarm with a note (stripped; refused blank or over :data:`MAX_NOTE` with
        :class:`NoteMissing` / :class:`AlarmError`); ``changed`` is False when it was already resolved.
        Raises :class:`AlarmNotFound`. The note stays out of the audit log."""
        note = note.strip()
        if not note:
            raise NoteMissing("the note is empty: say what happened and what was done")
        if len(note) > MAX_NOTE:
            raise AlarmError(f"the note has more than {MAX_NOTE} characters: shorten it")
        changed = self.store.resolve(alarm_id, actor, note, at=self.clock.wall())
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
        return Alarm.from_row(row)
