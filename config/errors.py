"""The root of segnode's error tree.

Every error the node raises on purpose derives from :class:`SegnodeError`, so a
caller can tell "we refused this, with a reason" from a programming bug. Each
package adds its own subclasses in its own ``errors.py``; only ``node/`` turns
them into DICOM statuses.
"""

from __future__ import annotations


class SegnodeError(Exception):
    """Base for every error this node raises on purpose."""


class ConfigError(SegnodeError):
    """The configuration is invalid; the message names the offending key."""


class TransientError(SegnodeError):
    """The same work may succeed if tried again later (a dead worker, a busy peer).

    The job state machine (``segnode.storage.job_states.TRANSIENT_ERRORS``) retries a step that
    raised one after a backoff; every other :class:`SegnodeError` fails the job at once.
    """
