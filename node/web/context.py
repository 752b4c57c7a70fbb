"""What every route needs, built once per application and kept on ``app.state.web``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from segnode.config.settings import Settings
from segnode.node.admin.status import NodeProbe


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    sessions: sessionmaker[Session]
    probe: NodeProbe | None
    """None when the web runs without a node in its process (a test, or a separate process)."""

    @property
    def data_dir(self) -> Path:
        return Path(self.settings.storage.data_dir)

    def job_folder(self, job_id: int) -> Path:
        """The job's folder (the same layout as ``segnode.node.jobs.runner.job_workspace``)."""
        return self.data_dir / "jobs" / str(job_id)
