"""A job's working folder: every step's inputs and outputs, as files.

Why files: each step reads what the step before it wrote and nothing else, so a step can
run in any process (a local worker today, a distributed engine later), and a job that was
killed resumes at the step that did not finish: the earlier steps' files are still there.
Every file is written to a temporary name and renamed, so a file either exists whole or
not at all. The database only records which step finished; the files are the data.

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

import numpy as np
import SimpleITK as sitk

from pipeline.conversion import ConvertedVolume, SliceRef
from pipeline.errors import PipelineError
from pipeline.preprocessing import CHANNEL_ORDER, PreprocessedStudy
from pipeline.selection import Role


class WorkspaceError(PipelineError):
    """A step's input file is missing or unreadable (the step before it did not finish)."""


def _replace_atomically(path: Path, write: Any) -> None:
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
        _replace_atomically(
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

    def write_image(self, relative: str, image: sitk.Image) -> Path:
        path = self.root / relative
        _replace_atomically(
            path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True)
        )
        return path

    def read_image(self, relative: str) -> sitk.Image:
        path = self.root / relative
        if not path.is_file():
            raise WorkspaceError(f"{relative} is missing in the job folder {self.root}")
        return sitk.ReadImage(str(path))

    # -- converted volumes -----------------------------------------------------------------
    def write_volume(self, role: Role, volume: ConvertedVolume) -> None:
        self.write_image(f"volumes/{role.value}.mha", volume.image)
        self.write_json(
            f"volumes/{role.value}.json",
            {
                "series_instance_uid": volume.series_instance_uid,
                "slices": [
                    {"sop_instance_uid": s.sop_instance_uid, "frame": s.frame, "position_mm": s.position_mm}
                    for s in volume.slices
                ],
                "notes": list(volume.notes),
            },
        )

    def read_volume(self, role: Role) -> ConvertedVolume:
        meta = self.read_json(f"volumes/{role.value}.json")
        return ConvertedVolume(
            image=self.read_image(f"volumes/{role.value}.mha"),
            series_instance_uid=meta["series_instance_uid"],
            slices=tuple(
                SliceRef(s["sop_instance_uid"], int(s["frame"]), tuple(s["position_mm"]))
                for s in meta["slices"]
            ),
            notes=tuple(meta["notes"]),
        )

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

    # -- preprocessed study ----------------------------------------------------------------
    def write_preprocessed(self, study: PreprocessedStudy) -> None:
        channels = self.root / "preprocessed" / "channels.npz"
        _replace_atomically(
            channels,
            lambda tmp: np.savez(
                tmp.open("wb"), image=study.stacked(CHANNEL_ORDER), brain_mask=study.brain_mask
            ),
        )
        grid = sitk.Image(study.grid.GetSize(), sitk.sitkUInt8)
        grid.CopyInformation(study.grid)
        self.write_image("preprocessed/grid.mha", grid)
        transform = self.root / "preprocessed" / "to_reference.tfm"
        _replace_atomically(
            transform, lambda tmp: sitk.WriteTransform(study.to_reference, str(tmp))
        )
        self.write_json("preprocessed/record.json", study.record)

    def read_preprocessed(self) -> PreprocessedStudy:
        channels = self.root / "preprocessed" / "channels.npz"
        transform = self.root / "preprocessed" / "to_reference.tfm"
        if not channels.is_file() or not transform.is_file():
            raise WorkspaceError(f"preprocessing outputs are missing in the job folder {self.root}")
        with np.load(channels) as arrays:
            image, mask = arrays["image"], arrays["brain_mask"]
        return PreprocessedStudy(
            channels={role: image[index] for index, role in enumerate(CHANNEL_ORDER)},
            brain_mask=mask,
            grid=self.read_image("preprocessed/grid.mha"),
            to_reference=sitk.ReadTransform(str(transform)),
            record=self.read_json("preprocessed/record.json"),
        )
