"""What the service layer refuses, so each front end can answer in its own terms.

The REST API maps them to HTTP status codes (404, 409, 403, 422, 429), the CLI to exit
codes and messages, the dashboard to a flash message; the text is the same everywhere.
"""

from __future__ import annotations

from segnode.node.errors import NodeError


class AdminError(NodeError):
    """Base of the service layer's refusals."""


class NotFoundError(AdminError):
    """No such job, study, quarantine entry, destination, model or user."""


class ConflictError(AdminError):
    """The thing is not in a state that allows the action (retry a done job, say)."""


class PermissionDeniedError(AdminError):
    """The actor's role does not allow the action."""


class InvalidInputError(AdminError):
    """The request itself is wrong (a step that does not exist, a weak password)."""


class SignInRefusedError(AdminError):
    """Wrong user name or password, a disabled user, or too many failures (``rate_limited``)."""

    def __init__(self, message: str, *, rate_limited: bool = False) -> None:
        super().__init__(message)
        self.rate_limited = rate_limited
