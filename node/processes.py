"""Child processes of the node and of a worker: they die with their parent.

Why: a pipeline worker, an extra listener or a Celery pool process that outlived a kill -9
of its parent would go on writing into a job folder, or accepting on the node's port,
while the restarted parent does the same work again.
"""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to kill this process (SIGKILL) when its parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
