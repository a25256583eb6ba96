"""The HTTP side of logging in (docs/desk.md). The rules (sessions, CSRF tokens, failed-login throttling,
two-factor challenges) are the session service's, server/sessions.py; the routes read who is calling as a
:class:`Principal` from there, and this module says which client address a request counts as.
"""

from __future__ import annotations

from server.sessions import Principal

__all__ = ["Principal", "client_key"]


def client_key(host: str | None) -> str:
    """The address a request came from, as counted by the throttle ("unknown" without one)."""
    return host or "unknown"
