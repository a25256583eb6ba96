"""Operator roles and what each may see: the one table every desk route and page reads.

Roles are not a ladder: ``admin`` may do everything, ``desk`` runs the desk (visitors, live view,
alarms, doors, muster), ``auditor`` only reads (the audit log). A token may carry a role "no higher"
than its operator's, i.e. one whose rights are a subset of the operator's (:data:`GRANTS`).
"""

from __future__ import annotations

from dataclasses import dataclass

ADMIN, DESK, AUDITOR = "admin", "desk", "auditor"
ROLES: tuple[str, ...] = (ADMIN, DESK, AUDITOR)
#: Every logged-in operator, whatever the role (for "who am I", logout, the home page).
ANY: tuple[str, ...] = ROLES
#: The roles an operator of each role may hand to an API token.
GRANTS: dict[str, frozenset[str]] = {
    ADMIN: frozenset(ROLES),
    DESK: frozenset({DESK}),
    AUDITOR: frozenset({AUDITOR}),
}


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
    Section("doors", "Doors", "/doors", (ADMIN, DESK), "Every door's state; remote unlock and lockdown."),
    Section("muster", "Muster", "/muster", (ADMIN, DESK), "Who is in which area now, for a roll call."),
    Section("people", "People", "/people", (ADMIN,), "People, cards, access levels and clearance."),
    Section("audit", "Audit", "/audit", (ADMIN, AUDITOR), "The hash-chained record of every change."),
    Section("site", "Site", "/site", (ADMIN, AUDITOR), "The site's revisions: what changed, who, when; rollback."),
    Section("operators", "Operators", "/operators", (ADMIN,),
            "Who may use the desk and its API: accounts, roles, passwords, two-factor login, API tokens."),
)


def sections_for(role: str) -> list[Section]:
    """The sections an operator with this role may open, in navigation order."""
    return [s for s in SECTIONS if role in s.roles]
