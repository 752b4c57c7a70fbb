"""The retry delay shared by the sending step and the job runner (``segnode.node.backoff``)."""

from __future__ import annotations

import pytest

from segnode.node.backoff import backoff_delay_s


def test_backoff_doubles_from_the_initial_delay_and_stops_at_the_cap() -> None:
    delays = [backoff_delay_s(attempt, 5.0, 600.0) for attempt in range(1, 11)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0, 600.0, 600.0]
    assert backoff_delay_s(10_000, 5.0, 600.0) == 600.0  # no overflow for absurd attempt counts
    assert backoff_delay_s(3, 0.5, 1.0) == 1.0


def test_backoff_refuses_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt counts from 1"):
        backoff_delay_s(0, 5.0, 600.0)
