"""Who acts: a signed-in user, a token's owner, or the command line; and what roles allow."""

from __future__ import annotations

import getpass
from dataclasses import dataclass

from segnode.node.admin.errors import PermissionDeniedError
from segnode.storage.models import UserRole

_RANK = {UserRole.VIEWER: 0, UserRole.OPERATOR: 1, UserRole.ADMIN: 2}


@dataclass(frozen=True, slots=True)
class Actor:
    """The one doing something: recorded as ``actor`` (and ``client``) in the audit log."""

    name: str
    role: UserRole
    client: str | None = None
    """The web client's address; None for the command line."""

    def allows(self, needed: UserRole) -> bool:
        return _RANK[self.role] >= _RANK[needed]

    def require(self, needed: UserRole, action: str) -> None:
        """Raise :class:`PermissionDeniedError` unless the role is ``needed`` or above."""
        if not self.allows(needed):
            raise PermissionDeniedError(
                f"{action} needs the {needed.value} role; {self.name} is {self.role.value}"
            )


def command_line_actor() -> Actor:
    """Whoever runs ``segnode`` on the node's machine: they can read its database and
    files, so they already hold every right; the audit names their login."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        login = "unknown"
    return Actor(f"cli:{login}", UserRole.ADMIN)
