"""A job's working folder: every step's inputs and outputs, as files.

Why files: each step reads what the step before it wrote and nothing else, so a step can
run in any process (a local worker today, a distributed engine later), and a job that was
killed resumes at the step that did not finish: the earlier steps' files are still there.
Every file is written to a temporary name and renamed, so a file either exists whole or
not at all. The database only records which step finished; the files are the data.

This module is the light part (paths, JSON, pruning: what the node itself touches);
``pipeline/workspace_images.py`` reads and writes the images and arrays the steps exchange.

Layout::

    inputs.json                    series UIDs and their files (written by whoever starts the job)
    selection.json                 role -> series and files, and every candidate's reasons
    volumes/<role>.mha             converted volume (LPS, doubles for geometry)
    volumes/<role>.json            its series UID, slice -> SOP instance map and notes
    preprocessed/channels.npz      network input channels and the brain mask
    preprocessed/grid.mha          the cropped 1 mm grid (geometry only)
    preprocessed/to_reference.tfm  grid -> T1c space transform
    preprocessed/record.json       what preprocessing did
    inference/labels_source.mha    labels in the T1c source geometry
    inference/record.json          models (id, version, sha256), post-processing, device
    outputs/*.dcm                  the DICOM results
    results.json                   the written objects and the volumes per region
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segnode.pipeline.errors import PipelineError


class WorkspaceError(PipelineError):
    """A step's input file is missing or unreadable (the step before it did not finish)."""


def replace_atomically(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{path.name}")
    write(partial)
    os.replace(partial, path)


@dataclass(frozen=True)
class Workspace:
    root: Path

    # -- paths -----------------------------------------------------------------------------
    @property
    def inputs_path(self) -> Path:
        return self.root / "inputs.json"

    @property
    def selection_path(self) -> Path:
        return self.root / "selection.json"

    @property
    def outputs_dir(self) -> Path:
        return self.root / "outputs"

    @property
    def results_path(self) -> Path:
        return self.root / "results.json"

    @property
    def source_labels_path(self) -> Path:
        return self.root / "inference" / "labels_source.mha"

    # -- JSON ------------------------------------------------------------------------------
    def write_json(self, relative: str, data: Any) -> Path:
        path = self.root / relative
        replace_atomically(
            path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str))
        )
        return path

    def read_json(self, relative: str) -> Any:
        path = self.root / relative
        try:
            return json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise WorkspaceError(f"{relative} is missing in the job folder {self.root}") from exc
        except (OSError, ValueError) as exc:
            raise WorkspaceError(f"{relative} in {self.root} is unreadable: {exc}") from exc

    def prune_intermediates(self) -> int:
        """Delete the converted volumes and the network input (tens of MB per job); bytes freed.

        What stays: inputs, selection and every step's record, the label map in the T1c
        geometry, and the DICOM results, enough to audit a job and to resend its results.
        """
        freed = 0
        for path in [*self.root.glob("volumes/*.mha"), self.root / "preprocessed" / "channels.npz"]:
            if path.is_file():
                freed += path.stat().st_size
                path.unlink()
        return freed


def write_inputs(workspace: Workspace, study_instance_uid: str, series: dict[str, list[Path]]) -> None:
    """The job's starting point: its study and the files of each series."""
    workspace.write_json(
        "inputs.json",
        {
            "study_instance_uid": study_instance_uid,
            "series": [
                {"series_instance_uid": uid, "files": [str(path) for path in sorted(files)]}
                for uid, files in sorted(series.items())
            ],
        },
    )


def selected_files(workspace: Workspace, role: str) -> list[Path]:
    """The files of the series the select step chose for ``role`` (``t1``, ``t1c``, …)."""
    return [Path(name) for name in workspace.read_json("selection.json")["roles"][str(role)]["files"]]
