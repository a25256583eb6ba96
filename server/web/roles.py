"""What each operator role may see: the desk's navigation, the one table every desk page reads.

The roles themselves and what a token of each may carry are the operator service's (server/operators.py:
``ROLES``, ``GRANTS``); they are named here too because every route declares them (``require(ADMIN, DESK)``).
"""

from __future__ import annotations

from dataclasses import dataclass

from server.operators import ADMIN, ANY, AUDITOR, DESK, GRANTS, KIOSK, ROLES

__all__ = ["ADMIN", "ANY", "AUDITOR", "DESK", "GRANTS", "KIOSK", "ROLES", "SECTIONS", "Section", "sections_for"]


@dataclass(frozen=True)
class Section:
    """One entry of the desk's navigation: its page path and the roles that may open it."""

    key: str
    title: str
    path: str
    roles: tuple[str, ...]
    summary: str


SECTIONS: tuple[Section, ...] = (
    Section("visitors", "Visitors", "/visitors", (ADMIN, DESK), "Pre-register, check in and check out visitors."),
    Section("live", "Live", "/live", (ADMIN, DESK), "Every badge and door event as it happens, with snapshots."),
    Section("alarms", "Alarms", "/alarms", (ADMIN, DESK), "Forced and held doors, tamper, offline devices."),
    Section("incidents", "Incidents", "/incidents", (ADMIN, DESK, AUDITOR),
            "Investigations: alarms, events, snapshots and notes gathered, with signed evidence bundles."),
    Section("doors", "Doors", "/doors", (ADMIN, DESK), "Every door's state; remote unlock, timed overrides and lockdown."),
    Section("floors", "Floors", "/floors", (ADMIN, DESK),
            "Each area's doors as cards: state, open alarms, last event and snapshot, live."),
    Section("muster", "Muster", "/muster", (ADMIN, DESK), "Who is in which area now, for a roll call."),
    Section("reports", "Reports", "/reports", (ADMIN, DESK, AUDITOR),
            "After the fact: a person's movements, door activity, refusals, traffic by hour, occupancy; CSV."),
    Section("people", "People", "/people", (ADMIN,), "People, cards, access levels and clearance."),
    Section("audit", "Audit", "/audit", (ADMIN, AUDITOR), "The hash-chained record of every change."),
    Section("site", "Site", "/site", (ADMIN, AUDITOR), "The site's revisions: what changed, who, when; rollback."),
    Section("site_setup", "Site setup", "/site/areas", (ADMIN,),
            "Areas, doors, schedules and holidays, access levels: changed here, live at the doors without a restart."),
    Section("operators", "Operators", "/operators", (ADMIN,),
            "Who may use the desk and its API: accounts, roles, passwords, two-factor login, API tokens."),
    Section("webhooks", "Webhooks", "/integrations/webhooks", (ADMIN,),
            "Signed webhooks to other systems: subscriptions, a test delivery, the dead letters."),
    Section("kiosk", "Self check-in", "/kiosk", (KIOSK,),
            "The lobby tablet: a visitor scans or types their pass, accepts the agreements and checks in."),
)


def sections_for(role: str) -> list[Section]:
    """The sections an operator with this role may open, in navigation order."""
    return [s for s in SECTIONS if role in s.roles]
