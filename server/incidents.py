"""Incidents: the investigation after an event (docs/desk.md "Incidents", docs/privacy.md "Evidence bundles").

An operator opens an incident from one or more alarms or events, gives it a title and a severity, writes notes,
assigns it, attaches what belongs to it (events, alarms and with them their snapshots, a person over a period,
a time window at a set of doors) and exports a signed evidence bundle (server/evidence.py). The application
service behind the desk's incident pages (server/web/incidents.py) and ``doorkeep evidence export``.

Chain of custody: opening, viewing, exporting and every change are recorded in the audit log with the operator
as actor (``incident.open``, ``incident.view``, ``incident.export``, ``incident.note``, ``incident.attach``,
``incident.detach``, ``incident.assign``, ``incident.close``, ``incident.reopen``; target ``incident:ID``).
Titles and notes are free text that may name people: they stay in the incident tables, never in the
append-only audit log (as alarm notes do). A person attached is audited by pseudonym only.

Legal hold: what an open incident holds is kept by retention until the incident is closed
(server/store_incidents.py ``HELD_EVENT_IDS``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from doorkeep.clock import Clock, iso_ms
from doorkeep.evidence import fingerprint
from doorkeep.model import Site
from server.audit import Auditor, record_audit
from server.errors import ServerError
from server.store import Store

if TYPE_CHECKING:
    from server.app import Server
    from server.operators import Operators

log = logging.getLogger("doorkeep.server.incidents")

__all__ = ["Incident", "IncidentError", "IncidentNotFound", "IncidentView", "Incidents", "SEVERITIES"]

SEVERITIES = ("low", "medium", "high", "critical")
OPEN, CLOSED = "open", "closed"
MAX_TITLE = 200
MAX_NOTE = 4000
#: The most events one incident's page or bundle resolves; an export holding more is refused (narrow a window).
MAX_EVENTS = 5000
#: The longest time window a person or door query may cover.
MAX_WINDOW_S = 31 * 86_400.0


class IncidentError(ServerError, ValueError):
    """An incident action refused as asked; the message says why and what to do."""


class IncidentNotFound(ServerError, LookupError):
    """No incident has that id."""


@dataclass(frozen=True)
class Incident:
    id: int
    title: str
    severity: str
    status: str
    assignee: str | None
    created_at: float
    created_by: str
    closed_at: float | None
    closed_by: str | None

    @property
    def ref(self) -> str:
        """The audit log's target for this incident."""
        return f"incident:{self.id}"

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Incident:
        return cls(id=int(r["id"]), title=r["title"], severity=r["severity"], status=r["status"],
                   assignee=r["assignee"], created_at=r["created_at"], created_by=r["created_by"],
                   closed_at=r["closed_at"], closed_by=r["closed_by"])


@dataclass(frozen=True)
class IncidentView:
    """An incident with its timeline (oldest first), its attachments, and what they resolve to now."""

    incident: Incident
    timeline: list[dict[str, Any]]
    items: list[dict[str, Any]]
    events: list[dict[str, Any]]
    alarms: list[dict[str, Any]]
    truncated: bool  # more than MAX_EVENTS events: only the first are listed


class Incidents:
    """Open, read, work and close incidents; every action audited (see the module docstring)."""

    def __init__(self, store: Store, clock: Clock, audit: Auditor | None, *, site: Callable[[], Site],
                 signing_key: Ed25519PrivateKey | None = None,
                 assignable: Callable[[], list[str]] | None = None,
                 subject_ref: Callable[[str], str] | None = None) -> None:
        """``signing_key``: the server's Ed25519 policy-signing key, which signs evidence bundles (None: no export);
        ``assignable``: the operators an incident may be assigned to (admin and desk accounts, not disabled);
        ``subject_ref``: a person id -> its audit pseudonym (server/audit.py ``subject_ref``)."""
        self.store = store
        self.clock = clock
        self.audit = audit
        self.site = site
        self.signing_key = signing_key
        self.assignable = assignable
        self.subject_ref = subject_ref

    @classmethod
    def for_server(cls, server: Server, operators: Operators | None = None) -> Incidents:
        """The service of a running server: its store, clock, audit log and live site; bundles signed with its
        policy-signing key; incidents assignable to its active admin and desk operators."""
        from server.audit import subject_ref

        key = server.directory.key

        def assignable() -> list[str]:
            if operators is None:
                return []
            return [o.name for o in operators.all() if o.active and o.role in ("admin", "desk")]

        return cls(server.store, server.directory.clock, server.audit, site=lambda: server.site,
                   signing_key=server.commands.key, assignable=assignable if operators is not None else None,
                   subject_ref=lambda person: subject_ref(key, person))

    # ------------------------------------------------------------ reading

    @property
    def key_fingerprint(self) -> str | None:
        """The fingerprint of the key bundles are signed with (``doorkeep evidence verify`` prints the same)."""
        return fingerprint(self.signing_key.public_key()) if self.signing_key is not None else None

    def list(self, *, status: str | None = None, limit: int = 50, before: int | None = None) -> list[Incident]:
        return [Incident.from_row(r) for r in self.store.incident_rows(status=status, limit=limit, before=before)]

    def get(self, incident_id: int) -> Incident:
        row = self.store.incident_row(incident_id)
        if row is None:
            raise IncidentNotFound(f"no incident {incident_id}")
        return Incident.from_row(row)

    def view(self, incident_id: int, actor: str | None) -> IncidentView:
        """The incident as its page shows it; audited as ``incident.view`` when ``actor`` is given."""
        incident = self.get(incident_id)
        view = self._resolve(incident)
        if actor is not None:
            record_audit(self.audit, actor, "incident.view", incident.ref, {"events": len(view.events)})
        return view

    def _resolve(self, incident: Incident) -> IncidentView:
        events = self.store.incident_events(incident.id, MAX_EVENTS + 1)
        items = self.store.incident_items(incident.id)
        alarms = [a for a in (self.store.alarm(i["ref"]) for i in items if i["kind"] == "alarm") if a is not None]
        return IncidentView(incident, self.store.incident_log_rows(incident.id), items, events[:MAX_EVENTS], alarms,
                            truncated=len(events) > MAX_EVENTS)

    def holding(self, *, event: str | None = None, alarm: str | None = None) -> list[int]:
        """The incidents an event or alarm is attached to."""
        return self.store.incidents_holding(event=event, alarm=alarm)

    # ------------------------------------------------------------ changes

    def open(self, title: str, severity: str, actor: str, *, events: Sequence[str] = (), alarms: Sequence[str] = (),
             assignee: str | None = None, note: str = "") -> Incident:
        """A new open incident holding these events and alarms (each must exist)."""
        title = _text(title, "title", MAX_TITLE, required=True)
        note = _text(note, "note", MAX_NOTE)
        if severity not in SEVERITIES:
            raise IncidentError(f"severity must be one of {', '.join(SEVERITIES)}, not {severity[:20]!r}")
        assignee = self._assignee(assignee)
        items: list[tuple[str, str]] = []
        for eid in dict.fromkeys(events):
            if self.store.event(eid) is None:
                raise IncidentError(f"there is no event {eid[:80]!r} (removed by retention, or never stored)")
            items.append(("event", eid))
        for aid in dict.fromkeys(alarms):
            if self.store.alarm(aid) is None:
                raise IncidentError(f"there is no alarm {aid[:80]!r}")
            items.append(("alarm", aid))
        incident_id = self.store.create_incident(title=title, severity=severity, actor=actor, at=self.clock.wall(),
                                                 assignee=assignee, items=items, note=note or None)
        incident = self.get(incident_id)
        record_audit(self.audit, actor, "incident.open", incident.ref,
                     {"severity": severity, "events": sorted({e for k, e in items if k == "event"}),
                      "alarms": sorted({a for k, a in items if k == "alarm"}), "assignee": assignee})
        return incident

    def _open_incident(self, incident_id: int) -> Incident:
        incident = self.get(incident_id)
        if incident.status != OPEN:
            raise IncidentError(f"incident {incident_id} is closed: reopen it first")
        return incident

    def _assignee(self, assignee: str | None) -> str | None:
        assignee = (assignee or "").strip() or None
        if assignee is not None and self.assignable is not None and assignee not in self.assignable():
            raise IncidentError(f"{assignee[:60]!r} is not an admin or desk operator who can work on an incident")
        return assignee

    def add_note(self, incident_id: int, text: str, actor: str) -> None:
        incident = self._open_incident(incident_id)
        text = _text(text, "note", MAX_NOTE, required=True)
        self.store.add_incident_log(incident.id, what="note", actor=actor, at=self.clock.wall(), text=text)
        record_audit(self.audit, actor, "incident.note", incident.ref, {"chars": len(text)})

    def assign(self, incident_id: int, assignee: str | None, actor: str) -> bool:
        incident = self._open_incident(incident_id)
        who = self._assignee(assignee)
        changed = self.store.set_incident_assignee(incident.id, who, actor=actor, at=self.clock.wall())
        if changed:
            record_audit(self.audit, actor, "incident.assign", incident.ref, {"assignee": who})
        return changed

    def attach_event(self, incident_id: int, event_id: str, actor: str) -> bool:
        incident = self._open_incident(incident_id)
        if self.store.event(event_id) is None:
            raise IncidentError(f"there is no event {event_id[:80]!r} (removed by retention, or never stored)")
        return self._attached(incident, actor, "event", event_id, None, None, None, f"event {event_id}",
                              {"kind": "event", "event": event_id})

    def attach_alarm(self, incident_id: int, alarm_id: str, actor: str) -> bool:
        incident = self._open_incident(incident_id)
        if self.store.alarm(alarm_id) is None:
            raise IncidentError(f"there is no alarm {alarm_id[:80]!r}")
        return self._attached(incident, actor, "alarm", alarm_id, None, None, None, f"alarm {alarm_id}",
                              {"kind": "alarm", "alarm": alarm_id})

    def attach_person(self, incident_id: int, person: str, since: float, until: float, actor: str) -> bool:
        """Every event of ``person`` between ``since`` and ``until`` (resolved when read and exported)."""
        incident = self._open_incident(incident_id)
        person = self._person_id(person)
        self._window(since, until)
        ref = self.subject_ref(person) if self.subject_ref is not None else None
        return self._attached(incident, actor, "person", person, iso_ms(since), iso_ms(until), None,
                              f"person {person} from {iso_ms(since)} to {iso_ms(until)}",
                              {"kind": "person", "subject": ref, "since": iso_ms(since), "until": iso_ms(until)})

    def attach_window(self, incident_id: int, doors: Sequence[str], since: float, until: float, actor: str) -> bool:
        """Every event at ``doors`` (none: every door) between ``since`` and ``until``."""
        incident = self._open_incident(incident_id)
        known = self.site().doors
        unknown = [d for d in doors if d not in known]
        if unknown:
            raise IncidentError(f"there is no door {unknown[0][:60]!r} on this site")
        self._window(since, until)
        chosen = sorted(set(doors))
        where = ", ".join(chosen) if chosen else "every door"
        return self._attached(incident, actor, "window", None, iso_ms(since), iso_ms(until), chosen,
                              f"{where} from {iso_ms(since)} to {iso_ms(until)}",
                              {"kind": "window", "doors": chosen, "since": iso_ms(since), "until": iso_ms(until)})

    def _person_id(self, typed: str) -> str:
        """A person typed into the picker: an id as is, else the one person whose name is exactly that (any case)."""
        typed = typed.strip()
        people = self.site().people
        if typed in people:
            return typed
        named = [p.id for p in people.values() if p.name.casefold() == typed.casefold()]
        if len(named) == 1:
            return named[0]
        raise IncidentError(f"there is no person {typed[:60]!r} on this site" if not named else
                            f"several people are called {typed[:60]!r}: choose one by id")

    @staticmethod
    def _window(since: float, until: float) -> None:
        if not until > since:
            raise IncidentError("the window's end must be after its start")
        if until - since > MAX_WINDOW_S:
            raise IncidentError("a window covers at most 31 days: attach several if you need more")

    def _attached(self, incident: Incident, actor: str, kind: str, ref: str | None, since: str | None,
                  until: str | None, doors: list[str] | None, text: str, details: dict[str, Any]) -> bool:
        changed = self.store.add_incident_item(incident.id, kind=kind, ref=ref, since=since, until=until, doors=doors,
                                               actor=actor, at=self.clock.wall(), text=text)
        if changed:
            record_audit(self.audit, actor, "incident.attach", incident.ref, details)
        return changed

    def detach(self, incident_id: int, item_id: int, actor: str) -> bool:
        incident = self._open_incident(incident_id)
        item = next((i for i in self.store.incident_items(incident.id) if i["id"] == item_id), None)
        if item is None:
            return False
        label = item["ref"] if item["kind"] in ("event", "alarm") else f"{item['since']} to {item['until']}"
        changed = self.store.remove_incident_item(incident.id, item_id, actor=actor, at=self.clock.wall(),
                                                  text=f"{item['kind']} {label}")
        if changed:
            record_audit(self.audit, actor, "incident.detach", incident.ref, {"kind": item["kind"], "item": item_id})
        return changed

    def close(self, incident_id: int, note: str, actor: str) -> bool:
        """Close with a note (what was found, what was done); its legal hold ends with it."""
        incident = self.get(incident_id)
        note = _text(note, "note", MAX_NOTE, required=True)
        changed = self.store.set_incident_status(incident.id, CLOSED, actor=actor, at=self.clock.wall(), note=note)
        if changed:
            record_audit(self.audit, actor, "incident.close", incident.ref, {})
        return changed

    def reopen(self, incident_id: int, actor: str) -> bool:
        incident = self.get(incident_id)
        changed = self.store.set_incident_status(incident.id, OPEN, actor=actor, at=self.clock.wall(), note=None)
        if changed:
            record_audit(self.audit, actor, "incident.reopen", incident.ref, {})
        return changed

    # ------------------------------------------------------------ export

    def export(self, incident_id: int, actor: str) -> tuple[str, bytes]:
        """The signed evidence bundle (file name, zip bytes); audited as ``incident.export`` with the manifest's
        SHA-256, so the audit log names exactly which bundle left the system."""
        from server.evidence import build_bundle

        if self.signing_key is None:
            raise IncidentError("this server has no signing key: evidence bundles cannot be signed")
        incident = self.get(incident_id)
        view = self._resolve(incident)
        if view.truncated:
            raise IncidentError(f"the incident holds more than {MAX_EVENTS} events: narrow its time windows first")
        at = self.clock.wall()
        audit_rows = self._audit_rows(view)
        bundle = build_bundle(view, site=self.site(), snapshot=self.store.snapshot_bytes,
                              photo_declined=self._photo_declined, audit_rows=audit_rows, key=self.signing_key,
                              actor=actor, at=at)
        self.store.add_incident_log(incident.id, what="exported", actor=actor, at=at,
                                    text=f"evidence bundle, manifest SHA-256 {bundle.manifest_sha256}")
        record_audit(self.audit, actor, "incident.export", incident.ref,
                     {"manifest_sha256": bundle.manifest_sha256, "files": bundle.files, "events": len(view.events),
                      "snapshots": bundle.snapshots, "key": self.key_fingerprint})
        return f"incident-{incident.id}-evidence.zip", bundle.data

    def _photo_declined(self, person: str | None) -> bool:
        if not person:
            return False
        row = self.store.latest_visitor_consent(person)
        return row is not None and not row["photo_consent"]

    def _audit_rows(self, view: IncidentView) -> list[dict[str, Any]]:
        """The audit records about the incident and its alarms (each with its hash, so a copy can be matched
        against the live log's chain), oldest first."""
        audit = self.audit
        search = getattr(audit, "search", None)
        if search is None:
            return []
        targets = (view.incident.ref, *(a["id"] for a in view.alarms))
        rows: list[Any] = []
        before: int | None = None
        while True:  # a search returns at most 500 records: page back through them
            page = search(target=targets, before_seq=before, limit=500)
            rows += page
            if len(page) < 500:
                break
            before = page[-1].seq
        return [{"seq": r.seq, "ts": r.ts, "actor": r.actor, "action": r.action, "target": r.target,
                 "details": r.details, "hash": r.hash} for r in reversed(rows)]


def _text(value: str, name: str, limit: int, *, required: bool = False) -> str:
    value = (value or "").strip()
    if required and not value:
        raise IncidentError(f"the {name} is required")
    if len(value) > limit:
        raise IncidentError(f"the {name} is longer than {limit} characters")
    return value
