"""Errors of the security desk, all under the server's root ``ServerError``."""

from __future__ import annotations

from server.errors import ServerError


class DeskError(ServerError):
    """Root of every error the security desk raises."""


class OperatorError(DeskError, ValueError):
    """An operator account or token cannot be made or changed as asked (bad name, role, password, label)."""


class OperatorExists(OperatorError):
    """The name (or the operator's token label) is taken."""


class UnknownOperator(OperatorError, LookupError):
    """No operator has that name."""


class OperatorConflict(OperatorError):
    """The change conflicts with the accounts as they are: it would disable or demote the last active admin."""
