"""C-STORE statuses: delivered, worth a retry, or refused for good (``dimse.status``)."""

from __future__ import annotations

import pytest

from segnode.node.delivery.dimse.status import is_delivered, is_transient_status


@pytest.mark.parametrize(("status", "delivered", "transient"), [
    (0x0000, True, False),
    (0xB000, True, False),
    (0xB007, True, False),
    (0xA700, False, True),
    (0xA7FF, False, True),
    (0x0213, False, True),
    (0xA900, False, False),
    (0xC000, False, False),
    (0x0122, False, False),
    (0x0124, False, False),
    (0x0110, False, False),
])
def test_store_statuses_are_classified(status: int, delivered: bool, transient: bool) -> None:
    assert is_delivered(status) is delivered
    assert is_transient_status(status) is transient
