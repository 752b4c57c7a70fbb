"""The retry delay shared by failed pipeline steps and failed deliveries."""

from __future__ import annotations


def backoff_delay_s(attempt: int, initial_s: float, maximum_s: float) -> float:
    """Seconds to wait before attempt ``attempt + 1``, after ``attempt`` failed.

    Exponential: ``initial_s * 2 ** (attempt - 1)``, capped at ``maximum_s``.
    Deterministic on purpose, without jitter: jitter spreads a herd of clients
    retrying one server, but a node has a few job workers and a few
    destinations, so at most a handful of deliveries retry together when a PACS
    comes back; a delay that can be predicted is one an operator can read in
    the job's event log and a test can assert.

    Args:
        attempt: the number of the attempt that just failed, from 1.
        initial_s: the delay after the first failure (``delivery.initial_backoff_s``).
        maximum_s: the cap (``delivery.max_backoff_s``).

    Raises:
        ValueError: ``attempt`` below 1, or a negative delay.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if initial_s < 0 or maximum_s < 0:
        raise ValueError(f"delays must not be negative (initial {initial_s}, maximum {maximum_s})")
    # min() before the power would overflow: 2 ** 1100 is a float overflow.
    exponent = min(attempt - 1, 1023)
    return float(min(initial_s * 2.0**exponent, maximum_s))
