"""Retention: each class of data is deleted when its period (site.toml [retention]) is over.

The server runs :func:`run_retention` at start and then daily (:class:`RetentionJob`);
``doorkeep retention run`` runs it on demand. Each run records one ``retention.run``
audit record with its cut-offs and what it deleted. What an unresolved alarm needs
(its source event and that event's snapshot) is kept until the alarm is resolved,
because an operator must be able to look at it (docs/security.md). What an open incident holds (its
events, their snapshots, its alarms, the events of its person and door-window queries) is under legal hold
and kept until the incident is closed (server/store_incidents.py, docs/privacy.md).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from doorkeep.clock import Clock, iso_ms
from doorkeep.config import RetentionSettings
from server.audit import AuditLog
from server.store import Store

log = logging.getLogger("doorkeep.server.retention")

DAY_S = 86_400.0
BATCH = 500


@dataclass
class RetentionReport:
    """What one run deleted (or, for a dry run, would delete), and the cut-offs it used."""

    cutoffs: dict[str, str]
    deleted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("events", "snapshots", "visitors", "presence", "alarms", "audit"), 0))
    kept_for_alarms: int = 0
    kept_for_incidents: int = 0
    visitor_ids: list[str] = field(default_factory=list)
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        out = [f"{verb} {n} {what}" + (f" (before {self.cutoffs[what]})" if what in self.cutoffs else "")
               for what, n in self.deleted.items()]
        if self.kept_for_alarms:
            out.append(f"kept {self.kept_for_alarms} old events (and their snapshots) that open alarms need")
        if self.kept_for_incidents:
            out.append(f"kept {self.kept_for_incidents} old events (and their snapshots) under the legal hold of "
                       "open incidents")
        return out


def cutoffs(settings: RetentionSettings, now: float) -> dict[str, float]:
    """Epoch seconds before which each class of data is due."""
    return {"events": now - settings.events_days * DAY_S, "snapshots": now - settings.snapshots_days * DAY_S,
            "visitors": now - settings.visitors_days * DAY_S, "alarms": now - settings.alarms_days * DAY_S,
            "audit": now - settings.audit_days * DAY_S}


def run_retention(store: Store, settings: RetentionSettings, now: float, audit: AuditLog | None, *,
                  dry_run: bool = False, actor: str = "system", batch: int = BATCH) -> RetentionReport:
    """Delete what is past its period, in small transactions so the server keeps ingesting meanwhile."""
    cut = cutoffs(settings, now)
    report = RetentionReport({k: iso_ms(v) for k, v in cut.items()}, dry_run=dry_run)

    # Events: both the device's timestamp and the server's receipt must be past the cut-off (the store's
    # query), so a device whose clock is years behind cannot get its fresh events purged.
    ev_args = (report.cutoffs["events"], cut["events"])
    report.kept_for_alarms = store.count_events_kept_for_alarms(report.cutoffs["events"])
    report.kept_for_incidents = store.count_events_kept_for_incidents(report.cutoffs["events"])
    if dry_run:
        report.deleted["events"] = store.count_expired_events(*ev_args)
    else:
        while True:
            rows = store.expired_events(*ev_args, batch)
            if not rows:
                break
            for eid, snap in rows:
                if store.delete_snapshot(snap or eid):
                    report.deleted["snapshots"] += 1
            store.delete_events([eid for eid, _ in rows])
            report.deleted["events"] += len(rows)

    # Snapshots on their own, shorter period (the event stays, without its picture).
    if dry_run:
        report.deleted["snapshots"] = store.count_expired_snapshots(cut["snapshots"], *ev_args)
    else:
        while True:
            ids = store.expired_snapshots(cut["snapshots"], batch)
            if not ids:
                break
            report.deleted["snapshots"] += sum(1 for sid in ids if store.delete_snapshot(sid))

    # Visitors: a period after the visit ended (checked out, or the window closed without a check-in).
    # A visitor still checked in is kept: the desk must check them out (their badge is live).
    report.visitor_ids = store.ended_visits(cut["visitors"])
    report.deleted["visitors"] = len(report.visitor_ids)
    if report.visitor_ids and not dry_run:
        report.deleted["presence"] += store.delete_visitors(report.visitor_ids, batch)
    elif report.visitor_ids:
        report.deleted["presence"] = store.count_presence_of(report.visitor_ids)

    # Cardholder photos (server/store_photos.py): kept while their person is in the store; once an import of
    # people.toml removed the person, the photo and its key go. Reported only when there was one.
    photos = store.count_orphan_person_photos() if dry_run else store.delete_orphan_person_photos()
    if photos:
        report.deleted["photos"] = photos

    # Agreements accepted for those visits (drawn signatures with them), their requirements and watchlist holds
    # (server/store_agreements.py) go with the visit; rows of visits already gone too. Reported when any went.
    if not dry_run:
        agreements = store.delete_visit_agreements(report.visitor_ids) + store.delete_orphan_agreements()
        if agreements:
            report.deleted["agreements"] = agreements

    # Alarms: only resolved ones; an open alarm stays whatever its age.
    if dry_run:
        report.deleted["alarms"] = store.count_resolved_alarms_before(cut["alarms"])
    else:
        report.deleted["alarms"] = store.delete_resolved_alarms_before(cut["alarms"])

    # The audit log: its oldest records, behind an anchor that keeps the rest verifiable.
    if audit is not None:
        if dry_run:
            report.deleted["audit"] = audit.count_before(report.cutoffs["audit"])
        else:
            report.deleted["audit"] = audit.prune_before(report.cutoffs["audit"])
            audit.record(actor, "retention.run", None, {"cutoffs": report.cutoffs, "deleted": report.deleted,
                                                        "kept_for_alarms": report.kept_for_alarms,
                                                        "kept_for_incidents": report.kept_for_incidents})
    log.info("retention%s: %s", " (dry run)" if dry_run else "", ", ".join(report.lines()))
    return report


class RetentionJob:
    """Runs retention at start and then every ``interval_s`` on its own thread, until stopped.

    The wait is ``Event.wait`` on the stop event, so stopping is immediate and no logic sleeps.
    ``on_visitors_removed`` lets the live directory forget the visitors it still holds in memory.
    """

    def __init__(self, store: Store, settings: RetentionSettings, clock: Clock, audit: AuditLog | None, *,
                 interval_s: float = DAY_S,
                 on_visitors_removed: Callable[[list[str]], None] | None = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.audit = audit
        self.interval_s = interval_s
        self.on_visitors_removed = on_visitors_removed
        self.stop_event = threading.Event()
        self.last: RetentionReport | None = None
        self.runs = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="doorkeep-retention", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> RetentionReport:
        report = run_retention(self.store, self.settings, self.clock.wall(), self.audit)
        if report.visitor_ids and self.on_visitors_removed is not None:
            self.on_visitors_removed(report.visitor_ids)
        self.last, self.runs = report, self.runs + 1
        return report

    def _loop(self) -> None:
        delay = 0.0
        while not self.stop_event.wait(delay):
            try:
                self.run_once()
            except Exception:  # a failed run must not end the job: the next day tries again
                log.exception("retention run failed; retrying in %.0f s", self.interval_s)
            delay = self.interval_s
