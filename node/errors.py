"""Errors raised by the node (networking, receiving, completion, routing)."""

from __future__ import annotations

from segnode.config.errors import SegnodeError


class NodeError(SegnodeError):
    """Base for node failures."""


class InvalidInstanceError(NodeError):
    """A received instance cannot be stored or processed.

    Carries the DIMSE failure status the sender gets; the instance itself is
    kept in quarantine with ``reason``.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
