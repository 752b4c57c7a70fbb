"""The data folder every worker must share with the node (NFS-style, one path everywhere).

Why a marker file: a worker whose mount is missing sees an empty folder at the same path
and would fail every step with "no such file" far from the cause. The node writes
``segnode-shared-dir.json`` into its data folder when it starts with the distributed
executor; ``segnode worker`` refuses to start without it, naming the path. A job folder
that is not there (yet) when a step starts fails that attempt transiently
(:class:`SharedFolderError`): an NFS client's attribute cache can lag the node's writes by
seconds, and a mount that came back lets the retry succeed.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from segnode.config.errors import TransientError
from segnode.node.errors import NodeError
from segnode.pipeline.workspace import Workspace
from segnode.storage.models import utc_now

MARKER_NAME = "segnode-shared-dir.json"


class SharedFolderError(NodeError, TransientError):
    """The shared data folder (or a job's folder in it) is not visible on this worker."""


def write_marker(data_dir: Path) -> Path:
    """Written by the node at start: who owns this data folder, since when."""
    marker = Path(data_dir) / MARKER_NAME
    marker.write_text(
        json.dumps({"node_host": socket.gethostname(), "data_dir": str(Path(data_dir).resolve()),
                    "written_at": utc_now().isoformat()})
    )
    return marker


def check_marker(data_dir: Path) -> dict[str, str]:
    """The node's marker as a worker sees it.

    Raises:
        SharedFolderError: missing or unreadable, with the path and what to do.
    """
    marker = Path(data_dir) / MARKER_NAME
    try:
        content: dict[str, str] = json.loads(marker.read_text())
    except (OSError, ValueError) as exc:
        raise SharedFolderError(
            f"storage.data_dir {data_dir} is not the node's data folder: {marker} is missing or "
            f"unreadable ({type(exc).__name__}: {exc}). Mount the node's data folder at this "
            "path on this machine (same path as on the node) and start the node once with "
            'jobs.executor = "celery" (docs/operations.md, Two machines)'
        ) from exc
    return content


def require_job_folder(workspace: Workspace, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for the job's folder (its inputs record) to be visible.

    Raises:
        SharedFolderError: still not there (transient: the step runs again later).
    """
    deadline = time.monotonic() + timeout_s
    inputs, job_dir = workspace.inputs_path, workspace.root
    while True:
        if inputs.is_file():
            return
        if time.monotonic() >= deadline:
            raise SharedFolderError(
                f"the job folder {job_dir} is not visible on this worker ({socket.gethostname()}) "
                f"after {timeout_s:g} s: is the shared data folder mounted here?"
            )
        time.sleep(0.5)
