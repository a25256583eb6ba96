"""The one exception root of the edge agent."""

from __future__ import annotations

from doorkeep.errors import DoorkeepError


class EdgeError(DoorkeepError):
    """Root of every error raised by the edge agent."""


class HardwareError(EdgeError, OSError):
    """A reader, pin or camera could not be opened or used."""
