"""The stored events as the desk reads them, and the events the server itself makes (docs/desk.md "Live").

A read service: the live view and its history (server/web/live.py) page through stored events, fetch one by
id and a snapshot's bytes (decrypted in memory by the store), and ask whether a visitor declined photos (the
desk then never shows their snapshots). It also records the events no edge publishes — ``visitor_arrived``
when a visitor checks in (server/visitors.py) — under the device :data:`SERVER_DEVICE`, and tells its
listeners (the live feed) once each is stored.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, Callable

from doorkeep import vocabulary
from doorkeep.clock import Clock, iso_ms
from doorkeep.contract import EventMsg
from server.store import Store
from server.store_desk import EVENT_TUPLE_COLUMNS

#: The columns of :meth:`EventLog.rows_for_export`'s tuples, in order (the rowid ``cursor`` first).
EXPORT_COLUMNS: tuple[str, ...] = EVENT_TUPLE_COLUMNS

log = logging.getLogger("doorkeep.server.desk")

#: Events the server itself records (never on the MQTT wire, so not in doorkeep.contract.EVENT_TYPES).
SERVER_EVENT_TYPES: frozenset[str] = vocabulary.SERVER_EVENT_TYPES  # declared in doorkeep/vocabulary.py
#: The device name server-side events are stored under.
SERVER_DEVICE = "desk"

#: Told of each server-made event once it is stored (the live feed pushes it to open streams).
EventListener = Callable[[EventMsg], None]

# The live feed's event kinds, toggled on and off by the operator (docs/desk.md "Live"). Derived from the
# vocabulary, never listed by hand: a new event type lands in a kind by what it is.
BADGE, ALARM, DOOR, SYSTEM = "badge", "alarm", "door", "system"
#: Kind -> what the toggle says, in the order the desk shows them.
KINDS: dict[str, str] = {BADGE: "Badges", ALARM: "Alarms", DOOR: "Door movements", SYSTEM: "System"}
#: Door movements are off by default: two rows in three are a door opening or closing, and they drown the badges.
DEFAULT_KINDS: frozenset[str] = frozenset({BADGE, ALARM, SYSTEM})


def event_kind(etype: str) -> str:
    """A badge (``access``), an alarm (an event that raises one), a door movement (the door's own ordinary
    events: opened, closed, REX) or system (everything else: readers, cameras, commands, the desk's own)."""
    if etype == "access":
        return BADGE
    known = vocabulary.EVENTS.get(etype)
    if known is None:
        return SYSTEM
    if known.raises:
        return ALARM
    return DOOR if known.door_machine else SYSTEM


def kind_types(kinds: frozenset[str] | set[str]) -> list[str] | None:
    """The event types of these kinds for the store's ``types`` filter; None when every kind is on (no filter)."""
    if set(KINDS) <= set(kinds):
        return None
    return sorted(name for name in vocabulary.EVENTS if event_kind(name) in kinds)


class EventLog:
    """Pages of stored events, one event, a snapshot; and the server's own events, stored and announced."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self.listeners: list[EventListener] = []

    def page(self, *, before: int | None = None, after: int | None = None, door: str | None = None,
             decision: str | None = None, people: list[str] | None = None, doors: list[str] | None = None,
             types: list[str] | None = None, reason: str | None = None, since: str | None = None,
             until: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Stored events (``Store.event`` shape plus ``cursor``), newest first, or oldest first ``after`` a cursor;
        filtered by door (or any of ``doors``), decision, reason, person ids, event types and ``since <= ts <
        until`` (stored ``ts`` text, UTC); None: any."""
        return self.store.event_page(before=before, after=after, door=door, decision=decision, people=people,
                                     doors=doors, types=types, reason=reason, since=since, until=until,
                                     limit=limit)

    def rows_for_export(self, *, before: int | None = None, door: str | None = None, decision: str | None = None,
                        people: list[str] | None = None, doors: list[str] | None = None,
                        types: list[str] | None = None, reason: str | None = None, since: str | None = None,
                        until: str | None = None, limit: int = 500) -> list[tuple[Any, ...]]:
        """What :meth:`page` selects, newest first, as bare tuples of :data:`EXPORT_COLUMNS`: the CSV export
        (server/web/export.py) reads 100,000 rows, and a dict per row was a tenth of its time."""
        return self.store.event_tuples(before=before, door=door, decision=decision, people=people, doors=doors,
                                       types=types, reason=reason, since=since, until=until, limit=limit)

    def latest_at_doors(self, doors: list[str], snapshot_types: list[str],
                        lookback: int) -> dict[str, tuple[dict[str, Any] | None, list[dict[str, Any]]]]:
        """Each door's newest event and its newest ``lookback`` events of ``snapshot_types``, for every door in
        one store statement (the floor view: ``Store.door_latest_events``)."""
        return self.store.door_latest_events(doors, snapshot_types, lookback)

    def get(self, event_id: str) -> dict[str, Any] | None:
        """One stored event with its cursor, or None."""
        return self.store.event_with_cursor(event_id)

    def snapshot(self, snapshot_id: str) -> bytes | None:
        """A snapshot's JPEG, or None when it has not arrived or retention removed it."""
        return self.store.snapshot_bytes(snapshot_id)

    def photo_declined(self, person: str | None) -> bool:
        """Whether this visitor's latest consent says no photos: the desk then never shows their snapshots."""
        if not person:
            return False
        row = self.store.latest_visitor_consent(person)
        return row is not None and not row["photo_consent"]

    def photo_id(self, person: str | None) -> str | None:
        """The id of the person's cardholder photo (server/photos.py), shown beside a badge's snapshot; None
        if they have none. One key lookup: the live feed asks it for every row."""
        return self.store.person_photo_id(person)

    def record(self, etype: str, *, person: str | None = None, detail: dict[str, Any] | None = None) -> EventMsg:
        """Store a server-side event (one of :data:`SERVER_EVENT_TYPES`) under the device ``desk`` and tell the
        listeners; a listener that fails is logged and never undoes the event."""
        if etype not in SERVER_EVENT_TYPES:
            raise ValueError(f"{etype!r} is not a server event type ({sorted(SERVER_EVENT_TYPES)})")
        seq = self.store.next_counter("desk_event_seq")
        ev = EventMsg(id=f"desk-{uuid.uuid4().hex}", seq=seq, ts=iso_ms(self.clock.wall()), device=SERVER_DEVICE,
                      door="", type=etype, person=person, detail=detail or {})
        if self.store.ingest_event(ev, self.clock.wall()) is not None:
            for listener in list(self.listeners):
                try:
                    listener(ev)
                except Exception:
                    log.exception("an event listener failed for %s", ev.id)
        return ev
