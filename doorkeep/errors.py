"""The one exception root of the core package.

Errors inherit a builtin as well, so callers that only know the standard
library (``except ValueError``) still catch them.
"""

from __future__ import annotations


class DoorkeepError(Exception):
    """Root of every error raised by the ``doorkeep`` core."""


class ConfigError(DoorkeepError, ValueError):
    """A configuration file is wrong; names the file, the key and the fix."""

    def __init__(self, file: str, key: str, problem: str, fix: str) -> None:
        self.file = file
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(f"{file}: {key}: {problem} (fix: {fix})")


class ConfigErrors(DoorkeepError, ValueError):
    """Several configuration errors found in one pass, so the installer fixes them all at once."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class MessageError(DoorkeepError, ValueError):
    """An MQTT payload does not follow the wire contract."""


class FrameError(DoorkeepError, ValueError):
    """A reader frame is garbled, truncated, oversized or fails its checksum."""
