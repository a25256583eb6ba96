"""The one exception root of the server."""

from __future__ import annotations

from doorkeep.errors import DoorkeepError


class ServerError(DoorkeepError):
    """Root of every error raised by the server."""


class StoreError(ServerError, OSError):
    """The event store or snapshot directory could not be used."""
